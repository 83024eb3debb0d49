"""Grading untrusted submissions: the sandboxed kernel, the parallel grader and its report.

A temporary course of Chapter 1's assignment receives one honest submission and one of each
kind of broken or hostile submission; `tutorlib.checks.autograde.grade_class` grades them in
parallel through the real nbgrader, in the `tutorlib-sandbox` kernel, with nbgrader's per-cell
timeout at 8 s so the hanging cases stay cheap. Each must get the score its working cells
earn, and leave the other students' results and the instructor's files as they were.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import resource
import socket
import subprocess
import threading
from pathlib import Path

import nbformat
import pytest

from tests.grading import SOLUTIONS, generate, new_course
from tests.submissions import LAYER_NORM_MISTAKE, submit
from tutorlib.checks import sandbox
from tutorlib.checks.autograde import (
    ResilientExecute,
    class_report,
    grade_class,
    network_isolation,
    set_aside_unreadable,
)

ASSIGNMENT = "01_foundations"
NOTEBOOK = "01_positions_and_norms"
CELL_TIMEOUT = 8  # seconds per cell while grading here (the course's config says 30)
FULL = 15  # the assignment's autograded points (its written answer waits for a human)
LOST = 2  # the points of the one test a hostile cell takes down (test_sinusoidal_encoding)


def _sinusoidal_solution() -> str:
    nb = nbformat.read(SOLUTIONS / ASSIGNMENT / f"{NOTEBOOK}.ipynb", as_version=4)
    (cell,) = [
        c
        for c in nb.cells
        if c.metadata.get("nbgrader", {}).get("grade_id") == "sinusoidal_encoding"
    ]
    return cell.source


def _before_the_answer(code: str) -> dict:
    """`code`, then the right `sinusoidal_encoding`: the answer is defined only if `code` ends
    normally, so a hostile cell costs exactly that test's points."""
    return {NOTEBOOK: {"sinusoidal_encoding": code + "\n\n" + _sinusoidal_solution()}}


def _after_the_answer(code: str) -> dict:
    """The right answer, then `code`: full marks unless `code` reaches beyond its kernel."""
    return {NOTEBOOK: {"sinusoidal_encoding": _sinusoidal_solution() + "\n\n" + code}}


def _hostile(course: Path, port: int) -> dict[str, dict]:
    home = Path.home()
    targets = [
        course / "gradebook.db",
        course / "solutions" / ASSIGNMENT / f"{NOTEBOOK}.ipynb",
        course / "nbgrader_config.py",
        course / "autograded" / "honest",
        course / "submitted" / "honest",
        home / "pwned-by-a-submission",
    ]
    return {
        "honest": {},
        "syntax_error": {NOTEBOOK: {"sinusoidal_encoding": "def sinusoidal_encoding(:\n    pass"}},
        "stubborn_loop": _before_the_answer(
            "import time\nwhile True:\n    try:\n        time.sleep(0.2)\n"
            "    except KeyboardInterrupt:\n        pass"
        ),
        "memory_bomb": _before_the_answer(
            "blocks = []\nwhile True:\n    blocks.append(bytearray(2**28))"
        ),
        "fork_bomb": _before_the_answer("import os\nwhile True:\n    os.fork()"),
        "sys_exit": _before_the_answer("import sys\nsys.exit(1)"),
        "os_exit": _before_the_answer("import os\nos._exit(1)"),
        "segfault": _before_the_answer("import ctypes\nctypes.string_at(0)"),
        "huge_output": _after_the_answer("for _ in range(300):\n    print('x' * 100_000)"),
        "writes_outside": _after_the_answer(
            "import os, shutil\n"
            f"for target in {[str(t) for t in targets]!r}:\n"
            "    try:\n"
            "        if os.path.isdir(target):\n"
            "            shutil.rmtree(target)\n"
            "        else:\n"
            "            open(target, 'w').write('pwned')\n"
            "    except OSError:\n"
            "        pass"
        ),
        "network": _before_the_answer(
            "import socket\n"
            f"socket.create_connection(('127.0.0.1', {port}), timeout=2)  # must fail"
        ),
        "patches_checks": {
            NOTEBOOK: {
                "layer_norm": LAYER_NORM_MISTAKE
                + "\nchecks.check_layer_norm = lambda *args, **kwargs: None\n"
            }
        },
        "edited_test": {NOTEBOOK: {"layer_norm": LAYER_NORM_MISTAKE}},
        "deleted_test": {NOTEBOOK: {"layer_norm": LAYER_NORM_MISTAKE}},
        "deleted_solution": {},
        "renamed": {},
        "not_json": {},
    }


