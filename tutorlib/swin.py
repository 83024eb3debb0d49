"""Shifted windows: the Swin Transformer (Liu et al., 2021), a hierarchical vision transformer.

A ViT lets every patch attend to every other, so a layer costs O(N^2) in the number of patches
N. Swin cuts the grid of patch tokens into non-overlapping windows of w x w tokens and lets
attention act inside each window only (W-MSA): the cost is linear in N. To connect the windows,
every second block first rolls the grid by half a window up and left (`cyclic_shift`), so that
its windows straddle the old window borders (SW-MSA); a mask (`shifted_window_mask`) keeps apart
the tokens that the roll brought together from opposite edges of the image, and the grid is
rolled back afterwards. Attention inside a window adds a learned bias per head that depends on
the relative offset of the two tokens (`relative_position_index`). Between stages,
`PatchMerging` concatenates each 2 x 2 group of neighbours and maps 4C to 2C: the grid halves,
the width doubles, as in a CNN's feature pyramid.

Layout: grids of tokens are (B, H, W, C) tensors, channels last, H and W counted in patches.
Parameter layouts follow Hugging Face's `transformers.models.swin` so weights copy across (see
tests/test_swin.py); the attention itself is tutorlib's `MultiHeadAttention`.

Book: 5.6 Shifted windows: a hierarchical ViT.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tutorlib.attention import MultiHeadAttention
from tutorlib.layers import FeedForward, LayerNorm
from tutorlib.vision import PatchEmbedding

__all__ = [
    "PatchMerging",
    "Swin",
    "SwinBlock",
    "SwinConfig",
    "WindowAttention",
    "cyclic_shift",
    "relative_position_index",
    "shifted_window_mask",
    "window_partition",
    "window_reverse",
]


# --- Windows --------------------------------------------------------------------------------


def _check_int(value: int, name: str, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_grid(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"{name}: expected a grid of tokens (batch, height, width, channels), got shape "
            f"{tuple(x.shape)}"
        )


def _check_window(height: int, width: int, window: int, shift: int = 0) -> None:
    _check_int(window, "window", 1)
    _check_int(shift, "shift", 0)
    if height % window or width % window:
        raise ValueError(
            f"a grid of {height} x {width} tokens does not divide into windows of "
            f"{window} x {window}: pad the grid or choose a window that divides both sides"
        )
    if shift >= window:
        raise ValueError(f"shift must be smaller than the window ({window}), got {shift}")


def window_partition(x: Tensor, window: int) -> Tensor:
    """Cut a grid of tokens into non-overlapping window x window windows, each flattened row
    by row into a sequence of window^2 tokens. Windows are ordered by image, then row by row.

    Shapes:
        x (B, H, W, C), H and W divisible by window  ->  (B * nW, window^2, C),
        nW = (H / window) * (W / window)

    Book: 5.6 Shifted windows: a hierarchical ViT.
    """
    _check_grid(x)
    B, H, W, C = x.shape
    _check_window(H, W, window)
    w = window
    x = x.view(B, H // w, w, W // w, w, C)  # (B, H/w, w, W/w, w, C)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (B, H/w, W/w, w, w, C)
    return x.reshape(B * (H // w) * (W // w), w * w, C)  # (B * nW, w*w, C)


def window_reverse(windows: Tensor, window: int, height: int, width: int) -> Tensor:
    """The inverse of `window_partition`: put every window back in its place in the grid.

    Shapes:
        windows (B * nW, window^2, C)  ->  (B, height, width, C)

    Book: 5.6 Shifted windows: a hierarchical ViT.
    """
    if not isinstance(windows, Tensor) or windows.dim() != 3:
        shape = tuple(windows.shape) if isinstance(windows, Tensor) else type(windows).__name__
        raise ValueError(f"windows: expected (batch * windows, window^2, channels), got {shape}")
    _check_int(height, "height", 1)
    _check_int(width, "width", 1)
    _check_window(height, width, window)
    w = window
    n_windows = (height // w) * (width // w)
    if windows.shape[1] != w * w or windows.shape[0] % n_windows:
        raise ValueError(
            f"windows: expected (B * {n_windows}, {w * w}, C) for a {height} x {width} grid, "
            f"got {tuple(windows.shape)}"
        )
    B, C = windows.shape[0] // n_windows, windows.shape[2]
    x = windows.view(B, height // w, width // w, w, w, C)  # (B, H/w, W/w, w, w, C)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (B, H/w, w, W/w, w, C)
    return x.reshape(B, height, width, C)  # (B, H, W, C)


def cyclic_shift(x: Tensor, shift: int) -> Tensor:
    """Roll a grid of tokens `shift` places up and `shift` places left, with wrap-around
    (`torch.roll`): the token at (i, j) moves to (i - shift, j - shift) mod (H, W).
    `cyclic_shift(x, -shift)` undoes it.

    Shapes:
        x (B, H, W, C)  ->  (B, H, W, C)

    Book: 5.6 Shifted windows: a hierarchical ViT.
    """
    _check_grid(x)
    if not isinstance(shift, int) or isinstance(shift, bool):
        raise ValueError(f"shift must be an int, got {shift!r}")
    return torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))  # (B, H, W, C)


def _axis_regions(size: int, window: int, shift: int, device: torch.device | str | None) -> Tensor:
    """Label the positions of one axis of a rolled grid by the region of the image they came
    from: 0 for the bulk, 1 for the last window's first part, 2 for the wrapped-around strip."""
    index = torch.arange(size, device=device)
    return (index >= size - window).long() + (index >= size - shift).long()  # (size,)


