"""Checks for the exercises on experts, drafts and tiles
(solutions/04_scaling/03_experts_drafts_tiles).

Each `check_*` takes the learner's function. With `hidden=False` it runs the visible tests (the
notebook's worked examples); with `hidden=True` the hidden ones: inputs drawn when they run
(`tutorlib.checks.draw`), built so that every draw tells the likely mistakes apart (k = 1 and
k = E, an expert that no token chose, a draft token that the target likes more than the draft
does and one it likes less, a rejection after accepted tokens, a row whose scores are all
masked, a tile whose maximum is below the running one). While the learner's code runs,
tutorlib's references (`tutorlib.moe`, `tutorlib.speculative`, `tutorlib.flash`), fused
attention and Hugging Face's balancing losses (once loaded) are out of reach
(`tutorlib.checks.guard`); torch.softmax, torch.topk, torch.bincount and F.one_hot stay
allowed: the exercises are the renormalisation, the balancing product, the accept/reject rule
and the rescaling, not the operators.

Book: Chapter 4 exercises (4.9 FlashAttention; 4.10 Mixture of experts; 4.11 Speculative
decoding).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from tutorlib import attention, flash, moe, speculative
from tutorlib.checks import (
    Draw,
    Exercise,
    ExerciseError,
    Forbidden,
    as_int,
    expect_close,
    expect_equal,
    watch_module,
)
from tutorlib.checks.compare import _named as _one_hint
from tutorlib.checks.generative import _named
from tutorlib.checks.guard import ATTENTION_KERNELS

__all__ = [
    "check_load_balancing_loss",
    "check_online_softmax_update",
    "check_speculative_accept",
    "check_top_k_routing",
]

# References, taken at import time (before any learner code runs).
_softmax, _topk, _bincount = torch.softmax, torch.topk, torch.bincount
_exp, _maximum, _where, _isinf = torch.exp, torch.maximum, torch.where, torch.isinf
_isfinite, _full, _zeros, _equal = torch.isfinite, torch.full, torch.zeros, torch.equal
_sort, _tensor, _stack = torch.sort, torch.tensor, torch.stack
_F64, _F32, _INF = torch.float64, torch.float32, float("inf")


def _public(module: Any) -> tuple[Any, ...]:
    """Every public function and class of a tutorlib module."""
    return tuple(f for n in module.__all__ if callable(f := getattr(module, n)))


# --- 1. Top-k routing ----------------------------------------------------------------------------


def _hugging_face_balancing() -> Forbidden:
    """Hugging Face's load-balancing losses (Mixtral, Switch, Qwen-MoE, ...) in the modules the
    learner has loaded: transformers is not imported by the checks, and importing it takes
    seconds."""
    found = []
    for name, module in list(sys.modules.items()):
        if name.startswith("transformers.models.") and module is not None:
            fn = getattr(module, "load_balancing_loss_func", None)
            if callable(fn):
                found.append(fn)
            router = getattr(module, "router_z_loss_func", None)
            if callable(router):
                found.append(router)
    return Forbidden(python=tuple(found))


MOE_FORBIDDEN = Forbidden(python=_public(moe))


def _route(logits: Tensor, k: int, kind: str = "") -> tuple[Tensor, Tensor]:
    """(weights, experts) as the right code or a likely mistake computes them."""
    if kind == "raw_logits":
        return _topk(logits, k, dim=-1)
    probs = _softmax(logits, dim=0 if kind == "wrong_axis" else -1)  # (N, E)
    weights, experts = _topk(probs, k, dim=-1, largest=kind != "smallest")  # (N, k)
    if kind == "no_renormalise":
        return weights, experts
    if kind == "double_softmax":
        return _softmax(weights, dim=-1), experts
    return weights / weights.sum(dim=-1, keepdim=True), experts


ROUTE_MISTAKES = {
    "no_renormalise": "the k weights are not renormalised: after taking the k largest "
    "probabilities, divide them by their sum, so that each token's weights sum to 1.",
    "double_softmax": "the top-k probabilities went through a second softmax: renormalise them "
    "by dividing by their sum (a softmax of probabilities is not a renormalisation; a softmax "
    "over the k top logits is).",
    "wrong_axis": "the softmax runs over the tokens (dim=0): each token's router logits are a "
    "distribution over the experts, so the softmax is over the last dimension (dim=-1).",
    "smallest": "these are the k least likely experts: take the k largest probabilities "
    "(torch.topk(..., largest=True), its default).",
    "raw_logits": "the weights are the router's logits: take a softmax over the experts first, "
    "then renormalise the k largest probabilities.",
}
OVERFLOW_HINT = (
    "exp overflowed: logits of a hundred or more give inf / inf. Subtract each row's maximum "
    "before exp (the softmax does not change), or use torch.softmax."
)
ORDER_HINT = (
    "the right experts and weights, in another order: return them in descending order of "
    "weight, as torch.topk does."
)


def _visible_routing() -> list[tuple[Tensor, int]]:
    logits = _tensor(
        [
            [2.0, 0.5, -1.0, 1.0],
            [0.0, 3.0, 0.5, -2.0],
            [-1.0, -0.5, 2.5, 2.0],
        ],
        dtype=_F64,
    )
    return [(logits, 2), (logits, 1)]


def _routing_hidden(draw: Draw) -> list[tuple[Tensor, int]]:
    """(logits, k): top-2 with gradients, k = 1, k = E, one token, logits of hundreds in
    float32."""
    E = draw.integer(4, 8)
    cases = [
        (draw.normal(draw.integer(6, 12), E, scale=1.5, grad=True), 2),
        (draw.normal(draw.integer(3, 8), E, scale=2.0), 1),
        (draw.normal(draw.integer(2, 6), E, scale=1.0), E),
        (draw.normal(1, E, scale=1.0), draw.integer(2, E - 1)),
    ]
    big = (draw.normal(draw.integer(4, 8), E, scale=3.0) + 100.0).float()  # exp overflows
    return [*cases, (big, draw.integer(2, 3))]


def _same_up_to_order(weights: Tensor, experts: Tensor, want_w: Tensor, want_e: Tensor) -> bool:
    if weights.shape != want_w.shape or experts.shape != want_e.shape:
        return False
    e1, order = _sort(experts.long(), dim=-1)
    e2, order2 = _sort(want_e, dim=-1)
    return bool(
        _equal(e1, e2)
        and torch.allclose(
            weights.detach().to(want_w.dtype).gather(-1, order), want_w.gather(-1, order2)
        )
    )


def _check_routing_case(ex: Exercise, fn: Callable, logits: Tensor, k: int) -> None:
    out = ex.call(fn, logits, k)
    N, E = logits.shape
    what = f"top_k_routing for {N} token{'s' * (N > 1)}, {E} experts, k={k}"
    if not isinstance(out, tuple | list) or len(out) != 2:
        raise ExerciseError(
            f"{what} should return a pair (weights, experts)", got=type(out).__name__
        )
    weights, experts = out
    detached = logits.detach()
    want_w, want_e = _route(detached, k)
    mistakes = {kind: _route(detached, k, kind) for kind in ROUTE_MISTAKES}
    if isinstance(weights, Tensor) and not bool(_isfinite(weights).all()):
        raise ExerciseError(f"{what}: the weights contain NaN or inf", hint=OVERFLOW_HINT)
    if isinstance(weights, Tensor) and isinstance(experts, Tensor):
        if not _equal(experts.long(), want_e) and _same_up_to_order(
            weights, experts, want_w, want_e
        ):
            raise ExerciseError(f"{what}: the order is not right", hint=ORDER_HINT)
    expect_equal(
        experts,
        want_e,
        what=f"{what}: the experts",
        mistakes=_named({ROUTE_MISTAKES[m]: e for m, (_, e) in mistakes.items()}),
        dtype_hint="expert ids are int64, as torch.topk's indices are.",
    )
    expect_close(
        weights,
        want_w,
        what=f"{what}: the weights",
        mistakes=_named({ROUTE_MISTAKES[m]: w for m, (w, _) in mistakes.items()}),
        atol=1e-10 if logits.dtype == _F64 else 1e-6,
    )
    if logits.requires_grad:
        ex.expect_backward(
            weights, _route(logits, k)[0], {"router_logits": logits}, "top_k_routing's weights"
        )


def check_top_k_routing(fn: Callable, hidden: bool = False) -> None:
    """Learner's `top_k_routing(router_logits, k) -> (weights, experts)`."""
    with Exercise("top_k_routing", hidden, MOE_FORBIDDEN) as ex:
        for logits, k in _routing_hidden(ex.draw) if hidden else _visible_routing():
            _check_routing_case(ex, fn, logits, k)


