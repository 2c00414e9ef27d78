"""Tests for rcnn_steps.ops.boxes (chapter 00; BoxCoder chapters 01-04).

torchvision is the oracle: every function that torchvision.ops has is compared with it on
random inputs (hypothesis) and on the edge cases that break naive code: empty inputs,
identical boxes, ties in score, zero-area boxes, boxes far apart, IoU exactly at the
threshold, float32 and float64. Where we differ from torchvision on purpose (tie order in
torchvision's large batched_nms, its coordinate trick with negative coordinates) the test
says so and checks what we promise instead.
"""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
import torchvision.ops as tv
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection._utils import BoxCoder as TvBoxCoder

import rcnn_steps.ops.boxes
from rcnn_steps.ops.boxes import (
    NMS_BLOCK_SIZE_CPU,
    NMS_LARGE_CLASS,
    BoxCoder,
    _largest_at_most,
    batched_nms,
    box_area,
    box_convert,
    box_iou,
    clip_boxes_to_image,
    cxcywh_to_xyxy,
    nms,
    remove_small_boxes,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)

FLOATS = [torch.float32, torch.float64]
THRESHOLDS = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
FORMATS = ["xyxy", "xywh", "cxcywh"]


def nms_block_size(size: int):
    """Run NMS with blocks of ``size`` boxes on CPU. Small blocks make a few dozen boxes
    span many blocks, so the random tests reach the code that carries kept boxes from
    one block to the next (and, per class, looks back to where a class starts)."""
    return mock.patch.object(rcnn_steps.ops.boxes, "NMS_BLOCK_SIZE_CPU", size)


def exactly_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Same shape, dtype, device and bits (nan where the other has nan)."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


# ----------------------------------------------------------------------------------------
# Random box sets. Hypothesis draws a few parameters and a seed, torch draws the numbers:
# fast for dozens of boxes, and hypothesis still shrinks the size and the seed.
# ----------------------------------------------------------------------------------------


def make_boxes(
    n: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
    grid: bool = False,
    zero_area: float = 0.0,
    duplicates: float = 0.0,
    far: float = 0.0,
    span: float = 100.0,
) -> torch.Tensor:
    """(n, 4) xyxy boxes: top-left corners in [0, span), sides up to span / 2 (shifted by
    10 000 px for a fraction ``far`` of them).

    ``grid`` puts corners on integers 0..20, so identical boxes, shared edges and IoUs that
    are exact fractions (3/10 at threshold 0.3) are common. ``zero_area`` and
    ``duplicates`` are the fractions of boxes made degenerate or copied from another row.
    """
    gen = torch.Generator().manual_seed(seed)
    if grid:
        corner = torch.randint(0, 21, (n, 2), generator=gen).to(dtype)
        size = torch.randint(0, 11, (n, 2), generator=gen).to(dtype)
    else:
        corner = torch.rand(n, 2, generator=gen, dtype=torch.float64) * span
        size = torch.rand(n, 2, generator=gen, dtype=torch.float64) * span / 2
    boxes = torch.cat((corner, corner + size), dim=1).to(dtype)
    if n == 0:
        return boxes
    pick = torch.rand(n, generator=gen)
    flat = pick < zero_area  # collapse the width or the height to zero
    axis = torch.randint(0, 2, (n,), generator=gen)
    boxes[flat & (axis == 0), 2] = boxes[flat & (axis == 0), 0]
    boxes[flat & (axis == 1), 3] = boxes[flat & (axis == 1), 1]
    copy = torch.rand(n, generator=gen) < duplicates
    boxes[copy] = boxes[torch.randint(0, n, (int(copy.sum()),), generator=gen)]
    away = torch.rand(n, generator=gen) < far
    boxes[away] += 10_000.0
    return boxes


def make_scores(n: int, seed: int, levels: int | None, dtype=torch.float32) -> torch.Tensor:
    """Continuous scores, or scores from ``levels`` values (so many exact ties)."""
    gen = torch.Generator().manual_seed(seed + 1)
    if levels is None:
        return torch.rand(n, generator=gen, dtype=torch.float64).to(dtype)
    return torch.randint(0, levels, (n,), generator=gen).to(dtype) / levels


@st.composite
def box_sets(draw, max_boxes: int = 60):
    """(boxes, scores, class ids) with every edge case switched on at random."""
    n = draw(st.integers(0, max_boxes))
    seed = draw(st.integers(0, 2**31 - 1))
    dtype = draw(st.sampled_from(FLOATS))
    boxes = make_boxes(
        n,
        seed,
        dtype,
        grid=draw(st.booleans()),
        zero_area=draw(st.sampled_from([0.0, 0.2])),
        duplicates=draw(st.sampled_from([0.0, 0.3])),
        far=draw(st.sampled_from([0.0, 0.2])),
    )
    scores = make_scores(n, seed, draw(st.sampled_from([None, 1, 3])), dtype)
    gen = torch.Generator().manual_seed(seed + 2)
    classes = torch.randint(0, draw(st.integers(1, 4)), (n,), generator=gen)
    return boxes, scores, classes


