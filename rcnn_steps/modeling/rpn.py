"""The Region Proposal Network (Faster R-CNN, Ren et al. 2015, section 3.1).

A small network slid over the backbone's feature map: at every cell a 3x3 conv and two
sibling 1x1 convs predict, for each of the A anchors of the cell, an objectness logit and
four box deltas (eq. 2, :class:`~rcnn_steps.ops.boxes.BoxCoder` with weights (1, 1, 1, 1)).
Proposals are the decoded anchors, filtered (section 3.3): per level the top
``pre_nms_top_n`` by objectness, clipped to the image, tiny boxes removed, NMS at 0.7,
the best ``post_nms_top_n`` kept. Training labels anchors with :class:`Matcher` (0.7 /
0.3 with the low-quality rule, section 3.1.2), samples 256 per image at up to 1:1
(section 3.1.3) and minimises eq. (1) (:func:`rcnn_steps.modeling.losses.rpn_loss`).

It replaces selective search (chapter 02/03) with proposals that cost a few convolutions
on features the detector computes anyway. Taught in chapter 04.

Equal to torchvision's ``RegionProposalNetwork`` (tests/test_rpn.py builds both with the
same anchors and head weights and compares proposals and losses); the differences are
switches torchvision lacks (``ignore_cross_boundary``, the paper's loss normalisation) and
images without objects handled by :class:`Matcher` rather than by a special case.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from rcnn_steps.modeling.anchors import AnchorGenerator, anchor_visibility
from rcnn_steps.modeling.losses import NORMALIZATIONS, rpn_loss
from rcnn_steps.modeling.matcher import Matcher, label_anchors
from rcnn_steps.modeling.sampler import BalancedPositiveNegativeSampler
from rcnn_steps.ops import (
    BoxCoder,
    ImageList,
    batched_nms,
    box_iou,
    clip_boxes_to_image,
    remove_small_boxes,
)

__all__ = ["RPNHead", "RegionProposalNetwork", "flatten_head_outputs"]


class RPNHead(nn.Module):
    """The RPN's "mini-network" (Faster R-CNN section 3.1, Figure 3): a 3x3 conv + ReLU
    shared by two sibling 1x1 convs, ``cls_logits`` (A objectness logits per cell; the
    paper's 2A softmax scores become A sigmoid logits, as in Detectron and torchvision)
    and ``bbox_pred`` (4A deltas per cell).

    Args:
        in_channels: channels of the feature map(s).
        num_anchors: A, anchors per cell
            (:meth:`AnchorGenerator.num_anchors_per_location`).

    Parameter names equal torchvision's ``RPNHead`` (``conv.0.0``, ``cls_logits``,
    ``bbox_pred``), so state dicts load across. Weights start N(0, 0.01), biases 0
    (section 3.1.3).
    """

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        # Nested Sequential so the keys read conv.0.0.weight, as torchvision's
        # Conv2dNormActivation stack does.
        self.conv = nn.Sequential(
            nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.ReLU(inplace=True))
        )
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.zeros_(layer.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """One ``(N, C, H_l, W_l)`` map per level -> per level ``(N, A, H_l, W_l)``
        objectness logits and ``(N, 4A, H_l, W_l)`` deltas."""
        logits, deltas = [], []
        for feature in features:
            t = self.conv(feature)
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


def flatten_head_outputs(
    logits: Sequence[Tensor], deltas: Sequence[Tensor]
) -> tuple[Tensor, Tensor, list[int]]:
    """Per-level head outputs to one row per anchor, in :class:`AnchorGenerator` order
    (level, then row y, column x, anchor a).

    Returns:
        ``(N, sum_l H_l W_l A, )`` objectness, ``(N, sum_l H_l W_l A, 4)`` deltas, and
        the number of anchors per level ``[H_l W_l A]``.
    """
    flat_logits, flat_deltas, counts = [], [], []
    for lg, dl in zip(logits, deltas, strict=True):
        n, a, h, w = lg.shape
        flat_logits.append(lg.permute(0, 2, 3, 1).reshape(n, -1))  # (N, H W A)
        # (N, A*4, H, W) -> (N, A, 4, H, W) -> (N, H, W, A, 4): deltas of anchor a together.
        flat_deltas.append(dl.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
        counts.append(h * w * a)
    return torch.cat(flat_logits, 1), torch.cat(flat_deltas, 1), counts


class RegionProposalNetwork(nn.Module):
    """Proposals from a feature map, and (given targets) the RPN loss.

    Args:
        anchor_generator: the anchors of every level (:class:`AnchorGenerator`).
        head: an :class:`RPNHead` (or anything with its outputs).
        fg_iou_thresh, bg_iou_thresh: anchor labelling, 0.7 / 0.3 (section 3.1.2); the
            low-quality rule is always on, as in the paper.
        batch_size_per_image, positive_fraction: the sampler, 256 at 0.5 (section 3.1.3).
        pre_nms_top_n, post_nms_top_n: ``{"training": n, "testing": n}`` (or one int for
            both): proposals kept per level before NMS, and per image after it. The paper
            keeps ~2000 after NMS for training Fast R-CNN and 300 at test (section 4.1).
        nms_thresh: IoU of the proposal NMS, 0.7 (section 3.3).
        min_size: proposals narrower or lower than this (pixels) are dropped.
        score_thresh: proposals with objectness probability below this are dropped.
        lambda_reg, normalization: the weight and normalisation of eq. (1), see
            :func:`rcnn_steps.modeling.losses.rpn_loss` (torchvision's, lambda 1, by default).
        ignore_cross_boundary: label anchors that cross the image border -1 (ignored) in
            training (section 3.3); torchvision does not (False).
        sampler_generator: a ``torch.Generator`` for the sampler (None: torch's global
            one, like torchvision).
    """

    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        head: nn.Module,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_top_n: Mapping[str, int] | int = 2000,
        post_nms_top_n: Mapping[str, int] | int = 2000,
        nms_thresh: float = 0.7,
        min_size: float = 1e-3,
        score_thresh: float = 0.0,
        lambda_reg: float = 1.0,
        normalization: str = "torchvision",
        ignore_cross_boundary: bool = False,
        sampler_generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"RegionProposalNetwork: normalization must be one of {NORMALIZATIONS}, got "
                f"{normalization!r}."
            )
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedPositiveNegativeSampler(
            batch_size_per_image, positive_fraction, sampler_generator
        )
        self._pre_nms_top_n = _train_test(pre_nms_top_n)
        self._post_nms_top_n = _train_test(post_nms_top_n)
        self.nms_thresh = nms_thresh
        self.min_size = min_size
        self.score_thresh = score_thresh
        self.lambda_reg = lambda_reg
        self.normalization = normalization
        self.ignore_cross_boundary = ignore_cross_boundary

    def extra_repr(self) -> str:
        return (
            f"matcher={self.matcher}, sampler={self.sampler}, pre_nms_top_n="
            f"{self._pre_nms_top_n}, post_nms_top_n={self._post_nms_top_n}, nms_thresh="
            f"{self.nms_thresh}, lambda_reg={self.lambda_reg}, normalization="
            f"{self.normalization!r}, ignore_cross_boundary={self.ignore_cross_boundary}"
        )

    def pre_nms_top_n(self) -> int:
        return self._pre_nms_top_n["training" if self.training else "testing"]

    def post_nms_top_n(self) -> int:
        return self._post_nms_top_n["training" if self.training else "testing"]

    # -- proposals --------------------------------------------------------------------

    def filter_proposals(
        self,
        proposals: Tensor,
        objectness: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        num_anchors_per_level: Sequence[int],
        intermediates: dict | None = None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Faster R-CNN section 3.3's proposal selection, per image.

        Args:
            proposals: ``(N, A_total, 4)`` decoded anchors.
            objectness: ``(N, A_total)`` logits.
            image_sizes: true ``(h, w)`` of every image (proposals are clipped to it).
            num_anchors_per_level: anchors of each level, to split the columns.

        Returns:
            ``(boxes, scores)``: per image ``(P_i, 4)`` proposals and ``(P_i,)`` objectness
            probabilities, by decreasing score, ``P_i <= post_nms_top_n``. Steps, in
            torchvision's order (top-k first: the cheap cut before the per-box work):
            top ``pre_nms_top_n`` per level by logit; sigmoid; clip; drop boxes smaller
            than ``min_size`` and scores below ``score_thresh``; NMS per level; keep the
            best ``post_nms_top_n``. Equals torchvision's ``filter_proposals``.
        """
        num_images = proposals.shape[0]
        objectness = objectness.detach()
        levels = torch.cat(
            [
                torch.full((n,), lvl, dtype=torch.int64, device=proposals.device)
                for lvl, n in enumerate(num_anchors_per_level)
            ]
        )
        # Top-k per level (every level gets a share, else the finest one's many anchors
        # would crowd out the coarse ones in FPN).
        top_idx, offset = [], 0
        for ob in objectness.split(list(num_anchors_per_level), dim=1):
            k = min(self.pre_nms_top_n(), ob.shape[1])
            top_idx.append(ob.topk(k, dim=1).indices + offset)
            offset += ob.shape[1]
        top_idx = torch.cat(top_idx, dim=1)  # (N, K)
        batch_idx = torch.arange(num_images, device=proposals.device)[:, None]
        objectness = objectness[batch_idx, top_idx]
        proposals = proposals[batch_idx, top_idx]
        levels = levels[top_idx]
        probs = torch.sigmoid(objectness)

        final_boxes, final_scores, before_nms, before_nms_scores = [], [], [], []
        for boxes, scores, lvl, size in zip(proposals, probs, levels, image_sizes, strict=True):
            boxes = clip_boxes_to_image(boxes, size)
            keep = remove_small_boxes(boxes, self.min_size)
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = torch.where(scores >= self.score_thresh)[0]
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            before_nms.append(boxes)
            before_nms_scores.append(scores)
            keep = batched_nms(boxes, scores, lvl, self.nms_thresh)[: self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        if intermediates is not None:
            intermediates["proposals_before_nms"] = before_nms
            intermediates["proposal_scores_before_nms"] = before_nms_scores
        return final_boxes, final_scores

    # -- training targets -------------------------------------------------------------

    def assign_targets(
        self,
        anchors: Sequence[Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        image_sizes: Sequence[tuple[int, int]],
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Label every anchor (section 3.1.2) and find its ground-truth box.

        Returns:
            ``(labels, matched_gt_boxes)`` per image: ``(A,)`` int64 1 (object), 0
            (background), -1 (ignored: between the thresholds, or crossing the image
            border when ``ignore_cross_boundary``), and ``(A, 4)`` the matched ground
            truth (the anchor itself where there is none, so its unused target is 0).
            An image without objects is all background.
        """
        labels, matched_boxes = [], []
        for anchors_i, target, size in zip(anchors, targets, image_sizes, strict=True):
            gt_boxes = target["boxes"].to(anchors_i.dtype)
            if self.ignore_cross_boundary:
                # Match among the visible anchors only (py-faster-rcnn's "inds_inside"),
                # so the low-quality rule picks the best *visible* anchor per object.
                visible = anchor_visibility(anchors_i, size)
                matches = torch.full(
                    (anchors_i.shape[0],), Matcher.BETWEEN_THRESHOLDS, dtype=torch.int64,
                    device=anchors_i.device,
                )  # fmt: skip
                matches[visible] = self.matcher(box_iou(gt_boxes, anchors_i[visible]))
            else:
                matches = self.matcher(box_iou(gt_boxes, anchors_i))
            labels.append(label_anchors(matches))
            matched = anchors_i.clone()
            has_gt = matches >= 0
            matched[has_gt] = gt_boxes[matches[has_gt]]
            matched_boxes.append(matched)
        return labels, matched_boxes

    # -- forward ----------------------------------------------------------------------

    def forward(
        self,
        images: ImageList,
        features: Sequence[Tensor] | Mapping[str, Tensor] | Tensor,
        targets: Sequence[Mapping[str, Tensor]] | None = None,
        intermediates: dict | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Proposals for a batch, and the loss when ``targets`` are given.

        Args:
            images: the padded batch (for the anchors' strides and the true image sizes).
            features: one ``(N, C, H_l, W_l)`` map per level (a list, a dict as the
                backbone returns it, or one tensor for one level).
            targets: per image a dict with ``boxes`` ``(G_i, 4)`` xyxy; required in
                training mode, optional in eval (then the loss is computed too).
            intermediates: a dict to fill with named intermediate results for drawing:
                ``anchors`` (A_total, 4) (the same for every image), ``num_anchors_per_level``,
                ``objectness`` (N, A_total) logits, ``rpn_deltas`` (N, A_total, 4),
                ``proposals_before_nms`` / ``proposal_scores_before_nms`` and ``proposals`` /
                ``proposal_scores`` (lists per image); with targets also
                ``anchor_labels`` (list of (A_total,) 1/0/-1), ``matched_gt_boxes``,
                ``sampled_positive`` / ``sampled_negative`` (lists of bool masks).

        Returns:
            ``(proposals, losses)``: per image ``(P_i, 4)`` boxes, and ``{"loss_objectness",
            "loss_rpn_box_reg"}`` (empty without targets).
        """
        if isinstance(features, Tensor):
            features = [features]
        elif isinstance(features, Mapping):
            features = list(features.values())
        if self.training and targets is None:
            raise ValueError("RegionProposalNetwork: targets are required in training mode.")
        logits, deltas = self.head(features)
        anchors = self.anchor_generator(images, features)  # N x (A_total, 4)
        objectness, pred_deltas, num_anchors_per_level = flatten_head_outputs(logits, deltas)
        num_images = len(anchors)
        # Proposals carry no gradient: the RoI head treats them as fixed boxes (the
        # approximate joint training of section 3.2).
        proposals = self.box_coder.decode(
            pred_deltas.detach().reshape(-1, 4), torch.cat(anchors)
        ).view(num_images, -1, 4)
        boxes, scores = self.filter_proposals(
            proposals, objectness, images.image_sizes, num_anchors_per_level, intermediates
        )
        if intermediates is not None:
            intermediates.update(
                anchors=anchors[0],
                num_anchors_per_level=num_anchors_per_level,
                feature_sizes=[tuple(f.shape[-2:]) for f in features],
                objectness=objectness.detach(),
                rpn_deltas=pred_deltas.detach(),
                proposals=boxes,
                proposal_scores=scores,
            )

        losses: dict[str, Tensor] = {}
        if targets is not None:
            labels, matched_boxes = self.assign_targets(anchors, targets, images.image_sizes)
            regression_targets = self.box_coder.encode(torch.cat(matched_boxes), torch.cat(anchors))
            pos, neg = self.sampler(labels)
            pos, neg = torch.cat(pos), torch.cat(neg)
            minibatch = torch.full_like(objectness.reshape(-1), -1.0)
            minibatch[neg] = 0.0
            minibatch[pos] = 1.0
            loss_objectness, loss_box = rpn_loss(
                objectness.reshape(-1),
                pred_deltas.reshape(-1, 4),
                minibatch,
                regression_targets,
                self.lambda_reg,
                self.normalization,
                num_anchor_locations=num_images * sum(f.shape[-2] * f.shape[-1] for f in features),
            )
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_box}
            if intermediates is not None:
                counts = [a.shape[0] for a in anchors]
                intermediates.update(
                    anchor_labels=labels,
                    matched_gt_boxes=matched_boxes,
                    sampled_positive=list(pos.split(counts)),
                    sampled_negative=list(neg.split(counts)),
                )
        return boxes, losses


def _train_test(value: Mapping[str, int] | int) -> dict[str, int]:
    if isinstance(value, Mapping):
        missing = {"training", "testing"} - set(value)
        if missing:
            raise ValueError(
                f"RegionProposalNetwork: top-n dicts need 'training' and 'testing', got "
                f"{dict(value)!r}."
            )
        return {"training": int(value["training"]), "testing": int(value["testing"])}
    return {"training": int(value), "testing": int(value)}
