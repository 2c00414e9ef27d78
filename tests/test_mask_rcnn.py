import copy
import math

import numpy as np
import pytest
import torch

from rcnn_steps.detectors.faster_rcnn import DetectorConfig, FasterRCNN
from rcnn_steps.detectors.mask_rcnn import (
    MaskRCNN,
    copy_weights_to_torchvision,
    torchvision_mask_rcnn,
)
from rcnn_steps.engine import branch_gradient_norms

LOSSES = {
    "loss_objectness",
    "loss_rpn_box_reg",
    "loss_classifier",
    "loss_box_reg",
    "loss_mask",
    "loss_keypoint",
}


def _batch(label=1, size=64):
    """Two images: two objects (one a person with keypoints on, an edge and hidden) and
    one object, with masks and 11 keypoints each."""
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=g) for _ in range(2)]
    masks = torch.zeros(2, size, size, dtype=torch.uint8)
    masks[0, 10:40, 8:30] = 1
    masks[1, 20:36, 34:60] = 1
    kps = torch.zeros(2, 11, 3)
    kps[0, :, 0] = torch.linspace(8, 30, 11)  # first and last on the box's edges
    kps[0, :, 1] = torch.linspace(12, 38, 11)
    kps[0, :, 2] = 2
    kps[1, :, 0] = torch.linspace(36, 58, 11)
    kps[1, :, 1] = torch.linspace(22, 34, 11)
    kps[1, ::2, 2] = 1  # every other one labelled (hidden), the rest unlabelled
    targets = [
        {"boxes": torch.tensor([[8.0, 10.0, 30.0, 40.0], [34.0, 20.0, 60.0, 36.0]]),
         "labels": torch.tensor([label, label]), "masks": masks, "keypoints": kps},
        {"boxes": torch.tensor([[20.0, 16.0, 50.0, 50.0]]), "labels": torch.tensor([label]),
         "masks": masks[:1].roll(5, 2), "keypoints": kps[:1] + 3},
    ]  # fmt: skip
    return images, targets


def _ours_and_torchvision(**overrides):
    torch.manual_seed(0)
    config = DetectorConfig.ci_mask(**overrides)
    ours = FasterRCNN(config)
    with torch.no_grad():  # larger weights than the init: proposals move, scores differ
        for p in ours.rpn.head.parameters():
            p.normal_(std=0.2)
        for p in ours.roi_heads.box_predictor.parameters():
            p.normal_(std=0.1)
    theirs = torchvision_mask_rcnn(config, copy.deepcopy(ours.backbone))
    copy_weights_to_torchvision(ours, theirs)
    return ours, theirs


@pytest.mark.parametrize("fpn", [True, False])
def test_drop_in_equal_to_torchvision_mask_and_keypoint_rcnn(fpn):
    """torchvision's MaskRCNN (with KeypointRCNN's branch attached) and ours, same config
    and weights: the same six losses on the same sampled RoIs, and the same boxes, masks
    and keypoints in eval mode."""
    ours, theirs = _ours_and_torchvision(num_classes=1, keypoint_counts=(11,), fpn=fpn)
    images, targets = _batch()
    torch.manual_seed(5)
    losses = ours(images, targets)
    torch.manual_seed(5)
    tv_losses = theirs(images, [dict(t) for t in targets])
    assert set(losses) == set(tv_losses) == LOSSES
    for key in losses:
        torch.testing.assert_close(losses[key], tv_losses[key])
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        detections, tv_detections = ours(images), theirs(images)
    for a, b in zip(detections, tv_detections, strict=True):
        assert a["boxes"].shape[0] > 20 and a["masks"].shape[1:] == (1, 64, 64)
        for key in ("boxes", "scores", "labels", "masks", "keypoints_scores"):
            torch.testing.assert_close(a[key], b[key])
        # a keypoint is an arg-max: where two heatmap cells tie to float rounding (the
        # RoIAlign sums run in another order) it may land one cell away
        same = (a["keypoints"] - b["keypoints"]).abs().amax(dim=2) < 1e-4
        assert same.float().mean() > 0.99