def _edit(course: Path, student: str, edit) -> None:
    path = course / "submitted" / student / ASSIGNMENT / f"{NOTEBOOK}.ipynb"
    nb = nbformat.read(path, as_version=4)
    edit(nb)
    nbformat.write(nb, path)


def _without(grade_id: str):
    def edit(nb: nbformat.NotebookNode) -> None:
        nb.cells = [
            c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") != grade_id
        ]

    return edit


def _test_cell_reads_pass(nb: nbformat.NotebookNode) -> None:
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "test_layer_norm":
            cell.source = "pass  # no test here"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sandbox_processes() -> list[str]:
    ps = subprocess.run(["ps", "-eo", "uid=,pid=,args="], capture_output=True, text=True)
    return [line for line in ps.stdout.splitlines() if int(line.split()[0]) >= sandbox.UID_BASE]


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not sandbox.sandbox_available():
        pytest.skip(
            "WARNING: bubblewrap (bwrap) is not installed, so a fork bomb or a submission that "
            "deletes files would reach this machine: the hostile class is not graded here "
            "(make test installs bubblewrap with apt where it runs as root)"
        )
    course = new_course(tmp_path_factory.mktemp("hostile-course"))
    generate(course, [ASSIGNMENT])
    listener = socket.create_server(("127.0.0.1", 0))  # on the grader's machine, not in its
    connections: list = []  # network namespace: a kernel that reaches it has network access
    threading.Thread(target=lambda: connections.append(listener.accept()), daemon=True).start()
    students = _hostile(course, listener.getsockname()[1])
    for student, changes in students.items():
        submit(course, ASSIGNMENT, student, changes)
    _edit(course, "edited_test", _test_cell_reads_pass)
    _edit(course, "deleted_test", _without("test_layer_norm"))
    _edit(course, "deleted_solution", _without("layer_norm"))
    folder = course / "submitted" / "renamed" / ASSIGNMENT
    (folder / f"{NOTEBOOK}.ipynb").rename(folder / "my_work.ipynb")
    (course / "submitted" / "not_json" / ASSIGNMENT / f"{NOTEBOOK}.ipynb").write_text("{ not json")
    protected = [
        course / "nbgrader_config.py",
        course / "solutions" / ASSIGNMENT / f"{NOTEBOOK}.ipynb",
    ]
    protected += sorted((course / "submitted" / "honest").rglob("*.ipynb"))
    before = {path: _digest(path) for path in protected}
    # Two workers: make test runs this module after the parallel phase, on its own.
    outcomes = grade_class(
        ASSIGNMENT, course, workers=2, batch=3, timeout=CELL_TIMEOUT, submission_timeout=120
    )
    report = class_report(ASSIGNMENT, course, outcomes)
    with open(report / "students.csv") as handle:
        rows = {row["student"]: row for row in csv.DictReader(handle)}
    listener.close()
    return {
        "course": course,
        "rows": rows,
        "report": report,
        "outcomes": {o.student: o for o in outcomes},
        "changed": [path for path, digest in before.items() if _digest(path) != digest],
        "connections": connections,
        "leftovers": _sandbox_processes(),
    }


EXPECTED = {
    # student: (autograded score, what the report says in "problems", in "review")
    "honest": (FULL, "", ""),
    "syntax_error": (FULL - LOST, "", "cannot be parsed"),
    "stubborn_loop": (FULL - LOST, "ignored the interrupt", ""),
    "memory_bomb": (FULL - LOST, "", ""),
    "fork_bomb": (FULL - LOST, "", ""),
    "sys_exit": (FULL - LOST, "", ""),
    "os_exit": (FULL - LOST, "the kernel died while running this cell", ""),
    # flagged (imports ctypes): the tests after its cell wait for a person, at 0 until then
    "segfault": (FULL - LOST - 4, "the kernel died while running this cell", "imports ctypes"),
    "huge_output": (FULL, "", ""),
    "writes_outside": (FULL, "", ""),
    "network": (FULL - LOST, "", ""),
    # its patched check passes in the kernel; the flag holds test_layer_norm for a person
    "patches_checks": (FULL - 2, "", "patches checks.check_layer_norm"),
    "edited_test": (FULL - LOST, "", ""),  # nbgrader restores the test: the mistake fails it
    "deleted_test": (FULL - LOST, "", ""),  # ... and puts a deleted test back
    "deleted_solution": (FULL - LOST, "", ""),
    "renamed": (9, "01_positions_and_norms.ipynb missing", ""),  # the other notebook counts
    "not_json": (9, "set aside as unreadable (NotJSONError)", ""),
}


