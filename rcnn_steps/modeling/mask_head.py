"""The mask branch of Mask R-CNN (He et al. 2017): targets, heads, losses, pasting.

Mask R-CNN adds to Faster R-CNN "a branch for predicting an object mask in parallel with
the existing branch for bounding box recognition" (abstract). The branch is small, and
each of its four parts is one function or module here:

1. **Targets** (section 3, "Mask Representation"): the ``m x m`` target of a positive RoI
   is the ground-truth mask of the object it matched, cut out along the RoI and resized:
   exactly RoIAlign applied to the full-image mask (:func:`project_masks_on_boxes`).
2. **Heads** (Figure 4): ``"fcn"`` (FPN): four 3x3 convs on ``14 x 14`` RoIAlign features,
   a 2x2 stride-2 deconvolution to ``28 x 28`` and a 1x1 conv to one mask per class
   (:class:`MaskRCNNHeads` + :class:`MaskRCNNPredictor`); ``"c5"`` (the C4 design): the
   backbone's res5 on ``14 x 14`` features (down to ``7 x 7``), then the same deconv +
   1x1 back to ``14 x 14``; ``"mlp"`` (Table 2e): fully-connected layers straight to the
   flattened ``28 x 28`` masks (:class:`MaskMLPHead` + :class:`MaskMLPPredictor`).
3. **Loss** (section 3): "L_mask is the average binary cross-entropy loss", with a
   per-pixel sigmoid on the mask of the RoI's ground-truth class k only: the other
   classes' masks get no gradient, so masks of different classes never compete (the
   paper's "decoupling" of mask and class, :func:`maskrcnn_loss`). Table 2(b)'s
   alternative couples them: a per-pixel softmax over the classes
   (:func:`maskrcnn_softmax_loss`). Class-agnostic masks are one output channel; the
   losses read that off the logits' shape, with no separate code path (as Detectron2).
4. **Inference** (section 3.1, "Inference"): masks are computed for the kept detections
   only; of each detection's K masks the one of its predicted class is taken
   (:func:`maskrcnn_inference`), resized to the box and pasted into the image
   (:func:`paste_masks_in_image`), then binarised at 0.5.

:class:`MaskBranch` wires the four together for :class:`rcnn_steps.modeling.roi_heads.RoIHeads`.
Every function of torchvision's with the same name gives the same result
(tests/test_mask_head.py), and the modules have torchvision's parameter names, so its
weights load into ours. Taught in chapter 07 ("Masks and keypoints").
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rcnn_steps.ops import roi_align

__all__ = [
    "MASK_HEADS",
    "MASK_LOSSES",
    "MaskBranch",
    "MaskMLPHead",
    "MaskMLPPredictor",
    "MaskRCNNHeads",
    "MaskRCNNPredictor",
    "mask_accuracy",
    "mask_targets",
    "maskrcnn_inference",
    "maskrcnn_loss",
    "maskrcnn_softmax_loss",
    "paste_masks_in_image",
    "paste_masks_in_windows",
    "project_masks_on_boxes",
]

#: The mask heads a config can name (Mask R-CNN Figure 4 and Table 2e).
MASK_HEADS = ("fcn", "mlp", "c5")
#: The mask losses (Mask R-CNN Table 2b).
MASK_LOSSES = ("sigmoid", "softmax")


# ----------------------------------------------------------------------------------------
# 1. Targets


def project_masks_on_boxes(
    gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor, M: int, aligned: bool = False
) -> Tensor:
    """The ``M x M`` mask target of each RoI: its matched ground-truth mask, cut out along
    the RoI and resized, by RoIAlign on the mask (one "image" per object, one channel).

    Args:
        gt_masks: ``(G, H, W)`` the image's object masks (any dtype; 0/1).
        boxes: ``(R, 4)`` RoIs, xyxy in image pixels.
        matched_idxs: ``(R,)`` int64, the object (row of ``gt_masks``) each RoI matched.
        M: the target's side (28 for the FCN head).
        aligned: RoIAlign's half-pixel correction (chapter 06). False (torchvision's and
            the paper's code) samples the mask half a pixel up and left of where the RoI
            is, since pixel ``j`` has its centre at ``j + 0.5``; True samples it where the
            RoI is (Detectron2's choice; see :func:`paste_masks_in_image`).

    Returns:
        ``(R, M, M)`` float targets in [0, 1] (fractional where a bin straddles the mask's
        edge; the sigmoid loss takes them as they are). With ``aligned=False`` equals
        torchvision's ``project_masks_on_boxes`` (RoIAlign with adaptive sampling).
    """
    if boxes.shape[0] == 0:
        return boxes.new_zeros((0, M, M))
    rois = torch.cat([matched_idxs.to(boxes)[:, None], boxes], dim=1)
    masks = gt_masks[:, None].to(rois)
    targets = roi_align(masks, rois, (M, M), 1.0, sampling_ratio=-1, aligned=aligned)[:, 0]
    return targets.clamp(0, 1)  # 1 + a rounding error is still 1


def mask_targets(
    proposals: Sequence[Tensor],
    gt_masks: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    mask_matched_idxs: Sequence[Tensor],
    M: int,
    aligned: bool = False,
) -> tuple[Tensor, Tensor]:
    """The class and mask target of every positive RoI of a batch: ``(labels (R,),
    targets (R, M, M))``, images concatenated (lists have one entry per image)."""
    labels = [lab[idx] for lab, idx in zip(gt_labels, mask_matched_idxs, strict=True)]
    targets = [
        project_masks_on_boxes(m, p, i, M, aligned)
        for m, p, i in zip(gt_masks, proposals, mask_matched_idxs, strict=True)
    ]
    return torch.cat(labels), torch.cat(targets)


# ----------------------------------------------------------------------------------------
# 2. Heads


class MaskRCNNHeads(nn.Sequential):
    """The FCN mask head's convolutions (Figure 4, right): ``len(layers)`` 3x3 convs with
    ReLU, ``(R, C, 14, 14) -> (R, layers[-1], 14, 14)``; the paper's four of 256.

    Parameter names equal torchvision's ``MaskRCNNHeads`` without a norm layer (block
    ``i`` is ``{i}.0``, a conv, then ``{i}.1``, its ReLU); initialised as there (He
    normal, fan-out; zero biases).
    """

    def __init__(self, in_channels: int, layers: Sequence[int] = (256, 256, 256, 256)) -> None:
        blocks = []
        channels = in_channels
        for width in layers:
            blocks.append(
                nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True))
            )
            channels = width
        super().__init__(*blocks)
        self.out_channels = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)


class MaskRCNNPredictor(nn.Sequential):
    """Deconvolution 2x2 stride 2 + ReLU, then a 1x1 conv to one mask logit map per class:
    ``(R, C, S, S) -> (R, num_masks, 2S, 2S)``. ``num_masks`` is K + 1 (background
    included, as torchvision's) or 1 for class-agnostic masks. Parameter names equal
    torchvision's ``MaskRCNNPredictor`` (``conv5_mask``, ``mask_fcn_logits``)."""

    def __init__(self, in_channels: int, dim_reduced: int, num_masks: int) -> None:
        super().__init__(
            OrderedDict(
                conv5_mask=nn.ConvTranspose2d(in_channels, dim_reduced, 2, stride=2),
                relu=nn.ReLU(inplace=True),
                mask_fcn_logits=nn.Conv2d(dim_reduced, num_masks, 1),
            )
        )
        for name, param in self.named_parameters():
            if "weight" in name:
                nn.init.kaiming_normal_(param, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.zeros_(param)


class MaskMLPHead(nn.Module):
    """Table 2(e)'s MLP mask head, its hidden part: flatten the ``(R, C, S, S)`` RoI
    features, then ``num_layers`` fully-connected layers of ``hidden`` units with ReLU
    (the paper: 2 or 3 of 1024; the last fc is :class:`MaskMLPPredictor`). ``(R, C, S, S)
    -> (R, hidden)``. Unlike the FCN it has no spatial layout of its own: every output
    pixel is a weighted sum over the whole RoI."""

    def __init__(self, in_features: int, hidden: int = 1024, num_layers: int = 2) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MaskMLPHead: num_layers must be >= 1, got {num_layers}.")
        sizes = [in_features] + [hidden] * num_layers
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:], strict=False))
        self.out_channels = hidden

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(start_dim=1)
        for fc in self.fcs:
            x = F.relu(fc(x))
        return x


