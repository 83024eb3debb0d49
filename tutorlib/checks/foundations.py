"""Checks for the Chapter 1 exercises (solutions/01_foundations).

Each `check_*` takes the learner's function or class. With `hidden=False` it runs the visible
tests (the notebook's worked examples); with `hidden=True` the hidden ones: property tests on
sizes and values drawn when they run (`tutorlib.checks.draw`), with the special cases that tell
the likely mistakes apart in every draw, and gradients. While the learner's code runs, the
tutorlib reference and every torch operator that computes the same thing are out of reach
(`tutorlib.checks.guard`).

Book: Chapter 1 exercises.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tutorlib import embeddings, layers, models
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

# Every torch operator that normalises over some axis: any of them, applied to a transposed
# or reshaped input, computes a layer norm.
NORMALISATIONS = (
    "layer_norm",
    "native_layer_norm",
    "group_norm",
    "native_group_norm",
    "batch_norm",
    "native_batch_norm",
    "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit_functional",
    "_batch_norm_impl_index",
    "_batch_norm_with_update",
    "_batch_norm_no_update",
    "instance_norm",
    "rms_norm",
    "_fused_rms_norm",
)
_LAYER = Forbidden(
    python=(
        nn.TransformerEncoderLayer,
        nn.TransformerEncoder,
        nn.Transformer,
        layers.EncoderLayer,
        models.Encoder,
        models.Transformer,
    ),
    ops=("_transformer_encoder_layer_fwd",),
)


# --- 1. Sinusoidal positional encoding ---------------------------------------------------------

PE_FORBIDDEN = Forbidden(
    python=(embeddings.sinusoidal_encoding, embeddings.SinusoidalPositionalEncoding)
)

PE_MISTAKES = {
    "swapped": "sin and cos are swapped: sines go in the even columns 0, 2, 4, ... and "
    "cosines in the odd columns 1, 3, 5, ...",
    "concatenated": "the sines and cosines are concatenated ([sin ..., cos ...]); interleave "
    "them: column 2i holds the sine, column 2i+1 the cosine of the same angle.",
    "per_column_index": "columns 2i and 2i+1 share one frequency, 1/10000^(2i/d_model); it "
    "looks like each column used its own index in the exponent.",
    "i_not_2i": "the exponent uses i instead of 2i: pair i has frequency 1/10000^(2i/d_model).",
    "positions_from_1": "positions start at 0: the first row is [0, 1, 0, 1, ...].",
    "doubled_2i": "the exponent is doubled: torch.arange(0, d_model, 2) already holds 2i, so "
    "the frequency is 1/10000^(two_i/d_model), not 1/10000^(2 * two_i/d_model).",
}


def _pe_variant(T: int, d: int, kind: str) -> Tensor:
    """The encoding as a given likely mistake computes it."""
    t = torch.arange(T, dtype=torch.float64).unsqueeze(1) + (kind == "positions_from_1")
    two_i = torch.arange(0, d, 2, dtype=torch.float64)
    if kind == "i_not_2i":
        two_i = two_i / 2
    if kind == "doubled_2i":
        two_i = two_i * 2
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


def _pe_hidden(draw: Draw) -> list[tuple[int, int]]:
    return [
        (1, 2 * draw.integer(1, 4)),  # a single position
        (draw.integer(2, 9), 2),  # a single pair of columns
        (draw.integer(10, 60), 2 * draw.integer(4, 24)),
        (draw.integer(100, 160), 2 * draw.integer(128, 256)),  # large angles, wide rows
    ]


def _check_pe_case(ex: Exercise, fn: Callable, T: int, d: int) -> None:
    out = ex.call(fn, T, d)
    if isinstance(out, Tensor) and out.dtype != torch.float32:
        raise ExerciseError(
            f"sinusoidal_encoding({T}, {d}) has dtype {out.dtype}",
            hint="return a torch.float32 tensor (.float() at the end).",
            likely=False,
        )
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
    with Exercise("sinusoidal_encoding", hidden, PE_FORBIDDEN) as ex:
        for T, d in _pe_hidden(ex.draw) if hidden else [(4, 4), (10, 16)]:
            _check_pe_case(ex, fn, T, d)


# --- 2. Embedding lookup, scaled, plus positions --------------------------------------------

EMBED_FORBIDDEN = Forbidden(
    python=(nn.Embedding, nn.EmbeddingBag, embeddings.TokenEmbedding),
    ops=("embedding", "embedding_bag", "_embedding_bag", "_embedding_bag_forward_only"),
)


def _embed_hidden(draw: Draw) -> list[tuple[int, int, int, int, int]]:
    """(B, T, V, C, T_max): the vocabulary never as wide as the model (so sqrt(V) and sqrt(C)
    differ), and more position rows than tokens (so positions[:T] matters)."""
    cases = []
    for _ in range(3):
        C = draw.integer(2, 12)
        V = draw.choice([v for v in range(2, 40) if v != C])
        T = draw.integer(1, 7)
        cases.append((draw.integer(1, 4), T, V, C, T + draw.integer(1, 5)))
    return cases


def _check_embed_case(
    ex: Exercise, fn: Callable, tokens: Tensor, table: Tensor, positions: Tensor
) -> None:
    (B, T), (V, C), T_max = tokens.shape, table.shape, positions.shape[0]
    out = ex.call(fn, tokens, table, positions)
    scale = math.sqrt(C)
    expected = table[tokens] * scale + positions[:T]  # (B, T, C)
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
            "the scale is sqrt(d_model), the width of each embedding (table.shape[1]), not "
            "sqrt(vocab_size) (table.shape[0]).": lambda: lookup * math.sqrt(V) + pos,
            "the positions are the first T rows of the table, positions[:T] (position 0 first), "
            "not the last T.": lambda: lookup * scale + positions.detach()[T_max - T :],
        },
    )
    if table.requires_grad:
        ex.expect_backward(out, expected, {"table": table, "positions": positions}, "embed")


def check_embed(fn: Callable[[Tensor, Tensor, Tensor], Tensor], hidden: bool = False) -> None:
    """Learner's `embed(tokens (B, T), table (V, C), positions (T_max, C)) -> (B, T, C)`."""
    with Exercise("embed", hidden, EMBED_FORBIDDEN) as ex:
        if hidden:
            d = ex.draw
            cases = [
                (d.integers(0, V, (B, T)), d.normal(V, C, grad=True), d.normal(T_max, C, grad=True))
                for B, T, V, C, T_max in _embed_hidden(d)
            ]
        else:
            tokens = torch.randint(0, 5, (2, 3), generator=torch.Generator().manual_seed(0))
            cases = [(tokens, random_tensor(5, 4, seed=10), random_tensor(6, 4, seed=20))]
        for case in cases:
            _check_embed_case(ex, fn, *case)


