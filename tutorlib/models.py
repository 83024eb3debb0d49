"""Whole models built from the layers: the stacks, and the three families made of them.

The stacks: an `Encoder` (run with `causal=True` it is a decoder-only stack) and the `Decoder`
of an encoder-decoder. The families, each with its output projection onto the vocabulary:
`Transformer` (encoder-decoder: the 2017 Transformer, T5), `EncoderOnly` (BERT) and
`DecoderOnly` (GPT, Llama), all from one `TransformerConfig`; `SequenceClassifier` puts a
classification head on an `EncoderOnly` for fine-tuning. `LLAMA_STYLE` is the preset of a
modern decoder: pre-norm RMSNorm, SwiGLU, rotary positions, grouped-query attention, no biases.

Book: 1.4 Encoders and decoders; 3.1 The full Transformer; 3.7 Pretraining and fine-tuning;
6.7 The modern decoder.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from tutorlib.attention import KVCache
from tutorlib.embeddings import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
    rotary_angles,
)
from tutorlib.layers import ACTIVATIONS, NORMS, DecoderLayer, EncoderLayer, make_norm

__all__ = [
    "LLAMA_STYLE",
    "SMALL",
    "TINY",
    "Decoder",
    "DecoderOnly",
    "Encoder",
    "EncoderOnly",
    "SequenceClassifier",
    "Transformer",
    "TransformerConfig",
]


@dataclass(frozen=True)
class TransformerConfig:
    """The sizes and the contested choices of a transformer, spelled out.

    The defaults are the 2017 Transformer's choices; page 6.7 changes them one by one into a
    modern decoder's (`LLAMA_STYLE`).
    """

    vocab_size: int = 32  # V: number of token ids
    context_length: int = 64  # longest sequence the positions cover
    d_model: int = 64  # C: width of every token's vector
    n_heads: int = 4  # H: attention (query) heads; d_model must divide by it
    n_layers: int = 2  # layers in each stack
    d_ff: int = 256  # hidden width of the feed-forward network (4 * d_model in the paper)
    dropout: float = 0.0  # on attention weights, residual branches and embeddings
    activation: str = "relu"  # of the "mlp" feed-forward: "relu" (2017), "gelu" (BERT, GPT)
    norm_first: bool = False  # False: post-norm (2017 paper); True: pre-norm (GPT-2 onwards)
    positional: str = "sinusoidal"  # "sinusoidal" (fixed), "learned" (added to the input),
    # or "rotary" (RoPE: queries and keys rotated in every layer; nothing added to the input)
    tie_weights: bool = True  # output projection (and both stacks' inputs) share one embedding
    norm: str = "layer"  # "layer" (LayerNorm) or "rms" (RMSNorm: no mean, no bias; Llama)
    feed_forward: str = "mlp"  # "mlp" (two linear maps) or "swiglu" (gated, three; Llama)
    n_kv_heads: int | None = None  # key-value heads: None = n_heads; 1 = multi-query; else GQA
    bias: bool = True  # biases in every linear map and layer norm (False: Llama, nanoGPT)
    rope_base: float = 10000.0  # base of the rotary frequencies, base^(-2j/D)
    norm_eps: float = 1e-5  # epsilon of every norm

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "d_model", "n_heads", "n_layers", "d_ff"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must divide by n_heads={self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.positional not in ("sinusoidal", "learned", "rotary"):
            raise ValueError(
                f"positional must be 'sinusoidal', 'learned' or 'rotary', got {self.positional!r}"
            )
        if self.positional == "rotary" and self.head_dim % 2:
            raise ValueError(
                f"rotary positions turn pairs of dimensions: the head width d_model / n_heads = "
                f"{self.head_dim} must be even"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}"
            )
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {sorted(NORMS)}, got {self.norm!r}")
        if self.feed_forward not in ("mlp", "swiglu"):
            raise ValueError(f"feed_forward must be 'mlp' or 'swiglu', got {self.feed_forward!r}")
        if self.n_kv_heads is not None and (
            not isinstance(self.n_kv_heads, int)
            or self.n_kv_heads < 1
            or self.n_heads % self.n_kv_heads
        ):
            raise ValueError(
                f"n_kv_heads must be None or an int dividing n_heads={self.n_heads}, got "
                f"{self.n_kv_heads!r}"
            )
        for name in ("rope_base", "norm_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")

    @property
    def head_dim(self) -> int:
        """D = d_model / n_heads, the width of one head."""
        return self.d_model // self.n_heads


TINY = TransformerConfig(d_model=32, n_heads=2, n_layers=1, d_ff=64)
SMALL = TransformerConfig(d_model=128, n_heads=4, n_layers=4, d_ff=512, context_length=256)
LLAMA_STYLE = replace(
    SMALL,
    norm_first=True,
    norm="rms",
    feed_forward="swiglu",
    d_ff=344,  # about 8/3 * d_model, so that SwiGLU's three matrices hold what the MLP's two do
    positional="rotary",
    n_kv_heads=2,
    bias=False,
)
"""A Llama-style decoder at SMALL's size: pre-norm with RMSNorm, a SwiGLU feed-forward, rotary
positions, grouped-query attention (two query heads per key-value head) and no biases."""


def _layer_args(config: TransformerConfig) -> dict:
    return dict(
        d_model=config.d_model,
        n_heads=config.n_heads,
        d_ff=config.d_ff,
        dropout=config.dropout,
        activation=config.activation,
        norm_first=config.norm_first,
        norm=config.norm,
        feed_forward=config.feed_forward,
        n_kv_heads=config.n_kv_heads,
        bias=config.bias,
        norm_eps=config.norm_eps,
    )


class _Embed(nn.Module):
    """Token embedding, plus positions (unless rotary: those act inside attention), plus
    dropout."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.tokens = TokenEmbedding(config.vocab_size, config.d_model)
        positional = {
            "sinusoidal": SinusoidalPositionalEncoding,
            "learned": LearnedPositionalEmbedding,
        }.get(config.positional)
        self.positions = positional(config.context_length, config.d_model) if positional else None
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, tokens: Tensor, start: int = 0) -> Tensor:
        x = self.tokens(tokens)  # (B, T, C)
        if self.positions is not None:
            x = self.positions(x, start)
        return self.dropout(x)  # (B, T, C)


