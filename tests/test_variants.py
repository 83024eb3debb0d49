"""Right answers written differently (tests/variants/): not flagged, full marks. Wrong answers
as learners write them: the points lost, and the common mistakes named.

Each variant replaces its answer cell in the solution notebook; every test cell that checks a
name the variant defines runs as in the learner's notebook, under every hidden-test seed.
"""

from __future__ import annotations

import re
from contextlib import redirect_stdout
from io import StringIO

import nbformat
import pytest

from tests.conftest import HIDDEN_SEEDS
from tests.grading import SOLUTIONS
from tests.hidden_only import defined_names
from tests.variants import MISTAKES, VARIANTS
from tutorlib.checks import ExerciseError, draw
from tutorlib.checks.tamper import scan_source


def _ids() -> list[str]:
    return [
        f"{notebook.split('/')[-1][:-6]}-{grade_id}-{label}"
        for notebook, grade_id, label, _ in VARIANTS
    ]


def _run(notebook: str, grade_id: str, source: str) -> tuple[dict, list[tuple[str, str]]]:
    """The namespace after the setup and answer cells (the variant in place of `grade_id`), and
    the (grade_id, source) of the test cells that check a name the variant defines."""
    cells = nbformat.read(SOLUTIONS / notebook, as_version=4).cells
    names = set(defined_names(source)) | set(re.findall(r"^(\w+)\s*=", source, re.MULTILINE))
    namespace: dict = {}
    tests = []
    with redirect_stdout(StringIO()):
        for cell in cells:
            if cell.cell_type != "code":
                continue
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("grade_id") == grade_id:
                exec(source, namespace)
            elif meta.get("solution") or meta.get("grade_id") == "setup":
                exec(cell.source, namespace)
            elif meta.get("grade"):
                tested = set(re.findall(r"checks\.check_\w+\(\s*(\w+)", cell.source))
                if tested & names:
                    tests.append((meta["grade_id"], cell.source))
    return namespace, tests


def test_there_are_variants_of_every_answer_cell() -> None:
    answers = set()
    for path in SOLUTIONS.glob("*/*.ipynb"):
        for cell in nbformat.read(path, as_version=4).cells:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("solution") and cell.cell_type == "code":
                answers.add((str(path.relative_to(SOLUTIONS)), meta["grade_id"]))
    covered = {(notebook, grade_id) for notebook, grade_id, _, _ in VARIANTS}
    assert covered <= answers, covered - answers
    assert not answers - covered, f"answer cells without a variant: {sorted(answers - covered)}"


@pytest.mark.parametrize("notebook, grade_id, label, source", VARIANTS, ids=_ids())
def test_a_right_answer_written_differently_gets_full_marks(
    notebook: str, grade_id: str, label: str, source: str
) -> None:
    assert scan_source(source) == [], "the tamper scan flags an honest answer"
    namespace, tests = _run(notebook, grade_id, source)
    assert tests, f"no test cell checks what {grade_id} defines"
    for test_id, test in tests:
        for seed in HIDDEN_SEEDS:
            draw._use_seed(seed)
            out = StringIO()
            try:
                with redirect_stdout(out):
                    exec(test, dict(namespace))
            except ExerciseError as error:
                pytest.fail(f"{test_id}, seed {seed}: {error}")
            printed = out.getvalue()
            assert "passes the hidden tests" in printed, f"{test_id}, seed {seed}: {printed}"


def _mistake_ids() -> list[str]:
    return [f"{nb.split('/')[-1][:-6]}-{grade_id}-{label}" for nb, grade_id, label, *_ in MISTAKES]


@pytest.mark.parametrize("notebook, grade_id, label, source, named", MISTAKES, ids=_mistake_ids())
def test_a_wrong_answer_loses_the_points_and_a_common_one_is_named(
    notebook: str, grade_id: str, label: str, source: str, named: str | None
) -> None:
    namespace, tests = _run(notebook, grade_id, source)
    assert tests, f"no test cell checks what {grade_id} defines"
    for seed in HIDDEN_SEEDS:
        draw._use_seed(seed)
        failures = []
        for _, test in tests:
            try:
                with redirect_stdout(StringIO()):
                    exec(test, dict(namespace))
            except ExerciseError as error:
                failures.append(str(error))
        assert failures, f"seed {seed}: a wrong answer gets full marks"
        if named is not None:
            assert any(named in failure for failure in failures), f"seed {seed}: {failures}"
