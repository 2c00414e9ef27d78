"""The training loop: exact resume, failure handling, schedules, logging, evaluation."""

import dataclasses
import io
import json
import math
import os
import re
import tempfile
import traceback
import warnings
from copy import deepcopy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from rcnn_steps import engine
from rcnn_steps.detectors.faster_rcnn import FasterRCNN
from rcnn_steps.engine import (
    CheckpointError,
    NonFiniteLossError,
    TrainConfig,
    build_optimizer,
    build_scheduler,
    classification_loss,
    epoch_iterator,
    load_checkpoint,
    lr_factor,
    read_metrics,
    save_checkpoint,
    to_device,
    train,
)
from rcnn_steps.engine.checkpoint import MOVED_MODULES, current_class_path

# ----------------------------------------------------------------------------------------
# Tiny models and data


class ToyDetectionSet(Dataset):
    """Images ``[3, 8, 8]`` with one target dict each (a label and a box), like COCO."""

    def __init__(self, n=10, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 8, 8, generator=g)
        self.labels = torch.randint(0, 3, (n,), generator=g)
        self.boxes = torch.rand(n, 4, generator=g)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        # a random augmentation drawn from the global RNG, as a flip would be
        image = self.images[i] + 0.01 * torch.randn(3, 8, 8)
        return image, {"labels": self.labels[i], "boxes": self.boxes[i]}


def collate(batch):
    return tuple(zip(*batch, strict=True))


class FakeDetector(nn.Module):
    """``forward(images, targets)`` returns two named losses, as torchvision's detectors.

    ``bad_at=(k, value)`` makes ``loss_box`` equal ``value`` (NaN, inf) on the k-th call.
    """

    def __init__(self, bad_at=None):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(0.3),
        )
        self.cls_head = nn.Linear(4, 3)
        self.box_head = nn.Linear(4, 4)
        self.bad_at = bad_at
        self.calls = 0

    def forward(self, images, targets):
        features = self.backbone(torch.stack(list(images)))
        labels = torch.stack([t["labels"] for t in targets])
        boxes = torch.stack([t["boxes"] for t in targets])
        loss_box = F.smooth_l1_loss(self.box_head(features), boxes)
        self.calls += 1
        if self.bad_at is not None and self.calls == self.bad_at[0]:
            loss_box = loss_box * 0 + self.bad_at[1]
        return {"loss_cls": F.cross_entropy(self.cls_head(features), labels), "loss_box": loss_box}


def detection_loader(n=10, batch_size=3, drop_last=True, num_workers=0):
    return DataLoader(
        ToyDetectionSet(n),
        batch_size=batch_size,
        shuffle=True,
        drop_last=drop_last,
        collate_fn=collate,
        num_workers=num_workers,
    )


def make_config(tmp_path, **changes):
    defaults = dict(
        max_iter=12,
        lr=0.05,
        warmup_steps=3,
        lr_steps=(8,),
        log_every=2,
        out_dir=str(tmp_path),
        progress=False,
        seed=7,
    )
    return TrainConfig(**{**defaults, **changes})


def fresh_detector(seed=0, **kwargs):
    torch.manual_seed(seed)
    return FakeDetector(**kwargs)


def assert_same_state(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def without_times(records):
    return [{k: v for k, v in r.items() if k not in ("time", "sec_per_iter")} for r in records]


# ----------------------------------------------------------------------------------------
# Configuration and helpers


def test_config_display_prints_every_field(capsys):
    config = TrainConfig(max_iter=5, lr_steps=[3, 4])
    config.display()
    out = capsys.readouterr().out
    for name in config.to_dict():
        assert name in out
    assert config.lr_steps == (3, 4)


@pytest.mark.parametrize(
    "changes",
    [
        {"schedule": "linear"},
        {"lr_steps": (5, 3)},
        {"max_iter": 0},
        {"warmup_factor": 0.0},
        {"memory_format": "nhwc"},
    ],
)
def test_config_rejects_bad_values(changes):
    with pytest.raises(ValueError):
        TrainConfig(**changes)


def test_to_device_recurses_through_containers():
    batch = ([torch.zeros(2)], {"boxes": torch.ones(1, 4), "name": "x"}, (torch.ones(1), 3))
    moved = to_device(batch, torch.device("cpu"))
    assert isinstance(moved[0], list) and isinstance(moved[2], tuple)
    assert moved[1]["name"] == "x" and moved[2][1] == 3
    assert torch.equal(moved[1]["boxes"], batch[1]["boxes"])


def test_weight_decay_skips_biases_and_norm_layers():
    model = FakeDetector()
    optimizer = build_optimizer(model, TrainConfig(weight_decay=1e-4))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in no_decay["params"]}
    assert id(model.backbone[1].weight) in ids and id(model.cls_head.bias) in ids
    assert all(p.ndim >= 2 for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


# ----------------------------------------------------------------------------------------
# Learning-rate schedules


def test_warmup_then_step_decay():
    config = TrainConfig(
        max_iter=40, warmup_steps=10, warmup_factor=0.1, lr_steps=(20, 30), gamma=0.1
    )
    expected = {0: 0.1, 5: 0.55, 9: 0.91, 10: 1.0, 19: 1.0, 20: 0.1, 29: 0.1, 30: 0.01}
    for it, factor in expected.items():
        assert lr_factor(it, config) == pytest.approx(factor), it
    # the LambdaLR gives the same values, one step per update
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.02)
    scheduler = build_scheduler(optimizer, config)
    for it in range(40):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02 * lr_factor(it, config))
        optimizer.step()
        scheduler.step()


