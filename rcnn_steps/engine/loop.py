"""The loop: :func:`train`, read top to bottom (see the package docstring for the recipe
and what makes a resumption exact)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from rcnn_steps.engine.batches import epoch_iterator, to_device
from rcnn_steps.engine.checkpoint import (
    CheckpointError,
    _check_resumable,
    _warn_config_changes,
    load_checkpoint,
    model_description,
    save_checkpoint,
)
from rcnn_steps.engine.config import MEMORY_FORMATS, TrainConfig, resolve_device
from rcnn_steps.engine.distributed import all_gather_objects, process_rank
from rcnn_steps.engine.losses import LossDict, _as_loss_dict, _total_loss, detection_loss
from rcnn_steps.engine.metrics import _append_metrics, _jsonable, _truncate_metrics
from rcnn_steps.engine.optim import build_optimizer, build_scheduler
from rcnn_steps.engine.rng import get_rng_state, set_rng_state
from rcnn_steps.engine.run_folder import RunFolder
from rcnn_steps.engine.stopping import NonFiniteLossError, TrainingInterrupted, _CtrlC
from rcnn_steps.utils import seed_everything


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

    # -- the model on its device, and what updates it -------------------------------------
    model.to(device, memory_format=MEMORY_FORMATS[config.memory_format])
    net = _for_the_processes(model, device, world)
    optimizer = optimizer or build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    params = [p for group in optimizer.param_groups for p in group["params"]]

    # -- start afresh, or load the last checkpoint ---------------------------------------
    step, epoch, position = 0, 0, 0  # updates done; current epoch; batches taken from it
    elapsed_before = 0.0  # training seconds spent by earlier runs (for the "time" field)
    eval_history: list[dict[str, Any]] = []
    window = _empty_window()  # the steps since the last metrics record
    last_losses: dict[str, float] = {}
    saved: str | None = None  # the last checkpoint written (or loaded)
    rng = None
    if resume and last_path is not None and last_path.exists():
        ckpt = _restore(last_path, model, optimizer, scheduler, scaler, config, rank, world)
        step, epoch, position = ckpt["step"], ckpt["epoch"], ckpt["position"]
        elapsed_before, eval_history = ckpt["elapsed"], list(ckpt["eval_history"])
        window, last_losses, rng = ckpt["window"], ckpt["losses"], ckpt["rng"]
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

    batches = _batches_after(data_loader, config.seed, epoch, position)
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
            total, values = _forward(net, batch, loss_fn, config, device, use_amp, world)
            if not all(math.isfinite(v) for v in values.values()):
                raise NonFiniteLossError(step + 1, values, checkpoint=saved)

            # -- backward and update --------------------------------------------------------
            lr = optimizer.param_groups[0]["lr"]
            grad_norm = _update(total, optimizer, scaler, scheduler, params, config.grad_clip_norm)
            if grad_norm is not None:
                values["grad_norm"] = grad_norm  # the norm before clipping
            step += 1
            last_losses = values

            seconds = time.perf_counter() - t_step
            steps_this_call += 1
            seconds_this_call += seconds
            _add_to_window(window, values, seconds)
            between_steps = True

            # -- log, evaluate, checkpoint --------------------------------------------------
            record = {}
            if _due(step, config.log_every, config.max_iter):
                record = _window_means(window, lr)
                window = _empty_window()
                bar.set_postfix(loss=f"{record['total_loss']:.4g}", lr=f"{lr:.3g}")
            if evaluate_fn is not None and _due(step, config.eval_every, config.max_iter):
                metrics = _evaluate(model, evaluate_fn)
                eval_history.append({"step": step, **metrics})
                record.update({f"eval/{name}": value for name, value in metrics.items()})
            if record:
                write_record(record)
                record = {}
            if last_path is not None and _due(step, config.checkpoint_every, stop):
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
# The loop's steps, in the order it takes them


def _for_the_processes(model: nn.Module, device: torch.device, world: int) -> nn.Module:
    """The module the loop calls: ``model`` itself in one process; under several, ``model``
    wrapped in ``DistributedDataParallel``, which averages the gradients over the
    processes after each backward pass."""
    if world == 1:
        return model
    # find_unused_parameters: a detector may hold modules its forward never runs (the cpu
    # preset reads c3, and TinyBackbone still has c4 and c5), which DDP must skip
    return torch.nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,
    )


def _restore(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    config: TrainConfig,
    rank: int,
    world: int,
) -> dict[str, Any]:
    """Load the checkpoint at ``path`` (verified, and checked to be of a model like
    ``model``; a warning when ``config`` differs from the run's in a field that changes
    the result) into the model, optimizer, scheduler and scaler. Returns the checkpoint,
    its ``"rng"`` being this process's random states."""
    ckpt = load_checkpoint(path)
    _check_resumable(ckpt, path, model)
    _warn_config_changes(ckpt["config"], config)
    model.load_state_dict(ckpt["model"])
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(
            f"cannot resume from {path}: its optimizer state does not fit this "
            f"optimizer ({e}); resume with the optimizer the run was trained with"
        ) from None
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    by_rank = ckpt.get("rng_by_rank") or [ckpt["rng"]]
    if len(by_rank) != world:
        raise CheckpointError(
            f"cannot resume from {path} exactly: it was written by a run of "
            f"{len(by_rank)} process(es) and this one has {world}; resume with "
            f"{len(by_rank)} (torchrun --nproc_per_node {len(by_rank)}), or start afresh"
        )
    return {**ckpt, "rng": by_rank[rank]}


