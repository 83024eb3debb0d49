"""Checks for the Chapter 2 exercises (solutions/02_attention).

Each `check_*` takes the learner's function. With `hidden=False` it runs the visible tests (the
notebook's worked examples); with `hidden=True` the hidden ones: property tests on sizes, values
and masks drawn when they run (`tutorlib.checks.draw`), with the special cases that tell the
likely mistakes apart in every draw (key width != value width, T != S, non-causal and padded
masks, heads that are neither 1 wide nor alone), and gradients. While the learner's code runs,
the tutorlib reference and every torch operator that computes the same thing are out of reach
(`tutorlib.checks.guard`), and linear attention may not build the (T, S) attention matrix.

Book: Chapter 2 exercises.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import transformer as _transformer

from tutorlib import attention
from tutorlib.checks import (
    FORBIDDEN_PREFIX,
    Draw,
    Exercise,
    ExerciseError,
    Forbidden,
    expect_close,
    expect_equal,
    random_tensor,
    watch_module,
)
from tutorlib.checks.guard import ATTENTION_KERNELS, MULTI_HEAD_KERNELS

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
_causal, _sliding = attention.causal_mask, attention.sliding_window_mask
_softmax, _linear, _relu, _elu = torch.softmax, F.linear, F.relu, F.elu

_MHA = Forbidden(
    python=(nn.MultiheadAttention, attention.MultiHeadAttention), ops=MULTI_HEAD_KERNELS
)


def _if_loaded(module: str, *names: str) -> Forbidden:
    """Functions of a torch module that imports torch._dynamo (seconds): forbidden once the
    learner's kernel has loaded it (it cannot call them before), not loaded by the checks."""
    found = sys.modules.get(module)
    return Forbidden(python=tuple(getattr(found, n) for n in names if hasattr(found, n)))


def _flex() -> Forbidden:
    return _if_loaded("torch.nn.attention.flex_attention", "flex_attention")


def _draw_sizes(draw: Draw, low: int, high: int, k: int) -> list[int]:
    """k different sizes in [low, high]."""
    return draw.sample(range(low, high + 1), k)


def _mixed_row(draw: Draw, S: int) -> Tensor:
    """(S,) bool with at least one True and one False (S >= 2)."""
    for _ in range(100):
        row = draw.uniform(S) < 0.5  # each try succeeds with probability >= 1/2
        if row.any() and not row.all():
            return row
    return torch.arange(S) == 0  # (never in practice)


def _mixed_mask(draw: Draw, T: int, S: int) -> Tensor:
    """(T, S) bool, not causal: every query row keeps a key and masks one, every key column is
    seen by some query (so no mistake's softmax meets an all -inf row or column)."""
    causal = torch.ones(T, S, dtype=torch.bool).tril()
    for _ in range(200):
        mask = torch.stack([_mixed_row(draw, S) for _ in range(T)])  # (T, S)
        if mask.any(-2).all() and not torch.equal(mask, causal):
            return mask
    # (never in practice: for 2 <= T, S <= 7 each try succeeds with probability > 0.1)
    return (torch.arange(T)[:, None] + torch.arange(S)[None, :]) % 2 == 0  # (T, S)


def _keep_one(draw: Draw, mask: Tensor) -> Tensor:
    """`mask` with one random key per query row set True (no row is left with no key)."""
    keep = draw.integers(0, mask.shape[-1], (*mask.shape[:-1], 1))
    return mask.scatter(-1, keep, True)


def _padding(draw: Draw, B: int, S: int) -> Tensor:
    """(B, S) bool, True = a real token: lengths >= 1, one sequence padded and (B >= 2) one
    full (S >= 2)."""
    lengths = [draw.integer(1, S - 1), S] + [draw.integer(1, S) for _ in range(B - 2)]
    lengths = draw.sample(lengths, B) if B >= 2 else lengths[:1]
    return torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]  # (B, S)


# --- 1. Scaled dot-product attention ---------------------------------------------------------

ATTENTION_FORBIDDEN = (
    Forbidden(
        python=(attention.scaled_dot_product_attention, attention._attention_written_out),
        ops=ATTENTION_KERNELS,
    )
    + _MHA
)

ATTENTION_MISTAKES = {
    "no_scale": "the scores are not divided by sqrt(d_k): softmax(Q K^T / sqrt(d_k)) V.",
    "divide_by_d": "divide the scores by sqrt(d_k), not by d_k.",
    "sqrt_dv": "the scores are scaled by the square root of the value width (v.shape[-1]); "
    "the scale is 1 / sqrt(d_k), the width of the queries and keys (q.shape[-1]).",
    "wrong_axis": "softmax over the wrong axis: each query's weights over the keys must sum "
    "to 1, so normalize over the last dimension (dim=-1), not over the queries.",
    "after_softmax": "the mask is applied after the softmax, so the remaining weights no "
    "longer sum to 1; mask the scores (fill with -inf) before the softmax.",
    "inverted": "the mask is inverted: True means 'may attend'; fill the scores where the "
    "mask is False (~mask) with -inf.",
    "fill_zero": "the masked scores are set to 0, and exp(0) still gives those keys weight: "
    "fill them with -inf (float('-inf')) before the softmax.",
}
UNMASKED = (
    "the mask is not applied: fill the scores where it is False with -inf before the softmax."
)

