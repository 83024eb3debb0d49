"""The Chapter 2 checks: right answers written differently pass, every likely mistake gets its
own hint whatever the hidden tests draw, the hidden draws hold the cases that tell the mistakes
apart, and neither the reference nor any torch operator that computes the same thing can stand
in for the learner's code (nor can linear attention build the T x S matrix)."""

from __future__ import annotations

import functools
import importlib.util
import math
import runpy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import expect_hint, expect_pass
from tests.grading import solution_namespace
from tutorlib import attention as reference
from tutorlib.checks import Draw
from tutorlib.checks import attention as checks

NOT_ALLOWED = "Not allowed in this exercise"
SEEDS = range(100)  # draws whose properties are checked (cheap: no learner code runs)


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


@pytest.mark.parametrize("name, check", CHECKS)
def test_the_solutions_pass(solution, name, check, capsys) -> None:
    expect_pass(check, solution[name])
    assert capsys.readouterr().out.startswith("OK:")


def _draws(seed: int) -> Draw:
    return Draw(seed)


# --- 1. Scaled dot-product attention ------------------------------------------------------------


def _attention(scale="sqrt_d", axis=-1, mask_after=False, inverted=False, weights="probs"):
    def attention(q, k, v, mask=None):
        width = {"sqrt_d": math.sqrt(q.shape[-1]), "d": q.shape[-1], "none": 1.0}.get(
            scale, math.sqrt(v.shape[-1])
        )
        scores = q @ k.transpose(-2, -1) / width
        masked = scores
        if mask is not None and not mask_after:
            masked = scores.masked_fill(mask if inverted else ~mask, float("-inf"))
        probs = torch.softmax(masked, dim=axis)
        if mask is not None and mask_after:
            probs = probs.masked_fill(~mask, 0.0)
        returned = {"probs": probs, "scores": scores, "unmasked": torch.softmax(scores, -1)}
        return probs @ v, returned[weights]

    return attention


def test_attention_written_another_way_passes(solution) -> None:
    def einsum_where(q, k, v, mask=None):
        scores = torch.einsum("...td,...sd->...ts", q, k) * q.shape[-1] ** -0.5
        if mask is not None:
            scores = torch.where(mask, scores, torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=-1)
        return torch.einsum("...ts,...se->...te", weights, v), weights

    def by_hand(q, k, v, mask=None):  # exp / sum with the max subtracted; an additive mask
        scores = torch.matmul(q / math.sqrt(q.shape[-1]), k.mT)
        if mask is not None:
            scores = scores + torch.zeros_like(scores).masked_fill(~mask, -1e30)
        e = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
        weights = e / e.sum(dim=-1, keepdim=True)
        return weights @ v, weights

    for candidate in (einsum_where, by_hand, solution["attention"]):
        expect_pass(checks.check_attention, candidate)


@pytest.mark.parametrize(
    "candidate, hint, visible",
    [
        (_attention(scale="none"), "not divided by sqrt(d_k)", True),
        (_attention(scale="d"), "not by d_k", True),
        (_attention(scale="sqrt_dv"), "square root of the value width", False),
        (_attention(axis=-2), "softmax over the wrong axis", True),
        (_attention(mask_after=True), "mask is applied after the softmax", False),
        (_attention(inverted=True), "mask is inverted", False),
        (_attention(weights="scores"), "scores before the softmax", True),
        (_attention(weights="unmasked"), "weights returned are not masked", False),
    ],
)
def test_attention_mistakes_are_named(candidate, hint: str, visible: bool) -> None:
    expect_hint(checks.check_attention, candidate, hint)
    if visible:
        expect_hint(checks.check_attention, candidate, hint, hidden=False)


def test_attention_on_any_leading_dimensions() -> None:
    def batch_axes_only(q, k, v, mask=None):  # k.transpose(1, 2): right for (B, T, D) only
        scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.softmax(-1)
        return weights @ v, weights

    checks.check_attention(batch_axes_only)  # the worked examples are (B, T, D)
    expect_hint(checks.check_attention, batch_axes_only, "any number of leading dimensions")


