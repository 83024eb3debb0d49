"""nbgrader configuration: the repository root is the course directory.

Instructor notebooks live in solutions/ and `nbgrader generate_assignment` writes the
student versions to exercises/ (committed). submitted/, autograded/, feedback/ and
gradebook.db are per-course state and git-ignored.
"""

c = get_config()  # noqa: F821  (injected by traitlets)

c.CourseDirectory.root = "."
c.CourseDirectory.course_id = "transformers"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"

# Per-cell execution limit while autograding. nbgrader reads Execute.timeout, not
# ExecutePreprocessor.timeout. Every graded cell runs in seconds; a cell that loops
# forever is stopped here and scores zero.
c.Execute.timeout = 30

# What a learner's stub looks like in exercises/.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# A deleted test cell comes back at grading time.
c.OverwriteCells.add_missing_cells = True

# Feedback shows a hidden test's verdict (the learner's diagnostic), not its code or the values
# the reference computed (nbgrader issues #917 and #1363): see tutorlib.checks.feedback.
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor  # noqa: E402
from nbgrader.preprocessors import GetGrades  # noqa: E402

from tutorlib.checks.feedback import HideHiddenTests  # noqa: E402

c.GenerateFeedback.preprocessors = [GetGrades, HideHiddenTests, CSSHTMLHeaderPreprocessor]
