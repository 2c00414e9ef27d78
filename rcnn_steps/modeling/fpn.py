"""Feature Pyramid Networks (Lin et al. 2017, "Feature Pyramid Networks for Object
Detection"): one strong feature map per scale, at the price of a few convolutions.

A ConvNet's stages already form a pyramid, C2..C5 at strides 4..32, but the fine ones are
semantically weak (few layers deep) and the coarse ones are too coarse for small objects.
Section 3 builds a second pyramid P2..P5 that has *both* properties:

- **bottom-up**: the backbone's stages C2..C5 (:mod:`rcnn_steps.modeling.backbones`);
- **lateral connections**: a 1x1 conv maps every C_k to ``d`` channels (``d = 256`` in
  the paper), so all levels share one width;
- **top-down pathway**: starting from the coarsest, each level is upsampled 2x by nearest
  neighbour and added element-wise to the next finer lateral (Figure 3);
- a **3x3 conv** on every merged map "to reduce the aliasing effect of upsampling" gives
  P_k;
- for the RPN, a coarser **P6** by subsampling P5 with stride 2 (section 4.1: a max-pool
  with kernel 1, i.e. every other cell), so anchors of 512 px (32..512 on P2..P6) have a
  level of their own.

Every P_k has ``d`` channels and the stride of its C_k (P6: 64). One RPN head with shared
weights slides over all levels (:class:`rcnn_steps.modeling.rpn.RPNHead` takes a list of maps),
each level with anchors of one size (:class:`rcnn_steps.modeling.anchors.AnchorGenerator`), and
the RoI head pools each RoI from the level its size calls for
(:class:`rcnn_steps.modeling.poolers.MultiScaleRoIPooler`, eq. 1).

The pieces:

- :class:`FeaturePyramidNetwork`: ``[C_first .. C_last] -> OrderedDict(p_first .. p_last
  [, p_last+1])``. Equals ``torchvision.ops.FeaturePyramidNetwork(...,
  extra_blocks=LastLevelMaxPool())`` given the same weights (tests/test_fpn.py).
- :class:`BackboneWithFPN`: a backbone returning stages ``c2..c5``
  (:class:`~rcnn_steps.modeling.backbones.TinyBackbone` or
  :class:`~rcnn_steps.modeling.backbones.ResNetBackbone`) followed by the FPN, with the
  ``out_channels``/``strides`` dicts the detector reads.

Taught in chapter 05 ("Feature Pyramid Networks").
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FPN_LEVELS",
    "BackboneWithFPN",
    "FeaturePyramidNetwork",
    "check_levels",
    "level_number",
]

#: The pyramid levels a ResNet-shaped backbone supports: P2..P5 from C2..C5, P6 pooled.
FPN_LEVELS = ("p2", "p3", "p4", "p5", "p6")


def level_number(name: str) -> int:
    """``"p4" -> 4`` (also ``"c4" -> 4``): the k of a level, whose stride is ``2 ** k``."""
    if not (isinstance(name, str) and len(name) >= 2 and name[0] in "pc" and name[1:].isdigit()):
        raise ValueError(f"level_number: expected a level name such as 'p4' or 'c4', got {name!r}.")
    return int(name[1:])


def check_levels(levels: Sequence[str], what: str, reach_p5: bool = True) -> tuple[str, ...]:
    """``levels`` as a tuple, if they are consecutive names from :data:`FPN_LEVELS`
    (finest first) and, with ``reach_p5``, include p5 (the pyramid's top-down path starts
    at the coarsest stage, C5); else a ``ValueError`` naming ``what``."""
    levels = tuple(levels) if not isinstance(levels, str) else (levels,)
    ok = bool(levels) and all(n in FPN_LEVELS for n in levels)
    if ok:
        numbers = [level_number(n) for n in levels]
        ok = numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        ok = ok and (not reach_p5 or (numbers[0] <= 5 <= numbers[-1]))
    if not ok:
        reach = " that include p5 (the top-down path starts at C5)" if reach_p5 else ""
        raise ValueError(
            f"{what} must be consecutive levels from {FPN_LEVELS}, finest first{reach}, e.g. "
            f"('p2', 'p3', 'p4', 'p5', 'p6'); got {levels!r}."
        )
    return levels


class FeaturePyramidNetwork(nn.Module):
    """The top-down pathway with lateral connections of FPN (section 3, Figure 3).

    Args:
        in_channels: channels of the input maps, finest first (e.g. C2..C5 of a
            ResNet-50: ``[256, 512, 1024, 2048]``).
        out_channels: ``d``, the channels of every output level (256 in the paper).
        first_level: k of the finest input (2 for C2); outputs are named ``p{k}``.
        extra_max_pool: add one coarser level by max-pooling the coarsest output with
            kernel 1 and stride 2 (P6 from P5, section 4.1, for the RPN only).

    Layout: ``lateral_convs[i]`` (1x1, C_i -> d, with bias) and ``output_convs[i]`` (3x3,
    d -> d, padding 1, with bias), no normalisation and no non-linearity (the paper:
    "there are no non-linearities in these extra layers"). Weights start as Detectron's
    and torchvision's (Kaiming uniform with a = 1, biases 0).

    ``forward(features)``: the maps as a list or a mapping (its values, in order), each
    ``(N, C_i, H_i, W_i)`` with ``H_i`` about twice ``H_{i+1}`` -> ``OrderedDict`` of
    ``(N, d, H_i, W_i)`` maps ``p{first_level} ..``, plus ``(N, d, ceil(H_last / 2),
    ceil(W_last / 2))`` for the extra level. Upsampling is to the finer map's exact size
    (nearest neighbour), so odd sizes (``H_i = 2 H_{i+1} - 1``) work.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        first_level: int = 2,
        extra_max_pool: bool = True,
    ) -> None:
        super().__init__()
        in_channels = list(in_channels)
        if not in_channels or any(
            isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in in_channels
        ):
            raise ValueError(
                "FeaturePyramidNetwork: in_channels must be positive ints, finest first, e.g. "
                f"[256, 512, 1024, 2048]; got {in_channels!r}."
            )
        if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(
                f"FeaturePyramidNetwork: out_channels must be >= 1, got {out_channels!r}."
            )
        self.in_channels = tuple(in_channels)
        self.out_channels = out_channels
        self.first_level = first_level
        self.extra_max_pool = bool(extra_max_pool)
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    @property
    def level_names(self) -> tuple[str, ...]:
        """Output names in order, e.g. ``("p2", "p3", "p4", "p5", "p6")``."""
        n = len(self.in_channels) + self.extra_max_pool
        return tuple(f"p{self.first_level + i}" for i in range(n))

    def extra_repr(self) -> str:
        return f"levels={self.level_names}, extra_max_pool={self.extra_max_pool}"

    def forward(
        self, features: Sequence[Tensor] | Mapping[str, Tensor]
    ) -> OrderedDict[str, Tensor]:
        maps = list(features.values()) if isinstance(features, Mapping) else list(features)
        if len(maps) != len(self.lateral_convs):
            raise ValueError(
                f"FeaturePyramidNetwork: built for {len(self.lateral_convs)} input maps (channels "
                f"{self.in_channels}), got {len(maps)}."
            )
        for i, (x, c) in enumerate(zip(maps, self.in_channels, strict=True)):
            if x.dim() != 4 or x.shape[1] != c:
                raise ValueError(
                    f"FeaturePyramidNetwork: input {i} must be (N, {c}, H, W), got "
                    f"{tuple(x.shape)}."
                )
        # Top-down: the merged map of level i is lateral(C_i) + upsample(merged map of i + 1).
        merged = self.lateral_convs[-1](maps[-1])
        outputs = [self.output_convs[-1](merged)]
        for i in range(len(maps) - 2, -1, -1):
            lateral = self.lateral_convs[i](maps[i])
            top_down = F.interpolate(merged, size=lateral.shape[-2:], mode="nearest")
            merged = lateral + top_down
            outputs.insert(0, self.output_convs[i](merged))
        if self.extra_max_pool:
            # kernel 1, stride 2: every other cell of the coarsest level (P6 from P5).
            outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))
        return OrderedDict(zip(self.level_names, outputs, strict=True))