def test_equal_to_torchvision_with_keypoints_on_one_class_of_several():
    """The synthetic set's case: six classes, only the person has keypoints. torchvision
    runs its keypoint branch on every positive RoI (the others have no labelled
    keypoints); ours on the person RoIs only. The losses agree; so do the persons'
    keypoints."""
    ours, theirs = _ours_and_torchvision()
    images, targets = _batch(label=6)
    targets[0]["labels"] = torch.tensor([6, 2])
    targets[0]["keypoints"][1, :, 2] = 0  # a shape has no keypoints
    torch.manual_seed(5)
    losses = ours(images, targets)
    torch.manual_seed(5)
    tv_losses = theirs(images, [dict(t) for t in targets])
    for key in losses:
        torch.testing.assert_close(losses[key], tv_losses[key])
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        detections, tv_detections = ours(images), theirs(images)
    for a, b in zip(detections, tv_detections, strict=True):
        person = a["labels"] == 6
        assert person.any() and (~person).any()
        torch.testing.assert_close(a["keypoints_scores"][person], b["keypoints_scores"][person])
        assert (a["keypoints"][~person] == 0).all()


def test_torchvision_counterpart_refuses_what_it_cannot_express():
    refused = ({"mask_loss": "softmax"}, {"roi_op": "roipool"}, {"mask_head": "mlp"},
               {"mask_aligned": True})  # fmt: skip
    for overrides in refused:
        config = DetectorConfig.ci_mask(**overrides)
        with pytest.raises(ValueError, match="torchvision's models cannot express"):
            torchvision_mask_rcnn(config, FasterRCNN(config).backbone)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"fpn": True},
        {"mask_head": "mlp", "mask_mlp_layers": 3},
        {"mask_loss": "softmax"},
        {"mask_class_agnostic": True},
        {"mask_aligned": True},
        {"box_head": "c5", "mask_head": "c5"},
        {"mask_roi_op": "roipool", "keypoint_roi_op": "roiwarp_max"},
        {"keypoints": False},
        {"masks": False},
    ],
)
def test_every_switch_builds_trains_and_predicts(overrides):
    torch.manual_seed(0)
    model = FasterRCNN(DetectorConfig.ci_mask(**overrides))
    images, targets = _batch(label=6)
    losses = model(images, targets)
    expected = set(LOSSES)
    if not model.config.masks:
        expected.discard("loss_mask")
    if not model.config.keypoints:
        expected.discard("loss_keypoint")
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        det = model(images)[0]
    n = det["boxes"].shape[0]
    if model.config.masks:
        assert det["masks"].shape == (n, 1, 64, 64)
        assert det["masks"].min() >= 0 and det["masks"].max() <= 1
    if model.config.keypoints:
        assert det["keypoints"].shape == (n, 11, 3)


def test_c5_mask_head_shares_the_box_heads_res5():
    model = FasterRCNN(DetectorConfig.ci_mask(box_head="c5", mask_head="c5"))
    assert model.roi_heads.mask_branch.head is model.roi_heads.box_head.stage
    assert model.config.mask_resolution == 14


def test_images_without_objects_and_without_detections():
    torch.manual_seed(0)
    model = MaskRCNN(DetectorConfig.ci_mask())
    images, _ = _batch()
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, 64, 64, dtype=torch.uint8),
        "keypoints": torch.zeros(0, 11, 3),
    }
    losses = model(images, [empty, empty])
    assert losses["loss_mask"].item() == 0 and losses["loss_keypoint"].item() == 0
    sum(losses.values()).backward()
    model.config.box_score_thresh = 1.0  # nothing passes: the branches see no boxes
    model.roi_heads.score_thresh = 1.0
    model.eval()
    with torch.no_grad():
        det = model(images)[0]
    assert det["boxes"].shape == (0, 4) and det["masks"].shape == (0, 1, 64, 64)
    assert det["keypoints"].shape == (0, 11, 3)


