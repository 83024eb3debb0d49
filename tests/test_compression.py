"""Quantization against torch's fake-quantization, pruning against torch.nn.utils.prune, and
the distillation loss against its definition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as prune
from torch import nn

from tutorlib.compression import (
    Int8Linear,
    apply_masks,
    dequantize_int8,
    distillation_loss,
    magnitude_prune,
    model_bytes,
    quantize_int8,
    quantize_model,
    sparsity,
)
from tutorlib.models import DecoderOnly, TransformerConfig


def weight(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, 24, generator=g)
    w[3] *= 50  # an outlier channel
    return w


def test_per_channel_quantization_equals_torch_fake_quantize() -> None:
    w = weight()
    q, scale = quantize_int8(w, axis=0)
    assert q.dtype == torch.int8 and scale.shape == (16, 1)
    assert q.abs().max() == 127
    expected = torch.fake_quantize_per_channel_affine(
        w, scale.flatten(), torch.zeros(16, dtype=torch.int32), 0, -127, 127
    )
    torch.testing.assert_close(dequantize_int8(q, scale), expected, rtol=0, atol=0)
    # The rounding error is at most half a step in every channel.
    assert ((dequantize_int8(q, scale) - w).abs() <= scale / 2 + 1e-6).all()


def test_per_channel_beats_per_tensor_with_an_outlier_channel() -> None:
    w = weight()
    per_channel = dequantize_int8(*quantize_int8(w, axis=0))
    per_tensor = dequantize_int8(*quantize_int8(w, axis=None))
    error = lambda approx: (approx - w).abs().mean().item()  # noqa: E731
    assert error(per_channel) < error(per_tensor) / 5


def test_zero_channel_and_bad_input() -> None:
    q, scale = quantize_int8(torch.zeros(3, 4))
    assert (q == 0).all() and (scale == 1).all()
    with pytest.raises(TypeError, match="floating"):
        quantize_int8(torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="axis"):
        quantize_int8(torch.ones(3, 4), axis=2)
    with pytest.raises(TypeError, match="int8"):
        dequantize_int8(torch.ones(3), torch.ones(1))


@pytest.mark.parametrize("mode", ["weight", "dynamic"])
def test_int8_linear_is_close_to_the_float_layer(mode: str) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(24, 16)
    x = torch.randn(2, 5, 24)
    layer = Int8Linear.from_float(linear, mode)
    assert layer.weight_int8.dtype == torch.int8
    out, ref = layer(x), linear(x)
    assert out.shape == (2, 5, 16)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    if mode == "weight":  # exactly the float layer with the dequantized weight
        dq = dequantize_int8(layer.weight_int8, layer.weight_scale)
        torch.testing.assert_close(out, F.linear(x, dq, linear.bias))
    else:  # exactly the integer product, rescaled
        xq, xs = quantize_int8(x.reshape(-1, 24), axis=0)
        exact = (
            (xq.double() @ layer.weight_int8.double().T)
            * xs.double()
            * layer.weight_scale.double().T
        )
        torch.testing.assert_close(
            out.reshape(-1, 16).double(), exact + linear.bias.double(), rtol=1e-5, atol=1e-5
        )
    with pytest.raises(ValueError, match="24"):
        layer(torch.randn(2, 23))


def test_quantize_model_shrinks_linears_and_keeps_the_original() -> None:
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=20, d_model=32, n_heads=2, n_layers=2, d_ff=128, tie_weights=False
    )
    model = DecoderOnly(config).eval()
    small = quantize_model(model, "weight")
    assert sum(isinstance(m, Int8Linear) for m in small.modules()) == 2 * 2 + 1  # FFNs + head
    assert not any(isinstance(m, Int8Linear) for m in model.modules())
    assert model_bytes(small) < 0.6 * model_bytes(model)
    tokens = torch.randint(0, 20, (2, 9))
    with torch.no_grad():
        assert (small(tokens) - model(tokens)).abs().max() < 0.1


def test_tied_output_is_neither_quantized_nor_pruned() -> None:
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=20, d_model=32, n_heads=2, n_layers=1, d_ff=64)
    model = DecoderOnly(config)  # tie_weights=True: output.weight is the token embedding
    small = quantize_model(model, "weight")
    assert type(small.output) is nn.Linear
    assert small.output.weight is small.decoder.embed.tokens.weight
    embedding = model.decoder.embed.tokens.weight.detach().clone()
    masks = magnitude_prune(model, 0.5)
    assert "output.weight" not in masks and "decoder.embed.tokens.weight" not in masks
    assert torch.equal(model.decoder.embed.tokens.weight, embedding)


def test_model_bytes_counts_tied_weights_once() -> None:
    config = TransformerConfig(vocab_size=20, d_model=32, n_heads=2, n_layers=1, d_ff=64)
    model = DecoderOnly(config)
    assert model_bytes(model) == 4 * sum(p.numel() for p in model.parameters())  # unique params


def test_magnitude_pruning_matches_torch_global_unstructured() -> None:
    torch.manual_seed(0)
    ours = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    theirs = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    theirs.load_state_dict(ours.state_dict())
    masks = magnitude_prune(ours, 0.7)
    prune.global_unstructured(
        [(theirs[0], "weight"), (theirs[2], "weight")], prune.L1Unstructured, amount=0.7
    )
    assert torch.equal(masks["0.weight"], theirs[0].weight_mask.bool())
    assert torch.equal(masks["2.weight"], theirs[2].weight_mask.bool())
    assert sparsity(ours) == pytest.approx(0.7, abs=0.005)
    assert torch.equal(ours[0].bias, theirs[0].bias)  # biases are not pruned


def test_masks_keep_pruned_weights_at_zero_through_training() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    masks = magnitude_prune(model, 0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        loss = model(torch.randn(16, 8)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        apply_masks(model, masks)
    assert sparsity(model) >= 0.5
    with pytest.raises(ValueError, match="amount"):
        magnitude_prune(model, 1.0)


def test_distillation_loss_definition_and_limits() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 7, generator=g, requires_grad=True)
    t = torch.randn(6, 7, generator=g)
    y = torch.randint(0, 7, (6,), generator=g)
    T = 3.0
    kl = F.kl_div(
        F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="batchmean"
    )
    expected = 0.3 * T * T * kl + 0.7 * F.cross_entropy(s, y)
    torch.testing.assert_close(distillation_loss(s, t, y, T, alpha=0.3), expected)
    torch.testing.assert_close(distillation_loss(s, t, y, T, alpha=0.0), F.cross_entropy(s, y))
    assert distillation_loss(t, t, y, T, alpha=1.0).abs() < 1e-6  # a perfect student
    teacher = t.clone().requires_grad_(True)
    distillation_loss(s, teacher, y).backward()
    assert teacher.grad is None, "the teacher must be detached"
    with pytest.raises(ValueError, match="targets"):
        distillation_loss(s, t, y.float())
