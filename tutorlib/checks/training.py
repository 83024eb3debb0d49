"""Checks for the Chapter 3 exercises (solutions/03_training).

Each `check_*` takes the learner's function. With `hidden=False` it runs the visible tests (the
notebook's worked examples); with `hidden=True` the hidden ones: property tests on sizes, ids and
values drawn when they run (`tutorlib.checks.draw`), with the special cases that tell the likely
mistakes apart forced in every draw. While the learner's code runs, the tutorlib reference and
every torch operator that computes the same thing are out of reach (`tutorlib.checks.guard`).

Three checks differ in kind: `check_training_step` runs two optimizer steps on a tiny seeded
encoder-decoder and compares the losses and the updated weights; `check_mask_tokens` checks a
random function by its statistics on a large batch (each statistical test fails a right answer
with probability below 1e-8, see `_spread`); `check_greedy_translate` decodes with a tiny
Transformer trained to copy its source, on sources drawn until every likely mistake shows.

Book: Chapter 3 exercises.
"""

from __future__ import annotations

import copy
import math
import numbers
import types
from collections import Counter
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import clip_grad as _clip_grad_module

from tutorlib import decoding, tokenizers, training
from tutorlib.checks import (
    Draw,
    Exercise,
    ExerciseError,
    Forbidden,
    expect_close,
    expect_equal,
    handed_over,
    quiet,
    random_tensor,
    watch_module,
)
from tutorlib.models import Transformer, TransformerConfig

__all__ = [
    "check_clip_gradients",
    "check_greedy_translate",
    "check_mask_tokens",
    "check_merge_pair",
    "check_most_frequent_pair",
    "check_smoothed_loss",
    "check_teacher_forcing",
    "check_training_step",
    "check_transformer_lr",
]

# References, taken at import time (before any learner code runs).
_cross_entropy, _log_softmax = F.cross_entropy, F.log_softmax
_clip_grad_norm = nn.utils.clip_grad_norm_
_greedy_decode, _encoder_decoder_step = decoding.greedy_decode, decoding.encoder_decoder_step
_cat, _equal, _isin, _allclose = torch.cat, torch.equal, torch.isin, torch.allclose
_SGD, _AdamW, _Adam = torch.optim.SGD, torch.optim.AdamW, torch.optim.Adam

PAD, BOS, EOS = 0, 1, 2  # the special ids of the visible tests' toy vocabularies

Mistakes = Mapping[str, Any]  # hint -> the mistake's value, or a function computing it


def _apart(mistakes: Mistakes, expected: Tensor, atol: float, rtol: float) -> dict[str, Any]:
    """The mistakes whose value, on these inputs, differs from the expected one beyond the
    test's tolerance. A mistake that equals the right answer here (no smoothing to spread, no
    gradient to clip) cannot be told apart from it, and would be named for any answer that is
    only slightly off (`expect_close` recognises mistakes within a looser tolerance)."""
    expected = expected.detach().cpu()
    kept = {}
    for hint, mistake in mistakes.items():
        wrong = mistake() if callable(mistake) else mistake
        if isinstance(wrong, Tensor) and wrong.shape == expected.shape:
            wrong = wrong.detach().cpu().to(expected.dtype)
            if _allclose(wrong, expected, atol=atol, rtol=rtol):
                continue
        kept[hint] = wrong
    return kept


def _expect_close(
    actual: Any,
    expected: Tensor,
    *,
    what: str,
    mistakes: Mistakes,
    atol: float,
    rtol: float = 1e-5,
) -> None:
    """`expect_close`, naming only the mistakes that differ from the right answer here."""
    try:
        expect_close(actual, expected, what=what, atol=atol, rtol=rtol)
        return
    except ExerciseError:
        pass  # compared again below, outside this handler (no chained traceback)
    expect_close(
        actual,
        expected,
        what=what,
        mistakes=_apart(mistakes, expected, atol, rtol),
        atol=atol,
        rtol=rtol,
    )


def _optimizer(name: str, parameters: Any, lr: float) -> torch.optim.Optimizer:
    """A torch optimizer by name: "sgd", "adam" or "adamw" (with weight decay 0.01)."""
    if name == "sgd":
        return _SGD(parameters, lr=lr)
    if name == "adam":
        return _Adam(parameters, lr=lr)
    return _AdamW(parameters, lr=lr, weight_decay=0.01)


def _padded_targets(lengths: list[int], T: int, V: int, seed: int) -> Tensor:
    """The visible tests' targets: rows of ordinary ids (3 .. V-1), then <eos>, then padding:
    (B, T) int64."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(3, V, (len(lengths), T), generator=generator)  # (B, T)
    for row, n in enumerate(lengths):  # n ordinary ids, then <eos> if it fits
        if n < T:
            targets[row, n] = EOS
            targets[row, n + 1 :] = PAD
    return targets


def _drawn_targets(
    draw: Draw, B: int, T: int, ordinary: list[int], eos: int, pad: int, short: int
) -> Tensor:
    """(B, T) int64 drawn targets: each row some ordinary ids, then <eos>, then padding. Row 0
    is full (no <eos>, its first two ids differ), row 1 holds at most `short` ordinary ids
    (then <eos> and padding), the others any length."""
    pool = torch.tensor(ordinary)
    targets = pool[draw.integers(0, len(ordinary), (B, T))]  # (B, T)
    first, second = draw.sample(ordinary, 2)
    targets[0, 0], targets[0, 1] = first, second
    lengths = [T, draw.integer(0, short)] + [draw.integer(0, T) for _ in range(B - 2)]
    for row, n in enumerate(lengths):
        if n < T:
            targets[row, n] = eos
            targets[row, n + 1 :] = pad
    return targets


def _shift_right(targets: Tensor, first: int) -> Tensor:
    column = torch.full_like(targets[:, :1], first)  # (B, 1)
    return _cat([column, targets[:, :-1]], dim=1)  # (B, T)


# --- 1. The 2017 learning-rate schedule ----------------------------------------------------------

LR_FORBIDDEN = Forbidden(python=(training.inverse_sqrt_schedule,))


def _lr(step: float, d_model: int, warmup: int, kind: str = "") -> float:
    """Vaswani et al.'s eq. 3, or a likely mistake; 0 where a mistake would divide by zero."""
    step = step + {"early": 1, "late": -1}.get(kind, 0)
    if step <= 0:
        return 0.0
    scale = 1.0 if kind == "no_scale" else d_model**-0.5
    decay, rise = step**-0.5, step * warmup**-1.5
    value = {"warmup_only": rise, "decay_only": decay, "max": max(decay, rise)}.get(
        kind, min(decay, rise)
    )
    return scale * value


LR_MISTAKES = {
    "early": "off by one: the peak comes one step early. Steps count from 1 and the warm-up "
    "ends exactly at step = warmup_steps; don't add 1 to the step you are given.",
    "late": "off by one: the peak comes one step late. Steps count from 1 (the first call is "
    "step = 1); don't subtract 1 from the step you are given.",
    "no_scale": "the factor d_model^-0.5 in front is missing (wider models take smaller steps).",
    "warmup_only": "only the warm-up is there: after warmup_steps the rate must decay as "
    "step^-0.5; take the min of the two terms.",
    "decay_only": "there is no warm-up: the rate must first grow linearly, "
    "step * warmup_steps^-1.5; take the min of the two terms.",
    "max": "max instead of min: the rate is the smaller of step^-0.5 and step * warmup^-1.5.",
}
# step - 1 = 0 at the first step: 0.0 ** -0.5 raises
LR_ERRORS = {
    "negative power": LR_MISTAKES["late"],
    "division by zero": LR_MISTAKES["late"],
    "math domain error": LR_MISTAKES["late"],
}
LR_STEP_ZERO = (
    "steps count from 1: raise a ValueError for step < 1 (step^-0.5 is undefined at 0), "
    "e.g. `if step < 1: raise ValueError(...)` first thing."
)


def _as_float(value: Any, what: str) -> float:
    if isinstance(value, Tensor) and value.numel() == 1 and value.dtype != torch.bool:
        return float(value.item())
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise ExerciseError(f"{what} should return a float", got=type(value).__name__)


def _lr_hidden(draw: Draw) -> list[tuple[int, int, list[int]]]:
    """(d_model, warmup_steps, steps): steps on both sides of the peak and at it (every mistake
    shows in the first case), then a warm-up of a single step."""
    warmup = draw.integer(4, 5000)
    steps = [1, 2, warmup - 1, warmup, warmup + 1, draw.integer(2, warmup - 1)]
    steps += [draw.integer(warmup + 2, 20 * warmup), draw.integer(10**5, 10**6)]
    return [
        (draw.integer(8, 2048), warmup, steps),
        (draw.integer(8, 2048), 1, [1, 2, 3, draw.integer(4, 1000)]),
    ]


def _relatively_close(a: list[float], b: list[float], rtol: float = 1e-6) -> bool:
    return all(math.isclose(x, y, rel_tol=rtol, abs_tol=1e-300) for x, y in zip(a, b, strict=True))


def _check_lr_case(ex: Exercise, fn: Callable, d_model: int, warmup: int, steps: list[int]) -> None:
    what = f"transformer_lr(step, {d_model}, {warmup}) for steps {steps}"
    got = [
        _as_float(ex.call(fn, step, d_model, warmup, hints=LR_ERRORS), "transformer_lr")
        for step in steps
    ]
    expected = [_lr(step, d_model, warmup) for step in steps]
    mistakes = {}  # compared relatively here: the rates are far smaller than 1e-4
    for kind, hint in LR_MISTAKES.items():
        wrong = [_lr(step, d_model, warmup, kind) for step in steps]
        if _relatively_close(got, wrong) and not _relatively_close(wrong, expected):
            mistakes[hint] = wrong
    expect_close(got, expected, what=what, mistakes=mistakes, atol=0.0, rtol=1e-6)


