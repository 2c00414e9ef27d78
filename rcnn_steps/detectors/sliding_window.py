"""Sliding-window classification (chapter 01): a crop classifier slid over the image.

The oldest way to detect objects is to turn detection into classification: cut the image
into windows at every position, scale and shape, ask a classifier "which object, if any,
fills this window?", and keep the confident answers. OverFeat (Sermanet et al. 2014) calls
it "exhaustive search at a coarse scale, regression at a fine scale": classify all the
patches (width x height x scales x ratios of them: millions on a real image), then refine
each coarse, grid-quantised window with a box regressor. Its key trick makes the search
affordable: a classifier written as convolutions can be run *once* over a whole image, and
its output map holds the scores of every window at once, because overlapping windows
share their computation. This module builds each piece, in the order the chapter shows it:

1. **Crops** (:func:`make_crops`): each object's box, jittered, cut out and resized to the
   classifier's input (32 x 32), labelled with its class; background crops (IoU < 0.3
   with every object, half of them near objects: the hard ones); class-balanced, seeded.
2. **The classifier** (:class:`CropClassifier`): valid (unpadded) convolutions and two
   ``Linear`` layers, trained through :func:`rcnn_steps.engine.train` with
   :func:`rcnn_steps.engine.classification_loss`
   (:func:`rcnn_steps.experiments.sliding_window.train_classifier`).
3. **Windows** (:func:`window_grids`, :func:`sliding_windows`): for each window size and
   aspect ratio, the image is resized once so that the window becomes 32 x 32, and the
   windows are the 32 x 32 squares of the resized image at a stride of 8 pixels (the
   network's stride). :func:`classify_windows_naive` crops and classifies every window.
4. **The fully convolutional trick** (:func:`linear_to_conv`, :func:`to_fully_convolutional`,
   :func:`classify_windows_dense`): the ``Linear`` layers become convolutions, the
   network runs once per resized image, and :func:`grid_boxes` maps each position of the
   output map back to its window. Same scores as the naive way, a fraction of the time.
5. **Box regression** (:func:`~rcnn_steps.experiments.sliding_window.train_box_regressor`):
   R-CNN's class-specific regressor (appendix C) on the classifier's penultimate
   features, trained on the jittered crops' offsets, moves each window off the grid and
   onto the object.
6. **Detection and evaluation** (:func:`postprocess`, :func:`detect`,
   :func:`~rcnn_steps.experiments.sliding_window.evaluate_detector`): per-class score
   thresholding, class-wise NMS (:func:`rcnn_steps.ops.boxes.batched_nms`), COCO box AP
   (:mod:`rcnn_steps.evaluation`).

How the chapter trains, evaluates and records it (the presets, the training of steps 2 and
5, COCO AP, ``python -m rcnn_steps.sliding_window evaluate --preset cpu``, which writes
``results/sliding_window.json`` and the chapter's row of the evolution table) is
:mod:`rcnn_steps.experiments.sliding_window`; :func:`detection_cost` and
:func:`time_detectors`, the work and the seconds the convolutional trick saves, are here.

Why a fourth input channel? Windows of ratio 3:1 and 1:3 are *warped* to a square
32 x 32 input, so a bar (3:1) in a 3:1 window looks exactly like a square in a 1:1 window:
the warp throws the window's shape away. We hand it back to the classifier as a constant
fourth channel, ``log(w / h) / log(3)`` (-1, 0 or +1 for the three ratios), a
"pyramid of filters" over shape in the spirit of DPM's aspect-ratio components. It is
constant over a resized image, so the fully convolutional trick is unaffected.

The crops of step 1 are :mod:`rcnn_steps.detectors.window_crops`'s and the windows of step 3
:mod:`rcnn_steps.detectors.window_grids`'s; this module holds the classifier (steps 2 and
4), the classification of every window, detection (step 6) and its cost, and re-exports
the names of both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rcnn_steps.detectors.window_crops import (  # noqa: F401 (BOX_CODER_WEIGHTS: re-exported)
    BOX_CODER_WEIGHTS,
    INPUT_SIZE,
    CropSet,
    _box_coder,
    _check_image,
    crop_and_resize,
    make_crops,
    shape_channel_value,
    with_shape_channel,
)
from rcnn_steps.detectors.window_grids import (
    NETWORK_STRIDE,
    WindowConfig,
    WindowGrid,
    count_windows,
    grid_boxes,
    resize_for_window,
    sliding_windows,
    window_grids,
)
from rcnn_steps.ops import batched_nms, clip_boxes_to_image

__all__ = [
    "INPUT_SIZE",
    "NETWORK_STRIDE",
    "CropClassifier",
    "CropSet",
    "DenseClassifier",
    "WindowConfig",
    "WindowGrid",
    "classify_windows_dense",
    "classify_windows_naive",
    "count_windows",
    "crop_and_resize",
    "detect",
    "detection_cost",
    "grid_boxes",
    "linear_to_conv",
    "make_crops",
    "multiply_adds",
    "postprocess",
    "resize_for_window",
    "shape_channel_value",
    "sliding_windows",
    "to_fully_convolutional",
    "window_grids",
    "with_shape_channel",
]


# ----------------------------------------------------------------------------------------
# Step 2: the crop classifier, and step 4: the same network as convolutions
# ----------------------------------------------------------------------------------------


def _feature_size(input_size: int) -> int:
    """Side of the feature map the classifier's convolutions leave from a square input."""
    s = input_size
    for conv in (5, 3, 3):  # valid conv, then 2x2 max-pool
        s = (s - conv + 1) // 2
    return s


