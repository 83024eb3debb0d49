"""The machinery that exercise tests use: run a learner's code, compare it with the reference,
and say which common mistake it matches.

- `run_candidate` runs learner code with warnings and stderr silenced (nbgrader scores a test
  cell 0 if anything reaches stderr) and with the reference and the torch built-ins that the
  exercise asks the learner to write replaced by functions that raise (`forbid`).
- `expect_close` compares a result with the reference and, when they differ, with each
  "likely mistake" variant, so the failure message names the mistake.

The helpers keep their own references to torch's functions, taken when this module is
imported (the first cell of every exercise notebook, before any learner code runs).

Book: the exercises of every chapter.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import sys
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "ExerciseError",
    "Target",
    "expect_backward_close",
    "expect_close",
    "expect_grads_close",
    "forbid",
    "quiet",
    "random_tensor",
    "report_ok",
    "run_candidate",
    "tampered",
    "verify_intact",
    "watch_module",
]

# Our own references, taken before learner code can rebind the public names.
_builtins_module = builtins
_assert_close = torch.testing.assert_close
_is_tensor = torch.is_tensor
_isfinite = torch.isfinite
_setattr, _getattr = setattr, getattr

Target = tuple[Any, str]  # (owner, attribute name), e.g. (torch.nn.functional, "layer_norm")

FORBIDDEN_PREFIX = "Not allowed in this exercise:"


class ExerciseError(AssertionError):
    """A failed exercise check; its message says what is probably wrong."""


def _blocked_template(*args, **kwargs):
    raise RuntimeError("__MESSAGE__")


def _forbidden_message(label: str, exercise: str) -> str:
    return (
        f"{FORBIDDEN_PREFIX} your {exercise} called {label}. The point of this exercise is "
        "to write that computation yourself from basic tensor operations."
    )


def _blocked(label: str, exercise: str) -> types.FunctionType:
    """A function that raises the forbidden-call message, whatever it is called with."""
    message = _forbidden_message(label, exercise)
    code = _blocked_template.__code__
    consts = tuple(message if c == "__MESSAGE__" else c for c in code.co_consts)
    return types.FunctionType(code.replace(co_consts=consts), {"RuntimeError": RuntimeError})


def _label(owner: Any, name: str) -> str:
    """The dotted name a learner would recognise, e.g. torch.nn.functional.layer_norm."""
    if isinstance(owner, types.ModuleType):
        return f"{owner.__name__}.{name}"
    return f"{owner.__module__}.{owner.__qualname__}.{name}"


@contextlib.contextmanager
def forbid(targets: Iterable[Target], exercise: str) -> Iterator[None]:
    """Make each (owner, name) raise while the block runs; restore them afterwards.

    A Python function is also blocked through its code object, so an alias the learner made
    earlier (`from torch.nn.functional import layer_norm as ln`) raises too.
    """
    undo: list[Callable[[], None]] = []
    try:
        for owner, name in targets:
            original = _getattr(owner, name)
            blocked = _blocked(_label(owner, name), exercise)
            _setattr(owner, name, blocked)
            undo.append(lambda o=owner, n=name, f=original: _setattr(o, n, f))
            if isinstance(original, types.FunctionType) and not original.__closure__:
                saved = original.__code__
                original.__code__ = blocked.__code__
                undo.append(lambda f=original, c=saved: _setattr(f, "__code__", c))
        yield
    finally:
        for restore in reversed(undo):
            restore()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence warnings and stderr: nbgrader gives 0 to a test cell that writes to stderr."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def run_candidate(
    fn: Callable[..., Any],
    *args: Any,
    exercise: str,
    forbidden: Iterable[Target] = (),
    **kwargs: Any,
) -> Any:
    """Call the learner's `fn(*args, **kwargs)` quietly, with `forbidden` targets blocked.

    Raises `ExerciseError` with a readable message when the call fails.
    """
    with quiet(), forbid(forbidden, exercise):
        try:
            return fn(*args, **kwargs)
        except NotImplementedError:
            raise ExerciseError(
                f"{exercise} is not implemented yet: replace `raise NotImplementedError()` "
                "with your code."
            ) from None
        except RuntimeError as error:
            if str(error).startswith(FORBIDDEN_PREFIX):
                raise ExerciseError(str(error)) from None
            raise ExerciseError(f"{exercise} raised RuntimeError: {error}") from error
        except Exception as error:
            raise ExerciseError(f"{exercise} raised {type(error).__name__}: {error}") from error


def _close(actual: Tensor, expected: Tensor, atol: float, rtol: float) -> bool:
    try:
        _assert_close(actual, expected, atol=atol, rtol=rtol, check_dtype=False)
    except AssertionError:
        return False
    return True


def _closest_mistake(
    actual: Tensor, mistakes: Mapping[str, Callable[[], Tensor]], atol: float, rtol: float
) -> str | None:
    """The hint of the mistake variant nearest to `actual`, among those it matches.

    The tolerance is looser than the pass/fail test's, so a mistake is recognised even when a
    small detail (an epsilon, float32 rounding) differs as well.
    """
    best, best_distance = None, float("inf")
    for hint, variant in mistakes.items():
        with quiet():
            wrong = variant().detach().to(actual.dtype)
        if wrong.shape != actual.shape or not _close(actual, wrong, atol, rtol):
            continue
        distance = float((actual.double() - wrong.double()).abs().max()) if actual.numel() else 0.0
        if distance < best_distance:
            best, best_distance = hint, distance
    return best


def expect_close(
    actual: Any,
    expected: Tensor,
    *,
    what: str,
    mistakes: Mapping[str, Callable[[], Tensor]] | None = None,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    check_dtype: bool = True,
) -> None:
    """Fail with a helpful message unless `actual` equals `expected` within tolerance.

    `mistakes` maps a hint ("eps belongs inside the square root") to a function computing
    what that mistake would return; the first variant that `actual` matches names the
    mistake in the message.
    """
    if not _is_tensor(actual):
        raise ExerciseError(f"{what} should be a torch.Tensor, got {type(actual).__name__}.")
    actual = actual.detach()
    expected = expected.detach()
    if actual.shape != expected.shape:
        raise ExerciseError(
            f"{what} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}."
        )
    if check_dtype and actual.dtype != expected.dtype:
        raise ExerciseError(
            f"{what} has dtype {actual.dtype}, expected {expected.dtype}: create new tensors "
            "with the dtype (and device) of the input, e.g. torch.zeros(..., dtype=x.dtype)."
        )
    actual = actual.to(expected.dtype)
    if _close(actual, expected, atol, rtol):
        return
    hint = _closest_mistake(actual, mistakes or {}, max(atol, 1e-4), max(rtol, 1e-3))
    if hint is not None:
        raise ExerciseError(f"{what} is not right. Likely mistake: {hint}")
    finite = _isfinite(actual)
    if not bool(finite.all()) and bool(_isfinite(expected).all()):
        raise ExerciseError(
            f"{what} contains NaN or inf where the expected values are finite "
            "(a division by zero? a missing epsilon?)."
        )
    diff = (actual.double() - expected.double()).abs()  # double: masks are bool
    index = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0])
    raise ExerciseError(
        f"{what} differs from the expected values: the largest difference is "
        f"{float(diff.max()):.3g} at index {index} (got {float(actual[index]):.6g}, "
        f"expected {float(expected[index]):.6g})."
    )


def expect_grads_close(
    actual: Mapping[str, Tensor | None],
    expected: Mapping[str, Tensor],
    *,
    what: str,
    atol: float = 1e-6,
    rtol: float = 1e-5,
) -> None:
    """Compare gradients by name; a missing gradient means the graph was cut."""
    for name, grad in expected.items():
        got = actual.get(name)
        if got is None:
            raise ExerciseError(
                f"No gradient reaches {name} through your {what}: did you use .detach(), "
                ".item(), .numpy() or torch.no_grad() on the way?"
            )
        expect_close(
            got, grad, what=f"The gradient of {name} through your {what}", atol=atol, rtol=rtol
        )


def expect_backward_close(
    out: Tensor, expected: Tensor, inputs: Mapping[str, Tensor], what: str, atol: float = 1e-8
) -> None:
    """Gradients of sum(out**2) with respect to each named leaf equal the reference's."""
    leaves = list(inputs.values())
    expected_grads = torch.autograd.grad((expected**2).sum(), leaves, retain_graph=True)
    for leaf in leaves:
        leaf.grad = None
    with quiet():
        (out**2).sum().backward()
    expect_grads_close(
        {name: leaf.grad for name, leaf in inputs.items()},
        dict(zip(inputs, expected_grads, strict=True)),
        what=what,
        atol=atol,
    )


