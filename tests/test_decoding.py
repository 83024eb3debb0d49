"""Greedy decoding and beam search on a Markov chain small enough to search exhaustively, and
on a real `Transformer`."""

from __future__ import annotations

import itertools

import pytest
import torch

from tutorlib.decoding import beam_search, encoder_decoder_step, greedy_decode, translate
from tutorlib.models import Transformer, TransformerConfig

V, EOS = 4, 3


def markov_step(table: torch.Tensor):
    """A 'model' whose next-token log-probabilities depend on the last token only."""

    def step(tokens: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return table[tokens[:, -1]]

    return step


def random_table(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(V, V, generator=g)).log_softmax(-1)


def sequence_score(table: torch.Tensor, seq: tuple[int, ...], start: int) -> float:
    """Log-probability of `seq` after `start`; after EOS nothing more is paid."""
    total, last = 0.0, start
    for token in seq:
        if last == EOS:
            if token != EOS:
                return float("-inf")
            continue
        total += table[last, token].item()
        last = token
    return total


@pytest.mark.parametrize("seed", range(5))
def test_wide_beam_equals_exhaustive_search(seed: int) -> None:
    table = random_table(seed)
    n = 4
    best = max(itertools.product(range(V), repeat=n), key=lambda s: sequence_score(table, s, 0))
    tokens, score = beam_search(
        markov_step(table), torch.zeros(1, 1, dtype=torch.long), n, EOS, beam_width=V**n
    )
    assert score.item() == pytest.approx(sequence_score(table, best, 0), abs=1e-5)
    assert sequence_score(table, tuple(tokens[0, 1:].tolist()), 0) == pytest.approx(score.item())


@pytest.mark.parametrize("seed", range(5))
def test_beam_never_worse_than_greedy_and_width_one_is_greedy(seed: int) -> None:
    table = random_table(seed)
    start = torch.arange(V - 1).unsqueeze(1)  # three rows with different first tokens
    greedy = greedy_decode(markov_step(table), start, 5, EOS)
    one, _ = beam_search(markov_step(table), start, 5, EOS, beam_width=1)
    assert torch.equal(one[:, : greedy.shape[1]], greedy)
    beam, scores = beam_search(markov_step(table), start, 5, EOS, beam_width=3)
    for row in range(V - 1):
        g = sequence_score(table, tuple(greedy[row, 1:].tolist()), row)
        assert scores[row].item() >= g - 1e-6


def test_greedy_can_be_beaten() -> None:
    """The textbook case: the likeliest first token leads to a poor continuation."""
    p = torch.tensor(
        [
            [0.0, 0.5, 0.4, 0.1],  # from the start token 0: 1 is likeliest...
            [0.0, 0.3, 0.3, 0.4],  # ...but after 1 every continuation is unlikely
            [0.0, 0.0, 0.0, 1.0],  # after 2, EOS for sure
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    table = p.clamp(min=1e-9).log()
    start = torch.zeros(1, 1, dtype=torch.long)
    greedy = greedy_decode(markov_step(table), start, 2, EOS)
    beam, score = beam_search(markov_step(table), start, 2, EOS, beam_width=2)
    assert greedy[0].tolist() == [0, 1, 3] and beam[0].tolist() == [0, 2, 3]
    assert score.item() == pytest.approx(torch.tensor(0.4).log().item())


def test_greedy_stops_and_pads_with_eos() -> None:
    table = torch.full((V, V), -10.0)
    table[:, EOS] = 0.0
    out = greedy_decode(markov_step(table), torch.zeros(2, 1, dtype=torch.long), 6, EOS)
    assert out.tolist() == [[0, EOS], [0, EOS]], "stops as soon as every row has finished"


def test_transformer_step_matches_full_forward() -> None:
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=11, d_model=16, n_heads=2, d_ff=32)).eval()
    src = torch.randint(3, 11, (2, 5))
    real = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    tgt = torch.randint(3, 11, (2, 4))
    step = encoder_decoder_step(model, src, real)
    rows = torch.tensor([1, 0, 1])
    expected = model(src[rows], tgt[rows], real[rows])[:, -1].log_softmax(-1)
    torch.testing.assert_close(step(tgt[rows], rows), expected)
    out = greedy_decode(step, torch.ones(2, 1, dtype=torch.long), 5)
    assert out.shape == (2, 6)


def test_errors() -> None:
    step = markov_step(random_table(0))
    with pytest.raises(ValueError, match="int64 token ids"):
        greedy_decode(step, torch.zeros(2), 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_decode(step, torch.zeros(2, 1, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="beam_width"):
        beam_search(step, torch.zeros(2, 1, dtype=torch.long), 3, EOS, beam_width=0)


def test_translate_batches_and_matches_greedy_and_beam() -> None:
    from tutorlib.tokenizers import CharTokenizer

    torch.manual_seed(0)
    tokenizer = CharTokenizer.from_text("abcdef 0123")
    config = TransformerConfig(vocab_size=tokenizer.vocab_size, d_model=16, n_heads=2, d_ff=32)
    model = Transformer(config).train()  # translate switches to eval mode and back
    texts = ["abc", "f 01", "dd", "e"]
    out = translate(model, tokenizer, texts, max_new_tokens=4, batch_size=3)
    src, real = tokenizer.encode_batch(texts)
    assert model.training
    model.eval()
    start = torch.full((4, 1), tokenizer.bos_id)
    greedy = greedy_decode(encoder_decoder_step(model, src, real), start, 4, tokenizer.eos_id)
    assert out == [tokenizer.decode(row.tolist()) for row in greedy]
    beam = translate(model, tokenizer, texts, max_new_tokens=4, beam_width=3)
    assert len(beam) == 4 and all(isinstance(b, str) for b in beam)
