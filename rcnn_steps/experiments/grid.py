"""Running a grid of training runs: in parallel, resumable, with a plan.

An ablation table is a few settings times a few seeds, each one training run of
:func:`rcnn_steps.experiments.runner.run_setting` (minutes on a CPU). This module runs such a set of
runs and keeps them:

- **one file per run** in a cache folder (``results/runs/<key>.json``, written
  atomically when the run ends), named by a hash of everything that decides its result
  (preset, overrides, method, training images, schedule, seed, evaluation images, data):
  a run that two tables share (the baseline of several Mask R-CNN tables) is trained
  once, and a grid killed half-way resumes with the runs it has not finished;
- **worker processes**, by default one per core with one thread each: on a 2-core
  machine that was the fastest way to run many small jobs (two jobs of two threads each
  oversubscribe the cores and slowed torch down up to 20x; one job of two threads leaves
  half the time on the table between ops). Not always: Table 2(a)'s C4 runs took
  1.9-2.4 s per iteration as one of two one-thread workers, and 0.54 s alone on two
  threads (``threads_per_worker``, the C4 twin of chapter 08), so a single long run, and
  C4 runs, may be faster one at a time;
- **a plan before it starts**: the runs to do, those already cached, and the estimated
  wall time from the cached runs of the same preset (or the seconds its record gives),
  then a progress bar with the time left.

:func:`summarise` turns runs into per-setting statistics over the seeds (mean, min, max,
sample std) for the box, mask and keypoint metrics. The tables themselves (which settings,
the paper's numbers) are defined in :mod:`rcnn_steps.experiments.ablations`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rcnn_steps.detectors.config import flat_overrides
from rcnn_steps.experiments import preset, schedule
from rcnn_steps.experiments.datasets import image_scale, resolve_root
from rcnn_steps.utils import atomic_write_bytes, code_diff_hash, git_commit

__all__ = [
    "RunSpec",
    "estimate_seconds",
    "load_cached",
    "run_specs",
    "summarise",
    "with_provenance",
]

#: The plan's guess for a run of a preset whose record gives no ``grid_run_seconds``.
UNMEASURED_RUN_SECONDS = 600.0

#: The metric families a run may hold, as (run key, summary prefix).
METRIC_FAMILIES = (("metrics", ""), ("segm_metrics", "mask_"), ("keypoint_metrics", "kp_"))
#: Metrics copied from each run into the summary (those a run has).
SUMMARY_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "AR")
#: Per-run timings also summarised over the seeds.
SUMMARY_TIMINGS = ("seconds_per_image", "network_seconds_per_image", "wall_time_s")


@dataclass(frozen=True)
class RunSpec:
    """One training run: :func:`rcnn_steps.experiments.runner.run_setting`'s arguments."""

    name: str
    seed: int
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)
    method: str = "rpn"
    num_train_images: int | None = None
    max_iter: int | None = None
    num_eval_images: int | None = None
    root: str | None = None
    timing_threads: int | None = None
    #: where to keep the run's checkpoint and metrics.jsonl (not part of the key: keeping
    #: a run does not change its result); None keeps nothing
    out_dir: str | None = None
    #: TrainConfig.memory_format (not part of the key: like the machine, it changes only
    #: the float rounding)
    memory_format: str = "contiguous"

    def key(self) -> str:
        """The cache key: a hash of everything that decides the run's result (not its
        name: two tables' settings with the same config share the run)."""
        decisive = {
            "preset": self.preset,
            # keyed by the stored (flat) names: {"mask.loss": ...} is {"mask_loss": ...}
            "overrides": _canonical(flat_overrides(self.overrides)),
            "method": self.method,
            "num_train_images": self.num_train_images,
            "schedule": schedule(self.preset, self.max_iter),
            "seed": int(self.seed),
            "num_eval_images": self.num_eval_images,
            "root": self.root,
        }
        text = json.dumps(decisive, sort_keys=True)
        return f"{self.preset}-s{self.seed}-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def _canonical(value: Any) -> Any:
    """JSON's view of a value (tuples become lists), so equal configs hash equally."""
    return json.loads(json.dumps(value, sort_keys=True))


