"""Tests for rcnn_steps.modeling.matcher (chapter 04; RoI heads chapters 04-07).

torchvision's ``Matcher`` is the oracle, compared on random IoU matrices from random boxes
(on a coarse integer grid, so exact ties and IoUs exactly at a threshold are common),
with the RPN's (0.7, 0.3, low-quality) and the RoI heads' (0.5, 0.5, no low-quality)
settings. Where we differ on purpose the tests say so and check what we promise instead:
no ground truth gives all background (torchvision raises), and a ground-truth box that
overlaps nothing makes no low-quality matches (torchvision turns every IoU-0 prediction
into a positive).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection._utils import Matcher as TvMatcher
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import box_iou

from rcnn_steps.modeling.matcher import Matcher, label_anchors
from rcnn_steps.modeling.sampler import BalancedPositiveNegativeSampler

SETTINGS = [(0.7, 0.3, True), (0.5, 0.5, False), (0.5, 0.4, True), (0.7, 0.3, False)]


def grid_boxes(n: int, seed: int, cells: int = 12, dtype=torch.float32) -> torch.Tensor:
    """(n, 4) boxes with integer corners in 0..cells and positive sides."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, cells - 1, (n, 2), generator=gen)
    wh = torch.randint(1, cells // 2 + 1, (n, 2), generator=gen)
    return torch.cat([xy, (xy + wh).clamp(max=cells)], dim=1).to(dtype)


def reference(quality: torch.Tensor, matcher: Matcher) -> torch.Tensor:
    """torchvision's matcher with our two documented differences: rows (ground truth)
    that overlap nothing are left out before matching (so they make no low-quality
    matches; they can never be any prediction's unique best), indices mapped back."""
    num_gt, num_pred = quality.shape
    if num_gt == 0 or num_pred == 0:
        return torch.full((num_pred,), -1, dtype=torch.int64)
    tv = TvMatcher(matcher.high_threshold, matcher.low_threshold, matcher.allow_low_quality_matches)
    overlapping = torch.where(quality.max(dim=1).values > 0)[0]
    if len(overlapping) == 0:
        return torch.full((num_pred,), -1, dtype=torch.int64)
    matches = tv(quality[overlapping])
    return torch.where(matches >= 0, overlapping[matches.clamp(min=0)], matches)


# ----------------------------------------------------------------------------------------
# Against torchvision
# ----------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    num_gt=st.integers(1, 8),
    num_pred=st.integers(1, 60),
    cells=st.sampled_from([6, 12, 40]),
    setting=st.sampled_from(SETTINGS),
    seed=st.integers(0, 2**16),
)
def test_equals_torchvision_on_random_boxes(num_gt, num_pred, cells, setting, seed):
    gt = grid_boxes(num_gt, seed, cells)
    preds = grid_boxes(num_pred, seed + 1, cells)
    quality = box_iou(gt, preds)
    ours = Matcher(*setting)(quality)
    assert ours.dtype == torch.int64 and ours.shape == (num_pred,)
    assert torch.equal(ours, reference(quality, Matcher(*setting)))
    if bool((quality.max(dim=1).values > 0).all()):  # every gt overlaps something
        assert torch.equal(ours, TvMatcher(*setting)(quality))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("setting", SETTINGS)
def test_equals_torchvision_on_anchor_like_grids(dtype, setting):
    # many identical IoUs: the same gt against a regular grid of equal anchors
    xs = torch.arange(0, 64, 8, dtype=dtype)
    x, y = torch.meshgrid(xs, xs, indexing="ij")
    anchors = torch.stack([x, y, x + 16, y + 16], dim=-1).reshape(-1, 4)
    anchors = torch.cat([anchors, anchors[:5]])  # exact duplicates: ties in the rule
    gt = torch.tensor(
        [[4, 4, 20, 20], [30, 2, 60, 10], [0, 0, 16, 16], [8, 8, 24, 24]], dtype=dtype
    )
    quality = box_iou(gt, anchors)
    assert torch.equal(Matcher(*setting)(quality), TvMatcher(*setting)(quality))


def test_thresholds_are_inclusive_at_high_and_at_low():
    quality = torch.tensor([[0.7, 0.69, 0.3, 0.29, 0.5, 0.49]])
    ours = Matcher(0.7, 0.3, allow_low_quality_matches=False)(quality)
    assert ours.tolist() == [0, -2, -2, -1, -2, -2]
    assert torch.equal(ours, TvMatcher(0.7, 0.3, False)(quality))
    roi = Matcher(0.5, 0.5, allow_low_quality_matches=False)(quality)
    assert roi.tolist() == [0, 0, -1, -1, 0, -1]


