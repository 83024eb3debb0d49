"""Checks for the Chapter 4 exercises (solutions/04_scaling).

Each `check_*` takes the learner's function. With `hidden=False` it runs the visible tests (the
notebook's worked examples); with `hidden=True` the hidden ones: property tests on sizes and
values drawn when they run (`tutorlib.checks.draw`), with the special cases that tell the likely
mistakes apart forced into every draw. While the learner's code runs, the tutorlib reference
and every torch operator that computes the same thing are out of reach
(`tutorlib.checks.guard`). The counting checks compare integers exactly and name the term a
mistaken formula leaves out; `check_accumulate_gradients` watches the model's calls, so that
one full-batch pass cannot pass for accumulation.

Book: Chapter 4 exercises.
"""

from __future__ import annotations

import functools
import math
import sys
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
    Draw,
    Exercise,
    ExerciseError,
    Forbidden,
    as_int,
    expect_close,
    expect_equal,
    handed_over,
    quiet,
    random_tensor,
    watch_module,
)
from tutorlib.checks.guard import ATTENTION_KERNELS, MULTI_HEAD_KERNELS
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
_cross_entropy, _log_softmax, _softmax = F.cross_entropy, F.log_softmax, torch.softmax
_cat, _topk = torch.cat, torch.topk


def _distinct(values: list[Any]) -> bool:
    """No two of `values` (ints, or tensors of one kind) are equal."""
    for i, a in enumerate(values):
        for b in values[i + 1 :]:
            same = torch.equal(a, b) if isinstance(a, Tensor) else a == b
            if same:
                return False
    return True


def _expect_count(got: int, right: int, what: str, mistakes: dict[str, int], advice: str) -> None:
    """An exact count: the mistakes it matches named (all of them where this size cannot tell
    them apart), else advice on what to count."""
    if got != right and got not in mistakes.values():
        raise ExerciseError(
            f"{what} is not right", got=got, expected=right, hint=advice, likely=False
        )
    expect_equal(got, right, what=what, mistakes=mistakes)


# Building a model to count its parameters, or to run it under a FLOP counter, is not the
# exercise: no module can be constructed while the learner's count runs, and nothing that lists
# a module's parameters.
_NO_MODELS = Forbidden(
    python=(
        nn.Module.__init__,
        nn.Module.parameters,
        nn.Module.named_parameters,
        nn.Module.state_dict,
    )
)


# --- 1. Parameters by formula ------------------------------------------------------------------

PARAMETER_FORBIDDEN = _NO_MODELS + Forbidden(
    python=(scaling.parameter_count, scaling.layer_parameter_count)
)


def _parameter_mistakes(V: int, ctx: int, C: int, L: int, F_: int, right: int) -> dict[str, int]:
    """The count as each likely mistake gives it."""
    changes = {
        "the biases are missing: each of the four attention maps has C of them, the "
        "feed-forward layers d_ff and C.": -L * (4 * C + F_ + C),
        "the layer norms are missing: each has a gain and a bias (2C), two per layer plus the "
        "final one of a pre-norm stack.": -(L * 4 * C + 2 * C),
        "the final layer norm of the pre-norm stack (2C) is missing.": -2 * C,
        "each layer has two layer norms (one before attention, one before the feed-forward "
        "network), 2C parameters each.": -L * 2 * C,
        "a layer norm has a gain and a bias, C each (2C in all), not only a gain.": -(
            L * 2 * C + C
        ),
        "the learned position table (context_length x C) is missing.": -ctx * C,
        "the output projection was counted separately, but it is tied to the token "
        "embedding: the V x C table is counted once.": V * C,
        "attention has four C x C maps: the queries, keys, values and the output projection "
        "that mixes the heads.": -L * (C * C + C),
        "the feed-forward network has two matrices, C x d_ff and d_ff x C.": -L * C * F_,
    }
    return {hint: right + change for hint, change in changes.items()}


def _parameters(V: int, ctx: int, C: int, L: int, F_: int) -> int:
    config = TransformerConfig(
        vocab_size=V, context_length=ctx, d_model=C, n_heads=1, n_layers=L, d_ff=F_,
        norm_first=True, positional="learned", tie_weights=True,
    )  # fmt: skip
    return _parameter_count(config, "decoder")


