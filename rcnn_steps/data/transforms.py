"""Joint image + target transforms (chapter 00): what a flip does to boxes, masks and
keypoints. Each is a callable ``(image, target) -> (image, target)``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "Compose",
    "RandomHorizontalFlip",
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
    from rcnn_steps.data.coco import _flip_pairs_from

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