class BackboneWithFPN(nn.Module):
    """A backbone and an FPN as one module: images -> ``OrderedDict`` of pyramid levels.

    Args:
        body: a backbone whose ``forward`` returns an ``OrderedDict`` with (at least) the
            stages ``c{k}`` of the requested levels, and which has ``out_channels`` and
            ``strides`` dicts (:class:`~rcnn_steps.modeling.backbones.TinyBackbone`,
            :class:`~rcnn_steps.modeling.backbones.ResNetBackbone`, built with ``return_stages``
            naming those stages).
        out_channels: ``d``, the FPN's width (256 in the paper).
        levels: the pyramid levels, consecutive, e.g. ``("p2", "p3", "p4", "p5", "p6")``
            (the paper's for the RPN); every ``p{k}`` with k <= 5 is built from ``c{k}``,
            ``"p6"`` (if present, after "p5") by max-pooling P5.

    Attributes: ``levels``; ``out_channels`` and ``strides``, dicts by level name (``d``
    for every level, and ``2 ** k``), as the backbones have them per stage; ``stages``,
    the backbone stages read.

    ``forward``: ``(N, 3, H, W)`` -> ``OrderedDict`` level -> ``(N, d, ceil(H / 2**k),
    ceil(W / 2**k))`` for H a multiple of the largest stride.
    """

    def __init__(
        self,
        body: nn.Module,
        out_channels: int = 256,
        levels: Sequence[str] = FPN_LEVELS,
    ) -> None:
        super().__init__()
        levels = check_levels(levels, "BackboneWithFPN: levels")
        numbers = [level_number(n) for n in levels]
        self.stages = tuple(f"c{k}" for k in numbers if k <= 5)
        missing = [s for s in self.stages if s not in getattr(body, "out_channels", {})]
        returned = getattr(body, "return_stages", self.stages)
        missing += [s for s in self.stages if s not in returned and s not in missing]
        if missing:
            raise ValueError(
                f"BackboneWithFPN: the backbone must return stages {self.stages}; it lacks "
                f"{missing} (build it with return_stages={self.stages})."
            )
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            [body.out_channels[s] for s in self.stages],
            out_channels,
            first_level=numbers[0],
            extra_max_pool="p6" in levels,
        )
        self.levels = levels
        self.out_channels = {n: out_channels for n in levels}
        self.strides = {n: 2 ** level_number(n) for n in levels}

    def extra_repr(self) -> str:
        return f"levels={self.levels}"

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        stages = self.body(x)
        return self.fpn([stages[s] for s in self.stages])