# --- 3. Layer normalization -----------------------------------------------------------------

# torch's normalisation modules all end in one of NORMALISATIONS.
LN_FORBIDDEN = Forbidden(python=(layers.layer_norm, layers.LayerNorm), ops=NORMALISATIONS)


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
        "normalize over the last dimension (dim=-1); dim=1 is the last one only for a 2-D "
        "input.": lambda: _normalize(x, 1, eps) * w + b,
        "normalize over the last dimension only, not over all of them.": (
            lambda: _normalize(x, None, eps) * w + b
        ),
        "apply the gain and the bias after normalizing: out * weight + bias.": (
            lambda: _normalize(x, -1, eps)
        ),
        "the bias is added before the gain multiplies: (x_hat + bias) * weight; it is "
        "x_hat * weight + bias.": lambda: (_normalize(x, -1, eps) + b) * w,
    }


def _ln_hidden(draw: Draw) -> list[tuple[Tensor, Tensor, Tensor, float]]:
    def affine(C: int, grad: bool = False) -> tuple[Tensor, Tensor]:
        return (1 + 0.5 * draw.normal(C)).requires_grad_(grad), draw.normal(C, grad=grad)

    C1, C2, C3 = draw.integer(2, 12), draw.integer(2, 12), draw.integer(3, 9)
    lead = [draw.integer(2, 4) for _ in range(draw.integer(1, 2))]
    constant = draw.real(-5.0, 5.0) * torch.ones(draw.integer(2, 4), C3, dtype=torch.float64)
    return [
        (draw.normal(*lead, C1, grad=True), *affine(C1, grad=True), 1e-5),
        # a large eps: where it sits shows
        (draw.normal(draw.integer(2, 5), C2, grad=True), *affine(C2, True), draw.real(0.1, 1.0)),
        # constant rows have zero variance: the output is the bias, not NaN
        (constant, *affine(C3), 1e-5),
        # a large offset with a small spread
        (1e3 + 1e-2 * draw.normal(draw.integer(2, 4), C3), *affine(C3), 1e-5),
        # three dimensions in every draw: dim 1 is not the last one
        (draw.normal(draw.integer(2, 4), draw.integer(2, 4), C3), *affine(C3), 1e-5),
    ]


