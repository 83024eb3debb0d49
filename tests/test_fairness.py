"""Association tests (6.12): WEAT's statistic and effect size against a direct numpy/scipy
computation, the exact permutation p-value against brute-force enumeration with itertools,
the sampled p-value against the exact one, the symmetries of d, a planted association and a
null one, the grouped permutation test, SEAT's sentences, and clear errors at the boundary."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from tutorlib.fairness import (
    SEAT_TEMPLATES,
    association,
    seat_sentences,
    weat,
    weat_effect_size,
    weat_p_value,
    weat_statistic,
    word_kind,
)


def random_sets(seed: int, sizes=(6, 6, 5, 7), d: int = 10) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=generator, dtype=torch.float64) for n in sizes]


def numpy_scores(W: np.ndarray, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """s(w, A, B) with scipy's cosine distance: cos = 1 - distance."""
    return (1 - cdist(W, A, "cosine")).mean(1) - (1 - cdist(W, B, "cosine")).mean(1)


def brute_force_p(s: np.ndarray, n_x: int) -> float:
    """Caliskan et al.'s test over every split, written out with itertools and the full
    statistic sum_{X_i} s - sum_{Y_i} s (ties counted, as in tutorlib)."""
    observed = s[:n_x].sum() - s[n_x:].sum()
    stats = []
    for chosen in itertools.combinations(range(len(s)), n_x):
        in_x = np.zeros(len(s), dtype=bool)
        in_x[list(chosen)] = True
        stats.append(s[in_x].sum() - s[~in_x].sum())
    return float(np.mean(np.array(stats) >= observed - 1e-12))


# --- The statistic and the effect size --------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_statistic_and_effect_size_match_a_direct_numpy_computation(seed: int) -> None:
    X, Y, A, B = random_sets(seed)
    s_x, s_y = (numpy_scores(T.numpy(), A.numpy(), B.numpy()) for T in (X, Y))
    np.testing.assert_allclose(association(X, A, B).numpy(), s_x, rtol=1e-10, atol=1e-12)
    assert weat_statistic(X, Y, A, B) == pytest.approx(s_x.sum() - s_y.sum(), rel=1e-10)
    d = (s_x.mean() - s_y.mean()) / np.std(np.concatenate([s_x, s_y]), ddof=1)
    assert weat_effect_size(X, Y, A, B) == pytest.approx(d, rel=1e-10)


def test_effect_size_uses_the_sample_standard_deviation() -> None:
    X, Y, A, B = random_sets(3)
    s = np.concatenate([numpy_scores(T.numpy(), A.numpy(), B.numpy()) for T in (X, Y)])
    biased = (s[:6].mean() - s[6:].mean()) / np.std(s, ddof=0)
    assert weat_effect_size(X, Y, A, B) != pytest.approx(biased, rel=1e-6)


def test_vectors_need_not_be_normalised_and_float32_works() -> None:
    X, Y, A, B = random_sets(4)
    scaled = [T * torch.rand(T.shape[0], 1, dtype=T.dtype).add(0.5) * 7 for T in (X, Y, A, B)]
    assert weat_effect_size(*scaled) == pytest.approx(weat_effect_size(X, Y, A, B), rel=1e-9)
    as_float = [T.float() for T in (X, Y, A, B)]
    assert weat_effect_size(*as_float) == pytest.approx(weat_effect_size(X, Y, A, B), rel=1e-5)


def test_swapping_the_targets_or_the_attributes_negates_d_and_the_statistic() -> None:
    X, Y, A, B = random_sets(5)
    d = weat_effect_size(X, Y, A, B)
    assert weat_effect_size(Y, X, A, B) == pytest.approx(-d, rel=1e-12)
    assert weat_effect_size(X, Y, B, A) == pytest.approx(-d, rel=1e-12)
    assert weat_effect_size(Y, X, B, A) == pytest.approx(d, rel=1e-12)
    assert weat_statistic(X, Y, B, A) == pytest.approx(-weat_statistic(X, Y, A, B), rel=1e-12)


