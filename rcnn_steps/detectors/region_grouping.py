"""Selective search's hierarchical grouping (Uijlings et al., IJCV 2013, section 3.1 and
Algorithm 1; chapter 02, step 2).

Every region of the over-segmentation is described by its colour and texture histograms,
its size and its bounding box (:func:`region_features`, a :class:`RegionFeatures`); the
similarity of two neighbours sums eqs. 1 to 4 as eq. 5 weighs them (:func:`similarity`);
:func:`hierarchical_grouping` merges the most similar pair of neighbours until one region
covers the image, and every region it ever holds gives one box (a :class:`Hierarchy`);
:func:`labels_at_level` is the segmentation after some of its merges.
:mod:`rcnn_steps.detectors.selective_search` runs it for each strategy, and re-exports
these names.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Bins per colour channel (paper section 3.2: "25 bins ... for each colour channel").
COLOUR_BINS = 25
#: Gaussian-derivative orientations and bins per orientation (section 3.2, "SIFT-like").
TEXTURE_ORIENTATIONS = 8
TEXTURE_BINS = 10


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
