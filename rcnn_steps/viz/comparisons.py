"""Results compared, setting against setting and detector against detector: an ablation
table as bars with the spread over seeds (:func:`ablation_bars`), ablations as effects
beside the paper's (:func:`effect_sentence`, :func:`effect_forest`), the evolution table as
AP against seconds per image (:func:`ap_vs_seconds`) and what each rung of the controlled
ladder bought (:func:`ladder_waterfall`), and effects against object size in feature cells
(:func:`size_effects`). Each reads a results file's records as the
library writes them.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import ScalarFormatter

from rcnn_steps.viz.style import DPI, FONT_SIZE, _figure_axes, _label_axes


def ablation_bars(
    summary: dict[str, dict[str, Any]],
    metric: str,
    *,
    names: Sequence[str] | None = None,
    labels: dict[str, str] | None = None,
    paper: dict[str, float | None] | None = None,
    paper_label: str = "paper",
    ax: Axes | None = None,
    title: str = "",
    legend: bool = True,
) -> Axes:
    """An ablation table as horizontal bars, in %: each setting's mean ``metric`` over its
    seeds (a bar), every seed's range (a whisker from the worst to the best seed), and
    the paper's number (a hollow diamond, ``paper`` in %) where there is one.

    ``summary`` is a results file's ``summary`` (``{setting: {metric: {"mean", "min",
    "max"}, "n": seeds}}``); ``names`` picks and orders the settings (top to bottom);
    ``labels`` replaces their names on the axis; ``legend=False`` leaves the legend out
    (for all but one of several panels). An effect is real only where whiskers do not
    overlap. A setting without ``metric`` (not run yet) gets an empty row marked "not
    run"."""
    names = list(summary) if names is None else list(names)
    ax = _figure_axes(ax, (5.0, 0.35 * len(names) + 0.9))
    y = np.arange(len(names))[::-1]
    for yi, name in zip(y, names, strict=True):
        if metric not in summary[name]:  # a setting not run yet: an empty row, said so
            ax.text(0.5, yi, "not run", fontsize=FONT_SIZE, va="center", color="grey")
            continue
        s = summary[name][metric]
        mean, lo, hi = 100 * s["mean"], 100 * s["min"], 100 * s["max"]
        ax.barh(yi, mean, color="C0", alpha=0.6, height=0.6)
        ax.plot([lo, hi], [yi, yi], color="k", linewidth=1.2)
        ax.plot([lo, hi], [yi, yi], "|", color="k", markersize=8)
        value = paper.get(name) if paper else None
        if value is not None:
            ax.plot(value, yi, "D", mfc="none", color="C3", markersize=5)
    seeds = sorted({summary[n].get("n", 0) for n in names if metric in summary[n]})
    handles = [
        plt.Rectangle((0, 0), 1, 1, color="C0", alpha=0.6),
        plt.Line2D([], [], color="k", marker="|", markersize=8),
    ]
    text = [f"ours, mean of {'/'.join(map(str, seeds))} seeds", "ours, worst to best seed"]
    if paper and any(v is not None for v in paper.values()):
        handles.append(plt.Line2D([], [], color="C3", marker="D", mfc="none", linestyle=""))
        text.append(paper_label)
    ax.set_yticks(y)
    ax.set_yticklabels([(labels or {}).get(n, n) for n in names], fontsize=FONT_SIZE)
    _label_axes(ax, f"{metric}, %", "", title)
    if legend:  # below the axis label, where no bar can hide it
        ax.legend(
            handles,
            text,
            fontsize=FONT_SIZE,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.3),
            ncol=3,
        )
    return ax


def effect_sentence(effect: Mapping[str, Any]) -> str:
    """The verdict sentence of one effect record (see :func:`effect_forest`), e.g.
    ``"RoIAlign over RoIPool: +11.8 mask AP (paper +3.4)"``: our mean effect over the
    seeds, the paper's in brackets (with its metric where it is not ours), ``n=1`` when
    one seed is all there is."""
    ours = [float(v) for v in effect["ours"]]
    if not ours:
        raise ValueError(f"effect {effect['label']!r} has no per-seed effects ('ours' is empty)")
    text = f"{effect['label']}: {np.mean(ours):+.1f} {effect['metric']}"
    paper = effect.get("paper")
    if paper is None:
        text += " (no paper number)"
    else:
        theirs = effect.get("paper_metric") or effect["metric"]
        text += f" (paper {paper:+.1f}" + ("" if theirs == effect["metric"] else f" {theirs}") + ")"
    return text + (", n=1" if len(ours) == 1 else "")


