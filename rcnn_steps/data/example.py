"""A small custom dataset in COCO format, made from scratch: the worked example of
data/README.md ("Your own data"), and the sample the tests read COCO's other formats from.

Three categories, two of them with keypoint sets of their own:

- ``arrow``: 3 keypoints, ``tip``, ``left_barb``, ``right_barb`` (a left/right pair);
- ``kite``: 4 keypoints, ``top``, ``left``, ``right``, ``bottom``;
- ``tile``: no keypoints.

Unlike the book's synthetic set (RLE masks, all images 128 px) the objects' masks are
**polygons**, the images have **different sizes** (``min_size`` to ``max_size`` px per
side), and some images hold a **crowd** (a compressed-RLE region with ``iscrowd: 1``):
the parts of the COCO format that real COCO uses and the synthetic set does not. Each
image is drawn from its own generator seeded by ``(seed, split, index)``: same
arguments, same files.

``python -m rcnn_steps.data example --out DIR`` writes it; :func:`make_example`
from code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

__all__ = ["EXAMPLE_CATEGORIES", "make_example"]

EXAMPLE_CATEGORIES = [
    {
        "id": 1,
        "name": "arrow",
        "keypoints": ["tip", "left_barb", "right_barb"],
        "skeleton": [[1, 2], [1, 3]],
    },
    {
        "id": 2,
        "name": "kite",
        "keypoints": ["top", "left", "right", "bottom"],
        "skeleton": [[1, 2], [1, 3], [2, 4], [3, 4]],
        "flip_pairs": [[1, 2]],
    },
    {"id": 3, "name": "tile"},
]


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float):
    """(polygon points, keypoints) of one object, in image pixels."""
    c, s = math.cos(angle), math.sin(angle)

    def at(u: float, v: float) -> tuple[float, float]:  # object frame -> image
        return (cx + r * (u * c - v * s), cy + r * (u * s + v * c))

    if kind == "arrow":  # pointing along +u
        tip, left, right = at(1.0, 0.0), at(0.0, -0.7), at(0.0, 0.7)
        outline = [tip, left, at(0.0, -0.25), at(-1.0, -0.25), at(-1.0, 0.25), at(0.0, 0.25), right]
        return outline, [tip, left, right]
    if kind == "kite":
        top, left, right, bottom = at(0, -1.0), at(-0.6, -0.2), at(0.6, -0.2), at(0, 1.0)
        return [top, right, bottom, left], [top, left, right, bottom]
    corners = [at(-0.8, -0.6), at(0.8, -0.6), at(0.8, 0.6), at(-0.8, 0.6)]
    return corners, []


def _render(rng: np.random.Generator, width: int, height: int, image_id: int, next_ann: int):
    img = Image.fromarray(
        (rng.uniform(0.2, 0.8, size=3) * 255 * np.ones((height, width, 3))).astype(np.uint8)
    )
    draw = ImageDraw.Draw(img)
    anns = []
    for _ in range(int(rng.integers(1, 4))):
        kind = ["arrow", "kite", "tile"][int(rng.integers(0, 3))]
        r = float(rng.uniform(0.12, 0.25)) * min(width, height)
        cx = float(rng.uniform(r, width - r))
        cy = float(rng.uniform(r, height - r))
        outline, kps = _polygon(kind, cx, cy, r, float(rng.uniform(0, 2 * math.pi)))
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        draw.polygon(outline, fill=colour)
        xs, ys = [p[0] for p in outline], [p[1] for p in outline]
        x0, y0 = max(min(xs), 0.0), max(min(ys), 0.0)
        x1, y1 = min(max(xs), float(width)), min(max(ys), float(height))
        flat = [round(v, 2) for p in outline for v in p]
        area = float(mask_utils.area(mask_utils.frPyObjects([flat], height, width))[0])
        ann = {
            "id": next_ann + len(anns),
            "image_id": image_id,
            "category_id": {"arrow": 1, "kite": 2, "tile": 3}[kind],
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
            "segmentation": [flat],
            "area": area,
            "iscrowd": 0,
        }
        if kps:
            ann["keypoints"] = [v for x, y in kps for v in (round(x, 2), round(y, 2), 2)]
            ann["num_keypoints"] = len(kps)
        anns.append(ann)
    if rng.random() < 0.3:  # a crowd of specks, one region, as COCO annotates crowds
        mask = np.zeros((height, width), dtype=np.uint8)
        for _ in range(6):
            x, y = int(rng.integers(0, width - 3)), int(rng.integers(0, height - 3))
            mask[y : y + 2, x : x + 2] = 1
            draw.rectangle([x, y, x + 1, y + 1], fill=(0, 0, 0))
        rle = mask_utils.encode(np.asfortranarray(mask))
        x0, y0, w, h = (float(v) for v in mask_utils.toBbox(rle))
        anns.append(
            {
                "id": next_ann + len(anns),
                "image_id": image_id,
                "category_id": 3,
                "bbox": [x0, y0, w, h],
                "segmentation": {"size": [height, width], "counts": rle["counts"].decode()},
                "area": float(mask_utils.area(rle)),
                "iscrowd": 1,
            }
        )
    return img, anns


def make_example(
    out: str | Path,
    num_train: int = 40,
    num_val: int = 12,
    seed: int = 0,
    min_size: int = 96,
    max_size: int = 160,
) -> Path:
    """Write the example dataset to ``out`` (``train/``, ``val/``,
    ``annotations/instances_{train,val}.json``) and return ``out``. Refuses a folder that
    already holds files (it never overwrites yours)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"make_example: {out} is not empty; give a new folder")
    next_ann = 1
    for split, count, base in (("train", num_train, 1), ("val", num_val, 100_001)):
        (out / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
            width, height = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
            image_id = base + i
            img, anns = _render(rng, width, height, image_id, next_ann)
            next_ann += len(anns)
            name = f"{image_id:08d}.png"
            img.save(out / split / name)
            images.append({"id": image_id, "file_name": name, "width": width, "height": height})
            annotations += anns
        data = {"images": images, "annotations": annotations, "categories": EXAMPLE_CATEGORIES}
        (out / "annotations").mkdir(exist_ok=True)
        path = out / "annotations" / f"instances_{split}.json"
        path.write_text(json.dumps(data))
    return out
