"""A COCO-format dataset reader for the synthetic set and real COCO 2017 alike (chapter 00).

The annotation file is read and checked once, up front, so a broken file fails when the
dataset is made, with a message that names the file and the annotation, rather than in the
middle of training. pycocotools does the mask decoding and later the evaluation.

The checks of the file are :mod:`rcnn_steps.data.coco_json`'s (:func:`load_coco_json`,
:class:`DatasetError`, re-exported here); this module turns the checked file into
tensors: :class:`LabelMap`, :func:`read_image`, :class:`CocoDataset`.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO

from rcnn_steps.data.coco_json import _HOW_TO_GET_DATA, DatasetError, load_coco_json

__all__ = [
    "CocoDataset",
    "DatasetError",
    "LabelMap",
    "collate_fn",
    "load_coco_json",
    "read_image",
]

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


def _suppress_prints():
    # pycocotools prints "loading annotations..." and "index created!": noise in a notebook
    return contextlib.redirect_stdout(io.StringIO())


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


class LabelMap:
    """The classes a model is trained on, as the train split names them: each category id's
    contiguous label (1..K in the order of the ids; 0 is background), its name and its own
    keypoint set (names, 0-based ``skeleton`` and ``flip_pairs``).

    A model only knows labels; the label map is what turns them back into the data's own
    category ids (COCO's run 1..90 with gaps) and what every other split must agree with:
    :meth:`check_split` refuses a split that numbers or names the classes otherwise.
    ``source`` (the annotation file) is named in its errors; ``coco_categories`` keeps the
    file's own entries (with 1-based skeletons and any other field, e.g. ``oks_sigmas``).

    ``categories`` is JSON-able (``run.json`` keeps it, so ``predict`` writes the data's
    category ids and draws each class with its own keypoints)::

        [{"id": 1, "name": "arrow", "keypoints": [...], "skeleton": [[0, 1], ...],
          "flip_pairs": [[1, 2]]}, ...]
    """

    def __init__(self, categories: list[dict], source: str | os.PathLike = "") -> None:
        self.source = str(source)
        #: the COCO category entries as the file gives them, in the order of their ids
        self.coco_categories = sorted(categories, key=lambda c: c["id"])
        self.categories = [
            {
                "id": c["id"],
                "name": c["name"],
                "keypoints": list(c.get("keypoints") or []),
                # COCO writes skeletons 1-based; the library uses 0-based pairs
                "skeleton": [[a - 1, b - 1] for a, b in c.get("skeleton") or []],
                "flip_pairs": [list(p) for p in _flip_pairs_from(c)] if c.get("keypoints") else [],
            }
            for c in self.coco_categories
        ]
        self.category_id_to_label = {c["id"]: i for i, c in enumerate(self.categories, 1)}
        self.label_to_category_id = {v: k for k, v in self.category_id_to_label.items()}
        self.class_names = ["__background__"] + [c["name"] for c in self.categories]

    def __len__(self) -> int:
        return len(self.categories)

    def __repr__(self) -> str:
        return f"LabelMap({[(c['id'], c['name']) for c in self.categories]})"

    def check_split(self, other: LabelMap) -> None:
        """Refuse ``other`` (another split's label map, e.g. val's against train's) unless
        each of its categories is one of ours, with the same id, name and keypoint names.
        ``other`` may lack some of our categories (a val split without a class is fine);
        raises :class:`DatasetError` naming both files otherwise."""
        ours = {c["id"]: c for c in self.categories}
        by_name = {c["name"]: c["id"] for c in self.categories}
        known = ", ".join(f"{c['id']} {c['name']!r}" for c in self.categories)
        for cat in other.categories:
            where = f"{other.source}: category {cat['id']} ({cat['name']!r})"
            mine = ours.get(cat["id"])
            if mine is None:
                hint = (
                    f"; {self.source} numbers {cat['name']!r} {by_name[cat['name']]}"
                    if cat["name"] in by_name
                    else ""
                )
                raise DatasetError(
                    f"{where} is not a category of {self.source} (its categories: {known})"
                    f"{hint}; the model learns the classes of that file, by id: use its ids "
                    "and names in both files"
                )
            if mine["name"] != cat["name"]:
                raise DatasetError(
                    f"{where}: {self.source} calls category {cat['id']} {mine['name']!r}; "
                    "the same id must be the same class in both files (else a perfect "
                    "detector scores as a poor one): number the categories alike"
                )
            if mine["keypoints"] != cat["keypoints"]:
                raise DatasetError(
                    f"{where} has keypoints {cat['keypoints']} but {self.source} gives it "
                    f"{mine['keypoints']}; a category's keypoint names must be the same, in "
                    "the same order, in both files"
                )


def read_image(path: str | Path, what: str | None = None) -> torch.Tensor:
    """The pixels of one image file as training reads them: (3, H, W) float32 in [0, 1],
    grey and RGBA converted to RGB, 16-bit grey scaled by 1 / 65535 (not clipped at 255).
    Raises :class:`DatasetError` for 32-bit or float pixels (``what`` names the file in
    the message) and PIL's ``OSError`` for a missing, corrupt or truncated file."""
    with Image.open(path) as im:
        if im.mode.startswith("I;16"):  # 16-bit grey: convert("RGB") would clip
            grey = torch.from_numpy(np.asarray(im).astype(np.float32)).div_(65535.0)
            return grey.expand(3, -1, -1).contiguous()
        if im.mode in ("I", "F"):
            raise DatasetError(
                f"{what or f'image file {path}'} has mode {im.mode!r} "
                "(32-bit integer or float pixels), whose range of values is "
                "unknown; save it as an 8- or 16-bit PNG, or a JPEG"
            )
        array = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
        return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


class CocoDataset(torch.utils.data.Dataset):
    """Images and targets from a COCO-format annotation file.

    Each item is ``(image, target)``: ``image`` a float tensor (3, H, W) in [0, 1], and
    ``target`` a dict with

    - ``boxes``: (N, 4) float32, xyxy in pixels (COCO stores xywh);
    - ``labels``: (N,) int64, contiguous 1..C in the order of category ids (0 = background;
      :attr:`label_map`, which :meth:`use_label_map` sets to another split's, e.g. val's
      to train's);
    - ``masks``: (N, H, W) uint8;
    - ``keypoints``: (N, K, 3) float32 (x, y, visibility), zeros for categories without
      keypoints; K is the largest keypoint count of any category (0 if none has them);
    - ``area``: (N,) float32 (the annotation's area: the mask area for segmentations);
    - ``iscrowd``: (N,) int64; ``image_id``: int.

    Crowd annotations are left out of the target unless ``include_crowd=True`` (detectors
    do not train on them; evaluation reads them from the annotation file). Images without
    annotations give N = 0 and tensors of the right shapes.

    ``on_invalid_box``: what to do with an annotation whose box has a non-finite (nan or
    infinite) coordinate, a non-positive width or height, or lies entirely outside its
    image: ``"raise"`` (default) a :class:`DatasetError` naming it, or ``"skip"`` to drop
    it (real COCO 2017 has a handful of empty boxes). Boxes that stick out of the image
    only in part are kept as they are.

    Images are decoded as RGB (grey and RGBA converted); a 16-bit grey PNG is scaled by
    1 / 65535, not clipped at 255. An image whose decoded size differs from its entry's
    ``width`` and ``height`` raises a :class:`DatasetError` (its boxes would be off).

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
        images = {img["id"]: img for img in data["images"]}
        kept = []
        for ann in data["annotations"]:
            problem = _box_problem(ann["bbox"], images[ann["image_id"]])
            if problem is None:
                kept.append(ann)
            elif on_invalid_box == "raise":
                raise DatasetError(
                    f"{self.annotation_file}: annotation {ann['id']} (image "
                    f"{ann['image_id']}) has {problem}: fix or remove it, or pass "
                    "on_invalid_box='skip' to drop such annotations"
                )
        data = dict(data, annotations=kept)
        with _suppress_prints():
            self.coco = COCO()
            self.coco.dataset = data
            self.coco.createIndex()
        self.transforms = transforms
        self.include_crowd = include_crowd
        self.load_masks = load_masks
        self.image_ids = sorted(self.coco.imgs)
        self._use_categories(LabelMap(data["categories"], self.annotation_file))

    def _use_categories(self, label_map: LabelMap) -> None:
        """Set ``label_map`` and what follows from its categories: ``categories`` (the
        COCO entries, in the order of their ids), the label maps, the class names and the
        keypoint attributes (``num_keypoints``, and the first keypoint category's names,
        skeleton, flip pairs and OKS sigmas)."""
        self.label_map = label_map
        categories = self.categories = list(label_map.coco_categories)
        self.category_id_to_label = dict(label_map.category_id_to_label)
        self.label_to_category_id = dict(label_map.label_to_category_id)
        self.class_names = list(label_map.class_names)
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

    def use_label_map(self, label_map: LabelMap) -> None:
        """Take another split's classes (the train split's, for val: a model's labels must
        mean the same classes in both): its label map, and its categories, in the
        attributes and in the ground truth that evaluation reads (``coco``), so a class
        this split happens to lack is still a class (pycocotools leaves it out of the
        mean AP, as it has no ground truth here). Refuses, with :class:`DatasetError`
        naming both files, a split whose own categories disagree with ``label_map``
        (:meth:`LabelMap.check_split`). A dataset starts with its own label map."""
        label_map.check_split(LabelMap(self.categories, self.annotation_file))
        self._use_categories(label_map)
        self.coco.dataset["categories"] = list(label_map.coco_categories)
        self.coco.cats = {c["id"]: c for c in label_map.coco_categories}

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
        """(3, H, W) float32 in [0, 1]; grey and RGBA files are converted to RGB, 16-bit
        grey files scaled by 1 / 65535. Raises :class:`DatasetError` for a missing or
        unreadable file, 32-bit or float pixels, or a size other than the entry's."""
        info = self.coco.imgs[image_id]
        path = self.images_dir / info["file_name"]
        try:
            image = read_image(path, f"image file {path} (image id {image_id})")
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
        height, width = image.shape[1:]
        if (height, width) != (info["height"], info["width"]):
            raise DatasetError(
                f"image file {path} (image id {image_id}) is {width}x{height} pixels (width x "
                f"height) but {self.annotation_file} says {info['width']}x{info['height']}; "
                "its boxes and masks would not line up: fix the entry's 'width' and "
                "'height', or replace the file (is it a resized or rotated copy?)"
            )
        return image

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
            if kps:  # load_coco_json checked there are 3 per keypoint of the category
                try:
                    kp = torch.tensor(kps, dtype=torch.float32).reshape(-1, 3)
                except (TypeError, ValueError, RuntimeError) as e:
                    raise DatasetError(
                        f"{self.annotation_file}: annotation {ann['id']} (image {image_id}) "
                        f"has keypoints that are not all numbers ({e}); they are a flat "
                        "list [x1, y1, v1, x2, y2, v2, ...]"
                    ) from e
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


def _box_problem(bbox: list, image: dict) -> str | None:
    """What is wrong with a COCO box [x, y, w, h] in this image, or None."""
    x, y, w, h = bbox
    if not all(math.isfinite(v) for v in bbox):
        return f"a box with a non-finite coordinate, {bbox}"
    if w <= 0 or h <= 0:
        return f"a box of width {w} and height {h}; boxes need positive width and height"
    if x >= image["width"] or y >= image["height"] or x + w <= 0 or y + h <= 0:
        return (
            f"box {bbox} ([x, y, width, height]), which lies entirely outside its "
            f"{image['width']}x{image['height']} image"
        )
    return None


def collate_fn(batch: list) -> tuple[list, list]:
    """Batch as two lists (images, targets): detection images differ in size, so they are
    padded later by the model, not stacked here."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)
