"""The site builds from a clean state with warnings as errors.

An incremental rebuild skips unchanged pages and hides a page that fails to execute, and
without -W a failed execution still exits 0, so this builds into a fresh folder with -W.

Executing every page takes most of the build's time, and the budget tests (test_pages.py) have
just executed them, each in a fresh kernel. `make test` runs this test after them, and the build
starts from an execution cache seeded with those notebooks (`tests.budgets.seed_cache`): the ones
whose code and tutorlib sources are unchanged are rendered from it; any other page (and every
page when this test runs on its own) is executed by the build itself. The build is the
`built_site` fixture (tests/conftest.py), shared with the site tests (tests/test_site.py).
"""

from __future__ import annotations

from tests.budgets import ROOT, book_pages, solution_notebooks
from tests.conftest import Site


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
