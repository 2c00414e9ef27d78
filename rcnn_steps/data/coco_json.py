"""Reading and checking a COCO annotation file (chapter 00).

:func:`load_coco_json` reads the file and checks all of it once, up front: the ids, the
references between images, annotations and categories, the boxes' form, segmentations,
keypoints and each category's keypoint set. A broken file then fails when the dataset is
made, with a :class:`DatasetError` that names the file and the entry and says what to do,
rather than in the middle of training. The boxes' values and the image files are
:class:`~rcnn_steps.data.coco.CocoDataset`'s to judge; :mod:`rcnn_steps.data.coco`
re-exports these names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

_HOW_TO_GET_DATA = (
    "make the synthetic set with `python -m rcnn_steps.data synth --out DIR` "
    "(or `make data`), or see data/README.md for where real COCO 2017 goes"
)


class DatasetError(ValueError):
    """A dataset file is missing or malformed. The message names the file (and the
    annotation or image id) and says what to do."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_hint(value: Any, what: str) -> str:
    """' (a str: ids are integers)' for a wrong-typed id, else ''."""
    return "" if _is_int(value) else f" (a {type(value).__name__}: {what} are integers)"


def load_coco_json(annotation_file: str | os.PathLike) -> dict[str, Any]:
    """Read and check a COCO annotation file. Raises :class:`DatasetError`, naming the file
    and the entry, for a missing file, invalid JSON, missing keys, no images, ids that are
    not integers or appear twice (an image id twice pairs annotations with the wrong file;
    an annotation id twice makes pycocotools keep one of them; a category id twice adds a
    class that is never used), an annotation id below 1 (pycocotools' evaluation counts a
    match to id 0 as no match), an annotation whose image or category does not exist, a
    ``bbox`` that is not four numbers, a polygon with an odd number of coordinates, an RLE
    whose ``size`` differs from its image's, keypoints whose count differs from their
    category's keypoint list, an empty ``categories`` list, and a category's ``skeleton``
    (1-based) or ``flip_pairs`` (0-based) naming a keypoint it does not have, or
    ``oks_sigmas`` that are not one positive number per keypoint, a category name that is
    empty, not a string or another category's (two classes no detection could tell
    apart), and a keypoint that is not two numbers and a visibility 0, 1 or 2.

    The boxes' values (non-finite, empty, outside the image) are :class:`CocoDataset`'s
    to judge (see its ``on_invalid_box``), and so are the image files."""
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
        if not isinstance(data[key], list) or not all(isinstance(x, dict) for x in data[key]):
            raise DatasetError(f"{path}: '{key}' must be a list of JSON objects")
    if not data["images"]:
        raise DatasetError(
            f"annotation file {path} has no images (its 'images' list is empty): is it the "
            f"right file? A data set needs at least one image; {_HOW_TO_GET_DATA}"
        )

    images: dict[int, dict] = {}
    for img in data["images"]:
        for key in ("id", "file_name", "width", "height"):
            if key not in img:
                raise DatasetError(
                    f"{path}: image entry {img.get('id', img)!r} has no '{key}'; every image "
                    "needs 'id', 'file_name', 'width' and 'height' (the loader checks the "
                    "file's size and the boxes against them, and decodes masks at that size)"
                )
        image_id = img["id"]
        if not _is_int(image_id):
            raise DatasetError(
                f"{path}: image {img['file_name']!r} has id {image_id!r}"
                f"{_type_hint(image_id, 'image ids')}; give every image an integer id"
            )
        for key in ("width", "height"):
            if not _is_int(img[key]) or img[key] < 1:
                raise DatasetError(
                    f"{path}: image {image_id} ({img['file_name']}) has {key} {img[key]!r}; "
                    "it must be the image's size in pixels, a positive integer"
                )
        if image_id in images:
            raise DatasetError(
                f"{path}: image id {image_id} is used twice, by {images[image_id]['file_name']!r} "
                f"and {img['file_name']!r}; annotations would be paired with the wrong file: "
                "give every image its own id"
            )
        images[image_id] = img

    if not data["categories"]:
        raise DatasetError(
            f"annotation file {path} has no categories (its 'categories' list is empty); "
            'a detector needs at least one class: list them as {"id": 1, "name": "..."}'
        )
    categories: dict[int, dict] = {}
    names: dict[str, int] = {}  # each name's category id
    for cat in data["categories"]:
        if "id" not in cat or "name" not in cat:
            raise DatasetError(f"{path}: category {cat!r} needs an 'id' and a 'name'")
        if not _is_int(cat["id"]):
            raise DatasetError(
                f"{path}: category {cat['name']!r} has id {cat['id']!r}"
                f"{_type_hint(cat['id'], 'category ids')}"
            )
        if not isinstance(cat["name"], str) or not cat["name"].strip():
            raise DatasetError(
                f"{path}: category {cat['id']!r} has name {cat['name']!r}; a category's name "
                "is a non-empty string (predict labels its detections with it)"
            )
        if cat["name"] in names:
            raise DatasetError(
                f"{path}: categories {names[cat['name']]} and {cat['id']} are both named "
                f"{cat['name']!r}; the model would learn them as two classes that its "
                "detections cannot tell apart: merge them (one id) or name them apart"
            )
        names[cat["name"]] = cat["id"]
        if cat["id"] in categories:
            raise DatasetError(
                f"{path}: category id {cat['id']} is used twice, by "
                f"{categories[cat['id']]['name']!r} and {cat['name']!r}; one of them would "
                "become an extra class that is never trained: give every category its own id"
            )
        categories[cat["id"]] = cat
        _check_keypoint_set(path, cat)

    annotation_ids: set[int] = set()
    for ann in data["annotations"]:
        ann_id = ann.get("id", "<no id>")
        for key in ("id", "image_id", "category_id", "bbox"):
            if key not in ann:
                raise DatasetError(
                    f"{path}: annotation {ann_id} has no '{key}'; every annotation needs "
                    "'id', 'image_id', 'category_id' and 'bbox' (x, y, width, height)"
                )
        if not _is_int(ann_id) or ann_id < 1:
            raise DatasetError(
                f"{path}: annotation id {ann_id!r}{_type_hint(ann_id, 'annotation ids')} is "
                "not a positive integer; pycocotools' evaluation counts a match to an id "
                "below 1 as no match at all, which scores a perfect detector below 1: "
                "number the annotations from 1"
            )
        if ann_id in annotation_ids:
            raise DatasetError(
                f"{path}: annotation id {ann_id} is used twice; pycocotools keeps only one "
                "of them (so even a perfect detector would score below 1): give every "
                "annotation its own id"
            )
        annotation_ids.add(ann_id)
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
            raise DatasetError(
                f"{path}: annotation {ann_id} has bbox {bbox!r}; it must be [x, y, width, "
                "height], four numbers (not strings)"
            )
        if not _is_number(ann.get("area", 0)) or ann.get("iscrowd", 0) not in (0, 1):
            raise DatasetError(
                f"{path}: annotation {ann_id} has area {ann.get('area')!r} and iscrowd "
                f"{ann.get('iscrowd')!r}; the area is a number (pixels) and iscrowd 0 or 1"
            )
        if ann["image_id"] not in images:
            raise DatasetError(
                f"{path}: annotation {ann_id} refers to image_id {ann['image_id']!r}"
                f"{_type_hint(ann['image_id'], 'image ids')}, which is not in 'images'; "
                "remove the annotation or add the image"
            )
        if ann["category_id"] not in categories:
            raise DatasetError(
                f"{path}: annotation {ann_id} has unknown category_id {ann['category_id']!r}"
                f"{_type_hint(ann['category_id'], 'category ids')} (known: "
                f"{sorted(categories)}); fix the id or add the category"
            )
        _check_segmentation(path, ann, images[ann["image_id"]])
        _check_keypoints(path, ann, categories[ann["category_id"]])
    return data


