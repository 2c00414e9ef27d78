"""Joint image + target transforms (chapter 00): what a flip does to boxes, masks and
keypoints. Each is a callable ``(image, target) -> (image, target)``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from rcnn_steps.data.coco import _flip_pairs_from

__all__ = [
    "Compose",
    "RandomHorizontalFlip",
    "ResizeShortestSide",
    "flip_pairs_by_label",
    "horizontal_flip",
    "select_instances",
]


def select_instances(target: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
    """The target restricted to some of its instances: every per-instance entry (a tensor
    whose first dimension is N, the number of boxes) is indexed with ``keep``, a (N,) bool
    mask or an index tensor; other entries (``image_id``) are copied as they are."""
    n = len(target["boxes"])
    return {
        key: value[keep] if torch.is_tensor(value) and value.dim() and len(value) == n else value
        for key, value in target.items()
    }


FlipPairs = Sequence[tuple[int, int]] | Mapping[int, Sequence[tuple[int, int]]]


def flip_pairs_by_label(categories: Sequence[Mapping]) -> dict[int, list[tuple[int, int]]]:
    """Each keypoint category's 0-based (left, right) pairs, by the class label
    :class:`~rcnn_steps.data.CocoDataset` gives it (1..C in the order of the category
    ids): a category's ``flip_pairs`` field, else its ``left_X``/``right_X`` names.
    For :class:`RandomHorizontalFlip` on data whose categories have different keypoint
    sets."""
    ordered = sorted(categories, key=lambda c: c["id"])
    return {
        label: _flip_pairs_from(c) for label, c in enumerate(ordered, start=1) if c.get("keypoints")
    }


def _swap_order(k: int, pairs: Sequence[tuple[int, int]]) -> list[int]:
    order = list(range(k))
    for left, right in pairs:
        order[left], order[right] = right, left
    return order


def horizontal_flip(
    image: torch.Tensor, target: dict[str, Any], flip_pairs: FlipPairs = ()
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Mirror an image (3, H, W) and its target left to right.

    Boxes: x1' = W - x2, x2' = W - x1. Masks: flipped along the width. Keypoints:
    x' = W - x for labelled points, and each (left, right) pair in ``flip_pairs`` swapped,
    because after the flip the figure's left hand is where its right hand was drawn.
    ``flip_pairs`` is one list of 0-based pairs for every object, or a mapping from a
    class label to that class's pairs (when categories have different keypoint sets;
    objects of other labels keep their order). Unlabelled keypoints (visibility 0) stay
    at (0, 0, 0).
    """
    width = image.shape[-1]
    image = image.flip(-1)
    target = dict(target)
    if "boxes" in target:
        boxes = target["boxes"].clone()
        boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
        target["boxes"] = boxes
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    if "keypoints" in target and target["keypoints"].numel():
        kps = target["keypoints"].clone()
        labelled = kps[..., 2] > 0
        kps[..., 0] = torch.where(labelled, width - kps[..., 0], kps[..., 0])
        k = kps.shape[1]
        if isinstance(flip_pairs, Mapping):
            labels = target["labels"].tolist()
            for i, label in enumerate(labels):
                if flip_pairs.get(label):
                    kps[i] = kps[i, _swap_order(k, flip_pairs[label])]
        elif flip_pairs:
            kps = kps[:, _swap_order(k, flip_pairs)]
        target["keypoints"] = kps
    return image, target


class RandomHorizontalFlip:
    """Flip with probability ``p``. Pass the dataset's ``flip_pairs`` so that keypoints
    keep their meaning: ``RandomHorizontalFlip(0.5, dataset.flip_pairs)`` (or a mapping
    from class label to pairs, see :func:`horizontal_flip`). Draws from torch's global
    generator, so a seeded run flips the same images."""

    def __init__(self, p: float = 0.5, flip_pairs: FlipPairs = ()) -> None:
        self.p = p
        if isinstance(flip_pairs, Mapping):
            self.flip_pairs: FlipPairs = {
                int(k): [tuple(p) for p in v] for k, v in flip_pairs.items()
            }
        else:
            self.flip_pairs = [tuple(pair) for pair in flip_pairs]

    def __call__(self, image, target):
        if torch.rand(()) < self.p:
            return horizontal_flip(image, target, self.flip_pairs)
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p}, flip_pairs={self.flip_pairs})"


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image, target):
        for t in self.transforms:
            image, target = t(image, target)
        return image, target


class ResizeShortestSide:
    """Resize an image and its target so that the image's shorter side is one of
    ``min_sizes`` (drawn at random from torch's global generator when there are several:
    scale jitter) and its longer side at most ``max_size``, as the papers' COCO training
    does (short side 800, long side at most 1333).

    The work is torchvision's ``transforms.v2.RandomShortestSize`` on ``tv_tensors``: the
    image bilinear with antialiasing, ``boxes`` as ``BoundingBoxes``, ``masks`` as
    ``Mask`` (nearest neighbour) and the keypoints' ``(x, y)`` as ``KeyPoints``, all scaled
    alike; visibilities are kept and ``area`` is scaled by the two factors. ``target``
    gains ``"scale"``, ``(sy, sx)``: resized size over original size. (Flips stay with
    :func:`horizontal_flip`: v2 flips keypoints about ``W - 1``, the pixel-index
    convention, one pixel off COCO's continuous coordinates that boxes use, and knows
    nothing of left and right.)
    """

    def __init__(self, min_sizes: int | Sequence[int], max_size: int | None = None) -> None:
        from torchvision.transforms import v2

        sizes = [int(min_sizes)] if isinstance(min_sizes, int) else [int(m) for m in min_sizes]
        if not sizes or min(sizes) < 1:
            raise ValueError(f"ResizeShortestSide: min_sizes must be positive, got {min_sizes}")
        self.min_sizes = sizes
        self.max_size = max_size
        self.resize = v2.RandomShortestSize(min_size=sizes, max_size=max_size, antialias=True)

    def __call__(self, image, target):
        from torchvision import tv_tensors

        h, w = image.shape[-2:]
        target = dict(target)
        parts: dict[str, Any] = {"image": tv_tensors.Image(image)}
        if "boxes" in target:
            parts["boxes"] = tv_tensors.BoundingBoxes(
                target["boxes"], format="XYXY", canvas_size=(h, w)
            )
        if "masks" in target:
            parts["masks"] = tv_tensors.Mask(target["masks"])
        kps = target.get("keypoints")
        if kps is not None and kps.numel():
            parts["keypoints"] = tv_tensors.KeyPoints(kps[..., :2], canvas_size=(h, w))
        out = self.resize(parts)
        image = out["image"].as_subclass(torch.Tensor)
        nh, nw = image.shape[-2:]
        if "boxes" in out:
            target["boxes"] = out["boxes"].as_subclass(torch.Tensor)
        if "masks" in out:
            target["masks"] = out["masks"].as_subclass(torch.Tensor)
        if "keypoints" in out:
            xy = out["keypoints"].as_subclass(torch.Tensor)
            target["keypoints"] = torch.cat([xy, kps[..., 2:]], dim=-1)
        if "area" in target:
            target["area"] = target["area"] * (nh / h) * (nw / w)
        target["scale"] = (nh / h, nw / w)
        return image, target

    def __repr__(self) -> str:
        return f"ResizeShortestSide(min_sizes={self.min_sizes}, max_size={self.max_size})"
