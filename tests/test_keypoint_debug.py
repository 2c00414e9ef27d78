"""Chapter 07's keypoint-collapse tracer: its probes measure without changing the run."""

import math

import pytest
import torch

from rcnn_steps.data import collate_fn
from rcnn_steps.detectors.config import DetectorConfig
from rcnn_steps.detectors.faster_rcnn import FasterRCNN
from rcnn_steps.experiments.keypoint_debug import (
    dead_unit_fractions,
    make_probe,
    probe_persons,
    trace_setting,
    uniform_entropy,
)
from rcnn_steps.experiments.runner import load_datasets


def _keypoint_model():
    torch.manual_seed(0)
    return FasterRCNN(DetectorConfig.ci_mask(masks=False, keypoints=True))


def test_probe_persons_takes_the_first_persons_in_order(tiny_synth):
    _, val_set = load_datasets(tiny_synth)
    person = val_set.class_names.index("person")
    images, boxes = probe_persons(val_set, num_persons=3)
    assert sum(len(b) for b in boxes) <= 3 and len(images) == len(boxes)
    first = next(i for i in range(len(val_set)) if (val_set[i][1]["labels"] == person).any())
    image, target = val_set[first]
    torch.testing.assert_close(images[0], image)
    torch.testing.assert_close(
        boxes[0], target["boxes"][target["labels"] == person][: len(boxes[0])]
    )


def test_dead_units_count_channels_that_never_fire(tiny_synth):
    _, val_set = load_datasets(tiny_synth)
    images, boxes = probe_persons(val_set, num_persons=4)
    model = _keypoint_model()
    head = model.roi_heads.keypoint_branch.head
    with torch.no_grad():
        head[0].bias[:] = -1e4  # every channel of the first conv below zero everywhere
        head[2].bias[: head[2].out_channels // 2] = -1e4  # half of the second's
    dead, heatmaps = dead_unit_fractions(model, images, boxes)
    assert len(dead) == sum(isinstance(m, torch.nn.ReLU) for m in head)
    assert dead[0] == 1.0 and dead[1] >= 0.5
    assert heatmaps.shape[:2] == (sum(len(b) for b in boxes), 11)
    assert not any(m._forward_hooks for m in head)  # the hooks are removed


def test_a_probe_measures_and_leaves_the_random_state_as_it_was(tiny_synth):
    train_set, val_set = load_datasets(tiny_synth)
    images, boxes = probe_persons(val_set, num_persons=2)
    batch = collate_fn([train_set[i] for i in range(2)])
    probe = make_probe(images, boxes, batch, {})
    model = _keypoint_model().eval()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    with torch.no_grad():  # the engine calls it so
        out = probe(model)
    torch.testing.assert_close(torch.rand(3), expected)
    assert 0 < out["entropy"] <= uniform_entropy() + 1e-3
    assert {"grad/loss_keypoint", "grad/total_loss", "dead/0"} <= set(out)
    assert out["grad/total_loss"] > 0 and not model.training


def test_trace_setting_records_the_trace_and_the_run(tiny_synth):
    r = trace_setting("w0.1", max_iter=4, every=2, root=tiny_synth, preset="ci_mask")
    assert [t["step"] for t in r["trace"]] == [2, 4]
    assert r["keypoint_loss_weight"] == 0.1 and r["diverged_at"] is None
    assert len(r["heatmaps"]) == 4 and len(r["heatmaps"][0]) == 56
    # probabilities to 4 decimals (for pictures): a flat map's 1/3136 is stored as 0.0003
    assert math.isclose(sum(map(sum, r["heatmaps"][0])), 1.0, abs_tol=0.05)
    assert "AP" in r["keypoint_metrics"]
    with pytest.raises(ValueError, match="unknown setting"):
        trace_setting("w2", root=tiny_synth)
    with pytest.raises(ValueError, match="every must be at least 1"):
        trace_setting("w1", every=0, root=tiny_synth)


def test_uniform_entropy_is_that_of_a_flat_map():
    assert uniform_entropy(56) == pytest.approx(math.log(3136))
