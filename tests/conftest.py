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
