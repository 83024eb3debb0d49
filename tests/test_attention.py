import pytest
import torch

from tutorlib.attention import causal_mask, padding_mask


def test_causal_mask() -> None:
    mask = causal_mask(3)
    expected = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    with pytest.raises(ValueError, match="positive int"):
        causal_mask(0)


def test_padding_mask() -> None:
    mask = padding_mask(torch.tensor([2, 0, 3]), 3)
    expected = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        padding_mask(torch.tensor([4]), 3)
    with pytest.raises(ValueError, match="integers"):
        padding_mask(torch.tensor([1.0]), 3)


# --- masks for efficient attention --------------------------------------------------------


def test_sliding_window_and_strided_masks() -> None:
    from tutorlib.attention import sliding_window_mask, strided_mask

    local = sliding_window_mask(5, 2)
    assert local[3].tolist() == [False, False, True, True, False]
    assert sliding_window_mask(5, 2, causal=False)[2].tolist() == [False, True, True, True, False]
    assert strided_mask(7, 3)[6].tolist() == [True, False, False, True, False, False, True]
    assert strided_mask(7, 3, causal=False)[0].tolist() == [
        True,
        False,
        False,
        True,
        False,
        False,
        True,
    ]
    with pytest.raises(ValueError, match="window"):
        sliding_window_mask(5, 0)


# --- scaled dot-product attention against torch ------------------------------------------

from tutorlib.attention import (  # noqa: E402
    MultiHeadAttention,
    linear_attention,
    scaled_dot_product_attention,
)

B, H, T, S, D = 2, 3, 5, 7, 4


def _qkv(dtype=torch.float64, requires_grad=False):
    q = torch.randn(B, H, T, D, dtype=dtype, requires_grad=requires_grad)
    k = torch.randn(B, H, S, D, dtype=dtype, requires_grad=requires_grad)
    v = torch.randn(B, H, S, 6, dtype=dtype, requires_grad=requires_grad)
    return q, k, v


def _bool_mask(*shape):
    mask = torch.rand(*shape) > 0.4
    mask[..., 0] = True  # every query keeps a key, so torch has no NaN to compare
    return mask


MASKS = {
    "none": lambda: None,
    "bool (T, S)": lambda: _bool_mask(T, S),
    "bool (B, 1, T, S)": lambda: _bool_mask(B, 1, T, S),
    "bool (B, H, T, S)": lambda: _bool_mask(B, H, T, S),
    "float (T, S)": lambda: torch.randn(T, S, dtype=torch.float64),
}


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("mask_name", list(MASKS))
def test_sdpa_equals_torch(mask_name, is_causal, need_weights) -> None:
    q, k, v = _qkv(requires_grad=True)
    mask = MASKS[mask_name]()
    torch_mask = mask
    if is_causal:  # torch takes is_causal or a mask, not both: build the combined mask
        causal = torch.ones(T, S, dtype=torch.bool).tril()
        if mask is None:
            torch_mask = causal
        elif mask.dtype == torch.bool:
            torch_mask = mask & causal
        else:
            torch_mask = mask.masked_fill(~causal, float("-inf"))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=torch_mask)
    result = scaled_dot_product_attention(
        q, k, v, mask, is_causal=is_causal, need_weights=need_weights
    )
    out = result[0] if need_weights else result
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_weights_are_a_distribution_over_allowed_keys() -> None:
    q, k, v = _qkv()
    mask = _bool_mask(T, S)
    out, weights = scaled_dot_product_attention(q, k, v, mask, need_weights=True, scale=0.3)
    assert weights.shape == (B, H, T, S)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, H, T, dtype=torch.float64))
    assert (weights[..., ~mask] == 0).all()
    torch.testing.assert_close(out, weights @ v)


