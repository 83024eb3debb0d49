"""Out of reach by identity: what a learner's code may not run while a check calls it.

An exercise asks the learner to write a computation that tutorlib and torch already have. While
the learner's function runs under a check, `guarded` watches what actually executes, not the
names it is reached by:

* a **profile hook** (`sys.setprofile`) sees every Python function that starts, by its code
  object, and every C function called from Python. Code objects compare equal when compiled
  from the same source at the same place, so an alias (`from tutorlib.layers import
  layer_norm as ln`), a function wrapped by a decorator, and a fresh copy made by running the
  module again (`runpy`, `importlib.reload`, `exec` of its source) are all the same function
  here. Forbidden always: every function of the check modules (the references and their
  "mistake" variants; `tutorlib.checks.integrity.watch_module` registers them), frame
  introspection, and threads or processes started from the learner's code.
* a **torch function mode** sees every call into torch's Python API, whatever it is called:
  `F.layer_norm`, `torch.layer_norm`, `torch._C._VariableFunctions.layer_norm`,
  `torch.ops.aten.layer_norm`, a Tensor method.
* a **torch dispatch mode** sees the aten operators that every one of those names ends up
  running, including the ones torch calls internally (`F.instance_norm` of a transposed input
  runs `aten::native_batch_norm`). It can also refuse any intermediate tensor of a given shape
  (the (T, S) score matrix that linear attention must not build).

A forbidden call stops the learner's function (with an exception that `except Exception`
does not catch) and is recorded, so the check fails even if the learner's code swallows it.
Everything an exercise does not ask the learner to write stays allowed.

Book: the exercises of every chapter; Instructors (grades that can't be faked).
"""

from __future__ import annotations

import _thread
import contextlib
import dataclasses
import functools
import gc
import inspect
import os
import subprocess
import sys
import threading
import traceback
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "ATTENTION_KERNELS",
    "MULTI_HEAD_KERNELS",
    "Forbidden",
    "Watch",
    "guarded",
    "handed_over",
    "register_code",
]

# Every aten operator that computes softmax attention in one call: torch's public function and
# the kernels it dispatches to (any of them can be called directly through torch.ops).
ATTENTION_KERNELS = (
    "scaled_dot_product_attention",
    "_scaled_dot_product_attention_math",
    "_scaled_dot_product_attention_math_for_mps",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
    "_efficient_attention_forward",
    "_flash_attention_forward",
    "_triton_scaled_dot_attention",
)
# ... and the fused multi-head paths (nn.MultiheadAttention's, the encoder layer's fast path).
MULTI_HEAD_KERNELS = (
    "multi_head_attention_forward",
    "_native_multi_head_attention",
    "_triton_multi_head_attention",
    "_transformer_encoder_layer_fwd",
)

# Namespaces where torch's operators have Python names.
_TORCH_NAMESPACES = (
    torch,
    torch._C._VariableFunctions,
    torch._C._nn,
    torch._C._linalg,
    torch._C._special,
    torch._C._fft,
    F,
    torch.linalg,
    torch.special,
)


class Stopped(BaseException):
    """Raised into the learner's code at a forbidden call. A BaseException, so that a
    learner's `except Exception` does not swallow it (and the violation is recorded anyway)."""


@dataclasses.dataclass(frozen=True)
class Forbidden:
    """What an exercise forbids: Python functions, methods and classes (by their code, so by
    identity), and torch operators by name (every Python name of the operator and the aten
    operator itself)."""

    python: tuple[Any, ...] = ()  # tutorlib functions and classes, torch modules and methods
    ops: tuple[str, ...] = ()  # aten operator names, e.g. "native_layer_norm"

    def __add__(self, other: Forbidden) -> Forbidden:
        return Forbidden(self.python + other.python, self.ops + other.ops)


