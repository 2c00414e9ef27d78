"""The selective-search proposal cache (rcnn_steps.data.proposals): where it lives, what a
file holds, and the refusals of a missing or stale one."""

import numpy as np
import pytest
import torch

import rcnn_steps.detectors.rcnn
from rcnn_steps.data import CocoDataset
from rcnn_steps.data.proposals import load_proposals, make_proposals, proposals_path
from rcnn_steps.utils import results_dir


def _split(root, split):
    return CocoDataset(root / split, root / "annotations" / f"instances_{split}.json")


def test_the_cache_of_a_split_lives_in_results_under_its_mode():
    assert proposals_path("train") == results_dir() / "proposals_fast_train.npz"
    assert proposals_path("val", "quality") == results_dir() / "proposals_quality_val.npz"


def test_a_cache_holds_ranked_boxes_seconds_and_the_data_it_was_made_from(tiny_synth, tmp_path):
    train = _split(tiny_synth, "train")
    path = tmp_path / "props.npz"
    info = make_proposals(train, 3, path, mode="single", max_proposals=40, seed=2)
    with np.load(path) as data:
        assert set(data.files) == {
            "image_ids", "counts", "boxes", "seconds", "mode", "seed", "fingerprint"
        }  # fmt: skip
        assert data["boxes"].dtype == np.uint16 and data["counts"].sum() == len(data["boxes"])
        assert data["image_ids"].tolist() == [int(i) for i in train.image_ids[:3]]
        assert str(data["mode"]) == "single" and int(data["seed"]) == 2
        assert str(data["fingerprint"]) == train.fingerprint and len(data["seconds"]) == 3
        counts = data["counts"].tolist()
    assert info == {"num_images": 3, "mean_proposals": float(np.mean(counts))}
    props = load_proposals(path, train)
    assert list(props) == [int(i) for i in train.image_ids[:3]]
    assert [len(p) for p in props.values()] == counts
    for boxes in props.values():
        assert boxes.dtype == torch.float32 and boxes.shape[1] == 4 and len(boxes) <= 40
        assert (boxes[:, 2:] > boxes[:, :2]).all()  # exclusive ends: never empty


def test_a_missing_or_stale_cache_names_the_command_that_makes_it(tiny_synth, tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m rcnn_steps.rcnn proposals"):
        load_proposals(tmp_path / "absent.npz")
    path = tmp_path / "val.npz"
    make_proposals(_split(tiny_synth, "val"), 1, path, mode="single", max_proposals=10)
    with pytest.raises(ValueError, match="made from other data.*rcnn_steps.rcnn proposals"):
        load_proposals(path, _split(tiny_synth, "train"))


@pytest.mark.parametrize("split", ["train", "val"])
def test_the_committed_caches_still_load(split):
    path = proposals_path(split)
    if not path.exists():
        pytest.skip(f"{path} is not in this checkout")
    props = load_proposals(path)
    assert props and all(p.ndim == 2 and p.shape[1] == 4 for p in props.values())


def test_the_chapters_import_the_cache_from_rcnn():
    """Chapters 02 to 04 import load_proposals and proposals_path from rcnn_steps.detectors.rcnn."""
    assert rcnn_steps.detectors.rcnn.load_proposals is load_proposals
    assert rcnn_steps.detectors.rcnn.proposals_path is proposals_path
