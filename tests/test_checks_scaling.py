"""The Chapter 4 checks: the solutions pass, the likely mistakes are named, and the reference or
the built-in cannot do the learner's work."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import expect_hint
from tests.grading import solution_namespace
from tutorlib import compression, scaling
from tutorlib.checks import scaling as checks
from tutorlib.models import TransformerConfig


@pytest.fixture(scope="module")
def solution() -> dict:
    return solution_namespace("04_scaling")


CHECKS = [
    ("parameter_count", checks.check_parameter_count),
    ("forward_flops", checks.check_forward_flops),
    ("accumulate_gradients", checks.check_accumulate_gradients),
    ("fit_power_law", checks.check_fit_power_law),
    ("kv_attention_step", checks.check_kv_attention_step),
    ("quantize_per_channel", checks.check_quantize_per_channel),
    ("magnitude_mask", checks.check_magnitude_mask),
    ("distillation_loss", checks.check_distillation_loss),
]


@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize("name, check", CHECKS)
def test_solutions_pass(solution, name, check, hidden, capsys) -> None:
    check(solution[name], hidden=hidden)
    assert capsys.readouterr().out.startswith("OK:")


@pytest.mark.parametrize("name, check", CHECKS)
def test_unimplemented_says_so(name, check) -> None:
    def stub(*args):
        raise NotImplementedError()

    expect_hint(check, stub, "not implemented yet", hidden=False)


# --- counting ----------------------------------------------------------------------------------


def _count(no_biases=False, no_final=False, untied=False):
    def parameter_count(V, ctx, C, L, d_ff):
        biases = 0 if no_biases else 4 * C + d_ff + C
        layer = 4 * C * C + 2 * C * d_ff + biases + 4 * C
        return V * C * (2 if untied else 1) + ctx * C + L * layer + (0 if no_final else 2 * C)

    return parameter_count


@pytest.mark.parametrize(
    "candidate, hint",
    [
        (_count(no_biases=True), "biases are missing"),
        (_count(no_final=True), "final layer norm"),
        (_count(untied=True), "tied to the token embedding"),
    ],
)
def test_parameter_count_mistakes(candidate, hint) -> None:
    expect_hint(checks.check_parameter_count, candidate, hint, hidden=False)


def test_parameter_count_cannot_build_the_model_or_call_the_reference() -> None:
    def by_reference(V, ctx, C, L, d_ff):
        config = TransformerConfig(V, ctx, C, 1, L, d_ff, norm_first=True, positional="learned")
        return scaling.parameter_count(config)

    expect_hint(checks.check_parameter_count, by_reference, "Not allowed", hidden=False)

    def by_counting(V, ctx, C, L, d_ff):
        config = TransformerConfig(V, ctx, C, 1, L, d_ff, norm_first=True, positional="learned")
        model = __import__("tutorlib.models").models.DecoderOnly(config)
        return sum(p.numel() for p in model.parameters())

    expect_hint(checks.check_parameter_count, by_counting, "Not allowed", hidden=True)


def _flops(half=False, attention=True):
    def forward_flops(V, C, L, d_ff, T):
        per_layer = 8 * T * C * C + 4 * T * C * d_ff + (4 * T * T * C if attention else 0)
        total = L * per_layer + 2 * T * V * C
        return total // 2 if half else total

    return forward_flops


def test_forward_flops_mistakes() -> None:
    expect_hint(checks.check_forward_flops, _flops(half=True), "2 FLOPs", hidden=False)
    expect_hint(checks.check_forward_flops, _flops(attention=False), "two products", False)
    expect_hint(checks.check_forward_flops, lambda *a: 3 * _flops()(*a), "training cost", False)


# --- gradient accumulation ---------------------------------------------------------------------


def test_accumulation_mistakes() -> None:
    def unscaled(model, inputs, targets, n_micro):
        model.zero_grad()
        for x, y in zip(inputs.chunk(n_micro), targets.chunk(n_micro), strict=True):
            F.cross_entropy(model(x), y).backward()

    def zeroed_inside(model, inputs, targets, n_micro):
        for x, y in zip(inputs.chunk(n_micro), targets.chunk(n_micro), strict=True):
            model.zero_grad()
            (F.cross_entropy(model(x), y) / n_micro).backward()

    def not_zeroed(model, inputs, targets, n_micro):
        for x, y in zip(inputs.chunk(n_micro), targets.chunk(n_micro), strict=True):
            (F.cross_entropy(model(x), y) / n_micro).backward()

    def full_batch(model, inputs, targets, n_micro):
        model.zero_grad()
        F.cross_entropy(model(inputs), targets).backward()

    expect_hint(checks.check_accumulate_gradients, unscaled, "divided by the number", False)
    expect_hint(checks.check_accumulate_gradients, zeroed_inside, "zeroed inside the loop", False)
    expect_hint(checks.check_accumulate_gradients, not_zeroed, "earlier step", False)
    expect_hint(checks.check_accumulate_gradients, full_batch, "micro-batches of", False)


# --- power law ---------------------------------------------------------------------------------


def _fit(sign=1, exp10=False, swapped=False):
    def fit_power_law(n, loss):
        x, y = n.log(), loss.log()
        if swapped:
            x, y = y, x
        slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
        intercept = y.mean() - slope * x.mean()
        if swapped:
            slope, intercept = 1 / slope, -intercept / slope
        a = 10**intercept if exp10 else intercept.exp()
        return -sign * slope.item(), a.item()

    return fit_power_law


def test_power_law_mistakes_and_blocked_polyfit() -> None:
    expect_hint(checks.check_fit_power_law, _fit(sign=-1), "wrong sign", False)
    expect_hint(checks.check_fit_power_law, _fit(exp10=True), "10^intercept", False)
    expect_hint(checks.check_fit_power_law, _fit(swapped=True), "regression is of log(n)", False)

    def by_polyfit(n, loss):
        slope, intercept = np.polyfit(np.log(n.numpy()), np.log(loss.numpy()), 1)
        return -slope, math.exp(intercept)

    expect_hint(checks.check_fit_power_law, by_polyfit, "Not allowed", False)


# --- KV cache ----------------------------------------------------------------------------------


def _kv(dim=2, scale=True, softmax_dim=-1, new_first=False, include_new=True):
    def kv_attention_step(q, k_new, v_new, cache_k, cache_v):
        pair = lambda c, n: [n, c] if new_first else [c, n]  # noqa: E731
        keys = torch.cat(pair(cache_k, k_new), dim=dim)
        values = torch.cat(pair(cache_v, v_new), dim=dim)
        k, v = (keys, values) if include_new else (cache_k, cache_v)
        scores = q @ k.transpose(-2, -1) / (math.sqrt(q.shape[-1]) if scale else 1)
        return torch.softmax(scores, dim=softmax_dim) @ v, keys, values

    return kv_attention_step


@pytest.mark.parametrize(
    "candidate, hint, hidden",
    [
        (_kv(scale=False), "not scaled", False),
        (_kv(softmax_dim=-2), "wrong axis", False),
        (_kv(new_first=True), "in front of the cache", False),
        (_kv(include_new=False), "does not attend to itself", False),
        (_kv(dim=1), "appended on dim 1", False),
        (_kv(dim=-1), "appended on dim 3", False),
    ],
)
def test_kv_mistakes(candidate, hint, hidden) -> None:
    expect_hint(checks.check_kv_attention_step, candidate, hint, hidden=hidden)


def test_kv_cannot_call_sdpa() -> None:
    def by_sdpa(q, k_new, v_new, cache_k, cache_v):
        keys, values = torch.cat([cache_k, k_new], 2), torch.cat([cache_v, v_new], 2)
        return F.scaled_dot_product_attention(q, keys, values), keys, values

    expect_hint(checks.check_kv_attention_step, by_sdpa, "Not allowed", hidden=False)


# --- quantization, pruning, distillation -------------------------------------------------------


def _quant(axis=1, qmax=127.0, rounding=torch.round):
    def quantize_per_channel(w):
        if axis is None:
            scale = (w.abs().max() / qmax).expand(w.shape[0], 1)
        else:
            scale = w.abs().amax(dim=axis, keepdim=True) / qmax
        return rounding(w / scale).clamp(-127, 127).to(torch.int8), scale

    return quantize_per_channel


@pytest.mark.parametrize(
    "candidate, hint",
    [
        (_quant(axis=None), "per-tensor"),
        (_quant(axis=0), "per input column"),
        (_quant(qmax=128.0), "divides by 128"),
        (_quant(rounding=torch.trunc), "truncated"),
    ],
)
def test_quantization_mistakes(candidate, hint) -> None:
    expect_hint(checks.check_quantize_per_channel, candidate, hint, hidden=False)


def test_quantization_cannot_call_the_reference() -> None:
    def by_reference(w):
        return compression.quantize_int8(w, axis=0)

    expect_hint(checks.check_quantize_per_channel, by_reference, "Not allowed", hidden=False)


def _prune(largest=False, signed=False, inverted=False):
    def magnitude_mask(weight, amount):
        k = round(amount * weight.numel())
        values = weight.flatten() if signed else weight.abs().flatten()
        keep = torch.ones(weight.numel(), dtype=torch.bool)
        if k:
            keep[torch.topk(values, k, largest=largest).indices] = False
        keep = keep.view(weight.shape)
        return ~keep if inverted else keep

    return magnitude_mask


@pytest.mark.parametrize(
    "candidate, hint",
    [
        (_prune(largest=True), "largest weights were pruned"),
        (_prune(signed=True), "signed value"),
        (_prune(inverted=True), "inverted"),
    ],
)
def test_pruning_mistakes(candidate, hint) -> None:
    expect_hint(checks.check_magnitude_mask, candidate, hint, hidden=False)


def _distill(t_power=2, reversed_kl=False, detach=True):
    def distillation_loss(s, t, y, T, alpha):
        t = t.detach() if detach else t
        log_ps, log_pt = torch.log_softmax(s / T, -1), torch.log_softmax(t / T, -1)
        p, log_p, log_q = (
            (log_ps.exp(), log_ps, log_pt) if reversed_kl else (log_pt.exp(), log_pt, log_ps)
        )
        kl = (p * (log_p - log_q)).sum(-1).mean()
        return alpha * T**t_power * kl + (1 - alpha) * F.cross_entropy(s, y)

    return distillation_loss


@pytest.mark.parametrize(
    "candidate, hint, hidden",
    [
        (_distill(t_power=0), "not multiplied by T^2", False),
        (_distill(t_power=1), "multiplied by T, not T^2", False),
        (_distill(reversed_kl=True), "reversed", False),
        (_distill(detach=False), "detach", True),
    ],
)
def test_distillation_mistakes(candidate, hint, hidden) -> None:
    expect_hint(checks.check_distillation_loss, candidate, hint, hidden=hidden)


def test_distillation_cannot_call_kl_div() -> None:
    def by_kl_div(s, t, y, T, alpha):
        kl = F.kl_div(
            torch.log_softmax(s / T, -1),
            torch.log_softmax(t / T, -1),
            log_target=True,
            reduction="batchmean",
        )
        return alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y)

    expect_hint(checks.check_distillation_loss, by_kl_div, "Not allowed", hidden=False)
