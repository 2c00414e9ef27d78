"""Boxes: areas, IoU, non-maximum suppression, clipping and formats.

Every detector in the book speaks in boxes, so this module comes first. All boxes are
float tensors of shape ``(N, 4)`` in ``(x1, y1, x2, y2)`` order ("xyxy"): the top-left and
bottom-right corners, in pixels, with ``x1 <= x2`` and ``y1 <= y2``. COCO annotations store
``(x, y, w, h)`` ("xywh") and the regression targets think in centres and sizes
("cxcywh"); the converters below move between the three.

What is taught where:

- chapter 00, "Objects, boxes and scores": :func:`box_area`, :func:`box_iou`, :func:`nms`,
  :func:`batched_nms`, :func:`clip_boxes_to_image`, :func:`remove_small_boxes` and the
  format converters.
- chapters 01-04: :class:`BoxCoder`, the box-regression parameterisation of R-CNN
  (appendix C), reused by Fast R-CNN's heads and by Faster R-CNN's RPN (eq. 2); it is
  :mod:`~rcnn_steps.ops.box_coder`'s, re-exported here.

Everything is written from scratch in vectorised PyTorch and is checked against
``torchvision.ops`` and ``torchvision.models.detection._utils.BoxCoder`` by
``tests/test_boxes.py``: same signatures (where torchvision has the function) and the same
numbers, bit for bit on CPU, with one documented difference: :func:`box_iou` of two
zero-area boxes is 0, not torchvision's ``0 / 0 = nan``. Nothing here moves a tensor to
another device: outputs live on the inputs' device, in the inputs' dtype (integer and half
inputs are widened for the arithmetic, as torchvision does). The input checks the box
functions share are :mod:`~rcnn_steps.ops.box_checks`'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import torch
from torch import Tensor

from rcnn_steps.ops.box_checks import (
    BOX_FORMATS,
    _check_boxes,
    _check_fmt,
    _check_per_box,
    _check_tensor,  # noqa: F401 (re-exported: the checks' old home)
)
from rcnn_steps.ops.box_coder import BoxCoder

__all__ = [
    "BoxCoder",
    "batched_nms",
    "box_area",
    "box_convert",
    "box_iou",
    "clip_boxes_to_image",
    "cxcywh_to_xyxy",
    "nms",
    "remove_small_boxes",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
    "xyxy_to_xywh",
]


def _widen(t: Tensor) -> Tensor:
    """Half and 8/16-bit integer tensors are widened (to float32 / int32) before products,
    which would otherwise overflow or round badly; float32/64 and int32/64 stay as they are.
    This is torchvision's ``_upcast``, so our areas and IoUs have the same dtype as theirs."""
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t if t.dtype in (torch.int32, torch.int64) else t.int()


# ----------------------------------------------------------------------------------------
# Areas and IoU (chapter 00)
# ----------------------------------------------------------------------------------------


def box_area(boxes: Tensor, fmt: str = "xyxy") -> Tensor:
    """Area of each box: ``(x2 - x1) * (y2 - y1)``.

    Taught in chapter 00 ("Objects, boxes and scores").

    Args:
        boxes: ``(..., 4)`` boxes in (x1, y1, x2, y2) order, or in ``fmt``.
        fmt: ``"xyxy"`` (default), ``"xywh"`` or ``"cxcywh"``; for the last two the area
            is ``w * h``, read off the boxes directly (as torchvision does).

    Returns:
        ``(...)`` areas. Half/small-integer boxes give float32/int32 areas (see
        :func:`_widen`); a zero-width or zero-height box has area 0. Equals
        ``torchvision.ops.box_area`` (0.29, with its ``fmt=`` argument).
    """
    _check_fmt("box_area", fmt)
    _check_boxes("box_area", "boxes", boxes, batched=True)
    boxes = _widen(boxes)
    if fmt == "xyxy":
        return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return boxes[..., 2] * boxes[..., 3]


