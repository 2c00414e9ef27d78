"""Chapter 07's keypoint collapse, traced: how to debug a head that does not learn.

At the paper's keypoint loss weight of 1, ``cpu_mask``'s keypoint-only model ends with
flat heatmaps on every seed (chapter 08, table ``mrcnn_kp_weight``); at weight 0.1 it
learns. This module trains the same model in a few settings and records, every ``every``
steps, what one would look at, in the order one would look:

1. **which term the gradient is made of** (:func:`rcnn_steps.engine.branch_gradient_norms`
   on one fixed train batch): the whole gradient's norm is clipped at
   ``grad_clip_norm``, so a term whose gradient is most of the total sets how far every
   branch moves;
2. **how peaked the heatmaps are** (:func:`rcnn_steps.modeling.keypoint_head.heatmap_entropy`,
   in nats, on the ground-truth persons of the first val images): ``log(56^2) = 8.05`` is a
   flat map, a uniform guess;
3. **dead units**: per conv of the keypoint head, the fraction of its channels whose ReLU
   output is zero at every position of every probe person (a channel that never fires
   passes no gradient back, and stays dead);
4. **the remedies**, each a setting: a smaller loss weight, a smaller learning rate, and
   no clip (to show what the clip is for).

The probes do not change the run: each puts back the random state it drew from (the RoI
and anchor samplers), and :func:`rcnn_steps.engine.branch_gradient_norms` leaves the
weights, buffers and gradients as they were, so a traced setting trains as an untraced run
of the same seed would on the same machine. (On 2026-12-04 the traced weight-1 run ended
with the keypoint loss of table ``mrcnn_kp_weight``'s ``w1/seed0``, 8.0507, though the two
ran on different CPUs; their other losses differ in the second digit, as runs on two
kernel sets do.)

    python -m rcnn_steps.experiments.keypoint_debug --seed 0 --out results/keypoint_debug.json
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rcnn_steps.data import collate_fn
from rcnn_steps.detectors.faster_rcnn import FasterRCNN
from rcnn_steps.engine import NonFiniteLossError, TrainConfig, branch_gradient_norms, train
from rcnn_steps.experiments.presets import preset as preset_record
from rcnn_steps.experiments.presets import schedule
from rcnn_steps.experiments.runner import detect, detector_config, evaluate, load_datasets
from rcnn_steps.modeling.keypoint_head import heatmap_entropy
from rcnn_steps.utils import add_debug_argument, run_command, seed_everything, write_results

PRESET = "cpu_mask"
#: The keypoint-only model of table ``mrcnn_kp_weight`` (chapter 08).
BASE_OVERRIDES: dict[str, Any] = {"masks": False, "keypoints": True}

#: The settings, in the order one would try them: the collapse, then one remedy each.
#: ``lr_factor`` scales the preset's learning rate; ``clip`` False drops the gradient clip.
SETTINGS: dict[str, dict[str, Any]] = {
    "w1": {"label": "weight 1 (the paper's)", "keypoint_loss_weight": 1.0},
    "w0.1": {"label": "weight 0.1", "keypoint_loss_weight": 0.1},
    "w1_lr0.1": {
        "label": "weight 1, learning rate / 10",
        "keypoint_loss_weight": 1.0,
        "lr_factor": 0.1,
    },  # fmt: skip
    "w1_noclip": {
        "label": "weight 1, no gradient clip",
        "keypoint_loss_weight": 1.0,
        "clip": False,
    },  # fmt: skip
}
#: The keypoints whose final heatmaps are stored (of the first probe person).
STORED_KEYPOINTS = 4


def probe_persons(dataset, num_persons: int = 16, label: int | None = None):
    """The ground-truth boxes of the first ``num_persons`` persons (the one class with
    keypoints) in ``dataset``'s images, in order: ``(images, boxes)``, a list of ``(3, H,
    W)`` images and one ``(R_i, 4)`` tensor per image."""
    if label is None:
        label = dataset.class_names.index("person")
    images, boxes, found = [], [], 0
    for index in range(len(dataset)):
        image, target = dataset[index]
        mine = target["boxes"][target["labels"] == label][: num_persons - found]
        if len(mine):
            images.append(image)
            boxes.append(mine)
            found += len(mine)
        if found == num_persons:
            break
    if not found:
        raise ValueError("probe_persons: no person in this set")
    return images, boxes


def dead_unit_fractions(model: FasterRCNN, images: Sequence[Tensor], boxes: Sequence[Tensor]):
    """Per conv of the keypoint head, the fraction of its channels whose ReLU output is 0
    at every one of the ``14 x 14`` positions of every box: ``[float] * len(layers)``.

    Also returns the boxes' heatmap logits, ``(R, K, 56, 56)``, from the same pass."""
    relus = [m for m in model.roi_heads.keypoint_branch.head if isinstance(m, nn.ReLU)]
    alive: list[Tensor] = []

    def record(_module, _inputs, output):  # (R, C, 14, 14) after the ReLU
        alive.append((output > 0).flatten(2).any(dim=2).any(dim=0))

    hooks = [relu.register_forward_hook(record) for relu in relus]
    try:
        heatmaps = model.keypoint_heatmaps(images, boxes)
    finally:
        for hook in hooks:
            hook.remove()
    return [1.0 - float(a.float().mean()) for a in alive], heatmaps


