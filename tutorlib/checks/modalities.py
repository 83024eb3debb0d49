"""Checks for the exercises on windows, sound and proteins
(solutions/05_vision/03_windows_sound_proteins).

Each `check_*` takes the learner's function. With `hidden=False` it runs the visible tests (the
notebook's worked examples); with `hidden=True` the hidden ones: inputs drawn when they run
(`tutorlib.checks.draw`), built so that every draw tells the likely mistakes apart (grids of
several windows each way and of one, non-square grids, shift 0; odd transform sizes and several
sample rates; sentences of different lengths, a substitution, an insertion and a deletion, a
hypothesis longer than its reference; contacts next to the diagonal, high-scoring pairs at
exactly the minimum separation; score maps that are not symmetric, with a diagonal, stacked).
The references are written out here, with the likely mistakes next to them.

While the learner's code runs, tutorlib's references (`tutorlib.swin`, `tutorlib.speech`,
`tutorlib.proteins`) and the libraries that compute the same thing are out of reach
(`tutorlib.checks.guard`): Hugging Face's Swin windows and masks and its audio utilities (once
loaded), torchaudio and librosa (not installed, but refused if a learner's environment has
them), and the edit-distance libraries (RapidFuzz is installed with the course's environment).
RapidFuzz and most of the others are compiled, and the guard's profile hook sees no call of a
Cython function, so a word error rate whose code names one of them, directly, through a helper
or a container, or by importing it, is refused before it runs (`_library_reached`).
torch.roll, torch.topk, torch.argsort, torch.triu_indices and str.split stay allowed: the
exercises are the regions, the triangles, the dynamic programme, the pair selection and the
correction.

Book: Chapter 5 exercises (5.6 Shifted windows: a hierarchical ViT; 5.7 Speech: a
Whisper-style transcriber; 5.8 What a protein language model learns).
"""

from __future__ import annotations

import itertools
import math
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from tutorlib import proteins, speech, swin
from tutorlib.checks import (
    FORBIDDEN_PREFIX,
    Draw,
    Exercise,
    ExerciseError,
    Forbidden,
    expect_close,
    expect_equal,
    watch_module,
)
from tutorlib.checks.generative import _named, _separated
from tutorlib.checks.guard import _LIBRARY, _nested, _unwrap

__all__ = [
    "check_apc",
    "check_contact_precision",
    "check_mel_filterbank",
    "check_shifted_window_mask",
    "check_word_error_rate",
]

# References, taken at import time (before any learner code runs).
_arange, _ones, _zeros, _tensor = torch.arange, torch.ones, torch.zeros, torch.tensor
_linspace, _where, _minimum, _clamp = torch.linspace, torch.where, torch.minimum, torch.clamp
_log, _log10, _exp, _argsort = torch.log, torch.log10, torch.exp, torch.argsort
_triu_indices, _eye = torch.triu_indices, torch.eye
_F64, _BOOL = torch.float64, torch.bool


def _public(module: Any) -> tuple[Any, ...]:
    """Every public function and class of a tutorlib module."""
    return tuple(f for n in module.__all__ if callable(f := getattr(module, n)))


def _loaded(wanted: Callable[[str], bool]) -> tuple[Any, ...]:
    """The functions and classes defined in the loaded modules whose names `wanted` accepts: a
    library the learner has imported (the checks import none of them: transformers takes
    seconds)."""
    found = []
    for name, module in list(sys.modules.items()):
        if module is None or not wanted(name):
            continue
        for value in list(vars(module).values()):
            if getattr(value, "__module__", None) == name and isinstance(
                value, type | types.FunctionType | types.BuiltinFunctionType
            ):
                found.append(value)
    return tuple(found)


def _library_reached(fn: Callable, roots: frozenset[str]) -> str | None:
    """The first thing of a library in `roots` (top-level package names) that the learner's
    `fn` names: through the globals, closures and defaults of its code (and of the learner's
    own functions and classes it names, and so on), or an import inside it. The guard's profile
    hook does not see calls of compiled (Cython) functions, so these are found by reading."""
    todo, seen = [fn], set()
    while todo:
        f = _unwrap(todo.pop())
        if isinstance(f, type):
            todo.extend(v for v in vars(f).values() if callable(v))
            continue
        if not isinstance(f, types.FunctionType) or id(f) in seen:
            continue
        seen.add(id(f))
        values = [c.cell_contents for c in f.__closure__ or () if _filled(c)]
        values += [*(f.__defaults__ or ()), *(f.__kwdefaults__ or {}).values()]
        for code in _nested(f.__code__):
            for name in code.co_names:
                if name in f.__globals__:
                    values.append(f.__globals__[name])
                elif name.split(".")[0] in roots:  # `import rapidfuzz` inside the function
                    return name
        while values:
            value = values.pop()
            if type(value) in (list, tuple, set, frozenset, dict):  # 1000 items at most
                if len(values) < 1000:
                    items = value.values() if isinstance(value, dict) else value
                    values.extend(itertools.islice(items, 1000))
                continue
            try:
                target = _unwrap(value)  # under partials, bound methods and decorators
                module = target.__name__ if isinstance(target, types.ModuleType) else None
                module = module or getattr(target, "__module__", None) or type(target).__module__
                code = getattr(target, "__code__", None)
            except Exception:  # noqa: BLE001 - an object whose attributes misbehave
                continue
            if isinstance(module, str) and module.split(".")[0] in roots:
                return f"{module} ({getattr(target, '__name__', type(target).__name__)})"
            learners = isinstance(code, types.CodeType) and not code.co_filename.startswith(
                _LIBRARY
            )
            if learners or (isinstance(target, type) and module == "__main__"):
                todo.append(target)
    return None


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:  # a closure variable not assigned yet
        return False
    return True


