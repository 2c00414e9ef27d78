"""``python -m rcnn_steps <command>`` as a user meets it: a mistake is one line and exit
status 2 (``--debug`` for the traceback), and ``predict`` on real folders (unreadable,
16-bit, .tif/.webp and nested images, a checkpoint without its run, overlapping and
reused output folders, a missing GPU). One tiny ``ci_mask`` run is shared."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from rcnn_steps import cli
from rcnn_steps.data.__main__ import main as data_main
from rcnn_steps.data.example import make_example
from rcnn_steps.detectors.faster_rcnn import DetectorConfig
from rcnn_steps.engine import CheckpointError
from rcnn_steps.experiments.runner import PRESETS, config_for_data, detector_config


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

    monkeypatch.setattr(cli.export, "command", bug)
    with pytest.raises(TypeError):
        cli.main(argv)

    def ctrl_c(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.export, "command", ctrl_c)
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


# ----------------------------------------------------------------------------------------
# Family 4: predict on real folders


def test_predict_refuses_an_out_that_is_holds_or_lies_in_its_images(run, example, tmp_path):
    images = _images(example, tmp_path / "photos")
    before = {f.name: f.read_bytes() for f in images.iterdir()}
    ckpt = run / "last.pt"
    for out in (images, images / "drawn", tmp_path):
        with pytest.raises(ValueError, match="overlap"):
            _predict(ckpt, images, out, "--overwrite", "--debug")
        assert _predict(ckpt, images, out, "--overwrite") == 2
    one = next(images.iterdir())
    assert _predict(ckpt, one, images, "--overwrite") == 2  # out holds an input file
    assert {f.name: f.read_bytes() for f in images.iterdir()} == before


def test_predict_skips_unreadable_images_names_them_and_exits_1(run, example, tmp_path, capsys):
    images = _images(example, tmp_path / "photos")
    (images / "fake.jpg").write_text("this is text, not a JPEG")
    buffer = tmp_path / "full.jpg"
    Image.open(next(iter(sorted(images.glob("*.png"))))).convert("RGB").save(buffer, "JPEG")
    data = buffer.read_bytes()
    (images / "truncated.jpg").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert _predict(run / "last.pt", images, out) == 1
    err = capsys.readouterr().err
    assert "fake.jpg" in err and "truncated.jpg" in err
    assert "2 of 4 images could not be read" in err
    good = sorted(p.name for p in images.glob("*.png"))
    assert sorted(p.name for p in out.glob("*.png")) == good
    found = json.loads((out / "detections.json").read_text())
    assert {d["file_name"] for d in found} <= set(good)


def test_predict_refuses_a_checkpoint_without_its_run_json(run, example, tmp_path, capsys):
    alone = tmp_path / "copied" / "last.pt"
    alone.parent.mkdir()
    shutil.copy(run / "last.pt", alone)
    assert _predict(alone, example / "val", tmp_path / "p") == 2
    _one_error_line(capsys, "run.json", str(alone.parent / "run.json"), "export")
    assert not (tmp_path / "p").exists()
    # an exported copy carries run.json's contents, so it predicts on its own
    exported = tmp_path / "copied" / "model.pt"
    assert cli.main(["export", "--checkpoint", str(run / "last.pt"), "--out", str(exported)]) == 0
    assert _predict(exported, example / "val", tmp_path / "p2") == 0
    found = json.loads((tmp_path / "p2" / "detections.json").read_text())
    assert found and "class_name" in found[0]


def test_predict_on_cuda_without_a_gpu_says_so(run, example, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _predict(run / "last.pt", example / "val", tmp_path / "p", "--device", "cuda") == 2
    line = _one_error_line(capsys, "CUDA is not available", "--device cpu")
    assert "damaged" not in line
    assert not (tmp_path / "p").exists()


def test_predict_overwrite_removes_only_what_it_wrote(run, example, tmp_path):
    first = _images(example, tmp_path / "first", n=3)
    second = tmp_path / "second"
    second.mkdir()
    last = sorted(first.glob("*.png"))[-1]
    shutil.move(last, second / "other.png")
    out = tmp_path / "out"
    assert _predict(run / "last.pt", first, out) == 0
    (out / "notes.txt").write_text("the user's own file")
    (out / "mine.png").write_bytes(b"the user's own drawing")
    assert _predict(run / "last.pt", second, out, "--overwrite") == 0
    left = sorted(p.name for p in out.iterdir())
    assert left == ["detections.json", "mine.png", "notes.txt", "other.png",
                    "predict_manifest.json"]  # fmt: skip
    found = json.loads((out / "detections.json").read_text())
    assert {d["file_name"] for d in found} <= {"other.png"}


def test_predict_reads_16_bit_pngs_as_training_does(run, example, tmp_path):
    grey = np.asarray(Image.open(sorted((example / "val").glob("*.png"))[0]).convert("L"))
    eight, sixteen = tmp_path / "eight", tmp_path / "sixteen"
    eight.mkdir()
    sixteen.mkdir()
    Image.fromarray(grey).save(eight / "a.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(sixteen / "a.png")  # same values
    assert Image.open(sixteen / "a.png").mode == "I;16"
    assert _predict(run / "last.pt", eight, tmp_path / "p8") == 0
    assert _predict(run / "last.pt", sixteen, tmp_path / "p16") == 0
    found8 = json.loads((tmp_path / "p8" / "detections.json").read_text())
    found16 = json.loads((tmp_path / "p16" / "detections.json").read_text())
    assert found8 and found16 == found8  # v / 65535 == (v / 257) / 255: not clipped to white


def test_predict_reads_tif_webp_and_sub_folders(run, example, tmp_path, capsys):
    images = _images(example, tmp_path / "photos", n=3)
    a, b, c = sorted(images.glob("*.png"))
    (images / "sub").mkdir()
    shutil.move(a, images / "sub" / a.name)
    Image.open(b).convert("RGB").save(images / "b.tif")
    b.unlink()
    Image.open(c).convert("RGB").save(images / "c.webp", lossless=True)
    c.unlink()
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert _predict(run / "last.pt", images, out) == 0
    assert "notes.txt" in capsys.readouterr().err  # named, not silently skipped
    drawn = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert drawn == ["b.png", "c.png", f"sub/{a.name}"]
    found = json.loads((out / "detections.json").read_text())
    assert {d["file_name"] for d in found} <= {"b.tif", "c.webp", f"sub/{a.name}"}
    assert f"sub/{a.name}" in {d["file_name"] for d in found}


def test_predict_masks_of_a_large_photo_equal_the_full_paste(run, example, tmp_path):
    """``predict`` pastes each mask over its box's window only (bounded memory) and draws
    a large photo from a copy at most ``DRAWING_SIDE`` wide: the masks it writes are the
    ones the model's own full-image paste gives."""
    from rcnn_steps.data.coco import read_image
    from rcnn_steps.evaluation import detections_to_coco

    small = Image.open(sorted((example / "val").glob("*.png"))[0]).convert("RGB")
    photos = tmp_path / "photos"
    photos.mkdir()
    small.resize((1100, 900)).save(photos / "large.png")  # > DRAWING_SIDE on both sides
    assert _predict(run / "last.pt", photos, tmp_path / "out") == 0
    found = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert found and all(d["segmentation"]["size"] == [900, 1100] for d in found)
    assert Image.open(tmp_path / "out" / "large.png").size[0] <= 400  # a 4-inch figure
    model, _ = cli.load_run(run / "last.pt")  # pastes whole images, as evaluation does
    with torch.no_grad():
        det = model([read_image(photos / "large.png")])[0]
    expected = detections_to_coco(0, det["boxes"], det["scores"], det["labels"], masks=det["masks"])
    assert [d["segmentation"] for d in found] == [e["segmentation"] for e in expected]


