from collections import OrderedDict

import pytest
import torch
from torchvision.models.detection import anchor_utils as tv_anchor_utils
from torchvision.models.detection import rpn as tv_rpn
from torchvision.ops import FeaturePyramidNetwork as TvFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from rcnn_steps.modeling.anchors import AnchorGenerator
from rcnn_steps.modeling.backbones import TinyBackbone
from rcnn_steps.modeling.fpn import (
    FPN_LEVELS,
    BackboneWithFPN,
    FeaturePyramidNetwork,
    check_levels,
    level_number,
)
from rcnn_steps.modeling.rpn import RegionProposalNetwork, RPNHead
from rcnn_steps.ops import ImageList

IN_CHANNELS = [6, 10, 12, 16]


def _pair(out_channels=8, dtype=torch.float32):
    """torchvision's FPN (with P6 by max-pooling) and ours, with the same weights."""
    torch.manual_seed(0)
    tv = TvFPN(IN_CHANNELS, out_channels, extra_blocks=LastLevelMaxPool()).to(dtype)
    ours = FeaturePyramidNetwork(IN_CHANNELS, out_channels).to(dtype)
    with torch.no_grad():
        for i in range(len(IN_CHANNELS)):
            for mine, theirs in (
                (ours.lateral_convs[i], tv.inner_blocks[i][0]),
                (ours.output_convs[i], tv.layer_blocks[i][0]),
            ):
                # Non-zero biases too, so that their addition order is exercised.
                mine.weight.copy_(theirs.weight)
                theirs.bias.normal_()
                mine.bias.copy_(theirs.bias)
    return tv, ours


def _maps(sizes, dtype=torch.float32, batch=2):
    g = torch.Generator().manual_seed(1)
    return OrderedDict(
        (f"c{k}", torch.randn(batch, c, h, w, generator=g, dtype=dtype))
        for k, c, (h, w) in zip(range(2, 6), IN_CHANNELS, sizes, strict=True)
    )


EVEN = [(16, 24), (8, 12), (4, 6), (2, 3)]
ODD = [(17, 25), (9, 13), (5, 7), (3, 4)]  # a 67 x 99 image through stride-2 convs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sizes", [EVEN, ODD], ids=["even", "odd"])
def test_equal_to_torchvision_fpn_forward_and_backward(dtype, sizes):
    tv, ours = _pair(dtype=dtype)
    maps = _maps(sizes, dtype)
    tv_in = OrderedDict((k, v.clone().requires_grad_()) for k, v in maps.items())
    our_in = OrderedDict((k, v.clone().requires_grad_()) for k, v in maps.items())
    expected = tv(tv_in)
    got = ours(our_in)
    assert list(got) == ["p2", "p3", "p4", "p5", "p6"]
    assert list(expected) == ["c2", "c3", "c4", "c5", "pool"]
    for (name, a), b in zip(got.items(), expected.values(), strict=True):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, msg=name)
    # P6 is every other cell of P5 (max-pool, kernel 1, stride 2).
    torch.testing.assert_close(got["p6"], got["p5"][..., ::2, ::2])
    g = torch.Generator().manual_seed(2)
    weights = [torch.randn(o.shape, generator=g, dtype=dtype) for o in got.values()]
    sum((o * w).sum() for o, w in zip(got.values(), weights, strict=True)).backward()
    sum((o * w).sum() for o, w in zip(expected.values(), weights, strict=True)).backward()
    for k in maps:
        torch.testing.assert_close(our_in[k].grad, tv_in[k].grad)


def test_output_shapes_and_top_down_path():
    _, ours = _pair(out_channels=8)
    out = ours(list(_maps(ODD).values()))  # a list works as well as a dict
    for (h, w), name in zip(ODD, ["p2", "p3", "p4", "p5"], strict=True):
        assert out[name].shape == (2, 8, h, w)
    assert out["p6"].shape == (2, 8, 2, 2)
    assert ours.level_names == FPN_LEVELS
    # The top-down path carries C5 down to P2: changing C5 changes P2.
    maps = _maps(EVEN)
    base = ours(maps)["p2"]
    maps["c5"] = maps["c5"] + 1.0
    assert not torch.allclose(ours(maps)["p2"], base)


def test_without_extra_level_and_other_first_level():
    fpn = FeaturePyramidNetwork([4, 8], 6, first_level=4, extra_max_pool=False)
    out = fpn([torch.rand(1, 4, 8, 8), torch.rand(1, 8, 4, 4)])
    assert list(out) == ["p4", "p5"] and out["p5"].shape == (1, 6, 4, 4)


