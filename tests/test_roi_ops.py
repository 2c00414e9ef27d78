"""Tests for the RoI layers of rcnn_steps.ops: roipool (chapter 03), roialign and
roi_layers (chapter 06), and the argument checks they share (roi_checks).

torchvision is the oracle for RoIPool and RoIAlign (average): forward and backward on
random maps and boxes, and on the boxes that break naive code (outside the map, smaller
than a cell, reversed, on half cells, huge), in float32 and float64. RoIPool must agree
exactly, gradients included (ties broken as torchvision breaks them: ReLU maps have many).
RoIAlign agrees to rounding (its sums run in another order). torchvision has no max
version of RoIAlign, so that one is checked against a slow loop written below from the
paper's definition, which is itself first checked against torchvision in average mode.
RoIWarp is checked by what it promises: RoIAlign on the rounded box. Maps are small, so
the file runs in seconds.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import pytest
import torch
import torchvision.ops as tv
from hypothesis import given, settings
from hypothesis import strategies as st

import rcnn_steps.ops
from rcnn_steps.ops import roi_checks, roialign, roipool, roipool_tables
from rcnn_steps.ops.roi_layers import ROI_OP_NAMES, RoIOp, get_roi_op
from rcnn_steps.ops.roialign import (
    bilinear_sample,
    roi_align,
    roi_align_bins,
    roi_align_reference,
    roi_align_sampling_points,
    roi_warp,
)
from rcnn_steps.ops.roipool import (
    FLT_MAX,
    roi_pool,
    roi_pool_cells,
    roi_pool_reference,
    roi_pool_region,
)

FLOATS = [torch.float32, torch.float64]


def tolerance(dtype: torch.dtype) -> dict:
    """RoIAlign sums in another order than torchvision: a few ulps per output."""
    return (
        {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    )


def exactly_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


#: roi_pool's two forwards (roipool.ROI_POOL_METHOD): every exactness test runs both.
POOL_METHODS = ["tables", "bin_shape"]


@contextlib.contextmanager
def pool_method(name: str):
    """roi_pool with its forward forced to ``name`` (a context manager, not a fixture,
    so that hypothesis tests can draw it)."""
    saved = roipool.ROI_POOL_METHOD
    roipool.ROI_POOL_METHOD = name
    try:
        yield
    finally:
        roipool.ROI_POOL_METHOD = saved


# ----------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------


def feature_map(n, c, h, w, dtype=torch.float32, seed=0, relu=False, device="cpu"):
    """Random features; ``relu`` zeroes about half of them, making ties common (a bin of
    zeros must send its gradient to its first cell, as torchvision does)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=dtype)
    return (x.relu() if relu else x).to(device)


def random_rois(num_images, num_rois, height, width, scale, dtype=torch.float32, seed=0):
    """``(K, 5)`` RoIs in image coordinates for a ``height x width`` map at ``scale``:
    centres anywhere from 30% before to 30% beyond the image, sizes skewed small (many
    below one cell) up to 1.5 images, so boxes inside, straddling and outside the map
    all occur. Followed by fixed edge cases: wholly outside on each side, a point, a
    sliver, reversed, on half cells (where C's round and torch.round differ), the
    whole map and more."""
    gen = torch.Generator().manual_seed(seed)
    img_w, img_h = width / scale, height / scale
    centre = (torch.rand(num_rois, 2, generator=gen, dtype=torch.float64) * 1.6 - 0.3) * (
        torch.tensor([img_w, img_h], dtype=torch.float64)
    )
    size = torch.rand(num_rois, 2, generator=gen, dtype=torch.float64) ** 2 * 1.5
    size = size * torch.tensor([img_w, img_h], dtype=torch.float64)
    boxes = torch.cat((centre - size / 2, centre + size / 2), 1)
    s = 1 / scale  # one cell, in image pixels
    edge = torch.tensor(
        [
            [img_w + 3 * s, 1 * s, img_w + 6 * s, 4 * s],  # right of the map
            [-6 * s, -5 * s, -3 * s, -2 * s],  # above-left of the map
            [1.2 * s, 1.2 * s, 1.2 * s, 1.2 * s],  # a point
            [2.1 * s, 0.0, 2.3 * s, img_h],  # a sliver, 0.2 cell wide
            [4 * s, 3 * s, 1 * s, 1 * s],  # reversed
            [2.5 * s, 1.5 * s, 4.5 * s, 3.5 * s],  # on half cells
            [-0.5 * s, -0.5 * s, 0.5 * s, 0.5 * s],  # half cells around zero
            [-img_w, -img_h, 2 * img_w, 2 * img_h],  # far more than the map
            [0.0, 0.0, img_w, img_h],  # the whole map
            [-1.4 * s, 0.0, 1.0 * s, img_h + 1.2 * s],  # straddling the -1 border
        ],
        dtype=torch.float64,
    )
    boxes = torch.cat((boxes, edge))
    batch = torch.randint(0, num_images, (boxes.shape[0], 1), generator=gen).double()
    return torch.cat((batch, boxes), 1).to(dtype)


def forward_backward(fn, x, rois, *args, grad_seed=1, **kwargs):
    """Output and input gradient of ``fn`` for a fixed random upstream gradient."""
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, rois, *args, **kwargs)
    gen = torch.Generator().manual_seed(grad_seed)
    grad = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)
    (out * grad).sum().backward()
    return out.detach(), x.grad


