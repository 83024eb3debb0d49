"""The Chapter 4 checks: right answers written differently pass, every likely mistake gets its
own hint whatever the hidden tests draw, and neither the reference nor any torch operator that
computes the same thing can stand in for the learner's code."""

from __future__ import annotations

import functools
import importlib.util
import math
import runpy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import (
    HIDDEN_SEEDS,
    expect_hint,
    expect_named_alone,
    expect_pass,
    expect_refused,
)
from tests.grading import solution_namespace
from tutorlib import attention, compression, scaling
from tutorlib.checks import Exercise, ExerciseError, draw
from tutorlib.checks import scaling as checks
from tutorlib.models import TransformerConfig

NOT_ALLOWED = "Not allowed in this exercise"
MANY_SEEDS = [f"many-{i}" for i in range(40)]  # for the properties of the hidden draws


@pytest.fixture(scope="module")
def solution() -> dict:
    return solution_namespace("04_scaling")


@pytest.mark.parametrize(
    "name",
    [
        "parameter_count",
        "forward_flops",
        "accumulate_gradients",
        "fit_power_law",
        "kv_attention_step",
        "quantize_per_channel",
        "magnitude_mask",
        "distillation_loss",
    ],
)
def test_the_solutions_pass_under_many_seeds(solution, name: str) -> None:
    expect_pass(getattr(checks, f"check_{name}"), solution[name], seeds=MANY_SEEDS[:10])


# --- 1. Parameters by formula -------------------------------------------------------------------


def _params(V, ctx, C, L, f, *, biases=True, norms=2, gain_only=False, final=True,
            positions=True, tied=True, maps=4, ffn_matrices=2):  # fmt: skip
    norm = C if gain_only else 2 * C
    attention = maps * C * C + (maps * C if biases else 0)
    ffn = ffn_matrices * C * f + (f + C if biases else 0)
    layer = attention + ffn + norms * norm
    tables = V * C * (1 if tied else 2) + (ctx * C if positions else 0)
    return tables + L * layer + (norm if final and norms else 0)


def test_parameter_count_written_another_way_passes(solution) -> None:
    def by_parts(V, ctx, C, L, f):
        per_layer = sum([3 * (C * C + C), C * C + C, C * f + f, f * C + C, 2 * C, 2 * C])
        return V * C + ctx * C + per_layer * L + 2 * C

    def numpy_ints(V, ctx, C, L, f):  # a numpy integer is an int too
        return np.int64(_params(V, ctx, C, L, f))

    for candidate in (by_parts, numpy_ints, _params, solution["parameter_count"]):
        expect_pass(checks.check_parameter_count, candidate)


@pytest.mark.parametrize(
    "change, hint",
    [
        (dict(biases=False), "the biases are missing"),
        (dict(norms=0), "the layer norms are missing"),
        (dict(final=False), "the final layer norm"),
        (dict(norms=1), "each layer has two layer norms"),
        (dict(gain_only=True), "not only a gain"),
        (dict(positions=False), "position table"),
        (dict(tied=False), "tied to the token embedding"),
        (dict(maps=3), "attention has four C x C maps"),
        (dict(ffn_matrices=1), "two matrices, C x d_ff and d_ff x C"),
    ],
)
def test_parameter_count_mistakes_are_named(change: dict, hint: str) -> None:
    candidate = functools.partial(_params, **change)
    expect_hint(checks.check_parameter_count, candidate, hint, hidden=False)
    expect_named_alone(checks.check_parameter_count, candidate, hint)


def test_parameter_count_lists_mistakes_that_one_size_cannot_tell_apart() -> None:
    """With one layer, a missing final norm and a missing second norm per layer both lose 2C:
    the failure names both; the hidden tests draw a size that tells them apart first."""
    candidate = functools.partial(_params, final=False)
    with Exercise("parameter_count", hidden=False) as ex, pytest.raises(ExerciseError) as error:
        checks._check_parameter_case(ex, candidate, 100, 10, 8, 1, 32)
    message = str(error.value)
    assert "one of these" in message and "final layer norm" in message
    assert "each layer has two layer norms" in message


def test_parameter_count_needs_an_int() -> None:
    expect_hint(checks.check_parameter_count, lambda *sizes: 1.5, "should return an int", False)
    expect_hint(checks.check_parameter_count, lambda *sizes: "many", "should return an int")


def test_parameter_count_gives_advice_for_an_unknown_mistake() -> None:
    candidate = lambda *sizes: _params(*sizes) + 1  # noqa: E731
    expect_hint(checks.check_parameter_count, candidate, "Hint: count the token embedding")


def _config(V, ctx, C, L, f) -> TransformerConfig:
    return TransformerConfig(V, ctx, C, 1, L, f, norm_first=True, positional="learned")


