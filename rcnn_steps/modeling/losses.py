"""Losses of the two-stage detectors: smooth L1, the RPN loss and the Fast R-CNN loss.

- :func:`smooth_l1_loss`: Fast R-CNN eq. (3), the box-regression loss of every later
  model: quadratic near 0 (smooth gradients for small errors), linear beyond ``beta``
  (robust to outliers, so large early errors do not blow up the gradients as L2 would).
- :func:`fastrcnn_loss`: Fast R-CNN's multi-task loss, eq. (1): ``L = L_cls(p, u) +
  lambda [u >= 1] L_loc(t^u, v)``, with ``lambda = 1``.
- :func:`rpn_loss`: Faster R-CNN eq. (1), the RPN's objectness + box loss, with the
  paper's normalisation or torchvision's (see there; the book uses torchvision's).

Taught in chapter 03 ("Fast R-CNN and RoIPool": smooth L1 and the multi-task loss) and
chapter 04 ("Faster R-CNN and the RPN": the RPN loss and its lambda, Table 9).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["NORMALIZATIONS", "fastrcnn_loss", "rpn_loss", "smooth_l1_loss"]

#: How :func:`rpn_loss` normalises its two terms.
NORMALIZATIONS = ("torchvision", "paper")


def smooth_l1_loss(
    input: Tensor, target: Tensor, beta: float = 1.0, reduction: str = "sum"
) -> Tensor:
    """Smooth L1 (Huber-like) loss, Fast R-CNN eq. (3), element-wise then reduced:

        smooth_L1(x) = 0.5 x^2 / beta   if |x| < beta
                       |x| - 0.5 beta   otherwise,          x = input - target

    ``beta = 1`` is the paper's (and py-faster-rcnn's ``sigma = 1`` for the RoI head).
    Detectron and torchvision use ``beta = 1/9`` (py-faster-rcnn's RPN ``sigma = 3``,
    ``beta = 1 / sigma^2``) for both the RPN and the RoI head: the quadratic zone is
    narrower, so small errors still get a sizeable gradient late in training. ``beta = 0``
    is plain L1.

    Args:
        input, target: tensors of the same shape (e.g. ``(P, 4)`` deltas and targets).
        beta: where the quadratic turns linear (>= 0).
        reduction: "sum" (what the detection losses use, before their own normalisation),
            "mean" or "none".

    Returns:
        A scalar for "sum"/"mean", else a tensor of ``input``'s shape. Equals
        ``torch.nn.functional.smooth_l1_loss(input, target, beta=beta,
        reduction=reduction)``; written out because the formula is the lesson.
    """
    if input.shape != target.shape:
        raise ValueError(
            f"smooth_l1_loss: input {tuple(input.shape)} and target {tuple(target.shape)} "
            "must have the same shape."
        )
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be >= 0, got {beta}.")
    diff = (input - target).abs()
    if beta == 0:
        loss = diff
    else:
        loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    if reduction == "none":
        return loss
    raise ValueError(
        f"smooth_l1_loss: reduction must be 'sum', 'mean' or 'none', got {reduction!r}."
    )


def rpn_loss(
    objectness: Tensor,
    pred_deltas: Tensor,
    labels: Tensor,
    regression_targets: Tensor,
    lambda_reg: float = 1.0,
    normalization: str = "torchvision",
    *,
    num_anchor_locations: int | None = None,
    beta: float | None = None,
) -> tuple[Tensor, Tensor]:
    """The RPN's loss, Faster R-CNN eq. (1):

        L = 1/N_cls sum_i L_cls(p_i, p*_i) + lambda 1/N_reg sum_i p*_i L_reg(t_i, t*_i)

    over the sampled anchors i
    (:class:`~rcnn_steps.modeling.sampler.BalancedPositiveNegativeSampler`),
    ``L_cls`` the binary cross-entropy of the objectness, ``L_reg`` smooth L1 on the four
    deltas of the positive anchors (``p*_i = 1``).

    The two normalisations (``normalization``):

    - ``"paper"``: ``N_cls`` = the number of sampled anchors (256 per image), ``N_reg`` =
      the number of anchor *locations* (feature cells, ~2400 for a 1000 x 600 image at
      stride 16), and ``lambda = 10`` so that the two terms weigh about equally
      (``10 / 2400 ~ 1 / 256``); smooth L1 with ``beta = 1``. Table 9 varies lambda.
    - ``"torchvision"`` (Detectron, torchvision): both terms divided by the number of
      sampled anchors, ``lambda = 1`` and ``beta = 1/9``.

    The book trains with ``"torchvision"``: on our 128 px images a stride-16 map has only
    64 locations, so the paper's ``N_reg`` would make the box term ~4x heavier per anchor
    than the objectness term at lambda = 1 and ~40x at lambda = 10, while the paper's
    intent (equal weight) is what torchvision's normalisation gives directly, at any image
    size. The relation: paper ~ torchvision with ``lambda_tv = lambda * N_cls / N_reg``.
    Chapter 04's lambda sweep (Table 9) uses ``"paper"``.

    Args:
        objectness: ``(A,)`` objectness logits of all anchors of the batch (flattened).
        pred_deltas: ``(A, 4)`` predicted deltas.
        labels: ``(A,)`` the sampled minibatch: 1 sampled positive, 0 sampled negative,
            -1 not sampled (or ignored).
        regression_targets: ``(A, 4)`` targets (only the positives' rows are used).
        lambda_reg: the weight lambda of the box term.
        normalization: "torchvision" or "paper".
        num_anchor_locations: ``N_reg`` for "paper": the number of feature cells over the
            whole batch (``num_images * sum_l H_l * W_l``).
        beta: smooth-L1 beta; default 1/9 for "torchvision", 1 for "paper".

    Returns:
        ``(loss_objectness, loss_rpn_box_reg)``, two scalars; ``lambda_reg`` is already
        in the box term. With "torchvision" and lambda 1 they equal torchvision's
        ``RegionProposalNetwork.compute_loss``.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"rpn_loss: normalization must be one of {NORMALIZATIONS}, got {normalization!r}."
        )
    if objectness.dim() != 1 or labels.shape != objectness.shape:
        raise ValueError(
            f"rpn_loss: objectness and labels must be (A,) each, got {tuple(objectness.shape)} "
            f"and {tuple(labels.shape)}."
        )
    if (
        pred_deltas.shape != (objectness.shape[0], 4)
        or regression_targets.shape != pred_deltas.shape
    ):
        raise ValueError(
            f"rpn_loss: pred_deltas and regression_targets must be (A, 4) with A = "
            f"{objectness.shape[0]}, got {tuple(pred_deltas.shape)} and "
            f"{tuple(regression_targets.shape)}."
        )
    sampled = torch.where(labels >= 0)[0]
    positive = torch.where(labels > 0)[0]
    if beta is None:
        beta = 1.0 if normalization == "paper" else 1.0 / 9
    box_sum = smooth_l1_loss(pred_deltas[positive], regression_targets[positive], beta, "sum")
    # BCE averaged over the sampled anchors: 1/N_cls sum L_cls (a batch with no sampled
    # anchor gives 0, not nan).
    num_sampled = max(sampled.numel(), 1)
    cls_loss = (
        F.binary_cross_entropy_with_logits(
            objectness[sampled], labels[sampled].to(objectness.dtype), reduction="sum"
        )
        / num_sampled
    )
    if normalization == "torchvision":
        n_reg = num_sampled
    else:
        if num_anchor_locations is None or num_anchor_locations < 1:
            raise ValueError(
                "rpn_loss: normalization='paper' needs num_anchor_locations, N_reg (the "
                "number of feature cells over the batch)."
            )
        n_reg = num_anchor_locations
    return cls_loss, lambda_reg * box_sum / n_reg