#: Python for a subprocess: its own peak resident memory in MB. ``VmHWM`` is the peak of
#: the process's own memory; ``getrusage``'s ``ru_maxrss`` would not do, since on Linux a
#: child starts with the peak of the process it was forked from (pytest's, GBs by now).
PEAK_MB = (
    "int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]) // 1024"
)
linux_only = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="reads /proc/self/status"
)


@linux_only
def test_predict_on_a_3000_by_2000_photo_stays_in_bounded_memory(run, tmp_path):
    """The worked-example model on a 6-megapixel photo: 100 detections at threshold 0
    were 100 float masks of the whole image, 8.2 GB at peak; pasted one window at a time
    the whole command stays under 2 GB (torch itself is about 0.5 GB)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    noise = np.random.default_rng(0).integers(0, 255, (2000, 3000, 3), dtype=np.uint8)
    Image.fromarray(noise).save(photos / "big.png")
    argv = ["predict", "--checkpoint", str(run / "last.pt"), "--images", str(photos)]
    argv += ["--out", str(tmp_path / "out"), "--score-threshold", "0"]
    code = (
        "import sys\n"
        "from rcnn_steps.cli import main\n"
        f"status = main({argv!r})\n"
        f"print({PEAK_MB})\n"
        "sys.exit(status)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    peak_mb = int(done.stdout.strip().splitlines()[-1])
    found = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert len(found) >= 50  # enough masks that whole-image ones would need > 2 GB
    assert peak_mb < 2048, f"predict peaked at {peak_mb} MB"


@linux_only
def test_masks_covering_the_whole_photo_are_pasted_one_at_a_time():
    """The worst case for windows: 100 boxes each as large as a 3000 x 2000 photo. Pasted
    and encoded one at a time, the process stays under 1.5 GB (all windows at once: 2.9
    GB), with either pixel convention."""
    code = (
        "import torch\n"
        "from rcnn_steps.cli import mask_rles\n"
        "probs = torch.rand(100, 1, 28, 28)\n"
        "boxes = torch.tensor([[0.0, 0.0, 2999.0, 1999.0]]).repeat(100, 1)\n"
        "for aligned in (False, True):\n"
        "    assert len(mask_rles(probs, boxes, (2000, 3000), aligned)) == 100\n"
        f"print({PEAK_MB})\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    peak_mb = int(done.stdout.strip().splitlines()[-1])
    assert peak_mb < 1536, f"pasting peaked at {peak_mb} MB"


# ----------------------------------------------------------------------------------------
# Family 1: --set overrides are read and checked as their DetectorConfig field declares


def _train_argv(example, out, *sets):
    argv = ["train", "--data", str(example), "--preset", "ci_mask", "--out", str(out)]
    argv += ["--max-iter", "1", "--batch-size", "2", "--num-eval-images", "1", "--no-progress"]
    return argv + [a for s in sets for a in ("--set", s)]


def test_set_false_turns_a_branch_off(example, tmp_path):
    out = tmp_path / "run"
    assert cli.main(_train_argv(example, out, "masks=false", "mask_aligned=True")) == 0
    config = json.loads((out / "run.json").read_text())["config"]
    assert config["masks"] is False and config["mask_aligned"] is True


@pytest.mark.parametrize(
    ("item", "words"),
    [
        ("masks=maybe", ["masks", "'maybe'", "true or false"]),
        ("masks=0", ["masks", "true or false"]),
        ("anchor_sizes=abc", ["anchor_sizes", "'abc'", "ints > 0"]),
        ("anchor_sizes=8,-16", ["anchor_sizes", "ints > 0"]),
        ("keypoint_loss_weight=nan", ["keypoint_loss_weight", "'nan'", "> 0", "finite"]),
        ("keypoint_loss_weight=-1", ["keypoint_loss_weight", "> 0"]),
        ("num_classes=2.5", ["num_classes", "'2.5'", "an int"]),
        ("detections_per_img=0", ["detections_per_img", ">= 1"]),
        ("rpn_fg_iou_thresh=1.5", ["rpn_fg_iou_thresh", "in [0, 1]"]),
        ("roi_op=roialign", ["roi_op", "'roialign'", "roialign_avg"]),
        ("mask_loss=dice", ["mask_loss", "sigmoid", "softmax"]),
        ("mask_roi_op=bilinear", ["mask_roi_op", "or None"]),
        ("image_std=0.2,0.2", ["image_std", "3 finite numbers"]),
        ("fpn_levels=p2,p9", ["fpn_levels", "'p2,p9'", "p6"]),
        ("mask_aligend=true", ["not a field", "'mask_aligned'"]),
        ("preset=cpu", ["preset", "--preset"]),
    ],
)
def test_set_refuses_a_value_its_field_cannot_take(example, tmp_path, capsys, item, words):
    out = tmp_path / "run"
    assert cli.main(_train_argv(example, out, item)) == 2
    _one_error_line(capsys, f"--set {item}", *words)
    assert not out.exists()


def test_set_reads_values_as_their_fields_declare():
    parsed = cli.parse_overrides(
        ["masks=FALSE", "keypoints=True", "anchor_sizes=16", "anchor_aspect_ratios=(1, 2)",
         "rpn_min_size=1e-2", "mask_roi_op=None", "roi_op='roialign_avg'", "pooled_size=5"]
    )  # fmt: skip
    assert parsed == {
        "masks": False, "keypoints": True, "anchor_sizes": (16,),
        "anchor_aspect_ratios": (1.0, 2.0), "rpn_min_size": 0.01, "mask_roi_op": None,
        "roi_op": "roialign_avg", "pooled_size": 5,
    }  # fmt: skip
    config = detector_config("ci", {k: parsed[k] for k in ("anchor_sizes", "roi_op")})
    assert config.anchor_sizes == (16,) and config.roi_op == "roialign_avg"


def test_set_refuses_a_field_given_twice(example, tmp_path, capsys):
    assert cli.main(_train_argv(example, tmp_path / "r", "masks=true", "masks=false")) == 2
    _one_error_line(capsys, "masks", "twice")


def test_set_refuses_num_classes_that_do_not_fit_the_data(example, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_train_argv(example, out, "num_classes=2")) == 2
    _one_error_line(capsys, "num_classes=2", "3 classes", "arrow", "set from the data")
    assert cli.main(_train_argv(example, out, "keypoint_counts=3,4")) == 2
    _one_error_line(capsys, "keypoint_counts=(3, 4)", "(3, 4, 0)")
    assert not out.exists()
    boxes_only = SimpleNamespace(categories=[{"id": 1, "name": "tile"}], num_classes=1)
    with pytest.raises(ValueError, match="keypoints=True: no class of the data"):
        config_for_data("ci_mask", boxes_only, {"keypoints": True})
    assert config_for_data("ci_mask", boxes_only, {"num_classes": 1}).num_classes == 1


def test_evaluate_checks_its_set_before_any_work(tmp_path, capsys):
    argv = ["evaluate", "--preset", "ci", "--out", str(tmp_path / "r.json")]
    assert cli.main([*argv, "--set", "roi_aligned=perhaps"]) == 2
    _one_error_line(capsys, "--set roi_aligned=perhaps", "true or false")
    assert cli.main([*argv, "--set", "box_head=c5", "--set", "feature_stage=c3"]) == 2
    _one_error_line(capsys, "box_head='c5'", "feature_stage='c4'")
    assert not (tmp_path / "r.json").exists()


def test_the_config_checks_every_field_for_every_caller():
    """The rule lives in DetectorConfig: Python callers meet it as --set does."""
    for bad in (
        dict(masks="false"), dict(anchor_sizes=16), dict(keypoint_loss_weight=float("nan")),
        dict(rpn_batch_size_per_image=64.0), dict(box_score_thresh=-0.1),
        dict(keypoint_counts=(0, 0, 0, 0, 0, -1)), dict(roi_bg_iou_low=0.6),
        dict(rpn_bg_iou_thresh=0.8), dict(anchor_aspect_ratios=()),
    ):  # fmt: skip
        name = next(iter(bad))
        with pytest.raises(ValueError, match=name):
            detector_config("ci_mask", bad)


def test_every_preset_and_stored_config_still_reads_back():
    for name, preset in PRESETS.items():
        config = preset.model()
        stored = json.loads(json.dumps(config.to_dict()))  # tuples become lists
        assert DetectorConfig(**stored) == config, name
    fields = DetectorConfig.__dataclass_fields__

    def configs(value):  # every DetectorConfig a results file records, at any depth
        if isinstance(value, dict):
            if {"num_classes", "rpn_lambda"} <= value.keys():
                yield value
            for v in value.values():
                yield from configs(v)
        elif isinstance(value, list):
            for v in value:
                yield from configs(v)

    seen = 0
    for path in sorted(Path(__file__).resolve().parents[1].glob("results/*.json")):
        for stored in configs(json.loads(path.read_text())):
            known = {k: v for k, v in stored.items() if k in fields}  # older: fewer fields
            again = json.loads(json.dumps(DetectorConfig(**known).to_dict()))
            assert {k: again[k] for k in known} == known, path.name
            seen += 1
    assert seen


# ----------------------------------------------------------------------------------------
# Family 5: evaluate and export check every argument before any work


@pytest.fixture
def no_training(monkeypatch):
    """``evaluate`` that would train raises :class:`Trained` instead: a refusal must come
    before it, and an accepted command reaches it."""
    from rcnn_steps.experiments import runner

    class Trained(Exception):
        pass

    def refuse(*args, **kwargs):
        raise Trained

    monkeypatch.setattr(runner, "run_setting", refuse)
    return Trained


def _evaluate(*more):
    return cli.main(["evaluate", "--preset", "ci", "--max-iter", "1", "--no-evolution", *more])


def test_evaluate_refuses_a_set_without_the_books_classes(example, no_training, capsys):
    assert _evaluate("--root", str(example), "--out", "x.json") == 2
    _one_error_line(capsys, f"--root {example}", "3 classes", "arrow", "6", "rcnn_steps train")


def test_evaluate_refuses_a_model_sized_for_other_classes(
    tiny_synth, tmp_path, no_training, capsys
):
    out = str(tmp_path / "r.json")
    assert _evaluate("--root", str(tiny_synth), "--set", "num_classes=3", "--out", out) == 2
    _one_error_line(capsys, "--set", "3 classes", "train")
    with pytest.raises(no_training):  # the book's classes in a smaller synthetic set: fine
        _evaluate("--root", str(tiny_synth), "--out", out)


@pytest.mark.parametrize(
    "option, value",
    [("--num-eval-images", "0"), ("--threads", "0"), ("--timing-threads", "0"),
     ("--max-iter", "0"), ("--num-eval-images", "-3")],
)  # fmt: skip
def test_evaluate_refuses_counts_below_one(
    option, value, tiny_synth, tmp_path, no_training, capsys
):
    argv = ["--root", str(tiny_synth), "--out", str(tmp_path / "r.json"), option, value]
    assert _evaluate(*argv) == 2
    _one_error_line(capsys, option, "at least 1", value)


def test_evaluate_refuses_an_out_it_cannot_write_or_must_not_replace(
    run, tiny_synth, tmp_path, no_training, capsys
):
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    root = ["--root", str(tiny_synth)]
    assert _evaluate(*root, "--out", str(tmp_path)) == 2  # a folder
    _one_error_line(capsys, str(tmp_path), "folder")
    assert _evaluate(*root, "--out", str(run / "last.pt")) == 2  # a checkpoint
    _one_error_line(capsys, "last.pt", ".json")
    assert _evaluate(*root, "--out", str(run / "run.json")) == 2  # a JSON, not results
    _one_error_line(capsys, "run.json", "not a results file")
    assert _evaluate(*root, "--out", str(run / "run.json" / "r.json")) == 2  # under a file
    _one_error_line(capsys, "is a file")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    # a results file evaluate wrote is replaced, as the preset's default file always is
    from rcnn_steps.utils import write_results

    earlier = tmp_path / "earlier.json"
    write_results(earlier, {"method": "rpn", "config": {}, "metrics": {}}, preset="ci")
    with pytest.raises(no_training):
        _evaluate(*root, "--out", str(earlier))


def test_export_refuses_a_folder_and_files_that_are_not_checkpoints(run, tmp_path, capsys):
    argv = ["export", "--checkpoint", str(run / "last.pt"), "--overwrite", "--out"]
    folder = tmp_path / "folder"
    folder.mkdir()
    assert cli.main([*argv, str(folder)]) == 2
    _one_error_line(capsys, str(folder), "is a folder")
    notes = tmp_path / "notes.pt"
    notes.write_text("the user's notes, not a checkpoint")
    assert cli.main([*argv, str(notes)]) == 2
    _one_error_line(capsys, "notes.pt", "not a checkpoint")
    assert notes.read_text() == "the user's notes, not a checkpoint"
    assert cli.main([*argv, str(run / cli.RUN_FILE)]) == 2
    _one_error_line(capsys, "run.json", ".pt")
    assert cli.main([*argv, str(tmp_path / "model.pt")]) == 0  # a new file
    assert cli.main([*argv, str(tmp_path / "model.pt")]) == 0  # a checkpoint: replaced


def test_export_refuses_data_with_other_classes_than_the_model(
    run, example, tiny_synth, tmp_path, capsys
):
    argv = ["export", "--checkpoint", str(run / "last.pt"), "--out", str(tmp_path / "m.pt")]
    assert cli.main([*argv, "--data", str(tiny_synth)]) == 2  # six classes, model has three
    _one_error_line(capsys, str(tiny_synth), "6 classes", "has 3")
    renamed = tmp_path / "renamed"
    shutil.copytree(example, renamed)
    annotations = renamed / "annotations" / "instances_train.json"
    coco = json.loads(annotations.read_text())
    for category, name in zip(coco["categories"], ["kite", "arrow", "tile"], strict=True):
        category["name"] = name
    annotations.write_text(json.dumps(coco))
    assert cli.main([*argv, "--data", str(renamed)]) == 2  # three classes, other names
    _one_error_line(capsys, "kite, arrow, tile", "arrow, kite, tile", "run.json")
    # without run.json beside it (a grid run), the class count is still checked
    alone = tmp_path / "alone" / "last.pt"
    alone.parent.mkdir()
    shutil.copy(run / "last.pt", alone)
    argv[2] = str(alone)
    assert cli.main([*argv, "--data", str(tiny_synth)]) == 2
    _one_error_line(capsys, "6 classes", "has 3")
    assert not (tmp_path / "m.pt").exists()
    assert cli.main([*argv, "--data", str(example)]) == 0


# ----------------------------------------------------------------------------------------
# Family 6: a process of a distributed run that stops answering


@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)
def test_train_names_the_rank_that_stopped_answering(example, tmp_path):
    """Under ``torchrun --nproc_per_node 2 ... train --timeout 10``, rank 1 hangs in its
    first step: rank 0 gives up after 10 s (not gloo's 30 minutes) with one line naming
    rank 1, and the job ends."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = tmp_path / "hang_rank_1.py"
    launcher.write_text(
        "import os, sys, time\n"
        "from rcnn_steps import cli\n"
        "from rcnn_steps.engine import loop  # the module whose train looks the loss up\n"
        "if os.environ['RANK'] == '1':  # this rank hangs in its first step\n"
        "    loop.detection_loss = lambda model, batch: time.sleep(600)\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    repo = Path(__file__).resolve().parents[1]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(port), str(launcher), "train", "--data", str(example),
        "--preset", "ci_mask", "--out", str(tmp_path / "run"), "--max-iter", "2",
        "--batch-size", "1", "--device", "cpu", "--threads", "1", "--no-progress",
        "--timeout", "10",
    ]  # fmt: skip
    env = {"OMP_NUM_THREADS": "1", "PATH": "", "PYTHONPATH": str(repo)}
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    took = time.monotonic() - started
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if "error: train:" in line]
    assert len(lines) == 1, done.stderr[-3000:]
    assert "rank 1 did not answer within 10 s" in lines[0] and "--timeout" in lines[0]
    # 10 s, 2 s for the roll call, and room for two processes' start on a busy machine
    assert took < 10 + 2 + 50, f"the job took {took:.0f} s"


