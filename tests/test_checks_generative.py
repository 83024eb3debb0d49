"""The Chapter 6 checks: right answers written differently pass, every likely mistake gets its
own hint whatever the hidden tests draw, neither tutorlib's references nor Hugging Face's can
stand in for the learner's code, the sampler's statistical check keeps its false-failure bound,
and the written-out BERT and GPT-2 references agree with Hugging Face's layers."""

from __future__ import annotations

import functools
import importlib.util
import itertools
import math
import runpy
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import HIDDEN_SEEDS, expect_hint, expect_pass
from tests.grading import solution_namespace
from tutorlib import decoding, generation, pixels, pretrained
from tutorlib.checks import draw
from tutorlib.checks import generative as checks
from tutorlib.checks.draw import Draw

NOT_ALLOWED = "Not allowed in this exercise"
MANY_SEEDS = range(200)  # for properties of the hidden draws, which cost no check call


@pytest.fixture(scope="module")
def solution() -> dict:
    return solution_namespace("06_generative")


def test_output_on_stderr_and_warnings_stay_quiet(solution, capfd) -> None:
    def noisy(logits, temperature, generator=None):
        warnings.warn("a torch-like warning", UserWarning, stacklevel=1)
        print("to stderr", file=sys.stderr)
        return solution["sample_with_temperature"](logits, temperature, generator)

    checks.check_sample_with_temperature(noisy, hidden=True)
    assert capfd.readouterr().err == ""


# --- 1. The causal LM loss ---------------------------------------------------------------------


def _loss(kind: str = ""):
    def causal_lm_loss(logits, tokens):
        B, T, V = logits.shape
        if kind == "unshifted":
            return F.cross_entropy(logits.reshape(-1, V), tokens.reshape(-1))
        if kind == "backwards":
            return F.cross_entropy(logits[:, 1:].reshape(-1, V), tokens[:, :-1].reshape(-1))
        if kind == "view":
            return F.cross_entropy(logits[:, :-1].view(-1, V), tokens[:, 1:].view(-1))
        if kind == "classes_last":
            return F.cross_entropy(logits[:, :-1], tokens[:, 1:])
        if kind == "misaligned":
            return F.cross_entropy(logits.reshape(-1, V), tokens[:, 1:].reshape(-1))
        if kind == "time_softmax":
            log_probs = logits[:, :-1].log_softmax(dim=1)
            return -log_probs.gather(-1, tokens[:, 1:, None]).mean()
        if kind == "nll_of_logits":
            return F.nll_loss(logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1))
        if kind == "probabilities":
            probs = logits[:, :-1].softmax(dim=-1)
            return F.cross_entropy(probs.reshape(-1, V), tokens[:, 1:].reshape(-1))
        if kind == "over_vocabulary":
            one_hot = F.one_hot(tokens[:, 1:], V).to(logits.dtype)
            return -(logits[:, :-1].log_softmax(dim=-1) * one_hot).mean()
        if kind == "detached":
            logits = logits.detach()
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1), reduction="sum"
        )
        return {"sum": loss, "batch": loss / B, "over_B_T": loss / (B * T)}.get(
            kind, loss / (B * (T - 1))
        )

    return causal_lm_loss


@pytest.mark.parametrize(
    "kind, hint",
    [
        ("unshifted", "Likely mistake: the targets are not shifted"),
        ("backwards", "the shift goes the wrong way"),
        ("sum", "the losses are summed: take the mean"),
        ("batch", "averaged over the batch only"),
        ("over_B_T", "divided by B * T"),
        ("over_vocabulary", "the mean ran over the vocabulary too"),
        ("time_softmax", "runs over the positions"),
        ("nll_of_logits", "F.nll_loss was given raw logits"),
        ("probabilities", "F.cross_entropy was given probabilities"),
        ("view", "instead of .view"),
        ("classes_last", "classes in dimension 1"),
        ("misaligned", "must line up"),
    ],
)
def test_causal_lm_loss_mistakes_are_named(kind: str, hint: str) -> None:
    expect_hint(checks.check_causal_lm_loss, _loss(kind), hint, hidden=False)
    expect_hint(checks.check_causal_lm_loss, _loss(kind), hint)


def test_causal_lm_loss_written_another_way_passes() -> None:
    def classes_in_dim_1(logits, tokens):  # F.cross_entropy's own layout, (B, V, T - 1)
        return F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:])

    def by_hand(logits, tokens):
        log_probs = logits[:, :-1] - logits[:, :-1].logsumexp(dim=-1, keepdim=True)
        return -log_probs.gather(-1, tokens[:, 1:].unsqueeze(-1)).mean()

    def per_sequence(logits, tokens):  # every sequence has T - 1 predictions: the mean of means
        losses = [F.cross_entropy(logits[b, :-1], tokens[b, 1:]) for b in range(len(logits))]
        return torch.stack(losses).mean()

    for candidate in (classes_in_dim_1, by_hand, per_sequence, _loss()):
        expect_pass(checks.check_causal_lm_loss, candidate)


def test_causal_lm_loss_checks_gradients() -> None:
    expect_hint(checks.check_causal_lm_loss, _loss("detached"), "No gradient flows through")


def test_causal_lm_loss_hidden_draws_include_t_2_and_v_equal_to_t_minus_1() -> None:
    for seed in MANY_SEEDS:
        cases = checks._lm_hidden(Draw(seed))
        (B, T, V), tokens = cases[0][0].shape, cases[0][1]
        assert B >= 2 and T >= 4 and V != T - 1 and tokens.shape == (B, T)
        assert cases[1][0].shape[1] == 2
        assert cases[2][0].shape[2] == cases[2][0].shape[1] - 1
        assert all(logits.requires_grad for logits, _ in cases)


def test_the_reference_is_refused_under_any_name() -> None:
    from tutorlib.generation import causal_lm_loss as aliased

    copy = runpy.run_path(generation.__file__)["causal_lm_loss"]  # a fresh copy of the module
    spec = importlib.util.spec_from_file_location("another_generation", generation.__file__)
    another = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = another  # its dataclasses look their module up while it runs
    try:
        spec.loader.exec_module(another)
    finally:
        del sys.modules[spec.name]
    cached = functools.lru_cache(maxsize=None)(generation.causal_lm_loss)
    through_c = functools.partial(generation.causal_lm_loss)

    def through_map(logits, tokens):  # the reference called from C code
        return next(map(generation.causal_lm_loss, [logits], [tokens]))

    for reference in (aliased, copy, another.causal_lm_loss, cached, through_c, through_map):
        expect_hint(checks.check_causal_lm_loss, reference, f"{NOT_ALLOWED}: your causal_lm_loss")
    # the reference still works outside the check
    logits, tokens = torch.zeros(1, 3, 4), torch.zeros(1, 3, dtype=torch.long)
    assert math.isclose(float(aliased(logits, tokens)), math.log(4), rel_tol=1e-6)