def test_objects_without_visible_keypoints_train():
    torch.manual_seed(0)
    model = MaskRCNN(DetectorConfig.ci_mask())
    images, targets = _batch(label=6)
    for t in targets:
        t["keypoints"][..., 2] = 0
    losses = model(images, targets)
    assert losses["loss_keypoint"].item() == 0 and losses["loss_mask"] > 0


def test_missing_targets_are_clear_errors():
    model = MaskRCNN(DetectorConfig.ci_mask())
    images, targets = _batch(label=6)
    no_masks = [{k: v for k, v in t.items() if k != "masks"} for t in targets]
    with pytest.raises(ValueError, match=r"'masks'.*load_masks=True.*masks=False"):
        model(images, no_masks)
    no_kps = [{k: v for k, v in t.items() if k != "keypoints"} for t in targets]
    with pytest.raises(ValueError, match=r"'keypoints'.*keypoints=False"):
        model(images, no_kps)


def test_inspect_shows_every_stage_of_both_branches():
    torch.manual_seed(0)
    model = MaskRCNN(DetectorConfig.ci_mask()).eval()
    images, targets = _batch(label=6)
    out = model.inspect(images, targets)
    r = sum(len(x) for x in out["mask_rois"])
    assert r > 0 and out["mask_targets"].shape == (r, 28, 28)
    assert out["mask_logits"].shape == (r, 7, 28, 28) and out["mask_labels"].shape == (r,)
    assert set(out["mask_accuracy"]) == {"accuracy", "false_positive", "false_negative"}
    rk = sum(len(x) for x in out["keypoint_rois"])
    assert rk > 0 and out["keypoint_logits"].shape == (rk, 11, 56, 56)
    pairs = zip(out["keypoint_targets"], out["keypoint_valid"], strict=True)
    assert all(t.shape == v.shape for t, v in pairs)
    assert (out["keypoint_labels"] == 6).all()
    d = sum(len(x["boxes"]) for x in out["detections"])
    assert out["detection_mask_logits"].shape == (d, 7, 28, 28)
    assert sum(len(x) for x in out["detection_masks"]) == d
    kp = int(sum(h.sum() for h in out["detection_has_keypoints"]))
    assert out["detection_heatmaps"].shape == (kp, 11, 56, 56)
    stages = out["stage_seconds"]
    assert list(stages) == ["backbone", "rpn", "box_head_and_nms", "mask_head_and_paste",
                            "keypoint_head"]  # fmt: skip
    assert all(s > 0 for s in stages.values())


