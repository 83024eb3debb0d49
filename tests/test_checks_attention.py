"""The Chapter 2 checks: the solutions pass, the required mistakes are named, and the built-ins
or the reference cannot do the learner's work."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import expect_hint
from tests.grading import solution_namespace
from tutorlib import attention as reference
from tutorlib.checks import attention as checks


@pytest.fixture(scope="module")
def solution() -> dict:
    return solution_namespace("02_attention")


CHECKS = [
    ("attention", checks.check_attention),
    ("causal_mask", checks.check_causal_mask),
    ("sliding_window_mask", checks.check_sliding_window_mask),
    ("combine_masks", checks.check_combine_masks),
    ("split_heads", checks.check_split_heads),
    ("merge_heads", checks.check_merge_heads),
    ("multi_head_attention", checks.check_multi_head_attention),
    ("linear_attention", checks.check_linear_attention),
]


@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize("name, check", CHECKS)
def test_solutions_pass(solution, name, check, hidden, capsys) -> None:
    check(solution[name], hidden=hidden)
    assert capsys.readouterr().out.startswith("OK:")


def _attention(scale=True, axis=-1, mask_after=False, inverted=False):
    def attention(q, k, v, mask=None):
        scores = q @ k.transpose(-2, -1) / (math.sqrt(q.shape[-1]) if scale else 1.0)
        if mask is not None and not mask_after:
            scores = scores.masked_fill(mask if inverted else ~mask, float("-inf"))
        weights = torch.softmax(scores, dim=axis)
        if mask is not None and mask_after:
            weights = weights.masked_fill(~mask, 0.0)
        return weights @ v, weights

    return attention


@pytest.mark.parametrize(
    "candidate, hint, hidden",
    [
        (_attention(scale=False), "not divided by sqrt(d_k)", False),
        (_attention(axis=-2), "softmax over the wrong axis", False),
        (_attention(mask_after=True), "mask is applied after the softmax", True),
        (_attention(inverted=True), "mask is inverted", True),
    ],
)
def test_attention_mistakes_are_named(candidate, hint, hidden) -> None:
    expect_hint(checks.check_attention, candidate, hint, hidden)


def _window(T: int, w: int, causal: bool = True) -> torch.Tensor:
    offset = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    return ((offset >= 0) & (offset < w)) if causal else (offset.abs() < w)


def test_mask_mistakes_are_named() -> None:
    expect_hint(
        checks.check_causal_mask,
        lambda T: torch.ones(T, T, dtype=torch.bool).triu(),
        "inverted or transposed",
    )
    expect_hint(
        checks.check_causal_mask,
        lambda T: torch.ones(T, T, dtype=torch.bool).tril(-1),
        "diagonal is missing",
    )
    expect_hint(checks.check_causal_mask, lambda T: torch.ones(T, T).tril(), "boolean")
    expect_hint(
        checks.check_sliding_window_mask,
        lambda T, w: _window(T, w + 1),
        "off by one",
    )
    expect_hint(
        checks.check_sliding_window_mask,
        lambda T, w: _window(T, w, causal=False),
        "causal",
    )
    expect_hint(checks.check_combine_masks, lambda a, p: a | p[:, None, None, :], "AND")
    expect_hint(checks.check_combine_masks, lambda a, p: a & p[:, None, :], "head axis")


def test_head_mistakes_are_named() -> None:
    def scrambled_split(x, H):
        B, T, C = x.shape
        return x.reshape(B, H, T, C // H)

    def wrong_order_merge(x):
        B, H, T, D = x.shape
        return x.reshape(B, T, H * D)

    expect_hint(checks.check_split_heads, scrambled_split, "scrambled")
    expect_hint(checks.check_merge_heads, wrong_order_merge, "heads merged in the wrong order")


def test_multi_head_mistakes_are_named(solution) -> None:
    split, merge = solution["split_heads"], solution["merge_heads"]

    def wrong_merge(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
        q, k, v = (split(x @ w.T, n_heads) for x, w in ((x_q, w_q), (x_kv, w_k), (x_kv, w_v)))
        heads = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        B, H, T, D = heads.shape
        return heads.reshape(B, T, H * D) @ w_o.T

    def no_out_proj(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
        q, k, v = (split(x @ w.T, n_heads) for x, w in ((x_q, w_q), (x_kv, w_k), (x_kv, w_v)))
        return merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))

    expect_hint(checks.check_multi_head_attention, wrong_merge, "heads merged in the wrong order")
    expect_hint(checks.check_multi_head_attention, no_out_proj, "output projection W^O is missing")


def test_linear_attention_mistake_is_named() -> None:
    def no_normalizer(q, k, v):
        return (F.elu(q) + 1) @ ((F.elu(k) + 1).transpose(-2, -1) @ v)

    expect_hint(checks.check_linear_attention, no_normalizer, "normalizer is missing")


def test_builtins_and_reference_are_refused() -> None:
    cheats = [
        lambda q, k, v, mask=None: (F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None),
        lambda q, k, v, mask=None: reference.scaled_dot_product_attention(
            q, k, v, mask, need_weights=True
        ),
    ]
    for cheat in cheats:
        expect_hint(checks.check_attention, cheat, "Not allowed in this exercise", hidden=False)
    expect_hint(
        checks.check_causal_mask, lambda T: reference.causal_mask(T), "Not allowed", hidden=False
    )
    expect_hint(
        checks.check_linear_attention,
        lambda q, k, v: reference.linear_attention(q, k, v),
        "Not allowed",
    )

    def mha_cheat(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
        module = torch.nn.MultiheadAttention(
            x_q.shape[-1], n_heads, bias=False, batch_first=True
        ).double()
        return module(x_q, x_kv, x_kv)[0]

    expect_hint(checks.check_multi_head_attention, mha_cheat, "Not allowed", hidden=False)
    # everything works again afterwards
    q = torch.randn(1, 3, 4)
    torch.testing.assert_close(
        reference.scaled_dot_product_attention(q, q, q), F.scaled_dot_product_attention(q, q, q)
    )
