"""Speculative decoding (4.11): the accept/reject rule on hand-made cases, the law of the
emitted token (exactly the target's), greedy speculative generation equal to the target's own
greedy decoding, the cache rollback (`KVCache.crop`), and clear errors at the boundary."""

from __future__ import annotations

import copy

import pytest
import torch
from scipy.stats import chi2

import tutorlib.speculative as speculative
from tutorlib.attention import KVCache
from tutorlib.inference import decode_step, generate
from tutorlib.models import DecoderOnly, TransformerConfig
from tutorlib.speculative import (
    acceptance_probability,
    expected_tokens_per_pass,
    speculative_accept,
    speculative_generate,
)

V = 23


def decoder(seed: int, n_layers: int, d_model: int, vocab_size: int = V) -> DecoderOnly:
    """A random float64 decoder; untied output weights, so that greedy decoding does not just
    copy the last token (a random tied model predicts its own input)."""
    torch.manual_seed(seed)
    config = TransformerConfig(
        vocab_size=vocab_size,
        context_length=48,
        d_model=d_model,
        n_heads=4,
        n_layers=n_layers,
        d_ff=2 * d_model,
        norm_first=True,
        tie_weights=False,
    )
    return DecoderOnly(config).double().eval()


@pytest.fixture(scope="module")
def target() -> DecoderOnly:
    return decoder(0, n_layers=3, d_model=32)


