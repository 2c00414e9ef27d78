"""What a COCO-format set holds: objects per class, their shapes and sizes (chapter 00)."""

from __future__ import annotations

from typing import Any

import numpy as np

from rcnn_steps.data.synth import size_ranges

__all__ = ["dataset_statistics", "size_class_of"]


def size_class_of(sqrt_area: np.ndarray, image_size: int) -> np.ndarray:
    """``"small"``, ``"medium"`` or ``"large"`` for each object, from sqrt(area) in pixels,
    with COCO's thresholds scaled to ``image_size`` (:func:`~rcnn_steps.data.size_ranges`)."""
    ranges = size_ranges(image_size)
    sqrt_area = np.asarray(sqrt_area, dtype=np.float64)
    return np.where(
        sqrt_area < ranges["small"][1],
        "small",
        np.where(sqrt_area < ranges["medium"][1], "medium", "large"),
    )


def dataset_statistics(dataset, image_size: int | None = None) -> dict[str, Any]:
    """Summarise the non-crowd annotations of a :class:`~rcnn_steps.data.CocoDataset`.

    Returns a dict with

    - ``per_class``: ``{name: {"count": n, "median_aspect": median w/h of the boxes}}``;
    - ``size_fractions``: fraction of objects that are small / medium / large, with COCO's
      thresholds scaled to ``image_size`` (default: the images' median width);
    - ``sqrt_area``: (N,) array, sqrt of each object's (visible) area in pixels;
    - ``crowd_regions`` and ``objects``: counts; ``objects_per_image``: mean.
    """
    anns = list(dataset.coco.anns.values())
    objects = [a for a in anns if not a.get("iscrowd", 0)]
    if image_size is None:
        image_size = int(np.median([img["width"] for img in dataset.coco.imgs.values()]))
    sqrt_area = np.sqrt([a.get("area", a["bbox"][2] * a["bbox"][3]) for a in objects])
    classes = size_class_of(sqrt_area, image_size)
    per_class = {}
    for cat in dataset.categories:
        mine = [a for a in objects if a["category_id"] == cat["id"]]
        aspects = [a["bbox"][2] / a["bbox"][3] for a in mine]
        per_class[cat["name"]] = {
            "count": len(mine),
            "median_aspect": float(np.median(aspects)) if aspects else float("nan"),
        }
    return {
        "per_class": per_class,
        "size_fractions": {
            name: float(np.mean(classes == name)) if len(classes) else 0.0
            for name in ("small", "medium", "large")
        },
        "sqrt_area": sqrt_area,
        "objects": len(objects),
        "crowd_regions": len(anns) - len(objects),
        "objects_per_image": len(objects) / max(len(dataset), 1),
        "image_size": image_size,
    }
