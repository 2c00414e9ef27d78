"""What a run reads: a COCO-format folder's (train, val) pair, checked, and the
selective-search proposals of its images.

- :func:`load_datasets`: the (train, val) :class:`~rcnn_steps.data.CocoDataset` pair of a
  folder laid out as the synthetic set (``train/``, ``val/``,
  ``annotations/instances_{train,val}.json``), fed as a preset feeds it (resizing, flips);
  :func:`check_splits`, the rule of such a pair, checked before any work starts;
- :func:`selective_search_proposals`: the proposals a run on selective search
  (``method="selective_search"``: Fast R-CNN, chapter 03) reads, from chapter 02's cache
  or the set's own, made on first use.

:mod:`rcnn_steps.experiments.runner` re-exports them, as the chapters import them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["check_splits", "load_datasets", "selective_search_proposals"]


def load_datasets(
    root: str | Path | None = None,
    *,
    masks: bool = False,
    flip: bool = False,
    splits: tuple[str, str] = ("train", "val"),
    min_sizes: Sequence[int] | None = None,
    max_size: int | None = None,
):
    """The (train, val) :class:`~rcnn_steps.data.CocoDataset` pair of a folder holding
    ``<split>/`` image folders and ``annotations/instances_<split>.json`` (the synthetic
    set's layout; real COCO 2017's with ``splits=("train2017", "val2017")``). ``root``
    None is the book's synthetic set (generated first if missing).

    ``masks``: decode the masks (Mask R-CNN needs them; box-only detectors load faster
    without). ``flip``: random horizontal flips on the train set, keypoints swapped by
    their categories' flip pairs. ``min_sizes`` / ``max_size``: resize the train set's
    images (and targets) to a shorter side drawn from ``min_sizes``
    (:class:`~rcnn_steps.data.transforms.ResizeShortestSide`); the val set is left as it
    is (:func:`detect` resizes at test time and maps the detections back).

    The classes are the train split's: the val set is numbered by the train set's
    :class:`~rcnn_steps.data.LabelMap`, and refused (a :class:`~rcnn_steps.data.
    DatasetError` naming both files) when a category of its file is not the train file's
    same id, name and keypoint names; it may lack a class. A train split with no
    annotation to train on (none, or only crowds) is refused too (:func:`check_splits`)."""
    # local: start-up of ladder/ablations --help (rcnn_steps.data loads SciPy: 0.16 s)
    from rcnn_steps.data import CocoDataset, ensure_synth
    from rcnn_steps.data.transforms import (
        Compose,
        RandomHorizontalFlip,
        ResizeShortestSide,
        flip_pairs_by_label,
    )

    root = Path(root) if root is not None else ensure_synth()
    datasets = []
    for i, split in enumerate(splits):
        dataset = CocoDataset(
            root / split, root / "annotations" / f"instances_{split}.json", load_masks=masks
        )
        steps = []
        if i == 0 and min_sizes:
            steps.append(ResizeShortestSide(min_sizes, max_size))
        if flip and i == 0:
            steps.append(RandomHorizontalFlip(0.5, flip_pairs_by_label(dataset.categories)))
        if steps:
            dataset.transforms = steps[0] if len(steps) == 1 else Compose(steps)
        datasets.append(dataset)
    check_splits(*datasets)
    return tuple(datasets)


def check_splits(train_set, *others) -> None:
    """The rule of a (train, val) pair, in one place: the train split has something to
    train on, and every other split is numbered by the train split's
    :class:`~rcnn_steps.data.LabelMap` (:meth:`~rcnn_steps.data.CocoDataset.
    use_label_map`, which refuses one whose categories disagree), and every image file
    each split lists is there (a stat each: a missing val image would otherwise stop the
    run at its first evaluation, after the training it was to judge). Raises
    :class:`~rcnn_steps.data.DatasetError` naming the files, before any work starts."""
    # local: start-up of ladder/ablations --help (rcnn_steps.data loads SciPy: 0.16 s)
    from rcnn_steps.data import DatasetError

    if not any(not a.get("iscrowd", 0) for a in train_set.coco.anns.values()):
        crowds = len(train_set.coco.anns)
        held = f"only {crowds} crowd regions" if crowds else "no annotations"
        raise DatasetError(
            f"{train_set.annotation_file}: the train split has nothing to train on "
            f"({len(train_set)} images, {held}); a detector learns from annotated objects "
            "(not crowds): annotate some, or pass the right file"
        )
    for other in others:
        other.use_label_map(train_set.label_map)
    for dataset in (train_set, *others):
        missing = [
            info["file_name"]
            for info in dataset.coco.imgs.values()
            if not (dataset.images_dir / info["file_name"]).is_file()
        ]
        if missing:
            raise DatasetError(
                f"{dataset.annotation_file} lists {len(missing)} image(s) that are not in "
                f"{dataset.images_dir}, e.g. {missing[0]!r}; training would stop when it "
                "first meets one (a val image: after training): add the files, or remove "
                "their entries from the file"
            )


def selective_search_proposals(
    dataset, split: str, num_images: int, root: str | Path | None = None
) -> tuple[dict[int, torch.Tensor], float]:
    """Selective-search proposals for the first ``num_images`` images of ``dataset``:
    ``({image_id: (P, 4)}, seconds per image it took)``.

    For the book's set (``root`` None) they are chapter 02's cache
    (``results/proposals_fast_<split>.npz``, made by ``python -m rcnn_steps.rcnn
    proposals``; a stale cache is an error that names that command) when it holds the
    images asked for (its 400 train and 200 val images); beyond those (the ladder trains
    on all 1000 train images) they are the set's own cache, as for any other ``root``.
    For any other ``root`` they are made on first use and cached beside the data
    (``<root>/proposals_fast_<split>.npz``; :func:`rcnn_steps.experiments.ladder.prepare_proposals`
    makes or extends it before a grid starts).
    """
    import numpy as np

    # local: start-up of ladder/ablations --help (rcnn_steps.data loads SciPy: 0.16 s)
    from rcnn_steps.data.proposals import load_proposals, make_proposals, proposals_path

    path = proposals_path(split) if root is None else None
    if path is None or (path.exists() and not _covers(path, dataset, num_images)):
        if root is None:
            # local: as above
            from rcnn_steps.data import ensure_synth

            root = ensure_synth()
        path = Path(root) / f"proposals_fast_{split}.npz"
        stale = False
        if path.exists():
            with np.load(path) as data:
                stale = str(data["fingerprint"]) != dataset.fingerprint
        if not path.exists() or stale:
            make_proposals(dataset, num_images, path)
    proposals = load_proposals(path, dataset)
    with np.load(path) as data:
        seconds = float(np.mean(data["seconds"])) if len(data["seconds"]) else 0.0
    wanted = [int(i) for i in dataset.image_ids[:num_images]]
    missing = [i for i in wanted if i not in proposals]
    if missing:
        raise ValueError(
            f"{path} has no proposals for {len(missing)} of the first {num_images} {split} "
            f"images (e.g. {missing[:3]}); remake it with `python -m rcnn_steps.rcnn "
            f"proposals --split {split} --num-images {num_images}`"
        )
    return {i: proposals[i] for i in wanted}, seconds


def _covers(path: Path, dataset, num_images: int) -> bool:
    """Whether the proposal cache ``path`` holds the first ``num_images`` images of
    ``dataset`` (whatever data it was made from: a stale cache is refused on loading)."""
    import numpy as np

    with np.load(path) as data:
        held = {int(i) for i in data["image_ids"]}
    return all(int(i) in held for i in dataset.image_ids[:num_images])
