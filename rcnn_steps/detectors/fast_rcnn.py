"""Fast R-CNN (Girshick 2015): one backbone pass per image, RoI pooling on external
proposals, and a multi-task head.

R-CNN (chapter 02) warps every proposal out of the image and runs the whole CNN on each:
~2000 forward passes per image. Fast R-CNN (section 2, Figure 1) runs the convolutional
layers *once* on the image, and reads each proposal's feature off the shared map with
RoIPool (:func:`rcnn_steps.ops.roipool.roi_pool`); a small head then scores the classes and
refines the box, trained end to end with one multi-task loss
(:func:`rcnn_steps.modeling.losses.fastrcnn_loss`). The proposals still come from outside
(selective search, chapter 02's cached proposals): that is what Faster R-CNN's RPN
(chapter 04, :mod:`rcnn_steps.detectors.faster_rcnn`) replaces.

Built from the same :class:`~rcnn_steps.detectors.config.DetectorConfig` as Faster R-CNN
(its RPN fields are unused here), with the same backbone and
:class:`~rcnn_steps.modeling.roi_heads.RoIHeads`, so the two chapters' detectors differ only in
where the proposals come from. Taught in chapter 03; how the chapter trains, evaluates and
records it (``python -m rcnn_steps.fast_rcnn evaluate``) is
:mod:`rcnn_steps.experiments.fast_rcnn`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rcnn_steps.detectors.config import DetectorConfig
from rcnn_steps.detectors.parts import (
    build_backbone,
    build_roi_heads,
    head_stages,
    preprocess,
)
from rcnn_steps.ops import clip_boxes_to_image
from rcnn_steps.utils import diagram_stage, shape_text

__all__ = [
    "FastRCNN",
]


class FastRCNN(nn.Module):
    """Fast R-CNN on external proposals.

    ``model.train(); model(images, proposals, targets)`` returns ``{"loss_classifier",
    "loss_box_reg"}``; ``model.eval(); model(images, proposals)`` returns per image
    ``{"boxes", "labels", "scores"}``.

    Args:
        config: the detector's settings (backbone width, feature stage, RoI layer,
            RoI batch, head size, postprocessing); default :meth:`DetectorConfig.cpu`.
    """

    def __init__(self, config: DetectorConfig | None = None) -> None:
        super().__init__()
        self.config = config or DetectorConfig.cpu()
        self.backbone = build_backbone(self.config)
        self.roi_heads = build_roi_heads(self.config, self.backbone)

    def forward(
        self,
        images: Sequence[Tensor] | Tensor,
        proposals: Sequence[Tensor],
        targets: Sequence[Mapping[str, Tensor]] | None = None,
        intermediates: dict | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses (training mode, ``targets`` required) or detections (eval mode).

        Args:
            images: a list of ``(3, H, W)`` float images in [0, 1].
            proposals: per image a ``(P_i, 4)`` float tensor of xyxy boxes in image
                pixels (e.g. selective search's); they are clipped to the image. In
                training the ground-truth boxes are appended (section 2.3), so even
                ``P_i = 0`` trains.
            targets: per image ``{"boxes" (G_i, 4), "labels" (G_i,)}``.
            intermediates: a dict to fill, as :meth:`RoIHeads.forward` does, plus
                ``feature``.
        """
        image_list, targets = preprocess(images, targets, self.config)
        if self.training and targets is None:
            raise ValueError("FastRCNN: targets are required in training mode.")
        if not isinstance(proposals, Sequence) or len(proposals) != len(image_list):
            got = len(proposals) if isinstance(proposals, Sequence) else type(proposals).__name__
            raise ValueError(
                f"FastRCNN: proposals must be a list with one (P_i, 4) tensor per image "
                f"({len(image_list)} images), got {got}."
            )
        feature = self.backbone(image_list.tensors)[self.config.feature_stage]
        clipped = []
        for i, (boxes, size) in enumerate(zip(proposals, image_list.image_sizes, strict=True)):
            if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
                shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
                raise ValueError(f"FastRCNN: proposals[{i}] must be (P, 4) xyxy, got {shape}.")
            boxes = boxes.to(device=feature.device, dtype=feature.dtype)
            clipped.append(clip_boxes_to_image(boxes, size))
        if intermediates is not None:
            intermediates["feature"] = feature.detach()
        detections, losses = self.roi_heads(
            feature,
            clipped,
            image_list.image_sizes,
            image_list.tensors.shape[-2:],
            # eval mode ignores targets, except to show the RoI sampling (inspect)
            targets if self.training or intermediates is not None else None,
            intermediates,
        )
        return losses if self.training else detections

    @torch.no_grad()
    def inspect(
        self,
        images: Sequence[Tensor] | Tensor,
        proposals: Sequence[Tensor],
        targets: Sequence[Mapping[str, Tensor]] | None = None,
    ) -> dict:
        """The eval-mode intermediates (pooled features, logits, detections).

        Given ``targets``, also the training-time RoI sampling of these proposals:
        ``sampled_rois``, ``sampled_labels`` (0 = background) and
        ``sampled_regression_targets`` (a random draw: seed first to repeat it);
        ``pooled_features`` are then those of the sampled RoIs.
        """
        intermediates: dict = {}
        intermediates["detections"] = self.forward(images, proposals, targets, intermediates)
        return intermediates

    @torch.no_grad()
    def stages(self, image: Tensor, proposals: Tensor) -> list[dict[str, Any]]:
        """The detector's stages on one ``(3, H, W)`` image and its ``(P, 4)`` proposals,
        with the real shapes, as :meth:`rcnn_steps.detectors.faster_rcnn.FasterRCNN.stages` gives
        them (for :func:`rcnn_steps.viz.draw_stages`)."""
        was_training = self.training
        self.eval()
        try:
            out = self.inspect([image], [proposals])
        finally:
            self.train(was_training)
        c = self.config
        stride = 2 ** int(c.feature_stage[1])
        detail = f"{c.feature_stage} {shape_text(out['feature'][0])}, stride {stride}"
        return [
            diagram_stage("image", "image", shape_text(image)),
            diagram_stage("proposals", "selective search (not learned)", f"{len(proposals)} boxes"),
            diagram_stage("features", "backbone, once per image", detail),
            *head_stages(c, out),
        ]
