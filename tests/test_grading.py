"""The grading pipeline, through the real nbgrader.

1. exercises/ is exactly what `nbgrader generate_assignment` makes of solutions/.
2. A round trip on a temporary course: four students submit (the solution, the untouched
   exercise, a typical mistake, a cell that loops forever); nbgrader autogrades them and writes
   feedback; the scores are read back from nbgrader's gradebook.
"""

from __future__ import annotations

import filecmp
import time
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook

from tests.grading import ASSIGNMENTS, EXERCISES, SOLUTIONS, generate, nbgrader, new_course

ASSIGNMENT = "01_foundations"
TIMEOUT = 10  # seconds per cell for the round trip (the course's config says 30)


def test_exercises_are_generated_from_solutions(tmp_path: Path) -> None:
    released = generate(new_course(tmp_path))
    for assignment in ASSIGNMENTS:
        expected = sorted(p.name for p in (released / assignment).glob("*.ipynb"))
        committed = sorted(p.name for p in (EXERCISES / assignment).glob("*.ipynb"))
        assert committed == expected, (
            f"exercises/{assignment} has {committed}, nbgrader makes {expected}"
        )
        for name in expected:
            same = filecmp.cmp(
                released / assignment / name, EXERCISES / assignment / name, shallow=False
            )
            assert same, f"exercises/{assignment}/{name} is stale: run `make exercises`"


def _cells(path: Path) -> dict[str, nbformat.NotebookNode]:
    nb = nbformat.read(path, as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells if "nbgrader" in c.metadata}


def _answers() -> dict[str, dict[str, str]]:
    """The solution source of every answer cell, by notebook and grade_id."""
    answers = {}
    for path in sorted((SOLUTIONS / ASSIGNMENT).glob("*.ipynb")):
        cells = _cells(path)
        answers[path.stem] = {
            gid: c.source for gid, c in cells.items() if c.metadata["nbgrader"]["solution"]
        }
    return answers


MISTAKE = """
def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True)  # unbiased: the typical mistake
    return (x - mean) / torch.sqrt(var + eps) * weight + bias
"""

LOOPS_FOREVER = """
def sinusoidal_encoding(context_length, d_model):
    while True:
        pass
"""

STUDENTS = {
    "solution": {},
    "untouched": None,
    "mistake": {"01_positions_and_norms": {"layer_norm": MISTAKE}},
    "loops": {"01_positions_and_norms": {"sinusoidal_encoding": LOOPS_FOREVER}},
}


def _submit(course: Path, student: str, changes: dict | None) -> None:
    folder = course / "submitted" / student / ASSIGNMENT
    folder.mkdir(parents=True)
    answers = _answers()
    for path in sorted((course / "exercises" / ASSIGNMENT).glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        if changes is not None:
            replace = {**answers[path.stem], **changes.get(path.stem, {})}
            for cell in nb.cells:
                gid = cell.metadata.get("nbgrader", {}).get("grade_id")
                if gid in replace:
                    cell.source = replace[gid]
        nbformat.write(nb, folder / path.name)


@pytest.fixture(scope="module")
def course(tmp_path_factory: pytest.TempPathFactory) -> dict:
    course = new_course(tmp_path_factory.mktemp("course"))
    generate(course)
    for student, changes in STUDENTS.items():
        _submit(course, student, changes)
    start = time.perf_counter()
    nbgrader(
        "autograde", ASSIGNMENT, "--force", f"--Execute.timeout={TIMEOUT}", cwd=course, check=False
    )
    seconds = time.perf_counter() - start
    nbgrader("generate_feedback", ASSIGNMENT, "--force", cwd=course)
    scores: dict[str, dict[str, float | None]] = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        for student in STUDENTS:
            submission = gradebook.find_submission(ASSIGNMENT, student)
            scores[student] = {
                grade.name: grade.auto_score
                for notebook in submission.notebooks
                for grade in notebook.grades
            }
            points = {
                grade.name: grade.max_score
                for notebook in submission.notebooks
                for grade in notebook.grades
            }
    return {"path": course, "scores": scores, "points": points, "seconds": seconds}


def _autograded(points: dict[str, float]) -> list[str]:
    return [gid for gid in points if gid.startswith("test_")]


def test_there_are_enough_graded_cells(course: dict) -> None:
    auto = _autograded(course["points"])
    manual = [gid for gid in course["points"] if not gid.startswith("test_")]
    assert len(auto) >= 8, auto
    assert manual == ["why_positions"], manual


def test_solution_gets_full_marks(course: dict) -> None:
    scores, points = course["scores"]["solution"], course["points"]
    for gid in _autograded(points):
        assert scores[gid] == points[gid], f"{gid}: {scores[gid]} of {points[gid]}"
    assert scores["why_positions"] is None  # the written answer waits for a human


def test_untouched_exercise_gets_zero(course: dict) -> None:
    scores = course["scores"]["untouched"]
    for gid in _autograded(course["points"]):
        assert scores[gid] == 0, f"{gid} scored {scores[gid]} on an untouched notebook"


def test_typical_mistake_gets_partial_marks_and_a_diagnosis(course: dict) -> None:
    scores, points = course["scores"]["mistake"], course["points"]
    assert scores["test_layer_norm"] == 0
    others = [gid for gid in _autograded(points) if gid != "test_layer_norm"]
    assert all(scores[gid] == points[gid] for gid in others), scores
    feedback = course["path"] / "feedback" / "mistake" / ASSIGNMENT / "01_positions_and_norms.html"
    html = feedback.read_text()
    assert "Likely mistake: use the biased variance" in html


def test_cell_that_loops_forever_scores_zero_and_grading_finishes(course: dict) -> None:
    scores, points = course["scores"]["loops"], course["points"]
    assert scores["test_sinusoidal_encoding"] == 0
    assert scores["test_layer_norm"] == points["test_layer_norm"]
    assert scores["test_feed_forward"] == points["test_feed_forward"]
    assert (
        course["path"] / "autograded" / "loops" / ASSIGNMENT / "02_transformer_block.ipynb"
    ).exists()


def test_grading_is_fast(course: dict) -> None:
    # 4 students x 2 notebooks, one of them waiting out a TIMEOUT-second loop: each of the other
    # notebooks grades well within the course's 15 s budget.
    notebooks = len(list((SOLUTIONS / ASSIGNMENT).glob("*.ipynb")))
    per_notebook = (course["seconds"] - TIMEOUT) / (len(STUDENTS) * notebooks)
    assert per_notebook < 15, f"{per_notebook:.1f} s per notebook"
