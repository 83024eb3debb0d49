"""nbgrader configuration: the repository root is the course directory.

Instructor notebooks live in solutions/ and `nbgrader generate_assignment` writes the
student versions to exercises/ (committed). submitted/, autograded/, feedback/ and
gradebook.db are per-course state and git-ignored.
"""

from pathlib import Path

c = get_config()  # noqa: F821  (injected by traitlets)

c.CourseDirectory.root = "."
c.CourseDirectory.course_id = "transformers"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"

# Per-cell execution limit while autograding. nbgrader reads Execute.timeout, not
# ExecutePreprocessor.timeout. Every graded cell runs in seconds; a cell that loops
# forever is stopped here and scores zero.
c.Execute.timeout = 30
# A graded notebook's kernel is stopped as soon as its last cell has run (a graceful shutdown
# waits about a second per notebook for nothing).
c.Execute.shutdown_kernel = "immediate"

# What a learner's stub looks like in exercises/.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# `nbgrader zip_collect` of an LMS export: files named <student>_<notebook>.ipynb anywhere in the
# archive. The expression is matched against the full path, and file_id must include .ipynb,
# or zip_collect collects nothing and exits 0 (book: Instructors).
c.FileNameCollectorPlugin.named_regexp = r".*/(?P<student_id>[\w-]+?)_(?P<file_id>\d[^/]*\.ipynb)$"

# A deleted test cell comes back at grading time.
c.OverwriteCells.add_missing_cells = True

# Hidden tests draw their inputs from a seed derived from this course's secret (created on first
# use, git-ignored, hidden from the grading kernels) and each submission's files:
# see tutorlib.checks.secret and tutorlib.checks.gradebook.
from tutorlib.checks.gradebook import FlagForReview, RecordHiddenSeed, use_course_secret  # noqa: E402

use_course_secret(Path(__file__).resolve().parent)

# Feedback shows a hidden test's verdict (the learner's diagnostic), not its code or the values
# the reference computed (nbgrader issues #917 and #1363): see tutorlib.checks.feedback.
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor  # noqa: E402
from nbgrader.preprocessors import GetGrades  # noqa: E402

from tutorlib.checks.feedback import HideHiddenTests  # noqa: E402

c.GenerateFeedback.preprocessors = [GetGrades, HideHiddenTests, CSSHTMLHeaderPreprocessor]

# A cell that crashes its kernel (a segfault, os._exit) or ignores the interrupt after the
# timeout costs that cell's points, not the whole notebook's: see tutorlib.checks.autograde.
# Each graded notebook's hidden-test seed goes to reports/<assignment>/grading-log.jsonl, and a
# learner's cell that the tamper scan flags puts the tests after it up for manual grading in the
# gradebook: see tutorlib.checks.gradebook.
from nbgrader.converters import Autograde  # noqa: E402
from nbgrader.preprocessors import Execute, SaveAutoGrades  # noqa: E402

from tutorlib.checks.autograde import ResilientExecute  # noqa: E402

_steps = Autograde.class_traits()["autograde_preprocessors"].default()
_steps = [ResilientExecute if p is Execute else p for p in _steps]
_save = _steps.index(SaveAutoGrades)
_steps[_save : _save + 1] = [RecordHiddenSeed, SaveAutoGrades, FlagForReview]
c.Autograde.autograde_preprocessors = _steps
