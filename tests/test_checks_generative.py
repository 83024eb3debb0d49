"""The Chapter 6 checks: the solutions pass, the likely mistakes are named, the reference or the
built-in cannot do the learner's work, broken code fails with a message, and the written-out
BERT and GPT-2 references agree with Hugging Face's layers."""

from __future__ import annotations

import math
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import expect_hint
from tests.grading import solution_namespace
from tutorlib import generation
from tutorlib.checks import ExerciseError
from tutorlib.checks import generative as checks


@pytest.fixture(scope="module")
def solution() -> dict:
    return solution_namespace("06_generative")


CHECKS = [
    ("causal_lm_loss", checks.check_causal_lm_loss),
    ("sample_with_temperature", checks.check_sample_with_temperature),
    ("top_k_filter", checks.check_top_k_filter),
    ("top_p_filter", checks.check_top_p_filter),
    ("apply_repetition_penalty", checks.check_apply_repetition_penalty),
    ("beam_search_step", checks.check_beam_search_step),
    ("bert_layer_to_tutorlib", checks.check_bert_layer_to_tutorlib),
    ("gpt2_attention_to_tutorlib", checks.check_gpt2_attention_to_tutorlib),
    ("images_to_sequences", checks.check_images_to_sequences),
    ("distinct_n", checks.check_distinct_n),
]


@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize("name, check", CHECKS)
def test_solutions_pass(solution, name, check, hidden, capsys) -> None:
    check(solution[name], hidden=hidden)
    assert capsys.readouterr().out.startswith("OK:")


@pytest.mark.parametrize("name, check", CHECKS)
def test_unimplemented_says_so(name, check) -> None:
    def stub(*args):
        raise NotImplementedError()

    expect_hint(check, stub, "not implemented yet", hidden=False)


def _raises(*args):
    raise ZeroDivisionError("division by zero")


HOSTILE = [
    (lambda *args: None, "NoneType"),
    (lambda *args: "text", "str"),
    (lambda *args: torch.zeros(1, 1, 1, 1, 1), ""),
    (lambda *args: [1, 2, 3], ""),
    (_raises, "raised ZeroDivisionError"),
]


@pytest.mark.parametrize("candidate, hint", HOSTILE)
@pytest.mark.parametrize("name, check", CHECKS)
def test_broken_candidates_fail_with_a_message(name, check, candidate, hint) -> None:
    for hidden in (False, True):
        expect_hint(check, candidate, hint, hidden=hidden)


def test_candidate_output_on_stderr_and_warnings_stay_quiet(solution, capfd) -> None:
    def noisy(logits, temperature, generator=None):
        warnings.warn("a torch-like warning", UserWarning, stacklevel=1)
        print("to stderr", file=sys.stderr)
        return solution["sample_with_temperature"](logits, temperature, generator)

    checks.check_sample_with_temperature(noisy, hidden=True)
    assert capfd.readouterr().err == ""


# --- 1. The causal LM loss ---------------------------------------------------------------------


def _loss(kind: str = ""):
    def causal_lm_loss(logits, tokens):
        V = logits.shape[-1]
        if kind == "unshifted":
            return F.cross_entropy(logits.reshape(-1, V), tokens.reshape(-1))
        if kind == "backwards":
            return F.cross_entropy(logits[:, 1:].reshape(-1, V), tokens[:, :-1].reshape(-1))
        if kind == "view":
            return F.cross_entropy(logits[:, :-1].view(-1, V), tokens[:, 1:].view(-1))
        if kind == "classes_last":
            return F.cross_entropy(logits[:, :-1], tokens[:, 1:])
        if kind == "time_softmax":
            log_probs = logits[:, :-1].log_softmax(dim=1)
            return -log_probs.gather(-1, tokens[:, 1:, None]).mean()
        reduction = "sum" if kind in ("sum", "batch") else "mean"
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1), reduction=reduction
        )
        return loss / logits.shape[0] if kind == "batch" else loss

    return causal_lm_loss


@pytest.mark.parametrize(
    "kind, hint",
    [
        ("unshifted", "Likely mistake: the targets are not shifted"),
        ("backwards", "the shift goes the wrong way"),
        ("sum", "the losses are summed: take the mean"),
        ("batch", "averaged over the batch only"),
        ("time_softmax", "runs over the positions"),
        ("view", "instead of .view"),
        ("classes_last", "classes in dimension 1"),
    ],
)
def test_causal_lm_loss_mistakes(kind, hint) -> None:
    expect_hint(checks.check_causal_lm_loss, _loss(kind), hint, hidden=False)


