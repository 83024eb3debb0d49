"""The site as readers meet it: a clean build with warnings as errors, then every page opened in a
real browser, links, search, launch buttons.

An incremental rebuild skips unchanged pages and hides a page that fails to execute, and
without -W a failed execution still exits 0, so the site is built into a fresh folder with -W
(the `built_site` fixture, tests/conftest.py; SITE_HTML=<folder> tests an existing build, such
as _build/html after `make book`, instead). Executing every page takes most of the build's time,
and the budget tests (test_pages.py) have just executed them, each in a fresh kernel. `make test`
runs this module after them, and the build starts from an execution cache seeded with those
notebooks (`tests.budgets.seed_cache`): the ones whose code and tutorlib sources are unchanged are
rendered from it; any other page (and every page when this module runs on its own) is executed
by the build itself.

The built site is served on localhost and
driven with Playwright in Debian's headless Chromium (`/usr/bin/chromium`, which `make test`
installs with apt when run as root; no browser is downloaded). Where Chromium is missing, the
browser tests skip with a warning; the link, launch-button and notebook checks still run.
Screenshots of the landing page and of each chapter's first page are written to
_build/test-artifacts/screenshots/.
"""

from __future__ import annotations

import functools
import html.parser
import json
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.budgets import ROOT, book_pages, is_notebook, solution_notebooks, toc_files
from tests.conftest import Site
from tests.notebooks import repository, stale

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
ARTIFACTS = ROOT / "_build" / "test-artifacts" / "screenshots"
PAGES = [*toc_files(), "genindex", "py-modindex", "search"]
# The landing page and each chapter's first page.
SCREENSHOTS = ["book/intro", *(f for f in toc_files() if re.fullmatch(r"book/0\d_\w+/01_\w+", f))]


def executable(name: str) -> bool:
    """Pages with launch buttons: the notebook pages and the exercises."""
    if name.startswith(("exercises/", "solutions/")):
        return True
    page = ROOT / f"{name}.md"
    return page.exists() and is_notebook(page)


EXECUTABLE = [name for name in toc_files() if executable(name)]


def test_book_builds_clean_with_warnings_as_errors(built_site: Site) -> None:
    assert built_site.returncode == 0, built_site.log
    html = built_site.html
    for page in [*book_pages(), *solution_notebooks()]:
        built = html / page.relative_to(ROOT).with_suffix(".html")
        assert built.exists(), f"{built} was not built"
        text = built.read_text()
        assert "cell_output" in text, f"{page.name} shows no executed output"
    reports = html / "reports"
    assert not reports.exists() or not any(reports.iterdir()), "execution reports were written"
    bibliography = (html / "book" / "bibliography.html").read_text()
    assert "Attention is all you need" in bibliography  # plain style lowercases titles


@pytest.fixture(scope="module")
def site(built_site: Site) -> Path:
    if built_site.returncode != 0:
        pytest.fail("the site did not build (see the test above):\n" + built_site.log[-3000:])
    return built_site.html


# --- Without a browser: links, launch buttons, launch notebooks --------------------------------


class Links(html.parser.HTMLParser):
    """The ids, links and image sources of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        for key in ("href", "src"):
            if a.get(key) and tag in ("a", "img", "link", "script", "iframe", "source"):
                self.links.append(a[key])


@functools.cache
def parse(path: Path) -> Links:
    parser = Links()
    parser.feed(path.read_text(errors="replace"))
    return parser


def test_no_broken_internal_links(site: Path) -> None:
    """Every relative link and image of every page points at a file of the site, and every
    #fragment at an id on its page."""
    broken = []
    pages = [p for p in sorted(site.rglob("*.html")) if "_static" not in p.parts]  # not templates
    for page in pages:
        for link in parse(page).links:
            parts = urllib.parse.urlsplit(link)
            if parts.scheme or link.startswith(("//", "mailto:", "javascript:")):
                continue
            path = urllib.parse.unquote(parts.path)
            target = (page.parent / path).resolve() if path else page
            if target.is_dir():
                target = target / "index.html"
            where = f"{page.relative_to(site)}: {link}"
            if not target.exists():
                broken.append(f"{where} (no such file)")
            elif parts.fragment and target.suffix == ".html":
                if urllib.parse.unquote(parts.fragment) not in parse(target).ids:
                    broken.append(f"{where} (no such anchor)")
    assert not broken, f"{len(broken)} broken links:\n" + "\n".join(broken[:40])


