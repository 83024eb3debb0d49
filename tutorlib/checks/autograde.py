"""Autograde a class in parallel, each submission in the sandboxed kernel, and report on it.

nbgrader grades one submission after another. `grade_class` runs one
`nbgrader autograde ASSIGNMENT` per batch of a few students on a pool of workers (the gradebook is
SQLite by default, which takes one writer at a time and makes the others wait; give nbgrader a
PostgreSQL URL with `--CourseDirectory.db_url` for large classes), each in the
`tutorlib-sandbox` kernel (`tutorlib.checks.sandbox`), without network where the machine
allows a new network namespace, and stops a submission that runs past its time. Then
`class_report` reads nbgrader's gradebook and the autograded notebooks and writes, under
`reports/ASSIGNMENT/`:

* `students.csv`: score, status (graded, or what went wrong) and the cells the tamper scan
  flagged for review (`tutorlib.checks.tamper`), per student;
* `questions.csv` and `questions.png`: per graded cell, how many submissions lost points and
  the most common diagnostic message.

    python -m tutorlib.checks.autograde 01_foundations --workers 2

Book: Instructors (class scale).
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import nbformat
from nbclient.client import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbgrader.preprocessors import Execute
from traitlets import Integer

from tutorlib.checks.sandbox import KERNEL_NAME, install_kernelspec, sandbox_available
from tutorlib.checks.tamper import scan_notebook

__all__ = [
    "NotGenerated",
    "Outcome",
    "ResilientExecute",
    "class_report",
    "grade_class",
    "network_isolation",
    "plot_questions",
    "set_aside_unreadable",
]

_STOPPED = {"CellTimeoutError", "KeyboardInterrupt"}


class ResilientExecute(Execute):
    """nbgrader's Execute, which goes on after a cell kills or hangs its kernel.

    nbgrader gives up on a whole notebook when its kernel dies (a segfault, `os._exit`) or
    ignores the interrupt after a timeout, and the student scores nothing. Here that cell gets
    an error output saying what happened, a new kernel runs again the cells that completed
    before it (their outputs are kept from the first run), and grading goes on after it, so
    every other cell is graded as usual. After `max_restarts` restarts the remaining cells are
    not run, and each gets an error output so that it scores zero.
    """

    max_restarts = Integer(3, help="new kernels per notebook before giving up").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        NotebookClient.__init__(self, nb, km)
        self.reset_execution_trackers()
        self._check_assign_resources(resources)
        completed: list[int] = []  # cells to run again in a new kernel
        start, restarts = 0, 0
        while start < len(self.nb.cells) and restarts <= self.max_restarts:
            with self.setup_kernel():
                info = self.wait_for_reply(self.kc.kernel_info())
                self.nb.metadata["language_info"] = info["content"]["language_info"]
                for index in completed:
                    self.execute_cell(nbformat.from_dict(self.nb.cells[index]), index)
                index = start
                try:
                    for index in range(start, len(self.nb.cells)):
                        cell, _ = self.preprocess_cell(self.nb.cells[index], resources, index)
                        errors = {o.get("ename") for o in cell.get("outputs", [])}
                        if cell.cell_type == "code" and not errors & _STOPPED:
                            completed.append(index)
                    start = len(self.nb.cells)
                except (DeadKernelError, CellTimeoutError) as error:
                    if isinstance(error, DeadKernelError):
                        ename, what = "KernelDied", "the kernel died while running this cell"
                    else:
                        ename, what = "CellTimeoutError", "this cell ignored the interrupt"
                    _stop(self.nb.cells[index], ename, f"{what}; grading went on in a new kernel")
                    start, restarts = index + 1, restarts + 1
        # nbgrader gives a test cell without an error full marks: cells never run get one.
        for cell in self.nb.cells[start:]:
            if cell.cell_type == "code":
                _stop(cell, "NotRun", f"not run: the kernel was restarted {restarts} times")
        self.set_widgets_metadata()
        return self.nb, self.resources


def _stop(cell: nbformat.NotebookNode, ename: str, message: str) -> None:
    """Replace a cell's interrupted or partial error outputs by one error saying why."""
    cell.outputs = [o for o in cell.get("outputs", []) if o.get("ename") not in _STOPPED]
    cell.outputs.append(
        nbformat.v4.new_output(
            "error", ename=ename, evalue=message, traceback=[f"{ename}: {message}"]
        )
    )


