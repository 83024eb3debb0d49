"""Right answers written the way learners write them: loops, einsum, torch.where, nn.Module
variants, another valid order of operations, helper functions, prints, asserts, timing magics.

tests/test_variants.py runs each in the notebook it answers, in place of the solution's answer:
the tamper scan flags none of it, and every test cell that checks a name it defines passes its
visible tests and, under every hidden-test seed, its hidden ones. (The red team grades a few of
the same kind through nbgrader; these run in-process, a few milliseconds each, so that every
graded cell of the course has several.)

Wrong answers written the way learners get them wrong sit beside them (MISTAKES): each must
lose the points of a test cell that checks it, under every hidden-test seed, and where the
mistake is a common one, the failure names it (the text given).

The modules `a01_foundations` ... `a06_generative` each define VARIANTS: notebook (its path under
solutions/) -> answer cell grade_id -> {label: source}, and MISTAKES: the same, with
{label: (source, text the failure names or None)}.
"""

from __future__ import annotations

import importlib

from tests.redteam import ASSIGNMENTS

__all__ = ["MISTAKES", "VARIANTS"]


def _load(table: str) -> list[tuple]:
    """(notebook, answer grade_id, label, source[, named text]) of every entry of `table` in
    each chapter's module, in the course's order."""
    found = []
    for assignment in ASSIGNMENTS:
        try:
            module = importlib.import_module(f"tests.variants.a{assignment}")
        except ModuleNotFoundError:
            continue
        for notebook, answers in getattr(module, table, {}).items():
            for grade_id, entries in answers.items():
                for label, entry in entries.items():
                    found.append(
                        (notebook, grade_id, label, *(entry if table == "MISTAKES" else (entry,)))
                    )
    return found


VARIANTS = _load("VARIANTS")
MISTAKES = _load("MISTAKES")
