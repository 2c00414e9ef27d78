"""The parts every detector from chapter 03 on is built from, read from one
:class:`~rcnn_steps.detectors.config.DetectorConfig`: the backbone (with chapter 05's
feature pyramid when ``fpn=True``), the RPN (chapter 04), the RoI layer and the RoI heads
with their mask and keypoint branches (chapters 03, 06 and 07), the images' preprocessing,
and the diagram stages after the proposals.

Chapter 03's :class:`~rcnn_steps.detectors.fast_rcnn.FastRCNN` (selective-search
proposals) and chapter 04's :class:`~rcnn_steps.detectors.faster_rcnn.FasterRCNN` (its
own RPN) are built from these, so the earlier chapter's module never imports the later
one's; :mod:`rcnn_steps.detectors.faster_rcnn` re-exports them, as chapter 04 reads them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rcnn_steps.detectors.config import DetectorConfig
from rcnn_steps.modeling.anchors import AnchorGenerator
from rcnn_steps.modeling.backbones import ResNetBackbone, TinyBackbone
from rcnn_steps.modeling.fpn import BackboneWithFPN, level_number
from rcnn_steps.modeling.keypoint_head import (
    KeypointBranch,
    KeypointRCNNHeads,
    KeypointRCNNPredictor,
)
from rcnn_steps.modeling.mask_head import (
    MaskBranch,
    MaskMLPHead,
    MaskMLPPredictor,
    MaskRCNNHeads,
    MaskRCNNPredictor,
)
from rcnn_steps.modeling.poolers import MultiScaleRoIPooler, RoIPooler
from rcnn_steps.modeling.roi_heads import (
    C5BoxHead,
    FastRCNNPredictor,
    RoIHeads,
    TwoMLPHead,
    check_targets,
)
from rcnn_steps.modeling.rpn import RegionProposalNetwork, RPNHead
from rcnn_steps.ops import ImageList
from rcnn_steps.utils import diagram_stage, shape_text

__all__ = [
    "BOX_HEAD_TITLES",
    "ROI_OP_TITLES",
    "build_backbone",
    "build_keypoint_branch",
    "build_mask_branch",
    "build_pooler",
    "build_roi_heads",
    "build_rpn",
    "head_stages",
    "preprocess",
]

# ----------------------------------------------------------------------------------------
# Building the parts


def build_backbone(config: DetectorConfig) -> nn.Module:
    """The backbone (``config.backbone``): without FPN it returns only
    ``config.feature_stage``; with ``config.fpn`` it is a
    :class:`~rcnn_steps.modeling.fpn.BackboneWithFPN` returning the levels ``config.fpn_levels``,
    each ``config.fpn_channels`` wide. Either has ``out_channels`` and ``strides`` dicts
    by map name."""
    if config.fpn:
        numbers = [level_number(n) for n in config.fpn_levels]
        stages = tuple(f"c{k}" for k in numbers if k <= 5)
    else:
        stages = (config.feature_stage,)
    if config.backbone == "tiny":
        body: nn.Module = TinyBackbone(
            config.backbone_width, return_stages=stages, blocks_per_stage=config.backbone_blocks
        )
    else:
        body = ResNetBackbone(
            int(config.backbone.removeprefix("resnet")),
            return_stages=stages,
            weights_path=config.backbone_weights,
            trainable_layers=config.backbone_trainable_layers,
        )
    if not config.fpn:
        return body
    return BackboneWithFPN(body, config.fpn_channels, config.fpn_levels)


def build_rpn(config: DetectorConfig, in_channels: int) -> RegionProposalNetwork:
    """The RPN: on one map, every size of ``config.anchor_sizes`` at every ratio; with
    FPN, one size of ``config.fpn_anchor_sizes`` per level at every ratio (FPN section
    4.1) and one head shared by all levels (its weights slide over every level, as the
    paper's; per-level top-k then NMS in :meth:`RegionProposalNetwork.filter_proposals`)."""
    ratios = tuple(config.anchor_aspect_ratios)
    if config.fpn:
        sizes = tuple((s,) for s in config.fpn_anchor_sizes)
        anchor_generator = AnchorGenerator(sizes, (ratios,) * len(sizes))
    else:
        anchor_generator = AnchorGenerator((tuple(config.anchor_sizes),), (ratios,))
    # Every level has the same number of anchors per cell, so one head serves them all.
    head = RPNHead(in_channels, anchor_generator.num_anchors_per_location()[0])
    return RegionProposalNetwork(
        anchor_generator,
        head,
        fg_iou_thresh=config.rpn_fg_iou_thresh,
        bg_iou_thresh=config.rpn_bg_iou_thresh,
        batch_size_per_image=config.rpn_batch_size_per_image,
        positive_fraction=config.rpn_positive_fraction,
        pre_nms_top_n={
            "training": config.rpn_pre_nms_top_n_train,
            "testing": config.rpn_pre_nms_top_n_test,
        },
        post_nms_top_n={
            "training": config.rpn_post_nms_top_n_train,
            "testing": config.rpn_post_nms_top_n_test,
        },
        nms_thresh=config.rpn_nms_thresh,
        min_size=config.rpn_min_size,
        score_thresh=config.rpn_score_thresh,
        lambda_reg=config.rpn_lambda,
        normalization=config.rpn_normalization,
        ignore_cross_boundary=config.rpn_ignore_cross_boundary,
    )


def build_pooler(config: DetectorConfig, roi_op: str, output_size: int) -> nn.Module:
    """A RoI pooler with the config's RoI layer settings: from ``config.feature_stage``,
    or with FPN each RoI from its level of ``config.fpn_roi_levels`` (FPN eq. 1,
    :class:`~rcnn_steps.modeling.poolers.MultiScaleRoIPooler`). The box, mask and keypoint
    branches each have one (7, 14 and 14 bins)."""
    if config.fpn:
        return MultiScaleRoIPooler(
            roi_op,
            output_size,
            config.sampling_ratio,
            aligned=config.roi_aligned,
            canonical_size=config.roi_canonical_size,
            canonical_level=config.roi_canonical_level,
            levels=config.fpn_roi_levels,
        )
    return RoIPooler(roi_op, output_size, config.sampling_ratio, aligned=config.roi_aligned)


def build_mask_branch(config: DetectorConfig, in_channels: int, box_head: nn.Module) -> MaskBranch:
    """Mask R-CNN's mask branch (Figure 4): ``config.mask_head`` on ``config.mask_pooled_size``
    RoI features of ``in_channels`` channels, one mask per class (K + 1 channels, as
    torchvision's) or one for all (``mask_class_agnostic``). ``"c5"`` shares the C4 box
    head's res5 stage (``box_head.stage``)."""
    num_masks = 1 if config.mask_class_agnostic else config.num_classes + 1
    pooler = build_pooler(config, config.mask_roi_op or config.roi_op, config.mask_pooled_size)
    width = config.mask_head_channels
    head: nn.Module
    if config.mask_head == "fcn":
        head = MaskRCNNHeads(in_channels, (width,) * config.mask_head_convs)
        predictor: nn.Module = MaskRCNNPredictor(head.out_channels, width, num_masks)
    elif config.mask_head == "c5":
        head = box_head.stage  # the same res5 modules the box head runs
        predictor = MaskRCNNPredictor(box_head.out_channels, width, num_masks)
    else:
        head = MaskMLPHead(
            in_channels * config.mask_pooled_size**2, config.mask_mlp_size, config.mask_mlp_layers
        )
        predictor = MaskMLPPredictor(config.mask_mlp_size, num_masks, config.mask_resolution)
    return MaskBranch(pooler, head, predictor, config.mask_loss, config.mask_aligned)


def build_keypoint_branch(config: DetectorConfig, in_channels: int) -> KeypointBranch:
    """Mask R-CNN's keypoint branch (section 5): ``keypoint_head_convs`` 3x3 convs of
    ``keypoint_head_channels`` on ``keypoint_pooled_size`` RoI features, deconv + 2x
    up to heatmaps, one group of channels per keypoint class (``keypoint_counts``)."""
    pooler = build_pooler(
        config, config.keypoint_roi_op or config.roi_op, config.keypoint_pooled_size
    )
    head = KeypointRCNNHeads(
        in_channels, (config.keypoint_head_channels,) * config.keypoint_head_convs
    )
    predictor = KeypointRCNNPredictor(head.out_channels, sum(config.keypoint_counts))
    return KeypointBranch(
        pooler, head, predictor, config.keypoint_counts, config.keypoint_loss_weight
    )


def build_roi_heads(config: DetectorConfig, backbone: nn.Module) -> RoIHeads:
    """The box branch reading ``config.feature_stage`` of ``backbone``, or with FPN the
    levels ``config.fpn_roi_levels``, each RoI from the level of FPN eq. (1)
    (:class:`~rcnn_steps.modeling.poolers.MultiScaleRoIPooler`) into fc6/fc7 on ``fpn_channels x 7
    x 7`` (the FPN paper's 2-fc head, section 4.2); with ``config.masks`` /
    ``config.keypoints`` also the mask and keypoint branches (Mask R-CNN)."""
    channels = config.fpn_channels if config.fpn else backbone.out_channels[config.feature_stage]
    pooler = build_pooler(config, config.roi_op, config.pooled_size)
    if config.box_head == "c5":
        box_head: nn.Module = C5BoxHead(backbone.split("c4")[1], backbone.out_channels["c5"])
    else:
        box_head = TwoMLPHead(channels * config.pooled_size**2, config.box_head_size)
    return RoIHeads(
        pooler,
        box_head,
        FastRCNNPredictor(box_head.out_channels, config.num_classes + 1),
        fg_iou_thresh=config.roi_fg_iou_thresh,
        bg_iou_thresh=config.roi_bg_iou_thresh,
        bg_iou_low=config.roi_bg_iou_low,
        batch_size_per_image=config.roi_batch_size_per_image,
        positive_fraction=config.roi_positive_fraction,
        score_thresh=config.box_score_thresh,
        nms_thresh=config.box_nms_thresh,
        detections_per_img=config.detections_per_img,
        mask_branch=build_mask_branch(config, channels, box_head) if config.masks else None,
        keypoint_branch=build_keypoint_branch(config, channels) if config.keypoints else None,
    )


def preprocess(
    images: Sequence[Tensor] | Tensor,
    targets: Sequence[Mapping[str, Tensor]] | None,
    config: DetectorConfig,
) -> tuple[ImageList, list[dict[str, Tensor]] | None]:
    """Check, normalise and pad a batch: ``(ImageList, targets)``.

    Images: a list of ``(3, H, W)`` float tensors (or one ``(N, 3, H, W)`` tensor), values
    in [0, 1]. Targets are checked with :func:`rcnn_steps.modeling.roi_heads.check_targets`.
    """
    if isinstance(images, Tensor):
        if images.dim() == 3:
            raise ValueError(
                f"images must be a list of (3, H, W) tensors or an (N, 3, H, W) batch, got "
                f"one tensor of shape {tuple(images.shape)}; wrap a single image in a list."
            )
        images = list(images.unbind(0)) if images.dim() == 4 else images
    if not isinstance(images, Sequence) or not len(images):
        raise ValueError("images must be a non-empty list of (3, H, W) tensors.")
    channels = len(config.image_mean)
    for i, img in enumerate(images):
        if not isinstance(img, Tensor) or img.dim() != 3 or img.shape[0] != channels:
            shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
            raise ValueError(
                f"images[{i}] must be a ({channels}, H, W) tensor, got {shape}"
                + ("; is it (H, W, C)? use image.permute(2, 0, 1)." if isinstance(img, Tensor)
                   and img.dim() == 3 and img.shape[-1] == channels else ".")
            )  # fmt: skip
        if not img.is_floating_point():
            raise TypeError(f"images[{i}] must be float in [0, 1], got {img.dtype}; use img / 255.")
        if min(img.shape[-2:]) < config.size_divisible:
            raise ValueError(
                f"images[{i}] is {tuple(img.shape[-2:])}; the detector needs at least "
                f"{config.size_divisible} pixels per side."
            )
    if targets is not None:
        check_targets(targets, [tuple(img.shape[-2:]) for img in images], config.num_classes)
        targets = [dict(t) for t in targets]
    mean = torch.as_tensor(config.image_mean, dtype=images[0].dtype, device=images[0].device)
    std = torch.as_tensor(config.image_std, dtype=images[0].dtype, device=images[0].device)
    normalised = [(img - mean[:, None, None]) / std[:, None, None] for img in images]
    return ImageList.from_tensors(normalised, config.size_divisible), targets


#: How a diagram names each RoI layer (``roi_op``) and box head (``box_head``).
ROI_OP_TITLES = {"roipool": "RoIPool", "roiwarp_max": "RoIWarp (max)",
                 "roiwarp_avg": "RoIWarp", "roialign_max": "RoIAlign (max)",
                 "roialign_avg": "RoIAlign"}  # fmt: skip
BOX_HEAD_TITLES = {"mlp": "2-fc box head + predictor", "c5": "res5 box head + predictor"}


def head_stages(config: DetectorConfig, out: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The stages after the proposals, shared by Fast R-CNN and Faster/Mask R-CNN: the RoI
    layer, the box head and predictor, NMS, and the mask and keypoint branches, from
    ``out`` (an eval-mode ``inspect`` of one image)."""
    size = config.pooled_size
    title = f"{ROI_OP_TITLES[config.roi_op]} {size}x{size} per proposal"
    if config.fpn:
        title = f"{ROI_OP_TITLES[config.roi_op]} {size}x{size}, from each RoI's level"
    stages = [diagram_stage("roi_layer", title, shape_text(out["pooled_features"]))]
    detail = f"classes {shape_text(out['class_logits'])}, boxes {shape_text(out['box_regression'])}"
    stages.append(diagram_stage("heads", BOX_HEAD_TITLES[config.box_head], detail))
    found = len(out["detections"][0]["boxes"])
    stages.append(diagram_stage("detections", "per-class NMS", f"{found} detections here"))
    if "detection_mask_logits" in out:
        detail = f"logits {shape_text(out['detection_mask_logits'])}"
        stages.append(diagram_stage("mask", "mask branch, per detection", detail, branch=True))
    if "detection_heatmaps" in out:
        detail = f"heatmaps {shape_text(out['detection_heatmaps'])}"
        stages.append(diagram_stage("keypoints", "keypoint branch, per person", detail, True))
    return stages
