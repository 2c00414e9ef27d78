"""R-CNN (Girshick et al., CVPR 2014): warp each proposal, classify it, refine its box
(chapter 02).

"Regions with CNN features": instead of sliding a classifier over every window (chapter
01), take about 2000 class-independent proposals from selective search
(:mod:`rcnn_steps.detectors.selective_search`), warp each to the CNN's fixed input size,
and classify the warped crop. Test time, for one image (paper section 2.2):

1. proposals (:func:`load_proposals`: computed once by ``python -m rcnn_steps.rcnn
   proposals`` and cached, as the paper caches them);
2. each proposal is dilated so that, once warped, it has ``p`` pixels of context around
   it (the paper: p = 16 at 227 x 227; here ``p = 16 * crop_size / 227``, about 2.3 px at
   our 32 x 32 crops, :func:`context_padding`), then warped anisotropically to
   ``crop_size x crop_size``; where the dilated box leaves the image the image mean fills
   in (:func:`warp_boxes`, appendix A "Object proposal transformations");
3. a small CNN (:class:`RCNNNet`) scores every crop for each class and background, and a
   class-specific box regressor refines it with R-CNN's parameterisation (appendix C,
   :class:`rcnn_steps.ops.boxes.BoxCoder`);
4. greedy NMS per class (:func:`rcnn_steps.ops.boxes.batched_nms`, IoU 0.3 as in the
   released code).

Training (section 2.3): proposals with IoU >= 0.5 with a ground-truth box are positives of
that box's class, the rest background (:func:`label_proposals`); every mini-batch holds
positives and negatives 1:3 (32 and 96 of 128 in the paper, :class:`WindowBatches`). The
box regressor trains on proposals with IoU >= 0.6 (appendix C).

**Softmax instead of SVMs.** The paper trains one linear SVM per class on the fine-tuned
features, with IoU < 0.3 negatives and hard-negative mining, because its softmax, trained
with the looser 0.5 labels on random negatives, was worse: 50.9% vs 54.2% mAP on VOC 2007
(appendix B). We keep the fine-tuned softmax classifier: it is one model trained in one
loop, and Fast R-CNN (section 5.4, Table 8) later found softmax slightly *better* than
post-hoc SVMs once training is done end to end. The box regressor also trains jointly
here (a second head) rather than as ridge regression on pool5 features.

How the chapter trains and scores it is :mod:`rcnn_steps.experiments.rcnn`: ``python -m
rcnn_steps.rcnn evaluate --preset cpu --out results/rcnn.json`` trains through
:func:`rcnn_steps.engine.train`, evaluates COCO box AP on the evolution table's val images
and adds the "R-CNN" row to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# The proposal cache lives in rcnn_steps.data.proposals. Chapters 02 to 04 teach
# load_proposals and proposals_path as this module's (their notebooks import them from
# here), so the three are re-exported; make_proposals runs ``python -m rcnn_steps.rcnn
# proposals`` (:mod:`rcnn_steps.experiments.rcnn`).
from rcnn_steps.data.proposals import load_proposals, make_proposals, proposals_path
from rcnn_steps.ops import BoxCoder, batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes
from rcnn_steps.utils import diagram_stage, shape_text

__all__ = [
    "PAPER_CROP_SIZE",
    "PAPER_PADDING",
    "RCNN_BOX_CODER_WEIGHTS",
    "RCNNNet",
    "WindowBatches",
    "context_padding",
    "detect",
    "dilated_boxes",
    "label_proposals",
    "load_proposals",
    "make_proposals",
    "proposals_path",
    "rcnn_loss",
    "regression_targets",
    "training_windows",
    "warp_boxes",
    "warp_boxes_batched",
]

#: The paper's warp: 227 x 227 crops with 16 pixels of context (appendix A).
PAPER_CROP_SIZE = 227
PAPER_PADDING = 16

#: R-CNN's box coder: (10, 10, 5, 5) normalises the targets to about unit variance (the
#: weights later fixed by Fast R-CNN; the R-CNN paper's ridge regressor needed none).
RCNN_BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def context_padding(crop_size: int) -> float:
    """The paper's 16 px of context at 227 px, scaled to ``crop_size``: ``16 * S / 227``."""
    return PAPER_PADDING * crop_size / PAPER_CROP_SIZE


# ---------------------------------------------------------------------------------------
# Warping with context


