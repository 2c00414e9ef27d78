"""`make html`: the book as static pages, built from two small notebooks made here."""

import importlib.util
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_html.py"
_spec = importlib.util.spec_from_file_location("build_html", SCRIPT)
build_html = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_html)


def _chapter(path, cells):
    nbformat.write(new_notebook(cells=cells), path)


@pytest.fixture
def two_chapters(tmp_path):
    book = tmp_path / "book"
    book.mkdir()
    visible = new_code_cell("print('shown source')", execution_count=1)
    visible.outputs = [new_output("stream", name="stdout", text="shown output\n")]
    hidden = new_code_cell("collapsed_source_line = 1", execution_count=2)
    hidden.metadata["jupyter"] = {"source_hidden": True}
    hidden.outputs = [new_output("stream", name="stdout", text="output of a collapsed cell\n")]
    _chapter(book / "00_first.ipynb", [new_markdown_cell("# 00 · Boxes & scores\ntext"),
                                       visible, hidden])  # fmt: skip
    _chapter(book / "01_second.ipynb", [new_markdown_cell("An opening without a heading."),
                                        new_markdown_cell("## 01 · Windows")])  # fmt: skip
    (book / "notes.ipynb").write_text("{}")  # not a chapter: no NN_ prefix
    return book


def test_build_html_writes_an_index_pages_and_links(two_chapters, tmp_path):
    out = tmp_path / "html"
    pages = build_html.build_html(two_chapters, out)
    assert [p.name for p in pages] == ["index.html", "00_first.html", "01_second.html"]
    index = (out / "index.html").read_text()
    # the contents: each chapter's first heading, linked, in order
    assert '<a href="00_first.html">00 · Boxes &amp; scores</a>' in index
    assert '<a href="01_second.html">01 · Windows</a>' in index
    assert index.index("00_first.html") < index.index("01_second.html")
    first, second = ((out / n).read_text() for n in ("00_first.html", "01_second.html"))
    # previous / next links, above and below the text, and back to the contents
    assert first.count('class="book-next" href="01_second.html"') == 2
    assert 'class="book-previous"' not in first
    assert second.count('class="book-previous" href="00_first.html"') == 2
    assert 'class="book-next"' not in second
    assert first.count('href="index.html"') == second.count('href="index.html"') == 2
    assert "<title>00 · Boxes &amp; scores</title>" in first
    # a collapsed cell shows its output only
    assert "shown source" in first and "shown output" in first
    assert "collapsed_source_line" not in first and "output of a collapsed cell" in first


def test_build_html_command_and_an_empty_folder(two_chapters, tmp_path, capsys):
    assert build_html.main(["--book", str(two_chapters), "--out", str(tmp_path / "o")]) == 0
    assert "2 chapters and the index" in capsys.readouterr().out
    assert build_html.main(["--book", str(tmp_path), "--out", str(tmp_path / "o2")]) == 1
    assert "no chapters (NN_*.ipynb)" in capsys.readouterr().err
    assert build_html.chapter_title(new_notebook(cells=[]), "fallback") == "fallback"
