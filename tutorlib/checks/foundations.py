"""Checks for the Chapter 1 exercises (solutions/01_foundations).

Each `check_*` takes the learner's function or class. With `hidden=False` it runs the visible
tests (a worked example, shapes); with `hidden=True` the hidden ones (random float64 inputs
against the reference, edge cases, gradients). While the learner's code runs, the tutorlib
reference and the torch built-in for the same computation raise.

Book: Chapter 1 exercises.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tutorlib import embeddings, layers
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

__all__ = [
    "check_embed",
    "check_encoder_layer",
    "check_feed_forward",
    "check_layer_norm",
    "check_parameter_count",
    "check_post_norm_residual",
    "check_pre_norm_residual",
    "check_sinusoidal_encoding",
]

# References, taken at import time (before any learner code runs).
_sinusoidal = embeddings.sinusoidal_encoding
_layer_norm = layers.layer_norm
_TorchEncoderLayer = nn.TransformerEncoderLayer
_linear, _relu, _gelu = F.linear, F.relu, F.gelu

Mistakes = dict[str, Callable[[], Tensor]]


# --- 1. Sinusoidal positional encoding ---------------------------------------------------------

PE_MISTAKES = {
    "swapped": "sin and cos are swapped: sines go in the even columns 0, 2, 4, ... and "
    "cosines in the odd columns 1, 3, 5, ...",
    "concatenated": "the sines and cosines are concatenated ([sin ..., cos ...]); interleave "
    "them: column 2i holds the sine, column 2i+1 the cosine of the same angle.",
    "per_column_index": "columns 2i and 2i+1 share one frequency, 1/10000^(2i/d_model); it "
    "looks like each column used its own index in the exponent.",
    "i_not_2i": "the exponent uses i instead of 2i: pair i has frequency 1/10000^(2i/d_model).",
    "positions_from_1": "positions start at 0: the first row is [0, 1, 0, 1, ...].",
}

_PE_FORBIDDEN: list[Target] = [
    (embeddings, "sinusoidal_encoding"),
    (embeddings.SinusoidalPositionalEncoding, "__init__"),
]


def _pe_variant(T: int, d: int, kind: str) -> Tensor:
    """The encoding as a given likely mistake computes it."""
    t = torch.arange(T, dtype=torch.float64).unsqueeze(1) + (kind == "positions_from_1")
    two_i = torch.arange(0, d, 2, dtype=torch.float64)
    if kind == "i_not_2i":
        two_i = two_i / 2
    angles = t / 10000 ** (two_i / d)  # (T, C/2)
    if kind == "concatenated":
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (T, C)
    out = torch.empty(T, d, dtype=torch.float64)
    if kind == "per_column_index":
        column_angles = t / 10000 ** (torch.arange(d, dtype=torch.float64) / d)  # (T, C)
        out[:, 0::2] = column_angles[:, 0::2].sin()
        out[:, 1::2] = column_angles[:, 1::2].cos()
        return out
    even, odd = (angles.cos(), angles.sin()) if kind == "swapped" else (angles.sin(), angles.cos())
    out[:, 0::2], out[:, 1::2] = even, odd
    return out


def _check_pe_case(fn: Callable[[int, int], Tensor], T: int, d: int) -> None:
    out = run_candidate(fn, T, d, exercise="sinusoidal_encoding", forbidden=_PE_FORBIDDEN)
    if isinstance(out, Tensor) and out.is_floating_point():
        out = out.double()
    expect_close(
        out,
        _sinusoidal(T, d, dtype=torch.float64),
        what=f"sinusoidal_encoding({T}, {d})",
        mistakes={hint: (lambda k=k: _pe_variant(T, d, k)) for k, hint in PE_MISTAKES.items()},
        atol=1e-4,  # float32 sines of large angles are good to about 1e-5
        check_dtype=False,
    )


def check_sinusoidal_encoding(fn: Callable[[int, int], Tensor], hidden: bool = False) -> None:
    """Learner's `sinusoidal_encoding(context_length, d_model) -> (T, C)`."""
    sizes = [(50, 32), (1, 2), (7, 2), (128, 512)] if hidden else [(4, 4), (10, 16)]
    for T, d in sizes:
        _check_pe_case(fn, T, d)
    report_ok("sinusoidal_encoding", hidden)