def _check_segmentation(path: Path, ann: dict, image: dict) -> None:
    """Polygons need an even number of coordinates; an RLE, its image's size."""
    segm = ann.get("segmentation")
    where = f"{path}: annotation {ann['id']} (image {ann['image_id']})"
    if isinstance(segm, list):
        for k, polygon in enumerate(segm):
            if not isinstance(polygon, list) or len(polygon) % 2:
                n = len(polygon) if isinstance(polygon, list) else type(polygon).__name__
                raise DatasetError(
                    f"{where}: polygon {k} of its segmentation has {n} coordinates; a polygon "
                    "is a flat list [x1, y1, x2, y2, ...] of an even number of coordinates "
                    "(pycocotools would decode this one as an empty mask): fix or remove it"
                )
    elif isinstance(segm, dict):
        size = segm.get("size")
        expected = [image["height"], image["width"]]
        if isinstance(size, list) and len(size) == 2 and list(size) != expected:
            raise DatasetError(
                f"{where}: its RLE segmentation has size {size} (height, width) but the image "
                f"entry says {expected}; the mask was made for another image size: "
                "encode it again at the image's size, or fix the image's width and height"
            )


def _check_keypoint_set(path: Path, category: dict) -> None:
    """A category's keypoint set is a list of names, and its ``skeleton`` (1-based, as COCO
    writes it) and ``flip_pairs`` (0-based) are pairs of indices into it, and its
    ``oks_sigmas`` one positive number per keypoint: an index past the list would
    otherwise surface as an IndexError deep inside training or a limb drawn between the
    wrong points, and sigmas of another length are silently replaced in keypoint AP."""
    names = category.get("keypoints") or []
    where = f"{path}: category {category['id']} ({category['name']!r})"
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DatasetError(f"{where} has keypoints {names!r}; they are a list of names")
    k = len(names)
    for key, first, convention in (("skeleton", 1, "1-based, as COCO writes them"),
                                   ("flip_pairs", 0, "0-based (left, right) pairs")):  # fmt: skip
        pairs = category.get(key) or []
        last = first + k - 1
        for pair in pairs if isinstance(pairs, list) else [pairs]:
            if not (isinstance(pair, list) and len(pair) == 2 and all(map(_is_int, pair))):
                raise DatasetError(
                    f"{where}: its {key} holds {pair!r}; each entry is a pair of keypoint "
                    f"indices ({convention})"
                )
            if not all(first <= i <= last for i in pair):
                accepted = f"{first}..{last}" if k else "none: it lists no keypoint names"
                raise DatasetError(
                    f"{where}: its {key} pair {pair} names a keypoint it does not have; it has "
                    f"{k} keypoints, so indices ({convention}) are {accepted}: fix the pair "
                    "or the category's 'keypoints' list"
                )
    sigmas = category.get("oks_sigmas")
    one_each = isinstance(sigmas, list) and len(sigmas) == k
    if sigmas is not None and not (one_each and all(_is_number(v) and v > 0 for v in sigmas)):
        raise DatasetError(
            f"{where} has oks_sigmas {sigmas!r}; keypoint AP needs one positive number per "
            f"keypoint ({k} here): fix the list, or remove it for the default 0.05 each"
        )


