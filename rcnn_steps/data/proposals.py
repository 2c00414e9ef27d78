"""The selective-search proposal cache (chapters 02 to 04): computed once, saved, loaded.

R-CNN and Fast R-CNN take their proposals from selective search, which is slow (about a
second an image here), so, as the papers do, the proposals of a split are computed once
(:func:`make_proposals`, ``python -m rcnn_steps.rcnn proposals --split train``) into a
``.npz`` file (:func:`proposals_path`) and read back by every run (:func:`load_proposals`).

A cache holds, for each image in order, its ranked boxes ``(K, 4)`` (``x1, y1, x2, y2``
in pixels with exclusive ends, as uint16), the seconds selective search took on it, the
mode and seed, and the fingerprint of the data set it was made from, so that a cache of
other data is refused instead of silently used.

Selective search (:mod:`rcnn_steps.detectors.selective_search`) is a classical, non-learned
algorithm on images, ``ops``-like: its algorithm imports only :mod:`rcnn_steps.ops`, so it
sits below the data it proposes boxes for, and the cache may import it. (Its ``evaluate``
command still reads the synthetic set through :mod:`rcnn_steps.data`, inside the function:
the one edge to cut when selective search is given its floor.)
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rcnn_steps.utils import atomic_write_bytes, results_dir

__all__ = ["load_proposals", "make_proposals", "proposals_path"]


def proposals_path(split: str, mode: str = "fast") -> Path:
    """Where the proposals cache of a split lives: ``results/proposals_{mode}_{split}.npz``."""
    return results_dir() / f"proposals_{mode}_{split}.npz"


def make_proposals(
    dataset,
    num_images: int,
    out: str | Path,
    mode: str = "fast",
    max_proposals: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Run selective search on the first ``num_images`` images of ``dataset`` and save the
    ranked boxes (uint16, exclusive ends) with the seconds each image took to ``out``."""
    # local: selective search pulls in scikit-image and SciPy (0.3 s), which reading a
    # cache does not need
    from rcnn_steps.detectors.selective_search import selective_search

    ids, boxes, counts, seconds = [], [], [], []
    for idx in range(min(num_images, len(dataset))):
        image_id = dataset.image_ids[idx]
        image = dataset.load_image(image_id)
        t0 = time.perf_counter()
        props = selective_search(image, mode, seed=seed, max_proposals=max_proposals)
        seconds.append(time.perf_counter() - t0)
        ids.append(image_id)
        boxes.append(props.numpy().astype(np.uint16))
        counts.append(len(props))
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        image_ids=np.asarray(ids, dtype=np.int64),
        counts=np.asarray(counts, dtype=np.int64),
        boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4), np.uint16),
        seconds=np.asarray(seconds),
        mode=np.asarray(mode),
        seed=np.asarray(seed),
        fingerprint=np.asarray(dataset.fingerprint),
    )
    atomic_write_bytes(out, buffer.getvalue())
    return {"num_images": len(ids), "mean_proposals": float(np.mean(counts) if counts else 0)}


def load_proposals(path: str | Path, dataset=None) -> dict[int, torch.Tensor]:
    """The cached proposals: ``{image_id: (K, 4) float32 ranked boxes}``. A clear error
    names the command that makes the file when it is missing, or, given the ``dataset``
    the cache is meant for, when it was made from other data (a stale cache)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"proposals cache {path} does not exist; make it with `python -m rcnn_steps.rcnn "
            "proposals --split train` (and --split val)"
        )
    with np.load(path) as data:
        ids, counts, boxes = data["image_ids"], data["counts"], data["boxes"]
        made_from = str(data["fingerprint"]) if "fingerprint" in data else "unknown"
    if dataset is not None and made_from != dataset.fingerprint:
        raise ValueError(
            f"proposals cache {path} was made from other data (fingerprint {made_from}, "
            f"but {dataset.annotation_file.name} is {dataset.fingerprint}); make it again "
            "with `python -m rcnn_steps.rcnn proposals --split train` (and --split val)"
        )
    splits = np.split(boxes.astype(np.float32), np.cumsum(counts)[:-1])
    return {int(i): torch.from_numpy(b).reshape(-1, 4) for i, b in zip(ids, splits, strict=True)}
