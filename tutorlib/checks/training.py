"""Checks for the Chapter 3 exercises (solutions/03_training).

As in Chapters 1 and 2: `hidden=False` runs the visible tests (a worked example), `hidden=True`
the hidden ones (random inputs against the reference, edge cases, gradients). While the
learner's code runs, the tutorlib reference and the torch built-in that would do the work
raise. Two checks are different in kind: `check_training_step` runs two optimizer steps on a
tiny seeded encoder-decoder and compares the updated weights, and `check_mask_tokens` checks a
random function by its statistics on a large seeded batch.

The byte-pair-encoding references (`merge_pair`, `most_frequent_pair`) are written out here,
with the likely mistakes next to them; tutorlib.tokenizers' versions are blocked while the
learner's code runs.

Book: Chapter 3 exercises.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Callable
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import clip_grad as _clip_grad_module

from tutorlib import decoding, tokenizers, training
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
_cat, _equal, _isin = torch.cat, torch.equal, torch.isin

PAD, BOS, EOS = 0, 1, 2  # the special ids of every check's toy vocabulary


def _existing(targets: list[Target]) -> list[Target]:
    """The targets that this torch (or tutorlib) version has."""
    return [(owner, name) for owner, name in targets if owner is not None and hasattr(owner, name)]


def _expect_equal(actual: Any, expected: Any, what: str, mistakes: dict[str, Any]) -> None:
    """Exact equality (lists, tuples, None), or the hint of the first mistaken value it equals."""
    if actual == expected and type(actual) is type(expected):
        return
    for hint, wrong in mistakes.items():
        if wrong != expected and actual == wrong:
            raise ExerciseError(f"{what} is not right. Likely mistake: {hint}")
    raise ExerciseError(f"{what} returned {actual!r}, expected {expected!r}.")


def _expect_tokens(actual: Any, expected: Tensor, what: str, mistakes: dict[str, Tensor]) -> None:
    """Integer tensors equal exactly; a mistaken tensor of any shape is recognised."""
    if not isinstance(actual, Tensor):
        raise ExerciseError(f"{what} should be a torch.Tensor, got {type(actual).__name__}.")
    if _equal(actual.cpu(), expected) and actual.dtype == expected.dtype:
        return
    for hint, wrong in mistakes.items():
        if wrong.shape == actual.shape and not _equal(wrong, expected):
            if _equal(actual.cpu().to(wrong.dtype), wrong):
                raise ExerciseError(f"{what} is not right. Likely mistake: {hint}")
    if actual.dtype != expected.dtype:
        raise ExerciseError(
            f"{what} has dtype {actual.dtype}, expected {expected.dtype} (token ids are int64: "
            "build new tensors with dtype=torch.long, or from the input's own ids)."
        )
    expect_close(actual, expected, what=what, atol=0, rtol=0)


# --- 1. The 2017 learning-rate schedule ----------------------------------------------------------


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


def check_transformer_lr(fn: Callable[[int, int, int], float], hidden: bool = False) -> None:
    """Learner's `transformer_lr(step, d_model, warmup_steps) -> float`, step = 1, 2, ..."""
    forbidden = [(training, "inverse_sqrt_schedule")]
    if hidden:
        cases = [(64, 10, [2, 5, 9, 10, 11, 12, 40, 1000]), (512, 4000, [1, 3999, 4000, 4001])]
        cases += [(16, 1, [1, 2, 3, 100])]
    else:
        cases = [(512, 4000, [2, 1000, 4000, 16000])]
    for d_model, warmup, steps in cases:
        got = []
        for step in steps:
            value = run_candidate(
                fn, step, d_model, warmup, exercise="transformer_lr", forbidden=forbidden
            )
            if isinstance(value, Tensor) and value.numel() == 1:
                value = value.item()
            if not isinstance(value, int | float):
                raise ExerciseError(
                    f"transformer_lr should return a float, got {type(value).__name__}."
                )
            got.append(float(value))
        expected = [_lr(s, d_model, warmup) for s in steps]
        what = f"transformer_lr for d_model={d_model}, warmup_steps={warmup}"
        if all(math.isclose(a, e, rel_tol=1e-6) for a, e in zip(got, expected, strict=True)):
            continue
        for kind, hint in LR_MISTAKES.items():
            wrong = [_lr(s, d_model, warmup, kind) for s in steps]
            if all(math.isclose(a, w, rel_tol=1e-6) for a, w in zip(got, wrong, strict=True)):
                raise ExerciseError(f"{what} is not right. Likely mistake: {hint}")
        i = next(i for i, (a, e) in enumerate(zip(got, expected, strict=True)) if a != e)
        raise ExerciseError(
            f"{what}, step {steps[i]}: got {got[i]:.6g}, expected {expected[i]:.6g}."
        )
    if hidden:
        for step in (0, -3):
            try:
                with quiet():
                    value = fn(step, 512, 4000)
            except ValueError:
                continue
            except Exception as error:
                raise ExerciseError(
                    f"transformer_lr({step}, 512, 4000) raised {type(error).__name__}; steps "
                    "count from 1, so raise a ValueError for step < 1."
                ) from None
            raise ExerciseError(
                f"transformer_lr({step}, 512, 4000) returned {value!r}; steps count from 1, "
                "so raise a ValueError for step < 1 (step^-0.5 is undefined at 0)."
            )
    report_ok("transformer_lr", hidden)