def fastrcnn_loss(
    class_logits: Tensor,
    box_regression: Tensor,
    labels: Tensor | Sequence[Tensor],
    regression_targets: Tensor | Sequence[Tensor],
    beta: float = 1.0 / 9,
) -> tuple[Tensor, Tensor]:
    """Fast R-CNN's multi-task loss, eq. (1): ``L = L_cls(p, u) + [u >= 1] L_loc(t^u, v)``.

    ``L_cls = -log p_u`` (softmax cross-entropy over K + 1 classes, averaged over the
    sampled RoIs); ``L_loc`` is smooth L1 (:func:`smooth_l1_loss`) between the
    *class-specific* deltas ``t^u`` of the true class u and the targets v, for foreground
    RoIs only, summed and divided by the number of sampled RoIs (background included), as
    torchvision and Detectron do, so that lambda = 1 balances the two terms.

    Args:
        class_logits: ``(R, K + 1)`` scores, column 0 background.
        box_regression: ``(R, 4 (K + 1))`` class-specific deltas.
        labels: ``(R,)`` int64 class of each sampled RoI (0 background), or a list of
            per-image tensors (concatenated).
        regression_targets: ``(R, 4)`` targets, or a list per image.
        beta: smooth-L1 beta (torchvision: 1/9; the paper: 1).

    Returns:
        ``(loss_classifier, loss_box_reg)``: equal to
        ``torchvision.models.detection.roi_heads.fastrcnn_loss``.
    """
    if not isinstance(labels, Tensor):
        labels = torch.cat(list(labels), dim=0)
    if not isinstance(regression_targets, Tensor):
        regression_targets = torch.cat(list(regression_targets), dim=0)
    num_rois, num_classes = class_logits.shape
    if box_regression.shape != (num_rois, 4 * num_classes):
        raise ValueError(
            f"fastrcnn_loss: box_regression must be (R, 4 (K + 1)) = ({num_rois}, "
            f"{4 * num_classes}), got {tuple(box_regression.shape)}."
        )
    if labels.shape != (num_rois,) or regression_targets.shape != (num_rois, 4):
        raise ValueError(
            f"fastrcnn_loss: labels must be ({num_rois},) and regression_targets "
            f"({num_rois}, 4), got {tuple(labels.shape)} and {tuple(regression_targets.shape)}."
        )
    classification_loss = F.cross_entropy(class_logits, labels)
    foreground = torch.where(labels > 0)[0]
    # Only the deltas of the true class u count: t^u in eq. (1).
    deltas = box_regression.reshape(num_rois, num_classes, 4)[foreground, labels[foreground]]
    box_loss = smooth_l1_loss(deltas, regression_targets[foreground], beta, "sum")
    return classification_loss, box_loss / max(labels.numel(), 1)
