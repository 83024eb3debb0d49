"""The KV cache: cached logits equal the full forward pass, cached generation writes the same
tokens as uncached generation, and the cache's size is what the formula says."""

from __future__ import annotations

import pytest
import torch

from tutorlib.inference import (
    KVCache,
    cached_self_attention,
    decode_step,
    generate,
    kv_cache_bytes,
)
from tutorlib.models import DecoderOnly, TransformerConfig


def model(norm_first: bool, positional: str, dropout: float = 0.0, **modern) -> DecoderOnly:
    torch.manual_seed(0)
    config = TransformerConfig(
        **modern,
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


LLAMA_OPTIONS = dict(norm="rms", feed_forward="swiglu", n_kv_heads=2, bias=False)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("positional", ["sinusoidal", "learned", "rotary"])
@pytest.mark.parametrize("modern", [False, True], ids=["gpt", "llama"])
def test_cached_logits_equal_full_forward(norm_first: bool, positional: str, modern: bool) -> None:
    m = model(norm_first, positional, **(LLAMA_OPTIONS if modern else {})).eval()
    tokens = torch.randint(0, 23, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = m(tokens)  # (3, 20, V)
        cache = KVCache()
        pieces = [decode_step(m, tokens[:, :7], cache)]  # prefill 7 positions
        pieces += [decode_step(m, tokens[:, t : t + 1], cache) for t in range(7, 20)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 20
    heads = 2 if modern else 4  # the cache keeps the key-value heads only
    assert all(k.shape == (3, heads, 20, 8) for k in cache.keys + cache.values)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("positional", ["learned", "rotary"])
def test_generation_is_identical_with_and_without_cache(norm_first: bool, positional: str) -> None:
    modern = LLAMA_OPTIONS if positional == "rotary" else {}
    m = model(norm_first, positional, dropout=0.1, **modern).train()  # generate: dropout off
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
    # A model built with grouped-query attention caches that much, and the formula reads it.
    gqa = model(True, "rotary", n_kv_heads=1).eval()
    cache = KVCache()
    with torch.no_grad():
        decode_step(gqa, torch.zeros(2, 11, dtype=torch.long), cache)
    measured_gqa = sum(t.numel() * t.element_size() for t in cache.keys + cache.values)
    assert kv_cache_bytes(gqa.config, batch=2, seq_len=11) == measured_gqa == measured // 4


def test_one_forward_path_no_second_copy_of_the_layers() -> None:
    """Cached decoding runs the layers' own forward: a hook on a layer sees every step."""
    m = model(True, "rotary", **LLAMA_OPTIONS).eval()
    calls = []
    m.decoder.layers[1].register_forward_hook(lambda *_: calls.append(1))
    generate(m, torch.zeros(1, 3, dtype=torch.long), 5)
    assert len(calls) == 5  # the prefill and four one-token steps (the fifth token needs none)


def test_cached_self_attention_is_one_layer_step() -> None:
    m = model(True, "learned").eval()
    attn = m.decoder.layers[0].self_attn
    x = torch.randn(2, 6, 32)
    with torch.no_grad():
        full, _ = attn(x, x, x, is_causal=True)
        first, k, v = cached_self_attention(attn, x[:, :4], None, None)
        rest, k, v = cached_self_attention(attn, x[:, 4:], k, v)
    torch.testing.assert_close(torch.cat([first, rest], 1), full, rtol=1e-5, atol=1e-5)
    assert k.shape == (2, 4, 6, 8)


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