def shifted_window_mask(
    height: int,
    width: int,
    window: int,
    shift: int,
    device: torch.device | str | None = None,
) -> Tensor:
    """Which pairs of tokens in each window of a rolled grid may attend to each other.

    After `cyclic_shift` by `shift`, the last window of each row (and column) holds tokens from
    two places of the image: the end of the row and the strip of width `shift` that wrapped
    around from its start. They are not neighbours, so they must not attend to each other.
    Every rolled position gets a region label (3 per axis, 9 in all); a pair may attend when
    both tokens carry the same label. With shift 0 every pair may attend.

    Shapes:
        returns (nW, window^2, window^2) bool, True = may attend, nW = (H / w) (W / w);
        the diagonal is always True, so no row is fully masked

    Book: 5.6 Shifted windows: a hierarchical ViT.
    """
    _check_int(height, "height", 1)
    _check_int(width, "width", 1)
    _check_window(height, width, window, shift)
    if shift == 0:
        n_windows = (height // window) * (width // window)
        return torch.ones(n_windows, window**2, window**2, dtype=torch.bool, device=device)
    rows = _axis_regions(height, window, shift, device)  # (H,)
    cols = _axis_regions(width, window, shift, device)  # (W,)
    labels = (3 * rows[:, None] + cols[None, :])[None, :, :, None]  # (1, H, W, 1)
    labels = window_partition(labels, window)[..., 0]  # (nW, w*w)
    return labels[:, :, None] == labels[:, None, :]  # (nW, w*w, w*w)


def relative_position_index(window: int, device: torch.device | str | None = None) -> Tensor:
    """For every pair of tokens (i, j) of a window, the row of the relative position bias table
    for their offset (dy, dx) = position(i) - position(j), each in [-(w - 1), w - 1]:
    (dy + w - 1) * (2w - 1) + (dx + w - 1). Tokens are numbered row by row, as in
    `window_partition`; the layout is that of Swin and of Hugging Face's Swin.

    Shapes:
        returns (w^2, w^2) int64 with values in [0, (2w - 1)^2)

    Book: 5.6 Shifted windows: a hierarchical ViT.
    """
    _check_int(window, "window", 1)
    coords = torch.arange(window, device=device)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")  # (w, w) each
    ys, xs = ys.flatten(), xs.flatten()  # (w*w,)
    dy = ys[:, None] - ys[None, :] + window - 1  # (w*w, w*w), in [0, 2w - 2]
    dx = xs[:, None] - xs[None, :] + window - 1
    return dy * (2 * window - 1) + dx  # (w*w, w*w)


# --- Attention in windows -------------------------------------------------------------------


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with Swin's relative position bias.

    The scores of head h for tokens i and j of a window get a learned bias
    B[h, i, j] = table[relative_position_index(w)[i, j], h], from a table of (2w - 1)^2 rows
    (one per offset) and n_heads columns; the bias and the optional mask go into
    `MultiHeadAttention` as one additive float mask (-inf where the mask is False).

    Shapes:
        windows (B * nW, w^2, C); mask (nW, w^2, w^2) bool, True = may attend, or None
        ->  (B * nW, w^2, C)

    Book: 5.6 Shifted windows: a hierarchical ViT.
    """

    def __init__(self, d_model: int, n_heads: int, window: int, dropout: float = 0.0) -> None:
        super().__init__()
        _check_int(window, "window", 1)
        self.window, self.n_heads = window, n_heads
        self.attn = MultiHeadAttention(d_model, n_heads, dropout)
        table = 0.02 * torch.randn((2 * window - 1) ** 2, n_heads)  # ((2w-1)^2, H)
        self.relative_position_bias_table = nn.Parameter(table)
        index = relative_position_index(window)
        self.register_buffer("relative_position_index", index, persistent=False)

    def position_bias(self) -> Tensor:
        """The bias every window adds to its scores: (H, w^2, w^2)."""
        T = self.window**2
        index = self.relative_position_index.flatten()  # (T^2,), many repeats of each offset
        bias = F.embedding(index, self.relative_position_bias_table)  # table[index], (T^2, H),
        # with a backward that sums the repeats in a fixed order (see TokenEmbedding)
        return bias.view(T, T, self.n_heads).permute(2, 0, 1)  # (H, T, T)

    def forward(self, windows: Tensor, mask: Tensor | None = None) -> Tensor:
        T = self.window**2
        if windows.dim() != 3 or windows.shape[1] != T:
            raise ValueError(
                f"windows: expected (batch * windows, {T}, d_model), got {tuple(windows.shape)}"
            )
        bias = self.position_bias()  # (H, T, T)
        if mask is None:
            scores_bias = bias.unsqueeze(0)  # (1, H, T, T): the same for every window
        else:
            n_windows = mask.shape[0]
            if mask.dtype != torch.bool or mask.shape != (n_windows, T, T):
                raise ValueError(
                    f"mask: expected bool (windows, {T}, {T}), got {mask.dtype} {tuple(mask.shape)}"
                )
            if windows.shape[0] % n_windows:
                raise ValueError(
                    f"{windows.shape[0]} windows is not a whole number of images of "
                    f"{n_windows} windows"
                )
            B = windows.shape[0] // n_windows
            scores_bias = bias.masked_fill(~mask[:, None], float("-inf"))  # (nW, H, T, T)
            scores_bias = scores_bias.expand(B, -1, -1, -1, -1).flatten(0, 1)  # (B*nW, H, T, T)
        out, _ = self.attn(windows, windows, windows, attn_mask=scores_bias)
        return out  # (B * nW, T, C)


class SwinBlock(nn.Module):
    """One Swin block, pre-norm as in the paper:
        x = x + (S)W-MSA(norm1(x));  x = x + MLP(norm2(x))
    With shift 0 the attention acts in the regular windows (W-MSA); with shift > 0 the grid
    is rolled by `shift` before the windows are cut, attends under `shifted_window_mask`, and
    is rolled back (SW-MSA). The MLP is `FeedForward` with exact GELU.

    Parameter names follow tutorlib's `EncoderLayer` (norm1, norm2, ff); tests/test_swin.py
    copies the weights into Hugging Face's `SwinLayer` and compares the outputs.

    Shapes:
        x (B, H, W, C), H and W divisible by window  ->  (B, H, W, C)

    Book: 5.6 Shifted windows: a hierarchical ViT.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        window: int,
        shift: int = 0,
        d_ff: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_int(window, "window", 1)
        _check_int(shift, "shift", 0)
        if shift >= window:
            raise ValueError(f"shift must be smaller than the window ({window}), got {shift}")
        self.d_model, self.window, self.shift = d_model, window, shift
        self.norm1 = LayerNorm(d_model)
        self.attn = WindowAttention(d_model, n_heads, window, dropout)
        self.norm2 = LayerNorm(d_model)
        self.ff = FeedForward(d_model, 4 * d_model if d_ff is None else d_ff, dropout, "gelu")
        self.dropout = nn.Dropout(dropout)

    def attention(self, x: Tensor) -> Tensor:
        """The (shifted) window attention on a normalised grid: (B, H, W, C) -> (B, H, W, C)."""
        B, H, W, C = x.shape
        mask = None
        if self.shift:
            x = cyclic_shift(x, self.shift)  # (B, H, W, C), rolled up and left
            mask = shifted_window_mask(H, W, self.window, self.shift, x.device)  # (nW, T, T)
        windows = window_partition(x, self.window)  # (B * nW, w*w, C)
        windows = self.attn(windows, mask)  # (B * nW, w*w, C)
        x = window_reverse(windows, self.window, H, W)  # (B, H, W, C)
        return cyclic_shift(x, -self.shift) if self.shift else x  # rolled back

    def forward(self, x: Tensor) -> Tensor:
        _check_grid(x)
        B, H, W, C = x.shape
        if C != self.d_model:
            raise ValueError(f"x: expected {self.d_model} channels, got {tuple(x.shape)}")
        _check_window(H, W, self.window, self.shift)
        x = x + self.dropout(self.attention(self.norm1(x)))
        return x + self.dropout(self.ff(self.norm2(x)))  # (B, H, W, C)


class PatchMerging(nn.Module):
    """Halve the grid and double the width: concatenate each 2 x 2 group of neighbouring tokens
    (in the order top-left, bottom-left, top-right, bottom-right, as Swin and Hugging Face),
    normalise the 4C vector and map it to 2C with a linear map without bias.

    Shapes:
        x (B, H, W, C), H and W even  ->  (B, H/2, W/2, 2C)

    Book: 5.6 Shifted windows: a hierarchical ViT.
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.norm = LayerNorm(4 * d_model)
        self.reduction = nn.Linear(4 * d_model, 2 * d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        _check_grid(x)
        B, H, W, C = x.shape
        if C != self.d_model:
            raise ValueError(f"x: expected {self.d_model} channels, got {tuple(x.shape)}")
        if H % 2 or W % 2:
            raise ValueError(f"patch merging needs an even grid, got {H} x {W}: pad it first")
        x = torch.cat(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1
        )  # (B, H/2, W/2, 4C)
        return self.reduction(self.norm(x))  # (B, H/2, W/2, 2C)


# --- The model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SwinConfig:
    """The sizes and choices of a small Swin classifier."""

    image_size: int = 8  # height = width of the input images, in pixels
    patch_size: int = 2  # P: side of a square patch; image_size must divide by it
    channels: int = 1  # C of the input images
    n_classes: int = 10  # outputs of the classification head
    d_model: int = 28  # width of the first stage; each later stage doubles it
    depths: tuple[int, ...] = (2, 2)  # Swin blocks per stage; a patch merging between stages
    n_heads: tuple[int, ...] = (2, 4)  # attention heads per stage
    window: int = 2  # w: side of a window in tokens (clipped to the grid where it is smaller)
    mlp_ratio: int = 2  # d_ff = mlp_ratio * the stage's width (the paper uses 4)
    dropout: float = 0.0  # on attention weights and residual branches

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "channels", "n_classes", "d_model", "window"):
            _check_int(getattr(self, name), name, 1)
        _check_int(self.mlp_ratio, "mlp_ratio", 1)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}"
            )
        if not self.depths or len(self.depths) != len(self.n_heads):
            raise ValueError(
                f"depths {self.depths} and n_heads {self.n_heads} need one entry per stage"
            )
        for stage, (width, heads) in enumerate(zip(self.widths, self.n_heads, strict=True)):
            _check_int(self.depths[stage], f"depths[{stage}]", 1)
            _check_int(heads, f"n_heads[{stage}]", 1)
            if width % heads:
                raise ValueError(f"stage {stage}: width {width} must divide by {heads} heads")
            side, window = self.grids[stage], self.stage_window(stage)
            if side % window:
                raise ValueError(
                    f"stage {stage}: a grid of {side} x {side} does not divide into windows "
                    f"of {window}"
                )
            if stage + 1 < len(self.depths) and side % 2:
                raise ValueError(f"stage {stage}: patch merging needs an even grid, got {side}")

    @property
    def widths(self) -> tuple[int, ...]:
        """Token width per stage: d_model, 2 d_model, 4 d_model, ..."""
        return tuple(self.d_model * 2**s for s in range(len(self.depths)))

    @property
    def grids(self) -> tuple[int, ...]:
        """Tokens per side per stage: image_size / patch_size, halved by each merging."""
        return tuple(self.image_size // self.patch_size // 2**s for s in range(len(self.depths)))

    def stage_window(self, stage: int) -> int:
        """The window of a stage: `window`, or the whole grid where the grid is smaller."""
        return min(self.window, self.grids[stage])

    def stage_shift(self, stage: int) -> int:
        """The shift of the odd blocks of a stage: half a window, or 0 where one window covers
        the grid (there is nothing to connect; Swin and Hugging Face do the same)."""
        window = self.stage_window(stage)
        return 0 if window == self.grids[stage] else window // 2


class Swin(nn.Module):
    """A small Swin Transformer (Liu et al., 2021) for classification.

    Patch embedding and a layer norm; stages of Swin blocks that alternate regular (even
    blocks) and shifted (odd blocks) windows, with a `PatchMerging` between stages; a final
    layer norm, the mean over the tokens and a linear head. Positions enter only through the
    relative position bias of each window (no absolute position vectors: the paper's default).

    Shapes:
        images (B, C, H, W)  ->  logits (B, n_classes)

    Book: 5.6 Shifted windows: a hierarchical ViT.
    """

    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        self.config = c = config
        self.patch_embed = PatchEmbedding(c.channels, c.patch_size, c.d_model)
        self.embed_norm = LayerNorm(c.d_model)
        self.stages = nn.ModuleList()
        self.merges = nn.ModuleList()
        for s, (depth, heads, width) in enumerate(zip(c.depths, c.n_heads, c.widths, strict=True)):
            window, shift = c.stage_window(s), c.stage_shift(s)
            blocks = [
                SwinBlock(
                    width, heads, window, shift if b % 2 else 0, c.mlp_ratio * width, c.dropout
                )
                for b in range(depth)
            ]
            self.stages.append(nn.ModuleList(blocks))
            if s + 1 < len(c.depths):
                self.merges.append(PatchMerging(width))
        self.norm = LayerNorm(c.widths[-1])
        self.head = nn.Linear(c.widths[-1], c.n_classes)

    def features(self, images: Tensor) -> Tensor:
        """The pooled, normalised representation of each image: (B, widths[-1])."""
        c = self.config
        if images.dim() != 4 or tuple(images.shape[1:]) != (c.channels, c.image_size, c.image_size):
            raise ValueError(
                f"images: expected (batch, {c.channels}, {c.image_size}, {c.image_size}), got "
                f"{tuple(images.shape)}"
            )
        side = c.grids[0]
        x = self.embed_norm(self.patch_embed(images))  # (B, N, C)
        x = x.view(x.shape[0], side, side, c.d_model)  # (B, H/P, W/P, C)
        for s, blocks in enumerate(self.stages):
            for block in blocks:
                x = block(x)
            if s < len(self.merges):
                x = self.merges[s](x)  # (B, H/2, W/2, 2C)
        return self.norm(x).mean(dim=(1, 2))  # (B, C_last)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))  # (B, n_classes)