def _refuse_libraries(fn: Callable, roots: frozenset[str], name: str) -> None:
    found = _library_reached(fn, roots)
    if found is not None:
        raise ExerciseError(
            f"{FORBIDDEN_PREFIX} your {name} uses {found}",
            hint="write that computation yourself, from basic operations.",
            likely=False,
        )


# --- 1. The mask of shifted windows --------------------------------------------------------------


def _hugging_face_swin(name: str) -> bool:
    return name.startswith("transformers.models.") and "swin" in name


def _swin_forbidden() -> Forbidden:
    return Forbidden(python=(*_public(swin), *_loaded(_hugging_face_swin)))


def _regions(size: int, window: int, shift: int, kind: str) -> Tensor:
    """Each position of one axis of the rolled grid labelled by where it came from."""
    index = _arange(size)
    if kind == "wrapped_first":  # as if the grid had been rolled down and right
        return (index >= shift).long() + (index >= window).long()
    return (index >= size - window).long() + (index >= size - shift).long()  # (size,)


def _mask(height: int, width: int, window: int, shift: int, kind: str = "") -> Tensor:
    """(nW, w*w, w*w) bool, True = may attend, as the right code or a likely mistake builds it."""
    nH, nW, w = height // window, width // window, window
    if shift == 0:
        full = _ones(nH * nW, w * w, w * w, dtype=_BOOL)
        return ~full if kind == "inverted" else full
    rows = _regions(height, w, shift, kind)  # (H,)
    cols = _regions(width, w, shift, kind)  # (W,)
    if kind == "rows_only":
        cols = _zeros(width, dtype=torch.long)
    labels = rows[:, None] * (1 if kind == "sum_labels" else 3) + cols[None, :]  # (H, W)
    grid = labels.view(nH, w, nW, w)
    if kind == "windows_by_column":
        grid = grid.permute(2, 0, 1, 3)  # (nW, nH, w, w): windows column by column
    elif kind == "tokens_by_column":
        grid = grid.permute(0, 2, 3, 1)  # (nH, nW, w, w), each window read column by column
    else:
        grid = grid.permute(0, 2, 1, 3)  # (nH, nW, w, w)
    labels = grid.reshape(nH * nW, w * w)  # (nW, w*w)
    same = labels[:, :, None] == labels[:, None, :]  # (nW, w*w, w*w)
    return ~same if kind == "inverted" else same


MASK_MISTAKES = {
    "inverted": "True and False are swapped: True marks a pair that may attend to each other "
    "(two tokens from the same region), False a pair to mask.",
    "wrapped_first": "the regions are at the start of each axis: the grid is rolled up and left "
    "(torch.roll by -shift), so the strip that wrapped around sits at the end, in the last "
    "window of each row and column of windows (positions size - shift and after), next to the "
    "part from size - window.",
    "rows_only": "only the rows are labelled: the columns have three regions too (the last "
    "window column holds tokens from the right edge and from the strip that wrapped around from "
    "the left), and the label combines both.",
    "sum_labels": "the row and column labels are added, so that (row region 1, column region 2) "
    "and (2, 1) get the same label: combine them as 3 * row + column (or compare rows and "
    "columns separately).",
    "windows_by_column": "the windows are in the wrong order: they are numbered row by row, "
    "window (i, j) of the grid of windows being number i * (W / window) + j, as "
    "window_partition orders them.",
    "tokens_by_column": "the tokens inside each window are read column by column: each window "
    "is flattened row by row, token (r, c) being number r * window + c.",
}
MASK_DTYPE_HINT = (
    "return a bool tensor, True where two tokens may attend to each other: not an additive mask "
    "of 0 and -inf (or -100, which Hugging Face's Swin adds to the scores), nor 0/1 numbers."
)


def _visible_mask() -> list[tuple[int, int, int, int]]:
    """(height, width, window, shift): the notebook's 4 x 4 grid of 2 x 2 windows shifted by 1, a
    non-square grid, Swin's 8 x 8 grid of 4 x 4 windows shifted by 2, and shift 0."""
    return [(4, 4, 2, 1), (6, 4, 2, 1), (8, 8, 4, 2), (4, 6, 2, 0)]


