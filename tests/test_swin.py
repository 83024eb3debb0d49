"""Shifted-window attention (5.6): window partition and its inverse, (shifted) window attention
against full attention under a mask built by brute force from token coordinates, Hugging Face's
Swin (window partition, shifted-window mask, relative position index, a whole SwinLayer and the
patch merging with copied weights), the flow of information across windows, patch merging
against a direct gather, seeded determinism and clear errors at the boundary."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tutorlib.swin import (
    PatchMerging,
    Swin,
    SwinBlock,
    SwinConfig,
    WindowAttention,
    cyclic_shift,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)

hf_swin = pytest.importorskip("transformers.models.swin.modeling_swin")


def random_grid(B: int, H: int, W: int, C: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, W, C, generator=generator, dtype=torch.float64)


def block(d_model: int, n_heads: int, window: int, shift: int, seed: int = 0) -> SwinBlock:
    """A float64 Swin block with random weights everywhere, the bias table and norms included."""
    torch.manual_seed(seed)
    swin_block = SwinBlock(d_model, n_heads, window, shift, d_ff=2 * d_model).double().eval()
    with torch.no_grad():
        for name, p in swin_block.named_parameters():
            if "norm" in name or "bias_table" in name or name.endswith("bias"):
                p.add_(0.5 * torch.randn_like(p))
    return swin_block


# --- Partition, shift, reverse ---------------------------------------------------------------


@pytest.mark.parametrize(("H", "W", "window"), [(8, 8, 4), (6, 9, 3), (4, 8, 4), (5, 5, 1)])
def test_partition_order_and_round_trip(H: int, W: int, window: int) -> None:
    x = random_grid(2, H, W, 3)
    windows = window_partition(x, window)
    n_windows = (H // window) * (W // window)
    assert windows.shape == (2 * n_windows, window * window, 3)
    # Window k of image b holds the block at window-row k // (W / w), window-column k % (W / w),
    # flattened row by row.
    for b in range(2):
        for k in range(n_windows):
            r, c = divmod(k, W // window)
            block_ = x[b, r * window : (r + 1) * window, c * window : (c + 1) * window]
            assert torch.equal(windows[b * n_windows + k], block_.reshape(-1, 3))
    assert torch.equal(window_reverse(windows, window, H, W), x)


def test_partition_and_reverse_match_hugging_face() -> None:
    x = random_grid(3, 8, 12, 5)
    ours = window_partition(x, 4)
    theirs = hf_swin.window_partition(x, 4)  # (B * nW, w, w, C)
    assert torch.equal(ours, theirs.reshape(ours.shape))
    assert torch.equal(window_reverse(ours, 4, 8, 12), hf_swin.window_reverse(theirs, 4, 8, 12))


def test_cyclic_shift_moves_tokens_up_and_left_and_back() -> None:
    x = random_grid(1, 6, 8, 2)
    rolled = cyclic_shift(x, 2)
    for i in range(6):
        for j in range(8):
            assert torch.equal(rolled[0, (i - 2) % 6, (j - 2) % 8], x[0, i, j])
    assert torch.equal(cyclic_shift(rolled, -2), x)


# --- Brute-force oracles from token coordinates ----------------------------------------------


def window_ids(H: int, W: int, window: int, shift: int) -> list[tuple[int, int]]:
    """The window of each token (row by row) in the unrolled image. Shifted windows start at
    `shift`, and the strips [0, shift) at the top and left are windows of their own: they are
    the parts the cyclic shift rolls around to the far edge, and must not mix with it."""
    return [((i - shift) // window, (j - shift) // window) for i in range(H) for j in range(W)]


def brute_force_bias(swin_block: SwinBlock, H: int, W: int) -> torch.Tensor:
    """The additive mask of full attention over all H W tokens that equals (shifted) window
    attention: the relative position bias from the two tokens' image coordinates where both
    lie in the same window, -inf elsewhere. Loops over every pair; no partition, no roll."""
    w, shift = swin_block.window, swin_block.shift
    table = swin_block.attn.relative_position_bias_table.detach()  # ((2w-1)^2, heads)
    ids = window_ids(H, W, w, shift)
    n_heads = table.shape[1]
    mask = torch.full((n_heads, H * W, H * W), float("-inf"), dtype=table.dtype)
    for p in range(H * W):
        for q in range(H * W):
            if ids[p] == ids[q]:
                dy, dx = p // W - q // W, p % W - q % W
                mask[:, p, q] = table[(dy + w - 1) * (2 * w - 1) + (dx + w - 1)]
    return mask  # (heads, HW, HW)


def full_attention(
    swin_block: SwinBlock, x: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Multi-head attention over the whole grid, written with `F.scaled_dot_product_attention`
    from the block's weights: (B, H, W, C) -> (B, H, W, C)."""
    B, H, W, C = x.shape
    attn = swin_block.attn.attn
    n_heads = attn.n_heads
    tokens = x.reshape(B, H * W, C)  # (B, N, C)
    q, k, v = F.linear(tokens, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.view(B, H * W, n_heads, -1).transpose(1, 2) for t in (q, k, v))  # (B, h, N, D)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, N, D)
    out = attn.out_proj(out.transpose(1, 2).reshape(B, H * W, C))  # (B, N, C)
    return out.view(B, H, W, C)