def box_iou(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> Tensor:
    """Intersection over union (the Jaccard index) of every pair of boxes.

    ``IoU(A, B) = area(A ∩ B) / area(A ∪ B)``: the overlap criterion of PASCAL VOC
    (Everingham et al., 2010, eq. 1) that R-CNN uses to label proposals, to suppress
    duplicates (:func:`nms`) and that AP uses to match detections to ground truth.
    Taught in chapter 00 ("Objects, boxes and scores").

    Args:
        boxes1: ``(N, 4)`` boxes in (x1, y1, x2, y2) order, or ``(..., N, 4)``: a batch of
            sets (leading dimensions broadcast against those of ``boxes2``).
        boxes2: ``(M, 4)`` boxes, or ``(..., M, 4)``.
        fmt: the boxes' format, ``"xyxy"`` (default), ``"xywh"`` or ``"cxcywh"``.

    Returns:
        ``(N, M)`` IoUs in [0, 1] (``(..., N, M)`` for batches). Two boxes that do not
        touch have IoU 0. Two boxes that both have zero area (so a union of zero) have
        IoU 0 too, as in detectron2's ``pairwise_iou``: torchvision returns ``0 / 0 =
        nan`` there. Every other entry equals ``torchvision.ops.box_iou`` (0.29, with
        its ``fmt=`` argument and leading batch dimensions), nan for boxes with nan
        coordinates included.
    """
    _check_fmt("box_iou", fmt)
    _check_boxes("box_iou", "boxes1", boxes1, sets=True)
    _check_boxes("box_iou", "boxes2", boxes2, sets=True)
    if boxes1.device != boxes2.device:
        raise ValueError(
            f"box_iou: boxes1 is on {boxes1.device} but boxes2 is on {boxes2.device}; "
            "move both to one device."
        )
    try:
        torch.broadcast_shapes(boxes1.shape[:-2], boxes2.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"box_iou: the batch dimensions of boxes1 {tuple(boxes1.shape[:-2])} and boxes2 "
            f"{tuple(boxes2.shape[:-2])} do not broadcast; give both sets the same batch "
            "size (B, N, 4) and (B, M, 4)."
        ) from None
    inter, union = _inter_union(boxes1, boxes2, fmt)
    # union == 0 only when both boxes have zero area (then inter is 0 too): 0, not 0 / 0
    return (inter / union).masked_fill_(union == 0, 0)


def _corners(boxes: Tensor, fmt: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """x1, y1, x2, y2 columns (each ``(..., N)``) of boxes in ``fmt``, computed the way
    torchvision's ``_box_inter_union`` does, so the IoUs round the same way."""
    a, b, c, d = boxes.unbind(-1)
    if fmt == "xyxy":
        return a, b, c, d
    if fmt == "xywh":
        return a, b, a + c, b + d
    return a - c / 2, b - d / 2, a + c / 2, b + d / 2  # cxcywh


def _inter_union(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> tuple[Tensor, Tensor]:
    """The ``(..., N, M)`` intersection and union areas of every pair, unchecked."""
    area1 = box_area(boxes1, fmt)  # (..., N)
    area2 = box_area(boxes2, fmt)  # (..., M)
    # One (N, M) tensor per coordinate (column by column) rather than torchvision's
    # (N, M, 2) corner tensors: the same arithmetic, so the same bits, on contiguous
    # memory, which is about twice as fast on CPU (benchmarks/bench_boxes.py).
    x1, y1, x2, y2 = (c[..., :, None] for c in _corners(boxes1, fmt))  # each (..., N, 1)
    xx1, yy1, xx2, yy2 = (c[..., None, :] for c in _corners(boxes2, fmt))  # each (..., 1, M)
    # The intersection is the box between the larger top-left and the smaller
    # bottom-right corner; a negative side means the boxes miss each other on that axis.
    inter_w = _widen(torch.minimum(x2, xx2) - torch.maximum(x1, xx1)).clamp(min=0)
    inter_h = _widen(torch.minimum(y2, yy2) - torch.maximum(y1, yy1)).clamp(min=0)
    inter = inter_w * inter_h  # (..., N, M)
    union = area1[..., :, None] + area2[..., None, :] - inter  # inclusion-exclusion
    return inter, union


def _largest_at_most(threshold: float, dtype: torch.dtype) -> float:
    """The largest number representable in ``dtype`` that is <= ``threshold``.

    torchvision's NMS kernels compare a float32 IoU against the threshold as a double,
    ``double(iou) > threshold``. A plain ``iou > threshold`` on a float32 tensor would
    first round the threshold to float32, and 0.3 rounds *up* (to 0.30000001): a pair of
    integer boxes with IoU exactly 3/10 is suppressed by torchvision but not by the naive
    comparison. For a float32 ``iou``, ``double(iou) > t`` is the same test as
    ``iou > (largest float32 <= t)``, so we compare against that instead.
    """
    if dtype == torch.float64:
        return float(threshold)
    t = torch.tensor(threshold, dtype=dtype)
    if float(t) > threshold:  # rounded up: step one representable value down
        t = torch.nextafter(t, torch.tensor(-math.inf, dtype=dtype))
    return float(t)


# ----------------------------------------------------------------------------------------
# Non-maximum suppression (chapter 00)
# ----------------------------------------------------------------------------------------

#: How many score-ordered boxes :func:`nms` resolves at once on CPU. 256 measured fastest
#: on a 2-core CPU (128 and 384 were slower at 1000-5000 boxes).
NMS_BLOCK_SIZE_CPU = 256
#: The same on an accelerator, where every round of the loop costs a host-device
#: synchronisation while the (block x block) IoU work is nearly free, so bigger blocks
#: (fewer rounds) should win. 1024 is a reasoned choice that no GPU has measured yet:
#: ``benchmarks/bench_boxes.py --device cuda`` will.
NMS_BLOCK_SIZE_ACCELERATOR = 1024
#: A class of up to this many blocks' worth of boxes is resolved as one block: a class of
#: 260 boxes in one block of 260, not blocks of 256 and 4 (measured: per-class NMS of 5000
#: boxes in 20 classes, 5.7 -> 4.9 ms; 1.5 was no faster).
NMS_LARGE_CLASS = 1.25


def _iou_dtype(boxes: Tensor) -> torch.dtype:
    """The dtype :func:`box_iou` returns for these boxes (float boxes after widening;
    integer boxes divide into torch's default float dtype)."""
    widened = _widen(boxes[:0])
    return widened.dtype if widened.is_floating_point() else torch.get_default_dtype()


def _greedy_nms_sorted(boxes: Tensor, iou_threshold: float, labels: Tensor | None = None) -> Tensor:
    """Greedy NMS on boxes already in the order they are to be considered.

    Args:
        boxes: ``(N, 4)`` boxes, highest score first (for per-class NMS: grouped by class,
            highest score first within each class).
        iou_threshold: a box is dropped when its IoU with a kept box is > this.
        labels: ``(N,)`` sorted class ids, or None for one class. Boxes of different
            classes never suppress each other.

    Returns:
        ``(N,)`` bool, True for the kept boxes.

    Greedy NMS walks the boxes in order and keeps a box unless a box it already kept
    overlaps it by more than the threshold. Written as one equation, box j is kept iff

        keep[j] = not any(keep[i] and IoU(i, j) > t for i < j)                      (*)

    The obvious code is a Python loop over boxes, which is slow, and computing the whole
    (N, N) IoU matrix first costs N^2 time and memory (100 MB of float32 IoUs at
    N = 5000, several times that in temporaries). We go block by block in score order,
    at most B boxes at a time, and do two vectorised steps per block:

    1. Drop the block's boxes that overlap a box kept in an earlier block of their class:
       one (K, B) IoU, K = boxes kept so far. Earlier blocks are final, so this part is
       exact at once.
    2. Solve (*) inside the block by fixed-point iteration: start from "every survivor of
       step 1 is kept", then recompute keep from (*) with the (B, B) IoU until nothing
       changes. keep[j] depends only on keep[i] for i < j, so after r rounds the first r
       boxes are right and a fixed point is the greedy answer; the loop ends after at most
       B rounds, in practice after a few (the length of the longest chain "a suppresses
       b, which would otherwise suppress c, ..."). Each round is one vector-matrix
       product: how many kept boxes would suppress each box.

    With classes, the blocks follow them: consecutive small classes share a block (a
    class mask keeps them apart) and a class larger than ``NMS_LARGE_CLASS`` blocks gets
    equal blocks of its own, so no block mixes the end of one class with the start of the
    next, and step 1 looks back only inside its class. The coordinates are laid out once
    as contiguous columns, so the pairwise arithmetic (torchvision's, so the same bits)
    runs on contiguous memory.

    The total work is about (kept boxes + B) x N IoUs, like torchvision's CPU kernel, and
    Python only loops over blocks and rounds, never over boxes. Measured on a 2-core CPU
    (one thread, busy machine, CPU time, benchmarks/bench_boxes.py's clustered boxes):
    NMS of 1000 / 2000 / 5000 boxes 2.0 / 5.0 / 11.0 ms against torchvision's 2.1 / 8.5 /
    12.0; per-class NMS of 5000 boxes of 20 classes 9.6-10.3 ms against 7.0-7.3 (with
    fixed-size blocks that straddled the classes, a gather of the kept rows for each
    round and strided columns, 18-20 ms). Writing the overlap test as 0/1 floats in place
    (``overlaps_of``) took a fifth off, measured later on a busier machine (old and new in
    one process): 1000 / 2000 / 5000 boxes 2.7 / 7.8 / 16.0 -> 2.2 / 6.0 / 11.8 ms
    (torchvision 2.2 / 8.5 / 12.6), 20 classes 11.6 -> 9.3 (torchvision 6.4). Laying
    the classes side by side as a (C, R) grid, to batch the blocks of different classes
    into one, measured twice as slow: the (C, B, B) temporaries leave the cache. Later
    (2 threads, quiet, the benchmark's median of 30): cutting a class just over a block
    long into equal blocks or none, the triangle folded into the comparison's thresholds
    and the final order read off the score sort took per-class NMS of 20 classes from
    6.1 to 4.4 ms (torchvision 4.8); 80 classes then took 5.4 (5.1). Its worst
    case is a chain as long as a block (every box suppressing the next): then a block
    takes B rounds.
    """
    if labels is None:
        labels = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
    n = boxes.shape[0]
    keep = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    threshold = _largest_at_most(iou_threshold, _iou_dtype(boxes))
    size = NMS_BLOCK_SIZE_CPU if boxes.device.type == "cpu" else NMS_BLOCK_SIZE_ACCELERATOR
    wide = _widen(boxes)
    x1, y1, x2, y2 = wide.T.contiguous()  # four contiguous (N,) columns
    area = (x2 - x1) * (y2 - y1)

    def overlaps_of(rows: Tensor | slice, cols: Tensor | slice, above=threshold) -> Tensor:
        """``[i, j]``: 1.0 if IoU(rows[i], cols[j]) > threshold, else 0.0, torchvision's
        arithmetic. Two zero-area boxes give ``0 / 0 = nan``, as in torchvision's NMS
        kernels (not :func:`box_iou`'s 0): nan is above no threshold, so such boxes never
        suppress each other, even at a negative threshold, where an IoU of 0 would.

        The comparison is written in place (``gt_``) as 0/1 in the IoUs' float dtype,
        what the sums below take: a bool matrix and a cast to float measured 6x slower
        on CPU than this one pass, and were a fifth of NMS's time. ``above`` may be a
        matrix of thresholds, one per pair."""
        inter_w = torch.minimum(x2[rows][:, None], x2[cols][None, :])
        inter_w -= torch.maximum(x1[rows][:, None], x1[cols][None, :])
        inter_h = torch.minimum(y2[rows][:, None], y2[cols][None, :])
        inter_h -= torch.maximum(y1[rows][:, None], y1[cols][None, :])
        inter = inter_w.clamp_(min=0).mul_(inter_h.clamp_(min=0))
        union = (area[rows][:, None] + area[cols][None, :]).sub_(inter)
        return inter.div_(union).gt_(above)

    # Blocks: (start, stop, first box of the large class it continues or -1, whether it
    # holds several classes). Small classes are grouped, in order, into blocks of at most
    # `size` boxes (smaller groups measured slower at 80 classes); a class of more than
    # NMS_LARGE_CLASS x size boxes gets ceil(count / size) blocks of equal length (not
    # full blocks and a sliver of a few boxes: every block costs a dozen small
    # operations, whatever its length).
    blocks: list[tuple[int, int, int, bool]] = []
    start = group = classes_in_group = 0
    for count in torch.unique_consecutive(labels, return_counts=True)[1].tolist():
        large = count > NMS_LARGE_CLASS * size
        if large or start + count - group > size:  # close the open group
            if group < start:
                blocks.append((group, start, -1, classes_in_group > 1))
            group, classes_in_group = start, 0
        if large:
            pieces = -(-count // size)
            cuts = [start + count * i // pieces for i in range(pieces + 1)]
            blocks += [
                (a, b, start if a > start else -1, False)
                for a, b in zip(cuts[:-1], cuts[1:], strict=True)
            ]
            group = start + count
        else:
            classes_in_group += 1
        start += count
    if group < n:
        blocks.append((group, n, -1, classes_in_group > 1))

    # Step 2 counts only earlier boxes of the block: (*) has i < j. One matrix of
    # thresholds for all blocks, the threshold above the diagonal and +inf (which no IoU
    # exceeds) on and below it, so the comparison itself drops the later boxes (a pass
    # less than multiplying by a triangular mask afterwards).
    largest = max(stop - start for start, stop, *_ in blocks) if blocks else 0
    earlier_in_block = area.new_full((largest, largest), math.inf).tril_().add_(threshold)
    for start, stop, class_start, mixed in blocks:
        rows: Tensor | slice = slice(start, stop)
        if class_start >= 0:  # step 1: kept boxes of this class's earlier blocks
            earlier = torch.nonzero(keep[class_start:start]).squeeze(1) + class_start
            if len(earlier):
                suppressed = overlaps_of(earlier, rows).amax(dim=0) > 0
                rows = torch.nonzero(~suppressed).squeeze(1) + start
            if rows.numel() == 0:
                continue
        # step 2: the fixed point of (*) inside the block; weights[i, j] = 1 if box i
        # would suppress box j
        m = stop - start if isinstance(rows, slice) else len(rows)
        weights = overlaps_of(rows, rows, above=earlier_in_block[:m, :m])
        if mixed:  # several small classes may share the block
            block_labels = labels[rows]
            weights.mul_(block_labels[:, None] == block_labels[None, :])
        block_keep = torch.ones(m, dtype=torch.bool, device=boxes.device)
        while True:
            new_keep = (block_keep.to(weights.dtype) @ weights) == 0
            if torch.equal(new_keep, block_keep):
                break
            block_keep = new_keep
        keep[rows] = block_keep
    return keep


def _check_nms_inputs(fn: str, boxes: Tensor, scores: Tensor, iou_threshold: float) -> None:
    _check_boxes(fn, "boxes", boxes)
    _check_per_box(fn, "scores", scores, boxes, "score")
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, Real):
        raise TypeError(f"{fn}: iou_threshold must be a number such as 0.5, got {iou_threshold!r}.")
    if math.isnan(iou_threshold):
        raise ValueError(f"{fn}: iou_threshold is nan; pass a number such as 0.5.")


def _score_order(scores: Tensor) -> Tensor:
    """Indices that sort ``scores`` from highest to lowest; equal scores keep their input
    order (a stable sort), which is what torchvision's NMS kernels do on CPU."""
    return torch.sort(scores, descending=True, stable=True).indices


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    R-CNN (section 2.2): "greedy non-maximum suppression ... rejects a region if it has an
    intersection-over-union (IoU) overlap with a higher scoring selected region larger
    than a learned threshold." Taught in chapter 00 ("Objects, boxes and scores"); see
    :func:`_greedy_nms_sorted` for how it is computed without a loop over boxes.

    Args:
        boxes: ``(N, 4)`` boxes in (x1, y1, x2, y2) order.
        scores: ``(N,)`` one score per box (any real dtype; only its order matters).
        iou_threshold: a box is dropped when its IoU with a kept, higher-scoring box is
            strictly greater than this.

    Returns:
        ``(K,)`` int64 indices into ``boxes`` of the kept boxes, by decreasing score. Of
        two boxes with the same score the one that comes first in ``boxes`` is considered
        first, as in torchvision's CPU kernel (torchvision documents that its GPU kernel
        may pick the other one). Equals ``torchvision.ops.nms``, which also requires
        ``scores`` to have the boxes' dtype; we do not.
    """
    _check_nms_inputs("nms", boxes, scores, iou_threshold)
    order = _score_order(scores)
    keep = _greedy_nms_sorted(boxes[order], iou_threshold, labels=None)
    return order[keep]


def batched_nms(
    boxes: Tensor, scores: Tensor | None, idxs: Tensor | None, iou_threshold: float
) -> Tensor:
    """Non-maximum suppression run independently per class ("category").

    R-CNN applies NMS "for each class independently" (section 2.2): a dog box never
    suppresses a cat box. Taught in chapter 00 ("Objects, boxes and scores").

    Args:
        boxes: ``(N, 4)`` boxes in (x1, y1, x2, y2) order.
        scores: ``(N,)`` one score per box.
        idxs: ``(N,)`` the class (or image, or level) of each box; boxes with different
            ``idxs`` never suppress each other.
        iou_threshold: a box is dropped when its IoU with a kept, higher-scoring box *of
            the same class* is strictly greater than this.

    Returns:
        ``(K,)`` int64 indices of the kept boxes, by decreasing score; equal scores in
        input order. The same boxes as ``torchvision.ops.batched_nms``. Two differences,
        both at torchvision's expense: above 1000 CPU boxes torchvision sorts its result
        with an unstable sort, so boxes with equal scores can come out in either order;
        and below that it uses the coordinate trick (below), which can mix classes when
        coordinates are below -1.

        No boxes at all (any empty tensor, even ``torch.empty(0, dtype=torch.long)``)
        give an empty result whatever ``scores`` and ``idxs`` are, ``None`` included,
        as torchvision does; ``scores`` and ``idxs`` that are given must be empty too.
    """
    if isinstance(boxes, Tensor) and boxes.numel() == 0:
        for name, value in (("scores", scores), ("idxs", idxs)):
            if value is not None and (not isinstance(value, Tensor) or value.numel() != 0):
                n = value.numel() if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(
                    f"batched_nms: boxes is empty but {name} has {n} entries; give exactly "
                    f"one {'score' if name == 'scores' else 'class index'} per box."
                )
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    _check_nms_inputs("batched_nms", boxes, scores, iou_threshold)
    _check_per_box("batched_nms", "idxs", idxs, boxes, "class index")
    # The well-known shortcut (torchvision, Detectron) is the *coordinate trick*: shift
    # every box by class_id * (max coordinate + 1), so boxes of different classes land
    # in disjoint regions and can no longer overlap, then run one plain NMS. It is short
    # but has two catches: the shift assumes coordinates >= -1 (torchvision's offset
    # uses only the maximum), and adding large offsets rounds float32 coordinates, which
    # moves IoUs that sit right at the threshold. We instead put the boxes in class-major
    # order (by class, then by score) and tell the greedy loop the classes: a box is only
    # ever compared with boxes of its own class, so the result is exactly per-class NMS,
    # and the look-back of step 1 stays within one class (less work than the trick).
    # Class ids as int64, whatever dtype idxs has (int, float, bool, uint8); only their
    # equality matters. Integer ids as they are; floats numbered 0..C-1 (another sort).
    if idxs.is_floating_point():
        class_ids = torch.unique(idxs, return_inverse=True)[1]
    else:
        class_ids = idxs.long()
    by_score = _score_order(scores)
    order = by_score[torch.sort(class_ids[by_score], stable=True).indices]  # class-major
    keep = _greedy_nms_sorted(boxes[order], iou_threshold, labels=class_ids[order])
    # Back to "by decreasing score, ties in input order": the score order, filtered.
    kept = torch.zeros_like(keep)
    kept[order[keep]] = True
    return by_score[kept[by_score]]


# ----------------------------------------------------------------------------------------
# Clipping and filtering (chapter 00; used by the RPN in chapter 04)
# ----------------------------------------------------------------------------------------


def clip_boxes_to_image(boxes: Tensor, size: Sequence[int]) -> Tensor:
    """Clip boxes to lie inside an image: x into [0, width], y into [0, height].

    Taught in chapter 00 ("Objects, boxes and scores"); the RPN (chapter 04) clips its
    proposals before NMS, as Faster R-CNN (section 3.3) does at test time.

    Args:
        boxes: ``(..., 4)`` boxes in (x1, y1, x2, y2) order.
        size: ``(height, width)`` of the image (torch's order, not PIL's ``(w, h)``).

    Returns:
        ``(..., 4)`` clipped boxes, same dtype. A box entirely outside the image becomes
        a zero-area box on the border (drop it with :func:`remove_small_boxes`). Equals
        ``torchvision.ops.clip_boxes_to_image``.
    """
    _check_boxes("clip_boxes_to_image", "boxes", boxes, batched=True)
    if isinstance(size, Tensor):
        size = size.tolist()
    if not isinstance(size, Sequence) or len(size) != 2:
        raise ValueError(
            f"clip_boxes_to_image: size must be (height, width), got {size!r}; for a "
            "(C, H, W) image tensor pass image.shape[-2:]."
        )
    height, width = size
    x = boxes[..., 0::2].clamp(min=0, max=width)  # (..., 2): x1, x2
    y = boxes[..., 1::2].clamp(min=0, max=height)  # (..., 2): y1, y2
    # Interleave back to x1, y1, x2, y2.
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes whose width and height are both at least ``min_size``.

    Taught in chapter 00 ("Objects, boxes and scores"); the RPN (chapter 04) drops tiny
    proposals with it.

    Args:
        boxes: ``(N, 4)`` boxes in (x1, y1, x2, y2) order.
        min_size: smallest allowed side, in pixels. Boxes with a side exactly
            ``min_size`` are kept (torchvision's docstring says "larger than" but its code
            keeps ``>=``, as we do).

    Returns:
        ``(K,)`` int64 indices of the boxes kept, in input order. Equals
        ``torchvision.ops.remove_small_boxes``.
    """
    _check_boxes("remove_small_boxes", "boxes", boxes)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return torch.where((widths >= min_size) & (heights >= min_size))[0]


# ----------------------------------------------------------------------------------------
# Formats (chapter 00). Each equals torchvision.ops.box_convert for its pair of formats.
# ----------------------------------------------------------------------------------------


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """``(..., 4)`` corners (x1, y1, x2, y2) to COCO's (x, y, w, h): top-left and size.
    Taught in chapter 00 ("Objects, boxes and scores")."""
    _check_boxes("xyxy_to_xywh", "boxes", boxes, batched=True)
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` COCO's (x, y, w, h) to corners (x1, y1, x2, y2).
    Taught in chapter 00 ("Objects, boxes and scores")."""
    _check_boxes("xywh_to_xyxy", "boxes", boxes, batched=True)
    x, y, w, h = boxes.unbind(-1)
    return torch.stack((x, y, x + w, y + h), dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(..., 4)`` corners (x1, y1, x2, y2) to centre and size (cx, cy, w, h), the
    coordinates box regression works in (:class:`BoxCoder`).
    Taught in chapter 00 ("Objects, boxes and scores")."""
    _check_boxes("xyxy_to_cxcywh", "boxes", boxes, batched=True)
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` centre and size (cx, cy, w, h) to corners (x1, y1, x2, y2).
    Taught in chapter 00 ("Objects, boxes and scores")."""
    _check_boxes("cxcywh_to_xyxy", "boxes", boxes, batched=True)
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


_CONVERTERS = {
    ("xyxy", "xywh"): (xyxy_to_xywh,),
    ("xywh", "xyxy"): (xywh_to_xyxy,),
    ("xyxy", "cxcywh"): (xyxy_to_cxcywh,),
    ("cxcywh", "xyxy"): (cxcywh_to_xyxy,),
    ("xywh", "cxcywh"): (xywh_to_xyxy, xyxy_to_cxcywh),
    ("cxcywh", "xywh"): (cxcywh_to_xyxy, xyxy_to_xywh),
}


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert ``(..., 4)`` boxes between "xyxy", "xywh" and "cxcywh" (via xyxy).

    Taught in chapter 00 ("Objects, boxes and scores"). Equals
    ``torchvision.ops.box_convert`` for these three formats (torchvision also converts
    rotated boxes). Same format in and out returns a copy, as torchvision does.
    """
    for name, fmt in (("in_fmt", in_fmt), ("out_fmt", out_fmt)):
        if fmt not in BOX_FORMATS:
            raise ValueError(f"box_convert: {name} must be one of {BOX_FORMATS}, got {fmt!r}.")
    _check_boxes("box_convert", "boxes", boxes, batched=True)
    if in_fmt == out_fmt:
        return boxes.clone()
    for step in _CONVERTERS[(in_fmt, out_fmt)]:
        boxes = step(boxes)
    return boxes
