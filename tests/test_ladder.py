"""The ladder (rcnn_steps.experiments.ladder): one change per rung, stable keys, a tiny run,
the plan."""

import json

import pytest

from rcnn_steps.data import synth_folder_name
from rcnn_steps.experiments import ablations, ladder
from rcnn_steps.experiments.grid import RunSpec
from rcnn_steps.experiments.runner import detector_config


def _timing(root, sec_per_iter, setup_s, eval_s_per_image):
    rates = {"sec_per_iter": sec_per_iter, "setup_s": setup_s, "eval_s_per_image": eval_s_per_image}
    return {"root": root, "rungs": {name: dict(rates) for name in ladder.RUNGS}}


def test_rungs_in_the_papers_order():
    assert [r.name for r in ladder.LADDER] == [
        "rcnn", "fast_rcnn", "roialign", "faster_rcnn", "fpn", "mask_rcnn", "mask_rcnn_long"
    ]  # fmt: skip
    assert [r.method for r in ladder.LADDER] == [
        "rcnn", "selective_search", "selective_search", "rpn", "rpn", "rpn", "rpn"
    ]  # fmt: skip


def test_each_rung_changes_one_thing():
    rungs = ladder.LADDER
    # R-CNN -> Fast R-CNN: another pipeline on the same proposals (selective search)
    assert rungs[0].method == "rcnn" and rungs[1].method == "selective_search"
    assert detector_config(ladder.LADDER_PRESET, rungs[1].overrides).roi_op == "roipool"
    for before, after in zip(rungs[1:], rungs[2:], strict=False):
        diff = ladder.config_diff(before, after)
        assert set(diff) == set(after.changes) | set(after.follows), (after.name, diff)
        for name, value in after.changes.items():
            old = getattr(detector_config(ladder.LADDER_PRESET, before.overrides), name)
            assert diff[name] == (old, value)
        method_changed = before.method != after.method
        budget_changed = before.max_iter != after.max_iter
        # exactly one of: a config change, the proposals' source, the budget
        assert [bool(after.changes), method_changed, budget_changed].count(True) == 1, after.name
    assert rungs[3].method == "rpn" and rungs[2].method == "selective_search"
    assert rungs[-1].max_iter == ablations.LONG_MAX_ITER


def test_the_final_rungs_are_the_final_model():
    # the mask rung is mrcnn_pixels' "exact" and the long rung mrcnn_long's "roialign":
    # the same keys, so their cached runs are reused
    long = ablations.mask_rcnn_grid("mrcnn_long")["roialign"]
    exact = ablations.mask_rcnn_grid("mrcnn_pixels")["exact"]
    specs = {s.name: s for s in ladder.ladder_specs(None, [0])}
    grid_long = RunSpec("roialign", 0, "cpu_mask", long["overrides"], max_iter=6000,
                        num_eval_images=200)  # fmt: skip
    grid_exact = RunSpec("exact", 0, "cpu_mask", exact["overrides"], num_eval_images=200)
    assert specs["mask_rcnn_long"].key() == grid_long.key()
    assert specs["mask_rcnn"].key() == grid_exact.key()


def test_keys_are_stable():
    keys = {(s.name, s.seed): s.key() for s in ladder.ladder_specs(None)}
    assert len(set(keys.values())) == len(keys) == 7 * 3
    # computed from what decides the result: the same today as when the grid started
    assert keys[("rcnn", 0)] == "cpu_mask-s0-a6e23f32def0"
    assert keys[("fast_rcnn", 1)] == "cpu_mask-s1-b286e9a718ae"
    assert keys[("mask_rcnn_long", 0)] == "cpu_mask-s0-553ff02fe418"
    # the 256 px set is keyed by its folder name, wherever the data folder is
    spec = ladder.ladder_specs("synth-256px-from128-seed0", [0], rungs=["fpn"])[0]
    assert spec.root == "synth-256px-from128-seed0" and spec.key() == spec.key()