@dataclasses.dataclass
class Outcome:
    """How grading one student's submission went."""

    student: str
    status: str  # "graded", "timed out", "nbgrader failed"
    seconds: float
    log: str = ""  # the end of nbgrader's output when it did not end well
    set_aside: list[str] = dataclasses.field(default_factory=list)  # unreadable notebooks


class NotGenerated(Exception):
    """The course's gradebook does not know the assignment: nothing can be graded yet."""


def require_generated(assignment: str, course: Path) -> None:
    """Raise NotGenerated, saying what to run, unless `nbgrader generate_assignment` has recorded
    `assignment` in the course's gradebook (its test cells and their points, which nbgrader
    needs to grade and to put hidden and deleted tests back)."""
    from nbgrader.api import Gradebook, MissingEntry

    database = course / "gradebook.db"
    known = database.exists()
    if known:
        with Gradebook(f"sqlite:///{database}") as gradebook:
            try:
                gradebook.find_assignment(assignment)
            except MissingEntry:
                known = False
    if not known:
        raise NotGenerated(
            f"the gradebook of {course} does not know assignment {assignment!r} yet. Run "
            f"`nbgrader generate_assignment {assignment}` in {course} first (it records the "
            "assignment's test cells and points), then grade again. Nothing was graded."
        )


def network_isolation() -> list[str]:
    """The command prefix that runs a program with loopback only, or [] where it can't.

    `unshare -n` (root) or `unshare -rn` (a user namespace), then `ip link set lo up` so the
    kernel's channels to the grader still work.
    """
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return []
    for flags in ("-n", "-rn"):
        probe = ["unshare", flags, "sh", "-c", "ip link set lo up"]
        if subprocess.run(probe, capture_output=True).returncode == 0:
            return ["unshare", flags, "sh", "-c", 'ip link set lo up && exec "$0" "$@"']
    return []


def _nbgrader() -> str:
    return str(Path(sys.executable).parent / "nbgrader")


def _grade_batch(
    batch: list[str],
    everyone: list[str],
    assignment: str,
    course: Path,
    prefix: list[str],
    extra: list[str],
    limit: float,
) -> list[Outcome]:
    """One `nbgrader autograde` for the students in `batch` (the others excluded by name), so
    that nbgrader starts once per batch rather than once per student."""
    aside = {student: set_aside_unreadable(course, assignment, student) for student in batch}
    others = ",".join(sorted(set(everyone) - set(batch)))
    command = [*prefix, _nbgrader(), "autograde", assignment, "--force", *extra]
    command += [f"--CourseDirectory.student_id_exclude={others}"]
    # nbgrader shells out to `alembic`: the environment's bin first on PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    start = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=course,
        env=dict(os.environ, PATH=path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so a stop takes its kernels along
    )
    try:
        output, _ = process.communicate(timeout=limit * len(batch))
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        timed_out = True
    seconds = (time.perf_counter() - start) / len(batch)
    outcomes = []
    for student in batch:
        failed = f"error processing assignment '{assignment}' for student '{student}'" in output
        done = (course / "autograded" / student / assignment).is_dir()
        if timed_out and not done:
            status = "timed out"
        elif failed or not done:
            status = "nbgrader failed"
        else:
            status = "graded"
        log = "" if status == "graded" else output[-2000:]
        outcomes.append(Outcome(student, status, seconds, log, aside[student]))
    return outcomes


def set_aside_unreadable(course: Path, assignment: str, student: str) -> list[str]:
    """Rename each submitted notebook that is not a readable notebook to `<name>.unreadable`.

    nbgrader stops at the first notebook it cannot read and grades none of the student's
    notebooks; set aside, a broken file counts as a missing notebook (zero) and the others are
    graded. Returns what was set aside, for the report.
    """
    aside = []
    for path in sorted((course / "submitted" / student / assignment).glob("*.ipynb")):
        try:
            nbformat.validate(nbformat.read(path, as_version=4))
        except Exception as error:  # noqa: BLE001  (any reason it cannot be read)
            path.rename(path.with_name(path.name + ".unreadable"))
            aside.append(f"{path.name} set aside as unreadable ({type(error).__name__})")
    return aside


def submitted_students(course: Path, assignment: str) -> list[str]:
    """Students with a folder `submitted/<student>/<assignment>/`."""
    return sorted(p.parent.name for p in (course / "submitted").glob(f"*/{assignment}"))


