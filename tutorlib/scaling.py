"""Counting a transformer's cost: parameters and floating-point operations, by formula.

The formulas are checked against the models' own parameter counts and against torch's FLOP
counter (`torch.utils.flop_counter.FlopCounterMode`) in the tests. Notation: C = d_model,
F = d_ff, V = vocab_size, L = n_layers, T = sequence length.

Book: Chapter 4, Scaling (counting parameters and FLOPs).
"""

from __future__ import annotations

from tutorlib.models import TransformerConfig

__all__ = ["KINDS", "forward_flops", "layer_parameter_count", "parameter_count", "training_flops"]

KINDS = ("encoder-decoder", "encoder", "decoder")  # Transformer, EncoderOnly, DecoderOnly


def _check(config: TransformerConfig, kind: str) -> None:
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def layer_parameter_count(config: TransformerConfig, cross_attention: bool = False) -> int:
    """Parameters of one layer: attention 4C^2 + 4C (Q, K, V and output maps with biases),
    feed-forward 2CF + F + C, and 2C per layer norm; a decoder layer of an encoder-decoder
    (`cross_attention=True`) has a second attention block and a third norm.

    Book: Chapter 4, Scaling.
    """
    C, F = config.d_model, config.d_ff
    attention = 4 * C * C + 4 * C
    feed_forward = 2 * C * F + F + C
    if cross_attention:
        return 2 * attention + feed_forward + 3 * 2 * C
    return attention + feed_forward + 2 * 2 * C


def parameter_count(config: TransformerConfig, kind: str = "decoder") -> int:
    """Parameters of tutorlib's `Transformer` ("encoder-decoder"), `EncoderOnly` ("encoder") or
    `DecoderOnly` ("decoder") built from `config`, by formula.

    Embeddings: V C per token table (one shared table when `tie_weights`), plus a learned
    position table of context_length * C; the output projection adds V C unless tied; a
    pre-norm stack ends with one more norm (2C).

    Book: Chapter 4, Scaling.
    """
    _check(config, kind)
    C, V, L = config.d_model, config.vocab_size, config.n_layers
    positions = config.context_length * C if config.positional == "learned" else 0
    final_norm = 2 * C if config.norm_first else 0
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
