"""Tests for rcnn_steps.modeling.sampler (chapter 04; RoI heads chapters 04-07).

torchvision's ``BalancedPositiveNegativeSampler`` is the oracle: with the same global seed
it must select exactly the same elements (it makes the same ``torch.randperm`` calls).
Properties: the counts never exceed the limits, the batch is filled with negatives when
positives are few, ignored elements are never selected, and a seeded generator makes the
draw repeat. Last, the chapter's RPN parts (anchors, matcher, sampler) dropped into
torchvision's RegionProposalNetwork give the same losses as torchvision's own.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection._utils import (
    BalancedPositiveNegativeSampler as TvSampler,
)

from rcnn_steps.modeling.matcher import Matcher, label_anchors
from rcnn_steps.modeling.sampler import BalancedPositiveNegativeSampler


def make_labels(num_pos: int, num_neg: int, num_ignored: int, seed: int, classes: int = 1):
    """A shuffled (N,) int64 label tensor with the given counts (positives in 1..classes)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.cat(
        [
            torch.randint(1, classes + 1, (num_pos,), generator=gen),
            torch.zeros(num_neg, dtype=torch.int64),
            torch.full((num_ignored,), -1),
        ]
    )
    return labels[torch.randperm(len(labels), generator=gen)]


def check_masks(labels, pos, neg, batch_size, fraction):
    assert pos.dtype == torch.bool and neg.dtype == torch.bool
    assert pos.shape == labels.shape and neg.shape == labels.shape
    num_pos, num_neg = int((labels >= 1).sum()), int((labels == 0).sum())
    cap = int(batch_size * fraction)
    assert int(pos.sum()) == min(num_pos, cap)
    assert int(neg.sum()) == min(num_neg, batch_size - int(pos.sum()))
    assert (labels[pos] >= 1).all() and (labels[neg] == 0).all()
    assert not (pos & neg).any()
    assert int((pos | neg).sum()) <= batch_size