@pytest.fixture(scope="module")
def drafts(target: DecoderOnly) -> dict[str, DecoderOnly]:
    """An unrelated draft (rarely agrees), a noisy copy of the target (often agrees) and the
    target itself (always agrees)."""
    noisy = copy.deepcopy(target)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in noisy.parameters():
            if p.numel() > 1:
                p.add_(0.3 * p.std() * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return {"unrelated": decoder(1, n_layers=1, d_model=16), "noisy": noisy, "self": target}


# --- KVCache.crop ---------------------------------------------------------------------------------


def test_crop_keeps_the_first_positions_and_decoding_continues_exactly(target: DecoderOnly) -> None:
    tokens = torch.randint(0, V, (2, 14), generator=torch.Generator().manual_seed(0))
    cache = KVCache()
    with torch.no_grad():
        decode_step(target, tokens[:, :10], cache)
        before = [k.clone() for k in cache.keys]
        cache.crop(6)
        assert cache.length == 6
        assert all(k.shape == (2, 4, 6, 8) for k in cache.keys + cache.values)
        torch.testing.assert_close(cache.keys[1], before[1][:, :, :6])
        # Continue with other tokens after position 6: as if positions 6..9 had never been seen.
        other = torch.cat([tokens[:, :6], tokens[:, 10:]], dim=1)  # (2, 10)
        continued = decode_step(target, other[:, 6:], cache)  # (2, 4, V)
        full = target(other)
    torch.testing.assert_close(continued, full[:, 6:])
    assert cache.length == 10


def test_crop_to_zero_empties_and_bad_lengths_raise(target: DecoderOnly) -> None:
    cache = KVCache()
    with torch.no_grad():
        decode_step(target, torch.zeros(1, 5, dtype=torch.long), cache)
    cache.crop(5)  # no-op
    assert cache.length == 5
    with pytest.raises(ValueError, match=r"\[0, 5\]"):
        cache.crop(6)
    with pytest.raises(ValueError, match="got -1"):
        cache.crop(-1)
    with pytest.raises(TypeError, match="int"):
        cache.crop(2.0)  # type: ignore[arg-type]
    cache.crop(0)
    assert cache.length == 0 and cache.keys == [] and cache.values == []


# --- speculative_accept on hand-made cases --------------------------------------------------------

P = torch.tensor([0.4, 0.3, 0.2, 0.1])
Q = torch.tensor([0.1, 0.6, 0.1, 0.2])  # P - Q = [0.3, -0.3, 0.1, -0.1]


def test_token_accepted_when_uniform_below_ratio() -> None:
    target_probs = torch.stack([P, P])  # (k + 1, V), k = 1
    draft = torch.tensor([1])  # p / q = 0.3 / 0.6 = 0.5
    n, next_probs = speculative_accept(target_probs, Q[None], draft, torch.tensor([0.49]))
    assert n == 1
    torch.testing.assert_close(next_probs, P)  # all accepted: the target's next distribution
    n, _ = speculative_accept(target_probs, Q[None], draft, torch.tensor([0.5]))
    assert n == 0  # the comparison is strict: u < p / q


def test_first_rejection_gives_the_normalised_residual() -> None:
    target_probs = torch.stack([P, P, P])  # k = 2
    draft_probs = torch.stack([Q, Q])
    draft = torch.tensor([1, 0])
    n, next_probs = speculative_accept(target_probs, draft_probs, draft, torch.tensor([0.6, 0.0]))
    assert n == 0
    torch.testing.assert_close(next_probs, torch.tensor([0.75, 0.0, 0.25, 0.0]))
    # Token 0 has p / q = 4 >= 1 (always accepted); token 1 is then rejected at u = 0.9.
    n, next_probs = speculative_accept(
        target_probs, draft_probs, torch.tensor([0, 1]), torch.tensor([0.99, 0.9])
    )
    assert n == 1
    torch.testing.assert_close(next_probs, torch.tensor([0.75, 0.0, 0.25, 0.0]))


def test_equal_distributions_always_accept() -> None:
    probs = torch.softmax(torch.randn(4, 7, generator=torch.Generator().manual_seed(0)), -1)
    n, next_probs = speculative_accept(
        probs, probs[:3], torch.tensor([6, 0, 3]), torch.full((3,), 0.999999)
    )
    assert n == 3
    torch.testing.assert_close(next_probs, probs[3])


def test_one_hot_rows_are_greedy_verification() -> None:
    eye = torch.eye(5)
    target_probs = eye[[2, 4, 1, 0]]  # the target's arg max at each position: 2, 4, 1, 0
    draft_probs = eye[[2, 4, 3]]  # the draft agrees twice, then proposes 3
    n, next_probs = speculative_accept(
        target_probs, draft_probs, torch.tensor([2, 4, 3]), torch.zeros(3)
    )
    assert n == 2
    torch.testing.assert_close(next_probs, eye[1])  # the residual is the target's choice


def test_zero_residual_falls_back_to_target_and_k_zero() -> None:
    p = torch.tensor([[0.5, 0.4995]])  # p <= q everywhere: max(0, p - q) is all zeros
    q = torch.tensor([[0.5005, 0.4995]])
    n, next_probs = speculative_accept(
        torch.cat([p, p]), q, torch.tensor([0]), torch.tensor([0.9995])
    )
    assert n == 0
    torch.testing.assert_close(next_probs, p[0])
    n, next_probs = speculative_accept(P[None], Q[None][:0], torch.tensor([], dtype=torch.long),
                                       torch.zeros(0))  # fmt: skip
    assert n == 0
    torch.testing.assert_close(next_probs, P)


# --- The law of the emitted token -----------------------------------------------------------------


def slipped_rule(mistake: str):
    """The rule with one of two classic slips: accepting with q / p instead of p / q, or
    drawing the token after a rejection from p instead of the residual."""

    def accept(target_probs, draft_probs, draft_tokens, uniforms):
        k = len(draft_tokens)
        p = target_probs[torch.arange(k), draft_tokens]  # (k,)
        q = draft_probs[torch.arange(k), draft_tokens]  # (k,)
        ratio = q / p if mistake == "q/p" else p / q
        n = int((uniforms < ratio).long().cumprod(0).sum())
        if n == k or mistake == "resample from p":
            return n, target_probs[n]
        residual = (target_probs[n] - draft_probs[n]).clamp(min=0)
        return n, residual / residual.sum()

    return accept


def emitted_counts(accept, p: torch.Tensor, q: torch.Tensor, trials: int, seed: int):
    """Counts of the tokens emitted at positions 0..k in `trials` rounds: drafts from q, the
    rule, then the next token from next_probs."""
    generator = torch.Generator().manual_seed(seed)
    k, V_ = q.shape
    counts = torch.zeros(k + 1, V_)
    for _ in range(trials):
        drafts = torch.multinomial(q, 1, generator=generator).squeeze(1)  # (k,)
        uniforms = torch.rand(k, generator=generator)
        n, next_probs = accept(p, q, drafts, uniforms)
        counts[torch.arange(n), drafts[:n]] += 1
        counts[n, torch.multinomial(next_probs, 1, generator=generator)] += 1
    return counts


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = counts.sum() * probs
    return float(((counts - expected) ** 2 / expected).sum())


def test_emitted_tokens_follow_the_target_exactly() -> None:
    """Chi-square test, position by position, at significance 0.001 (critical value for
    V - 1 = 5 degrees of freedom: 20.5); the seed is fixed, so the outcome is too."""
    generator = torch.Generator().manual_seed(0)
    p = torch.rand(3, 6, generator=generator) + 0.05  # (k + 1, V), k = 2
    p = p / p.sum(-1, keepdim=True)
    q = torch.rand(2, 6, generator=generator) + 0.05
    q = q / q.sum(-1, keepdim=True)
    critical = chi2.ppf(0.999, df=5)
    counts = emitted_counts(speculative_accept, p, q, trials=1500, seed=1)
    for position in range(3):
        assert counts[position].sum() > 500  # enough draws to test each position
        assert chi_square(counts[position], p[position]) < critical, position
    for mistake in ("q/p", "resample from p"):  # the test has the power to catch a slip
        wrong = emitted_counts(slipped_rule(mistake), p, q, trials=500, seed=1)
        assert chi_square(wrong[0], p[0]) > critical, mistake


def test_acceptance_probability_and_expected_tokens() -> None:
    assert float(acceptance_probability(P, Q)) == pytest.approx(0.6)  # 1 - TV = 1 - (0.3 + 0.1)
    assert float(acceptance_probability(P, P)) == pytest.approx(1.0)
    assert expected_tokens_per_pass(0.0, 4) == 1.0
    assert expected_tokens_per_pass(1.0, 4) == 5.0
    assert expected_tokens_per_pass(0.5, 2) == pytest.approx(1.75)  # 1 + 0.5 + 0.25


# --- Generation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("draft_name", ["unrelated", "noisy", "self"])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_greedy_speculative_equals_greedy_target(
    target: DecoderOnly, drafts: dict[str, DecoderOnly], draft_name: str, k: int
) -> None:
    for seed, length in ((0, 5), (1, 1)):
        prompt = torch.randint(0, V, (1, length), generator=torch.Generator().manual_seed(seed))
        tokens, stats = speculative_generate(target, drafts[draft_name], prompt, 20, k=k)
        assert torch.equal(tokens, generate(target, prompt, 20))
        assert stats.new_tokens == 20 and stats.accepted == sum(stats.accepted_per_round)
        assert stats.new_tokens == stats.accepted + stats.target_passes
        assert stats.draft_passes == stats.proposed <= k * stats.target_passes
    if draft_name == "self":
        assert stats.acceptance_rate == 1.0
        assert stats.target_passes == -(-20 // (k + 1))  # k + 1 tokens per pass, rounded up
    if draft_name == "noisy":
        assert 0.0 < stats.acceptance_rate < 1.0  # a partial match exercises the rollback


class RecordingCache(KVCache):
    """A KVCache that records its length after every crop."""

    log: list[tuple[int, int]] = []  # (id of the cache, length after the crop)

    def crop(self, length: int) -> None:
        super().crop(length)
        RecordingCache.log.append((id(self), self.length))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_caches_are_rolled_back_to_the_kept_tokens(
    target: DecoderOnly,
    drafts: dict[str, DecoderOnly],
    monkeypatch: pytest.MonkeyPatch,
    temperature: float,
) -> None:
    RecordingCache.log = []
    monkeypatch.setattr(speculative, "KVCache", RecordingCache)
    prompt = torch.randint(0, V, (1, 4), generator=torch.Generator().manual_seed(2))
    _, stats = speculative_generate(
        target, drafts["noisy"], prompt, 25, k=3, temperature=temperature,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    target_id = RecordingCache.log[0][0]
    target_lengths = [n for i, n in RecordingCache.log if i == target_id]
    draft_lengths = [n for i, n in RecordingCache.log if i != target_id]
    assert len(target_lengths) == len(draft_lengths) == stats.target_passes
    written = 0
    for round_, accepted in enumerate(stats.accepted_per_round):
        written += accepted + 1
        kept = 4 + written - 1  # every token but the newest, which is fed next round
        assert target_lengths[round_] == kept
        assert kept - 1 <= draft_lengths[round_] <= kept  # one behind after a full accept
    assert any(n < 3 for n in stats.accepted_per_round[:-1])  # some round did roll back


def test_sampling_is_reproducible_and_self_draft_accepts_all(
    target: DecoderOnly, drafts: dict[str, DecoderOnly]
) -> None:
    prompt = torch.tensor([[1, 2, 3]])
    runs = [
        speculative_generate(target, drafts["unrelated"], prompt, 20, k=4, temperature=1.0,
                             generator=torch.Generator().manual_seed(5))[0]
        for _ in range(2)
    ]  # fmt: skip
    assert torch.equal(runs[0], runs[1]) and runs[0].shape == (1, 23)
    _, stats = speculative_generate(target, target, prompt, 20, k=4, temperature=0.8)
    assert stats.accepted == stats.judged == stats.proposed  # p = q: nothing rejected


# --- Errors at the boundary -----------------------------------------------------------------------


def test_generate_rejects_bad_inputs(target: DecoderOnly, drafts: dict[str, DecoderOnly]) -> None:
    draft, prompt = drafts["unrelated"], torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        speculative_generate(target, draft, prompt, 5, k=0)
    with pytest.raises(ValueError, match="batch size 1"):
        speculative_generate(target, draft, prompt.repeat(2, 1), 5)
    with pytest.raises(ValueError, match="vocab_size 23 vs 11"):
        speculative_generate(target, decoder(0, 1, 16, vocab_size=11), prompt, 5)
    with pytest.raises(ValueError, match="context_length 48"):
        speculative_generate(target, draft, prompt, 47)
    with pytest.raises(ValueError, match="temperature"):
        speculative_generate(target, draft, prompt, 5, temperature=-1.0)
    with pytest.raises(TypeError, match="draft must be a tutorlib DecoderOnly"):
        speculative_generate(target, torch.nn.Linear(2, 2), prompt, 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="int64"):
        speculative_generate(target, draft, prompt.float(), 5)  # type: ignore[arg-type]


def test_accept_rejects_bad_inputs() -> None:
    p, q, x, u = torch.stack([P, P]), Q[None], torch.tensor([1]), torch.tensor([0.5])
    with pytest.raises(ValueError, match=r"expected shape \(k, V\) = \(1, 4\)"):
        speculative_accept(p, torch.stack([Q, Q]), x, u)
    with pytest.raises(TypeError, match="floating-point"):
        speculative_accept(p.long(), q, x, u)
    with pytest.raises(ValueError, match="sum to 1"):
        speculative_accept(p * 2, q, x, u)
    with pytest.raises(TypeError, match="int64"):
        speculative_accept(p, q, x.float(), u)
    with pytest.raises(ValueError, match=r"ids in \[0, 4\)"):
        speculative_accept(p, q, torch.tensor([4]), u)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        speculative_accept(p, q, x, torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"expected shape \(1,\)"):
        speculative_accept(p, q, x, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="probability 0"):
        speculative_accept(p, torch.tensor([[0.5, 0.0, 0.5, 0.0]]), x, u)