_LEADING = (
    "the inputs may have any number of leading dimensions, (..., T, D), S may differ from T, "
    "and the mask broadcasts to the (..., T, S) scores as it is: transpose the last two axes "
    "of k (k.transpose(-2, -1), not k.transpose(1, 2)) and use the mask as given."
)
ATTENTION_ERRORS = {
    "dimension out of range": _LEADING,
    "must match the size": _LEADING,
    "expected size for first two dimensions": _LEADING,
    "einsum": "the inputs may have any number of leading dimensions (..., T, D): write the "
    "einsum subscripts with '...'.",
}


def _attention_variant(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, kind: str
) -> tuple[Tensor, Tensor]:
    """(output, weights) as a likely mistake computes them."""
    D, Dv = q.shape[-1], v.shape[-1]
    scale = {"no_scale": 1.0, "divide_by_d": 1.0 / D, "sqrt_dv": 1.0 / math.sqrt(Dv)}.get(
        kind, 1.0 / math.sqrt(D)
    )
    scores = q @ k.transpose(-2, -1) * scale  # (..., T, S)
    if kind == "scores":
        return scores @ v, scores
    if mask is not None and kind == "inverted":
        scores = scores.masked_fill(mask, float("-inf"))
    elif mask is not None and kind == "fill_zero":
        scores = scores.masked_fill(~mask, 0.0)
    elif mask is not None and kind not in ("after_softmax", "unmasked"):
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = _softmax(scores, dim=-2 if kind == "wrong_axis" else -1)  # (..., T, S)
    if mask is not None and kind == "after_softmax":
        weights = weights.masked_fill(~mask, 0.0)
    return weights @ v, weights


def _attention_hidden(draw: Draw) -> list[tuple[Tensor, Tensor, Tensor, Tensor | None]]:
    """(q, k, v, mask): the key width never the value width (nor its square root, nor 1),
    T != S, masks of every kind (a non-causal one first: it tells every mistake apart), every
    query row keeping at least one key."""

    def widths(T: int) -> tuple[int, int]:  # neither is T (q.shape[2] is not the width)
        D = draw.choice([w for w in range(2, 9) if T not in (w, w * w)])
        return D, draw.choice([w for w in range(2, 9) if w not in (D, D * D, T)])

    def qkv(lead: list[int], T: int, S: int, grad: bool = False) -> tuple[Tensor, ...]:
        D, Dv = widths(T)
        return (
            draw.normal(*lead, T, D, grad=grad),
            draw.normal(*lead, S, D, grad=grad),
            draw.normal(*lead, S, Dv, grad=grad),
        )

    T, S = _draw_sizes(draw, 3, 7, 2)
    lead = [draw.integer(1, 2), draw.integer(1, 3)]
    B, H = draw.integer(2, 3), draw.integer(2, 3)
    T2, S2 = draw.integer(2, 5), draw.integer(3, 6)
    T3, S3 = draw.integer(2, 5), draw.integer(2, 6)
    T4 = draw.integer(3, 8)
    cases = [
        (*qkv(lead, T, S, grad=True), _mixed_mask(draw, T, S)),
        # padding: a (B, 1, 1, S) mask broadcast over heads and queries
        (*qkv([B, H], T2, S2), _padding(draw, B, S2)[:, None, None, :]),
        # a different random mask for every batch element, head and query
        (*qkv([B, H], T3, S3), _keep_one(draw, draw.uniform(B, H, T3, S3) < 0.5)),
        (*qkv([draw.integer(1, 3)], T4, T4, grad=True), _causal(T4)),  # causal self-attention
        (*qkv([], draw.integer(1, 4), draw.integer(2, 6)), None),  # no batch, no mask
    ]
    return cases