class MaskMLPPredictor(nn.Module):
    """The MLP head's output layer: one fc to ``num_masks x M x M`` logits, reshaped:
    ``(R, hidden) -> (R, num_masks, M, M)``."""

    def __init__(self, in_features: int, num_masks: int, resolution: int) -> None:
        super().__init__()
        self.mask_fc_logits = nn.Linear(in_features, num_masks * resolution**2)
        self.num_masks = num_masks
        self.resolution = resolution

    def forward(self, x: Tensor) -> Tensor:
        m = self.resolution
        return self.mask_fc_logits(x).view(-1, self.num_masks, m, m)


# ----------------------------------------------------------------------------------------
# 3. Losses


def _empty_loss(mask_logits: Tensor) -> Tensor:
    # a zero that keeps the graph (and DDP's view of the used parameters) intact
    return mask_logits.sum() * 0


def maskrcnn_loss(
    mask_logits: Tensor,
    proposals: Sequence[Tensor],
    gt_masks: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    mask_matched_idxs: Sequence[Tensor],
    aligned: bool = False,
) -> Tensor:
    """L_mask of Mask R-CNN section 3: the per-pixel binary cross-entropy of the
    sigmoid, averaged over the ``M x M`` pixels of every positive RoI, on the mask of the
    RoI's ground-truth class k only (the other K - 1 masks get no gradient).

    Args:
        mask_logits: ``(R, num_masks, M, M)``; ``num_masks = 1`` is class-agnostic (the
            one mask is used for every class).
        proposals: per image ``(R_i, 4)`` positive RoIs, ``sum R_i = R``.
        gt_masks: per image ``(G_i, H, W)`` ground-truth masks.
        gt_labels: per image ``(G_i,)`` classes.
        mask_matched_idxs: per image ``(R_i,)`` the object each RoI matched.
        aligned: how the targets are cut out (:func:`project_masks_on_boxes`).

    Returns:
        A scalar. With ``aligned=False`` equals torchvision's ``maskrcnn_loss`` (which
        has no class-agnostic case); 0 (with a graph) when there are no positive RoIs.
    """
    labels, targets = mask_targets(
        proposals, gt_masks, gt_labels, mask_matched_idxs, mask_logits.shape[-1], aligned
    )
    if targets.numel() == 0:
        return _empty_loss(mask_logits)
    if mask_logits.shape[1] == 1:
        labels = torch.zeros_like(labels)  # class-agnostic: one mask for every class
    rows = torch.arange(labels.shape[0], device=labels.device)
    return F.binary_cross_entropy_with_logits(mask_logits[rows, labels], targets)