def test_data_tags():
    assert ladder.data_tag(None) == "128"
    assert ladder.data_tag("synth-256px-from128-seed0") == "256"
    assert ladder.data_tag("/x/synth-256px-from128-seed0-hard") == "256-hard"
    assert ladder.data_tag("synth-128px-seed3") == "128-seed3"
    # the folder ensure_synth makes for the hard style
    assert ladder.data_tag(synth_folder_name(128, 0, scene_style="hard")) == "128-hard"
    assert ladder.data_tag("/x/mine") == "mine"


def test_rcnn_budget_is_the_detectors():
    config = detector_config("cpu_mask")
    assert ladder.rcnn_windows_per_iteration("cpu_mask") == 8 * config.roi_batch_size_per_image


def test_tiny_ladder_end_to_end(tiny_synth, tmp_path):
    root = ladder.data_root(root=tiny_synth)
    assert root == str(tiny_synth.resolve())
    out = tmp_path / "ladder_tiny.json"
    timing = _timing(root, 0.1, 1.0, 0.01)
    lines = []
    results = ladder.run_ladder(root, [0], out, rungs=["rcnn", "fast_rcnn"], preset="ci_mask",
                                max_iter=2, num_eval_images=3, workers=0,
                                cache_dir=tmp_path / "runs", timing=timing,
                                log=lines.append)  # fmt: skip
    assert any("ladder plan" in line for line in lines)
    assert set(results["runs"]) == {"rcnn/seed0", "fast_rcnn/seed0"}
    rcnn, fast = results["runs"]["rcnn/seed0"], results["runs"]["fast_rcnn/seed0"]
    assert rcnn["method"] == "rcnn" and fast["method"] == "selective_search"
    assert rcnn["max_iter"] == fast["max_iter"] == 2
    assert rcnn["rcnn_config"]["batch_size"] == ladder.rcnn_windows_per_iteration("ci_mask")
    for run in (rcnn, fast):
        assert {"AP", "APs", "APm", "APl"} <= set(run["metrics"])
        assert run["timing_threads"] == 1 and run["wall_time_s"] > 0
        assert run["proposal_seconds_per_image"] > 0  # both on selective search
    # the chapter reads it as it reads a grid, and compares two rungs
    grid = ladder.read_ladder_results(out)
    assert grid["order"] == ["rcnn", "fast_rcnn"] and grid["summary"]["rcnn"]["n"] == 1
    assert "AP" in grid["summary"]["fast_rcnn"] and "seconds_per_image" in grid["summary"]["rcnn"]
    effect = ablations.compare_settings(grid, "rcnn", "fast_rcnn")
    assert effect["verdict"].startswith("no paper number")
    payload = json.loads(out.read_text())
    assert "budget" in payload["results"] and payload["provenance"]["seeds"] == [0]
    # resumable: a second call finds both runs in the cache and trains nothing
    lines.clear()
    ladder.run_ladder(root, [0], out, rungs=["rcnn", "fast_rcnn"], preset="ci_mask",
                      max_iter=2, num_eval_images=3, workers=0, cache_dir=tmp_path / "runs",
                      log=lines.append)  # fmt: skip
    assert any("2 already in" in line for line in lines)


def test_runs_cached_by_other_grids_are_filed_under_their_rungs(tmp_path):
    # the mask rung's runs were cached by mrcnn_pixels as "exact", the long rung's by
    # mrcnn_long as "roialign" (also the name of a rung): each counts for its own rung
    rungs = ["fpn", "mask_rcnn", "mask_rcnn_long"]
    cache = tmp_path / "runs"
    cache.mkdir()
    names = {"fpn": "fpn", "mask_rcnn": "exact", "mask_rcnn_long": "roialign"}
    for k, spec in enumerate(ladder.ladder_specs(None, [0], rungs=rungs)):
        run = {"name": names[spec.name], "seed": 0, "metrics": {"AP": 0.5 + k / 10},
               "wall_time_s": 1.0}  # fmt: skip
        (cache / f"{spec.key()}.json").write_text(json.dumps(run))
    out = tmp_path / "ladder.json"
    ladder.run_ladder(None, [0], out, rungs=rungs, workers=0, cache_dir=cache,
                      log=lambda _: None)  # fmt: skip
    summary = ladder.read_ladder_results(out)["summary"]
    assert [summary[name]["AP"]["mean"] for name in rungs] == [0.5, 0.6, 0.7]
    assert "roialign" not in summary and "exact" not in summary


