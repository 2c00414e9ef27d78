"""The synthetic set's hard style (chapter 00): the same scene painted as a photograph would
show it.

``scene_style="hard"`` keeps every scene, box, mask and keypoint of the flat set and
repaints its objects onto its background (:func:`_paint_hard`): each made of differently
coloured parts (:func:`_object_parts`) taken from the scene's own palette, often the
background's colour around it (camouflage, :func:`_palette_colour`), textured, shaded by one
light across the scene, with soft, anti-aliased edges. Grouping pixels by colour, as
selective search does, then no longer finds every object exactly. The ``HARD_*`` constants
set how hard.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from rcnn_steps.data.synth_config import SKELETON
from rcnn_steps.data.synth_drawing import _as_mask, _canvas, _draw_person, _smooth_noise, _stripes

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