def _check_attention_case(
    ex: Exercise, fn: Callable, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None
) -> None:
    result = ex.call(fn, q, k, v, mask, hints=ATTENTION_ERRORS)
    if not isinstance(result, tuple | list) or len(result) != 2:
        raise ExerciseError(
            "attention should return a pair (output, weights)", got=type(result).__name__
        )
    out, weights = result
    expected, expected_weights = _sdpa(q, k, v, mask, need_weights=True)
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}" + (
        "" if mask is None else f" and a {tuple(mask.shape)} mask"
    )
    qd, kd, vd = q.detach(), k.detach(), v.detach()
    variants = {
        hint: (lambda kind=kind: _attention_variant(qd, kd, vd, mask, kind))
        for kind, hint in ATTENTION_MISTAKES.items()
    }
    atol = 1e-8 if q.dtype == torch.float64 else 1e-5
    expect_close(
        out,
        expected,
        what=f"attention's output for {shapes}",
        mistakes={hint: (lambda f=f: f()[0]) for hint, f in variants.items()}
        | {UNMASKED: lambda: _attention_variant(qd, kd, vd, mask, "unmasked")[0]},
        atol=atol,
    )
    weight_mistakes = {hint: (lambda f=f: f()[1]) for hint, f in variants.items()}
    weight_mistakes[
        "the weights returned are the scores before the softmax: return the "
        "softmax probabilities, the weights you multiply V by."
    ] = lambda: _attention_variant(qd, kd, vd, mask, "scores")[1]
    weight_mistakes[
        "the weights returned are not masked: return the softmax of the masked "
        "scores, the weights you multiply V by."
    ] = lambda: _attention_variant(qd, kd, vd, mask, "unmasked")[1]
    expect_close(
        weights,
        expected_weights,
        what=f"attention's weights for {shapes}",
        mistakes=weight_mistakes,
        atol=atol,
    )
    if q.requires_grad:
        ex.expect_backward(out, expected, {"q": q, "k": k, "v": v}, "attention")


def check_attention(fn: Callable, hidden: bool = False) -> None:
    """Learner's `attention(q (..., T, D), k (..., S, D), v (..., S, Dv), mask=None)`
    -> (output (..., T, Dv), weights (..., T, S)); mask True = may attend."""
    with Exercise("attention", hidden, ATTENTION_FORBIDDEN + _flex()) as ex:
        if hidden:
            cases = _attention_hidden(ex.draw)
        else:
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
        for case in cases:
            _check_attention_case(ex, fn, *case)


# --- 2, 3, 4. Masks ----------------------------------------------------------------------------

MASK_FORBIDDEN = Forbidden(
    python=(
        attention.causal_mask,
        attention.sliding_window_mask,
        attention.strided_mask,
        attention._offsets,
        nn.Transformer.generate_square_subsequent_mask,
        _transformer._generate_square_subsequent_mask,
    )
)
COMBINE_FORBIDDEN = Forbidden(python=(attention.MultiHeadAttention,))

MASK_DTYPE = "a mask is boolean (True = may attend): compare with <= or >=, or call .bool()."


def _mask_forbidden() -> Forbidden:
    """MASK_FORBIDDEN, and torch's causal biases once loaded (they import torch._dynamo)."""
    return MASK_FORBIDDEN + _if_loaded(
        "torch.nn.attention.bias", "CausalBias", "causal_upper_left", "causal_lower_right"
    )


def _band(T: int, low: int, high: int) -> Tensor:
    """(T, T) bool, True where low <= t - s <= high."""
    offset = torch.arange(T)[:, None] - torch.arange(T)[None, :]  # (T, T): t - s
    return (offset >= low) & (offset <= high)


def _check_causal_case(ex: Exercise, fn: Callable, T: int) -> None:
    out = ex.call(fn, T)
    expected = _causal(T)
    ones = torch.ones(T, T, dtype=torch.bool)
    expect_equal(
        out,
        expected,
        what=f"causal_mask({T})",
        mistakes={
            "the mask is transposed (torch.triu): row t (the query) is True in columns "
            "0..t, the diagonal included (torch.tril).": lambda: ones.triu(),
            "the diagonal is missing: a position may attend to itself (torch.tril, not "
            "torch.tril(..., diagonal=-1)).": lambda: ones.tril(-1),
            "the mask is inverted: True marks what may be attended to (the past and the "
            "present), so it is True on and below the diagonal.": lambda: ~ones.tril(),
            "off by one: row t is True in columns 0..t, not 0..t+1 (torch.tril, not "
            "torch.tril(..., diagonal=1)).": lambda: ones.tril(1),
        },
        dtype_hint=MASK_DTYPE,
    )


def check_causal_mask(fn: Callable[[int], Tensor], hidden: bool = False) -> None:
    """Learner's `causal_mask(T) -> (T, T)` bool, True where query t may attend to key s <= t."""
    with Exercise("causal_mask", hidden, _mask_forbidden()) as ex:
        if hidden:
            d = ex.draw
            sizes = [d.integer(2, 9), d.integer(10, 64), 1]
        else:
            sizes = [3, 4]
        for T in sizes:
            _check_causal_case(ex, fn, T)