def test_plan_prints(tmp_path):
    timing = _timing(None, 1.0, 10.0, 0.1)
    plan = ladder.plan(ladder.ladder_specs(None), timing, tmp_path)
    text = ladder.format_plan(plan)
    assert "mask_rcnn_long" in text and "core-hours" in text
    one = 10 + 1500 + 200 * 0.1
    assert plan["rungs"]["fpn"]["run_s"] == pytest.approx(one)
    assert plan["rungs"]["mask_rcnn_long"]["run_s"] == pytest.approx(10 + 6000 + 20)
    assert plan["core_hours"] == pytest.approx((6 * 3 * one + 3 * 6030) / 3600)


def test_named_data_sets(monkeypatch, tmp_path):
    made = []

    def fake_ensure_synth(**kwargs):
        made.append(kwargs)
        return tmp_path / synth_folder_name(kwargs.get("size", 128), 0, **{
            k: v for k, v in kwargs.items() if k in ("layout_size", "scene_style")})  # fmt: skip

    monkeypatch.setenv("RCNN_STEPS_DATA", str(tmp_path))
    monkeypatch.setattr("rcnn_steps.data.ensure_synth", fake_ensure_synth)
    assert ladder.data_root("128") is None
    root = ladder.data_root("128-hard")
    assert made[0] == {"scene_style": "hard"} and ladder.data_tag(root) == "128-hard"
    assert ladder.data_tag(ladder.data_root("256-hard")) == "256-hard"
    # 512: the book's 128 px layouts drawn at four times the resolution
    root = ladder.data_root("512")
    assert {"size": 512, "layout_size": 128} in made
    assert root == "synth-512px-from128-seed0" and ladder.data_tag(root) == "512"
    assert ladder.image_scale(root) == 4
    with pytest.raises(ValueError, match="128-hard"):
        ladder.data_root("1024")


def test_detectors_scale_their_pixel_fields_with_the_images():
    assert ladder.image_scale(None) == 1
    assert ladder.image_scale("synth-256px-from128-seed0") == 2
    assert ladder.image_scale("/x/synth-512px-from128-seed0-hard") == 4
    assert ladder.image_scale("synth-128px-seed0-hard") == ladder.image_scale("/x/mine") == 1
    with pytest.raises(ValueError, match="whole multiple"):
        ladder.image_scale("synth-200px-from128-seed0")
    book = {s.name: s for s in ladder.ladder_specs(None, [0])}
    big = {s.name: s for s in ladder.ladder_specs("synth-256px-from128-seed0", [0])}
    assert big["rcnn"].overrides == book["rcnn"].overrides  # crops: nothing in image pixels
    for name in ("fast_rcnn", "faster_rcnn", "fpn", "mask_rcnn_long"):
        small = detector_config(ladder.LADDER_PRESET, book[name].overrides)
        large = detector_config(ladder.LADDER_PRESET, big[name].overrides)
        assert large.anchor_sizes == tuple(2 * a for a in small.anchor_sizes)
        assert large.fpn_anchor_sizes == tuple(2 * a for a in small.fpn_anchor_sizes)
        assert large.roi_canonical_size == 2 * small.roi_canonical_size
        # nothing else differs: the same model, read at twice the resolution
        same = {k: v for k, v in vars(large).items() if k not in ladder.PIXEL_FIELDS}
        assert same == {k: v for k, v in vars(small).items() if k not in ladder.PIXEL_FIELDS}
