"""Generation with a key-value cache: each new token costs one token's work, not the whole prefix.

A decoder-only model's keys and values at positions 0..t-1 do not change when token t is
appended (the causal mask hides the future from them), so they can be computed once and kept:
the *KV cache*. Each step then runs the layers on the newest token only, and its query attends
to the cached keys and values. `generate` writes the same tokens with or without the cache.

Book: Chapter 4, Scaling (the KV cache).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tutorlib.embeddings import SinusoidalPositionalEncoding
from tutorlib.layers import EncoderLayer
from tutorlib.models import DecoderOnly, TransformerConfig

__all__ = [
    "KVCache",
    "cached_self_attention",
    "check_generation_inputs",
    "decode_step",
    "generate",
    "kv_cache_bytes",
]


@dataclass
class KVCache:
    """The keys and values of every layer for the tokens seen so far.

    Shapes:
        keys[l], values[l] (B, H, t, D) for layer l, t = `length`

    Book: Chapter 4, Scaling (the KV cache).
    """

    keys: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)

    @property
    def length(self) -> int:
        """Number of positions cached (0 before the first step)."""
        return self.keys[0].shape[2] if self.keys else 0


def kv_cache_bytes(
    config: TransformerConfig,
    batch: int,
    seq_len: int,
    bytes_per_value: int = 4,
    n_kv_heads: int | None = None,
) -> int:
    """Memory of a full cache: keys and values, L layers, B sequences, T positions.

    2 * L * B * T * (n_kv_heads * D) * bytes_per_value with head width D = C / H; with every
    head keeping its own keys and values (the default, n_kv_heads = H) that is 2 L B T C bytes
    per value. Multi-query (n_kv_heads = 1) and grouped-query attention share keys and values
    between heads. The cache grows with the batch and the context, not with the feed-forward
    width, and at long contexts it can exceed the weights.

    Book: Chapter 4, Scaling (the KV cache).
    """
    n_kv_heads = config.n_heads if n_kv_heads is None else n_kv_heads
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
    attn: nn.MultiheadAttention, x: Tensor, past_keys: Tensor | None, past_values: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Causal self-attention of new positions over the cached ones and themselves.

    Uses the weights of `attn` (an `nn.MultiheadAttention`): projects only the new tokens `x`
    to queries, keys and values, appends the keys and values to the past ones along the time
    axis (dim 2), and lets new position i (absolute position p + i) attend to positions
    0..p + i.

    Shapes:
        x (B, t, C); past_keys, past_values (B, H, p, D) or None
        ->  output (B, t, C), keys (B, H, p + t, D), values (B, H, p + t, D)

    Book: Chapter 4, Scaling (the KV cache).
    """
    B, t, C = x.shape
    H = attn.num_heads
    D = C // H
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)  # (B, t, C) x3
    q, k, v = (z.view(B, t, H, D).transpose(1, 2) for z in (q, k, v))  # (B, H, t, D)
    if past_keys is not None and past_values is not None:
        k = torch.cat([past_keys, k], dim=2)  # (B, H, p + t, D)
        v = torch.cat([past_values, v], dim=2)  # (B, H, p + t, D)
    p = k.shape[2] - t
    mask = None  # a single new token may attend to everything cached
    if t > 1:
        mask = torch.ones(t, p + t, dtype=torch.bool, device=x.device).tril(diagonal=p)  # (t, p+t)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, t, D)
    out = out.transpose(1, 2).reshape(B, t, C)  # (B, t, C)
    return attn.out_proj(out), k, v


def _layer_step(
    layer: EncoderLayer, x: Tensor, past_keys: Tensor | None, past_values: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """One `EncoderLayer` (eval mode, causal) on new positions, with its cache."""
    if layer.norm_first:
        attended, keys, values = cached_self_attention(
            layer.self_attn, layer.norm1(x), past_keys, past_values
        )
        x = x + attended
        x = x + layer.ff(layer.norm2(x))
    else:
        attended, keys, values = cached_self_attention(layer.self_attn, x, past_keys, past_values)
        x = layer.norm1(x + attended)
        x = layer.norm2(x + layer.ff(x))
    return x, keys, values  # (B, t, C), (B, H, p + t, D) x2


def _position_vectors(model: DecoderOnly, start: int, t: int) -> Tensor:
    positions = model.decoder.embed.positions
    table = (
        positions.pe if isinstance(positions, SinusoidalPositionalEncoding) else positions.weight
    )
    return table[start : start + t]  # (t, C)


def decode_step(model: DecoderOnly, tokens: Tensor, cache: KVCache) -> Tensor:
    """Run `model` on the new `tokens` only, reading and extending `cache` in place.

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
    embed = model.decoder.embed
    x = embed.tokens(tokens) + _position_vectors(model, start, tokens.shape[1]).to(
        embed.tokens.weight.dtype
    )  # (B, t, C)
    for i, layer in enumerate(model.decoder.layers):
        past = (cache.keys[i], cache.values[i]) if start else (None, None)
        x, keys, values = _layer_step(layer, x, *past)
        if start:
            cache.keys[i], cache.values[i] = keys, values
        else:
            cache.keys.append(keys)
            cache.values.append(values)
    return model.output(model.decoder.final_norm(x))  # (B, t, V)


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
