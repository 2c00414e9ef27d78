"""The explorers build their widgets without a kernel, and their callbacks draw the static
figures of rcnn_steps.viz for the sliders' values."""

import matplotlib

matplotlib.use("Agg")

import ipywidgets as widgets  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from rcnn_steps import explorers  # noqa: E402
from rcnn_steps.modeling.anchors import AnchorGenerator  # noqa: E402
from rcnn_steps.modeling.matcher import Matcher  # noqa: E402
from rcnn_steps.ops import ImageList, box_iou  # noqa: E402


def _sliders(widget):
    return {child.description: child for child in widget.children if hasattr(child, "value")}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_roi_bins_explorer_redraws_the_box_the_sliders_give():
    widget = explorers.roi_bins_explorer(grid_size=8, output_size=3)
    assert isinstance(widget, widgets.interactive)
    sliders = _sliders(widget)
    assert set(sliders) == {"x (cells)", "y (cells)", "w (cells)", "h (cells)"}
    assert all(isinstance(s, widgets.FloatSlider) for s in sliders.values())
    first = widget.result  # drawn once on construction, at the sliders' start values
    assert first[0].get_title().startswith("RoIPool: cells 1..6 x 2..5")
    sliders["x (cells)"].value = 2.45  # a slider's change redraws: round(2.45) = 2
    pool_ax, align_ax = widget.result
    assert pool_ax is not first[0]
    assert pool_ax.get_title().startswith("RoIPool: cells 2..7 x 2..5")
    sliders["w (cells)"].value = 3.0
    assert widget.result[1].get_title().startswith("RoIAlign: bins of 1.00 x 1.23 cells")


def test_anchor_threshold_explorer_keeps_low_at_most_high():
    generator = AnchorGenerator(((8, 16, 32),), ((0.5, 1.0, 2.0),))
    anchors = generator(
        ImageList.from_tensors([torch.zeros(3, 64, 64)], 32), [torch.zeros(1, 1, 8, 8)]
    )[0]
    gt = torch.tensor([10.0, 12.0, 34.0, 30.0])
    widget = explorers.anchor_threshold_explorer(torch.zeros(3, 64, 64), gt, anchors)
    high, low = _sliders(widget)["positive IoU >="], _sliders(widget)["negative IoU <"]
    assert (high.value, low.value) == (0.7, 0.3)
    iou = box_iou(gt[None], anchors)
    for h, expected_low in ((0.5, 0.3), (0.2, 0.2)):  # lowering high below low pulls low down
        high.value = h
        assert low.value == pytest.approx(expected_low) and low.max == pytest.approx(h)
        positive = int((Matcher(h, low.value)(iou) >= 0).sum())
        assert widget.result[0].get_title().startswith(f"positive {positive} ")


def test_pyramid_level_explorer_moves_the_box_between_levels():
    widget = explorers.pyramid_level_explorer(torch.zeros(3, 128, 128))
    sliders = _sliders(widget)
    assert set(sliders) == {"box side (px)", "s0 (px)", "k0"}
    assert sliders["box side (px)"].max == 128

    def framed():
        return [k for k, ax in zip((2, 3, 4, 5), widget.result, strict=True)
                if "pooled here" in ax.get_title()]  # fmt: skip

    assert framed() == [3]  # 40 px at s0 = 56, k0 = 4: floor(4 + log2(40 / 56)) = 3
    sliders["box side (px)"].value = 100
    assert framed() == [4]
    sliders["s0 (px)"].value = 224  # the paper's s0 on our small image: everything on P2
    assert framed() == [2]


def test_sliding_window_explorer_moves_the_window_and_keeps_it_inside_the_image():
    image = torch.zeros(3, 64, 64)
    target = {"boxes": torch.tensor([[16.0, 16.0, 32.0, 32.0]]), "labels": torch.tensor([1])}
    widget = explorers.sliding_window_explorer(image, target, ["__background__", "a"], size=16)
    sliders = _sliders(widget)
    assert set(sliders) == {"x (px)", "y (px)", "size (px)", "shape (w:h)", "stride (window sides)"}
    assert widget.result[1].get_xlabel().startswith("label: background")  # at (0, 0)
    sliders["x (px)"].value, sliders["y (px)"].value = 16, 16  # onto the object
    assert widget.result[1].get_xlabel() == "label: a (IoU 1.00 >= 0.5)"
    assert widget.result[0].get_title().startswith("169 windows of 16 x 16 px")
    sliders["stride (window sides)"].value = 1.0  # tiles: 16 of them
    assert widget.result[0].get_title().startswith("16 windows of 16 x 16 px")
    sliders["size (px)"].value = 60
    sliders["shape (w:h)"].value = 3.0  # 60 px at 3:1 would be 104 px wide
    assert sliders["size (px)"].max == 36 and sliders["size (px)"].value == 36  # 64 / sqrt(3)
    assert widget.result[0].get_title().startswith("3 windows of 62 x 21 px")  # 3 rows of 1
