"""Checks for the exercises on the modern decoder (solutions/06_generative/03_modern_decoder).

Each `check_*` takes the learner's function. With `hidden=False` it runs the visible tests (the
notebook's worked examples); with `hidden=True` the hidden ones: property tests on sizes and
values drawn when they run (`tutorlib.checks.draw`), with the special cases that tell the likely
mistakes apart in every draw (an offset that is not 0, query heads that share a key-value head
two by two, a cache and several new tokens at once, an epsilon large enough to show where it
sits). While the learner's code runs, tutorlib's reference (`tutorlib.embeddings` for rotary
positions, `tutorlib.layers` for RMSNorm and SwiGLU, `tutorlib.attention` for grouped-query
attention, its causal mask and its cache), every torch operator that computes the same thing
(the normalisations, the fused attention kernels) and, when the learner has loaded
`transformers`, Hugging Face's Llama functions for the same steps are out of reach
(`tutorlib.checks.guard`). SiLU, sigmoid, `repeat_interleave` and complex numbers stay allowed:
the exercises are the rotation, the norm, the gated product and the cached, grouped attention.

Book: Chapter 6 exercises (6.7 The modern decoder; 4.5 The KV cache; 4.8 Long contexts).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tutorlib import attention, embeddings, inference, layers, models
from tutorlib.checks import (
    Draw,
    Exercise,
    ExerciseError,
    Forbidden,
    expect_close,
    expect_equal,
    random_tensor,
    watch_module,
)
from tutorlib.checks.foundations import NORMALISATIONS
from tutorlib.checks.generative import _hugging_face, _named
from tutorlib.checks.guard import ATTENTION_KERNELS, MULTI_HEAD_KERNELS

__all__ = [
    "check_apply_rope",
    "check_gqa_cached_step",
    "check_rms_norm",
    "check_rope_angles",
    "check_swiglu",
]

# References, taken at import time (before any learner code runs).
_rotary_angles, _apply_rotary = embeddings.rotary_angles, embeddings.apply_rotary
_rms_norm, _swiglu = layers.rms_norm, layers.swiglu
_grouped_query_attention, _causal_mask = attention.grouped_query_attention, attention.causal_mask
_cat, _stack, _softmax, _isclose = torch.cat, torch.stack, torch.softmax, torch.isclose
_linear, _silu, _sigmoid, _relu, _gelu = F.linear, F.silu, torch.sigmoid, F.relu, F.gelu
_F64 = torch.float64

_LLAMA = "transformers.models.llama.modeling_llama"


def _close(a: Tensor, b: Tensor, atol: float, rtol: float = 0.0) -> bool:
    return a.shape == b.shape and bool(_isclose(a.double(), b.double(), rtol, atol).all())


def _expect_tensor(value: Any, shape: tuple[int, ...], what: str, hints: dict) -> Tensor:
    """`value` as a tensor of `shape`, or a failure; `hints` maps a wrong shape to its mistake."""
    if not isinstance(value, Tensor):
        raise ExerciseError(f"{what} should be a torch.Tensor", got=type(value).__name__)
    if tuple(value.shape) != shape:
        hint = hints.get(tuple(value.shape))
        raise ExerciseError(
            f"{what} has shape {tuple(value.shape)}",
            hint=hint or f"the result should have shape {shape}.",
            likely=hint is not None,
        )
    return value


# --- 1. The rotary angles ------------------------------------------------------------------------

# tutorlib's tables, the sinusoidal encoding (the same frequencies), the model's helper and
# Hugging Face's Llama rotary embedding when loaded
ANGLES_FORBIDDEN = (
    embeddings.rotary_angles,
    embeddings.apply_rotary,
    embeddings.sinusoidal_encoding,
    embeddings.SinusoidalPositionalEncoding,
    models._rotary,
)


def _angles(T: int, D: int, offset: int, base: float, kind: str = "") -> Tensor:
    """(cos, sin) stacked, (2, T, D/2), as the reference computes them or a mistake does."""
    start = {"ignored": 0, "from_one": offset + 1}.get(kind, offset)
    position = torch.arange(start, start + T, dtype=_F64)  # (T,)
    j = torch.arange(D // 2, dtype=_F64) + (1 if kind == "j_from_one" else 0)  # (D/2,)
    exponent = {"j_over_d": -j / D, "positive": 2 * j / D}.get(kind, -2 * j / D)
    angles = position[:, None] * base**exponent  # (T, D/2)
    cos, sin = angles.cos(), angles.sin()
    return _stack((sin, cos) if kind == "swapped" else (cos, sin))


ANGLES_MISTAKES = {
    "ignored": "the offset is ignored: the positions are offset, offset + 1, ..., offset + T - 1 "
    "(the new tokens of a cached step come after the cached ones), not 0 .. T - 1.",
    "from_one": "the positions start at 1; the first position is offset (0 without an offset): "
    "torch.arange(offset, offset + T).",
    "j_over_d": "the frequencies are base^(-j / D); pair j turns at base^(-2j / D): the exponent "
    "counts the dimensions 0, 2, 4, ... (torch.arange(0, D, 2) / D), not the pairs.",
    "positive": "the exponent has the wrong sign: theta_j = base^(-2j / D) gets slower with j "
    "(pair 0 turns by one radian per position, the last pair barely turns).",
    "j_from_one": "the pairs are numbered from 1; pair 0 has theta_0 = base^0 = 1 (it turns by one "
    "radian per position): j = 0 .. D/2 - 1.",
    "swapped": "cos and sin are swapped: return (cos, sin), in that order.",
}

FLOAT32_HINT = (
    "part of the computation ran in float32 (torch.arange(T) / D, or a tensor made without "
    "dtype=, is float32): make the positions and the frequencies float64 (dtype=torch.float64) "
    "before multiplying; at large positions float32's rounding moves the angles visibly."
)


def _angles_hidden(draw: Draw) -> list[tuple[int, int, int, float]]:
    """(T, D, offset, base): first an offset of 2 or more and D >= 4 (every mistake gives its
    own tables), then no offset, a pair of dimensions only (D = 2), one position far into a
    long context, and Llama 3's base."""
    return [
        (draw.integer(2, 9), 2 * draw.integer(2, 8), draw.integer(2, 40),
         draw.choice([1e4, 100.0])),
        (draw.integer(1, 6), 2 * draw.integer(1, 6), 0, 1e4),
        (draw.integer(2, 6), 2, draw.integer(1, 20), 1e4),
        (1, 2 * draw.integer(4, 32), draw.integer(1000, 4000), 1e4),
        (draw.integer(2, 8), 2 * draw.integer(2, 16), draw.integer(0, 500), 5e5),
    ]  # fmt: skip


