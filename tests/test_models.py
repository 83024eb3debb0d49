import pytest
import torch

from tutorlib.data import sorting_batch
from tutorlib.layers import RMSNorm, SwiGLU
from tutorlib.models import (
    LLAMA_STYLE,
    SMALL,
    TINY,
    Decoder,
    DecoderOnly,
    Encoder,
    TransformerConfig,
)
from tutorlib.training import fit


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_named_configs_have_pinned_parameter_counts() -> None:
    assert (
        _count(Encoder(TINY)) == 9_568
    )  # 32x32 embedding + one layer: 4C²+4C + 2C·d_ff+d_ff+C + 4C
    assert _count(Encoder(SMALL)) == 797_184
    assert _count(Decoder(SMALL)) == 1_062_400
    # Llama-style at SMALL's width: V C + L (2 C^2 + 2 C (C / 2) + 3 C d_ff + 2 C) + C, no biases;
    # grouped-query attention halves W^K and W^V, SwiGLU's three matrices of width 344 about
    # match the MLP's two of width 512.
    C, L, F = 128, 4, 344
    assert _count(Encoder(LLAMA_STYLE)) == 32 * C + L * (3 * C * C + 3 * C * F + 2 * C) + C
    assert _count(Encoder(LLAMA_STYLE)) == 730_240


def test_llama_style_is_what_it_says() -> None:
    model = DecoderOnly(LLAMA_STYLE)
    layer = model.decoder.layers[0]
    assert isinstance(layer.norm1, RMSNorm) and isinstance(layer.ff, SwiGLU)
    assert layer.norm_first and model.decoder.embed.positions is None  # rotary: nothing added
    assert layer.self_attn.in_proj_weight.shape == (128 + 2 * 64, 128)  # 4 query, 2 kv heads
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="divide by n_heads"):
        TransformerConfig(d_model=10, n_heads=3)
    with pytest.raises(ValueError, match="positional"):
        TransformerConfig(positional="alibi")
    with pytest.raises(ValueError, match="dropout"):
        TransformerConfig(dropout=1.0)
    with pytest.raises(ValueError, match="n_kv_heads"):
        TransformerConfig(n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="norm must be one of"):
        TransformerConfig(norm="batch")
    with pytest.raises(ValueError, match="feed_forward"):
        TransformerConfig(feed_forward="geglu")
    with pytest.raises(ValueError, match="activation"):
        TransformerConfig(activation="swish")
    with pytest.raises(ValueError, match="must be even"):
        TransformerConfig(d_model=12, n_heads=4, positional="rotary")
    with pytest.raises(ValueError, match="rope_base"):
        TransformerConfig(rope_base=0.0)
    with pytest.raises(ValueError, match="cross-attending Decoder"):
        Decoder(TransformerConfig(positional="rotary"))


@pytest.mark.parametrize("norm_first", [False, True])
def test_causal_encoder_ignores_the_future_bidirectional_does_not(norm_first: bool) -> None:
    model = Encoder(TransformerConfig(norm_first=norm_first)).eval()
    tokens = torch.randint(0, 32, (2, 10))
    changed = tokens.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 32  # change positions 6..9
    with torch.no_grad():
        a, b = model(tokens, causal=True), model(changed, causal=True)
        torch.testing.assert_close(a[:, :6], b[:, :6])
        assert not torch.allclose(a[:, 6:], b[:, 6:])
        assert not torch.allclose(model(tokens)[:, :6], model(changed)[:, :6])


def test_decoder_shapes_and_causality() -> None:
    config = TransformerConfig(positional="learned")
    decoder = Decoder(config).eval()
    memory = torch.randn(2, 7, config.d_model)
    tokens = torch.randint(0, 32, (2, 5))
    changed = tokens.clone()
    changed[:, 3:] = (changed[:, 3:] + 1) % 32
    with torch.no_grad():
        a, b = decoder(tokens, memory), decoder(changed, memory)
    assert a.shape == (2, 5, config.d_model)
    torch.testing.assert_close(a[:, :3], b[:, :3])


def test_fit_learns_to_sort() -> None:
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=8, context_length=8, d_model=32, n_heads=2, n_layers=2, d_ff=64
    )
    encoder = Encoder(config)
    model = torch.nn.Sequential(encoder, torch.nn.Linear(32, 8))
    generator = torch.Generator().manual_seed(0)
    history = fit(
        model, lambda: sorting_batch(32, 8, 8, generator), steps=150, lr=3e-3, desc="test"
    )
    assert len(history["loss"]) == 150 and len(history["grad_norm"]) == 150
    first, last = sum(history["loss"][:10]) / 10, sum(history["loss"][-10:]) / 10
    assert last < 0.6 * first, (first, last)


def test_sorting_batch() -> None:
    x, y = sorting_batch(4, 6, 5, torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (4, 6) and x.dtype == torch.long
    assert torch.equal(y, x.sort(dim=1).values)
    with pytest.raises(ValueError, match="positive"):
        sorting_batch(0, 6, 5)
