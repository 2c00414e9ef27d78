"""Time our Mask R-CNN against torchvision's at an identical configuration.

    python benchmarks/bench_models.py                      # CPU, and CUDA (AMP) when present
    python benchmarks/bench_models.py --device cpu --threads 1 --repeats 9
    python benchmarks/bench_models.py --device cpu --profile   # where our time goes

Both models are built from one :class:`~rcnn_steps.detectors.faster_rcnn.DetectorConfig` with the
same weights (:func:`rcnn_steps.detectors.mask_rcnn.torchvision_mask_rcnn` and
:func:`~rcnn_steps.detectors.mask_rcnn.copy_weights_to_torchvision`): the same backbone, FPN, RPN,
box head, mask head (FCN) and keypoint head, so they propose the same boxes and do the
same arithmetic; what differs is our code around it (RoIAlign in PyTorch ops vs
torchvision's C++ kernel, our mask pasting and NMS, ...). On CPU the config is the
``cpu_mask`` preset on a batch of 8 of the book's 128 px images; on CUDA it is
``gpu_mask`` (ResNet-50-FPN, the paper's heads) on the same images upscaled to 512 px,
with autocast (AMP) for both.

Rows: one training step (forward, backward, SGD update) on the batch, and inference
(eval mode, one image at a time as at test time: boxes, NMS, then masks pasted into the
image and keypoints for the kept detections) over the batch's images. Each prints the
median time of ours and of torchvision's, and the ratio ours / torchvision's (< 1: we
are faster; the target is <= 1.0). Ours and theirs alternate in rounds, so a busy spell
of a shared machine hits both; the best round's median is reported. Before timing, the
losses and the detections of the two are checked to agree.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from rcnn_steps.data import collate_fn, synth_datasets  # noqa: E402
from rcnn_steps.detectors.faster_rcnn import DetectorConfig, FasterRCNN  # noqa: E402
from rcnn_steps.detectors.mask_rcnn import (  # noqa: E402
    copy_weights_to_torchvision,
    torchvision_mask_rcnn,
)
from rcnn_steps.utils import benchmark_devices, load_average, machine_info, set_threads  # noqa: E402


def batch(num_images: int, scale: int, device: torch.device):
    """The first ``num_images`` training images of the book's set with their targets,
    upscaled ``scale`` times (boxes, masks and keypoints with them)."""
    train, _ = synth_datasets()
    images, targets = collate_fn([train[i] for i in range(num_images)])
    if scale != 1:
        images = [F.interpolate(im[None], scale_factor=scale, mode="bilinear")[0] for im in images]
        for t in targets:
            t["boxes"] = t["boxes"] * scale
            t["masks"] = t["masks"].repeat_interleave(scale, 1).repeat_interleave(scale, 2)
            t["keypoints"][..., :2] *= scale
    images = [im.to(device) for im in images]
    targets = [
        {k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets
    ]
    return images, targets


def build_pair(config: DetectorConfig, device: torch.device):
    torch.manual_seed(0)
    ours = FasterRCNN(config)
    theirs = torchvision_mask_rcnn(config, copy.deepcopy(ours.backbone))
    copy_weights_to_torchvision(ours, theirs)
    return ours.to(device), theirs.to(device)


def check_agreement(ours, theirs, images, targets) -> str:
    """Compare the two models' losses (same seed) and eval-mode detections."""
    ours.train()
    theirs.train()
    torch.manual_seed(1)
    a = ours(images, targets)
    torch.manual_seed(1)
    b = theirs(images, [dict(t) for t in targets])
    loss_diff = max(float((a[k] - b[k]).abs().detach()) for k in a)
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        da, db = ours(images[:2]), theirs(images[:2])
    box_diff = max(
        float((x["boxes"] - y["boxes"]).abs().max()) for x, y in zip(da, db, strict=True)
    )
    mask_diff = max(
        float((x["masks"] - y["masks"]).abs().max()) for x, y in zip(da, db, strict=True)
    )
    return (
        f"agreement: losses within {loss_diff:.1e}, boxes {box_diff:.1e}, pasted masks "
        f"{mask_diff:.1e} ({sum(len(d['boxes']) for d in da)} detections on 2 images)"
    )


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def compare(name, ours_fn, theirs_fn, rounds, repeats, device) -> tuple[float, float]:
    """Best-round medians (ms) of ours and theirs, alternating rounds."""
    ours_fn()
    theirs_fn()  # warm-up
    best_ours, best_theirs = float("inf"), float("inf")
    for _ in range(rounds):
        o = statistics.median(timed(ours_fn, device) for _ in range(repeats))
        t = statistics.median(timed(theirs_fn, device) for _ in range(repeats))
        best_ours, best_theirs = min(best_ours, o), min(best_theirs, t)
    ms_o, ms_t = best_ours * 1e3, best_theirs * 1e3
    print(
        f"  {name:<34} ours {ms_o:9.1f} ms   torchvision {ms_t:9.1f} ms   ratio {ms_o / ms_t:5.2f}"
    )
    return ms_o, ms_t


def run(device: torch.device, args) -> None:
    cuda = device.type == "cuda"
    config = DetectorConfig.gpu_mask() if cuda else DetectorConfig.cpu_mask()
    images, targets = batch(args.batch, 4 if cuda else 1, device)
    ours, theirs = build_pair(config, device)
    print(
        f"{device.type}: preset {config.preset}, batch {len(images)} x "
        f"{tuple(images[0].shape[-2:])}, AMP {'on' if cuda else 'off'}"
    )
    print("  " + check_agreement(ours, theirs, images, targets))

    def step_fn(model, optimizer):
        def step():
            model.train()
            with torch.autocast(device.type, enabled=cuda):
                losses = model(images, [dict(t) for t in targets])
            optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            optimizer.step()

        return step

    def infer_fn(model):
        @torch.no_grad()
        def infer():
            model.eval()
            with torch.autocast(device.type, enabled=cuda):
                for image in images:
                    model([image])

        return infer

    # the weights move with each step, identically for both (same losses): keep the two
    # models in step by giving each its own optimizer on its own copy
    opt_o = torch.optim.SGD(ours.parameters(), lr=1e-4, momentum=0.9)
    opt_t = torch.optim.SGD(theirs.parameters(), lr=1e-4, momentum=0.9)
    compare("training step", step_fn(ours, opt_o), step_fn(theirs, opt_t),
            args.rounds, args.repeats, device)  # fmt: skip
    compare(f"inference, {len(images)} images one by one", infer_fn(ours), infer_fn(theirs),
            args.rounds, args.repeats, device)  # fmt: skip
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            infer_fn(ours)()
            step_fn(ours, opt_o)()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    info = machine_info()
    print(f"Mask R-CNN, ours vs torchvision {__import__('torchvision').__version__}: "
          f"{info['cpu']}, {args.threads} thread(s), load {load_average()}"
          + (f", GPU {info['gpu']}" if "gpu" in info else ""))  # fmt: skip
    for device in benchmark_devices(args.device):
        run(device, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