def test_counting_parameters_by_building_a_model_is_refused() -> None:
    from tutorlib.models import DecoderOnly

    def by_model(V, ctx, C, L, f):
        return sum(p.numel() for p in DecoderOnly(_config(V, ctx, C, L, f)).parameters())

    def by_meta_layers(V, ctx, C, L, f):
        layer = nn.TransformerEncoderLayer(C, 1, f, device="meta")
        return V * C + ctx * C + L * sum(p.numel() for p in layer.parameters()) + 2 * C

    def by_state_dict(V, ctx, C, L, f):
        return sum(t.numel() for t in nn.Linear(C, f, device="meta").state_dict().values())

    for cheat in (by_model, by_meta_layers, by_state_dict):
        expect_refused(checks.check_parameter_count, cheat)


def test_the_parameter_count_reference_is_refused_under_any_name() -> None:
    from tutorlib.scaling import parameter_count as aliased

    copy = runpy.run_path(scaling.__file__)["parameter_count"]
    spec = importlib.util.spec_from_file_location("another_scaling", scaling.__file__)
    another = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(another)
    cached = functools.lru_cache(maxsize=None)(scaling.parameter_count)
    for reference in (aliased, copy, another.parameter_count, cached):
        cheat = lambda *s, r=reference: r(_config(*s))  # noqa: E731
        expect_refused(checks.check_parameter_count, cheat)

    def by_layer_count(V, ctx, C, L, f):
        return V * C + ctx * C + L * scaling.layer_parameter_count(_config(V, ctx, C, L, f)) + 2 * C

    for cheat in (by_layer_count, lambda *s: checks._parameters(*s)):
        expect_refused(checks.check_parameter_count, cheat)


# --- 2. Forward FLOPs ---------------------------------------------------------------------------


def _flops(V, C, L, f, T, *, maps=4, products=2, ffn_matrices=2, output=True, embedding=False,
           per_mac=2, passes=1):  # fmt: skip
    per_layer = per_mac * (T * maps * C * C + products * T * T * C + ffn_matrices * T * C * f)
    once = per_mac * T * V * C * (int(output) + int(embedding))
    return passes * (L * per_layer + once)


def test_forward_flops_written_another_way_passes(solution) -> None:
    def by_products(V, C, L, f, T):
        def mm(m, k, n):
            return 2 * m * k * n

        layer = 4 * mm(T, C, C) + mm(T, C, T) + mm(T, T, C) + mm(T, C, f) + mm(T, f, C)
        return L * layer + mm(T, C, V)

    def as_float(V, C, L, f, T):  # exact below 2^53, as the hidden sizes are
        return float(_flops(V, C, L, f, T))

    for candidate in (by_products, as_float, _flops, solution["forward_flops"]):
        expect_pass(checks.check_forward_flops, candidate)


@pytest.mark.parametrize(
    "change, hint",
    [
        (dict(per_mac=1), "a multiply-add counts as 2 FLOPs"),
        (dict(products=0), "attention's two products are missing"),
        (dict(products=1), "only half of attention's products"),
        (dict(output=False), "output projection onto the vocabulary"),
        (dict(embedding=True), "the token embedding is a table lookup"),
        (dict(maps=3), "attention has four C x C maps"),
        (dict(ffn_matrices=1), "the feed-forward network has two matrices"),
        (dict(passes=3), "that is the training cost"),
    ],
)
def test_forward_flops_mistakes_are_named(change: dict, hint: str) -> None:
    candidate = functools.partial(_flops, **change)
    expect_hint(checks.check_forward_flops, candidate, hint, hidden=False)
    expect_named_alone(checks.check_forward_flops, candidate, hint)


def test_the_hidden_flop_counts_stay_exact_in_floats() -> None:
    for seed in MANY_SEEDS:
        draw._use_seed(seed)
        for sizes in checks._flop_hidden(draw.hidden_draw("forward_flops")):
            assert 3 * checks._flops(*sizes) < 2**53, sizes


def test_counting_flops_with_torchs_counter_or_the_reference_is_refused() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    def by_counter(V, C, L, f, T):
        with FlopCounterMode(display=False) as counter:
            torch.randn(T, C) @ torch.randn(C, f)
        return counter.get_total_flops()

    def by_reference(V, C, L, f, T):
        return scaling.forward_flops(TransformerConfig(V, 16, C, 1, L, f), T)

    def by_training(V, C, L, f, T):
        return scaling.training_flops(TransformerConfig(V, T, C, 1, L, f), T, T) // 3

    def by_model(V, C, L, f, T):
        layer = nn.Linear(C, f)
        return 2 * T * layer.in_features * layer.out_features

    for cheat in (by_counter, by_reference, by_training, by_model):
        expect_refused(checks.check_forward_flops, cheat)


# --- 3. Gradient accumulation -------------------------------------------------------------------


