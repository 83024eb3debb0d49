"""Pixels as tokens: quantising, sequences with a class prefix, constrained sampling of digits,
and MaskGIT's masking and rounds."""

from __future__ import annotations

import math

import pytest
import torch

from tutorlib.generation import causal_lm_loss, sample, sample_next
from tutorlib.models import DecoderOnly, EncoderOnly, TransformerConfig
from tutorlib.pixels import (
    dequantise,
    images_to_sequences,
    mask_pixels,
    maskgit_sample,
    quantise,
    sample_digits,
    sequences_to_images,
)
from tutorlib.vision import digits_data

LEVELS = 4
VOCAB = LEVELS + 10  # pixel ids, then class ids
MASK = VOCAB  # the masked model's extra id


def random_images(batch: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def tiny_decoder(vocab_size: int = VOCAB) -> DecoderOnly:
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=vocab_size,
        context_length=65,
        d_model=32,
        n_heads=4,
        n_layers=2,
        d_ff=64,
        norm_first=True,
        positional="learned",
    )
    return DecoderOnly(config).eval()


def tiny_encoder() -> EncoderOnly:
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=VOCAB + 1, context_length=65, d_model=32, n_heads=4, n_layers=1, d_ff=64
    )
    return EncoderOnly(config).eval()


@pytest.mark.parametrize("levels", [2, 4, 8, 17])
def test_quantise_round_trips(levels: int) -> None:
    images = random_images()
    pixels = quantise(images, levels)
    assert pixels.dtype == torch.long and pixels.shape == images.shape
    assert pixels.min() >= 0 and pixels.max() < levels
    grey = dequantise(pixels, levels)
    # The nearest level: at most half a step from the original grey value.
    assert (grey - images).abs().max() <= 0.5 / (levels - 1) + 1e-6
    assert torch.equal(quantise(grey, levels), pixels)  # quantised images are fixed points


def test_seventeen_levels_are_the_digits_own_grey_values() -> None:
    images = digits_data()[0][:50]  # grey values v / 16, v = 0 .. 16
    assert torch.equal(quantise(images, 17), torch.round(images * 16).long())
    torch.testing.assert_close(dequantise(quantise(images, 17), 17), images)


def test_sequences_are_the_class_token_then_the_pixels_in_raster_order() -> None:
    images, labels = random_images(3), torch.tensor([7, 0, 9])
    sequences = images_to_sequences(images, labels, LEVELS)
    assert sequences.shape == (3, 65) and sequences.dtype == torch.long
    assert sequences[:, 0].tolist() == [LEVELS + 7, LEVELS, LEVELS + 9]  # ids after the pixels
    pixels = quantise(images, LEVELS)
    for r, c in [(0, 0), (0, 7), (1, 0), (5, 3), (7, 7)]:
        assert torch.equal(sequences[:, 1 + 8 * r + c], pixels[:, 0, r, c])
    back, back_labels = sequences_to_images(sequences, LEVELS)
    assert torch.equal(back_labels, labels)
    torch.testing.assert_close(back, dequantise(pixels, LEVELS))


def test_causal_lm_loss_predicts_exactly_the_pixels_from_the_class_prefix() -> None:
    model = tiny_decoder()
    sequences = images_to_sequences(random_images(4), torch.tensor([1, 2, 3, 4]), LEVELS)
    logits = model(sequences)  # (B, 65, V)
    # The loss's targets are tokens 1..64: the 64 pixels, never the class token; the first pixel
    # is predicted from position 0, which holds the class token and nothing else.
    expected = torch.nn.functional.cross_entropy(
        logits[:, :64].reshape(-1, VOCAB), sequences[:, 1:].reshape(-1)
    )
    torch.testing.assert_close(causal_lm_loss(logits, sequences), expected)
    other = sequences.clone()
    other[:, 0] = LEVELS + 8  # another class changes every prediction
    assert not torch.allclose(model(other)[:, :64], logits[:, :64])
    changed = sequences.clone()
    changed[:, 30] = (changed[:, 30] + 1) % LEVELS  # a later pixel changes nothing before it
    torch.testing.assert_close(model(changed)[:, :30], logits[:, :30])


def test_sample_digits_equals_the_uncached_loop_over_pixel_ids() -> None:
    model, labels = tiny_decoder(), torch.tensor([3, 3, 5, 0])
    images = sample_digits(
        model, labels, LEVELS, temperature=0.8, top_k=3, generator=torch.Generator().manual_seed(1)
    )
    generator = torch.Generator().manual_seed(1)
    tokens = (LEVELS + labels)[:, None]
    with torch.no_grad():
        for _ in range(64):
            logits = model(tokens)[:, -1, :LEVELS]
            tokens = torch.cat([tokens, sample_next(logits, 0.8, 3, None, generator)[:, None]], 1)
    expected, expected_labels = sequences_to_images(tokens, LEVELS)
    assert torch.equal(expected_labels, labels)
    torch.testing.assert_close(images, expected)
    assert images.shape == (4, 1, 8, 8)


def test_sample_digits_never_writes_a_class_token_where_a_pixel_belongs() -> None:
    model = tiny_decoder()
    with torch.no_grad():
        model.output.weight[LEVELS:] *= 50.0  # a model that much prefers class ids
    labels = torch.arange(10)
    unconstrained = sample(model, (LEVELS + labels)[:, None], 64, generator=torch.Generator())
    assert (unconstrained[:, 1:] >= LEVELS).any()  # plain sampling would write them
    with pytest.raises(ValueError, match="pixel levels must lie in"):
        sequences_to_images(unconstrained, LEVELS)
    images = sample_digits(model, labels, LEVELS, generator=torch.Generator().manual_seed(0))
    assert torch.equal(quantise(images, LEVELS), torch.round(images * (LEVELS - 1)).long())
    assert images.min() >= 0 and images.max() <= 1


