"""Checks for the Chapter 6 exercises (solutions/06_generative).

Each `check_*` takes the learner's function. With `hidden=False` it runs the visible tests (the
notebook's worked examples); with `hidden=True` the hidden ones: property tests on sizes and
values drawn when they run (`tutorlib.checks.draw`), with the special cases that tell the likely
mistakes apart in every draw (drawn again until they do). While the learner's code runs,
tutorlib's reference (tutorlib.generation, tutorlib.decoding, tutorlib.pixels,
tutorlib.pretrained) is out of reach, and so are Hugging Face's logits processors and loss when
the learner has loaded `transformers` (`tutorlib.checks.guard`).

The filters (top-k, top-p) are checked by the set of tokens they keep, so any tie-break at the
k-th value is accepted. The sampler is checked by its statistics (a right sampler fails a check
call with a probability below 1e-8, see SAMPLING_TOLERANCE) and by its generator: two calls with
generators seeded alike agree, two seeded differently do not. The references for one
beam-search step, the BERT and GPT-2 weight maps, the pixel tokens and distinct-n are written
out here, next to the likely mistakes; tests/test_checks_generative.py compares the BERT and
GPT-2 ones with Hugging Face's layers.

Book: Chapter 6 exercises.
"""

from __future__ import annotations

import importlib
import itertools
import math
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tutorlib import decoding, generation, pixels, pretrained
from tutorlib.checks import (
    Draw,
    Exercise,
    ExerciseError,
    Forbidden,
    expect_close,
    expect_equal,
    expect_state_dict,
    quiet,
    random_tensor,
    watch_module,
)
from tutorlib.checks.errors import record_reference
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
_top_k_filter = generation.top_k_filter
_top_p_filter = generation.top_p_filter
_apply_repetition_penalty = generation.apply_repetition_penalty
_distinct_n = generation.distinct_n
_cross_entropy, _nll_loss, _log_softmax = F.cross_entropy, F.nll_loss, F.log_softmax
_softmax, _one_hot = torch.softmax, F.one_hot
_linear, _layer_norm, _gelu = F.linear, F.layer_norm, F.gelu
_cat, _equal, _isfinite, _bincount = torch.cat, torch.equal, torch.isfinite, torch.bincount
_topk = torch.topk
_MultiheadAttention = nn.MultiheadAttention

_INF = float("inf")


def _hugging_face(module_name: str, names: tuple[str, ...]) -> tuple[Any, ...]:
    """Hugging Face's functions or classes `names` of `module_name`, once the learner has loaded
    transformers (importing it here would cost seconds in every notebook)."""
    if "transformers" not in sys.modules:
        return ()
    module = sys.modules.get(module_name)
    if module is None:
        try:
            with quiet():
                module = importlib.import_module(module_name)
        except Exception:  # noqa: BLE001 - a broken transformers install is not the learner's
            return ()
    return tuple(getattr(module, name) for name in names if hasattr(module, name))


def _logits_processors(*names: str) -> tuple[Any, ...]:
    return _hugging_face("transformers.generation.logits_process", names)


def _separated(values: Sequence[Any], gap: float = 0.0) -> bool:
    """No two of `values` (tensors or numbers; None = not applicable) are equal (tensors with
    -inf in the same places count as equal), nor closer than `gap`."""
    present = [v for v in values if v is not None]
    for a, b in itertools.combinations(present, 2):
        if isinstance(a, Tensor):
            if a.shape != b.shape:
                continue
            if not a.is_floating_point():
                if _equal(a, b):
                    return False
                continue
            if _equal(_isfinite(a), _isfinite(b)) and _equal(a[~_isfinite(a)], b[~_isfinite(b)]):
                finite = _isfinite(a)
                if not finite.any() or float((a[finite] - b[finite]).abs().max()) <= gap:
                    return False
        elif abs(a - b) <= gap:
            return False
    return True


def _named(mistakes: Mapping[str, Any]) -> dict[str, Any]:
    """`mistakes` (hint -> value, None where the mistake does not apply) with the mistakes that
    give the same value on this case named together, as expect_equal does for plain values: a
    case that cannot tell them apart names them all."""
    groups: list[tuple[list[str], Any]] = []
    for hint, value in mistakes.items():
        if value is None:
            continue
        same = next((hints for hints, other in groups if not _separated([value, other])), None)
        if same is None:
            groups.append(([hint], value))
        else:
            same.append(hint)
    return {
        hints[0] if len(hints) == 1 else "one of these. " + " Or: ".join(hints): value
        for hints, value in groups
    }


def _redraw(draw_case: Callable[[], Any], good: Callable[[Any], bool]) -> Any:
    """A case from `draw_case`, drawn again until `good` says it tells the likely mistakes
    apart (it does within a few tries; tests/test_checks_generative.py checks many seeds)."""
    for _ in range(1000):
        case = draw_case()
        if good(case):
            return case
    raise RuntimeError("no hidden case separates the likely mistakes")  # never in practice


# --- 1. The causal language-modelling loss ------------------------------------------------------

# Hugging Face's ForCausalLMLoss shifts and averages too.
LM_FORBIDDEN = (generation.causal_lm_loss, generation.sequence_perplexity)


def _lm_loss(logits: Tensor, tokens: Tensor, kind: str = "") -> Tensor | None:
    """The reference's loss, or a likely mistake's (None where it would raise)."""
    B, T, V = logits.shape
    if kind == "unshifted":
        return _cross_entropy(logits.reshape(-1, V), tokens.reshape(-1))
    if kind == "backwards":  # logits at t + 1 against the token at t
        predictions, targets = logits[:, 1:], tokens[:, :-1]
    else:
        predictions, targets = logits[:, :-1], tokens[:, 1:]
    if kind == "classes_in_dim_1":  # F.cross_entropy reads dim 1 (time) as the classes
        return _cross_entropy(predictions, targets) if predictions.shape[1] == V else None
    if kind == "softmax_over_time":
        log_probs = _log_softmax(predictions, dim=1)  # (B, T-1, V), normalised over positions
        return -log_probs.gather(-1, targets.unsqueeze(-1)).mean()
    flat, flat_targets = predictions.reshape(-1, V), targets.reshape(-1)  # (B*(T-1), V)
    if kind == "nll_of_logits":
        return _nll_loss(flat, flat_targets)
    if kind == "probabilities":
        return _cross_entropy(_softmax(flat, dim=-1), flat_targets)
    per_token = _cross_entropy(flat, flat_targets, reduction="none")  # (B*(T-1),)
    if kind == "sum":
        return per_token.sum()
    if kind == "per_sequence_sum":
        return per_token.sum() / B
    if kind == "over_B_T":
        return per_token.sum() / (B * T)
    if kind == "over_vocabulary":
        return per_token.mean() / V
    return per_token.mean()


LM_LOSS_MISTAKES = {
    "unshifted": "the targets are not shifted: the logits at position t predict the *next* "
    "token, so compare logits[:, :-1] with tokens[:, 1:] (T - 1 predictions per sequence).",
    "backwards": "the shift goes the wrong way: the logits at t predict token t + 1, so drop the "
    "*last* position of the logits and the *first* token (logits[:, :-1] against tokens[:, 1:]).",
    "sum": "the losses are summed: take the mean over all B * (T - 1) predictions.",
    "per_sequence_sum": "the losses are summed over time and averaged over the batch only: take "
    "the mean over all B * (T - 1) predictions.",
    "over_B_T": "the sum was divided by B * T; there are B * (T - 1) predictions (the last "
    "position has no next token).",
    "over_vocabulary": "the mean ran over the vocabulary too: average the B * (T - 1) per-token "
    "losses, not the B * (T - 1) * V entries of the log-probabilities.",
    "softmax_over_time": "the log-softmax runs over the positions (dim=1); it must run over the "
    "vocabulary, the last dimension.",
    "classes_in_dim_1": "F.cross_entropy read the positions as the classes: it wants the classes "
    "in dimension 1, so reshape the logits to (B * (T - 1), V) and the targets to "
    "(B * (T - 1),) first.",
    "nll_of_logits": "F.nll_loss was given raw logits; it expects log-probabilities. Use "
    "F.cross_entropy on the logits (it takes the log-softmax itself), or log_softmax first.",
    "probabilities": "F.cross_entropy was given probabilities; it takes the logits and applies "
    "the log-softmax itself: leave out the softmax.",
}

LM_LOSS_ERRORS = {
    "expected target size": "F.cross_entropy wants the classes in dimension 1: reshape the logits "
    "to (B * (T - 1), V) and the targets to (B * (T - 1),) first.",
    "to match target batch_size": "the predictions and the targets must line up: drop the last "
    "position of the logits (logits[:, :-1]) and the first token (tokens[:, 1:]), so that both "
    "have B * (T - 1) entries.",
    "view size is not compatible": "slices like logits[:, :-1] are not contiguous in memory: use "
    ".reshape(...) instead of .view(...).",
}


def _lm_hidden(draw: Draw) -> list[tuple[Tensor, Tensor]]:
    """Logits (B, T, V) with gradients and tokens (B, T): B >= 2 and T >= 4 first (every
    reduction differs), then T = 2 (one prediction per sequence), then V = T - 1 (where the
    classes-in-dim-1 mistake runs without an error)."""

    def case(B: int, T: int, V: int) -> tuple[Tensor, Tensor]:
        return draw.normal(B, T, V, scale=draw.real(0.5, 2.0), grad=True), draw.integers(
            0, V, (B, T)
        )

    T = draw.integer(4, 9)
    T_eq = draw.integer(4, 8)
    return [
        case(draw.integer(2, 4), T, draw.choice([v for v in range(3, 13) if v != T - 1])),
        case(draw.integer(2, 4), 2, draw.integer(2, 12)),
        case(draw.integer(2, 3), T_eq, T_eq - 1),
    ]