def _mask_hidden(draw: Draw) -> list[tuple[int, int, int, int]]:
    """Several windows each way, more across than down; one window one way; a window of 5
    shifted by 1 or 3; one window in all; shift 0."""
    w = draw.integer(3, 4)
    nH = draw.integer(2, 3)  # a non-square grid of windows: a square one cannot tell the
    nW = nH + draw.integer(1, 2)  # windows' order from the tokens' (its labels are symmetric)
    first = (w * nH, w * nW, w, draw.integer(1, w - 1))
    w2 = draw.integer(2, 3)
    return [
        first,
        (w2, w2 * draw.integer(2, 4), w2, 1),
        (10, 15, 5, draw.choice([1, 3])),
        (4, 4, 4, draw.choice([1, 3])),
        (6, 9, 3, 0),
    ]


def _check_mask_case(ex: Exercise, fn: Callable, H: int, W: int, w: int, s: int) -> None:
    out = ex.call(fn, H, W, w, s)
    what = f"shifted_window_mask({H}, {W}, window={w}, shift={s})"
    if isinstance(out, Tensor) and out.is_floating_point():
        raise ExerciseError(f"{what} has dtype {out.dtype}", hint=MASK_DTYPE_HINT)
    want = _mask(H, W, w, s)
    expect_equal(
        out,
        want,
        what=what,
        mistakes=_named({MASK_MISTAKES[k]: _mask(H, W, w, s, k) for k in MASK_MISTAKES}),
        dtype_hint=MASK_DTYPE_HINT,
    )


def check_shifted_window_mask(fn: Callable, hidden: bool = False) -> None:
    """Learner's `shifted_window_mask(height, width, window, shift) -> (nW, w*w, w*w) bool`."""
    with Exercise("shifted_window_mask", hidden, _swin_forbidden()) as ex:
        for H, W, w, s in _mask_hidden(ex.draw) if hidden else _visible_mask():
            _check_mask_case(ex, fn, H, W, w, s)


# --- 2. The mel filterbank -----------------------------------------------------------------------


def _audio_library(name: str) -> bool:
    return name.startswith(
        ("transformers.audio_utils", "transformers.models.whisper.feature_extraction")
    ) or name.split(".")[0] in ("librosa", "torchaudio", "python_speech_features")


def _mel_forbidden() -> Forbidden:
    return Forbidden(python=(*_public(speech), *_loaded(_audio_library)))


def _hz_to_mel(hz: Tensor, htk: bool) -> Tensor:
    if htk:
        return 2595.0 * _log10(1.0 + hz / 700.0)
    log = 15.0 + _log(hz.clamp(min=1e-10) / 1000.0) * 27.0 / math.log(6.4)
    return _where(hz >= 1000.0, log, 3.0 * hz / 200.0)


def _mel_to_hz(mel: Tensor, htk: bool) -> Tensor:
    if htk:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    log = 1000.0 * _exp((mel - 15.0) * math.log(6.4) / 27.0)
    return _where(mel >= 15.0, log, 200.0 * mel / 3.0)


def _filterbank(n_mels: int, n_fft: int, sample_rate: int, kind: str = "") -> Tensor:
    """(n_mels, n_fft // 2 + 1) float64, as the right code or a likely mistake computes it."""
    K = n_fft // 2 + 1
    if kind == "linspace_bins":
        bins = _linspace(0.0, sample_rate / 2, K, dtype=_F64)
    else:
        bins = _arange(K, dtype=_F64) * sample_rate / n_fft  # (K,) Hz
    htk = kind == "htk"
    top = float(sample_rate if kind == "to_sample_rate" else sample_rate / 2)
    if kind == "linear_hz":
        points = _linspace(0.0, top, n_mels + 2, dtype=_F64)
    else:
        top_mel = float(_hz_to_mel(_tensor(top, dtype=_F64), htk))
        points = _mel_to_hz(_linspace(0.0, top_mel, n_mels + 2, dtype=_F64), htk)
    left, centre, right = points[:-2, None], points[1:-1, None], points[2:, None]  # (M, 1)
    weights = _minimum((bins - left) / (centre - left), (right - bins) / (right - centre))
    if kind != "no_clamp":
        weights = _clamp(weights, min=0.0)  # (M, K)
    if kind == "no_normalise":
        return weights
    if kind == "unit_sum":
        return weights / weights.sum(dim=-1, keepdim=True)
    if kind == "full_width":
        return weights / (right - left)
    return weights * 2.0 / (right - left)


