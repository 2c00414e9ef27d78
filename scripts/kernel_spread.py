"""Run the book under several CPU kernel sets and show which printed numbers move.

A chapter is deterministic on one machine, but another CPU picks other kernels (ATen's
AVX-512, AVX2 or portable code; oneDNN's ISA), and results of training, float reductions
and timing move. This script measures how far, so that nbval compares only what every
machine prints alike and each assert's margin covers the measured spread.

python scripts/kernel_spread.py run native aten-default-1t 01 02   # execute chapters 01, 02
python scripts/kernel_spread.py compare                            # every set, every chapter
python scripts/kernel_spread.py compare --committed 04             # and book/'s own outputs

``run`` writes ``build/kernels/<set>/<chapter>.ipynb`` (one set after the other: two torch
jobs at once on two cores slow each other far more than twice). ``compare`` lists, for
each code cell whose text output differs between the executed sets (and book/'s committed
outputs with ``--committed``), each line that differs and, for the numbers in it, the
lowest and highest value seen. Cells marked ``# NBVAL_IGNORE_OUTPUT`` are listed apart:
nbval does not compare them, their asserts must hold instead.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
OUT = ROOT / "build" / "kernels"

#: The kernel sets: environment variables that make this CPU pick other kernels.
#: ``ATEN_CPU_CAPABILITY`` chooses ATen's vectorised code (default = portable C++),
#: ``ONEDNN_MAX_CPU_ISA`` caps oneDNN's (convolutions, matmuls), thread counts change how
#: reductions are split.
KERNEL_SETS: dict[str, dict[str, str]] = {
    "native": {},
    "aten-default-1t": {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"},
    "sse41": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "native-1t": {"OMP_NUM_THREADS": "1"},
}

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            parts.append("".join(out["text"]))
        elif out["output_type"] in ("execute_result", "display_data"):
            data = out["data"]
            if "text/plain" in data and "image/png" not in data:
                parts.append("".join(data["text/plain"]))
        elif out["output_type"] == "error":
            parts.append(f"ERROR {out.get('ename')}: {out.get('evalue')}")
    return "".join(parts)


def _sanitizers() -> list[tuple[re.Pattern, str]]:
    """nbval's sanitizers (tests/nbval_sanitize.cfg), applied before comparing, as nbval does."""
    lines = (ROOT / "tests" / "nbval_sanitize.cfg").read_text().splitlines()
    found, pattern = [], None
    for line in lines:
        if line.startswith("regex:"):
            pattern = re.compile(line.split(":", 1)[1].strip())
        elif line.startswith("replace:") and pattern is not None:
            found.append((pattern, line.split(":", 1)[1].strip()))
            pattern = None
    return found


def _sanitized(text: str) -> str:
    for pattern, replacement in _sanitizers():
        text = pattern.sub(replacement, text)
    return text


def _code_cells(path: Path) -> dict[int, tuple[str, str]]:
    nb = json.loads(path.read_text())
    return {
        i: ("".join(c["source"]), _sanitized(_text(c)))
        for i, c in enumerate(nb["cells"])
        if c["cell_type"] == "code"
    }


def run(sets: list[str], chapters: list[str]) -> int:
    status = 0
    for name in sets:
        env = {**os.environ, **KERNEL_SETS[name]}
        print(f"== {name}: {KERNEL_SETS[name] or 'this CPU, default threads'}", flush=True)
        command = [sys.executable, str(ROOT / "scripts" / "run_book.py")]
        command += ["--out", str(OUT / name), "--allow-errors", *chapters]
        status |= subprocess.call(command, env=env)
    return status


def _line_spread(lines: list[str]) -> str:
    """One differing line as seen in each set, with each number's [low, high]."""
    shapes = {_NUMBER.sub("#", line) for line in lines}
    if len(shapes) != 1:  # not the same words: show every variant
        return " | ".join(sorted(set(lines)))
    columns = list(zip(*(_NUMBER.findall(line) for line in lines), strict=True))
    shape = next(iter(shapes))
    pieces = shape.split("#")
    out = pieces[0]
    for values, piece in zip(columns, pieces[1:], strict=True):
        low, high = min(values, key=float), max(values, key=float)
        out += low if low == high else f"[{low}, {high}]"
        out += piece
    return out


def compare(chapters: list[str], committed: bool) -> None:
    sets = sorted(p.name for p in OUT.iterdir() if p.is_dir()) if OUT.exists() else []
    for path in sorted(BOOK.glob("[0-9][0-9]_*.ipynb")):
        if chapters and not path.name.startswith(tuple(chapters)):
            continue
        runs = {s: _code_cells(OUT / s / path.name) for s in sets if (OUT / s / path.name).exists()}
        if committed:
            runs["committed"] = _code_cells(path)
        if len(runs) < 2:
            continue
        print(f"## {path.name}: {', '.join(runs)}")
        first = next(iter(runs.values()))
        for index, (source, _) in first.items():
            texts = [r[index][1] for r in runs.values() if index in r]
            if len(set(texts)) == 1:
                continue
            ignored = "NBVAL_IGNORE_OUTPUT" in source
            print(f"cell {index}{' (NBVAL_IGNORE_OUTPUT)' if ignored else ''}:")
            split = [t.splitlines() for t in texts]
            if len({len(s) for s in split}) != 1:
                print("   line counts differ:", [len(s) for s in split])
                continue
            for lines in zip(*split, strict=True):
                if len(set(lines)) > 1:
                    print("   ", _line_spread(list(lines))[:300])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="execute chapters under kernel sets")
    run_p.add_argument(
        "names", nargs="+", help=f"kernel sets ({', '.join(KERNEL_SETS)}), then chapter prefixes"
    )
    cmp_p = sub.add_parser("compare", help="list the outputs that differ between sets")
    cmp_p.add_argument("chapters", nargs="*", help="chapter prefixes (default: all)")
    cmp_p.add_argument("--committed", action="store_true", help="compare book/'s outputs too")
    args = parser.parse_args()
    if args.command == "run":
        sets = [n for n in args.names if n in KERNEL_SETS]
        chapters = [n for n in args.names if n not in KERNEL_SETS]
        unknown = [c for c in chapters if not c[:2].isdigit()]
        if unknown or not sets:
            parser.error(f"name kernel sets from {', '.join(KERNEL_SETS)}, then chapter prefixes")
        return run(sets, chapters)
    compare(args.chapters, args.committed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
