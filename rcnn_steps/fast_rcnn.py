"""Fast R-CNN (Girshick 2015): one backbone pass per image, RoI pooling on external
proposals, and a multi-task head.

R-CNN (chapter 02) warps every proposal out of the image and runs the whole CNN on each:
~2000 forward passes per image. Fast R-CNN (section 2, Figure 1) runs the convolutional
layers *once* on the image, and reads each proposal's feature off the shared map with
RoIPool (:func:`rcnn_steps.roi_ops.roi_pool`); a small head then scores the classes and
refines the box, trained end to end with one multi-task loss
(:func:`rcnn_steps.losses.fastrcnn_loss`). The proposals still come from outside
(selective search, chapter 02's cached proposals): that is what Faster R-CNN's RPN
(chapter 04, :mod:`rcnn_steps.faster_rcnn`) replaces.

Built from the same :class:`~rcnn_steps.faster_rcnn.DetectorConfig` as Faster R-CNN
(its RPN fields are unused here), with the same backbone and
:class:`~rcnn_steps.roi_heads.RoIHeads`, so the two chapters' detectors differ only in
where the proposals come from. Taught in chapter 03.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from rcnn_steps.boxes import clip_boxes_to_image
from rcnn_steps.faster_rcnn import DetectorConfig, build_backbone, build_roi_heads, preprocess

__all__ = ["FastRCNN"]


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
            targets if self.training else None,
            intermediates,
        )
        return losses if self.training else detections

    @torch.no_grad()
    def inspect(
        self,
        images: Sequence[Tensor] | Tensor,
        proposals: Sequence[Tensor],
    ) -> dict:
        """The eval-mode intermediates (pooled features, logits, detections)."""
        intermediates: dict = {}
        intermediates["detections"] = self.forward(images, proposals, None, intermediates)
        return intermediates