def _wrap_sentence(sentence: str, width: int) -> str:
    """:func:`effect_sentence` wrapped at ``width`` characters, but never inside a number
    and its metric ("+11.8 mask AP") or inside the paper's bracket."""
    head, _, tail = sentence.rpartition(": ")
    ours, _, paper = tail.partition(" (")  # "+11.8 mask AP", "paper +3.4)"
    units = [ours, f"({paper}"] if paper else [ours]
    glued = " ".join(u.replace(" ", "\N{NO-BREAK SPACE}") for u in units)  # textwrap keeps these
    return textwrap.fill(f"{head}: {glued}", width)


def effect_forest(
    effects: Sequence[Mapping[str, Any]],
    *,
    ax: Axes | None = None,
    title: str = "",
    wrap: int = 60,
    legend: bool = True,
) -> Axes:
    """Ablations as effects, one row per comparison (a forest plot): how much a change
    moved a metric on our data, beside how much it moved the paper's on its own.

    ``effects`` are plain records (``rcnn_steps.ablations.effect_records`` makes them
    from a results file), each a dict with ``label`` (what was compared, "RoIAlign over
    RoIPool"), ``ours`` (the effect on each seed, variant minus baseline, in points: a
    list of n floats), ``paper`` (the paper's effect in points, or None), ``metric``
    (ours, "mask AP") and optionally ``paper_metric`` (the paper's, where it differs)
    and ``section`` (rows with the same section are drawn under one bold heading, in the
    order the sections first appear).

    Each row: the seeds as small grey ticks, their mean as a dot, a line from the
    smallest to the largest seed (none for one seed, which is marked "n=1" instead: one
    run has no spread to draw), and the paper's effect as a hollow red diamond; a
    vertical line at 0 (no effect). The rows are labelled with :func:`effect_sentence`,
    wrapped at ``wrap`` characters. An effect whose seed line crosses 0 is not settled
    by these seeds; the paper's diamond says which way, and how far, the paper saw it
    go on COCO or VOC with a far larger model."""
    if not effects:
        raise ValueError("effect_forest: no effects to draw; pass at least one record")
    sections: dict[Any, list[Mapping[str, Any]]] = {}
    for effect in effects:
        sections.setdefault(effect.get("section"), []).append(effect)
    rows: list[tuple[str, Mapping[str, Any] | None]] = []  # (label, effect or None: heading)
    for section, members in sections.items():
        if section is not None:
            rows.append((str(section), None))
        rows += [(_wrap_sentence(effect_sentence(e), wrap), e) for e in members]
    lines = max(label.count("\n") + 1 for label, _ in rows)
    row_height = 0.14 + 0.17 * lines  # inches per row
    if ax is None:
        longest = max(len(line) for label, _ in rows for line in label.split("\n"))
        label_width = 0.075 * longest * FONT_SIZE / 9  # inches (an average character)
        _, ax = plt.subplots(figsize=(3.6 + label_width, row_height * len(rows) + 1.3), dpi=DPI)
    y = np.arange(len(rows))[::-1].astype(float)
    xs = [0.0]
    for yi, (_, effect) in zip(y, rows, strict=True):
        if effect is None:
            continue
        ours = np.asarray(effect["ours"], dtype=float)
        xs += [*ours.tolist()]
        (seeds,) = ax.plot(ours, np.full_like(ours, yi), "|", color="0.3", markersize=11,
                           markeredgewidth=1.0, zorder=3)  # fmt: skip
        seeds.set_gid("seeds")
        if len(ours) > 1:
            (span,) = ax.plot([ours.min(), ours.max()], [yi, yi], color="C0", linewidth=1.6)
            span.set_gid("range")
        else:  # one run: say so where the range would be, rather than draw none silently
            note = ax.annotate("n=1", (ours[0], yi), textcoords="offset points", xytext=(0, -13),
                               ha="center", fontsize=FONT_SIZE, color="0.35")  # fmt: skip
            note.set_gid("n=1")
        (mean,) = ax.plot(ours.mean(), yi, "o", color="C0", markersize=6)
        mean.set_gid("mean")
        if effect.get("paper") is not None:
            (paper,) = ax.plot(effect["paper"], yi, "D", mfc="none", color="C3", markersize=6,
                               markeredgewidth=1.4)  # fmt: skip
            paper.set_gid("paper")
            xs.append(float(effect["paper"]))
    ax.axvline(0.0, color="k", linewidth=0.8)
    lo, hi = min(xs), max(xs)
    pad = 0.08 * (hi - lo) if hi > lo else 1.0
    single = any(len(e["ours"]) == 1 for e in effects)
    ax.set_xlim(lo - pad, hi + (2.5 if single else 1.0) * pad)  # room for the last label
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_yticks(y)
    ax.set_yticklabels([label for label, _ in rows], fontsize=FONT_SIZE)
    for tick, (_, effect) in zip(ax.get_yticklabels(), rows, strict=True):
        if effect is None:
            tick.set_fontweight("bold")
    ax.grid(True, axis="x", color="0.88", linewidth=0.6)
    ax.set_axisbelow(True)
    metrics = {e["metric"] for e in effects}
    what = metrics.pop() if len(metrics) == 1 else "AP"
    _label_axes(ax, f"effect, {what} points (variant minus baseline)", "", title)
    if legend:
        counts = sorted({len(e["ours"]) for e in effects} - {1})
        if counts:
            handles = [
                plt.Line2D([], [], color="0.3", marker="|", linestyle="", markersize=11),
                plt.Line2D([], [], color="C0", marker="o", linewidth=1.6, markersize=6),
            ]
            seeds = "/".join(map(str, counts))
            text = ["ours, each seed", f"ours, mean and range of {seeds} seeds"]
        else:  # one run per row: no seeds to tell apart, no range
            handles = [plt.Line2D([], [], color="C0", marker="o", linestyle="", markersize=6)]
            text = ["ours, one run (n=1)"]
        if any(e.get("paper") is not None for e in effects):
            handles.append(plt.Line2D([], [], color="C3", marker="D", mfc="none", linestyle=""))
            text.append("paper's effect (its data and model)")
        below = 0.55 / (ax.get_position().height * ax.figure.get_figheight())  # 0.55 in
        ax.legend(handles, text, fontsize=FONT_SIZE, loc="upper center", ncol=len(text),
                  bbox_to_anchor=(0.5, -below), frameon=False)  # fmt: skip
    return ax


