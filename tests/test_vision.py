"""Patches, the patch embedding against a strided convolution, the ViT, attention rollout and
the digits data."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tutorlib.vision import (
    PatchEmbedding,
    ViT,
    ViTConfig,
    attention_rollout,
    digit_cnn,
    digits_data,
    patchify,
    unpatchify,
    vit_attention,
)


def test_patchify_order_and_inverse() -> None:
    images = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    patches = patchify(images, 2)
    assert patches.shape == (2, 6, 12)  # 2 x 3 patches of 3 channels x 2 x 2
    # Patch 1 is the top row's second patch: rows 0-1, columns 2-3, channel by channel.
    assert torch.equal(patches[0, 1], images[0, :, 0:2, 2:4].flatten())
    assert torch.equal(patches[1, 3], images[1, :, 2:4, 0:2].flatten())  # second row, first
    assert torch.equal(unpatchify(patches, 2, 3, 4, 6), images)


def test_patch_embedding_equals_strided_convolution() -> None:
    torch.manual_seed(0)
    embed = PatchEmbedding(channels=3, patch_size=4, d_model=5).double()
    conv = torch.nn.Conv2d(3, 5, kernel_size=4, stride=4).double()
    with torch.no_grad():
        conv.weight.copy_(embed.conv_weight())
        conv.bias.copy_(embed.proj.bias)
    images = torch.randn(2, 3, 8, 12, dtype=torch.float64)
    expected = conv(images).flatten(2).transpose(1, 2)  # (B, N, d): the grid row by row
    torch.testing.assert_close(embed(images), expected)


def test_clear_errors() -> None:
    with pytest.raises(ValueError, match="not divisible by patch_size 3"):
        patchify(torch.zeros(1, 1, 8, 8), 3)
    with pytest.raises(ValueError, match="batch, channels, height, width"):
        patchify(torch.zeros(8, 8), 2)
    with pytest.raises(TypeError, match="floating"):
        patchify(torch.zeros(1, 1, 8, 8, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="not divisible"):
        ViTConfig(image_size=8, patch_size=3)
    with pytest.raises(ValueError, match="expected \\(batch, 1, 8, 8\\)"):
        ViT(ViTConfig())(torch.zeros(2, 1, 6, 6))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("positional", ["1d", "2d"])
def test_vit_shapes_and_parameter_count(pooling: str, positional: str) -> None:
    config = ViTConfig(
        d_model=16, n_heads=2, n_layers=2, d_ff=32, pooling=pooling, positional=positional
    )
    model = ViT(config)
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    C, N, L = 16, config.n_patches, 2
    layer = 4 * C * C + 4 * C + 2 * C * 32 + 32 + C + 4 * C
    positions = N * C if positional == "1d" else 2 * config.grid * C
    expected = (
        (4 * C + C) + positions + (C if pooling == "cls" else 0) + L * layer + 2 * C + 10 * C + 10
    )
    assert sum(p.numel() for p in model.parameters()) == expected


def test_attention_weights_reproduce_the_model_and_rollout_rows_sum_to_one() -> None:
    torch.manual_seed(0)
    model = ViT(ViTConfig(d_model=16, n_heads=2, n_layers=3, d_ff=32, dropout=0.1)).train()
    images = torch.rand(2, 1, 8, 8)
    attentions = vit_attention(model, images)
    assert model.training
    assert len(attentions) == 3 and attentions[0].shape == (2, 2, 17, 17)
    for a in attentions:
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 2, 17))
    # They are the model's own: recompute each layer's weights by hand on its input.
    model.eval()
    with torch.no_grad():
        x = model.tokens(images)  # (B, 17, 16)
        for layer, weights in zip(model.layers, attentions, strict=True):
            h = layer.norm1(x)
            q, k, _ = F.linear(
                h, layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias
            ).chunk(3, -1)
            q, k = (z.view(2, 17, 2, 8).transpose(1, 2) for z in (q, k))  # (B, H, S, D)
            expected = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1)
            torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-6)
            x = layer(x)
        torch.testing.assert_close(model.head(model.norm(x)[:, 0]), model(images))
    rollout = attention_rollout(attentions)
    assert rollout.shape == (2, 17, 17)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(2, 17))


def test_rollout_of_identity_attention_is_identity_and_of_one_layer_is_its_mixture() -> None:
    eye = torch.eye(5).expand(1, 2, 5, 5)
    torch.testing.assert_close(attention_rollout([eye, eye]), torch.eye(5).expand(1, 5, 5))
    a = torch.softmax(torch.randn(1, 3, 5, 5), dim=-1)
    expected = 0.5 * a.mean(1) + 0.5 * torch.eye(5)
    torch.testing.assert_close(attention_rollout([a]), expected)
    torch.testing.assert_close(attention_rollout([a], residual=False), a.mean(1))
    b = torch.softmax(torch.randn(1, 3, 5, 5), dim=-1)
    torch.testing.assert_close(attention_rollout([a, b], residual=False), b.mean(1) @ a.mean(1))


def test_digits_data_is_real_split_and_seeded() -> None:
    train_x, train_y, test_x, test_y = digits_data(test_fraction=0.25, seed=0)
    assert train_x.shape[1:] == (1, 8, 8) and len(train_x) + len(test_x) == 1797
    assert len(test_x) == 449
    assert 0.0 <= float(train_x.min()) and float(train_x.max()) == 1.0
    assert set(train_y.tolist()) == set(range(10))
    again = digits_data(test_fraction=0.25, seed=0)
    assert torch.equal(again[3], test_y)
    assert F.one_hot(test_y, 10).sum(0).min() > 20  # every class is in the test set


def test_digit_cnn_is_page_5_2s_cnn() -> None:
    cnn = digit_cnn()
    assert sum(p.numel() for p in cnn.parameters()) == 56_394  # as page 5.2 prints
    convs = [m for m in cnn if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 32, (3, 3)),
        (32, 64, (3, 3)),
        (64, 64, (3, 3)),
    ]
    narrow = digit_cnn((16, 32, 32))
    assert narrow(torch.zeros(5, 1, 8, 8)).shape == (5, 10)
    with pytest.raises(ValueError, match="three positive ints"):
        digit_cnn((16, 32))