def _check_lm_case(ex: Exercise, fn: Callable, logits: Tensor, tokens: Tensor) -> None:
    out = ex.call(fn, logits, tokens, hints=LM_LOSS_ERRORS)
    expected = _causal_lm_loss(logits, tokens)
    ld = logits.detach()
    mistakes = {hint: _lm_loss(ld, tokens, kind) for kind, hint in LM_LOSS_MISTAKES.items()}
    expect_close(
        out,
        expected,
        what=f"causal_lm_loss for logits of shape {tuple(logits.shape)}",
        mistakes=_named(mistakes),
        atol=1e-8,
        rtol=1e-7,
    )
    if logits.requires_grad:
        ex.expect_backward(out, expected, {"logits": logits}, "causal_lm_loss")


def check_causal_lm_loss(fn: Callable, hidden: bool = False) -> None:
    """Learner's `causal_lm_loss(logits (B, T, V), tokens (B, T)) -> scalar`: the mean
    cross-entropy of predicting token t + 1 from the logits at t."""
    forbidden = Forbidden(
        python=LM_FORBIDDEN + _hugging_face("transformers.loss.loss_utils", ("ForCausalLMLoss",))
    )
    with Exercise("causal_lm_loss", hidden, forbidden) as ex:
        if hidden:
            cases = _lm_hidden(ex.draw)
        else:
            tokens = torch.randint(0, 4, (2, 6), generator=torch.Generator().manual_seed(0))
            cases = [(random_tensor(2, 6, 4, seed=0), tokens)]
        for logits, tokens in cases:
            _check_lm_case(ex, fn, logits, tokens)


# --- 2. Sampling with a temperature -------------------------------------------------------------

# the samplers that draw for the learner (Hugging Face's TemperatureLogitsWarper too)
SAMPLING_FORBIDDEN = (generation.sample_next, generation.apply_temperature, generation.sample)

# Each of R distinct rows is repeated DRAWS times, so one call gives DRAWS draws from each. A
# token's frequency is a mean of DRAWS independent 0/1 draws; by Hoeffding's inequality it lies
# farther than SAMPLING_TOLERANCE from its probability with a chance of at most
# 2 exp(-2 DRAWS SAMPLING_TOLERANCE^2) = 2 exp(-24.5) < 5e-11. A check call looks at no more than
# 3 rows x 7 tokens in each of 2 cases (visible: 2 x 4), 42 frequencies: a right sampler fails
# with a chance below 42 * 5e-11 < 3e-9 (below the 1e-6 we allow per call). Each hidden case's
# mistaken distributions lie at least SEPARATION > 2 SAMPLING_TOLERANCE from the right one and
# from each other (the visible one's at least 0.08), so a mistaken sampler fails, and is named,
# with the same certainty. Two calls with differently seeded generators agree on one draw with a
# chance of sum(p^2) <= max(p) <= 0.88 (the argmax mistake lies SEPARATION away): on all
# DRAWS * R draws, never in practice.
DRAWS = 10_000
SAMPLING_TOLERANCE = 0.035
SEPARATION = 0.12


def _sampling_variants(rows: Tensor, T: float) -> dict[str, Tensor]:
    """The distribution (R, V) that each likely mistake draws from, for R distinct rows."""
    scaled = rows / T
    column = scaled.exp() / scaled.exp().sum(dim=0, keepdim=True)  # softmax over the batch
    return {
        "after_softmax": _softmax(rows, dim=-1),
        "multiplied": _softmax(rows * T, dim=-1),
        "argmax": _one_hot(rows.argmax(dim=-1), rows.shape[-1]).to(rows.dtype),
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


def _sampling_separation(rows: Tensor, T: float) -> float:
    """The smallest distance (largest absolute difference) between the right distribution and
    the mistakes', and between two mistakes'."""
    found = [_softmax(rows / T, dim=-1), *_sampling_variants(rows, T).values()]
    return min(float((a - b).abs().max()) for a, b in itertools.combinations(found, 2))


def _sampling_hidden(draw: Draw) -> list[tuple[Tensor, float, tuple[int, int]]]:
    """(rows, temperature, two generator seeds): a cool and a hot temperature on 2-3 distinct
    rows that tell every mistake apart, a single row (B = 1), and temperature 0."""

    def seeds() -> tuple[int, int]:
        return draw.generator().initial_seed(), draw.generator().initial_seed()

    cases = []
    for low, high in ((0.3, 0.7), (1.5, 3.0)):

        def sampling_case(low: float = low, high: float = high) -> tuple[Tensor, float]:
            R, V, T = draw.integer(2, 3), draw.integer(3, 7), round(draw.real(low, high), 2)
            return draw.normal(R, V, scale=draw.real(1.0, 2.5)), T

        rows, T = _redraw(sampling_case, lambda c: _sampling_separation(*c) >= SEPARATION)
        cases.append((rows, T, seeds()))
    cases.append((draw.normal(1, draw.integer(3, 9)), round(draw.real(0.5, 2.0), 2), seeds()))
    cases.append((draw.normal(draw.integer(2, 5), draw.integer(3, 9)), 0.0, seeds()))
    return cases


def _token_ids(ex: Exercise, fn: Callable, logits: Tensor, T: float, seed: int) -> Tensor:
    """The learner's draws for `logits` (B, V) with a generator seeded `seed`, after checks of
    their form (the range is checked by the caller, once the reference is known)."""
    generator = torch.Generator().manual_seed(seed)
    out = ex.call(fn, logits, T, generator, hints=GREEDY_ERRORS if T == 0 else SAMPLING_ERRORS)
    B, V = logits.shape
    what = f"sample_with_temperature on a ({B}, {V}) input at temperature {T}"
    if not isinstance(out, Tensor):
        raise ExerciseError(
            f"{what} should return a torch.Tensor of token ids", got=type(out).__name__
        )
    if tuple(out.shape) == (B, 1):
        raise ExerciseError(
            f"{what} returned shape {(B, 1)}",
            hint=f"torch.multinomial(probs, 1) has shape (B, 1): return one id per row, shape "
            f"({B},), with .squeeze(-1).",
        )
    if out.dim() == 0 and B == 1:
        raise ExerciseError(
            f"{what} returned a 0-dimensional tensor",
            hint=".squeeze() also drops the batch dimension when there is a single row: use "
            ".squeeze(-1), so that the result has shape (B,).",
        )
    if tuple(out.shape) != (B,):
        raise ExerciseError(
            f"{what} returned shape {tuple(out.shape)}",
            hint=f"one token id per row of logits: shape ({B},).",
            likely=False,
        )
    if out.dtype != torch.long:
        raise ExerciseError(
            f"{what} returned dtype {out.dtype}",
            hint="token ids are int64 (torch.multinomial and argmax return int64).",
            likely=False,
        )
    return out.detach().cpu()


def _expect_ids_in_range(ids: Tensor, V: int, what: str) -> None:
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= V):
        raise ExerciseError(
            f"{what} returned ids outside [0, {V})", got=f"ids {int(ids.min())}..{int(ids.max())}"
        )


def _check_sampling_case(
    ex: Exercise, fn: Callable, rows: Tensor, T: float, seeds: tuple[int, int]
) -> None:
    R, V = rows.shape
    logits = rows.repeat(DRAWS, 1)  # (DRAWS * R, V): row i is rows[i % R]
    out = _token_ids(ex, fn, logits, T, seeds[0])
    expected = _softmax(_apply_temperature(rows, T), dim=-1)  # (R, V)
    record_reference(expected)
    shown = "" if ex.hidden else f" on the rows {rows.tolist()}"
    what = f"sample_with_temperature at temperature {T}{shown}"
    _expect_ids_in_range(out, V, what)
    by_row = out.reshape(DRAWS, R).T  # (R, DRAWS): the draws from each distinct row
    counts = torch.stack([_bincount(d, minlength=V) for d in by_row])  # (R, V)
    frequencies = counts.double() / DRAWS

    def distance(p: Tensor) -> float:
        return float((frequencies - p).abs().max())

    if distance(expected) > SAMPLING_TOLERANCE:
        near = [
            (distance(p), SAMPLING_MISTAKES[kind])
            for kind, p in _sampling_variants(rows, T).items()
            if distance(p) <= SAMPLING_TOLERANCE
        ]
        if near:
            raise ExerciseError(
                f"{what}: the draws do not follow softmax(logits / T)", hint=min(near)[1]
            )
        gap = (frequencies - expected).abs()
        r, v = (int(i) for i in torch.nonzero(gap == gap.max())[0])
        raise ExerciseError(
            f"{what}: the draws do not follow softmax(logits / T). Token {v} of row {r}, in "
            f"{DRAWS:,} draws",
            got=f"{int(counts[r, v])} times",
            expected=f"a probability of {float(expected[r, v]):.3f}",
        )
    again = _token_ids(ex, fn, logits, T, seeds[0])
    if not _equal(again, out):
        raise ExerciseError(
            f"{what}: two calls with generators seeded alike gave different tokens",
            hint="pass generator=generator to torch.multinomial (or to whatever draws the "
            "random numbers).",
        )
    other = _token_ids(ex, fn, logits, T, seeds[1])
    if _equal(other, out):
        raise ExerciseError(
            f"{what}: two calls with generators seeded differently gave the same {DRAWS * R:,} "
            "tokens",
            hint="the draws must come from the generator passed in: pass generator=generator "
            "to torch.multinomial, and do not seed torch's global generator yourself "
            "(torch.manual_seed).",
        )


