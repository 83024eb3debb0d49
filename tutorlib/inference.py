"""Generation with a key-value cache: each new token costs one token's work, not the whole prefix.

A decoder-only model's keys and values at positions 0..t-1 do not change when token t is
appended (the causal mask hides the future from them), so they can be computed once and kept:
the *KV cache*. Each step then runs the layers on the newest token only, and its query attends
to the cached keys and values. `generate` writes the same tokens with or without the cache.

The cache is an argument of the model's forward (`model(tokens, cache=cache)`), passed down the
stack to every layer's attention (`tutorlib.attention.KVCache`): cached generation runs the same
layer code as training, for every configuration (learned, sinusoidal or rotary positions,
grouped-query attention ...).

Book: Chapter 4, Scaling (the KV cache).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tutorlib.attention import KVCache, MultiHeadAttention
from tutorlib.models import DecoderOnly, TransformerConfig

__all__ = [
    "KVCache",
    "cached_self_attention",
    "check_generation_inputs",
    "decode_step",
    "generate",
    "kv_cache_bytes",
]


def kv_cache_bytes(
    config: TransformerConfig,
    batch: int,
    seq_len: int,
    bytes_per_value: int = 4,
    n_kv_heads: int | None = None,
) -> int:
    """Memory of a full cache: keys and values, n_layer layers, B sequences, T positions.

    2 * n_layer * B * T * (n_kv_heads * D) * bytes_per_value with head width D = C / H; with
    every head keeping its own keys and values (the default, n_kv_heads = H) that is
    2 n_layer B T C bytes per value. Multi-query (n_kv_heads = 1) and grouped-query attention
    share keys and values between heads; n_kv_heads defaults to the config's. The cache grows
    with the batch and the context, not with the feed-forward width, and at long contexts it can
    exceed the weights.

    Book: Chapter 4, Scaling (the KV cache).
    """
    if n_kv_heads is None:
        n_kv_heads = config.n_heads if config.n_kv_heads is None else config.n_kv_heads
    for name, value in (
        ("batch", batch),
        ("seq_len", seq_len),
        ("bytes_per_value", bytes_per_value),
        ("n_kv_heads", n_kv_heads),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if config.n_heads % n_kv_heads:
        raise ValueError(f"n_heads={config.n_heads} must divide by n_kv_heads={n_kv_heads}")
    head_width = config.d_model // config.n_heads
    return 2 * config.n_layers * batch * seq_len * n_kv_heads * head_width * bytes_per_value


def cached_self_attention(
    attn: MultiHeadAttention, x: Tensor, past_keys: Tensor | None, past_values: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Causal self-attention of new positions over the cached ones and themselves, with the
    weights of `attn`: one layer's step of `decode_step`, exposed on its own for page 4.5.

    It runs `attn` itself, with a one-layer `KVCache` holding the past: the new tokens are
    projected to queries, keys and values, the keys and values appended along the time axis
    (dim 2), and new position i (absolute position p + i) attends to positions 0..p + i.

    Shapes:
        x (B, t, C); past_keys, past_values (B, H_kv, p, D) or None
        ->  output (B, t, C), keys (B, H_kv, p + t, D), values (B, H_kv, p + t, D)

    Book: Chapter 4, Scaling (the KV cache).
    """
    if not isinstance(attn, MultiHeadAttention):
        raise TypeError(f"attn must be a tutorlib MultiHeadAttention, got {type(attn).__name__}")
    cache = KVCache()
    if past_keys is not None and past_values is not None:
        cache.update(0, past_keys, past_values)
    out, _ = attn(x, x, x, is_causal=True, cache=cache, layer=0)  # (B, t, C)
    return out, cache.keys[0], cache.values[0]


def decode_step(model: DecoderOnly, tokens: Tensor, cache: KVCache) -> Tensor:
    """Run `model` on the new `tokens` only, reading and extending `cache` in place: the same
    forward as training, `model(tokens, cache=cache)`, after a check of the positions.

    The first call (empty cache) is the *prefill* of the prompt; later calls pass one token.
    Call it in eval mode under `torch.no_grad()`.

    Shapes:
        tokens (B, t) int64 at positions cache.length .. cache.length + t - 1
        ->  logits (B, t, V)

    Book: Chapter 4, Scaling (the KV cache).
    """
    start = cache.length
    if start + tokens.shape[1] > model.config.context_length:
        raise ValueError(
            f"positions {start}..{start + tokens.shape[1] - 1} exceed the model's "
            f"context_length {model.config.context_length}"
        )
    return model(tokens, cache=cache)  # (B, t, V)


def check_generation_inputs(model: DecoderOnly, prompt: Tensor, max_new_tokens: int) -> None:
    """Raise a clear error unless `model` is a DecoderOnly, `prompt` holds int64 token ids of
    shape (B, t0) with t0 >= 1, and `max_new_tokens` is an int >= 1.

    Book: Chapter 4, Scaling (the KV cache); 6.2 Sampling.
    """
    if not isinstance(model, DecoderOnly):
        raise TypeError(f"model must be a tutorlib DecoderOnly, got {type(model).__name__}")
    if not isinstance(prompt, Tensor) or prompt.dim() != 2 or prompt.dtype != torch.long:
        raise ValueError("prompt: expected int64 token ids of shape (batch, t0), t0 >= 1")
    if prompt.shape[1] < 1:
        raise ValueError("prompt: needs at least one token")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")


@torch.no_grad()
def generate(
    model: DecoderOnly, prompt: Tensor, max_new_tokens: int, use_cache: bool = True
) -> Tensor:
    """Greedy generation from a decoder-only model, with or without the KV cache.

    Without the cache each step runs the model over the whole prefix, so step t costs t
    tokens' work; with it, each step costs one token's. Both write the same tokens. The model
    is put in eval mode for the call (dropout off) and given back in the mode it came in.

    Shapes:
        prompt (B, t0) int64, t0 + max_new_tokens <= context_length  ->  (B, t0 + max_new_tokens)

    Book: Chapter 4, Scaling (the KV cache).
    """
    check_generation_inputs(model, prompt, max_new_tokens)
    if prompt.shape[1] + max_new_tokens > model.config.context_length:
        raise ValueError(
            f"prompt length {prompt.shape[1]} + max_new_tokens {max_new_tokens} exceeds the "
            f"model's context_length {model.config.context_length}"
        )
    was_training = model.training
    model.eval()
    try:
        tokens, cache = prompt, KVCache()
        new = prompt  # what the cached model has not seen yet
        for _ in range(max_new_tokens):
            if use_cache:
                logits = decode_step(model, new, cache)[:, -1]  # (B, V)
            else:
                logits = model(tokens)[:, -1]  # (B, V)
            new = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            tokens = torch.cat([tokens, new], dim=1)  # (B, t + 1)
    finally:
        model.train(was_training)
    return tokens