def _check_window_case(ex: Exercise, fn: Callable, T: int, w: int) -> None:
    out = ex.call(fn, T, w)
    expected = _sliding(T, w)
    off_by_one = (
        "off by one: the window holds `window` positions, t itself included, so t - s "
        "ranges over 0 .. window - 1"
    )
    expect_equal(
        out,
        expected,
        what=f"sliding_window_mask({T}, {w})",
        mistakes={
            off_by_one + " (yours holds one too many: 0 <= t - s < window, not <=).": (
                lambda: _band(T, 0, w)
            ),
            off_by_one + " (yours holds one too few).": lambda: _band(T, 0, w - 2),
            off_by_one + " (yours leaves out t itself).": lambda: _band(T, 1, w),
            "the window must be causal: s may not be later than t (0 <= t - s, not "
            "|t - s| < window).": lambda: _band(T, 1 - w, w - 1),
            "the window looks ahead (the mask is transposed): query t sees the keys "
            "t - window + 1 .. t, so row t is True in those columns.": (lambda: _band(T, 1 - w, 0)),
            "the mask is inverted: True marks the positions inside the window.": (
                lambda: ~_band(T, 0, w - 1)
            ),
        },
        dtype_hint=MASK_DTYPE,
    )


def check_sliding_window_mask(fn: Callable[[int, int], Tensor], hidden: bool = False) -> None:
    """Learner's `sliding_window_mask(T, window)`: t may attend to s in [t - window + 1, t]."""
    with Exercise("sliding_window_mask", hidden, _mask_forbidden()) as ex:
        if hidden:
            d = ex.draw
            w = d.integer(2, 6)  # 2 <= window < T - 1: every mistake differs
            T_big = d.integer(20, 48)
            sizes = [
                (w + d.integer(2, 6), w),
                (T_big, d.integer(3, T_big - 2)),
                (d.integer(2, 9), 1),  # the diagonal alone
                (d.integer(1, 6), d.integer(6, 12)),  # a window wider than the sequence
            ]
        else:
            sizes = [(5, 2), (6, 2)]
        for T, w in sizes:
            _check_window_case(ex, fn, T, w)


def _combine_attn_mask(draw: Draw, T: int, S: int) -> Tensor:
    """(T, S) bool, not causal: every query sees key 0 (so a padded query still sees a key,
    and a padding mask broadcast along the queries differs), query 0 does not see the last
    key (so OR differs from AND) and the last query does (so ignoring padding differs)."""
    for _ in range(100):
        mask = draw.uniform(T, S) < 0.5  # (T, S)
        mask[:, 0], mask[0, -1], mask[-1, -1] = True, False, True
        if not torch.equal(mask, torch.ones(T, S, dtype=torch.bool).tril()):
            return mask
    mask = torch.ones(T, S, dtype=torch.bool)  # (never in practice) row 0 is not causal
    mask[0, -1] = False
    return mask


def _combine_hidden(draw: Draw) -> list[tuple[Tensor, Tensor]]:
    """(attn_mask, padding_mask): a square mask first (it tells a padding mask broadcast along
    the queries apart by value), then T != S; S >= 3, one sequence padded, one full, every
    length >= 1."""
    square = draw.integer(3, 6)
    T2, S2 = draw.integer(2, 7), draw.integer(3, 7)
    if T2 == S2:
        T2 = S2 - 1
    return [
        (_combine_attn_mask(draw, T, S), _padding(draw, draw.integer(2, 4), S))
        for T, S in ((square, square), (T2, S2))
    ]


def _check_combine_case(ex: Exercise, fn: Callable, attn_mask: Tensor, pad: Tensor) -> None:
    (T, S), B = attn_mask.shape, pad.shape[0]
    out = ex.call(
        fn,
        attn_mask,
        pad,
        hints={
            "must match the size": "the padding mask marks keys (its last axis is S): "
            "broadcast it as padding_mask[:, None, None, :], over the queries."
        },
    )
    expected = attn_mask & pad[:, None, None, :]  # (B, 1, T, S)
    keys = pad[:, None, None, :]  # (B, 1, 1, S)
    mistakes = {
        "combine with AND (&): a key may be attended only if both masks allow it.": (
            lambda: attn_mask | keys
        ),
        "keep a head axis of size 1 so the mask broadcasts over heads: "
        "padding_mask[:, None, None, :] gives (B, 1, T, S).": lambda: expected[:, 0],
        "the padding mask is ignored: AND it with the attention mask.": (
            lambda: attn_mask.expand(B, 1, T, S)
        ),
        "padding_mask is True for real tokens (keys that may be attended), so use it as it "
        "is, not inverted.": lambda: attn_mask & ~keys,
    }
    if T == S:
        mistakes[
            "the padding mask marks keys: broadcast it as padding_mask[:, None, None, :], "
            "over the queries, not along them."
        ] = lambda: attn_mask & pad[:, None, :, None]
    lengths = pad.sum(-1).tolist()
    expect_equal(
        out,
        expected,
        what=f"combine_masks for a {T}x{S} attn_mask and lengths {lengths}",
        mistakes=mistakes,
        dtype_hint=MASK_DTYPE,
    )


