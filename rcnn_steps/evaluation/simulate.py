"""Tools for studying the metrics without a model (chapter 00): part of a split's ground
truth, and detections simulated from it with chosen box noise, misses and false
positives."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rcnn_steps.evaluation.matching import _load_dataset

# ---------------------------------------------------------------------------------------
# Tools for studying the metrics without a model (chapter 00)


def subset_ground_truth(coco_gt: Any, image_ids: Sequence[int]) -> dict[str, Any]:
    """The COCO ground-truth dict restricted to ``image_ids`` (their images and
    annotations; all categories kept), for evaluating on part of a split."""
    data = _load_dataset(coco_gt)
    wanted = {int(i) for i in image_ids}
    missing = wanted - {img["id"] for img in data["images"]}
    if missing:
        raise ValueError(f"image ids {sorted(missing)[:5]} are not in the ground truth")
    return {
        **{k: v for k, v in data.items() if k not in ("images", "annotations")},
        "images": [img for img in data["images"] if img["id"] in wanted],
        "annotations": [a for a in data["annotations"] if a["image_id"] in wanted],
    }


def simulate_detections(
    dataset,
    image_ids: Sequence[int],
    box_noise: float = 0.1,
    miss_rate: float = 0.1,
    false_positives_per_image: float = 1.0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """A pretend detector made from the ground truth, for studying what the metrics reward
    (chapter 00). Not a model: it reads the answers and spoils them in controlled ways.

    For each image of ``dataset`` (a :class:`~rcnn_steps.data.CocoDataset`) in
    ``image_ids``:

    - each (non-crowd) object is missed with probability ``miss_rate``;
    - each found object's box edges move by Gaussian noise with standard deviation
      ``box_noise`` times the box's width (for x) or height (for y);
    - its score is the IoU of the noisy box with the true one plus a little noise, so
      better boxes tend to rank higher, as a trained detector's would;
    - a Poisson(``false_positives_per_image``) number of background boxes are added, with
      sizes and classes drawn from the image's objects and lower scores (uniform 0-0.6).

    Returns one dict per image, in the model-output format used across the library:
    ``boxes`` (N, 4) xyxy float, ``scores`` (N,), ``labels`` (N,) int64.
    """
    if not 0.0 <= miss_rate <= 1.0:
        raise ValueError(f"miss_rate must be in [0, 1], got {miss_rate}")
    if box_noise < 0 or false_positives_per_image < 0:
        raise ValueError("box_noise and false_positives_per_image must not be negative")
    # local, as torch is: importing rcnn_steps.evaluation loads no torch (ops does)
    import torch

    from rcnn_steps.ops import box_iou, clip_boxes_to_image

    generator = torch.Generator().manual_seed(seed)
    index_of = {image_id: i for i, image_id in enumerate(dataset.image_ids)}
    outputs = []
    for image_id in image_ids:
        info = dataset.coco.imgs[image_id]
        size = (info["height"], info["width"])
        anns = [a for a in dataset.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        if image_id not in index_of:
            raise ValueError(f"image id {image_id} is not in the dataset")
        gt = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        gt[:, 2:] += gt[:, :2]  # xywh -> xyxy
        labels = torch.tensor(
            [dataset.category_id_to_label[a["category_id"]] for a in anns], dtype=torch.int64
        )
        found = torch.rand(len(gt), generator=generator) >= miss_rate
        gt, labels = gt[found], labels[found]
        wh = (gt[:, 2:] - gt[:, :2]).repeat(1, 2)
        noisy = gt + torch.randn(gt.shape, generator=generator) * box_noise * wh
        noisy = clip_boxes_to_image(noisy, size)
        # keep every box at least one pixel wide and high, in order
        noisy[:, 2:] = torch.maximum(noisy[:, 2:], noisy[:, :2] + 1.0)
        quality = box_iou(noisy, gt).diagonal() if len(gt) else torch.zeros(0)
        scores = (quality + 0.05 * torch.randn(len(gt), generator=generator)).clamp(0.01, 1.0)

        num_fp = int(torch.poisson(torch.tensor(float(false_positives_per_image)), generator))
        if num_fp and len(anns):
            pick = torch.randint(len(anns), (num_fp,), generator=generator)
            all_wh = torch.tensor([anns[i]["bbox"][2:] for i in pick.tolist()])
            corner = torch.rand(num_fp, 2, generator=generator) * (
                torch.tensor([size[1], size[0]]) - all_wh
            ).clamp(min=1.0)
            fp_boxes = torch.cat([corner, corner + all_wh], dim=1)
            fp_labels = torch.tensor(
                [dataset.category_id_to_label[anns[i]["category_id"]] for i in pick.tolist()]
            )
            fp_scores = torch.rand(num_fp, generator=generator) * 0.6
            noisy = torch.cat([noisy, fp_boxes])
            labels = torch.cat([labels, fp_labels])
            scores = torch.cat([scores, fp_scores])
        outputs.append({"boxes": noisy, "scores": scores, "labels": labels})
    return outputs