@handed_over
def _raises_value_error(fn: Callable, *args: Any) -> tuple[bool, Any]:
    """(True, None) if fn(*args) raises ValueError, else (False, what it returned). Given to
    the guard to run: it only calls the learner's function."""
    try:
        value = fn(*args)
    except ValueError:
        return True, None
    return False, value


def _check_lr_before_start(ex: Exercise, fn: Callable) -> None:
    """Step 0 and a negative step raise ValueError."""
    for step in (0, -ex.draw.integer(1, 1000)):
        d_model = ex.draw.integer(8, 2048)
        raised, value = ex.call(
            _raises_value_error, fn, step, d_model, 4000, hints={"": LR_STEP_ZERO}
        )
        if not raised:
            raise ExerciseError(
                f"transformer_lr({step}, {d_model}, 4000) returned instead of raising ValueError",
                got=value,
                hint=LR_STEP_ZERO,
            )


def check_transformer_lr(fn: Callable[[int, int, int], float], hidden: bool = False) -> None:
    """Learner's `transformer_lr(step, d_model, warmup_steps) -> float`, step = 1, 2, ..."""
    with Exercise("transformer_lr", hidden, LR_FORBIDDEN) as ex:
        # (each case stays packed here: this frame outlives a failure, see tests/test_checks.py)
        for case in _lr_hidden(ex.draw) if hidden else [(512, 4000, [2, 1000, 4000, 16000])]:
            _check_lr_case(ex, fn, *case)
        if hidden:
            _check_lr_before_start(ex, fn)


# --- 2. Teacher forcing ------------------------------------------------------------------------

TF_FORBIDDEN = Forbidden()  # nothing to borrow: a shift is two basic tensor operations

TF_DTYPE = (
    "token ids are int64: build new tensors with dtype=torch.long, or from the input's own ids "
    "(torch.full_like(targets[:, :1], bos_id))."
)


def _tf_hidden(draw: Draw) -> list[tuple[Tensor, int, int]]:
    """(targets, bos_id, pad_id): special ids drawn (never 1, so a hard-coded <bos> shows), a
    full row and a padded row in every batch."""
    cases = []
    for _ in range(3):
        B, T, V = draw.integer(2, 5), draw.integer(3, 8), draw.integer(8, 99)
        pad, bos, eos = draw.sample([i for i in range(V) if i != 1], 3)
        ordinary = [i for i in range(V) if i not in (pad, bos, eos)]
        cases.append((_drawn_targets(draw, B, T, ordinary, eos, pad, T - 2), bos, pad))
    return cases


def _tf_input_mistakes(targets: Tensor, bos: int, pad: int) -> dict[str, Tensor]:
    def column(i: int) -> Tensor:
        return torch.full_like(targets[:, :1], i)  # (B, 1)

    return {
        "the decoder inputs equal the labels: the decoder would see the very token it must "
        "predict and learn to copy it. Shift right: <bos>, then targets[:, :-1].": targets,
        "shifted the wrong way: the decoder input at position t is the target at t - 1 (the "
        "previous token), so prepend <bos> and drop the last column.": _cat(
            [targets[:, 1:], column(pad)], dim=1
        ),
        "shifted the wrong way: <bos> goes in front (position 0), followed by targets[:, :-1]; "
        "here the targets moved left and <bos> went at the end.": _cat(
            [targets[:, 1:], column(bos)], dim=1
        ),
        "the first target token was dropped instead of the last: <bos> goes in front of "
        "targets[:, :-1], not in place of targets[:, 0].": _cat([column(bos), targets[:, 1:]], 1),
        "the first decoder input must be <bos> (bos_id), not padding.": _shift_right(targets, pad),
        "the first column must be bos_id, the argument you are given, not a fixed id.": (
            _shift_right(targets, 1)
        ),
        "start every row with <bos> (bos_id) and drop the last column, so that inputs and "
        "labels are both (B, T) and line up.": targets[:, :-1],
        "drop the last column: the decoder inputs are <bos> followed by targets[:, :-1], "
        "(B, T) like the labels.": _cat([column(bos), targets], dim=1),
    }


def _tf_label_mistakes(targets: Tensor, bos: int, pad: int) -> dict[str, Tensor]:
    return {
        "the labels are the targets themselves, unshifted; only the decoder inputs move one "
        "step to the right.": _cat([targets[:, 1:], torch.full_like(targets[:, :1], pad)], 1),
        "the labels are the targets themselves, (B, T), not targets[:, 1:]; only the decoder "
        "inputs move.": targets[:, 1:],
        "the labels are the targets themselves, not the shifted decoder inputs.": (
            _shift_right(targets, bos)
        ),
    }


def _check_tf_case(ex: Exercise, fn: Callable, targets: Tensor, bos: int, pad: int) -> None:
    result = ex.call(fn, targets, bos, pad)
    if not isinstance(result, tuple | list) or len(result) != 2:
        raise ExerciseError(
            "teacher_forcing should return a pair (decoder_inputs, labels)",
            got=type(result).__name__,
        )
    inputs, labels = result
    B, T = targets.shape
    shown = f"({B}, {T}) targets" if ex.hidden else f"targets {targets.tolist()}"
    what = f"teacher_forcing's {{}} for {shown}, bos_id={bos}, pad_id={pad}"
    expect_equal(
        inputs,
        _shift_right(targets, bos),
        what=what.format("decoder inputs"),
        mistakes=_tf_input_mistakes(targets, bos, pad),
        dtype_hint=TF_DTYPE,
    )
    expect_equal(
        labels,
        targets.clone(),
        what=what.format("labels"),
        mistakes=_tf_label_mistakes(targets, bos, pad),
        dtype_hint=TF_DTYPE,
    )


def check_teacher_forcing(fn: Callable, hidden: bool = False) -> None:
    """Learner's `teacher_forcing(targets (B, T), bos_id, pad_id) -> (inputs, labels)`."""
    with Exercise("teacher_forcing", hidden, TF_FORBIDDEN) as ex:
        worked = torch.tensor([[5, 6, EOS, PAD], [7, 8, 9, EOS]])  # the notebook's example
        for case in _tf_hidden(ex.draw) if hidden else [(worked, BOS, PAD)]:
            _check_tf_case(ex, fn, *case)


# --- 3. Label-smoothed cross-entropy -------------------------------------------------------------

# Every operator that computes a cross-entropy, a negative log-likelihood or a KL divergence
# (F.cross_entropy runs cross_entropy_loss, then nll_loss_nd / nll_loss_forward / nll_loss2d).
LOSS_OPS = (
    "cross_entropy",
    "cross_entropy_loss",
    "nll_loss",
    "nll_loss_nd",
    "nll_loss_forward",
    "nll_loss2d",
    "nll_loss2d_forward",
    "kl_div",
)
LOSS_FORBIDDEN = Forbidden(
    python=(
        training.label_smoothed_cross_entropy,
        training.sequence_cross_entropy,
        nn.CrossEntropyLoss,
        nn.NLLLoss,
        nn.KLDivLoss,
    ),
    ops=LOSS_OPS,
)


def _smoothed_variant(logits: Tensor, targets: Tensor, s: float, pad: int, kind: str) -> Tensor:
    """The loss as a likely mistake computes it; `logits` (B, T, V), `targets` (B, T)."""
    B, T, V = logits.shape
    softmax_dim = {"softmax_batch": 0, "softmax_time": 1}.get(kind, 2)
    log_p = _log_softmax(logits, dim=softmax_dim).reshape(-1, V)  # (N, V)
    if kind == "softmax_positions":
        log_p = _log_softmax(logits.reshape(-1, V), dim=0)  # (N, V), over the N positions
    y = targets.reshape(-1)  # (N,)
    keep = (y != (0 if kind == "pad_zero" else pad)) | (kind == "pad_as_target")  # (N,)
    nll = -log_p.gather(1, y.unsqueeze(1)).squeeze(1)  # (N,)
    others = -log_p.sum(dim=-1) - nll  # (N,): the wrong classes' -log p, summed
    if kind == "no_smoothing":
        per_token = nll
    elif kind == "v_minus_1":  # fairseq: eps / (V - 1) on every wrong class
        per_token = (1 - s) * nll + s / (V - 1) * others
    elif kind == "v_minus_2":  # the Annotated Transformer: not the true class, not padding
        per_token = (1 - s) * nll + s / (V - 2) * (others + log_p[:, pad] * (y != pad))
    elif kind == "smoothing_sum":
        per_token = (1 - s) * nll + s * (-log_p.sum(dim=-1))
    elif kind == "no_one_minus":
        per_token = nll + s * (-log_p.mean(dim=-1))
    else:
        per_token = (1 - s) * nll + s * (-log_p.mean(dim=-1))
        if kind == "kl":  # KL(q || p) = cross-entropy - entropy of the smoothed target q
            q = torch.full_like(log_p, s / V).scatter_add(
                1, y.unsqueeze(1), torch.full_like(nll.unsqueeze(1), 1 - s)
            )
            per_token = per_token + (q * q.log()).sum(dim=-1)
    kept = per_token * keep  # (N,)
    if kind == "sum":
        return kept.sum()
    if kind == "mean_of_means":
        rows, counts = kept.reshape(B, T).sum(dim=1), keep.reshape(B, T).sum(dim=1)
        return (rows / counts).mean()
    if kind == "per_sequence":
        return kept.sum() / B
    return kept.sum() / (len(y) if kind == "pad_in_mean" else keep.sum())


