"""tutorlib.checks.feedback: hidden tests stay hidden in nbgrader's feedback, by construction.

(The whole course's feedback, graded through nbgrader, is tested in tests/test_redteam.py.)
"""

from __future__ import annotations

import nbformat
import pytest
import torch
from nbconvert.exporters.exporter import ResourcesDict

from tutorlib.checks import Exercise, ExerciseError, expect_close
from tutorlib.checks.feedback import HIDDEN_PLACEHOLDER, SAFE_ERRORS, HideHiddenTests

SOURCE = """checks.check_attention(attention)
### BEGIN HIDDEN TESTS
checks.check_attention(attention, hidden=True)
assert secret_value == 42
### END HIDDEN TESTS
print("after")"""


def _cell_with_error(ename: str, evalue: str) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(SOURCE)
    cell.outputs = [
        nbformat.v4.new_output(
            "error",
            ename=ename,
            evalue=evalue,
            traceback=["Traceback", "  checks.check_attention(attention, hidden=True)", evalue],
        )
    ]
    return cell


def test_the_hidden_region_and_the_traceback_are_removed() -> None:
    message = "attention is not right. Likely mistake: softmax over the queries."
    cell, _ = HideHiddenTests().preprocess_cell(
        _cell_with_error("ExerciseError", message), ResourcesDict(), 0
    )
    assert "hidden=True" not in cell.source and "secret_value" not in cell.source
    assert "BEGIN HIDDEN TESTS" not in cell.source and "END HIDDEN TESTS" not in cell.source
    assert cell.source.splitlines() == [
        "checks.check_attention(attention)",
        HIDDEN_PLACEHOLDER,
        'print("after")',
    ]
    (error,) = cell.outputs
    assert error.traceback == [f"ExerciseError: {message}"]


@pytest.mark.parametrize("ename", ["AssertionError", "RuntimeError", "TypeError", "ValueError"])
def test_an_error_whose_message_could_quote_anything_keeps_no_message(ename: str) -> None:
    # torch.testing's AssertionError quotes both tensors, for example
    cell, _ = HideHiddenTests().preprocess_cell(
        _cell_with_error(ename, "Tensor-likes are not close! Expected 0.1904 but got 0.5"),
        ResourcesDict(),
        0,
    )
    (error,) = cell.outputs
    assert "0.1904" not in str(error) and error.ename == ename
    hidden = "(the details are not shown: this cell holds hidden tests)"
    assert error.traceback == [f"{ename}: {hidden}"]


def test_the_safe_errors_are_the_checks_own_and_pythons_for_an_unfinished_answer() -> None:
    assert {"ExerciseError", "NameError", "NotImplementedError", "KernelDied"} <= SAFE_ERRORS
    assert not {"AssertionError", "RuntimeError", "TypeError", "ValueError"} & SAFE_ERRORS


def test_cells_without_hidden_tests_are_untouched() -> None:
    cell = nbformat.v4.new_code_cell("checks.check_attention(attention)")
    cell.outputs = [
        nbformat.v4.new_output("error", ename="E", evalue="got 1, expected 2", traceback=["tb"])
    ]
    before = nbformat.from_dict(cell)
    cell, _ = HideHiddenTests().preprocess_cell(cell, ResourcesDict(), 0)
    assert cell == before


def _fails(hidden: bool) -> ExerciseError:
    with pytest.raises(ExerciseError) as error, Exercise("square", hidden) as ex:
        out = ex.call(lambda x: x * x * 1.5, torch.tensor([2.0, 3.0]))
        expect_close(out, torch.tensor([4.0, 9.0]), what="square of [2, 3]")
    return error.value


def test_a_visible_test_shows_the_expected_value_and_a_hidden_one_never_holds_it() -> None:
    visible, hidden = _fails(False), _fails(True)
    assert "Your value: 13.5" in str(visible) and "Expected: 9 " in str(visible)
    assert visible.expected is not None
    assert "Your value: 13.5" in str(hidden) and "Expected" not in str(hidden)
    assert hidden.expected is None and hidden.hidden  # nothing for sys.last_value to give away
    assert hidden.__cause__ is None and hidden.__context__ is None
