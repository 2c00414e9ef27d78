import math

import pytest
import torch
from torchvision.models.detection import keypoint_rcnn as tv_keypoint_rcnn
from torchvision.models.detection import roi_heads as tv

from rcnn_steps.modeling.keypoint_head import (
    KeypointBranch,
    KeypointRCNNHeads,
    KeypointRCNNPredictor,
    heatmap_entropy,
    heatmaps_to_keypoints,
    keypoint_channel_table,
    keypoint_counts_of,
    keypointrcnn_inference,
    keypointrcnn_loss,
    keypoints_to_heatmap,
)
from rcnn_steps.modeling.poolers import RoIPooler


def _edge_case_keypoints():
    rois = torch.tensor([[10.0, 20.0, 40.0, 50.0], [0.0, 0.0, 7.5, 3.25], [5.0, 5.0, 5.6, 5.3]])
    kps = torch.tensor(
        [
            [[40.0, 30.0, 2], [25.0, 50.0, 2], [40.0, 50.0, 1], [10.0, 20.0, 2],
             [41.0, 30.0, 2], [9.9, 30.0, 2], [20.0, 30.0, 0], [39.99, 49.99, 2]],
            [[7.5, 3.25, 2], [0.0, 0.0, 2], [3.0, 1.0, 1], [8.0, 1.0, 2],
             [3.0, -0.1, 2], [1.0, 1.0, 0], [7.4, 3.2, 2], [2.0, 2.0, 2]],
            [[5.3, 5.1, 2], [5.6, 5.3, 2], [5.0, 5.0, 2], [6.0, 5.1, 2],
             [5.1, 5.29, 1], [5.59, 5.0, 2], [4.99, 5.1, 2], [5.2, 5.2, 0]],
        ]
    )  # fmt: skip
    # right/bottom edges exactly, outside by a little, invisible (v = 0), sub-pixel RoI
    return kps, rois


def test_keypoints_to_heatmap_equals_torchvision_on_edge_cases():
    kps, rois = _edge_case_keypoints()
    for size in (56, 7):
        ours = keypoints_to_heatmap(kps, rois, size)
        theirs = tv.keypoints_to_heatmap(kps, rois, size)
        for a, b in zip(ours, theirs, strict=True):
            assert torch.equal(a, b)
    heat, valid = keypoints_to_heatmap(kps, rois, 56)
    assert heat[0, 0] == 18 * 56 + 55  # x on the right edge: last column, not one past it
    assert heat[0, 2] == 55 * 56 + 55  # bottom-right corner
    assert valid[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 1]  # outside and invisible: no target
    assert (heat * (1 - valid) == 0).all()


def test_loss_equals_torchvision_and_counts_only_labelled_keypoints():
    g = torch.Generator().manual_seed(0)
    kps, rois = _edge_case_keypoints()
    logits = torch.randn(5, 8, 14, 14, generator=g, requires_grad=True)
    proposals = [rois, rois[:2]]
    gt = [kps, kps[:2] + 0.5]
    matched = [torch.tensor([0, 1, 2]), torch.tensor([1, 0])]
    ours = keypointrcnn_loss(logits, proposals, gt, matched)
    torch.testing.assert_close(ours, tv.keypointrcnn_loss(logits, proposals, gt, matched))
    (grad,) = torch.autograd.grad(ours, logits)
    _, valid = keypoints_to_heatmap(kps, rois, 14)
    assert torch.equal(grad[:3].abs().sum(dim=(2, 3)) > 0, valid.bool())
    empty = keypointrcnn_loss(logits[:0], [rois[:0]], [kps], [torch.zeros(0, dtype=torch.long)])
    assert empty.item() == 0 and empty.requires_grad
    invisible = kps.clone()
    invisible[..., 2] = 0
    assert keypointrcnn_loss(logits[:3], [rois], [invisible], [matched[0]]).item() == 0


def test_heatmaps_to_keypoints_and_inference_equal_torchvision():
    g = torch.Generator().manual_seed(1)
    _, rois = _edge_case_keypoints()
    maps = torch.randn(3, 8, 56, 56, generator=g)
    ours = heatmaps_to_keypoints(maps, rois)
    theirs = tv.heatmaps_to_keypoints(maps, rois)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)
    boxes = [rois[:1], rois[1:]]
    ours, theirs = keypointrcnn_inference(maps, boxes), tv.keypointrcnn_inference(maps, boxes)
    for a, b in zip(ours, theirs, strict=True):
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y)
    kp, sc = heatmaps_to_keypoints(maps[:0], rois[:0])
    assert kp.shape == (0, 8, 3) and sc.shape == (0, 8)