def test_cosine_schedule():
    config = TrainConfig(max_iter=100, warmup_steps=10, warmup_factor=0.5, schedule="cosine")
    assert lr_factor(0, config) == pytest.approx(0.5)
    assert lr_factor(50, config) == pytest.approx(0.5)  # halfway down the cosine
    assert lr_factor(100, config) == pytest.approx(0.0, abs=1e-12)
    after = [lr_factor(it, config) for it in range(10, 100)]
    assert all(a > b for a, b in zip(after, after[1:], strict=False))
    no_warmup = TrainConfig(max_iter=100, warmup_steps=0, schedule="cosine")
    assert lr_factor(0, no_warmup) == 1.0
    assert lr_factor(25, no_warmup) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)


# ----------------------------------------------------------------------------------------
# The weights' memory format


def _is_channels_last(weight):
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def test_channels_last_trains_the_same_model_to_float_rounding(tmp_path):
    plain = fresh_detector()
    train(plain, detection_loader(), make_config(tmp_path / "a"))
    nhwc = fresh_detector()
    result = train(
        nhwc, detection_loader(), make_config(tmp_path / "b", memory_format="channels_last")
    )
    conv = nhwc.backbone[0].weight
    assert _is_channels_last(conv) and result.step == 12
    assert plain.backbone[0].weight.is_contiguous()
    for (name, a), b in zip(plain.state_dict().items(), nhwc.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), name
    # the layout is not the model: the other run's records differ only by rounding
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert math.isclose(ra["total_loss"], rb["total_loss"], rel_tol=1e-4)


def test_a_channels_last_checkpoint_resumes_in_either_format_without_a_warning(tmp_path):
    config = make_config(tmp_path, memory_format="channels_last")
    train(fresh_detector(), detection_loader(), config, stop_at=5)
    saved = load_checkpoint(tmp_path / "last.pt")["model"]
    assert _is_channels_last(saved["backbone.0.weight"])  # saved as it trained
    resumed = fresh_detector(seed=9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the format only rounds: no "config differs" warning
        result = train(
            resumed, detection_loader(), dataclasses.replace(config, memory_format="contiguous"),
            resume=True,
        )  # fmt: skip
    assert result.step == 12 and resumed.backbone[0].weight.is_contiguous()


def test_channels_last_detector_losses_equal_contiguous_ones():
    # the real model: every conv, the RoI layers and the mask head accept NHWC maps
    from rcnn_steps.detectors.config import DetectorConfig

    torch.manual_seed(0)
    model = FasterRCNN(DetectorConfig.ci_mask(keypoints=False))
    gen = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 64, 64, generator=gen) for _ in range(2)]
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[:, 10:40, 12:44] = 1
    targets = [{"boxes": torch.tensor([[12.0, 10.0, 44.0, 40.0]]), "labels": torch.tensor([1]),
                "masks": masks} for _ in images]  # fmt: skip
    losses = {}
    for fmt in ("contiguous", "channels_last"):
        net = deepcopy(model).to(memory_format=engine.MEMORY_FORMATS[fmt]).train()
        torch.manual_seed(2)  # the same anchor and RoI samples
        losses[fmt] = net(images, [dict(t) for t in targets])
        sum(losses[fmt].values()).backward()
        if fmt == "channels_last":
            assert _is_channels_last(net.backbone.stages.stem[0][0].weight.grad)
    for name, value in losses["contiguous"].items():
        assert torch.allclose(value, losses["channels_last"][name], rtol=1e-4, atol=1e-6), name


# ----------------------------------------------------------------------------------------
# Exact resume


