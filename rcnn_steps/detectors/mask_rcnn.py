"""Mask R-CNN (He et al. 2017): the Faster R-CNN of chapters 04-06 with a mask branch and
a keypoint branch (chapter 07).

Mask R-CNN is not a new detector but one more branch on the old one: "Faster R-CNN has
two outputs for each candidate object, a class label and a bounding-box offset; to this
we add a third branch that outputs the object mask" (section 3). So there is no second
model class to read: :class:`~rcnn_steps.detectors.faster_rcnn.FasterRCNN` builds the branches
when its :class:`~rcnn_steps.detectors.config.DetectorConfig` turns them on (``masks=True``,
``keypoints=True``), and :class:`MaskRCNN` is that class with a Mask R-CNN preset as its
default. Every switch the paper ablates is one config field: ``mask_head`` ("fcn",
"c5", "mlp": Figure 4 and Table 2e), ``mask_loss`` ("sigmoid" or "softmax": Table 2b),
``mask_class_agnostic``, ``roi_op`` / ``mask_roi_op`` / ``keypoint_roi_op`` (Table 2c,
Table 6), ``fpn`` and ``box_head`` (Table 2a), ``feature_stage`` (Table 2d).

The parts live one level down: :mod:`rcnn_steps.modeling.mask_head` (mask targets, heads, losses,
pasting) and :mod:`rcnn_steps.modeling.keypoint_head` (one-hot heatmap targets, the softmax loss,
heatmaps back to points); :class:`rcnn_steps.modeling.roi_heads.RoIHeads` runs them "in parallel"
in training (on the box branch's positive RoIs) and "in cascade" at test time (on the
kept detections only).

:func:`torchvision_mask_rcnn` builds torchvision's ``MaskRCNN`` (with a keypoint branch
when the config has one) at the same configuration, and :func:`copy_weights_to_torchvision`
gives it our weights: the two then compute the same losses and detections
(tests/test_mask_rcnn.py), and benchmarks/bench_models.py times them against each other.

Taught in chapter 07 ("Masks and keypoints").
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import Tensor, nn

from rcnn_steps.detectors.config import DetectorConfig
from rcnn_steps.detectors.faster_rcnn import FasterRCNN

__all__ = ["MaskRCNN", "copy_weights_to_torchvision", "torchvision_mask_rcnn"]


class MaskRCNN(FasterRCNN):
    """:class:`~rcnn_steps.detectors.faster_rcnn.FasterRCNN` with Mask R-CNN's branches: the same
    class, whose default config is :meth:`DetectorConfig.cpu_mask` (FPN, RoIAlign, the
    FCN mask head and the keypoint head) instead of :meth:`DetectorConfig.cpu`.

    ``model.train(); model(images, targets)`` returns the four Faster R-CNN losses plus
    ``loss_mask`` and ``loss_keypoint``; ``model.eval(); model(images)`` returns per image
    ``boxes``, ``labels``, ``scores``, ``masks`` ``(D, 1, h, w)`` (probabilities; threshold
    at 0.5), ``keypoints`` ``(D, K, 3)`` and ``keypoints_scores`` ``(D, K)``, the format of
    torchvision's ``MaskRCNN`` and ``KeypointRCNN``. Targets: per image ``boxes``,
    ``labels``, ``masks`` ``(G, h, w)`` uint8 and ``keypoints`` ``(G, K, 3)`` (as
    :class:`rcnn_steps.data.CocoDataset` gives them).
    """

    def __init__(self, config: DetectorConfig | None = None) -> None:
        super().__init__(config or DetectorConfig.cpu_mask())


# ----------------------------------------------------------------------------------------
# torchvision's model at the same configuration: the oracle of the tests and benchmarks


class _NamedMaps(nn.Module):
    """Our backbone as torchvision's models want one: ``forward(x) -> OrderedDict`` of the
    maps the RPN reads (in order) and an ``out_channels`` int."""

    def __init__(self, body: nn.Module, names: tuple[str, ...], out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.names = names
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        maps = self.body(x)
        return OrderedDict((name, maps[name]) for name in self.names)


def _unsupported(config: DetectorConfig) -> list[str]:
    """What torchvision's models cannot express of ``config``."""
    problems = []
    checks = [
        (config.box_head != "mlp", "box_head must be 'mlp' (TwoMLPHead)"),
        (config.roi_op != "roialign_avg", "roi_op must be 'roialign_avg' (MultiScaleRoIAlign)"),
        (config.roi_aligned, "roi_aligned must be False"),
        (config.mask_roi_op not in (None, "roialign_avg"), "mask_roi_op must be RoIAlign"),
        (config.keypoint_roi_op not in (None, "roialign_avg"), "keypoint_roi_op: RoIAlign"),
        (config.masks and config.mask_head != "fcn", "mask_head must be 'fcn'"),
        (config.masks and config.mask_loss != "sigmoid", "mask_loss must be 'sigmoid'"),
        (config.masks and config.mask_class_agnostic, "masks must be per class"),
        (config.masks and config.mask_aligned, "mask_aligned must be False"),
        (config.masks and config.mask_head_convs < 1, "mask_head_convs must be >= 1"),
        (
            config.keypoints and sum(c > 0 for c in config.keypoint_counts) > 1,
            "only one class may have keypoints",
        ),
        (config.rpn_lambda != 1.0 or config.rpn_normalization != "torchvision", "RPN loss"),
        (config.rpn_ignore_cross_boundary, "rpn_ignore_cross_boundary must be False"),
        (config.rpn_min_size != 1e-3, "rpn_min_size must be 1e-3"),
        (config.roi_bg_iou_low != 0.0, "roi_bg_iou_low must be 0"),
    ]
    for bad, what in checks:
        if bad:
            problems.append(what)
    return problems


