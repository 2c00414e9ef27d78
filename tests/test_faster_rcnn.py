import pytest
import torch

from rcnn_steps.detectors.config import SECTIONS
from rcnn_steps.detectors.faster_rcnn import DetectorConfig, FasterRCNN
from rcnn_steps.engine import TrainConfig, train
from rcnn_steps.experiments import train_config


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
    shown = [f for s, fields in SECTIONS.items() if config.section(s) for f in fields.values()]
    assert len(shown) == 40  # every field of the branches that are on (the rest: one line each)
    for name in shown:
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
    from rcnn_steps import cli
    from rcnn_steps.utils import read_results

    out = tmp_path / "faster_rcnn.json"
    argv = ["evaluate", "--preset", "ci", "--max-iter", "2", "--root", str(tiny_synth)]
    argv += ["--num-eval-images", "3", "--out", str(out), "--no-evolution", "--threads", "1"]
    assert cli.main(argv) == 0
    payload = read_results(out)
    results = payload["results"]
    assert results["method"] == "rpn" and results["max_iter"] == 2
    assert results["num_eval_images"] == 3 and results["seconds_per_image"] > 0
    assert results["config"]["preset"] == "ci" and 0 <= results["metrics"]["AP"] <= 1
    assert payload["provenance"]["seeds"] == [0]


# -- chapter 05: feature pyramid and ResNet backbones ----------------------------------------

LOSS_KEYS = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}


def test_fpn_trains_a_few_steps_and_detects():
    model = _model(fpn=True, rpn_post_nms_top_n_train=50)
    images, targets = _batch()
    losses = model(images, targets)
    assert set(losses) == LOSS_KEYS and all(torch.isfinite(v) for v in losses.values())
    config = TrainConfig(
        max_iter=5, lr=0.02, warmup_steps=2, progress=False, device="cpu", log_every=5
    )
    result = train(model, [(images, targets)], config)
    assert all(torch.isfinite(torch.tensor(v)) for v in result.losses.values())
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2 and sum(len(d["boxes"]) for d in detections) > 0
    for d in detections:
        assert (d["boxes"] >= 0).all() and (d["boxes"] <= 64).all()
        assert ((d["labels"] >= 1) & (d["labels"] <= 6)).all()


def test_fpn_image_without_objects_trains():
    model = _model(fpn=True)
    images, targets = _batch()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model(images, [targets[0], empty])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    losses = model(images, [empty, empty])
    assert losses["loss_rpn_box_reg"].item() == 0 and losses["loss_box_reg"].item() == 0
    sum(losses.values()).backward()


def test_fpn_inspect_features_and_levels():
    model = _model(fpn=True).eval()
    images, targets = _batch()
    out = model.inspect(images, targets)
    assert list(out["features"]) == ["p2", "p3", "p4", "p5", "p6"] and "feature" not in out
    for k, (name, fmap) in zip(range(2, 7), out["features"].items(), strict=True):
        assert fmap.shape == (2, 16, 64 >> k, 64 >> k), name  # ci: fpn_channels 16
    assert out["feature_sizes"] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert out["num_anchors_per_level"] == [16 * 16 * 3, 8 * 8 * 3, 4 * 4 * 3, 2 * 2 * 3, 3]
    assert out["anchors"].shape == (sum(out["num_anchors_per_level"]), 4)
    pooler = model.roi_heads.pooler
    for key, boxes_key in (
        ("sampled_roi_levels", "sampled_rois"),
        ("proposal_levels", "proposals"),
    ):
        assert len(out[key]) == 2
        for levels, boxes in zip(out[key], out[boxes_key], strict=True):
            assert levels.shape == (len(boxes),) and levels.dtype == torch.int64
            assert ((levels >= 2) & (levels <= 5)).all()
            expected = pooler.mapper(list(out["features"].values())[:4], (64, 64)).level(boxes)
            assert torch.equal(levels, expected)
    # the ground-truth boxes appended to the RoIs go where eq. (1) with s0 = 56 says:
    # sqrt(22 * 30) = 25.7 -> P2, sqrt(30 * 34) = 31.9 -> P3
    rois, levels = out["sampled_rois"][1], out["sampled_roi_levels"][1]
    gt = (rois == targets[1]["boxes"]).all(dim=1)
    assert gt.any() and (levels[gt] == 3).all()
    r = sum(len(x) for x in out["sampled_rois"])
    assert out["pooled_features"].shape == (r, 16, 7, 7)


