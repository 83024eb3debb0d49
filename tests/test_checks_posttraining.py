"""The checks of the post-training exercises (solutions/06_generative/04_post_training): right
answers written differently pass, every likely mistake gets its own hint whatever the hidden tests
draw, tutorlib's references (and the library functions that compute the same thing) cannot stand
in for the learner's code, hidden failures show no hidden value, and the checks' written-out
mistakes and references agree with tutorlib's."""

from __future__ import annotations

import copy
import itertools
import math
import runpy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import (
    expect_hint,
    expect_named_alone,
    expect_pass,
    expect_refused,
)
from tests.grading import solution_namespace
from tutorlib import adapters, attention, generation, incontext, posttraining, training
from tutorlib.checks import Exercise, ExerciseError, draw
from tutorlib.checks import posttraining as checks
from tutorlib.checks.draw import Draw

NOT_ALLOWED = "Not allowed in this exercise"
MANY_SEEDS = [f"many-{i}" for i in range(10)]
DRAWS = range(100)  # for properties of the hidden draws, which cost no check call
F64 = torch.float64


@pytest.fixture(scope="module")
def solution() -> dict:
    return solution_namespace("06_generative")


def _distinct(values: list) -> bool:
    for a, b in itertools.combinations([v for v in values if v is not None], 2):
        if isinstance(a, str) and a == b:
            return False
        if isinstance(a, torch.Tensor) and a.shape == b.shape:
            if a.dtype == torch.bool and torch.equal(a, b):
                return False
            if a.dtype != torch.bool and torch.allclose(a, b, atol=1e-6, equal_nan=True):
                return False
    return True


@pytest.mark.parametrize(
    "name, check",
    [
        ("few_shot_prompt", checks.check_few_shot_prompt),
        ("response_mask", checks.check_response_mask),
        ("sft_loss", checks.check_sft_loss),
        ("LoRALinear", checks.check_lora_linear),
        ("dpo_loss", checks.check_dpo_loss),
    ],
)
def test_the_solutions_pass_under_many_seeds(solution, name: str, check) -> None:
    expect_pass(check, solution[name], seeds=MANY_SEEDS)


# --- 1. A few-shot prompt ------------------------------------------------------------------------


def _validated(body):
    """A prompt writer `body(pairs, query, arrow, separator)` with the refusals in front."""

    def few_shot_prompt(examples, query, *, arrow=">", separator=";"):
        if arrow == "" or separator == "" or arrow == separator:
            raise ValueError("arrow and separator")
        pairs = []
        for example in examples:
            if type(example) not in (tuple, list) or len(example) != 2:
                raise TypeError("a pair")
            if not isinstance(example[0], str) or not isinstance(example[1], str):
                raise TypeError("strings")
            pairs.append(tuple(example))
        if not isinstance(query, str):
            raise TypeError("query")
        for text in [query, *itertools.chain.from_iterable(pairs)]:
            if arrow in text or separator in text:
                raise ValueError("ambiguous")
        return body(pairs, query, arrow, separator)

    return few_shot_prompt


def _prompt(kind: str = ""):
    def body(pairs, query, arrow, separator):
        if kind == "defaults":
            arrow, separator = ">", ";"
        if kind == "swapped":
            pairs = [(y, x) for x, y in pairs]
        lines = [f"{x}{arrow}{y}" for x, y in pairs]
        if kind == "no_separator_before_query":
            return separator.join(lines) + query + arrow
        if kind == "trailing_separator":
            return separator.join(lines) + separator + query + arrow
        if kind == "no_arrow_after_query":
            return "".join(line + separator for line in lines) + query
        return "".join(line + separator for line in lines) + query + arrow

    return _validated(body)


def test_few_shot_prompt_written_another_way_passes(solution) -> None:
    def join_then_query(pairs, query, arrow, separator):
        lines = [arrow.join(pair) for pair in pairs] + [query + arrow]
        return separator.join(lines)

    def formatted(pairs, query, arrow, separator):
        text = ""
        for x, y in pairs:
            text += "%s%s%s%s" % (x, arrow, y, separator)  # noqa: UP031
        return text + query + arrow

    for body in (join_then_query, formatted):
        expect_pass(checks.check_few_shot_prompt, _validated(body))
    expect_pass(checks.check_few_shot_prompt, _prompt())
    expect_pass(checks.check_few_shot_prompt, solution["few_shot_prompt"])


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("no_separator_before_query", "the separator between the last example and the query", 1),
        ("trailing_separator", "with no examples the prompt is query + arrow alone", 1),
        ("no_arrow_after_query", "the prompt must end with the arrow after the query", 1),
        ("swapped", "each example is written output first", 1),
        ("defaults", "the arrow and separator arguments were ignored", 1),
    ],
)
def test_few_shot_prompt_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    if visible:
        expect_hint(checks.check_few_shot_prompt, _prompt(kind), hint, hidden=False)
    expect_named_alone(checks.check_few_shot_prompt, _prompt(kind), hint)


