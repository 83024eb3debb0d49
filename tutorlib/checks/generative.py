"""Checks for the Chapter 6 exercises (solutions/06_generative).

As in the earlier chapters: `hidden=False` runs the visible tests (a worked example),
`hidden=True` the hidden ones (other sizes, edge cases, gradients). While the learner's code
runs, tutorlib's reference (tutorlib.generation, tutorlib.decoding, tutorlib.pixels,
tutorlib.pretrained) raises, and so do Hugging Face's logits processors when `transformers` is
loaded.

The filters (top-k, top-p) are checked by which tokens they keep, so any tie-break at the k-th
value is accepted. The sampler is checked by its statistics: tens of thousands of seeded draws
whose frequencies must lie within about six standard deviations of the probabilities (a
correct sampler fails with a probability below 1e-7, whatever random numbers it uses), and two
calls with generators seeded alike must agree. The references for one beam-search step, the
BERT and GPT-2 weight maps, the pixel tokens and distinct-n are written out here, next to the
likely mistakes; tests/test_checks_generative.py compares the BERT and GPT-2 ones with Hugging
Face's layers.

Book: Chapter 6 exercises.
"""

from __future__ import annotations

import importlib
import itertools
import math
import numbers
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tutorlib import decoding, generation
from tutorlib.checks import (
    ExerciseError,
    Target,
    expect_backward_close,
    expect_close,
    quiet,
    random_tensor,
    report_ok,
    run_candidate,
    watch_module,
)
from tutorlib.layers import EncoderLayer

__all__ = [
    "check_apply_repetition_penalty",
    "check_beam_search_step",
    "check_bert_layer_to_tutorlib",
    "check_causal_lm_loss",
    "check_distinct_n",
    "check_gpt2_attention_to_tutorlib",
    "check_images_to_sequences",
    "check_sample_with_temperature",
    "check_top_k_filter",
    "check_top_p_filter",
]

# References, taken at import time (before any learner code runs).
_causal_lm_loss = generation.causal_lm_loss
_apply_temperature = generation.apply_temperature
_top_p_filter = generation.top_p_filter
_apply_repetition_penalty = generation.apply_repetition_penalty
_distinct_n = generation.distinct_n
_cross_entropy, _log_softmax, _softmax = F.cross_entropy, F.log_softmax, torch.softmax
_linear, _layer_norm, _gelu = F.linear, F.layer_norm, F.gelu
_cat, _equal, _isfinite, _bincount = torch.cat, torch.equal, torch.isfinite, torch.bincount
_topk, _sort, _argmax = torch.topk, torch.sort, torch.argmax

Mistakes = dict[str, Callable[[], Tensor]]
_INF = float("inf")


def _existing(module_name: str, names: list[str]) -> list[Target]:
    """(module, name) targets for a tutorlib module that may not exist yet or may change."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return []
    return [(module, name) for name in names if hasattr(module, name)]


def _hugging_face(names: list[str]) -> list[Target]:
    """Hugging Face's logits processors, blocked only when the learner has loaded transformers
    (importing it here would cost seconds per notebook)."""
    if "transformers" not in sys.modules:
        return []
    try:
        with quiet():
            module = importlib.import_module("transformers.generation.logits_process")
    except Exception:  # noqa: BLE001 - a broken transformers install is not the learner's fault
        return []
    return [(getattr(module, n), "__call__") for n in names if hasattr(module, n)]


def _run(fn: Callable, *args: Any, exercise: str, forbidden: list[Target], hints: dict) -> Any:
    """`run_candidate`, adding a hint when the error message contains one of `hints`' keys."""
    try:
        return run_candidate(fn, *args, exercise=exercise, forbidden=forbidden)
    except ExerciseError as error:
        message = str(error)
        for fragment, hint in hints.items():
            if fragment.lower() in message.lower():
                raise ExerciseError(f"{message}\nHint: {hint}") from None
        raise


def _expect_ints(actual: Any, expected: Tensor, what: str, mistakes: dict[str, Tensor]) -> None:
    """Integer tensors equal exactly; a mistaken tensor of any shape is recognised."""
    if not isinstance(actual, Tensor):
        raise ExerciseError(f"{what} should be a torch.Tensor, got {type(actual).__name__}.")
    actual = actual.detach().cpu()
    if actual.dtype == expected.dtype and _equal(actual, expected):
        return
    for hint, wrong in mistakes.items():
        if wrong.shape == actual.shape and not _equal(wrong, expected):
            if not actual.is_floating_point() and _equal(actual.to(wrong.dtype), wrong):
                raise ExerciseError(f"{what} is not right. Likely mistake: {hint}")
    if actual.dtype != expected.dtype:
        raise ExerciseError(
            f"{what} has dtype {actual.dtype}, expected {expected.dtype} (token ids and indices "
            "are int64: torch.long)."
        )
    expect_close(actual, expected, what=what, atol=0, rtol=0)


def _same_input(given: Tensor, saved: Tensor, exercise: str, name: str = "logits") -> None:
    if not _equal(given, saved):
        raise ExerciseError(
            f"{exercise} changed the {name} it was given (an in-place operation such as "
            f"masked_fill_, `{name}[...] = ...` or /=): work on a copy, e.g. {name}.clone(), or "
            "use the out-of-place masked_fill."
        )


# --- 1. The causal language-modelling loss ------------------------------------------------------


def _lm_loss(logits: Tensor, tokens: Tensor, kind: str = "") -> Tensor:
    """The reference's loss, or a likely mistake."""
    B, T, V = logits.shape
    if kind == "unshifted":
        return _cross_entropy(logits.reshape(-1, V), tokens.reshape(-1))
    if kind == "backwards":  # logits at t + 1 against the token at t
        predictions, targets = logits[:, 1:], tokens[:, :-1]
    else:
        predictions, targets = logits[:, :-1], tokens[:, 1:]
    if kind == "classes_in_dim_1":  # F.cross_entropy reads dim 1 (time) as the classes
        if predictions.shape[1] != V:
            return torch.full((), float("nan"), dtype=logits.dtype)
        return _cross_entropy(predictions, targets)
    if kind == "softmax_over_time":
        log_probs = _log_softmax(predictions, dim=1)  # (B, T-1, V), normalised over positions
        return -log_probs.gather(-1, targets.unsqueeze(-1)).mean()
    per_token = _cross_entropy(predictions.reshape(-1, V), targets.reshape(-1), reduction="none")
    if kind == "sum":
        return per_token.sum()
    if kind == "per_sequence_sum":
        return per_token.sum() / B
    return per_token.mean()


LM_LOSS_MISTAKES = {
    "unshifted": "the targets are not shifted: the logits at position t predict the *next* "
    "token, so compare logits[:, :-1] with tokens[:, 1:] (T - 1 predictions per sequence).",
    "backwards": "the shift goes the wrong way: the logits at t predict token t + 1, so drop the "
    "*last* position of the logits and the *first* token (logits[:, :-1] against tokens[:, 1:]).",
    "sum": "the losses are summed: take the mean over all B * (T - 1) predictions.",
    "per_sequence_sum": "the losses are summed over time and averaged over the batch only: take "
    "the mean over all B * (T - 1) predictions.",
    "softmax_over_time": "the log-softmax runs over the positions (dim=1); it must run over the "
    "vocabulary, the last dimension.",
    "classes_in_dim_1": "F.cross_entropy read the positions as the classes: it wants the classes "
    "in dimension 1, so reshape the logits to (B * (T - 1), V) and the targets to "
    "(B * (T - 1),) first.",
}

LM_LOSS_ERRORS = {
    "expected target size": "F.cross_entropy wants the classes in dimension 1: reshape the logits "
    "to (B * (T - 1), V) and the targets to (B * (T - 1),) first.",
    "view size is not compatible": "slices like logits[:, :-1] are not contiguous in memory: use "
    ".reshape(...) instead of .view(...).",
}


