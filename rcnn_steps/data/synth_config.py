"""What the synthetic set is made of, and the config that decides it (chapter 00).

The categories every image draws from (:data:`CATEGORIES`, written into every annotation
file): five shapes (:data:`SHAPE_NAMES`) and ``person``, a stick figure with 11 named
keypoints (:data:`KEYPOINT_NAMES`), a skeleton, left/right flip pairs and OKS sigmas;
:class:`SynthConfig`, every argument of the generator (same config, same bytes); and
:func:`size_ranges`, COCO's small, medium and large objects scaled to the image.
:mod:`rcnn_steps.data.synth` generates the set from them and re-exports these names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SHAPE_NAMES = ("square", "bar", "pole", "disc", "triangle")
#: How objects are painted (:attr:`SynthConfig.scene_style`): ``flat``, one colour region
#: with a crisp edge each (the book's set); ``hard``, the same scenes painted as in
#: photographs (:func:`_paint_hard`).
SCENE_STYLES = ("flat", "hard")

KEYPOINT_NAMES = (
    "head",
    "neck",
    "left_elbow",
    "right_elbow",
    "left_hand",
    "right_hand",
    "hip",
    "left_knee",
    "right_knee",
    "left_foot",
    "right_foot",
)
# COCO writes skeletons with 1-based keypoint indices; we follow it in the JSON.
SKELETON = (
    (1, 2),
    (2, 3),
    (3, 5),
    (2, 4),
    (4, 6),
    (2, 7),
    (7, 8),
    (8, 10),
    (7, 9),
    (9, 11),
)
#: 0-based (left, right) index pairs, swapped by a horizontal flip.
FLIP_PAIRS = ((2, 3), (4, 5), (7, 8), (9, 10))
#: Per-keypoint OKS sigmas, taken from COCO's values for the analogous body part
#: (nose for the head, shoulders for the neck, wrists for the hands, ankles for the feet).
OKS_SIGMAS = (0.026, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.087, 0.087, 0.089, 0.089)

CATEGORIES = [
    {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPE_NAMES)
] + [
    {
        "id": len(SHAPE_NAMES) + 1,
        "name": "person",
        "supercategory": "articulated",
        "keypoints": list(KEYPOINT_NAMES),
        "skeleton": [list(p) for p in SKELETON],
        "flip_pairs": [list(p) for p in FLIP_PAIRS],
        "oks_sigmas": list(OKS_SIGMAS),
    }
]
PERSON_CATEGORY_ID = len(SHAPE_NAMES) + 1
DISC_CATEGORY_ID = SHAPE_NAMES.index("disc") + 1

# sqrt(area) bounds, as fractions of a 640-px COCO image: small < 32, medium < 96.
_SMALL, _MEDIUM = 32 / 640, 96 / 640


@dataclass(frozen=True)
class SynthConfig:
    """Everything that decides the generated set; same config, same bytes."""

    num_train: int = 1000
    num_val: int = 200
    size: int = 128
    seed: int = 0
    max_objects: int = 5
    #: mixture weights of small / medium / large objects (by sqrt of the area)
    size_mix: tuple[float, float, float] = (0.25, 0.45, 0.30)
    crowd_probability: float = 0.08
    distractors: tuple[int, int] = (2, 7)
    #: an object may hide at most this fraction of any earlier object
    max_occlusion: float = 0.5
    #: objects whose visible area is below this many pixels are not placed
    min_visible_area: int = 10
    #: None: lay the scene out at ``size``. Otherwise lay it out at this size, taking every
    #: random decision exactly as the ``layout_size`` px set does (the same seeds give the
    #: same objects, classes, places, poses, occlusions and crowds), and draw it at
    #: ``size`` px, every coordinate and radius multiplied by ``size / layout_size``.
    #: Pixel counts in the other fields (``min_visible_area``) are layout pixels. Any
    #: ratio of at least 1 works; whole ratios (2, 3) keep edges closest to the layout's.
    layout_size: int | None = None
    #: one of :data:`SCENE_STYLES`: ``hard`` paints the scenes that ``flat`` gives (every
    #: random decision of the layout taken as ``flat`` takes it, the annotations identical)
    #: with camouflaged, shaded, multi-part, soft-edged objects (:func:`_paint_hard`).
    scene_style: str = "flat"

    def __post_init__(self) -> None:
        if self.scene_style not in SCENE_STYLES:
            raise ValueError(
                f"--style must be one of {', '.join(SCENE_STYLES)}, got {self.scene_style!r}"
            )
        if self.layout_size is None:
            return
        if self.layout_size < 32:
            raise ValueError(f"--layout-size must be at least 32 pixels, got {self.layout_size}")
        if self.size < self.layout_size:
            raise ValueError(
                f"--size must be at least --layout-size ({self.layout_size} px), got "
                f"{self.size}: a layout is drawn at its own size or larger, never shrunk"
            )

    @property
    def drawn_larger(self) -> bool:
        """Is the scene laid out at ``layout_size`` and drawn at a larger ``size``?"""
        return self.layout_size is not None and self.layout_size != self.size


def size_ranges(size: int) -> dict[str, tuple[float, float]]:
    """The sqrt(area) range, in pixels, of each size class at image size ``size``.

    COCO's thresholds (32 and 96 px) are for images about 640 px across; we scale them by
    ``size / 640`` so that "small" means the same fraction of the image here as in COCO.
    """
    return {
        "small": (0.035 * size, _SMALL * size),
        "medium": (_SMALL * size, _MEDIUM * size),
        "large": (_MEDIUM * size, 0.42 * size),
    }


def category_names(categories: Sequence[dict] = CATEGORIES) -> list[str]:
    """Names in id order."""
    return [c["name"] for c in sorted(categories, key=lambda c: c["id"])]
