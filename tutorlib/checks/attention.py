"""Checks for the Chapter 2 exercises (solutions/02_attention).

As in Chapter 1: `hidden=False` runs the visible tests (worked examples, shapes), `hidden=True`
the hidden ones (random float64 inputs against the reference, edge cases, gradients). While
the learner's code runs, the tutorlib reference and the torch built-ins that would do the work
raise.

Book: Chapter 2 exercises.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tutorlib import attention
from tutorlib.checks import (
    ExerciseError,
    Target,
    expect_backward_close,
    expect_close,
    random_tensor,
    report_ok,
    run_candidate,
    watch_module,
)

__all__ = [
    "check_attention",
    "check_causal_mask",
    "check_combine_masks",
    "check_linear_attention",
    "check_merge_heads",
    "check_multi_head_attention",
    "check_sliding_window_mask",
    "check_split_heads",
]

# References, taken at import time (before any learner code runs).
_sdpa = attention.scaled_dot_product_attention
_linear_attention = attention.linear_attention
_softmax, _linear, _elu = torch.softmax, F.linear, F.elu

Mistakes = dict[str, Callable[[], Tensor]]

_ATTENTION_FORBIDDEN: list[Target] = [
    (F, "scaled_dot_product_attention"),
    (F, "multi_head_attention_forward"),
    (nn.MultiheadAttention, "forward"),
    (attention, "scaled_dot_product_attention"),
    (attention, "_attention_written_out"),
    (attention.MultiHeadAttention, "forward"),
]


# --- 1. Scaled dot-product attention ---------------------------------------------------------


def _attention_variant(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, kind: str) -> Tensor:
    """The attention output as a likely mistake computes it."""
    D = q.shape[-1]
    scale = {"no_scale": 1.0, "divide_by_d": 1.0 / D}.get(kind, 1.0 / math.sqrt(D))
    scores = q @ k.transpose(-2, -1) * scale  # (..., T, S)
    if mask is not None and kind == "inverted":
        scores = scores.masked_fill(mask, float("-inf"))
    elif mask is not None and kind != "after_softmax":
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = _softmax(scores, dim=-2 if kind == "wrong_axis" else -1)
    if mask is not None and kind == "after_softmax":
        weights = weights.masked_fill(~mask, 0.0)
    return weights @ v


ATTENTION_MISTAKES = {
    "no_scale": "the scores are not divided by sqrt(d_k): softmax(Q K^T / sqrt(d_k)) V.",
    "divide_by_d": "divide the scores by sqrt(d_k), not by d_k.",
    "wrong_axis": "softmax over the wrong axis: each query's weights over the keys must sum "
    "to 1, so normalize over the last dimension (dim=-1), not over the queries.",
    "after_softmax": "the mask is applied after the softmax, so the remaining weights no "
    "longer sum to 1; mask the scores (fill with -inf) before the softmax.",
    "inverted": "the mask is inverted: True means 'may attend'; fill the scores where the "
    "mask is False (~mask) with -inf.",
}


def _check_attention_case(
    fn: Callable, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None
) -> None:
    expected, expected_weights = _sdpa(q, k, v, mask, need_weights=True)
    result = run_candidate(fn, q, k, v, mask, exercise="attention", forbidden=_ATTENTION_FORBIDDEN)
    if not isinstance(result, tuple) or len(result) != 2:
        raise ExerciseError("attention should return a pair (output, weights).")
    out, weights = result
    what = f"attention's output for q {tuple(q.shape)}, k {tuple(k.shape)}" + (
        "" if mask is None else f" with a {tuple(mask.shape)} mask"
    )
    qd, kd, vd = q.detach(), k.detach(), v.detach()
    mistakes = {
        hint: (lambda kind=kind: _attention_variant(qd, kd, vd, mask, kind))
        for kind, hint in ATTENTION_MISTAKES.items()
    }
    expect_close(
        out, expected, what=what, mistakes=mistakes, atol=1e-8 if q.dtype == torch.float64 else 1e-5
    )
    expect_close(
        weights,
        expected_weights,
        what="attention's weights",
        atol=1e-8 if q.dtype == torch.float64 else 1e-5,
    )
    if q.requires_grad:
        expect_backward_close(out, expected, {"q": q, "k": k, "v": v}, "attention")


def check_attention(fn: Callable, hidden: bool = False) -> None:
    """Learner's `attention(q (..., T, D), k (..., S, D), v (..., S, Dv), mask=None)`
    -> (output (..., T, Dv), weights (..., T, S)); mask True = may attend."""
    if not hidden:
        # one query, two keys: scores [2, 0] / sqrt(2), values [1, 0] and [0, 1]
        q = torch.tensor([[[2.0, 0.0]]])
        k = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
        v = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
        cases = [
            (q, k, v, None),
            (
                random_tensor(2, 4, 8, seed=1).float(),
                *(random_tensor(2, 5, 8, seed=s).float() for s in (2, 3)),
                None,
            ),
        ]
    else:
        mask = torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) > 0.5
        mask[:, 0] = True  # every query may attend to at least one key
        batch_mask = torch.ones(2, 3, 1, 6, dtype=torch.bool)
        batch_mask[1, :, :, 4:] = False  # padding in the second sequence
        cases = [
            (
                random_tensor(2, 3, 4, 8, seed=4, grad=True),
                random_tensor(2, 3, 6, 8, seed=5, grad=True),
                random_tensor(2, 3, 6, 5, seed=6, grad=True),
                mask,
            ),
            (
                random_tensor(2, 3, 4, 8, seed=7),
                random_tensor(2, 3, 6, 8, seed=8),
                random_tensor(2, 3, 6, 5, seed=9),
                batch_mask,
            ),
            (
                random_tensor(3, 5, 16, seed=10, grad=True),
                random_tensor(3, 5, 16, seed=11, grad=True),
                random_tensor(3, 5, 16, seed=12, grad=True),
                attention.causal_mask(5),
            ),
            (
                random_tensor(1, 1, 4, seed=13),
                random_tensor(1, 3, 4, seed=14),
                random_tensor(1, 3, 2, seed=15),
                None,
            ),
        ]
    for case in cases:
        _check_attention_case(fn, *case)
    report_ok("attention", hidden)


# --- 2, 3, 4. Masks ----------------------------------------------------------------------------


def _expect_mask(out: object, expected: Tensor, mistakes: dict[str, Tensor], what: str) -> None:
    """A boolean mask equal to `expected`, or the hint of the mistaken mask it equals."""
    if isinstance(out, Tensor) and out.dtype != torch.bool:
        raise ExerciseError(
            f"{what} has dtype {out.dtype}; a mask is boolean (True = may attend): "
            "compare with <=, or call .bool()."
        )
    expect_close(
        out,
        expected,
        what=what,
        mistakes={hint: (lambda m=m: m) for hint, m in mistakes.items()},
        atol=0,
        rtol=0,
    )


def _check_mask(
    fn: Callable,
    args: tuple,
    expected: Tensor,
    mistakes: dict[str, Tensor],
    name: str,
    forbidden: list[Target],
) -> None:
    out = run_candidate(fn, *args, exercise=name, forbidden=forbidden)
    _expect_mask(out, expected, mistakes, f"{name}{args}")


_MASK_FORBIDDEN: list[Target] = [
    (attention, "causal_mask"),
    (attention, "sliding_window_mask"),
    (attention, "strided_mask"),
    (nn.Transformer, "generate_square_subsequent_mask"),
]


def check_causal_mask(fn: Callable[[int], Tensor], hidden: bool = False) -> None:
    """Learner's `causal_mask(T) -> (T, T)` bool, True where query t may attend to key s <= t."""
    for T in [1, 6, 33] if hidden else [4]:
        ones = torch.ones(T, T, dtype=torch.bool)
        mistakes = {
            "the mask is inverted or transposed: row t (the query) is True in columns 0..t, "
            "the diagonal included (torch.tril).": ones.triu(),
            "the diagonal is missing: a position may attend to itself.": ones.tril(-1),
            "the mask is inverted: True marks what may be attended to (the past and the "
            "present).": ~ones.tril(),
        }
        _check_mask(fn, (T,), ones.tril(), mistakes, "causal_mask", _MASK_FORBIDDEN)
    report_ok("causal_mask", hidden)


