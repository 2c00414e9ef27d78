"""The book's figure style, in one place: the sizes every figure is drawn at (:data:`DPI`,
:data:`FONT_SIZE`, :data:`TITLE_SIZE`, :data:`CAPTION_SIZE`), the same as matplotlib settings
for a chapter's own figures (:data:`BOOK_STYLE`, :func:`use_book_style`), one colour per
class (:func:`class_colour`), and the small helpers the other drawing modules share (arrays
from tensors, a new axes when none is given, axis labels at the book's sizes).
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes

#: The book's figure defaults, in one place (issue 26: dpi >= 110, labels >= 9 pt). Every
#: figure this package makes uses them; a chapter's own figures get them from BOOK_STYLE.
DPI = 110
#: Ticks, axis labels, legends and the text of charts, in points.
FONT_SIZE = 9
#: Titles, in points.
TITLE_SIZE = 10
#: Text drawn inside an image or a grid cell (box captions, cell values), in points:
#: smaller than the labels, because at 9 pt a caption on a 128-px image covers the object
#: it names and a number overflows its cell.
CAPTION_SIZE = 7
#: The same defaults as matplotlib settings (rcParams), for figures a chapter makes itself.
BOOK_STYLE: dict[str, Any] = {
    "figure.dpi": DPI,
    "font.size": FONT_SIZE,
    "axes.labelsize": FONT_SIZE,
    "axes.titlesize": TITLE_SIZE,
    "xtick.labelsize": FONT_SIZE,
    "ytick.labelsize": FONT_SIZE,
    "legend.fontsize": FONT_SIZE,
    "legend.title_fontsize": FONT_SIZE,
    "figure.titlesize": TITLE_SIZE,
}


def use_book_style() -> None:
    """Make :data:`BOOK_STYLE` matplotlib's defaults for the rest of the session (a
    chapter's first cell calls it, so its own ``plt.subplots`` figures match this
    package's). ``with plt.rc_context(viz.BOOK_STYLE):`` does the same for one block."""
    plt.rcParams.update(BOOK_STYLE)


# tab10 without grey, so that every class colour stands out from a grey-ish background
_PALETTE = [plt.get_cmap("tab10")(i)[:3] for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]


def class_colour(label: int) -> tuple[float, float, float]:
    """A fixed RGB colour (0..1) per class label, the same in every chapter."""
    return _PALETTE[int(label) % len(_PALETTE)]


def _np(x: Any) -> np.ndarray:
    """``x`` as a numpy array (a tensor detached and moved to the CPU first)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _axes(ax: Axes | None, size: float = 3.0) -> Axes:
    """``ax``, or a new ``size``-inch square axes at :data:`DPI` (for images)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(size, size), dpi=DPI)
    return ax


def _figure_axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    """``ax``, or a new axes of ``figsize`` inches at :data:`DPI` (for charts)."""
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, dpi=DPI)
    return ax


def _label_axes(ax: Axes, xlabel: str, ylabel: str, title: str) -> None:
    """Axis labels, title and ticks at the book's sizes (an empty text is left out)."""
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=FONT_SIZE)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=FONT_SIZE)
    if title:
        ax.set_title(title, fontsize=TITLE_SIZE)
    ax.tick_params(labelsize=FONT_SIZE)