def _parameter_hidden(draw: Draw) -> list[tuple[int, int, int, int, int]]:
    """(V, ctx, C, L, d_ff): first sizes for which every mistake gives its own count (so each
    is named alone), then the smallest model, then large ones."""
    while True:
        V, ctx, C = draw.integer(50, 5000), draw.integer(3, 512), draw.integer(8, 256)
        L, F_ = draw.integer(2, 12), draw.integer(8, 1024)
        mistakes = _parameter_mistakes(V, ctx, C, L, F_, 0)
        if _distinct([0, *mistakes.values()]):
            break
    C_large = 128 * draw.integer(8, 64)
    return [
        (V, ctx, C, L, F_),
        (draw.integer(2, 20), draw.integer(1, 8), draw.integer(1, 8), 1, draw.integer(1, 8)),
        (draw.integer(30000, 260000), draw.integer(1024, 32768), C_large, draw.integer(16, 96),
         draw.choice([4 * C_large, 8 * C_large // 3])),
    ]  # fmt: skip


def _check_parameter_case(ex: Exercise, fn: Callable, *case: int) -> None:
    got = as_int(ex.call(fn, *case), "parameter_count")
    right = _parameters(*case)
    _expect_count(
        got,
        right,
        f"parameter_count{case}",
        _parameter_mistakes(*case, right),
        "count the token embedding (tied to the output), the position table, and per layer "
        "attention (four C x C maps with biases), the feed-forward network (two matrices with "
        "biases) and two layer norms (gain and bias); then the final layer norm.",
    )


def check_parameter_count(fn: Callable[..., int], hidden: bool = False) -> None:
    """Learner's `parameter_count(vocab_size, context_length, d_model, n_layers, d_ff) -> int`
    for a GPT-style decoder: pre-norm, learned positions, tied output, biases everywhere."""
    with Exercise("parameter_count", hidden, PARAMETER_FORBIDDEN) as ex:
        visible = [(50257, 1024, 768, 12, 3072)]  # GPT-2 small
        for case in _parameter_hidden(ex.draw) if hidden else visible:
            _check_parameter_case(ex, fn, *case)


# --- 2. Forward FLOPs --------------------------------------------------------------------------

FLOPS_FORBIDDEN = _NO_MODELS + Forbidden(
    python=(
        scaling.forward_flops,
        scaling.training_flops,
        flop_counter.FlopCounterMode,
        flop_counter.mm_flop,
        flop_counter.bmm_flop,
    )
)


def _flop_mistakes(V: int, C: int, L: int, F_: int, T: int, right: int) -> dict[str, int]:
    """The count as each likely mistake gives it."""
    changes = {
        "attention's two products are missing: Q K^T and weights @ V each cost 2 T^2 C per "
        "layer.": -L * 4 * T * T * C,
        "only half of attention's products are counted: Q K^T and weights @ V each cost "
        "2 T^2 C per layer, counted in full (as a dense kernel computes them, even under a "
        "causal mask).": -L * 2 * T * T * C,
        "the output projection onto the vocabulary (2 T V C) is missing.": -2 * T * V * C,
        "attention has four C x C maps (queries, keys, values, output), 2 T 4C^2 per layer.": (
            -L * 2 * T * C * C
        ),
        "the feed-forward network has two matrices, C x d_ff and d_ff x C: 2 T 2 C d_ff per "
        "layer.": -L * 2 * T * C * F_,
        "the token embedding is a table lookup, not a matrix product: it costs no FLOPs.": (
            2 * T * V * C
        ),
    }
    mistakes = {hint: right + change for hint, change in changes.items()}
    mistakes["a multiply-add counts as 2 FLOPs: an (m x k) @ (k x n) product costs 2mkn."] = (
        right // 2
    )
    mistakes[
        "that is the training cost (3 x forward, the 6ND rule); the question asks for one "
        "forward pass."
    ] = 3 * right
    return mistakes


def _flops(V: int, C: int, L: int, F_: int, T: int) -> int:
    config = TransformerConfig(vocab_size=V, d_model=C, n_heads=1, n_layers=L, d_ff=F_)
    return _forward_flops(config, T, "decoder")


def _flop_hidden(draw: Draw) -> list[tuple[int, int, int, int, int]]:
    """(V, C, L, d_ff, T): first sizes for which every mistake gives its own count, then the
    smallest model, a sequence much longer than the model is wide (attention dominates), and a
    large model (every count below 2^53, so that float arithmetic stays exact)."""
    while True:
        V, C, L = draw.integer(50, 5000), draw.integer(8, 256), draw.integer(2, 12)
        F_, T = draw.integer(8, 1024), draw.integer(4, 512)
        mistakes = _flop_mistakes(V, C, L, F_, T, _flops(V, C, L, F_, T))
        if _distinct([_flops(V, C, L, F_, T), *mistakes.values()]):
            break
    C_large = 128 * draw.integer(8, 96)
    return [
        (V, C, L, F_, T),
        (draw.integer(1, 8), draw.integer(1, 8), 1, draw.integer(1, 8), draw.integer(1, 8)),
        (draw.integer(100, 50000), draw.integer(16, 256), draw.integer(1, 8),
         draw.integer(64, 1024), draw.integer(2048, 16384)),
        (draw.integer(32000, 128000), C_large, draw.integer(16, 96), 4 * C_large,
         draw.integer(1024, 8192)),
    ]  # fmt: skip


def _check_flop_case(ex: Exercise, fn: Callable, *case: int) -> None:
    got = as_int(ex.call(fn, *case), "forward_flops")
    right = _flops(*case)
    _expect_count(
        got,
        right,
        f"forward_flops{case}",
        _flop_mistakes(*case, right),
        "per layer: the four C x C maps (2 T 4C^2), attention's two products (2 x 2 T^2 C) and "
        "the feed-forward network (2 T 2 C d_ff); then the output projection (2 T V C).",
    )


def check_forward_flops(fn: Callable[..., int], hidden: bool = False) -> None:
    """Learner's `forward_flops(vocab_size, d_model, n_layers, d_ff, seq_len) -> int`: the
    matrix-product FLOPs of one forward pass over one sequence."""
    with Exercise("forward_flops", hidden, FLOPS_FORBIDDEN) as ex:
        visible = [(50257, 768, 12, 3072, 1024)]  # GPT-2 small's shape on 1024 tokens
        for case in _flop_hidden(ex.draw) if hidden else visible:
            _check_flop_case(ex, fn, *case)


# --- 3. Gradient accumulation ------------------------------------------------------------------


@handed_over
def _recorded_forward(sizes: list[int], forward: Callable, *args: Any, **kwargs: Any) -> Any:
    """The model's forward, noting the batch size of each call, `model(x)` and
    `model.forward(x)` alike (it runs inside the learner's code)."""
    sizes.append(int(args[0].shape[0]) if args else -1)
    return forward(*args, **kwargs)


def _classifier(seed: int, d: int, V: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, V)).double()


def _gradients(model: nn.Module, pieces: list[tuple[Tensor, Tensor]], scale: float) -> list:
    """The gradients of scale * (the sum over pieces of their mean cross-entropy)."""
    loss = sum(scale * _cross_entropy(model(x), y) for x, y in pieces)
    return [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()))]


def _accumulation_hidden(draw: Draw) -> list[tuple[int, int, int, int, int]]:
    """(seed, B, n_micro, d, V): at least two micro-batches (one would hide the scaling and the
    zeroing), of at least two examples, never n_micro of them (so that splitting into pieces of
    n_micro examples shows)."""
    cases = []
    for _ in range(3):
        k = draw.integer(2, 4)
        m = draw.choice([m for m in range(2, 6) if m != k])
        cases.append((draw.integer(0, 2**31), k * m, k, draw.integer(2, 6), draw.integer(2, 5)))
    return cases