def _final_norm(config: TransformerConfig) -> nn.Module:
    # Pre-norm leaves the residual stream un-normalized; the stack ends with one norm.
    if not config.norm_first:
        return nn.Identity()
    return make_norm(config.norm, config.d_model, config.norm_eps, config.bias)


def _rotary(
    config: TransformerConfig, start: int, T: int, like: Tensor
) -> tuple[Tensor, Tensor] | None:
    """The rotary tables for positions start .. start + T - 1, or None without rotary."""
    if config.positional != "rotary":
        return None
    if start + T > config.context_length:
        raise ValueError(
            f"positions {start}..{start + T - 1} exceed context_length {config.context_length}"
        )
    return rotary_angles(T, config.head_dim, config.rope_base, start, like.device, like.dtype)


class Encoder(nn.Module):
    """Embeddings, positions and a stack of `EncoderLayer`s; a final norm when pre-norm.

    With `causal=True` each position sees only itself and the past: a decoder-only (GPT)
    stack. A `KVCache` passed as `cache` makes it continue a cached prefix: the tokens are
    then the positions cache.length, ..., and every layer appends its keys and values (4.5).

    Shapes:
        tokens (B, T) ids; padding_mask (B, S) True = real token, S = cached + T
        ->  (B, T, C)

    Book: 1.4 Encoders and decoders; 4.5 The KV cache.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = _Embed(config)
        self.layers = nn.ModuleList(
            EncoderLayer(**_layer_args(config)) for _ in range(config.n_layers)
        )
        self.final_norm = _final_norm(config)

    def forward(
        self,
        tokens: Tensor,
        padding_mask: Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
    ) -> Tensor:
        if cache is not None and not causal:
            raise ValueError("a KV cache needs causal=True: only a decoder's past stays fixed")
        start = 0 if cache is None else cache.length
        x = self.embed(tokens, start)  # (B, T, C)
        rotary = _rotary(self.config, start, tokens.shape[1], x)  # (T, D/2) x2 or None
        for i, layer in enumerate(self.layers):
            x = layer(x, None, padding_mask, is_causal=causal, rotary=rotary, cache=cache, layer=i)
        return self.final_norm(x)  # (B, T, C)


class Decoder(nn.Module):
    """The decoder stack of an encoder-decoder: causal self-attention and cross-attention
    over the encoder's output in every layer.

    Shapes:
        tokens (B, T) ids; memory (B, S, C); memory_padding_mask (B, S)  ->  (B, T, C)

    Book: 1.4 Encoders and decoders.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        if config.positional == "rotary":
            raise ValueError(
                "rotary positions are implemented for Encoder stacks (encoder-only and "
                "decoder-only models), not for the cross-attending Decoder"
            )
        self.config = config
        self.embed = _Embed(config)
        self.layers = nn.ModuleList(
            DecoderLayer(**_layer_args(config)) for _ in range(config.n_layers)
        )
        self.final_norm = _final_norm(config)

    def forward(
        self, tokens: Tensor, memory: Tensor, memory_padding_mask: Tensor | None = None
    ) -> Tensor:
        x = self.embed(tokens)  # (B, T, C)
        for layer in self.layers:
            x = layer(x, memory, memory_padding_mask=memory_padding_mask, is_causal=True)
        return self.final_norm(x)  # (B, T, C)