# --- 2. The load-balancing loss ------------------------------------------------------------------


def _balance(probs: Tensor, experts: Tensor, E: int, kind: str = "") -> Tensor:
    """The loss as the right code or a likely mistake computes it."""
    N, k = experts.shape
    chosen = experts[:, :1] if kind == "first_choice_only" else experts
    counts = _bincount(chosen.reshape(-1), minlength=E).to(probs.dtype)  # (E,)
    f = counts / (N if kind in ("per_token", "first_choice_only") else N * k)  # (E,)
    P = probs.mean(dim=0)  # (E,)
    if kind == "probs_twice":
        f = P
    elif kind == "counts_twice":
        P = f
    total = (f * P).sum()
    return total if kind == "no_n_experts" else E * total


BALANCE_MISTAKES = {
    "no_n_experts": "the factor E (the number of experts) is missing, or the product was "
    "averaged over the experts: the loss is E * sum_e f_e P_e, which is 1 when the routing is "
    "uniform, whatever E.",
    "per_token": "f_e is divided by the number of tokens N: with k choices per token there are "
    "N * k assignments, and f_e is the fraction of them that go to expert e (this is Hugging "
    "Face's Mixtral loss, k times ours).",
    "first_choice_only": "only each token's first choice is counted: f_e counts all k experts "
    "a token is routed to.",
    "probs_twice": "f_e must be the fraction of assignments routed to expert e (count the "
    "expert ids), not the mean router probability: with P_e twice the loss does not look at "
    "where the tokens went.",
    "counts_twice": "P_e must be the mean router probability of expert e: with the counts "
    "twice no gradient reaches the router (the counts of a top-k are not differentiable).",
}