# ----------------------------------------------------------------------------------------
# Family 2: the splits and the category ids


def _variant(example, folder, train=None, val=None):
    """A copy of the example set whose annotation files the functions ``train(data)`` and
    ``val(data)`` edit in place."""
    shutil.copytree(example, folder)
    for split, edit in (("train", train), ("val", val)):
        if edit is not None:
            path = folder / "annotations" / f"instances_{split}.json"
            data = json.loads(path.read_text())
            edit(data)
            path.write_text(json.dumps(data))
    return folder


def _renumber(ids):
    """An edit giving the categories ``ids`` ({old id: new id}), annotations included."""

    def edit(data):
        for item in data["categories"]:
            item["id"] = ids.get(item["id"], item["id"])
        for item in data["annotations"]:
            item["category_id"] = ids.get(item["category_id"], item["category_id"])

    return edit


def _train_briefly(data, out, *more):
    argv = ["train", "--data", str(data), "--preset", "ci_mask", "--out", str(out)]
    argv += ["--max-iter", "2", "--batch-size", "2", "--num-eval-images", "1", "--no-progress"]
    return cli.main([*argv, *more])


def _without_keypoints(data):
    for item in data["categories"] + data["annotations"]:
        for key in ("keypoints", "skeleton", "flip_pairs", "num_keypoints"):
            item.pop(key, None)


