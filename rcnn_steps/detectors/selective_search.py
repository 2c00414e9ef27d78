"""Selective search (Uijlings et al., IJCV 2013), written from scratch (chapter 02).

R-CNN does not slide a classifier over every window (chapter 01's millions of patches); it
classifies about 2000 *proposals*: boxes likely to hold an object, found bottom-up from the
image alone. Selective search finds them in three steps:

1. **Over-segment** the image into small regions that each have one colour
   (Felzenszwalb & Huttenlocher 2004, :func:`oversegment`).
2. **Group hierarchically** (paper section 3.1, Algorithm 1): describe every region by
   colour and texture histograms, its size and its bounding box (:func:`region_features`),
   then repeatedly merge the two most similar *neighbouring* regions (:func:`similarity`)
   until one region covers the image (:func:`hierarchical_grouping`). Every region ever
   made, the initial ones and each merge, gives one box.
3. **Diversify** (section 3.2): repeat with several colour spaces, several segmentation
   thresholds ``k`` and several similarity combinations (a :class:`Strategy` each), rank
   the boxes of each strategy pseudo-randomly by their level in the hierarchy and merge
   the lists, removing duplicates (section 3.3, :func:`selective_search`). The paper's
   "fast" and "quality" settings are :data:`MODES`.

:func:`opencv_selective_search` runs OpenCV's implementation (``cv2.ximgproc``) with the
same input and output conventions, and :func:`proposal_recall` measures both: the share of
ground-truth boxes that some proposal among the first ``n`` covers at IoU >= t.

Boxes are ``(x1, y1, x2, y2)`` in pixels with exclusive ends, as in the rest of the
library: a region covering columns 10..29 has ``x1 = 10, x2 = 30``.

``python -m rcnn_steps.selective_search evaluate --out results/selective_search.json``
(:mod:`rcnn_steps.experiments.selective_search`) measures recall and seconds per image, ours
beside OpenCV's, on the synthetic val set.

Step 2, the grouping, is :mod:`rcnn_steps.detectors.region_grouping`'s, and the measures
of proposals (:func:`proposal_recall`, :func:`proposal_quality`)
:mod:`rcnn_steps.detectors.proposal_measures`'s; this module re-exports both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from skimage import color
from skimage.segmentation import felzenszwalb

from rcnn_steps.detectors.proposal_measures import (
    PAPER_VOC2007,
    proposal_quality,
    proposal_recall,
)
from rcnn_steps.detectors.region_grouping import (
    COLOUR_BINS,
    TEXTURE_BINS,
    TEXTURE_ORIENTATIONS,
    Hierarchy,
    RegionFeatures,
    adjacency,
    colour_similarity,
    fill_similarity,
    hierarchical_grouping,
    labels_at_level,
    region_features,
    region_histograms,
    similarity,
    size_similarity,
    texture_gradients,
    texture_similarity,
)

__all__ = [
    "COLOUR_BINS",
    "COLOUR_SPACES",
    "MODES",
    "PAPER_VOC2007",
    "SIMILARITIES",
    "TEXTURE_BINS",
    "TEXTURE_ORIENTATIONS",
    "Hierarchy",
    "RegionFeatures",
    "Strategy",
    "adjacency",
    "as_uint8_image",
    "colour_similarity",
    "convert_colour",
    "fill_similarity",
    "hierarchical_grouping",
    "labels_at_level",
    "mean_colour_image",
    "opencv_selective_search",
    "oversegment",
    "proposal_quality",
    "proposal_recall",
    "region_features",
    "region_histograms",
    "run_strategy",
    "selective_search",
    "similarity",
    "size_similarity",
    "texture_gradients",
    "texture_similarity",
]

#: Colour spaces of section 3.2 (Table 1): RGB, HSV, Lab, rgI (normalised rg + intensity),
#: H (hue alone) and I (intensity alone).
COLOUR_SPACES = ("rgb", "hsv", "lab", "rgi", "h", "i")
#: Similarity combinations (section 3.2): which of s_colour, s_texture, s_size, s_fill are
#: summed (the a_i of eq. 5 set to 0 or 1).
SIMILARITIES = {
    "CTSF": (1.0, 1.0, 1.0, 1.0),
    "TSF": (0.0, 1.0, 1.0, 1.0),
    "F": (0.0, 0.0, 0.0, 1.0),
    "S": (0.0, 0.0, 1.0, 0.0),
    "C": (1.0, 0.0, 0.0, 0.0),
    "T": (0.0, 1.0, 0.0, 0.0),
}
#: The image area (in pixels) for which the paper's settings were chosen (PASCAL VOC,
#: about 500 x 375): Felzenszwalb's ``min_size`` is scaled from it to the image at hand.
PAPER_IMAGE_AREA = 500 * 375


@dataclass(frozen=True)
class Strategy:
    """One diversification strategy (section 3.2): a colour space, Felzenszwalb's
    threshold ``k`` and a similarity combination (a key of :data:`SIMILARITIES`)."""

    colour_space: str = "hsv"
    k: float = 100.0
    similarity: str = "CTSF"

    def __post_init__(self) -> None:
        if self.colour_space not in COLOUR_SPACES:
            raise ValueError(f"colour_space must be one of {COLOUR_SPACES}: {self.colour_space}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {sorted(SIMILARITIES)}")
        if self.k <= 0:
            raise ValueError(f"k must be positive, got {self.k}")


def _grid(spaces: Sequence[str], ks: Sequence[float], sims: Sequence[str]) -> tuple:
    return tuple(Strategy(c, k, s) for c in spaces for k in ks for s in sims)


#: The paper's settings (section 5.2). "Single": one strategy. "Fast" (used in R-CNN):
#: HSV and Lab, k = 50 and 100, C+T+S+F and T+S+F: 8 strategies. "Quality": HSV, Lab,
#: rgI, H and I, k = 50, 100, 150 and 300, C+T+S+F, T+S+F, F and S: 80 strategies.
MODES: dict[str, tuple[Strategy, ...]] = {
    "single": (Strategy("hsv", 100, "CTSF"),),
    "fast": _grid(("hsv", "lab"), (50, 100), ("CTSF", "TSF")),
    "quality": _grid(
        ("hsv", "lab", "rgi", "h", "i"), (50, 100, 150, 300), ("CTSF", "TSF", "F", "S")
    ),
}


# ---------------------------------------------------------------------------------------
# Input and colour spaces


def as_uint8_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """An image as ``(H, W, 3)`` uint8 RGB. Accepts a tensor ``(3, H, W)`` float in [0, 1]
    (the datasets' format) or an array ``(H, W, 3)`` (uint8, or float in [0, 1]).
    Raises ``ValueError`` for any other shape and for an empty image."""
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"an image tensor must be (3, H, W), got {tuple(image.shape)}")
        array = image.detach().cpu().permute(1, 2, 0).numpy()
    else:
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"an image array must be (H, W, 3), got {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"the image is empty ({array.shape[0]} x {array.shape[1]} pixels)")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    return (np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def convert_colour(image: np.ndarray, space: str) -> np.ndarray:
    """Convert an ``(H, W, 3)`` uint8 RGB image to ``space``, every channel in [0, 1].

    Returns ``(H, W, C)`` float64 with C = 3 for ``rgb``, ``hsv``, ``lab`` and ``rgi``
    (r = R/(R+G+B), g = G/(R+G+B), I = (R+G+B)/3) and C = 1 for ``h`` (hue) and ``i``
    (intensity). Lab's L in [0, 100] and a, b in [-128, 127] are rescaled to [0, 1].
    """
    rgb = image.astype(np.float64) / 255.0
    if space == "rgb":
        out = rgb
    elif space == "hsv":
        out = color.rgb2hsv(rgb)
    elif space == "lab":
        lab = color.rgb2lab(rgb)
        out = np.stack(
            [lab[..., 0] / 100.0, (lab[..., 1] + 128) / 255, (lab[..., 2] + 128) / 255], -1
        )
    elif space == "rgi":
        total = rgb.sum(-1, keepdims=True)
        rg = np.divide(rgb[..., :2], total, out=np.full_like(rgb[..., :2], 1 / 3), where=total > 0)
        out = np.concatenate([rg, total / 3.0], -1)
    elif space == "h":
        out = color.rgb2hsv(rgb)[..., :1]
    elif space == "i":
        out = rgb.mean(-1, keepdims=True)
    else:
        raise ValueError(f"colour space must be one of {COLOUR_SPACES}, got {space!r}")
    return np.clip(out, 0.0, 1.0)


# ---------------------------------------------------------------------------------------
# Step 1: the initial over-segmentation


def oversegment(
    channels: np.ndarray, k: float, sigma: float = 0.8, min_size: int | None = None
) -> np.ndarray:
    """Felzenszwalb & Huttenlocher's graph-based segmentation (scikit-image's).

    Args:
        channels: ``(H, W, C)`` floats in [0, 1] (a colour space of :func:`convert_colour`).
        k: the threshold ``tau(C) = k / |C|`` (in 0..255 intensity units, as in the paper);
            a larger ``k`` gives larger regions.
        sigma: Gaussian pre-smoothing (the paper's 0.8).
        min_size: regions smaller than this are merged into a neighbour. Default: ``k``
            (as in the authors' code) scaled by the image's area relative to PASCAL's
            500 x 375 images, so that it stays the same fraction of the image: about 4 px
            for k = 50 on a 128 px image.

    Returns:
        ``(H, W)`` int64 labels ``0..n-1``.
    """
    h, w = channels.shape[:2]
    if min_size is None:
        min_size = max(1, int(round(k * h * w / PAPER_IMAGE_AREA)))
    labels = felzenszwalb(
        channels, scale=float(k), sigma=sigma, min_size=int(min_size), channel_axis=-1
    )
    _, labels = np.unique(labels, return_inverse=True)  # make them 0..n-1
    return labels.reshape(h, w).astype(np.int64)


def mean_colour_image(image: torch.Tensor | np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each region painted in its mean colour, ``(H, W, 3)`` float in [0, 1]: how an
    over-segmentation (or a level of the hierarchy) is drawn in the chapter."""
    rgb = as_uint8_image(image).astype(np.float64) / 255.0
    _, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    count = np.bincount(inverse.ravel())
    means = np.stack(
        [np.bincount(inverse.ravel(), rgb[..., c].ravel()) / count for c in range(3)], 1
    )
    return means[inverse]


# ---------------------------------------------------------------------------------------
# Step 3: strategies, ranking, and the whole algorithm


def run_strategy(
    image: np.ndarray, strategy: Strategy, cache: dict | None = None
) -> tuple[np.ndarray, Hierarchy]:
    """One strategy on an ``(H, W, 3)`` uint8 image: returns (initial labels, hierarchy).

    ``cache`` (a dict) shares the segmentation and features between strategies that differ
    only in their similarity."""
    key = (strategy.colour_space, strategy.k)
    if cache is not None and key in cache:
        labels, features = cache[key]
    else:
        channels = convert_colour(image, strategy.colour_space)
        labels = oversegment(channels, strategy.k)
        features = region_features(labels, channels)
        if cache is not None:
            cache[key] = (labels, features)
    return labels, hierarchical_grouping(features, SIMILARITIES[strategy.similarity])


def selective_search(
    image: torch.Tensor | np.ndarray,
    mode: str | Sequence[Strategy] = "fast",
    seed: int = 0,
    max_proposals: int | None = None,
) -> torch.Tensor:
    """Selective search proposals for one image, best first.

    Ranking (section 3.3): within a strategy, region ``r`` (numbered as in
    :class:`Hierarchy`) sits at position ``p = (2n - 1) - r`` of the hierarchy: the whole
    image is 1, the last merge 2, ..., the initial regions last. Its value is
    ``p * RND`` with RND uniform in [0, 1] (one draw per region and strategy), so large
    regions tend to come first without the order being the same for every strategy. The
    boxes of all strategies are sorted by value, and a box already seen is dropped
    (duplicates come from the same region in several strategies).

    Args:
        image: ``(3, H, W)`` float tensor in [0, 1] or ``(H, W, 3)`` array.
        mode: ``"single"``, ``"fast"``, ``"quality"`` (:data:`MODES`) or a list of
            :class:`Strategy`.
        seed: seeds the ranking's random numbers: same seed, same list.
        max_proposals: keep only the first this many.

    Returns:
        ``(K, 4)`` float32 boxes xyxy (exclusive ends), unique, ranked.
    """
    rgb = as_uint8_image(image)
    if isinstance(mode, str) and mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    strategies = MODES[mode] if isinstance(mode, str) else tuple(mode)
    if not strategies:
        raise ValueError("no strategy given")
    rng = np.random.default_rng(seed)
    cache: dict = {}
    all_boxes, all_values = [], []
    for strategy in strategies:
        _, hierarchy = run_strategy(rgb, strategy, cache)
        position = hierarchy.num_regions - np.arange(hierarchy.num_regions)
        all_values.append(position * rng.random(hierarchy.num_regions))
        all_boxes.append(hierarchy.boxes)
    boxes = np.concatenate(all_boxes)
    order = np.argsort(np.concatenate(all_values), kind="stable")
    boxes = boxes[order]
    _, first = np.unique(boxes, axis=0, return_index=True)
    boxes = boxes[np.sort(first)]
    if max_proposals is not None:
        boxes = boxes[:max_proposals]
    return torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)


# ---------------------------------------------------------------------------------------
# OpenCV's implementation


def opencv_selective_search(
    image: torch.Tensor | np.ndarray,
    mode: str = "fast",
    max_proposals: int | None = None,
    base_k: int = 150,
    inc_k: int = 150,
) -> torch.Tensor:
    """OpenCV's selective search (``cv2.ximgproc.segmentation``), for comparison.

    ``mode``: ``"single"``, ``"fast"`` or ``"quality"`` (OpenCV's
    ``switchToSingleStrategy`` / ``switchToSelectiveSearchFast`` / ``...Quality``).
    OpenCV's thresholds are ``k = base_k + i * inc_k``: i < 2 in fast mode, i < 4 in
    quality mode; its defaults (150, 150) give k = 150, 300 (fast) where the paper used 50,
    100: ``base_k = inc_k = 50`` gives the paper's fast thresholds. OpenCV returns
    ``(x, y, w, h)`` rectangles; they are converted to our xyxy. Returns ``(K, 4)``
    float32, in OpenCV's order."""
    import cv2

    rgb = as_uint8_image(image)
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(np.ascontiguousarray(rgb[..., ::-1]))  # OpenCV wants BGR
    if mode == "single":
        ss.switchToSingleStrategy(base_k)
    elif mode == "fast":
        ss.switchToSelectiveSearchFast(base_k, inc_k)
    elif mode == "quality":
        ss.switchToSelectiveSearchQuality(base_k, inc_k)
    else:
        raise ValueError(f"mode must be 'single', 'fast' or 'quality', got {mode!r}")
    rects = np.asarray(ss.process(), dtype=np.float32).reshape(-1, 4)
    boxes = rects.copy()
    boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
    if max_proposals is not None:
        boxes = boxes[:max_proposals]
    return torch.from_numpy(boxes)