def test_config_validation_and_presets(capsys):
    with pytest.raises(ValueError, match="mask_head='c5'.*needs box_head='c5'"):
        DetectorConfig.ci_mask(mask_head="c5")
    with pytest.raises(ValueError, match="class-agnostic masks.*sigmoid"):
        DetectorConfig.ci_mask(mask_loss="softmax", mask_class_agnostic=True)
    with pytest.raises(ValueError, match="keypoint_counts must hold one count"):
        DetectorConfig.ci_mask(keypoint_counts=(11,))
    with pytest.raises(ValueError, match="mask_head must be one of"):
        DetectorConfig.ci_mask(mask_head="unet")
    with pytest.raises(ValueError, match="mask_roi_op must be one of"):
        DetectorConfig.ci_mask(mask_roi_op="roialign")
    DetectorConfig.ci_mask(keypoints=False, keypoint_counts=())  # unused when off
    cpu = DetectorConfig.cpu_mask()
    assert cpu.fpn and cpu.masks and cpu.keypoints and cpu.roi_op == "roialign_avg"
    assert cpu.mask_resolution == 28 and cpu.heatmap_size == 56
    gpu = DetectorConfig.gpu_mask()
    assert gpu.backbone == "resnet50" and gpu.mask_head_channels == 256
    assert gpu.keypoint_head_channels == 512 and gpu.keypoint_head_convs == 8
    cpu.display()
    out = capsys.readouterr().out
    assert "mask_loss" in out and "keypoint_counts" in out and "(mask resolution M)" in out
    assert isinstance(MaskRCNN(), FasterRCNN) and MaskRCNN().config.preset == "cpu_mask"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_mask_rcnn_trains_and_predicts():
    torch.manual_seed(0)
    model = MaskRCNN(DetectorConfig.ci_mask(fpn=True)).cuda()
    images, targets = _batch(label=6)
    images = [i.cuda() for i in images]
    targets = [{k: v.cuda() for k, v in t.items()} for t in targets]
    losses = model(images, targets)
    assert all(v.is_cuda and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        det = model(images)[0]
    assert det["masks"].is_cuda and det["keypoints"].is_cuda


def test_evaluate_command_reports_box_mask_and_keypoint_ap_beside_torchvision(tiny_synth, tmp_path):
    from rcnn_steps import cli
    from rcnn_steps.utils import read_results

    out = tmp_path / "mask_rcnn.json"
    argv = ["evaluate", "--preset", "ci_mask", "--max-iter", "2", "--root", str(tiny_synth)]
    argv += ["--num-eval-images", "4", "--out", str(out), "--no-evolution", "--threads", "1"]
    assert cli.main([*argv, "--baseline-torchvision"]) == 0
    results = read_results(out)["results"]
    for run in (results, results["torchvision"]):
        assert run["num_eval_images"] == 4 and run["max_iter"] == 2
        for key in ("metrics", "segm_metrics", "keypoint_metrics"):
            assert -1 <= run[key]["AP"] <= 1
    assert results["config"]["masks"] and results["config"]["keypoints"]
    assert {"loss_mask", "loss_keypoint"} <= set(results["final_losses"])


def test_detect_writes_masks_and_per_class_keypoints(tiny_synth):
    from rcnn_steps.experiments.runner import detect, evaluate, load_datasets

    torch.manual_seed(0)
    model = MaskRCNN(DetectorConfig.ci_mask())
    _, val = load_datasets(tiny_synth, masks=True)
    ids = val.image_ids[:3]
    results, seconds = detect(model, val, ids)
    assert seconds > 0 and results
    person = val.label_to_category_id[6]
    for r in results:
        assert "segmentation" in r and "counts" in r["segmentation"]
        assert len(r["keypoints"]) == (33 if r["category_id"] == person else 0)
    metrics = evaluate(val, ids, results)
    assert set(metrics) == {"bbox", "segm", "keypoints"}


def test_evaluate_overrides_need_their_own_results_file(tiny_synth, tmp_path, capsys):
    from rcnn_steps import cli
    from rcnn_steps.utils import read_results

    base = ["evaluate", "--preset", "ci_mask", "--max-iter", "1", "--root", str(tiny_synth)]
    base += ["--num-eval-images", "2", "--threads", "1"]
    assert cli.main([*base, "--set", "mask_aligned=True"]) == 2
    assert "--out" in capsys.readouterr().err
    assert cli.main([*base, "--set", "mask_alinged=True", "--out", str(tmp_path / "x.json")]) == 2
    assert "not a field" in capsys.readouterr().err
    out = tmp_path / "aligned.json"
    assert cli.main([*base, "--set", "mask_aligned=True", "--set", "roi_op=roialign_max",
                     "--out", str(out)]) == 0  # fmt: skip
    results = read_results(out)["results"]
    assert (
        results["config"]["mask_aligned"] is True and results["config"]["roi_op"] == "roialign_max"
    )
    assert results["overrides"] == {"mask_aligned": True, "roi_op": "roialign_max"}


@pytest.mark.parametrize("preset", ["gpu_mask", "coco_mask"])
def test_gpu_and_coco_presets_build_and_take_one_step_on_cpu(preset):
    """The presets for larger machines, built here and trained one step on tiny inputs
    (their real images are 512 and 800 px: their records' feeding resizes the data for them)."""
    from rcnn_steps.engine import TrainConfig, train
    from rcnn_steps.experiments import train_config
    from rcnn_steps.experiments.runner import feeding

    torch.manual_seed(0)
    overrides = {"keypoint_counts": (0, 0, 0, 0, 0, 11)} if preset == "gpu_mask" else {}
    config = getattr(DetectorConfig, preset)(num_classes=6, **overrides)
    model = FasterRCNN(config)
    assert config.backbone == "resnet50" and config.fpn_channels == 256
    images, targets = _batch(label=6, size=128)
    if not config.keypoints:
        targets = [{k: v for k, v in t.items() if k != "keypoints"} for t in targets]
    schedule = train_config(preset)
    short = TrainConfig(**{**schedule.to_dict(), "max_iter": 1, "warmup_steps": 0, "lr_steps": (),
                           "progress": False, "device": "cpu"})  # fmt: skip
    result = train(model, [(images, targets)], short)
    assert result.step == 1 and all(map(lambda v: v == v, result.losses.values()))
    feed = feeding(preset)
    assert feed["flip"] and feed["test_size"] in (512, 800)
    if preset == "coco_mask":
        assert (schedule.lr, schedule.max_iter, schedule.lr_steps) == (0.02, 160_000, (120_000,))
        assert (schedule.momentum, schedule.weight_decay) == (0.9, 1e-4)
        assert config.rpn_post_nms_top_n_test == 1000 and config.detections_per_img == 100
        assert feed["batch_size"] == 2 and feed["max_size"] == 1333


def test_keypoint_ap_of_noisy_truth_is_one_without_noise_and_falls_with_it(tiny_synth):
    from rcnn_steps.experiments.runner import keypoint_ap_of_noisy_truth, load_datasets

    _, val = load_datasets(tiny_synth)
    ap = keypoint_ap_of_noisy_truth(val, val.image_ids, [0, 1, 8], seed=0)
    assert ap[0.0] == 1.0
    assert ap[0.0] > ap[1.0] > ap[8.0]
    with pytest.raises(ValueError, match="no labelled keypoints"):
        keypoint_ap_of_noisy_truth(val, [], [0])


def _truth_as_results(val, shift=(0.0, 0.0), box_scale=1.0):
    """The labelled persons of ``val`` as detections, every keypoint moved by ``shift``
    pixels and each box's width and height multiplied by ``box_scale`` about its corner."""
    out = []
    for a in val.coco.dataset["annotations"]:
        if a.get("num_keypoints", 0) > 0:
            points = np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3)
            points[:, 0] += shift[0]
            points[:, 1] += shift[1]
            x, y, w, h = a["bbox"]
            out.append(dict(image_id=a["image_id"], category_id=a["category_id"], score=1.0,
                            bbox=[x, y, w * box_scale, h * box_scale],
                            keypoints=points.ravel().tolist()))  # fmt: skip
    return out