@pytest.mark.parametrize("need_weights", [True, False])
def test_fully_masked_rows_give_zeros_not_nan(need_weights) -> None:
    q, k, v = _qkv(requires_grad=True)
    mask = _bool_mask(T, S)
    mask[2] = False  # query 2 may attend to nothing
    result = scaled_dot_product_attention(q, k, v, mask, need_weights=need_weights)
    out = result[0] if need_weights else result
    assert torch.isfinite(out).all()
    assert (out[..., 2, :] == 0).all()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sdpa_follows_input_dtype(dtype) -> None:
    q, k, v = (t.to(dtype) for t in _qkv())
    for need_weights in (True, False):
        result = scaled_dot_product_attention(q, k, v, need_weights=need_weights)
        out = result[0] if need_weights else result
        assert out.dtype == dtype and out.device == q.device


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda q, k, v: (q[..., :3], k, v), ValueError, "same last dim"),
        (lambda q, k, v: (q, k, v[..., :4, :]), ValueError, "same length S"),
        (lambda q, k, v: (q, k[:1], v[:1]), ValueError, "leading"),
        (lambda q, k, v: (q.long(), k, v), TypeError, "floating point"),
        (lambda q, k, v: (q.float(), k, v), TypeError, "dtypes differ"),
        (lambda q, k, v: (q[0, 0, 0], k, v), ValueError, "expected"),
    ],
)
def test_sdpa_errors_say_what_was_expected(change, error, message) -> None:
    with pytest.raises(error, match=message):
        scaled_dot_product_attention(*change(*_qkv()))


def test_sdpa_rejects_bad_masks() -> None:
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="does not broadcast"):
        scaled_dot_product_attention(q, k, v, torch.ones(T, T, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        scaled_dot_product_attention(q, k, v, torch.ones(T, S, dtype=torch.long))


# --- multi-head attention against nn.MultiheadAttention -----------------------------------


def _pair(C=12, n_heads=3, bias=True):
    ours = MultiHeadAttention(C, n_heads, bias=bias)
    theirs = torch.nn.MultiheadAttention(C, n_heads, bias=bias, batch_first=True)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _mha_cases(Tq: int, Sk: int):
    pad = torch.ones(B, Sk, dtype=torch.bool)
    pad[1, Sk - 2 :] = False
    per_batch = _bool_mask(B, Tq, Sk)
    return {
        "none": ({}, {}),
        "padding": ({"padding_mask": pad}, {"key_padding_mask": ~pad}),
        "attn (T, S)": ({"attn_mask": _bool_mask(Tq, Sk)}, None),
        "attn (B, T, S)": (
            {"attn_mask": per_batch},
            {"attn_mask": ~per_batch.repeat_interleave(3, 0)},
        ),
        "padding + attn": ({"padding_mask": pad, "attn_mask": per_batch}, None),
    }


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize(
    "case", ["none", "padding", "attn (T, S)", "attn (B, T, S)", "padding + attn"]
)
@pytest.mark.parametrize("need_weights", [False, True])
def test_multi_head_attention_equals_torch(cross, case, need_weights) -> None:
    ours, theirs = _pair()
    x = torch.randn(B, T, 12)
    memory = torch.randn(B, S, 12) if cross else x
    ours_kwargs, torch_kwargs = _mha_cases(T, memory.shape[1])[case]
    if torch_kwargs is None:  # build torch's masks from ours: True = blocked, per head
        torch_kwargs = {}
        if "padding_mask" in ours_kwargs:
            torch_kwargs["key_padding_mask"] = ~ours_kwargs["padding_mask"]
        mask = ours_kwargs["attn_mask"]
        torch_kwargs["attn_mask"] = ~(mask if mask.dim() == 2 else mask.repeat_interleave(3, 0))
    out, weights = ours(x, memory, memory, need_weights=need_weights, **ours_kwargs)
    expected, expected_weights = theirs(
        x, memory, memory, need_weights=need_weights, **torch_kwargs
    )
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(weights, expected_weights, atol=1e-5, rtol=1e-5)
    else:
        assert weights is None


def test_multi_head_attention_causal_and_per_head_weights() -> None:
    ours, theirs = _pair(bias=False)
    x = torch.randn(B, T, 12)
    out, weights = ours(x, x, x, is_causal=True, need_weights=True, average_attn_weights=False)
    mask = ~causal_mask(T)
    expected, expected_weights = theirs(x, x, x, attn_mask=mask, average_attn_weights=False)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, expected_weights, atol=1e-5, rtol=1e-5)
    assert weights.shape == (B, 3, T, T)


def test_multi_head_attention_errors() -> None:
    mha = MultiHeadAttention(12, 3)
    x = torch.randn(B, T, 12)
    with pytest.raises(ValueError, match=r"expected \(batch, seq, 12\)"):
        mha(x, torch.randn(B, S, 8), torch.randn(B, S, 8))
    with pytest.raises(ValueError, match="padding_mask"):
        mha(x, x, x, padding_mask=torch.ones(B, T))
    with pytest.raises(ValueError, match="divide"):
        MultiHeadAttention(10, 3)


def test_multi_head_attention_double_precision_and_gradients() -> None:
    mha = MultiHeadAttention(12, 3).double()
    x = torch.randn(B, T, 12, dtype=torch.float64, requires_grad=True)
    out, _ = mha(x, x, x)
    assert out.dtype == torch.float64
    out.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in mha.parameters())


