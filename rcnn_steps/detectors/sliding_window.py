"""Sliding-window classification (chapter 01): a crop classifier slid over the image.

The oldest way to detect objects is to turn detection into classification: cut the image
into windows at every position, scale and shape, ask a classifier "which object, if any,
fills this window?", and keep the confident answers. OverFeat (Sermanet et al. 2014) calls
it "exhaustive search at a coarse scale, regression at a fine scale": classify all the
patches (width x height x scales x ratios of them: millions on a real image), then refine
each coarse, grid-quantised window with a box regressor. Its key trick makes the search
affordable: a classifier written as convolutions can be run *once* over a whole image, and
its output map holds the scores of every window at once, because overlapping windows
share their computation. This module builds each piece, in the order the chapter shows it:

1. **Crops** (:func:`make_crops`): each object's box, jittered, cut out and resized to the
   classifier's input (32 x 32), labelled with its class; background crops (IoU < 0.3
   with every object, half of them near objects: the hard ones); class-balanced, seeded.
2. **The classifier** (:class:`CropClassifier`): valid (unpadded) convolutions and two
   ``Linear`` layers, trained through :func:`rcnn_steps.engine.train` with
   :func:`rcnn_steps.engine.classification_loss`
   (:func:`rcnn_steps.experiments.sliding_window.train_classifier`).
3. **Windows** (:func:`window_grids`, :func:`sliding_windows`): for each window size and
   aspect ratio, the image is resized once so that the window becomes 32 x 32, and the
   windows are the 32 x 32 squares of the resized image at a stride of 8 pixels (the
   network's stride). :func:`classify_windows_naive` crops and classifies every window.
4. **The fully convolutional trick** (:func:`linear_to_conv`, :func:`to_fully_convolutional`,
   :func:`classify_windows_dense`): the ``Linear`` layers become convolutions, the
   network runs once per resized image, and :func:`grid_boxes` maps each position of the
   output map back to its window. Same scores as the naive way, a fraction of the time.
5. **Box regression** (:func:`~rcnn_steps.experiments.sliding_window.train_box_regressor`):
   R-CNN's class-specific regressor (appendix C) on the classifier's penultimate
   features, trained on the jittered crops' offsets, moves each window off the grid and
   onto the object.
6. **Detection and evaluation** (:func:`postprocess`, :func:`detect`,
   :func:`~rcnn_steps.experiments.sliding_window.evaluate_detector`): per-class score
   thresholding, class-wise NMS (:func:`rcnn_steps.ops.boxes.batched_nms`), COCO box AP
   (:mod:`rcnn_steps.evaluation`).

How the chapter trains, evaluates and records it (the presets, the training of steps 2 and
5, COCO AP, ``python -m rcnn_steps.sliding_window evaluate --preset cpu``, which writes
``results/sliding_window.json`` and the chapter's row of the evolution table) is
:mod:`rcnn_steps.experiments.sliding_window`; :func:`detection_cost` and
:func:`time_detectors`, the work and the seconds the convolutional trick saves, are here.

Why a fourth input channel? Windows of ratio 3:1 and 1:3 are *warped* to a square
32 x 32 input, so a bar (3:1) in a 3:1 window looks exactly like a square in a 1:1 window:
the warp throws the window's shape away. We hand it back to the classifier as a constant
fourth channel, ``log(w / h) / log(3)`` (-1, 0 or +1 for the three ratios), a
"pyramid of filters" over shape in the spirit of DPM's aspect-ratio components. It is
constant over a resized image, so the fully convolutional trick is unaffected.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rcnn_steps.ops import BoxCoder, batched_nms, box_iou, clip_boxes_to_image

__all__ = [
    "INPUT_SIZE",
    "NETWORK_STRIDE",
    "CropClassifier",
    "CropSet",
    "DenseClassifier",
    "WindowConfig",
    "WindowGrid",
    "classify_windows_dense",
    "classify_windows_naive",
    "count_windows",
    "crop_and_resize",
    "detect",
    "detection_cost",
    "grid_boxes",
    "linear_to_conv",
    "make_crops",
    "multiply_adds",
    "postprocess",
    "resize_for_window",
    "shape_channel_value",
    "sliding_windows",
    "to_fully_convolutional",
    "window_grids",
    "with_shape_channel",
]

#: Side of the square input the crop classifier sees (pixels).
INPUT_SIZE = 32
#: The classifier's total stride: three 2x2 max-pools. One step on its dense output map is
#: 8 pixels of the (resized) input.
NETWORK_STRIDE = 8
#: R-CNN's and Fast R-CNN's target normalisation for box heads (see BoxCoder).
BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def _box_coder() -> BoxCoder:
    return BoxCoder(weights=BOX_CODER_WEIGHTS)


def _check_image(fn: str, image: Any, channels: int = 3) -> None:
    if not isinstance(image, Tensor):
        raise TypeError(f"{fn}: image must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() != 3 or image.shape[0] != channels or not image.is_floating_point():
        raise ValueError(
            f"{fn}: image must be a float tensor of shape ({channels}, H, W), got "
            f"{tuple(image.shape)} {image.dtype}; pass one image from the dataset, "
            "e.g. `image, target = val[0]`"
        )


# ----------------------------------------------------------------------------------------
# Step 1: crops, resized to the classifier's input
# ----------------------------------------------------------------------------------------


def shape_channel_value(width: float | Tensor, height: float | Tensor) -> Tensor:
    """The fourth input channel: ``log(w / h) / log(3)`` clamped to [-1, 1], i.e. -1 for a
    1:3 (tall) window, 0 for a square one and +1 for a 3:1 (wide) one."""
    w = torch.as_tensor(width, dtype=torch.float32)
    h = torch.as_tensor(height, dtype=torch.float32)
    return (torch.log(w / h) / math.log(3.0)).clamp(-1.0, 1.0)


def with_shape_channel(images: Tensor, value: float | Tensor) -> Tensor:
    """Append the constant shape channel: ``(3, H, W)`` -> ``(4, H, W)``, or
    ``(B, 3, H, W)`` -> ``(B, 4, H, W)`` with ``value`` a scalar or ``(B,)``."""
    value = torch.as_tensor(value, dtype=images.dtype, device=images.device)
    if images.dim() == 3:
        plane = value.reshape(1, 1, 1).expand(1, *images.shape[1:])
        return torch.cat([images, plane], dim=0)
    plane = value.reshape(-1, 1, 1, 1).expand(images.shape[0], 1, *images.shape[2:])
    return torch.cat([images, plane], dim=1)


def _resize(image: Tensor, height: int, width: int) -> Tensor:
    """Bilinear resize of a ``(C, H, W)`` image, antialiased when shrinking. The crops and
    the resized images of the detector both go through here, so they look alike."""
    return F.interpolate(
        image[None], size=(height, width), mode="bilinear", align_corners=False, antialias=True
    )[0]


def crop_and_resize(image: Tensor, boxes: Tensor, size: int = INPUT_SIZE) -> Tensor:
    """Cut integer-pixel boxes out of an image and resize each to ``size x size``.

    Args:
        image: ``(3, H, W)`` float image.
        boxes: ``(N, 4)`` xyxy boxes with integer coordinates inside the image and
            positive width and height.

    Returns:
        ``(N, 4, size, size)``: RGB plus the shape channel of each box.
    """
    _check_image("crop_and_resize", image)
    crops = []
    for x1, y1, x2, y2 in boxes.round().long().tolist():
        if not (0 <= x1 < x2 <= image.shape[2] and 0 <= y1 < y2 <= image.shape[1]):
            raise ValueError(
                f"crop_and_resize: box {[x1, y1, x2, y2]} is empty or outside the "
                f"{image.shape[2]}x{image.shape[1]} image; clip boxes to the image first"
            )
        crop = _resize(image[:, y1:y2, x1:x2], size, size)
        crops.append(with_shape_channel(crop, shape_channel_value(x2 - x1, y2 - y1)))
    if not crops:
        return image.new_zeros((0, 4, size, size))
    return torch.stack(crops)


@dataclass
class CropSet:
    """The crop dataset: ``N`` crops with what the classifier and the regressor learn.

    - ``images``: ``(N, 4, S, S)`` float, RGB plus the shape channel;
    - ``labels``: ``(N,)`` int64, ``1..C`` for objects and 0 for background;
    - ``boxes``: ``(N, 4)`` the crop windows in image pixels (xyxy, integers);
    - ``gt_boxes``: ``(N, 4)`` the object each positive crop was cut around (zeros for
      background);
    - ``ious``: ``(N,)`` IoU of the crop with that object (for background: the largest IoU
      with any object, < 0.3);
    - ``deltas``: ``(N, 4)`` regression targets ``BoxCoder(10, 10, 5, 5).encode(gt, crop)``
      (zeros for background);
    - ``image_ids``: ``(N,)`` the image each crop comes from.
    """

    images: Tensor
    labels: Tensor
    boxes: Tensor
    gt_boxes: Tensor
    ious: Tensor
    deltas: Tensor
    image_ids: Tensor
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        """Crops per class name (background first)."""
        binc = torch.bincount(self.labels, minlength=len(self.class_names)).tolist()
        return dict(zip(self.class_names, binc, strict=True))

    def classification_dataset(self) -> torch.utils.data.TensorDataset:
        """``(image, label)`` pairs, the batches :func:`classification_loss` reads."""
        return torch.utils.data.TensorDataset(self.images, self.labels)


def _jitter_boxes(
    rng: np.random.Generator, boxes: np.ndarray, n: int, shift: float, log_scale: float
) -> np.ndarray:
    """``n`` jittered copies of each box: centre moved by up to ``shift`` of the size,
    width and height scaled by ``exp(U(-log_scale, log_scale))`` independently."""
    boxes = np.repeat(boxes, n, axis=0)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + w / 2, boxes[:, 1] + h / 2
    cx = cx + w * rng.uniform(-shift, shift, len(boxes))
    cy = cy + h * rng.uniform(-shift, shift, len(boxes))
    w = w * np.exp(rng.uniform(-log_scale, log_scale, len(boxes)))
    h = h * np.exp(rng.uniform(-log_scale, log_scale, len(boxes)))
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def _integer_boxes(boxes: np.ndarray, height: int, width: int, min_side: int = 4) -> np.ndarray:
    """Round to whole pixels, clip to the image, and drop boxes thinner than ``min_side``."""
    b = np.round(boxes)
    b[:, 0::2] = b[:, 0::2].clip(0, width)
    b[:, 1::2] = b[:, 1::2].clip(0, height)
    keep = ((b[:, 2] - b[:, 0]) >= min_side) & ((b[:, 3] - b[:, 1]) >= min_side)
    return b[keep]


def make_crops(
    dataset,
    num_images: int | None = None,
    input_size: int = INPUT_SIZE,
    positives_per_object: int = 3,
    background_per_image: int = 8,
    per_class: int | None = None,
    background_ratio: float = 2.0,
    positive_iou: float = 0.5,
    background_iou: float = 0.3,
    seed: int = 0,
) -> CropSet:
    """Cut the crop dataset out of a detection dataset, deterministically given ``seed``.

    Positives: each object's box jittered (centre moved by up to 20% of its size, each
    side scaled by up to e^0.35 ~ 1.4x), kept when its IoU with the object is at least
    ``positive_iou`` and no other object overlaps it more, labelled with the object's
    class. Background: windows of the detector's sizes (8-64 px) and ratios (1:1, 3:1,
    1:3), half placed anywhere and half near an object (the hard negatives a sliding
    window meets next to every object), kept when their IoU with *every* object is below
    ``background_iou``.

    Then class balance: every object class keeps ``per_class`` crops (default: the count
    of the rarest class), and background keeps ``background_ratio`` times that.

    Args:
        dataset: a :class:`~rcnn_steps.data.CocoDataset` (images ``(3, H, W)``).
        num_images: use the first ``num_images`` images (default: all).

    Returns:
        A :class:`CropSet` of ``(C + background_ratio) * per_class`` crops (fewer when
        there are not enough background crops).
    """
    if not 0 < background_iou <= positive_iou <= 1:
        raise ValueError(
            "make_crops: need 0 < background_iou <= positive_iou <= 1, got "
            f"{background_iou} and {positive_iou}"
        )
    rng = np.random.default_rng(seed)
    n_images = len(dataset) if num_images is None else min(num_images, len(dataset))
    parts: dict[str, list] = {k: [] for k in ("images", "labels", "boxes", "gt", "iou", "ids")}
    for index in range(n_images):
        image, target = dataset[index]
        _, height, width = image.shape
        gts = target["boxes"].numpy().astype(np.float64)
        gt_labels = target["labels"].numpy()
        chosen, labels, matched, ious = [], [], [], []
        if len(gts):
            cand = _jitter_boxes(rng, gts, 8 * positives_per_object, 0.2, 0.35)
            owner = np.repeat(np.arange(len(gts)), 8 * positives_per_object)
            keep_mask = np.zeros(len(cand), bool)
            rounded = np.round(cand)
            rounded[:, 0::2] = rounded[:, 0::2].clip(0, width)
            rounded[:, 1::2] = rounded[:, 1::2].clip(0, height)
            ok = ((rounded[:, 2] - rounded[:, 0]) >= 2) & ((rounded[:, 3] - rounded[:, 1]) >= 2)
            iou = box_iou(torch.from_numpy(rounded), torch.from_numpy(gts)).numpy()
            best = iou.argmax(1)
            own_iou = iou[np.arange(len(cand)), owner]
            keep_mask = ok & (best == owner) & (own_iou >= positive_iou)
            for g in range(len(gts)):
                idx = np.flatnonzero(keep_mask & (owner == g))[:positives_per_object]
                chosen.append(rounded[idx])
                labels.append(np.full(len(idx), gt_labels[g]))
                matched.append(np.repeat(gts[g : g + 1], len(idx), axis=0))
                ious.append(own_iou[idx])
        # background: random windows, and windows near objects
        n_cand = 6 * background_per_image
        side = np.exp(rng.uniform(np.log(8), np.log(64), n_cand))
        ratio = rng.choice([1 / 3, 1.0, 3.0], n_cand) * np.exp(rng.uniform(-0.2, 0.2, n_cand))
        bw, bh = side * np.sqrt(ratio), side / np.sqrt(ratio)
        cx, cy = rng.uniform(0, width, n_cand), rng.uniform(0, height, n_cand)
        if len(gts):  # the second half sits near an object: shifted by about its size
            near = np.arange(n_cand // 2, n_cand)
            g = rng.integers(0, len(gts), len(near))
            gw, gh = gts[g, 2] - gts[g, 0], gts[g, 3] - gts[g, 1]
            cx[near] = (gts[g, 0] + gts[g, 2]) / 2 + gw * rng.uniform(-1.2, 1.2, len(near))
            cy[near] = (gts[g, 1] + gts[g, 3]) / 2 + gh * rng.uniform(-1.2, 1.2, len(near))
            scale = np.exp(rng.uniform(-0.7, 0.7, len(near)))
            bw[near], bh[near] = gw * scale, gh * scale
        bg = _integer_boxes(
            np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1), height, width
        )
        if len(gts):
            bg_iou = box_iou(torch.from_numpy(bg), torch.from_numpy(gts)).numpy().max(1)
        else:
            bg_iou = np.zeros(len(bg))
        bg_keep = np.flatnonzero(bg_iou < background_iou)
        # interleave random and near windows, so both kinds survive the cut
        bg_keep = bg_keep[np.argsort(rng.permutation(len(bg_keep)), kind="stable")]
        bg_keep = bg_keep[:background_per_image]
        chosen.append(bg[bg_keep])
        labels.append(np.zeros(len(bg_keep), np.int64))
        matched.append(np.zeros((len(bg_keep), 4)))
        ious.append(bg_iou[bg_keep])

        boxes = torch.from_numpy(np.concatenate(chosen)).float()
        parts["images"].append(crop_and_resize(image, boxes, input_size))
        parts["labels"].append(torch.from_numpy(np.concatenate(labels).astype(np.int64)))
        parts["boxes"].append(boxes)
        parts["gt"].append(torch.from_numpy(np.concatenate(matched)).float())
        parts["iou"].append(torch.from_numpy(np.concatenate(ious)).float())
        parts["ids"].append(torch.full((len(boxes),), int(target["image_id"])))

    images = torch.cat(parts["images"])
    labels = torch.cat(parts["labels"])
    num_classes = len(dataset.class_names) - 1
    counts = torch.bincount(labels, minlength=num_classes + 1)
    if per_class is None:
        per_class = int(counts[1:].min())
    selected = []
    for c in range(num_classes + 1):
        want = per_class if c > 0 else int(round(background_ratio * per_class))
        idx = np.flatnonzero(labels.numpy() == c)
        selected.append(np.sort(rng.permutation(idx)[:want]))
    sel = torch.from_numpy(np.concatenate(selected))
    boxes, gt = torch.cat(parts["boxes"])[sel], torch.cat(parts["gt"])[sel]
    labels = labels[sel]
    deltas = torch.zeros((len(sel), 4))
    pos = labels > 0
    if pos.any():
        deltas[pos] = _box_coder().encode(gt[pos], boxes[pos])
    return CropSet(
        images=images[sel],
        labels=labels,
        boxes=boxes,
        gt_boxes=gt,
        ious=torch.cat(parts["iou"])[sel],
        deltas=deltas,
        image_ids=torch.cat(parts["ids"])[sel],
        class_names=list(dataset.class_names),
    )


# ----------------------------------------------------------------------------------------
# Step 2: the crop classifier, and step 4: the same network as convolutions
# ----------------------------------------------------------------------------------------


def _feature_size(input_size: int) -> int:
    """Side of the feature map the classifier's convolutions leave from a square input."""
    s = input_size
    for conv in (5, 3, 3):  # valid conv, then 2x2 max-pool
        s = (s - conv + 1) // 2
    return s


