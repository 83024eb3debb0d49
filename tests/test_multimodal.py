"""InfoNCE against cross-entropy on the similarity matrix, its symmetry, and the tiny CLIP."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tutorlib.models import TransformerConfig
from tutorlib.multimodal import TinyCLIP, encode_texts, info_nce, zero_shot_classify
from tutorlib.tokenizers import CharTokenizer
from tutorlib.vision import DIGIT_NAMES, ViTConfig


def test_info_nce_is_cross_entropy_on_the_similarity_matrix() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = (
        torch.randn(6, 5, generator=g, dtype=torch.float64),
        torch.randn(6, 5, generator=g, dtype=torch.float64),
    )
    sims = F.cosine_similarity(a[:, None], b[None], dim=-1) / 0.1  # (6, 6)
    labels = torch.arange(6)
    expected = (F.cross_entropy(sims, labels) + F.cross_entropy(sims.T, labels)) / 2
    torch.testing.assert_close(info_nce(a, b, 0.1), expected)
    torch.testing.assert_close(info_nce(a, b, 0.1), info_nce(b, a, 0.1))  # symmetric
    torch.testing.assert_close(info_nce(3 * a, b, 0.1), info_nce(a, b, 0.1))  # scale-free
    # Perfectly aligned orthogonal pairs: the loss falls to 0 as the temperature shrinks.
    eye = torch.eye(4, dtype=torch.float64)
    assert info_nce(eye, eye, 0.01) < 1e-30 < info_nce(eye, eye, 1.0)
    with pytest.raises(ValueError, match="one shape"):
        info_nce(a, b[:5], 0.1)


def test_tiny_clip_shapes_loss_and_zero_shot() -> None:
    torch.manual_seed(0)
    tokenizer = CharTokenizer.from_text("".join(DIGIT_NAMES))
    model = TinyCLIP(
        ViTConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32),
        TransformerConfig(
            vocab_size=tokenizer.vocab_size,
            context_length=8,
            d_model=16,
            n_heads=2,
            n_layers=1,
            d_ff=32,
            norm_first=True,
        ),
        embed_dim=8,
    )
    tokens, mask = encode_texts(tokenizer, ["seven", "one", "three"])
    with pytest.raises(ValueError, match="non-empty"):
        encode_texts(tokenizer, [])
    with pytest.raises(ValueError, match="empty string"):
        encode_texts(tokenizer, ["one", ""])
    with pytest.raises(ValueError, match="expected \\(batch, 1, 8, 8\\)"):
        model.embed_images(torch.rand(2, 1, 6, 6))
    assert tokens.shape == (3, 5) and mask.sum(1).tolist() == [5, 3, 5]
    assert tokenizer.decode(tokens[1].tolist()) == "one"
    images = torch.rand(3, 1, 8, 8)
    image_emb, text_emb = model(images, tokens, mask)
    torch.testing.assert_close(image_emb.norm(dim=-1), torch.ones(3))
    assert text_emb.shape == (3, 8)
    model.loss(images, tokens, mask).backward()
    assert model.log_inverse_temperature.grad is not None
    assert model.temperature.item() == pytest.approx(0.07)
    prompts, prompt_mask = encode_texts(tokenizer, DIGIT_NAMES)
    predictions, sims = zero_shot_classify(model, images, prompts, prompt_mask)
    assert predictions.shape == (3,) and sims.shape == (3, 10)
    assert torch.equal(predictions, sims.argmax(-1))
    # A padded text embeds as the unpadded one: padding is masked out of the mean.
    alone, alone_mask = encode_texts(tokenizer, ["one"])
    model.eval()
    torch.testing.assert_close(
        model.embed_texts(alone, alone_mask)[0],
        model.embed_texts(tokens, mask)[1],
        rtol=1e-5,
        atol=1e-6,
    )