def maskrcnn_softmax_loss(
    mask_logits: Tensor,
    proposals: Sequence[Tensor],
    gt_masks: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    mask_matched_idxs: Sequence[Tensor],
    aligned: bool = False,
) -> Tensor:
    """Mask R-CNN Table 2(b)'s "softmax" alternative: a per-pixel multinomial over the
    K + 1 channels (background included), so the classes compete at every pixel, as in
    an FCN for semantic segmentation.

    A pixel of a RoI of class k with target value ``t`` (1 inside the object, 0 outside,
    fractional on the edge) costs ``-(t log p_k + (1 - t) log p_0)``, ``p = softmax``
    over the channels: the cross-entropy with the soft target "class k with probability
    t, background otherwise", the same soft targets :func:`maskrcnn_loss` uses.
    Averaged over pixels and RoIs. Same arguments as :func:`maskrcnn_loss`;
    ``mask_logits`` needs K + 1 >= 2 channels.
    """
    if mask_logits.shape[1] < 2:
        raise ValueError(
            "maskrcnn_softmax_loss: a softmax over classes needs one channel per class "
            f"and background (K + 1 >= 2), got {mask_logits.shape[1]}; class-agnostic masks "
            "go with the sigmoid loss (maskrcnn_loss)."
        )
    labels, targets = mask_targets(
        proposals, gt_masks, gt_labels, mask_matched_idxs, mask_logits.shape[-1], aligned
    )
    if targets.numel() == 0:
        return _empty_loss(mask_logits)
    log_p = F.log_softmax(mask_logits, dim=1)
    rows = torch.arange(labels.shape[0], device=labels.device)
    return -(targets * log_p[rows, labels] + (1 - targets) * log_p[:, 0]).mean()


