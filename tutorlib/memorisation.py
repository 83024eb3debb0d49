"""Memorisation and contamination: how much of a text is copied from a training text.

A language model trained on a corpus can reproduce pieces of it verbatim. Carlini et al.
(2021) extracted training sequences from GPT-2 by sampling from it and checking the samples
against the training data; Carlini et al. (2023) call a training sequence *extractable* when
the model, prompted with its first k tokens, continues it exactly by greedy decoding. The same
check, run on held-out text instead of samples, measures contamination: how much of an
evaluation set also appears in the training set (Brown et al. (2020) looked for 13-word
overlaps between GPT-3's training data and its benchmarks).

Everything here works on characters, the tokens of the chapter's GPT:

- `ngram_set(text, n)`: every n-character substring of a (training) text;
- `copied_mask(text, ngrams, n)`: which characters of a text lie inside an n-character window
  that also occurs in the training text, i.e. inside a copied span of at least n characters;
- `longest_copied_span(text, reference)`: the longest substring of `text` found in `reference`;
- `continued_length(model, windows, prefix_length)`: how many token ids of each window greedy
  decoding gets right after the window's first `prefix_length`, before its first mistake;
- `extractable(model, windows, prefix_length)`: which windows it continues exactly to the end.

Book: 6.12 Limits and responsibility (Memorisation and contamination).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tutorlib.inference import generate
from tutorlib.models import DecoderOnly

__all__ = ["continued_length", "copied_mask", "extractable", "longest_copied_span", "ngram_set"]


def _check_text(text: object, name: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")


def _check_length(n: object, name: str = "n") -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{name} must be an int >= 1, got {n!r}")


def ngram_set(text: str, n: int) -> set[str]:
    """Every substring of `n` characters of `text` (len(text) - n + 1 windows, fewer distinct).

    For the chapter's 1.1 million training characters and n = 50 the set holds about a
    million strings and takes about 150 MB; build one length at a time.
    """
    _check_text(text, "text")
    _check_length(n)
    return {text[i : i + n] for i in range(len(text) - n + 1)}


def copied_mask(text: str, ngrams: set[str], n: int) -> Tensor:
    """Which characters of `text` lie in a copied span of at least `n` characters.

    A span of length >= n is copied when it occurs in the reference text; every such span is
    covered by its n-character windows, each of which is then in `ngrams` (= `ngram_set(
    reference, n)`), and every window found in `ngrams` is such a span. So character j is
    marked when some window text[i : i + n] with i <= j < i + n is in `ngrams`.

    Shapes:
        text of L characters  ->  (L,) bool
    """
    _check_text(text, "text")
    _check_length(n)
    if not isinstance(ngrams, set):
        raise TypeError(f"ngrams must be a set (from ngram_set), got {type(ngrams).__name__}")
    some = next(iter(ngrams), None)
    if some is not None and (not isinstance(some, str) or len(some) != n):
        raise ValueError(f"ngrams must hold strings of n = {n} characters, got {some!r}")
    starts = torch.tensor(
        [text[i : i + n] in ngrams for i in range(len(text) - n + 1)], dtype=torch.long
    )  # (L - n + 1,): 1 where a copied window starts
    if len(starts) == 0:
        return torch.zeros(len(text), dtype=torch.bool)
    # Character j is covered when a copied window starts in [j - n + 1, j]: a running count.
    count = torch.cat([starts.new_zeros(1), starts.cumsum(0)])  # (L - n + 2,)
    j = torch.arange(len(text))
    last = torch.clamp(j + 1, max=len(starts))  # windows starting before j + 1 ...
    first = torch.clamp(j - n + 1, min=0)  # ... and at j - n + 1 or later
    return count[last] - count[first] > 0


def longest_copied_span(text: str, reference: str) -> str:
    """The longest substring of `text` that occurs in `reference` (the first, if several).

    Matching statistics: the longest match starting at i + 1 is at least the one at i minus
    one character, so each position resumes where the last one stopped; about 2 len(text)
    substring searches in all.
    """
    _check_text(text, "text")
    _check_text(reference, "reference")
    best, length = "", 0
    for i in range(len(text)):
        length = max(length - 1, 0)
        while i + length < len(text) and text[i : i + length + 1] in reference:
            length += 1
        if length > len(best):
            best = text[i : i + length]
    return best


@torch.no_grad()
def continued_length(
    model: DecoderOnly, windows: Tensor, prefix_length: int, batch_size: int = 200
) -> Tensor:
    """How many ids of each window greedy decoding gets right after its first `prefix_length`:
    prompted with the prefix, the model writes the rest of the window's length, and the count
    stops at its first mistake. Windows are decoded `batch_size` at a time, which bounds the
    memory the activations take.

    Shapes:
        windows (B, L) int64, 1 <= prefix_length < L <= context_length  ->  (B,) int64 in
        [0, L - prefix_length]
    """
    if not isinstance(windows, Tensor) or windows.dim() != 2 or windows.dtype != torch.long:
        raise ValueError("windows: expected int64 token ids of shape (batch, length)")
    _check_length(prefix_length, "prefix_length")
    length = windows.shape[1]
    if not prefix_length < length <= model.config.context_length:
        raise ValueError(
            f"need prefix_length < window length <= context_length; got {prefix_length}, "
            f"{length} and {model.config.context_length}"
        )
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    windows = windows.to(next(model.parameters()).device)
    counts = []
    for batch in windows.split(batch_size):  # (b, L) each
        written = generate(model, batch[:, :prefix_length], length - prefix_length)  # (b, L)
        right = written[:, prefix_length:] == batch[:, prefix_length:]  # (b, L - prefix_length)
        counts.append(right.long().cumprod(dim=1).sum(dim=1))  # right until the first mistake
    return torch.cat(counts)


def extractable(model: DecoderOnly, windows: Tensor, prefix_length: int) -> Tensor:
    """Which windows the model continues exactly: prompted with a window's first
    `prefix_length` ids, greedy decoding writes the rest of it (Carlini et al., 2023).

    Shapes:
        windows (B, L) int64, 1 <= prefix_length < L <= context_length  ->  (B,) bool
    """
    return continued_length(model, windows, prefix_length) == windows.shape[1] - prefix_length