# --- 2. Embedding lookup, scaled, plus positions --------------------------------------------

_EMBED_FORBIDDEN: list[Target] = [
    (F, "embedding"),
    (torch, "embedding"),
    (nn.Embedding, "forward"),
    (embeddings.TokenEmbedding, "forward"),
]


def _check_embed_case(
    fn: Callable, B: int, T: int, V: int, C: int, T_max: int, seed: int, grad: bool
) -> None:
    tokens = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))
    table = random_tensor(V, C, seed=seed + 10, grad=grad)
    positions = random_tensor(T_max, C, seed=seed + 20, grad=grad)
    scale = math.sqrt(C)
    expected = table[tokens] * scale + positions[:T]  # (B, T, C)
    out = run_candidate(fn, tokens, table, positions, exercise="embed", forbidden=_EMBED_FORBIDDEN)
    lookup, pos = table.detach()[tokens], positions.detach()[:T]
    expect_close(
        out,
        expected,
        what=f"embed(tokens {B}x{T}, table {V}x{C}, positions {T_max}x{C})",
        mistakes={
            "the embeddings are not multiplied by sqrt(d_model) (Vaswani et al. 2017, "
            "section 3.4).": lambda: lookup + pos,
            "scale only the token embeddings by sqrt(d_model), then add the positions.": (
                lambda: (lookup + pos) * scale
            ),
            "multiply by sqrt(d_model); it looks like you divided.": lambda: lookup / scale + pos,
        },
    )
    if grad:
        expect_backward_close(out, expected, {"table": table, "positions": positions}, "embed")


def check_embed(fn: Callable[[Tensor, Tensor, Tensor], Tensor], hidden: bool = False) -> None:
    """Learner's `embed(tokens (B, T), table (V, C), positions (T_max, C)) -> (B, T, C)`."""
    cases = (
        [(3, 5, 11, 8, 9, 1), (1, 1, 2, 4, 1, 2), (2, 6, 7, 6, 6, 3)]
        if hidden
        else [(2, 3, 5, 4, 6, 0)]
    )
    for B, T, V, C, T_max, seed in cases:
        _check_embed_case(fn, B, T, V, C, T_max, seed, grad=hidden)
    report_ok("embed", hidden)


# --- 3. Layer normalization -----------------------------------------------------------------

_LN_FORBIDDEN: list[Target] = [
    (F, "layer_norm"),
    (torch, "layer_norm"),
    (torch, "native_layer_norm"),
    (nn.LayerNorm, "forward"),
    (F, "group_norm"),
    (torch, "group_norm"),
    (F, "instance_norm"),
    (layers, "layer_norm"),
    (layers.LayerNorm, "forward"),
]


def _normalize(x: Tensor, dim: int | None, eps: float, unbiased: bool = False) -> Tensor:
    dims = tuple(range(x.dim())) if dim is None else (dim,)
    mean = x.mean(dims, keepdim=True)
    return (x - mean) / torch.sqrt(x.var(dims, keepdim=True, unbiased=unbiased) + eps)


def _ln_mistakes(x: Tensor, w: Tensor, b: Tensor, eps: float) -> Mistakes:
    centred = x - x.mean(-1, keepdim=True)
    return {
        "use the biased variance (divide by n, as torch.nn.LayerNorm does), not the unbiased "
        "one: x.var(dim=-1, unbiased=False).": lambda: _normalize(x, -1, eps, True) * w + b,
        "eps belongs inside the square root: (x - mean) / sqrt(var + eps), not "
        "(x - mean) / (std + eps).": lambda: (
            centred / (x.var(-1, keepdim=True, unbiased=False).sqrt() + eps) * w + b
        ),
        "unbiased variance and eps outside the square root (the Annotated Transformer's "
        "LayerNorm); torch uses the biased variance with eps inside the root.": lambda: (
            centred / (x.std(-1, keepdim=True) + eps) * w + b
        ),
        "normalize over the last dimension (each token's features), not over the batch "
        "(dim 0).": lambda: _normalize(x, 0, eps) * w + b,
        "normalize over the last dimension only, not over all of them.": (
            lambda: _normalize(x, None, eps) * w + b
        ),
        "apply the gain and the bias after normalizing: out * weight + bias.": (
            lambda: _normalize(x, -1, eps)
        ),
    }


