"""The book reads in d2l-sized pieces (issue 26): no markdown cell over
:data:`MAX_WORDS` words, no code cell over :data:`MAX_LINES` lines, and no bookkeeping
words (:data:`BOOKKEEPING`) in the text a reader reads.

Cells that broke a limit when the check was written are listed by their cell id in
:data:`OVER_THE_LIMIT`, to be cut down chapter by chapter. The list only shrinks: a new
cell over a limit fails, and so does a listed cell that is no longer over it (take it off
the list), so the list always says exactly what is left to do.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import nbformat
import pytest

BOOK = Path(__file__).resolve().parents[1] / "book"
CHAPTERS = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))

MAX_WORDS = 300  #: words in one markdown cell (code spans count as words)
MAX_LINES = 30  #: lines in one code cell

#: Words about how the book is made, not about detection: they belong in a provenance
#: note or a code comment, not in the reader's text. Checked on the prose with its code
#: (fenced, indented and inline) taken out, so a command's flags may name workers.
BOOKKEEPING = re.compile(
    r"committed (tree|command|file|weights)|-dirty\b|core-hours?|this chapter's standard"
    r"|\bthe twin\b|\bthe grids'|\bexact pixels\b|\bworkers?\b|one-thread job",
    re.IGNORECASE,
)


def prose(markdown: str) -> str:
    """``markdown`` without its code: fenced blocks, indented blocks and inline spans."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.DOTALL)
    text = re.sub(r"(^|\n)(    |\t)[^\n]*", r"\1", text)
    return re.sub(r"`[^`]*`", "", text)


#: ``{chapter stem: {cell id: what is over}}``: the cells still to cut down.
OVER_THE_LIMIT: dict[str, dict[str, str]] = {}


def _source(cell) -> str:
    return "".join(cell["source"])


def cell_problems(nb: dict) -> dict[str, str]:
    """``{cell id: what is over}`` for the cells of ``nb`` that break a limit."""
    found = {}
    for index, cell in enumerate(nb["cells"]):
        text = _source(cell)
        what = []
        if cell["cell_type"] == "markdown":
            if (words := len(text.split())) > MAX_WORDS:
                what.append(f"{words} words")
            if match := BOOKKEEPING.search(prose(text)):
                what.append(f"says {match.group(0)!r}")
        elif cell["cell_type"] == "code" and (lines := len(text.strip().splitlines())) > MAX_LINES:
            what.append(f"{lines} lines")
        if what:
            found[cell.get("id", f"#{index}")] = ", ".join(what)
    return found


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_cells_are_reading_sized(path):
    found = cell_problems(json.loads(path.read_text()))
    listed = OVER_THE_LIMIT.get(path.stem, {})
    new = {k: v for k, v in found.items() if k not in listed}
    done = sorted(set(listed) - set(found))
    assert not new, f"{path.name}: cells over the limits (split them): {new}"
    assert not done, f"{path.name}: cells now within the limits, take them off the list: {done}"


def test_the_check_finds_long_cells_and_bookkeeping():
    nb = {
        "cells": [
            {"cell_type": "markdown", "id": "a", "source": "word " * (MAX_WORDS + 1)},
            {"cell_type": "markdown", "id": "b", "source": "written from a committed tree"},
            {"cell_type": "code", "id": "c", "source": "x = 1\n" * (MAX_LINES + 1)},
            {"cell_type": "code", "id": "d", "source": "x = 1\n" * MAX_LINES},
            {"cell_type": "markdown", "id": "e", "source": "word " * MAX_WORDS},
            {"cell_type": "markdown", "id": "f", "source": "at the grids' budget"},
            {"cell_type": "markdown", "id": "g", "source": "run `--workers 2`:\n\n    --workers 2"},
            {"cell_type": "markdown", "id": "h", "source": "one thread in each of two workers"},
        ]
    }
    assert set(cell_problems(nb)) == {"a", "b", "c", "f", "h"}
    assert "committed tree" in cell_problems(nb)["b"]


def _fold_checks():
    """``scripts/fold_checks.py`` as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "fold_checks", BOOK.parent / "scripts" / "fold_checks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_check_cells_are_folded(path):
    """The reading path first: every cell that only checks the text's claims has its input
    collapsed, and no cell that teaches is (``python scripts/fold_checks.py`` refolds)."""
    fold_checks = _fold_checks()
    wrong = fold_checks.misfolded(nbformat.read(path, as_version=4))
    assert not wrong, f"{path.name}: {wrong}; run python scripts/fold_checks.py"


def test_what_counts_as_a_check_cell():
    is_check = _fold_checks().is_check_cell
    assert is_check("assert x > 1  # why")
    assert is_check("for a in xs:\n    torch.testing.assert_close(a, b)\nassert n == 3")
    assert is_check(
        "spread = hi - lo\nassert spread < 0.1", ["for spread in s:\n    print(spread)"]
    )
    assert not is_check("spread = hi - lo\nassert spread < 0.1", ["print(spread)"])  # read later
    assert not is_check("print(x)\nassert x > 1")  # shows something
    assert not is_check("x = f(1)")  # no assert: not a check
    assert not is_check("def above(a, b):\n    return a > b\nassert above(2, 1)")


def test_a_cell_with_output_is_never_folded():
    fold_checks = _fold_checks()
    nb = nbformat.v4.new_notebook()
    quiet = nbformat.v4.new_code_cell("assert 1 + 1 == 2")
    shows = nbformat.v4.new_code_cell("fig = viz.heatmap(m)\nassert fig")
    shows.outputs = [nbformat.v4.new_output("display_data", {"text/plain": "<Figure>"})]
    nb.cells = [quiet, shows]
    assert fold_checks.check_cell_indices(nb) == [0]
    assert fold_checks.fold(nb) == 1 and fold_checks.misfolded(nb) == []