@pytest.mark.parametrize("schedule", ["step", "cosine"])
def test_resume_matches_straight_run(tmp_path, schedule):
    # 10 samples, batches of 3 with drop_last: 3 batches per epoch, 12 steps = 4 epochs;
    # the split at step 5 falls in the middle of epoch 1.
    straight = fresh_detector()
    train(straight, detection_loader(), make_config(tmp_path / "a", schedule=schedule))

    first = fresh_detector()
    config = make_config(tmp_path / "b", schedule=schedule)
    result = train(first, detection_loader(), config, stop_at=5)
    assert result.step == 5 and load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 5

    # a new process, as it were: new model (other init), new loader, new optimizer
    resumed = fresh_detector(seed=123)
    result = train(resumed, detection_loader(), config, resume=True)
    assert result.step == 12
    assert_same_state(straight, resumed)
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert without_times(a) == without_times(b)
    assert [r["step"] for r in b] == [2, 4, 6, 8, 10, 12]


def test_resume_matches_with_worker_processes(tmp_path):
    # the augmentation runs in the workers, seeded from the loader's per-epoch generator
    straight = fresh_detector()
    train(straight, detection_loader(num_workers=2), make_config(tmp_path / "a", max_iter=6))
    config = make_config(tmp_path / "b", max_iter=6)
    train(fresh_detector(), detection_loader(num_workers=2), config, stop_at=4)
    torch.rand(5)  # the resuming process's global RNG is elsewhere
    resumed = fresh_detector(seed=5)
    train(resumed, detection_loader(num_workers=2), config, resume=True)
    assert_same_state(straight, resumed)


def test_resume_after_a_crash_replays_from_the_last_checkpoint(tmp_path):
    straight = fresh_detector()
    train(straight, detection_loader(), make_config(tmp_path / "a", log_every=1))

    calls = []

    def crashing_loss(model, batch):
        calls.append(1)
        if len(calls) == 7:
            raise RuntimeError("power cut")
        return model(*batch)

    config = make_config(tmp_path / "b", log_every=1, checkpoint_every=4)
    with pytest.raises(RuntimeError, match="power cut"):
        train(fresh_detector(), detection_loader(), config, loss_fn=crashing_loss)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 4
    assert [r["step"] for r in read_metrics(tmp_path / "b")] == [1, 2, 3, 4, 5, 6]

    resumed = fresh_detector(seed=1)
    train(resumed, detection_loader(), config, resume=True)
    assert_same_state(straight, resumed)
    records = read_metrics(tmp_path / "b")
    assert [r["step"] for r in records] == list(range(1, 13))  # 5 and 6 not duplicated
    assert without_times(records) == without_times(read_metrics(tmp_path / "a"))


def test_resume_without_checkpoint_starts_fresh_and_finished_run_returns(tmp_path):
    a, b = fresh_detector(), fresh_detector()
    train(a, detection_loader(), make_config(tmp_path / "a"))
    train(b, detection_loader(), make_config(tmp_path / "b"), resume=True)
    assert_same_state(a, b)

    def never(model, batch):
        raise AssertionError("a finished run must not train again")

    result = train(b, detection_loader(), make_config(tmp_path / "b"), resume=True, loss_fn=never)
    assert result.step == 12 and set(result.losses) == {"loss_cls", "loss_box", "total_loss"}


# ----------------------------------------------------------------------------------------
# Failures: non-finite losses, crashes while saving


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, bad):
    model = fresh_detector(bad_at=(6, bad))
    config = make_config(tmp_path, checkpoint_every=2)
    with pytest.raises(NonFiniteLossError) as info:
        train(model, detection_loader(), config)
    error = info.value
    assert error.step == 6
    assert "loss_box" in error.nonfinite and "loss_cls" not in error.nonfinite
    message = str(error)
    assert "step 6" in message and "loss_box" in message and str(bad) in message
    assert "config.lr" in message and "grad_clip_norm" in message and "data" in message
    assert str(tmp_path / "last.pt") in message

    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_checkpoint_write_crash_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise RuntimeError("killed")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="killed"):
        save_checkpoint(path, {"step": 3})
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind


def test_crash_while_checkpointing_during_training(tmp_path, monkeypatch):
    real_replace = os.replace
    replaced = []

    def replace_once(src, dst):
        replaced.append(dst)
        if len(replaced) == 2:
            raise OSError("killed while saving")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_once)
    config = make_config(tmp_path, checkpoint_every=2, log_every=100)
    with pytest.raises(OSError, match="killed while saving"):
        train(fresh_detector(), detection_loader(), config)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_keep_checkpoints_writes_step_numbered_files(tmp_path):
    config = make_config(tmp_path, max_iter=6, checkpoint_every=3, keep_checkpoints=True)
    result = train(fresh_detector(), detection_loader(), config)
    assert result.checkpoint == str(tmp_path / "last.pt")
    assert (tmp_path / "model_0000003.pt").exists() and (tmp_path / "model_0000006.pt").exists()
    ckpt = load_checkpoint(tmp_path / "model_0000003.pt")
    assert ckpt["step"] == 3
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "scaler", "rng", "config"}


# ----------------------------------------------------------------------------------------
# Nothing lost: a finished run is not overwritten, a killed write leaves no litter


def test_a_new_run_refuses_an_out_dir_that_holds_a_run(tmp_path):
    config = make_config(tmp_path, max_iter=4, checkpoint_every=2, keep_checkpoints=True)
    train(fresh_detector(), detection_loader(), config)
    kept = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert {"metrics.jsonl", "last.pt", "model_0000002.pt"} <= set(kept)
    with pytest.raises(FileExistsError, match=r"already holds a training run .*resume=True.*"
                       r"TrainConfig\(overwrite=True\).*another out_dir"):  # fmt: skip
        train(fresh_detector(seed=1), detection_loader(), config)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == kept  # untouched
    # a checkpoint-less crash, resumed, starts afresh in the same folder, as before
    (tmp_path / "last.pt").unlink()
    train(fresh_detector(), detection_loader(), config, resume=True)

    # asked to overwrite: the old run's files go, the new run's come
    (tmp_path / "model_0000099.pt").write_bytes(b"an old kept checkpoint")
    (tmp_path / "notes.txt").write_text("mine")
    again = make_config(tmp_path, max_iter=3, overwrite=True)
    train(fresh_detector(seed=2), detection_loader(), again)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "metrics.jsonl", "notes.txt"]
    assert [r["step"] for r in read_metrics(tmp_path)] == [2, 3]
    # overwrite is a harmless field: resuming with another value does not warn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(fresh_detector(), detection_loader(), make_config(tmp_path, max_iter=3), resume=True)


def test_the_temporary_file_of_a_killed_write_is_removed_at_the_next_start(tmp_path):
    config = make_config(tmp_path, max_iter=4, checkpoint_every=2, keep_checkpoints=True)
    train(fresh_detector(), detection_loader(), config, stop_at=2)
    # a kill between writing the temporary file and renaming it (no Python cleanup runs)
    for name in ("last.pt", "model_0000004.pt", "metrics.jsonl"):
        fd, _ = tempfile.mkstemp(dir=tmp_path, prefix=f".{name}.", suffix=".tmp")
        os.write(fd, b"half a file")
        os.close(fd)
    (tmp_path / ".notes.txt.tmp").write_text("not ours")
    train(fresh_detector(), detection_loader(), config, resume=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".notes.txt.tmp",
        "last.pt",
        "metrics.jsonl",
        "model_0000002.pt",
        "model_0000004.pt",
    ]


# ----------------------------------------------------------------------------------------
# Checkpoints are verified on load, and resume only into the model they were written by


def _flip_a_byte_of(path, tensor):
    """Flip one bit inside the stored bytes of ``tensor`` (a bit rotting on disk)."""
    data = bytearray(path.read_bytes())
    at = data.find(tensor.numpy().tobytes()[400:432])
    assert at >= 0
    data[at + 5] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_byte_is_caught(tmp_path):
    path = tmp_path / "last.pt"
    weights = torch.arange(1000, dtype=torch.float32)
    save_checkpoint(path, {"step": 3, "model": {"w": weights}})
    loaded = load_checkpoint(path)
    assert set(loaded) == {"step", "model"} and torch.equal(loaded["model"]["w"], weights)
    _flip_a_byte_of(path, weights)
    assert torch.load(path, weights_only=True)["step"] == 3  # torch itself does not notice
    with pytest.raises(CheckpointError, match=r"last.pt is damaged: its contents no longer"):
        load_checkpoint(path)