def _check_ln_case(ex: Exercise, fn: Callable, x: Tensor, w: Tensor, b: Tensor, eps: float) -> None:
    out = ex.call(fn, x, w, b, eps=eps)
    expected = _layer_norm(x, w.shape, w, b, eps)
    expect_close(
        out,
        expected,
        what=f"layer_norm on a {tuple(x.shape)} input with eps={eps:.3g}",
        mistakes=_ln_mistakes(x.detach(), w.detach(), b.detach(), eps),
        atol=1e-5 if x.dtype == torch.float32 else 1e-8,
    )
    if x.requires_grad:
        ex.expect_backward(out, expected, {"x": x, "weight": w, "bias": b}, "layer_norm")


def check_layer_norm(fn: Callable[..., Tensor], hidden: bool = False) -> None:
    """Learner's `layer_norm(x (..., C), weight (C,), bias (C,), eps=1e-5) -> (..., C)`."""
    with Exercise("layer_norm", hidden, LN_FORBIDDEN) as ex:
        if hidden:
            cases = _ln_hidden(ex.draw)
        else:
            worked = torch.tensor([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0]])
            cases = [
                (worked, torch.ones(4), torch.zeros(4), 1e-5),
                (random_tensor(3, 5, seed=1).float(), torch.ones(5), torch.zeros(5), 1e-5),
            ]
        for x, w, b, eps in cases:
            _check_ln_case(ex, fn, x, w, b, eps)


# --- 4. The position-wise feed-forward network ----------------------------------------------

FF_FORBIDDEN = Forbidden(python=(layers.FeedForward, nn.TransformerEncoderLayer._ff_block))


FF_ERRORS = {
    "cannot be multiplied": "nn.Linear stores its weight as (out_features, in_features): "
    "compute x @ w1.T and hidden @ w2.T, not x @ w1 or hidden @ w2."
}


def _ff_weights(draw: Draw, C: int, d_ff: int) -> tuple[Tensor, ...]:
    return (
        draw.normal(d_ff, C, scale=C**-0.5),
        draw.normal(d_ff),
        draw.normal(C, d_ff, scale=d_ff**-0.5),
        draw.normal(C),
    )


def _ff_hidden(draw: Draw) -> list[tuple[Tensor, ...]]:
    square = draw.integer(2, 8)  # d_ff = C: a missing .T shows only in the values
    C, d_ff = draw.integer(2, 8), draw.integer(9, 16)
    C3 = draw.integer(2, 6)
    return [
        (
            draw.normal(draw.integer(1, 3), draw.integer(2, 5), square, grad=True),
            *_ff_weights(draw, square, square),
        ),
        (
            draw.normal(draw.integer(1, 3), draw.integer(2, 5), C, grad=True),
            *_ff_weights(draw, C, d_ff),
        ),
        (
            draw.normal(draw.integer(2, 7), C3, grad=True),
            *_ff_weights(draw, C3, 2 * C3),
        ),  # no batch
    ]