# ----------------------------------------------------------------------------------------
# RoIPool against torchvision: exact
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize(
    ("output_size", "scale"), [(7, 0.25), ((3, 5), 0.5), (2, 1.0), ((4, 4), 1 / 16)]
)
@pytest.mark.parametrize("method", POOL_METHODS)
def test_roi_pool_equals_torchvision(dtype, relu, output_size, scale, method):
    x = feature_map(2, 3, 9, 11, dtype, seed=3, relu=relu)
    rois = random_rois(2, 40, 9, 11, scale, dtype, seed=4)
    with pool_method(method):
        ours = forward_backward(roi_pool, x, rois, output_size, scale)
    theirs = forward_backward(tv.roi_pool, x, rois, output_size, scale)
    exactly_equal(ours[0], theirs[0])
    exactly_equal(ours[1], theirs[1])


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    ph=st.integers(1, 6),
    pw=st.integers(1, 6),
    scale=st.sampled_from([1.0, 0.5, 0.25, 0.125, 1 / 3]),
    relu=st.booleans(),
    method=st.sampled_from(POOL_METHODS),
)
def test_roi_pool_random(seed, height, width, ph, pw, scale, relu, method):
    x = feature_map(2, 2, height, width, seed=seed, relu=relu)
    rois = random_rois(2, 12, height, width, scale, seed=seed + 1)
    with pool_method(method):
        ours = forward_backward(roi_pool, x, rois, (ph, pw), scale)
    theirs = forward_backward(tv.roi_pool, x, rois, (ph, pw), scale)
    exactly_equal(ours[0], theirs[0])
    exactly_equal(ours[1], theirs[1])


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("method", POOL_METHODS)
def test_roi_pool_values_torchvision_never_picks(dtype, method):
    """nan and values <= -FLT_MAX are never selected by torchvision's kernel (it starts
    at -FLT_MAX and keeps strictly greater values): a bin of only those outputs -FLT_MAX
    and passes no gradient; -0.0 and +0.0 tie."""
    x = feature_map(1, 4, 6, 6, dtype, seed=5)
    x[0, 0] = math.nan
    x[0, 1, :3] = -math.inf
    x[0, 2, 2:] = -FLT_MAX
    x[0, 3] = 0.0
    x[0, 3, ::2] = -0.0
    rois = random_rois(1, 20, 6, 6, 0.5, dtype, seed=6)
    with pool_method(method):
        ours = forward_backward(roi_pool, x, rois, 3, 0.5)
    theirs = forward_backward(tv.roi_pool, x, rois, 3, 0.5)
    exactly_equal(ours[0], theirs[0])
    exactly_equal(ours[1], theirs[1])
    assert (ours[0][:, 0] == -FLT_MAX).any()  # the all-nan channel


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roi_pool_one_and_two_cell_bins(seed):
    """Small RoIs at 4 x 4 make bins of one and two cells, which the bin-shape forward
    pools without `max` (a comparison for two cells): ties, nan, -inf and -FLT_MAX in
    either cell still match torchvision's values and gradients."""
    gen = torch.Generator().manual_seed(seed)
    specials = torch.tensor([math.nan, -math.inf, -FLT_MAX, 0.0, -0.0, 1.0, 1.0, 2.0])
    pick = torch.randint(0, 12, (2, 3, 7, 7), generator=gen)
    x = torch.where(pick < 8, specials[pick.clamp(max=7)], torch.randn(2, 3, 7, 7, generator=gen))
    corner = torch.randint(0, 6, (60, 2), generator=gen).float()
    side = torch.randint(0, 3, (60, 2), generator=gen).float()
    image = torch.randint(0, 2, (60, 1), generator=gen).float()
    rois = torch.cat((image, corner, corner + side), 1)
    _, _, _, bin_h, bin_w = roipool._bin_grid(rois, 1.0, 4, 4, x.shape)
    assert {1, 2} <= set((bin_h * bin_w).tolist())
    with pool_method("bin_shape"):
        ours = forward_backward(roi_pool, x, rois, 4)
    theirs = forward_backward(tv.roi_pool, x, rois, 4)
    exactly_equal(ours[0], theirs[0])
    exactly_equal(ours[1], theirs[1])


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("method", POOL_METHODS)
def test_roi_pool_backward_in_pieces(method, channels_last):
    """The backward adds 4 MiB of gradient at a time: 60 RoIs of 14 x 14 x 256 float32
    outputs (200 KiB each) take three pieces, and many RoIs share cells across them."""
    x = feature_map(2, 256, 12, 12, seed=8, relu=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    rois = random_rois(2, 60, 12, 12, 1.0, seed=9)
    with pool_method(method):
        ours = forward_backward(roi_pool, x, rois, 14)
    theirs = forward_backward(tv.roi_pool, x, rois, 14)
    assert 60 * 14 * 14 * 256 * 4 > 2 * 2**22
    exactly_equal(ours[0], theirs[0])
    exactly_equal(ours[1], theirs[1])


@pytest.mark.parametrize("method", POOL_METHODS)
def test_roi_pool_shared_argmax_accumulates(method):
    """One bright cell that many bins of many RoIs pick: its gradient is their sum."""
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 3, 4] = 5.0
    rois = torch.tensor([[0, 0, 0, 7, 7], [0, 2, 1, 6, 6], [0, 4, 3, 4, 3], [0, 3, 2, 5, 5]])
    rois = rois.float()
    with pool_method(method):
        ours = forward_backward(roi_pool, x, rois, 3)
    theirs = forward_backward(tv.roi_pool, x, rois, 3)
    exactly_equal(ours[1], theirs[1])
    assert ours[1][0, 0, 3, 4] != 0
    # Every bin of the 1-cell RoI picks the same cell: 9 contributions add up there.
    assert (ours[0][2] == 5).all()


@pytest.mark.parametrize("method", POOL_METHODS)
def test_roi_pool_ties_go_to_the_first_cell(method):
    """A constant map: every bin's gradient goes to its first cell in row-major order."""
    x = torch.ones(1, 1, 6, 6)
    rois = torch.tensor([[0.0, 0, 0, 5, 5]])
    with pool_method(method):
        out, grad = forward_backward(roi_pool, x, rois, 3, grad_seed=2)
    cells = roi_pool_cells(rois[0, 1:], 1.0, 3)  # (3, 3, 4): x0, y0, x1, y1
    firsts = {(int(c[1]), int(c[0])) for c in cells.view(-1, 4)}
    assert {tuple(p) for p in grad[0, 0].nonzero().tolist()} == firsts
    exactly_equal(grad, forward_backward(tv.roi_pool, x, rois, 3, grad_seed=2)[1])


@pytest.mark.parametrize(
    ("method", "module", "budget"),
    [("tables", roipool_tables, "ROI_POOL_TABLE_BYTES"), ("bin_shape", roipool, "GATHER_BYTES")],
)
@pytest.mark.parametrize("dtype", FLOATS)
def test_roi_pool_many_rois_and_memory_slices(monkeypatch, method, module, budget, dtype):
    """Hundreds of RoIs over several images, with each forward's memory bound forced to
    its smallest slices (the max tables one channel at a time, the gathers one bin at a
    time), still equal torchvision, values it never picks included."""
    x = feature_map(3, 5, 10, 12, dtype, seed=7, relu=True)
    x[1, 2] = math.nan
    x[2, 3, :4] = -math.inf
    x[0, 4, 5:] = -FLT_MAX
    rois = random_rois(3, 300, 10, 12, 0.5, dtype, seed=8)
    monkeypatch.setattr(module, budget, 1)
    with pool_method(method):
        ours = forward_backward(roi_pool, x, rois, (4, 3), 0.5)
    theirs = forward_backward(tv.roi_pool, x, rois, (4, 3), 0.5)
    exactly_equal(ours[0], theirs[0])
    exactly_equal(ours[1], theirs[1])


