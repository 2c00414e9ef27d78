"""Checkpoints: written atomically with a checksum, loaded with the safe unpickler and
verified, exported as weights-only copies, and checked against the model (and config) a
resumption is given."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rcnn_steps.engine.config import TrainConfig
from rcnn_steps.utils import atomic_write_bytes


class CheckpointError(ValueError):
    """A checkpoint cannot be used: empty, truncated, damaged (its checksum does not match),
    not a checkpoint, or written for another model. The message names the file and says
    what to do."""


_CHECKPOINT_ADVICE = (
    "Use an earlier checkpoint (model_XXXXXXX.pt, kept with TrainConfig(keep_checkpoints="
    "True)) or train again."
)


def checkpoint_checksum(checkpoint: Mapping[str, Any]) -> str:
    """``"sha256:<hex>"`` of a checkpoint's contents (every key but ``"checksum"``): the
    bytes of every tensor with its dtype and shape, and every plain value, in order. It
    depends on the values only, not on how the file was written or onto which device it
    was loaded, so :func:`load_checkpoint` can recompute it from what it read."""
    digest = hashlib.sha256()
    _hash_into(digest, {k: v for k, v in checkpoint.items() if k != "checksum"})
    return "sha256:" + digest.hexdigest()


def _hash_into(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach()
        digest.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        if t.numel():
            flat = t.cpu().contiguous().reshape(-1)
            try:
                digest.update(flat.view(torch.uint8).numpy().data)
            except (RuntimeError, TypeError):  # dtypes without a byte view
                digest.update(repr(flat.tolist()).encode())
    elif isinstance(value, Mapping):
        digest.update(f"D{len(value)}|".encode())
        for key, item in value.items():
            _hash_into(digest, key)
            _hash_into(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}|".encode())
        for item in value:
            _hash_into(digest, item)
    elif isinstance(value, (str, bytes)):
        data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
        digest.update(f"{type(value).__name__}{len(data)}|".encode())
        digest.update(data)
    elif isinstance(value, float):
        digest.update(f"F{value.hex()}|".encode())
    else:  # None, bool, int, and anything else by its repr
        digest.update(f"{type(value).__name__}:{value!r}|".encode())


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    """Serialise ``checkpoint`` (a dict) with its :func:`checkpoint_checksum` added under
    the key ``"checksum"``, in memory, then write it atomically (temporary file in the
    same folder, then a rename): a crash mid-save leaves the previous file intact."""
    buffer = io.BytesIO()
    torch.save({**checkpoint, "checksum": checkpoint_checksum(checkpoint)}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with the safe unpickler (``weights_only=True``) and verify it.

    Returns the dict that was saved (without its ``"checksum"``). Raises
    ``FileNotFoundError`` for a missing file and :class:`CheckpointError`, naming the file,
    for an empty, truncated or unreadable one, one that holds Python objects the safe
    unpickler refuses, and one whose contents no longer match the checksum stored when it
    was written (a flipped bit). A checkpoint without a checksum (written by an older
    version, or by other code) loads with a warning that it could not be verified.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"checkpoint {path} is a folder, not a file: pass the checkpoint in it, e.g. "
            f"{path / 'last.pt'}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes): its write was cut short. " + _CHECKPOINT_ADVICE
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # The safe unpickler met something it does not load. Its message names the object
        # and explains how to load the file unsafely; we pass on the name only.
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" (such as {found.group(1)})" if found else ""
        raise CheckpointError(
            f"checkpoint {path} holds Python objects{what} that the safe loader refuses; "
            "the checkpoints rcnn_steps writes hold only tensors and plain values, so this "
            "file was written by other code, or is damaged. " + _CHECKPOINT_ADVICE
        ) from None
    except Exception as e:  # a truncated zip, random bytes, ...: torch's errors vary
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({size} bytes; {_short_reason(e)}): it is "
            "truncated, damaged or not a PyTorch checkpoint. " + _CHECKPOINT_ADVICE
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(checkpoint).__name__}, not the dict that "
            "save_checkpoint writes"
        )
    stored = checkpoint.pop("checksum", None)
    if stored is None:
        warnings.warn(
            f"checkpoint {path} has no checksum (written by an older rcnn_steps, or by "
            "other code), so it cannot be verified",
            stacklevel=2,
        )
    elif stored != checkpoint_checksum(checkpoint):
        raise CheckpointError(
            f"checkpoint {path} is damaged: its contents no longer match the checksum "
            "stored when it was written (a flipped bit on disk or in a copy?). "
            + _CHECKPOINT_ADVICE
        )
    return checkpoint


#: What a weights-only copy keeps of a training checkpoint (what ``predict`` and
#: :func:`rcnn_steps.cli.load_run` need): no optimizer state, RNG or metrics window.
EXPORTED_KEYS = ("model", "model_description", "step", "config", "eval_history")


def export_weights(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    run: Mapping[str, Any] | None = None,
) -> Path:
    """Write a weights-only copy of a training checkpoint (verified on load) to ``out``:
    the model's state dict, its description (the config that rebuilds it), the step, the
    training config and the evaluations, with a fresh checksum; about half of
    ``last.pt``'s size, for sharing or committing a trained model. ``out`` is never
    overwritten unless ``overwrite``.

    ``run``: what the run says about itself (the ``run.json`` that ``python -m
    rcnn_steps train`` writes beside its checkpoints: class names, keypoint names, the
    feeding), stored in the copy under ``"run"`` as plain values, so the file alone is
    enough to predict with names (:func:`rcnn_steps.cli.load_run` reads it)."""
    src, out = Path(checkpoint), Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: pass overwrite=True to replace it, or another path")
    if out.resolve() == src.resolve():
        raise ValueError(f"export_weights: {out} is the checkpoint itself; pick another path")
    saved = load_checkpoint(src)
    if "model" not in saved:
        raise CheckpointError(f"checkpoint {src} holds no model weights ('model' is missing)")
    kept = {k: saved[k] for k in EXPORTED_KEYS if k in saved}
    if run is not None:
        kept["run"] = _plain(run)
    save_checkpoint(out, kept)
    return out


def _short_reason(error: BaseException) -> str:
    """The error's type and the first sentence of its message, nothing about loading
    the file unsafely."""
    first = str(error).strip().split("\n")[0].split(". ")[0][:160]
    if "weights_only" in first:
        first = ""
    return type(error).__name__ + (f": {first}" if first else "")


#: The package's modules that moved to a floor (issue 23), old path to new: a checkpoint
#: written before the move names its model's class by the old path
#: (``rcnn_steps.faster_rcnn.FasterRCNN``) and still resumes into the same class.
MOVED_MODULES = {
    f"rcnn_steps.{name}": f"rcnn_steps.detectors.{name}"
    for name in (
        "sliding_window",
        "selective_search",
        "rcnn",
        "fast_rcnn",
        "faster_rcnn",
        "mask_rcnn",
    )  # fmt: skip
}


def current_class_path(path: str) -> str:
    """``module.Class`` as the package spells it now: a path under an old module of
    :data:`MOVED_MODULES` is given its new module; any other path is returned as is."""
    for old, new in MOVED_MODULES.items():
        if path.startswith(old + "."):
            return new + path[len(old) :]
    return path


def model_description(model: nn.Module) -> dict[str, Any]:
    """What a checkpoint records about the model it was trained with, so a resume can tell
    another model from this one: ``{"class": "module.Class", "config": {...} or None}``,
    the config being ``model.config.to_dict()`` when the model has one (the detectors'
    :class:`~rcnn_steps.detectors.config.DetectorConfig` does), as plain values."""
    config = getattr(model, "config", None)
    to_dict = getattr(config, "to_dict", None)
    return {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "config": _plain(to_dict()) if callable(to_dict) else None,
    }


def _plain(value: Any) -> Any:
    """Plain values the safe unpickler loads: dicts, lists, str, numbers, None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return repr(value)