def _check_ff_case(
    ex: Exercise, fn: Callable, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor
) -> None:
    out = ex.call(fn, x, w1, b1, w2, b2, hints=FF_ERRORS)
    expected = _linear(_relu(_linear(x, w1, b1)), w2, b2)
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
            "not x @ w1.": lambda: _relu(xd @ w1 + b1) @ w2 + b2,  # (when d_ff == C)
            "the biases b1 and b2 are missing.": lambda: _relu(xd @ w1.T) @ w2.T,
            "the ReLU comes after adding b1: relu(x @ w1.T + b1), not relu(x @ w1.T) + b1.": (
                lambda: (_relu(xd @ w1.T) + b1) @ w2.T + b2
            ),
        },
        atol=1e-5 if x.dtype == torch.float32 else 1e-8,
    )
    if x.requires_grad:
        ex.expect_backward(out, expected, {"x": x}, "feed_forward")


def check_feed_forward(fn: Callable[..., Tensor], hidden: bool = False) -> None:
    """Learner's `feed_forward(x (..., C), w1 (d_ff, C), b1 (d_ff,), w2 (C, d_ff), b2 (C,))`."""
    with Exercise("feed_forward", hidden, FF_FORBIDDEN) as ex:
        if hidden:
            cases = _ff_hidden(ex.draw)
        else:
            # d_model = 1, d_ff = 2: relu(x) + relu(-x) = |x|
            absolute = (
                torch.tensor([[1.0], [-1.0]]),
                torch.zeros(2),
                torch.tensor([[1.0, 1.0]]),
                torch.zeros(1),
            )
            w1, b1 = random_tensor(8, 4, seed=1) / 2, random_tensor(8, seed=3)
            w2, b2 = random_tensor(4, 8, seed=2) / math.sqrt(8), random_tensor(4, seed=4)
            cases = [
                (torch.tensor([[[-2.0], [0.5]]]), *absolute),
                (random_tensor(2, 3, 4, seed=0).float(), *(w.float() for w in (w1, b1, w2, b2))),
            ]
        for case in cases:
            _check_ff_case(ex, fn, *case)


# --- 5, 6. Residual branches: post-norm and pre-norm ----------------------------------------


@handed_over
def _times_ten(v: Tensor) -> Tensor:
    """The visible test's sublayer."""
    return 10 * v


@handed_over
def _centre(v: Tensor) -> Tensor:
    """The visible test's "norm": it subtracts the mean (and commutes with _times_ten)."""
    return v - v.mean()


def _residual_hidden(draw: Draw) -> list[tuple[Tensor, nn.Module, nn.Module]]:
    """A non-linear sublayer and a LayerNorm with random gain and bias: they do not commute, so
    every arrangement of norm, sublayer and residual gives a different result."""
    cases = []
    for _ in range(2):
        C = draw.integer(2, 8)
        with torch.random.fork_rng():
            torch.manual_seed(draw.integer(0, 2**31))
            sublayer = nn.Sequential(nn.Linear(C, 2 * C), nn.Tanh(), nn.Linear(2 * C, C)).double()
            norm = nn.LayerNorm(C).double()
        with torch.no_grad():
            norm.weight.copy_(1 + 0.5 * draw.normal(C))
            norm.bias.copy_(draw.normal(C))
        cases.append(
            (draw.normal(draw.integer(1, 3), draw.integer(1, 5), C, grad=True), sublayer, norm)
        )
    return cases