@pytest.mark.parametrize("method", POOL_METHODS)
def test_roi_pool_half_precision(method):
    """float16 maps equal torchvision's kernel, which takes them on CPU; bfloat16, which it
    refuses, equals the reference (the max tables decode through float32 for both)."""
    x = feature_map(2, 6, 9, 11, seed=17, relu=True)
    rois = random_rois(2, 40, 9, 11, 0.25, seed=18)
    with pool_method(method):
        ours = forward_backward(roi_pool, x.half(), rois.half(), 3, 0.25)
        brain = roi_pool(x.bfloat16(), rois.bfloat16(), 3, 0.25)
    theirs = forward_backward(tv.roi_pool, x.half(), rois.half(), 3, 0.25)
    exactly_equal(ours[0], theirs[0])
    exactly_equal(ours[1], theirs[1])
    exactly_equal(brain, roi_pool_reference(x.bfloat16(), rois.bfloat16(), 3, 0.25))


@pytest.mark.parametrize("method", POOL_METHODS)
def test_roi_pool_channels_last_map(method):
    """A channels_last map (a model trained with ``--memory-format channels_last``): the
    same values and gradient as torchvision's, and both come back channels_last (no
    transpose of the map); a contiguous map gets contiguous ones."""
    x = feature_map(2, 6, 9, 11, seed=15, relu=True)
    rois = random_rois(2, 40, 9, 11, 0.25, seed=16)
    theirs = forward_backward(tv.roi_pool, x, rois, 3, 0.25)
    with pool_method(method):
        out, grad = forward_backward(
            roi_pool, x.contiguous(memory_format=torch.channels_last), rois, 3, 0.25
        )
        plain = forward_backward(roi_pool, x, rois, 3, 0.25)
    exactly_equal(out, theirs[0])
    exactly_equal(grad, theirs[1])
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert grad.is_contiguous(memory_format=torch.channels_last)
    assert plain[0].is_contiguous() and plain[1].is_contiguous()
    # Fewer outputs than input values: the backward scatters into NCHW directly.
    few = rois[:3]
    assert not roipool._scatters_channels_last(x, len(few) * 9)
    assert roipool._scatters_channels_last(x, len(rois) * 9)
    with pool_method(method):
        ours = forward_backward(roi_pool, x, few, 3, 0.25)
    theirs = forward_backward(tv.roi_pool, x, few, 3, 0.25)
    exactly_equal(ours[0], theirs[0])
    exactly_equal(ours[1], theirs[1])
    assert ours[1].is_contiguous()


@pytest.mark.parametrize("method", POOL_METHODS)
def test_roi_pool_of_a_map_without_channels(method):
    """No channels: an empty output and gradient, as torchvision gives."""
    x = torch.zeros(2, 0, 5, 5)
    rois = torch.tensor([[0.0, 0, 0, 3, 3], [1.0, 1, 1, 4, 2]])
    with pool_method(method):
        out, grad = forward_backward(roi_pool, x, rois, 2)
    assert out.shape == tv.roi_pool(x, rois, 2).shape == (2, 0, 2, 2)
    assert grad.shape == x.shape


def test_roi_pool_takes_the_method_with_less_to_do():
    """Small bins on a large map (a detector's FPN level): gather the bins, not tables of
    the whole map; large bins on a small map: the tables."""
    small_bins = torch.tensor([[0, 8.0, 8.0, 40.0, 40.0]] * 4)  # 8 cells: 7 x 7 bins of 1-2
    large_bins = torch.tensor([[0, 0.0, 0.0, 63.0, 63.0]] * 400)  # 64 cells: bins of 9-10
    cases = [((2, 4, 128, 128), small_bins, False), ((1, 4, 64, 64), large_bins, True)]
    for shape, rois, tables in cases:
        grid = roipool._bin_grid(rois, 0.25 if shape[-1] == 128 else 1.0, 7, 7, shape)
        assert roipool._use_tables(grid, shape) == tables


@pytest.mark.parametrize("method", POOL_METHODS)
def test_roi_pool_inference_path_equals_training_path(method):
    """Without a gradient, float32 uses smaller keys (no argmax): same values."""
    x = feature_map(2, 3, 9, 9, seed=9, relu=True)
    rois = random_rois(2, 30, 9, 9, 0.5, seed=10)
    with pool_method(method), torch.no_grad():
        plain = roi_pool(x, rois, 5, 0.5)
    exactly_equal(plain, forward_backward(tv.roi_pool, x, rois, 5, 0.5)[0])


@pytest.mark.parametrize("method", POOL_METHODS)
def test_roi_pool_gradcheck(method):
    x = feature_map(1, 2, 6, 7, torch.float64, seed=11).requires_grad_(True)
    rois = random_rois(1, 6, 6, 7, 1.0, torch.float64, seed=12)
    with pool_method(method):
        assert torch.autograd.gradcheck(lambda t: roi_pool(t, rois, 3), (x,))
        assert torch.autograd.gradgradcheck(lambda t: roi_pool(t, rois, 3), (x,))


# ----------------------------------------------------------------------------------------
# RoIAlign (average) against torchvision: to rounding
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
def test_roi_align_equals_torchvision(dtype, aligned, sampling_ratio):
    x = feature_map(2, 3, 9, 11, dtype, seed=13)
    rois = random_rois(2, 40, 9, 11, 0.25, dtype, seed=14)
    ours = forward_backward(roi_align, x, rois, (5, 4), 0.25, sampling_ratio, aligned)
    theirs = forward_backward(tv.roi_align, x, rois, (5, 4), 0.25, sampling_ratio, aligned)
    torch.testing.assert_close(ours[0], theirs[0], **tolerance(dtype))
    torch.testing.assert_close(ours[1], theirs[1], **tolerance(dtype))


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    ph=st.integers(1, 6),
    pw=st.integers(1, 6),
    scale=st.sampled_from([1.0, 0.5, 0.25, 1 / 16, 1 / 3]),
    sampling_ratio=st.integers(-1, 3),
    aligned=st.booleans(),
)
def test_roi_align_random(seed, height, width, ph, pw, scale, sampling_ratio, aligned):
    x = feature_map(2, 2, height, width, torch.float64, seed=seed)
    rois = random_rois(2, 10, height, width, scale, torch.float64, seed=seed + 1)
    args = ((ph, pw), scale, sampling_ratio, aligned)
    ours = forward_backward(roi_align, x, rois, *args)
    theirs = forward_backward(tv.roi_align, x, rois, *args)
    torch.testing.assert_close(ours[0], theirs[0], **tolerance(torch.float64))
    torch.testing.assert_close(ours[1], theirs[1], **tolerance(torch.float64))


