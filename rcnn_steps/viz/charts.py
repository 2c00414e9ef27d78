"""Measurements as charts: curves on one axes (:func:`curves`), a histogram with marked
thresholds (:func:`histogram`), a precision/recall curve with the envelope AP integrates
(:func:`pr_curve`), paired measurements against the diagonal (:func:`before_after`),
training losses and the loss terms' gradient norms over the steps
(:func:`training_curves`, :func:`gradient_norms`), proposal recall against the number of
proposals (:func:`recall_curves`) and the time of each test-time stage
(:func:`plot_stage_times`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes

from rcnn_steps.viz.style import DPI, FONT_SIZE, _figure_axes, _label_axes, _np


def curves(
    series: dict[str, tuple[Any, Any]],
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    ax: Axes | None = None,
    logx: bool = False,
    hlines: Sequence[float] = (),
    styles: Sequence[str] | None = None,
    markers: bool = False,
    legend: str = "best",
) -> Axes:
    """Several curves on one axes: ``series`` maps a legend label to ``(x, y)``.
    ``hlines`` draws dotted reference levels (e.g. IoU 0.5 and 0.75); ``styles`` gives
    one matplotlib line style per curve."""
    ax = _figure_axes(ax, (4.2, 2.6))
    for k, (label, (x, y)) in enumerate(series.items()):
        style = styles[k] if styles is not None else "-"
        ax.plot(_np(x), _np(y), style, marker="o" if markers else None, markersize=3, label=label)
    for level in hlines:
        ax.axhline(level, color="k", linewidth=0.7, linestyle=":")
    if logx:
        ax.set_xscale("log")
    _label_axes(ax, xlabel, ylabel, title)
    if len(series) > 1 or next(iter(series), ""):
        ax.legend(fontsize=FONT_SIZE, loc=legend)
    return ax


def histogram(
    values: Any,
    bins: Any,
    *,
    marks: Sequence[float] = (),
    xlabel: str = "",
    ylabel: str = "count",
    title: str = "",
    ax: Axes | None = None,
) -> Axes:
    """A grey histogram of ``values`` with dashed vertical ``marks`` (e.g. thresholds)."""
    ax = _figure_axes(ax, (5.0, 2.2))
    ax.hist(_np(values), bins=_np(bins), color="grey")
    for x in marks:
        ax.axvline(x, color="k", linestyle="--", linewidth=1)
    _label_axes(ax, xlabel, ylabel, title)
    return ax


def pr_curve(recall: Any, precision: Any, *, ax: Axes | None = None, title: str = "") -> Axes:
    """A precision/recall curve: each detection's (recall, precision) as a grey dot and
    the envelope (the best precision at this recall or higher) that AP integrates."""
    ax = _figure_axes(ax, (3.6, 2.6))
    recall, precision = _np(recall), _np(precision)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    ax.plot(recall, precision, "o", color="grey", label="(recall, precision)")
    ax.step(
        np.r_[0, recall], np.r_[envelope[:1], envelope], where="pre", color="C0", label="envelope"
    )
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.05)
    _label_axes(ax, "recall", "precision", title)
    ax.legend(fontsize=FONT_SIZE, loc="lower left")
    return ax


def before_after(
    before: Any,
    after: Any,
    *,
    xlabel: str = "before",
    ylabel: str = "after",
    title: str = "",
    lines: Sequence[float] = (),
    ax: Axes | None = None,
) -> Axes:
    """Paired measurements as a scatter against the diagonal: a point above it improved
    (e.g. each window's IoU with its object before and after box regression). ``lines``
    marks thresholds on both axes (dotted)."""
    ax = _figure_axes(ax, (3.0, 3.0))
    before, after = _np(before), _np(after)
    ax.scatter(before, after, s=3, alpha=0.3, color="C0", linewidths=0)
    lo = float(min(before.min(), after.min(), 0.0))
    hi = float(max(before.max(), after.max(), 1.0))
    ax.plot([lo, hi], [lo, hi], color="k", linewidth=0.8)
    for level in lines:
        ax.axvline(level, color="k", linewidth=0.6, linestyle=":")
        ax.axhline(level, color="k", linewidth=0.6, linestyle=":")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    _label_axes(ax, xlabel, ylabel, title)
    return ax


def training_curves(
    histories: dict[str, Sequence[dict[str, float]]],
    keys: Sequence[str] = ("total_loss",),
    *,
    ax: Axes | None = None,
    title: str = "",
    logy: bool = False,
    ylabel: str = "loss",
    hlines: Mapping[str, float] | None = None,
) -> Axes:
    """Loss curves of training runs: ``histories`` maps a run's name to its logged records
    (dicts with ``"step"`` and the ``keys``: an engine ``metrics.jsonl``, a results
    file's ``loss_history``, or any per-step trace such as an ``eval_history``). One line
    per (run, key); runs keep one colour, keys differ by line style. ``hlines`` maps a
    label to a reference level, drawn dotted and named at the right."""
    ax = _figure_axes(ax, (4.4, 2.6))
    styles = ["-", "--", ":", "-."]
    for r, (name, records) in enumerate(histories.items()):
        for k, key in enumerate(keys):
            points = [(rec["step"], rec[key]) for rec in records if key in rec]
            if not points:
                raise KeyError(f"training_curves: run {name!r} logged no {key!r}")
            steps, values = zip(*points, strict=True)
            label = name if len(keys) == 1 else (key if len(histories) == 1 else f"{name}: {key}")
            ax.plot(steps, values, styles[k % len(styles)], color=f"C{r}", label=label)
    for label, level in (hlines or {}).items():
        ax.axhline(level, color="k", linewidth=0.8, linestyle=":")
        ax.annotate(label, (1, level), xycoords=("axes fraction", "data"), xytext=(-2, 2),
                    textcoords="offset points", ha="right", va="bottom",
                    fontsize=FONT_SIZE)  # fmt: skip
    if logy:
        ax.set_yscale("log")
    _label_axes(ax, "training step", ylabel, title)
    ax.legend(fontsize=FONT_SIZE)
    return ax


def gradient_norms(
    trace: Sequence[Mapping[str, float]],
    clip: float | None = None,
    *,
    ax: Axes | None = None,
    title: str = "",
) -> Axes:
    """Which loss term the gradient is made of, over training: each term's gradient norm
    (one colour per term) and the whole gradient's (black), log scale. ``trace`` holds
    records ``{"step", "grad/<term>", ..., "grad/total_loss"}`` as
    :func:`rcnn_steps.engine.branch_gradient_norms` measures them (prefixed ``grad/``).
    ``clip``: the whole gradient's clip norm, dashed: where the black line is above it,
    every parameter's step is scaled by ``clip / total``, the term that makes the total
    setting how far every branch moves."""
    if not trace:
        raise ValueError("gradient_norms: the trace is empty")
    terms = [k for k in trace[0] if k.startswith("grad/") and k != "grad/total_loss"]
    if not terms or "grad/total_loss" not in trace[0]:
        raise KeyError("gradient_norms: records need 'grad/<term>' keys and 'grad/total_loss'")
    ax = _figure_axes(ax, (4.6, 2.8))
    steps = [r["step"] for r in trace]
    for k, term in enumerate(terms):
        name = term.removeprefix("grad/loss_").replace("_", " ")
        ax.plot(steps, [max(r[term], 1e-6) for r in trace], color=f"C{k}", linewidth=1.2,
                label=name)  # fmt: skip
    ax.plot(steps, [r["grad/total_loss"] for r in trace], color="k", linewidth=1.6,
            label="whole gradient")  # fmt: skip
    if clip is not None:
        ax.axhline(clip, color="k", linestyle="--", linewidth=0.9)
        ax.annotate(f"clip {clip:g}", (1, clip), xycoords=("axes fraction", "data"),
                    xytext=(-2, 2), textcoords="offset points", ha="right", va="bottom",
                    fontsize=FONT_SIZE)  # fmt: skip
    ax.set_yscale("log")
    _label_axes(ax, "training step", "gradient norm", title)
    ax.legend(fontsize=FONT_SIZE, ncol=2)
    return ax


def recall_curves(
    num_proposals: Sequence[int],
    recalls: dict[str, Sequence[float]],
    *,
    iou: float = 0.5,
    ax: Axes | None = None,
    title: str = "",
) -> Axes:
    """Recall (share of objects some proposal covers at IoU >= ``iou``) against the number
    of proposals per image (log scale), one curve per method."""
    ax = _figure_axes(ax, (3.8, 2.6))
    for k, (name, values) in enumerate(recalls.items()):
        ax.plot(num_proposals, _np(values), "o-", color=f"C{k}", markersize=3, label=name)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    _label_axes(ax, "proposals per image", f"recall at IoU {iou:g}", title)
    ax.legend(fontsize=FONT_SIZE)
    return ax


def plot_stage_times(stage_seconds: dict[str, float], ax: Axes | None = None) -> Axes:
    """Horizontal bars: milliseconds per test-time stage (a model's ``inspect()``
    ``stage_seconds``), in the order the stages run."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.0, 0.45 * len(stage_seconds) + 0.8), dpi=DPI)
    names = list(stage_seconds)[::-1]
    ms = [stage_seconds[n] * 1e3 for n in names]
    ax.barh(names, ms, color="tab:blue")
    for y, v in enumerate(ms):
        ax.text(v, y, f" {v:.1f}", va="center", fontsize=FONT_SIZE)
    ax.set_xlabel("milliseconds per image")
    ax.set_xlim(0, max(ms) * 1.25 if ms else 1)
    return ax
