"""The built book, as a browser sees it: every page of _toc.yml rendered, with its figures and
without error output. Opens each page in headless Chromium (Debian's `chromium`).

Skipped when the book has not been built (`make book` builds it into _build/html).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "_build" / "html"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]
# text that only appears when a cell failed or a build step broke
ERROR_TEXT = re.compile(r"Traceback \(most recent call last\)|^\s*\w*(Error|Exception): ", re.M)
ERROR_OUTPUT_CLASSES = {"traceback", "stderr", "error"}


# ---- what the toc promises ---------------------------------------------------------------
def toc_documents(toc_path: Path = ROOT / "_toc.yml") -> list[str]:
    """Every document named in ``_toc.yml`` (root, files, and glob matches), in toc order."""
    toc = yaml.safe_load(toc_path.read_text())
    docs = [toc["root"]]

    def matching(pattern: str) -> list[str]:
        top = pattern.split("/")[0]  # globs name a folder of the book; never walk .venv
        return sorted(p.relative_to(ROOT).with_suffix("").as_posix()
                      for ext in ("md", "ipynb") for p in (ROOT / top).glob(f"**/*.{ext}")
                      if fnmatch.fnmatch(p.relative_to(ROOT).with_suffix("").as_posix(), pattern))

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                docs.append(entry["file"])
            if "glob" in entry:
                docs.extend(matching(entry["glob"]))
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return list(dict.fromkeys(docs))


def source_file(doc: str) -> Path:
    for ext in (".ipynb", ".md"):
        if (ROOT / f"{doc}{ext}").is_file():
            return ROOT / f"{doc}{ext}"
    raise FileNotFoundError(f"_toc.yml names '{doc}', which has no .md or .ipynb source")


def source_makes_figures(path: Path) -> bool:
    """An executed notebook with an image output, or a MyST notebook that draws with matplotlib."""
    if path.suffix == ".ipynb":
        nb = json.loads(path.read_text())
        return any("image/png" in out.get("data", {}) for cell in nb["cells"]
                   for out in cell.get("outputs", []))
    text = path.read_text()
    return "{code-cell}" in text and bool(re.search(r"\bplt\.show\(\)|\bsns\.\w+plot\(", text))


# ---- what the browser shows --------------------------------------------------------------
@dataclass
class RenderedPage:
    title: str = ""
    h1: str = ""
    article_text: str = ""
    images: int = 0
    error_outputs: list[str] = field(default_factory=list)
    output_text: list[str] = field(default_factory=list)


class _PageParser(HTMLParser):
    """Collects the title, the article's first heading, its images and its cell outputs."""

    def __init__(self):
        super().__init__()
        self.page = RenderedPage()
        self._stack: list[tuple[str, set[str]]] = []
        self._in_title = False

    def _inside(self, predicate) -> bool:
        return any(predicate(tag, classes) for tag, classes in self._stack)

    def handle_starttag(self, tag, attrs):
        classes = set((dict(attrs).get("class") or "").split())
        if tag == "title":
            self._in_title = True
        in_article = self._inside(lambda t, c: t == "article")
        if in_article and tag == "img":
            self.page.images += 1
        if in_article and "output" in classes and classes & ERROR_OUTPUT_CLASSES:
            self.page.error_outputs.append(" ".join(sorted(classes)))
        if tag not in {"img", "br", "hr", "meta", "link", "input", "source", "col", "wbr"}:
            self._stack.append((tag, classes))

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                del self._stack[i:]
                break

    def handle_data(self, data):
        if self._in_title:
            self.page.title += data
        if not self._inside(lambda t, c: t == "article"):
            return
        if self._inside(lambda t, c: t in ("script", "style")):
            return
        self.page.article_text += data
        if self._inside(lambda t, c: t == "h1") and not self.page.h1.endswith("\n"):
            self.page.h1 += data
        if self._inside(lambda t, c: "cell_output" in c):
            self.page.output_text.append(data)

    def close(self):
        super().close()
        self.page.h1 = re.sub(r"[#¶]", "", self.page.h1).strip()
        self.page.title = self.page.title.strip()


def parse_page(dom: str) -> RenderedPage:
    parser = _PageParser()
    parser.feed(dom)
    parser.close()
    return parser.page


def page_problems(page: RenderedPage) -> list[str]:
    """Why a rendered page is broken: no title or content, error output, a traceback."""
    problems = []
    if not page.h1:
        problems.append("no heading in the page's article")
    elif page.h1 not in page.title:
        problems.append(f"title {page.title!r} does not name the heading {page.h1!r}")
    if len(page.article_text.split()) < 20:
        problems.append("the article is (nearly) empty")
    problems += [f"error output block ({c})" for c in page.error_outputs]
    for text in ("".join(page.output_text), page.article_text):
        match = ERROR_TEXT.search(text)
        if match:
            problems.append(f"error text in the page: {match.group(0).strip()!r}")
            break
    return problems


