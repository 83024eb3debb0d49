"""The course's offline English corpus: the docstrings of the Python standard library.

Every Python installation carries about a megabyte of English prose about programming in its
standard library's docstrings, so the book trains tokenizers and small language models on
them without downloading anything. The modules are a fixed list (`STDLIB_MODULES`) that import
quickly and without side effects; the docstrings are collected once and cached on disk as JSON
under `$TUTORLIB_CACHE` (default `~/.cache/tutorlib`), keyed by the Python version and the
module list.

The same docstrings give a small downstream task: which standard-library package does a
docstring come from? (`package_classification`).

Book: 3.6 Tokenization: byte-pair encoding.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import inspect
import json
import os
import pkgutil
import platform
import random
import subprocess
import sys
import tempfile
import types
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "DEFAULT_PACKAGES",
    "STDLIB_MODULES",
    "Docstring",
    "PackageClassification",
    "cache_file",
    "corpus_text",
    "package_classification",
    "package_counts",
    "stdlib_docstrings",
]

# Pure-Python standard-library modules and packages that import quickly, print nothing, open
# nothing and exist on every CPython 3.11 on Linux (no optional C extensions such as ssl, lzma,
# bz2, sqlite3, readline or curses; none of the modules PEP 594 deprecates). A package brings
# its submodules with it, except tests, `__main__` and the Windows-only ones.
STDLIB_MODULES: tuple[str, ...] = (
    "abc",
    "argparse",
    "ast",
    "asyncio",
    "base64",
    "bdb",
    "builtins",
    "calendar",
    "cmd",
    "code",
    "codecs",
    "codeop",
    "collections",
    "compileall",
    "concurrent",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "dis",
    "doctest",
    "email",
    "enum",
    "filecmp",
    "fileinput",
    "fnmatch",
    "fractions",
    "ftplib",
    "functools",
    "getopt",
    "getpass",
    "gettext",
    "glob",
    "graphlib",
    "gzip",
    "heapq",
    "hmac",
    "html",
    "http",
    "imaplib",
    "importlib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "linecache",
    "locale",
    "logging",
    "mailbox",
    "math",
    "mimetypes",
    "multiprocessing",
    "numbers",
    "optparse",
    "os",
    "pathlib",
    "pdb",
    "pickle",
    "pickletools",
    "pkgutil",
    "platform",
    "plistlib",
    "poplib",
    "pprint",
    "profile",
    "pstats",
    "py_compile",
    "pyclbr",
    "pydoc",
    "queue",
    "quopri",
    "random",
    "re",
    "runpy",
    "sched",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "smtplib",
    "socket",
    "socketserver",
    "statistics",
    "string",
    "subprocess",
    "symtable",
    "sys",
    "sysconfig",
    "tabnanny",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "time",
    "timeit",
    "tokenize",
    "tomllib",
    "trace",
    "traceback",
    "types",
    "typing",
    "unittest",
    "urllib",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "wsgiref",
    "xml",
    "xmlrpc",
    "zipapp",
    "zipfile",
    "zoneinfo",
)

# Submodules of the packages above that are skipped: Windows-only, or run code on import.
_SKIPPED_SUBMODULES = frozenset(
    {
        "asyncio.windows_events",
        "asyncio.windows_utils",
        "concurrent.futures.__main__",
        "multiprocessing.popen_spawn_win32",
    }
)

# The downstream classification task's classes: the packages with at least 150 docstrings of
# 30 characters or more. Some overlap in topic (asyncio and multiprocessing; importlib and
# builtins), so the task is learnable but not trivial.
DEFAULT_PACKAGES: tuple[str, ...] = (
    "asyncio",
    "builtins",
    "email",
    "importlib",
    "logging",
    "multiprocessing",
    "unittest",
    "xml",
)

_MIN_DOC_CHARS = 20  # shorter docstrings ("Return self.") carry little text
_FORMAT_VERSION = 2  # bump when the extraction rules change, to invalidate old caches


@dataclasses.dataclass(frozen=True)
class Docstring:
    """One docstring of the standard library and where it comes from."""

    package: str  # top-level package or module, e.g. "json"
    qualname: str  # full dotted name, e.g. "json.decoder.JSONDecoder.decode"
    text: str  # the docstring as `inspect.getdoc` cleans it (indentation removed)


# --- Collecting the docstrings ----------------------------------------------------------------


def _modules_of(name: str) -> list[types.ModuleType]:
    """The module `name` and, for a package, its submodules in sorted order."""
    try:
        module = importlib.import_module(name)
    except ImportError:
        return []
    modules = [module]
    if hasattr(module, "__path__"):
        infos = sorted(pkgutil.walk_packages(module.__path__, f"{name}."), key=lambda i: i.name)
        for info in infos:
            parts = info.name.split(".")
            if info.name in _SKIPPED_SUBMODULES or "__main__" in parts:
                continue
            if any(part in ("test", "tests") or part.startswith("test_") for part in parts):
                continue
            try:
                modules.append(importlib.import_module(info.name))
            except ImportError:
                continue
    return modules


def _is_generated(obj: object, text: str) -> bool:
    """The one-line `Name(field, ...)` docstring that namedtuple and dataclass write."""
    name = getattr(obj, "__name__", "")
    return "\n" not in text and text.startswith(f"{name}(") and text.endswith(")")


def _members(cls: type) -> list[tuple[str, object]]:
    """Methods and properties defined in the class body, in definition order."""
    members = []
    for name, value in vars(cls).items():
        if isinstance(value, classmethod | staticmethod):
            value = value.__func__
        if isinstance(value, property) or inspect.isroutine(value):
            members.append((name, value))
    return members


def _module_docstrings(module: types.ModuleType, package: str) -> list[tuple[object, str, str]]:
    """(object, qualname, raw docstring) for a module and what it defines, in order."""
    found: list[tuple[object, str, str]] = [(module, module.__name__, module.__doc__ or "")]
    for value in list(vars(module).values()):
        if getattr(value, "__module__", None) != module.__name__:
            continue  # a re-export, or something without a home
        if inspect.isclass(value):
            qualname = f"{module.__name__}.{value.__qualname__}"
            found.append((value, qualname, value.__doc__ or ""))
            for member_name, member in _members(value):
                home = getattr(
                    member.fget if isinstance(member, property) else member,
                    "__module__",
                    module.__name__,
                )
                if home == module.__name__:  # skip methods that namedtuple generates
                    found.append((member, f"{qualname}.{member_name}", member.__doc__ or ""))
        elif inspect.isroutine(value):
            found.append((value, f"{module.__name__}.{value.__qualname__}", value.__doc__ or ""))
    return found


def _collect() -> list[Docstring]:
    """Import the modules and collect their docstrings, in this process (about a second)."""
    docstrings: list[Docstring] = []
    seen_objects: set[int] = set()
    seen_texts: set[str] = set()
    keep_alive = []  # ids are unique only while the objects live
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in STDLIB_MODULES:
            for module in _modules_of(name):
                for obj, qualname, raw in _module_docstrings(module, name):
                    if id(obj) in seen_objects or not isinstance(raw, str):
                        continue
                    seen_objects.add(id(obj))
                    keep_alive.append(obj)
                    text = inspect.cleandoc(raw).strip()
                    if len(text) < _MIN_DOC_CHARS or text in seen_texts:
                        continue
                    if inspect.isclass(obj) and _is_generated(obj, text):
                        continue
                    seen_texts.add(text)
                    docstrings.append(Docstring(name, qualname, text))
    return docstrings


def _build() -> list[Docstring]:
    """`_collect()` run in a fresh interpreter (`python -I -S`, so only the standard library).

    Collecting in the calling process would depend on what that process has changed: a
    Jupyter kernel replaces `builtins.input` with its own function and has imported and patched
    modules of its own, so a corpus built in a notebook differed from one built by pytest
    (5,299 against 5,349 docstrings), and so did every model trained on it.
    """
    result = subprocess.run(
        [sys.executable, "-I", "-S", __file__],
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"collecting the standard-library docstrings in {sys.executable} failed:\n"
            + result.stderr[-2000:]
        )
    return [Docstring(*row) for row in json.loads(result.stdout)]


# --- The disk cache ---------------------------------------------------------------------------


def _cache_key() -> str:
    modules = "\n".join(STDLIB_MODULES)
    digest = hashlib.sha256(f"{_FORMAT_VERSION}\n{modules}".encode()).hexdigest()[:16]
    return f"py{platform.python_version()}-{digest}"


def cache_file() -> Path:
    """Where the docstrings are cached: `$TUTORLIB_CACHE` if set, else `~/.cache/tutorlib`."""
    root = os.environ.get("TUTORLIB_CACHE") or Path.home() / ".cache" / "tutorlib"
    return Path(root) / f"stdlib_docstrings-{_cache_key()}.json"


def _read_cache(path: Path) -> list[Docstring] | None:
    """The cached docstrings, or None if the file is missing, corrupt or from elsewhere."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("key") != _cache_key():
        return None
    rows = data.get("docstrings")
    if not isinstance(rows, list) or not rows:
        return None
    docstrings = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 3 and all(isinstance(s, str) for s in row)):
            return None
        docstrings.append(Docstring(*row))
    return docstrings


