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
    bits_per_character,
    bpe_lm_data,
    causal_lm_loss,
    char_lm_data,
    decoder_only_step,
    distinct_n,
    perplexity,
    sample,
    sample_next,
    sequence_perplexity,
    top_k_filter,
    top_p_filter,
    train_docstring_gpt,
)
from tutorlib.inference import generate
from tutorlib.models import DecoderOnly, TransformerConfig


def small_gpt(
    vocab_size: int = 11, context_length: int = 24, positional: str = "learned"
) -> DecoderOnly:
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=vocab_size,
        context_length=context_length,
        d_model=32,
        n_heads=4,
        n_layers=2,
        d_ff=64,
        norm_first=True,
        positional=positional,
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


@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])  # GPT_CONFIG's is sinusoidal
def test_sample_with_and_without_the_cache_writes_the_same_tokens(positional) -> None:
    model = small_gpt(positional=positional)  # context_length 24: the last 9 steps slide a window
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


# --- The BPE model, bits per character and the cache ---------------------------------------------

SMALL_CORPUS = "\n\n".join(
    f"Return the {word} of the {thing}.\n\n    >>> {thing}.{word}({i})\n    {i * 7}"
    for i, (word, thing) in enumerate(
        (w, t)
        for w in ("size", "name", "value", "length", "mode", "path")
        for t in ("file", "queue", "socket", "parser", "thread", "cache", "buffer")
    )
)


@pytest.fixture
def small_corpus(monkeypatch):
    """Replace the docstring corpus by a small text, so that the data tests take milliseconds."""
    from tutorlib import generation

    monkeypatch.setattr(generation, "corpus_text", lambda: SMALL_CORPUS)
    return SMALL_CORPUS


def test_bpe_lm_data_splits_at_the_same_character_as_char_lm_data(small_corpus) -> None:
    chars, bpe = char_lm_data(), bpe_lm_data(300)
    held_out = chars.tokenizer.decode(chars.val_ids)
    assert bpe.tokenizer.decode(bpe.val_ids) == held_out  # the held-out text round-trips
    assert bpe.tokenizer.decode(bpe.train_ids) == chars.tokenizer.decode(chars.train_ids)
    assert bpe.val_chars == chars.val_chars == len(held_out)
    assert held_out == small_corpus[int(0.9 * len(small_corpus)) :]
    assert len(bpe.val_ids) < len(chars.val_ids)  # the merges compress it
    assert bpe.tokenizer.vocab_size == 300 and bpe.tokenizer.special_tokens[:1] == ("<pad>",)


def test_the_bpe_tokenizer_learns_from_the_training_part_only(small_corpus) -> None:
    from tutorlib.tokenizers import CHAR_SPECIAL_TOKENS, BPETokenizer

    train_text = small_corpus[: int(0.9 * len(small_corpus))]
    expected = BPETokenizer.train(train_text, 300, special_tokens=CHAR_SPECIAL_TOKENS)
    assert bpe_lm_data(300).tokenizer.merges == expected.merges


def test_the_real_corpus_held_out_text_round_trips() -> None:
    chars, bpe = char_lm_data(), bpe_lm_data(300)
    assert bpe.tokenizer.decode(bpe.val_ids) == chars.tokenizer.decode(chars.val_ids)
    assert bpe.val_chars == len(chars.val_ids)


def _direct_nats(model: DecoderOnly, stream: torch.Tensor, first: int, reach: int) -> float:
    """Each target from position `first` on, predicted from at most `reach` ids before it."""
    total = 0.0
    with torch.no_grad():
        for j in range(first, len(stream)):
            window = stream[max(0, j - reach) : j].unsqueeze(0)  # (1, t)
            total -= model(window)[0, -1].log_softmax(-1)[stream[j]].item()
    return total


def test_bits_per_character_is_the_total_cross_entropy_over_the_characters() -> None:
    model = small_gpt(context_length=8)
    ids, context = torch.randint(0, 11, (37,)), torch.randint(0, 11, (20,))
    # stride 1: every target reads the 8 ids before it (fewer at the start)
    nats = _direct_nats(model, ids, 1, 8)
    assert bits_per_character(model, ids, 36, stride=1) == pytest.approx(nats / 36 / math.log(2))
    stream = torch.cat([context[-8:], ids])
    nats = _direct_nats(model, stream, 8, 8)
    got = bits_per_character(model, ids, 37, context=context, stride=1)
    assert got == pytest.approx(nats / 37 / math.log(2))
    # the default stride: one window of context_length + 1 ids is the mean cross-entropy
    window = ids[:9]
    with torch.no_grad():
        mean = F.cross_entropy(model(window[None, :-1])[0], window[1:]).item()
    assert bits_per_character(model, window, 8) == pytest.approx(mean / math.log(2))
    # n_chars divides the total: twice the characters, half the bits per character
    half = bits_per_character(model, ids, 72)
    assert half == pytest.approx(bits_per_character(model, ids, 36) / 2)


class UniformLM(torch.nn.Module):
    """Zero logits: every prediction costs ln V nats, whatever it reads."""

    def __init__(self, vocab_size: int = 11, context_length: int = 8) -> None:
        super().__init__()
        self.config = TransformerConfig(
            vocab_size=vocab_size, context_length=context_length, d_model=8, n_heads=1
        )
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        assert tokens.shape[1] <= self.config.context_length, "read past the context"
        return torch.zeros(*tokens.shape, self.config.vocab_size) + 0 * self.unused  # (B, T, V)