class CropClassifier(nn.Module):
    """A small crop classifier with ``C + 1`` outputs (background is class 0), and a
    class-specific box regressor beside it.

    Shapes for the default 32 x 32 input (all convolutions are *valid*, i.e. unpadded, so
    that a window's features do not depend on what lies outside it)::

        (B, 4, 32, 32) -conv5x5-> 28 -pool-> 14 -conv3x3-> 12 -pool-> 6 -conv3x3-> 4 -pool-> 2
        (each convolution followed by batch norm and ReLU; 16, 32, 64 channels)
        features (B, 64, 2, 2) -flatten-> (B, 256) -fc-> (B, 128) "fc" features
        cls_score: (B, 128) -> (B, C + 1) logits
        bbox_pred: (B, 128) -> (B, 4 * C) deltas, four per object class (R-CNN appendix C)

    ``forward`` returns the logits, so the model trains with
    :func:`rcnn_steps.engine.classification_loss`. The two ``Linear`` layers at the top
    look like a classifier's, but :func:`to_fully_convolutional` turns them into
    convolutions with the same weights (OverFeat section 3.5).
    """

    def __init__(self, num_classes: int, input_size: int = INPUT_SIZE, width: int = 16) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"CropClassifier: num_classes must be >= 1, got {num_classes}")
        self.feature_size = _feature_size(input_size)
        if self.feature_size < 1:
            raise ValueError(f"CropClassifier: input_size {input_size} is too small (>= 20)")
        self.num_classes = num_classes
        self.input_size = input_size
        layers: list[nn.Module] = []
        channels = 4
        for kernel, out in ((5, width), (3, 2 * width), (3, 4 * width)):
            # batch norm speeds training up; in eval mode it is a fixed per-channel affine
            # map, so it does not break the equality of the dense and per-window scores
            layers += [nn.Conv2d(channels, out, kernel), nn.BatchNorm2d(out)]
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.feature_channels = 4 * width
        self.fc = nn.Linear(4 * width * self.feature_size**2, 128)
        self.cls_score = nn.Linear(128, num_classes + 1)
        self.bbox_pred = nn.Linear(128, 4 * num_classes)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)  # Fast R-CNN's initialisation
        nn.init.zeros_(self.bbox_pred.bias)

    def _check(self, x: Tensor) -> None:
        s = self.input_size
        if x.dim() != 4 or x.shape[1] != 4 or x.shape[2:] != (s, s):
            raise ValueError(
                f"CropClassifier expects crops of shape (B, 4, {s}, {s}) (RGB + shape "
                f"channel), got {tuple(x.shape)}; to run over a whole image use "
                "to_fully_convolutional(model)"
            )

    def embed(self, x: Tensor) -> Tensor:
        """``(B, 4, S, S)`` crops -> ``(B, 128)`` features (after fc and ReLU)."""
        self._check(x)
        return F.relu(self.fc(self.features(x).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 4, S, S)`` crops -> ``(B, C + 1)`` class logits."""
        return self.cls_score(self.embed(x))

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits ``(B, C + 1)`` and box deltas ``(B, 4 * C)`` of a batch of crops."""
        h = self.embed(x)
        return self.cls_score(h), self.bbox_pred(h)


def linear_to_conv(linear: nn.Linear, in_channels: int, kernel_size: int) -> nn.Conv2d:
    """The convolution that computes ``linear`` on every ``kernel_size``-square patch.

    A ``Linear(in_channels * k * k, out)`` applied to a flattened ``(in_channels, k, k)``
    map is a ``Conv2d(in_channels, out, k)`` whose kernel is the same weight matrix
    reshaped to ``(out, in_channels, k, k)`` (``flatten`` walks channels, then rows, then
    columns: the order of a conv kernel). On a ``k x k`` input the two agree; on a larger
    input the convolution slides the same classifier over every position.
    """
    out_features, in_features = linear.weight.shape
    if in_features != in_channels * kernel_size**2:
        raise ValueError(
            f"linear_to_conv: Linear has {in_features} inputs, not in_channels * k * k = "
            f"{in_channels} * {kernel_size}^2 = {in_channels * kernel_size**2}"
        )
    conv = nn.Conv2d(in_channels, out_features, kernel_size)
    with torch.no_grad():
        conv.weight.copy_(
            linear.weight.reshape(out_features, in_channels, kernel_size, kernel_size)
        )
        conv.bias.copy_(linear.bias)
    return conv.to(linear.weight.device)


class DenseClassifier(nn.Module):
    """A :class:`CropClassifier` rewritten as convolutions only (made by
    :func:`to_fully_convolutional`).

    ``forward(x)`` takes a ``(B, 4, H, W)`` image with ``H, W >= S`` and returns
    ``(logits, deltas)``: ``(B, C + 1, ny, nx)`` and ``(B, 4 * C, ny, nx)`` with
    ``ny = (H - S) // 8 + 1`` and ``nx = (W - S) // 8 + 1``. Position ``(j, i)`` holds the
    outputs of the ``S x S`` window at ``x = 8 i``, ``y = 8 j`` (:func:`grid_boxes`).
    """

    def __init__(
        self,
        features: nn.Module,
        fc: nn.Conv2d,
        cls_score: nn.Conv2d,
        bbox_pred: nn.Conv2d,
        input_size: int,
    ) -> None:
        super().__init__()
        self.features, self.fc, self.cls_score, self.bbox_pred = features, fc, cls_score, bbox_pred
        self.input_size = input_size

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s = self.input_size
        if x.dim() != 4 or x.shape[1] != 4 or x.shape[2] < s or x.shape[3] < s:
            raise ValueError(
                f"DenseClassifier expects (B, 4, H, W) with H, W >= {s}, got {tuple(x.shape)}"
            )
        h = F.relu(self.fc(self.features(x)))
        return self.cls_score(h), self.bbox_pred(h)


def to_fully_convolutional(model: CropClassifier) -> DenseClassifier:
    """OverFeat's trick: the same weights, ``Linear`` layers turned into convolutions.

    ``fc`` (256 -> 128 on a flattened 64 x 2 x 2 map) becomes a 2 x 2 convolution, and
    ``cls_score`` and ``bbox_pred`` become 1 x 1 convolutions. The convolutional features
    are shared (not copied): retrain the model and convert again to refresh the heads.
    """
    k = model.feature_size
    return DenseClassifier(
        model.features,
        linear_to_conv(model.fc, model.feature_channels, k),
        linear_to_conv(model.cls_score, model.cls_score.in_features, 1),
        linear_to_conv(model.bbox_pred, model.bbox_pred.in_features, 1),
        model.input_size,
    ).train(model.training)


# ----------------------------------------------------------------------------------------
# Step 3: the windows
# ----------------------------------------------------------------------------------------


@dataclass
class WindowConfig:
    """Which windows to slide, and how to turn their scores into detections.

    A window of ``size`` s and ``ratio`` r (width / height) is ``s * sqrt(r)`` wide and
    ``s / sqrt(r)`` tall (its area is s^2 whatever the ratio). The stride between windows
    is fixed by the network: 8 pixels of the resized image, i.e. a quarter of the window
    side in the original image (``NETWORK_STRIDE / INPUT_SIZE``).
    """

    sizes: tuple[float, ...] = (8.0, 12.0, 18.0, 27.0, 40.0, 60.0)
    ratios: tuple[float, ...] = (1.0, 3.0, 1.0 / 3.0)
    input_size: int = INPUT_SIZE
    score_threshold: float = 0.05  #: keep (window, class) pairs scoring above this
    nms_threshold: float = 0.3  #: class-wise NMS IoU (R-CNN's 0.3)
    max_detections: int = 100  #: per image, after NMS
    batch_size: int = 1024  #: windows per forward pass on the naive path

    def __post_init__(self) -> None:
        if not self.sizes or any(s <= 0 for s in self.sizes):
            raise ValueError(f"WindowConfig: sizes must be positive, got {self.sizes}")
        if not self.ratios or any(r <= 0 for r in self.ratios):
            raise ValueError(f"WindowConfig: ratios must be positive, got {self.ratios}")
        self.sizes = tuple(float(s) for s in self.sizes)
        self.ratios = tuple(float(r) for r in self.ratios)


@dataclass
class WindowGrid:
    """The windows of one (size, ratio): the image is resized to ``resized`` (H', W') so
    that a ``width x height`` window becomes ``S x S``; the windows are the ``ny x nx``
    squares of side S at stride 8 of the resized image."""

    size: float
    ratio: float
    width: float  #: nominal window width in the original image
    height: float
    resized: tuple[int, int]  #: (H', W') of the resized image
    scale: tuple[float, float]  #: (fy, fx) = (H' / H, W' / W)
    grid: tuple[int, int]  #: (ny, nx) windows

    @property
    def num_windows(self) -> int:
        return self.grid[0] * self.grid[1]


def window_grids(image_size: Sequence[int], config: WindowConfig) -> list[WindowGrid]:
    """The window grids of an image of ``(H, W)`` pixels, one per (size, ratio).

    Windows larger than the image (in either direction) are skipped: they have no valid
    position. Raises ``ValueError`` when no window fits at all.
    """
    height, width = (int(v) for v in image_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"window_grids: image size must be positive, got {image_size}")
    s_in, grids = config.input_size, []
    for size in config.sizes:
        for ratio in config.ratios:
            w, h = size * math.sqrt(ratio), size / math.sqrt(ratio)
            rh, rw = round(height * s_in / h), round(width * s_in / w)
            if rh < s_in or rw < s_in:
                continue  # the window does not fit in the image
            ny, nx = (rh - s_in) // NETWORK_STRIDE + 1, (rw - s_in) // NETWORK_STRIDE + 1
            grids.append(
                WindowGrid(size, ratio, w, h, (rh, rw), (rh / height, rw / width), (ny, nx))
            )
    if not grids:
        raise ValueError(
            f"window_grids: no window of sizes {config.sizes} and ratios {config.ratios} "
            f"fits in a {height}x{width} image; use smaller window sizes"
        )
    return grids


def grid_boxes(grid: WindowGrid, input_size: int = INPUT_SIZE) -> Tensor:
    """Map every position ``(j, i)`` of a dense output map back to its window.

    Position ``(j, i)`` is the ``S x S`` square at ``(8 i, 8 j)`` of the resized image;
    dividing by the resize factors gives, in the original image,
    ``x1 = 8 i / fx, y1 = 8 j / fy, x2 = (8 i + S) / fx, y2 = (8 j + S) / fy``.

    Returns:
        ``(ny * nx, 4)`` float32 xyxy boxes, row-major (``j * nx + i``): the order of
        ``map.flatten()`` for a ``(ny, nx)`` map.
    """
    (ny, nx), (fy, fx) = grid.grid, grid.scale
    ys = torch.arange(ny, dtype=torch.float32) * NETWORK_STRIDE
    xs = torch.arange(nx, dtype=torch.float32) * NETWORK_STRIDE
    y1, x1 = torch.meshgrid(ys, xs, indexing="ij")
    boxes = torch.stack([x1 / fx, y1 / fy, (x1 + input_size) / fx, (y1 + input_size) / fy], -1)
    return boxes.reshape(-1, 4)


def sliding_windows(image_size: Sequence[int], config: WindowConfig) -> tuple[Tensor, Tensor]:
    """Every window of an image: ``(N, 4)`` xyxy boxes and ``(N,)`` the index of their grid
    in :func:`window_grids` (one grid per size and ratio)."""
    grids = window_grids(image_size, config)
    boxes = [grid_boxes(g, config.input_size) for g in grids]
    index = [torch.full((len(b),), k) for k, b in enumerate(boxes)]
    return torch.cat(boxes), torch.cat(index)


def count_windows(image_size: Sequence[int], config: WindowConfig) -> dict[str, Any]:
    """How many windows an image has: in total, and per window size and per ratio."""
    grids = window_grids(image_size, config)
    per_size: dict[float, int] = {}
    per_ratio: dict[float, int] = {}
    for g in grids:
        per_size[g.size] = per_size.get(g.size, 0) + g.num_windows
        per_ratio[g.ratio] = per_ratio.get(g.ratio, 0) + g.num_windows
    return {
        "total": sum(g.num_windows for g in grids),
        "per_size": per_size,
        "per_ratio": per_ratio,
        "grids": len(grids),
    }


def resize_for_window(image: Tensor, grid: WindowGrid) -> Tensor:
    """``(3, H, W)`` -> ``(4, H', W')``: the image resized so the grid's window becomes
    ``S x S``, plus the window's shape channel."""
    _check_image("resize_for_window", image)
    resized = _resize(image, *grid.resized)
    return with_shape_channel(resized, shape_channel_value(grid.width, grid.height))


def classify_windows_naive(
    model: CropClassifier, image: Tensor, config: WindowConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """Classify every window separately: crop it out of the resized image and run the
    whole network on it (batched ``config.batch_size`` windows at a time).

    Returns:
        ``boxes (N, 4)`` the windows, ``logits (N, C + 1)``, ``deltas (N, 4 * C)``, with N
        the windows of all grids in :func:`sliding_windows` order.
    """
    _check_image("classify_windows_naive", image)
    s, device = config.input_size, next(model.parameters()).device
    all_boxes, all_logits, all_deltas = [], [], []
    with torch.no_grad():
        for grid in window_grids(image.shape[1:], config):
            resized = resize_for_window(image.to(device), grid)
            # (4, ny, nx, S, S): every S x S square at stride 8, as a view (no copy yet)
            windows = resized.unfold(1, s, NETWORK_STRIDE).unfold(2, s, NETWORK_STRIDE)
            windows = windows.permute(1, 2, 0, 3, 4).reshape(-1, 4, s, s)
            for start in range(0, len(windows), config.batch_size):
                logits, deltas = model.predict(windows[start : start + config.batch_size])
                all_logits.append(logits)
                all_deltas.append(deltas)
            all_boxes.append(grid_boxes(grid, s).to(device))
    return torch.cat(all_boxes), torch.cat(all_logits), torch.cat(all_deltas)


def classify_windows_dense(
    dense: DenseClassifier, image: Tensor, config: WindowConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """Classify every window at once: one pass of the fully convolutional network per
    resized image, and the scores read off its output map. Same outputs, same order as
    :func:`classify_windows_naive`."""
    _check_image("classify_windows_dense", image)
    if not isinstance(dense, DenseClassifier):
        raise TypeError("classify_windows_dense: pass to_fully_convolutional(model)")
    device = next(dense.parameters()).device
    all_boxes, all_logits, all_deltas = [], [], []
    with torch.no_grad():
        for grid in window_grids(image.shape[1:], config):
            logits, deltas = dense(resize_for_window(image.to(device), grid)[None])
            if tuple(logits.shape[2:]) != grid.grid:  # pragma: no cover - a design check
                raise RuntimeError(f"dense map {tuple(logits.shape[2:])} != grid {grid.grid}")
            all_logits.append(logits[0].flatten(1).T)  # (ny * nx, C + 1), row-major
            all_deltas.append(deltas[0].flatten(1).T)
            all_boxes.append(grid_boxes(grid, config.input_size).to(device))
    return torch.cat(all_boxes), torch.cat(all_logits), torch.cat(all_deltas)


# ----------------------------------------------------------------------------------------
# Step 6: from window scores to detections
# ----------------------------------------------------------------------------------------


def postprocess(
    boxes: Tensor,
    logits: Tensor,
    deltas: Tensor | None,
    image_size: Sequence[int],
    config: WindowConfig,
) -> dict[str, Tensor]:
    """Window scores -> detections, as R-CNN does it (section 2.2).

    1. softmax over the ``C + 1`` classes; every (window, object class) pair whose score
       is above ``config.score_threshold`` is a candidate;
    2. with ``deltas`` (``(N, 4 * C)``), the candidate's window is moved by its class's
       deltas (``BoxCoder(10, 10, 5, 5).decode``), else it stays on the window grid;
    3. boxes clipped to the image, class-wise NMS at ``config.nms_threshold``, and the
       ``config.max_detections`` best kept.

    Returns:
        ``{"boxes": (K, 4), "scores": (K,), "labels": (K,)}`` by decreasing score.
    """
    probs = logits.softmax(dim=1)[:, 1:]  # (N, C): drop the background column
    win, cls = torch.nonzero(probs > config.score_threshold, as_tuple=True)
    scores = probs[win, cls]
    cand = boxes[win]
    if deltas is not None and len(win):
        d = deltas.reshape(len(boxes), -1, 4)[win, cls]
        cand = _box_coder().decode(d, cand)
    cand = clip_boxes_to_image(cand, tuple(int(v) for v in image_size))
    ok = ((cand[:, 2] - cand[:, 0]) > 0) & ((cand[:, 3] - cand[:, 1]) > 0)
    cand, scores, labels = cand[ok], scores[ok], cls[ok] + 1
    keep = batched_nms(cand, scores, labels, config.nms_threshold)[: config.max_detections]
    return {"boxes": cand[keep], "scores": scores[keep], "labels": labels[keep]}


def detect(
    model: CropClassifier | DenseClassifier,
    images: Tensor | Sequence[Tensor],
    config: WindowConfig | None = None,
    method: str = "dense",
    regress: bool = True,
) -> list[dict[str, Tensor]]:
    """Sliding-window detection on one ``(3, H, W)`` image or a list of them.

    ``method="dense"`` runs the fully convolutional network (a :class:`CropClassifier`
    is converted first), ``"naive"`` classifies each window separately; both give the same
    detections. ``regress=False`` keeps the windows' grid-quantised boxes.

    Returns:
        One dict ``{"boxes", "scores", "labels"}`` per image (see :func:`postprocess`).
    """
    config = config or WindowConfig()
    if method not in ("dense", "naive"):
        raise ValueError(f"detect: method must be 'dense' or 'naive', got {method!r}")
    if isinstance(images, Tensor) and images.dim() == 3:
        images = [images]
    if isinstance(model, CropClassifier):
        was_training = model.training
        model.eval()
        net = to_fully_convolutional(model) if method == "dense" else model
    else:
        if method == "naive":
            raise TypeError("detect: the naive method needs the CropClassifier itself")
        was_training, net = None, model.eval()
    outputs = []
    try:
        for image in images:
            classify = classify_windows_dense if method == "dense" else classify_windows_naive
            boxes, logits, deltas = classify(net, image, config)
            outputs.append(
                postprocess(boxes, logits, deltas if regress else None, image.shape[1:], config)
            )
    finally:
        if was_training is not None:
            model.train(was_training)
    return outputs


# ----------------------------------------------------------------------------------------
# Cost and speed: multiply-adds and seconds of the naive and the dense detector
# ----------------------------------------------------------------------------------------


def multiply_adds(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass of ``model`` on an input of ``input_shape``
    (N, C, H, W), counted over its ``Conv2d`` and ``Linear`` layers (the rest is small).

    A convolution costs (output elements) x (C_in / groups x kh x kw); a linear layer
    (output elements) x (in_features). Deterministic, unlike a stopwatch."""
    total = 0

    def count(module: nn.Module, _inputs, output: Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(tuple(input_shape), device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def detection_cost(
    model: CropClassifier, image_size: Sequence[int], config: WindowConfig | None = None
) -> dict[str, float]:
    """Multiply-adds per image of the naive detector (every window classified on its own)
    and of the fully convolutional one (one pass per resized image), and their ratio: the
    work the convolutional trick saves, which windows overlapping by three quarters share.
    """
    config = config or WindowConfig()
    grids = window_grids(image_size, config)
    was_training = model.training
    model.eval()
    try:
        channels = model.features[0].in_channels
        s = config.input_size
        naive = multiply_adds(model, (1, channels, s, s)) * sum(g.num_windows for g in grids)
        dense_net = to_fully_convolutional(model)
        dense = sum(multiply_adds(dense_net, (1, channels, *g.resized)) for g in grids)
    finally:
        model.train(was_training)
    return {"naive_macs": float(naive), "dense_macs": float(dense), "ratio": naive / dense}


def time_detectors(
    model: CropClassifier,
    images: Sequence[Tensor],
    config: WindowConfig | None = None,
    repeats: int = 3,
) -> dict[str, float]:
    """Seconds per image of the naive and the fully convolutional detectors on the same
    images (each run once beforehand to warm up), their speed-up, and the largest
    difference between their scores (float rounding only).

    Each image is timed ``repeats`` times, the two methods interleaved, and the fastest
    run of each kept: the minimum is the least disturbed by other work on the machine."""
    config = config or WindowConfig()
    model.eval()
    dense = to_fully_convolutional(model)
    detect(model, images[0], config, method="naive")  # warm-up
    detect(dense, images[0], config, method="dense")
    timings, max_diff = {"naive": 0.0, "dense": 0.0}, 0.0
    for image in images:
        logits = {}
        best = {"naive": math.inf, "dense": math.inf}
        for _ in range(max(1, repeats)):
            for method, net, classify in (
                ("naive", model, classify_windows_naive),
                ("dense", dense, classify_windows_dense),
            ):
                t0 = time.perf_counter()
                boxes, logits[method], deltas = classify(net, image, config)
                postprocess(boxes, logits[method], deltas, image.shape[1:], config)
                best[method] = min(best[method], time.perf_counter() - t0)
        for method in timings:
            timings[method] += best[method] / len(images)
        max_diff = max(max_diff, (logits["naive"] - logits["dense"]).abs().max().item())
    return {
        "naive_seconds_per_image": timings["naive"],
        "dense_seconds_per_image": timings["dense"],
        "speedup": timings["naive"] / timings["dense"],
        "max_logit_difference": max_diff,
        "num_images": len(images),
        "repeats": repeats,
    }