def _accumulate(zero="before", scaled=True, pieces="chunk", full=False, step=False):
    def accumulate_gradients(model, inputs, targets, n_micro):
        if zero == "before":
            model.zero_grad()
        if full:
            F.cross_entropy(model(inputs), targets).backward()
            return
        if pieces == "chunk":
            batches = zip(inputs.chunk(n_micro), targets.chunk(n_micro), strict=True)
        else:  # pieces of n_micro examples
            batches = zip(inputs.split(n_micro), targets.split(n_micro), strict=True)
        for x, y in batches:
            if zero == "inside":
                model.zero_grad()
            loss = F.cross_entropy(model(x), y)
            (loss / n_micro if scaled else loss).backward()
        if step:  # (by hand: torch.optim's first use imports torch._dynamo)
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad

    return accumulate_gradients


def test_accumulation_written_another_way_passes(solution) -> None:
    def by_slices(model, inputs, targets, n_micro):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        size = inputs.shape[0] // n_micro
        for start in range(0, inputs.shape[0], size):
            x, y = inputs[start : start + size], targets[start : start + size]
            loss = F.cross_entropy(model(x), y, reduction="sum") / inputs.shape[0]
            grads = torch.autograd.grad(loss, list(model.parameters()))
            for p, g in zip(model.parameters(), grads, strict=True):
                p.grad += g

    def sum_then_backward(model, inputs, targets, n_micro):  # the same gradients
        model.zero_grad(set_to_none=True)
        pairs = zip(inputs.chunk(n_micro), targets.chunk(n_micro), strict=True)
        losses = [F.cross_entropy(model(x), y) for x, y in pairs]
        (sum(losses) / n_micro).backward()

    for candidate in (by_slices, sum_then_backward, solution["accumulate_gradients"]):
        expect_pass(checks.check_accumulate_gradients, candidate)


@pytest.mark.parametrize(
    "candidate, hint",
    [
        (_accumulate(scaled=False), "divided by the number of micro-batches"),
        (_accumulate(zero="inside"), "zeroed inside the loop, so only the last micro-batch's"),
        (_accumulate(zero="inside", scaled=False), "must be divided by n_micro"),
        (_accumulate(zero="never"), "hold those of an earlier step: zero them"),
        (_accumulate(zero="never", scaled=False), "(zero them before accumulating), and"),
        (_accumulate(full=True), "the model ran once on the full batch"),
        (_accumulate(pieces="split"), "inputs.chunk(n_micro), not inputs.split(n_micro)"),
        (_accumulate(step=True), "take no optimizer step"),
    ],
)
def test_accumulation_mistakes_are_named(candidate, hint: str) -> None:
    expect_hint(checks.check_accumulate_gradients, candidate, hint)


@pytest.mark.parametrize(
    "candidate, hint",
    [
        (_accumulate(scaled=False), "divided by the number of micro-batches"),
        (_accumulate(zero="inside"), "zeroed inside the loop"),
        (_accumulate(zero="never"), "earlier step"),
        (_accumulate(full=True), "full batch"),
    ],
)
def test_the_worked_example_catches_the_main_accumulation_mistakes(candidate, hint) -> None:
    expect_hint(checks.check_accumulate_gradients, candidate, hint, hidden=False)


def test_the_hidden_accumulation_sizes_tell_the_mistakes_apart() -> None:
    for seed in MANY_SEEDS:
        draw._use_seed(seed)
        for _, B, k, _, _ in checks._accumulation_hidden(draw.hidden_draw("accumulate_gradients")):
            assert B % k == 0 and k >= 2 and B // k >= 2 and B // k != k


def test_the_recording_forward_is_handed_over_and_its_removal_shows() -> None:
    def unrecorded(model, inputs, targets, n_micro):
        del model.forward  # hide the calls from the check
        model.zero_grad()
        F.cross_entropy(model(inputs), targets).backward()

    expect_hint(checks.check_accumulate_gradients, unrecorded, "batches of sizes []")


def test_calling_forward_directly_counts_as_a_call() -> None:
    def by_forward(model, inputs, targets, n_micro):
        model.zero_grad()
        for x, y in zip(inputs.chunk(n_micro), targets.chunk(n_micro), strict=True):
            (F.cross_entropy(model.forward(x), y) * len(y) / len(targets)).backward()

    expect_pass(checks.check_accumulate_gradients, by_forward)


# --- 4. Fitting a power law ---------------------------------------------------------------------


def _fit(kind=""):
    def fit_power_law(n, loss):
        log = torch.log10 if kind == "log10_exp" else torch.log
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
        if kind == "raw":
            a = intercept
        elif kind == "exp10":
            a = 10**intercept
        else:
            a = intercept.exp()
        return (slope if kind == "sign" else -slope).item(), a.item()

    return fit_power_law


