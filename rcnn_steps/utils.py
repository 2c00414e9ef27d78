"""Small shared helpers: seeds and threads, devices, paths, results files, and tables as
text (:func:`format_table`).

Every chapter starts with :func:`seed_everything` and :func:`set_threads` so that its
outputs are the same on every run on one machine (another CPU's kernels move the last
digits of what it trains: nbval compares only what does not move), and every library command that
produces numbers for the book writes them with :func:`write_results`, which records how
they were made (GUIDE section 7).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: The repository root when the package runs from a checkout (editable install).
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - user code may still call the legacy global API
    torch.manual_seed(seed)


def set_threads(n: int = 2) -> None:
    """Fix torch's intra-op thread count, so timings and float sums repeat run to run.

    ``RCNN_STEPS_THREADS`` in the environment, when set, replaces ``n``: one thread lets a
    chapter run beside another job without the two fighting over the cores (two torch
    threads sharing one busy core run many times slower, not twice)."""
    override = os.environ.get("RCNN_STEPS_THREADS")
    if override is not None:
        if not override.isdigit() or int(override) < 1:
            raise ValueError(f"RCNN_STEPS_THREADS must be a whole number >= 1, got {override!r}")
        n = int(override)
    torch.set_num_threads(n)


def default_device() -> torch.device:
    """CUDA when one is present, else CPU. Library code takes a device argument rather
    than moving tensors to a fixed GPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def benchmark_devices(choice: str = "all") -> list[torch.device]:
    """The devices a benchmark runs on: ``"cpu"``, ``"cuda"`` or ``"all"`` (CPU, plus CUDA
    when one is present, saying so when it is not). ``"cuda"`` without one is an error."""
    if choice not in ("cpu", "cuda", "all"):
        raise ValueError(f"--device must be cpu, cuda or all, got {choice!r}")
    devices = [torch.device("cpu")] if choice in ("cpu", "all") else []
    if choice in ("cuda", "all"):
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
        elif choice == "cuda":
            raise ValueError("--device cuda: no CUDA device is available")
        else:
            print("(no CUDA device: GPU section skipped)")
    return devices


def load_average() -> str:
    """The 1/5/15-minute load averages, printed by the benchmarks: a busy machine slows
    ours and the reference, not always equally, so each table says how busy it was."""
    if not hasattr(os, "getloadavg"):
        return "n/a"
    return " ".join(f"{load:.2f}" for load in os.getloadavg()) + f" on {os.cpu_count()} cores"


def data_dir() -> Path:
    """Where the book's data lives: ``$RCNN_STEPS_DATA`` if set, else ``<repo>/data``
    in a checkout, else ``./data``."""
    env = os.environ.get("RCNN_STEPS_DATA")
    if env:
        return Path(env)
    if (REPO_ROOT / "pyproject.toml").exists():
        return REPO_ROOT / "data"
    return Path.cwd() / "data"


def results_dir() -> Path:
    """Where library commands write the results files the chapters read."""
    if (REPO_ROOT / "pyproject.toml").exists():
        return REPO_ROOT / "results"
    return Path.cwd() / "results"