SMOOTHED_MISTAKES = {
    "softmax_time": "log_softmax over the wrong dimension: normalise over the vocabulary, the "
    "last dimension (dim=-1), not over the positions (dim 1).",
    "softmax_batch": "log_softmax over the wrong dimension: normalise over the vocabulary, the "
    "last dimension (dim=-1), not over the batch (dim 0).",
    "softmax_positions": "log_softmax over the wrong dimension: after reshaping the logits to "
    "(B * T, V), normalise each row over the vocabulary (dim=-1), not over the positions (dim 0).",
    "pad_in_mean": "the padding positions are counted in the mean: divide by the number of "
    "non-padding targets, not by B * T.",
    "pad_as_target": "padding is not ignored: positions whose target is pad_id must add "
    "nothing to the loss and be left out of the mean.",
    "pad_zero": "the positions left out are those whose target is 0: leave out those whose "
    "target is pad_id, the argument you are given, not a fixed 0.",
    "mean_of_means": "this is the mean of each sequence's mean loss; take one mean over all the "
    "non-padding positions of the batch together (longer sequences weigh more).",
    "per_sequence": "the loss is divided by the batch size; divide by the number of non-padding "
    "targets (the mean over positions).",
    "sum": "the loss is summed over positions; take the mean over the non-padding positions.",
    "no_smoothing": "the smoothing is missing: this is the plain cross-entropy. The target puts "
    "1 - smoothing on the true token and smoothing / V on every token.",
    "no_one_minus": "the true token's term is weighted by 1 - smoothing: "
    "(1 - smoothing) * (-log p_y) + smoothing * mean_v(-log p_v).",
    "smoothing_sum": "the smoothing mass is spread over the V tokens, smoothing / V each: "
    "smoothing times the mean of -log p_v over the vocabulary, not the sum.",
    "v_minus_1": "the smoothing mass is spread over the V - 1 wrong classes (fairseq's "
    "convention). torch's label_smoothing, and this exercise, spread it over all V classes, the "
    "true one included: target = (1 - smoothing) * one_hot + smoothing / V.",
    "v_minus_2": "the smoothing mass leaves out the true class and the padding class (the "
    "Annotated Transformer's convention, smoothing / (V - 2)). torch's label_smoothing, and this "
    "exercise, spread it over all V classes, padding and the true class included: target = "
    "(1 - smoothing) * one_hot + smoothing / V.",
    "kl": "this is the KL divergence to the smoothed target, which is the cross-entropy minus "
    "the target's entropy; return the cross-entropy, -sum_v target_v log p_v.",
}


def _smoothed_hidden(draw: Draw) -> list[tuple[Tensor, Tensor, float, int]]:
    """(logits (B, T, V), targets (B, T), smoothing, pad_id): B, T and V all different, pad_id
    anywhere in the vocabulary, a full row and a row with padding (so the rows count different
    numbers of positions); smoothing 0 last, where several mistakes equal the right answer."""
    return [
        _smoothed_case(draw, round(draw.real(0.05, 0.45), 3), (5, 12), pad_low=1),
        _smoothed_case(draw, round(draw.real(0.05, 0.45), 3), (13, 90)),
        _smoothed_case(draw, 0.0, (5, 30)),
    ]


def _smoothed_case(draw: Draw, s: float, V_range: tuple[int, int], pad_low: int = 0):
    B = draw.integer(2, 4)
    T = draw.choice([t for t in range(3, 8) if t != B])
    V = draw.choice([v for v in range(*V_range) if v not in (B, T)])
    pad = draw.integer(pad_low, V - 1)
    others = [i for i in range(V) if i != pad]
    # row 1 ends with <eos> and padding: every row counts a position, not all the same number
    targets = _drawn_targets(draw, B, T, others, draw.choice(others), pad, T - 2)
    if pad != 0:
        targets[0, 0] = 0  # an ordinary id: a hard-coded pad id of 0 shows
    return draw.normal(B, T, V, scale=2.0, grad=True), targets, s, pad


def _check_smoothed_case(
    ex: Exercise, fn: Callable, logits: Tensor, targets: Tensor, s: float, pad: int
) -> None:
    out = ex.call(fn, logits, targets, s, pad)
    B, T, V = logits.shape
    expected = _cross_entropy(
        logits.reshape(-1, V), targets.reshape(-1), ignore_index=pad, label_smoothing=s
    )
    ld = logits.detach()
    _expect_close(
        out,
        expected,
        what=f"smoothed_loss for logits ({B}, {T}, {V}), smoothing={s}, pad_id={pad}",
        mistakes={
            hint: (lambda kind=kind: _smoothed_variant(ld, targets, s, pad, kind))
            for kind, hint in SMOOTHED_MISTAKES.items()
        },
        atol=1e-10,
        rtol=1e-8,
    )
    if logits.requires_grad:
        ex.expect_backward(out, expected, {"logits": logits}, "smoothed_loss")


def check_smoothed_loss(fn: Callable, hidden: bool = False) -> None:
    """Learner's `smoothed_loss(logits (B, T, V), targets (B, T), smoothing, pad_id) -> ()`,
    equal to F.cross_entropy(..., ignore_index=pad_id, label_smoothing=smoothing)."""
    with Exercise("smoothed_loss", hidden, LOSS_FORBIDDEN) as ex:
        if hidden:
            cases = _smoothed_hidden(ex.draw)
        else:
            cases = [(random_tensor(2, 4, 6, seed=0), _padded_targets([3, 1], 4, 6, 0), 0.1, PAD)]
        for case in cases:
            _check_smoothed_case(ex, fn, *case)


# --- 4. Gradient clipping ------------------------------------------------------------------------

# Every function of torch.nn.utils.clip_grad (clip_grad_norm_, get_total_norm,
# clip_grads_with_norm_, ...), by identity; torch's per-tensor norms (torch._foreach_norm) stay
# allowed: the global norm and the scaling are the exercise.
CLIP_FORBIDDEN = Forbidden(
    python=tuple(
        f
        for name, f in vars(_clip_grad_module).items()
        if isinstance(f, types.FunctionType)
        and f.__module__ == _clip_grad_module.__name__
        and name != "_no_grad"
    )
)


def _clip_variant(grads: list[Tensor], max_norm: float, kind: str) -> tuple[Tensor, Tensor]:
    """(returned norm, the clipped gradients flattened into one vector) as a likely mistake
    computes them."""
    norms = torch.stack([g.norm() for g in grads])
    total = norms.sum() if kind == "sum_of_norms" else norms.square().sum().sqrt()
    if kind == "per_parameter":
        clipped = [g * torch.clamp(max_norm / (g.norm() + 1e-6), max=1.0) for g in grads]
    elif kind == "not_in_place":
        clipped = list(grads)
    elif kind == "by_value":
        clipped = [g.clamp(-max_norm, max_norm) for g in grads]
    else:
        coef = max_norm / (total + 1e-6)
        clipped = [g * (coef if kind == "scale_up" else coef.clamp(max=1.0)) for g in grads]
    flat = _cat([g.reshape(-1) for g in clipped])
    if kind == "norm_after":
        return flat.norm(), flat
    return total, flat


CLIP_MISTAKES = {
    "per_parameter": "each parameter's gradient is clipped on its own. Clip by the global norm: "
    "the norm of all gradients together, sqrt(sum over parameters of ||g||^2), and scale every "
    "gradient by the same factor.",
    "sum_of_norms": "the total norm is the sum of the per-parameter norms; the global norm is "
    "sqrt(sum over parameters of ||g||^2), the norm of all gradients as one vector.",
    "scale_up": "the gradients were scaled up although their norm was already below max_norm: "
    "the factor is min(1, max_norm / (total_norm + 1e-6)).",
    "norm_after": "return the total norm before clipping (it is what you log to spot "
    "spikes), not the norm after.",
    "not_in_place": "the gradients were not changed: clip in place, p.grad.mul_(factor), so the "
    "optimizer sees the clipped gradients.",
    "by_value": "each gradient entry was clamped to [-max_norm, max_norm] (that is "
    "clip_grad_value_); clipping by norm scales all gradients by one factor.",
}
CLIP_ERRORS = {
    "'NoneType' object": "skip the parameters whose .grad is None (a parameter that took no "
    "part in the loss): [p.grad for p in parameters if p.grad is not None].",
}
GENERATOR_HINT = (
    "here `parameters` was a generator (as model.parameters() is), which can be iterated only "
    "once: start with parameters = list(parameters)."
)
# what torch and Python say when a generator is read twice, indexed or measured
GENERATOR_ERRORS = dict.fromkeys(("non-empty", "has no len()", "not subscriptable"), GENERATOR_HINT)


def _clip_parameters(
    draw: Draw, max_norm: float, norms: list[float], none_at: int
) -> list[nn.Parameter]:
    """float64 parameters of drawn shapes whose gradients have the given norms, one of them
    with no gradient (grad None) at position `none_at`."""
    params = []
    for i, norm in enumerate(norms):
        n_dims = draw.integer(1, 3)
        shape = [2] if i == 0 else [draw.integer(1, 4) for _ in range(n_dims)]
        p = nn.Parameter(draw.normal(*shape))
        g = draw.normal(*shape)
        p.grad = g * (norm * max_norm / g.norm())
        params.append(p)
    params.insert(none_at, nn.Parameter(draw.normal(draw.integer(1, 5))))  # grad None
    return params


def _clip_hidden(draw: Draw) -> list[tuple[list[nn.Parameter], float, bool]]:
    """(parameters, max_norm, as a generator): a global norm above max_norm with one gradient
    above it on its own (two entries, so one exceeds max_norm too) and others below; a global
    norm below max_norm; the first again, passed as a generator. One parameter in each has no
    gradient."""
    cases = []
    for above, generator in ((True, False), (False, False), (True, True)):
        max_norm = round(draw.real(0.5, 5.0), 2)
        n = draw.integer(2, 4)
        if above:  # in units of max_norm: the first above 1.5, the others below 0.6
            norms = [draw.real(1.5, 4.0)] + [draw.real(0.1, 0.6) for _ in range(n - 1)]
        else:
            norms = [draw.real(0.05, 0.9 / math.sqrt(n)) for _ in range(n)]
        params = _clip_parameters(draw, max_norm, norms, draw.integer(1, n))
        cases.append((params, max_norm, generator))
    return cases


