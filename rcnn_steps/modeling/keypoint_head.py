"""The keypoint branch of Mask R-CNN (He et al. 2017, section 5, "Mask R-CNN for Human
Pose Estimation").

"We model a keypoint's location as a one-hot mask, and adopt Mask R-CNN to predict K
masks, one for each of K keypoint types": the mask machinery of
:mod:`rcnn_steps.modeling.mask_head`, with three changes:

1. **Targets** (:func:`keypoints_to_heatmap`): "the target is a one-hot m x m binary
   mask where only a single pixel is labeled as foreground": a keypoint is mapped into
   its RoI's ``m x m`` grid and becomes the index of one cell. Keypoints that are not
   labelled (visibility 0) or fall outside the RoI have no target.
2. **Loss** (:func:`keypointrcnn_loss`): "we minimize the cross-entropy loss over an
   m^2-way softmax output (which encourages a single point to be detected)": per
   keypoint a softmax over the heatmap's cells, not a per-pixel sigmoid.
3. **Head** (:class:`KeypointRCNNHeads`, :class:`KeypointRCNNPredictor`): "a stack of
   eight 3x3 512-d conv layers, followed by a deconv layer and 2x bilinear upscaling,
   producing an output resolution of 56 x 56" from ``14 x 14`` RoIAlign features: the
   higher resolution matters for localising points.

At test time (:func:`heatmaps_to_keypoints`) each heatmap is resized to its box and the
arg-max cell is the keypoint. These equal torchvision's functions of the same name
(tests/test_keypoint_head.py). :func:`heatmap_entropy` measures how peaked a predicted
heatmap is (``log(m^2)`` for a flat one: a branch that learned nothing).

**Beyond torchvision's person-only head**: any category may define its own keypoint set
(a dataset's ``keypoint_counts``, one count per class, 0 for classes without keypoints).
The predictor then has one group of channels per keypoint class (``sum(counts)`` in all,
so a single class with K keypoints is exactly torchvision's K channels), and a RoI
reads the group of its class (:func:`keypoint_channel_table`), as a per-class mask head
reads the mask of its class. Only RoIs of keypoint classes go through the branch.

Taught in chapter 07 ("Masks and keypoints").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "KeypointBranch",
    "KeypointRCNNHeads",
    "KeypointRCNNPredictor",
    "heatmap_entropy",
    "heatmaps_to_keypoints",
    "keypoint_channel_table",
    "keypoint_counts_of",
    "keypointrcnn_inference",
    "keypointrcnn_loss",
    "keypoints_to_heatmap",
]


# ----------------------------------------------------------------------------------------
# 1. Targets and 2. loss


def keypoints_to_heatmap(
    keypoints: Tensor, rois: Tensor, heatmap_size: int
) -> tuple[Tensor, Tensor]:
    """Each keypoint as the index of one cell of its RoI's ``m x m`` grid.

    A point at image ``x`` lands in column ``floor((x - x1) * m / (x2 - x1))``; a point
    exactly on the RoI's right (bottom) edge goes to the last column (row) rather than
    one past it.

    Args:
        keypoints: ``(R, K, 3)`` ``(x, y, visibility)`` in image pixels, one row per RoI
            (the keypoints of the object it matched).
        rois: ``(R, 4)`` xyxy.
        heatmap_size: ``m`` (56).

    Returns:
        ``(heatmaps, valid)``, both ``(R, K)`` int64: the linear cell index ``y * m + x``
        (0 where not valid) and 1 where the keypoint is labelled (visibility > 0) and
        inside the RoI. Equals torchvision's ``keypoints_to_heatmap``.
    """
    m = heatmap_size
    x1, y1 = rois[:, 0:1], rois[:, 1:2]
    scale_x = m / (rois[:, 2:3] - x1)
    scale_y = m / (rois[:, 3:4] - y1)
    x, y = keypoints[..., 0], keypoints[..., 1]
    on_right = x == rois[:, 2:3]
    on_bottom = y == rois[:, 3:4]
    col = ((x - x1) * scale_x).floor().long()
    row = ((y - y1) * scale_y).floor().long()
    col[on_right] = m - 1
    row[on_bottom] = m - 1
    inside = (col >= 0) & (row >= 0) & (col < m) & (row < m)
    valid = (inside & (keypoints[..., 2] > 0)).long()
    return (row * m + col) * valid, valid


def keypointrcnn_loss(
    keypoint_logits: Tensor,
    proposals: Sequence[Tensor],
    gt_keypoints: Sequence[Tensor],
    keypoint_matched_idxs: Sequence[Tensor],
) -> Tensor:
    """The keypoint loss of Mask R-CNN section 5: for every labelled keypoint inside its
    RoI, the cross-entropy of the softmax over the ``m^2`` cells of its heatmap against
    its one-hot target; the mean over those keypoints.

    Args:
        keypoint_logits: ``(R, K, m, m)``.
        proposals: per image ``(R_i, 4)`` positive RoIs, ``sum R_i = R``.
        gt_keypoints: per image ``(G_i, K, 3)``.
        keypoint_matched_idxs: per image ``(R_i,)`` the object each RoI matched.

    Returns:
        A scalar; 0 (with a graph) when no keypoint counts. Equals torchvision's
        ``keypointrcnn_loss``.
    """
    n, k, h, w = keypoint_logits.shape
    if h != w:
        raise ValueError(f"keypointrcnn_loss: heatmaps must be square, got {h} x {w}.")
    heatmaps, valid = [], []
    for rois, kps, idx in zip(proposals, gt_keypoints, keypoint_matched_idxs, strict=True):
        target, ok = keypoints_to_heatmap(kps[idx], rois, h)
        heatmaps.append(target.view(-1))
        valid.append(ok.view(-1))
    targets = torch.cat(heatmaps) if heatmaps else keypoint_logits.new_zeros(0, dtype=torch.long)
    counted = torch.where(torch.cat(valid))[0] if valid else targets
    if counted.numel() == 0:
        return keypoint_logits.sum() * 0
    return F.cross_entropy(keypoint_logits.view(n * k, h * w)[counted], targets[counted])


# ----------------------------------------------------------------------------------------
# 3. Head


class KeypointRCNNHeads(nn.Sequential):
    """The keypoint head's convolutions: ``len(layers)`` 3x3 convs with ReLU (the paper's
    eight of 512), ``(R, C, 14, 14) -> (R, layers[-1], 14, 14)``. Parameter names and
    initialisation equal torchvision's ``KeypointRCNNHeads``."""

    def __init__(self, in_channels: int, layers: Sequence[int] = (512,) * 8) -> None:
        modules: list[nn.Module] = []
        channels = in_channels
        for width in layers:
            modules += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
            channels = width
        super().__init__(*modules)
        self.out_channels = channels
        for m in self.children():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)


