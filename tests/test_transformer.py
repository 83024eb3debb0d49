"""The Chapter 3 models: the encoder-decoder against `torch.nn.Transformer` with copied weights,
weight tying, padding, and the encoder-only and decoder-only variants."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from tutorlib.attention import causal_mask
from tutorlib.layers import torch_state_dict
from tutorlib.models import (
    DecoderOnly,
    EncoderOnly,
    SequenceClassifier,
    Transformer,
    TransformerConfig,
)

CONFIG = TransformerConfig(
    vocab_size=23, context_length=16, d_model=32, n_heads=4, n_layers=2, d_ff=48
)


def torch_twin(model: Transformer) -> nn.Transformer:
    """An `nn.Transformer` holding `model`'s encoder and decoder weights."""
    c = model.config
    with warnings.catch_warnings():  # "enable_nested_tensor is True, but ... norm_first"
        warnings.simplefilter("ignore")
        twin = nn.Transformer(
            d_model=c.d_model,
            nhead=c.n_heads,
            num_encoder_layers=c.n_layers,
            num_decoder_layers=c.n_layers,
            dim_feedforward=c.d_ff,
            dropout=0.0,
            activation=c.activation,
            batch_first=True,
            norm_first=c.norm_first,
        )
    for ours, theirs in zip(model.encoder.layers, twin.encoder.layers, strict=True):
        theirs.load_state_dict(torch_state_dict(ours))
    for ours, theirs in zip(model.decoder.layers, twin.decoder.layers, strict=True):
        theirs.load_state_dict(torch_state_dict(ours))
    if c.norm_first:  # pre-norm stacks end with a norm; nn.Transformer always has one
        twin.encoder.norm.load_state_dict(model.encoder.final_norm.state_dict())
        twin.decoder.norm.load_state_dict(model.decoder.final_norm.state_dict())
    else:
        twin.encoder.norm = None
        twin.decoder.norm = None
    return twin.to(next(model.parameters()).dtype)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_transformer_matches_torch_transformer(
    norm_first: bool, activation: str, dtype: torch.dtype
) -> None:
    torch.manual_seed(0)
    config = TransformerConfig(
        **{**CONFIG.__dict__, "norm_first": norm_first, "activation": activation}
    )
    model = Transformer(config).to(dtype)
    twin = torch_twin(model)
    src = torch.randint(0, config.vocab_size, (3, 9))
    tgt = torch.randint(0, config.vocab_size, (3, 6))
    src_real = torch.ones(3, 9, dtype=torch.bool)
    src_real[1, 5:] = False  # a padded source
    src_real[2, 7:] = False

    logits = model(src, tgt, src_padding_mask=src_real)  # (B, T, V)
    hidden = twin(
        model.encoder.embed(src),
        model.decoder.embed(tgt),
        tgt_mask=~causal_mask(6),
        src_key_padding_mask=~src_real,
        memory_key_padding_mask=~src_real,
    )
    expected = model.output(hidden)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    logits.square().sum().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())


def test_tied_weights_are_one_matrix() -> None:
    model = Transformer(CONFIG)
    shared = model.encoder.embed.tokens.weight
    assert model.decoder.embed.tokens.weight is shared and model.output.weight is shared
    untied = Transformer(TransformerConfig(**{**CONFIG.__dict__, "tie_weights": False}))
    n_tied = sum(p.numel() for p in model.parameters())
    n_untied = sum(p.numel() for p in untied.parameters())
    assert n_untied - n_tied == 2 * CONFIG.vocab_size * CONFIG.d_model


def test_source_padding_does_not_leak() -> None:
    """Changing a padded source token changes nothing; changing a real one does."""
    torch.manual_seed(0)
    model = Transformer(CONFIG).eval()
    src = torch.randint(1, CONFIG.vocab_size, (1, 8))
    real = torch.tensor([[True] * 5 + [False] * 3])
    tgt = torch.randint(1, CONFIG.vocab_size, (1, 4))
    before = model(src, tgt, real)
    changed_pad, changed_real = src.clone(), src.clone()
    changed_pad[0, 6] = (src[0, 6] + 1) % CONFIG.vocab_size
    changed_real[0, 2] = (src[0, 2] + 1) % CONFIG.vocab_size
    torch.testing.assert_close(model(changed_pad, tgt, real), before)
    assert not torch.allclose(model(changed_real, tgt, real), before)


def test_decoder_is_causal() -> None:
    torch.manual_seed(0)
    model = Transformer(CONFIG).eval()
    src = torch.randint(0, CONFIG.vocab_size, (2, 7))
    tgt = torch.randint(0, CONFIG.vocab_size, (2, 6))
    later = tgt.clone()
    later[:, 4:] = (tgt[:, 4:] + 1) % CONFIG.vocab_size
    torch.testing.assert_close(model(src, later)[:, :4], model(src, tgt)[:, :4])
    gpt = DecoderOnly(CONFIG).eval()
    torch.testing.assert_close(gpt(later)[:, :4], gpt(tgt)[:, :4])
    assert not torch.allclose(gpt(later)[:, 4:], gpt(tgt)[:, 4:])


def test_encoder_only_sees_both_directions_and_classifier_pools_real_tokens() -> None:
    torch.manual_seed(0)
    bert = EncoderOnly(CONFIG).eval()
    tokens = torch.randint(0, CONFIG.vocab_size, (2, 6))
    later = tokens.clone()
    later[:, 5] = (tokens[:, 5] + 1) % CONFIG.vocab_size
    assert bert(tokens).shape == (2, 6, CONFIG.vocab_size)
    assert not torch.allclose(bert(later)[:, 0], bert(tokens)[:, 0])
    classifier = SequenceClassifier(bert, n_classes=3).eval()
    real = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    padded = tokens.clone()
    padded[1, 4:] = 0
    torch.testing.assert_close(classifier(tokens, real), classifier(padded, real))
    assert classifier(tokens, real).shape == (2, 3)


def test_clear_errors() -> None:
    model = Transformer(CONFIG)
    with pytest.raises(ValueError, match="int64 token ids"):
        model(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="True = real token"):
        model(
            torch.zeros(2, 3, dtype=torch.long),
            torch.zeros(2, 3, dtype=torch.long),
            torch.ones(2, 4, dtype=torch.bool),
        )
    with pytest.raises(ValueError, match="longer than context_length"):
        model(torch.zeros(1, 17, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="pooling"):
        SequenceClassifier(EncoderOnly(CONFIG), 3, pooling="max")