MEL_MISTAKES = {
    "htk": "this is the HTK mel scale, 2595 log10(1 + f / 700): Slaney's (librosa's default, "
    "Whisper's) is linear below 1 kHz, mel = 3 f / 200, and logarithmic above, "
    "15 + 27 ln(f / 1000) / ln(6.4).",
    "no_normalise": "the triangles are not area-normalised: each peaks at 1. Slaney's "
    "normalisation multiplies filter m by 2 / (f[m + 2] - f[m]), so that every filter has about "
    "the same area.",
    "full_width": "filter m is divided by its full width f[m + 2] - f[m]: Slaney's normalisation "
    "divides by half of it, multiplying by 2 / (f[m + 2] - f[m]).",
    "unit_sum": "each filter is scaled to sum to 1 over the FFT bins: Slaney's normalisation "
    "multiplies filter m by 2 / (f[m + 2] - f[m]), the inverse of half its width in Hz.",
    "linear_hz": "the n_mels + 2 edge frequencies are evenly spaced in Hz: space them evenly on "
    "the mel scale, from 0 to the mel of sample_rate / 2, then convert them back to Hz.",
    "to_sample_rate": "the filters reach the sample rate: they span 0 Hz to sample_rate / 2, "
    "the highest frequency of the transform (Nyquist's).",
    "no_clamp": "the triangles go negative outside their edges: take the minimum of the rising "
    "and the falling slope, then clamp it at 0.",
    "linspace_bins": "the frequencies of the FFT bins are not k * sample_rate / n_fft: for an odd "
    "n_fft the last of the n_fft // 2 + 1 bins is below sample_rate / 2, so torch.linspace(0, "
    "sample_rate / 2, ...) misplaces them.",
}


MEL_TRANSPOSED_HINT = (
    "the bank is (n_fft // 2 + 1, n_mels), one column per filter (the layout of Hugging Face's "
    "mel_filter_bank): return one row per filter, so that bank @ power_spectrum gives the mel "
    "bands."
)


def _visible_mel() -> list[tuple[int, int, int]]:
    """(n_mels, n_fft, sample_rate): four filters over 9 bins at 8 kHz, an odd n_fft, and
    Whisper's bank (80 filters, n_fft 400, 16 kHz)."""
    return [(4, 16, 8000), (6, 25, 8000), (80, 400, 16000)]


def _mel_told_apart(case: tuple[int, int, int]) -> bool:
    """No empty filter, and the right bank and every mistake's differ from one another (but
    the bins' mistake, which an even n_fft cannot show)."""
    right = _filterbank(*case)
    if bool((right.amax(dim=-1) <= 0).any()):
        return False
    kinds = [k for k in MEL_MISTAKES if case[1] % 2 or k != "linspace_bins"]  # (even: equal)
    return _separated([right, *(_filterbank(*case, kind) for kind in kinds)], gap=1e-9)


def _mel_case(draw: Draw, odd: bool) -> tuple[int, int, int]:
    for _ in range(200):
        n_fft = 2 * draw.integer(64, 200) + (1 if odd else 0)
        case = (draw.integer(6, 20), n_fft, draw.choice([8000, 16000, 22050, 24000]))
        if _mel_told_apart(case):
            return case
    return (8, 2 * 100 + (1 if odd else 0), 16000)


def _mel_hidden(draw: Draw) -> list[tuple[int, int, int]]:
    """An odd n_fft first (every mistake differs there), then even ones at other rates, one
    with a single filter."""
    return [_mel_case(draw, odd=True), _mel_case(draw, odd=False), (1, 64, 16000)]


def _check_mel_case(ex: Exercise, fn: Callable, n_mels: int, n_fft: int, rate: int) -> None:
    out = ex.call(fn, n_mels, n_fft, rate)
    what = f"mel_filterbank(n_mels={n_mels}, n_fft={n_fft}, sample_rate={rate})"
    want = _filterbank(n_mels, n_fft, rate)
    if isinstance(out, Tensor) and not out.is_floating_point():
        raise ExerciseError(f"{what} has dtype {out.dtype}", hint="return a float tensor.")
    if isinstance(out, Tensor) and out.shape == want.T.shape != want.shape:
        if bool(torch.allclose(out.detach().T.to(_F64), want, rtol=1e-4, atol=1e-9)):
            raise ExerciseError(f"{what} is transposed", hint=MEL_TRANSPOSED_HINT)
    mistakes = {MEL_MISTAKES[k]: _filterbank(n_mels, n_fft, rate, k) for k in MEL_MISTAKES}
    expect_close(
        out,
        want,
        what=what,
        mistakes=_named(mistakes),
        atol=1e-10,
        rtol=1e-5,
        check_dtype=False,
    )


def check_mel_filterbank(fn: Callable, hidden: bool = False) -> None:
    """Learner's `mel_filterbank(n_mels, n_fft, sample_rate) -> (n_mels, n_fft // 2 + 1)`."""
    with Exercise("mel_filterbank", hidden, _mel_forbidden()) as ex:
        for n_mels, n_fft, rate in _mel_hidden(ex.draw) if hidden else _visible_mel():
            _check_mel_case(ex, fn, n_mels, n_fft, rate)


# --- 3. The word error rate ----------------------------------------------------------------------