def _check_single_row_case(
    ex: Exercise, fn: Callable, rows: Tensor, T: float, seeds: tuple[int, int]
) -> None:
    out = _token_ids(ex, fn, rows, T, seeds[0])
    record_reference(_softmax(_apply_temperature(rows, T), dim=-1))
    _expect_ids_in_range(out, rows.shape[-1], f"sample_with_temperature at temperature {T}")


def _check_greedy_case(
    ex: Exercise, fn: Callable, logits: Tensor, T: float, seeds: tuple[int, int]
) -> None:
    out = _token_ids(ex, fn, logits, 0.0, seeds[0])
    B, V = logits.shape
    expect_equal(
        out,
        logits.argmax(dim=-1),
        what=f"sample_with_temperature at temperature 0 on a ({B}, {V}) input",
        mistakes={
            "temperature 0 means greedy decoding: the arg max of each row, over the vocabulary "
            "(dim=-1), not the arg min.": logits.argmin(dim=-1)
        },
    )


def check_sample_with_temperature(fn: Callable, hidden: bool = False) -> None:
    """Learner's `sample_with_temperature(logits (B, V), temperature, generator) -> (B,)`:
    one draw per row from softmax(logits / tau); tau = 0 is greedy. Checked statistically."""
    forbidden = Forbidden(python=SAMPLING_FORBIDDEN + _logits_processors("TemperatureLogitsWarper"))
    with Exercise("sample_with_temperature", hidden, forbidden) as ex:
        if hidden:
            cases = _sampling_hidden(ex.draw)
        else:
            rows = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 1.0, 0.5, 0.0]], dtype=torch.float64)
            cases = [(rows, 0.5, (0, 1))]
        for rows, T, seeds in cases:
            if T == 0:
                _check_greedy_case(ex, fn, rows, T, seeds)
            elif len(rows) == 1:
                _check_single_row_case(ex, fn, rows, T, seeds)
            else:
                _check_sampling_case(ex, fn, rows, T, seeds)


# --- 3 and 4. The filters: which tokens are kept -------------------------------------------------


def _kept(out: Any, logits: Tensor, name: str, in_sorted_order: Tensor | None = None) -> Tensor:
    """The mask of the tokens the learner's filter kept (True = kept), after checks of its
    output's form: the filtered logits, the kept ones unchanged and the others -inf."""
    what = f"{name} on a {tuple(logits.shape)} input"
    if not isinstance(out, Tensor):
        raise ExerciseError(f"{what} should return a torch.Tensor", got=type(out).__name__)
    out = out.detach().cpu()
    if out.shape != logits.shape:
        raise ExerciseError(
            f"{what} returned shape {tuple(out.shape)}",
            hint=f"return the filtered logits, shape {tuple(logits.shape)}: one per token of the "
            "vocabulary (the removed ones set to -inf).",
            likely=False,
        )
    if not out.is_floating_point():
        raise ExerciseError(
            f"{what} returned dtype {out.dtype}",
            hint="return the filtered logits (a float tensor like the input, -inf where a token "
            "is removed), not indices or a mask.",
            likely=False,
        )
    if out.dtype != logits.dtype:
        raise ExerciseError(
            f"{what} returned dtype {out.dtype}, not {logits.dtype}",
            hint="keep the logits' dtype (logits.masked_fill(...) does).",
            likely=False,
        )
    if in_sorted_order is not None and _equal(out, in_sorted_order):
        raise ExerciseError(
            f"{what} returned the logits in sorted order",
            hint="the kept set was not put back in the vocabulary's order: scatter the sorted "
            "mask back with the sort's indices (mask.scatter(-1, order, sorted_mask)).",
        )
    finite = _isfinite(out)
    if bool(finite.all()) and not _equal(out, logits):
        if bool((out >= 0).all()) and bool(((out.sum(dim=-1) - 1).abs() < 1e-6).all()):
            raise ExerciseError(
                f"{what} returned probabilities",
                hint="return the filtered *logits*: the kept logits unchanged, -inf for the "
                "others; the softmax comes after the filters.",
            )
    if bool(torch.isnan(out).any()) or bool((out == _INF).any()):
        raise ExerciseError(
            f"{what} returned NaN or +inf",
            hint="a removed token's logit is -inf (float('-inf')).",
            likely=False,
        )
    keep = out == logits
    removed = out[~keep]
    if removed.numel() and not bool((removed == -_INF).all()):
        fills = removed.unique()
        if len(fills) == 1:
            raise ExerciseError(
                f"{what} set the removed tokens to {float(fills[0]):.4g}, not -inf",
                hint="a finite logit still has a probability after the softmax: use float('-inf').",
            )
        raise ExerciseError(
            f"{what} changed the logits of the tokens it kept",
            hint="keep them exactly as they were and set only the removed ones to -inf (no "
            "softmax, no temperature here).",
        )
    return keep


# --- 3. Top-k ---

TOP_K_FORBIDDEN = (generation.top_k_filter, generation.sample_next)  # "topk" itself is allowed


def _is_top_set(keep: Tensor, row: Tensor, largest: bool = True) -> bool:
    """Whether `keep` holds the largest (or smallest) values of `row`, ties broken any way."""
    if bool(keep.all()) or not bool(keep.any()):
        return True
    if largest:
        return float(row[keep].min()) >= float(row[~keep].max())
    return float(row[keep].max()) <= float(row[~keep].min())


def _top_k_variant(logits: Tensor, k: int, kind: str) -> Tensor | None:
    """The kept mask (B, V) of a likely mistake (None where it would raise)."""
    descending = logits.sort(dim=-1, descending=True).values  # (B, V)
    ascending = logits.sort(dim=-1).values
    if kind == "smallest":
        index = _topk(logits, k, dim=-1, largest=False).indices  # (B, k)
        return torch.zeros_like(logits, dtype=torch.bool).scatter(-1, index, True)
    if kind == "ties":
        return logits >= descending[:, k - 1 : k]
    if kind == "one_more":
        return logits >= descending[:, k : k + 1] if k < logits.shape[-1] else None
    if kind == "strict":
        return logits > descending[:, k - 1 : k]
    if kind == "wrong_end":  # torch.kthvalue(logits, k) is the k-th *smallest*
        return logits >= ascending[:, k - 1 : k]
    if kind == "wrong_end_strict":
        return logits > ascending[:, k - 1 : k]
    raise ValueError(kind)


_WRONG_END = (
    "a selection op counted from the wrong end: torch.kthvalue(logits, k) is the k-th "
    "*smallest* logit, so using it as the threshold keeps the V - k + 1 largest. The k-th "
    "largest is torch.kthvalue(logits, V - k + 1), or torch.topk(logits, k).values[:, -1]."
)
TOP_K_MISTAKES = {
    "smallest": "the k *smallest* logits were kept: keep the k largest (torch.topk's default "
    "largest=True, or a sort with descending=True).",
    "ties": "more than k tokens were kept where several logits tie with the k-th largest: "
    "`logits >= threshold` keeps all of them. Keep exactly k, e.g. the positions torch.topk "
    "returns (any k of the tied ones will do).",
    "one_more": "one token too many: k + 1 were kept. With 0-based indexing the k-th largest "
    "logit is sorted_logits[:, k - 1], not sorted_logits[:, k].",
    "strict": "too few tokens were kept: `logits > threshold` drops the k-th largest itself (and "
    "every logit that ties with it); keep exactly k.",
    "wrong_end": _WRONG_END,
    "wrong_end_strict": _WRONG_END.replace("V - k + 1 largest", "V - k largest (with >)"),
}

TOP_K_ERRORS = {
    "out of bounds": "with 0-based indexing the k-th largest logit is sorted_logits[:, k - 1], "
    "not sorted_logits[:, k] (which is past the end when k = V).",
}


def _top_k_hidden(draw: Draw) -> list[tuple[Tensor, int]]:
    """(logits, k): first 3 rows with 2 <= k <= V - 2 and V far from 2k (so that keeping
    V - k + 1, V - k, k + 1, k or k - 1 tokens all differ), one row without ties, one where the
    k-th and (k+1)-th largest tie, one with a three-way tie around the k-th; then k = 1 (with a
    tie at the top in one row) and k = V."""

    def sizes() -> tuple[int, int]:
        V = draw.integer(6, 14)
        return V, draw.integer(2, V - 2)

    V, k = _redraw(sizes, lambda s: s[0] - 2 * s[1] not in (-2, -1, 0, 1))
    untied, tied, three = (draw.normal(V) for _ in range(3))
    order = tied.argsort(descending=True)
    tied[order[k]] = float(tied[order[k - 1]])  # ranks k - 1 and k (0-based) tie
    order = three.argsort(descending=True)
    three[order[k - 2 : k + 1]] = float(three[order[k - 1]])
    V1, V2 = draw.integer(3, 9), draw.integer(3, 7)
    top_tie = draw.normal(V1)
    top_tie[(int(top_tie.argmax()) + draw.integer(1, V1 - 1)) % V1] = float(top_tie.max())
    return [
        (torch.stack([untied, tied, three]), k),
        (torch.stack([draw.normal(V1), top_tie]), 1),
        (draw.normal(2, V2), V2),
    ]