# --- linear attention ------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
def test_linear_attention_equals_its_quadratic_form(causal) -> None:
    q, k, v = (torch.randn(B, H, T, D, dtype=torch.float64) for _ in range(3))
    phi_q, phi_k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    kernel = phi_q @ phi_k.transpose(-2, -1)  # (B, H, T, T)
    if causal:
        kernel = kernel * causal_mask(T)
    expected = (kernel / kernel.sum(-1, keepdim=True)) @ v
    torch.testing.assert_close(linear_attention(q, k, v, causal=causal, eps=0.0), expected)
    with pytest.raises(ValueError, match="T == S"):
        linear_attention(q, k[..., :3, :], v[..., :3, :], causal=True)


# --- the fast path costs (almost) nothing over calling torch directly --------------------


def test_fast_path_is_within_10_percent_of_torch() -> None:
    import time

    q, k, v = (torch.randn(4, 8, 256, 64) for _ in range(3))
    torch_sdpa = torch.nn.functional.scaled_dot_product_attention

    def best(fn, repeats=15):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(q, k, v)
            times.append(time.perf_counter() - start)
        return min(times)

    best(torch_sdpa, 3)  # warm up
    ratios = []
    for _ in range(3):  # interleave the two to share any slow period
        ratios.append(best(scaled_dot_product_attention) / best(torch_sdpa))
    assert min(ratios) < 1.1, f"tutorlib / torch time ratios: {ratios}"


# --- Grouped-query attention, the shifted causal mask and the KV cache -----------------------

import torch.nn.functional as F  # noqa: E402

from tutorlib.attention import KVCache, grouped_query_attention  # noqa: E402


def _gqa_inputs(H: int = 6, H_kv: int = 2, T: int = 5, S: int = 7):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, H, T, 4, generator=g, dtype=torch.float64)
    k = torch.randn(2, H_kv, S, 4, generator=g, dtype=torch.float64)
    v = torch.randn(2, H_kv, S, 3, generator=g, dtype=torch.float64)
    return q, k, v


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool (T, S)", "bool (B, H, T, S)"])
def test_grouped_query_attention_equals_torch(need_weights, mask_kind) -> None:
    q, k, v = _gqa_inputs()
    T, S = q.shape[2], k.shape[2]
    g = torch.Generator().manual_seed(1)
    mask = {
        "none": None,
        "causal": None,
        "bool (T, S)": torch.rand(T, S, generator=g) > 0.4,
        "bool (B, H, T, S)": torch.rand(2, 6, T, S, generator=g) > 0.4,
    }[mask_kind]
    causal = mask_kind == "causal"
    result = grouped_query_attention(q, k, v, mask, is_causal=causal, need_weights=need_weights)
    out = result[0] if need_weights else result
    expected = F.scaled_dot_product_attention(q, k, v, mask, is_causal=causal, enable_gqa=True)
    expected = torch.nan_to_num(expected)  # a fully masked row: torch NaN, tutorlib zeros
    torch.testing.assert_close(out, expected)
    # Query head h reads key-value head h // (H / H_kv): the keys repeated with repeat_interleave.
    repeated = scaled_dot_product_attention(
        q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), mask, is_causal=causal
    )
    torch.testing.assert_close(out, repeated)
    wrong = scaled_dot_product_attention(q, k.repeat(1, 3, 1, 1), v.repeat(1, 3, 1, 1), mask)
    assert (out - wrong).abs().max() > 1e-3  # `repeat` pairs the heads with the wrong groups
    if need_weights:
        assert result[1].shape == (2, 6, T, S)
        torch.testing.assert_close(result[1].sum(-1)[result[1].sum(-1) > 0], torch.ones_like(
            result[1].sum(-1)[result[1].sum(-1) > 0]))  # fmt: skip


