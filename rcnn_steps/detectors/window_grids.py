"""The sliding-window detector's windows (chapter 01, step 3): which there are, and where.

A :class:`WindowConfig` names the window sizes and aspect ratios. For each (size, ratio)
the image is resized once so that the window becomes the classifier's ``S x S`` input,
and the windows are the ``S x S`` squares of the resized image at the network's stride of
8 pixels (:class:`WindowGrid`, :func:`window_grids`, :func:`resize_for_window`);
:func:`grid_boxes` maps each of them back to a box of the original image,
:func:`sliding_windows` lists them all and :func:`count_windows` counts them.
:mod:`rcnn_steps.detectors.sliding_window` classifies them, and re-exports these names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rcnn_steps.detectors.window_crops import (
    INPUT_SIZE,
    _check_image,
    _resize,
    shape_channel_value,
    with_shape_channel,
)

#: The classifier's total stride: three 2x2 max-pools. One step on its dense output map is
#: 8 pixels of the (resized) input.
NETWORK_STRIDE = 8


@dataclass
class WindowConfig:
    """Which windows to slide, and how to turn their scores into detections.

    A window of ``size`` s and ``ratio`` r (width / height) is ``s * sqrt(r)`` wide and
    ``s / sqrt(r)`` tall (its area is s^2 whatever the ratio). The stride between windows
    is fixed by the network: 8 pixels of the resized image, i.e. a quarter of the window
    side in the original image (``NETWORK_STRIDE / INPUT_SIZE``).
    """

    sizes: tuple[float, ...] = (8.0, 12.0, 18.0, 27.0, 40.0, 60.0)
    ratios: tuple[float, ...] = (1.0, 3.0, 1.0 / 3.0)
    input_size: int = INPUT_SIZE
    score_threshold: float = 0.05  #: keep (window, class) pairs scoring above this
    nms_threshold: float = 0.3  #: class-wise NMS IoU (R-CNN's 0.3)
    max_detections: int = 100  #: per image, after NMS
    batch_size: int = 1024  #: windows per forward pass on the naive path

    def __post_init__(self) -> None:
        if not self.sizes or any(s <= 0 for s in self.sizes):
            raise ValueError(f"WindowConfig: sizes must be positive, got {self.sizes}")
        if not self.ratios or any(r <= 0 for r in self.ratios):
            raise ValueError(f"WindowConfig: ratios must be positive, got {self.ratios}")
        self.sizes = tuple(float(s) for s in self.sizes)
        self.ratios = tuple(float(r) for r in self.ratios)


@dataclass
class WindowGrid:
    """The windows of one (size, ratio): the image is resized to ``resized`` (H', W') so
    that a ``width x height`` window becomes ``S x S``; the windows are the ``ny x nx``
    squares of side S at stride 8 of the resized image."""

    size: float
    ratio: float
    width: float  #: nominal window width in the original image
    height: float
    resized: tuple[int, int]  #: (H', W') of the resized image
    scale: tuple[float, float]  #: (fy, fx) = (H' / H, W' / W)
    grid: tuple[int, int]  #: (ny, nx) windows

    @property
    def num_windows(self) -> int:
        return self.grid[0] * self.grid[1]


def window_grids(image_size: Sequence[int], config: WindowConfig) -> list[WindowGrid]:
    """The window grids of an image of ``(H, W)`` pixels, one per (size, ratio).

    Windows larger than the image (in either direction) are skipped: they have no valid
    position. Raises ``ValueError`` when no window fits at all.
    """
    height, width = (int(v) for v in image_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"window_grids: image size must be positive, got {image_size}")
    s_in, grids = config.input_size, []
    for size in config.sizes:
        for ratio in config.ratios:
            w, h = size * math.sqrt(ratio), size / math.sqrt(ratio)
            rh, rw = round(height * s_in / h), round(width * s_in / w)
            if rh < s_in or rw < s_in:
                continue  # the window does not fit in the image
            ny, nx = (rh - s_in) // NETWORK_STRIDE + 1, (rw - s_in) // NETWORK_STRIDE + 1
            grids.append(
                WindowGrid(size, ratio, w, h, (rh, rw), (rh / height, rw / width), (ny, nx))
            )
    if not grids:
        raise ValueError(
            f"window_grids: no window of sizes {config.sizes} and ratios {config.ratios} "
            f"fits in a {height}x{width} image; use smaller window sizes"
        )
    return grids


def grid_boxes(grid: WindowGrid, input_size: int = INPUT_SIZE) -> Tensor:
    """Map every position ``(j, i)`` of a dense output map back to its window.

    Position ``(j, i)`` is the ``S x S`` square at ``(8 i, 8 j)`` of the resized image;
    dividing by the resize factors gives, in the original image,
    ``x1 = 8 i / fx, y1 = 8 j / fy, x2 = (8 i + S) / fx, y2 = (8 j + S) / fy``.

    Returns:
        ``(ny * nx, 4)`` float32 xyxy boxes, row-major (``j * nx + i``): the order of
        ``map.flatten()`` for a ``(ny, nx)`` map.
    """
    (ny, nx), (fy, fx) = grid.grid, grid.scale
    ys = torch.arange(ny, dtype=torch.float32) * NETWORK_STRIDE
    xs = torch.arange(nx, dtype=torch.float32) * NETWORK_STRIDE
    y1, x1 = torch.meshgrid(ys, xs, indexing="ij")
    boxes = torch.stack([x1 / fx, y1 / fy, (x1 + input_size) / fx, (y1 + input_size) / fy], -1)
    return boxes.reshape(-1, 4)


def sliding_windows(image_size: Sequence[int], config: WindowConfig) -> tuple[Tensor, Tensor]:
    """Every window of an image: ``(N, 4)`` xyxy boxes and ``(N,)`` the index of their grid
    in :func:`window_grids` (one grid per size and ratio)."""
    grids = window_grids(image_size, config)
    boxes = [grid_boxes(g, config.input_size) for g in grids]
    index = [torch.full((len(b),), k) for k, b in enumerate(boxes)]
    return torch.cat(boxes), torch.cat(index)


def count_windows(image_size: Sequence[int], config: WindowConfig) -> dict[str, Any]:
    """How many windows an image has: in total, and per window size and per ratio."""
    grids = window_grids(image_size, config)
    per_size: dict[float, int] = {}
    per_ratio: dict[float, int] = {}
    for g in grids:
        per_size[g.size] = per_size.get(g.size, 0) + g.num_windows
        per_ratio[g.ratio] = per_ratio.get(g.ratio, 0) + g.num_windows
    return {
        "total": sum(g.num_windows for g in grids),
        "per_size": per_size,
        "per_ratio": per_ratio,
        "grids": len(grids),
    }


def resize_for_window(image: Tensor, grid: WindowGrid) -> Tensor:
    """``(3, H, W)`` -> ``(4, H', W')``: the image resized so the grid's window becomes
    ``S x S``, plus the window's shape channel."""
    _check_image("resize_for_window", image)
    resized = _resize(image, *grid.resized)
    return with_shape_channel(resized, shape_channel_value(grid.width, grid.height))
