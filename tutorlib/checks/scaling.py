"""Checks for the Chapter 4 exercises (solutions/04_scaling).

As in the earlier chapters: `hidden=False` runs the visible tests (a worked example),
`hidden=True` the hidden ones (other sizes, edge cases). While the learner's code runs, the
tutorlib reference and the torch built-in that would do the work raise. The counting checks
compare integers exactly and name the term a mistaken formula leaves out;
`check_accumulate_gradients` watches the model's calls so that one full-batch pass cannot
pass for accumulation.

Book: Chapter 4 exercises.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as prune
from torch import Tensor, nn
from torch.utils import flop_counter

from tutorlib import attention, compression, inference, scaling
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
from tutorlib.models import TransformerConfig

__all__ = [
    "check_accumulate_gradients",
    "check_distillation_loss",
    "check_fit_power_law",
    "check_forward_flops",
    "check_kv_attention_step",
    "check_magnitude_mask",
    "check_parameter_count",
    "check_quantize_per_channel",
]

# References, taken at import time (before any learner code runs).
_parameter_count, _forward_flops = scaling.parameter_count, scaling.forward_flops
_quantize_int8 = compression.quantize_int8
_distillation_loss = compression.distillation_loss
_cross_entropy, _softmax, _log_softmax = F.cross_entropy, torch.softmax, F.log_softmax
_cat, _equal, _allclose, _topk = torch.cat, torch.equal, torch.allclose, torch.topk


def _expect_int(actual: Any, expected: int, what: str, mistakes: dict[str, int]) -> None:
    """An exact integer, or the hint of the first mistaken value it equals."""
    if isinstance(actual, Tensor) and actual.numel() == 1:
        actual = actual.item()
    if isinstance(actual, float) and actual.is_integer():
        actual = int(actual)
    if not isinstance(actual, int) or isinstance(actual, bool):
        raise ExerciseError(f"{what} should be an int, got {type(actual).__name__}.")
    if actual == expected:
        return
    for hint, wrong in mistakes.items():
        if wrong != expected and actual == wrong:
            raise ExerciseError(f"{what} is not right. Likely mistake: {hint}")
    raise ExerciseError(f"{what}: got {actual:,}, expected {expected:,}.")


# --- 1. Parameters by formula ------------------------------------------------------------------

PARAMETER_MISTAKES = {
    "no_biases": "the biases are missing: each of the four attention maps has C of them, the "
    "feed-forward layers d_ff and C.",
    "no_norms": "the layer norms are missing: each has a gain and a bias (2C), two per layer plus "
    "the final one of a pre-norm stack.",
    "no_final_norm": "the final layer norm of the pre-norm stack (2C) is missing.",
    "no_positions": "the learned position table (context_length x C) is missing.",
    "untied": "the output projection was counted separately, but it is tied to the token "
    "embedding: the V x C table is counted once.",
    "no_out_proj": "attention has four C x C maps: the queries, keys, values and the output "
    "projection that mixes the heads.",
    "one_ffn_matrix": "the feed-forward network has two matrices, C x d_ff and d_ff x C.",
}


def _parameters(V: int, ctx: int, C: int, L: int, F_: int, kind: str = "") -> int:
    config = TransformerConfig(
        vocab_size=V, context_length=ctx, d_model=C, n_heads=1, n_layers=L, d_ff=F_,
        norm_first=True, positional="learned", tie_weights=True,
    )  # fmt: skip
    n = _parameter_count(config, "decoder")
    return n + {
        "no_biases": -L * (4 * C + F_ + C),
        "no_norms": -(L * 4 * C + 2 * C),
        "no_final_norm": -2 * C,
        "no_positions": -ctx * C,
        "untied": V * C,
        "no_out_proj": -L * (C * C + C),
        "one_ffn_matrix": -L * C * F_,
    }.get(kind, 0)


def check_parameter_count(fn: Callable, hidden: bool = False) -> None:
    """Learner's `parameter_count(vocab_size, context_length, d_model, n_layers, d_ff) -> int`
    for a GPT-style decoder: pre-norm, learned positions, tied output, biases everywhere."""
    forbidden: list[Target] = [
        (scaling, "parameter_count"),
        (scaling, "layer_parameter_count"),
        (nn.Module, "parameters"),
        (nn.Module, "named_parameters"),
        (nn.Module, "state_dict"),
    ]
    cases = [(50257, 1024, 768, 12, 3072)]
    if hidden:
        cases = [(100, 64, 32, 2, 128), (7, 5, 8, 1, 3), (32000, 4096, 4096, 32, 11008)]
    for case in cases:
        out = run_candidate(fn, *case, exercise="parameter_count", forbidden=forbidden)
        mistakes = {hint: _parameters(*case, kind) for kind, hint in PARAMETER_MISTAKES.items()}
        _expect_int(out, _parameters(*case), f"parameter_count{case}", mistakes)
    report_ok("parameter_count", hidden)


# --- 2. Forward FLOPs --------------------------------------------------------------------------

FLOP_MISTAKES = {
    "half": "a multiply-add counts as 2 FLOPs: an (m x k) @ (k x n) product costs 2mkn.",
    "no_attention": "attention's two products are missing: Q K^T and weights @ V each cost "
    "2 T^2 C per layer.",
    "one_attention_product": "only one of attention's two products is counted: Q K^T and "
    "weights @ V each cost 2 T^2 C per layer.",
    "no_output": "the output projection onto the vocabulary (2 T V C) is missing.",
    "three_maps": "attention has four C x C maps (queries, keys, values, output), 2 T 4C^2.",
    "training": "that is the training cost (3 x forward, the 6ND rule); the question asks for "
    "one forward pass.",
}


def _flops(V: int, C: int, L: int, F_: int, T: int, kind: str = "") -> int:
    config = TransformerConfig(vocab_size=V, d_model=C, n_heads=1, n_layers=L, d_ff=F_)
    n = _forward_flops(config, T, "decoder")
    if kind == "half":
        return n // 2
    if kind == "training":
        return 3 * n
    return n + {
        "no_attention": -L * 4 * T * T * C,
        "one_attention_product": -L * 2 * T * T * C,
        "no_output": -2 * T * V * C,
        "three_maps": -L * 2 * T * C * C,
    }.get(kind, 0)


def check_forward_flops(fn: Callable, hidden: bool = False) -> None:
    """Learner's `forward_flops(vocab_size, d_model, n_layers, d_ff, seq_len) -> int`: the
    matrix-product FLOPs of one forward pass over one sequence."""
    forbidden: list[Target] = [
        (scaling, "forward_flops"),
        (scaling, "training_flops"),
        (flop_counter.FlopCounterMode, "__init__"),
    ]
    cases = [(50257, 768, 12, 3072, 1024)]
    if hidden:
        cases = [(100, 32, 2, 128, 16), (11, 8, 3, 5, 7), (32000, 4096, 32, 11008, 4096)]
    for case in cases:
        out = run_candidate(fn, *case, exercise="forward_flops", forbidden=forbidden)
        mistakes = {hint: _flops(*case, kind) for kind, hint in FLOP_MISTAKES.items()}
        _expect_int(out, _flops(*case), f"forward_flops{case}", mistakes)
    report_ok("forward_flops", hidden)


# --- 3. Gradient accumulation ------------------------------------------------------------------


def _classifier(seed: int, d: int, V: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, V)).double()


def _grads_of(model: nn.Module, pieces: list[tuple[Tensor, Tensor]], scale: float) -> dict:
    """Gradients of scale * sum over pieces of the mean cross-entropy, from zero."""
    model.zero_grad()
    for x, y in pieces:
        (scale * _cross_entropy(model(x), y)).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _check_accumulation_case(fn: Callable, seed: int, B: int, k: int, d: int, V: int) -> None:
    model = _classifier(seed, d, V)
    inputs = random_tensor(B, d, seed=seed + 1)
    targets = torch.randint(0, V, (B,), generator=torch.Generator().manual_seed(seed))
    chunks = list(zip(inputs.chunk(k), targets.chunk(k), strict=True))
    expected = _grads_of(model, [(inputs, targets)], 1.0)
    mistakes = {
        "the loss of each micro-batch must be divided by the number of micro-batches: "
        "summed unscaled, the gradients come out n_micro times too large.": _grads_of(
            model, chunks, 1.0
        ),
        "the gradients were zeroed inside the loop, so only the last micro-batch's are left; "
        "zero them once, before the loop.": _grads_of(model, chunks[-1:], 1.0 / k),
    }
    stale = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    for name, p in model.named_parameters():  # gradients left over from an earlier step
        p.grad = stale[name].clone()
    sizes: list[int] = []
    hook = model.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    try:
        run_candidate(fn, model, inputs, targets, k, exercise="accumulate_gradients")
    finally:
        hook.remove()
    if sizes != [B // k] * k:
        raise ExerciseError(
            f"accumulate_gradients called the model on batches of sizes {sizes}; with B = {B} "
            f"and n_micro = {k} it must run {k} micro-batches of {B // k} examples, one "
            "forward and backward pass each (that is the point: only one micro-batch's "
            "activations are in memory at a time)."
        )
    what = f"the accumulated gradient (B = {B}, n_micro = {k})"
    for name, p in model.named_parameters():
        if p.grad is None:
            raise ExerciseError(f"{name} has no gradient after accumulate_gradients.")
        if _allclose(p.grad, expected[name] + stale[name], rtol=1e-8, atol=1e-10):
            raise ExerciseError(
                f"{what} still holds the gradients of an earlier step: zero the gradients "
                "(model.zero_grad()) before accumulating."
            )
        expect_close(
            p.grad,
            expected[name],
            what=f"{what} of {name}",
            mistakes={hint: (lambda g=grads[name]: g) for hint, grads in mistakes.items()},
            atol=1e-10,
            rtol=1e-8,
        )


def check_accumulate_gradients(fn: Callable, hidden: bool = False) -> None:
    """Learner's `accumulate_gradients(model, inputs, targets, n_micro) -> None`: leaves in
    each p.grad the gradient of the full batch's mean cross-entropy."""
    cases = [(1, 12, 3, 5, 4), (2, 16, 8, 3, 6), (3, 6, 1, 4, 3), (4, 10, 5, 2, 2)]
    for case in cases if hidden else [(0, 8, 4, 5, 3)]:
        _check_accumulation_case(fn, *case)
    report_ok("accumulate_gradients", hidden)


