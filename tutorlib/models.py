"""Whole models built from the layers: an encoder stack and an encoder-decoder's decoder stack.

The three families of Chapter 1 are made of these: an encoder-only model (BERT) is an
`Encoder`; a decoder-only model (GPT) is the same `Encoder` run with `causal=True`; an
encoder-decoder (the 2017 Transformer, T5) pairs an `Encoder` with a `Decoder`.

Book: 1.4 Encoders and decoders.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from tutorlib.attention import causal_mask
from tutorlib.embeddings import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
)
from tutorlib.layers import DecoderLayer, EncoderLayer, LayerNorm

__all__ = ["SMALL", "TINY", "Decoder", "Encoder", "TransformerConfig"]


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