def _visible_balance() -> list[tuple[Tensor, Tensor, int]]:
    logits = _tensor(
        [
            [2.0, 0.5, -1.0, 1.0],
            [0.0, 3.0, 0.5, -2.0],
            [-1.0, -0.5, 2.5, 2.0],
            [1.5, 1.0, 0.0, -1.0],
            [2.0, 1.0, -1.0, 0.0],
        ],
        dtype=_F64,
    )
    probs = _softmax(logits, dim=-1)
    experts = _topk(probs, 2, dim=-1).indices  # [[0, 3], [1, 2], [2, 3], [0, 1], [0, 1]]
    return [(probs.requires_grad_(True), experts, 4)]


def _balance_case(draw: Draw, N: int, E: int, k: int, skew: float, grad: bool, dtype=_F64):
    logits = draw.normal(N, E, scale=skew)
    logits[:, 0] -= 40.0 * (skew > 2)  # with a skew, no token chooses expert 0
    probs = _softmax(logits, dim=-1).to(dtype)
    experts = _topk(probs, k, dim=-1).indices
    return probs.requires_grad_(grad), experts, E


def _balance_hidden(draw: Draw) -> list[tuple[Tensor, Tensor, int]]:
    """(probs, experts, E): top-2 with gradients; k = 1; an expert no token chose; k = E;
    float32."""
    E = draw.integer(4, 8)
    return [
        _balance_case(draw, draw.integer(6, 16), E, 2, 1.5, True),
        _balance_case(draw, draw.integer(4, 10), E, 1, 1.0, False),
        _balance_case(draw, draw.integer(5, 12), E, 2, 3.0, True),
        _balance_case(draw, draw.integer(2, 6), E, E, 1.0, False),
        _balance_case(draw, draw.integer(6, 12), E, draw.integer(2, 3), 1.0, False, _F32),
    ]


