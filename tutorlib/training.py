"""A minimal training loop; Chapter 3 adds schedules, label smoothing and mixed precision.

Book: 1.3 The transformer block (the post-norm vs pre-norm experiment); Chapter 3.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = ["fit", "sequence_cross_entropy"]


def sequence_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over every position.

    Shapes:
        logits (B, T, V) or (B, V); targets (B, T) or (B,)  ->  scalar
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} should be targets {tuple(targets.shape)} plus a "
            "vocabulary dimension"
        )
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def fit(
    model: nn.Module,
    make_batch: Callable[[], tuple[Tensor, Tensor]],
    steps: int,
    lr: float,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = sequence_cross_entropy,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    clip_norm: float | None = None,
    desc: str = "training",
) -> dict[str, list[float]]:
    """Train `model` with AdamW (betas 0.9, 0.98 as in the 2017 paper) for `steps` batches.

    `make_batch()` returns (inputs, targets) already on the model's device. The learning rate
    rises linearly over `warmup_steps` and then stays at `lr`. Returns the loss and the
    gradient norm (before clipping) of every step.
    """
    if steps < 1 or lr <= 0:
        raise ValueError(f"need steps >= 1 and lr > 0, got steps={steps}, lr={lr}")
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    )
    history: dict[str, list[float]] = {"loss": [], "grad_norm": []}
    model.train()
    for _ in tqdm(range(steps), desc=desc, mininterval=1.0):
        inputs, targets = make_batch()
        loss = loss_fn(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = clip_norm if clip_norm is not None else float("inf")
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        schedule.step()
        history["loss"].append(loss.item())
        history["grad_norm"].append(grad_norm.item())
    model.eval()
    return history
