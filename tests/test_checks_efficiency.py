"""The checks of the exercises on experts, drafts and tiles (solutions/04_scaling/
03_experts_drafts_tiles): right answers written differently pass, every likely mistake gets its
own hint whatever the hidden tests draw, tutorlib's references (and the library functions that
compute the same thing) cannot stand in for the learner's code, hidden failures show no hidden
value, and the checks' written-out references agree with tutorlib's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import expect_hint, expect_named_alone, expect_pass, expect_refused
from tests.grading import solution_namespace
from tutorlib import flash, moe, speculative
from tutorlib.checks import ExerciseError, draw
from tutorlib.checks import efficiency as checks
from tutorlib.checks.draw import Draw

MANY_SEEDS = [f"many-{i}" for i in range(10)]
DRAWS = range(100)  # for properties of the hidden draws, which cost no check call
F64 = torch.float64


@pytest.fixture(scope="module")
def solution() -> dict:
    return solution_namespace("04_scaling")


@pytest.mark.parametrize(
    "name, check",
    [
        ("top_k_routing", checks.check_top_k_routing),
        ("load_balancing_loss", checks.check_load_balancing_loss),
        ("speculative_accept", checks.check_speculative_accept),
        ("online_softmax_update", checks.check_online_softmax_update),
    ],
)
def test_the_solutions_pass_under_many_seeds(solution, name: str, check) -> None:
    expect_pass(check, solution[name], seeds=MANY_SEEDS)


def _differs(values: list) -> bool:
    """The first value (the right one) differs from every other (None: not applicable)."""
    right, *others = values
    for other in others:
        if other is None:
            continue
        if isinstance(right, int) and right == other:
            return False
        if isinstance(right, torch.Tensor) and right.shape == other.shape:
            if right.dtype == torch.int64 and torch.equal(right, other):
                return False
            if right.is_floating_point() and torch.allclose(right, other, equal_nan=True):
                return False
    return True


# --- 1. Top-k routing ----------------------------------------------------------------------------


def routing(kind: str = ""):
    def top_k_routing(router_logits, k):
        logits = router_logits
        if kind == "naive":
            e = torch.exp(logits)
            probs = e / e.sum(-1, keepdim=True)
        elif kind == "wrong_axis":
            probs = torch.softmax(logits, dim=0)
        else:
            probs = torch.softmax(logits, dim=-1)
        if kind == "raw_logits":
            return tuple(torch.topk(logits, k, dim=-1))
        weights, experts = torch.topk(probs, k, dim=-1, largest=kind != "smallest")
        if kind == "no_renormalise":
            return weights, experts
        if kind == "double_softmax":
            return torch.softmax(weights, dim=-1), experts
        if kind == "ascending":
            weights, experts = weights.flip(-1), experts.flip(-1)
        if kind == "detached":
            weights = weights.detach()
        return weights / weights.sum(-1, keepdim=True), experts

    return top_k_routing


def test_routing_written_other_ways_passes(solution) -> None:
    def softmax_of_top_logits(router_logits, k):  # Mixtral's way
        top, experts = torch.topk(router_logits, k, dim=-1)
        return torch.softmax(top, dim=-1), experts

    def sorted_probabilities(router_logits, k):
        probs = torch.softmax(router_logits, dim=-1)
        values, order = torch.sort(probs, dim=-1, descending=True)
        weights = values[:, :k]
        return weights / weights.sum(dim=1, keepdim=True), order[:, :k]

    def stable_by_hand(router_logits, k):
        shifted = router_logits - router_logits.max(dim=-1, keepdim=True).values
        e = shifted.exp()
        probs = e / e.sum(-1, keepdim=True)
        w, i = probs.topk(k)
        return w / w.sum(-1, keepdim=True), i

    for fn in (softmax_of_top_logits, sorted_probabilities, stable_by_hand, routing()):
        expect_pass(checks.check_top_k_routing, fn)


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("no_renormalise", "the k weights are not renormalised", 1),
        ("double_softmax", "went through a second softmax", 1),
        ("wrong_axis", "the softmax runs over the tokens", 1),
        ("smallest", "the k least likely experts", 1),
        ("raw_logits", "the weights are the router's logits", 1),
        ("ascending", "in descending order of weight", 1),
        ("naive", "exp overflowed", 0),
        ("detached", "No gradient flows through your top_k_routing", 0),
    ],
)
def test_routing_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    if visible:
        expect_hint(checks.check_top_k_routing, routing(kind), hint, hidden=False)
    expect_named_alone(checks.check_top_k_routing, routing(kind), hint)


def test_the_first_hidden_routing_tells_every_mistake_apart() -> None:
    for seed in DRAWS:
        logits, k = checks._routing_hidden(Draw(seed))[0]
        logits = logits.detach()
        right = checks._route(logits, k)
        for kind in checks.ROUTE_MISTAKES:
            wrong = checks._route(logits, k, kind)
            assert not (torch.equal(wrong[1], right[1]) and torch.allclose(wrong[0], right[0]))


def test_the_references_agree_with_tutorlib_moe() -> None:
    for seed in range(20):
        for logits, k in checks._routing_hidden(Draw(seed)):
            ours, theirs = checks._route(logits.detach(), k), moe.top_k_routing(logits.detach(), k)
            torch.testing.assert_close(ours[0], theirs[0])
            assert torch.equal(ours[1], theirs[1])
        for probs, experts, E in checks._balance_hidden(Draw(seed)):
            torch.testing.assert_close(
                checks._balance(probs.detach(), experts, E),
                moe.load_balancing_loss(probs.detach(), experts, E),
            )


def test_tutorlib_moe_is_refused() -> None:
    expect_refused(checks.check_top_k_routing, lambda logits, k: moe.top_k_routing(logits, k))
    alias = moe.load_balancing_loss
    expect_refused(checks.check_load_balancing_loss, lambda p, e, n: alias(p, e, n))


def test_hugging_face_balancing_loss_is_refused() -> None:
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    def through_mixtral(router_probs, experts, n_experts):
        k = experts.shape[1]
        logits = router_probs.log()  # a softmax of these is router_probs again
        return load_balancing_loss_func((logits,), n_experts, k) / k

    expect_refused(checks.check_load_balancing_loss, through_mixtral)


# --- 2. The load-balancing loss ------------------------------------------------------------------


def balance(kind: str = ""):
    def load_balancing_loss(router_probs, experts, n_experts):
        N, k = experts.shape
        chosen = experts[:, :1] if kind == "first_choice_only" else experts
        one_hot = F.one_hot(chosen, n_experts).to(router_probs.dtype)  # (N, k, E)
        f = one_hot.sum(dim=(0, 1)) / (N if kind in ("per_token", "first_choice_only") else N * k)
        P = router_probs.mean(dim=0)
        if kind == "probs_twice":
            f = P
        if kind == "counts_twice":
            P = f
        total = (f * P).mean() if kind == "mean" else (f * P).sum()
        if kind == "detached":
            total = total.detach()
        return total if kind == "no_n_experts" else n_experts * total

    return load_balancing_loss


def test_balancing_written_other_ways_passes(solution) -> None:
    def by_loop(router_probs, experts, n_experts):
        N, k = experts.shape
        loss = router_probs.new_zeros(())
        for e in range(n_experts):
            f = (experts == e).sum() / (N * k)
            loss = loss + f * router_probs[:, e].mean()
        return n_experts * loss

    def by_scatter(router_probs, experts, n_experts):
        counts = torch.zeros(n_experts, dtype=router_probs.dtype)
        counts = counts.scatter_add(
            0, experts.flatten(), torch.ones_like(experts.flatten(), dtype=router_probs.dtype)
        )
        return n_experts * (counts / counts.sum() * router_probs.mean(0)).sum()

    for fn in (by_loop, by_scatter, balance()):
        expect_pass(checks.check_load_balancing_loss, fn)


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("no_n_experts", "the factor E (the number of experts) is missing", 1),
        ("mean", "or the product was averaged over the experts", 1),
        ("per_token", "f_e is divided by the number of tokens N", 1),
        ("first_choice_only", "only each token's first choice is counted", 1),
        ("probs_twice", "f_e must be the fraction of assignments", 1),
        ("counts_twice", "P_e must be the mean router probability", 1),
        ("detached", "No gradient flows through your load_balancing_loss", 0),
    ],
)
def test_balancing_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    if visible:
        expect_hint(checks.check_load_balancing_loss, balance(kind), hint, hidden=False)
    expect_named_alone(checks.check_load_balancing_loss, balance(kind), hint)


def test_the_hidden_balancing_cases_tell_every_mistake_apart() -> None:
    for seed in DRAWS:
        cases = checks._balance_hidden(Draw(seed))
        probs, experts, E = cases[2]
        assert torch.bincount(experts.flatten(), minlength=E)[0] == 0  # an unused expert
        for kind in checks.BALANCE_MISTAKES:
            told = False
            for probs, experts, E in cases:
                p = probs.detach()
                values = [checks._balance(p, experts, E, m) for m in checks.BALANCE_MISTAKES]
                others = [
                    v for m, v in zip(checks.BALANCE_MISTAKES, values, strict=True) if m != kind
                ]
                wrong = checks._balance(p, experts, E, kind)
                told |= _differs([wrong, checks._balance(p, experts, E), *others])
            assert told, (seed, kind)


# --- 3. The speculative accept/reject step -------------------------------------------------------


def accept(kind: str = ""):
    def speculative_accept(target_probs, draft_probs, draft_tokens, uniforms):
        k = len(draft_tokens)
        n, rejected = 0, None
        for i in range(k):
            x = int(draft_tokens[i])
            p, q = target_probs[i, x], draft_probs[i, x]
            ratio = q / p if kind == "inverted" else p / q
            if uniforms[i] < ratio:
                n += 1
                continue
            if rejected is None:
                rejected = i
            if kind != "no_stop":
                break
        if rejected is None:
            return k, target_probs[k - 1 if kind == "bonus_row" else k]
        i = rejected
        if kind == "residual_is_p":
            residual = target_probs[i]
        elif kind == "residual_swapped":
            residual = torch.clamp(draft_probs[i] - target_probs[i], min=0)
        else:
            residual = torch.clamp(target_probs[i] - draft_probs[i], min=0)
        if kind != "not_normalised":
            residual = residual / residual.sum()
        return (n if kind == "no_stop" else i + (kind == "off_by_one")), residual

    return speculative_accept


def test_accept_written_other_ways_passes() -> None:
    def vectorised(target_probs, draft_probs, draft_tokens, uniforms):
        k = len(draft_tokens)
        rows = torch.arange(k)
        ratio = target_probs[rows, draft_tokens] / draft_probs[rows, draft_tokens]
        rejected = (uniforms >= ratio).nonzero()
        if len(rejected) == 0:
            return k, target_probs[k]
        i = int(rejected[0])
        residual = torch.relu(target_probs[i] - draft_probs[i])
        return torch.tensor(i), residual / residual.sum()

    def with_min(target_probs, draft_probs, draft_tokens, uniforms):
        for i, x in enumerate(draft_tokens.tolist()):
            if not uniforms[i].item() < min(1.0, (target_probs[i, x] / draft_probs[i, x]).item()):
                r = torch.where(
                    target_probs[i] > draft_probs[i], target_probs[i] - draft_probs[i], 0.0
                )
                return i, r / r.sum()
        return len(draft_tokens), target_probs[-1]

    for fn in (vectorised, with_min, accept()):
        expect_pass(checks.check_speculative_accept, fn)


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("inverted", "the ratio is inverted", 1),
        ("no_stop", "the count goes on after the first rejection", 0),
        ("off_by_one", "n_accepted counts the rejected token", 1),
        ("residual_is_p", "not from p", 1),
        ("residual_swapped", "target minus draft", 1),
        ("not_normalised", "must be divided by its sum", 1),
        ("bonus_row", "target_probs[k]", 1),
    ],
)
def test_accept_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    if visible:
        expect_hint(checks.check_speculative_accept, accept(kind), hint, hidden=False)
    expect_named_alone(checks.check_speculative_accept, accept(kind), hint)


def test_the_hidden_accept_cases_do_what_they_say() -> None:
    for seed in DRAWS:
        cases = checks._accept_hidden(Draw(seed))
        (p, q, x, u), first, every, greedy, small = cases
        n, _ = checks._accept(p, q, x, u)
        assert 2 <= n < len(x) and checks._accept(p, q, x, u, "no_stop")[0] == len(x) - 1
        assert checks._accept(*first)[0] == 0
        assert checks._accept(*every)[0] == len(every[2])
        assert checks._accept(*every, "inverted")[0] == 0  # the first token is one p likes more
        assert checks._accept(*small)[0] == 1 and small[0].dtype == torch.float32
        n, residual = checks._accept(*greedy)
        assert n < len(greedy[2]) and residual.max() == 1.0


def test_the_reference_agrees_with_tutorlib_speculative() -> None:
    for seed in range(30):
        for p, q, x, u in checks._accept_hidden(Draw(seed)):
            n, residual = checks._accept(p, q, x, u)
            n2, residual2 = speculative.speculative_accept(p, q, x, u)
            assert n == n2
            torch.testing.assert_close(residual, residual2)


def test_tutorlib_speculative_is_refused() -> None:
    renamed = speculative.speculative_accept
    expect_refused(checks.check_speculative_accept, lambda p, q, x, u: renamed(p, q, x, u))


# --- 4. One tile of the online softmax -----------------------------------------------------------


def update(kind: str = ""):
    def online_softmax_update(m, l, acc, scores, values):  # noqa: E741
        m_new = scores.amax(-1) if kind == "tile_max" else torch.maximum(m, scores.amax(-1))
        shift = m_new if kind == "no_guard" else torch.nan_to_num(m_new, neginf=0.0)
        scale = torch.exp(shift - m) if kind == "inverted_scale" else torch.exp(m - shift)
        p = torch.exp(scores - shift[..., None])
        l_new = (l if kind in ("no_rescale_l", "no_rescale") else l * scale) + p.sum(-1)
        kept = acc if kind in ("no_rescale_acc", "no_rescale") else acc * scale[..., None]
        acc_new = kept + torch.einsum("...qk,...kd->...qd", p, values)
        if kind == "normalised":
            acc_new = acc_new / l_new[..., None]
        if kind == "in_place":
            acc.mul_(scale[..., None]).add_(p @ values)
            return m_new, l_new, acc
        return m_new, l_new, acc_new

    return online_softmax_update


def test_update_written_other_ways_passes() -> None:
    def with_masked_fill(m, l, acc, scores, values):  # noqa: E741
        m_new = torch.max(m, scores.max(dim=-1).values)
        safe = m_new.masked_fill(m_new == float("-inf"), 0)
        alpha = (m - safe).exp()
        p = (scores - safe.unsqueeze(-1)).exp()
        return m_new, alpha * l + p.sum(-1), alpha.unsqueeze(-1) * acc + p.matmul(values)

    expect_pass(checks.check_online_softmax_update, with_masked_fill)
    expect_pass(checks.check_online_softmax_update, update())


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("no_rescale_l", "the running sum is not rescaled", 1),
        ("no_rescale_acc", "the accumulator is not rescaled", 1),
        ("no_rescale", "neither the running sum nor the accumulator", 1),
        ("inverted_scale", "the rescaling factor is inverted", 1),
        ("tile_max", "the new maximum is the tile's own maximum", 1),
        ("normalised", "acc is divided by l", 1),
        ("no_guard", "a row whose scores are all -inf so far gives NaN", 1),
    ],
)
def test_update_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    if visible:
        expect_hint(checks.check_online_softmax_update, update(kind), hint, hidden=False)
    expect_named_alone(checks.check_online_softmax_update, update(kind), hint)


def test_an_update_in_place_is_refused() -> None:
    expect_hint(checks.check_online_softmax_update, update("in_place"), "changed an input")


def test_the_first_two_hidden_tiles_tell_every_mistake_apart() -> None:
    for seed in DRAWS:
        start, later = checks._update_hidden(Draw(seed))[:2]
        for kind in checks.UPDATE_MISTAKES:
            told = any(
                not all(
                    torch.allclose(a, b, equal_nan=True)
                    for a, b in zip(
                        checks._update(*state), checks._update(*state, kind), strict=True
                    )
                )
                for state in (start, later)
            )
            assert told, (seed, kind)


def test_the_reference_agrees_with_tutorlib_flash() -> None:
    for seed in range(30):
        for state in checks._update_hidden(Draw(seed)):
            for ours, theirs in zip(
                checks._update(*state), flash.online_softmax_update(*state), strict=True
            ):
                torch.testing.assert_close(ours, theirs)


def test_attention_cannot_stand_in_for_the_update() -> None:
    def through_flash(m, l, acc, scores, values):  # noqa: E741
        return flash.online_softmax_update(m, l, acc, scores, values)

    def through_sdpa(m, l, acc, scores, values):  # noqa: E741
        # the tile's softmax-weighted values from the fused kernel (keys: the identity, so
        # that query @ key^T is the scores), merged with the state by log-sum-exp
        m_new = torch.maximum(m, scores.amax(-1))
        shift = torch.nan_to_num(m_new, neginf=0.0)
        tile_sum = torch.exp(scores - shift[..., None]).sum(-1)
        Tk = scores.shape[-1]
        eye = torch.eye(Tk, dtype=scores.dtype).expand(*scores.shape[:-2], Tk, Tk)
        out = F.scaled_dot_product_attention(scores, eye, values, scale=1.0).nan_to_num()
        scale = torch.exp(m - shift)
        return m_new, l * scale + tile_sum, acc * scale[..., None] + out * tile_sum[..., None]

    expect_refused(checks.check_online_softmax_update, through_flash)
    expect_refused(checks.check_online_softmax_update, through_sdpa)


# --- Hidden failures -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "check, wrong",
    [
        (checks.check_top_k_routing, routing("no_renormalise")),
        (checks.check_load_balancing_loss, balance("per_token")),
        (checks.check_speculative_accept, accept("inverted")),
        (checks.check_online_softmax_update, update("no_rescale_l")),
    ],
)
def test_a_hidden_failure_shows_no_expected_value(check, wrong) -> None:
    draw._use_seed("course-a")
    with pytest.raises(ExerciseError) as error:
        check(wrong, hidden=True)
    assert error.value.expected is None and error.value.hidden
    assert "expected" not in str(error.value).lower().replace("expected values", "")


def test_the_visible_balancing_loss_is_the_one_the_notebook_quotes() -> None:
    probs, experts, E = checks._visible_balance()[0]
    assert round(checks._balance(probs.detach(), experts, E).item(), 4) == 1.0749


def test_the_visible_accept_cases_are_the_ones_the_notebook_quotes() -> None:
    (p, q, x, u), (p2, q2, x2, u2) = checks._visible_accept()
    n, residual = checks._accept(p, q, x, u)
    assert n == 2
    torch.testing.assert_close(residual, torch.tensor([1 / 3, 1 / 3, 0.0, 1 / 3], dtype=F64))
    assert checks._accept(p2, q2, x2, u2)[0] == 3


def test_the_reference_reached_by_getattr_is_refused() -> None:
    rule = getattr(speculative, "speculative" + "_accept")
    expect_refused(checks.check_speculative_accept, lambda p, q, x, u: rule(p, q, x, u))


def test_a_spy_that_caches_the_references_answers_fails_the_hidden_tests() -> None:
    """Run the hidden check with a spy that records its inputs, answer them with the reference
    outside the check, and hand in the cache: the hidden inputs change from run to run."""
    answers, asked = {}, []

    def spy(m, l, acc, scores, values):  # noqa: E741
        key = tuple(scores.flatten().tolist())
        asked.append((key, m, l, acc, scores, values))
        return answers.get(key, (m, l, acc))

    for _ in range(5):
        try:
            checks.check_online_softmax_update(spy, hidden=True)
        except ExerciseError:
            pass
        for key, *state in asked:
            answers[key] = flash.online_softmax_update(*state)
        asked.clear()
    with pytest.raises(ExerciseError, match="online_softmax_update on"):
        checks.check_online_softmax_update(spy, hidden=True)
