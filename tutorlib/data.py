"""Synthetic tasks generated on the fly: no downloads, seeded, any size.

Book: 1.1 Why transformers; 1.3 The transformer block.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sorting_batch"]


def sorting_batch(
    batch_size: int,
    length: int,
    vocab_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Random token sequences and the same tokens sorted: a task where every output position
    depends on every input position.

    Shapes:
        returns inputs (B, T) and targets (B, T), int64 ids in [0, vocab_size)
    """
    if min(batch_size, length, vocab_size) < 1:
        raise ValueError(f"sizes must be positive, got {batch_size=}, {length=}, {vocab_size=}")
    inputs = torch.randint(0, vocab_size, (batch_size, length), generator=generator)
    targets = inputs.sort(dim=1).values
    return inputs.to(device), targets.to(device)