@pytest.mark.parametrize("student", sorted(EXPECTED))
def test_each_submission_gets_the_score_its_working_cells_earn(graded: dict, student: str) -> None:
    score, problem, review = EXPECTED[student]
    if student == "network" and not network_isolation():
        pytest.skip("WARNING: no network namespace on this machine: the kernel is not cut off")
    row = graded["rows"][student]
    assert graded["outcomes"][student].status == "graded", graded["outcomes"][student].log
    assert float(row["score"]) == score, f"{student}: {row}"
    assert problem in row["problems"], f"{student}: problems {row['problems']!r}"
    assert review in row["review"], f"{student}: review {row['review']!r}"
    if not review:
        assert row["review"] == "", f"{student} was flagged: {row['review']}"


def test_no_submission_reached_the_instructor_or_other_students(graded: dict) -> None:
    assert graded["changed"] == [], f"changed by a submission: {graded['changed']}"
    course = graded["course"]
    assert (course / "autograded" / "honest" / ASSIGNMENT / f"{NOTEBOOK}.ipynb").exists()
    assert not (Path.home() / "pwned-by-a-submission").exists()


def test_no_connection_left_the_sandbox(graded: dict) -> None:
    if not network_isolation():
        pytest.skip("WARNING: no network namespace on this machine: the kernel is not cut off")
    assert graded["connections"] == []


def test_no_process_of_a_submission_outlives_the_grading(graded: dict) -> None:
    assert graded["leftovers"] == []


def test_the_report_names_the_most_common_mistake_per_question(graded: dict) -> None:
    with open(graded["report"] / "questions.csv") as handle:
        rows = {row["cell"]: row for row in csv.DictReader(handle)}
    layer_norm = rows[f"{NOTEBOOK}/test_layer_norm"]
    assert int(layer_norm["lost_points"]) >= 3  # edited_test, deleted_test, deleted_solution
    assert (
        "ExerciseError" in layer_norm["most_common_message"]
        or "NameError" in (layer_norm["most_common_message"])
    )
    sinusoidal = rows[f"{NOTEBOOK}/test_sinusoidal_encoding"]
    assert "sinusoidal_encoding' is not defined" in sinusoidal["most_common_message"]
    assert float(rows["02_transformer_block/test_feed_forward"]["fraction_lost"]) == 0.0
    assert (graded["report"] / "questions.png").stat().st_size > 10_000


# --- the launcher, without grading --------------------------------------------------------------


def test_the_kernelspec_launches_the_sandbox(tmp_path: Path) -> None:
    folder = sandbox.install_kernelspec(tmp_path)
    spec = json.loads((folder / "kernel.json").read_text())
    assert spec["argv"][1:] == [sandbox.__file__, "-f", "{connection_file}"]
    assert spec["interrupt_mode"] == "message"  # a signal would stop at bwrap


def test_bubblewrap_hides_the_course_but_the_kernels_own_folder(tmp_path: Path) -> None:
    cwd = tmp_path / "autograded" / "alice" / "a1"
    cwd.mkdir(parents=True)
    for name in ("submitted", "solutions", "feedback"):
        (tmp_path / name).mkdir()
    (tmp_path / "gradebook.db").write_text("")
    argv = sandbox.bubblewrap_argv(["python"], 3, cwd, own_user=True)
    text = " ".join(argv)
    for name in ("autograded", "submitted", "solutions", "feedback"):
        assert f"--tmpfs {tmp_path / name}" in text
    assert f"--ro-bind /dev/null {tmp_path / 'gradebook.db'}" in text
    assert text.index(f"--tmpfs {tmp_path / 'autograded'}") < text.rindex(f"--ro-bind {cwd} {cwd}")
    assert "--unshare-pid" in argv and "--die-with-parent" in argv
    assert argv[argv.index("setpriv") + 1].startswith("--reuid=")
    assert argv[-1] == "python"
    assert sandbox.hidden_paths(tmp_path) == []  # not a grading folder: nothing to hide
    # bwrap would make the folders above a bound path 0700 beneath the private /tmp, and the
    # kernel's user could not reach its own folder (or a venv or checkout under /tmp).
    below_tmp = [a for a in cwd.parents if a != Path("/tmp") and a.is_relative_to("/tmp")]
    for folder in below_tmp:
        made = text.index(f"--perms 0755 --dir {folder} ")
        assert made < text.index(f"--ro-bind {cwd} {cwd}"), folder