def dilated_boxes(boxes: torch.Tensor, crop_size: int, padding: float) -> torch.Tensor:
    """The source region each warped crop shows: the box dilated so that, after warping
    to ``crop_size``, the box itself fills ``crop_size - 2 * padding`` pixels and
    ``padding`` pixels of context lie on every side.

    A box of width ``w`` is scaled by ``(S - 2p) / w``, so ``p`` crop pixels are
    ``p * w / (S - 2p)`` image pixels: ``x1 - p w / (S - 2p)`` to ``x2 + p w / (S - 2p)``
    (and the same vertically). ``(N, 4)`` -> ``(N, 4)`` xyxy (may leave the image).
    """
    if not 0 <= 2 * padding < crop_size:
        raise ValueError(f"padding must be in [0, crop_size / 2), got {padding} at {crop_size}")
    boxes = boxes.to(torch.float32)
    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=1.0)
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=1.0)
    dx = padding * w / (crop_size - 2 * padding)
    dy = padding * h / (crop_size - 2 * padding)
    return torch.stack(
        [boxes[:, 0] - dx, boxes[:, 1] - dy, boxes[:, 0] + w + dx, boxes[:, 1] + h + dy], 1
    )


def warp_boxes(
    image: torch.Tensor,
    boxes: torch.Tensor,
    crop_size: int = 32,
    padding: float | None = None,
) -> torch.Tensor:
    """Warp every box of one image, with context, to a ``crop_size`` square (bilinear).

    Args:
        image: ``(3, H, W)`` float.
        boxes: ``(N, 4)`` xyxy in pixels; boxes under 1 px wide or high count as 1 px.
        crop_size: ``S``, the CNN's input size.
        padding: context pixels in the warped crop; default :func:`context_padding`.
            0 gives the paper's "no context" warp.

    Returns:
        ``(N, 3, S, S)``; pixels that fall outside the image take the image's mean colour
        (the paper fills with the mean, which its mean subtraction then makes zero).
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4), got {tuple(boxes.shape)}")
    _, h, w = image.shape
    if h == 0 or w == 0:
        raise ValueError("the image is empty")
    padding = context_padding(crop_size) if padding is None else float(padding)
    n = boxes.shape[0]
    if n == 0:
        return image.new_zeros((0, 3, crop_size, crop_size))
    region = dilated_boxes(boxes.to(image.device), crop_size, padding)
    steps = (torch.arange(crop_size, device=image.device, dtype=torch.float32) + 0.5) / crop_size
    xs = region[:, 0:1] + steps * (region[:, 2:3] - region[:, 0:1])  # (N, S) pixel coords
    ys = region[:, 1:2] + steps * (region[:, 3:4] - region[:, 1:2])
    # grid_sample with align_corners=False: pixel centre x = i + 0.5 maps to 2x / W - 1
    gx = (2 * xs / w - 1)[:, None, :].expand(n, crop_size, crop_size)
    gy = (2 * ys / h - 1)[:, :, None].expand(n, crop_size, crop_size)
    grid = torch.stack([gx, gy], -1).to(image.dtype)
    mean = image.mean((1, 2), keepdim=True)
    # one "image" whose sampling grid stacks the N crops on top of each other: the image
    # is read in place, never copied N times
    grid = grid.reshape(1, n * crop_size, crop_size, 2)
    crops = F.grid_sample(
        (image - mean)[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )  # (1, 3, N * S, S)
    crops = crops.reshape(3, n, crop_size, crop_size).transpose(0, 1)
    return crops + mean[None]


def warp_boxes_batched(
    images: torch.Tensor,
    image_index: torch.Tensor,
    boxes: torch.Tensor,
    crop_size: int = 32,
    padding: float | None = None,
) -> torch.Tensor:
    """:func:`warp_boxes` for boxes from many images at once (a training mini-batch).

    Args:
        images: ``(I, 3, H, W)``; image_index: ``(N,)`` the image of each box;
        boxes: ``(N, 4)`` xyxy.

    Returns ``(N, 3, S, S)``, equal to warping each box in its own image: one gather and
    one ``grid_sample`` instead of one call per image."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (I, 3, H, W), got {tuple(images.shape)}")
    n, (_, _, h, w) = boxes.shape[0], images.shape
    if n == 0:
        return images.new_zeros((0, 3, crop_size, crop_size))
    padding = context_padding(crop_size) if padding is None else float(padding)
    region = dilated_boxes(boxes.to(images.device), crop_size, padding)
    steps = (torch.arange(crop_size, device=images.device, dtype=torch.float32) + 0.5) / crop_size
    xs = region[:, 0:1] + steps * (region[:, 2:3] - region[:, 0:1])
    ys = region[:, 1:2] + steps * (region[:, 3:4] - region[:, 1:2])
    gx = (2 * xs / w - 1)[:, None, :].expand(n, crop_size, crop_size)
    gy = (2 * ys / h - 1)[:, :, None].expand(n, crop_size, crop_size)
    grid = torch.stack([gx, gy], -1).to(images.dtype)
    mean = images.mean((2, 3), keepdim=True)[image_index]  # (N, 3, 1, 1)
    centred = images[image_index] - mean
    crops = F.grid_sample(centred, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return crops + mean


# ---------------------------------------------------------------------------------------
# Labels and regression targets


def label_proposals(
    proposals: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    fg_iou: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Label each proposal by its best-overlapping ground-truth box (section 2.3).

    Returns ``(labels (N,) int64, matched_gt (N, 4), max_iou (N,))``: the class of the
    ground truth with the highest IoU when that IoU is ``>= fg_iou``, else 0 (background);
    the matched box (zeros when there is no ground truth) and the IoU itself.
    """
    n = proposals.shape[0]
    if gt_boxes.numel() == 0 or n == 0:
        return (
            torch.zeros(n, dtype=torch.int64),
            torch.zeros((n, 4), dtype=torch.float32),
            torch.zeros(n, dtype=torch.float32),
        )
    iou = box_iou(proposals.float(), gt_boxes.float()).nan_to_num(0.0)  # (N, G)
    max_iou, best = iou.max(1)
    labels = torch.where(max_iou >= fg_iou, gt_labels[best].long(), torch.zeros_like(best))
    return labels, gt_boxes[best].float(), max_iou.float()


def regression_targets(
    proposals: torch.Tensor,
    matched_gt: torch.Tensor,
    max_iou: torch.Tensor,
    coder: BoxCoder,
    reg_iou: float = 0.6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """R-CNN's box-regression targets (appendix C, eqs. 6-9) via ``coder.encode``, kept
    only for proposals "near" a ground truth: ``IoU >= reg_iou`` (0.6 in the paper).
    Returns ``(targets (N, 4), valid (N,) bool)``; targets of invalid rows are zero."""
    valid = max_iou >= reg_iou
    targets = torch.zeros((proposals.shape[0], 4), dtype=torch.float32)
    if valid.any():
        targets[valid] = coder.encode(matched_gt[valid], proposals[valid].float()).float()
    return targets, valid


# ---------------------------------------------------------------------------------------
# The network


class RCNNNet(nn.Module):
    """A small CNN for warped crops: five 3x3 conv layers (batch norm, ReLU, three 2x2 max
    pools: ``S -> S/8``), a 256-d fully connected layer (the paper's fc7, here from
    scratch rather than ImageNet-pretrained), and two heads: ``cls_score`` (C + 1 classes,
    0 = background) and ``bbox_pred`` (4 deltas per class, class-specific as in the paper).

    ``forward(crops (B, 3, S, S)) -> (logits (B, C + 1), deltas (B, 4 C))``. Crops are
    centred at 0.5 inside.
    """

    def __init__(self, num_classes: int, crop_size: int = 32, width: int = 16) -> None:
        super().__init__()
        if crop_size % 8:
            raise ValueError(f"crop_size must be a multiple of 8, got {crop_size}")
        self.num_classes = num_classes

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        w = width
        self.features = nn.Sequential(
            *block(3, w), nn.MaxPool2d(2),
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w), *block(4 * w, 4 * w), nn.MaxPool2d(2),
        )  # fmt: skip
        self.fc = nn.Sequential(
            nn.Flatten(), nn.Linear(4 * w * (crop_size // 8) ** 2, 256), nn.ReLU(), nn.Dropout(0.25)
        )
        self.cls_score = nn.Linear(256, num_classes + 1)
        self.bbox_pred = nn.Linear(256, 4 * num_classes)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.fc(self.features(crops - 0.5))
        return self.cls_score(x), self.bbox_pred(x)


def rcnn_loss(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
    """The engine's ``loss_fn``: cross-entropy over C + 1 classes, plus smooth L1 between
    the predicted deltas *of the true class* and the targets, on the rows with a valid
    regression target, averaged over the batch. ``batch = (crops, labels, targets,
    valid)``."""
    crops, labels, targets, valid = batch
    logits, deltas = model(crops)
    loss_cls = F.cross_entropy(logits, labels)
    rows = torch.nonzero(valid & (labels > 0)).squeeze(1)
    if rows.numel():
        cls = labels[rows] - 1
        pred = deltas.view(len(deltas), -1, 4)[rows, cls]
        loss_box = F.smooth_l1_loss(pred, targets[rows], beta=1.0, reduction="sum") / len(labels)
    else:
        loss_box = deltas.sum() * 0.0
    return {"loss_cls": loss_cls, "loss_box": loss_box}


# ---------------------------------------------------------------------------------------
# Training data: every labelled window, and balanced mini-batches


def training_windows(
    dataset,
    proposals: dict[int, torch.Tensor],
    image_ids: Sequence[int],
    coder: BoxCoder,
    fg_iou: float = 0.5,
    reg_iou: float = 0.6,
    add_ground_truth: bool = True,
) -> dict[str, torch.Tensor]:
    """Label the proposals (plus, as in the paper's fine-tuning, the ground-truth boxes) of
    ``image_ids``: a dict of ``images (I, 3, H, W)`` and, per window, ``image (M,)``,
    ``boxes (M, 4)``, ``labels (M,)``, ``targets (M, 4)``, ``valid (M,)``."""
    images, index, boxes, labels, targets, valid = [], [], [], [], [], []
    for i, image_id in enumerate(image_ids):
        image = dataset.load_image(image_id)
        target = dataset.load_target(image_id, image.shape[1], image.shape[2])
        props = proposals[int(image_id)]
        if add_ground_truth and len(target["boxes"]):
            props = torch.cat([props, target["boxes"]])
        lab, gt, iou = label_proposals(props, target["boxes"], target["labels"], fg_iou)
        tgt, ok = regression_targets(props, gt, iou, coder, reg_iou)
        images.append(image)
        index.append(torch.full((len(props),), i, dtype=torch.int64))
        boxes.append(props)
        labels.append(lab)
        targets.append(tgt)
        valid.append(ok)
    return {
        "images": torch.stack(images),
        "image": torch.cat(index),
        "boxes": torch.cat(boxes),
        "labels": torch.cat(labels),
        "targets": torch.cat(targets),
        "valid": torch.cat(valid),
    }


class WindowBatches(torch.utils.data.Dataset):
    """Mini-batches of warped windows, positives and negatives 1:3 (section 2.3: "32
    positive windows (over all classes) and 96 background windows" per batch of 128).

    Item ``i`` is one whole mini-batch ``(crops (B, 3, S, S), labels (B,), targets (B, 4),
    valid (B,))``, drawn with a generator seeded by ``(seed, i)``, so it is the same batch
    every time (use it with ``DataLoader(batch_size=None, shuffle=True)``). Positives are
    drawn with replacement when there are fewer than wanted."""

    def __init__(
        self,
        windows: dict[str, torch.Tensor],
        num_batches: int,
        batch_size: int = 128,
        fg_fraction: float = 0.25,
        crop_size: int = 32,
        seed: int = 0,
    ) -> None:
        self.windows = windows
        self.num_batches = num_batches
        self.batch_size = batch_size
        self.num_fg = int(round(batch_size * fg_fraction))
        self.crop_size = crop_size
        self.seed = seed
        self.fg = torch.nonzero(windows["labels"] > 0).squeeze(1)
        self.bg = torch.nonzero(windows["labels"] == 0).squeeze(1)
        if len(self.fg) == 0 or len(self.bg) == 0:
            raise ValueError(
                f"need positive and negative windows, got {len(self.fg)} and {len(self.bg)}"
            )

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, int(i)])
        fg = self.fg[rng.integers(0, len(self.fg), self.num_fg)]
        bg = self.bg[rng.integers(0, len(self.bg), self.batch_size - self.num_fg)]
        rows = torch.cat([fg, bg])
        w = self.windows
        crops = warp_boxes_batched(w["images"], w["image"][rows], w["boxes"][rows], self.crop_size)
        return crops, w["labels"][rows], w["targets"][rows], w["valid"][rows]


# ---------------------------------------------------------------------------------------
# Test time


@torch.no_grad()
def detect(
    model: RCNNNet,
    image: torch.Tensor,
    proposals: torch.Tensor,
    coder: BoxCoder,
    crop_size: int = 32,
    score_threshold: float = 0.05,
    nms_threshold: float = 0.3,
    max_detections: int = 100,
    chunk: int = 512,
) -> dict[str, torch.Tensor]:
    """R-CNN at test time on one image (section 2.2): warp, score, regress, NMS per class.

    Args:
        image: ``(3, H, W)``; proposals: ``(N, 4)`` xyxy (N may be 0).

    Returns:
        ``{"boxes": (D, 4), "scores": (D,), "labels": (D,) in 1..C}``, by decreasing score.
        Every class's box is the proposal refined by that class's regressor, clipped to
        the image; boxes scoring below ``score_threshold`` are dropped before NMS.
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
    if proposals.dim() != 2 or proposals.shape[1] != 4:
        raise ValueError(f"proposals must be (N, 4), got {tuple(proposals.shape)}")
    device = next(model.parameters()).device
    empty = {
        "boxes": torch.zeros((0, 4), device=device),
        "scores": torch.zeros(0, device=device),
        "labels": torch.zeros(0, dtype=torch.int64, device=device),
    }
    if len(proposals) == 0:
        return empty
    was_training = model.training
    model.eval()
    image, proposals = image.to(device), proposals.to(device).float()
    logits, deltas = [], []
    for start in range(0, len(proposals), chunk):
        crops = warp_boxes(image, proposals[start : start + chunk], crop_size)
        lg, dl = model(crops)
        logits.append(lg)
        deltas.append(dl)
    model.train(was_training)
    scores = torch.softmax(torch.cat(logits), 1)[:, 1:]  # (N, C)
    num_classes = scores.shape[1]
    boxes = coder.decode(torch.cat(deltas), proposals).view(-1, num_classes, 4)
    boxes = clip_boxes_to_image(boxes.reshape(-1, 4), image.shape[-2:])
    labels = torch.arange(1, num_classes + 1, device=device).repeat(len(proposals))
    scores = scores.reshape(-1)
    keep = torch.nonzero(scores > score_threshold).squeeze(1)
    keep = keep[remove_small_boxes(boxes[keep], 1e-2)]
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    if len(boxes) == 0:
        return empty
    keep = batched_nms(boxes, scores, labels, nms_threshold)[:max_detections]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


@torch.no_grad()
def rcnn_stages(
    model: RCNNNet, image: torch.Tensor, proposals: torch.Tensor, crop_size: int = 32
) -> list[dict[str, Any]]:
    """R-CNN's stages on one ``(3, H, W)`` image and its ``(N, 4)`` proposals, each
    ``{"key", "title", "detail", "branch"}`` with the real shapes (the network run on
    the first 64 crops; every crop goes the same way), for
    :func:`rcnn_steps.viz.draw_stages`: the keys are those of the later detectors'
    diagrams (:meth:`rcnn_steps.detectors.faster_rcnn.FasterRCNN.stages`)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    crops = warp_boxes(image.to(device), proposals[:64].to(device).float(), crop_size)
    features = model.features(crops - 0.5)
    logits, deltas = model(crops)
    model.train(was_training)
    n = len(proposals)
    found = detect(model, image, proposals, BoxCoder(RCNN_BOX_CODER_WEIGHTS), crop_size)

    def per_crop(t: torch.Tensor) -> str:  # the shape for all N crops
        return shape_text(t).replace(f"({len(t)},", f"({n},", 1)

    return [
        diagram_stage("image", "image", shape_text(image)),
        diagram_stage("proposals", "selective search (not learned)", f"{n} boxes"),
        diagram_stage("warp", "each proposal warped to a crop", per_crop(crops)),
        diagram_stage("features", "CNN once per crop", per_crop(features)),
        diagram_stage(
            "heads",
            "classifier + box regressor",
            f"classes {per_crop(logits)}, boxes {per_crop(deltas)}",
        ),  # fmt: skip
        diagram_stage("detections", "per-class NMS", f"{len(found['boxes'])} detections here"),
    ]