def test_low_quality_rule_keeps_every_tied_best_prediction():
    # gt 0 overlaps predictions 1 and 2 equally (0.4) and best; gt 1 is matched normally
    quality = torch.tensor([[0.1, 0.4, 0.4, 0.0], [0.0, 0.0, 0.0, 0.9]])
    ours = Matcher(0.7, 0.3, True)(quality)
    assert ours.tolist() == [-1, 0, 0, 1]
    assert torch.equal(ours, TvMatcher(0.7, 0.3, True)(quality))
    without = Matcher(0.7, 0.3, False)(quality)
    assert without.tolist() == [-1, -2, -2, 1]


def test_low_quality_match_goes_to_the_predictions_best_gt():
    # prediction 0 is gt 0's best (0.4) but overlaps gt 1 more (0.6): it is matched to gt 1,
    # as in Detectron and torchvision (its regression target is the box it overlaps most)
    quality = torch.tensor([[0.4, 0.1], [0.6, 0.8]])
    ours = Matcher(0.7, 0.3, True)(quality)
    assert ours.tolist() == [1, 1]
    assert torch.equal(ours, TvMatcher(0.7, 0.3, True)(quality))


def test_argmax_ties_pick_the_first_gt():
    quality = torch.tensor([[0.8, 0.2], [0.8, 0.75]])
    assert Matcher()(quality).tolist() == [0, 1]
    assert torch.equal(Matcher()(quality), TvMatcher(0.7, 0.3, True)(quality))


# ----------------------------------------------------------------------------------------
# Deliberate differences from torchvision
# ----------------------------------------------------------------------------------------


def test_no_ground_truth_is_all_background():
    quality = torch.zeros(0, 5)
    assert Matcher()(quality).tolist() == [-1] * 5
    assert Matcher(0.5, 0.5, False)(quality).dtype == torch.int64
    with pytest.raises(ValueError, match="No ground-truth"):  # torchvision refuses
        TvMatcher(0.7, 0.3, True)(quality)


@pytest.mark.parametrize("shape", [(3, 0), (0, 0)])
def test_no_predictions_is_empty(shape):
    matches = Matcher()(torch.zeros(shape))
    assert matches.shape == (0,) and matches.dtype == torch.int64


def test_gt_that_overlaps_nothing_makes_no_low_quality_matches():
    anchors = torch.tensor([[0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110.0]])
    gt = torch.tensor([[0, 0, 9, 9], [200, 200, 210, 210.0]])  # gt 1 is off every anchor
    quality = box_iou(gt, anchors)
    assert Matcher()(quality).tolist() == [0, -1, -1]
    # torchvision: gt 1's "best" anchors are all anchors at IoU 0, and each is matched to
    # its own best gt (gt 0, the first of its all-zero column): two false positives
    assert TvMatcher(0.7, 0.3, True)(quality).tolist() == [0, 0, 0]
    assert Matcher()(quality[1:]).tolist() == [-1, -1, -1]


# ----------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    num_gt=st.integers(0, 6),
    num_pred=st.integers(0, 50),
    seed=st.integers(0, 2**16),
    thresholds=st.tuples(st.floats(0.05, 0.95), st.floats(0.05, 0.95)).map(sorted),
    low_quality=st.booleans(),
)
def test_properties(num_gt, num_pred, seed, thresholds, low_quality):
    low, high = thresholds
    gt = grid_boxes(num_gt, seed, 20)
    preds = grid_boxes(num_pred, seed + 1, 20)
    quality = box_iou(gt, preds)
    matches = Matcher(high, low, low_quality)(quality)
    assert matches.shape == (num_pred,)
    assert ((matches >= -2) & (matches < max(num_gt, 1))).all()
    if num_gt == 0 or num_pred == 0:
        assert (matches == -1).all()
        return
    best, best_gt = quality.max(dim=0)
    matched = matches >= 0
    # a matched prediction is matched to its best gt
    assert torch.equal(matches[matched], best_gt[matched])
    # the bands
    assert ((best >= high) <= matched).all()
    assert (matches[(best < low) & ~matched] == -1).all()
    assert (matches[(best >= low) & (best < high) & ~matched] == -2).all()
    if not low_quality:
        assert torch.equal(matched, best >= high)
    else:
        # every gt that overlaps anything has all its best predictions matched
        highest = quality.max(dim=1).values
        for g in range(num_gt):
            if highest[g] > 0:
                assert matched[quality[g] == highest[g]].all()


def test_input_checks():
    with pytest.raises(ValueError, match="low_threshold \\(0.8\\) must be <= high"):
        Matcher(0.7, 0.8)
    with pytest.raises(TypeError, match="high_threshold"):
        Matcher("0.7", 0.3)
    with pytest.raises(ValueError, match="\\(G, N\\)"):
        Matcher()(torch.zeros(5))
    assert "high_threshold=0.7" in repr(Matcher())


# ----------------------------------------------------------------------------------------
# Labels, and the RoI heads' matcher inside torchvision's RoIHeads
# ----------------------------------------------------------------------------------------


def test_label_anchors_objectness_and_classes():
    matches = torch.tensor([0, -1, 2, -2, 1, -1])
    assert label_anchors(matches).tolist() == [1, 0, 1, -1, 1, 0]
    gt_labels = torch.tensor([3, 1, 7])
    labels = label_anchors(matches, gt_labels)
    assert labels.tolist() == [3, 0, 7, -1, 1, 0]
    assert labels.dtype == torch.int64