# ----------------------------------------------------------------------------------------
# Counts
# ----------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(
        st.tuples(st.integers(0, 300), st.integers(0, 600), st.integers(0, 100)),
        min_size=1,
        max_size=3,
    ),
    batch_size=st.sampled_from([0, 1, 7, 64, 256, 512]),
    fraction=st.sampled_from([0.0, 0.25, 0.33, 0.5, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_counts_and_equality_with_torchvision(counts, batch_size, fraction, seed):
    labels = [make_labels(p, n, i, seed + k, classes=3) for k, (p, n, i) in enumerate(counts)]
    torch.manual_seed(seed)
    pos, neg = BalancedPositiveNegativeSampler(batch_size, fraction)(labels)
    torch.manual_seed(seed)
    tv_pos, tv_neg = TvSampler(batch_size, fraction)(labels)
    for lab, p, n, tp, tn in zip(labels, pos, neg, tv_pos, tv_neg, strict=True):
        check_masks(lab, p, n, batch_size, fraction)
        assert torch.equal(p, tp.bool()) and torch.equal(n, tn.bool())


@pytest.mark.parametrize(
    ("batch_size", "fraction", "num_pos", "num_neg", "expected"),
    [
        (256, 0.5, 1000, 1000, (128, 128)),  # RPN, plenty of both
        (256, 0.5, 10, 1000, (10, 246)),  # few positives: the rest are negatives
        (256, 0.5, 1000, 50, (128, 50)),  # few negatives: no padding with positives
        (256, 0.5, 0, 20000, (0, 256)),  # an image without objects
        (512, 0.25, 1000, 5000, (128, 384)),  # RoI heads
        (512, 0.25, 40, 100, (40, 100)),  # fewer elements than the batch
        (5, 0.5, 10, 10, (2, 3)),  # the positive cap rounds down: int(2.5) = 2
    ],
)
def test_counts_by_hand(batch_size, fraction, num_pos, num_neg, expected):
    labels = make_labels(num_pos, num_neg, 30, seed=0)
    pos, neg = BalancedPositiveNegativeSampler(batch_size, fraction)([labels])
    assert (int(pos[0].sum()), int(neg[0].sum())) == expected


def test_defaults_are_the_rpns():
    sampler = BalancedPositiveNegativeSampler()
    assert (sampler.batch_size_per_image, sampler.positive_fraction) == (256, 0.5)
    assert sampler.max_positives == 128
    assert BalancedPositiveNegativeSampler(512, 0.25).max_positives == 128
    assert "batch_size_per_image=256" in repr(sampler)


def test_all_ignored_and_empty():
    pos, neg = BalancedPositiveNegativeSampler()([torch.full((50,), -1), torch.zeros(0)])
    assert not pos[0].any() and not neg[0].any()
    assert pos[1].shape == (0,) and neg[1].shape == (0,)
    assert BalancedPositiveNegativeSampler()([]) == ([], [])


def test_float_labels_and_other_negative_values_are_ignored():
    # the RPN's labels are float; anything below 0 (and fractions in (0, 1)) is ignored
    labels = torch.tensor([1.0, 0.0, -1.0, -2.0, 0.5, 2.0])
    pos, neg = BalancedPositiveNegativeSampler(10, 0.5)([labels])
    assert pos[0].tolist() == [True, False, False, False, False, True]
    assert neg[0].tolist() == [False, True, False, False, False, False]


def test_an_image_without_objects_trains_on_negatives():
    anchors_iou = torch.zeros(0, 1000)  # no ground truth
    labels = label_anchors(Matcher()(anchors_iou))
    pos, neg = BalancedPositiveNegativeSampler(256, 0.5)([labels])
    assert int(pos[0].sum()) == 0 and int(neg[0].sum()) == 256


# ----------------------------------------------------------------------------------------
# Randomness
# ----------------------------------------------------------------------------------------


def test_seeded_generator_repeats_and_leaves_global_state_alone():
    labels = [make_labels(300, 3000, 100, seed=1), make_labels(5, 500, 0, seed=2)]
    sampler = BalancedPositiveNegativeSampler(256, 0.5)
    state = torch.get_rng_state()
    first = sampler(labels, generator=torch.Generator().manual_seed(7))
    second = sampler(labels, generator=torch.Generator().manual_seed(7))
    other = sampler(labels, generator=torch.Generator().manual_seed(8))
    assert torch.equal(torch.get_rng_state(), state)
    for a, b in zip(first, second, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(first[0][0], other[0][0])  # 128 of 300: a collision is ~impossible


def test_generator_given_to_the_constructor():
    labels = [make_labels(300, 3000, 100, seed=1)]
    a = BalancedPositiveNegativeSampler(generator=torch.Generator().manual_seed(3))(labels)
    b = BalancedPositiveNegativeSampler()(labels, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0][0], b[0][0]) and torch.equal(a[1][0], b[1][0])


def test_global_seed_repeats():
    labels = [make_labels(300, 3000, 100, seed=1)]
    torch.manual_seed(11)
    a = BalancedPositiveNegativeSampler()(labels)
    torch.manual_seed(11)
    b = BalancedPositiveNegativeSampler()(labels)
    assert torch.equal(a[0][0], b[0][0]) and torch.equal(a[1][0], b[1][0])


def test_every_positive_is_equally_likely():
    # 1 of 4 positives, 2000 draws: each about 500 times; bounds ~7 standard deviations
    labels = [torch.tensor([1, 1, 1, 1, 0])]
    sampler = BalancedPositiveNegativeSampler(2, 0.5)
    gen = torch.Generator().manual_seed(0)
    hits = torch.zeros(5)
    for _ in range(2000):
        hits += sampler(labels, generator=gen)[0][0].float()
    assert hits[4] == 0 and ((hits[:4] > 350) & (hits[:4] < 650)).all()


def test_input_checks():
    with pytest.raises(ValueError, match="batch_size_per_image"):
        BalancedPositiveNegativeSampler(-1, 0.5)
    with pytest.raises(ValueError, match="batch_size_per_image"):
        BalancedPositiveNegativeSampler(256.0, 0.5)
    with pytest.raises(ValueError, match="positive_fraction"):
        BalancedPositiveNegativeSampler(256, 1.5)
    with pytest.raises(TypeError, match="list of per-image"):
        BalancedPositiveNegativeSampler()(torch.zeros(5))
    with pytest.raises(ValueError, match="1-D"):
        BalancedPositiveNegativeSampler()([torch.zeros(5, 1)])


# ----------------------------------------------------------------------------------------
# The chapter's RPN parts inside torchvision's RegionProposalNetwork
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_rpn_parts_drop_into_torchvisions_rpn(seed):
    """Our anchor generator, matcher and sampler in place of torchvision's: the same
    proposals and the same losses, bit for bit (same seed for the sampling)."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TvAnchorGenerator
    from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

    from rcnn_steps.modeling.anchors import AnchorGenerator
    from rcnn_steps.ops import ImageList

    # RPNHead predicts the same number of anchors on every level: 3 ratios x 1 size
    sizes, ratios = ((16,), (32,)), ((0.5, 1.0, 2.0), (0.5, 1.0, 2.0))
    torch.manual_seed(seed)
    reference_head = RPNHead(4, 3).state_dict()
    images = ImageList.from_tensors([torch.rand(3, 64, 80), torch.rand(3, 50, 64)])
    features = {"p2": torch.randn(2, 4, 16, 20), "p3": torch.randn(2, 4, 8, 10)}
    targets = [
        {"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0], [40.0, 10.0, 70.0, 30.0]])},
        {"boxes": torch.tensor([[10.0, 12.0, 20.0, 20.0]])},
    ]

    def rpn(anchor_generator):
        module = RegionProposalNetwork(
            anchor_generator=anchor_generator,
            head=RPNHead(4, 3),
            fg_iou_thresh=0.7,
            bg_iou_thresh=0.3,
            batch_size_per_image=32,
            positive_fraction=0.5,
            pre_nms_top_n={"training": 50},
            post_nms_top_n={"training": 20},
            nms_thresh=0.7,
        )
        module.head.load_state_dict(reference_head)
        return module.train()

    theirs = rpn(TvAnchorGenerator(sizes, ratios))
    ours = rpn(AnchorGenerator(sizes, ratios))
    ours.proposal_matcher = Matcher(0.7, 0.3, allow_low_quality_matches=True)
    ours.fg_bg_sampler = BalancedPositiveNegativeSampler(32, 0.5)

    torch.manual_seed(seed)
    tv_boxes, tv_losses = theirs(images, features, targets)
    torch.manual_seed(seed)
    our_boxes, our_losses = ours(images, features, targets)
    for a, b in zip(our_boxes, tv_boxes, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert tv_losses["loss_rpn_box_reg"] > 0  # positives were sampled
    for key in tv_losses:
        torch.testing.assert_close(our_losses[key], tv_losses[key], rtol=0, atol=0)


# ----------------------------------------------------------------------------------------
# The same on CUDA
# ----------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda():
    labels = [make_labels(300, 3000, 100, seed=1).cuda(), make_labels(5, 500, 0, seed=2).cuda()]
    sampler = BalancedPositiveNegativeSampler(256, 0.5)
    # a CPU generator for CUDA labels: drawn on the CPU, moved to the labels' device
    pos, neg = sampler(labels, generator=torch.Generator().manual_seed(0))
    cpu_pos, cpu_neg = sampler(
        [lab.cpu() for lab in labels], generator=torch.Generator().manual_seed(0)
    )
    for lab, p, n, cp, cn in zip(labels, pos, neg, cpu_pos, cpu_neg, strict=True):
        assert p.device.type == "cuda"
        check_masks(lab, p, n, 256, 0.5)
        assert torch.equal(p.cpu(), cp) and torch.equal(n.cpu(), cn)
    # the global CUDA generator: the same draws as torchvision's
    torch.manual_seed(5)
    pos, neg = sampler(labels)
    torch.manual_seed(5)
    tv_pos, tv_neg = TvSampler(256, 0.5)(labels)
    for p, n, tp, tn in zip(pos, neg, tv_pos, tv_neg, strict=True):
        assert torch.equal(p, tp.bool()) and torch.equal(n, tn.bool())