def _check_balance_case(ex: Exercise, fn: Callable, probs: Tensor, experts: Tensor, E: int):
    out = ex.call(fn, probs, experts, E)
    N, k = experts.shape
    expected = _balance(probs, experts, E)
    detached = probs.detach()
    mistakes = {BALANCE_MISTAKES[m]: _balance(detached, experts, E, m) for m in BALANCE_MISTAKES}
    what = f"load_balancing_loss for {N} tokens, {E} experts, k={k} ({probs.dtype})"
    expect_close(
        out,
        expected.detach(),
        what=what,
        mistakes=_named(mistakes),
        atol=1e-10 if probs.dtype == _F64 else 1e-5,
    )
    if probs.requires_grad:
        ex.expect_backward(out, expected, {"router_probs": probs}, "load_balancing_loss")


def check_load_balancing_loss(fn: Callable, hidden: bool = False) -> None:
    """Learner's `load_balancing_loss(router_probs, experts, n_experts) -> scalar`."""
    with Exercise("load_balancing_loss", hidden, MOE_FORBIDDEN + _hugging_face_balancing()) as ex:
        for probs, experts, E in _balance_hidden(ex.draw) if hidden else _visible_balance():
            _check_balance_case(ex, fn, probs, experts, E)


# --- 3. The speculative accept/reject step -------------------------------------------------------

SPECULATIVE_FORBIDDEN = Forbidden(python=_public(speculative))


def _accept(p: Tensor, q: Tensor, x: Tensor, u: Tensor, kind: str = "") -> tuple[int, Tensor]:
    """(n_accepted, next_probs) as the right rule or a likely mistake computes them."""
    k = len(x)
    rejected_at, accepted = None, 0
    for i in range(k):
        pi, qi = p[i, x[i]], q[i, x[i]]
        ratio = qi / pi if kind == "inverted" else pi / qi
        if bool(u[i] < ratio):
            accepted += 1
        elif rejected_at is None:
            rejected_at = i
            if kind != "no_stop":
                break
    if rejected_at is None:
        return k, p[k - 1] if kind == "bonus_row" else p[k]
    i = rejected_at
    if kind == "residual_is_p":
        residual = p[i]
    elif kind == "residual_swapped":
        residual = (q[i] - p[i]).clamp(min=0)
    else:
        residual = (p[i] - q[i]).clamp(min=0)
    if float(residual.sum()) == 0:  # only by rounding (p = q is never rejected): fall back to p
        residual = p[i]
    elif kind != "not_normalised":
        residual = residual / residual.sum()
    n = accepted if kind == "no_stop" else i + (kind == "off_by_one")
    return n, residual


ACCEPT_MISTAKES = {
    "inverted": "the ratio is inverted: accept draft token x with probability "
    "min(1, p(x) / q(x)), target over draft; a token the target likes more than the draft is "
    "always accepted.",
    "no_stop": "the count goes on after the first rejection: every draft token after a rejected "
    "one is thrown away, so n_accepted is the number of tokens accepted before the first "
    "rejection.",
    "off_by_one": "n_accepted counts the rejected token: if token i (from 0) is the first one "
    "rejected, i tokens were accepted.",
    "residual_is_p": "after a rejection the next token is drawn from the residual "
    "max(0, p - q) renormalised, not from p: drawing from p again over-weights the tokens the "
    "draft already proposes too often.",
    "residual_swapped": "the residual is max(0, p - q), target minus draft: it gives the "
    "probability the draft's proposals missed.",
    "not_normalised": "the residual max(0, p - q) must be divided by its sum to be a distribution.",
    "bonus_row": "when every draft token is accepted the extra token comes from the target's "
    "last row, target_probs[k] (the distribution after all k draft tokens), not "
    "target_probs[k - 1].",
}
ACCEPT_ERRORS = {
    "Boolean value of Tensor": "compare one number at a time (uniforms[i] < ratio for one i), "
    "or use .item().",
}


