"""Feature maps as grids of cells, in the coordinates RoIAlign uses (cell ``(r, c)`` is the
unit square centred at ``(x, y) = (c, r)``; chapters 03, 05 and 06): the grid
(:func:`feature_grid`), a region on it (:func:`draw_region`), RoIPool's bins
(:func:`draw_bins`), RoIAlign's sampling points (:func:`draw_points`), a pooled RoI as a
table of numbers (:func:`value_grid`) and any (H, W) map with its colour scale
(:func:`heatmap`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle

from rcnn_steps.viz.style import CAPTION_SIZE, FONT_SIZE, _figure_axes, _np


def feature_grid(
    ax: Axes,
    values: Any = None,
    size: int | None = None,
    *,
    numbers: bool = False,
    fmt: str = "{:.0f}",
    cmap: str = "Greys",
    colorbar: bool = False,
) -> Axes:
    """A feature map drawn as its grid of cells, in the coordinates RoIAlign uses: cell
    ``(r, c)`` is the unit square centred at ``(x, y) = (c, r)``. ``values`` (H, W) shades
    the cells (``numbers`` writes each value in its cell; ``colorbar`` adds a scale);
    without values, ``size`` gives an empty ``size x size`` grid."""
    if values is not None:
        values = _np(values)
        size_h, size_w = values.shape
    else:
        size_h = size_w = int(size)
    if values is not None:
        extent = (-0.5, size_w - 0.5, size_h - 0.5, -0.5)
        im = ax.imshow(values, cmap=cmap, alpha=0.45, extent=extent)
        if colorbar:
            ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(
                labelsize=FONT_SIZE
            )
        if numbers:
            for r in range(size_h):
                for c in range(size_w):
                    ax.text(
                        c,
                        r,
                        fmt.format(values[r, c]),
                        ha="center",
                        va="center",
                        fontsize=CAPTION_SIZE,
                    )
    ax.set_xlim(-0.5, size_w - 0.5)
    ax.set_ylim(size_h - 0.5, -0.5)
    ax.set_xticks(range(size_w))
    ax.set_yticks(range(size_h))
    ax.set_xticks(np.arange(-0.5, size_w), minor=True)
    ax.set_yticks(np.arange(-0.5, size_h), minor=True)
    ax.grid(True, which="minor", linewidth=0.4, color="0.6")
    ax.tick_params(labelsize=FONT_SIZE, which="both", length=0)
    ax.set_aspect("equal")
    return ax


def draw_region(ax: Axes, box: Any, colour: Any = "tab:blue", **kwargs: Any) -> Axes:
    """One (x1, y1, x2, y2) rectangle drawn exactly where it is, in the axes' coordinates
    (a box scaled to a :func:`feature_grid`; :func:`draw_boxes` is for image pixels)."""
    x1, y1, x2, y2 = (float(v) for v in _np(box).reshape(4))
    kwargs.setdefault("linewidth", 1.2)
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, **kwargs))
    return ax


def draw_bins(ax: Axes, cells: Any, colours: Sequence[Any] | None = None, **kwargs: Any) -> Axes:
    """RoIPool's bins over a :func:`feature_grid`: ``cells`` is ``(ph, pw, 4)`` half-open
    cell ranges ``(x_start, y_start, x_end, y_end)`` (``ops.roipool.roi_pool_cells``). Each
    bin is outlined just inside its cells, alternately inset, so overlapping bins stay
    apart; ``colours`` gives one colour per bin (row-major), black by default."""
    flat = _np(cells).reshape(-1, 4)
    kwargs.setdefault("linewidth", 1.0)
    for i, (x0, y0, x1, y1) in enumerate(flat.tolist()):
        inset = 0.05 + 0.06 * (i % 2)
        colour = colours[i] if colours is not None else "black"
        ax.add_patch(
            Rectangle(
                (x0 - 0.5 + inset, y0 - 0.5 + inset),
                x1 - x0 - 2 * inset,
                y1 - y0 - 2 * inset,
                fill=False,
                edgecolor=colour,
                **kwargs,
            )
        )
    return ax


def draw_points(
    ax: Axes, points: Any, colour: Any = "tab:red", marker: str = "o", size: float = 8
) -> Axes:
    """Sampling points ``(..., 2)`` as (x, y) on a :func:`feature_grid`."""
    flat = _np(points).reshape(-1, 2)
    ax.scatter(flat[:, 0], flat[:, 1], s=size, color=colour, marker=marker, zorder=3)
    return ax


def value_grid(
    values: Any,
    *,
    ax: Axes | None = None,
    fmt: str = "{:.2f}",
    colours: Sequence[Any] | None = None,
    title: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
) -> Axes:
    """A small (H, W) array as a table of numbers on lightly shaded cells (a pooled RoI);
    ``colours`` frames each cell (row-major), matching the bins it came from."""
    values = _np(values)
    h, w = values.shape
    ax = _figure_axes(ax, (0.6 * w + 0.5, 0.6 * h + 0.5))
    ax.imshow(values, cmap="Greys", alpha=0.3, vmin=vmin, vmax=vmax)
    for i in range(h):
        for j in range(w):
            ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center", fontsize=FONT_SIZE)
            if colours is not None:
                ax.add_patch(
                    Rectangle(
                        (j - 0.45, i - 0.45),
                        0.9,
                        0.9,
                        fill=False,
                        edgecolor=colours[i * w + j],
                        linewidth=2,
                    )
                )
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=FONT_SIZE)
    return ax


def heatmap(
    values: Any,
    *,
    ax: Axes | None = None,
    title: str = "",
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar: bool = True,
) -> Axes:
    """An (H, W) map (a feature norm, an objectness map) with its colour scale beside it,
    so a reader can tell what the colours mean."""
    ax = _figure_axes(ax, (2.2, 2.0))
    im = ax.imshow(_np(values), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=FONT_SIZE)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=FONT_SIZE)
    return ax
