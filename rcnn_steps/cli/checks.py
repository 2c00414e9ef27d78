"""The checks the commands share, each run before any work: a path argument that is not
empty, an integer option at least its minimum, ``--set FIELD=VALUE`` read as the
DetectorConfig field declares, an ``--out`` file the command may write (and replace), and a
device this machine has. Each mistake is one :class:`~rcnn_steps.utils.CommandError` line
naming the argument, so a bad input loses no file and no minutes of training."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rcnn_steps.detectors.config import DetectorConfig, flat_name
from rcnn_steps.engine import EXPORTED_KEYS, load_checkpoint
from rcnn_steps.experiments import evaluated_presets
from rcnn_steps.utils import CommandError, read_results


def path_argument(text: str) -> Path:
    """A path argument as argparse reads it, refusing an empty one: ``Path("")`` is the
    current folder, so ``--out "$OUT"`` with ``OUT`` unset would train, predict or clear
    into wherever the command was started."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "an empty path; name a file or folder (. for the current folder)"
        )
    return Path(text)


def check_at_least(command: str, args: argparse.Namespace, **minimums: int) -> None:
    """Refuse an integer option below its minimum (``threads=1``: ``--threads 0`` is an
    error, not torch's RuntimeError, nor a silent default); an option left out (None)
    passes."""
    for name, least in minimums.items():
        value = getattr(args, name, None)
        if value is not None and value < least:
            flag = "--" + name.replace("_", "-")
            raise CommandError(f"{command}: {flag} must be at least {least}, got {value}")


def parse_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    """``["mask_aligned=true", "anchor_sizes=8,16"]`` -> ``{"mask_aligned": True,
    "anchor_sizes": (8, 16)}``: each value read and checked as its DetectorConfig field
    declares (:meth:`~rcnn_steps.detectors.config.DetectorConfig.parse_override`), so a value
    the field cannot take is refused here, naming ``--set``, the field and what it
    accepts, before any work starts. A field may be named by its section too
    (``mask.loss=softmax``, :data:`~rcnn_steps.detectors.config.SECTIONS`); the key is
    always the flat name (``mask_loss``), as results files and run cache keys record it. A
    field given twice, by one name or by its two, is refused too (which one was meant?)."""
    overrides: dict[str, Any] = {}
    given: dict[str, str] = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep:
            raise CommandError(f"--set takes FIELD=VALUE with a DetectorConfig field, got {item!r}")
        try:
            value = DetectorConfig.parse_override(name, text)
        except ValueError as e:
            raise CommandError(f"--set {item}: {e}") from None
        field = flat_name(name)  # known: parse_override read it
        if field in given:
            raise CommandError(
                f"--set {field} is given twice ({given[field]!r} and {item!r}); give it once"
            )
        overrides[field] = value
        given[field] = item
    return overrides


#: What ``--out`` names, by kind: the suffixes accepted, what the command writes there,
#: what an existing file must be for the command to replace it, and an example name.
OUT_FILE_KINDS: dict[str, tuple[tuple[str, ...], str, str, str]] = {
    "results": ((".json",), "a JSON results file",
                "a results file written by `python -m rcnn_steps evaluate`", "results.json"),
    "weights": ((".pt", ".pth"), "a checkpoint",
                "a checkpoint written by export (a training checkpoint, which --resume needs, is "
                "never replaced)",
                "model.pt"),
}  # fmt: skip


def _is_evaluate_results(path: Path) -> bool:
    """Whether ``path`` is a results file that ``evaluate`` wrote (:func:`rcnn_steps.
    utils.write_results` with a :func:`rcnn_steps.experiments.runner.run_setting` record: a method,
    a config, metrics, and a preset ``evaluate`` offers)."""
    try:
        payload = read_results(path)
    except (OSError, ValueError):
        return False
    if not isinstance(payload, dict):
        return False
    results, provenance = payload.get("results"), payload.get("provenance")
    return (
        isinstance(results, dict)
        and isinstance(provenance, dict)
        and provenance.get("preset") in evaluated_presets()
        and {"method", "config", "metrics"} <= set(results)
    )


def _is_exported_weights(path: Path) -> bool:
    """Whether ``path`` is a weights-only copy ``export`` wrote (a checkpoint that loads
    and verifies, and holds nothing but :data:`rcnn_steps.engine.EXPORTED_KEYS` and its
    run): not a training checkpoint, whose optimizer and position ``--resume`` needs."""
    try:
        saved = load_checkpoint(path)
    except (OSError, ValueError):
        return False
    return set(saved) <= {*EXPORTED_KEYS, "run", "checksum"}


def check_out_file(command: str, path: Path, kind: str, overwrite: bool = False) -> None:
    """Refuse, before any work, an ``--out`` file the command could not write or should
    not replace: a folder, a name without the kind's suffix (:data:`OUT_FILE_KINDS`), a
    place under a file or a folder this user cannot write, an existing file without
    ``overwrite``, and, even with it, an existing file that is not of the kind (a
    checkpoint is never replaced by a results file, nor a run's notes or a training
    checkpoint, which its run resumes from, by a weights-only copy)."""
    import os

    suffixes, writes, replaceable, example = OUT_FILE_KINDS[kind]
    if path.is_dir():
        raise CommandError(
            f"{command}: --out {path} is a folder; name a file, e.g. {path / example}"
        )
    if path.suffix.lower() not in suffixes:
        raise CommandError(
            f"{command}: --out {path} must end in {' or '.join(suffixes)} ({command} writes "
            f"{writes}), e.g. {path.with_suffix(suffixes[0])}"
        )
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise CommandError(f"{command}: --out {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CommandError(f"{command}: --out {path}: cannot write in {folder}; pick another")
    if not path.exists():
        return
    if not overwrite:
        raise CommandError(
            f"{command}: {path} exists: pass --overwrite to replace it, or another --out"
        )
    is_kind = _is_evaluate_results if kind == "results" else _is_exported_weights
    if not is_kind(path):
        raise CommandError(
            f"{command}: --out {path} exists and is not {replaceable}, so {command} will not "
            "replace it; pick another --out (or move that file away yourself)"
        )


def is_inside(a: Path, b: Path) -> bool:
    """Whether path ``a`` is ``b`` or lies inside it (both resolved)."""
    return a == b or b in a.parents


def check_device(device: str) -> None:
    """A one-line error for a device this machine does not have (e.g. ``cuda`` without a
    GPU), before any checkpoint is read."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise CommandError(f"--device {device}: not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CommandError(
                f"--device {device}: CUDA is not available here (no GPU, or a CPU-only "
                "build of torch); run with --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CommandError(
                f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s) "
                f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})"
            )
    elif dev.type != "cpu":  # mps, xpu, ...: the backend says whether it is here
        backend = getattr(torch.backends, dev.type, None) or getattr(torch, dev.type, None)
        if not getattr(backend, "is_available", lambda: False)():
            raise CommandError(
                f"--device {device}: no {dev.type} device here; run with --device cpu (or "
                "cuda on a machine with a GPU)"
            )
