"""A seeded generator of synthetic detection data, written in COCO format (chapter 00).

Each image is a cluttered, textured background with 1 to ``max_objects`` instances of
six categories, drawn front to back so that later objects occlude earlier ones. The set is
designed for the chapters that come later:

- **aspect ratios** (chapter 04's anchors): ``square`` (1:1), ``bar`` (wide, about 3:1),
  ``pole`` (tall, about 1:3), ``disc`` and ``triangle``;
- **scale** (chapter 05's FPN): object sizes are drawn from a mixture of COCO's small,
  medium and large ranges, scaled to the image size (:func:`size_ranges`);
- **occlusion** (chapter 07's masks): an object may hide up to half of any earlier one, and
  boxes, masks and areas describe what is visible;
- **clutter** (chapters 01-02): gradients, low-frequency noise, stripe textures and
  distractors (rings, lines, crosses) that look like objects but are not annotated;
- **keypoints** (chapter 07): ``person``, an articulated stick figure with 11 named
  keypoints, COCO visibility flags (0 outside the image, 1 hidden behind another object,
  2 visible), a skeleton, left/right flip pairs and OKS sigmas. A figure faces the viewer
  (a light face: its left limbs are on the image's right) or turns its back (a dark head:
  its left limbs are on the image's left). The cue is mirror-symmetric on purpose: a
  horizontal flip that swaps the left/right keypoint names (as COCO training does) turns a
  correctly labelled figure into another correctly labelled one, as it would for a photo
  of a person;
- **crowds**: now and then a cluster of tiny discs is annotated as one ``iscrowd=1``
  region (uncompressed RLE, as in COCO), which evaluation ignores;
- **resolution** (chapter 05): ``layout_size`` draws the scenes of the ``layout_size`` px
  set at ``size`` px (e.g. the 128 px set at 256 px): the same objects in the same places,
  each covering more pixels (:class:`SynthConfig`);
- **harder scenes**: ``scene_style="hard"`` paints the same scenes (the same boxes, classes,
  masks and keypoints) as photographs look: objects take their colours and textures from
  the background's own palette (camouflage), are shaded by one light across the scene, are
  made of differently coloured parts (a person's legs, body and head) and have soft,
  anti-aliased edges. Grouping pixels by colour, as selective search does, then no longer
  finds every object exactly (:func:`_paint_hard`).

Every image is drawn from its own random generator, seeded by ``(seed, split, index)``, so
the same arguments give byte-identical files whatever the number of worker processes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from scipy import ndimage

#: Format version of the generator; stored in the annotation files so that
#: :func:`ensure_synth` regenerates a set made by an older generator.
GENERATOR_VERSION = 2

#: The ``info.description`` of the annotation files the generator writes.
DESCRIPTION = "rcnn-steps synthetic shapes"
#: The list of files :func:`ensure_synth` wrote into a folder (paths relative to it):
#: the only files it ever replaces or deletes there.
MANIFEST_NAME = ".rcnn_steps_synth_files.json"

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


def _config_record(cfg: SynthConfig) -> dict:
    """The config as the annotation files record it: ``layout_size`` only when the scene is
    drawn larger than its layout and ``scene_style`` only when it is not ``flat``, so sets
    made before these fields existed still match it."""
    record = asdict(cfg)
    if not cfg.drawn_larger:
        del record["layout_size"]
    if cfg.scene_style == "flat":
        del record["scene_style"]
    return record


def synth_folder_name(
    size: int = 128, seed: int = 0, layout_size: int | None = None, scene_style: str = "flat"
) -> str:
    """The folder :func:`ensure_synth` keeps a set in, under the data folder:
    ``synth-<size>px[-from<layout_size>]-seed<seed>[-<style>]`` (``synth-128px-seed0``,
    ``synth-256px-from128-seed0``, ``synth-128px-seed0-hard``): the form
    :func:`rcnn_steps.experiments.ladder.data_tag` reads."""
    drawn_from = f"-from{layout_size}" if layout_size not in (None, size) else ""
    style = "" if scene_style == "flat" else f"-{scene_style}"
    return f"synth-{size}px{drawn_from}-seed{seed}{style}"


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


# ---------------------------------------------------------------------------------------
# drawing helpers: every shape is drawn as a boolean mask the size of the image


def _canvas(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("L", (size, size), 0)
    return img, ImageDraw.Draw(img)


def _as_mask(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.uint8) > 0


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated colour: random hue, saturation 0.5-1, value 0.45-1."""
    h, s, v = rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.45, 1.0)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb) * 255.0


