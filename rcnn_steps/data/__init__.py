"""Data for the book (chapter 00): the synthetic COCO-format set and a COCO reader.

- :func:`generate` / :func:`ensure_synth` write the seeded synthetic set
  (``python -m rcnn_steps.data synth --out DIR``) in :mod:`rcnn_steps.data.synth`, from
  its parts: :mod:`~rcnn_steps.data.synth_config` (the categories and
  :class:`SynthConfig`), :mod:`~rcnn_steps.data.synth_drawing` (masks, backgrounds, flat
  paint), :mod:`~rcnn_steps.data.synth_hard` (the hard style) and
  :mod:`~rcnn_steps.data.synth_scene` (one image laid out and annotated);
- :class:`CocoDataset` reads it, and real COCO 2017, into tensors, numbering the classes
  by a :class:`LabelMap` (category id <-> label, names, keypoint sets), in
  :mod:`rcnn_steps.data.coco`, once :mod:`rcnn_steps.data.coco_json` has checked the
  annotation file (:func:`load_coco_json`, :class:`DatasetError`);
- :mod:`rcnn_steps.data.transforms` holds flips that keep keypoints' left and right;
- :mod:`rcnn_steps.data.proposals` is the selective-search proposal cache of chapters 02
  to 04 (:func:`make_proposals`, :func:`load_proposals`, :func:`proposals_path`).
"""

from rcnn_steps.data.coco import (
    CocoDataset,
    DatasetError,
    LabelMap,
    collate_fn,
    load_coco_json,
)
from rcnn_steps.data.proposals import load_proposals, make_proposals, proposals_path
from rcnn_steps.data.stats import dataset_statistics, size_class_of
from rcnn_steps.data.synth import (
    CATEGORIES,
    FLIP_PAIRS,
    KEYPOINT_NAMES,
    OKS_SIGMAS,
    SCENE_STYLES,
    SKELETON,
    SynthConfig,
    ensure_synth,
    generate,
    render_scene,
    size_ranges,
    synth_folder_name,
)
from rcnn_steps.data.transforms import (
    Compose,
    RandomHorizontalFlip,
    ResizeShortestSide,
    flip_pairs_by_label,
    horizontal_flip,
    select_instances,
)

__all__ = [
    "CATEGORIES",
    "FLIP_PAIRS",
    "KEYPOINT_NAMES",
    "OKS_SIGMAS",
    "SCENE_STYLES",
    "SKELETON",
    "CocoDataset",
    "Compose",
    "DatasetError",
    "LabelMap",
    "RandomHorizontalFlip",
    "ResizeShortestSide",
    "SynthConfig",
    "collate_fn",
    "dataset_statistics",
    "ensure_synth",
    "flip_pairs_by_label",
    "generate",
    "horizontal_flip",
    "load_coco_json",
    "load_proposals",
    "render_scene",
    "make_proposals",
    "proposals_path",
    "select_instances",
    "size_class_of",
    "size_ranges",
    "synth_datasets",
    "synth_folder_name",
]


def synth_datasets(root=None, transforms=None, **synth_args):
    """The (train, val) :class:`CocoDataset` pair of the synthetic set, generated first if
    needed (see :func:`ensure_synth` for ``synth_args``)."""
    root = ensure_synth(root, **synth_args)
    train = CocoDataset(root / "train", root / "annotations" / "instances_train.json", transforms)
    val = CocoDataset(root / "val", root / "annotations" / "instances_val.json")
    return train, val
