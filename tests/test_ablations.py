import json
import statistics
from pathlib import Path

import pytest
import torch

from rcnn_steps.detectors.faster_rcnn import DetectorConfig, FasterRCNN
from rcnn_steps.experiments import PRESETS, ablations, runner
from rcnn_steps.experiments.ablations import faster_rcnn_grid, run_grid, run_key, schedule
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
    assert schedule("cpu") == PRESETS["cpu"].schedule
    short = schedule("cpu", 600)
    assert short["max_iter"] == 600 and short["lr_steps"] == (480,)
    assert short["warmup_steps"] == 50
    tiny = schedule("ci", 3)
    assert tiny["max_iter"] == 3 and tiny["warmup_steps"] == 1 and tiny["log_every"] == 3


def test_run_grid_writes_and_resumes(tiny_synth, tmp_path, monkeypatch):
    out = tmp_path / "ablation.json"
    kwargs = dict(settings=TWO, root=tiny_synth, num_eval_images=4, verbose=False, workers=0)
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
    real = runner.run_setting
    monkeypatch.setattr(runner, "run_setting", lambda *a, **k: calls.append(a[:4]) or real(*a, **k))
    again = run_grid("table8", [0, 1], "ci", out, max_iter=3, **kwargs)
    assert calls == []
    assert again["runs"] == results["runs"]

    # another max_iter is refused rather than mixed into the file
    with pytest.raises(ValueError, match="max_iter"):
        run_grid("table8", [0], "ci", out, max_iter=4, **kwargs)
    # so is another number of val images, also in a file of an earlier version that
    # records it per run only
    with pytest.raises(ValueError, match="num_eval_images=4, not 3"):
        run_grid("table8", [0], "ci", out, max_iter=3, **{**kwargs, "num_eval_images": 3})
    payload["results"].pop("num_eval_images")
    out.write_text(json.dumps(payload))
    assert ablations.grid_eval_images(payload["results"]) == 4
    with pytest.raises(ValueError, match="num_eval_images=4, not 3"):
        run_grid("table8", [0], "ci", out, max_iter=3, **{**kwargs, "num_eval_images": 3})
    assert ablations.read_grid_results("table8", out)["num_eval_images"] == 4
    assert ablations.grid_eval_images({"runs": {}}, 200) == 200  # nothing run yet


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
    monkeypatch.setattr(runner, "run_setting", _fake_run(aps, calls, fail_at=4))
    kwargs = dict(settings=TWO, verbose=False, workers=0, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_grid("table8", [0, 1, 2], "ci", out, max_iter=3, **kwargs)
    # the three finished runs were written as they finished
    assert sorted(read_results(out)["results"]["runs"]) == sorted(calls[:3])

    calls.clear()
    monkeypatch.setattr(runner, "run_setting", _fake_run(aps, calls))
    results = run_grid("table8", [0, 1, 2], "ci", out, max_iter=3, **kwargs)
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
    monkeypatch.setattr(runner, "run_setting", _fake_run(aps, calls))
    out = tmp_path / "ablation_table9.json"
    argv = ["grid", "--tables", "table9", "--seeds", "0", "1", "--scale", "ci", "--workers", "0"]
    assert ablations.main([*argv, "--max-iter", "3", "--out-dir", str(tmp_path)]) == 0
    assert len(calls) == 8
    results = read_results(out)["results"]
    assert results["table"] == "table9" and results["max_iter"] == 3
    assert results["summary"]["lambda_10"]["paper"] == 69.9


def test_memory_format_reaches_each_run_and_leaves_the_cache_key_alone(tmp_path, monkeypatch):
    aps = {run_key(n, s): 0.5 for n in faster_rcnn_grid("table9") for s in (0,)}
    formats: list[str] = []
    fake = _fake_run(aps, [])
    monkeypatch.setattr(
        runner, "run_setting", lambda *a, **k: formats.append(k["memory_format"]) or fake(*a, **k)
    )
    argv = ["grid", "--tables", "table9", "--seeds", "0", "--scale", "ci", "--workers", "0",
            "--max-iter", "3", "--out-dir", str(tmp_path)]  # fmt: skip
    assert ablations.main([*argv, "--memory-format", "channels_last"]) == 0
    assert formats == ["channels_last"] * 4
    runs = read_results(tmp_path / "ablation_table9.json")["results"]["runs"]
    assert {r["spec"]["memory_format"] for r in runs.values()} == {"channels_last"}
    # the same runs in the default layout are the cached ones: only the rounding differs
    formats.clear()
    assert ablations.main(argv) == 0 and formats == []
    with pytest.raises(SystemExit):
        ablations.main([*argv, "--memory-format", "nhwc"])


def test_the_documented_command_is_the_real_one(tmp_path, monkeypatch):
    """The module docstring's command line parses, and asks for what it says."""
    import shlex

    line = next(x for x in ablations.__doc__.splitlines() if "python -m rcnn_steps.ablations" in x)
    argv = shlex.split(line)[3:]  # after python -m rcnn_steps.ablations
    asked = {}
    monkeypatch.setattr(ablations, "run_tables", lambda *a, **k: asked.update(args=a) or {})
    assert ablations.main(argv) == 0
    assert asked["args"][:3] == (["table8"], [0, 1, 2], "cpu")


def test_the_summary_metrics_are_the_grids():
    from rcnn_steps.experiments import grid

    assert ablations.SUMMARY_METRICS is grid.SUMMARY_METRICS


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
    from rcnn_steps.data.proposals import make_proposals

    val = CocoDataset(tiny_synth / "val", tiny_synth / "annotations" / "instances_val.json")
    root = tmp_path / "copy"
    root.mkdir()
    make_proposals(val, 2, root / "proposals_fast_val.npz")
    # a cache of 2 images of the same data is not stale but too short for 3 images
    with pytest.raises(ValueError, match="remake it"):
        ablations.selective_search_proposals(val, "val", 3, root)


# -- Mask R-CNN Table 2(c) and 2(d): the RoI layer --------------------------------------


def test_table2c_grid():
    grid = faster_rcnn_grid("table2c")
    paper_rows = ["roipool", "roiwarp_max", "roiwarp_avg", "roialign_max", "roialign_avg"]
    assert list(grid) == [*paper_rows, "roialign_avg_aligned"]
    assert [grid[n]["overrides"] for n in paper_rows] == [{"roi_op": n} for n in paper_rows]
    papers = [tuple(grid[n]["paper"].values()) for n in paper_rows]
    assert papers == [
        (26.9, 48.8, 26.4),
        (27.2, 49.2, 27.1),
        (27.1, 48.9, 27.1),
        (30.2, 51.0, 31.8),
        (30.3, 51.2, 31.5),
    ]
    assert all(list(grid[n]["paper"]) == ["AP", "AP50", "AP75"] for n in paper_rows)
    # the half-pixel correction is our extra row: no paper number
    extra = grid["roialign_avg_aligned"]
    assert extra["overrides"] == {"roi_op": "roialign_avg", "roi_aligned": True}
    assert extra["paper"] is None
    assert "MASK AP" in ablations.PAPER_METRIC["table2c"]


def test_table2d_grid():
    grid = faster_rcnn_grid("table2d")
    assert list(grid) == ["roipool", "roialign_avg"]
    assert grid["roipool"]["paper"] == {"AP": 28.2, "AP50": 52.7, "AP75": 26.9}
    assert grid["roialign_avg"]["paper"] == {"AP": 34.0, "AP50": 55.3, "AP75": 36.4}
    assert grid["roipool"]["paper_mask"] == {"AP": 23.6, "AP50": 46.5, "AP75": 21.6}
    assert grid["roialign_avg"]["paper_mask"] == {"AP": 30.9, "AP50": 51.8, "AP75": 32.1}
    for setting in grid.values():
        assert setting["overrides"]["feature_stage"] == "c5"  # stride 32
        assert setting["overrides"]["anchor_sizes"] == ablations.TABLE2D_ANCHOR_SIZES
    # only the RoI layer differs between the two rows
    a, b = (dict(s["overrides"]) for s in grid.values())
    assert a.pop("roi_op") == "roipool" and b.pop("roi_op") == "roialign_avg" and a == b


def test_paper_metric_per_table():
    assert (
        set(ablations.PAPER_METRIC) == set(ablations.ALL_TABLES) == set(ablations.COMPARABLE_METRIC)
    )
    assert "VOC" in ablations.PAPER_METRIC["table8"]
    assert "box AP" in ablations.PAPER_METRIC["table2d"]
    # VOC mAP is AP at IoU 0.5: those tables compare with our AP50, the COCO ones with AP
    assert set(ablations.COMPARABLE_METRIC) == set(ablations.ALL_TABLES)
    for table, metric in ablations.COMPARABLE_METRIC.items():
        voc = "IoU 0.5" in ablations.PAPER_METRIC[table]
        assert metric == ("AP50" if voc else "AP"), table
        assert metric in ablations.SUMMARY_METRICS


def test_table8_labels_say_which_anchors_ran():
    for name, setting in ablations.faster_rcnn_grid("table8").items():
        sizes = setting["overrides"]["anchor_sizes"]
        assert "/".join(str(s) for s in sizes) + " px" in setting["label"], name
        if name.startswith("1s"):  # the paper's size beside ours
            assert f"(paper {name[-3:]}^2)" in setting["label"]


@pytest.mark.parametrize("table", ["table2c", "table2d"])
def test_roi_layer_overrides_build_the_right_model(table):
    from rcnn_steps.ops import RoIOp

    stride = {"table2c": 8, "table2d": 32}[table]
    for setting in faster_rcnn_grid(table).values():
        overrides = setting["overrides"]
        config = DetectorConfig.cpu(**overrides)
        for key, value in overrides.items():
            assert getattr(config, key) == value
        # the ci preset's small model, at the stride the cpu preset runs the grid at
        model = FasterRCNN(
            DetectorConfig.ci(**{"feature_stage": config.feature_stage, **overrides})
        )
        expected = RoIOp(overrides["roi_op"], overrides.get("roi_aligned", False))
        assert model.roi_heads.pooler.roi_op == expected
        feature = model.backbone(torch.zeros(1, 3, 64, 64))[model.config.feature_stage]
        assert 64 // feature.shape[-1] == stride


def test_roi_aligned_reaches_the_pooler():
    model = FasterRCNN(DetectorConfig.ci(roi_op="roialign_avg", roi_aligned=True))
    assert model.roi_heads.pooler.roi_op.aligned
    assert not FasterRCNN(DetectorConfig.ci(roi_op="roialign_avg")).roi_heads.pooler.roi_op.aligned


def test_table2d_runs_and_keeps_paper_numbers(tiny_synth, tmp_path):
    out = tmp_path / "t2d.json"
    kwargs = dict(root=tiny_synth, num_eval_images=3, verbose=False, workers=0)
    results = run_grid("table2d", [0], "ci", out, max_iter=2, **kwargs)
    payload = read_results(out)["results"]
    assert payload["paper_metric"] == ablations.PAPER_METRIC["table2d"]
    assert sorted(payload["runs"]) == ["roialign_avg/seed0", "roipool/seed0"]
    for name, setting in faster_rcnn_grid("table2d").items():
        s = results["summary"][name]
        assert s["n"] == 1 and s["paper"] == setting["paper"]
        assert "AP75" in s and 0.0 <= s["AP75"]["mean"] <= 1.0
        assert payload["settings"][name]["paper_mask"] == setting["paper_mask"]


def test_command_prints_table2c_with_its_extra_row(tmp_path, monkeypatch, capsys):
    grid = faster_rcnn_grid("table2c")
    aps = {run_key(n, 0): 0.3 for n in grid}
    calls: list[str] = []
    monkeypatch.setattr(runner, "run_setting", _fake_run(aps, calls))
    out = tmp_path / "ablation_table2c.json"
    argv = ["grid", "--tables", "table2c", "--seeds", "0", "--scale", "ci", "--workers", "0"]
    assert ablations.main([*argv, "--max-iter", "3", "--out-dir", str(tmp_path)]) == 0
    assert sorted(calls) == sorted(run_key(n, 0) for n in grid)
    printed = capsys.readouterr().out
    assert "30.3/51.2/31.5" in printed and "roialign_avg_aligned" in printed
    results = read_results(out)["results"]
    assert results["summary"]["roialign_avg_aligned"]["paper"] is None
    assert results["paper_metric"] == ablations.PAPER_METRIC["table2c"]


# -- FPN Table 3: single map (C4, C5, our C3) vs feature pyramid ------------------------


def test_fpn_table3_grid_and_paper_numbers():
    grid = faster_rcnn_grid("fpn_table3")
    assert list(grid) == ["c4", "c5_2fc", "fpn", "c3_2fc"]
    # FPN paper Table 3 (Faster R-CNN), ResNet-50, COCO minival: AP, AP50, APs, APm, APl
    t3 = {n: tuple(grid[n]["paper"].values()) for n in ("c4", "c5_2fc", "fpn")}
    assert t3 == {
        "c4": (31.6, 53.1, 13.2, 35.6, 47.1),
        "c5_2fc": (28.0, 51.7, 9.6, 31.9, 43.1),
        "fpn": (33.9, 56.9, 17.8, 37.7, 45.8),
    }
    assert list(grid["c4"]["paper"]) == ["AP", "AP50", "APs", "APm", "APl"]
    # Table 2 (Fast R-CNN on fixed proposals) kept beside it
    assert tuple(grid["c4"]["paper_table2"].values()) == (31.9, 54.7, 15.7, 36.5, 45.5)
    assert tuple(grid["c5_2fc"]["paper_table2"].values()) == (28.8, 52.9, 11.9, 32.4, 43.4)
    assert grid["fpn"]["paper_table2"] == grid["fpn"]["paper"]
    assert grid["c3_2fc"]["paper"] is None and grid["c3_2fc"]["paper_table2"] is None
    assert "Table 3" in ablations.PAPER_METRIC["fpn_table3"]
    assert "FPN" in ablations.PAPER_METRIC["fpn_table3"]


def test_fpn_table3_settings_are_the_presets_and_designs():
    from rcnn_steps.experiments.ablations import detector_config

    grid = faster_rcnn_grid("fpn_table3")
    configs = {n: detector_config("cpu", s["overrides"]) for n, s in grid.items()}
    # the pyramid row is the cpu_fpn preset, the stride-8 row the cpu preset (chapters 03-04)
    assert configs["fpn"] == DetectorConfig.cpu_fpn()
    assert configs["c3_2fc"] == DetectorConfig.cpu()
    # the single-map paper rows: C4 with res5 as the head, C5 with the 2-fc head
    assert (configs["c4"].feature_stage, configs["c4"].box_head) == ("c4", "c5")
    assert (configs["c5_2fc"].feature_stage, configs["c5_2fc"].box_head) == ("c5", "mlp")
    for name in ("c4", "c5_2fc"):
        assert configs[name].anchor_sizes == ablations.FPN_TABLE3_ANCHOR_SIZES
        assert configs[name].anchor_sizes == DetectorConfig.cpu_fpn().fpn_anchor_sizes
    # everything else is the preset's: same RPN and RoI sampling, pooling and fc width
    for config in configs.values():
        assert config.pooled_size == 7 and config.roi_op == "roipool"
        assert config.box_head_size == DetectorConfig.cpu().box_head_size
        assert config.roi_batch_size_per_image == DetectorConfig.cpu().roi_batch_size_per_image


@pytest.mark.parametrize(
    "name, strides, head",
    [
        ("c4", {"c4": 16}, "C5BoxHead"),
        ("c5_2fc", {"c5": 32}, "TwoMLPHead"),
        ("fpn", {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}, "TwoMLPHead"),
        ("c3_2fc", {"c3": 8}, "TwoMLPHead"),
    ],
)
def test_fpn_table3_settings_build_the_right_model(name, strides, head):
    overrides = faster_rcnn_grid("fpn_table3")[name]["overrides"]
    model = FasterRCNN(DetectorConfig.ci(**overrides))  # the ci preset's small widths
    assert type(model.roi_heads.box_head).__name__ == head
    features = model.backbone(torch.zeros(1, 3, 128, 128))
    assert {k: 128 // v.shape[-1] for k, v in features.items()} == strides
    levels = len(strides) if name == "fpn" else 1
    assert len(model.rpn.anchor_generator.num_anchors_per_location()) == levels


def test_fpn_table3_runs_with_timing_threads(tiny_synth, tmp_path):
    out = tmp_path / "fpn3.json"
    kwargs = dict(root=tiny_synth, num_eval_images=3, verbose=False, timing_threads=1, workers=0)
    results = run_grid("fpn_table3", [0], "ci", out, max_iter=2, settings=["c4", "fpn"], **kwargs)
    payload = read_results(out)["results"]
    assert payload["paper_metric"] == ablations.PAPER_METRIC["fpn_table3"]
    assert sorted(payload["runs"]) == ["c4/seed0", "fpn/seed0"]
    for run in payload["runs"].values():
        assert run["timing_threads"] == 1 and run["seconds_per_image"] > 0
        assert {"APs", "APm", "APl"} <= set(run["metrics"])
    assert payload["settings"]["c4"]["paper_table2"]["AP"] == 31.9
    assert results["summary"]["c5_2fc"]["n"] == 0


def test_command_passes_timing_threads(tmp_path, monkeypatch):
    seen = []

    def fake(name, overrides, seed, preset, max_iter=None, **kwargs):
        seen.append(kwargs["timing_threads"])
        metrics = {"AP": 0.1, "AP50": 0.2}
        return {"name": name, "seed": seed, "metrics": metrics, "wall_time_s": 1.0}

    monkeypatch.setattr(runner, "run_setting", fake)
    argv = ["grid", "--tables", "fpn_table3", "--seeds", "0", "--scale", "ci", "--workers", "0"]
    assert ablations.main([*argv, "--timing-threads", "3", "--out-dir", str(tmp_path)]) == 0
    assert seen == [3, 3, 3, 3]
    other = tmp_path / "other"
    assert ablations.main([*argv, "--settings", "fpn", "--out-dir", str(other)]) == 0
    assert seen[-1] == 1  # the grid's default: one thread, as the workers'
    assert read_results(other / "ablation_fpn_table3.json")["results"]["num_eval_images"] == 200


# -- Mask R-CNN's tables and the parallel grid runner ----------------------------------


def test_mask_tables_build_and_share_their_baseline():
    from rcnn_steps.experiments.grid import RunSpec
    from rcnn_steps.experiments.runner import detector_config

    keys = {}
    for table in ablations.MASK_TABLES:
        grid = ablations.mask_rcnn_grid(table)
        assert ablations.table_preset(table) == "cpu_mask"
        assert table in ablations.PAPER_METRIC and table in ablations.MASK_TABLE_METRIC
        for name, setting in grid.items():
            config = detector_config("ci_mask", setting["overrides"])
            FasterRCNN(config)  # builds
            spec = RunSpec(name, 0, "cpu_mask", setting["overrides"])
            keys.setdefault(spec.key(), []).append(f"{table}/{name}")
    # the mask-only base is one run shared by six tables
    shared = max(keys.values(), key=len)
    assert sorted(shared) == [
        "mrcnn_2a/fpn",
        "mrcnn_2b/sigmoid",
        "mrcnn_2c/roialign_avg",
        "mrcnn_2e/fcn",
        "mrcnn_3/mask",
        "mrcnn_pixels/torchvision",
    ]
    kp_only = ablations.mask_rcnn_grid("mrcnn_5")["kp_only"]["overrides"]
    kp_key = RunSpec("x", 0, "cpu_mask", kp_only).key()
    assert sorted(keys[kp_key]) == [
        "mrcnn_5/kp_only",
        "mrcnn_6/kp_roialign",
        "mrcnn_kp_weight/w0.1",
    ]
    assert kp_only["keypoint_loss_weight"] == ablations.KEYPOINT_LOSS_WEIGHT == 0.1
    paper_weight = ablations.mask_rcnn_grid("mrcnn_kp_weight")["w1"]["overrides"]
    assert paper_weight == {"masks": False, "keypoints": True}
    kp_mask = ablations.mask_rcnn_grid("mrcnn_5")["kp_mask"]["overrides"]
    assert kp_mask == {"keypoints": True, "keypoint_loss_weight": 0.1}
    assert ablations.mask_rcnn_grid("mrcnn_2d")["roipool"]["paper_box"]["AP"] == 28.2
    assert ablations.mask_rcnn_grid("mrcnn_2a")["fpn_deep"]["overrides"]["backbone_blocks"] == 2


def test_mask_tables_run_in_parallel_workers_and_share_runs(tiny_synth, tmp_path):
    kwargs = dict(root=tiny_synth, num_eval_images=3, verbose=False, progress=False)
    tables = ablations.run_tables(
        ["mrcnn_3", "mrcnn_pixels"], [0], "ci", tmp_path, max_iter=2, workers=2, **kwargs
    )
    runs = list((tmp_path / "runs").glob("*.json"))
    assert len(runs) == 3  # mrcnn_3/mask and mrcnn_pixels/torchvision are one run
    t3, pixels = tables["mrcnn_3"], tables["mrcnn_pixels"]
    assert t3["our_metric"] == "bbox" and pixels["our_metric"] == "segm"
    assert t3["runs"]["mask/seed0"]["metrics"] == pixels["runs"]["torchvision/seed0"]["metrics"]
    assert "mask_AP" in t3["summary"]["mask"] and "mask_AP" not in t3["summary"]["faster"]
    assert t3["summary"]["mask"]["paper"] == {"AP": 38.2}
    for run in t3["runs"].values():
        assert run["commit"] and run["spec"]["preset"] == "ci_mask"
    # another set than the book's writes its own file, never the book's
    assert not (tmp_path / "ablation_mrcnn_3.json").exists()
    on_disk = read_results(tmp_path / f"ablation_mrcnn_3_{Path(tiny_synth).name}.json")["results"]
    assert on_disk["summary"] == json.loads(json.dumps(t3["summary"]))
    # a second call plans nothing
    printed = []
    from rcnn_steps.experiments.grid import RunSpec, run_specs

    grid = ablations.mask_rcnn_grid("mrcnn_3")
    common = dict(max_iter=2, num_eval_images=3, root=str(tiny_synth))
    specs = [RunSpec(n, 0, "ci_mask", s["overrides"], **common) for n, s in grid.items()]
    run_specs(specs, tmp_path / "runs", workers=2, progress=False, log=printed.append)
    assert "2 already in" in printed[0] and "0 to do" in printed[0]


def test_long_table_is_the_final_model_and_kept_runs_export_and_load(tiny_synth, tmp_path, capsys):
    from rcnn_steps.cli import load_run
    from rcnn_steps.engine import CheckpointError, export_weights, load_checkpoint

    grid = ablations.mask_rcnn_grid("mrcnn_long")
    final = grid["roialign"]["overrides"]
    assert final == {**ablations.MASK_BASE, **ablations.FINAL_OVERRIDES}
    assert grid["roipool"]["overrides"] == {**final, "roi_op": "roipool"}
    assert grid["softmax"]["overrides"] == {**final, "mask_loss": "softmax"}
    assert grid["softmax"]["paper"] == ablations.mask_rcnn_grid("mrcnn_2b")["softmax"]["paper"]
    table_2a = ablations.mask_rcnn_grid("mrcnn_2a")
    assert grid["c4"]["overrides"] == {**table_2a["c4"]["overrides"], **ablations.FINAL_OVERRIDES}
    assert grid["c4"]["paper"] == table_2a["c4"]["paper"]
    # FPN vs C4 at this budget compares with Table 2(a)'s own rows, on "paper_2a"
    assert grid["c4"]["paper_2a"] == table_2a["c4"]["paper"]
    assert grid["roialign"]["paper_2a"] == table_2a["fpn"]["paper"]
    assert grid["keypoints"]["overrides"] == {
        **final,
        "keypoints": True,
        "keypoint_loss_weight": 0.1,
    }
    # keeping a run's checkpoint does not change its cache key
    kwargs = dict(root=tiny_synth, num_eval_images=2, verbose=False, progress=False)
    table = ablations.run_tables(
        ["mrcnn_long"], [0], "ci", tmp_path, max_iter=2, workers=0, settings=["roialign"],
        keep_runs=tmp_path / "kept", **kwargs,
    )["mrcnn_long"]  # fmt: skip
    assert table["runs"]["roialign/seed0"]["spec"]["out_dir"].startswith(str(tmp_path / "kept"))
    folders = list((tmp_path / "kept").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("roialign-ci_mask-s0-")
    assert (tmp_path / "runs" / f"{folders[0].name.removeprefix('roialign-')}.json").exists()
    last = folders[0] / "last.pt"
    out = export_weights(last, tmp_path / "final.pt")
    assert out.stat().st_size < last.stat().st_size
    assert set(load_checkpoint(out)) <= {"model", "model_description", "step", "config",
                                         "eval_history"}  # fmt: skip
    model, _ = load_run(out)
    full = load_checkpoint(last)["model"]
    assert all(torch.equal(v, full[k]) for k, v in model.state_dict().items())
    assert model.config.mask_aligned and model.config.roi_op == "roialign_avg"
    assert load_run(out)[1] == {}  # a kept grid run has no run.json: no names to give
    # the run's description travels inside the copy, so the file alone names its classes
    named = export_weights(last, tmp_path / "named.pt", run={"data": {"class_names": ["bg", "a"]}})
    assert load_run(named)[1] == {"data": {"class_names": ["bg", "a"]}}
    from rcnn_steps.cli import main as cli

    cli(["export", "--checkpoint", str(last), "--out", str(tmp_path / "cli.pt"),
         "--data", str(tiny_synth)])  # fmt: skip
    data = load_run(tmp_path / "cli.pt")[1]["data"]
    assert data["class_names"][0] == "__background__" and len(data["class_names"]) > 1
    assert data["root"] == str(Path(tiny_synth).resolve())
    assert cli(["export", "--checkpoint", str(last), "--out", str(tmp_path / "no.pt"),
                "--data", str(tmp_path)]) == 2  # fmt: skip
    assert "no annotations/instances_train.json" in capsys.readouterr().err
    assert not (tmp_path / "no.pt").exists()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_weights(last, out)
    with pytest.raises(ValueError, match="the checkpoint itself"):
        export_weights(last, last, overwrite=True)
    (tmp_path / "bad.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        export_weights(tmp_path / "bad.pt", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_grid_reports_a_failed_run_and_keeps_the_others(tmp_path, monkeypatch):
    from rcnn_steps.experiments.grid import RunSpec, run_specs

    def fake(name, overrides, seed, preset, max_iter=None, **kwargs):
        if name == "bad":
            raise FloatingPointError("loss is nan")
        return {"name": name, "seed": seed, "metrics": {"AP": 0.5}, "wall_time_s": 2.0}

    monkeypatch.setattr(runner, "run_setting", fake)
    logged = []
    specs = [RunSpec("good", 0, "ci", {"rpn_lambda": 2.0}), RunSpec("bad", 0, "ci")]
    with pytest.raises(RuntimeError, match=r"1 run\(s\) failed: bad/seed0.*loss is nan"):
        run_specs(specs, tmp_path, workers=0, progress=False, log=logged.append)
    assert len(list(tmp_path.glob("*.json"))) == 1
    assert "about" in logged[0] and any("FAILED bad/seed0" in line for line in logged)


def test_grid_refuses_zero_threads_and_warns_when_it_oversubscribes(tmp_path, monkeypatch):
    from rcnn_steps.experiments import grid
    from rcnn_steps.experiments.grid import RunSpec, run_specs

    def fake(name, overrides, seed, preset, max_iter=None, **kwargs):
        return {"name": name, "seed": seed, "metrics": {"AP": 0.5}, "wall_time_s": 2.0}

    monkeypatch.setattr(runner, "run_setting", fake)
    specs = [RunSpec("a", 0, "ci", {"rpn_lambda": 2.0})]
    with pytest.raises(ValueError, match="threads_per_worker must be at least 1"):
        run_specs(specs, tmp_path, workers=0, threads_per_worker=0, progress=False)
    assert not list(tmp_path.glob("*.json"))  # nothing ran
    monkeypatch.setattr(grid.os, "cpu_count", lambda: 2)
    logged = []
    run_specs(specs, tmp_path, workers=0, threads_per_worker=4, progress=False,
              log=logged.append)  # fmt: skip
    assert any("oversubscribe 2 core(s)" in line for line in logged)
    logged.clear()  # one thread in one worker: no warning (and the run is cached now)
    run_specs(specs + [RunSpec("b", 0, "ci")], tmp_path, workers=0, progress=False,
              log=logged.append)  # fmt: skip
    assert not any("warning" in line for line in logged)


def test_read_grid_results_takes_labels_and_order_from_the_grid(tmp_path):
    from rcnn_steps.utils import write_results

    grid = ablations.faster_rcnn_grid("table8")
    stale = {name: dict(setting, label="an old label") for name, setting in grid.items()}
    summary = {name: {"AP50": {"mean": 0.5, "min": 0.4, "max": 0.6}, "n": 2} for name in grid}
    del summary["1s3r_256"]  # as if the setting had joined the table after the file was written
    results = {
        "table": "table8",
        "preset": "cpu",
        "max_iter": 1500,
        "paper_metric": "old",
        "settings": stale,
        "runs": {},
        "summary": dict(sorted(summary.items())),
    }
    path = tmp_path / "ablation_table8.json"
    write_results(path, results, preset="cpu", seeds=[0, 1])
    read = ablations.read_grid_results("table8", path)
    assert read["order"] == list(grid)  # the paper's order, not the file's sorted keys
    assert read["labels"]["1s1r_128"] == grid["1s1r_128"]["label"] != "an old label"
    assert read["paper"]["3s3r"] == 69.9 and read["metric"] == "AP50"
    assert read["summary"]["3s3r"]["AP50"]["mean"] == 0.5
    assert read["summary"]["1s3r_256"] == {"seeds": [], "n": 0}  # not run: shown so, no error
    with pytest.raises(ValueError, match="holds the grid 'table8', not 'table9'"):
        ablations.read_grid_results("table9", path)


def _toy_grid(values: dict[str, list[float]], paper: dict[str, float | None]) -> dict:
    from rcnn_steps.experiments.grid import _spread

    summary = {
        name: {
            "n": len(v),
            "mask_AP": _spread(v),
            "paper": None if paper[name] is None else {"AP": paper[name]},
        }
        for name, v in values.items()
    }
    return {"table": "toy", "family": "mask_", "summary": summary}


@pytest.mark.parametrize(
    "values, paper, want",
    [
        ({"a": [0.30, 0.32], "b": [0.40, 0.41]}, {"a": 26.9, "b": 30.3},
         ("reproduces in direction, 2.8x the paper's effect, beyond the seed spread", True)),
        ({"a": [0.30, 0.36], "b": [0.33, 0.35]}, {"a": 30.0, "b": 31.0},
         ("reproduces in direction, 1.0x the paper's effect, within the seed spread", False)),
        ({"a": [0.40, 0.41], "b": [0.30, 0.32]}, {"a": 26.9, "b": 30.3},
         ("opposite to the paper, beyond the seed spread", True)),
        ({"a": [0.40, 0.41], "b": [0.30, 0.32]}, {"a": 31.5, "b": 31.5},
         ("the paper saw no difference, beyond the seed spread", True)),
        ({"a": [0.40, 0.41], "b": [0.30, 0.32]}, {"a": None, "b": 31.5},
         ("no paper number, beyond the seed spread", True)),
        ({"a": [0.30], "b": [0.40]}, {"a": 26.9, "b": 30.3},
         ("reproduces in direction, 2.9x the paper's effect, one seed (no spread to compare "
          "with)", False)),
    ],
)  # fmt: skip
def test_compare_settings_says_what_reproduces(values, paper, want):
    c = ablations.compare_settings(_toy_grid(values, paper), "a", "b")
    assert (c["verdict"], c["separated"]) == want
    mean = lambda v: 100 * statistics.mean(v)  # noqa: E731
    assert c["ours"] == pytest.approx(mean(values["b"]) - mean(values["a"]), abs=0.01)
    assert c["ours_min"] == pytest.approx(100 * (min(values["b"]) - max(values["a"])), abs=0.01)
    if c["ratio"] is not None:
        assert c["ratio"] == pytest.approx(c["ours"] / c["paper"], abs=0.01)


def test_compare_settings_refuses_a_setting_not_run_yet():
    grid = _toy_grid({"a": [0.3], "b": [0.4]}, {"a": None, "b": None})
    grid["summary"]["b"] = {"n": 0, "paper": None}
    with pytest.raises(ValueError, match="'b' has no mask_AP yet.*--tables toy"):
        ablations.compare_settings(grid, "a", "b")


def test_widest_seed_range_is_the_widest_setting_in_points():
    grid = _toy_grid({"a": [0.30, 0.32], "b": [0.40, 0.45], "c": [0.5]}, dict.fromkeys("abc"))
    grid["summary"]["d"] = {"n": 0, "paper": None}  # not run: ignored
    assert ablations.widest_seed_range(grid) == 5.0
    with pytest.raises(ValueError, match="no setting of 'toy' has AP75"):
        ablations.widest_seed_range(grid, "AP75", family="")


def test_long_table_c4_trains_and_the_grid_cli_takes_threads_per_worker(tiny_synth, tmp_path):
    """The final model on the C4 design runs end to end (exact pixels with the C4 mask
    head), in one worker of two threads, as the CLI's --threads-per-worker asks."""
    out = tmp_path / "out"
    code = ablations.main(
        ["grid", "--tables", "mrcnn_long", "--settings", "c4", "--seeds", "0", "--scale", "ci",
         "--max-iter", "2", "--workers", "1", "--threads-per-worker", "2", "--root",
         str(tiny_synth), "--num-eval-images", "2", "--out-dir", str(out), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    table = json.loads((out / f"ablation_mrcnn_long_{Path(tiny_synth).name}.json").read_text())[
        "results"
    ]
    run = table["runs"]["c4/seed0"]
    assert run["spec"]["overrides"]["feature_stage"] == "c4"
    assert run["spec"]["overrides"]["mask_aligned"] is True
    assert run["train_threads"] == 2
    assert "segm_metrics" in run


# ----------------------------------------------------------------------------------------
# Effects as records for the forest chart, from the committed results files

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _committed_runs(table):
    return json.loads((RESULTS / f"ablation_{table}.json").read_text())["results"]["runs"]


def test_effect_records_from_a_committed_file_match_the_runs_by_hand():
    runs = _committed_runs("mrcnn_2c")
    records = ablations.effect_records(
        ablations.read_grid_results("mrcnn_2c", RESULTS / "ablation_mrcnn_2c.json"), "roipool"
    )
    # every other setting, in the paper's order, each against RoIPool seed by seed
    assert [r["variant"] for r in records] == [
        "roiwarp_max", "roiwarp_avg", "roialign_max", "roialign_avg"
    ]  # fmt: skip
    align = records[-1]
    by_hand = [
        100 * (runs[f"roialign_avg/seed{s}"]["segm_metrics"]["AP"]
               - runs[f"roipool/seed{s}"]["segm_metrics"]["AP"])
        for s in (0, 1, 2)
    ]  # fmt: skip
    assert align["ours"] == pytest.approx(by_hand) and align["seeds"] == [0, 1, 2]
    assert align["paper"] == pytest.approx(30.3 - 26.9)  # Table 2(c), mask AP
    assert align["metric"] == "mask AP" and align["paper_metric"] == "mask AP"
    assert align["label"] == "RoIAlign, avg over RoIPool"
    # the mean of the paired effects is the difference of the seed means (the same seeds)
    summary = json.loads((RESULTS / "ablation_mrcnn_2c.json").read_text())["results"]["summary"]
    means = summary["roialign_avg"]["mask_AP"]["mean"] - summary["roipool"]["mask_AP"]["mean"]
    assert statistics.mean(align["ours"]) == pytest.approx(100 * means, abs=0.01)


def test_effect_records_read_each_tables_paper_numbers():
    t8 = ablations.read_grid_results("table8", RESULTS / "ablation_table8.json")
    (r,) = ablations.effect_records(t8, "1s1r_128", ["3s3r"], labels={"3s3r": "3 x 3 anchors"})
    runs = _committed_runs("table8")
    assert r["ours"] == pytest.approx(
        [100 * (runs[f"3s3r/seed{s}"]["metrics"]["AP50"] - runs[f"1s1r_128/seed{s}"]["metrics"]
                ["AP50"]) for s in (0, 1, 2)]
    )  # fmt: skip
    assert r["metric"] == "box AP50" and r["label"].startswith("3 x 3 anchors over 1 scale")
    assert r["paper"] == pytest.approx(69.9 - 65.8) and r["paper_metric"] == "VOC07 mAP"
    # a VOC table's mAP sits beside our AP50 only
    assert ablations.effect_records(t8, "1s1r_128", ["3s3r"], "AP")[0]["paper"] is None
    t2d = ablations.read_grid_results("table2d", RESULTS / "ablation_table2d.json")
    (box,) = ablations.effect_records(t2d, "roipool")  # box AP, as ours
    (mask,) = ablations.effect_records(t2d, "roipool", paper_key="paper_mask")
    assert box["paper"] == pytest.approx(34.0 - 28.2) and box["paper_metric"] == "box AP"
    assert mask["paper"] == pytest.approx(30.9 - 23.6) and mask["paper_metric"] == "mask AP"
    m2d = ablations.read_grid_results("mrcnn_2d", RESULTS / "ablation_mrcnn_2d.json")
    (mask,) = ablations.effect_records(m2d, "roipool")  # mask AP, as ours
    (box,) = ablations.effect_records(m2d, "roipool", family="", paper_key="paper_box")
    assert (mask["metric"], mask["paper_metric"]) == ("mask AP", "mask AP")
    assert (box["metric"], box["paper_metric"]) == ("box AP", "box AP")
    assert box["paper"] == pytest.approx(34.0 - 28.2)
    fpn = ablations.read_grid_results("fpn_table3", RESULTS / "ablation_fpn_table3.json")
    (ours_only,) = ablations.effect_records(fpn, "fpn", ["c3_2fc"], "APs", section="sizes")
    assert ours_only["paper"] is None and ours_only["metric"] == "box APs"
    assert ours_only["section"] == "sizes"


def test_effect_records_of_one_seed_and_bad_names():
    long = ablations.read_grid_results("mrcnn_long", RESULTS / "ablation_mrcnn_long.json")
    (r,) = ablations.effect_records(long, "roipool", ["roialign"])
    runs = _committed_runs("mrcnn_long")
    assert r["seeds"] == [0] and r["ours"] == pytest.approx(
        [100 * (runs["roialign/seed0"]["segm_metrics"]["AP"]
                - runs["roipool/seed0"]["segm_metrics"]["AP"])]
    )  # fmt: skip
    with pytest.raises(ValueError, match="no setting 'roialgn'"):
        ablations.effect_records(long, "roialgn")
    with pytest.raises(ValueError, match="no setting 'x'"):
        ablations.effect_records(long, "roipool", ["x"])
    empty = {**long, "runs": {k: v for k, v in long["runs"].items() if k.startswith("roipool")}}
    with pytest.raises(ValueError, match="share no seed"):
        ablations.effect_records(empty, "roipool", ["roialign"])


def test_above_every_seed_asks_for_a_gap_between_the_seed_ranges():
    grid = _toy_grid(
        {"a": [0.30, 0.34], "b": [0.40, 0.45], "c": [0.33, 0.50]}, dict.fromkeys("abc")
    )
    assert ablations.seed_range(grid, "b") == (0.40, 0.45)  # the table's family: mask_AP
    assert ablations.above_every_seed(grid, "b", "a")  # worst b 0.40 > best a 0.34
    assert not ablations.above_every_seed(grid, "a", "b")  # a direction, not a distance
    assert ablations.above_every_seed(grid, "b", "a", margin=0.05)  # 6 points apart
    assert not ablations.above_every_seed(grid, "b", "a", margin=0.07)
    assert not ablations.above_every_seed(grid, "b", "c")  # overlapping ranges
    assert not ablations.above_every_seed(grid, "c", "b")
    with pytest.raises(ValueError, match="'b' of 'toy' has no AP75.*--tables toy"):
        ablations.above_every_seed(grid, "b", "a", "AP75", family="")


def test_a_grid_on_the_256_px_set_scales_its_pixel_fields(monkeypatch, tmp_path):
    """``--data 256``: the same settings with anchors and FPN's s0 doubled (the ladder's
    rule, :func:`~rcnn_steps.experiments.datasets.scaled_overrides`), keyed by the set's
    name, written to ``ablation_<table>_256.json``; the book's runs keep their keys."""
    from rcnn_steps.experiments.datasets import PIXEL_FIELDS, results_name
    from rcnn_steps.experiments.runner import detector_config

    grid = ablations.mask_rcnn_grid("mrcnn_2c")
    book = ablations._specs("mrcnn_2c", grid, [0], "cpu_mask", None, None, 200, 1)
    big = ablations._specs("mrcnn_2c", grid, [0], "cpu_mask", None,
                           "synth-256px-from128-seed0", 200, 1)  # fmt: skip
    assert [s.overrides for s in book] == [s["overrides"] for s in grid.values()]
    for small, large in zip(book, big, strict=True):
        a, b = (vars(detector_config("cpu_mask", s.overrides)) for s in (small, large))
        assert b["anchor_sizes"] == tuple(2 * x for x in a["anchor_sizes"])
        assert b["roi_canonical_size"] == 2 * a["roi_canonical_size"]
        assert {k: v for k, v in a.items() if k not in PIXEL_FIELDS} == {
            k: v for k, v in b.items() if k not in PIXEL_FIELDS
        }
        assert large.root == "synth-256px-from128-seed0" and large.key() != small.key()
    assert results_name("ablation_mrcnn_2c", None) == "ablation_mrcnn_2c.json"
    assert results_name("ablation_mrcnn_2c", "synth-256px-from128-seed0") == (
        "ablation_mrcnn_2c_256.json"
    )
    # the command: --data names the set (made if missing), --root and --data exclude
    asked = {}
    monkeypatch.setattr(ablations, "run_tables", lambda *a, **k: asked.update(k) or {})
    monkeypatch.setattr(ablations, "data_root", lambda data=None, root=None: data or root)
    monkeypatch.setattr(ablations, "resolve_root", lambda root: root)
    assert ablations.main(["grid", "--tables", "mrcnn_2c", "--data", "256"]) == 0
    assert asked["root"] == "256"
    with pytest.raises(SystemExit):
        ablations.main(["grid", "--tables", "mrcnn_2c", "--data", "256", "--root", str(tmp_path)])


def test_a_grid_worker_ends_when_its_grid_is_killed(tmp_path):
    """A worker whose grid dies (SIGKILL: no clean-up runs) exits within a few checks,
    instead of training on unseen: the grid writes the cache, so its result would be lost."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "grid.py"
    script.write_text(
        "import multiprocessing, os, sys, time\n"
        "from rcnn_steps.experiments import grid\n"
        "def worker(path):\n"
        "    grid.exit_when_orphaned(os.getppid(), every=0.1)  # as _worker_init does\n"
        "    open(path, 'w').write(str(os.getpid()))\n"
        "    time.sleep(120)\n"
        "if __name__ == '__main__':\n"
        "    ctx = multiprocessing.get_context('spawn')\n"
        "    ctx.Process(target=worker, args=(sys.argv[1],)).start()\n"
        "    time.sleep(120)\n"
    )
    pid_file = tmp_path / "worker.pid"
    grid_process = subprocess.Popen([sys.executable, str(script), str(pid_file)])

    def running(pid: int) -> bool:  # an exited process not yet reaped is a zombie, "Z"
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline, "the worker did not start"
        time.sleep(0.1)
    worker = int(pid_file.read_text())
    time.sleep(0.5)
    assert running(worker)  # alive while its grid is
    os.kill(grid_process.pid, signal.SIGKILL)
    grid_process.wait()
    deadline = time.monotonic() + 10
    while running(worker):
        assert time.monotonic() < deadline, "the worker outlived its grid"
        time.sleep(0.1)