def _visible_accept() -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """(target_probs, draft_probs, draft_tokens, uniforms): a rejection at the third token, then
    all three accepted."""
    p = _tensor(
        [
            [0.5, 0.2, 0.2, 0.1],
            [0.1, 0.6, 0.2, 0.1],
            [0.25, 0.25, 0.25, 0.25],
            [0.1, 0.1, 0.1, 0.7],
        ],
        dtype=_F64,
    )
    q = _tensor([[0.4, 0.3, 0.2, 0.1], [0.3, 0.3, 0.3, 0.1], [0.1, 0.1, 0.7, 0.1]], dtype=_F64)
    x = _tensor([0, 1, 2])
    return [
        (p, q, x, _tensor([0.9, 0.5, 0.8], dtype=_F64)),  # token 2: 0.8 >= 0.25 / 0.7
        (p, q, x, _tensor([0.3, 0.1, 0.2], dtype=_F64)),  # all accepted
    ]


def _distributions(draw: Draw, n: int, V: int) -> Tensor:
    return _softmax(draw.normal(n, V, scale=1.5), dim=-1)  # (n, V)


def _token(p: Tensor, q: Tensor, draw: Draw, target_likes_more: bool) -> int:
    """A token the target likes more (p > q) or less (p < q) than the draft does."""
    good = torch.nonzero(p > q if target_likes_more else p < q).flatten().tolist()
    return int(draw.choice(good))


def _accept_case(draw: Draw, k: int, V: int, reject_at: int | None) -> tuple:
    """Draft tokens and uniforms that accept tokens 0 .. reject_at - 1 and reject token
    reject_at (None: accept all). The first accepted token is one the target likes more than
    the draft, with a uniform above q / p (so an inverted ratio rejects it); the tokens after the
    rejection would all be accepted (so counting on after a rejection shows)."""
    p, q = _distributions(draw, k + 1, V), _distributions(draw, k, V)
    x, u = [], []
    for i in range(k):
        if i == reject_at:
            t = _token(p[i], q[i], draw, target_likes_more=False)
            r = float(p[i, t] / q[i, t])
            x.append(t)
            u.append(r + (1 - r) * draw.real(0.1, 0.9))
        else:
            t = _token(p[i], q[i], draw, target_likes_more=True)
            r = float(q[i, t] / p[i, t])  # < 1
            x.append(t)
            u.append(r + (1 - r) * draw.real(0.1, 0.9) if i == 0 else draw.real(0.0, 0.9) * r)
    return p, q, _tensor(x), _tensor(u, dtype=_F64)


def _greedy_case(draw: Draw, k: int, V: int) -> tuple:
    """Greedy decoding as one-hot distributions: the draft's argmax agrees with the target's on
    the first tokens, then not."""
    agree = draw.integer(0, k - 1)
    target = draw.integers(0, V, (k + 1,))
    draft = target[:k].clone()
    draft[agree] = (target[agree] + draw.integer(1, V - 1)) % V
    p = torch.nn.functional.one_hot(target, V).to(_F64)  # (k + 1, V)
    q = torch.nn.functional.one_hot(draft, V).to(_F64)  # (k, V)
    return p, q, draft, draw.uniform(k)


def _accept_hidden(draw: Draw) -> list[tuple]:
    """A rejection after accepted tokens, a rejection of the first token, every token accepted,
    greedy (one-hot) distributions, float32."""
    k = draw.integer(5, 7)  # a rejection at 2 .. k - 3: tokens accepted before and after it
    V = draw.integer(5, 12)
    p, q, x, u = _accept_case(draw, draw.integer(2, 4), V, None)
    p32 = _accept_case(draw, draw.integer(2, 4), V, 1)
    return [
        _accept_case(draw, k, V, draw.integer(2, k - 3)),
        _accept_case(draw, draw.integer(2, 4), V, 0),
        (p, q, x, u),
        _greedy_case(draw, draw.integer(2, 5), V),
        (p32[0].float(), p32[1].float(), p32[2], p32[3].float()),
    ]