def _check_batch_sizes(sizes: list[int], B: int, k: int) -> None:
    if sizes == [B // k] * k:
        return
    hint, likely = (
        "run the model on each micro-batch, one forward and backward pass each (that is the "
        "point: only one micro-batch's activations are in memory at a time).",
        False,
    )
    if sizes == [B]:
        hint, likely = "the model ran once on the full batch; split it into n_micro pieces.", True
    elif sizes == [k] * (B // k):
        hint, likely = (
            "the micro-batches hold n_micro examples each; there should be n_micro of them, "
            "each of B / n_micro examples (inputs.chunk(n_micro), not inputs.split(n_micro)).",
            True,
        )
    raise ExerciseError(
        f"accumulate_gradients called the model on batches of sizes {sizes}; with B = {B} and "
        f"n_micro = {k} it must run {k} micro-batches of {B // k} examples",
        hint=hint,
        likely=likely,
    )


def _check_accumulation_case(
    ex: Exercise,
    fn: Callable,
    seed: int,
    inputs: Tensor,
    targets: Tensor,
    k: int,
    V: int,
    stale: torch.Generator | None,
) -> None:
    B, d = inputs.shape
    model = _classifier(seed, d, V)
    weights = [p.detach().clone() for p in model.parameters()]
    old = [  # gradients left over from an earlier step
        torch.ones_like(w) if stale is None else torch.randn(w.shape, generator=stale).double()
        for w in weights
    ]
    for p, g in zip(model.parameters(), old, strict=True):
        p.grad = g.clone()
    x, y = inputs.clone(), targets.clone()
    sizes: list[int] = []
    model.forward = functools.partial(_recorded_forward, sizes, model.forward)
    try:
        ex.call(fn, model, inputs, targets, k, mutates=True)
    finally:
        vars(model).pop("forward", None)  # (the learner's code may have removed it)
    _check_batch_sizes(sizes, B, k)
    if any(
        not torch.equal(p.detach(), w) for p, w in zip(model.parameters(), weights, strict=True)
    ):
        raise ExerciseError(
            "accumulate_gradients changed the model's weights",
            hint="leave the gradients in p.grad and take no optimizer step.",
            likely=False,
        )
    reference = _classifier(seed, d, V)  # a fresh copy: no hook of the learner's on it
    expected = _gradients(reference, [(x, y)], 1.0)
    chunks = list(zip(x.chunk(k), y.chunk(k), strict=True))
    mistakes = {
        "the loss of each micro-batch must be divided by the number of micro-batches: summed "
        "unscaled, the gradients come out n_micro times too large.": lambda: [
            k * g for g in expected
        ],
        "the gradients were zeroed inside the loop, so only the last micro-batch's are left; "
        "zero them once, before the loop.": lambda: _gradients(reference, chunks[-1:], 1 / k),
        "the gradients were zeroed inside the loop, so only the last micro-batch's are left "
        "(zero them once, before the loop), and each micro-batch's loss must be divided by "
        "n_micro.": lambda: _gradients(reference, chunks[-1:], 1.0),
        "the gradients still hold those of an earlier step: zero them (model.zero_grad()) "
        "before accumulating.": lambda: [g + o for g, o in zip(expected, old, strict=True)],
        "the gradients still hold those of an earlier step (zero them before accumulating), "
        "and each micro-batch's loss must be divided by n_micro.": lambda: [
            k * g + o for g, o in zip(expected, old, strict=True)
        ],
    }
    what = f"the accumulated gradient (B = {B}, n_micro = {k})"
    for i, ((name, p), want) in enumerate(zip(model.named_parameters(), expected, strict=True)):
        if p.grad is None:
            raise ExerciseError(
                f"{name} has no gradient after accumulate_gradients",
                hint="call loss.backward() on each micro-batch's loss.",
                likely=False,
            )
        expect_close(
            p.grad,
            want,
            what=f"{what} of {name}",
            mistakes={hint: (lambda m=m, i=i: m()[i]) for hint, m in mistakes.items()},
            atol=1e-10,
            rtol=1e-8,
        )


def check_accumulate_gradients(fn: Callable[..., None], hidden: bool = False) -> None:
    """Learner's `accumulate_gradients(model, inputs, targets, n_micro) -> None`: leaves in
    each p.grad the gradient of the full batch's mean cross-entropy."""
    with Exercise("accumulate_gradients", hidden, Forbidden()) as ex:
        if hidden:
            d = ex.draw
            cases = [
                (seed, d.normal(B, width), d.integers(0, V, (B,)), k, V, d.generator())
                for seed, B, k, width, V in _accumulation_hidden(d)
            ]
        else:  # B = 8 in 4 micro-batches of 2, d = 5, 3 classes
            targets = torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(0))
            cases = [(0, random_tensor(8, 5, seed=1), targets, 4, 3, None)]
        for case in cases:
            _check_accumulation_case(ex, fn, *case)


# --- 4. Fitting a power law --------------------------------------------------------------------

# Least squares done by a library: numpy's polynomial fits and lstsq (Python functions, so by
# their code), torch's lstsq and pseudo-inverse (operators).
FIT_FORBIDDEN = Forbidden(
    python=(
        np.polyfit,
        np.polynomial.polynomial.polyfit,
        np.polynomial.Polynomial.fit,
        np.linalg.lstsq,
        np.linalg.pinv,
    ),
    ops=("linalg_lstsq", "linalg_pinv", "pinverse"),
)


def _fit_forbidden() -> Forbidden:
    """FIT_FORBIDDEN, and scipy's fits where the learner's notebook has loaded them (importing
    scipy here would cost every notebook a second)."""
    found = [
        getattr(sys.modules[module], name)
        for module, names in (
            ("scipy.stats", ("linregress", "theilslopes", "siegelslopes")),
            ("scipy.linalg", ("lstsq", "pinv")),
            ("scipy.optimize", ("curve_fit", "least_squares", "lsq_linear")),
        )
        if module in sys.modules
        for name in names
        if hasattr(sys.modules[module], name)
    ]
    return FIT_FORBIDDEN + Forbidden(python=tuple(found))


def _power_law(n: Tensor, loss: Tensor, kind: str = "") -> tuple[float, float]:
    """Least squares of log(loss) = log(a) - alpha log(n); or a likely mistake's version."""
    log = torch.log10 if kind == "exp_of_log10" else torch.log
    x, y = (n, loss) if kind == "no_logs" else (log(n), log(loss))
    if kind == "swapped":
        x, y = y, x
    if kind == "uncentred":
        slope = (x * y).sum() / (x * x).sum()
    else:
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
    "exp_of_log10": "the fit used log10 but a = exp(intercept); use 10^intercept (or natural "
    "logs throughout).",
    "no_logs": "the fit is on n and loss themselves; a power law is a straight line in "
    "log(loss) against log(n): fit there.",
    "swapped": "the regression is of log(n) on log(loss); regress log(loss) on log(n) "
    "(log(loss) is what has the noise).",
    "uncentred": "the slope is sum((x - mean x)(y - mean y)) / sum((x - mean x)^2): subtract "
    "the means first (sum(x y) / sum(x^2) fits a line through the origin).",
}