def _sample_extent(rng: np.random.Generator, cfg: SynthConfig, layout: int) -> float:
    """sqrt(area) of a new object in an image ``layout`` px wide, from the small/medium/large
    mixture."""
    ranges = list(size_ranges(layout).values())
    lo, hi = ranges[rng.choice(3, p=np.asarray(cfg.size_mix) / sum(cfg.size_mix))]
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _shape_variant(rng: np.random.Generator, name: str) -> float:
    """The random part of a shape besides its size and place: the aspect ratio of a bar or
    pole, the direction (+1 up, -1 down) of a triangle; 0 for the others."""
    if name in ("bar", "pole"):
        return float(rng.uniform(2.5, 3.5))
    if name == "triangle":
        return 1.0 if rng.random() < 0.5 else -1.0
    return 0.0


def _draw_shape(
    name: str, extent: float, cx: float, cy: float, size: int, variant: float
) -> np.ndarray:
    """Mask of one shape whose filled area is about ``extent**2`` pixels (``variant``: see
    :func:`_shape_variant`)."""
    img, draw = _canvas(size)
    if name == "square":
        half = extent / 2
        draw.rectangle([cx - half, cy - half, cx + half - 1, cy + half - 1], fill=1)
    elif name in ("bar", "pole"):
        ratio = variant
        long_side, short_side = extent * math.sqrt(ratio), extent / math.sqrt(ratio)
        w, h = (long_side, short_side) if name == "bar" else (short_side, long_side)
        draw.rectangle([cx - w / 2, cy - h / 2, cx + w / 2 - 1, cy + h / 2 - 1], fill=1)
    elif name == "disc":
        r = extent / math.sqrt(math.pi)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    elif name == "triangle":
        # an isosceles triangle of area extent^2, pointing up or down
        side = extent * math.sqrt(2.0)
        sign = variant
        pts = [
            (cx, cy - sign * side / 2),
            (cx - side / 2, cy + sign * side / 2),
            (cx + side / 2, cy + sign * side / 2),
        ]
        draw.polygon(pts, fill=1)
    else:  # pragma: no cover - guarded by the caller
        raise ValueError(f"unknown shape {name!r}")
    return _as_mask(img)


def _person_joints(
    rng: np.random.Generator, height: float, cx: float, cy: float
) -> tuple[np.ndarray, bool]:
    """(11, 2) joint positions of a stick figure ``height`` px tall centred at (cx, cy),
    and whether it faces the viewer.

    Facing the viewer, its left limbs are on the image's right; seen from behind (half of
    the time), on the image's left. Each limb stays on its own side of the body.
    """

    def limb(start: np.ndarray, angle: float, length: float) -> np.ndarray:
        # angle 0 points straight down the image, positive angles swing to the image right
        return start + length * np.array([math.sin(angle), math.cos(angle)])

    top = np.array([cx, cy - height / 2])
    head = top + np.array([0.0, 0.1 * height])
    neck = head + np.array([0.0, 0.14 * height])
    hip = limb(neck, rng.uniform(-0.15, 0.15), 0.3 * height)
    facing_viewer = bool(rng.random() < 0.5)
    side = 1.0 if facing_viewer else -1.0  # +1: the figure's left is the image right
    joints = {"head": head, "neck": neck, "hip": hip}
    for name, s in (("left", side), ("right", -side)):
        upper = s * rng.uniform(0.2, 2.4)
        joints[f"{name}_elbow"] = limb(neck, upper, 0.17 * height)
        joints[f"{name}_hand"] = limb(
            joints[f"{name}_elbow"], upper + s * rng.uniform(-0.6, 0.9), 0.16 * height
        )
        thigh = s * rng.uniform(0.05, 0.6)
        joints[f"{name}_knee"] = limb(hip, thigh, 0.22 * height)
        joints[f"{name}_foot"] = limb(
            joints[f"{name}_knee"], thigh + s * rng.uniform(-0.5, 0.3), 0.2 * height
        )
    return np.stack([joints[k] for k in KEYPOINT_NAMES]), facing_viewer