def _check_accept_case(ex: Exercise, fn: Callable, p: Tensor, q: Tensor, x: Tensor, u: Tensor):
    out = ex.call(fn, p, q, x, u, hints=ACCEPT_ERRORS)
    k, V = q.shape
    what = f"speculative_accept with k={k} draft tokens, V={V} ({p.dtype})"
    if not isinstance(out, tuple | list) or len(out) != 2:
        raise ExerciseError(
            f"{what} should return a pair (n_accepted, next_probs)", got=type(out).__name__
        )
    n, next_probs = out
    n = as_int(n, f"{what}: n_accepted")
    want_n, want_next = _accept(p, q, x, u)
    mistakes = {kind: _accept(p, q, x, u, kind) for kind in ACCEPT_MISTAKES}
    expect_equal(
        n,
        want_n,
        what=f"{what}: n_accepted",
        mistakes=_named({ACCEPT_MISTAKES[m]: v[0] for m, v in mistakes.items()}),
    )
    expect_close(
        next_probs,
        want_next,
        what=f"{what}: next_probs",
        mistakes=_named({ACCEPT_MISTAKES[m]: v[1] for m, v in mistakes.items()}),
        atol=1e-12 if p.dtype == _F64 else 1e-6,
    )


def check_speculative_accept(fn: Callable, hidden: bool = False) -> None:
    """Learner's `speculative_accept(target_probs, draft_probs, draft_tokens, uniforms) ->
    (n_accepted, next_probs)`."""
    with Exercise("speculative_accept", hidden, SPECULATIVE_FORBIDDEN) as ex:
        for p, q, x, u in _accept_hidden(ex.draw) if hidden else _visible_accept():
            _check_accept_case(ex, fn, p, q, x, u)


# --- 4. One tile of the online softmax -----------------------------------------------------------

FLASH_FORBIDDEN = Forbidden(
    python=(
        *_public(flash),
        attention.scaled_dot_product_attention,
        attention._attention_written_out,
        torch.nn.functional.scaled_dot_product_attention,
    ),
    ops=ATTENTION_KERNELS,
)


def _update(m: Tensor, l: Tensor, acc: Tensor, s: Tensor, v: Tensor, kind: str = "") -> tuple:  # noqa: E741
    """(m, l, acc) after one tile, as the right code or a likely mistake computes them."""
    tile_max = s.amax(dim=-1)  # (..., Tq)
    m_new = tile_max if kind == "tile_max" else _maximum(m, tile_max)
    shift = m_new if kind == "no_guard" else _where(_isinf(m_new), 0.0, m_new)  # (..., Tq)
    scale = _exp(shift - m) if kind == "inverted_scale" else _exp(m - shift)  # (..., Tq)
    p = _exp(s - shift.unsqueeze(-1))  # (..., Tq, Tk)
    l_new = (l if kind in ("no_rescale_l", "no_rescale") else l * scale) + p.sum(dim=-1)
    kept = acc if kind in ("no_rescale_acc", "no_rescale") else acc * scale.unsqueeze(-1)
    acc_new = kept + p @ v  # (..., Tq, D)
    if kind == "normalised":
        acc_new = acc_new / l_new.unsqueeze(-1)
    return m_new, l_new, acc_new


UPDATE_MISTAKES = {
    "no_rescale_l": "the running sum is not rescaled: when the maximum grows from m to m_new, "
    "the sum so far was measured against m, so multiply it by exp(m - m_new) before adding the "
    "tile's exp(s - m_new).",
    "no_rescale_acc": "the accumulator is not rescaled: when the maximum grows from m to m_new, "
    "multiply acc by exp(m - m_new) before adding the tile's exp(s - m_new) @ values.",
    "no_rescale": "neither the running sum nor the accumulator is rescaled: both were measured "
    "against the old maximum m; multiply them by exp(m - m_new) before adding the tile.",
    "inverted_scale": "the rescaling factor is inverted: it is exp(m_old - m_new) (at most 1), "
    "not exp(m_new - m_old).",
    "tile_max": "the new maximum is the tile's own maximum: it is the running maximum, "
    "max(m, the tile's row maximum), or a tile with smaller scores than before makes the old "
    "terms grow.",
    "normalised": "acc is divided by l: the state keeps the unnormalised sum of "
    "exp(s - m) * v, and the division happens once, after the last tile.",
    "no_guard": "a row whose scores are all -inf so far gives NaN: exp(-inf - (-inf)) is "
    "exp(nan). Where the running maximum is still -inf, subtract 0 instead (torch.where), so "
    "that the row keeps m = -inf, l = 0 and acc = 0.",
}