def _clip_visible() -> list[tuple[list[nn.Parameter], float, bool]]:
    params = []
    for i, shape in enumerate([(3,), (2, 2)]):
        p = nn.Parameter(random_tensor(*shape, seed=2 * i))
        p.grad = random_tensor(*shape, seed=2 * i + 1)
        params.append(p)
    three, four = (
        nn.Parameter(torch.zeros(1, dtype=torch.float64)),
        nn.Parameter(torch.zeros(1, dtype=torch.float64)),
    )
    three.grad, four.grad = (
        torch.tensor([3.0], dtype=torch.float64),
        torch.tensor([4.0], dtype=torch.float64),
    )  # the worked example: global norm 5
    return [(params, 1.0, False), ([three, four], 1.0, False)]


def _check_clip_case(
    ex: Exercise, fn: Callable, params: list[nn.Parameter], max_norm: float, generator: bool
) -> None:
    values = [p.detach().clone() for p in params]
    grads = [p.grad.clone() for p in params if p.grad is not None]  # the inputs, kept
    arg: Any = iter(params) if generator else params  # read once, as model.parameters()
    errors = {**CLIP_ERRORS, **GENERATOR_ERRORS} if generator else CLIP_ERRORS
    out = ex.call(fn, arg, max_norm, mutates=True, hints=errors)
    none = " (one with grad None)" if len(grads) < len(params) else ""
    what = f"clip_gradients on {len(params)} parameters{none}, max_norm={max_norm}"
    if any(not _equal(p.detach(), v) for p, v in zip(params, values, strict=True)):
        raise ExerciseError(
            f"{what} changed the parameters themselves",
            hint="clip the gradients (p.grad), not the parameters' values (p, p.data).",
        )
    if sum(p.grad is not None for p in params) != len(grads):
        raise ExerciseError(
            f"{what}: a parameter whose .grad was None has a gradient now",
            hint="skip the parameters whose .grad is None; leave their .grad as it is.",
            likely=False,
        )
    if isinstance(out, numbers.Real) and not isinstance(out, bool):
        out = torch.tensor(float(out), dtype=torch.float64)
    elif isinstance(out, Tensor) and out.numel() == 1 and out.is_floating_point():
        out = out.detach().to(torch.float64)  # the norm's value is checked, as for a float
    expected_norm, expected_grads = _clip_reference(grads, max_norm)
    variants = {
        hint: cache(lambda kind=kind: _clip_variant(grads, max_norm, kind))
        for kind, hint in CLIP_MISTAKES.items()
    }
    got = _cat([p.grad.detach().reshape(-1) for p in params if p.grad is not None])
    try:
        _expect_close(
            out,
            expected_norm,
            what=f"The total norm returned by {what}",
            mistakes={h: (lambda v=v: v()[0]) for h, v in variants.items()},
            atol=1e-10,
        )
        _expect_close(
            got,
            expected_grads,
            what=f"The gradients after {what}",
            mistakes={h: (lambda v=v: v()[1]) for h, v in variants.items()},
            atol=1e-10,
        )
    except ExerciseError as error:
        if not generator:
            raise
        failure = error  # the same answer passed with a list: it iterated the generator twice
    else:
        return
    raise ExerciseError(
        failure.what, got=failure.got, expected=failure.expected, hint=GENERATOR_HINT
    )


def _clip_reference(grads: list[Tensor], max_norm: float) -> tuple[Tensor, Tensor]:
    """torch's clip_grad_norm_ on copies of the gradients: (total norm, clipped, flattened)."""
    copies = []
    for g in grads:
        p = nn.Parameter(torch.zeros_like(g))
        p.grad = g.clone()
        copies.append(p)
    total = _clip_grad_norm(copies, max_norm)
    return total, _cat([p.grad.reshape(-1) for p in copies])


def check_clip_gradients(fn: Callable, hidden: bool = False) -> None:
    """Learner's `clip_gradients(parameters, max_norm) -> total norm before clipping`, clipping
    every .grad in place like torch.nn.utils.clip_grad_norm_."""
    with Exercise("clip_gradients", hidden, CLIP_FORBIDDEN) as ex:
        for case in _clip_hidden(ex.draw) if hidden else _clip_visible():
            _check_clip_case(ex, fn, *case)


# --- 5. One training step ------------------------------------------------------------------------

STEP_FORBIDDEN = Forbidden()  # the step may use F.cross_entropy and clip_grad_norm_

_STEP_CONFIG = TransformerConfig(
    vocab_size=12, context_length=16, d_model=16, n_heads=2, n_layers=1, d_ff=32
)


def _seeded_transformer(config: TransformerConfig, seed: int) -> Transformer:
    """A seeded float64 encoder-decoder, in train mode."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Transformer(config).double().train()


def _step_batch(B: int, S: int, T: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """The visible test's (src (B, S), src_padding_mask (B, S), tgt (B, T)), padded."""
    generator = torch.Generator().manual_seed(seed)
    V = _STEP_CONFIG.vocab_size
    src_lengths = torch.randint(1, S + 1, (B,), generator=generator)
    src_lengths[0] = S
    src_padding_mask = torch.arange(S)[None, :] < src_lengths[:, None]  # (B, S)
    src = torch.randint(3, V, (B, S), generator=generator).masked_fill(~src_padding_mask, PAD)
    lengths = torch.randint(0, T, (B,), generator=generator).tolist()
    lengths[0] = T - 1
    return src, src_padding_mask, _padded_targets(lengths, T, V, seed + 1)


def _drawn_step_batch(
    draw: Draw, B: int, S: int, T: int, V: int, pad: int, eos: int, bos: int
) -> tuple[Tensor, Tensor, Tensor]:
    """A drawn (src, src_padding_mask, tgt): padding in both, id 0 among the targets (an
    ordinary id: pad_id is never 0 here, so a hard-coded ignore_index=0 shows)."""
    ordinary = [i for i in range(V) if i not in (pad, bos, eos)]
    lengths = [S] + [draw.integer(1, S) for _ in range(B - 1)]
    mask = torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]  # (B, S)
    pool = torch.tensor(ordinary)
    src = pool[draw.integers(0, len(ordinary), (B, S))].masked_fill(~mask, pad)
    tgt = _drawn_targets(draw, B, T, ordinary, eos, pad, T - 2)
    tgt[0, 0] = 0
    return src, mask, tgt


def _reference_step(
    model: nn.Module, batch: tuple, optimizer: Any, max_norm: float, bos: int, pad: int, kind: str
) -> float:
    """One step as the solution takes it, or as a likely mistake does."""
    src, src_padding_mask, tgt = batch
    inputs = tgt if kind == "no_shift" else _shift_right(tgt, bos)  # (B, T)
    logits = model(src, inputs, src_padding_mask)  # (B, T, V)
    ignore = {"pad_not_ignored": -100, "pad_zero": 0}.get(kind, pad)
    loss = _cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        tgt.reshape(-1),
        ignore_index=ignore,
        reduction="sum" if kind == "sum" else "mean",
    )
    if kind != "no_zero_grad":
        optimizer.zero_grad()
    loss.backward()
    if kind != "no_clip":
        _clip_grad_norm(model.parameters(), max_norm)
    optimizer.step()
    return loss.item()


STEP_MISTAKES = {
    "no_zero_grad": "the gradients are not zeroed, so they accumulate from one step to the "
    "next: call optimizer.zero_grad() before loss.backward().",
    "no_clip": "the gradients were not clipped before optimizer.step() (clipping after the step "
    "changes nothing: the next step zeroes them). Order: zero_grad, backward, clip, step.",
    "no_shift": "the decoder inputs are not shifted: the decoder sees the token it must "
    "predict. Feed <bos> + tgt[:, :-1] and predict tgt (your teacher_forcing).",
    "pad_not_ignored": "the padding positions count in the loss: pass ignore_index=pad_id to "
    "F.cross_entropy.",
    "sum": "the loss is summed over the positions: take the mean over the non-padding ones "
    "(F.cross_entropy's default reduction='mean'), so that the step does not grow with the "
    "batch.",
    "pad_zero": "ignore_index must be pad_id, the argument you are given, not a fixed 0.",
}


def _step_hidden(draw: Draw) -> list[tuple]:
    """(config, seed, optimizer, lr, max_norm, batches, bos, pad): SGD, then AdamW; special ids
    drawn (pad never 0, bos never 1), padding in every batch, max_norm at most half the
    first gradient's norm (so clipping always acts)."""
    cases = []
    for name in ("sgd", "adamw"):
        V, C = draw.integer(9, 16), draw.choice([8, 16])
        pad, bos, eos = draw.sample(range(2, V), 3)
        config = TransformerConfig(
            vocab_size=V, context_length=16, d_model=C, n_heads=2, n_layers=1, d_ff=2 * C
        )
        seed = draw.integer(0, 2**31)
        B, S, T = draw.integer(2, 4), draw.integer(3, 6), draw.integer(3, 7)
        batches = [_drawn_step_batch(draw, B, S, T, V, pad, eos, bos) for _ in range(2)]
        norm = _first_gradient_norm(config, seed, batches[0], bos, pad)
        max_norm = round(norm * draw.real(0.1, 0.5), 4)
        lr = draw.real(0.1, 0.5) if name == "sgd" else draw.real(0.005, 0.02)
        cases.append((config, seed, name, lr, max_norm, batches, bos, pad))
    return cases


