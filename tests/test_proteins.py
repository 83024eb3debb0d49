"""Protein language models (5.8): the Potts model and its Gibbs sampler against exact
enumeration, the planted contact maps, the masking rule, the attention recorder against the
model's own computation, APC and mutual information against direct formulas, precision at k
on hand cases, seeded determinism and clear errors at the boundary."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score

from tutorlib.models import EncoderOnly, TransformerConfig
from tutorlib.proteins import (
    AMINO_ACIDS,
    PottsModel,
    apc,
    attention_contact_scores,
    attention_maps,
    contact_density,
    decode,
    encode,
    gibbs_sample,
    mlm_batch,
    mutual_information,
    pair_features,
    planted_contacts,
    precision_at_k,
    random_potts,
    symmetrize,
)


def tiny_potts() -> PottsModel:
    """L = 3, q = 2, every pair coupled (a triangle: the sampler can never redraw two sites at
    once), two ferromagnetic pairs and one antiferromagnetic pair (frustrated), so that the
    sites are far from independent."""
    fields = np.array([[0.3, -0.3], [0.0, 0.2], [-0.1, 0.1]])
    couplings = np.zeros((3, 3, 2, 2))
    for (i, j), strength in (((0, 1), 0.9), ((1, 2), 0.8), ((0, 2), -0.5)):
        block = strength * np.array([[1.0, -1.0], [-1.0, 1.0]]) + np.array([[0.0, 0.3], [0, 0]])
        couplings[i, j], couplings[j, i] = block, block.T
    return PottsModel(fields, couplings, ~np.eye(3, dtype=bool))


def exact_distribution(model: PottsModel) -> dict[tuple[int, ...], float]:
    """P(s) by enumerating all q^L sequences, written out without numpy's vectorisation."""
    L, q = model.length, model.n_states
    weights = {}
    for s in itertools.product(range(q), repeat=L):
        log_w = sum(model.fields[i, s[i]] for i in range(L))
        log_w += sum(model.couplings[i, j, s[i], s[j]] for i in range(L) for j in range(i + 1, L))
        weights[s] = math.exp(log_w)
    Z = sum(weights.values())
    return {s: w / Z for s, w in weights.items()}


# --- The Potts model and the sampler -------------------------------------------------------------


def test_gibbs_samples_the_exact_distribution_of_a_tiny_model() -> None:
    model = tiny_potts()
    exact = exact_distribution(model)
    samples = gibbs_sample(model, n_chains=4000, burn_in=20, thin=3, samples_per_chain=5, seed=0)
    assert samples.shape == (20000, 3) and samples.dtype == np.int64
    counts = {s: 0 for s in exact}
    for row in map(tuple, samples.tolist()):
        counts[row] += 1
    tv = 0.5 * sum(abs(counts[s] / len(samples) - p) for s, p in exact.items())
    # 8 states and 20,000 draws: sampling noise alone gives a TV of about 0.01.
    assert tv < 0.02, f"total variation {tv:.4f} between Gibbs samples and the exact law"
    # The model is far from independent sites, so the test has teeth: the product of the
    # exact marginals is much further from the exact law.
    marg = [[sum(p for s, p in exact.items() if s[i] == a) for a in range(2)] for i in range(3)]
    product = {s: marg[0][s[0]] * marg[1][s[1]] * marg[2][s[2]] for s in exact}
    assert 0.5 * sum(abs(product[s] - exact[s]) for s in exact) > 0.15


def test_one_sweep_from_the_exact_law_stays_there() -> None:
    """Invariance: chains started from exact samples are still exact after one sweep
    (burn_in=0), while chains started from one fixed sequence are not yet."""
    model = tiny_potts()
    exact = exact_distribution(model)
    states = list(exact)
    target = np.array([exact[s] for s in states])
    rng = np.random.default_rng(1)
    start = np.array(states)[rng.choice(len(states), size=20000, p=target)]  # (N, 3)
    index = {s: k for k, s in enumerate(states)}

    def tv(samples: np.ndarray) -> float:
        counts = np.bincount([index[tuple(r)] for r in samples.tolist()], minlength=len(states))
        return 0.5 * float(np.abs(counts / len(samples) - target).sum())

    assert tv(gibbs_sample(model, 20000, burn_in=0, seed=2, initial=start)) < 0.02
    fixed = np.zeros((20000, 3), dtype=np.int64)
    assert tv(gibbs_sample(model, 20000, burn_in=0, seed=2, initial=fixed)) > 0.05
    assert tv(gibbs_sample(model, 20000, burn_in=10, seed=2, initial=fixed)) < 0.02
    np.testing.assert_array_equal(fixed, 0)  # the initial states are copied, not overwritten