def test_launch_buttons_point_at_the_repository_and_the_notebook(site: Path) -> None:
    """Binder, Colab and JupyterHub (nbgitpuller) open the page's own notebook, which exists in
    the repository at that path."""
    url, branch = repository()
    org_repo = url.removeprefix("https://github.com/")
    repo = org_repo.split("/")[1]
    for name in EXECUTABLE:
        notebook = f"{name}.ipynb"
        assert (ROOT / notebook).exists(), f"{notebook} is missing (make notebooks)"
        links = parse(site / f"{name}.html").links
        expected = {
            "Binder": f"https://mybinder.org/v2/gh/{org_repo}/{branch}?urlpath=lab/tree/{notebook}",
            "Colab": f"https://colab.research.google.com/github/{org_repo}/blob/{branch}/{notebook}",
        }
        for service, link in expected.items():
            assert link in links, f"{name}: no {service} button to {link}"
        hub = [x for x in links if "/hub/user-redirect/git-pull?" in x]
        assert len(hub) == 1, f"{name}: no JupyterHub (nbgitpuller) button"
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(hub[0]).query)
        assert query == {
            "repo": [url],
            "urlpath": [f"lab/tree/{repo}/{notebook}"],
            "branch": [branch],
        }, f"{name}: {hub[0]}"


def test_launch_notebooks_are_current() -> None:
    """The notebooks the buttons open are the pages' cells (make notebooks writes them)."""
    assert not stale(), "stale launch notebooks (run make notebooks): " + ", ".join(
        p.relative_to(ROOT).as_posix() for p in stale()
    )