def test_causal_lm_loss_refuses_the_reference_and_checks_gradients() -> None:
    expect_hint(checks.check_causal_lm_loss, generation.causal_lm_loss, "Not allowed", False)

    def detached(logits, tokens):
        return _loss()(logits.detach(), tokens)

    expect_hint(checks.check_causal_lm_loss, detached, "No gradient reaches the logits", True)


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
        draws = torch.multinomial(probs, 1, generator=generator)
        return draws if kind == "column" else draws.squeeze(-1)

    return sample_with_temperature


@pytest.mark.parametrize(
    "kind, hint, hidden",
    [
        ("after_softmax", "applied after the softmax", False),
        ("multiplied", "multiplied by the temperature", False),
        ("argmax", "the most probable token every time", False),
        ("batch_dim", "over the batch dimension", False),
        ("twice", "softmax was applied twice", False),
        ("log_probs", "needs finite, non-negative weights", False),
        ("no_generator", "seeded alike gave different tokens", False),
        ("column", ".squeeze(-1)", False),
        ("no_greedy", "Temperature 0 means greedy", True),
    ],
)
def test_sampling_mistakes(kind, hint, hidden) -> None:
    expect_hint(checks.check_sample_with_temperature, _sampler(kind), hint, hidden=hidden)


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


@pytest.mark.parametrize("sampler", [_gumbel_max, _inverse_cdf])
def test_other_correct_samplers_pass(sampler) -> None:
    checks.check_sample_with_temperature(sampler, hidden=False)
    checks.check_sample_with_temperature(sampler, hidden=True)


def test_a_correct_sampler_passes_whatever_the_seed() -> None:
    """The tolerance is six standard deviations: no seed should come near it."""
    rows = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 1.0, 0.5, 0.0]], dtype=torch.float64)
    for seed in range(20):
        for T in (0.5, 1.0, 2.0):
            checks._sampling_case(_sampler(), rows, T, seed)


def test_sampling_refuses_the_reference() -> None:
    def by_reference(logits, temperature, generator=None):
        return generation.sample_next(logits, temperature, generator=generator)

    expect_hint(checks.check_sample_with_temperature, by_reference, "Not allowed", False)


# --- 3. Top-k -----------------------------------------------------------------------------------


def _top_k(kind: str = ""):
    def top_k_filter(logits, k):
        values = logits.sort(dim=-1, descending=True).values
        if kind == "ties":  # nanoGPT's and Hugging Face's way: every tie at the k-th value stays
            return logits.masked_fill(logits < values[:, [k - 1]], float("-inf"))
        if kind == "k_plus_1":
            return logits.masked_fill(logits < values[:, [min(k, logits.shape[-1] - 1)]], -math.inf)
        if kind == "strict":
            return logits.masked_fill(logits <= values[:, [k - 1]], float("-inf"))
        if kind == "smallest":
            index = torch.topk(logits, k, dim=-1, largest=False).indices
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
        return logits.masked_fill(~keep, float("-inf"))

    return top_k_filter


@pytest.mark.parametrize(
    "kind, hint, hidden",
    [
        ("ties", "tie with the k-th largest", True),
        ("k_plus_1", "one token too many", False),
        ("strict", "too few tokens were kept", False),
        ("strict", "too few tokens were kept", True),
        ("smallest", "the k *smallest* logits", False),
        ("probabilities", "returned probabilities", False),
        ("zero_fill", "set the removed tokens to 0, not -inf", False),
        ("finite_fill", "not -inf", False),
        ("in_place", "changed the logits it was given", False),
        ("mask", "not indices or a mask", False),
        ("scaled", "changed the logits of the tokens it kept", False),
    ],
)
def test_top_k_mistakes(kind, hint, hidden) -> None:
    expect_hint(checks.check_top_k_filter, _top_k(kind), hint, hidden=hidden)


def test_top_k_ties_are_broken_any_way() -> None:
    def last_of_ties(logits, k):  # a stable sort of the negated logits keeps the first ...
        order = torch.sort(-logits.flip(-1), dim=-1, stable=True).indices  # ... of the flipped
        index = logits.shape[-1] - 1 - order[:, :k]
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, index, True)
        return logits.masked_fill(~keep, float("-inf"))

    checks.check_top_k_filter(last_of_ties, hidden=True)


def test_top_k_refuses_the_reference() -> None:
    expect_hint(checks.check_top_k_filter, generation.top_k_filter, "Not allowed", False)


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
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        if kind == "probabilities":
            return torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)
        return logits.masked_fill(~keep, float("-inf"))

    return top_p_filter