# --- 2. Teacher forcing ------------------------------------------------------------------------


def _padded_targets(lengths: list[int], T: int, V: int, seed: int) -> Tensor:
    """Rows of ordinary ids (3 .. V-1), then <eos>, then padding: (B, T) int64."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(3, V, (len(lengths), T), generator=generator)  # (B, T)
    for row, n in enumerate(lengths):  # n ordinary ids, then <eos> if it fits
        if n < T:
            targets[row, n] = EOS
            targets[row, n + 1 :] = PAD
    return targets


def _shift_right(targets: Tensor, first: int) -> Tensor:
    column = torch.full_like(targets[:, :1], first)  # (B, 1)
    return _cat([column, targets[:, :-1]], dim=1)  # (B, T)


def check_teacher_forcing(fn: Callable, hidden: bool = False) -> None:
    """Learner's `teacher_forcing(targets (B, T), bos_id, pad_id) -> (inputs, labels)`."""
    if hidden:
        cases = [([4, 2, 6], 7, 11, 1), ([0, 3], 5, 8, 2), ([1], 2, 6, 3), ([5, 5, 5, 5], 6, 9, 4)]
    else:
        cases = [([2, 3], 4, 10, 0)]
    for lengths, T, V, seed in cases:
        targets = _padded_targets(lengths, T, V, seed)
        if not hidden and seed == 0:  # the worked example of the notebook
            targets = torch.tensor([[5, 6, EOS, PAD], [7, 8, 9, EOS]])
        saved = targets.clone()
        result = run_candidate(fn, targets, BOS, PAD, exercise="teacher_forcing")
        if not _equal(targets, saved):
            raise ExerciseError("teacher_forcing changed its input: build new tensors instead.")
        if not isinstance(result, tuple) or len(result) != 2:
            raise ExerciseError("teacher_forcing should return a pair (decoder_inputs, labels).")
        inputs, labels = result
        what = f"teacher_forcing's decoder inputs for targets\n{targets.tolist()}\n"
        B, T = targets.shape
        if isinstance(inputs, Tensor) and inputs.shape == (B, T - 1):
            raise ExerciseError(
                f"{what}have shape {(B, T - 1)}, expected {(B, T)}: start every row with "
                "<bos> (bos_id) and drop the last column, so inputs and labels line up."
            )
        _expect_tokens(
            inputs,
            _shift_right(targets, BOS),
            what,
            {
                "the decoder inputs equal the labels: the decoder would see the very token it "
                "must predict and learn to copy it. Shift right: <bos>, then targets[:, :-1].": (
                    targets
                ),
                "shifted the wrong way: the decoder input at position t is the target at t - 1 "
                "(the previous token), so prepend <bos> and drop the last column.": _cat(
                    [targets[:, 1:], torch.full_like(targets[:, :1], PAD)], dim=1
                ),
                "the first target token was dropped instead of the last: <bos> goes in front "
                "of targets[:, :-1], not in place of targets[:, 0].": _cat(
                    [torch.full_like(targets[:, :1], BOS), targets[:, 1:]], dim=1
                ),
                "the first decoder input must be <bos> (bos_id), not padding.": _shift_right(
                    targets, PAD
                ),
            },
        )
        _expect_tokens(
            labels,
            targets,
            "teacher_forcing's labels",
            {
                "the labels are the targets themselves, unshifted; only the decoder inputs "
                "move one step to the right.": _cat(
                    [targets[:, 1:], torch.full_like(targets[:, :1], PAD)], dim=1
                ),
                "the labels are the targets themselves, not the shifted decoder inputs.": (
                    _shift_right(targets, BOS)
                ),
            },
        )
    report_ok("teacher_forcing", hidden)


# --- 3. Label-smoothed cross-entropy -------------------------------------------------------------

_LOSS_FORBIDDEN: list[Target] = [
    (F, "cross_entropy"),
    (F, "nll_loss"),
    (nn.CrossEntropyLoss, "forward"),
    (nn.NLLLoss, "forward"),
    (training, "label_smoothed_cross_entropy"),
    (training, "sequence_cross_entropy"),
]


def _smoothed_variant(logits: Tensor, targets: Tensor, s: float, pad: int, kind: str) -> Tensor:
    """The loss as a likely mistake computes it; `logits` (B, T, V), `targets` (B, T)."""
    V = logits.shape[-1]
    log_p = _log_softmax(logits.reshape(-1, V), dim=-1)  # (N, V)
    y = targets.reshape(-1)  # (N,)
    keep = (y != pad) | (kind == "pad_as_target")  # (N,)
    nll = -log_p.gather(1, y.unsqueeze(1)).squeeze(1)  # (N,)
    others = -log_p.sum(dim=-1) - nll  # (N,): the wrong classes' -log p, summed
    if kind == "no_smoothing":
        per_token = nll
    elif kind == "v_minus_1":  # fairseq: eps / (V - 1) on every wrong class
        per_token = (1 - s) * nll + s / (V - 1) * others
    elif kind == "v_minus_2":  # the Annotated Transformer: not the true class, not padding
        per_token = (1 - s) * nll + s / (V - 2) * (others + log_p[:, pad] * (y != pad))
    else:
        per_token = (1 - s) * nll + s * (-log_p.mean(dim=-1))
        if kind == "kl":  # KL(q || p) = cross-entropy - entropy of the smoothed target q
            q = torch.full_like(log_p, s / V).scatter_add(
                1, y.unsqueeze(1), torch.full_like(nll.unsqueeze(1), 1 - s)
            )
            per_token = per_token + (q * q.log()).sum(dim=-1)
    total = (per_token * keep).sum()
    if kind == "sum":
        return total
    return total / (len(y) if kind == "pad_in_mean" else keep.sum())