def test_a_prompt_without_refusals_fails() -> None:
    def trusting(examples, query, *, arrow=">", separator=";"):
        return "".join(f"{x}{arrow}{y}{separator}" for x, y in examples) + query + arrow

    def bad_types(examples, query, *, arrow=">", separator=";"):  # ValueError for everything
        try:
            return _prompt()(examples, query, arrow=arrow, separator=separator)
        except TypeError as error:
            raise ValueError(str(error)) from None

    expect_hint(checks.check_few_shot_prompt, trusting, "it should raise", hidden=False)
    expect_hint(checks.check_few_shot_prompt, trusting, "it should raise")
    expect_hint(checks.check_few_shot_prompt, bad_types, "raised ValueError", hidden=False)
    expect_hint(checks.check_few_shot_prompt, bad_types, "it should raise TypeError")


def test_every_refusal_is_asked_for() -> None:
    """Each fault alone makes the reference refuse; each hidden run asks for six of them."""
    kinds = set()
    for seed in DRAWS:
        d = Draw(seed)
        prompts, refusals = checks._few_shot_hidden(d)
        for examples, query, arrow, separator in prompts:
            styled = {k: v for k, v in (("arrow", arrow), ("separator", separator)) if v}
            assert isinstance(checks._few_shot_prompt(examples, query, **styled), str)
        for examples, query, arrow, separator, kind in refusals:
            error = {"TypeError": TypeError, "ValueError": ValueError}[
                checks.REFUSED_HINTS[kind][0]
            ]
            with pytest.raises(error):
                checks._few_shot_prompt(examples, query, arrow=arrow, separator=separator)
            kinds.add(kind)
        assert len(refusals) == 6
    assert kinds == set(checks.REFUSED_HINTS)


def test_the_first_hidden_prompt_tells_every_mistake_apart() -> None:
    for seed in DRAWS:
        examples, query, arrow, separator = checks._few_shot_hidden(Draw(seed))[0][0]
        prompts = [
            checks._prompt(examples, query, arrow, separator, kind)
            for kind in ["", *checks.PROMPT_MISTAKES]
            if kind != "trailing_separator"  # (the second case has no examples)
        ]
        assert _distinct(prompts), (seed, prompts)


def test_a_hidden_failure_shows_no_prompt() -> None:
    draw._use_seed("shown")
    with pytest.raises(ExerciseError) as error:
        checks.check_few_shot_prompt(_prompt("swapped"), hidden=True)
    assert error.value.what.startswith("few_shot_prompt with ")  # no call with its inputs
    assert error.value.expected is None and error.value.got is None and error.value.hidden


def test_the_reference_prompt_is_tutorlibs() -> None:
    prompt = checks._few_shot_prompt([("cat", "chat"), ("dog", "chien")], "bird")
    assert prompt == "cat>chat;dog>chien;bird>"
    assert checks._few_shot_prompt([], "bird", arrow=" -> ", separator="\n") == "bird -> "
    assert checks._few_shot_prompt is incontext.few_shot_prompt


def test_the_reference_prompt_is_refused() -> None:
    copy_ = runpy.run_path(incontext.__file__)["few_shot_prompt"]
    cheats = [
        incontext.few_shot_prompt,
        lambda e, q, **k: copy_(e, q, **k),
        lambda e, q, **k: checks._few_shot_prompt(e, q, **k),
        lambda e, q, arrow=">", separator=";": checks._prompt(e, q, arrow, separator),
    ]
    for cheat in cheats:
        expect_refused(checks.check_few_shot_prompt, cheat)


# --- 2. The response mask ------------------------------------------------------------------------


