"""``python -m rcnn_steps <command>`` as a user meets it: a mistake is one line and exit
status 2 (``--debug`` for the traceback), and ``predict`` on real folders (unreadable,
16-bit, .tif/.webp and nested images, a checkpoint without its run, overlapping and
reused output folders, a missing GPU). One tiny ``ci_mask`` run is shared."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rcnn_steps import cli
from rcnn_steps.data.__main__ import main as data_main
from rcnn_steps.data.example import make_example
from rcnn_steps.engine import CheckpointError


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    return make_example(tmp_path_factory.mktemp("example") / "shapes", num_train=4, num_val=3)


@pytest.fixture(scope="module")
def run(example, tmp_path_factory):
    """A 2-step ``ci_mask`` run on the example set: its folder (run.json, last.pt)."""
    out = tmp_path_factory.mktemp("runs") / "shapes"
    argv = ["train", "--data", str(example), "--preset", "ci_mask", "--out", str(out)]
    argv += ["--max-iter", "2", "--batch-size", "2", "--num-eval-images", "1", "--no-progress"]
    assert cli.main(argv) == 0
    return out


def _one_error_line(capsys, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    for word in words:
        assert word in err[0], err[0]
    return err[0]


def _predict(checkpoint, images, out, *more):
    images = images if isinstance(images, list) else [images]
    argv = ["predict", "--checkpoint", str(checkpoint), "--images", *map(str, images)]
    return cli.main([*argv, "--out", str(out), "--score-threshold", "0.0", *more])


def _images(example, folder, n=2):
    """A folder holding the first ``n`` val images of the example set."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in sorted((example / "val").glob("*.png"))[:n]:
        shutil.copy(f, folder / f.name)
    return folder


# ----------------------------------------------------------------------------------------
# Family 7: one line, not a traceback


def test_user_errors_are_one_line_and_status_2(run, example, tmp_path, capsys):
    # a missing checkpoint (FileNotFoundError)
    assert _predict(tmp_path / "none.pt", example / "val", tmp_path / "p") == 2
    _one_error_line(capsys, "none.pt", "does not exist")
    # a damaged checkpoint (CheckpointError)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    assert _predict(bad, example / "val", tmp_path / "p") == 2
    _one_error_line(capsys, "bad.pt")
    # a data folder without annotations (DatasetError / a missing file)
    argv = ["train", "--data", str(tmp_path), "--preset", "ci_mask", "--out", str(tmp_path / "r")]
    assert cli.main(argv) == 2
    _one_error_line(capsys, "does not exist")
    # a run folder that already holds a run, and a bad --set (the commands' own checks)
    argv = ["train", "--data", str(example), "--preset", "ci_mask", "--out", str(run)]
    assert cli.main(argv) == 2
    _one_error_line(capsys, "--resume", "--overwrite")
    assert cli.main([*argv[:-2], "--out", str(tmp_path / "r"), "--set", "nope=1"]) == 2
    _one_error_line(capsys, "not a field")
    # export with a --data folder that is not a set
    argv = ["export", "--checkpoint", str(run / "last.pt"), "--out", str(tmp_path / "x.pt")]
    assert cli.main([*argv, "--data", str(tmp_path)]) == 2
    _one_error_line(capsys, "instances_train.json")
    assert not (tmp_path / "x.pt").exists()


def test_debug_shows_the_traceback_before_or_after_the_command(example, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    argv = ["predict", "--checkpoint", str(bad), "--images", str(example / "val"), "--out",
            str(tmp_path / "p")]  # fmt: skip
    with pytest.raises(CheckpointError):
        cli.main(["--debug", *argv])
    with pytest.raises(CheckpointError):
        cli.main([*argv, "--debug"])
    with pytest.raises(ValueError, match="none.json"):
        data_main(["check", "--debug", "--images", str(tmp_path), "--annotations",
                   str(tmp_path / "none.json")])  # fmt: skip


def test_bugs_keep_their_traceback_and_ctrl_c_is_one_line(monkeypatch, tmp_path, capsys):
    argv = ["export", "--checkpoint", str(tmp_path / "a.pt"), "--out", str(tmp_path / "b.pt")]

    def bug(args):
        raise TypeError("a programming error")

    monkeypatch.setattr(cli, "_export_command", bug)
    with pytest.raises(TypeError):
        cli.main(argv)

    def ctrl_c(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_export_command", ctrl_c)
    assert cli.main(argv) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["interrupted"]


def test_data_commands_report_bad_paths_in_one_line(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    assert data_main(["example", "--out", str(tmp_path / "a_file" / "set")]) == 2
    _one_error_line(capsys, "a_file")


def test_the_real_entry_point_exits_2_with_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "rcnn_steps", "export", "--checkpoint", str(tmp_path / "a.pt"),
         "--out", str(tmp_path / "b.pt")],
        capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": ""},
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: checkpoint {tmp_path / 'a.pt'} does not exist (--debug shows the traceback)"
    ]
