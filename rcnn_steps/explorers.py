"""Small interactive explorers: sliders on four of the book's figures.

Each explorer is a thin ``ipywidgets.interactive`` around one static drawing function of
:mod:`rcnn_steps.viz`, which holds all the computing and drawing; the chapter shows that
function's figure for one setting (so the page and nbval see it), then the explorer:

- chapter 01: :func:`sliding_window_explorer` around :func:`rcnn_steps.viz.window_label`
  (one window slid over an image: its crop, its label by the crop rule, the classifier's
  answer);
- chapter 04: :func:`anchor_threshold_explorer` around :func:`rcnn_steps.viz.anchor_labels`
  (the RPN's positive and negative IoU thresholds);
- chapter 05: :func:`pyramid_level_explorer` around :func:`rcnn_steps.viz.pyramid_level`
  (FPN eq. 1: which level pools a box of a given size);
- chapter 06: :func:`roi_bins_explorer` around :func:`rcnn_steps.viz.roipool_vs_roialign`
  (a box sliding over the feature grid: RoIPool's bins against RoIAlign's).

The sliders redraw live in JupyterLab or Notebook with a running kernel; the widgets build
without one (the tests build them and call their callbacks). Each explorer returns the
``interactive`` widget: display it (the last line of a cell), and its ``result`` is the
axes of the latest drawing.

ipywidgets is in the book's requirements (``requirements.txt``), not in the library's:
only this module imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import torch

from rcnn_steps import viz

try:
    import ipywidgets as widgets
except ImportError as err:  # the library itself does not need it
    raise ImportError(
        "rcnn_steps.explorers needs ipywidgets: pip install ipywidgets (the book's "
        "requirements.txt pins it)."
    ) from err

__all__ = [
    "anchor_threshold_explorer",
    "pyramid_level_explorer",
    "roi_bins_explorer",
    "sliding_window_explorer",
]

#: Sliders update on release, not while dragging: each redraw makes a new figure.
_SLIDER = {"continuous_update": False, "style": {"description_width": "initial"}}


def _shown(draw: Callable[..., Any]) -> Callable[..., Any]:
    """``draw`` followed by ``plt.show()``, so the figure appears in the widget's output
    (and is closed by the inline backend); returns what ``draw`` returned."""

    def callback(**kwargs: Any) -> Any:
        axes = draw(**kwargs)
        plt.show()
        return axes

    return callback


def sliding_window_explorer(
    image: torch.Tensor,
    target: Mapping[str, Any],
    class_names: Sequence[str],
    model: torch.nn.Module | None = None,
    *,
    x: float = 0.0,
    y: float = 0.0,
    size: float = 27.0,
    ratio: float = 1.0,
    stride: float = 0.25,
) -> widgets.interactive:
    """Chapter 01: sliders for a window's top-left ``x`` and ``y`` (pixels), its ``size``
    (pixels), its shape (``ratio``, width / height: 1:1, 3:1 or 1:3, the detector's) and
    the ``stride`` between windows (in window sides) over
    :func:`rcnn_steps.viz.window_label`; ``model`` (a trained
    :class:`rcnn_steps.sliding_window.CropClassifier` in eval mode) adds its answer. The
    size slider's maximum follows the shape, so the window always fits in the image."""
    height, width = image.shape[-2:]

    def draw(x: float, y: float, size: float, ratio: float, stride: float) -> Any:
        return viz.window_label(image, target, class_names, x, y, size, ratio, stride, model=model)

    def largest(r: float) -> int:
        # the largest size whose window, size * sqrt(r) by size / sqrt(r), fits
        return int(min(width / r**0.5, height * r**0.5))

    sizes = widgets.FloatSlider(value=size, min=4, max=largest(ratio), step=1,
                                description="size (px)", **_SLIDER)  # fmt: skip
    shapes = widgets.Dropdown(options=[("1:1", 1.0), ("3:1 (wide)", 3.0), ("1:3 (tall)", 1 / 3)],
                              value=ratio, description="shape (w:h)")  # fmt: skip
    # registered before the widget's own observer, so the size fits before the redraw
    shapes.observe(lambda change: setattr(sizes, "max", largest(change["new"])), "value")
    return widgets.interactive(
        _shown(draw),
        x=widgets.FloatSlider(value=x, min=0, max=width, step=1, description="x (px)", **_SLIDER),
        y=widgets.FloatSlider(value=y, min=0, max=height, step=1, description="y (px)", **_SLIDER),
        size=sizes,
        ratio=shapes,
        stride=widgets.FloatSlider(value=stride, min=0.05, max=1.0, step=0.05,
                                   description="stride (window sides)", **_SLIDER),
    )  # fmt: skip


def roi_bins_explorer(
    grid_size: int = 8, output_size: int = 3, sampling_ratio: int = 2
) -> widgets.interactive:
    """Chapter 06: sliders for a box's ``x``, ``y``, ``w``, ``h`` in feature cells
    (steps of 0.05 cell) over :func:`rcnn_steps.viz.roipool_vs_roialign`."""

    def draw(x: float, y: float, w: float, h: float) -> Any:
        return viz.roipool_vs_roialign(
            x, y, w, h, grid_size=grid_size, output_size=output_size, sampling_ratio=sampling_ratio
        )

    def cells(description: str, value: float, low: float) -> widgets.FloatSlider:
        return widgets.FloatSlider(value=value, min=low, max=grid_size - 1, step=0.05,
                                   description=description, **_SLIDER)  # fmt: skip

    return widgets.interactive(
        _shown(draw),
        x=cells("x (cells)", 1.3, -0.5),
        y=cells("y (cells)", 1.6, -0.5),
        w=cells("w (cells)", 4.6, 0.5),
        h=cells("h (cells)", 3.7, 0.5),
    )


def anchor_threshold_explorer(
    image: torch.Tensor, gt_box: torch.Tensor, anchors: torch.Tensor
) -> widgets.interactive:
    """Chapter 04: sliders for the Matcher's ``high`` and ``low`` IoU thresholds over
    :func:`rcnn_steps.viz.anchor_labels` (one ground-truth box and all anchors). The low
    slider's maximum follows the high one, so ``low <= high`` holds, as Matcher requires."""

    def draw(high: float, low: float) -> Any:
        return viz.anchor_labels(image, gt_box, anchors, high, low)

    def threshold(description: str, value: float) -> widgets.FloatSlider:
        return widgets.FloatSlider(value=value, min=0.05, max=0.95, step=0.05,
                                   description=description, **_SLIDER)  # fmt: skip

    high = threshold("positive IoU >=", 0.7)
    low = threshold("negative IoU <", 0.3)
    widgets.dlink((high, "value"), (low, "max"))  # lowering high pulls low down with it
    return widgets.interactive(_shown(draw), high=high, low=low)


def pyramid_level_explorer(
    image: torch.Tensor,
    canonical_size: float = 56,
    canonical_level: int = 4,
    levels: Sequence[int] = (2, 3, 4, 5),
) -> widgets.interactive:
    """Chapter 05: sliders for a square box's ``side`` (pixels), ``s0`` and ``k0`` over
    :func:`rcnn_steps.viz.pyramid_level` on one image."""

    def draw(side: float, canonical_size: float, canonical_level: int) -> Any:
        return viz.pyramid_level(image, side, canonical_size=canonical_size,
                                 canonical_level=canonical_level, levels=levels)  # fmt: skip

    image_side = max(image.shape[-2:])
    return widgets.interactive(
        _shown(draw),
        side=widgets.FloatSlider(value=40, min=4, max=image_side, step=1,
                                 description="box side (px)", **_SLIDER),
        canonical_size=widgets.FloatSlider(value=canonical_size, min=14, max=224, step=2,
                                           description="s0 (px)", **_SLIDER),
        canonical_level=widgets.IntSlider(value=canonical_level, min=levels[0],
                                          max=levels[-1], description="k0", **_SLIDER),
    )  # fmt: skip
