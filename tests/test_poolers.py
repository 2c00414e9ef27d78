from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import LevelMapper as TvLevelMapper

from rcnn_steps.modeling.poolers import (
    LevelMapper,
    MultiScaleRoIPooler,
    feature_level,
    roi_size_in_cells,
)
from rcnn_steps.ops import ROI_OP_NAMES, get_roi_op


def _boxes(n, max_xy, min_wh, max_wh, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * max_xy
    wh = min_wh + torch.rand(n, 2, generator=g, dtype=dtype) * (max_wh - min_wh)
    return torch.cat([xy, xy + wh], dim=1)


def _boundary_boxes(s0, dtype):
    """Boxes with sqrt(wh) exactly at, just below and just above s0 * 2**j, squares and
    not, plus tiny and huge ones."""
    rows = []
    for j in range(-4, 4):
        s = s0 * 2.0**j
        for w, h in ((s, s), (s / 2, 2 * s), (4 * s, s / 4), (s * 0.999, s), (s * 1.001, s)):
            rows.append([3.0, 5.0, 3.0 + w, 5.0 + h])
    rows += [[0.0, 0.0, 0.01, 0.01], [0.0, 0.0, 1e4, 1e4], [1.0, 1.0, 1.5, 900.0]]
    return torch.tensor(rows, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "k_min,k_max,s0,k0", [(2, 5, 224, 4), (2, 5, 56, 4), (3, 6, 100, 5), (2, 2, 224, 4)]
)
def test_level_mapper_equal_to_torchvision(dtype, k_min, k_max, s0, k0):
    boxes = [
        _boxes(300, 500, 0.5, 600, seed=1, dtype=dtype),
        _boundary_boxes(s0, dtype),
        torch.zeros(0, 4, dtype=dtype),
    ]
    ours = LevelMapper(k_min, k_max, s0, k0)
    theirs = TvLevelMapper(k_min, k_max, s0, k0)
    expected = theirs(boxes)
    got = ours(boxes)
    assert got.dtype == torch.int64
    assert torch.equal(got, expected)
    assert torch.equal(ours.level(boxes), expected + k_min)
    assert ours(torch.cat(boxes)).tolist() == got.tolist()  # one tensor or a list


def test_level_mapper_is_equation_1():
    mapper = LevelMapper(2, 5, canonical_size=224, canonical_level=4)
    sizes = torch.tensor([20.0, 111.9, 112.0, 223.9, 224.0, 447.9, 448.0, 2000.0])
    boxes = torch.stack([torch.zeros(8), torch.zeros(8), sizes, sizes], dim=1)
    # k = floor(4 + log2(s / 224)), clamped to [2, 5]
    assert mapper.level(boxes).tolist() == [2, 2, 3, 3, 4, 4, 5, 5]
    # our scaling: s0 = 56 (see the module docstring): a 32 px box (P4's anchor) -> P3
    ours = LevelMapper(2, 5, canonical_size=56)
    assert ours.level(torch.tensor([[0.0, 0.0, 32.0, 32.0]])).tolist() == [3]
    assert ours.level([torch.zeros(0, 4)]).shape == (0,)
    with pytest.raises(ValueError, match="k_min <= k_max"):
        LevelMapper(5, 2)


def _pyramid(image=512, channels=3, levels=range(2, 6), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return OrderedDict(
        (f"p{k}", torch.randn(2, channels, image >> k, image >> k, generator=g, dtype=dtype))
        for k in levels
    )


@pytest.mark.parametrize("s0,k0,image", [(224, 4, 512), (56, 4, 128)])
def test_roialign_equal_to_torchvision_multiscale_forward_backward(s0, k0, image):
    feats = _pyramid(image)
    boxes = [
        _boxes(40, image * 0.8, 2, image * 0.9, seed=2),
        _boxes(25, image * 0.8, 2, image * 0.5, seed=3),
    ]
    ours_in = OrderedDict((k, v.clone().requires_grad_()) for k, v in feats.items())
    tv_in = OrderedDict((k, v.clone().requires_grad_()) for k, v in feats.items())
    pooler = MultiScaleRoIPooler("roialign_avg", 7, 2, aligned=False, canonical_size=s0)
    tv = MultiScaleRoIAlign(list(feats), 7, 2, canonical_scale=s0, canonical_level=k0)
    got = pooler(ours_in, boxes, (image, image))
    expected = tv(tv_in, boxes, [(image, image)] * 2)
    assert got.shape == (65, 3, 7, 7)
    torch.testing.assert_close(got, expected)
    levels = torch.cat(pooler.assign_levels(feats, boxes, (image, image)))
    assert len(levels.unique()) >= 3  # the boxes really spread over the levels
    w = torch.randn(got.shape, generator=torch.Generator().manual_seed(4))
    (got * w).sum().backward()
    (expected * w).sum().backward()
    for k in feats:
        # A level without RoIs gets no gradient from us, zeros from torchvision.
        grad = ours_in[k].grad if ours_in[k].grad is not None else torch.zeros_like(feats[k])
        torch.testing.assert_close(grad, tv_in[k].grad, msg=k)


@pytest.mark.parametrize("roi_op", ROI_OP_NAMES)
def test_each_roi_pooled_from_its_level_in_input_order(roi_op):
    image = 256
    # Constant maps: every RoI's pooled values are the number k of the map it read.
    feats = OrderedDict(
        (f"p{k}", torch.full((2, 2, image >> k, image >> k), float(k))) for k in range(2, 6)
    )
    boxes = [_boxes(30, 50, 4, 200, seed=5), _boxes(20, 100, 4, 100, seed=6)]  # inside
    pooler = MultiScaleRoIPooler(roi_op, 5, 2, canonical_size=56, canonical_level=4)
    out = pooler(feats, boxes, (image, image))
    levels = torch.cat(pooler.assign_levels(feats, boxes, (image, image)))
    expected = LevelMapper(2, 5, 56, 4).level(boxes)
    assert torch.equal(levels, expected) and len(levels.unique()) == 4
    torch.testing.assert_close(out, levels[:, None, None, None].float().expand_as(out))
    # Rows in the input order: equal to pooling each box alone from its level.
    op = get_roi_op(roi_op)
    flat = torch.cat(boxes)
    image_index = torch.cat([torch.full((len(b),), i) for i, b in enumerate(boxes)])
    varied = _pyramid(image, 2, seed=7)
    out = pooler(varied, boxes, (image, image))
    for r in range(0, len(flat), 7):
        k = int(levels[r])
        roi = torch.cat([image_index[r : r + 1, None].float(), flat[r : r + 1]], 1)
        alone = op(varied[f"p{k}"], roi, 5, 2.0**-k, 2)
        torch.testing.assert_close(out[r : r + 1], alone)


def test_empty_roi_lists_and_empty_levels():
    feats = _pyramid(128, 4)
    pooler = MultiScaleRoIPooler("roialign_avg", 7, 2, canonical_size=56)
    out = pooler(feats, [torch.zeros(0, 4), torch.zeros(0, 4)], (128, 128))
    assert out.shape == (0, 4, 7, 7)
    one = pooler(feats, [torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 10.0, 10.0]])], (128, 128))
    assert one.shape == (1, 4, 7, 7)  # only P2 has a RoI; the other levels are skipped
    expected = get_roi_op("roialign_avg")(
        feats["p2"], torch.tensor([[1.0, 0.0, 0.0, 10.0, 10.0]]), 7, 0.25, 2
    )
    torch.testing.assert_close(one, expected)
    assert [lv.tolist() for lv in pooler.assign_levels(feats, [torch.zeros(0, 4)], (128, 128))] == [
        []
    ]


