"""What every check of every exercise does, found from the solution notebooks' own test cells.

Each graded test cell runs here as it runs in a learner's notebook (its visible and hidden
parts), with the names it tests bound to: the solution (passes, under every hidden-test seed);
a stub (the learner is told it is not implemented); broken answers (a message, never a crash);
and an answer right for the visible tests but wrong for the hidden ones, whose failure must
hold no value the reference computed, in its message or anywhere a later cell could read it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from tests.conftest import HIDDEN_SEEDS
from tests.grading import SOLUTIONS
from tests.hidden_only import WRAPPER, defined_names, renderings, shows, without_own_values
from tutorlib.checks import ExerciseError, draw, errors


def _cells(path: Path) -> list[nbformat.NotebookNode]:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def _graded() -> list[tuple[str, str]]:
    """(notebook, grade_id) of every autograded test cell of the course."""
    found = []
    for path in sorted(SOLUTIONS.glob("*/*.ipynb")):
        for cell in _cells(path):
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("grade") and not meta.get("solution"):
                found.append((str(path.relative_to(SOLUTIONS)), meta["grade_id"]))
    return found


GRADED = _graded()


def _notebook(notebook: str, grade_id: str) -> tuple[dict, str, list[str]]:
    """The namespace after the setup and answer cells, the test cell's source, and the names
    it tests (the first argument of each check it calls)."""
    namespace: dict = {}
    test = ""
    for cell in _cells(SOLUTIONS / notebook):
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution") or meta.get("grade_id") == "setup":
            exec(cell.source, namespace)
        if meta.get("grade_id") == grade_id:
            test = cell.source
    tested = re.findall(r"checks\.check_\w+\(\s*(\w+)", test)
    return namespace, test, sorted(set(tested))


def _run(test: str, namespace: dict) -> str:
    """Run a test cell's source; returns what it printed."""
    from contextlib import redirect_stdout
    from io import StringIO

    out = StringIO()
    with redirect_stdout(out):
        exec(test, dict(namespace))
    return out.getvalue()


def test_every_assignment_has_graded_cells() -> None:
    assert len(GRADED) >= 47, GRADED


@pytest.mark.parametrize("notebook, grade_id", GRADED)
def test_the_solution_passes_whatever_the_hidden_tests_draw(notebook: str, grade_id: str) -> None:
    namespace, test, tested = _notebook(notebook, grade_id)
    assert tested, f"{grade_id} calls no check"
    for seed in HIDDEN_SEEDS:
        draw._use_seed(seed)
        printed = _run(test, namespace)
        assert "passes the visible tests" in printed and "passes the hidden tests" in printed, (
            f"seed {seed}: {printed}"
        )


def _stub(answer):
    if isinstance(answer, type):

        def forward(self, *args, **kwargs):
            raise NotImplementedError()

        return type(answer.__name__, (answer,), {"forward": forward})

    def stub(*args, **kwargs):
        raise NotImplementedError()

    return stub


@pytest.mark.parametrize("notebook, grade_id", GRADED)
def test_an_unimplemented_answer_is_told_so(notebook: str, grade_id: str) -> None:
    namespace, test, tested = _notebook(notebook, grade_id)
    namespace.update({name: _stub(namespace[name]) for name in tested})
    # (a test cell that calls the answer itself before the check meets the stub's own error)
    with pytest.raises((ExerciseError, NotImplementedError)) as error:
        _run(test, namespace)
    assert error.type is NotImplementedError or "not implemented yet" in str(error.value)


def _raises(*args, **kwargs):
    raise ZeroDivisionError("division by zero")


BROKEN = {
    "None": lambda *args, **kwargs: None,
    "text": lambda *args, **kwargs: "text",
    "5-d tensor": lambda *args, **kwargs: torch.zeros(1, 1, 1, 1, 1),
    "list": lambda *args, **kwargs: [1, 2, 3],
    "raises": _raises,
}


@pytest.mark.parametrize("broken", list(BROKEN))
@pytest.mark.parametrize("notebook, grade_id", GRADED)
def test_a_broken_answer_fails_with_a_message(notebook: str, grade_id: str, broken: str) -> None:
    namespace, test, tested = _notebook(notebook, grade_id)
    if any(isinstance(namespace[name], type) for name in tested):
        pytest.skip("a class: its broken forms are tested with its chapter")
    namespace.update({name: BROKEN[broken] for name in tested})
    # a test cell that uses the answer itself (to print it) may fail before the check does
    direct = any(re.search(rf"(?<![\w(]){name}\(", test) for name in tested)
    with pytest.raises(Exception if direct else ExerciseError) as error:
        _run(test, namespace)
    assert str(error.value).strip()


@pytest.mark.parametrize("notebook, grade_id", GRADED)
def test_a_failed_hidden_test_keeps_no_expected_value(notebook: str, grade_id: str) -> None:
    namespace, test, tested = _notebook(notebook, grade_id)
    exec(WRAPPER, namespace)
    for name in tested:
        namespace[name] = namespace["_hidden_only"](namespace[name])
    recorded: list = []
    errors._RECORDED = recorded
    try:
        with pytest.raises(ExerciseError) as error:
            _run(test, namespace)
    finally:
        errors._RECORDED = None
    assert error.value.hidden, f"the visible tests failed: {error.value}"
    assert error.value.expected is None
    assert recorded, "the hidden test compared nothing"
    message = without_own_values(str(error.value))
    leaks = {r for value in recorded for r in renderings(value) if shows(r, message)}
    assert not leaks, f"{message!r} shows values the reference computed: {leaks}"
    # what a later cell could read: sys.last_value's chain and its frames' locals (by identity:
    # True, None and small ints are shared by every piece of code, so they prove nothing)
    assert error.value.__cause__ is None and error.value.__context__ is None
    distinct = [r for r in recorded if isinstance(r, torch.Tensor | list | tuple | dict | float)]
    tb = error.value.__traceback__
    while tb is not None:
        kept = [v for v in tb.tb_frame.f_locals.values() if any(v is r for r in distinct)]
        assert not kept, f"{tb.tb_frame.f_code.co_name} keeps a value the reference computed"
        tb = tb.tb_next


def test_the_wrapper_defines_what_the_feedback_tests_submit() -> None:
    source = "def f(x):\n    return x\n\n\nclass G:\n    pass\n"
    assert defined_names(source) == ["f", "G"]
    assert "_hidden_only" in WRAPPER and sys.version_info >= (3, 10)
