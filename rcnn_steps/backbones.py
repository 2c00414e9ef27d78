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
  the image (:class:`rcnn_steps.roi_heads.C5BoxHead`).

Taught in chapter 03 (first use) and chapter 05 (the stages for FPN).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["STAGES", "TinyBackbone", "conv_bn_relu"]

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


class TinyBackbone(nn.Module):
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
        if isinstance(return_stages, str):
            return_stages = (return_stages,)
        unknown = [s for s in return_stages if s not in STAGES]
        if unknown or not return_stages:
            raise ValueError(
                f"TinyBackbone: return_stages must name stages among {STAGES}, got "
                f"{tuple(return_stages)!r}; ('c4',) is single-level Faster R-CNN."
            )
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"TinyBackbone: width must be a positive int, got {width!r}.")
        self.width = width
        self.in_channels = in_channels
        self.return_stages = tuple(sorted(set(return_stages), key=STAGES.index))
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

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """``(N, C, H, W)`` images -> ``OrderedDict`` of the requested stages, stage ``s``
        of shape ``(N, out_channels[s], ceil(H / strides[s]), ceil(W / strides[s]))`` (a
        multiple-of-32 image size makes every division exact)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"TinyBackbone: expected a batch (N, {self.in_channels}, H, W), got "
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
        pooled region (:class:`rcnn_steps.roi_heads.C5BoxHead`).
        """
        if stage not in STAGES:
            raise ValueError(f"TinyBackbone.split: stage must be one of {STAGES}, got {stage!r}.")
        cut = STAGES.index(stage) + 1
        trunk = nn.Sequential(self.stages["stem"], *(self.stages[s] for s in STAGES[:cut]))
        head = nn.Sequential(*(self.stages[s] for s in STAGES[cut:]))
        return trunk, head
