"""Sparse mixture-of-experts feed-forward layers: a router, top-k routing, expert capacity and
the load-balancing loss.

A mixture-of-experts (MoE) layer replaces a transformer block's one feed-forward network by
E of them, the *experts*, and a *router*: a linear map from each token's vector to E logits.
Each token goes to its k best experts only, and the layer's output is the sum of their
outputs weighted by the renormalised router probabilities (Shazeer et al. 2017; Switch
Transformers, Fedus et al. 2022, k = 1; GShard, Lepikhin et al. 2021, and Mixtral, Jiang et
al. 2024, k = 2). The parameters grow with E, the work per token only with k.

`top_k_routing` and `load_balancing_loss` are the two formulas; `MoEFeedForward` is the layer
(a drop-in for `tutorlib.layers.FeedForward`); `moe_decoder` builds a `DecoderOnly` whose
layers use it; `fit_moe` trains any `DecoderOnly` with `tutorlib.training.fit`, adding the
balancing loss through `fit`'s `loss_fn` and recording how the tokens spread over the experts.

Book: 4.10 Mixture of experts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from tutorlib.layers import ACTIVATIONS, FeedForward
from tutorlib.models import DecoderOnly, TransformerConfig
from tutorlib.training import fit, sequence_cross_entropy

__all__ = [
    "MoEFeedForward",
    "expert_capacity",
    "fit_moe",
    "load_balancing_loss",
    "moe_aux_loss",
    "moe_decoder",
    "moe_layers",
    "top_k_routing",
]


def _check_int(value: object, name: str, smallest: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < smallest:
        raise ValueError(f"{name} must be >= {smallest}, got {value}")


def top_k_routing(router_logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Each token's k best experts and their weights, renormalised to sum to 1.

    The softmax over the E experts' logits, its k largest entries, divided by their sum. That
    equals a softmax over the k top logits alone, which is how it is computed here (as
    Mixtral's code does): the other E - k logits cancel out of the ratio. The experts come in
    descending order of weight, as ``torch.topk`` returns them; k = E gives the full softmax,
    sorted. Gradients reach the logits of the chosen experts only.

    Shapes:
        router_logits (N, E) float  ->  weights (N, k) float, experts (N, k) int64

    Book: 4.10 Mixture of experts.
    """
    if not isinstance(router_logits, Tensor):
        raise TypeError(f"router_logits must be a torch.Tensor, got {type(router_logits).__name__}")
    if router_logits.dim() != 2:
        raise ValueError(
            f"router_logits: expected (tokens, experts), got shape {tuple(router_logits.shape)}"
        )
    if not router_logits.is_floating_point():
        raise TypeError(f"router_logits must be floating point, got {router_logits.dtype}")
    _check_int(k, "k")
    n_experts = router_logits.shape[1]
    if k > n_experts:
        raise ValueError(f"k must be at most the number of experts {n_experts}, got k={k}")
    top_logits, experts = router_logits.topk(k, dim=-1)  # (N, k) each, descending
    weights = top_logits.softmax(dim=-1)  # (N, k): sums to 1 over the k
    return weights, experts


