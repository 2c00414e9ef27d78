"""What a run records about itself and how a trained run is read back: ``run.json``
(:data:`RUN_FILE`), its ``"data"`` (:func:`data_record`, :func:`data_description`), and
:func:`load_run`, a checkpoint's model with its description (``predict``, ``export`` and
chapter 08 read runs through it)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rcnn_steps.detectors.config import DetectorConfig
from rcnn_steps.engine import RunFolder, load_checkpoint
from rcnn_steps.utils import CommandError

RUN_FILE = "run.json"  #: what a run folder says about itself (= engine.RunFolder.DESCRIPTION)


def load_run(checkpoint: str | Path, device: str = "cpu"):
    """A trained model from a run's checkpoint (verified: :func:`rcnn_steps.engine.
    load_checkpoint`) and what the run says about itself (class names, keypoint names,
    skeleton, the feeding): ``(model in eval mode, run description)``. The description is
    the one stored in the file by ``export`` when there is one, else its folder's
    ``run.json``, else ``{}``."""
    # local: the command line's start-up
    from rcnn_steps.detectors.faster_rcnn import FasterRCNN

    path = Path(checkpoint)
    ckpt = load_checkpoint(path, map_location=device)
    config = (ckpt.get("model_description") or {}).get("config")
    if not config:
        raise CommandError(
            f"{path} does not say which model it holds (no model config): it was not "
            "written by `python -m rcnn_steps train`"
        )
    fields = {f for f in DetectorConfig.__dataclass_fields__}
    model = FasterRCNN(DetectorConfig(**{k: v for k, v in config.items() if k in fields}))
    model.load_state_dict(ckpt["model"])
    run = ckpt.get("run") or RunFolder(path.parent).description() or {}
    return model.to(device).eval(), run


def data_record(root: str | Path, splits: Sequence[str], train_set) -> dict:
    """``run.json``'s ``"data"``: the folder, the splits, and the train split's classes:
    ``categories`` (each category's id, name and keypoint set: :class:`rcnn_steps.data.
    LabelMap`), which ``predict`` reads, and the older ``class_names`` (by label),
    ``keypoint_names`` and 0-based ``skeleton`` (the first keypoint category's), kept for
    readers written before ``categories``."""
    return {
        "root": str(Path(root).resolve()),
        "splits": list(splits),
        "class_names": train_set.class_names,
        "keypoint_names": train_set.keypoint_names,
        "skeleton": [list(p) for p in train_set.skeleton],
        "categories": train_set.label_map.categories,
    }


def data_description(root: str | Path, split: str = "train") -> dict:
    """What a run records of its data (``run.json``'s ``"data"``, :func:`data_record`):
    the root and the classes (ids, names, keypoint sets) of ``root/annotations/
    instances_<split>.json``. A missing file is an error that says what was looked for."""
    # local: the command line's start-up
    from rcnn_steps.data import CocoDataset

    root = Path(root)
    annotations = root / "annotations" / f"instances_{split}.json"
    if not annotations.is_file():
        raise CommandError(
            f"--data {root}: no {annotations.relative_to(root)} there; pass the folder that "
            "holds annotations/ (the set the model was trained on)"
        )
    return data_record(root, [split], CocoDataset(root / split, annotations, load_masks=False))