def test_log_weight_matches_the_formula() -> None:
    model = random_potts(planted_contacts(20, 2, 3, 2, seed=1), n_states=4, seed=1)
    s = np.random.default_rng(0).integers(0, 4, size=(5, 20))
    expected = [
        sum(model.fields[i, x[i]] for i in range(20))
        + sum(model.couplings[i, j, x[i], x[j]] for i in range(20) for j in range(i + 1, 20))
        for x in s
    ]
    np.testing.assert_allclose(model.log_weight(s), expected)


def test_conditional_log_probs_match_enumeration() -> None:
    model = tiny_potts()
    exact = exact_distribution(model)
    s = np.array([[0, 1, 1], [1, 0, 0], [1, 1, 0]])
    got = model.conditional_log_probs(s)
    assert got.shape == (3, 3, 2)
    for n, row in enumerate(s.tolist()):
        for i in range(3):
            joint = [exact[tuple(row[:i] + [a] + row[i + 1 :])] for a in range(2)]
            np.testing.assert_allclose(np.exp(got[n, i]), np.array(joint) / sum(joint))


def test_gibbs_redraws_a_colour_class_at_once_correctly() -> None:
    """A path 0 - 1 - 2 - 3 with q = 3: the sampler redraws sites {0, 2} and then {1, 3}
    together; its samples must still follow the exact law."""
    contacts = np.zeros((4, 4), dtype=bool)
    for i in range(3):
        contacts[i, i + 1] = contacts[i + 1, i] = True
    model = random_potts(contacts, n_states=3, coupling=1.0, field=0.5, seed=5)
    exact = exact_distribution(model)
    samples = gibbs_sample(model, 10000, burn_in=10, thin=2, samples_per_chain=3, seed=1)
    counts = {st: 0 for st in exact}
    for row in map(tuple, samples.tolist()):
        counts[row] += 1
    tv = 0.5 * sum(abs(counts[st] / len(samples) - p) for st, p in exact.items())
    assert tv < 0.03, f"total variation {tv:.4f}"  # 81 states, 30,000 draws: noise about 0.02


def test_couplings_are_symmetric_and_only_on_contacts() -> None:
    contacts = planted_contacts(40, seed=4)
    model = random_potts(contacts, n_states=20, coupling=2.0, seed=4)
    J = model.couplings
    np.testing.assert_array_equal(J, J.transpose(1, 0, 3, 2))  # J_ij(a, b) = J_ji(b, a)
    nonzero = np.abs(J).sum(axis=(2, 3)) > 0
    np.testing.assert_array_equal(nonzero, contacts)
    assert J[contacts].std() == pytest.approx(2.0, rel=0.1)


def test_planted_contacts_look_like_strand_pairings() -> None:
    c = planted_contacts(48, n_strand_pairs=3, strand_length=5, n_random=4, seed=0)
    assert c.dtype == bool and (c == c.T).all() and not c.diagonal().any()
    i, j = np.nonzero(np.triu(c))
    assert (j - i >= 6).all()
    assert len(i) == 3 * 5 + 4
    # Each strand pairing is an anti-diagonal ladder: (i, j) -> (i + 1, j - 1) is a contact.
    ladders = sum(bool(c[a + 1, b - 1]) for a, b in zip(i, j, strict=True) if a + 1 < 48 and b >= 1)
    assert ladders >= 3 * 4
    np.testing.assert_array_equal(c, planted_contacts(48, seed=0))
    assert not np.array_equal(c, planted_contacts(48, seed=1))


def test_sampler_is_seeded() -> None:
    model = random_potts(planted_contacts(24, 2, 3, 2, seed=0), n_states=5, seed=0)
    a = gibbs_sample(model, 50, burn_in=5, thin=2, samples_per_chain=3, seed=7)
    np.testing.assert_array_equal(a, gibbs_sample(model, 50, 5, 2, 3, seed=7))
    assert not np.array_equal(a, gibbs_sample(model, 50, 5, 2, 3, seed=8))
    assert a.shape == (150, 24) and a.min() >= 0 and a.max() < 5


# --- Tokens and masking --------------------------------------------------------------------------


def test_encode_decode_round_trip() -> None:
    assert len(AMINO_ACIDS) == 20
    ids = encode("MKVLA")
    assert ids.dtype == torch.long and ids.tolist() == [10, 8, 17, 9, 0]
    assert decode(ids) == "MKVLA"
    with pytest.raises(ValueError, match="not amino-acid"):
        encode("MKXB")
    with pytest.raises(ValueError):
        decode(np.array([0, 20]))


