"""One check of one exercise: visible or hidden tests, guarded calls of the learner's code, and
the OK line.

    def check_layer_norm(fn, hidden=False):
        with Exercise("layer_norm", hidden, LN_FORBIDDEN) as ex:
            for x, w, b, eps in _hidden_cases(ex.draw) if hidden else VISIBLE:
                out = ex.call(fn, x, w, b, eps=eps)
                expect_close(out, reference(x, w, b, eps), what=..., mistakes=...)

`ex.call` runs the learner's function quietly (nbgrader gives 0 to a test cell that writes to
stderr), under the exercise's guard (`tutorlib.checks.guard`), and checks what comes back: the
inputs unchanged, the output made of plain tensors and Python values (a tensor subclass or an
object of the learner's own class could answer every comparison with "equal"). Always call
the learner's code *before* computing the reference: the learner's code then cannot find the
expected value in the check's frames, and whatever it changed is checked first.

When the block ends normally the test cell prints "OK: ...". When a hidden test fails, its
error keeps the learner's value and the hint but not the expected value
(`tutorlib.checks.errors`), and the frames it passed through are cleared, so a later cell
cannot read the reference's values from `sys.last_traceback`.

Book: the exercises of every chapter.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import io
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tutorlib.checks.compare import expect_close
from tutorlib.checks.draw import Draw, hidden_draw
from tutorlib.checks.errors import _HIDDEN, ExerciseError
from tutorlib.checks.guard import Forbidden, Stopped, Watch, guarded
from tutorlib.checks.integrity import report_ok, verify_intact

__all__ = ["FORBIDDEN_PREFIX", "Exercise", "quiet"]

FORBIDDEN_PREFIX = "Not allowed in this exercise:"

NOTHING = Forbidden()
_PLAIN = (int, float, bool, str, complex, type(None), torch.Size, torch.dtype, torch.device)
_equal, _isnan = torch.equal, torch.isnan


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence warnings and stderr: nbgrader gives 0 to a test cell that writes to stderr."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _plain(value: Any, depth: int = 0) -> bool:
    """Plain tensors and Python values, in lists, tuples and dicts (ordered ones too): nothing
    whose comparisons the learner's code defines."""
    kind = type(value)
    if kind in (Tensor, nn.Parameter) or kind in _PLAIN or kind is np.ndarray:
        return True
    if isinstance(value, np.generic) and kind.__module__ == "numpy":
        return True
    if depth < 6 and kind in (list, tuple):
        return all(_plain(v, depth + 1) for v in value)
    if depth < 6 and kind in (dict, collections.OrderedDict):  # (a module's state_dict())
        return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in value.items())
    return False


def _saved_inputs(values: Iterable[Any]) -> list[tuple[Any, Any]]:
    """(input, copy) for every tensor and plain container among `values`, to compare after."""
    saved = []
    for value in values:
        if isinstance(value, Tensor):
            saved.append((value, value.detach().clone()))
        elif type(value) in (list, tuple, dict) and _plain(value):
            saved.append((value, copy.deepcopy(value)))
    return saved


def _same(value: Any, saved: Any) -> bool:
    if isinstance(value, Tensor):
        value = value.detach()
        if value.shape != saved.shape or value.dtype != saved.dtype:
            return False
        if value.is_floating_point() or value.is_complex():  # NaN is unchanged, not unequal
            nan = _isnan(value)
            return _equal(nan, _isnan(saved)) and _equal(value[~nan], saved[~nan])
        return _equal(value, saved)
    if type(value) is not type(saved):
        return False
    if isinstance(value, list | tuple):
        return len(value) == len(saved) and all(map(_same, value, saved))
    if isinstance(value, dict):
        return value.keys() == saved.keys() and all(_same(value[k], saved[k]) for k in value)
    return value == saved


def _scrub(error: BaseException) -> None:
    """Forget what a failed hidden test computed: the locals of the frames its error passed
    through, and the exceptions chained to it."""
    traceback.clear_frames(error.__traceback__)
    error.__cause__ = error.__context__ = None
    error.__suppress_context__ = True