def test_levels_picked_from_a_dict_and_list_and_dtype():
    feats = _pyramid(128, 4, levels=range(2, 7), dtype=torch.float64)  # p2..p6
    boxes = [_boxes(10, 60, 4, 60, seed=8, dtype=torch.float64)]
    pooler = MultiScaleRoIPooler(
        "roipool", 7, canonical_size=56, levels=("p2", "p3", "p4", "p5")
    )  # P6 left to the RPN
    out = pooler(feats, boxes, (128, 128))
    assert out.dtype == torch.float64
    as_list = MultiScaleRoIPooler("roipool", 7, canonical_size=56)(
        [feats[f"p{k}"] for k in range(2, 6)], boxes, (128, 128)
    )
    torch.testing.assert_close(out, as_list)
    assert feature_level(feats["p6"], (128, 128)) == 6
    assert feature_level(torch.zeros(1, 1, 3, 3), (96, 96)) == 5  # ceil sizes round


def test_clear_errors():
    feats = _pyramid(128, 4)
    boxes = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])]
    with pytest.raises(ValueError, match="consecutive"):
        MultiScaleRoIPooler()([feats["p2"], feats["p4"]], boxes, (128, 128))
    with pytest.raises(ValueError, match="levels"):
        MultiScaleRoIPooler(levels=("p2", "p7"))(feats, boxes, (128, 128))
    with pytest.raises(ValueError, match="same channels"):
        MultiScaleRoIPooler()([feats["p2"], torch.zeros(2, 3, 16, 16)], boxes, (128, 128))
    with pytest.raises(ValueError, match="unknown RoI layer"):
        MultiScaleRoIPooler("roialign")


def test_roi_size_in_cells_reads_each_box_on_its_own_level():
    from rcnn_steps.ops import roi_pool_region

    boxes = torch.tensor(
        [[3.0, 5.0, 23.0, 21.0], [10.5, 2.0, 70.0, 61.5], [0.0, 0.0, 200.0, 160.0]]
    )
    mapper = LevelMapper(2, 5, canonical_size=56, canonical_level=4)
    cells, iou, level = roi_size_in_cells(boxes, mapper)
    assert level.tolist() == mapper.level(boxes).tolist() == [2, 4, 5]
    for i, k in enumerate(level.tolist()):
        side = ((boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])).sqrt()
        assert cells[i].item() == pytest.approx(side.item() / 2**k)
        assert iou[i] == roi_pool_region(boxes[i : i + 1], 2.0**-k)[1][0]
    # the paper's s0 = 224 on images 4x larger: the same objects span 4x the cells
    big = LevelMapper(2, 5, canonical_size=224, canonical_level=4)
    cells4, iou4, _ = roi_size_in_cells(boxes[:2] * 4, big)
    assert torch.allclose(cells4, cells[:2] * 4) and (iou4 > iou[:2]).all()