def _check_keypoints(path: Path, ann: dict, category: dict) -> None:
    """A keypoints list has (x, y, v) for each name in the category's ``keypoints``."""
    points = ann.get("keypoints")
    if not points:
        return
    names = category.get("keypoints") or []
    where = f"{path}: annotation {ann['id']} (image {ann['image_id']})"
    if not names:
        raise DatasetError(
            f"{where} has keypoints but its category {category['name']!r} lists no keypoint "
            "names; add the category's 'keypoints' list, or remove the annotation's keypoints"
        )
    if not isinstance(points, list) or len(points) != 3 * len(names):
        n = len(points) if isinstance(points, list) else type(points).__name__
        raise DatasetError(
            f"{where} has {n} keypoint values; its category {category['name']!r} has "
            f"{len(names)} keypoints, so it needs {3 * len(names)} (x, y, visibility for "
            "each, 0 0 0 for a keypoint that is not labelled)"
        )
    for k, (x, y, v) in enumerate(zip(points[::3], points[1::3], points[2::3], strict=True)):
        if not (_is_number(x) and _is_number(y) and v in (0, 1, 2)):
            raise DatasetError(
                f"{where}: keypoint {k} ({names[k]!r}) is {[x, y, v]!r}; each keypoint is x, y "
                "(numbers) and a visibility v: 0 not labelled, 1 labelled but hidden, 2 visible"
            )
