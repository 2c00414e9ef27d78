"""Tests for rcnn_steps.modeling.anchors (chapter 04; multi-level in chapter 05).

torchvision's ``AnchorGenerator`` is the oracle: for the same sizes, ratios, images and
feature maps, ours must return the same anchors in the same order, bit for bit (single
and multiple levels, several sizes and ratios, non-square images, strides that do not
divide the image, float64 and float16). The order is also checked from first principles:
anchor a of cell (y, x) is base anchor a shifted to (x * stride_w, y * stride_h).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection.anchor_utils import AnchorGenerator as TvAnchorGenerator
from torchvision.models.detection.image_list import ImageList as TvImageList

from rcnn_steps.modeling.anchors import (
    AnchorGenerator,
    anchor_visibility,
    anchors_at,
    anchors_by_level,
    generate_base_anchors,
)
from rcnn_steps.ops import ImageList


def exactly_equal(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def batch_and_features(image_sizes, feature_sizes, device="cpu", dtype=torch.float32):
    """A padded batch of blank images and one (N, 1, H_l, W_l) feature map per level."""
    images = [torch.zeros(3, h, w, device=device) for h, w in image_sizes]
    image_list = ImageList.from_tensors(images, size_divisible=32)
    n = len(image_sizes)
    features = [torch.zeros(n, 1, h, w, dtype=dtype, device=device) for h, w in feature_sizes]
    return image_list, features


def torchvision_anchors(sizes, ratios, image_list, features):
    tv = TvAnchorGenerator(sizes, ratios)
    return tv(TvImageList(image_list.tensors, image_list.image_sizes), features)


# ----------------------------------------------------------------------------------------
# Base anchors
# ----------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 1024), min_size=1, max_size=4),
    ratios=st.lists(st.floats(0.1, 10.0), min_size=1, max_size=4),
)
def test_base_anchors_equal_torchvision(sizes, ratios):
    ours = generate_base_anchors(sizes, ratios)
    theirs = TvAnchorGenerator((tuple(sizes),), (tuple(ratios),)).cell_anchors[0]
    exactly_equal(ours, theirs)
    assert ours.shape == (len(sizes) * len(ratios), 4)


def test_base_anchor_convention_ratio_is_h_over_w_and_rounded():
    anchors = generate_base_anchors((128, 256), (0.5, 1.0, 2.0))
    w = anchors[:, 2] - anchors[:, 0]
    h = anchors[:, 3] - anchors[:, 1]
    # ratio-major: (0.5, 128), (0.5, 256), (1, 128), (1, 256), (2, 128), (2, 256)
    ratios = torch.tensor([0.5, 0.5, 1.0, 1.0, 2.0, 2.0])
    sizes = torch.tensor([128.0, 256.0] * 3)
    torch.testing.assert_close(h / w, ratios, rtol=0.02, atol=0)  # ratio = h / w
    torch.testing.assert_close(w * h, sizes**2, rtol=0.02, atol=0)  # area = size^2
    assert torch.equal(anchors, anchors.round())  # integer corners
    assert torch.equal(anchors[:, :2], -anchors[:, 2:])  # centred on (0, 0)
    # the docstring's example: 128 at ratio 0.5 is 182 x 90, not 181.02 x 90.51
    assert anchors[0].tolist() == [-91.0, -45.0, 91.0, 45.0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_base_anchors_round_in_float32_then_convert(dtype):
    anchors = generate_base_anchors((37, 100), (0.3, 1.7), dtype=dtype)
    assert anchors.dtype == dtype
    exactly_equal(anchors, generate_base_anchors((37, 100), (0.3, 1.7)).to(dtype))


@pytest.mark.parametrize(
    ("sizes", "ratios"), [((), (1.0,)), ((32,), ()), ((0,), (1.0,)), ((32,), (-1.0,)), ("32", (1,))]
)
def test_base_anchor_errors(sizes, ratios):
    with pytest.raises(ValueError, match="generate_base_anchors"):
        generate_base_anchors(sizes, ratios)


# ----------------------------------------------------------------------------------------
# The generator against torchvision's
# ----------------------------------------------------------------------------------------

CONFIGS = {
    # name: (sizes, aspect_ratios, image sizes, feature sizes per level)
    "one level, one anchor": (((32,),), ((1.0,),), [(64, 64)], [(4, 4)]),
    "one level, book default": (((32,),), ((0.5, 1.0, 2.0),), [(100, 150)], [(8, 10)]),
    "paper 3x3, non-square": (
        ((128, 256, 512),),
        ((0.5, 1.0, 2.0),),
        [(600, 1000), (500, 800)],
        [(38, 63)],
    ),
    "FPN five levels": (
        ((32,), (64,), (128,), (256,), (512,)),
        ((0.5, 1.0, 2.0),) * 5,
        [(200, 256), (160, 300)],
        [(56, 80), (28, 40), (14, 20), (7, 10), (4, 5)],
    ),
    "levels with different counts": (
        ((16, 24), (48,), (96, 128, 160)),
        ((1.0,), (0.25, 0.5, 1.0, 2.0), (0.7, 1.3)),
        [(96, 64)],
        [(12, 8), (6, 4), (3, 2)],
    ),
    "strides that do not divide": (((32,),), ((0.5, 2.0),), [(100, 70)], [(7, 5)]),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_generator_equals_torchvision(name, dtype):
    sizes, ratios, image_sizes, feature_sizes = CONFIGS[name]
    image_list, features = batch_and_features(image_sizes, feature_sizes, dtype=dtype)
    generator = AnchorGenerator(sizes, ratios)
    ours = generator(image_list, features)
    theirs = torchvision_anchors(sizes, ratios, image_list, features)
    assert len(ours) == len(image_sizes)
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == dtype
        exactly_equal(a, b)
    tv = TvAnchorGenerator(sizes, ratios)
    assert generator.num_anchors_per_location() == tv.num_anchors_per_location()
    expected_rows = sum(
        h * w * a
        for (h, w), a in zip(feature_sizes, generator.num_anchors_per_location(), strict=True)
    )
    assert ours[0].shape == (expected_rows, 4)


@settings(max_examples=30, deadline=None)
@given(
    levels=st.lists(
        st.tuples(
            st.lists(st.integers(4, 300), min_size=1, max_size=3),  # sizes
            st.lists(st.sampled_from([0.25, 0.5, 1.0, 1.5, 2.0, 3.0]), min_size=1, max_size=3),
            st.integers(1, 12),  # feature height
            st.integers(1, 12),  # feature width
        ),
        min_size=1,
        max_size=3,
    ),
    image_h=st.integers(12, 200),
    image_w=st.integers(12, 200),
    num_images=st.integers(1, 2),
)
def test_generator_equals_torchvision_random(levels, image_h, image_w, num_images):
    sizes = tuple(tuple(s) for s, _, _, _ in levels)
    ratios = tuple(tuple(r) for _, r, _, _ in levels)
    feature_sizes = [(fh, fw) for _, _, fh, fw in levels]
    image_list, features = batch_and_features([(image_h, image_w)] * num_images, feature_sizes)
    ours = AnchorGenerator(sizes, ratios)(image_list, features)
    theirs = torchvision_anchors(sizes, ratios, image_list, features)
    for a, b in zip(ours, theirs, strict=True):
        exactly_equal(a, b)


def test_flat_shorthands_mean_what_torchvision_means():
    image_list, features = batch_and_features([(64, 64)], [(8, 8), (4, 4)])
    ours = AnchorGenerator((16, 32), (0.5, 1.0))
    assert ours.sizes == ((16,), (32,))
    assert ours.aspect_ratios == ((0.5, 1.0), (0.5, 1.0))
    theirs = TvAnchorGenerator((16, 32), (0.5, 1.0))
    tv_list = TvImageList(image_list.tensors, image_list.image_sizes)
    exactly_equal(ours(image_list, features)[0], theirs(tv_list, features)[0])


def test_order_is_level_then_row_then_column_then_anchor():
    sizes, ratios = ((32, 64), (128,)), ((0.5, 1.0, 2.0), (1.0, 2.0))
    generator = AnchorGenerator(sizes, ratios)
    image_list, features = batch_and_features([(96, 128)], [(6, 8), (3, 4)])
    anchors = generator(image_list, features)[0]
    strides = [(16, 16), (32, 32)]
    counts = generator.num_anchors_per_location()
    row = 0
    for level, ((h, w), (sh, sw)) in enumerate(zip([(6, 8), (3, 4)], strides, strict=True)):
        base = generate_base_anchors(sizes[level], ratios[level])
        for y in range(h):
            for x in range(w):
                shift = torch.tensor([x * sw, y * sh, x * sw, y * sh], dtype=torch.float32)
                exactly_equal(anchors[row : row + counts[level]], base + shift)
                exactly_equal(
                    anchors_at(anchors, (y, x), [(6, 8), (3, 4)], counts, level), base + shift
                )
                row += counts[level]
    assert row == anchors.shape[0]


def test_grid_anchors_takes_int_or_pair_strides():
    generator = AnchorGenerator(((32,),), ((1.0,),))
    square = generator.grid_anchors([(2, 3)], [16])[0]
    pair = generator.grid_anchors([(2, 3)], [(16, 16)])[0]
    exactly_equal(square, pair)
    rect = generator.grid_anchors([(2, 3)], [(10, 20)])[0]
    centres = (rect[:, :2] + rect[:, 2:]) / 2
    assert centres.tolist() == [[0, 0], [20, 0], [40, 0], [0, 10], [20, 10], [40, 10]]


def test_offset_centres_anchors_in_their_cells():
    shifted = AnchorGenerator(((32,),), ((1.0,),), offset=0.5).grid_anchors([(2, 2)], [16])[0]
    plain = AnchorGenerator(((32,),), ((1.0,),)).grid_anchors([(2, 2)], [16])[0]
    exactly_equal(shifted, plain + 8)


def test_each_image_gets_its_own_tensor_and_state_is_not_kept():
    generator = AnchorGenerator()
    image_list, features = batch_and_features([(64, 64), (50, 40)], [(4, 4)])
    a, b = generator(image_list, features)
    assert a.data_ptr() != b.data_ptr()
    a.zero_()
    assert b.abs().sum() > 0
    # a float16 call must not change later float32 results (torchvision keeps the last
    # call's dtype in its cell anchors)
    before = generator(image_list, features)[0]
    generator(image_list, [f.half() for f in features])
    exactly_equal(generator(image_list, features)[0], before)
    assert generator.cell_anchors[0].dtype == torch.float32


def test_single_feature_tensor_and_repr():
    generator = AnchorGenerator()
    image_list, features = batch_and_features([(64, 64)], [(4, 4)])
    exactly_equal(generator(image_list, features[0])[0], generator(image_list, features)[0])
    assert "sizes=((32,),)" in repr(generator)
    assert generator.num_anchors_per_location() == [3]


def test_generator_errors():
    with pytest.raises(ValueError, match="2 levels but aspect_ratios has 3"):
        AnchorGenerator(((32,), (64,)), ((1.0,), (1.0,), (1.0,)))
    with pytest.raises(ValueError, match="positive finite"):
        AnchorGenerator(((32, -1),), ((1.0,),))
    with pytest.raises(ValueError, match="offset"):
        AnchorGenerator(offset=1.0)
    generator = AnchorGenerator(((32,), (64,)), ((1.0,), (1.0,)))
    image_list, features = batch_and_features([(64, 64)], [(8, 8), (4, 4)])
    with pytest.raises(ValueError, match="2 level\\(s\\).*1 feature map"):
        generator(image_list, features[:1])
    with pytest.raises(ValueError, match="\\(N, C, H, W\\)"):
        generator(image_list, [features[0][0], features[1]])
    with pytest.raises(ValueError, match="2 images but the image list has 1"):
        generator(image_list, [f.expand(2, -1, -1, -1) for f in features])
    with pytest.raises(ValueError, match="more cells than the image has pixels"):
        generator(image_list, [torch.zeros(1, 1, 65, 8), features[1]])
    with pytest.raises(ValueError, match="1 feature size"):
        generator.grid_anchors([(8, 8)], [8, 16])
    with pytest.raises(ValueError, match="strides > 0"):
        generator.grid_anchors([(8, 8), (4, 4)], [8, 0])


# ----------------------------------------------------------------------------------------
# Visibility (Faster R-CNN section 3.3) and cutting the anchors back into grids
# ----------------------------------------------------------------------------------------


def test_visibility_by_hand():
    anchors = torch.tensor(
        [
            [0.0, 0.0, 100.0, 50.0],  # the whole image: inside (edges touch)
            [-1.0, 10.0, 20.0, 20.0],  # one pixel out on the left
            [10.0, 10.0, 101.0, 20.0],  # one pixel out on the right
            [10.0, -0.5, 20.0, 50.5],  # half a pixel out at top and bottom
            [200.0, 200.0, 210.0, 210.0],  # in the padding
        ]
    )
    assert anchor_visibility(anchors, (50, 100)).tolist() == [True, False, False, False, False]
    assert anchor_visibility(anchors, (50, 100), allowed_border=1).tolist() == [
        True,
        True,
        True,
        True,
        False,
    ]
    assert anchor_visibility(anchors, torch.tensor([50, 100]), math.inf).all()


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    height=st.integers(1, 100),
    width=st.integers(1, 100),
    border=st.sampled_from([0, 0.5, 8, 32]),
)
def test_visibility_is_containment_in_the_grown_image(seed, height, width, border):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(200, 2, generator=gen) * 160 - 30
    wh = torch.rand(200, 2, generator=gen) * 60
    anchors = torch.cat([xy, xy + wh], dim=1).round()
    visible = anchor_visibility(anchors, (height, width), border)
    # inside iff clipping to the grown image leaves the anchor unchanged
    grown = anchors.clone()
    grown[:, 0::2] = grown[:, 0::2].clamp(-border, width + border)
    grown[:, 1::2] = grown[:, 1::2].clamp(-border, height + border)
    assert torch.equal(visible, (grown == anchors).all(dim=1))


def test_visibility_errors():
    with pytest.raises(ValueError, match="\\(N, 4\\)"):
        anchor_visibility(torch.zeros(4), (10, 10))
    with pytest.raises(ValueError, match="\\(height, width\\)"):
        anchor_visibility(torch.zeros(1, 4), (10,))
    with pytest.raises(ValueError, match=">= 0"):
        anchor_visibility(torch.zeros(1, 4), (10, 10), allowed_border=-1)


def test_anchors_by_level_round_trip_and_other_per_anchor_tensors():
    generator = AnchorGenerator(((32,), (64, 96)), ((0.5, 1.0, 2.0), (1.0,)))
    image_list, features = batch_and_features([(64, 96)], [(4, 6), (2, 3)])
    anchors = generator(image_list, features)[0]
    counts = generator.num_anchors_per_location()
    grids = anchors_by_level(anchors, [(4, 6), (2, 3)], counts)
    assert [g.shape for g in grids] == [(4, 6, 3, 4), (2, 3, 2, 4)]
    exactly_equal(torch.cat([g.reshape(-1, 4) for g in grids]), anchors)
    scores = torch.arange(anchors.shape[0])
    score_grids = anchors_by_level(scores, [(4, 6), (2, 3)], counts)
    assert score_grids[1].shape == (2, 3, 2)
    assert score_grids[1][1, 2, 1] == 4 * 6 * 3 + (1 * 3 + 2) * 2 + 1


def test_anchors_at_single_level_shorthand_and_errors():
    generator = AnchorGenerator()
    anchors = generator.grid_anchors([(3, 5)], [16])[0]
    cell = anchors_at(anchors, (2, 4), (3, 5), 3)
    exactly_equal(cell, generate_base_anchors((32,), (0.5, 1.0, 2.0)) + torch.tensor([64, 32] * 2))
    with pytest.raises(IndexError, match="outside level 0"):
        anchors_at(anchors, (3, 0), (3, 5), 3)
    with pytest.raises(IndexError, match="level 1 out of range"):
        anchors_at(anchors, (0, 0), [(3, 5)], [3], level=1)
    with pytest.raises(ValueError, match="make 30"):
        anchors_by_level(anchors, [(2, 5)], [3])


# ----------------------------------------------------------------------------------------
# The same on CUDA
# ----------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(CONFIGS))
def test_generator_on_cuda(name):
    sizes, ratios, image_sizes, feature_sizes = CONFIGS[name]
    image_list, features = batch_and_features(image_sizes, feature_sizes, device="cuda")
    ours = AnchorGenerator(sizes, ratios)(image_list, features)
    theirs = torchvision_anchors(sizes, ratios, image_list, features)
    on_cpu = AnchorGenerator(sizes, ratios)(image_list.to("cpu"), [f.cpu() for f in features])
    for a, b, c in zip(ours, theirs, on_cpu, strict=True):
        assert a.device.type == "cuda"
        exactly_equal(a, b)
        exactly_equal(a.cpu(), c)
    visible = anchor_visibility(ours[0], image_list.image_sizes[0])
    assert visible.device.type == "cuda"
    assert torch.equal(visible.cpu(), anchor_visibility(on_cpu[0], image_list.image_sizes[0]))
