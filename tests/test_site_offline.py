"""The built book works with no network at all, as a workshop laptop sees it.

Every page of ``_toc.yml`` is loaded from ``_build/html`` in headless Chromium with the network
switched off (DevTools' offline emulation, and every host name resolving to nothing), driven over
the DevTools protocol on a pipe (no extra Python package). On every page:

- no request failed, and no request left the machine (only file:, data:, blob: and about: URLs);
- no raw math is left in the rendered text (``\\(``, ``\\[``, ``$$``): MathJax ran, from disk;
- no absolute path of the build machine (/root/, /work/, /tmp/, /home/..., the checkout, the
  home folder) in the text or in any attribute;
- no "nan", "NaN", "None", "<NA>" where a value belongs (a table cell or a glued value), and no
  "nan"/"NaN" as a word anywhere in the text.

Skipped with a reason when the book is not built or Chromium is missing, like tests/test_site.py.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.test_site import CHROMIUM_FLAGS, ROOT, SITE, toc_documents

PAGE_TIMEOUT_S = 60
# requests that stay on the machine; anything else would need the network
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome-extension:")
RAW_MATH = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$")
MISSING_VALUE = {"nan", "NaN", "None", "<NA>", "NaT", "null", "undefined"}
NAN_WORD = re.compile(r"(?<![\w.])(nan|NaN)(?![\w])")


def machine_path_pattern(extra: tuple[str, ...] = ()) -> re.Pattern:
    """Absolute paths of a build machine, bare or in a file: URL, but not inside another URL or
    word (``https://example.org/work/`` and ``~/tmp/`` are not machine paths)."""
    roots = {"/root/", "/work/", "/tmp/", "/home/", *extra}
    alternatives = "|".join(re.escape(r) for r in sorted(roots, key=len, reverse=True))
    return re.compile(rf"(?:(?<=file://)|(?<![\w.:/~-]))(?:{alternatives})")


MACHINE_PATH = machine_path_pattern((f"{Path.home()}/", f"{ROOT}/"))

# Runs in the page once it has loaded: waits for MathJax's first typeset when MathJax is there,
# then returns what the checks read. Code *inputs* (cell sources, code blocks, inline code) are
# left out of the text: "$$" or "None" may be code; outputs are kept.
COLLECT_JS = r"""
(async () => {
  const mj = window.MathJax;
  if (mj && mj.startup && mj.startup.promise) { await mj.startup.promise; }
  await new Promise(r => setTimeout(r, 100));
  const root = document.querySelector('article') || document.body;
  const clone = root.cloneNode(true);
  clone.querySelectorAll('script, style, .cell_input, code, mjx-assistive-mml, .MathJax_Preview')
       .forEach(e => { if (!e.closest('.cell_output')) e.remove(); });
  const cells = [...root.querySelectorAll('td, th')].map(e => e.innerText.trim());
  const glued = [...root.querySelectorAll('.pasted-text, .pasted-inline')]
                .map(e => e.innerText.trim());
  const attrs = [];
  for (const e of document.querySelectorAll('*')) {
    for (const a of e.attributes) { attrs.push(a.value); }
  }
  document.body.appendChild(clone);  // innerText needs a rendered node
  const text = clone.innerText;
  clone.remove();
  return {text, cells, glued, attrs, mathjax: !!(mj && mj.startup)};
})()
"""


# ---- what one page showed, and what is wrong with it --------------------------------------
@dataclass
class OfflinePage:
    url: str
    text: str = ""
    cells: list[str] = field(default_factory=list)
    glued: list[str] = field(default_factory=list)
    attrs: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def offline_problems(page: OfflinePage) -> list[str]:
    problems = [f"failed request: {f}" for f in page.failed]
    problems += [f"request needs the network: {u}" for u in page.requests
                 if not u.startswith(LOCAL_SCHEMES)]
    for match in RAW_MATH.finditer(page.text):
        context = page.text[max(0, match.start() - 30):match.end() + 30].replace("\n", " ")
        problems.append(f"raw math {match.group(0)!r} in the text: ...{context}...")
        break
    for where, values in (("text", [page.text]), ("attribute", page.attrs)):
        for value in values:
            match = MACHINE_PATH.search(value)
            if match:
                context = value[max(0, match.start() - 40):match.end() + 60].replace("\n", " ")
                problems.append(f"absolute machine path in the {where}: ...{context}...")
                break
    problems += [f"missing value {v!r} in a table cell" for v in sorted(set(page.cells))
                 if v in MISSING_VALUE]
    problems += [f"missing value {v!r} glued into the prose" for v in sorted(set(page.glued))
                 if v in MISSING_VALUE]
    match = NAN_WORD.search(page.text)
    if match:
        context = page.text[max(0, match.start() - 40):match.end() + 40].replace("\n", " ")
        problems.append(f"{match.group(0)!r} in the text: ...{context}...")
    return problems


# ---- Chromium over the DevTools protocol, on a pipe -------------------------------------------
class DevToolsPipe:
    """One headless Chromium, spoken to with --remote-debugging-pipe (fd 3 in, fd 4 out)."""

    def __init__(self):
        self._profile = tempfile.TemporaryDirectory()
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_fds():  # in the child, before exec: Chromium reads fd 3 and writes fd 4
            # move both ends above 4 first, so that placing one cannot overwrite the other
            read_end = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            write_end = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(read_end, 3)  # dup2 leaves 3 and 4 inheritable; Python's own fds are not
            os.dup2(write_end, 4)

        self._proc = subprocess.Popen(
            ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={self._profile.name}",
             "--remote-debugging-pipe",
             # no name resolves and no proxy answers: a request that slips past the offline
             # emulation still fails instead of reaching the network
             "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=False, preexec_fn=wire_fds)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = PAGE_TIMEOUT_S) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline, f"{method}")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"Chromium refused {method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str, timeout: float = PAGE_TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout
        for i, event in enumerate(self.events):
            if event.get("method") == method and event.get("sessionId") == session:
                return self.events.pop(i)
        while True:
            event = self._read(deadline, method)
            if event.get("method") == method and event.get("sessionId") == session:
                return event
            self.events.append(event)

    def _read(self, deadline: float, waiting_for: str) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(left, 0))
            if not ready:
                raise TimeoutError(f"Chromium did not answer {waiting_for} in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (code {self._proc.poll()}) while waiting "
                                   f"for {waiting_for}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def load(self, url: str) -> OfflinePage:
        """Open ``url`` in a fresh tab with the network off; what it showed and requested."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Network.enable", "Page.enable", "Runtime.enable"):
            self.send(domain, session=session)
        self.send("Network.emulateNetworkConditions",
                  {"offline": True, "latency": 0, "downloadThroughput": -1,
                   "uploadThroughput": -1}, session=session)
        self.events.clear()
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session)
        result = self.send("Runtime.evaluate", {"expression": COLLECT_JS, "awaitPromise": True,
                                                "returnByValue": True}, session=session)
        if "exceptionDetails" in result:
            raise RuntimeError(f"collecting {url} failed: {result['exceptionDetails']}")
        value = result["result"]["value"]
        page = OfflinePage(url, value["text"], value["cells"], value["glued"], value["attrs"])
        urls = {}
        for event in self.events:
            if event.get("sessionId") != session:
                continue
            params = event.get("params", {})
            if event.get("method") == "Network.requestWillBeSent":
                urls[params["requestId"]] = params["request"]["url"]
                page.requests.append(params["request"]["url"])
            elif event.get("method") == "Network.loadingFailed" and not params.get("canceled"):
                page.failed.append(f"{urls.get(params['requestId'], '?')} "
                                   f"({params.get('errorText', '')})")
        self.events.clear()
        self.send("Target.closeTarget", {"targetId": target})
        return page

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self._profile.cleanup()


# ---- the checker checks --------------------------------------------------------------------
def test_checker_accepts_a_clean_page():
    page = OfflinePage("file:///x.html", text="The pooled R² is 0.555 for 84 models. None of the "
                       "models is tied. https://example.org/work/x and ~/tmp/ are fine.",
                       cells=["0.555", "BioCLIP"], glued=["0.555", "n/a"],
                       attrs=["_static/mathjax/es5/tex-svg.js", "https://example.org/tmp/a"],
                       requests=["file:///x.html", "data:image/png;base64,AAA"])
    assert offline_problems(page) == []


@pytest.mark.parametrize("change, expected", [
    (dict(failed=["file:///_static/x.js (net::ERR_FILE_NOT_FOUND)"]), "failed request"),
    (dict(requests=["https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"]),
     "request needs the network"),
    (dict(text=r"the interval \(\hat\theta \pm 1.96\) is"), "raw math"),
    (dict(text="$$ a = b $$"), "raw math"),
    (dict(text="data in /root/.cache/biobench/data/beluga is missing"), "absolute machine path"),
    (dict(attrs=["file:///work/main/_build/html/x.png"]), "absolute machine path"),
    (dict(text=f"read from {ROOT}/results"), "absolute machine path"),
    (dict(cells=["0.5", "nan"]), "missing value 'nan' in a table cell"),
    (dict(cells=["None"]), "missing value 'None' in a table cell"),
    (dict(glued=["NaN"]), "missing value 'NaN' glued"),
    (dict(text="ties with the best: NaN"), "'NaN' in the text"),
])
def test_checker_flags_each_problem(change, expected):
    page = OfflinePage("file:///x.html", **{"text": "A clean page with enough prose.", **change})
    problems = offline_problems(page)
    assert any(expected in p for p in problems), problems


# ---- the harness itself, on a page made to fail ------------------------------------------------
needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                                    reason="Debian's chromium is not installed (`make test` installs it)")
needs_site = pytest.mark.skipif(not (SITE / "index.html").is_file(),
                                reason="the book is not built (run `make book` first)")


@pytest.fixture(scope="module")
def browser():
    chromium = DevToolsPipe()
    try:
        yield chromium
    finally:
        chromium.close()


@needs_chromium
def test_harness_sees_network_requests_missing_files_and_raw_math(browser, tmp_path):
    page_file = tmp_path / "broken.html"
    page_file.write_text(
        "<html><body><article><p>The estimate \\(\\hat\\theta\\) is raw.</p>"
        "<p>Data not found in /root/.cache/biobench/data/beluga.</p>"
        '<img src="https://cdn.example.org/figure.png"><img src="missing.png">'
        "<table><tr><td>nan</td></tr></table></article></body></html>")
    problems = offline_problems(browser.load(page_file.as_uri()))
    assert any("request needs the network: https://cdn.example.org/figure.png" in p
               for p in problems), problems
    assert any("failed request" in p and "missing.png" in p for p in problems), problems
    assert any("raw math" in p for p in problems), problems
    assert any("missing value 'nan' in a table cell" in p for p in problems), problems
    assert any("absolute machine path in the text" in p and "/root/.cache" in p
               for p in problems), problems


@needs_chromium
def test_harness_accepts_a_clean_local_page(browser, tmp_path):
    (tmp_path / "dot.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>')
    page_file = tmp_path / "clean.html"
    page_file.write_text("<html><body><article><p>The pooled R² is 0.555.</p>"
                         '<img src="dot.svg"></article></body></html>')
    page = browser.load(page_file.as_uri())
    assert "0.555" in page.text
    assert page.requests and all(u.startswith("file:") for u in page.requests)
    assert not page.failed
    assert offline_problems(page) == []


# ---- the built site --------------------------------------------------------------------------
@needs_site
@needs_chromium
def test_every_page_works_offline(browser):
    docs = toc_documents()
    missing = [d for d in docs if not (SITE / f"{d}.html").is_file()]
    assert not missing, f"pages in _toc.yml that were not built (run `make book`): {missing}"
    broken = {}
    mathjax_pages = 0
    for doc in docs:
        page = browser.load((SITE / f"{doc}.html").as_uri())
        mathjax_pages += any("mathjax" in u for u in page.requests)
        if problems := offline_problems(page):
            broken[doc] = problems
    assert mathjax_pages, "no page loaded MathJax: the raw-math check checked nothing"
    assert not broken, ("pages that need the network or show raw math, machine paths or missing "
                        f"values:\n{json.dumps(broken, indent=1, ensure_ascii=False)}")


# ---- the bibliography resolves every citation ----------------------------------------------
CITE_ROLE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]+)`")
BIB_ENTRY = re.compile(r"^@(\w+)\{([^,\s]+),(.*?)^\}", re.M | re.S)


def bib_entries(text: str) -> dict[str, str]:
    """Key -> body of each entry of a .bib file (comment lines start with %)."""
    return {key: body for kind, key, body in BIB_ENTRY.findall(text) if kind.lower() != "comment"}


def cited_keys(text: str) -> set[str]:
    return {key.strip() for keys in CITE_ROLE.findall(text) for key in keys.split(",")}


def test_citation_parsers_on_a_sample():
    bib = "% note\n@misc{a2020,\n  title = {A},\n  url = {https://x.org}\n}\n@article{b,\n doi = {1}\n}\n"
    assert set(bib_entries(bib)) == {"a2020", "b"}
    assert cited_keys("see {cite:p}`a2020,b` and {cite}`c` and {cite:t}`d`") == {"a2020", "b", "c", "d"}


def test_every_citation_resolves_to_an_entry_with_a_link():
    entries = bib_entries((ROOT / "book" / "references.bib").read_text())
    sources = [p for folder in ("book", "notebooks") for p in (ROOT / folder).rglob("*.md")]
    cited = {}
    for path in sources:
        for key in cited_keys(path.read_text()):
            cited.setdefault(key, []).append(path.relative_to(ROOT).as_posix())
    assert "stevens2025biobench" in cited, "the BioBench paper is never cited"
    unknown = {key: files for key, files in cited.items() if key not in entries}
    assert not unknown, f"cited but not in book/references.bib: {unknown}"
    without_link = [key for key, body in entries.items()
                    if not re.search(r"^\s*(doi|eprint|url)\s*=", body, re.M)]
    assert not without_link, f"bibliography entries with no DOI, arXiv id or URL: {without_link}"


def test_every_task_chapter_cites_its_dataset():
    chapters = [p for p in (ROOT / "book" / "tasks").glob("*.md") if p.stem != "index"]
    assert chapters, "no task chapters found"
    uncited = [p.name for p in chapters if not cited_keys(p.read_text())]
    assert not uncited, f"task chapters that cite no dataset: {uncited}"
