"""Pooling RoIs from a feature pyramid: which level each RoI reads (FPN eq. 1).

With a pyramid P2..P5 the RoI head must decide where to pool each RoI from. FPN (Lin et
al. 2017, section 4.2) treats the pyramid as if it were an image pyramid: a RoI of width w
and height h (in the input image's pixels) is pooled from level

    k = floor(k0 + log2(sqrt(w h) / s0))                                         (1)

where ``s0 = 224`` is the ImageNet pre-training size and ``k0 = 4`` the level a 224 x 224
RoI reads (P4, the stride-16 map a single-scale "C4" Faster R-CNN pools everything
from). A RoI half that size goes one level finer, twice that size one coarser; k is
clamped to the levels there are (P2..P5 in the paper: P6 serves the RPN only). The
pooled features of every level have the same size (7 x 7) and width (``d``), so one head
reads them all.

- :class:`LevelMapper`: eq. (1). Equals torchvision's ``LevelMapper`` (which, like
  Detectron, adds ``eps = 1e-6`` inside the floor so that a RoI exactly at a level's
  boundary, ``sqrt(wh) = s0 * 2**j``, whose log2 rounds to just below an integer, is not
  sent a level down; we add the same eps, tests/test_poolers.py).
- :class:`MultiScaleRoIPooler`: the call of :class:`rcnn_steps.modeling.poolers.RoIPooler` with
  a list (or dict) of maps: assigns each RoI a level, pools each level's RoIs with the
  RoI layer named in the config (any of :func:`rcnn_steps.ops.roi_layers.get_roi_op`'s), and
  returns them in the input order. With ``"roialign_avg"`` and ``aligned=False`` it
  equals ``torchvision.ops.MultiScaleRoIAlign``, forward and backward.

**Scaling s0 to our images.** The paper pairs ``s0 = 224`` at ``k0 = 4`` with anchors of
32, 64, 128, 256, 512 px on P2..P6 (section 4.1), on COCO images of ~800 px. Our
``cpu_fpn`` preset trains on 128 px synthetic images whose objects are small relative to
the image (sqrt(area) quartiles 9 / 17 / 33 px), and uses anchors of 8, 16, 32, 64, 128
px on P2..P6: the paper's divided by 4 (why 4, and not the image ratio, is in
:meth:`rcnn_steps.detectors.config.DetectorConfig.cpu_fpn`). We divide s0 by the same factor,
``s0 = 224 / 4 = 56`` at ``k0 = 4``, so the RoI levels keep the paper's relation to the
anchor levels: a RoI the size of a level-k anchor is pooled from the same level as in
the paper (a 128 px RoI, P4's anchor, goes to P3 there; our 32 px RoI, P4's anchor, goes
to P3 here), and each level's RoIs span the same range in units of that level's stride.
Scaling s0 by the image ratio instead (224 * 128 / 800 = 36) would move every RoI
log2(56 / 36) = 0.64 of a level coarser relative to its anchors. With ``s0 = 56`` the val objects of
the synthetic set go 71% to P2, 26% to P3 and 4% to P4 (none to P5): most objects are
small here, as the anchors say too. The ``gpu`` preset (512 px images, objects 4x larger)
uses the paper's anchors and ``s0 = 224`` unchanged. Both are config fields
(``roi_canonical_size``, ``roi_canonical_level``).

Taught in chapter 05 ("Feature Pyramid Networks").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from rcnn_steps.ops import box_area, get_roi_op, roi_pool_region

__all__ = ["LevelMapper", "MultiScaleRoIPooler", "RoIPooler", "feature_level"]


class LevelMapper:
    """FPN eq. (1): the pyramid level each RoI is pooled from.

    Args:
        k_min, k_max: the finest and coarsest levels there are (2 and 5 for P2..P5).
        canonical_size: ``s0`` (224 in the paper; 56 in our ``cpu_fpn`` preset, see the
            module docstring).
        canonical_level: ``k0`` (4).
        eps: added inside the floor (torchvision's and Detectron's 1e-6), so that a RoI
            of size exactly ``s0 * 2**j`` reaches level ``k0 + j`` despite the rounding of
            sqrt and log2.

    ``mapper(boxes)``: boxes ``(R, 4)`` xyxy in image pixels, or a list of ``(R_i, 4)`` (one
    per image, concatenated) -> ``(R,)`` int64 *index* ``k - k_min`` in ``[0, k_max -
    k_min]``, an index into the list of maps (as torchvision's). :meth:`level` gives k
    itself.
    """

    def __init__(
        self,
        k_min: int,
        k_max: int,
        canonical_size: float = 224,
        canonical_level: int = 4,
        eps: float = 1e-6,
    ) -> None:
        if not k_min <= k_max:
            raise ValueError(f"LevelMapper: need k_min <= k_max, got {k_min} and {k_max}.")
        if not canonical_size > 0:
            raise ValueError(f"LevelMapper: canonical_size must be > 0, got {canonical_size!r}.")
        self.k_min = int(k_min)
        self.k_max = int(k_max)
        self.canonical_size = canonical_size
        self.canonical_level = canonical_level
        self.eps = eps

    def __repr__(self) -> str:
        return (
            f"LevelMapper(k_min={self.k_min}, k_max={self.k_max}, canonical_size="
            f"{self.canonical_size}, canonical_level={self.canonical_level}, eps={self.eps})"
        )

    def level(self, boxes: Tensor | Sequence[Tensor]) -> Tensor:
        """``(R,)`` int64 level k of every RoI (eq. 1, clamped to ``[k_min, k_max]``)."""
        if not isinstance(boxes, Tensor):
            boxes = torch.cat(list(boxes)) if len(boxes) else torch.zeros(0, 4)
        size = torch.sqrt(box_area(boxes))
        k = torch.floor(
            self.canonical_level
            + torch.log2(size / self.canonical_size)
            + torch.tensor(self.eps, dtype=size.dtype)
        )
        return k.clamp(min=self.k_min, max=self.k_max).to(torch.int64)

    def __call__(self, boxes: Tensor | Sequence[Tensor]) -> Tensor:
        return self.level(boxes) - self.k_min


def roi_size_in_cells(boxes: Tensor, mapper: LevelMapper) -> tuple[Tensor, Tensor, Tensor]:
    """How many cells each RoI spans on the level FPN eq. (1) pools it from, and what
    RoIPool's rounding to cells costs it there (chapter 08's object-size experiment).

    Args:
        boxes: ``(R, 4)`` xyxy boxes in image pixels.
        mapper: the pyramid's :class:`LevelMapper` (our ``cpu_mask``: s0 = 56, k0 = 4;
            the paper's: s0 = 224).

    Returns:
        ``(cells, iou, level)``, each ``(R,)``: ``sqrt(w h) / 2**k`` (the box's side in
        cells of its level k), the IoU of the box with the region RoIPool reads of it
        (:func:`rcnn_steps.ops.roipool.roi_pool_region`) and k itself.
    """
    level = mapper.level(boxes)
    stride = 2.0 ** level.to(boxes.dtype)
    cells = torch.sqrt(box_area(boxes)) / stride
    iou = torch.empty_like(cells)
    for k in level.unique().tolist():
        on_level = level == k
        iou[on_level] = roi_pool_region(boxes[on_level], 2.0**-k)[1]
    return cells, iou, level


def feature_level(feature: Tensor, image_shape: Sequence[int]) -> int:
    """The k of a feature map (its stride is ``2 ** k``), from its size and the padded
    image's: ``round(log2(W_image / W_feature))`` (rounded, so that the ceil of odd sizes
    does not matter)."""
    ratio = float(image_shape[-1]) / float(feature.shape[-1])
    return int(round(math.log2(ratio)))


class RoIPooler(nn.Module):
    """A fixed-size feature per RoI from one feature map, with a named RoI layer.

    Args:
        roi_op: "roipool" (Fast R-CNN), "roiwarp_max", "roiwarp_avg", "roialign_max",
            "roialign_avg" (Mask R-CNN Table 2(c)), see
            :func:`rcnn_steps.ops.roi_layers.get_roi_op`.
        output_size: ``ph`` (= ``pw``), 7 in the papers.
        sampling_ratio: sampling points per bin side for RoIWarp/RoIAlign (ignored by
            RoIPool).
        aligned: half-pixel correction for RoIWarp/RoIAlign.

    Call: ``pooler(feature (N, C, H, W), boxes (list of (R_i, 4) image-pixel xyxy),
    image_shape (H_img, W_img) of the padded batch) -> (sum R_i, C, ph, pw)``. The scale
    1 / stride is read off the sizes. Chapter 05's multi-level pooler has the same call
    with a list of maps.
    """

    def __init__(
        self, roi_op: str = "roipool", output_size: int = 7, sampling_ratio: int = 2,
        aligned: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.roi_op_name = roi_op
        self.roi_op = get_roi_op(roi_op, aligned=aligned)
        self.aligned = aligned
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio

    def extra_repr(self) -> str:
        return (
            f"roi_op={self.roi_op_name!r}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )

    def forward(
        self, feature: Tensor, boxes: Sequence[Tensor], image_shape: Sequence[int]
    ) -> Tensor:
        # The backbone's stride is a power of two that divides the padded image size, so
        # the ratio of sizes is exactly 1 / stride.
        spatial_scale = feature.shape[-1] / image_shape[-1]
        return self.roi_op(
            feature, list(boxes), self.output_size, spatial_scale, self.sampling_ratio
        )


class MultiScaleRoIPooler(nn.Module):
    """A fixed-size feature per RoI from a feature pyramid, each RoI from its level (eq. 1).

    Args:
        roi_op: any name of :func:`rcnn_steps.ops.roi_layers.get_roi_op` ("roipool",
            "roiwarp_max", "roiwarp_avg", "roialign_max", "roialign_avg").
        output_size: ``ph`` (= ``pw``), 7 in the papers, or ``(ph, pw)``.
        sampling_ratio: sampling points per bin side (RoIWarp/RoIAlign).
        aligned: half-pixel correction (RoIWarp/RoIAlign).
        canonical_size, canonical_level: ``s0`` and ``k0`` of eq. (1).
        levels: with a mapping of maps, the names to pool from (e.g. ``("p2", "p3",
            "p4", "p5")``, leaving P6 to the RPN); None: all of them.

    Call, as :class:`rcnn_steps.modeling.poolers.RoIPooler`: ``pooler(features, boxes,
    image_shape)`` with ``features`` a list (finest first) or mapping of ``(N, C, H_l,
    W_l)`` maps at consecutive strides ``2 ** k``; ``boxes`` a list of ``(R_i, 4)`` xyxy in
    image pixels; ``image_shape`` ``(H, W)`` of the padded batch (each map's k is read off
    the sizes, :func:`feature_level`) -> ``(sum R_i, C, ph, pw)``, rows in the order of the
    boxes (image 0's first). :meth:`assign_levels` gives the level k of every RoI, for
    drawing.
    """

    def __init__(
        self,
        roi_op: str = "roipool",
        output_size: int = 7,
        sampling_ratio: int = 2,
        aligned: bool = False,
        canonical_size: float = 224,
        canonical_level: int = 4,
        levels: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.roi_op_name = roi_op
        self.roi_op = get_roi_op(roi_op, aligned=aligned)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.canonical_size = canonical_size
        self.canonical_level = canonical_level
        self.levels = tuple(levels) if levels is not None else None

    def extra_repr(self) -> str:
        return (
            f"roi_op={self.roi_op_name!r}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}, canonical_size={self.canonical_size}, "
            f"canonical_level={self.canonical_level}, levels={self.levels}"
        )

    def _select(self, features: Sequence[Tensor] | Mapping[str, Tensor] | Tensor) -> list[Tensor]:
        if isinstance(features, Tensor):
            return [features]
        if isinstance(features, Mapping):
            if self.levels is None:
                return list(features.values())
            missing = [n for n in self.levels if n not in features]
            if missing:
                raise ValueError(
                    f"MultiScaleRoIPooler: levels {missing} not among the maps {list(features)}."
                )
            return [features[n] for n in self.levels]
        return list(features)

    def mapper(self, maps: Sequence[Tensor], image_shape: Sequence[int]) -> LevelMapper:
        """The :class:`LevelMapper` for these maps: ``k_min``/``k_max`` from their sizes."""
        ks = [feature_level(m, image_shape) for m in maps]
        if ks != list(range(ks[0], ks[0] + len(ks))):
            raise ValueError(
                "MultiScaleRoIPooler: the maps must be at consecutive strides 2**k, finest "
                f"first; their sizes {[tuple(m.shape[-2:]) for m in maps]} in an image of "
                f"{tuple(image_shape)} give k = {ks}."
            )
        return LevelMapper(ks[0], ks[-1], self.canonical_size, self.canonical_level)

    def assign_levels(
        self,
        features: Sequence[Tensor] | Mapping[str, Tensor],
        boxes: Sequence[Tensor],
        image_shape: Sequence[int],
    ) -> list[Tensor]:
        """Per image ``(R_i,)`` int64: the level k each RoI is pooled from."""
        maps = self._select(features)
        levels = self.mapper(maps, image_shape).level(list(boxes))
        return list(levels.split([len(b) for b in boxes]))

    def forward(
        self,
        features: Sequence[Tensor] | Mapping[str, Tensor],
        boxes: Sequence[Tensor],
        image_shape: Sequence[int],
    ) -> Tensor:
        maps = self._select(features)
        if not maps:
            raise ValueError("MultiScaleRoIPooler: no feature maps given.")
        channels = {m.shape[1] for m in maps}
        if len(channels) != 1:
            raise ValueError(
                f"MultiScaleRoIPooler: every level must have the same channels, got {channels}."
            )
        mapper = self.mapper(maps, image_shape)
        boxes = list(boxes)
        ref = maps[0]
        # One (K, 5) RoI tensor (image index, x1, y1, x2, y2) in the input order.
        rois = torch.cat(
            [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)]
            or [ref.new_zeros(0, 5)]
        )
        index = mapper(rois[:, 1:])
        size = self.output_size
        ph, pw = (size, size) if isinstance(size, int) else tuple(size)
        out = ref.new_zeros((rois.shape[0], ref.shape[1], ph, pw))
        for i, fmap in enumerate(maps):
            rows = torch.where(index == i)[0]
            if rows.numel() == 0:
                continue
            scale = 2.0 ** -(mapper.k_min + i)
            pooled = self.roi_op(fmap, rois[rows], self.output_size, scale, self.sampling_ratio)
            out[rows] = pooled.to(out.dtype)
        return out
