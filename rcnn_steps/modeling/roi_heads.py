"""The box branch of Fast/Faster R-CNN: from proposals to classified, refined boxes.

Fast R-CNN (Girshick 2015, section 2) in four small parts:

1. **Sampling** (section 2.3, "Mini-batch sampling"): in training, each image's
   proposals, with its ground-truth boxes appended (so every object has at least one
   perfect RoI), are matched at IoU 0.5 (:class:`~rcnn_steps.modeling.matcher.Matcher`) and a
   mini-batch of RoIs is drawn with at most 25% foreground
   (:class:`~rcnn_steps.modeling.sampler.BalancedPositiveNegativeSampler`).
2. **RoI feature extraction** (section 2.1): :class:`RoIPooler` reads a fixed ``7 x 7``
   feature per RoI with the RoI layer named in the config (``"roipool"`` here; RoIAlign
   arrives in chapter 06 through the same field, :func:`rcnn_steps.ops.roi_layers.get_roi_op`).
3. **The head**: :class:`TwoMLPHead` (flatten -> fc -> fc, the "fc6, fc7" of VGG) or
   :class:`C5BoxHead` (res5 on each RoI, the C4 design), then
   :class:`FastRCNNPredictor`: K + 1 class scores and class-specific deltas (section 2.2).
4. **Loss / postprocess**: :func:`rcnn_steps.modeling.losses.fastrcnn_loss` in training; at test
   time softmax, decode, clip, score threshold and per-class NMS (Fast R-CNN section
   2.4, with R-CNN section 2.2's NMS), :meth:`RoIHeads.postprocess_detections`.

5. **Branches** (chapter 07, Mask R-CNN): an optional mask branch
   (:class:`rcnn_steps.modeling.mask_head.MaskBranch`) and keypoint branch
   (:class:`rcnn_steps.modeling.keypoint_head.KeypointBranch`). "Training in parallel, testing in
   cascade": in training they run on the positive RoIs the box branch sampled, so the
   three losses come from the same RoIs; at test time they run on the detections only,
   after classification, regression and NMS (Mask R-CNN section 3.1).

Taught in chapter 03 (Fast R-CNN) and reused by chapter 04 (Faster R-CNN), 06 and 07.
Parameter names equal torchvision's (``fc6``, ``fc7``, ``cls_score``, ``bbox_pred``) and
``postprocess_detections`` equals ``torchvision``'s ``RoIHeads.postprocess_detections``
(tests/test_roi_heads.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rcnn_steps.modeling.keypoint_head import keypoints_to_heatmap
from rcnn_steps.modeling.losses import fastrcnn_loss
from rcnn_steps.modeling.mask_head import mask_accuracy, mask_targets
from rcnn_steps.modeling.matcher import Matcher, label_anchors
from rcnn_steps.modeling.sampler import BalancedPositiveNegativeSampler
from rcnn_steps.ops import (
    BoxCoder,
    batched_nms,
    box_iou,
    clip_boxes_to_image,
    remove_small_boxes,
)
from rcnn_steps.utils import StageClock

__all__ = [
    "C5BoxHead",
    "FastRCNNPredictor",
    "RoIHeads",
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
        pooler: a :class:`~rcnn_steps.modeling.poolers.RoIPooler` (one map) or a
            :class:`~rcnn_steps.modeling.poolers.MultiScaleRoIPooler` (a feature pyramid,
            chapter 05).
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
        mask_branch: a :class:`rcnn_steps.modeling.mask_head.MaskBranch` (Mask R-CNN), or None.
        keypoint_branch: a :class:`rcnn_steps.modeling.keypoint_head.KeypointBranch`, or None.
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
        mask_branch: nn.Module | None = None,
        keypoint_branch: nn.Module | None = None,
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
        self.mask_branch = mask_branch
        self.keypoint_branch = keypoint_branch

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
            targets: per image ``boxes`` and ``labels`` (and ``masks`` (G, H, W) with a
                mask branch, ``keypoints`` (G, K, 3) with a keypoint branch); required in
                training mode.
            intermediates: a dict to fill: with targets ``sampled_rois``,
                ``sampled_labels``, ``sampled_regression_targets``, ``pooled_features``
                (sum R_i, C, ph, pw); in eval mode ``class_logits``, ``box_regression``
                (and ``pooled_features`` when there are no targets), ``detections``,
                ``stage_seconds`` (the time of each test-time stage). With a mask
                branch and targets: ``mask_rois`` (per image, the positive sampled RoIs),
                ``mask_labels`` (R,), ``mask_matched_idxs``, ``mask_targets`` (R, M, M),
                ``mask_logits`` (R, num_masks, M, M), ``mask_accuracy``; in eval mode
                ``detection_mask_logits``, ``detection_masks`` (per image (D_i, 1, M, M)
                probabilities before pasting). With a keypoint branch and targets:
                ``keypoint_rois`` (per image, positive RoIs of keypoint classes),
                ``keypoint_labels``, ``keypoint_matched_idxs``, ``keypoint_targets`` and
                ``keypoint_valid`` (per image (R_i, K) cell index and 0/1),
                ``keypoint_logits`` (R, K, m, m); in eval mode ``detection_heatmaps``
                (D', K, m, m) of the detections of keypoint classes
                (``detection_has_keypoints``, per image (D_i,) bool).

        Returns:
            ``(detections, losses)``: detections (eval mode; ``[]`` in training) are per
            image ``{"boxes" (D, 4), "labels" (D,), "scores" (D,)}``, plus ``masks``
            (D, 1, h, w) probabilities pasted into the image and ``keypoints`` (D, K, 3),
            ``keypoints_scores`` (D, K) with the branches; losses ``{"loss_classifier",
            "loss_box_reg"}`` (+ ``loss_mask``, ``loss_keypoint``) when targets are
            given, else ``{}``.
        """
        if self.training and targets is None:
            raise ValueError("RoIHeads: targets are required in training mode.")
        losses: dict[str, Tensor] = {}
        clock = StageClock(intermediates, proposals[0].device if proposals else None)
        if targets is not None:
            rois, labels, regression_targets, matched = self.select_training_samples(
                proposals, targets
            )
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
            losses.update(
                self._branch_losses(feature, rois, labels, matched, targets, image_shape,
                                    intermediates)
            )  # fmt: skip
        detections: list[dict[str, Tensor]] = []
        if not self.training:
            clock.start()
            pooled = self.pooler(feature, proposals, image_shape)
            class_logits, box_regression = self.box_predictor(self.box_head(pooled))
            boxes, scores, labels = self.postprocess_detections(
                class_logits, box_regression, proposals, image_sizes
            )
            detections = [
                {"boxes": b, "labels": lb, "scores": s}
                for b, s, lb in zip(boxes, scores, labels, strict=True)
            ]
            clock.lap("box_head_and_nms")
            if intermediates is not None:
                intermediates.setdefault("pooled_features", pooled.detach())
                intermediates.update(
                    class_logits=class_logits.detach(),
                    box_regression=box_regression.detach(),
                    detections=detections,
                )
            self._branch_predictions(feature, detections, image_sizes, image_shape,
                                     intermediates, clock)  # fmt: skip
        return detections, losses

    # -- the mask and keypoint branches (chapter 07) -----------------------------------

    def _branch_losses(
        self,
        feature: Any,
        rois: Sequence[Tensor],
        labels: Sequence[Tensor],
        matched: Sequence[Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        image_shape: Sequence[int],
        intermediates: dict | None,
    ) -> dict[str, Tensor]:
        """Training in parallel: the branches' losses on the *positive* sampled RoIs (the
        same RoIs the box loss used), each with the object it matched."""
        losses: dict[str, Tensor] = {}
        if self.mask_branch is None and self.keypoint_branch is None:
            return losses
        positive = [lab > 0 for lab in labels]
        pos_rois = [r[p] for r, p in zip(rois, positive, strict=True)]
        pos_matched = [m[p] for m, p in zip(matched, positive, strict=True)]
        pos_labels = [lab[p] for lab, p in zip(labels, positive, strict=True)]
        if self.mask_branch is not None:
            logits = self.mask_branch(feature, pos_rois, image_shape)
            losses["loss_mask"] = self.mask_branch.loss(logits, pos_rois, pos_matched, targets)
            if intermediates is not None:
                gt = [t["masks"] for t in targets]
                gt_labels = [t["labels"] for t in targets]
                cls, mask_t = mask_targets(
                    pos_rois, gt, gt_labels, pos_matched, logits.shape[-1], self.mask_branch.aligned
                )
                intermediates.update(
                    mask_rois=pos_rois,
                    mask_labels=cls,
                    mask_matched_idxs=pos_matched,
                    mask_targets=mask_t,
                    mask_logits=logits.detach(),
                    mask_accuracy=mask_accuracy(
                        logits.detach(), cls, mask_t, self.mask_branch.loss_name
                    ),
                )
        if self.keypoint_branch is not None:
            branch = self.keypoint_branch
            with_kp = [branch.has_keypoints(lab) for lab in pos_labels]
            kp_rois = [r[k] for r, k in zip(pos_rois, with_kp, strict=True)]
            kp_matched = [m[k] for m, k in zip(pos_matched, with_kp, strict=True)]
            kp_labels = torch.cat([lab[k] for lab, k in zip(pos_labels, with_kp, strict=True)])
            logits = branch(feature, kp_rois, image_shape)
            losses["loss_keypoint"] = branch.loss(logits, kp_labels, kp_rois, kp_matched, targets)
            if intermediates is not None:
                heatmaps, valid = [], []
                for r, m, t in zip(kp_rois, kp_matched, targets, strict=True):
                    kps = t["keypoints"][m][:, : branch.num_keypoints]
                    h, v = keypoints_to_heatmap(kps, r, logits.shape[-1])
                    heatmaps.append(h)
                    valid.append(v)
                intermediates.update(
                    keypoint_rois=kp_rois,
                    keypoint_labels=kp_labels,
                    keypoint_matched_idxs=kp_matched,
                    keypoint_targets=heatmaps,
                    keypoint_valid=valid,
                    keypoint_logits=branch.select(logits.detach(), kp_labels),
                )
        return losses

    def _branch_predictions(
        self,
        feature: Any,
        detections: list[dict[str, Tensor]],
        image_sizes: Sequence[tuple[int, int]],
        image_shape: Sequence[int],
        intermediates: dict | None,
        clock: StageClock,
    ) -> None:
        """Testing in cascade: masks and keypoints for the kept detections only (added to
        each image's dict: ``masks``; ``keypoints``, ``keypoints_scores``)."""
        boxes = [d["boxes"] for d in detections]
        if self.mask_branch is not None:
            clock.start()
            logits = self.mask_branch(feature, boxes, image_shape)
            probs = self.mask_branch.predict(logits, detections, image_sizes)
            clock.lap("mask_head_and_paste")
            if intermediates is not None:
                intermediates.update(detection_mask_logits=logits.detach(), detection_masks=probs)
        if self.keypoint_branch is not None:
            clock.start()
            branch = self.keypoint_branch
            with_kp = [branch.has_keypoints(d["labels"]) for d in detections]
            kp_boxes = [b[k] for b, k in zip(boxes, with_kp, strict=True)]
            logits = branch(feature, kp_boxes, image_shape)
            maps = branch.predict(logits, detections, torch.cat(with_kp))
            clock.lap("keypoint_head")
            if intermediates is not None:
                intermediates.update(
                    detection_heatmaps=maps.detach(), detection_has_keypoints=with_kp
                )
