"""The pieces of a transformer block: layer norm, feed-forward network, encoder and decoder layers.

Multi-head attention is used here as a black box (`torch.nn.MultiheadAttention`); Chapter 2
opens it. Parameter names follow `torch.nn.TransformerEncoderLayer` and
`torch.nn.TransformerDecoderLayer` (self_attn, linear1, linear2, norm1 ...), so weights copy
across with `load_state_dict` after a rename of `ff.` (see `torch_state_dict`).

Book: 1.3 The transformer block; 1.4 Encoders and decoders.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DecoderLayer",
    "EncoderLayer",
    "FeedForward",
    "LayerNorm",
    "gelu_tanh",
    "layer_norm",
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

    Shapes:
        x (..., C)  ->  (..., C)

    Book: 1.3 The transformer block (Layer normalization).
    """

    def __init__(self, d_model: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: Tensor) -> Tensor:
        return layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class FeedForward(nn.Module):
    """The position-wise feed-forward network: linear2(dropout(activation(linear1(x)))).

    The same two-layer MLP is applied to every position independently.

    Shapes:
        x (B, T, C)  ->  (B, T, C), with a hidden width d_ff

    Book: 1.3 The transformer block (The feed-forward network).
    """

    def __init__(
        self, d_model: int, d_ff: int, dropout: float = 0.0, activation: str = "relu"
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.linear1 = nn.Linear(d_model, d_ff)
        self.activation = ACTIVATIONS[activation]
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))  # (B, T, C)


def _check_sequence(x: Tensor, d_model: int, name: str = "x") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"{name}: expected (batch, seq, {d_model}), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")


def _torch_attn_mask(mask: Tensor | None, B: int, T: int, S: int, n_heads: int) -> Tensor | None:
    """tutorlib's mask (True = may attend) -> nn.MultiheadAttention's (True = blocked)."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool (True = may attend), got {mask.dtype}")
    if mask.shape == (T, S):
        return ~mask  # (T, S)
    if mask.shape == (B, T, S):
        return (~mask).repeat_interleave(n_heads, dim=0)  # (B*H, T, S)
    raise ValueError(f"mask: expected ({T}, {S}) or ({B}, {T}, {S}), got {tuple(mask.shape)}")


def _torch_key_padding_mask(padding_mask: Tensor | None, B: int, S: int) -> Tensor | None:
    """tutorlib's padding mask (True = real token) -> torch's key_padding_mask (True = ignore)."""
    if padding_mask is None:
        return None
    if padding_mask.dtype != torch.bool or padding_mask.shape != (B, S):
        raise ValueError(
            f"padding_mask: expected bool ({B}, {S}) with True = real token, got "
            f"{padding_mask.dtype} {tuple(padding_mask.shape)}"
        )
    return ~padding_mask  # (B, S)


class EncoderLayer(nn.Module):
    """One encoder layer: self-attention and a feed-forward network, each in a residual branch.

    `norm_first=False` is the post-norm layer of Vaswani et al. (2017):
        x = norm1(x + SelfAttention(x));  x = norm2(x + FFN(x))
    `norm_first=True` is the pre-norm layer most models use today:
        x = x + SelfAttention(norm1(x));  x = x + FFN(norm2(x))
    Equal to `nn.TransformerEncoderLayer(..., batch_first=True)` with the same weights.

    Masks use tutorlib's convention: `mask` True = may attend, `padding_mask` True = real token.
    A query row with nothing to attend to comes out NaN from `nn.MultiheadAttention`;
    Chapter 2's attention returns zeros there instead.

    Shapes:
        x (B, T, C); mask (T, T) or (B, T, T); padding_mask (B, T)  ->  (B, T, C)

    Book: 1.3 The transformer block.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.0,
        activation: str = "relu",
        norm_first: bool = False,
    ) -> None:
        super().__init__()
        self.d_model, self.n_heads, self.norm_first = d_model, n_heads, norm_first
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.ff = FeedForward(d_model, d_ff, dropout, activation)
        self.norm1 = LayerNorm(d_model)
        self.norm2 = LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def _sa_block(self, x: Tensor, mask: Tensor | None, padding_mask: Tensor | None) -> Tensor:
        B, T, _ = x.shape
        out, _ = self.self_attn(
            x,
            x,
            x,
            attn_mask=_torch_attn_mask(mask, B, T, T, self.n_heads),
            key_padding_mask=_torch_key_padding_mask(padding_mask, B, T),
            need_weights=False,
        )
        return self.dropout1(out)  # (B, T, C)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, padding_mask: Tensor | None = None
    ) -> Tensor:
        _check_sequence(x, self.d_model)
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), mask, padding_mask)
            x = x + self.dropout2(self.ff(self.norm2(x)))
        else:
            x = self.norm1(x + self._sa_block(x, mask, padding_mask))
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
    ) -> None:
        super().__init__()
        self.d_model, self.n_heads, self.norm_first = d_model, n_heads, norm_first
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.ff = FeedForward(d_model, d_ff, dropout, activation)
        self.norm1 = LayerNorm(d_model)
        self.norm2 = LayerNorm(d_model)
        self.norm3 = LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def _sa_block(self, x: Tensor, self_mask: Tensor | None) -> Tensor:
        B, T, _ = x.shape
        attn_mask = _torch_attn_mask(self_mask, B, T, T, self.n_heads)
        out, _ = self.self_attn(x, x, x, attn_mask=attn_mask, need_weights=False)
        return self.dropout1(out)  # (B, T, C)

    def _ca_block(self, x: Tensor, memory: Tensor, memory_padding_mask: Tensor | None) -> Tensor:
        B, S = memory.shape[:2]
        kpm = _torch_key_padding_mask(memory_padding_mask, B, S)
        out, _ = self.cross_attn(x, memory, memory, key_padding_mask=kpm, need_weights=False)
        return self.dropout2(out)  # (B, T, C)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        self_mask: Tensor | None = None,
        memory_padding_mask: Tensor | None = None,
    ) -> Tensor:
        _check_sequence(x, self.d_model)
        _check_sequence(memory, self.d_model, "memory")
        if memory.shape[0] != x.shape[0]:
            raise ValueError(f"batch sizes differ: x {x.shape[0]}, memory {memory.shape[0]}")
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), self_mask)
            x = x + self._ca_block(self.norm2(x), memory, memory_padding_mask)
            x = x + self.dropout3(self.ff(self.norm3(x)))
        else:
            x = self.norm1(x + self._sa_block(x, self_mask))
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