def _mask(kind: str = ""):
    def response_mask(prompt_lengths, lengths, length):
        t = torch.arange(length)[None, :]
        p, n = prompt_lengths[:, None], lengths[:, None]
        if kind == "prompt_included":
            return (t >= p - 1) & (t < n)
        if kind == "first_excluded":
            return (t > p) & (t < n)
        if kind == "end_excluded":
            return (t >= p) & (t < n - 1)
        if kind == "one_padding":
            return (t >= p) & (t <= n)
        if kind == "padding_included":
            return t >= p
        if kind == "prompt":
            return t < p
        if kind == "inverted":
            return (t < p) | (t >= n)
        if kind == "every_real_token":
            return t < n
        if kind == "int":
            return ((t >= p) & (t < n)).long()
        if kind == "longest":
            return (t[:, : int(lengths.max())] >= p) & (t[:, : int(lengths.max())] < n)
        return (t >= p) & (t < n)

    return response_mask


def test_response_mask_written_another_way_passes(solution) -> None:
    def loops(prompt_lengths, lengths, length):
        mask = torch.zeros(len(lengths), length, dtype=torch.bool)
        for b, (p, n) in enumerate(zip(prompt_lengths.tolist(), lengths.tolist(), strict=True)):
            mask[b, p:n] = True
        return mask

    def cumulative(prompt_lengths, lengths, length):
        t = torch.arange(length).expand(len(lengths), length)
        return t.ge(prompt_lengths.unsqueeze(1)).logical_and(t.lt(lengths.unsqueeze(1)))

    def difference_of_masks(prompt_lengths, lengths, length):
        t = torch.arange(length)
        real = t[None, :] < lengths[:, None]
        prompt = t[None, :] < prompt_lengths[:, None]
        return real & ~prompt

    for candidate in (loops, cumulative, difference_of_masks, _mask(), solution["response_mask"]):
        expect_pass(checks.check_response_mask, candidate)


@pytest.mark.parametrize(
    "kind, hint",
    [
        ("prompt_included", "the mask starts one position early, at <|assistant|>"),
        ("first_excluded", "the mask starts one position late"),
        ("end_excluded", "the mask stops one position early"),
        ("one_padding", "the mask goes one position past the end"),
        ("padding_included", "lengths is ignored"),
        ("prompt", "this is the prompt's mask"),
        ("inverted", "the mask is inverted"),
        ("every_real_token", "this is the padding mask (every real token)"),
        ("int", "return a bool tensor"),
        ("longest", "the mask has `length` columns"),
    ],
)
def test_response_mask_mistakes_are_named(kind: str, hint: str) -> None:
    expect_hint(checks.check_response_mask, _mask(kind), hint, hidden=False)
    expect_named_alone(checks.check_response_mask, _mask(kind), hint)


def test_the_first_hidden_mask_tells_every_mistake_apart() -> None:
    for seed in DRAWS:
        p, n, length = checks._mask_hidden(Draw(seed))[0]
        masks = [checks._mask(p, n, length, kind) for kind in ["", *checks.MASK_MISTAKES]]
        assert _distinct(masks), seed
        assert torch.equal(masks[0], posttraining.response_mask(p, n, length))


def test_masks_by_tutorlib_are_refused() -> None:
    copy_ = runpy.run_path(posttraining.__file__)["response_mask"]

    def by_padding_masks(prompt_lengths, lengths, length):
        return attention.padding_mask(lengths, length) & ~attention.padding_mask(
            prompt_lengths, length
        )

    cheats = [
        posttraining.response_mask,
        lambda p, n, length: copy_(p, n, length),
        by_padding_masks,
        lambda p, n, length: checks._mask(p, n, length),
    ]
    for cheat in cheats:
        expect_refused(checks.check_response_mask, cheat)


# --- 3. The supervised fine-tuning loss ----------------------------------------------------------


def _sft(kind: str = ""):
    def sft_loss(logits, tokens, mask):
        V = logits.shape[-1]
        if kind == "unshifted":
            return F.cross_entropy(logits[mask], tokens[mask])
        chosen = mask[:, :-1] if kind == "mask_not_shifted" else mask[:, 1:]
        if kind == "inverted":
            chosen = ~chosen
        per_token = F.cross_entropy(
            logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1), reduction="none"
        ).reshape(tokens[:, 1:].shape)
        if kind == "all_positions":
            return per_token.mean()
        weights = chosen.to(per_token.dtype)
        if kind == "sum":
            return (per_token * weights).sum()
        if kind == "over_all_positions":
            return (per_token * weights).sum() / per_token.numel()
        if kind == "per_sequence":
            return ((per_token * weights).sum(1) / weights.sum(1).clamp(min=1)).mean()
        return (per_token * weights).sum() / weights.sum()

    return sft_loss


