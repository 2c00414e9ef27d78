"""Losses: how a batch becomes a dict of named scalar losses, and their weighted sum.

Models follow torchvision's detection convention: in train mode ``model(images, targets)``
returns a dict of named scalar losses (:func:`detection_loss`), and the loss that is
minimised is their sum, weighted by ``TrainConfig.loss_weights`` (:func:`_total_loss`).
Anything else trains through a ``loss_fn(model, batch) -> dict`` hook, e.g.
:func:`classification_loss` for ``(images, labels)`` batches. :func:`branch_gradient_norms`
measures how large each term's share of the minimised gradient is (which term a clip of
the whole gradient's norm answers to)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def branch_gradient_norms(
    model: nn.Module,
    images: Sequence[torch.Tensor] | torch.Tensor,
    targets: Sequence[Mapping[str, torch.Tensor]],
    loss_weights: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """The L2 norm, over all the model's trainable parameters, of the gradient of each
    loss term on its own, and of their sum: which term the gradient is made of.

    One forward pass in train mode (``model(images, targets)``, the detection
    convention), then one backward pass per term ``w_k L_k`` (weighted as the engine
    weights it, ``loss_weights`` being ``TrainConfig.loss_weights``) and one for the
    total ``L = sum_k w_k L_k`` that training minimises. A clip of the whole gradient's
    norm at ``c`` (``TrainConfig.grad_clip_norm``) multiplies *every* parameter's
    gradient by ``min(1, c / norms["total_loss"])``: when one term's gradient is most
    of the total, that term sets how much every branch's step shrinks.

    The total is not the sum of the terms' norms: ``||sum_k g_k|| <= sum_k ||g_k||``
    (the triangle inequality), and ``||sum_k g_k||^2 = sum_k ||g_k||^2`` only when the
    terms' gradients are orthogonal, e.g. when they touch disjoint parameters (two heads
    without a shared trunk). A term that touches no parameter (or is a constant) gets 0.

    The model is left as it was: its mode, its buffers (batch-norm statistics, which a
    forward pass in train mode updates) and its ``.grad`` fields (the gradients are
    taken with ``torch.autograd.grad``). The forward pass draws random numbers as a
    training step does (the RoI and anchor samplers).

    Returns:
        ``{term: norm, ..., "total_loss": norm}``, Python floats, in the model's order
        of terms.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("branch_gradient_norms: the model has no trainable parameters.")
    was_training = model.training
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    model.train()
    try:
        losses = _as_loss_dict(model(images, targets))
        weights = loss_weights or {}
        terms = {name: weights.get(name, 1.0) * value.float() for name, value in losses.items()}
        terms["total_loss"] = _total_loss(losses, dict(weights))
        norms = {}
        for name, term in terms.items():
            if not term.requires_grad:  # a constant (no graph at all): no gradient
                norms[name] = 0.0
                continue
            grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
            squares = [g.float().pow(2).sum() for g in grads if g is not None]
            norms[name] = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
    return norms
