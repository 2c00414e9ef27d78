"""The book's prose is held to its data, chapter by chapter (every ``book/NN_*.ipynb``).

1. Every number in a chapter's markdown must come from code: it must equal, at the
   precision the prose gives it, a number in one of the chapter's cell outputs or a value
   of a results file the chapter reads; or be a number the chapter's own code holds (a
   setting the reader sees typed in a cell); or be on :data:`ALLOWED`, a short list of
   the papers' numbers and of constants, each with where it comes from. "79%" is read as
   0.79; "18,279" as 18279. Not checked: code (inline or in blocks: commands, formulas),
   numbering (headings, list items), and references ("chapter 05", "section 3.2",
   "Table 2(c)", "eq. (1)", "Lin et al. 2017").
2. Every figure (a code cell that displays a PNG) is followed by an explanation: a
   markdown cell that is not a heading, after at most two code cells without figures.

The checks run on the committed outputs, and (1) again on the chapters as executed under
another CPU kernel set than the one that wrote the committed outputs: ``make test`` executes
them with ``ONEDNN_MAX_CPU_ISA=SSE41`` into ``build/book-rerun`` and names that folder in
``RCNN_BOOK_RERUN``. Training, float sums and timing move from one CPU to another, so a
number the prose quotes from such an output must be quoted at a precision that holds on
both: a chapter whose words hold only on its author's machine fails here.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parents[1] / "book"
RESULTS = Path(__file__).resolve().parents[1] / "results"
CHAPTERS = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
#: The chapters executed under another kernel set (see the module docstring), or None.
RERUN = Path(os.environ["RCNN_BOOK_RERUN"]) if os.environ.get("RCNN_BOOK_RERUN") else None

#: The papers' numbers and fixed constants the prose may quote without printing them: each
#: a phrase (a regular expression) that is taken out of the prose before its numbers are
#: checked, with where it comes from. Keep it short: anything measured belongs in a cell.
ALLOWED: dict[str, str] = {
    # papers' test-time speeds (rcnn_steps.experiments.evolution.PAPER_SECONDS_PER_IMAGE)
    r"\b47 s\b": "R-CNN, about 47 s per image (Fast R-CNN paper, Table 4)",
    r"about 2 s per image": "Fast R-CNN with selective search (Faster R-CNN paper, section 1)",
    r"0\.148 against 0\.32 s": "FPN vs C4 test time per image (FPN paper, section 5.2.1)",
    # R-CNN (Girshick et al. 2014)
    r"(?:about|~|up to) 2000\b|\b2000 (?:class-independent )?proposals|search's 2000": (
        "about 2000 selective-search proposals per image (section 2.1)"
    ),
    r"\b227 x 227\b": "the CNN's input size (appendix A)",
    r"\b3\.3 mAP points": "softmax instead of SVMs (appendix B)",
    r"32 and 96 of 128": "positives and negatives per mini-batch (section 2.3)",
    # Faster R-CNN (Ren et al. 2015)
    r"128, 256 and 512 pixels on ~600 px": "anchor sizes and image size (section 3.1.1)",
    r"256 / ~2400|~2400 cells of a 1000 x 600": "N_cls and N_reg of eq. (1) (section 3.1.2)",
    r"fine-tuned for 80k iterations": "VOC training schedule (section 4.1)",
    # Mask R-CNN (He et al. 2017), Table 2(c)/(d): RoIAlign minus RoIPool, mask AP
    r"added 3\.4 mask AP points over RoIPool, 2\.4 at AP50 but 5\.1 at AP75": "Table 2(c)",
    r"2\.4 and 5\.1 mask AP": "Table 2(c), AP50 and AP75",
    r"7\.3 mask and 5\.8 box AP points": "Table 2(d)",
    r"\b800 px\b": "COCO training image size (section 3.1)",
    # FPN (Lin et al. 2017)
    r"s0 = 224|`?s0`? = 224|\b224 x 224\b|\b32\.\.512 px|`d` is 256": (
        "canonical RoI size of eq. (1), anchor sizes, channels (sections 4.1, 4.2)"
    ),
    r"IoU thresholds up to 0\.95": "COCO's AP: the mean over IoU 0.5:0.05:0.95",
    # COCO's size classes, defined on images about 640 px wide
    r"32² px²|96² px²|about 640 px wide": "COCO's small / large thresholds",
}

# A number in prose: digits with optional thousands separators, decimals and exponent,
# not part of an identifier (AP50, P2, c3_2fc, log2, VGG-16 stays a number: a reference).
_NUMBER = re.compile(
    r"(?<![\w.^])(\d{1,3}(?:,\d{3})+(?![\d,])|\d+(?:\.\d+)?(?:e-?\d+)?)"
    r"(?:(%)|(?=(x|px|s|ms|th|st|nd|rd)?(?![\w])))"
)
# References and citations: "chapter 05", "chapters 01-04", "section 3.1.2", "Table 2(c)",
# "eq. (1)", "Figure 3", "appendix C", "step 4", "Algorithm 1", "Lin et al. 2017", years.
_REFERENCE = re.compile(
    r"\b(?:chapters?|sections?|tables?|eqs?\.|equations?|figures?|fig\.|appendix|steps?|"
    r"algorithm|exercises?|rows?)"
    r"\s*\(?\d+(?:\.\d+)*\)?(?:\([a-z]\))?"
    r"(?:\s*(?:-|–|,|and|or|to|/)\s*\(?\d+(?:\.\d+)*\)?(?:\([a-z]\))?)*",
    re.IGNORECASE,
)
# Model names: ResNet-50, VGG-16, R50, X101.
_MODEL = re.compile(r"\b(?:ResNet-?|VGG-?|R|X)\d+\b")
_CITATION = re.compile(
    r"(?:et al\.,?|CVPR|ICCV|ECCV|NeurIPS|NIPS|IJCV|TPAMI|COCO|VOC|\()\s*(?:19|20)\d\d\b"
)
_HEADING_OR_ITEM = re.compile(r"^\s*(?:#+\s*\d+(?:\.\d+)*\.?|\d+\.\s)", re.MULTILINE)
_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)


def _prose(markdown: str) -> str:
    """Markdown without code (inline, fenced or indented four spaces), numbering,
    references, citations and :data:`ALLOWED` phrases."""
    text = markdown
    for phrase in ALLOWED:  # a space in a phrase matches any white space, line breaks too
        text = re.sub(phrase.replace(" ", r"\s+"), " ", text)
    text = _CODE.sub(" ", text)
    text = "\n".join(" " if line.startswith("    ") else line for line in text.split("\n"))
    text = _HEADING_OR_ITEM.sub(" ", text)
    text = _REFERENCE.sub(" ", text)
    text = _MODEL.sub(" ", text)
    return _CITATION.sub(" ", text)


# What follows a measured quantity: a share, a ratio, points of a metric, a duration.
_MEASURED_UNIT = re.compile(
    r"(?:%|x\b| (?:AP50 |AP |mAP |mask AP |box AP )?points\b| s\b| ms\b| min\b)"
)


def numbers_in(text: str) -> list[tuple[str, float, int, bool, bool]]:
    """Every number of ``text``: ``(as written, value, decimals, is a percentage, reads as
    a measurement)``; a measurement is followed by %, x, "points" or a unit of time."""
    found = []
    for m in _NUMBER.finditer(text):
        written = m.group(1)
        plain = written.replace(",", "")
        decimals = len(plain.split(".")[1]) if "." in plain and "e" not in plain else 0
        measured = bool(_MEASURED_UNIT.match(text, m.end(1)))
        found.append((written, float(plain), decimals, m.group(2) == "%", measured))
    return found


def _source(cell) -> str:
    return "".join(cell["source"])


def _output_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            parts.append("".join(out["text"]))
        elif out["output_type"] in ("execute_result", "display_data"):
            data = out["data"]
            for kind in ("text/markdown", "text/plain"):
                if kind in data and "image/png" not in data:
                    parts.append("".join(data[kind]))
                    break
    return "\n".join(parts)


def _has_figure(cell) -> bool:
    return any("image/png" in out.get("data", {}) for out in cell.get("outputs", []))


def _json_numbers(value, out: list[float]) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        out.append(float(value))
    elif isinstance(value, dict):
        for v in value.values():
            _json_numbers(v, out)
    elif isinstance(value, list):
        for v in value:
            _json_numbers(v, out)


def results_read_by(sources: str, results: Path = RESULTS) -> list[Path]:
    """The results files a chapter reads: named in its code (``"rcnn.json"``, or an
    ablation table's name for ``ablation_<table>.json``), ``evolution.json`` through
    ``read_table``."""
    files = []
    for path in sorted(results.glob("*.json")):
        names = {f'"{path.name}"', f"'{path.name}'"}
        if path.stem.startswith("ablation_"):
            table = path.stem[len("ablation_") :]
            names |= {f'"{table}"', f"'{table}'"}
        if path.name == "evolution.json" and "read_table(" in sources:
            files.append(path)
        elif any(n in sources for n in names):
            files.append(path)
    return files


def known_numbers(nb: dict, results: Path = RESULTS):
    """What a chapter's prose may quote: ``(printed, exact)``. ``printed`` holds
    ``(value, decimals printed)`` from outputs and ``(value, None)`` (full precision) from
    results files; ``exact`` the numbers written in the chapter's code."""
    printed: list[tuple[float, int | None]] = []
    exact: set[float] = set()
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for cell in code:
        for _, value, decimals, percent, measured in numbers_in(_output_text(cell)):
            # a whole number printed without a unit (a size, a count, a setting) supports
            # settings and counts in the prose, not measurements: decimals -1 marks it
            printed.append((value, decimals if decimals or measured else -1))
            if percent:
                printed.append((value / 100, decimals + 2))
        for _, value, *_ in numbers_in(_source(cell)):
            exact.add(value)
    sources = "\n".join(_source(c) for c in code)
    for path in results_read_by(sources, results):
        values: list[float] = []
        _json_numbers(json.loads(path.read_text()), values)
        printed += [(v, None) for v in values]
    return printed, exact


def _significant_digits(value: float, decimals: int) -> int:
    digits = f"{value:.{decimals}f}".replace(".", "").lstrip("0")
    return len(digits)


def _matches(value: float, decimals: int, printed, exact, measured: bool = False) -> bool:
    """``value`` (written with ``decimals`` decimals) is a number of the chapter's code
    (unless it reads as a measurement: "8 points", "26.1x" and "13.2 s" are not settings),
    or a printed number rounded to the prose's precision (for a measurement, one printed
    with decimals or a unit: "stride 8" does not support "8 points"). A results file's value (full
    precision) supports only a number quoted to three significant digits or more: a
    rounder quote ("about 8 points") must be printed by the chapter, or a file's hundreds
    of values would match almost any small number."""
    if value in exact and not measured:
        return True
    half = 0.5 * 10.0**-decimals + 1e-9
    precise = _significant_digits(value, decimals) >= 3
    for v, shown in printed:
        if shown is None and not precise:
            continue
        if shown == -1:  # a whole number printed without a unit
            if measured:
                continue
            shown = 0
        if (shown is None or shown >= decimals) and abs(abs(v) - value) <= half:
            return True
    return False


def unsupported_numbers(nb: dict, results: Path = RESULTS) -> list[str]:
    """The numbers of ``nb``'s markdown that no output, code, results file or
    :data:`ALLOWED` entry supports, as ``"cell N: 'number' in '...context...'"``."""
    printed, exact = known_numbers(nb, results)
    bad = []
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        text = _prose(_source(cell))
        for written, value, decimals, percent, measured in numbers_in(text):
            if _matches(value, decimals, printed, exact, measured):
                continue
            if percent and _matches(value / 100, decimals + 2, printed, exact, measured):
                continue
            at = text.find(written)
            context = " ".join(text[max(0, at - 40) : at + 40].split())
            bad.append(f"cell {index}: {written!r} in '...{context}...'")
    return bad


def unexplained_figures(nb: dict) -> list[str]:
    """Figure cells not followed by an explanation (see the module docstring)."""
    cells = nb["cells"]
    bad = []
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "code" or not _has_figure(cell):
            continue
        explained = False
        for later in cells[index + 1 : index + 4]:
            if later["cell_type"] == "markdown":
                first = _source(later).lstrip().split("\n", 1)[0]
                explained = bool(first) and not first.startswith("#")
                break
            if _has_figure(later):
                break
        if not explained:
            bad.append(f"cell {index}: {_source(cell).strip().splitlines()[0][:60]!r}")
    return bad


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_number_in_the_prose_comes_from_code(path):
    bad = unsupported_numbers(json.loads(path.read_text()))
    assert not bad, f"{path.name}: numbers no output or results file supports:\n" + "\n".join(bad)


def rerun_problems(committed: dict, rerun: dict) -> list[str]:
    """Why ``rerun`` is not an execution of ``committed``'s cells (none if it is)."""
    sources = [(c["cell_type"], _source(c)) for c in committed["cells"]]
    if sources != [(c["cell_type"], _source(c)) for c in rerun["cells"]]:
        return ["its cells are not the committed chapter's: execute the chapter again"]
    return [
        f"cell {i} failed: {out.get('ename')}: {out.get('evalue')}"
        for i, cell in enumerate(rerun["cells"])
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_the_prose_holds_under_another_kernel_set(path):
    if RERUN is None:
        pytest.skip("RCNN_BOOK_RERUN is not set: `make test` executes the book to check this")
    rerun_path = RERUN / path.name
    assert rerun_path.exists(), f"{rerun_path} is missing: `make test` writes it"
    rerun = json.loads(rerun_path.read_text())
    problems = rerun_problems(json.loads(path.read_text()), rerun)
    assert not problems, f"{rerun_path}:\n" + "\n".join(problems)
    bad = unsupported_numbers(rerun)
    assert not bad, (
        f"{path.name}: numbers the re-run under another kernel set ({RERUN}) does not "
        "support; quote them at a precision that holds on both:\n" + "\n".join(bad)
    )


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_figure_is_explained(path):
    bad = unexplained_figures(json.loads(path.read_text()))
    assert not bad, f"{path.name}: figures without a following explanation:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_the_chapter_opens_with_its_numbered_title(path):
    # `make html`'s contents and its previous/next links read each chapter's first heading,
    # so every title has one form: "# NN · Title", NN the file's number.
    cells = json.loads(path.read_text())["cells"]
    first = "".join(cells[0]["source"]).splitlines()[0]
    assert re.fullmatch(rf"# {path.name[:2]} · \S.*", first), f"{path.name}: title {first!r}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_no_cell_draws_below_the_books_type_size_or_resolution(path):
    # viz.use_book_style sets 9 pt and 110 dpi; a chapter must not undo it for one figure
    code = "\n".join(
        "".join(c["source"])
        for c in json.loads(path.read_text())["cells"]
        if c["cell_type"] == "code"
    )
    small = [m.group(0) for m in re.finditer(r"fontsize=([0-9.]+)", code) if float(m.group(1)) < 9]
    low = [m.group(0) for m in re.finditer(r"dpi\W+(\d+)", code) if int(m.group(1)) < 110]
    assert not small and not low, f"{path.name}: {small + low}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_no_cell_prints_a_plot_objects_repr(path):
    # A cell ending in a plotting call shows "<Axes: title=...>" above its figure unless its
    # result is assigned: noise on the page, and a line nbval compares (it does so even when
    # the call ends with ";", which JupyterLab and nbconvert honour).
    reprs = [
        f"cell {i}: {''.join(out['data']['text/plain'])[:60]}"
        for i, cell in enumerate(json.loads(path.read_text())["cells"])
        for out in cell.get("outputs", [])
        if out["output_type"] == "execute_result"
        and re.match(r"<(Axes|Figure|matplotlib)", "".join(out["data"].get("text/plain", "")))
    ]
    assert not reprs, (
        f"{path.name}: assign these plotting calls' results (`ax = ...`; nbval shows the "
        "repr even after a closing ';'):\n" + "\n".join(reprs)
    )


# The checks themselves, on made-up notebooks: they must be able to fail.


def _nb(*cells):
    out = []
    for kind, source, *outputs in cells:
        cell = {"cell_type": kind, "source": source, "metadata": {}}
        if kind == "code":
            cell["outputs"] = outputs[0] if outputs else []
        out.append(cell)
    return {"cells": out}


def _stream(text):
    return [{"output_type": "stream", "name": "stdout", "text": text}]


_FIGURE = [{"output_type": "display_data", "data": {"image/png": "", "text/plain": "<Figure>"}}]


def test_numbers_are_matched_at_the_precision_written(tmp_path):
    nb = _nb(
        ("code", "x = compute(stride=16)", _stream("AP 0.786, speed-up 26.1x, reach 66%\n")),
        ("markdown", "AP 0.79 (79%), 0.786; 26.1x faster; two thirds (66%, 0.66); stride 16."),
    )
    assert unsupported_numbers(nb, tmp_path) == []
    nb["cells"][1]["source"] = "AP 0.7861, a 2.8x speed-up, and 13.2 s per image."
    bad = unsupported_numbers(nb, tmp_path)
    assert [b.split("'")[1] for b in bad] == ["0.7861", "2.8", "13.2"]
    # a setting typed in the code, or printed as a plain whole number, supports a setting,
    # not a measurement
    nb["cells"][1]["source"] = "With stride 16 the gain is 16 points, 16%, 16x or 16 s."
    bad = unsupported_numbers(nb, tmp_path)
    assert [b.split("'")[1] for b in bad] == ["16", "16", "16", "16"]
    nb["cells"][0]["outputs"] = _stream("sizes (8, 16, 32); gain 7.9 points; 12 s\n")
    nb["cells"][1]["source"] = "Anchors of 8 px; a gain of 8 points, 8 AP points; 12 s."
    bad = unsupported_numbers(nb, tmp_path)
    assert bad == []
    nb["cells"][1]["source"] = "A gain of 32 points."
    assert [b.split("'")[1] for b in unsupported_numbers(nb, tmp_path)] == ["32"]


def test_references_code_and_allowed_numbers_are_not_checked(tmp_path):
    nb = _nb(
        ("code", "pass"),
        (
            "markdown",
            "## 3. Title\n\n1. a step\n\nAs in chapter 05 and section 3.1.2 (Table 2(c), "
            "eq. (1), Lin et al. 2017, CVPR 2014), with `k = 123` and R-CNN's 47 s.\n\n"
            "    python -m tool --seeds 7 9\n",
        ),
    )
    assert unsupported_numbers(nb, tmp_path) == []


def test_results_files_count_only_when_the_chapter_reads_them(tmp_path):
    (tmp_path / "rcnn.json").write_text(json.dumps({"results": {"AP": 0.4321}}))
    (tmp_path / "ablation_table8.json").write_text(json.dumps({"results": {"x": 0.777}}))
    nb = _nb(("code", 'read_results(results_dir() / "rcnn.json")'), ("markdown", "AP 0.432."))
    assert unsupported_numbers(nb, tmp_path) == []
    nb["cells"][1]["source"] = "AP 0.432, x 0.777 (a rounder 0.78 would need printing)."
    assert [b.split("'")[1] for b in unsupported_numbers(nb, tmp_path)] == ["0.777", "0.78"]
    nb["cells"][0]["source"] += '\nshow_table("table8")'
    assert [b.split("'")[1] for b in unsupported_numbers(nb, tmp_path)] == ["0.78"]


def test_a_figure_needs_a_prose_cell_after_it():
    explained = _nb(("code", "plot()", _FIGURE), ("code", "assert ok"), ("markdown", "See: ..."))
    assert unexplained_figures(explained) == []
    for follower in (("markdown", "## Next section"), ("code", "plot()", _FIGURE)):
        nb = _nb(("code", "plot()", _FIGURE), follower, ("markdown", "text"))
        assert unexplained_figures(nb) == ["cell 0: 'plot()'"]
    assert unexplained_figures(_nb(("code", "plot()", _FIGURE))) == ["cell 0: 'plot()'"]


def test_a_rerun_must_be_of_the_same_cells_and_without_errors():
    committed = _nb(("markdown", "AP 0.45"), ("code", "train()", _stream("AP 0.45\n")))
    rerun = json.loads(json.dumps(committed))
    rerun["cells"][1]["outputs"] = _stream("AP 0.44\n")
    assert rerun_problems(committed, rerun) == []
    assert [b.split("'")[1] for b in unsupported_numbers(rerun, Path("/nonexistent"))] == ["0.45"]
    rerun["cells"][0]["source"] = "AP about 0.4"
    assert rerun_problems(committed, rerun) == [
        "its cells are not the committed chapter's: execute the chapter again"
    ]
    rerun["cells"][0]["source"] = committed["cells"][0]["source"]
    rerun["cells"][1]["outputs"] = [
        {"output_type": "error", "ename": "AssertionError", "evalue": ""}
    ]
    assert rerun_problems(committed, rerun) == ["cell 1 failed: AssertionError: "]