def test_sft_loss_written_another_way_passes(solution) -> None:
    def ignore_index(logits, tokens, mask):
        targets = tokens[:, 1:].masked_fill(~mask[:, 1:], -100)
        return F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=-100)

    def gather(logits, tokens, mask):
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
        picked = log_probs.gather(-1, tokens[:, 1:, None]).squeeze(-1)  # (B, T-1)
        selected = mask[:, 1:]
        return -(picked * selected).sum() / selected.sum()

    def loops(logits, tokens, mask):
        total, count = 0.0, 0
        for b in range(logits.shape[0]):
            for t in range(1, logits.shape[1]):
                if mask[b, t]:
                    row = logits[b, t - 1]
                    total = total + torch.logsumexp(row, 0) - row[tokens[b, t]]
                    count += 1
        return total / count

    for candidate in (ignore_index, gather, loops, _sft(), solution["sft_loss"]):
        expect_pass(checks.check_sft_loss, candidate)


@pytest.mark.parametrize(
    "kind, hint",
    [
        ("unshifted", "the targets are not shifted"),
        ("mask_not_shifted", "the mask is not shifted with the targets"),
        ("inverted", "the mask was inverted"),
        ("all_positions", "the mask is ignored"),
        ("sum", "the losses are summed"),
        ("over_all_positions", "the masked-out positions are counted in the mean"),
        ("per_sequence", "this is the mean of each sequence's mean"),
    ],
)
def test_sft_loss_mistakes_are_named(kind: str, hint: str) -> None:
    expect_hint(checks.check_sft_loss, _sft(kind), hint, hidden=False)
    expect_named_alone(checks.check_sft_loss, _sft(kind), hint)


def test_the_first_hidden_loss_tells_every_mistake_apart() -> None:
    for seed in DRAWS:
        logits, tokens, mask = checks._sft_hidden(Draw(seed))[0]
        logits = logits.detach()
        losses = [checks._sft(logits, tokens, mask, kind) for kind in ["", *checks.SFT_MISTAKES]]
        assert _distinct(losses), seed


def test_the_written_out_loss_is_tutorlibs_at_float32_precision() -> None:
    for seed in DRAWS[:20]:
        for logits, tokens, mask in checks._sft_hidden(Draw(seed)):
            ours = checks._sft(logits.detach().double(), tokens, mask)
            theirs = posttraining.sft_loss(logits.detach(), tokens, mask).double()
            assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5), seed


def test_losses_by_tutorlib_or_hugging_face_are_refused() -> None:
    from transformers.loss.loss_utils import ForCausalLMLoss

    copy_ = runpy.run_path(posttraining.__file__)["sft_loss"]

    def masked_targets(tokens, mask):
        return tokens.masked_fill(~mask, -100)

    def hugging_face(logits, tokens, mask):
        labels = masked_targets(tokens, mask)
        return ForCausalLMLoss(logits, labels, vocab_size=logits.shape[-1])

    cheats = [
        posttraining.sft_loss,
        lambda lg, tk, m: copy_(lg, tk, m),
        lambda lg, tk, m: posttraining.sequence_logprob(lg, tk, m).sum() / -m[:, 1:].sum(),
        lambda lg, tk, m: generation.causal_lm_loss(lg, masked_targets(tk, m), ignore_index=-100),
        lambda lg, tk, m: training.sequence_cross_entropy(lg[:, :-1], tk[:, 1:]),
        hugging_face,
        lambda lg, tk, m: checks._sft(lg, tk, m),
    ]
    for cheat in cheats:
        expect_refused(checks.check_sft_loss, cheat)


# --- 4. A low-rank adapter -----------------------------------------------------------------------