def _label(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or ""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
    return f"{module}.{name}" if module else name


def _nested(code: types.CodeType) -> Iterator[types.CodeType]:
    """`code` and the code of every function, lambda and class body defined inside it."""
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _nested(const)


def _unwrap(obj: Any) -> Any:
    """The function under decorators, partials, bound methods and static/class methods."""
    for _ in range(20):
        if isinstance(obj, staticmethod | classmethod | types.MethodType):
            obj = obj.__func__
        elif isinstance(obj, functools.partial):
            obj = obj.func
        elif getattr(obj, "__wrapped__", None) is not None:
            obj = obj.__wrapped__
        else:
            return obj
    return obj


def _collect(obj: Any, codes: dict, builtins: dict, label: str | None = None) -> None:
    """Add the code objects (Python) or identities (C) of `obj` to `codes` and `builtins`."""
    label = label or _label(obj)
    if isinstance(obj, type):
        for name, member in vars(obj).items():
            if isinstance(member, type):
                continue  # a class attribute that is a class (autograd's _backward_cls ...)
            if not (name.startswith("__") and name.endswith("__")) or name in (
                "__init__",
                "__call__",
                "__new__",
            ):
                _collect(member, codes, builtins, f"{label}.{name}")
        return
    if isinstance(obj, property):
        for accessor in (obj.fget, obj.fset):
            if accessor is not None:
                _collect(accessor, codes, builtins, label)
        return
    wrapper = obj
    obj = _unwrap(obj)
    if isinstance(obj, types.FunctionType):
        for code in _nested(obj.__code__):
            codes.setdefault(code, (code, label))
    elif isinstance(obj, types.BuiltinFunctionType | types.BuiltinMethodType):
        builtins[id(obj)] = (obj, label)
    if wrapper is not obj and isinstance(wrapper, types.BuiltinFunctionType):
        builtins[id(wrapper)] = (wrapper, label)


# Registered by the check modules (their every function) and by `handed_over`.
_ALWAYS_CODES: dict[types.CodeType, tuple[types.CodeType, str]] = {}
_ALWAYS_BUILTINS: dict[int, tuple[Any, str]] = {}
_ALLOWED: set[types.CodeType] = set()  # check code the learner is given to call
# Escapes: forbidden when the learner's own code calls them (torch and the standard library
# use some of them for their own purposes, e.g. sys._getframe while importing a module).
_ESCAPE_CODES: dict[types.CodeType, tuple[types.CodeType, str]] = {}
_ESCAPE_BUILTINS: dict[int, tuple[Any, str]] = {}


def register_code(obj: Any, label: str | None = None) -> None:
    """Forbid `obj` (a function, or a class's methods) in every guarded call."""
    _collect(obj, _ALWAYS_CODES, _ALWAYS_BUILTINS, label)


def handed_over(fn: Callable) -> Callable:
    """Mark a function of a check module as given to the learner's code to call (a toy
    sublayer, a forward hook): the one kind of check code that may run inside a guard."""
    _ALLOWED.update(_nested(_unwrap(fn).__code__))
    return fn


def _escape(*objects: Any) -> None:
    for obj in objects:
        _collect(obj, _ESCAPE_CODES, _ESCAPE_BUILTINS)


# Frame introspection (a check's frames hold its inputs and references), switching the watch
# off, and threads and processes, which the watch does not follow.
_escape(
    sys._getframe,
    sys._current_frames,
    sys.setprofile,
    sys.settrace,
    gc.get_objects,
    gc.get_referrers,
    gc.get_referents,
    inspect.currentframe,
    inspect.stack,
    inspect.trace,
    inspect.getouterframes,
    traceback.walk_stack,
    traceback.extract_stack,
    threading.setprofile,
    threading.settrace,
    threading.Thread.start,
    _thread.start_new_thread,
    subprocess.Popen,
    os.system,
    *(getattr(os, name) for name in ("fork", "forkpty", "posix_spawn") if hasattr(os, name)),
    *(
        getattr(torch._C, name)
        for name in ("_pop_torch_function_stack", "_pop_torch_dispatch_stack")
        if hasattr(torch._C, name)
    ),
)

# Where the Python installation, the environment and tutorlib live: code there is library code.
_LIBRARY = tuple(
    {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.dirname(__file__))}
) + ("<frozen",)


def _from_learner(frame: types.FrameType | None) -> bool:
    """Whether `frame` runs the learner's code (a notebook cell, anything outside the library)."""
    return frame is not None and not frame.f_code.co_filename.startswith(_LIBRARY)


def _op_name(func: Any) -> str:
    """`native_layer_norm` for torch.ops.aten.native_layer_norm(.default), a builtin's or a
    Tensor method's own name otherwise."""
    if isinstance(func, torch._ops.OpOverload):
        return func._schema.name.split("::")[-1]
    if isinstance(func, torch._ops.OpOverloadPacket):
        return func._qualified_op_name.split("::")[-1]
    return getattr(func, "__name__", "") or ""


