"""The chapter 07 figures draw what they are given (no errors, the right panels)."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from rcnn_steps import viz  # noqa: E402


def test_mask_and_keypoint_figures():
    image = torch.rand(3, 32, 32)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[5:20, 6:25] = True
    box = torch.tensor([6.0, 5.0, 25.0, 20.0])
    fig = viz.draw_mask_target(image, box, mask, torch.rand(28, 28), 2, pasted=mask)
    assert len(fig.axes) == 4  # three panels and the target's colour bar
    fig = viz.plot_mask_probabilities(torch.rand(7, 28, 28), torch.rand(7, 28, 28), [0, 2, 5])
    assert len(fig.axes) == 7  # 2 x 3 maps and a colour bar
    kps = torch.tensor([[8.0, 8.0, 2], [20.0, 18.0, 1], [0.0, 0.0, 0]])
    cells = torch.tensor([10, 3000, 0])
    valid = torch.tensor([1, 1, 0])
    fig = viz.draw_keypoint_targets(image, box, kps, cells, valid, 56, ["a", "b", "c"], kps,
                                    show=(0, 2))  # fmt: skip
    lit = fig.axes[1].images[0].get_array()
    assert lit.sum() == 1 and fig.axes[2].images[0].get_array().sum() == 0
    plt.close("all")


def test_instances_and_stage_times():
    image = torch.rand(3, 32, 32)
    masks = torch.zeros(2, 1, 32, 32)
    masks[0, 0, 4:12, 4:12] = 0.9
    detections = {
        "boxes": torch.tensor([[4.0, 4.0, 12.0, 12.0], [10.0, 10.0, 30.0, 30.0]]),
        "labels": torch.tensor([6, 2]),
        "scores": torch.tensor([0.9, 0.2]),
        "masks": masks,
        "keypoints": torch.tensor([[[5.0, 5.0, 1.0], [9.0, 9.0, 1.0]]] * 2),
    }
    ax = viz.draw_instances(image, detections, None, 0.5, [(0, 1)], None, [6])
    assert len(ax.patches) == 1 and len(ax.lines) == 3  # one box; a limb and two points
    ax = viz.plot_stage_times({"backbone": 0.01, "rpn": 0.002})
    assert [t.get_text() for t in ax.get_yticklabels()] == ["rpn", "backbone"]
    plt.close("all")


def test_keypoint_heatmaps_figure_has_a_row_per_model_on_one_colour_scale():
    image = torch.rand(3, 64, 64)
    roi = torch.tensor([10.0, 8.0, 30.0, 50.0])
    peaked = torch.zeros(3, 56, 56)
    peaked[0, 5, 5] = peaked[1, 20, 30] = peaked[2, 50, 10] = 12.0
    flat = torch.zeros(3, 56, 56)
    kps = torch.tensor([[14.0, 10.0, 1], [20.0, 30.0, 1], [18.0, 48.0, 1]])
    fig = viz.draw_keypoint_heatmaps(
        image, roi, {"learned": peaked, "flat": flat}, ["a", "b", "c"], show=(0, 2),
        keypoints={"learned": kps}, skeleton=[(0, 1)],
    )  # fmt: skip
    maps = fig.axes[:6]
    assert len(fig.axes) == 7  # 2 rows x (max + 2 keypoints) and one colour bar
    assert [ax.get_ylabel() for ax in maps[::3]] == ["learned", "flat"]
    assert maps[4].get_title() == f"a: H {math.log(56 * 56):.2f}"  # the flat row
    climits = {ax.images[-1].get_clim() for ax in maps}
    assert len(climits) == 1  # one scale: the flat maps read dark beside the peaked ones
    assert maps[0].get_xlim() == pytest.approx((9.5, 29.5))  # cut to the box
    assert len(maps[0].lines) > len(maps[3].lines)  # the learned row's keypoints
    with pytest.raises(ValueError, match="at least one row"):
        viz.draw_keypoint_heatmaps(image, roi, {})
    plt.close("all")