def _lora(**change):
    """LoRALinear, or a likely mistake in it."""

    class LoRALinear(nn.Module):
        def __init__(self, base, rank, alpha):
            super().__init__()
            self.base = base
            if not change.get("not_frozen"):
                base.weight.requires_grad_(False)
            if not change.get("bias_not_frozen") and base.bias is not None:
                base.bias.requires_grad_(False)
            out_f, in_f = base.weight.shape
            dtype = torch.float32 if change.get("float32") else base.weight.dtype
            A = torch.empty(rank, in_f, dtype=dtype)
            init = change.get("init_A", "kaiming")
            if init == "kaiming":
                nn.init.kaiming_uniform_(A, a=math.sqrt(5))
            elif init == "randn":
                A.normal_()
            elif init == "small":
                A.normal_(std=0.01)
            else:
                A.zero_()
            B = torch.randn(out_f, rank, dtype=dtype) if change.get("B_random") else None
            B = torch.zeros(out_f, rank, dtype=dtype) if B is None else B
            if change.get("transposed_shapes"):
                A, B = A.T.contiguous(), B.T.contiguous()
            self.lora_A = A if change.get("plain_tensor") else nn.Parameter(A)
            self.lora_B = nn.Parameter(B)
            self.scaling = {"alpha": alpha, "one": 1.0, "inverted": rank / alpha}.get(
                change.get("scaling"), alpha / rank
            )

        def forward(self, x):
            update = self.scaling
            if change.get("forward") == "no_scaling":
                update = 1.0
            if change.get("forward") == "alpha":  # alpha, read back from the scaling
                update = self.scaling * self.lora_A.shape[0]
            if change.get("forward") == "transposed":
                return self.base(x) + update * x @ (self.lora_B @ self.lora_A)
            if change.get("forward") == "no_base":
                return update * (x @ self.lora_A.T) @ self.lora_B.T
            return self.base(x) + update * (x @ self.lora_A.T) @ self.lora_B.T

        def merge(self):
            base = self.base
            update = self.lora_B @ self.lora_A
            how = change.get("merge", "")
            if how == "in_place":
                with torch.no_grad():
                    base.weight += self.scaling * update
                return base
            scale = {"no_scaling": 1.0, "alpha": self.scaling * self.lora_A.shape[0]}.get(
                how, self.scaling
            )
            weight = {"transposed": lambda: update.T, "update_only": lambda: None}.get(
                how, lambda: update
            )()
            merged = nn.Linear(
                base.in_features, base.out_features, bias=base.bias is not None,
                dtype=base.weight.dtype,
            )  # fmt: skip
            with torch.no_grad():
                if how == "update_only":
                    merged.weight.copy_(scale * update)
                else:
                    merged.weight.copy_(base.weight + scale * weight)
                if base.bias is not None and how != "bias_not_copied":
                    merged.bias.copy_(base.bias)
            return merged

    return LoRALinear


def test_lora_linear_written_another_way_passes(solution) -> None:
    class WithLinear(nn.Module):
        """The low-rank path as two bias-free nn.Linear weights, peft's layout."""

        def __init__(self, base, rank, alpha):
            super().__init__()
            self.base = base
            self.base.requires_grad_(False)
            kind = dict(dtype=base.weight.dtype)
            down = nn.Linear(base.in_features, rank, bias=False, **kind)  # kaiming as nn.Linear
            self.lora_A = down.weight  # (rank, in)
            self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **kind))
            self.scaling = alpha / rank

        def forward(self, x):
            return F.linear(x, self.base.weight, self.base.bias) + self.scaling * F.linear(
                F.linear(x, self.lora_A), self.lora_B
            )

        def merge(self):
            merged = copy.deepcopy(self.base)
            with torch.no_grad():
                merged.weight.addmm_(self.lora_B, self.lora_A, alpha=self.scaling)
            return merged

    class Einsum(nn.Module):
        def __init__(self, base, rank, alpha):
            super().__init__()
            for p in base.parameters():
                p.requires_grad = False
            self.base = base
            fan_in = base.in_features
            bound = 1 / math.sqrt(fan_in)
            like = base.weight
            self.lora_A = nn.Parameter(torch.empty(rank, fan_in).to(like).uniform_(-bound, bound))
            self.lora_B = nn.Parameter(like.new_zeros(base.out_features, rank))
            self.scaling = float(alpha) / rank

        def forward(self, x):
            low = torch.einsum("...i,ri->...r", x, self.lora_A)
            return self.base(x) + self.scaling * torch.einsum("...r,or->...o", low, self.lora_B)

        def merge(self):
            weight = self.base.weight + self.scaling * torch.einsum(
                "or,ri->oi", self.lora_B, self.lora_A
            )
            merged = nn.Linear(*weight.shape[::-1], bias=self.base.bias is not None)
            merged = merged.to(weight.dtype)
            merged.weight = nn.Parameter(weight.detach().clone())
            if self.base.bias is not None:
                merged.bias = nn.Parameter(self.base.bias.detach().clone())
            return merged

    for candidate in (WithLinear, Einsum, _lora(), solution["LoRALinear"]):
        expect_pass(checks.check_lora_linear, candidate)