def test_power_law_written_another_way_passes(solution) -> None:
    def by_sums(n, loss):  # the normal equations in sums
        x, y = [math.log(v) for v in n.tolist()], [math.log(v) for v in loss.tolist()]
        m = len(x)
        sx, sy = sum(x), sum(y)
        sxy, sxx = sum(a * b for a, b in zip(x, y, strict=True)), sum(a * a for a in x)
        slope = (m * sxy - sx * sy) / (m * sxx - sx * sx)
        return -slope, math.exp((sy - slope * sx) / m)

    def by_numpy(n, loss):
        x, y = np.log(n.numpy()), np.log(loss.numpy())
        slope = np.cov(x, y, bias=True)[0, 1] / np.var(x)
        return -float(slope), float(np.exp(y.mean() - slope * x.mean()))

    def by_log10(n, loss):
        x, y = torch.log10(n), torch.log10(loss)
        xc = x - x.mean()
        slope = torch.dot(xc, y - y.mean()) / torch.dot(xc, xc)
        return -slope, 10 ** (y.mean() - slope * x.mean())  # one-element tensors

    for candidate in (by_sums, by_numpy, by_log10, solution["fit_power_law"]):
        expect_pass(checks.check_fit_power_law, candidate)


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("sign", "alpha has the wrong sign", True),
        ("raw", "a is the intercept itself", True),
        ("exp10", "a = 10^intercept", True),
        ("log10_exp", "the fit used log10 but a = exp(intercept)", True),
        ("no_logs", "the fit is on n and loss themselves", True),
        ("swapped", "the regression is of log(n) on log(loss)", True),
        ("uncentred", "subtract the means first", True),
    ],
)
def test_power_law_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    expect_hint(checks.check_fit_power_law, _fit(kind), hint)
    if visible:
        expect_hint(checks.check_fit_power_law, _fit(kind), hint, hidden=False)


def test_power_law_needs_a_pair() -> None:
    expect_hint(checks.check_fit_power_law, lambda n, loss: 0.1, "should return a pair", False)


def test_the_hidden_power_laws_are_noisy_enough_to_tell_the_regressions_apart() -> None:
    for seed in MANY_SEEDS:
        draw._use_seed(seed)
        for n, loss in checks._power_law_hidden(draw.hidden_draw("fit_power_law")):
            r = torch.corrcoef(torch.stack([n.log(), loss.log()]))[0, 1]
            assert 1 - r**2 >= 0.005
            right, swapped = checks._power_law(n, loss), checks._power_law(n, loss, "swapped")
            assert abs(swapped[0] - right[0]) > 1e-3 * abs(right[0])


def test_least_squares_by_a_library_is_refused() -> None:
    import scipy.stats

    polyfit = np.polyfit  # an alias made before the test

    def by_polyfit(n, loss):
        slope, intercept = polyfit(np.log(n.numpy()), np.log(loss.numpy()), 1)
        return -slope, math.exp(intercept)

    def by_polynomial(n, loss):
        line = np.polynomial.Polynomial.fit(np.log(n.numpy()), np.log(loss.numpy()), 1)
        intercept, slope = line.convert().coef
        return -slope, math.exp(intercept)

    def by_numpy_lstsq(n, loss):
        design = np.stack([np.log(n.numpy()), np.ones(len(n))], axis=1)
        (slope, intercept), *_ = np.linalg.lstsq(design, np.log(loss.numpy()), rcond=None)
        return -slope, math.exp(intercept)

    def by_torch_lstsq(n, loss):
        design = torch.stack([n.log(), torch.ones_like(n)], dim=1)
        slope, intercept = torch.linalg.lstsq(design, loss.log()[:, None]).solution[:, 0]
        return -slope.item(), intercept.exp().item()

    def by_pinv(n, loss):
        design = torch.stack([n.log(), torch.ones_like(n)], dim=1)
        slope, intercept = torch.linalg.pinv(design) @ loss.log()
        return -slope.item(), intercept.exp().item()

    def by_pinverse(n, loss):
        design = torch.stack([n.log(), torch.ones_like(n)], dim=1)
        slope, intercept = torch.pinverse(design) @ loss.log()
        return -slope.item(), intercept.exp().item()

    def by_linregress(n, loss):
        fit = scipy.stats.linregress(np.log(n.numpy()), np.log(loss.numpy()))
        return -fit.slope, math.exp(fit.intercept)

    def by_the_checks(n, loss):
        return checks._power_law(n, loss)

    for cheat in (by_polyfit, by_polynomial, by_numpy_lstsq, by_torch_lstsq, by_pinv,
                  by_pinverse, by_linregress, by_the_checks):  # fmt: skip
        expect_refused(checks.check_fit_power_law, cheat)


# --- 5. The KV-cache step -----------------------------------------------------------------------


def _kv(dim=2, scale="sqrt", softmax_dim=-1, new_first=False, attend="all"):
    def kv_attention_step(q, k_new, v_new, cache_k, cache_v):
        pair = lambda c, n: [n, c] if new_first else [c, n]  # noqa: E731
        keys = torch.cat(pair(cache_k, k_new), dim=dim)
        values = torch.cat(pair(cache_v, v_new), dim=dim)
        k, v = {"all": (keys, values), "cache": (cache_k, cache_v), "new": (k_new, v_new)}[attend]
        D = q.shape[-1]
        divisor = {"sqrt": math.sqrt(D), "none": 1.0, "D": D}[scale]
        scores = q @ k.transpose(-2, -1) / divisor
        return torch.softmax(scores, dim=softmax_dim) @ v, keys, values

    return kv_attention_step


