"""The random states of Python, NumPy and torch, saved into a checkpoint and restored
from it (as tensors and plain values, so ``torch.load(..., weights_only=True)`` reads them)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def get_rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's (CPU and every CUDA device) generators,
    as tensors and plain types, so ``torch.load(..., weights_only=True)`` accepts them."""
    version, py_state, gauss_next = random.getstate()
    # the legacy global generator is the one np.random.* calls in user code draw from
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    return {
        "python": {
            "version": version,
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states saved by :func:`get_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np_state = (npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    np.random.set_state(np_state)  # noqa: NPY002
    torch.set_rng_state(state["torch"].cpu())
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), index)
