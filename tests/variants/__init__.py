"""Right answers written the way learners write them: loops, einsum, torch.where, nn.Module
variants, another valid order of operations, helper functions, prints, asserts, timing magics.

tests/test_variants.py runs each in the notebook it answers, in place of the solution's answer:
the tamper scan flags none of it, and every test cell that checks a name it defines passes its
visible tests and, under every hidden-test seed, its hidden ones. (The red team grades a few of
the same kind through nbgrader; these run in-process, a few milliseconds each, so that every
graded cell of the course has several.)

The modules `a01_foundations` ... `a06_generative` each define VARIANTS: notebook (its path under
solutions/) -> answer cell grade_id -> {label: source}.
"""

from __future__ import annotations

import importlib

from tests.redteam import ASSIGNMENTS

__all__ = ["VARIANTS"]


def _load() -> list[tuple[str, str, str, str]]:
    """(notebook, answer grade_id, label, source) of every variant, in the course's order."""
    found = []
    for assignment in ASSIGNMENTS:
        try:
            module = importlib.import_module(f"tests.variants.a{assignment}")
        except ModuleNotFoundError:
            continue
        for notebook, answers in module.VARIANTS.items():
            for grade_id, variants in answers.items():
                for label, source in variants.items():
                    found.append((notebook, grade_id, label, source))
    return found


VARIANTS = _load()