@pytest.mark.parametrize(
    ("H", "W", "window", "shift"), [(8, 8, 4, 0), (8, 12, 4, 0), (6, 9, 3, 0), (4, 4, 2, 0)]
)
def test_window_attention_equals_full_attention_with_block_diagonal_mask(
    H: int, W: int, window: int, shift: int
) -> None:
    swin_block = block(8, 2, window, shift)
    x = random_grid(2, H, W, 8, seed=1)
    with torch.no_grad():
        expected = full_attention(swin_block, x, brute_force_bias(swin_block, H, W))
        torch.testing.assert_close(swin_block.attention(x), expected)


@pytest.mark.parametrize(
    ("H", "W", "window", "shift"), [(8, 8, 4, 2), (8, 12, 4, 1), (8, 12, 4, 3), (9, 6, 3, 1)]
)
def test_shifted_window_attention_equals_full_attention_with_brute_force_mask(
    H: int, W: int, window: int, shift: int
) -> None:
    swin_block = block(8, 2, window, shift)
    x = random_grid(2, H, W, 8, seed=2)
    mask = brute_force_bias(swin_block, H, W)
    with torch.no_grad():
        torch.testing.assert_close(swin_block.attention(x), full_attention(swin_block, x, mask))
    # The oracle is not trivially satisfied: without the mask the wrapped-around tokens mix.
    no_mask = mask.clone()
    ids = window_ids(H, W, window, shift)
    last = (H - shift) // window, (W - shift) // window  # the window at the far corner
    first = (-1, -1)  # the corner strip that the roll carries into it
    p, q = ids.index(last), ids.index(first)
    no_mask[:, p, q] = 0.0
    with torch.no_grad():
        wrong = full_attention(swin_block, x, no_mask)
        assert not torch.allclose(
            swin_block.attention(x)[:, p // W, p % W], wrong[:, p // W, p % W]
        )


def test_window_as_large_as_the_image_is_global_attention() -> None:
    swin_block = block(8, 2, window=6, shift=0)
    with torch.no_grad():
        swin_block.attn.relative_position_bias_table.zero_()
    x = random_grid(2, 6, 6, 8, seed=3)
    with torch.no_grad():
        expected, _ = swin_block.attn.attn(*(x.reshape(2, 36, 8),) * 3)  # no mask at all
        torch.testing.assert_close(swin_block.attention(x), expected.view(2, 6, 6, 8))
        torch.testing.assert_close(swin_block.attention(x), full_attention(swin_block, x, None))


# --- Hugging Face's Swin ---------------------------------------------------------------------


@pytest.mark.parametrize(("H", "W", "window", "shift"), [(8, 8, 4, 2), (8, 12, 4, 1), (6, 9, 3, 1)])
def test_shifted_window_mask_matches_hugging_face(H: int, W: int, window: int, shift: int) -> None:
    config = hf_swin.SwinConfig(embed_dim=8, window_size=window, num_heads=[2])
    layer = hf_swin.SwinLayer(config, 8, (H, W), 2, shift_size=shift)
    theirs = layer.get_attn_mask(H, W, torch.float32, torch.device("cpu"))  # 0 or -100
    assert torch.equal(shifted_window_mask(H, W, window, shift), theirs == 0)


def test_relative_position_index_matches_hugging_face() -> None:
    for window in (1, 3, 4, 7):
        theirs = hf_swin.SwinRelativePositionBias(2, (window, window))
        expected = theirs._create_relative_position_index()
        assert torch.equal(relative_position_index(window), expected)


def hf_layer_from(swin_block: SwinBlock, H: int, W: int) -> torch.nn.Module:
    """Hugging Face's SwinLayer with `swin_block`'s weights (random init, no download)."""
    C, heads = swin_block.d_model, swin_block.attn.n_heads
    config = hf_swin.SwinConfig(
        embed_dim=C,
        window_size=swin_block.window,
        num_heads=[heads],
        mlp_ratio=swin_block.ff.linear1.out_features / C,
        hidden_act="gelu",
        attn_implementation="eager",
    )
    layer = hf_swin.SwinLayer(config, C, (H, W), heads, shift_size=swin_block.shift)
    q, k, v = swin_block.attn.attn.in_proj_weight.chunk(3)
    bq, bk, bv = swin_block.attn.attn.in_proj_bias.chunk(3)
    theirs = layer.double().eval()
    pairs = [
        (theirs.attention.q_proj.weight, q),
        (theirs.attention.q_proj.bias, bq),
        (theirs.attention.k_proj.weight, k),
        (theirs.attention.k_proj.bias, bk),
        (theirs.attention.v_proj.weight, v),
        (theirs.attention.v_proj.bias, bv),
        (theirs.attention.o_proj.weight, swin_block.attn.attn.out_proj.weight),
        (theirs.attention.o_proj.bias, swin_block.attn.attn.out_proj.bias),
        (
            theirs.attention.relative_position_bias.relative_position_bias_table,
            swin_block.attn.relative_position_bias_table,
        ),
        (theirs.layernorm_before.weight, swin_block.norm1.weight),
        (theirs.layernorm_before.bias, swin_block.norm1.bias),
        (theirs.layernorm_after.weight, swin_block.norm2.weight),
        (theirs.layernorm_after.bias, swin_block.norm2.bias),
        (theirs.mlp.fc1.weight, swin_block.ff.linear1.weight),
        (theirs.mlp.fc1.bias, swin_block.ff.linear1.bias),
        (theirs.mlp.fc2.weight, swin_block.ff.linear2.weight),
        (theirs.mlp.fc2.bias, swin_block.ff.linear2.bias),
    ]
    with torch.no_grad():
        for target, source in pairs:
            target.copy_(source)
    return theirs


@pytest.mark.parametrize(("H", "W", "shift"), [(8, 8, 0), (8, 8, 2), (8, 12, 1)])
def test_swin_block_equals_hugging_face_swin_layer(H: int, W: int, shift: int) -> None:
    swin_block = block(16, 4, window=4, shift=shift)
    theirs = hf_layer_from(swin_block, H, W)
    x = random_grid(2, H, W, 16, seed=4)
    with torch.no_grad():
        expected = theirs(x.reshape(2, H * W, 16), (H, W))[0].view(2, H, W, 16)
        # Hugging Face's eager attention takes the softmax in float32 (and masks with -100, not
        # -inf): agreement to float32 precision.
        torch.testing.assert_close(swin_block(x), expected, rtol=1e-5, atol=1e-6)


def test_patch_merging_equals_direct_gather_and_hugging_face() -> None:
    torch.manual_seed(0)
    merge = PatchMerging(3).double()
    with torch.no_grad():
        merge.norm.weight.add_(torch.randn(12, dtype=torch.float64))
        merge.norm.bias.add_(torch.randn(12, dtype=torch.float64))
    x = random_grid(2, 4, 6, 3, seed=5)
    out = merge(x)
    assert out.shape == (2, 2, 3, 6)
    gathered = torch.empty(2, 2, 3, 12, dtype=torch.float64)
    for i in range(2):
        for j in range(3):
            neighbours = [x[:, 2 * i, 2 * j], x[:, 2 * i + 1, 2 * j]]
            neighbours += [x[:, 2 * i, 2 * j + 1], x[:, 2 * i + 1, 2 * j + 1]]
            gathered[:, i, j] = torch.cat(neighbours, dim=-1)
    with torch.no_grad():
        expected = merge.reduction(
            F.layer_norm(gathered, (12,), merge.norm.weight, merge.norm.bias)
        )
        torch.testing.assert_close(out, expected)
        theirs = hf_swin.SwinPatchMerging(3).double()
        theirs.load_state_dict(merge.state_dict())
        torch.testing.assert_close(out, theirs(x.reshape(2, 24, 3), (4, 6)).view(2, 2, 3, 6))


# --- Information flow ------------------------------------------------------------------------


def input_gradient(blocks: list[SwinBlock], row: int, col: int) -> torch.Tensor:
    """|d out[row, col] / d x| summed over channels, for every input token: (H, W)."""
    x = random_grid(1, 8, 8, 8, seed=6).requires_grad_(True)
    out = x
    for b in blocks:
        out = b(out)
    out[0, row, col].sum().backward()
    return x.grad[0].abs().sum(dim=-1)  # (H, W)


def test_plain_windows_do_not_exchange_information() -> None:
    grad = input_gradient([block(8, 2, 4, 0, seed=0), block(8, 2, 4, 0, seed=1)], 1, 1)
    assert (grad[:4, :4] > 0).all()  # its own window: every token counts
    assert (grad[4:, :] == 0).all() and (grad[:, 4:] == 0).all()  # other windows: exactly 0


def test_shifted_block_carries_information_across_window_borders() -> None:
    grad = input_gradient([block(8, 2, 4, 0, seed=0), block(8, 2, 4, 2, seed=1)], 3, 3)
    assert (grad[4:, 4:] > 0).all()  # the diagonal neighbour window reaches (3, 3) ...
    assert (grad[:4, 4:] > 0).any() and (grad[4:, :4] > 0).any()
    # ... and one shifted block alone reaches exactly the shifted window around (3, 3)
    grad = input_gradient([block(8, 2, 4, 2)], 3, 3)
    assert (grad[2:6, 2:6] > 0).all()
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[2:6, 2:6] = False
    assert (grad[outside] == 0).all()


def test_shift_mask_keeps_wrapped_around_tokens_apart() -> None:
    # After the roll, (0, 0) and (7, 7) sit in the same window; the mask must keep them apart.
    grad = input_gradient([block(8, 2, 4, 2)], 7, 7)
    assert grad[7, 7] > 0 and grad[6, 6] > 0
    assert grad[0, 0] == 0 and grad[0, 7] == 0 and grad[7, 0] == 0


# --- The model -------------------------------------------------------------------------------


def test_swin_shapes_parameters_and_determinism() -> None:
    config = SwinConfig()
    assert config.grids == (4, 2) and config.widths == (28, 56)
    assert [config.stage_window(s) for s in (0, 1)] == [2, 2]
    assert [config.stage_shift(s) for s in (0, 1)] == [1, 0]  # one window covers stage 1
    big = SwinConfig(image_size=32, patch_size=1, window=4, depths=(2, 2, 2), n_heads=(1, 2, 4))
    assert big.grids == (32, 16, 8) and [big.stage_shift(s) for s in range(3)] == [2, 2, 2]
    small = SwinConfig(image_size=8, patch_size=1, window=8, depths=(1, 1), n_heads=(1, 1))
    assert [small.stage_window(s) for s in (0, 1)] == [8, 4]  # clipped to the 4 x 4 grid
    torch.manual_seed(0)
    model = Swin(config)
    assert sum(p.numel() for p in model.parameters()) == 72_050
    assert [b.shift for b in model.stages[0]] == [0, 1]
    images = torch.rand(3, 1, 8, 8)
    torch.manual_seed(0)
    again = Swin(config)
    torch.testing.assert_close(model(images), again(images), rtol=0, atol=0)
    assert model(images).shape == (3, 10)
    model(images).sum().backward()  # every parameter, the bias tables included, gets a gradient
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# --- Errors at the boundary ------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors() -> None:
    x = random_grid(1, 8, 8, 4)
    with pytest.raises(ValueError, match="does not divide into windows"):
        window_partition(random_grid(1, 8, 6, 4), 4)
    with pytest.raises(ValueError, match="batch, height, width, channels"):
        window_partition(x[0], 4)
    with pytest.raises(TypeError, match="torch.Tensor"):
        window_partition(x.numpy(), 4)
    with pytest.raises(ValueError, match="window must be an int"):
        window_partition(x, 0)
    with pytest.raises(ValueError, match="expected \\(B \\* 4"):
        window_reverse(window_partition(x, 4)[:3], 4, 8, 8)
    with pytest.raises(ValueError, match="shift must be smaller"):
        shifted_window_mask(8, 8, 4, 4)
    with pytest.raises(ValueError, match="shift must be smaller"):
        SwinBlock(4, 2, window=4, shift=5)
    with pytest.raises(ValueError, match="does not divide into windows"):
        SwinBlock(4, 2, window=4, shift=2)(random_grid(1, 8, 6, 4).float())
    with pytest.raises(ValueError, match="expected 4 channels"):
        SwinBlock(4, 2, window=4)(random_grid(1, 8, 8, 3).float())
    with pytest.raises(ValueError, match="even grid"):
        PatchMerging(4)(random_grid(1, 5, 4, 4).float())
    with pytest.raises(ValueError, match="windows: expected"):
        WindowAttention(4, 2, window=4)(torch.randn(2, 9, 4))
    with pytest.raises(ValueError, match="does not divide into windows"):
        SwinConfig(image_size=12, patch_size=1, window=8)
    with pytest.raises(ValueError, match="one entry per stage"):
        SwinConfig(depths=(2, 2), n_heads=(2,))
    with pytest.raises(ValueError, match="must divide by"):
        SwinConfig(n_heads=(3, 4))
    with pytest.raises(ValueError, match="even grid"):
        SwinConfig(image_size=12, patch_size=4, window=3, depths=(1, 1), n_heads=(1, 1))
    with pytest.raises(ValueError, match="images: expected"):
        Swin(SwinConfig())(torch.rand(2, 1, 7, 7))