def _with_a_boat(data):
    data["categories"].append({"id": 4, "name": "boat"})


def _kite_points_reordered(data):
    kite = next(c for c in data["categories"] if c["name"] == "kite")
    kite["keypoints"] = ["top", "right", "left", "bottom"]


@pytest.mark.parametrize(
    "edit_val, words",
    [
        (_renumber({1: 2, 2: 1}), ["category 1", "'kite'", "'arrow'"]),  # AP 0.333 before
        (_with_a_boat, ["category 4", "'boat'", "is not a category of"]),
        (_renumber({3: 7}), ["category 7", "'tile'", "numbers 'tile' 3"]),
        (_without_keypoints, ["category 1", "keypoints []", "'tip'"]),  # dropped the branch
        (_kite_points_reordered, ["category 2", "same order"]),
    ],
    ids=["renumbered", "unknown-class", "other-id", "no-keypoints", "other-keypoints"],
)
def test_train_refuses_a_val_split_whose_categories_disagree_with_train(
    example, tmp_path, capsys, edit_val, words
):
    data = _variant(example, tmp_path / "set", val=edit_val)
    assert _train_briefly(data, tmp_path / "run") == 2
    _one_error_line(capsys, "instances_val.json", "instances_train.json", *words)
    assert not (tmp_path / "run").exists()


