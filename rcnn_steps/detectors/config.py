"""The detectors' one config: :class:`DetectorConfig`, every switch of chapters 03-07 in
one plain dataclass, with its presets by scale as class methods (:meth:`DetectorConfig.ci`,
:meth:`~DetectorConfig.cpu`, :meth:`~DetectorConfig.cpu_fpn`, :meth:`~DetectorConfig.gpu`
and the mask presets), and the one rule of what each field accepts
(:func:`check_config_field`, :func:`accepted_values`), run on construction, on JSON read
back and on ``--set name=value`` (:meth:`DetectorConfig.parse_override`). The fields are
stored flat and read by section (:data:`SECTIONS`: ``rpn``, ``box``, ``mask``...;
:meth:`DetectorConfig.section`), whose dotted names (``mask.loss``) ``--set`` and the
presets' overrides take too. The rule's tables (:data:`FIELD_LIMITS`,
:data:`FIELD_CHOICES`, :data:`BACKBONES`), its tests of one value and the sections live in
:mod:`rcnn_steps.detectors.config_fields` and are re-exported here.

The training schedule that goes with a preset is not the model's: it lives in the
preset's record (:mod:`rcnn_steps.experiments.presets`). Built into a model by
:mod:`rcnn_steps.detectors.faster_rcnn`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from dataclasses import dataclass, field
from typing import Any

from rcnn_steps.detectors.config_fields import (  # noqa: F401 (re-exported: the field rules' old path)
    _FIELD_ADVICE,
    _LIMIT_TESTS,
    _MAY_BE_EMPTY,
    _PATH_FIELDS,
    BACKBONES,
    FIELD_CHOICES,
    FIELD_LIMITS,
    SECTIONS,
    _element_fits,
    _FieldType,
    _fits,
    _parse_element,
    _Unreadable,
    flat_name,
    flat_overrides,
)
from rcnn_steps.modeling.fpn import check_levels, level_number

__all__ = [
    "BACKBONES",
    "DetectorConfig",
    "FIELD_CHOICES",
    "FIELD_LIMITS",
    "SECTIONS",
    "accepted_values",
    "check_config_field",
    "flat_name",
    "flat_overrides",
]


@dataclass
class DetectorConfig:
    """Every hyper-parameter of the detectors of chapters 03-05 (and later, via the same
    fields: ``roi_op`` switches RoIPool to RoIAlign in chapter 06).

    Defaults are the papers' / torchvision's values scaled to 128 px images; the presets
    (:meth:`ci`, :meth:`cpu`, :meth:`cpu_fpn`, :meth:`gpu`) change what they must. With
    ``fpn=True`` the ``fpn_*`` and ``roi_canonical_*`` fields replace ``feature_stage``
    and ``anchor_sizes`` (which are then unused). ``num_classes`` counts object
    classes only (the synthetic set has 6); the predictor adds background.

    Construction checks every field against its declared type and range
    (:func:`check_config_field`, :data:`FIELD_LIMITS`, :data:`FIELD_CHOICES`) and then
    how fields combine; :meth:`parse_override` reads a field's value from text.

    The fields are stored flat, one level of names with a prefix per part (``rpn_``,
    ``roi_`` / ``box_``, ``mask_``...), and stay so: every run's cache key
    (``results/runs/*.json``), every results file's ``overrides``, every checkpoint's
    ``config`` and the notebooks name them flat, and ``dataclasses.asdict(config)`` is
    what they hash and compare. Read them by part instead through :data:`SECTIONS`
    (``backbone``, ``rpn``, ``fpn``, ``roi``, ``box``, ``mask``, ``keypoint``, ...):
    :meth:`section` gives one part's values by short name (None for a branch that is
    off), :meth:`display` prints them grouped, and ``--set`` / :meth:`parse_override` and
    the presets' overrides take the dotted names too (``mask.loss`` for ``mask_loss``,
    :func:`flat_name`), always stored under the flat name.
    """

    # -- data and backbone ------------------------------------------------------------
    num_classes: int = 6  #: object classes (background not counted)
    #: "tiny" (TinyBackbone) | "resnet50" | "resnet101" (ResNetBackbone, chapter 05)
    backbone: str = "tiny"
    backbone_width: int = 32  #: TinyBackbone width (channels of c2; c4 has 4x)
    #: TinyBackbone depth: 3x3 convs per stage after its first (2: a deeper backbone,
    #: the R-50 vs R-101 question of Mask R-CNN Table 2a)
    backbone_blocks: int = 1
    backbone_weights: str | None = None  #: ResNet only: a local state dict (never downloaded)
    #: ResNet only: stages trained, from the top (c5, c4, c3, c2, stem), 0..5; None: 3
    #: with backbone_weights (and frozen batch norm), 5 without (torchvision's rule)
    backbone_trainable_layers: int | None = None
    feature_stage: str = "c4"  #: the single feature map of the RPN and RoI pooling (no FPN)
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  #: normalisation
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    #: pad batches to a multiple of this; None: the largest stride (32, 64 with FPN's P6)
    size_divisible: int | None = None
    # -- anchors and RPN (Faster R-CNN section 3) -------------------------------------
    #: sqrt(area), pixels (paper: 128-512), all on the single map (FPN: fpn_anchor_sizes)
    anchor_sizes: tuple[int, ...] = (16, 32, 64)
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
    # -- feature pyramid (FPN, Lin et al. 2017; chapter 05) ---------------------------
    fpn: bool = False  #: RPN and RoI pooling on P2..P6 instead of one feature_stage
    fpn_channels: int = 64  #: d, the channels of every level (paper: 256)
    fpn_levels: tuple[str, ...] = ("p2", "p3", "p4", "p5", "p6")  #: the RPN's levels
    #: one anchor size per level of fpn_levels (paper: 32..512 on P2..P6; see cpu_fpn)
    fpn_anchor_sizes: tuple[int, ...] = (8, 16, 32, 64, 128)
    fpn_roi_levels: tuple[str, ...] = ("p2", "p3", "p4", "p5")  #: RoIs pooled from these
    #: s0 and k0 of FPN eq. (1): paper 224 at level 4; scaled as the anchors (/4)
    roi_canonical_size: float = 56.0
    roi_canonical_level: int = 4
    # -- RoI heads (Fast R-CNN) -------------------------------------------------------
    roi_op: str = "roipool"  #: roipool | roiwarp_max | roiwarp_avg | roialign_max | roialign_avg
    pooled_size: int = 7
    sampling_ratio: int = 2  #: RoIWarp/RoIAlign sampling points per bin side
    roi_aligned: bool = False  #: RoIWarp/RoIAlign half-pixel shift (paper: False)
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
    detections_per_img: int = 100  #: kept per image; only these get masks and keypoints
    # -- mask branch (Mask R-CNN, He et al. 2017; chapter 07) --------------------------
    masks: bool = False  #: add the mask branch (Mask R-CNN); False: Faster R-CNN
    #: "fcn" (4 convs + deconv, Figure 4 right), "c5" (the C4 design: the box head's
    #: res5 + deconv, Figure 4 left; needs box_head="c5") or "mlp" (Table 2e)
    mask_head: str = "fcn"
    #: "sigmoid" (per-class binary masks, section 3) or "softmax" (Table 2b)
    mask_loss: str = "sigmoid"
    mask_class_agnostic: bool = False  #: one mask per RoI instead of one per class
    #: pixel convention of mask targets and pasting: False torchvision's (the paper's
    #: code's), True Detectron2's exact one (mask_head.paste_masks_in_image; chapter 07)
    mask_aligned: bool = False
    mask_roi_op: str | None = None  #: the mask branch's RoI layer; None: roi_op
    mask_pooled_size: int = 14  #: RoI features of the mask head (masks are twice that)
    mask_head_channels: int = 256  #: width of the FCN convs and the deconv (paper: 256)
    mask_head_convs: int = 4  #: 3x3 convs of the FCN head (paper: 4)
    mask_mlp_layers: int = 2  #: "mlp" head: hidden fc layers (Table 2e: 2, or 3)
    mask_mlp_size: int = 1024  #: "mlp" head: their width (paper: 1024)
    # -- keypoint branch (Mask R-CNN section 5; chapter 07) ----------------------------
    keypoints: bool = False  #: add the keypoint branch
    #: one keypoint count per class (0: no keypoints), e.g. keypoint_counts_of(dataset
    #: .categories); the synthetic set: (0, 0, 0, 0, 0, 11), its person has 11
    keypoint_counts: tuple[int, ...] = (0, 0, 0, 0, 0, 11)
    keypoint_roi_op: str | None = None  #: the keypoint branch's RoI layer; None: roi_op
    keypoint_pooled_size: int = 14  #: RoI features (heatmaps are 4x: 56 x 56)
    keypoint_head_channels: int = 512  #: width of the convs (paper: 512)
    keypoint_head_convs: int = 8  #: 3x3 convs (paper: 8)
    #: multiplies loss_keypoint (Detectron2's ROI_KEYPOINT_HEAD.LOSS_WEIGHT; the paper: 1).
    #: At cpu_mask's learning rate the branch stops learning at 1 (chapter 08)
    keypoint_loss_weight: float = 1.0
    # -- bookkeeping ------------------------------------------------------------------
    preset: str = field(default="default", compare=False)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type and range of each field, one by one
            setattr(self, f.name, check_config_field(f.name, getattr(self, f.name)))
        self._check_backbone_and_fpn()
        if self.box_head == "c5" and self.feature_stage != "c4":
            raise ValueError(
                "box_head='c5' runs res5 on RoIs pooled from c4: set feature_stage='c4'."
            )
        for stage in ("rpn", "roi"):  # the matchers' rule (matcher.Matcher): bg <= fg
            fg = getattr(self, f"{stage}_fg_iou_thresh")
            bg = getattr(self, f"{stage}_bg_iou_thresh")
            if bg > fg:
                raise ValueError(
                    f"{stage}_bg_iou_thresh ({bg}) must be <= {stage}_fg_iou_thresh ({fg}): "
                    "below the first a box is background, from the second on an object."
                )
        if self.roi_bg_iou_low > self.roi_bg_iou_thresh:
            raise ValueError(
                f"roi_bg_iou_low ({self.roi_bg_iou_low}) must be <= roi_bg_iou_thresh "
                f"({self.roi_bg_iou_thresh}): background RoIs are those with IoU in "
                "[roi_bg_iou_low, roi_bg_iou_thresh), which would be empty."
            )
        self._check_branches()

    def _check_branches(self) -> None:
        """Validate how the mask and keypoint fields combine (chapter 07)."""
        self.keypoint_counts = tuple(int(c) for c in self.keypoint_counts)
        if self.masks and self.mask_head == "c5" and self.box_head != "c5":
            raise ValueError(
                "mask_head='c5' is the C4 design's mask head: it reuses the box head's res5 "
                "stage, so it needs box_head='c5' (and feature_stage='c4'); with another box "
                "head use mask_head='fcn'."
            )
        if self.masks and self.mask_loss == "softmax" and self.mask_class_agnostic:
            raise ValueError(
                "mask_loss='softmax' makes the classes compete at every pixel, which needs "
                "one mask per class; class-agnostic masks (one per RoI) go with "
                "mask_loss='sigmoid'."
            )
        if self.keypoints:
            counts = self.keypoint_counts
            if len(counts) != self.num_classes or max(counts, default=0) == 0:
                raise ValueError(
                    f"keypoint_counts must hold one count >= 0 per class ({self.num_classes} "
                    f"classes), at least one above 0, got {counts}; for a COCO-format "
                    "dataset use rcnn_steps.modeling.keypoint_head.keypoint_counts_of(dataset."
                    "categories), or set keypoints=False for data without keypoints."
                )
        if self.mask_head == "c5" and self.mask_pooled_size % 2:
            raise ValueError(
                "mask_head='c5' halves the RoI features (res5 has stride 2) and the deconv "
                f"doubles them back: mask_pooled_size must be even, got {self.mask_pooled_size}."
            )

    @classmethod
    def parse_override(cls, name: str, text: str) -> Any:
        """The value of field ``name`` written as ``text`` on a command line (``python -m
        rcnn_steps train --set name=text``), checked as the constructor checks it: bools
        ``true`` / ``false`` in any case, ints, numbers (``1e-3``), names, tuples as
        ``16,32,64`` (or Python's ``(16, 32, 64)``; ``16`` is a tuple of one), ``none``
        for the fields that may be None. A ValueError names the field, the text and
        what the field accepts, instead of keeping a value the field cannot take (the
        string ``"false"`` is true). ``name`` is the flat field name or its section's
        dotted one (``mask.loss`` for ``mask_loss``, :data:`SECTIONS`)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        if name.partition(".")[0] in SECTIONS:
            name = flat_name(name)  # a ValueError naming the section's fields
        if name not in fields:
            # "MASKS", "config.masks", "Mask-Aligned": matched as the field they spell
            spelled = name.rpartition(".")[2].strip().lower().replace("-", "_")
            close = [spelled] if spelled in fields else []
            close = close or difflib.get_close_matches(spelled, sorted(fields), n=1)
            raise ValueError(
                f"{name!r} is not a field of DetectorConfig"
                + (f"; did you mean {close[0]!r}?" if close else "")
                + " (config.display() lists them)"
            )
        if name == "preset":
            raise ValueError(
                "preset is the name of the preset a config was made from, not a setting; "
                "choose the preset itself (--preset)"
            )
        value = _parse_field_text(name, text.strip())
        return check_config_field(name, value, shown=text)

    @property
    def mask_resolution(self) -> int:
        """M, the side of the predicted masks: twice the pooled size for "fcn" and "mlp"
        (14 -> 28); the pooled size for "c5" (res5 halves it, the deconv doubles it)."""
        return self.mask_pooled_size * (1 if self.mask_head == "c5" else 2)

    @property
    def heatmap_size(self) -> int:
        """m, the side of the keypoint heatmaps: 4x the pooled size (14 -> 56)."""
        return self.keypoint_pooled_size * 4

    def _check_backbone_and_fpn(self) -> None:
        """Validate the backbone and FPN fields and resolve ``size_divisible=None``."""
        if self.backbone != "tiny" and self.backbone_blocks != 1:
            raise ValueError(
                "backbone_blocks sets TinyBackbone's depth; the ResNets have their own "
                "(backbone='resnet50' or 'resnet101')."
            )
        if self.backbone == "tiny" and (
            self.backbone_weights is not None or self.backbone_trainable_layers is not None
        ):
            raise ValueError(
                "backbone_weights and backbone_trainable_layers apply to the ResNet backbones "
                "(backbone='resnet50' or 'resnet101'); TinyBackbone always trains from scratch."
            )
        if self.backbone_weights is not None:
            self.backbone_weights = str(self.backbone_weights)
        largest_stride = 32
        if self.fpn:
            if self.box_head == "c5":
                raise ValueError(
                    "box_head='c5' is the C4 design (res5 runs on every RoI pooled from c4) "
                    "and does not combine with fpn=True: with FPN, c5 runs once on the whole "
                    "image to build P5 and RoIs are pooled from P2..P5 with fpn_channels "
                    "channels; use box_head='mlp', the FPN paper's two-fc head (section 4.2)."
                )
            check_levels(self.fpn_levels, "fpn_levels")
            check_levels(self.fpn_roi_levels, "fpn_roi_levels", reach_p5=False)
            if not set(self.fpn_roi_levels) <= set(self.fpn_levels):
                raise ValueError(
                    f"fpn_roi_levels {self.fpn_roi_levels} must be among fpn_levels "
                    f"{self.fpn_levels} (the pyramid the backbone builds)."
                )
            if len(self.fpn_anchor_sizes) != len(self.fpn_levels):
                raise ValueError(
                    f"fpn_anchor_sizes needs one size per level of fpn_levels {self.fpn_levels} "
                    f"(FPN section 4.1: one scale per level), got {self.fpn_anchor_sizes}."
                )
            largest_stride = 2 ** level_number(self.fpn_levels[-1])
        if self.size_divisible is None:
            self.size_divisible = largest_stride
        elif self.fpn and self.size_divisible % largest_stride:
            raise ValueError(
                f"size_divisible={self.size_divisible} is not a multiple of the pyramid's "
                f"largest stride {largest_stride} ({self.fpn_levels[-1]}): the coarsest "
                "level's cells would not line up with the image (its anchors would be laid "
                f"at a wrong stride); use {largest_stride} or None (automatic)."
            )

    # -- presets ----------------------------------------------------------------------
    # Each takes ``**overrides`` by flat or dotted name (``**{"mask.loss": "softmax"}``),
    # turned into flat ones before the preset's own values are merged (flat_overrides).

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
            fpn_channels=16,  # used with fpn=True only
            preset="ci",
        )
        return cls(**{**values, **flat_overrides(overrides)})

    @classmethod
    def cpu(cls, **overrides: Any) -> DetectorConfig:
        """The default for a 2-core laptop: meaningful AP on the synthetic set in a few
        minutes of training (:func:`rcnn_steps.experiments.train_config` gives the schedule).

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
        return cls(**{**values, **flat_overrides(overrides)})

    @classmethod
    def cpu_fpn(cls, **overrides: Any) -> DetectorConfig:
        """:meth:`cpu` with a feature pyramid (chapter 05): the same width-32
        TinyBackbone, RPN sampling, RoI batch, 7 x 7 pooling and fc6/fc7 of 128, with
        ``fpn_channels=64`` (so the RoI head reads 64 x 7 x 7 features as the cpu
        preset's c3 does), and the same schedule (``train_config("cpu_fpn")`` equals
        ``train_config("cpu")``): single map vs pyramid on the same budget.

        Anchors: one size per level, 8, 16, 32, 64, 128 px on P2..P6 (strides 4..64), 3
        ratios each: the paper's 32..512 (section 4.1) divided by 4. Not by 16 as chapter
        04 scaled Faster R-CNN's 128..512 (that gives 2..32 px, anchors narrower than the
        cells of their own level: size = stride leaves objects between two anchors at
        IoU 1/3, and 4..64 px on P2..P6 covers only 21% of the val objects at IoU >= 0.5),
        and not by the image ratio (x0.16, 5..82 px: the same problem at P2). A size of
        twice the level's stride is the smallest that tiles each level (as 8 px on the
        stride-8 map of :meth:`cpu`), 8 px is the objects' lower quartile (sqrt(area)
        quartiles 9 / 17 / 33, 5th-95th percentile 5-52 px) and the five octaves span
        them with one to spare at the top, as the paper's 32..512 span COCO's. The
        divisor also fixes s0 of eq. (1), ``roi_canonical_size = 224 / 4 = 56`` at
        ``roi_canonical_level = 4`` (:mod:`rcnn_steps.modeling.poolers`).

        Measured on the 634 val objects of the synthetic set (128 px; an object counts
        if some anchor reaches the IoU): this choice puts an anchor at IoU >= 0.5 on 72%
        of them, the cpu preset's (8, 16, 32, 64) on stride 8 on 66% (at IoU >= 0.7:
        12% vs 17%). By COCO's scaled size classes (small < 6.4 px, large > 19.2 px):
        small 8% vs 2%, medium 84% vs 52%, large 74% vs 94%: the pyramid's finer P2
        places the small and medium anchors more densely, the single stride-8 map places
        its large anchors more densely than P4/P5 do.

        Cost (``torch.utils.flop_counter``, one 128 px image with two objects): 600 M
        multiply-adds per training step (forward and backward) vs the cpu preset's 229 M,
        216 M vs 92 M in eval (backbone + FPN 122 M vs 40 M: the cpu preset stops at c3),
        1.83 M vs 1.65 M parameters. "The same budget" is the same schedule and heads,
        not the same arithmetic.
        """
        values = dict(fpn=True, fpn_channels=64, preset="cpu_fpn")
        return cls.cpu(**{**values, **flat_overrides(overrides)})

    @classmethod
    def gpu(cls, **overrides: Any) -> DetectorConfig:
        """ResNet-50-FPN at the paper's sizes, for the synthetic set at 512 px
        (``python -m rcnn_steps.data synth --size 512 ...``; objects scale with the
        image, so 4x those at 128 px): anchors 32..512 on P2..P6 and ``s0 = 224`` at
        ``k0 = 4`` exactly as in FPN section 4 (:meth:`cpu_fpn` divided by 4 because
        its images are 4x smaller; these anchors put one at IoU >= 0.5 on 93% of the
        val objects scaled to 512 px, 41% at 0.7), ``d = 256``, fc6/fc7 of 1024, 512
        RoIs and 256 anchors per image, the RPN's 0.7 / 0.3 and top-n as torchvision's
        (the defaults). RoIPool, as the FPN paper (chapter 06 switches ``roi_op``).

        Without ``backbone_weights`` the ResNet trains from scratch with ordinary batch
        norm and every stage trainable; with a local ImageNet state dict
        (``backbone_weights=path``) batch norm is frozen and the stem and c2 too
        (torchvision's rule, :class:`~rcnn_steps.modeling.backbones.ResNetBackbone`). Not trained
        in this repository; it needs a GPU.
        """
        values = dict(
            backbone="resnet50",
            fpn=True,
            fpn_channels=256,
            fpn_anchor_sizes=(32, 64, 128, 256, 512),
            roi_canonical_size=224.0,
            box_head_size=1024,
            roi_batch_size_per_image=512,
            preset="gpu",
        )
        return cls(**{**values, **flat_overrides(overrides)})

    # -- Mask R-CNN presets (chapter 07) ------------------------------------------------

    @classmethod
    def ci_mask(cls, **overrides: Any) -> DetectorConfig:
        """:meth:`ci` with slim mask and keypoint branches, for tests and shape cells."""
        values = dict(
            masks=True,
            keypoints=True,
            roi_op="roialign_avg",
            mask_head_channels=8,
            keypoint_head_channels=8,
            keypoint_head_convs=2,
            mask_mlp_size=32,
            preset="ci_mask",
        )
        return cls.ci(**{**values, **flat_overrides(overrides)})

    @classmethod
    def cpu_mask(cls, **overrides: Any) -> DetectorConfig:
        """Mask R-CNN for a 2-core laptop: chapter 05's :meth:`cpu_fpn` detector with
        RoIAlign (chapter 06) in every branch, plus the FCN mask head (four 3x3 convs,
        deconv to 28 x 28, per-class sigmoid masks) and the keypoint head (eight 3x3
        convs, deconv + 2x up to 56 x 56) on 14 x 14 RoIs, as the paper's ResNet-FPN
        Mask R-CNN, both heads slimmed from the paper's 256 / 512 channels to 64 / 64
        (``train_config("cpu_mask")`` is its schedule). RoIAlign without the half-pixel
        shift (``roi_aligned=False``), as the paper and torchvision's Mask R-CNN."""
        values = dict(
            roi_op="roialign_avg",
            masks=True,
            keypoints=True,
            mask_head_channels=64,
            keypoint_head_channels=64,
            preset="cpu_mask",
        )
        return cls.cpu_fpn(**{**values, **flat_overrides(overrides)})

    @classmethod
    def gpu_mask(cls, **overrides: Any) -> DetectorConfig:
        """:meth:`gpu` (ResNet-50-FPN at the paper's sizes, for 512 px images) as Mask
        R-CNN: RoIAlign, the paper's FCN mask head (256 channels) and keypoint head (512
        channels, 8 convs). Not trained in this repository; it needs a GPU."""
        values = dict(roi_op="roialign_avg", masks=True, keypoints=True, preset="gpu_mask")
        return cls.gpu(**{**values, **flat_overrides(overrides)})

    @classmethod
    def coco_mask(cls, **overrides: Any) -> DetectorConfig:
        """The paper's ResNet-50-FPN Mask R-CNN on COCO 2017 (He et al. 2017, section 3.1;
        FPN section 4): 80 classes, anchors 32..512 on P2..P6, RoIAlign, 512 RoIs and 256
        anchors per image, 2000 / 1000 proposals in training / test, the FCN mask head of
        256 channels, 100 detections, no keypoints (COCO's instance annotations have
        none). Images are resized to a shorter side of 800 (longer at most 1333) by the
        data (the preset's feeding, in :data:`rcnn_steps.experiments.PRESETS`), and
        ``train_config("coco_mask")`` is the paper's schedule for 16 images per batch (2
        per GPU on 8 GPUs). The backbone starts from ``backbone_weights`` (an ImageNet
        state dict you have; never downloaded) or, without, from scratch. For users with
        COCO and GPUs; not run in this repository."""
        values = dict(
            num_classes=80, keypoints=False, rpn_post_nms_top_n_train=2000, preset="coco_mask"
        )
        return cls.gpu_mask(**{**values, **flat_overrides(overrides)})

    # -- printing and reading by section -----------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def section(self, name: str) -> dict[str, Any] | None:
        """The fields of section ``name`` of :data:`SECTIONS` by their short names
        (``config.section("mask")["loss"]`` is ``config.mask_loss``), or None for a branch
        that is off: ``fpn``, ``mask`` and ``keypoint`` with ``fpn``, ``masks`` or
        ``keypoints`` False, whose other fields are then unused."""
        if name not in SECTIONS:
            raise ValueError(f"no section {name!r}; the sections: {', '.join(SECTIONS)}")
        fields = SECTIONS[name]
        if "enabled" in fields and not getattr(self, fields["enabled"]):
            return None
        return {short: getattr(self, flat) for short, flat in fields.items()}

    def display(self) -> None:
        """Print every hyper-parameter grouped by section (:data:`SECTIONS`), each under
        its flat name (the one results files record; ``--set`` takes it or the section's
        dotted one), aligned in two columns; a branch that is off is one line."""
        names = [flat for fields in SECTIONS.values() for flat in fields.values()]
        width = max(len(k) for k in [*names, "(mask resolution M)"])
        print(f"{type(self).__name__} (preset {self.preset!r})")
        for name, fields in SECTIONS.items():
            if self.section(name) is None:
                print(f"  {name}: off ({fields['enabled']}=False)")
                continue
            print(f"  {name}:")
            for flat in fields.values():
                print(f"    {flat:<{width}}  {getattr(self, flat)!r}")
            if name == "mask":
                print(f"    {'(mask resolution M)':<{width}}  {self.mask_resolution}")
            if name == "keypoint":
                print(f"    {'(heatmap size m)':<{width}}  {self.heatmap_size}")


@functools.cache
def _field_types() -> dict[str, _FieldType]:
    """Every field's declared type (``tuple[int, ...]``, ``str | None``, ...) by name."""
    found = {}
    for name, hint in typing.get_type_hints(DetectorConfig).items():
        args = typing.get_args(hint)
        optional = type(None) in args
        if optional:
            (hint,) = (a for a in args if a is not type(None))
        length = None
        if typing.get_origin(hint) is tuple:
            elements = typing.get_args(hint)
            length = 0 if elements[-1] is Ellipsis else len(elements)
            hint = elements[0]
        found[name] = _FieldType(hint, length, optional)
    return found


def accepted_values(name: str) -> str:
    """What field ``name`` of :class:`DetectorConfig` accepts, in words: ``"true or
    false"``, ``">= 1 (an int)"``, ``"one of ('fcn', 'mlp', 'c5')"``, ``"a tuple of one or
    more ints > 0 (e.g. 16,32,64)"``..."""
    kind = _field_types()[name]
    limit, choices = FIELD_LIMITS.get(name), FIELD_CHOICES.get(name)
    if kind.length is None:
        if kind.base is bool:
            what = "true or false"
        elif choices:
            what = f"one of {choices}"
        elif kind.base is str:
            what = "a path" if name in _PATH_FIELDS else "a string"
        else:
            number = "an int" if kind.base is int else "a finite number"
            what = f"{limit} ({number})" if limit else number
    else:
        count = f"{kind.length}" if kind.length else "any number of"
        if not kind.length and name not in _MAY_BE_EMPTY:
            count = "one or more"
        elements = {int: "ints", float: "finite numbers", str: "names"}[kind.base]
        if choices:
            elements += f" from {choices}"
        if limit:
            elements += f" {limit}"
        example = ",".join(map(str, DetectorConfig.__dataclass_fields__[name].default))
        what = f"a tuple of {count} {elements} (e.g. {example})"
    return what + (" or None" if kind.optional else "")


def check_config_field(name: str, value: Any, shown: str | None = None) -> Any:
    """``value`` if field ``name`` of :class:`DetectorConfig` accepts it (a list, as
    JSON stores a tuple, comes back as a tuple), else a ValueError naming the field, the
    value (``shown``, when given: the text it was written as) and what the field accepts
    (:func:`accepted_values`). The one rule of every field's type and range, run by the
    constructor: ``masks="false"``, ``anchor_sizes=16`` or ``keypoint_loss_weight=nan``
    are refused here, not silently kept or met later as a TypeError deep in a model."""
    kind = _field_types()[name]
    if isinstance(value, list):
        value = tuple(value)
    if not _fits(name, kind, value):
        advice = _FIELD_ADVICE.get(name)
        raise ValueError(
            f"{name} must be {accepted_values(name)}, got "
            f"{shown if shown is not None else value!r}" + (f"; {advice}" if advice else "") + "."
        )
    return value


def _parse_field_text(name: str, text: str) -> Any:
    """Field ``name``'s value written as ``text`` (see :meth:`DetectorConfig.
    parse_override`); ``check_config_field`` then checks its range. Text that cannot be
    of the field's type raises the same error as a value of the wrong type."""
    kind = _field_types()[name]
    try:
        if kind.optional and text.lower() in ("none", "null"):
            return None
        if kind.length is None:
            return _parse_element(kind.base, text)
        inner = text[1:-1] if text[:1] + text[-1:] in ("()", "[]") else text
        parts = [p.strip() for p in inner.split(",")]
        if parts[-1] == "":  # "16," (Python's tuple of one) or "" (an empty tuple)
            parts.pop()
        return tuple(_parse_element(kind.base, p) for p in parts)
    except _Unreadable:
        check_config_field(name, text, shown=text)  # raises: a string is not of this type
        raise