def per_class_reference(boxes, scores, classes, threshold):
    """What batched_nms means: torchvision's plain NMS on each class on its own, the union
    ordered by decreasing score, equal scores in input order."""
    kept = [
        members[tv.nms(boxes[members], scores[members], threshold)]
        for members in (torch.where(classes == c)[0] for c in classes.unique())
    ]
    kept = torch.cat(kept).sort().values if kept else torch.zeros(0, dtype=torch.int64)
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


# ----------------------------------------------------------------------------------------
# box_area, box_iou
# ----------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(box_sets())
def test_box_area_matches_torchvision(data):
    boxes, _, _ = data
    exactly_equal(box_area(boxes), tv.box_area(boxes))
    batched = boxes.reshape(-1, 1, 4)  # leading dimensions are allowed, as in torchvision
    exactly_equal(box_area(batched), tv.box_area(batched))


def tv_box_iou_degenerate_zero(boxes1, boxes2, fmt="xyxy"):
    """torchvision's box_iou with its one documented difference from ours: where two
    zero-area boxes meet (a union of 0) it has 0 / 0 = nan, we have 0. On finite boxes
    that is the only way torchvision makes a nan."""
    theirs = tv.box_iou(boxes1, boxes2, fmt=fmt)
    return torch.where(theirs.isnan(), torch.zeros((), dtype=theirs.dtype), theirs)


@settings(max_examples=60, deadline=None)
@given(box_sets(), box_sets())
def test_box_iou_matches_torchvision(data1, data2):
    boxes1, boxes2 = data1[0], data2[0].to(data1[0].dtype)
    iou = box_iou(boxes1, boxes2)
    assert iou.shape == (len(boxes1), len(boxes2))
    exactly_equal(iou, tv_box_iou_degenerate_zero(boxes1, boxes2))
    assert ((iou >= 0) & (iou <= 1)).all()


@settings(max_examples=30, deadline=None)
@given(box_sets(), box_sets(), st.sampled_from(FORMATS))
def test_box_iou_and_area_take_fmt_like_torchvision(data1, data2, fmt):
    # torchvision 0.29's fmt= argument: the boxes are read as xywh or cxcywh directly
    boxes1 = box_convert(data1[0], "xyxy", fmt)
    boxes2 = box_convert(data2[0], "xyxy", fmt).to(boxes1.dtype)
    exactly_equal(box_area(boxes1, fmt=fmt), tv.box_area(boxes1, fmt=fmt))
    exactly_equal(box_iou(boxes1, boxes2, fmt=fmt), tv_box_iou_degenerate_zero(boxes1, boxes2, fmt))


def test_box_iou_takes_batches_of_sets_like_torchvision():
    # (B, N, 4) x (B, M, 4) -> (B, N, M); leading dimensions broadcast, as in torchvision
    boxes1 = make_boxes(3 * 7, seed=5, zero_area=0.2).reshape(3, 7, 4)
    boxes2 = make_boxes(3 * 5, seed=6, duplicates=0.3).reshape(3, 5, 4)
    iou = box_iou(boxes1, boxes2)
    assert iou.shape == (3, 7, 5)
    exactly_equal(iou, tv_box_iou_degenerate_zero(boxes1, boxes2))
    for b in range(3):
        exactly_equal(iou[b], box_iou(boxes1[b], boxes2[b]))
    exactly_equal(box_iou(boxes1[0], boxes2), tv_box_iou_degenerate_zero(boxes1[0], boxes2))
    exactly_equal(
        box_iou(boxes1, boxes2, fmt="xywh"), tv_box_iou_degenerate_zero(boxes1, boxes2, "xywh")
    )
    with pytest.raises(ValueError, match=r"batch dimensions .*\(3,\) and boxes2 \(2,\)"):
        box_iou(boxes1, boxes2[:2])


@pytest.mark.parametrize("dtype", [torch.float16, torch.int16, torch.int64])
def test_box_iou_widens_like_torchvision(dtype):
    boxes = make_boxes(30, seed=1, grid=True, duplicates=0.2).to(dtype)
    exactly_equal(box_area(boxes), tv.box_area(boxes))
    exactly_equal(box_iou(boxes, boxes), tv_box_iou_degenerate_zero(boxes, boxes))


