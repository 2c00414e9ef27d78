"""Backbones: the convolutional trunk that turns an image into feature maps.

Every detector from Fast R-CNN on runs one convolutional network over the whole image
once and reads region features off its output (Fast R-CNN section 2). The papers use
ImageNet-pretrained VGG-16 or ResNet; this book trains from scratch on CPU, so the
backbone is :class:`TinyBackbone`, a ResNet-shaped stack of conv-BN-ReLU layers with the
same four *stages* and strides as a ResNet:

=====  ======  =========  ===================================================
stage  stride  channels   role
=====  ======  =========  ===================================================
c2     4       width      (FPN's finest level, chapter 05)
c3     8       2 width
c4     16      4 width    the single feature map of Faster R-CNN "C4" (ch. 04)
c5     32      8 width    "res5": the RoI box head of the C4 design (Mask R-CNN)
=====  ======  =========  ===================================================

The names follow ResNet's ``conv2_x`` .. ``conv5_x`` ("C2..C5" in the FPN paper,
Lin et al. 2017, section 3). Two seams are left open on purpose:

- ``return_stages`` chooses which maps :meth:`TinyBackbone.forward` returns (and it stops
  after the last one asked for): ``("c4",)`` for single-level Faster R-CNN, ``("c2",
  "c3", "c4", "c5")`` for the FPN of chapter 05, which adds its top-down path on top.
- :meth:`TinyBackbone.split` cuts the network into a trunk up to a stage and the stages
  after it, sharing weights: the C4 design of Faster/Mask R-CNN (He et al. 2016, Mask
  R-CNN section 3.1 "Network Architecture") runs res5 on every pooled RoI instead of on
  the image (:class:`rcnn_steps.modeling.roi_heads.C5BoxHead`).

For the GPU preset and for readers with pretrained weights, :class:`ResNetBackbone` wraps
torchvision's ResNet-50/101 (built with ``weights=None``: nothing is downloaded; a local
state dict can be loaded) behind the same interface: stages c2..c5 with ResNet's channels
(256, 512, 1024, 2048), the same ``strides``, ``return_stages`` and ``split("c4")``, so
the C4 design and the FPN of chapter 05 take either backbone. Detectors fine-tune a
pretrained ResNet with its batch norm *frozen* (:class:`FrozenBatchNorm2d`: detection
batches of one or two large images per GPU are too small for batch statistics; Mask
R-CNN section 3.1 and Detectron) and its stem and first stage frozen
(``trainable_layers``, torchvision's rule).

Taught in chapter 03 (first use) and chapter 05 (the stages for FPN, the ResNet option).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "RESNET_DEPTHS",
    "STAGES",
    "FrozenBatchNorm2d",
    "ResNetBackbone",
    "TinyBackbone",
    "conv_bn_relu",
    "freeze_batch_norm",
]

#: Stage names in order, and their strides in pixels.
STAGES = ("c2", "c3", "c4", "c5")
STRIDES = {"c2": 4, "c3": 8, "c4": 16, "c5": 32}


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """A 3x3 convolution (no bias: the BN shift plays its part), batch norm and ReLU.

    ``(N, in_channels, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride))``.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class _StagedBackbone(nn.Module):
    """What both backbones share: a ``stem`` then stages c2..c5 in ``self.stages`` (an
    ``nn.ModuleDict``), run up to the last of ``self.return_stages``, and split into a
    trunk and a head for the C4 design. Subclasses build the stages and set
    ``in_channels``, ``return_stages``, ``out_channels`` and ``strides``."""

    in_channels: int
    return_stages: tuple[str, ...]

    def _set_return_stages(self, return_stages: Sequence[str] | str) -> None:
        if isinstance(return_stages, str):
            return_stages = (return_stages,)
        unknown = [s for s in return_stages if s not in STAGES]
        if unknown or not return_stages:
            raise ValueError(
                f"{type(self).__name__}: return_stages must name stages among {STAGES}, got "
                f"{tuple(return_stages)!r}; ('c4',) is single-level Faster R-CNN."
            )
        self.return_stages = tuple(sorted(set(return_stages), key=STAGES.index))

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """``(N, C, H, W)`` images -> ``OrderedDict`` of the requested stages, stage ``s``
        of shape ``(N, out_channels[s], ceil(H / strides[s]), ceil(W / strides[s]))`` (a
        multiple-of-32 image size makes every division exact)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__}: expected a batch (N, {self.in_channels}, H, W), got "
                f"{tuple(x.shape)}."
            )
        out: OrderedDict[str, Tensor] = OrderedDict()
        x = self.stages["stem"](x)
        last = self.return_stages[-1]
        for name in STAGES:
            x = self.stages[name](x)
            if name in self.return_stages:
                out[name] = x
            if name == last:
                break
        return out

    def split(self, stage: str = "c4") -> tuple[nn.Sequential, nn.Sequential]:
        """``(trunk, head)``: the network up to and including ``stage``, and the stages
        after it, as two ``nn.Sequential`` that *share* this backbone's modules.

        ``split("c4")`` is the C4 design: ``trunk`` maps images to the stride-16 map the
        RPN and RoI pooling read, ``head`` is "res5" (c5) that the RoI head runs on every
        pooled region (:class:`rcnn_steps.modeling.roi_heads.C5BoxHead`).
        """
        if stage not in STAGES:
            raise ValueError(
                f"{type(self).__name__}.split: stage must be one of {STAGES}, got {stage!r}."
            )
        cut = STAGES.index(stage) + 1
        trunk = nn.Sequential(self.stages["stem"], *(self.stages[s] for s in STAGES[:cut]))
        head = nn.Sequential(*(self.stages[s] for s in STAGES[cut:]))
        return trunk, head


class TinyBackbone(_StagedBackbone):
    """A ResNet-shaped conv-BN-ReLU backbone with stages c2..c5 (strides 4, 8, 16, 32).

    Args:
        width: channels of c2; c3, c4, c5 have 2x, 4x, 8x as many. Width 16 (the CPU
            preset) has 0.3 M parameters and costs 17 M multiply-adds on a 128 x 128
            image (all stages); width 32 has 1.2 M and 68 M; the cost grows as width^2.
        return_stages: which stage outputs :meth:`forward` returns, in order; the forward
            pass stops after the last of them (``("c4",)`` never computes c5).
        in_channels: image channels (3 for RGB).
        blocks_per_stage: conv-BN-ReLU layers per stage after its first, strided, one.

    Layout: ``stem`` (two stride-2 convs: stride 4) then ``c2`` .. ``c5``, each an
    ``nn.Sequential`` in :attr:`stages`; c2 keeps the stem's stride, c3..c5 halve the
    resolution with their first conv. ``out_channels[s]`` and ``strides[s]`` give each
    stage's channels and stride.
    """

    def __init__(
        self,
        width: int = 32,
        return_stages: Sequence[str] = STAGES,
        in_channels: int = 3,
        blocks_per_stage: int = 1,
    ) -> None:
        super().__init__()
        self._set_return_stages(return_stages)
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"TinyBackbone: width must be a positive int, got {width!r}.")
        self.width = width
        self.in_channels = in_channels
        self.out_channels = {"c2": width, "c3": 2 * width, "c4": 4 * width, "c5": 8 * width}
        self.strides = dict(STRIDES)

        def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
            layers = [conv_bn_relu(cin, cout, stride)]
            layers += [conv_bn_relu(cout, cout) for _ in range(blocks_per_stage)]
            return nn.Sequential(*layers)

        c = self.out_channels
        self.stages = nn.ModuleDict(
            {
                # Two stride-2 convs to stride 4, as ResNet's 7x7 conv + max-pool does.
                "stem": nn.Sequential(
                    conv_bn_relu(in_channels, width // 2 or 1, 2),
                    conv_bn_relu(width // 2 or 1, width, 2),
                ),
                "c2": stage(width, c["c2"], 1),
                "c3": stage(c["c2"], c["c3"], 2),
                "c4": stage(c["c3"], c["c4"], 2),
                "c5": stage(c["c4"], c["c5"], 2),
            }
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He initialisation for ReLU nets (He et al. 2015), as torchvision's ResNet.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def extra_repr(self) -> str:
        return f"width={self.width}, return_stages={self.return_stages}"


# ----------------------------------------------------------------------------------------
# ResNet-50/101 with frozen batch norm (chapter 05, GPU preset)


class FrozenBatchNorm2d(nn.Module):
    """Batch norm turned into a fixed per-channel affine map (no statistics, no training).

    At inference a ``BatchNorm2d`` computes ``y = (x - mean) / sqrt(var + eps) * gamma +
    beta`` with its running ``mean``/``var``; this module always does, in train mode too,
    and holds all four as buffers (not parameters), so the optimiser never sees them:

        scale = gamma / sqrt(var + eps),   y = x * scale + (beta - mean * scale)

    ``(N, C, H, W) -> (N, C, H, W)``. Why: detection trains on a few large images per
    device, too few for reliable batch statistics, so the pretrained network's
    ImageNet statistics and affine parameters are kept as they are (Mask R-CNN section
    3.1, "Implementation Details"; Detectron's ``AffineChannel``). Equal to
    ``torchvision.ops.FrozenBatchNorm2d`` (same buffer names and ``eps=1e-5``, so state
    dicts load across; tests/test_backbones.py). A ``BatchNorm2d`` state dict loads too:
    its ``num_batches_tracked`` entry is dropped.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    @classmethod
    def from_batch_norm(cls, bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
        """A frozen copy of ``bn``'s running statistics and affine parameters."""
        frozen = cls(bn.num_features, bn.eps)
        like = bn.weight if bn.affine else bn.running_mean
        if like is not None:
            frozen.to(device=like.device, dtype=like.dtype)
        with torch.no_grad():
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
            if bn.track_running_stats:
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
        return frozen

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
        error_msgs,
    ) -> None:  # fmt: skip
        state_dict.pop(prefix + "num_batches_tracked", None)  # a BatchNorm2d's counter
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` inside ``module`` by a :class:`FrozenBatchNorm2d`
    holding its current statistics (in place; returns ``module``, or the frozen copy if
    ``module`` itself is a ``BatchNorm2d``)."""
    if isinstance(module, nn.BatchNorm2d):
        return FrozenBatchNorm2d.from_batch_norm(module)
    for name, child in module.named_children():
        setattr(module, name, freeze_batch_norm(child))
    return module


#: ResNet depths with a torchvision constructor (Bottleneck blocks, stages 3/4/6|23/3).
RESNET_DEPTHS = (50, 101)

#: ResNet stages from the top (the last trained first), for ``trainable_layers``.
_TRAIN_ORDER = ("c5", "c4", "c3", "c2", "stem")


class ResNetBackbone(_StagedBackbone):
    """torchvision's ResNet-50/101 as stages c2..c5, the interface of :class:`TinyBackbone`.

    =====  ======  ========  =====================================================
    stage  stride  channels  torchvision module
    =====  ======  ========  =====================================================
    stem   4       64        conv1 (7x7, stride 2), bn1, relu, maxpool (stride 2)
    c2     4       256       layer1 (conv2_x, He et al. 2016 Table 1)
    c3     8       512       layer2 (conv3_x)
    c4     16      1024      layer3 (conv4_x): the map of the C4 design
    c5     32      2048      layer4 (conv5_x): "res5", the C4 box head
    =====  ======  ========  =====================================================

    Args:
        depth: 50 or 101.
        return_stages: as :class:`TinyBackbone`'s (the forward pass stops after the last).
        weights_path: a local state dict of ``torchvision.models.resnet50/101`` (e.g. the
            ImageNet weights saved with ``torch.save(model.state_dict(), path)``), read
            with ``torch.load(..., weights_only=True)``; ``fc.*`` entries are ignored. None
            (the default): random initialisation; nothing is ever downloaded.
        trainable_layers: how many of (c5, c4, c3, c2, stem), counted from the top, keep
            ``requires_grad``; the rest are frozen (torchvision's ``trainable_layers``
            of ``resnet_fpn_backbone``: 3 freezes the stem and c2, as Detectron does).
            None: 3 with ``weights_path``, 5 (all) without, torchvision's rule (frozen
            random layers would never learn).
        frozen_bn: :class:`FrozenBatchNorm2d` (True) or ``nn.BatchNorm2d`` (False). None:
            frozen with ``weights_path``, trainable batch norm without (torchvision's
            rule for detectors built without pretrained weights).

    ``forward``: ``(N, 3, H, W)`` -> ``OrderedDict`` of the requested stages, stage ``s`` of
    shape ``(N, out_channels[s], ceil(H / strides[s]), ceil(W / strides[s]))`` (for H a
    multiple of 32). ResNet-50 has 23.5 M parameters without its classifier; a 64 x 64
    image is enough for the tests (c5 is 2 x 2).
    """

    def __init__(
        self,
        depth: int = 50,
        return_stages: Sequence[str] = STAGES,
        weights_path: str | None = None,
        trainable_layers: int | None = None,
        frozen_bn: bool | None = None,
    ) -> None:
        super().__init__()
        from torchvision.models import resnet

        fn = "ResNetBackbone"
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"{fn}: depth must be one of {RESNET_DEPTHS}, got {depth!r}.")
        self._set_return_stages(return_stages)
        if trainable_layers is None:
            trainable_layers = 3 if weights_path is not None else 5
        if isinstance(trainable_layers, bool) or trainable_layers not in range(6):
            raise ValueError(
                f"{fn}: trainable_layers must be an int in 0..5 (stages trained from the "
                f"top: c5, c4, c3, c2, stem), got {trainable_layers!r}."
            )
        if frozen_bn is None:
            frozen_bn = weights_path is not None
        norm_layer = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
        builder = resnet.resnet50 if depth == 50 else resnet.resnet101
        net = builder(weights=None, norm_layer=norm_layer)  # never downloads
        if weights_path is not None:
            _load_resnet_weights(net, weights_path)
        self.depth = depth
        self.in_channels = 3
        self.frozen_bn = bool(frozen_bn)
        self.trainable_layers = trainable_layers
        self.out_channels = {"c2": 256, "c3": 512, "c4": 1024, "c5": 2048}
        self.strides = dict(STRIDES)
        self.stages = nn.ModuleDict(
            {
                "stem": nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
                "c2": net.layer1,
                "c3": net.layer2,
                "c4": net.layer3,
                "c5": net.layer4,
            }
        )
        for name in _TRAIN_ORDER[trainable_layers:]:
            self.stages[name].requires_grad_(False)

    def extra_repr(self) -> str:
        return (
            f"depth={self.depth}, return_stages={self.return_stages}, "
            f"trainable_layers={self.trainable_layers}, frozen_bn={self.frozen_bn}"
        )


def _load_resnet_weights(net: nn.Module, path: str) -> None:
    """Load a local torchvision ResNet state dict into ``net``, ignoring the classifier.
    A path that is missing or is no PyTorch file is a ValueError naming
    ``backbone_weights`` (it is set there, by ``--set`` on the command line)."""
    if not Path(path).is_file():
        raise ValueError(
            f"backbone_weights {path} is not a file; pass the path of a torchvision "
            "resnet50/resnet101 state dict you have (nothing is downloaded), or None"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises pickle's, zip's and its own errors
        raise ValueError(
            f"backbone_weights {path} cannot be read as a PyTorch file "
            f"({type(error).__name__}); save one with torch.save(model.state_dict(), path)"
        ) from error
    if not isinstance(state, dict):
        raise ValueError(
            f"ResNetBackbone: {path} holds a {type(state).__name__}, not a state dict; save "
            "one with torch.save(model.state_dict(), path)."
        )
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    advice = "it must be a torchvision resnet50/resnet101 state dict of the same depth."
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shapes that do not match
        raise ValueError(
            f"ResNetBackbone: {path} does not fit this ResNet ({error}); {advice}"
        ) from error
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(
            f"ResNetBackbone: {path} does not fit this ResNet: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
            f"{advice}"
        )
