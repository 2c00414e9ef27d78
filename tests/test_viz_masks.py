"""The chapter 07 figures draw what they are given (no errors, the right panels)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
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