def test_attention_draws_separate_the_mistakes() -> None:
    """The first hidden case: D != Dv (and Dv neither 1 nor D^2, where sqrt(Dv) would be a
    scale of another mistake), T != S, a mask that is not causal, masks some key of every
    query and leaves every query and every key one; every later mask keeps a key per query,
    and a padding mask and a causal mask are among them."""
    for seed in SEEDS:
        cases = checks._attention_hidden(_draws(seed))
        q, k, v, mask = cases[0]
        (T, D), (S, Dv) = q.shape[-2:], v.shape[-2:]
        assert T != S and Dv not in (1, D, D * D) and T >= 2 and D >= 2
        assert mask.any(-1).all() and (~mask).any(-1).all() and mask.any(-2).all()
        assert not torch.equal(mask, torch.ones(T, S, dtype=torch.bool).tril())
        for q, k, v, mask in cases:
            assert q.shape[-1] != v.shape[-1]
            if mask is not None:
                assert mask.expand(*q.shape[:-1], k.shape[-2]).any(-1).all()
        shapes = [None if m is None else m.shape for *_, m in cases]
        assert shapes[1][1:3] == (1, 1) and not cases[1][3].all()  # (B, 1, 1, S) padding
        assert torch.equal(cases[3][3], torch.ones_like(cases[3][3]).tril())


def test_attention_cheats_are_refused() -> None:
    sdpa = F.scaled_dot_product_attention  # an alias made before the test
    copy = runpy.run_path(reference.__file__)["scaled_dot_product_attention"]
    spec = importlib.util.spec_from_file_location("another_attention", reference.__file__)
    another = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(another)
    cached = functools.lru_cache(maxsize=None)(reference.scaled_dot_product_attention)
    partial = functools.partial(reference.scaled_dot_product_attention, need_weights=True)

    def weights_by_hand(q, k, v, mask):
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        scores = scores if mask is None else scores.masked_fill(~mask, float("-inf"))
        return scores.softmax(-1)

    cheats = [
        lambda q, k, v, mask=None: (sdpa(q, k, v, attn_mask=mask), weights_by_hand(q, k, v, mask)),
        lambda q, k, v, mask=None: (
            torch._C._nn.scaled_dot_product_attention(q, k, v, attn_mask=mask),
            weights_by_hand(q, k, v, mask),
        ),
        lambda q, k, v, mask=None: torch.ops.aten._scaled_dot_product_attention_math(
            q, k, v, attn_mask=mask
        ),
        lambda q, k, v, mask=None: torch._scaled_dot_product_attention_math(
            q, k, v, attn_mask=mask
        ),
        lambda q, k, v, mask=None: reference.scaled_dot_product_attention(
            q, k, v, mask, need_weights=True
        ),
        lambda q, k, v, mask=None: reference._attention_written_out(
            q, k, v, mask, 0.0, q.shape[-1] ** -0.5
        ),
        lambda q, k, v, mask=None: copy(q, k, v, mask, need_weights=True),
        lambda q, k, v, mask=None: another.scaled_dot_product_attention(
            q, k, v, mask, need_weights=True
        ),
        lambda q, k, v, mask=None: cached(q, k, v, mask, need_weights=True),
        lambda q, k, v, mask=None: partial(q, k, v, mask),
        lambda q, k, v, mask=None: checks._sdpa(q, k, v, mask, need_weights=True),
        lambda q, k, v, mask=None: checks._attention_variant(q, k, v, mask, ""),
    ]
    for cheat in cheats:
        expect_hint(checks.check_attention, cheat, NOT_ALLOWED, hidden=False)
        expect_hint(checks.check_attention, cheat, NOT_ALLOWED, seeds=["s"])
    # the reference still works outside the check
    q = torch.randn(1, 3, 4)
    torch.testing.assert_close(
        reference.scaled_dot_product_attention(q, q, q), F.scaled_dot_product_attention(q, q, q)
    )


def test_attention_through_torchs_multi_head_module_is_refused() -> None:
    def module(q, k, v, mask=None):  # one head, identity projections, scaled by sqrt(D)
        *lead, T, D = q.shape
        mha = nn.MultiheadAttention(D, 1, bias=False, batch_first=True).to(q.dtype)
        mha.in_proj_weight.data = torch.eye(D, dtype=q.dtype).repeat(3, 1)
        mha.out_proj.weight.data = torch.eye(D, dtype=q.dtype)
        out, weights = mha(q.reshape(-1, T, D), k.reshape(-1, k.shape[-2], D), v)
        return out.reshape(q.shape), weights

    expect_hint(checks.check_attention, module, NOT_ALLOWED, hidden=False)