def _draw_person(joints: np.ndarray, height: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks of (the whole figure, its head) for the joints given."""
    width = max(1, round(0.07 * height))
    body_img, body = _canvas(size)
    head_img, head = _canvas(size)
    for a, b in SKELETON:
        body.line([tuple(joints[a - 1]), tuple(joints[b - 1])], fill=1, width=width)
    r = max(0.09 * height, 1.5)
    hx, hy = joints[0]
    head.ellipse([hx - r, hy - r, hx + r, hy + r], fill=1)
    body.ellipse([hx - r, hy - r, hx + r, hy + r], fill=1)
    return _as_mask(body_img), _as_mask(head_img)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a random ``cells`` x ``cells`` grid, bilinearly upsampled."""
    grid = rng.uniform(0, 255, size=(cells, cells)).astype(np.uint8)
    up = Image.fromarray(grid).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(up, dtype=np.float32) / 127.5 - 1.0


def _stripes(rng: np.random.Generator, size: int, scale: float = 1.0) -> np.ndarray:
    """A sinusoidal stripe pattern in [-1, 1] at a random angle and period (3-10 px, times
    ``scale`` for a scene drawn larger than its layout)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(3, 10) * scale
    return np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)


@dataclass(frozen=True)
class _Raster:
    """Where an image's pixels go: its scene is laid out, and every random decision taken,
    at ``layout`` px; it is drawn at ``size`` px, coordinates times ``scale``.

    ``pixel_rng`` draws the pixel noise of the drawn masks when they are larger than the
    layout's, so that the main stream draws exactly what the layout-size set draws (its
    noise for the layout's masks, which are not drawn) and stays in step with it.
    """

    layout: int
    size: int
    pixel_rng: np.random.Generator | None = None

    @property
    def scale(self) -> float:
        return self.size / self.layout

    @property
    def larger(self) -> bool:
        return self.size != self.layout

    def paint(
        self,
        rng: np.random.Generator,
        img: np.ndarray,
        mask: np.ndarray,
        pixels: np.ndarray,
        colour: np.ndarray,
    ) -> None:
        """Fill ``pixels`` (the drawn-size twin of the layout mask ``mask``) with ``colour``
        plus pixel noise and, sometimes, stripes."""
        n = int(mask.sum())
        if n == 0:
            return
        noise = rng.normal(0.0, 7.0, size=(n, 1))
        if self.larger:
            noise = self.pixel_rng.normal(0.0, 7.0, size=(int(pixels.sum()), 1))
        fill = colour[None, :] + noise
        if rng.random() < 0.3:
            fill = fill * (1.0 + 0.15 * _stripes(rng, self.size, self.scale)[pixels][:, None])
        img[pixels] = fill


def _background(rng: np.random.Generator, cfg: SynthConfig, raster: _Raster) -> np.ndarray:
    """(H, W, 3) float image: a gradient, low-frequency noise, a stripe patch, distractors."""
    layout, size, scale = raster.layout, raster.size, raster.scale
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (xx * np.cos(angle) + yy * np.sin(angle) + 1.5) / 3.0
    c0, c1 = _random_colour(rng) * 0.6, _random_colour(rng) * 0.6
    img = c0 + (c1 - c0) * ramp[..., None]
    img += 25.0 * _smooth_noise(rng, size, int(rng.integers(4, 12)))[..., None]
    if rng.random() < 0.6:  # a textured patch
        x0, y0 = rng.integers(0, layout // 2, size=2)
        w, h = rng.integers(layout // 6, layout // 2, size=2)
        x0, y0, w, h = (round(v * scale) for v in (x0, y0, w, h))
        stripes = _stripes(rng, size, scale)
        img[y0 : y0 + h, x0 : x0 + w] += 30.0 * stripes[y0 : y0 + h, x0 : x0 + w, None]
    for _ in range(int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1))):
        canvas, draw = _canvas(size)
        x, y = rng.uniform(0, layout, size=2) * scale
        r = rng.uniform(0.03, 0.12) * layout * scale
        kind = rng.integers(3)
        if kind == 0:  # a ring: round like a disc but hollow
            draw.ellipse([x - r, y - r, x + r, y + r], outline=1, width=max(1, round(r / 4)))
        elif kind == 1:  # a thin line
            x2, y2 = rng.uniform(0, layout, size=2) * scale
            draw.line([(x, y), (x2, y2)], fill=1, width=max(1, round(scale)))
        else:  # a cross
            draw.line([(x - r, y), (x + r, y)], fill=1, width=max(1, round(r / 5)))
            draw.line([(x, y - r), (x, y + r)], fill=1, width=max(1, round(r / 5)))
        img[_as_mask(canvas)] = _random_colour(rng)
    return img


def _draw_discs(discs: list[tuple[float, float, float]], size: int, scale: float) -> np.ndarray:
    """Mask of the discs ``(x, y, radius)`` (layout coordinates, times ``scale``)."""
    canvas, draw = _canvas(size)
    for x, y, r in discs:
        x, y, r = x * scale, y * scale, r * scale
        draw.ellipse([x - r, y - r, x + r, y + r], fill=1)
    return _as_mask(canvas)


# ---------------------------------------------------------------------------------------
# the hard style: the same scene painted as a photograph would show it

#: Share of object parts painted in the colour of the background around the object (plus
#: a small offset): camouflage. The others take the background's colour somewhere else in
#: the scene (its gradient, its noise, a distractor): the scene's own palette.
HARD_CAMOUFLAGE = 0.6
#: Range of the camouflage offset from the background's colour (RGB units, 0-255).
HARD_CAMOUFLAGE_OFFSET = (15.0, 40.0)
#: Range of the shading: brightness changes by up to this fraction from the object's
#: centre to its lit and shaded sides.
HARD_SHADING = (0.15, 0.45)
#: Range of the Gaussian sigma (layout pixels) that softens each object's outline.
HARD_EDGE_SIGMA = (0.4, 1.0)
#: Objects less than this many layout pixels across (square root of the area) have their
#: edge sigma shrunk in proportion.
HARD_EDGE_EXTENT = 20.0
#: Probabilities that a shape (not a person, not a crowd) has 1, 2 or 3 parts.
HARD_PARTS = (0.25, 0.5, 0.25)
#: Objects smaller than this many layout pixels are one part and not camouflaged: a few
#: pixels that also vanished into the background would be no object at all.
HARD_MIN_AREA = 150


@dataclass
class _Stroke:
    """One object as :func:`_paint_hard` repaints it, at the drawn size: its kind (a
    :data:`SHAPE_NAMES` entry, ``person`` or ``crowd``), its whole mask when it was placed
    (later objects are painted over it, which hides what the annotations say is hidden)
    and, for a person, the joints, height and facing that split it into parts."""

    kind: str
    pixels: np.ndarray
    joints: np.ndarray | None = None  # (K, 2) drawn-size coordinates
    height: float = 0.0
    facing_viewer: bool = True


def _object_parts(
    rng: np.random.Generator, stroke: _Stroke, scale: float = 1.0
) -> tuple[np.ndarray, int]:
    """(H, W) int labels of an object's differently coloured parts (0 outside it, parts
    1..P) and P.

    A person is dressed: legs (1), body and arms (2), head (3). A bar or a pole is cut into
    1-3 bands across its length, a disc into a centre and a rim or into halves, a square or
    a triangle into 1-3 bands at a random angle (:data:`HARD_PARTS`); a crowd, and a shape
    under :data:`HARD_MIN_AREA` layout pixels (``scale``: drawn px per layout px), stay one
    part. Cuts sit at quantiles of the object's pixels, so that no part is a sliver.
    """
    mask = stroke.pixels
    labels = np.zeros(mask.shape, dtype=np.int64)
    if stroke.kind == "person":
        size = mask.shape[0]
        width = max(1, round(0.07 * stroke.height))
        legs_img, legs = _canvas(size)
        for a, b in SKELETON:
            if a >= 7:  # (1-based) the segments from the hip down
                legs.line([tuple(stroke.joints[a - 1]), tuple(stroke.joints[b - 1])], 1, width)
        _, head = _draw_person(stroke.joints, stroke.height, size)
        labels[mask] = 2
        labels[mask & _as_mask(legs_img)] = 1
        labels[mask & head] = 3
        return labels, 3
    num_parts = 1 if stroke.kind == "crowd" else int(rng.choice(3, p=HARD_PARTS)) + 1
    ys, xs = np.nonzero(mask)
    if num_parts == 1 or len(xs) < HARD_MIN_AREA * scale**2:
        labels[mask] = 1
        return labels, 1
    if stroke.kind == "disc" and rng.random() < 0.5:
        coord = np.hypot(xs - xs.mean(), ys - ys.mean())  # a centre and a rim
    else:
        angle = {"bar": 0.0, "pole": np.pi / 2}.get(stroke.kind, rng.uniform(0, np.pi))
        coord = xs * np.cos(angle) + ys * np.sin(angle)
    shares = (
        [rng.uniform(0.3, 0.7)]
        if num_parts == 2
        else [rng.uniform(0.2, 0.4), rng.uniform(0.6, 0.8)]
    )
    labels[ys, xs] = 1 + np.searchsorted(np.quantile(coord, shares), coord)
    return labels, num_parts


def _palette_colour(
    rng: np.random.Generator, background: np.ndarray, mask: np.ndarray, camouflage: float
) -> np.ndarray:
    """An RGB colour from the scene's own palette: with probability ``camouflage`` the mean
    of the background under ``mask`` moved a little in a random direction, else the
    background's colour at a random place."""
    if rng.random() < camouflage:
        direction = rng.normal(size=3)
        offset = rng.uniform(*HARD_CAMOUFLAGE_OFFSET) * direction / np.linalg.norm(direction)
        return background[mask].mean(0) + offset
    y, x = rng.integers(0, background.shape[0], size=2)
    return background[y, x] + rng.normal(0.0, 10.0, size=3)


