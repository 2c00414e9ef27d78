"""Faster R-CNN (Ren et al. 2015): backbone -> RPN -> RoI heads, one config.

The whole detector of chapter 04, read top to bottom:

1. :class:`DetectorConfig`: every switch in one plain dataclass (``config.display()``
   prints them all), with presets by scale (:meth:`DetectorConfig.ci`,
   :meth:`DetectorConfig.cpu`) and the training settings that go with them
   (:func:`train_config`).
2. :func:`build_backbone`, :func:`build_rpn`, :func:`build_roi_heads`: the parts, built
   from the config (the FPN of chapter 05 replaces the backbone's single map).
3. :class:`FasterRCNN`: ``forward(images, targets)`` in torchvision's convention (a dict
   of losses in training, a list of ``{boxes, labels, scores}`` in eval) and
   :meth:`FasterRCNN.inspect`, every stage's named intermediates for drawing
   (matterport Mask_RCNN's inspect notebooks).

Images are float ``(3, H, W)`` in [0, 1], any size (the synthetic set's are 128 x 128);
they are normalised, padded to a multiple of 32 (:class:`~rcnn_steps.image_list.ImageList`)
and never resized, so boxes stay in the image's pixels.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rcnn_steps.anchors import AnchorGenerator
from rcnn_steps.backbones import STAGES, TinyBackbone
from rcnn_steps.engine import TrainConfig
from rcnn_steps.image_list import ImageList
from rcnn_steps.roi_heads import (
    C5BoxHead,
    FastRCNNPredictor,
    RoIHeads,
    RoIPooler,
    TwoMLPHead,
    check_targets,
)
from rcnn_steps.rpn import RegionProposalNetwork, RPNHead

__all__ = [
    "DetectorConfig",
    "FasterRCNN",
    "build_backbone",
    "build_roi_heads",
    "build_rpn",
    "preprocess",
    "train_config",
]


@dataclass
class DetectorConfig:
    """Every hyper-parameter of the detectors of chapters 03-04 (and later, via the same
    fields: ``roi_op`` switches RoIPool to RoIAlign in chapter 06).

    Defaults are the papers' / torchvision's values scaled to 128 px images; the presets
    (:meth:`ci`, :meth:`cpu`) change what they must. ``num_classes`` counts object
    classes only (the synthetic set has 6); the predictor adds background.
    """

    # -- data and backbone ------------------------------------------------------------
    num_classes: int = 6  #: object classes (background not counted)
    backbone_width: int = 32  #: TinyBackbone width (channels of c2; c4 has 4x)
    feature_stage: str = "c4"  #: the single feature map of the RPN and RoI pooling
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  #: normalisation
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    size_divisible: int = 32  #: pad batches to a multiple of this (the largest stride)
    # -- anchors and RPN (Faster R-CNN section 3) -------------------------------------
    anchor_sizes: tuple[int, ...] = (16, 32, 64)  #: sqrt(area), pixels (paper: 128-512)
    anchor_aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  #: h / w
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_pre_nms_top_n_train: int = 2000  #: per level
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000  #: per image
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_min_size: float = 1e-3
    rpn_score_thresh: float = 0.0
    rpn_lambda: float = 1.0  #: lambda of eq. (1); 10 with normalization "paper"
    rpn_normalization: str = "torchvision"  #: "torchvision" or "paper" (losses.rpn_loss)
    rpn_ignore_cross_boundary: bool = False  #: section 3.3's training rule
    # -- RoI heads (Fast R-CNN) -------------------------------------------------------
    roi_op: str = "roipool"  #: roipool | roiwarp_max | roiwarp_avg | roialign_max | roialign_avg
    pooled_size: int = 7
    sampling_ratio: int = 2  #: RoIWarp/RoIAlign sampling points per bin side
    #: "mlp" (fc6, fc7) or "c5" (res5 on each RoI, the C4 design; the paper pools 14 x 14)
    box_head: str = "mlp"
    box_head_size: int = 256  #: width of fc6/fc7 (torchvision: 1024)
    roi_fg_iou_thresh: float = 0.5
    roi_bg_iou_thresh: float = 0.5
    roi_bg_iou_low: float = 0.0  #: Fast R-CNN: 0.1
    roi_batch_size_per_image: int = 128  #: RoIs per image (torchvision 512, Fast R-CNN 64)
    roi_positive_fraction: float = 0.25
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    detections_per_img: int = 100
    # -- bookkeeping ------------------------------------------------------------------
    preset: str = field(default="default", compare=False)

    def __post_init__(self) -> None:
        if self.feature_stage not in STAGES:
            raise ValueError(f"feature_stage must be one of {STAGES}, got {self.feature_stage!r}.")
        if self.box_head not in ("mlp", "c5"):
            raise ValueError(f"box_head must be 'mlp' or 'c5', got {self.box_head!r}.")
        if self.box_head == "c5" and self.feature_stage != "c4":
            raise ValueError(
                "box_head='c5' runs res5 on RoIs pooled from c4: set feature_stage='c4'."
            )
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (object classes), got {self.num_classes}.")
        self.anchor_sizes = tuple(self.anchor_sizes)
        self.anchor_aspect_ratios = tuple(self.anchor_aspect_ratios)

    # -- presets ----------------------------------------------------------------------

    @classmethod
    def ci(cls, **overrides: Any) -> DetectorConfig:
        """Seconds-scale: a width-8 backbone and small heads, for tests and notebook cells
        that only show shapes."""
        values = dict(
            backbone_width=8,
            box_head_size=32,
            rpn_pre_nms_top_n_train=200,
            rpn_pre_nms_top_n_test=100,
            rpn_post_nms_top_n_train=100,
            rpn_post_nms_top_n_test=50,
            roi_batch_size_per_image=32,
            rpn_batch_size_per_image=64,
            preset="ci",
        )
        return cls(**{**values, **overrides})

    @classmethod
    def cpu(cls, **overrides: Any) -> DetectorConfig:
        """The default for a 2-core laptop: meaningful AP on the synthetic set in a few
        minutes of training (:func:`train_config` gives the schedule).

        Sized for the synthetic set's objects, not the papers' (median sqrt(area) 16 px
        on 128 px images, a quarter below 9 px):

        - ``feature_stage="c3"`` (stride 8): at stride 16 only 39% of the objects have
          any anchor at IoU >= 0.5 (6% at 0.7), so the RPN sees ~4 positives per image
          and a small object is one cell of the RoI pool; stride 8 doubles the box AP at
          the same schedule (0.14 -> 0.29 after 1500 iterations). ``box_head="c5"`` (the
          C4 design) needs ``feature_stage="c4"``.
        - ``rpn_fg_iou_thresh=0.5`` and 64 sampled anchors per image: more, and a larger
          share of, positive anchors for those small objects.
        - ``backbone_width=32``: c3 has 64 channels, as c4 of width 16.
        """
        values = dict(
            backbone_width=32,
            feature_stage="c3",
            box_head_size=128,
            anchor_sizes=(8, 16, 32, 64),
            rpn_fg_iou_thresh=0.5,
            rpn_batch_size_per_image=64,
            rpn_pre_nms_top_n_train=1000,
            rpn_pre_nms_top_n_test=500,
            rpn_post_nms_top_n_train=300,
            rpn_post_nms_top_n_test=100,
            roi_batch_size_per_image=64,
            preset="cpu",
        )
        return cls(**{**values, **overrides})

    # -- printing ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def display(self) -> None:
        """Print every hyper-parameter in an aligned two-column table."""
        items = self.to_dict()
        width = max(len(k) for k in items)
        print(f"{type(self).__name__} (preset {self.preset!r})")
        for key, value in items.items():
            if key != "preset":
                print(f"  {key:<{width}}  {value!r}")


#: The training schedule that goes with each preset (engine.TrainConfig fields), for
#: batch 8 of 128 px images. Measured (cpu preset, one seed, first 50 val images, the
#: COCO loader, 2 threads on a shared 2-core CPU): box AP / AP50 0.19 / 0.44 after 750
#: iterations, 0.34 / 0.63 after 1500, in 425 s (~0.28 s per iteration, evaluation and
#: loading included, while other jobs loaded the machine; on the same machine when quiet,
#: 84 s: ~0.056 s per iteration, box AP / AP50 0.337 / 0.662). The earlier cpu preset
#: (stride 16, width 16, lr 0.02) reached 0.04 / 0.10 after 600 iterations, and
#: torchvision's FasterRCNN built from the same parts did no better (0.013 / 0.037 vs our
#: 0.012 / 0.030 after 200).
PRESET_TRAINING: dict[str, dict[str, Any]] = {
    "ci": dict(max_iter=30, lr=0.02, warmup_steps=5, log_every=10),
    "cpu": dict(max_iter=1500, lr=0.05, warmup_steps=50, lr_steps=(1200,), log_every=50),
}


def train_config(preset: str = "cpu", **overrides: Any) -> TrainConfig:
    """The :class:`~rcnn_steps.engine.TrainConfig` of a preset, with ``overrides``."""
    if preset not in PRESET_TRAINING:
        raise ValueError(
            f"train_config: unknown preset {preset!r}; one of {list(PRESET_TRAINING)}."
        )
    return TrainConfig(**{**PRESET_TRAINING[preset], **overrides})


# ----------------------------------------------------------------------------------------
# Building the parts


def build_backbone(config: DetectorConfig) -> TinyBackbone:
    """The backbone, returning only ``config.feature_stage``."""
    return TinyBackbone(config.backbone_width, return_stages=(config.feature_stage,))


def build_rpn(config: DetectorConfig, in_channels: int) -> RegionProposalNetwork:
    anchor_generator = AnchorGenerator(
        (tuple(config.anchor_sizes),), (tuple(config.anchor_aspect_ratios),)
    )
    head = RPNHead(in_channels, anchor_generator.num_anchors_per_location()[0])
    return RegionProposalNetwork(
        anchor_generator,
        head,
        fg_iou_thresh=config.rpn_fg_iou_thresh,
        bg_iou_thresh=config.rpn_bg_iou_thresh,
        batch_size_per_image=config.rpn_batch_size_per_image,
        positive_fraction=config.rpn_positive_fraction,
        pre_nms_top_n={
            "training": config.rpn_pre_nms_top_n_train,
            "testing": config.rpn_pre_nms_top_n_test,
        },
        post_nms_top_n={
            "training": config.rpn_post_nms_top_n_train,
            "testing": config.rpn_post_nms_top_n_test,
        },
        nms_thresh=config.rpn_nms_thresh,
        min_size=config.rpn_min_size,
        score_thresh=config.rpn_score_thresh,
        lambda_reg=config.rpn_lambda,
        normalization=config.rpn_normalization,
        ignore_cross_boundary=config.rpn_ignore_cross_boundary,
    )


def build_roi_heads(config: DetectorConfig, backbone: TinyBackbone) -> RoIHeads:
    """The box branch reading ``config.feature_stage`` of ``backbone``."""
    channels = backbone.out_channels[config.feature_stage]
    pooler = RoIPooler(config.roi_op, config.pooled_size, config.sampling_ratio)
    if config.box_head == "c5":
        box_head: nn.Module = C5BoxHead(backbone.split("c4")[1], backbone.out_channels["c5"])
    else:
        box_head = TwoMLPHead(channels * config.pooled_size**2, config.box_head_size)
    return RoIHeads(
        pooler,
        box_head,
        FastRCNNPredictor(box_head.out_channels, config.num_classes + 1),
        fg_iou_thresh=config.roi_fg_iou_thresh,
        bg_iou_thresh=config.roi_bg_iou_thresh,
        bg_iou_low=config.roi_bg_iou_low,
        batch_size_per_image=config.roi_batch_size_per_image,
        positive_fraction=config.roi_positive_fraction,
        score_thresh=config.box_score_thresh,
        nms_thresh=config.box_nms_thresh,
        detections_per_img=config.detections_per_img,
    )


def preprocess(
    images: Sequence[Tensor] | Tensor,
    targets: Sequence[Mapping[str, Tensor]] | None,
    config: DetectorConfig,
) -> tuple[ImageList, list[dict[str, Tensor]] | None]:
    """Check, normalise and pad a batch: ``(ImageList, targets)``.

    Images: a list of ``(3, H, W)`` float tensors (or one ``(N, 3, H, W)`` tensor), values
    in [0, 1]. Targets are checked with :func:`rcnn_steps.roi_heads.check_targets`.
    """
    if isinstance(images, Tensor):
        if images.dim() == 3:
            raise ValueError(
                f"images must be a list of (3, H, W) tensors or an (N, 3, H, W) batch, got "
                f"one tensor of shape {tuple(images.shape)}; wrap a single image in a list."
            )
        images = list(images.unbind(0)) if images.dim() == 4 else images
    if not isinstance(images, Sequence) or not len(images):
        raise ValueError("images must be a non-empty list of (3, H, W) tensors.")
    channels = len(config.image_mean)
    for i, img in enumerate(images):
        if not isinstance(img, Tensor) or img.dim() != 3 or img.shape[0] != channels:
            shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
            raise ValueError(
                f"images[{i}] must be a ({channels}, H, W) tensor, got {shape}"
                + ("; is it (H, W, C)? use image.permute(2, 0, 1)." if isinstance(img, Tensor)
                   and img.dim() == 3 and img.shape[-1] == channels else ".")
            )  # fmt: skip
        if not img.is_floating_point():
            raise TypeError(f"images[{i}] must be float in [0, 1], got {img.dtype}; use img / 255.")
        if min(img.shape[-2:]) < config.size_divisible:
            raise ValueError(
                f"images[{i}] is {tuple(img.shape[-2:])}; the detector needs at least "
                f"{config.size_divisible} pixels per side."
            )
    if targets is not None:
        check_targets(targets, [tuple(img.shape[-2:]) for img in images])
        targets = [dict(t) for t in targets]
    mean = torch.as_tensor(config.image_mean, dtype=images[0].dtype, device=images[0].device)
    std = torch.as_tensor(config.image_std, dtype=images[0].dtype, device=images[0].device)
    normalised = [(img - mean[:, None, None]) / std[:, None, None] for img in images]
    return ImageList.from_tensors(normalised, config.size_divisible), targets


# ----------------------------------------------------------------------------------------
# The model


class FasterRCNN(nn.Module):
    """Faster R-CNN with a single feature map (the "C4" design): backbone -> RPN ->
    RoI heads, all built from one :class:`DetectorConfig`.

    ``model.train(); losses = model(images, targets)`` returns ``{"loss_objectness",
    "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}`` (the four terms of
    Faster R-CNN's approximate joint training, section 3.2); ``model.eval();
    model(images)`` returns per image ``{"boxes" (D, 4) xyxy, "labels" (D,) in 1..K,
    "scores" (D,)}``. Targets: per image ``{"boxes" (G, 4) float xyxy, "labels" (G,)
    int64 in 1..K}``, G may be 0.
    """

    def __init__(self, config: DetectorConfig | None = None) -> None:
        super().__init__()
        self.config = config or DetectorConfig.cpu()
        self.backbone = build_backbone(self.config)
        channels = self.backbone.out_channels[self.config.feature_stage]
        self.rpn = build_rpn(self.config, channels)
        self.roi_heads = build_roi_heads(self.config, self.backbone)

    def _run(
        self,
        images: Sequence[Tensor] | Tensor,
        targets: Sequence[Mapping[str, Tensor]] | None,
        intermediates: dict | None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        image_list, targets = preprocess(images, targets, self.config)
        feature = self.backbone(image_list.tensors)[self.config.feature_stage]
        proposals, rpn_losses = self.rpn(image_list, [feature], targets, intermediates)
        detections, roi_losses = self.roi_heads(
            feature,
            proposals,
            image_list.image_sizes,
            image_list.tensors.shape[-2:],
            targets,
            intermediates,
        )
        if intermediates is not None:
            intermediates.update(image_sizes=image_list.image_sizes, feature=feature.detach())
        return detections, {**rpn_losses, **roi_losses}

    def forward(
        self,
        images: Sequence[Tensor] | Tensor,
        targets: Sequence[Mapping[str, Tensor]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training mode (``targets`` required), detections in eval mode
        (``targets`` ignored, as in torchvision)."""
        if self.training:
            if targets is None:
                raise ValueError("FasterRCNN: targets are required in training mode.")
            return self._run(images, targets, None)[1]
        return self._run(images, None, None)[0]

    @torch.no_grad()
    def inspect(
        self,
        images: Sequence[Tensor] | Tensor,
        targets: Sequence[Mapping[str, Tensor]] | None = None,
    ) -> dict[str, Any]:
        """Every stage's named intermediates, for drawing (no gradients; the mode is
        left as it is: in eval mode with targets you get both the training targets and
        the detections).

        Returns a dict with (per-image lists unless noted):

        - ``feature`` (N, C, H/16, W/16); ``image_sizes``;
        - RPN: ``anchors`` (A_total, 4), ``num_anchors_per_level``, ``feature_sizes``,
          ``objectness`` (N, A_total) logits, ``rpn_deltas`` (N, A_total, 4),
          ``proposals_before_nms`` + ``proposal_scores_before_nms``, ``proposals`` +
          ``proposal_scores``; with targets ``anchor_labels`` (1/0/-1),
          ``matched_gt_boxes``, ``sampled_positive``, ``sampled_negative``;
        - RoI heads: with targets ``sampled_rois``, ``sampled_labels``,
          ``sampled_regression_targets``; ``pooled_features`` (R, C, 7, 7) (of the
          sampled RoIs with targets, else of all proposals); in eval mode
          ``class_logits``, ``box_regression``, ``detections``;
        - ``losses`` (with targets).
        """
        intermediates: dict[str, Any] = {}
        detections, losses = self._run(images, targets, intermediates)
        if targets is not None:
            intermediates["losses"] = {k: v.detach() for k, v in losses.items()}
        if not self.training:
            intermediates["detections"] = detections
        return intermediates


# ----------------------------------------------------------------------------------------
# Command line


def _evaluate_command(args: argparse.Namespace) -> int:
    from rcnn_steps.ablations import detector_config, run_setting
    from rcnn_steps.evolution import add_row
    from rcnn_steps.utils import set_threads, write_results

    started = time.time()
    set_threads(args.threads)
    run = run_setting(
        "faster_rcnn",
        {},
        args.seed,
        args.preset,
        args.max_iter,
        method="rpn",
        root=args.root,
        num_eval_images=args.num_eval_images,
        progress=args.progress,
        timing_threads=args.timing_threads,
    )
    config = detector_config(args.preset, {})
    results = {**run, "config": config.to_dict()}
    write_results(args.out, results, preset=args.preset, seeds=[args.seed], started=started)
    metrics, seconds = run["metrics"], run["seconds_per_image"]
    if not args.no_evolution:
        add_row(
            "04",
            "Faster R-CNN",
            {"AP": metrics["AP"], "AP50": metrics["AP50"]},
            seconds,
            notes=(
                f"RPN ({config.rpn_post_nms_top_n_test} proposals) + RoIPool "
                f"{config.pooled_size}x{config.pooled_size} on shared stride-8 features, "
                f"trained jointly, preset {args.preset}"
            ),
            extra={"network_seconds_per_image": seconds, "proposal_seconds_per_image": 0.0},
        )
    print(
        f"AP {metrics['AP']:.3f} AP50 {metrics['AP50']:.3f}; {seconds:.4f} s/image "
        f"({run['timing_threads']} thread(s)); trained {run['train_seconds']:.0f} s; "
        f"wrote {args.out}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rcnn_steps.faster_rcnn evaluate``: train the preset's Faster R-CNN on
    the synthetic train set, measure box AP and seconds per image on the evolution
    table's val images, write ``results/faster_rcnn.json`` and the table's row."""
    from rcnn_steps.utils import results_dir

    parser = argparse.ArgumentParser(prog="python -m rcnn_steps.faster_rcnn")
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="train, evaluate, write results and the table row")
    ev.add_argument("--preset", choices=sorted(PRESET_TRAINING), default="cpu")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--max-iter", type=int, default=None, help="default: the preset's")
    ev.add_argument("--out", type=Path, default=results_dir() / "faster_rcnn.json")
    ev.add_argument(
        "--root", type=Path, default=None, help="a synthetic/COCO-format set (default: the book's)"
    )
    ev.add_argument(
        "--num-eval-images", type=int, default=None, help="default: the evolution table's 50"
    )
    ev.add_argument("--threads", type=int, default=2)
    ev.add_argument(
        "--timing-threads", type=int, default=None, help="threads at test time (default --threads)"
    )
    ev.add_argument("--progress", action="store_true")
    ev.add_argument("--no-evolution", action="store_true", help="do not add the table row")
    args = parser.parse_args(argv)
    return _evaluate_command(args)


if __name__ == "__main__":
    sys.exit(main())
