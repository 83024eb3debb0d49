"""What a failed check says, in fields: what was checked, the learner's value, the expected value
and the likely mistake.

A visible test shows all four. A hidden test never shows the expected value: an `ExerciseError`
raised while hidden tests run (`in_hidden_tests()`) leaves it out of its message and does not
keep it, so neither the notebook, nor nbgrader's feedback, nor a later cell that reads
`sys.last_value` can see it. Nothing here edits prose after the fact.

Book: the exercises of every chapter; Instructors (feedback).
"""

from __future__ import annotations

import contextvars
import math
from typing import Any

import torch

__all__ = ["ExerciseError", "in_hidden_tests", "show"]

_HIDDEN: contextvars.ContextVar[bool] = contextvars.ContextVar("hidden_tests", default=False)

# The reference values that hidden comparisons used, while a test collects them (tests only:
# tests/test_feedback.py checks that none of them reaches a learner's feedback).
_RECORDED: list[Any] | None = None


def in_hidden_tests() -> bool:
    """True while a check runs its hidden tests."""
    return _HIDDEN.get()


def record_reference(value: Any) -> None:
    """Note a value the reference computed for a hidden test, when a test collects them."""
    if _RECORDED is not None and in_hidden_tests():
        _RECORDED.append(value)


def show(value: Any) -> str:
    """A short, readable rendering of a value for a message: numbers to 6 significant digits,
    small tensors as nested lists, larger ones by shape and dtype."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else repr(value)
    if isinstance(value, torch.Tensor):
        if value.numel() <= 12:
            return repr(value.detach().cpu().tolist())
        return f"a tensor of shape {tuple(value.shape)} ({value.dtype})"
    if isinstance(value, tuple | list) and len(value) <= 12:
        inner = ", ".join(show(v) for v in value)
        return (
            f"({inner}{',' if len(value) == 1 else ''})"
            if isinstance(value, tuple)
            else f"[{inner}]"
        )
    return repr(value)[:200]


class ExerciseError(AssertionError):
    """A failed exercise check.

    Args:
        what: what was checked and what went wrong, in words ("layer_norm on a (3, 5) input is
            not right"); it may describe the inputs (shapes, sizes, small values), never the
            reference's result.
        got: what the learner's code returned (a value or a rendering of it): theirs to see.
        expected: what the reference returned: shown by visible tests, dropped by hidden ones.
        hint: the likely mistake, or what to try.
        likely: whether `hint` names a mistake the submission matches ("Likely mistake: ...")
            or is general advice ("Hint: ...").
    """

    def __init__(
        self,
        what: str,
        *,
        got: Any = None,
        expected: Any = None,
        hint: str | None = None,
        likely: bool = True,
    ) -> None:
        self.hidden = in_hidden_tests()
        if self.hidden and expected is not None:
            record_reference(expected)
            expected = None  # not kept: a later cell could read it from sys.last_value
        self.what, self.got, self.expected, self.hint, self.likely = (
            what,
            got,
            expected,
            hint,
            likely,
        )
        super().__init__(self.message())

    def message(self) -> str:
        """The message: what, then the learner's value, the expected value (visible tests
        only) and the hint."""
        text = self.what.rstrip()
        if not text.endswith((".", "?", ":")):
            text += "."
        if self.got is not None:
            text += f" Your value: {show(self.got)}."
        if self.expected is not None:
            text += f" Expected: {show(self.expected)}."
        if self.hint:
            text += (" Likely mistake: " if self.likely else " Hint: ") + self.hint
        return text
