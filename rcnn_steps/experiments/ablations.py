"""The papers' ablation tables run as grids, and read back for the chapters (04-08).

The tables themselves, each a list of named settings (overrides of
:class:`~rcnn_steps.detectors.config.DetectorConfig`) with the paper's number beside each,
are data in :mod:`rcnn_steps.experiments.paper_tables` (:func:`faster_rcnn_grid`,
:func:`mask_rcnn_grid`; this module re-exports them). :func:`run_grid` trains and
evaluates every (setting, seed) pair with :func:`run_setting` and keeps the results file
up to date after each run, so an interrupted grid resumes where it stopped; at the end it
summarises each setting over the seeds (mean, min, max, std), because at this scale an
effect is real only where it is larger than the spread between seeds (GUIDE section 3).
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

from rcnn_steps.experiments.datasets import (
    DATA_SETS,
    data_root,
    image_scale,
    resolve_root,
    results_name,
    scaled_overrides,
)
from rcnn_steps.experiments.grid import SUMMARY_METRICS, SUMMARY_TIMINGS, summarise
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
# Reading a table's results file


def grid_eval_images(results: dict[str, Any], default: int | None = None) -> int | None:
    """How many val images a grid's runs were evaluated on: the file's
    ``num_eval_images``, else (files of an earlier version record it per run only) the
    one count all its runs share, else ``default`` (no runs yet)."""
    if results.get("num_eval_images") is not None:
        return int(results["num_eval_images"])
    counts = {run.get("num_eval_images") for run in results.get("runs", {}).values()}
    if not counts:
        return default
    return counts.pop() if len(counts) == 1 else None


def read_grid_results(table: str, path: str | Path | None = None) -> dict[str, Any]:
    """A grid's results file (default ``results/ablation_<table>.json``) with what a
    chapter needs to show it, the settings' order, labels and paper numbers taken from
    :func:`table_grid` (so a label that changed after the run reads as it is now; a
    setting added to the table after the file was written is in ``summary`` as not run,
    ``n`` 0):

    ``{"table", "order", "labels", "paper", "paper_metric", "metric" (ours beside the
    paper's, :data:`COMPARABLE_METRIC`), "summary", "runs", "settings", "preset",
    "max_iter", "num_eval_images" (:func:`grid_eval_images`), "provenance"}``. A file of
    another table is an error.
    """
    from rcnn_steps.utils import read_results, results_dir

    path = Path(path) if path is not None else results_dir() / f"ablation_{table}.json"
    grid = table_grid(table)
    payload = read_results(path)
    results = payload["results"]
    if results.get("table") != table:
        raise ValueError(
            f"{path} holds the grid {results.get('table')!r}, not {table!r}; pass the file "
            f"that `python -m rcnn_steps.ablations grid --tables {table}` wrote"
        )
    return {
        "table": table,
        "order": list(grid),
        "labels": {name: setting["label"] for name, setting in grid.items()},
        "paper": {name: setting["paper"] for name, setting in grid.items()},
        "paper_metric": PAPER_METRIC[table],
        "metric": COMPARABLE_METRIC[table],
        "family": {"segm": "mask_", "keypoints": "kp_"}.get(MASK_TABLE_METRIC.get(table, ""), ""),
        "summary": {**{name: {"seeds": [], "n": 0} for name in grid}, **results["summary"]},
        "runs": results["runs"],
        "settings": grid,
        "preset": results["preset"],
        "max_iter": results["max_iter"],
        "num_eval_images": grid_eval_images(results),
        "provenance": payload["provenance"],
    }


def compare_settings(
    grid: dict[str, Any],
    baseline: str,
    variant: str,
    metric: str = "AP",
    *,
    family: str | None = None,
    paper_key: str = "paper",
) -> dict[str, Any]:
    """One effect of a table, ours beside the paper's: ``variant`` minus ``baseline``.

    ``grid`` is :func:`read_grid_results`'s dict; ``metric`` one of the paper's (``AP``,
    ``AP50``, ``AP75``, also ``APs``/``APm``/``APl`` for ours), read in ``family``
    (default: the table's, e.g. ``mask_`` for the mask tables; ``""`` for boxes);
    ``paper_key`` picks the paper's numbers (``paper_box`` for Table 2(d)'s boxes).
    Returns, in AP points (%): ``ours`` (the difference of the seed means), ``ours_min``
    / ``ours_max`` (of the per-seed means: variant's worst minus baseline's best and the
    reverse), ``separated`` (the two settings' seed ranges do not overlap: the effect is
    beyond the seed spread), ``paper`` (None where the paper has no number),
    ``same_direction`` and ``ratio`` (ours / the paper's effect; None without one or
    where the paper's is 0), and
    ``verdict``, the sentence a chapter prints."""
    fam = grid["family"] if family is None else family
    a, b = grid["summary"][baseline], grid["summary"][variant]
    for name, s in ((baseline, a), (variant, b)):
        if not s.get("n") or fam + metric not in s:
            raise ValueError(
                f"{grid['table']}: setting {name!r} has no {fam + metric} yet; run "
                f"`python -m rcnn_steps.ablations grid --tables {grid['table']}`"
            )
    ma, mb = a[fam + metric], b[fam + metric]
    ours = 100 * (mb["mean"] - ma["mean"])
    low, high = 100 * (mb["min"] - ma["max"]), 100 * (mb["max"] - ma["min"])
    paper_a, paper_b = a.get(paper_key) or {}, b.get(paper_key) or {}
    paper = None
    if metric in paper_a and metric in paper_b:
        paper = round(paper_b[metric] - paper_a[metric], 2)
    separated = low > 0 or high < 0
    same = None if paper is None or paper == 0 else (ours > 0) == (paper > 0)
    ratio = None if paper is None or paper == 0 else ours / paper
    if paper is None:
        verdict = "no paper number"
    elif paper == 0:
        verdict = "the paper saw no difference"
    elif same:
        verdict = f"reproduces in direction, {ratio:.1f}x the paper's effect"
    else:
        verdict = "opposite to the paper"
    if min(a["n"], b["n"]) < 2:  # one seed has no spread: nothing is "beyond" it
        separated = False
        verdict += ", one seed (no spread to compare with)"
    else:
        verdict += ", beyond the seed spread" if separated else ", within the seed spread"
    return {
        "baseline": baseline, "variant": variant, "metric": fam + metric,
        "ours": round(ours, 2), "ours_min": round(low, 2), "ours_max": round(high, 2),
        "separated": separated, "paper": paper, "same_direction": same,
        "ratio": None if ratio is None else round(ratio, 2), "verdict": verdict,
    }  # fmt: skip


#: Our metric families by summary prefix, as a reader says them.
_FAMILY_WORDS = {"": "box", "mask_": "mask", "kp_": "keypoint"}
#: Where each family's metrics are in a run record
#: (:data:`rcnn_steps.experiments.grid.METRIC_FAMILIES`).
_RUN_KEYS = {"": "metrics", "mask_": "segm_metrics", "kp_": "keypoint_metrics"}
#: What the papers' numbers are, by the settings' key holding them (when not the table's
#: own ``paper``): Table 2(d)'s other half, FPN Table 2, Mask R-CNN Table 2(a).
_PAPER_KEY_FAMILY = {"paper_mask": "mask", "paper_box": "box", "paper_table2": "box",
                     "paper_2a": "mask"}  # fmt: skip


def _paper_family(table: str, paper_key: str) -> str:
    """Which of the paper's metric families ``settings[name][paper_key]`` holds."""
    if paper_key in _PAPER_KEY_FAMILY:
        return _PAPER_KEY_FAMILY[paper_key]
    if table in MASK_TABLES:
        return {"segm": "mask", "bbox": "box", "keypoints": "keypoint"}[MASK_TABLE_METRIC[table]]
    return {"table2c": "mask"}.get(table, "box")  # 2(d) and FPN Table 3: box AP


def effect_records(
    grid: dict[str, Any],
    baseline: str,
    variants: Sequence[str] | None = None,
    metric: str | None = None,
    *,
    family: str | None = None,
    paper_key: str = "paper",
    labels: dict[str, str] | None = None,
    section: str | None = None,
) -> list[dict[str, Any]]:
    """The effects of a table's settings over ``baseline``, as the records
    :func:`rcnn_steps.viz.effect_forest` draws: one per variant (default: every other
    setting that ran, in the table's order), each

    ``{"label": "<variant> over <baseline>", "ours": [variant - baseline, per seed],
    "paper": the paper's variant - baseline or None, "metric", "paper_metric",
    "section", "table", "baseline", "variant", "seeds"}``, effects in points (%).

    ``grid`` is :func:`read_grid_results`'s dict; ``metric`` one of ours (default the
    table's :data:`COMPARABLE_METRIC`: AP50 beside the VOC tables' mAP, else AP), read in
    ``family`` (default the table's, ``"mask_"`` for the mask tables; ``""`` for boxes).
    Each seed's effect is the difference of two runs with the same seed (the same
    initial weights and image order), over the seeds both settings ran: pairing by seed
    takes out what the seed alone does, so the range over seeds is narrower than
    :func:`compare_settings`' worst-against-best range, whose verdict is the stricter test.
    The paper's effect is read from ``settings[name][paper_key]`` (``paper_box`` for
    Table 2(d)'s boxes): the same-named metric of a dict of the paper's numbers, or a
    VOC table's single mAP beside our AP50; None where either setting has no number.
    ``labels`` replaces the settings' labels (short names make readable rows)."""
    fam = grid["family"] if family is None else family
    metric = grid["metric"] if metric is None else metric
    names = {**grid["labels"], **(labels or {})}
    if baseline not in grid["settings"]:
        raise ValueError(
            f"{grid['table']}: no setting {baseline!r}; the baseline is one of {grid['order']}"
        )
    if variants is None:
        variants = [n for n in grid["order"] if n != baseline and grid["summary"][n].get("n")]
    run_key_of = _RUN_KEYS[fam]

    def per_seed(name: str) -> dict[int, float]:
        runs = [r for r in grid["runs"].values() if r["name"] == name]
        return {r["seed"]: r[run_key_of][metric] for r in runs if metric in r.get(run_key_of, {})}

    base_runs = per_seed(baseline)
    records = []
    for variant in variants:
        if variant not in grid["settings"]:
            raise ValueError(f"{grid['table']}: no setting {variant!r}; one of {grid['order']}")
        runs = per_seed(variant)
        seeds = sorted(set(base_runs) & set(runs))
        if not seeds:
            raise ValueError(
                f"{grid['table']}: {variant!r} and {baseline!r} share no seed with "
                f"{fam + metric}; run `python -m rcnn_steps.ablations grid --tables "
                f"{grid['table']}` with the same --seeds for both"
            )
        paper_a = grid["settings"][baseline].get(paper_key)
        paper_b = grid["settings"][variant].get(paper_key)
        paper, paper_metric = None, None
        if isinstance(paper_a, dict) and isinstance(paper_b, dict):
            if metric in paper_a and metric in paper_b:
                paper = round(paper_b[metric] - paper_a[metric], 2)
                paper_metric = f"{_paper_family(grid['table'], paper_key)} {metric}"
        elif isinstance(paper_a, int | float) and isinstance(paper_b, int | float):
            if metric == COMPARABLE_METRIC.get(grid["table"]):  # VOC mAP beside our AP50
                paper, paper_metric = round(paper_b - paper_a, 2), "VOC07 mAP"
        records.append({
            "label": f"{names[variant]} over {names[baseline]}",
            "ours": [100 * (runs[s] - base_runs[s]) for s in seeds],
            "paper": paper,
            "metric": f"{_FAMILY_WORDS[fam]} {metric}",
            "paper_metric": paper_metric,
            "section": section,
            "table": grid["table"], "baseline": baseline, "variant": variant, "seeds": seeds,
        })  # fmt: skip
    return records


def widest_seed_range(grid: dict[str, Any], metric: str = "AP", family: str | None = None) -> float:
    """The noise floor of a table: the widest worst-to-best seed range of ``metric`` (read
    in ``family``, default the table's, as :func:`compare_settings` does) over its
    settings that ran, in AP points (%). An effect measured on one seed (e.g. at the
    final model's budget) is read against it."""
    fam = grid["family"] if family is None else family
    ranges = [s[fam + metric]["max"] - s[fam + metric]["min"]
              for s in grid["summary"].values() if fam + metric in s]  # fmt: skip
    if not ranges:
        raise ValueError(f"widest_seed_range: no setting of {grid['table']!r} has {fam + metric}")
    return round(100 * max(ranges), 2)


def seed_range(
    grid: dict[str, Any], name: str, metric: str = "AP", *, family: str | None = None
) -> tuple[float, float]:
    """``(worst seed, best seed)`` of setting ``name``'s ``metric`` in a table
    (:func:`read_grid_results`' dict), as the summary holds it (fractions, or seconds for
    the timings, read with ``family=""``); ``metric`` is read in ``family`` (default the
    table's, as :func:`compare_settings` does)."""
    fam = grid["family"] if family is None else family
    spread = grid["summary"][name].get(fam + metric)
    if spread is None:
        raise ValueError(
            f"seed_range: setting {name!r} of {grid['table']!r} has no {fam + metric}; run "
            f"`python -m rcnn_steps.ablations grid --tables {grid['table']}`"
        )
    return spread["min"], spread["max"]


def above_every_seed(
    grid: dict[str, Any],
    higher: str,
    lower: str,
    metric: str = "AP",
    margin: float = 0.0,
    *,
    family: str | None = None,
) -> bool:
    """Whether setting ``higher``'s worst seed is above ``lower``'s best seed by more than
    ``margin`` (in the summary's units: 0.05 is 5 AP points) on ``metric``: an effect
    beyond the seed spread, in a given direction (:func:`compare_settings`' ``separated``
    says only that the ranges do not overlap). Read as :func:`seed_range` reads."""
    worst = seed_range(grid, higher, metric, family=family)[0]
    return worst > seed_range(grid, lower, metric, family=family)[1] + margin


# ----------------------------------------------------------------------------------------
# Running tables


def run_key(name: str, seed: int) -> str:
    """The key of one run in a results file: ``"<setting>/seed<seed>"``."""
    return f"{name}/seed{int(seed)}"


def _specs(table, settings, seeds, preset, max_iter, root, num_eval_images, timing_threads,
           keep_runs=None):  # fmt: skip
    from dataclasses import replace

    from rcnn_steps.experiments.grid import RunSpec

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
    (:func:`rcnn_steps.engine.export_weights` makes a weights-only copy to share)."""
    from rcnn_steps.experiments.grid import run_specs, summarise
    from rcnn_steps.experiments.runner import schedule
    from rcnn_steps.utils import read_results, write_results

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
                       timing_threads, keep_runs)  # fmt: skip
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
    from rcnn_steps.experiments.grid import default_workers
    from rcnn_steps.utils import add_debug_argument, run_command

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
        help="a named synthetic set (made if missing): 256 draws the book's scenes at twice "
             "the resolution, with anchors and FPN's s0 doubled; writes "
             "ablation_<table>_<data>.json",
    )  # fmt: skip
    gr.add_argument("--keep-runs", type=Path, default=None,
                    help="keep each run's last.pt and metrics.jsonl here")  # fmt: skip
    gr.add_argument("--no-progress", action="store_true")
    add_debug_argument(parser, gr)
    args = parser.parse_args(argv)
    return run_command(_grid_command, args)


def _grid_command(args: argparse.Namespace) -> int:
    from rcnn_steps.utils import results_dir

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
    )
    for results in tables.values():
        _print_summary(results)
    root = data_root(args.data) if args.data else args.root
    root = None if root is None else data_root(root=resolve_root(root))
    print(f"wrote {', '.join(str(out_dir / results_name(f'ablation_{t}', root)) for t in tables)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