def ap_vs_seconds(
    rows: Sequence[dict[str, Any]],
    metric: str = "AP",
    *,
    ax: Axes | None = None,
    title: str = "",
) -> Axes:
    """The evolution table as a picture: each detector's ``metric`` (in %) against its
    seconds per image (log scale), labelled with its chapter and name. Up and to the left
    is better. A row whose provenance says it was timed on more than one torch thread
    (``provenance.machine.torch_threads``) is marked so in its label, as the book's rows
    are compared on one thread."""
    ax = _figure_axes(ax, (4.6, 2.8))
    for k, row in enumerate(rows):
        x, y = row["seconds_per_image"], 100 * row["metrics"][metric]
        threads = row.get("provenance", {}).get("machine", {}).get("torch_threads", 1)
        ax.plot(x, y, "o", color=f"C{k}")
        ax.annotate(
            f"{row['chapter']} {row['detector']}"
            + (f" ({threads} threads)" if threads > 1 else ""),
            (x, y),
            textcoords="offset points",
            xytext=(4, 3 if k % 2 == 0 else -10),  # alternate, so neighbours' labels part
            fontsize=FONT_SIZE,
        )
    ax.set_xscale("log")
    lo = min(r["seconds_per_image"] for r in rows)
    hi = max(r["seconds_per_image"] for r in rows)
    ax.set_xlim(lo / 2, hi * 8)
    _label_axes(ax, "seconds per image (log scale)", f"box {metric}, %", title)
    return ax


