"""Faster R-CNN (Ren et al. 2015): backbone -> RPN -> RoI heads, one config.

The whole detector of chapter 04, read top to bottom:

1. :class:`~rcnn_steps.detectors.config.DetectorConfig` (defined in
   :mod:`rcnn_steps.detectors.config`, read from here too): every switch in one plain
   dataclass (``config.display()`` prints them all), with presets by scale
   (:meth:`DetectorConfig.ci`, :meth:`DetectorConfig.cpu`, and chapter 05's
   :meth:`DetectorConfig.cpu_fpn`, :meth:`DetectorConfig.gpu`); the training settings that
   go with them live in the preset's record (:mod:`rcnn_steps.experiments`;
   :func:`rcnn_steps.experiments.train_config` reads it).
2. :func:`build_backbone`, :func:`build_rpn`, :func:`build_roi_heads`: the parts, built
   from the config (with ``fpn=True``, chapter 05's feature pyramid replaces the
   backbone's single map: :mod:`rcnn_steps.modeling.fpn`, :mod:`rcnn_steps.modeling.poolers`).
3. :class:`FasterRCNN`: ``forward(images, targets)`` in torchvision's convention (a dict
   of losses in training, a list of ``{boxes, labels, scores}`` in eval) and
   :meth:`FasterRCNN.inspect`, every stage's named intermediates for drawing
   (matterport Mask_RCNN's inspect notebooks).

Images are float ``(3, H, W)`` in [0, 1], any size (the synthetic set's are 128 x 128);
they are normalised, padded to a multiple of 32 (64 with FPN's P6;
:class:`~rcnn_steps.ops.image_list.ImageList`) and never resized, so boxes stay in the
image's pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rcnn_steps.detectors.config import DetectorConfig, accepted_values, check_config_field
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
from rcnn_steps.utils import StageClock, diagram_stage, shape_text

__all__ = [
    # the config, defined in rcnn_steps.detectors.config; chapter 04 reads it from here
    "DetectorConfig",
    "accepted_values",
    "check_config_field",
    "FasterRCNN",
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


# ----------------------------------------------------------------------------------------
# The model


class FasterRCNN(nn.Module):
    """Faster R-CNN: backbone -> RPN -> RoI heads, all built from one
    :class:`DetectorConfig`, on a single feature map (``config.feature_stage``; the "C4"
    design with ``box_head="c5"``) or, with ``config.fpn``, on a feature pyramid (chapter
    05: the RPN over P2..P6, each RoI pooled from its level of P2..P5).

    ``model.train(); losses = model(images, targets)`` returns ``{"loss_objectness",
    "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}`` (the four terms of
    Faster R-CNN's approximate joint training, section 3.2); ``model.eval();
    model(images)`` returns per image ``{"boxes" (D, 4) xyxy, "labels" (D,) in 1..K,
    "scores" (D,)}``. Targets: per image ``{"boxes" (G, 4) float xyxy, "labels" (G,)
    int64 in 1..K}``, G may be 0.

    **Mask R-CNN is this model with its branches on** (chapter 07): with
    ``config.masks`` the RoI heads grow a mask branch, with ``config.keypoints`` a
    keypoint branch (:func:`build_mask_branch`, :func:`build_keypoint_branch`). Training
    adds ``"loss_mask"`` / ``"loss_keypoint"`` (targets then need ``"masks"`` (G, H, W)
    and ``"keypoints"`` (G, K, 3)); detections add ``"masks"`` (D, 1, h, w)
    probabilities pasted into the image, ``"keypoints"`` (D, K, 3) and
    ``"keypoints_scores"`` (D, K), as torchvision's ``MaskRCNN`` / ``KeypointRCNN``.
    :class:`rcnn_steps.detectors.mask_rcnn.MaskRCNN` is the same class with a Mask R-CNN preset
    by default.
    """

    def __init__(self, config: DetectorConfig | None = None) -> None:
        super().__init__()
        self.config = config or DetectorConfig.cpu()
        self.backbone = build_backbone(self.config)
        if self.config.fpn:
            channels = self.config.fpn_channels
        else:
            channels = self.backbone.out_channels[self.config.feature_stage]
        self.rpn = build_rpn(self.config, channels)
        self.roi_heads = build_roi_heads(self.config, self.backbone)

    def _run(
        self,
        images: Sequence[Tensor] | Tensor,
        targets: Sequence[Mapping[str, Tensor]] | None,
        intermediates: dict | None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        image_list, targets = preprocess(images, targets, self.config)
        clock = StageClock(intermediates, image_list.tensors.device)
        clock.start()
        features = self.backbone(image_list.tensors)
        clock.lap("backbone")
        if self.config.fpn:
            rpn_maps = [features[n] for n in self.config.fpn_levels]
        else:
            rpn_maps = [features[self.config.feature_stage]]
        roi_maps = self._roi_maps(features)
        image_shape = image_list.tensors.shape[-2:]
        clock.start()
        proposals, rpn_losses = self.rpn(image_list, rpn_maps, targets, intermediates)
        clock.lap("rpn")
        detections, roi_losses = self.roi_heads(
            roi_maps, proposals, image_list.image_sizes, image_shape, targets, intermediates
        )
        if intermediates is not None:
            intermediates.update(
                image_sizes=image_list.image_sizes,
                features={k: v.detach() for k, v in features.items()},
            )
            if self.config.fpn:
                pooler = self.roi_heads.pooler
                intermediates["proposal_levels"] = pooler.assign_levels(
                    features, proposals, image_shape
                )
                if "sampled_rois" in intermediates:
                    intermediates["sampled_roi_levels"] = pooler.assign_levels(
                        features, intermediates["sampled_rois"], image_shape
                    )
            else:
                intermediates["feature"] = rpn_maps[0].detach()
        return detections, {**rpn_losses, **roi_losses}

    def _roi_maps(self, features: Mapping[str, Tensor]) -> Tensor | Mapping[str, Tensor]:
        """What the RoI heads pool from: the whole pyramid with FPN (the pooler picks each
        RoI's level), else the one map ``config.feature_stage``."""
        return features if self.config.fpn else features[self.config.feature_stage]

    def forward(
        self,
        images: Sequence[Tensor] | Tensor,
        targets: Sequence[Mapping[str, Tensor]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training mode (``targets`` required), detections in eval mode
        (``targets`` ignored, as in torchvision)."""
        if self.training:
            if targets is None:
                raise ValueError("FasterRCNN: targets are required in training mode.")
            return self._run(images, targets, None)[1]
        return self._run(images, None, None)[0]

    @torch.no_grad()
    def inspect(
        self,
        images: Sequence[Tensor] | Tensor,
        targets: Sequence[Mapping[str, Tensor]] | None = None,
    ) -> dict[str, Any]:
        """Every stage's named intermediates, for drawing (no gradients; the mode is
        left as it is: in eval mode with targets you get both the training targets and
        the detections).

        Returns a dict with (per-image lists unless noted):

        - ``features``: the backbone's maps by name, ``{feature_stage: (N, C, H/s, W/s)}``
          or with FPN ``{"p2": (N, d, H/4, W/4), ..., "p6": (N, d, H/64, W/64)}``;
          without FPN also ``feature``, that one map; ``image_sizes``;
        - RPN: ``anchors`` (A_total, 4), ``num_anchors_per_level``, ``feature_sizes``,
          ``objectness`` (N, A_total) logits, ``rpn_deltas`` (N, A_total, 4),
          ``proposals_before_nms`` + ``proposal_scores_before_nms``, ``proposals`` +
          ``proposal_scores``; with targets ``anchor_labels`` (1/0/-1),
          ``matched_gt_boxes``, ``sampled_positive``, ``sampled_negative``;
        - RoI heads: with targets ``sampled_rois``, ``sampled_labels``,
          ``sampled_regression_targets``; ``pooled_features`` (R, C, 7, 7) (of the
          sampled RoIs with targets, else of all proposals); in eval mode
          ``class_logits``, ``box_regression``, ``detections``;
        - FPN only: ``proposal_levels`` and (with targets) ``sampled_roi_levels``,
          ``(P_i,)`` / ``(R_i,)`` int64, the level k (2..5 for P2..P5) each proposal /
          sampled RoI is pooled from (eq. 1); the RPN's levels are in
          ``num_anchors_per_level`` and ``feature_sizes``, in ``config.fpn_levels``'s order;
        - ``losses`` (with targets).
        """
        intermediates: dict[str, Any] = {}
        detections, losses = self._run(images, targets, intermediates)
        if targets is not None:
            intermediates["losses"] = {k: v.detach() for k, v in losses.items()}
        if not self.training:
            intermediates["detections"] = detections
        return intermediates

    @torch.no_grad()
    def keypoint_heatmaps(
        self,
        images: Sequence[Tensor] | Tensor,
        boxes: Sequence[Tensor],
        labels: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """The keypoint branch's heatmap logits for boxes you choose (a ground-truth
        person, say), not only for the model's own detections: backbone, then the
        branch's RoIAlign, convs and deconv on ``boxes``, each box reading the channels
        of its class (Mask R-CNN section 5). Run in eval mode (batch-norm statistics as
        at test time), then the mode is restored; no gradients.

        On a model's own detections this equals ``inspect()``'s
        ``detection_heatmaps``; :func:`rcnn_steps.modeling.keypoint_head.heatmap_entropy`
        says how peaked the maps are.

        Args:
            images: a list of ``(3, H, W)`` floats in [0, 1] (or an ``(N, 3, H, W)``
                batch).
            boxes: per image ``(R_i, 4)`` xyxy in the image's pixels.
            labels: per image ``(R_i,)`` the class of each box; may be None when exactly
                one class has keypoints (the synthetic set's person).

        Returns:
            ``(sum R_i, K_max, m, m)`` logits; softmax over each map's ``m x m`` cells
            gives the probability of the keypoint's position in the box.
        """
        branch = self.roi_heads.keypoint_branch
        if branch is None:
            raise ValueError(
                "keypoint_heatmaps: this model has no keypoint branch (config.keypoints is "
                "False); use a model trained with keypoints."
            )
        image_list, _ = preprocess(images, None, self.config)
        if len(boxes) != len(image_list.image_sizes):
            raise ValueError(
                f"keypoint_heatmaps: {len(image_list.image_sizes)} images but {len(boxes)} "
                "box tensors; give one (R_i, 4) tensor per image."
            )
        if labels is None:
            classes = [c for c, n in enumerate(branch.keypoint_counts, start=1) if n]
            if len(classes) != 1:
                raise ValueError(
                    f"keypoint_heatmaps: classes {classes} have keypoints; give the labels "
                    "of the boxes (one (R_i,) tensor per image)."
                )
            labels = [torch.full((len(b),), classes[0], dtype=torch.int64) for b in boxes]
        device = image_list.tensors.device
        rois = [b.to(device=device, dtype=image_list.tensors.dtype) for b in boxes]
        labels = torch.cat([lab.to(device) for lab in labels])
        fits = len(labels) == sum(len(r) for r in rois)
        fits = fits and bool(((labels >= 0) & (labels < len(branch.channels))).all())
        if not fits or not branch.has_keypoints(labels).all():
            raise ValueError(
                f"keypoint_heatmaps: labels must give one class with keypoints per box, "
                f"got {labels.tolist()} for {sum(len(r) for r in rois)} boxes."
            )
        was_training = self.training
        self.eval()
        try:
            features = self.backbone(image_list.tensors)
            logits = branch(self._roi_maps(features), rois, image_list.tensors.shape[-2:])
        finally:
            self.train(was_training)
        return branch.select(logits, labels)

    @torch.no_grad()
    def stages(self, image: Tensor) -> list[dict[str, Any]]:
        """What :func:`rcnn_steps.viz.draw_stages` draws: the detector's stages on one
        ``(3, H, W)`` image, each ``{"key", "title", "detail", "branch"}`` with the real
        shapes :meth:`inspect` (eval mode) finds, so the diagram is the code's. ``key``
        names a stage's job, the same in every chapter's detector (``proposals``,
        ``features``, ``roi_layer``, ...); ``title`` says how this one does it, so a
        changed title is a new idea; ``branch`` stages hang off the box branch (Mask
        R-CNN's mask and keypoint heads)."""
        was_training = self.training
        self.eval()
        try:
            out = self.inspect([image])
        finally:
            self.train(was_training)
        c = self.config
        stages = [diagram_stage("image", "image", shape_text(image))]
        if c.fpn:
            maps = [f"{k.upper()} {shape_text(v[0])}" for k, v in out["features"].items()]
            levels = f"{maps[0]} ... {maps[-1]}"
            stages.append(diagram_stage("features", "backbone + FPN, once per image", levels))
            rpn = "RPN on every pyramid level"
        else:
            stride = 2 ** int(c.feature_stage[1])
            detail = f"{c.feature_stage} {shape_text(out['feature'][0])}, stride {stride}"
            stages.append(diagram_stage("features", "backbone, once per image", detail))
            rpn = "RPN: anchors scored and refined"
        before, after = len(out["proposals_before_nms"][0]), len(out["proposals"][0])
        detail = f"{len(out['anchors'])} anchors -> {before} boxes -> NMS -> {after}"
        stages.append(diagram_stage("proposals", rpn, detail))
        stages += head_stages(c, out)
        return stages


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