class CropClassifier(nn.Module):
    """A small crop classifier with ``C + 1`` outputs (background is class 0), and a
    class-specific box regressor beside it.

    Shapes for the default 32 x 32 input (all convolutions are *valid*, i.e. unpadded, so
    that a window's features do not depend on what lies outside it)::

        (B, 4, 32, 32) -conv5x5-> 28 -pool-> 14 -conv3x3-> 12 -pool-> 6 -conv3x3-> 4 -pool-> 2
        (each convolution followed by batch norm and ReLU; 16, 32, 64 channels)
        features (B, 64, 2, 2) -flatten-> (B, 256) -fc-> (B, 128) "fc" features
        cls_score: (B, 128) -> (B, C + 1) logits
        bbox_pred: (B, 128) -> (B, 4 * C) deltas, four per object class (R-CNN appendix C)

    ``forward`` returns the logits, so the model trains with
    :func:`rcnn_steps.engine.classification_loss`. The two ``Linear`` layers at the top
    look like a classifier's, but :func:`to_fully_convolutional` turns them into
    convolutions with the same weights (OverFeat section 3.5).
    """

    def __init__(self, num_classes: int, input_size: int = INPUT_SIZE, width: int = 16) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"CropClassifier: num_classes must be >= 1, got {num_classes}")
        self.feature_size = _feature_size(input_size)
        if self.feature_size < 1:
            raise ValueError(f"CropClassifier: input_size {input_size} is too small (>= 20)")
        self.num_classes = num_classes
        self.input_size = input_size
        layers: list[nn.Module] = []
        channels = 4
        for kernel, out in ((5, width), (3, 2 * width), (3, 4 * width)):
            # batch norm speeds training up; in eval mode it is a fixed per-channel affine
            # map, so it does not break the equality of the dense and per-window scores
            layers += [nn.Conv2d(channels, out, kernel), nn.BatchNorm2d(out)]
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.feature_channels = 4 * width
        self.fc = nn.Linear(4 * width * self.feature_size**2, 128)
        self.cls_score = nn.Linear(128, num_classes + 1)
        self.bbox_pred = nn.Linear(128, 4 * num_classes)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)  # Fast R-CNN's initialisation
        nn.init.zeros_(self.bbox_pred.bias)

    def _check(self, x: Tensor) -> None:
        s = self.input_size
        if x.dim() != 4 or x.shape[1] != 4 or x.shape[2:] != (s, s):
            raise ValueError(
                f"CropClassifier expects crops of shape (B, 4, {s}, {s}) (RGB + shape "
                f"channel), got {tuple(x.shape)}; to run over a whole image use "
                "to_fully_convolutional(model)"
            )

    def embed(self, x: Tensor) -> Tensor:
        """``(B, 4, S, S)`` crops -> ``(B, 128)`` features (after fc and ReLU)."""
        self._check(x)
        return F.relu(self.fc(self.features(x).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 4, S, S)`` crops -> ``(B, C + 1)`` class logits."""
        return self.cls_score(self.embed(x))

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits ``(B, C + 1)`` and box deltas ``(B, 4 * C)`` of a batch of crops."""
        h = self.embed(x)
        return self.cls_score(h), self.bbox_pred(h)


def linear_to_conv(linear: nn.Linear, in_channels: int, kernel_size: int) -> nn.Conv2d:
    """The convolution that computes ``linear`` on every ``kernel_size``-square patch.

    A ``Linear(in_channels * k * k, out)`` applied to a flattened ``(in_channels, k, k)``
    map is a ``Conv2d(in_channels, out, k)`` whose kernel is the same weight matrix
    reshaped to ``(out, in_channels, k, k)`` (``flatten`` walks channels, then rows, then
    columns: the order of a conv kernel). On a ``k x k`` input the two agree; on a larger
    input the convolution slides the same classifier over every position.
    """
    out_features, in_features = linear.weight.shape
    if in_features != in_channels * kernel_size**2:
        raise ValueError(
            f"linear_to_conv: Linear has {in_features} inputs, not in_channels * k * k = "
            f"{in_channels} * {kernel_size}^2 = {in_channels * kernel_size**2}"
        )
    conv = nn.Conv2d(in_channels, out_features, kernel_size)
    with torch.no_grad():
        conv.weight.copy_(
            linear.weight.reshape(out_features, in_channels, kernel_size, kernel_size)
        )
        conv.bias.copy_(linear.bias)
    return conv.to(linear.weight.device)


class DenseClassifier(nn.Module):
    """A :class:`CropClassifier` rewritten as convolutions only (made by
    :func:`to_fully_convolutional`).

    ``forward(x)`` takes a ``(B, 4, H, W)`` image with ``H, W >= S`` and returns
    ``(logits, deltas)``: ``(B, C + 1, ny, nx)`` and ``(B, 4 * C, ny, nx)`` with
    ``ny = (H - S) // 8 + 1`` and ``nx = (W - S) // 8 + 1``. Position ``(j, i)`` holds the
    outputs of the ``S x S`` window at ``x = 8 i``, ``y = 8 j`` (:func:`grid_boxes`).
    """

    def __init__(
        self,
        features: nn.Module,
        fc: nn.Conv2d,
        cls_score: nn.Conv2d,
        bbox_pred: nn.Conv2d,
        input_size: int,
    ) -> None:
        super().__init__()
        self.features, self.fc, self.cls_score, self.bbox_pred = features, fc, cls_score, bbox_pred
        self.input_size = input_size

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s = self.input_size
        if x.dim() != 4 or x.shape[1] != 4 or x.shape[2] < s or x.shape[3] < s:
            raise ValueError(
                f"DenseClassifier expects (B, 4, H, W) with H, W >= {s}, got {tuple(x.shape)}"
            )
        h = F.relu(self.fc(self.features(x)))
        return self.cls_score(h), self.bbox_pred(h)


def to_fully_convolutional(model: CropClassifier) -> DenseClassifier:
    """OverFeat's trick: the same weights, ``Linear`` layers turned into convolutions.

    ``fc`` (256 -> 128 on a flattened 64 x 2 x 2 map) becomes a 2 x 2 convolution, and
    ``cls_score`` and ``bbox_pred`` become 1 x 1 convolutions. The convolutional features
    are shared (not copied): retrain the model and convert again to refresh the heads.
    """
    k = model.feature_size
    return DenseClassifier(
        model.features,
        linear_to_conv(model.fc, model.feature_channels, k),
        linear_to_conv(model.cls_score, model.cls_score.in_features, 1),
        linear_to_conv(model.bbox_pred, model.bbox_pred.in_features, 1),
        model.input_size,
    ).train(model.training)


# ----------------------------------------------------------------------------------------
# Steps 3 and 4: every window classified, one at a time or all at once
# ----------------------------------------------------------------------------------------


def classify_windows_naive(
    model: CropClassifier, image: Tensor, config: WindowConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """Classify every window separately: crop it out of the resized image and run the
    whole network on it (batched ``config.batch_size`` windows at a time).

    Returns:
        ``boxes (N, 4)`` the windows, ``logits (N, C + 1)``, ``deltas (N, 4 * C)``, with N
        the windows of all grids in :func:`sliding_windows` order.
    """
    _check_image("classify_windows_naive", image)
    s, device = config.input_size, next(model.parameters()).device
    all_boxes, all_logits, all_deltas = [], [], []
    with torch.no_grad():
        for grid in window_grids(image.shape[1:], config):
            resized = resize_for_window(image.to(device), grid)
            # (4, ny, nx, S, S): every S x S square at stride 8, as a view (no copy yet)
            windows = resized.unfold(1, s, NETWORK_STRIDE).unfold(2, s, NETWORK_STRIDE)
            windows = windows.permute(1, 2, 0, 3, 4).reshape(-1, 4, s, s)
            for start in range(0, len(windows), config.batch_size):
                logits, deltas = model.predict(windows[start : start + config.batch_size])
                all_logits.append(logits)
                all_deltas.append(deltas)
            all_boxes.append(grid_boxes(grid, s).to(device))
    return torch.cat(all_boxes), torch.cat(all_logits), torch.cat(all_deltas)


def classify_windows_dense(
    dense: DenseClassifier, image: Tensor, config: WindowConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """Classify every window at once: one pass of the fully convolutional network per
    resized image, and the scores read off its output map. Same outputs, same order as
    :func:`classify_windows_naive`."""
    _check_image("classify_windows_dense", image)
    if not isinstance(dense, DenseClassifier):
        raise TypeError("classify_windows_dense: pass to_fully_convolutional(model)")
    device = next(dense.parameters()).device
    all_boxes, all_logits, all_deltas = [], [], []
    with torch.no_grad():
        for grid in window_grids(image.shape[1:], config):
            logits, deltas = dense(resize_for_window(image.to(device), grid)[None])
            if tuple(logits.shape[2:]) != grid.grid:  # pragma: no cover - a design check
                raise RuntimeError(f"dense map {tuple(logits.shape[2:])} != grid {grid.grid}")
            all_logits.append(logits[0].flatten(1).T)  # (ny * nx, C + 1), row-major
            all_deltas.append(deltas[0].flatten(1).T)
            all_boxes.append(grid_boxes(grid, config.input_size).to(device))
    return torch.cat(all_boxes), torch.cat(all_logits), torch.cat(all_deltas)


# ----------------------------------------------------------------------------------------
# Step 6: from window scores to detections
# ----------------------------------------------------------------------------------------


def postprocess(
    boxes: Tensor,
    logits: Tensor,
    deltas: Tensor | None,
    image_size: Sequence[int],
    config: WindowConfig,
) -> dict[str, Tensor]:
    """Window scores -> detections, as R-CNN does it (section 2.2).

    1. softmax over the ``C + 1`` classes; every (window, object class) pair whose score
       is above ``config.score_threshold`` is a candidate;
    2. with ``deltas`` (``(N, 4 * C)``), the candidate's window is moved by its class's
       deltas (``BoxCoder(10, 10, 5, 5).decode``), else it stays on the window grid;
    3. boxes clipped to the image, class-wise NMS at ``config.nms_threshold``, and the
       ``config.max_detections`` best kept.

    Returns:
        ``{"boxes": (K, 4), "scores": (K,), "labels": (K,)}`` by decreasing score.
    """
    probs = logits.softmax(dim=1)[:, 1:]  # (N, C): drop the background column
    win, cls = torch.nonzero(probs > config.score_threshold, as_tuple=True)
    scores = probs[win, cls]
    cand = boxes[win]
    if deltas is not None and len(win):
        d = deltas.reshape(len(boxes), -1, 4)[win, cls]
        cand = _box_coder().decode(d, cand)
    cand = clip_boxes_to_image(cand, tuple(int(v) for v in image_size))
    ok = ((cand[:, 2] - cand[:, 0]) > 0) & ((cand[:, 3] - cand[:, 1]) > 0)
    cand, scores, labels = cand[ok], scores[ok], cls[ok] + 1
    keep = batched_nms(cand, scores, labels, config.nms_threshold)[: config.max_detections]
    return {"boxes": cand[keep], "scores": scores[keep], "labels": labels[keep]}


def detect(
    model: CropClassifier | DenseClassifier,
    images: Tensor | Sequence[Tensor],
    config: WindowConfig | None = None,
    method: str = "dense",
    regress: bool = True,
) -> list[dict[str, Tensor]]:
    """Sliding-window detection on one ``(3, H, W)`` image or a list of them.

    ``method="dense"`` runs the fully convolutional network (a :class:`CropClassifier`
    is converted first), ``"naive"`` classifies each window separately; both give the same
    detections. ``regress=False`` keeps the windows' grid-quantised boxes.

    Returns:
        One dict ``{"boxes", "scores", "labels"}`` per image (see :func:`postprocess`).
    """
    config = config or WindowConfig()
    if method not in ("dense", "naive"):
        raise ValueError(f"detect: method must be 'dense' or 'naive', got {method!r}")
    if isinstance(images, Tensor) and images.dim() == 3:
        images = [images]
    if isinstance(model, CropClassifier):
        was_training = model.training
        model.eval()
        net = to_fully_convolutional(model) if method == "dense" else model
    else:
        if method == "naive":
            raise TypeError("detect: the naive method needs the CropClassifier itself")
        was_training, net = None, model.eval()
    outputs = []
    try:
        for image in images:
            classify = classify_windows_dense if method == "dense" else classify_windows_naive
            boxes, logits, deltas = classify(net, image, config)
            outputs.append(
                postprocess(boxes, logits, deltas if regress else None, image.shape[1:], config)
            )
    finally:
        if was_training is not None:
            model.train(was_training)
    return outputs


# ----------------------------------------------------------------------------------------
# Cost and speed: multiply-adds and seconds of the naive and the dense detector
# ----------------------------------------------------------------------------------------


def multiply_adds(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass of ``model`` on an input of ``input_shape``
    (N, C, H, W), counted over its ``Conv2d`` and ``Linear`` layers (the rest is small).

    A convolution costs (output elements) x (C_in / groups x kh x kw); a linear layer
    (output elements) x (in_features). Deterministic, unlike a stopwatch."""
    total = 0

    def count(module: nn.Module, _inputs, output: Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(tuple(input_shape), device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def detection_cost(
    model: CropClassifier, image_size: Sequence[int], config: WindowConfig | None = None
) -> dict[str, float]:
    """Multiply-adds per image of the naive detector (every window classified on its own)
    and of the fully convolutional one (one pass per resized image), and their ratio: the
    work the convolutional trick saves, which windows overlapping by three quarters share.
    """
    config = config or WindowConfig()
    grids = window_grids(image_size, config)
    was_training = model.training
    model.eval()
    try:
        channels = model.features[0].in_channels
        s = config.input_size
        naive = multiply_adds(model, (1, channels, s, s)) * sum(g.num_windows for g in grids)
        dense_net = to_fully_convolutional(model)
        dense = sum(multiply_adds(dense_net, (1, channels, *g.resized)) for g in grids)
    finally:
        model.train(was_training)
    return {"naive_macs": float(naive), "dense_macs": float(dense), "ratio": naive / dense}


def time_detectors(
    model: CropClassifier,
    images: Sequence[Tensor],
    config: WindowConfig | None = None,
    repeats: int = 3,
) -> dict[str, float]:
    """Seconds per image of the naive and the fully convolutional detectors on the same
    images (each run once beforehand to warm up), their speed-up, and the largest
    difference between their scores (float rounding only).

    Each image is timed ``repeats`` times, the two methods interleaved, and the fastest
    run of each kept: the minimum is the least disturbed by other work on the machine."""
    config = config or WindowConfig()
    model.eval()
    dense = to_fully_convolutional(model)
    detect(model, images[0], config, method="naive")  # warm-up
    detect(dense, images[0], config, method="dense")
    timings, max_diff = {"naive": 0.0, "dense": 0.0}, 0.0
    for image in images:
        logits = {}
        best = {"naive": math.inf, "dense": math.inf}
        for _ in range(max(1, repeats)):
            for method, net, classify in (
                ("naive", model, classify_windows_naive),
                ("dense", dense, classify_windows_dense),
            ):
                t0 = time.perf_counter()
                boxes, logits[method], deltas = classify(net, image, config)
                postprocess(boxes, logits[method], deltas, image.shape[1:], config)
                best[method] = min(best[method], time.perf_counter() - t0)
        for method in timings:
            timings[method] += best[method] / len(images)
        max_diff = max(max_diff, (logits["naive"] - logits["dense"]).abs().max().item())
    return {
        "naive_seconds_per_image": timings["naive"],
        "dense_seconds_per_image": timings["dense"],
        "speedup": timings["naive"] / timings["dense"],
        "max_logit_difference": max_diff,
        "num_images": len(images),
        "repeats": repeats,
    }
