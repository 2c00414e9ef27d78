"""Anchors: the reference boxes of the Region Proposal Network.

Faster R-CNN (Ren et al., 2015, section 3.1.1) replaces selective search with a small
network slid over the feature map. At every feature cell it predicts k proposals, each
relative to one of k fixed reference boxes centred on that cell, the *anchors*: k = 3
scales x 3 aspect ratios = 9 in the paper (scales 128^2, 256^2, 512^2 pixels, ratios 1:2,
1:1, 2:1). Anchors are the third way of handling scale and shape (after pyramids of
images and pyramids of filters, section 3.1.1 "Multi-Scale Anchors as Regression
References"): one feature map, one filter size, many reference boxes. FPN (chapter 05)
then spreads the scales over pyramid levels: one size per level, three ratios each.

The pieces, one job each:

- :func:`generate_base_anchors`: the A zero-centred anchors of one cell.
- :class:`AnchorGenerator`: those anchors shifted to every cell of every feature level,
  for a batch of images. Equals ``torchvision.models.detection.anchor_utils.
  AnchorGenerator`` (same order, same numbers, bit for bit).
- :func:`anchor_visibility`: which anchors lie inside the image, the ones Faster R-CNN
  trains on (section 3.3).
- :func:`anchors_by_level` and :func:`anchors_at`: the flat anchor list cut back into
  (level, row, column, anchor), for drawing the anchors of one location.

Taught in chapter 04 ("Faster R-CNN and the RPN"); chapter 05 uses the multi-level form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import torch
from torch import Tensor, nn

from rcnn_steps.ops import ImageList

__all__ = [
    "AnchorGenerator",
    "anchor_visibility",
    "anchors_at",
    "anchors_by_level",
    "generate_base_anchors",
]


def _check_sizes_ratios(fn: str, sizes: Sequence[float], aspect_ratios: Sequence[float]) -> None:
    for name, values in (("sizes", sizes), ("aspect_ratios", aspect_ratios)):
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ValueError(
                f"{fn}: {name} must be a non-empty sequence of numbers, got {values!r}."
            )
        for v in values:
            if isinstance(v, bool) or not isinstance(v, Real) or not v > 0 or math.isinf(v):
                raise ValueError(
                    f"{fn}: every entry of {name} must be a positive finite number, got {values!r}."
                )


def generate_base_anchors(
    sizes: Sequence[float],
    aspect_ratios: Sequence[float],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The anchors of one feature cell, centred on (0, 0): every size at every ratio.

    Faster R-CNN section 3.1.1: an anchor of *size* s and aspect ratio r has area s^2 and
    ``r = h / w`` (height over width, torchvision's and Detectron's convention: r = 2 is a
    tall box, r = 0.5 a wide one), so

        h = s * sqrt(r),   w = s / sqrt(r),   anchor = round([-w, -h, w, h] / 2).

    The corners are rounded to integers, as torchvision does (``torch.round``, halves to
    even): anchors fall on pixel edges, and each side is up to one pixel off the exact
    size (size 128 at ratio 0.5 is 182 x 90 rather than 181.02 x 90.51).

    Args:
        sizes: the anchor sizes s (square roots of the areas), in pixels, e.g. (32,) or
            (128, 256, 512).
        aspect_ratios: the ratios r = h / w, e.g. (0.5, 1.0, 2.0).
        dtype, device: of the result. The arithmetic is done in float32 on the CPU
            whatever these are (then converted), as torchvision does when it builds its
            cell anchors, so the rounding (and hence the anchors) is the same in every
            dtype and on every device.

    Returns:
        ``(A, 4)`` anchors (x1, y1, x2, y2), ``A = len(aspect_ratios) * len(sizes)``,
        ratio-major: anchor ``a = i * len(sizes) + j`` has ratio ``aspect_ratios[i]`` and
        size ``sizes[j]``. Equals torchvision's ``AnchorGenerator.generate_anchors``.
    """
    _check_sizes_ratios("generate_base_anchors", sizes, aspect_ratios)
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)  # (R,)
    w_ratios = 1 / h_ratios  # so that w * h = s^2 and h / w = r
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)  # (R * S,), ratio-major
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    base = torch.stack([-ws, -hs, ws, hs], dim=1) / 2
    return base.round().to(dtype=dtype, device=device)