def test_fpn_pieces_equal_torchvision():
    """Our FPN Faster R-CNN in eval mode vs torchvision's FeaturePyramidNetwork,
    RegionProposalNetwork and RoIHeads (MultiScaleRoIAlign) built with the same weights
    on the same backbone stages: equal pyramid, proposals and detections."""
    from torchvision.models.detection import anchor_utils as tv_anchor_utils
    from torchvision.models.detection import roi_heads as tv_roi_heads
    from torchvision.models.detection import rpn as tv_rpn
    from torchvision.ops import FeaturePyramidNetwork as TvFPN
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    from rcnn_steps.detectors.faster_rcnn import preprocess

    model = _model(fpn=True, roi_op="roialign_avg").eval()
    cfg = model.config
    with torch.no_grad():  # larger weights than the init: proposals move, scores differ
        for p in model.rpn.head.parameters():
            p.normal_(std=0.2)
        for p in model.roi_heads.box_predictor.parameters():
            p.normal_(std=0.1)
    images, _ = _batch()
    out = model.inspect(images)

    ours_fpn = model.backbone.fpn
    tv_fpn = TvFPN(list(ours_fpn.in_channels), cfg.fpn_channels, extra_blocks=LastLevelMaxPool())
    with torch.no_grad():
        for i in range(len(ours_fpn.in_channels)):
            tv_fpn.inner_blocks[i][0].load_state_dict(ours_fpn.lateral_convs[i].state_dict())
            tv_fpn.layer_blocks[i][0].load_state_dict(ours_fpn.output_convs[i].state_dict())
    top_n = lambda train, test: {"training": train, "testing": test}  # noqa: E731
    tv_rpn_module = tv_rpn.RegionProposalNetwork(
        tv_anchor_utils.AnchorGenerator(
            tuple((s,) for s in cfg.fpn_anchor_sizes), (cfg.anchor_aspect_ratios,) * 5
        ),
        model.rpn.head,
        cfg.rpn_fg_iou_thresh, cfg.rpn_bg_iou_thresh, cfg.rpn_batch_size_per_image,
        cfg.rpn_positive_fraction,
        top_n(cfg.rpn_pre_nms_top_n_train, cfg.rpn_pre_nms_top_n_test),
        top_n(cfg.rpn_post_nms_top_n_train, cfg.rpn_post_nms_top_n_test),
        cfg.rpn_nms_thresh,
    ).eval()  # fmt: skip
    tv_heads = tv_roi_heads.RoIHeads(
        MultiScaleRoIAlign(
            ["c2", "c3", "c4", "c5"], cfg.pooled_size, cfg.sampling_ratio,
            canonical_scale=int(cfg.roi_canonical_size), canonical_level=cfg.roi_canonical_level,
        ),
        model.roi_heads.box_head, model.roi_heads.box_predictor,
        cfg.roi_fg_iou_thresh, cfg.roi_bg_iou_thresh, cfg.roi_batch_size_per_image,
        cfg.roi_positive_fraction, None, cfg.box_score_thresh, cfg.box_nms_thresh,
        cfg.detections_per_img,
    ).eval()  # fmt: skip

    with torch.no_grad():
        image_list, _ = preprocess(images, None, cfg)
        features = tv_fpn(model.backbone.body(image_list.tensors))
        for a, b in zip(out["features"].values(), features.values(), strict=True):
            torch.testing.assert_close(a, b)
        proposals, _ = tv_rpn_module(image_list, features)
        detections, _ = tv_heads(features, proposals, image_list.image_sizes)
    for a, b in zip(out["proposals"], proposals, strict=True):
        assert a.shape[0] > 10
        torch.testing.assert_close(a, b)
    assert len({int(k) for lv in out["proposal_levels"] for k in lv}) >= 2
    for a, b in zip(out["detections"], detections, strict=True):
        assert a["boxes"].shape[0] > 5
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(a[key], b[key])


def test_fpn_config_validation():
    with pytest.raises(ValueError, match="box_head='c5' is the C4 design.*box_head='mlp'"):
        DetectorConfig.ci(fpn=True, box_head="c5")
    with pytest.raises(ValueError, match="one size per level"):
        DetectorConfig.ci(fpn=True, fpn_anchor_sizes=(8, 16, 32))
    with pytest.raises(ValueError, match="fpn_levels must be consecutive"):
        DetectorConfig.ci(fpn=True, fpn_levels=("p2", "p4", "p5"), fpn_anchor_sizes=(8, 16, 32))
    with pytest.raises(ValueError, match="fpn_roi_levels"):
        DetectorConfig.ci(fpn=True, fpn_levels=("p3", "p4", "p5"), fpn_anchor_sizes=(8, 16, 32))
    with pytest.raises(ValueError, match="largest stride 64"):
        DetectorConfig.ci(fpn=True, size_divisible=32)
    with pytest.raises(ValueError, match="backbone must be one of"):
        DetectorConfig(backbone="vgg16")
    with pytest.raises(ValueError, match="ResNet backbones"):
        DetectorConfig(backbone_weights="weights.pth")
    with pytest.raises(ValueError, match="backbone_trainable_layers"):
        DetectorConfig(backbone="resnet50", backbone_trainable_layers=7)
    with pytest.raises(ValueError, match="roi_canonical_size"):
        DetectorConfig.ci(fpn=True, roi_canonical_size=0)
    # size_divisible: automatic by default, 32 without FPN as before
    assert DetectorConfig().size_divisible == 32
    assert DetectorConfig.ci(fpn=True).size_divisible == 64
    no_p6 = DetectorConfig.ci(
        fpn=True, fpn_levels=("p2", "p3", "p4", "p5"), fpn_anchor_sizes=(8, 16, 32, 64)
    )
    assert no_p6.size_divisible == 32
    model = FasterRCNN(no_p6)
    assert all(torch.isfinite(v) for v in model(*_batch()).values())


