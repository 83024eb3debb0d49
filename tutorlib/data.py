"""Synthetic tasks generated on the fly: no downloads, seeded, any size.

Book: 1.1 Why transformers; 1.3 The transformer block; 2.5 Associative recall.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["associative_recall_batch", "recall_batch", "sorting_batch"]


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


def recall_batch(
    batch_size: int,
    length: int,
    vocab_size: int,
    distance: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Random token sequences, each labelled with the token `distance` places before its last
    one: a task whose answer lies a chosen distance back, to probe long-range dependencies.

    `distance=0` asks for the last token itself; the default, `length - 1`, asks for the first.

    Shapes:
        returns inputs (B, T) and targets (B,), int64 ids in [0, vocab_size)

    Book: 1.1 Why transformers (Learning a long-range dependency).
    """
    for name, value in (("batch_size", batch_size), ("length", length), ("vocab_size", vocab_size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if distance is None:
        distance = length - 1
    if not isinstance(distance, int) or isinstance(distance, bool):
        raise TypeError(f"distance must be an int or None, got {type(distance).__name__}")
    if not 0 <= distance < length:
        raise ValueError(f"distance must lie in [0, {length - 1}] (length - 1), got {distance}")
    inputs = torch.randint(0, vocab_size, (batch_size, length), generator=generator)  # (B, T)
    targets = inputs[:, length - 1 - distance]  # (B,)
    return inputs.to(device), targets.to(device)


def associative_recall_batch(
    batch_size: int,
    n_pairs: int,
    n_keys: int,
    n_values: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Key-value look-up: `k1 v1 k2 v2 ... kn vn q`, labelled with the value stored under the
    query key q, which is one of the n keys.

    Keys are ids 0 .. n_keys - 1, distinct within a sequence; values are ids
    n_keys .. n_keys + n_values - 1, drawn with replacement. The vocabulary therefore has
    V = n_keys + n_values tokens and a sequence T = 2 * n_pairs + 1 of them.

    Shapes:
        returns inputs (B, T) and targets (B,), int64, T = 2 * n_pairs + 1; targets are
        value ids in [n_keys, n_keys + n_values)

    Book: 2.5 A model that is all attention: associative recall.
    """
    sizes = (
        ("batch_size", batch_size),
        ("n_pairs", n_pairs),
        ("n_keys", n_keys),
        ("n_values", n_values),
    )
    for name, value in sizes:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if n_pairs > n_keys:
        raise ValueError(f"keys are distinct, so n_pairs ({n_pairs}) must be <= n_keys ({n_keys})")
    scores = torch.rand(batch_size, n_keys, generator=generator)  # (B, n_keys)
    keys = scores.argsort(dim=1)[:, :n_pairs]  # (B, n): distinct keys per sequence
    values = n_keys + torch.randint(0, n_values, (batch_size, n_pairs), generator=generator)
    which = torch.randint(0, n_pairs, (batch_size,), generator=generator)  # (B,)
    rows = torch.arange(batch_size)
    query = keys[rows, which]  # (B,)
    targets = values[rows, which]  # (B,)
    pairs = torch.stack([keys, values], dim=2).reshape(batch_size, 2 * n_pairs)  # (B, 2n)
    inputs = torch.cat([pairs, query.unsqueeze(1)], dim=1)  # (B, 2n + 1)
    return inputs.to(device), targets.to(device)
