"""The optimizer and the learning-rate schedule of Detectron's recipe (Mask R-CNN, He et
al. 2017, section 3.1; Goyal et al. 2017 for the warm-up)."""

from __future__ import annotations

import math

import torch
from torch import nn

from rcnn_steps.engine.config import TrainConfig


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum, in two parameter groups: weights of 2 or more dimensions (conv
    kernels, linear matrices) get ``config.weight_decay``; 1-d parameters (biases, the
    scales and shifts of norm layers) get ``config.weight_decay_norm_bias`` (default 0:
    decaying a norm layer's scale only fights the normalisation). Frozen parameters
    (``requires_grad=False``) are left out."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": config.weight_decay_norm_bias},
    ]
    groups = [g for g in groups if g["params"]]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)


def lr_factor(iteration: int, config: TrainConfig) -> float:
    """The multiplier of ``config.lr`` for the update numbered ``iteration`` (0-based),
    Detectron's ``WarmupMultiStepLR`` / ``WarmupCosineLR``:

    - warm-up: ``warmup_factor * (1 - a) + a`` with ``a = iteration / warmup_steps`` while
      ``iteration < warmup_steps``, then 1;
    - times ``gamma ** (number of milestones <= iteration)`` for ``schedule="step"``, or
      ``(1 + cos(pi * iteration / max_iter)) / 2`` for ``schedule="cosine"``.
    """
    warmup = 1.0
    if iteration < config.warmup_steps:
        alpha = iteration / config.warmup_steps
        warmup = config.warmup_factor * (1.0 - alpha) + alpha
    if config.schedule == "step":
        decay = config.gamma ** sum(1 for m in config.lr_steps if m <= iteration)
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * min(iteration, config.max_iter) / config.max_iter))
    return warmup * decay


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_factor`; stepped once per update, so its state
    (``last_epoch`` = updates done) goes into the checkpoint."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, config))