@pytest.mark.parametrize(
    "change, hint, visible",
    [
        ({"not_frozen": True}, "the base layer is not frozen", True),
        ({"bias_not_frozen": True}, "the base layer is not frozen", True),
        ({"B_random": True}, "lora_B is not zero at the start", True),
        ({"init_A": "zero"}, "lora_A is zero at the start", True),
        ({"init_A": "randn"}, "lora_A does not start as nn.Linear's weights do", True),
        ({"init_A": "small"}, "lora_A does not start as nn.Linear's weights do", True),
        ({"scaling": "alpha", "forward": "alpha"}, "the scaling is alpha / rank, not alpha", True),
        ({"scaling": "one"}, "the scaling is alpha / rank, not 1", True),
        ({"scaling": "inverted"}, "not rank / alpha", True),
        ({"forward": "no_scaling"}, "the low-rank path is not scaled", True),
        ({"forward": "alpha"}, "the scaling is alpha / rank, not alpha", True),
        ({"forward": "no_base"}, "the frozen layer's output is missing", True),
        ({"forward": "transposed"}, "lora_A is (rank, in_features)", True),
        ({"merge": "in_place"}, "merge changed the layer it was called on", True),
        ({"merge": "no_scaling"}, "the merged weight misses the scaling", True),
        ({"merge": "alpha"}, "the merged weight is scaled by alpha", True),
        ({"merge": "transposed"}, "its transpose is (in, out)", True),
        ({"merge": "update_only"}, "the merged weight is the update alone", True),
        ({"merge": "bias_not_copied"}, "merge()'s bias is not the base layer's", True),
        ({"plain_tensor": True}, "self.lora_A should be an nn.Parameter", True),
        ({"transposed_shapes": True}, "self.lora_A is transposed", True),
        ({"float32": True}, "has dtype torch.float32, base.weight torch.float64", False),
    ],
)
def test_lora_linear_mistakes_are_named(change: dict, hint: str, visible: bool) -> None:
    if visible:
        expect_hint(checks.check_lora_linear, _lora(**change), hint, hidden=False)
    expect_hint(checks.check_lora_linear, _lora(**change), hint)


def _broken(kind: str):
    """The right layer with one part broken, as tests/test_checks.py breaks functions."""
    Right = _lora()

    class LoRALinear(Right):
        def __init__(self, base, rank, alpha):
            if kind == "init_raises":
                raise ZeroDivisionError("division by zero")
            super().__init__(base, rank, alpha)
            if kind == "no_lora_B":
                del self.lora_B

        def forward(self, x):
            out = super().forward(x)
            return {"None": None, "text": "text", "5-d": torch.zeros(1, 1, 1, 1, 1)}.get(kind, out)

        def merge(self):
            return None if kind == "merge_None" else super().merge()

    if kind == "not_a_module":
        return lambda base, rank, alpha: object()
    return LoRALinear


@pytest.mark.parametrize(
    "kind, message",
    [
        ("init_raises", "LoRALinear raised ZeroDivisionError"),
        ("no_lora_B", "keep the names: self.base, self.lora_A, self.lora_B, self.scaling"),
        ("None", "should be a torch.Tensor"),
        ("text", "should be a torch.Tensor"),
        ("5-d", "has shape (1, 1, 1, 1, 1)"),
        ("merge_None", "merge() should return an nn.Linear"),
        ("not_a_module", "should be an nn.Module"),
    ],
)
def test_a_broken_layer_fails_with_a_message(kind: str, message: str) -> None:
    expect_hint(checks.check_lora_linear, _broken(kind), message, hidden=False)
    expect_hint(checks.check_lora_linear, _broken(kind), message)


def test_a_transposed_update_is_named_on_the_square_hidden_layer() -> None:
    """Where in == out a transposed update raises nothing: its value names it."""
    for change, hint in (
        ({"forward": "transposed"}, "the update is used transposed"),
        ({"merge": "transposed"}, "the update was added transposed"),
    ):
        for seed in DRAWS[:10]:
            d = Draw(seed)
            base, rank, alpha, x = checks._lora_hidden(d)[1]
            assert base.in_features == base.out_features
            with Exercise("LoRALinear", hidden=False) as ex, pytest.raises(ExerciseError) as e:
                checks._check_lora_case(ex, _lora(**change), base, rank, alpha, x, seed)
            assert hint in str(e.value), (seed, str(e.value))


def test_kaiming_initialisation_passes_the_spread_test_for_every_seed() -> None:
    """The statistical test of lora_A's start fails a right answer (almost) never: the
    narrowest case, 16 numbers, over many seeds."""
    for seed in range(2000):
        torch.manual_seed(seed)
        A = torch.empty(2, 8)
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        bound = 8**-0.5
        assert float(A.abs().max()) <= bound
        assert 0.5 < float(A.double().std()) / (bound / 3**0.5) < 1.5, seed


