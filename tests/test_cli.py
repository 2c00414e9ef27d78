"""``python -m rcnn_steps <command>`` as a user meets it: a mistake is one line and exit
status 2 (``--debug`` for the traceback), and ``predict`` on real folders (unreadable,
16-bit, .tif/.webp and nested images, a checkpoint without its run, overlapping and
reused output folders, a missing GPU). One tiny ``ci_mask`` run is shared."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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
    example, tmp_path, monkeypatch, capsys, how
):
    """Ctrl-C at step 2 of 4 (in the evaluation after it): last.pt holds step 2, the one
    line says how to continue, and continuing gives the weights of a run never stopped.
    ``signal``: a real SIGINT (the loop finishes the step, then stops); ``raise``: a
    KeyboardInterrupt raised in the evaluation itself."""
    import os
    import signal

    from rcnn_steps import runner
    from rcnn_steps.engine import load_checkpoint, read_metrics

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
