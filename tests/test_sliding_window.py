"""Tests for chapter 01's sliding-window detector (rcnn_steps.detectors.sliding_window)."""

import math

import pytest
import torch

from rcnn_steps.data import CocoDataset
from rcnn_steps.detectors import sliding_window as sw
from rcnn_steps.experiments.sliding_window import Preset, evaluate_detector, train_sliding_window
from rcnn_steps.ops import box_iou


@pytest.fixture(scope="module")
def tiny(tiny_synth):
    """(train, val) of the shared tiny synthetic set: 24 + 8 images of 64 px."""
    ann = tiny_synth / "annotations"
    return (
        CocoDataset(tiny_synth / "train", ann / "instances_train.json"),
        CocoDataset(tiny_synth / "val", ann / "instances_val.json"),
    )


def _random_model(seed=0, num_classes=6):
    """An untrained classifier with non-trivial batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = sw.CropClassifier(num_classes)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def test_window_grids_counts_and_shapes():
    config = sw.WindowConfig(sizes=(8, 16, 32), ratios=(1.0, 3.0, 1 / 3))
    grids = sw.window_grids((128, 128), config)
    assert len(grids) == 9
    square8 = grids[0]
    assert square8.resized == (512, 512) and square8.grid == (61, 61)  # (512 - 32) / 8 + 1
    boxes, index = sw.sliding_windows((128, 128), config)
    assert boxes.shape == (sum(g.num_windows for g in grids), 4)
    assert index.shape == (len(boxes),) and int(index.max()) == len(grids) - 1
    counts = sw.count_windows((128, 128), config)
    assert counts["total"] == len(boxes) and counts["grids"] == 9
    assert sum(counts["per_ratio"].values()) == len(boxes)
    # every window lies inside the image and has (about) its nominal shape
    assert boxes.min() >= 0 and boxes.max() <= 128 + 1e-4
    for g, b in zip(grids, [boxes[index == k] for k in range(len(grids))], strict=True):
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        assert torch.allclose(w, torch.full_like(w, g.width), rtol=0.02)
        assert torch.allclose(h, torch.full_like(h, g.height), rtol=0.02)


def test_windows_larger_than_the_image_are_skipped():
    config = sw.WindowConfig(sizes=(8, 100), ratios=(1.0, 3.0))
    grids = sw.window_grids((64, 64), config)
    assert [(g.size, g.ratio) for g in grids] == [(8.0, 1.0), (8.0, 3.0)]
    with pytest.raises(ValueError, match="fits in a 16x16 image"):
        sw.window_grids((16, 16), sw.WindowConfig(sizes=(20,)))
    with pytest.raises(ValueError, match="sizes must be positive"):
        sw.WindowConfig(sizes=(0,))


def test_grid_boxes_map_positions_back_to_windows():
    grid = sw.window_grids((128, 96), sw.WindowConfig(sizes=(16,), ratios=(1.0,)))[0]
    (fy, fx), (ny, nx) = grid.scale, grid.grid
    assert (fy, fx) == (2.0, 2.0) and (ny, nx) == (29, 21)
    boxes = sw.grid_boxes(grid).reshape(ny, nx, 4)
    assert boxes[0, 0].tolist() == [0.0, 0.0, 16.0, 16.0]
    assert boxes[2, 3].tolist() == [3 * 4.0, 2 * 4.0, 3 * 4.0 + 16, 2 * 4.0 + 16]  # stride 8/2
    assert boxes[-1, -1, 2] <= 96 and boxes[-1, -1, 3] <= 128


def test_fully_convolutional_conversion_is_exact():
    model = _random_model()
    dense = sw.to_fully_convolutional(model)
    x = torch.rand(5, 4, 32, 32)
    logits, deltas = model.predict(x)
    dense_logits, dense_deltas = dense(x)
    assert dense_logits.shape == (5, 7, 1, 1) and dense_deltas.shape == (5, 24, 1, 1)
    torch.testing.assert_close(dense_logits[:, :, 0, 0], logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dense_deltas[:, :, 0, 0], deltas, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="inputs"):
        sw.linear_to_conv(torch.nn.Linear(10, 3), in_channels=4, kernel_size=2)


def test_dense_scores_equal_per_window_scores():
    model = _random_model(1)
    torch.manual_seed(0)
    image = torch.rand(3, 70, 90)  # not a multiple of anything
    config = sw.WindowConfig(sizes=(12, 30), ratios=(1.0, 3.0, 1 / 3))
    boxes_n, logits_n, deltas_n = sw.classify_windows_naive(model, image, config)
    boxes_d, logits_d, deltas_d = sw.classify_windows_dense(
        sw.to_fully_convolutional(model), image, config
    )
    assert len(boxes_n) == sw.count_windows(image.shape[1:], config)["total"]
    torch.testing.assert_close(boxes_d, boxes_n)
    torch.testing.assert_close(logits_d, logits_n, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(deltas_d, deltas_n, atol=1e-4, rtol=1e-4)


def test_crop_dataset_labels_and_balance(tiny):
    train, _ = tiny
    crops = sw.make_crops(train, per_class=4, background_ratio=2.0, seed=1)
    assert crops.images.shape[1:] == (4, 32, 32)
    counts = crops.counts()
    assert counts["__background__"] == 8
    assert all(v == 4 for k, v in counts.items() if k != "__background__")
    # background crops really have IoU < 0.3 with every object of their image
    index = {i: k for k, i in enumerate(train.image_ids)}
    for box, label, image_id, gt, iou in zip(
        crops.boxes, crops.labels, crops.image_ids, crops.gt_boxes, crops.ious, strict=True
    ):
        target = train[index[int(image_id)]][1]
        ious = box_iou(box[None], target["boxes"])[0]
        if label == 0:
            assert len(ious) == 0 or ious.max() < 0.3
        else:
            assert ious.max() >= 0.5 and math.isclose(float(iou), float(ious.max()), rel_tol=1e-5)
            k = int(ious.argmax())
            assert int(target["labels"][k]) == int(label)
            torch.testing.assert_close(gt, target["boxes"][k])
    # the shape channel holds the crop's aspect ratio; deltas decode back onto the object
    w, h = crops.boxes[:, 2] - crops.boxes[:, 0], crops.boxes[:, 3] - crops.boxes[:, 1]
    torch.testing.assert_close(crops.images[:, 3, 0, 0], sw.shape_channel_value(w, h))
    pos = crops.labels > 0
    decoded = sw._box_coder().decode(crops.deltas[pos], crops.boxes[pos])
    torch.testing.assert_close(decoded, crops.gt_boxes[pos], atol=1e-3, rtol=1e-4)
    again = sw.make_crops(train, per_class=4, background_ratio=2.0, seed=1)
    assert torch.equal(again.images, crops.images) and torch.equal(again.boxes, crops.boxes)


def test_training_and_end_to_end_detection(tiny):
    train, val = tiny
    preset = Preset("test", 24, 4, 2.0, 6, 8, 0.01, 4, 2, 1)
    run = train_sliding_window(train, preset, seed=0)
    assert run.classifier.step == 6 and math.isfinite(run.classifier.losses["total_loss"])
    assert run.regressor.step == 4
    image, _ = val[0]
    config = sw.WindowConfig(sizes=(12, 24), score_threshold=0.0, max_detections=10)
    for method in ("dense", "naive"):
        (det,) = sw.detect(run.model, image, config, method=method)
        assert set(det) == {"boxes", "scores", "labels"}
        assert det["boxes"].shape == (10, 4) and det["scores"].shape == det["labels"].shape
        assert det["labels"].min() >= 1 and det["labels"].max() <= 6
        assert (det["boxes"][:, 2:] > det["boxes"][:, :2]).all()
        assert det["boxes"].min() >= 0 and det["boxes"].max() <= 64
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
    ev = evaluate_detector(run.model, val, val.image_ids[:2], config)
    assert 0 <= ev["with_regression"]["AP"] <= 1 and ev["seconds_per_image"] > 0


def test_no_regression_keeps_boxes_on_the_window_grid():
    model = _random_model(2)
    image = torch.rand(3, 48, 48)
    config = sw.WindowConfig(sizes=(16,), ratios=(1.0,), score_threshold=0.0)
    windows, _ = sw.sliding_windows(image.shape[1:], config)
    (det,) = sw.detect(model, image, config, regress=False)
    assert (box_iou(det["boxes"], windows).max(1).values > 1 - 1e-5).all()


def test_bad_inputs_give_clear_errors():
    model = _random_model()
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        sw.detect(model, torch.rand(64, 64))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        sw.detect(model, torch.rand(4, 64, 64))
    with pytest.raises(ValueError, match="method"):
        sw.detect(model, torch.rand(3, 64, 64), method="fast")
    with pytest.raises(ValueError, match="to_fully_convolutional"):
        model(torch.rand(2, 4, 40, 40))
    with pytest.raises(ValueError, match="outside"):
        sw.crop_and_resize(torch.rand(3, 32, 32), torch.tensor([[0.0, 0.0, 40.0, 10.0]]))
    with pytest.raises(ValueError, match="H, W >= 32"):
        sw.to_fully_convolutional(model)(torch.rand(1, 4, 20, 40))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dense_equals_naive_on_cuda():
    model = _random_model(3).to("cuda")
    image = torch.rand(3, 64, 64, device="cuda")
    config = sw.WindowConfig(sizes=(12, 24))
    _, naive, _ = sw.classify_windows_naive(model, image, config)
    _, dense, _ = sw.classify_windows_dense(sw.to_fully_convolutional(model), image, config)
    assert naive.device.type == "cuda"
    torch.testing.assert_close(dense, naive, atol=1e-3, rtol=1e-3)
    (det,) = sw.detect(model, image, config)
    assert det["boxes"].device.type == "cuda"


def test_multiply_adds_counts_conv_and_linear_layers():
    from torch import nn

    from rcnn_steps.detectors.sliding_window import multiply_adds

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    # conv: 4*6*6 outputs x 3*3*3 each; linear: 5 outputs x 144 each
    assert multiply_adds(net, (1, 3, 8, 8)) == 4 * 6 * 6 * 27 + 5 * 144


def test_dense_detection_does_less_work_than_naive():
    from rcnn_steps.detectors.sliding_window import CropClassifier, WindowConfig, detection_cost

    cost = detection_cost(CropClassifier(num_classes=6), (128, 128), WindowConfig())
    assert cost["dense_macs"] > 0 and cost["ratio"] > 3.0
