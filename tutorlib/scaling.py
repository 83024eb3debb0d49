"""Counting a transformer's cost: parameters and floating-point operations, by formula, and
the memory of training (weights, gradients, optimizer states, activations).

The formulas are checked against the models' own parameter counts and against torch's FLOP
counter (`torch.utils.flop_counter.FlopCounterMode`) in the tests; the memory formula against
a real optimizer's state, and the activation memory is measured with autograd's saved-tensor
hooks. Notation: C = d_model, F = d_ff, V = vocab_size, L = n_layers, T = sequence length.

Book: Chapter 4, Scaling: 4.1 Counting parameters and FLOPs; 4.2 The memory of training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from tutorlib.models import TransformerConfig

__all__ = [
    "KINDS",
    "OPTIMIZER_STATES",
    "forward_flops",
    "layer_parameter_count",
    "optimizer_state_bytes",
    "parameter_count",
    "saved_activation_bytes",
    "training_flops",
    "training_state_bytes",
]

KINDS = ("encoder-decoder", "encoder", "decoder")  # Transformer, EncoderOnly, DecoderOnly


def _check(config: TransformerConfig, kind: str) -> None:
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _norm_parameters(config: TransformerConfig) -> int:
    """One norm: gain and bias (LayerNorm), gain only (RMSNorm, or LayerNorm without biases)."""
    return config.d_model if config.norm == "rms" or not config.bias else 2 * config.d_model


def layer_parameter_count(config: TransformerConfig, cross_attention: bool = False) -> int:
    """Parameters of one layer: attention 4C^2 + 4C (Q, K, V and output maps with biases),
    feed-forward 2CF + F + C, and 2C per layer norm; a decoder layer of an encoder-decoder
    (`cross_attention=True`) has a second attention block and a third norm.

    The modern options change the terms: with H_kv key-value heads of width D the key and value
    maps are C x H_kv D each (grouped-query attention); SwiGLU has three C x F matrices; RMSNorm
    has a gain only; `bias=False` drops every bias (of the linear maps and the norms).

    Book: Chapter 4, Scaling; 6.7 The modern decoder.
    """
    C, F, b = config.d_model, config.d_ff, int(config.bias)
    kv = (config.n_kv_heads or config.n_heads) * config.head_dim  # width of W^K and of W^V
    attention = 2 * C * C + 2 * C * kv + b * (2 * C + 2 * kv)
    if config.feed_forward == "swiglu":
        feed_forward = 3 * C * F + b * (2 * F + C)
    else:
        feed_forward = 2 * C * F + b * (F + C)
    norm = _norm_parameters(config)
    if cross_attention:
        return 2 * attention + feed_forward + 3 * norm
    return attention + feed_forward + 2 * norm


def parameter_count(config: TransformerConfig, kind: str = "decoder") -> int:
    """Parameters of tutorlib's `Transformer` ("encoder-decoder"), `EncoderOnly` ("encoder") or
    `DecoderOnly` ("decoder") built from `config`, by formula.

    Embeddings: V C per token table (one shared table when `tie_weights`), plus a learned
    position table of context_length * C (none for sinusoidal or rotary positions); the output
    projection adds V C unless tied; a pre-norm stack ends with one more norm.

    Book: Chapter 4, Scaling.
    """
    _check(config, kind)
    C, V, L = config.d_model, config.vocab_size, config.n_layers
    positions = config.context_length * C if config.positional == "learned" else 0
    final_norm = _norm_parameters(config) if config.norm_first else 0
    stack = L * layer_parameter_count(config) + final_norm
    if kind != "encoder-decoder":
        tables = V * C if config.tie_weights else 2 * V * C  # embedding (+ untied output)
        return tables + positions + stack
    decoder = L * layer_parameter_count(config, cross_attention=True) + final_norm
    tables = V * C if config.tie_weights else 3 * V * C  # source, target, output
    return tables + 2 * positions + stack + decoder


def forward_flops(config: TransformerConfig, seq_len: int, kind: str = "decoder") -> int:
    """Floating-point operations (a multiply and an add count as 2) of the matrix products in
    one forward pass over one sequence of `seq_len` tokens, for "encoder" or "decoder" models.

    Per layer: the four C x C maps 2 T 4C^2, the feed-forward network 2 T 2CF, and attention's
    two products Q K^T and weights @ V, 2 * 2 T^2 C (computed in full even under a causal
    mask); then the output projection 2 T V C. Element-wise work (norms, softmax, biases) is
    left out: it is a small share for any model whose C is in the hundreds.

    Book: Chapter 4, Scaling.
    """
    _check(config, kind)
    if kind == "encoder-decoder":
        raise ValueError("forward_flops counts one stack; use kind='encoder' or 'decoder'")
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be an int >= 1, got {seq_len!r}")
    C, F, V, L, T = config.d_model, config.d_ff, config.vocab_size, config.n_layers, seq_len
    per_layer = 2 * T * 4 * C * C + 2 * T * 2 * C * F + 2 * 2 * T * T * C
    return L * per_layer + 2 * T * V * C


def training_flops(config: TransformerConfig, seq_len: int, n_tokens: int) -> int:
    """Training FLOPs for `n_tokens` tokens in sequences of `seq_len`: the backward pass costs
    about twice the forward pass, so 3 x forward. For large models this is close to the
    6 N D rule (N parameters outside the embeddings, D tokens).

    Book: Chapter 4, Scaling.
    """
    if not isinstance(n_tokens, int) or n_tokens < 0:
        raise ValueError(f"n_tokens must be an int >= 0, got {n_tokens!r}")
    per_sequence = forward_flops(config, seq_len, "decoder")
    return 3 * per_sequence * n_tokens // seq_len


# --- The memory of training --------------------------------------------------------------------

# Values an optimizer keeps per parameter: SGD none, SGD with momentum one (the velocity),
# Adam and AdamW two (the running means of the gradient and of its square).
OPTIMIZER_STATES = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2}


def training_state_bytes(
    n_params: int, optimizer: str = "adam", mixed_precision: bool = False
) -> dict[str, int]:
    """Bytes of the weights, gradients and optimizer states of a model with `n_params`
    parameters, by formula; activations are not included (see `saved_activation_bytes`).

    In float32 (`mixed_precision=False`) every value takes 4 bytes: weights 4N, gradients 4N,
    and 4N per optimizer state (`OPTIMIZER_STATES`: Adam keeps 2), so 16N for Adam. With
    mixed precision as counted by Rajbhandari et al. (2020, ZeRO), the weights and gradients
    are 16-bit (2N each) and the optimizer keeps a float32 master copy of the weights besides
    its states: (4 + 4 * states) N, so 2N + 2N + 12N = 16N for Adam as well.

    Shapes:
        n_params int, optimizer one of OPTIMIZER_STATES  ->  dict of ints with keys
        "weights", "gradients", "optimizer", "total" (bytes)

    Book: 4.2 The memory of training.
    """
    if isinstance(n_params, bool) or not isinstance(n_params, int) or n_params < 0:
        raise ValueError(f"n_params must be an int >= 0, got {n_params!r}")
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZER_STATES)}, got {optimizer!r}")
    if not isinstance(mixed_precision, bool):
        raise TypeError(f"mixed_precision must be a bool, got {type(mixed_precision).__name__}")
    states = OPTIMIZER_STATES[optimizer]
    if mixed_precision:
        weights, gradients, optimizer_bytes = (
            2 * n_params,
            2 * n_params,
            (4 + 4 * states) * n_params,
        )
    else:
        weights, gradients, optimizer_bytes = 4 * n_params, 4 * n_params, 4 * states * n_params
    return {
        "weights": weights,
        "gradients": gradients,
        "optimizer": optimizer_bytes,
        "total": weights + gradients + optimizer_bytes,
    }


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the tensors in `optimizer.state`, measured (call it after a step: the
    states are created lazily by the first one).

    torch's Adam and AdamW keep `exp_avg` and `exp_avg_sq` (each the size of its parameter)
    and a one-element float32 `step` counter per parameter tensor, so the measurement is
    `training_state_bytes(...)["optimizer"]` plus 4 bytes per parameter tensor.

    Shapes:
        a torch.optim.Optimizer  ->  int (bytes)

    Book: 4.2 The memory of training.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
    return total


def saved_activation_bytes(
    fn: Callable[..., Any], *args: Any, exclude: Iterable[torch.Tensor] | None = None
) -> int:
    """Bytes of the tensors that a forward pass `fn(*args)` saves for its backward pass: the
    activation memory of training, measured exactly and on any device.

    Every tensor autograd saves passes through a `torch.autograd.graph.saved_tensors_hooks`
    pack hook; the bytes of the distinct storages behind them are summed (two views of one
    tensor count once). Storages of the tensors in `exclude` are left out; when `fn` is an
    `nn.Module` and `exclude` is None, its parameters and buffers are excluded (they are in
    memory anyway and are counted by `training_state_bytes`). Inputs that the forward pass
    saves are counted. Nothing is saved, and 0 returned, under `torch.no_grad()`, or when no
    input or parameter requires a gradient.

    Shapes:
        fn(*args) any forward pass  ->  int (bytes)

    Book: 4.2 The memory of training.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable (a model or a function), got {type(fn).__name__}")
    if exclude is None:
        exclude = [*fn.parameters(), *fn.buffers()] if isinstance(fn, torch.nn.Module) else []
    excluded = set()
    for tensor in exclude:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"exclude must hold tensors, got {type(tensor).__name__}")
        excluded.add(tensor.untyped_storage().data_ptr())
    storages: dict[int, int] = {}  # data pointer -> bytes

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn(*args)
    return sum(storages.values())
