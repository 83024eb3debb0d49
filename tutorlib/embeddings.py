"""Token embeddings and positional encodings.

Book: 1.2 Tokens, embeddings and positions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "LearnedPositionalEmbedding",
    "SinusoidalPositionalEncoding",
    "TokenEmbedding",
    "sinusoidal_encoding",
]


def sinusoidal_encoding(
    context_length: int, d_model: int, base: float = 10000.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The fixed sinusoidal positional encoding of Vaswani et al. (2017), section 3.5.

    PE[t, 2i] = sin(t / base^(2i / d_model)) and PE[t, 2i + 1] = cos(t / base^(2i / d_model)):
    sines in the even columns, cosines in the odd ones, positions counted from 0.

    Shapes:
        returns (T, C) with T = context_length, C = d_model.

    Book: 1.2 Tokens, embeddings and positions.
    """
    for name, value in (("context_length", context_length), ("d_model", d_model)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if d_model % 2:
        raise ValueError(f"d_model must be even (sin/cos pairs), got {d_model}")
    position = torch.arange(context_length, dtype=torch.float64).unsqueeze(1)  # (T, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (C/2,)
    angles = position / base ** (two_i / d_model)  # (T, C/2)
    pe = torch.empty(context_length, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles)
    return pe.to(dtype)  # (T, C)


def _check_tokens(tokens: Tensor, vocab_size: int) -> None:
    if not isinstance(tokens, Tensor):
        raise TypeError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}")
    if tokens.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"tokens must hold integer ids (torch.long), got {tokens.dtype}")
    if tokens.dim() != 2:
        raise ValueError(f"tokens: expected (batch, seq) = 2 dims, got shape {tuple(tokens.shape)}")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(
            f"token ids must lie in [0, {vocab_size}), got min {int(tokens.min())}, "
            f"max {int(tokens.max())}"
        )


def _check_positions(x: Tensor, context_length: int, d_model: int) -> None:
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"expected (batch, seq, {d_model}), got {tuple(x.shape)}")
    if x.shape[1] > context_length:
        raise ValueError(
            f"sequence of {x.shape[1]} tokens is longer than context_length={context_length}"
        )


class TokenEmbedding(nn.Module):
    """A learned lookup table, scaled by sqrt(d_model) as in Vaswani et al. (2017), 3.4.

    Shapes:
        tokens (B, T) integer ids in [0, V)  ->  (B, T, C)

    Book: 1.2 Tokens, embeddings and positions.
    """

    def __init__(self, vocab_size: int, d_model: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.weight = nn.Parameter(torch.randn(vocab_size, d_model) / math.sqrt(d_model))

    def forward(self, tokens: Tensor) -> Tensor:
        _check_tokens(tokens, self.vocab_size)
        return self.weight[tokens] * math.sqrt(self.d_model)  # (B, T, C)


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal encoding to a sequence of embeddings (no parameters).

    Shapes:
        x (B, T, C)  ->  (B, T, C), T <= context_length

    Book: 1.2 Tokens, embeddings and positions.
    """

    pe: Tensor

    def __init__(self, context_length: int, d_model: int) -> None:
        super().__init__()
        self.context_length = context_length
        self.d_model = d_model
        self.register_buffer("pe", sinusoidal_encoding(context_length, d_model), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        _check_positions(x, self.context_length, self.d_model)
        return x + self.pe[: x.shape[1]].to(x.dtype)  # (B, T, C)


class LearnedPositionalEmbedding(nn.Module):
    """Adds a learned vector per position (BERT, GPT-2); it cannot extrapolate past its table.

    Shapes:
        x (B, T, C)  ->  (B, T, C), T <= context_length

    Book: 1.2 Tokens, embeddings and positions.
    """

    def __init__(self, context_length: int, d_model: int) -> None:
        super().__init__()
        self.context_length = context_length
        self.d_model = d_model
        self.weight = nn.Parameter(0.02 * torch.randn(context_length, d_model))

    def forward(self, x: Tensor) -> Tensor:
        _check_positions(x, self.context_length, self.d_model)
        return x + self.weight[: x.shape[1]]  # (B, T, C)