def check_combine_masks(fn: Callable[[Tensor, Tensor], Tensor], hidden: bool = False) -> None:
    """Learner's `combine_masks(attn_mask (T, S), padding_mask (B, S)) -> (B, 1, T, S)`."""
    with Exercise("combine_masks", hidden, _mask_forbidden() + COMBINE_FORBIDDEN) as ex:
        if hidden:
            cases = _combine_hidden(ex.draw)
        else:
            cases = [(_causal(4), attention.padding_mask(torch.tensor([3, 2, 4]), 4))]
        for attn_mask, pad in cases:
            _check_combine_case(ex, fn, attn_mask, pad)


# --- 5, 6. Splitting and merging heads -----------------------------------------------------------

HEADS_FORBIDDEN = Forbidden(python=(attention.MultiHeadAttention,))

INTERLEAVED = (
    "the heads are interleaved: head h takes features h, h + H, h + 2H, ... (a view as "
    "(B, T, D, H)); heads are blocks of D neighbouring features: head h holds features "
    "h*D .. (h+1)*D - 1, so view the last dimension as (H, D)."
)


def _heads_hidden(draw: Draw) -> list[tuple[int, int, int, int]]:
    """(B, T, H, D): T, H and D different and >= 2 first (every mistake differs), then one
    head, one token, one feature per head."""
    T, H, D = _draw_sizes(draw, 2, 6, 3)
    return [
        (draw.integer(2, 3), T, H, D),  # B >= 2: a batch of one is no test
        (draw.integer(1, 3), draw.integer(2, 5), 1, draw.integer(2, 6)),
        (draw.integer(1, 3), 1, draw.integer(2, 4), draw.integer(2, 4)),
        (draw.integer(1, 3), draw.integer(2, 5), draw.integer(2, 4), 1),
    ]


def _check_split_case(ex: Exercise, fn: Callable, x: Tensor, H: int) -> None:
    B, T, C = x.shape
    D = C // H
    out = ex.call(fn, x, H)
    what = f"split_heads on a {(B, T, C)} input with {H} heads"
    if isinstance(out, Tensor) and out.shape == (B, T, H, D) and T != H:
        raise ExerciseError(
            f"{what} has shape {tuple(out.shape)}",
            hint="the head axis comes before the tokens, (B, H, T, D): view as (B, T, H, D), "
            "then .transpose(1, 2).",
        )
    scrambled = (
        "the features are scrambled: view the last dimension as (H, D) first, "
        "x.view(B, T, H, D), then move the head axis: .transpose(1, 2). Viewing straight to "
        "(B, H, T, D) mixes tokens into heads."
    )
    no_transpose = (
        "the head axis comes before the tokens, (B, H, T, D): view as (B, T, H, D), then "
        ".transpose(1, 2)."
    )
    mistakes = {INTERLEAVED: lambda: x.reshape(B, T, D, H).permute(0, 3, 1, 2)}
    if T == H:  # the two give the same tensor here
        mistakes[f"one of these. {scrambled} Or: {no_transpose}"] = lambda: x.reshape(B, T, H, D)
    else:
        mistakes[scrambled] = lambda: x.reshape(B, H, T, D)
    expect_close(
        out, x.view(B, T, H, D).transpose(1, 2), what=what, mistakes=mistakes, atol=0, rtol=0
    )  # (B, H, T, D)


def check_split_heads(fn: Callable[[Tensor, int], Tensor], hidden: bool = False) -> None:
    """Learner's `split_heads(x (B, T, C), n_heads) -> (B, H, T, D)`."""
    with Exercise("split_heads", hidden, HEADS_FORBIDDEN) as ex:
        if hidden:
            cases = [(ex.draw.normal(B, T, H * D), H) for B, T, H, D in _heads_hidden(ex.draw)]
        else:
            cases = [(torch.arange(8, dtype=torch.float64).reshape(1, 2, 4), 2)]
        for x, H in cases:
            _check_split_case(ex, fn, x, H)


def _check_merge_case(ex: Exercise, fn: Callable, x: Tensor) -> None:
    B, H, T, D = x.shape
    out = ex.call(fn, x)
    expect_close(
        out,
        x.transpose(1, 2).reshape(B, T, H * D),  # (B, T, C)
        what=f"merge_heads on a {(B, H, T, D)} input",
        mistakes={
            "heads merged in the wrong order: move the head axis back next to D first, "
            "x.transpose(1, 2), then reshape to (B, T, H * D).": lambda: x.reshape(B, T, H * D),
            "the heads are interleaved: feature h + H*d of the result holds head h's feature "
            "d (the result was reshaped from (B, T, D, H)); head h belongs in features "
            "h*D .. (h+1)*D - 1: transpose to (B, T, H, D) before reshaping.": (
                lambda: x.permute(0, 2, 3, 1).reshape(B, T, H * D)
            ),
        },
        atol=0,
        rtol=0,
    )


