"""Shared fixtures: seeded, quiet, CPU-only; the site built once for the book and site tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import pytest
import torch

matplotlib.use("Agg")


def pytest_configure(config: pytest.Config) -> None:
    """nbval's kernels (the solution notebooks) talk over Unix sockets, as measure's do.

    nbval starts each kernel on TCP ports that jupyter_client picks as free and releases for the
    kernel to bind, and a kernel started meanwhile by the other test worker can take one first:
    the kernel dies ("Address already in use"). tests.budgets.unix_socket_kernels says more.
    """
    try:
        import nbval.kernel
    except ImportError:
        return
    import itertools
    import tempfile

    folder = tempfile.mkdtemp(prefix="nbval-kernels-")
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))
    count = itertools.count()

    class UnixSocketKernelManager(nbval.kernel.KernelManager):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(transport="ipc", ip=f"{folder}/k{next(count)}", **kwargs)

    nbval.kernel.KernelManager = UnixSocketKernelManager


# The hidden tests draw their inputs from a seed (tutorlib.checks.draw); these tests fix it, and
# the ones that matter run under several, as a class of submissions would be graded.
HIDDEN_SEEDS = ("course-a", "course-b", "course-c")


@pytest.fixture(autouse=True)
def _seed() -> Iterator[None]:
    from tutorlib.checks import draw

    torch.manual_seed(0)
    previous = draw._SEED
    draw._use_seed("tests")
    yield
    draw._use_seed(previous)


def expect_hint(check, candidate, hint: str, hidden: bool = True, seeds=HIDDEN_SEEDS) -> None:
    """`check(candidate)` fails with a message that contains `hint`, whatever the hidden tests
    draw (under each of `seeds`)."""
    from tutorlib.checks import ExerciseError, draw

    for seed in seeds if hidden else ["visible"]:
        draw._use_seed(seed)
        with pytest.raises(ExerciseError) as error:
            check(candidate, hidden=hidden)
        assert hint in str(error.value), f"seed {seed}: {error.value}"


def expect_pass(check, candidate, seeds=HIDDEN_SEEDS) -> None:
    """`check(candidate)` passes the visible tests and, under each of `seeds`, the hidden ones."""
    from tutorlib.checks import draw

    check(candidate, hidden=False)
    for seed in seeds:
        draw._use_seed(seed)
        check(candidate, hidden=True)


def expect_named_alone(check, candidate, hint: str, seeds=HIDDEN_SEEDS) -> None:
    """`check(candidate)` fails naming `hint` and no other mistake, under every seed."""
    from tutorlib.checks import ExerciseError, draw

    for seed in seeds:
        draw._use_seed(seed)
        with pytest.raises(ExerciseError) as error:
            check(candidate, hidden=True)
        message = str(error.value)
        assert hint in message and "one of these" not in message, f"seed {seed}: {message}"


NOT_ALLOWED = "Not allowed in this exercise"


def expect_refused(check, cheat, hidden: bool = True) -> None:
    """`check(cheat)` fails because the cheat runs something the exercise forbids, in the
    visible tests and (unless `hidden` is False) in the hidden ones."""
    expect_hint(check, cheat, NOT_ALLOWED, hidden=False)
    if hidden:
        expect_hint(check, cheat, NOT_ALLOWED, seeds=["refused"])


@dataclass(frozen=True)
class Site:
    html: Path  # the built site's folder
    returncode: int
    log: str  # the build's output, its end kept


@pytest.fixture(scope="session")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """The site built from a clean state with warnings as errors (tests/test_site.py says why),
    once per session. SITE_HTML=<folder> tests a site built already instead (say _build/html
    after `make book`)."""
    if os.environ.get("SITE_HTML"):
        return Site(Path(os.environ["SITE_HTML"]).resolve(), 0, "")
    from tests.budgets import ROOT, book_pages, seed_cache

    out = tmp_path_factory.mktemp("site")
    seeded = seed_cache(out / "_build" / ".jupyter_cache")
    print(f"{len(seeded)} of {len(book_pages())} pages rendered from the budget tests' execution")
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    command = [str(jupyter_book), "build", str(ROOT), "--path-output", str(out), "-W", "-n"]
    result = subprocess.run([*command, "--keep-going"], capture_output=True, text=True)
    log = result.stdout[-6000:] + result.stderr[-6000:]
    return Site(out / "_build" / "html", result.returncode, log)


@dataclass(frozen=True)
class GradedClass:
    """A temporary course where every assignment was released, handed in by a class of students
    (the round trips' students, the red team, and a student whose every answer is right only
    for the visible tests) and graded by the course's grader, then given feedback."""

    course: Path
    students: dict[str, dict[str, Any]]  # assignment -> student -> what they submitted
    scores: dict[tuple[str, str], dict[str, float | None]]  # (assignment, student) -> auto scores
    manual: dict[tuple[str, str], set[str]]  # (assignment, student) -> cells waiting for a person
    points: dict[str, dict[str, float]]  # assignment -> grade_id -> points
    seconds: dict[str, float]  # assignment -> wall time of grading it
    notebooks: dict[str, int]  # assignment -> notebooks graded (executed)


