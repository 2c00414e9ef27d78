"""Matching: which ground-truth box (if any) each anchor or proposal is responsible for.

Before a detector can compute a loss it must decide, for every anchor (RPN) or proposal
(RoI head), whether it is an object and which one: compare every prediction with every
ground-truth box (an IoU matrix, :func:`rcnn_steps.ops.boxes.box_iou`) and threshold the
best overlap. Faster R-CNN (section 3.1.2, "Loss Function") labels an anchor

- positive if its IoU with some ground-truth box is >= 0.7, *or* if it is the anchor (or
  one of the anchors) with the highest IoU with a ground-truth box, so that every object
  gets at least one anchor even when no anchor overlaps it by 0.7 ("low-quality
  matches");
- negative if its IoU with every ground-truth box is < 0.3;
- neither (ignored by the loss) otherwise.

Fast R-CNN's RoI head (section 2.3) uses one threshold: foreground at IoU >= 0.5,
background below, no low-quality matches: ``Matcher(0.5, 0.5, False)``. (Fast R-CNN took
background only from [0.1, 0.5), a crude hard-example mining; Detectron and torchvision
use all of [0, 0.5), and so do we.)

The pieces: :class:`Matcher` turns the IoU matrix into a matched index per prediction,
and :func:`label_anchors` turns matched indices into training labels. Taught in chapter
04 ("Faster R-CNN and the RPN"); the RoI heads of chapters 04-07 reuse both.
"""

from __future__ import annotations

from numbers import Real

import torch
from torch import Tensor

__all__ = ["Matcher", "label_anchors"]


class Matcher:
    """Assign every prediction (anchor, proposal) to at most one ground-truth box.

    Args:
        high_threshold: a prediction whose best quality (IoU) is >= this is matched to
            that ground truth. 0.7 for the RPN (Faster R-CNN section 3.1.2), 0.5 for
            RoI heads (Fast R-CNN section 2.3).
        low_threshold: best quality < this: negative (background). Between the two:
            ignored. 0.3 for the RPN; equal to ``high_threshold`` for RoI heads, where
            nothing is ignored.
        allow_low_quality_matches: also match, for every ground-truth box, the
            prediction(s) with the highest quality with it, even below
            ``low_threshold`` (Faster R-CNN's second positive rule). True for the RPN,
            False for RoI heads.

    Calling it on a ``(G, N)`` quality matrix returns ``(N,)`` int64 matches: the index of
    the matched ground truth (>= 0), :attr:`BELOW_LOW_THRESHOLD` (-1, background) or
    :attr:`BETWEEN_THRESHOLDS` (-2, ignored).

    Equals ``torchvision.models.detection._utils.Matcher`` with two deliberate
    differences, both where torchvision gives no usable answer:

    - *No ground truth* (G = 0): every prediction is background (-1), so images without
      objects train (as pure negatives) from the start. torchvision raises a ValueError
      (and has its RPN and RoI heads special-case empty images before calling it). No
      predictions (N = 0) gives an empty result rather than an error.
    - *A ground-truth box that overlaps no prediction at all* (its best quality is 0)
      makes no low-quality match. torchvision's rule takes every prediction tied at that
      best quality, here every prediction with IoU 0, and matches it to its own best
      ground truth: a tiny or off-image box turns all the background anchors into
      positives of ground truth 0. (mmdetection guards the same rule with
      ``min_pos_iou``.) Whenever every ground-truth box overlaps some prediction, our
      matches equal torchvision's exactly.
    """

    #: Match value for a prediction whose best quality is below ``low_threshold``.
    BELOW_LOW_THRESHOLD = -1
    #: Match value for a prediction between the thresholds: neither object nor
    #: background, ignored by the loss.
    BETWEEN_THRESHOLDS = -2

    def __init__(
        self,
        high_threshold: float = 0.7,
        low_threshold: float = 0.3,
        allow_low_quality_matches: bool = True,
    ) -> None:
        for name, value in (("high_threshold", high_threshold), ("low_threshold", low_threshold)):
            if isinstance(value, bool) or not isinstance(value, Real):
                raise TypeError(f"Matcher: {name} must be a number such as 0.7, got {value!r}.")
        if low_threshold > high_threshold:
            raise ValueError(
                f"Matcher: low_threshold ({low_threshold}) must be <= high_threshold "
                f"({high_threshold}); the RPN uses (0.7, 0.3), RoI heads (0.5, 0.5)."
            )
        self.high_threshold = float(high_threshold)
        self.low_threshold = float(low_threshold)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def __repr__(self) -> str:
        return (
            f"Matcher(high_threshold={self.high_threshold}, low_threshold={self.low_threshold}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches})"
        )

    def __call__(self, match_quality_matrix: Tensor) -> Tensor:
        """Match predictions to ground truth.

        Args:
            match_quality_matrix: ``(G, N)`` quality of every (ground truth, prediction)
                pair, usually ``box_iou(gt_boxes, anchors)``: ground truth in rows.

        Returns:
            ``(N,)`` int64 on the matrix's device: the matched ground-truth index in
            [0, G), or -1 (below ``low_threshold``: background) or -2 (between the
            thresholds: ignored). A prediction is matched to the ground truth it overlaps
            most (the first one on ties, as ``torch.max`` picks it), also when it is
            made positive by the low-quality rule for another ground truth (Detectron's
            and torchvision's choice: its regression target is its best box).
        """
        if not isinstance(match_quality_matrix, Tensor) or match_quality_matrix.dim() != 2:
            shape = (
                tuple(match_quality_matrix.shape)
                if isinstance(match_quality_matrix, Tensor)
                else type(match_quality_matrix).__name__
            )
            raise ValueError(
                f"Matcher: match_quality_matrix must be (G, N), ground truth in rows, got "
                f"{shape}; build it with box_iou(gt_boxes, anchors)."
            )
        num_gt, num_pred = match_quality_matrix.shape
        if num_gt == 0 or num_pred == 0:
            # No objects: everything is background. No predictions: nothing to match.
            return torch.full(
                (num_pred,),
                self.BELOW_LOW_THRESHOLD,
                dtype=torch.int64,
                device=match_quality_matrix.device,
            )

        # Each prediction's best ground truth and its quality: (N,) each.
        matched_vals, matches = match_quality_matrix.max(dim=0)
        best_gt = matches.clone() if self.allow_low_quality_matches else None

        # Three bands: [high, inf) matched, [low, high) ignored, (-inf, low) background.
        below_low = matched_vals < self.low_threshold
        between = (matched_vals >= self.low_threshold) & (matched_vals < self.high_threshold)
        matches[below_low] = self.BELOW_LOW_THRESHOLD
        matches[between] = self.BETWEEN_THRESHOLDS

        if best_gt is not None:
            self._add_low_quality_matches(matches, best_gt, match_quality_matrix)
        return matches

    @staticmethod
    def _add_low_quality_matches(matches: Tensor, best_gt: Tensor, quality: Tensor) -> None:
        """Faster R-CNN's second positive rule, in place: for every ground-truth box, the
        prediction(s) with the highest quality with it (all of them on ties) become
        matched, to their own best ground truth ``best_gt``.

        A ground truth whose highest quality is 0 (or less) overlaps nothing and matches
        nothing (see the class docstring: torchvision would match every IoU-0 prediction).
        """
        highest_per_gt = quality.max(dim=1).values  # (G,)
        # (G, N): pairs that reach their ground truth's highest quality, ties included.
        is_highest = (quality == highest_per_gt[:, None]) & (highest_per_gt[:, None] > 0)
        preds = is_highest.any(dim=0)  # (N,)
        matches[preds] = best_gt[preds]