SMOOTHED_MISTAKES = {
    "pad_in_mean": "the padding positions are counted in the mean: divide by the number of "
    "non-padding targets, not by B * T.",
    "pad_as_target": "padding is not ignored: positions whose target is pad_id must add "
    "nothing to the loss and be left out of the mean.",
    "no_smoothing": "the smoothing is missing: this is the plain cross-entropy. The target puts "
    "1 - smoothing on the true token and smoothing / V on every token.",
    "v_minus_1": "the smoothing mass is spread over the V - 1 wrong classes (fairseq's "
    "convention). torch's label_smoothing, and this exercise, spread it over all V classes, the "
    "true one included: target = (1 - smoothing) * one_hot + smoothing / V.",
    "v_minus_2": "the smoothing mass leaves out the true class and the padding class (the "
    "Annotated Transformer's convention, smoothing / (V - 2)). torch's label_smoothing, and this "
    "exercise, spread it over all V classes, padding and the true class included: target = "
    "(1 - smoothing) * one_hot + smoothing / V.",
    "sum": "the loss is summed over positions; take the mean over the non-padding positions.",
    "kl": "this is the KL divergence to the smoothed target, which is the cross-entropy minus "
    "the target's entropy; return the cross-entropy, -sum_v target_v log p_v.",
}


def _check_smoothed_case(
    fn: Callable, shape: tuple, lengths: list, s: float, pad: int, seed: int, grad: bool
) -> None:
    B, T, V = shape
    logits = random_tensor(B, T, V, seed=seed, grad=grad)
    targets = _padded_targets(lengths, T, V, seed)
    if pad != PAD:  # another id plays padding; give the old pads an ordinary id
        targets = targets.masked_fill(targets == PAD, 3).masked_fill(targets == EOS, pad)
        targets[:, -1] = pad
    expected = _cross_entropy(
        logits.reshape(-1, V), targets.reshape(-1), ignore_index=pad, label_smoothing=s
    )
    out = run_candidate(
        fn, logits, targets, s, pad, exercise="smoothed_loss", forbidden=_LOSS_FORBIDDEN
    )
    ld = logits.detach()
    mistakes = {
        hint: (lambda kind=kind: _smoothed_variant(ld, targets, s, pad, kind))
        for kind, hint in SMOOTHED_MISTAKES.items()
    }
    if s == 0:  # without smoothing these conventions all agree with the reference
        for kind in ("no_smoothing", "v_minus_1", "v_minus_2", "kl"):
            del mistakes[SMOOTHED_MISTAKES[kind]]
    what = f"smoothed_loss for logits {(B, T, V)}, smoothing={s}, pad_id={pad}"
    expect_close(out, expected, what=what, mistakes=mistakes, atol=1e-10, rtol=1e-8)
    if grad:
        if isinstance(out, Tensor) and not out.requires_grad:
            raise ExerciseError(
                "No gradient reaches logits through your smoothed_loss: did you use .detach(), "
                ".item(), .numpy() or torch.no_grad() on the way?"
            )
        expect_backward_close(out, expected, {"logits": logits}, "smoothed_loss")


def check_smoothed_loss(fn: Callable, hidden: bool = False) -> None:
    """Learner's `smoothed_loss(logits (B, T, V), targets (B, T), smoothing, pad_id) -> ()`,
    equal to F.cross_entropy(..., ignore_index=pad_id, label_smoothing=smoothing)."""
    if hidden:
        cases = [((3, 5, 7), [4, 1, 2], 0.1, PAD, 1), ((2, 4, 6), [0, 2], 0.3, 5, 2)]
        cases += [((2, 3, 5), [2, 1], 0.0, PAD, 3), ((1, 6, 9), [5], 0.2, PAD, 4)]
    else:
        cases = [((2, 4, 6), [3, 1], 0.1, PAD, 0)]
    for case in cases:
        _check_smoothed_case(fn, *case, grad=hidden)
    report_ok("smoothed_loss", hidden)


# --- 4. Gradient clipping ------------------------------------------------------------------------

_CLIP_FORBIDDEN: list[Target] = _existing(
    [
        (nn.utils, "clip_grad_norm_"),
        (nn.utils, "clip_grad_norm"),
        (nn.utils, "clip_grads_with_norm_"),
        (nn.utils, "get_total_norm"),
        (_clip_grad_module, "clip_grad_norm_"),
        (_clip_grad_module, "clip_grad_norm"),
        (_clip_grad_module, "clip_grads_with_norm_"),
        (_clip_grad_module, "get_total_norm"),
        (_clip_grad_module, "_clip_grads_with_norm_"),
        (_clip_grad_module, "_get_total_norm"),
    ]
)


