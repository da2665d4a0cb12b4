"""Leaderboards people can read: in headless Chromium at 1,366 x 768, the first screen of each
leaderboard page shows task score columns next to the model names, and the model column stays
put when the scores scroll sideways.

The layout is measured in the browser itself: a copy of the page gets a small script that reads
the rendered cells' bounding boxes (``getBoundingClientRect``) after load and writes them into
the DOM, which Chromium's ``--dump-dom`` returns. The built-site tests are skipped without
``_build/html`` (``make book`` builds it); the table test renders ``leaderboard_html`` alone.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from biobench import analysis

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "_build" / "html"
VIEWPORT = (1366, 768)
MIN_TASK_COLUMNS = 4
# each leaderboard page and the id of its table
LEADERBOARD_PAGES = {
    "notebooks/published/leaderboard.html": "published-leaderboard",
    "notebooks/analysis/leaderboard.html": "own-leaderboard",
}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--hide-scrollbars", f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}"]

needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                                    reason="Debian's chromium is not installed (`make test` installs it)")

# Runs in the page after load: for the table, which task columns of its first row are wholly on
# the first screen (at scroll 0, inside the viewport) to the right of a visible model name; then
# the same after scrolling the table's container to its right end.
MEASURE_SCRIPT = """
<script>
var measured = false;
function measureLayout() {
  if (measured) { return; }
  measured = true;
  var table = document.getElementById("%(table_id)s");
  var result = {found: !!table};
  if (table) {
    var vw = window.innerWidth, vh = window.innerHeight;
    var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
    var row = table.tBodies[0].rows[0];
    var box = function (el) { var r = el.getBoundingClientRect();
      return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; };
    var scroller = table.parentElement;
    // visible = inside the viewport and inside the scrolling box that clips the table
    var onScreen = function (r) {
      var clip = scroller.getBoundingClientRect();
      var right = Math.min(vw, clip.left + scroller.clientWidth);
      var bottom = Math.min(vh, clip.top + scroller.clientHeight);
      return r.right > r.left && r.left >= Math.max(0, clip.left) - 1 && r.right <= right + 1 &&
        r.top >= Math.max(0, clip.top) - 1 && r.bottom <= bottom + 1; };
    var measure = function () {
      var name = box(row.cells[0]);
      var shown = [];
      heads.forEach(function (th, i) {
        if (th.getAttribute("data-kind") !== "task") { return; }
        var cell = box(row.cells[i]);
        // wholly visible and not hidden under the sticky model column
        if (onScreen(cell) && cell.left >= name.right - 1) { shown.push(th.textContent); }
      });
      return {model_visible: onScreen(name), model_box: name, task_columns_shown: shown};
    };
    window.scrollTo(0, 0);
    result.n_task_columns = heads.filter(function (th) {
      return th.getAttribute("data-kind") === "task"; }).length;
    result.headers = heads.map(function (th) { return th.textContent; });
    result.first_screen = measure();
    scroller.scrollLeft = scroller.scrollWidth;
    result.scrolled_right = measure();
    result.container_left = box(scroller).left;
  }
  var out = document.createElement("pre");
  out.id = "layout-measurement";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
}
// after load; a page whose load never ends (a resource that hangs offline) is measured anyway
window.addEventListener("load", measureLayout);
setTimeout(measureLayout, 3000);
</script>
"""


def measure_layout(html_text: str, base: Path, table_id: str) -> dict:
    """Render ``html_text`` (links resolved against folder ``base``) at the test viewport and
    return what ``MEASURE_SCRIPT`` measured."""
    script = MEASURE_SCRIPT % {"table_id": table_id}
    base_tag = f'<base href="{base.as_uri()}/">'
    page = re.sub(r"(<head[^>]*>)", lambda m: m.group(1) + base_tag, html_text, count=1)
    page = page.replace("</body>", script + "</body>") if "</body>" in page else page + script
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "page.html"
        path.write_text(page, encoding="utf-8")
        result = subprocess.run(
            ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={Path(tmp) / 'profile'}",
             "--virtual-time-budget=5000", "--dump-dom", path.as_uri()],
            capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="layout-measurement"[^>]*>(.*?)</pre>', result.stdout, re.S)
    if not found:
        raise RuntimeError(f"chromium returned no layout measurement for {table_id} "
                           f"(exit {result.returncode}): {result.stderr[-500:]}")
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def check_first_screen(measured: dict, where: str) -> None:
    assert measured["found"], f"{where}: no table with the leaderboard's id"
    wanted = min(MIN_TASK_COLUMNS, measured["n_task_columns"])
    first = measured["first_screen"]
    assert first["model_visible"], f"{where}: the first row's model name is not on the first screen"
    assert len(first["task_columns_shown"]) >= wanted, (
        f"{where}: the first screen at {VIEWPORT[0]} x {VIEWPORT[1]} shows "
        f"{len(first['task_columns_shown'])} task column(s) next to the model names "
        f"({first['task_columns_shown']}), fewer than {wanted}; headers: {measured['headers']}")
    # the model column is sticky: scrolled to the far right, the name is still at the left edge
    scrolled = measured["scrolled_right"]
    assert scrolled["model_visible"], f"{where}: the model name scrolls away with the scores"
    assert abs(scrolled["model_box"]["left"] - first["model_box"]["left"]) < 2, where


# ---- the table on its own: no built site needed -------------------------------------------
def wide_board(n_models: int = 30, tasks: tuple[str, ...] = (
        "imagenet1k", *analysis.BENCHMARK_TASKS_WITH_ECDYSIS, "newt", "inat21"),
               ) -> tuple[pd.DataFrame, list[str]]:
    """A leaderboard as wide as the published one (13 tasks, two means), long model names."""
    rng = np.random.default_rng(0)
    models = pd.DataFrame({
        "model": [f"m{i}" for i in range(n_models)],
        "display": [f"Perception Encoder ViT-G/14 variant {i}" for i in range(n_models)],
        "family": "Perception Encoder", "params": 1.8e9, "resolution": 448, "imagenet_top1": 0.85,
    })
    runs = pd.DataFrame([{"task": t, "model": m, "score": s, "ci_low": s - 0.03, "ci_high": s + 0.03,
                          "extra": {"tied_with_best": bool(s > 0.9)}}
                         for t in tasks for m, s in zip(models["model"], rng.uniform(0.1, 0.99, n_models))])
    return analysis.leaderboard(runs, models, list(tasks)), list(tasks)


@needs_chromium
def test_table_alone_shows_four_task_columns_in_a_784px_column():
    board, tasks = wide_board()
    table = analysis.leaderboard_html(board, tasks, table_id="layout-test", imagenet_label=None)
    # the book theme's content column at 1,366 px is about 784 px wide
    page = (f'<html><head><meta charset="utf-8"></head><body style="margin: 0">'
            f'<div style="width: 784px; margin-left: 290px">{table}</div></body></html>')
    measured = measure_layout(page, ROOT, "layout-test")
    check_first_screen(measured, "leaderboard_html in a 784 px column")
    # the collapsed model details are not taking room on load
    assert measured["headers"][1] == "Family"


@needs_chromium
def test_checker_fails_a_table_that_hides_its_scores():
    # a table whose model column alone fills the screen: the check must notice
    board, tasks = wide_board(n_models=5)
    table = analysis.leaderboard_html(board, tasks, table_id="layout-test", imagenet_label=None)
    table = table.replace("</style>", "#layout-test td:first-child { min-width: 1150px; }</style>", 1)
    page = f'<html><head></head><body style="margin: 0">{table}</body></html>'
    measured = measure_layout(page, ROOT, "layout-test")
    with pytest.raises(AssertionError, match="fewer than 4"):
        check_first_screen(measured, "a too-wide model column")


# ---- the built site -----------------------------------------------------------------------
@needs_chromium
@pytest.mark.skipif(not SITE.is_dir(), reason="the book is not built (`make book` builds _build/html)")
@pytest.mark.parametrize("page, table_id", sorted(LEADERBOARD_PAGES.items()))
def test_first_screen_of_each_leaderboard_shows_task_scores_next_to_model_names(page, table_id):
    path = SITE / page
    if not path.is_file():
        pytest.skip(f"{page} is not in this build")
    html_text = path.read_text(encoding="utf-8")
    if f'id="{table_id}"' not in html_text:
        # the published page without the published file: a note instead of a table
        assert "not available" in html_text, f"{page} has neither its table nor the note"
        pytest.skip(f"{page} was built without its data (it shows the note)")
    measured = measure_layout(html_text, path.parent, table_id)
    check_first_screen(measured, page)
    headers = " ".join(measured["headers"])
    assert "imagenet_rank" not in headers and "_" not in headers, f"{page}: internal column names"
    table_html = html_text.split(f'id="{table_id}"')[1].split("</table>")[0]
    assert not re.search(r">\s*(nan|none|true|false)\s*<", table_html, re.I), f"{page}: a raw value"


RAW_CELL = re.compile(r"<td[^>]*>\s*(nan|none|true|false)\s*</td>", re.I)


@pytest.mark.skipif(not SITE.is_dir(), reason="the book is not built (`make book` builds _build/html)")
@pytest.mark.parametrize("page", sorted(LEADERBOARD_PAGES))
def test_leaderboard_pages_print_no_raw_values_in_any_table(page):
    path = SITE / page
    if not path.is_file():
        pytest.skip(f"{page} is not in this build")
    raw = sorted({m.group(1) for m in RAW_CELL.finditer(path.read_text(encoding="utf-8"))})
    assert not raw, f"{page} prints {raw} in a table cell where a value or a mark belongs"


def test_raw_cell_pattern_catches_what_a_dataframe_prints():
    frame = pd.DataFrame({"tied with best": [True, False], "p": [np.nan, 0.5]})
    assert {m.group(1) for m in RAW_CELL.finditer(frame.to_html())} == {"True", "False", "NaN"}
    assert not RAW_CELL.search("<td>≈ tied with the best</td><td>–</td>")
