import pytest
import torch
from torchvision.models.detection import anchor_utils as tv_anchor_utils
from torchvision.models.detection import rpn as tv_rpn

from rcnn_steps.modeling.anchors import AnchorGenerator
from rcnn_steps.modeling.rpn import RegionProposalNetwork, RPNHead
from rcnn_steps.ops import ImageList

SIZES, RATIOS = ((16, 32, 64),), ((0.5, 1.0, 2.0),)
TOP_N = {"training": 300, "testing": 100}


def _targets():
    return [
        {"boxes": torch.tensor([[10.0, 12.0, 40.0, 50.0], [60.0, 30.0, 120.0, 70.0]])},
        {"boxes": torch.tensor([[0.0, 0.0, 20.0, 20.0]])},
    ]


def _pair(**ours):
    """torchvision's RPN and ours with the same anchors, settings and head weights."""
    torch.manual_seed(0)
    channels = 16
    tv = tv_rpn.RegionProposalNetwork(
        tv_anchor_utils.AnchorGenerator(SIZES, RATIOS),
        tv_rpn.RPNHead(channels, 9),
        0.7, 0.3, 256, 0.5, TOP_N, TOP_N, 0.7,
    )  # fmt: skip
    mine = RegionProposalNetwork(
        AnchorGenerator(SIZES, RATIOS), RPNHead(channels, 9), pre_nms_top_n=TOP_N,
        post_nms_top_n=TOP_N, **ours,
    )  # fmt: skip
    mine.head.load_state_dict(tv.head.state_dict())
    # Larger weights than the N(0, 0.01) init, so proposals move off their anchors.
    with torch.no_grad():
        for p in mine.head.parameters():
            p.normal_(std=0.2)
    tv.head.load_state_dict(mine.head.state_dict())
    images = ImageList(torch.rand(2, 3, 128, 128), [(128, 128), (112, 100)])
    features = {"c4": torch.randn(2, channels, 8, 8)}
    return tv, mine, images, features


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_drop_in_equal_to_torchvision(mode):
    tv, mine, images, features = _pair()
    tv.train(mode == "train")
    mine.train(mode == "train")
    targets = _targets() if mode == "train" else None
    torch.manual_seed(123)
    tv_boxes, tv_losses = tv(images, features, targets)
    torch.manual_seed(123)
    boxes, losses = mine(images, features, targets)
    assert len(boxes) == 2
    for a, b in zip(boxes, tv_boxes, strict=True):
        assert a.shape[0] > 10
        torch.testing.assert_close(a, b)
    assert losses.keys() == tv_losses.keys()
    for key in losses:
        torch.testing.assert_close(losses[key], tv_losses[key])


def test_state_dict_loads_across():
    tv, mine, _, _ = _pair()
    assert set(mine.head.state_dict()) == set(tv.head.state_dict())


def test_image_without_objects_trains_as_all_negative():
    _, mine, images, features = _pair()
    mine.train()
    targets = [{"boxes": torch.zeros(0, 4)}, {"boxes": torch.zeros(0, 4)}]
    inter = {}
    _, losses = mine(images, features, targets, inter)
    assert losses["loss_rpn_box_reg"].item() == 0.0
    assert torch.isfinite(losses["loss_objectness"])
    assert all((lab == 0).all() for lab in inter["anchor_labels"])
    assert all(int(p.sum()) == 0 for p in inter["sampled_positive"])


def test_ignore_cross_boundary_marks_outside_anchors_ignored():
    _, mine, images, features = _pair(ignore_cross_boundary=True)
    mine.train()
    inter = {}
    mine(images, features, _targets(), inter)
    anchors = inter["anchors"]
    for labels, (h, w) in zip(inter["anchor_labels"], images.image_sizes, strict=True):
        outside = (
            (anchors[:, 0] < 0) | (anchors[:, 1] < 0) | (anchors[:, 2] > w) | (anchors[:, 3] > h)
        )
        assert outside.any() and (labels[outside] == -1).all()
        assert (labels[~outside] == 1).any()


def test_intermediates_and_paper_normalisation():
    _, mine, images, features = _pair(lambda_reg=10.0, normalization="paper")
    mine.eval()
    inter = {}
    boxes, losses = mine(images, features, _targets(), inter)  # eval + targets: loss too
    a = inter["anchors"].shape[0]
    assert a == 8 * 8 * 9 and inter["objectness"].shape == (2, a)
    assert inter["rpn_deltas"].shape == (2, a, 4)
    for before, after in zip(inter["proposals_before_nms"], inter["proposals"], strict=True):
        assert before.shape[0] >= after.shape[0] and after.shape[0] <= TOP_N["testing"]
    for labels in inter["anchor_labels"]:
        assert set(labels.unique().tolist()) <= {-1, 0, 1} and (labels == 1).any()
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg"}
    with pytest.raises(ValueError, match="normalization"):
        RegionProposalNetwork(AnchorGenerator(SIZES, RATIOS), RPNHead(4, 9), normalization="x")
