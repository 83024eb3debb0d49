"""Shared fixtures: seeded, quiet, CPU-only; the site built once for the book and site tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")


# The hidden tests draw their inputs from a seed (tutorlib.checks.draw); these tests fix it, and
# the ones that matter run under several, as a class of submissions would be graded.
HIDDEN_SEEDS = ("course-a", "course-b", "course-c", "course-d", "course-e")


@pytest.fixture(autouse=True)
def _seed() -> Iterator[None]:
    from tutorlib.checks import draw

    torch.manual_seed(0)
    previous = draw._SEED
    draw._use_seed("tests")
    yield
    draw._use_seed(previous)


def expect_hint(check, candidate, hint: str, hidden: bool = True, seeds=HIDDEN_SEEDS) -> None:
    """`check(candidate)` fails with a message that contains `hint`, whatever the hidden tests
    draw (under each of `seeds`)."""
    from tutorlib.checks import ExerciseError, draw

    for seed in seeds if hidden else ["visible"]:
        draw._use_seed(seed)
        with pytest.raises(ExerciseError) as error:
            check(candidate, hidden=hidden)
        assert hint in str(error.value), f"seed {seed}: {error.value}"


def expect_pass(check, candidate, seeds=HIDDEN_SEEDS) -> None:
    """`check(candidate)` passes the visible tests and, under each of `seeds`, the hidden ones."""
    from tutorlib.checks import draw

    check(candidate, hidden=False)
    for seed in seeds:
        draw._use_seed(seed)
        check(candidate, hidden=True)


@dataclass(frozen=True)
class Site:
    html: Path  # the built site's folder
    returncode: int
    log: str  # the build's output, its end kept


@pytest.fixture(scope="session")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """The site built from a clean state with warnings as errors (tests/test_site.py says why),
    once per session. SITE_HTML=<folder> tests a site built already instead (say _build/html
    after `make book`)."""
    if os.environ.get("SITE_HTML"):
        return Site(Path(os.environ["SITE_HTML"]).resolve(), 0, "")
    from tests.budgets import ROOT, book_pages, seed_cache

    out = tmp_path_factory.mktemp("site")
    seeded = seed_cache(out / "_build" / ".jupyter_cache")
    print(f"{len(seeded)} of {len(book_pages())} pages rendered from the budget tests' execution")
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    command = [str(jupyter_book), "build", str(ROOT), "--path-output", str(out), "-W", "-n"]
    result = subprocess.run([*command, "--keep-going"], capture_output=True, text=True)
    log = result.stdout[-6000:] + result.stderr[-6000:]
    return Site(out / "_build" / "html", result.returncode, log)
