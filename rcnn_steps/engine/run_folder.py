"""The run folder (``TrainConfig.out_dir``, ``train --out``) and the rules of its life:
a folder, one process at a time, never replaced unless told, and what it says about
itself (``run.json``)."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from rcnn_steps.utils import atomic_write_bytes

try:
    import fcntl  # the run folder's lock (POSIX)
except ImportError:  # Windows: no lock
    fcntl = None


class RunFolderError(ValueError):
    """A run folder cannot be used as asked: it is a file, another process is training
    into it, or it holds a run of other data than a resumption is given. The message
    names the folder and says what to do."""


_CHECKPOINT_NAME = re.compile(r"model_\d{7}\.pt")

#: The run folders this process holds locked: (pid, resolved path) -> [file descriptor,
#: depth]. The command line locks its folder before it writes ``run.json`` and then calls
#: :func:`train`, which locks it again: one process, one lock (the pid: a forked child
#: inherits this dict, not the right to write).
_HELD_LOCKS: dict[tuple[int, Path], list[int]] = {}


class RunFolder:
    """A training run's folder (``TrainConfig.out_dir``, ``train --out``) and the rules
    of its life, shared by :func:`train` and ``python -m rcnn_steps train``:

    - :meth:`check`: it is a folder, or can become one (no file on its path);
    - :meth:`lock`: one process at a time writes into it. A second one (another
      ``train``, an ``--overwrite``) is refused with the holder's pid instead of
      deleting the first one's files and interleaving two runs' records. The lock is an
      exclusive ``fcntl.flock`` on the folder's ``.lock`` file, which the system
      releases when its process ends, killed or crashed included, so a stale lock never
      blocks a retry (on systems without ``fcntl``, Windows, there is no lock);
    - :meth:`claim`: a fresh start never replaces a run unless told to (``overwrite``
      deletes the run's own files, and no others);
    - :meth:`describe`, :meth:`description` and :meth:`differences`: ``run.json``, what
      the run says about itself (written by the command line once the run is
      validated), and what a resumption must agree with.
    """

    DESCRIPTION = "run.json"  #: what the run says about itself (the command line writes it)
    LOCK = ".lock"  #: the file whose flock says a process is writing into the folder

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def check(self) -> None:
        """Refuse a path that is a file, or lies under one (it could never be a folder)."""
        for where in (self.path, *self.path.parents):
            if where.exists():
                if where.is_dir():
                    return
                what = "is" if where == self.path else f"lies under {where}, which is"
                raise RunFolderError(
                    f"run folder {self.path} {what} a file, not a folder: pass a folder to "
                    "keep the run in (a new one, or a run's)"
                )

    def run_files(self) -> list[Path]:
        """The files :func:`train` writes here (metrics, checkpoints) that exist."""
        files = [self.path / "metrics.jsonl", self.path / "last.pt"]
        kept = (p for p in self.path.glob("model_*.pt") if _CHECKPOINT_NAME.fullmatch(p.name))
        return [p for p in [*files, *sorted(kept)] if p.exists()]

    def holds_run(self) -> bool:
        """Whether a run lives here: its description or any of its training files."""
        return (self.path / self.DESCRIPTION).exists() or bool(self.run_files())

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder (created if missing) for this process while the block runs;
        :class:`RunFolderError`, naming the holder's pid, when another process holds it.
        Re-entrant within a process. The lock file is removed on release (a crash leaves
        it, unlocked: harmless)."""
        self.check()
        self.path.mkdir(parents=True, exist_ok=True)
        key = (os.getpid(), self.path.resolve())
        if fcntl is None or key in _HELD_LOCKS:
            _HELD_LOCKS.setdefault(key, [-1, 0])[1] += 1
        else:
            _HELD_LOCKS[key] = [self._acquire(), 1]
        try:
            yield
        finally:
            held = _HELD_LOCKS[key]
            held[1] -= 1
            if held[1] == 0:
                del _HELD_LOCKS[key]
                if held[0] >= 0:
                    # remove the file while holding it (see _acquire), and unlock before
                    # closing: forked DataLoader workers share the open file
                    (self.path / self.LOCK).unlink(missing_ok=True)
                    fcntl.flock(held[0], fcntl.LOCK_UN)
                    os.close(held[0])

    def _acquire(self) -> int:
        """Lock the folder's lock file; its file descriptor. A holder removes the file as
        it releases it, so a lock taken on a file that is no longer the one at the path
        is worth nothing: then take the new one."""
        path = self.path / self.LOCK
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                os.close(fd)
                raise RunFolderError(
                    f"run folder {self.path} is in use: process {holder} is training into it "
                    f"(it holds {path}); wait for it to end or stop it, or pick another folder"
                ) from None
            try:
                still_there = os.path.samestat(os.stat(path), os.fstat(fd))
            except FileNotFoundError:
                still_there = False
            if still_there:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())  # for a refusal's message
                return fd
            os.close(fd)

    def claim(self, resume: bool, overwrite: bool) -> None:
        """Before a fresh start: refuse a folder that holds a run's training files,
        unless ``overwrite`` (delete them) or ``resume`` (the run never reached a
        checkpoint, so its records are replaced). Also removes the temporary files of
        writes that were killed before their rename (safe: the folder is locked)."""
        temporaries = (
            ".last.pt.*.tmp",
            ".metrics.jsonl.*.tmp",
            ".model_*.pt.*.tmp",
            ".run.json.*.tmp",
        )
        for pattern in temporaries:
            for path in self.path.glob(pattern):
                path.unlink(missing_ok=True)
        if resume and (self.path / "last.pt").exists():
            return
        existing = self.run_files()
        if not existing or resume:
            return
        if not overwrite:
            names = ", ".join(p.name for p in existing[:4]) + (", ..." if len(existing) > 4 else "")
            raise FileExistsError(
                f"{self.path} already holds a training run ({names}); starting afresh would "
                "overwrite it. Pass resume=True to continue it, set TrainConfig(overwrite="
                "True) to replace it, or choose another out_dir."
            )
        for path in existing:
            path.unlink()

    def description(self) -> dict[str, Any] | None:
        """The run's ``run.json``, or None when there is none; a :class:`RunFolderError`
        naming the file when it is not a JSON object (damaged, or another file)."""
        path = self.path / self.DESCRIPTION
        if not path.exists():
            return None
        try:
            description = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            reason = f"not valid JSON ({e})"
        else:
            if isinstance(description, dict):
                return description
            reason = f"a JSON {type(description).__name__}, not the object a run writes"
        raise RunFolderError(
            f"{path}, the run's description, is {reason}: restore it (or, to train, start a "
            "new run: another --out, or --overwrite)"
        )

    def describe(self, description: Mapping[str, Any]) -> None:
        """Write ``run.json`` (atomically): call it once the run is validated, so that a
        start that fails leaves no description of a run that never was."""
        text = json.dumps(description, indent=2, default=list) + "\n"
        atomic_write_bytes(self.path / self.DESCRIPTION, text.encode())

    def differences(self, description: Mapping[str, Any], fields: Iterable[str]) -> list[str]:
        """``"field: stored -> given"`` for each dotted field (``"data.class_names"``) on
        which ``description`` differs from the stored ``run.json``, down to the keys of a
        field that is a dict (``"config.num_classes"``); compared as JSON, so a tuple
        equals its list. Empty when they agree or there is no ``run.json``."""
        stored = self.description()
        if stored is None:
            return []
        given = json.loads(json.dumps(description, default=list))
        found: list[str] = []

        def compare(field: str, old: Any, new: Any) -> None:
            if isinstance(old, Mapping) and isinstance(new, Mapping):
                for key in sorted({*old, *new}):
                    compare(f"{field}.{key}", old.get(key, "<absent>"), new.get(key, "<absent>"))
            elif old != new:
                found.append(f"{field}: {_short(old)} -> {_short(new)}")

        for field in fields:
            compare(field, _dotted(stored, field), _dotted(given, field))
        return found


def _lock_holder(fd: int) -> str:
    """The pid of the process that holds the lock on ``fd``'s file: the one it wrote
    there, else (a lock taken by other code) Linux's ``/proc/locks``, else "unknown"."""
    written = os.pread(fd, 32, 0).decode(errors="replace").strip()
    if written:
        return written
    inode = os.fstat(fd).st_ino
    try:
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()  # 1: FLOCK ADVISORY WRITE <pid> <major>:<minor>:<inode> ...
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].endswith(f":{inode}"):
                return fields[4]
    except OSError:
        pass
    return "unknown"


def _dotted(tree: Mapping[str, Any], field: str) -> Any:
    """``tree["data"]["root"]`` for ``"data.root"``; ``"<absent>"`` for a missing key."""
    value: Any = tree
    for key in field.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return "<absent>"
        value = value[key]
    return value


def _short(value: Any, width: int = 60) -> str:
    """``repr(value)``, cut to ``width`` characters: one line stays readable."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