def test_a_val_split_without_a_class_is_numbered_and_sized_as_train(example, tmp_path):
    from rcnn_steps.experiments.runner import load_datasets

    def no_kites(data):
        data["categories"] = [c for c in data["categories"] if c["name"] != "kite"]
        data["annotations"] = [a for a in data["annotations"] if a["category_id"] != 2]

    data = _variant(example, tmp_path / "set", val=no_kites)
    train_set, val_set = load_datasets(data)
    assert val_set.label_to_category_id == train_set.label_to_category_id == {1: 1, 2: 2, 3: 3}
    assert val_set.class_names == ["__background__", "arrow", "kite", "tile"]
    tile = next(a["image_id"] for a in val_set.coco.anns.values()
                if a["category_id"] == 3 and not a["iscrowd"])  # fmt: skip
    labels = val_set.load_target(tile, *val_set.load_image(tile).shape[1:])["labels"]
    assert 3 in labels.tolist()  # the tile's label is train's 3, not val's own 2
    assert _train_briefly(data, tmp_path / "run") == 0  # was: step 1 failed on num_classes
    config = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert config["num_classes"] == 3 and list(config["keypoint_counts"]) == [3, 4, 0]


def test_predict_writes_the_datas_category_and_image_ids(example, tmp_path):
    data = _variant(example, tmp_path / "set", _renumber({2: 5, 3: 90}), _renumber({2: 5, 3: 90}))
    assert _train_briefly(data, tmp_path / "run") == 0
    run_data = json.loads((tmp_path / "run" / "run.json").read_text())["data"]
    assert [(c["id"], c["name"]) for c in run_data["categories"]] == [
        (1, "arrow"), (5, "kite"), (90, "tile")]  # fmt: skip
    assert _predict(tmp_path / "run" / "last.pt", data / "val", tmp_path / "p") == 0
    found = json.loads((tmp_path / "p" / "detections.json").read_text())
    assert found and {d["category_id"] for d in found} <= {1, 5, 90}
    names = {1: "arrow", 5: "kite", 90: "tile"}
    assert all(d["class_name"] == names[d["category_id"]] for d in found)
    val = json.loads((data / "annotations" / "instances_val.json").read_text())
    ids = {img["file_name"]: img["id"] for img in val["images"]}
    assert all(d["image_id"] == ids[d["file_name"]] for d in found)  # COCO results for val
    # files that are not the run's val images: their positions in the sorted inputs
    photos = tmp_path / "photos"
    photos.mkdir()
    for n, f in enumerate(sorted((data / "val").glob("*.png"))[:2]):
        shutil.copy(f, photos / f"photo{n}.png")
    assert _predict(tmp_path / "run" / "last.pt", photos, tmp_path / "q") == 0
    found = json.loads((tmp_path / "q" / "detections.json").read_text())
    positions = {("photo0.png", 0), ("photo1.png", 1)}
    assert found and {(d["file_name"], d["image_id"]) for d in found} <= positions


def test_every_keypoint_category_is_kept_and_drawn_with_its_own_set(
    run, example, tmp_path, monkeypatch
):
    from rcnn_steps import viz

    categories = json.loads((run / "run.json").read_text())["data"]["categories"]
    assert [(c["name"], c["keypoints"], c["skeleton"]) for c in categories] == [
        ("arrow", ["tip", "left_barb", "right_barb"], [[0, 1], [0, 2]]),
        ("kite", ["top", "left", "right", "bottom"], [[0, 1], [0, 2], [1, 3], [2, 3]]),
        ("tile", [], []),
    ]
    drawn = []

    def draw_keypoints(ax, keypoints, skeleton=(), colour="white", names=None, **kw):
        drawn.append((list(names or ()), [list(p) for p in skeleton], keypoints.shape[1]))

    monkeypatch.setattr(viz, "draw_keypoints", draw_keypoints)
    assert _predict(run / "last.pt", example / "val", tmp_path / "p") == 0
    kite, arrow = categories[1], categories[0]
    assert (kite["keypoints"], kite["skeleton"], 4) in drawn
    assert (arrow["keypoints"], arrow["skeleton"], 3) in drawn
    assert all(k == len(names) for names, _, k in drawn)


def _pair_past_the_kite(data):
    next(c for c in data["categories"] if c["name"] == "kite")["flip_pairs"] = [[1, 4]]


def _limb_past_the_kite(data):
    next(c for c in data["categories"] if c["name"] == "kite")["skeleton"] = [[1, 5]]


def _pair_on_the_tile(data):
    next(c for c in data["categories"] if c["name"] == "tile")["flip_pairs"] = [[0, 1]]


def _sigmas_of_another_set(data):
    next(c for c in data["categories"] if c["name"] == "kite")["oks_sigmas"] = [0.05] * 3


def _no_categories(data):
    data["categories"], data["annotations"] = [], []


@pytest.mark.parametrize(
    "edit, words",
    [
        (_pair_past_the_kite, ["flip_pairs", "[1, 4]", "4 keypoints"]),  # was an IndexError
        (_limb_past_the_kite, ["skeleton", "[1, 5]", "1-based"]),
        (_pair_on_the_tile, ["flip_pairs", "'tile'", "no keypoint names"]),
        (_sigmas_of_another_set, ["oks_sigmas", "'kite'", "(4 here)"]),
        (_no_categories, ["no categories"]),
    ],
    ids=["flip-pair", "skeleton", "pair-without-keypoints", "oks-sigmas", "no-categories"],
)
def test_data_check_and_train_refuse_bad_categories_naming_the_file(
    example, tmp_path, capsys, edit, words
):
    data = _variant(example, tmp_path / "set", train=edit)
    assert data_main(["check", str(data)]) == 1
    _one_error_line(capsys, "instances_train.json", *words)
    assert _train_briefly(data, tmp_path / "run", "--flip") == 2
    _one_error_line(capsys, "instances_train.json", *words)
    assert not (tmp_path / "run").exists()


