"""Training: the loss, the learning-rate schedules and one reusable loop.

`fit` runs AdamW with a schedule, gradient clipping, optional mixed precision (autocast),
periodic evaluation and a progress bar; `save_checkpoint`/`load_checkpoint` store and restore
a run. `label_smoothed_cross_entropy` is the 2017 paper's loss, written out; it equals
`F.cross_entropy(..., ignore_index=..., label_smoothing=...)`.

Book: 1.3 The transformer block (post-norm vs pre-norm); 3.2 Training the date translator;
3.4 Stability; 3.5 Mixed precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = [
    "cosine_schedule",
    "constant_schedule",
    "fit",
    "inverse_sqrt_schedule",
    "label_smoothed_cross_entropy",
    "load_checkpoint",
    "mask_for_mlm",
    "save_checkpoint",
    "sequence_cross_entropy",
]

Schedule = Callable[[int], float]


def _check_logits(logits: Tensor, targets: Tensor) -> None:
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} should be targets {tuple(targets.shape)} plus a "
            "vocabulary dimension"
        )


def sequence_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over every position.

    Shapes:
        logits (B, T, V) or (B, V); targets (B, T) or (B,)  ->  scalar
    """
    _check_logits(logits, targets)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def label_smoothed_cross_entropy(
    logits: Tensor, targets: Tensor, smoothing: float = 0.0, ignore_index: int = -100
) -> Tensor:
    """Cross-entropy against a smoothed target, averaged over the positions that count.

    The target distribution puts 1 - smoothing on the true token and spreads `smoothing`
    evenly over all V tokens (Szegedy et al. 2016; Vaswani et al. 2017 use 0.1). Positions
    whose target is `ignore_index` (padding) add nothing and are left out of the mean.
    Same result as `F.cross_entropy(logits, targets, ignore_index=..., label_smoothing=...)`:

        loss_i = (1 - smoothing) * (-log p_i[y_i]) + smoothing * mean_v(-log p_i[v])

    Shapes:
        logits (B, T, V) or (B, V); targets (B, T) or (B,) int64  ->  scalar

    Book: 3.2 Training the date translator.
    """
    _check_logits(logits, targets)
    if targets.dtype != torch.long:
        raise TypeError(f"targets must be int64 token ids, got {targets.dtype}")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must lie in [0, 1), got {smoothing}")
    log_probs = logits.reshape(-1, logits.shape[-1]).float().log_softmax(dim=-1)  # (N, V)
    targets = targets.reshape(-1)  # (N,)
    keep = targets != ignore_index  # (N,)
    safe = targets.masked_fill(~keep, 0)  # any valid id; these rows are dropped below
    nll = -log_probs.gather(1, safe.unsqueeze(1)).squeeze(1)  # (N,)
    uniform = -log_probs.mean(dim=-1)  # (N,)
    per_token = (1.0 - smoothing) * nll + smoothing * uniform  # (N,)
    return (per_token * keep).sum() / keep.sum()  # NaN if nothing counts, as torch


def mask_for_mlm(
    tokens: Tensor,
    mask_id: int,
    vocab_size: int,
    special_ids: Sequence[int] = (),
    p: float = 0.15,
    generator: torch.Generator | None = None,
    ignore_index: int = -100,
) -> tuple[Tensor, Tensor]:
    """BERT's masked-language-model corruption (Devlin et al. 2019, section 3.1).

    Each ordinary token is selected with probability `p`; special tokens (padding, [CLS], ...
    in `special_ids`) never are. A selected token is replaced by `mask_id` 80 % of the time,
    by a random ordinary token 10 % of the time, and left as it is 10 % of the time; the model
    must predict the original at every selected position, and only there: the labels hold
    the original id at selected positions and `ignore_index` everywhere else.

    Shapes:
        tokens (B, T) int64  ->  inputs (B, T), labels (B, T)

    Book: 3.7 Pretraining and fine-tuning.
    """
    if not isinstance(tokens, Tensor) or tokens.dtype != torch.long:
        raise TypeError("tokens must be an int64 tensor of token ids")
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    special = torch.tensor(sorted({*special_ids, mask_id}), device=tokens.device)
    ordinary = ~torch.isin(tokens, special)  # (B, T)
    draw = torch.rand(tokens.shape, generator=generator).to(tokens.device)  # (B, T)
    selected = ordinary & (draw < p)
    kind = torch.rand(tokens.shape, generator=generator).to(tokens.device)  # (B, T)
    to_mask = selected & (kind < 0.8)
    to_random = selected & (kind >= 0.8) & (kind < 0.9)
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[special.cpu()] = False
    choices = allowed.nonzero().squeeze(1)  # ordinary ids
    pick = torch.randint(0, len(choices), tokens.shape, generator=generator)
    random_tokens = choices[pick].to(tokens.device)  # (B, T)
    inputs = torch.where(to_mask, mask_id, torch.where(to_random, random_tokens, tokens))
    labels = torch.where(selected, tokens, ignore_index)
    return inputs, labels


def constant_schedule(warmup_steps: int = 0) -> Schedule:
    """Learning-rate multiplier: a linear warm-up over `warmup_steps`, then 1.

    The multiplier for the optimizer's step s (counted from 0) is min(1, (s + 1) / warmup):
    the first step already moves, at lr / warmup.

    Book: 3.2 Training the date translator.
    """
    _check_steps(warmup_steps=warmup_steps)
    return lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps else 1.0


