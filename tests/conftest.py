"""Shared fixtures: seeded, quiet, CPU-only."""

from __future__ import annotations

import matplotlib
import pytest
import torch

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def expect_hint(check, candidate, hint: str, hidden: bool = True) -> None:
    """`check(candidate)` fails with a message that contains `hint`."""
    from tutorlib.checks import ExerciseError

    with pytest.raises(ExerciseError) as error:
        check(candidate, hidden=hidden)
    assert hint in str(error.value), str(error.value)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `pytest -n 2 --dist loadgroup` (make test), keep each module's tests on one worker, so
    its module-scoped fixtures (nbgrader round trips, checks) are built once, except the page
    budget tests: each page is a long test of its own, and they are shared out between the workers.
    """
    for item in items:
        if item.path.name != "test_pages.py":
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
