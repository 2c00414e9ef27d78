from dataclasses import replace

import numpy as np
import pytest
import torch

from rcnn_steps.data.proposals import load_proposals, make_proposals
from rcnn_steps.detectors.rcnn import (
    RCNN_BOX_CODER_WEIGHTS,
    RCNNNet,
    WindowBatches,
    context_padding,
    detect,
    dilated_boxes,
    label_proposals,
    rcnn_loss,
    regression_targets,
    training_windows,
    warp_boxes,
    warp_boxes_batched,
)
from rcnn_steps.experiments.rcnn import PRESETS, RCNNConfig, preset_config, train_rcnn
from rcnn_steps.ops import BoxCoder


def test_context_padding_scales_the_papers_16_at_227():
    assert context_padding(227) == 16
    assert context_padding(32) == pytest.approx(16 * 32 / 227)


def test_dilation_geometry_on_a_known_box():
    # a 20 x 10 box warped to 32 px with 4 px of context: the box fills 24 px, so 4 crop
    # pixels are 4 * 20 / 24 image pixels horizontally and 4 * 10 / 24 vertically
    region = dilated_boxes(torch.tensor([[10.0, 20.0, 30.0, 30.0]]), 32, 4.0)
    expected = [10 - 80 / 24, 20 - 40 / 24, 30 + 80 / 24, 30 + 40 / 24]
    np.testing.assert_allclose(region[0].tolist(), expected, rtol=1e-6)
    assert dilated_boxes(torch.tensor([[1.0, 2, 3, 4]]), 32, 0.0).tolist() == [[1, 2, 3, 4]]
    with pytest.raises(ValueError, match="padding"):
        dilated_boxes(torch.tensor([[1.0, 2, 3, 4]]), 8, 4.0)


def test_warp_shapes_and_the_box_lands_inside_the_padding():
    image = torch.zeros(3, 64, 64)
    image[:, 16:48, 16:48] = 1.0  # a white 32 px square, box (16, 16, 48, 48)
    crops = warp_boxes(image, torch.tensor([[16.0, 16, 48, 48], [0, 0, 64, 64]]), 32, 4.0)
    assert crops.shape == (2, 3, 32, 32)
    # the box fills crop pixels 4..27: white there, context (black) in the 4 px border
    assert torch.allclose(crops[0, :, 4:28, 4:28], torch.ones(3, 24, 24))
    assert torch.allclose(crops[0, :, :, :4], torch.zeros(3, 32, 4), atol=1e-6)
    assert warp_boxes(image, torch.zeros(0, 4), 16).shape == (0, 3, 16, 16)


def test_warp_fills_outside_the_image_with_the_image_mean():
    image = torch.rand(3, 40, 50)
    crops = warp_boxes(image, torch.tensor([[0.0, 0, 10, 10], [40, 30, 50, 40]]), 32)
    mean = image.mean((1, 2))
    # the top-left crop pixel lies outside the image for the corner box
    assert torch.allclose(crops[0, :, 0, 0], mean, atol=1e-6)
    assert torch.allclose(crops[1, :, -1, -1], mean, atol=1e-6)
    # pixels inside stay image values (the crop's centre sits inside the box)
    assert crops[0].min() >= 0 and crops[0].max() <= 1


def test_batched_warp_equals_one_image_at_a_time():
    images = torch.rand(3, 3, 40, 50)
    index = torch.tensor([2, 0, 2, 1])
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 45, 38], [30, 20, 50, 40], [1, 2, 3, 4]])
    batched = warp_boxes_batched(images, index, boxes, 16)
    for k in range(4):
        one = warp_boxes(images[index[k]], boxes[k : k + 1], 16)
        torch.testing.assert_close(batched[k : k + 1], one, atol=1e-5, rtol=0)


