"""What a learner sees of the hidden tests in nbgrader's feedback: their verdict, not their code.

nbgrader puts the hidden tests back into a submission before it runs them, and
`nbgrader generate_feedback` renders that notebook as it ran: the hidden test source and, when
a hidden test fails, a traceback through it (nbgrader issues #917 and #1363). `HideHiddenTests`
is a preprocessor for `GenerateFeedback` (see `nbgrader_config.py`): in every cell that holds a
hidden-test region it replaces the region by a comment and shortens each error to its last
line, the learner's diagnostic, with any value the reference computed taken out.

Book: Instructors (autograding and feedback).
"""

from __future__ import annotations

import re

from nbconvert.exporters.exporter import ResourcesDict
from nbformat import NotebookNode
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Unicode

__all__ = ["HIDDEN_PLACEHOLDER", "HideHiddenTests", "redact_expected"]

HIDDEN_PLACEHOLDER = "# (hidden tests: they ran when this notebook was graded)"

# "(got 0.5, expected 0.25)" and "expected 0.25": values of the reference on hidden inputs.
_GOT_EXPECTED = re.compile(r"\s*\(got [^()]*, expected [^()]*\)")
_EXPECTED_NUMBER = re.compile(r"expected (?:values? )?-?[0-9][0-9.e+-]*")


def redact_expected(message: str) -> str:
    """`message` without the reference's values: what the learner got is theirs to see, what
    the hidden test expected is not."""
    message = _GOT_EXPECTED.sub("", message)
    return _EXPECTED_NUMBER.sub("expected (hidden)", message)


class HideHiddenTests(NbGraderPreprocessor):
    """Remove hidden-test regions from the feedback and keep only the last line of their
    errors (`ExerciseError: <diagnostic>`), redacted with `redact_expected`."""

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
                output["evalue"] = redact_expected(str(output.get("evalue", "")))
                output["traceback"] = [f"{output.get('ename', 'Error')}: {output['evalue']}"]
        return cell, resources