def _losses(n: Tensor, alpha: float, a: float, noise: Tensor) -> Tensor:
    return a * n ** (-alpha) * torch.exp(noise)


def _power_law_hidden(draw: Draw) -> list[tuple[Tensor, Tensor]]:
    """(n, loss): sizes over 2 to 5 decades, in random order, loss = a n^(-alpha) times
    log-normal noise. The noise is large enough (1 - r^2 >= 0.005 in log-log space) that
    regressing log(n) on log(loss) gives a slope clearly different from the right one, and
    a >= 1.5, so that exp, 10^ and the raw intercept differ."""
    cases = []
    for points in (draw.integer(5, 12), 3, draw.integer(20, 60)):
        alpha, a = draw.real(0.05, 0.6), draw.real(1.5, 50.0)
        low, span = draw.real(2.0, 6.0), draw.real(2.0, 5.0)
        x = (low + span * draw.uniform(points)) * math.log(10)
        while True:
            noise = draw.real(0.03, 0.1) * alpha * span * math.log(10) * draw.normal(points)
            y = -alpha * x + noise
            r = torch.corrcoef(torch.stack([x, y]))[0, 1]
            if 1 - r**2 >= 0.005:
                break
        cases.append((x.exp(), _losses(x.exp(), alpha, a, noise)))
    return cases


def _check_fit_case(ex: Exercise, fn: Callable, n: Tensor, loss: Tensor) -> None:
    out = ex.call(fn, n, loss)
    if not isinstance(out, tuple | list) or len(out) != 2:
        raise ExerciseError("fit_power_law should return a pair (alpha, a)", got=type(out).__name__)
    expect_close(
        out,
        _power_law(n, loss),
        what=f"fit_power_law's (alpha, a) on {len(n)} points",
        mistakes={
            hint: (lambda kind=kind: _power_law(n, loss, kind))
            for kind, hint in POWER_LAW_MISTAKES.items()
        },
    )


def check_fit_power_law(fn: Callable[..., tuple[float, float]], hidden: bool = False) -> None:
    """Learner's `fit_power_law(n, loss) -> (alpha, a)` with loss ~ a * n**(-alpha), by least
    squares on log(loss) against log(n)."""
    with Exercise("fit_power_law", hidden, _fit_forbidden()) as ex:
        if hidden:
            cases = _power_law_hidden(ex.draw)
        else:  # six sizes from 1e4 to 1e8, loss = 5 n^-0.08 times a little noise
            n = torch.logspace(4, 8, 6, dtype=torch.float64)
            noise = 0.02 * torch.randn(
                6, generator=torch.Generator().manual_seed(0), dtype=torch.float64
            )
            cases = [(n, _losses(n, 0.08, 5.0, noise))]
        for n, loss in cases:
            _check_fit_case(ex, fn, n, loss)


# --- 5. A KV-cache attention step --------------------------------------------------------------

KV_FORBIDDEN = Forbidden(
    python=(
        attention.scaled_dot_product_attention,
        attention._attention_written_out,
        attention.MultiHeadAttention,
        inference.cached_self_attention,
        inference.decode_step,
        nn.MultiheadAttention,
        F.multi_head_attention_forward,
    ),
    ops=ATTENTION_KERNELS + MULTI_HEAD_KERNELS,
)

KV_ERRORS = {
    "except in dimension 0": "the cache is appended on dim 0 (the batch axis); the time axis of "
    "a (B, H, t, D) cache is dim 2.",
    "except in dimension 1": "the cache is appended on dim 1 (the heads axis); the time axis of "
    "a (B, H, t, D) cache is dim 2.",
    "except in dimension 3": "the cache is appended on dim 3 (the feature axis); the time axis "
    "of a (B, H, t, D) cache is dim 2.",
}


def _kv_step(
    q: Tensor, k_new: Tensor, v_new: Tensor, cache_k: Tensor, cache_v: Tensor, kind: str = ""
) -> tuple[Tensor, Tensor, Tensor]:
    """The reference step, or a likely mistake's version of it."""
    if kind == "new_first":
        keys, values = _cat([k_new, cache_k], dim=2), _cat([v_new, cache_v], dim=2)
    else:
        keys, values = _cat([cache_k, k_new], dim=2), _cat([cache_v, v_new], dim=2)
    seen_k, seen_v = {"cache_only": (cache_k, cache_v), "new_only": (k_new, v_new)}.get(
        kind, (keys, values)
    )
    D = q.shape[-1]
    scale = {"no_scale": 1.0, "by_d": 1 / D}.get(kind, 1 / math.sqrt(D))
    scores = q @ seen_k.transpose(-2, -1) * scale  # (B, H, 1, t + 1)
    weights = _softmax(scores, dim={"wrong_axis": -2, "heads_axis": 1}.get(kind, -1))
    return weights @ seen_v, keys, values  # (B, H, 1, D)


