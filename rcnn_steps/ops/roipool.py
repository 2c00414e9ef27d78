"""RoIPool, Fast R-CNN section 2.1: a RoI max-pooled over a grid of whole-cell bins.

A two-stage detector computes one feature map per image and then needs a fixed-size
feature (say 7 x 7) for every region of interest (RoI), whatever its size. :func:`roi_pool`
rounds the box to feature cells, cuts it into a ``ph x pw`` grid of integer-cell bins and
max-pools each bin. It quantises twice (image to cells, cells to bins), so boxes that
differ by most of a cell pool the same cells: at stride 16, x = 1.1 px and x = 2.2 px both
round to cell 0 (:func:`roi_pool_cells`). RoIPool treats ``round(x * spatial_scale)`` as a
cell index and pools the cells from the first to the last inclusive;
:func:`roi_pool_region` measures how much of each box that reads.

What is taught where: chapter 03 ("Fast R-CNN and RoIPool"): :func:`roi_pool_reference`,
:func:`roi_pool` and :func:`roi_pool_cells`; chapter 06 ("RoIAlign") sets
:func:`roi_pool_cells` beside RoIAlign's sampling points
(:mod:`~rcnn_steps.ops.roialign`); chapter 08 uses :func:`roi_pool_region`.

The fast :func:`roi_pool` is vectorised PyTorch: no Python loop runs over RoIs. Because it
does not read like the paper, :func:`roi_pool_reference` beside it does, looping over RoIs
and bins; the chapter teaches it first. ``tests/test_roi_ops.py`` checks both against
``torchvision.ops.roi_pool`` forward and backward, bit for bit, and
``benchmarks/bench_roi_ops.py`` times :func:`roi_pool` against torchvision's compiled
kernels. How it is computed, and why that way, is in the docstring of
:func:`_roi_pool_forward`. Arguments, coordinates and CPU threads: see
:mod:`~rcnn_steps.ops.roi_checks`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
from torch import Tensor

from rcnn_steps.ops.roi_checks import (
    Boxes,
    _check_input,
    _check_scale,
    _cpu_threads,
    _pair,
    _rois_from_boxes,
    _single_box,
)

__all__ = ["roi_pool", "roi_pool_cells", "roi_pool_reference", "roi_pool_region"]

#: torchvision's RoIPool starts every bin's running maximum at -FLT_MAX (in float64 too)
#: and keeps a value only if it is strictly greater, so a bin whose values are all
#: <= -FLT_MAX (or nan) outputs -FLT_MAX and passes no gradient. We reproduce that.
FLT_MAX = float(torch.finfo(torch.float32).max)

#: Upper bound on the memory of RoIPool's max tables (see :func:`_roi_pool_forward`); the
#: channels are processed in slices when the tables of all channels would not fit.
ROI_POOL_TABLE_BYTES = 512 * 2**20


# ----------------------------------------------------------------------------------------
# RoIPool (chapter 03)
# ----------------------------------------------------------------------------------------


def _round_half_away(v: Tensor) -> Tensor:
    """C's ``round``: halves away from zero (torch.round rounds halves to even, which
    would put x = 2.5 cells in cell 2 where torchvision's kernel says 3). ``v - trunc(v)``
    is exact in floating point, so the comparison with 0.5 is too."""
    t = v.trunc()
    return torch.where((v - t).abs() >= 0.5, t + v.sign(), t)


def _roi_pool_bins(rois: Tensor, spatial_scale: float, ph: int, pw: int):
    """Fast R-CNN's bins, computed as torchvision's kernel does, in the RoIs' dtype.

    The box is rounded to cells, ``x1 = round(x1 * scale)`` and likewise for the others,
    and covers cells x1..x2 inclusive, so its width is ``max(x2 - x1 + 1, 1)`` cells (a
    malformed box becomes one cell). With ``b = width / pw``, bin j covers the cells
    ``[floor(j * b), ceil((j + 1) * b))`` from x1: neighbouring bins overlap by a cell
    when b is not an integer, and a narrow box repeats cells across bins.

    Returns ``(hstart, hend)`` of shape ``(K, ph)`` and ``(wstart, wend)`` of shape
    ``(K, pw)``, int64 half-open cell ranges, not yet clipped to the map.
    """
    dtype = rois.dtype
    # The scale in the RoIs' dtype, as the kernel's `T spatial_scale` parameter holds it.
    scale = torch.tensor(spatial_scale, dtype=dtype, device=rois.device)
    x1, y1, x2, y2 = (_round_half_away(rois[:, i] * scale).long() for i in range(1, 5))
    roi_w = (x2 - x1 + 1).clamp(min=1)
    roi_h = (y2 - y1 + 1).clamp(min=1)
    bin_w = (roi_w.to(dtype) / pw)[:, None]  # (K, 1)
    bin_h = (roi_h.to(dtype) / ph)[:, None]
    j = torch.arange(pw, dtype=dtype, device=rois.device)
    i = torch.arange(ph, dtype=dtype, device=rois.device)
    wstart = torch.floor(j * bin_w).long() + x1[:, None]
    wend = torch.ceil((j + 1) * bin_w).long() + x1[:, None]
    hstart = torch.floor(i * bin_h).long() + y1[:, None]
    hend = torch.ceil((i + 1) * bin_h).long() + y1[:, None]
    return hstart, hend, wstart, wend


def _floor_log2_table(n: int, device: torch.device) -> Tensor:
    """``table[m] = floor(log2(m))`` for m in 1..n (``table[0]`` unused), exactly."""
    return torch.tensor([0] + [m.bit_length() - 1 for m in range(1, n + 1)], device=device)


def _pool_corners(rois: Tensor, spatial_scale: float, ph: int, pw: int, shape):
    """Where each RoIPool bin reads the tables of :func:`_roi_pool_forward`.

    Returns the ``(K, ph, pw)`` mask of empty bins; the number of table levels needed in
    each direction; the ``(K * ph * pw,)`` rows of the ``(levels, N, H, W)`` table (see
    :func:`_key_tables`) holding each bin's top-left block, or the extra last row (key 0)
    for an empty bin; and, for the top-right, bottom-left and bottom-right blocks, the
    bins (flat indices) whose block there differs from those already read, with its rows.
    """
    n_img, _, height, width = shape
    batch = rois[:, 0].long()
    hstart, hend, wstart, wend = _roi_pool_bins(rois, spatial_scale, ph, pw)
    # Clip to the map, as the kernel does; a bin outside the map becomes empty.
    hstart, hend = hstart.clamp(0, height), hend.clamp(0, height)
    wstart, wend = wstart.clamp(0, width), wend.clamp(0, width)
    bin_h = (hend - hstart)[:, :, None]  # (K, ph, 1)
    bin_w = (wend - wstart)[:, None, :]  # (K, 1, pw)
    empty = (bin_h <= 0) | (bin_w <= 0)  # (K, ph, pw)

    log2 = _floor_log2_table(max(height, width), rois.device)
    level_h = log2[bin_h.clamp(min=1)]  # (K, ph, 1)
    level_w = log2[bin_w.clamp(min=1)]  # (K, 1, pw)
    n_lh = int(level_h.max()) + 1 if rois.shape[0] else 1
    n_lw = int(level_w.max()) + 1 if rois.shape[0] else 1

    top, left = hstart[:, :, None], wstart[:, None, :]
    bottom = hend[:, :, None] - (1 << level_h)
    right = wend[:, None, :] - (1 << level_w)
    block = ((level_h * n_lw + level_w) * n_img + batch[:, None, None]) * (height * width)
    spare = n_lh * n_lw * n_img * height * width  # the extra last row
    corners = [
        torch.where(empty, spare, block + r * width + c).reshape(-1)
        for r, c in ((top, left), (top, right), (bottom, left), (bottom, right))
    ]
    # A side of 2^k cells is one block: then the two corners on that side coincide (the
    # usual case for small bins: 1, 2 and 4 cells). List, for the three other corners,
    # only the bins where they add something.
    tall = (bottom != top) & ~empty  # (K, ph, pw)
    wide = (right != left) & ~empty
    extra = []
    for need, corner in zip((wide, tall, tall & wide), corners[1:], strict=True):
        bins = need.reshape(-1).nonzero().squeeze(1)
        extra.append((bins, corner[bins]))
    return empty, n_lh, n_lw, corners[0], extra


def _roi_pool_forward(
    input: Tensor, rois: Tensor, ph: int, pw: int, spatial_scale: float, need_argmax: bool
):
    """RoIPool's output and argmax, without autograd. See :func:`roi_pool` for the maths.

    The naive computation scans every cell of every bin for every channel: K x C x (area
    of the RoI) comparisons, which is what torchvision's CPU kernel does, one RoI at a
    time. Vectorising that scan means padding every bin to the largest bin, or masks over
    the map (K x ph x H row masks and K x pw x W column masks, then masked maxima over
    K x C x H x W values): most of the work is spent on cells outside the bin.

    We answer each bin in O(1) instead, with a 2-D sparse table (range-maximum query).
    For every level (a, b), ``table[a, b][n, h, w, c]`` holds the maximum of the
    ``2^a x 2^b`` block of image n, channel c, whose top-left cell is (h, w). A bin of
    ``bh x bw`` cells is covered by the four blocks of size ``2^floor(log2 bh) x
    2^floor(log2 bw)`` anchored at its four corners (they overlap, which is harmless for a
    maximum), so its maximum is the maximum of four table entries: four gathers of C
    contiguous values per bin, whatever its size. Where a side is a power of two the
    blocks on that side coincide, so only the bins with distinct blocks gather the other
    corners (at 7 x 7 over the benchmark's boxes, a quarter of the bins need a second
    block, 6% all four: the gathers took 35-65% less time). Level (a, b) is one
    elementwise maximum of two shifted copies of level (a, b - 1) (or (a - 1, 0)), so the
    tables cost ``levels x N x C x H x W`` work and memory; only the levels the largest
    bin needs are built (3 x 3 for 7 x 7 bins over boxes up to ~30 cells).

    In the benchmark's training step (K = 512, C = 256, 50 x 50, 7 x 7, one thread) the
    time splits, by the profiler, into rough quarters: building the keys and tables, the
    corner gathers, decoding the keys and transposing to (K, C, ph, pw), and the backward
    (target indices, transposing the gradient, one scatter-add). Every step is a pass
    over memory; what is left is PyTorch's one-op-at-a-time execution, not arithmetic.

    The gradient goes to one cell per bin, the argmax, with torchvision's tie rule: its
    kernel scans a bin row by row and keeps a value only if it is strictly greater, so
    among equal maxima the first in row-major order wins, the one with the smallest flat
    index ``h * W + w``. (ReLU features make ties common: a bin of zeros must send its
    gradient to its first cell.) So the tables do not hold values but int64 keys that
    order like (value, -index) (:func:`_max_keys`): the maximum key is the maximum value
    at its first cell, for a block and for a union of blocks alike (a cell attaining the
    union's maximum attains its block's). One integer maximum merges values and argmaxes.

    Python loops only over the table levels (at most log2 H x log2 W), the three extra
    corners and, beyond a memory budget, slices of channels; never over RoIs.

    Returns the ``(K, C, ph, pw)`` values and, if ``need_argmax``, what the backward
    needs (else None): the ``(K, ph, pw, C)`` int64 keys, whose low words
    ``_KEY_CELL_MAX - cell`` encode the argmax (cell = ``h * W + w`` within the image and
    channel; 0 where nothing was pooled), the ``(K, ph, pw)`` mask of empty bins (None if
    there is none), and whether the input holds values that torchvision never picks.
    """
    n_img, channels, height, width = input.shape
    num_rois = rois.shape[0]
    device = input.device
    batch = rois[:, 0].long()
    with _cpu_threads(device, limit=1):
        empty, n_lh, n_lw, first, extra = _pool_corners(rois, spatial_scale, ph, pw, input.shape)
    rows = n_lh * n_lw * n_img * height * width

    x = input.detach().permute(0, 2, 3, 1)  # (N, H, W, C): each cell's channels together
    # Without a gradient to route, a float32 forward needs no argmax, and the keys shrink
    # to the values' int32 order: half the bytes to build, gather and compare.
    with_cell = need_argmax or input.dtype == torch.float64
    per_channel = (rows + 1) * (8 if with_cell else 4)
    chunk = max(1, min(channels, ROI_POOL_TABLE_BYTES // per_channel))
    best = []
    # Usually one pass; channel slices only when all channels' tables would not fit.
    for c0 in range(0, channels, chunk):
        keys = _key_tables(_max_keys(x[..., c0 : c0 + chunk], with_cell), n_lh, n_lw)
        key = keys.index_select(0, first)  # (K * ph * pw, chunk)
        for bins, rows in extra:
            if len(bins) == 0:
                continue
            # Only the bins this corner adds to: gather, compare, write back.
            part = keys.index_select(0, rows)
            key.index_copy_(0, bins, torch.maximum(key.index_select(0, bins), part, out=part))
        best.append(key)
        del keys
    key = torch.cat(best, 1) if len(best) > 1 else best[0]
    key = key.view(num_rois, ph, pw, channels)
    high, low = _split_key(key) if with_cell else (key, None)

    # Decode in the computed (K, ph, pw, C) layout, where every pass is contiguous, and
    # transpose the values once at the end (measured faster than decoding transposed).
    if input.dtype == torch.float64:
        # Ranks do not decode to values: read the values at the argmax. low holds
        # _KEY_CELL_MAX - cell, and 0 where nothing was pooled.
        pooled = low != 0
        cell = torch.where(pooled, _KEY_CELL_MAX - low, 0)
        plane = batch[:, None] * channels + torch.arange(channels, device=device)
        flat = plane[:, None, None, :] * (height * width) + cell
        value = input.detach().reshape(-1)[flat.view(-1)].view(key.shape)
        fill = torch.where(empty, 0.0, -FLT_MAX).to(value.dtype)[..., None]
        value = torch.where(pooled, value, fill)
    else:
        # Undo the order trick: flip the bits of negative numbers back, read as float32.
        high = high.contiguous()
        bits = (high >> 31).bitwise_and_(0x7FFFFFFF).bitwise_xor_(high)
        value = bits.view(torch.float32).to(input.dtype)
    # A bin pools nothing when it is empty or holds only values torchvision never picks;
    # the backward needs guards only for those that occur.
    out = value.permute(0, 3, 1, 2).contiguous()
    if not need_argmax:
        return out, None
    any_empty = bool(empty.any())
    any_unusable = not bool((x > -FLT_MAX).all())
    return out, (key, empty if any_empty else None, any_unusable)


#: Keys of :func:`_max_keys`: the low 32 bits hold ``_KEY_CELL_MAX - cell`` (so that a
#: larger key means an earlier cell); 0 there means "no cell".
_KEY_CELL_MAX = 2**31 - 1
_LITTLE_ENDIAN = sys.byteorder == "little"


def _split_key(key: Tensor) -> tuple[Tensor, Tensor]:
    """The high and low 32 bits of int64 keys, as int32 tensors (views when we can)."""
    if _LITTLE_ENDIAN:
        halves = key.view(torch.int32)  # (..., 2 * C): low and high words interleaved
        return halves[..., 1::2], halves[..., 0::2]
    return (key >> 32).int(), (key & 0xFFFFFFFF).int()


def _max_keys(x: Tensor, with_cell: bool = True) -> Tensor:
    """int64 keys, one per value of ``x`` (N, H, W, C), that order like (value, -cell).

    ``key = order(value) * 2^32 + (2^31 - 1 - cell)`` with ``cell = h * W + w`` and
    ``order`` an int32 that orders (and ties) like the values. For float32 (and narrower
    types, upcast exactly) ``order`` is the IEEE bit pattern read as an integer, with the
    bits of negative numbers flipped: the classic trick that makes floats sort as
    integers, applied after turning -0.0 into +0.0 (they compare equal; so a bin whose
    first maximum is -0.0 outputs +0.0, which torch.equal still calls equal). A float64's
    64 bits leave no room for the cell, so there ``order`` is the value's dense rank in its
    (image, channel) map, from a sort: slower, used by the tests rather than by models.

    Values torchvision's kernel never selects (nan, and <= -FLT_MAX: it starts at -FLT_MAX
    and keeps strictly greater values) get ``order(-FLT_MAX) * 2^32`` (rank 0 for
    float64): below every usable key, decoding to -FLT_MAX with "no cell", which is
    torchvision's output for a bin of only such values.

    With ``with_cell=False`` (float32 only) the keys are just ``order(value)``, int32.
    """
    n_img, height, width, channels = x.shape
    unusable = ~(x > -FLT_MAX)  # True for nan too
    if x.dtype == torch.float64:
        planes = x.permute(0, 3, 1, 2).reshape(n_img * channels, height * width)
        sorted_values, position = planes.sort(dim=1)
        step = torch.ones_like(sorted_values, dtype=torch.int32)
        step[:, 1:] = (sorted_values[:, 1:] != sorted_values[:, :-1]).int()
        rank = torch.empty_like(step).scatter_(1, position, step.cumsum(1, dtype=torch.int32))
        order = rank.view(n_img, channels, height, width).permute(0, 2, 3, 1)
        floor = 0
    else:
        order = _float_order(x.float() + 0.0)  # + 0.0 turns -0.0 into +0.0
        floor = int(_float_order(torch.tensor(-FLT_MAX)))
        if not with_cell:
            return order.masked_fill_(unusable, floor)
    cell = torch.arange(height * width, device=x.device).view(1, height, width, 1)
    key = order.long() * 2**32 + (_KEY_CELL_MAX - cell)
    return key.masked_fill_(unusable, floor * 2**32)


def _float_order(x: Tensor) -> Tensor:
    """float32 to int32 with the same order: the bit pattern, the lower 31 bits flipped
    for negative numbers (whose patterns otherwise grow as the numbers fall)."""
    bits = x.view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def _key_tables(key: Tensor, n_lh: int, n_lw: int) -> Tensor:
    """The 2-D sparse tables of :func:`_roi_pool_forward` over ``key`` (N, H, W, C).

    Returns ``(n_lh * n_lw * N * H * W + 1, C)`` rows of keys: row ``((a * n_lw + b) * N +
    n) * H * W + h * W + w`` is the largest key of the ``2^a x 2^b`` block at (h, w),
    filled where the block fits in the map (``h + 2^a <= H``, ``w + 2^b <= W``), the only
    blocks a bin asks for (the rest is never read and left uninitialised). The last row
    holds key 0: value 0, no cell, for empty bins.
    """
    n_img, height, width, channels = key.shape
    rows = n_lh * n_lw * n_img * height * width
    flat = key.new_empty((rows + 1, channels))
    flat[rows] = 0
    table = flat[:rows].view(n_lh, n_lw, n_img, height, width, channels)
    table[0, 0] = key
    for a in range(1, n_lh):
        # 2^a rows: the blocks of 2^(a-1) rows at h and h + 2^(a-1).
        s, h = 1 << (a - 1), height - (1 << a) + 1
        prev = table[a - 1, 0]
        torch.maximum(prev[:, :h], prev[:, s : s + h], out=table[a, 0, :, :h])
    for a in range(n_lh):
        h = height - (1 << a) + 1
        for b in range(1, n_lw):
            s, w = 1 << (b - 1), width - (1 << b) + 1
            prev = table[a, b - 1, :, :h]
            torch.maximum(prev[:, :, :w], prev[:, :, s : s + w], out=table[a, b, :, :h, :w])
    return flat


class _RoIPoolFunction(torch.autograd.Function):
    """RoIPool with torchvision's backward: each output's gradient is added to its argmax
    cell (accumulating where bins share an argmax), nothing where no cell was pooled.

    A custom Function because the forward gets values and argmaxes together from the
    key tables (and skips the argmax when no gradient is needed). The backward is one
    scatter-add of ``grad_output`` into the gradient held channels last, in the order
    the keys were computed, (RoI, bin row, bin column, channel): for any one cell (which
    belongs to one image and channel) the contributions arrive in torchvision's loop
    order (RoI, bin row, bin column), so even the float sums agree bit for bit. Scattering
    in this order transposes ``grad_output`` (4-byte floats) instead of the int64 targets,
    measured ~2x faster at 14 x 14 bins. It is written with differentiable ops, so double
    backward works too.
    """

    @staticmethod
    def forward(ctx, input, rois, ph, pw, spatial_scale):
        need_argmax = ctx.needs_input_grad[0]
        out, argmax = _roi_pool_forward(input, rois, ph, pw, spatial_scale, need_argmax)
        if need_argmax:
            key, empty, any_unusable = argmax
            ctx.save_for_backward(rois, key, empty)
            ctx.any_unusable = any_unusable
        ctx.input_shape = input.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):
        with _cpu_threads(grad_out.device):
            return _RoIPoolFunction._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        rois, key, empty = ctx.saved_tensors  # key: (K, ph, pw, C); empty: (K, ph, pw)
        n_img, channels, height, width = ctx.input_shape
        size = n_img * channels * height * width
        # Targets in the channels-last gradient (N, H, W, C): (image * H * W + cell) * C +
        # channel, with cell = _KEY_CELL_MAX - low. So target = base - C * low, in place.
        target = key & 0xFFFFFFFF  # low words, int64
        nothing = (target == 0) if ctx.any_unusable else None  # bins of unusable values
        batch = rois[:, 0].long()
        channel = torch.arange(channels, device=key.device)
        base = batch[:, None] * (height * width * channels) + channel + _KEY_CELL_MAX * channels
        torch.add(base[:, None, None, :], target, alpha=-channels, out=target)
        for mask in (empty[..., None] if empty is not None else None, nothing):
            if mask is not None:  # bins that pooled nothing: to a spare slot at the end
                target.masked_fill_(mask, size)
        grad = grad_out.permute(0, 2, 3, 1).reshape(-1)  # (RoI, row, column, channel)
        grad_input = grad_out.new_zeros(size + 1).scatter_add(0, target.view(-1), grad)
        grad_input = grad_input[:size].view(n_img, height, width, channels)
        return grad_input.permute(0, 3, 1, 2).contiguous(), None, None, None, None


def roi_pool(
    input: Tensor, boxes: Boxes, output_size: int | tuple[int, int], spatial_scale: float = 1.0
) -> Tensor:
    """RoI max pooling, Fast R-CNN section 2.1.

    Each RoI is rounded to the feature grid, ``x1 = round(x1 * spatial_scale)`` and
    likewise for y1, x2, y2 (halves away from zero), and covers the cells from (x1, y1)
    to (x2, y2) inclusive: ``w = max(x2 - x1 + 1, 1)`` by ``h = max(y2 - y1 + 1, 1)``
    cells. It is cut into ``ph x pw`` bins, bin (i, j) covering the rows
    ``[floor(i h / ph), ceil((i + 1) h / ph))`` and columns ``[floor(j w / pw),
    ceil((j + 1) w / pw))`` from (y1, x1), clipped to the map, and each bin outputs the
    maximum of its cells, per channel:

        y[k, c, i, j] = max over (r, s) in bin(k, i, j) of x[b_k, c, r, s]

    (the paper's "h/H x w/W sub-windows"; in section 2.3's notation ``y_rj = x_i*(r,j)``
    with ``i*(r, j)`` the argmax over sub-window ``R(r, j)``). A bin that lies outside
    the map outputs 0. The gradient of each output goes to the cell that attained the
    maximum, the first in row-major order on ties, and adds up where several bins chose
    the same cell (Fast R-CNN eq. (4)).

    Taught in chapter 03 ("Fast R-CNN and RoIPool"); :func:`roi_pool_cells` shows the
    bins of one box. How it is computed without a loop over RoIs: see
    :func:`_roi_pool_forward`.

    Args:
        input: ``(N, C, H, W)`` feature maps (float32 or float64).
        boxes: ``(K, 5)`` tensor of (batch_index, x1, y1, x2, y2), or a list of ``(L_i,
            4)`` tensors of (x1, y1, x2, y2), one per image; in image coordinates.
        output_size: ``ph`` (square) or ``(ph, pw)``.
        spatial_scale: maps box coordinates to the feature map: 1 / stride.

    Returns:
        ``(K, C, ph, pw)`` pooled features. Equals ``torchvision.ops.roi_pool``, forward
        and backward, bit for bit on CPU (tests/test_roi_ops.py; the one exception: a
        float32 bin whose first maximum is -0.0 outputs +0.0, which compares equal),
        including its handling of values it never selects (nan, and values <= -FLT_MAX:
        a bin of only those outputs -FLT_MAX and passes no gradient).
    """
    fn = "roi_pool"
    _check_input(fn, input)
    ph, pw = _pair(fn, output_size)
    spatial_scale = _check_scale(fn, spatial_scale)
    with _cpu_threads(input.device):
        rois = _rois_from_boxes(fn, boxes, input)
        return _RoIPoolFunction.apply(input, rois, ph, pw, spatial_scale)


def roi_pool_cells(
    box: Tensor | Sequence[float],
    spatial_scale: float,
    output_size: int | tuple[int, int],
    *,
    feature_size: tuple[int, int] | None = None,
) -> Tensor:
    """The feature cells each RoIPool bin of one box covers: quantisation made visible.

    Taught in chapter 03 and in chapter 06, which uses it to show Mask R-CNN's point
    about quantisation (section 3): at stride 16, boxes starting at x = 1.1 px and x = 2.2
    px both round to cell 0, so RoIPool gives them identical bins, while RoIAlign's
    sampling points (:func:`roi_align_sampling_points`) move with the box.

    Args:
        box: one box (x1, y1, x2, y2) in image coordinates (a tensor keeps its dtype;
            numbers are taken as float32, a model's usual dtype, which can matter for a
            coordinate that sits exactly on a half cell).
        spatial_scale: 1 / stride.
        output_size: ``ph`` or ``(ph, pw)`` bins.
        feature_size: ``(H, W)`` of the feature map to clip the bins to, as
            :func:`roi_pool` does; None leaves them unclipped.

    Returns:
        ``(ph, pw, 4)`` int64 cell ranges ``(x_start, y_start, x_end, y_end)``, half-open
        (bin (i, j) pools columns x_start..x_end - 1 and rows y_start..y_end - 1): the
        rectangles to draw over the feature grid. They are computed by the same code as
        :func:`roi_pool` itself.
    """
    fn = "roi_pool_cells"
    ph, pw = _pair(fn, output_size)
    spatial_scale = _check_scale(fn, spatial_scale)
    roi = _single_box(fn, box)
    hstart, hend, wstart, wend = (t[0] for t in _roi_pool_bins(roi, spatial_scale, ph, pw))
    if feature_size is not None:
        height, width = feature_size
        hstart, hend = hstart.clamp(0, height), hend.clamp(0, height)
        wstart, wend = wstart.clamp(0, width), wend.clamp(0, width)
    return torch.stack(
        (
            wstart[None, :].expand(ph, pw),
            hstart[:, None].expand(ph, pw),
            wend[None, :].expand(ph, pw),
            hend[:, None].expand(ph, pw),
        ),
        dim=-1,
    )


def roi_pool_region(boxes: Tensor, spatial_scale: float) -> tuple[Tensor, Tensor]:
    """What RoIPool actually reads of each box, and how much of the box that is.

    RoIPool's first quantisation rounds the box to whole cells (``round(x * scale)``,
    :func:`_roi_pool_bins`): it reads the cells x1..x2 inclusive, i.e. the image region
    ``[x1 / scale, (x2 + 1) / scale)``, whatever the box's sub-cell position. The error is
    up to a cell on each side, so it matters in proportion to the box's size *in cells*:
    a box 4 cells wide can lose or gain a quarter of its width, one 28 cells wide a
    thirtieth. Chapter 08 uses this to explain why RoIAlign's gain is several times
    Mask R-CNN's (Table 2(c)) on our small images.

    Args:
        boxes: ``(R, 4)`` boxes (x1, y1, x2, y2) in image pixels.
        spatial_scale: 1 / stride of the map they are pooled from.

    Returns:
        ``(regions, iou)``: ``(R, 4)`` the region in image pixels that RoIPool's bins cover
        (the union of :func:`roi_pool_cells`'s bins, unclipped) and ``(R,)`` its IoU with
        the box (1 only for a box on cell boundaries).
    """
    fn = "roi_pool_region"
    spatial_scale = _check_scale(fn, spatial_scale)
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(
            f"{fn}: boxes must be an (R, 4) tensor, got {getattr(boxes, 'shape', boxes)}"
        )
    boxes = boxes.float() if not boxes.is_floating_point() else boxes
    rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes], dim=1)
    hstart, hend, wstart, wend = _roi_pool_bins(rois, spatial_scale, 1, 1)
    stride = 1.0 / spatial_scale
    regions = torch.stack([wstart[:, 0], hstart[:, 0], wend[:, 0], hend[:, 0]], 1) * stride
    regions = regions.to(boxes.dtype)
    lt = torch.maximum(boxes[:, :2], regions[:, :2])
    rb = torch.minimum(boxes[:, 2:], regions[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(dim=1)
    union = area + (regions[:, 2:] - regions[:, :2]).prod(dim=1) - inter
    return regions, inter / union


def roi_pool_reference(
    input: Tensor, boxes: Boxes, output_size: int | tuple[int, int], spatial_scale: float = 1.0
) -> Tensor:
    """RoIPool written as Fast R-CNN section 2.1 defines it, one RoI and one bin at a time.

    The readable definition beside :func:`roi_pool`, whose vectorised max tables are hard
    to learn from; equal to it (and to ``torchvision.ops.roi_pool``) forward and backward
    for finite inputs (tests/test_roi_ops.py), and hundreds of times slower. Taught in
    chapter 03 before the fast version's speed.

    Args and returns: as :func:`roi_pool`.
    """
    fn = "roi_pool_reference"
    _check_input(fn, input)
    ph, pw = _pair(fn, output_size)
    spatial_scale = _check_scale(fn, spatial_scale)
    rois = _rois_from_boxes(fn, boxes, input)
    height, width = input.shape[2:]
    # Arithmetic in the boxes' dtype, as torchvision's kernel does it.
    dtype = rois.dtype
    scale = torch.tensor(spatial_scale, dtype=dtype)
    rows = []
    for roi in rois:
        image = int(roi[0])
        # First quantisation: the box to whole cells (C's round, halves away from zero).
        x1, y1, x2, y2 = (int(_round_half_away(v * scale)) for v in roi[1:])
        roi_w, roi_h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)  # cells, inclusive
        bin_w = torch.tensor(roi_w, dtype=dtype) / pw
        bin_h = torch.tensor(roi_h, dtype=dtype) / ph
        bins = []
        for i in range(ph):
            # Second quantisation: bin edges rounded outwards, then clipped to the map.
            r0 = min(max(y1 + int(torch.floor(i * bin_h)), 0), height)
            r1 = min(max(y1 + int(torch.ceil((i + 1) * bin_h)), 0), height)
            for j in range(pw):
                c0 = min(max(x1 + int(torch.floor(j * bin_w)), 0), width)
                c1 = min(max(x1 + int(torch.ceil((j + 1) * bin_w)), 0), width)
                if r1 <= r0 or c1 <= c0:  # the bin lies outside the map
                    bins.append(input.new_zeros(input.shape[1]))
                else:  # max over the bin's cells, per channel (gradient: first winner)
                    bins.append(input[image, :, r0:r1, c0:c1].flatten(1).max(1).values)
        rows.append(torch.stack(bins, 1).view(-1, ph, pw))
    if not rows:
        return input.new_zeros((0, input.shape[1], ph, pw))
    return torch.stack(rows)