def test_backbone_with_fpn_shapes_strides_channels():
    body = TinyBackbone(width=8)
    model = BackboneWithFPN(body, out_channels=16).eval()
    x = torch.rand(2, 3, 128, 64)
    out = model(x)
    assert list(out) == list(FPN_LEVELS) == list(model.levels)
    assert model.out_channels == {n: 16 for n in FPN_LEVELS}
    assert model.strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    for name, fmap in out.items():
        s = model.strides[name]
        assert fmap.shape == (2, 16, 128 // s, 64 // s), name
    # equal to the FPN applied to the backbone's stages
    stages = body(x)
    torch.testing.assert_close(out["p3"], model.fpn(list(stages.values()))["p3"])


def test_backbone_with_fpn_from_p3():
    body = TinyBackbone(width=8, return_stages=("c3", "c4", "c5"))
    model = BackboneWithFPN(body, out_channels=8, levels=("p3", "p4", "p5", "p6"))
    assert model.stages == ("c3", "c4", "c5")
    out = model(torch.rand(1, 3, 64, 64))
    assert list(out) == ["p3", "p4", "p5", "p6"] and out["p3"].shape == (1, 8, 8, 8)


def test_bad_levels_and_inputs():
    with pytest.raises(ValueError, match="consecutive"):
        BackboneWithFPN(TinyBackbone(width=8), 8, levels=("p2", "p4", "p5"))
    with pytest.raises(ValueError, match="p5"):
        BackboneWithFPN(TinyBackbone(width=8), 8, levels=("p2", "p3", "p4"))
    with pytest.raises(ValueError, match="return_stages"):
        BackboneWithFPN(TinyBackbone(width=8, return_stages=("c4",)), 8)
    with pytest.raises(ValueError, match="in_channels"):
        FeaturePyramidNetwork([], 8)
    with pytest.raises(ValueError, match=r"\(N, 6, H, W\)"):
        FeaturePyramidNetwork(IN_CHANNELS, 8)([torch.rand(1, 5, 8, 8)] + [None] * 3)
    with pytest.raises(ValueError, match="4 input maps"):
        FeaturePyramidNetwork(IN_CHANNELS, 8)([torch.rand(1, 6, 8, 8)])
    assert check_levels(["p3", "p4"], "x", reach_p5=False) == ("p3", "p4")
    assert level_number("p6") == 6 and level_number("c2") == 2
    with pytest.raises(ValueError, match="level name"):
        level_number("x")


# -- the RPN over the pyramid: equal to torchvision's over the same feature dict ------------

SIZES = ((8,), (16,), (32,), (64,), (128,))
RATIOS = ((0.5, 1.0, 2.0),) * 5
TOP_N = {"training": 200, "testing": 50}


def _rpn_pair():
    torch.manual_seed(0)
    channels = 8
    tv = tv_rpn.RegionProposalNetwork(
        tv_anchor_utils.AnchorGenerator(SIZES, RATIOS), tv_rpn.RPNHead(channels, 3),
        0.5, 0.3, 64, 0.5, TOP_N, TOP_N, 0.7,
    )  # fmt: skip
    mine = RegionProposalNetwork(
        AnchorGenerator(SIZES, RATIOS), RPNHead(channels, 3), fg_iou_thresh=0.5,
        batch_size_per_image=64, pre_nms_top_n=TOP_N, post_nms_top_n=TOP_N,
    )  # fmt: skip
    with torch.no_grad():
        for p in mine.head.parameters():
            p.normal_(std=0.2)
    tv.head.load_state_dict(mine.head.state_dict())
    images = ImageList(torch.rand(2, 3, 128, 128), [(128, 128), (112, 100)])
    g = torch.Generator().manual_seed(3)
    features = OrderedDict(
        (f"p{k}", torch.randn(2, channels, 128 >> k, 128 >> k, generator=g)) for k in range(2, 7)
    )
    return tv, mine, images, features


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_rpn_over_fpn_levels_equal_to_torchvision(mode):
    tv, mine, images, features = _rpn_pair()
    tv.train(mode == "train")
    mine.train(mode == "train")
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 20.0, 30.0], [60.0, 30.0, 120.0, 70.0]])},
        {"boxes": torch.tensor([[0.0, 0.0, 6.0, 9.0]])},
    ]
    targets = targets if mode == "train" else None
    inter = {}
    torch.manual_seed(123)
    tv_boxes, tv_losses = tv(images, features, targets)
    torch.manual_seed(123)
    boxes, losses = mine(images, features, targets, inter)
    assert inter["num_anchors_per_level"] == [32 * 32 * 3, 16 * 16 * 3, 8 * 8 * 3, 4 * 4 * 3, 12]
    for a, b in zip(boxes, tv_boxes, strict=True):
        assert a.shape[0] > 10
        torch.testing.assert_close(a, b)
    assert losses.keys() == tv_losses.keys()
    for key in losses:
        torch.testing.assert_close(losses[key], tv_losses[key])