def test_roi_align_adaptive_grid_differs_by_roi():
    """sampling_ratio <= 0: ceil(roi / bins) points per bin side, from 1 for tiny boxes to
    many for big ones, all in one call."""
    x = feature_map(1, 2, 40, 40, torch.float64, seed=15)
    rois = torch.tensor(
        [[0, 1, 1, 2, 2], [0, 0, 0, 39, 39], [0, 3, 5, 30, 9], [0, -10, -10, 60, 60]],
        dtype=torch.float64,
    )
    ours = forward_backward(roi_align, x, rois, 3, 1.0, -1, True)
    theirs = forward_backward(tv.roi_align, x, rois, 3, 1.0, -1, True)
    torch.testing.assert_close(ours[0], theirs[0], **tolerance(torch.float64))
    torch.testing.assert_close(ours[1], theirs[1], **tolerance(torch.float64))


def test_roi_align_reversed_aligned_box_has_no_points():
    """With aligned=True a reversed box has a negative size, hence no sampling points:
    zeros (torchvision's kernel runs no loop iteration), and for max mode too."""
    x = feature_map(1, 2, 5, 5, seed=16)
    rois = torch.tensor([[0.0, 4, 4, 1, 1]])
    for mode in ("avg", "max"):
        out = roi_align(x, rois, 2, 1.0, -1, aligned=True, mode=mode)
        exactly_equal(out, torch.zeros(1, 2, 2, 2))
    exactly_equal(roi_align(x, rois, 2, 1.0, -1, True), tv.roi_align(x, rois, 2, 1.0, -1, True))


def test_roi_align_gradcheck():
    x = feature_map(2, 2, 5, 6, torch.float64, seed=17).requires_grad_(True)
    rois = random_rois(2, 5, 5, 6, 1.0, torch.float64, seed=18)
    for aligned in (False, True):
        for mode in ("avg", "max"):

            def f(t, aligned=aligned, mode=mode):
                return roi_align(t, rois, (2, 3), 1.0, 2, aligned, mode)

            assert torch.autograd.gradcheck(f, (x,))
    # The backward is itself differentiable (the sparse gather's transpose).
    assert torch.autograd.gradgradcheck(lambda t: roi_align(t, rois, 2, 1.0, -1), (x,))


# ----------------------------------------------------------------------------------------
# The reference versions (loops written from the papers' definitions), and RoIAlign max
# judged by the reference where torchvision has no oracle
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sampling_ratio", "aligned"), [(2, False), (3, True), (-1, False)])
def test_reference_loop_equals_torchvision_in_avg_mode(sampling_ratio, aligned):
    """The reference loop is right (checked where an oracle exists), forward and backward,
    and so is the fast version beside it..."""
    x = feature_map(2, 3, 7, 8, torch.float64, seed=19)
    rois = random_rois(2, 4, 7, 8, 0.5, torch.float64, seed=20)
    args = ((3, 2), 0.5, sampling_ratio, aligned)
    ref = forward_backward(roi_align_reference, x, rois, *args)
    theirs = forward_backward(tv.roi_align, x, rois, *args)
    ours = forward_backward(roi_align, x, rois, *args)
    for other in (theirs, ours):
        torch.testing.assert_close(ref[0], other[0], **tolerance(torch.float64))
        torch.testing.assert_close(ref[1], other[1], **tolerance(torch.float64))


@pytest.mark.parametrize("dtype", FLOATS)
def test_roi_align_reference_equals_fast_version_in_float32_too(dtype):
    x = feature_map(2, 3, 9, 11, dtype, seed=25)
    rois = random_rois(2, 20, 9, 11, 0.25, dtype, seed=26)
    for mode in ("avg", "max"):
        ref = roi_align_reference(x, rois, 4, 0.25, -1, False, mode)
        torch.testing.assert_close(
            ref, roi_align(x, rois, 4, 0.25, -1, False, mode), **tolerance(dtype)
        )


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize(("output_size", "scale"), [(7, 0.25), ((3, 5), 0.5), (2, 1 / 16)])
def test_roi_pool_reference_equals_torchvision_and_the_fast_version(
    dtype, relu, output_size, scale
):
    """The outputs exactly; the gradients to rounding (several bins that pick one cell add
    up their gradients in another order). ReLU maps: ties go to the first cell of a bin."""
    x = feature_map(2, 3, 9, 11, dtype, seed=27, relu=relu)
    rois = random_rois(2, 30, 9, 11, scale, dtype, seed=28)
    ref = forward_backward(roi_pool_reference, x, rois, output_size, scale)
    for fn in (tv.roi_pool, roi_pool):
        out, grad = forward_backward(fn, x, rois, output_size, scale)
        exactly_equal(ref[0], out)
        torch.testing.assert_close(ref[1], grad, **tolerance(dtype))


def test_reference_versions_take_the_same_inputs():
    x = feature_map(2, 3, 6, 6, seed=29)
    boxes = [torch.tensor([[1.0, 2.0, 20.0, 18.0]]), torch.tensor([[0.0, 0.0, 9.0, 30.0]])]
    for ref, fast in ((roi_pool_reference, roi_pool), (roi_align_reference, roi_align)):
        torch.testing.assert_close(ref(x, boxes, 2, 0.25), fast(x, boxes, 2, 0.25))
        assert ref(x, [torch.zeros(0, 4)], 3, 0.25).shape == (0, 3, 3, 3)
        with pytest.raises(ValueError, match="shape \\(N, C, H, W\\)"):
            ref(x[0], boxes, 2, 0.25)


