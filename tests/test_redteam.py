"""The red team, graded through nbgrader as a class's submissions (tests/redteam/, graded in
`tests.conftest.graded_class` with the round trips).

- Right answers written differently get full marks and no flag; typical mistakes lose their
  cell's points with a hint that names the mistake; exploits score zero in the kernel or are
  flagged, and a flag puts the tests after it up for manual grading in the gradebook.
- Feedback: a student whose every answer passes the visible tests and fails the hidden ones
  gets, for every hidden test of every assignment, a page that shows neither the hidden tests'
  source nor any value the reference computed for them (recomputed here from the seed the
  grading log recorded), even in cells that print what `sys.last_value` holds.
"""

from __future__ import annotations

import collections
import html
import json

import nbformat
import pytest

from tests.conftest import GradedClass
from tests.grading import ASSIGNMENTS, SOLUTIONS
from tests.hidden_only import WRAPPER, page_text, renderings, shows
from tests.redteam import CASES, Case
from tests.submissions import hidden_only_changes
from tutorlib.checks import draw, errors
from tutorlib.checks.feedback import HIDDEN_PLACEHOLDER
from tutorlib.checks.tamper import scan_notebook

ALL = [(assignment, case) for assignment, cases in CASES.items() for case in cases]


def test_the_red_team_is_large_and_covers_every_assignment_and_kind() -> None:
    assert len(ALL) >= 80, len(ALL)
    for assignment in ASSIGNMENTS:
        kinds = collections.Counter(case.kind for case in CASES.get(assignment, []))
        assert all(kinds[k] >= 1 for k in ("correct", "mistake", "exploit")), (assignment, kinds)
        notebooks = {case.notebook for case in CASES[assignment]}
        every = {path.stem for path in (SOLUTIONS / assignment).glob("*.ipynb")}
        assert notebooks == every, f"{assignment}: cases for {sorted(notebooks)} only"


def _tests(assignment: str, notebook: str) -> list[str]:
    """The autograded test cells of a notebook, in order."""
    cells = nbformat.read(SOLUTIONS / assignment / f"{notebook}.ipynb", as_version=4).cells
    return [
        c.metadata["nbgrader"]["grade_id"]
        for c in cells
        if c.cell_type == "code"
        and c.metadata.get("nbgrader", {}).get("grade")
        and not c.metadata["nbgrader"].get("solution")
    ]


def _errors(graded: GradedClass, assignment: str, case: Case) -> dict[str, str]:
    """Each test cell's error in the autograded notebook, as `Name: message` ('' if none)."""
    path = graded.course / "autograded" / case.student / assignment / f"{case.notebook}.ipynb"
    found = {}
    for cell in nbformat.read(path, as_version=4).cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        errors_ = [o for o in cell.get("outputs", []) if o.output_type == "error"]
        found[grade_id] = f"{errors_[0].ename}: {errors_[0].evalue}" if errors_ else ""
    return found


@pytest.mark.parametrize("assignment, case", ALL, ids=[f"{a}-{c.student}" for a, c in ALL])
def test_each_red_team_submission_gets_what_it_deserves(
    graded_class: GradedClass, assignment: str, case: Case
) -> None:
    scores = graded_class.scores[assignment, case.student]
    manual = graded_class.manual[assignment, case.student]
    points = graded_class.points[assignment]
    tests = _tests(assignment, case.notebook)
    ran = _errors(graded_class, assignment, case)
    autograded = graded_class.course / "autograded" / case.student / assignment
    findings = {
        cell: [f for f in found if f.review]
        for cell, found in scan_notebook(autograded / f"{case.notebook}.ipynb").items()
    }
    findings = {cell: found for cell, found in findings.items() if found}
    assert set(findings) == set(case.flagged), f"flagged {findings}, expected {case.flagged}"
    cells = [
        c.metadata.get("nbgrader", {}).get("grade_id")
        for c in nbformat.read(
            SOLUTIONS / assignment / f"{case.notebook}.ipynb", as_version=4
        ).cells
    ]
    first_flag = min((cells.index(cell) for cell in case.flagged), default=len(cells))
    held = {t for t in tests if cells.index(t) > first_flag}
    assert manual == held, f"waiting for a person: {manual}, expected {held}"
    for test in tests:
        if test in case.lose:
            assert case.lose[test] in ran[test], f"{test}: {ran[test]!r}"
            assert scores[test] == 0, f"{test} scored {scores[test]}"
        elif test in held:
            assert scores[test] == 0, f"{test} waits for a person, yet scored {scores[test]}"
        else:
            assert scores[test] == points[test], f"{test}: {scores[test]} ({ran[test]})"
    if case.kind == "mistake":  # the learner is told which mistake it is
        page = graded_class.course / "feedback" / case.student / assignment
        text = html.unescape((page / f"{case.notebook}.html").read_text())
        for test, hint in case.lose.items():
            assert hint in text, f"the feedback does not name the mistake of {test}"


