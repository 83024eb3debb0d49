"""nbgrader helpers shared by the tests and the Makefile.

python -m tests.grading regenerate   # exercises/ from solutions/ (make exercises)
python -m tests.grading execute      # run solutions/ in place, storing outputs (make solutions)
python -m tests.grading benchmark N [parallel]  # N synthetic submissions: nbgrader alone, parallel
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbclient
import nbformat

from tests.budgets import unix_socket_kernels

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"
EXERCISES = ROOT / "exercises"
ASSIGNMENTS = sorted(p.name for p in SOLUTIONS.iterdir() if p.is_dir())
# The test courses' grading secret: fixed, so that their hidden tests draw the same inputs in
# every run (a real course's secret is random: tutorlib.checks.gradebook.use_course_secret).
GRADING_SECRET = "0123456789abcdef0123456789abcdef"


def nbgrader(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run the nbgrader command line in `cwd` with this venv's bin first on PATH (alembic)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "nbgrader"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def new_course(destination: Path) -> Path:
    """A course directory holding a copy of solutions/ and the course's nbgrader config."""
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copytree(SOLUTIONS, destination / "solutions")
    shutil.copy(ROOT / "nbgrader_config.py", destination / "nbgrader_config.py")
    (destination / "grading_secret").write_text(GRADING_SECRET + "\n")
    return destination


def generate(course: Path, assignments: list[str] | None = None) -> Path:
    """`nbgrader generate_assignment` for every assignment; returns the release folder."""
    for assignment in assignments or ASSIGNMENTS:
        nbgrader("generate_assignment", assignment, "--force", cwd=course)
    return course / "exercises"


def regenerate() -> None:
    """Rewrite exercises/ with what nbgrader makes of solutions/ now."""
    with tempfile.TemporaryDirectory() as tmp:
        released = generate(new_course(Path(tmp)))
        shutil.rmtree(EXERCISES, ignore_errors=True)
        shutil.copytree(released, EXERCISES)
    print(f"exercises/ regenerated from solutions/ ({', '.join(ASSIGNMENTS)})")


def _merge_streams(cell: nbformat.NotebookNode) -> None:
    """One stdout block per cell, however the kernel happened to flush it (stable diffs)."""
    merged: list = []
    for output in cell.get("outputs", []):
        previous = merged[-1] if merged else None
        if (
            previous is not None
            and output.output_type == previous.output_type == "stream"
            and output.name == previous.name
        ):
            previous.text += output.text
        else:
            merged.append(output)
    cell.outputs = merged


def execute_in_place(path: Path, timeout: int = 120) -> None:
    """Execute a notebook and store its outputs, without per-cell timestamps."""
    nb = nbformat.read(path, as_version=4)
    with unix_socket_kernels() as config:
        client = nbclient.NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            record_timing=False,
            resources={"metadata": {"path": str(path.parent)}},
            config=config,
        )
        client.execute()
    for cell in nb.cells:
        if cell.cell_type == "code":
            _merge_streams(cell)
    nbformat.write(nb, path)


def solution_namespace(assignment: str) -> dict:
    """The names that an assignment's setup and solution cells define, as a learner's kernel
    would hold them after a correct submission."""
    namespace: dict = {}
    for path in sorted((SOLUTIONS / assignment).glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            meta = cell.metadata.get("nbgrader", {})
            if cell.cell_type == "code" and (
                meta.get("solution") or meta.get("grade_id") == "setup"
            ):
                exec(cell.source, namespace)
    return namespace


def benchmark(count: int, alone: bool = True, assignment: str = "01_foundations") -> dict:
    """Grade `count` synthetic submissions of `assignment` twice: by nbgrader alone (one
    process, one submission after another, the notebook's own kernel) and by
    `tutorlib.checks.autograde` (two workers, the sandboxed kernel). Submissions per minute."""
    from tests.submissions import ROUND_TRIPS, submit
    from tutorlib.checks.autograde import class_report, grade_class

    plan = ROUND_TRIPS[assignment]
    kinds = [{}, {plan.mistake_notebook: plan.mistake}, None]  # right, typical mistake, untouched
    with tempfile.TemporaryDirectory() as tmp:
        course = new_course(Path(tmp))
        generate(course, [assignment])
        for i in range(count):
            submit(course, assignment, f"student{i:03d}", kinds[i % len(kinds)])
        seconds_alone = float("nan")
        if alone:
            start = time.perf_counter()
            nbgrader("autograde", assignment, "--force", cwd=course)
            seconds_alone = time.perf_counter() - start
            shutil.rmtree(course / "autograded")
        start = time.perf_counter()
        outcomes = grade_class(assignment, course, workers=2, progress=False)
        parallel = time.perf_counter() - start
        assert all(o.status == "graded" for o in outcomes), outcomes
        report = (class_report(assignment, course, outcomes) / "students.csv").read_text()
    result = {
        "submissions": count,
        "nbgrader_alone_per_minute": round(60 * count / seconds_alone, 1),
        "parallel_sandboxed_per_minute": round(60 * count / parallel, 1),
        "seconds": [round(seconds_alone, 1), round(parallel)],
        "cpus": os.cpu_count(),
    }
    print(result)
    print(report[:400])
    return result


def main(argv: list[str]) -> None:
    if argv == ["regenerate"]:
        regenerate()
    elif argv == ["execute"]:
        for path in sorted(SOLUTIONS.glob("*/*.ipynb")):
            execute_in_place(path)
            print(f"executed {path.relative_to(ROOT)}")
    elif len(argv) in (2, 3) and argv[0] == "benchmark":
        benchmark(int(argv[1]), alone=argv[2:] != ["parallel"])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