@pytest.mark.parametrize(
    ("sampling_ratio", "aligned", "relu"), [(2, False, False), (3, True, False), (-1, False, True)]
)
def test_roi_align_max_equals_reference_loop(sampling_ratio, aligned, relu):
    """... so it can judge the max version, forward and backward (with ReLU features, ties
    at 0 too: the gradient goes to the first winning point, as torch.max picks it)."""
    x = feature_map(2, 3, 7, 8, torch.float64, seed=21, relu=relu)
    rois = random_rois(2, 4, 7, 8, 0.5, torch.float64, seed=22)
    args = ((3, 2), 0.5, sampling_ratio, aligned)
    ours = forward_backward(roi_align, x, rois, *args, mode="max")
    ref = forward_backward(lambda t, r, *a: roi_align_reference(t, r, *a, "max"), x, rois, *args)
    torch.testing.assert_close(ours[0], ref[0], **tolerance(torch.float64))
    torch.testing.assert_close(ours[1], ref[1], **tolerance(torch.float64))


def test_roi_align_max_is_at_least_avg():
    x = feature_map(2, 4, 9, 9, seed=23)
    rois = random_rois(2, 30, 9, 9, 0.5, seed=24)
    avg = roi_align(x, rois, 4, 0.5, 2, mode="avg")
    assert (roi_align(x, rois, 4, 0.5, 2, mode="max") >= avg - 1e-6).all()


# ----------------------------------------------------------------------------------------
# RoIWarp
# ----------------------------------------------------------------------------------------


def on_grid_rois(seed=25):
    """Boxes whose corners are whole cells at stride 16 (scale 1/16 is exact)."""
    gen = torch.Generator().manual_seed(seed)
    corners = torch.randint(-2, 12, (20, 4), generator=gen).float()
    boxes = torch.cat(
        (corners[:, :2].minimum(corners[:, 2:]), corners[:, :2].maximum(corners[:, 2:])), 1
    )
    batch = torch.randint(0, 2, (20, 1), generator=gen).float()
    return torch.cat((batch, boxes * 16), 1)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_warp_equals_roi_align_on_grid_boxes(mode, sampling_ratio, aligned):
    x = feature_map(2, 3, 10, 10, seed=26)
    rois = on_grid_rois()
    warp = roi_warp(x, rois, 4, 1 / 16, sampling_ratio, mode, aligned)
    exactly_equal(warp, roi_align(x, rois, 4, 1 / 16, sampling_ratio, aligned, mode))


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_roi_warp_is_roi_align_on_the_rounded_box(mode):
    x = feature_map(2, 3, 10, 10, seed=27)
    rois = on_grid_rois() + torch.tensor([0.0, 5.3, -4.9, 7.7, 2.2])  # off the grid
    warp = roi_warp(x, rois, 4, 1 / 16, 2, mode)
    align = roi_align(x, rois, 4, 1 / 16, 2, mode=mode)
    assert (warp - align).abs().max() > 1e-3  # the rounding shows
    rounded = rois.clone()
    rounded[:, 1:] = torch.round(rois[:, 1:] / 16) * 16  # no exact halves here
    exactly_equal(warp, roi_align(x, rounded, 4, 1 / 16, 2, mode=mode))


def test_roi_warp_gradcheck():
    x = feature_map(1, 2, 6, 6, torch.float64, seed=28).requires_grad_(True)
    rois = random_rois(1, 5, 6, 6, 0.5, torch.float64, seed=29)
    for mode in ("avg", "max"):
        assert torch.autograd.gradcheck(lambda t, m=mode: roi_warp(t, rois, 3, 0.5, 2, m), (x,))


# ----------------------------------------------------------------------------------------
# The quantisation, made visible (chapter 06)
# ----------------------------------------------------------------------------------------


def test_x_1_1_and_2_2_pool_the_same_cells_at_stride_16():
    """Mask R-CNN section 3: RoIPool's rounding maps x = 1.1 and x = 2.2 to one cell."""
    a, b = (1.1, 1.1, 101.1, 81.1), (2.2, 2.2, 102.2, 82.2)  # the same box, moved
    exactly_equal(roi_pool_cells(a, 1 / 16, 7), roi_pool_cells(b, 1 / 16, 7))
    x = feature_map(1, 4, 8, 8, seed=30)
    rois = torch.tensor([[0.0, *a], [0.0, *b]])
    pooled = roi_pool(x, rois, 7, 1 / 16)
    exactly_equal(pooled[0], pooled[1])
    # RoIAlign's sampling points follow the box: the first column moves by 1.1 / 16 cell.
    pa = roi_align_sampling_points(a, 7, 1 / 16, 2)
    pb = roi_align_sampling_points(b, 7, 1 / 16, 2)
    assert pa.shape == pb.shape == (7, 7, 2, 2, 2)
    assert abs(float(pb[0, 0, 0, 0, 0] - pa[0, 0, 0, 0, 0]) - 1.1 / 16) < 1e-6
    aligned = roi_align(x, rois, 7, 1 / 16, 2)
    assert (aligned[0] - aligned[1]).abs().max() > 1e-3


def test_roi_pool_cells_are_what_roi_pool_pools():
    """On a map whose value is its flat cell index, each bin's maximum is its bottom-right
    cell: the cells roi_pool_cells reports (clipped with feature_size)."""
    height, width = 7, 9
    x = torch.arange(height * width, dtype=torch.float32).view(1, 1, height, width)
    for box in [(3.0, 2.0, 30.0, 20.0), (-8.0, 5.0, 14.0, 40.0), (10.0, 10.0, 11.0, 11.0)]:
        cells = roi_pool_cells(box, 0.5, (3, 4), feature_size=(height, width))
        pooled = roi_pool(x, torch.tensor([[0.0, *box]]), (3, 4), 0.5)[0, 0]
        x0, y0, x1, y1 = cells.unbind(-1)
        expected = torch.where((x1 > x0) & (y1 > y0), (y1 - 1) * width + (x1 - 1), 0)
        exactly_equal(pooled, expected.float())


def test_roi_pool_cells_unclipped_and_rounding():
    cells = roi_pool_cells(torch.tensor([8.0, 4.0, 20.0, 12.0]), 0.25, 2)
    # x: round(2) .. round(5) -> 4 cells, bins [2, 4), [4, 6); y: 1 .. 3 -> 3 cells,
    # bins [1, 3) and [2, 4) (1.5-cell bins overlap).
    exactly_equal(cells[0, 0], torch.tensor([2, 1, 4, 3]))
    exactly_equal(cells[1, 1], torch.tensor([4, 2, 6, 4]))
    # Halves round away from zero, as C's round does: 2.5 -> 3, -0.5 -> -1.
    exactly_equal(
        roi_pool_cells((10.0, -2.0, 10.0, -2.0), 0.25, 1)[0, 0], torch.tensor([3, -1, 4, 0])
    )