def test_grouped_query_attention_errors() -> None:
    q, k, v = _gqa_inputs()
    with pytest.raises(ValueError, match="divides 6"):
        grouped_query_attention(q, k[:, :1].expand(2, 4, -1, -1), v[:, :1].expand(2, 4, -1, -1))
    with pytest.raises(ValueError, match=r"expected \(batch, heads, seq, dim\)"):
        grouped_query_attention(q[0], k, v)


def test_causal_mask_with_a_past_is_bottom_right_aligned() -> None:
    mask = causal_mask(2, past=3)
    assert mask.shape == (2, 5)
    assert mask.tolist() == [[True] * 4 + [False], [True] * 5]
    assert torch.equal(causal_mask(6)[4:], causal_mask(2, past=4))
    with pytest.raises(ValueError, match="past"):
        causal_mask(2, past=-1)


@pytest.mark.parametrize("n_kv_heads", [3, 1])
def test_multi_head_attention_with_a_cache_equals_the_full_pass(n_kv_heads) -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(12, 3, bias=False, n_kv_heads=n_kv_heads).double().eval()
    assert mha.in_proj_weight.shape == (12 + 2 * 4 * n_kv_heads, 12)
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    full, _ = mha(x, x, x, is_causal=True)
    cache = KVCache()
    pieces = [mha(x[:, :4], x[:, :4], x[:, :4], is_causal=True, cache=cache)[0]]
    for t in range(4, 7):
        step = x[:, t : t + 1]
        pieces.append(mha(step, step, step, is_causal=True, cache=cache)[0])
    torch.testing.assert_close(torch.cat(pieces, 1), full)
    assert cache.keys[0].shape == (2, n_kv_heads, 7, 4) and cache.length == 7
    assert repr(cache) == "KVCache(layers=1, length=7)"
    with pytest.raises(ValueError, match="layer 2 updated before layer 1"):
        cache.update(2, cache.keys[0], cache.values[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_fast_rotation_is_apply_rotary(dtype) -> None:
    from tutorlib.attention import _rotate
    from tutorlib.embeddings import apply_rotary, rotary_angles

    x = torch.randn(2, 8, 3, 6).transpose(1, 2).to(dtype).requires_grad_()  # (B, H, T, D) view
    cos, sin = rotary_angles(8, 6, offset=5)
    fast, slow = _rotate(x, cos, sin), apply_rotary(x, cos, sin)
    torch.testing.assert_close(fast, slow)
    g = torch.randn_like(fast)
    (grad_fast,) = torch.autograd.grad(fast, x, g)
    (grad_slow,) = torch.autograd.grad(slow, x, g)
    torch.testing.assert_close(grad_fast, grad_slow)


from tutorlib.attention import record_attention_weights  # noqa: E402


@pytest.mark.parametrize("module", ["tutorlib", "torch"])
def test_recorded_attention_weights_are_the_modules_own_and_the_hooks_go(module: str) -> None:
    """The weights recorded while a model runs are those the module returns when asked
    directly (per head, not averaged), one tensor per call, and no hook stays behind, also
    when the run raises."""
    torch.manual_seed(0)
    if module == "tutorlib":
        attention = MultiHeadAttention(16, 4)
    else:
        attention = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    attention.eval()
    x, y = torch.randn(2, 5, 16), torch.randn(2, 7, 16)

    recorded = record_attention_weights(
        [attention], lambda: (attention(x, x, x), attention(y, x, x))
    )

    direct = [attention(q, x, x, need_weights=True, average_attn_weights=False)[1] for q in (x, y)]
    assert [r.shape for r in recorded] == [(2, 4, 5, 5), (2, 4, 7, 5)]
    for r, d in zip(recorded, direct, strict=True):
        torch.testing.assert_close(r, d)
        torch.testing.assert_close(r.sum(-1), torch.ones(r.shape[:-1]))
    assert not attention._forward_hooks and not attention._forward_pre_hooks

    def failing() -> None:
        attention(x, x, x)
        raise RuntimeError("the run failed")

    with pytest.raises(RuntimeError, match="the run failed"):
        record_attention_weights([attention], failing)
    assert not attention._forward_hooks and not attention._forward_pre_hooks