@torch.no_grad()
def mask_accuracy(mask_logits: Tensor, labels: Tensor, targets: Tensor, loss: str = "sigmoid"):
    """How right the predicted masks of the positive RoIs are, pixel by pixel (what
    Detectron2 logs beside the mask loss): ``{"accuracy", "false_positive",
    "false_negative"}``, the share of pixels right, of predicted-foreground pixels that
    are background, and of foreground pixels predicted background. Targets are binarised
    at 0.5; so are the probabilities of the class-k mask. NaN where undefined."""
    if targets.numel() == 0:
        nan = float("nan")
        return {"accuracy": nan, "false_positive": nan, "false_negative": nan}
    probs = maskrcnn_inference(mask_logits, [labels], loss)[0][:, 0]
    predicted, truth = probs > 0.5, targets > 0.5
    fp = (predicted & ~truth).sum() / predicted.sum().clamp(min=1)
    fn = (~predicted & truth).sum() / truth.sum().clamp(min=1)
    return {
        "accuracy": float((predicted == truth).float().mean()),
        "false_positive": float(fp),
        "false_negative": float(fn),
    }


# ----------------------------------------------------------------------------------------
# 4. Inference: pick the class's mask, paste it into the image


def maskrcnn_inference(
    mask_logits: Tensor, labels: Sequence[Tensor], loss: str = "sigmoid"
) -> list[Tensor]:
    """Each detection's mask probabilities: of its ``num_masks`` maps, the one of its
    predicted class (map 0 when class-agnostic), through a sigmoid, or with
    ``loss="softmax"`` the class's channel of the per-pixel softmax.

    Args:
        mask_logits: ``(D, num_masks, M, M)`` for the detections of all images.
        labels: per image ``(D_i,)`` predicted classes, ``sum D_i = D``.

    Returns:
        Per image ``(D_i, 1, M, M)`` probabilities. With ``"sigmoid"`` equals
        torchvision's ``maskrcnn_inference``.
    """
    counts = [len(lab) for lab in labels]
    cls = torch.cat(list(labels)) if counts else mask_logits.new_zeros(0, dtype=torch.int64)
    if mask_logits.shape[1] == 1:
        cls = torch.zeros_like(cls)
    if loss == "softmax":
        probs = mask_logits.softmax(dim=1)
    elif loss == "sigmoid":
        probs = mask_logits.sigmoid()
    else:
        raise ValueError(f"maskrcnn_inference: loss must be one of {MASK_LOSSES}, got {loss!r}.")
    rows = torch.arange(cls.shape[0], device=cls.device)
    return list(probs[rows, cls][:, None].split(counts))


def _resize_matrix(start: Tensor, stop: Tensor, src_size: int, out_size: int) -> Tensor:
    """``(D, out_size, src_size)``: row ``p`` holds the bilinear weights with which image
    pixel ``p`` reads a ``src_size``-long source resized to the pixels ``start..stop``
    (inclusive), by ``F.interpolate(mode="bilinear", align_corners=False)``'s rule: source
    coordinate ``(p - start + 0.5) * src_size / length - 0.5``, clamped at 0, ``length =
    stop - start + 1``; rows outside ``[start, stop]`` are all zero."""
    p = torch.arange(out_size, device=start.device)[None]  # (1, P)
    inside = (p >= start[:, None]) & (p <= stop[:, None])  # (D, P)
    length = (stop - start + 1).clamp(min=1).to(torch.float32)
    scale = src_size / length
    offset = (p - start[:, None]).to(torch.float32)
    src = ((offset + 0.5) * scale[:, None] - 0.5).clamp(min=0)
    lo = src.floor().clamp(max=src_size - 1)
    frac = src - lo
    lo = lo.long()
    hi = (lo + 1).clamp(max=src_size - 1)
    weights = torch.zeros(*offset.shape, src_size, device=start.device)
    weights.scatter_add_(2, lo[..., None], (1 - frac)[..., None])
    weights.scatter_add_(2, hi[..., None], frac[..., None])
    return weights * inside[..., None]