def grade_class(
    assignment: str,
    course: Path = Path("."),
    students: list[str] | None = None,
    workers: int = 2,
    batch: int = 8,
    timeout: int = 30,
    submission_timeout: float = 600.0,
    sandbox: bool = True,
    network: bool = False,
    progress: bool = True,
) -> list[Outcome]:
    """Autograde `students` (default: every submission) with `workers` nbgrader processes,
    each grading `batch` students at a time.

    `timeout` is nbgrader's limit per cell (`Execute.timeout`); a batch still running after
    `submission_timeout` seconds per student is stopped, and its students not yet graded are
    reported as timed out (a last resort: `ResilientExecute` already moves past a cell that
    hangs its kernel).
    """
    course = Path(course).resolve()
    require_generated(assignment, course)
    students = submitted_students(course, assignment) if students is None else students
    extra = [f"--Execute.timeout={timeout}"]
    if sandbox:
        install_kernelspec()
        extra.append(f"--Execute.kernel_name={KERNEL_NAME}")
        if not sandbox_available():
            print(
                "WARNING: bubblewrap (bwrap) is missing: submissions run with resource limits "
                "only, and can read and write the grader's files (apt install bubblewrap).",
                file=sys.stderr,
            )
    prefix = [] if network else network_isolation()
    if not network and not prefix:
        print(
            "WARNING: no network namespace here: submissions can open connections.", file=sys.stderr
        )
    # The first nbgrader run creates or upgrades the gradebook: not in parallel.
    subprocess.run([_nbgrader(), "db", "upgrade"], cwd=course, capture_output=True, check=False)
    batches = [students[i : i + batch] for i in range(0, len(students), batch)]
    outcomes: list[Outcome] = []
    bar = _progress(len(students), assignment) if progress else None
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [
            pool.submit(
                _grade_batch, b, students, assignment, course, prefix, extra, submission_timeout
            )
            for b in batches
        ]
        for future in as_completed(futures):
            outcomes += future.result()
            if bar is not None:
                bar.update(len(future.result()))
    if bar is not None:
        bar.close()
    return sorted(outcomes, key=lambda o: o.student)


def _progress(total: int, assignment: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"autograde {assignment}", unit="submission", file=sys.stderr)


def _last_line(output: dict) -> str:
    """The diagnostic of an error output: its `Name: message`, first line of the message."""
    message = str(output.get("evalue", "")).strip().splitlines()
    return f"{output.get('ename', 'Error')}: {message[0] if message else ''}"[:160]


def _cell_messages(notebook: Path) -> dict[str, str]:
    """grade_id -> the first error message of each graded cell of an autograded notebook."""
    try:
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError):
        return {}
    messages, not_run = {}, False
    for cell in cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        stops = [o for o in errors if o.get("ename") in ("KernelDied", "CellTimeoutError")]
        if not not_run:  # the first cell left unrun stands for the rest
            stops += [o for o in errors if o.get("ename") == "NotRun"]
            not_run = bool(stops and stops[-1].get("ename") == "NotRun")
        if stops:  # ResilientExecute's note on a cell that killed or hung its kernel
            messages[f"stopped {meta.get('grade_id', '?')}"] = _last_line(stops[0])
        if meta.get("grade") and errors:
            messages[meta["grade_id"]] = _last_line(errors[0])
    return messages


