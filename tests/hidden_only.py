"""Answers that pass the visible tests and fail the hidden ones: each answer of a solution
notebook, wrapped so that its result is slightly off while hidden tests run.

The feedback tests use them twice: in-process (tests/test_checks.py: a failed hidden test's
error holds no expected value) and graded by nbgrader (tests/test_redteam.py: the feedback HTML
shows no hidden test source and no value the reference computed).
"""

from __future__ import annotations

import ast

import torch

# Defined once in the submission, before the first answer; wraps the answers after each cell.
WRAPPER = '''
import functools as _functools

import torch as _torch
from tutorlib.checks import in_hidden_tests as _in_hidden_tests


def _off(value):
    """value, slightly wrong."""
    if isinstance(value, _torch.Tensor):
        if value.dtype == _torch.bool:
            return ~value
        if value.is_floating_point():
            return value * 1.01 + 0.013
        return value + 1
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 7
    if isinstance(value, float):
        return value * 1.01 + 0.013
    if isinstance(value, str):
        return value + " "
    if isinstance(value, tuple):
        return (_off(value[0]), *value[1:]) if value else (1, 2)
    if isinstance(value, list):
        return [*value, value[-1]] if value else [0]
    if isinstance(value, dict):
        key = sorted(value)[0]
        return {**value, key: _off(value[key])}
    if value is None:
        return (0, 0)
    return value


def _hidden_only(answer):
    """`answer` as it is for the visible tests, slightly wrong for the hidden ones."""
    if isinstance(answer, type):
        forward = answer.forward

        def off_forward(self, *args, **kwargs):
            out = forward(self, *args, **kwargs)
            return _off(out) if _in_hidden_tests() else out

        return type(answer.__name__, (answer,), {"forward": off_forward})

    @_functools.wraps(answer)
    def off(*args, **kwargs):
        out = answer(*args, **kwargs)
        if not _in_hidden_tests():
            return out
        if out is None:  # an answer that works in place: its tensors' gradients
            for arg in args:
                for p in getattr(arg, "parameters", lambda: [])():
                    if p.grad is not None:
                        p.grad.mul_(1.01)
            return out
        return _off(out)

    return off
'''


def defined_names(source: str) -> list[str]:
    """The functions and classes an answer cell defines at its top level."""
    tree = ast.parse(source)
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)]


def hidden_only(source: str, first: bool) -> str:
    """An answer cell's `source`, its answers wrapped by `_hidden_only` (the first answer cell
    also defines the wrapper)."""
    names = defined_names(source)
    wraps = "".join(f"\n{name} = _hidden_only({name})" for name in names)
    return (WRAPPER if first else "") + "\n" + source + "\n" + wraps + "\n"


def _significant(text: str) -> int:
    """Significant digits of a number as written: "0.0120" has 2, "1.0000" 1, "3.417" 4."""
    mantissa = text.lower().split("e")[0].lstrip("-").replace(".", "")
    return len(mantissa.strip("0"))


def renderings(value) -> set[str]:
    """How a value the reference computed could appear in a message: numbers with 4 or more
    significant digits, as Python, f-strings and torch print them; lists of several ints."""
    found: set[str] = set()
    if isinstance(value, torch.Tensor):
        flat = value.detach().double().flatten()
        if value.is_floating_point():
            for v in flat[:64].tolist():
                found |= renderings(float(v))
        elif 2 <= value.numel() <= 64:
            found.add(str(value.tolist()))
        return found
    if isinstance(value, bool) or value is None:
        return found
    if isinstance(value, int):
        return {str(value), f"{value:,}"} if abs(value) >= 100 else found
    if isinstance(value, float):
        if not torch.isfinite(torch.tensor(value)):
            return found
        texts = {f"{value:.6g}", f"{value:.4g}", f"{value:.4f}", repr(value)}
        return {t for t in texts if _significant(t) >= 4}  # 0, 0.5, 1.25: too common to search
    if isinstance(value, list | tuple):
        if len(value) >= 2 and all(isinstance(v, int) for v in value):
            found.add(str(list(value)))
        for v in value:
            found |= renderings(v)
    if isinstance(value, str) and len(value) > 4:
        found.add(value)
    return found


def shows(rendering: str, text: str) -> bool:
    """Whether `text` shows `rendering` as a number of its own (not inside a longer one: "0.999"
    is not shown by "0.9999"), or, for a list, at all."""
    import re

    if rendering.startswith("["):
        return rendering in text
    return re.search(rf"(?<![\d.]){re.escape(rendering)}(?![\d])", text) is not None


def page_text(path) -> str:
    """The text a reader sees on an HTML page: no styles, scripts or tags, entities decoded."""
    import html
    import re
    from pathlib import Path

    page = Path(path).read_text()
    page = re.sub(r"<(style|script)\b.*?</\1>", " ", page, flags=re.S | re.I)
    return without_own_values(html.unescape(re.sub(r"<[^>]+>", " ", page)))


def without_own_values(text: str) -> str:
    """`text` without the learner's own values, which a failed test shows them ("Your value:
    ..."): a reference value may happen to print like one of them."""
    import re

    return re.sub(r"Your value: .*?(?= Expected: | Likely mistake: | Hint: |\n|$)", " ", text)
