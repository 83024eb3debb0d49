"""Parameter and FLOP formulas against the models' own counts and torch's FLOP counter."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tutorlib.attention import MultiHeadAttention
from tutorlib.models import DecoderOnly, EncoderOnly, Transformer, TransformerConfig
from tutorlib.scaling import forward_flops, parameter_count, training_flops

MODELS = {"encoder-decoder": Transformer, "encoder": EncoderOnly, "decoder": DecoderOnly}


@pytest.mark.parametrize(
    "kind, tie, norm_first, positional",
    list(itertools.product(MODELS, [True, False], [False, True], ["sinusoidal", "learned"])),
)
def test_parameter_count_matches_the_models(kind, tie, norm_first, positional) -> None:
    config = TransformerConfig(
        vocab_size=37,
        context_length=20,
        d_model=24,
        n_heads=3,
        n_layers=2,
        d_ff=40,
        tie_weights=tie,
        norm_first=norm_first,
        positional=positional,
    )
    model = MODELS[kind](config)
    assert parameter_count(config, kind) == sum(p.numel() for p in model.parameters())


def test_forward_flops_match_torch_flop_counter() -> None:
    """torch counts the matrix products of the linear maps; attention's products are counted
    on tutorlib's written-out attention."""
    C, T, H = 32, 16, 4
    config = TransformerConfig(
        vocab_size=50, context_length=T, d_model=C, n_heads=H, n_layers=2, d_ff=64
    )
    model = DecoderOnly(config)
    tokens = torch.randint(0, 50, (1, T))
    with FlopCounterMode(display=False) as counter:
        model(tokens)
    attention_products = config.n_layers * 2 * 2 * T * T * C
    assert counter.get_total_flops() == forward_flops(config, T) - attention_products
    mha = MultiHeadAttention(C, H)
    x = torch.randn(1, T, C)
    with FlopCounterMode(display=False) as counter:
        mha(x, x, x, need_weights=True)  # the written-out path: two batched matmuls
    projections = 2 * T * 4 * C * C
    assert counter.get_total_flops() == projections + 2 * 2 * T * T * C


def test_training_flops_approach_six_n_d() -> None:
    config = TransformerConfig(
        vocab_size=1000, context_length=128, d_model=1024, n_heads=16, n_layers=4, d_ff=4096
    )
    n = parameter_count(config) - config.vocab_size * config.d_model  # outside the embedding
    flops = training_flops(config, 128, n_tokens=128_000)
    assert flops == pytest.approx(6 * n * 128_000, rel=0.05)


def test_errors() -> None:
    config = TransformerConfig()
    with pytest.raises(ValueError, match="kind"):
        parameter_count(config, "gpt")
    with pytest.raises(TypeError, match="TransformerConfig"):
        parameter_count({"d_model": 4})
    with pytest.raises(ValueError, match="seq_len"):
        forward_flops(config, 0)
    with pytest.raises(ValueError, match="one stack"):
        forward_flops(config, 4, "encoder-decoder")