def _write_cache(path: Path, docstrings: list[Docstring]) -> None:
    """Write atomically (a temporary file, then a rename); a read-only cache is skipped."""
    data = {
        "key": _cache_key(),
        "docstrings": [[d.package, d.qualname, d.text] for d in docstrings],
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=path.parent, suffix=".tmp", delete=False
        ) as f:
            json.dump(data, f, ensure_ascii=False)
        os.replace(f.name, path)
    except OSError:
        return


@functools.lru_cache(maxsize=4)
def _load(path: Path) -> tuple[Docstring, ...]:
    docstrings = _read_cache(path)
    if docstrings is None:
        docstrings = _build()
        _write_cache(path, docstrings)
    return tuple(docstrings)


def stdlib_docstrings() -> list[Docstring]:
    """The docstrings of the modules in `STDLIB_MODULES`: module, class, function and method
    docstrings, in module order and then definition order.

    Only objects defined in a module count (not re-exports); each object and each text appears
    once; docstrings shorter than 20 characters are dropped. Cached in this process and on
    disk (`cache_file()`); a corrupt cache file is rebuilt.

    Shapes:
        returns a list of about 5,000 `Docstring`s (package, qualname, text)

    Book: 3.6 Tokenization: byte-pair encoding (The corpus).
    """
    return list(_load(cache_file()))


