import json

import numpy as np
import pytest
import torch

from rcnn_steps.detectors.selective_search import (
    MODES,
    PAPER_VOC2007,
    Strategy,
    adjacency,
    as_uint8_image,
    colour_similarity,
    convert_colour,
    fill_similarity,
    hierarchical_grouping,
    labels_at_level,
    opencv_selective_search,
    proposal_quality,
    proposal_recall,
    region_features,
    region_histograms,
    run_strategy,
    selective_search,
    similarity,
    size_similarity,
    texture_similarity,
)
from rcnn_steps.experiments.selective_search import main as ss_main


def two_rectangles() -> tuple[np.ndarray, list[list[int]]]:
    """A grey 64 px image with a red and a blue flat rectangle; their xyxy boxes."""
    image = np.full((64, 64, 3), 128, dtype=np.uint8)
    image[10:30, 8:24] = (220, 30, 30)  # rows 10..29, columns 8..23
    image[34:56, 30:58] = (20, 40, 230)
    return image, [[8, 10, 24, 30], [30, 34, 58, 56]]


@pytest.mark.parametrize("mode", ["single", "fast"])
def test_finds_both_flat_rectangles_exactly(mode):
    image, boxes = two_rectangles()
    proposals = selective_search(image, mode)
    assert proposals.dtype == torch.float32 and proposals.shape[1] == 4
    found = {tuple(b) for b in proposals.int().tolist()}
    for box in boxes:
        assert tuple(box) in found
    assert (0, 0, 64, 64) in found  # the last merge covers the image
    assert len(found) == len(proposals)  # de-duplicated


def test_tensor_and_array_inputs_agree():
    image, _ = two_rectangles()
    tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    assert torch.equal(selective_search(image, "single"), selective_search(tensor, "single"))


def test_similarities_on_hand_made_histograms():
    a = np.array([0.5, 0.5, 0.0, 0.0])
    b = np.array([0.0, 0.25, 0.25, 0.5])
    assert colour_similarity(a, b) == pytest.approx(0.25)
    assert texture_similarity(a, a) == pytest.approx(1.0)
    assert colour_similarity(a, np.array([0, 0, 0.5, 0.5])) == 0.0
    # eq. 3: two regions of 10 and 30 px in a 100 px image
    assert size_similarity(10, 30, 100) == pytest.approx(0.6)
    # eq. 4: boxes 2x5 and 2x5 side by side fill their 4x5 union exactly -> 1
    assert fill_similarity([0, 0, 2, 5], [2, 0, 4, 5], 10, 10, 100) == pytest.approx(1.0)
    # far apart: union 10x5 = 50 px with 20 px filled -> 1 - 30/100
    assert fill_similarity([0, 0, 2, 5], [8, 0, 10, 5], 10, 10, 100) == pytest.approx(0.7)
    # eq. 5 sums the terms picked by the weights
    s = similarity(a, b, a, a, 10, 10, [0, 0, 2, 5], [2, 0, 4, 5], 100, (1, 1, 1, 1))
    assert s == pytest.approx(0.25 + 1.0 + 0.8 + 1.0)
    assert similarity(a, b, a, a, 10, 30, [0, 0, 2, 5], [2, 0, 4, 5], 100, (0, 0, 1, 0)) == (
        pytest.approx(0.6)
    )


def test_histograms_and_adjacency():
    labels = np.array([[0, 0, 1], [0, 2, 1], [3, 3, 3]])
    values = np.zeros((3, 3, 2))
    values[..., 0] = 0.99  # channel 0 in the last bin, channel 1 in the first
    hist = region_histograms(labels, values, bins=5)
    assert hist.shape == (4, 10)
    np.testing.assert_allclose(hist.sum(1), 1.0)
    np.testing.assert_allclose(hist[:, 4], 0.5)
    np.testing.assert_allclose(hist[:, 5], 0.5)
    pairs = adjacency(labels).tolist()
    assert pairs == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]