def test_box_iou_edge_cases():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    # identical boxes: 1; disjoint or only touching along an edge: 0; half covered: 1/2
    others = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [10.0, 0.0, 20.0, 10.0], [0, 0, 10, 5]]
    )
    assert box_iou(a, others).tolist() == [[1.0, 0.0, 0.0, 0.5]]
    # zero-area boxes: 0 against a real box, and 0 (not torchvision's 0/0 = nan) against
    # another zero-area box, identical or not (detectron2's choice)
    point = torch.tensor([[5.0, 5.0, 5.0, 5.0]])
    line = torch.tensor([[0.0, 5.0, 10.0, 5.0]])
    assert box_iou(point, a).item() == 0.0
    assert box_iou(point, point).item() == 0.0 and tv.box_iou(point, point).isnan().item()
    assert box_iou(line, line).item() == 0.0 and box_iou(point, line).item() == 0.0
    assert box_iou(point, point, fmt="cxcywh").item() == 1.0  # there, a 5 x 5 box
    flat = torch.tensor([[5.0, 5.0, 0.0, 4.0]])  # cxcywh with zero width
    assert box_iou(flat, flat, fmt="cxcywh").item() == 0.0
    # a nan box stays nan: an honest answer to a broken input, as torchvision's
    nan_box = torch.tensor([[math.nan, 0.0, 10.0, 10.0]])
    assert box_iou(nan_box, a).isnan().item() and box_iou(nan_box, point).isnan().item()
    # empty sets give empty matrices of the right shape
    assert box_iou(torch.zeros(0, 4), a).shape == (0, 1)
    assert box_iou(a, torch.zeros(0, 4)).shape == (1, 0)
    # boxes far apart in float32: no overlap, no overflow
    far = torch.tensor([[1e6, 1e6, 1e6 + 10, 1e6 + 10]])
    assert box_iou(a, far).item() == 0.0


# ----------------------------------------------------------------------------------------
# nms, batched_nms
# ----------------------------------------------------------------------------------------


BLOCK_SIZES = st.sampled_from([1, 4, 16, NMS_BLOCK_SIZE_CPU])


@settings(max_examples=80, deadline=None)
@given(box_sets(), st.sampled_from(THRESHOLDS) | st.floats(0.0, 1.0), BLOCK_SIZES)
def test_nms_matches_torchvision(data, threshold, block_size):
    boxes, scores, _ = data
    with nms_block_size(block_size):
        keep = nms(boxes, scores, threshold)
    assert keep.dtype == torch.int64
    exactly_equal(keep, tv.nms(boxes, scores, threshold))


@settings(max_examples=60, deadline=None)
@given(box_sets(), st.sampled_from(THRESHOLDS), BLOCK_SIZES)
def test_batched_nms_is_per_class_nms(data, threshold, block_size):
    boxes, scores, classes = data
    with nms_block_size(block_size):
        keep = batched_nms(boxes, scores, classes, threshold)
    exactly_equal(keep, per_class_reference(boxes, scores, classes, threshold))
    if len(boxes) <= 1000 and (boxes.dtype == torch.float64 or boxes.frac().eq(0).all()):
        # Under 1000 boxes torchvision shifts each class by an offset (the coordinate
        # trick); in float64, or on integer corners in float32, that shift is exact.
        exactly_equal(keep, tv.batched_nms(boxes, scores, classes, threshold))


def test_nms_edge_cases():
    empty = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.dtype == torch.int64 and empty.shape == (0,)
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0), 0.5).shape == (0,)
    # torchvision's own test: an empty long tensor with None for the rest
    none = batched_nms(torch.empty((0,), dtype=torch.long), None, None, 0.5)
    exactly_equal(none, tv.batched_nms(torch.empty((0,), dtype=torch.long), None, None, 0.5))
    with pytest.raises(ValueError, match="boxes is empty but scores has 2 entries"):
        batched_nms(torch.zeros(0, 4), torch.zeros(2), None, 0.5)

    box = [0.0, 0.0, 10.0, 10.0]
    # identical boxes with equal scores: the first one is kept (a stable sort, like
    # torchvision's CPU kernel); with a higher score later on, that one wins
    same = torch.tensor([box] * 4)
    assert nms(same, torch.ones(4), 0.5).tolist() == [0]
    assert nms(same, torch.tensor([1.0, 2.0, 2.0, 1.0]), 0.5).tolist() == [1]
    exactly_equal(nms(same, torch.ones(4), 0.5), tv.nms(same, torch.ones(4), 0.5))
    # equal scores, nothing suppressed: kept in input order
    apart = torch.tensor([[0.0, 0, 1, 1], [5, 5, 6, 6], [9, 9, 10, 10]])
    assert nms(apart, torch.ones(3), 0.0).tolist() == [0, 1, 2]
    # zero-area duplicates never suppress each other (their IoU is nan, never > t)
    points = torch.tensor([[3.0, 3.0, 3.0, 3.0]] * 3)
    assert nms(points, torch.tensor([0.1, 0.3, 0.2]), 0.0).tolist() == [1, 2, 0]
    # threshold 1: nothing can exceed it, so every box is kept, by decreasing score
    assert nms(same, torch.tensor([0.1, 0.4, 0.3, 0.2]), 1.0).tolist() == [1, 2, 3, 0]
    # identical boxes of different classes do not suppress each other
    assert batched_nms(same, torch.ones(4), torch.tensor([0, 1, 0, 1]), 0.5).tolist() == [0, 1]