def _causal_lm_loss_case(fn: Callable, hidden: bool, case: tuple) -> None:
    B, T, V, seed = case
    logits = random_tensor(B, T, V, seed=seed, grad=hidden)
    tokens = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))
    forbidden = [(generation, "causal_lm_loss")]
    out = _run(
        fn,
        logits,
        tokens.clone(),
        exercise="causal_lm_loss",
        forbidden=forbidden,
        hints=LM_LOSS_ERRORS,
    )
    expected = _causal_lm_loss(logits, tokens)
    ld = logits.detach()
    mistakes: Mistakes = {
        hint: (lambda kind=kind: _lm_loss(ld, tokens, kind))
        for kind, hint in LM_LOSS_MISTAKES.items()
    }
    what = f"causal_lm_loss for logits {(B, T, V)}"
    expect_close(out, expected, what=what, mistakes=mistakes, atol=1e-10, rtol=1e-8)
    if hidden:
        if not out.requires_grad:
            raise ExerciseError(
                "No gradient reaches the logits through your causal_lm_loss: did you use "
                ".detach(), .item(), .numpy() or torch.no_grad() on the way?"
            )
        expect_backward_close(out, expected, {"logits": logits}, "causal_lm_loss")


def check_causal_lm_loss(fn: Callable, hidden: bool = False) -> None:
    """Learner's `causal_lm_loss(logits (B, T, V), tokens (B, T)) -> scalar`: the mean
    cross-entropy of predicting token t + 1 from the logits at t."""
    cases = [(3, 7, 5, 1), (1, 2, 5, 2), (4, 3, 10, 3), (2, 9, 4, 4), (2, 5, 4, 5)]
    for case in cases if hidden else [(2, 6, 4, 0)]:
        _causal_lm_loss_case(fn, hidden, case)
    report_ok("causal_lm_loss", hidden)


# --- 2. Sampling with a temperature -------------------------------------------------------------

DRAWS = 10_000  # draws per distinct row: a frequency's standard deviation is at most 0.005
SAMPLING_TOLERANCE = 0.03  # six standard deviations


def _sampling_variants(rows: Tensor, T: float) -> dict[str, Tensor]:
    """The distribution (R, V) that each likely mistake draws from, for R distinct rows."""
    scaled = rows / T
    column = scaled.exp() / scaled.exp().sum(dim=0, keepdim=True)  # softmax over the batch
    return {
        "after_softmax": _softmax(rows, dim=-1),
        "multiplied": _softmax(rows * T, dim=-1),
        "argmax": F.one_hot(rows.argmax(dim=-1), rows.shape[-1]).to(rows.dtype),
        "batch_dim": column / column.sum(dim=-1, keepdim=True),
        "twice": _softmax(_softmax(scaled, dim=-1), dim=-1),
    }


SAMPLING_MISTAKES = {
    "after_softmax": "the temperature made no difference: it was applied after the softmax. "
    "Probabilities divided by T are renormalised (torch.multinomial does that itself), which "
    "undoes the division; divide the *logits* by T, then take the softmax.",
    "multiplied": "the logits were multiplied by the temperature; divide them by it (a small T "
    "sharpens the distribution).",
    "argmax": "the most probable token every time: draw from the distribution with "
    "torch.multinomial (the argmax is only for temperature 0).",
    "batch_dim": "the softmax ran over the batch dimension; it runs over the vocabulary, dim=-1.",
    "twice": "the softmax was applied twice: torch.multinomial takes the probabilities "
    "themselves (any non-negative weights), not logits to normalise again.",
}

SAMPLING_ERRORS = {
    "multinomial": "torch.multinomial needs finite, non-negative weights: give it probabilities "
    "(the softmax of logits / T), not logits or log-probabilities.",
    "probability tensor": "torch.multinomial needs finite, non-negative weights: give it "
    "probabilities (the softmax of logits / T), not logits or log-probabilities.",
}
GREEDY_ERRORS = {
    "": "Temperature 0 means greedy decoding: return logits.argmax(dim=-1), without dividing by "
    "the temperature (logits / 0 gives inf and NaN).",
}


def _draw(fn: Callable, logits: Tensor, T: float, seed: int) -> Tensor:
    given = logits.clone()
    out = _run(
        fn,
        given,
        T,
        torch.Generator().manual_seed(seed),
        exercise="sample_with_temperature",
        forbidden=_sampling_forbidden(),
        hints=GREEDY_ERRORS if T == 0 else SAMPLING_ERRORS,
    )
    _same_input(given, logits, "sample_with_temperature")
    B, V = logits.shape
    if not isinstance(out, Tensor):
        raise ExerciseError(
            f"sample_with_temperature should return a torch.Tensor of token ids, got "
            f"{type(out).__name__}."
        )
    if out.shape == (B, 1):
        raise ExerciseError(
            f"sample_with_temperature returned shape {(B, 1)}; return one id per row, shape "
            f"({B},): torch.multinomial(probs, 1) has shape (B, 1), so .squeeze(-1) it."
        )
    if out.shape != (B,):
        raise ExerciseError(
            f"sample_with_temperature returned shape {tuple(out.shape)}, expected ({B},): one "
            "token id per row of logits."
        )
    if out.dtype != torch.long:
        raise ExerciseError(
            f"sample_with_temperature returned dtype {out.dtype}; token ids are int64 "
            "(torch.multinomial and argmax return int64)."
        )
    out = out.detach().cpu()
    if B and (out.min() < 0 or out.max() >= V):
        raise ExerciseError(
            f"sample_with_temperature returned ids outside [0, {V}): {int(out.min())}.."
            f"{int(out.max())}."
        )
    return out


def _sampling_forbidden() -> list[Target]:
    return [
        (generation, "sample_next"),
        (generation, "apply_temperature"),
        (generation, "sample"),
        *_hugging_face(["TemperatureLogitsWarper"]),
    ]


def _sampling_case(fn: Callable, rows: Tensor, T: float, seed: int) -> None:
    R, V = rows.shape
    logits = rows.repeat(DRAWS, 1)  # (DRAWS * R, V): row i is rows[i % R]
    out = _draw(fn, logits, T, seed)
    shown = [[round(v, 2) for v in row] for row in rows.tolist()]
    what = f"sample_with_temperature with temperature {T} on the rows {shown}"
    by_row = out.reshape(DRAWS, R).T  # (R, DRAWS): the draws from each distinct row
    frequencies = torch.stack([_bincount(d, minlength=V) for d in by_row]).double() / DRAWS
    expected = _softmax(_apply_temperature(rows, T), dim=-1)  # (R, V)

    def distance(p: Tensor) -> float:
        return float((frequencies - p).abs().max())

    if distance(expected) <= SAMPLING_TOLERANCE:
        again = _draw(fn, logits, T, seed)
        if not _equal(again, out):
            raise ExerciseError(
                f"{what}: two calls with generators seeded alike gave different tokens. Pass "
                "generator=generator to torch.multinomial (or to whatever draws the numbers)."
            )
        return
    near = [
        (distance(p), SAMPLING_MISTAKES[kind])
        for kind, p in _sampling_variants(rows, T).items()
        if distance(p) <= SAMPLING_TOLERANCE and float((p - expected).abs().max()) > 0.1
    ]  # the mistakes that the draws fit, and that a correct sampler would not
    if near:
        raise ExerciseError(f"{what}: the draws are off. Likely mistake: {min(near)[1]}")
    gap = (frequencies - expected).abs()
    r, v = (int(i) for i in torch.nonzero(gap == gap.max())[0])
    raise ExerciseError(
        f"{what}: the draws do not follow softmax(logits / T). In {DRAWS} draws from row {r}, "
        f"token {v} came up {float(frequencies[r, v]):.3f} of the time; its probability is "
        f"{float(expected[r, v]):.3f}."
    )