def test_keypoint_errors_measure_a_known_shift_in_pixels_and_heatmap_cells(tiny_synth):
    from rcnn_steps.experiments.runner import (
        keypoint_ap_of_noisy_truth,
        keypoint_errors,
        load_datasets,
    )
    from rcnn_steps.experiments.scoring import RAYLEIGH_MEDIAN

    _, val = load_datasets(tiny_synth)
    ids = val.image_ids
    exact = keypoint_errors(val, ids, _truth_as_results(val), heatmap_size=56)
    assert exact["matched"] == exact["objects"] > 0 and exact["keypoints"] > 0
    assert exact["median_px"] == exact["median_cells"] == exact["noise_px"] == 0.0
    moved = keypoint_errors(val, ids, _truth_as_results(val, (3.0, 4.0)), heatmap_size=56)
    assert moved["median_px"] == moved["p90_px"] == 5.0  # a 3-4-5 triangle, every keypoint
    assert moved["noise_px"] == pytest.approx(5.0 / RAYLEIGH_MEDIAN, abs=1e-3)
    # in cells: each person's (dx, dy) divided by its box's w / 56 and h / 56
    cells = []
    for a in val.coco.dataset["annotations"]:
        if a.get("num_keypoints", 0) > 0:
            seen = np.asarray(a["keypoints"]).reshape(-1, 3)[:, 2] > 0
            w, h = a["bbox"][2:]
            cells += [np.hypot(3.0 * 56 / w, 4.0 * 56 / h)] * int(seen.sum())
    assert moved["median_cells"] == pytest.approx(float(np.median(cells)), abs=1e-3)
    # boxes that overlap too little are not matched; a person with no detection is counted
    far = keypoint_errors(val, ids, _truth_as_results(val, box_scale=0.3), heatmap_size=56)
    assert far["matched"] == 0 and far["keypoints"] == 0 and far["median_px"] != far["median_px"]
    assert keypoint_errors(val, ids, [], heatmap_size=56)["objects"] == exact["objects"]
    # Gaussian noise of std s per axis gives a median error of s * sqrt(2 ln 2)
    rng = np.random.default_rng(0)
    d = np.hypot(*rng.normal(0, 2.0, size=(2, 200_000)))
    assert float(np.median(d)) == pytest.approx(2.0 * RAYLEIGH_MEDIAN, rel=0.01)
    assert keypoint_ap_of_noisy_truth(val, ids, [0])[0.0] == 1.0
    with pytest.raises(ValueError, match="no labelled keypoints"):
        keypoint_errors(val, [], [], heatmap_size=56)


