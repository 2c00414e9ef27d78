"""Drawing: images with boxes, labels and scores, masks as coloured overlays, keypoints with
their skeleton, and sets of anchors or proposals (first used in chapter 00); measurements
as pictures (curves, histograms, precision/recall and training curves, ablation tables as
bars with the spread over seeds, AP against seconds per image); and feature grids with
RoI bins and sampling points (chapters 03 and 06). A chapter computes what it shows with
the library and calls one of these to draw it. Four views compute for themselves, because
:mod:`rcnn_steps.explorers` puts sliders on their arguments: :func:`window_label`
(chapter 01), :func:`roipool_vs_roialign` (chapter 06), :func:`anchor_labels` (chapter 04)
and :func:`pyramid_level` (chapter 05) ask the library (``crop_and_resize``,
``roi_pool_cells``, ``roi_align_bins``, ``Matcher``, ``LevelMapper``) and draw its answer
for one setting.

Every function draws onto a matplotlib ``Axes`` (made for you when ``ax`` is None) and
returns it, so chapters can lay several views side by side. Figures are kept small because
they are committed inside the notebooks, but sharp and readable: every figure made here is
drawn at :data:`DPI` with text of at least :data:`FONT_SIZE` pt (:data:`BOOK_STYLE` gives a
chapter's own ``plt.subplots`` the same, through :func:`use_book_style`).

Chapters call everything through this package (``from rcnn_steps import viz``;
``viz.draw_boxes(...)``); the modules hold one kind of picture each:

- :mod:`~rcnn_steps.viz.style`: the sizes, :data:`BOOK_STYLE`, class colours (the one
  place the style is set);
- :mod:`~rcnn_steps.viz.images`: images with boxes, masks, keypoints, targets and
  detections on them, and grids of panels;
- :mod:`~rcnn_steps.viz.mask_keypoint_heads`: mask and keypoint targets and heatmaps
  (chapter 07);
- :mod:`~rcnn_steps.viz.failures`: the gallery of the final model's failures (chapter 08);
- :mod:`~rcnn_steps.viz.charts`: curves, histograms, precision/recall, training curves,
  gradient norms, proposal recall, stage times;
- :mod:`~rcnn_steps.viz.comparisons`: ablation bars, effect forests, AP against seconds,
  the ladder's waterfall;
- :mod:`~rcnn_steps.viz.feature_maps`: feature grids, RoI bins and sampling points,
  heatmaps;
- :mod:`~rcnn_steps.viz.explorer_views`: one setting of each explorer (chapters 01, 04,
  05, 06);
- :mod:`~rcnn_steps.viz.diagrams`: a detector's stages as a diagram.
"""

from rcnn_steps.viz.charts import (
    before_after,
    curves,
    gradient_norms,
    histogram,
    plot_stage_times,
    pr_curve,
    recall_curves,
    training_curves,
)
from rcnn_steps.viz.comparisons import (
    ablation_bars,
    ap_vs_seconds,
    effect_forest,
    effect_sentence,
    ladder_waterfall,
    size_effects,
)
from rcnn_steps.viz.diagrams import draw_stages
from rcnn_steps.viz.explorer_views import (
    LABEL_COLOURS,
    WINDOW_COLOURS,
    anchor_labels,
    pyramid_level,
    roipool_vs_roialign,
    window_label,
    window_positions,
)
from rcnn_steps.viz.failures import failure_gallery
from rcnn_steps.viz.feature_maps import (
    draw_bins,
    draw_points,
    draw_region,
    feature_grid,
    heatmap,
    value_grid,
)
from rcnn_steps.viz.images import (
    draw_boxes,
    draw_detections,
    draw_instances,
    draw_keypoints,
    draw_masks,
    draw_target,
    image_grid,
    show_image,
)
from rcnn_steps.viz.mask_keypoint_heads import (
    draw_keypoint_heatmaps,
    draw_keypoint_targets,
    draw_mask_target,
    plot_mask_probabilities,
)
from rcnn_steps.viz.style import (
    BOOK_STYLE,
    CAPTION_SIZE,
    DPI,
    FONT_SIZE,
    TITLE_SIZE,
    class_colour,
    use_book_style,
)

__all__ = [
    "BOOK_STYLE",
    "CAPTION_SIZE",
    "DPI",
    "FONT_SIZE",
    "TITLE_SIZE",
    "LABEL_COLOURS",
    "WINDOW_COLOURS",
    "ablation_bars",
    "anchor_labels",
    "ap_vs_seconds",
    "before_after",
    "class_colour",
    "curves",
    "draw_bins",
    "draw_boxes",
    "draw_detections",
    "draw_instances",
    "draw_keypoint_heatmaps",
    "draw_keypoint_targets",
    "draw_keypoints",
    "draw_mask_target",
    "draw_masks",
    "draw_points",
    "draw_region",
    "draw_stages",
    "draw_target",
    "effect_forest",
    "effect_sentence",
    "failure_gallery",
    "feature_grid",
    "gradient_norms",
    "heatmap",
    "histogram",
    "image_grid",
    "ladder_waterfall",
    "size_effects",
    "plot_mask_probabilities",
    "plot_stage_times",
    "pr_curve",
    "pyramid_level",
    "recall_curves",
    "roipool_vs_roialign",
    "show_image",
    "training_curves",
    "use_book_style",
    "value_grid",
    "window_label",
    "window_positions",
]