def _only_crowds(data):
    data["annotations"] = [a for a in data["annotations"] if a["iscrowd"]]


def _no_annotations(data):
    data["annotations"] = []


@pytest.mark.parametrize("edit", [_no_annotations, _only_crowds], ids=["none", "crowds"])
def test_train_refuses_a_train_split_with_nothing_to_train_on(example, tmp_path, capsys, edit):
    data = _variant(example, tmp_path / "set", train=edit)
    assert _train_briefly(data, tmp_path / "run") == 2  # was: trained, printed bbox/AP -1.0
    _one_error_line(capsys, "instances_train.json", "nothing to train on")
    assert not (tmp_path / "run").exists()


def test_predict_with_an_older_run_json_numbers_by_label(run, example, tmp_path, capsys):
    folder = tmp_path / "old"
    folder.mkdir()
    shutil.copy(run / "last.pt", folder / "last.pt")
    description = json.loads((run / "run.json").read_text())
    del description["data"]["categories"]  # as written before categories were recorded
    (folder / "run.json").write_text(json.dumps(description))
    assert _predict(folder / "last.pt", example / "val", tmp_path / "p") == 0
    found = json.loads((tmp_path / "p" / "detections.json").read_text())
    names = description["data"]["class_names"]
    assert found and all(d["class_name"] == names[d["category_id"]] for d in found)
    # a run.json whose classes are not the model's is another run's
    description["data"]["categories"] = [{"id": 1, "name": "arrow"}]
    (folder / "run.json").write_text(json.dumps(description))
    assert _predict(folder / "last.pt", example / "val", tmp_path / "q") == 2
    _one_error_line(capsys, "1 categories", "3 classes", "run.json")
    assert not (tmp_path / "q").exists()


# ----------------------------------------------------------------------------------------
# Family 3: a run folder's life (validated before it is touched, locked while written,
# saved on Ctrl-C, resumed only with the data and feeding it was trained on)


def _train(example, out, *more):
    """``train`` of the ``run`` fixture's kind (ci_mask, batches of 2, 1 eval image)."""
    argv = ["train", "--data", str(example), "--preset", "ci_mask", "--out", str(out)]
    argv += ["--batch-size", "2", "--num-eval-images", "1", "--no-progress"]
    return cli.main([*argv, *more])


def _copy_run(run, where):
    """A copy of the ``run`` fixture's folder (its run.json still names the example set)."""
    shutil.copytree(run, where)
    return where


def _contents(folder):
    """A folder's files and their bytes (but the lock file a holder keeps there)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != ".lock"}


@pytest.mark.parametrize(
    "more, named",
    [
        (["--lr", "-1"], "--lr -1"),
        (["--lr", "0"], "--lr 0"),
        (["--lr", "nan"], "--lr nan"),
        (["--lr", "inf"], "--lr inf"),
        (["--max-iter", "0"], "--max-iter 0"),
        (["--batch-size", "0"], "--batch-size 0"),
        (["--eval-every", "-1"], "--eval-every -1"),
        (["--checkpoint-every", "0"], "--checkpoint-every 0"),
        (["--num-eval-images", "0"], "--num-eval-images 0"),
        (["--threads", "0"], "--threads 0"),
        (["--loader-workers", "-1"], "--loader-workers -1"),
        (["--seed", "-1"], "--seed -1"),
        (["--device", "banana"], "--device banana"),
        (["--device", "meta"], "--device meta"),
        (["--resume", "--overwrite"], "pass one"),
    ],
)
def test_train_refuses_a_bad_argument_before_touching_the_folder(
    example, tmp_path, capsys, more, named
):
    out = tmp_path / "run"
    assert _train(example, out, "--max-iter", "1", *more) == 2
    _one_error_line(capsys, named)
    assert not out.exists()


def test_a_failed_start_leaves_no_run_behind_and_the_retry_works(
    example, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(torch.cuda, "is_available", lambda: False)
        assert _train(example, out, "--max-iter", "1", "--device", "cuda") == 2
        _one_error_line(capsys, "--device cuda", "CUDA is not available")
    assert _train(example, out, "--max-iter", "1", "--lr", "-1") == 2
    _one_error_line(capsys, "--lr -1")
    assert not out.exists()
    assert _train(example, out, "--max-iter", "1") == 0  # the retry, as it was first meant
    assert json.loads((out / "run.json").read_text())["preset"] == "ci_mask"


def test_resume_after_a_failed_first_attempt_describes_this_run(run, example, tmp_path):
    """A run.json left by a first attempt that never reached a checkpoint (an older
    version wrote it before validating) is rewritten by --resume: predict must not read
    the failed attempt's classes and image size."""
    out = tmp_path / "run"
    out.mkdir()
    stale = json.loads((run / "run.json").read_text())
    stale["preset"] = "gpu_mask"
    stale["feeding"]["test_size"] = 512
    stale["data"]["class_names"] = ["__background__", "cat"]
    (out / "run.json").write_text(json.dumps(stale))
    assert _train(example, out, "--max-iter", "1") == 2  # a run is there: say what to do
    assert _train(example, out, "--max-iter", "1", "--resume") == 0
    described = json.loads((out / "run.json").read_text())
    assert described["preset"] == "ci_mask" and described["feeding"]["test_size"] is None
    assert described["data"]["class_names"] == _class_names(example)


def _class_names(example):
    categories = json.loads((example / "annotations" / "instances_train.json").read_text())
    return ["__background__", *(c["name"] for c in categories["categories"])]


