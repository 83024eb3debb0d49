import pytest
import torch

from tutorlib.data import sorting_batch
from tutorlib.models import SMALL, TINY, Decoder, Encoder, TransformerConfig
from tutorlib.training import fit


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_named_configs_have_pinned_parameter_counts() -> None:
    assert (
        _count(Encoder(TINY)) == 9_568
    )  # 32x32 embedding + one layer: 4C²+4C + 2C·d_ff+d_ff+C + 4C
    assert _count(Encoder(SMALL)) == 797_184
    assert _count(Decoder(SMALL)) == 1_062_400


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="divide by n_heads"):
        TransformerConfig(d_model=10, n_heads=3)
    with pytest.raises(ValueError, match="positional"):
        TransformerConfig(positional="rotary")
    with pytest.raises(ValueError, match="dropout"):
        TransformerConfig(dropout=1.0)


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