def check_sample_with_temperature(fn: Callable, hidden: bool = False) -> None:
    """Learner's `sample_with_temperature(logits (B, V), temperature, generator) -> (B,)`:
    one draw per row from softmax(logits / T); T = 0 is greedy. Checked statistically."""
    visible = [(torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 1.0, 0.5, 0.0]]), 0.5, 0)]
    hidden_cases = [
        (torch.tensor([[1.0, 0.0, -1.0, 2.0, 0.5, -0.5]], dtype=torch.float64), 2.0, 1),
        (torch.tensor([[3.0, 0.0, 1.0], [0.0, 0.2, -0.2], [-1.0, 1.0, 0.0]]), 1.0, 2),
        (torch.tensor([[0.5, 0.0, 0.2, 0.9, -2.0]], dtype=torch.float64), 0.3, 3),
        (random_tensor(5, 7, seed=4), 0.0, 4),
    ]
    for rows, T, seed in hidden_cases if hidden else visible:
        if T == 0:  # greedy: a few rows are enough
            _draw_greedy(fn, rows, seed)
        else:
            _sampling_case(fn, rows.double(), T, seed)
    report_ok("sample_with_temperature", hidden)


def _draw_greedy(fn: Callable, logits: Tensor, seed: int) -> None:
    out = _draw(fn, logits, 0.0, seed)
    if not _equal(out, logits.argmax(dim=-1)):
        raise ExerciseError(
            "sample_with_temperature with temperature 0: temperature 0 means greedy decoding, "
            f"the arg max of every row ({logits.argmax(dim=-1).tolist()}); got {out.tolist()}."
        )


# --- 3 and 4. The filters: which tokens are kept -------------------------------------------------


def _kept(out: Any, logits: Tensor, exercise: str) -> Tensor:
    """The mask of the tokens the learner's filter kept, after checks of its output's form."""
    if not isinstance(out, Tensor):
        raise ExerciseError(f"{exercise} should return a torch.Tensor, got {type(out).__name__}.")
    out = out.detach().cpu()
    if out.shape != logits.shape:
        raise ExerciseError(
            f"{exercise} returned shape {tuple(out.shape)}, expected {tuple(logits.shape)}: the "
            "filtered logits, one per token of the vocabulary (the others set to -inf)."
        )
    if not out.is_floating_point():
        raise ExerciseError(
            f"{exercise} returned dtype {out.dtype}: return the filtered logits (a float tensor "
            "like the input, -inf where a token is removed), not indices or a mask."
        )
    out = out.to(logits.dtype)
    finite = _isfinite(out)
    if bool(finite.all()) and not _equal(out, logits):
        rows_sum_to_one = bool(((out.sum(dim=-1) - 1).abs() < 1e-6).all())
        if rows_sum_to_one and bool((out >= 0).all()):
            raise ExerciseError(
                f"{exercise} returned probabilities. Return the filtered *logits*: the kept "
                "logits unchanged, -inf for the others; the softmax comes after the filters."
            )
    if bool(torch.isnan(out).any()) or bool((out == _INF).any()):
        raise ExerciseError(
            f"{exercise} returned NaN or +inf; a removed token's logit is -inf (float('-inf'))."
        )
    keep = out == logits
    removed = out[~keep]
    if removed.numel() and not bool((removed == -_INF).all()):
        values = removed[_isfinite(removed)]
        if values.numel() and bool((values == values[0]).all()) and len(values) == len(removed):
            raise ExerciseError(
                f"{exercise} set the removed tokens to {float(values[0]):.4g}, not -inf: a "
                "finite logit still has a probability after the softmax. Use float('-inf')."
            )
        raise ExerciseError(
            f"{exercise} changed the logits of the tokens it kept: keep them exactly as they "
            "were and set only the removed ones to -inf (no softmax, no temperature here)."
        )
    return keep


# --- 3. Top-k ---


def _top_k_row_problem(keep: Tensor, row: Tensor, k: int) -> str | None:
    """None if `keep` is a valid top-k set of `row` (any tie-break), else the likely mistake."""
    n = int(keep.sum())
    order = _sort(row, descending=True).values
    kth = order[k - 1]
    top_n = n == 0 or n == len(row) or float(row[keep].min()) >= float(row[~keep].max())
    if top_n and n == k:
        return None
    bottom_n = n > 0 and n < len(row) and float(row[keep].max()) <= float(row[~keep].min())
    if bottom_n and n == k:
        return (
            "the k *smallest* logits were kept: keep the k largest (torch.topk's default "
            "largest=True, or a sort with descending=True)."
        )
    ties = int((row == kth).sum()) > 1
    if top_n and n > k and ties and bool((row[keep] >= kth).all()):
        return (
            "more than k tokens were kept where several logits tie with the k-th largest: "
            "`logits >= threshold` keeps all of them. Keep exactly k, e.g. the positions "
            "torch.topk returns (any k of the tied ones will do)."
        )
    if top_n and n == k + 1:
        return (
            "one token too many: k + 1 were kept. With 0-based indexing the k-th largest logit "
            "is sorted_logits[:, k - 1], not sorted_logits[:, k]."
        )
    if top_n and n < k:
        return (
            f"too few tokens were kept ({n} instead of k = {k}): `logits > threshold` drops the "
            "k-th largest itself (and every logit that ties with it); keep exactly k."
        )
    return f"keep the k = {k} largest logits of each row, and only those."


def _top_k_case(fn: Callable, logits: Tensor, k: int) -> None:
    given = logits.clone()
    forbidden = [
        (generation, "top_k_filter"),
        (generation, "sample_next"),
        *_hugging_face(["TopKLogitsWarper"]),
    ]
    out = run_candidate(fn, given, k, exercise="top_k_filter", forbidden=forbidden)
    _same_input(given, logits, "top_k_filter")
    keep = _kept(out, logits, "top_k_filter")
    for r in range(len(logits)):
        problem = _top_k_row_problem(keep[r], logits[r], k)
        if problem is not None:
            shown = [round(v, 3) for v in logits[r].tolist()]
            kept = torch.nonzero(keep[r]).reshape(-1).tolist()
            raise ExerciseError(
                f"top_k_filter with k = {k} on the row {shown} kept the tokens {kept}. "
                f"Likely mistake: {problem}"
            )


def check_top_k_filter(fn: Callable, hidden: bool = False) -> None:
    """Learner's `top_k_filter(logits (B, V), k) -> (B, V)`: the k largest logits of each row
    kept, the others -inf. Where logits tie at the k-th value, any k of them are accepted."""
    if hidden:
        cases = [
            (random_tensor(4, 10, seed=1), 4),
            (random_tensor(3, 7, seed=2), 1),
            (random_tensor(2, 6, seed=3), 6),
            (torch.tensor([[5.0, 3.0, 3.0, 3.0, 0.0], [1.0, 2.0, 2.0, -1.0, 2.0]]).double(), 2),
            (torch.tensor([[0.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]]).double(), 3),
        ]
    else:
        rows = [[1.0, 4.0, -2.0, 3.0, 0.5, 2.0], [0.0, -1.0, 2.5, 1.5, -3.0, 1.0]]
        cases = [(torch.tensor(rows, dtype=torch.float64), 3)]
    for logits, k in cases:
        _top_k_case(fn, logits, k)
    report_ok("top_k_filter", hidden)


# --- 4. Top-p (nucleus) ---


def _nucleus(logits: Tensor, p: float, kind: str = "") -> Tensor:
    """The kept mask of the reference's nucleus, or of a likely mistake's."""
    descending = kind != "ascending"
    sorted_logits, order = logits.sort(dim=-1, descending=descending)  # (B, V)
    probs = _softmax(sorted_logits, dim=-1)
    if kind == "unsorted":
        sorted_logits, order = logits, torch.arange(logits.shape[-1]).expand_as(logits).clone()
        probs = _softmax(logits, dim=-1)
    mass = sorted_logits.cumsum(dim=-1) if kind == "logit_cumsum" else probs.cumsum(dim=-1)
    before = mass - (sorted_logits if kind == "logit_cumsum" else probs)
    if kind in ("drops_crossing", "drops_crossing_unforced"):
        keep_sorted = mass < p
    elif kind == "one_more":
        keep_sorted = _cat([torch.ones_like(before[:, :1]), before[:, :-1]], dim=-1) < p
    else:
        keep_sorted = before < p
    if kind != "drops_crossing_unforced":
        keep_sorted[:, 0] = True
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


