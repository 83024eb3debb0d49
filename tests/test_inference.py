"""The KV cache: cached logits equal the full forward pass, cached generation writes the same
tokens as uncached generation, and the cache's size is what the formula says."""

from __future__ import annotations

import pytest
import torch

from tutorlib.inference import KVCache, decode_step, generate, kv_cache_bytes
from tutorlib.models import DecoderOnly, TransformerConfig


def model(norm_first: bool, positional: str, dropout: float = 0.0) -> DecoderOnly:
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=23,
        context_length=48,
        d_model=32,
        n_heads=4,
        n_layers=2,
        d_ff=64,
        norm_first=norm_first,
        positional=positional,
        dropout=dropout,
    )
    return DecoderOnly(config)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_cached_logits_equal_full_forward(norm_first: bool, positional: str) -> None:
    m = model(norm_first, positional).eval()
    tokens = torch.randint(0, 23, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = m(tokens)  # (3, 20, V)
        cache = KVCache()
        pieces = [decode_step(m, tokens[:, :7], cache)]  # prefill 7 positions
        pieces += [decode_step(m, tokens[:, t : t + 1], cache) for t in range(7, 20)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 20
    assert all(k.shape == (3, 4, 20, 8) for k in cache.keys + cache.values)


@pytest.mark.parametrize("norm_first", [False, True])
def test_generation_is_identical_with_and_without_cache(norm_first: bool) -> None:
    m = model(norm_first, "learned", dropout=0.1).train()  # generate switches dropout off
    prompt = torch.randint(0, 23, (4, 5), generator=torch.Generator().manual_seed(2))
    cached = generate(m, prompt, 40)
    uncached = generate(m, prompt, 40, use_cache=False)
    assert cached.shape == (4, 45)
    assert torch.equal(cached[:, :5], prompt)
    assert torch.equal(cached, uncached)
    assert m.training, "generate must hand the model back in the mode it came in"


def test_cache_bytes_formula_matches_the_cache() -> None:
    m = model(True, "sinusoidal").eval()
    cache = KVCache()
    with torch.no_grad():
        decode_step(m, torch.zeros(2, 11, dtype=torch.long), cache)
    measured = sum(t.numel() * t.element_size() for t in cache.keys + cache.values)
    assert kv_cache_bytes(m.config, batch=2, seq_len=11) == measured
    # Grouped-query attention: 2 key-value heads shared by the 4 query heads halve the cache.
    assert kv_cache_bytes(m.config, batch=2, seq_len=11, n_kv_heads=2) == measured // 2
    with pytest.raises(ValueError, match="divide"):
        kv_cache_bytes(m.config, batch=2, seq_len=11, n_kv_heads=3)


def test_errors_are_clear() -> None:
    m = model(True, "learned")
    with pytest.raises(ValueError, match="context_length"):
        generate(m, torch.zeros(1, 10, dtype=torch.long), 40)
    with pytest.raises(ValueError, match="int64"):
        generate(m, torch.zeros(1, 3), 4)
    with pytest.raises(TypeError, match="DecoderOnly"):
        generate(torch.nn.Linear(2, 2), torch.zeros(1, 3, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="batch"):
        kv_cache_bytes(m.config, batch=0, seq_len=3)
