"""Joint image + target transforms (chapter 00): what a flip does to boxes, masks and
keypoints. Each is a callable ``(image, target) -> (image, target)``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["Compose", "RandomHorizontalFlip", "horizontal_flip", "select_instances"]


def select_instances(target: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
    """The target restricted to some of its instances: every per-instance entry (a tensor
    whose first dimension is N, the number of boxes) is indexed with ``keep``, a (N,) bool
    mask or an index tensor; other entries (``image_id``) are copied as they are."""
    n = len(target["boxes"])
    return {
        key: value[keep] if torch.is_tensor(value) and value.dim() and len(value) == n else value
        for key, value in target.items()
    }


def horizontal_flip(
    image: torch.Tensor, target: dict[str, Any], flip_pairs: Sequence[tuple[int, int]] = ()
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Mirror an image (3, H, W) and its target left to right.

    Boxes: x1' = W - x2, x2' = W - x1. Masks: flipped along the width. Keypoints:
    x' = W - x for labelled points, and each (left, right) pair in ``flip_pairs`` swapped,
    because after the flip the figure's left hand is where its right hand was drawn.
    Unlabelled keypoints (visibility 0) stay at (0, 0, 0).
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
        if flip_pairs:
            order = list(range(kps.shape[1]))
            for left, right in flip_pairs:
                order[left], order[right] = right, left
            kps = kps[:, order]
        target["keypoints"] = kps
    return image, target


class RandomHorizontalFlip:
    """Flip with probability ``p``. Pass the dataset's ``flip_pairs`` so that keypoints
    keep their meaning: ``RandomHorizontalFlip(0.5, dataset.flip_pairs)``. Draws from
    torch's global generator, so a seeded run flips the same images."""

    def __init__(self, p: float = 0.5, flip_pairs: Sequence[tuple[int, int]] = ()) -> None:
        self.p = p
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