def dump_dom(html_file: Path) -> str:
    """The DOM after Chromium loaded the page and ran its scripts."""
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
             html_file.resolve().as_uri()],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )
    if result.returncode != 0 or "<html" not in result.stdout:
        raise RuntimeError(f"chromium could not render {html_file} (exit {result.returncode}): "
                           f"{result.stderr[-500:]}")
    return result.stdout


# ---- the checker checks ------------------------------------------------------------------
CLEAN = """<html><head><title>Leaderboard — The BioBench book</title></head><body><article>
<h1>Leaderboard<a class="headerlink">#</a></h1><p>{prose}</p>
<div class="cell_output docutils container"><img src="a.png"/></div></article></body></html>"""
PROSE = "Every model on every task, with its score and interval. " * 3


def test_checker_accepts_a_clean_page_and_errors_named_in_prose():
    page = parse_page(CLEAN.format(prose=PROSE + " A ValueError in a sentence is fine."))
    assert page_problems(page) == []
    assert page.images == 1 and page.h1 == "Leaderboard"


@pytest.mark.parametrize("bad_output, expected", [
    ('<div class="output traceback highlight-ipythontb"><pre>Traceback (most recent call last):\n'
     '  File "x", line 1\nValueError: no store</pre></div>', "error output block"),
    ('<div class="cell_output docutils container"><pre>KeyError: \'score\'</pre></div>',
     "error text in the page"),
    ('<div class="output stderr"><pre>UserWarning: oops</pre></div>', "error output block"),
])
def test_checker_flags_error_output(bad_output, expected):
    dom = CLEAN.format(prose=PROSE).replace("</article>", bad_output + "</article>")
    problems = page_problems(parse_page(dom))
    assert any(expected in p for p in problems), problems


def test_checker_flags_an_empty_page_without_heading():
    problems = page_problems(parse_page("<html><head><title>x</title></head><body><article>"
                                        "<p>short</p></article></body></html>"))
    assert "no heading in the page's article" in problems
    assert "the article is (nearly) empty" in problems


# ---- the built site ----------------------------------------------------------------------
needs_site = pytest.mark.skipif(not (SITE / "index.html").is_file(),
                                reason="the book is not built (run `make book` first)")
needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                                    reason="Debian's chromium is not installed (`make test` installs it)")


@pytest.fixture(scope="module")
def rendered_pages() -> dict[str, RenderedPage]:
    docs = toc_documents()
    missing = [d for d in docs if not (SITE / f"{d}.html").is_file()]
    assert not missing, f"pages in _toc.yml that were not built: {missing}"
    # two at a time: one Chromium per CPU core
    with ThreadPoolExecutor(max_workers=2) as pool:
        doms = pool.map(lambda d: dump_dom(SITE / f"{d}.html"), docs)
        return {doc: parse_page(dom) for doc, dom in zip(docs, doms)}


@needs_site
@needs_chromium
def test_every_toc_page_renders_without_errors(rendered_pages):
    broken = {doc: problems for doc, page in rendered_pages.items()
              if (problems := page_problems(page))}
    assert not broken, f"pages with problems: {json.dumps(broken, indent=1)}"


@needs_site
@needs_chromium
def test_pages_that_plot_show_their_figures(rendered_pages):
    expected = [doc for doc in rendered_pages if source_makes_figures(source_file(doc))]
    assert expected, "no page in the toc produces a figure: the figure check checks nothing"
    without = [doc for doc in expected if rendered_pages[doc].images == 0]
    assert not without, f"pages whose source plots but which show no image: {without}"


@needs_site
def test_every_run_page_of_the_toc_was_built():
    runs = [d for d in toc_documents() if d.startswith("book/runs/") and not d.endswith("/index")]
    assert runs, "_toc.yml lists no run pages: run the grid (`make book`)"
    assert all((SITE / f"{d}.html").is_file() for d in runs)


def test_toc_documents_reads_files_sections_and_globs(tmp_path, monkeypatch):
    (tmp_path / "notes").mkdir()
    for name in ("b.md", "a.ipynb"):
        (tmp_path / "notes" / name).write_text("")
    (tmp_path / "_toc.yml").write_text(
        "root: intro\nparts:\n  - caption: P\n    chapters:\n      - file: ch\n        sections:\n"
        "          - file: ch/s1\n      - glob: notes/*\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert toc_documents(tmp_path / "_toc.yml") == ["intro", "ch", "ch/s1", "notes/a", "notes/b"]
