"""Feeding batches: to the device, and in an order that depends on ``(seed, epoch)`` only
(what makes a resumed run see the data a straight run sees)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch


def to_device(obj: Any, device: torch.device | str) -> Any:
    """Move every tensor in ``obj`` to ``device``, recursing through lists, tuples
    (named tuples too) and dicts; anything else is returned as is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {key: to_device(value, device) for key, value in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple
        return type(obj)(*(to_device(value, device) for value in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(value, device) for value in obj)
    return obj


def _generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A torch generator seeded from ``(seed, epoch, stream)`` through NumPy's SeedSequence
    (not ``seed + epoch``, which would give seed 1 the epochs of seed 0 shifted by one)."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(2, np.uint32)
    g = torch.Generator()
    g.manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
    return g


def epoch_iterator(loader: Iterable, seed: int, epoch: int) -> Iterator:
    """An iterator over ``loader`` whose order is a function of ``(seed, epoch)`` only.

    Random samplers (those with a ``generator`` attribute) get a generator seeded from
    ``(seed, epoch)``; samplers with ``set_epoch`` get the epoch; a ``DataLoader`` gets a
    generator for its workers' base seed. A plain iterable (a list of batches) is iterated
    as it is.
    """
    batch_sampler = getattr(loader, "batch_sampler", None)
    samplers = [getattr(loader, "sampler", None), batch_sampler]
    samplers.append(getattr(batch_sampler, "sampler", None))
    seen: set[int] = set()
    for sampler in samplers:
        if sampler is None or id(sampler) in seen:
            continue
        seen.add(id(sampler))
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if hasattr(sampler, "generator"):
            sampler.generator = _generator(seed, epoch, 0)
    if isinstance(loader, torch.utils.data.DataLoader):
        loader.generator = _generator(seed, epoch, 1)
    return iter(loader)