def test_fit_few_images_trains_and_scores_on_the_same_person_images(tiny_synth):
    from rcnn_steps.experiments.runner import fit_few_images, load_datasets

    train_set, _ = load_datasets(tiny_synth)
    out = fit_few_images(
        "ci_mask", {"masks": False, "keypoints": True}, num_images=2, max_iter=2,
        class_name="person", root=tiny_synth,
    )  # fmt: skip
    assert len(out["image_ids"]) == 2 and out["max_iter"] == 2
    for image_id in out["image_ids"]:  # each chosen image holds a person
        names = {train_set.coco.cats[a["category_id"]]["name"]
                 for a in train_set.coco.imgToAnns[image_id]}  # fmt: skip
        assert "person" in names
    assert "loss_keypoint" in out["final_losses"] and out["loss_history"]
    assert set(out["metrics"]) >= {"bbox"} and 0.0 <= out["metrics"]["bbox"]["AP"] <= 1.0


def test_fit_few_images_says_what_is_wrong_with_its_arguments(tiny_synth):
    from rcnn_steps.experiments.runner import fit_few_images

    with pytest.raises(ValueError, match="no class 'cat' in this set; its classes are"):
        fit_few_images("ci_mask", class_name="cat", root=tiny_synth, max_iter=1)
    with pytest.raises(ValueError, match="only .* train images hold a 'person'"):
        fit_few_images("ci_mask", class_name="person", num_images=10_000, root=tiny_synth)
    with pytest.raises(ValueError, match="num_images must be at least 1"):
        fit_few_images("ci_mask", num_images=0, root=tiny_synth)


def _detector_with_detections(**overrides):
    """A ci_mask model whose RPN and box predictor have larger weights than at init, so
    that its untrained box branch keeps many detections."""
    torch.manual_seed(0)
    model = FasterRCNN(DetectorConfig.ci_mask(**overrides))
    with torch.no_grad():
        for p in model.rpn.head.parameters():
            p.normal_(std=0.2)
        for p in model.roi_heads.box_predictor.parameters():
            p.normal_(std=0.1)
    return model


@pytest.mark.parametrize("fpn", [True, False])
def test_keypoint_heatmaps_of_the_detections_equal_inspects(fpn):
    """On the model's own detections, ``keypoint_heatmaps`` gives the heatmaps the test-time
    cascade computed; in train mode too (it runs in eval mode and restores the mode)."""
    model = _detector_with_detections(num_classes=2, keypoint_counts=(0, 11), fpn=fpn).eval()
    images, _ = _batch()
    out = model.inspect(images)
    with_kp = out["detection_has_keypoints"]
    boxes = [d["boxes"][k] for d, k in zip(out["detections"], with_kp, strict=True)]
    labels = [d["labels"][k] for d, k in zip(out["detections"], with_kp, strict=True)]
    assert min(len(b) for b in boxes) > 0  # both images have detections of class 2
    maps = model.keypoint_heatmaps(images, boxes, labels)
    assert maps.shape == (sum(len(b) for b in boxes), 11, 56, 56)
    torch.testing.assert_close(maps, out["detection_heatmaps"])
    model.train()
    torch.testing.assert_close(model.keypoint_heatmaps(images, boxes), maps)  # labels: class 2
    assert model.training