def label_anchors(matches: Tensor, gt_labels: Tensor | None = None) -> Tensor:
    """Training labels from matches: the class of the matched ground truth, 0 for
    background, -1 for ignored.

    This is the labelling both heads train on: the RPN with ``gt_labels=None``
    (objectness, Faster R-CNN section 3.1.2: 1 for positive anchors, 0 for negative) and
    the RoI heads with the ground-truth classes (Fast R-CNN section 2.3: u >= 1 for
    foreground, u = 0 for background). The labels feed
    :class:`rcnn_steps.modeling.sampler.BalancedPositiveNegativeSampler` directly.

    Args:
        matches: ``(N,)`` int64 from :class:`Matcher`.
        gt_labels: ``(G,)`` integer class ids >= 1 of the ground-truth boxes (0 is
            background), or None for class-agnostic objectness (every match is 1).

    Returns:
        ``(N,)`` int64: ``gt_labels[matches]`` (or 1) for matched predictions, 0 for
        :attr:`Matcher.BELOW_LOW_THRESHOLD`, -1 for :attr:`Matcher.BETWEEN_THRESHOLDS`.
        For the RPN's binary cross-entropy take ``labels.float()`` of the sampled
        anchors. An image without objects (G = 0, all matches -1) is all background.
    """
    fn = "label_anchors"
    if not isinstance(matches, Tensor) or matches.dim() != 1:
        raise ValueError(f"{fn}: matches must be a 1-D tensor from Matcher.")
    labels = torch.zeros_like(matches, dtype=torch.int64)
    matched = matches >= 0
    if gt_labels is None:
        labels[matched] = 1
    else:
        if not isinstance(gt_labels, Tensor) or gt_labels.dim() != 1:
            raise ValueError(f"{fn}: gt_labels must be a (G,) tensor of class ids.")
        if gt_labels.is_floating_point() or gt_labels.is_complex():
            raise TypeError(
                f"{fn}: gt_labels must hold integer class ids, got {gt_labels.dtype}; use "
                "gt_labels.long()."
            )
        if gt_labels.device != matches.device:
            raise ValueError(
                f"{fn}: matches are on {matches.device} but gt_labels on {gt_labels.device}."
            )
        # One small reduction over the (few) ground-truth labels: a 0 would silently
        # turn an object into background.
        if gt_labels.numel() and bool((gt_labels < 1).any()):
            raise ValueError(
                f"{fn}: gt_labels must be >= 1 (0 means background), got "
                f"{gt_labels.tolist()}; shift 0-based class ids by one."
            )
        labels[matched] = gt_labels[matches[matched]].to(torch.int64)
    labels[matches == Matcher.BETWEEN_THRESHOLDS] = -1
    return labels