def _paint_hard(
    rng: np.random.Generator,
    background: np.ndarray,
    strokes: Sequence[_Stroke],
    scale: float = 1.0,
) -> np.ndarray:
    """Paint ``strokes`` front to back onto ``background`` ((H, W, 3) float) as a
    photograph shows objects; returns the (H, W, 3) float image. Every object:

    - is made of parts (:func:`_object_parts`), each coloured from the scene's palette
      (:func:`_palette_colour`: with probability :data:`HARD_CAMOUFLAGE` the background's
      own colour around it, slightly moved; never for objects under
      :data:`HARD_MIN_AREA`);
    - carries a texture of the background's families (low-frequency noise, sometimes
      stripes) and pixel noise;
    - is shaded: its brightness is multiplied by ``1 + g t``, ``t`` in [-1, 1] across the
      object along the scene's light direction (one per image, a little jitter per
      object), ``g`` in :data:`HARD_SHADING`;
    - has a soft edge: it is blended in with alpha = its mask blurred by a Gaussian of
      sigma in :data:`HARD_EDGE_SIGMA` (times ``scale``; times ``extent /
      HARD_EDGE_EXTENT`` for an object ``extent`` < :data:`HARD_EDGE_EXTENT` layout px
      across), anti-aliasing it over a pixel or two.

    The constants were tuned so that our selective search ("fast", all its proposals) on
    the 128 px set's first 100 val images comes near what the paper reports on PASCAL VOC
    2007 (:data:`rcnn_steps.detectors.selective_search.PAPER_VOC2007`).

    All random numbers come from ``rng``, a generator of its own, so the layout's stream
    is not touched.
    """
    size = background.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    light = rng.uniform(0, 2 * np.pi)
    img = background.copy()
    for stroke in strokes:
        mask = stroke.pixels
        if not mask.any():
            continue
        labels, num_parts = _object_parts(rng, stroke, scale)
        parts = [labels == k for k in range(1, num_parts + 1)]
        camouflage = HARD_CAMOUFLAGE if mask.sum() >= HARD_MIN_AREA * scale**2 else 0.0
        # a part may lie outside the image (a person's legs): it takes the whole object's
        # background
        colours = [
            _palette_colour(rng, background, part if part.any() else mask, camouflage)
            for part in parts
        ]
        if stroke.kind == "person":
            # the facing cue survives: a face towards the viewer, dark hair from behind
            face = np.array([240.0, 210.0, 175.0]) + rng.normal(0.0, 10.0, size=3)
            colours[2] = face if stroke.facing_viewer else colours[1] * 0.35
        # each pixel takes the colour of its nearest part, so the soft edge outside the
        # mask continues the part inside it
        _, (iy, ix) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
        fill = np.asarray(colours)[labels[iy, ix] - 1]
        angle = light + rng.normal(0.0, 0.3)
        along = xx * np.cos(angle) + yy * np.sin(angle)
        lo, hi = along[mask].min(), along[mask].max()
        t = np.clip((2 * along - lo - hi) / max(hi - lo, 1.0), -1.0, 1.0)
        fill = fill * (1.0 + rng.uniform(*HARD_SHADING) * t)[..., None]
        texture = rng.uniform(8.0, 25.0) * _smooth_noise(rng, size, int(rng.integers(4, 12)))
        if rng.random() < 0.4:
            texture = texture + rng.uniform(10.0, 30.0) * _stripes(rng, size, scale)
        fill = fill + texture[..., None] + rng.normal(0.0, 6.0, size=fill.shape)
        # an object a few pixels across keeps a crisper edge: a pixel of blur would move
        # its box by a large share of its size
        extent = math.sqrt(mask.sum()) / scale  # in layout pixels
        sigma = rng.uniform(*HARD_EDGE_SIGMA) * scale * min(1.0, extent / HARD_EDGE_EXTENT)
        alpha = ndimage.gaussian_filter(mask.astype(np.float64), sigma)[..., None]
        img = img * (1.0 - alpha) + fill * alpha
    return img


