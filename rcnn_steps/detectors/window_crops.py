"""The sliding-window detector's crops (chapter 01, step 1): what its classifier learns from.

Each object's box, jittered, is cut out of the image and resized to the classifier's
``INPUT_SIZE`` x ``INPUT_SIZE`` input (:func:`crop_and_resize`), labelled with its class
and the box-regression target that moves it back onto the object; background crops (IoU
< 0.3 with every object, half of them near objects: the hard ones) are labelled 0; the
classes are balanced, all seeded (:func:`make_crops`, a :class:`CropSet`). Every crop,
like every window later, carries the fourth input channel that gives the warped window's
shape back (:func:`shape_channel_value`, :func:`with_shape_channel`).
:mod:`rcnn_steps.detectors.sliding_window` is the detector, and re-exports these names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rcnn_steps.ops import BoxCoder, box_iou

#: Side of the square input the crop classifier sees (pixels).
INPUT_SIZE = 32
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