def test_without_bubblewrap_the_launcher_says_so_and_keeps_the_limits(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    calls = {}
    monkeypatch.setattr(sandbox, "sandbox_available", lambda: False)
    monkeypatch.setattr(sandbox, "_apply", lambda limits, processes: calls.update(limits=limits))
    monkeypatch.setattr(os, "execv", lambda path, argv: calls.update(argv=argv))
    monkeypatch.setenv("TUTORLIB_SANDBOX_ADDRESS_SPACE_GB", "1.5")
    sandbox.launch("/tmp/kernel-x.json")
    assert "bubblewrap (bwrap) is not installed" in capsys.readouterr().err
    assert calls["argv"][-2:] == ["-f", "/tmp/kernel-x.json"]
    assert calls["limits"].address_space_gb == 1.5
    assert calls["limits"].rlimits()[resource.RLIMIT_AS] == int(1.5 * 2**30)


def test_a_notebook_that_keeps_killing_its_kernel_gets_no_free_points() -> None:
    # nbgrader gives full marks to a test cell without an error output: after the last
    # restart, every cell left unrun must carry one.
    cells = [nbformat.v4.new_code_cell(code) for code in ("x = 1", *["import os; os._exit(1)"] * 3)]
    test = nbformat.v4.new_code_cell("assert x == 1")
    test.metadata["nbgrader"] = {"grade": True, "solution": False, "grade_id": "t", "points": 1}
    nb = nbformat.v4.new_notebook(cells=[*cells, test])
    executor = ResilientExecute(timeout=20, max_restarts=1, kernel_name="python3")
    executor.log.setLevel("CRITICAL")  # the dying kernels are the point here
    executor.preprocess(nb, {"metadata": {"path": "."}})
    enames = [[o.get("ename") for o in cell.outputs] for cell in nb.cells]
    assert enames == [[], ["KernelDied"], ["KernelDied"], ["NotRun"], ["NotRun"]], enames


def test_an_unreadable_notebook_is_set_aside_not_deleted(tmp_path: Path) -> None:
    folder = tmp_path / "submitted" / "bob" / "a1"
    folder.mkdir(parents=True)
    (folder / "good.ipynb").write_text(nbformat.writes(nbformat.v4.new_notebook()))
    (folder / "bad.ipynb").write_bytes(b"\xff\xfe not a notebook")
    (aside,) = set_aside_unreadable(tmp_path, "a1", "bob")
    assert aside.startswith("bad.ipynb set aside as unreadable")
    assert sorted(p.name for p in folder.iterdir()) == ["bad.ipynb.unreadable", "good.ipynb"]


def test_grading_an_assignment_the_gradebook_does_not_know_says_what_to_run(
    tmp_path: Path,
) -> None:
    import sys

    course = new_course(tmp_path / "course")
    folder = course / "submitted" / "alice" / ASSIGNMENT
    folder.mkdir(parents=True)
    nbformat.write(nbformat.v4.new_notebook(), folder / f"{NOTEBOOK}.ipynb")
    command = [
        sys.executable,
        "-m",
        "tutorlib.checks.autograde",
        ASSIGNMENT,
        "--course",
        str(course),
    ]
    for step in ("no gradebook", "a gradebook without it"):
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 2, (step, result.stderr)
        assert f"nbgrader generate_assignment {ASSIGNMENT}" in result.stderr, result.stderr
        assert "Nothing was graded" in result.stderr and "Traceback" not in result.stderr
        assert not (course / "autograded").exists()
        if step == "no gradebook":
            generate(course, ["02_attention"])  # another assignment only