def corpus_text() -> str:
    """Every docstring of `stdlib_docstrings()`, joined with blank lines.

    Shapes:
        returns one str of about 1.2 million characters

    Book: 3.6 Tokenization: byte-pair encoding (The corpus).
    """
    return "\n\n".join(d.text for d in stdlib_docstrings())


# --- A downstream task: which package does a docstring come from? -----------------------------


def package_counts() -> dict[str, int]:
    """How many docstrings each top-level package contributes, largest first."""
    counts = Counter(d.package for d in stdlib_docstrings())
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


@dataclasses.dataclass(frozen=True)
class PackageClassification:
    """Docstrings labelled with their package's index in `classes`, split into train and test."""

    classes: tuple[str, ...]  # label i means package classes[i]
    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]


def package_classification(
    packages: Sequence[str] = DEFAULT_PACKAGES,
    min_chars: int = 30,
    max_chars: int = 512,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> PackageClassification:
    """The task "which standard-library package does this docstring come from?".

    Docstrings of at least `min_chars` characters, cut to their first `max_chars`. Each
    class is shuffled with `random.Random(seed)` and split on its own, so train and test have
    the same class proportions (a stratified split); no text occurs twice, so the two splits
    share none.

    Shapes:
        returns train_texts/train_labels (N_train,) and test_texts/test_labels (N_test,);
        labels are ints in [0, len(packages))

    Book: 3.6 Tokenization: byte-pair encoding; the fine-tuning pages use it as a
    downstream task.
    """
    if isinstance(packages, str) or not isinstance(packages, Sequence):
        raise TypeError(f"packages must be a sequence of names, got {type(packages).__name__}")
    packages = tuple(packages)
    if len(packages) < 2 or len(set(packages)) != len(packages):
        raise ValueError(f"packages must name at least two distinct packages, got {packages}")
    unknown = [p for p in packages if p not in STDLIB_MODULES]
    if unknown:
        raise ValueError(
            f"unknown package(s) {unknown}: expected names from tutorlib.corpus.STDLIB_MODULES"
        )
    for name, value in (("min_chars", min_chars), ("max_chars", max_chars), ("seed", seed)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= min_chars <= max_chars or max_chars < 1:
        raise ValueError(
            f"need 0 <= min_chars <= max_chars and max_chars >= 1, got {min_chars=}, {max_chars=}"
        )
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")

    by_class: dict[str, list[str]] = {p: [] for p in packages}
    seen: set[str] = set()  # two docstrings may share their first max_chars characters
    for d in stdlib_docstrings():
        text = d.text[:max_chars]
        if d.package in by_class and len(d.text) >= min_chars and text not in seen:
            seen.add(text)
            by_class[d.package].append(text)
    rng = random.Random(seed)
    train: list[tuple[str, int]] = []
    test: list[tuple[str, int]] = []
    for label, package in enumerate(packages):
        texts = by_class[package]
        if len(texts) < 2:
            raise ValueError(
                f"package {package!r} has {len(texts)} docstring(s) of at least {min_chars} "
                "characters; it needs at least 2 (one to train on, one to test on)"
            )
        rng.shuffle(texts)
        n_test = min(max(1, round(test_fraction * len(texts))), len(texts) - 1)
        test += [(t, label) for t in texts[:n_test]]
        train += [(t, label) for t in texts[n_test:]]
    rng.shuffle(train)
    rng.shuffle(test)
    return PackageClassification(
        classes=packages,
        train_texts=[t for t, _ in train],
        train_labels=[y for _, y in train],
        test_texts=[t for t, _ in test],
        test_labels=[y for _, y in test],
    )


if __name__ == "__main__":  # `_build` runs this file in a fresh interpreter
    sys.stdout.reconfigure(encoding="utf-8")
    json.dump([[d.package, d.qualname, d.text] for d in _collect()], sys.stdout, ensure_ascii=False)