def test_mlm_batch_masks_fifteen_percent_eighty_ten_ten() -> None:
    seqs = torch.randint(0, 20, (500, 40), generator=torch.Generator().manual_seed(0))
    inputs, labels = mlm_batch(seqs, 4000, mask_id=20, generator=torch.Generator().manual_seed(1))
    assert inputs.shape == labels.shape == (4000, 40)
    selected = labels != -100
    assert abs(selected.float().mean().item() - 0.15) < 0.005
    # Unselected positions are unchanged: find each row's original by its labels and inputs.
    kept = inputs[~selected]
    assert (kept < 20).all()
    masked = (inputs == 20) & selected
    changed = (
        (inputs != labels) & selected & ~masked
    )  # a random amino acid (may equal the original)
    same = (inputs == labels) & selected
    n = selected.sum().item()
    assert abs(masked.sum().item() / n - 0.8) < 0.02
    # 10 % random letters, of which 1/20 hit the original letter; 10 % left as they are.
    assert abs(changed.sum().item() / n - 0.1 * 19 / 20) < 0.015
    assert abs(same.sum().item() / n - (0.1 + 0.1 / 20)) < 0.015
    assert not (inputs == 20)[~selected].any()


def test_mlm_batch_is_seeded_and_checks_its_inputs() -> None:
    seqs = torch.randint(0, 20, (30, 12), generator=torch.Generator().manual_seed(0))
    a = mlm_batch(seqs, 8, 20, torch.Generator().manual_seed(3))
    b = mlm_batch(seqs, 8, 20, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="reserved"):
        mlm_batch(seqs, 8, 5, torch.Generator())
    with pytest.raises(TypeError, match="int64"):
        mlm_batch(seqs.float(), 8, 20, torch.Generator())


# --- Attention maps and contact scores -----------------------------------------------------------


@pytest.fixture(scope="module")
def encoder() -> EncoderOnly:
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=21, context_length=16, d_model=16, n_heads=4, n_layers=2, d_ff=32,
        norm_first=True, positional="learned", tie_weights=False,
    )  # fmt: skip
    return EncoderOnly(config).double().eval()


def test_attention_maps_reproduce_the_first_layer_by_hand(encoder: EncoderOnly) -> None:
    tokens = torch.randint(0, 20, (3, 16), generator=torch.Generator().manual_seed(1))
    maps = attention_maps(encoder, tokens)
    assert maps.shape == (3, 2, 4, 16, 16)
    torch.testing.assert_close(maps.sum(-1), torch.ones(3, 2, 4, 16, dtype=maps.dtype))
    layer = encoder.encoder.layers[0]
    with torch.no_grad():
        x = layer.norm1(encoder.encoder.embed(tokens))  # (B, T, C)
        w_q, w_k, _ = layer.self_attn.in_proj_weight.split(16)
        b_q, b_k, _ = layer.self_attn.in_proj_bias.split(16)
        q = (x @ w_q.T + b_q).view(3, 16, 4, 4).transpose(1, 2)  # (B, H, T, D)
        k = (x @ w_k.T + b_k).view(3, 16, 4, 4).transpose(1, 2)
        expected = (q @ k.transpose(-1, -2) / 2.0).softmax(-1)  # sqrt(D) = 2
    torch.testing.assert_close(maps[:, 0], expected)
    # The hooks are gone: the model runs as before and still returns only logits.
    assert not any(layer.self_attn._forward_hooks for layer in encoder.encoder.layers)
    assert encoder(tokens).shape == (3, 16, 21)
    with pytest.raises(TypeError, match="EncoderOnly"):
        attention_maps(torch.nn.Linear(2, 2), tokens)


