"""A kernel that grades untrusted notebooks inside limits: the `tutorlib-sandbox` kernelspec.

nbgrader runs each submission in a Jupyter kernel. This module is that kernel's launcher: the
kernelspec's argv is `python <this file> -f {connection_file}`, and the launcher execs the
real kernel (`python -m ipykernel_launcher`) under

* resource limits (`setrlimit`): address space, processes, open files, CPU seconds, file size;
* with bubblewrap (`bwrap`, Debian's package `bubblewrap`) where it is installed: a read-only
  root, a private `/tmp` (also `HOME`), its own process namespace (every process a submission
  starts dies with its kernel), the other students' folders, the raw submissions, the instructor
  notebooks and the gradebook hidden, and, when run as root, an unprivileged user id of its
  own, so that the process limit holds (the kernel ignores it for root) and is not shared with
  the kernels grading other students.

Before it starts the kernel, the launcher turns the course's grading secret
(`TUTORLIB_GRADING_SECRET`, from the grader's environment) into the seed of this submission's
hidden tests (`TUTORLIB_HIDDEN_SEED`, `tutorlib.checks.secret`): the learner's code sees its own
seed, never the secret.

Without bubblewrap only the resource limits apply, and the launcher says so on stderr. The
network is cut outside the kernel: `tutorlib.checks.autograde` runs nbgrader itself in a new
network namespace (`unshare -n`), because a kernel in its own network namespace could not reach
the grader's loopback channels.

Book: Instructors (hostile and broken submissions).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import sys
from pathlib import Path

__all__ = [
    "KERNEL_NAME",
    "Limits",
    "bubblewrap_argv",
    "hidden_paths",
    "install_kernelspec",
    "sandbox_available",
]

KERNEL_NAME = "tutorlib-sandbox"
# Each sandboxed kernel runs as a user of its own (this base + the launcher's pid), so that one
# submission's fork bomb uses up its own process limit and not a neighbour's.
UID_BASE = 1_000_000
_FALLBACK_WARNING = (
    "tutorlib-sandbox: bubblewrap (bwrap) is not installed, so this kernel runs with resource "
    "limits only: it can read and write the grader's files and start processes that outlive it. "
    "Install Debian's package `bubblewrap` to contain submissions."
)


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-kernel limits. Cells are also stopped by nbgrader's `Execute.timeout` (wall clock)."""

    address_space_gb: float = 3.0  # torch and a graded cell need well under 2 GB
    processes: int = 256  # tasks (threads included) of the sandbox's user
    open_files: int = 256
    cpu_seconds: int = 600  # for the whole notebook, not per cell
    file_size_mb: int = 64

    def rlimits(self) -> dict[int, int]:
        """`resource.RLIMIT_*` -> the value used as both soft and hard limit."""
        return {
            resource.RLIMIT_AS: int(self.address_space_gb * 2**30),
            resource.RLIMIT_NPROC: self.processes,
            resource.RLIMIT_NOFILE: self.open_files,
            resource.RLIMIT_CPU: self.cpu_seconds,
            resource.RLIMIT_FSIZE: self.file_size_mb * 2**20,
        }

    @classmethod
    def from_env(cls) -> Limits:
        """Limits with overrides from `TUTORLIB_SANDBOX_<FIELD>` variables (for the tests)."""
        values = {}
        for field in dataclasses.fields(cls):
            raw = os.environ.get(f"TUTORLIB_SANDBOX_{field.name.upper()}")
            if raw is not None:
                values[field.name] = float(raw) if field.type == "float" else int(raw)
        return cls(**values)


def sandbox_available() -> bool:
    """True when bubblewrap is installed (the launcher then uses it)."""
    return shutil.which("bwrap") is not None


def _real_root() -> bool:
    """Root outside any user namespace: allowed to switch to an unprivileged user."""
    if os.geteuid() != 0:
        return False
    try:
        uid_map = Path("/proc/self/uid_map").read_text().split()
    except OSError:
        return False
    return uid_map[:2] == ["0", "0"]


def hidden_paths(cwd: Path) -> list[Path]:
    """What a kernel grading `<course>/autograded/<student>/<assignment>` must not see.

    The other students' folders and the raw submissions, the feedback, the reports (scores and
    seeds), the instructor notebooks (`source/` or `solutions/`), the gradebook files (`*.db`)
    and the grading secret of the course. Any other working directory hides nothing.
    """
    if cwd.parent.parent.name != "autograded":
        return []
    course = cwd.parent.parent.parent
    folders = ["autograded", "submitted", "feedback", "reports", "source", "solutions"]
    hidden = [course / name for name in folders if (course / name).is_dir()]
    files = sorted(course.glob("*.db*")) + sorted(course.glob("grading_secret"))
    return hidden + files


def _secret_module():
    """tutorlib/checks/secret.py, loaded by path: importing the package would import torch in
    the launcher (a second per kernel)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_tutorlib_secret", Path(__file__).with_name("secret.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _seed_for_kernel(cwd: Path) -> None:
    """Replace the course's secret in this environment by the submission's seed."""
    secret = _secret_module()
    course_secret = os.environ.pop(secret.SECRET_ENV, None)
    if course_secret:
        os.environ[secret.SEED_ENV] = secret.submission_seed(course_secret, cwd)


def _tutorlib_package() -> Path:
    """The `tutorlib` package's folder (in the repository for an editable install: only the
    package is shown to the kernel, not the repository's solutions beside it)."""
    return Path(__file__).resolve().parent.parent