def random_tensor(*shape: int, seed: int, grad: bool = False) -> Tensor:
    """Seeded float64 normal samples, for hidden tests that repeat exactly."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=generator, dtype=torch.float64)
    return x.requires_grad_(grad)


# What the checks rely on, as it was when this module was imported (the setup cell, before
# any learner code). A submission that patches one of these gets no points silently:
# `report_ok` calls `verify_intact` before it says OK.
_WATCHED_BUILTINS = (
    "__build_class__ __import__ abs all any bool callable dict enumerate float getattr hasattr "
    "id int isinstance issubclass iter len list max min next object print range repr round "
    "setattr sorted str sum tuple type zip "
    "AssertionError BaseException Exception NotImplementedError RuntimeError TypeError ValueError"
).split()
_WATCHED_ATTRIBUTES: tuple[tuple[Any, str], ...] = tuple(
    (owner, name)
    for owner, names in [
        (torch, "allclose equal isclose is_tensor isfinite"),
        (torch.testing, "assert_close"),
        (torch.Tensor, "__eq__ __ne__ __bool__ allclose equal item tolist"),
    ]
    for name in names.split()
)
_SNAPSHOT = {("builtins", name): vars(builtins)[name] for name in _WATCHED_BUILTINS} | {
    (owner, name): _getattr(owner, name) for owner, name in _WATCHED_ATTRIBUTES
}
_CHECK_MODULES: dict[str, dict[str, Any]] = {}  # module name -> its functions at import


def watch_module(name: str) -> None:
    """Remember the functions of checks module `name` as they are now (each chapter's checks
    module calls this when it is imported), so `verify_intact` sees them replaced."""
    module = sys.modules[name]
    _CHECK_MODULES[name] = {k: v for k, v in vars(module).items() if callable(v)}


def tampered() -> list[str]:
    """The watched names whose value is no longer the one taken at import."""
    changed = []
    current_builtins = vars(_builtins_module)
    for (owner, name), value in _SNAPSHOT.items():
        now = current_builtins.get(name) if owner == "builtins" else _getattr(owner, name, None)
        if now is not value:
            where = "builtins" if owner == "builtins" else _getattr(owner, "__name__", "?")
            changed.append(f"{where}.{name}")
    for module_name, functions in _CHECK_MODULES.items():
        module_dict = vars(sys.modules[module_name])
        changed += [
            f"{module_name}.{k}" for k, v in functions.items() if module_dict.get(k) is not v
        ]
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
