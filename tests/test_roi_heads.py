import pytest
import torch
from torchvision.models.detection import faster_rcnn as tv_faster_rcnn
from torchvision.models.detection import roi_heads as tv_roi_heads

from rcnn_steps.modeling.poolers import RoIPooler
from rcnn_steps.modeling.roi_heads import (
    FastRCNNPredictor,
    RoIHeads,
    TwoMLPHead,
    check_targets,
)

NUM_CLASSES = 4  # background included


def _heads(**kwargs):
    torch.manual_seed(0)
    return RoIHeads(
        RoIPooler("roipool", 7), TwoMLPHead(8 * 49, 32), FastRCNNPredictor(32, NUM_CLASSES),
        **kwargs,
    )  # fmt: skip


def _tv_heads(**kwargs):
    return tv_roi_heads.RoIHeads(
        None, None, None, 0.5, 0.5, kwargs.get("batch_size_per_image", 512), 0.25, None,
        0.05, 0.5, 100,
    )  # fmt: skip


def _proposals(g, n, size=128.0):
    xy = torch.rand(n, 2, generator=g) * size * 0.8
    wh = torch.rand(n, 2, generator=g) * size * 0.4 + 2
    return torch.cat([xy, xy + wh], dim=1)


def test_postprocess_equals_torchvision():
    g = torch.Generator().manual_seed(0)
    proposals = [_proposals(g, 30), _proposals(g, 20)]
    logits = torch.randn(50, NUM_CLASSES, generator=g) * 3
    deltas = torch.randn(50, 4 * NUM_CLASSES, generator=g)
    sizes = [(128, 128), (100, 120)]
    ours = _heads().postprocess_detections(logits, deltas, proposals, sizes)
    theirs = _tv_heads().postprocess_detections(logits, deltas, proposals, sizes)
    for a_list, b_list in zip(ours, theirs, strict=True):
        for a, b in zip(a_list, b_list, strict=True):
            assert a.shape[0] > 0
            torch.testing.assert_close(a, b)


def test_training_samples_equal_torchvision():
    g = torch.Generator().manual_seed(1)
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0], [70.0, 20.0, 110.0, 50.0]]),
         "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[30.0, 40.0, 90.0, 100.0]]), "labels": torch.tensor([2])},
    ]  # fmt: skip
    proposals = [_proposals(g, 200), _proposals(g, 150)]
    heads = _heads(batch_size_per_image=64)  # (seeds torch itself)
    torch.manual_seed(7)
    rois, labels, reg, _ = heads.select_training_samples([p.clone() for p in proposals], targets)
    torch.manual_seed(7)
    tv = _tv_heads(batch_size_per_image=64)
    tv_rois, _, tv_labels, tv_reg = tv.select_training_samples(
        [p.clone() for p in proposals], targets
    )
    for i in range(2):
        torch.testing.assert_close(rois[i], tv_rois[i])
        torch.testing.assert_close(labels[i], tv_labels[i])
        fg = labels[i] > 0  # background targets are unused (torchvision's are arbitrary)
        assert fg.any() and (labels[i] == 0).any()
        torch.testing.assert_close(reg[i][fg], tv_reg[i][fg])


def test_parameter_names_match_torchvision():
    ours = _heads()
    assert set(ours.box_head.state_dict()) == set(
        tv_faster_rcnn.TwoMLPHead(8 * 49, 32).state_dict()
    )
    tv_pred = tv_faster_rcnn.FastRCNNPredictor(32, NUM_CLASSES)
    ours.box_predictor.load_state_dict(tv_pred.state_dict())
    x = torch.randn(5, 32)
    for a, b in zip(ours.box_predictor(x), tv_pred(x), strict=True):
        torch.testing.assert_close(a, b)


def test_forward_train_and_eval_with_intermediates():
    heads = _heads(batch_size_per_image=16)
    g = torch.Generator().manual_seed(2)
    feature = torch.randn(2, 8, 8, 8)
    proposals = [_proposals(g, 40), torch.zeros(0, 4)]
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    heads.train()
    inter = {}
    dets, losses = heads(feature, proposals, [(128, 128)] * 2, (128, 128), targets, inter)
    assert dets == [] and set(losses) == {"loss_classifier", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    r = sum(len(x) for x in inter["sampled_rois"])
    assert inter["pooled_features"].shape == (r, 8, 7, 7)
    assert len(inter["sampled_rois"][1]) == 0  # no proposals, no objects: nothing to sample
    heads.eval()
    dets, losses = heads(feature, proposals, [(128, 128)] * 2, (128, 128))
    assert losses == {} and len(dets) == 2 and dets[1]["boxes"].shape == (0, 4)
    assert set(dets[0]) == {"boxes", "labels", "scores"}
    with pytest.raises(ValueError, match="targets are required"):
        heads.train()(feature, proposals, [(128, 128)] * 2, (128, 128))


def test_fast_rcnn_background_range():
    heads = _heads(bg_iou_low=0.1)
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 20.0, 20.0]]), "labels": torch.tensor([1])}]
    far = torch.tensor([[100.0, 100.0, 120.0, 120.0], [5.0, 5.0, 30.0, 30.0]])
    _, labels, _, _ = heads.select_training_samples([far], targets)
    # The far box (IoU 0) is neither foreground nor background; the near one is background.
    assert sorted(labels[0].tolist()) == [0, 1]


def test_pooler_repr_shows_every_setting():
    text = repr(RoIPooler("roialign_avg", 7, 2, aligned=True))
    assert "roi_op='roialign_avg'" in text and "aligned=True" in text
    assert "aligned=False" in repr(RoIPooler("roipool", 7))


def _one_box_target(box, label=1):
    return {"boxes": torch.tensor([box]), "labels": torch.tensor([label])}


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_check_targets_rejects_non_finite_boxes(bad):
    targets = [_one_box_target([0.0, 0.0, 10.0, 10.0]), _one_box_target([2.0, bad, 9.0, 9.0])]
    with pytest.raises(ValueError, match=r"targets\[1\]\['boxes'\]\[0\] = .* is not finite"):
        check_targets(targets)


def test_check_targets_rejects_labels_above_num_classes():
    targets = [_one_box_target([0.0, 0.0, 10.0, 10.0], label=7)]
    check_targets(targets)  # without num_classes only labels >= 1 are checked
    check_targets(targets, num_classes=7)
    with pytest.raises(ValueError, match=r"has label 7, but the model has num_classes = 6"):
        check_targets(targets, num_classes=6)


def test_detectors_check_labels_against_their_num_classes_before_the_forward_pass():
    # a label above num_classes used to index past the classifier (a bare IndexError on
    # CPU, a device-side assert on CUDA); both detectors now stop before any compute
    from rcnn_steps.detectors.fast_rcnn import FastRCNN
    from rcnn_steps.detectors.faster_rcnn import DetectorConfig, FasterRCNN

    torch.manual_seed(0)
    config = DetectorConfig.ci()
    images = [torch.rand(3, 64, 64)]
    targets = [_one_box_target([8.0, 8.0, 40.0, 40.0], label=config.num_classes + 1)]
    match = f"has label {config.num_classes + 1}, but the model has num_classes"
    with pytest.raises(ValueError, match=match):
        FasterRCNN(config)(images, targets)
    with pytest.raises(ValueError, match=match):
        FastRCNN(config)(images, [torch.tensor([[0.0, 0.0, 30.0, 30.0]])], targets)
    nan_targets = [_one_box_target([8.0, float("nan"), 40.0, 40.0])]
    with pytest.raises(ValueError, match="is not finite"):
        FasterRCNN(config)(images, nan_targets)