def load_balancing_loss(router_probs: Tensor, experts: Tensor, n_experts: int) -> Tensor:
    """The auxiliary loss that pushes the router to spread tokens evenly: E sum_e f_e P_e.

    f_e is the fraction of the N k assignments that went to expert e (counted, so it carries
    no gradient) and P_e the mean router probability of expert e over the N tokens (which
    does). It is Switch Transformer's loss (Fedus et al. 2022, eq. 4-6) for k = 1. Both
    vectors sum to 1; the loss is 1 when both are uniform, and since f follows P it grows
    toward E as the router sends everything to one expert. Its gradient lowers the
    probability of the experts that receive many tokens.

    Hugging Face's Mixtral ``load_balancing_loss_func`` divides the counts by N instead of
    N k, so it returns k times this value (and k at perfect balance).

    Shapes:
        router_probs (N, E) float, the softmax over all experts; experts (N, k) int64
        ->  scalar

    Book: 4.10 Mixture of experts.
    """
    _check_int(n_experts, "n_experts")
    if not isinstance(router_probs, Tensor) or not isinstance(experts, Tensor):
        raise TypeError("router_probs and experts must be torch.Tensors")
    if router_probs.dim() != 2 or router_probs.shape[1] != n_experts:
        raise ValueError(
            f"router_probs: expected (tokens, {n_experts}), got {tuple(router_probs.shape)}"
        )
    if not router_probs.is_floating_point():
        raise TypeError(f"router_probs must be floating point, got {router_probs.dtype}")
    if experts.dim() != 2 or experts.shape[0] != router_probs.shape[0]:
        raise ValueError(
            f"experts: expected ({router_probs.shape[0]}, k) expert ids, got {tuple(experts.shape)}"
        )
    if experts.dtype != torch.long:
        raise TypeError(f"experts must be int64 expert ids, got {experts.dtype}")
    if experts.numel() and (experts.min() < 0 or experts.max() >= n_experts):
        raise ValueError(
            f"expert ids must lie in [0, {n_experts}), got {experts.min().item()}.."
            f"{experts.max().item()}"
        )
    counts = torch.bincount(experts.reshape(-1), minlength=n_experts)  # (E,)
    fraction = counts.to(router_probs.dtype) / experts.numel()  # (E,) f_e, sums to 1
    mean_prob = router_probs.mean(dim=0)  # (E,) P_e, sums to 1
    return n_experts * (fraction * mean_prob).sum()


def expert_capacity(n_tokens: int, n_experts: int, k: int, capacity_factor: float) -> int:
    """The most assignments one expert accepts: ceil(capacity_factor N k / E).

    N k / E is an expert's share if the router spread the assignments perfectly evenly; the
    capacity factor (Switch uses 1.0 to 1.25 in training) leaves room for imbalance.

    Shapes:
        ints  ->  int

    Book: 4.10 Mixture of experts (Expert capacity).
    """
    _check_int(n_tokens, "n_tokens", smallest=0)
    _check_int(n_experts, "n_experts")
    _check_int(k, "k")
    if not capacity_factor > 0:
        raise ValueError(f"capacity_factor must be positive, got {capacity_factor!r}")
    return math.ceil(capacity_factor * n_tokens * k / n_experts)


