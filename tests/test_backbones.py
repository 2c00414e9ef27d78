import pytest
import torch
from torch import nn

from rcnn_steps.modeling.backbones import STAGES, TinyBackbone


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


# -- ResNet-50/101 with frozen batch norm (chapter 05) ---------------------------------------


def _random_stats(bn, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean"):
            getattr(bn, name).copy_(torch.randn(bn.weight.shape, generator=g))
        bn.running_var.copy_(torch.rand(bn.weight.shape, generator=g) + 0.1)
    return bn


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_frozen_batch_norm_equals_torchvision_and_eval_batch_norm(dtype):
    from torchvision.ops import FrozenBatchNorm2d as TvFrozenBatchNorm2d

    from rcnn_steps.modeling.backbones import FrozenBatchNorm2d

    tv = _random_stats(TvFrozenBatchNorm2d(5)).to(dtype)
    ours = FrozenBatchNorm2d(5).to(dtype)
    ours.load_state_dict(tv.state_dict())
    assert set(ours.state_dict()) == set(tv.state_dict())
    assert ours.eps == tv.eps == 1e-5 and not list(ours.parameters())
    x = torch.randn(2, 5, 6, 7, dtype=dtype, requires_grad=True)
    torch.testing.assert_close(ours(x), tv(x))
    # = BatchNorm2d in eval mode, in train mode too (no statistics are gathered)
    bn = _random_stats(nn.BatchNorm2d(5), seed=1).to(dtype).eval()
    frozen = FrozenBatchNorm2d.from_batch_norm(bn).train()
    torch.testing.assert_close(frozen(x), bn(x))
    before = frozen.running_mean.clone()
    frozen(x).sum().backward()
    assert torch.equal(frozen.running_mean, before) and x.grad is not None
    # a BatchNorm2d state dict (with num_batches_tracked) loads
    FrozenBatchNorm2d(5).load_state_dict(nn.BatchNorm2d(5).state_dict())


def test_freeze_batch_norm_replaces_every_batch_norm():
    from rcnn_steps.modeling.backbones import FrozenBatchNorm2d, freeze_batch_norm

    net = TinyBackbone(width=8).eval()
    x = torch.rand(1, 3, 32, 32)
    expected = net(x)["c5"]
    frozen = freeze_batch_norm(net).train()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules())
    torch.testing.assert_close(frozen(x)["c5"], expected)


@pytest.fixture(scope="module")
def resnet50_weights(tmp_path_factory):
    """A local state dict of torchvision's resnet50 (random weights; nothing downloaded),
    with the running statistics made non-trivial so frozen batch norm is exercised."""
    from torchvision.models import resnet50

    torch.manual_seed(0)
    net = resnet50(weights=None)
    for i, m in enumerate(net.modules()):
        if isinstance(m, nn.BatchNorm2d):
            _random_stats(m, seed=i)
            with torch.no_grad():
                m.weight.mul_(0.3)  # keep the activations of 16 blocks in a sane range
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(net.state_dict(), path)
    return path, net.eval()


def test_resnet50_stages_equal_torchvision_with_loaded_weights(resnet50_weights):
    from rcnn_steps.modeling.backbones import FrozenBatchNorm2d, ResNetBackbone

    path, tv = resnet50_weights
    net = ResNetBackbone(50, weights_path=str(path))
    assert net.frozen_bn and net.trainable_layers == 3
    assert any(isinstance(m, FrozenBatchNorm2d) for m in net.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    x = torch.rand(1, 3, 64, 64)
    out = net.train()(x)  # frozen BN: the same in train mode as torchvision's in eval
    assert list(out) == list(STAGES) and net.out_channels == {
        "c2": 256, "c3": 512, "c4": 1024, "c5": 2048,
    }  # fmt: skip
    for name, fmap in out.items():
        stride = net.strides[name]
        assert fmap.shape == (1, net.out_channels[name], 64 // stride, 64 // stride)
    with torch.no_grad():
        y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        for name, layer in zip(STAGES, (tv.layer1, tv.layer2, tv.layer3, tv.layer4), strict=True):
            y = layer(y)
            torch.testing.assert_close(out[name], y, msg=name)


def test_resnet_trainable_layers_and_defaults():
    from rcnn_steps.modeling.backbones import ResNetBackbone

    def trainable(net):
        return {n for n, s in net.stages.items() if any(p.requires_grad for p in s.parameters())}

    scratch = ResNetBackbone(50, return_stages=("c4",))
    assert not scratch.frozen_bn and scratch.trainable_layers == 5
    assert any(isinstance(m, nn.BatchNorm2d) for m in scratch.modules())
    assert trainable(scratch) == {"stem", "c2", "c3", "c4", "c5"}
    assert trainable(ResNetBackbone(50, trainable_layers=3)) == {"c3", "c4", "c5"}
    assert trainable(ResNetBackbone(50, trainable_layers=0)) == set()


def test_resnet_return_stages_split_and_c4_design():
    from rcnn_steps.modeling.backbones import ResNetBackbone
    from rcnn_steps.modeling.roi_heads import C5BoxHead

    net = ResNetBackbone(50, return_stages=("c4",), frozen_bn=True).eval()
    calls = []
    net.stages["c5"].register_forward_hook(lambda *a: calls.append(1))
    x = torch.rand(1, 3, 64, 64)
    out = net(x)
    assert list(out) == ["c4"] and out["c4"].shape == (1, 1024, 4, 4) and not calls
    trunk, head = net.split("c4")
    torch.testing.assert_close(trunk(x), out["c4"])
    box_head = C5BoxHead(head, net.out_channels["c5"])
    assert box_head(torch.rand(3, 1024, 7, 7)).shape == (3, 2048)


def test_resnet101_builds():
    from rcnn_steps.modeling.backbones import ResNetBackbone

    net = ResNetBackbone(101, return_stages=("c4",))
    assert len(net.stages["c4"]) == 23 and net.out_channels["c5"] == 2048


def test_resnet_bad_arguments(tmp_path):
    from rcnn_steps.modeling.backbones import ResNetBackbone

    with pytest.raises(ValueError, match="depth"):
        ResNetBackbone(34)
    with pytest.raises(ValueError, match="trainable_layers"):
        ResNetBackbone(50, trainable_layers=6)
    with pytest.raises(ValueError, match="return_stages"):
        ResNetBackbone(50, return_stages=("c6",))
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="does not fit"):
        ResNetBackbone(50, weights_path=str(bad))
    partial = tmp_path / "partial.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, partial)
    with pytest.raises(ValueError, match="missing keys"):
        ResNetBackbone(50, weights_path=str(partial))
    with pytest.raises(ValueError, match="N, 3, H, W"):
        ResNetBackbone(50)(torch.rand(3, 32, 32))