KV_MISTAKES = {
    "no_scale": "the scores are not scaled: divide q k^T by sqrt(D).",
    "by_d": "the scores are divided by D; divide by sqrt(D).",
    "wrong_axis": "the softmax runs over the wrong axis: normalise over the keys (the last "
    "axis), so that the weights of the one query sum to 1.",
    "heads_axis": "the softmax runs over the heads (dim 1); normalise over the keys (the last "
    "axis), so that the weights of the one query sum to 1.",
    "cache_only": "the new token does not attend to itself: append the new key and value to "
    "the cache first, then attend over all of them.",
    "new_only": "the query attends to the new key only; it attends to every cached key and "
    "the new one.",
}


def _kv_hidden(draw: Draw) -> list[tuple[int, int, int, int]]:
    """(B, H, t, D): first a cache of several positions, with several heads (so that every
    mistake shows and a cat on the wrong axis fails), then an empty cache, a cache of one
    position (a cat on the wrong axis gives a shape instead of an error) and a long one."""
    return [
        (draw.integer(2, 3), draw.integer(2, 4), draw.integer(2, 9), draw.integer(2, 8)),
        (draw.integer(1, 3), draw.integer(1, 4), 0, draw.integer(2, 8)),
        (draw.integer(1, 3), draw.integer(2, 4), 1, draw.integer(2, 8)),
        (draw.integer(1, 2), draw.integer(1, 3), draw.integer(16, 48), draw.integer(2, 16)),
    ]


def _kv_tensors(draw: Draw | None, B: int, H: int, t: int, D: int) -> list[Tensor]:
    """q, k_new, v_new (B, H, 1, D) and the cache (B, H, t, D), drawn or seeded."""
    shapes = [(B, H, 1, D)] * 3 + [(B, H, t, D)] * 2
    if draw is None:
        return [random_tensor(*shape, seed=i) for i, shape in enumerate(shapes)]
    return [draw.normal(*shape) for shape in shapes]


def _check_kv_case(
    ex: Exercise, fn: Callable, q: Tensor, k_new: Tensor, v_new: Tensor, cache_k: Tensor,
    cache_v: Tensor,
) -> None:  # fmt: skip
    B, H, t, D = cache_k.shape
    out = ex.call(fn, q, k_new, v_new, cache_k, cache_v, hints=KV_ERRORS)
    if not isinstance(out, tuple | list) or len(out) != 3:
        raise ExerciseError(
            "kv_attention_step should return three tensors (out, keys, values)",
            got=type(out).__name__,
        )
    out, keys, values = out
    expected = _kv_step(q, k_new, v_new, cache_k, cache_v)
    for i, (name, got) in enumerate((("keys", keys), ("values", values)), start=1):
        pair = (cache_k, k_new) if name == "keys" else (cache_v, v_new)
        mistakes = {
            f"the new {name[:-1]} was put in front of the cache; append it at the end, so that "
            "position i of the cache holds token i.": lambda i=i: _kv_step(
                q, k_new, v_new, cache_k, cache_v, "new_first"
            )[i],
        }
        if t == 1:  # a cache of one position can be appended on any axis
            for dim in (0, 1, 3):
                mistakes[KV_ERRORS[f"except in dimension {dim}"]] = _cat(pair, dim=dim)
        expect_equal(
            got,
            expected[i],
            what=f"the {name} kv_attention_step returns for a ({B}, {H}, {t}, {D}) cache",
            mistakes=mistakes,
            dtype_hint="keep the dtype of the cache.",
        )
    expect_close(
        out,
        expected[0],
        what=f"kv_attention_step's output for a ({B}, {H}, {t}, {D}) cache",
        mistakes={
            hint: (lambda kind=kind: _kv_step(q, k_new, v_new, cache_k, cache_v, kind)[0])
            for kind, hint in KV_MISTAKES.items()
        },
        atol=1e-10,
        rtol=1e-8,
    )


def check_kv_attention_step(fn: Callable[..., tuple], hidden: bool = False) -> None:
    """Learner's `kv_attention_step(q, k_new, v_new, cache_k, cache_v) -> (out, keys, values)`:
    q, k_new, v_new (B, H, 1, D); cache (B, H, t, D); out (B, H, 1, D); keys, values
    (B, H, t + 1, D)."""
    with Exercise("kv_attention_step", hidden, KV_FORBIDDEN) as ex:
        if hidden:
            cases = [_kv_tensors(ex.draw, *sizes) for sizes in _kv_hidden(ex.draw)]
        else:  # B = 1, H = 2, a cache of 3 positions, D = 4
            cases = [_kv_tensors(None, 1, 2, 3, 4)]
        for case in cases:
            _check_kv_case(ex, fn, *case)


# --- 6. Per-channel int8 quantization ----------------------------------------------------------

QUANT_FORBIDDEN = Forbidden(
    python=(compression.quantize_int8, compression.Int8Linear, compression.quantize_model),
    ops=(
        "quantize_per_channel",
        "quantize_per_tensor",
        "quantize_per_tensor_dynamic",
        "fake_quantize_per_channel_affine",
        "fake_quantize_per_channel_affine_cachemask",
        "fake_quantize_per_tensor_affine",
        "fake_quantize_per_tensor_affine_cachemask",
        "_fake_quantize_learnable_per_channel_affine",
        "_fake_quantize_learnable_per_tensor_affine",
    ),
)