# Edit-distance and error-rate libraries (top-level package names): compiled ones are found by
# reading the learner's code (`_library_reached`), Python ones by the guard as well.
EDIT_DISTANCE_LIBRARIES = frozenset(
    {
        "rapidfuzz",
        "Levenshtein",
        "jiwer",
        "editdistance",
        "nltk",
        "torchaudio",
        "textdistance",
        "polyleven",
        "leven",
        "edlib",
        "fastwer",
        "torchmetrics",
    }
)


def _wer_forbidden() -> Forbidden:
    libraries = _loaded(lambda name: name.split(".")[0] in EDIT_DISTANCE_LIBRARIES)
    return Forbidden(python=(*_public(speech), *libraries))


def _edits(reference: list[str], hypothesis: list[str], substitution: int = 1) -> int:
    """Levenshtein distance by dynamic programming, one row at a time."""
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, start=1):
        current = [i]
        for j, h in enumerate(hypothesis, start=1):
            same = previous[j - 1] + (0 if r == h else substitution)
            current.append(min(previous[j] + 1, current[j - 1] + 1, same))
        previous = current
    return previous[-1]


def _words(text: str, kind: str) -> list[str]:
    if kind == "characters":
        return list(text)
    return text.split(" ") if kind == "split_space" else text.split()


def _wer(references: Sequence[str], hypotheses: Sequence[str], kind: str = "") -> float:
    """The corpus word error rate, as the right code or a likely mistake computes it."""
    pairs = [
        (_words(r, kind), _words(h, kind)) for r, h in zip(references, hypotheses, strict=True)
    ]
    if kind == "positional":
        edits = [
            sum(a != b for a, b in zip(r, h, strict=False)) + abs(len(r) - len(h)) for r, h in pairs
        ]
    else:
        edits = [_edits(r, h, 2 if kind == "substitution_two" else 1) for r, h in pairs]
    if kind == "mean_of_rates":
        return sum(e / len(r) for e, (r, _) in zip(edits, pairs, strict=True)) / len(pairs)
    total = sum(len(h if kind == "by_hypothesis" else r) for r, h in pairs)
    rate = sum(edits) / total
    return min(rate, 1.0) if kind == "capped" else rate


WER_MISTAKES = {
    "mean_of_rates": "this is the mean of the sentences' error rates: the corpus WER adds up the "
    "edits of every pair and divides by the total number of reference words, so that a long "
    "sentence counts more than a short one.",
    "by_hypothesis": "the edits are divided by the number of words in the hypotheses: the "
    "denominator is the number of words in the references.",
    "characters": "these are character edits over characters (the CER): split each transcript "
    "into words, str.split(), and count word edits over reference words.",
    "substitution_two": "a substitution costs 2 here (a deletion plus an insertion): replacing "
    "one word by another is one edit, d[i-1][j-1] + 1 when the words differ.",
    "positional": "the words are compared position by position: an inserted or deleted word "
    "shifts every word after it, so count the fewest insertions, deletions and substitutions "
    "(the Levenshtein distance, by dynamic programming).",
    "capped": "the rate is capped at 1: a hypothesis with many inserted words can have more "
    "edits than the reference has words, and the WER is then above 1.",
    "split_space": "the words are split at single spaces, so two spaces in a row make an empty "
    "word: str.split() with no argument splits at any run of white space.",
}

_VOCABULARY = (
    *speech.DIGIT_WORDS,
    "oh",
    "double",
    "the",
    "number",
    "is",
    "call",
    "me",
    "at",
)


def _visible_wer() -> list[tuple[list[str], list[str]]]:
    """The notebook's worked example (an insertion and a substitution in the first pair, two
    deletions in the second: 4 edits over 10 reference words, 0.4), then hypotheses longer than
    their references, one with two spaces in a row (5 edits over 4 words, 1.25)."""
    return [
        (
            ["call me at five five one", "two three four five"],
            ["call me at at five nine one", "three four"],
        ),
        (["nine one one", "oh"], ["nine  one one one one", "oh oh oh oh"]),
    ]


def _sentence(draw: Draw, n: int) -> list[str]:
    return [draw.choice(_VOCABULARY) for _ in range(n)]


def _corrupt(draw: Draw, words: list[str], n_edits: int) -> list[str]:
    """`words` with `n_edits` random substitutions, deletions and insertions."""
    out = list(words)
    for _ in range(n_edits):
        op = draw.choice(["sub", "del", "ins"] if out else ["ins"])
        at = draw.integer(0, max(len(out) - 1, 0))
        if op == "sub":
            out[at] = draw.choice([w for w in _VOCABULARY if w != out[at]])
        elif op == "del":
            del out[at]
        else:
            out.insert(draw.integer(0, len(out)), draw.choice(_VOCABULARY))
    return out


def _insert(draw: Draw, words: list[str], n: int) -> list[str]:
    out = list(words)
    for _ in range(n):
        out.insert(draw.integer(0, len(out)), draw.choice(_VOCABULARY))
    return out


