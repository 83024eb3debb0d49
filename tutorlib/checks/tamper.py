"""Find submissions whose code reaches into the testing machinery, for an instructor to review.

nbgrader runs the tests in the learner's kernel, so a submission can change what the tests
see: rebind `checks` or one of its functions, patch `torch.allclose` or a builtin, redefine
`__eq__`, read the checks' private references or their frames, run a fresh copy of a tutorlib
module, call torch's raw operators. The checks refuse much of it while they run
(`tutorlib.checks.guard`, `tutorlib.checks.integrity`), but code in the same kernel can
always be written to get around code in the same kernel; such code is rare in honest work and
easy to see in the source. `scan_source` reads a cell's code with `ast` (without running it;
IPython magics are read as the calls they make) and reports each suspicious construct with its
line; `scan_notebook` and `scan_cells` do it for the learner's cells of a notebook.

A finding needs review (`Finding.review`), except a cell that does not parse: it cannot run,
so it hides nothing (its test fails as it is). `tutorlib.checks.gradebook.FlagForReview` marks
the tests after a flagged cell for manual grading in nbgrader's gradebook.

Book: Instructors (grades that can't be faked).
"""

from __future__ import annotations

import ast
import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["PROTECTED_NAMES", "Finding", "scan_cells", "scan_notebook", "scan_source"]

# Names the tests rely on: rebinding or patching them (or their attributes) is flagged.
PROTECTED_NAMES = frozenset(
    {
        "AssertionError",
        "ExerciseError",
        "F",
        "IPython",
        "builtins",
        "checks",
        "get_ipython",
        "math",
        "nn",
        "np",
        "numpy",
        "sys",
        "torch",
        "tutorlib",
    }
)
# Modules whose private names (`torch._C`, `checks._reference`) honest answers never need.
_PRIVATE_ROOTS = frozenset({"F", "checks", "nn", "np", "numpy", "torch", "tutorlib"})
# Calls that change or escape the program from inside: flagged wherever they appear.
_SUSPICIOUS_CALLS = frozenset(
    {
        "setattr",
        "delattr",
        "exec",
        "eval",
        "compile",
        "__import__",
        "globals",
        "vars",
        "get_ipython",
        "breakpoint",
    }
)
# Modules that reach the interpreter's internals (patching, frames, memory, code objects),
# run a module again, or run code the checks cannot watch (threads, processes).
_INTROSPECTION = frozenset(
    {
        "_thread",
        "builtins",
        "concurrent",
        "ctypes",
        "importlib",
        "inspect",
        "marshal",
        "multiprocessing",
        "runpy",
        "signal",
        "subprocess",
        "threading",
        "traceback",
    }
)
# Modules of the same kind with one part honest code uses: any other use of them is flagged.
_ONE_HONEST_PART = {"gc": "collect", "types": "SimpleNamespace"}
# The usual names of a protected module under an alias, and imports the exercises themselves use.
_CANONICAL = {"np": "numpy", "F": "torch.nn.functional", "nn": "torch.nn"}
_CHAPTER_CHECKS = (
    "foundations",
    "attention",
    "training",
    "scaling",
    "efficiency",
    "vision",
    "modalities",
    "generative",
    "modern",
    "posttraining",
)
_HONEST_IMPORTS = frozenset(
    {
        ("tutorlib", "checks", "checks"),
        ("torch", "nn", "nn"),
        ("torch.nn", "functional", "F"),  # `import torch.nn.functional as F`, spelt the other way
        *(("tutorlib.checks", name, "checks") for name in _CHAPTER_CHECKS),  # the setup's import
    }
)
# Special methods whose redefinition makes any comparison pass, or that make a tensor answer
# every torch call itself.
_COMPARISONS = frozenset(
    {
        "__eq__",
        "__ne__",
        "__bool__",
        "__lt__",
        "__le__",
        "__gt__",
        "__ge__",
        "__torch_function__",
        "__torch_dispatch__",
        "__instancecheck__",
        "__subclasscheck__",
    }
)
# Attributes that reach module state, frames or the interpreter from any object.
_DUNDER_ESCAPES = frozenset(
    {
        "__builtins__",
        "__dict__",
        "__globals__",
        "__code__",
        "__class__",
        "__subclasses__",
        "__traceback__",
        "__file__",
        "__loader__",
        "__spec__",
        "f_back",
        "f_locals",
        "f_globals",
        "f_code",
        "tb_frame",
        "tb_next",
        "gi_frame",
        "cr_frame",
    }
)
# sys's ways to the frames, the last error (and its traceback), the loaded modules and the
# profiler that watches the learner's code.
_SYS_ESCAPES = frozenset(
    {
        "_getframe",
        "_current_frames",
        "last_value",
        "last_traceback",
        "last_type",
        "last_exc",
        "exc_info",
        "exception",
        "setprofile",
        "settrace",
        "getprofile",
        "gettrace",
        "modules",
        "meta_path",
        "monitoring",
    }
)
_ENVIRONMENT = frozenset({"environ", "environb", "getenv", "getenvb"})
# IPython magics that only time or show things.
_HARMLESS_MAGICS = frozenset({"time", "timeit", "matplotlib", "pinfo", "pinfo2", "who", "whos"})


