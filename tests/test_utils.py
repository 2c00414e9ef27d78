import json
import subprocess

import numpy as np
import pytest
import torch

from rcnn_steps.utils import Column, StageClock, code_diff_hash, format_table, git_commit


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_provenance_is_dirty_for_code_changes_only(tmp_path):
    repo = tmp_path
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "a@b.c")
    _git(repo, "config", "user.name", "t")
    (repo / "rcnn_steps").mkdir()
    (repo / "results").mkdir()
    (repo / "rcnn_steps" / "model.py").write_text("x = 1\n")
    (repo / "results" / "r.json").write_text("{}\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "one")
    head = git_commit(repo)
    assert len(head) == 12 and not head.endswith("-dirty") and code_diff_hash(repo) is None
    # results files and notebooks are outputs: writing them leaves the provenance clean
    (repo / "results" / "r.json").write_text('{"AP": 1}\n')
    (repo / "results" / "new.json").write_text("{}\n")
    assert git_commit(repo) == head
    # a change to the code is dirty, and its hash names the change
    (repo / "rcnn_steps" / "model.py").write_text("x = 2\n")
    first = code_diff_hash(repo)
    assert git_commit(repo) == head + "-dirty" and first
    (repo / "rcnn_steps" / "model.py").write_text("x = 3\n")
    assert code_diff_hash(repo) not in (None, first)
    (repo / "rcnn_steps" / "model.py").write_text("x = 1\n")
    (repo / "rcnn_steps" / "extra.py").write_text("y = 1\n")  # an untracked module counts
    assert git_commit(repo).endswith("-dirty")
    assert git_commit(tmp_path / "results" / "..") == git_commit(repo)
    assert git_commit(tmp_path.parent / "not-a-repo-here") == "unknown"


def test_stage_clock_writes_only_when_asked():
    inter = {}
    clock = StageClock(inter, torch.device("cpu"))
    clock.start()
    clock.lap("a")
    assert set(inter["stage_seconds"]) == {"a"} and inter["stage_seconds"]["a"] >= 0
    silent = StageClock(None, torch.device("cpu"))
    silent.start()
    silent.lap("a")  # nothing to write into, nothing raised


def test_format_table_aligns_formats_and_rules():
    rows = [
        {"setting": "RoIPool", "paper": 26.9, "AP": {"mean": 0.4008, "min": 0.3912, "max": 0.4086}},
        {"setting": "RoIAlign, avg", "paper": None, "AP": {"mean": 0.52, "min": 0.5, "max": 0.531}},
    ]
    columns = [
        "setting",
        Column("paper", fmt=".1f"),
        Column("mask AP, % [seeds]", "AP", fmt="4.1f", scale=100),
        Column("n", lambda row: 3),
    ]
    text = format_table(rows, columns, indent=2)
    assert text.split("\n") == [
        "  setting        paper  mask AP, % [seeds]  n",
        "  -------------------------------------------",
        "  RoIPool         26.9   40.1 [39.1, 40.9]  3",
        "  RoIAlign, avg      -   52.0 [50.0, 53.1]  3",
    ]
    # no rule, a narrower gap, a forced alignment, numpy numbers, a custom missing cell
    rows = [{"name": "a", "x": np.float32(0.25)}, {"name": "bb"}]
    columns = [Column("name", align=">"), Column("x", fmt="+.0%", missing="n/a")]
    assert format_table(rows, columns, rule="", gap=1).split("\n") == [
        "name    x",
        "   a +25%",
        "  bb  n/a",
    ]
    assert format_table([], ["a", "bc"]) == "a  bc\n-----"  # a header alone
    with pytest.raises(ValueError, match="align='center'"):
        format_table(rows, [Column("x", align="center")])


def test_provenance_lines_say_what_wrote_each_file(tmp_path):
    from rcnn_steps.utils import provenance_lines

    machine = {"cpu": "Xeon", "cpu_count": 2, "torch_threads": 1}
    prov = {"command": "rcnn.py evaluate --preset cpu", "commit": "abc123", "seeds": [0, 1],
            "date": "2026-11-27 10:28:29 UTC", "machine": machine, "wall_time_s": 425}  # fmt: skip
    (tmp_path / "one.json").write_text(json.dumps({"results": {}, "provenance": prov}))
    row = {**prov, "wall_time_s": 3, "seeds": None, "command": "__main__.py evaluate"}
    rows = {"rows": {"R-CNN": {"provenance": row}}}
    (tmp_path / "table.json").write_text(json.dumps(rows))
    text = provenance_lines(["one.json", "table.json"], tmp_path)
    assert text.split("\n") == [
        "one.json: commit abc123 | 2026-11-27 10:28 | seeds 0 1 | Xeon, 2 cores, 1 thread | 7 min",
        "    python -m rcnn_steps.rcnn evaluate --preset cpu",
        "table.json [R-CNN]: commit abc123 | 2026-11-27 10:28 | Xeon, 2 cores, 1 thread",
        "    python -m rcnn_steps evaluate",
    ]
    with pytest.raises(FileNotFoundError, match="run the library command"):
        provenance_lines(["missing.json"], tmp_path)


def test_set_threads_takes_the_environment_cap(monkeypatch):
    import torch

    from rcnn_steps.utils import set_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("RCNN_STEPS_THREADS", raising=False)
        set_threads(2)
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("RCNN_STEPS_THREADS", "1")
        set_threads(2)
        assert torch.get_num_threads() == 1
        for bad in ("0", "two", "-1"):
            monkeypatch.setenv("RCNN_STEPS_THREADS", bad)
            with pytest.raises(ValueError, match="RCNN_STEPS_THREADS"):
                set_threads(2)
    finally:
        torch.set_num_threads(before)
