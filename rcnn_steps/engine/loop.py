"""The loop: :func:`train`, read top to bottom (see the package docstring for the recipe
and what makes a resumption exact)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping
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
from rcnn_steps.engine.config import TrainConfig, resolve_device
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