def paste_masks_in_image(
    masks: Tensor,
    boxes: Tensor,
    img_shape: Sequence[int],
    padding: int = 1,
    aligned: bool = False,
) -> Tensor:
    """Resize each ``M x M`` mask to its box and paste it into an image-sized canvas.

    ``aligned=False`` (torchvision's rule, from the paper's Detectron code): the mask is
    first padded by ``padding`` zero pixels on every side and the box grown by the same
    fraction, so the mask's border fades to 0 outside the box rather than being cut off;
    the box is then rounded to whole pixels (corners truncated to integers, size ``x2 -
    x1 + 1``: one pixel wider and taller than the box) and the mask bilinearly resized to
    it. A bilinear resize is separable, so for every mask it is two small matrix
    products, ``R_y @ mask @ R_x^T`` (:func:`_resize_matrix`; rows outside the box are
    0): one batched product for all masks, no loop over detections.

    ``aligned=True`` (Detectron2's rule) rounds nothing: image pixel ``(x, y)``, whose
    centre is ``(x + 0.5, y + 0.5)``, reads the mask bilinearly at that point's position
    in the box, ``M (x + 0.5 - x1) / (x2 - x1)`` cells from its left edge (cell ``i``
    having its centre at ``i + 0.5``), and 0 beyond the mask's outer cell centres fading
    to 0 half a cell out. With targets cut out by ``project_masks_on_boxes(...,
    aligned=True)`` a mask survives the round trip nearly exactly (chapter 07 measures
    both rules). ``padding`` is unused here.

    Args:
        masks: ``(D, 1, M, M)`` probabilities (or logits: any values).
        boxes: ``(D, 4)`` xyxy in image pixels.
        img_shape: ``(H, W)`` of the image.
        padding: pixels of zero border added around each mask first (``aligned=False``).
        aligned: the pixel convention, see above.

    Returns:
        ``(D, 1, H, W)``. With ``aligned=False`` equals torchvision's
        ``paste_masks_in_image`` up to float rounding (its per-mask ``F.interpolate`` sums
        the same four products in another order).
    """
    h, w = int(img_shape[0]), int(img_shape[1])
    d = masks.shape[0]
    if d == 0:
        return masks.new_zeros((0, 1, h, w))
    if aligned:
        return _paste_aligned(masks, boxes, (0, h), (0, w))
    corners, src = _paste_corners(boxes, masks.shape[-1], padding)
    padded = F.pad(masks[:, 0], (padding,) * 4)  # (D, M + 2p, M + 2p)
    rows = _resize_matrix(corners[:, 1], corners[:, 3], src, h)  # (D, H, src)
    cols = _resize_matrix(corners[:, 0], corners[:, 2], src, w)  # (D, W, src)
    pasted = rows @ padded.to(rows.dtype) @ cols.transpose(1, 2)
    return pasted.to(masks.dtype)[:, None]


def _paste_corners(boxes: Tensor, m: int, padding: int) -> tuple[Tensor, int]:
    """``aligned=False``'s pixel box of each mask: the box grown by ``padding`` mask cells
    on every side, corners truncated to whole pixels, ``(D, 4)`` int64; and the padded
    mask's side ``M + 2 padding``."""
    scale = (m + 2 * padding) / m
    half = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale
    centre = (boxes[:, 2:] + boxes[:, :2]) * 0.5
    corners = torch.cat([centre - half, centre + half], dim=1).to(torch.int64)  # truncation
    return corners, m + 2 * padding