def test_the_written_out_layer_is_tutorlibs() -> None:
    for fan_in, fan_out, rank, alpha in [(8, 4, 2, 4.0), (5, 5, 3, 1.5), (16, 3, 1, 8.0)]:
        base = nn.Linear(fan_in, fan_out, dtype=F64)
        layer = adapters.LoRALinear(copy.deepcopy(base), rank, alpha)
        with torch.no_grad():
            layer.lora_B.normal_()
        x = torch.randn(3, fan_in, dtype=F64)
        A, B = layer.lora_A.detach(), layer.lora_B.detach()
        mine = checks._forward_variant(x, base.weight, base.bias, A, B, alpha / rank, alpha, "")
        assert torch.allclose(mine, layer(x), atol=1e-12)
        assert torch.allclose(layer.merge()(x), layer(x), atol=1e-12)
        assert layer.scaling == alpha / rank


def test_the_first_hidden_layer_tells_every_mistake_apart() -> None:
    for seed in DRAWS:
        base, rank, alpha, x = checks._lora_hidden(Draw(seed))[0]
        W, b = base.weight.detach(), base.bias.detach()
        A, B = torch.randn(rank, W.shape[1]), torch.randn(W.shape[0], rank)
        s = alpha / rank
        outs = [
            checks._forward_variant(x, W, b, A, B, s, alpha, k) for k in checks.FORWARD_MISTAKES
        ]
        outs.append(checks._forward_variant(x, W, b, A, B, s, alpha, ""))
        assert _distinct(outs), seed
        assert len({s, alpha, 1.0, rank / alpha}) == 4, seed


def test_adapters_by_tutorlib_are_refused() -> None:
    from torch.nn.utils import parametrize

    class Subclass(adapters.LoRALinear):
        pass

    copy_ = runpy.run_path(adapters.__file__)["LoRALinear"]

    class Parametrized(nn.Module):
        def __init__(self, base, rank, alpha):
            super().__init__()
            self.base = base
            base.requires_grad_(False)
            lora = adapters.LoRA(*base.weight.shape, rank, alpha, dtype=base.weight.dtype)
            parametrize.register_parametrization(base, "weight", lora)
            self.lora_A, self.lora_B, self.scaling = lora.lora_A[0], lora.lora_B[0], alpha / rank

        def forward(self, x):
            return self.base(x)

        def merge(self):
            return self.base

    class Wrapper(nn.Module):
        def __init__(self, base, rank, alpha):
            super().__init__()
            inner = adapters.LoRALinear(base, rank, alpha)
            self.base, self.lora_A, self.lora_B = inner.base, inner.lora_A, inner.lora_B
            self.scaling = inner.scaling

    for cheat in (adapters.LoRALinear, Subclass, copy_, Parametrized, Wrapper):
        expect_refused(checks.check_lora_linear, cheat)


# --- 5. The DPO loss -----------------------------------------------------------------------------


def _dpo(kind: str = ""):
    def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=None):
        if beta is None:
            beta = 1.0 if kind == "default_beta_one" else 0.1
        chosen = policy_chosen - reference_chosen
        rejected = policy_rejected - reference_rejected
        margin = {
            "no_reference": lambda: policy_chosen - policy_rejected,
            "reference_added": lambda: (
                (policy_chosen + reference_chosen) - (policy_rejected + reference_rejected)
            ),
            "swapped": lambda: rejected - chosen,
        }.get(kind, lambda: chosen - rejected)()
        z = {"no_beta": margin, "beta_divides": margin / beta}.get(kind, beta * margin)
        if kind == "naive":
            return -torch.log(torch.sigmoid(z)).mean()
        if kind == "kink":
            return (torch.clamp(-z, min=0) + torch.log1p(torch.exp(-z.abs()))).mean()
        if kind == "kink_relu":
            return (torch.relu(-z) + torch.log1p(torch.exp(-z.abs()))).mean()
        if kind == "beta_outside":
            return -(beta * F.logsigmoid(margin)).mean()
        if kind == "no_minus":
            return F.logsigmoid(z).mean()
        if kind == "no_log":
            return -torch.sigmoid(z).mean()
        if kind == "sum":
            return -F.logsigmoid(z).sum()
        return -F.logsigmoid(z).mean()

    return dpo_loss