@pytest.mark.parametrize("dtype", FLOATS)
def test_nms_threshold_is_strict_and_rounded_like_torchvision(dtype):
    # IoU = 3 / 10 exactly. In float64 that is 0.3, not > 0.3: both boxes kept. In float32
    # it is 0.30000001, which torchvision compares as a double against 0.3: suppressed.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 1.0], [0.0, 0.0, 3.0, 1.0]], dtype=dtype)
    scores = torch.tensor([1.0, 0.5], dtype=dtype)
    expected = [0, 1] if dtype == torch.float64 else [0]
    assert nms(boxes, scores, 0.3).tolist() == expected
    exactly_equal(nms(boxes, scores, 0.3), tv.nms(boxes, scores, 0.3))
    # IoU = 1/2 exactly, representable in both: never > 0.5, so kept
    half = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]], dtype=dtype)
    assert nms(half, scores, 0.5).tolist() == [0, 1]


def test_largest_at_most():
    assert _largest_at_most(0.5, torch.float32) == 0.5
    assert _largest_at_most(0.3, torch.float64) == 0.3
    below = _largest_at_most(0.3, torch.float32)
    assert below < 0.3
    assert torch.tensor(below, dtype=torch.float32).item() == below  # a float32 value
    assert torch.nextafter(torch.tensor(below), torch.tensor(1.0)).item() > 0.3  # the largest


@pytest.mark.parametrize("block_size", [8, 32])  # the real size: the clustered tests below
def test_nms_long_chains_across_blocks(block_size):
    # A top-scoring box on its own, then a row of boxes, each 1 px right of the last and
    # scored lower. Each would suppress its right neighbour (IoU 0.6) but not the next
    # one (IoU 1/3), so greedy keeps every other box of the row. The fixed-point loop
    # meets its worst case (one round per box of a block), and the last box of each block
    # is kept and must suppress the first box of the next block.
    n = 3 * block_size + 5
    x = torch.arange(n, dtype=torch.float32)
    row = torch.stack((x, torch.zeros(n), x + 4, torch.ones(n)), dim=1)
    boxes = torch.cat((torch.tensor([[0.0, 50.0, 10.0, 60.0]]), row))
    scores = torch.linspace(1, 0, n + 1)
    with nms_block_size(block_size):
        keep = nms(boxes, scores, 0.5)
    assert keep.tolist() == [0] + list(range(1, n + 1, 2))
    assert block_size - 1 in keep.tolist()  # kept at the end of the first block
    exactly_equal(keep, tv.nms(boxes, scores, 0.5))


@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_nms_matches_torchvision_on_many_clustered_boxes(threshold):
    # Detection-like: boxes jittered around 40 objects, heavy overlap, at the real block
    # size (five blocks of NMS_BLOCK_SIZE_CPU).
    n = 4 * NMS_BLOCK_SIZE_CPU + 176
    gen = torch.Generator().manual_seed(0)
    centres = torch.rand(40, 2, generator=gen) * 500
    owner = torch.randint(0, 40, (n,), generator=gen)
    c = centres[owner] + torch.randn(n, 2, generator=gen) * 8
    half = 20 * torch.exp(torch.randn(n, 2, generator=gen) * 0.2)
    boxes = torch.cat((c - half, c + half), dim=1)
    scores = torch.rand(n, generator=gen)
    exactly_equal(nms(boxes, scores, threshold), tv.nms(boxes, scores, threshold))
    classes = torch.randint(0, 5, (n,), generator=gen)
    keep = batched_nms(boxes, scores, classes, threshold)
    exactly_equal(keep, per_class_reference(boxes, scores, classes, threshold))