def _check_tokens(tokens: Tensor, name: str) -> None:
    if not isinstance(tokens, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(tokens).__name__}")
    if tokens.dim() != 2 or tokens.dtype != torch.long:
        raise ValueError(
            f"{name}: expected int64 token ids of shape (batch, seq), got {tokens.dtype} "
            f"{tuple(tokens.shape)}"
        )


def _check_padding_mask(mask: Tensor | None, tokens: Tensor, name: str) -> None:
    if mask is not None and (mask.dtype != torch.bool or mask.shape != tokens.shape):
        raise ValueError(
            f"{name}: expected bool {tuple(tokens.shape)} with True = real token, got "
            f"{mask.dtype} {tuple(mask.shape)}"
        )


class Transformer(nn.Module):
    """The encoder-decoder Transformer of Vaswani et al. (2017): an `Encoder` reads the source,
    a `Decoder` writes the target one token at a time, and a linear map turns the decoder's
    vectors into next-token logits.

    With `config.tie_weights` the source embedding, the target embedding and the output
    projection are one (V, C) matrix, as in the paper (section 3.4): source and target must
    then share a vocabulary. The target needs no padding mask when it is padded on the right:
    the causal mask already hides every pad from the real tokens before it, and the loss
    ignores the pads' own predictions.

    Shapes:
        src (B, S) ids; tgt (B, T) ids; src_padding_mask (B, S) True = real token
        ->  logits (B, T, V)

    Book: 3.1 The full Transformer.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.output = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_weights:
            shared = self.encoder.embed.tokens.weight  # (V, C)
            self.decoder.embed.tokens.weight = shared
            self.output.weight = shared

    def encode(self, src: Tensor, src_padding_mask: Tensor | None = None) -> Tensor:
        """The encoder's output, the `memory` every decoder layer attends to: (B, S, C)."""
        _check_tokens(src, "src")
        _check_padding_mask(src_padding_mask, src, "src_padding_mask")
        return self.encoder(src, padding_mask=src_padding_mask)  # (B, S, C)

    def decode(self, tgt: Tensor, memory: Tensor, src_padding_mask: Tensor | None = None) -> Tensor:
        """Next-token logits for every target position, given the memory: (B, T, V)."""
        _check_tokens(tgt, "tgt")
        return self.output(self.decoder(tgt, memory, memory_padding_mask=src_padding_mask))

    def forward(self, src: Tensor, tgt: Tensor, src_padding_mask: Tensor | None = None) -> Tensor:
        memory = self.encode(src, src_padding_mask)  # (B, S, C)
        return self.decode(tgt, memory, src_padding_mask)  # (B, T, V)


