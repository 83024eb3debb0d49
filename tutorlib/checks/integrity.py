"""Grades that can't be faked by patching: what the checks rely on, as it was before any
learner code ran.

nbgrader runs the tests in the learner's kernel, after the learner's cells. A submission could
replace a builtin, a torch function, a Tensor method, a module of `torch.nn`, a tutorlib
function or a check, or register a global hook, so that the reference a check computes after
the learner's function agrees with a wrong answer, or so that a comparison always passes.
`snapshot_modules` records every callable of those modules and classes when the exercise
notebook's setup cell imports the checks; `tampered` lists what differs since, and
`report_ok` refuses to print OK while anything does.

The check modules call `watch_module` when they are imported: their functions join the
snapshot, and `tutorlib.checks.guard` forbids every one of them (the references and their
mistake variants) to the learner's code.

Book: Instructors (grades that can't be faked).
"""

from __future__ import annotations

import builtins
import math
import sys
import types
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tutorlib.checks.errors import ExerciseError
from tutorlib.checks.guard import register_code

__all__ = ["report_ok", "tampered", "verify_intact", "watch_module"]

_MISSING = object()


# Builtins that interactive shells rebind themselves (ipykernel swaps `input` for every cell).
_SHELL_BUILTINS = frozenset(
    "_ __ ___ input exit quit help copyright credits license display get_ipython".split()
)


def _callables(owner: Any) -> dict[str, Any]:
    """The callable attributes of a module or class (its own `__dict__`), by name."""
    skip = _SHELL_BUILTINS if owner is builtins else ()
    return {
        name: value
        for name, value in vars(owner).items()
        if (callable(value) or isinstance(value, staticmethod | classmethod | property))
        and name not in skip
    }


def _name(owner: Any) -> str:
    if isinstance(owner, types.ModuleType):
        return owner.__name__
    return f"{owner.__module__}.{owner.__qualname__}"


def _dynamo_wrapper_code() -> Any:
    """The code of the wrapper torch puts around some of its functions when torch._dynamo is
    imported (a Hugging Face model imports it): `torch.manual_seed` becomes such a wrapper."""
    return torch._disable_dynamo(lambda: None).__code__


_DYNAMO_WRAPPER = _dynamo_wrapper_code()


def _same(now: Any, saved: Any) -> bool:
    """`now` is `saved`, or torch's own dynamo wrapper around it (which only calls it)."""
    if now is saved:
        return True
    return getattr(now, "__code__", None) is _DYNAMO_WRAPPER and now.__wrapped__ is saved


# owner (a module or a class) -> its callables when the checks were imported, and (for a
# class) every name it had then, its bases' included
_SNAPSHOT: dict[int, tuple[Any, dict[str, Any], frozenset[str]]] = {}


def _watch(owner: Any) -> None:
    names = frozenset(dir(owner)) if isinstance(owner, type) else frozenset()
    _SNAPSHOT.setdefault(id(owner), (owner, _callables(owner), names))


def _importing(module: types.ModuleType) -> bool:
    """A module whose import has not finished (the check module that imported this one): its
    snapshot waits for `watch_module`, or it would miss the names bound after this import."""
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def snapshot_modules() -> None:
    """Record builtins, torch (its functions, Tensor, nn.functional, the nn modules), math,
    numpy and every tutorlib module loaded now."""
    owners: list[Any] = [builtins, math, np, np.ndarray, torch, torch.Tensor, F, torch.testing]
    owners += [torch.linalg, torch.special, torch.fft, nn.init, nn.utils, nn.Module]
    owners += [obj for obj in vars(nn).values() if isinstance(obj, type)]
    owners += [
        module
        for name, module in sys.modules.items()
        if name.split(".")[0] == "tutorlib" and module and not _importing(module)
    ]
    for owner in owners:
        _watch(owner)


def _global_hooks() -> dict[str, int]:
    """How many global module hooks torch holds (a hook would change every model's output)."""
    from torch.nn.modules import module

    names = [n for n in vars(module) if n.startswith("_global_") and n.endswith("hooks")]
    return {n: len(getattr(module, n)) for n in names}


_HOOKS = _global_hooks()


def watch_module(name: str) -> None:
    """Forbid the functions of check module `name` to learner code (`tutorlib.checks.guard`)
    and add it, and the tutorlib modules it loaded, to the snapshot. Each chapter's check
    module calls this last, when the exercise notebook's setup cell imports it."""
    module = sys.modules[name]
    for value in vars(module).values():
        if getattr(value, "__module__", None) == name and isinstance(
            value, type | types.FunctionType
        ):
            register_code(value)
    snapshot_modules()
    _watch(module)  # still importing: this call is its last line


def tampered() -> list[str]:
    """What differs from the snapshot: replaced or deleted callables, methods set on a class
    over the ones it inherited (a patched Tensor.__eq__), global hooks. A method under a new
    name changes nothing the checks call (Hugging Face's transformers adds
    nn.Module.smart_apply when it is imported)."""
    changed = []
    for owner, saved, names in _SNAPSHOT.values():
        now = vars(owner)
        changed += [
            f"{_name(owner)}.{k}" for k, v in saved.items() if not _same(now.get(k, _MISSING), v)
        ]
        if isinstance(owner, type):
            added = [k for k, v in now.items() if k not in saved and k in names and callable(v)]
            changed += [f"{_name(owner)}.{k}" for k in added]
    hooks = _global_hooks()
    changed += [f"torch.nn.modules.module.{k}" for k, n in hooks.items() if n != _HOOKS.get(k)]
    return changed


def verify_intact() -> None:
    """Raise ExerciseError if the submission replaced something the checks rely on."""
    changed = tampered()
    if changed:
        raise ExerciseError(
            "the testing machinery was changed by the submission ("
            + ", ".join(changed[:5])
            + "): no points are given, and the instructor is told."
        )


def report_ok(name: str, hidden: bool) -> None:
    """The line a passing test cell prints, once `verify_intact` has passed."""
    verify_intact()
    print(f"OK: {name} " + ("passes the hidden tests." if hidden else "passes the visible tests."))


snapshot_modules()
