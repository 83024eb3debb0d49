"""What the grader adds to nbgrader: the course's grading secret, a record of each submission's
hidden-test seed, and review flags that reach the gradebook.

Two nbgrader preprocessors, added to `Autograde` by the course's `nbgrader_config.py`, so that
`nbgrader autograde` and `tutorlib.checks.autograde` both use them:

* `RecordHiddenSeed` appends one line per graded notebook to
  `reports/<assignment>/grading-log.jsonl`: the student, the notebook, the seed its hidden tests
  drew from (`tutorlib.checks.secret`) and a fingerprint of the course's secret. Any grade can be
  reproduced: grade the same submission again (same files, same seed), or run its notebook with
  `TUTORLIB_HIDDEN_SEED=<seed>`.
* `FlagForReview` runs the tamper scan (`tutorlib.checks.tamper`) on the notebook it graded.
  When a learner's cell is flagged, every test cell after it in that notebook (whose result that
  code could have changed) is marked for manual grading in the gradebook with 0 points until a
  person grades it, so formgrader lists it; the flagged cell's comment says what the scan found
  and what the autograder had given.

`use_course_secret` reads (or creates) the secret, `<course>/grading_secret`, git-ignored and
hidden from the grading kernels, and puts it in the environment of nbgrader's kernels.

Book: Instructors (hidden tests; grades that can't be faked).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import secrets
from pathlib import Path

from nbconvert.exporters.exporter import ResourcesDict
from nbformat import NotebookNode
from nbgrader.api import Gradebook
from nbgrader.preprocessors import NbGraderPreprocessor

from tutorlib.checks.secret import SECRET_ENV, submission_seed
from tutorlib.checks.tamper import scan_cells

__all__ = ["SECRET_FILE", "FlagForReview", "RecordHiddenSeed", "use_course_secret"]

SECRET_FILE = "grading_secret"


def use_course_secret(course: Path) -> str:
    """The course's grading secret (created on first use, readable by its owner only), also
    set as TUTORLIB_GRADING_SECRET for the kernels nbgrader starts from this process."""
    path = Path(course) / SECRET_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(16) + "\n")
    secret = path.read_text().strip()
    os.environ[SECRET_ENV] = secret
    return secret


def fingerprint(secret: str) -> str:
    """Which secret graded a submission, without the secret itself."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


def _where(resources: ResourcesDict) -> tuple[Path, Path]:
    """(the folder nbgrader ran the notebook in, the course) for the notebook being graded."""
    folder = Path(resources.get("metadata", {}).get("path") or ".").resolve()
    if folder.parent.parent.name == "autograded":
        return folder, folder.parent.parent.parent
    return folder, Path.cwd()


class RecordHiddenSeed(NbGraderPreprocessor):
    """Append the graded notebook's hidden-test seed to reports/<assignment>/grading-log.jsonl."""

    def preprocess(
        self, nb: NotebookNode, resources: ResourcesDict
    ) -> tuple[NotebookNode, ResourcesDict]:
        info = resources["nbgrader"]
        folder, course = _where(resources)
        secret = os.environ.get(SECRET_ENV)
        record = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "assignment": info["assignment"],
            "student": info["student"],
            "notebook": info["notebook"],
            "hidden_seed": submission_seed(secret, folder) if secret else None,
            "secret": fingerprint(secret) if secret else None,
        }
        log = course / "reports" / info["assignment"] / "grading-log.jsonl"
        log.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as handle:  # one write per line: workers append safely
            handle.write(json.dumps(record) + "\n")
        return nb, resources


def _is_test(cell: NotebookNode) -> bool:
    meta = cell.metadata.get("nbgrader", {})
    return cell.cell_type == "code" and bool(meta.get("grade")) and not meta.get("solution")


def _answer_before(cells: list[NotebookNode], index: int) -> str | None:
    """The grade_id of the answer cell at or before `index` (after it, if there is none before):
    a comment can only be attached to an answer cell."""
    order = [*range(index, -1, -1), *range(index + 1, len(cells))]
    for i in order:
        meta = cells[i].metadata.get("nbgrader", {})
        if meta.get("solution") and cells[i].cell_type == "code":
            return meta["grade_id"]
    return None


class FlagForReview(NbGraderPreprocessor):
    """Mark the test cells after a flagged learner cell for manual grading (see the module's
    docstring). Runs after SaveAutoGrades, which it overrides for those cells."""

    def preprocess(
        self, nb: NotebookNode, resources: ResourcesDict
    ) -> tuple[NotebookNode, ResourcesDict]:
        flagged = {
            index: (cell, [f for f in findings if f.review])
            for index, (cell, findings) in scan_cells(nb.cells).items()
        }
        flagged = {index: found for index, found in flagged.items() if found[1]}
        if not flagged:
            return nb, resources
        info = resources["nbgrader"]
        where = (info["notebook"], info["assignment"], info["student"])
        first = min(flagged)
        with Gradebook(info["db_url"]) as gradebook:
            held = []
            for cell in nb.cells[first + 1 :]:
                if not _is_test(cell):
                    continue
                grade = gradebook.find_grade(cell.metadata["nbgrader"]["grade_id"], *where)
                auto = "no score" if grade.auto_score is None else f"{grade.auto_score:g}"
                held.append(f"{grade.name} ({auto} of {grade.max_score:g} from the autograder)")
                grade.auto_score = 0.0
                grade.needs_manual_grade = True
            for index, (name, findings) in flagged.items():
                found = "; ".join(f"line {f.line} {f.what}" for f in findings)
                note = (
                    f"Flagged for review: {name} {found}. Code like this can change what the "
                    "tests see, so a grader must look at it: the tests after it count 0 until "
                    "then: " + (", ".join(held) or "none") + "."
                )
                answer = _answer_before(nb.cells, index)
                if answer is not None:
                    comment = gradebook.find_comment(answer, *where)
                    comment.auto_comment = "\n".join(filter(None, [comment.auto_comment, note]))
            gradebook.db.commit()
        return nb, resources
