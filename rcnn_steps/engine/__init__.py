"""The training loop: one :func:`train` that every chapter and the final Mask R-CNN use.

Chapter 01's crop classifier, chapter 03's Fast R-CNN and chapter 08's Mask R-CNN all
train through :func:`train`; what differs is the model, the data and, for a classifier,
the ``loss_fn``. The loop is read top to bottom in one sitting (as nanoGPT's
``train.py``) and follows the recipe of the papers' reference implementation, Detectron
(Mask R-CNN, He et al. 2017, section 3.1 "Training"):

- SGD with momentum 0.9 and weight decay 1e-4; here no weight decay on biases and
  normalisation layers (Detectron2's ``WEIGHT_DECAY_NORM = 0``, nanoGPT's rule "only
  tensors of 2 or more dimensions decay"), see :func:`build_optimizer`;
- a linear warm-up from ``warmup_factor * lr`` to ``lr`` over ``warmup_steps`` iterations
  (Goyal et al. 2017, "Accurate, large minibatch SGD"), then the learning rate multiplied
  by ``gamma = 0.1`` at each milestone in ``lr_steps`` (Mask R-CNN: lr 0.02, batch 16,
  160k iterations, divided by 10 at 120k) or a cosine decay, see :func:`lr_factor`;
- optional gradient clipping and, on CUDA, mixed precision (autocast + GradScaler).

Models follow torchvision's detection convention: in train mode ``model(images, targets)``
returns a dict of named scalar losses, and the loss that is minimised is their sum
(weighted by ``config.loss_weights``). Anything else trains through a ``loss_fn(model,
batch) -> dict`` hook, e.g. :func:`classification_loss` for ``(images, labels)`` batches.

Exact resume
------------
"Train N steps straight" and "train N/2, stop (or crash), resume, train the rest" give
bitwise-equal weights on CPU (``tests/test_engine.py`` checks it). Four things make it so:

1. The data order is a function of ``(config.seed, epoch)`` only. Before each epoch,
   :func:`epoch_iterator` hands the loader's sampler a fresh ``torch.Generator`` seeded from
   ``(seed, epoch)`` (``RandomSampler`` -- that is ``shuffle=True`` --,
   ``SubsetRandomSampler``, ``WeightedRandomSampler``), calls ``set_epoch(epoch)`` on
   samplers that have one (``DistributedSampler``) and gives the ``DataLoader`` its own
   seeded generator too (it draws the workers' base seed from it, which would otherwise
   take a number from the global torch RNG). The engine therefore owns the loader's
   shuffling: a generator passed to the loader is replaced.
2. The loader is cycled for ``max_iter`` steps; the checkpoint stores the epoch and the
   number of batches already taken from it. On resume the engine rebuilds that epoch's
   iterator and skips those batches (they are loaded and dropped: at most one epoch of
   data loading, no model compute).
3. The random states of Python, NumPy, torch (CPU) and torch (CUDA, when present) are saved
   in the checkpoint and restored *after* the skip (loading the skipped batches may draw
   random numbers in an augmentation), so dropout and augmentation see the same numbers.
   Evaluation runs between a save and a restore of these states, so adding an
   ``evaluate_fn`` never changes the training trajectory.
4. Everything else with state is in the checkpoint: model, optimizer (momentum buffers),
   the ``LambdaLR`` scheduler, the ``GradScaler``, the step, the half-filled logging window
   and the evaluation history.

Nothing lost, nothing mixed up
------------------------------
Checkpoints are written atomically (a temporary file, then a rename; temporary files left
by a killed write are removed when the next run starts) and carry a checksum of their
contents and a description of the model (class and ``model.config.to_dict()``, see
:func:`model_description`). :func:`load_checkpoint` verifies the checksum, and a resume
refuses a checkpoint of another model class, config or weight shapes, with a
:class:`CheckpointError` that names the file. A fresh run refuses an ``out_dir`` that
already holds a run unless ``TrainConfig(overwrite=True)`` says to replace it, and one
process at a time trains into a folder (a lock; :class:`RunFolder` keeps the folder's
rules). Ctrl-C lets the step under way end, saves its checkpoint and stops
(:class:`TrainingInterrupted`): a resumption continues exactly, as after a kill.

Several processes (torchrun / DDP)
----------------------------------
Under ``torchrun --nproc_per_node N`` (or any launcher that sets up ``torch.distributed``
before :func:`train`; :func:`init_distributed` does it from torchrun's environment),
each process trains on its own shard of every batch (give the loader a
``DistributedSampler``: :func:`distributed_sampler`, whose order is a function of
``(seed, epoch)`` as above) and the model is wrapped in ``DistributedDataParallel``,
which averages the gradients over the processes after each backward pass. Each process
seeds its generators with ``config.seed + rank``, so their augmentations and RoI samples
differ, as their data does. The logged losses are the mean over the processes; only rank
0 writes ``metrics.jsonl`` and checkpoints; a checkpoint holds every rank's random state,
so a run resumes exactly with the same number of processes. A detector's losses are
means over each process's own RoIs and anchors, so N processes of B images are not
bit-for-bit one process of N B images (as in torchvision's and Detectron2's DDP
training); for a loss that is a mean over equal shards (a classifier's) they are, to
float rounding (tests/test_distributed.py).

On CUDA the resumed run matches up to the non-determinism of some CUDA kernels (use
``torch.use_deterministic_algorithms(True)`` for bitwise equality). With ``num_workers >
0``, keep ``persistent_workers=False``: workers are re-seeded from the loader's generator
at each epoch, which is what makes their augmentations repeat.

The package's modules, one idea each, in the order the loop uses them
----------------------------------------------------------------------
- :mod:`~rcnn_steps.engine.config`: :class:`TrainConfig` and :func:`resolve_device`;
- :mod:`~rcnn_steps.engine.optim`: :func:`build_optimizer`, :func:`lr_factor`,
  :func:`build_scheduler` (SGD, warm-up, step or cosine decay);
- :mod:`~rcnn_steps.engine.losses`: :func:`detection_loss`, :func:`classification_loss`,
  the weighted sum that is minimised and :func:`branch_gradient_norms` (each term's
  share of its gradient);
- :mod:`~rcnn_steps.engine.batches`: :func:`to_device` and :func:`epoch_iterator` (the
  data order, a function of ``(seed, epoch)``);
- :mod:`~rcnn_steps.engine.rng`: :func:`get_rng_state` and :func:`set_rng_state`;
- :mod:`~rcnn_steps.engine.distributed`: :func:`process_rank`, :func:`init_distributed`,
  :func:`distributed_sampler`, :func:`all_gather_objects`, :func:`naming_silent_ranks`;
- :mod:`~rcnn_steps.engine.checkpoint`: :func:`save_checkpoint`, :func:`load_checkpoint`,
  :func:`checkpoint_checksum`, :func:`export_weights`, :func:`model_description` and the
  checks a resumption passes;
- :mod:`~rcnn_steps.engine.metrics`: ``metrics.jsonl`` and :func:`read_metrics`;
- :mod:`~rcnn_steps.engine.run_folder`: :class:`RunFolder`, the folder's rules;
- :mod:`~rcnn_steps.engine.stopping`: :class:`NonFiniteLossError`,
  :class:`TrainingInterrupted` and the Ctrl-C handler;
- :mod:`~rcnn_steps.engine.loop`: :func:`train` and :class:`TrainResult`.

The engine imports nothing of the library but :mod:`rcnn_steps.utils`
(``tests/test_layout.py``). Every public name is re-exported here, so
``from rcnn_steps.engine import train`` reads as before the package was split.
"""

