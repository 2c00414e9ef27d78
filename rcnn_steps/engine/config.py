"""The training configuration: every knob of :func:`~rcnn_steps.engine.train` in one
dataclass, and the device it names."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from rcnn_steps.utils import default_device

#: TrainConfig.memory_format's choices, and the torch format each names
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


@dataclass
class TrainConfig:
    """Every knob of the training loop, in one plain dataclass (``config.display()``
    prints them all).

    Iterations are counted as in Detectron's ``SOLVER.MAX_ITER``: one iteration is one
    optimizer update on one batch; ``lr_steps`` and ``warmup_steps`` use the same count.
    The defaults are Detectron's Mask R-CNN solver (lr 0.02 for a batch of 16, momentum
    0.9, weight decay 1e-4, decay by ``gamma = 0.1``) at a small scale; chapters set
    ``max_iter`` and ``lr_steps`` from their preset.
    """

    max_iter: int = 1000  #: number of optimizer updates ("steps")
    lr: float = 0.02  #: base learning rate (Mask R-CNN: 0.02 at batch 16)
    momentum: float = 0.9
    weight_decay: float = 1e-4  #: on weights of 2 or more dimensions (conv, linear)
    weight_decay_norm_bias: float = 0.0  #: on biases and norm-layer scales/shifts
    warmup_steps: int = 100  #: linear warm-up length (0 = none)
    warmup_factor: float = 0.001  #: the learning rate starts at warmup_factor * lr
    schedule: str = "step"  #: "step" (multiply by gamma at each of lr_steps) or "cosine"
    lr_steps: tuple[int, ...] = ()  #: milestones of the step schedule (iterations)
    gamma: float = 0.1  #: factor applied at each milestone
    grad_clip_norm: float | None = None  #: max global L2 norm of the gradients; None = off
    loss_weights: dict[str, float] | None = None  #: weight per loss term (absent = 1.0)
    log_every: int = 20  #: write a metrics line every this many steps (and at the end)
    eval_every: int = 0  #: call evaluate_fn every this many steps; 0 = only at the end
    checkpoint_every: int = 0  #: write out_dir/last.pt every this many steps (and at the end)
    keep_checkpoints: bool = False  #: also keep out_dir/model_0001000.pt at each checkpoint
    out_dir: str | None = None  #: checkpoints and metrics.jsonl; None = keep nothing on disk
    #: start afresh in an out_dir that already holds a run, deleting its metrics.jsonl and
    #: checkpoints; False (default) refuses to, so a finished run is never overwritten
    overwrite: bool = False
    seed: int = 0  #: seeds the RNGs at the start and the data order of every epoch
    device: str = "auto"  #: "auto" (CUDA if present), "cpu", "cuda", "cuda:1", ...
    amp: bool = True  #: autocast + GradScaler on CUDA; ignored on CPU
    #: the layout of the model's 4-D weights (and so of its feature maps) while it trains:
    #: "contiguous" (NCHW, torch's default) or "channels_last" (NHWC), which measured
    #: 0.85-0.93x the time of a CPU training step (benchmarks/bench_training_step.py);
    #: the same arithmetic in another order, so losses agree to float rounding
    memory_format: str = "contiguous"
    progress: bool = True  #: show a progress bar (terminal and JupyterLab)

    def __post_init__(self) -> None:
        if self.out_dir is not None:
            self.out_dir = str(self.out_dir)  # a Path would not load with weights_only=True
        self.lr_steps = tuple(int(s) for s in self.lr_steps)
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be at least 1, got {self.max_iter}")
        if self.schedule not in ("step", "cosine"):
            raise ValueError(f"schedule must be 'step' or 'cosine', got {self.schedule!r}")
        if list(self.lr_steps) != sorted(self.lr_steps) or any(s <= 0 for s in self.lr_steps):
            raise ValueError(f"lr_steps must be increasing positive iterations: {self.lr_steps}")
        if not 0.0 < self.warmup_factor <= 1.0:
            raise ValueError(f"warmup_factor must be in (0, 1], got {self.warmup_factor}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            raise ValueError(f"grad_clip_norm must be positive or None: {self.grad_clip_norm}")
        for name in ("log_every", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.log_every == 0:
            raise ValueError("log_every must be at least 1")
        if self.memory_format not in MEMORY_FORMATS:
            raise ValueError(
                f"memory_format must be one of {', '.join(map(repr, MEMORY_FORMATS))}, "
                f"got {self.memory_format!r}"
            )
        if self.device != "auto":
            torch.device(self.device)  # raises on a misspelt device

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (what the checkpoint stores)."""
        return dataclasses.asdict(self)

    def display(self) -> None:
        """Print every field in an aligned two-column table."""
        items = self.to_dict()
        width = max(len(k) for k in items)
        print(type(self).__name__)
        for key, value in items.items():
            print(f"  {key:<{width}}  {value!r}")


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; anything else -> ``torch.device(device)``."""
    return default_device() if device == "auto" else torch.device(device)