def test_kv_step_written_another_way_passes(solution) -> None:
    def einsum(q, k_new, v_new, cache_k, cache_v):
        keys, values = torch.cat((cache_k, k_new), -2), torch.cat((cache_v, v_new), -2)
        scores = torch.einsum("bhqd,bhkd->bhqk", q, keys) * q.shape[-1] ** -0.5
        weights = scores.exp() / scores.exp().sum(-1, keepdim=True)
        return torch.einsum("bhqk,bhkd->bhqd", weights, values), keys, values

    def per_head(q, k_new, v_new, cache_k, cache_v):
        keys, values = torch.cat([cache_k, k_new], 2), torch.cat([cache_v, v_new], 2)
        out = torch.zeros_like(q)
        for b in range(q.shape[0]):
            for h in range(q.shape[1]):
                s = q[b, h] @ keys[b, h].T / math.sqrt(q.shape[-1])  # (1, t + 1)
                out[b, h] = torch.softmax(s - s.max(), dim=-1) @ values[b, h]
        return out, keys, values

    for candidate in (einsum, per_head, solution["kv_attention_step"]):
        expect_pass(checks.check_kv_attention_step, candidate)


@pytest.mark.parametrize(
    "candidate, hint",
    [
        (_kv(scale="none"), "the scores are not scaled"),
        (_kv(scale="D"), "the scores are divided by D"),
        (_kv(softmax_dim=-2), "the softmax runs over the wrong axis"),
        (_kv(softmax_dim=1), "the softmax runs over the heads"),
        (_kv(attend="cache"), "the new token does not attend to itself"),
        (_kv(attend="new"), "the query attends to the new key only"),
        (_kv(new_first=True), "was put in front of the cache"),
        (_kv(dim=0), "appended on dim 0"),
        (_kv(dim=1), "appended on dim 1"),
        (_kv(dim=-1), "appended on dim 3"),
    ],
)
def test_kv_mistakes_are_named(candidate, hint: str) -> None:
    expect_hint(checks.check_kv_attention_step, candidate, hint, hidden=False)
    expect_hint(checks.check_kv_attention_step, candidate, hint)


def test_a_kv_cache_of_one_position_appended_on_the_wrong_axis_is_named() -> None:
    """With t = 1 the cat works on any axis: the shape tells the mistake."""
    q, k_new, v_new, cache_k, cache_v = (
        torch.randn(2, 3, 1, 4, dtype=torch.float64) for _ in "12345"
    )

    def keys_on_heads(q, k_new, v_new, cache_k, cache_v):
        return torch.zeros_like(q), torch.cat([cache_k, k_new], 1), torch.cat([cache_v, v_new], 2)

    with Exercise("kv_attention_step", hidden=False) as ex, pytest.raises(ExerciseError) as error:
        checks._check_kv_case(ex, keys_on_heads, q, k_new, v_new, cache_k, cache_v)
    assert "appended on dim 1" in str(error.value)


def test_a_kv_step_that_changes_the_cache_fails() -> None:
    def in_place(q, k_new, v_new, cache_k, cache_v):
        out, keys, values = _kv()(q, k_new, v_new, cache_k, cache_v)
        cache_k.mul_(1.0).add_(1.0)
        return out, keys, values

    expect_hint(checks.check_kv_attention_step, in_place, "changed an input", hidden=False)


def test_attention_by_torch_or_tutorlib_is_refused() -> None:
    sdpa = F.scaled_dot_product_attention  # an alias made before the test

    def with_(attend):
        def kv_attention_step(q, k_new, v_new, cache_k, cache_v):
            keys, values = torch.cat([cache_k, k_new], 2), torch.cat([cache_v, v_new], 2)
            return attend(q, keys, values), keys, values

        return kv_attention_step

    cheats = [
        with_(sdpa),
        with_(torch._C._nn.scaled_dot_product_attention),
        with_(
            lambda q, k, v: torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)[0]
        ),
        with_(lambda q, k, v: torch.ops.aten._scaled_dot_product_attention_math(q, k, v)[0]),
        with_(attention.scaled_dot_product_attention),
        with_(functools.lru_cache(maxsize=None)(attention.scaled_dot_product_attention)),
        with_(runpy.run_path(attention.__file__)["scaled_dot_product_attention"]),
        with_(
            lambda q, k, v: checks._kv_step(
                q, k[:, :, -1:], v[:, :, -1:], k[:, :, :-1], v[:, :, :-1]
            )[0]
        ),  # fmt: skip
    ]
    for cheat in cheats:
        expect_refused(checks.check_kv_attention_step, cheat)


# --- 6. Per-channel int8 quantization -----------------------------------------------------------


