"""How much of the CPU's matmul speed one Mask R-CNN training step gets, and what helps.

    python benchmarks/bench_training_step.py                   # 2 threads, 128 px
    python benchmarks/bench_training_step.py --threads 1 --rounds 5 --repeats 7
    python benchmarks/bench_training_step.py --size 256         # four times the pixels
    python benchmarks/bench_training_step.py --variants eager,compile --compile-scope model
    python benchmarks/bench_training_step.py --profile          # the eager step's top ops

The model is ``DetectorConfig.cpu_mask(keypoints=False)`` (chapter 07's Mask R-CNN without
the keypoint branch), the batch the first 8 of the book's 128 px training images (``--size
256``: upscaled 2x, boxes and masks with them, as ``bench_models.py`` upscales). One
training step is forward, backward and an SGD update.

The yardstick is the machine's own: a 2048 x 2048 fp32 matmul (``2 n^3`` FLOP), timed in
this process on the same threads, is the peak. ``torch.utils.flop_counter`` counts the
step's FLOPs (convolutions, matmuls and their backward; the element-wise work is not
counted, so the fraction is of useful arithmetic), and the row's fraction is

    fraction = (step FLOP / step time) / (matmul FLOP / matmul time)

Variants, each a copy of the same initial weights with its own optimizer:

- ``eager``: the library as it is (the "before").
- ``channels_last``: the model's weights in channels_last (NHWC) memory format, what
  ``TrainConfig(memory_format="channels_last")`` (``--memory-format channels_last`` of
  ``train`` and ``ablations grid``) trains with. The images enter as a list of (3, H, W)
  tensors, which have no channels_last layout; the first convolution sees an NHWC weight
  and returns NHWC, and the format propagates from there. On a quiet 2-core Xeon it
  measured 0.92x eager's step time at 2 threads, 0.93x at one and 0.85x at one thread and
  256 px (losses within 6e-5, 1.4e-4 at 256 px): most of it is the mask head's 2 x 2
  transposed convolution, whose forward took 9.5 ms in NCHW and 1.4 ms in NHWC (27 RoIs
  x 64 x 14 x 14, one thread); a 3 x 3 convolution's forward and backward gain ~10%.
- ``compile``: ``torch.compile`` (inductor, which writes C++ and needs a C compiler) of the
  backbone + FPN (``--compile-scope backbone``, the default: one static graph) or of the
  whole model (``model``: RPN and RoI heads break the graph at every data-dependent size).
  The first steps compile; their time is printed apart and not in the median (minutes on
  a 2-core machine the first time; inductor caches its kernels under /tmp, so a rerun
  compiles in seconds).

Before timing, each variant's losses are compared with eager's on the same weights and the
same seed (the largest absolute difference over the loss terms). The variants alternate in
rounds, so a busy spell of a shared machine hits all of them; each row is its best round's
median.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from rcnn_steps.data import collate_fn, synth_datasets  # noqa: E402
from rcnn_steps.detectors.faster_rcnn import DetectorConfig, FasterRCNN  # noqa: E402
from rcnn_steps.utils import load_average, machine_info, set_threads  # noqa: E402

VARIANTS = ("eager", "channels_last", "compile")
MATMUL_SIZE = 2048


def batch(num_images: int, size: int):
    """The first ``num_images`` training images of the book's 128 px set and their
    targets (no keypoints), upscaled to ``size`` px (boxes and masks with them)."""
    train, _ = synth_datasets()
    images, targets = collate_fn([train[i] for i in range(num_images)])
    scale = size // 128
    if scale != 1:
        images = [F.interpolate(im[None], scale_factor=scale, mode="bilinear")[0] for im in images]
        for t in targets:
            t["boxes"] = t["boxes"] * scale
            t["masks"] = t["masks"].repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    targets = [{k: v for k, v in t.items() if k != "keypoints"} for t in targets]
    return images, targets


def matmul() -> Callable[[], object]:
    """The yardstick: one ``MATMUL_SIZE``-square fp32 matmul, ``2 n^3`` FLOP. It is timed
    in the same rounds as the steps, so a busy spell moves the peak and the steps alike."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=gen)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=gen)
    out = torch.empty_like(a)
    torch.mm(a, b, out=out)  # warm-up
    return lambda: torch.mm(a, b, out=out)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def make_step(model, optimizer, images, targets) -> Callable[[], dict]:
    def step():
        model.train()
        losses = model(images, [dict(t) for t in targets])
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        return losses

    return step


def losses_at_seed(model, images, targets) -> dict[str, float]:
    """The loss terms of one forward in training mode, the RNG (anchor and RoI sampling)
    seeded."""
    model.train()
    torch.manual_seed(1)
    return {k: float(v.detach()) for k, v in model(images, [dict(t) for t in targets]).items()}