TOP_P_MISTAKES = {
    "drops_crossing": "the token that takes the cumulative probability past p was dropped. The "
    "nucleus is the smallest set whose probabilities add up to *at least* p, so that token is in: "
    "keep a token while the probability mass ranked *before* it is still below p.",
    "drops_crossing_unforced": "the token that takes the cumulative probability past p was "
    "dropped, and when the most probable token alone has more than p nothing was left. Keep a "
    "token while the mass ranked *before* it is below p (the top token is always kept).",
    "one_more": "one token too many: the nucleus ends with the token that takes the cumulative "
    "probability past p; the next one is out.",
    "unsorted": "the cumulative sum ran over the vocabulary in its own order: sort the "
    "probabilities in descending order first, then add them up.",
    "ascending": "the least probable tokens were kept: sort in descending order, most probable "
    "first.",
    "logit_cumsum": "the cumulative sum is over logits: add up the probabilities, the softmax of "
    "the (sorted) logits.",
}


def _top_p_case(fn: Callable, logits: Tensor, p: float) -> None:
    given = logits.clone()
    forbidden = [
        (generation, "top_p_filter"),
        (generation, "sample_next"),
        *_hugging_face(["TopPLogitsWarper"]),
    ]
    out = run_candidate(fn, given, p, exercise="top_p_filter", forbidden=forbidden)
    _same_input(given, logits, "top_p_filter")
    if isinstance(out, Tensor) and out.shape == logits.shape and out.is_floating_point():
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        in_sorted_order = sorted_logits.masked_fill(~_nucleus(logits, p).gather(-1, order), -_INF)
        got = out.detach().cpu().to(logits.dtype)
        if not _equal(logits, sorted_logits) and _equal(got, in_sorted_order):
            raise ExerciseError(
                f"top_p_filter with p = {p} returned the logits in sorted order. Likely mistake: "
                "the kept set was not put back in the vocabulary's order: scatter the sorted mask "
                "back with the sort's indices (mask.scatter(-1, order, sorted_mask))."
            )
    keep = _kept(out, logits, "top_p_filter")
    expected = _top_p_filter(logits, p).isfinite()
    if _equal(keep, expected):
        return
    rows = [r for r in range(len(logits)) if not _equal(keep[r], expected[r])]
    r = rows[0]
    probs = _softmax(logits[r], dim=-1)
    shown = [round(v, 3) for v in probs.tolist()]
    what = (
        f"top_p_filter with p = {p} on a row with probabilities {shown} kept the tokens "
        f"{torch.nonzero(keep[r]).reshape(-1).tolist()}, expected "
        f"{torch.nonzero(expected[r]).reshape(-1).tolist()}"
    )
    for kind, hint in TOP_P_MISTAKES.items():
        wrong = _nucleus(logits, p, kind)
        if not _equal(wrong, expected) and _equal(keep, wrong):
            raise ExerciseError(f"{what}. Likely mistake: {hint}")
    n, m = int(keep[r].sum()), int(expected[r].sum())
    if n < m:
        raise ExerciseError(f"{what}. Too few were kept: {TOP_P_MISTAKES['drops_crossing']}")
    if n > m:
        raise ExerciseError(f"{what}. Too many were kept: {TOP_P_MISTAKES['one_more']}")
    raise ExerciseError(f"{what}. Keep the most probable tokens, in order of probability.")


def _peaked(V: int, seed: int, scale: float) -> Tensor:
    return scale * random_tensor(V, seed=seed)


def check_top_p_filter(fn: Callable, hidden: bool = False) -> None:
    """Learner's `top_p_filter(logits (B, V), p) -> (B, V)`: the smallest set of most probable
    tokens whose probabilities add up to at least p kept, the others -inf."""
    visible = torch.tensor(
        [[0.05, 0.5, 0.1, 0.2, 0.15], [0.04, 0.06, 0.7, 0.12, 0.08]], dtype=torch.float64
    ).log()
    if hidden:
        cases = [
            (2 * random_tensor(4, 12, seed=1), 0.9),
            (random_tensor(3, 8, seed=2), 0.3),
            (3 * random_tensor(2, 50, seed=3), 0.95),
            (random_tensor(3, 6, seed=4), 1.0),
            (random_tensor(2, 5, seed=5), 1e-3),
            (torch.stack([_peaked(9, 6, 4.0), _peaked(9, 7, 0.5)]), 0.75),
        ]
    else:
        cases = [(visible, 0.6)]
    for logits, p in cases:
        _top_p_case(fn, logits, p)
    report_ok("top_p_filter", hidden)


# --- 5. The repetition penalty ------------------------------------------------------------------


def _penalised(logits: Tensor, previous: Tensor, penalty: float, kind: str = "") -> Tensor:
    if kind == "other_rows":
        previous = previous.reshape(1, -1).expand(len(logits), -1)
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, previous, True)
    if kind == "every_token":
        seen = torch.ones_like(seen)
    if kind == "divide_all":
        return torch.where(seen, logits / penalty, logits)
    if kind == "swapped":
        wrong_way = torch.where(logits > 0, logits * penalty, logits / penalty)
        return torch.where(seen, wrong_way, logits)
    if kind == "subtract":
        return torch.where(seen, logits - penalty, logits)
    if kind == "per_occurrence":
        count = torch.zeros_like(logits).scatter_add(
            -1, previous, torch.ones_like(previous, dtype=logits.dtype)
        )
        factor = penalty**count
        return torch.where(logits > 0, logits / factor, logits * factor)
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


PENALTY_MISTAKES = {
    "divide_all": "every seen logit was divided by the penalty, but dividing a negative logit "
    "moves it *up*, towards 0, and makes the token more likely. Divide positive logits, multiply "
    "negative ones.",
    "swapped": "positive logits were multiplied and negative ones divided, which makes repeated "
    "tokens *more* likely: divide positive logits by the penalty, multiply negative ones.",
    "every_token": "every token was penalised; only those that already occur in `previous` (in "
    "the same row) are.",
    "other_rows": "tokens seen in another row were penalised too: each row of the batch has its "
    "own history, previous[b].",
    "subtract": "the penalty was subtracted; it is a factor: divide positive logits by it, "
    "multiply negative ones.",
    "per_occurrence": "a token was penalised once per occurrence; CTRL's penalty applies once "
    "to every token that has occurred, however often.",
}


def _penalty_case(fn: Callable, case: tuple) -> None:
    logits, previous, penalty = case
    given, history = logits.clone(), previous.clone()
    forbidden = [
        (generation, "apply_repetition_penalty"),
        *_hugging_face(["RepetitionPenaltyLogitsProcessor"]),
    ]
    out = run_candidate(
        fn, given, history, penalty, exercise="apply_repetition_penalty", forbidden=forbidden
    )
    _same_input(given, logits, "apply_repetition_penalty")
    _same_input(history, previous, "apply_repetition_penalty", name="previous")
    mistakes: Mistakes = {
        hint: (lambda kind=kind: _penalised(logits, previous, penalty, kind))
        for kind, hint in PENALTY_MISTAKES.items()
    }
    what = f"apply_repetition_penalty with penalty {penalty} and previous = {previous.tolist()}"
    expected = _apply_repetition_penalty(logits, previous, penalty)
    expect_close(out, expected, what=what, mistakes=mistakes, atol=1e-12, rtol=1e-10)


def check_apply_repetition_penalty(fn: Callable, hidden: bool = False) -> None:
    """Learner's `apply_repetition_penalty(logits (B, V), previous (B, t), penalty) -> (B, V)`."""
    g = torch.Generator().manual_seed(1)
    visible = (
        torch.tensor([[2.0, -1.0, 0.5, -0.5, 1.0, 3.0], [-2.0, 1.5, 0.0, 1.0, -1.0, 0.5]]).double(),
        torch.tensor([[0, 1, 1, 4], [1, 4, 4, 4]]),
        1.5,
    )
    if hidden:
        cases = [
            (random_tensor(3, 10, seed=1), torch.randint(0, 10, (3, 7), generator=g), 1.2),
            (random_tensor(2, 5, seed=2), torch.randint(0, 5, (2, 4), generator=g), 1.0),
            (random_tensor(2, 8, seed=3), torch.tensor([[3, 3, 3], [5, 0, 5]]), 2.0),
            (random_tensor(1, 6, seed=4), torch.tensor([[2]]), 1.3),
        ]
    else:
        cases = [visible]
    for case in cases:
        _penalty_case(fn, case)
    report_ok("apply_repetition_penalty", hidden)