def _residual_mistakes(x: Tensor, f: Callable, n: Callable, norm_first: bool) -> Mistakes:
    common: Mistakes = {
        "the norm is applied twice: pre-norm normalizes the sublayer's input only and adds "
        "the un-normalized x.": lambda: n(x + f(n(x))),
        "the residual carries the un-normalized x: x + sublayer(norm(x)), not "
        "norm(x) + sublayer(norm(x)).": lambda: n(x) + f(n(x)),
        "the norm is applied to the sublayer's output, x + norm(sublayer(x)): post-norm "
        "normalizes the sum, pre-norm the sublayer's input.": lambda: x + n(f(x)),
    }
    if norm_first:
        return {
            "the residual connection is missing: add the sublayer's input to its output.": (
                lambda: f(n(x))
            ),
            "this is post-norm, norm(x + sublayer(x)); pre-norm is x + sublayer(norm(x)).": (
                lambda: n(x + f(x))
            ),
            **common,
        }
    return {
        "the residual connection is missing: add the sublayer's input to its output.": (
            lambda: n(f(x))
        ),
        "this is pre-norm, x + sublayer(norm(x)); post-norm is norm(x + sublayer(x)).": (
            lambda: x + f(n(x))
        ),
        **common,
    }


def _check_residual_case(
    ex: Exercise, fn: Callable, x: Tensor, f: Callable, n: Callable, norm_first: bool
) -> None:
    out = ex.call(fn, x, f, n)
    expected = x + f(n(x)) if norm_first else n(x + f(x))
    with torch.no_grad():
        mistakes = {h: m() for h, m in _residual_mistakes(x.detach(), f, n, norm_first).items()}
    expect_close(out, expected, what=ex.name, mistakes=mistakes, atol=1e-8)
    if x.requires_grad:
        ex.expect_backward(out, expected, {"x": x}, ex.name)


def _check_residual(fn: Callable, hidden: bool, norm_first: bool) -> None:
    name = "pre_norm_residual" if norm_first else "post_norm_residual"
    with Exercise(name, hidden, _LAYER) as ex:
        visible = [(torch.tensor([1.0, 2.0]), _times_ten, _centre)]
        for x, f, n in _residual_hidden(ex.draw) if hidden else visible:
            _check_residual_case(ex, fn, x, f, n, norm_first)


def check_post_norm_residual(fn: Callable[..., Tensor], hidden: bool = False) -> None:
    """Learner's `post_norm_residual(x, sublayer, norm) -> norm(x + sublayer(x))`."""
    _check_residual(fn, hidden, norm_first=False)


def check_pre_norm_residual(fn: Callable[..., Tensor], hidden: bool = False) -> None:
    """Learner's `pre_norm_residual(x, sublayer, norm) -> x + sublayer(norm(x))`."""
    _check_residual(fn, hidden, norm_first=True)


# --- 7, 8. Encoder layers -------------------------------------------------------------------


def _layer_variant(ref: nn.Module, x: Tensor, pad: Tensor | None, **change) -> Tensor:
    """The reference layer's forward with one thing changed: a likely mistake."""
    norm_first = change.get("norm_first", ref.norm_first)
    activation = change.get("activation", _relu)
    kpm = None if pad is None else (pad if change.get("mask_not_inverted") else ~pad)
    keep = 0.0 if change.get("no_residual") else 1.0
    if change.get("normed_skip"):
        x = ref.norm1(x)
        x = x + ref.self_attn(x, x, x, key_padding_mask=kpm, need_weights=False)[0]
        x = ref.norm2(x)
        return x + ref.linear2(activation(ref.linear1(x)))

    def sa(h: Tensor) -> Tensor:
        return ref.self_attn(h, h, h, key_padding_mask=kpm, need_weights=False)[0]

    def ff(h: Tensor) -> Tensor:
        return ref.linear2(activation(ref.linear1(h)))

    if norm_first:
        x = keep * x + sa(ref.norm1(x))
        return keep * x + ff(ref.norm2(x))
    x = ref.norm1(keep * x + sa(x))
    return ref.norm2(keep * x + ff(x))