def test_resume_refuses_other_data_renamed_classes_or_other_feeding(run, example, tmp_path, capsys):
    out = _copy_run(run, tmp_path / "run")
    before = _contents(out)
    same_classes = tmp_path / "copy"
    shutil.copytree(example, same_classes)
    renamed = tmp_path / "renamed"
    shutil.copytree(example, renamed)
    for split in ("train", "val"):
        path = renamed / "annotations" / f"instances_{split}.json"
        coco = json.loads(path.read_text())
        coco["categories"][0]["name"] = "dart"
        path.write_text(json.dumps(coco))
    cases = [
        (same_classes, [], "data.root"),
        (renamed, [], "data.class_names"),
        (example, ["--batch-size", "1"], "feeding.batch_size: 2 -> 1"),
        (example, ["--flip"], "feeding.flip: False -> True"),
        (example, ["--splits", "train", "train"], "data.splits"),
        (example, ["--set", "box_score_thresh=0.1"], "config.box_score_thresh"),
    ]
    for data, more, named in cases:
        assert _train(data, out, "--max-iter", "3", "--resume", *more) == 2
        _one_error_line(capsys, "--resume", named, "another --out")
        assert _contents(out) == before


def test_overwrite_with_a_bad_argument_keeps_the_finished_run(run, example, tmp_path, capsys):
    out = _copy_run(run, tmp_path / "run")
    before = _contents(out)
    assert _train(example, out, "--max-iter", "1", "--overwrite", "--lr", "-1") == 2
    _one_error_line(capsys, "--lr -1")
    assert _contents(out) == before


def test_out_naming_a_file_is_one_line(example, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("the user's own file")
    for out in (a_file, a_file / "run"):
        assert _train(example, out, "--max-iter", "1") == 2
        _one_error_line(capsys, str(out), "is a file")
    assert a_file.read_text() == "the user's own file"


def test_a_folder_another_process_trains_into_is_refused(run, example, tmp_path, capsys):
    from rcnn_steps.engine import RunFolder

    out = _copy_run(run, tmp_path / "run")
    before = _contents(out)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from rcnn_steps.engine import RunFolder\n"
         "with RunFolder(sys.argv[1]).lock():\n    print('held', flush=True); time.sleep(120)",
         str(out)],
        stdout=subprocess.PIPE, text=True, env={"OMP_NUM_THREADS": "1", "PATH": ""},
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        for more in (["--overwrite"], ["--resume", "--max-iter", "3"]):
            assert _train(example, out, *more) == 2
            _one_error_line(capsys, str(out), "in use", f"process {holder.pid}")
            assert _contents(out) == before  # nothing deleted, no records interleaved
    finally:
        holder.kill()
        holder.wait()
    with RunFolder(out).lock():  # the holder's end released it (a kill included)
        pass


