"""One image of the synthetic set (chapter 00): its scene laid out, painted and annotated.

:func:`render_image` takes every random decision of an image from its generator: now and
then a crowd, then 1 to ``max_objects`` objects placed front to back, each kept only if it
leaves every earlier one at least half visible; it paints them (flat, or again in the hard
style) and writes what is visible as COCO annotations: boxes, areas, masks (RLE, and
uncompressed RLE for crowds) and keypoints with their visibility flags.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from rcnn_steps.data.synth_config import (
    CATEGORIES,
    DISC_CATEGORY_ID,
    PERSON_CATEGORY_ID,
    SHAPE_NAMES,
    SynthConfig,
)
from rcnn_steps.data.synth_drawing import (
    _background,
    _draw_discs,
    _draw_person,
    _draw_shape,
    _person_joints,
    _random_colour,
    _Raster,
    _sample_extent,
    _shape_variant,
)
from rcnn_steps.data.synth_hard import _paint_hard, _Stroke


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