def class_report(
    assignment: str, course: Path = Path("."), outcomes: list[Outcome] | None = None
) -> Path:
    """Write students.csv, questions.csv and questions.png under reports/<assignment>/."""
    from nbgrader.api import Gradebook, MissingEntry

    course = Path(course).resolve()
    folder = course / "reports" / assignment
    folder.mkdir(parents=True, exist_ok=True)
    status = {o.student: o.status for o in outcomes or []}
    aside = {o.student: o.set_aside for o in outcomes or []}
    students = sorted(set(submitted_students(course, assignment)) | set(status))
    # cell -> the messages of the submissions that lost points on it
    lost: dict[str, list[str]] = collections.defaultdict(list)
    rows, questions = [], {}
    db_url = f"sqlite:///{course / 'gradebook.db'}"
    with Gradebook(db_url) as gradebook:
        expected = [nb.name for nb in gradebook.find_assignment(assignment).notebooks]
        for student in students:
            submitted = course / "submitted" / student / assignment
            autograded = course / "autograded" / student / assignment
            flags, problems = [], list(aside.get(student, []))
            for name in expected:
                source = autograded / f"{name}.ipynb"
                if not source.exists():
                    source = submitted / f"{name}.ipynb"
                if not source.exists():
                    if not (submitted / f"{name}.ipynb.unreadable").exists():
                        problems.append(f"{name}.ipynb missing")
                    continue
                for cell, findings in scan_notebook(source).items():
                    flags += [f"{name}/{cell}: {f.what} (line {f.line})" for f in findings]
            score, max_score = 0.0, 0.0
            try:
                submission = gradebook.find_submission(assignment, student)
            except MissingEntry:
                submission = None
            for notebook in submission.notebooks if submission else []:
                messages = _cell_messages(autograded / f"{notebook.name}.ipynb")
                problems += [
                    f"{notebook.name}/{key.removeprefix('stopped ')}: {message}"
                    for key, message in messages.items()
                    if key.startswith("stopped ")
                ]
                for grade in notebook.grades:
                    key = f"{notebook.name}/{grade.name}"
                    questions.setdefault(key, [grade.max_score, 0, 0])
                    questions[key][1] += 1
                    if grade.auto_score is not None and grade.auto_score < grade.max_score:
                        questions[key][2] += 1
                        missing = not (autograded / f"{notebook.name}.ipynb").exists()
                        default = "(notebook missing)" if missing else "(no error output)"
                        lost[key].append(messages.get(grade.name, default))
                    score += grade.score or 0.0
                    max_score += grade.max_score
            if submission is None:
                max_score = gradebook.find_assignment(assignment).max_score
            rows.append(
                {
                    "student": student,
                    "score": round(score, 2),
                    "max_score": max_score,
                    "status": status.get(student, "graded" if submission else "not graded"),
                    "problems": "; ".join(problems),
                    "review": "; ".join(flags),
                }
            )
    _write_csv(folder / "students.csv", rows)
    question_rows = []
    for key, (points, graded, failed) in questions.items():
        common = collections.Counter(lost[key]).most_common(1)
        question_rows.append(
            {
                "cell": key,
                "max_score": points,
                "graded": graded,
                "lost_points": failed,
                "fraction_lost": round(failed / graded, 3) if graded else 0.0,
                "most_common_message": common[0][0] if common else "",
                "times": common[0][1] if common else 0,
            }
        )
    _write_csv(folder / "questions.csv", question_rows)
    plot_questions(question_rows, folder / "questions.png", assignment)
    return folder


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        if rows:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def plot_questions(rows: list[dict], path: Path, title: str) -> None:
    """A bar per graded cell: the fraction of submissions that lost points, with the most
    common diagnostic message beside the bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["fraction_lost"])
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.2))
    ax.barh([r["cell"] for r in rows], [r["fraction_lost"] for r in rows], color="tab:red")
    for y, row in enumerate(rows):
        note = row["most_common_message"]
        if note:
            ax.text(0.01, y, f"  {note[:90]}", va="center", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of submissions that lost points")
    ax.set_title(f"{title}: where points were lost (most common message)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("assignment")
    parser.add_argument("--course", type=Path, default=Path("."))
    parser.add_argument("--students", nargs="*", help="default: every submission")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch", type=int, default=8, help="students per nbgrader run")
    parser.add_argument("--timeout", type=int, default=30, help="seconds per cell")
    parser.add_argument("--submission-timeout", type=float, default=600.0)
    parser.add_argument("--no-sandbox", action="store_true", help="the notebook's own kernel")
    parser.add_argument("--allow-network", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        require_generated(args.assignment, args.course.resolve())
    except NotGenerated as error:
        print(f"Cannot grade: {error}", file=sys.stderr)
        sys.exit(2)
    outcomes = grade_class(
        args.assignment,
        args.course,
        args.students,
        workers=args.workers,
        batch=args.batch,
        timeout=args.timeout,
        submission_timeout=args.submission_timeout,
        sandbox=not args.no_sandbox,
        network=args.allow_network,
    )
    minutes = (time.perf_counter() - start) / 60
    folder = class_report(args.assignment, args.course, outcomes)
    print(f"{len(outcomes)} submissions in {minutes:.1f} min ({len(outcomes) / minutes:.1f}/min)")
    for outcome in outcomes:
        if outcome.status != "graded":
            print(f"  {outcome.student}: {outcome.status}\n    {outcome.log[-300:]}")
    print(f"report: {folder}")
    print(f"hidden-test seeds: {folder / 'grading-log.jsonl'}")


if __name__ == "__main__":
    main()
