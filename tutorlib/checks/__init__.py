"""What the exercise tests call: run the learner's code under a guard, compare it with the
reference, and say which common mistake it matches.

Each chapter's check module (`tutorlib.checks.foundations`, `attention`, `training`,
`scaling`, `efficiency` for Chapter 4's experts, drafts and tiles, `vision`, `modalities` for
Chapter 5's windows, sound and proteins, `generative`, `modern` for Chapter 6's modern decoder
and `posttraining` for its post-training) has one `check_*` function per graded cell, built from
this toolkit:

- `Exercise` (`exercise.py`): the context of one check: visible tests (the notebook's worked
  examples) or hidden tests (property tests on inputs drawn at grading time, `draw.py`),
  `ex.call` to run the learner's code quietly under the exercise's guard (`guard.py`: the
  reference and the torch built-in are out of reach by identity, not by name), and the OK
  line, printed only while nothing the checks rely on was patched (`integrity.py`).
- `expect_close`, `expect_equal`, `expect_state_dict` (`compare.py`): the comparisons, each
  naming the likely mistake when the learner's value matches one.
- `ExerciseError` (`errors.py`): a failure in fields (what, the learner's value, the expected
  value, the hint); a hidden test's error never holds the expected value.

The grader's side (nbgrader preprocessors, the sandboxed kernel, the class report) lives in
`autograde.py`, `feedback.py`, `sandbox.py` and `tamper.py`; learner code never imports it.

Book: the exercises of every chapter.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tutorlib.checks.compare import as_int, expect_close, expect_equal, expect_state_dict
    from tutorlib.checks.draw import Draw, hidden_draw, random_tensor
    from tutorlib.checks.errors import ExerciseError, in_hidden_tests, record_reference
    from tutorlib.checks.exercise import FORBIDDEN_PREFIX, Exercise, quiet
    from tutorlib.checks.guard import Forbidden, handed_over
    from tutorlib.checks.integrity import report_ok, tampered, verify_intact, watch_module

# Where each name of the toolkit lives: imported on first use, so that the grader's processes
# (nbgrader with the course's configuration) import its modules without torch. A kernel loads
# them all when its setup cell imports a chapter's checks, before any learner code runs.
_HOME = {
    **dict.fromkeys(["as_int", "expect_close", "expect_equal", "expect_state_dict"], "compare"),
    **dict.fromkeys(["Draw", "hidden_draw", "random_tensor"], "draw"),
    **dict.fromkeys(["ExerciseError", "in_hidden_tests", "record_reference"], "errors"),
    **dict.fromkeys(["FORBIDDEN_PREFIX", "Exercise", "quiet"], "exercise"),
    **dict.fromkeys(["Forbidden", "handed_over"], "guard"),
    **dict.fromkeys(["report_ok", "tampered", "verify_intact", "watch_module"], "integrity"),
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(importlib.import_module(f"tutorlib.checks.{_HOME[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tutorlib.checks' has no attribute {name!r}")


__all__ = [
    "FORBIDDEN_PREFIX",
    "Draw",
    "Exercise",
    "ExerciseError",
    "Forbidden",
    "as_int",
    "expect_close",
    "expect_equal",
    "expect_state_dict",
    "handed_over",
    "hidden_draw",
    "in_hidden_tests",
    "quiet",
    "random_tensor",
    "record_reference",
    "report_ok",
    "tampered",
    "verify_intact",
    "watch_module",
]