def test_apc_against_the_direct_formula() -> None:
    x = torch.rand(7, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    L = 7
    expected = torch.zeros(L, L, dtype=torch.float64)
    off = [(a, b) for a in range(L) for b in range(L) if a != b]
    mean_all = sum(x[a, b] for a, b in off) / len(off)
    for i, j in off:
        row = sum(x[i, b] for b in range(L) if b != i) / (L - 1)
        col = sum(x[a, j] for a in range(L) if a != j) / (L - 1)
        expected[i, j] = x[i, j] - row * col / mean_all
    torch.testing.assert_close(apc(x), expected)
    # Batched over leading dimensions, one matrix at a time.
    stack = torch.rand(2, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(apc(stack)[1, 2], apc(stack[1, 2]))


def test_contact_scores_symmetrize_then_apc() -> None:
    maps = torch.rand(2, 3, 4, 9, 9, generator=torch.Generator().manual_seed(2))
    scores = attention_contact_scores(maps)
    assert scores.shape == (2, 12, 9, 9)
    torch.testing.assert_close(scores[1, 4 + 2], apc(maps[1, 1, 2] + maps[1, 1, 2].T))
    torch.testing.assert_close(scores, scores.transpose(-1, -2))
    torch.testing.assert_close(symmetrize(maps[0, 0, 0]), maps[0, 0, 0] + maps[0, 0, 0].T)
    features, pairs = pair_features(scores[0], min_separation=6)
    assert features.shape == (6, 12) and pairs.tolist()[0] == [0, 6]  # pairs at separation >= 6
    torch.testing.assert_close(features[-1], scores[0, :, 2, 8])


def test_mutual_information_against_sklearn() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, 3000)
    seqs = np.stack([a, (a + (rng.random(3000) < 0.3)) % 4, rng.integers(0, 4, 3000)], axis=1)
    mi = mutual_information(seqs, n_states=4, pseudocount=0.0)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert mi[i, j] == pytest.approx(mutual_info_score(seqs[:, i], seqs[:, j]), abs=1e-10)
    np.testing.assert_allclose(mi, mi.T)
    assert mi[0, 1] > 0.5 and mi[0, 2] < 0.01 and (np.diag(mi) == 0).all()


# --- Precision at k ------------------------------------------------------------------------------


def test_precision_at_k_on_a_hand_case() -> None:
    L = 10
    contacts = np.zeros((L, L), dtype=bool)
    for i, j in ((0, 7), (1, 9), (2, 8)):
        contacts[i, j] = contacts[j, i] = True
    scores = np.zeros((L, L))
    scores[0, 7] = 5.0  # a contact, ranked first
    scores[0, 6] = 4.0  # not a contact, second
    scores[1, 9] = 3.0  # a contact, third
    scores[3, 4] = 9.0  # the best score, but |i - j| = 1 < 6: never counted
    scores[8, 2] = 8.0  # lower triangle: read from the upper triangle only (scores[2, 8] = 0)
    assert precision_at_k(scores, contacts, 1) == 1.0
    assert precision_at_k(scores, contacts, 2) == 0.5
    assert precision_at_k(scores, contacts, 3) == pytest.approx(2 / 3)
    assert precision_at_k(torch.tensor(scores), contacts, 3) == pytest.approx(2 / 3)
    # Pairs i < j with j - i >= 6 in L = 10: 4 + 3 + 2 + 1 = 10, of which 3 are contacts.
    assert contact_density(contacts) == pytest.approx(3 / 10)
    assert precision_at_k(scores, contacts, 10) == pytest.approx(3 / 10)


def test_random_scores_average_the_contact_density() -> None:
    contacts = planted_contacts(48, seed=2)
    rng = np.random.default_rng(0)
    mean = np.mean([precision_at_k(rng.random((48, 48)), contacts, 9) for _ in range(2000)])
    assert mean == pytest.approx(contact_density(contacts), abs=0.005)


# --- Bad inputs ----------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors() -> None:
    model = tiny_potts()
    J = model.couplings.copy()
    J[0, 1, 0, 1] += 1.0  # breaks J_01(a, b) = J_10(b, a)
    with pytest.raises(ValueError, match="J\\[i, j, a, b\\] == J\\[j, i, b, a\\]"):
        PottsModel(model.fields, J, model.contacts)
    with pytest.raises(ValueError, match="couplings: expected"):
        PottsModel(model.fields, J[:2], model.contacts)
    with pytest.raises(TypeError, match="integer"):
        model.log_weight(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="ids in"):
        model.log_weight(np.full((2, 3), 2))
    with pytest.raises(ValueError, match="expected"):
        model.log_weight(np.zeros((2, 4), dtype=int))
    with pytest.raises(ValueError, match="n_chains"):
        gibbs_sample(model, 0)
    with pytest.raises(TypeError, match="PottsModel"):
        gibbs_sample("not a model", 10)
    with pytest.raises(ValueError, match="initial: expected 4 rows"):
        gibbs_sample(model, 4, initial=np.zeros((3, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="symmetric"):
        random_potts(np.triu(np.ones((8, 8), dtype=bool), 1))
    with pytest.raises(ValueError, match="do not fit"):
        planted_contacts(20, n_strand_pairs=3, strand_length=5)
    with pytest.raises(TypeError, match="floating-point"):
        apc(torch.ones(5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(\.\.\., L, L\)"):
        apc(torch.ones(5, 4))
    with pytest.raises(ValueError, match="k must be"):
        precision_at_k(np.zeros((10, 10)), np.zeros((10, 10), dtype=bool), 11)
    with pytest.raises(ValueError, match="bool contacts"):
        precision_at_k(np.zeros((10, 10)), np.zeros((10, 10)), 1)
    with pytest.raises(ValueError, match="ids in"):
        mutual_information(np.full((3, 4), 7), n_states=4)