def _quant(axis=1, qmax=127.0, rounding=torch.round, clamp=True, signed_max=False):
    def quantize_per_channel(w):
        if axis is None:
            scale = w.abs().max() / qmax
        elif signed_max:
            scale = w.amax(dim=axis, keepdim=True) / qmax
        else:
            scale = w.abs().amax(dim=axis, keepdim=True) / qmax
        q = rounding(w / scale)
        return (q.clamp(-127, 127) if clamp else q).to(torch.int8), scale

    return quantize_per_channel


def test_quantization_written_another_way_passes(solution) -> None:
    def by_multiplying(w):  # w * (127 / max) rounds alike away from the .5 boundaries
        inverse = 127.0 / w.abs().max(dim=1, keepdim=True).values
        q = torch.where(w >= 0, (w * inverse + 0.5).floor(), -((-w * inverse + 0.5).floor()))
        return q.clamp(-127, 127).to(torch.int8), (1 / inverse).float()

    def in_float64(w):
        scale = w.double().abs().amax(dim=-1, keepdim=True) / 127
        return torch.round(w.double() / scale).to(torch.int8), scale.float()

    for candidate in (by_multiplying, in_float64, solution["quantize_per_channel"]):
        expect_pass(checks.check_quantize_per_channel, candidate, seeds=MANY_SEEDS[:20])


@pytest.mark.parametrize(
    "candidate, hint",
    [
        (_quant(axis=None), "one scale for the whole matrix"),
        (_quant(axis=0), "one scale per input column"),
        (_quant(qmax=128.0), "the scale divides by 128: int8"),
        (_quant(qmax=128.0, clamp=False), "wrapped around to -128"),
        (_quant(rounding=torch.trunc), "the values are truncated"),
        (_quant(rounding=torch.floor), "rounded down (floor)"),
        (_quant(signed_max=True), "max(w), not the largest magnitude"),
        (lambda w: (_quant()(w)[0], 127 / w.abs().amax(1, keepdim=True)), "its inverse"),
    ],
)
def test_quantization_mistakes_are_named(candidate, hint: str) -> None:
    expect_hint(checks.check_quantize_per_channel, candidate, hint)


@pytest.mark.parametrize(
    "candidate, hint",
    [
        (_quant(axis=None), "one scale for the whole matrix"),
        (_quant(axis=0), "one scale per input column"),
        (_quant(rounding=torch.trunc), "the values are truncated"),
        (_quant(qmax=128.0, clamp=False), "wrapped around to -128"),
        (lambda w: (_quant()(w)[0], _quant()(w)[1].squeeze(1)), "should have shape (4, 1)"),
        (lambda w: (_quant()(w)[0].long(), _quant()(w)[1]), "q is int8"),
    ],
)
def test_the_worked_quantization_example_catches(candidate, hint: str) -> None:
    expect_hint(checks.check_quantize_per_channel, candidate, hint, hidden=False)


def test_the_hidden_weights_keep_away_from_rounding_boundaries() -> None:
    """No entry of w / scale lies within 0.02 of k + 1/2: every correct way of computing it
    (w * (127 / max), float64, round half away from zero) gives the same q."""
    for seed in MANY_SEEDS:
        draw._use_seed(seed)
        d = draw.hidden_draw("quantize_per_channel")
        for rows, cols, outliers in ((8, 9, True), (3, 4, False), (40, 5, True)):
            w = checks._quant_weight(d, rows, cols, outliers)
            scaled = (w.double() / (w.double().abs().amax(1, keepdim=True) / 127)).abs()
            assert ((scaled - scaled.floor() - 0.5).abs() > 0.015).all()


def test_quantization_by_torch_or_the_reference_is_refused() -> None:
    quantize = compression.quantize_int8  # an alias made before the test

    def by_torch(w):
        scale = w.abs().amax(dim=1) / 127
        zero = torch.zeros(w.shape[0], dtype=torch.long)
        q = torch.quantize_per_channel(w, scale.double(), zero, 0, torch.qint8)
        return q.int_repr(), scale[:, None]

    def by_fake_quantize(w):
        scale = w.abs().amax(dim=1) / 127
        zero = torch.zeros(w.shape[0], dtype=torch.int32)
        fake = torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)
        return (fake / scale[:, None]).round().to(torch.int8), scale[:, None]

    cheats = [
        by_torch,
        by_fake_quantize,
        lambda w: quantize(w, axis=0),
        lambda w: runpy.run_path(compression.__file__)["quantize_int8"](w, 0),
        lambda w: checks._quantize_variant(w, ""),
    ]
    for cheat in cheats:
        expect_refused(checks.check_quantize_per_channel, cheat)


# --- 7. Magnitude pruning -----------------------------------------------------------------------


def _prune(count="round", rank="abs", largest=False, inverted=False, amount_kept=False):
    def magnitude_mask(weight, amount):
        x = (1 - amount if amount_kept else amount) * weight.numel()
        k = {"round": round, "floor": math.floor, "int": int, "ceil": math.ceil}[count](x)
        values = weight.flatten() if rank == "signed" else weight.abs().flatten()
        keep = torch.ones(weight.numel(), dtype=torch.bool)
        if k:
            keep[torch.topk(values, k, largest=largest).indices] = False
        keep = keep.view(weight.shape)
        return ~keep if inverted else keep

    return magnitude_mask


