"""A preset is defined once: its record in rcnn_steps.experiments is what every road reads
(the schedule, the feeding, the results file), and the grids' cache keys did not move when
the facts moved into the records."""

import dataclasses
import json
import re
from pathlib import Path

import pytest

from rcnn_steps import cli, faster_rcnn  # faster_rcnn: the old path, a shim
from rcnn_steps.detectors.faster_rcnn import DetectorConfig
from rcnn_steps.engine import TrainConfig
from rcnn_steps.experiments import (
    PRESETS,
    Feeding,
    Preset,
    ablations,
    detector_config,
    evaluated_presets,
    feeding,
    grid,
    ladder,
    preset,
    runner,
    schedule,
    train_config,
)
from rcnn_steps.experiments.grid import RunSpec

RUNS = Path(__file__).resolve().parents[1] / "results" / "runs"

#: The schedules as PRESET_TRAINING held them before the records (every grid key hashes
#: them: a changed value is a changed key).
SCHEDULES_BEFORE = {
    "ci": dict(max_iter=30, lr=0.02, warmup_steps=5, log_every=10),
    "cpu": dict(max_iter=1500, lr=0.05, warmup_steps=50, lr_steps=(1200,), log_every=50),
    "cpu_fpn": dict(max_iter=1500, lr=0.05, warmup_steps=50, lr_steps=(1200,), log_every=50),
    "ci_mask": dict(max_iter=30, lr=0.02, warmup_steps=5, log_every=10, grad_clip_norm=10.0),
    "cpu_mask": dict(max_iter=1500, lr=0.05, warmup_steps=50, lr_steps=(1200,), log_every=50,
                     grad_clip_norm=10.0),
    "gpu": dict(max_iter=6000, lr=0.02, warmup_steps=500, lr_steps=(4500,),
                grad_clip_norm=10.0, log_every=50),
    "gpu_mask": dict(max_iter=6000, lr=0.02, warmup_steps=500, lr_steps=(4500,),
                     grad_clip_norm=10.0, log_every=50),
    "coco_mask": dict(max_iter=160_000, lr=0.02, warmup_steps=1000, lr_steps=(120_000,),
                      log_every=100),
}  # fmt: skip

#: How run_setting fed every preset before it read the records (batch 8 of the images as
#: they are, no flips): the feeding of every preset a grid or ``evaluate`` runs must stay
#: this, or the cached runs of results/runs/ (keyed without the feeding) go stale.
GRID_FEEDING_BEFORE = dict(batch_size=8, min_sizes=None, test_size=None, max_size=None, flip=False)

#: A few cache keys computed on the code before the records (commit 58cad0c).
KEYS_BEFORE = {
    ("fpn_table3", "cpu", 0, None): "cpu-s0-633f0275d18f",
    ("fpn_table3", "cpu", 2, None): "cpu-s2-b2e9479d641b",
    ("fpn_table3", "ci", 1, 6000): "ci-s1-03fe58bee210",
}


def _choices(capsys, command: str) -> list[str]:
    """The ``--preset`` choices ``python -m rcnn_steps <command> --help`` offers."""
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    usage = capsys.readouterr().out
    return re.search(r"--preset \{([^}]*)\}", usage).group(1).split(",")


def _replaced(monkeypatch, name: str, **changes) -> Preset:
    """Put a changed copy of preset ``name``'s record in the registry for one test."""
    changed = dataclasses.replace(PRESETS[name], **changes)
    monkeypatch.setitem(PRESETS, name, changed)
    return changed


# ----------------------------------------------------------------------------------------
# The registry


def test_the_registry_holds_every_preset_the_commands_offer(capsys):
    assert _choices(capsys, "train") == sorted(PRESETS)
    offered = _choices(capsys, "evaluate")
    assert offered == evaluated_presets() == ["ci", "ci_mask", "cpu", "cpu_fpn", "cpu_mask"]
    tables = {ablations.table_preset(t, s) for t in ablations.ALL_TABLES for s in ("ci", "cpu")}
    assert tables | {ladder.LADDER_PRESET} <= set(PRESETS)
    assert runner.PRESETS is PRESETS  # the name the chapters and tests import


def test_each_record_builds_its_own_preset():
    for name, record in PRESETS.items():
        assert record.name == name and record.description
        assert detector_config(name).preset == name
        assert runner.detector_config(name, {"box_nms_thresh": 0.4}).box_nms_thresh == 0.4
    assert PRESETS["cpu_mask"].model == DetectorConfig.cpu_mask


