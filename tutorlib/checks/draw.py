"""Inputs for the hidden tests, drawn when the tests run.

A hidden test is a property test: its sizes, values and special cases come from a `Draw`,
seeded by the submission's grading seed (`tutorlib.checks.secret`) when an instructor's grader
runs it, by `TUTORLIB_HIDDEN_SEED` when one is set (the course's own tests and book build set
one, so that their outputs repeat), and by fresh randomness otherwise: a learner who calls a
check with `hidden=True` at home gets new inputs on every call, which is just more testing.
Each check draws its own stream (`hidden_draw(name)`), so checks do not depend on one another,
and each run of a check draws anew, so a run the submission makes itself tells it nothing about
the inputs of the test cell's run.

Visible tests do not draw: their inputs are the notebook's worked examples (`random_tensor`
with a fixed seed where they need a few numbers).

Book: the exercises of every chapter; Instructors (hidden tests).
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor

from tutorlib.checks.secret import SECRET_ENV, SEED_ENV, submission_seed

__all__ = ["Draw", "hidden_draw", "random_tensor"]

T = TypeVar("T")


def _seed_from_environment() -> str | None:
    """The grading seed: derived from the course's secret when the grader passed it to this
    kernel directly (nbgrader's own kernel), else TUTORLIB_HIDDEN_SEED, else None."""
    secret = os.environ.get(SECRET_ENV)
    if secret:
        return submission_seed(secret, Path.cwd())
    return os.environ.get(SEED_ENV) or None


_SEED = _seed_from_environment()
_RUNS: dict[str, int] = {}  # check name -> how many times its hidden tests have drawn


def _use_seed(seed: str | None) -> None:
    """Fix the hidden tests' seed (the course's tests do, to repeat a grading run), and start
    every check's runs from the first again."""
    global _SEED
    _SEED = seed
    _RUNS.clear()


def hidden_draw(name: str) -> Draw:
    """The draws of check `name`'s hidden tests: repeatable under a grading seed, fresh
    otherwise.

    Under a seed, each run of a check draws new inputs (the n-th run of check `name` in a
    kernel draws from seed/name/n): a submission that runs a hidden check itself, with a
    function that records what it is given, learns inputs that the test cell's own run will
    not use. Grading the same notebook again repeats every run, so its grade repeats.
    """
    run = _RUNS.get(name, 0)
    _RUNS[name] = run + 1
    if _SEED is None:
        material = os.urandom(16).hex()
    else:
        material = f"{_SEED}/{name}" + (f"/{run}" if run else "")
    return Draw(int.from_bytes(hashlib.sha256(material.encode()).digest()[:8], "big"))


class Draw:
    """Seeded random choices for one hidden test: sizes, special cases and tensors.

    Tensors are float64 (`normal`, `uniform`) or int64 (`integers`); every draw comes from one
    `torch.Generator`, so a seed repeats the whole test.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.torch = torch.Generator().manual_seed(seed)
        self.python = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        """A whole number in [low, high], both ends included."""
        return self.python.randint(low, high)

    def real(self, low: float, high: float) -> float:
        """A float in [low, high)."""
        return self.python.uniform(low, high)

    def choice(self, options: Sequence[T]) -> T:
        return options[self.python.randrange(len(options))]

    def sample(self, options: Sequence[T], k: int) -> list[T]:
        """k different elements of `options`, in random order."""
        return self.python.sample(list(options), k)

    def normal(self, *shape: int, scale: float = 1.0, grad: bool = False) -> Tensor:
        """Standard normal float64 samples times `scale`."""
        x = scale * torch.randn(*shape, generator=self.torch, dtype=torch.float64)
        return x.requires_grad_(grad)

    def uniform(self, *shape: int, low: float = 0.0, high: float = 1.0) -> Tensor:
        """Uniform float64 samples in [low, high)."""
        return low + (high - low) * torch.rand(*shape, generator=self.torch, dtype=torch.float64)

    def integers(self, low: int, high: int, shape: tuple[int, ...]) -> Tensor:
        """int64 samples in [low, high), high excluded as in torch.randint."""
        return torch.randint(low, high, shape, generator=self.torch)

    def permutation(self, n: int) -> Tensor:
        return torch.randperm(n, generator=self.torch)

    def generator(self) -> torch.Generator:
        """A new torch.Generator seeded from this draw, for a function that takes one."""
        return torch.Generator().manual_seed(self.integer(0, 2**62))


def random_tensor(*shape: int, seed: int, grad: bool = False) -> Tensor:
    """Seeded float64 normal samples: the fixed inputs of a visible test."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=generator, dtype=torch.float64)
    return x.requires_grad_(grad)