@pytest.mark.parametrize("block_size", [4, 16])
def test_batched_nms_blocks_of_every_kind(block_size):
    # Class sizes that reach every way a class is cut into blocks: small classes sharing a
    # block, a class filling one, one just over a block (up to NMS_LARGE_CLASS blocks:
    # still one block), and larger ones in 2-4 equal blocks, whose later blocks look back
    # at the kept boxes of the earlier. Each class is a chain of boxes sliding right, so
    # that suppression runs across block boundaries.
    b = block_size
    sizes = [1, 2, b - 3, b, int(NMS_LARGE_CLASS * b), int(NMS_LARGE_CLASS * b) + 1, 2 * b + 1]
    sizes += [3, 4 * b - 1, 1]
    boxes, classes = [], []
    for c, size in enumerate(sizes):
        step = torch.arange(size, dtype=torch.float32)[:, None] * 3
        boxes.append(torch.tensor([[0.0, 0.0, 10.0, 10.0]]) + torch.cat((step, 0 * step) * 2, 1))
        classes += [c] * size
    boxes = torch.cat(boxes)
    classes = torch.tensor(classes)
    perm = torch.randperm(len(boxes), generator=torch.Generator().manual_seed(0))
    boxes, classes = boxes[perm], classes[perm]
    scores = torch.rand(len(boxes), generator=torch.Generator().manual_seed(1))
    for threshold in (0.3, 0.5):
        with nms_block_size(block_size):
            keep = batched_nms(boxes, scores, classes, threshold)
        exactly_equal(keep, per_class_reference(boxes, scores, classes, threshold))


def test_batched_nms_large_input_same_boxes_as_torchvision():
    # Above 1000 CPU boxes torchvision runs NMS class by class and then orders the result
    # with an *unstable* sort: with tied scores its order among the ties is arbitrary. We
    # keep the same boxes, by decreasing score, ties in input order.
    n = 1500
    boxes = make_boxes(n, seed=3, grid=True, duplicates=0.1)
    scores = make_scores(n, seed=3, levels=5)
    classes = torch.randint(0, 7, (n,), generator=torch.Generator().manual_seed(3))
    ours = batched_nms(boxes, scores, classes, 0.5)
    theirs = tv.batched_nms(boxes, scores, classes, 0.5)
    exactly_equal(ours.sort().values, theirs.sort().values)
    exactly_equal(scores[ours], scores[theirs])  # the same score sequence
    exactly_equal(ours, per_class_reference(boxes, scores, classes, 0.5))


def test_batched_nms_negative_coordinates():
    # torchvision's coordinate trick shifts class c by c * (max coordinate + 1). With
    # every coordinate negative the "shift" is backwards and too small, so two classes
    # still overlap and one suppresses the other. Ours never compares across classes.
    boxes = torch.tensor([[-100.0, -100.0, -10.0, -10.0], [-100.0, -100.0, -10.0, -10.0]])
    scores = torch.tensor([0.9, 0.8])
    classes = torch.tensor([0, 1])
    assert batched_nms(boxes, scores, classes, 0.5).tolist() == [0, 1]
    assert tv.batched_nms(boxes, scores, classes, 0.5).tolist() == [0]  # their trick


@pytest.mark.parametrize(
    "idxs",
    [[1, 0, 1, 1], [7, -2, 7, 7], [True, False, True, True], [0.5, 2.0, 0.5, 0.5]],
    ids=["int", "negative", "bool", "float"],
)
def test_batched_nms_accepts_any_class_id_dtype(idxs):
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    idxs = torch.tensor(idxs)
    assert batched_nms(boxes, scores, idxs, 0.5).tolist() == [0, 1, 3]
    exactly_equal(batched_nms(boxes, scores, idxs, 0.5), tv.batched_nms(boxes, scores, idxs, 0.5))


def test_nms_accepts_scores_of_another_dtype():
    boxes = make_boxes(50, seed=4)
    scores = make_scores(50, seed=4, levels=None, dtype=torch.float64)
    # torchvision requires scores.dtype == boxes.dtype; only the order of scores matters
    exactly_equal(nms(boxes, scores, 0.5), tv.nms(boxes, scores.float(), 0.5))


# ----------------------------------------------------------------------------------------
# clip_boxes_to_image, remove_small_boxes
# ----------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(box_sets(), st.integers(1, 120), st.integers(1, 120))
def test_clip_matches_torchvision(data, height, width):
    boxes = data[0] - 20  # some corners below 0, some beyond the image
    clipped = clip_boxes_to_image(boxes, (height, width))
    exactly_equal(clipped, tv.clip_boxes_to_image(boxes, (height, width)))
    assert (clipped[:, 0::2] <= width).all() and (clipped[:, 1::2] <= height).all()
    assert (clipped >= 0).all()
    batched = boxes.reshape(2, -1, 4) if len(boxes) % 2 == 0 else boxes[None]
    exactly_equal(
        clip_boxes_to_image(batched, (height, width)),
        tv.clip_boxes_to_image(batched, (height, width)),
    )


def test_clip_uses_height_then_width():
    boxes = torch.tensor([[-5.0, -5.0, 500.0, 500.0]])
    assert clip_boxes_to_image(boxes, (100, 200)).tolist() == [[0.0, 0.0, 200.0, 100.0]]
    assert clip_boxes_to_image(boxes, torch.tensor([100, 200])).tolist() == [[0, 0, 200, 100]]