def test_a_flipped_byte_in_the_run_checkpoint_stops_the_resume(tmp_path):
    config = make_config(tmp_path)
    train(fresh_detector(), detection_loader(), config, stop_at=4)
    weight = load_checkpoint(tmp_path / "last.pt")["model"]["box_head.weight"]
    data = bytearray((tmp_path / "last.pt").read_bytes())
    at = data.find(weight.numpy().tobytes())
    assert at >= 0
    data[at + 3] ^= 0x01
    (tmp_path / "last.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(tmp_path / "last.pt") + " is damaged"):
        train(fresh_detector(), detection_loader(), config, resume=True)


def _no_unsafe_advice(error):
    text = "".join(traceback.format_exception(error))
    assert "weights_only=False" not in text and "weights_only" not in str(error)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"is empty \(0 bytes\): its write was cut short"),
        ("half", r"cannot be read \(\d+ bytes; RuntimeError.*truncated, damaged"),
        (b"hello, these are not the bytes you are looking for" * 4, r"cannot be read"),
        ("unsafe", r"holds Python objects \(such as .*Fraction\) that the safe loader refuses"),
    ],
    ids=["empty", "truncated", "garbage", "unsafe"],
)
def test_unreadable_checkpoints_name_the_file_and_never_suggest_unsafe_loading(
    tmp_path, content, message
):
    import fractions

    path = tmp_path / "last.pt"
    if content == "half":
        save_checkpoint(path, {"step": 1, "w": torch.ones(100)})
        content = path.read_bytes()[: path.stat().st_size // 2]
    elif content == "unsafe":
        buffer = io.BytesIO()
        torch.save({"step": 1, "x": fractions.Fraction(1, 3)}, buffer)
        content = buffer.getvalue()
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*" + message) as info:
        load_checkpoint(path)
    _no_unsafe_advice(info.value)
    assert "Use an earlier checkpoint" in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*nowhere.pt does not exist"):
        load_checkpoint(tmp_path / "nowhere.pt")


def test_a_checkpoint_without_a_checksum_loads_with_a_warning(tmp_path):
    torch.save({"step": 2}, tmp_path / "old.pt")
    with pytest.warns(UserWarning, match="old.pt has no checksum"):
        assert load_checkpoint(tmp_path / "old.pt") == {"step": 2}


@pytest.mark.parametrize("name", ["final_model.pt", "final_model_keypoints.pt"])
def test_the_committed_models_still_load_and_verify(name):
    """The weights committed in results/ were written before the engine was a package:
    they load with the safe unpickler, their checksums verify (no warning), and they hold
    what ``predict`` reads."""
    path = Path(__file__).resolve().parents[1] / "results" / name
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checkpoint that cannot be verified warns
        checkpoint = load_checkpoint(path)
    assert set(engine.EXPORTED_KEYS) <= set(checkpoint)
    assert checkpoint["model_description"]["class"] == "rcnn_steps.faster_rcnn.FasterRCNN"
    assert all(isinstance(v, torch.Tensor) for v in checkpoint["model"].values())


def test_resume_into_a_model_of_other_shapes_is_a_clear_error(tmp_path):
    config = make_config(tmp_path)
    train(fresh_detector(), detection_loader(), config, stop_at=4)
    wider = fresh_detector()
    wider.cls_head = nn.Linear(4, 5)
    with pytest.raises(
        CheckpointError,
        match=r"last.pt: its weights do not fit this model: 2 of other shapes \(e.g. "
        r"cls_head.weight is \(3, 4\) in the checkpoint and \(5, 4\) here\)",
    ):
        train(wider, detection_loader(), config, resume=True)
    with pytest.raises(CheckpointError, match=r"written by a .*FakeDetector, and this model is"):
        train(nn.Linear(4, 3), detection_loader(), config, resume=True)


def test_a_class_path_from_before_the_floors_is_read_as_its_new_path():
    assert current_class_path("rcnn_steps.faster_rcnn.FasterRCNN") == (
        f"{FasterRCNN.__module__}.{FasterRCNN.__qualname__}"
    )
    assert current_class_path("rcnn_steps.faster_rcnn_x.Y") == "rcnn_steps.faster_rcnn_x.Y"
    assert current_class_path("tests.test_engine.FakeDetector") == "tests.test_engine.FakeDetector"


def test_a_checkpoint_naming_the_old_path_of_a_moved_class_resumes(tmp_path, monkeypatch):
    """A checkpoint written before its model's module moved (issue 23) names the class by
    the old path; resuming maps it to the new one (a model of another class is still
    refused)."""
    config = make_config(tmp_path)
    train(fresh_detector(), detection_loader(), config, stop_at=4)
    checkpoint = load_checkpoint(tmp_path / "last.pt")
    checkpoint.pop("checksum", None)
    checkpoint["model_description"]["class"] = "old_place.FakeDetector"
    save_checkpoint(tmp_path / "last.pt", checkpoint)
    with pytest.raises(CheckpointError, match=r"written by a old_place.FakeDetector"):
        train(fresh_detector(), detection_loader(), config, resume=True)
    monkeypatch.setitem(MOVED_MODULES, "old_place", FakeDetector.__module__)
    assert train(fresh_detector(), detection_loader(), config, resume=True).step == 12


@dataclasses.dataclass
class ToyConfig:
    roi_op: str = "roipool"
    sizes: tuple = (32, 64)

    def to_dict(self):
        return dataclasses.asdict(self)


class ConfiguredDetector(FakeDetector):
    """A model with a ``config`` whose fields change nothing in the weights' shapes (as
    DetectorConfig.roi_op does not)."""

    def __init__(self, config):
        super().__init__()
        self.config = config


def test_resume_into_a_model_of_another_config_with_the_same_shapes_is_refused(tmp_path):
    config = make_config(tmp_path)
    torch.manual_seed(0)
    train(ConfiguredDetector(ToyConfig()), detection_loader(), config, stop_at=4)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["model_description"]["config"] == {"roi_op": "roipool", "sizes": [32, 64]}
    other = ConfiguredDetector(ToyConfig(roi_op="roialign"))
    with pytest.raises(
        CheckpointError,
        match=r"another config \(fields roi_op differ: roi_op: 'roipool' in the checkpoint, "
        r"'roialign' now\)",
    ):
        train(other, detection_loader(), config, resume=True)
    same = ConfiguredDetector(ToyConfig())
    assert train(same, detection_loader(), config, resume=True).step == 12


# ----------------------------------------------------------------------------------------
# Gradient clipping, metrics, evaluation, loss weights


def test_grad_clipping_bounds_the_update(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(16, 4) * 10, torch.randint(0, 2, (16,))
    model = nn.Linear(4, 2)
    before = [p.detach().clone() for p in model.parameters()]
    grad_norm = torch.nn.utils.get_total_norm(
        torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    )
    assert grad_norm > 0.1  # so the clipping below is active

    config = TrainConfig(
        max_iter=1,
        lr=1.0,
        momentum=0.0,
        weight_decay=0.0,
        warmup_steps=0,
        grad_clip_norm=0.01,
        log_every=1,
        progress=False,
    )
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    result = train(model, loader, config, loss_fn=classification_loss)
    step = torch.cat(
        [(p.detach() - b).flatten() for p, b in zip(model.parameters(), before, strict=True)]
    )
    assert step.norm() <= 0.01 * (1 + 1e-5)  # lr * clipped gradient
    assert result.history[0]["grad_norm"] == pytest.approx(grad_norm.item(), rel=1e-5)


def test_metrics_jsonl(tmp_path):
    config = make_config(tmp_path, max_iter=7, log_every=2)
    result = train(fresh_detector(), detection_loader(), config)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records == json.loads(json.dumps(result.history))
    assert [r["step"] for r in records] == [2, 4, 6, 7]
    for r in records:
        assert set(r) == {
            "step",
            "lr",
            "loss_cls",
            "loss_box",
            "total_loss",
            "sec_per_iter",
            "time",
        }
        assert r["total_loss"] == pytest.approx(r["loss_cls"] + r["loss_box"])
        assert r["lr"] == pytest.approx(0.05 * lr_factor(r["step"] - 1, config))
    assert records[-1]["time"] >= records[0]["time"] > 0
    assert result.losses["total_loss"] == pytest.approx(
        result.losses["loss_cls"] + result.losses["loss_box"]
    )
    assert result.sec_per_iter > 0 and result.wall_time_s > 0

    # a line cut short by a crash is ignored; a folder means its metrics.jsonl
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "lr')
    assert read_metrics(tmp_path) == records


def test_loss_weights(tmp_path):
    config = make_config(tmp_path, max_iter=2, log_every=1, loss_weights={"loss_box": 0.0})
    result = train(fresh_detector(), detection_loader(), config)
    assert result.losses["total_loss"] == pytest.approx(result.losses["loss_cls"])
    with pytest.raises(ValueError, match="loss_bbox"):
        bad = make_config(tmp_path / "bad", max_iter=2, loss_weights={"loss_bbox": 2.0})
        train(fresh_detector(), detection_loader(), bad)


def test_evaluate_fn_called_at_eval_steps_and_does_not_change_training(tmp_path):
    calls = []

    def evaluate(model):
        assert not model.training and not torch.is_grad_enabled()
        calls.append(model.cls_head.weight.detach().clone())
        torch.rand(100)  # an evaluation that draws random numbers
        return {"acc": torch.tensor(0.5 * len(calls)), "count": len(calls)}

    model = fresh_detector()
    config = make_config(tmp_path / "eval", max_iter=10, eval_every=4, log_every=5)
    result = train(model, detection_loader(), config, evaluate_fn=evaluate)
    assert len(calls) == 3
    assert [e["step"] for e in result.eval_history] == [4, 8, 10]
    assert result.eval_history[0] == {"step": 4, "acc": 0.5, "count": 1}
    assert model.training
    records = {r["step"]: r for r in read_metrics(tmp_path / "eval")}
    assert sorted(records) == [4, 5, 8, 10]
    assert records[8]["eval/acc"] == 1.0 and "loss_cls" not in records[8]
    assert records[10]["eval/count"] == 3 and "loss_cls" in records[10]

    plain = fresh_detector()
    train(plain, detection_loader(), make_config(tmp_path / "plain", max_iter=10))
    assert_same_state(model, plain)  # evaluation did not perturb the random streams


def test_classifier_trains_through_the_same_loop():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (64,), generator=g)
    images = torch.randn(64, 1, 4, 4, generator=g) + 2.0 * labels[:, None, None, None] - 1.0
    loader = DataLoader(TensorDataset(images, labels), batch_size=16, shuffle=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
    config = TrainConfig(max_iter=40, lr=0.1, warmup_steps=5, log_every=5, progress=False)
    result = train(model, loader, config, loss_fn=classification_loss)
    assert result.history[-1]["loss_cls"] < 0.5 * result.history[0]["loss_cls"]
    accuracy = (model(images).argmax(1) == labels).float().mean()
    assert accuracy > 0.9


# ----------------------------------------------------------------------------------------
# Data order: epochs cycled, a function of (seed, epoch)


class IndexSet(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.tensor(float(i))


def seen_batches(loader, seed, max_iter=5):
    seen = []

    def loss_fn(model, batch):
        seen.append(batch.long().tolist())
        return {"loss": (model(batch[:, None]) ** 2).mean()}

    config = TrainConfig(max_iter=max_iter, seed=seed, warmup_steps=0, progress=False)
    train(nn.Linear(1, 1), loader, config, loss_fn=loss_fn)
    return seen


@pytest.mark.parametrize("drop_last", [True, False])
def test_epochs_cycle_and_order_depends_on_seed_and_epoch_only(drop_last):
    loader = DataLoader(IndexSet(), batch_size=4, shuffle=True, drop_last=drop_last)
    per_epoch = 2 if drop_last else 3
    seen = seen_batches(loader, seed=3, max_iter=2 * per_epoch + 1)
    epochs = [sum(seen[e * per_epoch : (e + 1) * per_epoch], []) for e in range(2)]
    for indices in epochs:
        assert len(indices) == len(set(indices)) == (8 if drop_last else 10)
    assert [len(b) for b in seen[:per_epoch]] == ([4, 4] if drop_last else [4, 4, 2])
    assert epochs[0] != epochs[1]  # reshuffled each epoch
    # the same batches from a fresh loader, and straight from epoch_iterator
    assert (
        seen_batches(
            DataLoader(IndexSet(), batch_size=4, shuffle=True, drop_last=drop_last),
            seed=3,
            max_iter=2 * per_epoch + 1,
        )
        == seen
    )
    direct = [b.long().tolist() for b in epoch_iterator(loader, seed=3, epoch=1)]
    assert direct == seen[per_epoch : 2 * per_epoch]
    # another seed, another order
    assert seen_batches(loader, seed=4, max_iter=per_epoch) != seen[:per_epoch]


def test_empty_loader_is_a_clear_error():
    loader = DataLoader(IndexSet(), batch_size=16, drop_last=True)
    with pytest.raises(ValueError, match="no batch"):
        seen_batches(loader, seed=0)


# ----------------------------------------------------------------------------------------
# CUDA with mixed precision


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_amp_training_and_resume(tmp_path):
    config = make_config(tmp_path, device="cuda", amp=True, max_iter=20, checkpoint_every=5)
    model = fresh_detector()
    result = train(model, detection_loader(), config, stop_at=10)
    assert next(model.parameters()).device.type == "cuda"
    assert all(math.isfinite(v) for v in result.losses.values())
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["scaler"]["scale"] > 0 and len(ckpt["rng"]["cuda"]) >= 1
    result = train(fresh_detector(), detection_loader(), config, resume=True)
    assert result.step == 20


def test_engine_never_calls_cuda_directly():
    modules = sorted(Path(engine.__file__).parent.glob("*.py"))
    assert len(modules) > 1  # the package's modules, not only its __init__
    assert [m.name for m in modules if ".cuda(" in m.read_text()] == []


def test_train_result_summary_rounds_what_results_files_keep():
    from rcnn_steps.engine import TrainResult

    result = TrainResult(
        step=2,
        losses={"loss": 0.123456},
        eval_history=[],
        history=[{"step": 1, "loss": 0.987654}],
        wall_time_s=1.0,
        sec_per_iter=0.0512345,
    )
    assert result.summary() == {
        "train_sec_per_iter": 0.0512,
        "final_losses": {"loss": 0.1235},
        "loss_history": [{"step": 1, "loss": 0.9877}],
    }


# ----------------------------------------------------------------------------------------
# Each loss term's share of the gradient


class TwoHeads(nn.Module):
    """Two regression heads, on a shared trunk or each on its own input, and a batch norm
    (whose statistics a forward pass in train mode changes)."""

    def __init__(self, shared: bool):
        super().__init__()
        self.shared = shared
        self.norm = nn.BatchNorm1d(4, affine=False)  # statistics, no parameters to share
        self.trunk = nn.Linear(4, 4)
        self.a = nn.Linear(4, 1)
        self.b = nn.Linear(4, 1)

    def forward(self, images, targets):
        x = self.norm(torch.stack(list(images)))
        x = self.trunk(x) if self.shared else x
        y = torch.stack([t["y"] for t in targets])
        return {
            "loss_a": (self.a(x)[:, 0] - y).pow(2).mean(),
            "loss_b": (self.b(x)[:, 0] + y).abs().mean(),
            "loss_none": self.a(x).sum() * 0,  # a graph, a zero gradient: nothing to learn
            "loss_constant": torch.tensor(0.5),  # no graph at all
        }


def _two_heads_batch():
    g = torch.Generator().manual_seed(3)
    images = list(torch.randn(6, 4, generator=g))
    targets = [{"y": v} for v in torch.randn(6, generator=g)]
    return images, targets


def _norm_of_gradient(model, loss):
    grads = torch.autograd.grad(
        loss, list(model.parameters()), retain_graph=True, allow_unused=True
    )
    return math.sqrt(sum(float(g.pow(2).sum()) for g in grads if g is not None))


@pytest.mark.parametrize("shared", [False, True])
def test_branch_gradient_norms_are_each_terms_own_gradient(shared):
    torch.manual_seed(0)
    model = TwoHeads(shared)
    images, targets = _two_heads_batch()
    copy = deepcopy(model).train()  # the same weights and batch-norm state
    norms = engine.branch_gradient_norms(model, images, targets)
    assert list(norms) == ["loss_a", "loss_b", "loss_none", "loss_constant", "total_loss"]
    model = copy
    losses = model(images, targets)
    for name in ("loss_a", "loss_b"):
        assert norms[name] == pytest.approx(_norm_of_gradient(model, losses[name]), rel=1e-5)
        assert norms[name] > 0
    assert norms["loss_none"] == norms["loss_constant"] == 0.0  # touch no parameter
    total = _norm_of_gradient(model, sum(v for k, v in losses.items() if k != "loss_constant"))
    assert norms["total_loss"] == pytest.approx(total, rel=1e-5)
    # never more than the sum of the parts (triangle inequality) ...
    assert norms["total_loss"] <= norms["loss_a"] + norms["loss_b"] + 1e-6
    # ... and the parts add in squares only when their gradients are orthogonal: heads on
    # disjoint parameters; a shared trunk gets both gradients, which do not add so
    squares = norms["loss_a"] ** 2 + norms["loss_b"] ** 2
    if shared:
        assert abs(norms["total_loss"] ** 2 - squares) > 1e-3 * squares
    else:
        assert norms["total_loss"] ** 2 == pytest.approx(squares, rel=1e-5)


def test_branch_gradient_norms_weight_the_terms_and_leave_the_model_as_it_was():
    torch.manual_seed(0)
    model = TwoHeads(shared=True).eval()
    images, targets = _two_heads_batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = engine.branch_gradient_norms(model, images, targets)
    weighted = engine.branch_gradient_norms(model, images, targets, {"loss_a": 3.0})
    assert weighted["loss_a"] == pytest.approx(3 * plain["loss_a"], rel=1e-5)
    assert weighted["loss_b"] == pytest.approx(plain["loss_b"], rel=1e-6)
    assert weighted["total_loss"] != pytest.approx(plain["total_loss"], rel=1e-3)
    assert not model.training  # the mode is restored
    assert all(p.grad is None for p in model.parameters())  # no .grad written
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # batch-norm stats too
    with pytest.raises(ValueError, match="loss_weights names"):
        engine.branch_gradient_norms(model, images, targets, {"loss_c": 1.0})
    frozen = TwoHeads(shared=False).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        engine.branch_gradient_norms(frozen, images, targets)