def test_flex_attention_is_refused_once_loaded() -> None:
    from torch.nn.attention.flex_attention import flex_attention  # imports torch._dynamo

    def flex(q, k, v, mask=None):
        return flex_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0))[0], None

    expect_hint(checks.check_attention, flex, NOT_ALLOWED, hidden=False)


# --- 2, 3, 4. Masks -----------------------------------------------------------------------------


def _window(T: int, low: int, high: int) -> torch.Tensor:
    """True where low <= t - s <= high (the learner's way of writing a band)."""
    offset = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    return (offset >= low) & (offset <= high)


def test_masks_written_another_way_pass(solution) -> None:
    def causal_by_comparison(T):
        return torch.arange(T).unsqueeze(1) >= torch.arange(T).unsqueeze(0)

    def causal_by_loops(T):
        mask = torch.zeros(T, T, dtype=torch.bool)
        for t in range(T):
            mask[t, : t + 1] = True
        return mask

    def window_from_triangles(T, window):
        ones = torch.ones(T, T, dtype=torch.bool)
        return ones.tril() & ~ones.tril(-window)

    def combine_with_where(attn_mask, padding_mask):
        keys = padding_mask.unsqueeze(1).unsqueeze(2)  # (B, 1, 1, S)
        return torch.where(keys, attn_mask, torch.zeros_like(attn_mask))

    def combine_logical_and(attn_mask, padding_mask):
        return torch.logical_and(attn_mask[None, None], padding_mask[:, None, None])

    expect_pass(checks.check_causal_mask, causal_by_comparison)
    expect_pass(checks.check_causal_mask, causal_by_loops)
    expect_pass(checks.check_sliding_window_mask, window_from_triangles)
    expect_pass(checks.check_combine_masks, combine_with_where)
    expect_pass(checks.check_combine_masks, combine_logical_and)


@pytest.mark.parametrize(
    "candidate, hint",
    [
        (lambda T: torch.ones(T, T, dtype=torch.bool).triu(), "transposed (torch.triu)"),
        (lambda T: torch.ones(T, T, dtype=torch.bool).tril(-1), "diagonal is missing"),
        (lambda T: ~torch.ones(T, T, dtype=torch.bool).tril(), "mask is inverted"),
        (lambda T: torch.ones(T, T, dtype=torch.bool).tril(1), "not 0..t+1"),
        (lambda T: torch.ones(T, T).tril(), "a mask is boolean"),
    ],
)
def test_causal_mask_mistakes_are_named(candidate, hint: str) -> None:
    expect_hint(checks.check_causal_mask, candidate, hint)
    expect_hint(checks.check_causal_mask, candidate, hint, hidden=False)


@pytest.mark.parametrize(
    "candidate, hint",
    [
        (lambda T, w: _window(T, 0, w), "one too many"),
        (lambda T, w: _window(T, 0, w - 2), "one too few"),
        (lambda T, w: _window(T, 1, w), "leaves out t itself"),
        (lambda T, w: _window(T, 1 - w, w - 1), "the window must be causal"),
        (lambda T, w: _window(T, 1 - w, 0), "the window looks ahead"),
        (lambda T, w: ~_window(T, 0, w - 1), "mask is inverted"),
        (lambda T, w: _window(T, 0, w - 1).long(), "a mask is boolean"),
    ],
)
def test_sliding_window_mistakes_are_named(candidate, hint: str) -> None:
    expect_hint(checks.check_sliding_window_mask, candidate, hint)
    expect_hint(checks.check_sliding_window_mask, candidate, hint, hidden=False)


@pytest.mark.parametrize(
    "candidate, hint, visible",
    [
        (lambda a, p: a | p[:, None, None, :], "combine with AND", True),
        (lambda a, p: a & p[:, None, :, None], "over the queries, not along them", True),
        (lambda a, p: a & p[:, None, :], "keep a head axis", True),
        (lambda a, p: a.expand(p.shape[0], 1, *a.shape), "padding mask is ignored", True),
        (lambda a, p: a & ~p[:, None, None, :], "not inverted", True),
        (lambda a, p: (a & p[:, None, None, :]).float(), "a mask is boolean", True),
    ],
)
def test_combine_masks_mistakes_are_named(candidate, hint: str, visible: bool) -> None:
    expect_hint(checks.check_combine_masks, candidate, hint)
    if visible:
        expect_hint(checks.check_combine_masks, candidate, hint, hidden=False)