# --- 6. One step of beam search -----------------------------------------------------------------


def _beam_step(scores: Tensor, log_probs: Tensor, kind: str = "") -> tuple[Tensor, Tensor, Tensor]:
    """The step that tutorlib.decoding.beam_search takes, or a likely mistake's."""
    B, k = scores.shape
    V = log_probs.shape[-1]
    extended = scores.reshape(B * k, 1)
    if kind == "no_scores":
        total = log_probs.reshape(B, k * V)
    elif kind == "multiplied":
        total = (extended * log_probs).reshape(B, k * V)
    else:
        total = (extended + log_probs).reshape(B, k * V)  # (B, k*V)
    if kind == "one_child_each":
        best, token = total.reshape(B, k, V).max(dim=-1)  # (B, k)
        new, beam = best.sort(dim=1, descending=True)
        return new, beam, token.gather(1, beam)
    new, index = _topk(total, k, dim=1)  # (B, k)
    beam, token = index // V, index % V
    if kind == "global_beam":
        beam = beam + k * torch.arange(B).unsqueeze(1)
    elif kind == "divided_by_k":
        beam, token = index // k, index % k
    elif kind == "swapped":
        beam, token = index % V, index // V
    return new, beam, token


BEAM_SCORE_MISTAKES = {
    "no_scores": "the beams' scores were not added: a hypothesis's score is the sum of the "
    "log-probabilities of all its tokens, so add scores[b, j] to every log-probability of beam j.",
    "multiplied": "the scores were multiplied by the log-probabilities; log-probabilities add.",
    "one_child_each": "each beam kept exactly one child (its own best token). Beam search ranks "
    "all k * V extensions of a row together and keeps the k best, so a strong beam can have "
    "several children and a weak one none.",
}
BEAM_INDEX_MISTAKES = {
    "global_beam": "the parent beams are numbered across the batch (b * k + j); return the beam "
    "within its row, j in 0..k-1.",
    "divided_by_k": "the flat index into the (k * V) candidates was split with k: beam = index "
    "// V and token = index % V.",
    "swapped": "the parent beam and the token are swapped: beam = index // V, token = index % V.",
}


def _beam_case(fn: Callable, scores: Tensor, log_probs: Tensor) -> None:
    B, k = scores.shape
    V = log_probs.shape[-1]
    given_scores, given_log_probs = scores.clone(), log_probs.clone()
    out = _run(
        fn,
        given_scores,
        given_log_probs,
        exercise="beam_search_step",
        forbidden=[(decoding, "beam_search")],
        hints={
            "size": "is the total of shape (B, k * V)? scores.reshape(B * k, 1) + log_probs "
            "has shape (B * k, V); reshape it to (B, k * V) before the top-k."
        },
    )
    _same_input(given_scores, scores, "beam_search_step", name="scores")
    _same_input(given_log_probs, log_probs, "beam_search_step", name="log_probs")
    if not isinstance(out, tuple | list) or len(out) != 3:
        got = f"{len(out)} values" if isinstance(out, tuple | list) else type(out).__name__
        raise ExerciseError(
            "beam_search_step should return three tensors: (new_scores, beams, tokens), each "
            f"of shape ({B}, {k}); got {got}."
        )
    new, beams, tokens = out
    expected = _beam_step(scores, log_probs)
    what = f"beam_search_step for B = {B} rows, k = {k} beams, V = {V} tokens"
    for name, value in (("new_scores", new), ("beams", beams), ("tokens", tokens)):
        if not isinstance(value, Tensor):
            raise ExerciseError(
                f"{what}: {name} should be a torch.Tensor, got {type(value).__name__}."
            )
        if value.shape != (B, k):
            raise ExerciseError(
                f"{what}: {name} has shape {tuple(value.shape)}, expected ({B}, {k}): the k "
                "best extensions of each row."
            )
    if isinstance(new, Tensor) and new.is_floating_point():
        got, want = new.detach().to(scores.dtype), expected[0]
        resorted = got.sort(dim=1, descending=True).values
        if not _all_close(got, want) and _all_close(resorted, want):
            raise ExerciseError(
                f"{what}: the right hypotheses in the wrong order. Return the k best of each "
                "row in descending order of score (torch.topk sorts them, sorted=True)."
            )
    if isinstance(new, Tensor) and new.is_floating_point():
        got = new.detach().cpu().to(scores.dtype)
        for kind, hint in BEAM_SCORE_MISTAKES.items():  # by hand: the scores may hold -inf
            wrong = _beam_step(scores, log_probs, kind)[0]
            if not _all_close(got, expected[0]) and not _all_close(wrong, expected[0]):
                if _all_close(got, wrong):
                    raise ExerciseError(f"{what}: new_scores is not right. Likely mistake: {hint}")
    expect_close(new, expected[0], what=f"{what}: new_scores", atol=1e-12, rtol=1e-10)
    variants = {kind: _beam_step(scores, log_probs, kind) for kind in BEAM_INDEX_MISTAKES}
    for name, value, i in (("beams", beams, 1), ("tokens", tokens, 2)):
        mistakes = {hint: variants[kind][i] for kind, hint in BEAM_INDEX_MISTAKES.items()}
        _expect_ints(value, expected[i], f"{what}: {name}", mistakes)


def _all_close(a: Tensor, b: Tensor) -> bool:
    """Equal within float64 rounding, with -inf equal to -inf."""
    return a.shape == b.shape and bool(torch.isclose(a, b, rtol=1e-8, atol=1e-10).all())


def _log_probs(rows: int, V: int, seed: int) -> Tensor:
    return _log_softmax(2 * random_tensor(rows, V, seed=seed), dim=-1)


def _beam_scores(B: int, k: int, seed: int, first_step: bool = False) -> Tensor:
    if first_step:
        scores = torch.full((B, k), -_INF, dtype=torch.float64)
        scores[:, 0] = 0.0
        return scores
    return -(3 * random_tensor(B, k, seed=seed)).abs().sort(dim=1).values


def check_beam_search_step(fn: Callable, hidden: bool = False) -> None:
    """Learner's `beam_search_step(scores (B, k), log_probs (B * k, V)) -> (new_scores (B, k),
    beams (B, k), tokens (B, k))`, the k best of the k * V extensions of each row, best first."""
    if hidden:
        cases = [
            (_beam_scores(3, 3, 1), _log_probs(9, 5, 1)),
            (_beam_scores(2, 3, 2, first_step=True), _log_probs(6, 4, 2)),
            (_beam_scores(2, 1, 3), _log_probs(2, 6, 3)),
            (_beam_scores(2, 4, 4), _log_probs(8, 3, 4)),
            (_beam_scores(1, 5, 5), _log_probs(5, 7, 5)),
        ]
    else:
        scores = torch.tensor([[-1.0, -1.5], [-0.5, -3.0]], dtype=torch.float64)
        probs = torch.tensor(
            [[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.4, 0.35, 0.25], [0.2, 0.7, 0.1]],
            dtype=torch.float64,
        )
        cases = [(scores, probs.log())]
    for scores, log_probs in cases:
        _beam_case(fn, scores, log_probs)
    report_ok("beam_search_step", hidden)


# --- 7. BERT's layer in tutorlib's EncoderLayer -------------------------------------------------

BERT_EPS = 1e-12  # BERT's LayerNorm epsilon

# tutorlib's EncoderLayer names  <-  Hugging Face BertLayer's names (one layer).
BERT_NAMES = {
    "self_attn.out_proj.weight": "attention.output.dense.weight",
    "self_attn.out_proj.bias": "attention.output.dense.bias",
    "ff.linear1.weight": "intermediate.dense.weight",
    "ff.linear1.bias": "intermediate.dense.bias",
    "ff.linear2.weight": "output.dense.weight",
    "ff.linear2.bias": "output.dense.bias",
    "norm1.weight": "attention.output.LayerNorm.weight",  # after the attention
    "norm1.bias": "attention.output.LayerNorm.bias",
    "norm2.weight": "output.LayerNorm.weight",  # after the feed-forward network
    "norm2.bias": "output.LayerNorm.bias",
}
_QKV = ("query", "key", "value")