def _paste_aligned(
    masks: Tensor, boxes: Tensor, rows: tuple[int, int], cols: tuple[int, int]
) -> Tensor:
    """:func:`paste_masks_in_image` with ``aligned=True`` over the image pixels ``rows =
    (top, bottom)`` x ``cols = (left, right)`` (half-open): ``grid_sample`` at every pixel
    centre, in coordinates where the box spans [-1, 1] (``align_corners=False``: -1 and 1
    are the mask's outer edges, so cell centres sit where the box's bins' centres are)."""
    d = masks.shape[0]
    boxes = boxes.to(torch.float32)
    xs = torch.arange(*cols, device=masks.device, dtype=torch.float32) + 0.5
    ys = torch.arange(*rows, device=masks.device, dtype=torch.float32) + 0.5
    widths = (boxes[:, 2:3] - boxes[:, 0:1]).clamp(min=1e-6)
    heights = (boxes[:, 3:4] - boxes[:, 1:2]).clamp(min=1e-6)
    gx = (xs[None] - boxes[:, 0:1]) / widths * 2 - 1  # (D, W)
    gy = (ys[None] - boxes[:, 1:2]) / heights * 2 - 1  # (D, H)
    h, w = len(ys), len(xs)
    grid = torch.stack([gx[:, None, :].expand(d, h, w), gy[:, :, None].expand(d, h, w)], dim=3)
    pasted = F.grid_sample(masks.to(torch.float32), grid, align_corners=False)
    return pasted.to(masks.dtype)


def paste_masks_in_windows(
    masks: Tensor,
    boxes: Tensor,
    img_shape: Sequence[int],
    padding: int = 1,
    aligned: bool = False,
) -> Iterator[tuple[Tensor, tuple[int, int]]]:
    """:func:`paste_masks_in_image` one mask at a time, each over only the window of image
    pixels it can reach, made when the caller asks for it (a generator): memory is one
    window, at most one image, however many masks there are (100 float masks of a 3000 x
    2000 photo are 2.4 GB at once; ``predict`` uses this).

    The window is the box grown by what the paste adds around it (``aligned=False``: the
    padding, rounded out to whole pixels; ``aligned=True``: half a mask cell, read
    bilinearly, plus a pixel), clipped to the image. Outside it the full paste is exactly
    0; inside it equals the full paste up to float rounding (the same products over a
    smaller matrix).

    Args:
        masks: ``(D, 1, M, M)`` probabilities.
        boxes: ``(D, 4)`` xyxy in image pixels.
        img_shape: ``(H, W)``.

    Yields:
        ``D`` pairs ``(window (h_i, w_i), (top_i, left_i))``: the pasted values of image
        rows ``top_i .. top_i + h_i - 1`` and columns ``left_i .. left_i + w_i - 1``.
    """
    h, w = int(img_shape[0]), int(img_shape[1])
    m = masks.shape[-1]
    for mask, box in zip(masks, boxes, strict=True):
        if aligned:
            reach = (box[2:] - box[:2]) / m  # a mask cell, in pixels (x, y)
            lo = (box[:2] - reach).floor().long() - 1
            hi = (box[2:] + reach).ceil().long() + 2
            top, bottom = int(lo[1].clamp(0, h)), int(hi[1].clamp(0, h))
            left, right = int(lo[0].clamp(0, w)), int(hi[0].clamp(0, w))
            pasted = _paste_aligned(mask[None], box[None], (top, bottom), (left, right))[0, 0]
        else:
            corners, src = _paste_corners(box[None], m, padding)
            x1, y1, x2, y2 = (int(v) for v in corners[0])
            top, bottom = min(max(y1, 0), h), min(max(y2 + 1, 0), h)
            left, right = min(max(x1, 0), w), min(max(x2 + 1, 0), w)
            rows = _resize_matrix(corners[:, 1], corners[:, 3], src, h)[:, top:bottom]
            cols = _resize_matrix(corners[:, 0], corners[:, 2], src, w)[:, left:right]
            padded = F.pad(mask, (padding,) * 4).to(rows.dtype)  # (1, M + 2p, M + 2p)
            pasted = (rows @ padded @ cols.transpose(1, 2))[0].to(masks.dtype)
        yield pasted, (top, left)


# ----------------------------------------------------------------------------------------
# The branch


