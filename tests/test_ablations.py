import json
import statistics

import pytest

from rcnn_steps import ablations
from rcnn_steps.ablations import faster_rcnn_grid, run_grid, run_key, schedule
from rcnn_steps.faster_rcnn import DetectorConfig, FasterRCNN
from rcnn_steps.utils import read_results

TWO = ["1s1r_128", "3s3r"]


def test_table8_grid():
    grid = faster_rcnn_grid("table8")
    assert list(grid) == ["1s1r_128", "1s1r_256", "1s3r_128", "1s3r_256", "3s1r", "3s3r"]
    assert [s["paper"] for s in grid.values()] == [65.8, 66.7, 68.8, 67.9, 69.8, 69.9]
    assert grid["1s1r_128"]["overrides"] == {"anchor_sizes": (8,), "anchor_aspect_ratios": (1.0,)}
    assert grid["1s3r_256"]["overrides"]["anchor_sizes"] == (16,)
    assert grid["3s3r"]["overrides"] == {
        "anchor_sizes": (8, 16, 32),
        "anchor_aspect_ratios": (0.5, 1.0, 2.0),
    }
    # the paper's 128/256/512 keep their ratios
    assert grid["3s1r"]["overrides"]["anchor_sizes"] == tuple(s // 16 for s in (128, 256, 512))


def test_table9_grid():
    grid = faster_rcnn_grid("table9")
    assert list(grid) == ["lambda_0.1", "lambda_1", "lambda_10", "lambda_100"]
    assert [s["paper"] for s in grid.values()] == [67.2, 68.9, 69.9, 69.1]
    assert [s["overrides"]["rpn_lambda"] for s in grid.values()] == [0.1, 1.0, 10.0, 100.0]
    assert all(s["overrides"]["rpn_normalization"] == "paper" for s in grid.values())


@pytest.mark.parametrize("table", ["table8", "table9"])
def test_overrides_are_valid_config_fields(table):
    for setting in faster_rcnn_grid(table).values():
        for preset in (DetectorConfig.ci, DetectorConfig.cpu):
            config = preset(**setting["overrides"])
            for key, value in setting["overrides"].items():
                assert getattr(config, key) == value
        # and they build: one RPN output per anchor shape
        config = DetectorConfig.ci(**setting["overrides"])
        model = FasterRCNN(config)
        shapes = len(config.anchor_sizes) * len(config.anchor_aspect_ratios)
        assert model.rpn.anchor_generator.num_anchors_per_location() == [shapes]


def test_unknown_table():
    with pytest.raises(ValueError, match="unknown table"):
        faster_rcnn_grid("table7")


def test_schedule_shortens_with_its_shape():
    assert schedule("cpu") == ablations.PRESET_TRAINING["cpu"]
    short = schedule("cpu", 600)
    assert short["max_iter"] == 600 and short["lr_steps"] == (480,)
    assert short["warmup_steps"] == 50
    tiny = schedule("ci", 3)
    assert tiny["max_iter"] == 3 and tiny["warmup_steps"] == 1 and tiny["log_every"] == 3


def test_run_grid_writes_and_resumes(tiny_synth, tmp_path, monkeypatch):
    out = tmp_path / "ablation.json"
    kwargs = dict(settings=TWO, root=tiny_synth, num_eval_images=4, verbose=False)
    results = run_grid("table8", [0, 1], "ci", out, max_iter=3, **kwargs)

    payload = read_results(out)
    assert payload["results"] == json.loads(json.dumps(results))
    prov = payload["provenance"]
    assert prov["preset"] == "ci" and prov["seeds"] == [0, 1]
    assert {"command", "commit", "machine", "wall_time_s"} <= set(prov)
    runs = payload["results"]["runs"]
    assert sorted(runs) == sorted(run_key(n, s) for n in TWO for s in (0, 1))
    for run in runs.values():
        assert run["max_iter"] == 3 and run["num_eval_images"] == 4
        assert 0.0 <= run["metrics"]["AP"] <= 1.0 and run["wall_time_s"] > 0
    summary = payload["results"]["summary"]
    for name in TWO:
        aps = [runs[run_key(name, s)]["metrics"]["AP"] for s in (0, 1)]
        assert summary[name]["n"] == 2 and summary[name]["seeds"] == [0, 1]
        assert summary[name]["AP"]["mean"] == pytest.approx(statistics.mean(aps), abs=1e-4)
        assert summary[name]["AP"]["min"] == min(aps) and summary[name]["AP"]["max"] == max(aps)
    assert summary["1s3r_128"]["n"] == 0  # in the grid, not run

    # a second call finds every run done and trains nothing
    calls = []
    real = ablations.run_setting
    monkeypatch.setattr(
        ablations, "run_setting", lambda *a, **k: calls.append(a[:4]) or real(*a, **k)
    )
    again = run_grid("table8", [0, 1], "ci", out, max_iter=3, **kwargs)
    assert calls == []
    assert again["runs"] == results["runs"]

    # another max_iter is refused rather than mixed into the file
    with pytest.raises(ValueError, match="max_iter"):
        run_grid("table8", [0], "ci", out, max_iter=4, **kwargs)


def _fake_run(metrics_by_key, calls, fail_at=None):
    def fake(name, overrides, seed, preset, max_iter=None, **kwargs):
        calls.append(run_key(name, seed))
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt  # the grid is stopped mid-way
        ap = metrics_by_key[run_key(name, seed)]
        return {
            "name": name,
            "seed": seed,
            "preset": preset,
            "max_iter": max_iter,
            "overrides": overrides,
            "metrics": {"AP": ap, "AP50": 2 * ap},
            "wall_time_s": 1.0,
        }

    return fake


def test_summary_and_resume_after_interruption(tmp_path, monkeypatch):
    aps = {run_key(n, s): 0.1 * (i + 1) + 0.01 * s for i, n in enumerate(TWO) for s in (0, 1, 2)}
    out = tmp_path / "grid.json"
    calls: list[str] = []
    monkeypatch.setattr(ablations, "run_setting", _fake_run(aps, calls, fail_at=4))
    with pytest.raises(KeyboardInterrupt):
        run_grid("table8", [0, 1, 2], "ci", out, max_iter=3, settings=TWO, verbose=False)
    # the three finished runs were written as they finished
    assert sorted(read_results(out)["results"]["runs"]) == sorted(calls[:3])

    calls.clear()
    monkeypatch.setattr(ablations, "run_setting", _fake_run(aps, calls))
    results = run_grid("table8", [0, 1, 2], "ci", out, max_iter=3, settings=TWO, verbose=False)
    assert calls == [run_key("3s3r", 0), run_key("3s3r", 1), run_key("3s3r", 2)]
    assert len(results["runs"]) == 6
    for name in TWO:
        values = [aps[run_key(name, s)] for s in (0, 1, 2)]
        s = results["summary"][name]
        assert s["AP"]["mean"] == pytest.approx(statistics.mean(values), abs=1e-4)
        assert s["AP"]["std"] == pytest.approx(statistics.stdev(values), abs=1e-4)
        assert (s["AP"]["min"], s["AP"]["max"]) == pytest.approx((min(values), max(values)))
        assert s["AP50"]["mean"] == pytest.approx(2 * statistics.mean(values), abs=1e-4)
        assert s["paper"] == faster_rcnn_grid("table8")[name]["paper"]


def test_command(tmp_path, monkeypatch):
    aps = {run_key(n, s): 0.5 for n in faster_rcnn_grid("table9") for s in (0, 1)}
    calls: list[str] = []
    monkeypatch.setattr(ablations, "run_setting", _fake_run(aps, calls))
    out = tmp_path / "t9.json"
    argv = ["faster-rcnn", "--table", "table9", "--seeds", "0", "1", "--preset", "ci"]
    assert ablations.main([*argv, "--max-iter", "3", "--out", str(out)]) == 0
    assert len(calls) == 8
    results = read_results(out)["results"]
    assert results["table"] == "table9" and results["max_iter"] == 3
    assert results["summary"]["lambda_10"]["paper"] == 69.9


def test_table6_grid():
    grid = faster_rcnn_grid("table6")
    assert list(grid) == ["ss_2000", "rpn_300"]
    assert [s["paper"] for s in grid.values()] == [66.9, 69.9]
    assert [s["method"] for s in grid.values()] == ["selective_search", "rpn"]
    assert grid["rpn_300"]["overrides"] == {"rpn_post_nms_top_n_test": 300}
    # both settings train on the same images: those chapter 02's proposal cache covers
    assert {s["num_train_images"] for s in grid.values()} == {ablations.TABLE6_TRAIN_IMAGES}


def test_run_setting_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="unknown method"):
        ablations.run_setting("x", {}, 0, "ci", 1, method="edge_boxes")


