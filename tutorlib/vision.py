"""Vision transformers: images as sequences of patches.

An image (C, H, W) is cut into N = (H / P) (W / P) square patches of P x P pixels, read row
by row; each patch, flattened, is one token. `PatchEmbedding` maps the tokens to d_model (a
linear map, the same as a convolution with kernel and stride P); the `ViT` prepends a learned
class token, adds learned positions and runs the pre-norm encoder layers of Chapter 1.
`attention_rollout` follows attention back through the layers to the pixels.

Data: scikit-learn's handwritten digits (1,797 real 8 x 8 images that ship inside the package).

Book: Chapter 5, Vision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tutorlib.layers import EncoderLayer, LayerNorm

__all__ = [
    "DIGIT_NAMES",
    "PatchEmbedding",
    "ViT",
    "ViTConfig",
    "attention_rollout",
    "digit_cnn",
    "digits_data",
    "patchify",
    "unpatchify",
    "vit_attention",
]

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _check_images(images: Tensor, patch_size: int) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(
            f"images: expected (batch, channels, height, width), got "
            f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}"
        )
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point, got {images.dtype}")
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    H, W = images.shape[-2:]
    if H % patch_size or W % patch_size:
        raise ValueError(
            f"image size {H} x {W} is not divisible by patch_size {patch_size}: crop or pad the "
            f"images to a multiple of {patch_size}"
        )


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut images into non-overlapping P x P patches, row by row, each flattened as (C, P, P).

    The flattening order (channel, then row, then column inside the patch) is that of a
    convolution's weight, so that a linear map of the patches equals `nn.Conv2d` with kernel
    and stride P.

    Shapes:
        images (B, C, H, W)  ->  patches (B, N, C * P * P), N = (H / P) * (W / P)

    Book: Chapter 5, Vision (from pixels to tokens).
    """
    _check_images(images, patch_size)
    B, C, H, W = images.shape
    P = patch_size
    x = images.reshape(B, C, H // P, P, W // P, P)  # (B, C, H/P, P, W/P, P)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, H/P, W/P, C, P, P)
    return x.reshape(B, (H // P) * (W // P), C * P * P)  # (B, N, C*P*P)


def unpatchify(patches: Tensor, patch_size: int, channels: int, height: int, width: int) -> Tensor:
    """The inverse of `patchify`: put the patches back in their places.

    Shapes:
        patches (B, N, C * P * P)  ->  images (B, C, H, W)

    Book: Chapter 5, Vision (from pixels to tokens).
    """
    P = patch_size
    if height % P or width % P:
        raise ValueError(f"image size {height} x {width} is not divisible by patch_size {P}")
    rows, cols = height // P, width // P
    if patches.dim() != 3 or patches.shape[1:] != (rows * cols, channels * P * P):
        raise ValueError(
            f"patches: expected (batch, {rows * cols}, {channels * P * P}), got "
            f"{tuple(patches.shape)}"
        )
    B = patches.shape[0]
    x = patches.reshape(B, rows, cols, channels, P, P)  # (B, H/P, W/P, C, P, P)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (B, C, H/P, P, W/P, P)
    return x.reshape(B, channels, height, width)  # (B, C, H, W)


class PatchEmbedding(nn.Module):
    """Patches to vectors: a linear map of each flattened patch, shared by all patches.

    Equal to `nn.Conv2d(channels, d_model, kernel_size=P, stride=P)` followed by flattening the
    output grid row by row, when `proj.weight` is the convolution's weight viewed as
    (d_model, C * P * P) (`conv_weight`).

    Shapes:
        images (B, C, H, W)  ->  (B, N, d_model)

    Book: Chapter 5, Vision (from pixels to tokens).
    """

    def __init__(self, channels: int, patch_size: int, d_model: int) -> None:
        super().__init__()
        self.channels, self.patch_size = channels, patch_size
        self.proj = nn.Linear(channels * patch_size * patch_size, d_model)

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() == 4 and images.shape[1] != self.channels:
            raise ValueError(f"images: expected {self.channels} channels, got {images.shape[1]}")
        return self.proj(patchify(images, self.patch_size))  # (B, N, d_model)

    def conv_weight(self) -> Tensor:
        """The same weight as an `nn.Conv2d` kernel: (d_model, C, P, P)."""
        P = self.patch_size
        return self.proj.weight.reshape(-1, self.channels, P, P)


@dataclass(frozen=True)
class ViTConfig:
    """The sizes and choices of a vision transformer."""

    image_size: int = 8  # height = width of the input images, in pixels
    patch_size: int = 2  # P: side of a square patch; image_size must divide by it
    channels: int = 1  # C of the input (1 for grey, 3 for colour)
    n_classes: int = 10  # outputs of the classification head
    d_model: int = 64  # width of every token's vector
    n_heads: int = 4  # attention heads; d_model must divide by it
    n_layers: int = 4  # pre-norm encoder layers
    d_ff: int = 128  # hidden width of the feed-forward network
    dropout: float = 0.0  # on embeddings, attention weights and residual branches
    pooling: str = "cls"  # "cls": a learned class token is read out; "mean": mean of the patches
    positional: str = "1d"  # "1d": one learned vector per patch; "2d": row vector + column vector

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "channels", "n_classes", "d_model", "n_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}"
            )
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must divide by n_heads={self.n_heads}")
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {self.pooling!r}")
        if self.positional not in ("1d", "2d"):
            raise ValueError(f"positional must be '1d' or '2d', got {self.positional!r}")

    @property
    def grid(self) -> int:
        """Patches per side: image_size / patch_size."""
        return self.image_size // self.patch_size

    @property
    def n_patches(self) -> int:
        """N, the number of patch tokens."""
        return self.grid * self.grid


class ViT(nn.Module):
    """A vision transformer (Dosovitskiy et al., 2021) for classification.

    Patch embedding; a learned class token in front (pooling "cls"); learned positions (one
    vector per patch, or a row vector plus a column vector with positional "2d"); pre-norm
    `EncoderLayer`s; a final layer norm; a linear head on the class token (or on the mean of
    the patch tokens).

    Two documented departures from the paper: the class token gets no position vector of its
    own (the paper adds E_pos[0] to it, but a learned token plus a learned vector is one learned
    vector written twice, so the two are equivalent); and the "2d" positions add a row vector
    and a column vector of full width, where the paper concatenates two of half width (a
    special case of the sum).

    Shapes:
        images (B, C, H, W)  ->  logits (B, n_classes)

    Book: Chapter 5, Vision (training a ViT).
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.patch_embed = PatchEmbedding(c.channels, c.patch_size, c.d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.d_model)) if c.pooling == "cls" else None
        if c.positional == "1d":
            self.pos_embed = nn.Parameter(0.02 * torch.randn(1, c.n_patches, c.d_model))
        else:
            self.row_embed = nn.Parameter(0.02 * torch.randn(c.grid, 1, c.d_model))
            self.col_embed = nn.Parameter(0.02 * torch.randn(1, c.grid, c.d_model))
        self.dropout = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(c.d_model, c.n_heads, c.d_ff, c.dropout, "gelu", norm_first=True)
            for _ in range(c.n_layers)
        )
        self.norm = LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.n_classes)

    def positions(self) -> Tensor:
        """The position vector of every patch, row by row: (N, d_model)."""
        if self.config.positional == "1d":
            return self.pos_embed[0]
        return (self.row_embed + self.col_embed).reshape(-1, self.config.d_model)  # (N, C)

    def tokens(self, images: Tensor) -> Tensor:
        """The input sequence of the encoder: (B, 1 + N, d_model) with a class token, else
        (B, N, d_model). Positions go on the patches; the class token has none."""
        x = self.patch_embed(images) + self.positions()  # (B, N, C)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1+N, C)
        return self.dropout(x)

    def features(self, images: Tensor) -> Tensor:
        """The pooled, normalised representation of each image: (B, d_model)."""
        size = self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (self.config.channels, size, size):
            raise ValueError(
                f"images: expected (batch, {self.config.channels}, {size}, {size}), got "
                f"{tuple(images.shape)}"
            )
        x = self.tokens(images)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)  # (B, 1+N, C) or (B, N, C)
        return x[:, 0] if self.cls_token is not None else x.mean(dim=1)  # (B, C)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))  # (B, n_classes)


@torch.no_grad()
def vit_attention(model: ViT, images: Tensor) -> list[Tensor]:
    """The attention weights of every layer of `model` on `images` (eval mode, no dropout).

    Runs the same computation as `model.features`, asking each layer's attention for its
    weights; the tests check that it reproduces the model's output.

    Shapes:
        images (B, C, H, W)  ->  a list of n_layers tensors (B, H_heads, S, S), S = 1 + N with a
        class token (else N); each row sums to 1

    Book: Chapter 5, Vision (what a ViT looks at).
    """
    was_training = model.training
    model.eval()
    try:
        x, weights = model.tokens(images), []
        for layer in model.layers:
            h = layer.norm1(x)
            attended, w = layer.self_attn(h, h, h, need_weights=True, average_attn_weights=False)
            weights.append(w)  # (B, H, S, S)
            x = x + attended
            x = x + layer.ff(layer.norm2(x))
    finally:
        model.train(was_training)
    return weights


def attention_rollout(attentions: list[Tensor], residual: bool = True) -> Tensor:
    """Attention rollout (Abnar and Zuidema, 2020): how much each output token draws on each
    input token, through all the layers.

    Each layer's weights are averaged over the heads; with `residual`, the skip connection is
    accounted for as 0.5 A + 0.5 I (rows renormalised); the layers' matrices are multiplied
    from the first to the last. Row 0 of the result, for a ViT with a class token, says how
    much the class token's output draws on each patch.

    Shapes:
        attentions: list of (B, H, S, S)  ->  (B, S, S), rows summing to 1

    Book: Chapter 5, Vision (what a ViT looks at).
    """
    if not attentions:
        raise ValueError("attentions is empty: pass one (B, H, S, S) tensor per layer")
    rollout = None
    for a in attentions:
        if a.dim() != 4 or a.shape[-1] != a.shape[-2]:
            raise ValueError(f"each attention must be (B, H, S, S), got {tuple(a.shape)}")
        a = a.mean(dim=1)  # (B, S, S): average over the heads
        if residual:
            a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
            a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout  # later layers act on earlier mixtures
    return rollout


def digit_cnn(channels: tuple[int, int, int] = (32, 64, 64), n_classes: int = 10) -> nn.Sequential:
    """The small convolutional network of page 5.2 for 8 x 8 grey digits: three 3 x 3
    convolutions with GELU, a 2 x 2 max-pool after the second, the mean over positions and a
    linear head. Locality and weight sharing are built in (LeCun et al., 1998).

    With the default channels it has 56,394 parameters; Chapter 6 uses it, narrower, to judge
    generated digits.

    Shapes:
        images (B, 1, H, W), H and W even  ->  logits (B, n_classes)

    Book: Chapter 5, Vision (a ViT on the digits: the CNN baseline); 6.4 Generating images.
    """
    if len(channels) != 3 or not all(isinstance(c, int) and c >= 1 for c in channels):
        raise ValueError(f"channels must be three positive ints, got {channels!r}")
    if not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")
    c1, c2, c3 = channels
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.GELU(),  # (B, c1, H, W)
        nn.Conv2d(c1, c2, 3, padding=1), nn.GELU(),  # (B, c2, H, W)
        nn.MaxPool2d(2),  # (B, c2, H/2, W/2)
        nn.Conv2d(c2, c3, 3, padding=1), nn.GELU(),  # (B, c3, H/2, W/2)
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (B, c3)
        nn.Linear(c3, n_classes),
    )  # fmt: skip


def digits_data(
    test_fraction: float = 0.25, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's handwritten digits as float images in [0, 1], split at random (seeded)
    into a training and a test set.

    Shapes:
        returns train_images (N_train, 1, 8, 8), train_labels (N_train,) int64,
        test_images (N_test, 1, 8, 8), test_labels (N_test,)

    Book: Chapter 5, Vision.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(labels))
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]
