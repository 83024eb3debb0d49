"""Whole models built from the layers: the stacks, and the three families made of them.

The stacks: an `Encoder` (run with `causal=True` it is a decoder-only stack) and the `Decoder`
of an encoder-decoder. The families, each with its output projection onto the vocabulary:
`Transformer` (encoder-decoder: the 2017 Transformer, T5), `EncoderOnly` (BERT) and
`DecoderOnly` (GPT), all from one `TransformerConfig`; `SequenceClassifier` puts a
classification head on an `EncoderOnly` for fine-tuning.

Book: 1.4 Encoders and decoders; 3.1 The full Transformer; 3.7 Pretraining and fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tutorlib.attention import causal_mask
from tutorlib.embeddings import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
)
from tutorlib.layers import DecoderLayer, EncoderLayer, LayerNorm

__all__ = [
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
    """The sizes and the contested choices of a transformer, spelled out."""

    vocab_size: int = 32  # V: number of token ids
    context_length: int = 64  # longest sequence the positional table covers
    d_model: int = 64  # C: width of every token's vector
    n_heads: int = 4  # H: attention heads; d_model must divide by it
    n_layers: int = 2  # layers in each stack
    d_ff: int = 256  # hidden width of the feed-forward network (4 * d_model in the paper)
    dropout: float = 0.0  # on attention weights, residual branches and embeddings
    activation: str = "relu"  # "relu" (2017 paper) or "gelu" (BERT, GPT)
    norm_first: bool = False  # False: post-norm (2017 paper); True: pre-norm (GPT-2 onwards)
    positional: str = "sinusoidal"  # "sinusoidal" (fixed) or "learned"
    tie_weights: bool = True  # output projection (and both stacks' inputs) share one embedding

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "d_model", "n_heads", "n_layers", "d_ff"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must divide by n_heads={self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.positional not in ("sinusoidal", "learned"):
            raise ValueError(
                f"positional must be 'sinusoidal' or 'learned', got {self.positional!r}"
            )


TINY = TransformerConfig(d_model=32, n_heads=2, n_layers=1, d_ff=64)
SMALL = TransformerConfig(d_model=128, n_heads=4, n_layers=4, d_ff=512, context_length=256)


def _layer_args(config: TransformerConfig) -> dict:
    return dict(
        d_model=config.d_model,
        n_heads=config.n_heads,
        d_ff=config.d_ff,
        dropout=config.dropout,
        activation=config.activation,
        norm_first=config.norm_first,
    )


class _Embed(nn.Module):
    """Token embedding, plus positions, plus dropout."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.tokens = TokenEmbedding(config.vocab_size, config.d_model)
        positional = (
            SinusoidalPositionalEncoding
            if config.positional == "sinusoidal"
            else LearnedPositionalEmbedding
        )
        self.positions = positional(config.context_length, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.dropout(self.positions(self.tokens(tokens)))  # (B, T, C)


class Encoder(nn.Module):
    """Embeddings, positions and a stack of `EncoderLayer`s; a final norm when pre-norm.

    With `causal=True` each position sees only itself and the past: a decoder-only (GPT)
    stack.

    Shapes:
        tokens (B, T) ids; padding_mask (B, T) True = real token  ->  (B, T, C)

    Book: 1.4 Encoders and decoders.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = _Embed(config)
        self.layers = nn.ModuleList(
            EncoderLayer(**_layer_args(config)) for _ in range(config.n_layers)
        )
        # Pre-norm leaves the residual stream un-normalized; the stack ends with one norm.
        self.final_norm = LayerNorm(config.d_model) if config.norm_first else nn.Identity()

    def forward(
        self, tokens: Tensor, padding_mask: Tensor | None = None, causal: bool = False
    ) -> Tensor:
        x = self.embed(tokens)  # (B, T, C)
        mask = causal_mask(tokens.shape[1], tokens.device) if causal else None  # (T, T)
        for layer in self.layers:
            x = layer(x, mask=mask, padding_mask=padding_mask)
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
        self.config = config
        self.embed = _Embed(config)
        self.layers = nn.ModuleList(
            DecoderLayer(**_layer_args(config)) for _ in range(config.n_layers)
        )
        self.final_norm = LayerNorm(config.d_model) if config.norm_first else nn.Identity()

    def forward(
        self, tokens: Tensor, memory: Tensor, memory_padding_mask: Tensor | None = None
    ) -> Tensor:
        x = self.embed(tokens)  # (B, T, C)
        mask = causal_mask(tokens.shape[1], tokens.device)  # (T, T)
        for layer in self.layers:
            x = layer(x, memory, self_mask=mask, memory_padding_mask=memory_padding_mask)
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
    every position onto the vocabulary; position t predicts token t + 1.

    Shapes:
        tokens (B, T) ids, T <= context_length  ->  logits (B, T, V)

    Book: 1.4 Encoders and decoders; Chapter 6.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.decoder = Encoder(config)
        self.output = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_weights:
            self.output.weight = self.decoder.embed.tokens.weight

    def forward(self, tokens: Tensor) -> Tensor:
        _check_tokens(tokens, "tokens")
        return self.output(self.decoder(tokens, causal=True))  # (B, T, V)


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