def _check_angles_case(
    ex: Exercise, fn: Callable, T: int, D: int, offset: int, base: float
) -> None:
    out = ex.call(fn, T, D, offset=offset, base=base)
    what = f"rope_angles(T={T}, D={D}, offset={offset}, base={base:g})"
    if not isinstance(out, tuple | list) or len(out) != 2:
        raise ExerciseError(f"{what} should return a pair (cos, sin)", got=type(out).__name__)
    tables = []
    for name, table in zip(("cos", "sin"), out, strict=True):
        table = _expect_tensor(
            table,
            (T, D // 2),
            f"the {name} table of {what}",
            {
                (T, D): "one angle per pair of dimensions: the tables are (T, D/2) (apply_rope "
                "uses each angle for both dimensions of its pair)."
            },
        )
        if table.dtype != _F64:
            raise ExerciseError(
                f"the {name} table of {what} has dtype {table.dtype}, not torch.float64",
                hint=FLOAT32_HINT,
                likely=False,
            )
        tables.append(table.detach())
    got = _stack(tables)  # (2, T, D/2)
    expected = _stack(_rotary_angles(T, D, base, offset, dtype=_F64))
    mistakes = {hint: _angles(T, D, offset, base, kind) for kind, hint in ANGLES_MISTAKES.items()}
    try:
        expect_close(
            got, expected, what=f"(cos, sin) of {what}", mistakes=_named(mistakes), atol=1e-9
        )
    except ExerciseError as error:
        if "differs from the expected" in error.what and _close(got, expected, 2e-3):
            raise ExerciseError(
                f"(cos, sin) of {what} differs from the expected values by about float32's "
                "rounding",
                hint=FLOAT32_HINT,
            ) from None
        raise


def check_rope_angles(fn: Callable, hidden: bool = False) -> None:
    """Learner's `rope_angles(T, D, offset=0, base=10000.0) -> (cos, sin)`, each (T, D/2)
    float64: the angles (offset + t) * base^(-2j / D)."""
    forbidden = Forbidden(
        python=ANGLES_FORBIDDEN + _hugging_face(_LLAMA, ("LlamaRotaryEmbedding",))
    )
    with Exercise("rope_angles", hidden, forbidden) as ex:
        visible = [(4, 8, 0, 1e4), (3, 8, 5, 1e4)]
        for case in _angles_hidden(ex.draw) if hidden else visible:
            _check_angles_case(ex, fn, *case)


# --- 2. Applying the rotation --------------------------------------------------------------------

ROTATE_FORBIDDEN = (embeddings.apply_rotary, embeddings.rotary_angles, attention.MultiHeadAttention)


def _pairs_adjacent(x: Tensor) -> Tensor:
    """(-x_2j+1, x_2j) in place of (x_2j, x_2j+1): a quarter turn of every adjacent pair."""
    return _stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)


