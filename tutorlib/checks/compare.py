"""One comparison toolkit for every check: closeness, exact equality and state dicts, each
naming the likely mistake when the learner's value matches one.

`mistakes` maps a hint ("eps belongs inside the square root") to what that mistake returns: a
value, or a function that computes it (called only when the learner's value is wrong). Failures
are `ExerciseError`s in fields, so a hidden test's message leaves the expected value out by
construction (`tutorlib.checks.errors`).

Book: the exercises of every chapter.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from tutorlib.checks.errors import ExerciseError, record_reference, show

__all__ = ["as_int", "expect_close", "expect_equal", "expect_state_dict", "first_mistake"]

Mistakes = Mapping[str, Any]  # hint -> the mistake's value, or a function computing it

# Our own references, taken before learner code can rebind the public names.
_isclose, _equal, _isfinite, _is_tensor = (
    torch.isclose,
    torch.equal,
    torch.isfinite,
    torch.is_tensor,
)


_NO_VALUE = object()


def _value(mistake: Any) -> Any:
    """A mistake's value on the check's inputs, or _NO_VALUE where it has none there (`x @ w1`
    cannot be computed for a w1 that is not square: that mistake cannot have been made)."""
    if not callable(mistake) or _is_tensor(mistake):
        return mistake
    try:
        return mistake()
    except (RuntimeError, ValueError, IndexError, ZeroDivisionError):
        return _NO_VALUE


def _close(
    actual: Tensor, expected: Tensor, atol: float, rtol: float, equal_nan: bool = False
) -> bool:
    """|actual - expected| <= atol + rtol |expected| everywhere (equal infinities agree, NaN
    only with `equal_nan`): torch.testing.assert_close's test, without the import of
    torch.distributed that its first call costs every kernel (0.7 s)."""
    if actual.shape != expected.shape:
        return False
    both = actual.to(torch.float64), expected.to(torch.float64)
    return bool(_isclose(*both, rtol=rtol, atol=atol, equal_nan=equal_nan).all())


def _as_reals(actual: Any, expected: Tensor, what: str) -> Tensor:
    """A learner's number (or sequence of numbers) as a float64 tensor shaped like `expected`."""
    if _is_tensor(actual) and actual.numel() == expected.numel():
        return actual.detach().cpu().reshape(expected.shape).double()
    if isinstance(actual, list | tuple) and all(
        isinstance(v, numbers.Real) or (_is_tensor(v) and v.numel() == 1) for v in actual
    ):
        values = [float(v) for v in actual]
        if len(values) == expected.numel():
            return torch.tensor(values, dtype=torch.float64).reshape(expected.shape)
    if isinstance(actual, numbers.Real) and not isinstance(actual, bool) and expected.numel() == 1:
        return torch.tensor(float(actual), dtype=torch.float64).reshape(expected.shape)
    kind = "a number" if expected.numel() == 1 else f"{expected.numel()} numbers"
    raise ExerciseError(f"{what} should be {kind}", got=type(actual).__name__)


def first_mistake(actual: Tensor, mistakes: Mistakes | None, expected: Tensor, atol, rtol):
    """The hint of the mistake whose value is nearest to `actual`, among those `actual`
    matches within (`atol`, `rtol`), a tolerance looser than the pass/fail test's, so that a
    mistake is recognised when a detail such as float32 rounding differs too. A mistake is
    named only when `actual` is at least ten times nearer to it than to the expected value:
    a right answer that is slightly off is not told it made a mistake whose value happens to
    lie near the right one."""
    off = (actual.double() - expected.double()).abs().nan_to_num(float("inf"))
    off = float(off.max()) if actual.numel() else 0.0
    best, best_distance = [], float("inf")
    for hint, mistake in (mistakes or {}).items():
        wrong = _value(mistake)
        if wrong is _NO_VALUE:
            continue
        wrong = wrong.detach() if _is_tensor(wrong) else torch.tensor(wrong, dtype=torch.float64)
        wrong = wrong.cpu().to(actual.dtype) if wrong.is_floating_point() else wrong.cpu()
        if wrong.shape != actual.shape or _close(wrong.to(expected.dtype), expected, 0, 0):
            continue
        if not _close(actual, wrong, atol, rtol, equal_nan=True):  # NaN where the mistake has it
            continue
        gap = (actual.double() - wrong.double()).abs().nan_to_num(0)
        distance = float(gap.max()) if actual.numel() else 0.0
        if 10 * distance <= off and distance < best_distance:
            best, best_distance = [hint], distance
        elif 10 * distance <= off and distance == best_distance:
            best.append(hint)  # these inputs cannot tell the mistakes apart
    return _named(best)


