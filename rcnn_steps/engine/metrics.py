"""Metrics: one JSON object per line in ``out_dir/metrics.jsonl``; written, read back, and
cut back to a checkpoint's step when a crashed run resumes."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rcnn_steps.utils import atomic_write_bytes


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (or of ``<path>/metrics.jsonl`` for a folder), in
    order. Training records hold ``step``, ``lr``, each loss term, ``total_loss``,
    ``sec_per_iter`` (means over the steps since the previous record) and ``time`` (seconds
    since the start of the run); evaluation metrics appear as ``eval/<name>``. A last line
    cut short by a crash is ignored."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    records = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # a line cut short by a crash
            raise
    return records


def _append_metrics(path: Path | None, record: dict[str, Any]) -> None:
    if path is not None:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the records a crashed run wrote after its last checkpoint (the resumed run
    writes them again)."""
    if path.exists():
        kept = [r for r in read_metrics(path) if r["step"] <= step]
        atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