def _wer_told_apart(refs: list[str], hyps: list[str], equal_ok: tuple[str, ...]) -> bool:
    """The right rate and every mistake's (but those in `equal_ok`) differ from one another."""
    values = [_wer(refs, hyps), *(_wer(refs, hyps, k) for k in WER_MISTAKES if k not in equal_ok)]
    return _separated(values, gap=1e-4)


def _wer_case(draw: Draw, longer: bool) -> tuple[list[str], list[str]]:
    for _ in range(500):
        n = draw.integer(3, 5)
        refs = [_sentence(draw, draw.integer(2, 9)) for _ in range(n)]
        hyps = [_corrupt(draw, r, draw.integer(0, 3)) for r in refs]
        if longer:  # many insertions: more edits than reference words
            hyps = [
                _insert(draw, h, len(r) + draw.integer(1, 3))
                for r, h in zip(refs, hyps, strict=True)
            ]
        texts = [" ".join(h) for h in hyps]
        at = draw.integer(0, n - 1)
        if len(hyps[at]) >= 2:  # two spaces in a row in one hypothesis
            texts[at] = texts[at].replace(" ", "  ", 1)
        refs_text = [" ".join(r) for r in refs]
        rate = _wer(refs_text, texts)
        if (rate <= 1) if longer else (rate >= 1):
            continue
        if _wer_told_apart(refs_text, texts, ("capped",) if not longer else ()):
            return refs_text, texts
    raise RuntimeError("no WER case tells the mistakes apart")  # never: see the tests


def _wer_hidden(draw: Draw) -> list[tuple[list[str], list[str]]]:
    """Sentences of different lengths with random edits (one hypothesis with two spaces in a
    row); hypotheses longer than their references (WER above 1); a perfect transcript with an
    empty one."""
    sentence = " ".join(_sentence(draw, draw.integer(2, 6)))
    return [
        _wer_case(draw, longer=False),
        _wer_case(draw, longer=True),
        ([sentence, "two four"], [sentence, ""]),
    ]


def _check_wer_case(ex: Exercise, fn: Callable, refs: list[str], hyps: list[str]) -> None:
    out = ex.call(fn, refs, hyps)
    what = f"word_error_rate on {len(refs)} pairs of transcripts"
    if not ex.hidden:
        what += f" {list(zip(refs, hyps, strict=True))}"
    want = _wer(refs, hyps)
    mistakes = {WER_MISTAKES[k]: _wer(refs, hyps, k) for k in WER_MISTAKES}
    expect_close(out, want, what=what, mistakes=_named(mistakes), atol=1e-7, rtol=1e-6)


def check_word_error_rate(fn: Callable, hidden: bool = False) -> None:
    """Learner's `word_error_rate(references, hypotheses) -> float`."""
    with Exercise("word_error_rate", hidden, _wer_forbidden()) as ex:
        _refuse_libraries(fn, EDIT_DISTANCE_LIBRARIES, "word_error_rate")
        for refs, hyps in _wer_hidden(ex.draw) if hidden else _visible_wer():
            _check_wer_case(ex, fn, refs, hyps)


# --- 4. Precision at k of predicted contacts -----------------------------------------------------

PROTEINS_FORBIDDEN = Forbidden(python=_public(proteins))


def _pairs(L: int, sep: int, kind: str) -> tuple[Tensor, Tensor]:
    """The pairs ranked, in the order ties are broken (row by row)."""
    if kind == "both_triangles":
        i, j = (_arange(L)[:, None].expand(L, L), _arange(L)[None, :].expand(L, L))
        keep = (i - j).abs() >= sep
        return i[keep], j[keep]
    offset = {"no_separation": 1, "strict": sep + 1}.get(kind, sep)
    i, j = _triu_indices(L, L, offset=offset)
    return i, j


def _precision(
    scores: Tensor, contacts: Tensor, k: int, sep: int = 6, kind: str = ""
) -> float | None:
    """Precision at k, as the right code or a likely mistake computes it."""
    L = scores.shape[-1]
    i, j = _pairs(L, sep, kind)
    order = _argsort(scores[i, j], descending=kind != "lowest", stable=True)[:k]
    hits = int(contacts[i[order], j[order]].sum())
    if kind == "recall":
        a, b = _triu_indices(L, L, offset=sep)
        total = int(contacts[a, b].sum())
        return hits / total if total else None  # (None: this mistake has no value here)
    return hits / k


PRECISION_MISTAKES = {
    "no_separation": "pairs closer than min_separation are ranked too: residues a few positions "
    "apart along the chain touch anyway, so only pairs with j - i >= min_separation count.",
    "strict": "the pairs at exactly min_separation are left out: keep j - i >= min_separation "
    "(torch.triu_indices(L, L, offset=min_separation)).",
    "both_triangles": "each pair is ranked twice, as (i, j) and (j, i): the scores are "
    "symmetric, so rank each pair once, i < j (the upper triangle).",
    "lowest": "these are the k lowest-scoring pairs: rank the pairs by score, highest first.",
    "recall": "this is the recall (the fraction of the true contacts found): precision at k is "
    "the number of contacts among the k top pairs divided by k.",
}