def test_effect_size_is_bounded_by_two_for_equal_sizes() -> None:
    # All of X at one point near A, all of Y at one near B: |d| approaches its bound 2.
    A, B = torch.eye(4)[:2].double() + 0.01, torch.eye(4)[2:].double()
    X, Y = A[:1].repeat(5, 1) + 1e-3 * torch.randn(5, 4, dtype=torch.float64), B[:1].repeat(5, 1)
    d = weat_effect_size(X, Y, A, B)
    assert 1.8 < d < 2.0


# --- The permutation test ---------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [(5, 5), (6, 4), (4, 6)])
def test_exact_p_value_matches_brute_force_enumeration(sizes: tuple[int, int]) -> None:
    X, Y, A, B = random_sets(6, sizes=(*sizes, 5, 5))
    s = np.concatenate([numpy_scores(T.numpy(), A.numpy(), B.numpy()) for T in (X, Y)])
    result = weat(X, Y, A, B)
    assert result.exact and (result.n_x, result.n_y) == sizes
    assert result.p_value == pytest.approx(brute_force_p(s, sizes[0]), abs=1e-12)
    # The smallest possible p: the observed split alone out of comb(n, n_x).
    assert result.p_value >= 1 / math.comb(sum(sizes), sizes[0])


def test_sampled_p_value_is_close_to_the_exact_one_and_seeded() -> None:
    generator = torch.Generator().manual_seed(7)
    scores = torch.randn(16, generator=generator, dtype=torch.float64)
    scores[:8] += 0.4  # a moderate association: p somewhere in the middle
    exact, is_exact = weat_p_value(scores, 8)
    sampled, is_sampled_exact = weat_p_value(scores, 8, n_samples=20_000, exact_limit=0, seed=1)
    assert is_exact and not is_sampled_exact
    assert 0.005 < exact < 0.5
    standard_error = math.sqrt(exact * (1 - exact) / 20_000)
    assert abs(sampled - exact) < 4 * standard_error
    assert weat_p_value(scores, 8, n_samples=500, exact_limit=0, seed=3) == weat_p_value(
        scores, 8, n_samples=500, exact_limit=0, seed=3
    )
    # (count + 1) / (n + 1): never 0, even for an extreme split.
    extreme = torch.cat([torch.full((20,), 5.0), torch.zeros(20)]).double()
    p, _ = weat_p_value(extreme, 20, n_samples=999, exact_limit=0)
    assert p == pytest.approx(1 / 1000)


def test_ties_count_so_a_constant_score_gives_p_one() -> None:
    p, exact = weat_p_value(torch.ones(10, dtype=torch.float64), 5)
    assert exact and p == 1.0


def test_a_planted_association_gives_a_large_d_and_a_small_p() -> None:
    generator = torch.Generator().manual_seed(8)
    d_model, direction = 32, torch.zeros(32, dtype=torch.float64)
    direction[0] = 1.0

    def noise(n: int) -> torch.Tensor:
        return torch.randn(n, d_model, generator=generator, dtype=torch.float64)

    A, B = noise(8) + 2 * direction, noise(8) - 2 * direction
    X, Y = noise(12) + 1.5 * direction, noise(12) - 1.5 * direction
    result = weat(X, Y, A, B, n_samples=5_000)
    assert not result.exact  # comb(24, 12) = 2.7 million splits: sampled
    assert result.effect_size > 1.5
    assert result.p_value == pytest.approx(1 / 5_001)


def test_null_p_values_are_roughly_uniform() -> None:
    generator = torch.Generator().manual_seed(9)
    p_values = []
    for seed in range(200):
        X, Y, A, B = (torch.randn(n, 16, generator=generator) for n in (8, 8, 8, 8))
        p_values.append(weat(X, Y, A, B, n_samples=500, exact_limit=0, seed=seed).p_value)
    p = np.array(p_values)
    assert 0.01 <= np.mean(p < 0.05) <= 0.11
    assert 0.40 <= np.mean(p < 0.5) <= 0.60
    assert abs(p.mean() - 0.5) < 0.06