def test_grouping_makes_n_minus_one_merges_up_to_the_whole_image():
    image, _ = two_rectangles()
    rng = np.random.default_rng(0)
    noisy = np.clip(image + rng.integers(-40, 40, image.shape), 0, 255).astype(np.uint8)
    labels, hierarchy = run_strategy(noisy, Strategy("rgb", 50, "CTSF"))
    n = hierarchy.num_initial
    assert n == labels.max() + 1 and n > 5
    assert hierarchy.merges.shape == (n - 1, 2)
    assert hierarchy.num_regions == 2 * n - 1
    assert hierarchy.boxes[-1].tolist() == [0, 0, 64, 64]
    assert hierarchy.sizes[-1] == 64 * 64
    # every region is merged exactly once, except the last
    assert sorted(hierarchy.merges.ravel().tolist()) == list(range(2 * n - 2))
    assert (labels_at_level(labels, hierarchy, 0) == labels).all()
    assert (labels_at_level(labels, hierarchy, n - 1) == 2 * n - 2).all()
    assert len(np.unique(labels_at_level(labels, hierarchy, n - 3))) == 3


def test_merged_histograms_are_size_weighted_averages():
    labels = np.array([[0, 0, 0, 1]])
    channels = np.array([[[0.1], [0.1], [0.1], [0.9]]])
    features = region_features(labels, channels)
    # with a single pair the merge is forced; its histogram must be the pixels' histogram
    h = hierarchical_grouping(features)
    assert h.merges.tolist() == [[0, 1]]
    assert h.sizes.tolist() == [3, 1, 4]


def test_determinism_given_a_seed():
    image, _ = two_rectangles()
    a = selective_search(image, "fast", seed=3)
    b = selective_search(image, "fast", seed=3)
    c = selective_search(image, "fast", seed=4)
    assert torch.equal(a, b)
    assert {tuple(r) for r in a.tolist()} == {tuple(r) for r in c.tolist()}
    assert selective_search(image, "fast", seed=3, max_proposals=5).shape == (5, 4)


def test_modes_mirror_the_paper():
    assert len(MODES["fast"]) == 8 and len(MODES["quality"]) == 80
    assert {s.colour_space for s in MODES["fast"]} == {"hsv", "lab"}


def test_colour_spaces_are_in_unit_range():
    image, _ = two_rectangles()
    for space, c in [("rgb", 3), ("hsv", 3), ("lab", 3), ("rgi", 3), ("h", 1), ("i", 1)]:
        out = convert_colour(image, space)
        assert out.shape == (64, 64, c)
        assert out.min() >= 0 and out.max() <= 1