#: What a result depends on: the library, the benchmarks and scripts, and the pins.
#: Results files and notebooks are outputs, not inputs: a change to them does not make
#: the tree "dirty" for provenance (otherwise every run after the first would be).
CODE_PATHS = (
    "rcnn_steps",
    "benchmarks",
    "scripts",
    "requirements.txt",
    "pyproject.toml",
    "environment.yml",
    "Makefile",
)


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def code_diff_hash(cwd: Path | None = None) -> str | None:
    """A short SHA-256 of the uncommitted changes to :data:`CODE_PATHS` (the diff
    against HEAD plus the untracked files there), or None when the code is committed
    (or this is not a git checkout)."""
    import hashlib

    cwd = cwd or REPO_ROOT
    status = _git(["status", "--porcelain", "--untracked-files=all", "--", *CODE_PATHS], cwd)
    if not status or not status.strip():
        return None
    digest = hashlib.sha256((_git(["diff", "HEAD", "--", *CODE_PATHS], cwd) or "").encode())
    for line in sorted(status.splitlines()):
        if line.startswith("??"):
            path = cwd / line[3:].strip()
            digest.update(line.encode())
            if path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def git_commit(cwd: Path | None = None) -> str:
    """The checkout's commit, with ``-dirty`` when the code (:data:`CODE_PATHS`) has
    uncommitted changes; results files and notebooks do not count."""
    cwd = cwd or REPO_ROOT
    head = _git(["rev-parse", "--short=12", "HEAD"], cwd)
    if not head:
        return "unknown"
    return head.strip() + ("-dirty" if code_diff_hash(cwd) else "")


def machine_info() -> dict[str, Any]:
    """What ran a measurement: CPU model, thread count, GPU (if any), library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename,
    so a crash never leaves a half-written file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_results(
    path: str | os.PathLike,
    results: dict[str, Any],
    *,
    preset: str | None = None,
    seeds: list[int] | None = None,
    started: float | None = None,
) -> dict[str, Any]:
    """Write a results file (JSON) holding ``results`` and how they were made: the command
    line, the commit, the preset, the seeds, the machine and the wall time.

    ``started`` is a ``time.time()`` taken when the work began. Returns the full payload.
    """
    payload = {
        "results": results,
        "provenance": {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "commit": git_commit(),
            "code_diff_sha256": code_diff_hash(),
            "preset": preset,
            "seeds": seeds,
            "machine": machine_info(),
            "wall_time_s": None if started is None else round(time.time() - started, 2),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        },
    }
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())
    return payload


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read a results file written by :func:`write_results`, with a clear error if absent."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"results file {path} does not exist; run the library command that writes it "
            "(the chapter names it) and try again"
        )
    return json.loads(path.read_text())


class StageClock:
    """Seconds per stage of a model's forward pass, written into
    ``intermediates["stage_seconds"][name]`` by ``start()`` / ``lap(name)`` pairs, and
    only when ``intermediates`` is a dict (a model's inspect path; otherwise it does
    nothing). On CUDA it waits for the device at each reading, because its work runs
    asynchronously."""

    def __init__(self, intermediates: dict | None, device: torch.device | None) -> None:
        self.out = None if intermediates is None else intermediates.setdefault("stage_seconds", {})
        self.cuda = device is not None and device.type == "cuda"
        self.t0 = 0.0

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def start(self) -> None:
        if self.out is not None:
            self.t0 = self._now()

    def lap(self, name: str) -> None:
        if self.out is not None:
            self.out[name] = self._now() - self.t0


# ----------------------------------------------------------------------------------------
# Command lines: one line for a user's mistake, a traceback for ours


class CommandError(ValueError):
    """A command's input cannot be used; the message says what is wrong and what to do."""


#: The errors a user causes with bad input (a missing file, a bad value, a damaged
#: checkpoint or data set: :class:`~rcnn_steps.data.DatasetError` and
#: :class:`~rcnn_steps.engine.CheckpointError` are ValueErrors): reported in one line.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


def add_debug_argument(*parsers: Any) -> None:
    """Give each argparse parser a ``--debug`` flag (full tracebacks); the first parser's
    default is False, the others' leave it as the first set it, so the flag works before
    or after a subcommand."""
    for i, parser in enumerate(parsers):
        parser.add_argument(
            "--debug",
            action="store_true",
            default=False if i == 0 else argparse.SUPPRESS,
            help="show the full traceback of an error instead of one line",
        )


