"""Boxes' input checks: the arguments the box functions share, checked.

Each check names the function, the argument, what was expected, what came in, and what to
do about it: a reader's first mistake is usually a shape, not a formula. Shared by
:mod:`~rcnn_steps.ops.boxes` (areas, IoU, NMS, clipping, formats) and
:mod:`~rcnn_steps.ops.box_coder` (:class:`~rcnn_steps.ops.box_coder.BoxCoder`), as
:mod:`~rcnn_steps.ops.roi_checks` is by the RoI layers; :data:`BOX_FORMATS` are the
formats they take.
"""

from __future__ import annotations

import torch
from torch import Tensor

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


# ----------------------------------------------------------------------------------------
# Input checks. Each names the function, the argument, what was expected, what came in,
# and what to do about it: a reader's first mistake is usually a shape, not a formula.
# ----------------------------------------------------------------------------------------


def _check_tensor(fn: str, name: str, value: object) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{fn}: {name} must be a torch.Tensor, got {type(value).__name__}; "
            f"wrap it with torch.as_tensor({name}, dtype=torch.float32)."
        )


def _check_boxes(
    fn: str, name: str, boxes: object, batched: bool = False, sets: bool = False
) -> None:
    """``boxes`` must be a tensor of shape (N, 4); (..., 4) when ``batched``; (N, 4) or
    (..., N, 4) when ``sets`` (one or more sets of boxes, as :func:`box_iou` takes)."""
    _check_tensor(fn, name, boxes)
    assert isinstance(boxes, Tensor)  # for type checkers; _check_tensor raised otherwise
    if batched:
        ndim_ok = boxes.dim() >= 1
    else:
        ndim_ok = boxes.dim() >= 2 if sets else boxes.dim() == 2
    if not (ndim_ok and boxes.shape[-1] == 4):
        expected = "(..., 4)" if batched else "(N, 4)"
        hint = (
            " A single box needs a leading dimension: boxes[None] or boxes.reshape(-1, 4)."
            if boxes.dim() == 1 and boxes.shape[0] == 4
            else " Each box is one row of four numbers, (x1, y1, x2, y2)."
        )
        if sets:
            hint += " A batch of B sets of boxes is (B, N, 4)."
        raise ValueError(
            f"{fn}: {name} must have shape {expected}, got {tuple(boxes.shape)}.{hint}"
        )
    if boxes.is_complex() or boxes.dtype == torch.bool:
        raise TypeError(
            f"{fn}: {name} must hold real numbers, got dtype {boxes.dtype}; use {name}.float()."
        )


def _check_fmt(fn: str, fmt: object) -> None:
    if fmt not in BOX_FORMATS:
        raise ValueError(
            f"{fn}: fmt must be one of {BOX_FORMATS}, got {fmt!r}; rotated boxes "
            "('cxcywhr', 'xywhr', 'xyxyxyxy') are not supported here (torchvision.ops "
            "takes them)."
        )


def _check_per_box(fn: str, name: str, values: object, boxes: Tensor, what: str) -> None:
    """``values`` must be a 1-D tensor with one entry per box, on the boxes' device."""
    _check_tensor(fn, name, values)
    assert isinstance(values, Tensor)
    if values.dim() != 1:
        raise ValueError(
            f"{fn}: {name} must be 1-D with one {what} per box, got shape "
            f"{tuple(values.shape)}; flatten it with {name}.reshape(-1) if it is (N, 1)."
        )
    if values.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"{fn}: boxes has {boxes.shape[0]} rows but {name} has {values.shape[0]} "
            f"entries; give exactly one {what} per box."
        )
    if values.device != boxes.device:
        raise ValueError(
            f"{fn}: boxes are on {boxes.device} but {name} is on {values.device}; "
            f"move both to one device, e.g. {name}.to(boxes.device)."
        )