def make_probe(
    val_images: Sequence[Tensor],
    val_boxes: Sequence[Tensor],
    train_batch: tuple[Sequence[Tensor], Sequence[Mapping[str, Tensor]]],
    loss_weights: Mapping[str, float],
):
    """An ``evaluate_fn`` for :func:`rcnn_steps.engine.train` that measures, without
    changing the run (the random state is put back): ``entropy`` (mean over the probe
    persons' keypoints, nats), ``dead/<i>`` per head conv, and ``grad/<term>`` (each
    weighted term's gradient norm on ``train_batch``, and ``grad/total_loss``)."""

    def probe(model: FasterRCNN) -> dict[str, float]:
        rng = torch.random.get_rng_state()
        try:
            dead, heatmaps = dead_unit_fractions(model, val_images, val_boxes)
            with torch.enable_grad():
                norms = branch_gradient_norms(model, *train_batch, loss_weights)
        finally:
            torch.random.set_rng_state(rng)
        out = {"entropy": round(float(heatmap_entropy(heatmaps).mean()), 4)}
        out.update({f"dead/{i}": round(f, 4) for i, f in enumerate(dead)})
        out.update({f"grad/{k}": round(v, 4) for k, v in norms.items()})
        return out

    return probe


def trace_setting(
    name: str,
    seed: int = 0,
    max_iter: int | None = None,
    every: int = 25,
    root=None,
    preset: str = PRESET,
) -> dict[str, Any]:
    """Train ``preset``'s keypoint-only model in setting ``name`` (:data:`SETTINGS`) on the
    set at ``root`` (None: the book's synthetic set) and trace it every ``every`` steps.

    Returns ``{name, label, seed, max_iter, lr, grad_clip_norm, keypoint_loss_weight,
    trace: [{step, entropy, dead/i, grad/term}], loss_history, final_losses,
    diverged_at (the step of a NaN loss, or None), keypoint_metrics, metrics (box),
    heatmaps (the first probe person's first keypoints' probabilities, 56 x 56, 4
    decimals), train_seconds}``."""
    if name not in SETTINGS:
        raise ValueError(f"unknown setting {name!r}; one of {list(SETTINGS)}")
    if every < 1:
        raise ValueError(f"every must be at least 1, got {every}")
    setting = SETTINGS[name]
    overrides = {**BASE_OVERRIDES, "keypoint_loss_weight": setting["keypoint_loss_weight"]}
    config = detector_config(preset, overrides)
    feed = preset_record(preset).feeding
    train_set, val_set = load_datasets(
        root, masks=False, flip=feed.flip, min_sizes=feed.min_sizes, max_size=feed.max_size
    )
    sched = schedule(preset, max_iter)
    sched["lr"] *= setting.get("lr_factor", 1.0)
    if not setting.get("clip", True):
        sched["grad_clip_norm"] = None
    train_cfg = TrainConfig(**sched, seed=seed, eval_every=every, progress=False)
    val_images, val_boxes = probe_persons(val_set)
    person = train_set.class_names.index("person")
    with_person = [i for i in range(len(train_set)) if (train_set[i][1]["labels"] == person).any()]
    batch_images, batch_targets = collate_fn([train_set[i] for i in with_person[:8]])
    probe = make_probe(val_images, val_boxes, (batch_images, batch_targets), train_cfg.loss_weights)

    seed_everything(seed)
    model = FasterRCNN(config)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=feed.batch_size, shuffle=True, collate_fn=collate_fn
    )
    t0 = time.perf_counter()
    diverged_at, trace, history, final = None, [], [], {}
    try:
        result = train(model, loader, train_cfg, evaluate_fn=probe)
        trace, history, final = result.eval_history, result.history, result.losses
    except NonFiniteLossError as e:  # no clip: the run's end is the finding
        diverged_at, final = e.step, e.losses
    train_seconds = time.perf_counter() - t0
    record: dict[str, Any] = {
        "name": name,
        "label": setting["label"],
        "seed": seed,
        "max_iter": train_cfg.max_iter,
        "lr": train_cfg.lr,
        "grad_clip_norm": train_cfg.grad_clip_norm,
        "keypoint_loss_weight": setting["keypoint_loss_weight"],
        "diverged_at": diverged_at,
        "trace": trace,
        "loss_history": history,
        "final_losses": {k: round(float(v), 4) for k, v in final.items()},  # NaN at divergence
        "train_seconds": round(train_seconds, 1),
    }
    if diverged_at is None:
        ids = list(val_set.image_ids)
        found, _ = detect(model, val_set, ids)
        metrics = evaluate(val_set, ids, found)
        record["metrics"] = metrics["bbox"]
        record["keypoint_metrics"] = metrics["keypoints"]
        maps = model.keypoint_heatmaps(val_images[:1], val_boxes[:1])[0, :STORED_KEYPOINTS]
        probs = torch.softmax(maps.flatten(1), dim=1).reshape(maps.shape)
        record["heatmaps"] = [[[round(float(p), 4) for p in row] for row in k] for k in probs]
    return record