def _canonical_top_k(keep: Tensor, logits: Tensor, k: int, reference: Tensor) -> Tensor:
    """The learner's mask, with every row that is a valid top-k set (any tie-break) replaced
    by the reference's row, and, when every other row keeps the k smallest, those rows by the
    "smallest" mistake's rows: masks that can be compared exactly."""
    canonical = keep.clone()
    wrong = []
    for r in range(len(keep)):
        if int(keep[r].sum()) == k and _is_top_set(keep[r], logits[r]):
            canonical[r] = reference[r]
        else:
            wrong.append(r)
    smallest = _top_k_variant(logits, k, "smallest")
    if wrong and all(
        int(keep[r].sum()) == k and _is_top_set(keep[r], logits[r], largest=False) for r in wrong
    ):
        canonical[wrong] = smallest[wrong]
    return canonical


def _check_top_k_case(ex: Exercise, fn: Callable, logits: Tensor, k: int) -> None:
    out = ex.call(fn, logits, k, hints=TOP_K_ERRORS)
    reference = _top_k_filter(logits, k)
    record_reference(reference)
    keep = _kept(out, logits, "top_k_filter")
    expected = _isfinite(reference)
    variants = {kind: _top_k_variant(logits, k, kind) for kind in TOP_K_MISTAKES}
    B, V = logits.shape
    expect_equal(
        _canonical_top_k(keep, logits, k, expected),
        expected,
        what=f"top_k_filter with k = {k} on a ({B}, {V}) input: the tokens it kept (True = kept)",
        mistakes=_named({hint: variants[kind] for kind, hint in TOP_K_MISTAKES.items()}),
    )


def check_top_k_filter(fn: Callable, hidden: bool = False) -> None:
    """Learner's `top_k_filter(logits (B, V), k) -> (B, V)`: the k largest logits of each row
    kept, the others -inf. Where logits tie at the k-th value, any k of them are accepted."""
    forbidden = Forbidden(python=TOP_K_FORBIDDEN + _logits_processors("TopKLogitsWarper"))
    with Exercise("top_k_filter", hidden, forbidden) as ex:
        if hidden:
            cases = _top_k_hidden(ex.draw)
        else:
            rows = [[1.0, 4.0, -2.0, 3.0, 0.5, 2.0], [0.0, -1.0, 2.5, 1.5, -3.0, 1.0]]
            cases = [(torch.tensor(rows, dtype=torch.float64), 3)]
        for logits, k in cases:
            _check_top_k_case(ex, fn, logits, k)


# --- 4. Top-p (nucleus) ---

# sample_next filters too; Hugging Face's TopPLogitsWarper is added when loaded
TOP_P_FORBIDDEN = (generation.top_p_filter, generation.sample_next)


def _nucleus(logits: Tensor, p: float, kind: str = "") -> Tensor:
    """The kept mask of the reference's nucleus, or of a likely mistake's."""
    if kind == "unsorted":  # the cumulative sum in the vocabulary's order
        sorted_logits, order = logits, torch.arange(logits.shape[-1]).expand_as(logits).clone()
    else:
        sorted_logits, order = logits.sort(dim=-1, descending=kind != "ascending")  # (B, V)
    probs = _softmax(sorted_logits, dim=-1)
    summed = sorted_logits if kind == "logit_cumsum" else probs
    mass = summed.cumsum(dim=-1)
    before = mass - summed  # (B, V): the mass ranked before each token
    if kind in ("drops_crossing", "drops_crossing_unforced"):
        keep_sorted = mass < p
    elif kind == "one_more":
        keep_sorted = _cat([torch.ones_like(before[:, :1]), before[:, :-1]], dim=-1) < p
    else:
        keep_sorted = before < p
    if kind != "drops_crossing_unforced":
        keep_sorted[:, 0] = True
    if kind == "gathered":
        return keep_sorted.gather(-1, order)
    if kind == "unmapped":
        return keep_sorted
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
    "gathered": "the sorted mask was put back with gather(-1, order), which applies the inverse "
    "permutation; use mask.scatter(-1, order, sorted_mask) (or gather with order.argsort()).",
    "unmapped": "the mask in sorted order was applied to the logits in the vocabulary's order: "
    "put it back first, mask.scatter(-1, order, sorted_mask).",
}


def _top_p_boundaries(logits: Tensor) -> list[Tensor]:
    """The running totals that the right filter and the mistakes compare with p."""
    descending = logits.sort(dim=-1, descending=True).values
    return [
        _softmax(descending, dim=-1).cumsum(dim=-1),
        _softmax(logits, dim=-1).cumsum(dim=-1),
        _softmax(logits.sort(dim=-1).values, dim=-1).cumsum(dim=-1),
        descending.cumsum(dim=-1),
    ]


def _top_p_separates(logits: Tensor, p: float) -> bool:
    """Every mistake keeps another set than the right filter and than every other mistake,
    and no running total lies within 2e-3 of p (float32 rounding cannot move a token)."""
    masks = [_nucleus(logits, p, kind) for kind in ("", *TOP_P_MISTAKES)]
    clear = all(float((t - p).abs().min()) >= 2e-3 for t in _top_p_boundaries(logits))
    return clear and _separated(masks)


def _peaked(logits: Tensor, p: float) -> bool:
    """The first row's most probable token alone has more than p (by 0.02)."""
    return float(_softmax(logits[0], dim=-1).max()) >= p + 0.02


def _top_p_hidden(draw: Draw) -> list[tuple[Tensor, float]]:
    """(logits, p): first a peaked row (its top token alone has more than p) and two flatter
    ones, that tell every mistake apart; then p = 1 (everything kept) and a tiny p (the top
    token only)."""

    def main() -> tuple[Tensor, float]:
        V, p = draw.integer(6, 14), round(draw.real(0.3, 0.85), 2)
        peaked = draw.normal(V, scale=draw.real(2.5, 5.0))
        flat = [draw.normal(V, scale=draw.real(0.5, 2.0)) for _ in range(2)]
        return torch.stack([peaked, *flat]), p

    def edge(p: float) -> tuple[Tensor, float]:
        return draw.normal(2, draw.integer(4, 10), scale=draw.real(0.5, 2.0)), p

    def clear(case: tuple[Tensor, float]) -> bool:  # and no probability below 2e-3
        logits, p = case
        totals = _top_p_boundaries(logits)[0][:, :-1]  # the last one is 1 (p = 1 keeps it)
        probs = _softmax(logits, dim=-1)
        return float(probs.min()) >= 2e-3 and float((totals - p).abs().min()) >= 2e-3

    tiny = round(draw.real(1e-3, 1e-2), 4)
    return [
        _redraw(main, lambda c: _peaked(*c) and _top_p_separates(*c)),
        _redraw(lambda: edge(1.0), clear),
        _redraw(lambda: edge(tiny), clear),
    ]


def _check_top_p_case(ex: Exercise, fn: Callable, logits: Tensor, p: float) -> None:
    out = ex.call(fn, logits, p)
    reference = _top_p_filter(logits, p)
    record_reference(reference)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    in_sorted_order = sorted_logits.masked_fill(~_isfinite(reference).gather(-1, order), -_INF)
    if _equal(in_sorted_order, reference):  # the nucleus is at the front of each row already
        in_sorted_order = None
    keep = _kept(out, logits, "top_p_filter", in_sorted_order)
    B, V = logits.shape
    expect_equal(
        keep,
        _isfinite(reference),
        what=f"top_p_filter with p = {p} on a ({B}, {V}) input: the tokens it kept (True = kept)",
        mistakes=_named({hint: _nucleus(logits, p, kind) for kind, hint in TOP_P_MISTAKES.items()}),
    )


def check_top_p_filter(fn: Callable, hidden: bool = False) -> None:
    """Learner's `top_p_filter(logits (B, V), p) -> (B, V)`: the smallest set of most probable
    tokens whose probabilities add up to at least p kept, the others -inf."""
    forbidden = Forbidden(python=TOP_P_FORBIDDEN + _logits_processors("TopPLogitsWarper"))
    with Exercise("top_p_filter", hidden, forbidden) as ex:
        if hidden:
            cases = _top_p_hidden(ex.draw)
        else:
            probs = [[0.05, 0.5, 0.1, 0.2, 0.15], [0.04, 0.06, 0.7, 0.12, 0.08]]
            cases = [(torch.tensor(probs, dtype=torch.float64).log(), 0.6)]
        for logits, p in cases:
            _check_top_p_case(ex, fn, logits, p)


# --- 5. The repetition penalty ------------------------------------------------------------------

# sample penalises too; Hugging Face's RepetitionPenaltyLogitsProcessor when loaded
PENALTY_FORBIDDEN = (generation.apply_repetition_penalty, generation.sample)


def _penalised(logits: Tensor, previous: Tensor, penalty: float, kind: str = "") -> Tensor:
    """The reference's penalised logits, or a likely mistake's."""
    if kind == "other_rows":
        previous = previous.reshape(1, -1).expand(len(logits), -1)
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, previous, True)  # (B, V)
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


