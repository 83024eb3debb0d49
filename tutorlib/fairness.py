"""Association tests for embeddings: WEAT (Caliskan, Bryson and Narayanan, 2017) and SEAT
(May et al., 2019).

The Word Embedding Association Test asks whether two sets of *target* words, X and Y (say male
and female first names), differ in how close their vectors lie to two sets of *attribute*
words, A and B (say career and family words). For one word w,

    s(w, A, B) = mean_{a in A} cos(w, a) - mean_{b in B} cos(w, b),

the test statistic is sum_{x in X} s(x, A, B) - sum_{y in Y} s(y, A, B), and the effect size is

    d = (mean_{x in X} s(x, A, B) - mean_{y in Y} s(y, A, B)) / std_{w in X u Y} s(w, A, B),

a standardised difference of means like Cohen's d. The paper writes "std-dev" without saying
which; we use the sample standard deviation (ddof = 1), as May et al.'s reference code does.
The p-value is that of a one-sided permutation test: the share of the ways to split X u Y into
two sets of sizes |X| and |Y| whose statistic is at least the observed one. When there are few
such splits, all are enumerated; otherwise a seeded random sample of them is drawn.

The Sentence Encoder Association Test runs the same test on sentence embeddings: each word
is put into a few "semantically bleached" template sentences ("This is a tulip.", "The tulip
is here." ...), and the sentences, not the words, are the members of X, Y, A and B.
``seat_sentences`` builds them with a subset of May et al.'s templates. The sentences made from
one word are near-copies, not independent observations, so a permutation test that reshuffles
single sentences gives p-values that are too small; ``weat(..., groups=...)`` moves each word
with all its sentences instead.

Book: 6.12 Limits and responsibility.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "SEAT_TEMPLATES",
    "WEATResult",
    "association",
    "seat_sentences",
    "weat",
    "weat_effect_size",
    "weat_p_value",
    "weat_statistic",
    "word_kind",
]


# --- Input checks -----------------------------------------------------------------------------


def _check_sets(**sets: Tensor) -> None:
    """Every set is a floating-point (n, d) tensor with n >= 2, and all share the width d."""
    width = None
    for name, vectors in sets.items():
        if not isinstance(vectors, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(vectors).__name__}")
        if not vectors.is_floating_point():
            raise TypeError(f"{name} must hold floating-point vectors, got {vectors.dtype}")
        if vectors.dim() != 2:
            raise ValueError(f"{name}: expected shape (n, d), got {tuple(vectors.shape)}")
        if vectors.shape[0] < 2:
            raise ValueError(f"{name} must hold at least 2 vectors, got {vectors.shape[0]}")
        if width is not None and vectors.shape[1] != width:
            raise ValueError(
                f"{name} has width {vectors.shape[1]}, the sets before it have width {width}"
            )
        width = vectors.shape[1]


def _cosines(W: Tensor, V: Tensor) -> Tensor:
    """cos(w, v) for every row w of W and v of V, in float64: (n, d), (m, d) -> (n, m)."""
    W = torch.nn.functional.normalize(W.double(), dim=-1)
    V = torch.nn.functional.normalize(V.double(), dim=-1)
    return W @ V.T  # (n, m)


# --- The statistic and the effect size --------------------------------------------------------


def association(W: Tensor, A: Tensor, B: Tensor) -> Tensor:
    """s(w, A, B) = mean_a cos(w, a) - mean_b cos(w, b) for every row w of W, in float64.

    Shapes:
        W (n, d), A (n_a, d), B (n_b, d)  ->  (n,)

    Book: 6.12 Limits and responsibility.
    """
    _check_sets(W=W, A=A, B=B)
    return _cosines(W, A).mean(1) - _cosines(W, B).mean(1)  # (n,)


def weat_statistic(X: Tensor, Y: Tensor, A: Tensor, B: Tensor) -> float:
    """Caliskan et al.'s test statistic, sum_x s(x, A, B) - sum_y s(y, A, B).

    Positive when X is closer to A (and Y to B) than the other way round.

    Shapes:
        X (n_x, d), Y (n_y, d), A (n_a, d), B (n_b, d)  ->  a float

    Book: 6.12 Limits and responsibility.
    """
    _check_sets(X=X, Y=Y, A=A, B=B)
    return float(association(X, A, B).sum() - association(Y, A, B).sum())


def weat_effect_size(X: Tensor, Y: Tensor, A: Tensor, B: Tensor) -> float:
    """The effect size d = (mean_x s - mean_y s) / std over X u Y of s, with s = s(w, A, B)
    and the sample standard deviation (ddof = 1, as in May et al.'s code). d lies in
    [-2, 2] for |X| = |Y|; swapping X and Y, or A and B, negates it.

    Shapes:
        X (n_x, d), Y (n_y, d), A (n_a, d), B (n_b, d)  ->  a float

    Book: 6.12 Limits and responsibility.
    """
    _check_sets(X=X, Y=Y, A=A, B=B)
    s_x, s_y = association(X, A, B), association(Y, A, B)  # (n_x,), (n_y,)
    return float((s_x.mean() - s_y.mean()) / torch.cat([s_x, s_y]).std(correction=1))


# --- The permutation test ---------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _all_splits(n: int, n_x: int) -> Tensor:
    """Every n_x-subset of range(n), one per row: (comb(n, n_x), n_x) int64."""
    return torch.tensor(list(itertools.combinations(range(n), n_x)))


def _group_sums(scores: Tensor, groups: Tensor, n_x: int) -> tuple[Tensor, int]:
    """The sum of the scores of each group, the groups of X first, and how many groups X has.
    Every group must lie wholly within X (rows < n_x) or wholly within Y."""
    if not isinstance(groups, Tensor) or groups.dtype != torch.long:
        got = groups.dtype if isinstance(groups, Tensor) else type(groups).__name__
        raise TypeError(f"groups must be an int64 tensor, got {got}")
    if groups.shape != scores.shape:
        raise ValueError(
            f"groups: expected shape {tuple(scores.shape)} (one label per row of X and Y), "
            f"got {tuple(groups.shape)}"
        )
    labels, inverse = torch.unique(groups.cpu(), return_inverse=True)  # (G,), (n,)
    sums = torch.zeros(len(labels), dtype=torch.float64).index_add_(0, inverse, scores)  # (G,)
    in_x = torch.zeros(len(labels), dtype=torch.long).index_add_(
        0, inverse, (torch.arange(len(scores)) < n_x).long()
    )  # (G,): members of each group that lie in X
    sizes = torch.bincount(inverse, minlength=len(labels))  # (G,)
    if ((in_x > 0) & (in_x < sizes)).any():
        raise ValueError("every group must lie wholly within X or wholly within Y")
    is_x = in_x > 0
    if is_x.sum() < 2 or (~is_x).sum() < 2:
        raise ValueError(
            f"X and Y need at least 2 groups each, got {int(is_x.sum())} and {int((~is_x).sum())}"
        )
    return torch.cat([sums[is_x], sums[~is_x]]), int(is_x.sum())


def weat_p_value(
    scores: Tensor, n_x: int, n_samples: int = 10_000, exact_limit: int = 100_000, seed: int = 0
) -> tuple[float, bool]:
    """One-sided permutation p-value of the WEAT statistic, from the scores s(w, A, B).

    `scores` holds s(w, A, B) for the members of X (the first `n_x`) followed by those of Y.
    Under the null hypothesis that X and Y do not differ in their association with A and B,
    every split of X u Y into sets of sizes |X| and |Y| is equally likely. Since the sum over
    X u Y is fixed, the statistic of a split is 2 sum_{X_i} s - sum_{X u Y} s, so a split
    counts when its sum over X_i is at least the observed sum over X (up to float rounding,
    1e-9 relative). If there are at most `exact_limit` splits, all are enumerated (the observed
    one among them) and p is the share that count; otherwise `n_samples` random splits are
    drawn with a seeded generator and p = (count + 1) / (n_samples + 1), which counts the
    observed split too and is never 0. Caliskan et al. count strictly larger statistics; we
    count ties as well, the conservative choice (as May et al.'s code does).

    Shapes:
        scores (n,) float, n = n_x + n_y, n_x >= 2, n_y >= 2  ->  (p in (0, 1], exact: bool)

    Book: 6.12 Limits and responsibility.
    """
    if not isinstance(scores, Tensor) or not scores.is_floating_point():
        got = scores.dtype if isinstance(scores, Tensor) else type(scores).__name__
        raise TypeError(f"scores must be a floating-point tensor, got {got}")
    if scores.dim() != 1:
        raise ValueError(f"scores: expected shape (n,), got {tuple(scores.shape)}")
    n = scores.shape[0]
    if not isinstance(n_x, int) or isinstance(n_x, bool) or not 2 <= n_x <= n - 2:
        raise ValueError(f"n_x must be an int with 2 <= n_x <= n - 2 = {n - 2}, got {n_x!r}")
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    scores = scores.double().cpu()
    observed = scores[:n_x].sum()
    tolerance = 1e-9 * (scores.abs().sum() + 1.0)
    if math.comb(n, n_x) <= exact_limit:
        splits = _all_splits(n, n_x)  # (comb(n, n_x), n_x): the members of X_i
        count = int((scores[splits].sum(1) >= observed - tolerance).sum())
        return count / splits.shape[0], True
    generator = torch.Generator().manual_seed(seed)
    count = 0
    for start in range(0, n_samples, 1000):  # in chunks, to keep the memory small
        rows = min(1000, n_samples - start)
        split = torch.rand(rows, n, generator=generator).argsort(dim=1)[:, :n_x]  # (rows, n_x)
        count += int((scores[split].sum(1) >= observed - tolerance).sum())
    return (count + 1) / (n_samples + 1), False


@dataclass(frozen=True)
class WEATResult:
    """One association test: the statistic, the effect size and the permutation p-value."""

    statistic: float  # sum_x s(x, A, B) - sum_y s(y, A, B)
    effect_size: float  # d, in [-2, 2] when |X| = |Y|
    p_value: float  # one-sided: the chance of a statistic this large under the null
    exact: bool  # True if every split was enumerated, False if they were sampled
    n_x: int  # members of X (words, or sentences for SEAT)
    n_y: int  # members of Y


def weat(
    X: Tensor,
    Y: Tensor,
    A: Tensor,
    B: Tensor,
    n_samples: int = 10_000,
    exact_limit: int = 100_000,
    seed: int = 0,
    groups: Tensor | None = None,
) -> WEATResult:
    """The whole test: statistic, effect size and one-sided permutation p-value (see
    `weat_p_value` for when the splits are enumerated and when they are sampled).

    The vectors need not be normalised; cosines are computed in float64.

    `groups`, if given, labels the rows of X and then Y (for SEAT: which word each template
    sentence was made from), and the permutation test moves whole groups between X and Y
    instead of single rows, which it needs when the rows of a group are not independent. Each
    group must lie wholly within X or within Y, and each side needs at least 2 groups. The
    statistic and the effect size do not change.

    Shapes:
        X (n_x, d), Y (n_y, d), A (n_a, d), B (n_b, d), every n >= 2;
        groups None or (n_x + n_y,) int64  ->  WEATResult

    Book: 6.12 Limits and responsibility.
    """
    _check_sets(X=X, Y=Y, A=A, B=B)
    scores = torch.cat([association(X, A, B), association(Y, A, B)])  # (n_x + n_y,)
    n_x = X.shape[0]
    if groups is not None:
        scores, n_x = _group_sums(scores, groups, n_x)  # (G,): one score sum per group
    p, exact = weat_p_value(scores, n_x, n_samples, exact_limit, seed)
    return WEATResult(
        statistic=weat_statistic(X, Y, A, B),
        effect_size=weat_effect_size(X, Y, A, B),
        p_value=p,
        exact=exact,
        n_x=X.shape[0],
        n_y=Y.shape[0],
    )


# --- SEAT: words in bleached sentences ----------------------------------------------------------

# Templates by kind of word, each a subset of those of May et al.'s script
# (sent-bias, scripts/generate_basic_contexts.py); "{a}" is "a" or "an".
SEAT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "name": ("This is {}.", "That is {}.", "{} is here.", "{} is there.", "{} is a person."),
    "noun": (
        "This is {a} {}.",
        "That is {a} {}.",
        "There is {a} {}.",
        "Here is {a} {}.",
        "The {} is here.",
        "The {} is there.",
    ),
    "plural": ("These are {}.", "Those are {}.", "They are {}.", "The {} are here."),
    "mass": ("This is {}.", "That is {}.", "There is {}.", "It is {}."),
    "adjective": ("This is {}.", "That is {}.", "They are {}."),
    "verb": ("This will {}.", "This can {}.", "That will {}.", "That can {}."),
    "subject": ("{} is here.", "{} is there.", "Here {} is.", "There {} is."),
    "object": ("It is {}.", "This is {}.", "That is {}."),
    "possessive": ("This is {}.", "That is {}.", "It is {}.", "{} is here."),
}

# The kinds of the words in Caliskan et al.'s lists that are not singular count nouns. May et
# al.'s lists, plus the abstract nouns of the math, science and arts lists, which their script
# put after "a" ("This is a math."); capitalised words count as names.
_KINDS = {
    "adjective": "loyal gentle honest lucky happy ugly rotten professional",
    "mass": "freedom health love peace cheer heaven pleasure laughter filth grief hatred poverty "
    "agony abuse sickness management business math algebra geometry calculus computation "
    "addition poetry art dance literature drama sculpture science technology physics "
    "chemistry astronomy",
    "plural": "parents children cousins relatives equations numbers",
    "verb": "pollute kill stink",
    "subject": "he she",
    "object": "him her",
    "possessive": "his hers",
}
_KIND_OF = {word: kind for kind, words in _KINDS.items() for word in words.split()}


def word_kind(word: str) -> str:
    """Which family of `SEAT_TEMPLATES` fits a word: "name" if it starts with a capital letter,
    the kind listed for the words of Caliskan et al.'s tests, else "noun".

    Book: 6.12 Limits and responsibility.
    """
    if not isinstance(word, str) or not word.strip():
        raise ValueError(f"word must be a non-empty str, got {word!r}")
    if word[0].isupper():
        return "name"
    return _KIND_OF.get(word, "noun")


def seat_sentences(word: str, kind: str | None = None) -> list[str]:
    """The template sentences of one word for SEAT, first letter capitalised.

    `kind` picks a family of `SEAT_TEMPLATES`; None guesses it with `word_kind`.

    Shapes:
        one word  ->  a list of 3 to 6 sentences

    Book: 6.12 Limits and responsibility.
    """
    kind = word_kind(word) if kind is None else kind
    if kind not in SEAT_TEMPLATES:
        raise ValueError(f"kind must be one of {sorted(SEAT_TEMPLATES)}, got {kind!r}")
    article = "an" if word[0].lower() in "aeiou" else "a"
    sentences = [t.replace("{a}", article).format(word) for t in SEAT_TEMPLATES[kind]]
    return [s[0].upper() + s[1:] for s in sentences]