def test_recall_on_a_hand_made_case():
    gts = [torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), torch.tensor([[0.0, 0, 4, 4]])]
    proposals = [
        torch.tensor([[50.0, 50, 60, 60], [0, 0, 10, 10], [20, 20, 30, 28]]),  # IoU 0, 1, 0.8
        torch.tensor([[0.0, 0, 4, 3]]),  # IoU 0.75
    ]
    r = proposal_recall(proposals, gts, num_proposals=(1, 2, 3, 10), iou_thresholds=(0.5, 0.9))
    np.testing.assert_allclose(r[0], [1 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(r[1], [0, 1 / 3, 1 / 3, 1 / 3])
    with pytest.raises(ValueError, match="no ground-truth"):
        proposal_recall([torch.zeros(0, 4)], [torch.zeros(0, 4)])
    empty = proposal_recall([torch.zeros(0, 4)], [gts[1]], num_proposals=(10,))
    assert empty.tolist() == [[0.0], [0.0]]


def test_proposal_quality_on_a_hand_made_case():
    """MABO and recall as the paper defines them: per class, then averaged over classes."""
    gts = [torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), torch.tensor([[0.0, 0, 4, 4]])]
    labels = [torch.tensor([1, 2]), torch.tensor([1])]
    proposals = [
        torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 25]]),  # IoU 1 with box 1, 0.5 with 2
        torch.tensor([[0.0, 0, 4, 3]]),  # IoU 0.75
    ]
    q = proposal_quality(proposals, gts, labels)
    # class 1: best overlaps 1 and 0.75 -> ABO 0.875, both found; class 2: 0.5 -> ABO 0.5,
    # not found (PASCAL's criterion is overlap > 0.5)
    assert q["abo_per_class"] == {1: pytest.approx(0.875), 2: pytest.approx(0.5)}
    assert q["recall_per_class"] == {1: 1.0, 2: 0.0}
    assert q["mabo"] == pytest.approx((0.875 + 0.5) / 2)
    assert q["recall@0.5"] == pytest.approx(0.5)
    assert q["num_proposals"] == 1.5 and q["num_gt_boxes"] == 3
    # without labels every box is one class: the mean best overlap of all boxes
    q = proposal_quality(proposals, gts)
    assert q["mabo"] == pytest.approx((1 + 0.5 + 0.75) / 3)
    assert q["recall@0.5"] == pytest.approx(2 / 3)
    # only the first proposal of each image: box 2 is not covered at all
    q = proposal_quality(proposals, gts, labels, max_proposals=1)
    assert q["abo_per_class"][2] == 0.0 and q["mabo"] == pytest.approx(0.875 / 2)
    # an image without proposals gives its boxes an overlap of 0
    q = proposal_quality([torch.zeros(0, 4), proposals[1]], gts, labels)
    assert q["abo_per_class"] == {1: pytest.approx(0.75 / 2), 2: 0.0}
    with pytest.raises(ValueError, match="no ground-truth"):
        proposal_quality([torch.zeros(0, 4)], [torch.zeros(0, 4)])
    with pytest.raises(ValueError, match="2 proposal lists for 1 images"):
        proposal_quality(proposals, gts[:1])
    with pytest.raises(ValueError, match="1 labels for 2 ground-truth boxes"):
        proposal_quality(proposals, gts, [torch.tensor([1]), torch.tensor([1])])


def test_quality_command_writes_mabo_and_recall(tiny_synth, tmp_path, capsys):
    out = tmp_path / "q.json"
    argv = ["quality", "--root", str(tiny_synth), "--num-images", "2", "--out", str(out)]
    assert ss_main([*argv, "--methods", "ours-fast"]) == 0
    results = json.loads(out.read_text())["results"]
    row = results["sets"][tiny_synth.name]["methods"]["ours-fast"]
    assert 0 < row["mabo"] <= 1 and 0 <= row["recall@0.5"] <= 1 and row["num_proposals"] > 0
    assert results["paper_voc2007_test"] == PAPER_VOC2007
    assert "paper, VOC 2007 test" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        ss_main(["quality", "--root", str(tmp_path / "nothing"), "--out", str(out)])
    assert "must be a synthetic set's folder" in capsys.readouterr().err


def test_opencv_boxes_are_converted_to_xyxy():
    image, boxes = two_rectangles()
    props = opencv_selective_search(image, "fast", base_k=50, inc_k=50)
    assert props.shape[1] == 4 and len(props)
    assert (props[:, 2] > props[:, 0]).all() and (props[:, 3] > props[:, 1]).all()
    assert props[:, 2].max() <= 64 and props[:, 3].max() <= 64
    found = {tuple(b) for b in props.int().tolist()}
    assert tuple(boxes[1]) in found


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="empty"):
        selective_search(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        selective_search(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        selective_search(torch.zeros(1, 10, 10))
    with pytest.raises(ValueError, match="mode"):
        selective_search(np.zeros((10, 10, 3), np.uint8), mode="slow")
    with pytest.raises(ValueError, match="colour_space"):
        Strategy("xyz", 50, "CTSF")
    # a flat image is one region: its box is the only proposal
    flat = selective_search(np.full((12, 9, 3), 7, np.uint8), "fast")
    assert flat.tolist() == [[0, 0, 9, 12]]
    assert as_uint8_image(torch.ones(3, 2, 2)).max() == 255
