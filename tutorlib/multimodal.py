"""Aligning images and text: the contrastive (InfoNCE) loss and a tiny CLIP.

CLIP (Radford et al., 2021) trains an image encoder and a text encoder together so that the
embedding of an image is close to the embedding of its caption and far from the other captions
of the batch: the symmetric InfoNCE loss over the batch's similarity matrix. A class can then be
recognised "zero-shot", by embedding one text prompt per class and picking the closest.

Here the images are scikit-learn's digits and the texts are their names ("seven"), read
character by character.

Book: Chapter 5, Vision (multimodal).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tutorlib.models import EncoderOnly, TransformerConfig
from tutorlib.tokenizers import CharTokenizer
from tutorlib.vision import ViT, ViTConfig

__all__ = ["TinyCLIP", "encode_texts", "info_nce", "zero_shot_classify"]


def info_nce(image_emb: Tensor, text_emb: Tensor, temperature: float | Tensor) -> Tensor:
    """CLIP's symmetric contrastive loss: cosine similarities of every image with every text,
    divided by the temperature; cross-entropy towards the diagonal over the rows (each image
    picks its text) and over the columns (each text picks its image), averaged.

    Shapes:
        image_emb (N, d), text_emb (N, d) (pair i is image i with text i)  ->  scalar

    Book: Chapter 5, Vision (multimodal).
    """
    if image_emb.dim() != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(
            f"expected two (N, d) tensors of one shape, got {tuple(image_emb.shape)} and "
            f"{tuple(text_emb.shape)}"
        )
    logits = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T / temperature
    labels = torch.arange(len(logits), device=logits.device)  # (N,): pair i matches i
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def encode_texts(
    tokenizer: CharTokenizer, texts: Sequence[str], device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """Character ids of `texts`, padded on the right with `<pad>` (id 0), and the padding mask.

    Shapes:
        returns tokens (B, T) int64 and padding_mask (B, T) bool, True = real character

    Book: Chapter 5, Vision (multimodal).
    """
    if isinstance(texts, str) or not texts:
        raise ValueError("texts: expected a non-empty list of strings")
    ids = [tokenizer.encode(text) for text in texts]
    if any(len(i) == 0 for i in ids):
        raise ValueError("texts: an empty string has no characters to embed")
    T = max(len(i) for i in ids)
    tokens = torch.zeros(len(ids), T, dtype=torch.long)
    for row, i in enumerate(ids):
        tokens[row, : len(i)] = torch.tensor(i, dtype=torch.long)
    mask = torch.arange(T) < torch.tensor([len(i) for i in ids])[:, None]  # (B, T)
    return tokens.to(device), mask.to(device)


class TinyCLIP(nn.Module):
    """A ViT for the images and a small encoder for the texts, each followed by a linear map
    into one shared embedding space, and a learned temperature (stored as log(1 / tau), started
    at tau = 0.07 and kept above 0.01, as in CLIP).

    Shapes:
        images (B, C, H, W); tokens (B, T), padding_mask (B, T)
        ->  image_emb (B, d), text_emb (B, d), both unit length

    Book: Chapter 5, Vision (multimodal).
    """

    def __init__(self, image: ViTConfig, text: TransformerConfig, embed_dim: int = 32) -> None:
        super().__init__()
        self.image_encoder = ViT(image)
        self.image_encoder.head = nn.Identity()  # the class head is not used: features() is
        self.text_encoder = EncoderOnly(text)
        self.image_proj = nn.Linear(image.d_model, embed_dim, bias=False)
        self.text_proj = nn.Linear(text.d_model, embed_dim, bias=False)
        self.log_inverse_temperature = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def temperature(self) -> Tensor:
        """tau = 1 / exp(log_inverse_temperature), at least 0.01."""
        return 1 / self.log_inverse_temperature.clamp(max=math.log(100)).exp()

    def embed_images(self, images: Tensor) -> Tensor:
        return F.normalize(self.image_proj(self.image_encoder.features(images)), dim=-1)

    def embed_texts(self, tokens: Tensor, padding_mask: Tensor) -> Tensor:
        hidden = self.text_encoder.features(tokens, padding_mask)  # (B, T, C)
        weights = padding_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * weights).sum(1) / weights.sum(1)  # mean over the real characters
        return F.normalize(self.text_proj(pooled), dim=-1)

    def forward(
        self, images: Tensor, tokens: Tensor, padding_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        return self.embed_images(images), self.embed_texts(tokens, padding_mask)

    def loss(self, images: Tensor, tokens: Tensor, padding_mask: Tensor) -> Tensor:
        """The InfoNCE loss of a batch of matching (image, text) pairs."""
        image_emb, text_emb = self(images, tokens, padding_mask)
        return info_nce(image_emb, text_emb, self.temperature)


@torch.no_grad()
def zero_shot_classify(
    model: TinyCLIP, images: Tensor, prompt_tokens: Tensor, prompt_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Classify images by their closest class prompt: one text per class, no classifier head.

    Shapes:
        images (B, C, H, W); prompt_tokens (K, T), prompt_mask (K, T)
        ->  predictions (B,) int64, similarities (B, K)

    Book: Chapter 5, Vision (multimodal).
    """
    was_training = model.training
    model.eval()
    try:
        similarities = model.embed_images(images) @ model.embed_texts(prompt_tokens, prompt_mask).T
    finally:
        model.train(was_training)
    return similarities.argmax(dim=-1), similarities
