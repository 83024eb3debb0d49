"""Images as token sequences: generating digits one pixel at a time, or a few pixels at a time.

A grey image in [0, 1] is quantised to `levels` grey levels; each pixel's level is a token id
(0 .. levels - 1). The pixels are read in raster order (row by row, left to right) and a
class token goes in front: class c has the id levels + c. A decoder-only model trained with
the causal LM loss on these sequences learns p(pixel_i | class, pixels before i) (PixelRNN,
the Image Transformer, Image GPT); `sample_digits` draws a new digit of a chosen class.

The masked variant (MaskGIT, Chang et al. 2022) reads the same sequences with a bidirectional
encoder: `mask_pixels` hides a random share of the pixels behind a mask id, the model fills
them in, and `maskgit_sample` writes a whole image in a few rounds, keeping the pixels it is
surest of in each.

Book: 6.4 Generating images one pixel at a time.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tutorlib.generation import sample_next
from tutorlib.inference import KVCache, decode_step
from tutorlib.models import DecoderOnly, EncoderOnly

__all__ = [
    "dequantise",
    "images_to_sequences",
    "mask_pixels",
    "maskgit_sample",
    "quantise",
    "sample_digits",
    "sequences_to_images",
]


def _check_levels(levels: int) -> None:
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 2:
        raise ValueError(f"levels must be an int >= 2, got {levels!r}")


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 1:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images: expected grey images (batch, 1, height, width), got {got}")


def _check_labels(labels: Tensor, n_classes: int, batch: int | None = None) -> None:
    shape_ok = isinstance(labels, Tensor) and labels.dim() == 1
    if batch is not None and shape_ok:
        shape_ok = len(labels) == batch
    if not shape_ok or labels.dtype != torch.long:
        got = (
            f"{labels.dtype} {tuple(labels.shape)}"
            if isinstance(labels, Tensor)
            else type(labels).__name__
        )
        expected = f"({batch},)" if batch is not None else "(batch,)"
        raise ValueError(f"labels: expected int64 class ids of shape {expected}, got {got}")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"labels must lie in [0, {n_classes}), got {labels.min().item()}..{labels.max().item()}"
        )


def quantise(images: Tensor, levels: int) -> Tensor:
    """Round grey values in [0, 1] to the nearest of `levels` evenly spaced levels.

    Level k stands for the grey value k / (levels - 1): 0 is white paper, levels - 1 full ink.

    Shapes:
        images (B, 1, H, W) float in [0, 1]  ->  (B, 1, H, W) int64 in [0, levels)

    Book: 6.4 Generating images one pixel at a time.
    """
    _check_levels(levels)
    _check_images(images)
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point in [0, 1], got {images.dtype}")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError(
            f"images must lie in [0, 1] (digits_data divides the 0-16 grey values by 16), got "
            f"{images.min().item():.3g}..{images.max().item():.3g}"
        )
    return torch.round(images * (levels - 1)).long()  # (B, 1, H, W)


def dequantise(pixels: Tensor, levels: int) -> Tensor:
    """Grey values in [0, 1] from levels: k -> k / (levels - 1). The inverse of `quantise` on
    images that are already quantised.

    Shapes:
        pixels (B, 1, H, W) int64 in [0, levels)  ->  (B, 1, H, W) float32 in [0, 1]

    Book: 6.4 Generating images one pixel at a time.
    """
    _check_levels(levels)
    _check_images(pixels)
    if pixels.dtype != torch.long:
        raise TypeError(f"pixels must be int64 levels, got {pixels.dtype}")
    if pixels.numel() and (pixels.min() < 0 or pixels.max() >= levels):
        raise ValueError(
            f"pixel levels must lie in [0, {levels}), got "
            f"{pixels.min().item()}..{pixels.max().item()}"
        )
    return pixels.float() / (levels - 1)  # (B, 1, H, W)


def images_to_sequences(images: Tensor, labels: Tensor, levels: int, n_classes: int = 10) -> Tensor:
    """Token sequences of quantised images in raster order, each after its class token.

    Token 0 of each row is the class token levels + label; tokens 1 .. H W are the pixel
    levels, row by row: pixel (r, c) is token 1 + r W + c.

    Shapes:
        images (B, 1, H, W) float in [0, 1]; labels (B,) int64  ->  (B, 1 + H W) int64

    Book: 6.4 Generating images one pixel at a time.
    """
    pixels = quantise(images, levels)  # (B, 1, H, W)
    _check_labels(labels, n_classes, images.shape[0])
    classes = (levels + labels).to(pixels.device)[:, None]  # (B, 1)
    return torch.cat([classes, pixels.flatten(1)], dim=1)  # (B, 1 + H*W)


def sequences_to_images(
    sequences: Tensor, levels: int, height: int = 8, width: int = 8, n_classes: int = 10
) -> tuple[Tensor, Tensor]:
    """The inverse of `images_to_sequences`: grey images in [0, 1] and the class of each row.

    Shapes:
        sequences (B, 1 + H W) int64  ->  images (B, 1, H, W) float32, labels (B,) int64

    Book: 6.4 Generating images one pixel at a time.
    """
    _check_levels(levels)
    if not isinstance(sequences, Tensor) or sequences.dtype != torch.long:
        raise TypeError("sequences must be an int64 tensor of token ids")
    if sequences.dim() != 2 or sequences.shape[1] != 1 + height * width:
        raise ValueError(
            f"sequences: expected (batch, 1 + {height} * {width} = {1 + height * width}), got "
            f"{tuple(sequences.shape)}"
        )
    classes, pixels = sequences[:, 0], sequences[:, 1:]
    if len(classes) and (classes.min() < levels or classes.max() >= levels + n_classes):
        raise ValueError(
            f"token 0 of each sequence must be a class token in [{levels}, "
            f"{levels + n_classes}), got {classes.min().item()}..{classes.max().item()}"
        )
    images = dequantise(pixels.reshape(-1, 1, height, width), levels)  # (B, 1, H, W)
    return images, classes - levels


@torch.no_grad()
def sample_digits(
    model: DecoderOnly,
    labels: Tensor,
    levels: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    height: int = 8,
    width: int = 8,
) -> Tensor:
    """Draw one image per label from a decoder-only pixel model, one pixel at a time.

    The prompt is the class token; each step feeds the newest token through the KV cache
    (`decode_step`) and draws the next pixel with `sample_next` (temperature, then top-k).
    This is `tutorlib.generation.sample` with one change, *constrained decoding*: only the
    first `levels` logits, the pixel ids, are sampled from, so a class token can never be
    written where a pixel belongs. The model is put in eval mode and given back as it came.

    Shapes:
        labels (B,) int64  ->  images (B, 1, height, width) float32 in [0, 1]

    Book: 6.4 Generating images one pixel at a time.
    """
    if not isinstance(model, DecoderOnly):
        raise TypeError(f"model must be a tutorlib DecoderOnly, got {type(model).__name__}")
    _check_levels(levels)
    n_classes = model.config.vocab_size - levels
    if n_classes < 1:
        raise ValueError(f"the model's vocabulary ({model.config.vocab_size}) has no class ids")
    _check_labels(labels, n_classes)
    if top_k is not None and not (isinstance(top_k, int) and 1 <= top_k <= levels):
        raise ValueError(f"top_k must be None or an int in [1, levels={levels}], got {top_k!r}")
    n_pixels = height * width
    if 1 + n_pixels > model.config.context_length:
        raise ValueError(
            f"1 + {height} * {width} tokens exceed the model's context_length "
            f"{model.config.context_length}"
        )
    device = model.output.weight.device
    was_training = model.training
    model.eval()
    try:
        new, cache, pixels = (levels + labels).to(device)[:, None], KVCache(), []  # (B, 1)
        for _ in range(n_pixels):
            logits = decode_step(model, new, cache)[:, -1, :levels]  # (B, levels): pixel ids
            new = sample_next(logits, temperature, top_k, None, generator)[:, None]  # (B, 1)
            pixels.append(new)
    finally:
        model.train(was_training)
    pixels = torch.cat(pixels, dim=1).reshape(-1, 1, height, width)  # (B, 1, H, W)
    return dequantise(pixels, levels)


def _masked_count(n: int, ratio: Tensor) -> Tensor:
    """How many of n pixels a cosine-schedule ratio in [0, 1] masks: ceil(n * ratio), >= 1."""
    return torch.ceil(n * ratio).long().clamp(1, n)


def mask_pixels(
    sequences: Tensor,
    mask_id: int,
    generator: torch.Generator | None = None,
    ignore_index: int = -100,
) -> tuple[Tensor, Tensor]:
    """MaskGIT's training corruption: hide a random share of each sequence's pixels.

    For each row a share cos(pi/2 u), u ~ U(0, 1), of its pixels (at least one) is replaced by
    `mask_id`, at random places; the cosine schedule masks most of the image more often than
    little of it, as generation will need. The class token (position 0) is never masked. The
    labels hold the original pixel where it was masked and `ignore_index` everywhere else, so
    the loss counts only what the model had to fill in.

    Shapes:
        sequences (B, 1 + N) int64  ->  inputs (B, 1 + N), labels (B, 1 + N)

    Book: 6.4 Generating images one pixel at a time (a masked variant).
    """
    if not isinstance(sequences, Tensor) or sequences.dtype != torch.long or sequences.dim() != 2:
        raise ValueError("sequences: expected int64 token ids of shape (batch, 1 + pixels)")
    B, N = sequences.shape[0], sequences.shape[1] - 1
    if N < 1:
        raise ValueError("sequences need a class token and at least one pixel")
    ratio = torch.cos(0.5 * math.pi * torch.rand(B, 1, generator=generator))  # (B, 1)
    scores = torch.rand(B, N, generator=generator)  # (B, N): random order of the pixels
    rank = scores.argsort(dim=1).argsort(dim=1)  # (B, N): each pixel's place in that order
    masked = rank < _masked_count(N, ratio)  # (B, N)
    masked = torch.cat([torch.zeros(B, 1, dtype=torch.bool), masked], dim=1)  # (B, 1 + N)
    masked = masked.to(sequences.device)
    inputs = sequences.masked_fill(masked, mask_id)
    labels = sequences.masked_fill(~masked, ignore_index)
    return inputs, labels


@torch.no_grad()
def maskgit_sample(
    model: EncoderOnly,
    labels: Tensor,
    levels: int,
    mask_id: int,
    steps: int = 8,
    temperature: float = 1.0,
    noise: float = 1.0,
    generator: torch.Generator | None = None,
    height: int = 8,
    width: int = 8,
    rounds: list[Tensor] | None = None,
) -> Tensor:
    """Draw one image per label from a masked pixel model in `steps` rounds (MaskGIT).

    Start from the class token and N = H W mask tokens. In round s (1 .. steps) the model
    predicts every pixel at once; a level is drawn for each masked pixel (`sample_next`, pixel
    ids only), and its confidence is the log-probability of the drawn level plus Gumbel noise
    scaled by noise * (1 - s / steps) (more exploration early, none at the end). Of the pixels
    masked before the round, the floor(N cos(pi/2 s / steps)) least confident stay masked and
    the others keep their drawn level for good; the last round fills everything. Pass a list
    as `rounds` to watch: the tokens (B, 1 + N) after each round are appended to it.

    Shapes:
        labels (B,) int64  ->  images (B, 1, height, width) float32 in [0, 1]

    Book: 6.4 Generating images one pixel at a time (a masked variant).
    """
    if not isinstance(model, EncoderOnly):
        raise TypeError(f"model must be a tutorlib EncoderOnly, got {type(model).__name__}")
    _check_levels(levels)
    if not levels <= mask_id < model.config.vocab_size:
        raise ValueError(
            f"mask_id must be a token id after the pixels, in [{levels}, "
            f"{model.config.vocab_size}), got {mask_id}"
        )
    _check_labels(labels, mask_id - levels)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    N = height * width
    device = model.output.weight.device
    B = len(labels)
    tokens = torch.full((B, 1 + N), mask_id, dtype=torch.long, device=device)
    tokens[:, 0] = levels + labels.to(device)
    was_training = model.training
    model.eval()
    try:
        for s in range(1, steps + 1):
            masked = tokens[:, 1:] == mask_id  # (B, N)
            logits = model(tokens)[:, 1:, :levels]  # (B, N, levels): pixel ids only
            drawn = sample_next(logits.reshape(B * N, levels), temperature, None, None, generator)
            drawn = drawn.reshape(B, N)  # (B, N)
            log_probs = logits.float().log_softmax(dim=-1)
            confidence = log_probs.gather(-1, drawn[..., None]).squeeze(-1)  # (B, N)
            if noise > 0 and s < steps:
                uniform = torch.rand(B, N, generator=generator, device=device)  # (B, N), [0, 1)
                gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-20)))  # (B, N)
                confidence = confidence + noise * (1 - s / steps) * gumbel
            confidence = confidence.masked_fill(~masked, float("inf"))  # fixed pixels stay
            keep_masked = math.floor(N * math.cos(0.5 * math.pi * s / steps))
            rank = confidence.argsort(dim=1).argsort(dim=1)  # (B, N): 0 = least confident
            still_masked = rank < keep_masked  # (B, N)
            pixels = torch.where(masked, drawn, tokens[:, 1:])  # (B, N)
            tokens[:, 1:] = pixels.masked_fill(still_masked, mask_id)
            if rounds is not None:
                rounds.append(tokens.clone())
    finally:
        model.train(was_training)
    return dequantise(tokens[:, 1:].reshape(B, 1, height, width), levels)
