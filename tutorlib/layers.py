"""The pieces of a transformer block: norms, feed-forward networks, encoder and decoder layers.

Attention is Chapter 2's `tutorlib.attention.MultiHeadAttention`, used here as a black box until
Chapter 2 opens it. Parameter names follow `torch.nn.TransformerEncoderLayer` and
`torch.nn.TransformerDecoderLayer` (self_attn, linear1, linear2, norm1 ...), so weights copy
across with `load_state_dict` after a rename of `ff.` (see `torch_state_dict`).

The options of modern decoders (6.7) are arguments of the layers: RMSNorm for layer norm,
a SwiGLU feed-forward network, grouped-query attention and bias-free linear maps.

Book: 1.3 The transformer block; 1.4 Encoders and decoders; 6.7 The modern decoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tutorlib.attention import KVCache, MultiHeadAttention

__all__ = [
    "DecoderLayer",
    "EncoderLayer",
    "FeedForward",
    "LayerNorm",
    "RMSNorm",
    "SwiGLU",
    "gelu_tanh",
    "layer_norm",
    "rms_norm",
    "swiglu",
    "torch_state_dict",
]


def gelu_tanh(x: Tensor) -> Tensor:
    """GELU with the tanh approximation of Hendrycks and Gimpel (2016), which GPT-2 uses
    (Hugging Face calls it "gelu_new"); the same as `F.gelu(x, approximate="tanh")`:
    0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))).

    Shapes:
        x (...)  ->  (...)

    Book: 6.6 The Hugging Face Transformers library (GPT-2's activation).
    """
    return F.gelu(x, approximate="tanh")


# The feed-forward activations, by the name configs use: "gelu" is the exact GELU (BERT),
# "gelu_tanh" its tanh approximation (GPT-2).
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "gelu_tanh": gelu_tanh}


def layer_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Layer normalization, written out; same signature and result as `F.layer_norm`.

    Normalizes over the last `len(normalized_shape)` dimensions with the *biased* variance
    (divide by n, not n - 1) and `eps` *inside* the square root, as torch does:
    y = (x - mean) / sqrt(var + eps) * weight + bias.

    Shapes:
        input (..., *normalized_shape); weight, bias normalized_shape  ->  same as input

    Book: 1.3 The transformer block (Layer normalization).
    """
    normalized_shape = tuple(normalized_shape)
    if tuple(input.shape[-len(normalized_shape) :]) != normalized_shape:
        raise ValueError(
            f"input's last dims {tuple(input.shape)} do not match normalized_shape "
            f"{normalized_shape}"
        )
    dims = tuple(range(-len(normalized_shape), 0))
    mean = input.mean(dim=dims, keepdim=True)
    var = input.var(dim=dims, unbiased=False, keepdim=True)  # biased, as torch
    out = (input - mean) / torch.sqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


class LayerNorm(nn.Module):
    """Layer normalization with a learned gain and bias; a drop-in for `nn.LayerNorm(C)`.

    The forward calls torch's fused `F.layer_norm`, which tests/test_layers.py checks against
    the written-out `layer_norm` above. `bias=False` keeps the gain only (nanoGPT's option).

    Shapes:
        x (..., C)  ->  (..., C)

    Book: 1.3 The transformer block (Layer normalization).
    """

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


def rms_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    """Root-mean-square normalization (Zhang and Sennrich, 2019), written out; same signature
    and result as `F.rms_norm`.

    y = x / sqrt(mean(x^2) + eps) * weight over the last `len(normalized_shape)` dimensions:
    layer norm without subtracting the mean and without a bias. `eps=None` means
    `torch.finfo(input.dtype).eps`, as in torch (Llama uses 1e-5 or 1e-6).

    Shapes:
        input (..., *normalized_shape); weight normalized_shape  ->  same as input

    Book: 6.7 The modern decoder (RMSNorm).
    """
    normalized_shape = tuple(normalized_shape)
    if tuple(input.shape[-len(normalized_shape) :]) != normalized_shape:
        raise ValueError(
            f"input's last dims {tuple(input.shape)} do not match normalized_shape "
            f"{normalized_shape}"
        )
    eps = torch.finfo(input.dtype).eps if eps is None else eps
    dims = tuple(range(-len(normalized_shape), 0))
    out = input * torch.rsqrt(input.pow(2).mean(dim=dims, keepdim=True) + eps)
    return out if weight is None else out * weight


class _RMSNormFunction(torch.autograd.Function):
    """RMS normalization over the last dimension with its backward pass written out.

    With x_hat = x r, r = 1 / sqrt(mean(x^2) + eps) and g = grad * weight, the gradient is
    dx = r (g - x_hat mean(g x_hat)): one line instead of the dozen operations autograd records
    for `F.rms_norm`, which torch 2.13 runs on a CPU as separate operations. It makes the
    training step of a Llama-style model measurably faster; tests/test_layers.py checks it
    against `F.rms_norm` (values and gradients) and with `torch.autograd.gradcheck`.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        r = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)  # (..., 1): 1 / RMS
        ctx.save_for_backward(x, weight, r)
        return x * r * weight

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        x, weight, r = ctx.saved_tensors
        x_hat = x * r  # (..., C): the normalized input
        g = grad * weight  # (..., C): the gradient with respect to x_hat
        dx = r * (g - x_hat * (g * x_hat).mean(dim=-1, keepdim=True))
        dweight = (grad * x_hat).reshape(-1, x.shape[-1]).sum(0)  # (C,)
        return dx, dweight, None


class RMSNorm(nn.Module):
    """RMS normalization with a learned gain; a drop-in for `nn.RMSNorm(C, eps)`.

    In float32 and float64 the forward runs `_RMSNormFunction` (the gradient written out, for
    speed); in other dtypes torch's `F.rms_norm`. Both are checked against `rms_norm`.

    Shapes:
        x (..., C)  ->  (..., C)

    Book: 6.7 The modern decoder (RMSNorm).
    """

    def __init__(self, d_model: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.float32, torch.float64) and x.dtype == self.weight.dtype:
            return _RMSNormFunction.apply(x, self.weight, self.eps)
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


NORMS = {"layer": LayerNorm, "rms": RMSNorm}


def make_norm(kind: str, d_model: int, eps: float = 1e-5, bias: bool = True) -> nn.Module:
    """`LayerNorm` (kind "layer", with a bias unless bias=False) or `RMSNorm` (kind "rms")."""
    if kind not in NORMS:
        raise ValueError(f"norm must be one of {sorted(NORMS)}, got {kind!r}")
    return LayerNorm(d_model, eps, bias) if kind == "layer" else RMSNorm(d_model, eps)


class FeedForward(nn.Module):
    """The position-wise feed-forward network: linear2(dropout(activation(linear1(x)))).

    The same two-layer MLP is applied to every position independently.

    Shapes:
        x (B, T, C)  ->  (B, T, C), with a hidden width d_ff

    Book: 1.3 The transformer block (The feed-forward network).
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        dropout: float = 0.0,
        activation: str = "relu",
        bias: bool = True,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.linear1 = nn.Linear(d_model, d_ff, bias=bias)
        self.activation = ACTIVATIONS[activation]
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))  # (B, T, C)