def _check_resumable(checkpoint: dict[str, Any], path: Path, model: nn.Module) -> None:
    """Raise :class:`CheckpointError` unless ``checkpoint`` is a training checkpoint of a
    model like ``model``: same class, same config, weights of the same names and shapes."""
    needed = {"step", "epoch", "position", "model", "optimizer", "scheduler", "scaler"}
    needed |= {"rng", "config", "window", "losses", "eval_history", "elapsed"}
    missing = sorted(needed - set(checkpoint))
    if missing:
        raise CheckpointError(
            f"cannot resume from {path}: it is not a training checkpoint of "
            f"rcnn_steps.engine.train (it has no {', '.join(missing)})"
        )
    start_afresh = (
        "Resume with the model the run was trained with, or start a new run in another "
        "out_dir (or replace this one with TrainConfig(overwrite=True) and resume=False)."
    )
    now = model_description(model)
    saved = checkpoint.get("model_description")
    if saved is not None:  # checkpoints written before it was stored have none
        if current_class_path(saved["class"]) != now["class"]:
            raise CheckpointError(
                f"cannot resume from {path}: it was written by a {saved['class']}, and this "
                f"model is a {now['class']}. {start_afresh}"
            )
        if saved["config"] != now["config"]:
            old, new = saved["config"] or {}, now["config"] or {}
            fields = [k for k in {**old, **new} if old.get(k, "<absent>") != new.get(k, "<absent>")]
            changes = "; ".join(
                f"{k}: {old.get(k, '<absent>')!r} in the checkpoint, {new.get(k, '<absent>')!r} now"
                for k in fields[:8]
            )
            raise CheckpointError(
                f"cannot resume from {path}: it was written by a model with another config "
                f"(fields {', '.join(fields)} differ: {changes}). Resuming would continue one "
                f"model's training with another's. {start_afresh}"
            )
    own = model.state_dict()
    state = checkpoint["model"]
    absent = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [
        f"{k} is {tuple(state[k].shape)} in the checkpoint and {tuple(own[k].shape)} here"
        for k in own
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape
    ]
    if absent or extra or shapes:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} of other shapes (e.g. {shapes[0]})")
        if absent:
            parts.append(f"{len(absent)} missing (e.g. {absent[0]})")
        if extra:
            parts.append(f"{len(extra)} this model does not have (e.g. {extra[0]})")
        raise CheckpointError(
            f"cannot resume from {path}: its weights do not fit this model: "
            f"{'; '.join(parts)}. {start_afresh}"
        )


# Fields that may change between a run and its resumption without changing the result
# (device and memory_format change only the float rounding, as another machine would).
_HARMLESS_FIELDS = {
    "progress",
    "overwrite",
    "out_dir",
    "device",
    "memory_format",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
}


def _warn_config_changes(saved: dict[str, Any], config: TrainConfig) -> None:
    now = config.to_dict()
    changed = [
        f"{k} ({saved.get(k)!r} -> {now[k]!r})"
        for k in now
        if k not in _HARMLESS_FIELDS and saved.get(k) != now[k]
    ]
    if changed:
        warnings.warn(
            "resuming with a config that differs from the checkpoint's in "
            + ", ".join(changed)
            + "; the result will differ from an uninterrupted run",
            stacklevel=5,  # _warn_config_changes, _restore, _train, train, the caller
        )
