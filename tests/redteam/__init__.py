"""The red team: submissions written to test the grader, graded through nbgrader
(tests/test_redteam.py).

Each `Case` is one student's submission of one notebook: the solution notebook with some answer
cells replaced. Three kinds:

* `correct`: right answers written differently from the solution (einsum, loops, torch.where,
  another order of operations): full marks, nothing flagged;
* `mistake`: typical mistakes: each test cell in `lose` scores zero and its error names the
  mistake (the text given), every other test cell gets its points;
* `exploit`: a way to get points without doing the work (calling the reference under another
  name, patching the tests, knowing the hidden inputs, ...): the test cells in `lose` score zero
  (with that text in their error), and the answer cells in `flagged` are flagged by the tamper
  scan, which puts every test cell after them in the notebook up for manual grading at zero
  points until a person grades it.

`covers` names what the case stands for (an issue's exploit class, a mistake class), for the
counts in the README. The modules `a01_foundations` ... `a06_generative` hold the cases of each
assignment.
"""

from __future__ import annotations

import dataclasses
import importlib

__all__ = ["CASES", "Case"]


@dataclasses.dataclass(frozen=True)
class Case:
    name: str  # unique within its assignment; the student id is f"{kind}-{name}"
    kind: str  # "correct", "mistake" or "exploit"
    notebook: str  # the notebook's name without .ipynb, e.g. "01_positions_and_norms"
    answers: dict[str, str]  # answer cell grade_id -> its source (other answers: the solution)
    covers: str  # what it stands for
    lose: dict[str, str] = dataclasses.field(default_factory=dict)  # test grade_id -> text
    flagged: tuple[str, ...] = ()  # answer cells the tamper scan must flag

    def __post_init__(self) -> None:
        if self.kind not in ("correct", "mistake", "exploit"):
            raise ValueError(f"{self.name}: unknown kind {self.kind!r}")
        if self.kind == "correct" and (self.lose or self.flagged):
            raise ValueError(f"{self.name}: a correct case loses nothing and is not flagged")
        if self.kind == "mistake" and (not self.lose or self.flagged):
            raise ValueError(f"{self.name}: a mistake loses points (with a hint), unflagged")
        if self.kind == "exploit" and not (self.lose or self.flagged):
            raise ValueError(f"{self.name}: an exploit must score zero or be flagged")

    @property
    def student(self) -> str:
        return f"{self.kind}-{self.name}"


ASSIGNMENTS = [
    "01_foundations",
    "02_attention",
    "03_training",
    "04_scaling",
    "05_vision",
    "06_generative",
]


def _load() -> dict[str, list[Case]]:
    cases = {}
    for assignment in ASSIGNMENTS:
        try:
            module = importlib.import_module(f"tests.redteam.a{assignment}")
        except ModuleNotFoundError:
            continue
        cases[assignment] = list(module.CASES)
        names = [case.name for case in module.CASES]
        if len(names) != len(set(names)):
            raise ValueError(f"{assignment}: case names repeat")
    return cases


CASES = _load()


def notebook(assignment: str, case: Case):
    """The case's submission: the solution notebook (with its hidden tests, as the grader runs
    it) with the case's answers in place of the solution's."""
    import nbformat

    from tests.grading import SOLUTIONS

    nb = nbformat.read(SOLUTIONS / assignment / f"{case.notebook}.ipynb", as_version=4)
    unknown = set(case.answers) - {c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells}
    if unknown:
        raise ValueError(f"{case.name}: no answer cells {sorted(unknown)} in {case.notebook}")
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in case.answers:
            cell.source = case.answers[grade_id]
    return nb


def execute(assignment: str, case: Case, timeout: int = 60) -> dict[str, str | None]:
    """Run the case's notebook in a plain kernel (no nbgrader): each test cell's error, as
    `ename: evalue`, or None where it passed. For checking a case quickly while writing it."""
    import nbclient

    nb = notebook(assignment, case)
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True)
    client.execute()
    results = {}
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade") and not meta.get("solution") and cell.cell_type == "code":
            errors = [o for o in cell.outputs if o.output_type == "error"]
            stderr = [o for o in cell.outputs if o.output_type == "stream" and o.name == "stderr"]
            if errors:
                results[meta["grade_id"]] = f"{errors[0].ename}: {errors[0].evalue}"
            elif stderr:
                results[meta["grade_id"]] = f"stderr: {stderr[0].text[:300]}"
            else:
                results[meta["grade_id"]] = None
    return results