def run_command(command: Any, args: Any, interrupted: Any = None) -> int:
    """``command(args)``'s exit status, with a user's error (:data:`USER_ERRORS`) printed
    as one line on stderr (``error: ...``, status 2) and Ctrl-C as one line (status 130:
    ``interrupted``, or what ``interrupted()`` says), unless ``args.debug``; any other
    exception (a bug) keeps its traceback."""
    try:
        return command(args)
    except USER_ERRORS as e:
        if getattr(args, "debug", False):
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        print(interrupted() if interrupted else "interrupted", file=sys.stderr)
        return 130


def shape_text(tensor: Any) -> str:
    """``(3, 128, 128)``: a tensor's shape as a detector's diagram prints it."""
    return "(" + ", ".join(str(n) for n in tensor.shape) + ")"


def diagram_stage(key: str, title: str, detail: str, branch: bool = False) -> dict[str, Any]:
    """One box of a detector's diagram (``stages()`` of each detector, drawn by
    :func:`rcnn_steps.viz.draw_stages`): ``key`` the stage's job, ``title`` how this
    detector does it, ``detail`` the real shapes; ``branch`` for a head beside the box
    branch."""
    return {"key": key, "title": title, "detail": detail, "branch": branch}


def stage_changes(
    stages: Sequence[dict[str, Any]], previous: Sequence[dict[str, Any]]
) -> tuple[list[str], list[str]]:
    """What a detector changed against the one before it, from their diagrams' stages:
    ``(keys of the stages that are new or done another way, titles of the previous
    detector's stages it no longer has)``."""
    old = {(s["key"], s["title"]) for s in previous}
    keys = {s["key"] for s in stages}
    changed = [s["key"] for s in stages if (s["key"], s["title"]) not in old]
    return changed, [s["title"] for s in previous if s["key"] not in keys]


# ----------------------------------------------------------------------------------------
# Tables as text (chapters 04-08 print their measurements; so do the library commands)


@dataclass(frozen=True)
class Column:
    """One column of :func:`format_table`: its ``header``; where a row's cell comes from
    (``value``: a key of the row dict, default the header, or a function of the row);
    ``fmt``, the format spec of a number (``".3f"``, ``"+.1f"``, ``".0%"``), after
    multiplying by ``scale`` (100: fractions as percentage points); ``align``, ``"<"`` or
    ``">"`` (default: right for numbers, left for text); ``missing``, what an absent or
    None cell shows."""

    header: str
    value: str | Callable[[Any], Any] | None = None
    fmt: str = ""
    scale: float = 1.0
    align: str = ""
    missing: str = "-"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


def _is_spread(value: Any) -> bool:
    """A setting's statistics over seeds (:func:`rcnn_steps.grid.summarise`)."""
    return isinstance(value, Mapping) and {"mean", "min", "max"} <= set(value)


def _number(value: Any, column: Column) -> str:
    # an int stays an int unless scaled (3, not 3.0)
    return format(value * column.scale if column.scale != 1 else value, column.fmt)


def _cell(column: Column, row: Any) -> tuple[str, bool]:
    """A row's cell as text, and whether it is a number (a spread counts as one)."""
    getter = column.value if column.value is not None else column.header
    if callable(getter):
        value = getter(row)
    else:
        value = row.get(getter) if isinstance(row, Mapping) else None
    if value is None:
        return column.missing, False
    if _is_spread(value):  # mean [worst, best seed]
        mean, lo, hi = (_number(value[k], column) for k in ("mean", "min", "max"))
        return f"{mean} [{lo}, {hi}]", True
    if _is_number(value):
        return _number(value, column), True
    return str(value), False