def test_launch_notebooks_are_tracked_by_git() -> None:
    """A launch notebook that is not committed is a broken button on the published site."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(
        ["git", "ls-files", "book", "exercises", "solutions"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.split()
    missing = [f"{f}.ipynb" for f in EXECUTABLE if f"{f}.ipynb" not in tracked]
    assert not missing, f"not committed: {missing}"


def test_every_executable_page_shows_its_compute_time(site: Path) -> None:
    for name in EXECUTABLE:
        text = (site / f"{name}.html").read_text()
        assert 'class="compute-note"' in text, f"{name} has no compute note"


def test_landing_page_says_how_long_each_chapter_takes(site: Path) -> None:
    text = (site / "book" / "intro.html").read_text()
    assert "course-overview" in text
    for chapter in range(1, 7):
        assert f"<td><p>{chapter}:" in text, f"chapter {chapter} missing from the overview"


# --- In the browser -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(site: Path) -> Iterator[str]:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=site))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if CHROMIUM is None:
        message = (
            "WARNING: Chromium is not installed, so the site was not tested in a browser "
            "(make test installs Debian's chromium with apt when it runs as root)"
        )
        print(message, file=sys.stderr)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


class Visit:
    """One page opened in the browser, with what went wrong on the way."""

    def __init__(self, browser: object, base: str, name: str) -> None:
        self.url = urllib.parse.urljoin(base, f"{name}.html")
        self.base = base
        self.problems: list[str] = []
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", self._failed)
        self.page.on("response", self._response)
        self.page.goto(self.url, wait_until="load")
        # MathJax typesets after load; wait for it where the page has math.
        self.page.evaluate(
            "() => window.MathJax && MathJax.startup ? MathJax.startup.promise : null"
        )

    def _console(self, message: object) -> None:
        if message.type == "error":
            self.problems.append(f"console error: {message.text}")

    def _failed(self, request: object) -> None:
        self.problems.append(f"request failed: {request.url} ({request.failure})")

    def _response(self, response: object) -> None:
        if response.url.startswith(self.base) and response.status >= 400:
            self.problems.append(f"HTTP {response.status}: {response.url}")


@pytest.mark.parametrize("name", PAGES)
def test_page_in_the_browser(browser: object, server: str, name: str) -> None:
    """The page loads with no console error and no failed request, its math is typeset, its
    images loaded and described, and the sidebar navigation leads to it."""
    visit = Visit(browser, server, name)
    page = visit.page
    try:
        math = page.evaluate("() => document.querySelectorAll('.math').length")
        typeset = page.evaluate("() => document.querySelectorAll('mjx-container').length")
        errors = page.evaluate("() => document.querySelectorAll('mjx-merror').length")
        if math:
            assert typeset >= math, f"{name}: {typeset} of {math} formulas typeset"
        assert not errors, f"{name}: {errors} formulas with TeX errors"
        images = page.evaluate(
            """() => [...document.images].map(i => ({src: i.currentSrc,
                ok: i.complete && i.naturalWidth > 0, alt: (i.alt || '').trim()}))"""
        )
        unloaded = [i["src"] for i in images if not i["ok"]]
        assert not unloaded, f"{name}: images that did not load: {unloaded}"
        undescribed = [i["src"] for i in images if not i["alt"]]
        assert not undescribed, f"{name}: images without alt text: {undescribed}"
        if name in toc_files() and name != "book/intro":
            # The page's own entry in the sidebar is marked current, inside its open chapter.
            current = page.evaluate(
                """() => [...document.querySelectorAll('nav.bd-docs-nav li.current > a')]
                    .map(a => a.href.split('#')[0])"""
            )
            assert visit.url in current, f"{name}: the sidebar does not lead here ({current})"
        assert not visit.problems, f"{name}:\n" + "\n".join(visit.problems)
        if name in EXECUTABLE:
            cells = page.evaluate("() => document.querySelectorAll('div.cell_input pre').length")
            copy = page.evaluate("() => document.querySelectorAll('button.copybtn').length")
            assert copy >= cells > 0, f"{name}: {copy} copy buttons for {cells} code cells"
        if name in SCREENSHOTS:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / (name.replace("/", "__") + ".png")
            page.screenshot(path=str(shot), full_page=False)
    finally:
        page.close()


def test_sidebar_reaches_every_page(browser: object, server: str) -> None:
    """From the landing page, the sidebar links every page of the table of contents, and
    following one (a chapter's first page) lands there."""
    visit = Visit(browser, server, "book/intro")
    page = visit.page
    try:
        hrefs = page.evaluate(
            "() => [...document.querySelectorAll('nav.bd-docs-nav a')].map(a => a.href)"
        )
        wanted = {urllib.parse.urljoin(server, f"{f}.html") for f in toc_files()}
        wanted.discard(urllib.parse.urljoin(server, "book/intro.html"))
        missing = sorted(wanted - set(hrefs))
        assert not missing, f"pages the sidebar does not link: {missing}"
        page.click("nav.bd-docs-nav a[href$='02_attention/index.html']")
        page.wait_for_load_state("load")
        assert page.url.endswith("book/02_attention/index.html"), page.url
        assert page.title().startswith("Chapter 2: Attention"), page.title()
    finally:
        page.close()


def test_search_finds_attention(browser: object, server: str) -> None:
    visit = Visit(browser, server, "search")
    page = visit.page
    try:
        page.goto(urllib.parse.urljoin(server, "search.html?q=attention"))
        # Results arrive one at a time; the summary says when the search has finished.
        page.wait_for_function(
            "() => /^Search finished/.test("
            "document.querySelector('#search-results .search-summary')?.innerText || '')",
            timeout=30_000,
        )
        results = page.evaluate(
            "() => [...document.querySelectorAll('#search-results ul.search li a')]"
            ".map(a => a.href)"
        )
        assert len(results) >= 10, results
        assert any("02_attention" in r for r in results), results
    finally:
        page.close()


def test_launch_menu_opens_in_the_browser(browser: object, server: str) -> None:
    """The rocket button shows Binder, Colab and JupyterHub links to the page's notebook."""
    name = "book/02_attention/02_scaled_dot_product"
    visit = Visit(browser, server, name)
    page = visit.page
    try:
        page.click("button[aria-label='Launch interactive content']")
        for service in ("Binder", "Colab", "JupyterHub"):
            link = page.locator(f"a.btn:has-text('{service}')").first
            assert link.is_visible(), f"no visible {service} button"
            assert link.get_attribute("href").endswith(f"{name}.ipynb") or (
                service == "JupyterHub" and f"{name}.ipynb" in link.get_attribute("href")
            )
    finally:
        page.close()


def test_compute_notes_agree_with_the_readme_budgets() -> None:
    """book/budgets.json (the pages' compute notes) holds the README's measured table."""
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `([^`]+)` \| (\d+) \| (\d+) \|$", text, re.M)
    data = json.loads((ROOT / "book" / "budgets.json").read_text())["notebooks"]
    assert rows, "no budget table in README.md"
    readme = {p: {"seconds": int(s), "peak_mb": int(m)} for p, s, m in rows}
    assert readme == data, "run make budgets: README.md and book/budgets.json differ"


def test_long_outputs_are_collapsed() -> None:
    """A text output of more than LONG_OUTPUT_LINES lines is collapsed behind a button; a short
    one is left open (the site's extension, book/_ext/course_site.py)."""
    from docutils import nodes
    from docutils.utils import new_document

    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    import course_site

    document = new_document("page")
    long, short = (nodes.container(classes=["cell_output"]) for _ in range(2))
    long += nodes.literal_block(text="\n".join(map(str, range(course_site.LONG_OUTPUT_LINES + 1))))
    short += nodes.literal_block(text="\n".join(map(str, range(course_site.LONG_OUTPUT_LINES))))
    document += [long, short]
    course_site.collapse_long_outputs(None, document, "page")
    assert "toggle" in long["classes"] and "toggle" not in short["classes"]


def test_the_build_reports_each_pages_execution_time(site: Path) -> None:
    """`make book` ends with this table: every executed page, its seconds, and how it ran."""
    text = (site.parent / "execution-times.txt").read_text()
    for name in EXECUTABLE:
        if not name.startswith("exercises/"):  # shown, not executed
            assert re.search(
                rf"^  {re.escape(name)} +[0-9.]+  (executed now|from the cache)$", text, re.M
            ), f"{name} missing from the table:\n{text}"


def test_merged_streams_leave_the_cell_outputs_unchanged() -> None:
    """The page shows a cell's printed lines as one block (`nb_merge_streams`); the executed
    notebook it offers for download keeps the outputs as they were (book/_ext/course_site.py)."""
    import nbformat
    from myst_nb.core import render

    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    import course_site

    course_site.merge_streams_on_copies()
    course_site.merge_streams_on_copies()  # twice: still one layer
    outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="first\n"),
        nbformat.v4.new_output("display_data", data={"text/plain": "a progress bar"}),
        nbformat.v4.new_output("stream", name="stdout", text="second\n"),
    ]
    merged = render.coalesce_streams(outputs)
    assert [o["output_type"] for o in merged] == ["stream", "display_data"]
    assert merged[0]["text"] == "first\nsecond\n"
    assert outputs[0]["text"] == "first\n" and outputs[2]["text"] == "second\n"


def test_downloadable_notebooks_print_each_line_once(site: Path) -> None:
    """No cell of an executed notebook offered for download repeats, in a later stdout output,
    a line already in its first one (which in-place merging of streams used to do)."""
    repeated = []
    for path in sorted((site / "_sources").glob("book/*/*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            texts = [
                "".join(o["text"]) if isinstance(o["text"], list) else o["text"]
                for o in cell.get("outputs", [])
                if o.get("output_type") == "stream" and o.get("name") == "stdout"
            ]
            if any(t.strip() and t in texts[0] for t in texts[1:]):
                repeated.append(f"{path.relative_to(site)} cell {i}")
    assert not repeated, repeated
