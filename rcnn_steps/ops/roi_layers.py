"""The switch between RoI layers: Mask R-CNN Table 2(c) as one config field.

:func:`get_roi_op` turns the five rows of Table 2(c) (:data:`ROI_OP_NAMES`: "roipool",
"roiwarp_max", "roiwarp_avg", "roialign_max", "roialign_avg") into callables with one
signature (:class:`RoIOp`), so a model's RoI layer is a single config field. The layers
themselves are in :mod:`~rcnn_steps.ops.roipool` (chapter 03) and
:mod:`~rcnn_steps.ops.roialign` (chapter 06). Taught in chapter 06 ("RoIAlign").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from rcnn_steps.ops.roi_checks import Boxes
from rcnn_steps.ops.roialign import roi_align, roi_warp
from rcnn_steps.ops.roipool import roi_pool

__all__ = ["ROI_OP_NAMES", "RoIOp", "get_roi_op"]

#: The RoI layers of Mask R-CNN Table 2(c), in the table's order.
ROI_OP_NAMES = ("roipool", "roiwarp_max", "roiwarp_avg", "roialign_max", "roialign_avg")


# ----------------------------------------------------------------------------------------
# The switch: Mask R-CNN Table 2(c) as one config field.
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoIOp:
    """One RoI layer of Mask R-CNN Table 2(c), callable as
    ``op(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=2)``.

    Built by :func:`get_roi_op`; a plain frozen dataclass so that a model config can
    hold and print it. ``sampling_ratio`` is ignored by "roipool" (it has no sampling
    points); ``aligned`` applies to the RoIWarp and RoIAlign rows.
    """

    name: str
    aligned: bool = False

    def __call__(
        self,
        input: Tensor,
        boxes: Boxes,
        output_size: int | tuple[int, int],
        spatial_scale: float = 1.0,
        sampling_ratio: int = 2,
    ) -> Tensor:
        if self.name == "roipool":
            return roi_pool(input, boxes, output_size, spatial_scale)
        layer, mode = self.name.split("_")
        fn = roi_warp if layer == "roiwarp" else roi_align
        return fn(
            input,
            boxes,
            output_size,
            spatial_scale,
            sampling_ratio=sampling_ratio,
            aligned=self.aligned,
            mode=mode,
        )


def get_roi_op(name: str, aligned: bool = False) -> Callable[..., Tensor]:
    """The RoI layer called ``name``, one of :data:`ROI_OP_NAMES`: "roipool",
    "roiwarp_max", "roiwarp_avg", "roialign_max", "roialign_avg" (the rows of Mask R-CNN
    Table 2(c)).

    Returns a :class:`RoIOp`, a callable ``(input, boxes, output_size, spatial_scale,
    sampling_ratio) -> (K, C, ph, pw)``, so the later chapters' heads take the RoI layer
    as a config string. ``aligned`` is passed to RoIWarp/RoIAlign; the paper's
    experiments ran without the half-pixel shift (False, the default, as in torchvision's
    Mask R-CNN). Taught in chapter 06 ("RoIAlign").
    """
    if name not in ROI_OP_NAMES:
        # "roialign" most likely means the published (average) version.
        close = [n for n in ROI_OP_NAMES if isinstance(name, str) and name and n.startswith(name)]
        close.sort(key=lambda n: not n.endswith("_avg"))
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"get_roi_op: unknown RoI layer {name!r}; choose one of {ROI_OP_NAMES}.{hint}"
        )
    return RoIOp(name, bool(aligned))