def ladder_waterfall(
    grid: dict[str, Any],
    metric: str = "AP",
    *,
    ax: Axes | None = None,
    title: str = "",
) -> Axes:
    """What each rung of a controlled ladder bought (:func:`rcnn_steps.ladder.read_ladder_results`'s
    ``grid``): a waterfall whose first bar is the first rung's ``metric`` (in %, the seed
    mean) and each later bar the step from the rung before it to this one, green up,
    red down, with a whisker over this rung's seeds (min to max, so the step's noise can
    be read against its height) and ``n=`` the number of seeds under it. Rungs not run
    yet (or without ``metric``, e.g. mask AP before the mask branch) are left out, and
    the step is taken from the last rung drawn."""
    ax = _figure_axes(ax, (5.2, 3.0))
    drawn, level = [], None
    for name in grid["order"]:
        entry = grid["summary"].get(name, {})
        if metric not in entry:
            continue
        mean, lo, hi = (100 * entry[metric][k] for k in ("mean", "min", "max"))
        x = len(drawn)
        if level is None:
            ax.bar(x, mean, color="0.6", width=0.6)
        else:
            step = mean - level
            ax.bar(x, step, bottom=level, width=0.6, color="C2" if step >= 0 else "C3")
            ax.plot([x - 0.7, x - 0.3], [level, level], color="0.3", lw=0.8)  # from the last bar
            ax.annotate(f"{step:+.1f}", (x, max(mean, level)), textcoords="offset points",
                        xytext=(0, 3), ha="center", fontsize=FONT_SIZE)  # fmt: skip
        if entry["n"] > 1:
            ax.plot([x, x], [lo, hi], color="black", lw=1.2)
        ax.annotate(f"n={entry['n']}", (x, 0), textcoords="offset points", xytext=(0, 2),
                    ha="center", fontsize=FONT_SIZE,
                    color="white" if level is None else "0.3")  # fmt: skip
        drawn.append(name)
        level = mean
    ax.set_xticks(range(len(drawn)))
    ax.set_xticklabels([grid.get("short_labels", {}).get(n, n) for n in drawn], rotation=30,
                       ha="right")  # fmt: skip
    ax.axhline(0, color="0.3", lw=0.6)
    _label_axes(ax, "", f"{metric}, % (bars: step from the rung before)", title)
    return ax


def size_effects(
    points: Sequence[dict[str, Any]],
    *,
    ax: Axes | None = None,
    title: str = "",
) -> Axes:
    """The size prediction tested (:func:`rcnn_steps.experiments.size_effects.size_effect_points`'s
    ``points``): each effect's ratio to the paper's (log scale; 1 is the paper's size)
    against the objects' median side in feature cells (log scale), one line per effect
    from the smaller images to the larger, each point labelled with its scale and seeds,
    a whisker over the seeds where more than one ran. Where the points carry
    ``reference_cells`` (the paper's objects on the same map), a hollow marker of the
    effect's colour at ratio 1 shows where its line would end if size were all there is."""
    ax = _figure_axes(ax, (5.6, 3.6))
    by_effect: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        if p["ratio"] is not None:
            by_effect.setdefault(p["effect"], []).append(p)
    for i, (effect, pts) in enumerate(by_effect.items()):
        colour = f"C{i}"
        pts = sorted(pts, key=lambda p: p["cells"])
        ax.plot([p["cells"] for p in pts], [p["ratio"] for p in pts], "o-", color=colour,
                label=effect, lw=1.4)  # fmt: skip
        for p in pts:
            if len(p["seeds"]) > 1 and p["paper"]:
                lo, hi = sorted((p["ours_min"] / p["paper"], p["ours_max"] / p["paper"]))
                ax.plot([p["cells"]] * 2, [lo, hi], color=colour, lw=0.8)
            ax.annotate(f"{p['scale']} px, n={len(p['seeds'])}", (p["cells"], p["ratio"]),
                        textcoords="offset points", xytext=(5, 4), fontsize=FONT_SIZE,
                        color=colour)  # fmt: skip
        if pts[-1].get("reference_cells"):
            ax.plot([pts[-1]["cells"], pts[-1]["reference_cells"]], [pts[-1]["ratio"], 1],
                    color=colour, lw=0.8, ls=":")  # fmt: skip
            ax.plot(pts[-1]["reference_cells"], 1, "o", mfc="none", color=colour, ms=8)
    ax.axhline(1, color="0.3", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(ScalarFormatter())
    ax.legend(fontsize=FONT_SIZE, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside: any data
    _label_axes(ax, "median object side, cells of the map it is pooled from",
                "our effect / the paper's", title)  # fmt: skip
    return ax