def inverse_sqrt_schedule(warmup_steps: int) -> Schedule:
    """The 2017 paper's schedule as a multiplier of the peak learning rate: linear warm-up
    for `warmup_steps`, then decay as 1 / sqrt(step).

    Vaswani et al. (2017, eq. 3) write lr = d_model^-0.5 * min(n^-0.5, n * warmup^-1.5) for
    step n = s + 1; that is this multiplier times a peak of (d_model * warmup)^-0.5.

    Book: 3.2 Training the date translator.
    """
    _check_steps(warmup_steps=warmup_steps)
    if warmup_steps < 1:
        raise ValueError("the inverse-square-root schedule needs warmup_steps >= 1")
    return lambda s: min((s + 1) / warmup_steps, math.sqrt(warmup_steps / (s + 1)))


def cosine_schedule(warmup_steps: int, total_steps: int, final: float = 0.0) -> Schedule:
    """Linear warm-up, then a half cosine from 1 down to `final` at `total_steps`.

    Book: 3.2 Training the date translator.
    """
    _check_steps(warmup_steps=warmup_steps, total_steps=total_steps)
    if warmup_steps >= total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be < total_steps={total_steps}")

    def multiplier(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        progress = min(1.0, (s - warmup_steps) / max(1, total_steps - warmup_steps))
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def _check_steps(**steps: int) -> None:
    for name, value in steps.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")


def _call(model: nn.Module, inputs: Any) -> Tensor:
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(inputs)


def fit(
    model: nn.Module,
    make_batch: Callable[[], tuple[Any, Tensor]],
    steps: int,
    lr: float,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = sequence_cross_entropy,
    warmup_steps: int = 0,
    schedule: Schedule | None = None,
    weight_decay: float = 0.0,
    clip_norm: float | None = None,
    autocast_dtype: torch.dtype | None = None,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    eval_every: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    desc: str = "training",
    progress: bool = True,
) -> dict[str, list[float]]:
    """Train `model` for `steps` batches with AdamW (betas 0.9, 0.98, as in the 2017 paper).

    `make_batch()` returns (inputs, targets) on the model's device; `inputs` is a tensor, or
    a tuple (or dict) of the model's arguments. The learning rate is `lr` times
    `schedule(step)`; without a schedule it warms up linearly over `warmup_steps` and stays.
    `clip_norm` clips the gradients' global norm; `autocast_dtype` (torch.bfloat16, or
    torch.float16 on a GPU, with loss scaling) runs the forward pass in mixed precision.
    Every `eval_every` steps, and after the last, `evaluate(model)` runs in eval mode without
    gradients; its numbers go into the history as "eval_<name>", with "eval_step".

    Returns the history: per step "loss", "grad_norm" (before clipping) and "lr".
    """
    if steps < 1 or lr <= 0:
        raise ValueError(f"need steps >= 1 and lr > 0, got steps={steps}, lr={lr}")
    if evaluate is not None and eval_every < 0:
        raise ValueError(f"eval_every must be >= 0, got {eval_every}")
    device_type = next(model.parameters()).device.type
    if autocast_dtype not in (None, torch.bfloat16, torch.float16):
        raise ValueError(f"autocast_dtype must be None, bfloat16 or float16, got {autocast_dtype}")
    if autocast_dtype == torch.float16 and device_type != "cuda":
        raise ValueError("float16 autocast needs a GPU; use torch.bfloat16 on the CPU")
    if optimizer is None:
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay
        )
    lr_lambda = schedule if schedule is not None else constant_schedule(warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    scaler = torch.amp.GradScaler(device_type, enabled=autocast_dtype == torch.float16)
    max_norm = clip_norm if clip_norm is not None else float("inf")
    history: dict[str, list[float]] = {"loss": [], "grad_norm": [], "lr": []}

    def run_evaluation(step: int) -> None:
        model.eval()
        with torch.no_grad():
            results = evaluate(model)  # type: ignore[misc]
        history.setdefault("eval_step", []).append(step)
        for name, value in results.items():
            history.setdefault(f"eval_{name}", []).append(float(value))
        model.train()

    model.train()
    bar = tqdm(range(steps), desc=desc, mininterval=1.0, disable=not progress)
    for step in bar:
        inputs, targets = make_batch()
        autocast = (
            torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
        )
        with autocast:
            loss = loss_fn(_call(model, inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        history["lr"].append(optimizer.param_groups[0]["lr"])
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        history["loss"].append(loss.item())
        history["grad_norm"].append(grad_norm.item())
        if evaluate is not None and (
            step + 1 == steps or (eval_every and (step + 1) % eval_every == 0)
        ):
            run_evaluation(step + 1)
            last = {k[5:]: v[-1] for k, v in history.items() if k.startswith("eval_") and v}
            bar.set_postfix({k: f"{v:.3g}" for k, v in last.items() if k != "step"})
    model.eval()
    return history


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    **extra: Any,
) -> None:
    """Store the model's weights (and the optimizer's state, and any plain `extra` values such
    as the step or the config as a dict) in one file.

    Book: 3.2 Training the date translator.
    """
    state = {"model": model.state_dict(), "extra": extra}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    torch.save(state, path)


def load_checkpoint(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """Restore what `save_checkpoint` stored into `model` (and `optimizer`); return `extra`.

    Loads with `weights_only=True`: a checkpoint cannot run code when it is opened.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path} is not a checkpoint written by save_checkpoint")
    model.load_state_dict(state["model"])
    if optimizer is not None:
        if "optimizer" not in state:
            raise ValueError(f"{path} holds no optimizer state")
        optimizer.load_state_dict(state["optimizer"])
    return state["extra"]
