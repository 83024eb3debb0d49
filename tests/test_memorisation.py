"""tutorlib.memorisation against brute force: every substring checked directly."""

from __future__ import annotations

import random

import pytest
import torch

from tutorlib.inference import generate
from tutorlib.memorisation import (
    continued_length,
    copied_mask,
    extractable,
    longest_copied_span,
    ngram_set,
)
from tutorlib.models import DecoderOnly, TransformerConfig


def brute_copied_mask(text: str, reference: str, n: int) -> list[bool]:
    """Character j is copied when some substring of length >= n containing it is in reference."""
    marked = [False] * len(text)
    for i in range(len(text)):
        for k in range(i + n, len(text) + 1):
            if text[i:k] in reference:
                for j in range(i, k):
                    marked[j] = True
    return marked


def brute_longest(text: str, reference: str) -> int:
    return max(
        (
            k - i
            for i in range(len(text))
            for k in range(i, len(text) + 1)
            if text[i:k] in reference
        ),
        default=0,
    )


def random_text(rng: random.Random, length: int, alphabet: str = "abc") -> str:
    return "".join(rng.choice(alphabet) for _ in range(length))


@pytest.mark.parametrize("seed", range(20))
def test_copied_mask_and_longest_span_match_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    reference = random_text(rng, 60)
    text = random_text(rng, 30) + reference[10:25] + random_text(rng, 10)
    for n in (1, 3, 5, 8, 15):
        mask = copied_mask(text, ngram_set(reference, n), n)
        assert mask.dtype == torch.bool and mask.shape == (len(text),)
        assert mask.tolist() == brute_copied_mask(text, reference, n), n
    span = longest_copied_span(text, reference)
    assert span in reference and span in text
    assert len(span) == brute_longest(text, reference) >= 15


def test_a_copied_passage_is_marked_and_the_rest_is_not() -> None:
    reference = "Return the number of items in the queue."
    text = "xyzzy number of items in qqqq"
    mask = copied_mask(text, ngram_set(reference, 10), 10)
    assert "".join(c for c, m in zip(text, mask, strict=True) if m) == " number of items in "
    assert longest_copied_span(text, reference) == " number of items in "


def test_short_texts_and_empty_sets() -> None:
    assert copied_mask("abc", ngram_set("abcdef", 5), 5).tolist() == [False] * 3
    assert copied_mask("", ngram_set("abc", 2), 2).shape == (0,)
    assert copied_mask("abc", set(), 2).tolist() == [False] * 3
    assert ngram_set("abc", 4) == set()
    assert ngram_set("abab", 2) == {"ab", "ba"}
    assert longest_copied_span("xyz", "abc") == ""


def test_bad_inputs_get_clear_errors() -> None:
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        ngram_set("abc", 0)
    with pytest.raises(TypeError, match="text must be a str"):
        ngram_set(["a", "b"], 1)
    with pytest.raises(TypeError, match="ngrams must be a set"):
        copied_mask("abc", ["ab"], 2)
    with pytest.raises(ValueError, match="strings of n = 3"):
        copied_mask("abcd", ngram_set("abcd", 2), 3)
    with pytest.raises(TypeError, match="reference must be a str"):
        longest_copied_span("abc", None)


def tiny_model() -> DecoderOnly:
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=7, d_model=16, n_heads=2, n_layers=1, d_ff=32, context_length=12
    )
    return DecoderOnly(config).eval()


def test_extractable_is_greedy_generation_reproducing_the_window() -> None:
    model = tiny_model()
    prompts = torch.randint(0, 7, (6, 4), generator=torch.Generator().manual_seed(1))
    greedy = generate(model, prompts, 5)  # (6, 9): windows the model writes itself
    assert extractable(model, greedy, 4).all()
    changed = greedy.clone()
    changed[:3, -1] = (changed[:3, -1] + 1) % 7  # one wrong last token
    assert extractable(model, changed, 4).tolist() == [False] * 3 + [True] * 3
    assert continued_length(model, changed, 4).tolist() == [4] * 3 + [5] * 3
    assert continued_length(model, changed, 4, batch_size=4).tolist() == [4] * 3 + [5] * 3
    changed[0, 4] = (changed[0, 4] + 1) % 7  # the first written token wrong
    assert continued_length(model, changed, 4)[0] == 0
    # With the whole window but one token as the prompt, only the last token is compared.
    assert extractable(model, changed, 8).tolist() == [False] * 3 + [True] * 3


def test_extractable_checks_its_inputs() -> None:
    model = tiny_model()
    windows = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="int64 token ids"):
        extractable(model, windows.float(), 4)
    with pytest.raises(ValueError, match="prefix_length < window length"):
        extractable(model, windows, 8)
    with pytest.raises(ValueError, match="context_length"):
        extractable(model, torch.zeros(2, 13, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="prefix_length must be an int"):
        extractable(model, windows, 0)
    with pytest.raises(ValueError, match="int64 token ids"):
        continued_length(model, windows[0], 4)
    with pytest.raises(ValueError, match="batch_size must be an int"):
        continued_length(model, windows, 4, batch_size=0)