def _paired_layers(
    ex: Exercise,
    layer_class: type[nn.Module],
    norm_first: bool,
    sizes: tuple[int, int, int],
    seed: int,
) -> tuple[nn.Module, nn.Module]:
    """The learner's layer and torch's, with the same random weights, in float64."""
    C, H, d_ff = sizes
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        learner = ex.call(layer_class, C, H, d_ff, plain=False)
        ref = _TorchEncoderLayer(C, H, d_ff, dropout=0.0, batch_first=True, norm_first=norm_first)
    with torch.no_grad():  # random norm gains and biases, so a forgotten norm shows
        for i, norm in enumerate((ref.norm1, ref.norm2)):
            norm.weight.copy_(1 + 0.5 * random_tensor(C, seed=seed + 1 + i))
            norm.bias.copy_(0.5 * random_tensor(C, seed=seed + 3 + i))
    try:
        learner.load_state_dict(ref.state_dict())
    except RuntimeError as error:
        raise ExerciseError(
            "Your layer's parameters do not match the given __init__ (self_attn, linear1, "
            f"linear2, norm1, norm2); keep __init__ as it was. torch says: {error}"
        ) from None
    # train mode with dropout 0 takes torch's plain path (the fused eval path differs slightly)
    return learner.double().train(), ref.double().train()


def _check_layer_case(
    ex: Exercise, learner: nn.Module, ref: nn.Module, x: Tensor, pad: Tensor | None
) -> None:
    name = type(learner).__name__
    out = ex.call(learner, x, pad)
    with quiet():
        expected = ref(x, src_key_padding_mask=None if pad is None else ~pad)
    xd = x.detach()
    other = "post-norm" if ref.norm_first else "pre-norm"
    variants = {
        f"this is the {other} arrangement. Post-norm: x = norm1(x + attn(x)); "
        "x = norm2(x + ffn(x)). Pre-norm: x = x + attn(norm1(x)); "
        "x = x + ffn(norm2(x)).": (pad, dict(norm_first=not ref.norm_first)),
        "padding_mask is True for real tokens, but nn.MultiheadAttention's key_padding_mask "
        "is True for positions to ignore: pass ~padding_mask.": (pad, dict(mask_not_inverted=True)),
        "padding_mask is ignored: pass key_padding_mask=~padding_mask to self_attn.": (None, {}),
        "the residual connections are missing: add each sublayer's input to its output.": (
            pad,
            dict(no_residual=True),
        ),
        **(
            {
                "the residual carries the un-normalized x: x = x + attn(norm1(x)), not "
                "h = norm1(x); h + attn(h) (and the same around the FFN).": (
                    pad,
                    dict(normed_skip=True),
                )
            }
            if ref.norm_first
            else {}
        ),
        "the feed-forward network uses ReLU, as nn.TransformerEncoderLayer does.": (
            pad,
            dict(activation=_gelu),
        ),
    }
    mistakes = {
        hint: (lambda p=p, c=change: _layer_variant(ref, xd, p, **c))
        for hint, (p, change) in variants.items()
    }
    expect_close(
        out,
        expected,
        what=f"{name} on a {tuple(x.shape)} input" + (" with padding" if pad is not None else ""),
        mistakes=mistakes,
        atol=1e-8,
    )
    if x.requires_grad:
        ex.expect_backward(out, expected, {"x": x}, f"{name}.forward")


def _padding(draw: Draw, B: int, T: int) -> Tensor:
    """(B, T) bool, True = a real token: every row padded (lengths 1 .. T - 1, not all alike),
    so that no mask a likely mistake makes of it hides every key of a row (torch's attention
    paths disagree on such rows: NaN on one, zeros on another)."""
    lengths = [draw.integer(1, T - 1) for _ in range(B - 1)]
    lengths.append(draw.choice([n for n in range(1, T) if n != lengths[0]] or [1]))
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]