def test_roi_align_sampling_points_values():
    points = roi_align_sampling_points((0.0, 0.0, 8.0, 4.0), (2, 2), 0.5, 2, aligned=False)
    # The RoI spans x in [0, 4], y in [0, 2]; bins 2 x 1 cells; points at 1/4 and 3/4.
    assert points.shape == (2, 2, 2, 2, 2)
    exactly_equal(points[0, 0, :, :, 0], torch.tensor([[0.5, 1.5], [0.5, 1.5]]))
    exactly_equal(points[0, 0, :, :, 1], torch.tensor([[0.25, 0.25], [0.75, 0.75]]))
    exactly_equal(points[1, 1, 1, 1], torch.tensor([3.5, 1.75]))
    shifted = roi_align_sampling_points((0.0, 0.0, 8.0, 4.0), (2, 2), 0.5, 2, aligned=True)
    exactly_equal(shifted, points - 0.5)
    # Adaptive: ceil(4 / 2) = 2 points across, ceil(2 / 2) = 1 down.
    assert roi_align_sampling_points((0.0, 0.0, 8.0, 4.0), 2, 0.5).shape == (2, 2, 1, 2, 2)


def test_roi_align_bins_tile_the_box_and_hold_their_points():
    bins = roi_align_bins((0.0, 0.0, 8.0, 4.0), (2, 2), 0.5)
    # The RoI spans x in [0, 4], y in [0, 2]: four bins of 2 x 1 cells, nothing rounded.
    exactly_equal(bins[0, 0], torch.tensor([0.0, 0.0, 2.0, 1.0]))
    exactly_equal(bins[1, 1], torch.tensor([2.0, 1.0, 4.0, 2.0]))
    exactly_equal(roi_align_bins((0.0, 0.0, 8.0, 4.0), 2, 0.5, aligned=True), bins - 0.5)
    for box, ratio, aligned in [
        ((3.3, 5.1, 70.0, 60.2), 2, False),
        ((20.0, 10.0, 40.5, 90.0), -1, True),
    ]:
        bins = roi_align_bins(box, (3, 4), 1 / 16, aligned)
        points = roi_align_sampling_points(box, (3, 4), 1 / 16, ratio, aligned)
        x, y = points[..., 0], points[..., 1]  # (3, 4, n_y, n_x)
        x1, y1, x2, y2 = (bins[..., i, None, None] for i in range(4))
        assert bool(((x1 < x) & (x < x2) & (y1 < y) & (y < y2)).all())  # every point in its bin
        # the bins tile the scaled box: each starts where the previous ends
        exactly_equal(bins[:, 1:, 0], bins[:, :-1, 2])
        offset = 0.5 if aligned else 0.0
        assert abs(float(bins[0, 0, 0]) - (box[0] / 16 - offset)) < 1e-6
        assert abs(float(bins[-1, -1, 3]) - (box[3] / 16 - offset)) < 1e-5
    # A box thinner than a cell is widened to one cell when not aligned, as roi_align does.
    thin = roi_align_bins((16.0, 16.0, 17.0, 48.0), 1, 1 / 16)[0, 0]
    exactly_equal(thin, torch.tensor([1.0, 1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="four numbers"):
        roi_align_bins((1.0, 2.0, 3.0), 2)


# ----------------------------------------------------------------------------------------
# Shapes, list boxes, empty boxes, layouts
# ----------------------------------------------------------------------------------------


ALL_OPS = [
    ("roi_pool", lambda x, b, s: roi_pool(x, b, s, 0.5)),
    ("roi_align", lambda x, b, s: roi_align(x, b, s, 0.5, -1, True)),
    ("roi_align_max", lambda x, b, s: roi_align(x, b, s, 0.5, 2, mode="max")),
    ("roi_warp", lambda x, b, s: roi_warp(x, b, s, 0.5)),
    ("roi_warp_max", lambda x, b, s: roi_warp(x, b, s, 0.5, mode="max")),
]


@pytest.mark.parametrize(("name", "op"), ALL_OPS)
def test_list_of_boxes_equals_tensor_and_output_size_forms(name, op):
    x = feature_map(3, 2, 8, 8, seed=31)
    per_image = [random_rois(1, n, 8, 8, 0.5, seed=32 + n)[:, 1:] for n in (3, 0, 5)]
    rois = torch.cat(
        [torch.cat((torch.full((len(b), 1), float(i)), b), 1) for i, b in enumerate(per_image)]
    )
    as_list = op(x, per_image, 3)
    exactly_equal(as_list, op(x, rois, 3))
    exactly_equal(as_list, op(x, rois, (3, 3)))
    assert as_list.shape == (len(rois), 2, 3, 3)
    # A list may stop before the last images (they have no boxes), as in torchvision.
    exactly_equal(op(x, per_image[:1], 3), op(x, rois[: len(per_image[0])], 3))


@pytest.mark.parametrize(("name", "op"), ALL_OPS)
def test_no_boxes(name, op):
    x = feature_map(2, 3, 6, 6, seed=33).requires_grad_(True)
    for boxes in (torch.zeros(0, 5), [torch.zeros(0, 4), torch.zeros(0, 4)], []):
        out = op(x, boxes, (2, 4))
        assert out.shape == (0, 3, 2, 4)
        out.sum().backward()
        exactly_equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize(("name", "op"), ALL_OPS)
def test_layouts_and_dtypes(name, op):
    """Non-contiguous and channels_last inputs, float64 boxes with float32 features: same
    results as the contiguous float32 case; outputs contiguous, in the input's dtype."""
    x = feature_map(2, 6, 7, 9, seed=34)
    rois = random_rois(2, 12, 7, 9, 0.5, seed=35)
    expected = op(x, rois, 3)
    assert expected.is_contiguous() and expected.dtype == torch.float32
    exactly_equal(op(x.to(memory_format=torch.channels_last), rois, 3), expected)
    strided = torch.stack((x, torch.zeros_like(x)), 2).flatten(1, 2)[:, ::2]
    assert not strided.is_contiguous()
    exactly_equal(op(strided, rois, 3), expected)
    exactly_equal(op(x, rois.double(), 3), expected)


# ----------------------------------------------------------------------------------------
# The switch
# ----------------------------------------------------------------------------------------


def test_get_roi_op_names():
    x = feature_map(2, 3, 8, 8, seed=36)
    rois = random_rois(2, 10, 8, 8, 0.25, seed=37)
    expected = {
        "roipool": roi_pool(x, rois, 4, 0.25),
        "roiwarp_max": roi_warp(x, rois, 4, 0.25, 2, "max"),
        "roiwarp_avg": roi_warp(x, rois, 4, 0.25, 2, "avg"),
        "roialign_max": roi_align(x, rois, 4, 0.25, 2, mode="max"),
        "roialign_avg": roi_align(x, rois, 4, 0.25, 2),
    }
    assert set(expected) == set(ROI_OP_NAMES)
    for name in ROI_OP_NAMES:
        op = get_roi_op(name)
        assert isinstance(op, RoIOp) and op.name == name and name in repr(op)
        exactly_equal(op(x, rois, 4, 0.25, 2), expected[name])
    exactly_equal(
        get_roi_op("roialign_avg", aligned=True)(x, rois, 4, 0.25, 2),
        roi_align(x, rois, 4, 0.25, 2, True),
    )
    with pytest.raises(ValueError, match="Did you mean 'roialign_avg'"):
        get_roi_op("roialign")
    with pytest.raises(ValueError, match="choose one of"):
        get_roi_op("RoIAlign")


# ----------------------------------------------------------------------------------------
# Input validation: what is wrong and what to do
# ----------------------------------------------------------------------------------------

X = torch.zeros(2, 3, 5, 5)
ROIS = torch.tensor([[0.0, 0, 0, 4, 4]])


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda f: f(X[0], ROIS, 2), ValueError, r"input\[None\]"),
        (lambda f: f(X.long(), ROIS, 2), TypeError, "floating-point"),
        (lambda f: f(X.numpy(), ROIS, 2), TypeError, "torch.Tensor"),
        (lambda f: f(X[:, :, :0], ROIS, 2), ValueError, "no cells"),
        (lambda f: f(X, ROIS[:, 1:], 2), ValueError, "pass \\[boxes\\]"),
        (lambda f: f(X, ROIS[0], 2), ValueError, r"\(K, 5\)"),
        (lambda f: f(X, [ROIS], 2), ValueError, "already carry a batch index"),
        (lambda f: f(X, [ROIS[:, 1:]] * 3, 2), ValueError, "holds 2 image"),
        (lambda f: f(X, ((0, 0, 1, 1),), 2), TypeError, r"boxes\[0\] must be a \(L, 4\) tensor"),
        (lambda f: f(X, ROIS.numpy(), 2), TypeError, r"\(K, 5\) tensor or a list"),
        (lambda f: f(X, torch.tensor([[2.0, 0, 0, 1, 1]]), 2), ValueError, r"batch index 2\.0"),
        (lambda f: f(X, torch.tensor([[-1.0, 0, 0, 1, 1]]), 2), ValueError, r"\[0, 1\]"),
        (lambda f: f(X, torch.tensor([[0.5, 0, 0, 1, 1]]), 2), ValueError, "must be integers"),
        (lambda f: f(X, torch.tensor([[0.0, 0, math.nan, 1, 1]]), 2), ValueError, "nan or inf"),
        (lambda f: f(X, ROIS.to("meta"), 2), ValueError, "move the boxes"),
        (lambda f: f(X, ROIS, 0), ValueError, "output_size must be positive"),
        (lambda f: f(X, ROIS, (7, -1)), ValueError, "output_size must be positive"),
        (lambda f: f(X, ROIS, 7.0), TypeError, "int or a"),
        (lambda f: f(X, ROIS, (7,)), TypeError, "int or a"),
        (lambda f: f(X, ROIS, 2, 0.0), ValueError, "positive finite"),
        (lambda f: f(X, ROIS, 2, -0.0625), ValueError, "positive finite"),
        (lambda f: f(X, ROIS, 2, math.inf), ValueError, "positive finite"),
        (lambda f: f(X, ROIS, 2, "1/16"), TypeError, "must be a number"),
    ],
)
@pytest.mark.parametrize("fn", [roi_pool, roi_align, roi_warp])
def test_input_errors(fn, call, error, match):
    with pytest.raises(error, match=match):
        call(fn)


