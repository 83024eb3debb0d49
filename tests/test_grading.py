"""The grading pipeline, through the real nbgrader.

1. exercises/ is exactly what `nbgrader generate_assignment` makes of solutions/.
2. A round trip per assignment, in one temporary course graded by the course's grader
   (`tests.conftest.graded_class`, shared with the red team, tests/test_redteam.py): students
   submit the solution, the untouched exercise, a typical mistake, (Chapter 1) a cell that loops
   forever and (Chapter 6) a mistake only the hidden tests catch and a right answer that patches
   the testing machinery; the scores are read back from nbgrader's gradebook and the feedback
   from the pages `nbgrader generate_feedback` wrote.
"""

from __future__ import annotations

import filecmp
import html
import re

import pytest

from tests.conftest import CELL_TIMEOUT, GradedClass
from tests.grading import ASSIGNMENTS, EXERCISES
from tests.submissions import ROUND_TRIPS
from tutorlib.checks.feedback import HIDDEN_PLACEHOLDER
from tutorlib.checks.tamper import scan_notebook


def test_exercises_are_generated_from_solutions(graded_class: GradedClass) -> None:
    made = graded_class.course / "exercises"
    for assignment in ASSIGNMENTS:
        expected = sorted(p.name for p in (made / assignment).glob("*.ipynb"))
        committed = sorted(p.name for p in (EXERCISES / assignment).glob("*.ipynb"))
        assert committed == expected, (
            f"exercises/{assignment} has {committed}, nbgrader makes {expected}"
        )
        for name in expected:
            same = filecmp.cmp(
                made / assignment / name, EXERCISES / assignment / name, shallow=False
            )
            assert same, f"exercises/{assignment}/{name} is stale: run `make exercises`"


def test_every_assignment_has_a_round_trip() -> None:
    assert sorted(ROUND_TRIPS) == ASSIGNMENTS


def _autograded(points: dict[str, float]) -> list[str]:
    return [gid for gid in points if gid.startswith("test_")]


def _graded_in(course, assignment: str, notebook: str) -> list[str]:
    """The autograded test cells of one notebook of the course."""
    import nbformat

    cells = nbformat.read(
        course / "solutions" / assignment / f"{notebook}.ipynb", as_version=4
    ).cells
    return [
        c.metadata["nbgrader"]["grade_id"]
        for c in cells
        if c.metadata.get("nbgrader", {}).get("grade")
        and c.cell_type == "code"
        and not c.metadata["nbgrader"].get("solution")
    ]


@pytest.fixture(params=ASSIGNMENTS)
def trip(request: pytest.FixtureRequest, graded_class: GradedClass) -> dict:
    assignment = request.param
    return {
        "assignment": assignment,
        "plan": ROUND_TRIPS[assignment],
        "course": graded_class.course,
        "students": graded_class.students[assignment],
        "scores": {
            s: graded_class.scores[assignment, s] for s in graded_class.students[assignment]
        },
        "manual": {
            s: graded_class.manual[assignment, s] for s in graded_class.students[assignment]
        },
        "points": graded_class.points[assignment],
    }


def test_there_are_enough_graded_cells(trip: dict) -> None:
    auto = _autograded(trip["points"])
    manual = [gid for gid in trip["points"] if not gid.startswith("test_")]
    assert len(auto) >= 8, auto
    assert sorted(manual) == sorted([trip["plan"].written, *trip["plan"].also_written]), manual


def test_solution_gets_full_marks(trip: dict) -> None:
    scores, points = trip["scores"]["solution"], trip["points"]
    for gid in _autograded(points):
        assert scores[gid] == points[gid], f"{gid}: {scores[gid]} of {points[gid]}"
    for written in (trip["plan"].written, *trip["plan"].also_written):
        assert scores[written] is None  # the written answers wait for a human
    assert trip["manual"]["solution"] == set()  # and nothing else does


def test_untouched_exercise_gets_zero(trip: dict) -> None:
    scores = trip["scores"]["untouched"]
    for gid in _autograded(trip["points"]):
        assert scores[gid] == 0, f"{gid} scored {scores[gid]} on an untouched notebook"


def test_typical_mistake_gets_partial_marks_and_a_diagnosis(trip: dict) -> None:
    plan, scores, points = trip["plan"], trip["scores"]["mistake"], trip["points"]
    assert scores[plan.failing_test] == 0
    graded = _graded_in(trip["course"], trip["assignment"], plan.mistake_notebook)
    others = [gid for gid in graded if gid != plan.failing_test]
    assert all(scores[gid] == points[gid] for gid in others), scores
    feedback = trip["course"] / "feedback" / "mistake" / trip["assignment"]
    assert plan.diagnosis in (feedback / f"{plan.mistake_notebook}.html").read_text()


