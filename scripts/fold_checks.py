"""Fold the book's check cells: a code cell that only verifies what the text claims gets its
input collapsed (JupyterLab's ``jupyter.source_hidden``), so a reader sees the teaching code,
the outputs and the pictures first, and opens a check with one click (issue 26).

python scripts/fold_checks.py            # fold every check cell of book/*.ipynb (writes)
python scripts/fold_checks.py --check    # list cells folded wrongly or not folded; exit 1 if any

A *check cell* is a code cell whose statements are all checks: ``assert``, calls of a function
whose name contains ``assert`` (``torch.testing.assert_close``), loops and ``if``/``with``
blocks made only of those, and assignments of names no later code cell reads (helpers of the
check itself). A cell that prints, plots or defines something later cells use is teaching
code and stays open. The folded cells still run (nbval runs them all); only their input is
collapsed, in JupyterLab and in ``make html``'s pages.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import nbformat

BOOK = Path(__file__).resolve().parents[1] / "book"


def _called_name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _statement_kind(node: ast.stmt) -> str:
    """``"check"`` (an assert), ``"helper"`` (an assignment or a block of checks and
    assignments) or ``"other"``."""
    if isinstance(node, ast.Assert):
        return "check"
    if isinstance(node, ast.Expr):
        return "check" if _is_assert_call(node.value) else "other"
    if isinstance(node, ast.For | ast.While | ast.If | ast.With):
        kinds = {_statement_kind(s) for s in [*node.body, *getattr(node, "orelse", [])]}
        if "other" in kinds:
            return "other"
        return "check" if kinds == {"check"} else "helper"
    if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
        return "helper"
    return "other"


def _code(source: str) -> str:
    """``source`` without IPython magics and shell lines, which ``ast`` cannot read."""
    return "\n".join(
        line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))
    )


def _bound_names(body: list[ast.stmt]) -> set[str]:
    """Names bound by the assignments of ``body`` (and of the blocks in it), not counting
    loop variables and comprehension variables, which every cell rebinds for itself."""
    names = set()
    for node in body:
        if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.For | ast.While | ast.If | ast.With):
            names |= _bound_names([*node.body, *getattr(node, "orelse", [])])
    return names


def _read_before_bound(name: str, later_cells: list[str]) -> bool:
    """Whether the first use of ``name`` in ``later_cells`` (in order) reads it."""
    for source in later_cells:
        try:
            tree = ast.parse(_code(source))
        except SyntaxError:
            continue
        uses = sorted(
            (n.lineno, n.col_offset, isinstance(n.ctx, ast.Load))
            for n in ast.walk(tree)
            if isinstance(n, ast.Name) and n.id == name
        )
        if uses:
            return uses[0][2]
    return False


def is_check_cell(source: str, later_cells: list[str] = ()) -> bool:
    """Whether a code cell's ``source`` only checks: every statement an assert, an
    ``assert_*`` call, or an assignment or block of those, with at least one assert, and no
    name it assigns read by ``later_cells`` (the sources of the code cells after it)."""
    try:
        tree = ast.parse(_code(source))
    except SyntaxError:
        return False
    if "other" in {_statement_kind(node) for node in tree.body}:
        return False
    if not any(isinstance(node, ast.Assert) or _is_assert_call(node) for node in ast.walk(tree)):
        return False
    return not any(_read_before_bound(name, list(later_cells)) for name in _bound_names(tree.body))


def _is_assert_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and "assert" in _called_name(node)


def check_cell_indices(notebook: nbformat.NotebookNode) -> list[int]:
    """Indices of ``notebook``'s check cells (see :func:`is_check_cell`); a cell with an
    output shows the reader something and is never one."""
    code = [(i, c.source) for i, c in enumerate(notebook.cells) if c.cell_type == "code"]
    return [
        i
        for k, (i, source) in enumerate(code)
        if not notebook.cells[i].get("outputs")
        and is_check_cell(source, [s for _, s in code[k + 1 :]])
    ]


def is_folded(cell: nbformat.NotebookNode) -> bool:
    return bool(cell.metadata.get("jupyter", {}).get("source_hidden"))


def misfolded(notebook: nbformat.NotebookNode) -> list[tuple[int, str]]:
    """``(index, what is wrong)`` for every check cell left open and every other cell folded."""
    checks = set(check_cell_indices(notebook))
    wrong = []
    for i, cell in enumerate(notebook.cells):
        if i in checks and not is_folded(cell):
            wrong.append((i, "a check cell, not folded"))
        elif i not in checks and is_folded(cell):
            wrong.append((i, "folded, but not only checks"))
    return wrong


def fold(notebook: nbformat.NotebookNode) -> int:
    """Fold ``notebook``'s check cells and unfold the rest, in place; return how many changed."""
    checks = set(check_cell_indices(notebook))
    changed = 0
    for i, cell in enumerate(notebook.cells):
        if (i in checks) == is_folded(cell):
            continue
        changed += 1
        if i in checks:
            cell.metadata.setdefault("jupyter", {})["source_hidden"] = True
        else:
            cell.metadata["jupyter"].pop("source_hidden")
            if not cell.metadata["jupyter"]:
                del cell.metadata["jupyter"]
    return changed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="only report; exit 1 if anything is misfolded"
    )
    parser.add_argument("--book", type=Path, default=BOOK)
    args = parser.parse_args()
    bad = 0
    for path in sorted(args.book.glob("[0-9][0-9]_*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        if args.check:
            for i, what in misfolded(notebook):
                print(f"{path.name} cell {i}: {what}")
                bad += 1
        elif changed := fold(notebook):
            nbformat.write(notebook, path)
            print(
                f"{path.name}: {changed} cells (un)folded, "
                f"{len(check_cell_indices(notebook))} folded in all"
            )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
