"""A seeded generator of synthetic detection data, written in COCO format (chapter 00).

Each image is a cluttered, textured background with 1 to ``max_objects`` instances of
six categories, drawn front to back so that later objects occlude earlier ones. The set is
designed for the chapters that come later:

- **aspect ratios** (chapter 04's anchors): ``square`` (1:1), ``bar`` (wide, about 3:1),
  ``pole`` (tall, about 1:3), ``disc`` and ``triangle``;
- **scale** (chapter 05's FPN): object sizes are drawn from a mixture of COCO's small,
  medium and large ranges, scaled to the image size (:func:`size_ranges`);
- **occlusion** (chapter 07's masks): an object may hide up to half of any earlier one, and
  boxes, masks and areas describe what is visible;
- **clutter** (chapters 01-02): gradients, low-frequency noise, stripe textures and
  distractors (rings, lines, crosses) that look like objects but are not annotated;
- **keypoints** (chapter 07): ``person``, an articulated stick figure with 11 named
  keypoints, COCO visibility flags (0 outside the image, 1 hidden behind another object,
  2 visible), a skeleton, left/right flip pairs and OKS sigmas. A figure faces the viewer
  (a light face: its left limbs are on the image's right) or turns its back (a dark head:
  its left limbs are on the image's left). The cue is mirror-symmetric on purpose: a
  horizontal flip that swaps the left/right keypoint names (as COCO training does) turns a
  correctly labelled figure into another correctly labelled one, as it would for a photo
  of a person;
- **crowds**: now and then a cluster of tiny discs is annotated as one ``iscrowd=1``
  region (uncompressed RLE, as in COCO), which evaluation ignores;
- **resolution** (chapter 05): ``layout_size`` draws the scenes of the ``layout_size`` px
  set at ``size`` px (e.g. the 128 px set at 256 px): the same objects in the same places,
  each covering more pixels (:class:`SynthConfig`);
- **harder scenes**: ``scene_style="hard"`` paints the same scenes (the same boxes, classes,
  masks and keypoints) as photographs look: objects take their colours and textures from
  the background's own palette (camouflage), are shaded by one light across the scene, are
  made of differently coloured parts (a person's legs, body and head) and have soft,
  anti-aliased edges. Grouping pixels by colour, as selective search does, then no longer
  finds every object exactly (:func:`_paint_hard`).

Every image is drawn from its own random generator, seeded by ``(seed, split, index)``, so
the same arguments give byte-identical files whatever the number of worker processes.

The generator is five modules: :mod:`rcnn_steps.data.synth_config` (the categories, the
keypoints and :class:`SynthConfig`), :mod:`rcnn_steps.data.synth_drawing` (masks,
backgrounds and flat paint), :mod:`rcnn_steps.data.synth_hard` (the hard style),
:mod:`rcnn_steps.data.synth_scene` (one image: :func:`render_image`) and this one, which
writes whole sets (:func:`generate`, :func:`ensure_synth`) and re-exports the others' names.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from rcnn_steps.data.synth_config import (  # noqa: F401 (re-exported: the set's vocabulary)
    CATEGORIES,
    DISC_CATEGORY_ID,
    FLIP_PAIRS,
    KEYPOINT_NAMES,
    OKS_SIGMAS,
    PERSON_CATEGORY_ID,
    SCENE_STYLES,
    SHAPE_NAMES,
    SKELETON,
    SynthConfig,
    category_names,
    size_ranges,
)
from rcnn_steps.data.synth_drawing import (  # noqa: F401 (re-exported for tests/test_data.py)
    _draw_person,
    _person_joints,
)
from rcnn_steps.data.synth_hard import (  # noqa: F401 (re-exported: the hard style)
    HARD_CAMOUFLAGE,
    HARD_CAMOUFLAGE_OFFSET,
    HARD_EDGE_EXTENT,
    HARD_EDGE_SIGMA,
    HARD_MIN_AREA,
    HARD_PARTS,
    HARD_SHADING,
    _object_parts,
    _paint_hard,
    _Stroke,
)
from rcnn_steps.data.synth_scene import render_image
from rcnn_steps.utils import atomic_write_bytes, data_dir

#: Format version of the generator; stored in the annotation files so that
#: :func:`ensure_synth` regenerates a set made by an older generator.
GENERATOR_VERSION = 2

#: The ``info.description`` of the annotation files the generator writes.
DESCRIPTION = "rcnn-steps synthetic shapes"
#: The list of files :func:`ensure_synth` wrote into a folder (paths relative to it):
#: the only files it ever replaces or deletes there.
MANIFEST_NAME = ".rcnn_steps_synth_files.json"


def _config_record(cfg: SynthConfig) -> dict:
    """The config as the annotation files record it: ``layout_size`` only when the scene is
    drawn larger than its layout and ``scene_style`` only when it is not ``flat``, so sets
    made before these fields existed still match it."""
    record = asdict(cfg)
    if not cfg.drawn_larger:
        del record["layout_size"]
    if cfg.scene_style == "flat":
        del record["scene_style"]
    return record


def synth_folder_name(
    size: int = 128, seed: int = 0, layout_size: int | None = None, scene_style: str = "flat"
) -> str:
    """The folder :func:`ensure_synth` keeps a set in, under the data folder:
    ``synth-<size>px[-from<layout_size>]-seed<seed>[-<style>]`` (``synth-128px-seed0``,
    ``synth-256px-from128-seed0``, ``synth-128px-seed0-hard``): the form
    :func:`rcnn_steps.experiments.ladder.data_tag` reads."""
    drawn_from = f"-from{layout_size}" if layout_size not in (None, size) else ""
    style = "" if scene_style == "flat" else f"-{scene_style}"
    return f"synth-{size}px{drawn_from}-seed{seed}{style}"


# ---------------------------------------------------------------------------------------
# a whole split, and the command-line entry point

_SPLIT_OFFSETS = {"train": 0, "val": 10_000_000}


def render_scene(cfg: SynthConfig, split: str, index: int) -> tuple[np.ndarray, list[dict]]:
    """Image ``index`` (from 0) of ``split`` of the set ``cfg`` describes, drawn alone:
    ``(H x W x 3 uint8 image, its annotations)``, the pixels :func:`generate` writes for
    it. The same ``split`` and ``index`` under configs that differ only in ``size`` (with
    ``layout_size``) or ``scene_style`` give the same scene drawn another way."""
    if split not in _SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}; one of {list(_SPLIT_OFFSETS)}")
    rng = np.random.default_rng([cfg.seed, list(_SPLIT_OFFSETS).index(split), index])
    return render_image(rng, cfg)


def _render_one(args: tuple[SynthConfig, str, int, str]) -> list[dict]:
    cfg, split, index, images_dir = args
    image, anns = render_scene(cfg, split, index)
    image_id = _SPLIT_OFFSETS[split] + index + 1
    Image.fromarray(image).save(os.path.join(images_dir, f"{image_id:08d}.png"), optimize=False)
    return anns


def generate_split(cfg: SynthConfig, out: Path, split: str, num: int, workers: int = 1) -> dict:
    """Render ``num`` images into ``out/split/`` and return the COCO dict for them."""
    images_dir = out / split
    images_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(cfg, split, i, str(images_dir)) for i in range(num)]
    if workers > 1 and num > 1:
        with ProcessPoolExecutor(workers) as pool:
            per_image = list(pool.map(_render_one, jobs, chunksize=16))
    else:
        per_image = [_render_one(j) for j in jobs]
    images, annotations = [], []
    for i, anns in enumerate(per_image):
        image_id = _SPLIT_OFFSETS[split] + i + 1
        images.append(
            {
                "id": image_id,
                "file_name": f"{image_id:08d}.png",
                "width": cfg.size,
                "height": cfg.size,
            }
        )
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    return {
        "info": {
            "description": DESCRIPTION,
            "generator_version": GENERATOR_VERSION,
            "config": _config_record(cfg),
            "split": split,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }


def generate(
    out: str | os.PathLike,
    num_train: int = 1000,
    num_val: int = 200,
    size: int = 128,
    seed: int = 0,
    workers: int | None = None,
    layout_size: int | None = None,
    scene_style: str = "flat",
    **overrides,
) -> Path:
    """Write the synthetic set: ``out/{train,val}/*.png`` and
    ``out/annotations/instances_{train,val}.json``. Same arguments, byte-identical files.

    ``layout_size`` draws the scenes of the ``layout_size`` px set at ``size`` px and
    ``scene_style="hard"`` paints them as photographs (see :class:`SynthConfig`);
    ``overrides`` set other fields (e.g. ``max_objects``).
    """
    if size < 32:
        raise ValueError(f"--size must be at least 32 pixels, got {size}")
    if num_train < 0 or num_val < 0:
        raise ValueError("--num-train and --num-val must not be negative")
    cfg = SynthConfig(
        num_train=num_train,
        num_val=num_val,
        size=size,
        seed=seed,
        layout_size=layout_size,
        scene_style=scene_style,
        **overrides,
    )
    out = Path(out)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    for split, num in (("train", num_train), ("val", num_val)):
        coco = generate_split(cfg, out, split, num, workers)
        path = out / "annotations" / f"instances_{split}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(coco, separators=(",", ":")) + "\n")
        os.replace(tmp, path)  # the annotation file appears only once it is whole
    return out


def ensure_synth(
    out: str | os.PathLike | None = None,
    num_train: int = 1000,
    num_val: int = 200,
    size: int = 128,
    seed: int = 0,
    layout_size: int | None = None,
    scene_style: str = "flat",
    **overrides,
) -> Path:
    """Return the folder of the synthetic set with these arguments, generating it first if
    it is missing or was made with other arguments. Chapters call this, so they run on a
    fresh checkout without a separate data step.

    The default folder is ``<data dir>/synth-{size}px-seed{seed}``,
    ``<data dir>/synth-{size}px-from{layout_size}-seed{seed}`` for the scenes of the
    ``layout_size`` px set drawn at ``size`` px, and either with ``-hard`` appended for
    ``scene_style="hard"`` (:class:`SynthConfig`, :func:`synth_folder_name`).

    The set is generated beside the folder first, so an interrupted run or a reader in
    another process never sees half a set. When it replaces an older set it replaces
    only the generator's own files (those it recorded in ``MANIFEST_NAME``, or those the
    old annotation files list): anything else in the folder stays where it is, and a
    file of someone else's where the generator wants to write raises
    ``FileExistsError`` before anything is changed.
    """
    cfg = SynthConfig(
        num_train=num_train,
        num_val=num_val,
        size=size,
        seed=seed,
        layout_size=layout_size,
        scene_style=scene_style,
        **overrides,
    )
    if out is None:
        out = data_dir() / synth_folder_name(size, seed, layout_size, scene_style)
    out = Path(out)
    want = _config_record(cfg)
    # compare through JSON, where tuples and lists look alike
    want = json.loads(json.dumps(want))
    if _is_current(out, want):
        return out

    staging = out.with_name(f"{out.name}.tmp-{os.getpid()}")  # ours, by its name
    shutil.rmtree(staging, ignore_errors=True)
    generate(
        staging,
        num_train=num_train,
        num_val=num_val,
        size=size,
        seed=seed,
        layout_size=layout_size,
        scene_style=scene_style,
        **overrides,
    )
    new_files = {p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()}
    _write_manifest(staging, new_files)
    if not out.exists():
        try:
            os.replace(staging, out)  # the whole set appears at once
            return out
        except OSError:
            if not out.exists():
                raise
    if _is_current(out, want):  # another process made it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
        return out
    _swap_in(staging, out, new_files)
    return out


def _is_current(out: Path, want: dict) -> bool:
    """Does ``out`` hold a whole set made by this generator version with config ``want``?"""
    for split in ("train", "val"):
        path = out / "annotations" / f"instances_{split}.json"
        try:
            info = json.loads(path.read_text())["info"]
            if info.get("generator_version") != GENERATOR_VERSION or info["config"] != want:
                return False
        except (OSError, ValueError, KeyError, TypeError):
            return False
    return True


def _write_manifest(folder: Path, files: set[str]) -> None:
    atomic_write_bytes(folder / MANIFEST_NAME, json.dumps(sorted(files), indent=0).encode())


def _files_written_here(out: Path) -> set[str]:
    """The files in ``out`` that the generator wrote: those its manifest lists, and (for a
    set made before manifests, or with ``generate``) our annotation files and the images
    they list."""
    files: set[str] = set()
    try:
        listed = json.loads((out / MANIFEST_NAME).read_text())
        # relative paths inside `out` only, whatever the file says
        files |= {str(f) for f in listed if not Path(str(f)).is_absolute() and ".." not in str(f)}
    except (OSError, ValueError, TypeError):
        pass
    for split in _SPLIT_OFFSETS:
        name = f"annotations/instances_{split}.json"
        try:
            data = json.loads((out / name).read_text())
            if data["info"]["description"] != DESCRIPTION:
                continue
            files.add(name)
            files |= {f"{split}/{img['file_name']}" for img in data["images"]}
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return files


def _swap_in(staging: Path, out: Path, new_files: set[str]) -> None:
    """Move the set in ``staging`` into the existing folder ``out``, replacing and deleting
    only files the generator wrote there."""
    old_files = _files_written_here(out)
    foreign = sorted(f for f in new_files if (out / f).exists() and f not in old_files)
    if foreign:
        shutil.rmtree(staging, ignore_errors=True)
        raise FileExistsError(
            f"ensure_synth: {out} holds {len(foreign)} file(s) the generator did not write "
            f"where it wants to write the synthetic set (e.g. {foreign[0]}); it never "
            "overwrites or deletes such files: move them away, or pass another folder "
            "(out=...). Nothing was changed."
        )
    annotations = {f for f in new_files if f.startswith("annotations/")}
    # 1. record every file of ours that may be in `out` during the swap, so that a run
    #    interrupted half-way still knows which files it may replace next time
    _write_manifest(out, old_files | new_files)
    # 2. no annotation files while the images change: nobody can read a mixed set
    for name in sorted(old_files & annotations):
        (out / name).unlink(missing_ok=True)
    # 3. the new images in, the old set's other files out
    for name in sorted(new_files - annotations):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, out / name)
    for name in sorted(old_files - new_files):
        (out / name).unlink(missing_ok=True)
    # 4. the annotation files last: the set is whole once they are there
    for name in sorted(annotations):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, out / name)
    _write_manifest(out, new_files)
    shutil.rmtree(staging, ignore_errors=True)