def test_dpo_loss_written_another_way_passes(solution) -> None:
    def softplus(pc, pr, rc, rr, beta=0.1):
        return F.softplus(-beta * ((pc - pr) - (rc - rr))).mean()

    def stable_by_hand(pc, pr, rc, rr, beta=0.1):
        z = beta * ((pc - rc) - (pr - rr))
        # -log sigmoid(z) = log(1 + e^-z), written so that no exponential overflows
        positive = torch.log1p(torch.exp(-z.clamp(min=0)))
        negative = -z + torch.log1p(torch.exp(z.clamp(max=0)))
        return torch.where(z >= 0, positive, negative).mean()

    def logsumexp(pc, pr, rc, rr, beta=0.1):
        z = beta * ((pc - rc) - (pr - rr))
        return torch.logsumexp(torch.stack([torch.zeros_like(z), -z]), dim=0).sum() / len(z)

    for candidate in (softplus, stable_by_hand, logsumexp, _dpo(), solution["dpo_loss"]):
        expect_pass(checks.check_dpo_loss, candidate)


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("swapped", "the sign is flipped (chosen and rejected swapped)", True),
        ("no_beta", "beta is missing", True),
        ("beta_divides", "the margin is divided by beta", True),
        ("beta_outside", "beta multiplies the loss", True),
        ("no_reference", "the reference model is ignored", True),
        ("reference_added", "the reference's log-probabilities were added", True),
        ("sum", "the losses are summed over the pairs", True),
        ("no_minus", "the sign of the loss is flipped", True),
        ("no_log", "the log is missing", True),
        ("naive", "overflows", False),
        ("kink", "its kinks at z = 0 pass on one-sided gradients", True),
        ("kink_relu", "the gradient is 0: relu(-z)", True),
    ],
)
def test_dpo_loss_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    if visible:
        expect_hint(checks.check_dpo_loss, _dpo(kind), hint, hidden=False)
    if kind.startswith("kink"):  # (right everywhere but at a margin of exactly 0)
        expect_hint(checks.check_dpo_loss, _dpo(kind), hint)
    else:
        expect_named_alone(checks.check_dpo_loss, _dpo(kind), hint)


def test_a_wrong_default_beta_fails_the_hidden_tests() -> None:
    expect_hint(checks.check_dpo_loss, _dpo("default_beta_one"), "with the default beta")


def test_the_first_hidden_pairs_tell_every_mistake_apart() -> None:
    for seed in DRAWS:
        inputs, beta = checks._dpo_hidden(Draw(seed))[0]
        detached = [t.detach() for t in inputs]
        kinds = [
            kind
            for kind in ["", *checks.DPO_MISTAKES]
            if kind not in ("naive", "kink", "kink_relu")
        ]
        losses = [checks._dpo(*detached, beta, kind) for kind in kinds]
        assert _distinct(losses), seed


def test_the_last_hidden_pairs_overflow_the_naive_loss_in_float32() -> None:
    for seed in DRAWS:
        inputs, beta = checks._dpo_hidden(Draw(seed))[-1]
        assert inputs[0].dtype == torch.float32
        naive = checks._dpo(*inputs, beta, "naive")
        right = posttraining.dpo_loss(*inputs, beta=beta)
        assert not torch.isfinite(naive) and torch.isfinite(right), seed


def test_the_loss_at_the_reference_is_log_2_with_gradient_minus_beta_over_2b() -> None:
    """The notebook's claim: when the policy equals the reference, loss log 2 and gradient
    -beta / (2B) for each chosen log-probability (+beta / (2B) for each rejected one)."""
    (pc, pr, rc, rr), _ = checks._visible_dpo()[0]
    loss = posttraining.dpo_loss(pc, pr, rc, rr)  # beta = 0.1
    loss.backward()
    assert torch.isclose(loss, torch.tensor(math.log(2), dtype=F64))
    B = len(pc)
    assert torch.allclose(pc.grad, torch.full((B,), -0.1 / (2 * B), dtype=F64))
    assert torch.allclose(pr.grad, torch.full((B,), 0.1 / (2 * B), dtype=F64))
    assert torch.equal(checks._dpo(pc.detach(), pr.detach(), rc, rr, 0.1), loss.detach())


def test_dpo_by_tutorlib_is_refused() -> None:
    copy_ = runpy.run_path(posttraining.__file__)["dpo_loss"]
    cheats = [
        posttraining.dpo_loss,
        lambda pc, pr, rc, rr, beta=0.1: copy_(pc, pr, rc, rr, beta),
        lambda pc, pr, rc, rr, beta=0.1: checks._dpo(pc, pr, rc, rr, beta),
    ]
    for cheat in cheats:
        expect_refused(checks.check_dpo_loss, cheat)