class Watch:
    """One exercise's forbidden things, resolved once: code objects, C functions, op names."""

    def __init__(self, forbidden: Forbidden, exercise: str) -> None:
        self.exercise = exercise
        self.codes: dict[types.CodeType, tuple[types.CodeType, str]] = {}
        self.builtins: dict[int, tuple[Any, str]] = {}
        for obj in forbidden.python:
            _collect(obj, self.codes, self.builtins)
        self.ops = frozenset(forbidden.ops)
        for name in self.ops:  # every Python name of the operator, for calls nested in Python
            for namespace in _TORCH_NAMESPACES:
                found = getattr(namespace, name, None)
                if found is not None:
                    _collect(found, self.codes, self.builtins, f"torch's {name}")

    def code_label(self, code: types.CodeType) -> str | None:
        found = self.codes.get(code) or _ALWAYS_CODES.get(code)
        if found is None or code in _ALLOWED:
            return None
        original, label = found
        return label if original is code else f"{label} (a copy made by running its module again)"

    def builtin_label(self, func: Any) -> str | None:
        found = self.builtins.get(id(func)) or _ALWAYS_BUILTINS.get(id(func))
        return found[1] if found is not None and found[0] is func else None

    def torch_label(self, func: Any) -> str | None:
        """Why `func`, called through torch's API, is forbidden (None if it is not)."""
        label = self.builtin_label(func)
        code = getattr(_unwrap(func), "__code__", None)
        if label is None and isinstance(code, types.CodeType):
            label = self.code_label(code)
        if label is None and _op_name(func) in self.ops:
            name = _op_name(func)
            if isinstance(func, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
                label = f"torch.ops.aten.{name}"
            else:
                label = f"torch's {name} ({getattr(func, '__qualname__', name)})"
        return label


class _Violations:
    """What the learner's code ran that it may not: recorded, then stopped."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.found: list[str] = []
        self.active = True  # False once the learner's code has returned

    def stop(self, label: str) -> None:
        if self.active:
            self.found.append(label)
            raise Stopped(label)


class _TorchWatch(TorchFunctionMode):
    def __init__(self, violations: _Violations) -> None:
        super().__init__()
        self.violations = violations

    def __torch_function__(self, func, types, args=(), kwargs=None):
        label = self.violations.watch.torch_label(func)
        if label is not None:
            self.violations.stop(label)
        return func(*args, **(kwargs or {}))


class _AtenWatch(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # Nothing runs compiled here; torch's wrapper would import torch._dynamo on first use
        # (1.5 s in every grading kernel) and rebind torch.manual_seed on the way.
        return False

    def __init__(self, violations: _Violations, shapes: Iterable[tuple[int, int]]) -> None:
        super().__init__()
        self.violations = violations
        self.shapes = {tuple(s) for s in shapes}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = _op_name(func)
        if name in self.violations.watch.ops:
            self.violations.stop(f"the operator aten::{name}")
        out = func(*args, **(kwargs or {}))
        if self.shapes:
            for tensor in out if isinstance(out, tuple | list) else (out,):
                if isinstance(tensor, torch.Tensor) and tuple(tensor.shape[-2:]) in self.shapes:
                    shape = "x".join(map(str, tensor.shape[-2:]))
                    self.violations.stop(f"{name}, which built a {shape} matrix")
        return out


def _profile_hook(violations: _Violations) -> Callable:
    watch = violations.watch

    def hook(frame: types.FrameType, event: str, arg: Any) -> None:
        if not violations.active:
            return
        if event == "call":
            label = watch.code_label(frame.f_code)
            if label is None and _from_learner(frame.f_back):
                found = _ESCAPE_CODES.get(frame.f_code)
                label = found[1] if found is not None else None
            if label is not None:
                violations.stop(label)
        elif event == "c_call":
            label = watch.builtin_label(arg)
            if label is None and _from_learner(frame):
                found = _ESCAPE_BUILTINS.get(id(arg))
                label = found[1] if found is not None and found[0] is arg else None
            if label is not None:
                violations.stop(label)

    return hook


@contextlib.contextmanager
def guarded(watch: Watch, shapes: Iterable[tuple[int, int]] = ()) -> Iterator[list[str]]:
    """Run the block under the watch; yields the list of violations (labels), filled when the
    learner's code ran something forbidden or switched the watch off."""
    violations = _Violations(watch)
    hook = _profile_hook(violations)

    def thread_started(*args: Any) -> None:
        violations.found.append("a new thread (the check cannot watch it)")
        raise Stopped("thread")

    shapes = list(shapes)
    aten = _AtenWatch(violations, shapes) if watch.ops or shapes else contextlib.nullcontext()
    previous = sys.getprofile()
    previous = previous if callable(previous) else None  # a C profiler (cProfile) stays off
    with _TorchWatch(violations), aten:
        threading.setprofile(thread_started)
        sys.setprofile(hook)
        try:
            yield violations.found
        finally:
            violations.active = False  # the teardown below calls what the learner may not
            intact = sys.getprofile() is hook
            sys.setprofile(previous)
            threading.setprofile(None)
            if not intact and not violations.found:
                violations.found.append("sys.setprofile (it switched off the check's watch)")
