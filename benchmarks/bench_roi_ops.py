"""Time the RoI layers of rcnn_steps.ops against torchvision's compiled kernels.

    python benchmarks/bench_roi_ops.py                       # CPU, and CUDA when present
    python benchmarks/bench_roi_ops.py --device cpu --threads 1 --repeats 7
    python benchmarks/bench_roi_ops.py --device cpu --profile   # where our time goes
    python benchmarks/bench_roi_ops.py --device cpu --ours-threads 2  # ours on 2 threads

The sizes are a detector's RoI heads: two 800 x 800 images at stride 16 (a 50 x 50 map,
256 channels, as a ResNet-FPN level or a C4 map after the channel reduction), 256 RoIs
each (512 in all) with sides log-uniform between 32 and 512 pixels (2 to 32 cells),
pooled to 7 x 7 for the box head and 14 x 14 for the mask head. RoIAlign runs with
``aligned=True`` and both a fixed 2 x 2 grid (``sampling_ratio=2``) and the adaptive one
(``-1``), as torchvision's and Detectron2's heads use them.

Then RoIPool on the book's own model's shapes (:func:`model_inputs`): ``cpu_mask``'s
finest FPN level (stride 4, 64 channels, 8 images, channels_last as ``--memory-format
channels_last`` trains it) at 128 and 512 px, with 500 RoIs of the sizes FPN sends there.
Small bins on a large map: the case the benchmark's 800 px inputs hide, where building max
tables over the whole map cost 5x torchvision's time at 512 px.

torchvision's CPU RoI kernels are single-threaded C++ loops; ours are a few dozen PyTorch
ops each, run on ``rcnn_steps.ops.roi_checks.CPU_THREADS`` threads (torch's setting by default; see
its comment; ``--ours-threads`` changes it). ``--threads`` is torch's own setting.

Each row prints the median time of ours and of torchvision's forward (no gradient), and
of forward plus backward (the input requires grad; a fixed dense upstream gradient, as a
head's first layer would send), their ratio (ours / torchvision; < 1 means we are
faster), and whether the outputs and input gradients agree: "exact" (bit for bit) or
"close" with the largest difference. Ours and theirs alternate in rounds, so a busy spell
of a shared machine hits both; the best round's median is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torchvision
import torchvision.ops as tv_ops

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from rcnn_steps import ops as ours  # noqa: E402
from rcnn_steps.ops import roi_checks  # noqa: E402
from rcnn_steps.utils import (  # noqa: E402
    benchmark_devices,
    load_average,
    machine_info,
    set_threads,
)

IMAGE_SIZE = 800
STRIDE = 16


def detection_like_rois(
    num_images: int = 2, per_image: int = 256, seed: int = 0, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """``(num_images * per_image, 5)`` RoIs (batch index, x1, y1, x2, y2) in an
    ``IMAGE_SIZE`` square image: centres uniform, sides log-uniform in [32, 512] px,
    clipped to the image (what sampled proposals look like)."""
    gen = torch.Generator().manual_seed(seed)
    k = num_images * per_image
    centre = torch.rand(k, 2, generator=gen) * IMAGE_SIZE
    side = 32 * 16 ** torch.rand(k, 2, generator=gen)  # log-uniform in [32, 512]
    boxes = torch.cat((centre - side / 2, centre + side / 2), 1).clamp(0, IMAGE_SIZE)
    batch = torch.arange(num_images).repeat_interleave(per_image).float()[:, None]
    return torch.cat((batch, boxes), 1).to(device)


def model_inputs(
    image_size: int, seed: int = 0, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cpu_mask``'s finest FPN level for 8 images of ``image_size`` px, ``(8, 64, s / 4,
    s / 4)`` channels_last, and 500 RoIs (batch index, x1, y1, x2, y2) with sides
    log-uniform in [s / 16, 7 s / 16]: the boxes FPN's eq. (1) sends to that level (on the
    512 px set the model's own calls had bins of 6 cells on average, largest 8 x 7)."""
    gen = torch.Generator().manual_seed(seed)
    side = image_size // 4
    x = torch.randn(8, 64, side, side, generator=gen).relu()
    x = x.contiguous(memory_format=torch.channels_last)
    k = 500
    centre = torch.rand(k, 2, generator=gen) * image_size
    sides = image_size / 16 * 7 ** torch.rand(k, 2, generator=gen)
    boxes = torch.cat((centre - sides / 2, centre + sides / 2), 1).clamp(0, image_size)
    batch = torch.randint(0, 8, (k, 1), generator=gen).float()
    return x.to(device), torch.cat((batch, boxes), 1).to(device)