def format_table(
    rows: Sequence[Any],
    columns: Sequence[Column | str],
    *,
    indent: int = 0,
    gap: int = 2,
    rule: str = "-",
) -> str:
    """``rows`` (dicts, or anything the columns' functions read) as an aligned text table:
    a header line, a rule of ``rule`` under it (``""`` for none), then one line per row;
    each line indented by ``indent`` spaces, columns ``gap`` spaces apart. A column is a
    :class:`Column`, or a string for ``Column(that string)`` (the header is the key).

    A cell holding a seed spread (``{"mean", "min", "max"}``, as in a results file's
    ``summary``) prints as ``mean [min, max]``, each number in the column's format: the
    book's usual "mean [worst, best seed]". A column is right-aligned when any of its
    cells is a number, unless its ``align`` says otherwise. Returns the table (no
    trailing newline), to ``print``."""
    columns = [Column(c) if isinstance(c, str) else c for c in columns]
    for column in columns:
        if column.align not in ("", "<", ">"):
            raise ValueError(
                f"format_table: column {column.header!r} has align={column.align!r}; "
                "use '<' (left), '>' (right) or '' (numbers right, text left)"
            )
    cells = [[_cell(column, row) for column in columns] for row in rows]
    lines = [[column.header for column in columns]] + [[text for text, _ in r] for r in cells]
    widths = [max(len(line[j]) for line in lines) for j in range(len(columns))]
    aligns = [
        column.align or (">" if any(r[j][1] for r in cells) else "<")
        for j, column in enumerate(columns)
    ]
    out = [
        " " * indent
        + (" " * gap)
        .join(
            f"{text:{align}{width}}"
            for text, align, width in zip(line, aligns, widths, strict=True)
        )
        .rstrip()
        for line in lines
    ]
    if rule:
        out.insert(1, " " * indent + rule * (sum(widths) + gap * (len(columns) - 1)))
    return "\n".join(out)


# ----------------------------------------------------------------------------------------
# Where a chapter's numbers come from


def _provenance_entry(label: str, provenance: Mapping[str, Any]) -> list[str]:
    """Two lines for one results file (or one row of a table file): what, when, where;
    then the command that wrote it."""
    machine = provenance.get("machine") or {}
    threads = machine.get("torch_threads")
    where = ", ".join(
        part
        for part in (
            machine.get("cpu"),
            f"{machine['cpu_count']} cores" if machine.get("cpu_count") else None,
            f"{threads} thread{'s' if threads != 1 else ''}" if threads else None,
        )
        if part
    )
    seeds = provenance.get("seeds")
    seconds = provenance.get("wall_time_s")
    facts = [
        f"commit {provenance.get('commit', '?')}",
        str(provenance.get("date", "?"))[:16],
        f"seeds {' '.join(map(str, seeds))}" if seeds else None,
        where or None,
        f"{seconds / 60:.0f} min" if seconds and seconds >= 60 else None,
    ]
    command = _module_command(str(provenance.get("command", "?")))
    return [f"{label}: " + " | ".join(f for f in facts if f), f"    {command}"]


def _module_command(command: str) -> str:
    """A recorded command (``sys.argv`` with the script's file name, ``rcnn.py evaluate ...``)
    as a reader types it: ``python -m rcnn_steps.rcnn evaluate ...``."""
    script, _, rest = command.partition(" ")
    if not script.endswith(".py"):
        return command
    module = "rcnn_steps" if script == "__main__.py" else f"rcnn_steps.{script[:-3]}"
    return f"python -m {module} {rest}".rstrip()


def provenance_lines(names: Sequence[str], folder: str | os.PathLike | None = None) -> str:
    """The provenance of the results files ``names`` (in ``folder``, default
    :func:`results_dir`), as text to print in a chapter's appendix: per file the commit,
    date, seeds, machine and wall time, and under it the command that wrote it. A table
    file whose rows carry their own provenance (``evolution.json``) gets a line per row."""
    folder = Path(folder) if folder is not None else results_dir()
    lines = []
    for name in names:
        payload = read_results(folder / name)
        if "provenance" in payload:
            lines += _provenance_entry(name, payload["provenance"])
        else:
            for key, row in payload.get("rows", {}).items():
                lines += _provenance_entry(f"{name} [{key}]", row.get("provenance", {}))
    return "\n".join(lines)