def swiglu(x: Tensor, gate_weight: Tensor, up_weight: Tensor, down_weight: Tensor) -> Tensor:
    """The SwiGLU feed-forward network of Shazeer (2020), as in PaLM and Llama:
    down(silu(x W_gate^T) * (x W_up^T)), with silu(z) = z sigmoid(z).

    A gated linear unit: one projection (up) carries the signal, the other (gate), through a
    SiLU, decides how much of each hidden unit passes. Three matrices instead of two, so the
    hidden width is usually 2/3 of the MLP's 4C (Llama: 8C/3, rounded) to keep the parameters.

    Shapes:
        x (..., C); gate_weight, up_weight (d_ff, C); down_weight (C, d_ff)  ->  (..., C)

    Book: 6.7 The modern decoder (SwiGLU).
    """
    return F.linear(F.silu(F.linear(x, gate_weight)) * F.linear(x, up_weight), down_weight)


class SwiGLU(nn.Module):
    """The SwiGLU feed-forward network (`swiglu`), with Hugging Face Llama's parameter names
    `gate_proj`, `up_proj`, `down_proj`; biases only when `bias=True`.

    Shapes:
        x (B, T, C)  ->  (B, T, C), with a hidden width d_ff

    Book: 6.7 The modern decoder (SwiGLU).
    """

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        hidden = F.silu(self.gate_proj(x)) * self.up_proj(x)  # (B, T, d_ff)
        return self.down_proj(self.dropout(hidden))  # (B, T, C)


def make_feed_forward(
    kind: str, d_model: int, d_ff: int, dropout: float, activation: str, bias: bool
) -> nn.Module:
    """`FeedForward` (kind "mlp", with `activation`) or `SwiGLU` (kind "swiglu")."""
    if kind == "mlp":
        return FeedForward(d_model, d_ff, dropout, activation, bias)
    if kind == "swiglu":
        return SwiGLU(d_model, d_ff, dropout, bias)
    raise ValueError(f"feed_forward must be 'mlp' or 'swiglu', got {kind!r}")


def _check_sequence(x: Tensor, d_model: int, name: str = "x") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"{name}: expected (batch, seq, {d_model}), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")