def _bert_layer_weights(C: int, d_ff: int, seed: int) -> dict[str, Tensor]:
    """Random float64 weights under the names of `BertLayer(config).state_dict()`."""
    shapes = {
        **{f"attention.self.{p}.weight": (C, C) for p in _QKV},
        **{f"attention.self.{p}.bias": (C,) for p in _QKV},
        "attention.output.dense.weight": (C, C),
        "attention.output.dense.bias": (C,),
        "attention.output.LayerNorm.weight": (C,),
        "attention.output.LayerNorm.bias": (C,),
        "intermediate.dense.weight": (d_ff, C),
        "intermediate.dense.bias": (d_ff,),
        "output.dense.weight": (C, d_ff),
        "output.dense.bias": (C,),
        "output.LayerNorm.weight": (C,),
        "output.LayerNorm.bias": (C,),
    }
    weights = {}
    for i, (name, shape) in enumerate(shapes.items()):
        value = random_tensor(*shape, seed=1000 * seed + i) / math.sqrt(shape[-1])
        weights[name] = 1 + 0.2 * value if name.endswith("LayerNorm.weight") else value
    return weights


def _bert_map(bert: Mapping[str, Tensor], order: tuple[str, ...] = _QKV) -> dict[str, Tensor]:
    """The reference map (q, k, v stacked in `order`)."""
    ours = {
        "self_attn.in_proj_weight": _cat([bert[f"attention.self.{p}.weight"] for p in order]),
        "self_attn.in_proj_bias": _cat([bert[f"attention.self.{p}.bias"] for p in order]),
    }
    ours.update({name: bert[theirs] for name, theirs in BERT_NAMES.items()})
    return ours


def _bert_layer_reference(
    bert: Mapping[str, Tensor], x: Tensor, padding_mask: Tensor, n_heads: int
) -> Tensor:
    """BERT's post-norm encoder layer, written out (what `BertLayer` computes in eval mode).

    Shapes:
        x (B, T, C); padding_mask (B, T) bool, True = real token  ->  (B, T, C)
    """
    B, T, C = x.shape
    H, D = n_heads, C // n_heads

    def project(name: str, t: Tensor) -> Tensor:
        return _linear(t, bert[f"{name}.weight"], bert[f"{name}.bias"])

    def heads(t: Tensor) -> Tensor:
        return t.reshape(B, T, H, D).transpose(1, 2)  # (B, H, T, D)

    q, k, v = (heads(project(f"attention.self.{p}", x)) for p in _QKV)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, T)
    scores = scores.masked_fill(~padding_mask[:, None, None, :], -_INF)
    attended = (_softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, T, C)  # (B, T, C)
    x = _layer_norm(
        x + project("attention.output.dense", attended),
        (C,),
        bert["attention.output.LayerNorm.weight"],
        bert["attention.output.LayerNorm.bias"],
        BERT_EPS,
    )
    hidden = project("output.dense", _gelu(project("intermediate.dense", x)))
    return _layer_norm(
        x + hidden, (C,), bert["output.LayerNorm.weight"], bert["output.LayerNorm.bias"], BERT_EPS
    )


def _bert_key_problem(name: str, got: Tensor, bert: Mapping[str, Tensor]) -> str:
    """Why our tensor `name` does not hold what it should, as far as we can tell."""
    if name.startswith("self_attn.in_proj"):
        kind = name.rsplit("_", 1)[1]  # "weight" or "bias"
        for order in itertools.permutations(_QKV):
            if order != _QKV and _equal(got, _bert_map(bert, order)[name]):
                return (
                    f"q, k and v are stacked in the order {', '.join(order)}; "
                    "nn.MultiheadAttention's in_proj holds [query; key; value], in that order."
                )
        pieces = [bert[f"attention.self.{p}.{kind}"] for p in _QKV]
        if kind == "weight" and _equal(got, _cat([w.T for w in pieces])):
            return (
                "the query, key and value weights were transposed. BERT's nn.Linear and "
                "tutorlib's both store (out, in): copy them as they are."
            )
        if kind == "weight" and _equal(got, _cat(pieces, dim=1).T):
            return (
                "the three weights were joined side by side and transposed; stack them one "
                "above the other, torch.cat([q, k, v], dim=0)."
            )
        return f"it should be BERT's query, key and value {kind}s stacked, torch.cat([q, k, v])."
    theirs = BERT_NAMES[name]
    if name.startswith("norm"):
        other = BERT_NAMES[("norm2" if name.startswith("norm1") else "norm1") + name[5:]]
        if _equal(got, bert[other]):
            return (
                "the two LayerNorms are swapped: norm1 follows the attention "
                "(attention.output.LayerNorm), norm2 the feed-forward network (output.LayerNorm)."
            )
    want = bert[theirs]
    if want.dim() == 2 and got.shape == want.T.shape and _equal(got, want.T):
        return (
            f"it holds {theirs} transposed. BERT's nn.Linear and tutorlib's both store (out, in): "
            "copy it as it is."
        )
    return f"it should hold {theirs}."


def _bert_case(fn: Callable, C: int, H: int, d_ff: int, seed: int) -> None:
    bert = _bert_layer_weights(C, d_ff, seed)
    given = {name: value.clone() for name, value in bert.items()}
    forbidden = _existing(
        "tutorlib.pretrained",
        ["bert_state_dict_to_tutorlib", "bert_to_tutorlib", "load_state_dict_checked", "_convert"],
    )
    out = run_candidate(fn, given, exercise="bert_layer_to_tutorlib", forbidden=forbidden)
    what = f"bert_layer_to_tutorlib for a layer with C = {C}, {H} heads, d_ff = {d_ff}"
    expected = _bert_map(bert)
    if not isinstance(out, Mapping):
        raise ExerciseError(
            f"{what} should return a dict from tutorlib's parameter names to tensors, got "
            f"{type(out).__name__}."
        )
    missing = sorted(set(expected) - set(out))
    unexpected = sorted(set(out) - set(expected), key=str)
    if missing or unexpected:
        raise ExerciseError(
            f"{what}: the names do not fit tutorlib's EncoderLayer. Missing: {missing}; "
            f"unexpected: {unexpected}. The names are those of "
            "EncoderLayer(d_model, n_heads, d_ff).state_dict().keys()."
        )
    for name, want in expected.items():
        got = out[name]
        if not isinstance(got, Tensor):
            raise ExerciseError(f"{what}: {name} should be a tensor, got {type(got).__name__}.")
        if got.shape != want.shape:
            hint = ""
            if name == "self_attn.in_proj_weight" and got.shape == (C, 3 * C):
                hint = (
                    " Stack q, k and v one above the other, torch.cat([q, k, v], dim=0), "
                    "and copy each as it is (nn.Linear stores (out, in), like BERT)."
                )
            elif got.dim() == 2 and got.T.shape == want.shape:
                hint = (
                    " It looks transposed: BERT's nn.Linear and tutorlib's both store (out, in), "
                    "so copy the weights as they are."
                )
            raise ExerciseError(
                f"{what}: {name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}." + hint
            )
        if got.dtype != want.dtype:
            raise ExerciseError(
                f"{what}: {name} has dtype {got.dtype}, BERT's tensors are {want.dtype}: keep "
                "their dtype (no .float())."
            )
        if not _equal(got.detach().cpu(), want):
            problem = _bert_key_problem(name, got.detach().cpu(), bert)
            raise ExerciseError(f"{what}: {name} is not right. Likely mistake: {problem}")
    _expect_bert_layer_runs(out, bert, C, H, d_ff, seed, what)