def check_merge_heads(fn: Callable[[Tensor], Tensor], hidden: bool = False) -> None:
    """Learner's `merge_heads(x (B, H, T, D)) -> (B, T, H * D)`."""
    with Exercise("merge_heads", hidden, HEADS_FORBIDDEN) as ex:
        if hidden:
            cases = [ex.draw.normal(B, H, T, D) for B, T, H, D in _heads_hidden(ex.draw)]
        else:
            cases = [torch.arange(8, dtype=torch.float64).reshape(1, 2, 2, 2)]
        for x in cases:
            _check_merge_case(ex, fn, x)


# --- 7. Multi-head attention ------------------------------------------------------------------

MHA_FORBIDDEN = _MHA

MHA_MISTAKES = {
    "merge_order": "heads merged in the wrong order: transpose (B, H, T, D) to (B, T, H, D) "
    "before reshaping to (B, T, C).",
    "no_out_proj": "the output projection W^O is missing: MultiHead = Concat(heads) W^O.",
    "no_transpose": "the weights are stored as nn.Linear stores them, (out, in): project with "
    "x @ w.T (or F.linear(x, w)), not x @ w.",
    "scale_by_c": "each head scales its scores by 1/sqrt(D), the head width, not by "
    "1/sqrt(d_model).",
    "interleaved": "the heads are interleaved: head h takes features h, h + H, h + 2H, ... "
    "(a view as (B, T, D, H)); head h holds the D neighbouring features h*D .. (h+1)*D - 1: "
    "view as (B, T, H, D), then transpose.",
    "no_mask": "the mask is ignored: pass it to the attention (attn_mask=mask), or fill the "
    "scores where it is False with -inf.",
    "causal_flag": "the mask is used as a flag meaning 'causal': apply the mask you are given "
    "(any pattern: padding, a random mask, T != S in cross-attention), e.g. attn_mask=mask.",
    "inverted": "the mask is inverted: True means 'may attend'; fill the scores where the "
    "mask is False (~mask) with -inf.",
    "no_scale": "the scores are not scaled: each head divides its scores by sqrt(D), D the "
    "head width (C // n_heads).",
}

MHA_ERRORS = {
    "must match the size": "q comes from x_q (T tokens), k and v from x_kv (S tokens; S != T "
    "in cross-attention); and is the mask used with a shape of its own making? use it as "
    "given, it broadcasts to the (B, H, T, S) scores (a (T, S) mask, a (B, 1, 1, S) padding "
    "mask, ...), and in cross-attention S differs from T.",
}