def test_grouped_test_moves_whole_groups() -> None:
    """Each word in 3 near-identical sentences: the grouped p equals the p of the words."""
    X, Y, A, B = random_sets(10, sizes=(5, 5, 6, 6))
    generator = torch.Generator().manual_seed(0)
    jitter = 1e-3 * torch.randn(30, 10, generator=generator, dtype=torch.float64)
    Xs, Ys = (T.repeat_interleave(3, dim=0) + j for T, j in ((X, jitter[:15]), (Y, jitter[15:])))
    groups = torch.arange(10).repeat_interleave(3)  # (30,): words 0-4 in X, 5-9 in Y
    words = weat(X, Y, A, B)
    grouped = weat(Xs, Ys, A, B, groups=groups)
    assert grouped.exact and (grouped.n_x, grouped.n_y) == (15, 15)
    assert grouped.p_value == pytest.approx(words.p_value, abs=1e-12)
    # Labels need not be 0..G-1 nor sorted; only which rows share one matters.
    relabelled = weat(Xs, Ys, A, B, groups=100 - 7 * groups)
    assert relabelled.p_value == grouped.p_value
    # Treating the 30 sentences as independent pushes p further from 1/2 (here towards 1).
    independent = weat(Xs, Ys, A, B, n_samples=2_000).p_value
    assert abs(independent - 0.5) > abs(grouped.p_value - 0.5) + 0.05


# --- SEAT sentences ---------------------------------------------------------------------------


def test_seat_sentences_pick_the_templates_of_each_kind_of_word() -> None:
    assert word_kind("Kate") == "name" and word_kind("tulip") == "noun"
    assert word_kind("he") == "subject" and word_kind("children") == "plural"
    assert seat_sentences("aster")[:2] == ["This is an aster.", "That is an aster."]
    assert seat_sentences("Amy")[2] == "Amy is here."
    assert seat_sentences("he")[0] == "He is here."
    assert seat_sentences("math") == ["This is math.", "That is math.", "There is math.",
                                      "It is math."]  # fmt: skip
    assert seat_sentences("kill", kind="verb")[0] == "This will kill."
    assert all(len(seat_sentences("x", kind=k)) == len(t) for k, t in SEAT_TEMPLATES.items())
    with pytest.raises(ValueError, match="kind must be one of"):
        seat_sentences("tulip", kind="adverb")
    with pytest.raises(ValueError, match="non-empty str"):
        word_kind("")


# --- Bad inputs -------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors() -> None:
    X, Y, A, B = random_sets(11)
    with pytest.raises(ValueError, match=r"X: expected shape \(n, d\)"):
        weat(X[0], Y, A, B)
    with pytest.raises(ValueError, match=r"expected shape \(n, d\)"):
        weat_effect_size(X, Y, A[None], B)
    with pytest.raises(ValueError, match="B has width 9"):
        weat_statistic(X, Y, A, B[:, :9])
    with pytest.raises(ValueError, match="Y must hold at least 2 vectors"):
        weat(X, Y[:1], A, B)
    with pytest.raises(TypeError, match="floating-point"):
        association(X.long(), A, B)
    with pytest.raises(TypeError, match="torch.Tensor"):
        weat(X.numpy(), Y, A, B)
    with pytest.raises(TypeError, match="floating-point"):
        weat_p_value(torch.arange(10), 5)
    with pytest.raises(ValueError, match="n_x must be"):
        weat_p_value(torch.rand(10), 9)
    with pytest.raises(ValueError, match="n_samples"):
        weat_p_value(torch.rand(10), 5, n_samples=0)
    groups = torch.arange(12)
    with pytest.raises(TypeError, match="int64"):
        weat(X, Y, A, B, groups=groups.float())
    with pytest.raises(ValueError, match="one label per row"):
        weat(X, Y, A, B, groups=groups[:11])
    with pytest.raises(ValueError, match="wholly within X"):
        weat(X, Y, A, B, groups=torch.tensor([0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5]))
    with pytest.raises(ValueError, match="at least 2 groups"):
        weat(X, Y, A, B, groups=torch.tensor([0] * 6 + [1, 1, 2, 2, 3, 3]))