def _batches_after(data_loader: Iterable, seed: int, epoch: int, position: int) -> Iterator:
    """The batches of ``epoch`` (in its ``(seed, epoch)`` order) after the first
    ``position``, which a checkpointed run had taken: they are loaded and dropped."""
    batches = epoch_iterator(data_loader, seed, epoch)
    for i in range(position):
        if next(batches, None) is None:
            raise RuntimeError(
                f"the data loader yields {i} batches per epoch, fewer than the {position} "
                "the checkpointed run had taken: was the data set changed?"
            )
    return batches


def _forward(
    net: nn.Module,
    batch: Any,
    loss_fn: Callable[[nn.Module, Any], LossDict],
    config: TrainConfig,
    device: torch.device,
    use_amp: bool,
    world: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The forward pass: the loss to minimise (``sum_k w_k * L_k``, a scalar tensor) and
    the values to log, ``{term: float, ..., "total_loss": float}`` (unweighted terms;
    under several processes, their mean over the processes, so all stop alike on a
    non-finite one)."""
    with torch.autocast(device.type, enabled=use_amp):
        losses = _as_loss_dict(loss_fn(net, batch))
    total = _total_loss(losses, config.loss_weights)
    values = torch.stack([v.detach().float() for v in [*losses.values(), total]])
    if world > 1:
        torch.distributed.all_reduce(values)
        values /= world
    return total, dict(zip([*losses, "total_loss"], values.tolist(), strict=True))


def _update(
    total: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    params: list[torch.Tensor],
    grad_clip_norm: float | None,
) -> float | None:
    """Backward, one optimizer update (through the GradScaler) and one step of the
    schedule. Returns the global L2 norm of the gradients before clipping when clipping
    is on, else None."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    norm = None
    if grad_clip_norm is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip_norm).item()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return norm


def _empty_window() -> dict[str, Any]:
    """The steps since the last metrics record: how many, their seconds, each value's sum
    (a checkpoint stores it, so a resumed run's first record averages the same steps)."""
    return {"n": 0, "seconds": 0.0, "sums": {}}


def _add_to_window(window: dict[str, Any], values: dict[str, float], seconds: float) -> None:
    window["n"] += 1
    window["seconds"] += seconds
    for name, value in values.items():
        window["sums"][name] = window["sums"].get(name, 0.0) + value


def _window_means(window: dict[str, Any], lr: float) -> dict[str, Any]:
    """A metrics record's training fields: the learning rate of the last step, each
    value's mean over the window's steps and their mean seconds (``sec_per_iter``)."""
    n = window["n"]
    record = {"lr": lr}
    record.update({name: s / n for name, s in window["sums"].items()})
    record["sec_per_iter"] = window["seconds"] / n
    return record


def _due(step: int, every: int, last: int) -> bool:
    """Whether something done every ``every`` steps (0: only at the end) is due after
    ``step``: a multiple of ``every``, or the ``last`` step."""
    return bool(every and step % every == 0) or step == last