def uniform_entropy(size: int = 56) -> float:
    """The entropy of a flat ``size x size`` heatmap: ``log(size^2)`` nats."""
    return math.log(size * size)


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """``python -m rcnn_steps.experiments.keypoint_debug ...`` (``prog``: the name its help
    and errors show; ``python -m rcnn_steps keypoint-debug`` passes its own)."""
    parser = argparse.ArgumentParser(
        prog=prog or "python -m rcnn_steps.experiments.keypoint_debug",
        description="Trace chapter 07's keypoint collapse: per-term gradient norms, "
        "heatmap entropy and dead units over training, in each setting of SETTINGS.",
    )
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-iter", type=int, default=None, help="default: the preset's")
    parser.add_argument("--every", type=int, default=25, help="steps between probes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("results/keypoint_debug.json"))
    add_debug_argument(parser)
    args = parser.parse_args(argv)

    def command(args: argparse.Namespace) -> int:
        if args.out.exists() and not args.out.is_file():
            raise ValueError(f"--out {args.out} is not a file; give a .json path")
        if args.every < 1:
            raise ValueError(f"--every must be at least 1, got {args.every}")
        torch.set_num_threads(args.threads)
        started = time.time()
        runs = {}
        for name in args.settings:
            runs[name] = trace_setting(name, args.seed, args.max_iter, args.every)
            r = runs[name]
            kp = r.get("keypoint_metrics", {}).get("AP")
            print(f"{name}: diverged at {r['diverged_at']}" if kp is None else
                  f"{name}: keypoint AP {kp:.3f}, last entropy {r['trace'][-1]['entropy']:.2f}, "
                  f"{r['train_seconds']:.0f} s", flush=True)  # fmt: skip
        results = {"preset": PRESET, "overrides": BASE_OVERRIDES, "every": args.every,
                   "uniform_entropy": round(uniform_entropy(), 4), "runs": runs}  # fmt: skip
        write_results(args.out, results, preset=PRESET, seeds=[args.seed], started=started)
        print(f"wrote {args.out}")
        return 0

    return run_command(command, args)


if __name__ == "__main__":
    raise SystemExit(main())