@dataclasses.dataclass(frozen=True)
class Finding:
    """One suspicious construct: where it is, what it does, and whether a person must review
    the tests it could have changed (False only for code that cannot run at all)."""

    line: int
    what: str
    review: bool = True


def _chain(node: ast.expr) -> list[str]:
    """['torch', '_C', '_nn'] for torch._C._nn, ['checks', '_x'] for checks._x(...)[0]; the
    names of an attribute chain from its root, [] if it does not start at a name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Call):
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
        node = node.func if isinstance(node, ast.Call) else node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else []


def _root_name(node: ast.expr) -> str | None:
    chain = _chain(node)
    return chain[0] if chain else None


def _private(name: str) -> bool:
    return name.startswith("_") and name not in ("__version__", "__name__", "__doc__")


def _magic(node: ast.Call) -> str | None:
    """The magic's name for `get_ipython().run_line_magic('timeit', ...)`, else None."""
    func = node.func
    if (
        isinstance(func, ast.Attribute)
        and func.attr in ("run_line_magic", "run_cell_magic")
        and isinstance(func.value, ast.Call)
        and isinstance(func.value.func, ast.Name)
        and func.value.func.id == "get_ipython"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ):
        return str(node.args[0].value)
    return None


class _Scanner(ast.NodeVisitor):
    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.protected = set(PROTECTED_NAMES)  # and names bound to parts of those modules
        self.private_roots = set(_PRIVATE_ROOTS)  # and their aliases
        self.sys_names = {"sys"}
        self.os_names = {"os"}
        self.partly_honest: dict[str, str] = {}  # `import gc as g`: g -> gc
        self.harmless: set[int] = set()  # ids of nodes that look suspicious but are not
        self.methods: list[bool] = []  # per enclosing function: is its first parameter self?

    def _own_object(self, node: ast.expr) -> bool:
        """`self` inside a method: the learner's own object, whatever they set on it."""
        return (
            isinstance(node, ast.Name)
            and node.id == "self"
            and bool(self.methods)
            and self.methods[-1]
            and "self" not in self.protected
        )

    def _flag(self, node: ast.AST, what: str) -> None:
        self.findings.append(Finding(getattr(node, "lineno", 0), what))

    def _check_target(self, target: ast.expr) -> None:
        if isinstance(target, ast.Tuple | ast.List | ast.Starred):
            for element in target.elts if not isinstance(target, ast.Starred) else [target.value]:
                self._check_target(element)
            return
        root = _root_name(target)
        if isinstance(target, ast.Name) and target.id in self.protected | {"self"}:
            if not self.methods or target.id == "self":  # a function's locals reach nothing
                self._flag(target, f"rebinds {target.id}")  # (and `global` is flagged)
        elif isinstance(target, ast.Attribute | ast.Subscript) and root is not None:
            if root in self.protected:
                self._flag(target, f"patches {ast.unparse(target)}")
            elif isinstance(target, ast.Attribute) and target.attr in _COMPARISONS:
                self._flag(target, f"replaces {target.attr}")

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            canonical = _CANONICAL.get(target.id, "") if isinstance(target, ast.Name) else ""
            if ast.unparse(node.value) not in (canonical, canonical.removeprefix("torch.")):
                self._check_target(target)  # (`F = nn.functional` names what F always names)
            value = node.value
            if (
                isinstance(target, ast.Name)
                and isinstance(value, ast.Name)
                and (value.id in self.private_roots)
            ):
                self.protected.add(target.id)  # `m = checks`: m is checks under another name
                self.private_roots.add(target.id)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._check_target(node.target)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._check_target(node.target)
        self.generic_visit(node)

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self._check_target(node.target)
        self.generic_visit(node)

    visit_AsyncFor = visit_For

    def visit_withitem(self, node: ast.withitem) -> None:
        if node.optional_vars is not None:
            self._check_target(node.optional_vars)
        self.generic_visit(node)

    def _check_bound_name(self, node: ast.AST, name: str | None) -> None:
        """`except E as checks`, `case checks:`: a name bound without an assignment."""
        if name is not None:
            self._check_target(ast.copy_location(ast.Name(id=name, ctx=ast.Store()), node))

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        self._check_bound_name(node, node.name)
        self.generic_visit(node)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        self._check_bound_name(node, node.name)
        self.generic_visit(node)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        self._check_bound_name(node, node.name)
        self.generic_visit(node)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        self._check_bound_name(node, node.rest)
        self.generic_visit(node)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self._check_target(node.target)
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            if _root_name(target) in self.protected:
                self._flag(target, f"deletes {ast.unparse(target)}")
        self.generic_visit(node)

    def _bind_alias(self, module: str, bound: str) -> None:
        top = module.split(".")[0]
        if top in ("torch", "tutorlib", "numpy"):
            self.protected.add(bound)  # `import tutorlib.checks as c`: c is protected
            self.private_roots.add(bound)  # ... and c._x is a private name
        if module == "sys":
            self.sys_names.add(bound)
        if module == "os":
            self.os_names.add(bound)
        if module in _ONE_HONEST_PART:
            self.partly_honest[bound] = module

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            top = alias.name.split(".")[0]
            self._bind_alias(alias.name, alias.asname or top)
            if top in _INTROSPECTION:
                self._flag(node, f"imports {alias.name}")
            elif top in ("torch", "tutorlib", "numpy") and any(
                map(_private, alias.name.split("."))
            ):
                self._flag(node, f"imports the private module {alias.name}")
            elif alias.asname in PROTECTED_NAMES and alias.name != _CANONICAL.get(
                alias.asname, alias.asname
            ):
                self._flag(node, f"imports {alias.name} as {alias.asname}")
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        top = module.split(".")[0]
        if top in _INTROSPECTION:
            self._flag(node, f"imports from {module}")
        for alias in node.names:
            if module in _ONE_HONEST_PART and alias.name != _ONE_HONEST_PART[module]:
                self._flag(node, f"imports {module}.{alias.name}")
            bound = alias.asname or alias.name
            self._bind_alias(f"{module}.{alias.name}", bound)
            private = any(map(_private, [*module.split("."), alias.name]))
            if top in ("torch", "tutorlib", "numpy") and private:
                self._flag(node, f"imports the private name {module}.{alias.name}")
            if module in ("sys", "os") and alias.name in _SYS_ESCAPES | _ENVIRONMENT:
                self._flag(node, f"imports {module}.{alias.name}")
            if bound in PROTECTED_NAMES and (module, alias.name, bound) not in _HONEST_IMPORTS:
                self._flag(node, f"rebinds {alias.asname or alias.name} by an import")
        self.generic_visit(node)

    def _check_definition(self, node: ast.FunctionDef | ast.ClassDef) -> None:
        if node.name in PROTECTED_NAMES:
            self._flag(node, f"defines {node.name}")
        if isinstance(node, ast.FunctionDef) and node.name in _COMPARISONS:
            self._flag(node, f"defines {node.name}")

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._check_definition(node)
        parameters = node.args.posonlyargs + node.args.args
        self.methods.append(bool(parameters) and parameters[0].arg == "self")
        self.generic_visit(node)
        self.methods.pop()

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self.methods.append(False)
        self.generic_visit(node)
        self.methods.pop()

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self.visit_FunctionDef(node)  # type: ignore[arg-type]

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._check_definition(node)
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> None:
        for name in node.names:
            if name in PROTECTED_NAMES:
                self._flag(node, f"declares global {name}")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        magic = _magic(node)
        if magic is not None and magic in _HARMLESS_MAGICS:
            self.harmless.add(id(node.func.value))  # type: ignore[attr-defined]
        elif magic is not None:
            self._flag(node, f"runs the magic %{magic}")
            self.harmless.add(id(node.func.value))  # type: ignore[attr-defined]
        if isinstance(node.func, ast.Name) and node.func.id in _SUSPICIOUS_CALLS:
            if id(node) not in self.harmless and not self._honest_call(node, node.func.id):
                self._flag(node, f"calls {node.func.id}()")
        if isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr"):
            self._check_getattr(node)
        self.generic_visit(node)

    def _honest_call(self, node: ast.Call, name: str) -> bool:
        """setattr(self, "layer0", ...) in a method, vars(config): the learner's own objects."""
        if name in ("setattr", "delattr") and len(node.args) >= 2:
            attribute = node.args[1]
            dunder = isinstance(attribute, ast.Constant) and str(attribute.value).startswith("__")
            return self._own_object(node.args[0]) and not dunder
        if name == "vars" and len(node.args) == 1 and isinstance(node.args[0], ast.Name):
            watched = self.protected | self.private_roots | self.sys_names | self.os_names
            return node.args[0].id not in watched | set(self.partly_honest)
        return False

    def _check_getattr(self, node: ast.Call) -> None:
        """getattr(obj, "_private"), or getattr(torch/checks/..., a name computed at run time)."""
        if len(node.args) < 2:
            return
        name = node.args[1]
        if isinstance(name, ast.Constant):
            if str(name.value).startswith("_") or name.value in _DUNDER_ESCAPES:
                self._flag(node, f"reads {name.value} with {node.func.id}()")  # type: ignore[attr-defined]
        elif _root_name(node.args[0]) in self.private_roots:
            self._flag(node, f"reads an attribute of {ast.unparse(node.args[0])} by name")

    def visit_Name(self, node: ast.Name) -> None:
        module = self.partly_honest.get(node.id)
        if module is not None and id(node) not in self.harmless:
            self._flag(node, f"uses {module} beyond {module}.{_ONE_HONEST_PART[module]}")

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str | bytes) and b"/proc/" in _as_bytes(node.value):
            self._flag(node, "reads the process's files under /proc")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain = _chain(node)
        value = node.value
        if node.attr in ("__name__", "__qualname__") and isinstance(value, ast.Attribute):
            if value.attr == "__class__":
                self.harmless.add(id(value))  # type(x).__name__ written the long way
        if isinstance(value, ast.Name) and node.attr == _ONE_HONEST_PART.get(
            self.partly_honest.get(value.id, "")
        ):
            self.harmless.add(id(value))  # gc.collect()
        if node.attr in ("__class__", "__dict__") and (
            id(node) in self.harmless or self._own_object(value)
        ):
            pass  # the learner's own object, or the name of a type
        elif node.attr in _DUNDER_ESCAPES:
            self._flag(node, f"reads {node.attr}")
        elif chain and chain[0] in self.private_roots and len(chain) >= 2:
            private = [i for i, part in enumerate(chain[1:], 1) if _private(part)]
            if private:  # reported once per chain, at its first private part
                self._flag(node, f"reads the private name {'.'.join(chain[: private[0] + 1])}")
            elif chain[1] == "ops" and chain[0] in self.protected:
                self._flag(node, f"reads {chain[0]}.ops (torch's raw operators)")
        elif chain and chain[0] in self.sys_names and node.attr in _SYS_ESCAPES:
            self._flag(node, f"reads sys.{node.attr}")
        elif chain and chain[0] in self.os_names and node.attr in _ENVIRONMENT:
            self._flag(node, f"reads os.{node.attr}")
        self.generic_visit(node)