def test_a_one_hot_heatmap_decodes_to_its_keypoint():
    rois = torch.tensor([[8.0, 16.0, 64.0, 72.0]])  # 56 x 56 px: one heatmap cell a pixel
    kps = torch.tensor([[[20.5, 30.5, 2.0], [63.5, 16.5, 2.0]]])
    heat, valid = keypoints_to_heatmap(kps, rois, 56)
    maps = torch.full((1, 2, 56, 56), -10.0)
    maps.view(1, 2, -1)[0, torch.arange(2), heat[0]] = 10.0
    decoded, _ = heatmaps_to_keypoints(maps, rois)
    torch.testing.assert_close(decoded[0, :, :2], kps[0, :, :2])


def test_heads_load_torchvision_weights_and_agree():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 14, 14)
    theirs = tv_keypoint_rcnn.KeypointRCNNHeads(16, [8] * 3)
    ours = KeypointRCNNHeads(16, (8,) * 3)
    ours.load_state_dict(theirs.state_dict())
    tv_pred = tv_keypoint_rcnn.KeypointRCNNPredictor(8, 11)
    pred = KeypointRCNNPredictor(8, 11)
    pred.load_state_dict(tv_pred.state_dict())
    out = pred(ours(x))
    assert out.shape == (2, 11, 56, 56)
    torch.testing.assert_close(out, tv_pred(theirs(x)))


def test_keypoint_sets_per_class():
    categories = [
        {"id": 3, "name": "cat", "keypoints": ["nose", "tail"]},
        {"id": 1, "name": "box"},
        {"id": 7, "name": "person", "keypoints": list("abcde")},
    ]
    counts = keypoint_counts_of(categories)
    assert counts == (0, 2, 5)  # in the order of the category ids: box, cat, person
    table = keypoint_channel_table(counts)
    assert table.tolist() == [[-1] * 5, [-1] * 5, [0, 1, -1, -1, -1], [2, 3, 4, 5, 6]]


def _branch(counts=(0, 2, 5)):
    torch.manual_seed(0)
    return KeypointBranch(
        RoIPooler("roialign_avg", 14),
        KeypointRCNNHeads(4, (8,)),
        KeypointRCNNPredictor(8, sum(counts)),
        counts,
    )


def test_branch_with_two_keypoint_sets_trains_and_predicts():
    branch = _branch()
    feature = torch.randn(1, 4, 16, 16)
    rois = [torch.tensor([[4.0, 4.0, 40.0, 30.0], [10.0, 12.0, 50.0, 60.0]])]
    labels = torch.tensor([2, 3])  # a cat (2 keypoints) and a person (5)
    kps = torch.zeros(2, 5, 3)
    kps[0, :2] = torch.tensor([[10.0, 10.0, 2], [30.0, 20.0, 2]])
    kps[0, 2:] = torch.tensor([20.0, 20.0, 2])  # junk past the cat's two: must not count
    kps[1] = torch.tensor([[20.0, 30.0, 2]] * 5)
    targets = [{"boxes": rois[0], "labels": labels, "keypoints": kps}]
    logits = branch(feature, rois, (64, 64))
    assert logits.shape == (2, 7, 56, 56)
    selected = branch.select(logits, labels)
    assert selected.shape == (2, 5, 56, 56)
    torch.testing.assert_close(selected[0, :2], logits[0, :2])
    torch.testing.assert_close(selected[1], logits[1, 2:])
    loss = branch.loss(logits, labels, rois, [torch.tensor([0, 1])], targets)
    clean = kps.clone()
    clean[0, 2:, 2] = 0
    expected = keypointrcnn_loss(selected, rois, [clean], [torch.tensor([0, 1])])
    torch.testing.assert_close(loss, expected)
    # loss_weight scales the loss (and so its gradient) and nothing else
    branch.loss_weight = 0.1
    weighted = branch.loss(logits, labels, rois, [torch.tensor([0, 1])], targets)
    torch.testing.assert_close(weighted, 0.1 * expected)
    branch.loss_weight = 1.0
    # narrower keypoint arrays are padded; a missing one is a clear error
    targets[0]["keypoints"] = kps[:, :3]
    branch.loss(logits, labels, rois, [torch.tensor([0, 1])], targets)
    with pytest.raises(ValueError, match=r"targets\[0\]\['keypoints'\].*keypoints=False"):
        branch.loss(logits, labels, rois, [torch.tensor([0, 1])], [{"boxes": rois[0]}])
    # prediction: keypoints for keypoint classes, zeros past a class's count and elsewhere
    detections = [{"boxes": torch.cat([rois[0], rois[0][:1]]), "labels": torch.tensor([2, 3, 1])}]
    has = branch.has_keypoints(detections[0]["labels"])
    assert has.tolist() == [True, True, False]
    maps = branch.predict(logits, detections, has)
    assert maps.shape == (2, 5, 56, 56)
    kp = detections[0]["keypoints"]
    assert kp.shape == (3, 5, 3) and detections[0]["keypoints_scores"].shape == (3, 5)
    assert (kp[0, 2:] == 0).all() and (kp[2] == 0).all() and (kp[1, :, 2] == 1).all()


