"""Drawing the synthetic set's scenes (chapter 00): masks, backgrounds and flat paint.

Every shape is drawn as a boolean mask the size of the image: the five shapes
(:func:`_draw_shape`, their random size and variant from :func:`_sample_extent` and
:func:`_shape_variant`), the stick figure (:func:`_person_joints`, :func:`_draw_person`) and
a crowd's discs (:func:`_draw_discs`). :func:`_background` paints the cluttered
background (a gradient, low-frequency noise, stripes, distractors), and :class:`_Raster`
paints each object flat, one colour plus noise, at the drawn size of a scene laid out at
another. The scene itself is :func:`rcnn_steps.data.synth_scene.render_image`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from rcnn_steps.data.synth_config import KEYPOINT_NAMES, SKELETON, SynthConfig, size_ranges


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
