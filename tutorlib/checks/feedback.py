"""What a learner sees of the hidden tests in nbgrader's feedback: their verdict, not their code
and not the values the reference computed.

nbgrader puts the hidden tests back into a submission before it runs them, and
`nbgrader generate_feedback` renders that notebook as it ran: the hidden test source and, when
a hidden test fails, a traceback through it (nbgrader issues #917 and #1363). `HideHiddenTests`
is a preprocessor for `GenerateFeedback` (see `nbgrader_config.py`). In every cell that holds a
hidden-test region it replaces the region by a comment and keeps, of each error, one line:

* an `ExerciseError` (or another error whose message the course's code wrote without reference
  values: a name the learner did not define, a stub, a cell the grader stopped) keeps
  `Name: message`. A hidden test's `ExerciseError` never holds the expected value: it leaves it
  out when it is made (`tutorlib.checks.errors`), so there is nothing here to take out;
* any other error, whose message could quote anything, becomes `Name: ...` with no message.

Book: Instructors (feedback).
"""

from __future__ import annotations

from nbconvert.exporters.exporter import ResourcesDict
from nbformat import NotebookNode
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Unicode

__all__ = ["HIDDEN_PLACEHOLDER", "SAFE_ERRORS", "HideHiddenTests"]

HIDDEN_PLACEHOLDER = "# (hidden tests: they ran when this notebook was graded)"

# Errors whose messages hold no value of a hidden test's reference: the checks' own, Python's
# for a missing name or an unfinished answer, and the grader's notes on a cell it stopped.
SAFE_ERRORS = frozenset(
    {
        "ExerciseError",
        "NameError",
        "NotImplementedError",
        "SyntaxError",
        "IndentationError",
        "KeyboardInterrupt",
        "KernelDied",
        "CellTimeoutError",
        "NotRun",
    }
)


class HideHiddenTests(NbGraderPreprocessor):
    """Remove hidden-test regions from the feedback and keep one line of their errors."""

    begin_test_delimeter = Unicode("BEGIN HIDDEN TESTS").tag(config=True)
    end_test_delimeter = Unicode("END HIDDEN TESTS").tag(config=True)

    def _strip(self, source: str) -> str:
        lines, kept, hidden = source.splitlines(), [], False
        for line in lines:
            if self.begin_test_delimeter in line:
                hidden = True
                kept.append(line[: len(line) - len(line.lstrip())] + HIDDEN_PLACEHOLDER)
            elif self.end_test_delimeter in line:
                hidden = False
            elif not hidden:
                kept.append(line)
        return "\n".join(kept)

    def preprocess_cell(
        self, cell: NotebookNode, resources: ResourcesDict, index: int
    ) -> tuple[NotebookNode, ResourcesDict]:
        if cell.cell_type != "code" or self.begin_test_delimeter not in cell.source:
            return cell, resources
        cell.source = self._strip(cell.source)
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                name = str(output.get("ename", "Error"))
                if name in SAFE_ERRORS:
                    output["evalue"] = str(output.get("evalue", ""))
                else:
                    output["evalue"] = "(the details are not shown: this cell holds hidden tests)"
                output["traceback"] = [f"{name}: {output['evalue']}"]
        return cell, resources
