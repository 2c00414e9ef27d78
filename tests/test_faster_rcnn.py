import pytest
import torch

from rcnn_steps.engine import TrainConfig, train
from rcnn_steps.faster_rcnn import DetectorConfig, FasterRCNN, train_config


def _batch(n=2, size=64):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=g) for _ in range(n)]
    targets = [
        {"boxes": torch.tensor([[8.0, 10.0, 30.0, 40.0], [34.0, 20.0, 60.0, 36.0]]),
         "labels": torch.tensor([1, 4])},
        {"boxes": torch.tensor([[20.0, 16.0, 50.0, 50.0]]), "labels": torch.tensor([2])},
    ][:n]  # fmt: skip
    return images, targets


def _model(**overrides):
    torch.manual_seed(0)
    return FasterRCNN(DetectorConfig.ci(**overrides))


def test_train_and_eval_forward():
    model = _model()
    images, targets = _batch()
    losses = model(images, targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    for d in detections:
        assert d["boxes"].shape[1] == 4 and d["boxes"].shape[0] == d["scores"].shape[0]
        assert d["labels"].dtype == torch.int64
        assert ((d["labels"] >= 1) & (d["labels"] <= 6)).all()
        assert (d["boxes"] >= 0).all() and (d["boxes"] <= 64).all()


def test_images_without_objects_train():
    model = _model()
    images, _ = _batch()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model(images, [empty, empty])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_rpn_box_reg"].item() == 0 and losses["loss_box_reg"].item() == 0
    sum(losses.values()).backward()


def test_clear_errors_for_bad_input():
    model = _model()
    images, targets = _batch()
    bad = [
        targets[0],
        {"boxes": torch.tensor([[5.0, 5.0, 5.0, 20.0]]), "labels": torch.tensor([1])},
    ]
    with pytest.raises(ValueError, match=r"targets\[1\]\['boxes'\]\[0\].*non-positive width"):
        model(images, bad)
    with pytest.raises(ValueError, match=r"\(3, H, W\).*permute"):
        model([img.permute(1, 2, 0) for img in images], targets)
    with pytest.raises(ValueError, match="wrap a single image"):
        model(images[0], targets[:1])
    with pytest.raises(ValueError, match="targets are required"):
        model(images)
    with pytest.raises(ValueError, match="labels"):
        model(images, [targets[0], {"boxes": targets[1]["boxes"], "labels": torch.tensor([0])}])


def test_inspect_keys_and_shapes():
    model = _model().eval()
    images, targets = _batch()
    out = model.inspect(images, targets)
    a = out["anchors"].shape[0]
    assert out["feature"].shape == (2, 32, 4, 4)  # ci width 8: c4 has 32 channels
    assert (
        a == 4 * 4 * 9
        and out["objectness"].shape == (2, a)
        and out["rpn_deltas"].shape == (2, a, 4)
    )
    for key in (
        "anchor_labels",
        "matched_gt_boxes",
        "sampled_positive",
        "proposals_before_nms",
        "proposals",
        "proposal_scores",
        "sampled_rois",
        "sampled_labels",
        "detections",
    ):
        assert len(out[key]) == 2, key  # fmt: skip
    assert out["anchor_labels"][0].shape == (a,)
    r = sum(len(x) for x in out["sampled_rois"])
    assert out["pooled_features"].shape == (r, 32, 7, 7)
    assert set(out["losses"]) == {
        "loss_objectness",
        "loss_rpn_box_reg",
        "loss_classifier",
        "loss_box_reg",
    }
    assert not any(v.requires_grad for v in out["losses"].values())


def test_config_display_and_presets(capsys):
    config = DetectorConfig.cpu(rpn_lambda=10.0)
    config.display()
    printed = capsys.readouterr().out
    for name in config.to_dict():
        if name != "preset":
            assert name in printed
    assert "'cpu'" in printed and config.rpn_lambda == 10.0
    assert train_config("cpu").max_iter > train_config("ci").max_iter
    with pytest.raises(ValueError, match="box_head"):
        DetectorConfig(box_head="fc")


@pytest.mark.parametrize("overrides", [dict(box_head="c5"), dict(roi_op="roialign_avg")])
def test_switches_build_and_train(overrides):
    model = _model(**overrides)
    losses = model(*_batch())
    assert all(torch.isfinite(v) for v in losses.values())


def test_a_few_sgd_steps_overfit_a_tiny_batch():
    model = _model(rpn_post_nms_top_n_train=50)
    images, targets = _batch()
    model.train()
    with torch.no_grad():
        torch.manual_seed(1)
        first = sum(model(images, targets).values()).item()
    config = TrainConfig(
        max_iter=30, lr=0.02, warmup_steps=3, progress=False, device="cpu", log_every=30
    )
    result = train(model, [(images, targets)], config)
    assert result.losses["total_loss"] < 0.6 * first, (first, result.losses)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_forward_train_and_eval():
    model = _model().cuda()
    images, targets = _batch()
    images = [i.cuda() for i in images]
    targets = [{k: v.cuda() for k, v in t.items()} for t in targets]
    losses = model(images, targets)
    assert all(v.is_cuda and torch.isfinite(v) for v in losses.values())
    model.eval()
    assert model(images)[0]["boxes"].is_cuda


def test_evaluate_command_writes_results(tiny_synth, tmp_path):
    from rcnn_steps import faster_rcnn
    from rcnn_steps.utils import read_results

    out = tmp_path / "faster_rcnn.json"
    argv = ["evaluate", "--preset", "ci", "--max-iter", "2", "--root", str(tiny_synth)]
    argv += ["--num-eval-images", "3", "--out", str(out), "--no-evolution", "--threads", "1"]
    assert faster_rcnn.main(argv) == 0
    payload = read_results(out)
    results = payload["results"]
    assert results["method"] == "rpn" and results["max_iter"] == 2
    assert results["num_eval_images"] == 3 and results["seconds_per_image"] > 0
    assert results["config"]["preset"] == "ci" and 0 <= results["metrics"]["AP"] <= 1
    assert payload["provenance"]["seeds"] == [0]