@settings(max_examples=40, deadline=None)
@given(box_sets(), st.sampled_from([0.0, 1.0, 2.0, 3.5, 10.0]))
def test_remove_small_boxes_matches_torchvision(data, min_size):
    boxes = data[0]
    exactly_equal(remove_small_boxes(boxes, min_size), tv.remove_small_boxes(boxes, min_size))


def test_remove_small_boxes_keeps_sides_equal_to_min_size():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.9, 5.0], [0.0, 0.0, 5.0, 0.0]])
    assert remove_small_boxes(boxes, 2.0).tolist() == [0]
    assert remove_small_boxes(torch.zeros(0, 4), 1.0).shape == (0,)


# ----------------------------------------------------------------------------------------
# Formats
# ----------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(box_sets(), st.sampled_from(FORMATS), st.sampled_from(FORMATS))
def test_box_convert_matches_torchvision(data, in_fmt, out_fmt):
    boxes = data[0].reshape(-1, 1, 4)  # with a leading dimension, as torchvision allows
    converted = box_convert(boxes, in_fmt, out_fmt)
    exactly_equal(converted, tv.box_convert(boxes, in_fmt, out_fmt))
    if in_fmt == out_fmt:
        assert converted.data_ptr() != boxes.data_ptr() or boxes.numel() == 0  # a copy


def test_named_converters():
    xyxy = torch.tensor([[10.0, 20.0, 40.0, 80.0]])
    assert xyxy_to_xywh(xyxy).tolist() == [[10.0, 20.0, 30.0, 60.0]]
    assert xyxy_to_cxcywh(xyxy).tolist() == [[25.0, 50.0, 30.0, 60.0]]
    assert xywh_to_xyxy(torch.tensor([[10.0, 20.0, 30.0, 60.0]])).tolist() == xyxy.tolist()
    assert cxcywh_to_xyxy(torch.tensor([[25.0, 50.0, 30.0, 60.0]])).tolist() == xyxy.tolist()
    boxes = make_boxes(20, seed=5, dtype=torch.float64)
    torch.testing.assert_close(xywh_to_xyxy(xyxy_to_xywh(boxes)), boxes)
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes)


# ----------------------------------------------------------------------------------------
# BoxCoder
# ----------------------------------------------------------------------------------------

WEIGHTS = [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]


def positive_boxes(n: int, seed: int, dtype: torch.dtype, min_size: float = 1.0) -> torch.Tensor:
    """Boxes with sides in [min_size, min_size + 150] (log(gw / pw) needs positive sizes)."""
    gen = torch.Generator().manual_seed(seed)
    corner = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 200
    size = min_size + torch.rand(n, 2, generator=gen, dtype=torch.float64) * 150
    return torch.cat((corner, corner + size), dim=1).to(dtype)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 50),
    st.integers(0, 2**31 - 1),
    st.sampled_from(FLOATS),
    st.sampled_from(WEIGHTS),
    st.integers(1, 4),
)
def test_box_coder_matches_torchvision(n, seed, dtype, weights, num_classes):
    gt, ref = positive_boxes(n, seed, dtype), positive_boxes(n, seed + 1, dtype)
    ours, theirs = BoxCoder(weights), TvBoxCoder(weights)
    exactly_equal(ours.encode(gt, ref), theirs.encode_single(gt, ref))
    gen = torch.Generator().manual_seed(seed)
    deltas = (torch.randn(n, 4 * num_classes, generator=gen, dtype=torch.float64) * 3).to(dtype)
    decoded = ours.decode(deltas, ref)
    assert decoded.shape == (n, 4 * num_classes)
    exactly_equal(decoded, theirs.decode_single(deltas, ref))


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_box_coder_round_trip(weights, dtype):
    coder = BoxCoder(weights)
    # sides in [10, 160]: gt is within 16x of ref in size, so the 62.5x clamp does not bite
    gt, ref = positive_boxes(200, 7, dtype, 10.0), positive_boxes(200, 8, dtype, 10.0)
    # float32 coordinates of a few hundred pixels: a few ulps (3e-5 each at 256) of error
    tolerance = {"rtol": 1e-5, "atol": 1e-4} if dtype == torch.float32 else {}
    torch.testing.assert_close(coder.decode(coder.encode(gt, ref), ref), gt, **tolerance)


def test_box_coder_known_values():
    ref = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), size (10, 20)
    gt = torch.tensor([[5.0, 10.0, 25.0, 30.0]])  # centre (15, 20), size (20, 20)
    expected = [[1.0, 0.5, math.log(2.0), 0.0]]  # (15-5)/10, (20-10)/20, log 20/10, log 1
    torch.testing.assert_close(BoxCoder().encode(gt, ref), torch.tensor(expected))
    weighted = [[10.0, 5.0, 5 * math.log(2.0), 0.0]]
    torch.testing.assert_close(BoxCoder((10, 10, 5, 5)).encode(gt, ref), torch.tensor(weighted))