def torchvision_mask_rcnn(config: DetectorConfig, backbone: nn.Module) -> nn.Module:
    """torchvision's detection model at ``config``'s settings, around ``backbone`` (ours:
    both models then read the same features): ``MaskRCNN`` with ``config.masks``, with a
    keypoint branch (torchvision's ``KeypointRCNN`` heads) attached when
    ``config.keypoints`` too; ``KeypointRCNN`` or ``FasterRCNN`` otherwise. Its own RPN,
    RoI heads, ``MultiScaleRoIAlign`` poolers and mask/keypoint heads, with fresh weights
    (:func:`copy_weights_to_torchvision` copies ours in).

    Its transform normalises and pads as ours and never resizes (torchvision's resizes to
    ``min_size``; we feed images at their own size), so the two see the same pixels.
    Raises ``ValueError`` for settings torchvision cannot express (RoIPool, the C4 or MLP
    heads, softmax or class-agnostic masks, several keypoint classes, ...).
    """
    from torchvision.models.detection import FasterRCNN as TvFasterRCNN
    from torchvision.models.detection import KeypointRCNN
    from torchvision.models.detection import MaskRCNN as TvMaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import TwoMLPHead
    from torchvision.models.detection.keypoint_rcnn import (
        KeypointRCNNHeads,
        KeypointRCNNPredictor,
    )
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.detection.rpn import RPNHead
    from torchvision.models.detection.transform import GeneralizedRCNNTransform
    from torchvision.ops import MultiScaleRoIAlign

    problems = _unsupported(config)
    if problems:
        raise ValueError(
            "torchvision_mask_rcnn: torchvision's models cannot express this config: "
            + "; ".join(problems)
        )
    if config.fpn:
        names, roi_names = tuple(config.fpn_levels), list(config.fpn_roi_levels)
        channels = config.fpn_channels
        sizes = tuple((s,) for s in config.fpn_anchor_sizes)
    else:
        names, roi_names = (config.feature_stage,), [config.feature_stage]
        channels = backbone.out_channels[config.feature_stage]
        sizes = (tuple(config.anchor_sizes),)
    anchors = AnchorGenerator(sizes, (tuple(config.anchor_aspect_ratios),) * len(sizes))

    def pooler(size: int) -> MultiScaleRoIAlign:
        return MultiScaleRoIAlign(
            roi_names,
            size,
            config.sampling_ratio,
            canonical_scale=int(config.roi_canonical_size),
            canonical_level=config.roi_canonical_level,
        )

    kwargs: dict[str, Any] = dict(
        num_classes=None,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(channels, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=config.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=config.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=config.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=config.rpn_post_nms_top_n_test,
        rpn_nms_thresh=config.rpn_nms_thresh,
        rpn_fg_iou_thresh=config.rpn_fg_iou_thresh,
        rpn_bg_iou_thresh=config.rpn_bg_iou_thresh,
        rpn_batch_size_per_image=config.rpn_batch_size_per_image,
        rpn_positive_fraction=config.rpn_positive_fraction,
        rpn_score_thresh=config.rpn_score_thresh,
        box_roi_pool=pooler(config.pooled_size),
        box_head=TwoMLPHead(channels * config.pooled_size**2, config.box_head_size),
        box_score_thresh=config.box_score_thresh,
        box_nms_thresh=config.box_nms_thresh,
        box_detections_per_img=config.detections_per_img,
        box_fg_iou_thresh=config.roi_fg_iou_thresh,
        box_bg_iou_thresh=config.roi_bg_iou_thresh,
        box_batch_size_per_image=config.roi_batch_size_per_image,
        box_positive_fraction=config.roi_positive_fraction,
    )
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    kwargs["box_predictor"] = FastRCNNPredictor(config.box_head_size, config.num_classes + 1)
    wrapped = _NamedMaps(backbone, names, channels)
    keypoint_modules = None
    if config.keypoints:
        width = config.keypoint_head_channels
        keypoint_modules = (
            pooler(config.keypoint_pooled_size),
            KeypointRCNNHeads(channels, [width] * config.keypoint_head_convs),
            KeypointRCNNPredictor(width, max(config.keypoint_counts)),
        )
    if config.masks:
        width = config.mask_head_channels
        model = TvMaskRCNN(
            wrapped,
            mask_roi_pool=pooler(config.mask_pooled_size),
            mask_head=MaskRCNNHeads(channels, [width] * config.mask_head_convs, 1),
            mask_predictor=MaskRCNNPredictor(width, width, config.num_classes + 1),
            **kwargs,
        )
        if keypoint_modules is not None:
            heads = model.roi_heads
            heads.keypoint_roi_pool, heads.keypoint_head, heads.keypoint_predictor = (
                keypoint_modules
            )
    elif keypoint_modules is not None:
        pool, head, predictor = keypoint_modules
        model = KeypointRCNN(
            wrapped,
            keypoint_roi_pool=pool,
            keypoint_head=head,
            keypoint_predictor=predictor,
            **kwargs,
        )
    else:
        model = TvFasterRCNN(wrapped, **kwargs)

    class _NoResize(GeneralizedRCNNTransform):
        # normalise and pad as ours; leave the size alone (ours never resizes)
        def resize(self, image, target=None):
            return image, target

    model.transform = _NoResize(
        1, 1, list(config.image_mean), list(config.image_std), config.size_divisible
    )
    return model


#: Our parameter names -> torchvision's, by prefix.
_TORCHVISION_NAMES = (
    ("backbone.", "backbone.body."),
    ("roi_heads.mask_branch.head.", "roi_heads.mask_head."),
    ("roi_heads.mask_branch.predictor.", "roi_heads.mask_predictor."),
    ("roi_heads.keypoint_branch.head.", "roi_heads.keypoint_head."),
    ("roi_heads.keypoint_branch.predictor.", "roi_heads.keypoint_predictor."),
)


def copy_weights_to_torchvision(ours: FasterRCNN, theirs: nn.Module) -> None:
    """Load ``ours``'s weights into ``theirs`` (built by :func:`torchvision_mask_rcnn`
    from ``ours.config``, around a copy of ``ours.backbone``): the parameter names differ
    only by their module paths (the heads' own names are torchvision's)."""
    state = {}
    for name, value in ours.state_dict().items():
        for mine, tv in _TORCHVISION_NAMES:
            if name.startswith(mine):
                name = tv + name[len(mine) :]
                break
        state[name] = value
    missing, unexpected = theirs.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            "copy_weights_to_torchvision: the models do not match (were both built from "
            f"the same config?); missing in ours: {missing[:5]}, not in torchvision's: "
            f"{unexpected[:5]}"
        )
