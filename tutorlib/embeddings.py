"""Token embeddings and positional encodings; rotary position embeddings.

Book: 1.2 Tokens, embeddings and positions; 4.8 Long contexts (rotary embeddings).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LearnedPositionalEmbedding",
    "SinusoidalPositionalEncoding",
    "TokenEmbedding",
    "apply_rotary",
    "rotary_angles",
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


def _check_positions(x: Tensor, context_length: int, d_model: int, start: int = 0) -> None:
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"expected (batch, seq, {d_model}), got {tuple(x.shape)}")
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        raise ValueError(f"start must be an int >= 0, got {start!r}")
    if start + x.shape[1] > context_length:
        where = (
            f"positions {start}..{start + x.shape[1] - 1}"
            if start
            else (f"sequence of {x.shape[1]} tokens")
        )
        raise ValueError(f"{where} longer than context_length={context_length}")


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
        # F.embedding is the row lookup self.weight[tokens]. Its backward adds each token's
        # gradient into its row in a fixed order; the indexing's backward (index_put_ with
        # accumulation) does not on several CPU threads, and trained models differed by 0.06.
        return F.embedding(tokens, self.weight) * math.sqrt(self.d_model)  # (B, T, C)


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal encoding to a sequence of embeddings (no parameters).

    `start` numbers the positions of a segment that continues a cached prefix (4.5).

    Shapes:
        x (B, T, C)  ->  (B, T, C), start + T <= context_length

    Book: 1.2 Tokens, embeddings and positions.
    """

    pe: Tensor

    def __init__(self, context_length: int, d_model: int) -> None:
        super().__init__()
        self.context_length = context_length
        self.d_model = d_model
        self.register_buffer("pe", sinusoidal_encoding(context_length, d_model), persistent=False)

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        _check_positions(x, self.context_length, self.d_model, start)
        return x + self.pe[start : start + x.shape[1]].to(x.dtype)  # (B, T, C)


class LearnedPositionalEmbedding(nn.Module):
    """Adds a learned vector per position (BERT, GPT-2); it cannot extrapolate past its table.

    `start` numbers the positions of a segment that continues a cached prefix (4.5).

    Shapes:
        x (B, T, C)  ->  (B, T, C), start + T <= context_length

    Book: 1.2 Tokens, embeddings and positions.
    """

    def __init__(self, context_length: int, d_model: int) -> None:
        super().__init__()
        self.context_length = context_length
        self.d_model = d_model
        self.weight = nn.Parameter(0.02 * torch.randn(context_length, d_model))

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        _check_positions(x, self.context_length, self.d_model, start)
        return x + self.weight[start : start + x.shape[1]]  # (B, T, C)


# --- Rotary position embeddings -----------------------------------------------------------------


def rotary_angles(
    T: int,
    D: int,
    base: float = 10000.0,
    offset: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """The cosines and sines of rotary position embeddings (RoPE, Su et al. 2021) for the
    positions offset, offset + 1, ..., offset + T - 1.

    Position t turns pair j of a head's D dimensions by the angle t * theta_j, with
    theta_j = base^(-2j / D), j = 0 .. D/2 - 1: the frequencies of `sinusoidal_encoding`.
    `offset` numbers the positions of a segment that continues an earlier one (a cache or a
    Transformer-XL memory of `offset` tokens). The angles are computed in float64, then cast.

    Shapes:
        returns cos (T, D/2) and sin (T, D/2)

    Book: 4.8 Long contexts.
    """
    for name, value in (("T", T), ("D", D)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if D % 2:
        raise ValueError(f"D must be even (rotary embeddings turn pairs of dimensions), got {D}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValueError(f"offset must be an int >= 0, got {offset!r}")
    if not base > 0:
        raise ValueError(f"base must be positive, got {base!r}")
    position = torch.arange(offset, offset + T, dtype=torch.float64, device=device)  # (T,)
    two_j = torch.arange(0, D, 2, dtype=torch.float64, device=device)  # (D/2,)
    angles = position.unsqueeze(1) * base ** (-two_j / D)  # (T, D/2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair of dimensions (2j, 2j + 1) of every query or key vector by its
    position's angle: the rotary position embedding of Su et al. (2021), section 3.4.

    (x_2j, x_2j+1) at position t becomes
    (x_2j cos(t theta_j) - x_2j+1 sin(t theta_j), x_2j sin(t theta_j) + x_2j+1 cos(t theta_j)),
    which is the complex number x_2j + i x_2j+1 times e^{i t theta_j}. Apply it to the queries
    and the keys (not the values) of every head: the score of a query at m and a key at n
    then depends on the positions only through m - n. Rotations preserve length:
    |apply_rotary(x)| = |x| at every position.

    This is the paper's convention, adjacent pairs (2j, 2j + 1). Some libraries (GPT-NeoX,
    Hugging Face's Llama) pair dimension j with j + D/2 instead ("rotate halves"): the same
    rotations after a fixed permutation of the dimensions, so weights trained in one
    convention need their query and key rows permuted to run in the other.

    Shapes:
        x (B, H, T, D), D even; cos and sin (T, D/2) from `rotary_angles(T, D)`
        ->  (B, H, T, D)

    Book: 4.8 Long contexts.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating point, got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(
            f"x: expected (batch, heads, seq, head_dim) = 4 dims, got {tuple(x.shape)}"
        )
    T, D = x.shape[-2], x.shape[-1]
    if D % 2:
        raise ValueError(f"x's head_dim D must be even (pairs of dimensions), got {D}")
    for name, table in (("cos", cos), ("sin", sin)):
        if not isinstance(table, Tensor) or tuple(table.shape) != (T, D // 2):
            shape = tuple(table.shape) if isinstance(table, Tensor) else type(table).__name__
            raise ValueError(
                f"{name}: expected (T, D/2) = {(T, D // 2)} for x of shape {tuple(x.shape)}, "
                f"got {shape}"
            )
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # (T, D/2)
    even, odd = x[..., 0::2], x[..., 1::2]  # (B, H, T, D/2) each
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2)  # (B, H, T, D/2, 2) -> (B, H, T, D)
