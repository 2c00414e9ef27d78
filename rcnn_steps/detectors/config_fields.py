"""What each field of :class:`~rcnn_steps.detectors.config.DetectorConfig` accepts, as
data and as the tests a value meets: the backbone names (:data:`BACKBONES`), the range of
each number field (:data:`FIELD_LIMITS`), the names each string field may take
(:data:`FIELD_CHOICES`), the advice beside a refused value, and how a value, or the text
of ``--set name=text``, is read against a field's declared type (bool, int, float, str,
a tuple of them, or None too); and where each field sits: the sections a reader finds
them in (:data:`SECTIONS`: ``backbone``, ``rpn``, ``box``, ``mask``...), whose dotted
names (``mask.loss``) :func:`flat_name` turns into the stored flat ones (``mask_loss``).

The declared types themselves are the class's: :mod:`rcnn_steps.detectors.config` reads
them off :class:`~rcnn_steps.detectors.config.DetectorConfig` and applies these rules
(:func:`~rcnn_steps.detectors.config.check_config_field`,
:func:`~rcnn_steps.detectors.config.accepted_values`), which is why those stay beside it.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from rcnn_steps.modeling.backbones import STAGES
from rcnn_steps.modeling.fpn import FPN_LEVELS
from rcnn_steps.modeling.losses import NORMALIZATIONS
from rcnn_steps.modeling.mask_head import (
    MASK_HEADS,
    MASK_LOSSES,
)
from rcnn_steps.ops import ROI_OP_NAMES

__all__ = [
    "BACKBONES",
    "FIELD_CHOICES",
    "FIELD_LIMITS",
    "SECTIONS",
    "flat_name",
    "flat_overrides",
]

#: The ``backbone`` names :class:`DetectorConfig` accepts.
BACKBONES = ("tiny", "resnet50", "resnet101")

# -- what each field accepts ---------------------------------------------------------
# Every field of DetectorConfig is checked on construction against its declared type
# (``bool``: True or False, not "false"; ``int``: an int; ``float``: a finite number;
# ``tuple[int, ...]``: a tuple or list of ints; ``X | None``: also None) and against the
# two tables below (:func:`check_config_field`), so the presets, configs read back from
# JSON, ``python -m rcnn_steps train/evaluate --set`` (:meth:`DetectorConfig.
# parse_override`) and any other caller meet one rule, with an error naming the field.

#: The range of each number field (of every element of a tuple field), read off how the
#: field is used: counts and sizes >= 1, IoUs, fractions and probabilities in [0, 1],
#: loss weights and strides > 0. Fields not listed take any value of their type
#: (``sampling_ratio``: <= 0 is RoIAlign's adaptive count; ``image_mean``).
FIELD_LIMITS: dict[str, str] = {
    "num_classes": ">= 1",
    "backbone_width": ">= 1",
    "backbone_blocks": ">= 0",
    "backbone_trainable_layers": "in 0..5",
    "image_std": "> 0",
    "size_divisible": ">= 1",
    "anchor_sizes": "> 0",
    "anchor_aspect_ratios": "> 0",
    "rpn_fg_iou_thresh": "in [0, 1]",
    "rpn_bg_iou_thresh": "in [0, 1]",
    "rpn_batch_size_per_image": ">= 1",
    "rpn_positive_fraction": "in [0, 1]",
    "rpn_pre_nms_top_n_train": ">= 1",
    "rpn_pre_nms_top_n_test": ">= 1",
    "rpn_post_nms_top_n_train": ">= 1",
    "rpn_post_nms_top_n_test": ">= 1",
    "rpn_nms_thresh": "in [0, 1]",
    "rpn_min_size": ">= 0",
    "rpn_score_thresh": "in [0, 1]",
    "rpn_lambda": "> 0",
    "fpn_channels": ">= 1",
    "fpn_anchor_sizes": "> 0",
    "roi_canonical_size": "> 0",
    "roi_canonical_level": ">= 1",
    "pooled_size": ">= 1",
    "box_head_size": ">= 1",
    "roi_fg_iou_thresh": "in [0, 1]",
    "roi_bg_iou_thresh": "in [0, 1]",
    "roi_bg_iou_low": "in [0, 1]",
    "roi_batch_size_per_image": ">= 1",
    "roi_positive_fraction": "in [0, 1]",
    "box_score_thresh": "in [0, 1]",
    "box_nms_thresh": "in [0, 1]",
    "detections_per_img": ">= 1",
    "mask_pooled_size": ">= 1",
    "mask_head_channels": ">= 1",
    "mask_head_convs": ">= 0",
    "mask_mlp_layers": ">= 1",
    "mask_mlp_size": ">= 1",
    "keypoint_counts": ">= 0",
    "keypoint_pooled_size": ">= 1",
    "keypoint_head_channels": ">= 1",
    "keypoint_head_convs": ">= 1",
    "keypoint_loss_weight": "> 0",
}
_LIMIT_TESTS: dict[str, Callable[[float], bool]] = {
    ">= 0": lambda v: v >= 0,
    ">= 1": lambda v: v >= 1,
    "> 0": lambda v: v > 0,
    "in [0, 1]": lambda v: 0 <= v <= 1,
    "in 0..5": lambda v: 0 <= v <= 5,
}

#: The names each string field (each element of a tuple of names) may take.
FIELD_CHOICES: dict[str, tuple[str, ...]] = {
    "backbone": BACKBONES,
    "feature_stage": STAGES,
    "rpn_normalization": NORMALIZATIONS,
    "fpn_levels": FPN_LEVELS,
    "fpn_roi_levels": FPN_LEVELS,
    "roi_op": ROI_OP_NAMES,
    "box_head": ("mlp", "c5"),
    "mask_head": MASK_HEADS,
    "mask_loss": MASK_LOSSES,
    "mask_roi_op": ROI_OP_NAMES,
    "keypoint_roi_op": ROI_OP_NAMES,
}

#: String fields that name a file (a ``pathlib.Path`` is accepted too).
_PATH_FIELDS = ("backbone_weights",)

#: Tuple fields that may be empty (``keypoint_counts``: unused with ``keypoints=False``).
_MAY_BE_EMPTY = ("keypoint_counts",)

#: What to say beside a refused value, where the range alone does not tell what to do.
_FIELD_ADVICE: dict[str, str] = {
    "num_classes": "object classes, background not counted",
    "backbone_trainable_layers": "stages trained from the top: c5, c4, c3, c2, stem",
    "roi_canonical_size": "s0 of FPN eq. 1",
    "keypoint_loss_weight": "to train without the keypoint branch set keypoints=False",
    "rpn_lambda": "the weight of the box regression loss in eq. 1",
}


class _FieldType(NamedTuple):
    """A DetectorConfig field's declared type, as the checks read it."""

    base: type  #: bool, int, float or str: of the value, or of each element of a tuple
    length: int | None  #: None: one value; 0: a tuple of any length; n: of exactly n
    optional: bool  #: None is accepted too


