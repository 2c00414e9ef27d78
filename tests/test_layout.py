"""The library's floors (the package docstring): each imports only from the floors below
it, in function bodies too, so the import graph can be read off the folders."""

import ast
from pathlib import Path

import pytest

import rcnn_steps

PACKAGE = Path(rcnn_steps.__file__).parent

#: What each floor may import from the package besides itself.
FLOORS = {
    "ops": (),
    "modeling": ("rcnn_steps.ops", "rcnn_steps.utils"),
    "evaluation": ("rcnn_steps.ops",),
    "engine": ("rcnn_steps.utils",),
    "detectors": ("rcnn_steps.ops", "rcnn_steps.modeling", "rcnn_steps.utils"),
    # drawing: the explorers' views ask the library (ops, modeling, one detector's crops)
    "viz": ("rcnn_steps.ops", "rcnn_steps.modeling", "rcnn_steps.detectors", "rcnn_steps.utils"),
    "experiments": ("rcnn_steps",),  # every floor
    "cli": ("rcnn_steps",),  # the top: the command line, above experiments
}

#: The floors above every other: each may import every floor, and only they import the
#: experiments floor (no floor below imports a floor above it).
TOP = ("experiments", "cli")

#: The most lines a library module may have (issue 23: no library file over ~600 lines
#: except where one idea needs it); the exceptions, each with the reason it stays whole.
LINE_LIMIT = 600
LONG_BY_DESIGN: dict[str, str] = {
    "experiments/paper_tables.py": "the papers' tables as data, one idea: the mask tables "
    "read the box tables' numbers and share one index; half of it is the settings' docs",
    "detectors/config.py": "DetectorConfig and its presets, one idea: each preset's docstring "
    "records its settings' sources and measured cost; the field rules are in config_fields",
}

#: Upward imports a floor still makes, by file: known debts (issue 23) that only shrink.
#: A listed import no longer made fails :func:`test_the_known_upward_imports_are_still_made`,
#: so the list is trimmed as they go.
KNOWN_UPWARD: dict[str, set[str]] = {
    # chapters 02-04 import the proposal cache's functions from R-CNN's module, which
    # re-exports them (tests/test_proposals.py); the cache itself is data's
    "detectors/rcnn.py": {"rcnn_steps.data.proposals"},
}

#: The modules that still import from the package inside a function (issue 23: imports at
#: the top, except where a command's start-up needs them local), each with the reason; the
#: comment at each import says it again. A new local import needs its module here; a module
#: with none left comes off. Start-up is measured (``python -X importtime -m rcnn_steps
#: ladder --help``): the import would load a package that the command's ``--help`` does not.
LOCAL_IMPORTS: dict[str, str] = {
    # start-up: ``--help`` and the other commands load none of these
    "cli/evaluate.py": "start-up: detectors, data, the runner (tests replace run_setting)",
    "cli/predict.py": "start-up: viz (matplotlib, 0.4 s), data, evaluation, the runner",
    "cli/train.py": "start-up: data, the detector, the runner (tests replace train, its evaluator)",
    "cli/runs.py": "start-up: the detector and data, loaded when a run is read",
    # start-up of ladder's and ablations' --help: rcnn_steps.data loads SciPy (0.16 s)
    "experiments/run_data.py": "start-up: rcnn_steps.data (SciPy)",
    "experiments/scoring.py": "start-up: rcnn_steps.data (SciPy)",
    "experiments/ablations.py": "start-up: rcnn_steps.data (SciPy)",
    "experiments/ladder_runner.py": "start-up: rcnn_steps.data and R-CNN's module (SciPy)",
    "experiments/runner.py": "start-up: rcnn_steps.data, selective search; tests replace train",
    "experiments/datasets.py": "start-up: rcnn_steps.data; tests replace data.ensure_synth",
    # a test replaces the name on its own module, which only an import at call time sees
    "experiments/grid.py": "tests replace runner.run_setting",
    "experiments/fast_rcnn.py": "tests replace data.synth_datasets and the proposals' loaders",
    "data/proposals.py": "selective search (scikit-image, SciPy) only when proposals are made",
    "evaluation/simulate.py": "with torch, which rcnn_steps.evaluation does not load (NumPy only)",
}


