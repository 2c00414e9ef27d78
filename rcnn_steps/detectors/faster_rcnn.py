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
   from the config (defined in :mod:`rcnn_steps.detectors.parts`, which chapter 03's Fast
   R-CNN shares, and read from here) (with ``fpn=True``, chapter 05's feature pyramid replaces the
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

# the parts, built from the config (rcnn_steps.detectors.parts); chapter 04 reads them here
from rcnn_steps.detectors.parts import (
    build_backbone,
    build_keypoint_branch,
    build_mask_branch,
    build_pooler,
    build_roi_heads,
    build_rpn,
    head_stages,
    preprocess,
)
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