def _recomputed(graded: GradedClass, assignment: str, notebook: str) -> list:
    """The values the reference computed for the hidden tests of the feedback student's
    notebook, recomputed in this process from the seed its grading recorded."""
    log = graded.course / "reports" / assignment / "grading-log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    (seed,) = {
        r["hidden_seed"]
        for r in records
        if r["student"] == "feedback" and r["notebook"] == notebook
    }
    changes = hidden_only_changes(assignment)[notebook]
    namespace: dict = {}
    recorded: list = []
    previous = draw._SEED
    draw._use_seed(seed)
    errors._RECORDED = recorded
    try:
        for cell in nbformat.read(SOLUTIONS / assignment / f"{notebook}.ipynb", as_version=4).cells:
            meta = cell.metadata.get("nbgrader", {})
            if cell.cell_type != "code":
                continue
            if meta.get("grade_id") == "setup":
                exec(cell.source, namespace)
                exec(WRAPPER, namespace)
            elif meta.get("solution"):
                exec(changes.get(meta["grade_id"], cell.source), namespace)
            elif meta.get("grade"):
                try:
                    exec(cell.source, dict(namespace))
                except errors.ExerciseError:
                    pass
    finally:
        errors._RECORDED = None
        draw._use_seed(previous)
    return recorded


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_feedback_shows_no_hidden_test_and_no_expected_value(
    graded_class: GradedClass, assignment: str
) -> None:
    folder = graded_class.course / "feedback" / "feedback" / assignment
    solution = graded_class.course / "feedback" / "solution" / assignment
    for notebook in sorted(p.stem for p in (SOLUTIONS / assignment).glob("*.ipynb")):
        text = html.unescape((folder / f"{notebook}.html").read_text())
        seen = page_text(folder / f"{notebook}.html")  # what the learner reads
        static = page_text(solution / f"{notebook}.html")  # what every page shows anyway
        tests = _tests(assignment, notebook)
        assert text.count("passes the visible tests") >= len(tests)  # each ran its hidden part
        assert text.count("ExerciseError") >= len(tests)  # ... and failed it
        assert "passes the hidden tests" not in text
        assert text.count("PROBE") >= 2 * len(tests)  # the probes ran after every test cell
        for secret in ("BEGIN HIDDEN TESTS", "hidden=True", "Traceback (most recent call"):
            assert secret not in text, f"{notebook}: {secret!r}"
        assert HIDDEN_PLACEHOLDER in text
        recorded = _recomputed(graded_class, assignment, notebook)
        assert len(recorded) >= len(tests), "the hidden tests compared nothing"
        submitted = graded_class.course / "submitted" / "feedback" / assignment
        typed = "\n".join(  # the learner's own code: its numbers are theirs
            cell.source for cell in nbformat.read(submitted / f"{notebook}.ipynb", 4).cells
        )
        shown = {r for value in recorded for r in renderings(value) if shows(r, seen)}
        leaks = {r for r in shown if not shows(r, static) and not shows(r, typed)}
        assert not leaks, f"{notebook}: the feedback shows values the reference computed: {leaks}"


def test_the_counts_of_the_red_team(capsys: pytest.CaptureFixture) -> None:
    """The README's table: cases per kind, per assignment."""
    table = collections.Counter((assignment, case.kind) for assignment, case in ALL)
    with capsys.disabled():
        print(
            "\nred team:",
            {a: {k: table[a, k] for k in ("correct", "mistake", "exploit")} for a in ASSIGNMENTS},
        )
    assert sum(table.values()) == len(ALL)