def test_fpn_presets():
    cpu, cpu_fpn = DetectorConfig.cpu(), DetectorConfig.cpu_fpn()
    differ = {k for k, v in cpu.to_dict().items() if cpu_fpn.to_dict()[k] != v}
    # the same budget: only the pyramid switch, the padding (64, P6's stride) and the name
    assert differ == {"fpn", "size_divisible", "preset"}
    assert cpu_fpn.fpn_channels == cpu.backbone_width * 2  # = channels of cpu's c3
    assert train_config("cpu_fpn") == train_config("cpu")
    assert DetectorConfig.cpu_fpn(rpn_lambda=10.0).rpn_lambda == 10.0
    gpu = DetectorConfig.gpu()
    assert gpu.backbone == "resnet50" and gpu.fpn and gpu.fpn_channels == 256
    assert gpu.fpn_anchor_sizes == (32, 64, 128, 256, 512) and gpu.roi_canonical_size == 224
    # cpu_fpn's anchors and s0 are the paper's (gpu's) divided by the same factor
    ratios = {g / c for g, c in zip(gpu.fpn_anchor_sizes, cpu_fpn.fpn_anchor_sizes, strict=True)}
    assert ratios == {gpu.roi_canonical_size / cpu_fpn.roi_canonical_size} == {4.0}
    model = FasterRCNN(gpu)  # builds (ResNet-50-FPN, d = 256); trained only on a GPU
    assert model.backbone.out_channels == {n: 256 for n in gpu.fpn_levels}
    assert model.roi_heads.box_head.fc6.in_features == 256 * 7 * 7


def _resnet_config(**overrides):
    values = dict(
        backbone="resnet50",
        box_head_size=32,
        rpn_pre_nms_top_n_train=50,
        rpn_pre_nms_top_n_test=20,
        rpn_post_nms_top_n_train=20,
        rpn_post_nms_top_n_test=8,
        roi_batch_size_per_image=8,
        rpn_batch_size_per_image=32,
        fpn_channels=32,
    )
    return DetectorConfig(**{**values, **overrides})


@pytest.mark.parametrize(
    "overrides",
    [dict(feature_stage="c4", box_head="c5"), dict(fpn=True)],
    ids=["resnet50-c4", "resnet50-fpn"],
)
def test_resnet_designs_build_and_run(overrides):
    torch.manual_seed(0)
    model = FasterRCNN(_resnet_config(**overrides))
    images, targets = _batch(n=1)
    losses = model(images, targets)
    assert set(losses) == LOSS_KEYS and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 1 and detections[0]["boxes"].shape[1] == 4
    if overrides.get("box_head") == "c5":
        # the C4 design: res5 of the ResNet is the box head, not run on the image
        assert model.roi_heads.box_head.stage[0] is model.backbone.stages["c5"]
        assert model.backbone.return_stages == ("c4",)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fpn_forward_train_and_eval():
    model = _model(fpn=True, roi_op="roialign_avg").cuda()
    images, targets = _batch()
    images = [i.cuda() for i in images]
    targets = [{k: v.cuda() for k, v in t.items()} for t in targets]
    losses = model(images, targets)
    assert all(v.is_cuda and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    out = model.inspect(images, targets)
    assert out["detections"][0]["boxes"].is_cuda and out["proposal_levels"][0].is_cuda


def test_evaluate_writes_fpn_results_to_their_own_file():
    from rcnn_steps.cli import evaluate_results_path

    assert evaluate_results_path("cpu").name == "faster_rcnn.json"
    assert evaluate_results_path("cpu_fpn").name == "faster_rcnn_fpn.json"
    assert evaluate_results_path("cpu_mask").name == "mask_rcnn.json"


@pytest.mark.parametrize("preset", ["cpu", "cpu_fpn", "cpu_mask", "gpu_mask"])
def test_a_config_read_back_from_json_equals_the_original(preset):
    import json

    config = getattr(DetectorConfig, preset)()
    again = DetectorConfig(**json.loads(json.dumps(config.to_dict())))
    assert again == config and isinstance(again.image_mean, tuple)
