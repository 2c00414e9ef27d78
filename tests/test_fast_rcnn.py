import pytest
import torch

from rcnn_steps.fast_rcnn import FastRCNN
from rcnn_steps.faster_rcnn import DetectorConfig


def _data():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[8.0, 10.0, 30.0, 40.0]]), "labels": torch.tensor([3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    xy = torch.rand(40, 2, generator=g) * 48
    proposals = [
        torch.cat([xy, xy + 4 + torch.rand(40, 2, generator=g) * 30], 1),
        torch.zeros(0, 4),
    ]
    return images, proposals, targets


def test_fast_rcnn_with_given_proposals():
    torch.manual_seed(0)
    model = FastRCNN(DetectorConfig.ci())
    images, proposals, targets = _data()
    losses = model(images, proposals, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    inter = model.inspect(images, proposals)
    dets = inter["detections"]
    assert len(dets) == 2 and dets[1]["boxes"].shape == (0, 4)
    assert inter["pooled_features"].shape == (40, 32, 7, 7)
    assert dets[0]["boxes"].shape[0] <= 100


def test_fast_rcnn_bad_proposals():
    model = FastRCNN(DetectorConfig.ci())
    images, proposals, targets = _data()
    with pytest.raises(ValueError, match="one \\(P_i, 4\\) tensor per image"):
        model(images, proposals[:1], targets)
    with pytest.raises(ValueError, match=r"proposals\[0\]"):
        model(images, [proposals[0][:, :2], proposals[1]], targets)