def _pair(fn: str, name: str, value: object, i: int) -> tuple[int, int]:
    """``value`` as a pair of ints (an int n means (n, n))."""
    if isinstance(value, Tensor):
        value = value.tolist()
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, Sequence) and len(value) == 2:
        a, b = value
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (a, b)):
            return a, b
    raise ValueError(f"{fn}: {name}[{i}] must be an int or a pair of ints, got {value!r}.")


class AnchorGenerator(nn.Module):
    """Anchors at every cell of every feature level, for a batch of images.

    Args:
        sizes: one tuple of sizes per feature level, e.g. ``((32,),)`` for one level or
            ``((32,), (64,), (128,), (256,), (512,))`` for FPN's five levels. A flat tuple
            of numbers means one level per size (torchvision's shorthand).
        aspect_ratios: one tuple of ratios (h / w) per level; a flat tuple is used for
            every level.

    Level l has ``A_l = len(sizes[l]) * len(aspect_ratios[l])`` anchors per cell (see
    :func:`generate_base_anchors` for their order). The anchors of cell (y, x) on a level
    of stride (s_h, s_w) are the base anchors shifted by ``(x * s_w + offset * s_w,
    y * s_h + offset * s_h)``. With the default ``offset = 0`` (torchvision's choice, and
    Detectron2's default) anchor centres sit on the cell's top-left pixel corner, not on
    the centre of the cell; ``offset = 0.5`` centres them in the cell, as the original
    py-faster-rcnn did (its base anchor [0, 0, 15, 15] in inclusive pixels is centred at
    8 = stride / 2). The difference is half a stride, which box regression absorbs.

    An ``nn.Module`` without parameters, so that it is listed in ``print(model)``; it
    equals torchvision's ``AnchorGenerator`` (same output order and numbers) and can
    replace it inside torchvision's ``RegionProposalNetwork``. Unlike torchvision's, it
    does not keep anchors converted to the last call's dtype and device as state: every
    call converts the float32 base anchors afresh, so a float16 call cannot change later
    float32 results.
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]] | Sequence[float] = ((32,),),
        aspect_ratios: Sequence[Sequence[float]] | Sequence[float] = ((0.5, 1.0, 2.0),),
        offset: float = 0.0,
    ) -> None:
        super().__init__()
        fn = "AnchorGenerator"
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or not sizes:
            raise ValueError(f"{fn}: sizes must be e.g. ((32,),) or ((32, 64),), got {sizes!r}.")
        if not isinstance(sizes[0], Sequence):
            sizes = tuple((s,) for s in sizes)  # torchvision: (32, 64) means one per level
        if not isinstance(aspect_ratios, Sequence) or not aspect_ratios:
            raise ValueError(
                f"{fn}: aspect_ratios must be e.g. ((0.5, 1.0, 2.0),), got {aspect_ratios!r}."
            )
        if not isinstance(aspect_ratios[0], Sequence):
            aspect_ratios = (tuple(aspect_ratios),) * len(sizes)
        if len(sizes) != len(aspect_ratios):
            raise ValueError(
                f"{fn}: sizes has {len(sizes)} levels but aspect_ratios has "
                f"{len(aspect_ratios)}; give one tuple of ratios per level, or one flat tuple "
                "of ratios for all levels."
            )
        for s, r in zip(sizes, aspect_ratios, strict=True):
            _check_sizes_ratios(fn, s, r)
        if isinstance(offset, bool) or not isinstance(offset, Real) or not 0 <= offset < 1:
            raise ValueError(f"{fn}: offset must be a number in [0, 1), got {offset!r}.")
        self.sizes = tuple(tuple(s) for s in sizes)
        self.aspect_ratios = tuple(tuple(r) for r in aspect_ratios)
        self.offset = float(offset)
        # float32 on the CPU, the master copy; __call__ converts per call.
        self.cell_anchors = [
            generate_base_anchors(s, r) for s, r in zip(self.sizes, self.aspect_ratios, strict=True)
        ]

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, aspect_ratios={self.aspect_ratios}, offset={self.offset}"

    def num_anchors_per_location(self) -> list[int]:
        """A_l for every level: the number of anchors at each cell, i.e. the number of
        objectness scores (and 4x the box deltas) the RPN head predicts per cell."""
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios, strict=True)]

    def grid_anchors(
        self,
        feature_sizes: Sequence[tuple[int, int]],
        strides: Sequence[tuple[int, int] | int],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> list[Tensor]:
        """The anchors of every cell of every level, one tensor per level.

        Args:
            feature_sizes: ``(H_l, W_l)`` of each level's feature map.
            strides: ``(s_h, s_w)`` of each level in pixels (or one int for both): cell
                (y, x) is centred at pixel (y * s_h, x * s_w) (plus the offset).
            dtype, device: of the anchors.

        Returns:
            One ``(H_l * W_l * A_l, 4)`` tensor per level, ordered by row (y), then
            column (x), then anchor: the anchors of cell (y, x) are rows
            ``(y * W_l + x) * A_l`` to ``(y * W_l + x + 1) * A_l - 1``. This is the order
            of an RPN head's output ``(N, A*K, H, W)`` after
            ``.permute(0, 2, 3, 1).reshape(N, -1, K)``, which pairs every prediction with
            its anchor.
        """
        fn = "AnchorGenerator.grid_anchors"
        if len(feature_sizes) != len(self.cell_anchors) or len(strides) != len(feature_sizes):
            raise ValueError(
                f"{fn}: the generator has {len(self.cell_anchors)} level(s) "
                f"(sizes={self.sizes}) but got {len(feature_sizes)} feature size(s) and "
                f"{len(strides)} stride(s); give one of each per level (an FPN with 5 "
                "levels needs 5 tuples of sizes)."
            )
        anchors = []
        for level, (size, stride, base) in enumerate(
            zip(feature_sizes, strides, self.cell_anchors, strict=True)
        ):
            grid_h, grid_w = _pair(fn, "feature_sizes", size, level)
            stride_h, stride_w = _pair(fn, "strides", stride, level)
            if grid_h < 0 or grid_w < 0 or stride_h <= 0 or stride_w <= 0:
                raise ValueError(
                    f"{fn}: level {level} has feature size {(grid_h, grid_w)} and stride "
                    f"{(stride_h, stride_w)}; sizes must be >= 0 and strides > 0."
                )
            base = base.to(dtype=dtype, device=device)
            # Integer shifts (torchvision: int32 cell index times int64 stride), added to
            # float anchors: exact for any image a GPU can hold.
            shifts_x = torch.arange(grid_w, dtype=torch.int64, device=base.device) * stride_w
            shifts_y = torch.arange(grid_h, dtype=torch.int64, device=base.device) * stride_h
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")  # (H, W)
            shift_x = shift_x.reshape(-1)  # row-major: y outer, x inner
            shift_y = shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)  # (H*W, 4)
            if self.offset:
                half = torch.tensor(
                    [self.offset * stride_w, self.offset * stride_h] * 2,
                    dtype=dtype,
                    device=base.device,
                )
                base = base + half
            # (H*W, 1, 4) + (1, A, 4) -> (H*W, A, 4): every cell gets all A anchors.
            anchors.append((shifts[:, None, :] + base[None, :, :]).reshape(-1, 4))
        return anchors

    def forward(self, image_list: ImageList, feature_maps: Sequence[Tensor]) -> list[Tensor]:
        """Anchors for every image of a batch.

        Args:
            image_list: the padded batch (an :class:`~rcnn_steps.ops.image_list.ImageList`,
                or anything with ``.tensors`` (N, C, H, W) and ``.image_sizes``).
            feature_maps: one ``(N, C_l, H_l, W_l)`` feature map per level.

        Returns:
            N tensors (one per image, all equal), each ``(sum_l H_l * W_l * A_l, 4)``:
            the levels of :meth:`grid_anchors` one after the other. Dtype and device
            are those of ``feature_maps[0]``. The stride of level l is
            ``padded_image_size // feature_size`` per axis (floor division, as
            torchvision computes it), so pad the batch to a multiple of the backbone's
            stride (:meth:`ImageList.from_tensors`) for exact cell positions. Anchors are
            laid over the whole padded batch, the same for every image; the per-image
            sizes matter later (:func:`anchor_visibility`, proposal clipping).
        """
        fn = "AnchorGenerator"
        if isinstance(feature_maps, Tensor):
            feature_maps = [feature_maps]  # one level passed bare
        if len(feature_maps) != len(self.cell_anchors):
            raise ValueError(
                f"{fn}: the generator has {len(self.cell_anchors)} level(s) "
                f"(sizes={self.sizes}) but got {len(feature_maps)} feature map(s); give "
                "one tuple of sizes per feature level."
            )
        image_h, image_w = image_list.tensors.shape[-2:]
        num_images = len(image_list.image_sizes)
        grid_sizes, strides = [], []
        for level, fmap in enumerate(feature_maps):
            if not isinstance(fmap, Tensor) or fmap.dim() != 4:
                shape = tuple(fmap.shape) if isinstance(fmap, Tensor) else type(fmap).__name__
                raise ValueError(f"{fn}: feature_maps[{level}] must be (N, C, H, W), got {shape}.")
            if fmap.shape[0] != num_images:
                raise ValueError(
                    f"{fn}: feature_maps[{level}] has {fmap.shape[0]} images but the image "
                    f"list has {num_images}."
                )
            grid_h, grid_w = (int(v) for v in fmap.shape[-2:])
            if not (0 < grid_h <= image_h and 0 < grid_w <= image_w):
                raise ValueError(
                    f"{fn}: feature_maps[{level}] is {grid_h} x {grid_w} but the padded "
                    f"images are {image_h} x {image_w}; a feature map cannot have more cells "
                    "than the image has pixels (or no cells at all)."
                )
            grid_sizes.append((grid_h, grid_w))
            strides.append((image_h // grid_h, image_w // grid_w))
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        per_level = self.grid_anchors(grid_sizes, strides, dtype=dtype, device=device)
        # One tensor per image, as torchvision returns (separate tensors, so an in-place
        # change to one image's anchors cannot leak into another's).
        return [torch.cat(per_level) for _ in range(num_images)]


def anchor_visibility(
    anchors: Tensor, image_size: Sequence[int], allowed_border: float = 0.0
) -> Tensor:
    """Which anchors lie inside the image: the anchors Faster R-CNN trains the RPN on.

    Faster R-CNN section 3.3 ("Implementation Details"): "During training, we ignore all
    cross-boundary anchors so they do not contribute to the loss. For a typical 1000 x 600
    image, there will be roughly 20000 (~ 60 x 40 x 9) anchors in total. With the
    cross-boundary anchors ignored, there are about 6000 anchors per image for training.
    If the boundary-crossing outliers are not ignored in training, they introduce large,
    difficult to correct error terms in the objective, and training does not converge."
    At test time all anchors are used and the proposals are clipped to the image.

    torchvision does *not* do this: its RPN labels every anchor (cross-boundary ones
    included) and trains fine with its smaller default sizes and a larger batch of images.
    Mark the invisible anchors as ignored (label -1) to follow the paper.

    Args:
        anchors: ``(N, 4)`` anchors, xyxy, in the padded batch's pixel coordinates.
        image_size: ``(height, width)`` of the true (unpadded) image, e.g.
            ``image_list.image_sizes[i]``: anchors in the padding are outside the image.
        allowed_border: how many pixels an anchor may stick out on each side and still
            count as inside (py-faster-rcnn's ``allowed_border``, default 0). ``math.inf``
            keeps every anchor, torchvision's behaviour.

    Returns:
        ``(N,)`` bool, True for anchors with ``x1 >= -b``, ``y1 >= -b``, ``x2 <= W + b`` and
        ``y2 <= H + b`` (b = ``allowed_border``). py-faster-rcnn and Detectron2 test
        ``x2 < W + b``, a remnant of inclusive pixel coordinates (there ``x2 = x1 + w - 1``);
        in our continuous coordinates an anchor that touches the right edge is inside.
    """
    fn = "anchor_visibility"
    if not isinstance(anchors, Tensor) or anchors.dim() != 2 or anchors.shape[-1] != 4:
        shape = tuple(anchors.shape) if isinstance(anchors, Tensor) else type(anchors).__name__
        raise ValueError(f"{fn}: anchors must have shape (N, 4), got {shape}.")
    if isinstance(image_size, Tensor):
        image_size = image_size.tolist()
    if not isinstance(image_size, Sequence) or len(image_size) != 2:
        raise ValueError(
            f"{fn}: image_size must be (height, width), got {image_size!r}; use "
            "image_list.image_sizes[i]."
        )
    if isinstance(allowed_border, bool) or not isinstance(allowed_border, Real):
        raise TypeError(f"{fn}: allowed_border must be a number, got {allowed_border!r}.")
    if allowed_border < 0:
        raise ValueError(f"{fn}: allowed_border must be >= 0, got {allowed_border}.")
    height, width = image_size
    b = float(allowed_border)
    return (
        (anchors[:, 0] >= -b)
        & (anchors[:, 1] >= -b)
        & (anchors[:, 2] <= width + b)
        & (anchors[:, 3] <= height + b)
    )


def anchors_by_level(
    anchors: Tensor,
    feature_sizes: Sequence[tuple[int, int]],
    num_anchors_per_location: Sequence[int],
) -> list[Tensor]:
    """Cut one image's flat anchor list back into a grid per level.

    Args:
        anchors: ``(sum_l H_l * W_l * A_l, 4)`` anchors of one image, as
            :class:`AnchorGenerator` returns them (or any per-anchor tensor with that
            many rows: objectness scores, labels, ...; trailing dimensions are kept).
        feature_sizes: ``(H_l, W_l)`` of each level.
        num_anchors_per_location: ``A_l`` of each level
            (:meth:`AnchorGenerator.num_anchors_per_location`).

    Returns:
        One ``(H_l, W_l, A_l, ...)`` view per level: ``out[l][y, x, a]`` is anchor a of
        cell (y, x) on level l.
    """
    fn = "anchors_by_level"
    if len(feature_sizes) != len(num_anchors_per_location):
        raise ValueError(
            f"{fn}: {len(feature_sizes)} feature size(s) but {len(num_anchors_per_location)} "
            "anchor count(s); give one of each per level."
        )
    sizes = [_pair(fn, "feature_sizes", s, i) for i, s in enumerate(feature_sizes)]
    counts = [h * w * a for (h, w), a in zip(sizes, num_anchors_per_location, strict=True)]
    if anchors.shape[0] != sum(counts):
        raise ValueError(
            f"{fn}: {anchors.shape[0]} anchors, but feature sizes {sizes} with "
            f"{list(num_anchors_per_location)} anchors per location make {sum(counts)}; pass "
            "the anchors of one image, and the sizes of the feature maps that made them."
        )
    return [
        chunk.reshape(h, w, a, *anchors.shape[1:])
        for chunk, (h, w), a in zip(
            anchors.split(counts), sizes, num_anchors_per_location, strict=True
        )
    ]


def anchors_at(
    anchors: Tensor,
    position: tuple[int, int],
    feature_sizes: Sequence[tuple[int, int]] | tuple[int, int],
    num_anchors_per_location: Sequence[int] | int,
    level: int = 0,
) -> Tensor:
    """The ``A_l`` anchors of one feature cell, e.g. to draw the anchors of one location.

    Args:
        anchors: one image's anchors (see :func:`anchors_by_level`).
        position: ``(y, x)``, the cell's row and column on the level's feature map.
        feature_sizes: ``(H_l, W_l)`` per level; one pair for a single level.
        num_anchors_per_location: ``A_l`` per level; one int for a single level.
        level: which level the cell is on.

    Returns:
        ``(A_l, 4)`` the anchors of that cell, in :func:`generate_base_anchors` order.
    """
    if isinstance(num_anchors_per_location, int):
        num_anchors_per_location = [num_anchors_per_location]
        feature_sizes = [feature_sizes]  # type: ignore[list-item]
    grids = anchors_by_level(anchors, feature_sizes, num_anchors_per_location)  # type: ignore[arg-type]
    if not 0 <= level < len(grids):
        raise IndexError(f"anchors_at: level {level} out of range for {len(grids)} level(s).")
    y, x = position
    h, w = grids[level].shape[:2]
    if not (0 <= y < h and 0 <= x < w):
        raise IndexError(
            f"anchors_at: position (y, x) = {(y, x)} is outside level {level}'s "
            f"{h} x {w} feature map."
        )
    return grids[level][y, x]