def _expect_bert_layer_runs(
    ours: Mapping[str, Tensor],
    bert: Mapping[str, Tensor],
    C: int,
    H: int,
    d_ff: int,
    seed: int,
    what: str,
) -> None:
    """Load the weights into an EncoderLayer and compare it with BERT's layer, padding and all."""
    x = random_tensor(2, 5, C, seed=seed)
    padding_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    layer = EncoderLayer(C, H, d_ff, activation="gelu", norm_first=False).double().eval()
    layer.norm1.eps = layer.norm2.eps = BERT_EPS
    try:
        with quiet(), torch.no_grad():
            layer.load_state_dict({name: value.detach().cpu() for name, value in ours.items()})
            got = layer(x, padding_mask=padding_mask)
    except Exception as error:  # noqa: BLE001 - whatever the learner's tensors do
        raise ExerciseError(f"{what}: an EncoderLayer with your weights failed: {error}") from None
    want = _bert_layer_reference(bert, x, padding_mask, H)
    expect_close(
        got, want, what=f"{what}: the EncoderLayer with your weights", atol=1e-10, rtol=1e-8
    )


def check_bert_layer_to_tutorlib(fn: Callable, hidden: bool = False) -> None:
    """Learner's `bert_layer_to_tutorlib(bert: dict of BertLayer's tensors) -> dict of
    EncoderLayer's tensors`, checked name by name and by running the layer."""
    cases = [(8, 2, 12, 1), (12, 3, 20, 2), (16, 4, 24, 3)] if hidden else [(8, 2, 12, 0)]
    for case in cases:
        _bert_case(fn, *case)
    report_ok("bert_layer_to_tutorlib", hidden)


# --- 8. GPT-2's attention in nn.MultiheadAttention ----------------------------------------------


def _gpt2_attention_weights(C: int, seed: int) -> dict[str, Tensor]:
    """Random float64 weights under the names of GPT-2's attention (`GPT2Attention`): Conv1D
    weights stored (in, out)."""
    g = [
        random_tensor(*shape, seed=100 * seed + i)
        for i, shape in enumerate([(C, 3 * C), (3 * C,), (C, C), (C,)])
    ]
    return {
        "c_attn.weight": g[0] / math.sqrt(C),
        "c_attn.bias": g[1],
        "c_proj.weight": g[2] / math.sqrt(C),
        "c_proj.bias": g[3],
    }


def _gpt2_map(gpt2: Mapping[str, Tensor], kind: str = "") -> dict[str, Tensor]:
    w_attn, w_proj = gpt2["c_attn.weight"], gpt2["c_proj.weight"]
    C = w_proj.shape[0]
    in_proj = {"reshaped": w_attn.reshape(3 * C, C)}.get(kind, w_attn.T)
    return {
        "in_proj_weight": in_proj,
        "in_proj_bias": gpt2["c_attn.bias"],
        "out_proj.weight": w_proj if kind == "proj_not_transposed" else w_proj.T,
        "out_proj.bias": gpt2["c_proj.bias"],
    }


GPT2_MISTAKES = {
    "reshaped": "c_attn.weight was reshaped to (3C, C); a reshape keeps the numbers in memory "
    "order, it does not transpose. Conv1D stores (in, out): use .T (or .t()).",
    "proj_not_transposed": "c_proj.weight was copied as it is; it is a Conv1D weight too, "
    "stored (in, out), so it needs .T like c_attn.weight (being square, it fits either way).",
}


def _gpt2_attention_reference(gpt2: Mapping[str, Tensor], x: Tensor, n_heads: int) -> Tensor:
    """GPT-2's causal self-attention, written out with its Conv1D layout (x @ W + b).

    Shapes:
        x (B, T, C)  ->  (B, T, C)
    """
    B, T, C = x.shape
    H, D = n_heads, C // n_heads
    qkv = x @ gpt2["c_attn.weight"] + gpt2["c_attn.bias"]  # (B, T, 3C)
    q, k, v = (t.reshape(B, T, H, D).transpose(1, 2) for t in qkv.split(C, dim=-1))
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    scores = scores.masked_fill(~causal, -_INF)
    attended = (_softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, T, C)
    return attended @ gpt2["c_proj.weight"] + gpt2["c_proj.bias"]


def _gpt2_case(fn: Callable, C: int, H: int, seed: int) -> None:
    gpt2 = _gpt2_attention_weights(C, seed)
    given = {name: value.clone() for name, value in gpt2.items()}
    forbidden = _existing(
        "tutorlib.pretrained",
        ["gpt2_state_dict_to_tutorlib", "gpt2_to_tutorlib", "load_state_dict_checked", "_convert"],
    )
    out = run_candidate(fn, given, exercise="gpt2_attention_to_tutorlib", forbidden=forbidden)
    what = f"gpt2_attention_to_tutorlib for C = {C}, {H} heads"
    expected = _gpt2_map(gpt2)
    if not isinstance(out, Mapping):
        raise ExerciseError(
            f"{what} should return a dict from nn.MultiheadAttention's parameter names to "
            f"tensors, got {type(out).__name__}."
        )
    if set(out) != set(expected):
        raise ExerciseError(
            f"{what}: the names do not fit nn.MultiheadAttention: got {sorted(map(str, out))}, "
            f"expected {sorted(expected)}."
        )
    for name, want in expected.items():
        got = out[name]
        if not isinstance(got, Tensor):
            raise ExerciseError(f"{what}: {name} should be a tensor, got {type(got).__name__}.")
        got = got.detach().cpu()
        if got.shape != want.shape:
            hint = (
                " Conv1D stores its weight (in, out), nn.Linear (out, in): transpose it (.T)."
                if got.dim() == 2 and got.T.shape == want.shape
                else ""
            )
            raise ExerciseError(
                f"{what}: {name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}." + hint
            )
        if got.dtype != want.dtype:
            raise ExerciseError(f"{what}: {name} has dtype {got.dtype}, expected {want.dtype}.")
        if not _equal(got, want):
            for kind, hint in GPT2_MISTAKES.items():
                if _equal(got, _gpt2_map(gpt2, kind)[name]):
                    raise ExerciseError(f"{what}: {name} is not right. Likely mistake: {hint}")
            raise ExerciseError(
                f"{what}: {name} is not right: in_proj_weight is c_attn.weight transposed, "
                "out_proj.weight is c_proj.weight transposed, the biases are copied."
            )
    x = random_tensor(2, 6, C, seed=seed)
    blocked = ~torch.ones(6, 6, dtype=torch.bool).tril()  # torch's mask: True = blocked
    attention = torch.nn.MultiheadAttention(C, H, batch_first=True).double().eval()
    try:
        with quiet(), torch.no_grad():
            attention.load_state_dict({n: value.detach().cpu() for n, value in out.items()})
            got, _ = attention(x, x, x, attn_mask=blocked, need_weights=False)
    except Exception as error:  # noqa: BLE001 - whatever the learner's tensors do
        raise ExerciseError(
            f"{what}: MultiheadAttention with your weights failed: {error}"
        ) from None
    want = _gpt2_attention_reference(gpt2, x, H)
    expect_close(got, want, what=f"{what}: the attention with your weights", atol=1e-10, rtol=1e-8)


def check_gpt2_attention_to_tutorlib(fn: Callable, hidden: bool = False) -> None:
    """Learner's `gpt2_attention_to_tutorlib(gpt2: dict of GPT2Attention's tensors) -> dict of
    nn.MultiheadAttention's tensors`."""
    cases = [(8, 2, 1), (12, 3, 2), (6, 1, 3)] if hidden else [(8, 2, 0)]
    for case in cases:
        _gpt2_case(fn, *case)
    report_ok("gpt2_attention_to_tutorlib", hidden)


# --- 9. Images as token sequences ---------------------------------------------------------------


def _sequences(images: Tensor, labels: Tensor, levels: int, kind: str = "") -> Tensor:
    """Class token levels + label, then the pixels' levels round(x * (levels - 1)) row by row."""
    scaled = images * (levels - 1)
    if kind == "floor":
        pixels = scaled.floor().long()
    elif kind == "bins":
        pixels = (images * levels).floor().clamp(max=levels - 1).long()
    else:
        pixels = scaled.round().long()  # (B, 1, H, W)
    if kind == "column_major":
        pixels = pixels.transpose(-2, -1)
    flat = pixels.flatten(1)  # (B, H*W)
    classes = (labels if kind == "no_offset" else levels + labels)[:, None]  # (B, 1)
    if kind == "class_last":
        return _cat([flat, classes], dim=1)
    return _cat([classes, flat], dim=1)  # (B, 1 + H*W)


