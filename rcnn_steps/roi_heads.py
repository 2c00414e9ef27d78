"""The box branch of Fast/Faster R-CNN: from proposals to classified, refined boxes.

Fast R-CNN (Girshick 2015, section 2) in four small parts:

1. **Sampling** (section 2.3, "Mini-batch sampling"): in training, each image's
   proposals, with its ground-truth boxes appended (so every object has at least one
   perfect RoI), are matched at IoU 0.5 (:class:`~rcnn_steps.matcher.Matcher`) and a
   mini-batch of RoIs is drawn with at most 25% foreground
   (:class:`~rcnn_steps.sampler.BalancedPositiveNegativeSampler`).
2. **RoI feature extraction** (section 2.1): :class:`RoIPooler` reads a fixed ``7 x 7``
   feature per RoI with the RoI layer named in the config (``"roipool"`` here; RoIAlign
   arrives in chapter 06 through the same field, :func:`rcnn_steps.roi_ops.get_roi_op`).
3. **The head**: :class:`TwoMLPHead` (flatten -> fc -> fc, the "fc6, fc7" of VGG) or
   :class:`C5BoxHead` (res5 on each RoI, the C4 design), then
   :class:`FastRCNNPredictor`: K + 1 class scores and class-specific deltas (section 2.2).
4. **Loss / postprocess**: :func:`rcnn_steps.losses.fastrcnn_loss` in training; at test
   time softmax, decode, clip, score threshold and per-class NMS (Fast R-CNN section
   2.4, with R-CNN section 2.2's NMS), :meth:`RoIHeads.postprocess_detections`.

Taught in chapter 03 (Fast R-CNN) and reused by chapter 04 (Faster R-CNN), 06 and 07.
Parameter names equal torchvision's (``fc6``, ``fc7``, ``cls_score``, ``bbox_pred``) and
``postprocess_detections`` equals ``torchvision``'s ``RoIHeads.postprocess_detections``
(tests/test_roi_heads.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rcnn_steps.boxes import BoxCoder, batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes
from rcnn_steps.losses import fastrcnn_loss
from rcnn_steps.matcher import Matcher, label_anchors
from rcnn_steps.roi_ops import get_roi_op
from rcnn_steps.sampler import BalancedPositiveNegativeSampler

__all__ = [
    "C5BoxHead",
    "FastRCNNPredictor",
    "RoIHeads",
    "RoIPooler",
    "TwoMLPHead",
    "check_targets",
]


def check_targets(
    targets: Sequence[Mapping[str, Tensor]],
    image_sizes: Sequence[tuple[int, int]] | None = None,
    num_classes: int | None = None,
) -> None:
    """Raise a clear error for targets a detector cannot train on.

    Each target needs ``boxes`` ``(G, 4)`` float xyxy, finite, with positive width and
    height (a zero-area box has no IoU with anything and an infinite regression target; a
    nan box would poison the losses) and ``labels`` ``(G,)`` int64 in ``1..num_classes``
    (the upper bound is checked when ``num_classes`` is given: a larger label would index
    past the classifier's K + 1 outputs, an IndexError on CPU and a device-side assert on
    CUDA). ``G = 0`` (an image without objects) is fine.
    """
    if not isinstance(targets, Sequence) or isinstance(targets, Mapping):
        raise TypeError("targets must be a list with one dict per image.")
    if image_sizes is not None and len(targets) != len(image_sizes):
        raise ValueError(
            f"{len(image_sizes)} images but {len(targets)} targets; give one per image."
        )
    for i, t in enumerate(targets):
        if "boxes" not in t or "labels" not in t:
            raise ValueError(f"targets[{i}] needs 'boxes' (G, 4) and 'labels' (G,); got {list(t)}.")
        boxes, labels = t["boxes"], t["labels"]
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
            shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
            raise ValueError(f"targets[{i}]['boxes'] must be a (G, 4) tensor, got {shape}.")
        if not boxes.is_floating_point():
            raise TypeError(f"targets[{i}]['boxes'] must be float, got {boxes.dtype}.")
        if not isinstance(labels, Tensor) or labels.shape != (boxes.shape[0],):
            raise ValueError(
                f"targets[{i}]['labels'] must be a ({boxes.shape[0]},) tensor, one per box."
            )
        nonfinite = torch.where(~torch.isfinite(boxes).all(dim=1))[0]
        if nonfinite.numel():
            j = int(nonfinite[0])
            raise ValueError(
                f"targets[{i}]['boxes'][{j}] = {boxes[j].tolist()} is not finite (nan or "
                "inf); every box needs four real pixel coordinates: fix or drop it in the "
                "data (CocoDataset rejects such boxes, or drops them with "
                "on_invalid_box='skip')."
            )
        bad = torch.where((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))[0]
        if bad.numel():
            j = int(bad[0])
            raise ValueError(
                f"targets[{i}]['boxes'][{j}] = {boxes[j].tolist()} has non-positive width or "
                "height; boxes must be (x1, y1, x2, y2) with x2 > x1 and y2 > y1 (COCO's "
                "(x, y, w, h) needs converting, and empty boxes removing)."
            )
        if labels.numel() and bool((labels < 1).any()):
            raise ValueError(
                f"targets[{i}]['labels'] = {labels.tolist()} must be >= 1 (0 is background)."
            )
        if num_classes is not None and labels.numel() and int(labels.max()) > num_classes:
            raise ValueError(
                f"targets[{i}]['labels'] = {labels.tolist()} has label {int(labels.max())}, "
                f"but the model has num_classes = {num_classes} (labels 1..{num_classes}, 0 "
                "is background): build the model with num_classes set to the data's number "
                "of categories (CocoDataset.num_classes), and give contiguous labels, not "
                "raw category ids (CocoDataset maps them)."
            )


class RoIPooler(nn.Module):
    """A fixed-size feature per RoI from one feature map, with a named RoI layer.

    Args:
        roi_op: "roipool" (Fast R-CNN), "roiwarp_max", "roiwarp_avg", "roialign_max",
            "roialign_avg" (Mask R-CNN Table 2(c)), see :func:`rcnn_steps.roi_ops.get_roi_op`.
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


