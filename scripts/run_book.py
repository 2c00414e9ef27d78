"""Execute the book's chapters top to bottom, headless, and report how long each took.

python scripts/run_book.py --out build/book     # executed copies in build/book/
python scripts/run_book.py --inplace            # refresh the committed outputs
python scripts/run_book.py --out build/book 00  # only chapters whose name starts 00
python scripts/run_book.py --out build/book --allow-errors 04  # every failing cell, one pass
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

BOOK = Path(__file__).resolve().parents[1] / "book"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("chapters", nargs="*", help="name prefixes (default: all)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="folder for the executed notebooks")
    where.add_argument("--inplace", action="store_true", help="overwrite book/*.ipynb")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    parser.add_argument(
        "--allow-errors", action="store_true",
        help="run on past a failing cell and list every failure (authors, after results change)",
    )  # fmt: skip
    args = parser.parse_args()

    notebooks = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
    if args.chapters:
        notebooks = [nb for nb in notebooks if nb.name.startswith(tuple(args.chapters))]
    if not notebooks:
        print("no chapters matched", file=sys.stderr)
        return 1
    total, failures = time.time(), 0
    for path in notebooks:
        start = time.time()
        nb = nbformat.read(path, as_version=4)
        NotebookClient(
            nb,
            timeout=args.timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(BOOK)}},
            allow_errors=args.allow_errors,
        ).execute()
        failed = [
            (i, out.get("ename"), out.get("evalue"))
            for i, cell in enumerate(nb.cells)
            for out in cell.get("outputs", [])
            if out.get("output_type") == "error"
        ]
        for i, name, value in failed:
            print(f"{path.name}: cell {i} failed: {name}: {value}", flush=True)
        failures += len(failed)
        target = path if args.inplace else args.out / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target)
        print(f"{path.name:<45} {time.time() - start:7.1f} s  -> {target}", flush=True)
    print(f"{len(notebooks)} chapters in {time.time() - total:.1f} s")
    if failures:  # written with their errors: fix them before committing
        print(f"{failures} cell(s) failed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