def _by_kthvalue(j_of, strict: bool):
    """A threshold from torch.kthvalue(|w|, j) (the j-th smallest) with j = j_of(k, numel):
    keep |w| > threshold (strict) or |w| >= threshold."""

    def magnitude_mask(weight, amount):
        k = round(amount * weight.numel())
        if k == 0:
            return torch.ones_like(weight, dtype=torch.bool)
        j = j_of(k, weight.numel())
        threshold = weight.abs().flatten().kthvalue(j).values
        return weight.abs() > threshold if strict else weight.abs() >= threshold

    return magnitude_mask


def test_pruning_written_another_way_passes(solution) -> None:
    def by_sort(weight, amount):
        k = round(amount * weight.numel())
        order = weight.abs().flatten().argsort()
        keep = torch.ones(weight.numel(), dtype=torch.bool)
        keep[order[:k]] = False
        return keep.reshape(weight.shape)

    def by_ranks(weight, amount):
        ranks = weight.abs().flatten().argsort().argsort().reshape(weight.shape)
        return ranks >= round(amount * weight.numel())

    candidates = [by_sort, by_ranks, _by_kthvalue(lambda k, n: k, True), solution["magnitude_mask"]]
    for candidate in candidates:
        expect_pass(checks.check_magnitude_mask, candidate, seeds=MANY_SEEDS[:20])


@pytest.mark.parametrize(
    "candidate, hint",
    [
        (_prune(largest=True), "the largest weights were pruned"),
        (_prune(rank="signed"), "ranked by their signed value"),
        (_prune(inverted=True), "the mask is inverted"),
        (_prune(amount_kept=True), "`amount` is the fraction pruned, not the fraction kept"),
        (_prune(count="ceil"), "rounded up (math.ceil)"),
        (_by_kthvalue(lambda k, n: k, strict=False), "one weight too few is pruned"),
        (_by_kthvalue(lambda k, n: n - k, strict=False), "the threshold is counted from the wrong"),
        (
            _by_kthvalue(lambda k, n: n - k, strict=True),
            "torch.kthvalue(x, j) is the j-th smallest",
        ),
    ],
)
def test_pruning_mistakes_are_named(candidate, hint: str) -> None:
    expect_hint(
        checks.check_magnitude_mask, candidate, hint, seeds=HIDDEN_SEEDS + tuple(MANY_SEEDS)
    )


@pytest.mark.parametrize("count", ["floor", "int"])
def test_a_count_rounded_down_used_to_pass_and_is_named_now(count: str) -> None:
    """The worked example's count is a whole number (0.4 * 20), and so were the old hidden
    ones: floor and int() passed. Every hidden draw now has a count with a fractional part in
    [0.6, 0.9], where they prune one weight fewer than round."""
    candidate = _prune(count=count)
    checks.check_magnitude_mask(candidate, hidden=False)  # passes the worked example
    expect_hint(checks.check_magnitude_mask, candidate, "rounded down (math.floor, or int()",
                seeds=HIDDEN_SEEDS + tuple(MANY_SEEDS))  # fmt: skip


@pytest.mark.parametrize(
    "candidate, hint",
    [
        (_prune(largest=True), "the largest weights were pruned"),
        (_prune(rank="signed"), "ranked by their signed value"),
        (_prune(inverted=True), "the mask is inverted"),
        (_prune(amount_kept=True), "the fraction pruned, not the fraction kept"),
        (lambda w, a: _prune()(w, a).float(), "return a bool mask"),
    ],
)
def test_the_worked_pruning_example_catches(candidate, hint: str) -> None:
    expect_hint(checks.check_magnitude_mask, candidate, hint, hidden=False)


def test_the_hidden_amounts_separate_round_floor_and_ceil() -> None:
    for seed in MANY_SEEDS:
        draw._use_seed(seed)
        cases = checks._mask_hidden(draw.hidden_draw("magnitude_mask"))
        fractions = [amount * w.numel() % 1 for w, amount in cases[:2]]
        assert 0.1 <= fractions[0] <= 0.4 and 0.6 <= fractions[1] <= 0.9, fractions
        assert all(w.abs().unique().numel() == w.numel() for w, _ in cases)  # no ties


def test_pruning_by_torch_or_the_reference_is_refused() -> None:
    from torch.nn.utils import prune

    def by_prune(weight, amount):
        return prune.L1Unstructured(amount).compute_mask(weight, torch.ones_like(weight)).bool()

    def by_module(weight, amount):
        layer = nn.Linear(1, 1)
        layer.weight = nn.Parameter(weight.clone())
        prune.l1_unstructured(layer, "weight", amount)
        return layer.weight_mask.bool()

    def by_the_reference(weight, amount):
        layer = nn.Linear(1, 1)
        layer.weight = nn.Parameter(weight.clone())
        return compression.magnitude_prune(layer, amount)["weight"]

    cheats = [
        by_prune,
        by_module,
        by_the_reference,
        lambda w, a: checks._pruned(w, round(a * w.numel())),
    ]
    for cheat in cheats:
        expect_refused(checks.check_magnitude_mask, cheat)