class MaskBranch(nn.Module):
    """The mask branch as :class:`rcnn_steps.modeling.roi_heads.RoIHeads` runs it: ``pooler`` (a
    RoI layer at ``14 x 14``) -> ``head`` -> ``predictor`` -> ``(R, num_masks, M, M)``
    logits; :meth:`loss` in training (on the box branch's sampled positive RoIs),
    :meth:`predict` at test time (on the kept detections only).

    Args:
        pooler: a :class:`~rcnn_steps.modeling.poolers.RoIPooler` or
            :class:`~rcnn_steps.modeling.poolers.MultiScaleRoIPooler`.
        head: :class:`MaskRCNNHeads`, :class:`MaskMLPHead`, or the C4 design's res5
            stage (an ``nn.Module`` mapping ``(R, C4, S, S)`` to ``(R, C5, S/2, S/2)``).
        predictor: :class:`MaskRCNNPredictor` or :class:`MaskMLPPredictor`.
        loss: ``"sigmoid"`` (:func:`maskrcnn_loss`) or ``"softmax"``
            (:func:`maskrcnn_softmax_loss`).
        aligned: the pixel convention of the targets and of pasting
            (:func:`project_masks_on_boxes`, :func:`paste_masks_in_image`); False is
            torchvision's.
    """

    def __init__(
        self,
        pooler: nn.Module,
        head: nn.Module,
        predictor: nn.Module,
        loss: str = "sigmoid",
        aligned: bool = False,
    ) -> None:
        super().__init__()
        if loss not in MASK_LOSSES:
            raise ValueError(f"MaskBranch: loss must be one of {MASK_LOSSES}, got {loss!r}.")
        self.pooler = pooler
        self.head = head
        self.predictor = predictor
        self.loss_name = loss
        self.aligned = aligned
        #: paste the masks into the image at test time (``"masks"``), or leave them in
        #: their boxes' frame (``"mask_probs"``; see :meth:`predict`). Not a weight.
        self.paste = True

    def extra_repr(self) -> str:
        return f"loss={self.loss_name!r}, aligned={self.aligned}"

    def forward(self, features, rois: Sequence[Tensor], image_shape: Sequence[int]) -> Tensor:
        """``(sum R_i, num_masks, M, M)`` mask logits of the RoIs (a list per image)."""
        return self.predictor(self.head(self.pooler(features, rois, image_shape)))

    def loss(
        self,
        mask_logits: Tensor,
        rois: Sequence[Tensor],
        matched_idxs: Sequence[Tensor],
        targets: Sequence[Mapping[str, Tensor]],
    ) -> Tensor:
        """The configured mask loss of the positive ``rois`` (per image), each matched to
        the object ``matched_idxs``; ``targets`` need ``masks`` (G, H, W)."""
        for i, t in enumerate(targets):
            masks = t.get("masks")
            if masks is None or masks.dim() != 3 or masks.shape[0] != t["boxes"].shape[0]:
                got = "none" if masks is None else tuple(masks.shape)
                raise ValueError(
                    f"the mask branch needs targets[{i}]['masks'] as a (G, H, W) tensor, "
                    f"one mask per box ({t['boxes'].shape[0]}), got {got}; load the data "
                    "with masks (CocoDataset(load_masks=True)) or turn masks off in the "
                    "config (masks=False)."
                )
        fn = maskrcnn_softmax_loss if self.loss_name == "softmax" else maskrcnn_loss
        return fn(
            mask_logits,
            list(rois),
            [t["masks"] for t in targets],
            [t["labels"] for t in targets],
            list(matched_idxs),
            self.aligned,
        )

    def predict(
        self,
        mask_logits: Tensor,
        detections: Sequence[dict[str, Tensor]],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[Tensor]:
        """Adds ``"masks"`` ``(D_i, 1, h, w)`` (probabilities pasted into the image) to
        each image's detections; returns the ``(D_i, 1, M, M)`` probabilities. With
        :attr:`paste` False it adds those unpasted probabilities as ``"mask_probs"``
        instead, for a caller that pastes them its own way (``predict`` on large photos:
        :func:`paste_masks_in_windows`)."""
        probs = maskrcnn_inference(mask_logits, [d["labels"] for d in detections], self.loss_name)
        for det, prob, size in zip(detections, probs, image_sizes, strict=True):
            if self.paste:
                det["masks"] = paste_masks_in_image(prob, det["boxes"], size, aligned=self.aligned)
            else:
                det["mask_probs"] = prob
        return probs