def median_ms(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> float:
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


def cases() -> list[tuple[str, Callable, Callable, tuple]]:
    """(label, ours, torchvision's, arguments after (input, rois)) for every row of the
    800 px inputs."""
    scale = 1 / STRIDE
    rows = []
    for size in (7, 14):
        rows.append((f"roi_pool {size}x{size}", ours.roi_pool, tv_ops.roi_pool, (size, scale)))
    for size in (7, 14):
        for ratio in (2, -1):
            rows.append(
                (
                    f"roi_align {size}x{size} sr={ratio}",
                    ours.roi_align,
                    tv_ops.roi_align,
                    (size, scale, ratio, True),
                )
            )
    return rows


def agreement(a: torch.Tensor, b: torch.Tensor) -> str:
    if torch.equal(a, b):
        return "exact"
    diff = (a - b).abs().max().item()
    return (
        f"close ({diff:.0e})" if torch.allclose(a, b, rtol=1e-4, atol=1e-5) else f"NO ({diff:.1e})"
    )


def run(device: torch.device, repeats: int, warmup: int, rounds: int, seed: int) -> None:
    print(
        f"\n## {device.type}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )
    gen = torch.Generator().manual_seed(seed)
    feature_size = IMAGE_SIZE // STRIDE
    x = torch.randn(2, 256, feature_size, feature_size, generator=gen).to(device)
    rois = detection_like_rois(seed=seed, device=device)
    rows = [(label, fn_ours, fn_tv, x, rois, args) for label, fn_ours, fn_tv, args in cases()]
    for image_size in (128, 512):
        x_model, rois_model = model_inputs(image_size, seed, device)
        for size in (7, 14):
            label = f"roi_pool {size}x{size} {image_size}px P2"
            rows.append((label, ours.roi_pool, tv_ops.roi_pool, x_model, rois_model, (size, 0.25)))
    header = (
        f"{'case':<26}{'fwd ours':>10}{'tv':>9}{'ratio':>7}{'f+b ours':>11}{'tv':>9}"
        f"{'ratio':>7}  same (output / gradient)"
    )
    print(header)
    print("-" * len(header))
    for label, fn_ours, fn_tv, x, rois, args in rows:
        out = fn_ours(x, rois, *args)
        grad = torch.randn(out.shape, generator=gen).to(device)
        xg = x.clone().requires_grad_(True)

        def forward(fn, args=args, x=x, rois=rois):
            with torch.no_grad():
                return fn(x, rois, *args)

        def forward_backward(fn, args=args, grad=grad, xg=xg, rois=rois):
            xg.grad = None
            fn(xg, rois, *args).backward(grad)
            return xg.grad

        calls = {
            "fwd ours": partial(forward, fn_ours),
            "fwd tv": partial(forward, fn_tv),
            "f+b ours": partial(forward_backward, fn_ours),
            "f+b tv": partial(forward_backward, fn_tv),
        }
        times = {name: [] for name in calls}
        for _ in range(rounds):
            for name, call in calls.items():
                times[name].append(median_ms(call, repeats, warmup, device))
        fo, ft, bo, bt = (min(t) for t in times.values())
        same_out = agreement(calls["fwd ours"](), calls["fwd tv"]())
        same_grad = agreement(calls["f+b ours"]().clone(), calls["f+b tv"]().clone())
        print(
            f"{label:<26}{fo:>10.1f}{ft:>9.1f}{fo / ft:>7.2f}{bo:>11.1f}{bt:>9.1f}"
            f"{bo / bt:>7.2f}  {same_out} / {same_grad}"
        )


def profile(device: torch.device, seed: int) -> None:
    """Our top operators (self time) for each case, forward and forward + backward."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    gen = torch.Generator().manual_seed(seed)
    feature_size = IMAGE_SIZE // STRIDE
    x = torch.randn(2, 256, feature_size, feature_size, generator=gen).to(device)
    rois = detection_like_rois(seed=seed, device=device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for label, fn, _, args in cases():
        out = fn(x, rois, *args)
        grad = torch.randn(out.shape, generator=gen).to(device)
        xg = x.clone().requires_grad_(True)

        def forward(fn=fn, args=args):
            return fn(x, rois, *args)

        def forward_backward(fn=fn, args=args, grad=grad, xg=xg):
            fn(xg, rois, *args).backward(grad)

        for what, call in (("forward", forward), ("forward + backward", forward_backward)):
            call()
            with torch_profile(activities=activities) as prof:
                call()
            print(f"\n### ours, {label}, {what}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; best kept")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument(
        "--ours-threads",
        type=int,
        default=roi_checks.CPU_THREADS,
        help="rcnn_steps.ops.roi_checks.CPU_THREADS: threads our layers may use, at most --threads "
        f"(default {roi_checks.CPU_THREADS}, the library's; 0 means all of --threads)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="print our top operators too")
    args = parser.parse_args(argv)

    set_threads(args.threads)
    roi_checks.CPU_THREADS = args.ours_threads or None
    info = machine_info()
    print("# rcnn_steps.ops RoI layers vs torchvision.ops (compiled kernels)")
    print(
        f"machine: {info['cpu']} ({info['cpu_count']} cores), torch threads: "
        f"{torch.get_num_threads()} (torchvision's CPU RoI kernels use one), ours: "
        f"CPU_THREADS={roi_checks.CPU_THREADS}" + (f", GPU: {info['gpu']}" if "gpu" in info else "")
    )
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    print(f"load average at start: {load_average()}")
    print(
        "inputs: 2 images x 256 channels x 50 x 50 (800 px at stride 16), 512 RoIs of 32-512 px;"
        " RoIAlign aligned=True; 'P2' rows: cpu_mask's stride-4 level, 8 images x 64 channels"
        " (channels_last), 500 RoIs of s/16-7s/16 px"
    )
    print(
        f"time (ms): best of {args.rounds} alternating rounds, each the median of "
        f"{args.repeats} calls after {args.warmup} warm-up call(s)"
    )

    try:
        devices = benchmark_devices(args.device)
    except ValueError as e:
        parser.error(str(e))
    for device in devices:
        run(device, args.repeats, args.warmup, args.rounds, args.seed)
        if args.profile:
            profile(device, args.seed)
    print(f"\nload average at end: {load_average()}")


if __name__ == "__main__":
    main()