def _parameters(shapes: list[tuple[int, ...]], scale: float, seed: int) -> list[nn.Parameter]:
    params = []
    for i, shape in enumerate(shapes):
        p = nn.Parameter(random_tensor(*shape, seed=seed + 2 * i))
        p.grad = scale * random_tensor(*shape, seed=seed + 2 * i + 1)
        params.append(p)
    return params


def _clip_variant(grads: list[Tensor], max_norm: float, kind: str) -> tuple[Tensor, list[Tensor]]:
    """(returned norm, clipped gradients) as a likely mistake computes them."""
    norms = torch.stack([g.norm() for g in grads])
    total = norms.sum() if kind == "sum_of_norms" else norms.square().sum().sqrt()
    if kind == "per_parameter":
        clipped = [g * torch.clamp(max_norm / (g.norm() + 1e-6), max=1.0) for g in grads]
    elif kind == "not_in_place":
        clipped = list(grads)
    else:
        coef = max_norm / (total + 1e-6)
        clipped = [g * (coef if kind == "scale_up" else coef.clamp(max=1.0)) for g in grads]
    if kind == "norm_after":
        return total.clamp(max=max_norm), clipped
    return total, clipped


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
}


def _check_clip_case(
    fn: Callable, shapes: list, scale: float, max_norm: float, seed: int, generator: bool
) -> None:
    params = _parameters(shapes, scale, seed)
    if len(params) > 2:
        params[1].grad = None  # a parameter that took no part: skip it
    grads = [p.grad.clone() for p in params if p.grad is not None]
    reference = [nn.Parameter(p.detach().clone()) for p in params]
    for r, p in zip(reference, params, strict=True):
        r.grad = None if p.grad is None else p.grad.clone()
    expected_norm = _clip_grad_norm(reference, max_norm)
    arg: Any = (p for p in params) if generator else params
    out = run_candidate(fn, arg, max_norm, exercise="clip_gradients", forbidden=_CLIP_FORBIDDEN)
    what = f"clip_gradients on {len(params)} parameters, max_norm={max_norm}"
    if isinstance(out, int | float):
        out = torch.tensor(float(out), dtype=torch.float64)
    variants = {
        hint: (lambda kind=kind: _clip_variant(grads, max_norm, kind))
        for kind, hint in CLIP_MISTAKES.items()
    }
    got = [p.grad for p in params if p.grad is not None]
    if len(got) != len(grads) or (len(params) > 2 and params[1].grad is not None):
        raise ExerciseError(f"{what}: a parameter whose .grad is None must keep grad None.")
    flat_expected = _cat([r.grad.reshape(-1) for r in reference if r.grad is not None])
    flat_got = _cat([g.reshape(-1) for g in got]).detach()
    try:
        expect_close(
            out,
            expected_norm,
            what=f"The total norm returned by {what}",
            mistakes={h: (lambda v=v: v()[0]) for h, v in variants.items()},
            atol=1e-8,
            rtol=1e-6,
        )
        expect_close(
            flat_got,
            flat_expected,
            what=f"The gradients after {what}",
            mistakes={
                h: (lambda v=v: _cat([g.reshape(-1) for g in v()[1]])) for h, v in variants.items()
            },
            atol=1e-8,
            rtol=1e-6,
        )
    except ExerciseError as error:
        if generator:
            raise ExerciseError(
                f"{error} Note: here `parameters` was a generator (as model.parameters() is), "
                "which can be iterated only once: start with parameters = list(parameters)."
            ) from None
        raise


def check_clip_gradients(fn: Callable, hidden: bool = False) -> None:
    """Learner's `clip_gradients(parameters, max_norm) -> total norm before clipping`, clipping
    every .grad in place like torch.nn.utils.clip_grad_norm_."""
    if hidden:
        cases = [
            ([(4, 3), (5,), (2, 2, 2)], 1.0, 1.0, 10, False),
            ([(6,), (3, 3)], 0.01, 5.0, 20, False),  # already below max_norm: unchanged
            ([(7, 2), (1,), (3,)], 3.0, 0.5, 30, True),  # a generator, like model.parameters()
            ([(2,)], 1.0, 0.1, 40, False),
        ]
    else:
        cases = [([(3,), (2, 2)], 1.0, 1.0, 0, False)]
    for shapes, scale, max_norm, seed, generator in cases:
        _check_clip_case(fn, shapes, scale, max_norm, seed, generator)
    report_ok("clip_gradients", hidden)


# --- 5. One training step ------------------------------------------------------------------------

_STEP_CONFIG = TransformerConfig(
    vocab_size=12, context_length=16, d_model=16, n_heads=2, n_layers=1, d_ff=32
)


