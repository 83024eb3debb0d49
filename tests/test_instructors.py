"""The Instructors page (book/instructors.md) works as written.

Every ```bash and ```python block of the page runs, in the page's order, in a temporary course
with three synthetic students who hand in their notebooks through an LMS-style archive; the
page's configuration excerpts must be the course's configuration. Then the products of the
commands are read back: the release archive, the exchange, the collected submissions, the
report, the feedback, the hand-entered marks and the exported grades.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.grading import ROOT, new_course
from tests.submissions import LAYER_NORM_MISTAKE, submit

PAGE = ROOT / "book" / "instructors.md"
ASSIGNMENT = "01_foundations"
STUDENTS = {"alice": {}, "bob-2": {"01_positions_and_norms": {"layer_norm": LAYER_NORM_MISTAKE}}}
STUDENTS["carol_k"] = None  # the untouched exercise
WRITTEN = "why_positions"


def blocks() -> list[tuple[str, str]]:
    """(language, source) of each fenced block of the page, in order."""
    fence = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
    return [(m.group(1), m.group(2)) for m in fence.finditer(PAGE.read_text())]


def _lms_archive(course: Path) -> None:
    """What an LMS hands the instructor: each student's notebooks, renamed <student>_<file>,
    in one zip, in downloaded/<assignment>/archive/."""
    staging = course.parent / "lms"
    (staging / "submitted").mkdir(parents=True)
    (staging / "exercises").symlink_to(course / "exercises")
    for student, changes in STUDENTS.items():
        submit(staging, ASSIGNMENT, student, changes)
    archive = course / "downloaded" / ASSIGNMENT / "archive"
    archive.mkdir(parents=True)
    with zipfile.ZipFile(archive / "submissions.zip", "w") as zf:
        for path in sorted((staging / "submitted").glob(f"*/{ASSIGNMENT}/*.ipynb")):
            zf.write(path, f"export/{path.parent.parent.name}_{path.name}")


def _written_marks(course: Path) -> None:
    with open(course / "written_marks.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", "notebook", "cell", "score", "comment"])
        writer.writerow(["alice", "01_positions_and_norms", WRITTEN, 2, "Clear and correct."])
        writer.writerow(["bob-2", "01_positions_and_norms", WRITTEN, 1, "Say why order matters."])
        writer.writerow(["carol_k", "01_positions_and_norms", WRITTEN, 0, "No answer."])


@pytest.fixture(scope="module")
def course(tmp_path_factory: pytest.TempPathFactory) -> dict:
    course = new_course(tmp_path_factory.mktemp("instructors") / "course")
    exchange = course.parent / "exchange"
    exchange.mkdir()
    exchange.chmod(0o777)  # every user of a hub writes to the exchange
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        EXCHANGE=str(exchange),
    )
    outputs = []
    for language, source in blocks():
        if language == "python" and source.startswith("c."):
            continue  # configuration, read by test_the_config_on_the_page_is_the_course_config
        if "zip_collect" in source:
            _lms_archive(course)
        if "Gradebook(" in source:
            _written_marks(course)
        if language == "bash":
            command = ["bash", "-euo", "pipefail", "-c", source]
        elif language == "python":
            command = [sys.executable, "-c", source]
        else:
            continue
        result = subprocess.run(command, cwd=course, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"{source}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        outputs.append((source, result.stdout))
    return {"path": course, "exchange": exchange, "outputs": outputs}


def test_every_command_block_ran(course: dict) -> None:
    ran = [source for source, _ in course["outputs"]]
    for command in (
        "generate_assignment",
        "release_assignment",
        "zip_collect",
        "tutorlib.checks.autograde",
        "generate_feedback",
        "nbgrader export",
        "formgrader",
    ):
        assert any(command in source for source in ran), f"the page has no block with {command}"


def test_the_config_on_the_page_is_the_course_config() -> None:
    config = (ROOT / "nbgrader_config.py").read_text().splitlines()
    excerpts = [source for language, source in blocks() if language == "python"]
    lines = [line for s in excerpts if s.startswith("c.") for line in s.splitlines()]
    assert lines, "the page shows no configuration"
    for line in lines:
        assert line in config, f"the page shows {line!r}, nbgrader_config.py does not have it"


def test_release_archive_and_exchange_hold_the_student_notebooks(course: dict) -> None:
    with zipfile.ZipFile(course["path"] / "01_foundations.zip") as zf:
        names = sorted(Path(n).name for n in zf.namelist() if n.endswith(".ipynb"))
    assert names == ["01_positions_and_norms.ipynb", "02_transformer_block.ipynb"]
    released = list((course["exchange"] / "transformers" / "outbound" / ASSIGNMENT).glob("*.ipynb"))
    assert len(released) == 2


def test_zip_collect_filed_every_student(course: dict) -> None:
    submitted = course["path"] / "submitted"
    assert sorted(p.name for p in submitted.iterdir()) == sorted(STUDENTS)
    for student in STUDENTS:
        assert len(list((submitted / student / ASSIGNMENT).glob("*.ipynb"))) == 2, student


def test_grades_combine_autograding_and_the_written_marks(course: dict) -> None:
    with open(course["path"] / "grades.csv") as handle:
        rows = {row["student_id"]: row for row in csv.DictReader(handle)}
    assert sorted(rows) == sorted(STUDENTS)
    assert float(rows["alice"]["score"]) == 17  # 15 autograded + 2 written
    assert float(rows["bob-2"]["score"]) == 14  # loses test_layer_norm (2), written 1 of 2
    assert float(rows["carol_k"]["score"]) == 0
    assert all(float(row["max_score"]) == 17 for row in rows.values())


def test_the_grader_ran_two_nbgrader_processes_at_once(course: dict) -> None:
    # Three students in batches of two on two workers: two nbgrader processes wrote to the
    # SQLite gradebook at the same time, and every student was graded.
    (output,) = [out for source, out in course["outputs"] if "tutorlib.checks.autograde" in source]
    assert "3 submissions in" in output, output
    assert "nbgrader failed" not in output and "timed out" not in output, output


def test_report_and_feedback_exist_for_the_class(course: dict) -> None:
    with open(course["path"] / "reports" / ASSIGNMENT / "students.csv") as handle:
        report = {row["student"]: row for row in csv.DictReader(handle)}
    assert float(report["alice"]["score"]) == 15 and report["alice"]["review"] == ""
    for student in STUDENTS:
        pages = list((course["path"] / "feedback" / student / ASSIGNMENT).glob("*.html"))
        assert len(pages) == 2, student
    bob = course["path"] / "feedback" / "bob-2" / ASSIGNMENT / "01_positions_and_norms.html"
    assert "Say why order matters." in bob.read_text()
