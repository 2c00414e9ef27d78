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

The fast :func:`roi_pool` is vectorised PyTorch: no Python loop runs over RoIs. It has two
forwards, the bins gathered by shape (here) and max tables over the whole map
(:mod:`~rcnn_steps.ops.roipool_tables`), and runs the one with less to do
(:func:`_roi_pool_forward`). Because neither reads like the paper,
:func:`roi_pool_reference` beside it does, looping over RoIs and bins; the chapter teaches
it first. ``tests/test_roi_ops.py`` checks the reference and both forwards against
``torchvision.ops.roi_pool`` forward and backward, bit for bit, and
``benchmarks/bench_roi_ops.py`` times :func:`roi_pool` against torchvision's compiled
kernels. How it is computed, and why that way, is in the docstring of
:func:`_roi_pool_forward`. Arguments, coordinates and CPU threads: see
:mod:`~rcnn_steps.ops.roi_checks`.
"""

from __future__ import annotations

import math
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
from rcnn_steps.ops.roipool_tables import FLT_MAX, max_over_tables

__all__ = ["roi_pool", "roi_pool_cells", "roi_pool_reference", "roi_pool_region"]

#: How much building one cell of one max-table level costs against gathering one cell of
#: a bin, in :func:`_use_tables`'s count (measured; see there).
TABLE_CELL_COST = 1.0

#: Which forward :func:`roi_pool` runs: "auto" (the one with less to do,
#: :func:`_use_tables`), "tables" or "bin_shape"; both equal torchvision's. Tests and the
#: benchmark set it to check and time each.
ROI_POOL_METHOD = "auto"

#: Upper bound on the values :func:`_pool_by_bin_shape` gathers at once (4 MiB measured as
#: fast as 64 MiB or faster on the benchmark's P2 rows).
GATHER_BYTES = 4 * 2**20


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


def _roi_pool_forward(
    input: Tensor, rois: Tensor, ph: int, pw: int, spatial_scale: float, need_argmax: bool
):
    """RoIPool's ``(K, C, ph, pw)`` output and, if ``need_argmax``, where each output's
    gradient goes; without autograd. See :func:`roi_pool` for the maths.

    torchvision's CPU kernel scans every cell of every bin for every channel, one RoI at a
    time: C x (the bins' total area) comparisons. Two vectorised ways compute the same
    thing, and each is the faster one somewhere:

    - :func:`_pool_by_bin_shape` does that scan's work, gathered: the bins grouped by
      their shape (h x w cells), each group one gather and one maximum. Its cost is the
      bins' total area.
    - :func:`_pool_by_tables` answers each bin with at most four lookups in max tables
      built over the whole map, whatever few RoIs read it. Its cost is the map's size
      times the table levels.

    We take the one whose count is smaller (:func:`_use_tables`). A detector's bins are
    small (FPN sends a RoI to the level where it spans a few cells): one ``cpu_mask``
    step's RoIPool calls (forward and backward, one thread) took 2.2x, 6.9x and 5.2x
    torchvision's time at 128, 256 and 512 px with the tables alone, 1.3-1.5x, 1.0-1.1x
    and 0.4x with the choice. Large bins over a small map (the 800 px rows of
    ``benchmarks/bench_roi_ops.py``) favour the tables.

    Returns ``(out, source)``: ``source`` (None without ``need_argmax``), ``(K * ph * pw,
    C)`` int32 or int64, is where in the flat input gradient each output's gradient goes
    (:func:`_gradient_layout`), ``input.numel()`` where nothing was pooled.
    """
    if input.shape[1] == 0:  # no channels: an empty output, as torchvision's
        source = rois.new_zeros((rois.shape[0] * ph * pw, 0), dtype=torch.long)
        return input.new_zeros((rois.shape[0], 0, ph, pw)), source if need_argmax else None
    with _cpu_threads(input.device, limit=1):
        grid = _bin_grid(rois, spatial_scale, ph, pw, input.shape)
    if _use_tables(grid, input.shape):
        return _pool_by_tables(input, rois, grid, ph, pw, need_argmax)
    return _pool_by_bin_shape(input, rois, grid, ph, pw, need_argmax)


def _bin_grid(rois: Tensor, spatial_scale: float, ph: int, pw: int, shape):
    """Every bin's first cell and size, flat in (RoI, bin row, bin column) order.

    Returns ``(image, top, left, bin_h, bin_w)``, each ``(K * ph * pw,)`` int64: the bins
    of :func:`_roi_pool_bins` clipped to the map, as the kernel clips them (a bin outside
    the map gets a size of 0: empty).
    """
    num_rois = rois.shape[0]
    _, _, height, width = shape
    hstart, hend, wstart, wend = _roi_pool_bins(rois, spatial_scale, ph, pw)
    hstart, hend = hstart.clamp(0, height), hend.clamp(0, height)
    wstart, wend = wstart.clamp(0, width), wend.clamp(0, width)
    bins = (num_rois, ph, pw)
    image = rois[:, 0].long()[:, None, None].expand(bins).reshape(-1)
    top = hstart[:, :, None].expand(bins).reshape(-1)
    left = wstart[:, None, :].expand(bins).reshape(-1)
    bin_h = (hend - hstart).clamp(min=0)[:, :, None].expand(bins).reshape(-1)
    bin_w = (wend - wstart).clamp(min=0)[:, None, :].expand(bins).reshape(-1)
    return image, top, left, bin_h, bin_w


def _use_tables(grid, shape) -> bool:
    """Whether :func:`_pool_by_tables` has less to do than :func:`_pool_by_bin_shape`.

    Counted in cells (every cell costs all C channels in both): the bin shapes gather each
    bin's area; the tables build ``levels`` copies of the whole map (each level one
    maximum of two shifted copies) and then read about 1.5 blocks per bin. The weight
    ``TABLE_CELL_COST`` says how much a table cell costs against a gathered cell,
    measured (benchmarks/bench_roi_ops.py's shapes and ``cpu_mask``'s).
    """
    if ROI_POOL_METHOD != "auto":
        return ROI_POOL_METHOD == "tables"
    _, _, bin_h, bin_w = grid[1:]
    if bin_h.numel() == 0:
        return False
    n_img, _, height, width = shape
    gathered = int((bin_h * bin_w).sum())
    # the table levels the largest bin needs (1 + floor(log2 side) per direction)
    levels = max(int(bin_h.max()), 1).bit_length() * max(int(bin_w.max()), 1).bit_length()
    tables = TABLE_CELL_COST * levels * n_img * height * width + 1.5 * bin_h.numel()
    return tables < gathered


def _pool_by_bin_shape(input: Tensor, rois: Tensor, grid, ph: int, pw: int, need_argmax: bool):
    """RoIPool as torchvision's kernel computes it, bin by bin, but many bins at a time.

    Bins of the same shape (h x w cells) form a group; for each group one gather reads
    the ``(bins, h * w, C)`` values, their cells in row-major order, and one
    ``max(dim=1)`` gives the values and the argmax, the first cell among equal maxima:
    torchvision's tie rule (it keeps a value only if strictly greater). Bins come in a
    few dozen shapes: the Python loop is short, the work the bins' total area times C.

    torchvision starts each bin at -FLT_MAX, so it never picks nan or a value <= -FLT_MAX;
    ``max`` would (nan propagates). The groups are redone, with those values masked to
    -inf, for the bins where that happened, found afterwards from the output (a bin of
    only such values outputs -FLT_MAX and passes no gradient). Empty bins output 0.

    Returns ``(out, source)`` as :func:`_roi_pool_forward`.
    """
    n_img, channels, height, width = input.shape
    image, top, left, bin_h, bin_w = grid
    num_bins = image.numel()
    # (N * H * W, C): each cell's channels in one row (a view for channels_last input).
    rows = input.detach().permute(0, 2, 3, 1).reshape(-1, channels)
    first = (image * height + top) * width + left  # each bin's top-left cell's row
    empty = (bin_h <= 0) | (bin_w <= 0)
    shape_key = torch.where(empty, -1, bin_h * (width + 1) + bin_w)
    # Where each bin's gradient goes, in the flat input gradient (in the input's memory
    # format): its argmax cell's channel 0 at `row * step + shift[image]`, channel c at
    # `c * channel_step` from there; `size` (one past the end) for nothing.
    size, shift, step, channel_step = _gradient_layout(input, num_bins)
    # int32 where it fits: half the bytes (one 128 px step's calls: 1.77x -> 1.55x tv's time)
    index = torch.int32 if input.numel() < 2**31 - 1 else torch.long
    channel_offset = (torch.arange(channels, device=input.device) * channel_step).to(index)

    out, by_bin = _new_output(input, rois.shape[0], ph, pw)
    # (K * ph * pw, C) values, in the output's own memory when it is channels_last
    in_place = by_bin.is_contiguous()
    value = by_bin.view(-1, channels) if in_place else by_bin.new_empty(num_bins, channels)
    source = value.new_empty(value.shape, dtype=index) if need_argmax else None

    def pool(bins: Tensor, mask_unusable: bool) -> None:
        """Write the values and gradient positions of ``bins`` into their rows of
        ``value`` and ``source``, group by group, in chunks small enough for the cache."""
        keys = shape_key[bins]
        kinds, counts = torch.unique(keys, return_counts=True)
        bins = bins[torch.argsort(keys, stable=True)]
        start = 0
        for kind, count in zip(kinds.tolist(), counts.tolist(), strict=True):
            group = bins[start : start + count]
            start += count
            if kind < 0:  # bins outside the map: 0, and no gradient
                value[group] = 0
                if source is not None:
                    source[group] = size
                continue
            h, w = divmod(kind, width + 1)
            offsets = (torch.arange(h)[:, None] * width + torch.arange(w)).reshape(-1)
            offsets = offsets.to(first.device)
            # At most GATHER_BYTES of gathered values at a time.
            chunk = max(1, GATHER_BYTES // (h * w * channels * input.element_size()))
            for part in group.split(chunk):
                cells = first[part, None] + offsets  # (n, h * w) rows, row-major
                n = cells.shape[0]
                block = rows.index_select(0, cells.view(-1)).view(n, h * w, channels)
                if mask_unusable:
                    block = block.masked_fill(~(block > -FLT_MAX), -math.inf)
                if source is not None:
                    cells = (cells * step + shift[image[part], None]).to(index)
                # Small RoIs have bins of one or two cells (45% and 42% of the bins of the
                # benchmark's 128 px P2 rows at 14 x 14), where `max` with its index is
                # the slow way (for two cells, 2x slower than a comparison and a maximum;
                # torch.maximum may turn a tie of -0.0 and +0.0 into +0.0: equal values).
                if h * w == 1:  # one cell: it is the maximum
                    value.index_copy_(0, part, block[:, 0])
                    target = cells
                elif h * w == 2:  # the second cell wins only if strictly greater
                    second = block[:, 1] > block[:, 0]
                    value.index_copy_(0, part, torch.maximum(block[:, 0], block[:, 1]))
                    if source is not None:
                        target = second * (cells[:, 1:] - cells[:, :1]) + cells[:, :1]
                else:
                    best, where = block.max(1)  # (n, C): the first maximum's index
                    value.index_copy_(0, part, best)
                    if source is not None:
                        target = cells.gather(1, where)
                if source is not None:
                    source.index_copy_(0, part, target + channel_offset)

    with torch.no_grad():
        pool(torch.arange(num_bins, device=input.device), False)
        # One reduction finds out whether nan or a value <= -FLT_MAX won anywhere (nan
        # propagates through amin); only then are the bins found and redone.
        if num_bins and not bool(value.amin() > -FLT_MAX):
            redo = (~(value > -FLT_MAX)).any(1).nonzero().squeeze(1)
            pool(redo, True)
            unusable = ~(value > -FLT_MAX)  # now only bins that pooled nothing usable
            value.masked_fill_(unusable, -FLT_MAX)
            if source is not None:
                source.masked_fill_(unusable, size)
    if not in_place:
        by_bin.copy_(value.view(by_bin.shape))
    return out, source


def _new_output(input: Tensor, num_rois: int, ph: int, pw: int) -> tuple[Tensor, Tensor]:
    """The ``(K, C, ph, pw)`` output in the input's memory format (channels_last for a
    channels_last map, as the next convolution wants; else contiguous), and a ``(K, ph *
    pw, C)`` view of it: the forwards' order, written into the output's own memory."""
    channels_last = torch.channels_last if _channels_last(input) else torch.contiguous_format
    shape = (num_rois, input.shape[1], ph, pw)
    out = torch.empty(shape, dtype=input.dtype, device=input.device, memory_format=channels_last)
    return out, out.permute(0, 2, 3, 1).view(num_rois, ph * pw, input.shape[1])


def _gradient_layout(input: Tensor, num_bins: int):
    """Where a cell's channels sit in the flat gradient the backward's scatter-add writes.

    The scatter writes channels_last (NHWC: a bin's C values side by side) when the input
    is channels_last, or when there are at least as many outputs as input values (then
    NCHW targets, C planes apart, thrash the cache: on 2 x 256 x 50 x 50 with 512 RoIs at
    7 x 7 the scatter took 36 ms, NHWC and a transpose 19 ms); else NCHW (on cpu_mask's
    128 x 128 level the transpose alone cost more than the scatter: 99 ms against 44).
    :func:`_scatters_channels_last` says which.

    Returns ``(size, shift, step, channel_step)``: channel c of the cell in row ``row =
    n * H * W + h * W + w`` sits at ``row * step + shift[n] + c * channel_step``; ``size``
    (= ``input.numel()``, one past the end) is the spare slot for "no gradient".
    """
    n_img, channels, height, width = input.shape
    images = torch.arange(n_img, device=input.device)
    if _scatters_channels_last(input, num_bins):
        return input.numel(), images * 0, channels, 1
    # NCHW: (n * C + c) * H * W + h * W + w = row + n * (C - 1) * H * W + c * H * W.
    return input.numel(), images * ((channels - 1) * height * width), 1, height * width


def _scatters_channels_last(input: Tensor, num_bins: int) -> bool:
    """Whether the backward's scatter writes NHWC (see :func:`_gradient_layout`)."""
    return _channels_last(input) or num_bins * input.shape[1] >= input.numel()


def _channels_last(input: Tensor) -> bool:
    nhwc = input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last)
    return nhwc and not input.is_contiguous()