def _loose_atol(atol: float, expected: Tensor) -> float:
    """The absolute tolerance for recognising a mistake: 1e-4, scaled down for values far
    smaller than 1 (learning rates of 1e-4 would otherwise match any mistake)."""
    finite = expected[torch.isfinite(expected)] if expected.is_floating_point() else expected
    scale = float(finite.abs().max()) if finite.numel() else 1.0
    return max(atol, 1e-4 * min(1.0, scale))


def expect_close(
    actual: Any,
    expected: Tensor | float | list[float] | tuple[float, ...],
    *,
    what: str,
    mistakes: Mistakes | None = None,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    check_dtype: bool = True,
) -> None:
    """`actual` equals `expected` within tolerance, or the failure says how it differs and,
    when it matches one of `mistakes`, which mistake it is.

    `expected` is a tensor (then `actual` must be one of the same shape and, with
    `check_dtype`, dtype) or real numbers (then `actual` may be numbers or a tensor of them).
    """
    record_reference(expected)
    if _is_tensor(expected):
        expected = expected.detach().cpu()
        if not _is_tensor(actual):
            raise ExerciseError(f"{what} should be a torch.Tensor", got=type(actual).__name__)
        actual = actual.detach().cpu()
    else:
        expected = torch.tensor(expected, dtype=torch.float64)
        actual = _as_reals(actual, expected, what)
        check_dtype = False
    if actual.shape != expected.shape:
        raise ExerciseError(
            f"{what} has shape {tuple(actual.shape)}",
            hint=f"the result should have shape {tuple(expected.shape)}.",
            likely=False,
        )
    if check_dtype and actual.dtype != expected.dtype:
        raise ExerciseError(
            f"{what} has dtype {actual.dtype}, not {expected.dtype}",
            hint="create new tensors with the dtype (and device) of the input, e.g. "
            "torch.zeros(..., dtype=x.dtype).",
            likely=False,
        )
    if not actual.is_floating_point():
        actual = actual.to(expected.dtype)
    if _close(actual.to(expected.dtype), expected, atol, rtol):
        return
    hint = first_mistake(actual, mistakes, expected, _loose_atol(atol, expected), max(rtol, 1e-3))
    if hint is not None:
        raise ExerciseError(f"{what} is not right", hint=hint)
    if not bool(_isfinite(actual).all()) and bool(_isfinite(expected).all()):
        raise ExerciseError(
            f"{what} contains NaN or inf where the expected values are finite",
            hint="a division by zero? a missing epsilon?",
            likely=False,
        )
    diff = (actual.double() - expected.double()).abs().nan_to_num(float("inf"))
    diff = diff.masked_fill(actual.double() == expected.double(), 0.0)  # equal infinities
    index = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0])
    where = f" at index {index}" if index else ""
    if expected.dtype == torch.float64 and _close(actual.double(), expected, 1e-7, 2e-6):
        raise ExerciseError(
            f"{what} differs from the expected values{where} by about float32's rounding",
            hint="part of the computation ran in float32 (.float(), a tensor made without "
            "dtype=, F.one_hot(...).float()): keep the inputs' dtype, float64, throughout.",
        )
    raise ExerciseError(
        f"{what} differs from the expected values{where}",
        got=float(actual[index]),
        expected=f"{float(expected[index]):.6g} (the largest difference, {float(diff.max()):.3g})",
    )


def _named(hints: list[str]) -> str | None:
    """One hint, or all of them when the inputs cannot tell the mistakes apart."""
    if len(hints) > 1:
        return "one of these. " + " Or: ".join(hints)
    return hints[0] if hints else None


def _tensor_mistake(actual: Tensor, mistakes: Mistakes | None, expected: Tensor) -> str | None:
    hints = []
    for hint, mistake in (mistakes or {}).items():
        wrong = _value(mistake)
        if not _is_tensor(wrong) or wrong.shape != actual.shape or _equal(wrong.cpu(), expected):
            continue
        if actual.is_floating_point() and not wrong.is_floating_point():
            continue
        if _equal(actual.to(wrong.dtype), wrong.cpu()):
            hints.append(hint)
    return _named(hints)


