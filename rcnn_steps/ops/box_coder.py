"""Box coding (chapters 01-04): boxes as regression targets relative to reference boxes.

:class:`BoxCoder` is the box-regression parameterisation of R-CNN (appendix C), reused by
Fast R-CNN's heads and by Faster R-CNN's RPN (eq. 2): a ground-truth box as the centre
offsets and log-size ratios that move a reference box (a proposal, or an anchor) onto it,
and back. Boxes are ``(N, 4)`` float tensors in ``(x1, y1, x2, y2)`` order, as everywhere
in :mod:`~rcnn_steps.ops.boxes` (which re-exports it). Checked against
``torchvision.models.detection._utils.BoxCoder`` by ``tests/test_boxes.py``, bit for bit
on CPU.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rcnn_steps.ops.box_checks import _check_boxes, _check_tensor


class BoxCoder:
    """Encode boxes as regression targets relative to reference boxes, and decode back.

    The parameterisation of R-CNN (appendix C, eqs. 6-9) and Faster R-CNN (eq. 2): with a
    reference box P (a proposal, or an anchor in the RPN) of centre (px, py) and size
    (pw, ph), and a ground-truth box G of centre (gx, gy) and size (gw, gh), the target is

        tx = wx * (gx - px) / pw        ty = wy * (gy - py) / ph
        tw = ww * log(gw / pw)          th = wh * log(gh / ph)

    Centre offsets are measured in units of the reference size, so the target does not
    depend on the image scale; sizes are in log space, so growing and shrinking by the
    same factor are symmetric. Decoding inverts it (R-CNN appendix C, eqs. 1-4):
    gx = px + pw * tx / wx, ..., gw = pw * exp(tw / ww), ...

    Taught in chapters 01-04: bounding-box regression first appears with R-CNN (chapter
    02), is a head of Fast R-CNN (chapter 03) and the RPN's output (chapter 04).

    Args:
        weights: (wx, wy, ww, wh) that scale the targets. Use (1, 1, 1, 1) for the RPN
            and (10, 10, 5, 5) for the RoI box heads: the latter is Fast R-CNN's target
            normalisation (divide by standard deviations 0.1, 0.1, 0.2, 0.2), so the
            smooth-L1 loss sees targets of about unit scale.
        bbox_xform_clip: upper clamp on the decoded log-size terms tw / ww and th / wh
            before the exp, so an untrained network cannot overflow it. The default
            log(1000 / 16) (from Detectron) lets a side grow at most 62.5x the reference.

    Matches ``torchvision.models.detection._utils.BoxCoder``: our :meth:`encode` and
    :meth:`decode` are its ``encode_single`` and ``decode_single`` (one tensor of boxes,
    not a list per image; ``torch.cat`` the images first), with the same arithmetic in
    the same order, so the numbers agree bit for bit.
    """

    def __init__(
        self,
        weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
        bbox_xform_clip: float = math.log(1000.0 / 16),
    ) -> None:
        if len(weights) != 4:
            raise ValueError(
                f"BoxCoder: weights must be four numbers (wx, wy, ww, wh), got {weights!r}; "
                "use (1, 1, 1, 1) for the RPN and (10, 10, 5, 5) for RoI heads."
            )
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = float(bbox_xform_clip)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, bbox_xform_clip={self.bbox_xform_clip:.4f})"

    def encode(self, gt_boxes: Tensor, ref_boxes: Tensor) -> Tensor:
        """Regression targets that move each reference box onto its ground-truth box.

        Args:
            gt_boxes: ``(N, 4)`` ground-truth boxes G, xyxy (row i is matched to row i of
                ``ref_boxes``).
            ref_boxes: ``(N, 4)`` reference boxes P (proposals or anchors), xyxy, with
                positive width and height.

        Returns:
            ``(N, 4)`` targets (tx, ty, tw, th), in the dtype of ``gt_boxes`` /
            ``ref_boxes`` (promoted if they differ).
        """
        _check_boxes("BoxCoder.encode", "gt_boxes", gt_boxes)
        _check_boxes("BoxCoder.encode", "ref_boxes", ref_boxes)
        if gt_boxes.shape[0] != ref_boxes.shape[0]:
            raise ValueError(
                f"BoxCoder.encode: gt_boxes has {gt_boxes.shape[0]} rows but ref_boxes has "
                f"{ref_boxes.shape[0]}; pass the matched ground truth of every reference box "
                "(e.g. gt_boxes[matched_idxs])."
            )
        # Weights as a tensor of the ground truth's dtype, as torchvision does, so the
        # products round the same way.
        wx, wy, ww, wh = torch.as_tensor(self.weights, dtype=gt_boxes.dtype, device=gt_boxes.device)
        ref_w = ref_boxes[:, 2] - ref_boxes[:, 0]
        ref_h = ref_boxes[:, 3] - ref_boxes[:, 1]
        ref_cx = ref_boxes[:, 0] + 0.5 * ref_w
        ref_cy = ref_boxes[:, 1] + 0.5 * ref_h
        gt_w = gt_boxes[:, 2] - gt_boxes[:, 0]
        gt_h = gt_boxes[:, 3] - gt_boxes[:, 1]
        gt_cx = gt_boxes[:, 0] + 0.5 * gt_w
        gt_cy = gt_boxes[:, 1] + 0.5 * gt_h

        tx = wx * (gt_cx - ref_cx) / ref_w
        ty = wy * (gt_cy - ref_cy) / ref_h
        tw = ww * torch.log(gt_w / ref_w)
        th = wh * torch.log(gt_h / ref_h)
        return torch.stack((tx, ty, tw, th), dim=1)

    def decode(self, deltas: Tensor, ref_boxes: Tensor) -> Tensor:
        """Apply regression deltas to reference boxes.

        Args:
            deltas: ``(N, 4 * K)`` deltas (tx, ty, tw, th) per box, K >= 1 groups of four:
                K = 1 for the RPN or a class-agnostic head, K = number of classes for a
                class-specific box head (Fast R-CNN), whose group k refines box i for
                class k.
            ref_boxes: ``(N, 4)`` reference boxes, xyxy.

        Returns:
            ``(N, 4 * K)`` decoded boxes, xyxy, group k in columns 4k..4k+3, in the dtype
            of ``deltas``. ``tw / ww`` and ``th / wh`` are clamped at ``bbox_xform_clip``
            first. Not clipped to the image: use :func:`clip_boxes_to_image`.
        """
        _check_tensor("BoxCoder.decode", "deltas", deltas)
        _check_boxes("BoxCoder.decode", "ref_boxes", ref_boxes)
        if deltas.dim() != 2 or deltas.shape[1] == 0 or deltas.shape[1] % 4 != 0:
            raise ValueError(
                f"BoxCoder.decode: deltas must have shape (N, 4 * K) with K >= 1 groups of "
                f"(tx, ty, tw, th), got {tuple(deltas.shape)}; for a (N, K, 4) tensor pass "
                "deltas.reshape(N, -1)."
            )
        if deltas.shape[0] != ref_boxes.shape[0]:
            raise ValueError(
                f"BoxCoder.decode: deltas has {deltas.shape[0]} rows but ref_boxes has "
                f"{ref_boxes.shape[0]}; give one row of deltas per reference box."
            )
        ref_boxes = ref_boxes.to(deltas.dtype)
        ref_w = ref_boxes[:, 2] - ref_boxes[:, 0]
        ref_h = ref_boxes[:, 3] - ref_boxes[:, 1]
        ref_cx = ref_boxes[:, 0] + 0.5 * ref_w
        ref_cy = ref_boxes[:, 1] + 0.5 * ref_h

        wx, wy, ww, wh = self.weights
        # Every 4th column from an offset picks that coordinate of all K groups: (N, K).
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.bbox_xform_clip)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.bbox_xform_clip)

        cx = dx * ref_w[:, None] + ref_cx[:, None]
        cy = dy * ref_h[:, None] + ref_cy[:, None]
        w = torch.exp(dw) * ref_w[:, None]
        h = torch.exp(dh) * ref_h[:, None]
        # Half sizes as a 0-d tensor times the size: the same rounding as torchvision.
        half_w = torch.tensor(0.5, dtype=w.dtype, device=w.device) * w
        half_h = torch.tensor(0.5, dtype=h.dtype, device=h.device) * h
        boxes = torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=2)
        return boxes.flatten(1)  # (N, K, 4) -> (N, 4K)