def test_schedules_and_train_config_are_todays_values():
    for name, before in SCHEDULES_BEFORE.items():
        assert schedule(name) == before, name
        assert dict(PRESETS[name].schedule) == before, name
    # train_config("cpu_mask") field by field, as faster_rcnn.PRESET_TRAINING made it
    expected = TrainConfig(max_iter=1500, lr=0.05, warmup_steps=50, lr_steps=(1200,),
                           log_every=50, grad_clip_norm=10.0)  # fmt: skip
    for made in (train_config("cpu_mask"), faster_rcnn.train_config("cpu_mask")):
        assert dataclasses.asdict(made) == dataclasses.asdict(expected)
    assert train_config("ci", max_iter=600).max_iter == 600
    assert faster_rcnn.train_config() == train_config("cpu")  # the old path's default
    assert train_config("cpu_fpn") == train_config("cpu")


def test_the_feeding_of_every_preset_a_grid_or_evaluate_runs_is_unchanged():
    run_by_grids = {
        ablations.table_preset(t, s) for t in ablations.ALL_TABLES for s in ("ci", "cpu")
    }
    for name in run_by_grids | set(evaluated_presets()) | {ladder.LADDER_PRESET}:
        assert feeding(name) == GRID_FEEDING_BEFORE, name
    assert feeding("gpu_mask") == dict(
        batch_size=8, min_sizes=(448, 480, 512, 544, 576), test_size=512, max_size=960, flip=True
    )
    assert feeding("coco_mask") == dict(
        batch_size=2, min_sizes=(800,), test_size=800, max_size=1333, flip=True
    )


def test_the_results_files_and_table_rows_are_todays():
    reported = {n: (p.chapter, p.detector, p.results_file) for n, p in PRESETS.items()}
    assert reported["cpu"] == reported["ci"] == ("04", "Faster R-CNN", "faster_rcnn.json")
    assert reported["cpu_fpn"] == ("05", "Faster R-CNN + FPN", "faster_rcnn_fpn.json")
    assert reported["cpu_mask"] == reported["ci_mask"] == ("07", "Mask R-CNN", "mask_rcnn.json")
    assert reported["gpu"] == (None, None, None)
    assert cli.evaluate_results_path("cpu_fpn").name == "faster_rcnn_fpn.json"
    with pytest.raises(ValueError, match="no results file"):
        cli.evaluate_results_path("gpu")


def test_a_wrong_preset_or_record_is_one_line_naming_the_choices():
    with pytest.raises(ValueError, match=r"unknown preset 'cpu_mak'; one of \['ci', "):
        preset("cpu_mak")
    for bad in (lambda: runner.schedule("nope"), lambda: train_config("nope"),
                lambda: runner.detector_config("nope"), lambda: feeding("nope")):  # fmt: skip
        with pytest.raises(ValueError, match="unknown preset 'nope'"):
            bad()
    with pytest.raises(ValueError, match=r"\['lr_step'\] are not TrainConfig fields"):
        Preset("mine", DetectorConfig.ci, dict(max_iter=10, lr_step=(5,)), "a typo")
    with pytest.raises(ValueError, match="needs a max_iter"):
        Preset("mine", DetectorConfig.ci, dict(lr=0.1), "no length")
    with pytest.raises(ValueError, match="together"):
        Preset("mine", DetectorConfig.ci, dict(max_iter=1), "half", results_file="x.json")
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        Feeding(batch_size=0)
    with pytest.raises(TypeError):  # the schedule is read-only: change the record instead
        PRESETS["ci"].schedule["max_iter"] = 3


# ----------------------------------------------------------------------------------------
# The grids' cache keys


def test_the_cache_keys_did_not_move():
    for (table, scale, seed, max_iter), key in KEYS_BEFORE.items():
        root, num_eval_images = ("/x", 200) if max_iter else (None, None)
        preset_name = ablations.table_preset(table, scale)
        settings = ablations.table_grid(table)
        specs = ablations._specs(
            table, settings, [seed], preset_name, max_iter, root, num_eval_images, None
        )
        assert key in {s.key() for s in specs}, (table, scale, seed, max_iter)


