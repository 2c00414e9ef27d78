"""Architecture diagrams: :func:`draw_stages` draws a detector's stages as the detector
itself lists them, top to bottom, with what changed since the previous chapter's detector
highlighted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from rcnn_steps.utils import stage_changes
from rcnn_steps.viz.style import DPI, FONT_SIZE, TITLE_SIZE

#: Fill and edge of a diagram's stages: as before, and new since the previous detector.
_STAGE_COLOURS = {False: ("#e8eef6", "#5b7391"), True: ("#ffe2b8", "#d9822b")}


def draw_stages(
    stages: Sequence[dict[str, Any]],
    previous: Sequence[dict[str, Any]] | None = None,
    *,
    title: str = "",
    previous_name: str = "the previous detector",
    ax: Axes | None = None,
) -> Axes:
    """A detector's architecture, top to bottom: one box per stage (its ``title`` in bold,
    its ``detail``, the real shapes, below), arrows in the order data flows, and the
    ``branch`` stages (Mask R-CNN's mask and keypoint heads) beside the box branch, fed
    by the detections. ``stages`` come from the detector itself (``FasterRCNN.stages``,
    ``FastRCNN.stages``, ``rcnn.rcnn_stages``), so the drawing cannot disagree with the
    code. Given ``previous`` (another detector's stages), every stage whose job
    (``key``) is new or done another way (``title``) is drawn highlighted, and the
    stages it no longer has are named at the top right: what this chapter's idea
    changed."""
    changed, gone = stage_changes(stages, previous or ())
    main = [s for s in stages if not s.get("branch")]
    side = [s for s in stages if s.get("branch")]
    top = (-1.05 if gone else -0.75) if previous is not None else -0.55
    if ax is None:
        _, ax = plt.subplots(
            figsize=(9.0 if side else 5.6, 0.9 * (len(main) - top - 0.45)), dpi=DPI
        )
    ax.set_xlim(0, 2.0 if side else 1.0)
    ax.set_ylim(len(main) - 0.45, top)
    ax.axis("off")

    def box(x: float, y: float, s: dict[str, Any]) -> None:
        fill, edge = _STAGE_COLOURS[previous is not None and s["key"] in changed]
        ax.add_patch(FancyBboxPatch((x - 0.47, y - 0.36), 0.94, 0.72, facecolor=fill,
                                    edgecolor=edge, boxstyle="round,pad=0,rounding_size=0.05",
                                    linewidth=1.2))  # fmt: skip
        ax.text(
            x, y - 0.13, s["title"], ha="center", va="center", fontsize=TITLE_SIZE, weight="bold"
        )
        ax.text(x, y + 0.17, s["detail"], ha="center", va="center", fontsize=FONT_SIZE,
                family="monospace")  # fmt: skip

    def arrow(start: tuple[float, float], end: tuple[float, float]) -> None:
        style = dict(arrowstyle="-|>", mutation_scale=10, color="#44546a", linewidth=1.0)
        ax.add_patch(FancyArrowPatch(start, end, shrinkA=0, shrinkB=0, **style))

    for i, s in enumerate(main):
        box(0.5, i, s)
        if i:
            arrow((0.5, i - 1 + 0.36), (0.5, i - 0.36))
    feeds = next((i for i, s in enumerate(main) if s["key"] == "detections"), len(main) - 1)
    for j, s in enumerate(side):  # stacked upwards from the stage that feeds them
        y = feeds - (len(side) - 1 - j) * 0.95
        box(1.5, y, s)
        arrow((0.97, feeds), (1.03, y))
    if previous is not None:
        fill, edge = _STAGE_COLOURS[True]
        key = FancyBboxPatch((0.03, top + 0.08), 0.05, 0.16, facecolor=fill, edgecolor=edge,
                             boxstyle="square,pad=0")  # fmt: skip
        ax.add_patch(key)
        ax.text(
            0.1,
            top + 0.16,
            f"new or changed since {previous_name}",
            fontsize=FONT_SIZE,
            va="center",
        )
        if gone:  # a stage the idea made unnecessary
            ax.text(0.03, top + 0.46, "gone: " + "; ".join(gone), fontsize=FONT_SIZE, va="center",
                    style="italic")  # fmt: skip
    if title:
        ax.set_title(title, fontsize=TITLE_SIZE)
    return ax
