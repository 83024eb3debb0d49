"""Samplers, the causal LM loss and the generation loop (tutorlib.generation)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tutorlib.decoding import beam_search
from tutorlib.generation import (
    apply_repetition_penalty,
    apply_temperature,
    causal_lm_loss,
    decoder_only_step,
    distinct_n,
    perplexity,
    sample,
    sample_next,
    sequence_perplexity,
    top_k_filter,
    top_p_filter,
)
from tutorlib.inference import generate
from tutorlib.models import DecoderOnly, TransformerConfig


def small_gpt(vocab_size: int = 11, context_length: int = 24) -> DecoderOnly:
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=vocab_size,
        context_length=context_length,
        d_model=32,
        n_heads=4,
        n_layers=2,
        d_ff=64,
        norm_first=True,
        positional="learned",
    )
    return DecoderOnly(config).eval()


def test_causal_lm_loss_scores_each_position_against_the_next_token() -> None:
    logits = torch.randn(3, 7, 5)
    tokens = torch.randint(0, 5, (3, 7))
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 5), tokens[:, 1:].reshape(-1))
    assert torch.allclose(causal_lm_loss(logits, tokens), expected)
    unshifted = F.cross_entropy(logits.reshape(-1, 5), tokens.reshape(-1))
    assert not torch.allclose(causal_lm_loss(logits, tokens), unshifted)


def test_causal_lm_loss_leaves_out_ignored_targets() -> None:
    logits = torch.randn(2, 5, 4)
    tokens = torch.tensor([[1, 2, 3, 0, 0], [1, 3, 2, 1, 2]])
    kept = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 3)]  # (row, position) of real targets
    manual = torch.stack([F.cross_entropy(logits[b, t], tokens[b, t + 1]) for b, t in kept])
    assert torch.allclose(causal_lm_loss(logits, tokens, ignore_index=0), manual.mean())


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size() -> None:
    logits = torch.zeros(2, 6, 13)
    tokens = torch.randint(0, 13, (2, 6))
    assert perplexity(causal_lm_loss(logits, tokens)) == pytest.approx(13.0)


def test_top_k_keeps_exactly_the_k_largest() -> None:
    logits = torch.randn(50, 30)
    for k in (1, 5, 30):
        kept = top_k_filter(logits, k).isfinite()
        assert (kept.sum(dim=1) == k).all()
        smallest_kept = logits.masked_fill(~kept, float("inf")).min(dim=1).values
        largest_dropped = logits.masked_fill(kept, float("-inf")).max(dim=1).values
        assert (smallest_kept > largest_dropped).all()
    assert torch.equal(
        top_k_filter(logits, 5)[top_k_filter(logits, 5).isfinite()],
        logits[top_k_filter(logits, 5).isfinite()],
    )  # kept logits unchanged


def test_top_p_keeps_the_smallest_set_over_p() -> None:
    torch.manual_seed(1)
    logits = 3 * torch.randn(200, 20)
    probs = logits.softmax(dim=-1)
    for p in (0.1, 0.5, 0.9, 0.99, 1.0):
        kept = top_p_filter(logits, p).isfinite()
        mass = (probs * kept).sum(dim=1)
        assert (mass >= p - 1e-6).all(), "kept mass below p"
        # dropping the least probable kept token would fall below p: the set is the smallest
        least_kept = probs.masked_fill(~kept, float("inf")).min(dim=1).values
        assert (mass - least_kept < p + 1e-6).all(), "keeps more than the smallest set"
        # and the kept tokens are the most probable ones
        largest_dropped = probs.masked_fill(kept, float("-inf")).max(dim=1).values
        assert (least_kept >= largest_dropped).all()


def test_top_p_keeps_the_top_token_even_for_tiny_p() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0]])
    assert top_p_filter(logits, 1e-9).isfinite().tolist() == [[False, True, False]]


def test_temperature_divides_the_logits() -> None:
    logits = torch.randn(4, 9)
    assert torch.allclose(apply_temperature(logits, 0.5), 2 * logits)
    probs = apply_temperature(logits, 0.5).softmax(-1)
    expected = logits.softmax(-1) ** 2
    assert torch.allclose(probs, expected / expected.sum(-1, keepdim=True), atol=1e-6)


def test_sampling_at_low_temperature_is_greedy() -> None:
    logits = torch.randn(100, 12)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(sample_next(logits, temperature=0), logits.argmax(-1))
    low = sample_next(logits, temperature=1e-3, generator=generator)
    assert torch.equal(low, logits.argmax(-1))


def test_sample_next_draws_from_the_softmax() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(40_000, 4)
    generator = torch.Generator().manual_seed(0)
    counts = torch.bincount(sample_next(logits, generator=generator), minlength=4).float()
    probs = logits[0].softmax(-1)
    std = (probs * (1 - probs) / 40_000).sqrt()
    assert ((counts / 40_000 - probs).abs() < 5 * std).all()


def test_sample_next_never_leaves_the_top_k_or_the_nucleus() -> None:
    torch.manual_seed(2)
    logits = torch.randn(500, 25)
    generator = torch.Generator().manual_seed(0)
    drawn = sample_next(logits, top_k=3, generator=generator)
    assert top_k_filter(logits, 3).isfinite().gather(1, drawn[:, None]).all()
    drawn = sample_next(logits, top_p=0.5, generator=generator)
    assert top_p_filter(logits, 0.5).isfinite().gather(1, drawn[:, None]).all()


def test_repetition_penalty_lowers_only_tokens_already_written() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    previous = torch.tensor([[0, 1, 1]])
    out = apply_repetition_penalty(logits, previous, 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, -1.0]]
    assert torch.equal(apply_repetition_penalty(logits, previous, 1.0), logits)


def test_sample_with_and_without_the_cache_writes_the_same_tokens() -> None:
    model = small_gpt()  # context_length 24: the last 9 steps slide a window
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    draws = []
    for use_cache in (True, False):
        generator = torch.Generator().manual_seed(3)
        draws.append(sample(model, prompt, 30, top_k=5, generator=generator, use_cache=use_cache))
    assert torch.equal(draws[0], draws[1])
    assert torch.equal(draws[0][:, :3], prompt)


def test_sample_at_temperature_zero_is_greedy_generation() -> None:
    model = small_gpt()
    prompt = torch.tensor([[1, 2], [3, 4]])
    assert torch.equal(sample(model, prompt, 8, temperature=0), generate(model, prompt, 8))


def test_beam_search_of_width_one_on_a_gpt_is_greedy() -> None:
    model = small_gpt()
    prompt = torch.tensor([[1, 2], [7, 3]])
    with torch.no_grad():
        tokens, _ = beam_search(decoder_only_step(model), prompt, 6, eos_id=10, beam_width=1)
    greedy = generate(model, prompt, 6)
    for row, greedy_row in zip(tokens, greedy, strict=True):
        stop = (greedy_row == 10).nonzero()
        end = int(stop[0]) + 1 if len(stop) else len(greedy_row)
        assert torch.equal(row[:end], greedy_row[:end])


def test_beam_search_finds_a_sequence_at_least_as_probable_as_greedy() -> None:
    model = small_gpt()
    prompt = torch.tensor([[1, 2]])
    with torch.no_grad():
        _, greedy_score = beam_search(decoder_only_step(model), prompt, 5, eos_id=10, beam_width=1)
        _, beam_score = beam_search(decoder_only_step(model), prompt, 5, eos_id=10, beam_width=4)
    assert beam_score.item() >= greedy_score.item() - 1e-6


def test_distinct_n_counts_distinct_ngrams() -> None:
    assert distinct_n(["abab"], 2) == pytest.approx(2 / 3)  # ab, ba, ab
    assert distinct_n(["abcd", "abcd"], 1) == pytest.approx(4 / 8)
    assert distinct_n([[1, 2, 3], [3, 2, 1]], 2) == 1.0
    with pytest.raises(ValueError, match="no sequence"):
        distinct_n(["ab"], 3)


def test_sequence_perplexity_is_exp_of_the_causal_lm_loss() -> None:
    model = small_gpt()
    tokens = torch.randint(0, 11, (1, 12))
    with torch.no_grad():
        loss = causal_lm_loss(model(tokens), tokens)
    assert sequence_perplexity(model, tokens).item() == pytest.approx(math.exp(loss.item()), 1e-5)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: top_k_filter(torch.randn(2, 5), 6), "k must be an int in"),
        (lambda: top_p_filter(torch.randn(2, 5), 0.0), "p must be in"),
        (lambda: apply_temperature(torch.randn(2, 5), -1.0), "temperature must be > 0"),
        (lambda: sample_next(torch.randn(5)), "shape \\(batch, vocab_size\\)"),
        (lambda: causal_lm_loss(torch.randn(2, 4, 3), torch.zeros(2, 5).long()), "must match"),
        (
            lambda: apply_repetition_penalty(torch.randn(2, 5), torch.zeros(2, 1).long(), 0.5),
            "penalty must be >= 1",
        ),
        (lambda: sample(small_gpt(), torch.zeros(1, 30).long(), 10), "exceeds context_length"),
    ],
)
def test_bad_input_gets_a_clear_error(call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_docstring_gpt_is_trained_once_then_loaded(monkeypatch, tmp_path) -> None:
    from tutorlib import generation

    monkeypatch.setenv("TUTORLIB_CACHE", str(tmp_path))
    monkeypatch.setitem(generation.GPT_TRAINING, "steps", 3)
    monkeypatch.setitem(generation.GPT_TRAINING, "warmup_steps", 1)
    monkeypatch.setitem(generation.GPT_CONFIG, "d_model", 16)
    monkeypatch.setitem(generation.GPT_CONFIG, "d_ff", 32)
    monkeypatch.setitem(generation.GPT_CONFIG, "n_layers", 1)
    model, tokenizer, history = generation.docstring_gpt("cpu", progress=False)
    assert len(history["loss"]) == 3 and history["eval_step"] == [3]
    assert len(list(tmp_path.glob("docstring_gpt-*.pt"))) == 1
    again, _, history_again = generation.docstring_gpt("cpu", progress=False)
    assert history_again == history
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert model.config.vocab_size == tokenizer.vocab_size


def test_window_batches_targets_are_the_inputs_shifted_by_one() -> None:
    from tutorlib.generation import window_batches

    ids = torch.arange(100)
    inputs, targets = window_batches(ids, batch_size=4, block_size=10, seed=0)()
    assert inputs.shape == targets.shape == (4, 10)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    assert torch.equal(targets, inputs + 1)  # ids are consecutive here
    with pytest.raises(ValueError, match="1-D int64"):
        window_batches(torch.zeros(5, 5).long(), 2, 3)