def check_sliding_window_mask(fn: Callable[[int, int], Tensor], hidden: bool = False) -> None:
    """Learner's `sliding_window_mask(T, window)`: t may attend to s in [t - window + 1, t]."""
    for T, w in [(9, 3), (5, 1), (4, 10), (12, 4)] if hidden else [(6, 2)]:
        reference = attention.sliding_window_mask(T, w)
        off_by_one = (
            "off by one: the window holds `window` positions, t itself included, so t - s "
            "ranges over 0 .. window - 1."
        )
        mistakes = {
            off_by_one: attention.sliding_window_mask(T, w + 1),
            "the window must be causal: s may not be later than t.": (
                attention.sliding_window_mask(T, w, causal=False)
            ),
            "the mask is inverted: True marks the positions inside the window.": ~reference,
        }
        if w > 1:
            mistakes[off_by_one + " (One too few here.)"] = attention.sliding_window_mask(T, w - 1)
        _check_mask(fn, (T, w), reference, mistakes, "sliding_window_mask", _MASK_FORBIDDEN)
    report_ok("sliding_window_mask", hidden)


def check_combine_masks(fn: Callable[[Tensor, Tensor], Tensor], hidden: bool = False) -> None:
    """Learner's `combine_masks(attn_mask (T, S), padding_mask (B, S)) -> (B, 1, T, S)`."""
    cases = [(4, 4, (3, 2))] if not hidden else [(5, 5, (5, 1, 3)), (3, 6, (6, 2)), (1, 1, (1,))]
    for T, S, lengths in cases:
        attn_mask = (
            attention.causal_mask(max(T, S))[:T, :S]
            if T == S
            else torch.rand(T, S, generator=torch.Generator().manual_seed(T)) > 0.3
        )
        padding = attention.padding_mask(torch.tensor(lengths), S)  # (B, S)
        expected = attn_mask & padding[:, None, None, :]  # (B, 1, T, S)
        mistakes = {
            "combine with AND (&): a key may be attended only if both masks allow it.": attn_mask
            | padding[:, None, None, :],
            "the padding mask marks keys: broadcast it as padding_mask[:, None, None, :], "
            "over the queries, not along them.": (attn_mask & padding[:, None, :, None])
            if T == S
            else ~expected,
        }
        out = run_candidate(fn, attn_mask, padding, exercise="combine_masks")
        if isinstance(out, Tensor) and out.dim() == 3 and out.shape == (len(lengths), T, S):
            raise ExerciseError(
                f"combine_masks returned shape {tuple(out.shape)}; keep a head axis of size 1 "
                f"so the mask broadcasts over heads: ({len(lengths)}, 1, {T}, {S})."
            )
        _expect_mask(out, expected, mistakes, f"combine_masks for T={T}, S={S}, lengths {lengths}")
    report_ok("combine_masks", hidden)