def test_table6_runs_both_methods(tiny_synth, tmp_path):
    out = tmp_path / "t6.json"
    results = run_grid(
        "table6", [0], "ci", out, max_iter=2, root=tiny_synth, num_eval_images=3, verbose=False
    )
    ss, rpn = results["runs"]["ss_2000/seed0"], results["runs"]["rpn_300/seed0"]
    assert ss["method"] == "selective_search" and rpn["method"] == "rpn"
    # the proposals were made beside the data on first use, for the train images used
    assert (tiny_synth / "proposals_fast_train.npz").exists()
    assert ss["num_train_images"] == rpn["num_train_images"] == 24  # all 24 < 400
    # selective search's cost is counted; the RPN's is inside the network's
    assert ss["proposal_seconds_per_image"] > 0 and rpn["proposal_seconds_per_image"] == 0
    assert ss["seconds_per_image"] == pytest.approx(
        ss["proposal_seconds_per_image"] + ss["network_seconds_per_image"], abs=2e-4
    )
    summary = results["summary"]
    assert summary["ss_2000"]["n"] == 1 and "seconds_per_image" in summary["rpn_300"]


def test_selective_search_proposals_refuse_a_short_cache(tiny_synth, tmp_path):
    from rcnn_steps.data import CocoDataset
    from rcnn_steps.rcnn import make_proposals

    val = CocoDataset(tiny_synth / "val", tiny_synth / "annotations" / "instances_val.json")
    root = tmp_path / "copy"
    root.mkdir()
    make_proposals(val, 2, root / "proposals_fast_val.npz")
    # a cache of 2 images of the same data is not stale but too short for 3 images
    with pytest.raises(ValueError, match="remake it"):
        ablations.selective_search_proposals(val, "val", 3, root)