@cache
def _tiny_transformer(seed: int) -> Transformer:
    """A seeded float64 encoder-decoder (d_model 16, one layer); never trained in place."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Transformer(_STEP_CONFIG).double()


def _step_batch(B: int, S: int, T: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """(src (B, S), src_padding_mask (B, S), tgt (B, T)) with padding in both."""
    generator = torch.Generator().manual_seed(seed)
    V = _STEP_CONFIG.vocab_size
    src_lengths = torch.randint(1, S + 1, (B,), generator=generator)
    src_lengths[0] = S
    src_padding_mask = torch.arange(S)[None, :] < src_lengths[:, None]  # (B, S)
    src = torch.randint(3, V, (B, S), generator=generator).masked_fill(~src_padding_mask, PAD)
    lengths = torch.randint(0, T, (B,), generator=generator).tolist()
    lengths[0] = T - 1
    return src, src_padding_mask, _padded_targets(lengths, T, V, seed + 1)


def _reference_step(
    model: nn.Module, batch: tuple, optimizer: torch.optim.Optimizer, max_norm: float, kind: str
) -> float:
    """One step as the solution takes it, or as a likely mistake does."""
    src, src_padding_mask, tgt = batch
    inputs = tgt if kind == "no_shift" else _shift_right(tgt, BOS)  # (B, T)
    logits = model(src, inputs, src_padding_mask)  # (B, T, V)
    loss = _cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        tgt.reshape(-1),
        ignore_index=-100 if kind == "pad_not_ignored" else PAD,
    )
    if kind != "no_zero_grad":
        optimizer.zero_grad()
    loss.backward()
    if kind != "no_clip":
        _clip_grad_norm(model.parameters(), max_norm)
    optimizer.step()
    return loss.item()


def _make_optimizer(model: nn.Module, name: str) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.5)
    return torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.01)


def _run_steps(step: Callable, seed: int, batches: list, opt: str, max_norm: float):
    """Two steps on a fresh copy of the tiny model: (losses, flat weights after)."""
    model = copy.deepcopy(_tiny_transformer(seed)).train()
    optimizer = _make_optimizer(model, opt)
    losses = [step(model, batch, optimizer, max_norm) for batch in batches]
    weights = _cat([p.detach().reshape(-1) for p in model.parameters()])
    return losses, weights


STEP_MISTAKES = {
    "no_zero_grad": "the gradients are not zeroed, so they accumulate from one step to the "
    "next: call optimizer.zero_grad() before loss.backward().",
    "no_clip": "the gradients were not clipped before optimizer.step() (clipping after the step "
    "changes nothing: the next step zeroes them). Order: zero_grad, backward, clip, step.",
    "no_shift": "the decoder inputs are not shifted: the decoder sees the token it must "
    "predict. Feed <bos> + tgt[:, :-1] and predict tgt (your teacher_forcing).",
    "pad_not_ignored": "the padding positions count in the loss: pass ignore_index=pad_id to "
    "F.cross_entropy.",
}


def _check_step_case(
    fn: Callable, seed: int, opt: str, max_norm: float, B: int, S: int, T: int
) -> None:
    batches = [_step_batch(B, S, T, 10 * seed + i) for i in range(2)]

    def candidate(model, batch, optimizer, max_norm):
        loss = run_candidate(
            fn, model, batch, optimizer, max_norm, BOS, PAD, exercise="training_step"
        )
        if isinstance(loss, Tensor):
            raise ExerciseError(
                "training_step returned a tensor; return the loss as a Python float "
                "(loss.item()), so that nothing keeps the graph alive."
            )
        if not isinstance(loss, float):
            raise ExerciseError(f"training_step should return a float, got {loss!r}.")
        return loss

    losses, weights = _run_steps(candidate, seed, batches, opt, max_norm)
    expected_losses, expected_weights = _run_steps(
        lambda *a, kind="": _reference_step(*a, kind), seed, batches, opt, max_norm
    )
    variants = {
        hint: cache(
            lambda kind=kind: _run_steps(
                lambda *a: _reference_step(*a, kind), seed, batches, opt, max_norm
            )
        )
        for kind, hint in STEP_MISTAKES.items()
    }
    what = f"training_step ({opt.upper()}, max_norm={max_norm}, batch of {B})"
    if _equal(weights, _run_steps(lambda *a: None, seed, [], opt, max_norm)[1]):
        raise ExerciseError(
            f"{what} did not change the weights: call optimizer.step() after "
            "loss.backward(), and zero the gradients before backward, not between "
            "backward and step."
        )
    expect_close(
        torch.tensor(losses, dtype=torch.float64),
        torch.tensor(expected_losses, dtype=torch.float64),
        what=f"The losses returned by two calls of {what}",
        mistakes={
            h: (lambda v=v: torch.tensor(v()[0], dtype=torch.float64)) for h, v in variants.items()
        },
        atol=1e-8,
    )
    expect_close(
        weights,
        expected_weights,
        what=f"The weights after two calls of {what}",
        mistakes={h: (lambda v=v: v()[1]) for h, v in variants.items()},
        atol=1e-8,
    )


def check_training_step(fn: Callable, hidden: bool = False) -> None:
    """Learner's `training_step(model, batch, optimizer, max_norm, bos_id, pad_id) -> float`
    for an encoder-decoder Transformer and batch = (src, src_padding_mask, tgt)."""
    if hidden:
        cases = [
            (1, "sgd", 0.5, (4, 6, 5)),
            (2, "adamw", 0.1, (3, 4, 7)),
            (3, "sgd", 100.0, (2, 5, 3)),
        ]
    else:
        cases = [(0, "sgd", 0.5, (3, 5, 6))]
    for seed, opt, max_norm, shape in cases:
        _check_step_case(fn, seed, opt, max_norm, *shape)
    report_ok("training_step", hidden)


# --- 7, 8. Byte-pair encoding --------------------------------------------------------------------

_BPE_FORBIDDEN: list[Target] = [
    (tokenizers, name) for name in ("merge_pair", "pair_counts", "most_frequent_pair")
]


def _merge(ids: list[int], pair: tuple[int, int], new_id: int, kind: str = "") -> list[int]:
    """One merge, left to right and non-overlapping; or as a likely mistake does it."""
    if kind == "right_to_left":
        reversed_pair = (pair[1], pair[0])
        return _merge(ids[::-1], reversed_pair, new_id)[::-1]
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
    "right_to_left": "the merges go from right to left; go left to right: [a, a, a] with pair "
    "(a, a) becomes [new, a].",
    "first_only": "only the first occurrence was merged; merge every (non-overlapping) one.",
    "drop_last": "the last id went missing: when it is not part of a merged pair, append it too.",
}


def _check_merge_case(fn: Callable, ids: list[int], pair: tuple[int, int], new_id: int) -> None:
    given = list(ids)
    out = run_candidate(fn, given, pair, new_id, exercise="merge_pair", forbidden=_BPE_FORBIDDEN)
    if given != ids:
        raise ExerciseError(
            f"merge_pair changed the list it was given (now {given}); build a new list."
        )
    if out is given and _merge(ids, pair, new_id) != ids:
        raise ExerciseError("merge_pair returned the list it was given; build a new list.")
    if isinstance(out, tuple | Tensor):
        raise ExerciseError(f"merge_pair should return a list of ints, got {type(out).__name__}.")
    mistakes = {hint: _merge(ids, pair, new_id, kind) for kind, hint in MERGE_MISTAKES.items()}
    mistakes["the ids came back unchanged: replace every occurrence of the pair by new_id."] = ids
    _expect_equal(out, _merge(ids, pair, new_id), f"merge_pair({ids}, {pair}, {new_id})", mistakes)


def check_merge_pair(fn: Callable, hidden: bool = False) -> None:
    """Learner's `merge_pair(ids: list[int], pair, new_id) -> list[int]`."""
    if hidden:
        generator = torch.Generator().manual_seed(7)
        cases = [
            ([4, 4, 4, 4], (4, 4), 9),
            ([4, 4, 4, 4, 4], (4, 4), 9),
            ([], (1, 2), 9),
            ([1], (1, 2), 9),
            ([1, 2], (1, 2), 9),
            ([3, 1, 2], (1, 2), 9),
            ([2, 1, 2, 1], (2, 1), 9),
            ([5, 6, 7], (1, 2), 9),
            (torch.randint(0, 3, (40,), generator=generator).tolist(), (1, 2), 3),
            (torch.randint(0, 2, (40,), generator=generator).tolist(), (1, 1), 2),
        ]
    else:
        cases = [([1, 2, 3, 1, 2], (1, 2), 9), ([5, 5, 5], (5, 5), 9)]
    for case in cases:
        _check_merge_case(fn, *case)
    report_ok("merge_pair", hidden)


