"""Parameter and FLOP formulas against the models' own counts and torch's FLOP counter; the
memory formulas against a real optimizer and autograd's saved tensors."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tutorlib.attention import MultiHeadAttention
from tutorlib.models import DecoderOnly, EncoderOnly, Transformer, TransformerConfig
from tutorlib.scaling import (
    forward_flops,
    optimizer_state_bytes,
    parameter_count,
    saved_activation_bytes,
    training_flops,
    training_state_bytes,
)

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


@pytest.mark.parametrize(
    "options",
    [
        dict(norm="rms"),
        dict(feed_forward="swiglu"),
        dict(n_kv_heads=1),
        dict(bias=False),
        dict(positional="rotary", norm_first=True, norm="rms", feed_forward="swiglu",
             n_kv_heads=2, bias=False),
    ],
)  # fmt: skip
@pytest.mark.parametrize("kind", ["encoder", "decoder", "encoder-decoder"])
def test_parameter_count_knows_the_modern_options(options, kind) -> None:
    if kind == "encoder-decoder" and options.get("positional") == "rotary":
        pytest.skip("the encoder-decoder has no rotary positions")
    options = {"norm_first": True, **options}
    config = TransformerConfig(
        vocab_size=37, context_length=20, d_model=24, n_heads=4, n_layers=2, d_ff=40, **options
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


def _small_decoder(seed: int = 0) -> DecoderOnly:
    torch.manual_seed(seed)
    config = TransformerConfig(
        vocab_size=40, context_length=32, d_model=16, n_heads=2, n_layers=2, d_ff=32,
        norm_first=True,
    )  # fmt: skip
    return DecoderOnly(config)


def test_training_state_bytes_matches_adamw() -> None:
    model = _small_decoder()
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    formula = training_state_bytes(n, "adamw")
    assert formula == {"weights": 4 * n, "gradients": 4 * n, "optimizer": 8 * n, "total": 16 * n}
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    assert optimizer_state_bytes(optimizer) == 0  # states appear with the first step
    tokens = torch.randint(0, 40, (2, 8))
    model(tokens).sum().backward()
    optimizer.step()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params)
    weights = sum(p.numel() * p.element_size() for p in params)
    assert (weights, grads) == (formula["weights"], formula["gradients"])
    # two states of every parameter's size, plus a 4-byte float32 step counter per tensor
    assert optimizer_state_bytes(optimizer) == formula["optimizer"] + 4 * len(params)


def test_training_state_bytes_other_optimizers() -> None:
    assert training_state_bytes(10, "sgd")["total"] == 80
    assert training_state_bytes(10, "momentum")["optimizer"] == 40
    mixed = training_state_bytes(10, "adam", mixed_precision=True)  # 2 + 2 + 12 bytes (ZeRO)
    assert mixed == {"weights": 20, "gradients": 20, "optimizer": 120, "total": 160}
    model = torch.nn.Linear(5, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 5)).sum().backward()
    optimizer.step()
    assert optimizer_state_bytes(optimizer) == training_state_bytes(18, "momentum")["optimizer"]


def test_saved_activation_bytes_of_one_linear_layer() -> None:
    """y = x W^T + b saves x for W's gradient, and W for x's gradient (a parameter: excluded
    unless asked for); a constant x needs no gradient, and W is not saved."""
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8, requires_grad=True)
    assert saved_activation_bytes(layer, x) == 3 * 8 * 4
    assert saved_activation_bytes(layer, x, exclude=()) == 3 * 8 * 4 + 4 * 8 * 4
    assert saved_activation_bytes(layer, x.detach(), exclude=()) == 3 * 8 * 4
    with torch.no_grad():
        assert saved_activation_bytes(layer, x) == 0
    y = torch.randn(5, 5, dtype=torch.float64, requires_grad=True)
    assert saved_activation_bytes(lambda t: (t * t).sum(), y) == 25 * 8  # one storage, twice


def test_saved_activation_bytes_grow_linearly_with_the_batch() -> None:
    model = _small_decoder()
    sizes = [saved_activation_bytes(model, torch.randint(0, 40, (B, 16))) for B in (1, 2, 4, 8)]
    steps = [b - a for a, b in itertools.pairwise(sizes)]
    assert steps[1] == 2 * steps[0] and steps[2] == 4 * steps[0]  # a + b B, exactly
    assert saved_activation_bytes(model, torch.randint(0, 40, (4, 16))) == sizes[2]  # repeatable


def test_checkpointing_saves_less_and_gives_the_same_gradients() -> None:
    from torch.utils.checkpoint import checkpoint

    model = _small_decoder().double()
    tokens = torch.randint(0, 40, (4, 16))

    def forward(tokens: torch.Tensor, checkpointed: bool) -> torch.Tensor:
        x = model.decoder.embed(tokens)
        for layer in model.decoder.layers:
            if checkpointed:
                x = checkpoint(layer, x, is_causal=True, use_reentrant=False)
            else:
                x = layer(x, is_causal=True)
        return model.output(model.decoder.final_norm(x))

    torch.testing.assert_close(forward(tokens, True), model(tokens), rtol=0, atol=0)
    full = saved_activation_bytes(forward, tokens, False, exclude=model.parameters())
    assert full == saved_activation_bytes(model, tokens)
    light = saved_activation_bytes(forward, tokens, True, exclude=model.parameters())
    assert light < full / 2
    grads = []
    for checkpointed in (False, True):
        model.zero_grad()
        forward(tokens, checkpointed).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_memory_errors() -> None:
    with pytest.raises(ValueError, match="n_params"):
        training_state_bytes(-1)
    with pytest.raises(ValueError, match="n_params"):
        training_state_bytes(1.5)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        training_state_bytes(10, "lion")
    with pytest.raises(TypeError, match="mixed_precision"):
        training_state_bytes(10, mixed_precision="yes")
    with pytest.raises(TypeError, match="Optimizer"):
        optimizer_state_bytes({"state": {}})
    with pytest.raises(TypeError, match="callable"):
        saved_activation_bytes(torch.randn(2))
    with pytest.raises(TypeError, match="exclude"):
        saved_activation_bytes(lambda x: x, torch.randn(2), exclude=[1.0])