def _quantize_variant(w: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """q and scale as a likely mistake computes them."""
    if kind == "per_tensor":
        q, scale = _quantize_int8(w, axis=None)
        return q, scale
    if kind == "per_column":
        return _quantize_int8(w, axis=1)
    amax = w.amax(dim=1, keepdim=True) if kind == "no_abs" else w.abs().amax(dim=1, keepdim=True)
    scale = amax.float() / (128 if kind in ("qmax_128", "wrap_128") else 127)
    scaled = w.float() / scale
    if kind == "wrap_128":
        return scaled.round().to(torch.int8), scale  # 128 wraps round to -128
    rounded = {"truncate": scaled.trunc(), "floor": scaled.floor()}.get(kind, scaled.round())
    return rounded.clamp(-127, 127).to(torch.int8), scale


QUANT_MISTAKES = {
    "per_tensor": "one scale for the whole matrix (per-tensor); give each output channel (row) "
    "its own scale, max |w[row]| / 127.",
    "per_column": "one scale per input column; the channels are the rows (output features), "
    "so the scale is the max over each row, shape (out, 1).",
    "qmax_128": "the scale divides by 128: int8 holds -128..127, but symmetric quantization "
    "uses -127..127, so scale = max|w| / 127.",
    "wrap_128": "the scale divides by 128, and the largest weight of a row, 128 after "
    "rounding, wrapped around to -128 in int8: divide by 127, and clamp to [-127, 127] "
    "before converting.",
    "truncate": "the values are truncated (.to(torch.int8) cuts toward zero); round to the "
    "nearest integer first with torch.round.",
    "floor": "the values are rounded down (floor); round to the nearest integer with torch.round.",
    "no_abs": "the scale uses the largest weight, max(w), not the largest magnitude, "
    "max(|w|): a row's most negative weight can be the largest in size.",
}


def _quant_weight(draw: Draw, rows: int, cols: int, outliers: bool) -> Tensor:
    """A float32 (rows, cols) weight: rows of different sizes, optionally an outlier row and
    an outlier entry; at least one row whose largest magnitude is negative (so max(w) and
    max(|w|) differ); and no entry within 0.02 of a rounding boundary (k + 1/2) of w / scale,
    so that every correct way of computing w / scale rounds alike."""
    while True:
        w = draw.normal(rows, cols) * 10 ** draw.uniform(rows, 1, low=-2.0, high=0.5)
        if outliers:
            w[draw.integer(0, rows - 1)] *= draw.real(20.0, 100.0)
            w[draw.integer(0, rows - 1), draw.integer(0, cols - 1)] *= draw.real(5.0, 20.0)
        r = draw.integer(0, rows - 1)
        if w[r, w[r].abs().argmax()] > 0:
            w[r] = -w[r]
        w = w.float()
        scale = w.abs().amax(dim=1, keepdim=True) / 127
        scaled = (w / scale).abs()
        near = ((scaled - scaled.floor()) - 0.5).abs() < 0.02
        w = torch.where(near, w.sign() * (scaled.floor() + 0.25) * scale, w)
        q = _quantize_int8(w, axis=0)[0]
        variants = [_quantize_variant(w, kind)[0] for kind in QUANT_MISTAKES]
        if all(v.shape != q.shape or not torch.equal(v, q) for v in variants):
            return w


def _check_quant_case(ex: Exercise, fn: Callable, w: Tensor) -> None:
    rows, cols = w.shape
    out = ex.call(fn, w)
    if not isinstance(out, tuple | list) or len(out) != 2:
        raise ExerciseError(
            "quantize_per_channel should return a pair (q, scale)", got=type(out).__name__
        )
    q, scale = out
    expected_q, expected_scale = _quantize_int8(w, axis=0)
    expect_equal(
        q,
        expected_q,
        what=f"q for a ({rows}, {cols}) weight",
        mistakes={
            hint: (lambda kind=kind: _quantize_variant(w, kind)[0])
            for kind, hint in QUANT_MISTAKES.items()
        },
        dtype_hint="q is int8: round, clamp to [-127, 127], then .to(torch.int8).",
    )
    if isinstance(scale, Tensor) and scale.dtype != torch.float32:
        raise ExerciseError(
            f"the scale of a ({rows}, {cols}) weight has dtype {scale.dtype}",
            hint="the scale is float32: w.abs().amax(...).float() / 127.",
            likely=False,
        )
    expect_close(
        scale,
        expected_scale,
        what=f"the scale of a ({rows}, {cols}) weight",
        mistakes={
            "the scale is max|w| / 127 per row, so that w ~ q * scale; it looks like you "
            "returned its inverse, 127 / max|w|.": lambda: 1 / expected_scale,
        },
    )


def check_quantize_per_channel(fn: Callable[..., tuple], hidden: bool = False) -> None:
    """Learner's `quantize_per_channel(w (out, in)) -> (q int8 (out, in), scale (out, 1))`."""
    with Exercise("quantize_per_channel", hidden, QUANT_FORBIDDEN) as ex:
        if hidden:
            d = ex.draw
            sizes = [
                (d.integer(4, 12), d.integer(5, 16), True),
                (d.integer(2, 6), d.integer(2, 6), False),
                (d.integer(32, 64), d.integer(3, 8), True),
            ]
            weights = [_quant_weight(d, *size) for size in sizes]
            weights[1] = weights[1].double()  # w may be any float; the scale is float32
        else:  # a (4, 6) weight whose first row is 40 times larger than the others
            w = random_tensor(4, 6, seed=0).float()
            w[0] *= 40
            weights = [w]
        for w in weights:
            _check_quant_case(ex, fn, w)


# --- 7. Magnitude pruning ----------------------------------------------------------------------

MASK_FORBIDDEN = Forbidden(
    python=(
        prune.l1_unstructured,
        prune.global_unstructured,
        prune.L1Unstructured,
        prune.ln_structured,
        compression.magnitude_prune,
    )
)


def _pruned(w: Tensor, count: int, by: str = "magnitude") -> Tensor:
    """The mask (True = kept) that prunes the `count` weights of smallest |w| (or of smallest
    signed value, or the largest |w|)."""
    values = w.flatten() if by == "signed" else w.abs().flatten()
    keep = torch.ones(w.numel(), dtype=torch.bool)
    count = max(0, min(count, w.numel()))
    if count:
        keep[_topk(values, count, largest=by == "largest").indices] = False
    return keep.view(w.shape)


FLOOR_HINT = (
    "the number pruned is rounded down (math.floor, or int(), which truncates); prune "
    "round(amount * numel) weights."
)
CEIL_HINT = "the number pruned is rounded up (math.ceil); prune round(amount * numel) weights."
ONE_MORE_HINT = (
    "one weight too many is pruned: sort(|w|).values[k] is the (k + 1)-th smallest (indices "
    "count from 0); prune the k smallest, or keep |w| > values[k - 1]."
)
HALF_UP_HINT = (
    "a half is rounded up (int(x + 0.5)); round() rounds a half to the even integer "
    "(round(4.5) = 4): prune round(amount * numel) weights."
)


def _mask_mistakes(w: Tensor, amount: float) -> dict[str, Callable[[], Tensor]]:
    """The masks of the likely mistakes, in the order they are recognised (where two give
    the same mask, the first is named)."""
    N = w.numel()
    x = amount * N
    k = round(x)
    return {
        "the largest weights were pruned; prune the smallest in absolute value (torch.topk "
        "returns the largest unless you pass largest=False).": lambda: _pruned(w, k, "largest"),
        "the weights were ranked by their signed value, so large negative weights were "
        "pruned; rank by absolute value.": lambda: _pruned(w, k, "signed"),
        "the mask is inverted: True means the weight is kept.": lambda: ~_pruned(w, k),
        FLOOR_HINT: lambda: _pruned(w, math.floor(x)),
        CEIL_HINT: lambda: _pruned(w, math.ceil(x)),
        ONE_MORE_HINT: lambda: _pruned(w, k + 1),
        HALF_UP_HINT: lambda: _pruned(w, math.floor(x + 0.5)),
        "one weight too few is pruned: the k-th smallest |w| (the threshold from "
        "torch.kthvalue(|w|, k)) is pruned too; keep only |w| > threshold.": lambda: _pruned(
            w, k - 1
        ),
        "`amount` is the fraction pruned, not the fraction kept: prune the round(amount * "
        "numel) smallest (or: a threshold counted from the wrong end; torch.kthvalue(x, j) is "
        "the j-th smallest, not the j-th largest).": lambda: _pruned(w, N - k),
        "the threshold is counted from the wrong end: torch.kthvalue(x, j) is the j-th "
        "smallest value, not the j-th largest; the threshold is the k-th smallest |w|, "
        "k = round(amount * numel).": lambda: _pruned(w, N - k - 1),
    }


def _mask_hidden(draw: Draw) -> list[tuple[Tensor, float]]:
    """(weight, amount). amount * numel has its fractional part in [0.1, 0.4] in the first case
    (round = floor, ceil one more) and in [0.6, 0.9] in the second (round = ceil, floor one
    less), so that round, floor (or int) and ceil prune different numbers and each is named.
    In the first case every other mistake's mask differs from the right one and from one
    another (redrawn until they do). Then nothing to prune (amount 0). Ties among |w| have
    probability zero for drawn floats, so topk, sort and kthvalue select alike."""
    cases = []
    for low, high in ((0.1, 0.4), (0.6, 0.9)):
        while True:
            shape = draw.choice([(draw.integer(12, 60),), (draw.integer(3, 8), draw.integer(3, 9)),
                                 (2, draw.integer(2, 4), draw.integer(3, 6))])  # fmt: skip
            w = draw.normal(*shape)
            N = w.numel()
            amount = (draw.integer(2, N - 4) + draw.real(low, high)) / N
            if cases:  # the second case: floor (and int) prune one fewer, by construction
                break
            mistakes = _mask_mistakes(w, amount)
            del mistakes[FLOOR_HINT]  # equal to round here, by construction
            del mistakes[HALF_UP_HINT]  # equal to round here
            del mistakes[ONE_MORE_HINT]  # equal to ceil here
            if _distinct([_pruned(w, round(amount * N)), *(m() for m in mistakes.values())]):
                break
        cases.append((w, amount))
    cases.append((draw.normal(draw.integer(2, 6), draw.integer(2, 6)), 0.0))
    # amount * numel = 2j + 1/2 exactly: round() gives 2j (halves to even), int(x + 0.5) one more
    shape = draw.choice([(3, 3), (5, 5), (3, 7), (7, 3), (13,), (17,)])
    cases.append((draw.normal(*shape), 0.5))
    return cases


def _check_mask_case(ex: Exercise, fn: Callable, w: Tensor, amount: float) -> None:
    out = ex.call(fn, w, amount)
    expected = _pruned(w, round(amount * w.numel()))
    expect_equal(
        out,
        expected,
        what=f"magnitude_mask for a {tuple(w.shape)} weight and amount {amount:.6g}",
        mistakes=_mask_mistakes(w, amount),
        dtype_hint="return a bool mask (True = kept), e.g. torch.ones(..., dtype=torch.bool).",
    )


def check_magnitude_mask(fn: Callable[[Tensor, float], Tensor], hidden: bool = False) -> None:
    """Learner's `magnitude_mask(weight, amount) -> bool mask` (True = kept), pruning the
    round(amount * numel) weights of smallest absolute value."""
    with Exercise("magnitude_mask", hidden, MASK_FORBIDDEN) as ex:
        # a (4, 5) weight, amount 0.4: the 8 weights of smallest |w| are pruned
        visible = [(random_tensor(4, 5, seed=0), 0.4)]
        for w, amount in _mask_hidden(ex.draw) if hidden else visible:
            _check_mask_case(ex, fn, w, amount)


# --- 8. Distillation loss ----------------------------------------------------------------------

DISTILL_FORBIDDEN = Forbidden(
    python=(compression.distillation_loss, nn.KLDivLoss, F.kl_div), ops=("kl_div",)
)


def _distill_variant(s: Tensor, t: Tensor, y: Tensor, T: float, alpha: float, kind: str) -> Tensor:
    """The loss as a likely mistake computes it."""
    axis = 0 if kind == "wrong_axis" else -1
    log_ps = _log_softmax(s if kind == "student_not_softened" else s / T, dim=axis)
    log_pt = _log_softmax(t if kind == "teacher_not_softened" else t / T, dim=axis)
    factor = {"no_t2": 1.0, "t_once": T}.get(kind, T * T)
    p, log_p, log_q = (log_ps.exp(), log_ps, log_pt) if kind == "reversed" else (
        log_pt.exp(), log_pt, log_ps
    )  # fmt: skip
    terms = -p * log_q if kind == "soft_ce" else p * (log_p - log_q)  # (N, V)
    kl = {
        "mean_reduction": terms.mean(),
        "batch_sum": terms.sum(),
    }.get(kind, terms.sum(-1).mean())
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
    "student_not_softened": "the student's logits must be divided by the temperature in the "
    "soft term too.",
    "hard_at_t": "the cross-entropy with the true labels uses the student's plain logits, "
    "not logits / T.",
    "alpha_swapped": "alpha weighs the soft (teacher) term and 1 - alpha the hard-label term.",
    "mean_reduction": "the KL is averaged over all N x V entries (as F.kl_div's "
    "reduction='mean' does); sum it over the classes, then average over the N rows "
    "(reduction='batchmean').",
    "batch_sum": "the KL is summed over the rows as well; average it over the N rows.",
    "soft_ce": "the soft term is the cross-entropy -sum p_teacher log p_student, not the KL: "
    "subtract the teacher's entropy, KL = sum p_teacher (log p_teacher - log p_student) (the "
    "gradients agree, the loss does not).",
    "wrong_axis": "the softmax runs over the wrong axis (the batch, dim 0); each row's "
    "distribution is over the classes: log_softmax(..., dim=-1).",
}