# --- 8. Distillation ----------------------------------------------------------------------------


def _distill(kind=""):
    def distillation_loss(s, t, y, T, alpha):
        t = t if kind == "attached" else t.detach()
        axis = 0 if kind == "axis" else -1
        log_ps = torch.log_softmax(s if kind == "student" else s / T, dim=axis)
        log_pt = torch.log_softmax(t if kind == "teacher" else t / T, dim=axis)
        if kind == "reversed":
            terms = log_ps.exp() * (log_ps - log_pt)
        else:
            terms = log_pt.exp() * (log_pt - log_ps)
        kl = {"mean": terms.mean(), "sum": terms.sum()}.get(kind, terms.sum(-1).mean())
        factor = {"no_t2": 1, "t_once": T}.get(kind, T**2)
        hard = F.cross_entropy(s / T if kind == "hard_at_t" else s, y)
        if kind == "swapped":
            return (1 - alpha) * factor * kl + alpha * hard
        return alpha * factor * kl + (1 - alpha) * hard

    return distillation_loss


def test_distillation_written_another_way_passes(solution) -> None:
    def soft_cross_entropy(s, t, y, T, alpha):  # KL = cross-entropy - the teacher's entropy
        with torch.no_grad():
            p = torch.softmax(t / T, dim=1)
            entropy = -(p * p.log()).sum(1).mean()
        kl = F.cross_entropy(s / T, p) - entropy
        return alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y)

    def xlogy(s, t, y, T, alpha):
        p = torch.softmax(t.detach() / T, -1)
        kl = (torch.xlogy(p, p) - p * torch.log_softmax(s / T, -1)).sum() / s.shape[0]
        hard = -torch.log_softmax(s, -1).gather(1, y[:, None]).mean()
        return torch.lerp(hard, T**2 * kl, alpha)

    for candidate in (soft_cross_entropy, xlogy, solution["distillation_loss"]):
        expect_pass(checks.check_distillation_loss, candidate)


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("no_t2", "not multiplied by T^2", True),
        ("t_once", "multiplied by T, not T^2", True),
        ("reversed", "the KL divergence is reversed", True),
        ("teacher", "the teacher's logits must be divided by the temperature", True),
        ("student", "the student's logits must be divided by the temperature", True),
        ("hard_at_t", "uses the student's plain logits", True),
        ("swapped", "alpha weighs the soft (teacher) term", False),  # alpha = 1/2 in the example
        ("mean", "averaged over all N x V entries", True),
        ("sum", "summed over the rows as well", True),
        ("axis", "the softmax runs over the wrong axis (the batch, dim 0)", True),
    ],
)
def test_distillation_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    expect_named_alone(checks.check_distillation_loss, _distill(kind), hint)
    if visible:
        expect_hint(checks.check_distillation_loss, _distill(kind), hint, hidden=False)


def test_a_gradient_into_the_teacher_is_refused() -> None:
    expect_hint(checks.check_distillation_loss, _distill("attached"), "detach its logits")


def test_the_student_gradient_is_checked() -> None:
    def detached_student(s, t, y, T, alpha):
        return _distill()(s.detach(), t, y, T, alpha)

    expect_hint(checks.check_distillation_loss, detached_student, "No gradient flows")


def test_kl_div_and_the_reference_are_refused() -> None:
    kl_div = F.kl_div  # an alias made before the test

    def with_(divergence):
        def distillation_loss(s, t, y, T, alpha):
            kl = divergence(torch.log_softmax(s / T, -1), torch.log_softmax(t.detach() / T, -1))
            return alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y)

        return distillation_loss

    cheats = [
        with_(lambda a, b: kl_div(a, b, log_target=True, reduction="batchmean")),
        with_(lambda a, b: torch.kl_div(a, b, log_target=True).sum() / a.shape[0]),
        with_(lambda a, b: torch.ops.aten.kl_div(a, b, 0, True) / a.shape[0]),
        with_(lambda a, b: torch._C._VariableFunctions.kl_div(a, b, 0, True) / a.shape[0]),
        with_(lambda a, b: nn.KLDivLoss(reduction="batchmean", log_target=True)(a, b)),
        lambda s, t, y, T, alpha: compression.distillation_loss(s, t, y, T, alpha),
        lambda *args: functools.lru_cache(maxsize=None)(compression.distillation_loss)(*args),
        lambda *args: runpy.run_path(compression.__file__)["distillation_loss"](*args),
        lambda s, t, y, T, alpha: checks._distill_variant(s, t, y, T, alpha, ""),
    ]
    for cheat in cheats:
        expect_refused(checks.check_distillation_loss, cheat)