def _first_gradient_norm(config: TransformerConfig, seed: int, batch: tuple, bos: int, pad: int):
    """The global gradient norm of the first batch's loss at the start (to draw max_norm)."""
    model = _seeded_transformer(config, seed)
    src, mask, tgt = batch
    logits = model(src, _shift_right(tgt, bos), mask)
    _cross_entropy(
        logits.reshape(-1, config.vocab_size), tgt.reshape(-1), ignore_index=pad
    ).backward()
    return float(
        torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]).norm()
    )


def _run_steps(step: Callable, model: nn.Module, case: tuple) -> tuple[list, Tensor]:
    """Two steps on a fresh copy of `model`: (losses, the weights after, flattened)."""
    _, _, name, lr, max_norm, batches, bos, pad = case
    model = copy.deepcopy(model)
    optimizer = _optimizer(name, model.parameters(), lr)
    losses = [step(model, batch, optimizer, max_norm, bos, pad) for batch in batches]
    return losses, _cat([p.detach().reshape(-1) for p in model.parameters()])


def _learner_step(ex: Exercise, fn: Callable) -> Callable:
    def step(model, batch, optimizer, max_norm, bos, pad):
        loss = ex.call(fn, model, batch, optimizer, max_norm, bos, pad, mutates=True)
        if isinstance(loss, Tensor):
            raise ExerciseError(
                "training_step returned a tensor",
                hint="return the loss as a Python float (loss.item()), so that nothing keeps "
                "the graph alive.",
            )
        if not isinstance(loss, float):
            raise ExerciseError("training_step should return a float", got=type(loss).__name__)
        return loss

    return step


def _check_step_case(ex: Exercise, fn: Callable, case: tuple) -> None:
    config, seed, name, lr, max_norm, batches, bos, pad = case
    model = _seeded_transformer(config, seed)
    start = _cat([p.detach().reshape(-1) for p in model.parameters()])
    losses, weights = _run_steps(_learner_step(ex, fn), model, case)
    B = batches[0][0].shape[0]
    what = f"training_step ({name.upper()}, lr {lr:.3g}, max_norm {max_norm}, batches of {B})"
    if _equal(weights, start):
        raise ExerciseError(
            f"{what} did not change the weights",
            hint="call optimizer.step() after loss.backward(), and zero the gradients before "
            "backward, not between backward and step.",
        )
    expected_losses, expected_weights = _run_steps(
        lambda *a: _reference_step(*a, kind=""), model, case
    )
    variants = {
        hint: cache(
            lambda kind=kind: _run_steps(lambda *a: _reference_step(*a, kind=kind), model, case)
        )
        for kind, hint in STEP_MISTAKES.items()
    }
    _expect_close(
        torch.tensor(losses, dtype=torch.float64),
        torch.tensor(expected_losses, dtype=torch.float64),
        what=f"The losses returned by two calls of {what}",
        mistakes={
            h: (lambda v=v: torch.tensor(v()[0], dtype=torch.float64)) for h, v in variants.items()
        },
        atol=1e-8,
    )
    _expect_close(
        weights,
        expected_weights,
        what=f"The weights after two calls of {what}",
        mistakes={h: (lambda v=v: v()[1]) for h, v in variants.items()},
        atol=1e-8,
    )


def check_training_step(fn: Callable, hidden: bool = False) -> None:
    """Learner's `training_step(model, batch, optimizer, max_norm, bos_id, pad_id) -> float`
    for an encoder-decoder Transformer and batch = (src, src_padding_mask, tgt)."""
    with Exercise("training_step", hidden, STEP_FORBIDDEN) as ex:
        if hidden:
            cases = _step_hidden(ex.draw)
        else:
            batches = [_step_batch(3, 5, 6, i) for i in range(2)]
            cases = [(_STEP_CONFIG, 0, "sgd", 0.5, 0.5, batches, BOS, PAD)]
        for case in cases:
            _check_step_case(ex, fn, case)


# --- 7, 8. Byte-pair encoding --------------------------------------------------------------------

BPE_FORBIDDEN = Forbidden(
    python=(
        tokenizers.merge_pair,
        tokenizers.pair_counts,
        tokenizers.most_frequent_pair,
        tokenizers.BPETokenizer,
    )
)


def _merge(ids: list[int], pair: tuple[int, int], new_id: int, kind: str = "") -> list[int]:
    """One merge, left to right and non-overlapping; or as a likely mistake does it."""
    if kind == "right_to_left":
        return _merge(ids[::-1], (pair[1], pair[0]), new_id)[::-1]
    if kind == "look_back":  # merge at every match, skip an id that ends a match
        match = [i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair for i in range(len(ids))]
        return [
            new_id if match[i] else ids[i]
            for i in range(len(ids))
            if match[i] or not (i > 0 and match[i - 1])
        ]
    out, i, merged = [], 0, False
    while i < len(ids):
        match = i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair
        if match and not (kind == "first_only" and merged):
            out.append(new_id)
            merged = True
            i += 1 if kind == "overlapping" else 2
        else:
            if not (kind == "drop_last" and i == len(ids) - 1):
                out.append(ids[i])
            i += 1
    return out


MERGE_MISTAKES = {
    "overlapping": "the merges overlap: after merging ids[i], ids[i+1], continue at i + 2, so "
    "that [a, a, a] with pair (a, a) becomes [new, a].",
    "look_back": "the merges overlap: an id that ends one occurrence of the pair and starts "
    "the next was merged twice. After merging ids[i], ids[i+1], continue at i + 2, so that "
    "[a, a, a] with pair (a, a) becomes [new, a].",
    "right_to_left": "the merges go from right to left; go left to right: [a, a, a] with pair "
    "(a, a) becomes [new, a].",
    "first_only": "only the first occurrence was merged; merge every (non-overlapping) one.",
    "drop_last": "the last id went missing: when it is not part of a merged pair, append it too.",
}
MERGE_UNCHANGED = "the ids came back unchanged: replace every occurrence of the pair by new_id."