class MoEFeedForward(nn.Module):
    """A sparse mixture of `FeedForward` experts with a linear router; a drop-in for
    `FeedForward` in a transformer block.

    For each token x: router logits x W_r^T (E of them), its k best experts and their weights
    by `top_k_routing`, and the output ``sum_j w_j FFN_{e_j}(x)``. The experts are the course's
    `FeedForward`, kept in a ``ModuleList`` and run one after the other on the tokens routed
    to each (gathered by index, then scattered back with ``index_add_``): the clearest form,
    and the slow one on a CPU; batched kernels (grouped GEMMs) do the same in one call.

    With a `capacity_factor` each expert accepts at most `expert_capacity(N, E, k, factor)`
    assignments per forward pass (N = B T tokens). Places are given as in GShard: every
    token's first choice before any token's second choice, and earlier tokens first within
    each. An assignment over capacity is *dropped*: that expert adds nothing to the token
    (the other weights are not renormalised), and a token with all k assignments dropped gets
    zeros, so in a residual block it passes through unchanged. Capacity applies in training
    and evaluation alike; None means no limit.

    After each forward the layer keeps, for the training loop to read: ``aux_loss``, the
    `load_balancing_loss` of this batch (a scalar with gradient); ``expert_counts`` (E,), the
    assignments the router made to each expert, before capacity; ``dropped``, how many of
    the N k assignments were dropped (an int); ``capacity`` (an int, or None).

    Shapes:
        x (B, T, C)  ->  (B, T, C), each expert with a hidden width d_ff

    Book: 4.10 Mixture of experts.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        n_experts: int,
        k: int = 2,
        capacity_factor: float | None = None,
        activation: str = "relu",
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("d_ff", d_ff), ("n_experts", n_experts)):
            _check_int(value, name)
        _check_int(k, "k")
        if k > n_experts:
            raise ValueError(f"k must be at most n_experts={n_experts}, got k={k}")
        if capacity_factor is not None and not capacity_factor > 0:
            raise ValueError(f"capacity_factor must be None or positive, got {capacity_factor!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.d_model, self.n_experts, self.k = d_model, n_experts, k
        self.capacity_factor = capacity_factor
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(
            FeedForward(d_model, d_ff, dropout, activation, bias) for _ in range(n_experts)
        )
        self.aux_loss: Tensor | None = None
        self.expert_counts: Tensor | None = None
        self.dropped = 0
        self.capacity: int | None = None

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, k={self.k}, capacity_factor={self.capacity_factor}"

    def _within_capacity(self, experts: Tensor) -> Tensor:
        """True for the assignments an expert accepts: (N, k) bool."""
        N = experts.shape[0]
        self.capacity = None
        if self.capacity_factor is None:
            return torch.ones_like(experts, dtype=torch.bool)
        self.capacity = expert_capacity(N, self.n_experts, self.k, self.capacity_factor)
        queue = experts.t().reshape(-1)  # (k N,): all first choices, then all second choices
        one_hot = nn.functional.one_hot(queue, self.n_experts)  # (k N, E)
        place = (one_hot.cumsum(dim=0) * one_hot).sum(dim=1) - 1  # (k N,): 0-based place in line
        return (place < self.capacity).view(self.k, N).t()  # (N, k)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x: expected (batch, seq, {self.d_model}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be floating point, got {x.dtype}")
        B, T, C = x.shape
        tokens = x.reshape(B * T, C)  # (N, C)
        logits = self.router(tokens)  # (N, E)
        weights, experts = top_k_routing(logits, self.k)  # (N, k) each
        keep = self._within_capacity(experts)  # (N, k) bool
        out = torch.zeros_like(tokens)  # (N, C)
        for e, expert in enumerate(self.experts):
            rows, slots = torch.nonzero((experts == e) & keep, as_tuple=True)  # (n_e,) each
            if len(rows) == 0:
                continue
            y = expert(tokens[rows])  # (n_e, C)
            out.index_add_(0, rows, y * weights[rows, slots, None].to(y.dtype))
        probs = logits.softmax(dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
        self.aux_loss = load_balancing_loss(probs, experts, self.n_experts)  # (N, E) probs
        self.expert_counts = torch.bincount(experts.reshape(-1), minlength=self.n_experts)
        self.dropped = int((~keep).sum())
        return out.view(B, T, C)  # (B, T, C)


def moe_layers(model: nn.Module) -> list[MoEFeedForward]:
    """The model's `MoEFeedForward` modules, in order (an empty list for a dense model).

    Book: 4.10 Mixture of experts.
    """
    return [m for m in model.modules() if isinstance(m, MoEFeedForward)]


def moe_decoder(
    config: TransformerConfig,
    n_experts: int,
    k: int = 2,
    capacity_factor: float | None = None,
) -> DecoderOnly:
    """A `DecoderOnly` whose every layer's feed-forward network is a `MoEFeedForward` of
    `n_experts` experts, each with the config's ``d_ff``, ``activation``, ``dropout`` and
    ``bias``; attention, norms and embeddings are the dense model's.

    Only the "mlp" feed-forward is supported (the experts are `FeedForward`s). Built as the
    dense model first (so its other weights are initialised from the same random stream),
    then each layer's ``ff`` is replaced.

    Shapes:
        tokens (B, T) ids  ->  logits (B, T, V), as `DecoderOnly`

    Book: 4.10 Mixture of experts.
    """
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
    if config.feed_forward != "mlp":
        raise ValueError(f"the experts are 'mlp' feed-forwards, got {config.feed_forward!r}")
    model = DecoderOnly(config)
    for layer in model.decoder.layers:
        layer.ff = MoEFeedForward(
            config.d_model,
            config.d_ff,
            n_experts,
            k,
            capacity_factor,
            config.activation,
            config.dropout,
            config.bias,
        )
    return model


def moe_aux_loss(model: nn.Module) -> Tensor:
    """The mean of the MoE layers' load-balancing losses from the last forward pass.

    The mean, not the sum, so it reads 1 at perfect balance whatever the depth (Switch adds
    every layer's loss: the sum, this times the number of layers). A model without MoE
    layers gives a zero tensor.

    Shapes:
        ->  scalar

    Book: 4.10 Mixture of experts.
    """
    losses = [m.aux_loss for m in moe_layers(model)]
    if any(loss is None for loss in losses):
        raise ValueError("an MoE layer has no auxiliary loss yet: run a forward pass first")
    if not losses:
        return torch.zeros((), device=next(model.parameters()).device)
    return torch.stack(losses).mean()


def fit_moe(
    model: DecoderOnly,
    make_batch: Callable[[], tuple[Tensor, Tensor]],
    steps: int,
    lr: float,
    *,
    aux_weight: float = 0.01,
    val_batch: tuple[Tensor, Tensor] | None = None,
    eval_every: int = 0,
    **fit_kwargs: Any,
) -> dict[str, list]:
    """Train a language model with `fit`, adding ``aux_weight`` times `moe_aux_loss`.

    `fit`'s ``loss_fn`` is the hook: it is called right after the forward pass, when every
    MoE layer holds this batch's statistics, so it adds the balancing loss and records them.
    A dense model trains the same way (its auxiliary loss is 0). Other keyword arguments go
    to `fit`. The history is `fit`'s plus, per step: "lm_loss" (the cross-entropy alone),
    "aux_loss", "expert_fraction" (one list per MoE layer of each expert's share of the
    assignments) and "dropped_fraction" (dropped assignments over all of them, all layers).
    With ``val_batch`` = (inputs, targets) it evaluates every ``eval_every`` steps and after
    the last: "eval_val_loss" and "eval_seconds", the training time so far with the
    evaluations left out.

    Shapes:
        make_batch() -> inputs (B, T), targets (B, T); val_batch the same

    Book: 4.10 Mixture of experts.
    """
    if aux_weight < 0:
        raise ValueError(f"aux_weight must be >= 0, got {aux_weight}")
    layers = moe_layers(model)
    record: dict[str, list] = {
        "lm_loss": [],
        "aux_loss": [],
        "expert_fraction": [],
        "dropped_fraction": [],
    }

    def loss_fn(logits: Tensor, targets: Tensor) -> Tensor:
        lm_loss = sequence_cross_entropy(logits, targets)
        aux = moe_aux_loss(model)
        record["lm_loss"].append(lm_loss.item())
        record["aux_loss"].append(aux.item())
        counts = [m.expert_counts for m in layers]
        record["expert_fraction"].append([(c / c.sum()).tolist() for c in counts])
        assignments = sum(int(c.sum()) for c in counts)
        record["dropped_fraction"].append(
            sum(m.dropped for m in layers) / assignments if assignments else 0.0
        )
        return lm_loss + aux_weight * aux

    evaluate = None
    if val_batch is not None:
        val_inputs, val_targets = val_batch
        clock = {"start": time.perf_counter(), "evaluating": 0.0}

        def evaluate(model: nn.Module) -> dict[str, float]:
            entered = time.perf_counter()
            seconds = entered - clock["start"] - clock["evaluating"]
            val_loss = sequence_cross_entropy(model(val_inputs), val_targets).item()
            clock["evaluating"] += time.perf_counter() - entered
            return {"val_loss": val_loss, "seconds": seconds}

    history = fit(
        model,
        make_batch,
        steps,
        lr,
        loss_fn=loss_fn,
        evaluate=evaluate,
        eval_every=eval_every,
        **fit_kwargs,
    )
    return {**history, **record}
