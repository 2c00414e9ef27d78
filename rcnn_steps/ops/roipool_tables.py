"""RoIPool's max tables: every bin's maximum in at most four lookups, whatever its size.

One of :func:`rcnn_steps.ops.roipool.roi_pool`'s two forwards, the one it takes for large
bins over a small map (the other, gathering each bin's cells, wins for a detector's small
bins over a large map; :func:`rcnn_steps.ops.roipool._roi_pool_forward` chooses). The
tables hold int64 keys that order like (value, -cell), so one integer maximum gives both a
bin's value and its argmax with torchvision's tie rule. How, and what it costs: see
:func:`max_over_tables`. Taught in chapter 03 ("Fast R-CNN and RoIPool"), where the speed
of the fast version is measured; ``tests/test_roi_ops.py`` runs every RoIPool test on both
forwards.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor

from rcnn_steps.ops.roi_checks import _cpu_threads

__all__ = ["FLT_MAX", "max_over_tables"]

#: torchvision's RoIPool starts every bin's running maximum at -FLT_MAX (in float64 too)
#: and keeps a value only if it is strictly greater, so a bin whose values are all
#: <= -FLT_MAX (or nan) outputs -FLT_MAX and passes no gradient. We reproduce that.
FLT_MAX = float(torch.finfo(torch.float32).max)

#: Memory of RoIPool's max tables and gathered keys (see :func:`max_over_tables`): built
#: for all channels at once up to twice this, else in equal channel slices of at most
#: this. Why slices: glibc's malloc takes a buffer over 32 MiB fresh from the OS on every
#: call, and a fresh buffer's page faults cost about as much as a pass over it, while
#: smaller slices reuse the memory the slice before freed. On this project's 2-core Xeon
#: (bench_roi_ops.py's 800 px inputs, forward and backward, in-process A/B) one 92 MB table took
#: 1.0-1.2x torchvision's time, slices of 8-24 MiB 0.72-0.90x; slicing a table that fits
#: anyway cost (128 px P2 7 x 7: two slices 1.09x, one 0.86x).
ROI_POOL_TABLE_BYTES = 16 * 2**20


def _floor_log2_table(n: int, device: torch.device) -> Tensor:
    """``table[m] = floor(log2(m))`` for m in 1..n (``table[0]`` unused), exactly."""
    return torch.tensor([0] + [m.bit_length() - 1 for m in range(1, n + 1)], device=device)


def _pool_corners(grid, shape):
    """Where each bin reads the tables of :func:`max_over_tables`.

    Returns the number of table levels needed in each direction; the ``(K * ph * pw,)``
    rows of the ``(levels, N, H, W)`` table (see :func:`_key_tables`) holding each bin's
    top-left block, or the extra last row (key 0) for an empty bin; and, for the
    top-right, bottom-left and bottom-right blocks, the bins (flat indices) whose block
    there differs from those already read, with its rows.
    """
    n_img, _, height, width = shape
    image, top, left, bin_h, bin_w = grid
    empty = (bin_h <= 0) | (bin_w <= 0)
    log2 = _floor_log2_table(max(height, width), image.device)
    level_h = log2[bin_h.clamp(min=1)]
    level_w = log2[bin_w.clamp(min=1)]
    n_lh = int(level_h.max()) + 1 if image.numel() else 1
    n_lw = int(level_w.max()) + 1 if image.numel() else 1

    bottom = top + bin_h - (1 << level_h)
    right = left + bin_w - (1 << level_w)
    block = ((level_h * n_lw + level_w) * n_img + image) * (height * width)
    spare = n_lh * n_lw * n_img * height * width  # the extra last row
    corners = [
        torch.where(empty, spare, block + r * width + c)
        for r, c in ((top, left), (top, right), (bottom, left), (bottom, right))
    ]
    # A side of 2^k cells is one block: then the two corners on that side coincide (the
    # usual case for small bins: 1, 2 and 4 cells). List, for the three other corners,
    # only the bins where they add something.
    tall = (bottom != top) & ~empty
    wide = (right != left) & ~empty
    extra = []
    for need, corner in zip((wide, tall, tall & wide), corners[1:], strict=True):
        bins = need.nonzero().squeeze(1)
        extra.append((bins, corner[bins]))
    return n_lh, n_lw, corners[0], extra


def max_over_tables(
    input: Tensor, grid, need_argmax: bool, out: Tensor
) -> tuple[Tensor, Tensor | None]:
    """Every RoIPool bin's maximum by range-maximum queries on max tables built over the
    whole map.

    Each bin is answered in O(1), with a 2-D sparse table (range-maximum query).
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

    In the benchmark's 800 px call (K = 512, C = 256, 50 x 50, 7 x 7, two threads, six
    channel slices) the profiler splits forward and backward into: keys and tables ~20%,
    corner gathers ~10%, decoding into the (K, C, ph, pw) output ~17%, the argmax words
    and gradient positions ~13%, the backward's reordering and index-add ~19%. Every step
    is a pass over memory, and a fresh large buffer costs about one more in page faults
    (hence the slices, :data:`ROI_POOL_TABLE_BYTES`); not arithmetic.

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

    Args: ``input`` (N, C, H, W); ``grid`` the bins of
    :func:`rcnn_steps.ops.roipool._bin_grid`, flat ``(K * ph * pw,)``; ``out`` a ``(K,
    ph * pw, C)`` view of the output, in whatever memory layout, that the maxima are
    decoded straight into (a (K, C, ph, pw) output then needs no transposing copy).

    Returns ``(out, low)``: ``out`` holding the maxima and, if ``need_argmax``, the
    ``(K * ph * pw, C)`` low words of their keys, int32 or int64, ``~cell`` (-1 - cell)
    of the argmax (cell = ``h * W + w`` within its image), 0 where nothing was pooled;
    else None.
    """
    n_img, channels, height, width = input.shape
    image = grid[0]
    num_bins = image.numel()
    with _cpu_threads(input.device, limit=1):
        n_lh, n_lw, first, extra = _pool_corners(grid, input.shape)
    rows = n_lh * n_lw * n_img * height * width

    x = input.detach().permute(0, 2, 3, 1)  # (N, H, W, C): each cell's channels together
    # Without a gradient to route, a float32 forward needs no argmax, and the keys shrink
    # to the values' int32 order: half the bytes to build, gather and compare.
    with_cell = need_argmax or input.dtype == torch.float64
    per_channel = max(rows + 1, num_bins) * (8 if with_cell else 4)
    total = channels * per_channel
    slices = 1 if total <= 2 * ROI_POOL_TABLE_BYTES else -(-total // ROI_POOL_TABLE_BYTES)
    chunk = -(-channels // min(slices, channels))  # equal slices
    # One slice: the low words are sign-extended in the keys' own memory (int64); several:
    # copied into an int32 buffer (half the bytes; a fresh buffer's pages cost about as
    # much as a pass over it, which is also why slices are small enough for each to reuse
    # the memory of the one before).
    sliced = chunk < channels
    low = input.new_empty((num_bins, channels), dtype=torch.int32) if with_cell and sliced else None
    for c0 in range(0, channels, chunk):
        c1 = min(c0 + chunk, channels)
        keys = _key_tables(x[..., c0:c1], with_cell, n_lh, n_lw)
        key = keys.index_select(0, first)  # (K * ph * pw, slice)
        for bins, corner_rows in extra:
            if len(bins) == 0:
                continue
            # Only the bins this corner adds to: gather, compare, write back.
            part = keys.index_select(0, corner_rows)
            key.index_copy_(0, bins, torch.maximum(key.index_select(0, bins), part, out=part))
        del keys
        high = _split_key(key)[0] if with_cell else key
        if input.dtype != torch.float64:
            _decode_into(high, out[..., c0:c1], in_place=not with_cell)
        if with_cell and sliced:
            low[:, c0:c1] = _split_key(key)[1]
        elif with_cell:  # the low word, sign-extended in place: int64 ~cell
            low = key.bitwise_left_shift_(32).bitwise_right_shift_(32)

    if input.dtype == torch.float64:
        # Ranks do not decode to values: read the values at the argmax. low holds
        # ~cell, and 0 where nothing was pooled.
        pooled = low != 0
        cell = torch.where(pooled, ~low, 0).long()
        plane = image[:, None] * channels + torch.arange(channels, device=input.device)
        flat = plane * (height * width) + cell
        value = input.detach().reshape(-1)[flat.view(-1)].view(low.shape)
        empty = (grid[3] <= 0) | (grid[4] <= 0)
        fill = torch.where(empty, 0.0, -FLT_MAX).to(value.dtype)[:, None]
        out.copy_(torch.where(pooled, value, fill).view(out.shape))
    return out, low if need_argmax else None


def _decode_into(high: Tensor, out: Tensor, in_place: bool) -> None:
    """Undo :func:`_float_order_`: the int32 orders ``high`` (bins, C) back to float32
    values, written into ``out``, a (K, ph * pw, C) view of the output in any layout.

    Three passes that write the output's own memory (read as int32): decoding into a
    buffer and transposing it took two passes and two fresh buffers more. ``in_place``
    (the keys are ours to overwrite) decodes in contiguous passes and transposes once,
    which measured faster for a transposed output (800 px, 7 x 7: 32 -> 18 ms).
    """
    high = high.view(out.shape)
    if out.dtype != torch.float32:  # half or bfloat16: the float32 values, cast exactly
        out.copy_(_float_from_order(high))
        return
    if in_place and high.is_contiguous() and not out.is_contiguous():
        high.bitwise_xor_((high >> 31).bitwise_and_(0x7FFFFFFF))
        out.copy_(high.view(torch.float32))
        return
    bits = out.view(torch.int32)
    torch.bitwise_right_shift(high, 31, out=bits)
    bits.bitwise_and_(0x7FFFFFFF).bitwise_xor_(high)


#: Keys of :func:`_max_keys`: the low 32 bits hold ``_KEY_CELL_LOW - cell`` (so that a
#: larger key means an earlier cell), which read as an int32 is ``~cell`` (-1 - cell);
#: 0 there means "no cell" (cells are below 2^31).
_KEY_CELL_LOW = 2**32 - 1
_LITTLE_ENDIAN = sys.byteorder == "little"


def _split_key(key: Tensor) -> tuple[Tensor, Tensor]:
    """The high and low 32 bits of int64 keys, as int32 tensors (views when we can)."""
    if _LITTLE_ENDIAN:
        halves = key.view(torch.int32)  # (..., 2 * C): low and high words interleaved
        return halves[..., 1::2], halves[..., 0::2]
    return (key >> 32).int(), (key & 0xFFFFFFFF).int()


def _max_keys(x: Tensor, with_cell: bool, out: Tensor) -> Tensor:
    """Keys, one per value of ``x`` (N, H, W, C), that order like (value, -cell), written
    into ``out`` (N, H, W, C): int64, or int32 without the cell.

    ``key = order(value) * 2^32 + (2^32 - 1 - cell)`` with ``cell = h * W + w`` and
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
    Each step writes memory already allocated where it can: for a float32 map with an
    argmax, eleven passes (nine into fresh buffers) became six (two fresh).
    """
    n_img, height, width, channels = x.shape
    # One read-only pass says whether any value needs masking (nan propagates to amin).
    unusable = None if bool(x.amin() > -FLT_MAX) else ~(x > -FLT_MAX)
    if x.dtype == torch.float64:
        planes = x.permute(0, 3, 1, 2).reshape(n_img * channels, height * width)
        sorted_values, position = planes.sort(dim=1)
        step = torch.ones_like(sorted_values, dtype=torch.int32)
        step[:, 1:] = (sorted_values[:, 1:] != sorted_values[:, :-1]).int()
        rank = torch.empty_like(step).scatter_(1, position, step.cumsum(1, dtype=torch.int32))
        order = rank.view(n_img, channels, height, width).permute(0, 2, 3, 1)
        floor = 0
    else:
        order = _float_order_(x.float() + 0.0)  # + 0.0 turns -0.0 into +0.0
        floor = int(_float_order_(torch.tensor(-FLT_MAX)))
    if with_cell:
        cell = torch.arange(height * width, device=x.device).view(1, height, width, 1)
        torch.add(_KEY_CELL_LOW - cell, order, alpha=2**32, out=out)
        floor *= 2**32
    else:
        out.copy_(order)
    if unusable is not None:
        out.masked_fill_(unusable, floor)
    return out


def _float_from_order(order: Tensor) -> Tensor:
    """The inverse of :func:`_float_order_` (flipping the same bits undoes it)."""
    return (order ^ ((order >> 31) & 0x7FFFFFFF)).view(torch.float32)


def _float_order_(x: Tensor) -> Tensor:
    """float32 to int32 with the same order, in place (the result is ``x``'s memory read
    as int32): the bit pattern, the lower 31 bits flipped for negative numbers (whose
    patterns otherwise grow as the numbers fall)."""
    bits = x.view(torch.int32)
    return bits.bitwise_xor_((bits >> 31).bitwise_and_(0x7FFFFFFF))


def _key_tables(x: Tensor, with_cell: bool, n_lh: int, n_lw: int) -> Tensor:
    """The 2-D sparse tables of :func:`max_over_tables` over the keys of ``x`` (N, H, W,
    C) (:func:`_max_keys`, built in the table's first level).

    Returns ``(n_lh * n_lw * N * H * W + 1, C)`` rows of keys: row ``((a * n_lw + b) * N +
    n) * H * W + h * W + w`` is the largest key of the ``2^a x 2^b`` block at (h, w),
    filled where the block fits in the map (``h + 2^a <= H``, ``w + 2^b <= W``), the only
    blocks a bin asks for (the rest is never read and left uninitialised). The last row
    holds key 0: value 0, no cell, for empty bins.
    """
    n_img, height, width, channels = x.shape
    rows = n_lh * n_lw * n_img * height * width
    dtype = torch.int64 if with_cell else torch.int32
    flat = torch.empty((rows + 1, channels), dtype=dtype, device=x.device)
    flat[rows] = 0
    table = flat[:rows].view(n_lh, n_lw, n_img, height, width, channels)
    _max_keys(x, with_cell, out=table[0, 0])
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
