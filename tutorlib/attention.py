"""Attention masks. Chapter 2 adds the attention computation itself.

One convention everywhere in tutorlib: a boolean mask, True = may attend (as the
`attn_mask` of `torch.nn.functional.scaled_dot_product_attention`).

Book: 1.4 Encoders and decoders (the causal mask); Chapter 2 (the rest).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["causal_mask", "padding_mask"]


def causal_mask(T: int, device: torch.device | str | None = None) -> Tensor:
    """The look-ahead mask of a decoder: position t may attend to positions 0..t.

    Shapes:
        returns (T, T) bool, True on and below the diagonal.

    Book: 1.4 Encoders and decoders.
    """
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive int, got {T!r}")
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()  # (T, T)


def padding_mask(lengths: Tensor, T: int) -> Tensor:
    """True for real tokens, False for padding, from each sequence's length.

    Shapes:
        lengths (B,) integers in [0, T]  ->  (B, T) bool

    Book: 1.4 Encoders and decoders.
    """
    if lengths.dim() != 1 or lengths.is_floating_point():
        raise ValueError(
            f"lengths: expected (batch,) integers, got {lengths.dtype} {lengths.shape}"
        )
    if lengths.numel() and (lengths.min() < 0 or lengths.max() > T):
        raise ValueError(f"lengths must lie in [0, {T}], got {lengths.tolist()}")
    positions = torch.arange(T, device=lengths.device)  # (T,)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