def _pairs_halves(x: Tensor) -> Tensor:
    """(-x_j+D/2, x_j): a quarter turn of the pairs (j, j + D/2), GPT-NeoX's rotate_half."""
    half = x.shape[-1] // 2
    return _cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotated(x: Tensor, cos: Tensor, sin: Tensor, kind: str = "") -> Tensor:
    """x turned by the angles, or as a likely mistake turns it: x * cos + quarter(x) * sin,
    with the tables laid out per dimension."""
    if kind == "not_in_place":
        even, odd = x[..., 0::2], x[..., 1::2]
        return _cat((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    halves = kind in ("halves", "halves_interleaved_tables")
    doubled = kind in ("halves", "adjacent_doubled_tables")  # [t_0 .. t_D/2-1, t_0 .. t_D/2-1]
    c, s = (_cat((t, t), dim=-1) if doubled else t.repeat_interleave(2, -1) for t in (cos, sin))
    if kind == "backwards":
        s = -s
    return x * c + (_pairs_halves(x) if halves else _pairs_adjacent(x)) * s


HALVES_HINT = (
    "you paired dimension j with j + D/2 (rotate_half: the GPT-NeoX and Hugging Face Llama "
    "layout). That is the same rotation after a fixed permutation of the dimensions, not wrong "
    "in itself, but it is not this exercise's convention (nor the RoPE paper's, nor tutorlib's): "
    "pair neighbours, (2j, 2j + 1), i.e. x[..., 0::2] with x[..., 1::2]."
)
ROTATE_MISTAKES = {
    "halves": HALVES_HINT,
    "backwards": "the pairs turn backwards (the sign of sin is flipped): (x_2j, x_2j+1) becomes "
    "(x_2j cos - x_2j+1 sin, x_2j sin + x_2j+1 cos), the complex product "
    "(x_2j + i x_2j+1) e^(i angle).",
    "adjacent_doubled_tables": "the tables were doubled end to end (torch.cat([cos, cos]) or "
    ".repeat(1, 2): the layout for split halves) while the pairs are neighbours: dimensions "
    "2j and 2j + 1 share angle j, so repeat each angle in place, "
    "cos.repeat_interleave(2, dim=-1).",
    "halves_interleaved_tables": "the pairs are split halves (j, j + D/2) but the tables were "
    "repeated in place (repeat_interleave): two conventions mixed. Pair neighbours, "
    "(2j, 2j + 1), each pair turned by its own angle j.",
    "not_in_place": "the turned pairs were put back as [all first elements, all second elements] "
    "(torch.cat); each pair goes back to its own place, 2j and 2j + 1: "
    "torch.stack((first, second), dim=-1).flatten(-2).",
}

ROTATE_ERRORS = {
    "in-place operation": "x was changed in place (x[..., 0::2] = ...): build a new tensor "
    "(torch.stack, torch.cat) or work on x.clone().",
    "must match the size": "cos and sin are (T, D/2), one angle per pair: they broadcast "
    "against x[..., 0::2] (B, H, T, D/2), or, repeated in place "
    "(repeat_interleave(2, dim=-1)), against x (B, H, T, D).",
}


def _rope_tables(draw: Draw, T: int, D: int, random: bool = False) -> tuple[Tensor, Tensor]:
    if random:  # any angles, not those of positions
        angles = draw.uniform(T, D // 2, low=-math.pi, high=math.pi)
        return angles.cos(), angles.sin()
    offset = draw.integer(1, 200)
    return _rotary_angles(T, D, draw.choice([1e4, 100.0]), offset, dtype=_F64)


def _rope_hidden(draw: Draw) -> list[tuple[Tensor, Tensor, Tensor]]:
    """(x, cos, sin): first several heads, D >= 4 and positions past 0 (every mistake turns
    differently), with gradients; then random angles, one position, and D = 2 (where split
    halves and neighbours are the same pair)."""
    cases = []
    for B, H, T, D, random in (
        (draw.integer(1, 3), draw.integer(2, 4), draw.integer(2, 6), 2 * draw.integer(2, 6), False),
        (draw.integer(1, 2), draw.integer(1, 3), draw.integer(2, 5), 2 * draw.integer(2, 8), True),
        (draw.integer(1, 3), draw.integer(1, 4), 1, 2 * draw.integer(2, 8), False),
        (draw.integer(1, 2), draw.integer(1, 3), draw.integer(2, 5), 2, False),
    ):  # fmt: skip
        x = draw.normal(B, H, T, D, grad=not cases)
        cases.append((x, *_rope_tables(draw, T, D, random)))
    return cases


def _check_rope_case(ex: Exercise, fn: Callable, x: Tensor, cos: Tensor, sin: Tensor) -> None:
    out = ex.call(fn, x, cos, sin, hints=ROTATE_ERRORS)
    expected = _apply_rotary(x, cos, sin)
    xd = x.detach()
    mistakes = {hint: _rotated(xd, cos, sin, kind) for kind, hint in ROTATE_MISTAKES.items()}
    expect_close(
        out,
        expected,
        what=f"apply_rope on x of shape {tuple(x.shape)}",
        mistakes=_named(mistakes),
        atol=1e-10,
        rtol=1e-8,
    )
    if x.requires_grad:
        ex.expect_backward(out, expected, {"x": x}, "apply_rope")


def check_apply_rope(fn: Callable, hidden: bool = False) -> None:
    """Learner's `apply_rope(x (B, H, T, D), cos (T, D/2), sin (T, D/2)) -> (B, H, T, D)`:
    every adjacent pair (2j, 2j + 1) of every position t turned by its angle."""
    hugging_face = _hugging_face(_LLAMA, ("apply_rotary_pos_emb", "rotate_half"))
    forbidden = Forbidden(python=ROTATE_FORBIDDEN + hugging_face)
    with Exercise("apply_rope", hidden, forbidden) as ex:
        if hidden:
            cases = _rope_hidden(ex.draw)
        else:  # one sequence, 2 heads, 3 positions, D = 4
            cases = [(random_tensor(1, 2, 3, 4, seed=0), *_rotary_angles(3, 4, dtype=_F64))]
        for case in cases:
            _check_rope_case(ex, fn, *case)


# --- 3. RMSNorm -----------------------------------------------------------------------------------

# tutorlib's norms, torch's (every normalisation operator: a layer norm of [x, -x] is an RMS
# norm) and Hugging Face's Llama RMSNorm when loaded
RMS_FORBIDDEN = Forbidden(
    python=(
        layers.rms_norm,
        layers.RMSNorm,
        layers._RMSNormFunction,  # RMSNorm's float32/float64 path, its gradient written out
        layers.layer_norm,
        layers.LayerNorm,
        layers.make_norm,
        nn.RMSNorm,
        nn.LayerNorm,
    ),
    ops=NORMALISATIONS,
)


def _rms_variant(x: Tensor, w: Tensor, eps: float, kind: str) -> Tensor:
    """RMSNorm as a likely mistake computes it."""
    dim = {"dim0": 0, "dim1": 1, "all": tuple(range(x.dim()))}.get(kind, -1)
    square = (x * x).mean(dim, keepdim=True)  # mean(x^2)
    if kind == "layer_norm":
        centred = x - x.mean(-1, keepdim=True)
        return centred / torch.sqrt((centred * centred).mean(-1, keepdim=True) + eps) * w
    if kind == "std":
        return x / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + eps) * w
    if kind == "std_unbiased":  # the Annotated Transformer's LayerNorm, without the mean
        return x / (x.std(-1, keepdim=True) + eps) * w
    if kind == "sum":
        square = (x * x).sum(-1, keepdim=True)
    scale = {
        "eps_outside": 1 / (square.sqrt() + eps),
        "no_root": 1 / (square + eps),
        "no_eps": 1 / square.sqrt(),
    }.get(kind, torch.rsqrt(square + eps))
    normalized = x * scale
    return {
        "no_weight": normalized,
        "one_plus_weight": normalized * (1 + w),
        "weight_added": normalized + w,
    }.get(kind, normalized * w)


RMS_MISTAKES = {
    "layer_norm": "the mean was subtracted: that is layer norm. RMSNorm divides x itself by its "
    "root mean square, sqrt(mean(x^2) + eps), and subtracts nothing.",
    "std": "x was divided by its standard deviation (x.var subtracts the mean inside); RMSNorm "
    "divides by the root mean square, sqrt(mean(x^2) + eps).",
    "std_unbiased": "x was divided by x.std() + eps, its (unbiased) standard deviation; RMSNorm "
    "divides by the root mean square, with eps inside the root: sqrt(mean(x^2) + eps).",
    "eps_outside": "eps belongs inside the square root: x / sqrt(mean(x^2) + eps), not "
    "x / (sqrt(mean(x^2)) + eps).",
    "no_root": "x was divided by the mean square; take its square root: x / sqrt(mean(x^2) + eps).",
    "no_eps": "eps is missing (F.normalize, or x.norm(), leaves it out or puts it elsewhere): "
    "x / sqrt(mean(x^2) + eps) * weight.",
    "sum": "the squares were summed; RMSNorm takes their mean over the C features.",
    "no_weight": "the learned gain is missing: multiply the normalised x by weight.",
    "one_plus_weight": "the gain was used as (1 + weight) (Gemma's convention); here it "
    "multiplies as it is: x / sqrt(mean(x^2) + eps) * weight.",
    "weight_added": "the gain multiplies (x_hat * weight); it was added.",
    "dim0": "the mean runs over the wrong axis (dim 0); normalise each token's features, the last "
    "dimension (dim=-1).",
    "dim1": "the mean runs over dim 1; normalise over the last dimension (dim=-1): dim=1 is the "
    "last one only for a 2-D input.",
    "all": "the mean runs over every dimension; normalise each token's features only, the last "
    "dimension (dim=-1, keepdim=True).",
}


def _rms_hidden(draw: Draw) -> list[tuple[Tensor, Tensor, float]]:
    """(x, weight, eps): first a large eps and rows whose mean is far from 0 (every mistake
    shows), with gradients; then Llama's eps with rows of small values (where eps matters),
    a row of zeros (zeros out, not NaN), three dimensions (dim 1 is not the last) and float32."""

    def gain(C: int, grad: bool = False) -> Tensor:
        return (1 + 0.5 * draw.normal(C)).requires_grad_(grad)

    C1, C2, C3 = draw.integer(3, 12), draw.integer(2, 12), draw.integer(2, 9)
    first = draw.normal(draw.integer(2, 4), draw.integer(2, 5), C1) + draw.real(0.5, 2.0)
    small = 1e-3 * draw.normal(draw.integer(2, 5), C2)
    zeros = draw.normal(draw.integer(2, 4), C3)
    zeros[draw.integer(0, zeros.shape[0] - 1)] = 0.0
    float32 = draw.normal(draw.integer(1, 3), draw.integer(2, 4), C3).float()
    return [
        (first.requires_grad_(True), gain(C1, grad=True), draw.real(0.1, 1.0)),
        (small, gain(C2), 1e-6),
        (zeros, gain(C3), 1e-5),
        (draw.normal(draw.integer(2, 4), draw.integer(2, 4), C3), gain(C3), 1e-6),
        (float32, gain(C3).float(), 1e-5),
    ]


def _check_rms_case(ex: Exercise, fn: Callable, x: Tensor, w: Tensor, eps: float) -> None:
    out = ex.call(fn, x, w, eps=eps)
    expected = _rms_norm(x, w.shape, w, eps)
    xd, wd = x.detach(), w.detach()
    mistakes = {hint: _rms_variant(xd, wd, eps, kind) for kind, hint in RMS_MISTAKES.items()}
    expect_close(
        out,
        expected,
        what=f"rms_norm on a {tuple(x.shape)} input with eps={eps:.3g}",
        mistakes=_named(mistakes),
        atol=1e-5 if x.dtype == torch.float32 else 1e-10,
        rtol=1e-5 if x.dtype == torch.float32 else 1e-7,
    )
    if x.requires_grad:
        ex.expect_backward(out, expected, {"x": x, "weight": w}, "rms_norm")


def check_rms_norm(fn: Callable, hidden: bool = False) -> None:
    """Learner's `rms_norm(x (..., C), weight (C,), eps=1e-6) -> (..., C)`:
    x / sqrt(mean(x^2) + eps) * weight over the last dimension."""
    forbidden = RMS_FORBIDDEN + Forbidden(python=_hugging_face(_LLAMA, ("LlamaRMSNorm",)))
    with Exercise("rms_norm", hidden, forbidden) as ex:
        if hidden:
            cases = _rms_hidden(ex.draw)
        else:  # [1, -1, 1, -1] has RMS 1 (and mean 0); [2, 4, 4, 2] has RMS sqrt(10)
            worked = torch.tensor([[1.0, -1.0, 1.0, -1.0], [2.0, 4.0, 4.0, 2.0]], dtype=_F64)
            cases = [
                (worked, torch.ones(4, dtype=_F64), 1e-6),
                (random_tensor(2, 3, 5, seed=1), 1 + random_tensor(5, seed=2) / 2, 1e-6),
            ]
        for x, w, eps in cases:
            _check_rms_case(ex, fn, x, w, eps)


# --- 4. SwiGLU ------------------------------------------------------------------------------------

SWIGLU_FORBIDDEN = (
    layers.swiglu,
    layers.SwiGLU,
    layers.FeedForward,
    layers.make_feed_forward,
)


def _swiglu_variant(x: Tensor, g: Tensor, u: Tensor, d: Tensor, kind: str) -> Tensor | None:
    """SwiGLU as a likely mistake computes it (None where it cannot be computed)."""
    if kind == "not_transposed":
        if not g.shape[0] == g.shape[1]:
            return None
        return (_silu(x @ g) * (x @ u)) @ d
    gate, up = _linear(x, g), _linear(x, u)  # (..., F)
    hidden = {
        "swapped": lambda: _silu(up) * gate,
        "sigmoid": lambda: _sigmoid(gate) * up,
        "relu": lambda: _relu(gate) * up,
        "gelu": lambda: _gelu(gate) * up,
        "silu_of_product": lambda: _silu(gate * up),
        "no_gate": lambda: _silu(up),
        "gate_only": lambda: _silu(gate),
    }.get(kind, lambda: _silu(gate) * up)()
    if kind == "no_down":
        return hidden if hidden.shape == x.shape else None
    return _linear(hidden, d)


SWIGLU_MISTAKES = {
    "swapped": "the SiLU went on the up projection: it belongs on the gate, "
    "silu(x @ gate_weight.T) * (x @ up_weight.T).",
    "sigmoid": "that is GLU: the gate goes through SiLU (z * sigmoid(z)), not through a sigmoid.",
    "relu": "that is ReGLU: the gate goes through SiLU (z * sigmoid(z)), not ReLU.",
    "gelu": "that is GEGLU: the gate goes through SiLU (z * sigmoid(z)), not GELU.",
    "silu_of_product": "the SiLU was applied to the product; apply it to the gate alone, then "
    "multiply by the up projection: silu(gate) * up.",
    "no_gate": "the gate is missing: silu(x @ gate_weight.T) multiplies x @ up_weight.T.",
    "gate_only": "the up projection is missing: silu(x @ gate_weight.T) multiplies "
    "x @ up_weight.T.",
    "not_transposed": "nn.Linear stores its weight as (out_features, in_features): compute "
    "x @ gate_weight.T, x @ up_weight.T and hidden @ down_weight.T.",
    "no_down": "the down projection is missing: the gated hidden layer (..., d_ff) goes back to "
    "(..., C) through hidden @ down_weight.T.",
}

SWIGLU_ERRORS = {
    "cannot be multiplied": "nn.Linear stores its weight as (out_features, in_features): compute "
    "x @ gate_weight.T and x @ up_weight.T, then hidden @ down_weight.T.",
}


def _swiglu_weights(draw: Draw, C: int, F_: int, grad: bool = False) -> tuple[Tensor, ...]:
    return (
        draw.normal(F_, C, scale=C**-0.5, grad=grad),
        draw.normal(F_, C, scale=C**-0.5, grad=grad),
        draw.normal(C, F_, scale=F_**-0.5, grad=grad),
    )


def _swiglu_hidden(draw: Draw) -> list[tuple[Tensor, ...]]:
    """(x, gate, up, down): first d_ff != C with gradients for x and the weights; then
    d_ff = C (a missing .T or down projection shows only in the values), and two dimensions."""
    C, F_ = draw.integer(2, 8), draw.integer(9, 24)
    square, C3 = draw.integer(2, 8), draw.integer(2, 6)
    x = draw.normal(draw.integer(1, 3), draw.integer(2, 5), C, scale=1.5, grad=True)
    return [
        (x, *_swiglu_weights(draw, C, F_, grad=True)),
        (draw.normal(draw.integer(1, 3), draw.integer(2, 5), square),
         *_swiglu_weights(draw, square, square)),
        (draw.normal(draw.integer(2, 7), C3), *_swiglu_weights(draw, C3, 3 * C3)),
    ]  # fmt: skip


def _check_swiglu_case(
    ex: Exercise, fn: Callable, x: Tensor, g: Tensor, u: Tensor, d: Tensor
) -> None:
    out = ex.call(fn, x, g, u, d, hints=SWIGLU_ERRORS)
    expected = _swiglu(x, g, u, d)
    C, F_ = x.shape[-1], g.shape[0]
    what = f"swiglu on a {tuple(x.shape)} input with d_ff = {F_}"
    if isinstance(out, Tensor) and F_ != C and tuple(out.shape) == (*x.shape[:-1], F_):
        raise ExerciseError(f"{what} has shape {tuple(out.shape)}", hint=SWIGLU_MISTAKES["no_down"])
    xd, gd, ud, dd = (t.detach() for t in (x, g, u, d))
    mistakes = {
        hint: _swiglu_variant(xd, gd, ud, dd, kind) for kind, hint in SWIGLU_MISTAKES.items()
    }
    expect_close(out, expected, what=what, mistakes=_named(mistakes), atol=1e-10, rtol=1e-8)
    if x.requires_grad:
        leaves = {"x": x, "gate_weight": g, "up_weight": u, "down_weight": d}
        ex.expect_backward(out, expected, leaves, "swiglu")


def check_swiglu(fn: Callable, hidden: bool = False) -> None:
    """Learner's `swiglu(x (..., C), gate_weight (d_ff, C), up_weight (d_ff, C),
    down_weight (C, d_ff)) -> (..., C)`: down(silu(x gate^T) * (x up^T))."""
    forbidden = Forbidden(python=SWIGLU_FORBIDDEN + _hugging_face(_LLAMA, ("LlamaMLP",)))
    with Exercise("swiglu", hidden, forbidden) as ex:
        if hidden:
            cases = _swiglu_hidden(ex.draw)
        else:  # C = 4, d_ff = 6, a batch of 2 sequences of 3 tokens
            weights = (
                random_tensor(6, 4, seed=1) / 2,
                random_tensor(6, 4, seed=2) / 2,
                random_tensor(4, 6, seed=3) / math.sqrt(6),
            )
            cases = [(random_tensor(2, 3, 4, seed=0), *weights)]
        for case in cases:
            _check_swiglu_case(ex, fn, *case)


# --- 5. A grouped-query attention step with a cache -----------------------------------------------

GQA_FORBIDDEN = Forbidden(
    python=(
        attention.grouped_query_attention,
        attention.scaled_dot_product_attention,
        attention._attention_written_out,
        attention.causal_mask,
        attention.KVCache,
        attention.MultiHeadAttention,
        inference.cached_self_attention,
        inference.decode_step,
        nn.MultiheadAttention,
        F.multi_head_attention_forward,
    ),
    ops=ATTENTION_KERNELS + MULTI_HEAD_KERNELS,
)


def _gqa_step(
    q: Tensor, k_new: Tensor, v_new: Tensor, past_k: Tensor | None, past_v: Tensor | None,
    kind: str = "",
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """The step written out, or as a likely mistake takes it: (out, keys, values)."""
    if past_k is None:
        keys, values = k_new, v_new
    elif kind == "new_first":
        keys, values = _cat([k_new, past_k], dim=2), _cat([v_new, past_v], dim=2)
    else:
        keys, values = _cat([past_k, k_new], dim=2), _cat([past_v, v_new], dim=2)
    seen_k, seen_v = (k_new, v_new) if kind == "new_only" else (keys, values)
    B, H, t, D = q.shape
    H_kv, S = keys.shape[1], seen_k.shape[2]
    G = H // H_kv
    if kind == "repeat":  # query head h reads key-value head h % H_kv
        k, v = seen_k.repeat(1, G, 1, 1), seen_v.repeat(1, G, 1, 1)
    else:  # query head h reads key-value head h // G
        k, v = seen_k.repeat_interleave(G, dim=1), seen_v.repeat_interleave(G, dim=1)
    scale = {"no_scale": 1.0, "by_d": 1 / D}.get(kind, 1 / math.sqrt(D))
    scores = q @ k.transpose(-2, -1) * scale  # (B, H, t, S)
    p = S - t
    diagonal = {"top_left": 0, "excludes_self": p - 1, "sees_next": p + 1}.get(kind, p)
    if kind != "no_mask":
        allowed = torch.ones(t, S, dtype=torch.bool).tril(diagonal=diagonal)  # (t, S)
        scores = scores.masked_fill(~allowed, -math.inf)
    weights = _softmax(scores, dim=-2 if kind == "wrong_axis" else -1)
    return weights @ v, keys, values  # (B, H, t, D)


GQA_MISTAKES = {
    "top_left": "the causal mask is aligned to the top left (is_causal=True, or "
    "torch.ones(t, p + t).tril()): new token i sits at position p + i, after the p cached ones, "
    "and may see keys 0 .. p + i, torch.ones(t, p + t).tril(diagonal=p).",
    "excludes_self": "the mask is shifted by one: new token i must see its own key (position "
    "p + i) too, tril(diagonal=p), not tril(diagonal=p - 1).",
    "sees_next": "the mask is shifted by one: new token i sees the key of the token after it; it "
    "may see keys 0 .. p + i, tril(diagonal=p).",
    "no_mask": "the new tokens see one another's future: with several new tokens, new token i "
    "may see keys 0 .. p + i only (a causal mask aligned to the bottom right, "
    "torch.ones(t, p + t).tril(diagonal=p)).",
    "repeat": "the query heads were matched to the key-value heads with .repeat (head h read "
    "key-value head h % H_kv); the groups are consecutive: query heads g * G .. (g + 1) * G - 1 "
    "share key-value head g (G = H // H_kv), as repeat_interleave(G, dim=1) gives (Hugging "
    "Face's repeat_kv).",
    "no_scale": "the scores are not scaled: divide q k^T by sqrt(D).",
    "by_d": "the scores are divided by D; divide by sqrt(D).",
    "wrong_axis": "the softmax runs over the wrong axis: normalise over the keys (the last axis), "
    "so that each query's weights sum to 1.",
    "new_only": "the queries attend to the new keys only; they attend to the cached keys and the "
    "new ones.",
    "new_first": "the new keys were put in front of the cache; append them at the end, so that "
    "position i of the cache holds token i.",
}

REPEATED_HINT = (
    "the cache holds the keys and values repeated for every query head ({H} heads); it keeps "
    "the {H_kv} key-value heads, shared by the query heads of each group: repeat them (or split "
    "the query heads into groups) only to compute the scores. Caching the copies costs G times "
    "the memory that grouped-query attention saves."
)

NOT_APPENDED_HINT = (
    "the new keys and values were not appended to the cache: return everything cached, the past "
    "and the new positions, (B, H_kv, p + t, D)."
)

GQA_ERRORS = {
    "nonetype": "on the first step there is no cache: past_k and past_v are None, and the keys "
    "and values are k_new and v_new alone.",
    "got none": "on the first step there is no cache: past_k and past_v are None, and the keys "
    "and values are k_new and v_new alone.",
    "except in dimension 0": "the cache is appended on dim 0 (the batch axis); the time axis of "
    "a (B, H_kv, p, D) cache is dim 2.",
    "except in dimension 1": "the cache is appended on dim 1 (the heads axis); the time axis of "
    "a (B, H_kv, p, D) cache is dim 2.",
    "except in dimension 3": "the cache is appended on dim 3 (the feature axis); the time axis "
    "of a (B, H_kv, p, D) cache is dim 2.",
    "at non-singleton dimension 1": "the queries have H heads and the keys H_kv: repeat each "
    "key-value head for the G = H // H_kv query heads of its group "
    "(k.repeat_interleave(G, dim=1)), or split the query heads into groups.",
}


def _gqa_tensors(
    draw: Draw | None, B: int, H: int, H_kv: int, p: int | None, t: int, D: int
) -> list[Tensor | None]:
    """q (B, H, t, D), k_new and v_new (B, H_kv, t, D), past_k and past_v (B, H_kv, p, D) or
    None: drawn, or seeded for the visible tests."""
    shapes = [(B, H, t, D), (B, H_kv, t, D), (B, H_kv, t, D)]
    shapes += [(B, H_kv, p, D)] * 2 if p is not None else []
    if draw is None:
        tensors: list[Tensor | None] = [random_tensor(*s, seed=i) for i, s in enumerate(shapes)]
    else:
        tensors = [draw.normal(*s) for s in shapes]
    return tensors + [None, None] if p is None else tensors


def _gqa_hidden(draw: Draw) -> list[tuple[int, int, int, int | None, int, int]]:
    """(B, H, H_kv, p, t, D): first at least two key-value heads shared by groups of two or
    more query heads, a cache of two or more and three or more new tokens, not as many as the
    cached ones (every mistake shows, and an append on the wrong axis raises an error);
    then one new token, a first step with no cache, one key-value head for all (multi-query),
    one per query head (multi-head), a cache of one (where an append on the wrong axis raises
    no error) and a long cache."""

    def heads(G_low: int, G_high: int, kv_low: int, kv_high: int) -> tuple[int, int]:
        H_kv = draw.integer(kv_low, kv_high)
        return H_kv * draw.integer(G_low, G_high), H_kv

    D = lambda: draw.integer(2, 8)  # noqa: E731
    t = draw.integer(3, 5)  # (with two new tokens, a mask shifted past the diagonal hides none)
    p = draw.choice([p for p in range(2, 8) if p != t])  # (p = t: a cat on any axis works)
    return [
        (draw.integer(1, 2), *heads(2, 3, 2, 3), p, t, D()),
        (draw.integer(1, 3), *heads(2, 4, 2, 2), draw.integer(1, 8), 1, D()),
        (draw.integer(1, 2), *heads(2, 3, 1, 3), None, draw.integer(2, 5), D()),
        (draw.integer(1, 2), *heads(2, 6, 1, 1), draw.integer(1, 6), draw.integer(1, 3), D()),
        (draw.integer(1, 2), *heads(1, 1, 1, 4), draw.integer(1, 6), draw.integer(2, 3), D()),
        (draw.integer(1, 2), *heads(2, 2, 2, 2), 1, 1, D()),
        (1, *heads(2, 4, 1, 2), draw.integer(20, 48), draw.integer(1, 3), draw.integer(4, 16)),
    ]


def _gqa_outputs(out: Any) -> tuple[Any, Any, Any]:
    if not isinstance(out, tuple | list) or len(out) != 3:
        raise ExerciseError(
            "gqa_cached_step should return three tensors (out, k_all, v_all)",
            got=type(out).__name__,
        )
    return tuple(out)


def _check_gqa_case(
    ex: Exercise, fn: Callable, q: Tensor, k_new: Tensor, v_new: Tensor, past_k: Tensor | None,
    past_v: Tensor | None,
) -> None:  # fmt: skip
    B, H, t, D = q.shape
    H_kv, G = k_new.shape[1], H // k_new.shape[1]
    p = 0 if past_k is None else past_k.shape[2]
    out, k_all, v_all = _gqa_outputs(ex.call(fn, q, k_new, v_new, past_k, past_v, hints=GQA_ERRORS))
    what = (
        f"for {H} query heads, {H_kv} key-value heads, "
        + (f"a cache of {p} positions" if past_k is not None else "no cache (past None)")
        + f" and {t} new token{'s' if t > 1 else ''}"
    )
    expected_k = k_new if past_k is None else _cat([past_k, k_new], dim=2)
    expected_v = v_new if past_v is None else _cat([past_v, v_new], dim=2)
    for name, got, want, pair in (
        ("k_all", k_all, expected_k, (past_k, k_new)),
        ("v_all", v_all, expected_v, (past_v, v_new)),
    ):
        if G > 1 and isinstance(got, Tensor) and tuple(got.shape) == (B, H, p + t, D):
            raise ExerciseError(
                f"the {name} gqa_cached_step returns {what} has shape {tuple(got.shape)}",
                hint=REPEATED_HINT.format(H=H, H_kv=H_kv),
            )
        mistakes: dict[str, Any] = {}
        if past_k is not None:
            mistakes[GQA_MISTAKES["new_first"]] = _cat([pair[1], pair[0]], dim=2)
            mistakes[NOT_APPENDED_HINT] = pair[1]
            if p == 1 and t == 1:  # a cache of one position can be appended on any axis
                for dim in (0, 1, 3):
                    mistakes[GQA_ERRORS[f"except in dimension {dim}"]] = _cat(pair, dim=dim)
        expect_equal(
            got,
            want,
            what=f"the {name} gqa_cached_step returns {what}",
            mistakes=mistakes,
            dtype_hint="keep the dtype of the inputs.",
        )
    expected = _grouped_query_attention(q, expected_k, expected_v, _causal_mask(t, past=p))
    mistakes = {
        hint: _gqa_step(q, k_new, v_new, past_k, past_v, kind)[0]
        for kind, hint in GQA_MISTAKES.items()
        if kind != "new_first"
    }
    expect_close(
        out,
        expected,
        what=f"gqa_cached_step's output {what}",
        mistakes=_named(mistakes),
        atol=1e-10,
        rtol=1e-8,
    )


def check_gqa_cached_step(fn: Callable, hidden: bool = False) -> None:
    """Learner's `gqa_cached_step(q (B, H, t, D), k_new, v_new (B, H_kv, t, D), past_k,
    past_v (B, H_kv, p, D) or None) -> (out (B, H, t, D), k_all, v_all (B, H_kv, p + t, D))`:
    new token i at position p + i attends to keys 0 .. p + i, query head h to key-value head
    h // (H // H_kv)."""
    hugging_face = _hugging_face(_LLAMA, ("eager_attention_forward",))
    forbidden = GQA_FORBIDDEN + Forbidden(python=hugging_face)
    with Exercise("gqa_cached_step", hidden, forbidden) as ex:
        if hidden:
            cases = [_gqa_tensors(ex.draw, *sizes) for sizes in _gqa_hidden(ex.draw)]
        else:  # 4 query heads sharing 2 key-value heads, D = 4: a prompt of 3 tokens, then
            # 2 new tokens after a cache of 3
            cases = [_gqa_tensors(None, 1, 4, 2, None, 3, 4), _gqa_tensors(None, 1, 4, 2, 3, 2, 4)]
        for case in cases:
            _check_gqa_case(ex, fn, *case)


watch_module(__name__)
