"""The evolution as a controlled ladder: one change per rung, the same data and budget.

The evolution table (chapter 08) keeps each chapter's own row, each trained as its
chapter trained it. The ladder is the controlled comparison beside it: R-CNN, then one
idea at a time, up to Mask R-CNN, every rung on the same training and val images, the
same schedule and batch, and 3 seeds (GUIDE section 7):

==================  ===========================================================  ========
rung                the one change from the rung before                          method
==================  ===========================================================  ========
``rcnn``            R-CNN: selective search, every proposal warped to 32 x 32     rcnn
                    and classified by its own CNN pass (chapter 02)
``fast_rcnn``       the same proposals read off one shared feature map with      ss
                    RoIPool (Fast R-CNN, chapter 03)
``roialign``        RoIAlign instead of RoIPool (chapter 06)                     ss
``faster_rcnn``     proposals from its own RPN instead of selective search       rpn
                    (Faster R-CNN, chapter 04)
``fpn``             a feature pyramid instead of the single stride-8 map (05)    rpn
``mask_rcnn``       the mask branch (Mask R-CNN, chapter 07)                     rpn
``mask_rcnn_long``  4x the iterations (:data:`~rcnn_steps.experiments.ablations.LONG_MAX_ITER`) rpn
==================  ===========================================================  ========

Every rung from ``fast_rcnn`` on is an override of one preset, ``cpu_mask``
(:data:`LADDER_PRESET`), from a base that is the final model of chapter 08 without its
branches (:data:`LADDER_BASE`: no keypoints, the exact mask pixel convention, which does
nothing until the mask branch is on), so consecutive rungs' configs differ by exactly the
field(s) each rung names (:attr:`Rung.changes`; ``size_divisible`` follows ``fpn``), or
not at all where the change is the method (selective search vs RPN). ``mask_rcnn`` *is*
the final model's config and ``mask_rcnn_long`` its run at the final budget: the same
runs (same cache keys) as ``mrcnn_pixels``'s ``exact`` and ``mrcnn_long``'s
``roialign`` of :mod:`rcnn_steps.experiments.ablations` on the 128 px set, reused from the run
cache.

**The budget rule.** Every rung trains for the preset's schedule (1500 iterations, lr
0.05 with 50 warm-up steps, x0.1 at 1200, momentum 0.9, gradients clipped at norm 10)
on all 1000 train images, and is tested on all 200 val images, seconds per image
timed on one thread. A detector's iteration is a batch of 8 images with 64 RoIs sampled
from each, a quarter foreground (IoU >= 0.5): 512 RoIs. R-CNN cannot take images in a
batch (each window is its own CNN input), so its iteration is 512 warped windows
(:func:`rcnn_windows_per_iteration`: the detectors' images per batch x RoIs per image)
drawn from the windows of all the training images, the same quarter foreground at the
same IoU, on the same schedule (:func:`rcnn_steps.experiments.rcnn.train_rcnn` with ``schedule``);
its CNN is chapter 02's (32 px crops, width 16), and its test keeps its paper's NMS at
0.3 and box regressor targets at IoU >= 0.6. Equal iterations and batches are not equal
arithmetic: each run records its wall-clock (``wall_time_s``, ``train_seconds``,
``train_sec_per_iter``) beside its AP. Selective search's proposals are computed once
per data set and cached (:func:`prepare_proposals`); the selective-search rungs' seconds
per image add the cache's measured selective-search seconds per val image to the
network's.

**Data.** The same ladder runs on any synthetic set: the book's 128 px set (``--data
128``), the same scenes drawn at 256 px (``--data 256``, ``python -m rcnn_steps.data
synth --size 256 --layout-size 128``) or any folder (``--root``, e.g. a harder scene
variant), each writing its own file, ``results/ladder_<tag>.json`` (:func:`data_tag`:
``ladder_128.json``, ``ladder_256.json``, ``ladder_256-hard.json``). Runs are cached in
``results/runs/`` by :class:`rcnn_steps.experiments.grid.RunSpec`'s key; a set under the data folder
is keyed by its folder name, not by where the data folder lies on this machine
(:func:`data_root`), so a grid resumes from another checkout. On a set drawn at ``k``
times the book's resolution the detectors' fields in image pixels (anchors, FPN's s0:
:data:`PIXEL_FIELDS`) are ``k`` times the preset's (:func:`scaled_overrides`), as the
papers set theirs for their images' size: each object keeps its level and its anchors,
and only its size in feature cells grows, which is what the scale test asks.

The rungs are :mod:`rcnn_steps.experiments.ladder_rungs`' records and one rung's run is
:mod:`rcnn_steps.experiments.ladder_runner`'s (both re-exported here); this module makes
the ladder's runs, keeps its results file, measures and plans it, and is its command.

Commands::

    python -m rcnn_steps.ladder measure --data 128 256   # s/iteration of every rung
    python -m rcnn_steps.ladder plan --data 128 256      # runs, hours, core-hours
    python -m rcnn_steps.ladder run --data 128           # the grid (resumes when rerun)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rcnn_steps.experiments.datasets import (
    DATA_SETS,
    PIXEL_FIELDS,
    data_root,
    data_tag,
    image_scale,
    scaled_overrides,
)
from rcnn_steps.experiments.grid import RunSpec, load_cached, run_specs, summarise
from rcnn_steps.experiments.ladder_rungs import (
    _SINGLE_MAP,  # noqa: F401 (re-exported: its old home)
    BUDGET_RULE,
    LADDER,
    LADDER_BASE,
    LADDER_EVAL_IMAGES,
    LADDER_PRESET,
    LADDER_SEEDS,
    RCNN_OVERRIDES,  # noqa: F401 (re-exported: its old home)
    RUNGS,
    Rung,
    config_diff,
    rcnn_windows_per_iteration,
)
from rcnn_steps.experiments.ladder_runner import prepare_proposals, run_rcnn_setting, run_rung
from rcnn_steps.experiments.paper_tables import LONG_MAX_ITER
from rcnn_steps.experiments.runner import detector_config, feeding, schedule, thread_count
from rcnn_steps.utils import (
    CommandError,
    add_debug_argument,
    read_results,
    results_dir,
    run_command,
    write_results,
)

__all__ = [
    "BUDGET_RULE",
    "LADDER",
    "LADDER_BASE",
    "LADDER_PRESET",
    "PIXEL_FIELDS",
    "Rung",
    "config_diff",
    "data_root",
    "data_tag",
    "image_scale",
    "ladder_specs",
    "main",
    "measure",
    "plan",
    "prepare_proposals",
    "rcnn_windows_per_iteration",
    "read_ladder_results",
    "run_ladder",
    "run_rcnn_setting",
    "run_rung",
    "scaled_overrides",
]


# ----------------------------------------------------------------------------------------
# Runs


def ladder_specs(
    root: str | None,
    seeds: Sequence[int] = LADDER_SEEDS,
    *,
    rungs: Sequence[str] | None = None,
    preset: str = LADDER_PRESET,
    max_iter: int | None = None,
    long_max_iter: int | None = None,
    num_eval_images: int | None = LADDER_EVAL_IMAGES,
    num_train_images: int | None = None,
) -> list[RunSpec]:
    """The runs of the ladder on ``root`` (a :func:`data_root` value), rung by rung and
    seed by seed. ``max_iter`` shortens every rung (tests), ``long_max_iter`` the long
    rung (default :data:`~rcnn_steps.experiments.ablations.LONG_MAX_ITER`)."""
    chosen = [RUNGS[name] for name in rungs] if rungs is not None else list(LADDER)
    scale = image_scale(root)
    specs = []
    for rung in chosen:
        iters = max_iter
        if rung.max_iter is not None:
            iters = long_max_iter if long_max_iter is not None else rung.max_iter
        for seed in seeds:
            specs.append(
                RunSpec(
                    name=rung.name,
                    seed=int(seed),
                    preset=preset,
                    overrides=(
                        dict(rung.overrides)
                        if rung.method == "rcnn"  # crops: no field in image pixels
                        else scaled_overrides(rung.overrides, scale, preset)
                    ),
                    method=rung.method,
                    num_train_images=num_train_images,
                    max_iter=iters,
                    num_eval_images=num_eval_images,
                    root=root,
                    timing_threads=1,
                )
            )
    return specs


def _results(specs, runs, root, preset, long_max_iter, num_eval_images) -> dict[str, Any]:
    names = list(dict.fromkeys(s.name for s in specs))
    settings = {
        name: {
            "label": RUNGS[name].label,
            "change": RUNGS[name].change,
            "method": RUNGS[name].method,
            # as trained: a detector rung's pixel fields scaled with the images
            "overrides": json.loads(json.dumps(next(s.overrides for s in specs if s.name == name))),
            "changes": json.loads(json.dumps(RUNGS[name].changes)),
            "max_iter": next(s.max_iter for s in specs if s.name == name)
            or schedule(preset)["max_iter"],
            "paper": None,
        }
        for name in names
    }
    by_name = {f"{r['name']}/seed{r['seed']}": r for r in runs}
    rule = BUDGET_RULE.format(
        preset=preset,
        max_iter=schedule(preset)["max_iter"],
        long=long_max_iter,
        eval=num_eval_images,
        images=feeding(preset)["batch_size"],
        rois=detector_config(preset).roi_batch_size_per_image,
        windows=rcnn_windows_per_iteration(preset),
    )
    scale = image_scale(root)
    if scale != 1:
        rule += (
            f"; images drawn at {scale}x the book's resolution, so the detectors' "
            f"{', '.join(PIXEL_FIELDS)} are {scale}x the preset's (the same levels and "
            "anchors per object, each object larger in cells)"
        )
    return {
        "table": "ladder",
        "data": data_tag(root),
        "root": root,
        "preset": preset,
        "max_iter": schedule(preset)["max_iter"],
        "long_max_iter": long_max_iter,
        "num_eval_images": num_eval_images,
        "budget": rule,
        "order": names,
        "settings": settings,
        "runs": dict(sorted(by_name.items())),
        "summary": summarise(settings, {k: r for k, r in by_name.items()}),
    }


def run_ladder(
    root: str | None,
    seeds: Sequence[int] = LADDER_SEEDS,
    out: str | Path | None = None,
    *,
    rungs: Sequence[str] | None = None,
    preset: str = LADDER_PRESET,
    max_iter: int | None = None,
    long_max_iter: int | None = None,
    num_eval_images: int | None = LADDER_EVAL_IMAGES,
    num_train_images: int | None = None,
    workers: int = 1,
    threads_per_worker: int = 1,
    cache_dir: str | Path | None = None,
    timing: dict[str, Any] | None = None,
    progress: bool = False,
    log=print,
) -> dict[str, Any]:
    """Run the ladder on ``root`` (a :func:`data_root` value) and keep
    ``results/ladder_<tag>.json`` (:func:`data_tag`) up to date after every run. The runs
    go through :func:`rcnn_steps.experiments.grid.run_specs` (cached in ``cache_dir``, default
    ``results/runs``: a killed grid resumes, runs shared with other grids are reused),
    seed by seed (every rung of seed 0 first), the long rung last. ``timing``
    (:func:`measure`'s) prints the plan first. Returns the file's ``results``."""
    started = time.time()
    out = Path(out) if out is not None else results_dir() / f"ladder_{data_tag(root)}.json"
    cache_dir = Path(cache_dir) if cache_dir is not None else results_dir() / "runs"
    long_iters = long_max_iter if long_max_iter is not None else LONG_MAX_ITER
    specs = ladder_specs(root, seeds, rungs=rungs, preset=preset, max_iter=max_iter,
                         long_max_iter=long_iters, num_eval_images=num_eval_images,
                         num_train_images=num_train_images)  # fmt: skip
    if timing is not None:
        log(format_plan(plan(specs, timing, cache_dir)))

    def write() -> dict[str, Any]:
        # a run shared with another grid was cached under that grid's setting name
        # (mrcnn_pixels' "exact", mrcnn_long's "roialign"): file it under the rung's
        runs = [dict(r, name=s.name) for s in specs if (r := load_cached(s, cache_dir)) is not None]
        results = _results(specs, runs, root, preset, long_iters, num_eval_images)
        write_results(out, results, preset=preset, seeds=sorted({int(s) for s in seeds}),
                      started=started)  # fmt: skip
        return results

    if any(s.method in ("rcnn", "selective_search") for s in specs):
        prepare_proposals(root, num_train_images, num_eval_images, log=log)
    write()
    groups = [[s for s in specs if s.seed == seed and RUNGS[s.name].max_iter is None]
              for seed in seeds]  # fmt: skip
    groups.append([s for s in specs if RUNGS[s.name].max_iter is not None])
    failures = []
    for group in groups:
        if not group:
            continue
        try:
            run_specs(group, cache_dir, workers=workers, threads_per_worker=threads_per_worker,
                      progress=progress, log=log, on_result=lambda _s, _r: write(),
                      runner=run_rung)  # fmt: skip
        except RuntimeError as error:  # reported; the other seeds go on
            failures.append(str(error))
    results = write()
    log(f"wrote {out}")
    if failures:
        raise RuntimeError("; ".join(failures))
    return results


def read_ladder_results(path: str | Path) -> dict[str, Any]:
    """A ladder's results file in the shape of
    :func:`rcnn_steps.experiments.ablations.read_grid_results` (``order, labels, paper, metric,
    family, summary, runs, settings, preset, max_iter, num_eval_images, provenance``,
    plus ``data``, ``budget`` and ``changes``), so a chapter shows it, and compares two
    rungs with :func:`rcnn_steps.experiments.ablations.compare_settings`, as it does a table. Rungs
    not run yet are in ``summary`` with ``n`` 0."""
    payload = read_results(path)
    results = payload["results"]
    if results.get("table") != "ladder":
        raise ValueError(f"{path} holds {results.get('table')!r}, not a ladder's results")
    order = [name for name in RUNGS if name in results["settings"]]
    return {
        "table": "ladder",
        "data": results["data"],
        "budget": results["budget"],
        "order": order,
        "labels": {name: RUNGS[name].label for name in order},
        "changes": {name: RUNGS[name].change for name in order},
        "paper": {name: None for name in order},
        "paper_metric": None,
        "metric": "AP",
        "family": "",
        "summary": {**{n: {"seeds": [], "n": 0} for n in order}, **results["summary"]},
        "runs": results["runs"],
        "settings": results["settings"],
        "preset": results["preset"],
        "max_iter": results["max_iter"],
        "num_eval_images": results["num_eval_images"],
        "provenance": payload["provenance"],
    }


# ----------------------------------------------------------------------------------------
# Measuring and planning


def measure(
    root: str | None,
    *,
    iters: int = 20,
    eval_images: int = 5,
    train_images: int = 64,
    rungs: Sequence[str] | None = None,
    preset: str = LADDER_PRESET,
    log=print,
) -> dict[str, Any]:
    """Seconds of each rung on one thread: ``iters`` training iterations (on the first
    ``train_images`` images: an iteration's cost does not depend on how many there are)
    and ``eval_images`` val images through the rung's own runner. Returns ``{"root",
    "threads", "iters", "rungs": {name: {"sec_per_iter", "setup_s",
    "eval_s_per_image", "proposal_s_per_image"}}}``; the long rung is the mask rung's
    iterations. The selective-search caches are made (or extended) for the images used."""
    import torch

    names = [n for n in (rungs or list(RUNGS)) if RUNGS[n].max_iter is None]
    prepare_proposals(root, train_images, eval_images, log=log)
    out: dict[str, Any] = {"root": root, "threads": 1, "iters": iters, "rungs": {}}
    with thread_count(1):
        for name in names:
            rung = RUNGS[name]
            spec = RunSpec(name, 0, preset, dict(rung.overrides), rung.method, train_images,
                           iters, eval_images, root, timing_threads=1)  # fmt: skip
            record = run_rung(spec)
            sec_per_iter = record["train_sec_per_iter"]
            out["rungs"][name] = {
                "sec_per_iter": round(sec_per_iter, 4),
                "setup_s": round(max(0.0, record["train_seconds"] - iters * sec_per_iter), 2),
                "eval_s_per_image": round(record["eval_seconds"] / record["num_eval_images"], 4),
                "proposal_s_per_image": record["proposal_seconds_per_image"],
                "torch_threads": torch.get_num_threads(),
            }
            per_image = out["rungs"][name]["eval_s_per_image"]
            log(f"  {name}: {sec_per_iter:.3f} s/iteration, {per_image:.3f} s per val image")
    return out


def estimate_run_seconds(spec: RunSpec, timing: dict[str, Any]) -> float:
    """One run's seconds from :func:`measure`'s timing: set-up, the schedule's iterations
    and the evaluation of its val images (the long rung at the mask rung's rates)."""
    name = "mask_rcnn" if spec.name == "mask_rcnn_long" else spec.name
    t = timing["rungs"][name]
    iters = schedule(spec.preset, spec.max_iter)["max_iter"]
    return (
        t["setup_s"]
        + iters * t["sec_per_iter"]
        + (spec.num_eval_images or 0) * t["eval_s_per_image"]
    )


def plan(specs: Sequence[RunSpec], timing: dict[str, Any], cache_dir: str | Path) -> dict:
    """The plan of a ladder: per rung, the runs to do (those not in ``cache_dir``), the
    estimated seconds of one and of all, on one thread; and the total in core-hours."""
    rows: dict[str, dict[str, Any]] = {}
    for spec in specs:
        row = rows.setdefault(spec.name, {"runs": 0, "cached": 0, "run_s": 0.0, "todo_s": 0.0,
                                          "cached_wall_s": []})  # fmt: skip
        row["runs"] += 1
        seconds = estimate_run_seconds(spec, timing)
        row["run_s"] = seconds
        cached = load_cached(spec, cache_dir)
        if cached is not None:
            row["cached"] += 1
            row["cached_wall_s"].append(cached.get("wall_time_s"))
        else:
            row["todo_s"] += seconds
    total = sum(r["todo_s"] for r in rows.values())
    return {"root": timing.get("root"), "tag": data_tag(timing.get("root")), "rungs": rows,
            "todo_s": total, "core_hours": total / 3600}  # fmt: skip


def format_plan(p: dict[str, Any]) -> str:
    lines = [f"ladder plan, data {p['tag']} (one thread per run):"]
    lines.append(f"  {'rung':<16} {'runs':>4} {'cached':>6} {'h per run':>9} {'h to do':>8}")
    for name, r in p["rungs"].items():
        walls = [w for w in r["cached_wall_s"] if w]
        seen = f"  (cached runs took {statistics.median(walls) / 3600:.2f} h)" if walls else ""
        lines.append(
            f"  {name:<16} {r['runs']:>4} {r['cached']:>6} {r['run_s'] / 3600:>9.2f} "
            f"{r['todo_s'] / 3600:>8.2f}{seen}"
        )
    lines.append(f"  total to do: {p['core_hours']:.1f} core-hours "
                 f"({p['core_hours']:.1f} h on one worker)")  # fmt: skip
    return "\n".join(lines)


def timing_path(root: str | None) -> Path:
    return results_dir() / f"ladder_timing_{data_tag(root)}.json"


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """``python -m rcnn_steps.ladder {measure, plan, run} --data 128 | 256 | --root DIR``
    (``prog``: the name its help and errors show; ``python -m rcnn_steps ladder`` passes
    its own)."""
    parser = argparse.ArgumentParser(prog=prog or "python -m rcnn_steps.ladder")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "measure": "seconds per iteration and per val image of every rung, one thread "
        "(writes results/ladder_timing_<tag>.json)",
        "plan": "the runs to do and their core-hours, from the measured timing and the cache",
        "run": "run the ladder (resumes: cached runs are kept); writes results/ladder_<tag>.json",
    }
    parsers = {}
    for name, text in commands.items():
        p = sub.add_parser(name, help=text)
        p.add_argument("--data", nargs="+", choices=tuple(DATA_SETS), default=None)
        p.add_argument("--root", type=Path, nargs="+", default=None, help="data folders")
        p.add_argument("--rungs", nargs="+", choices=list(RUNGS), default=None)
        parsers[name] = p
    parsers["measure"].add_argument("--iters", type=int, default=20)
    for name in ("plan", "run"):
        parsers[name].add_argument("--seeds", type=int, nargs="+", default=list(LADDER_SEEDS))
    parsers["run"].add_argument("--workers", type=int, default=1)
    parsers["run"].add_argument("--threads-per-worker", type=int, default=1)
    parsers["run"].add_argument("--out", type=Path, default=None,
                                help="default results/ladder_<tag>.json")  # fmt: skip
    add_debug_argument(parser, *parsers.values())
    args = parser.parse_args(argv)
    if not args.data and not args.root:
        parser.error("give --data 128 / 256 or --root DIR")
    if args.command == "run" and len(args.data or []) + len(args.root or []) > 1:
        parser.error("run one ladder at a time (one --data or --root)")

    def command(args: argparse.Namespace) -> int:
        for folder in args.root or []:
            if not folder.is_dir():
                raise CommandError(f"--root {folder} is not a folder; give a data set's folder")
        return _command(parser, args)

    return run_command(command, args)


def _command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    roots = [data_root(data=d) for d in args.data or []]
    roots += [data_root(root=r) for r in args.root or []]
    total = 0.0
    for root in roots:
        if args.command == "measure":
            print(f"measuring the ladder on {data_tag(root)} ({args.iters} iterations, 1 thread)")
            timing = measure(root, iters=args.iters, rungs=args.rungs)
            write_results(timing_path(root), timing, preset=LADDER_PRESET, seeds=[0])
            print(f"wrote {timing_path(root)}")
            continue
        timing = None
        if timing_path(root).exists():
            timing = read_results(timing_path(root))["results"]
        elif args.command == "plan":
            parser.error(f"no {timing_path(root)}: run `{parser.prog} measure`")
        if args.command == "plan":
            specs = ladder_specs(root, args.seeds, rungs=args.rungs)
            p = plan(specs, timing, results_dir() / "runs")
            print(format_plan(p))
            total += p["core_hours"]
            continue
        run_ladder(root, args.seeds, args.out, rungs=args.rungs, workers=args.workers,
                   threads_per_worker=args.threads_per_worker, timing=timing)  # fmt: skip
    if args.command == "plan" and len(roots) > 1:
        print(f"all ladders: {total:.1f} core-hours")
    return 0


if __name__ == "__main__":
    sys.exit(main())