# --- 4. Fitting a power law --------------------------------------------------------------------


def _power_law(n: Tensor, loss: Tensor, kind: str = "") -> tuple[float, float]:
    """Least squares of log(loss) = log(a) - alpha log(n); or a likely mistake's version."""
    x, y = n.double().log(), loss.double().log()
    if kind == "no_logs":
        x, y = n.double(), loss.double()
    if kind == "swapped":
        x, y = y, x
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    intercept = y.mean() - slope * x.mean()
    if kind == "swapped":
        slope, intercept = 1 / slope, -intercept / slope
    a = {"raw_intercept": intercept, "exp10": 10**intercept}.get(kind, intercept.exp())
    alpha = slope if kind == "sign" else -slope
    return float(alpha), float(a)


POWER_LAW_MISTAKES = {
    "sign": "alpha has the wrong sign: loss = a * n^(-alpha) falls with n, so alpha is minus "
    "the slope of log(loss) against log(n).",
    "raw_intercept": "a is the intercept itself; the intercept is log(a), so a = exp(intercept).",
    "exp10": "the fit used natural logs but a = 10^intercept; use exp(intercept) (or log10 "
    "throughout).",
    "no_logs": "the fit is on n and loss themselves; a power law is a straight line in "
    "log(loss) against log(n): fit there.",
    "swapped": "the regression is of log(n) on log(loss); regress log(loss) on log(n) "
    "(log(loss) is what has the noise).",
}