def test_every_cached_run_is_still_found_under_its_key():
    files = sorted(RUNS.glob("*.json"))
    if not files:
        pytest.skip(f"no cached runs in {RUNS}")
    for path in files:
        spec = json.loads(path.read_text())["spec"]
        assert RunSpec(**spec).key() == path.stem, path.name


# ----------------------------------------------------------------------------------------
# Every road reads the record


def test_changing_a_record_changes_every_schedule_reader(monkeypatch, tmp_path):
    spec = RunSpec("x", 0, "ci")
    key, seconds = spec.key(), grid.estimate_seconds(spec, tmp_path)
    assert seconds == 30.0  # the record's grid_run_seconds, at the full schedule
    _replaced(monkeypatch, "ci", schedule=dict(max_iter=60, lr=0.01, warmup_steps=4),
              grid_run_seconds=90.0)  # fmt: skip
    assert runner.schedule("ci")["max_iter"] == 60 and ablations.schedule("ci")["lr"] == 0.01
    assert runner.schedule("ci", 30)["warmup_steps"] == 4
    assert faster_rcnn.train_config("ci").max_iter == 60  # the old path's shim
    assert spec.key() != key
    assert grid.estimate_seconds(RunSpec("x", 0, "ci", max_iter=30), tmp_path) == 45.0


def test_changing_a_record_changes_what_evaluate_offers_and_writes(monkeypatch, capsys):
    _replaced(monkeypatch, "cpu_fpn", results_file="elsewhere.json")
    assert cli.evaluate_results_path("cpu_fpn").name == "elsewhere.json"
    assert "gpu" not in _choices(capsys, "evaluate")
    _replaced(monkeypatch, "gpu", chapter="05", detector="GPU", results_file="gpu.json")
    assert "gpu" in _choices(capsys, "evaluate")


class _Trained(Exception):
    """Raised by the stand-in for the engine's train: the test has what it looked for."""


@pytest.fixture
def seen(monkeypatch):
    """What the engine's train is handed (the loader and the TrainConfig), instead of
    training."""
    handed = {}

    def fake_train(model, loader, config, **kwargs):
        handed.update(loader=loader, config=config, model=model)
        raise _Trained

    monkeypatch.setattr("rcnn_steps.engine.train", fake_train)
    return handed


def _transforms(dataset) -> list[str]:
    """The names of the transforms a CocoDataset applies (a Subset's too)."""
    dataset = getattr(dataset, "dataset", dataset)
    steps = getattr(dataset, "transforms", None)
    steps = getattr(steps, "transforms", [steps] if steps is not None else [])
    return [type(s).__name__ for s in steps]


def _fed(seen) -> dict:
    loader = seen["loader"]
    return dict(
        batch_size=loader.batch_size,
        max_iter=seen["config"].max_iter,
        sampler=type(loader.sampler).__name__,
        workers=loader.num_workers,
        drop_last=loader.drop_last,
        transforms=_transforms(loader.dataset),
    )


def _grid_road(tiny_synth):
    with pytest.raises(_Trained):
        runner.run_setting("x", {}, 0, "ci", root=tiny_synth, device="cpu")


def _train_road(tiny_synth, tmp_path):
    argv = ["train", "--data", str(tiny_synth), "--preset", "ci", "--out", str(tmp_path / "r"),
            "--no-progress", "--device", "cpu"]  # fmt: skip
    with pytest.raises(_Trained):
        cli.main(argv)


def _evaluate_road(tiny_synth, tmp_path):
    argv = ["evaluate", "--preset", "ci", "--root", str(tiny_synth), "--no-evolution",
            "--out", str(tmp_path / "e.json")]  # fmt: skip
    with pytest.raises(_Trained):
        cli.main(argv)


def test_the_grid_evaluate_and_train_roads_feed_a_preset_alike(tiny_synth, tmp_path, seen):
    fed = {}
    _grid_road(tiny_synth)
    fed["grid"] = _fed(seen)
    _evaluate_road(tiny_synth, tmp_path)
    fed["evaluate"] = _fed(seen)
    _train_road(tiny_synth, tmp_path)
    fed["train"] = _fed(seen)
    expected = dict(batch_size=8, max_iter=30, sampler="RandomSampler", workers=0,
                    drop_last=False, transforms=[])  # fmt: skip
    assert fed == {"grid": expected, "evaluate": expected, "train": expected}