def _imported_modules(path: Path) -> set[str]:
    """Every ``rcnn_steps`` module a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if node.module == "rcnn_steps"}
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; write the full rcnn_steps path")
    return {m for m in found if m == "rcnn_steps" or m.startswith("rcnn_steps.")}


def _allowed(module: str, floor: str) -> bool:
    prefixes = (f"rcnn_steps.{floor}", *FLOORS[floor])
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("floor", sorted(FLOORS))
def test_a_floor_imports_only_from_the_floors_below(floor):
    files = sorted((PACKAGE / floor).glob("*.py"))
    assert files, f"no modules in rcnn_steps/{floor}"
    upward = {
        f"{path.relative_to(PACKAGE)} imports {module}"
        for path in files
        for module in _imported_modules(path)
        if not _allowed(module, floor)
        and module not in KNOWN_UPWARD.get(str(path.relative_to(PACKAGE)), ())
    }
    assert not upward, sorted(upward)


def test_the_known_upward_imports_are_still_made():
    """Every entry of :data:`KNOWN_UPWARD` is an import its file still makes (delete the
    entries of a move once it is done)."""
    gone = {
        f"{name} no longer imports {module}"
        for name, modules in KNOWN_UPWARD.items()
        for module in modules
        if module not in _imported_modules(PACKAGE / name)
    }
    assert not gone, sorted(gone)


def test_nothing_imports_the_experiments_floor_but_the_top():
    """``experiments`` (the presets' records) is a top floor: it may import every floor,
    and no floor imports it but ``cli``, above it (and the :data:`KNOWN_UPWARD` debts). The
    package's loose modules that still read it are the old paths' shims
    (``rcnn_steps.faster_rcnn.train_config``)."""
    assert sorted((PACKAGE / "experiments").glob("*.py")), "no modules in rcnn_steps/experiments"
    below = {
        f"{path.relative_to(PACKAGE)} imports {module}"
        for floor in FLOORS
        if floor not in TOP
        for path in sorted((PACKAGE / floor).glob("*.py"))
        for module in _imported_modules(path)
        if module == "rcnn_steps.experiments" or module.startswith("rcnn_steps.experiments.")
        if module not in KNOWN_UPWARD.get(str(path.relative_to(PACKAGE)), ())
    }
    assert not below, sorted(below)


def test_nothing_imports_the_command_line_but_python_m():
    """``cli`` is the top floor: only its own modules and ``python -m rcnn_steps``
    (``rcnn_steps/__main__.py``) import it; every other module of the package, on a floor
    or beside them, does not."""
    importers = {
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.parent != PACKAGE / "cli" and path != PACKAGE / "__main__.py"
        for module in _imported_modules(path)
        if module == "rcnn_steps.cli" or module.startswith("rcnn_steps.cli.")
    }
    assert not importers, sorted(importers)


def test_every_module_is_under_the_line_limit_or_says_why_not():
    sizes = {
        str(path.relative_to(PACKAGE)): len(path.read_text().splitlines())
        for path in sorted(PACKAGE.rglob("*.py"))
    }
    over = {name: n for name, n in sizes.items() if n > LINE_LIMIT and name not in LONG_BY_DESIGN}
    assert not over, (
        f"over {LINE_LIMIT} lines (split by idea, or say why in LONG_BY_DESIGN): {over}"
    )
    fits = [name for name in LONG_BY_DESIGN if sizes.get(name, 0) <= LINE_LIMIT]
    assert not fits, f"under the limit now (or gone): take them off LONG_BY_DESIGN: {fits}"


#: The old flat paths, kept as shims for old imports and recorded ``python -m`` commands.
SHIMS = ("runner", "grid", "ablations", "evolution", "ladder", "sliding_window",
         "selective_search", "rcnn", "fast_rcnn", "faster_rcnn", "mask_rcnn",
         "keypoint_debug")  # fmt: skip


def test_the_floors_import_the_new_paths_not_the_shims():
    """A shim imports its floor's module; a floor importing a shim would loop back up."""
    assert all((PACKAGE / f"{name}.py").exists() for name in SHIMS)
    old = {f"rcnn_steps.{name}" for name in SHIMS}
    through_shims = {
        f"{path.relative_to(PACKAGE)} imports {module}"
        for floor in FLOORS
        for path in sorted((PACKAGE / floor).glob("*.py"))
        for module in _imported_modules(path)
        if module in old or any(module.startswith(o + ".") for o in old)
    }
    assert not through_shims, sorted(through_shims)


def _local_imports(path: Path) -> list[str]:
    """The ``rcnn_steps`` imports a file makes inside a function (``line: module``)."""
    found = []
    for function in ast.walk(ast.parse(path.read_text())):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            found += [f"{node.lineno}: {n}" for n in names if n.split(".")[0] == "rcnn_steps"]
    return sorted(set(found), key=lambda hit: int(hit.split(":")[0]))


def test_imports_are_at_the_top_unless_listed():
    """Issue 23: a module imports the package at its top; one that imports inside a
    function is in :data:`LOCAL_IMPORTS` with the reason, and comes off when it no longer
    does (the list only shrinks)."""
    local = {
        str(path.relative_to(PACKAGE)): hits
        for path in sorted(PACKAGE.rglob("*.py"))
        if (hits := _local_imports(path))
    }
    unlisted = {name: hits for name, hits in local.items() if name not in LOCAL_IMPORTS}
    assert not unlisted, (
        f"imports inside functions (move them to the top, or say why in LOCAL_IMPORTS): {unlisted}"
    )
    gone = sorted(set(LOCAL_IMPORTS) - set(local))
    assert not gone, f"no local import left: take them off LOCAL_IMPORTS: {gone}"


def test_the_layout_check_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "def f():\n    from rcnn_steps.engine import train\n    import rcnn_steps.viz\n"
    )
    found = _imported_modules(source)
    assert found == {"rcnn_steps.engine", "rcnn_steps.viz"}
    assert not _allowed("rcnn_steps.engine", "modeling") and _allowed("rcnn_steps.ops", "modeling")