def _check_ln_case(fn: Callable, x: Tensor, w: Tensor, b: Tensor, eps: float) -> None:
    expected = _layer_norm(x, w.shape, w, b, eps)
    out = run_candidate(fn, x, w, b, eps=eps, exercise="layer_norm", forbidden=_LN_FORBIDDEN)
    expect_close(
        out,
        expected,
        what=f"layer_norm on a {tuple(x.shape)} input with eps={eps}",
        mistakes=_ln_mistakes(x.detach(), w.detach(), b.detach(), eps),
        atol=1e-5 if x.dtype == torch.float32 else 1e-8,
    )
    if x.requires_grad:
        expect_backward_close(out, expected, {"x": x, "weight": w, "bias": b}, "layer_norm")


def check_layer_norm(fn: Callable[..., Tensor], hidden: bool = False) -> None:
    """Learner's `layer_norm(x (..., C), weight (C,), bias (C,), eps=1e-5) -> (..., C)`."""
    if not hidden:
        worked = torch.tensor([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0]])
        cases = [
            (worked, torch.ones(4), torch.zeros(4), 1e-5),
            (random_tensor(3, 5, seed=1).float(), torch.ones(5), torch.zeros(5), 1e-5),
        ]
    else:
        cases = [
            (
                random_tensor(2, 3, 8, seed=2, grad=True),
                random_tensor(8, seed=3, grad=True),
                random_tensor(8, seed=4, grad=True),
                1e-5,
            ),
            (
                random_tensor(4, 6, seed=5, grad=True),
                random_tensor(6, seed=6, grad=True),
                random_tensor(6, seed=7, grad=True),
                0.5,
            ),
            # a constant row has zero variance: the output is the bias, not NaN
            (
                torch.full((2, 5), 3.0, dtype=torch.float64),
                random_tensor(5, seed=8),
                random_tensor(5, seed=9),
                1e-5,
            ),
            # a large offset with a small spread
            (
                1e3 + 1e-2 * random_tensor(3, 7, seed=10),
                random_tensor(7, seed=11),
                random_tensor(7, seed=12),
                1e-5,
            ),
        ]
    for x, w, b, eps in cases:
        _check_ln_case(fn, x, w, b, eps)
    report_ok("layer_norm", hidden)


# --- 4. The position-wise feed-forward network ----------------------------------------------

_FF_FORBIDDEN: list[Target] = [
    (layers.FeedForward, "forward"),
    (nn.TransformerEncoderLayer, "_ff_block"),
]


def _ff_weights(
    C: int, d_ff: int, seed: int, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, ...]:
    w1 = random_tensor(d_ff, C, seed=seed) / math.sqrt(C)
    w2 = random_tensor(C, d_ff, seed=seed + 1) / math.sqrt(d_ff)
    b1, b2 = random_tensor(d_ff, seed=seed + 2), random_tensor(C, seed=seed + 3)
    return tuple(t.to(dtype) for t in (w1, b1, w2, b2))