def test_feedback_hides_the_hidden_tests(trip: dict) -> None:
    # nbgrader's feedback shows the hidden tests as they ran (nbgrader #917, #1363); the
    # course's GenerateFeedback preprocessor (tutorlib.checks.feedback) takes them out.
    for student in ("solution", "mistake"):
        folder = trip["course"] / "feedback" / student / trip["assignment"]
        pages = sorted(folder.glob("*.html"))
        assert pages, f"no feedback for {student}"
        for page in pages:
            text = html.unescape(page.read_text())
            for secret in ("BEGIN HIDDEN TESTS", "hidden=True"):
                assert secret not in text, f"{page.name} ({student}) shows {secret!r}"
            assert HIDDEN_PLACEHOLDER in text
    autograded = trip["course"] / "autograded" / "mistake" / trip["assignment"]
    ran = "".join(p.read_text() for p in autograded.glob("*.ipynb"))
    assert "hidden=True" in ran  # the hidden tests did run; only the feedback hides them


def test_a_failed_hidden_test_shows_its_diagnosis_but_not_the_expected_values(trip: dict) -> None:
    plan = trip["plan"]
    if "hidden_only" not in trip["students"]:
        pytest.skip(f"{trip['assignment']} submits no hidden-only mistake (06_generative does)")
    assert trip["scores"]["hidden_only"][plan.failing_test] == 0, "the hidden tests caught it"
    folder = trip["course"] / "feedback" / "hidden_only" / trip["assignment"]
    text = html.unescape((folder / f"{plan.mistake_notebook}.html").read_text())
    assert "passes the visible tests" in text
    assert "ExerciseError: " in text and "differs from the expected values" in text
    assert "Your value: " in text and "Expected: " not in text
    assert "Traceback (most recent call last)" not in text


def test_a_submission_that_patches_the_machinery_gets_no_points_silently(trip: dict) -> None:
    plan = trip["plan"]
    if "tamper" not in trip["students"]:
        pytest.skip(f"{trip['assignment']} submits no tampering notebook (06_generative does)")
    assert trip["scores"]["tamper"][plan.failing_test] == 0
    folder = trip["course"] / "feedback" / "tamper" / trip["assignment"]
    text = html.unescape((folder / f"{plan.mistake_notebook}.html").read_text())
    assert "the testing machinery was changed by the submission (torch.allclose)" in text
    submitted = trip["course"] / "submitted" / "tamper" / trip["assignment"]
    report = scan_notebook(submitted / f"{plan.mistake_notebook}.ipynb")
    assert any("torch.allclose" in f.what for f in report["causal_lm_loss"]), report
    assert plan.failing_test in trip["manual"]["tamper"]  # and a person is asked to look


def test_cell_that_loops_forever_scores_zero_and_grading_finishes(trip: dict) -> None:
    if "loops" not in trip["students"]:
        pytest.skip(f"{trip['assignment']} submits no looping notebook (01_foundations does)")
    scores, points = trip["scores"]["loops"], trip["points"]
    assert scores["test_sinusoidal_encoding"] == 0
    assert scores["test_layer_norm"] == points["test_layer_norm"]
    assert scores["test_feed_forward"] == points["test_feed_forward"]
    autograded = trip["course"] / "autograded" / "loops" / trip["assignment"]
    assert (autograded / "02_transformer_block.ipynb").exists()


def test_grading_is_fast(graded_class: GradedClass) -> None:
    """Each assignment is graded by one worker (two at a time): each notebook costs at most 15 s
    of its time (the cell that loops forever waits out its timeout once)."""
    for assignment in ASSIGNMENTS:
        waited = CELL_TIMEOUT if ROUND_TRIPS[assignment].loops else 0
        seconds = graded_class.seconds[assignment] - waited
        per_notebook = seconds / graded_class.notebooks[assignment]
        assert per_notebook < 15, f"{assignment}: {per_notebook:.1f} s per notebook (budget 15 s)"


def test_the_grading_log_holds_each_notebooks_seed(graded_class: GradedClass) -> None:
    """Every graded notebook's hidden-test seed is recorded, and the same submission always
    draws the same one: its grade can be reproduced."""
    import json

    from tests.grading import GRADING_SECRET
    from tutorlib.checks.secret import submission_seed

    for assignment in ASSIGNMENTS:
        log = graded_class.course / "reports" / assignment / "grading-log.jsonl"
        records = [json.loads(line) for line in log.read_text().splitlines()]
        graded = {(r["student"], r["notebook"]) for r in records}
        assert ("solution", "01_positions_and_norms") in graded or assignment != ASSIGNMENTS[0]
        for record in records:
            folder = graded_class.course / "autograded" / record["student"] / assignment
            assert record["hidden_seed"] == submission_seed(GRADING_SECRET, folder)
            assert re.fullmatch(r"[0-9a-f]{12}", record["secret"])
        seeds = {r["hidden_seed"] for r in records}
        assert len(seeds) == len({r["student"] for r in records})  # one per submission