PIXEL_MISTAKES = {
    "column_major": "the pixels are in column-major order; read them row by row, left to right "
    "(pixel (r, c) is token 1 + r * W + c).",
    "floor": "the grey values were rounded down; round them to the *nearest* level: level k "
    "stands for the grey value k / (levels - 1), so the level is round(x * (levels - 1)).",
    "bins": "the grey values were cut into `levels` equal bins (floor(x * levels)); here level k "
    "stands for the grey value k / (levels - 1): round(x * (levels - 1)).",
    "no_offset": "the class token is the label itself, an id the pixels use too. Class c is the "
    "id levels + c, after the pixel ids 0 .. levels - 1.",
    "class_last": "the class token is at the end; it goes first, so that every pixel is "
    "generated knowing the class.",
}


def _pixels_case(fn: Callable, images: Tensor, labels: Tensor, levels: int) -> None:
    given_images, given_labels = images.clone(), labels.clone()
    forbidden = _existing(
        "tutorlib.pixels", ["images_to_sequences", "quantise", "sequences_to_images"]
    )
    out = run_candidate(
        fn, given_images, given_labels, levels, exercise="images_to_sequences", forbidden=forbidden
    )
    B, _, H, W = images.shape
    what = f"images_to_sequences for {B} images of {H} x {W} pixels with {levels} levels"
    if isinstance(out, Tensor) and out.shape == (B, H * W):
        raise ExerciseError(
            f"{what} has shape {(B, H * W)}, expected {(B, 1 + H * W)}: put the class token "
            "(levels + label) in front of each image's pixels."
        )
    mistakes = {
        hint: _sequences(images, labels, levels, kind) for kind, hint in PIXEL_MISTAKES.items()
    }
    _expect_ints(out, _sequences(images, labels, levels), what, mistakes)


def check_images_to_sequences(fn: Callable, hidden: bool = False) -> None:
    """Learner's `images_to_sequences(images (B, 1, H, W) in [0, 1], labels (B,), levels) ->
    (B, 1 + H W)`: the class token levels + label, then the pixels' levels in raster order."""
    g = torch.Generator().manual_seed(0)
    if hidden:
        corners = torch.rand(1, 1, 3, 3, generator=g, dtype=torch.float64)
        corners[0, 0, 0, 0], corners[0, 0, 2, 2] = 0.0, 1.0  # the two ends of the scale
        cases = [
            (torch.rand(3, 1, 4, 5, generator=g, dtype=torch.float64), torch.tensor([9, 0, 4]), 8),
            (torch.rand(1, 1, 8, 8, generator=g, dtype=torch.float64), torch.tensor([2]), 2),
            (corners, torch.tensor([5]), 17),
            (torch.rand(2, 1, 6, 2, generator=g, dtype=torch.float64), torch.tensor([1, 1]), 4),
        ]
    else:
        images = torch.tensor(
            [[[[0.0, 0.1, 0.45], [0.6, 0.95, 1.0]]], [[[1.0, 0.7, 0.2], [0.3, 0.0, 0.55]]]],
            dtype=torch.float64,
        )
        cases = [(images, torch.tensor([3, 7]), 4)]
    for case in cases:
        _pixels_case(fn, *case)
    report_ok("images_to_sequences", hidden)


# --- 10. Distinct-n -----------------------------------------------------------------------------


def _ngrams(sequence: Any, n: int, stop: int = 0) -> list[tuple]:
    return [tuple(sequence[i : i + n]) for i in range(len(sequence) - n + 1 - stop)]


def _distinct_variant(sequences: list, n: int, kind: str) -> float | None:
    """What a likely mistake returns, or None where it would divide by zero."""
    if kind == "across":
        joined = [x for s in sequences for x in s]
        grams = _ngrams(joined, n)
        return len(set(grams)) / len(grams) if grams else None
    if kind == "off_by_one":
        grams = [g for s in sequences for g in _ngrams(s, n, stop=1)]
        return len(set(grams)) / len(grams) if grams else None
    grams = [g for s in sequences for g in _ngrams(s, n)]
    if not grams:
        return None
    if kind == "unique":
        counts = Counter(grams)
        return sum(1 for c in counts.values() if c == 1) / len(grams)
    if kind == "per_sequence_sum":
        return sum(len(set(_ngrams(s, n))) for s in sequences) / len(grams)
    if kind == "per_sequence_mean":
        ratios = [len(set(_ngrams(s, n))) / len(_ngrams(s, n)) for s in sequences if len(s) >= n]
        return sum(ratios) / len(ratios)
    if kind == "inverted":
        return len(grams) / len(set(grams))
    raise ValueError(kind)


DISTINCT_MISTAKES = {
    "per_sequence_mean": "the ratio was computed per sequence and averaged; distinct-n counts "
    "the distinct n-grams of all the sequences together, over all their n-grams.",
    "per_sequence_sum": "the distinct n-grams were counted per sequence and added up, so an "
    "n-gram that occurs in two sequences counts twice; collect them in one set.",
    "across": "n-grams were taken across the boundaries between sequences (the sequences were "
    "joined first); take the n-grams of each sequence separately.",
    "off_by_one": "the last n-gram of each sequence is missing: a sequence of length L has "
    "L - n + 1 n-grams, range(len(s) - n + 1).",
    "unique": "only the n-grams that occur exactly once were counted; count every *distinct* "
    "n-gram (len(set(...))).",
    "inverted": "the ratio is upside down: distinct n-grams divided by all n-grams (at most 1).",
}


def _distinct_case(fn: Callable, sequences: list, n: int) -> None:
    given = [list(s) if isinstance(s, list) else s for s in sequences]
    forbidden = [(generation, "distinct_n")]
    out = _run(
        fn,
        given,
        n,
        exercise="distinct_n",
        forbidden=forbidden,
        hints={
            "unhashable": "lists cannot go into a set: make each n-gram a tuple, "
            "tuple(s[i : i + n])."
        },
    )
    shown = sequences if sum(len(s) for s in sequences) < 40 else "random token sequences"
    what = f"distinct_n({shown}, n={n})"
    if isinstance(out, Tensor) and out.numel() == 1:
        out = float(out)
    if isinstance(out, bool) or not isinstance(out, numbers.Real):
        raise ExerciseError(f"{what} should return a number, got {type(out).__name__}.")
    expected = _distinct_n(sequences, n)
    if math.isclose(out, expected, rel_tol=1e-6, abs_tol=1e-9):
        return
    for kind, hint in DISTINCT_MISTAKES.items():
        wrong = _distinct_variant(sequences, n, kind)
        if wrong is not None and not math.isclose(wrong, expected, rel_tol=1e-6, abs_tol=1e-9):
            if math.isclose(out, wrong, rel_tol=1e-6, abs_tol=1e-9):
                raise ExerciseError(f"{what} returned {out:.4f}. Likely mistake: {hint}")
    raise ExerciseError(f"{what} returned {out!r}, expected {expected:.6f}.")


def check_distinct_n(fn: Callable, hidden: bool = False) -> None:
    """Learner's `distinct_n(sequences, n) -> float`: distinct n-grams over all n-grams of all
    the sequences (lists of token ids or strings), n-grams never crossing two sequences."""
    if hidden:
        g = torch.Generator().manual_seed(0)
        random_lists = [
            torch.randint(0, 4, (int(L),), generator=g).tolist()
            for L in torch.randint(3, 20, (12,), generator=g)
        ]
        cases = [
            (["the cat", "the hat", "a cat sat"], 2),
            (["the cat", "the hat", "a cat sat"], 1),
            (["abcabc", "cab"], 3),
            ([[1, 2, 3, 4], [1], [], [2, 3, 4, 5, 2, 3]], 2),
            ([[7, 7, 7, 7, 7]], 1),
            ([[1, 2], [2, 1], [1, 2]], 2),
            (random_lists, 2),
            (random_lists, 3),
        ]
    else:
        cases = [([[1, 2, 1, 2, 3], [3, 1, 2]], 2)]
    for sequences, n in cases:
        _distinct_case(fn, sequences, n)
    report_ok("distinct_n", hidden)


watch_module(__name__)