def test_bits_per_character_predicts_each_id_once_whatever_the_stride() -> None:
    uniform = UniformLM(vocab_size=11, context_length=8)
    for n in (2, 5, 9, 50):
        ids = torch.randint(0, 11, (n,))
        for stride in (1, 3, 7, 8):
            bits = bits_per_character(uniform, ids, 1, stride=stride)
            assert bits * math.log(2) == pytest.approx((n - 1) * math.log(11)), (n, stride)
            bits = bits_per_character(uniform, ids, 1, context=ids, stride=stride)
            assert bits * math.log(2) == pytest.approx(n * math.log(11)), (n, stride)
    # a context shorter than context_length is read whole
    model, ids, context = (
        small_gpt(context_length=8),
        torch.randint(0, 11, (12,)),
        torch.tensor([3, 4]),
    )
    expected = _direct_nats(model, torch.cat([context, ids]), 2, 8) / 12 / math.log(2)
    assert bits_per_character(model, ids, 12, context=context, stride=1) == pytest.approx(expected)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m: bits_per_character(m, torch.zeros(2, 9).long(), 8), ValueError, "1-D int64"),
        (lambda m: bits_per_character(m, torch.zeros(9), 8), ValueError, "1-D int64"),
        (lambda m: bits_per_character(m, torch.zeros(9).long(), 0), ValueError, "n_chars"),
        (lambda m: bits_per_character(m, torch.zeros(9).long(), 8, stride=0), ValueError, "stride"),
        (lambda m: bits_per_character(m, torch.zeros(9).long(), 8, stride=9), ValueError, "stride"),
        (lambda m: bits_per_character(m, torch.zeros(1).long(), 1), ValueError, "nothing to score"),
        (
            lambda m: bits_per_character(m, torch.zeros(9).long(), 8, context=torch.zeros(1, 2)),
            ValueError,
            "context",
        ),
        (
            lambda m: bits_per_character(
                m, torch.zeros(9).long(), 9, context=torch.zeros(0).long()
            ),
            ValueError,
            "context is empty",
        ),
        (lambda m: bpe_lm_data(258), ValueError, "at least 256 bytes"),
        (lambda m: bpe_lm_data(512.0), TypeError, "must be an int"),
        (lambda m: bpe_lm_data(512, val_fraction=1.0), ValueError, "val_fraction"),
        (lambda m: char_lm_data(val_fraction=0), ValueError, "val_fraction"),
        (lambda m: train_docstring_gpt(data="text"), TypeError, "char_lm_data or bpe_lm_data"),
        (lambda m: train_docstring_gpt(step=3), ValueError, "unknown training settings"),
    ],
)
def test_bad_lm_data_and_scoring_input_gets_a_clear_error(call, error, message) -> None:
    with pytest.raises(error, match=message):
        call(UniformLM())


def test_the_cache_path_changes_with_the_settings(monkeypatch, tmp_path) -> None:
    from tutorlib import generation

    monkeypatch.setenv("TUTORLIB_CACHE", str(tmp_path))
    cpu = torch.device("cpu")
    char = generation._gpt_cache_path(cpu)
    assert char.parent == tmp_path and char.name.startswith("docstring_gpt-")
    bpe = generation._gpt_cache_path(cpu, "docstring_bpe_gpt", ({"steps": 10}, 1024))
    assert bpe.name.startswith("docstring_bpe_gpt-")
    assert bpe != generation._gpt_cache_path(cpu, "docstring_bpe_gpt", ({"steps": 10}, 512))
    assert bpe != generation._gpt_cache_path(cpu, "docstring_bpe_gpt", ({"steps": 11}, 1024))
    monkeypatch.setitem(generation.GPT_TRAINING, "steps", 801)
    assert generation._gpt_cache_path(cpu) != char
    monkeypatch.setitem(generation.GPT_CONFIG, "n_layers", 4)
    assert generation._gpt_cache_path(cpu) != char


def test_docstring_bpe_gpt_is_trained_once_then_loaded(monkeypatch, tmp_path, small_corpus) -> None:
    from tutorlib import generation

    monkeypatch.setenv("TUTORLIB_CACHE", str(tmp_path))
    monkeypatch.setattr(generation, "BPE_VOCAB_SIZE", 300)
    monkeypatch.setattr(
        generation, "BPE_TRAINING", dict(generation.BPE_TRAINING, steps=3, warmup_steps=1)
    )
    monkeypatch.setitem(generation.GPT_CONFIG, "d_model", 16)
    monkeypatch.setitem(generation.GPT_CONFIG, "d_ff", 32)
    monkeypatch.setitem(generation.GPT_CONFIG, "n_layers", 1)
    model, tokenizer, history = generation.docstring_bpe_gpt("cpu", progress=False)
    assert model.config.vocab_size == tokenizer.vocab_size == 300
    assert len(history["loss"]) == 3 and history["eval_step"] == [3]
    assert history["eval_val_bpc"][0] > 0 and history["seconds"] == history["eval_seconds"]
    assert len(list(tmp_path.glob("docstring_bpe_gpt-*.pt"))) == 1
    again, _, history_again = generation.docstring_bpe_gpt("cpu", progress=False)
    assert history_again == history
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # generation with the KV cache runs through the same model and decodes to text
    prompt = torch.tensor([tokenizer.encode("Return the")])
    out = generation.sample(again, prompt, 5, generator=torch.Generator().manual_seed(0))
    assert tokenizer.decode(out[0]).startswith("Return the")
