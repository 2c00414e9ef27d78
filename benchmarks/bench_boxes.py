"""Time rcnn_steps.ops.boxes against torchvision.ops at detection-like sizes.

    python benchmarks/bench_boxes.py                   # CPU, and CUDA when present
    python benchmarks/bench_boxes.py --device cpu --repeats 50

Prints one table per device: the median time of ours and of torchvision's (measured in the
same run, on the same inputs, alternating), their ratio (ours / torchvision; < 1 means we
are faster), and whether the two returned the same result. The sizes follow where the
book's models call these functions:

- box_iou 1000 x 1000: matching a batch of anchors or proposals to each other;
  2000 x 100: RPN proposals (the pre-NMS top-k) against the ground truth of an image.
- nms 1000 and 2000 boxes at IoU 0.7: the RPN's post- and pre-NMS top-k (Faster R-CNN
  section 3.3); 5000 boxes at 0.5: a detector's raw output before the per-image cap.
- batched_nms 5000 boxes over 20 classes at 0.5: the box head's per-class NMS.

The boxes are clustered around objects, with jitter in position and size, so NMS sees the
heavy overlap it sees in a detector rather than uniformly scattered boxes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
import torchvision.ops as tv_ops

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from rcnn_steps.ops import boxes as ours  # noqa: E402
from rcnn_steps.utils import (  # noqa: E402
    benchmark_devices,
    load_average,
    machine_info,
    set_threads,
)


def detection_like_boxes(
    num_boxes: int, image_size: int = 800, boxes_per_object: int = 50, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(num_boxes, 4)`` xyxy boxes and ``(num_boxes,)`` scores in [0, 1).

    Boxes come in clusters of about ``boxes_per_object`` around random objects of side
    16-256 px in a square image, with centres jittered by 15% of the object size and
    sides by a log-normal factor (sigma 0.2), clipped to the image: what a detector's
    candidates look like around its objects.
    """
    gen = torch.Generator().manual_seed(seed)
    num_objects = max(1, num_boxes // boxes_per_object)
    centres = torch.rand(num_objects, 2, generator=gen) * image_size
    sizes = 16 + torch.rand(num_objects, 2, generator=gen) * 240
    owner = torch.randint(0, num_objects, (num_boxes,), generator=gen)
    jitter = torch.randn(num_boxes, 2, generator=gen) * sizes[owner] * 0.15
    box_centres = centres[owner] + jitter
    box_sizes = sizes[owner] * torch.exp(torch.randn(num_boxes, 2, generator=gen) * 0.2)
    boxes = torch.cat((box_centres - box_sizes / 2, box_centres + box_sizes / 2), dim=1)
    boxes = boxes.clamp(0, image_size)
    scores = torch.rand(num_boxes, generator=gen)
    return boxes, scores


def median_ms(
    fn: Callable[[], torch.Tensor], repeats: int, warmup: int, device: torch.device
) -> float:
    """Median wall time of ``fn()`` in milliseconds, after ``warmup`` untimed calls."""
    cuda = device.type == "cuda"
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if cuda:  # kernels run asynchronously: wait for them before stopping the clock
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def cases(device: torch.device, seed: int) -> list[tuple[str, Callable, Callable, tuple]]:
    """(label, ours, torchvision's, arguments) for every row of the table."""

    def on_device(*tensors):
        return tuple(t.to(device) for t in tensors)

    rows = []
    for n, m in ((1000, 1000), (2000, 100)):
        (b1,) = on_device(detection_like_boxes(n, seed=seed)[0])
        (b2,) = on_device(detection_like_boxes(m, seed=seed + 1)[0])
        rows.append((f"box_iou {n} x {m}", ours.box_iou, tv_ops.box_iou, (b1, b2)))
    for n, threshold in ((1000, 0.7), (2000, 0.7), (5000, 0.5)):
        boxes, scores = on_device(*detection_like_boxes(n, seed=seed))
        rows.append((f"nms {n} @ {threshold}", ours.nms, tv_ops.nms, (boxes, scores, threshold)))
    boxes, scores = detection_like_boxes(5000, seed=seed)
    classes = torch.randint(0, 20, (5000,), generator=torch.Generator().manual_seed(seed))
    boxes, scores, classes = on_device(boxes, scores, classes)
    rows.append(
        (
            "batched_nms 5000, 20 cls @ 0.5",
            ours.batched_nms,
            tv_ops.batched_nms,
            (boxes, scores, classes, 0.5),
        )
    )
    return rows


def same_result(a: torch.Tensor, b: torch.Tensor) -> str:
    """ "yes" when bit-for-bit equal, else what still agrees."""
    if torch.equal(a, b):
        return "yes"
    if a.dtype == torch.int64:
        # batched_nms above 1000 CPU boxes: torchvision's final sort is unstable, so
        # equal scores may come out in another order; the same set is still the same.
        same_set = torch.equal(a.sort().values, b.sort().values)
        return "same set" if same_set else "NO"
    return "close" if torch.allclose(a, b, equal_nan=True) else "NO"


def run(device: torch.device, repeats: int, warmup: int, seed: int) -> None:
    print(
        f"\n## {device.type}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )
    header = f"{'case':<32}{'ours ms':>10}{'tv ms':>10}{'ours/tv':>9}  same"
    print(header)
    print("-" * len(header))
    for label, fn_ours, fn_tv, args in cases(device, seed):
        # Alternate the two in rounds so a slow spell of a shared machine hits both.
        t_ours, t_tv = [], []
        for _ in range(3):
            t_ours.append(median_ms(lambda f=fn_ours, a=args: f(*a), repeats, warmup, device))
            t_tv.append(median_ms(lambda f=fn_tv, a=args: f(*a), repeats, warmup, device))
        ms_ours, ms_tv = min(t_ours), min(t_tv)
        same = same_result(fn_ours(*args), fn_tv(*args))
        print(f"{label:<32}{ms_ours:>10.3f}{ms_tv:>10.3f}{ms_ours / ms_tv:>9.2f}  {same}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    set_threads(args.threads)
    info = machine_info()
    print("# rcnn_steps.ops.boxes vs torchvision.ops")
    print(
        f"machine: {info['cpu']} ({info['cpu_count']} cores), torch threads: "
        f"{torch.get_num_threads()}" + (f", GPU: {info['gpu']}" if "gpu" in info else "")
    )
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    print(f"load average at start: {load_average()}")
    print(
        f"time: best of 3 alternating rounds, each the median of {args.repeats} calls "
        f"after {args.warmup} warm-up calls"
    )

    try:
        devices = benchmark_devices(args.device)
    except ValueError as e:
        parser.error(str(e))
    for device in devices:
        run(device, args.repeats, args.warmup, args.seed)
    print(f"\nload average at end: {load_average()}")


if __name__ == "__main__":
    main()
