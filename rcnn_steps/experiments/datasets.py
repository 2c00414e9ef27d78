"""The data sets the experiments run on, by name, and what a set's resolution changes.

``--data 128`` is the book's set (``data/synth-128px-seed0``); ``256`` the same scenes drawn
at twice the resolution (``python -m rcnn_steps data synth --size 256 --layout-size 128``)
and ``512`` at four times; ``128-hard`` / ``256-hard`` the same layouts painted as
photographs show objects (``--style hard``). A run's key holds :func:`data_root`'s value
(None for the book's set, a folder name for a set in the data folder), so a cache is found
on any machine; :func:`data_tag` names a results file (``ladder_256.json``,
``ablation_mrcnn_2c_256.json``).

On a set drawn at ``k`` times the book's resolution the detectors' pixel-sized fields
(:data:`PIXEL_FIELDS`: anchors and FPN's s0) are ``k`` times the preset's
(:func:`scaled_overrides`), as the papers set theirs for their images' size. The ladder
(:mod:`rcnn_steps.experiments.ladder`) and the ablation grids
(:mod:`rcnn_steps.experiments.ablations`, ``--data``) both read them from here.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rcnn_steps.detectors.config import flat_overrides
from rcnn_steps.experiments.runner import detector_config
from rcnn_steps.utils import data_dir

__all__ = [
    "DATA_SETS",
    "PIXEL_FIELDS",
    "book_root",
    "data_root",
    "data_tag",
    "image_scale",
    "resolve_root",
    "results_name",
    "scaled_overrides",
]


#: The data sets by name (``--data`` of the ladder and of the ablation grids):
#: ``ensure_synth`` arguments. "128" is the book's set; "256" and "512" the same scenes drawn
#: at twice and four times the resolution; "-hard" the same layouts with objects painted as
#: in photographs (camouflage, shading, parts, soft edges).
DATA_SETS: dict[str, dict[str, Any]] = {
    "128": {},
    "256": {"size": 256, "layout_size": 128},
    "512": {"size": 512, "layout_size": 128},
    "128-hard": {"scene_style": "hard"},
    "256-hard": {"size": 256, "layout_size": 128, "scene_style": "hard"},
}


#: The detector fields measured in pixels of the image: anchors (Faster R-CNN section 3.1;
#: FPN section 4.1: one size per level) and FPN's s0 (eq. 1, the box size mapped to the
#: canonical level). The papers set them for their images' size (anchors 32-512 and
#: s0 = 224 for COCO at 800 px); on a set drawn at ``k`` times the resolution of the book's
#: the experiments multiply them by ``k``, so every object is read from the same level and
#: matched by the same anchors as at 128 px, and only its size in cells grows. Without
#: it, FPN would send each object one level up and its size in cells would not change.
PIXEL_FIELDS = ("anchor_sizes", "fpn_anchor_sizes", "roi_canonical_size")


def image_scale(root: str | None) -> int:
    """How many times the book's resolution a set's images are drawn at: 2 for
    ``synth-256px-from128-seed0`` (the 128 px layouts drawn at 256 px), 1 for the book's
    set, any other synthetic set drawn at its own layout size, and any other folder."""
    if root is None:
        return 1
    match = re.fullmatch(r"synth-(\d+)px-from(\d+)-seed\d+.*", Path(root).name)
    if not match:
        return 1
    size, layout = (int(g) for g in match.groups())
    if size % layout:
        raise ValueError(
            f"{root}: drawn at {size} px from {layout} px layouts, not a whole multiple"
        )
    return size // layout


def scaled_overrides(overrides: dict[str, Any], scale: int, preset: str = "cpu_mask") -> dict:
    """A detector's ``overrides`` of ``preset`` for images drawn at ``scale`` times the
    book's resolution: :data:`PIXEL_FIELDS` multiplied by ``scale`` (the same ``overrides``
    at 1, so the book's runs keep their keys)."""
    overrides = flat_overrides(overrides)  # stored names: {"fpn.anchor_sizes": ...} too
    if scale == 1:
        return overrides
    config = asdict(detector_config(preset, overrides))
    scaled = {}
    for name in PIXEL_FIELDS:
        value = config[name]
        scaled[name] = (
            tuple(scale * v for v in value) if isinstance(value, tuple) else scale * value
        )
    return {**overrides, **scaled}


def book_root() -> Path:
    """The book's set (``data/synth-128px-seed0``), made first if missing."""
    # local: start-up of ladder/ablations --help (rcnn_steps.data loads SciPy: 0.16 s)
    from rcnn_steps.data import ensure_synth

    return ensure_synth()


def data_root(data: str | None = None, root: str | Path | None = None) -> str | None:
    """What a run's :class:`~rcnn_steps.experiments.grid.RunSpec` holds as its ``root`` (part of its
    key): None for the book's 128 px set (the key every grid's runs on it have), the
    folder's name for a set under the data folder (``synth-256px-from128-seed0``:
    :func:`resolve_root` finds it wherever the data folder is), else the path as given.
    ``data`` names one of :data:`DATA_SETS` (generated first if missing); ``root`` any
    folder."""
    # local: read at call time (tests/test_ladder.py replaces it), and start-up as above
    from rcnn_steps.data import ensure_synth

    if (data is None) == (root is None):
        raise ValueError(f"give one of data ({', '.join(DATA_SETS)}) or root (a folder)")
    if data is not None:
        if data == "128":
            return None
        if data not in DATA_SETS:
            raise ValueError(
                f"data must be one of {', '.join(DATA_SETS)} (or pass root), got {data!r}"
            )
        path = ensure_synth(**DATA_SETS[data])
    else:
        path = Path(root)
    path = path.resolve()
    if path == book_root().resolve():
        return None
    base = data_dir().resolve()
    return path.name if path.parent == base else str(path)


def resolve_root(root: str | Path | None) -> str | None:
    """The folder a :func:`data_root` value names on this machine: a name is looked up in
    the data folder first, then from the working directory (a relative path given by
    hand)."""
    if root is None or Path(root).is_absolute():
        return None if root is None else str(root)
    path = data_dir() / root
    if path.exists():
        return str(path)
    if Path(root).exists():
        return str(root)
    raise FileNotFoundError(f"no data set {str(root)!r} in the data folder {data_dir()}")


def results_name(stem: str, root: str | None) -> str:
    """The results file of an experiment on ``root`` (a :func:`data_root` value):
    ``<stem>.json`` on the book's set, ``<stem>_<tag>.json`` (:func:`data_tag`) on another,
    e.g. ``ablation_mrcnn_2c_256.json``."""
    return f"{stem}.json" if root is None else f"{stem}_{data_tag(root)}.json"


def data_tag(root: str | None) -> str:
    """The name of a ladder's results file, ``results/ladder_<tag>.json``: ``128`` for the
    book's set; ``<size>`` for a synthetic set ``synth-<size>px[-from<L>]-seed0`` and
    ``<size>-<variant>`` for a variant (``synth-256px-from128-seed0-hard``: ``256-hard``);
    another seed adds ``-seed<S>``; any other folder its name."""
    if root is None:
        return "128"
    name = Path(root).name
    match = re.fullmatch(r"synth-(\d+)px(?:-from\d+)?-seed(\d+)(.*)", name)
    if not match:
        return name
    size, seed, rest = match.groups()
    return size + ("" if seed == "0" else f"-seed{seed}") + rest
