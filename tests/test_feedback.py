"""tutorlib.checks.feedback: hidden tests stay hidden in nbgrader's feedback."""

from __future__ import annotations

import nbformat
from nbconvert.exporters.exporter import ResourcesDict

from tutorlib.checks.feedback import HIDDEN_PLACEHOLDER, HideHiddenTests, redact_expected

SOURCE = """checks.check_attention(attention)
### BEGIN HIDDEN TESTS
checks.check_attention(attention, hidden=True)
assert secret_value == 42
### END HIDDEN TESTS
print("after")"""


def _cell_with_error(evalue: str) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(SOURCE)
    cell.outputs = [
        nbformat.v4.new_output(
            "error",
            ename="ExerciseError",
            evalue=evalue,
            traceback=["Traceback", "  checks.check_attention(attention, hidden=True)", evalue],
        )
    ]
    return cell


def test_the_hidden_region_and_the_traceback_are_removed() -> None:
    cell = _cell_with_error("attention is not right. Likely mistake: softmax over the queries.")
    cell, _ = HideHiddenTests().preprocess_cell(cell, ResourcesDict(), 0)
    assert "hidden=True" not in cell.source and "secret_value" not in cell.source
    assert "BEGIN HIDDEN TESTS" not in cell.source and "END HIDDEN TESTS" not in cell.source
    assert cell.source.splitlines() == [
        "checks.check_attention(attention)",
        HIDDEN_PLACEHOLDER,
        'print("after")',
    ]
    (error,) = cell.outputs
    assert error.traceback == [
        "ExerciseError: attention is not right. Likely mistake: softmax over the queries."
    ]


def test_the_reference_values_are_redacted_but_the_learners_are_kept() -> None:
    message = (
        "attention differs from the expected values: the largest difference is 0.31 at index "
        "(1, 2) (got 0.5, expected 0.19)."
    )
    redacted = redact_expected(message)
    assert "0.19" not in redacted and "got 0.5" not in redacted
    assert redacted.startswith("attention differs from the expected values")
    assert redact_expected("loss is 2.5, expected 1.25") == "loss is 2.5, expected (hidden)"
    assert "1.25" not in redact_expected("expected values 1.25 and more")


def test_cells_without_hidden_tests_are_untouched() -> None:
    cell = nbformat.v4.new_code_cell("checks.check_attention(attention)")
    cell.outputs = [
        nbformat.v4.new_output("error", ename="E", evalue="got 1, expected 2", traceback=["tb"])
    ]
    before = nbformat.from_dict(cell)
    cell, _ = HideHiddenTests().preprocess_cell(cell, ResourcesDict(), 0)
    assert cell == before