def check_fit_power_law(fn: Callable, hidden: bool = False) -> None:
    """Learner's `fit_power_law(n, loss) -> (alpha, a)` with loss ~ a * n**(-alpha), by least
    squares on log(loss) against log(n)."""
    forbidden: list[Target] = [
        (np, "polyfit"),
        (np.polynomial.polynomial, "polyfit"),
        (np.polynomial.Polynomial, "fit"),
        (np.linalg, "lstsq"),
        (torch.linalg, "lstsq"),
        (torch.linalg, "pinv"),
    ]
    cases = [(0, 6, 0.08, 5.0)]
    if hidden:
        cases = [(1, 5, 0.076, 9.0), (2, 12, 0.5, 2.0), (3, 3, 0.3, 40.0)]
    for seed, points, alpha, a in cases:
        g = torch.Generator().manual_seed(seed)
        n = torch.logspace(4, 8, points, dtype=torch.float64)
        loss = (
            a
            * n ** (-alpha)
            * torch.exp(0.02 * torch.randn(points, generator=g, dtype=torch.float64))
        )
        out = run_candidate(
            fn, n.clone(), loss.clone(), exercise="fit_power_law", forbidden=forbidden
        )
        if not isinstance(out, tuple) or len(out) != 2:
            raise ExerciseError("fit_power_law should return a pair (alpha, a).")
        got = tuple(float(v.item() if isinstance(v, Tensor) else v) for v in out)
        expected = _power_law(n, loss)
        if all(math.isclose(g_, e, rel_tol=1e-6) for g_, e in zip(got, expected, strict=True)):
            continue
        for kind, hint in POWER_LAW_MISTAKES.items():
            wrong = _power_law(n, loss, kind)
            if all(math.isclose(g_, w, rel_tol=1e-6) for g_, w in zip(got, wrong, strict=True)):
                raise ExerciseError(f"fit_power_law is not right. Likely mistake: {hint}")
        raise ExerciseError(
            f"fit_power_law on {points} points: got (alpha, a) = ({got[0]:.6g}, {got[1]:.6g}), "
            f"expected ({expected[0]:.6g}, {expected[1]:.6g})."
        )
    report_ok("fit_power_law", hidden)