def load_cached(spec: RunSpec, cache_dir: Path) -> dict[str, Any] | None:
    path = Path(cache_dir) / f"{spec.key()}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def estimate_seconds(spec: RunSpec, cache_dir: Path) -> float:
    """Estimated wall time of one run (one worker): the median of the cached runs of the
    same preset and schedule on the same data set; else those on the book's set, or the
    preset's record's ``grid_run_seconds`` (measured at its full schedule;
    :mod:`rcnn_steps.experiments`) scaled by the schedule, either times the pixels a
    scaled set's images have more (4x at 256 px:
    :func:`~rcnn_steps.experiments.datasets.image_scale`)."""
    iters = schedule(spec.preset, spec.max_iter)["max_iter"]
    times: dict[str | None, list[float]] = {}
    for path in Path(cache_dir).glob(f"{spec.preset}-s*.json"):
        try:
            run = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if run.get("max_iter") == iters and "wall_time_s" in run:
            root = (run.get("spec") or {}).get("root")
            times.setdefault(root, []).append(run["wall_time_s"])
    if spec.root in times:
        return float(statistics.median(times[spec.root]))
    pixels = image_scale(spec.root) ** 2
    if None in times:
        return pixels * float(statistics.median(times[None]))
    record = preset(spec.preset)
    full = record.schedule["max_iter"]
    seconds = record.grid_run_seconds
    return pixels * (UNMEASURED_RUN_SECONDS if seconds is None else seconds) * iters / full


#: how often (seconds) a grid worker checks that the grid that started it is still there
ORPHAN_CHECK_SECONDS = 5.0


def exit_when_orphaned(parent: int, every: float = ORPHAN_CHECK_SECONDS) -> None:
    """Start a daemon thread that ends this process when ``parent`` (a process id) is no
    longer its parent. A grid killed with SIGTERM or SIGKILL (``pkill``, a closed
    terminal) cannot stop its workers; without this they train on for up to an hour each,
    on cores the next grid needs, and their results are lost: the grid writes the cache,
    not the worker."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="exit-when-orphaned", daemon=True).start()


def _worker_init(threads: int, parent: int | None = None) -> None:
    import torch

    torch.set_num_threads(threads)
    if parent is not None:
        exit_when_orphaned(parent)


def _run_one(spec: RunSpec) -> dict[str, Any]:
    """One run in a worker: :func:`rcnn_steps.experiments.runner.run_setting` plus
    :func:`with_provenance`."""
    # local: read at call time, where tests/test_ablations.py replaces runner.run_setting
    from rcnn_steps.experiments.runner import run_setting

    record = run_setting(
        spec.name,
        dict(spec.overrides),
        spec.seed,
        spec.preset,
        spec.max_iter,
        method=spec.method,
        num_train_images=spec.num_train_images,
        root=resolve_root(spec.root),  # a set's name: found in this machine's data folder
        num_eval_images=spec.num_eval_images,
        timing_threads=spec.timing_threads,
        out_dir=spec.out_dir,
        memory_format=spec.memory_format,
    )
    return with_provenance(spec, record)


def with_provenance(spec: RunSpec, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` (one run) with the code's provenance (the commit it ran from), the torch
    threads it trained on (they change its speed, not what it computes beyond float
    rounding) and its ``spec``: what every run of the cache holds, whoever ran it."""
    import torch

    record["train_threads"] = torch.get_num_threads()
    record["commit"] = git_commit()
    record["code_diff_sha256"] = code_diff_hash()
    record["spec"] = _canonical(asdict(spec))
    return record