def _text_match_differs(logits: Tensor, previous: Tensor) -> bool:
    """Whether some unseen token's id is part of the text of its row's history (an answer that
    tests membership on text, str(v) in str(previous[b].tolist()), goes wrong there)."""
    for b in range(len(previous)):
        history = previous[b].tolist()
        text = str(history)
        if any(str(v) in text for v in range(logits.shape[-1]) if v not in history):
            return True
    return False


def _penalty_hidden(draw: Draw) -> list[tuple[Tensor, Tensor, float]]:
    """(logits, previous, penalty): first 3 rows over a vocabulary of 12-40 ids (multi-digit
    ids in every history, a repeated token in every row, logits of both signs and away from 0)
    that tell every mistake apart; then penalty 1 (nothing changes), then a single previous
    token."""

    def logits_of(B: int, V: int) -> Tensor:
        x = draw.normal(B, V)
        return x + 0.1 * x.sign()  # |logit| >= 0.1: the sign decides the direction

    def main() -> tuple[Tensor, Tensor, float]:
        V, t = draw.integer(12, 40), draw.integer(4, 8)
        previous = draw.integers(0, V, (3, t))
        previous[:, -1] = previous[:, 0]  # a token repeated in every row
        previous[:, 1] = draw.integers(10, V, (3,))  # a multi-digit id in every row
        return logits_of(3, V), previous, round(draw.real(1.2, 3.0), 2)

    def separates(case: tuple[Tensor, Tensor, float]) -> bool:
        logits, previous, penalty = case
        values = [_penalised(logits, previous, penalty, k) for k in ("", *PENALTY_MISTAKES)]
        return _separated(values, gap=1e-3) and _text_match_differs(logits, previous)

    V = draw.integer(10, 30)
    return [
        _redraw(main, separates),
        (logits_of(2, V), draw.integers(0, V, (2, draw.integer(1, 6))), 1.0),
        (logits_of(2, V), draw.integers(0, V, (2, 1)), round(draw.real(1.1, 2.0), 2)),
    ]


def _check_penalty_case(
    ex: Exercise, fn: Callable, logits: Tensor, previous: Tensor, penalty: float
) -> None:
    out = ex.call(fn, logits, previous, penalty)
    expected = _apply_repetition_penalty(logits, previous, penalty)
    shown = f"of shape {tuple(previous.shape)}" if ex.hidden else f"= {previous.tolist()}"
    expect_close(
        out,
        expected,
        what=f"apply_repetition_penalty with penalty {penalty} on a {tuple(logits.shape)} input "
        f"and previous {shown}",
        mistakes=_named(
            {hint: _penalised(logits, previous, penalty, k) for k, hint in PENALTY_MISTAKES.items()}
        ),
    )


def check_apply_repetition_penalty(fn: Callable, hidden: bool = False) -> None:
    """Learner's `apply_repetition_penalty(logits (B, V), previous (B, t), penalty) -> (B, V)`."""
    forbidden = Forbidden(
        python=PENALTY_FORBIDDEN + _logits_processors("RepetitionPenaltyLogitsProcessor")
    )
    with Exercise("apply_repetition_penalty", hidden, forbidden) as ex:
        if hidden:
            cases = _penalty_hidden(ex.draw)
        else:
            logits = [[2.0, -1.0, 0.5, -0.5, 1.0, 3.0], [-2.0, 1.5, 0.0, 1.0, -1.0, 0.5]]
            previous = torch.tensor([[0, 1, 1, 4], [1, 4, 4, 4]])
            cases = [(torch.tensor(logits, dtype=torch.float64), previous, 1.5)]
        for logits, previous, penalty in cases:
            _check_penalty_case(ex, fn, logits, previous, penalty)


# --- 6. One step of beam search -----------------------------------------------------------------

BEAM_FORBIDDEN = (decoding.beam_search,)  # tutorlib's beam search takes this step


def _beam_step(scores: Tensor, log_probs: Tensor, kind: str = "") -> tuple[Tensor, Tensor, Tensor]:
    """The step that tutorlib.decoding.beam_search takes, or a likely mistake's."""
    B, k = scores.shape
    V = log_probs.shape[-1]
    extended = scores.reshape(B * k, 1)
    if kind == "no_scores":
        total = log_probs.reshape(B, k * V)
    elif kind == "multiplied":
        total = (extended * log_probs).reshape(B, k * V)
    elif kind == "probabilities":
        total = (extended + log_probs.exp()).reshape(B, k * V)
    elif kind == "tiled":  # scores.repeat(1, V) pairs beam j's slot with scores[(j*V + v) % k]
        total = scores.repeat(1, V) + log_probs.reshape(B, k * V)
    else:
        total = (extended + log_probs).reshape(B, k * V)  # (B, k*V)
    if kind == "one_child_each":
        best, token = total.reshape(B, k, V).max(dim=-1)  # (B, k)
        new, beam = best.sort(dim=1, descending=True)
        return new, beam, token.gather(1, beam)
    new, index = _topk(total, k, dim=1, largest=kind != "lowest")  # (B, k)
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
    "probabilities": "probabilities were added to the scores: a hypothesis's score is a sum of "
    "log-probabilities, so add log_probs itself (no .exp()).",
    "tiled": "each beam's score was added to another beam's log-probabilities: "
    "scores.repeat(1, V) tiles [s0, s1, ...] V times; beam j's V extensions need scores[b, j] "
    "each (repeat_interleave(V, dim=1), or scores[:, :, None] + log_probs.reshape(B, k, V)).",
    "lowest": "the k *lowest* totals were kept: a selection op counted from the wrong end "
    "(topk(..., largest=False), or the first k of an ascending sort). Keep the k highest, "
    "torch.topk's default.",
}
BEAM_INDEX_MISTAKES = {
    "global_beam": "the parent beams are numbered across the batch (b * k + j); return the beam "
    "within its row, j in 0..k-1.",
    "divided_by_k": "the flat index into the (k * V) candidates was split with k: beam = index "
    "// V and token = index % V.",
    "swapped": "the parent beam and the token are swapped: beam = index // V, token = index % V.",
}
BEAM_ERRORS = {
    "size": "is the total of shape (B, k * V)? scores.reshape(B * k, 1) + log_probs has shape "
    "(B * k, V); reshape it to (B, k * V) before the top-k.",
}


def _beam_separates(scores: Tensor, log_probs: Tensor) -> bool:
    """Every score mistake gives other new scores, every index mistake other parent beams,
    than the right step and than each other; the new scores are all different."""
    right = _beam_step(scores, log_probs)
    steps = {kind: _beam_step(scores, log_probs, kind) for kind in BEAM_SCORE_MISTAKES}
    index = {kind: _beam_step(scores, log_probs, kind) for kind in BEAM_INDEX_MISTAKES}
    return (
        _separated([right[0], *(s[0] for s in steps.values())], gap=1e-6)
        and _separated([right[1], *(s[1] for s in index.values())])
        and len(right[0].unique()) == right[0].numel()
    )


def _first_step(B: int, k: int) -> Tensor:
    scores = torch.full((B, k), -_INF, dtype=torch.float64)
    scores[:, 0] = 0.0  # all beams start equal: only the first is expanded
    return scores


def _beam_hidden(draw: Draw) -> list[tuple[Tensor, Tensor]]:
    """(scores (B, k), log_probs (B * k, V)): first a later step (negative scores, best
    first) with B >= 2, 2 <= k < V, that tells every mistake apart; then a first step (scores
    [0, -inf, ...]) and k = 1."""

    def log_probs(rows: int, V: int) -> Tensor:
        return _log_softmax(draw.normal(rows, V, scale=2.0), dim=-1)

    def later(B: int, k: int) -> Tensor:
        return -draw.uniform(B, k, low=0.2, high=4.0).sort(dim=1).values  # (B, k), best first

    def main() -> tuple[Tensor, Tensor]:
        B, k = draw.integer(2, 3), draw.integer(2, 4)
        return later(B, k), log_probs(B * k, draw.integer(k + 1, 8))

    k1, k2, V = draw.integer(4, 5), draw.integer(2, 3), draw.integer(3, 8)
    return [
        _redraw(main, lambda c: _beam_separates(*c)),
        (_first_step(2, k1), log_probs(2 * k1, draw.integer(k1, 8))),
        (draw.choice([_first_step(k2, 1), later(k2, 1)]), log_probs(k2, V)),
    ]


def _beam_outputs(out: Any, B: int, k: int, what: str) -> tuple[Tensor, Tensor, Tensor]:
    if not isinstance(out, tuple | list) or len(out) != 3:
        got = f"{len(out)} values" if isinstance(out, tuple | list) else type(out).__name__
        raise ExerciseError(
            f"{what} should return three tensors, (new_scores, beams, tokens), each of shape "
            f"({B}, {k})",
            got=got,
        )
    for name, value in zip(("new_scores", "beams", "tokens"), out, strict=True):
        if not isinstance(value, Tensor):
            raise ExerciseError(
                f"{what}: {name} should be a torch.Tensor", got=type(value).__name__
            )
        if tuple(value.shape) != (B, k):
            raise ExerciseError(
                f"{what}: {name} has shape {tuple(value.shape)}",
                hint=f"the k best extensions of each row: shape ({B}, {k}).",
                likely=False,
            )
    return out[0].detach().cpu(), out[1].detach().cpu(), out[2].detach().cpu()