def _start(shape: tuple[int, ...], D: int, dtype=_F64) -> tuple[Tensor, Tensor, Tensor]:
    """The state before the first tile: m = -inf, l = 0, acc = 0."""
    return (
        _full(shape, -_INF, dtype=dtype),
        _zeros(shape, dtype=dtype),
        _zeros(*shape, D, dtype=dtype),
    )


def _visible_update() -> list[tuple]:
    """Three rows, tiles of three keys, D = 2: the first tile from the start state (the second
    row's first key masked, the third row's every key), then a second tile whose maximum is
    above the first's in row 0, below it in row 1, and the first that row 2 sees."""
    s1 = _tensor([[1.0, 2.0, 0.5], [-_INF, 0.0, 1.0], [-_INF, -_INF, -_INF]], dtype=_F64)
    v1 = _tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=_F64)
    m, l, acc = _update(*_start((3,), 2), s1, v1)  # noqa: E741
    s2 = _tensor([[3.0, 0.0, 1.0], [-1.0, 0.5, -2.0], [0.0, 1.0, -_INF]], dtype=_F64)
    v2 = _tensor([[2.0, 0.0], [0.0, 2.0], [-1.0, 1.0]], dtype=_F64)
    return [(*_start((3,), 2), s1, v1), (m, l, acc, s2, v2)]


def _scores(draw: Draw, shape: tuple[int, ...], Tk: int, masked: float = 0.2) -> Tensor:
    s = draw.normal(*shape, Tk, scale=2.0)  # (..., Tq, Tk)
    return s.masked_fill(draw.uniform(*shape, Tk) < masked, -_INF)


def _update_hidden(draw: Draw) -> list[tuple]:
    """From the start state with a fully masked row; a state after a first tile, where the new
    tile raises the maximum in some rows and not in others, one row has seen only -inf and one
    row's new tile is all -inf; a tile of one key with no batch dimensions; float32."""
    B, H, Tq, D = draw.integer(1, 2), draw.integer(1, 3), draw.integer(4, 6), draw.integer(2, 5)
    shape = (B, H, Tq)
    first = _scores(draw, shape, draw.integer(3, 8))
    first[0, 0, 0] = -_INF  # a row with nothing to attend to yet
    cases = [(*_start(shape, D), first, draw.normal(B, H, first.shape[-1], D))]
    m, l, acc = _update(*cases[0])  # noqa: E741
    second = _scores(draw, shape, draw.integer(3, 8)) + draw.normal(*shape, 1, scale=2.0)
    second[..., 2, :] += 8.0  # rows whose maximum grows ...
    second[..., 3, :] -= 8.0  # ... and rows whose maximum stays
    second[0, 0, 1] = -_INF  # a row whose new tile is fully masked
    cases.append((m, l, acc, second, draw.normal(B, H, second.shape[-1], D)))
    Tq2 = draw.integer(2, 5)
    m2, l2, acc2 = _update(*_start((Tq2,), D), draw.normal(Tq2, 4), draw.normal(4, D))
    cases.append((m2, l2, acc2, draw.normal(Tq2, 1, scale=3.0), draw.normal(1, D)))
    m3, l3, acc3 = (
        t.float() for t in _update(*_start((Tq2,), D), draw.normal(Tq2, 5), draw.normal(5, D))
    )
    cases.append((m3, l3, acc3, draw.normal(Tq2, 3, scale=3.0).float(), draw.normal(3, D).float()))
    return cases