class KeypointRCNNPredictor(nn.Module):
    """A 4x4 stride-2 deconvolution to one map per keypoint, then 2x bilinear upscaling:
    ``(R, C, S, S) -> (R, num_keypoints, 4S, 4S)`` (56 x 56 from 14 x 14). Parameter
    names equal torchvision's ``KeypointRCNNPredictor`` (``kps_score_lowres``)."""

    def __init__(self, in_channels: int, num_keypoints: int) -> None:
        super().__init__()
        self.kps_score_lowres = nn.ConvTranspose2d(
            in_channels, num_keypoints, 4, stride=2, padding=1
        )
        nn.init.kaiming_normal_(self.kps_score_lowres.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.kps_score_lowres.bias)
        self.up_scale = 2
        self.out_channels = num_keypoints

    def forward(self, x: Tensor) -> Tensor:
        x = self.kps_score_lowres(x)
        return F.interpolate(
            x, scale_factor=float(self.up_scale), mode="bilinear", align_corners=False,
            recompute_scale_factor=False,
        )  # fmt: skip


# ----------------------------------------------------------------------------------------
# 4. Inference


def heatmaps_to_keypoints(maps: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
    """Keypoints from heatmaps: each RoI's ``K`` maps are resized (bicubic) to the RoI's
    size in whole pixels, and each keypoint is the centre of its map's arg-max pixel.

    Args:
        maps: ``(R, K, m, m)`` heatmap logits.
        rois: ``(R, 4)`` xyxy (widths and heights below 1 px count as 1).

    Returns:
        ``(keypoints (R, K, 3), scores (R, K))``: ``(x, y, 1)`` in image pixels, and the
        resized map's value at the maximum (a logit). Equals torchvision's
        ``heatmaps_to_keypoints`` (a loop over RoIs there and here: each RoI's maps are
        resized to its own size).
    """
    x1, y1 = rois[:, 0], rois[:, 1]
    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    widths_ceil, heights_ceil = widths.ceil(), heights.ceil()
    k = maps.shape[1]
    keypoints = torch.zeros((len(rois), k, 3), dtype=torch.float32, device=maps.device)
    scores = torch.zeros((len(rois), k), dtype=torch.float32, device=maps.device)
    for i in range(len(rois)):
        w, h = int(widths_ceil[i]), int(heights_ceil[i])
        resized = F.interpolate(maps[i][:, None], size=(h, w), mode="bicubic", align_corners=False)
        resized = resized[:, 0]  # (K, h, w)
        best = resized.reshape(k, -1).argmax(dim=1)
        col = best % w
        row = torch.div(best - col, w, rounding_mode="floor")
        # the centre of pixel (row, col) of the resized map, back in image pixels
        keypoints[i, :, 0] = (col.float() + 0.5) * (widths[i] / w) + x1[i]
        keypoints[i, :, 1] = (row.float() + 0.5) * (heights[i] / h) + y1[i]
        keypoints[i, :, 2] = 1
        scores[i] = resized[torch.arange(k, device=maps.device), row, col]
    return keypoints, scores


def heatmap_entropy(heatmaps: Tensor) -> Tensor:
    """How spread out each predicted heatmap is: the entropy, in nats, of the softmax over
    its ``m x m`` cells (the distribution the loss of section 5 trains),
    ``H = -sum_c p_c log p_c`` with ``p = softmax(logits over the m^2 cells)``.

    A flat map (all logits equal) has ``H = log(m^2)`` (8.05 for m = 56), the entropy of a
    uniform guess; a map whose mass is on one cell has ``H = 0``; ``exp(H)`` is the number of
    cells the map spreads over. A branch that learned nothing predicts flat maps, and its
    loss stays near ``log(m^2)`` (chapter 07, section 8).

    Args:
        heatmaps: ``(R, K, m, m)`` logits (any leading dims: ``(..., h, w)``); ``-inf``
            marks a cell of probability 0.

    Returns:
        ``(R, K)`` (the leading dims), float.
    """
    if heatmaps.dim() < 2 or not heatmaps.is_floating_point():
        raise ValueError(
            f"heatmap_entropy: heatmaps must be float logits (..., h, w), got "
            f"{heatmaps.dtype} of shape {tuple(heatmaps.shape)}."
        )
    log_p = F.log_softmax(heatmaps.flatten(-2), dim=-1)
    p = log_p.exp()
    # a cell of probability 0 adds 0 (p log p -> 0), not 0 * -inf = nan
    return -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(dim=-1)


def keypointrcnn_inference(
    keypoint_logits: Tensor, boxes: Sequence[Tensor]
) -> tuple[list[Tensor], list[Tensor]]:
    """:func:`heatmaps_to_keypoints` image by image: ``keypoint_logits`` ``(D, K, m,
    m)`` for the detections ``boxes`` (per image ``(D_i, 4)``) -> per image
    ``(D_i, K, 3)`` keypoints and ``(D_i, K)`` scores. Equals torchvision's."""
    keypoints, scores = [], []
    for maps, rois in zip(keypoint_logits.split([len(b) for b in boxes]), boxes, strict=True):
        kp, sc = heatmaps_to_keypoints(maps, rois)
        keypoints.append(kp)
        scores.append(sc)
    return keypoints, scores


# ----------------------------------------------------------------------------------------
# Keypoint sets per class, and the branch


def keypoint_counts_of(categories: Sequence[Mapping]) -> tuple[int, ...]:
    """One keypoint count per class (label 1..C, in the order of the category ids, as
    :class:`~rcnn_steps.data.CocoDataset` numbers them), 0 for categories without
    ``keypoints``: the value of :attr:`rcnn_steps.detectors.config.DetectorConfig.keypoint_counts`
    for a dataset (``keypoint_counts_of(dataset.categories)``)."""
    ordered = sorted(categories, key=lambda c: c["id"])
    return tuple(len(c.get("keypoints") or ()) for c in ordered)


def keypoint_channel_table(counts: Sequence[int]) -> Tensor:
    """``(C + 1, K_max)`` int64: row ``label`` lists the predictor channels of that
    class's keypoints (its group of ``counts[label - 1]`` channels), -1 past its count;
    row 0 (background) is all -1. ``K_max = max(counts)``."""
    k_max = max(counts, default=0)
    table = torch.full((len(counts) + 1, k_max), -1, dtype=torch.int64)
    start = 0
    for label, count in enumerate(counts, start=1):
        table[label, :count] = torch.arange(start, start + count)
        start += count
    return table


class KeypointBranch(nn.Module):
    """The keypoint branch as :class:`rcnn_steps.modeling.roi_heads.RoIHeads` runs it: ``pooler``
    (14 x 14) -> ``head`` -> ``predictor`` (56 x 56 heatmaps), on the RoIs of classes
    with keypoints only.

    Args:
        pooler: a RoI pooler (:class:`~rcnn_steps.modeling.poolers.RoIPooler` or
            :class:`~rcnn_steps.modeling.poolers.MultiScaleRoIPooler`).
        head: :class:`KeypointRCNNHeads`.
        predictor: :class:`KeypointRCNNPredictor` with ``sum(keypoint_counts)`` channels.
        keypoint_counts: one count per class (labels 1..C), 0 for classes without
            keypoints (:func:`keypoint_counts_of`).
        loss_weight: multiplies the keypoint loss (Detectron2's
            ``ROI_KEYPOINT_HEAD.LOSS_WEIGHT``; default 1, the paper's).
    """

    def __init__(
        self,
        pooler: nn.Module,
        head: nn.Module,
        predictor: nn.Module,
        keypoint_counts: Sequence[int],
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if not loss_weight > 0:
            raise ValueError(f"KeypointBranch: loss_weight must be > 0, got {loss_weight}.")
        self.loss_weight = float(loss_weight)
        counts = tuple(int(c) for c in keypoint_counts)
        if not counts or min(counts) < 0 or max(counts) == 0:
            raise ValueError(
                f"KeypointBranch: keypoint_counts needs one count >= 0 per class and at "
                f"least one class with keypoints, got {counts}."
            )
        if predictor.out_channels != sum(counts):
            raise ValueError(
                f"KeypointBranch: the predictor has {predictor.out_channels} channels; the "
                f"keypoint sets {counts} need sum(counts) = {sum(counts)}."
            )
        self.pooler = pooler
        self.head = head
        self.predictor = predictor
        self.keypoint_counts = counts
        self.register_buffer("channels", keypoint_channel_table(counts), persistent=False)

    @property
    def num_keypoints(self) -> int:
        """K_max: the keypoints of the class with most (the width of targets and outputs)."""
        return self.channels.shape[1]

    def extra_repr(self) -> str:
        weight = "" if self.loss_weight == 1.0 else f", loss_weight={self.loss_weight}"
        return f"keypoint_counts={self.keypoint_counts}{weight}"

    def has_keypoints(self, labels: Tensor) -> Tensor:
        """``(R,)`` bool: which of these class labels have a keypoint set."""
        return (self.channels[labels] >= 0).any(dim=1)

    def forward(self, features, rois: Sequence[Tensor], image_shape: Sequence[int]) -> Tensor:
        """``(sum R_i, sum(counts), 4S, 4S)`` heatmap logits of the RoIs (a list per
        image)."""
        return self.predictor(self.head(self.pooler(features, rois, image_shape)))

    def select(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Each RoI's heatmaps of its own class: ``(R, sum(counts), m, m) -> (R, K_max,
        m, m)``; slots past the class's count hold its channel 0 (never used: their
        keypoints are marked unlabelled)."""
        channels = self.channels[labels]  # (R, K_max)
        rows = torch.arange(labels.shape[0], device=labels.device)[:, None]
        return logits[rows, channels.clamp(min=0)]

    def loss(
        self,
        logits: Tensor,
        labels: Tensor,
        rois: Sequence[Tensor],
        matched_idxs: Sequence[Tensor],
        targets: Sequence[Mapping[str, Tensor]],
    ) -> Tensor:
        """:func:`keypointrcnn_loss` of positive ``rois`` (per image; ``labels`` their
        classes, concatenated) whose class has keypoints, times ``loss_weight``; each
        class's keypoints past its own count are not counted. ``targets`` need
        ``keypoints`` ``(G, K, 3)``."""
        gt = []
        k_max = self.num_keypoints
        for i, t in enumerate(targets):
            kps = t.get("keypoints")
            if kps is None or kps.dim() != 3 or kps.shape[0] != t["boxes"].shape[0]:
                got = "none" if kps is None else tuple(kps.shape)
                raise ValueError(
                    f"the keypoint branch needs targets[{i}]['keypoints'] as a (G, K, 3) "
                    f"tensor, one row per box ({t['boxes'].shape[0]}), got {got}; turn "
                    "keypoints off in the config (keypoints=False) for data without them."
                )
            if kps.shape[1] < k_max:  # a dataset whose widest set is narrower: pad
                kps = F.pad(kps, (0, 0, 0, k_max - kps.shape[1]))
            kps = kps[:, :k_max].clone()
            # An object's keypoints past its class's own count are not labelled.
            kps[..., 2] *= (self.channels[t["labels"]] >= 0).to(kps.dtype)
            gt.append(kps)
        loss = keypointrcnn_loss(self.select(logits, labels), list(rois), gt, list(matched_idxs))
        return self.loss_weight * loss

    def predict(
        self, logits: Tensor, detections: Sequence[dict[str, Tensor]], has_keypoints: Tensor
    ) -> list[Tensor]:
        """Adds ``"keypoints"`` ``(D_i, K_max, 3)`` and ``"keypoints_scores"`` ``(D_i,
        K_max)`` to each image's detections: computed for the detections of keypoint
        classes (``has_keypoints``, ``(sum D_i,)``; ``logits`` are theirs), zeros for the
        others and past a class's count. Returns the selected heatmaps ``(D', K_max, m,
        m)``."""
        k = self.num_keypoints
        labels = torch.cat([d["labels"] for d in detections])
        boxes = torch.cat([d["boxes"] for d in detections])
        maps = self.select(logits, labels[has_keypoints])
        kps, scores = heatmaps_to_keypoints(maps, boxes[has_keypoints])
        defined = self.channels[labels[has_keypoints]] >= 0
        kps = kps * defined[..., None]
        scores = scores * defined
        all_kps = boxes.new_zeros((len(labels), k, 3))
        all_scores = boxes.new_zeros((len(labels), k))
        all_kps[has_keypoints] = kps.to(all_kps.dtype)
        all_scores[has_keypoints] = scores.to(all_scores.dtype)
        counts = [len(d["labels"]) for d in detections]
        for det, kp, sc in zip(
            detections, all_kps.split(counts), all_scores.split(counts), strict=True
        ):
            det["keypoints"] = kp
            det["keypoints_scores"] = sc
        return maps