def _pool_by_tables(input: Tensor, rois: Tensor, grid, ph: int, pw: int, need_argmax: bool):
    """RoIPool by the max tables of :func:`~rcnn_steps.ops.roipool_tables.max_over_tables`,
    which hold keys that order like (value, -cell); returns ``(out, source)`` as
    :func:`_roi_pool_forward`."""
    n_img, channels, height, width = input.shape
    num_rois = rois.shape[0]
    out, by_bin = _new_output(input, num_rois, ph, pw)
    _, low = max_over_tables(input, grid, need_argmax, by_bin)
    if not need_argmax:
        return out, None
    # The argmax cell is row n * H * W + ~low (= -1 - low), placed in the gradient's
    # layout: row * step + shift[n] + c * channel_step. All but `low` is per RoI and
    # channel: one pass over (bins, C), in place (int32 low words: 2^31 positions).
    size, shift, step, channel_step = _gradient_layout(input, low.shape[0])
    batch = rois[:, 0].long()
    channel = torch.arange(channels, device=input.device) * channel_step
    roi_base = ((batch * (height * width) - 1) * step + shift[batch])[:, None] + channel
    # Nothing pooled (low word 0): the empty bins, and, where the map holds values
    # torchvision never picks (nan propagates through amin), any bin.
    nothing = low == 0 if not bool(input.detach().amin() > -FLT_MAX) else None
    low = low.long() if size >= 2**31 - 1 else low
    view = low.view(num_rois, ph * pw, channels)
    roi_base = roi_base.to(low.dtype)[:, None, :]
    source = torch.add(roi_base, view, alpha=-step, out=view).view(-1, channels)
    if nothing is not None:
        source.masked_fill_(nothing, size)
    elif bool((empty := (grid[3] <= 0) | (grid[4] <= 0)).any()):  # (a masked write over
        source[empty] = size  # no rows would still pass over all)
    return out, source