def _format_seconds(seconds: float) -> str:
    minutes = int(round(seconds / 60))
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def run_specs(
    specs: Sequence[RunSpec],
    cache_dir: str | Path,
    *,
    workers: int = 2,
    threads_per_worker: int = 1,
    progress: bool = True,
    log: Callable[[str], None] = print,
    on_result: Callable[[RunSpec, dict[str, Any]], None] | None = None,
    runner: Callable[[RunSpec], dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run every spec not already in ``cache_dir`` and return ``{key: run}`` for all of
    them (cached and new). ``workers`` processes run in parallel, each with
    ``threads_per_worker`` torch threads; ``workers=0`` runs them here, one after
    another (for tests and debugging). Each finished run is written at once, so a kill
    loses only the runs in flight; ``on_result(spec, run)`` is called after each (the
    ablation tables rewrite their files there). A failed run is reported and the others
    go on; a ``RuntimeError`` naming the failures is raised at the end. ``runner(spec)``
    runs one spec (default: :func:`rcnn_steps.experiments.runner.run_setting` with
    :func:`with_provenance`); another, e.g. :func:`rcnn_steps.experiments.ladder.run_rung` for runs
    that are not one detector config, must be a module-level function (workers import
    it) and return a record with ``metrics`` and ``wall_time_s``."""
    from tqdm.auto import tqdm

    if threads_per_worker < 1:
        raise ValueError(
            f"threads_per_worker must be at least 1 (torch threads of each worker), got "
            f"{threads_per_worker}"
        )
    run_one = runner or _run_one
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    unique: dict[str, RunSpec] = {}
    for spec in specs:
        unique.setdefault(spec.key(), spec)
    done = {k: r for k, s in unique.items() if (r := load_cached(s, cache_dir)) is not None}
    todo = [s for k, s in unique.items() if k not in done]
    estimates = {s.key(): estimate_seconds(s, cache_dir) for s in todo}
    parallel = max(1, workers)
    total = sum(estimates.values()) / parallel
    log(
        f"plan: {len(unique)} runs ({len(specs)} table entries), {len(done)} already in "
        f"{cache_dir}, {len(todo)} to do on {parallel} worker(s) x {threads_per_worker} "
        f"thread(s): about {_format_seconds(total)}"
    )
    cores, busy = os.cpu_count() or 1, min(len(todo), parallel)
    if busy * threads_per_worker > cores:
        log(
            f"warning: {busy} worker(s) x {threads_per_worker} thread(s) "
            f"oversubscribe {cores} core(s), which slowed torch down up to 20x here; use one "
            f"thread per worker, or --workers 1 --threads-per-worker {cores} for one run"
        )
    if not todo:
        return done

    def finish(spec: RunSpec, run: dict[str, Any]) -> None:
        path = cache_dir / f"{spec.key()}.json"
        atomic_write_bytes(path, (json.dumps(run, indent=1, sort_keys=True) + "\n").encode())
        done[spec.key()] = run
        if on_result is not None:
            on_result(spec, run)

    failures: list[str] = []
    left = dict(estimates)
    bar = tqdm(total=len(todo), disable=not progress, desc="runs", unit="run")

    def report(spec: RunSpec, run: dict[str, Any] | None, error: BaseException | None) -> None:
        left.pop(spec.key(), None)
        if error is not None:
            failures.append(f"{spec.name}/seed{spec.seed}: {error!r}")
            log(f"FAILED {spec.name}/seed{spec.seed}: {error!r}")
        else:
            m = run["metrics"]
            extra = "".join(
                f" {name} AP {run[key]['AP']:.3f}"
                for key, name in (("segm_metrics", "mask"), ("keypoint_metrics", "kp"))
                if key in run
            )
            log(
                f"{spec.name}/seed{spec.seed}: box AP {m['AP']:.3f}{extra} in "
                f"{run['wall_time_s']:.0f} s"
            )
        bar.update(1)
        bar.set_postfix_str(f"~{_format_seconds(sum(left.values()) / parallel)} left", refresh=True)

    try:
        if workers <= 0:
            import torch

            before = torch.get_num_threads()
            torch.set_num_threads(threads_per_worker)
            try:
                for spec in todo:
                    try:
                        run = run_one(spec)
                    except Exception as error:  # noqa: BLE001  (reported, the grid goes on)
                        report(spec, None, error)
                        continue
                    finish(spec, run)
                    report(spec, run, None)
            finally:
                torch.set_num_threads(before)
        else:
            import multiprocessing

            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                workers,
                mp_context=context,
                initializer=_worker_init,
                initargs=(threads_per_worker, os.getpid()),
            ) as pool:
                # largest first: the last runs to finish are then the short ones
                order = sorted(todo, key=lambda s: -estimates[s.key()])
                futures = {pool.submit(run_one, spec): spec for spec in order}
                pending = set(futures)
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        spec = futures[future]
                        error = future.exception()
                        if error is None:
                            finish(spec, future.result())
                        report(spec, done.get(spec.key()), error)
    finally:
        bar.close()
    if failures:
        raise RuntimeError(f"{len(failures)} run(s) failed: " + "; ".join(failures))
    return done


# ----------------------------------------------------------------------------------------
# Statistics over seeds


def _spread(values: list[float]) -> dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {
        "mean": round(mean, 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "std": round(std, 4),
    }


def summarise(
    grid: dict[str, dict[str, Any]], runs: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per setting of ``grid``, over the seeds run so far: ``{"paper", "label", "seeds",
    "n", metric: {"mean", "min", "max", "std"}}``. Box metrics are named as they are
    (``AP``, ``AP50``, ...), mask metrics with a ``mask_`` prefix and keypoint metrics
    with ``kp_`` (:data:`METRIC_FAMILIES`), plus the timings. ``runs`` are keyed by
    :func:`rcnn_steps.experiments.ablations.run_key` and carry their setting's ``name``. ``std`` is
    the sample standard deviation (0 for one seed)."""
    summary: dict[str, dict[str, Any]] = {}
    for name, setting in grid.items():
        done = sorted((r for r in runs.values() if r["name"] == name), key=lambda r: r["seed"])
        entry: dict[str, Any] = {
            key: setting[key] for key in setting if key.startswith("paper") or key == "label"
        }
        entry.update(seeds=[r["seed"] for r in done], n=len(done))
        for family, prefix in METRIC_FAMILIES:
            for metric in SUMMARY_METRICS:
                values = [r[family][metric] for r in done if metric in r.get(family, {})]
                if values:
                    entry[prefix + metric] = _spread(values)
        for timing in SUMMARY_TIMINGS:
            values = [r[timing] for r in done if timing in r]
            if values:
                entry[timing] = _spread(values)
        summary[name] = entry
    return summary


def default_workers() -> int:
    """One worker per core."""
    return max(1, os.cpu_count() or 1)