def test_the_checks_private_references_are_refused() -> None:
    def via_variant(logits, tokens):  # "the variant builder called with no mistake"
        return checks._lm_loss(logits, tokens)

    def via_reference(logits, tokens):
        return checks._causal_lm_loss(logits, tokens)

    def via_perplexity(logits, tokens):  # per-sequence perplexities of a "model" that is logits
        ppl = generation.sequence_perplexity(lambda t: logits, tokens)
        return ppl.log().mean()

    for cheat in (via_variant, via_reference, via_perplexity):
        expect_hint(checks.check_causal_lm_loss, cheat, NOT_ALLOWED, hidden=False)


# --- 2. Sampling with a temperature ------------------------------------------------------------


def _sampler(kind: str = ""):
    def sample_with_temperature(logits, temperature, generator=None):
        if temperature == 0 and kind != "no_greedy":
            return logits.argmax(dim=-1)
        if kind == "after_softmax":
            probs = torch.softmax(logits, dim=-1) / temperature
        elif kind == "multiplied":
            probs = torch.softmax(logits * temperature, dim=-1)
        elif kind == "batch_dim":
            probs = torch.softmax(logits / temperature, dim=0)
        elif kind == "twice":
            probs = torch.softmax(torch.softmax(logits / temperature, dim=-1), dim=-1)
        elif kind == "log_probs":
            probs = torch.log_softmax(logits / temperature, dim=-1)
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
        if kind == "argmax":
            return probs.argmax(dim=-1)
        if kind == "no_generator":
            return torch.multinomial(probs, 1).squeeze(-1)
        if kind == "global_seed":  # reproducible, but not by the generator it is given
            torch.manual_seed(0)
            return torch.multinomial(probs, 1).squeeze(-1)
        draws = torch.multinomial(probs, 1, generator=generator)
        if kind == "squeeze_all":
            return draws.squeeze()
        return draws if kind == "column" else draws.squeeze(-1)

    return sample_with_temperature


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("after_softmax", "applied after the softmax", True),
        ("multiplied", "multiplied by the temperature", True),
        ("argmax", "the most probable token every time", True),
        ("batch_dim", "over the batch dimension", True),
        ("twice", "softmax was applied twice", True),
        ("log_probs", "needs finite, non-negative weights", True),
        ("no_generator", "seeded alike gave different tokens", True),
        ("global_seed", "do not seed torch's global generator", True),
        ("column", ".squeeze(-1)", True),
        ("squeeze_all", ".squeeze() also drops the batch dimension", False),
        ("no_greedy", "Temperature 0 means greedy", False),
    ],
)
def test_sampling_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    expect_hint(checks.check_sample_with_temperature, _sampler(kind), hint)
    if visible:
        expect_hint(checks.check_sample_with_temperature, _sampler(kind), hint, hidden=False)


def _gumbel_max(logits, temperature, generator=None):
    if temperature == 0:
        return logits.argmax(dim=-1)
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype)
    return (logits / temperature - torch.log(-torch.log(u))).argmax(dim=-1)


def _inverse_cdf(logits, temperature, generator=None):
    if temperature == 0:
        return logits.argmax(dim=-1)
    cdf = torch.softmax(logits / temperature, dim=-1).cumsum(dim=-1)
    u = torch.rand(logits.shape[0], 1, generator=generator, dtype=logits.dtype)
    return (cdf < u).sum(dim=-1).clamp(max=logits.shape[-1] - 1)


def _powered(logits, temperature, generator=None):  # probs ** (1 / T), renormalised
    if temperature == 0:
        return torch.max(logits, dim=-1).indices
    weights = torch.softmax(logits, dim=-1) ** (1 / temperature)
    return torch.multinomial(weights, num_samples=1, generator=generator)[:, 0]


@pytest.mark.parametrize("sampler", [_gumbel_max, _inverse_cdf, _powered])
def test_other_correct_samplers_pass(sampler) -> None:
    expect_pass(checks.check_sample_with_temperature, sampler)


def test_a_correct_sampler_passes_whatever_the_seed() -> None:
    """Far more seeds than a course: the false-failure chance per call is below 3e-9."""
    for seed in range(40):
        draw._use_seed(f"sampler-{seed}")
        checks.check_sample_with_temperature(_sampler(), hidden=True)


def test_the_sampling_tolerance_keeps_false_failures_below_1e_6() -> None:
    n, t = checks.DRAWS, checks.SAMPLING_TOLERANCE
    per_frequency = 2 * math.exp(-2 * n * t**2)  # Hoeffding
    most_frequencies = 2 * 3 * 7  # two sampled cases, at most 3 rows of 7 tokens
    assert most_frequencies * per_frequency < 1e-6
    assert checks.SEPARATION > 2 * t
    visible = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 1.0, 0.5, 0.0]], dtype=torch.float64)
    assert checks._sampling_separation(visible, 0.5) > 2 * t
    for seed in MANY_SEEDS:
        cases = checks._sampling_hidden(Draw(seed))
        temperatures = [T for _, T, _ in cases]
        assert temperatures[0] < 1 < temperatures[1] and temperatures[3] == 0
        for rows, T, _ in cases[:2]:
            assert rows.shape[0] * rows.shape[1] <= 3 * 7
            assert checks._sampling_separation(rows, T) >= checks.SEPARATION
        assert cases[2][0].shape[0] == 1


def test_the_hidden_tests_give_generators_from_the_draw() -> None:
    seen = []

    def recording(logits, temperature, generator=None):
        seen.append(generator.initial_seed())
        return _sampler()(logits, temperature, generator)

    for seed in HIDDEN_SEEDS[:2]:
        draw._use_seed(seed)
        checks.check_sample_with_temperature(recording, hidden=True)
    assert len(set(seen)) > 4  # different seeds in each case and run, the same ones repeated


def test_sampling_refuses_the_reference() -> None:
    def by_reference(logits, temperature, generator=None):
        return generation.sample_next(logits, temperature, generator=generator)

    def by_temperature(logits, temperature, generator=None):
        if temperature == 0:
            return logits.argmax(dim=-1)
        probs = generation.apply_temperature(logits, temperature).softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    for cheat in (by_reference, by_temperature):
        expect_hint(checks.check_sample_with_temperature, cheat, NOT_ALLOWED, hidden=False)