def _fits(name: str, kind: _FieldType, value: Any) -> bool:
    """Whether ``value`` is of field ``name``'s declared type, range and choices."""
    if value is None:
        return kind.optional
    if kind.length is None:
        return _element_fits(name, kind.base, value)
    if not isinstance(value, tuple):
        return False
    if kind.length and len(value) != kind.length:
        return False
    if not value and name not in _MAY_BE_EMPTY:
        return False
    return all(_element_fits(name, kind.base, v) for v in value)


def _element_fits(name: str, base: type, value: Any) -> bool:
    if base is bool:
        return isinstance(value, bool)  # not the string "false", which is true
    if base is str:
        if name in _PATH_FIELDS and isinstance(value, os.PathLike):
            return True
        return isinstance(value, str) and value in FIELD_CHOICES.get(name, (value,))
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    if base is int and not isinstance(value, numbers.Integral):
        return False
    if not math.isfinite(value):
        return False
    limit = FIELD_LIMITS.get(name)
    return limit is None or bool(_LIMIT_TESTS[limit](value))


class _Unreadable(ValueError):
    """A value written on a command line that is not of its field's type."""


def _parse_element(base: type, text: str) -> Any:
    if base is bool:
        if text.lower() not in ("true", "false"):
            raise _Unreadable(text)
        return text.lower() == "true"
    if base is int:
        if not re.fullmatch(r"[+-]?\d+", text):
            raise _Unreadable(text)
        return int(text)
    if base is float:
        try:
            return float(text)
        except ValueError:
            raise _Unreadable(text) from None
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]  # 'roipool' as Python writes it
    return text


# -- where each field sits -------------------------------------------------------------
# DetectorConfig stores its fields flat (every run cache key, results file and
# checkpoint names them so); these sections are a way to read them and to name them on a
# command line (``--set mask.loss=softmax`` is ``--set mask_loss=softmax``).

