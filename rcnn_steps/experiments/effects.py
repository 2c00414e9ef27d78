"""The ablation tables read back: a table's results file, and the effects in it, each
beside the paper's and read against the spread between seeds.

:func:`read_grid_results` reads a table's results file (``results/ablation_<table>.json``,
written by :func:`rcnn_steps.experiments.ablations.run_tables`) with the table's current
labels and paper numbers (:mod:`rcnn_steps.experiments.paper_tables`); a ladder's file
reads in the same shape (:func:`rcnn_steps.experiments.ladder.read_ladder_results`). Out
of it, :func:`compare_settings` gives one effect, ours beside the paper's, with the
sentence a chapter prints; :func:`effect_records` every effect over a baseline, seed by
seed, as :func:`rcnn_steps.viz.effect_forest` draws them; :func:`widest_seed_range`,
:func:`seed_range` and :func:`above_every_seed` the spread they are read against: at this
scale an effect is real only where it is larger than the spread between seeds (GUIDE
section 3). :mod:`rcnn_steps.experiments.ablations` re-exports them, as the chapters
import them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rcnn_steps.experiments.paper_tables import (
    COMPARABLE_METRIC,
    MASK_TABLE_METRIC,
    MASK_TABLES,
    PAPER_METRIC,
    table_grid,
)
from rcnn_steps.utils import read_results, results_dir

__all__ = [
    "above_every_seed",
    "compare_settings",
    "effect_records",
    "grid_eval_images",
    "read_grid_results",
    "seed_range",
    "widest_seed_range",
]


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
