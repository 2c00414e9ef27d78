"""A COCO-format dataset reader for the synthetic set and real COCO 2017 alike (chapter 00).

The annotation file is read and checked once, up front, so a broken file fails when the
dataset is made, with a message that names the file and the annotation, rather than in the
middle of training. pycocotools does the mask decoding and later the evaluation.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO

__all__ = ["CocoDataset", "DatasetError", "collate_fn", "load_coco_json"]

#: COCO's OKS sigmas for its 17 person keypoints (used when a category gives none).
COCO_PERSON_OKS_SIGMAS = [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72] + [
    0.62,
    0.62,
    1.07,
    1.07,
    0.87,
    0.87,
    0.89,
    0.89,
]
COCO_PERSON_OKS_SIGMAS = [s / 10.0 for s in COCO_PERSON_OKS_SIGMAS]

_HOW_TO_GET_DATA = (
    "make the synthetic set with `python -m rcnn_steps.data synth --out DIR` "
    "(or `make data`), or see data/README.md for where real COCO 2017 goes"
)


class DatasetError(ValueError):
    """A dataset file is missing or malformed. The message names the file (and the
    annotation or image id) and says what to do."""


def _suppress_prints():
    # pycocotools prints "loading annotations..." and "index created!": noise in a notebook
    return contextlib.redirect_stdout(io.StringIO())


def load_coco_json(annotation_file: str | os.PathLike) -> dict[str, Any]:
    """Read and check a COCO annotation file. Raises :class:`DatasetError` for a missing
    file, invalid JSON, missing keys, a box with non-positive width or height, or an
    annotation whose image or category does not exist."""
    path = Path(annotation_file)
    if not path.is_file():
        raise DatasetError(f"annotation file {path} does not exist: {_HOW_TO_GET_DATA}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"annotation file {path} is not valid JSON ({e.msg} at line {e.lineno}, "
            f"column {e.colno}); the file is probably truncated or corrupt: "
            "download or generate it again"
        ) from e
    if not isinstance(data, dict):
        raise DatasetError(f"annotation file {path} must hold a JSON object, not {type(data)}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DatasetError(
                f"annotation file {path} has no '{key}' list; a COCO instances file needs "
                "'images', 'annotations' and 'categories'"
            )
    for img in data["images"]:
        for key in ("id", "file_name"):
            if key not in img:
                raise DatasetError(
                    f"{path}: image entry {img.get('id', img)!r} has no '{key}'; "
                    "every image needs 'id' and 'file_name'"
                )
    for cat in data["categories"]:
        if "id" not in cat or "name" not in cat:
            raise DatasetError(f"{path}: category {cat!r} needs an 'id' and a 'name'")
    image_ids = {img["id"] for img in data["images"]}
    category_ids = {cat["id"] for cat in data["categories"]}
    for ann in data["annotations"]:
        ann_id = ann.get("id", "<no id>")
        for key in ("id", "image_id", "category_id", "bbox"):
            if key not in ann:
                raise DatasetError(
                    f"{path}: annotation {ann_id} has no '{key}'; every annotation needs "
                    "'id', 'image_id', 'category_id' and 'bbox' (x, y, width, height)"
                )
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise DatasetError(
                f"{path}: annotation {ann_id} has bbox {bbox!r}; it must be [x, y, width, height]"
            )
        if ann["image_id"] not in image_ids:
            raise DatasetError(
                f"{path}: annotation {ann_id} refers to image_id {ann['image_id']}, which is "
                "not in 'images'; remove the annotation or add the image"
            )
        if ann["category_id"] not in category_ids:
            raise DatasetError(
                f"{path}: annotation {ann_id} has unknown category_id {ann['category_id']} "
                f"(known: {sorted(category_ids)}); fix the id or add the category"
            )
    return data


def _flip_pairs_from(category: dict) -> list[tuple[int, int]]:
    """0-based (left, right) keypoint pairs: the category's ``flip_pairs`` if it has them,
    else every ``left_X``/``right_X`` name pair (as in COCO's person)."""
    if "flip_pairs" in category:
        return [tuple(p) for p in category["flip_pairs"]]
    names = category.get("keypoints", [])
    pairs = []
    for i, name in enumerate(names):
        if name.startswith("left_") and "right_" + name[5:] in names:
            pairs.append((i, names.index("right_" + name[5:])))
    return pairs


class CocoDataset(torch.utils.data.Dataset):
    """Images and targets from a COCO-format annotation file.

    Each item is ``(image, target)``: ``image`` a float tensor (3, H, W) in [0, 1], and
    ``target`` a dict with

    - ``boxes``: (N, 4) float32, xyxy in pixels (COCO stores xywh);
    - ``labels``: (N,) int64, contiguous 1..C in the order of category ids (0 = background);
    - ``masks``: (N, H, W) uint8;
    - ``keypoints``: (N, K, 3) float32 (x, y, visibility), zeros for categories without
      keypoints; K is the largest keypoint count of any category (0 if none has them);
    - ``area``: (N,) float32 (the annotation's area: the mask area for segmentations);
    - ``iscrowd``: (N,) int64; ``image_id``: int.

    Crowd annotations are left out of the target unless ``include_crowd=True`` (detectors
    do not train on them; evaluation reads them from the annotation file). Images without
    annotations give N = 0 and tensors of the right shapes.

    ``on_invalid_box``: ``"raise"`` (default) for a box with non-positive width or height,
    or ``"skip"`` to drop such annotations (real COCO 2017 has a handful).

    ``transforms``: a callable ``(image, target) -> (image, target)``, e.g.
    :class:`rcnn_steps.data.transforms.RandomHorizontalFlip`.

    ``load_masks=False`` leaves ``masks`` out of the target, for box-only detectors
    (chapters 01-06): decoding the masks is about a quarter of an item's loading time on
    our 128-px images (0.43 vs 0.33 ms, quiet 2-core machine), and grows with image size.
    """

    def __init__(
        self,
        images_dir: str | os.PathLike,
        annotation_file: str | os.PathLike,
        transforms: Callable | None = None,
        include_crowd: bool = False,
        on_invalid_box: str = "raise",
        load_masks: bool = True,
    ) -> None:
        self.images_dir = Path(images_dir)
        self.annotation_file = Path(annotation_file)
        if not self.images_dir.is_dir():
            raise DatasetError(
                f"images folder {self.images_dir} does not exist: {_HOW_TO_GET_DATA}"
            )
        if on_invalid_box not in ("raise", "skip"):
            raise ValueError("on_invalid_box must be 'raise' or 'skip'")
        data = load_coco_json(self.annotation_file)
        kept = []
        for ann in data["annotations"]:
            _, _, w, h = ann["bbox"]
            if w <= 0 or h <= 0:
                if on_invalid_box == "raise":
                    raise DatasetError(
                        f"{self.annotation_file}: annotation {ann['id']} (image "
                        f"{ann['image_id']}) has a box of width {w} and height {h}; boxes "
                        "need positive width and height: fix or remove it, or pass "
                        "on_invalid_box='skip' to drop such annotations"
                    )
                continue
            kept.append(ann)
        data = dict(data, annotations=kept)
        with _suppress_prints():
            self.coco = COCO()
            self.coco.dataset = data
            self.coco.createIndex()
        self.transforms = transforms
        self.include_crowd = include_crowd
        self.load_masks = load_masks
        self.image_ids = sorted(self.coco.imgs)
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.categories = categories
        self.category_id_to_label = {c["id"]: i + 1 for i, c in enumerate(categories)}
        self.label_to_category_id = {v: k for k, v in self.category_id_to_label.items()}
        self.class_names = ["__background__"] + [c["name"] for c in categories]
        kp_cats = [c for c in categories if c.get("keypoints")]
        self.num_keypoints = max((len(c["keypoints"]) for c in kp_cats), default=0)
        kp_cat = kp_cats[0] if kp_cats else {}
        self.keypoint_names = list(kp_cat.get("keypoints", []))
        # COCO writes skeletons 1-based; we hand out 0-based pairs
        self.skeleton = [(a - 1, b - 1) for a, b in kp_cat.get("skeleton", [])]
        self.flip_pairs = _flip_pairs_from(kp_cat) if kp_cat else []
        if "oks_sigmas" in kp_cat:
            self.oks_sigmas = list(kp_cat["oks_sigmas"])
        elif self.num_keypoints == 17:
            self.oks_sigmas = COCO_PERSON_OKS_SIGMAS
        else:
            self.oks_sigmas = [0.05] * self.num_keypoints

    @property
    def fingerprint(self) -> str:
        """A short hash of the annotation file's bytes: caches built from this dataset (such
        as chapter 02's proposals) store it, so a cache made from other data is caught."""
        import hashlib

        return hashlib.sha256(self.annotation_file.read_bytes()).hexdigest()[:16]

    @property
    def num_classes(self) -> int:
        """Number of object categories (background not counted)."""
        return len(self.categories)

    def __len__(self) -> int:
        return len(self.image_ids)

    def load_image(self, image_id: int) -> torch.Tensor:
        """(3, H, W) float32 in [0, 1]; grey and RGBA files are converted to RGB."""
        info = self.coco.imgs[image_id]
        path = self.images_dir / info["file_name"]
        try:
            with Image.open(path) as im:
                array = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
        except FileNotFoundError as e:
            raise DatasetError(
                f"image file {path} (image id {image_id}) does not exist; check that "
                f"images_dir points at the folder for {self.annotation_file.name}"
            ) from e
        except (UnidentifiedImageError, OSError) as e:
            raise DatasetError(
                f"image file {path} (image id {image_id}) cannot be read ({e}); it is "
                "corrupt or not an image: replace it, or remove the image from the "
                "annotation file"
            ) from e
        return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)

    def _decode_mask(self, ann: dict, image_id: int, height: int, width: int) -> torch.Tensor:
        """(H, W) uint8 mask of one annotation: its segmentation (polygons or RLE) decoded,
        or, for an annotation without one, its box filled in (the best mask there is)."""
        if not ann.get("segmentation"):
            x, y, w, h = ann["bbox"]
            mask = torch.zeros((height, width), dtype=torch.uint8)
            mask[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))] = 1
            return mask
        try:
            return torch.from_numpy(self.coco.annToMask(ann))
        except Exception as e:  # pycocotools raises bare errors on bad input
            raise DatasetError(
                f"{self.annotation_file}: annotation {ann['id']} (image {image_id}) "
                f"has a segmentation pycocotools cannot decode ({e!r}); it must be "
                "a list of polygons or an RLE dict with 'size' and 'counts'"
            ) from e

    def load_target(self, image_id: int, height: int, width: int) -> dict[str, Any]:
        """The target dict for one image (see the class docstring for shapes)."""
        anns = self.coco.imgToAnns.get(image_id, [])
        if not self.include_crowd:
            anns = [a for a in anns if not a.get("iscrowd", 0)]
        n, k = len(anns), self.num_keypoints
        boxes = torch.zeros((n, 4), dtype=torch.float32)
        masks = torch.zeros((n, height, width) if self.load_masks else (0,), dtype=torch.uint8)
        keypoints = torch.zeros((n, k, 3), dtype=torch.float32)
        for i, ann in enumerate(anns):
            x, y, w, h = ann["bbox"]
            boxes[i] = torch.tensor([x, y, x + w, y + h])
            if self.load_masks:
                masks[i] = self._decode_mask(ann, image_id, height, width)
            kps = ann.get("keypoints")
            if kps:
                kp = torch.tensor(kps, dtype=torch.float32).reshape(-1, 3)
                keypoints[i, : kp.shape[0]] = kp
        target = {
            "boxes": boxes,
            "labels": torch.tensor(
                [self.category_id_to_label[a["category_id"]] for a in anns], dtype=torch.int64
            ),
            "masks": masks,
            "keypoints": keypoints,
            "area": torch.tensor(
                [a.get("area", a["bbox"][2] * a["bbox"][3]) for a in anns], dtype=torch.float32
            ),
            "iscrowd": torch.tensor([a.get("iscrowd", 0) for a in anns], dtype=torch.int64),
            "image_id": int(image_id),
        }
        if not self.load_masks:
            del target["masks"]
        return target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image_id = self.image_ids[index]
        image = self.load_image(image_id)
        target = self.load_target(image_id, image.shape[1], image.shape[2])
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        return (
            f"CocoDataset({len(self)} images, {len(self.coco.anns)} annotations, "
            f"{self.num_classes} classes, {self.num_keypoints} keypoints; "
            f"images_dir={str(self.images_dir)!r}, annotation_file="
            f"{str(self.annotation_file)!r})"
        )


def collate_fn(batch: list) -> tuple[list, list]:
    """Batch as two lists (images, targets): detection images differ in size, so they are
    padded later by the model, not stacked here."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)