#: Every field of :class:`~rcnn_steps.detectors.config.DetectorConfig` (but ``preset``,
#: a record of where a config came from, not a setting) by the part of the detector it
#: sets: ``{section: {short name: flat field}}``, the short name being the field's name
#: without its section's prefix. A section holding an ``enabled`` field is a branch that
#: may be off (``fpn``, ``mask``, ``keypoint``); ``roi`` is the RoI layer every branch
#: pools with (``mask.roi_op`` and ``keypoint.roi_op`` may replace its ``op``); with
#: ``fpn.enabled`` the FPN's per-level ``anchor_sizes`` replace ``rpn.anchor_sizes`` and its
#: levels replace ``backbone.feature_stage``.
SECTIONS: dict[str, dict[str, str]] = {
    "data": {  # what the model takes from the data: classes, normalisation, padding
        "num_classes": "num_classes",
        "image_mean": "image_mean",
        "image_std": "image_std",
        "size_divisible": "size_divisible",
    },
    "backbone": {
        "name": "backbone",
        "width": "backbone_width",
        "blocks": "backbone_blocks",
        "weights": "backbone_weights",
        "trainable_layers": "backbone_trainable_layers",
        "feature_stage": "feature_stage",
    },
    "rpn": {  # anchors and the region proposal network (Faster R-CNN section 3)
        "anchor_sizes": "anchor_sizes",
        "anchor_aspect_ratios": "anchor_aspect_ratios",
        "fg_iou_thresh": "rpn_fg_iou_thresh",
        "bg_iou_thresh": "rpn_bg_iou_thresh",
        "batch_size_per_image": "rpn_batch_size_per_image",
        "positive_fraction": "rpn_positive_fraction",
        "pre_nms_top_n_train": "rpn_pre_nms_top_n_train",
        "pre_nms_top_n_test": "rpn_pre_nms_top_n_test",
        "post_nms_top_n_train": "rpn_post_nms_top_n_train",
        "post_nms_top_n_test": "rpn_post_nms_top_n_test",
        "nms_thresh": "rpn_nms_thresh",
        "min_size": "rpn_min_size",
        "score_thresh": "rpn_score_thresh",
        "lambda": "rpn_lambda",
        "normalization": "rpn_normalization",
        "ignore_cross_boundary": "rpn_ignore_cross_boundary",
    },
    "fpn": {  # the feature pyramid (chapter 05), and which level pools each RoI (eq. 1)
        "enabled": "fpn",
        "channels": "fpn_channels",
        "levels": "fpn_levels",
        "anchor_sizes": "fpn_anchor_sizes",
        "roi_levels": "fpn_roi_levels",
        "roi_canonical_size": "roi_canonical_size",
        "roi_canonical_level": "roi_canonical_level",
    },
    "roi": {  # the RoI layer of every branch (chapter 06)
        "op": "roi_op",
        "sampling_ratio": "sampling_ratio",
        "aligned": "roi_aligned",
    },
    "box": {  # the box branch (Fast R-CNN): its head, RoI sampling and test-time output
        "pooled_size": "pooled_size",
        "head": "box_head",
        "head_size": "box_head_size",
        "fg_iou_thresh": "roi_fg_iou_thresh",
        "bg_iou_thresh": "roi_bg_iou_thresh",
        "bg_iou_low": "roi_bg_iou_low",
        "batch_size_per_image": "roi_batch_size_per_image",
        "positive_fraction": "roi_positive_fraction",
        "score_thresh": "box_score_thresh",
        "nms_thresh": "box_nms_thresh",
        "detections_per_img": "detections_per_img",
    },
    "mask": {  # the mask branch (Mask R-CNN, chapter 07)
        "enabled": "masks",
        "head": "mask_head",
        "loss": "mask_loss",
        "class_agnostic": "mask_class_agnostic",
        "aligned": "mask_aligned",
        "roi_op": "mask_roi_op",
        "pooled_size": "mask_pooled_size",
        "head_channels": "mask_head_channels",
        "head_convs": "mask_head_convs",
        "mlp_layers": "mask_mlp_layers",
        "mlp_size": "mask_mlp_size",
    },
    "keypoint": {  # the keypoint branch (Mask R-CNN section 5, chapter 07)
        "enabled": "keypoints",
        "counts": "keypoint_counts",
        "roi_op": "keypoint_roi_op",
        "pooled_size": "keypoint_pooled_size",
        "head_channels": "keypoint_head_channels",
        "head_convs": "keypoint_head_convs",
        "loss_weight": "keypoint_loss_weight",
    },
}


def flat_name(name: str) -> str:
    """The stored (flat) field name that ``name`` stands for: ``"mask.loss"`` ->
    ``"mask_loss"``, ``"box.batch_size_per_image"`` -> ``"roi_batch_size_per_image"``
    (:data:`SECTIONS`); a name without a dot is returned as it is, flat names being the
    config's own. A dotted name whose section holds no such field is a ValueError naming
    the section's fields; one whose first part is no section, a ValueError naming the
    sections."""
    section, dot, short = name.partition(".")
    if not dot:
        return name
    if section not in SECTIONS:
        raise ValueError(
            f"no section {section!r} (in {name!r}); the sections: {', '.join(SECTIONS)}"
        )
    if short not in SECTIONS[section]:
        raise ValueError(f"no field {name!r}; {section}'s fields: {', '.join(SECTIONS[section])}")
    return SECTIONS[section][short]


def flat_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` with every key a flat field name (:func:`flat_name`): ``{"mask.loss":
    "softmax"}`` -> ``{"mask_loss": "softmax"}``, a dict of flat names unchanged (so what
    is stored, and the cache keys hashed from it, stay as they were). A field given twice,
    by its two names, is a ValueError: which value was meant?"""
    flat: dict[str, Any] = {}
    given: dict[str, str] = {}
    for name, value in overrides.items():
        stored = flat_name(name)
        if stored in given:
            raise ValueError(
                f"{stored} is given twice (as {given[stored]!r} and {name!r}); give it once"
            )
        flat[stored] = value
        given[stored] = name
    return flat