class EncoderOnly(nn.Module):
    """A BERT-style model: an `Encoder` that sees the whole sequence, and a projection of
    every position onto the vocabulary (the masked-language-model head, tied to the
    embedding when `config.tie_weights`).

    Shapes:
        tokens (B, T) ids; padding_mask (B, T) True = real token  ->  logits (B, T, V)
        (`features` returns the encoder's vectors (B, T, C) instead)

    Book: 3.7 Pretraining and fine-tuning.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.output = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_weights:
            self.output.weight = self.encoder.embed.tokens.weight

    def features(self, tokens: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        _check_tokens(tokens, "tokens")
        _check_padding_mask(padding_mask, tokens, "padding_mask")
        return self.encoder(tokens, padding_mask=padding_mask)  # (B, T, C)

    def forward(self, tokens: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        return self.output(self.features(tokens, padding_mask))  # (B, T, V)


class DecoderOnly(nn.Module):
    """A GPT-style model: an `Encoder` stack run with the causal mask, and a projection of
    every position onto the vocabulary; position t predicts token t + 1. With `LLAMA_STYLE`'s
    options it is a Llama-style decoder.

    Shapes:
        tokens (B, T) ids, cache.length + T <= context_length  ->  logits (B, T, V)

    Book: 1.4 Encoders and decoders; 4.5 The KV cache; Chapter 6.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.decoder = Encoder(config)
        self.output = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_weights:
            self.output.weight = self.decoder.embed.tokens.weight

    def forward(self, tokens: Tensor, cache: KVCache | None = None) -> Tensor:
        """Logits for every position; with a `cache`, `tokens` continue the cached prefix and
        the cache is extended in place (the prefill, then one token per step)."""
        _check_tokens(tokens, "tokens")
        return self.output(self.decoder(tokens, causal=True, cache=cache))  # (B, T, V)


class SequenceClassifier(nn.Module):
    """A classification head on an `EncoderOnly`'s features: pool the sequence (the first
    token's vector, BERT's [CLS], or the mean over real tokens), then one linear layer.

    Fine-tuning trains the head and the encoder together; pass a pretrained `EncoderOnly`
    or a fresh one to train from scratch.

    Shapes:
        tokens (B, T) ids; padding_mask (B, T) True = real token  ->  logits (B, n_classes)

    Book: 3.7 Pretraining and fine-tuning.
    """

    def __init__(self, body: EncoderOnly, n_classes: int, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in ("first", "mean"):
            raise ValueError(f"pooling must be 'first' or 'mean', got {pooling!r}")
        if not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")
        self.body, self.pooling = body, pooling
        self.dropout = nn.Dropout(body.config.dropout)
        self.head = nn.Linear(body.config.d_model, n_classes)

    def forward(self, tokens: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        h = self.body.features(tokens, padding_mask)  # (B, T, C)
        if self.pooling == "first":
            pooled = h[:, 0]  # (B, C)
        else:
            real = (
                torch.ones_like(tokens, dtype=h.dtype)
                if padding_mask is None
                else padding_mask.to(h.dtype)
            ).unsqueeze(-1)  # (B, T, 1)
            pooled = (h * real).sum(1) / real.sum(1).clamp(min=1.0)  # (B, C)
        return self.head(self.dropout(pooled))  # (B, n_classes)
