"""The papers' ablation tables run as grids, and read back for the chapters (04-08).

The tables themselves, each a list of named settings (overrides of
:class:`~rcnn_steps.detectors.config.DetectorConfig`) with the paper's number beside each,
are data in :mod:`rcnn_steps.experiments.paper_tables` (:func:`faster_rcnn_grid`,
:func:`mask_rcnn_grid`; this module re-exports them). :func:`run_grid` trains and
evaluates every (setting, seed) pair with :func:`run_setting` and keeps the results file
up to date after each run, so an interrupted grid resumes where it stopped; at the end it
summarises each setting over the seeds (mean, min, max, std), because at this scale an
effect is real only where it is larger than the spread between seeds (GUIDE section 3).
Reading them back is :mod:`rcnn_steps.experiments.effects`' (re-exported here):
:func:`read_grid_results` reads a table's results file with the table's current labels
and paper numbers; :func:`compare_settings`, :func:`effect_records`,
:func:`widest_seed_range`, :func:`seed_range` and :func:`above_every_seed` read effects
and their spread out of it.

Command (one results file per table, ``ablation_<table>.json`` in ``--out-dir``, by
default ``results/``)::

    python -m rcnn_steps.ablations grid --tables table8 --seeds 0 1 2 --scale cpu --workers 2

(The tables of chapters 04-06 all train a box-only Faster R-CNN, the Mask R-CNN ones
included: they change its RoI layer, and no mask head is trained.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rcnn_steps.engine.config import MEMORY_FORMATS
from rcnn_steps.experiments.datasets import (
    DATA_SETS,
    data_root,
    image_scale,
    resolve_root,
    results_name,
    scaled_overrides,
)
from rcnn_steps.experiments.effects import (
    _FAMILY_WORDS,  # noqa: F401 (re-exported: its old home)
    _PAPER_KEY_FAMILY,  # noqa: F401 (re-exported: its old home)
    _RUN_KEYS,  # noqa: F401 (re-exported: its old home)
    _paper_family,  # noqa: F401 (re-exported: its old home)
    above_every_seed,
    compare_settings,
    effect_records,
    grid_eval_images,
    read_grid_results,
    seed_range,
    widest_seed_range,
)
from rcnn_steps.experiments.grid import (
    SUMMARY_METRICS,
    SUMMARY_TIMINGS,
    RunSpec,
    default_workers,
    run_specs,
    summarise,
)
from rcnn_steps.experiments.paper_tables import (
    ALL_TABLES,
    ANCHOR_SCALE,
    COMPARABLE_METRIC,
    FINAL_OVERRIDES,
    FPN_TABLE3_ANCHOR_SIZES,
    KEYPOINT_LOSS_WEIGHT,
    LONG_MAX_ITER,
    MASK_BASE,
    MASK_TABLE_METRIC,
    MASK_TABLES,
    OUR_ANCHOR_SIZES,
    PAPER_ANCHOR_SIZES,
    PAPER_METRIC,
    TABLE2D_ANCHOR_SIZES,
    TABLE6_TRAIN_IMAGES,
    TABLES,
    faster_rcnn_grid,
    mask_rcnn_grid,
    table_grid,
    table_preset,
)
from rcnn_steps.experiments.runner import (
    METHODS,
    detector_config,
    load_datasets,
    run_setting,
    schedule,
    selective_search_proposals,
)
from rcnn_steps.utils import (
    add_debug_argument,
    read_results,
    results_dir,
    run_command,
    write_results,
)

__all__ = [
    "GRID_EVAL_IMAGES",
    "above_every_seed",
    "compare_settings",
    "effect_records",
    "grid_eval_images",
    "main",
    "read_grid_results",
    "run_grid",
    "run_key",
    "run_tables",
    "seed_range",
    "widest_seed_range",
    # the papers' tables, from rcnn_steps.experiments.paper_tables
    "ALL_TABLES",
    "ANCHOR_SCALE",
    "COMPARABLE_METRIC",
    "FINAL_OVERRIDES",
    "FPN_TABLE3_ANCHOR_SIZES",
    "KEYPOINT_LOSS_WEIGHT",
    "LONG_MAX_ITER",
    "MASK_BASE",
    "MASK_TABLES",
    "MASK_TABLE_METRIC",
    "OUR_ANCHOR_SIZES",
    "PAPER_ANCHOR_SIZES",
    "PAPER_METRIC",
    "TABLE2D_ANCHOR_SIZES",
    "TABLE6_TRAIN_IMAGES",
    "TABLES",
    "faster_rcnn_grid",
    "mask_rcnn_grid",
    "table_grid",
    "table_preset",
    # the grid's summary and the runner's pieces, read through this module
    "SUMMARY_METRICS",
    "SUMMARY_TIMINGS",
    "summarise",
    "METHODS",
    "detector_config",
    "load_datasets",
    "run_setting",
    "schedule",
    "selective_search_proposals",
]

#: Val images every grid run is evaluated on: the synthetic set's whole val split.
GRID_EVAL_IMAGES = 200


# ----------------------------------------------------------------------------------------
# Running tables


def run_key(name: str, seed: int) -> str:
    """The key of one run in a results file: ``"<setting>/seed<seed>"``."""
    return f"{name}/seed{int(seed)}"


def _specs(table, settings, seeds, preset, max_iter, root, num_eval_images, timing_threads,
           keep_runs=None, memory_format="contiguous"):  # fmt: skip
    from dataclasses import replace

    # on a set drawn at k times the book's resolution, the pixel-sized fields scale with it
    scale = image_scale(root)
    specs = [
        RunSpec(
            name=name,
            seed=int(seed),
            preset=preset,
            overrides=scaled_overrides(setting["overrides"], scale, preset),
            method=setting.get("method", "rpn"),
            num_train_images=setting.get("num_train_images"),
            max_iter=max_iter,
            num_eval_images=num_eval_images,
            root=None if root is None else str(root),
            timing_threads=timing_threads,
            memory_format=memory_format,
        )
        for name, setting in settings.items()
        for seed in seeds
    ]
    if keep_runs is None:
        return specs
    return [replace(s, out_dir=str(Path(keep_runs) / f"{s.name}-{s.key()}")) for s in specs]


def run_tables(
    tables: Sequence[str],
    seeds: Sequence[int],
    scale: str,
    out_dir: str | Path,
    max_iter: int | None = None,
    *,
    settings: Sequence[str] | None = None,
    root: str | Path | None = None,
    num_eval_images: int | None = None,
    timing_threads: int | None = None,
    workers: int = 2,
    threads_per_worker: int = 1,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    verbose: bool = True,
    paths: dict[str, str | Path] | None = None,
    keep_runs: str | Path | None = None,
    memory_format: str = "contiguous",
) -> dict[str, dict[str, Any]]:
    """Run every (setting, seed) of ``tables`` (:func:`rcnn_steps.experiments.grid.run_specs`: in
    ``workers`` processes of ``threads_per_worker`` threads, each run cached in
    ``cache_dir``, default ``out_dir/runs``, so shared settings run once and a killed
    grid resumes), and write ``out_dir/ablation_<table>.json`` for each table, updated
    after every run.

    Each file's ``results`` hold ``table, preset, max_iter, num_eval_images,
    paper_metric, comparable_metric, settings`` (the grid), ``runs`` (``{run_key(name,
    seed): run}``) and ``summary`` (:func:`rcnn_steps.experiments.grid.summarise`). A file made with
    another preset, ``max_iter`` or number of evaluation images is refused rather than
    mixed. ``root``: another data set (default the book's); on a set drawn at ``k`` times
    the book's resolution the settings' pixel fields are scaled
    (:func:`~rcnn_steps.experiments.datasets.scaled_overrides`) and the files are
    ``ablation_<table>_<tag>.json`` (:func:`~rcnn_steps.experiments.datasets.results_name`).
    ``settings`` restricts the tables to some setting names. Returns ``{table:
    results}``. ``paths`` names another file for some tables; ``keep_runs`` keeps each
    run's checkpoint (``last.pt``) and ``metrics.jsonl`` in ``keep_runs/<setting>-<key>/``
    (:func:`rcnn_steps.engine.export_weights` makes a weights-only copy to share);
    ``memory_format`` is each new run's :class:`~rcnn_steps.engine.TrainConfig` field."""
    started = time.time()
    # a set in the data folder is keyed by its name, so its runs' cache holds on any machine
    root = None if root is None else data_root(root=resolve_root(root))
    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else out_dir / "runs"
    plans: dict[str, dict[str, Any]] = {}
    all_specs = []
    for table in tables:
        preset = table_preset(table, scale)
        full = table_grid(table)
        chosen = full
        if settings is not None:
            chosen = {k: v for k, v in full.items() if k in set(settings)}
        iters = schedule(preset, max_iter)["max_iter"]
        out = Path((paths or {}).get(table, out_dir / results_name(f"ablation_{table}", root)))
        runs: dict[str, dict[str, Any]] = {}
        earlier: list[int] = []
        if out.exists():
            old = read_results(out)
            held = old["results"]
            wanted = (("table", table), ("preset", preset), ("max_iter", iters),
                      ("num_eval_images", num_eval_images))  # fmt: skip
            held = {**held, "num_eval_images": grid_eval_images(held, num_eval_images)}
            for key, want in wanted:
                if held.get(key) != want:
                    raise ValueError(
                        f"{out} holds runs with {key}={held.get(key)!r}, not {want!r}: pass "
                        "another output folder (or delete the file) rather than mix two grids"
                    )
            runs = dict(held.get("runs", {}))
            earlier = list(old["provenance"].get("seeds") or [])
        specs = _specs(table, chosen, seeds, preset, max_iter, root, num_eval_images,
                       timing_threads, keep_runs, memory_format)  # fmt: skip
        all_specs += specs
        plans[table] = dict(
            preset=preset, full=full, iters=iters, out=out, runs=runs,
            seeds=sorted({*earlier, *(int(s) for s in seeds)}),
            keys={s.key(): s for s in specs},
        )  # fmt: skip

    def results(table: str) -> dict[str, Any]:
        plan = plans[table]
        return {
            "table": table,
            "preset": plan["preset"],
            "max_iter": plan["iters"],
            "num_eval_images": num_eval_images,
            "paper_metric": PAPER_METRIC[table],
            "comparable_metric": COMPARABLE_METRIC[table],
            "our_metric": MASK_TABLE_METRIC.get(table, "bbox"),
            "settings": json.loads(json.dumps(plan["full"])),
            "runs": dict(sorted(plan["runs"].items())),
            "summary": summarise(plan["full"], plan["runs"]),
        }

    def write(table: str) -> None:
        plan = plans[table]
        write_results(plan["out"], results(table), preset=plan["preset"], seeds=plan["seeds"],
                      started=started)  # fmt: skip

    def collect(runs_by_key: dict[str, dict[str, Any]], table: str) -> bool:
        changed = False
        for key, spec in plans[table]["keys"].items():
            if key in runs_by_key:
                run = dict(runs_by_key[key], name=spec.name)
                plans[table]["runs"][run_key(spec.name, spec.seed)] = run
                changed = True
        return changed

    def on_result(spec, run) -> None:
        for table in plans:
            if spec.key() in plans[table]["keys"] and collect({spec.key(): run}, table):
                write(table)

    log = print if verbose else (lambda _msg: None)
    if root is None:  # make the book's set here, before workers race to make it
        # local: start-up of ladder/ablations --help (rcnn_steps.data loads SciPy: 0.16 s)
        from rcnn_steps.data import ensure_synth

        ensure_synth()
    done = run_specs(all_specs, cache_dir, workers=workers, threads_per_worker=threads_per_worker,
                     progress=progress, log=log, on_result=on_result)  # fmt: skip
    final = {}
    for table in plans:
        collect(done, table)
        write(table)
        final[table] = results(table)
    return final


def run_grid(
    table: str,
    seeds: Sequence[int],
    scale: str,
    out: str | Path,
    max_iter: int | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`run_tables` for one table, written to ``out`` (its folder holds the run
    cache, ``runs/``, unless ``cache_dir`` is given)."""
    out = Path(out)
    kwargs.setdefault("cache_dir", out.parent / "runs")
    return run_tables([table], seeds, scale, out.parent, max_iter, paths={table: out}, **kwargs)[
        table
    ]


def _paper_text(paper: Any) -> str:
    """A setting's paper number(s) for printing: ``69.9``, ``30.3/51.2/31.5`` or ``-``."""
    if paper is None:
        return "-"
    if isinstance(paper, dict):
        return "/".join(f"{v:.1f}" for v in paper.values())
    return f"{paper:g}"


def _print_summary(results: dict[str, Any]) -> None:
    family = {"segm": "mask_", "keypoints": "kp_"}.get(results.get("our_metric", "bbox"), "")
    what = {"": "box", "mask_": "mask", "kp_": "keypoint"}[family]
    print(f"{results['table']} ({results['preset']}, {results['max_iter']} iterations)")
    print(f"  paper: {PAPER_METRIC.get(results['table'], '')}")
    names = max([12, *(len(n) for n in results["summary"])])
    papers = max([6, *(len(_paper_text(s["paper"])) for s in results["summary"].values())])
    print(
        f"  {'setting':<{names}} {'paper':>{papers}}  {what + ' AP mean [min, max] std':<32} "
        "AP50 mean  AP75 mean  s/image  n"
    )
    for name, s in results["summary"].items():
        paper = _paper_text(s["paper"])
        if not s["n"] or family + "AP" not in s:
            print(f"  {name:<{names}} {paper:>{papers}}  (not run)")
            continue
        ap, ap50 = s[family + "AP"], s[family + "AP50"]
        ap75 = s.get(family + "AP75", {"mean": float("nan")})
        spread = f"{ap['mean']:.3f} [{ap['min']:.3f}, {ap['max']:.3f}] {ap['std']:.3f}"
        sec = s.get("seconds_per_image", {}).get("mean", float("nan"))
        print(
            f"  {name:<{names}} {paper:>{papers}}  {spread:<32} {ap50['mean']:.3f}      "
            f"{ap75['mean']:.3f}      {sec:.4f}   {s['n']}"
        )


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """``python -m rcnn_steps.ablations grid --tables T ... --seeds 0 1 2`` (``prog``: the
    name its help and errors show; ``python -m rcnn_steps ablations`` passes its own)."""
    parser = argparse.ArgumentParser(prog=prog or "python -m rcnn_steps.ablations")
    sub = parser.add_subparsers(dest="command", required=True)
    gr = sub.add_parser(
        "grid",
        help=(
            "the papers' ablation tables (Faster R-CNN 6/8/9, FPN 3, Mask R-CNN 2a-2e, 3, "
            "5, 6): train every setting with every seed, write results/ablation_<table>.json"
        ),
    )
    gr.add_argument("--tables", nargs="+", choices=ALL_TABLES, required=True)
    gr.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    gr.add_argument("--scale", choices=("ci", "cpu"), default="cpu",
                    help="cpu: the cpu and cpu_mask presets; ci: for tests")  # fmt: skip
    gr.add_argument("--max-iter", type=int, default=None, help="default: the preset's")
    gr.add_argument("--settings", nargs="+", default=None, help="run only these settings")
    gr.add_argument(
        "--num-eval-images", type=int, default=GRID_EVAL_IMAGES,
        help=f"val images per run (default {GRID_EVAL_IMAGES}: the whole split)",
    )  # fmt: skip
    gr.add_argument("--out-dir", type=Path, default=None, help="default: results/")
    gr.add_argument("--workers", type=int, default=default_workers(),
                    help="parallel runs (default: one per core)")  # fmt: skip
    gr.add_argument("--threads-per-worker", type=int, default=1,
                    help="torch threads of each worker: 1 for many runs; one long run alone "
                         "(--workers 1) may take one per core")  # fmt: skip
    gr.add_argument("--timing-threads", type=int, default=1,
                    help="threads while val images are timed")  # fmt: skip
    data = gr.add_mutually_exclusive_group()
    data.add_argument(
        "--root",
        type=Path,
        default=None,
        help="a synthetic/COCO-format set; writes ablation_<table>_<folder>.json",
    )
    data.add_argument(
        "--data", choices=tuple(DATA_SETS), default=None,
        help="a named synthetic set (made if missing): 256 (512) draws the book's scenes at "
             "twice (four times) the resolution, with anchors and FPN's s0 scaled alike; "
             "writes ablation_<table>_<data>.json",
    )  # fmt: skip
    gr.add_argument("--keep-runs", type=Path, default=None,
                    help="keep each run's last.pt and metrics.jsonl here")  # fmt: skip
    gr.add_argument("--memory-format", choices=tuple(MEMORY_FORMATS), default="contiguous",
                    help="the weights' layout in training: channels_last measured 0.85-0.93x "
                         "the time of a contiguous CPU step (equal to float "
                         "rounding; a cached run is reused whichever it ran with)")  # fmt: skip
    gr.add_argument("--no-progress", action="store_true")
    add_debug_argument(parser, gr)
    args = parser.parse_args(argv)
    return run_command(_grid_command, args)


def _grid_command(args: argparse.Namespace) -> int:
    out_dir = args.out_dir or results_dir()
    tables = run_tables(
        args.tables,
        args.seeds,
        args.scale,
        out_dir,
        args.max_iter,
        settings=args.settings,
        root=data_root(args.data) if args.data else args.root,
        num_eval_images=args.num_eval_images,
        timing_threads=args.timing_threads,
        workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        progress=not args.no_progress,
        keep_runs=args.keep_runs,
        memory_format=args.memory_format,
    )
    for results in tables.values():
        _print_summary(results)
    root = data_root(args.data) if args.data else args.root
    root = None if root is None else data_root(root=resolve_root(root))
    print(f"wrote {', '.join(str(out_dir / results_name(f'ablation_{t}', root)) for t in tables)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