# --- 5, 6. Splitting and merging heads -----------------------------------------------------------


def _check_split_case(fn: Callable, B: int, T: int, C: int, H: int) -> None:
    x = torch.arange(B * T * C, dtype=torch.float64).reshape(B, T, C)
    expected = x.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, D)
    out = run_candidate(fn, x, H, exercise="split_heads")
    expect_close(
        out,
        expected,
        what=f"split_heads on a {(B, T, C)} input with {H} heads",
        mistakes={
            "the features are scrambled: view the last dimension as (H, D) first, "
            "x.view(B, T, H, D), then move the head axis: .transpose(1, 2). Viewing "
            "straight to (B, H, T, D) mixes tokens into heads.": lambda: x.reshape(B, H, T, C // H),
        },
    )


def check_split_heads(fn: Callable[[Tensor, int], Tensor], hidden: bool = False) -> None:
    """Learner's `split_heads(x (B, T, C), n_heads) -> (B, H, T, D)`."""
    for B, T, C, H in [(2, 5, 12, 3), (1, 1, 4, 4), (3, 7, 8, 1)] if hidden else [(1, 2, 4, 2)]:
        _check_split_case(fn, B, T, C, H)
    report_ok("split_heads", hidden)


def _check_merge_case(fn: Callable, B: int, H: int, T: int, D: int) -> None:
    x = torch.arange(B * H * T * D, dtype=torch.float64).reshape(B, H, T, D)
    expected = x.transpose(1, 2).reshape(B, T, H * D)  # (B, T, C)
    out = run_candidate(fn, x, exercise="merge_heads")
    expect_close(
        out,
        expected,
        what=f"merge_heads on a {(B, H, T, D)} input",
        mistakes={
            "heads merged in the wrong order: move the head axis back next to D first, "
            "x.transpose(1, 2), then reshape to (B, T, H * D).": lambda: x.reshape(B, T, H * D),
            "head h belongs in features h*D .. (h+1)*D - 1: transpose to (B, T, H, D) "
            "before reshaping, not to (B, T, D, H).": (
                lambda: x.permute(0, 2, 3, 1).reshape(B, T, H * D)
            ),
        },
    )


def check_merge_heads(fn: Callable[[Tensor], Tensor], hidden: bool = False) -> None:
    """Learner's `merge_heads(x (B, H, T, D)) -> (B, T, H * D)`."""
    for B, H, T, D in [(2, 3, 5, 4), (1, 1, 3, 2), (2, 4, 1, 3)] if hidden else [(1, 2, 2, 2)]:
        _check_merge_case(fn, B, H, T, D)
    report_ok("merge_heads", hidden)


# --- 7. Multi-head attention ------------------------------------------------------------------

_MHA_FORBIDDEN: list[Target] = [
    (F, "multi_head_attention_forward"),
    (nn.MultiheadAttention, "forward"),
    (attention.MultiHeadAttention, "forward"),
]


def _mha(
    xq: Tensor, xkv: Tensor, w: tuple[Tensor, ...], H: int, mask: Tensor | None, kind: str = ""
) -> Tensor:
    w_q, w_k, w_v, w_o = w
    B, T, C = xq.shape

    def split(x: Tensor) -> Tensor:
        return x.view(B, x.shape[1], H, C // H).transpose(1, 2)  # (B, H, T, D)

    if kind == "no_transpose":
        q, k, v = (split(x @ m) for x, m in ((xq, w_q), (xkv, w_k), (xkv, w_v)))
    else:
        q, k, v = split(_linear(xq, w_q)), split(_linear(xkv, w_k)), split(_linear(xkv, w_v))
    scale = 1 / math.sqrt(C) if kind == "scale_by_c" else None
    heads = _sdpa(q, k, v, mask, scale=scale)  # (B, H, T, D)
    merged = (
        heads.reshape(B, T, C) if kind == "merge_order" else heads.transpose(1, 2).reshape(B, T, C)
    )
    if kind == "no_out_proj":
        return merged
    return merged @ w_o if kind == "no_transpose" else _linear(merged, w_o)


MHA_MISTAKES = {
    "merge_order": "heads merged in the wrong order: transpose (B, H, T, D) to (B, T, H, D) "
    "before reshaping to (B, T, C).",
    "no_out_proj": "the output projection W^O is missing: MultiHead = Concat(heads) W^O.",
    "no_transpose": "the weights are stored as nn.Linear stores them, (out, in): project with "
    "x @ w.T (or F.linear(x, w)), not x @ w.",
    "scale_by_c": "each head scales its scores by 1/sqrt(D), the head width, not by "
    "1/sqrt(d_model).",
}


def _check_mha_case(
    fn: Callable, B: int, T: int, S: int, C: int, H: int, causal: bool, seed: int, grad: bool
) -> None:
    xq = random_tensor(B, T, C, seed=seed, grad=grad)
    xkv = xq if causal else random_tensor(B, S, C, seed=seed + 10, grad=grad)
    w = tuple(random_tensor(C, C, seed=seed + 20 + i) / math.sqrt(C) for i in range(4))
    mask = attention.causal_mask(T) if causal else None
    expected = _mha(xq, xkv, w, H, mask)
    out = run_candidate(
        fn, xq, xkv, *w, H, mask, exercise="multi_head_attention", forbidden=_MHA_FORBIDDEN
    )
    xqd, xkvd = xq.detach(), xkv.detach()
    expect_close(
        out,
        expected,
        what=f"multi_head_attention with C={C}, {H} heads, T={T}, S={S}"
        + (", causal" if causal else ""),
        mistakes={
            hint: (lambda kind=kind: _mha(xqd, xkvd, w, H, mask, kind))
            for kind, hint in MHA_MISTAKES.items()
        },
        atol=1e-8 if grad else 1e-6,
    )
    if grad:
        leaves = {"x_q": xq} if causal else {"x_q": xq, "x_kv": xkv}
        expect_backward_close(out, expected, leaves, "multi_head_attention")


def check_multi_head_attention(fn: Callable, hidden: bool = False) -> None:
    """Learner's `multi_head_attention(x_q (B, T, C), x_kv (B, S, C), w_q, w_k, w_v, w_o,
    n_heads, mask=None) -> (B, T, C)`, weights (C, C) in nn.Linear layout, no biases."""
    if hidden:
        cases = [(2, 4, 6, 12, 3, False, 1), (2, 5, 5, 8, 4, True, 2), (1, 1, 2, 6, 2, False, 3)]
    else:
        cases = [(2, 3, 3, 8, 2, False, 0)]
    for case in cases:
        _check_mha_case(fn, *case, grad=hidden)
    report_ok("multi_head_attention", hidden)


# --- 8. Linear attention ------------------------------------------------------------------------

_LINEAR_FORBIDDEN: list[Target] = [(attention, "linear_attention"), *_ATTENTION_FORBIDDEN]


def _linear_variant(q: Tensor, k: Tensor, v: Tensor, kind: str) -> Tensor:
    phi = {"relu": F.relu, "identity": lambda x: x}.get(kind, lambda x: _elu(x) + 1)
    pq, pk = phi(q), phi(k)
    numerator = pq @ (pk.transpose(-2, -1) @ v)  # (..., T, Dv)
    if kind == "no_normalizer":
        return numerator
    return numerator / (pq @ pk.sum(dim=-2).unsqueeze(-1) + 1e-6)


def _check_linear_case(fn: Callable, shapes: tuple, seed: int, grad: bool) -> None:
    q, k, v = (random_tensor(*shape, seed=seed + i, grad=grad) for i, shape in enumerate(shapes))
    expected = _linear_attention(q, k, v)
    out = run_candidate(fn, q, k, v, exercise="linear_attention", forbidden=_LINEAR_FORBIDDEN)
    qd, kd, vd = q.detach(), k.detach(), v.detach()
    expect_close(
        out,
        expected,
        what=f"linear_attention for q {shapes[0]}, k {shapes[1]}, v {shapes[2]}",
        mistakes={
            "the normalizer is missing: divide by phi(q_t) . sum_s phi(k_s), so each "
            "query's weights sum to 1.": lambda: _linear_variant(qd, kd, vd, "no_normalizer"),
            "the feature map is phi(x) = elu(x) + 1 (positive everywhere), not relu.": (
                lambda: _linear_variant(qd, kd, vd, "relu")
            ),
            "apply the feature map phi(x) = elu(x) + 1 to the queries and keys.": (
                lambda: _linear_variant(qd, kd, vd, "identity")
            ),
        },
        atol=1e-6,
        rtol=1e-5,
    )
    if grad:
        expect_backward_close(
            out, expected, {"q": q, "k": k, "v": v}, "linear_attention", atol=1e-6
        )


def check_linear_attention(fn: Callable, hidden: bool = False) -> None:
    """Learner's `linear_attention(q (..., T, D), k (..., S, D), v (..., S, Dv)) -> (..., T, Dv)`,
    non-causal, feature map elu(x) + 1."""
    if hidden:
        shapes = [((2, 3, 6, 8), (2, 3, 9, 8), (2, 3, 9, 5)), ((1, 1, 2), (1, 4, 2), (1, 4, 1))]
    else:
        shapes = [((2, 5, 4), (2, 5, 4), (2, 5, 3))]
    for seed, case in enumerate(shapes):
        _check_linear_case(fn, case, seed=100 + 3 * seed, grad=hidden)
    report_ok("linear_attention", hidden)


watch_module(__name__)