def _check_beam_case(ex: Exercise, fn: Callable, scores: Tensor, log_probs: Tensor) -> None:
    out = ex.call(fn, scores, log_probs, hints=BEAM_ERRORS)
    B, k = scores.shape
    V = log_probs.shape[-1]
    expected = _beam_step(scores, log_probs)
    record_reference(expected[0])
    what = f"beam_search_step for B = {B} rows, k = {k} beams, V = {V} tokens"
    new, beams, tokens = _beam_outputs(out, B, k, what)
    if new.is_floating_point() and new.dtype == scores.dtype and not _equal(new, expected[0]):
        if _equal(new.sort(dim=1, descending=True).values, expected[0]):
            raise ExerciseError(
                f"{what}: new_scores holds the right hypotheses in the wrong order",
                hint="return the k best of each row in descending order of score (torch.topk "
                "sorts them, sorted=True).",
            )
    expect_close(
        new,
        expected[0],
        what=f"{what}: new_scores",
        mistakes=_named(
            {hint: _beam_step(scores, log_probs, k)[0] for k, hint in BEAM_SCORE_MISTAKES.items()}
        ),
        atol=1e-10,
        rtol=1e-8,
    )
    variants = {kind: _beam_step(scores, log_probs, kind) for kind in BEAM_INDEX_MISTAKES}
    for name, value, i in (("beams", beams, 1), ("tokens", tokens, 2)):
        expect_equal(
            value,
            expected[i],
            what=f"{what}: {name}",
            mistakes=_named({hint: variants[k][i] for k, hint in BEAM_INDEX_MISTAKES.items()}),
            dtype_hint="beams and tokens are int64 indices: index // V and index % V (a true "
            "division, /, gives floats).",
        )


def check_beam_search_step(fn: Callable, hidden: bool = False) -> None:
    """Learner's `beam_search_step(scores (B, k), log_probs (B * k, V)) -> (new_scores (B, k),
    beams (B, k), tokens (B, k))`, the k best of the k * V extensions of each row, best first."""
    with Exercise("beam_search_step", hidden, Forbidden(python=BEAM_FORBIDDEN)) as ex:
        if hidden:
            cases = _beam_hidden(ex.draw)
        else:
            scores = torch.tensor([[-1.0, -1.5], [-0.5, -3.0]], dtype=torch.float64)
            probs = [[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.4, 0.35, 0.25], [0.2, 0.7, 0.1]]
            cases = [(scores, torch.tensor(probs, dtype=torch.float64).log())]
        for scores, log_probs in cases:
            _check_beam_case(ex, fn, scores, log_probs)


# --- 7. BERT's layer in tutorlib's EncoderLayer -------------------------------------------------

BERT_EPS = 1e-12  # BERT's LayerNorm epsilon
# tutorlib's converters and their helpers (no torch op converts a state dict)
PRETRAINED_FORBIDDEN = (
    pretrained.load_state_dict_checked,
    pretrained._convert,
    pretrained._stack_qkv,
    pretrained._conv1d_to_linear,
)
BERT_FORBIDDEN = (
    pretrained.bert_state_dict_to_tutorlib,
    pretrained.bert_to_tutorlib,
    pretrained._bert_rules,
    *PRETRAINED_FORBIDDEN,
)

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


def _bert_layer_weights(
    C: int, d_ff: int, seed: int = 0, draw: Draw | None = None
) -> dict[str, Tensor]:
    """Random float64 weights under the names of `BertLayer(config).state_dict()`: from `draw`
    (hidden tests) or seeded by `seed`."""
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
        value = random_tensor(*shape, seed=1000 * seed + i) if draw is None else draw.normal(*shape)
        value = value / math.sqrt(shape[-1])
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


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and _equal(a.to(b.dtype), b)


def _bert_diagnosis(bert: Mapping[str, Tensor]) -> Callable[[str, Tensor], str | None]:
    """What a wrong tensor of the learner's map most likely is (`expect_state_dict`)."""

    def diagnose(name: str, got: Tensor) -> str | None:
        if name.startswith("self_attn.in_proj"):
            kind = name.rsplit("_", 1)[1]  # "weight" or "bias"
            for order in itertools.permutations(_QKV):
                if order != _QKV and _same_tensor(got, _bert_map(bert, order)[name]):
                    return (
                        f"q, k and v are stacked in the order {', '.join(order)}; "
                        "nn.MultiheadAttention's in_proj holds [query; key; value], in that order."
                    )
            pieces = [bert[f"attention.self.{p}.{kind}"] for p in _QKV]
            if kind == "weight":
                transposed = "the weights were transposed: BERT's nn.Linear and tutorlib's both "
                transposed += "store (out, in), so copy each as it is, torch.cat([q, k, v])."
                side_by_side = "the three weights were joined side by side (dim=1); stack them "
                side_by_side += "one above the other, torch.cat([q, k, v], dim=0)."
                if _same_tensor(got, _cat(pieces).T) or _same_tensor(
                    got, _cat([w.T for w in pieces])
                ):
                    return transposed
                if _same_tensor(got, _cat(pieces, dim=1)) or _same_tensor(
                    got, _cat(pieces, dim=1).T
                ):
                    return side_by_side
            return (
                f"it should be BERT's query, key and value {kind}s stacked, torch.cat([q, k, v])."
            )
        theirs = BERT_NAMES[name]
        if name.startswith("norm"):
            other = BERT_NAMES[("norm2" if name.startswith("norm1") else "norm1") + name[5:]]
            if _same_tensor(got, bert[other]):
                return (
                    "the two LayerNorms are swapped: norm1 follows the attention "
                    "(attention.output.LayerNorm), norm2 the feed-forward network "
                    "(output.LayerNorm)."
                )
        want = bert[theirs]
        if want.dim() == 2 and _same_tensor(got, want.T):
            return (
                f"it holds {theirs} transposed. BERT's nn.Linear and tutorlib's both store "
                "(out, in): copy it as it is."
            )
        return f"it should hold {theirs}, copied as it is."

    return diagnose


def _padding(draw: Draw | None, B: int, T: int) -> Tensor:
    """(B, T) bool, True = a real token: the first row unpadded, the others padded."""
    lengths = [T] + [T - 2 if draw is None else draw.integer(1, T - 1) for _ in range(B - 1)]
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]


def _bert_hidden(draw: Draw) -> list[tuple[dict[str, Tensor], int, Tensor, Tensor]]:
    """(BERT's weights, heads, x, padding): two layers of drawn sizes, d_ff != d_model."""
    cases = []
    for _ in range(2):
        H, D = draw.integer(1, 4), draw.integer(2, 5)
        C = H * D
        d_ff = draw.choice([f for f in range(C + 1, 4 * C + 1) if f != 3 * C])
        B, T = draw.integer(2, 3), draw.integer(3, 7)
        weights = _bert_layer_weights(C, d_ff, draw=draw)
        cases.append((weights, H, draw.normal(B, T, C), _padding(draw, B, T)))
    return cases


def _check_bert_case(
    ex: Exercise, fn: Callable, bert: dict[str, Tensor], H: int, x: Tensor, padding: Tensor
) -> None:
    out = ex.call(fn, bert)
    C, d_ff = bert["intermediate.dense.weight"].shape[1], bert["intermediate.dense.weight"].shape[0]
    what = f"bert_layer_to_tutorlib for a layer with d_model = {C}, {H} heads, d_ff = {d_ff}"
    expect_state_dict(out, _bert_map(bert), what=what, diagnose=_bert_diagnosis(bert))
    layer = EncoderLayer(C, H, d_ff, activation="gelu", norm_first=False).double().eval()
    layer.norm1.eps = layer.norm2.eps = BERT_EPS
    with quiet(), torch.no_grad():
        layer.load_state_dict({name: value.detach().cpu() for name, value in out.items()})
        got = layer(x, padding_mask=padding)
    expect_close(
        got,
        _bert_layer_reference(bert, x, padding, H),
        what=f"{what}: an EncoderLayer with your weights, on x of shape {tuple(x.shape)}",
        atol=1e-10,
        rtol=1e-8,
    )


def check_bert_layer_to_tutorlib(fn: Callable, hidden: bool = False) -> None:
    """Learner's `bert_layer_to_tutorlib(bert: dict of BertLayer's tensors) -> dict of
    EncoderLayer's tensors`, checked name by name and by running the layer."""
    with Exercise("bert_layer_to_tutorlib", hidden, Forbidden(python=BERT_FORBIDDEN)) as ex:
        if hidden:
            cases = _bert_hidden(ex.draw)
        else:
            padding = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
            cases = [
                (_bert_layer_weights(8, 12, seed=0), 2, random_tensor(2, 5, 8, seed=0), padding)
            ]
        for bert, H, x, padding in cases:
            _check_bert_case(ex, fn, bert, H, x, padding)


# --- 8. GPT-2's attention in nn.MultiheadAttention ----------------------------------------------

GPT2_FORBIDDEN = (
    pretrained.gpt2_state_dict_to_tutorlib,
    pretrained.gpt2_to_tutorlib,
    *PRETRAINED_FORBIDDEN,
)


def _gpt2_attention_weights(C: int, seed: int = 0, draw: Draw | None = None) -> dict[str, Tensor]:
    """Random float64 weights under the names of GPT-2's attention (`GPT2Attention`), Conv1D
    weights stored (in, out): from `draw` (hidden tests) or seeded by `seed`."""
    shapes = [(C, 3 * C), (3 * C,), (C, C), (C,)]
    g = [
        random_tensor(*shape, seed=100 * seed + i) if draw is None else draw.normal(*shape)
        for i, shape in enumerate(shapes)
    ]
    return {
        "c_attn.weight": g[0] / math.sqrt(C),
        "c_attn.bias": g[1],
        "c_proj.weight": g[2] / math.sqrt(C),
        "c_proj.bias": g[3],
    }