def test_branch_rejects_inconsistent_sets():
    with pytest.raises(ValueError, match="at least one class with keypoints"):
        KeypointBranch(RoIPooler(), KeypointRCNNHeads(4, (8,)), KeypointRCNNPredictor(8, 1), (0, 0))
    with pytest.raises(ValueError, match="need sum"):
        KeypointBranch(RoIPooler(), KeypointRCNNHeads(4, (8,)), KeypointRCNNPredictor(8, 3), (2, 2))
    with pytest.raises(ValueError, match="loss_weight must be > 0"):
        KeypointBranch(
            RoIPooler(),
            KeypointRCNNHeads(4, (8,)),
            KeypointRCNNPredictor(8, 2),
            (2,),
            loss_weight=0,
        )


def test_config_keypoint_loss_weight_reaches_the_branch():
    from rcnn_steps.detectors.faster_rcnn import DetectorConfig, FasterRCNN

    model = FasterRCNN(DetectorConfig.ci_mask(keypoint_loss_weight=0.1))
    assert model.roi_heads.keypoint_branch.loss_weight == 0.1
    assert "loss_weight=0.1" in repr(model.roi_heads.keypoint_branch)
    with pytest.raises(ValueError, match="keypoint_loss_weight must be > 0.*keypoints=False"):
        DetectorConfig.ci_mask(keypoint_loss_weight=0.0)


def test_heatmap_entropy_is_log_cells_when_flat_and_zero_when_one_hot():
    m = 56
    flat = torch.full((2, 3, m, m), 1.7)  # any constant: the softmax is uniform
    torch.testing.assert_close(heatmap_entropy(flat), torch.full((2, 3), math.log(m * m)))
    one_hot = torch.full((1, 2, m, m), float("-inf"))
    one_hot[0, 0, 5, 7] = one_hot[0, 1, 55, 0] = 0.0
    assert heatmap_entropy(one_hot).tolist() == [[0.0, 0.0]]  # no nan from 0 * log 0
    peaked = torch.zeros(1, 1, m, m)
    peaked[0, 0, 10, 10] = 40.0  # finite, but all the mass on one cell
    assert heatmap_entropy(peaked).item() < 1e-6
    # spread evenly over n cells: log n; in between, the entropy of the distribution
    four = torch.full((1, 1, 8, 8), float("-inf"))
    four[0, 0, :2, :2] = 3.0
    torch.testing.assert_close(heatmap_entropy(four), torch.tensor([[math.log(4)]]))
    logits = torch.randn(4, 11, 14, 14, generator=torch.Generator().manual_seed(0))
    expected = torch.distributions.Categorical(logits=logits.flatten(-2)).entropy()
    torch.testing.assert_close(heatmap_entropy(logits), expected)
    assert (heatmap_entropy(logits) < math.log(14 * 14)).all()


def test_heatmap_entropy_rejects_what_is_not_logits():
    with pytest.raises(ValueError, match="float logits"):
        heatmap_entropy(torch.zeros(3, dtype=torch.float32))
    with pytest.raises(ValueError, match="float logits"):
        heatmap_entropy(torch.zeros(1, 2, 4, 4, dtype=torch.int64))