def _as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "replace")


def _as_python(source: str) -> str:
    """The cell's source with IPython's syntax (magics, `!`, `?`) written as the calls it makes."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:  # pragma: no cover - IPython comes with Jupyter
        return source
    try:
        return TransformerManager().transform_cell(source)
    except Exception:  # noqa: BLE001 - leave anything IPython cannot read to ast
        return source


def scan_source(source: str) -> list[Finding]:
    """The suspicious constructs in `source`, in line order. Code that does not parse is one
    finding that needs no review: it cannot run, so it cannot reach anything either."""
    try:
        tree = ast.parse(_as_python(source))
    except SyntaxError as error:
        return [Finding(error.lineno or 0, f"cannot be parsed ({error.msg})", review=False)]
    scanner = _Scanner()
    scanner.visit(tree)
    return sorted(set(scanner.findings), key=lambda f: (f.line, f.what))


def _source(cell: Any) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def scan_cells(cells: Iterable[Any]) -> dict[int, tuple[str, list[Finding]]]:
    """Findings per learner cell of a notebook's cells (dicts or nbformat nodes), by the cell's
    index: (nbgrader's grade_id, or "cell N" for a cell the learner added; its findings).
    The course's locked and test cells are skipped: nbgrader restores them before grading."""
    report: dict[int, tuple[str, list[Finding]]] = {}
    for index, cell in enumerate(cells):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("locked") or (meta.get("grade") and not meta.get("solution")):
            continue  # the course's own cells
        findings = scan_source(_source(cell))
        if findings:
            report[index] = (meta.get("grade_id", f"cell {index}"), findings)
    return report


def scan_notebook(path: str | Path) -> dict[str, list[Finding]]:
    """Findings per learner cell (nbgrader's `grade_id`, or "cell N" for a cell the learner
    added) of a submitted notebook; cells without findings are left out. Scan the autograded
    copy, where nbgrader has restored the course's cells, to be sure a learner did not unlock
    one. A file that is not a notebook is one finding under "notebook"."""
    try:
        nb = json.loads(Path(path).read_text(encoding="utf-8"))
        cells = nb["cells"]
        report = scan_cells(cells)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
        return {"notebook": [Finding(0, f"is not a readable notebook ({type(error).__name__})")]}
    return dict(report.values())
