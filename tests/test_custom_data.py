"""Your own data, end to end (data/README.md's worked example), and the parts of the COCO
format the synthetic set does not use (polygons, compressed-RLE crowds, images of many
sizes, resizing to a short side)."""

import json
import re

import pytest
import torch

from rcnn_steps.data import CocoDataset, ResizeShortestSide
from rcnn_steps.data.__main__ import main as data_main
from rcnn_steps.data.example import make_example


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    return make_example(tmp_path_factory.mktemp("example") / "shapes", num_train=12, num_val=6)


def test_the_worked_example_trains_and_predicts(example, tmp_path, capsys):
    from rcnn_steps import cli
    from rcnn_steps.engine import read_metrics

    assert data_main(["check", str(example)]) == 0
    run = tmp_path / "runs" / "shapes"
    argv = ["train", "--data", str(example), "--preset", "ci_mask", "--out", str(run)]
    argv += ["--max-iter", "4", "--batch-size", "2", "--checkpoint-every", "2", "--no-progress"]
    assert cli.main(argv) == 0
    description = json.loads((run / "run.json").read_text())
    config = description["config"]
    # fitted to the data: 3 classes, two keypoint sets of their own
    assert config["num_classes"] == 3 and config["keypoint_counts"] == [3, 4, 0]
    assert description["data"]["class_names"] == ["__background__", "arrow", "kite", "tile"]
    records = read_metrics(run / "metrics.jsonl")
    assert records[-1]["step"] == 4
    final = records[-1]
    assert {"eval/bbox/AP", "eval/segm/AP", "eval/keypoints/AP"} <= set(final)
    # the run folder is not overwritten by accident...
    assert cli.main(argv) == 2
    assert re.search("--resume.*--overwrite", capsys.readouterr().err)
    # ...and resumes to a longer schedule
    assert cli.main([*argv[:-7], "--max-iter", "6", "--batch-size", "2", "--resume",
                     "--no-progress"]) == 0  # fmt: skip
    assert read_metrics(run / "metrics.jsonl")[-1]["step"] == 6

    out = tmp_path / "predictions"
    images = example / "val"
    assert cli.main(["predict", "--checkpoint", str(run / "last.pt"), "--images", str(images),
                     "--out", str(out), "--score-threshold", "0.0"]) == 0  # fmt: skip
    drawn = sorted(p.name for p in out.glob("*.png"))
    assert drawn == sorted(p.name for p in images.glob("*.png"))
    found = json.loads((out / "detections.json").read_text())
    assert found and {"file_name", "class_name", "bbox", "score", "segmentation"} <= set(found[0])
    arrows = [d for d in found if d["class_name"] == "arrow"]
    kites = [d for d in found if d["class_name"] == "kite"]
    tiles = [d for d in found if d["class_name"] == "tile"]
    assert all(len(d["keypoints"]) == 9 for d in arrows)
    assert all(len(d["keypoints"]) == 12 for d in kites)
    assert all(not any(d["keypoints"]) for d in tiles)
    assert cli.main(["predict", "--checkpoint", str(run / "last.pt"), "--images", str(images),
                     "--out", str(out)]) == 2  # fmt: skip
    assert "not empty" in capsys.readouterr().err
    assert cli.main(["predict", "--checkpoint", str(run / "last.pt"), "--images",
                     str(tmp_path / "nowhere"), "--out", str(tmp_path / "p2")]) == 2  # fmt: skip
    assert "does not exist" in capsys.readouterr().err
    # a weights-only copy beside run.json predicts the same detections
    slim = run / "model.pt"
    assert cli.main(["export", "--checkpoint", str(run / "last.pt"), "--out", str(slim)]) == 0
    assert slim.stat().st_size < (run / "last.pt").stat().st_size
    assert cli.main(["export", "--checkpoint", str(run / "last.pt"), "--out", str(slim)]) == 2
    assert "exists: pass --overwrite" in capsys.readouterr().err
    assert cli.main(["predict", "--checkpoint", str(slim), "--images", str(images), "--out",
                     str(tmp_path / "p3"), "--score-threshold", "0.0"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "p3" / "detections.json").read_text()) == found


def test_polygons_crowds_and_sizes_load_as_pycocotools_reads_them(example):
    ds = CocoDataset(example / "train", example / "annotations" / "instances_train.json")
    sizes = {(img["height"], img["width"]) for img in ds.coco.imgs.values()}
    assert len(sizes) > 5  # images of many sizes
    crowds = [a for a in ds.coco.anns.values() if a["iscrowd"]]
    assert crowds and isinstance(crowds[0]["segmentation"], dict)  # compressed RLE
    with_crowd = CocoDataset(
        example / "train", example / "annotations" / "instances_train.json", include_crowd=True
    )
    for i, image_id in enumerate(ds.image_ids):
        _, target = ds[i]
        anns = [a for a in ds.coco.imgToAnns[image_id] if not a["iscrowd"]]
        assert len(target["boxes"]) == len(anns)  # crowds left out of training targets
        for mask, ann in zip(target["masks"], anns, strict=True):
            assert isinstance(ann["segmentation"], list)  # polygons
            assert torch.equal(mask, torch.from_numpy(ds.coco.annToMask(ann)))
        _, all_target = with_crowd[i]
        assert int(all_target["iscrowd"].sum()) == sum(
            a["iscrowd"] for a in ds.coco.imgToAnns[image_id]
        )
    # the two keypoint sets: arrows have 3 keypoints, kites 4, K_max = 4
    assert ds.num_keypoints == 4
    _, target = ds[0]
    for label, kps in zip(target["labels"].tolist(), target["keypoints"], strict=True):
        labelled = int((kps[:, 2] > 0).sum())
        assert labelled == {1: 3, 2: 4, 3: 0}[label]


def test_resize_to_a_short_side_keeps_boxes_masks_and_keypoints_together(example):
    ds = CocoDataset(example / "val", example / "annotations" / "instances_val.json")
    resize = ResizeShortestSide((200, 240), max_size=400)
    torch.manual_seed(0)
    seen = set()
    for i in range(len(ds)):
        image, target = ds[i]
        out, resized = resize(image, target)
        h, w = out.shape[-2:]
        seen.add(min(h, w))
        assert min(h, w) in (200, 240) or max(h, w) == 400
        sy, sx = resized["scale"]
        assert sy == pytest.approx(h / image.shape[-2]) and sx == pytest.approx(w / image.shape[-1])
        torch.testing.assert_close(
            resized["boxes"], target["boxes"] * torch.tensor([sx, sy, sx, sy])
        )
        for mask, box in zip(resized["masks"], resized["boxes"], strict=True):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            # the resized mask fills its resized box, to a pixel
            assert xs.min() >= box[0] - 1.5 and xs.max() <= box[2] + 0.5
            assert ys.min() >= box[1] - 1.5 and ys.max() <= box[3] + 0.5
        kps, new = target["keypoints"], resized["keypoints"]
        torch.testing.assert_close(new[..., 0], kps[..., 0] * sx)
        torch.testing.assert_close(new[..., 2], kps[..., 2])
    assert seen == {200, 240}  # both sizes drawn: scale jitter
