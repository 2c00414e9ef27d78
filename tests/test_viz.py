"""Drawing functions put the expected artists on the axes (checked without a screen)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from rcnn_steps import viz  # noqa: E402
from rcnn_steps.data import KEYPOINT_NAMES, SKELETON, CocoDataset  # noqa: E402


def _rects(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_boxes_are_drawn_at_their_pixels_with_captions():
    ax = viz.show_image(torch.zeros(3, 20, 30))
    viz.draw_boxes(ax, torch.tensor([[2.0, 3.0, 12.0, 8.0]]), [1], [0.87], ["bg", "cat"])
    (r,) = _rects(ax)
    assert (r.get_x(), r.get_y(), r.get_width(), r.get_height()) == (1.5, 2.5, 10.0, 5.0)
    assert [t.get_text() for t in ax.texts] == ["cat 0.87"]
    assert r.get_edgecolor()[:3] == viz.class_colour(1)
    plt.close("all")


def test_masks_overlay_only_the_mask_pixels():
    ax = viz.show_image(np.zeros((8, 8, 3), dtype=np.uint8))
    m = torch.zeros(2, 8, 8)
    m[0, :2, :2] = 1
    m[1, 5:, 5:] = 0.9
    viz.draw_masks(ax, m, labels=[1, 2])
    overlay = ax.images[-1].get_array()
    assert overlay.shape == (8, 8, 4)
    assert (overlay[..., 3] > 0).sum() == 4 + 9
    viz.draw_masks(ax, torch.zeros(0, 8, 8))  # no masks: nothing drawn, no error
    plt.close("all")


def test_keypoints_skip_unlabelled_and_hollow_hidden():
    ax = viz.show_image(torch.zeros(3, 10, 10))
    kps = torch.tensor([[[1.0, 1.0, 2], [5.0, 5.0, 1], [0.0, 0.0, 0]]])
    viz.draw_keypoints(ax, kps, skeleton=[(0, 1), (1, 2)])
    markers = [ln for ln in ax.lines if ln.get_marker() == "o"]
    assert len(markers) == 2
    assert markers[1].get_markerfacecolor() == "none"
    assert len([ln for ln in ax.lines if ln.get_marker() != "o"]) == 1  # one bone drawn
    plt.close("all")


def test_draw_target_and_detections_on_dataset_items(tiny_synth):
    ds = CocoDataset(tiny_synth / "val", tiny_synth / "annotations" / "instances_val.json")
    image, target = ds[0]
    ax = viz.draw_target(image, target, ds.class_names, ds.skeleton, KEYPOINT_NAMES, title="gt")
    assert len(_rects(ax)) == len(target["boxes"])
    dets = {
        "boxes": target["boxes"],
        "labels": target["labels"],
        "scores": torch.linspace(1.0, 0.1, len(target["boxes"])),
    }
    ax = viz.draw_detections(image, dets, ds.class_names, 0.5, ground_truth=target)
    shown = int((dets["scores"] >= 0.5).sum())
    assert len(_rects(ax)) == len(target["boxes"]) + shown
    fig, axes = viz.image_grid(5, cols=4)
    assert len(axes) == 5 and len(fig.axes) == 8
    assert SKELETON  # the synthetic skeleton is what draw_target is given in the book
    plt.close("all")