def test_mask_draws_separate_the_mistakes() -> None:
    """Sliding windows: first 2 <= window <= T - 2 (every mistake differs), then one of width
    1 and one wider than the sequence; combine_masks: a square mask, then T != S, a padded and
    a full sequence, every length >= 1."""
    for seed in SEEDS[:50]:
        draw = _draws(seed)
        attn, pad = checks._combine_hidden(draw)[1]
        assert attn.shape[0] != attn.shape[1]
        for attn, pad in checks._combine_hidden(draw):
            lengths = pad.sum(-1)
            assert lengths.min() >= 1 and lengths.min() < pad.shape[1] == lengths.max()
            assert attn[:, 0].all() and attn[-1, -1] and not attn[0, -1]
            assert not torch.equal(attn, torch.ones_like(attn).tril())


def test_mask_cheats_are_refused() -> None:
    causal = reference.causal_mask  # an alias made before the test
    window = runpy.run_path(reference.__file__)["sliding_window_mask"]
    square = nn.Transformer.generate_square_subsequent_mask

    expect_hint(checks.check_causal_mask, lambda T: causal(T), NOT_ALLOWED, hidden=False)
    expect_hint(checks.check_causal_mask, lambda T: square(T) == 0, NOT_ALLOWED, hidden=False)
    expect_hint(
        checks.check_causal_mask, lambda T: reference.strided_mask(T, 1), NOT_ALLOWED, seeds=["s"]
    )
    expect_hint(checks.check_causal_mask, lambda T: checks._band(T, 0, T), NOT_ALLOWED)
    expect_hint(checks.check_sliding_window_mask, window, NOT_ALLOWED, hidden=False)
    expect_hint(
        checks.check_sliding_window_mask,
        lambda T, w: functools.lru_cache(maxsize=None)(reference.sliding_window_mask)(T, w),
        NOT_ALLOWED,
        seeds=["s"],
    )

    def combine_through_the_module(attn_mask, padding_mask):
        module = reference.MultiHeadAttention(2, 1)
        return module._mask(attn_mask, padding_mask, *padding_mask.shape)

    expect_hint(checks.check_combine_masks, combine_through_the_module, NOT_ALLOWED, hidden=False)


def test_torchs_causal_bias_is_refused_once_loaded() -> None:
    from torch.nn.attention.bias import causal_lower_right  # imports torch._dynamo

    def bias(T):
        return causal_lower_right(T, T)._materialize()

    expect_hint(checks.check_causal_mask, bias, NOT_ALLOWED, hidden=False)


# --- 5, 6. Heads --------------------------------------------------------------------------------


def test_heads_written_another_way_pass(solution) -> None:
    def split_unflatten(x, n_heads):
        return x.unflatten(-1, (n_heads, -1)).movedim(2, 1)

    def split_chunks(x, n_heads):
        return torch.stack(x.chunk(n_heads, dim=-1), dim=1)

    def merge_cat(x):
        return torch.cat(x.unbind(dim=1), dim=-1)

    def merge_permute(x):
        return x.permute(0, 2, 1, 3).flatten(2)

    expect_pass(checks.check_split_heads, split_unflatten)
    expect_pass(checks.check_split_heads, split_chunks)
    expect_pass(checks.check_merge_heads, merge_cat)
    expect_pass(checks.check_merge_heads, merge_permute)
    # the round trip, as the visible test of merge_heads says
    x = torch.randn(2, 3, 12)
    assert torch.equal(merge_cat(split_chunks(x, 4)), x)