class Exercise:
    """The context of one check (see the module's docstring).

    Args:
        name: the exercise's function or class, as the learner named it ("layer_norm").
        hidden: run the hidden tests (random inputs from `draw`) rather than the visible ones.
        forbidden: what the learner's code may not run while a check calls it.
    """

    def __init__(self, name: str, hidden: bool, forbidden: Forbidden = NOTHING) -> None:
        self.name, self.hidden = name, hidden
        self.watch = Watch(forbidden, name)
        self._draw = hidden_draw(name) if hidden else None
        self._token = None

    @property
    def draw(self) -> Draw:
        """The random draws of the hidden tests (visible tests have fixed inputs)."""
        if self._draw is None:
            raise RuntimeError("visible tests use fixed inputs: only hidden tests draw")
        return self._draw

    def __enter__(self) -> Exercise:
        self._token = _HIDDEN.set(self.hidden)
        verify_intact()  # a patch made by an earlier cell would change the reference too
        return self

    def __exit__(
        self, kind: type | None, error: BaseException | None, tb: TracebackType | None
    ) -> bool:
        _HIDDEN.reset(self._token)
        if error is None:
            report_ok(self.name, self.hidden)
            return False
        if self.hidden and isinstance(error, Exception):
            if not isinstance(error, ExerciseError):  # its message may hold reference values
                error.args = (f"{self.name}: the hidden tests stopped with {kind.__name__}",)
            _scrub(error)
        return False

    def call(
        self,
        fn: Callable[..., Any],
        *args: Any,
        mutates: bool = False,
        plain: bool = True,
        shapes: Iterable[tuple[int, int]] = (),
        hints: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """The learner's `fn(*args, **kwargs)`, run quietly under the exercise's guard.

        Args:
            mutates: the function may change its tensor inputs (a training step).
            plain: its result must be plain tensors and Python values (False for a class).
            shapes: matrix shapes (last two dimensions) no intermediate result may have.
            hints: when the learner's code raises, a fragment of its message ("cannot be
                multiplied") -> the likely mistake behind it.

        Raises `ExerciseError` when it fails, runs something forbidden, changes its inputs or
        returns something that is not plain.
        """
        saved = [] if mutates else _saved_inputs((*args, *kwargs.values()))
        grad_mode, dtype = torch.is_grad_enabled(), torch.get_default_dtype()
        failure: Exception | None = None
        violations: list[str] = []
        with quiet():
            try:
                with guarded(self.watch, shapes) as violations:
                    out = fn(*args, **kwargs)
            except Stopped:
                pass
            except NotImplementedError:
                failure = ExerciseError(
                    f"{self.name} is not implemented yet",
                    hint="replace `raise NotImplementedError()` with your code.",
                    likely=False,
                )
            except Exception as error:  # noqa: BLE001 - whatever the learner's code raises
                said = str(error)
                hint = next(
                    (h for part, h in (hints or {}).items() if part.lower() in said.lower()), None
                )
                failure = ExerciseError(
                    f"{self.name} raised {type(error).__name__}: {said[:500]}", hint=hint
                )
                failure.__cause__ = None if self.hidden else error
            finally:
                torch.set_grad_enabled(grad_mode)
                torch.set_default_dtype(dtype)
        verify_intact()  # before anything is compared: a patch changes the reference too
        if violations:
            raise ExerciseError(
                f"{FORBIDDEN_PREFIX} your {self.name} called {violations[0]}",
                hint="write that computation yourself, from basic tensor operations.",
                likely=False,
            )
        if failure is not None:
            raise failure
        for value, before in saved:
            if not _same(value, before):
                raise ExerciseError(
                    f"{self.name} changed an input it was given",
                    hint="work on a copy (x.clone(), list(ids)) or use out-of-place operations "
                    "(masked_fill, not masked_fill_; no x[...] = ... or += on an input).",
                    likely=False,
                )
        if plain and not _plain(out):
            raise ExerciseError(
                f"{self.name} returned a {type(out).__name__} holding something other than "
                "plain tensors and numbers",
                hint="return torch.Tensor objects (not a subclass) and Python numbers, lists, "
                "tuples or dicts.",
                likely=False,
            )
        return out

    def expect_backward(
        self,
        out: Tensor,
        expected: Tensor,
        inputs: Mapping[str, Tensor],
        what: str,
        atol: float = 1e-8,
    ) -> None:
        """The gradients of sum(out ** 2) with respect to each named leaf equal the
        reference's. The learner's backward pass runs under the guard too."""
        leaves = list(inputs.values())
        expected_grads = torch.autograd.grad((expected**2).sum(), leaves, retain_graph=True)
        for leaf in leaves:
            leaf.grad = None
        if not out.requires_grad:
            raise ExerciseError(
                f"No gradient flows through your {what}",
                hint="did you use .detach(), .item(), .numpy() or torch.no_grad() on the way?",
                likely=False,
            )
        self.call(torch.autograd.backward, (out**2).sum(), mutates=True)
        for (name, leaf), grad in zip(inputs.items(), expected_grads, strict=True):
            if leaf.grad is None:
                raise ExerciseError(
                    f"No gradient reaches {name} through your {what}",
                    hint="did you use .detach(), .item(), .numpy() or torch.no_grad() on the way?",
                    likely=False,
                )
            expect_close(
                leaf.grad, grad, what=f"The gradient of {name} through your {what}", atol=atol
            )