def test_label_anchors_for_an_image_without_objects():
    matches = Matcher()(torch.zeros(0, 4))
    assert label_anchors(matches).tolist() == [0, 0, 0, 0]
    assert label_anchors(matches, torch.zeros(0, dtype=torch.int64)).tolist() == [0, 0, 0, 0]


def test_label_anchors_errors():
    matches = torch.tensor([0, -1])
    with pytest.raises(ValueError, match="0 means background"):
        label_anchors(matches, torch.tensor([0]))
    with pytest.raises(TypeError, match="integer class ids"):
        label_anchors(matches, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="1-D"):
        label_anchors(matches[None])


def test_rpn_labels_equal_torchvisions_rpn():
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

    rpn = RegionProposalNetwork(
        AnchorGenerator(),
        RPNHead(1, 9),
        0.7,
        0.3,
        256,
        0.5,
        {"training": 10},
        {"training": 10},
        0.7,
    )
    anchors = [grid_boxes(300, seed=4, cells=40) * 4, grid_boxes(200, seed=5, cells=40) * 4]
    gts = [grid_boxes(3, seed=6, cells=40) * 4, grid_boxes(5, seed=7, cells=40) * 4]
    tv_labels, _ = rpn.assign_targets_to_anchors(anchors, [{"boxes": b} for b in gts])
    for a, g, expected in zip(anchors, gts, tv_labels, strict=True):
        quality = box_iou(g, a)
        if bool((quality.max(dim=1).values > 0).all()):
            assert torch.equal(label_anchors(Matcher()(quality)).float(), expected)


@pytest.mark.parametrize("seed", range(4))
def test_roi_matcher_and_sampler_inside_torchvisions_roi_heads(seed):
    """Matcher(0.5, 0.5, False) and the 512 / 0.25 sampler dropped into torchvision's
    RoIHeads give the same training samples, labels and regression targets."""

    def heads():
        return RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, 0.05, 0.5, 100)

    gen = torch.Generator().manual_seed(seed)
    proposals = [grid_boxes(700, seed, 40) * 8, grid_boxes(400, seed + 1, 40) * 8]
    targets = [
        {
            "boxes": grid_boxes(4, seed + 2, 40) * 8,
            "labels": torch.randint(1, 5, (4,), generator=gen),
        },
        {
            "boxes": grid_boxes(2, seed + 3, 40) * 8,
            "labels": torch.randint(1, 5, (2,), generator=gen),
        },
    ]
    theirs = heads()
    ours = heads()
    ours.proposal_matcher = Matcher(0.5, 0.5, allow_low_quality_matches=False)
    ours.fg_bg_sampler = BalancedPositiveNegativeSampler(512, 0.25)
    torch.manual_seed(seed)
    expected = theirs.select_training_samples([p.clone() for p in proposals], targets)
    torch.manual_seed(seed)
    actual = ours.select_training_samples([p.clone() for p in proposals], targets)
    for a_list, e_list in zip(actual, expected, strict=True):
        for a, e in zip(a_list, e_list, strict=True):
            torch.testing.assert_close(a, e, rtol=0, atol=0)
    # and label_anchors gives the labels torchvision's RoI heads compute
    all_props = [torch.cat([p, t["boxes"]]) for p, t in zip(proposals, targets, strict=True)]
    _, tv_labels = theirs.assign_targets_to_proposals(
        all_props, [t["boxes"] for t in targets], [t["labels"] for t in targets]
    )
    for p, t, e in zip(all_props, targets, tv_labels, strict=True):
        matches = Matcher(0.5, 0.5, False)(box_iou(t["boxes"], p))
        assert not (matches == Matcher.BETWEEN_THRESHOLDS).any()  # nothing is ignored
        assert torch.equal(label_anchors(matches, t["labels"]), e)


# ----------------------------------------------------------------------------------------
# The same on CUDA
# ----------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("seed", range(5))
def test_on_cuda(setting, seed):
    gt = grid_boxes(10, seed, 30)
    preds = grid_boxes(3000, seed + 1, 30)
    quality = box_iou(gt, preds)
    on_cpu = Matcher(*setting)(quality)
    on_gpu = Matcher(*setting)(quality.cuda())
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), on_cpu)
    assert torch.equal(on_gpu.cpu(), reference(quality, Matcher(*setting)))
    if bool((quality.max(dim=1).values > 0).all()):
        assert torch.equal(on_gpu, TvMatcher(*setting)(quality.cuda()))
    assert Matcher(*setting)(torch.zeros(0, 7, device="cuda")).device.type == "cuda"
    labels = label_anchors(on_gpu, torch.arange(1, 11, device="cuda"))
    assert torch.equal(labels.cpu(), label_anchors(on_cpu, torch.arange(1, 11)))