def test_the_local_import_check_sees_only_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "from rcnn_steps.ops import box_iou\n"
        "import torch\n\n"
        "def f():\n    import json\n    from rcnn_steps.engine import train\n\n"
        "class C:\n    def g(self):\n        if True:\n            import rcnn_steps.viz\n"
    )
    assert _local_imports(source) == ["6: rcnn_steps.engine", "11: rcnn_steps.viz"]


def test_every_name_a_chapter_imports_from_the_library_exists():
    """A chapter's ``from rcnn_steps.<module> import <name>`` must resolve: a shim at an old
    path re-exports only its new module's ``__all__``, so a name outside it (a constant,
    say) would fail only when the chapter runs."""
    import importlib

    import nbformat

    missing = []
    for path in sorted((PACKAGE.parent / "book").glob("[0-9][0-9]_*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type != "code":
                continue
            try:
                tree = ast.parse(cell.source)
            except SyntaxError:  # a cell with IPython magics: nothing to import here
                continue
            for node in ast.walk(tree):
                if not isinstance(node, ast.ImportFrom):
                    continue
                if not (node.module or "").startswith("rcnn_steps"):
                    continue
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ImportError:
                            missing.append(f"{path.name}: {node.module}.{alias.name}")
    assert not missing, missing


#: The detectors floor's modules by the chapter that teaches them: a chapter's module may
#: import an earlier chapter's, never a later one's (issue 23: chapter 03's Fast R-CNN once
#: built itself from chapter 04's module; the shared parts are in detectors/parts.py).
DETECTOR_CHAPTERS = {
    "sliding_window": 1, "window_crops": 1, "window_grids": 1,
    "selective_search": 2, "region_grouping": 2, "proposal_measures": 2, "rcnn": 2,
    "fast_rcnn": 3, "faster_rcnn": 4, "mask_rcnn": 7,
}  # fmt: skip


def test_no_chapters_module_imports_a_later_chapters():
    later = {}
    for name, chapter in DETECTOR_CHAPTERS.items():
        for module in _imported_modules(PACKAGE / "detectors" / f"{name}.py"):
            other = module.removeprefix("rcnn_steps.detectors.")
            if DETECTOR_CHAPTERS.get(other, 0) > chapter:
                later[name] = sorted({*later.get(name, []), other})
    assert not later, f"imports from a later chapter's module: {later}"
    listed = {p.stem for p in (PACKAGE / "detectors").glob("*.py")} - {"__init__"}
    assert set(DETECTOR_CHAPTERS) <= listed