@pytest.mark.parametrize(
    "kind, hint, hidden",
    [
        ("drops_crossing", "takes the cumulative probability past p was dropped", False),
        ("drops_crossing_unforced", "nothing was left", False),
        ("one_more", "one token too many", False),
        ("unsorted", "sort the probabilities in descending order first", True),
        ("ascending", "the least probable tokens were kept", False),
        ("logits", "the cumulative sum is over logits", True),
        ("sorted_order", "in sorted order", False),
        ("probabilities", "returned probabilities", False),
    ],
)
def test_top_p_mistakes(kind, hint, hidden) -> None:
    expect_hint(checks.check_top_p_filter, _top_p(kind), hint, hidden=hidden)


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


@pytest.mark.parametrize("candidate", [_hugging_face_top_p, _shifted_top_p])
def test_other_correct_nucleus_filters_pass(candidate) -> None:
    checks.check_top_p_filter(candidate, hidden=False)
    checks.check_top_p_filter(candidate, hidden=True)


def test_top_p_cases_stay_clear_of_the_boundary() -> None:
    """No running total lies within 1e-4 of p, so float32 rounding cannot flip a token."""
    cases = [
        (2 * checks.random_tensor(4, 12, seed=1), 0.9),
        (checks.random_tensor(3, 8, seed=2), 0.3),
        (3 * checks.random_tensor(2, 50, seed=3), 0.95),
        (checks.random_tensor(2, 5, seed=5), 1e-3),
        (torch.stack([checks._peaked(9, 6, 4.0), checks._peaked(9, 7, 0.5)]), 0.75),
    ]
    for logits, p in cases:
        totals = logits.sort(dim=-1, descending=True).values.softmax(dim=-1).cumsum(dim=-1)
        assert float((totals - p).abs().min()) > 1e-4


def test_top_p_refuses_the_reference() -> None:
    expect_hint(checks.check_top_p_filter, generation.top_p_filter, "Not allowed", False)


def test_hugging_face_warpers_are_refused_when_transformers_is_loaded() -> None:
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    def hf_top_k(logits, k):
        return TopKLogitsWarper(top_k=k)(None, logits)

    def hf_top_p(logits, p):
        return TopPLogitsWarper(top_p=p)(None, logits)

    expect_hint(checks.check_top_k_filter, hf_top_k, "Not allowed", False)
    expect_hint(checks.check_top_p_filter, hf_top_p, "Not allowed", False)
    assert torch.isinf(TopKLogitsWarper(top_k=1)(None, torch.randn(1, 3))).sum() == 2  # restored


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
        ("in_place", "changed the logits it was given"),
    ],
)
def test_repetition_penalty_mistakes(kind, hint) -> None:
    expect_hint(checks.check_apply_repetition_penalty, _penalty(kind), hint, hidden=False)


def test_repetition_penalty_refuses_the_reference() -> None:
    expect_hint(
        checks.check_apply_repetition_penalty,
        generation.apply_repetition_penalty,
        "Not allowed",
        False,
    )


# --- 6. One step of beam search ----------------------------------------------------------------


def _beam(kind: str = ""):
    def beam_search_step(scores, log_probs):
        B, k = scores.shape
        V = log_probs.shape[-1]
        if kind == "no_scores":
            total = log_probs.reshape(B, k * V)
        else:
            total = (scores.reshape(B * k, 1) + log_probs).reshape(B, k * V)
        if kind == "one_child_each":
            best, token = total.reshape(B, k, V).max(dim=-1)
            new, beam = best.sort(dim=1, descending=True)
            return new, beam, token.gather(1, beam)
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
            return new, beam.double(), token
        return new, beam, token

    return beam_search_step


@pytest.mark.parametrize(
    "kind, hint",
    [
        ("no_scores", "scores were not added"),
        ("one_child_each", "each beam kept exactly one child"),
        ("global", "numbered across the batch"),
        ("swapped", "the parent beam and the token are swapped"),
        ("by_k", "was split with k"),
        ("ascending", "in the wrong order"),
        ("two", "should return three tensors"),
        ("float_ids", "dtype torch.float64"),
    ],
)
def test_beam_step_mistakes(kind, hint) -> None:
    expect_hint(checks.check_beam_search_step, _beam(kind), hint, hidden=False)


def test_beam_step_one_child_each_is_named_on_the_first_step() -> None:
    """From [0, -inf, -inf], keeping one child per beam keeps two dead beams."""
    scores = checks._beam_scores(2, 3, 2, first_step=True)
    with pytest.raises(ExerciseError, match="exactly one child"):
        checks._beam_case(_beam("one_child_each"), scores, checks._log_probs(6, 4, 2))


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