# --- 3. Top-k -----------------------------------------------------------------------------------


def _top_k(kind: str = ""):
    def top_k_filter(logits, k):
        values = logits.sort(dim=-1, descending=True).values
        if kind == "ties":  # nanoGPT's and Hugging Face's way: every tie at the k-th value stays
            return logits.masked_fill(logits < values[:, [k - 1]], float("-inf"))
        if kind == "k_plus_1":
            return logits.masked_fill(logits < values[:, [k]], -math.inf)
        if kind == "strict":
            return logits.masked_fill(logits <= values[:, [k - 1]], float("-inf"))
        if kind == "kthvalue":  # the k-th *smallest*
            threshold = torch.kthvalue(logits, k, dim=-1, keepdim=True).values
            return logits.masked_fill(logits < threshold, float("-inf"))
        if kind == "kthvalue_strict":
            threshold = torch.kthvalue(logits, k, dim=-1, keepdim=True).values
            return torch.where(logits > threshold, logits, torch.full_like(logits, -math.inf))
        if kind == "smallest":
            index = torch.topk(logits, k, dim=-1, largest=False).indices
        elif kind == "ascending":
            index = logits.argsort(dim=-1)[:, :k]
        else:
            index = torch.topk(logits, k, dim=-1).indices
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, index, True)
        if kind == "probabilities":
            return torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)
        if kind == "zero_fill":
            return logits.masked_fill(~keep, 0.0)
        if kind == "finite_fill":
            return logits.masked_fill(~keep, -1e9)
        if kind == "in_place":
            logits[~keep] = float("-inf")
            return logits
        if kind == "mask":
            return keep
        if kind == "scaled":
            return logits.masked_fill(~keep, float("-inf")) / 2
        if kind == "float32":
            return logits.float().masked_fill(~keep, float("-inf"))
        return logits.masked_fill(~keep, float("-inf"))

    return top_k_filter


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("ties", "tie with the k-th largest", False),  # the worked example has no ties
        ("k_plus_1", "one token too many", True),
        ("strict", "too few tokens were kept", False),
        ("kthvalue", "counted from the wrong end", True),
        ("kthvalue_strict", "counted from the wrong end", False),  # right when V = 2k
        ("smallest", "the k *smallest* logits", True),
        ("ascending", "the k *smallest* logits", True),
        ("probabilities", "returned probabilities", True),
        ("zero_fill", "set the removed tokens to 0, not -inf", True),
        ("finite_fill", "not -inf", True),
        ("in_place", "changed an input it was given", True),
        ("mask", "not indices or a mask", True),
        ("scaled", "changed the logits of the tokens it kept", True),
        ("float32", "dtype torch.float32", True),
    ],
)
def test_top_k_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    expect_hint(checks.check_top_k_filter, _top_k(kind), hint)
    if visible:
        expect_hint(checks.check_top_k_filter, _top_k(kind), hint, hidden=False)


def test_top_k_ties_are_broken_any_way() -> None:
    def last_of_ties(logits, k):  # a stable sort of the flipped row keeps the last of ties
        order = torch.sort(-logits.flip(-1), dim=-1, stable=True).indices
        index = logits.shape[-1] - 1 - order[:, :k]
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, index, True)
        return logits.masked_fill(~keep, float("-inf"))

    def by_values(logits, k):  # the values topk returns, scattered into a row of -inf
        values, index = logits.topk(k)
        return torch.full_like(logits, -math.inf).scatter(-1, index, values)

    def row_by_row(logits, k):
        out = torch.full_like(logits, float("-inf"))
        for r in range(len(logits)):
            for i in sorted(range(logits.shape[1]), key=lambda i: -float(logits[r, i]))[:k]:
                out[r, i] = logits[r, i]
        return out

    for candidate in (last_of_ties, by_values, row_by_row):
        expect_pass(checks.check_top_k_filter, candidate)


def test_top_k_hidden_draws_force_ties_and_k_1_and_v() -> None:
    for seed in MANY_SEEDS:
        (main, k), (first, one), (last, V) = checks._top_k_hidden(Draw(seed))
        assert one == 1 and V == last.shape[1]
        assert main.shape[1] - 2 * k not in (-2, -1, 0, 1) and 2 <= k <= main.shape[1] - 2
        descending = main.sort(dim=-1, descending=True).values
        assert descending[0, k - 1] > descending[0, k]  # untied
        assert descending[1, k - 1] == descending[1, k] and descending[2, k - 2] == descending[2, k]
        assert (first[1] == first[1].max()).sum() == 2  # a tie at the top


def test_top_k_refuses_the_reference() -> None:
    expect_hint(checks.check_top_k_filter, generation.top_k_filter, NOT_ALLOWED, hidden=False)

    def through_sampling_code(logits, k):  # the reference, reached through the module's dict
        return vars(generation)["top_k_filter"](logits, k)

    expect_hint(checks.check_top_k_filter, through_sampling_code, NOT_ALLOWED, hidden=False)


def test_hugging_face_processors_are_refused_when_transformers_is_loaded() -> None:
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )
    from transformers.loss.loss_utils import ForCausalLMLoss

    def hf_top_k(logits, k):
        return TopKLogitsWarper(top_k=k)(None, logits)

    def hf_top_p(logits, p):
        return TopPLogitsWarper(top_p=p)(None, logits)

    def hf_penalty(logits, previous, penalty):
        return RepetitionPenaltyLogitsProcessor(penalty=penalty)(previous, logits)

    def hf_temperature(logits, temperature, generator=None):
        probs = TemperatureLogitsWarper(temperature)(None, logits).softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    def hf_loss(logits, tokens):
        return ForCausalLMLoss(logits, tokens, vocab_size=logits.shape[-1])

    expect_hint(checks.check_top_k_filter, hf_top_k, NOT_ALLOWED, hidden=False)
    expect_hint(checks.check_top_p_filter, hf_top_p, NOT_ALLOWED, hidden=False)
    expect_hint(checks.check_apply_repetition_penalty, hf_penalty, NOT_ALLOWED, hidden=False)
    expect_hint(checks.check_sample_with_temperature, hf_temperature, NOT_ALLOWED, hidden=False)
    expect_hint(checks.check_causal_lm_loss, hf_loss, NOT_ALLOWED, hidden=False)
    assert torch.isinf(TopKLogitsWarper(top_k=1)(None, torch.randn(1, 3))).sum() == 2  # restored


# --- 4. Top-p -----------------------------------------------------------------------------------