class EncoderLayer(nn.Module):
    """One encoder layer: self-attention and a feed-forward network, each in a residual branch.

    `norm_first=False` is the post-norm layer of Vaswani et al. (2017):
        x = norm1(x + SelfAttention(x));  x = norm2(x + FFN(x))
    `norm_first=True` is the pre-norm layer most models use today:
        x = x + SelfAttention(norm1(x));  x = x + FFN(norm2(x))
    With the defaults it equals `nn.TransformerEncoderLayer(..., batch_first=True)` with the
    same weights. Run with `is_causal=True` it is a decoder-only (GPT, Llama) layer; the options
    of modern decoders are `norm="rms"`, `feed_forward="swiglu"`, `n_kv_heads` and
    `bias=False`, and the forward takes rotary tables and a `KVCache` (see `MultiHeadAttention`).

    Masks use tutorlib's convention: `mask` True = may attend, `padding_mask` True = real token.
    A query row with nothing to attend to gets zeros (`nn.MultiheadAttention` gives NaN).

    Shapes:
        x (B, T, C); mask (T, S) or (B, T, S); padding_mask (B, S), S = T plus the cached
        positions  ->  (B, T, C)

    Book: 1.3 The transformer block; 6.7 The modern decoder.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.0,
        activation: str = "relu",
        norm_first: bool = False,
        *,
        norm: str = "layer",
        feed_forward: str = "mlp",
        n_kv_heads: int | None = None,
        bias: bool = True,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.d_model, self.n_heads, self.norm_first = d_model, n_heads, norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout, bias, n_kv_heads)
        self.ff = make_feed_forward(feed_forward, d_model, d_ff, dropout, activation, bias)
        self.norm1 = make_norm(norm, d_model, norm_eps, bias)
        self.norm2 = make_norm(norm, d_model, norm_eps, bias)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def _sa_block(
        self, x: Tensor, mask: Tensor | None, padding_mask: Tensor | None, **kw
    ) -> Tensor:
        out, _ = self.self_attn(x, x, x, padding_mask, mask, **kw)
        return self.dropout1(out)  # (B, T, C)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        padding_mask: Tensor | None = None,
        *,
        is_causal: bool = False,
        rotary: tuple[Tensor, Tensor] | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> Tensor:
        _check_sequence(x, self.d_model)
        attend = dict(is_causal=is_causal, rotary=rotary, cache=cache, layer=layer)
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), mask, padding_mask, **attend)
            x = x + self.dropout2(self.ff(self.norm2(x)))
        else:
            x = self.norm1(x + self._sa_block(x, mask, padding_mask, **attend))
            x = self.norm2(x + self.dropout2(self.ff(x)))
        return x  # (B, T, C)


class DecoderLayer(nn.Module):
    """One decoder layer of an encoder-decoder: masked self-attention, cross-attention over
    the encoder's output (`memory`), and a feed-forward network, each in a residual branch.

    Post-norm (`norm_first=False`, the 2017 paper) or pre-norm, as in `EncoderLayer`. Equal to
    `nn.TransformerDecoderLayer(..., batch_first=True)` with the same weights (torch calls the
    cross-attention `multihead_attn`). `self_mask` defaults to none: pass `causal_mask(T)`
    for autoregressive decoding.

    Shapes:
        x (B, T, C); memory (B, S, C); self_mask (T, T) or (B, T, T);
        memory_padding_mask (B, S)  ->  (B, T, C)

    Book: 1.4 Encoders and decoders.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.0,
        activation: str = "relu",
        norm_first: bool = False,
        *,
        norm: str = "layer",
        feed_forward: str = "mlp",
        n_kv_heads: int | None = None,
        bias: bool = True,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.d_model, self.n_heads, self.norm_first = d_model, n_heads, norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout, bias, n_kv_heads)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout, bias, n_kv_heads)
        self.ff = make_feed_forward(feed_forward, d_model, d_ff, dropout, activation, bias)
        self.norm1 = make_norm(norm, d_model, norm_eps, bias)
        self.norm2 = make_norm(norm, d_model, norm_eps, bias)
        self.norm3 = make_norm(norm, d_model, norm_eps, bias)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def _sa_block(self, x: Tensor, self_mask: Tensor | None, is_causal: bool) -> Tensor:
        out, _ = self.self_attn(x, x, x, attn_mask=self_mask, is_causal=is_causal)
        return self.dropout1(out)  # (B, T, C)

    def _ca_block(self, x: Tensor, memory: Tensor, memory_padding_mask: Tensor | None) -> Tensor:
        out, _ = self.cross_attn(x, memory, memory, padding_mask=memory_padding_mask)
        return self.dropout2(out)  # (B, T, C)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        self_mask: Tensor | None = None,
        memory_padding_mask: Tensor | None = None,
        *,
        is_causal: bool = False,
    ) -> Tensor:
        _check_sequence(x, self.d_model)
        _check_sequence(memory, self.d_model, "memory")
        if memory.shape[0] != x.shape[0]:
            raise ValueError(f"batch sizes differ: x {x.shape[0]}, memory {memory.shape[0]}")
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), self_mask, is_causal)
            x = x + self._ca_block(self.norm2(x), memory, memory_padding_mask)
            x = x + self.dropout3(self.ff(self.norm3(x)))
        else:
            x = self.norm1(x + self._sa_block(x, self_mask, is_causal))
            x = self.norm2(x + self._ca_block(x, memory, memory_padding_mask))
            x = self.norm3(x + self.dropout3(self.ff(x)))
        return x  # (B, T, C)


def torch_state_dict(layer: EncoderLayer | DecoderLayer) -> dict[str, Tensor]:
    """This layer's weights under the names `nn.TransformerEncoderLayer`/`DecoderLayer` use."""
    renamed = {}
    for name, value in layer.state_dict().items():
        name = name.replace("ff.", "").replace("cross_attn.", "multihead_attn.")
        renamed[name] = value
    return renamed