def _strictly_in(path: Path, folder: Path) -> bool:
    return path != folder and path.is_relative_to(folder)


def _cache_dir() -> Path:
    return Path(os.environ.get("TUTORLIB_CACHE") or Path.home() / ".cache" / "tutorlib")


def bubblewrap_argv(
    kernel: list[str],
    connection_fd: int,
    cwd: Path,
    own_user: bool,
) -> list[str]:
    """The `bwrap` command line that runs `kernel` (whose connection file is /tmp/kernel.json).

    `connection_fd` is an open descriptor of the connection file: bwrap copies it into the
    private /tmp, readable by the kernel whatever user it runs as.
    """
    home = Path.home()
    argv = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    argv += ["--perms", "1777", "--tmpfs", "/tmp"]
    covered = [Path("/tmp")]
    if own_user and home != Path("/"):
        # An unprivileged user cannot enter a private home (/root is 0700): an empty one.
        argv += ["--perms", "0755", "--tmpfs", str(home)]
        covered.append(home)
    # What the kernel needs from beneath those: Python, the environment, tutorlib, its cache.
    needed = [Path(sys.base_prefix), Path(sys.prefix), _tutorlib_package(), _cache_dir(), cwd]
    shown = sorted({p for p in needed if p.exists() and any(map(p.is_relative_to, covered))})
    # bwrap makes missing parent folders 0700, which only root may enter: make them 0755.
    parents = {a for p in shown for a in p.parents if any(_strictly_in(a, c) for c in covered)}
    for folder in sorted(parents, key=lambda a: len(a.parts)):
        argv += ["--perms", "0755", "--dir", str(folder)]
    for path in shown:
        argv += ["--ro-bind", str(path), str(path)]
    argv += ["--perms", "0444", "--ro-bind-data", str(connection_fd), "/tmp/kernel.json"]
    for path in hidden_paths(cwd):
        if path.is_dir():
            argv += ["--tmpfs", str(path)]
        else:
            argv += ["--ro-bind", "/dev/null", str(path)]
    argv += ["--ro-bind", str(cwd), str(cwd)]  # its own folder, on top of what hides the rest
    argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent"]
    argv += ["--new-session", "--chdir", str(cwd)]
    argv += ["--setenv", "HOME", "/tmp", "--setenv", "MPLCONFIGDIR", "/tmp"]
    # ipykernel exits when it sees its parent (JPY_PARENT_PID) gone, and in a new process
    # namespace that parent is invisible.
    argv += ["--unsetenv", "JPY_PARENT_PID"]
    argv += ["--setenv", "TUTORLIB_CACHE", str(_cache_dir())]
    argv += ["--"]
    if own_user:
        uid = UID_BASE + os.getpid()
        argv += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    return argv + kernel


def _apply(limits: Limits, processes: bool) -> None:
    """Set the limits on this process (inherited through exec). Without a user of its own
    the process limit would count the grader's processes too, so it is left out then."""
    for which, value in limits.rlimits().items():
        if which == resource.RLIMIT_NPROC and not processes:
            continue
        soft, hard = resource.getrlimit(which)
        cap = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (cap, cap))


def launch(connection_file: str) -> None:
    """Replace this process by the sandboxed kernel (does not return)."""
    limits = Limits.from_env()
    _seed_for_kernel(Path.cwd())
    kernel = [sys.executable, "-m", "ipykernel_launcher"]
    if sandbox_available():
        fd = os.open(connection_file, os.O_RDONLY)
        os.set_inheritable(fd, True)
        own_user = _real_root() and shutil.which("setpriv") is not None
        argv = bubblewrap_argv(kernel + ["-f", "/tmp/kernel.json"], fd, Path.cwd(), own_user)
        _apply(limits, processes=own_user)
        os.execvp(argv[0], argv)
    print(_FALLBACK_WARNING, file=sys.stderr, flush=True)
    _apply(limits, processes=False)
    os.execv(sys.executable, kernel + ["-f", connection_file])


def install_kernelspec(prefix: Path | None = None) -> Path:
    """Write the `tutorlib-sandbox` kernelspec under `prefix` (default: this environment).

    Returns the kernelspec's folder. Jupyter finds `<sys.prefix>/share/jupyter/kernels/`
    without further configuration; grade with `nbgrader autograde ... --Execute.kernel_name=
    tutorlib-sandbox` (tutorlib.checks.autograde does).
    """
    folder = Path(prefix or sys.prefix) / "share" / "jupyter" / "kernels" / KERNEL_NAME
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        # This file run as a script: `-m tutorlib.checks.sandbox` would import tutorlib, and
        # with it torch, in the launcher too (a second per kernel).
        "argv": [sys.executable, str(Path(__file__).resolve()), "-f", "{connection_file}"],
        "display_name": "Python 3 (tutorlib sandbox)",
        "language": "python",
        # A signal would reach bwrap, not the kernel: ask the kernel to interrupt itself.
        "interrupt_mode": "message",
        "metadata": {"debugger": False},
    }
    (folder / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n")
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-f", dest="connection_file", help="the kernel's connection file")
    parser.add_argument("--install", action="store_true", help="install the kernelspec")
    args = parser.parse_args(argv)
    if args.install:
        print(f"installed {install_kernelspec()}")
    elif args.connection_file:
        launch(args.connection_file)
    else:
        parser.error("give -f CONNECTION_FILE (as a kernel) or --install")


if __name__ == "__main__":
    main()