def test_every_road_takes_its_feeding_and_schedule_from_the_record(
    tiny_synth, tmp_path, seen, monkeypatch
):
    record_schedule = dict(max_iter=7, lr=0.01, warmup_steps=1, log_every=1)
    record_feeding = Feeding(batch_size=3, min_sizes=(48, 56), max_size=80, flip=True)
    _replaced(monkeypatch, "ci", schedule=record_schedule, feeding=record_feeding)
    expected = dict(batch_size=3, max_iter=7, sampler="RandomSampler", workers=0, drop_last=False,
                    transforms=["ResizeShortestSide", "RandomHorizontalFlip"])  # fmt: skip
    _grid_road(tiny_synth)
    assert _fed(seen) == expected
    _evaluate_road(tiny_synth, tmp_path)
    assert _fed(seen) == expected
    _train_road(tiny_synth, tmp_path)
    assert _fed(seen) == expected
    assert json.loads((tmp_path / "r" / "run.json").read_text())["feeding"] == dict(
        batch_size=3, min_sizes=[48, 56], test_size=None, max_size=80, flip=True, processes=1
    )


def test_run_setting_tests_at_the_records_size_and_refuses_resized_proposals(
    tiny_synth, monkeypatch
):
    _replaced(monkeypatch, "ci", schedule=dict(max_iter=1, log_every=1),
              feeding=Feeding(batch_size=2, test_size=32, max_size=40))  # fmt: skip
    sizes = []

    def detect(model, dataset, image_ids, proposals=None, *, test_size=None, max_size=None):
        sizes.append((test_size, max_size))
        return [], 0.0

    monkeypatch.setattr(runner, "detect", detect)
    monkeypatch.setattr(runner, "evaluate", lambda *a: {"bbox": {"AP": 0.0}})
    record = runner.run_setting("x", {}, 0, "ci", root=tiny_synth, num_eval_images=2,
                                device="cpu")  # fmt: skip
    assert sizes == [(32, 40)] and record["max_iter"] == 1
    with pytest.raises(ValueError, match="resizes its images .* selective-search proposals"):
        runner.run_setting("x", {}, 0, "ci", method="selective_search", root=tiny_synth)


def test_fit_few_images_batches_by_the_record(tiny_synth, monkeypatch, seen):
    _replaced(monkeypatch, "ci", feeding=Feeding(batch_size=3))
    with pytest.raises(_Trained):
        runner.fit_few_images("ci", num_images=5, max_iter=2, root=tiny_synth)
    assert seen["loader"].batch_size == 3


def test_the_grid_and_train_roads_train_a_preset_to_the_same_numbers(tiny_synth, tmp_path):
    """Same preset, seed and data: run_setting (grids, evaluate) and ``train`` take the
    same steps (the same batches, flips and initial weights), loss for loss."""
    grid_dir, train_dir = tmp_path / "grid", tmp_path / "train"
    runner.run_setting("x", {}, 1, "ci", 3, root=tiny_synth, device="cpu", num_eval_images=1,
                       out_dir=grid_dir)  # fmt: skip
    argv = ["train", "--data", str(tiny_synth), "--preset", "ci", "--out", str(train_dir),
            "--max-iter", "3", "--seed", "1", "--device", "cpu", "--no-progress",
            "--num-eval-images", "1"]  # fmt: skip
    assert cli.main(argv) == 0

    def losses(folder):
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if "loss" in k} for r in rows if "step" in r]

    assert losses(grid_dir) == losses(train_dir) != []


def test_a_grids_estimate_reads_runs_on_the_same_data_set_or_scales_by_pixels(tmp_path):
    def cached(name, seconds, root=None):
        run = {"max_iter": 30, "wall_time_s": seconds, "spec": {"root": root}}
        (tmp_path / f"ci-s0-{name}.json").write_text(json.dumps(run))

    book, big = RunSpec("x", 0, "ci"), RunSpec("x", 0, "ci", root="synth-256px-from128-seed0")
    assert grid.estimate_seconds(big, tmp_path) == 4 * grid.estimate_seconds(book, tmp_path)
    cached("a", 10.0)
    cached("b", 20.0)
    assert grid.estimate_seconds(book, tmp_path) == 15.0
    assert grid.estimate_seconds(big, tmp_path) == 60.0  # four times the pixels
    cached("c", 100.0, root="synth-256px-from128-seed0")
    assert grid.estimate_seconds(big, tmp_path) == 100.0  # measured on that set
    assert grid.estimate_seconds(book, tmp_path) == 15.0