def _most_frequent(word_counts: dict, kind: str = "") -> tuple[int, int] | None:
    counts: Counter = Counter()
    words = list(word_counts.items())
    if kind == "across_words":
        joined = [i for word, n in words for _ in range(n) for i in word]
        words = [(tuple(joined), 1)]
    for word, n in words:
        for pair in zip(word, word[1:], strict=False):
            counts[pair] += 1 if kind == "unweighted" else n
    if not counts:
        return None
    if kind == "first_found":
        return counts.most_common(1)[0][0]
    if kind == "largest":
        return max(counts, key=lambda p: (counts[p], p))
    return min(counts, key=lambda p: (-counts[p], p))


PAIR_MISTAKES = {
    "unweighted": "each word counted once: weight every pair by the word's count in the "
    "corpus (a word seen 3 times adds 3 to each of its pairs).",
    "largest": "ties must go to the smallest pair (compare the tuples: (1, 5) < (2, 0)), not "
    "the largest.",
    "first_found": "ties must go to the smallest pair (compare the tuples), not to the first "
    "pair found (Counter.most_common keeps insertion order).",
    "across_words": "pairs were counted across word boundaries: count only the adjacent ids "
    "inside each word.",
}


def check_most_frequent_pair(fn: Callable, hidden: bool = False) -> None:
    """Learner's `most_frequent_pair(word_counts: dict[tuple[int, ...], int])`."""
    if hidden:
        generator = torch.Generator().manual_seed(3)
        words = {
            tuple(torch.randint(0, 4, (int(n),), generator=generator).tolist()): int(c)
            for n, c in zip(
                torch.randint(1, 7, (30,), generator=generator),
                torch.randint(1, 20, (30,), generator=generator),
                strict=True,
            )
        }
        cases = [
            {(1, 2, 3): 2, (2, 3): 3, (1, 2): 1},
            {(5, 1): 2, (2, 5): 2, (7, 8): 2},  # a three-way tie: the smallest pair wins
            {(9, 9, 9): 1, (4, 4): 1},  # (9, 9) appears twice in one word
            {(3, 1): 1, (2, 0): 1},  # insertion order differs from the order of the pairs
            {(5,): 4, (6,): 1},  # no pair at all: None
            {(1, 2): 1, (3,): 9, (2, 1): 1, (4,): 9},
            words,
        ]
    else:
        cases = [{(1, 2, 3): 2, (2, 3): 3, (1, 2): 1}]
    for word_counts in cases:
        given = dict(word_counts)
        out = (
            run_candidate(fn, given, exercise="most_frequent_pair", forbidden=_BPE_FORBIDDEN)
            if _most_frequent(word_counts) is not None
            else _none_case(fn, given)
        )
        if isinstance(out, list):
            out = tuple(out)
        mistakes = {hint: _most_frequent(word_counts, kind) for kind, hint in PAIR_MISTAKES.items()}
        shown = word_counts if len(word_counts) < 8 else "a random corpus of 30 words"
        _expect_equal(out, _most_frequent(word_counts), f"most_frequent_pair({shown})", mistakes)
    report_ok("most_frequent_pair", hidden)