def _visible_contacts() -> list[tuple[Tensor, Tensor, int, int | None]]:
    """(scores, contacts, k, min_separation or None for the default): the notebook's chain of
    12 residues. Neighbours up to 2 apart touch and score 2; pairs 3 to 5 apart score higher
    but do not touch; five long-range contacts score 1.55 to 1.8, and the pair (2, 8), at
    separation exactly 6, is a confident false positive (1.9). At the default separation 6 and
    k = 4, 3 of the top 4 pairs are contacts (0.75); at separation 4 and k = 5, 2 of 5."""
    L = 12
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(L, L, generator=gen, dtype=_F64)
    scores = (noise + noise.T) / 4  # (L, L) in [0, 0.5], symmetric
    gap = (_arange(L)[:, None] - _arange(L)[None, :]).abs()
    contacts = (gap >= 1) & (gap <= 2)
    scores = _where(contacts, 2.0, scores)
    listed = [
        ((0, 11), 1.8, True),
        ((1, 10), 1.7, True),
        ((2, 9), 1.6, True),
        ((0, 7), 1.55, True),
        ((3, 10), 1.0, True),
        ((2, 8), 1.9, False),
        ((3, 6), 2.3, False),
        ((5, 9), 2.25, False),
        ((1, 6), 2.2, False),
    ]
    for (a, b), score, contact in listed:
        scores[a, b] = scores[b, a] = score
        contacts[a, b] = contacts[b, a] = contact
    return [(scores, contacts, 4, None), (scores, contacts, 5, 4)]


