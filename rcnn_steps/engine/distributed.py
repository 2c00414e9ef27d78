"""Several processes (torchrun / DDP): ranks, joining the process group, each process's
shard of the data, gathering values, and an error that names the ranks that stopped
answering."""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import torch

from rcnn_steps.engine.config import resolve_device


def process_rank() -> tuple[int, int]:
    """``(rank, world size)``: ``(0, 1)`` unless ``torch.distributed`` is initialised."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(
    device: str = "auto", timeout: float | None = None
) -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``LOCAL_RANK``...) and return ``(rank, world size,
    device)``: NCCL and ``cuda:LOCAL_RANK`` when CUDA is present (and ``device`` is not
    "cpu"), gloo and the CPU otherwise. Without torchrun's environment (one process) it
    does nothing and returns ``(0, 1, resolve_device(device))``.

    ``timeout``: seconds a collective (and joining the group) waits for the other
    processes before it fails (None: torch's default, 30 minutes for gloo, during which
    a stopped or hung process makes the others wait in silence); see
    :func:`naming_silent_ranks` for the error that names the ones that did not answer."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, resolve_device(device)
    dist = torch.distributed
    cuda = torch.cuda.is_available() and device != "cpu"
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        chosen = torch.device("cuda", local)
    else:
        chosen = torch.device("cpu")
    if not dist.is_initialized():
        waits = {} if timeout is None else {"timeout": datetime.timedelta(seconds=timeout)}
        dist.init_process_group("nccl" if cuda else "gloo", **waits)
    return dist.get_rank(), dist.get_world_size(), chosen


class SilentRanksError(TimeoutError):
    """A collective of a distributed run failed because other processes did not take
    part in time (stopped, hung or killed). The message names them. A TimeoutError, so
    an OSError: the command line reports it in one line (:func:`rcnn_steps.utils.
    run_command`)."""


#: Words of the errors gloo and NCCL raise when a peer does not answer in time, or when
#: its connection closes because it died.
_SILENT_PEER_SIGNS = ("timed out", "timeout", "connection closed by peer", "connection reset")


@contextlib.contextmanager
def naming_silent_ranks(timeout: float | None, grace: float | None = None) -> Iterator[None]:
    """Turn a collective's failure for want of other processes (gloo's "Timed out
    waiting 300000ms for recv operation to complete", a peer's closed connection) into
    a :class:`SilentRanksError` that says which ranks did not answer within ``timeout``
    seconds. Outside a distributed run, and for other errors, it does nothing.

    The ranks are found through the process group's key-value store, which a stopped
    process cannot reach: each process whose collective failed writes its rank there and
    waits ``grace`` seconds (default: 10 % of the timeout, 2 to 10 s) for the others,
    whose collectives fail at about the same time; the ranks still missing are named."""
    try:
        yield
    except RuntimeError as error:
        rank, world = process_rank()
        text = str(error).lower()
        if world == 1 or not any(sign in text for sign in _SILENT_PEER_SIGNS):
            raise
        if grace is None:
            grace = 2.0 if timeout is None else min(10.0, max(2.0, 0.1 * timeout))
        silent = _ranks_that_do_not_answer(rank, world, grace)
        within = "in time" if timeout is None else f"within {timeout:g} s"
        reason = re.sub(r"^\[[^\]]*\]\s*", "", " ".join(str(error).split()))[:160]
        if silent:
            who = ("rank " if len(silent) == 1 else "ranks ") + ", ".join(map(str, silent))
            message = f"{who} did not answer {within} (stopped, hung or killed?)"
        else:
            message = f"the ranks did not meet {within}; all answered later (one was slow)"
        raise SilentRanksError(
            f"{message}; rank {rank} gave up ({reason}); --timeout sets the wait"
        ) from error


def _ranks_that_do_not_answer(rank: int, world: int, grace: float) -> list[int]:
    """The other ranks that do not write their roll-call key to the process group's
    store within ``grace`` seconds of this one writing its own; every other rank when
    the store cannot be reached."""
    others = [r for r in range(world) if r != rank]
    try:
        store = torch.distributed.distributed_c10d._get_default_store()
        store.set(f"rcnn_steps/answered/{rank}", "1")
        deadline = time.monotonic() + grace
        while True:
            missing = [r for r in others if not store.check([f"rcnn_steps/answered/{r}"])]
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.1)
    except (RuntimeError, AttributeError, ValueError):  # no store, or it is gone
        return others


def distributed_sampler(dataset: Any, seed: int, shuffle: bool = True) -> Any:
    """A ``DistributedSampler`` over ``dataset`` for this process (each process its own
    shard of every epoch, in an order fixed by ``(seed, epoch)``; :func:`train` sets the
    epoch), or None for one process (use ``shuffle=True`` then)."""
    rank, world = process_rank()
    if world == 1:
        return None
    return torch.utils.data.DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=True
    )


def all_gather_objects(value: Any) -> list[Any]:
    """Every process's ``value`` (a list with one entry, this process's, when alone)."""
    rank, world = process_rank()
    if world == 1:
        return [value]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, value)
    return out