def _top_p(kind: str = ""):
    def top_p_filter(logits, p):
        descending = kind != "ascending"
        if kind == "unsorted":
            sorted_logits, order = logits, torch.arange(logits.shape[-1]).expand_as(logits)
        else:
            sorted_logits, order = logits.sort(dim=-1, descending=descending)
        probs = torch.softmax(sorted_logits, dim=-1)
        if kind == "logits":
            probs = sorted_logits
        cumulative = probs.cumsum(dim=-1)
        if kind in ("drops_crossing", "drops_crossing_unforced"):
            keep_sorted = cumulative < p
            if kind == "drops_crossing":
                keep_sorted[:, 0] = True
        elif kind == "one_more":
            keep_sorted = torch.cat(
                [torch.ones_like(cumulative[:, :2], dtype=torch.bool), cumulative[:, :-2] < p],
                dim=-1,
            )
        else:
            keep_sorted = cumulative - probs < p
        if kind == "sorted_order":
            return sorted_logits.masked_fill(~keep_sorted, float("-inf"))
        if kind == "gathered":
            keep = keep_sorted.gather(-1, order)
        elif kind == "unmapped":
            keep = keep_sorted
        else:
            keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        if kind == "probabilities":
            return torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)
        return logits.masked_fill(~keep, float("-inf"))

    return top_p_filter


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("drops_crossing", "takes the cumulative probability past p was dropped", True),
        ("drops_crossing_unforced", "nothing was left", True),
        ("one_more", "one token too many", True),
        ("unsorted", "sort the probabilities in descending order first", False),
        ("ascending", "the least probable tokens were kept", True),
        ("logits", "the cumulative sum is over logits", False),
        ("gathered", "put back with gather", True),
        ("unmapped", "applied to the logits in the vocabulary's order", True),
        ("sorted_order", "in sorted order", True),
        ("probabilities", "returned probabilities", True),
    ],
)
def test_top_p_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    expect_hint(checks.check_top_p_filter, _top_p(kind), hint)
    if visible:
        expect_hint(checks.check_top_p_filter, _top_p(kind), hint, hidden=False)