def _contact_case(draw: Draw, L: int, sep: int) -> tuple[Tensor, Tensor, int, int | None]:
    """Contacts along the diagonal (neighbours in the chain touch) and at long range; scores high
    near the diagonal, higher on contacts, and a few confident false positives at exactly
    `sep`."""
    index = _arange(L)
    gap = (index[:, None] - index[None, :]).abs()
    long = (draw.uniform(L, L) < draw.real(0.06, 0.15)) & (gap >= sep)
    long = long.triu()
    contacts = long | long.T | ((gap <= 3) & (gap > 0))
    noise = draw.normal(L, L)
    scores = noise + noise.T + 2.5 * contacts.to(_F64) + 3.0 * (gap < sep).to(_F64)
    for a in draw.sample(range(L - sep), 2):
        scores[a, a + sep] = scores[a + sep, a] = 6.0 + draw.real(0, 1)
    k = draw.choice([L // 5, L // 2, L])
    return scores, contacts, k, sep


def _contacts_told_apart(case: tuple[Tensor, Tensor, int, int | None]) -> bool:
    scores, contacts, k, sep = case
    sep = 6 if sep is None else sep
    values = [_precision(scores, contacts, k, sep, m) for m in ("", *PRECISION_MISTAKES)]
    return _separated(values, gap=1e-4)


def _contacts_hidden(draw: Draw) -> list[tuple[Tensor, Tensor, int, int | None]]:
    """A chain of 30 to 60 residues at separation 6, one at a long-range separation of 12 to
    24, and one at the default (not passed), each drawn until it tells every mistake apart."""
    cases = []
    for sep in (6, draw.integer(12, 24), None):
        for _ in range(500):
            case = _contact_case(draw, draw.integer(30, 60), sep or 6)
            case = (*case[:3], sep)
            if _contacts_told_apart(case):
                cases.append(case)
                break
    return cases


def _check_contact_case(ex: Exercise, fn: Callable, scores, contacts, k, sep) -> None:
    kwargs = {} if sep is None else {"min_separation": sep}
    out = ex.call(fn, scores, contacts, k, **kwargs)
    shown = "the default min_separation" if sep is None else f"min_separation={sep}"
    what = f"contact_precision for L={scores.shape[-1]}, k={k}, {shown}"
    sep = 6 if sep is None else sep
    want = _precision(scores, contacts, k, sep)
    mistakes = {
        PRECISION_MISTAKES[m]: _precision(scores, contacts, k, sep, m) for m in PRECISION_MISTAKES
    }
    expect_close(out, want, what=what, mistakes=_named(mistakes), atol=1e-7, rtol=1e-6)


def check_contact_precision(fn: Callable, hidden: bool = False) -> None:
    """Learner's `contact_precision(scores, contacts, k, min_separation=6) -> float`."""
    with Exercise("contact_precision", hidden, PROTEINS_FORBIDDEN) as ex:
        for scores, contacts, k, sep in (
            _contacts_hidden(ex.draw) if hidden else _visible_contacts()
        ):
            _check_contact_case(ex, fn, scores, contacts, k, sep)


# --- 5. The average product correction -----------------------------------------------------------


def _apc(x: Tensor, kind: str = "") -> Tensor:
    """APC-corrected scores (..., L, L), as the right code or a likely mistake computes them."""
    L = x.shape[-1]
    off_diagonal = 1 - _eye(L, dtype=x.dtype)  # (L, L)
    off = x if kind == "diagonal_in_means" else x * off_diagonal
    n = L if kind in ("diagonal_in_means", "divide_by_L") else L - 1
    row = off.sum(dim=-1, keepdim=True) / n  # (..., L, 1)
    col = off.sum(dim=-2, keepdim=True) / n  # (..., 1, L)
    if kind == "rows_twice":
        col = row.transpose(-1, -2)
    total = off.sum(dim=(-1, -2), keepdim=True) / (L * n)  # (..., 1, 1)
    product = row * col if kind == "no_division" else row * col / total
    corrected = x * off_diagonal + product if kind == "added" else x * off_diagonal - product
    return corrected if kind == "diagonal_kept" else corrected * off_diagonal


APC_MISTAKES = {
    "diagonal_in_means": "the diagonal is counted in the means: a residue's score with itself is "
    "not a pair, so the row, column and overall means run over the L - 1 (and L (L - 1)) "
    "off-diagonal entries.",
    "divide_by_L": "the means divide by L (and L^2) although the diagonal is left out: there are "
    "L - 1 off-diagonal entries in a row or column, L (L - 1) in all.",
    "no_division": "the product of the row and column means is not divided by the overall mean: "
    "APC(i, j) = x(i, .) x(., j) / x(., .).",
    "rows_twice": "the row means are used twice: APC(i, j) multiplies the mean of row i by the "
    "mean of column j (they differ when the scores are not symmetric).",
    "diagonal_kept": "the diagonal of the result is not 0: the correction leaves the diagonal out "
    "and sets it to 0.",
    "added": "the correction is added: APC is the part of a score explained by the two sites' "
    "overall levels, and is subtracted, x(i, j) - APC(i, j).",
}


def _visible_apc() -> list[Tensor]:
    """The notebook's 4 x 4 example (symmetric, zero diagonal), then a non-symmetric 5 x 5 with a
    diagonal, seeded."""
    x = _tensor(
        [
            [0.0, 0.9, 0.2, 0.4],
            [0.9, 0.0, 0.3, 0.6],
            [0.2, 0.3, 0.0, 0.1],
            [0.4, 0.6, 0.1, 0.0],
        ],
        dtype=_F64,
    )
    gen = torch.Generator().manual_seed(3)
    return [x, torch.rand(5, 5, generator=gen, dtype=_F64) + 0.1]


def _apc_hidden(draw: Draw) -> list[Tensor]:
    """Non-symmetric positive scores with a diagonal; symmetric ones (attention made symmetric);
    a stack of maps (F, L, L); the smallest size, L = 3; float32."""
    L = draw.integer(6, 12)
    sym = draw.uniform(L, L, low=0.1)
    return [
        draw.uniform(L, L, low=0.1, high=2.0),
        sym + sym.T,
        draw.uniform(draw.integer(2, 4), L, L, low=0.1),
        draw.uniform(3, 3, low=0.1),
        draw.uniform(L, L, low=0.1).float(),
    ]


def _diagonal_alone_wrong(out: Any, want: Tensor) -> bool:
    """The learner's result is right off the diagonal and not 0 on it (whatever it holds
    there: x(i, i) - APC(i, i), or -APC(i, i))."""
    if not isinstance(out, Tensor) or out.shape != want.shape or not out.is_floating_point():
        return False
    off = ~_eye(want.shape[-1], dtype=_BOOL)
    got = out.detach().to(want.dtype)
    close = bool(torch.allclose(got[..., off], want[..., off], rtol=1e-4, atol=1e-6))
    return close and bool((got[..., ~off].abs() > 1e-6).any())


def _check_apc_case(ex: Exercise, fn: Callable, x: Tensor) -> None:
    out = ex.call(fn, x)
    what = f"apc of {'x'.join(map(str, x.shape))} scores ({x.dtype})"
    want = _apc(x)
    if _diagonal_alone_wrong(out, want):
        raise ExerciseError(f"{what} is not right", hint=APC_MISTAKES["diagonal_kept"])
    expect_close(
        out,
        want,
        what=what,
        mistakes=_named({APC_MISTAKES[k]: _apc(x, k) for k in APC_MISTAKES}),
        atol=1e-10 if x.dtype == _F64 else 1e-5,
    )


def check_apc(fn: Callable, hidden: bool = False) -> None:
    """Learner's `apc(x) -> x corrected`, for scores x (..., L, L)."""
    with Exercise("apc", hidden, PROTEINS_FORBIDDEN) as ex:
        for x in _apc_hidden(ex.draw) if hidden else _visible_apc():
            _check_apc_case(ex, fn, x)


watch_module(__name__)