def _split(kind: str):
    def split_heads(x, n_heads):
        B, T, C = x.shape
        if kind == "scrambled":
            return x.reshape(B, n_heads, T, C // n_heads)
        if kind == "interleaved":
            return x.view(B, T, C // n_heads, n_heads).permute(0, 3, 1, 2)
        return x.view(B, T, n_heads, C // n_heads)  # no transpose

    return split_heads


@pytest.mark.parametrize(
    "kind, hint, visible_hint",
    [
        ("scrambled", "features are scrambled", "features are scrambled"),
        ("interleaved", "heads are interleaved", "heads are interleaved"),
        ("no_transpose", "head axis comes before the tokens", "head axis comes before"),
    ],
)
def test_split_heads_mistakes_are_named(kind: str, hint: str, visible_hint: str) -> None:
    expect_hint(checks.check_split_heads, _split(kind), hint)
    expect_hint(checks.check_split_heads, _split(kind), visible_hint, hidden=False)


def test_the_worked_example_cannot_tell_two_split_mistakes_apart_and_says_so() -> None:
    """With T = H = 2, viewing straight to (B, H, T, D) and forgetting the transpose give
    the same tensor: the visible test names both."""
    for kind in ("scrambled", "no_transpose"):
        expect_hint(checks.check_split_heads, _split(kind), "one of these", hidden=False)


@pytest.mark.parametrize(
    "candidate, hint",
    [
        (lambda x: x.reshape(x.shape[0], x.shape[2], -1), "heads merged in the wrong order"),
        (
            lambda x: x.permute(0, 2, 3, 1).reshape(x.shape[0], x.shape[2], -1),
            "heads are interleaved",
        ),
    ],
)
def test_merge_heads_mistakes_are_named(candidate, hint: str) -> None:
    expect_hint(checks.check_merge_heads, candidate, hint)
    expect_hint(checks.check_merge_heads, candidate, hint, hidden=False)


def test_heads_through_the_reference_module_are_refused() -> None:
    def split(x, n_heads):
        return reference.MultiHeadAttention(x.shape[-1], n_heads)._split_heads(x)

    expect_hint(checks.check_split_heads, split, NOT_ALLOWED, hidden=False)


# --- 7. Multi-head attention --------------------------------------------------------------------


def _mha(kind: str = ""):
    """Multi-head attention written out by a learner, with one mistake (or none)."""

    def multi_head_attention(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
        B, T, C = x_q.shape
        H, D = n_heads, C // n_heads

        def split(x):
            if kind == "interleaved":
                return x.view(B, x.shape[1], D, H).permute(0, 3, 1, 2)
            return x.view(B, x.shape[1], H, D).transpose(1, 2)

        def project(x, w):
            return x @ w if kind == "no_transpose" else x @ w.T

        q, k, v = split(project(x_q, w_q)), split(project(x_kv, w_k)), split(project(x_kv, w_v))
        scale = math.sqrt(C if kind == "scale_by_c" else D)
        if kind == "causal_flag":
            heads = F.scaled_dot_product_attention(q, k, v, is_causal=mask is not None)
        else:
            scores = q @ k.transpose(-2, -1) / scale
            if mask is not None and kind != "no_mask":
                scores = scores.masked_fill(mask if kind == "inverted" else ~mask, float("-inf"))
            heads = scores.softmax(-1) @ v  # (B, H, T, D)
        if kind == "merge_order":
            merged = heads.reshape(B, T, C)
        elif kind == "interleaved":
            merged = heads.permute(0, 2, 3, 1).reshape(B, T, C)
        else:
            merged = heads.transpose(1, 2).reshape(B, T, C)
        return merged if kind == "no_out_proj" else project(merged, w_o)

    return multi_head_attention


def test_multi_head_attention_written_another_way_passes(solution) -> None:
    def loop_over_heads(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
        D = x_q.shape[-1] // n_heads
        heads = []
        for h in range(n_heads):
            rows = slice(h * D, (h + 1) * D)
            q, k, v = x_q @ w_q[rows].T, x_kv @ w_k[rows].T, x_kv @ w_v[rows].T
            scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, T, S)
            if mask is not None:
                m = mask if mask.dim() < 4 else mask[:, min(h, mask.shape[1] - 1)]
                scores = scores.masked_fill(~m, float("-inf"))
            heads.append(scores.softmax(-1) @ v)
        return F.linear(torch.cat(heads, dim=-1), w_o)

    def einsum(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
        B, T, C = x_q.shape
        wq, wk, wv = (w.view(n_heads, C // n_heads, C) for w in (w_q, w_k, w_v))
        q = torch.einsum("btc,hdc->bhtd", x_q, wq)
        k = torch.einsum("bsc,hdc->bhsd", x_kv, wk)
        v = torch.einsum("bsc,hdc->bhsd", x_kv, wv)
        heads = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return torch.einsum("bhtd,chd->btc", heads, w_o.view(C, n_heads, C // n_heads))

    for candidate in (loop_over_heads, einsum, _mha(), solution["multi_head_attention"]):
        expect_pass(checks.check_multi_head_attention, candidate)


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("merge_order", "heads merged in the wrong order", True),
        ("no_out_proj", "output projection W^O is missing", True),
        ("no_transpose", "x @ w.T", True),
        ("scale_by_c", "not by 1/sqrt(d_model)", True),
        ("interleaved", "heads are interleaved", True),
        ("no_mask", "the mask is ignored", False),
        ("causal_flag", "flag meaning 'causal'", False),
        ("inverted", "the mask is inverted", False),
    ],
)
def test_multi_head_attention_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    expect_hint(checks.check_multi_head_attention, _mha(kind), hint)
    if visible:
        expect_hint(checks.check_multi_head_attention, _mha(kind), hint, hidden=False)


def test_a_mask_treated_as_a_causal_flag_passes_only_the_old_tests() -> None:
    """The old hidden tests passed only causal masks, so `is_causal=mask is not None`
    passed; the hidden tests now pass random and padding masks, and S != T."""
    checks.check_multi_head_attention(_mha("causal_flag"))  # no mask in the worked example
    old_causal_case = torch.randn(2, 5, 8, dtype=torch.float64)
    w = [torch.randn(8, 8, dtype=torch.float64) for _ in range(4)]
    torch.testing.assert_close(
        _mha("causal_flag")(old_causal_case, old_causal_case, *w, 4, reference.causal_mask(5)),
        _mha()(old_causal_case, old_causal_case, *w, 4, reference.causal_mask(5)),
    )
    expect_hint(checks.check_multi_head_attention, _mha("causal_flag"), "flag meaning 'causal'")

    def mask_built_from_t(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
        if mask is not None:  # a causal mask of its own, (T, T): wrong shape when S != T
            T = x_q.shape[1]
            mask = torch.ones(T, T, dtype=torch.bool).tril()
        return _mha()(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask)

    expect_hint(checks.check_multi_head_attention, mask_built_from_t, "use it as given")


def test_multi_head_draws_separate_the_mistakes() -> None:
    """The first case: cross-attention (S != T) with a random non-causal mask, at least two
    heads at least two wide; then a (B, 1, 1, S) padding mask and a causal mask with padding."""
    for seed in SEEDS:
        cases = checks._mha_hidden(_draws(seed))
        x_q, x_kv, w, H, mask = cases[0]
        (T, C), S = x_q.shape[1:], x_kv.shape[1]
        assert T != S and H >= 2 and C // H >= 2 and T >= 2
        assert not torch.equal(mask, torch.ones(T, S, dtype=torch.bool).tril())
        assert (~mask).any(-1).all() and mask.any(-1).all()
        padding = cases[1][4]
        assert padding.shape[1:3] == (1, 1) and not padding.all() and padding.any(-1).all()
        causal = cases[2][4]
        assert causal.shape[1] == 1 and causal.any(-1).all() and not causal.all()


def test_multi_head_cheats_are_refused() -> None:
    def torch_module(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
        C = x_q.shape[-1]
        module = nn.MultiheadAttention(C, n_heads, bias=False, batch_first=True).double()
        module.in_proj_weight.data = torch.cat([w_q, w_k, w_v])
        module.out_proj.weight.data = w_o
        return module(x_q, x_kv, x_kv, attn_mask=None if mask is None else ~mask)[0]

    def torch_functional(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
        out, _ = F.multi_head_attention_forward(
            x_q.transpose(0, 1), *(x_kv.transpose(0, 1),) * 2, x_q.shape[-1], n_heads,
            torch.cat([w_q, w_k, w_v]), None, None, None, False, 0.0, w_o, None,
            need_weights=False,
        )  # fmt: skip
        return out.transpose(0, 1)

    def tutorlib_module(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
        module = reference.MultiHeadAttention(x_q.shape[-1], n_heads, bias=False).double()
        module.in_proj_weight.data = torch.cat([w_q, w_k, w_v])
        module.out_proj.weight.data = w_o
        return module(x_q, x_kv, x_kv, attn_mask=mask)[0]

    def private_reference(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
        return checks._mha(x_q, x_kv, (w_q, w_k, w_v, w_o), n_heads, mask)

    for cheat in (torch_module, torch_functional, tutorlib_module, private_reference):
        expect_hint(checks.check_multi_head_attention, cheat, NOT_ALLOWED, hidden=False)


# --- 8. Linear attention ------------------------------------------------------------------------


def _phi(x):
    return F.elu(x) + 1


def test_linear_attention_written_another_way_passes(solution) -> None:
    def einsum(q, k, v):
        pq, pk = _phi(q), _phi(k)
        kv = torch.einsum("...sd,...se->...de", pk, v)
        z = torch.einsum("...td,...d->...t", pq, pk.sum(-2)).unsqueeze(-1)
        return torch.einsum("...td,...de->...te", pq, kv) / (z + 1e-6)

    def one_query_at_a_time(q, k, v):
        pq, pk = torch.where(q > 0, q + 1, q.exp()), torch.where(k > 0, k + 1, k.exp())
        kv, z = pk.transpose(-2, -1) @ v, pk.sum(-2)  # (..., D, Dv), (..., D)
        rows = [
            (pq[..., t, :, None] * kv).sum(-2) / ((pq[..., t, :] * z).sum(-1, keepdim=True) + 1e-6)
            for t in range(q.shape[-2])
        ]
        return torch.stack(rows, dim=-2)

    for candidate in (einsum, one_query_at_a_time, solution["linear_attention"]):
        expect_pass(checks.check_linear_attention, candidate)


@pytest.mark.parametrize(
    "candidate, hint",
    [
        (lambda q, k, v: _phi(q) @ (_phi(k).transpose(-2, -1) @ v), "normalizer is missing"),
        (
            lambda q, k, v: (
                (F.relu(q) @ (F.relu(k).mT @ v))
                / (F.relu(q) @ F.relu(k).sum(-2).unsqueeze(-1) + 1e-6)
            ),
            "not relu",
        ),
        (
            lambda q, k, v: (q @ (k.mT @ v)) / (q @ k.sum(-2).unsqueeze(-1) + 1e-6),
            "apply the feature map",
        ),
    ],
)
def test_linear_attention_mistakes_are_named(candidate, hint: str) -> None:
    expect_hint(checks.check_linear_attention, candidate, hint)
    expect_hint(checks.check_linear_attention, candidate, hint, hidden=False)


def test_linear_attention_may_not_build_the_attention_matrix() -> None:
    """Right values, computed through the (T, S) matrix: refused, with a message that names
    the requirement (it used to pass)."""

    def quadratic(q, k, v):
        weights = _phi(q) @ _phi(k).transpose(-2, -1)  # (..., T, S)
        return (weights @ v) / (weights.sum(-1, keepdim=True) + 1e-6)

    def quadratic_einsum(q, k, v):
        weights = torch.einsum("...sd,...td->...st", _phi(k), _phi(q))  # (..., S, T)
        return (weights.mT @ v) / (weights.sum(-2).unsqueeze(-1) + 1e-6)

    for candidate in (quadratic, quadratic_einsum):
        expect_hint(checks.check_linear_attention, candidate, "never forms the T x S", hidden=False)
        expect_hint(checks.check_linear_attention, candidate, "Not allowed in this exercise")


def test_linear_attention_draws_leave_no_other_t_by_s_matrix() -> None:
    for seed in SEEDS:
        for q, _, v in checks._linear_hidden(_draws(seed)):
            T, D, S, Dv = *q.shape[-2:], *v.shape[-2:]
            assert len({T, S, D, Dv}) == 4 and min(T, S, D, Dv) > max(q.shape[:-2], default=0)


def test_linear_attention_cheats_are_refused() -> None:
    copy = runpy.run_path(reference.__file__)["linear_attention"]
    cheats = [
        lambda q, k, v: reference.linear_attention(q, k, v),
        lambda q, k, v: copy(q, k, v),
        lambda q, k, v: functools.lru_cache(maxsize=None)(reference.linear_attention)(q, k, v),
        lambda q, k, v: checks._linear_variant(q, k, v, ""),
    ]
    for cheat in cheats:
        expect_hint(checks.check_linear_attention, cheat, NOT_ALLOWED, hidden=False)

    def tutorlib_feature_map(q, k, v):
        pq, pk = reference.elu_feature_map(q), reference.elu_feature_map(k)
        return (pq @ (pk.mT @ v)) / (pq @ pk.sum(-2).unsqueeze(-1) + 1e-6)

    expect_hint(checks.check_linear_attention, tutorlib_feature_map, NOT_ALLOWED, hidden=False)
