"""Training in several processes (torch.distributed, gloo on CPU): two processes against
one on the combined batch, and an exact resume with two processes."""

import os
import socket

import pytest
import torch
from torch import nn

from rcnn_steps.engine import (
    TrainConfig,
    classification_loss,
    distributed_sampler,
    load_checkpoint,
    read_metrics,
    train,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(fn, *args, world: int = 2) -> None:
    """Run ``fn(rank, world, port, *args)`` in ``world`` spawned processes."""
    port = _free_port()
    torch.multiprocessing.spawn(fn, args=(world, port, *args), nprocs=world, join=True)


def _join(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)


def _classifier() -> nn.Module:
    torch.manual_seed(0)  # the same initial weights in every process
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))


def _samples() -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(1)
    return torch.utils.data.TensorDataset(
        torch.randn(32, 3, 2, 2, generator=g), torch.randint(0, 3, (32,), generator=g)
    )


def _config(out_dir, **overrides) -> TrainConfig:
    values = dict(max_iter=6, lr=0.1, warmup_steps=2, log_every=2, progress=False, device="cpu")
    return TrainConfig(out_dir=str(out_dir), **{**values, **overrides})


def _train_classifier(rank, world, port, out_dir, batch):
    _join(rank, world, port)
    data = _samples()
    sampler = distributed_sampler(data, seed=0, shuffle=False)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, sampler=sampler)
    train(_classifier(), loader, _config(out_dir), loss_fn=classification_loss)
    torch.distributed.barrier()  # no rank tears gloo down while another still uses it
    torch.distributed.destroy_process_group()


def test_two_processes_equal_one_on_the_combined_batch(tmp_path):
    """Each of two processes takes every other sample of each batch of 8 (4 each); DDP
    averages their gradients, which for a mean loss over equal shards is the gradient of
    the batch of 8 that one process takes."""
    torch.set_num_threads(1)
    one = tmp_path / "one"
    loader = torch.utils.data.DataLoader(_samples(), batch_size=8, shuffle=False)
    train(_classifier(), loader, _config(one), loss_fn=classification_loss)
    two = tmp_path / "two"
    _launch(_train_classifier, two, 4)
    a, b = load_checkpoint(one / "last.pt"), load_checkpoint(two / "last.pt")
    for name, value in a["model"].items():
        # the same sums in another order: equal to float rounding
        torch.testing.assert_close(b["model"][name], value, rtol=1e-5, atol=1e-6)
    losses_one = [r["total_loss"] for r in read_metrics(one / "metrics.jsonl")]
    losses_two = [r["total_loss"] for r in read_metrics(two / "metrics.jsonl")]
    assert losses_two == pytest.approx(losses_one, rel=1e-5)
    assert len(b["rng_by_rank"]) == 2  # every process's random state, for resuming
    assert sorted(p.name for p in two.iterdir()) == ["last.pt", "metrics.jsonl"]
    # one process cannot resume a two-process run exactly, and says so
    from rcnn_steps.engine import CheckpointError

    with pytest.raises(CheckpointError, match="run of 2 process"):
        train(_classifier(), loader, _config(two), loss_fn=classification_loss, resume=True)


def _train_detector(rank, world, port, root, out_dir, stop_at, resume):
    from rcnn_steps.data import CocoDataset, collate_fn
    from rcnn_steps.detectors.faster_rcnn import DetectorConfig, FasterRCNN

    _join(rank, world, port)
    data = CocoDataset(root / "train", root / "annotations" / "instances_train.json")
    sampler = distributed_sampler(data, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_size=2, sampler=sampler, collate_fn=collate_fn)
    torch.manual_seed(0)
    model = FasterRCNN(DetectorConfig.ci_mask(keypoint_counts=(0, 0, 0, 0, 0, 11)))
    config = _config(out_dir, max_iter=4, lr=0.01, checkpoint_every=2)
    train(model, loader, config, stop_at=stop_at, resume=resume)
    torch.distributed.barrier()  # no rank tears gloo down while another still uses it
    torch.distributed.destroy_process_group()


def test_two_processes_resume_exactly(tiny_synth, tmp_path):
    """Mask R-CNN in two processes: 4 steps straight, or 2, stop, resume, 2 more: the same
    weights, bit for bit, and the same logged losses."""
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    _launch(_train_detector, tiny_synth, straight, None, False)
    _launch(_train_detector, tiny_synth, pieces, 2, False)
    assert load_checkpoint(pieces / "last.pt")["step"] == 2
    _launch(_train_detector, tiny_synth, pieces, None, True)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(pieces / "last.pt")
    assert a["step"] == b["step"] == 4
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    timings = ("time", "sec_per_iter")

    def logged(path):
        return [{k: v for k, v in r.items() if k not in timings} for r in read_metrics(path)]

    assert logged(straight / "metrics.jsonl") == logged(pieces / "metrics.jsonl")
    assert [r["step"] for r in logged(pieces / "metrics.jsonl")] == [2, 4]


def test_one_process_has_no_sampler_and_no_process_group():
    assert distributed_sampler(_samples(), seed=0) is None
    assert not torch.distributed.is_initialized()


def test_train_command_under_torchrun(tiny_synth, tmp_path):
    """``torchrun --nproc_per_node 2 -m rcnn_steps train``: two gloo processes, one run."""
    import subprocess
    import sys

    from rcnn_steps.engine import read_metrics

    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(_free_port()), "-m", "rcnn_steps", "train",
        "--data", str(tiny_synth), "--preset", "ci_mask", "--out", str(out),
        "--max-iter", "2", "--batch-size", "1", "--device", "cpu", "--threads", "1",
        "--num-eval-images", "4", "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    description = __import__("json").loads((out / "run.json").read_text())
    assert description["feeding"]["processes"] == 2
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [2] and "eval/segm/AP" in records[-1]
    assert len(load_checkpoint(out / "last.pt")["rng_by_rank"]) == 2