# ---------------------------------------------------------------------------------------
# one image


@dataclass
class _Instance:
    category_id: int
    # visible part at the layout size, updated as later objects are drawn on top: every
    # decision (occlusion, which annotations exist, keypoint visibility) is taken on it
    mask: np.ndarray
    full_area: int  # in layout pixels
    # visible part at the drawn size, for the annotation's box, area and segmentation; the
    # same array as ``mask`` when the image is drawn at its layout size
    pixels: np.ndarray
    iscrowd: int = 0
    joints: np.ndarray | None = None  # (K, 2) for persons, in layout coordinates


def _bbox_of(mask: np.ndarray) -> list[float]:
    """COCO [x, y, w, h] of a mask's pixels (pixel (i, j) covers [j, j+1) x [i, i+1))."""
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    y0, y1 = np.flatnonzero(rows)[[0, -1]]
    x0, x1 = np.flatnonzero(cols)[[0, -1]]
    return [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (used for crowds): run lengths in column-major order,
    starting with a run of zeros."""
    flat = mask.astype(np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def render_image(rng: np.random.Generator, cfg: SynthConfig) -> tuple[np.ndarray, list[dict]]:
    """Draw one image. Returns the (H, W, 3) uint8 image and its annotations (COCO dicts
    without ``id``/``image_id``).

    With ``cfg.layout_size`` the scene is the one ``rng`` gives at that size, drawn at
    ``cfg.size``; the pixel noise of its larger masks comes from a generator spawned from
    ``rng``'s seed (``rng.spawn``), which leaves ``rng``'s stream as the layout's.

    With ``cfg.scene_style == "hard"`` the scene is laid out, and painted flat, exactly as
    in the ``flat`` style (so every random decision and annotation is the same), then its
    objects are painted again onto its background by :func:`_paint_hard`, whose random
    numbers come from a second spawned generator."""
    layout = cfg.layout_size if cfg.drawn_larger else cfg.size
    hard = cfg.scene_style == "hard"
    # spawning leaves rng's own stream untouched; child 0 is the same for spawn(1) and
    # spawn(2), so the drawn-larger flat sets keep their pixel noise
    pixel_rng, style_rng = rng.spawn(2) if (cfg.drawn_larger or hard) else (None, None)
    raster = _Raster(layout, cfg.size, pixel_rng if cfg.drawn_larger else None)
    scale = raster.scale
    img = _background(rng, cfg, raster)
    background = img.copy() if hard else None
    strokes: list[_Stroke] = []  # what the hard style paints again, front to back
    instances: list[_Instance] = []

    if rng.random() < cfg.crowd_probability:
        # a crowd: many tiny discs close together, one annotation for the region
        x, y = rng.uniform(0.15 * layout, 0.85 * layout, size=2)
        spread = 0.1 * layout
        discs = []
        for _ in range(int(rng.integers(6, 13))):
            px, py = rng.normal([x, y], spread)
            discs.append((px, py, rng.uniform(0.008, 0.018) * layout))
        crowd = _draw_discs(discs, layout, 1.0)
        if crowd.sum() >= cfg.min_visible_area:
            # its drawn-size twin (drawn again only when the sizes differ)
            pixels = _draw_discs(discs, cfg.size, scale) if raster.larger else crowd
            raster.paint(rng, img, crowd, pixels, _random_colour(rng))
            strokes.append(_Stroke("crowd", pixels))
            instances.append(
                _Instance(DISC_CATEGORY_ID, crowd, int(crowd.sum()), pixels, iscrowd=1)
            )

    num_objects = int(rng.integers(1, cfg.max_objects + 1))
    for _ in range(num_objects):
        for _attempt in range(20):
            category_id = int(rng.integers(1, len(CATEGORIES) + 1))
            cx, cy = rng.uniform(0.05 * layout, 0.95 * layout, size=2)
            joints = head = None
            if category_id == PERSON_CATEGORY_ID:
                height = rng.uniform(0.25, 0.7) * layout
                joints, facing_viewer = _person_joints(rng, height, cx, cy)
                mask, head = _draw_person(joints, height, layout)
            else:
                extent = _sample_extent(rng, cfg, layout)
                name = SHAPE_NAMES[category_id - 1]
                variant = _shape_variant(rng, name)
                mask = _draw_shape(name, extent, cx, cy, layout, variant)
            area = int(mask.sum())
            if area < cfg.min_visible_area:
                continue
            # keep every earlier object at least (1 - max_occlusion) visible
            if all(
                inst.iscrowd
                or (inst.mask & ~mask).sum()
                >= max((1 - cfg.max_occlusion) * inst.full_area, cfg.min_visible_area)
                for inst in instances
            ):
                break
        else:
            continue  # no room for this object; the image gets one fewer
        # the drawn-size twins of the masks, drawn again only when the sizes differ
        pixels, head_pixels = mask, head
        if raster.larger and joints is not None:
            pixels, head_pixels = _draw_person(joints * scale, height * scale, cfg.size)
        elif raster.larger:
            pixels = _draw_shape(name, extent * scale, cx * scale, cy * scale, cfg.size, variant)
        colour = _random_colour(rng)
        raster.paint(rng, img, mask, pixels, colour)
        if head is not None:
            # a light face towards the viewer, a dark head seen from behind: the cue that
            # tells the figure's left from its right
            face = np.array([240.0, 210.0, 175.0]) if facing_viewer else colour * 0.35
            raster.paint(rng, img, head, head_pixels, face)
            strokes.append(_Stroke("person", pixels, joints * scale, height * scale, facing_viewer))
        else:
            strokes.append(_Stroke(SHAPE_NAMES[category_id - 1], pixels))
        for inst in instances:
            inst.mask = inst.mask & ~mask
            inst.pixels = inst.pixels & ~pixels if raster.larger else inst.mask
        instances.append(_Instance(category_id, mask, area, pixels, joints=joints))

    annotations = []
    for k, inst in enumerate(instances):
        # an object hidden at either size has no annotation (for crowds only: the occlusion
        # check keeps every other object visible)
        if not inst.mask.any() or not inst.pixels.any():
            continue
        ann = {
            "category_id": inst.category_id,
            "bbox": _bbox_of(inst.pixels),
            "area": float(inst.pixels.sum()),
            "iscrowd": inst.iscrowd,
        }
        if inst.iscrowd:
            ann["segmentation"] = _uncompressed_rle(inst.pixels)
        else:
            rle = mask_utils.encode(np.asfortranarray(inst.pixels.astype(np.uint8)))
            ann["segmentation"] = {
                "size": list(inst.pixels.shape),
                "counts": rle["counts"].decode(),
            }
        if inst.joints is not None:
            # a keypoint hidden behind a later object is labelled but not visible (v=1)
            later = np.zeros((layout, layout), dtype=bool)
            for other in instances[k + 1 :]:
                later |= other.mask
            flat = []
            for x, y in inst.joints:
                if not (0 <= x < layout and 0 <= y < layout):
                    flat += [0.0, 0.0, 0]
                else:
                    v = 1 if later[int(y), int(x)] else 2
                    flat += [round(float(x * scale), 2), round(float(y * scale), 2), v]
            ann["keypoints"] = flat
            ann["num_keypoints"] = sum(1 for v in flat[2::3] if v > 0)
        annotations.append(ann)
    if hard:
        img = _paint_hard(style_rng, background, strokes, scale)
    return np.clip(img, 0, 255).astype(np.uint8), annotations


# ---------------------------------------------------------------------------------------
# a whole split, and the command-line entry point

_SPLIT_OFFSETS = {"train": 0, "val": 10_000_000}


def _render_one(args: tuple[SynthConfig, str, int, str]) -> list[dict]:
    cfg, split, index, images_dir = args
    rng = np.random.default_rng([cfg.seed, list(_SPLIT_OFFSETS).index(split), index])
    image, anns = render_image(rng, cfg)
    image_id = _SPLIT_OFFSETS[split] + index + 1
    Image.fromarray(image).save(os.path.join(images_dir, f"{image_id:08d}.png"), optimize=False)
    return anns


def generate_split(cfg: SynthConfig, out: Path, split: str, num: int, workers: int = 1) -> dict:
    """Render ``num`` images into ``out/split/`` and return the COCO dict for them."""
    images_dir = out / split
    images_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(cfg, split, i, str(images_dir)) for i in range(num)]
    if workers > 1 and num > 1:
        with ProcessPoolExecutor(workers) as pool:
            per_image = list(pool.map(_render_one, jobs, chunksize=16))
    else:
        per_image = [_render_one(j) for j in jobs]
    images, annotations = [], []
    for i, anns in enumerate(per_image):
        image_id = _SPLIT_OFFSETS[split] + i + 1
        images.append(
            {
                "id": image_id,
                "file_name": f"{image_id:08d}.png",
                "width": cfg.size,
                "height": cfg.size,
            }
        )
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    return {
        "info": {
            "description": DESCRIPTION,
            "generator_version": GENERATOR_VERSION,
            "config": _config_record(cfg),
            "split": split,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }


def generate(
    out: str | os.PathLike,
    num_train: int = 1000,
    num_val: int = 200,
    size: int = 128,
    seed: int = 0,
    workers: int | None = None,
    layout_size: int | None = None,
    scene_style: str = "flat",
    **overrides,
) -> Path:
    """Write the synthetic set: ``out/{train,val}/*.png`` and
    ``out/annotations/instances_{train,val}.json``. Same arguments, byte-identical files.

    ``layout_size`` draws the scenes of the ``layout_size`` px set at ``size`` px and
    ``scene_style="hard"`` paints them as photographs (see :class:`SynthConfig`);
    ``overrides`` set other fields (e.g. ``max_objects``).
    """
    if size < 32:
        raise ValueError(f"--size must be at least 32 pixels, got {size}")
    if num_train < 0 or num_val < 0:
        raise ValueError("--num-train and --num-val must not be negative")
    cfg = SynthConfig(
        num_train=num_train,
        num_val=num_val,
        size=size,
        seed=seed,
        layout_size=layout_size,
        scene_style=scene_style,
        **overrides,
    )
    out = Path(out)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    for split, num in (("train", num_train), ("val", num_val)):
        coco = generate_split(cfg, out, split, num, workers)
        path = out / "annotations" / f"instances_{split}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(coco, separators=(",", ":")) + "\n")
        os.replace(tmp, path)  # the annotation file appears only once it is whole
    return out


def ensure_synth(
    out: str | os.PathLike | None = None,
    num_train: int = 1000,
    num_val: int = 200,
    size: int = 128,
    seed: int = 0,
    layout_size: int | None = None,
    scene_style: str = "flat",
    **overrides,
) -> Path:
    """Return the folder of the synthetic set with these arguments, generating it first if
    it is missing or was made with other arguments. Chapters call this, so they run on a
    fresh checkout without a separate data step.

    The default folder is ``<data dir>/synth-{size}px-seed{seed}``,
    ``<data dir>/synth-{size}px-from{layout_size}-seed{seed}`` for the scenes of the
    ``layout_size`` px set drawn at ``size`` px, and either with ``-hard`` appended for
    ``scene_style="hard"`` (:class:`SynthConfig`, :func:`synth_folder_name`).

    The set is generated beside the folder first, so an interrupted run or a reader in
    another process never sees half a set. When it replaces an older set it replaces
    only the generator's own files (those it recorded in ``MANIFEST_NAME``, or those the
    old annotation files list): anything else in the folder stays where it is, and a
    file of someone else's where the generator wants to write raises
    ``FileExistsError`` before anything is changed.
    """
    from rcnn_steps.utils import data_dir

    cfg = SynthConfig(
        num_train=num_train,
        num_val=num_val,
        size=size,
        seed=seed,
        layout_size=layout_size,
        scene_style=scene_style,
        **overrides,
    )
    if out is None:
        out = data_dir() / synth_folder_name(size, seed, layout_size, scene_style)
    out = Path(out)
    want = _config_record(cfg)
    # compare through JSON, where tuples and lists look alike
    want = json.loads(json.dumps(want))
    if _is_current(out, want):
        return out

    staging = out.with_name(f"{out.name}.tmp-{os.getpid()}")  # ours, by its name
    shutil.rmtree(staging, ignore_errors=True)
    generate(
        staging,
        num_train=num_train,
        num_val=num_val,
        size=size,
        seed=seed,
        layout_size=layout_size,
        scene_style=scene_style,
        **overrides,
    )
    new_files = {p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()}
    _write_manifest(staging, new_files)
    if not out.exists():
        try:
            os.replace(staging, out)  # the whole set appears at once
            return out
        except OSError:
            if not out.exists():
                raise
    if _is_current(out, want):  # another process made it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
        return out
    _swap_in(staging, out, new_files)
    return out


def _is_current(out: Path, want: dict) -> bool:
    """Does ``out`` hold a whole set made by this generator version with config ``want``?"""
    for split in ("train", "val"):
        path = out / "annotations" / f"instances_{split}.json"
        try:
            info = json.loads(path.read_text())["info"]
            if info.get("generator_version") != GENERATOR_VERSION or info["config"] != want:
                return False
        except (OSError, ValueError, KeyError, TypeError):
            return False
    return True


def _write_manifest(folder: Path, files: set[str]) -> None:
    from rcnn_steps.utils import atomic_write_bytes

    atomic_write_bytes(folder / MANIFEST_NAME, json.dumps(sorted(files), indent=0).encode())


def _files_written_here(out: Path) -> set[str]:
    """The files in ``out`` that the generator wrote: those its manifest lists, and (for a
    set made before manifests, or with ``generate``) our annotation files and the images
    they list."""
    files: set[str] = set()
    try:
        listed = json.loads((out / MANIFEST_NAME).read_text())
        # relative paths inside `out` only, whatever the file says
        files |= {str(f) for f in listed if not Path(str(f)).is_absolute() and ".." not in str(f)}
    except (OSError, ValueError, TypeError):
        pass
    for split in _SPLIT_OFFSETS:
        name = f"annotations/instances_{split}.json"
        try:
            data = json.loads((out / name).read_text())
            if data["info"]["description"] != DESCRIPTION:
                continue
            files.add(name)
            files |= {f"{split}/{img['file_name']}" for img in data["images"]}
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return files


def _swap_in(staging: Path, out: Path, new_files: set[str]) -> None:
    """Move the set in ``staging`` into the existing folder ``out``, replacing and deleting
    only files the generator wrote there."""
    old_files = _files_written_here(out)
    foreign = sorted(f for f in new_files if (out / f).exists() and f not in old_files)
    if foreign:
        shutil.rmtree(staging, ignore_errors=True)
        raise FileExistsError(
            f"ensure_synth: {out} holds {len(foreign)} file(s) the generator did not write "
            f"where it wants to write the synthetic set (e.g. {foreign[0]}); it never "
            "overwrites or deletes such files: move them away, or pass another folder "
            "(out=...). Nothing was changed."
        )
    annotations = {f for f in new_files if f.startswith("annotations/")}
    # 1. record every file of ours that may be in `out` during the swap, so that a run
    #    interrupted half-way still knows which files it may replace next time
    _write_manifest(out, old_files | new_files)
    # 2. no annotation files while the images change: nobody can read a mixed set
    for name in sorted(old_files & annotations):
        (out / name).unlink(missing_ok=True)
    # 3. the new images in, the old set's other files out
    for name in sorted(new_files - annotations):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, out / name)
    for name in sorted(old_files - new_files):
        (out / name).unlink(missing_ok=True)
    # 4. the annotation files last: the set is whole once they are there
    for name in sorted(annotations):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, out / name)
    _write_manifest(out, new_files)
    shutil.rmtree(staging, ignore_errors=True)


def category_names(categories: Sequence[dict] = CATEGORIES) -> list[str]:
    """Names in id order."""
    return [c["name"] for c in sorted(categories, key=lambda c: c["id"])]
