"""Losses: how a batch becomes a dict of named scalar losses, and their weighted sum.

Models follow torchvision's detection convention: in train mode ``model(images, targets)``
returns a dict of named scalar losses (:func:`detection_loss`), and the loss that is
minimised is their sum, weighted by ``TrainConfig.loss_weights`` (:func:`_total_loss`).
Anything else trains through a ``loss_fn(model, batch) -> dict`` hook, e.g.
:func:`classification_loss` for ``(images, labels)`` batches."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LossDict = dict[str, torch.Tensor]


def detection_loss(model: nn.Module, batch: Any) -> LossDict:
    """The default ``loss_fn``: torchvision's convention, ``model(images, targets)``.

    ``batch`` is ``(images, targets)``: ``images`` a list of ``[3, H, W]`` tensors (or a
    ``[B, 3, H, W]`` tensor), ``targets`` a list of dicts (``boxes [N, 4]``, ``labels [N]``,
    ``masks [N, H, W]``, ...). The model returns ``{"loss_classifier": ..., ...}``.
    """
    return model(*batch)


def classification_loss(model: nn.Module, batch: Any) -> LossDict:
    """A ``loss_fn`` for classifiers (chapter 01's crop classifier, chapter 02's R-CNN
    classifier): ``batch = (images [B, C, H, W], labels [B])``, ``model(images)`` returns
    logits ``[B, num_classes]``; the loss is the cross-entropy."""
    images, labels = batch
    return {"loss_cls": F.cross_entropy(model(images), labels)}


def _as_loss_dict(losses: Any) -> LossDict:
    if isinstance(losses, torch.Tensor):
        return {"loss": losses}
    if not isinstance(losses, Mapping) or not losses:
        raise TypeError(
            "the loss function must return a non-empty dict of scalar loss tensors "
            f"(torchvision's detection convention), got {type(losses).__name__}"
        )
    return dict(losses)


def _total_loss(losses: LossDict, weights: dict[str, float] | None) -> torch.Tensor:
    """``sum_k w_k * L_k`` in float32 (terms may be float16 under autocast)."""
    weights = weights or {}
    unknown = set(weights) - set(losses)
    if unknown:
        raise ValueError(
            f"config.loss_weights names {sorted(unknown)}, which the loss function does not "
            f"return; it returns {sorted(losses)}"
        )
    return sum(weights.get(name, 1.0) * value.float() for name, value in losses.items())