def test_box_coder_decodes_each_class_group_on_its_own():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    ref = positive_boxes(6, 9, torch.float32)
    deltas = torch.randn(6, 4 * 3, generator=torch.Generator().manual_seed(9))
    decoded = coder.decode(deltas, ref)
    assert decoded.shape == (6, 12)
    for k in range(3):
        group = slice(4 * k, 4 * k + 4)
        exactly_equal(decoded[:, group], coder.decode(deltas[:, group], ref))


def test_box_coder_clamps_log_sizes_before_exp():
    clip = math.log(1000.0 / 16)
    coder = BoxCoder((1.0, 1.0, 2.0, 2.0))
    ref = torch.tensor([[0.0, 0.0, 10.0, 10.0]], dtype=torch.float64)
    # dw / ww = 50 (far above the clip) is clamped: the side grows exactly 62.5x, not e^50x
    huge = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]], dtype=torch.float64), ref)
    torch.testing.assert_close(huge, torch.tensor([[-307.5, -307.5, 317.5, 317.5]]).double())
    # just below the clip it is not clamped
    below = coder.decode(torch.tensor([[0.0, 0.0, 2 * (clip - 0.5), 0.0]]).double(), ref)
    torch.testing.assert_close(
        below[0, 2] - below[0, 0], 10 * torch.tensor(clip - 0.5).exp().double()
    )
    # only large log-sizes are clamped: a very negative one is not clamped from below
    # (a symmetric clamp would give width 10 / 62.5 = 0.16); width 10 * e^-50 vanishes
    # next to the centre coordinate 5
    tiny = coder.decode(torch.tensor([[0.0, 0.0, -100.0, 0.0]], dtype=torch.float64), ref)
    assert tiny[0, 0].item() == tiny[0, 2].item() == 5.0
    # a clip of 0 forbids growing at all: deltas of 1 move the box but keep its size
    moved = BoxCoder(bbox_xform_clip=0.0).decode(torch.ones(1, 4), ref.float())
    assert moved.tolist() == [[10.0, 10.0, 20.0, 20.0]]


def test_box_coder_empty():
    coder = BoxCoder()
    assert coder.encode(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)
    assert coder.decode(torch.zeros(0, 8), torch.zeros(0, 4)).shape == (0, 8)


# ----------------------------------------------------------------------------------------
# Error messages: say what is wrong and what to do
# ----------------------------------------------------------------------------------------


Z4, Z3 = torch.zeros(4, 4), torch.zeros(3, 4)  # four boxes, three boxes
ERROR_CASES = [
    # (call, error type, what the message must say)
    (
        lambda: box_iou(torch.zeros(3, 5), Z4),
        ValueError,
        r"boxes1 must have shape \(N, 4\), got \(3, 5\)",
    ),
    (
        lambda: box_iou(torch.zeros(4), Z4),
        ValueError,
        r"single box needs a leading dimension: boxes\[None\]",
    ),
    (
        lambda: box_iou(Z4, torch.zeros(3, 2)),
        ValueError,
        r"boxes2 must have shape \(N, 4\), got \(3, 2\)\. Each box is one row of four",
    ),
    (
        lambda: box_iou([[0, 0, 1, 1]], Z4),
        TypeError,
        r"must be a torch.Tensor, got list.*torch.as_tensor",
    ),
    (
        lambda: box_iou(Z4, Z4, fmt="xyxyxyxy"),
        ValueError,
        r"fmt must be one of \('xyxy', 'xywh', 'cxcywh'\), got 'xyxyxyxy'; rotated",
    ),
    (lambda: box_area(Z4, fmt="yxyx"), ValueError, r"box_area: fmt must be one of"),
    (
        lambda: batched_nms(Z3, None, torch.zeros(3), 0.5),
        TypeError,
        r"scores must be a torch.Tensor, got NoneType",
    ),
    (
        lambda: box_area(torch.zeros(2, 3)),
        ValueError,
        r"box_area: boxes must have shape \(\.\.\., 4\)",
    ),
    (
        lambda: nms(Z3, torch.zeros(2), 0.5),
        ValueError,
        r"boxes has 3 rows but scores has 2 entries",
    ),
    (lambda: nms(Z3, torch.zeros(3, 1), 0.5), ValueError, r"scores must be 1-D.*reshape\(-1\)"),
    (lambda: nms(Z3, torch.zeros(3), "0.5"), TypeError, r"iou_threshold must be a number"),
    (lambda: nms(Z3, torch.zeros(3), math.nan), ValueError, r"iou_threshold is nan"),
    (lambda: nms(Z3.bool(), torch.zeros(3), 0.5), TypeError, r"real numbers.*\.float\(\)"),
    (
        lambda: batched_nms(Z3, torch.zeros(3), torch.zeros(4), 0.5),
        ValueError,
        r"idxs has 4 entries; give exactly one class index per box",
    ),
    (
        lambda: clip_boxes_to_image(Z3, (10, 20, 3)),
        ValueError,
        r"size must be \(height, width\).*image.shape\[-2:\]",
    ),
    (
        lambda: remove_small_boxes(torch.zeros(2, 2, 4), 1.0),
        ValueError,
        r"must have shape \(N, 4\)",
    ),
    (
        lambda: box_convert(Z3, "xyxy", "yxyx"),
        ValueError,
        r"out_fmt must be one of \('xyxy', 'xywh', 'cxcywh'\), got 'yxyx'",
    ),
    (
        lambda: BoxCoder((1.0, 1.0, 1.0)),
        ValueError,
        r"four numbers.*\(10, 10, 5, 5\) for RoI heads",
    ),
    (
        lambda: BoxCoder().encode(Z3, Z4),
        ValueError,
        r"gt_boxes has 3 rows but ref_boxes has 4.*matched_idxs",
    ),
    (
        lambda: BoxCoder().decode(torch.zeros(4, 6), Z4),
        ValueError,
        r"deltas must have shape \(N, 4 \* K\).*got \(4, 6\)",
    ),
    (
        lambda: BoxCoder().decode(torch.zeros(3, 4), Z4),
        ValueError,
        r"deltas has 3 rows but ref_boxes has 4",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), ERROR_CASES)