def test_mode_and_sampling_ratio_errors():
    for fn in (roi_align, roi_warp):
        with pytest.raises(ValueError, match="'avg'"):
            fn(X, ROIS, 2, mode="mean")
        with pytest.raises(TypeError, match="sampling_ratio must be an int"):
            fn(X, ROIS, 2, 1.0, 2.0)
    with pytest.raises(ValueError, match="four numbers"):
        roi_pool_cells((0, 0, 1), 1.0, 2)
    with pytest.raises(ValueError, match="four numbers"):
        roi_align_sampling_points(torch.zeros(1, 4), 2)


def test_thread_setting_is_respected_and_restored(monkeypatch):
    """The layers run their CPU work on rcnn_steps.ops.roi_checks.CPU_THREADS threads (see its
    comment) and give torch its own setting back; the result does not depend on it."""
    x = feature_map(2, 4, 9, 9, seed=46)
    rois = random_rois(2, 20, 9, 9, 0.5, seed=47)
    torch.set_num_threads(2)
    seen = []
    real_apply = roialign._WeightedGather.apply

    def spy(*args):
        seen.append(torch.get_num_threads())
        return real_apply(*args)

    monkeypatch.setattr(roialign._WeightedGather, "apply", spy)
    results = {}
    for threads in (1, None):
        monkeypatch.setattr(roi_checks, "CPU_THREADS", threads)
        results[threads] = [op(x, rois, 3) for _, op in ALL_OPS]
        assert torch.get_num_threads() == 2
    assert seen[0] == 1 and seen[-1] == 2
    for a, b in zip(results[1], results[None], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 8, 1000])