def _distill_inputs(
    draw: Draw, N: int, V: int, T: float, alpha: float
) -> tuple[Tensor, Tensor, Tensor, float, float]:
    scale = draw.real(1.0, 3.0)
    student, teacher = draw.normal(N, V, scale=scale), draw.normal(N, V, scale=scale)
    return student, teacher, draw.integers(0, V, (N,)), T, alpha


def _distill_hidden(draw: Draw) -> list[tuple[Tensor, Tensor, Tensor, float, float]]:
    """(student, teacher, targets, T, alpha). First T != 1, alpha away from 0, 1/2 and 1, and
    N != V, redrawn until every mistake's loss differs from the right one and from each
    other's by 1% or more (so that each is named alone); then T = 1, alpha = 1 (the soft term
    alone) and alpha = 0 (the hard term alone, one row). T and alpha have at most two
    significant digits."""
    while True:
        N = draw.integer(3, 8)
        V = draw.choice([v for v in range(3, 13) if v != N])
        T = draw.choice([1.5, 2.0, 2.5, 3.0, 4.0, 5.0])
        alpha = draw.choice([0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.65, 0.7, 0.8, 0.9])
        first = _distill_inputs(draw, N, V, T, alpha)
        values = [float(_distillation_loss(*first))] + [
            float(_distill_variant(*first, kind)) for kind in DISTILL_MISTAKES
        ]
        apart = all(
            abs(a - b) > 0.01 * max(abs(a), abs(b)) for i, a in enumerate(values)
            for b in values[i + 1 :]
        )  # fmt: skip
        if apart:
            break
    return [
        first,
        _distill_inputs(draw, draw.integer(2, 6), draw.integer(2, 9), 1.0, draw.choice([0.3, 0.7])),
        _distill_inputs(draw, draw.integer(2, 6), draw.integer(2, 9), draw.choice([4.0, 8.0]), 1.0),
        _distill_inputs(draw, 1, draw.integer(2, 9), 2.0, 0.0),
    ]