def test_clear_errors() -> None:
    images = random_images(2)
    with pytest.raises(ValueError, match="levels must be an int >= 2"):
        quantise(images, 1)
    with pytest.raises(ValueError, match="must lie in \\[0, 1\\]"):
        quantise(images * 16, LEVELS)
    with pytest.raises(ValueError, match="expected grey images \\(batch, 1, height, width\\)"):
        quantise(images[:, 0], LEVELS)
    with pytest.raises(TypeError, match="floating point"):
        quantise(images.long(), LEVELS)
    with pytest.raises(ValueError, match="pixel levels must lie in \\[0, 4\\)"):
        dequantise(torch.full((1, 1, 8, 8), 4), LEVELS)
    with pytest.raises(ValueError, match="labels must lie in \\[0, 10\\)"):
        images_to_sequences(images, torch.tensor([3, 10]), LEVELS)
    with pytest.raises(ValueError, match="shape \\(2,\\)"):
        images_to_sequences(images, torch.tensor([3]), LEVELS)
    sequences = images_to_sequences(images, torch.tensor([3, 4]), LEVELS)
    with pytest.raises(ValueError, match="1 \\+ 8 \\* 8 = 65"):
        sequences_to_images(sequences[:, :-1], LEVELS)
    with pytest.raises(ValueError, match="token 0 of each sequence must be a class token"):
        sequences_to_images(sequences.roll(1, dims=1), LEVELS)
    with pytest.raises(TypeError, match="DecoderOnly"):
        sample_digits(tiny_encoder(), torch.tensor([1]), LEVELS)
    with pytest.raises(ValueError, match="top_k must be None or an int in \\[1, levels=4\\]"):
        sample_digits(tiny_decoder(), torch.tensor([1]), LEVELS, top_k=5)
    with pytest.raises(ValueError, match="mask_id"):
        maskgit_sample(tiny_encoder(), torch.tensor([1]), LEVELS, mask_id=2)


def test_mask_pixels_hides_pixels_only_and_labels_only_what_was_hidden() -> None:
    sequences = images_to_sequences(
        random_images(2000), torch.arange(2000) % 10, LEVELS
    )  # (2000, 65)
    inputs, labels = mask_pixels(sequences, MASK, torch.Generator().manual_seed(0))
    hidden = inputs == MASK
    assert not hidden[:, 0].any()  # the class token is always seen
    assert hidden[:, 1:].sum(dim=1).min() >= 1  # something to predict in every row
    assert torch.equal(inputs[~hidden], sequences[~hidden])
    assert torch.equal(labels[hidden], sequences[hidden])
    assert (labels[~hidden] == -100).all()
    # The cosine schedule: the masked share is cos(pi/2 u), whose mean over u ~ U(0, 1) is 2/pi.
    share = hidden[:, 1:].float().mean()
    assert abs(share.item() - 2 / math.pi) < 0.03


def test_maskgit_sample_fixes_pixels_round_by_round_on_the_cosine_schedule() -> None:
    model, labels, steps = tiny_encoder(), torch.tensor([2, 7, 7]), 4
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    rounds: list[torch.Tensor] = []
    images = maskgit_sample(
        model,
        labels,
        LEVELS,
        MASK,
        steps=steps,
        generator=torch.Generator().manual_seed(0),
        rounds=rounds,
    )
    assert images.shape == (3, 1, 8, 8)
    assert len(rounds) == steps  # the tokens after each round: the next round's input
    for before, after in zip(seen[1:], rounds[:-1], strict=True):
        assert torch.equal(before, after)
    assert torch.equal(quantise(images, LEVELS).flatten(1), rounds[-1][:, 1:])
    assert torch.equal(quantise(images, LEVELS).float() / (LEVELS - 1), images)
    assert len(seen) == steps  # one forward pass per round
    for s, tokens in enumerate(seen):
        assert torch.equal(tokens[:, 0], LEVELS + labels)
        masked = (tokens[:, 1:] == MASK).sum(dim=1)
        assert (masked == math.floor(64 * math.cos(0.5 * math.pi * s / steps))).all()
        if s:  # a pixel fixed in an earlier round keeps its level
            fixed = seen[s - 1][:, 1:] != MASK
            assert torch.equal(tokens[:, 1:][fixed], seen[s - 1][:, 1:][fixed])
    final = quantise(images, LEVELS).flatten(1)
    fixed = seen[-1][:, 1:] != MASK
    assert torch.equal(final[fixed], seen[-1][:, 1:][fixed])
    again = maskgit_sample(
        model, labels, LEVELS, MASK, steps=steps, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(again, images)  # seeded: the same draw


def test_maskgit_sample_keeps_the_most_confident_pixels_first() -> None:
    model, labels = tiny_encoder(), torch.tensor([4, 6])
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    # Greedy draws and no noise: a pixel's confidence is its largest log-probability.
    maskgit_sample(model, labels, LEVELS, MASK, steps=4, temperature=0.0, noise=0.0)
    with torch.no_grad():
        log_probs = model(seen[0])[:, 1:, :LEVELS].log_softmax(dim=-1)  # (B, 64, levels)
    best, level = log_probs.max(dim=-1)  # (B, 64)
    n_fixed = 64 - math.floor(64 * math.cos(0.5 * math.pi / 4))
    expected = torch.zeros_like(best, dtype=torch.bool)
    expected.scatter_(1, best.topk(n_fixed, dim=1).indices, True)
    fixed = seen[1][:, 1:] != MASK
    assert torch.equal(fixed, expected)
    assert torch.equal(seen[1][:, 1:][fixed], level[fixed])