def _none_case(fn: Callable, word_counts: dict) -> Any:
    try:
        return run_candidate(
            fn, word_counts, exercise="most_frequent_pair", forbidden=_BPE_FORBIDDEN
        )
    except ExerciseError as error:
        raise ExerciseError(
            f"{error}\nWhen no word has two ids there is no pair to merge: return None."
        ) from None


# --- 9. Masking for a masked language model ------------------------------------------------------

MASK_ID, CLS = 3, 1
_MLM_SPECIAL = (PAD, CLS)  # the special ids passed in; [MASK] is never selected either


def _mlm_batch(B: int, T: int, V: int, seed: int) -> Tensor:
    """[CLS], ordinary ids (4 .. V-1), then padding (about a third of the positions)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, V, (B, T), generator=generator)  # (B, T)
    lengths = torch.randint(T // 3, T + 1, (B,), generator=generator)
    tokens = tokens.masked_fill(torch.arange(T)[None, :] >= lengths[:, None], PAD)
    tokens[:, 0] = CLS
    return tokens


def _fraction(part: Tensor, whole: Tensor) -> float:
    return float(part.sum()) / max(1, int(whole.sum()))


def _check_mlm_case(fn: Callable, B: int, T: int, V: int, p: float, seed: int) -> None:
    tokens = _mlm_batch(B, T, V, seed)
    saved = tokens.clone()
    forbidden = [(training, "mask_for_mlm")]

    def call(generator_seed: int) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(generator_seed)
        result = run_candidate(
            fn,
            tokens,
            MASK_ID,
            V,
            _MLM_SPECIAL,
            p,
            generator,
            exercise="mask_tokens",
            forbidden=forbidden,
        )
        if not isinstance(result, tuple) or len(result) != 2:
            raise ExerciseError("mask_tokens should return a pair (inputs, labels).")
        return result

    inputs, labels = call(seed)
    what = f"mask_tokens on a ({B}, {T}) batch with p={p}"
    if not _equal(tokens, saved):
        raise ExerciseError(f"{what} changed its input tokens: build new tensors (.clone()).")
    for name, out in (("inputs", inputs), ("labels", labels)):
        if not isinstance(out, Tensor) or out.shape != tokens.shape or out.dtype != torch.long:
            got = (out.dtype, tuple(out.shape)) if isinstance(out, Tensor) else type(out).__name__
            raise ExerciseError(
                f"{what}: {name} should be an int64 tensor of shape {tuple(tokens.shape)}, "
                f"got {got}."
            )
    special = _isin(tokens, torch.tensor([*_MLM_SPECIAL, MASK_ID]))  # (B, T)
    ordinary = ~special
    selected = labels != -100  # (B, T)
    if bool(selected.all()):
        raise ExerciseError(
            f"{what}: the labels are set at every position. Only the selected positions get "
            "a label (the original id); every other position gets -100, which the loss ignores."
        )
    if not _equal(labels[selected], tokens[selected]):
        raise ExerciseError(
            f"{what}: at the selected positions the labels must hold the original ids (what "
            "the model must recover), not the corrupted inputs."
        )
    if bool((selected & special).any()):
        raise ExerciseError(
            f"{what}: special tokens (padding, [CLS]) were selected for masking. Select only "
            "ordinary tokens: selected = (torch.rand(...) < p) & ~is_special, where is_special "
            "covers special_ids (and mask_id)."
        )
    rate = _fraction(selected, ordinary)
    if abs(rate - p) > 0.03:
        looks_global = abs(rate - p * tokens.numel() / int(ordinary.sum())) < 0.03
        raise ExerciseError(
            f"{what}: {rate:.3f} of the ordinary tokens were selected, expected about {p}. "
            + (
                "It looks like p of all positions, padding included, were selected: each "
                "ordinary token is selected with probability p."
                if looks_global
                else "Select each ordinary token independently with probability p."
            )
        )
    if not _equal(inputs[~selected], tokens[~selected]):
        raise ExerciseError(
            f"{what}: the inputs changed at positions that were not selected (label -100); "
            "only selected positions are corrupted."
        )
    masked = selected & (inputs == MASK_ID)
    changed = selected & (inputs != MASK_ID) & (inputs != tokens)
    kept = selected & (inputs == tokens)
    shares = [_fraction(m, selected) for m in (masked, changed, kept)]
    if shares[0] > 0.97:
        raise ExerciseError(
            f"{what}: every selected token became [MASK]. BERT's rule: of the selected tokens "
            "80% become [MASK], 10% a random ordinary token and 10% stay as they are, so the "
            "model cannot tell which inputs to distrust."
        )
    if bool(
        (
            changed & (_isin(inputs, torch.tensor([*_MLM_SPECIAL])) | (inputs < 0) | (inputs >= V))
        ).any()
    ):
        raise ExerciseError(
            f"{what}: a random replacement was a special token or out of range; draw random "
            f"replacements from the ordinary ids only (not padding, [CLS] or [MASK]; < {V})."
        )
    for share, target, name in zip(
        shares, (0.8, 0.1, 0.1), ("[MASK]", "a random token", "left unchanged"), strict=True
    ):
        if abs(share - target) > 0.05:
            raise ExerciseError(
                f"{what}: {share:.3f} of the selected tokens were {name}, expected about "
                f"{target}. The split is 80% [MASK], 10% random ordinary token, 10% unchanged "
                "(one uniform draw per selected token)."
            )
    again = call(seed)
    if not (_equal(again[0], inputs) and _equal(again[1], labels)):
        raise ExerciseError(
            f"{what}: two calls with generators seeded alike gave different results. Pass "
            "generator=generator to every random draw (torch.rand, torch.randint)."
        )


def check_mask_tokens(fn: Callable, hidden: bool = False) -> None:
    """Learner's `mask_tokens(tokens (B, T), mask_id, vocab_size, special_ids, p, generator)
    -> (inputs, labels)`, checked by its statistics on large seeded batches."""
    cases = [(64, 128, 40, 0.3, 2), (128, 96, 30, 0.15, 3)] if hidden else [(64, 128, 50, 0.15, 1)]
    for case in cases:
        _check_mlm_case(fn, *case)
    report_ok("mask_tokens", hidden)


# --- 10. Greedy decoding -------------------------------------------------------------------------

_DECODE_CONFIG = TransformerConfig(
    vocab_size=10, context_length=24, d_model=16, n_heads=2, n_layers=1, d_ff=32, tie_weights=False
)  # untied: an untrained tied model only echoes its last input token
_DECODE_FORBIDDEN: list[Target] = [
    (decoding, "greedy_decode"),
    (decoding, "beam_search"),
    (decoding, "encoder_decoder_step"),
]


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
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
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
            fed = tokens[:, :1] if kind == "no_feedback" else tokens
            logits = model.decode(fed, memory, dec_mask)  # (B, t, V)
            if kind == "argmax_positions":
                next_token = logits.argmax(dim=1)[:, -1]  # (B,) a position, not a token
            else:
                next_token = logits[:, -1].argmax(dim=-1)  # (B,)
            if kind != "no_eos_fill":
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


def _check_greedy_case(fn: Callable, steps: int, src: Tensor, max_len: int) -> None:
    model = _copy_model(steps)
    mask = src != PAD  # (B, S)
    with quiet():
        expected = _greedy_decode(
            _encoder_decoder_step(model, src, mask),
            torch.full((src.shape[0], 1), BOS, dtype=torch.long),
            max_len,
            EOS,
        )
    state = copy.deepcopy(model.state_dict())
    try:
        out = run_candidate(
            fn,
            model,
            src,
            mask,
            BOS,
            EOS,
            max_len,
            exercise="greedy_translate",
            forbidden=_DECODE_FORBIDDEN,
        )
    except ExerciseError as error:
        if "size" in str(error).lower() or "dimension" in str(error).lower():
            raise ExerciseError(
                f"{error}\nIs the argmax over the right dimension? logits[:, -1] has shape "
                "(B, V): take .argmax(dim=-1), then add a column, next_token[:, None]."
            ) from None
        raise
    finally:
        model.load_state_dict(state)
    if isinstance(out, Tensor) and out.dim() == 2 and out.shape[1] >= 1:
        if not bool((out[:, 0] == BOS).all()):
            raise ExerciseError(
                "greedy_translate's output must start with the <bos> column it began from."
            )
    mistakes = {
        hint: _greedy(model, src, mask, max_len, kind) for kind, hint in GREEDY_MISTAKES.items()
    }
    trained = "a model trained a few steps to copy" if steps else "an untrained model"
    _expect_tokens(
        out,
        expected,
        f"greedy_translate with {trained}, src {src.tolist()}, max_len={max_len}",
        mistakes,
    )


def check_greedy_translate(fn: Callable, hidden: bool = False) -> None:
    """Learner's `greedy_translate(model, src (B, S), src_padding_mask (B, S), bos_id, eos_id,
    max_len) -> (B, 1 + n)` with n <= max_len."""
    src = torch.tensor([[4, 5, 6, 7, 0, 0], [8, 9, 0, 0, 0, 0], [5, 5, 5, 5, 5, 5]])
    if hidden:
        cases = [
            (0, torch.tensor([[3, 4, 0], [9, 9, 9]]), 7),
            (40, src, 9),
            (40, torch.tensor([[6, 9, 0, 0, 0], [8, 7, 3, 9, 7], [5, 6, 5, 0, 0]]), 8),
            (40, torch.tensor([[4, 3, 7, 0, 0], [4, 6, 9, 8, 6], [8, 8, 6, 5, 8]]), 8),
            (40, src[:1], 1),
        ]
    else:
        cases = [(0, src, 5)]
    for case in cases:
        _check_greedy_case(fn, *case)
    report_ok("greedy_translate", hidden)


watch_module(__name__)