def test_keypoint_heatmaps_read_each_box_s_own_keypoint_set():
    """Two classes with keypoint sets of 3 and 5: a box reads its class's channels, the
    slots past its count hold its first channel (as ``KeypointBranch.select``)."""
    model = _detector_with_detections(num_classes=2, keypoint_counts=(3, 5)).eval()
    images, _ = _batch()
    box = torch.tensor([[8.0, 10.0, 30.0, 40.0]])
    first = model.keypoint_heatmaps(images[:1], [box], [torch.tensor([1])])
    second = model.keypoint_heatmaps(images[:1], [box], [torch.tensor([2])])
    assert first.shape == second.shape == (1, 5, 56, 56)
    assert not torch.allclose(first[:, :3], second[:, :3])  # other channels
    torch.testing.assert_close(first[:, 3:], first[:, :1].expand(1, 2, 56, 56))


def test_keypoint_heatmaps_say_what_is_wrong():
    images, _ = _batch()
    box = [torch.tensor([[8.0, 10.0, 30.0, 40.0]])]
    two_sets = _detector_with_detections(num_classes=2, keypoint_counts=(3, 5))
    with pytest.raises(ValueError, match=r"classes \[1, 2\] have keypoints; give the labels"):
        two_sets.keypoint_heatmaps(images[:1], box)
    with pytest.raises(ValueError, match="2 images but 1 box tensors"):
        two_sets.keypoint_heatmaps(images, box, [torch.tensor([1])])
    one_set = _detector_with_detections(num_classes=2, keypoint_counts=(0, 11))
    for bad in ([1], [7], [2, 2]):  # a class without keypoints, no such class, too many
        with pytest.raises(ValueError, match="one class with keypoints per box"):
            one_set.keypoint_heatmaps(images[:1], box, [torch.tensor(bad)])
    no_branch = _detector_with_detections(keypoints=False)
    with pytest.raises(ValueError, match="no keypoint branch"):
        no_branch.keypoint_heatmaps(images[:1], box)


def test_branch_gradient_norms_of_mask_rcnn_scale_with_the_keypoint_loss_weight():
    """Six losses and their total; the keypoint term's gradient is its loss weight times
    the unweighted one (same weights, same sampled RoIs), and the other terms do not move."""
    model = _detector_with_detections()
    images, targets = _batch(label=6)
    torch.manual_seed(1)
    full = branch_gradient_norms(model, images, targets)
    model.roi_heads.keypoint_branch.loss_weight = 0.1
    torch.manual_seed(1)
    tenth = branch_gradient_norms(model, images, targets)
    assert set(full) == LOSSES | {"total_loss"}
    assert all(math.isfinite(v) and v > 0 for v in full.values())
    assert tenth["loss_keypoint"] == pytest.approx(0.1 * full["loss_keypoint"], rel=1e-4)
    for name in LOSSES - {"loss_keypoint"}:
        assert tenth[name] == pytest.approx(full[name], rel=1e-5), name
    assert tenth["total_loss"] < full["total_loss"]


def test_a_keypoint_run_records_its_keypoint_errors(tiny_synth):
    from rcnn_steps.experiments.runner import run_setting

    record = run_setting("kp", {"masks": False, "keypoints": True}, 0, "ci_mask", 1,
                         root=tiny_synth, device="cpu", num_eval_images=4)  # fmt: skip
    errors = record["keypoint_errors"]
    assert set(errors) == {"objects", "matched", "keypoints", "median_px", "p90_px",
                           "median_cells", "noise_px"}  # fmt: skip
    assert errors["objects"] > 0 and 0 <= errors["matched"] <= errors["objects"]
    boxes_only = {"masks": False, "keypoints": False}
    record = run_setting("box", boxes_only, 0, "ci_mask", 1, root=tiny_synth, device="cpu",
                         num_eval_images=2)  # fmt: skip
    assert "keypoint_errors" not in record