class _RoIPoolFunction(torch.autograd.Function):
    """RoIPool with torchvision's backward: each output's gradient is added to its argmax
    cell (accumulating where bins share an argmax), nothing where no cell was pooled.

    A custom Function because the forward gets values and argmaxes together (and skips
    the argmax when no gradient is needed). The backward is one scatter-add of
    ``grad_output``, read in the forward's order (RoI, bin row, bin column, channel),
    into a gradient in the input's memory format (transposing a channels_last 128 x 128
    x 64 x 8 map took 65 ms on one thread, as long as the rest of the backward). Any one
    cell (one image and channel) gets its contributions in torchvision's loop order, so
    even the float sums agree bit for bit. Differentiable ops: double backward works.
    """

    @staticmethod
    def forward(ctx, input, rois, ph, pw, spatial_scale):
        need_argmax = ctx.needs_input_grad[0]
        out, source = _roi_pool_forward(input, rois, ph, pw, spatial_scale, need_argmax)
        if need_argmax:
            ctx.save_for_backward(source)
            ctx.channels_last = _channels_last(input)
            ctx.scatters_channels_last = _scatters_channels_last(input, source.shape[0])
        ctx.input_shape = input.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):
        with _cpu_threads(grad_out.device):
            return _RoIPoolFunction._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        (source,) = ctx.saved_tensors  # (K * ph * pw, C): see _roi_pool_forward
        n_img, channels, height, width = ctx.input_shape
        size = n_img * channels * height * width
        grad = grad_out.permute(0, 2, 3, 1)  # (RoI, row, column, channel), as `source`
        # Outputs that pooled nothing point at a spare slot at the end. Adds in order:
        # scatter_add (faster; int64 only; float16 out of order) or index_add. 4 MiB of
        # gradient at a time: one in another layout is reordered in cached pieces.
        grad_input = grad_out.new_zeros(size + 1)
        wide = (torch.float32, torch.float64)
        use_scatter = source.dtype == torch.long and grad_out.dtype in wide
        add = grad_input.scatter_add_ if use_scatter else grad_input.index_add_
        per_roi = grad[0].numel() if len(grad) else 0  # ph * pw * C
        chunk = max(1, 2**22 // max(per_roi * grad.element_size(), 1))
        for k in range(0, len(grad), chunk):
            piece = source.view(-1)[k * per_roi : (k + chunk) * per_roi]
            add(0, piece, grad[k : k + chunk].reshape(-1))
        grad_input = grad_input[:size]
        if not ctx.scatters_channels_last:
            return grad_input.view(n_img, channels, height, width), None, None, None, None
        grad_input = grad_input.view(n_img, height, width, channels).permute(0, 3, 1, 2)
        return (grad_input if ctx.channels_last else grad_input.contiguous()), *[None] * 4


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
        ``(K, C, ph, pw)`` pooled features, in the input's memory format (channels_last
        in, channels_last out; else contiguous), and so is the input's gradient. Equals
        ``torchvision.ops.roi_pool``, forward and backward, bit for bit on CPU, by both
        forwards (tests/test_roi_ops.py; the one exception: a float32 bin whose first
        maximum is -0.0 may output +0.0, which compares equal),
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

    The readable definition beside :func:`roi_pool`, whose vectorised forwards are hard
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