def _check_distill_case(
    ex: Exercise, fn: Callable, student: Tensor, teacher: Tensor, y: Tensor, T: float,
    alpha: float, grad: bool,
) -> None:  # fmt: skip
    student, teacher = student.detach().requires_grad_(grad), teacher.detach().requires_grad_(grad)
    out = ex.call(fn, student, teacher, y, T, alpha)
    with quiet():
        expected = _distillation_loss(student, teacher, y, T, alpha)
    sd, td = student.detach(), teacher.detach()
    N, V = student.shape
    expect_close(
        out,
        expected,
        what=f"distillation_loss for (N, V) = ({N}, {V}), T = {T:g}, alpha = {alpha:g}",
        mistakes={
            hint: (lambda kind=kind: _distill_variant(sd, td, y, T, alpha, kind))
            for kind, hint in DISTILL_MISTAKES.items()
        },
        atol=1e-10,
        rtol=1e-8,
    )
    if grad:
        ex.expect_backward(out, expected, {"student_logits": student}, "distillation_loss")
        if teacher.grad is not None and bool(teacher.grad.abs().sum() > 0):
            raise ExerciseError(
                "A gradient reaches the teacher's logits through your distillation_loss",
                hint="the teacher is fixed: detach its logits (teacher_logits.detach()).",
            )


def check_distillation_loss(fn: Callable[..., Tensor], hidden: bool = False) -> None:
    """Learner's `distillation_loss(student_logits, teacher_logits, targets, temperature,
    alpha) -> scalar`, equal to tutorlib.compression.distillation_loss; in the hidden tests its
    gradient reaches the student's logits, and none the teacher's."""
    with Exercise("distillation_loss", hidden, DISTILL_FORBIDDEN) as ex:
        if hidden:
            cases = _distill_hidden(ex.draw)
        else:  # N = 4, V = 6, T = 2, alpha = 0.5
            y = torch.randint(0, 6, (4,), generator=torch.Generator().manual_seed(0))
            cases = [(random_tensor(4, 6, seed=0), random_tensor(4, 6, seed=1), y, 2.0, 0.5)]
        for case in cases:
            _check_distill_case(ex, fn, *case, grad=hidden)


watch_module(__name__)