from rcnn_steps.engine.batches import epoch_iterator, to_device
from rcnn_steps.engine.checkpoint import (
    EXPORTED_KEYS,
    CheckpointError,
    checkpoint_checksum,
    export_weights,
    load_checkpoint,
    model_description,
    save_checkpoint,
)
from rcnn_steps.engine.config import MEMORY_FORMATS, TrainConfig, resolve_device
from rcnn_steps.engine.distributed import (
    SilentRanksError,
    all_gather_objects,
    distributed_sampler,
    init_distributed,
    naming_silent_ranks,
    process_rank,
)
from rcnn_steps.engine.loop import TrainResult, train
from rcnn_steps.engine.losses import (
    LossDict,
    branch_gradient_norms,
    classification_loss,
    detection_loss,
)
from rcnn_steps.engine.metrics import read_metrics
from rcnn_steps.engine.optim import build_optimizer, build_scheduler, lr_factor
from rcnn_steps.engine.rng import get_rng_state, set_rng_state
from rcnn_steps.engine.run_folder import RunFolder, RunFolderError
from rcnn_steps.engine.stopping import NonFiniteLossError, TrainingInterrupted

__all__ = [
    "CheckpointError",
    "EXPORTED_KEYS",
    "LossDict",
    "MEMORY_FORMATS",
    "NonFiniteLossError",
    "RunFolder",
    "RunFolderError",
    "SilentRanksError",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "all_gather_objects",
    "branch_gradient_norms",
    "build_optimizer",
    "build_scheduler",
    "checkpoint_checksum",
    "classification_loss",
    "detection_loss",
    "distributed_sampler",
    "epoch_iterator",
    "export_weights",
    "get_rng_state",
    "init_distributed",
    "load_checkpoint",
    "lr_factor",
    "model_description",
    "naming_silent_ranks",
    "process_rank",
    "read_metrics",
    "resolve_device",
    "save_checkpoint",
    "set_rng_state",
    "to_device",
    "train",
]
