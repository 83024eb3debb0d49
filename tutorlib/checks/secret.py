"""The seed of a submission's hidden tests, derived from the course's grading secret.

The grading command keeps a secret per course (`grading_secret` beside the gradebook,
git-ignored) and puts it in nbgrader's environment as `TUTORLIB_GRADING_SECRET`. Each
submission's hidden tests draw their inputs from

    seed = HMAC-SHA256(secret, assignment / student / digest of the submitted files)

so a submission graded twice gets the same inputs (its grade can be reproduced), any change to
it draws new ones, and a student's own copy of the course holds neither. The sandboxed kernel's
launcher turns the secret into this seed (`TUTORLIB_HIDDEN_SEED`) before the kernel starts, so
that the learner's code never sees the secret itself.

Standard library only: the sandbox launcher imports this file without importing torch.

Book: Instructors (hidden tests).
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

__all__ = ["SECRET_ENV", "SEED_ENV", "submission_seed"]

SECRET_ENV = "TUTORLIB_GRADING_SECRET"  # the course's secret, in the grader's environment
SEED_ENV = "TUTORLIB_HIDDEN_SEED"  # one submission's seed (or any fixed seed, for tests)


def _submission_digest(folder: Path) -> str:
    """SHA-256 over the names and contents of the files under `folder` ('' if there is none)."""
    digest = hashlib.sha256()
    if folder.is_dir():
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def submission_seed(secret: str, autograded: Path) -> str:
    """The hidden-test seed of the submission graded in `autograded`, nbgrader's
    `<course>/autograded/<student>/<assignment>` (where it runs the submission's kernel).

    Elsewhere (a notebook run outside a course) the seed depends on the secret alone.
    """
    autograded = autograded.resolve()
    if autograded.parent.parent.name == "autograded":
        student, assignment = autograded.parent.name, autograded.name
        submitted = autograded.parent.parent.parent / "submitted" / student / assignment
        message = f"{assignment}/{student}/{_submission_digest(submitted)}"
    else:
        message = "outside a course"
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()[:32]