def test_error_messages(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ----------------------------------------------------------------------------------------
# The same comparisons on CUDA
# ----------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestOnCuda:
    """Ours on CUDA against torchvision on CUDA (and against ours on CPU)."""

    device = torch.device("cuda", 0)

    @pytest.mark.parametrize("seed", range(5))
    @pytest.mark.parametrize("dtype", FLOATS)
    def test_box_iou_area_clip_convert(self, seed, dtype):
        boxes = make_boxes(300, seed, dtype, zero_area=0.1, duplicates=0.1).to(self.device)
        iou = box_iou(boxes, boxes[:100])
        assert iou.device == self.device
        torch.testing.assert_close(iou, tv_box_iou_degenerate_zero(boxes, boxes[:100]))
        on_cpu = box_iou(boxes.cpu(), boxes[:100].cpu())
        torch.testing.assert_close(iou.cpu(), on_cpu)
        exactly_equal(box_area(boxes), tv.box_area(boxes))
        exactly_equal(clip_boxes_to_image(boxes, (50, 70)), tv.clip_boxes_to_image(boxes, (50, 70)))
        exactly_equal(remove_small_boxes(boxes, 5.0), tv.remove_small_boxes(boxes, 5.0))
        for in_fmt in FORMATS:
            for out_fmt in FORMATS:
                exactly_equal(
                    box_convert(boxes, in_fmt, out_fmt), tv.box_convert(boxes, in_fmt, out_fmt)
                )

    @pytest.mark.parametrize("n", [0, 1, 500, 3000])
    @pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
    def test_nms_and_batched_nms(self, n, threshold):
        boxes = make_boxes(n, seed=n, duplicates=0.1).to(self.device)
        # distinct scores: torchvision's GPU kernel may break ties differently
        scores = (torch.randperm(n, generator=torch.Generator().manual_seed(n)) / n).to(self.device)
        classes = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(n))
        classes = classes.to(self.device)
        keep = nms(boxes, scores, threshold)
        assert keep.device == self.device and keep.dtype == torch.int64
        exactly_equal(keep, tv.nms(boxes, scores, threshold))
        exactly_equal(keep.cpu(), nms(boxes.cpu(), scores.cpu(), threshold))
        keep = batched_nms(boxes, scores, classes, threshold)
        exactly_equal(keep, tv.batched_nms(boxes, scores, classes, threshold))
        exactly_equal(keep.cpu(), batched_nms(boxes.cpu(), scores.cpu(), classes.cpu(), threshold))

    @pytest.mark.parametrize("weights", WEIGHTS)
    def test_box_coder(self, weights):
        gt = positive_boxes(400, 1, torch.float32).to(self.device)
        ref = positive_boxes(400, 2, torch.float32).to(self.device)
        ours, theirs = BoxCoder(weights), TvBoxCoder(weights)
        torch.testing.assert_close(ours.encode(gt, ref), theirs.encode_single(gt, ref))
        deltas = torch.randn(400, 12, device=self.device)
        decoded = ours.decode(deltas, ref)
        assert decoded.device == self.device
        torch.testing.assert_close(decoded, theirs.decode_single(deltas, ref))
