"""Drawing functions put the expected artists on the axes (checked without a screen)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from rcnn_steps import sliding_window as sw  # noqa: E402
from rcnn_steps import viz  # noqa: E402
from rcnn_steps.data import KEYPOINT_NAMES, SKELETON, CocoDataset  # noqa: E402
from rcnn_steps.evaluation import error_summary  # noqa: E402
from rcnn_steps.modeling.anchors import AnchorGenerator  # noqa: E402
from rcnn_steps.modeling.matcher import Matcher  # noqa: E402
from rcnn_steps.modeling.poolers import LevelMapper  # noqa: E402
from rcnn_steps.ops import (  # noqa: E402
    ImageList,
    box_iou,
    roi_align_bins,
    roi_align_sampling_points,
    roi_pool_cells,
)
from rcnn_steps.utils import stage_changes  # noqa: E402


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


# Measurements as pictures


def test_curves_histogram_and_pr_curve():
    ax = viz.curves(
        {"a": ([0, 1, 2], [1.0, 0.5, 0.2]), "b": ([0, 1, 2], [1.0, 0.8, 0.6])},
        xlabel="shift",
        ylabel="IoU",
        hlines=(0.5, 0.75),
        logx=False,
    )
    assert [ln.get_label() for ln in ax.get_lines()][:2] == ["a", "b"]
    assert len(ax.get_lines()) == 4 and ax.get_xlabel() == "shift"
    ax = viz.histogram([1, 2, 2, 3], bins=[0, 1, 2, 3, 4], marks=(2.5,))
    assert sum(p.get_height() for p in ax.patches) == 4 and len(ax.get_lines()) == 1
    ax = viz.pr_curve(np.array([0.25, 0.5, 0.5]), np.array([1.0, 1.0, 0.667]))
    envelope = ax.get_lines()[1]
    assert envelope.get_ydata()[-1] == pytest.approx(0.667)  # the best precision from there on
    plt.close("all")


def test_training_curves_one_line_per_run_and_key():
    run = [{"step": 10, "total_loss": 2.0, "loss_cls": 1.5}, {"step": 20, "total_loss": 1.0}]
    ax = viz.training_curves({"seed 0": run, "seed 1": run}, keys=("total_loss",))
    assert [ln.get_label() for ln in ax.get_lines()] == ["seed 0", "seed 1"]
    assert list(ax.get_lines()[0].get_xdata()) == [10, 20]
    ax = viz.training_curves({"r": run}, keys=("total_loss", "loss_cls"))
    assert [ln.get_label() for ln in ax.get_lines()] == ["total_loss", "loss_cls"]
    assert list(ax.get_lines()[1].get_xdata()) == [10]  # only the records that logged it
    with pytest.raises(KeyError, match="logged no 'loss_box'"):
        viz.training_curves({"r": run}, keys=("loss_box",))
    ax = viz.training_curves({"r": run}, ylabel="entropy", hlines={"flat map": 1.5})
    assert ax.get_ylabel() == "entropy" and [t.get_text() for t in ax.texts] == ["flat map"]
    assert list(ax.get_lines()[-1].get_ydata()) == [1.5, 1.5]  # the reference level
    plt.close("all")


def test_gradient_norms_one_line_per_term_then_the_whole_gradient():
    keys = ("step", "grad/loss_classifier", "grad/loss_keypoint", "grad/total_loss")
    rows = [(25, 2.0, 30.0, 30.1), (50, 1.0, 0.0, 1.0)]
    trace = [dict(zip(keys, row, strict=True)) for row in rows]
    ax = viz.gradient_norms(trace, clip=10)
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert labels[:3] == ["classifier", "keypoint", "whole gradient"]
    assert list(ax.get_lines()[2].get_ydata()) == [30.1, 1.0]
    assert ax.get_lines()[1].get_ydata()[1] > 0  # a zero norm stays drawable on a log axis
    assert ax.get_yscale() == "log" and [t.get_text() for t in ax.texts] == ["clip 10"]
    with pytest.raises(ValueError, match="empty"):
        viz.gradient_norms([])
    with pytest.raises(KeyError, match="total_loss"):
        viz.gradient_norms([{"step": 1, "grad/loss_a": 1.0}])
    plt.close("all")


def test_recall_curves_and_ap_vs_seconds():
    ax = viz.recall_curves([10, 100], {"ours": [0.3, 0.9], "opencv": [0.4, 0.7]}, iou=0.7)
    assert ax.get_xscale() == "log" and "0.7" in ax.get_ylabel()
    rows = [
        {"chapter": "02", "detector": "R-CNN", "metrics": {"AP": 0.5}, "seconds_per_image": 0.4},
        {"chapter": "04", "detector": "Faster", "metrics": {"AP": 0.3}, "seconds_per_image": 0.01},
    ]
    timed_on_two = {"machine": {"torch_threads": 2}}
    rows.append({"chapter": "01", "detector": "windows", "metrics": {"AP": 0.1},
                 "seconds_per_image": 1.5, "provenance": timed_on_two})  # fmt: skip
    ax = viz.ap_vs_seconds(rows)
    assert [t.get_text() for t in ax.texts] == ["02 R-CNN", "04 Faster", "01 windows (2 threads)"]
    assert ax.get_lines()[0].get_ydata()[0] == pytest.approx(50.0)  # in %
    plt.close("all")


def test_ablation_bars_show_mean_spread_and_paper_in_percent():
    summary = {
        "a": {"AP50": {"mean": 0.6, "min": 0.55, "max": 0.65}, "n": 2},
        "b": {"AP50": {"mean": 0.4, "min": 0.39, "max": 0.41}, "n": 2},
    }
    ax = viz.ablation_bars(
        summary, "AP50", names=["b", "a"], labels={"a": "setting A"}, paper={"a": 69.9, "b": None}
    )
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert [round(b.get_width(), 6) for b in bars] == [40.0, 60.0]  # top to bottom: b, a
    whiskers = [ln for ln in ax.get_lines() if ln.get_marker() == "None"]
    spans = sorted(tuple(round(float(x), 6) for x in w.get_xdata()) for w in whiskers)
    assert spans == [(39.0, 41.0), (55.0, 65.0)]
    diamonds = [ln for ln in ax.get_lines() if ln.get_marker() == "D"]
    assert len(diamonds) == 1 and diamonds[0].get_xdata()[0] == 69.9
    assert [t.get_text() for t in ax.get_yticklabels()] == ["b", "setting A"]
    assert "%" in ax.get_xlabel() and ax.get_legend() is not None
    ax = viz.ablation_bars(summary, "AP50", legend=False)
    assert ax.get_legend() is None
    # a setting not run yet is an empty row that says so, and not counted in the legend
    summary["c"] = {"n": 0}
    ax = viz.ablation_bars(summary, "AP50", names=["a", "c"])
    assert len([p for p in ax.patches if isinstance(p, Rectangle)]) == 1
    assert [t.get_text() for t in ax.texts] == ["not run"]
    assert ax.get_legend().get_texts()[0].get_text() == "ours, mean of 2 seeds"
    plt.close("all")


def test_feature_grid_regions_bins_points_and_value_grid():
    fig, ax = plt.subplots()
    viz.feature_grid(ax, torch.arange(16.0).reshape(4, 4), numbers=True, colorbar=True)
    assert ax.get_xlim() == (-0.5, 3.5) and len(ax.texts) == 16 and len(fig.axes) == 2
    viz.draw_region(ax, torch.tensor([0.5, 0.5, 2.0, 3.0]), "blue")
    (region,) = _rects(ax)
    assert (region.get_x(), region.get_width(), region.get_height()) == (0.5, 1.5, 2.5)
    cells = torch.tensor([[[0, 0, 2, 3], [1, 0, 4, 3]]])  # two bins sharing column 1
    viz.draw_bins(ax, cells, colours=["red", "green"])
    bins = _rects(ax)[1:]
    assert len(bins) == 2 and bins[0].get_x() > -0.5 and bins[1].get_x() + bins[1].get_width() < 3.5
    viz.draw_points(ax, torch.zeros(2, 2, 2))
    assert len(ax.collections[-1].get_offsets()) == 4
    ax = viz.value_grid(np.array([[1.0, 2.0], [3.0, 4.0]]), colours=["r", "g", "b", "k"])
    assert [t.get_text() for t in ax.texts] == ["1.00", "2.00", "3.00", "4.00"]
    assert len(_rects(ax)) == 4
    ax = viz.heatmap(np.zeros((3, 3)), title="objectness")
    assert len(ax.figure.axes) == 2  # the map and its colour bar
    plt.close("all")


def _anchor_grid(size=64, stride=8):
    """The anchors of chapter 04's single map, on a ``size`` px image."""
    generator = AnchorGenerator(((8, 16, 32),), ((0.5, 1.0, 2.0),))
    batch = ImageList.from_tensors([torch.zeros(3, size, size)], 32)
    return generator(batch, [torch.zeros(1, 1, size // stride, size // stride)])[0]


def _edge_rgb(rect):
    return tuple(round(v, 3) for v in rect.get_edgecolor()[:3])


def test_roipool_vs_roialign_draws_the_librarys_bins_and_points():
    x, y, w, h = 1.3, 1.6, 4.6, 3.7
    pool_ax, align_ax = viz.roipool_vs_roialign(x, y, w, h, grid_size=8, output_size=3)
    box = torch.tensor([x, y, x + w, y + h])
    cells = roi_pool_cells(box, 1.0, 3, feature_size=(8, 8))
    # left: the dashed box, then one rectangle per RoIPool bin, inset inside its cells
    drawn = _rects(pool_ax)[1:]
    assert len(drawn) == 9
    for rect, (x0, y0, x1, y1) in zip(drawn, cells.reshape(-1, 4).tolist(), strict=True):
        assert x0 - 0.5 < rect.get_x() < x0 - 0.5 + 0.2
        assert y0 - 0.5 < rect.get_y() < y0 - 0.5 + 0.2
        assert x1 - x0 - 0.4 < rect.get_width() < x1 - x0
        assert y1 - y0 - 0.4 < rect.get_height() < y1 - y0
    assert pool_ax.get_title().startswith("RoIPool: cells 1..6 x 2..5")  # round(1.3)..round(5.9)
    # right: RoIAlign's fractional bins, exactly, and every sampling point in its bin's colour
    bins = roi_align_bins(box, 3)
    drawn = _rects(align_ax)[1:]
    for rect, (x0, y0, x1, y1) in zip(drawn, bins.reshape(-1, 4).tolist(), strict=True):
        assert rect.get_x() == pytest.approx(x0) and rect.get_y() == pytest.approx(y0)
        assert rect.get_width() == pytest.approx(x1 - x0)
        assert rect.get_height() == pytest.approx(y1 - y0)
    points = roi_align_sampling_points(box, 3, 1.0, 2).reshape(9, 4, 2)
    assert len(align_ax.collections) == 9
    for scatter, bin_points, rect in zip(align_ax.collections, points, drawn, strict=True):
        np.testing.assert_allclose(scatter.get_offsets(), bin_points.numpy(), rtol=1e-6)
        assert tuple(scatter.get_facecolor()[0][:3]) == rect.get_edgecolor()[:3]
    with pytest.raises(ValueError, match="w and h must be > 0"):
        viz.roipool_vs_roialign(1.0, 1.0, 0.0, 2.0)
    plt.close("all")


@pytest.mark.parametrize("high, low", [(0.7, 0.3), (0.5, 0.3), (0.5, 0.5)])
def test_anchor_labels_colours_the_matchers_labels(high, low):
    anchors = _anchor_grid()
    gt = torch.tensor([10.0, 12.0, 34.0, 30.0])
    image_ax, hist_ax = viz.anchor_labels(torch.zeros(3, 64, 64), gt, anchors, high, low)
    matches = Matcher(high, low)(box_iou(gt[None], anchors))
    positive = int((matches >= 0).sum())
    ignored = int((matches == Matcher.BETWEEN_THRESHOLDS).sum())
    colours = [_edge_rgb(r) for r in _rects(image_ax)]
    lime, orange = (
        tuple(round(v, 3) for v in matplotlib.colors.to_rgb(c)) for c in ("lime", "orange")
    )
    assert positive >= 1 and colours.count(lime) == positive
    assert colours.count(orange) == ignored
    assert image_ax.get_title().startswith(f"positive {positive} (lime), ignored {ignored}")
    # the histogram holds every anchor that overlaps the box, in three label colours
    bars = sum(p.get_height() for p in hist_ax.patches)
    assert bars == int((box_iou(gt[None], anchors) > 0).sum())
    plt.close("all")


def test_anchor_labels_shows_the_low_quality_positive():
    """At 0.95 no anchor qualifies by IoU, and the box's best anchor is positive anyway."""
    anchors = _anchor_grid()
    gt = torch.tensor([10.0, 12.0, 34.0, 30.0])
    image_ax, _ = viz.anchor_labels(torch.zeros(3, 64, 64), gt, anchors, 0.95, 0.3)
    assert image_ax.get_title().startswith("positive 1 ")
    image_ax, _ = viz.anchor_labels(
        torch.zeros(3, 64, 64), gt, anchors, 0.95, 0.3, allow_low_quality_matches=False
    )
    assert image_ax.get_title().startswith("positive 0 ")
    with pytest.raises(ValueError, match="low_threshold"):
        viz.anchor_labels(torch.zeros(3, 64, 64), gt, anchors, 0.3, 0.7)
    plt.close("all")


@pytest.mark.parametrize(
    "side, s0, k0, expected",
    [
        (40, 56, 4, 3),
        (100, 56, 4, 4),
        (4, 56, 4, 2),
        (127, 56, 4, 5),
        (100, 224, 4, 2),
        (20, 56, 5, 3),
    ],
)
def test_pyramid_level_frames_the_level_of_equation_1(side, s0, k0, expected):
    image = torch.zeros(3, 128, 128)
    axes = viz.pyramid_level(image, side, canonical_size=s0, canonical_level=k0)
    box = torch.tensor([[64 - side / 2, 64 - side / 2, 64 + side / 2, 64 + side / 2]])
    assert int(LevelMapper(2, 5, s0, k0).level(box)[0]) == expected  # the test's own reading
    framed = [
        k for k, ax in zip((2, 3, 4, 5), axes, strict=True) if "pooled here" in ax.get_title()
    ]
    assert framed == [expected]
    assert axes[expected - 2].spines["left"].get_linewidth() > 2
    assert axes[0].get_title().startswith(f"P2: 32 x 32\nbox {side / 4:.2f} cells")
    assert axes[0].figure._suptitle.get_text().endswith(f"P{expected}")
    plt.close("all")


def test_pyramid_level_checks_its_arguments():
    with pytest.raises(ValueError, match="consecutive"):
        viz.pyramid_level(torch.zeros(3, 64, 64), 10, levels=(2, 4))
    with pytest.raises(ValueError, match="side must be > 0"):
        viz.pyramid_level(torch.zeros(3, 64, 64), 0)
    plt.close("all")


def test_window_positions_step_a_fraction_of_the_window_and_stay_inside():
    boxes = viz.window_positions((64, 96), 32.0, 16.0, 0.25)  # steps of 8 across, 4 down
    assert len(boxes) == 9 * 13  # (96 - 32) / 8 + 1 columns, (64 - 16) / 4 + 1 rows
    assert boxes[1].tolist() == [8.0, 0.0, 40.0, 16.0] and boxes[9].tolist()[:2] == [0.0, 4.0]
    assert boxes[-1].tolist() == [64.0, 48.0, 96.0, 64.0]  # the last one ends at the corner
    assert len(viz.window_positions((64, 64), 32.0, 32.0, 1.0)) == 4  # tiles, no overlap
    with pytest.raises(ValueError, match="does not fit in a 64 x 64 image"):
        viz.window_positions((64, 64), 80.0, 10.0, 0.25)
    with pytest.raises(ValueError, match="stride must be in"):
        viz.window_positions((64, 64), 16.0, 16.0, 0.0)


def _one_object_image():
    """A 64 px image with one class-2 object, 16 px square at (16, 16)."""
    image = torch.zeros(3, 64, 64)
    image[2, 16:32, 16:32] = 1.0
    target = {"boxes": torch.tensor([[16.0, 16.0, 32.0, 32.0]]), "labels": torch.tensor([2])}
    return image, target, ["__background__", "a", "b"]


@pytest.mark.parametrize(
    "x, y, label",
    [
        (16, 16, "b (IoU 1.00 >= 0.5)"),  # on the object
        (13, 11, "none (IoU 0.39: not trained on)"),  # snaps to (12, 12): 144 / 368 px
        (48, 48, "background (IoU 0.00 < 0.3)"),
    ],
)
def test_window_label_applies_the_crop_rule_to_the_nearest_window(x, y, label):
    image, target, names = _one_object_image()
    image_ax, crop_ax = viz.window_label(image, target, names, x, y, 16.0)  # steps of 4 px
    assert crop_ax.get_xlabel() == "label: " + label
    assert image_ax.get_title().startswith("169 windows of 16 x 16 px,\nstep 4 x 4 px")
    assert image_ax.get_title().endswith("best IoU: b 1.00")  # a window sits on it exactly
    assert crop_ax.get_images()[0].get_array().shape[:2] == (32, 32)  # the classifier's input
    plt.close("all")


def test_window_label_shows_the_classifiers_answer_with_the_label_outlined():
    image, target, names = _one_object_image()
    torch.manual_seed(0)
    model = sw.CropClassifier(num_classes=2)
    with pytest.raises(ValueError, match="call model.eval"):
        viz.window_label(image, target, names, 16, 16, 16.0, model=model)
    image_ax, crop_ax, answer_ax = viz.window_label(
        image, target, names, 16, 16, 16.0, model=model.eval()
    )
    with torch.no_grad():
        crop = sw.crop_and_resize(image, torch.tensor([[16.0, 16.0, 32.0, 32.0]]))
        probs = model(crop).softmax(1)[0]
    widths = [bar.get_width() for bar in answer_ax.patches]
    assert widths == pytest.approx(probs.tolist(), abs=1e-6)
    outlined = [bar.get_linewidth() == 2.0 for bar in answer_ax.patches]
    assert outlined == [False, False, True]  # the label's class, b
    top = int(probs.argmax())
    assert answer_ax.get_title() == f"answer: {['background', 'a', 'b'][top]} {probs[top]:.2f}"
    plt.close("all")


def test_draw_detections_without_captions():
    dets = {"boxes": torch.tensor([[1.0, 1.0, 5.0, 5.0]]), "labels": [1], "scores": [0.9]}
    ax = viz.draw_detections(torch.zeros(3, 8, 8), dets, ["bg", "a"], captions=False)
    assert len(_rects(ax)) == 1 and not ax.texts
    plt.close("all")


def test_before_after_scatter_with_diagonal_and_thresholds():
    ax = viz.before_after([0.3, 0.6], [0.5, 0.55], lines=(0.5,))
    assert len(ax.collections[0].get_offsets()) == 2
    diagonal = ax.get_lines()[0]
    assert list(diagonal.get_xdata()) == list(diagonal.get_ydata())  # y = x
    assert len(ax.get_lines()) == 3  # the diagonal and the threshold on each axis
    plt.close("all")


# ----------------------------------------------------------------------------------------
# Architecture diagrams: drawn from the detectors' own stages


def _stages_of(preset, image):
    from rcnn_steps.detectors.faster_rcnn import FasterRCNN
    from rcnn_steps.experiments.runner import detector_config

    torch.manual_seed(0)
    model = FasterRCNN(detector_config(preset))
    return model, model.stages(image)


def test_a_detectors_stages_carry_the_shapes_its_code_computes():
    image = torch.rand(3, 96, 128)
    model, stages = _stages_of("cpu", image)
    assert [s["key"] for s in stages] == [
        "image", "features", "proposals", "roi_layer", "heads", "detections"
    ]  # fmt: skip
    assert model.training  # the mode is left as it was
    model.eval()
    out = model.inspect([image])
    by_key = {s["key"]: s for s in stages}
    assert by_key["image"]["detail"] == "(3, 96, 128)"
    assert by_key["roi_layer"]["detail"] == str(tuple(out["pooled_features"].shape))
    assert f"-> {len(out['proposals'][0])}" in by_key["proposals"]["detail"]
    assert by_key["roi_layer"]["title"].startswith("RoIPool 7x7")
    _, fpn = _stages_of("cpu_fpn", image)
    assert (
        "FPN" in fpn[1]["title"]
        and "level" in fpn[3]["title"]
        and fpn[1]["detail"] == "P2 (64, 32, 32) ... P6 (64, 2, 2)"  # padded to 128
    )
    _, mask = _stages_of("cpu_mask", image)
    branches = [s for s in mask if s["branch"]]
    assert [s["key"] for s in branches] == ["mask", "keypoints"]
    assert branches[0]["detail"].startswith("logits (") and branches[0]["detail"].endswith(
        "28, 28)"
    )


def test_rcnn_and_fast_rcnn_stages_use_the_same_keys():
    from rcnn_steps.detectors.fast_rcnn import FastRCNN
    from rcnn_steps.detectors.rcnn import RCNNNet, rcnn_stages

    image = torch.rand(3, 64, 64)
    proposals = torch.tensor([[2.0, 3.0, 30.0, 40.0], [10.0, 10.0, 60.0, 50.0]]).repeat(40, 1)
    torch.manual_seed(0)
    rcnn = rcnn_stages(RCNNNet(6, crop_size=32), image, proposals)
    assert [s["key"] for s in rcnn] == [
        "image", "proposals", "warp", "features", "heads", "detections"
    ]  # fmt: skip
    assert rcnn[2]["detail"] == "(80, 3, 32, 32)"  # every crop, though 64 were run
    fast = FastRCNN().stages(image, proposals)
    assert [s["key"] for s in fast] == [
        "image", "proposals", "features", "roi_layer", "heads", "detections"
    ]  # fmt: skip
    assert fast[3]["detail"].startswith("(80, ") and fast[1]["detail"] == "80 boxes"


def test_draw_stages_highlights_what_the_new_idea_changed():
    from matplotlib.patches import FancyBboxPatch

    before = [
        {"key": "image", "title": "image", "detail": "(3, 8, 8)", "branch": False},
        {"key": "warp", "title": "crops", "detail": "(5, 3, 4, 4)", "branch": False},
        {"key": "heads", "title": "head A", "detail": "(5, 2)", "branch": False},
    ]
    after = [
        {"key": "image", "title": "image", "detail": "(3, 8, 8)", "branch": False},
        {"key": "heads", "title": "head B", "detail": "(5, 2)", "branch": False},
        {"key": "detections", "title": "NMS", "detail": "2", "branch": False},
        {"key": "mask", "title": "mask branch", "detail": "(2, 1, 4, 4)", "branch": True},
    ]
    assert stage_changes(after, before) == (["heads", "detections", "mask"], ["crops"])
    ax = viz.draw_stages(after, before, previous_name="A")
    boxes = [p for p in ax.patches if isinstance(p, FancyBboxPatch)]
    highlighted = [p for p in boxes if p.get_edgecolor()[:3] == matplotlib.colors.to_rgb("#d9822b")]
    assert len(boxes) == 5  # four stages and the legend's key
    assert len(highlighted) == 4  # head B, NMS, the mask branch, the key
    texts = [t.get_text() for t in ax.texts]
    assert "gone: crops" in texts and "new or changed since A" in texts
    assert "(2, 1, 4, 4)" in texts
    plain = viz.draw_stages(after)  # without a previous detector nothing is highlighted
    assert not [
        p for p in plain.patches if p.get_edgecolor()[:3] == matplotlib.colors.to_rgb("#d9822b")
    ]
    plt.close("all")


def test_ladder_waterfall_draws_each_step_with_its_seed_range():
    def entry(mean, lo, hi, n):
        return {"AP": {"mean": mean, "min": lo, "max": hi}, "n": n}

    grid = {
        "order": ["a", "b", "c", "d"],
        "summary": {"a": entry(0.50, 0.48, 0.52, 3), "b": entry(0.40, 0.39, 0.42, 3),
                    "c": {"n": 0, "seeds": []}, "d": entry(0.60, 0.60, 0.60, 1)},
    }  # fmt: skip
    ax = viz.ladder_waterfall(grid)
    bars = ax.patches
    assert len(bars) == 3  # "c" has not run
    assert bars[0].get_height() == pytest.approx(50)
    assert bars[1].get_y() == pytest.approx(50) and bars[1].get_height() == pytest.approx(-10)
    assert bars[2].get_y() == pytest.approx(40) and bars[2].get_height() == pytest.approx(20)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "d"]
    whiskers = [line for line in ax.lines if len(set(line.get_xdata())) == 1]
    assert sorted(tuple(line.get_ydata()) for line in whiskers) == [(39, 42), (48, 52)]  # n=1: none
    texts = [t.get_text() for t in ax.texts]
    assert "-10.0" in texts and "+20.0" in texts and "n=1" in texts
    plt.close("all")


# ----------------------------------------------------------------------------------------
# Effects as a forest chart; the book's figure defaults


def _effects():
    return [
        {"label": "A over B", "ours": [1.0, 3.0, 2.5], "paper": 0.5, "metric": "mask AP",
         "section": "Table X"},
        {"label": "C over B", "ours": [-2.0], "paper": None, "metric": "mask AP",
         "section": "Table X"},
        {"label": "D over E", "ours": [4.0, 6.0], "paper": 1.0, "metric": "mask AP",
         "paper_metric": "VOC07 mAP", "section": "Table Y"},
    ]  # fmt: skip


def _by_gid(ax, gid):
    return [a for a in (*ax.lines, *ax.texts) if a.get_gid() == gid]


def test_effect_sentence_says_ours_the_papers_and_one_seed():
    a, c, d = _effects()
    assert viz.effect_sentence(a) == "A over B: +2.2 mask AP (paper +0.5)"
    assert viz.effect_sentence(c) == "C over B: -2.0 mask AP (no paper number), n=1"
    assert viz.effect_sentence(d) == "D over E: +5.0 mask AP (paper +1.0 VOC07 mAP)"
    with pytest.raises(ValueError, match="no per-seed effects"):
        viz.effect_sentence({**a, "ours": []})


def test_effect_forest_one_row_per_effect_with_seed_range_and_paper():
    ax = viz.effect_forest(_effects(), title="t")
    labels = [t.get_text().replace("\N{NO-BREAK SPACE}", " ") for t in ax.get_yticklabels()]
    # two section headings (bold) and one row per record, top to bottom
    assert labels == ["Table X", "A over B: +2.2 mask AP (paper +0.5)",
                      "C over B: -2.0 mask AP (no paper number), n=1", "Table Y",
                      "D over E: +5.0 mask AP (paper +1.0 VOC07 mAP)"]  # fmt: skip
    assert [t.get_fontweight() for t in ax.get_yticklabels()][::3] == ["bold", "bold"]
    rows = dict(zip(labels, ax.get_yticks(), strict=True))
    means = _by_gid(ax, "mean")
    assert len(means) == 3  # one dot per record
    assert [m.get_xdata()[0] for m in means] == pytest.approx([13 / 6, -2.0, 5.0])
    ranges = _by_gid(ax, "range")  # min..max of the seeds; none for the one-seed row
    assert [tuple(r.get_xdata()) for r in ranges] == [(1.0, 3.0), (4.0, 6.0)]
    assert ranges[0].get_ydata()[0] == rows["A over B: +2.2 mask AP (paper +0.5)"]
    assert [len(s.get_xdata()) for s in _by_gid(ax, "seeds")] == [3, 1, 2]
    (note,) = _by_gid(ax, "n=1")  # said, not drawn as a fake range
    assert note.get_text() == "n=1" and note.xy[0] == -2.0
    papers = _by_gid(ax, "paper")  # only where the paper has a number
    assert [p.get_xdata()[0] for p in papers] == [0.5, 1.0]
    assert [p.get_marker() for p in papers] == ["D", "D"] and papers[
        0
    ].get_markerfacecolor() == "none"
    zero = [ln for ln in ax.lines if list(ln.get_xdata()) == [0, 0]]
    assert len(zero) == 1  # the line of no effect
    assert ax.get_legend() is not None and "2/3 seeds" in ax.get_legend().get_texts()[1].get_text()
    plt.close("all")


def test_effect_forest_without_sections_or_paper_numbers():
    effects = [{"label": "A", "ours": [1.0], "paper": None, "metric": "box AP"}]
    ax = viz.effect_forest(effects, legend=False)
    assert len(ax.get_yticks()) == 1 and not _by_gid(ax, "paper") and not _by_gid(ax, "range")
    assert ax.get_legend() is None and "box AP points" in ax.get_xlabel()
    with pytest.raises(ValueError, match="no effects"):
        viz.effect_forest([])
    plt.close("all")


def _text_sizes(ax):
    ticks = [*ax.get_xticklabels(), *ax.get_yticklabels()]
    labels = [ax.xaxis.label, ax.yaxis.label, ax.title]
    legend = ax.get_legend().get_texts() if ax.get_legend() else []
    return [t.get_fontsize() for t in (*ticks, *labels, *legend) if t.get_text()]


@pytest.mark.parametrize(
    "draw",
    [
        lambda: viz.effect_forest(_effects()),
        lambda: viz.curves({"a": ([0, 1], [1, 0]), "b": ([0, 1], [0, 1])}, xlabel="x", title="t"),
        lambda: viz.ablation_bars(
            {"a": {"AP": {"mean": 0.5, "min": 0.4, "max": 0.6}, "n": 2}}, "AP"
        ),
        lambda: viz.training_curves({"r": [{"step": 1, "total_loss": 1.0}]}),
        lambda: viz.heatmap(np.zeros((3, 3)), title="t"),
        lambda: viz.feature_grid(viz.image_grid(1)[1][0], size=4),
        lambda: viz.roipool_vs_roialign(1.3, 1.6, 4.6, 3.7)[1],
        lambda: viz.anchor_labels(torch.zeros(3, 64, 64), [8, 8, 30, 30], _anchor_grid())[1],
        lambda: viz.pyramid_level(torch.zeros(3, 64, 64), 20)[1],
        lambda: viz.window_label(*_one_object_image(), 16, 16, 16.0)[0],
        lambda: viz.window_label(*_one_object_image(), 16, 16, 16.0)[1],
        lambda: viz.ladder_waterfall(
            {
                "order": ["a", "b"],
                "summary": {
                    k: {"AP": {"mean": v, "min": v, "max": v}, "n": 1}
                    for k, v in (("a", 0.5), ("b", 0.6))
                },
            }  # fmt: skip
        ),
    ],
)
def test_figures_are_sharp_with_readable_text(draw):
    ax = draw()
    assert ax.figure.dpi >= 110 and viz.DPI >= 110
    sizes = _text_sizes(ax)
    assert sizes and min(sizes) >= 9, sizes
    plt.close("all")


def test_book_style_gives_a_chapters_own_figures_the_same_defaults():
    with plt.rc_context(viz.BOOK_STYLE):
        fig, ax = plt.subplots()
        ax.set_xlabel("x")
        assert fig.dpi == viz.DPI
        assert ax.xaxis.label.get_fontsize() >= 9
        assert min(t.get_fontsize() for t in ax.get_xticklabels()) >= 9
    plt.close("all")
    with plt.rc_context():  # restores the defaults after
        viz.use_book_style()
        assert plt.rcParams["figure.dpi"] == viz.DPI and plt.rcParams["font.size"] >= 9


def test_effect_forest_legend_says_how_many_seeds_and_one_run_alone():
    ax = viz.effect_forest(_effects())
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["ours, each seed", "ours, mean and range of 2/3 seeds",
                      "paper's effect (its data and model)"]  # fmt: skip
    one_run = [e for e in _effects() if len(e["ours"]) == 1]
    ax = viz.effect_forest(one_run)  # no seeds to tell apart, no range, no paper
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ours, one run (n=1)"]
    plt.close("all")


# Chapter 08: the failure gallery


def _two_failures_summary():
    """A 64 px image with a missed disc and a background square (class ids 1, 2)."""
    gt = {
        "images": [{"id": 7, "width": 64, "height": 64}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 2, "bbox": [4, 4, 3, 3], "area": 8,
             "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [30, 30, 20, 20], "area": 400,
             "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "disc"}],
    }  # fmt: skip
    results = [
        {"image_id": 7, "category_id": 1, "bbox": [30, 30, 20, 20], "score": 0.9},
        {"image_id": 7, "category_id": 1, "bbox": [40, 2, 10, 10], "score": 0.8},
    ]
    return error_summary(gt, results)


def test_failure_gallery_one_titled_panel_per_failure():
    summary = _two_failures_summary()
    failures = summary.failures()
    assert [f.kind for f in failures] == ["background", "missed"]
    axes = viz.failure_gallery(failures, summary, lambda i: torch.zeros(3, 64, 64), cols=4)
    assert len(axes) == 2 and len(axes[0].figure.axes) == 4  # a row of four, two used
    assert axes[0].get_title() == "background\nsquare 0.80"
    assert axes[1].get_title() == "missed\nsmall disc"
    # the false positive solid red, the missed object dashed white
    (fp,) = _rects(axes[0])
    assert fp.get_edgecolor()[:3] == (1.0, 0.0, 0.0) and fp.get_linestyle() == "-"
    (miss,) = _rects(axes[1])
    assert miss.get_edgecolor()[:3] == (1.0, 1.0, 1.0) and miss.get_linestyle() == "--"
    # cropped to a square window of at least 48 px, inside the image, around the box
    x0, x1 = axes[1].get_xlim()
    assert x1 - x0 == 48 and -0.5 <= x0 <= 4 and 10 <= x1 <= 63.5
    plt.close("all")
    whole = viz.failure_gallery(failures[:1], summary, lambda i: torch.zeros(3, 64, 64), crop=False)
    assert whole[0].get_xlim() == (-0.5, 63.5)
    with pytest.raises(ValueError, match="no failures"):
        viz.failure_gallery([], summary, lambda i: torch.zeros(3, 64, 64))
    plt.close("all")


def test_failure_gallery_shows_the_object_a_background_detection_lies_in():
    gt = {
        "images": [{"id": 1, "width": 64, "height": 64}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 2, "bbox": [0, 0, 30, 60], "area": 900},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [40, 40, 20, 20], "area": 50,
             "iscrowd": 1},
        ],
        "categories": [{"id": 1, "name": "disc"}, {"id": 2, "name": "person"}],
    }  # fmt: skip
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 0, 8, 8], "score": 0.9},  # the head
        {"image_id": 1, "category_id": 2, "bbox": [42, 42, 3, 3], "score": 0.8},  # crowd
    ]
    summary = error_summary(gt, results)
    failures = summary.failures(side="detection")
    head, crowd = viz.failure_gallery(failures, summary, lambda i: torch.zeros(3, 64, 64))
    assert head.get_title() == "background\ndisc 0.90 inside a person"
    assert sorted(r.get_linestyle() for r in _rects(head)) == ["-", "--"]
    assert crowd.get_title() == "background\nperson 0.80 in a crowd"
    assert [r.get_linestyle() for r in _rects(crowd)] == ["-"]
    plt.close("all")


def test_failure_gallery_says_when_a_neighbour_took_the_detection():
    gt = {
        "images": [{"id": 1, "width": 64, "height": 64}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [x, 0, 20, 20], "area": 400}
            for i, x in enumerate((0, 4))
        ],
        "categories": [{"id": 1, "name": "square"}],
    }
    results = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.9}]
    summary = error_summary(gt, results)
    (failure,) = summary.failures()
    (ax,) = viz.failure_gallery([failure], summary, lambda i: torch.zeros(3, 64, 64))
    assert ax.get_title() == "poor box\nlarge square, IoU 0.67\nwith a neighbour's detection"
    # the detection is a hit, so it keeps its class colour; the object is dashed
    solid, dashed = sorted(_rects(ax), key=lambda r: r.get_linestyle())
    assert solid.get_edgecolor()[:3] == viz.class_colour(1) and dashed.get_linestyle() == "--"
    plt.close("all")
