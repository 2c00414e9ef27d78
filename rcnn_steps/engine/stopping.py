"""How a training run stops early: a non-finite loss (:class:`NonFiniteLossError`) or
Ctrl-C (:class:`TrainingInterrupted`; the first Ctrl-C lets the step under way end)."""

from __future__ import annotations

import math
import signal
import sys
import threading
from typing import Any


class NonFiniteLossError(FloatingPointError):
    """Training met a NaN or infinite loss (or, checked before each checkpoint, parameter).

    ``step`` is the 1-based number of the update whose loss was non-finite, ``losses`` the
    loss terms and ``total_loss`` as floats, ``nonfinite`` the names of the bad values. The
    last good checkpoint is left as it was.
    """

    def __init__(
        self,
        step: int,
        losses: dict[str, float],
        checkpoint: str | None = None,
        parameters: list[str] | None = None,
    ) -> None:
        self.step = step
        self.losses = dict(losses)
        if parameters:
            self.nonfinite = list(parameters)
            what = f"parameters became non-finite after step {step}: {', '.join(parameters)}"
        else:
            self.nonfinite = [k for k, v in losses.items() if not math.isfinite(v)]
            what = f"non-finite loss at step {step}: {', '.join(self.nonfinite)}"
        terms = ", ".join(
            f"{k}={v:.6g}" + ("" if math.isfinite(v) else " (non-finite)")
            for k, v in losses.items()
        )
        where = (
            f"the last good checkpoint is {checkpoint}"
            if checkpoint
            else "no checkpoint was written (set config.out_dir and config.checkpoint_every)"
        )
        super().__init__(
            f"{what}. Loss terms: {terms}. Training stopped; {where}. Things to try: a lower "
            "learning rate (config.lr) or a longer warm-up (config.warmup_steps); gradient "
            "clipping (config.grad_clip_norm, e.g. 10.0); and check the data (boxes of zero "
            "width or height or outside the image, NaN or infinite pixels, labels out of "
            "range)."
        )


class TrainingInterrupted(KeyboardInterrupt):
    """Training was stopped by Ctrl-C (or another ``KeyboardInterrupt``) after ``step``
    steps. ``checkpoint`` is the last checkpoint written (None when there is none) and
    ``checkpoint_step`` the step it holds: ``step`` when the interruption came between
    two steps (the first Ctrl-C waits for the step under way to end, and the checkpoint
    is saved on the way out), earlier when it came in the middle of one (a second
    Ctrl-C). ``train(..., resume=True)`` continues from it exactly."""

    def __init__(self, step: int, checkpoint: str | None, checkpoint_step: int | None) -> None:
        self.step, self.checkpoint, self.checkpoint_step = step, checkpoint, checkpoint_step
        where = f"{checkpoint} holds step {checkpoint_step}" if checkpoint else "no checkpoint"
        super().__init__(f"training interrupted after step {step}; {where}")


class _CtrlC:
    """Ctrl-C (SIGINT) while :func:`train` runs: the first one asks the loop to stop at
    the end of the step under way (``pressed``), so that the checkpoint it saves holds a
    whole step and resumes exactly; a second one stops at once (``KeyboardInterrupt``, as
    without this handler)."""

    def __init__(self, announce: bool) -> None:
        self.pressed = False
        self.previous: Any = None  # the SIGINT handler to restore
        self.announce = announce  # say that the first Ctrl-C was heard (a step can be long)

    def __call__(self, signum: int, frame: Any) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True
        if self.announce:
            print("\nCtrl-C: stopping at the end of this step, with a checkpoint (Ctrl-C "
                  "again stops at once)", file=sys.stderr)  # fmt: skip

    def install(self, wanted: bool) -> None:
        """Handle SIGINT from now on (until :meth:`uninstall`) when ``wanted``, in the main
        thread, and when SIGINT has Python's default handler (not ignored, not someone
        else's)."""
        self.previous = None
        if (
            wanted
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self.previous = signal.signal(signal.SIGINT, self)

    def uninstall(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None
