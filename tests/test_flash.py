"""tutorlib.flash (page 4.9): the online softmax and the tiled forward pass of FlashAttention,
tested against torch.softmax, F.scaled_dot_product_attention and torch.logsumexp."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tutorlib.attention import scaled_dot_product_attention
from tutorlib.flash import (
    flash_attention,
    online_softmax_update,
    peak_memory_bytes,
    tile_counts,
    tiled_bytes,
    written_out_bytes,
)

B, H, T, S, D = 2, 3, 37, 29, 8


def _qkv(T_q: int = T, T_k: int = S, requires_grad: bool = False):
    torch.manual_seed(0)
    q = torch.randn(B, H, T_q, D, dtype=torch.float64, requires_grad=requires_grad)
    k = torch.randn(B, H, T_k, D, dtype=torch.float64, requires_grad=requires_grad)
    v = torch.randn(B, H, T_k, 5, dtype=torch.float64, requires_grad=requires_grad)
    return q, k, v


def _torch_mask(mask, is_causal: bool, T_q: int = T, T_k: int = S):
    """The one boolean mask torch needs for our (mask, is_causal) pair."""
    causal = torch.ones(T_q, T_k, dtype=torch.bool).tril() if is_causal else None
    if mask is None:
        return causal
    return mask if causal is None else mask & causal


# --- online_softmax_update -------------------------------------------------------------------


def test_online_softmax_over_tiles_equals_softmax_weighted_sum() -> None:
    torch.manual_seed(0)
    scores = torch.randn(4, 6, 23, dtype=torch.float64) * 3  # (B, Tq, Tk)
    values = torch.randn(4, 23, 5, dtype=torch.float64)  # (B, Tk, D)
    m = torch.full((4, 6), float("-inf"), dtype=torch.float64)
    l = torch.zeros(4, 6, dtype=torch.float64)
    acc = torch.zeros(4, 6, 5, dtype=torch.float64)
    for start in range(0, 23, 7):  # tiles of 7, 7, 7, 2 keys
        m, l, acc = online_softmax_update(
            m, l, acc, scores[..., start : start + 7], values[:, start : start + 7]
        )
    torch.testing.assert_close(m, scores.amax(-1))
    torch.testing.assert_close(l, torch.exp(scores - scores.amax(-1, keepdim=True)).sum(-1))
    torch.testing.assert_close(acc / l.unsqueeze(-1), scores.softmax(-1) @ values)


def test_online_softmax_keeps_fully_masked_rows_at_the_start_state() -> None:
    scores = torch.tensor([[float("-inf"), float("-inf")], [0.5, float("-inf")]])  # (Tq, Tk)
    values = torch.ones(2, 3)
    m0 = torch.full((2,), float("-inf"))
    m, l, acc = online_softmax_update(m0, torch.zeros(2), torch.zeros(2, 3), scores, values)
    assert m[0] == float("-inf") and l[0] == 0 and (acc[0] == 0).all()
    assert not torch.isnan(torch.cat([m, l, acc.flatten()])).any()
    assert m[1] == 0.5 and l[1] == 1.0
    # A later tile with a real score revives the row without NaN from the earlier -inf max.
    m, l, acc = online_softmax_update(m, l, acc, torch.tensor([[2.0], [0.5]]), torch.ones(1, 3))
    torch.testing.assert_close(m, torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(l, torch.tensor([1.0, 2.0]))


def test_online_softmax_rejects_mismatched_shapes() -> None:
    m, l = torch.zeros(2), torch.zeros(2)
    with pytest.raises(ValueError, match="m and l"):
        online_softmax_update(torch.zeros(3), l, torch.zeros(2, 4), torch.zeros(2, 5), m)
    with pytest.raises(ValueError, match="values"):
        online_softmax_update(m, l, torch.zeros(2, 4), torch.zeros(2, 5), torch.zeros(6, 4))
    with pytest.raises(ValueError, match="acc"):
        online_softmax_update(m, l, torch.zeros(2, 3), torch.zeros(2, 5), torch.zeros(5, 4))
    with pytest.raises(TypeError, match="floating"):
        online_softmax_update(m, l, torch.zeros(2, 4), torch.zeros(2, 5, dtype=torch.long), m)


# --- flash_attention against torch ----------------------------------------------------------


def _padding(T_k: int = S) -> torch.Tensor:
    lengths = torch.tensor([T_k, 11])  # the second sequence has 11 real keys
    return (torch.arange(T_k) < lengths[:, None])[:, None, None, :]  # (B, 1, 1, Tk)


MASKS = {
    "none": lambda: None,
    "padding (B, 1, 1, S)": _padding,
    "bool (T, S)": lambda: torch.rand(T, S) > 0.3,
    "bool (B, H, T, S)": lambda: torch.rand(B, H, T, S) > 0.3,
}


@pytest.mark.parametrize("blocks", [(64, 64), (8, 8), (5, 7), (1, 3)])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("mask_name", list(MASKS))
def test_flash_attention_equals_torch(mask_name, is_causal, blocks) -> None:
    q, k, v = _qkv()
    torch.manual_seed(1)
    mask = MASKS[mask_name]()
    torch_mask = _torch_mask(mask, is_causal)
    out, logsumexp = flash_attention(q, k, v, mask, is_causal, *blocks)
    assert out.shape == (B, H, T, 5) and logsumexp.shape == (B, H, T)
    assert out.dtype == logsumexp.dtype == torch.float64
    # tutorlib's written-out attention gives zeros on rows with no key, as does torch 2.13.
    expected = scaled_dot_product_attention(q, k, v, torch_mask)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(
        out, F.scaled_dot_product_attention(q, k, v, torch_mask).nan_to_num()
    )
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, S)
    if torch_mask is not None:
        scores = scores.masked_fill(~torch_mask, float("-inf"))
    torch.testing.assert_close(logsumexp, torch.logsumexp(scores, dim=-1))


@pytest.mark.parametrize("T_q, T_k", [(1, 50), (50, 1), (64, 64), (65, 63)])
def test_flash_attention_lengths_and_block_edges(T_q, T_k) -> None:
    q, k, v = _qkv(T_q, T_k)
    for is_causal in (False, True):
        out, _ = flash_attention(q, k, v, is_causal=is_causal, block_q=16, block_k=16)
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
        torch.testing.assert_close(out, expected)


def test_fully_masked_rows_give_zeros_and_minus_inf_logsumexp() -> None:
    q, k, v = _qkv(requires_grad=True)
    mask = torch.rand(B, H, T, S) > 0.5
    mask[0, 1, 3] = False  # one row with no key at all
    mask[1, :, -5:] = False  # the last five queries of the second sequence
    out, logsumexp = flash_attention(q, k, v, mask, block_q=8, block_k=8)
    assert not out.isnan().any() and not logsumexp.isnan().any()
    assert (out[0, 1, 3] == 0).all() and (out[1, :, -5:] == 0).all()
    assert logsumexp[0, 1, 3] == float("-inf") and (logsumexp[1, :, -5:] == float("-inf")).all()
    torch.testing.assert_close(out, scaled_dot_product_attention(q, k, v, mask))
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(not g.isnan().any() for g in grads)
    assert (grads[0][0, 1, 3] == 0).all()


@pytest.mark.parametrize("is_causal", [False, True])
def test_gradients_through_the_loop_equal_torch(is_causal) -> None:
    q, k, v = _qkv(requires_grad=True)
    mask = _padding()
    out, logsumexp = flash_attention(q, k, v, mask, is_causal, block_q=8, block_k=6)
    expected = F.scaled_dot_product_attention(q, k, v, _torch_mask(mask, is_causal))
    grads = torch.autograd.grad(out.square().sum(), (q, k, v), retain_graph=True)
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)
    # The log-sum-exp is differentiable too: its gradient w.r.t. the scores is the softmax.
    lse_grad = torch.autograd.grad(logsumexp.sum(), q)[0]
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)
    causal_padding = _torch_mask(mask, is_causal)
    expected_lse = torch.logsumexp(scores.masked_fill(~causal_padding, float("-inf")), -1)
    torch.testing.assert_close(lse_grad, torch.autograd.grad(expected_lse.sum(), q)[0])


def test_float32_and_lower_precision_inputs() -> None:
    q, k, v = (x.float() for x in _qkv())
    out, logsumexp = flash_attention(q, k, v, is_causal=True, block_q=8, block_k=8)
    assert out.dtype == logsumexp.dtype == torch.float32
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    out16, lse16 = flash_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), block_q=8, block_k=8)
    assert out16.dtype == torch.bfloat16 and lse16.dtype == torch.float32  # accumulated in fp32
    torch.testing.assert_close(
        out16.float(), F.scaled_dot_product_attention(q, k, v), atol=2e-2, rtol=2e-2
    )


def test_causal_skips_hidden_tiles() -> None:
    assert tile_counts(256, 256, 64, 64) == (16, 0)
    assert tile_counts(256, 256, 64, 64, is_causal=True) == (10, 6)  # 4 + 3 + 2 + 1 computed
    assert tile_counts(100, 100, 32, 24, is_causal=True) == (14, 6)
    computed, skipped = tile_counts(4096, 4096, 64, 64, is_causal=True)
    assert computed == 64 * 65 // 2 and computed + skipped == 64 * 64


# --- memory ---------------------------------------------------------------------------------


def test_memory_formulas_and_measurement() -> None:
    assert written_out_bytes(1, 1, 256, 32) == (2 * 256 * 256 + 256 * 32) * 4
    assert tiled_bytes(2, 4, 1024, 32, 64, 64) == 8 * (1024 * 33 + 64 * 168 + 2 * 64 * 64) * 4
    assert tiled_bytes(1, 1, 256, 32, 128, 128) == (256 * 33 + 128 * 72 + 3 * 128 * 128) * 4
    assert tiled_bytes(1, 1, 16, 32) == tiled_bytes(1, 1, 16, 32, 16, 16)  # blocks capped at T
    assert peak_memory_bytes(lambda: torch.empty(1 << 20)) == 4 << 20
    q, k, v = (torch.randn(1, 1, 512, 32) for _ in range(3))
    with torch.no_grad():
        written = peak_memory_bytes(
            lambda: scaled_dot_product_attention(q, k, v, need_weights=True)
        )
        tiled = peak_memory_bytes(lambda: flash_attention(q, k, v))
        tiled_128 = peak_memory_bytes(lambda: flash_attention(q, k, v, block_q=128, block_k=128))
    assert written == written_out_bytes(1, 1, 512, 32)
    assert abs(tiled - tiled_bytes(1, 1, 512, 32)) < 0.02 * tiled
    assert abs(tiled_128 - tiled_bytes(1, 1, 512, 32, 128, 128)) < 0.02 * tiled_128
    assert tiled < written / 10


# --- errors ---------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors() -> None:
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="rank >= 3"):
        flash_attention(q[0, 0], k[0, 0], v[0, 0])
    with pytest.raises(ValueError, match="same last dim"):
        flash_attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="same length"):
        flash_attention(q, k, v[..., :5, :])
    with pytest.raises(ValueError, match="leading"):
        flash_attention(q, k[:1], v[:1])
    with pytest.raises(TypeError, match="floating point"):
        flash_attention(q.long(), k.long(), v.long())
    with pytest.raises(TypeError, match="dtypes differ"):
        flash_attention(q, k.float(), v)
    with pytest.raises(TypeError, match="bool tensor"):
        flash_attention(q, k, v, attn_mask=torch.zeros(T, S))
    with pytest.raises(ValueError, match="does not broadcast"):
        flash_attention(q, k, v, attn_mask=torch.ones(S, T, dtype=torch.bool))
    with pytest.raises(ValueError, match="block_q must be a positive int, got 0"):
        flash_attention(q, k, v, block_q=0)
    with pytest.raises(ValueError, match="block_k"):
        flash_attention(q, k, v, block_k=2.5)
    with pytest.raises(TypeError, match="is_causal"):
        flash_attention(q, k, v, is_causal=1)