# --- 5. A KV-cache attention step --------------------------------------------------------------

_KV_FORBIDDEN: list[Target] = [
    (F, "scaled_dot_product_attention"),
    (attention, "scaled_dot_product_attention"),
    (inference, "cached_self_attention"),
    (nn.MultiheadAttention, "forward"),
]


def _kv_step(q, k_new, v_new, cache_k, cache_v, kind: str = "") -> tuple[Tensor, Tensor, Tensor]:
    """The reference step, or a likely mistake's version of it."""
    if kind == "new_first":
        keys, values = _cat([k_new, cache_k], dim=2), _cat([v_new, cache_v], dim=2)
    else:
        keys, values = _cat([cache_k, k_new], dim=2), _cat([cache_v, v_new], dim=2)
    seen_k, seen_v = (cache_k, cache_v) if kind == "cache_only" else (keys, values)
    scale = 1.0 if kind == "no_scale" else 1 / math.sqrt(q.shape[-1])
    scores = q @ seen_k.transpose(-2, -1) * scale  # (B, H, 1, t)
    weights = _softmax(scores, dim=-2 if kind == "wrong_axis" else -1)
    return weights @ seen_v, keys, values


KV_MISTAKES = {
    "no_scale": "the scores are not scaled: divide q k^T by sqrt(D).",
    "wrong_axis": "the softmax runs over the wrong axis: normalise over the keys (the last "
    "axis), so the weights of the one query sum to 1.",
    "cache_only": "the new token does not attend to itself: append the new key and value to "
    "the cache first, then attend over all of them.",
}


