"""Find submissions whose code reaches into the testing machinery, for an instructor to review.

nbgrader runs the tests in the learner's kernel, so a submission can change what the tests
see: rebind `checks` or one of its functions, patch `torch.allclose` or a builtin, redefine
`__eq__`, silence the traceback. No check inside the kernel can rule all of that out, but such
code is rare in honest work and easy to see in the source. `scan_source` reads a cell's code
with `ast` (without running it) and reports each suspicious construct with its line;
`scan_notebook` does it for the answer cells of a submitted notebook.

Book: Instructors (grades that can't be faked).
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

__all__ = ["PROTECTED_NAMES", "Finding", "scan_notebook", "scan_source"]

# Names the tests rely on: rebinding or patching them (or their attributes) is flagged.
PROTECTED_NAMES = frozenset(
    {
        "AssertionError",
        "ExerciseError",
        "IPython",
        "builtins",
        "checks",
        "get_ipython",
        "math",
        "np",
        "numpy",
        "sys",
        "torch",
        "tutorlib",
    }
)
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
    }
)
# Modules that reach the interpreter's internals (patching, frames, memory).
_INTROSPECTION = frozenset({"builtins", "ctypes", "gc", "importlib", "inspect"})
# The usual names of a protected module under an alias, and imports the exercises themselves use.
_CANONICAL = {"np": "numpy"}
_HONEST_IMPORTS = frozenset({("tutorlib", "checks", "checks")})
# Special methods whose redefinition makes any comparison pass.
_COMPARISONS = frozenset({"__eq__", "__ne__", "__bool__", "__lt__", "__le__", "__gt__", "__ge__"})
# Attributes that reach module state or the interpreter from any object.
_DUNDER_ESCAPES = frozenset(
    {"__builtins__", "__dict__", "__globals__", "__code__", "__class__", "__subclasses__"}
)


@dataclasses.dataclass(frozen=True)
class Finding:
    """One suspicious construct: where it is and what it does."""

    line: int
    what: str


def _root_name(node: ast.expr) -> str | None:
    """`torch` for `torch.testing.assert_close`, `checks` for `checks.f[0]`, `get_ipython` for
    `get_ipython().showtraceback`; None otherwise."""
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Call):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


class _Scanner(ast.NodeVisitor):
    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.protected = set(PROTECTED_NAMES)  # and names bound to parts of those modules

    def _flag(self, node: ast.AST, what: str) -> None:
        self.findings.append(Finding(getattr(node, "lineno", 0), what))

    def _check_target(self, target: ast.expr) -> None:
        if isinstance(target, ast.Tuple | ast.List):
            for element in target.elts:
                self._check_target(element)
            return
        root = _root_name(target)
        if isinstance(target, ast.Name) and target.id in self.protected:
            self._flag(target, f"rebinds {target.id}")
        elif isinstance(target, ast.Attribute | ast.Subscript) and root is not None:
            if root in self.protected:
                self._flag(target, f"patches {ast.unparse(target)}")
            elif isinstance(target, ast.Attribute) and target.attr in _COMPARISONS:
                self._flag(target, f"replaces {target.attr}")

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._check_target(target)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._check_target(node.target)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._check_target(node.target)
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            if _root_name(target) in self.protected:
                self._flag(target, f"deletes {ast.unparse(target)}")
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.asname and alias.name.split(".")[0] in PROTECTED_NAMES:
                self.protected.add(alias.asname)  # `import tutorlib.checks as c`: c is protected
            if alias.name.split(".")[0] in _INTROSPECTION:
                self._flag(node, f"imports {alias.name}")
            elif alias.asname in PROTECTED_NAMES and alias.name != _CANONICAL.get(
                alias.asname, alias.asname
            ):
                self._flag(node, f"imports {alias.name} as {alias.asname}")
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if module.split(".")[0] in _INTROSPECTION:
            self._flag(node, f"imports from {module}")
        for alias in node.names:
            bound = alias.asname or alias.name
            if module.split(".")[0] in PROTECTED_NAMES:
                self.protected.add(bound)  # `from torch import testing`: testing is protected
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
        self.generic_visit(node)

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
        if isinstance(node.func, ast.Name) and node.func.id in _SUSPICIOUS_CALLS:
            self._flag(node, f"calls {node.func.id}()")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in _DUNDER_ESCAPES:
            self._flag(node, f"reads {node.attr}")
        self.generic_visit(node)


def scan_source(source: str) -> list[Finding]:
    """The suspicious constructs in `source`, in line order. Code that does not parse (a
    syntax error, or IPython magics) is reported as one finding, since it cannot be read."""
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        return [Finding(error.lineno or 0, f"cannot be parsed ({error.msg})")]
    scanner = _Scanner()
    scanner.visit(tree)
    return sorted(scanner.findings, key=lambda f: f.line)


def scan_notebook(path: str | Path) -> dict[str, list[Finding]]:
    """Findings per learner cell (nbgrader's `grade_id`, or "cell N" for a cell the learner
    added) of a submitted notebook; cells without findings are left out. The course's locked
    and test cells are skipped: scan the autograded copy, where nbgrader has restored their
    source and metadata, to be sure a learner did not unlock one. A file that is not a notebook
    is one finding under "notebook"."""
    try:
        nb = json.loads(Path(path).read_text(encoding="utf-8"))
        cells = nb["cells"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        return {"notebook": [Finding(0, f"is not a readable notebook ({type(error).__name__})")]}
    report: dict[str, list[Finding]] = {}
    for index, cell in enumerate(cells):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("locked") or (meta.get("grade") and not meta.get("solution")):
            continue  # the course's own cells: nbgrader restores them before grading
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        findings = scan_source(source)
        if findings:
            report[meta.get("grade_id", f"cell {index}")] = findings
    return report