def _gpt2_map(gpt2: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {
        "in_proj_weight": gpt2["c_attn.weight"].T,  # (3C, C)
        "in_proj_bias": gpt2["c_attn.bias"],
        "out_proj.weight": gpt2["c_proj.weight"].T,
        "out_proj.bias": gpt2["c_proj.bias"],
    }


def _gpt2_diagnosis(gpt2: Mapping[str, Tensor]) -> Callable[[str, Tensor], str | None]:
    """What a wrong tensor of the learner's map most likely is (`expect_state_dict`)."""
    w_attn, w_proj = gpt2["c_attn.weight"], gpt2["c_proj.weight"]
    C = w_proj.shape[0]

    def diagnose(name: str, got: Tensor) -> str | None:
        if name == "in_proj_weight":
            if _same_tensor(got, w_attn):
                return (
                    "c_attn.weight was copied as it is: Conv1D stores its weight (in, out), "
                    "nn.Linear (out, in): transpose it (.T)."
                )
            if _same_tensor(got, w_attn.reshape(3 * C, C)):
                return (
                    "c_attn.weight was reshaped to (3C, C); a reshape keeps the numbers in memory "
                    "order, it does not transpose. Conv1D stores (in, out): use .T (or .t())."
                )
            return "in_proj_weight is c_attn.weight transposed, c_attn.weight.T."
        if name == "out_proj.weight":
            if _same_tensor(got, w_proj):
                return (
                    "c_proj.weight was copied as it is; it is a Conv1D weight too, stored "
                    "(in, out), so it needs .T like c_attn.weight (being square, it fits either "
                    "way)."
                )
            return "out_proj.weight is c_proj.weight transposed, c_proj.weight.T."
        source = {"in_proj_bias": "c_attn.bias", "out_proj.bias": "c_proj.bias"}[name]
        return f"{name} is {source}, copied as it is."

    return diagnose


def _gpt2_attention_reference(gpt2: Mapping[str, Tensor], x: Tensor, n_heads: int) -> Tensor:
    """GPT-2's causal self-attention, written out with its Conv1D layout (x @ W + b).

    Shapes:
        x (B, T, C)  ->  (B, T, C)
    """
    B, T, C = x.shape
    H, D = n_heads, C // n_heads
    qkv = x @ gpt2["c_attn.weight"] + gpt2["c_attn.bias"]  # (B, T, 3C)
    q, k, v = (t.reshape(B, T, H, D).transpose(1, 2) for t in qkv.split(C, dim=-1))  # (B, H, T, D)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    scores = scores.masked_fill(~causal, -_INF)
    attended = (_softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, T, C)  # (B, T, C)
    return attended @ gpt2["c_proj.weight"] + gpt2["c_proj.bias"]


def _gpt2_hidden(draw: Draw) -> list[tuple[dict[str, Tensor], int, Tensor]]:
    """(GPT-2's attention weights, heads, x): two attentions of drawn sizes."""
    cases = []
    for _ in range(2):
        H, D = draw.integer(1, 4), draw.integer(2, 5)
        weights = _gpt2_attention_weights(H * D, draw=draw)
        cases.append((weights, H, draw.normal(draw.integer(1, 3), draw.integer(2, 7), H * D)))
    return cases


def _check_gpt2_case(
    ex: Exercise, fn: Callable, gpt2: dict[str, Tensor], H: int, x: Tensor
) -> None:
    out = ex.call(fn, gpt2)
    C = gpt2["c_proj.weight"].shape[0]
    what = f"gpt2_attention_to_tutorlib for d_model = {C}, {H} heads"
    expect_state_dict(out, _gpt2_map(gpt2), what=what, diagnose=_gpt2_diagnosis(gpt2))
    T = x.shape[1]
    blocked = ~torch.ones(T, T, dtype=torch.bool).tril()  # torch's mask: True = blocked
    attention = _MultiheadAttention(C, H, batch_first=True).double().eval()
    with quiet(), torch.no_grad():
        attention.load_state_dict({name: value.detach().cpu() for name, value in out.items()})
        got, _ = attention(x, x, x, attn_mask=blocked, need_weights=False)
    expect_close(
        got,
        _gpt2_attention_reference(gpt2, x, H),
        what=f"{what}: nn.MultiheadAttention with your weights, causal, on x of shape "
        f"{tuple(x.shape)}",
        atol=1e-10,
        rtol=1e-8,
    )


def check_gpt2_attention_to_tutorlib(fn: Callable, hidden: bool = False) -> None:
    """Learner's `gpt2_attention_to_tutorlib(gpt2: dict of GPT2Attention's tensors) -> dict of
    nn.MultiheadAttention's tensors`."""
    with Exercise("gpt2_attention_to_tutorlib", hidden, Forbidden(python=GPT2_FORBIDDEN)) as ex:
        if hidden:
            cases = _gpt2_hidden(ex.draw)
        else:
            cases = [(_gpt2_attention_weights(8, seed=0), 2, random_tensor(2, 6, 8, seed=0))]
        for gpt2, H, x in cases:
            _check_gpt2_case(ex, fn, gpt2, H, x)


# --- 9. Images as token sequences ---------------------------------------------------------------

# quantise computes the pixel tokens on its own
PIXELS_FORBIDDEN = (pixels.images_to_sequences, pixels.quantise, pixels.sequences_to_images)


def _sequences(images: Tensor, labels: Tensor, levels: int, kind: str = "") -> Tensor:
    """Class token levels + label, then the pixels' levels round(x * (levels - 1)) row by row;
    or a likely mistake's sequences."""
    scaled = images * (levels - 1)
    if kind == "floor":
        levels_of = scaled.floor().long()
    elif kind == "bins":
        levels_of = (images * levels).floor().clamp(max=levels - 1).long()
    elif kind == "scaled_by_levels":
        levels_of = (images * levels).round().long()
    elif kind == "scaled_by_levels_clipped":
        levels_of = (images * levels).round().clamp(max=levels - 1).long()
    else:
        levels_of = scaled.round().long()  # (B, 1, H, W)
    if kind == "column_major":
        levels_of = levels_of.transpose(-2, -1)
    flat = levels_of.flatten(1)  # (B, H*W)
    classes = (labels if kind == "no_offset" else levels + labels)[:, None]  # (B, 1)
    if kind == "class_last":
        return _cat([flat, classes], dim=1)
    return _cat([classes, flat], dim=1)  # (B, 1 + H*W)


_SCALED_BY_LEVELS = (
    "the grey values were scaled by levels; level k stands for the grey value k / (levels - 1), "
    "so the level is round(x * (levels - 1)) (then x = 1 is level levels - 1)."
)
PIXEL_MISTAKES = {
    "column_major": "the pixels are in column-major order; read them row by row, left to right "
    "(pixel (r, c) is token 1 + r * W + c).",
    "floor": "the grey values were rounded down; round them to the *nearest* level: level k "
    "stands for the grey value k / (levels - 1), so the level is round(x * (levels - 1)).",
    "bins": "the grey values were cut into `levels` equal bins (floor(x * levels)); here level k "
    "stands for the grey value k / (levels - 1): round(x * (levels - 1)).",
    "scaled_by_levels": _SCALED_BY_LEVELS,
    "scaled_by_levels_clipped": _SCALED_BY_LEVELS.replace("; level k", ", and clipped; level k"),
    "no_offset": "the class token is the label itself, an id the pixels use too. Class c is the "
    "id levels + c, after the pixel ids 0 .. levels - 1.",
    "class_last": "the class token is at the end; it goes first, so that every pixel is "
    "generated knowing the class.",
}


def _near_boundary(scaled: Tensor, width: float = 0.03) -> Tensor:
    """Where `scaled` lies within `width` of a whole or a half number."""
    fraction = scaled % 1
    return (fraction < width) | (fraction > 1 - width) | ((fraction - 0.5).abs() < width)


def _grey_values(draw: Draw, shape: tuple[int, ...], levels: int) -> Tensor:
    """Grey values in [0, 1] whose scaled values x (levels - 1) have a fractional part in
    [0.1, 0.4] or [0.6, 0.9] (round and floor differ in about half of them, and no value is near
    a rounding boundary) and whose x * levels (the bins' and a wrong scale's) is not near one
    either; the first pixel is 0 and the last 1, the two ends of the scale."""
    images = torch.zeros(shape, dtype=torch.float64)
    todo = torch.ones(shape, dtype=torch.bool)
    while bool(todo.any()):  # each pixel is redrawn with a chance of about 1/6
        base = draw.integers(0, levels - 1, shape).double()
        upper = draw.uniform(*shape) < 0.5
        fraction = torch.where(upper, 0.6, 0.1) + 0.3 * draw.uniform(*shape)
        images = torch.where(todo, (base + fraction) / (levels - 1), images)
        todo = _near_boundary(images * levels)
    images.view(-1)[0], images.view(-1)[-1] = 0.0, 1.0
    return images


def _pixels_separate(images: Tensor, labels: Tensor, levels: int) -> bool:
    """Round and floor differ in 3 pixels or more, and every mistake's sequences differ from
    the right ones and from each other."""
    scaled = images * (levels - 1)
    if int((scaled.round() != scaled.floor()).sum()) < 3:
        return False
    kinds = ("", *PIXEL_MISTAKES)
    return _separated([_sequences(images, labels, levels, kind) for kind in kinds])


def _pixels_hidden(draw: Draw) -> list[tuple[Tensor, Tensor, int]]:
    """(images (B, 1, H, W), labels (B,), levels): first 2-3 images with H != W (both >= 2) and
    3-17 levels that tell every mistake apart; then one image with 2 levels (B = 1), then
    8 x 8 digits with 100-256 levels."""

    def main() -> tuple[Tensor, Tensor, int]:
        B, levels = draw.integer(2, 3), draw.integer(3, 17)
        H, W = draw.sample(range(2, 6), 2)
        return _grey_values(draw, (B, 1, H, W), levels), draw.integers(0, 10, (B,)), levels

    side, many = draw.integer(2, 4), draw.integer(100, 256)
    return [
        _redraw(main, lambda c: _pixels_separate(*c)),
        (_grey_values(draw, (1, 1, side, side), 2), draw.integers(0, 10, (1,)), 2),
        (_grey_values(draw, (2, 1, 8, 8), many), draw.integers(0, 10, (2,)), many),
    ]


def _check_pixels_case(
    ex: Exercise, fn: Callable, images: Tensor, labels: Tensor, levels: int
) -> None:
    out = ex.call(fn, images, labels, levels)
    expected = _sequences(images, labels, levels)
    record_reference(expected)
    B, _, H, W = images.shape
    what = f"images_to_sequences for {B} images of {H} x {W} pixels with {levels} levels"
    if isinstance(out, Tensor) and tuple(out.shape) == (B, H * W):
        raise ExerciseError(
            f"{what} has shape {(B, H * W)}",
            hint=f"put the class token (levels + label) in front of each image's pixels: shape "
            f"({B}, {1 + H * W}).",
        )
    expect_equal(
        out,
        expected,
        what=what,
        mistakes=_named(
            {hint: _sequences(images, labels, levels, k) for k, hint in PIXEL_MISTAKES.items()}
        ),
        dtype_hint="token ids are int64: .long() after rounding.",
    )


def check_images_to_sequences(fn: Callable, hidden: bool = False) -> None:
    """Learner's `images_to_sequences(images (B, 1, H, W) in [0, 1], labels (B,), levels) ->
    (B, 1 + H W)`: the class token levels + label, then the pixels' levels in raster order."""
    with Exercise("images_to_sequences", hidden, Forbidden(python=PIXELS_FORBIDDEN)) as ex:
        if hidden:
            cases = _pixels_hidden(ex.draw)
        else:
            images = torch.tensor(
                [[[[0.0, 0.1, 0.45], [0.6, 0.95, 1.0]]], [[[1.0, 0.7, 0.2], [0.3, 0.0, 0.55]]]],
                dtype=torch.float64,
            )
            cases = [(images, torch.tensor([3, 7]), 4)]
        for images, labels, levels in cases:
            _check_pixels_case(ex, fn, images, labels, levels)


# --- 10. Distinct-n -----------------------------------------------------------------------------


def _ngrams(sequence: Sequence, n: int, stop: int = 0) -> list[tuple]:
    return [tuple(sequence[i : i + n]) for i in range(len(sequence) - n + 1 - stop)]


def _ratio(distinct: int, total: int) -> float | None:
    return distinct / total if total else None


def _distinct_variant(sequences: list, n: int, kind: str) -> float | None:
    """What a likely mistake returns, or None where it would divide by zero."""
    if kind == "across":
        grams = _ngrams([x for s in sequences for x in s], n)
        return _ratio(len(set(grams)), len(grams))
    if kind == "joined_text":  # each sequence of ids joined into one string of digits
        texts = [s if isinstance(s, str) else "".join(map(str, s)) for s in sequences]
        grams = [g for t in texts for g in _ngrams(t, n)]
        return _ratio(len(set(grams)), len(grams))
    if kind == "off_by_one":
        grams = [g for s in sequences for g in _ngrams(s, n, stop=1)]
        return _ratio(len(set(grams)), len(grams))
    grams = [g for s in sequences for g in _ngrams(s, n)]
    if not grams:
        return None
    if kind == "tokens":  # distinct tokens over tokens, whatever n
        tokens = [x for s in sequences for x in s]
        return len(set(tokens)) / len(tokens)
    if kind == "over_tokens":
        return len(set(grams)) / sum(len(s) for s in sequences)
    if kind == "joined_keys":  # each n-gram's ids joined with no separator
        return len({"".join(map(str, g)) for g in grams}) / len(grams)
    if kind == "unique":
        return sum(1 for c in Counter(grams).values() if c == 1) / len(grams)
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
    "tokens": "tokens were counted, not n-grams: distinct-n counts the distinct n-grams "
    "(tuple(s[i : i + n])) over all n-grams.",
    "over_tokens": "the distinct n-grams were divided by the number of tokens; divide by the "
    "number of n-grams (a sequence of length L has L - n + 1).",
    "inverted": "the ratio is upside down: distinct n-grams divided by all n-grams (at most 1).",
    "joined_text": "the token ids were joined into a string, so an id of several digits became "
    "several characters: take the n-grams of the list of ids itself (a string's n-grams are of "
    "its characters).",
    "joined_keys": "each n-gram's ids were joined into one string with no separator, so "
    "different n-grams such as (1, 23) and (12, 3) both became '123': use the tuple itself, "
    "tuple(s[i : i + n]).",
}