def _check_kv_case(fn: Callable, B: int, H: int, t: int, D: int, seed: int) -> None:
    q, k_new, v_new = (random_tensor(B, H, 1, D, seed=seed + i) for i in range(3))
    cache_k, cache_v = (
        random_tensor(B, H, t, D, seed=seed + 3),
        random_tensor(B, H, t, D, seed=seed + 4),
    )
    saved = (cache_k.clone(), cache_v.clone())
    try:
        result = run_candidate(
            fn,
            q,
            k_new,
            v_new,
            cache_k,
            cache_v,
            exercise="kv_attention_step",
            forbidden=_KV_FORBIDDEN,
        )
    except ExerciseError as error:
        found = re.search(r"must match except in dimension (-?\d+)", str(error))
        if found and found.group(1) != "2":
            raise ExerciseError(
                f"{error}\nLikely mistake: the cache is appended on dim {found.group(1)}; the "
                "time axis of a (B, H, t, D) cache is dim 2."
            ) from None
        raise
    if not isinstance(result, tuple) or len(result) != 3:
        raise ExerciseError("kv_attention_step should return (output, keys, values).")
    out, keys, values = result
    if not (_equal(cache_k, saved[0]) and _equal(cache_v, saved[1])):
        raise ExerciseError("kv_attention_step changed the cache it was given; return new tensors.")
    expected = _kv_step(q, k_new, v_new, cache_k, cache_v)
    for name, got, want in (("keys", keys, expected[1]), ("values", values, expected[2])):
        if not isinstance(got, Tensor):
            raise ExerciseError(
                f"the {name} returned should be a tensor, got {type(got).__name__}."
            )
        if got.shape != want.shape:
            hint = {
                (B, H + 1, t, D) if t == 1 else None: "appended on the heads axis (dim 1)",
                (B, H, t, 2 * D) if t == 1 else None: "appended on the feature axis (dim -1)",
                (2 * B, H, t, D) if t == 1 else None: "appended on the batch axis (dim 0)",
            }.get(tuple(got.shape))
            why = f"Likely mistake: the cache is {hint}; " if hint else ""
            raise ExerciseError(
                f"the {name} have shape {tuple(got.shape)}, expected {tuple(want.shape)}. {why}"
                "the time axis of a (B, H, t, D) cache is dim 2."
            )
        if not _equal(got, want):
            new_first = _kv_step(q, k_new, v_new, cache_k, cache_v, "new_first")
            if _equal(got, new_first[1 if name == "keys" else 2]):
                raise ExerciseError(
                    f"the new {name[:-1]} was put in front of the cache; append it at the end, "
                    "so that position i of the cache holds token i."
                )
            expect_close(got, want, what=f"the {name} returned", atol=0, rtol=0)
    mistakes = {
        hint: (lambda kind=kind: _kv_step(q, k_new, v_new, cache_k, cache_v, kind)[0])
        for kind, hint in KV_MISTAKES.items()
        if not (kind == "cache_only" and t == 0)
    }
    what = f"kv_attention_step's output for a cache of {t} positions"
    expect_close(out, expected[0], what=what, mistakes=mistakes, atol=1e-10, rtol=1e-8)


def check_kv_attention_step(fn: Callable, hidden: bool = False) -> None:
    """Learner's `kv_attention_step(q, k_new, v_new, cache_k, cache_v) -> (out, keys, values)`:
    q, k_new, v_new (B, H, 1, D); cache (B, H, t, D); out (B, H, 1, D); keys, values
    (B, H, t + 1, D)."""
    cases = [(2, 3, 5, 4, 1), (1, 1, 0, 8, 2), (3, 2, 1, 6, 3), (1, 4, 17, 2, 4)]
    for case in cases if hidden else [(1, 2, 3, 4, 0)]:
        _check_kv_case(fn, *case)
    report_ok("kv_attention_step", hidden)


# --- 6. Per-channel int8 quantization ----------------------------------------------------------


