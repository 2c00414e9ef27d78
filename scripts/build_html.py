"""The book as static HTML pages, from the committed outputs (nothing is executed).

python scripts/build_html.py                      # build/html/: index.html + one page a chapter
python scripts/build_html.py --out site --book book

One page per chapter (``book/NN_*.ipynb``), rendered by nbconvert's ``lab`` template with its
figures embedded, so a page is one self-contained file; an ``index.html`` with the table of
contents (each chapter's title is the first markdown heading of its notebook); on every page,
links to the previous and next chapter and back to the contents, above and below the text.
A code cell whose input is collapsed in JupyterLab (metadata ``jupyter.source_hidden``) shows
only its outputs. ``make html`` runs this.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
import time
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter
from nbconvert.preprocessors import Preprocessor

BOOK = Path(__file__).resolve().parents[1] / "book"
#: Added to every page, and to the index, for the navigation bar.
NAV_STYLE = """<style>
.book-nav { display: flex; justify-content: space-between; gap: 1em; max-width: 1100px;
            margin: 0.8em auto; padding: 0.5em 1em; font: 14px/1.4 sans-serif;
            border-top: 1px solid #ddd; border-bottom: 1px solid #ddd; }
.book-nav a { text-decoration: none; color: #1f5f99; }
.book-nav span { min-width: 12em; }
</style>"""


def chapter_title(notebook: nbformat.NotebookNode, default: str) -> str:
    """The text of a notebook's first markdown heading (any level), or ``default``."""
    for cell in notebook.cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            if match := re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line):
                return match.group(1)
    return default


class HideCollapsedInput(Preprocessor):
    """Leave out the input of code cells collapsed in JupyterLab (``jupyter.source_hidden``);
    their outputs stay. nbconvert's templates skip a cell's source when its
    ``metadata.transient.remove_source`` is set, as its own TagRemovePreprocessor does."""

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code" and cell.metadata.get("jupyter", {}).get("source_hidden"):
            cell.metadata["transient"] = {"remove_source": True}
        return cell, resources


def _nav(chapters: list[tuple[str, str]], i: int | None) -> str:
    """The navigation bar of page ``i`` of ``chapters`` ((file name, title) pairs); None:
    the index, which has no neighbours."""

    def link(k: int, arrow: str) -> str:
        name, title = chapters[k]
        text = f"{html.escape(title)} &rarr;" if arrow == "next" else f"&larr; {html.escape(title)}"
        return f'<a class="book-{arrow}" href="{name}">{text}</a>'

    previous = link(i - 1, "previous") if i is not None and i > 0 else ""
    following = link(i + 1, "next") if i is not None and i + 1 < len(chapters) else ""
    contents = '<a class="book-contents" href="index.html">contents</a>'
    return (
        f'<nav class="book-nav"><span>{previous}</span>{contents}'
        f'<span style="text-align: right">{following}</span></nav>'
    )


def _with_nav(page: str, nav: str) -> str:
    """``page`` (a whole HTML document) with ``nav`` right after ``<body>`` and before
    ``</body>``, and the bar's style in its head."""
    body = re.search(r"<body[^>]*>", page)
    end = page.rfind("</body>")
    if body is None or end < 0 or "</head>" not in page:
        raise ValueError(
            "build_html: nbconvert's page has no <head> or <body>; is the template html?"
        )
    page = page[:end] + nav + "\n" + page[end:]
    page = page[: body.end()] + "\n" + nav + page[body.end() :]
    return page.replace("</head>", NAV_STYLE + "\n</head>", 1)


def _index(chapters: list[tuple[str, str]], title: str) -> str:
    items = "\n".join(
        f'  <li><a href="{name}">{html.escape(text)}</a></li>' for name, text in chapters
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>body {{ font: 16px/1.5 sans-serif; max-width: 46em; margin: 2em auto; padding: 0 1em; }}
ul.contents {{ list-style: none; padding-left: 0; }} li {{ margin: 0.3em 0; }}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p>Each chapter as it was last executed (the outputs committed with the notebooks).</p>
<ul class="contents">
{items}
</ul>
</body>
</html>
"""


def build_html(book: Path, out: Path, title: str = "rcnn-steps: the book") -> list[Path]:
    """Render every ``NN_*.ipynb`` in ``book`` to ``out/NN_*.html`` and write
    ``out/index.html``; returns the pages written, the index first."""
    notebooks = sorted(Path(book).glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(
            f"no chapters (NN_*.ipynb) in {book}; pass the book's folder with --book"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = [nbformat.read(path, as_version=4) for path in notebooks]
    chapters = [
        (path.with_suffix(".html").name, chapter_title(nb, path.stem))
        for path, nb in zip(notebooks, loaded, strict=True)
    ]
    exporter = HTMLExporter(template_name="lab")
    exporter.register_preprocessor(HideCollapsedInput(), enabled=True)
    written = [out / "index.html"]
    written[0].write_text(_index(chapters, title), encoding="utf-8")
    for i, nb in enumerate(loaded):
        name, chapter = chapters[i]
        page, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": chapter}})
        (out / name).write_text(_with_nav(page, _nav(chapters, i)), encoding="utf-8")
        written.append(out / name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--book", type=Path, default=BOOK, help="folder of NN_*.ipynb")
    parser.add_argument("--out", type=Path, default=Path("build/html"), help="output folder")
    args = parser.parse_args(argv)
    start = time.time()
    try:
        pages = build_html(args.book, args.out)
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return 1
    size = sum(page.stat().st_size for page in pages)
    print(
        f"{len(pages) - 1} chapters and the index -> {args.out}/ "
        f"({size / 1e6:.1f} MB, {time.time() - start:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