def _check_ff_case(fn: Callable, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> None:
    expected = _linear(_relu(_linear(x, w1, b1)), w2, b2)
    out = run_candidate(fn, x, w1, b1, w2, b2, exercise="feed_forward", forbidden=_FF_FORBIDDEN)
    xd = x.detach()
    expect_close(
        out,
        expected,
        what=f"feed_forward on a {tuple(x.shape)} input with d_ff={w1.shape[0]}",
        mistakes={
            "the ReLU between the two linear maps is missing.": (
                lambda: _linear(_linear(xd, w1, b1), w2, b2)
            ),
            "there is no activation after the second linear map: "
            "FFN(x) = relu(x W1^T + b1) W2^T + b2.": (
                lambda: _relu(_linear(_relu(_linear(xd, w1, b1)), w2, b2))
            ),
            "the 2017 paper's FFN uses ReLU, not GELU.": (
                lambda: _linear(_gelu(_linear(xd, w1, b1)), w2, b2)
            ),
            "nn.Linear stores its weight as (out_features, in_features): compute x @ w1.T, "
            "not x @ w1.": lambda: _relu(xd @ w1 + b1) @ w2 + b2,
            "the biases b1 and b2 are missing.": lambda: _relu(xd @ w1.T) @ w2.T,
        },
        atol=1e-5 if x.dtype == torch.float32 else 1e-8,
    )
    if x.requires_grad:
        expect_backward_close(out, expected, {"x": x}, "feed_forward")


def check_feed_forward(fn: Callable[..., Tensor], hidden: bool = False) -> None:
    """Learner's `feed_forward(x (..., C), w1 (d_ff, C), b1 (d_ff,), w2 (C, d_ff), b2 (C,))`."""
    if not hidden:
        # d_model = 1, d_ff = 2: relu(x) + relu(-x) = |x|
        absolute = (
            torch.tensor([[1.0], [-1.0]]),
            torch.zeros(2),
            torch.tensor([[1.0, 1.0]]),
            torch.zeros(1),
        )
        cases = [
            (torch.tensor([[[-2.0], [0.5]]]), *absolute),
            (random_tensor(2, 3, 4, seed=0).float(), *_ff_weights(4, 8, 1, torch.float32)),
        ]
    else:
        cases = [
            (
                random_tensor(2, 5, 6, seed=2, grad=True),
                *_ff_weights(6, 6, 3),
            ),  # square: a missing .T shows
            (random_tensor(3, 4, 5, seed=4, grad=True), *_ff_weights(5, 12, 5)),
            (random_tensor(7, 3, seed=6, grad=True), *_ff_weights(3, 8, 7)),  # no batch dimension
        ]
    for case in cases:
        _check_ff_case(fn, *case)
    report_ok("feed_forward", hidden)


# --- 5, 6. Residual branches: post-norm and pre-norm ----------------------------------------

_LAYER_FORBIDDEN: list[Target] = [
    (nn.TransformerEncoderLayer, "forward"),
    (nn.TransformerEncoder, "forward"),
    (nn.Transformer, "forward"),
    (torch, "_transformer_encoder_layer_fwd"),
    (layers.EncoderLayer, "forward"),
]


def _residual_cases(hidden: bool) -> list[tuple[Tensor, Callable, Callable]]:
    if not hidden:
        # the sublayer multiplies by 10; the "norm" subtracts the mean
        return [(torch.tensor([1.0, 2.0]), lambda v: 10 * v, lambda v: v - v.mean())]
    cases = []
    for seed, (T, C) in enumerate([(5, 8), (1, 4)]):
        linear, norm = nn.Linear(C, C).double(), nn.LayerNorm(C).double()
        with torch.no_grad():
            for i, p in enumerate((*linear.parameters(), *norm.parameters())):
                p.copy_(random_tensor(*p.shape, seed=100 + 10 * seed + i))
        cases.append((random_tensor(3, T, C, seed=seed, grad=True), linear, norm))
    return cases


def _check_residual_case(
    fn: Callable, x: Tensor, sublayer: Callable, norm: Callable, norm_first: bool
) -> None:
    name = "pre_norm_residual" if norm_first else "post_norm_residual"
    xd = x.detach()

    def post() -> Tensor:
        return norm(xd + sublayer(xd))

    def pre() -> Tensor:
        return xd + sublayer(norm(xd))

    expected = x + sublayer(norm(x)) if norm_first else norm(x + sublayer(x))
    mistakes: Mistakes = {
        "the residual connection is missing: add the sublayer's input to its output.": (
            lambda: sublayer(norm(xd)) if norm_first else norm(sublayer(xd))
        ),
        "the norm is applied twice: pre-norm normalizes the sublayer's input only and adds "
        "the un-normalized x.": lambda: norm(xd + sublayer(norm(xd))),
        "the residual carries the un-normalized x: x + sublayer(norm(x)), not "
        "norm(x) + sublayer(norm(x)).": lambda: norm(xd) + sublayer(norm(xd)),
    }
    if norm_first:
        mistakes["this is post-norm, norm(x + sublayer(x)); pre-norm is x + sublayer(norm(x))."] = (
            post
        )
    else:
        mistakes["this is pre-norm, x + sublayer(norm(x)); post-norm is norm(x + sublayer(x))."] = (
            pre
        )
    out = run_candidate(fn, x, sublayer, norm, exercise=name, forbidden=_LAYER_FORBIDDEN)
    expect_close(out, expected, what=name, mistakes=mistakes, atol=1e-8)
    if x.requires_grad:
        expect_backward_close(out, expected, {"x": x}, name)


def check_post_norm_residual(fn: Callable[..., Tensor], hidden: bool = False) -> None:
    """Learner's `post_norm_residual(x, sublayer, norm) -> norm(x + sublayer(x))`."""
    for case in _residual_cases(hidden):
        _check_residual_case(fn, *case, norm_first=False)
    report_ok("post_norm_residual", hidden)


def check_pre_norm_residual(fn: Callable[..., Tensor], hidden: bool = False) -> None:
    """Learner's `pre_norm_residual(x, sublayer, norm) -> x + sublayer(norm(x))`."""
    for case in _residual_cases(hidden):
        _check_residual_case(fn, *case, norm_first=True)
    report_ok("pre_norm_residual", hidden)


# --- 7, 8. Encoder layers -------------------------------------------------------------------


def _layer_variant(ref: nn.Module, x: Tensor, pad: Tensor | None, **change) -> Tensor:
    """The reference layer's forward with one thing changed: a likely mistake."""
    norm_first = change.get("norm_first", ref.norm_first)
    activation = change.get("activation", _relu)
    kpm = None if pad is None else (pad if change.get("mask_not_inverted") else ~pad)
    keep = 0.0 if change.get("no_residual") else 1.0

    def sa(h: Tensor) -> Tensor:
        return ref.self_attn(h, h, h, key_padding_mask=kpm, need_weights=False)[0]

    def ff(h: Tensor) -> Tensor:
        return ref.linear2(activation(ref.linear1(h)))

    if norm_first:
        x = keep * x + sa(ref.norm1(x))
        return keep * x + ff(ref.norm2(x))
    x = ref.norm1(keep * x + sa(x))
    return ref.norm2(keep * x + ff(x))


def _paired_layers(layer_class: type[nn.Module], norm_first: bool) -> tuple[nn.Module, nn.Module]:
    """The learner's layer and torch's, with the same (random) weights, in float64."""
    C, H, d_ff = 8, 2, 16
    torch.manual_seed(0)
    with quiet():
        learner = layer_class(C, H, d_ff)
    ref = _TorchEncoderLayer(C, H, d_ff, dropout=0.0, batch_first=True, norm_first=norm_first)
    with torch.no_grad():  # random norm gains and biases, so a forgotten norm shows
        for i, norm in enumerate((ref.norm1, ref.norm2)):
            norm.weight.copy_(1 + 0.5 * random_tensor(C, seed=1 + i))
            norm.bias.copy_(0.5 * random_tensor(C, seed=3 + i))
    try:
        learner.load_state_dict(ref.state_dict())
    except RuntimeError as error:
        raise ExerciseError(
            "Your layer's parameters do not match the given __init__ (self_attn, linear1, "
            f"linear2, norm1, norm2); keep __init__ as it was. torch says: {error}"
        ) from None
    # train mode with dropout 0 takes torch's plain path (the fused eval path differs slightly)
    return learner.double().train(), ref.double().train()


def _check_layer_case(learner: nn.Module, ref: nn.Module, x: Tensor, pad: Tensor | None) -> None:
    name = type(learner).__name__
    with quiet():
        expected = ref(x, src_key_padding_mask=None if pad is None else ~pad)
    out = run_candidate(learner, x, pad, exercise=f"{name}.forward", forbidden=_LAYER_FORBIDDEN)
    xd = x.detach()
    other = "post-norm" if ref.norm_first else "pre-norm"
    expect_close(
        out,
        expected,
        what=f"{name} on a {tuple(x.shape)} input" + (" with padding" if pad is not None else ""),
        mistakes={
            f"this is the {other} arrangement. Post-norm: x = norm1(x + attn(x)); "
            "x = norm2(x + ffn(x)). Pre-norm: x = x + attn(norm1(x)); "
            "x = x + ffn(norm2(x)).": lambda: _layer_variant(
                ref, xd, pad, norm_first=not ref.norm_first
            ),
            "padding_mask is True for real tokens, but nn.MultiheadAttention's key_padding_mask "
            "is True for positions to ignore: pass ~padding_mask.": (
                lambda: _layer_variant(ref, xd, pad, mask_not_inverted=True)
            ),
            "padding_mask is ignored: pass key_padding_mask=~padding_mask to self_attn.": (
                lambda: _layer_variant(ref, xd, None)
            ),
            "the residual connections are missing: add each sublayer's input to its output.": (
                lambda: _layer_variant(ref, xd, pad, no_residual=True)
            ),
            "the feed-forward network uses ReLU, as nn.TransformerEncoderLayer does.": (
                lambda: _layer_variant(ref, xd, pad, activation=_gelu)
            ),
        },
        atol=1e-8,
    )
    if x.requires_grad:
        expect_backward_close(out, expected, {"x": x}, f"{name}.forward")


def check_encoder_layer(
    layer_class: type[nn.Module], norm_first: bool, hidden: bool = False
) -> None:
    """Learner's `PostNormEncoderLayer` or `PreNormEncoderLayer`, `forward(x, padding_mask=None)`.

    Compared with `nn.TransformerEncoderLayer(norm_first=...)` holding the same weights.
    """
    learner, ref = _paired_layers(layer_class, norm_first)
    if hidden:
        pad = torch.ones(3, 6, dtype=torch.bool)
        pad[0, 4:] = False
        pad[2, 1:] = False
        cases = [
            (random_tensor(3, 6, 8, seed=3, grad=True), pad),
            (random_tensor(1, 1, 8, seed=4, grad=True), None),
        ]
    else:
        cases = [(random_tensor(2, 5, 8, seed=5), None)]
    for x, pad in cases:
        _check_layer_case(learner, ref, x, pad)
    report_ok(layer_class.__name__, hidden)


# --- 9. Counting parameters -----------------------------------------------------------------

_COUNT_FORBIDDEN: list[Target] = [
    (nn.TransformerEncoderLayer, "__init__"),
    (nn.MultiheadAttention, "__init__"),
    (layers.EncoderLayer, "__init__"),
]


def _count_mistakes(C: int, d_ff: int, right: int) -> dict[int, str]:
    return {
        4 * C * C + 2 * C * d_ff: "the biases are missing: each linear map has one per output "
        "(attention has 4 * d_model of them, the FFN d_ff + d_model).",
        right - 4 * C: "the two LayerNorms have a gain and a bias each: 4 * d_model parameters.",
        right - C * C - C: "the attention's output projection W^O (a d_model x d_model matrix "
        "and a bias) is missing.",
        right - 2 * (C * C + C): "queries, keys and values have three separate d_model x d_model "
        "projections (with biases), not one.",
        right - d_ff - C: "the feed-forward network's biases (d_ff + d_model) are missing.",
    }


def _check_count_case(fn: Callable[[int, int], int], C: int, d_ff: int) -> None:
    right = sum(p.numel() for p in _TorchEncoderLayer(C, 1, d_ff, batch_first=True).parameters())
    got = run_candidate(
        fn, C, d_ff, exercise="encoder_layer_parameter_count", forbidden=_COUNT_FORBIDDEN
    )
    scalar_tensor = isinstance(got, Tensor) and got.numel() == 1
    if not scalar_tensor and (isinstance(got, bool) or not isinstance(got, int)):
        raise ExerciseError(f"encoder_layer_parameter_count should return an int, got {got!r}.")
    got = int(got)
    if got == right:
        return
    message = f"encoder_layer_parameter_count({C}, {d_ff}) returned {got}, which is not right."
    hint = _count_mistakes(C, d_ff, right).get(got)
    if hint is None:
        hint = (
            "count the attention (query, key, value and output projections, with biases), the "
            "FFN's two linear maps (with biases) and the two LayerNorms (gain and bias)."
        )
        raise ExerciseError(f"{message} Hint: {hint}")
    raise ExerciseError(f"{message} Likely mistake: {hint}")


def check_parameter_count(fn: Callable[[int, int], int], hidden: bool = False) -> None:
    """Learner's `encoder_layer_parameter_count(d_model, d_ff) -> int`."""
    sizes = [(64, 256), (7, 3), (1, 1), (768, 3072)] if hidden else [(512, 2048)]
    for C, d_ff in sizes:
        _check_count_case(fn, C, d_ff)
    report_ok("encoder_layer_parameter_count", hidden)


watch_module(__name__)