DISTINCT_ERRORS = {
    "unhashable": "lists cannot go into a set: make each n-gram a tuple, tuple(s[i : i + n]).",
    "division by zero": "a sequence shorter than n has no n-grams: collect the n-grams of all "
    "the sequences first, then divide once, distinct over all.",
}


def _distinct_separates(sequences: list, n: int) -> bool:
    """Every mistake that applies returns another value than the right one and than every
    other mistake (by more than the tolerance that recognises a mistake)."""
    values = [_distinct_n(sequences, n)]
    values += [_distinct_variant(sequences, n, kind) for kind in DISTINCT_MISTAKES]
    return _separated(values, gap=5e-3)


def _distinct_ids(draw: Draw, n: int, collide: bool) -> list[list[int]]:
    """3-5 sequences of ids, one of them empty and one shorter than n, over a vocabulary of
    single- and multi-digit ids; with `collide`, the n-grams (x, yz) and (xy, z) occur (as
    strings with no separator, both are "xyz")."""
    x, y, z = draw.sample(range(1, 10), 3)
    vocabulary = [x, z, 10 * x + y, 10 * y + z, *draw.sample(range(10, 130), 2)]
    sequences = [[], [draw.choice(vocabulary) for _ in range(n - 1)]]
    for _ in range(draw.integer(1, 3)):
        sequences.append([draw.choice(vocabulary) for _ in range(draw.integer(n, 9))])
    if collide:
        sequences[-1] += [x, 10 * y + z]
        sequences[2] = [10 * x + y, z, *sequences[2]]
    order = draw.sample(range(len(sequences)), len(sequences))
    return [sequences[i] for i in order]


def _distinct_text(draw: Draw, n: int) -> list[str]:
    """3-5 strings over 3 letters, one of them empty and one shorter than n."""
    letters = draw.sample("abcdefgh", 3)
    texts = ["", "".join(draw.choice(letters) for _ in range(n - 1))]
    for _ in range(draw.integer(1, 3)):
        texts.append("".join(draw.choice(letters) for _ in range(draw.integer(n, 10))))
    return draw.sample(texts, len(texts))


def _distinct_hidden(draw: Draw) -> list[tuple[list, int]]:
    """(sequences, n): first token ids with n = 2 (multi-digit ids whose digits, joined, run
    into each other), that tell every mistake apart; then strings; then ids with n = 3."""
    first = _redraw(
        lambda: _distinct_ids(draw, 2, collide=True), lambda s: _distinct_separates(s, 2)
    )
    n = draw.integer(1, 3)
    return [(first, 2), (_distinct_text(draw, n), n), (_distinct_ids(draw, 3, collide=False), 3)]


def _check_distinct_case(ex: Exercise, fn: Callable, sequences: list, n: int) -> None:
    out = ex.call(fn, sequences, n, hints=DISTINCT_ERRORS)
    expected = _distinct_n(sequences, n)
    kind = "strings" if isinstance(sequences[0], str) else "sequences of token ids"
    shown = f" {sequences}" if not ex.hidden else ""
    expect_close(
        out,
        expected,
        what=f"distinct_n on {len(sequences)} {kind}{shown} with n = {n}",
        mistakes=_named(
            {hint: _distinct_variant(sequences, n, k) for k, hint in DISTINCT_MISTAKES.items()}
        ),
        atol=1e-9,
        rtol=1e-7,
    )


def check_distinct_n(fn: Callable, hidden: bool = False) -> None:
    """Learner's `distinct_n(sequences, n) -> float`: distinct n-grams over all n-grams of all
    the sequences (lists of token ids or strings), n-grams never crossing two sequences."""
    with Exercise("distinct_n", hidden, Forbidden(python=(generation.distinct_n,))) as ex:
        cases = _distinct_hidden(ex.draw) if hidden else [([[1, 2, 1, 2, 3], [3, 1, 2]], 2)]
        for sequences, n in cases:
            _check_distinct_case(ex, fn, sequences, n)


watch_module(__name__)
