import numpy as np
import pytest
import torch

from rcnn_steps.detectors.fast_rcnn import FastRCNN
from rcnn_steps.detectors.faster_rcnn import DetectorConfig


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


# ---------------------------------------------------------------------------------------
# Training and evaluation on cached proposals


def _tiny_sets(tiny_synth):
    from rcnn_steps.data import CocoDataset

    ann = tiny_synth / "annotations"
    train = CocoDataset(tiny_synth / "train", ann / "instances_train.json")
    val = CocoDataset(tiny_synth / "val", ann / "instances_val.json")
    return train, val


def _jittered_proposals(dataset, ids, n=30, seed=0):
    """Ground-truth boxes, shifted copies and random boxes: cheap stand-in proposals."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for image_id in ids:
        image = dataset.load_image(image_id)
        gt = dataset.load_target(image_id, *image.shape[1:])["boxes"]
        shifted = (gt.repeat(3, 1) + torch.randn(3 * len(gt), 4, generator=g) * 2).clamp(0, 63)
        xy = torch.rand(n, 2, generator=g) * 48
        rand = torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=g) * 12], 1).clamp(max=64)
        boxes = torch.cat([shifted, rand])
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        out[int(image_id)] = boxes
    return out


def test_proposal_dataset_and_collate(tiny_synth):
    from rcnn_steps.experiments.fast_rcnn import ProposalDataset, collate_proposals

    train, _ = _tiny_sets(tiny_synth)
    props = _jittered_proposals(train, train.image_ids[:5])
    data = ProposalDataset(train, props, max_proposals=10)
    assert data.image_ids == [int(i) for i in train.image_ids[:5]]  # only ids with proposals
    image, boxes, target = data[0]
    assert image.shape == (3, 64, 64) and boxes.shape == (10, 4)
    assert set(target) == {"boxes", "labels"}
    assert data[0][0] is image  # cached: the same tensor, no second read
    images, proposals, targets = collate_proposals([data[0], data[1]])
    assert len(images) == len(proposals) == len(targets) == 2
    with pytest.raises(ValueError, match="no image has proposals"):
        ProposalDataset(train, {})


def test_train_and_evaluate_fast_rcnn_tiny(tiny_synth):
    from rcnn_steps.experiments.fast_rcnn import FastRCNNRun, evaluate_fast_rcnn, train_fast_rcnn

    train, val = _tiny_sets(tiny_synth)
    train_props = _jittered_proposals(train, train.image_ids)
    val_props = _jittered_proposals(val, val.image_ids, seed=1)
    run = FastRCNNRun(
        model=DetectorConfig.ci(), num_train_images=8, batch_size=2, max_iter=40, lr=0.02
    )
    model, result = train_fast_rcnn(train, train_props, run, device="cpu")
    assert result.step == 40
    assert result.history[-1]["total_loss"] < result.history[0]["total_loss"]
    model2, result2 = train_fast_rcnn(train, train_props, run, device="cpu")
    assert result2.losses == result.losses  # seeded: the same run twice
    ev = evaluate_fast_rcnn(model, val, val_props, val.image_ids[:4])
    assert 0.0 <= ev["metrics"]["AP"] <= ev["metrics"]["AP50"] <= 1.0
    assert ev["network_seconds_per_image"] > 0
    assert ev["num_proposals"] == np.mean([len(val_props[int(i)]) for i in val.image_ids[:4]])


def test_inspect_with_targets_shows_the_roi_sampling():
    torch.manual_seed(0)
    config = DetectorConfig.ci(roi_batch_size_per_image=16, roi_positive_fraction=0.25)
    model = FastRCNN(config).eval()
    images, proposals, targets = _data()
    inter = model.inspect(images[:1], proposals[:1], targets[:1])
    labels = inter["sampled_labels"]
    labels = torch.cat(labels) if isinstance(labels, (list, tuple)) else labels
    assert len(labels) <= 16 and 0 < (labels > 0).sum() <= 4
    assert len(inter["detections"]) == 1
    # without targets, eval mode does not sample
    assert "sampled_labels" not in model.inspect(images[:1], proposals[:1])


def test_evaluate_command_on_the_tiny_set(tiny_synth, tmp_path, monkeypatch):
    import dataclasses

    import rcnn_steps.data
    import rcnn_steps.data.proposals
    import rcnn_steps.experiments.fast_rcnn as fr
    from rcnn_steps.data.proposals import make_proposals
    from rcnn_steps.utils import read_results

    train, val = _tiny_sets(tiny_synth)
    paths = {s: tmp_path / f"{s}.npz" for s in ("train", "val")}
    make_proposals(train, 6, paths["train"], mode="single", max_proposals=50)
    make_proposals(val, len(val), paths["val"], mode="single", max_proposals=50)
    monkeypatch.setattr(rcnn_steps.data, "synth_datasets", lambda *a, **k: (train, val))
    monkeypatch.setattr(
        rcnn_steps.data.proposals, "proposals_path", lambda split, *a, **k: paths[split]
    )
    tiny = dataclasses.replace(
        fr.PRESETS["ci"], num_train_images=6, batch_size=2, max_iter=4, max_proposals=50
    )
    monkeypatch.setitem(fr.PRESETS, "tiny", tiny)
    out = tmp_path / "fast_rcnn.json"
    assert fr.main(["evaluate", "--preset", "tiny", "--out", str(out), "--no-evolution"]) == 0
    payload = read_results(out)
    r = payload["results"]
    assert r["num_train_images"] == 6 and r["num_eval_images"] == len(val)
    assert (
        abs(
            r["proposal_seconds_per_image"]
            + r["network_seconds_per_image"]
            - r["seconds_per_image"]
        )
        < 1e-3
    )
    assert payload["provenance"]["seeds"] == [0] and payload["provenance"]["preset"] == "tiny"


def test_proposal_dataset_flip_mirrors_everything(tiny_synth):
    from rcnn_steps.experiments.fast_rcnn import ProposalDataset

    train, _ = _tiny_sets(tiny_synth)
    props = _jittered_proposals(train, train.image_ids[:1])
    plain = ProposalDataset(train, props)
    flipped = ProposalDataset(train, props, flip=True)
    seen = set()
    torch.manual_seed(0)
    for _ in range(8):
        image, boxes, target = flipped[0]
        ref_image, ref_boxes, ref_target = plain[0]
        if torch.equal(image, ref_image):
            seen.add("plain")
            assert torch.equal(boxes, ref_boxes)
        else:
            seen.add("flipped")
            assert torch.equal(image, ref_image.flip(-1))
            assert torch.allclose(boxes[:, [2, 0]], 64 - ref_boxes[:, [0, 2]])
            assert torch.allclose(target["boxes"][:, [2, 0]], 64 - ref_target["boxes"][:, [0, 2]])
            assert (target["boxes"][:, 2] > target["boxes"][:, 0]).all()
    assert seen == {"plain", "flipped"}