def count_flops(step: Callable[[], object]) -> tuple[float, float]:
    """(FLOP of one step, the share of it in convolution backward)."""
    with FlopCounterMode(display=False) as counter:
        step()
    total = counter.get_total_flops()
    conv_bwd = counter.get_flop_counts()["Global"].get(torch.ops.aten.convolution_backward, 0)
    return float(total), conv_bwd / max(total, 1)


def prepare(name: str, model: FasterRCNN, scope: str) -> FasterRCNN:
    """The model of one variant (in place)."""
    if name == "channels_last":
        return model.to(memory_format=torch.channels_last)
    if name == "compile":
        if scope == "model":
            return torch.compile(model)
        model.backbone = torch.compile(model.backbone)
    return model


def run(args) -> None:
    images, targets = batch(args.batch, args.size)
    config = DetectorConfig.cpu_mask(keypoints=False)
    torch.manual_seed(0)
    initial = FasterRCNN(config)
    print(
        f"model: preset {config.preset} without keypoints, batch {len(images)} x "
        f"{tuple(images[0].shape[-2:])}, SGD (lr 1e-4, momentum 0.9)"
    )

    reference = losses_at_seed(copy.deepcopy(initial), images, targets)
    flop_model = copy.deepcopy(initial)
    flop_opt = torch.optim.SGD(flop_model.parameters(), lr=1e-4, momentum=0.9)
    step_flops, conv_bwd_share = count_flops(make_step(flop_model, flop_opt, images, targets))
    print(
        f"FLOP per step: {step_flops / 1e9:.2f} G (convolution backward "
        f"{100 * conv_bwd_share:.0f}%)"
    )

    steps: dict[str, Callable[[], object]] = {}
    for name in args.variants:
        model = copy.deepcopy(initial)
        try:
            model = prepare(name, model, args.compile_scope)
            t0 = time.perf_counter()
            losses = losses_at_seed(model, images, targets)
            first_forward = time.perf_counter() - t0
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
            step = make_step(model, optimizer, images, targets)
            warmup = [timed(step) for _ in range(2)]
        except Exception as e:  # a variant that cannot run says why; the others go on
            print(f"  {name}: cannot run: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
            continue
        diff = max(abs(losses[k] - reference[k]) for k in reference)
        extra = (
            f"; compile: first forward {first_forward:.1f} s, first steps "
            f"{warmup[0]:.1f} + {warmup[1]:.1f} s"
            if name == "compile"
            else ""
        )
        print(f"  {name}: losses within {diff:.1e} of eager's{extra}")
        steps[name] = step

    timed_fns = {"matmul": matmul(), **steps}
    best = {name: float("inf") for name in timed_fns}
    for _ in range(args.rounds):
        for name, fn in timed_fns.items():
            best[name] = min(best[name], statistics.median(timed(fn) for _ in range(args.repeats)))
    peak = 2 * MATMUL_SIZE**3 / best.pop("matmul") / 1e9
    print(f"\npeak: {MATMUL_SIZE} x {MATMUL_SIZE} fp32 matmul {peak:.1f} GFLOP/s")

    print(f"{'variant':<16}{'step ms':>9}{'GFLOP/s':>9}{'of peak':>9}{'vs eager':>10}")
    for name, seconds in best.items():
        rate = step_flops / seconds / 1e9
        ratio = f"{seconds / best['eager']:.2f}" if "eager" in best else "-"
        print(f"{name:<16}{1e3 * seconds:>9.1f}{rate:>9.1f}{rate / peak:>9.2f}{ratio:>10}")
    if "eager" in best and len(best) > 1:
        fastest = min(best, key=best.get)
        print(
            f"fraction of the matmul peak: before (eager) "
            f"{step_flops / best['eager'] / 1e9 / peak:.2f}, after (fastest, {fastest}) "
            f"{step_flops / best[fastest] / 1e9 / peak:.2f}"
        )

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        model = copy.deepcopy(initial)
        step = make_step(model, torch.optim.SGD(model.parameters(), lr=1e-4), images, targets)
        step()
        with profile(activities=[ProfilerActivity.CPU], with_stack=False) as prof:
            step()
        print("\neager step, top operators by self CPU time:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, choices=(128, 256), default=128, help="image side")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; best kept")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per round")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, from {', '.join(VARIANTS)} (default: all)",
    )
    parser.add_argument("--compile-scope", choices=("backbone", "model"), default="backbone")
    parser.add_argument("--profile", action="store_true", help="the eager step's top ops too")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown or not args.variants:
        parser.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")

    set_threads(args.threads)
    info = machine_info()
    print("# one Mask R-CNN training step against the machine's matmul peak")
    print(f"machine: {info['cpu']} ({info['cpu_count']} cores), torch threads: {args.threads}")
    print(f"torch {torch.__version__}; load average at start: {load_average()}")
    print(
        f"time: best of {args.rounds} alternating rounds, each the median of {args.repeats} steps"
    )
    run(args)
    print(f"\nload average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