def test_a_lock_taken_by_other_code_names_its_pid(run, example, tmp_path, capsys):
    import fcntl
    import os

    out = _copy_run(run, tmp_path / "run")
    with open(out / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert _train(example, out, "--overwrite", "--max-iter", "1") == 2
    line = _one_error_line(capsys, "in use")
    if Path("/proc/locks").exists():
        assert f"process {os.getpid()}" in line
    assert (out / "last.pt").read_bytes() == (run / "last.pt").read_bytes()


@pytest.mark.parametrize("how", ["signal", "raise"])
def test_ctrl_c_saves_the_step_done_and_resume_continues_exactly(
    example, tmp_path, monkeypatch, capsys, request, how
):
    """Ctrl-C at step 2 of 4 (in the evaluation after it): last.pt holds step 2, the one
    line says how to continue, and continuing gives the weights of a run never stopped.
    ``signal``: a real SIGINT (the loop finishes the step, then stops); ``raise``: a
    KeyboardInterrupt raised in the evaluation itself."""
    import os
    import signal

    from rcnn_steps.engine import load_checkpoint, read_metrics
    from rcnn_steps.experiments import runner

    # a job started with `&` by a non-interactive shell inherits SIGINT ignored, and
    # train rightly leaves an ignored SIGINT alone: give this test Python's default
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, inherited))
    straight = tmp_path / "straight"
    more = ["--max-iter", "4", "--eval-every", "1"]
    assert _train(example, straight, *more) == 0
    real = runner.make_evaluator

    def interrupting(*args, **kwargs):
        evaluate_fn = real(*args, **kwargs)
        calls = []

        def evaluate(model):
            calls.append(1)
            if len(calls) == 2:
                if how == "raise":
                    raise KeyboardInterrupt
                assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
                os.kill(os.getpid(), signal.SIGINT)
            return evaluate_fn(model)

        return evaluate

    out = tmp_path / "stopped"
    monkeypatch.setattr(runner, "make_evaluator", interrupting)
    capsys.readouterr()
    assert _train(example, out, *more) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "after step 2" in err[0] and "--resume" in err[0], err
    assert str(out / "last.pt") in err[0]
    assert load_checkpoint(out / "last.pt")["step"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back
    monkeypatch.undo()
    assert _train(example, out, *more, "--resume") == 0
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(out / "last.pt")
    assert a["step"] == b["step"] == 4
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name

    def losses(folder):  # the logged losses (an evaluation cut short by "raise" is lost)
        return [{k: v for k, v in r.items() if k.startswith("loss") or k in ("step", "lr")}
                for r in read_metrics(folder) if "total_loss" in r]  # fmt: skip

    assert losses(out) == losses(straight)


# ----------------------------------------------------------------------------------------
# Held-out cases: bad inputs nobody listed in the issue, tried as a new user would; each
# failed on the families' rules before, and is refused in the place the rule lives


@pytest.mark.parametrize(
    "item, field",
    [("MASKS=true", "'masks'"), ("config.fpn=true", "'fpn'"), ("ROI_OP=roipool", "'roi_op'")],
)
def test_held_out_set_suggests_the_field_it_spells(example, tmp_path, capsys, item, field):
    assert cli.main(_train_argv(example, tmp_path / "run", item)) == 2
    _one_error_line(capsys, "not a field", f"did you mean {field}")


def test_held_out_backbone_weights_that_are_no_state_dict(example, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("not weights")
    out = tmp_path / "run"
    for weights in (tmp_path / "none.pt", notes):  # was: a traceback for the text file
        argv = _train_argv(example, out, "backbone=resnet50", f"backbone_weights={weights}")
        assert cli.main(argv) == 2
        _one_error_line(capsys, "backbone_weights", str(weights))
    assert not out.exists()


def _two_classes_named_arrow(data):
    data["categories"].append({"id": 7, "name": "arrow"})


def _an_empty_name(data):
    data["categories"][0]["name"] = ""


def _a_number_for_a_name(data):
    data["categories"][0]["name"] = 5


def _a_visibility_of_7(data):
    next(a for a in data["annotations"] if a.get("keypoints"))["keypoints"][2] = 7


@pytest.mark.parametrize(
    "edit, words",
    [
        (_two_classes_named_arrow, ["categories 1 and 7", "'arrow'"]),  # trained silently
        (_an_empty_name, ["name ''", "non-empty string"]),  # trained silently
        (_a_number_for_a_name, ["name 5", "non-empty string"]),  # a TypeError in train
        (_a_visibility_of_7, ["keypoint 0", "visibility"]),  # trained as visible
    ],
    ids=["same-name", "empty-name", "int-name", "visibility"],
)
def test_held_out_category_names_and_keypoints_are_checked(example, tmp_path, capsys, edit, words):
    data = _variant(example, tmp_path / "set", train=edit)
    assert data_main(["check", str(data)]) == 1
    _one_error_line(capsys, "instances_train.json", *words)
    assert _train_briefly(data, tmp_path / "run") == 2
    _one_error_line(capsys, "instances_train.json", *words)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("split", ["train", "val"])
def test_held_out_a_listed_image_that_is_missing_is_refused_before_training(
    example, tmp_path, capsys, split
):
    data = _variant(example, tmp_path / "set")
    gone = sorted((data / split).glob("*.png"))[-1]
    gone.unlink()  # val: was found at the first evaluation, after training
    assert _train_briefly(data, tmp_path / "run") == 2
    _one_error_line(capsys, f"instances_{split}.json", "1 image(s)", gone.name)
    assert not (tmp_path / "run").exists()  # nothing written: the retry needs no --resume


def test_held_out_resume_of_a_folder_without_a_run(example, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (tmp_path / "mistyped", empty):  # was: a fresh run, silently
        assert _train(example, out, "--max-iter", "1", "--resume") == 2
        _one_error_line(capsys, "--resume", str(out), "holds no run")
    assert not (tmp_path / "mistyped").exists() and not any(empty.iterdir())


def test_held_out_out_in_the_data_set(example, tmp_path, capsys):
    data = _variant(example, tmp_path / "set")
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    for out in (data, data / "train", data / "annotations" / "run"):  # was: trained there
        assert _train(data, out, "--max-iter", "1") == 2
        _one_error_line(capsys, f"--out {out}", "a folder of the data set")
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    assert _train(data, data / "runs" / "a", "--max-iter", "1") == 0  # beside the data: fine


@pytest.mark.parametrize(
    "more, words",
    [
        (["--batch-size", "5"], ["--batch-size 5", "4 images", "4 or less"]),
        (["--num-eval-images", "4"], ["--num-eval-images 4", "3 images", "3 or less"]),
        (["--timeout", "nan"], ["--timeout nan", "at least 1"]),
        (["--timeout", "inf"], ["--timeout inf", "at least 1"]),
    ],
)
def test_held_out_sizes_the_data_cannot_give_and_timeouts_that_are_no_wait(
    example, tmp_path, capsys, more, words
):
    argv = ["train", "--data", str(example), "--preset", "ci_mask", "--out", str(tmp_path / "r")]
    argv += ["--max-iter", "1", "--no-progress", "--batch-size", "2", *more]
    assert cli.main(argv) == 2  # was: ran with fewer images than asked, or no timeout
    _one_error_line(capsys, *words)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("threshold", ["-1", "2", "nan"])
def test_held_out_predict_refuses_a_score_threshold_outside_0_to_1(
    run, example, tmp_path, capsys, threshold
):
    argv = ["predict", "--checkpoint", str(run / "last.pt"), "--images", str(example / "val")]
    assert cli.main([*argv, "--out", str(tmp_path / "p"), "--score-threshold", threshold]) == 2
    _one_error_line(capsys, f"--score-threshold {threshold}", "from 0 to 1")  # was: no boxes
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_held_out_a_damaged_run_json_is_named_by_predict_and_export(
    run, example, tmp_path, capsys, text
):
    folder = _copy_run(run, tmp_path / "run")
    (folder / "run.json").write_text(text)
    assert _predict(folder / "last.pt", example / "val", tmp_path / "p") == 2
    _one_error_line(capsys, str(folder / "run.json"), "restore it")  # was: "Expecting value"
    argv = ["export", "--checkpoint", str(folder / "last.pt"), "--out", str(tmp_path / "m.pt")]
    assert cli.main(argv) == 2
    _one_error_line(capsys, str(folder / "run.json"), "restore it")
    assert not (tmp_path / "p").exists() and not (tmp_path / "m.pt").exists()


def test_held_out_export_never_replaces_a_training_checkpoint(run, tmp_path, capsys):
    other = _copy_run(run, tmp_path / "other")
    argv = ["export", "--checkpoint", str(run / "last.pt"), "--overwrite", "--out"]
    assert cli.main([*argv, str(other / "last.pt")]) == 2  # was: replaced, --resume broken
    _one_error_line(capsys, "last.pt", "not a checkpoint written by export", "--resume")
    assert (other / "last.pt").read_bytes() == (run / "last.pt").read_bytes()
    assert cli.main([*argv, str(tmp_path / "model.pt")]) == 0  # a new file, and then an
    assert cli.main([*argv, str(tmp_path / "model.pt")]) == 0  # exported copy: replaced


@pytest.mark.parametrize("command", ["train", "predict"])
def test_held_out_an_empty_path_is_not_the_current_folder(run, example, command, capsys):
    if command == "train":
        argv = ["train", "--data", str(example), "--preset", "ci_mask", "--out", ""]
    else:
        argv = ["predict", "--checkpoint", str(run / "last.pt"), "--images", str(example)]
        argv += ["--out", ""]
    with pytest.raises(SystemExit) as exit_:  # was: train wrote its run into the cwd
        cli.main(argv)
    assert exit_.value.code == 2
    assert "--out: an empty path" in capsys.readouterr().err


def test_train_in_channels_last_writes_a_checkpoint_predict_reads(example, tmp_path):
    from rcnn_steps.engine import load_checkpoint

    out = tmp_path / "nhwc"
    argv = ["train", "--data", str(example), "--preset", "ci_mask", "--out", str(out)]
    argv += ["--max-iter", "2", "--batch-size", "2", "--num-eval-images", "1", "--no-progress"]
    assert cli.main([*argv, "--memory-format", "channels_last"]) == 0
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["config"]["memory_format"] == "channels_last"
    convs = [v for v in ckpt["model"].values() if v.dim() == 4 and v.shape[-1] > 1]
    assert convs and all(v.is_contiguous(memory_format=torch.channels_last) for v in convs)
    assert _predict(out / "last.pt", _images(example, tmp_path / "in", n=1), tmp_path / "p") == 0