def test_label_proposals_thresholds_and_classes():
    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]])
    gt_labels = torch.tensor([3, 5])
    props = torch.tensor(
        [
            [0.0, 0, 10, 10],  # IoU 1 with gt 0
            [0, 0, 10, 5],  # IoU 0.5 -> positive (>= 0.5)
            [0, 0, 10, 4],  # IoU 0.4 -> background
            [20, 20, 40, 35],  # IoU 0.75 with gt 1
            [60, 60, 70, 70],  # nothing
        ]
    )
    labels, matched, iou = label_proposals(props, gt, gt_labels)
    assert labels.tolist() == [3, 3, 0, 5, 0]
    np.testing.assert_allclose(iou.tolist(), [1, 0.5, 0.4, 0.75, 0], atol=1e-6)
    assert matched[3].tolist() == [20, 20, 40, 40]
    labels, _, iou = label_proposals(props, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    assert labels.tolist() == [0] * 5 and iou.sum() == 0


def test_regression_targets_round_trip_through_the_box_coder():
    coder = BoxCoder(RCNN_BOX_CODER_WEIGHTS)
    props = torch.tensor([[0.0, 0, 10, 10], [21, 19, 41, 38], [0, 0, 10, 4]])
    gt = torch.tensor([[1.0, 1, 11, 12], [20, 20, 40, 40], [0, 0, 10, 10]])
    iou = torch.tensor([0.7, 0.8, 0.4])
    targets, valid = regression_targets(props, gt, iou, coder)
    assert valid.tolist() == [True, True, False]
    assert targets[2].abs().sum() == 0
    decoded = coder.decode(targets[:2], props[:2])
    torch.testing.assert_close(decoded, gt[:2], atol=1e-4, rtol=0)


def test_loss_and_network_shapes():
    model = RCNNNet(num_classes=4, crop_size=16, width=4)
    logits, deltas = model(torch.rand(5, 3, 16, 16))
    assert logits.shape == (5, 5) and deltas.shape == (5, 16)
    labels = torch.tensor([0, 1, 2, 0, 4])
    losses = rcnn_loss(model, (torch.rand(5, 3, 16, 16), labels, torch.zeros(5, 4), labels > 0))
    assert set(losses) == {"loss_cls", "loss_box"} and all(v.isfinite() for v in losses.values())
    with pytest.raises(ValueError, match="multiple of 8"):
        RCNNNet(4, crop_size=20)


def test_detect_returns_well_formed_outputs():
    torch.manual_seed(0)
    model = RCNNNet(num_classes=3, crop_size=16, width=4)
    coder = BoxCoder(RCNN_BOX_CODER_WEIGHTS)
    image = torch.rand(3, 48, 40)
    props = torch.tensor([[0.0, 0, 20, 20], [10, 10, 40, 48], [5, 5, 15, 30]])
    det = detect(model, image, props, coder, crop_size=16, score_threshold=0.0)
    n = len(det["boxes"])
    assert 0 < n <= 9 and det["boxes"].shape == (n, 4)
    assert det["scores"].shape == (n,) and (det["scores"][:-1] >= det["scores"][1:]).all()
    assert det["labels"].min() >= 1 and det["labels"].max() <= 3
    assert det["boxes"][:, 2].max() <= 40 and det["boxes"][:, 3].max() <= 48
    empty = detect(model, image, torch.zeros(0, 4), coder, crop_size=16)
    assert empty["boxes"].shape == (0, 4) and empty["labels"].dtype == torch.int64
    with pytest.raises(ValueError, match="proposals"):
        detect(model, image, torch.zeros(4), coder)
    with pytest.raises(ValueError, match="image"):
        detect(model, torch.rand(48, 40), props, coder)


def test_bad_input_to_warp():
    with pytest.raises(ValueError, match="empty"):
        warp_boxes(torch.zeros(3, 0, 5), torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        warp_boxes(torch.zeros(3, 5, 5), torch.zeros(4))
    with pytest.raises(FileNotFoundError, match="python -m rcnn_steps.rcnn proposals"):
        load_proposals("/nonexistent/proposals.npz")


def test_tiny_end_to_end(tiny_synth, tmp_path):
    from rcnn_steps.data import CocoDataset

    train = CocoDataset(tiny_synth / "train", tiny_synth / "annotations" / "instances_train.json")
    path = tmp_path / "props.npz"
    info = make_proposals(train, 4, path, mode="single", max_proposals=50)
    assert info["num_images"] == 4
    props = load_proposals(path, train)
    assert set(props) == set(train.image_ids[:4])
    val = CocoDataset(tiny_synth / "val", tiny_synth / "annotations" / "instances_val.json")
    with pytest.raises(ValueError, match="made from other data"):
        load_proposals(path, val)
    assert all(p.shape[1] == 4 and len(p) <= 50 for p in props.values())
    windows = training_windows(train, props, train.image_ids[:4], BoxCoder(RCNN_BOX_CODER_WEIGHTS))
    batches = WindowBatches(windows, num_batches=2, batch_size=8, crop_size=16)
    crops, labels, targets, valid = batches[0]
    assert crops.shape == (8, 3, 16, 16) and (labels[:2] > 0).all() and (labels[2:] == 0).all()
    assert torch.equal(batches[1][0], batches[1][0])  # the same batch every time
    config = RCNNConfig(num_train_images=4, max_iter=3, batch_size=8, crop_size=16, width=4)
    model, result = train_rcnn(train, props, config, device="cpu")
    assert result.step == 3
    image = train.load_image(train.image_ids[0])
    det = detect(model, image, props[train.image_ids[0]], BoxCoder(RCNN_BOX_CODER_WEIGHTS), 16)
    assert det["boxes"].shape[1] == 4 and len(det["scores"]) == len(det["labels"])


def test_preset_config_changes_only_the_crop_size():
    assert preset_config("cpu") is PRESETS["cpu"] and preset_config("cpu", 32) is PRESETS["cpu"]
    small = preset_config("cpu", 16)
    assert small.crop_size == 16 and small == replace(PRESETS["cpu"], crop_size=16)
    assert PRESETS["cpu"].crop_size == 32  # the preset itself is untouched
    for bad in (12, 0, -8):
        with pytest.raises(ValueError, match="multiple of 8"):
            preset_config("cpu", bad)
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("gpu")


def test_evaluate_command_refuses_a_changed_crop_without_its_own_file(capsys):
    from rcnn_steps.experiments.rcnn import main

    # both fail at parsing, before any proposal or image is read
    with pytest.raises(SystemExit):
        main(["evaluate", "--crop-size", "16"])
    assert "name the results file with --out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--crop-size", "12", "--out", "x.json"])
    assert "multiple of 8" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_detect_on_cuda():
    model = RCNNNet(num_classes=3, crop_size=16, width=4).to("cuda")
    image = torch.rand(3, 48, 40, device="cuda")
    props = torch.tensor([[0.0, 0, 20, 20], [10, 10, 40, 48]], device="cuda")
    det = detect(model, image, props, BoxCoder(RCNN_BOX_CODER_WEIGHTS), 16, score_threshold=0.0)
    assert det["boxes"].device.type == "cuda"