def _quantize_variant(w: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    if kind == "per_tensor":
        q, scale = _quantize_int8(w, axis=None)
        return q, scale.expand(w.shape[0], 1)
    if kind == "per_column":
        return _quantize_int8(w, axis=1)
    scale = w.abs().amax(dim=1, keepdim=True).float() / (128 if kind == "qmax_128" else 127)
    scaled = w.float() / scale
    if kind == "truncate":
        return scaled.clamp(-127, 127).trunc().to(torch.int8), scale
    if kind == "no_clamp_128":
        return scaled.round().to(torch.int8), scale  # 128 wraps round to -128
    return scaled.round().clamp(-127, 127).to(torch.int8), scale


QUANT_MISTAKES = {
    "per_tensor": "one scale for the whole matrix (per-tensor); give each output channel (row) "
    "its own scale, max |w[row]| / 127.",
    "per_column": "one scale per input column; the channels are the rows (output features), "
    "so the scale is max over each row, shape (out, 1).",
    "qmax_128": "the scale divides by 128: int8 holds -128..127, but symmetric quantization "
    "uses -127..127, so scale = max|w| / 127.",
    "truncate": "the values are truncated (.to(torch.int8) cuts toward zero); round to the "
    "nearest integer first with torch.round.",
}


def _check_quant_case(fn: Callable, out_f: int, in_f: int, seed: int, outlier: bool) -> None:
    w = random_tensor(out_f, in_f, seed=seed).float()
    if outlier:
        w[0] *= 40
    saved = w.clone()
    result = run_candidate(
        fn,
        w,
        exercise="quantize_per_channel",
        forbidden=[
            (compression, "quantize_int8"),
            (torch, "quantize_per_channel"),
            (torch, "quantize_per_tensor"),
            (torch, "fake_quantize_per_channel_affine"),
            (torch, "fake_quantize_per_tensor_affine"),
        ],
    )
    if not _equal(w, saved):
        raise ExerciseError("quantize_per_channel changed the weight it was given.")
    if not isinstance(result, tuple) or len(result) != 2:
        raise ExerciseError("quantize_per_channel should return a pair (q, scale).")
    q, scale = result
    exp_q, exp_scale = _quantize_int8(w, axis=0)
    if not isinstance(q, Tensor) or q.dtype != torch.int8:
        raise ExerciseError(f"q should be an int8 tensor, got {getattr(q, 'dtype', type(q))}.")
    for kind, hint in QUANT_MISTAKES.items():
        wrong_q, wrong_scale = _quantize_variant(w, kind)
        if (
            isinstance(scale, Tensor)
            and scale.shape == wrong_scale.shape
            and _equal(q, wrong_q)
            and _allclose(scale.float(), wrong_scale)
            and not _equal(wrong_q, exp_q)
        ):
            raise ExerciseError(f"quantize_per_channel is not right. Likely mistake: {hint}")
    expect_close(
        scale, exp_scale, what=f"the scale of a ({out_f}, {in_f}) weight", check_dtype=False
    )
    if not _equal(q, exp_q):
        wrapped = bool((q.long() == -128).any())
        raise ExerciseError(
            "q differs from round(w / scale) clamped to [-127, 127]"
            + (
                ": some values wrapped to -128; clamp before converting to int8."
                if wrapped
                else "."
            )
        )


def check_quantize_per_channel(fn: Callable, hidden: bool = False) -> None:
    """Learner's `quantize_per_channel(w (out, in)) -> (q int8 (out, in), scale (out, 1))`."""
    cases = [(6, 5, 1, True), (1, 9, 2, False), (16, 3, 3, True), (4, 4, 4, False)]
    for case in cases if hidden else [(4, 6, 0, True)]:
        _check_quant_case(fn, *case)
    report_ok("quantize_per_channel", hidden)


# --- 7. Magnitude pruning ----------------------------------------------------------------------


def _mask(w: Tensor, amount: float, kind: str = "") -> Tensor:
    k = round(amount * w.numel())
    values = w.flatten() if kind == "signed" else w.abs().flatten()
    keep = torch.ones(w.numel(), dtype=torch.bool)
    if kind == "kept_amount":
        k = w.numel() - k
    if k:
        keep[_topk(values, k, largest=(kind == "largest")).indices] = False
    keep = keep.view_as(w)
    return ~keep if kind == "inverted" else keep


MASK_MISTAKES = {
    "largest": "the largest weights were pruned; prune the smallest in absolute value.",
    "signed": "the weights were ranked by their signed value, so large negative weights were "
    "pruned; rank by absolute value.",
    "inverted": "the mask is inverted: True means the weight is kept.",
    "kept_amount": "`amount` is the fraction pruned, not the fraction kept.",
}


def check_magnitude_mask(fn: Callable, hidden: bool = False) -> None:
    """Learner's `magnitude_mask(weight, amount) -> bool mask` (True = kept), pruning the
    round(amount * numel) weights of smallest absolute value."""
    forbidden: list[Target] = [
        (prune, "l1_unstructured"),
        (prune, "global_unstructured"),
        (prune.L1Unstructured, "compute_mask"),
        (compression, "magnitude_prune"),
    ]
    cases = [((5, 7), 0.3, 1), ((10,), 0.9, 2), ((3, 4), 0.0, 3), ((8, 8), 0.75, 4)]
    for shape, amount, seed in cases if hidden else [((4, 5), 0.4, 0)]:
        w = random_tensor(*shape, seed=seed)
        saved = w.clone()
        out = run_candidate(fn, w, amount, exercise="magnitude_mask", forbidden=forbidden)
        if not _equal(w, saved):
            raise ExerciseError("magnitude_mask changed the weight; return a mask only.")
        if not isinstance(out, Tensor) or out.dtype != torch.bool or out.shape != w.shape:
            raise ExerciseError(
                f"magnitude_mask should return a bool tensor of shape {tuple(w.shape)}, got "
                f"{getattr(out, 'dtype', type(out).__name__)} {tuple(getattr(out, 'shape', ()))}."
            )
        expected = _mask(w, amount)
        if _equal(out, expected):
            continue
        for kind, hint in MASK_MISTAKES.items():
            wrong = _mask(w, amount, kind)
            if _equal(out, wrong) and not _equal(wrong, expected):
                raise ExerciseError(f"magnitude_mask is not right. Likely mistake: {hint}")
        raise ExerciseError(
            f"magnitude_mask for a {tuple(shape)} weight and amount {amount} keeps "
            f"{int(out.sum())} weights; expected {int(expected.sum())} "
            "(the largest in absolute value)."
        )
    report_ok("magnitude_mask", hidden)


# --- 8. Distillation loss ----------------------------------------------------------------------


def _distill_variant(s: Tensor, t: Tensor, y: Tensor, T: float, alpha: float, kind: str) -> Tensor:
    log_ps, log_pt = _log_softmax(s / T, dim=-1), _log_softmax(t / T, dim=-1)
    factor = {"no_t2": 1.0, "t_once": T}.get(kind, T * T)
    if kind == "teacher_not_softened":
        log_pt = _log_softmax(t, dim=-1)
    if kind == "reversed":
        kl = (log_ps.exp() * (log_ps - log_pt)).sum(-1).mean()
    else:
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()
    hard = _cross_entropy(s / T if kind == "hard_at_t" else s, y)
    if kind == "alpha_swapped":
        return (1 - alpha) * factor * kl + alpha * hard
    return alpha * factor * kl + (1 - alpha) * hard


DISTILL_MISTAKES = {
    "no_t2": "the soft term is not multiplied by T^2: its gradients shrink like 1/T^2 as the "
    "temperature grows.",
    "t_once": "the soft term is multiplied by T, not T^2.",
    "reversed": "the KL divergence is reversed: it is KL(teacher || student) = "
    "sum p_teacher (log p_teacher - log p_student).",
    "teacher_not_softened": "the teacher's logits must be divided by the temperature too.",
    "hard_at_t": "the cross-entropy with the true labels uses the student's plain logits, "
    "not logits / T.",
    "alpha_swapped": "alpha weighs the soft (teacher) term and 1 - alpha the hard-label term.",
}


def _check_distill_case(
    fn: Callable, N: int, V: int, T: float, alpha: float, seed: int, hidden: bool
) -> None:
    forbidden: list[Target] = [
        (compression, "distillation_loss"),
        (F, "kl_div"),
        (nn.KLDivLoss, "forward"),
    ]
    student = random_tensor(N, V, seed=seed, grad=True)
    teacher = random_tensor(N, V, seed=seed + 1, grad=True)
    y = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(seed))
    out = run_candidate(
        fn, student, teacher, y, T, alpha, exercise="distillation_loss", forbidden=forbidden
    )
    with quiet():
        expected = _distillation_loss(student, teacher, y, T, alpha)
    sd, td = student.detach(), teacher.detach()
    mistakes = {
        hint: (lambda kind=kind: _distill_variant(sd, td, y, T, alpha, kind))
        for kind, hint in DISTILL_MISTAKES.items()
    }
    if T == 1.0:
        for kind in ("no_t2", "t_once", "teacher_not_softened", "hard_at_t"):
            del mistakes[DISTILL_MISTAKES[kind]]
    what = f"distillation_loss for (N, V) = ({N}, {V}), T = {T}, alpha = {alpha}"
    expect_close(out, expected, what=what, mistakes=mistakes, atol=1e-10, rtol=1e-8)
    if hidden:
        if not out.requires_grad:
            raise ExerciseError(
                "No gradient reaches the student's logits through your distillation_loss."
            )
        expect_backward_close(out, expected, {"student_logits": student}, "distillation_loss")
        if teacher.grad is not None and bool(teacher.grad.abs().sum() > 0):
            raise ExerciseError(
                "A gradient reaches the teacher's logits: the teacher is fixed, so detach "
                "its logits (teacher_logits.detach())."
            )


def check_distillation_loss(fn: Callable, hidden: bool = False) -> None:
    """Learner's `distillation_loss(student_logits, teacher_logits, targets, temperature,
    alpha) -> scalar`, equal to tutorlib.compression.distillation_loss."""
    cases = [(5, 7, 3.0, 0.3, 1), (1, 4, 1.0, 0.5, 2), (8, 3, 5.0, 0.9, 3), (3, 10, 2.0, 0.0, 4)]
    for case in cases if hidden else [(4, 6, 2.0, 0.5, 0)]:
        _check_distill_case(fn, *case, hidden=hidden)
    report_ok("distillation_loss", hidden)


watch_module(__name__)