def check_encoder_layer(
    layer_class: type[nn.Module], norm_first: bool, hidden: bool = False
) -> None:
    """Learner's `PostNormEncoderLayer` or `PreNormEncoderLayer`, `forward(x, padding_mask=None)`.

    Compared with `nn.TransformerEncoderLayer(norm_first=...)` holding the same weights.
    """
    name = "PreNormEncoderLayer" if norm_first else "PostNormEncoderLayer"
    with Exercise(name, hidden, _LAYER) as ex:
        if hidden:
            d = ex.draw
            H = d.choice([1, 2, 4])
            C = H * d.integer(max(2, 4 // H), 4)  # d_model >= 4: a 2-wide LayerNorm hides much
            learner, ref = _paired_layers(
                ex, layer_class, norm_first, (C, H, d.integer(C, 3 * C)), d.integer(0, 2**31)
            )
            B, T = d.integer(2, 4), d.integer(3, 7)
            cases = [
                (d.normal(B, T, C, grad=True), _padding(d, B, T)),
                (d.normal(1, 1, C, grad=True), None),
            ]
        else:
            learner, ref = _paired_layers(ex, layer_class, norm_first, (8, 2, 16), seed=0)
            cases = [(random_tensor(2, 5, 8, seed=5), None)]
        for x, pad in cases:
            _check_layer_case(ex, learner, ref, x, pad)


# --- 9. Counting parameters -----------------------------------------------------------------

COUNT_FORBIDDEN = _LAYER + Forbidden(python=(nn.MultiheadAttention, layers.FeedForward))


def _count_mistakes(C: int, d_ff: int, right: int) -> dict[str, int]:
    return {
        "the biases are missing: each linear map has one per output (attention has "
        "4 * d_model of them, the FFN d_ff + d_model).": 4 * C * C + 2 * C * d_ff,
        "the linear maps' biases are missing: one per output (attention has 4 * d_model of "
        "them, the FFN d_ff + d_model).": right - 5 * C - d_ff,
        "the two LayerNorms have a gain and a bias each: 4 * d_model parameters.": right - 4 * C,
        "there are two LayerNorms (one after each sublayer), 2 * d_model parameters each (a "
        "gain and a bias).": right - 2 * C,
        "the attention's output projection W^O (a d_model x d_model matrix and a bias) is "
        "missing.": right - C * C - C,
        "queries, keys and values have three separate d_model x d_model projections (with "
        "biases), not one.": right - 2 * (C * C + C),
        "the feed-forward network's biases (d_ff + d_model) are missing.": right - d_ff - C,
    }


def _check_count_case(ex: Exercise, fn: Callable[[int, int], int], C: int, d_ff: int) -> None:
    got = as_int(ex.call(fn, C, d_ff), "encoder_layer_parameter_count")
    layer = _TorchEncoderLayer(C, 1, d_ff, batch_first=True, device="meta")  # no memory
    right = sum(p.numel() for p in layer.parameters())
    what = f"encoder_layer_parameter_count({C}, {d_ff})"
    mistakes = _count_mistakes(C, d_ff, right)
    if got != right and got not in mistakes.values():
        raise ExerciseError(
            f"{what} is not right",
            got=got,
            expected=right,
            hint="count the attention (query, key, value and output projections, with biases), "
            "the FFN's two linear maps (with biases) and the two LayerNorms (gain and bias).",
            likely=False,
        )
    expect_equal(got, right, what=what, mistakes=mistakes)


def check_parameter_count(fn: Callable[[int, int], int], hidden: bool = False) -> None:
    """Learner's `encoder_layer_parameter_count(d_model, d_ff) -> int`."""
    with Exercise("encoder_layer_parameter_count", hidden, COUNT_FORBIDDEN) as ex:
        if hidden:
            d = ex.draw
            C = d.integer(2, 1024)
            sizes = [
                (1, 1),
                (d.integer(2, 64), d.integer(1, 300)),
                (C, 4 * C),
                (d.integer(100, 2048), d.integer(1, 8192)),
            ]
        else:
            sizes = [(512, 2048)]
        for C, d_ff in sizes:
            _check_count_case(ex, fn, C, d_ff)


watch_module(__name__)
