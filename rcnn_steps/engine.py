"""The training loop: one :func:`train` that every chapter and the final Mask R-CNN use.

Chapter 01's crop classifier, chapter 03's Fast R-CNN and chapter 08's Mask R-CNN all
train through :func:`train`; what differs is the model, the data and, for a classifier,
the ``loss_fn``. The loop is read top to bottom in one sitting (as nanoGPT's
``train.py``) and follows the recipe of the papers' reference implementation, Detectron
(Mask R-CNN, He et al. 2017, section 3.1 "Training"):

- SGD with momentum 0.9 and weight decay 1e-4; here no weight decay on biases and
  normalisation layers (Detectron2's ``WEIGHT_DECAY_NORM = 0``, nanoGPT's rule "only
  tensors of 2 or more dimensions decay"), see :func:`build_optimizer`;
- a linear warm-up from ``warmup_factor * lr`` to ``lr`` over ``warmup_steps`` iterations
  (Goyal et al. 2017, "Accurate, large minibatch SGD"), then the learning rate multiplied
  by ``gamma = 0.1`` at each milestone in ``lr_steps`` (Mask R-CNN: lr 0.02, batch 16,
  160k iterations, divided by 10 at 120k) or a cosine decay, see :func:`lr_factor`;
- optional gradient clipping and, on CUDA, mixed precision (autocast + GradScaler).

Models follow torchvision's detection convention: in train mode ``model(images, targets)``
returns a dict of named scalar losses, and the loss that is minimised is their sum
(weighted by ``config.loss_weights``). Anything else trains through a ``loss_fn(model,
batch) -> dict`` hook, e.g. :func:`classification_loss` for ``(images, labels)`` batches.

Exact resume
------------
"Train N steps straight" and "train N/2, stop (or crash), resume, train the rest" give
bitwise-equal weights on CPU (``tests/test_engine.py`` checks it). Four things make it so:

1. The data order is a function of ``(config.seed, epoch)`` only. Before each epoch,
   :func:`epoch_iterator` hands the loader's sampler a fresh ``torch.Generator`` seeded from
   ``(seed, epoch)`` (``RandomSampler`` -- that is ``shuffle=True`` --,
   ``SubsetRandomSampler``, ``WeightedRandomSampler``), calls ``set_epoch(epoch)`` on
   samplers that have one (``DistributedSampler``) and gives the ``DataLoader`` its own
   seeded generator too (it draws the workers' base seed from it, which would otherwise
   take a number from the global torch RNG). The engine therefore owns the loader's
   shuffling: a generator passed to the loader is replaced.
2. The loader is cycled for ``max_iter`` steps; the checkpoint stores the epoch and the
   number of batches already taken from it. On resume the engine rebuilds that epoch's
   iterator and skips those batches (they are loaded and dropped: at most one epoch of
   data loading, no model compute).
3. The random states of Python, NumPy, torch (CPU) and torch (CUDA, when present) are saved
   in the checkpoint and restored *after* the skip (loading the skipped batches may draw
   random numbers in an augmentation), so dropout and augmentation see the same numbers.
   Evaluation runs between a save and a restore of these states, so adding an
   ``evaluate_fn`` never changes the training trajectory.
4. Everything else with state is in the checkpoint: model, optimizer (momentum buffers),
   the ``LambdaLR`` scheduler, the ``GradScaler``, the step, the half-filled logging window
   and the evaluation history.

Nothing lost, nothing mixed up
------------------------------
Checkpoints are written atomically (a temporary file, then a rename; temporary files left
by a killed write are removed when the next run starts) and carry a checksum of their
contents and a description of the model (class and ``model.config.to_dict()``, see
:func:`model_description`). :func:`load_checkpoint` verifies the checksum, and a resume
refuses a checkpoint of another model class, config or weight shapes, with a
:class:`CheckpointError` that names the file. A fresh run refuses an ``out_dir`` that
already holds a run unless ``TrainConfig(overwrite=True)`` says to replace it, and one
process at a time trains into a folder (a lock; :class:`RunFolder` keeps the folder's
rules). Ctrl-C lets the step under way end, saves its checkpoint and stops
(:class:`TrainingInterrupted`): a resumption continues exactly, as after a kill.

Several processes (torchrun / DDP)
----------------------------------
Under ``torchrun --nproc_per_node N`` (or any launcher that sets up ``torch.distributed``
before :func:`train`; :func:`init_distributed` does it from torchrun's environment),
each process trains on its own shard of every batch (give the loader a
``DistributedSampler``: :func:`distributed_sampler`, whose order is a function of
``(seed, epoch)`` as above) and the model is wrapped in ``DistributedDataParallel``,
which averages the gradients over the processes after each backward pass. Each process
seeds its generators with ``config.seed + rank``, so their augmentations and RoI samples
differ, as their data does. The logged losses are the mean over the processes; only rank
0 writes ``metrics.jsonl`` and checkpoints; a checkpoint holds every rank's random state,
so a run resumes exactly with the same number of processes. A detector's losses are
means over each process's own RoIs and anchors, so N processes of B images are not
bit-for-bit one process of N B images (as in torchvision's and Detectron2's DDP
training); for a loss that is a mean over equal shards (a classifier's) they are, to
float rounding (tests/test_distributed.py).

On CUDA the resumed run matches up to the non-determinism of some CUDA kernels (use
``torch.use_deterministic_algorithms(True)`` for bitwise equality). With ``num_workers >
0``, keep ``persistent_workers=False``: workers are re-seeded from the loader's generator
at each epoch, which is what makes their augmentations repeat.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import io
import json
import math
import os
import pickle
import random
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .utils import atomic_write_bytes, default_device, seed_everything

try:
    import fcntl  # the run folder's lock (POSIX)
except ImportError:  # Windows: no lock
    fcntl = None

__all__ = [
    "CheckpointError",
    "NonFiniteLossError",
    "SilentRanksError",
    "RunFolder",
    "RunFolderError",
    "TrainingInterrupted",
    "all_gather_objects",
    "TrainConfig",
    "TrainResult",
    "build_optimizer",
    "build_scheduler",
    "checkpoint_checksum",
    "distributed_sampler",
    "classification_loss",
    "detection_loss",
    "epoch_iterator",
    "get_rng_state",
    "init_distributed",
    "load_checkpoint",
    "lr_factor",
    "model_description",
    "naming_silent_ranks",
    "process_rank",
    "read_metrics",
    "resolve_device",
    "save_checkpoint",
    "set_rng_state",
    "to_device",
    "train",
]

LossDict = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------------------
# The configuration


@dataclass
class TrainConfig:
    """Every knob of the training loop, in one plain dataclass (``config.display()``
    prints them all).

    Iterations are counted as in Detectron's ``SOLVER.MAX_ITER``: one iteration is one
    optimizer update on one batch; ``lr_steps`` and ``warmup_steps`` use the same count.
    The defaults are Detectron's Mask R-CNN solver (lr 0.02 for a batch of 16, momentum
    0.9, weight decay 1e-4, decay by ``gamma = 0.1``) at a small scale; chapters set
    ``max_iter`` and ``lr_steps`` from their preset.
    """

    max_iter: int = 1000  #: number of optimizer updates ("steps")
    lr: float = 0.02  #: base learning rate (Mask R-CNN: 0.02 at batch 16)
    momentum: float = 0.9
    weight_decay: float = 1e-4  #: on weights of 2 or more dimensions (conv, linear)
    weight_decay_norm_bias: float = 0.0  #: on biases and norm-layer scales/shifts
    warmup_steps: int = 100  #: linear warm-up length (0 = none)
    warmup_factor: float = 0.001  #: the learning rate starts at warmup_factor * lr
    schedule: str = "step"  #: "step" (multiply by gamma at each of lr_steps) or "cosine"
    lr_steps: tuple[int, ...] = ()  #: milestones of the step schedule (iterations)
    gamma: float = 0.1  #: factor applied at each milestone
    grad_clip_norm: float | None = None  #: max global L2 norm of the gradients; None = off
    loss_weights: dict[str, float] | None = None  #: weight per loss term (absent = 1.0)
    log_every: int = 20  #: write a metrics line every this many steps (and at the end)
    eval_every: int = 0  #: call evaluate_fn every this many steps; 0 = only at the end
    checkpoint_every: int = 0  #: write out_dir/last.pt every this many steps (and at the end)
    keep_checkpoints: bool = False  #: also keep out_dir/model_0001000.pt at each checkpoint
    out_dir: str | None = None  #: checkpoints and metrics.jsonl; None = keep nothing on disk
    #: start afresh in an out_dir that already holds a run, deleting its metrics.jsonl and
    #: checkpoints; False (default) refuses to, so a finished run is never overwritten
    overwrite: bool = False
    seed: int = 0  #: seeds the RNGs at the start and the data order of every epoch
    device: str = "auto"  #: "auto" (CUDA if present), "cpu", "cuda", "cuda:1", ...
    amp: bool = True  #: autocast + GradScaler on CUDA; ignored on CPU
    progress: bool = True  #: show a progress bar (terminal and JupyterLab)

    def __post_init__(self) -> None:
        if self.out_dir is not None:
            self.out_dir = str(self.out_dir)  # a Path would not load with weights_only=True
        self.lr_steps = tuple(int(s) for s in self.lr_steps)
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be at least 1, got {self.max_iter}")
        if self.schedule not in ("step", "cosine"):
            raise ValueError(f"schedule must be 'step' or 'cosine', got {self.schedule!r}")
        if list(self.lr_steps) != sorted(self.lr_steps) or any(s <= 0 for s in self.lr_steps):
            raise ValueError(f"lr_steps must be increasing positive iterations: {self.lr_steps}")
        if not 0.0 < self.warmup_factor <= 1.0:
            raise ValueError(f"warmup_factor must be in (0, 1], got {self.warmup_factor}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            raise ValueError(f"grad_clip_norm must be positive or None: {self.grad_clip_norm}")
        for name in ("log_every", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.log_every == 0:
            raise ValueError("log_every must be at least 1")
        if self.device != "auto":
            torch.device(self.device)  # raises on a misspelt device

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (what the checkpoint stores)."""
        return dataclasses.asdict(self)

    def display(self) -> None:
        """Print every field in an aligned two-column table."""
        items = self.to_dict()
        width = max(len(k) for k in items)
        print(type(self).__name__)
        for key, value in items.items():
            print(f"  {key:<{width}}  {value!r}")


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; anything else -> ``torch.device(device)``."""
    return default_device() if device == "auto" else torch.device(device)


# ----------------------------------------------------------------------------------------
# Losses: how a batch becomes a dict of named scalar losses


def detection_loss(model: nn.Module, batch: Any) -> LossDict:
    """The default ``loss_fn``: torchvision's convention, ``model(images, targets)``.

    ``batch`` is ``(images, targets)``: ``images`` a list of ``[3, H, W]`` tensors (or a
    ``[B, 3, H, W]`` tensor), ``targets`` a list of dicts (``boxes [N, 4]``, ``labels [N]``,
    ``masks [N, H, W]``, ...). The model returns ``{"loss_classifier": ..., ...}``.
    """
    return model(*batch)


def classification_loss(model: nn.Module, batch: Any) -> LossDict:
    """A ``loss_fn`` for classifiers (chapter 01's crop classifier, chapter 02's R-CNN
    classifier): ``batch = (images [B, C, H, W], labels [B])``, ``model(images)`` returns
    logits ``[B, num_classes]``; the loss is the cross-entropy."""
    images, labels = batch
    return {"loss_cls": F.cross_entropy(model(images), labels)}


def _as_loss_dict(losses: Any) -> LossDict:
    if isinstance(losses, torch.Tensor):
        return {"loss": losses}
    if not isinstance(losses, Mapping) or not losses:
        raise TypeError(
            "the loss function must return a non-empty dict of scalar loss tensors "
            f"(torchvision's detection convention), got {type(losses).__name__}"
        )
    return dict(losses)


def _total_loss(losses: LossDict, weights: dict[str, float] | None) -> torch.Tensor:
    """``sum_k w_k * L_k`` in float32 (terms may be float16 under autocast)."""
    weights = weights or {}
    unknown = set(weights) - set(losses)
    if unknown:
        raise ValueError(
            f"config.loss_weights names {sorted(unknown)}, which the loss function does not "
            f"return; it returns {sorted(losses)}"
        )
    return sum(weights.get(name, 1.0) * value.float() for name, value in losses.items())


# ----------------------------------------------------------------------------------------
# Optimizer and learning-rate schedule


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum, in two parameter groups: weights of 2 or more dimensions (conv
    kernels, linear matrices) get ``config.weight_decay``; 1-d parameters (biases, the
    scales and shifts of norm layers) get ``config.weight_decay_norm_bias`` (default 0:
    decaying a norm layer's scale only fights the normalisation). Frozen parameters
    (``requires_grad=False``) are left out."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": config.weight_decay_norm_bias},
    ]
    groups = [g for g in groups if g["params"]]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)


def lr_factor(iteration: int, config: TrainConfig) -> float:
    """The multiplier of ``config.lr`` for the update numbered ``iteration`` (0-based),
    Detectron's ``WarmupMultiStepLR`` / ``WarmupCosineLR``:

    - warm-up: ``warmup_factor * (1 - a) + a`` with ``a = iteration / warmup_steps`` while
      ``iteration < warmup_steps``, then 1;
    - times ``gamma ** (number of milestones <= iteration)`` for ``schedule="step"``, or
      ``(1 + cos(pi * iteration / max_iter)) / 2`` for ``schedule="cosine"``.
    """
    warmup = 1.0
    if iteration < config.warmup_steps:
        alpha = iteration / config.warmup_steps
        warmup = config.warmup_factor * (1.0 - alpha) + alpha
    if config.schedule == "step":
        decay = config.gamma ** sum(1 for m in config.lr_steps if m <= iteration)
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * min(iteration, config.max_iter) / config.max_iter))
    return warmup * decay


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_factor`; stepped once per update, so its state
    (``last_epoch`` = updates done) goes into the checkpoint."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, config))


# ----------------------------------------------------------------------------------------
# Data: devices, and an epoch order that depends on (seed, epoch) only


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


# ----------------------------------------------------------------------------------------
# Random states and checkpoints (all loadable with torch.load(..., weights_only=True))


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


# ----------------------------------------------------------------------------------------
# Several processes


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


def model_description(model: nn.Module) -> dict[str, Any]:
    """What a checkpoint records about the model it was trained with, so a resume can tell
    another model from this one: ``{"class": "module.Class", "config": {...} or None}``,
    the config being ``model.config.to_dict()`` when the model has one (the detectors'
    :class:`~rcnn_steps.faster_rcnn.DetectorConfig` does), as plain values."""
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
        if saved["class"] != now["class"]:
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


# ----------------------------------------------------------------------------------------
# Metrics: one JSON object per line in out_dir/metrics.jsonl


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


# ----------------------------------------------------------------------------------------
# Failure and result


class NonFiniteLossError(FloatingPointError):
    """Training met a NaN or infinite loss (or, checked before each checkpoint, parameter).

    ``step`` is the 1-based number of the update whose loss was non-finite, ``losses`` the
    loss terms and ``total_loss`` as floats, ``nonfinite`` the names of the bad values. The
    last good checkpoint is left as it was.
    """

    def __init__(
        self,
        step: int,
        losses: dict[str, float],
        checkpoint: str | None = None,
        parameters: list[str] | None = None,
    ) -> None:
        self.step = step
        self.losses = dict(losses)
        if parameters:
            self.nonfinite = list(parameters)
            what = f"parameters became non-finite after step {step}: {', '.join(parameters)}"
        else:
            self.nonfinite = [k for k, v in losses.items() if not math.isfinite(v)]
            what = f"non-finite loss at step {step}: {', '.join(self.nonfinite)}"
        terms = ", ".join(
            f"{k}={v:.6g}" + ("" if math.isfinite(v) else " (non-finite)")
            for k, v in losses.items()
        )
        where = (
            f"the last good checkpoint is {checkpoint}"
            if checkpoint
            else "no checkpoint was written (set config.out_dir and config.checkpoint_every)"
        )
        super().__init__(
            f"{what}. Loss terms: {terms}. Training stopped; {where}. Things to try: a lower "
            "learning rate (config.lr) or a longer warm-up (config.warmup_steps); gradient "
            "clipping (config.grad_clip_norm, e.g. 10.0); and check the data (boxes of zero "
            "width or height or outside the image, NaN or infinite pixels, labels out of "
            "range)."
        )


class TrainingInterrupted(KeyboardInterrupt):
    """Training was stopped by Ctrl-C (or another ``KeyboardInterrupt``) after ``step``
    steps. ``checkpoint`` is the last checkpoint written (None when there is none) and
    ``checkpoint_step`` the step it holds: ``step`` when the interruption came between
    two steps (the first Ctrl-C waits for the step under way to end, and the checkpoint
    is saved on the way out), earlier when it came in the middle of one (a second
    Ctrl-C). ``train(..., resume=True)`` continues from it exactly."""

    def __init__(self, step: int, checkpoint: str | None, checkpoint_step: int | None) -> None:
        self.step, self.checkpoint, self.checkpoint_step = step, checkpoint, checkpoint_step
        where = f"{checkpoint} holds step {checkpoint_step}" if checkpoint else "no checkpoint"
        super().__init__(f"training interrupted after step {step}; {where}")


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    step: int  #: the last step reached (updates done, counting earlier runs when resumed)
    losses: dict[str, float]  #: loss terms, total_loss (and grad_norm) of the last update
    eval_history: list[dict[str, Any]]  #: [{"step": k, **metrics}, ...], whole run
    history: list[dict[str, Any]]  #: the metrics records written by this call
    wall_time_s: float  #: wall time of this call, evaluation and checkpoints included
    sec_per_iter: float  #: mean time of one update in this call (data loading included)
    out_dir: str | None = None
    checkpoint: str | None = None  #: path of the last checkpoint written, if any

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self, digits: int = 4) -> dict[str, Any]:
        """The part of a run that results files keep: seconds per update, the last losses
        and the logged loss history, rounded to ``digits``."""
        return {
            "train_sec_per_iter": round(self.sec_per_iter, digits),
            "final_losses": {k: round(v, digits) for k, v in self.losses.items()},
            "loss_history": [
                {k: (round(v, digits) if isinstance(v, float) else v) for k, v in r.items()}
                for r in self.history
            ],
        }


def _evaluate(model: nn.Module, evaluate_fn: Callable[[nn.Module], dict]) -> dict[str, Any]:
    """Call ``evaluate_fn(model)`` in eval mode, without gradients, and with the random
    states saved before and restored after, so that evaluating does not change training."""
    rng = get_rng_state()
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            metrics = evaluate_fn(model)
    finally:
        for module, mode in modes.items():
            module.training = mode
        set_rng_state(rng)
    if not isinstance(metrics, Mapping):
        raise TypeError(f"evaluate_fn must return a dict, got {type(metrics).__name__}")
    return _jsonable(metrics)


def _nonfinite_parameters(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]


# ----------------------------------------------------------------------------------------
# The loop


class _CtrlC:
    """Ctrl-C (SIGINT) while :func:`train` runs: the first one asks the loop to stop at
    the end of the step under way (``pressed``), so that the checkpoint it saves holds a
    whole step and resumes exactly; a second one stops at once (``KeyboardInterrupt``, as
    without this handler)."""

    def __init__(self, announce: bool) -> None:
        self.pressed = False
        self.previous: Any = None  # the SIGINT handler to restore
        self.announce = announce  # say that the first Ctrl-C was heard (a step can be long)

    def __call__(self, signum: int, frame: Any) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True
        if self.announce:
            print("\nCtrl-C: stopping at the end of this step, with a checkpoint (Ctrl-C "
                  "again stops at once)", file=sys.stderr)  # fmt: skip

    def install(self, wanted: bool) -> None:
        """Handle SIGINT from now on (until :meth:`uninstall`) when ``wanted``, in the main
        thread, and when SIGINT has Python's default handler (not ignored, not someone
        else's)."""
        self.previous = None
        if (
            wanted
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self.previous = signal.signal(signal.SIGINT, self)

    def uninstall(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None


def train(
    model: nn.Module,
    data_loader: Iterable,
    config: TrainConfig,
    loss_fn: Callable[[nn.Module, Any], LossDict] | None = None,
    evaluate_fn: Callable[[nn.Module], dict[str, Any]] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    resume: bool = False,
    stop_at: int | None = None,
) -> TrainResult:
    """Train ``model`` for ``config.max_iter`` updates, cycling over ``data_loader``.

    Args:
        model: in train mode, ``loss_fn(model, batch)`` must return a dict of scalar losses.
            It is moved to the config's device.
        data_loader: a ``DataLoader`` (or any re-iterable of batches); it is iterated again
            at the end of each epoch, in an order fixed by ``(config.seed, epoch)`` (see the
            module docstring). Batches are moved to the device with :func:`to_device`.
        config: the :class:`TrainConfig`.
        loss_fn: ``(model, batch) -> {name: scalar tensor}``; default
            :func:`detection_loss`, i.e. ``model(images, targets)``. The loss minimised is
            ``sum(config.loss_weights.get(name, 1) * loss)``; the logged terms are unweighted.
        evaluate_fn: ``(model) -> {metric: value}``, called in eval mode without gradients
            every ``config.eval_every`` steps and at ``max_iter`` (e.g. a wrapper around
            :mod:`rcnn_steps.evaluation`).
        optimizer: default :func:`build_optimizer`; the schedule is applied to it either way.
        resume: continue from ``config.out_dir/last.pt`` if it exists (else start afresh).
            The checkpoint is verified (:func:`load_checkpoint`) and must come from a model
            of the same class, config and weight shapes, else :class:`CheckpointError`.
            Without ``resume``, an ``out_dir`` that already holds a run (``metrics.jsonl``,
            ``last.pt`` or ``model_*.pt``) raises ``FileExistsError`` unless
            ``config.overwrite`` is set, which deletes those files first.
        stop_at: stop after this step (and checkpoint) although the schedule runs to
            ``max_iter``: to train in pieces, e.g. over several notebook cells.

    Steps are counted from 1: step ``k`` is the ``k``-th update, it uses the learning rate
    ``config.lr * lr_factor(k - 1, config)``, and the records, evaluations and checkpoints
    labelled ``k`` are taken after it.

    Raises:
        NonFiniteLossError: a loss term was NaN or infinite (the last checkpoint is kept).
        FileExistsError: ``out_dir`` holds a run, and neither ``resume`` nor
            ``config.overwrite`` says what to do with it.
        CheckpointError: the checkpoint to resume from is damaged or from another model.
        RunFolderError: ``out_dir`` is a file, or another process is training into it
            (the main process holds the folder's lock while it trains: :class:`RunFolder`).
        TrainingInterrupted: Ctrl-C. The first one lets the step under way end, saves its
            checkpoint (when there is an ``out_dir``; one process) and stops: a resumption
            continues exactly. A second one stops at once, keeping the last checkpoint.
    """
    if config.out_dir is None or process_rank()[0] != 0:
        return _train(model, data_loader, config, loss_fn, evaluate_fn, optimizer,
                      resume=resume, stop_at=stop_at)  # fmt: skip
    with RunFolder(config.out_dir).lock():  # one process at a time writes into it
        return _train(model, data_loader, config, loss_fn, evaluate_fn, optimizer,
                      resume=resume, stop_at=stop_at)  # fmt: skip


def _train(
    model: nn.Module,
    data_loader: Iterable,
    config: TrainConfig,
    loss_fn: Callable[[nn.Module, Any], LossDict] | None,
    evaluate_fn: Callable[[nn.Module], dict[str, Any]] | None,
    optimizer: torch.optim.Optimizer | None,
    *,
    resume: bool,
    stop_at: int | None,
) -> TrainResult:
    """:func:`train`'s loop (with the run folder locked when there is one)."""
    t_call = time.perf_counter()
    loss_fn = loss_fn or detection_loss
    device = resolve_device(config.device)
    use_amp = config.amp and device.type == "cuda"
    stop = config.max_iter if stop_at is None else min(stop_at, config.max_iter)
    rank, world = process_rank()
    main = rank == 0  # only the main process writes files and shows progress
    out_dir = Path(config.out_dir) if config.out_dir is not None else None
    last_path = out_dir / "last.pt" if out_dir else None
    metrics_path = out_dir / "metrics.jsonl" if out_dir and main else None
    if out_dir and main:
        RunFolder(out_dir).claim(resume, config.overwrite)
    if world > 1:
        torch.distributed.barrier()  # the out_dir is claimed before anyone reads it

    model.to(device)
    net: nn.Module = model
    if world > 1:  # gradients averaged over the processes after each backward
        # find_unused_parameters: a detector may hold modules its forward never runs (the
        # cpu preset reads c3, and TinyBackbone still has c4 and c5), which DDP must skip
        net = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    optimizer = optimizer or build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    params = [p for group in optimizer.param_groups for p in group["params"]]

    # -- start afresh, or load the last checkpoint ---------------------------------------
    step, epoch, position = 0, 0, 0  # updates done; current epoch; batches taken from it
    elapsed_before = 0.0  # training seconds spent by earlier runs (for the "time" field)
    eval_history: list[dict[str, Any]] = []
    window: dict[str, Any] = {"n": 0, "seconds": 0.0, "sums": {}}  # since the last record
    last_losses: dict[str, float] = {}
    saved: str | None = None  # the last checkpoint written (or loaded)
    rng = None
    if resume and last_path is not None and last_path.exists():
        ckpt = load_checkpoint(last_path)
        _check_resumable(ckpt, last_path, model)
        _warn_config_changes(ckpt["config"], config)
        model.load_state_dict(ckpt["model"])
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(
                f"cannot resume from {last_path}: its optimizer state does not fit this "
                f"optimizer ({e}); resume with the optimizer the run was trained with"
            ) from None
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        step, epoch, position = ckpt["step"], ckpt["epoch"], ckpt["position"]
        elapsed_before, eval_history = ckpt["elapsed"], list(ckpt["eval_history"])
        window, last_losses, rng = ckpt["window"], ckpt["losses"], ckpt["rng"]
        by_rank = ckpt.get("rng_by_rank") or [rng]
        if len(by_rank) != world:
            raise CheckpointError(
                f"cannot resume from {last_path} exactly: it was written by a run of "
                f"{len(by_rank)} process(es) and this one has {world}; resume with "
                f"{len(by_rank)} (torchrun --nproc_per_node {len(by_rank)}), or start afresh"
            )
        rng = by_rank[rank]
        saved = str(last_path)
        if main:
            _truncate_metrics(metrics_path, step)
        if config.progress and main:
            print(f"resuming from {last_path} at step {step}")
    else:
        if resume and config.progress and main:
            print(f"no checkpoint in {out_dir}; starting from step 0")
        seed_everything(config.seed + rank)
        if metrics_path is not None and metrics_path.exists():
            metrics_path.unlink()  # RunFolder.claim allowed it: resume or overwrite

    batches = epoch_iterator(data_loader, config.seed, epoch)
    for i in range(position):  # skip what the checkpointed run already consumed
        if next(batches, None) is None:
            raise RuntimeError(
                f"the data loader yields {i} batches per epoch, fewer than the {position} "
                "the checkpointed run had taken: was the data set changed?"
            )
    if rng is not None:
        set_rng_state(rng)  # after the skip: loading batches may draw random numbers

    model.train()
    history: list[dict[str, Any]] = []
    steps_this_call, seconds_this_call = 0, 0.0
    t_run = time.perf_counter()

    def write_record(fields: dict[str, Any]) -> None:
        full = {"step": step, **fields, "time": elapsed_before + time.perf_counter() - t_run}
        history.append(full)
        _append_metrics(metrics_path, full)

    def state_now(rngs: list[dict[str, Any]]) -> dict[str, Any]:
        """Everything a resumption needs, as it is now (``rngs``: every process's random
        states)."""
        checkpoint = {
            "step": step,
            "epoch": epoch,
            "position": position,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rngs[0],
            "config": config.to_dict(),
            "model_description": model_description(model),
            "window": window,
            "losses": last_losses,
            "eval_history": eval_history,
            "elapsed": elapsed_before + time.perf_counter() - t_run,
        }
        if world > 1:
            checkpoint["rng_by_rank"] = rngs
        return checkpoint

    # Ctrl-C is saved when it comes between two steps, in one process (several could not
    # agree on the step to stop at): the first Ctrl-C waits for the end of the step.
    savable = last_path is not None and world == 1
    saved_step = step if saved else None  # the step the last checkpoint holds
    between_steps = True  # False from a step's first batch to its update's end
    record: dict[str, Any] = {}  # the step's metrics record, until it is written
    bar = tqdm(
        total=config.max_iter, initial=step, disable=not (config.progress and main), desc="train"
    )
    ctrl_c = _CtrlC(announce=config.progress)

    def interrupted() -> TrainingInterrupted:
        """Save the step done (when between two steps: then exactly), and say where it is."""
        nonlocal saved, saved_step
        if savable and between_steps and step > 0 and saved_step != step:
            if record:
                write_record(record)  # cut short in its evaluation: the losses still count
            if not _nonfinite_parameters(model):
                save_checkpoint(last_path, state_now([get_rng_state()]))
                saved, saved_step = str(last_path), step
        return TrainingInterrupted(step, saved, saved_step)

    ctrl_c.install(savable)
    try:
        while step < stop:
            t_step = time.perf_counter()
            between_steps = False

            # -- next batch, starting a new epoch when the loader is exhausted ---------------
            batch = next(batches, None)
            if batch is None:
                epoch, position = epoch + 1, 0
                batches = epoch_iterator(data_loader, config.seed, epoch)
                batch = next(batches, None)
                if batch is None:
                    raise ValueError(
                        f"the data loader yielded no batch in epoch {epoch} (fewer samples "
                        "than the batch size with drop_last=True?)"
                    )
            position += 1
            batch = to_device(batch, device)

            # -- forward: a dict of named losses, and their (weighted) sum ------------------
            with torch.autocast(device.type, enabled=use_amp):
                losses = _as_loss_dict(loss_fn(net, batch))
            total = _total_loss(losses, config.loss_weights)
            values = torch.stack([v.detach().float() for v in [*losses.values(), total]])
            if world > 1:  # log the mean over the processes (and stop all of them alike)
                torch.distributed.all_reduce(values)
                values /= world
            values = dict(zip([*losses, "total_loss"], values.tolist(), strict=True))
            if not all(math.isfinite(v) for v in values.values()):
                raise NonFiniteLossError(step + 1, values, checkpoint=saved)

            # -- backward and update --------------------------------------------------------
            lr = optimizer.param_groups[0]["lr"]
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            if config.grad_clip_norm is not None:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip_norm)
                values["grad_norm"] = norm.item()  # the norm before clipping
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            last_losses = values

            seconds = time.perf_counter() - t_step
            steps_this_call += 1
            seconds_this_call += seconds
            window["n"] += 1
            window["seconds"] += seconds
            for name, value in values.items():
                window["sums"][name] = window["sums"].get(name, 0.0) + value
            between_steps = True

            # -- log, evaluate, checkpoint --------------------------------------------------
            record = {}
            if step % config.log_every == 0 or step == config.max_iter:
                n = window["n"]
                record["lr"] = lr
                record.update({name: s / n for name, s in window["sums"].items()})
                record["sec_per_iter"] = window["seconds"] / n
                window = {"n": 0, "seconds": 0.0, "sums": {}}
                bar.set_postfix(loss=f"{record['total_loss']:.4g}", lr=f"{lr:.3g}")
            if evaluate_fn is not None and (
                (config.eval_every and step % config.eval_every == 0) or step == config.max_iter
            ):
                metrics = _evaluate(model, evaluate_fn)
                eval_history.append({"step": step, **metrics})
                record.update({f"eval/{name}": value for name, value in metrics.items()})
            if record:
                write_record(record)
                record = {}
            if last_path is not None and (
                (config.checkpoint_every and step % config.checkpoint_every == 0) or step == stop
            ):
                bad = _nonfinite_parameters(model)
                if bad:
                    raise NonFiniteLossError(step, values, checkpoint=saved, parameters=bad)
                # every process's random states, for an exact resume
                checkpoint = state_now(all_gather_objects(get_rng_state()))
                if main:
                    save_checkpoint(last_path, checkpoint)
                    if config.keep_checkpoints:
                        save_checkpoint(out_dir / f"model_{step:07d}.pt", checkpoint)
                saved, saved_step = str(last_path), step
            bar.update(1)
            if ctrl_c.pressed and step < stop:
                raise KeyboardInterrupt
    except KeyboardInterrupt as e:
        raise interrupted() from e
    except Exception as e:
        if not ctrl_c.pressed or isinstance(e, NonFiniteLossError):
            raise
        raise interrupted() from e  # e.g. a loader whose workers the same Ctrl-C stopped
    finally:
        ctrl_c.uninstall()
        bar.close()

    return TrainResult(
        step=step,
        losses=last_losses,
        eval_history=eval_history,
        history=history,
        wall_time_s=time.perf_counter() - t_call,
        sec_per_iter=seconds_this_call / max(steps_this_call, 1),
        out_dir=config.out_dir,
        checkpoint=saved,
    )


# ----------------------------------------------------------------------------------------
# The run folder: the rules of its life, in one place


class RunFolderError(ValueError):
    """A run folder cannot be used as asked: it is a file, another process is training
    into it, or it holds a run of other data than a resumption is given. The message
    names the folder and says what to do."""


_CHECKPOINT_NAME = re.compile(r"model_\d{7}\.pt")

#: The run folders this process holds locked: (pid, resolved path) -> [file descriptor,
#: depth]. The command line locks its folder before it writes ``run.json`` and then calls
#: :func:`train`, which locks it again: one process, one lock (the pid: a forked child
#: inherits this dict, not the right to write).
_HELD_LOCKS: dict[tuple[int, Path], list[int]] = {}


class RunFolder:
    """A training run's folder (``TrainConfig.out_dir``, ``train --out``) and the rules
    of its life, shared by :func:`train` and ``python -m rcnn_steps train``:

    - :meth:`check`: it is a folder, or can become one (no file on its path);
    - :meth:`lock`: one process at a time writes into it. A second one (another
      ``train``, an ``--overwrite``) is refused with the holder's pid instead of
      deleting the first one's files and interleaving two runs' records. The lock is an
      exclusive ``fcntl.flock`` on the folder's ``.lock`` file, which the system
      releases when its process ends, killed or crashed included, so a stale lock never
      blocks a retry (on systems without ``fcntl``, Windows, there is no lock);
    - :meth:`claim`: a fresh start never replaces a run unless told to (``overwrite``
      deletes the run's own files, and no others);
    - :meth:`describe`, :meth:`description` and :meth:`differences`: ``run.json``, what
      the run says about itself (written by the command line once the run is
      validated), and what a resumption must agree with.
    """

    DESCRIPTION = "run.json"  #: what the run says about itself (the command line writes it)
    LOCK = ".lock"  #: the file whose flock says a process is writing into the folder

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def check(self) -> None:
        """Refuse a path that is a file, or lies under one (it could never be a folder)."""
        for where in (self.path, *self.path.parents):
            if where.exists():
                if where.is_dir():
                    return
                what = "is" if where == self.path else f"lies under {where}, which is"
                raise RunFolderError(
                    f"run folder {self.path} {what} a file, not a folder: pass a folder to "
                    "keep the run in (a new one, or a run's)"
                )

    def run_files(self) -> list[Path]:
        """The files :func:`train` writes here (metrics, checkpoints) that exist."""
        files = [self.path / "metrics.jsonl", self.path / "last.pt"]
        kept = (p for p in self.path.glob("model_*.pt") if _CHECKPOINT_NAME.fullmatch(p.name))
        return [p for p in [*files, *sorted(kept)] if p.exists()]

    def holds_run(self) -> bool:
        """Whether a run lives here: its description or any of its training files."""
        return (self.path / self.DESCRIPTION).exists() or bool(self.run_files())

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder (created if missing) for this process while the block runs;
        :class:`RunFolderError`, naming the holder's pid, when another process holds it.
        Re-entrant within a process. The lock file is removed on release (a crash leaves
        it, unlocked: harmless)."""
        self.check()
        self.path.mkdir(parents=True, exist_ok=True)
        key = (os.getpid(), self.path.resolve())
        if fcntl is None or key in _HELD_LOCKS:
            _HELD_LOCKS.setdefault(key, [-1, 0])[1] += 1
        else:
            _HELD_LOCKS[key] = [self._acquire(), 1]
        try:
            yield
        finally:
            held = _HELD_LOCKS[key]
            held[1] -= 1
            if held[1] == 0:
                del _HELD_LOCKS[key]
                if held[0] >= 0:
                    # remove the file while holding it (see _acquire), and unlock before
                    # closing: forked DataLoader workers share the open file
                    (self.path / self.LOCK).unlink(missing_ok=True)
                    fcntl.flock(held[0], fcntl.LOCK_UN)
                    os.close(held[0])

    def _acquire(self) -> int:
        """Lock the folder's lock file; its file descriptor. A holder removes the file as
        it releases it, so a lock taken on a file that is no longer the one at the path
        is worth nothing: then take the new one."""
        path = self.path / self.LOCK
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                os.close(fd)
                raise RunFolderError(
                    f"run folder {self.path} is in use: process {holder} is training into it "
                    f"(it holds {path}); wait for it to end or stop it, or pick another folder"
                ) from None
            try:
                still_there = os.path.samestat(os.stat(path), os.fstat(fd))
            except FileNotFoundError:
                still_there = False
            if still_there:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())  # for a refusal's message
                return fd
            os.close(fd)

    def claim(self, resume: bool, overwrite: bool) -> None:
        """Before a fresh start: refuse a folder that holds a run's training files,
        unless ``overwrite`` (delete them) or ``resume`` (the run never reached a
        checkpoint, so its records are replaced). Also removes the temporary files of
        writes that were killed before their rename (safe: the folder is locked)."""
        temporaries = (
            ".last.pt.*.tmp",
            ".metrics.jsonl.*.tmp",
            ".model_*.pt.*.tmp",
            ".run.json.*.tmp",
        )
        for pattern in temporaries:
            for path in self.path.glob(pattern):
                path.unlink(missing_ok=True)
        if resume and (self.path / "last.pt").exists():
            return
        existing = self.run_files()
        if not existing or resume:
            return
        if not overwrite:
            names = ", ".join(p.name for p in existing[:4]) + (", ..." if len(existing) > 4 else "")
            raise FileExistsError(
                f"{self.path} already holds a training run ({names}); starting afresh would "
                "overwrite it. Pass resume=True to continue it, set TrainConfig(overwrite="
                "True) to replace it, or choose another out_dir."
            )
        for path in existing:
            path.unlink()

    def description(self) -> dict[str, Any] | None:
        """The run's ``run.json``, or None when there is none; a :class:`RunFolderError`
        naming the file when it is not a JSON object (damaged, or another file)."""
        path = self.path / self.DESCRIPTION
        if not path.exists():
            return None
        try:
            description = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            reason = f"not valid JSON ({e})"
        else:
            if isinstance(description, dict):
                return description
            reason = f"a JSON {type(description).__name__}, not the object a run writes"
        raise RunFolderError(
            f"{path}, the run's description, is {reason}: restore it (or, to train, start a "
            "new run: another --out, or --overwrite)"
        )

    def describe(self, description: Mapping[str, Any]) -> None:
        """Write ``run.json`` (atomically): call it once the run is validated, so that a
        start that fails leaves no description of a run that never was."""
        text = json.dumps(description, indent=2, default=list) + "\n"
        atomic_write_bytes(self.path / self.DESCRIPTION, text.encode())

    def differences(self, description: Mapping[str, Any], fields: Iterable[str]) -> list[str]:
        """``"field: stored -> given"`` for each dotted field (``"data.class_names"``) on
        which ``description`` differs from the stored ``run.json``, down to the keys of a
        field that is a dict (``"config.num_classes"``); compared as JSON, so a tuple
        equals its list. Empty when they agree or there is no ``run.json``."""
        stored = self.description()
        if stored is None:
            return []
        given = json.loads(json.dumps(description, default=list))
        found: list[str] = []

        def compare(field: str, old: Any, new: Any) -> None:
            if isinstance(old, Mapping) and isinstance(new, Mapping):
                for key in sorted({*old, *new}):
                    compare(f"{field}.{key}", old.get(key, "<absent>"), new.get(key, "<absent>"))
            elif old != new:
                found.append(f"{field}: {_short(old)} -> {_short(new)}")

        for field in fields:
            compare(field, _dotted(stored, field), _dotted(given, field))
        return found


def _lock_holder(fd: int) -> str:
    """The pid of the process that holds the lock on ``fd``'s file: the one it wrote
    there, else (a lock taken by other code) Linux's ``/proc/locks``, else "unknown"."""
    written = os.pread(fd, 32, 0).decode(errors="replace").strip()
    if written:
        return written
    inode = os.fstat(fd).st_ino
    try:
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()  # 1: FLOCK ADVISORY WRITE <pid> <major>:<minor>:<inode> ...
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].endswith(f":{inode}"):
                return fields[4]
    except OSError:
        pass
    return "unknown"


def _dotted(tree: Mapping[str, Any], field: str) -> Any:
    """``tree["data"]["root"]`` for ``"data.root"``; ``"<absent>"`` for a missing key."""
    value: Any = tree
    for key in field.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return "<absent>"
        value = value[key]
    return value


def _short(value: Any, width: int = 60) -> str:
    """``repr(value)``, cut to ``width`` characters: one line stays readable."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


# Fields that may change between a run and its resumption without changing the result.
_HARMLESS_FIELDS = {
    "progress",
    "overwrite",
    "out_dir",
    "device",
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
            stacklevel=4,  # _warn_config_changes, _train, train, the caller
        )