def _merge_hidden(draw: Draw) -> list[tuple[list[int], tuple[int, int], int]]:
    """(ids, pair, new_id), every id below 100. First a pair (x, x) of a two-digit id in runs
    of 1, 2, 3 and 5, each followed by another id, the last id unmerged (overlaps, direction,
    the first occurrence only, the last id). Then pairs whose ids, written one after the other,
    read like other ids: (a, b) among [ab], [ka, b], [a, bm] ("".join gives "ab" in each), and
    (a, bc) among [ab, c] ("abc" either way); a string trick merges those too. Then a long
    random list and edge cases."""
    x = draw.integer(10, 99)
    others = draw.sample([i for i in range(10, 100) if i != x], 4)
    runs = draw.sample([[x], [x, x], [x, x, x], [x] * 5], 4)
    first = [i for run, other in zip(runs, others, strict=True) for i in (*run, other)]
    new1 = draw.choice([i for i in range(10, 100) if i not in (x, *others)])

    a, b = draw.sample(range(1, 10), 2)
    k, m = draw.integer(1, 9), draw.integer(0, 9)
    decoys = [[10 * a + b], [10 * k + a, b], [a, 10 * b + m], [b, a], [10 * b + a]]
    second = [a, b, a, b] + [i for d in draw.sample(decoys, 5) for i in d] + [a, b]
    second.append(draw.integer(10, 99))  # ends unmerged
    new2 = draw.choice([i for i in range(10, 100) if i not in second])

    c, d = draw.integer(1, 9), draw.choice([i for i in range(11, 100) if i % 10])
    decoys = [[10 * c + d // 10, d % 10], [10 * draw.integer(1, 9) + c, d], [d, c]]
    third = [i for block in draw.sample([[c, d], [c, d], *decoys], 5) for i in block] + [c]
    new3 = draw.choice([i for i in range(10, 100) if i not in third])

    p, q, r = draw.sample(range(10, 100), 3)
    long = [(p, q, r)[int(i)] for i in draw.integers(0, 3, (30,))]
    new4 = draw.choice([i for i in range(10, 100) if i not in (p, q, r)])
    return [
        (first, (x, x), new1),
        (second, (a, b), new2),
        (third, (c, d), new3),
        (long, (p, q), new4),
        ([], (p, q), new4),
        ([p], (p, q), new4),
        ([p, q], (p, q), new4),
        ([r, r, p], (p, q), new4),
    ]


def _check_merge_case(
    ex: Exercise, fn: Callable, ids: list[int], pair: tuple[int, int], new_id: int
) -> None:
    given = list(ids)
    out = ex.call(fn, given, pair, new_id)
    what = f"merge_pair({ids}, {pair}, {new_id})"
    if not isinstance(out, list):
        raise ExerciseError(f"{what} should return a list of ints", got=type(out).__name__)
    expected = _merge(ids, pair, new_id)
    if out is given and expected != ids:
        raise ExerciseError(f"{what} returned the list it was given", hint="build a new list.")
    mistakes = {hint: _merge(ids, pair, new_id, kind) for kind, hint in MERGE_MISTAKES.items()}
    mistakes[MERGE_UNCHANGED] = list(ids)
    expect_equal(out, expected, what=what, mistakes=mistakes)


def check_merge_pair(fn: Callable, hidden: bool = False) -> None:
    """Learner's `merge_pair(ids: list[int], pair, new_id) -> list[int]`."""
    with Exercise("merge_pair", hidden, BPE_FORBIDDEN) as ex:
        visible = [([1, 2, 3, 1, 2], (1, 2), 9), ([5, 5, 5], (5, 5), 9)]
        for case in _merge_hidden(ex.draw) if hidden else visible:
            _check_merge_case(ex, fn, *case)


def _most_frequent(word_counts: dict, kind: str = "") -> tuple[int, int] | None:
    counts: Counter = Counter()
    words = list(word_counts.items())
    if kind == "across_words":
        joined = [i for word, n in words for _ in range(n) for i in word]
        words = [(tuple(joined), 1)]
    for word, n in words:
        pairs = list(zip(word, word[1:], strict=False))
        for pair in set(pairs) if kind == "once_per_word" else pairs:
            counts[pair] += 1 if kind == "unweighted" else n
    if not counts:
        return None
    if kind == "first_found":
        return counts.most_common(1)[0][0]
    if kind == "largest":
        return max(counts, key=lambda p: (counts[p], p))
    if kind == "as_strings":
        top = max(counts.values())
        return min((p for p in counts if counts[p] == top), key=str)
    return min(counts, key=lambda p: (-counts[p], p))


PAIR_MISTAKES = {
    "unweighted": "each word counted once: weight every pair by the word's count in the "
    "corpus (a word seen 3 times adds 3 to each of its pairs).",
    "once_per_word": "count every occurrence of a pair inside a word, overlapping ones too: "
    "(4, 4, 4) holds the pair (4, 4) twice.",
    "across_words": "pairs were counted across word boundaries: count only the adjacent ids "
    "inside each word.",
    "largest": "ties must go to the smallest pair (compare the tuples: (1, 5) < (2, 0)), not "
    "the largest.",
    "as_strings": "ties must go to the smallest pair compared as tuples of ints, "
    "(9, 50) < (12, 3), not as strings (str or a joined key puts '(12, 3)' first).",
    "first_found": "ties must go to the smallest pair (compare the tuples), not to the first "
    "pair found (Counter.most_common and max keep insertion order).",
}
PAIR_NONE = "when no word has two ids there is no pair to merge: return None."


def _pair_hidden(draw: Draw) -> list[dict[tuple[int, ...], int]]:
    """Corpora of ids below 100: one where weighting, overlapping pairs and word boundaries
    each change the answer; a three-way tie (the smallest pair is neither the first found nor
    the largest, and smallest as tuples but not as strings: (9, 50) < (12, 3)); no pair at
    all; a random corpus."""
    a, b, c, d, e, f, g, x = draw.sample(range(10, 100), 8)
    m = draw.integer(5, 9)
    weighted = {
        (a, b): draw.integer(m + 1, 2 * m - 1),  # the answer if overlapping pairs count once
        (c, c, c): m,  # (c, c) twice per word: 2m, the answer
        (d, e): 1,  # (d, e) in three words: the answer if each word counted once
        (d, e, f): 1,
        (g, d, e): 1,
        (x,): 3 * m + draw.integer(2, 5),  # x x x ...: the answer if words ran together
    }
    weighted = dict(draw.sample(list(weighted.items()), len(weighted)))

    small_first = draw.integer(2, 9)
    middle_first, found_first = draw.integer(10, 19), draw.integer(20, 49)
    large_first = draw.integer(50, 99)
    firsts = (middle_first, found_first, large_first)
    seconds = draw.sample([i for i in range(10, 100) if i not in firsts], 6)
    small, middle = (small_first, seconds[0]), (middle_first, seconds[1])
    large, extra = (large_first, seconds[2]), (seconds[3], seconds[4])
    found = (found_first, seconds[5])
    n = draw.integer(2, 6)
    # first found: found; largest: large; smallest as strings: middle; as tuples: small
    tie = {found: n, middle: n, large: n, small: n, extra: n - 1}

    lonely = {(draw.integer(10, 99),): draw.integer(1, 9), (draw.integer(1, 9),): 1}
    words = {}
    for _ in range(15):
        word = tuple(int(i) for i in draw.integers(10, 14, (draw.integer(1, 6),)))
        words[word] = draw.integer(1, 20)
    return [weighted, tie, lonely, words]


def _check_pair_case(ex: Exercise, fn: Callable, word_counts: dict) -> None:
    expected_none = not any(len(word) > 1 for word in word_counts)
    out = ex.call(fn, dict(word_counts), hints={"": PAIR_NONE} if expected_none else None)
    if isinstance(out, list):
        out = tuple(out)
    shown = f"{len(word_counts)} words" if len(word_counts) > 8 else str(word_counts)
    what = f"most_frequent_pair({shown})"
    mistakes = {hint: _most_frequent(word_counts, kind) for kind, hint in PAIR_MISTAKES.items()}
    if expected_none:
        mistakes = {PAIR_NONE: ()}
    expect_equal(out, _most_frequent(word_counts), what=what, mistakes=mistakes)


def check_most_frequent_pair(fn: Callable, hidden: bool = False) -> None:
    """Learner's `most_frequent_pair(word_counts: dict[tuple[int, ...], int])`."""
    with Exercise("most_frequent_pair", hidden, BPE_FORBIDDEN) as ex:
        visible = [{(1, 2, 3): 2, (2, 3): 3, (1, 2): 1}]
        for word_counts in _pair_hidden(ex.draw) if hidden else visible:
            _check_pair_case(ex, fn, word_counts)


# --- 9. Masking for a masked language model ------------------------------------------------------

MLM_FORBIDDEN = Forbidden(python=(training.mask_for_mlm,))

# Each statistical test below fails a right answer with probability below _TAIL; one check call
# makes fewer than 100 of them (three per case, plus one per ordinary id: at most 27 + 38 in the
# two hidden cases, 47 in the visible one), so a right answer fails a check call with
# probability below 1e-6. (Two calls with differently seeded generators give the same result
# with probability 2^-(thousands of random draws): never.)
_TAIL = 1e-8


def _spread(variance: float) -> float:
    """How far a sum of independent variables, each within 1 of its mean and of total variance
    at most `variance`, strays from its mean with probability below _TAIL: Bernstein's
    inequality, P(|S - E S| >= t) <= 2 exp(-t^2 / (2 variance + 2 t / 3)), solved for t."""
    L = math.log(2 / _TAIL)
    return L / 3 + math.sqrt(L * L / 9 + 2 * variance * L)


def _near(count: float, mean: float, variance: float) -> bool:
    return abs(count - mean) <= _spread(variance)


def _mlm_batch(B: int, T: int, V: int, seed: int) -> Tensor:
    """The visible test's batch: [CLS] (1), ordinary ids (4 .. V-1), then padding (0), about a
    third of the positions."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, V, (B, T), generator=generator)  # (B, T)
    lengths = torch.randint(T // 3, T + 1, (B,), generator=generator)
    tokens = tokens.masked_fill(torch.arange(T)[None, :] >= lengths[:, None], PAD)
    tokens[:, 0] = 1
    return tokens


def _mlm_hidden(draw: Draw) -> list[tuple[Tensor, int, int, tuple[int, ...], float]]:
    """(tokens, mask_id, vocab_size, special_ids, p): the special ids and [MASK] anywhere in the
    vocabulary, a few [MASK] and special ids among the tokens, a quarter of the positions
    padding. The first batch is large enough that every ordinary id is expected about 100 times
    or more among the random replacements (a missing id shows); the second has a small p. p
    stays below 0.35, so that 1 - p and p of all positions (about p / 0.73 of the ordinary
    tokens) are told apart."""
    cases = []
    for low, high, per_id in ((0.25, 0.35, 110), (0.12, 0.2, 20)):
        p = round(draw.real(low, high), 3)
        V = draw.integer(14, 30 if per_id > 50 else 41)
        ids = draw.sample(range(V), 4)
        mask_id, special = ids[0], tuple(ids[1 : 1 + draw.integer(2, 3)])
        ordinary = [i for i in range(V) if i != mask_id and i not in special]
        K = len(ordinary)
        n_ordinary = math.ceil(per_id * K * K / (0.1 * p * (K - 1)))
        B = 128
        T = math.ceil(n_ordinary / (0.7 * B))
        pool = torch.tensor(ordinary)
        tokens = pool[draw.integers(0, K, (B, T))]  # (B, T)
        body = draw.uniform(B, T)
        tokens = torch.where(body < 0.01, mask_id, tokens)  # a few [MASK] in the input
        tokens = torch.where(body > 0.99, special[-1], tokens)  # and a special id
        lengths = draw.integers(T // 2, T + 1, (B,))
        tokens = tokens.masked_fill(torch.arange(T)[None, :] >= lengths[:, None], special[1])
        tokens[:, 0] = special[0]
        cases.append((tokens, mask_id, V, special, p))
    return cases


def _mlm_call(ex: Exercise, fn: Callable, case: tuple, generator: torch.Generator):
    tokens, mask_id, V, special, p = case
    result = ex.call(fn, tokens, mask_id, V, special, p, generator)
    if not isinstance(result, tuple | list) or len(result) != 2:
        raise ExerciseError(
            "mask_tokens should return a pair (inputs, labels)", got=type(result).__name__
        )
    for name, out in zip(("inputs", "labels"), result, strict=True):
        if not isinstance(out, Tensor) or out.shape != tokens.shape or out.dtype != torch.long:
            got = f"{out.dtype}, {tuple(out.shape)}" if isinstance(out, Tensor) else type(out)
            raise ExerciseError(
                f"mask_tokens: {name} should be an int64 tensor of shape {tuple(tokens.shape)}",
                got=got if isinstance(got, str) else got.__name__,
            )
    return result


def _check_mlm_selection(what: str, tokens: Tensor, inputs, labels, mask_id: int, specials, p):
    """The deterministic rules: labels -100 except at selected positions, which hold the
    original ids; no special id or [MASK] selected; unselected inputs unchanged."""
    selected = labels != -100  # (B, T)
    if bool(selected.all()):
        raise ExerciseError(
            f"{what}: the labels are set at every position",
            hint="only the selected positions get a label (the original id); every other "
            "position gets -100, which the loss ignores.",
        )
    if not _equal(labels[selected], tokens[selected]):
        corrupted = _equal(labels[selected], inputs[selected])
        raise ExerciseError(
            f"{what}: at the selected positions the labels are not the original ids",
            hint="the labels hold the original ids (what the model must recover), not the "
            "corrupted inputs."
            if corrupted
            else "labels = the original id where selected, -100 elsewhere.",
            likely=corrupted,
        )
    if bool((selected & _isin(tokens, specials)).any()):
        raise ExerciseError(
            f"{what}: special tokens (padding, [CLS], ...) were selected for masking",
            hint="select only ordinary tokens: selected = (torch.rand(...) < p) & ~is_special, "
            "where is_special covers special_ids (and mask_id).",
        )
    if bool((selected & (tokens == mask_id)).any()):
        raise ExerciseError(
            f"{what}: a [MASK] token in the input was selected",
            hint="mask_id counts as special too: is_special covers special_ids and mask_id.",
        )
    expect_equal(
        inputs[~selected],
        tokens[~selected],
        what=f"{what}: the inputs at the positions that were not selected (label -100)",
        mistakes={},
    )
    return selected


def _check_mlm_rates(what, tokens, inputs, selected, ordinary_ids: Tensor, mask_id: int, p):
    """The statistics: the selection rate, the 80/10/10 split, and the random replacements
    uniform over the ordinary ids."""
    ordinary = _isin(tokens, ordinary_ids)  # (B, T)
    n, S = int(ordinary.sum()), int(selected.sum())
    if not _near(S, n * p, n * p * (1 - p)):
        if _near(S, n * (1 - p), n * p * (1 - p)):
            hint = "select where torch.rand(...) < p (probability p), not > p."
        elif _near(S, n * (q := min(1.0, p * tokens.numel() / n)), n * q * (1 - q)):
            hint = (
                "each ordinary token is selected with probability p; it looks like you "
                "selected p of all positions, padding included."
            )
        else:
            hint = None
        raise ExerciseError(
            f"{what}: each ordinary token should be selected with probability p = {p}; your "
            "function selected a share of them of",
            got=round(S / max(n, 1), 4),
            hint=hint
            or "select each ordinary token independently: torch.rand(tokens.shape, "
            "generator=generator) < p, and not the special ones.",
            likely=hint is not None,
        )
    K = len(ordinary_ids)
    masked = selected & (inputs == mask_id)
    changed = selected & (inputs != mask_id) & (inputs != tokens)
    M, C = int(masked.sum()), int(changed.sum())
    _check_split(what, S, M, C, K)
    bad = changed & ~_isin(inputs, ordinary_ids)
    if bool(bad.any()):
        raise ExerciseError(
            f"{what}: a random replacement was a special token or out of range",
            got=int(inputs[bad][0]),
            hint="draw random replacements from the ordinary ids only (not the special ids, "
            "not mask_id, below vocab_size).",
        )
    _check_uniform(what, tokens[changed], inputs[changed], ordinary_ids)


def _split_matches(S: int, M: int, C: int, K: int, mask: float, rand: float) -> bool:
    """Whether M masked and C changed of S selected fit shares (mask, rand): a random token
    equal to the original is counted as unchanged, or never drawn."""
    low, high = rand * (K - 1) / K, rand
    return _near(M, mask * S, S * mask * (1 - mask)) and low * S - _spread(
        S * low * (1 - low)
    ) <= C <= high * S + _spread(S * high * (1 - high))


SPLIT_MISTAKES = [
    (
        (1.0, 0.0),
        "every selected token became [MASK]. BERT's rule: of the selected tokens 80% "
        "become [MASK], 10% a random ordinary token and 10% stay as they are, so the model cannot "
        "tell which inputs to distrust.",
    ),
    (
        (0.8, 0.0),
        "no selected token was replaced by a random token: 10% of them (those with "
        "0.8 <= u < 0.9 for one uniform draw u per token) become a random ordinary id.",
    ),
    (
        (0.8, 0.2),
        "no selected token was left unchanged: of the 20% that are not masked, half "
        "become a random token and half stay as they are.",
    ),
    (
        (0.8, 0.02),
        "only 10% of the remaining 20% became random tokens: the 10% are of all "
        "selected tokens. Draw u once per token: [MASK] if u < 0.8, random if 0.8 <= u < 0.9.",
    ),
    (
        (0.1, 0.1),
        "the shares are swapped: 80% of the selected tokens become [MASK] and 10% "
        "stay unchanged, not the other way round.",
    ),
]


def _check_split(what: str, S: int, M: int, C: int, K: int) -> None:
    if _split_matches(S, M, C, K, 0.8, 0.1):
        return
    hint = next((h for (m, r), h in SPLIT_MISTAKES if _split_matches(S, M, C, K, m, r)), None)
    raise ExerciseError(
        f"{what}: of the selected tokens these shares became [MASK], a random token and stayed",
        got=(round(M / S, 3), round(C / S, 3), round((S - M - C) / S, 3)),
        hint=hint
        or "the split is 80% [MASK], 10% a random ordinary token, 10% unchanged (one "
        "uniform draw per selected token).",
        likely=hint is not None,
    )


def _check_uniform(what: str, original: Tensor, replaced: Tensor, ordinary_ids: Tensor) -> None:
    """Each random replacement is uniform over the ordinary ids other than the token it
    replaces (a replacement equal to it is not seen): id r is expected
    mean_r = sum over changed positions j of [t_j != r] / (K - 1) times, with variance at most
    mean_r; each count must lie within _spread(mean_r) of it."""
    K, C = len(ordinary_ids), len(replaced)
    if C == 0 or K < 2:
        return
    V = int(ordinary_ids.max()) + 1
    counts = torch.bincount(replaced, minlength=V)[ordinary_ids].double()  # (K,)
    originals = torch.bincount(original, minlength=V)[ordinary_ids].double()  # (K,)
    means = (C - originals) / (K - 1)  # (K,)
    outside = [i for i in range(K) if not _near(float(counts[i]), float(means[i]), float(means[i]))]
    if not outside:
        return
    if int(counts.max()) == C:
        hint = (
            "the random replacements are always the same id: draw each one uniformly from "
            "the ordinary ids, e.g. ordinary[torch.randint(len(ordinary), ..., "
            "generator=generator)]."
        )
    elif any(int(counts[i]) == 0 for i in outside):
        missing = next(int(ordinary_ids[i]) for i in outside if int(counts[i]) == 0)
        hint = (
            f"some ordinary ids (such as {missing}) are never drawn as random replacements: "
            "draw from all the ordinary ids (every id below vocab_size that is neither special "
            "nor mask_id), not a fixed range."
        )
    else:
        hint = None
    raise ExerciseError(
        f"{what}: the random replacements are not uniform over the ordinary ids ({C} of them)",
        hint=hint or "draw each random replacement uniformly from the ordinary ids.",
        likely=hint is not None,
    )


def _check_mlm_case(ex: Exercise, fn: Callable, case: tuple, generators: tuple) -> None:
    tokens, mask_id, V, special, p = case
    first, again, other = generators
    inputs, labels = _mlm_call(ex, fn, case, first)
    B, T = tokens.shape
    what = f"mask_tokens on a ({B}, {T}) batch, V={V}, mask_id={mask_id}, special_ids={special}"
    specials = torch.tensor(special)
    not_ordinary = torch.tensor([*special, mask_id])
    ordinary_ids = torch.tensor([i for i in range(V) if not bool((not_ordinary == i).any())])
    selected = _check_mlm_selection(what, tokens, inputs, labels, mask_id, specials, p)
    _check_mlm_rates(what, tokens, inputs, selected, ordinary_ids, mask_id, p)
    repeated = _mlm_call(ex, fn, case, again)
    if not (_equal(repeated[0], inputs) and _equal(repeated[1], labels)):
        raise ExerciseError(
            f"{what}: two calls with generators seeded alike gave different results",
            hint="pass generator=generator to every random draw (torch.rand, torch.randint).",
        )
    different = _mlm_call(ex, fn, case, other)
    if _equal(different[0], inputs) and _equal(different[1], labels):
        raise ExerciseError(
            f"{what}: two calls with generators seeded differently gave the same result",
            hint="draw every random number from the generator you are given (not from a new "
            "one seeded by your code).",
        )


def _generators(seed_or_generator: Any) -> tuple[torch.Generator, ...]:
    """A generator, another in the same state, and a differently seeded one."""
    first = (
        seed_or_generator
        if isinstance(seed_or_generator, torch.Generator)
        else torch.Generator().manual_seed(seed_or_generator)
    )
    again = torch.Generator()
    again.set_state(first.get_state())
    other = torch.Generator().manual_seed(first.initial_seed() + 1)
    return first, again, other


def check_mask_tokens(fn: Callable, hidden: bool = False) -> None:
    """Learner's `mask_tokens(tokens (B, T), mask_id, vocab_size, special_ids, p, generator)
    -> (inputs, labels)`, checked by its statistics on large batches."""
    with Exercise("mask_tokens", hidden, MLM_FORBIDDEN) as ex:
        if hidden:
            cases = [(case, _generators(ex.draw.generator())) for case in _mlm_hidden(ex.draw)]
        else:
            visible = (_mlm_batch(64, 128, 50, 1), 3, 50, (PAD, 1), 0.15)
            cases = [(visible, _generators(1))]
        for case in cases:
            _check_mlm_case(ex, fn, *case)


# --- 10. Greedy decoding -------------------------------------------------------------------------

_DECODE_CONFIG = TransformerConfig(
    vocab_size=10, context_length=24, d_model=16, n_heads=2, n_layers=1, d_ff=32, tie_weights=False
)  # untied: an untrained tied model only echoes its last input token
DECODE_FORBIDDEN = Forbidden(
    python=(
        decoding.greedy_decode,
        decoding.beam_search,
        decoding.encoder_decoder_step,
        decoding.translate,
    )
)


@cache
def _copy_model(steps: int) -> Transformer:
    """A tiny float64 encoder-decoder, seeded, trained `steps` steps to copy its source.

    Partly trained, it writes <eos> after a few tokens, at a different step in each row.
    """
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Transformer(_DECODE_CONFIG).double()
        if steps:
            generator = torch.Generator().manual_seed(0)
            optimizer = _optimizer("adam", model.parameters(), 1e-2)
            B, S, V = 16, 6, _DECODE_CONFIG.vocab_size
            for _ in range(steps):
                lengths = torch.randint(2, S, (B,), generator=generator)
                mask = torch.arange(S)[None, :] < lengths[:, None]  # (B, S)
                src = torch.randint(3, V, (B, S), generator=generator).masked_fill(~mask, PAD)
                tgt = _cat([src, torch.zeros(B, 1, dtype=torch.long)], dim=1)  # (B, S + 1)
                tgt[torch.arange(B), lengths] = EOS
                logits = model(src, _shift_right(tgt, BOS), mask)  # (B, S + 1, V)
                loss = _cross_entropy(logits.reshape(-1, V), tgt.reshape(-1), ignore_index=PAD)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return model.eval()


def _greedy(model, src, mask, max_len: int, kind: str = "") -> Tensor:
    """Greedy decoding as the solution does it, or as a likely mistake does."""
    with torch.no_grad():
        enc_mask = None if kind == "no_mask" else mask
        dec_mask = None if kind in ("no_mask", "no_decoder_mask") else mask
        memory = model.encode(src, enc_mask)  # (B, S, C)
        tokens = torch.full((src.shape[0], 1), BOS, dtype=torch.long)  # (B, 1)
        done = torch.zeros(src.shape[0], dtype=torch.bool)
        for _ in range(max_len - (kind == "max_len_total")):
            if int(tokens.max()) >= model.config.vocab_size:
                break  # a position taken for a token: the model refuses it (the learner's fails)
            fed = tokens[:, :1] if kind == "no_feedback" else tokens
            logits = model.decode(fed, memory, dec_mask)  # (B, t, V)
            if kind == "argmax_positions":
                next_token = logits.argmax(dim=1)[:, -1]  # (B,) a position, not a token
            else:
                next_token = logits[:, -1].argmax(dim=-1)  # (B,)
            if kind not in ("no_eos_fill", "no_fill_stop"):
                next_token = next_token.masked_fill(done, EOS)
            done = done | (next_token == EOS)
            tokens = _cat([tokens, next_token[:, None]], dim=1)  # (B, t + 1)
            if kind == "stop_at_any" and done.any():
                break
            if kind not in ("no_stop", "no_eos_fill") and done.all():
                break
    return tokens


GREEDY_MISTAKES = {
    "no_feedback": "every step predicts from <bos> alone: feed back everything written so far "
    "(the growing tokens tensor) and take the logits of the last position, logits[:, -1].",
    "argmax_positions": "argmax over the wrong dimension: the last position's logits have shape "
    "(B, V); take .argmax(dim=-1) over the vocabulary.",
    "no_eos_fill": "a row that has written <eos> must keep writing <eos> (fill finished rows "
    "with eos_id), and decoding stops once every row has finished.",
    "no_fill_stop": "a row that has written <eos> must keep writing <eos>: here a finished row "
    "went on with other tokens until every row had finished. Fill the finished rows with eos_id "
    "(next_token.masked_fill(done, eos_id)).",
    "no_stop": "stop as soon as every row has written <eos>; here decoding ran on to max_len.",
    "stop_at_any": "decoding stopped when the first row finished; stop only when every row has "
    "written <eos> (done.all(), not done.any()).",
    "no_mask": "the source padding mask was not used: pass src_padding_mask to model.encode "
    "and to model.decode, or the model attends to the padding.",
    "no_decoder_mask": "the decoder's cross-attention needs the source padding mask too: "
    "model.decode(tokens, memory, src_padding_mask).",
    "max_len_total": "max_len counts the new tokens, <bos> not included: the output may have "
    "up to 1 + max_len columns.",
}
ARGMAX_HINT = (
    "is the argmax over the right dimension? logits[:, -1] has shape (B, V): take "
    ".argmax(dim=-1) over the vocabulary, then add a column, next_token[:, None]."
)
GREEDY_ERRORS = {"size": ARGMAX_HINT, "dimension": ARGMAX_HINT, "token ids must lie": ARGMAX_HINT}


def _separates(model, src: Tensor, max_len: int, kinds: list[str], ending: bool) -> bool:
    """Whether, on `src`, the right output ends (every row writes <eos> before max_len, not
    all at the same step) or runs to max_len, as `ending` asks, and each mistake of `kinds`
    gives an output of its own (unlike the right one and every other mistake's)."""
    mask = src != PAD
    right = _greedy(model, src, mask, max_len)
    if not ending:
        if right.shape[1] != 1 + max_len:
            return False
    else:
        first_eos = (right == EOS).int().argmax(dim=1)  # (B,)
        if not bool((right == EOS).any(dim=1).all()) or right.shape[1] >= max_len:
            return False
        if len(set(first_eos.tolist())) < 2:
            return False
    outputs = {kind: _greedy(model, src, mask, max_len, kind) for kind in GREEDY_MISTAKES}
    outputs[""] = right
    return all(
        not (out.shape == outputs[kind].shape and _equal(out, outputs[kind]))
        for kind in kinds
        for other, out in outputs.items()
        if other != kind
    )


def _greedy_source(draw: Draw, B: int) -> Tensor:
    """(B, S) source ids 3 .. 9 with padding (0): one full row, one with two pads or more."""
    S = draw.integer(4, 7)
    lengths = [S, draw.integer(2, S - 2)] + [draw.integer(2, S) for _ in range(B - 2)]
    lengths = draw.sample(lengths, B)
    src = draw.integers(3, _DECODE_CONFIG.vocab_size, (B, S))
    return src.masked_fill(torch.arange(S)[None, :] >= torch.tensor(lengths)[:, None], PAD)


def _greedy_hidden(draw: Draw) -> list[tuple[int, Tensor, int]]:
    """(training steps, src, max_len). First, a model trained to copy, on sources where every
    row writes <eos> (at different steps) and every mistake but max_len_total gives its own
    output; then one where decoding runs to max_len and max_len_total shows; then an untrained
    model. Sources are drawn until they separate the mistakes (nearly always the first)."""
    model = _copy_model(40)
    ending = [k for k in GREEDY_MISTAKES if k != "max_len_total"]
    cases = []
    for kinds, is_ending, lengths in ((ending, True, (4, 8)), (["max_len_total"], False, (1, 3))):
        for _ in range(50):
            src = _greedy_source(draw, draw.integer(3, 4))
            max_len = src.shape[1] + draw.integer(*lengths) if is_ending else draw.integer(*lengths)
            if _separates(model, src, max_len, kinds, is_ending):
                break
        else:  # not met in practice; these sources separate them
            src = torch.tensor([[6, 9, 0, 0, 0], [8, 7, 3, 9, 7], [5, 6, 5, 0, 0]])
            max_len = 8 if is_ending else 2
        cases.append((40, src, max_len))
    cases.append((0, _greedy_source(draw, draw.integer(1, 3)), draw.integer(1, 6)))
    return cases


def _check_greedy_case(ex: Exercise, fn: Callable, steps: int, src: Tensor, max_len: int) -> None:
    model = _copy_model(steps)
    mask = src != PAD  # (B, S)
    out = ex.call(
        fn, copy.deepcopy(model), src, mask, BOS, EOS, max_len, hints=GREEDY_ERRORS
    )  # a copy: whatever the learner's code does to its model stays there
    with quiet():
        expected = _greedy_decode(
            _encoder_decoder_step(model, src, mask),
            torch.full((src.shape[0], 1), BOS, dtype=torch.long),
            max_len,
            EOS,
        )
    trained = "a model trained a few steps to copy" if steps else "an untrained model"
    shown = f"a ({src.shape[0]}, {src.shape[1]}) src" if ex.hidden else f"src {src.tolist()}"
    what = f"greedy_translate with {trained}, {shown}, max_len={max_len}"
    if isinstance(out, Tensor) and out.dim() == 2 and out.shape[1] >= 1:
        if not bool((out[:, 0] == BOS).all()):
            raise ExerciseError(
                f"{what}: the output must start with the <bos> column it began from",
                got=out[:, 0],
                expected=expected[:, 0],
                hint="start from tokens = torch.full((B, 1), bos_id) and return all of them.",
                likely=False,
            )
    mistakes = {
        hint: (lambda kind=kind: _greedy(model, src, mask, max_len, kind))
        for kind, hint in GREEDY_MISTAKES.items()
    }
    expect_equal(out, expected, what=what, mistakes=mistakes)


def check_greedy_translate(fn: Callable, hidden: bool = False) -> None:
    """Learner's `greedy_translate(model, src (B, S), src_padding_mask (B, S), bos_id, eos_id,
    max_len) -> (B, 1 + n)` with n <= max_len."""
    with Exercise("greedy_translate", hidden, DECODE_FORBIDDEN) as ex:
        src = torch.tensor([[4, 5, 6, 7, 0, 0], [8, 9, 0, 0, 0, 0], [5, 5, 5, 5, 5, 5]])
        for case in _greedy_hidden(ex.draw) if hidden else [(0, src, 5)]:
            _check_greedy_case(ex, fn, *case)


watch_module(__name__)
