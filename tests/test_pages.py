"""Every book page and solution notebook executes without error, within its time and memory
budget (90 s and 1 GB on a 2-core CPU, no GPU, no network)."""

from __future__ import annotations

import pytest

from tests.budgets import (
    MEMORY_BUDGET_MB,
    ROOT,
    SECONDS_BUDGET,
    book_pages,
    measure,
    solution_notebooks,
)

NOTEBOOKS = [*book_pages(), *solution_notebooks()]


def test_every_chapter_page_is_in_the_build() -> None:
    pages = {p.relative_to(ROOT).as_posix() for p in book_pages()}
    on_disk = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "book").glob("*/*.md")
        if p.name != "index.md"
    }
    assert on_disk <= pages, f"pages missing from _toc.yml: {sorted(on_disk - pages)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.relative_to(ROOT).as_posix() for p in NOTEBOOKS])
def test_notebook_runs_within_budget(path) -> None:
    m = measure(path)
    assert m.seconds <= SECONDS_BUDGET, (
        f"{m.path} took {m.seconds:.0f} s (budget {SECONDS_BUDGET} s)"
    )
    assert m.peak_mb <= MEMORY_BUDGET_MB, f"{m.path} peaked at {m.peak_mb:.0f} MB"