def _hugging_face_top_p(logits, p):
    """TopPLogitsWarper's algorithm: sort ascending, remove while the mass is <= 1 - p."""
    sorted_logits, order = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= 1 - p
    remove_sorted[..., -1:] = False
    remove = remove_sorted.scatter(1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def _shifted_top_p(logits, p):
    """The other common way: remove where the running total is past p, shifted right by one."""
    sorted_logits, order = torch.sort(logits, descending=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative > p
    remove_sorted[..., 1:] = remove_sorted[..., :-1].clone()
    remove_sorted[..., 0] = False
    remove = remove_sorted.scatter(1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def _float32_top_p(logits, p):  # in float32, the inverse permutation by argsort
    sorted_logits, order = logits.float().sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    keep_sorted = probs.cumsum(dim=-1) - probs < p
    keep = keep_sorted.gather(-1, order.argsort(dim=-1))
    return torch.where(keep, logits, torch.full_like(logits, -math.inf))


@pytest.mark.parametrize("candidate", [_hugging_face_top_p, _shifted_top_p, _float32_top_p])
def test_other_correct_nucleus_filters_pass(candidate) -> None:
    expect_pass(checks.check_top_p_filter, candidate)


def test_top_p_hidden_draws_stay_clear_of_the_boundary_and_separate() -> None:
    """No running total lies within 2e-3 of p, so float32 rounding cannot flip a token."""
    for seed in MANY_SEEDS:
        (main, p), (everything, one), (top, tiny) = checks._top_p_hidden(Draw(seed))
        assert checks._top_p_separates(main, p) and one == 1.0 and tiny <= 1e-2
        assert float(torch.softmax(main[0], dim=-1).max()) > p  # the peaked row
        assert (torch.isfinite(generation.top_p_filter(main[1:], p)).sum(dim=-1) >= 2).any()
        for logits, q in ((everything, one), (top, tiny)):
            totals = logits.sort(dim=-1, descending=True).values.softmax(dim=-1).cumsum(dim=-1)
            assert float((totals[:, :-1] - q).abs().min()) >= 2e-3


def test_top_p_refuses_the_reference() -> None:
    expect_hint(checks.check_top_p_filter, generation.top_p_filter, NOT_ALLOWED, hidden=False)

    def via_nucleus(logits, p):  # the check's own mask builder
        return logits.masked_fill(~checks._nucleus(logits, p), float("-inf"))

    expect_hint(checks.check_top_p_filter, via_nucleus, NOT_ALLOWED, hidden=False)


# --- 5. The repetition penalty -----------------------------------------------------------------


def _penalty(kind: str = ""):
    def apply_repetition_penalty(logits, previous, penalty):
        if kind == "other_rows":
            previous = previous.reshape(1, -1).expand(logits.shape[0], -1)
        seen = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, previous, True)
        if kind == "every_token":
            seen = torch.ones_like(seen)
        if kind == "divide_all":
            return torch.where(seen, logits / penalty, logits)
        if kind == "swapped":
            return torch.where(
                seen, torch.where(logits > 0, logits * penalty, logits / penalty), logits
            )
        if kind == "subtract":
            return torch.where(seen, logits - penalty, logits)
        if kind == "per_occurrence":
            out = logits.clone()
            for b in range(len(previous)):
                for token in previous[b].tolist():
                    value = out[b, token]
                    out[b, token] = value / penalty if value > 0 else value * penalty
            return out
        if kind == "in_place":
            logits[seen] = torch.where(logits > 0, logits / penalty, logits * penalty)[seen]
            return logits
        return torch.where(
            seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits
        )

    return apply_repetition_penalty


@pytest.mark.parametrize(
    "kind, hint",
    [
        ("divide_all", "every seen logit was divided"),
        ("swapped", "positive logits were multiplied"),
        ("every_token", "every token was penalised"),
        ("other_rows", "seen in another row"),
        ("subtract", "the penalty was subtracted"),
        ("per_occurrence", "once per occurrence"),
        ("in_place", "changed an input it was given"),
    ],
)
def test_repetition_penalty_mistakes_are_named(kind: str, hint: str) -> None:
    expect_hint(checks.check_apply_repetition_penalty, _penalty(kind), hint, hidden=False)
    expect_hint(checks.check_apply_repetition_penalty, _penalty(kind), hint)


def test_repetition_penalty_written_another_way_passes() -> None:
    def by_sets(logits, previous, penalty):
        out = logits.clone()
        for b, history in enumerate(previous.tolist()):
            for token in set(history):
                value = out[b, token]
                out[b, token] = value / penalty if value > 0 else value * penalty
        return out

    def by_isin(logits, previous, penalty):
        vocabulary = torch.arange(logits.shape[-1])
        seen = torch.stack([torch.isin(vocabulary, row) for row in previous])
        factor = torch.where(logits > 0, 1 / penalty, penalty)
        return torch.where(seen, logits * factor, logits)

    def by_gather(logits, previous, penalty):  # Hugging Face's way: gather, change, scatter
        picked = logits.gather(1, previous)
        picked = torch.where(picked < 0, picked * penalty, picked / penalty)
        return logits.scatter(1, previous, picked)

    for candidate in (by_sets, by_isin, by_gather):
        expect_pass(checks.check_apply_repetition_penalty, candidate)


def test_membership_tested_on_text_fails() -> None:
    """Right while every id has one digit (the old hidden tests), wrong with multi-digit ids."""

    def by_text(logits, previous, penalty):
        out = logits.clone()
        for b in range(len(logits)):
            text = str(previous[b].tolist())
            for v in range(logits.shape[1]):
                if str(v) in text:
                    value = out[b, v]
                    out[b, v] = value / penalty if value > 0 else value * penalty
        return out

    checks.check_apply_repetition_penalty(by_text, hidden=False)  # the worked example passes
    expect_hint(checks.check_apply_repetition_penalty, by_text, "differs from the expected values")


def test_repetition_penalty_hidden_draws_have_multi_digit_ids_and_repeats() -> None:
    for seed in MANY_SEEDS:
        (logits, previous, penalty), (_, _, one), (_, single, _) = checks._penalty_hidden(
            Draw(seed)
        )
        assert logits.shape[1] >= 12 and penalty > 1 and one == 1.0 and single.shape[1] == 1
        assert (previous >= 10).any(dim=1).all() and (previous[:, 0] == previous[:, -1]).all()
        assert (logits.abs() >= 0.1).all()


def test_repetition_penalty_refuses_the_reference() -> None:
    expect_hint(
        checks.check_apply_repetition_penalty,
        generation.apply_repetition_penalty,
        NOT_ALLOWED,
        hidden=False,
    )


# --- 6. One step of beam search ----------------------------------------------------------------


def _beam(kind: str = ""):
    def beam_search_step(scores, log_probs):
        B, k = scores.shape
        V = log_probs.shape[-1]
        if kind == "no_scores":
            total = log_probs.reshape(B, k * V)
        elif kind == "multiplied":
            total = (scores.reshape(B * k, 1) * log_probs).reshape(B, k * V)
        elif kind == "tiled":
            total = scores.repeat(1, V) + log_probs.reshape(B, k * V)
        else:
            total = (scores.reshape(B * k, 1) + log_probs).reshape(B, k * V)
        if kind == "one_child_each":
            best, token = total.reshape(B, k, V).max(dim=-1)
            new, beam = best.sort(dim=1, descending=True)
            return new, beam, token.gather(1, beam)
        if kind == "lowest":
            new, index = total.topk(k, dim=-1, largest=False)
        elif kind == "ascending_sort":
            new, index = total.sort(dim=-1)
            new, index = new[:, :k], index[:, :k]
        else:
            new, index = total.topk(k, dim=-1, largest=True, sorted=True)
        beam, token = index // V, index % V
        if kind == "global":
            beam = beam + k * torch.arange(B)[:, None]
        if kind == "swapped":
            beam, token = token, beam
        if kind == "by_k":
            beam, token = index // k, index % k
        if kind == "ascending":
            return new.flip(-1), beam.flip(-1), token.flip(-1)
        if kind == "two":
            return new, index
        if kind == "float_ids":
            return new, index / V, token
        return new, beam, token

    return beam_search_step


@pytest.mark.parametrize(
    "kind, hint",
    [
        ("no_scores", "scores were not added"),
        ("multiplied", "multiplied by the log-probabilities"),
        ("one_child_each", "each beam kept exactly one child"),
        ("tiled", "scores.repeat(1, V) tiles"),
        ("lowest", "the k *lowest* totals were kept"),
        ("ascending_sort", "the k *lowest* totals were kept"),
        ("global", "numbered across the batch"),
        ("swapped", "the parent beam and the token are swapped"),
        ("by_k", "was split with k"),
        ("ascending", "in the wrong order"),
        ("two", "should return three tensors"),
        ("float_ids", "not torch.int64"),
    ],
)
def test_beam_step_mistakes_are_named(kind: str, hint: str) -> None:
    expect_hint(checks.check_beam_search_step, _beam(kind), hint, hidden=False)
    expect_hint(checks.check_beam_search_step, _beam(kind), hint)


def test_beam_step_written_another_way_passes() -> None:
    def broadcast(scores, log_probs):
        B, k = scores.shape
        V = log_probs.shape[-1]
        total = (scores[:, :, None] + log_probs.view(B, k, V)).flatten(1)  # (B, k*V)
        new, index = torch.sort(total, dim=1, descending=True)
        index = index[:, :k]
        beams = torch.div(index, V, rounding_mode="floor")
        return new[:, :k], beams, index - beams * V

    def interleaved(scores, log_probs):
        B, k = scores.shape
        V = log_probs.shape[-1]
        total = scores.repeat_interleave(V, dim=1) + log_probs.reshape(B, -1)
        new, index = total.topk(k)
        return new, index // V, torch.remainder(index, V)

    for candidate in (broadcast, interleaved):
        expect_pass(checks.check_beam_search_step, candidate)


def test_beam_step_hidden_draws_include_a_first_step_and_k_1() -> None:
    for seed in MANY_SEEDS:
        (scores, log_probs), (first, first_lp), (one, _) = checks._beam_hidden(Draw(seed))
        B, k = scores.shape
        assert B >= 2 and 2 <= k < log_probs.shape[1] and torch.isfinite(scores).all()
        assert (first[:, 0] == 0).all() and torch.isinf(first[:, 1:]).all()
        assert first.shape[1] <= first_lp.shape[1] and one.shape[1] == 1


def test_beam_step_refuses_the_reference() -> None:
    def by_beam_search(scores, log_probs):
        step = lambda tokens, rows: log_probs  # noqa: E731
        decoding.beam_search(step, torch.zeros(1, 1, dtype=torch.long), 1, 0, scores.shape[1])
        return scores, scores.long(), scores.long()

    expect_hint(checks.check_beam_search_step, by_beam_search, NOT_ALLOWED, hidden=False)


# --- 7. BERT's layer --------------------------------------------------------------------------


def _hf_bert_layer(C: int, H: int, d_ff: int):
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer

    config = BertConfig(
        hidden_size=C,
        num_attention_heads=H,
        intermediate_size=d_ff,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config._attn_implementation = "eager"
    return BertLayer(config).double().eval()


@pytest.mark.parametrize("C, H, d_ff", [(8, 2, 12), (12, 3, 20), (6, 1, 10)])
def test_bert_reference_is_hugging_faces_bert_layer(C, H, d_ff) -> None:
    layer = _hf_bert_layer(C, H, d_ff)
    weights = checks._bert_layer_weights(C, d_ff, seed=5)
    expected_shapes = {name: tuple(t.shape) for name, t in layer.state_dict().items()}
    assert {name: tuple(t.shape) for name, t in weights.items()} == expected_shapes
    layer.load_state_dict(weights)
    x = checks.random_tensor(2, 5, C, seed=6)
    padding_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    additive = torch.zeros(2, 1, 1, 5, dtype=torch.float64).masked_fill(
        ~padding_mask[:, None, None, :], torch.finfo(torch.float64).min
    )
    with torch.no_grad():
        theirs = layer(x, attention_mask=additive)
    theirs = theirs[0] if isinstance(theirs, tuple) else theirs
    ours = checks._bert_layer_reference(weights, x, padding_mask, H)
    torch.testing.assert_close(ours[padding_mask], theirs[padding_mask])
    # and the map the check expects makes tutorlib's EncoderLayer compute the same
    from tutorlib.layers import EncoderLayer

    encoder = EncoderLayer(C, H, d_ff, activation="gelu", norm_first=False).double().eval()
    encoder.norm1.eps = encoder.norm2.eps = checks.BERT_EPS
    encoder.load_state_dict(checks._bert_map(weights))
    with torch.no_grad():
        torch.testing.assert_close(
            encoder(x, padding_mask=padding_mask)[padding_mask], ours[padding_mask]
        )


def _bert(kind: str = ""):
    def bert_layer_to_tutorlib(bert):
        order = {"kqv": ("key", "query", "value")}.get(kind, ("query", "key", "value"))
        qkv = [f"attention.self.{p}" for p in order]
        ours = {
            "self_attn.in_proj_weight": torch.cat([bert[f"{p}.weight"] for p in qkv]),
            "self_attn.in_proj_bias": torch.cat([bert[f"{p}.bias"] for p in qkv]),
            "self_attn.out_proj.weight": bert["attention.output.dense.weight"],
            "self_attn.out_proj.bias": bert["attention.output.dense.bias"],
            "ff.linear1.weight": bert["intermediate.dense.weight"],
            "ff.linear1.bias": bert["intermediate.dense.bias"],
            "ff.linear2.weight": bert["output.dense.weight"],
            "ff.linear2.bias": bert["output.dense.bias"],
            "norm1.weight": bert["attention.output.LayerNorm.weight"],
            "norm1.bias": bert["attention.output.LayerNorm.bias"],
            "norm2.weight": bert["output.LayerNorm.weight"],
            "norm2.bias": bert["output.LayerNorm.bias"],
        }
        if kind == "swapped_norms":
            for p in ("weight", "bias"):
                ours[f"norm1.{p}"], ours[f"norm2.{p}"] = ours[f"norm2.{p}"], ours[f"norm1.{p}"]
        if kind == "transposed_all":
            ours = {n: t.T if t.dim() == 2 else t for n, t in ours.items()}
        if kind == "transposed_qkv":
            ours["self_attn.in_proj_weight"] = torch.cat([bert[f"{p}.weight"].T for p in qkv])
        if kind == "transposed_out":
            ours["self_attn.out_proj.weight"] = bert["attention.output.dense.weight"].T
        if kind == "side_by_side":
            ours["self_attn.in_proj_weight"] = torch.cat([bert[f"{p}.weight"] for p in qkv], 1)
        if kind == "torch_names":
            ours = {n.replace("ff.", ""): t for n, t in ours.items()}
        if kind == "float32":
            ours = {n: t.float() for n, t in ours.items()}
        return ours

    return bert_layer_to_tutorlib


@pytest.mark.parametrize(
    "kind, hint",
    [
        ("kqv", "stacked in the order key, query, value"),
        ("swapped_norms", "the two LayerNorms are swapped"),
        ("transposed_all", "copy each as it is"),
        ("transposed_qkv", "the weights were transposed"),
        ("transposed_out", "attention.output.dense.weight transposed"),
        ("side_by_side", "one above the other"),
        ("torch_names", "Missing: ['ff.linear1.bias'"),
        ("float32", "dtype torch.float32"),
    ],
)
def test_bert_mistakes_are_named(kind: str, hint: str) -> None:
    expect_hint(checks.check_bert_layer_to_tutorlib, _bert(kind), hint, hidden=False)
    expect_hint(checks.check_bert_layer_to_tutorlib, _bert(kind), hint)


def test_bert_map_written_another_way_passes() -> None:
    names = {
        "self_attn.out_proj": "attention.output.dense",
        "ff.linear1": "intermediate.dense",
        "ff.linear2": "output.dense",
        "norm1": "attention.output.LayerNorm",
        "norm2": "output.LayerNorm",
    }

    def by_loops(bert):
        ours = {
            f"{a}.{p}": bert[f"{b}.{p}"].clone()
            for a, b in names.items()
            for p in ("weight", "bias")
        }
        for p in ("weight", "bias"):
            stacked = torch.stack(
                [bert[f"attention.self.{n}.{p}"] for n in ("query", "key", "value")]
            )
            ours[f"self_attn.in_proj_{p}"] = stacked.flatten(0, 1)  # (3, C, C) -> (3C, C)
        return ours

    expect_pass(checks.check_bert_layer_to_tutorlib, by_loops)


def test_bert_hidden_sizes_are_drawn() -> None:
    sizes = set()
    for seed in range(40):
        for bert, H, x, padding in checks._bert_hidden(Draw(seed)):
            d_ff, C = bert["intermediate.dense.weight"].shape
            assert C % H == 0 and d_ff not in (C, 3 * C) and x.shape[-1] == C
            assert padding[0].all() and not padding[1:].all()
            sizes.add((C, H, d_ff))
    assert len(sizes) > 20


def test_bert_refuses_tutorlibs_converter() -> None:
    def by_converter(bert):
        full = {f"encoder.layer.0.{name}": t for name, t in bert.items()}
        C = bert["attention.output.dense.weight"].shape[0]
        config = pretrained.BertEncoderConfig(d_model=C, n_heads=2, n_layers=1, d_ff=12)
        ours = pretrained.bert_state_dict_to_tutorlib(full, config)
        return {n.removeprefix("layers.0."): t for n, t in ours.items() if n.startswith("layers")}

    def by_private_helper(bert):
        ours = _bert()(bert)
        ours["self_attn.in_proj_weight"] = pretrained._stack_qkv(
            *(bert[f"attention.self.{p}.weight"] for p in ("query", "key", "value"))
        )
        return ours

    for cheat in (by_converter, by_private_helper):
        expect_hint(checks.check_bert_layer_to_tutorlib, cheat, NOT_ALLOWED, hidden=False)


# --- 8. GPT-2's attention ---------------------------------------------------------------------


@pytest.mark.parametrize("C, H", [(8, 2), (12, 3), (5, 1)])
def test_gpt2_reference_is_hugging_faces_attention(C, H) -> None:
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

    config = GPT2Config(n_embd=C, n_head=H, attn_pdrop=0.0, resid_pdrop=0.0)
    config._attn_implementation = "eager"
    attention = GPT2Attention(config, layer_idx=0).double().eval()
    weights = checks._gpt2_attention_weights(C, seed=3)
    attention.load_state_dict(weights)
    T = 6
    x = checks.random_tensor(2, T, C, seed=4)
    causal = torch.zeros(1, 1, T, T, dtype=torch.float64).masked_fill(
        ~torch.ones(T, T, dtype=torch.bool).tril(), torch.finfo(torch.float64).min
    )
    with torch.no_grad():
        theirs = attention(x, attention_mask=causal)[0]
    torch.testing.assert_close(checks._gpt2_attention_reference(weights, x, H), theirs)


def _gpt2(kind: str = ""):
    def gpt2_attention_to_tutorlib(gpt2):
        w = gpt2["c_attn.weight"]
        ours = {
            "in_proj_weight": w.T,
            "in_proj_bias": gpt2["c_attn.bias"],
            "out_proj.weight": gpt2["c_proj.weight"].T,
            "out_proj.bias": gpt2["c_proj.bias"],
        }
        if kind == "not_transposed":
            ours["in_proj_weight"] = w
        if kind == "reshaped":
            ours["in_proj_weight"] = w.reshape(w.shape[1], w.shape[0])
        if kind == "proj":
            ours["out_proj.weight"] = gpt2["c_proj.weight"]
        if kind == "names":
            ours["out_proj_weight"] = ours.pop("out_proj.weight")
        return ours

    return gpt2_attention_to_tutorlib


@pytest.mark.parametrize(
    "kind, hint",
    [
        ("not_transposed", "Conv1D stores its weight (in, out)"),
        ("reshaped", "a reshape keeps the numbers in memory order"),
        ("proj", "c_proj.weight was copied as it is"),
        ("names", "the names do not fit"),
    ],
)
def test_gpt2_mistakes_are_named(kind: str, hint: str) -> None:
    expect_hint(checks.check_gpt2_attention_to_tutorlib, _gpt2(kind), hint, hidden=False)
    expect_hint(checks.check_gpt2_attention_to_tutorlib, _gpt2(kind), hint)


def test_gpt2_map_written_another_way_passes() -> None:
    def by_parts(gpt2):  # q, k and v transposed one by one
        q, k, v = gpt2["c_attn.weight"].chunk(3, dim=1)
        return {
            "in_proj_weight": torch.cat([q.t(), k.t(), v.t()]),
            "in_proj_bias": gpt2["c_attn.bias"].clone(),
            "out_proj.weight": gpt2["c_proj.weight"].transpose(0, 1).contiguous(),
            "out_proj.bias": gpt2["c_proj.bias"].clone(),
        }

    expect_pass(checks.check_gpt2_attention_to_tutorlib, by_parts)


def test_gpt2_refuses_tutorlibs_converter() -> None:
    def by_helper(gpt2):
        return {
            **_gpt2()(gpt2),
            "in_proj_weight": pretrained._conv1d_to_linear(gpt2["c_attn.weight"]),
        }

    expect_hint(checks.check_gpt2_attention_to_tutorlib, by_helper, NOT_ALLOWED, hidden=False)


# --- 9. Pixel tokens ---------------------------------------------------------------------------


def _pixels(kind: str = ""):
    def images_to_sequences(images, labels, levels):
        if kind == "floor":
            levels_of = (images * (levels - 1)).floor().long()
        elif kind == "truncate":
            levels_of = (images * (levels - 1)).long()
        elif kind == "bins":
            levels_of = (images * levels).long().clamp(max=levels - 1)
        elif kind == "by_levels":
            levels_of = (images * levels).round().long()
        elif kind == "by_levels_clipped":
            levels_of = (images * levels).round().clamp(max=levels - 1).long()
        else:
            levels_of = (images * (levels - 1)).round().long()
        if kind == "column_major":
            levels_of = levels_of.transpose(2, 3)
        flat = levels_of.flatten(1)
        classes = (labels if kind == "no_offset" else levels + labels)[:, None]
        if kind == "no_class":
            return flat
        if kind == "class_last":
            return torch.cat([flat, classes], dim=1)
        out = torch.cat([classes, flat], dim=1)
        return out.float() if kind == "float" else out

    return images_to_sequences


@pytest.mark.parametrize(
    "kind, hint",
    [
        ("column_major", "column-major"),
        ("floor", "rounded down"),
        ("truncate", "rounded down"),
        ("bins", "equal bins"),
        ("by_levels", "scaled by levels;"),
        ("by_levels_clipped", "scaled by levels, and clipped"),
        ("no_offset", "the label itself"),
        ("class_last", "at the end"),
        ("no_class", "put the class token"),
        ("float", "dtype torch.float32"),
    ],
)
def test_pixel_mistakes_are_named(kind: str, hint: str) -> None:
    expect_hint(checks.check_images_to_sequences, _pixels(kind), hint, hidden=False)
    expect_hint(checks.check_images_to_sequences, _pixels(kind), hint)


def test_pixels_written_another_way_passes() -> None:
    def half_up(images, labels, levels):  # no value lies halfway between two levels
        tokens = (images * (levels - 1) + 0.5).floor().to(torch.long)
        return torch.cat([(labels + levels).unsqueeze(1), tokens.reshape(len(images), -1)], 1)

    def by_loops(images, labels, levels):
        rows = []
        for image, label in zip(images, labels.tolist(), strict=True):
            row = [levels + label]
            for r in range(image.shape[1]):
                row += [round(float(x) * (levels - 1)) for x in image[0, r]]
            rows.append(row)
        return torch.tensor(rows)

    for candidate in (half_up, by_loops):
        expect_pass(checks.check_images_to_sequences, candidate)


def test_pixel_hidden_draws_tell_round_floor_and_bins_apart() -> None:
    for seed in MANY_SEEDS:
        (images, labels, levels), (_, _, two), (digits, _, many) = checks._pixels_hidden(Draw(seed))
        assert checks._pixels_separate(images, labels, levels)
        B, _, H, W = images.shape
        assert H != W and min(H, W) >= 2 and 3 <= levels and two == 2 and many >= 100
        for values, L in ((images, levels), (digits, many)):
            scaled = values.flatten()[1:-1] * (L - 1)
            fraction = scaled - scaled.floor()
            assert ((fraction - 0.5).abs() >= 0.09).all()  # far from .5: round is unambiguous
            assert int((scaled.round() != scaled.floor()).sum()) >= 3
            assert values.flatten()[0] == 0 and values.flatten()[-1] == 1


def test_pixels_refuse_tutorlibs_version() -> None:
    def by_reference(images, labels, levels):
        return pixels.images_to_sequences(images.float(), labels, levels, n_classes=10)

    def by_quantise(images, labels, levels):  # another public function computing the pixels
        tokens = pixels.quantise(images, levels).flatten(1)
        return torch.cat([(levels + labels)[:, None], tokens], dim=1)

    for cheat in (by_reference, by_quantise):
        expect_hint(checks.check_images_to_sequences, cheat, NOT_ALLOWED, hidden=False)


# --- 10. Distinct-n ----------------------------------------------------------------------------


def _distinct(kind: str = ""):
    def distinct_n(sequences, n):
        def grams(s, stop=0):
            return [tuple(s[i : i + n]) for i in range(len(s) - n + 1 - stop)]

        if kind == "across":
            joined = [x for s in sequences for x in s]
            every = grams(joined)
            return len(set(every)) / len(every)
        if kind == "joined_text":
            texts = [s if isinstance(s, str) else "".join(str(t) for t in s) for s in sequences]
            every = [t[i : i + n] for t in texts for i in range(len(t) - n + 1)]
            return len(set(every)) / len(every)
        if kind == "per_sequence_mean":
            ratios = [len(set(grams(s))) / len(grams(s)) for s in sequences if len(s) >= n]
            return sum(ratios) / len(ratios)
        if kind == "lists":
            every = [list(s[i : i + n]) for s in sequences for i in range(len(s) - n + 1)]
            return len(set(every)) / len(every)
        every = [g for s in sequences for g in grams(s, stop=int(kind == "off_by_one"))]
        if kind == "joined_keys":
            return len({"".join(map(str, g)) for g in every}) / len(every)
        if kind == "per_sequence_sum":
            return sum(len(set(grams(s))) for s in sequences) / len(every)
        if kind == "unique":
            return sum(1 for g in set(every) if every.count(g) == 1) / len(every)
        if kind == "inverted":
            return len(every) / len(set(every))
        if kind == "text":
            return f"{len(set(every)) / len(every):.3f}"
        return len(set(every)) / len(every)

    return distinct_n


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("across", "across the boundaries between sequences", True),
        ("per_sequence_mean", "computed per sequence and averaged", True),
        ("per_sequence_sum", "counted per sequence and added up", True),
        ("off_by_one", "the last n-gram of each sequence is missing", True),
        ("unique", "exactly once", True),
        ("inverted", "upside down", True),
        ("joined_text", "joined into a string", False),  # single-digit ids in the worked example
        ("joined_keys", "with no separator", False),
        ("lists", "make each n-gram a tuple", True),
        ("text", "should be a number", True),
    ],
)
def test_distinct_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    expect_hint(checks.check_distinct_n, _distinct(kind), hint)
    if visible:
        expect_hint(checks.check_distinct_n, _distinct(kind), hint, hidden=False)


def test_distinct_written_another_way_passes() -> None:
    def by_zip(sequences, n):
        grams = [g for s in sequences for g in zip(*(s[i:] for i in range(n)), strict=False)]
        return len(set(grams)) / len(grams)

    def by_keys(sequences, n):  # string keys with a separator are one-to-one
        grams = [
            " ".join(map(str, s[i : i + n])) if not isinstance(s, str) else s[i : i + n]
            for s in sequences
            for i in range(len(s) - n + 1)
        ]
        return len(set(grams)) / len(grams)

    def as_tensor(sequences, n):
        return torch.tensor(_distinct()(sequences, n))

    for candidate in (by_zip, by_keys, as_tensor):
        expect_pass(checks.check_distinct_n, candidate)


def test_distinct_hidden_draws_have_multi_digit_ids_strings_and_short_sequences() -> None:
    for seed in MANY_SEEDS:
        (ids, n), (texts, m), (more, three) = checks._distinct_hidden(Draw(seed))
        assert n == 2 and three == 3 and checks._distinct_separates(ids, n)
        assert any(t >= 10 for s in ids for t in s) and any(t < 10 for s in ids for t in s)
        assert all(isinstance(t, str) for t in texts) and 1 <= m <= 3
        for sequences, k in ((ids, n), (texts, m), (more, three)):
            assert [] in sequences or "" in sequences
            assert any(0 < len(s) < k for s in sequences) or k == 1
        # the old hidden inputs' answer by joined digits is right on none of these
        assert checks._distinct_variant(ids, n, "joined_text") != generation.distinct_n(ids, n)
        assert checks._distinct_variant(ids, n, "joined_keys") != generation.distinct_n(ids, n)


def test_distinct_refuses_the_reference() -> None:
    expect_hint(checks.check_distinct_n, generation.distinct_n, NOT_ALLOWED, hidden=False)


# --- Every check: the separating hidden case is drawn quickly -----------------------------------


def test_the_hidden_cases_are_drawn_in_a_few_tries() -> None:
    tries = []

    def counting(original):
        def redraw(draw_case, good):
            count = itertools.count(1)

            def counted():
                tries.append(next(count))
                return draw_case()

            return original(counted, good)

        return redraw

    original = checks._redraw
    checks._redraw = counting(original)
    try:
        for seed in range(50):
            for hidden in (
                checks._sampling_hidden,
                checks._top_k_hidden,
                checks._top_p_hidden,
                checks._penalty_hidden,
                checks._beam_hidden,
                checks._pixels_hidden,
                checks._distinct_hidden,
            ):
                hidden(Draw(seed))
    finally:
        checks._redraw = original
    assert max(tries) < 60, max(tries)
