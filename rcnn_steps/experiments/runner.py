"""Training and evaluating any detector of the book on a COCO-format folder: the top of
the library.

The models (:mod:`rcnn_steps.detectors.faster_rcnn`, :mod:`rcnn_steps.detectors.fast_rcnn`,
:mod:`rcnn_steps.detectors.mask_rcnn`) know how to compute losses and detections; the engine
(:mod:`rcnn_steps.engine`) knows how to take SGD steps; the evaluation module knows COCO
AP. This module puts them together, and everything that *runs* a detector goes through it:
the chapters' ``evaluate`` commands, the ablation grids
(:mod:`rcnn_steps.experiments.ablations`) and ``python -m rcnn_steps train`` on your own
data. It reads the presets from :mod:`rcnn_steps.experiments`; nothing below imports it.

- presets: each defined once, in its record (:mod:`rcnn_steps.experiments`), read here
  through :func:`detector_config` (a :class:`~rcnn_steps.detectors.config.DetectorConfig` by
  name, with overrides), :func:`schedule` (its training schedule) and :func:`feeding`;
- data: :func:`load_datasets`, the (train, val) pair of a folder laid out as the
  synthetic set (``train/``, ``val/``, ``annotations/instances_{train,val}.json``);
- test time: :func:`detect` (one image at a time, as deployed: COCO result dicts with
  boxes, masks and keypoints as the model gives them, and seconds per image) and
  :func:`evaluate` (pycocotools' AP for each);
- :func:`run_setting`: train one detector and evaluate it, returning a JSON-able record
  (one run of a results file or of a grid);
- :func:`fit_few_images`: the first test of a detector that learns nothing (can it fit a
  handful of training images?).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from rcnn_steps.detectors.config import DetectorConfig, flat_overrides
from rcnn_steps.experiments import PRESETS, feeding, schedule
from rcnn_steps.experiments import preset as preset_record

__all__ = [
    "METHODS",
    "PRESETS",
    "detect",
    "detector_config",
    "evaluate",
    "feeding",
    "fit_few_images",
    "keypoint_ap_of_noisy_truth",
    "check_splits",
    "load_datasets",
    "run_setting",
    "schedule",
    "selective_search_proposals",
    "thread_count",
    "trim_keypoints",
]

# PRESETS (the records by name), schedule(preset, max_iter) and feeding(preset) are the
# experiments floor's, imported above: the chapters and tests import them from here.

#: How a run gets its proposals: its own RPN (Faster / Mask R-CNN) or selective search
#: (Fast R-CNN on chapter 02's cached proposals).
METHODS = ("rpn", "selective_search")


def detector_config(preset: str, overrides: dict[str, Any] | None = None) -> DetectorConfig:
    """The preset's :class:`DetectorConfig` (its record's model, :data:`PRESETS`) with
    ``overrides`` (a dict, as a grid's settings hold them), by flat field name or by
    section (``{"mask.loss": "softmax"}`` is ``{"mask_loss": "softmax"}``)."""
    return preset_record(preset).model(**flat_overrides(overrides or {}))


def load_datasets(
    root: str | Path | None = None,
    *,
    masks: bool = False,
    flip: bool = False,
    splits: tuple[str, str] = ("train", "val"),
    min_sizes: Sequence[int] | None = None,
    max_size: int | None = None,
):
    """The (train, val) :class:`~rcnn_steps.data.CocoDataset` pair of a folder holding
    ``<split>/`` image folders and ``annotations/instances_<split>.json`` (the synthetic
    set's layout; real COCO 2017's with ``splits=("train2017", "val2017")``). ``root``
    None is the book's synthetic set (generated first if missing).

    ``masks``: decode the masks (Mask R-CNN needs them; box-only detectors load faster
    without). ``flip``: random horizontal flips on the train set, keypoints swapped by
    their categories' flip pairs. ``min_sizes`` / ``max_size``: resize the train set's
    images (and targets) to a shorter side drawn from ``min_sizes``
    (:class:`~rcnn_steps.data.transforms.ResizeShortestSide`); the val set is left as it
    is (:func:`detect` resizes at test time and maps the detections back).

    The classes are the train split's: the val set is numbered by the train set's
    :class:`~rcnn_steps.data.LabelMap`, and refused (a :class:`~rcnn_steps.data.
    DatasetError` naming both files) when a category of its file is not the train file's
    same id, name and keypoint names; it may lack a class. A train split with no
    annotation to train on (none, or only crowds) is refused too (:func:`check_splits`)."""
    from rcnn_steps.data import CocoDataset, ensure_synth
    from rcnn_steps.data.transforms import (
        Compose,
        RandomHorizontalFlip,
        ResizeShortestSide,
        flip_pairs_by_label,
    )

    root = Path(root) if root is not None else ensure_synth()
    datasets = []
    for i, split in enumerate(splits):
        dataset = CocoDataset(
            root / split, root / "annotations" / f"instances_{split}.json", load_masks=masks
        )
        steps = []
        if i == 0 and min_sizes:
            steps.append(ResizeShortestSide(min_sizes, max_size))
        if flip and i == 0:
            steps.append(RandomHorizontalFlip(0.5, flip_pairs_by_label(dataset.categories)))
        if steps:
            dataset.transforms = steps[0] if len(steps) == 1 else Compose(steps)
        datasets.append(dataset)
    check_splits(*datasets)
    return tuple(datasets)


def check_splits(train_set, *others) -> None:
    """The rule of a (train, val) pair, in one place: the train split has something to
    train on, and every other split is numbered by the train split's
    :class:`~rcnn_steps.data.LabelMap` (:meth:`~rcnn_steps.data.CocoDataset.
    use_label_map`, which refuses one whose categories disagree), and every image file
    each split lists is there (a stat each: a missing val image would otherwise stop the
    run at its first evaluation, after the training it was to judge). Raises
    :class:`~rcnn_steps.data.DatasetError` naming the files, before any work starts."""
    from rcnn_steps.data import DatasetError

    if not any(not a.get("iscrowd", 0) for a in train_set.coco.anns.values()):
        crowds = len(train_set.coco.anns)
        held = f"only {crowds} crowd regions" if crowds else "no annotations"
        raise DatasetError(
            f"{train_set.annotation_file}: the train split has nothing to train on "
            f"({len(train_set)} images, {held}); a detector learns from annotated objects "
            "(not crowds): annotate some, or pass the right file"
        )
    for other in others:
        other.use_label_map(train_set.label_map)
    for dataset in (train_set, *others):
        missing = [
            info["file_name"]
            for info in dataset.coco.imgs.values()
            if not (dataset.images_dir / info["file_name"]).is_file()
        ]
        if missing:
            raise DatasetError(
                f"{dataset.annotation_file} lists {len(missing)} image(s) that are not in "
                f"{dataset.images_dir}, e.g. {missing[0]!r}; training would stop when it "
                "first meets one (a val image: after training): add the files, or remove "
                "their entries from the file"
            )


# ----------------------------------------------------------------------------------------
# Test time


def _resized_back(det: dict[str, torch.Tensor], scale: tuple[float, float], size) -> dict:
    """Detections of a resized image mapped back to the original ``size`` (h, w): boxes and
    keypoints divided by the scale, pasted masks resized (bilinear)."""
    sy, sx = scale
    out = dict(det)
    out["boxes"] = det["boxes"] / torch.tensor([sx, sy, sx, sy], device=det["boxes"].device)
    if "keypoints" in det:
        kps = det["keypoints"].clone()
        kps[..., 0] /= sx
        kps[..., 1] /= sy
        out["keypoints"] = kps
    if "masks" in det and len(det["masks"]):
        out["masks"] = torch.nn.functional.interpolate(
            det["masks"], size=tuple(size), mode="bilinear", align_corners=False
        )
    elif "masks" in det:
        out["masks"] = det["masks"].new_zeros((0, 1, *size))
    return out


@torch.no_grad()
def detect(
    model: torch.nn.Module,
    dataset,
    image_ids: Sequence[int],
    proposals: dict[int, torch.Tensor] | None = None,
    *,
    test_size: int | None = None,
    max_size: int | None = None,
) -> tuple[list[dict[str, Any]], float]:
    """Run ``model`` in eval mode on ``image_ids`` of ``dataset``, one image at a time as
    at test time: ``(COCO result dicts, mean seconds per image)``.

    Each result has ``bbox`` and ``score``, plus ``segmentation`` (an RLE of the mask
    binarised at 0.5) when the model returns ``masks`` and ``keypoints`` when it returns
    them (trimmed to each class's own keypoint count). The time covers the network only
    (preprocessing, backbone, RPN or RoI heads, NMS, masks and keypoints), not image
    loading or the RLE encoding. ``proposals`` (``{image_id: (P, 4)}``) are passed to a
    :class:`~rcnn_steps.detectors.fast_rcnn.FastRCNN`; the other models make their own. With
    ``test_size``, each image is resized to that shorter side (longer side at most
    ``max_size``) before the model sees it, and its detections are mapped back to the
    image's own pixels, where the ground truth is.
    """
    from rcnn_steps.data.transforms import ResizeShortestSide

    resize = ResizeShortestSide(test_size, max_size) if test_size else None
    from rcnn_steps.evaluation import detections_to_coco

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counts = getattr(getattr(model, "config", None), "keypoint_counts", None)
    results: list[dict[str, Any]] = []
    seconds: list[float] = []
    for image_id in image_ids:
        image = dataset.load_image(image_id)
        size = image.shape[-2:]
        scale = None
        if resize is not None:
            image, resized = resize(image, {})
            scale = resized["scale"]
        image = image.to(device)
        args = ([image],) if proposals is None else ([image], [proposals[int(image_id)].to(device)])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        det = model(*args)[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - t0)
        if scale is not None:
            det = _resized_back(det, scale, size)
        found = detections_to_coco(
            image_id,
            det["boxes"],
            det["scores"],
            det["labels"],
            dataset.label_to_category_id,
            masks=det.get("masks"),
            keypoints=det.get("keypoints"),
        )
        trim_keypoints(found, det["labels"], counts)
        results += found
    model.train(was_training)
    return results, sum(seconds) / max(len(seconds), 1)


def trim_keypoints(
    results: Sequence[dict[str, Any]], labels: torch.Tensor, counts: Sequence[int] | None
) -> None:
    """Cut each COCO result's ``keypoints`` to its class's own count (``counts[label -
    1]``; a model's outputs are padded to the widest set), in place."""
    if not counts:
        return
    for result, label in zip(results, labels.tolist(), strict=True):
        if "keypoints" in result:
            k = counts[label - 1] if 0 < label <= len(counts) else 0
            result["keypoints"] = result["keypoints"][: 3 * k]


def evaluate(
    dataset, image_ids: Sequence[int], results: Sequence[dict[str, Any]]
) -> dict[str, dict[str, float]]:
    """COCO AP of ``results`` (from :func:`detect`) on ``image_ids`` of ``dataset``:
    ``{"bbox": metrics}``, plus ``"segm"`` when the results have masks and
    ``"keypoints"`` when they have keypoints and the data has a keypoint category
    (:func:`rcnn_steps.evaluation.coco_evaluate`)."""
    from rcnn_steps.evaluation import coco_evaluate, subset_ground_truth

    kinds = ["bbox"]
    if results and "segmentation" in results[0]:
        kinds.append("segm")
    out = {}
    for kind in kinds:
        gt = subset_ground_truth(dataset.coco, image_ids)
        out[kind] = {k: round(float(v), 4) for k, v in coco_evaluate(gt, results, kind).items()}
    keypoint_cats = [c for c in dataset.categories if c.get("keypoints")]
    if results and "keypoints" in results[0] and keypoint_cats:
        out["keypoints"] = _keypoint_ap(dataset, image_ids, results, keypoint_cats)
    return out


def _keypoint_ap(dataset, image_ids, results, categories) -> dict[str, float]:
    """Keypoint AP, category by category (each with its own keypoint count and OKS
    sigmas: COCOeval takes one set of sigmas per evaluation), then the mean over the
    categories, which is what COCOeval reports for several categories of one set."""
    from rcnn_steps.evaluation import coco_evaluate, subset_ground_truth

    gt = subset_ground_truth(dataset.coco, image_ids)
    per_category = []
    for cat in categories:
        k = len(cat["keypoints"])
        sigmas = cat.get("oks_sigmas") or (dataset.oks_sigmas if k == 17 else [0.05] * k)
        if len(sigmas) != k:
            sigmas = [0.05] * k
        one = dict(
            gt,
            categories=[cat],
            annotations=[a for a in gt["annotations"] if a["category_id"] == cat["id"]],
        )
        found = [r for r in results if r["category_id"] == cat["id"]]
        per_category.append(coco_evaluate(one, found, "keypoints", kpt_oks_sigmas=sigmas))
    merged = {}
    for name in per_category[0]:
        defined = [m[name] for m in per_category if m[name] > -1]
        merged[name] = round(float(sum(defined) / len(defined)), 4) if defined else -1.0
    return merged


def keypoint_ap_of_noisy_truth(
    dataset, image_ids: Sequence[int], noise_px: Sequence[float], seed: int = 0
) -> dict[float, float]:
    """How exact object keypoint similarity (OKS) asks keypoints to be on ``dataset``'s
    objects: ``{noise: keypoint AP}`` of the ground truth itself scored as detections
    (box, score 1), each labelled keypoint moved by Gaussian noise of ``noise`` pixels
    (standard deviation, in x and in y). Noise 0 scores 1.0.

    OKS (COCO's keypoint metric, used by Mask R-CNN's Table 4-6) is
    ``mean_i exp(-d_i^2 / (2 s^2 k_i^2))`` over labelled keypoints, with ``s^2`` the
    object's area and ``k_i = 2 sigma_i``: the same pixel error costs more on a small
    object."""
    import numpy as np

    rng = np.random.default_rng(seed)
    wanted = set(image_ids)
    truth = [
        a
        for a in dataset.coco.dataset["annotations"]
        if a["image_id"] in wanted and a.get("num_keypoints", 0) > 0
    ]
    if not truth:
        raise ValueError("keypoint_ap_of_noisy_truth: these images hold no labelled keypoints")
    categories = [c for c in dataset.categories if c.get("keypoints")]
    out = {}
    for noise in noise_px:
        results = []
        for a in truth:
            points = np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3)
            points[:, :2] += rng.normal(0.0, float(noise), size=(len(points), 2))
            points[:, 2] = 1.0
            results.append(
                dict(
                    image_id=a["image_id"],
                    category_id=a["category_id"],
                    bbox=list(a["bbox"]),
                    score=1.0,
                    keypoints=points.ravel().tolist(),
                )
            )
        out[float(noise)] = _keypoint_ap(dataset, image_ids, results, categories)["AP"]
    return out


def thread_count(threads: int | None):
    """A context manager: torch's CPU thread count set to ``threads`` inside (None: left
    as it is), restored after. Test-time timings are taken with a fixed count so that
    rows measured by different commands compare."""
    import contextlib

    @contextlib.contextmanager
    def scope():
        before = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    return scope()


def selective_search_proposals(
    dataset, split: str, num_images: int, root: str | Path | None = None
) -> tuple[dict[int, torch.Tensor], float]:
    """Selective-search proposals for the first ``num_images`` images of ``dataset``:
    ``({image_id: (P, 4)}, seconds per image it took)``.

    For the book's set (``root`` None) they are chapter 02's cache
    (``results/proposals_fast_<split>.npz``, made by ``python -m rcnn_steps.rcnn
    proposals``; a stale cache is an error that names that command) when it holds the
    images asked for (its 400 train and 200 val images); beyond those (the ladder trains
    on all 1000 train images) they are the set's own cache, as for any other ``root``.
    For any other ``root`` they are made on first use and cached beside the data
    (``<root>/proposals_fast_<split>.npz``; :func:`rcnn_steps.experiments.ladder.prepare_proposals`
    makes or extends it before a grid starts).
    """
    import numpy as np

    from rcnn_steps.data.proposals import load_proposals, make_proposals, proposals_path

    path = proposals_path(split) if root is None else None
    if path is None or (path.exists() and not _covers(path, dataset, num_images)):
        if root is None:
            from rcnn_steps.data import ensure_synth

            root = ensure_synth()
        path = Path(root) / f"proposals_fast_{split}.npz"
        stale = False
        if path.exists():
            with np.load(path) as data:
                stale = str(data["fingerprint"]) != dataset.fingerprint
        if not path.exists() or stale:
            make_proposals(dataset, num_images, path)
    proposals = load_proposals(path, dataset)
    with np.load(path) as data:
        seconds = float(np.mean(data["seconds"])) if len(data["seconds"]) else 0.0
    wanted = [int(i) for i in dataset.image_ids[:num_images]]
    missing = [i for i in wanted if i not in proposals]
    if missing:
        raise ValueError(
            f"{path} has no proposals for {len(missing)} of the first {num_images} {split} "
            f"images (e.g. {missing[:3]}); remake it with `python -m rcnn_steps.rcnn "
            f"proposals --split {split} --num-images {num_images}`"
        )
    return {i: proposals[i] for i in wanted}, seconds


def _covers(path: Path, dataset, num_images: int) -> bool:
    """Whether the proposal cache ``path`` holds the first ``num_images`` images of
    ``dataset`` (whatever data it was made from: a stale cache is refused on loading)."""
    import numpy as np

    with np.load(path) as data:
        held = {int(i) for i in data["image_ids"]}
    return all(int(i) in held for i in dataset.image_ids[:num_images])


# ----------------------------------------------------------------------------------------
# One run: train, then evaluate


def run_setting(
    name: str,
    overrides: dict[str, Any],
    seed: int,
    preset: str,
    max_iter: int | None = None,
    *,
    method: str = "rpn",
    num_train_images: int | None = None,
    root: str | Path | None = None,
    batch_size: int | None = None,
    num_eval_images: int | None = None,
    device: str = "auto",
    progress: bool = False,
    timing_threads: int | None = None,
    flip: bool | None = None,
    model_builder: Callable[[DetectorConfig], torch.nn.Module] | None = None,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train one detector (``preset``'s config with ``overrides``, seeded by ``seed``) on
    the train split of ``root`` (default: the book's synthetic set) with
    :func:`rcnn_steps.engine.train`, and evaluate it on the first ``num_eval_images``
    val images (default :data:`rcnn_steps.experiments.evolution.NUM_EVAL_IMAGES`): COCO box AP, and
    mask and keypoint AP when the config has those branches.

    ``method="rpn"`` trains a :class:`~rcnn_steps.detectors.faster_rcnn.FasterRCNN` (with its mask
    and keypoint branches if the config turns them on); ``method="selective_search"`` a
    :class:`~rcnn_steps.detectors.fast_rcnn.FastRCNN` with the same config on selective-search
    proposals (:func:`selective_search_proposals`). ``num_train_images`` restricts
    training to the first images of the train set (default: all). The images are fed as
    the preset's record says (:func:`feeding`: images per batch, resizing in training and
    at test time, random horizontal flips), as ``python -m rcnn_steps train`` feeds them;
    ``batch_size`` and ``flip`` override the record's. Selective-search proposals are
    cached at the images' own size, so ``method="selective_search"`` refuses a preset
    that resizes them. ``timing_threads`` sets torch's CPU thread count while the val
    images are detected and timed. ``model_builder(config)`` replaces the model (e.g.
    :func:`rcnn_steps.detectors.mask_rcnn.torchvision_mask_rcnn` for a baseline trained the same
    way); ``out_dir`` keeps the run's checkpoint and ``metrics.jsonl``.

    Returns a JSON-able dict: ``name, seed, preset, method, max_iter, overrides,
    metrics`` (box; rounded to 4 digits), ``segm_metrics`` / ``keypoint_metrics`` (with
    those branches), ``num_train_images, num_eval_images, network_seconds_per_image,
    proposal_seconds_per_image`` (selective search's, from the cache; 0 for the RPN),
    ``seconds_per_image``, ``timing_threads``, ``wall_time_s``, ``train_seconds,
    eval_seconds`` and the :meth:`~rcnn_steps.engine.TrainResult.summary` fields.
    """
    from rcnn_steps.data import collate_fn
    from rcnn_steps.detectors.faster_rcnn import FasterRCNN
    from rcnn_steps.engine import TrainConfig, train
    from rcnn_steps.experiments.evolution import NUM_EVAL_IMAGES, evaluation_image_ids
    from rcnn_steps.utils import seed_everything

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; one of {list(METHODS)}.")
    t0 = time.perf_counter()
    config = detector_config(preset, overrides)
    feed = preset_record(preset).feeding
    batch_size = feed.batch_size if batch_size is None else batch_size
    flip = feed.flip if flip is None else flip
    if method == "selective_search" and feed.resizes:
        raise ValueError(
            f"preset {preset!r} resizes its images (min_sizes {feed.min_sizes}, test_size "
            f"{feed.test_size}) and selective-search proposals are cached at the images' own "
            "size: use method='rpn', or a preset that feeds the images as they are"
        )
    masks = config.masks and method == "rpn"
    train_set, val_set = load_datasets(
        root, masks=masks, flip=flip, min_sizes=feed.min_sizes, max_size=feed.max_size
    )
    n_train = len(train_set) if num_train_images is None else min(num_train_images, len(train_set))
    eval_ids = evaluation_image_ids(val_set, num_eval_images or NUM_EVAL_IMAGES)
    train_cfg = TrainConfig(
        **schedule(preset, max_iter),
        seed=seed,
        device=device,
        progress=progress,
        out_dir=None if out_dir is None else str(out_dir),
    )
    seed_everything(seed)
    if method == "rpn":
        model = (model_builder or FasterRCNN)(config)
        data = torch.utils.data.Subset(train_set, range(n_train))
        loader = torch.utils.data.DataLoader(
            data, batch_size=batch_size, shuffle=True, collate_fn=collate_fn
        )
        result = train(model, loader, train_cfg)
        val_proposals, proposal_seconds = None, 0.0
    else:
        from rcnn_steps.detectors.fast_rcnn import FastRCNN
        from rcnn_steps.experiments.fast_rcnn import (
            ProposalDataset,
            collate_proposals,
            proposal_detection_loss,
        )

        train_props, _ = selective_search_proposals(train_set, "train", n_train, root)
        val_proposals, proposal_seconds = selective_search_proposals(
            val_set, "val", len(eval_ids), root
        )
        model = FastRCNN(config)
        data = ProposalDataset(train_set, train_props, flip=flip)
        loader = torch.utils.data.DataLoader(
            data, batch_size=batch_size, shuffle=True, collate_fn=collate_proposals
        )
        result = train(model, loader, train_cfg, loss_fn=proposal_detection_loss)
    t1 = time.perf_counter()
    with thread_count(timing_threads):
        threads = torch.get_num_threads()
        detections, network_seconds = detect(
            model, val_set, eval_ids, val_proposals, test_size=feed.test_size,
            max_size=feed.max_size,
        )  # fmt: skip
    metrics = evaluate(val_set, eval_ids, detections)
    t2 = time.perf_counter()
    record = {
        "name": name,
        "seed": int(seed),
        "preset": preset,
        "method": method,
        "max_iter": train_cfg.max_iter,
        "overrides": json.loads(json.dumps(overrides)),
        "metrics": metrics["bbox"],
    }
    if "segm" in metrics:
        record["segm_metrics"] = metrics["segm"]
    if "keypoints" in metrics:
        record["keypoint_metrics"] = metrics["keypoints"]
    record.update(
        {
            "num_train_images": n_train,
            "num_eval_images": len(eval_ids),
            "network_seconds_per_image": round(network_seconds, 4),
            "proposal_seconds_per_image": round(proposal_seconds, 4),
            "seconds_per_image": round(network_seconds + proposal_seconds, 4),
            "timing_threads": threads,
            "wall_time_s": round(t2 - t0, 2),
            "train_seconds": round(t1 - t0, 2),
            "eval_seconds": round(t2 - t1, 2),
            **result.summary(),
        }
    )
    return record


def fit_few_images(
    preset: str,
    overrides: dict[str, Any] | None = None,
    *,
    num_images: int = 16,
    max_iter: int = 300,
    class_name: str | None = None,
    root: str | Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The first test of a detector that learns nothing: can it fit a handful of images?

    Trains ``preset``'s detector (with ``overrides``, seeded by ``seed``) on the first
    ``num_images`` train images of ``root`` that hold an object of ``class_name`` (None:
    the first images), for ``max_iter`` iterations of the preset's schedule shortened as
    :func:`schedule` does, in batches of the preset's batch size (at most ``num_images``),
    the images as they are (no flips, no resizing: the same images are then scored), then
    evaluates it on the *same* images. A model that cannot
    fit them has a defect (targets, loss, decoding); one that fits them but scores
    nothing on the val split lacks data or training, not code.

    Returns ``{"image_ids", "max_iter", "final_losses", "loss_history", "metrics"}``,
    ``metrics`` as :func:`evaluate` gives them (box AP, and mask and keypoint AP with
    those branches), on the training images."""
    from rcnn_steps.data import collate_fn
    from rcnn_steps.detectors.faster_rcnn import FasterRCNN
    from rcnn_steps.engine import TrainConfig, train
    from rcnn_steps.utils import seed_everything

    if num_images < 1:
        raise ValueError(f"fit_few_images: num_images must be at least 1, got {num_images}")
    config = detector_config(preset, overrides)
    train_set, _ = load_datasets(root, masks=config.masks)
    if class_name is not None and class_name not in train_set.class_names[1:]:
        raise ValueError(
            f"fit_few_images: no class {class_name!r} in this set; its classes are "
            f"{train_set.class_names[1:]}"
        )
    chosen = []
    for index, image_id in enumerate(train_set.image_ids):
        if class_name is not None:
            labels = {train_set.coco.cats[a["category_id"]]["name"]
                      for a in train_set.coco.imgToAnns.get(image_id, [])}  # fmt: skip
            if class_name not in labels:
                continue
        chosen.append(index)
        if len(chosen) == num_images:
            break
    if len(chosen) < num_images:
        raise ValueError(
            f"fit_few_images: only {len(chosen)} train images hold a {class_name!r}; "
            f"ask for at most that many"
        )
    seed_everything(seed)
    model = FasterRCNN(config)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(train_set, chosen),
        batch_size=min(feeding(preset)["batch_size"], num_images),
        shuffle=True,
        collate_fn=collate_fn,
    )
    train_cfg = TrainConfig(**schedule(preset, max_iter), seed=seed, progress=False)
    result = train(model, loader, train_cfg)
    image_ids = [train_set.image_ids[i] for i in chosen]
    found, _ = detect(model, train_set, image_ids)
    return {
        "image_ids": image_ids,
        "max_iter": train_cfg.max_iter,
        **{k: v for k, v in result.summary().items() if k != "train_sec_per_iter"},
        "metrics": evaluate(train_set, image_ids, found),
    }


# ----------------------------------------------------------------------------------------
# Training on any COCO-format folder (python -m rcnn_steps train)


#: The :class:`DetectorConfig` fields :func:`config_for_data` takes from the data (its
#: categories); an override may repeat them, not change them.
DATA_FIELDS = ("num_classes", "keypoint_counts")


def config_for_data(
    preset: str, dataset, overrides: dict[str, Any] | None = None
) -> DetectorConfig:
    """The preset's config fitted to a dataset: ``num_classes`` its categories,
    ``keypoint_counts`` its categories' keypoint sets (:func:`rcnn_steps.modeling.keypoint_head.
    keypoint_counts_of`), and the keypoint branch off when no category has keypoints;
    ``overrides`` last. An override of :data:`DATA_FIELDS` that differs from the data,
    or ``keypoints=True`` on data without keypoints, is a ValueError saying what the data
    has (a model with the wrong number of classes would train on wrong labels)."""
    from rcnn_steps.modeling.keypoint_head import keypoint_counts_of

    overrides = flat_overrides(overrides or {})  # DATA_FIELDS are checked by flat name
    check_data_overrides(dataset, overrides)
    counts = keypoint_counts_of(dataset.categories)
    fitted: dict[str, Any] = dict(num_classes=dataset.num_classes, keypoint_counts=counts)
    if not any(counts):
        fitted["keypoints"] = False
    return detector_config(preset, {**fitted, **overrides})


def check_data_overrides(dataset, overrides: dict[str, Any]) -> None:
    """Refuse (ValueError) overrides that contradict ``dataset``: a value of
    :data:`DATA_FIELDS` other than the data's, or ``keypoints=True`` where no category
    has keypoints. The message says what the data has."""
    from rcnn_steps.modeling.keypoint_head import keypoint_counts_of

    counts = keypoint_counts_of(dataset.categories)
    fitted = dict(num_classes=dataset.num_classes, keypoint_counts=counts)
    names = ", ".join(c["name"] for c in dataset.categories)
    for name in DATA_FIELDS:
        if name in overrides and _as_stored(overrides[name]) != _as_stored(fitted[name]):
            raise ValueError(
                f"{name}={_as_stored(overrides[name])} does not fit the data: it has "
                f"{dataset.num_classes} classes ({names}) with keypoint counts "
                f"{_as_stored(counts)}; {' and '.join(DATA_FIELDS)} are set from the data, "
                "leave them out of the overrides"
            )
    if overrides.get("keypoints") is True and not any(counts):
        raise ValueError(
            f"keypoints=True: no class of the data ({names}) has keypoints to learn; "
            "leave keypoints out of the overrides (it is turned off for such data)"
        )


def _as_stored(value: Any) -> Any:
    """A field's value as a config stores it (a list or tuple of counts: a tuple)."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def make_evaluator(
    dataset,
    image_ids: Sequence[int],
    *,
    test_size: int | None = None,
    max_size: int | None = None,
) -> Callable[[torch.nn.Module], dict[str, float]]:
    """An ``evaluate_fn`` for :func:`rcnn_steps.engine.train`: COCO AP of boxes (and masks,
    keypoints) on ``image_ids``, flattened to ``{"bbox/AP": ..., "segm/AP50": ...}``.
    Under several processes each detects its share of the images, and the detections are
    gathered before pycocotools scores them (once, in every process, with the same
    result)."""
    from rcnn_steps.engine import all_gather_objects, process_rank

    def evaluate_fn(model: torch.nn.Module) -> dict[str, float]:
        rank, world = process_rank()
        mine = list(image_ids)[rank::world]
        found, seconds = detect(model, dataset, mine, test_size=test_size, max_size=max_size)
        everyone = all_gather_objects((found, seconds))
        results = [r for part, _ in everyone for r in part]
        metrics = evaluate(dataset, image_ids, results)
        flat = {f"{kind}/{name}": v for kind, m in metrics.items() for name, v in m.items()}
        flat["seconds_per_image"] = round(sum(s for _, s in everyone) / len(everyone), 4)
        return flat

    return evaluate_fn