def _mha(
    xq: Tensor, xkv: Tensor, w: tuple[Tensor, ...], H: int, mask: Tensor | None, kind: str = ""
) -> Tensor:
    """Multi-head attention, as the reference or a likely mistake computes it."""
    w_q, w_k, w_v, w_o = w
    B, T, C = xq.shape
    S = xkv.shape[1]
    interleaved = kind == "interleaved"

    def split(x: Tensor) -> Tensor:
        if interleaved:
            return x.view(B, x.shape[1], C // H, H).permute(0, 3, 1, 2)  # (B, H, T, D)
        return x.view(B, x.shape[1], H, C // H).transpose(1, 2)  # (B, H, T, D)

    if kind == "no_transpose":
        q, k, v = (split(x @ m) for x, m in ((xq, w_q), (xkv, w_k), (xkv, w_v)))
    else:
        q, k, v = split(_linear(xq, w_q)), split(_linear(xkv, w_k)), split(_linear(xkv, w_v))
    if kind == "no_mask":
        mask = None
    elif kind == "causal_flag":
        mask = torch.ones(T, S, dtype=torch.bool).tril()  # (T, S), as is_causal=True
    elif kind == "inverted" and mask is not None:
        mask = ~mask
    scale = {"scale_by_c": 1 / math.sqrt(C), "no_scale": 1.0}.get(kind)
    heads = _sdpa(q, k, v, mask, scale=scale)  # (B, H, T, D)
    if kind == "merge_order":
        merged = heads.reshape(B, T, C)
    elif interleaved:
        merged = heads.permute(0, 2, 3, 1).reshape(B, T, C)  # (B, T, D, H) -> (B, T, C)
    else:
        merged = heads.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
    if kind == "no_out_proj":
        return merged
    return merged @ w_o if kind == "no_transpose" else _linear(merged, w_o)


def _mha_weights(draw: Draw, C: int) -> tuple[Tensor, ...]:
    return tuple(draw.normal(C, C, scale=C**-0.5) for _ in range(4))


def _mha_hidden(draw: Draw) -> list[tuple]:
    """(x_q, x_kv, weights, H, mask): cross-attention with T != S and a random non-causal mask
    first (several heads at least 2 wide: every mistake differs), then padding masks (B, 1, 1,
    S), a causal mask combined with padding, and no mask on a single query."""
    T, S = _draw_sizes(draw, 2, 7, 2)
    H, D = draw.choice([h for h in range(2, 5) if h not in (T, S)]), draw.integer(2, 5)
    B = draw.integer(1, 3)
    cross = (
        draw.normal(B, T, H * D, grad=True),
        draw.normal(B, S, H * D, grad=True),
        _mha_weights(draw, H * D),
        H,
        _mixed_mask(draw, T, S),
    )
    H2, D2, B2, T2 = draw.integer(2, 4), draw.integer(2, 4), draw.integer(2, 3), draw.integer(3, 6)
    x2 = draw.normal(B2, T2, H2 * D2)
    padded = (x2, x2, _mha_weights(draw, H2 * D2), H2, _padding(draw, B2, T2)[:, None, None, :])
    H3, D3, B3, T3 = draw.integer(2, 4), draw.integer(2, 4), draw.integer(2, 3), draw.integer(3, 6)
    x3 = draw.normal(B3, T3, H3 * D3, grad=True)
    causal = _causal(T3) & _padding(draw, B3, T3)[:, None, None, :]  # (B, 1, T, T)
    both = (x3, x3, _mha_weights(draw, H3 * D3), H3, causal)
    H4, D4, S4 = draw.integer(1, 4), draw.integer(2, 4), draw.integer(2, 5)
    single = (
        draw.normal(1, 1, H4 * D4),
        draw.normal(1, S4, H4 * D4),
        _mha_weights(draw, H4 * D4),
        H4,
        None,
    )
    return [cross, padded, both, single]


def _check_mha_case(
    ex: Exercise,
    fn: Callable,
    xq: Tensor,
    xkv: Tensor,
    w: tuple[Tensor, ...],
    H: int,
    mask: Tensor | None,
) -> None:
    out = ex.call(fn, xq, xkv, *w, H, mask, hints=MHA_ERRORS)
    expected = _mha(xq, xkv, w, H, mask)
    (B, T, C), S = xq.shape, xkv.shape[1]
    xqd, xkvd = xq.detach(), xkv.detach()
    masked = ("no_mask", "causal_flag", "inverted")  # mistakes about a mask
    kinds = [k for k in MHA_MISTAKES if mask is not None or k not in masked]
    kind = "self-attention" if xkv is xq else "cross-attention"
    what = f"multi_head_attention ({kind}) with B={B}, T={T}, S={S}, C={C}, {H} heads, " + (
        "no mask" if mask is None else f"a {tuple(mask.shape)} mask"
    )
    expect_close(
        out,
        expected,
        what=what,
        mistakes={MHA_MISTAKES[k]: (lambda k=k: _mha(xqd, xkvd, w, H, mask, k)) for k in kinds},
        atol=1e-8 if xq.dtype == torch.float64 else 1e-6,
    )
    if xq.requires_grad:
        leaves = {"x_q": xq} if xkv is xq else {"x_q": xq, "x_kv": xkv}
        ex.expect_backward(out, expected, leaves, "multi_head_attention")


def check_multi_head_attention(fn: Callable, hidden: bool = False) -> None:
    """Learner's `multi_head_attention(x_q (B, T, C), x_kv (B, S, C), w_q, w_k, w_v, w_o,
    n_heads, mask=None) -> (B, T, C)`, weights (C, C) in nn.Linear layout, no biases, the mask
    boolean (True = may attend) and broadcastable to (B, H, T, S)."""
    with Exercise("multi_head_attention", hidden, MHA_FORBIDDEN) as ex:
        if hidden:
            cases = _mha_hidden(ex.draw)
        else:  # self-attention, B = 2, T = 3, C = 8, two heads
            x = random_tensor(2, 3, 8, seed=0)
            w = tuple(random_tensor(8, 8, seed=20 + i) / math.sqrt(8) for i in range(4))
            cases = [(x, x, w, 2, None)]
        for case in cases:
            _check_mha_case(ex, fn, *case)


# --- 8. Linear attention ------------------------------------------------------------------------

LINEAR_FORBIDDEN = (
    Forbidden(python=(attention.linear_attention, attention.elu_feature_map)) + ATTENTION_FORBIDDEN
)

LINEAR_MISTAKES = {
    "no_normalizer": "the normalizer is missing: divide by phi(q_t) . sum_s phi(k_s), so each "
    "query's weights sum to 1.",
    "relu": "the feature map is phi(x) = elu(x) + 1 (positive everywhere), not relu.",
    "identity": "apply the feature map phi(x) = elu(x) + 1 to the queries and keys.",
    "elu": "the feature map is elu(x) + 1: elu alone is negative for x < 0, so the weights "
    "may be negative and the normalizer near 0.",
}


_LINEAR_LEADING = (
    "the inputs may have any number of leading dimensions, (..., T, D): transpose the last two "
    "axes of k with k.transpose(-2, -1), not k.transpose(1, 2), and keep the normalizer's last "
    "axis, (..., T, 1), so that it divides every value column."
)
LINEAR_ERRORS = {
    "dimension out of range": _LINEAR_LEADING,
    "must match the size": _LINEAR_LEADING,
    "expected size for first two dimensions": _LINEAR_LEADING,
    "einsum": ATTENTION_ERRORS["einsum"],
}


def _linear_variant(q: Tensor, k: Tensor, v: Tensor, kind: str) -> Tensor:
    phi = {"relu": _relu, "identity": lambda x: x, "elu": _elu}.get(kind, lambda x: _elu(x) + 1)
    pq, pk = phi(q), phi(k)
    numerator = pq @ (pk.transpose(-2, -1) @ v)  # (..., T, Dv)
    if kind == "no_normalizer":
        return numerator
    return numerator / (pq @ pk.sum(dim=-2).unsqueeze(-1) + 1e-6)


def _linear_hidden(draw: Draw) -> list[tuple[Tensor, Tensor, Tensor]]:
    """(q, k, v): T, S, D and Dv all different (>= 4, more than any leading size), so that a
    (T, S) or (S, T) matrix can only be the attention matrix."""
    cases = []
    for lead, grad in (([draw.integer(1, 3), draw.integer(1, 3)], True), ([2], False), ([], False)):
        T, S, D, Dv = _draw_sizes(draw, 4, 12, 4)
        cases.append(
            (
                draw.normal(*lead, T, D, grad=grad),
                draw.normal(*lead, S, D, grad=grad),
                draw.normal(*lead, S, Dv, grad=grad),
            )
        )
    return cases


def _call_linear(ex: Exercise, fn: Callable, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The learner's linear attention, refused if it builds the (T, S) attention matrix."""
    T, S = q.shape[-2], k.shape[-2]
    try:
        return ex.call(fn, q, k, v, shapes=[(T, S), (S, T)], hints=LINEAR_ERRORS)
    except ExerciseError as error:
        if not error.what.startswith(FORBIDDEN_PREFIX) or "which built a" not in error.what:
            raise
    raise ExerciseError(
        f"{FORBIDDEN_PREFIX} your linear_attention built the attention matrix (T x S = "
        f"{T} x {S}, or its transpose) for q {tuple(q.shape)} and k {tuple(k.shape)}: linear "
        "attention never forms the T x S attention matrix, which is what makes its cost "
        "linear in the length",
        hint="compute phi(K)^T V (D x Dv) and the sum of phi(K) over the keys first, then "
        "multiply phi(Q) by them: phi(Q) (phi(K)^T V) / (phi(Q) sum_s phi(k_s)).",
        likely=False,
    )


def _check_linear_case(ex: Exercise, fn: Callable, q: Tensor, k: Tensor, v: Tensor) -> None:
    out = _call_linear(ex, fn, q, k, v)
    expected = _linear_attention(q, k, v)
    qd, kd, vd = q.detach(), k.detach(), v.detach()
    expect_close(
        out,
        expected,
        what=f"linear_attention for q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}",
        mistakes={
            hint: (lambda kind=kind: _linear_variant(qd, kd, vd, kind))
            for kind, hint in LINEAR_MISTAKES.items()
        },
        atol=1e-6,
        rtol=1e-5,
    )
    if q.requires_grad:
        ex.expect_backward(out, expected, {"q": q, "k": k, "v": v}, "linear_attention", atol=1e-6)


def check_linear_attention(fn: Callable, hidden: bool = False) -> None:
    """Learner's `linear_attention(q (..., T, D), k (..., S, D), v (..., S, Dv)) -> (..., T, Dv)`,
    non-causal, feature map elu(x) + 1, without building the (T, S) attention matrix."""
    with Exercise("linear_attention", hidden, LINEAR_FORBIDDEN + _flex()) as ex:
        if hidden:
            cases = _linear_hidden(ex.draw)
        else:  # B = 2, T = S = 5, D = 4, Dv = 3
            cases = [
                tuple(
                    random_tensor(*shape, seed=100 + i)
                    for i, shape in enumerate(((2, 5, 4), (2, 5, 4), (2, 5, 3)))
                )
            ]
        for q, k, v in cases:
            _check_linear_case(ex, fn, q, k, v)


watch_module(__name__)
