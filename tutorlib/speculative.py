"""Speculative decoding: a small draft model guesses k tokens, the large target checks them all.

Decoding one token per target pass wastes a large model: each pass reads every weight to
produce one token. Speculative decoding (Leviathan, Kalman and Matias, 2023; Chen et al., 2023)
lets a cheap *draft* model propose k tokens one by one, then runs the *target* once over all of
them with its KV cache. Draft token i is accepted with probability min(1, p_i(x_i) / q_i(x_i)),
p the target's distribution and q the draft's; at the first rejection the next token is drawn
from the residual normalise(max(0, p_i - q_i)), and if all k pass, one more is drawn from the
target's distribution at position k + 1. The tokens written have exactly the target's
distribution, whatever the draft; a good draft only makes them cheaper. Greedy decoding is the
case of one-hot distributions.

``speculative_accept`` is the accept/reject rule on its own; ``speculative_generate`` runs the
loop for one sequence, with both models caching keys and values and both caches cropped back
(``KVCache.crop``) to the tokens kept.

Book: 4.11 Speculative decoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from tutorlib.attention import KVCache
from tutorlib.inference import check_generation_inputs, decode_step
from tutorlib.models import DecoderOnly

__all__ = [
    "SpeculativeStats",
    "acceptance_probability",
    "expected_tokens_per_pass",
    "speculative_accept",
    "speculative_generate",
]


# --- The accept/reject rule ----------------------------------------------------------------------


def _check_probs(probs: object, name: str) -> Tensor:
    if not isinstance(probs, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(probs).__name__}")
    if not probs.is_floating_point():
        raise TypeError(f"{name} must hold floating-point probabilities, got {probs.dtype}")
    if probs.dim() != 2:
        raise ValueError(f"{name}: expected 2 dimensions (positions, V), got {tuple(probs.shape)}")
    if not torch.isfinite(probs).all() or (probs < 0).any():
        raise ValueError(f"{name}: probabilities must be finite and >= 0")
    sums = probs.sum(dim=-1)  # (positions,)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
        raise ValueError(f"{name}: every row must sum to 1, got sums {sums.tolist()}")
    return probs


def _accept(
    target_probs: Tensor, draft_probs: Tensor, draft_tokens: Tensor, uniforms: Tensor
) -> tuple[int, Tensor]:
    """``speculative_accept`` without the input checks (speculative_generate builds its inputs)."""
    k = draft_tokens.shape[0]
    rows = torch.arange(k, device=draft_tokens.device)
    p = target_probs[rows, draft_tokens]  # (k,): target's probability of each drafted token
    q = draft_probs[rows, draft_tokens]  # (k,): draft's probability of the same token
    accepted = uniforms < p / q  # (k,): probability min(1, p / q) each
    n = int(accepted.long().cumprod(dim=0).sum())  # accepted before the first rejection
    if n == k:
        return k, target_probs[k]  # all accepted: one more token from the target's p_(k+1)
    residual = (target_probs[n] - draft_probs[n]).clamp(min=0.0)  # (V,)
    total = residual.sum()
    if total <= 0:  # p_n == q_n up to rounding: nothing left over, so fall back to p_n
        return n, target_probs[n]
    return n, residual / total


def speculative_accept(
    target_probs: Tensor, draft_probs: Tensor, draft_tokens: Tensor, uniforms: Tensor
) -> tuple[int, Tensor]:
    """The accept/reject rule of speculative sampling: how many drafted tokens to keep, and
    the distribution of the token that follows them.

    Draft token i (drawn from the draft's q_i) is accepted while
    ``uniforms[i] < target_probs[i, x_i] / draft_probs[i, x_i]``, which for a uniform draw
    happens with probability min(1, p_i(x_i) / q_i(x_i)). At the first rejection, at position
    n, the next token's distribution is the residual max(0, p_n - q_n), normalised (if it sums
    to 0, which needs p_n = q_n, it is p_n itself). If all k are accepted it is the target's
    ``target_probs[k]``, so one target pass yields up to k + 1 tokens. Drawing the next token
    from ``next_probs`` makes every emitted token follow the target's p exactly (Leviathan et
    al., 2023). Deterministic given its inputs; with one-hot rows it is greedy
    verification: keep drafts while they equal the target's arg max, then take the target's.
    k = 0 is allowed and returns ``(0, target_probs[0])``.

    Shapes:
        target_probs (k + 1, V), draft_probs (k, V), draft_tokens (k,) int64,
        uniforms (k,) in [0, 1)  ->  n_accepted (int, 0 <= n <= k), next_probs (V,)

    Book: 4.11 Speculative decoding.
    """
    _check_probs(target_probs, "target_probs")
    _check_probs(draft_probs, "draft_probs")
    k_plus_1, V = target_probs.shape
    if draft_probs.shape != (k_plus_1 - 1, V):
        raise ValueError(
            f"draft_probs: expected shape (k, V) = {(k_plus_1 - 1, V)} to match target_probs "
            f"{tuple(target_probs.shape)}, got {tuple(draft_probs.shape)}"
        )
    k = k_plus_1 - 1
    if not isinstance(draft_tokens, Tensor) or draft_tokens.dtype != torch.long:
        got = draft_tokens.dtype if isinstance(draft_tokens, Tensor) else type(draft_tokens)
        raise TypeError(f"draft_tokens: expected an int64 tensor, got {got}")
    if draft_tokens.shape != (k,):
        raise ValueError(f"draft_tokens: expected shape ({k},), got {tuple(draft_tokens.shape)}")
    if k and ((draft_tokens < 0).any() or (draft_tokens >= V).any()):
        raise ValueError(f"draft_tokens must be ids in [0, {V}), got {draft_tokens.tolist()}")
    if not isinstance(uniforms, Tensor) or not uniforms.is_floating_point():
        got = uniforms.dtype if isinstance(uniforms, Tensor) else type(uniforms)
        raise TypeError(f"uniforms: expected a floating-point tensor, got {got}")
    if uniforms.shape != (k,):
        raise ValueError(f"uniforms: expected shape ({k},), got {tuple(uniforms.shape)}")
    if k and ((uniforms < 0).any() or (uniforms >= 1).any()):
        raise ValueError(f"uniforms must lie in [0, 1), got {uniforms.tolist()}")
    if k:
        q = draft_probs[torch.arange(k, device=draft_tokens.device), draft_tokens]  # (k,)
        if (q <= 0).any():
            i = int((q <= 0).nonzero()[0])
            raise ValueError(
                f"draft token {i} (id {int(draft_tokens[i])}) has probability 0 under "
                "draft_probs: the draft could not have proposed it"
            )
    return _accept(target_probs, draft_probs, draft_tokens, uniforms)


def acceptance_probability(target_probs: Tensor, draft_probs: Tensor) -> Tensor:
    """The chance that a token drawn from q is accepted against p: sum_x min(p(x), q(x)),
    which is 1 minus the total-variation distance between p and q (Leviathan et al.'s beta).

    Shapes:
        target_probs (..., V), draft_probs (..., V)  ->  (...)

    Book: 4.11 Speculative decoding.
    """
    if not isinstance(target_probs, Tensor) or not isinstance(draft_probs, Tensor):
        raise TypeError("target_probs and draft_probs must be tensors")
    if target_probs.shape != draft_probs.shape:
        raise ValueError(
            f"shapes differ: target_probs {tuple(target_probs.shape)}, "
            f"draft_probs {tuple(draft_probs.shape)}"
        )
    return torch.minimum(target_probs, draft_probs).sum(dim=-1)


def expected_tokens_per_pass(acceptance: float, k: int) -> float:
    """Expected tokens written per target pass, (1 - a^(k+1)) / (1 - a), when each drafted
    token is accepted independently with probability a (Leviathan et al., 2023);
    k + 1 when a = 1.

    Shapes:
        acceptance a (a float in [0, 1]), k (an int >= 1)  ->  a float in [1, k + 1]

    Book: 4.11 Speculative decoding.
    """
    if not 0.0 <= acceptance <= 1.0:
        raise ValueError(f"acceptance must lie in [0, 1], got {acceptance!r}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if acceptance == 1.0:
        return float(k + 1)
    return (1.0 - acceptance ** (k + 1)) / (1.0 - acceptance)


# --- The generation loop -------------------------------------------------------------------------


@dataclass
class SpeculativeStats:
    """What one call of ``speculative_generate`` did, counted as it went."""

    new_tokens: int = 0  # tokens written after the prompt
    target_passes: int = 0  # forward passes of the target (one per round)
    draft_passes: int = 0  # forward passes of the draft (one per drafted token)
    proposed: int = 0  # drafted tokens, k per round (fewer at the very end)
    judged: int = 0  # drafted tokens the target decided on: accepted + the first rejected
    accepted: int = 0  # drafted tokens kept
    accepted_per_round: list[int] = field(default_factory=list)  # n_accepted of every round

    @property
    def acceptance_rate(self) -> float:
        """accepted / judged: the estimate of the per-token acceptance probability a (a draft
        after the first rejection of its round is never judged)."""
        return self.accepted / self.judged if self.judged else float("nan")

    @property
    def tokens_per_target_pass(self) -> float:
        """new_tokens / target_passes: 1 for plain decoding, up to k + 1 here."""
        return self.new_tokens / self.target_passes if self.target_passes else float("nan")


def _probs(logits: Tensor, temperature: float) -> Tensor:
    """Next-token distributions: softmax(logits / tau), or one-hot at the arg max for tau = 0."""
    if temperature == 0:
        index = logits.argmax(dim=-1, keepdim=True)  # (..., 1)
        return torch.zeros_like(logits).scatter_(-1, index, 1.0)  # (..., V) one-hot
    return (logits.float() / temperature).softmax(dim=-1)  # (..., V)


def _draw(probs: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """One token id from probs (V,): the arg max for T = 0, else a draw.  ->  (1,) int64"""
    if temperature == 0:
        return probs.argmax(dim=-1, keepdim=True)  # (1,)
    return torch.multinomial(probs, 1, generator=generator)  # (1,)


def _check_models(target: object, draft: object, prompt: Tensor, max_new_tokens: int) -> None:
    check_generation_inputs(target, prompt, max_new_tokens)  # type: ignore[arg-type]
    if not isinstance(draft, DecoderOnly):
        raise TypeError(f"draft must be a tutorlib DecoderOnly, got {type(draft).__name__}")
    if prompt.shape[0] != 1:
        raise ValueError(f"prompt: expected batch size 1, shape (1, t0), got {tuple(prompt.shape)}")
    t_vocab, d_vocab = target.config.vocab_size, draft.config.vocab_size  # type: ignore[attr-defined]
    if t_vocab != d_vocab:
        raise ValueError(
            f"target and draft must share one vocabulary: vocab_size {t_vocab} vs {d_vocab}"
        )
    needed = prompt.shape[1] + max_new_tokens
    for name, model in (("target", target), ("draft", draft)):
        context = model.config.context_length  # type: ignore[attr-defined]
        if needed > context:
            raise ValueError(
                f"prompt length {prompt.shape[1]} + max_new_tokens {max_new_tokens} = {needed} "
                f"exceeds the {name}'s context_length {context}"
            )
        device = next(model.parameters()).device  # type: ignore[attr-defined]
        if device != prompt.device:
            raise ValueError(f"the {name} is on {device}, the prompt on {prompt.device}")


@torch.no_grad()
def speculative_generate(
    target: DecoderOnly,
    draft: DecoderOnly,
    prompt: Tensor,
    max_new_tokens: int,
    k: int = 4,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, SpeculativeStats]:
    """Generate from ``target`` with ``draft`` proposing ``k`` tokens per target pass.

    Each round: the draft writes k tokens one by one (k cached passes), sampling from its q
    at temperature tau; the target runs once over the tokens it has not seen yet and the k
    drafts (one cached pass, k + 1 distributions p); ``speculative_accept`` keeps n of them and
    gives the distribution of one more token; both caches are cropped back to the kept tokens
    (``KVCache.crop``). With ``temperature=0`` (greedy) the tokens are those of the target's own
    greedy decoding (``tutorlib.inference.generate``); with tau > 0 they follow the target's
    softmax(logits / tau) exactly, though the draws differ from a plain sampling loop's. The
    last round drafts fewer tokens so that exactly ``max_new_tokens`` are written. Both models
    are put in eval mode for the call and given back in the mode they came in.

    Shapes:
        prompt (1, t0) int64, t0 + max_new_tokens <= both context lengths
        ->  tokens (1, t0 + max_new_tokens), stats

    Book: 4.11 Speculative decoding.
    """
    _check_models(target, draft, prompt, max_new_tokens)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if not isinstance(temperature, float | int) or not temperature >= 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    modes = (target.training, draft.training)
    target.eval()
    draft.eval()
    try:
        tokens, stats = prompt, SpeculativeStats()
        target_cache, draft_cache = KVCache(), KVCache()
        while stats.new_tokens < max_new_tokens:
            k_round = min(k, max_new_tokens - stats.new_tokens - 1)  # k_round + 1 at most
            # 1. The draft proposes k_round tokens, one cached pass each.
            fresh = tokens[:, draft_cache.length :]  # (1, 1 or 2): what the draft has not seen
            drafted, draft_probs = [], []
            for _ in range(k_round):
                q = _probs(decode_step(draft, fresh, draft_cache)[0, -1], temperature)  # (V,)
                fresh = _draw(q, temperature, generator).view(1, 1)  # (1, 1)
                drafted.append(fresh[0])
                draft_probs.append(q)
            proposals = torch.cat(drafted) if drafted else prompt.new_empty(0)  # (k_round,)
            # 2. The target scores the unseen tokens and the proposals in one cached pass.
            unseen = torch.cat([tokens[:, target_cache.length :], proposals.view(1, -1)], dim=1)
            logits = decode_step(target, unseen, target_cache)[0, -(k_round + 1) :]  # (k+1, V)
            p = _probs(logits, temperature)  # (k_round + 1, V)
            # 3. Accept a prefix of the proposals, then draw one more token.
            if temperature == 0 or k_round == 0:
                uniforms = p.new_zeros(k_round)  # greedy: the ratio is 1 or 0, no draw needed
            else:
                uniforms = torch.rand(k_round, generator=generator, device=p.device)
            q_all = torch.stack(draft_probs) if draft_probs else p.new_zeros(0, p.shape[1])
            n, next_probs = _accept(p, q_all, proposals, uniforms)
            extra = _draw(next_probs, temperature, generator).view(1, 1)  # (1, 1)
            tokens = torch.cat([tokens, proposals[:n].view(1, -1), extra], dim=1)  # (1, t + n + 1)
            # 4. Roll both caches back: keep every token but the newest, which is fed next round.
            kept = tokens.shape[1] - 1
            target_cache.crop(kept)
            draft_cache.crop(min(draft_cache.length, kept))
            stats.new_tokens += n + 1
            stats.target_passes += 1
            stats.draft_passes += k_round
            stats.proposed += k_round
            stats.judged += n + (n < k_round)
            stats.accepted += n
            stats.accepted_per_round.append(n)
    finally:
        target.train(modes[0])
        draft.train(modes[1])
    return tokens, stats
