import math

import pytest
import torch

from tutorlib.embeddings import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
    sinusoidal_encoding,
)


def test_sinusoidal_encoding_values() -> None:
    pe = sinusoidal_encoding(4, 4)
    assert pe.shape == (4, 4) and pe.dtype == torch.float32
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    expected = torch.tensor([math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)])
    torch.testing.assert_close(pe[1], expected)


def test_sinusoidal_offsets_are_rotations() -> None:
    """PE[t + k] is a fixed linear map (a rotation per sin/cos pair) of PE[t]."""
    pe = sinusoidal_encoding(64, 16, dtype=torch.float64)
    k = 5
    freq = 1 / 10000 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    cos, sin = torch.cos(k * freq), torch.sin(k * freq)
    s, c = pe[:-k, 0::2], pe[:-k, 1::2]
    torch.testing.assert_close(pe[k:, 0::2], s * cos + c * sin)
    torch.testing.assert_close(pe[k:, 1::2], c * cos - s * sin)


@pytest.mark.parametrize("args", [(0, 4), (4, 3), (4, 0), (2.0, 4)])
def test_sinusoidal_encoding_rejects_bad_sizes(args) -> None:
    with pytest.raises(ValueError, match="must be"):
        sinusoidal_encoding(*args)


def test_token_embedding_scales_by_sqrt_d_model() -> None:
    emb = TokenEmbedding(10, 16)
    tokens = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(emb(tokens), emb.weight[tokens] * 4.0)


def test_token_embedding_gradients_are_the_same_on_every_run_with_two_threads() -> None:
    """Trained models must not depend on how threads were scheduled: with `weight[tokens]`,
    the backward's accumulation (index_put_) gave a different gradient on 19 of 20 runs with
    two CPU threads, and two trainings of the chapter's GPT differed by 0.06 in a weight."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        generator = torch.Generator().manual_seed(0)
        embedding = TokenEmbedding(100, 128)
        tokens = torch.randint(0, 100, (12, 64), generator=generator)  # repeated ids
        upstream = torch.randn(12, 64, 128, generator=generator)
        grads = []
        for _ in range(20):
            embedding.zero_grad()
            (embedding(tokens) * upstream).sum().backward()
            grads.append(embedding.weight.grad.clone())
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], g) for g in grads[1:])
    expected = torch.zeros(100, 128).index_add_(0, tokens.flatten(), upstream.reshape(-1, 128))
    torch.testing.assert_close(grads[0], expected * math.sqrt(128))


def test_token_embedding_errors() -> None:
    emb = TokenEmbedding(10, 16)
    with pytest.raises(TypeError, match="integer ids"):
        emb(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        emb(torch.tensor([[1, 10]]))
    with pytest.raises(ValueError, match="batch, seq"):
        emb(torch.tensor([1, 2]))


@pytest.mark.parametrize("cls", [SinusoidalPositionalEncoding, LearnedPositionalEmbedding])
def test_positional_modules_add_and_check_length(cls) -> None:
    module = cls(8, 6)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    out = module(x)
    assert out.shape == x.shape and out.dtype == torch.float64
    assert not torch.allclose(out, x)
    with pytest.raises(ValueError, match="longer than context_length=8"):
        module(torch.randn(1, 9, 6))
    with pytest.raises(ValueError, match="expected"):
        module(torch.randn(1, 4, 5))


def test_learned_positions_receive_gradients() -> None:
    module = LearnedPositionalEmbedding(8, 6)
    module(torch.randn(2, 5, 6)).sum().backward()
    assert module.weight.grad[:5].abs().sum() > 0 and module.weight.grad[5:].abs().sum() == 0