def _same_state(out: Any, state: tuple[Tensor, Tensor, Tensor]) -> bool:
    """The learner's (m, l, acc) equals `state`, NaN where it has NaN."""
    return all(
        isinstance(a, Tensor)
        and a.shape == b.shape
        and bool(torch.allclose(a.detach().to(b.dtype), b, rtol=1e-5, atol=1e-8, equal_nan=True))
        for a, b in zip(out, state, strict=True)
    )


def _check_update_case(ex: Exercise, fn: Callable, *state: Tensor) -> None:
    m, l, acc, s, v = state  # noqa: E741
    out = ex.call(fn, m, l, acc, s, v)
    where = f"online_softmax_update on {tuple(s.shape)} scores ({s.dtype})"
    if not isinstance(out, tuple | list) or len(out) != 3:
        raise ExerciseError(f"{where} should return (m, l, acc)", got=type(out).__name__)
    want = _update(m, l, acc, s, v)
    variants = {kind: _update(m, l, acc, s, v, kind) for kind in UPDATE_MISTAKES}
    if not _same_state(out, want):  # name the mistakes whose whole state it is
        same = [UPDATE_MISTAKES[k] for k, state in variants.items() if _same_state(out, state)]
        if same:
            raise ExerciseError(f"{where}: (m, l, acc) is not right", hint=_one_hint(same))
    atol = 1e-10 if s.dtype == _F64 else 1e-5
    for i, name in enumerate(("m", "l", "acc")):
        value = out[i]
        if isinstance(value, Tensor) and bool(value.isnan().any()):
            raise ExerciseError(
                f"{where}: the new {name} contains NaN", hint=UPDATE_MISTAKES["no_guard"]
            )
        expect_close(value, want[i], what=f"{where}: the new {name}", atol=atol)


def _check_tiles_end_to_end(ex: Exercise, fn: Callable) -> None:
    """The learner's update over three tiles, then acc / l, equals softmax(scores) @ values."""
    gen = torch.Generator().manual_seed(4)
    s = torch.randn(2, 5, 9, generator=gen, dtype=_F64)  # (B, Tq, Tk)
    s[0, 1, :] = -_INF  # a fully masked row: its output is 0
    v = torch.randn(2, 9, 3, generator=gen, dtype=_F64)
    m, l, acc = _start((2, 5), 3)  # noqa: E741
    for j in range(0, 9, 3):
        out = ex.call(fn, m, l, acc, s[..., j : j + 3], v[:, j : j + 3])
        if not isinstance(out, tuple | list) or len(out) != 3:
            raise ExerciseError("online_softmax_update should return (m, l, acc)")
        m, l, acc = out  # noqa: E741
        if any(isinstance(t, Tensor) and bool(t.isnan().any()) for t in out):
            raise ExerciseError(
                "your online_softmax_update gave NaN over three tiles of a row whose scores are "
                "all -inf",
                hint=UPDATE_MISTAKES["no_guard"],
            )
    result = acc / l.clamp(min=1e-300).unsqueeze(-1)
    weights = _softmax(s.masked_fill(_isinf(s).all(-1, keepdim=True), 0.0), dim=-1)
    expected = (weights @ v).masked_fill(_isinf(s).all(-1).unsqueeze(-1), 0.0)
    expect_close(
        result,
        expected,
        what="acc / l after three tiles of your online_softmax_update, against "
        "softmax(scores) @ values",
        atol=1e-10,
    )


def check_online_softmax_update(fn: Callable, hidden: bool = False) -> None:
    """Learner's `online_softmax_update(m, l, acc, scores, values) -> (m, l, acc)`."""
    with Exercise("online_softmax_update", hidden, FLASH_FORBIDDEN) as ex:
        cases = _update_hidden(ex.draw) if hidden else _visible_update()
        for state in cases:
            _check_update_case(ex, fn, *state)
        if not hidden:
            _check_tiles_end_to_end(ex, fn)


watch_module(__name__)
