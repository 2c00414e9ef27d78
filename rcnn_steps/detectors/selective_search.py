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
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from skimage import color
from skimage.segmentation import felzenszwalb

from rcnn_steps.ops import box_iou

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

#: Bins per colour channel (paper section 3.2: "25 bins ... for each colour channel").
COLOUR_BINS = 25
#: Gaussian-derivative orientations and bins per orientation (section 3.2, "SIFT-like").
TEXTURE_ORIENTATIONS = 8
TEXTURE_BINS = 10
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


# ---------------------------------------------------------------------------------------
# Step 2: region features, similarities and the hierarchical grouping


def texture_gradients(channels: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Gaussian-derivative responses in :data:`TEXTURE_ORIENTATIONS` orientations per
    channel (section 3.2: "Gaussian derivatives in eight orientations using sigma = 1").

    The derivative in direction theta is ``cos(theta) Gx + sin(theta) Gy``; the eight
    directions theta = 0, 45, ..., 315 degrees keep its positive part (theta and theta + 180
    see the two signs of one edge). Each (channel, orientation) map is scaled to [0, 1] by
    its maximum over the image.

    Args:
        channels: ``(H, W, C)``.

    Returns:
        ``(H, W, C * 8)`` in [0, 1], channel-major (channel c's orientations at
        ``8c .. 8c + 7``).
    """
    h, w, c = channels.shape
    thetas = np.arange(TEXTURE_ORIENTATIONS) * (2 * np.pi / TEXTURE_ORIENTATIONS)
    out = np.empty((h, w, c, TEXTURE_ORIENTATIONS))
    for ch in range(c):
        gy = ndimage.gaussian_filter(channels[..., ch], sigma, order=(1, 0))
        gx = ndimage.gaussian_filter(channels[..., ch], sigma, order=(0, 1))
        out[:, :, ch] = np.maximum(
            0.0, gx[..., None] * np.cos(thetas) + gy[..., None] * np.sin(thetas)
        )
    peak = out.reshape(-1, c, TEXTURE_ORIENTATIONS).max(0)
    out /= np.where(peak > 0, peak, 1.0)
    return out.reshape(h, w, c * TEXTURE_ORIENTATIONS)


def region_histograms(labels: np.ndarray, values: np.ndarray, bins: int) -> np.ndarray:
    """One L1-normalised histogram per region, every channel binned, in one ``bincount``.

    Args:
        labels: ``(H, W)`` region labels ``0..R-1``.
        values: ``(H, W, D)`` values in [0, 1].
        bins: bins per channel over [0, 1].

    Returns:
        ``(R, D * bins)``: row r is the concatenated histograms of region r's pixels,
        channel d in columns ``d * bins .. (d + 1) * bins - 1``, the row summing to 1.
    """
    num_regions = int(labels.max()) + 1
    d = values.shape[-1]
    b = np.minimum((values * bins).astype(np.int64), bins - 1)  # (H, W, D)
    index = labels[..., None] * (d * bins) + np.arange(d) * bins + b
    hist = np.bincount(index.ravel(), minlength=num_regions * d * bins).astype(np.float64)
    hist = hist.reshape(num_regions, d * bins)
    return hist / hist.sum(1, keepdims=True)


@dataclass
class RegionFeatures:
    """The initial regions' descriptors (``R`` regions): ``colour (R, 25 C)`` and
    ``texture (R, 80 C)`` L1-normalised histograms, ``size (R,)`` in pixels, ``boxes (R, 4)``
    xyxy (exclusive ends), the ``pairs (P, 2)`` of neighbouring regions (``a < b``) and
    the ``image_size`` in pixels."""

    colour: np.ndarray
    texture: np.ndarray
    size: np.ndarray
    boxes: np.ndarray
    pairs: np.ndarray
    image_size: int


def adjacency(labels: np.ndarray) -> np.ndarray:
    """Neighbouring region pairs of a label image, from its one-pixel shifts.

    Two regions are neighbours when a pixel of one touches a pixel of the other to the
    right or below (4-connectivity). Returns ``(P, 2)`` int64 unique pairs with ``a < b``,
    sorted.
    """
    a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()])
    b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()])
    differ = a != b
    lo, hi = np.minimum(a[differ], b[differ]), np.maximum(a[differ], b[differ])
    n = int(labels.max()) + 1
    codes = np.unique(lo * n + hi)
    return np.stack([codes // n, codes % n], 1)


def region_features(labels: np.ndarray, channels: np.ndarray) -> RegionFeatures:
    """Colour and texture histograms, size, bounding box and neighbours of every region.

    Args:
        labels: ``(H, W)`` labels ``0..R-1`` (:func:`oversegment`).
        channels: ``(H, W, C)`` the colour space the histograms are taken in.
    """
    colour_hist = region_histograms(labels, channels, COLOUR_BINS)
    texture_hist = region_histograms(labels, texture_gradients(channels), TEXTURE_BINS)
    size = np.bincount(labels.ravel()).astype(np.float64)
    slices = ndimage.find_objects(labels + 1)
    boxes = np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in slices])
    return RegionFeatures(
        colour_hist, texture_hist, size, boxes.reshape(-1, 4), adjacency(labels), labels.size
    )


def colour_similarity(hist_a: np.ndarray, hist_b: np.ndarray) -> np.ndarray:
    """Eq. 1: ``s_colour(r_i, r_j) = sum_k min(c_i^k, c_j^k)``, histogram intersection of
    the L1-normalised colour histograms. ``(..., n)`` broadcast -> ``(...)`` in [0, 1]."""
    return np.minimum(hist_a, hist_b).sum(-1)


def texture_similarity(hist_a: np.ndarray, hist_b: np.ndarray) -> np.ndarray:
    """Eq. 2: ``s_texture(r_i, r_j) = sum_k min(t_i^k, t_j^k)`` on the texture histograms."""
    return np.minimum(hist_a, hist_b).sum(-1)


def size_similarity(size_a: np.ndarray, size_b: np.ndarray, image_size: float) -> np.ndarray:
    """Eq. 3: ``s_size(r_i, r_j) = 1 - (size(r_i) + size(r_j)) / size(im)``: small regions
    merge early, so that region sizes stay even across the image."""
    return 1.0 - (np.asarray(size_a) + np.asarray(size_b)) / image_size


def fill_similarity(
    box_a: np.ndarray,
    box_b: np.ndarray,
    size_a: np.ndarray,
    size_b: np.ndarray,
    image_size: float,
) -> np.ndarray:
    """Eq. 4: ``s_fill(r_i, r_j) = 1 - (size(BB_ij) - size(r_i) - size(r_j)) / size(im)``
    where ``BB_ij`` is the tight box around both: regions that fill each other's gaps
    merge early. Boxes ``(..., 4)`` xyxy."""
    box_a, box_b = np.asarray(box_a), np.asarray(box_b)
    x1 = np.minimum(box_a[..., 0], box_b[..., 0])
    y1 = np.minimum(box_a[..., 1], box_b[..., 1])
    x2 = np.maximum(box_a[..., 2], box_b[..., 2])
    y2 = np.maximum(box_a[..., 3], box_b[..., 3])
    return 1.0 - ((x2 - x1) * (y2 - y1) - size_a - size_b) / image_size


def similarity(
    colour_a: np.ndarray,
    colour_b: np.ndarray,
    texture_a: np.ndarray,
    texture_b: np.ndarray,
    size_a: np.ndarray,
    size_b: np.ndarray,
    box_a: np.ndarray,
    box_b: np.ndarray,
    image_size: float,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
) -> np.ndarray:
    """Eq. 5: ``s = a1 s_colour + a2 s_texture + a3 s_size + a4 s_fill``, ``a_i`` in {0, 1}
    (:data:`SIMILARITIES`). Every argument broadcasts over leading dimensions."""
    a1, a2, a3, a4 = weights
    s = np.zeros(np.broadcast_shapes(np.shape(size_a), np.shape(size_b)))
    if a1:
        s = s + a1 * colour_similarity(colour_a, colour_b)
    if a2:
        s = s + a2 * texture_similarity(texture_a, texture_b)
    if a3:
        s = s + a3 * size_similarity(size_a, size_b, image_size)
    if a4:
        s = s + a4 * fill_similarity(box_a, box_b, size_a, size_b, image_size)
    return s


@dataclass
class Hierarchy:
    """The result of :func:`hierarchical_grouping` on ``n`` initial regions.

    Regions are numbered in the order they were made: ``0..n-1`` the initial ones, and
    ``n + t`` the region made by merge ``t`` (``t = 0..n-2``), the last being the whole
    image. ``boxes (2n-1, 4)`` xyxy and ``sizes (2n-1,)`` of every region; ``merges
    (n-1, 2)`` the two regions merged at step ``t``; ``merge_similarity (n-1,)`` their
    similarity then."""

    num_initial: int
    boxes: np.ndarray
    sizes: np.ndarray
    merges: np.ndarray
    merge_similarity: np.ndarray

    @property
    def num_regions(self) -> int:
        return len(self.boxes)


def hierarchical_grouping(
    features: RegionFeatures, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)
) -> Hierarchy:
    """Algorithm 1 of the paper: merge the most similar pair of neighbours until one
    region is left.

    1. compute the similarity ``s(r_i, r_j)`` (:func:`similarity` with ``weights``) of every
       pair of neighbours (vectorised over the pairs);
    2. take the most similar pair (a heap; ties go to the lower region numbers), merge
       them into ``r_t``: ``size(r_t) = size(r_i) + size(r_j)``, ``BB_t`` the union box and
       the histograms the size-weighted average
       ``C_t = (size(r_i) C_i + size(r_j) C_j) / (size(r_i) + size(r_j))``
       (section 3.2; the same for texture), so nothing is recomputed from pixels;
    3. drop the similarities involving ``r_i`` or ``r_j`` (lazily: heap entries whose
       regions are gone are skipped) and add those between ``r_t`` and its neighbours
       (the union of theirs), again vectorised;
    4. repeat until no pair is left: ``n - 1`` merges for a connected image.
    """
    n = len(features.size)
    total = 2 * n - 1
    colour_hist = np.zeros((total, features.colour.shape[1]))
    texture_hist = np.zeros((total, features.texture.shape[1]))
    sizes = np.zeros(total)
    boxes = np.zeros((total, 4), dtype=np.int64)
    colour_hist[:n], texture_hist[:n] = features.colour, features.texture
    sizes[:n], boxes[:n] = features.size, features.boxes
    image_size = float(features.image_size)

    def sim(i: np.ndarray | int, j: np.ndarray) -> np.ndarray:
        return similarity(
            colour_hist[i], colour_hist[j], texture_hist[i], texture_hist[j],
            sizes[i], sizes[j], boxes[i], boxes[j], image_size, weights,
        )  # fmt: skip

    neighbours: list[set[int]] = [set() for _ in range(total)]
    pairs = features.pairs
    for a, b in pairs.tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)
    heap = []
    if len(pairs):
        s0 = sim(pairs[:, 0], pairs[:, 1])
        heap = list(zip((-s0).tolist(), pairs[:, 0].tolist(), pairs[:, 1].tolist(), strict=True))
        heapq.heapify(heap)
    alive = np.zeros(total, dtype=bool)
    alive[:n] = True
    merges, merge_sim = [], []
    t = n
    while heap:
        neg_s, i, j = heapq.heappop(heap)
        if not (alive[i] and alive[j]):
            continue
        si, sj = sizes[i], sizes[j]
        sizes[t] = si + sj
        colour_hist[t] = (si * colour_hist[i] + sj * colour_hist[j]) / sizes[t]
        texture_hist[t] = (si * texture_hist[i] + sj * texture_hist[j]) / sizes[t]
        boxes[t, :2] = np.minimum(boxes[i, :2], boxes[j, :2])
        boxes[t, 2:] = np.maximum(boxes[i, 2:], boxes[j, 2:])
        alive[i] = alive[j] = False
        alive[t] = True
        merges.append((i, j))
        merge_sim.append(-neg_s)
        nb = (neighbours[i] | neighbours[j]) - {i, j}
        for k in nb:
            neighbours[k].discard(i)
            neighbours[k].discard(j)
            neighbours[k].add(t)
        neighbours[t] = nb
        neighbours[i] = neighbours[j] = set()
        if nb:
            others = np.fromiter(sorted(nb), dtype=np.int64, count=len(nb))
            for k, s in zip(others.tolist(), sim(t, others).tolist(), strict=True):
                heapq.heappush(heap, (-s, k, t))
        t += 1
    used = t
    return Hierarchy(
        num_initial=n,
        boxes=boxes[:used],
        sizes=sizes[:used],
        merges=np.asarray(merges, dtype=np.int64).reshape(-1, 2),
        merge_similarity=np.asarray(merge_sim),
    )


def labels_at_level(labels: np.ndarray, hierarchy: Hierarchy, num_merges: int) -> np.ndarray:
    """The segmentation after the first ``num_merges`` merges of ``hierarchy``: ``(H, W)``
    labels numbered as the hierarchy's regions (to draw the grouping at a few levels)."""
    root = np.arange(hierarchy.num_regions)
    for t, (i, j) in enumerate(hierarchy.merges[:num_merges].tolist()):
        root[i] = root[j] = hierarchy.num_initial + t
    for _ in range(hierarchy.num_regions):  # follow the merges up to the current root
        nxt = root[root]
        if np.array_equal(nxt, root):
            break
        root = nxt
    return root[labels]


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
# OpenCV's implementation, and recall


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


def proposal_recall(
    proposals: Sequence[torch.Tensor],
    gt_boxes: Sequence[torch.Tensor],
    num_proposals: Sequence[int] = (10, 30, 100, 300, 1000, 2000),
    iou_thresholds: Sequence[float] = (0.5, 0.7),
) -> np.ndarray:
    """Recall of ranked proposals: the share of ground-truth boxes (over all images)
    covered by at least one of an image's first ``n`` proposals at IoU >= t.

    Args:
        proposals: per image, ``(K_i, 4)`` ranked boxes xyxy (fewer than ``n`` is fine).
        gt_boxes: per image, ``(G_i, 4)`` ground-truth boxes xyxy.

    Returns:
        ``(len(iou_thresholds), len(num_proposals))`` recalls in [0, 1].
    """
    if len(proposals) != len(gt_boxes):
        raise ValueError(f"{len(proposals)} proposal lists for {len(gt_boxes)} images")
    total = sum(len(g) for g in gt_boxes)
    if total == 0:
        raise ValueError("no ground-truth boxes: recall is undefined")
    thresholds = torch.as_tensor(list(iou_thresholds), dtype=torch.float64)
    hits = np.zeros((len(iou_thresholds), len(num_proposals)))
    for props, gts in zip(proposals, gt_boxes, strict=True):
        if len(gts) == 0:
            continue
        props = torch.as_tensor(props, dtype=torch.float64).reshape(-1, 4)
        gts = torch.as_tensor(gts, dtype=torch.float64).reshape(-1, 4)
        if len(props) == 0:
            continue
        iou = box_iou(gts, props).nan_to_num(0.0)  # (G, K)
        best = torch.cummax(iou, dim=1).values  # best IoU among the first k + 1
        for j, n in enumerate(num_proposals):
            b = best[:, min(n, props.shape[0]) - 1]  # (G,)
            hits[:, j] += (b[None, :] >= thresholds[:, None]).sum(1).numpy()
    return hits / total


#: What Uijlings et al. report for selective search on PASCAL VOC 2007 test (IJCV 2013,
#: Table 5): mean average best overlap, recall at IoU > 0.5 and boxes per image. "quality"
#: is confirmed by the paper's abstract ("99% recall and a Mean Average Best Overlap of
#: 0.879 at 10,097 locations"); the "fast" row (0.804, 0.968, 2,134) is the figure we were
#: given for Table 5 and could not check against a copy of the table.
PAPER_VOC2007 = {
    "fast": {"mabo": 0.804, "recall@0.5": 0.968, "num_proposals": 2134},
    "quality": {"mabo": 0.879, "recall@0.5": 0.991, "num_proposals": 10097},
}


def proposal_quality(
    proposals: Sequence[torch.Tensor],
    gt_boxes: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor] | None = None,
    max_proposals: int | None = 2000,
) -> dict[str, Any]:
    """The paper's measures of proposal quality (section 5), over a set of images.

    The best overlap of a ground-truth box ``g`` is its largest IoU with any proposal of its
    image (0 when the image has none). For each class ``c`` with ground-truth boxes ``G_c``:

    - Average Best Overlap ``ABO_c = 1/|G_c| sum_{g in G_c} max_{l in L} IoU(g, l)``;
    - recall ``R_c``: the share of ``G_c`` whose best overlap exceeds 0.5 (PASCAL's
      criterion, strictly greater, as in the authors' evaluation code).

    MABO is the mean of ``ABO_c`` over the classes and recall the mean of ``R_c``: every
    class counts the same, however many boxes it has (the authors' ``demo.m`` prints both
    means). :func:`proposal_recall` counts every box the same instead.

    Args:
        proposals: per image, ``(K_i, 4)`` ranked boxes xyxy.
        gt_boxes: per image, ``(G_i, 4)`` ground-truth boxes xyxy.
        gt_labels: per image, ``(G_i,)`` class labels; None puts every box in one class
            (MABO is then the mean best overlap of all boxes).
        max_proposals: keep each image's first this many proposals (None: all).

    Returns:
        ``{"mabo", "recall@0.5", "num_proposals" (mean per image, after the cut),
        "num_gt_boxes", "abo_per_class", "recall_per_class"}`` (per class: ``{label: value}``).
    """
    if len(proposals) != len(gt_boxes):
        raise ValueError(f"{len(proposals)} proposal lists for {len(gt_boxes)} images")
    if gt_labels is None:
        gt_labels = [torch.zeros(len(g), dtype=torch.int64) for g in gt_boxes]
    if len(gt_labels) != len(gt_boxes):
        raise ValueError(f"{len(gt_labels)} label lists for {len(gt_boxes)} images")
    best_overlaps, labels, counts = [], [], []
    for props, gts, labs in zip(proposals, gt_boxes, gt_labels, strict=True):
        props = torch.as_tensor(props, dtype=torch.float64).reshape(-1, 4)[:max_proposals]
        gts = torch.as_tensor(gts, dtype=torch.float64).reshape(-1, 4)
        labs = torch.as_tensor(labs, dtype=torch.int64).reshape(-1)
        if len(labs) != len(gts):
            raise ValueError(f"{len(labs)} labels for {len(gts)} ground-truth boxes")
        counts.append(len(props))
        if len(props) == 0 or len(gts) == 0:
            best = torch.zeros(len(gts), dtype=torch.float64)
        else:
            best = box_iou(gts, props).nan_to_num(0.0).max(1).values  # (G,)
        best_overlaps.append(best)
        labels.append(labs)
    best, labels = torch.cat(best_overlaps), torch.cat(labels)
    if len(best) == 0:
        raise ValueError("no ground-truth boxes: MABO and recall are undefined")
    abo, recall = {}, {}
    for c in sorted(labels.unique().tolist()):
        of_class = best[labels == c]
        abo[c] = float(of_class.mean())
        recall[c] = float((of_class > 0.5).double().mean())
    return {
        "mabo": float(np.mean(list(abo.values()))),
        "recall@0.5": float(np.mean(list(recall.values()))),
        "num_proposals": float(np.mean(counts)) if counts else 0.0,
        "num_gt_boxes": len(best),
        "abo_per_class": abo,
        "recall_per_class": recall,
    }
