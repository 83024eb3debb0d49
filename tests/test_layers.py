"""Each reference layer equals its PyTorch counterpart with the same weights."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tutorlib.attention import causal_mask
from tutorlib.layers import (
    DecoderLayer,
    EncoderLayer,
    FeedForward,
    LayerNorm,
    RMSNorm,
    SwiGLU,
    gelu_tanh,
    layer_norm,
    rms_norm,
    swiglu,
    torch_state_dict,
)


@pytest.mark.parametrize(
    "shape, normalized", [((4, 7), (7,)), ((2, 3, 8), (8,)), ((2, 3, 4), (3, 4))]
)
def test_layer_norm_equals_torch(shape, normalized) -> None:
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(*normalized, dtype=torch.float64, requires_grad=True)
    b = torch.randn(*normalized, dtype=torch.float64, requires_grad=True)
    ours = layer_norm(x, normalized, w, b, eps=1e-3)
    theirs = F.layer_norm(x, normalized, w, b, eps=1e-3)
    torch.testing.assert_close(ours, theirs)
    grads_ours = torch.autograd.grad(ours.square().sum(), (x, w, b))
    grads_theirs = torch.autograd.grad(theirs.square().sum(), (x, w, b))
    for g1, g2 in zip(grads_ours, grads_theirs, strict=True):
        torch.testing.assert_close(g1, g2)


def test_layer_norm_module_equals_nn_layernorm() -> None:
    ours, theirs = LayerNorm(6), nn.LayerNorm(6)
    with torch.no_grad():
        ours.weight.normal_()
        ours.bias.normal_()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 4, 6)
    torch.testing.assert_close(ours(x), theirs(x))


def test_layer_norm_module_without_bias_and_in_double() -> None:
    ours = LayerNorm(6, bias=False).double()
    assert ours.bias is None
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    torch.testing.assert_close(ours(x), layer_norm(x, (6,), ours.weight))


@pytest.mark.parametrize("eps", [None, 1e-6])
def test_rms_norm_equals_torch(eps) -> None:
    x = torch.randn(3, 5, 8, dtype=torch.float64) * 3 + 1
    w = torch.randn(8, dtype=torch.float64)
    torch.testing.assert_close(rms_norm(x, (8,), w, eps), F.rms_norm(x, (8,), w, eps))
    torch.testing.assert_close(rms_norm(x, (5, 8), None, eps), F.rms_norm(x, (5, 8), None, eps))
    ours, theirs = RMSNorm(8, eps=1e-6).double(), nn.RMSNorm(8, eps=1e-6).double()
    with torch.no_grad():
        ours.weight.normal_()
    theirs.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours(x), rms_norm(x, (8,), ours.weight, 1e-6))
    # Not layer norm: the mean is not subtracted.
    assert (rms_norm(x, (8,)) - layer_norm(x, (8,))).abs().max() > 0.1
    with pytest.raises(ValueError, match="normalized_shape"):
        rms_norm(x, (7,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rms_norm_module_gradient_written_out_equals_torch(dtype) -> None:
    norm = RMSNorm(8, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.normal_()
    x = (torch.randn(3, 5, 8) * 2 + 0.5).to(dtype).requires_grad_()
    g = torch.randn(3, 5, 8).to(dtype)
    ours = norm(x)
    theirs = F.rms_norm(x, (8,), norm.weight, 1e-5)
    torch.testing.assert_close(ours, theirs)
    ours_grads = torch.autograd.grad(ours, (x, norm.weight), g)
    theirs_grads = torch.autograd.grad(theirs, (x, norm.weight), g)
    for a, b in zip(ours_grads, theirs_grads, strict=True):
        torch.testing.assert_close(a, b)
    if dtype == torch.float64:
        from tutorlib.layers import _RMSNormFunction

        assert torch.autograd.gradcheck(_RMSNormFunction.apply, (x, norm.weight, 1e-5))


def test_swiglu_is_a_gated_unit() -> None:
    ff = SwiGLU(8, 12).double()
    assert ff.gate_proj.bias is None
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    gate, up = x @ ff.gate_proj.weight.T, x @ ff.up_proj.weight.T  # (B, T, 12)
    expected = (gate * torch.sigmoid(gate) * up) @ ff.down_proj.weight.T
    torch.testing.assert_close(ff(x), expected)
    weights = (ff.gate_proj.weight, ff.up_proj.weight, ff.down_proj.weight)
    torch.testing.assert_close(swiglu(x, *weights), expected)
    # The gate matters: swapping gate and up changes the output.
    assert (swiglu(x, weights[1], weights[0], weights[2]) - expected).abs().max() > 1e-3


def test_modern_layer_options() -> None:
    layer = EncoderLayer(16, 4, 24, norm_first=True, norm="rms", feed_forward="swiglu",
                         n_kv_heads=1, bias=False)  # fmt: skip
    assert isinstance(layer.norm1, RMSNorm) and isinstance(layer.ff, SwiGLU)
    assert all(p.dim() > 1 or name.endswith("weight") for name, p in layer.named_parameters())
    x = torch.randn(2, 5, 16)
    out = layer(x, is_causal=True)
    torch.testing.assert_close(out, layer(x, mask=causal_mask(5)))
    with pytest.raises(ValueError, match="norm must be one of"):
        EncoderLayer(16, 4, 24, norm="batch")
    with pytest.raises(ValueError, match="feed_forward"):
        EncoderLayer(16, 4, 24, feed_forward="geglu")


def test_layer_norm_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="normalized_shape"):
        layer_norm(torch.randn(2, 5), (4,))


def test_feed_forward_shapes_and_activation() -> None:
    ff = FeedForward(8, 32, activation="gelu")
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(ff(x), ff.linear2(F.gelu(ff.linear1(x))))
    with pytest.raises(ValueError, match="activation"):
        FeedForward(8, 32, activation="swish")


def _masks(B: int, T: int):
    pad = torch.ones(B, T, dtype=torch.bool)
    pad[0, T - 2 :] = False
    per_batch = torch.rand(B, T, T) > 0.3
    per_batch |= torch.eye(T, dtype=torch.bool)  # every query keeps at least one key
    return [
        {},
        {"padding_mask": pad},
        {"mask": causal_mask(T)},
        {"mask": causal_mask(T), "padding_mask": pad},
        {"mask": per_batch},
    ]


def _torch_encoder_kwargs(kwargs: dict, n_heads: int) -> dict:
    out = {}
    if "padding_mask" in kwargs:
        out["src_key_padding_mask"] = ~kwargs["padding_mask"]
    if "mask" in kwargs:
        mask = ~kwargs["mask"]
        out["src_mask"] = mask if mask.dim() == 2 else mask.repeat_interleave(n_heads, dim=0)
    return out


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("training", [True, False])
def test_encoder_layer_equals_torch(norm_first: bool, activation: str, training: bool) -> None:
    C, H, d_ff, B, T = 16, 4, 32, 3, 6
    ours = EncoderLayer(C, H, d_ff, activation=activation, norm_first=norm_first)
    theirs = nn.TransformerEncoderLayer(
        C, H, d_ff, dropout=0.0, activation=activation, batch_first=True, norm_first=norm_first
    )
    theirs.load_state_dict(torch_state_dict(ours))
    ours.train(training)
    theirs.train(training)  # eval mode takes torch's fused fast path
    x = torch.randn(B, T, C)
    for kwargs in _masks(B, T):
        expected = theirs(x, **_torch_encoder_kwargs(kwargs, H))
        got = ours(x, **kwargs)
        if not training and "padding_mask" in kwargs:  # the fast path zeroes padded positions
            keep = kwargs["padding_mask"]
            got, expected = got[keep], expected[keep]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_equals_torch(norm_first: bool) -> None:
    C, H, d_ff, B, T, S = 16, 4, 32, 2, 5, 7
    ours = DecoderLayer(C, H, d_ff, norm_first=norm_first)
    theirs = nn.TransformerDecoderLayer(
        C, H, d_ff, dropout=0.0, batch_first=True, norm_first=norm_first
    )
    theirs.load_state_dict(torch_state_dict(ours))
    x, memory = torch.randn(B, T, C), torch.randn(B, S, C)
    memory_pad = torch.ones(B, S, dtype=torch.bool)
    memory_pad[1, 4:] = False
    got = ours(x, memory, self_mask=causal_mask(T), memory_padding_mask=memory_pad)
    expected = theirs(x, memory, tgt_mask=~causal_mask(T), memory_key_padding_mask=~memory_pad)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layer_cls", [EncoderLayer, DecoderLayer])
def test_layers_follow_dtype_and_pass_gradients(layer_cls) -> None:
    layer = layer_cls(8, 2, 16).double()
    x = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    out = (
        layer(x)
        if layer_cls is EncoderLayer
        else layer(x, torch.randn(2, 3, 8, dtype=torch.float64))
    )
    assert out.dtype == torch.float64 and out.shape == (2, 4, 8)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    missing = [name for name, p in layer.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reached {missing}"


def test_encoder_layer_errors_say_what_was_expected() -> None:
    layer = EncoderLayer(8, 2, 16)
    with pytest.raises(ValueError, match=r"expected \(batch, seq, 8\)"):
        layer(torch.randn(2, 4, 7))
    with pytest.raises(TypeError, match="floating point"):
        layer(torch.ones(2, 4, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="True = may attend"):  # bool, or an additive float mask
        layer(torch.randn(2, 4, 8), mask=torch.ones(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="padding_mask"):
        layer(torch.randn(2, 4, 8), padding_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="batch sizes differ"):
        DecoderLayer(8, 2, 16)(torch.randn(2, 4, 8), torch.randn(3, 4, 8))


def test_gelu_tanh_is_the_tanh_approximation() -> None:
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    formula = 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x**3)))
    torch.testing.assert_close(gelu_tanh(x), formula)
    torch.testing.assert_close(gelu_tanh(x), F.gelu(x, approximate="tanh"))
    assert (gelu_tanh(x) - F.gelu(x)).abs().max() > 1e-5  # an approximation, not the exact GELU
    ff = FeedForward(8, 32, activation="gelu_tanh")
    h = torch.randn(2, 3, 8)
    torch.testing.assert_close(ff(h), ff.linear2(F.gelu(ff.linear1(h), approximate="tanh")))