class TwoMLPHead(nn.Module):
    """flatten -> fc6 -> ReLU -> fc7 -> ReLU: ``(R, C, ph, pw) -> (R, representation_size)``.

    VGG-16's fc6/fc7 in Fast R-CNN (Figure 1); torchvision's ``TwoMLPHead`` (same names).
    """

    def __init__(self, in_channels: int, representation_size: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.out_channels = representation_size

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(start_dim=1)
        return F.relu(self.fc7(F.relu(self.fc6(x))))


class C5BoxHead(nn.Module):
    """The C4 design's box head: res5 (the backbone's c5 stage) on each pooled RoI, then
    global average pooling (He et al. 2016 section "Object detection"; Mask R-CNN Figure
    4, left). ``(R, C4, ph, pw) -> (R, C5)``.

    Args:
        stage: the stages after c4, e.g. ``TinyBackbone.split("c4")[1]`` (the modules
            are shared with the backbone; a C4 model never runs them on the whole image,
            so only this head trains them).
        out_channels: the stage's output channels.
    """

    def __init__(self, stage: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.stage = stage
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.stage(x).mean(dim=(2, 3))


class FastRCNNPredictor(nn.Module):
    """The two sibling output layers of Fast R-CNN (section 2.2): ``cls_score`` (K + 1
    class logits) and ``bbox_pred`` (4 (K + 1) class-specific deltas).
    ``(R, in_channels) -> ((R, K + 1), (R, 4 (K + 1)))``; K + 1 = ``num_classes``
    *including* background, as in torchvision (same parameter names).

    Initialised as in the paper: N(0, 0.01) for the scores, N(0, 0.001) for the deltas,
    biases 0.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


class RoIHeads(nn.Module):
    """The box branch: sample RoIs, pool, head, predictor, loss or detections.

    Args:
        pooler: a :class:`RoIPooler` (one map) or a
            :class:`rcnn_steps.poolers.MultiScaleRoIPooler` (a feature pyramid, chapter 05).
        box_head: :class:`TwoMLPHead` or :class:`C5BoxHead`.
        box_predictor: :class:`FastRCNNPredictor`.
        fg_iou_thresh: RoIs with IoU >= this with a ground truth are foreground (0.5).
        bg_iou_thresh: RoIs with max IoU < this are background (0.5: nothing ignored).
        bg_iou_low: RoIs with max IoU below this are ignored rather than background:
            Fast R-CNN's background range [0.1, 0.5) is ``bg_iou_low=0.1``; 0 (all of
            [0, 0.5), Detectron's and torchvision's choice) by default.
        batch_size_per_image, positive_fraction: the RoI mini-batch, 512 at 0.25
            (torchvision's; Fast R-CNN used 64 per image, 128 per 2-image batch).
        bbox_reg_weights: the box coder's (10, 10, 5, 5).
        score_thresh, nms_thresh, detections_per_img: postprocessing (0.05, 0.5, 100).
        min_size: detections smaller than this (pixels) are dropped (1e-2: empty boxes).
        sampler_generator: a ``torch.Generator`` for the sampler (None: global).
    """

    def __init__(
        self,
        pooler: nn.Module,
        box_head: nn.Module,
        box_predictor: FastRCNNPredictor,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        bg_iou_low: float = 0.0,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        min_size: float = 1e-2,
        sampler_generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.pooler = pooler
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.bg_iou_low = bg_iou_low
        self.sampler = BalancedPositiveNegativeSampler(
            batch_size_per_image, positive_fraction, sampler_generator
        )
        self.box_coder = BoxCoder(bbox_reg_weights)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.min_size = min_size

    def extra_repr(self) -> str:
        return (
            f"matcher={self.matcher}, bg_iou_low={self.bg_iou_low}, sampler={self.sampler}, "
            f"box_coder={self.box_coder}, score_thresh={self.score_thresh}, "
            f"nms_thresh={self.nms_thresh}, detections_per_img={self.detections_per_img}"
        )

    # -- training: which RoIs, and what they should predict ----------------------------

    def select_training_samples(
        self, proposals: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Fast R-CNN section 2.3 mini-batch sampling.

        Args:
            proposals: per image ``(P_i, 4)`` boxes.
            targets: per image ``boxes`` ``(G_i, 4)`` and ``labels`` ``(G_i,)``.

        Returns:
            Per image: sampled RoIs ``(R_i, 4)`` (proposals and appended ground truth),
            their labels ``(R_i,)`` (class, 0 background), regression targets ``(R_i,
            4)`` (zeros for background) and matched ground-truth index ``(R_i,)`` (-1
            for background).
        """
        rois_out, labels_out, targets_out, matched_out = [], [], [], []
        all_labels, all_rois, all_matches = [], [], []
        for props, target in zip(proposals, targets, strict=True):
            gt_boxes = target["boxes"].to(props.dtype)
            rois = torch.cat([props, gt_boxes])  # ground truth appended (section 2.3)
            iou = box_iou(gt_boxes, rois)  # (G, P + G)
            matches = self.matcher(iou)
            labels = label_anchors(matches, target["labels"])
            if self.bg_iou_low > 0 and gt_boxes.numel():
                labels[(iou.max(dim=0).values < self.bg_iou_low) & (labels == 0)] = -1
            all_rois.append(rois)
            all_labels.append(labels)
            all_matches.append(matches)
        pos, neg = self.sampler(all_labels)
        for rois, labels, matches, p, n, target in zip(
            all_rois, all_labels, all_matches, pos, neg, targets, strict=True
        ):
            keep = torch.where(p | n)[0]
            rois, labels, matches = rois[keep], labels[keep], matches[keep]
            matched_boxes = rois.clone()  # background: the RoI itself, target 0
            fg = matches >= 0
            matched_boxes[fg] = target["boxes"].to(rois.dtype)[matches[fg]]
            rois_out.append(rois)
            labels_out.append(labels)
            targets_out.append(self.box_coder.encode(matched_boxes, rois))
            matched_out.append(torch.where(fg, matches, torch.full_like(matches, -1)))
        return rois_out, labels_out, targets_out, matched_out

    # -- test: from scores and deltas to detections -----------------------------------

    def postprocess_detections(
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        proposals: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Detections per image (Fast R-CNN section 2.4 with R-CNN's per-class NMS).

        Args:
            class_logits: ``(R, K + 1)``; box_regression: ``(R, 4 (K + 1))``.
            proposals: per image ``(R_i, 4)``, ``sum R_i = R``.
            image_sizes: true ``(h, w)`` per image.

        Returns:
            ``(boxes, scores, labels)`` lists per image: softmax scores; every class's
            refined box (decoded, clipped) is a candidate; background dropped; scores
            ``<= score_thresh`` and boxes smaller than ``min_size`` dropped; NMS per class
            at ``nms_thresh``; the ``detections_per_img`` best kept. Equals torchvision's
            ``RoIHeads.postprocess_detections``.
        """
        num_classes = class_logits.shape[-1]
        counts = [p.shape[0] for p in proposals]
        ref = torch.cat(list(proposals)) if proposals else class_logits.new_zeros(0, 4)
        pred_boxes = self.box_coder.decode(box_regression, ref).reshape(-1, num_classes, 4)
        pred_scores = F.softmax(class_logits, -1)
        all_boxes, all_scores, all_labels = [], [], []
        for boxes, scores, size in zip(
            pred_boxes.split(counts), pred_scores.split(counts), image_sizes, strict=True
        ):
            boxes = clip_boxes_to_image(boxes, size)
            labels = torch.arange(num_classes, device=boxes.device).view(1, -1).expand_as(scores)
            # One candidate per (RoI, class), background column dropped.
            boxes = boxes[:, 1:].reshape(-1, 4)
            scores = scores[:, 1:].reshape(-1)
            labels = labels[:, 1:].reshape(-1)
            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = remove_small_boxes(boxes, self.min_size)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(labels[keep])
        return all_boxes, all_scores, all_labels

    # -- forward ----------------------------------------------------------------------

    def forward(
        self,
        feature: Tensor | Sequence[Tensor] | Mapping[str, Tensor],
        proposals: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        image_shape: Sequence[int],
        targets: Sequence[Mapping[str, Tensor]] | None = None,
        intermediates: dict | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Losses (given targets) and detections (in eval mode).

        Args:
            feature: ``(N, C, H, W)`` the feature map the RoIs are pooled from, or the
                maps of a pyramid (a list or dict) for a multi-level pooler; it is
                handed to the pooler as it is.
            proposals: per image ``(P_i, 4)`` boxes in image pixels.
            image_sizes: true ``(h, w)`` per image (detections are clipped to it).
            image_shape: ``(H, W)`` of the padded batch (for the feature's stride).
            targets: per image ``boxes`` and ``labels``; required in training mode.
            intermediates: a dict to fill: with targets ``sampled_rois``,
                ``sampled_labels``, ``sampled_regression_targets``, ``pooled_features``
                (sum R_i, C, ph, pw); in eval mode ``class_logits``, ``box_regression``
                (and ``pooled_features`` when there are no targets), ``detections``.

        Returns:
            ``(detections, losses)``: detections (eval mode; ``[]`` in training) are per
            image ``{"boxes" (D, 4), "labels" (D,), "scores" (D,)}``; losses ``{
            "loss_classifier", "loss_box_reg"}`` when targets are given, else ``{}``.
        """
        if self.training and targets is None:
            raise ValueError("RoIHeads: targets are required in training mode.")
        losses: dict[str, Tensor] = {}
        if targets is not None:
            rois, labels, regression_targets, _ = self.select_training_samples(proposals, targets)
            pooled = self.pooler(feature, rois, image_shape)
            class_logits, box_regression = self.box_predictor(self.box_head(pooled))
            loss_cls, loss_box = fastrcnn_loss(
                class_logits, box_regression, labels, regression_targets
            )
            losses = {"loss_classifier": loss_cls, "loss_box_reg": loss_box}
            if intermediates is not None:
                intermediates.update(
                    sampled_rois=rois,
                    sampled_labels=labels,
                    sampled_regression_targets=regression_targets,
                    pooled_features=pooled.detach(),
                )
        detections: list[dict[str, Tensor]] = []
        if not self.training:
            pooled = self.pooler(feature, proposals, image_shape)
            class_logits, box_regression = self.box_predictor(self.box_head(pooled))
            boxes, scores, labels = self.postprocess_detections(
                class_logits, box_regression, proposals, image_sizes
            )
            detections = [
                {"boxes": b, "labels": lb, "scores": s}
                for b, s, lb in zip(boxes, scores, labels, strict=True)
            ]
            if intermediates is not None:
                intermediates.setdefault("pooled_features", pooled.detach())
                intermediates.update(
                    class_logits=class_logits.detach(),
                    box_regression=box_regression.detach(),
                    detections=detections,
                )
        return detections, losses