@pytest.mark.parametrize("C, H, d_ff", [(8, 2, 12), (12, 3, 20)])
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
        ("transposed_qkv", "the query, key and value weights were transposed"),
        ("transposed_out", "attention.output.dense.weight transposed"),
        ("side_by_side", "one above the other"),
        ("torch_names", "Missing: ['ff.linear1.bias'"),
        ("float32", "dtype torch.float32"),
    ],
)
def test_bert_mistakes(kind, hint) -> None:
    expect_hint(checks.check_bert_layer_to_tutorlib, _bert(kind), hint, hidden=False)


def test_bert_refuses_tutorlibs_converter() -> None:
    from tutorlib import pretrained

    def by_converter(bert):
        full = {f"encoder.layer.0.{name}": t for name, t in bert.items()}
        C = bert["attention.output.dense.weight"].shape[0]
        config = pretrained.BertEncoderConfig(d_model=C, n_heads=2, n_layers=1, d_ff=12)
        ours = pretrained.bert_state_dict_to_tutorlib(full, config)
        return {n.removeprefix("layers.0."): t for n, t in ours.items() if n.startswith("layers")}

    expect_hint(checks.check_bert_layer_to_tutorlib, by_converter, "Not allowed", False)


# --- 8. GPT-2's attention ---------------------------------------------------------------------


@pytest.mark.parametrize("C, H", [(8, 2), (12, 3)])
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
        ("names", "the names do not fit nn.MultiheadAttention"),
    ],
)
def test_gpt2_mistakes(kind, hint) -> None:
    expect_hint(checks.check_gpt2_attention_to_tutorlib, _gpt2(kind), hint, hidden=False)


# --- 9. Pixel tokens ---------------------------------------------------------------------------


def _pixels(kind: str = ""):
    def images_to_sequences(images, labels, levels):
        if kind == "floor":
            pixels = (images * (levels - 1)).floor().long()
        elif kind == "bins":
            pixels = (images * levels).long().clamp(max=levels - 1)
        else:
            pixels = (images * (levels - 1)).round().long()
        if kind == "column_major":
            pixels = pixels.transpose(2, 3)
        flat = pixels.flatten(1)
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
        ("bins", "equal bins"),
        ("no_offset", "the label itself"),
        ("class_last", "at the end"),
        ("no_class", "put the class token"),
        ("float", "dtype torch.float32"),
    ],
)
def test_pixel_mistakes(kind, hint) -> None:
    expect_hint(checks.check_images_to_sequences, _pixels(kind), hint, hidden=False)


def test_pixels_refuse_tutorlibs_version() -> None:
    from tutorlib import pixels

    def by_reference(images, labels, levels):
        return pixels.images_to_sequences(images.float(), labels, levels, n_classes=10)

    expect_hint(checks.check_images_to_sequences, by_reference, "Not allowed", False)


# --- 10. Distinct-n ----------------------------------------------------------------------------


def _distinct(kind: str = ""):
    def distinct_n(sequences, n):
        def grams(s, stop=0):
            return [tuple(s[i : i + n]) for i in range(len(s) - n + 1 - stop)]

        if kind == "across":
            joined = [x for s in sequences for x in s]
            every = grams(joined)
            return len(set(every)) / len(every)
        if kind == "per_sequence_mean":
            ratios = [len(set(grams(s))) / len(grams(s)) for s in sequences if len(s) >= n]
            return sum(ratios) / len(ratios)
        if kind == "lists":
            every = [list(s[i : i + n]) for s in sequences for i in range(len(s) - n + 1)]
            return len(set(every)) / len(every)
        every = [g for s in sequences for g in grams(s, stop=int(kind == "off_by_one"))]
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
    "kind, hint",
    [
        ("across", "across the boundaries between sequences"),
        ("per_sequence_mean", "computed per sequence and averaged"),
        ("per_sequence_sum", "counted per sequence and added up"),
        ("off_by_one", "the last n-gram of each sequence is missing"),
        ("unique", "exactly once"),
        ("inverted", "upside down"),
        ("lists", "make each n-gram a tuple"),
        ("text", "should return a number"),
    ],
)
def test_distinct_mistakes(kind, hint) -> None:
    expect_hint(checks.check_distinct_n, _distinct(kind), hint, hidden=False)


def test_distinct_accepts_a_zero_dimensional_tensor_and_refuses_the_reference() -> None:
    checks.check_distinct_n(lambda s, n: torch.tensor(_distinct()(s, n)), hidden=True)
    expect_hint(checks.check_distinct_n, generation.distinct_n, "Not allowed", False)
