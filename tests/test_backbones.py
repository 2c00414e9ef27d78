import pytest
import torch

from rcnn_steps.backbones import STAGES, TinyBackbone


def test_stages_shapes_and_strides():
    net = TinyBackbone(width=8).eval()
    out = net(torch.rand(2, 3, 64, 96))
    assert list(out) == list(STAGES)
    for name, fmap in out.items():
        stride = net.strides[name]
        assert fmap.shape == (2, net.out_channels[name], 64 // stride, 96 // stride)
    assert net.out_channels == {"c2": 8, "c3": 16, "c4": 32, "c5": 64}


def test_return_stages_stops_after_the_last_requested():
    net = TinyBackbone(width=8, return_stages=("c4",))
    calls = []
    net.stages["c5"].register_forward_hook(lambda *a: calls.append(1))
    out = net(torch.rand(1, 3, 64, 64))
    assert list(out) == ["c4"] and out["c4"].shape == (1, 32, 4, 4)
    assert not calls  # c5 never ran


def test_split_shares_weights_and_composes():
    net = TinyBackbone(width=8).eval()
    trunk, head = net.split("c4")
    x = torch.rand(1, 3, 64, 64)
    full = net(x)
    torch.testing.assert_close(trunk(x), full["c4"])
    torch.testing.assert_close(head(trunk(x)), full["c5"])
    assert head[0] is net.stages["c5"]


def test_bad_inputs():
    with pytest.raises(ValueError, match="return_stages"):
        TinyBackbone(return_stages=("c6",))
    with pytest.raises(ValueError, match="N, 3, H, W"):
        TinyBackbone(width=8)(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="stage"):
        TinyBackbone(width=8).split("c7")