def test_gather_into_maps_equals_one_gather_and_a_transpose(monkeypatch, chunk):
    """RoIAlign's chunked gather gives, bit for bit, what one embedding_bag over all bins
    and a transpose give, whatever the chunk size (10 RoIs: chunks that do not divide
    them, one chunk, one RoI per chunk), bins without entries included."""
    gen = torch.Generator().manual_seed(48)
    num_rois, ph, pw, channels, cells = 10, 3, 2, 5, 40
    x = torch.randn(cells, channels, generator=gen)
    counts = torch.randint(0, 4, (num_rois * ph * pw,), generator=gen)  # 0: empty bin
    offsets = torch.cumsum(counts, 0) - counts
    cols = torch.randint(0, cells, (int(counts.sum()),), generator=gen)
    weights = torch.rand(len(cols), generator=gen)
    rows = torch.arange(len(counts)).repeat_interleave(counts)
    flat = torch.nn.functional.embedding_bag(
        cols, x, offsets, mode="sum", per_sample_weights=weights
    )
    expected = flat.view(num_rois, ph, pw, channels).permute(0, 3, 1, 2).contiguous()
    monkeypatch.setattr(roialign, "GATHER_CHUNK_ROIS", chunk)
    out = roialign._gather_into_maps(x, cols, offsets, weights, ph, pw)
    assert out.shape == (num_rois, channels, ph, pw) and out.is_contiguous()
    assert torch.equal(out, expected)
    # and through the Function, with the gradient of the flat version
    xg = x.clone().requires_grad_(True)
    grad = torch.randn(expected.shape, generator=gen)
    roialign._WeightedGather.apply(xg, rows, cols, offsets, weights, (ph, pw)).backward(grad)
    xf = x.clone().requires_grad_(True)
    roialign._WeightedGather.apply(xf, rows, cols, offsets, weights).view(
        num_rois, ph, pw, channels
    ).permute(0, 3, 1, 2).backward(grad)
    assert torch.equal(xg.grad, xf.grad)


def test_no_device_specific_calls():
    for path in Path(rcnn_steps.ops.__file__).parent.glob("*.py"):
        assert ".cuda(" not in path.read_text(), path.name


# ----------------------------------------------------------------------------------------
# The same comparisons on CUDA (skipped without a GPU)
# ----------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestOnCuda:
    device = torch.device("cuda", 0)

    @pytest.mark.parametrize("dtype", FLOATS)
    @pytest.mark.parametrize("relu", [False, True])
    def test_roi_pool(self, dtype, relu):
        x = feature_map(2, 8, 13, 17, dtype, seed=40, relu=relu, device=self.device)
        rois = random_rois(2, 200, 13, 17, 0.25, dtype, seed=41).to(self.device)
        ours = forward_backward(roi_pool, x, rois, (5, 4), 0.25)
        theirs = forward_backward(tv.roi_pool, x, rois, (5, 4), 0.25)
        assert ours[0].device.type == "cuda"
        exactly_equal(ours[0], theirs[0])
        # Both backwards add with atomics on the GPU: the same terms, in any order.
        torch.testing.assert_close(ours[1], theirs[1], **tolerance(dtype))

    @pytest.mark.parametrize("dtype", FLOATS)
    @pytest.mark.parametrize("aligned", [False, True])
    @pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
    def test_roi_align(self, dtype, aligned, sampling_ratio):
        x = feature_map(2, 8, 13, 17, dtype, seed=42, device=self.device)
        rois = random_rois(2, 200, 13, 17, 0.25, dtype, seed=43).to(self.device)
        args = ((7, 6), 0.25, sampling_ratio, aligned)
        ours = forward_backward(roi_align, x, rois, *args)
        theirs = forward_backward(tv.roi_align, x, rois, *args)
        torch.testing.assert_close(ours[0], theirs[0], **tolerance(dtype))
        torch.testing.assert_close(ours[1], theirs[1], **tolerance(dtype))

    @pytest.mark.parametrize(("name", "op"), ALL_OPS)
    def test_same_as_on_cpu(self, name, op):
        x = feature_map(2, 4, 9, 9, torch.float64, seed=44)
        rois = random_rois(2, 30, 9, 9, 0.5, torch.float64, seed=45)
        on_cpu = forward_backward(op, x, rois, 3)
        on_gpu = forward_backward(op, x.to(self.device), rois.to(self.device), 3)
        torch.testing.assert_close(on_gpu[0].cpu(), on_cpu[0], **tolerance(torch.float64))
        torch.testing.assert_close(on_gpu[1].cpu(), on_cpu[1], **tolerance(torch.float64))


def test_bilinear_sample_weights_the_four_cells_and_reads_zero_far_outside():
    plane = torch.arange(12.0).reshape(1, 3, 4)  # value = 4 r + c
    assert bilinear_sample(plane, 1.0, 2.0).item() == 6.0  # on a cell centre: that cell
    assert bilinear_sample(plane, 0.5, 0.25).item() == pytest.approx(4 * 0.5 + 0.25)  # linear
    assert bilinear_sample(plane, -0.5, -0.5).item() == 0.0  # clamped onto cell (0, 0)
    assert bilinear_sample(plane, 2.5, 3.5).item() == 11.0  # past the last cell: the last
    assert bilinear_sample(plane, -1.5, 1.0).item() == 0.0  # more than a cell outside


def test_roi_pool_region_is_the_union_of_roipools_bins_and_its_iou():
    from torchvision.ops import box_iou as tv_box_iou

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(40, 2, generator=g) * 100
    wh = torch.rand(40, 2, generator=g) * 60 + 2
    boxes = torch.cat([xy, xy + wh], 1)
    for scale in (1 / 4, 1 / 16):
        regions, iou = roi_pool_region(boxes, scale)
        for box, region, value in zip(boxes, regions, iou, strict=True):
            cells = roi_pool_cells(box, scale, 7)
            union = torch.stack([cells[..., :2].amin((0, 1)), cells[..., 2:].amax((0, 1))])
            assert torch.equal(region, union.flatten().float() / scale)
            want = tv_box_iou(box[None], region[None])[0, 0]
            assert value == pytest.approx(want.item(), abs=1e-6)
    # on cell boundaries RoIPool reads the box exactly ... except its inclusive last cell
    _, iou = roi_pool_region(torch.tensor([[16.0, 16.0, 48.0, 48.0]]), 1 / 16)
    assert iou.item() == pytest.approx((32 * 32) / (48 * 48))
    # the error shrinks as the box spans more cells
    shifted = torch.tensor([[5.0, 5.0, 5.0 + w, 5.0 + w] for w in (16.0, 64.0, 256.0)])
    _, iou = roi_pool_region(shifted, 1 / 16)
    assert iou[0] < iou[1] < iou[2]
    with pytest.raises(ValueError, match=r"\(R, 4\) tensor"):
        roi_pool_region(torch.zeros(4), 1 / 16)