CELL_TIMEOUT = 10  # seconds per cell while grading the class (the course's config says 30)
PROBE = """
import sys

_error = getattr(sys, "last_value", None)  # what a later cell can read of the last failure
print("PROBE", repr(_error), vars(_error) if _error is not None else None)
print("PROBE", repr(getattr(_error, "__cause__", None)), repr(getattr(_error, "__context__", None)))
"""


def _cost(course: Path, assignment: str) -> int:
    """About how long an assignment takes to grade: its submitted notebooks, Chapter 3's (they
    train models) counted twice."""
    count = len(list(course.glob(f"submitted/*/{assignment}/*.ipynb")))
    return 2 * count if assignment == "03_training" else count


@pytest.fixture(scope="session")
def graded_class(tmp_path_factory: pytest.TempPathFactory) -> GradedClass:
    import nbformat
    from nbgrader.api import Gradebook

    from tests.grading import ASSIGNMENTS, generate, nbgrader, new_course
    from tests.redteam import CASES
    from tests.submissions import ROUND_TRIPS, hidden_only_changes, submit, submit_notebook
    from tutorlib.checks.autograde import class_report, grade_class

    course = new_course(tmp_path_factory.mktemp("class"))
    generate(course, ASSIGNMENTS[:1])  # creates the gradebook; the others two at a time
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda a: generate(course, [a]), ASSIGNMENTS[1:]))
    students: dict[str, dict[str, Any]] = {}
    seconds, notebooks = {}, {}
    for assignment in ASSIGNMENTS:
        plan = ROUND_TRIPS[assignment]
        plans: dict[str, Any] = {
            "solution": {},
            "untouched": None,
            "feedback": hidden_only_changes(assignment),
        }
        if plan.loops:
            plans["loops"] = plan.loops
        for student, changes in plans.items():
            submit(course, assignment, student, changes)
        # students whose round trip is about one notebook hand in that notebook only
        alone = {"mistake": plan.mistake, "hidden_only": plan.hidden_only, "tamper": plan.tamper}
        for student, changes in alone.items():
            if changes:
                submit_notebook(course, assignment, student, plan.mistake_notebook, changes)
                plans[student] = {plan.mistake_notebook: changes}
        for path in (course / "submitted" / "feedback" / assignment).glob("*.ipynb"):
            nb = nbformat.read(path, as_version=4)  # a probe after every test cell
            probed = []
            for cell in nb.cells:
                probed.append(cell)
                if cell.metadata.get("nbgrader", {}).get("grade") and cell.cell_type == "code":
                    probed.append(nbformat.v4.new_code_cell(PROBE))
            nb.cells = probed
            nbformat.write(nb, path)
        for case in CASES.get(assignment, []):
            submit_notebook(course, assignment, case.student, case.notebook, case.answers)
            plans[case.student] = case
        students[assignment] = plans

    def grade(assignment: str) -> tuple[str, float, int]:
        """Grade one assignment with one worker (one nbgrader run), report and give feedback."""
        start = time.perf_counter()
        outcomes = grade_class(
            assignment,
            course,
            workers=1,
            batch=len(students[assignment]),
            timeout=CELL_TIMEOUT,
            progress=False,
        )
        seconds = time.perf_counter() - start
        assert all(o.status == "graded" for o in outcomes), [o for o in outcomes if o.log]
        class_report(assignment, course, outcomes)
        # feedback for the students whose pages are read (the others are judged from the
        # gradebook and their autograded notebooks): rendering the others costs a minute
        quiet = [c.student for c in CASES.get(assignment, []) if c.kind != "mistake"]
        exclude = f"--CourseDirectory.student_id_exclude={','.join(quiet)}"
        nbgrader("generate_feedback", assignment, "--force", exclude, cwd=course)
        return assignment, seconds, len(list(course.glob(f"submitted/*/{assignment}/*.ipynb")))

    # Two assignments at a time, one worker each: both cores stay busy to the end (two workers
    # on one assignment wait for each other at its end).
    nbgrader("db", "upgrade", cwd=course)
    longest_first = sorted(ASSIGNMENTS, key=lambda a: -_cost(course, a))
    with ThreadPoolExecutor(max_workers=2) as pool:
        for assignment, took, count in pool.map(grade, longest_first):
            seconds[assignment], notebooks[assignment] = took, count
    scores, manual, points = {}, {}, {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        for assignment, plans in students.items():
            for student in plans:
                submission = gradebook.find_submission(assignment, student)
                grades = [g for notebook in submission.notebooks for g in notebook.grades]
                scores[assignment, student] = {g.name: g.auto_score for g in grades}
                manual[assignment, student] = {
                    g.name for g in grades if g.needs_manual_grade and g.name.startswith("test_")
                }
                points[assignment] = {g.name: g.max_score for g in grades}
    return GradedClass(course, students, scores, manual, points, seconds, notebooks)