def expect_equal(
    actual: Any,
    expected: Any,
    *,
    what: str,
    mistakes: Mistakes | None = None,
    dtype_hint: str = "",
) -> None:
    """`actual` equals `expected` exactly: integer or boolean tensors (same dtype, shape and
    values), or plain Python values (ints, lists, tuples, None: same type and value)."""
    record_reference(expected)
    if _is_tensor(expected):
        if not _is_tensor(actual):
            raise ExerciseError(f"{what} should be a torch.Tensor", got=type(actual).__name__)
        actual, expected = actual.detach().cpu(), expected.cpu()
        if actual.dtype == expected.dtype and actual.shape == expected.shape:
            if _equal(actual, expected):
                return
        hint = _tensor_mistake(actual, mistakes, expected)
        if hint is not None:
            raise ExerciseError(f"{what} is not right", hint=hint)
        if actual.dtype != expected.dtype:
            raise ExerciseError(
                f"{what} has dtype {actual.dtype}, not {expected.dtype}",
                hint=dtype_hint or None,
                likely=False,
            )
        if actual.shape != expected.shape:
            raise ExerciseError(
                f"{what} has shape {tuple(actual.shape)}",
                hint=f"the result should have shape {tuple(expected.shape)}.",
                likely=False,
            )
        index = tuple(int(i) for i in torch.nonzero(actual != expected)[0])
        where = f" at index {index}" if index else ""
        raise ExerciseError(
            f"{what} differs from the expected values{where}",
            got=actual[index].item(),
            expected=expected[index].item(),
        )
    if type(actual) is type(expected) and actual == expected:
        return
    hints = []
    for hint, mistake in (mistakes or {}).items():
        wrong = _value(mistake)
        if wrong is _NO_VALUE:
            continue
        if wrong != expected and type(actual) is type(wrong) and actual == wrong:
            hints.append(hint)
    hint = _named(hints)  # several when these inputs cannot tell the mistakes apart
    raise ExerciseError(
        f"{what} is not right", got=actual, expected=None if hint else expected, hint=hint
    )


def as_int(value: Any, what: str) -> int:
    """A learner's count as an int: an int, a float with no fractional part, or a one-element
    integer tensor; anything else fails with a message."""
    if _is_tensor(value) and value.numel() == 1 and not value.is_floating_point():
        value = int(value.item())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise ExerciseError(f"{what} should return an int", got=show(value))
    return int(value)


def expect_state_dict(
    actual: Any,
    expected: Mapping[str, Tensor],
    *,
    what: str,
    diagnose: Callable[[str, Tensor], str | None] | None = None,
) -> None:
    """A mapping from parameter names to tensors equal to `expected`, name by name. For a
    tensor that is wrong, `diagnose(name, tensor)` may name the mistake."""
    if not isinstance(actual, Mapping):
        raise ExerciseError(
            f"{what} should return a dict from parameter names to tensors",
            got=type(actual).__name__,
        )
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(map(str, set(actual) - set(expected)))
    if missing or unexpected:
        raise ExerciseError(
            f"{what}: the names do not fit. Missing: {missing}; unexpected: {unexpected}",
            hint=f"the names are exactly {sorted(expected)}.",
            likely=False,
        )
    for name, want in expected.items():
        record_reference(want)
        got = actual[name]
        if not _is_tensor(got):
            raise ExerciseError(f"{what}: {name} should be a tensor", got=type(got).__name__)
        got = got.detach().cpu()
        hint = diagnose(name, got) if diagnose is not None else None
        if got.shape != want.shape:
            raise ExerciseError(
                f"{what}: {name} has shape {tuple(got.shape)}, not {tuple(want.shape)}",
                hint=hint,
            )
        if got.dtype != want.dtype:
            raise ExerciseError(
                f"{what}: {name} has dtype {got.dtype}, not {want.dtype}",
                hint="keep the dtype of the weights you were given (no .float()).",
                likely=False,
            )
        if not _equal(got, want.cpu()):
            raise ExerciseError(f"{what}: {name} is not right", hint=hint)
