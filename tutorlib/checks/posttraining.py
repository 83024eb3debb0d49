"""Checks for the exercises on post-training (solutions/06_generative/04_post_training).

Each `check_*` takes the learner's function (or class). With `hidden=False` it runs the visible
tests (the notebook's worked examples); with `hidden=True` the hidden ones: property tests on
sizes and values drawn when they run (`tutorlib.checks.draw`), with the special cases that tell
the likely mistakes apart in every draw (a prompt with no examples, rows with and without
padding, rows with different numbers of response tokens, a square layer, margins of hundreds
in float32). While the learner's code runs, tutorlib's reference (`tutorlib.incontext` for the
prompt, `tutorlib.posttraining` for the mask and the losses, `tutorlib.adapters` for the
low-rank layer), the library functions that compute the same thing under another name
(`tutorlib.attention.padding_mask`, the causal-LM losses of `tutorlib.generation` and
`tutorlib.training`, Hugging Face's `ForCausalLMLoss` and peft's LoRA layer when loaded) are
out of reach (`tutorlib.checks.guard`). F.cross_entropy, F.log_softmax, F.logsigmoid,
F.softplus, nn.init and nn.Linear stay allowed: the exercises are the mask, the shift and the
average, the low-rank path and its merge, and the preference loss, not the operators.

Book: Chapter 6 exercises (6.8 In-context learning; 6.9 Instruction tuning; 6.10 Low-rank
adapters; 6.11 Preference optimisation).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tutorlib import adapters, attention, generation, incontext, posttraining, training
from tutorlib.checks import (
    Draw,
    Exercise,
    ExerciseError,
    Forbidden,
    expect_close,
    expect_equal,
    handed_over,
    random_tensor,
    watch_module,
)
from tutorlib.checks.errors import record_reference
from tutorlib.checks.generative import _hugging_face, _named

__all__ = [
    "check_dpo_loss",
    "check_few_shot_prompt",
    "check_lora_linear",
    "check_response_mask",
    "check_sft_loss",
]

# References, taken at import time (before any learner code runs).
_few_shot_prompt = incontext.few_shot_prompt
_response_mask, _sft_loss = posttraining.response_mask, posttraining.sft_loss
_dpo_loss = posttraining.dpo_loss
_LoRALinear = adapters.LoRALinear
_cross_entropy, _logsigmoid = F.cross_entropy, F.logsigmoid
_sigmoid, _log, _log1p, _exp = torch.sigmoid, torch.log, torch.log1p, torch.exp
_linear, _arange, _equal, _isfinite = F.linear, torch.arange, torch.equal, torch.isfinite
_Linear, _Parameter = nn.Linear, nn.Parameter
_F64 = torch.float64


def _peft(names: tuple[str, ...]) -> tuple[Any, ...]:
    """peft's LoRA layers `names`, when the learner has loaded peft (it is not a dependency)."""
    module = sys.modules.get("peft.tuners.lora.layer") if "peft" in sys.modules else None
    return tuple(getattr(module, name) for name in names if hasattr(module, name))


def _one_of(hints: list[str]) -> str | None:
    """One hint, or all of them when the inputs cannot tell the mistakes apart."""
    if len(hints) > 1:
        return "one of these. " + " Or: ".join(hints)
    return hints[0] if hints else None


# --- 1. A few-shot prompt ------------------------------------------------------------------------

# every function of tutorlib.incontext (few_shot_prompt, and the helpers that call it)
PROMPT_FORBIDDEN = Forbidden(
    python=tuple(f for n in incontext.__all__ if callable(f := getattr(incontext, n)))
)


def _prompt(
    examples: Sequence[tuple[str, str]], query: str, arrow: str, separator: str, kind: str = ""
) -> str | None:
    """The prompt as a likely mistake writes it (None where the mistake changes nothing)."""
    if kind == "defaults":
        if (arrow, separator) == (">", ";"):
            return None
        arrow, separator = ">", ";"
    if kind == "swapped":
        examples = [(y, x) for x, y in examples]
    lines = [f"{x}{arrow}{y}" for x, y in examples]
    if kind == "no_separator_before_query":
        return separator.join(lines) + query + arrow if examples else None
    if kind == "trailing_separator":
        return None if examples else separator + query + arrow
    end = "" if kind == "no_arrow_after_query" else arrow
    return "".join(line + separator for line in lines) + query + end


PROMPT_MISTAKES = {
    "no_separator_before_query": "the separator between the last example and the query is "
    "missing: the query is one more line, so the separator goes after every example "
    "(separator.join(...) + separator + query + arrow).",
    "trailing_separator": "with no examples the prompt is query + arrow alone: a separator "
    "goes between two lines, and there is no line before the query.",
    "no_arrow_after_query": "the prompt must end with the arrow after the query: the arrow is "
    "what tells the model that an output comes next.",
    "swapped": "each example is written output first: an example (x, y) is written "
    "x + arrow + y, input first.",
    "defaults": "the arrow and separator arguments were ignored: use the ones the caller "
    "passes (the defaults are '>' and ';').",
}

REFUSED_HINTS = {
    "output_not_str": ("TypeError", "an example's output is not a str (a pair is two strings)"),
    "query_not_str": ("TypeError", "the query is not a str"),
    "three": ("TypeError", "an example holds three strings, not a pair"),
    "input_has_arrow": ("ValueError", "an example's input contains the arrow"),
    "output_has_separator": ("ValueError", "an example's output contains the separator"),
    "input_has_separator": ("ValueError", "an example's input contains the separator"),
    "output_has_arrow": ("ValueError", "an example's output contains the arrow"),
    "query_has_arrow": ("ValueError", "the query contains the arrow"),
    "query_has_separator": ("ValueError", "the query contains the separator"),
    "empty_arrow": ("ValueError", "the arrow is empty"),
    "empty_separator": ("ValueError", "the separator is empty"),
    "same": ("ValueError", "the arrow and the separator are the same string"),
}

REFUSAL_ADVICE = {
    "TypeError": "check the types before anything else: each example must be a pair (a tuple "
    "or list of length 2) of str, and the query a str; raise TypeError otherwise.",
    "ValueError": "a prompt that the model cannot read back is refused: raise ValueError when "
    "an input, an output or the query contains the arrow or the separator (the model could not "
    "tell where an input ends or where an example ends), and when the arrow or the separator "
    "is empty or they are equal.",
}

_WORDS = (
    "cat", "dog", "bird", "fish", "tree", "house", "water", "light", "stone", "river",
    "chat", "chien", "oiseau", "arbre", "maison", "eau", "pierre", "12", "7", "2+3", "five",
    "apple", "red", "blue", "sky", "moon", "sun", "Paris", "France", "Rome", "Italy",
)  # fmt: skip
_ARROWS = (">", " -> ", " => ", " = ", ":")
_SEPARATORS = (";", "\n", " | ", "\n\n", " ; ")


def _visible_prompts() -> list[tuple]:
    """(examples, query, arrow, separator); None keeps the default arrow or separator."""
    return [
        ([("cat", "chat"), ("dog", "chien")], "bird", None, None),
        ([], "bird", None, None),
        ([("cat", "chat"), ("dog", "chien"), ("tree", "arbre")], "house", " -> ", "\n"),
    ]


def _visible_refusals() -> list[tuple]:
    """(examples, query, arrow, separator, what is wrong with them)."""
    return [
        ([("cat", "chat"), ("two", 2)], "bird", None, None, "output_not_str"),
        ([("cat", "chat")], 3, None, None, "query_not_str"),
        ([("cat", "chat", "gato")], "bird", None, None, "three"),
        ([("a>b", "chat")], "bird", None, None, "input_has_arrow"),
        ([("cat", "ch;at")], "bird", None, None, "output_has_separator"),
        ([("cat", "chat")], "bi;rd", None, None, "query_has_separator"),
        ([("cat", "chat")], "bird", "", None, "empty_arrow"),
        ([("cat", "chat")], "bird", None, "", "empty_separator"),
        ([("cat", "chat")], "bird", "|", "|", "same"),
    ]


def _pairs(draw: Draw, k: int) -> list[tuple[str, str]]:
    """k examples of two different words each."""
    return [tuple(draw.sample(_WORDS, 2)) for _ in range(k)]  # type: ignore[misc]


def _style(draw: Draw) -> tuple[str, str]:
    return draw.choice(_ARROWS), draw.choice(_SEPARATORS)


def _refusal(draw: Draw, kind: str) -> tuple[list, Any, str | None, str | None, str]:
    """A call that must be refused for reason `kind`, its fault placed among right examples."""
    arrow, separator = _style(draw)
    examples: list[Any] = _pairs(draw, draw.integer(1, 4))
    query: Any = draw.choice(_WORDS)
    at = draw.integer(0, len(examples) - 1)
    x, y = examples[at]
    if kind == "output_not_str":
        examples[at] = (x, draw.choice([draw.integer(0, 99), None, [y]]))
    elif kind == "query_not_str":
        query = draw.choice([draw.integer(0, 99), None, (query,)])
    elif kind == "three":
        examples[at] = (x, y, draw.choice(_WORDS))
    elif kind == "input_has_arrow":
        examples[at] = (x + arrow + y, y)
    elif kind == "input_has_separator":
        examples[at] = (x + separator + y, y)
    elif kind == "output_has_arrow":
        examples[at] = (x, y + arrow + x)
    elif kind == "output_has_separator":
        examples[at] = (x, y + separator + x)
    elif kind == "query_has_arrow":
        query = query + arrow
    elif kind == "query_has_separator":
        query = separator + query
    elif kind == "empty_arrow":
        arrow = ""
    elif kind == "empty_separator":
        separator = ""
    elif kind == "same":
        arrow = separator = draw.choice(_ARROWS)
    return examples, query, arrow, separator, kind


def _few_shot_hidden(draw: Draw) -> tuple[list[tuple], list[tuple]]:
    """Prompts: first two to five examples with another arrow and separator (every mistake
    writes its own prompt), then no examples (another style), one example with the defaults;
    then six refusals, one of each type and four values, each fault at a random example."""
    prompts = [
        (_pairs(draw, draw.integer(2, 5)), draw.choice(_WORDS), *_style(draw)),
        ([], draw.choice(_WORDS), *_style(draw)),
        (_pairs(draw, 1), draw.choice(_WORDS), None, None),
    ]
    values = [k for k, (error, _) in REFUSED_HINTS.items() if error == "ValueError"]
    types = [k for k, (error, _) in REFUSED_HINTS.items() if error == "TypeError"]
    kinds = [*draw.sample(types, 2), *draw.sample(values, 4)]
    return prompts, [_refusal(draw, kind) for kind in draw.sample(kinds, len(kinds))]


def _style_words(arrow: str | None, separator: str | None) -> str:
    if arrow is None and separator is None:
        return "the default arrow and separator"
    return f"arrow {arrow!r} and separator {separator!r}"


def _call_prompt(
    ex: Exercise, fn: Callable, examples: list, query: Any, arrow: str | None, sep: str | None
) -> Any:
    styled = {k: v for k, v in (("arrow", arrow), ("separator", sep)) if v is not None}
    return ex.call(fn, examples, query, **styled, hints=PROMPT_ERRORS)


PROMPT_ERRORS = {
    "unexpected keyword argument": "arrow and separator are keyword arguments: "
    "def few_shot_prompt(examples, query, *, arrow='>', separator=';').",
    "can only concatenate": "build the prompt from strings only.",
}


def _check_prompt_case(
    ex: Exercise, fn: Callable, examples: list, query: str, arrow: str | None, sep: str | None
) -> None:
    out = _call_prompt(ex, fn, examples, query, arrow, sep)
    a, s = arrow if arrow is not None else ">", sep if sep is not None else ";"
    expected = _few_shot_prompt(examples, query, arrow=a, separator=s)
    shown = f"({examples!r}, {query!r})" if not ex.hidden else ""
    what = (
        f"few_shot_prompt{shown} with {len(examples)} example{'s' * (len(examples) != 1)} and "
        + _style_words(arrow, sep)
    )
    if type(out) is not str:
        raise ExerciseError(f"{what} should return a str", got=type(out).__name__, likely=False)
    record_reference(expected)
    if out == expected:
        return
    variants = {
        hint: _prompt(examples, query, a, s, kind) for kind, hint in PROMPT_MISTAKES.items()
    }
    hint = _one_of([h for h, v in variants.items() if v is not None and v != expected and v == out])
    raise ExerciseError(
        f"{what} is not right",
        got=None if ex.hidden else repr(out)[:300],  # (it would show the hidden examples)
        expected=None if hint else repr(expected),
        hint=hint
        or "write each example as input + arrow + output, put the separator after each one, "
        "then the query and the arrow.",
        likely=hint is not None,
    )


@handed_over
def _raised(fn: Callable, *args: Any, **kwargs: Any) -> tuple[str, ...]:
    """What `fn(*args, **kwargs)` raised, as (its class's name, "TypeError" and/or "ValueError"
    if it is one), or ("",) for nothing: run inside the guard, so that the checks see whether
    the learner's code refused a call."""
    try:
        fn(*args, **kwargs)
    except NotImplementedError:
        raise
    except Exception as error:  # noqa: BLE001 - the learner's code may raise anything
        kinds = [k.__name__ for k in (TypeError, ValueError) if isinstance(error, k)]
        return (type(error).__name__, *kinds)
    return ("",)


def _check_refusal(
    ex: Exercise, fn: Callable, examples: list, query: Any, arrow: str | None, sep: str | None,
    kind: str,
) -> None:  # fmt: skip
    styled = {k: v for k, v in (("arrow", arrow), ("separator", sep)) if v is not None}
    raised = ex.call(_raised, fn, examples, query, **styled)
    error, why = REFUSED_HINTS[kind]
    if error in raised[1:]:
        return
    shown = f"({examples!r}, {query!r}{''.join(f', {k}={v!r}' for k, v in styled.items())})"
    call = "few_shot_prompt" + (shown if not ex.hidden else "")
    if raised[0]:
        what = f"{call} raised {raised[0]} when {why}; it should raise {error}"
    else:
        what = f"{call} returned a prompt when {why}; it should raise {error}"
    raise ExerciseError(what, hint=REFUSAL_ADVICE[error], likely=False)


def check_few_shot_prompt(fn: Callable, hidden: bool = False) -> None:
    """Learner's `few_shot_prompt(examples, query, *, arrow='>', separator=';') -> str`: every
    example written input + arrow + output and followed by the separator, then query + arrow;
    TypeError and ValueError for what the prompt cannot hold."""
    with Exercise("few_shot_prompt", hidden, PROMPT_FORBIDDEN) as ex:
        if hidden:
            prompts, refusals = _few_shot_hidden(ex.draw)
        else:
            prompts, refusals = _visible_prompts(), _visible_refusals()
        for case in prompts:
            _check_prompt_case(ex, fn, *case)
        for case in refusals:
            _check_refusal(ex, fn, *case)


# --- 2. The response mask ------------------------------------------------------------------------

MASK_FORBIDDEN = Forbidden(python=(posttraining.response_mask, attention.padding_mask))


def _mask(prompt_lengths: Tensor, lengths: Tensor, length: int, kind: str = "") -> Tensor:
    """The mask as a likely mistake builds it: start <= t < end, True = trained on."""
    t = _arange(length)[None, :]  # (1, length)
    p, n = prompt_lengths[:, None], lengths[:, None]  # (B, 1)
    start = {"prompt_included": p - 1, "first_excluded": p + 1, "prompt": 0}.get(kind, p)
    end = {"end_excluded": n - 1, "one_padding": n + 1, "prompt": p}.get(kind, n)
    if kind == "padding_included":
        end = torch.full_like(n, length)
    if kind == "every_real_token":
        start = torch.zeros_like(p)
    mask = (t >= start) & (t < end)  # (B, length)
    return ~mask if kind == "inverted" else mask


MASK_MISTAKES = {
    "prompt_included": "the mask starts one position early, at <|assistant|>: the prompt is "
    "the tokens up to and including <|assistant|>, positions 0 .. prompt_lengths[b] - 1; the "
    "response starts at t = prompt_lengths[b].",
    "first_excluded": "the mask starts one position late: the first response token sits at "
    "t = prompt_lengths[b] (the prompt's positions are 0 .. prompt_lengths[b] - 1).",
    "end_excluded": "the mask stops one position early: <|end|>, at t = lengths[b] - 1, is a "
    "response token too (the model must learn to stop).",
    "one_padding": "the mask goes one position past the end: t < lengths[b], so the first "
    "padding position (t = lengths[b]) is not trained on.",
    "padding_included": "lengths is ignored: the padding after lengths[b] is not part of the "
    "response. Keep t < lengths[b].",
    "prompt": "this is the prompt's mask: the response is prompt_lengths[b] <= t < lengths[b].",
    "inverted": "the mask is inverted: True marks the response tokens (the positions trained "
    "on), False the prompt and the padding.",
    "every_real_token": "this is the padding mask (every real token): the prompt's tokens must "
    "be False too, prompt_lengths[b] <= t < lengths[b].",
}

MASK_DTYPE_HINT = (
    "return a bool tensor: comparisons such as t >= prompt_lengths[:, None] give one; "
    "keep it bool (no .int(), .float() or .long())."
)


def _lengths(draw: Draw, B: int, padded: bool, prompt: tuple[int, int] = (2, 6)) -> tuple:
    """prompt_lengths, lengths (B,) int64 and the padded length: prompts of 2 or more tokens
    (<|user|> ... <|assistant|>), responses of 2 or more (a token and <|end|>)."""
    p = [draw.integer(*prompt) for _ in range(B)]
    n = [pi + draw.integer(2, 6) for pi in p]
    length = max(n) + (draw.integer(2, 4) if padded else 0)
    return torch.tensor(p), torch.tensor(n), length


def _mask_hidden(draw: Draw) -> list[tuple[Tensor, Tensor, int]]:
    """(prompt_lengths, lengths, length): first every row padded by two or more (every mistake
    gives its own mask), then a batch whose longest row fills it, one sequence, and long
    prompts."""
    return [
        _lengths(draw, draw.integer(2, 5), padded=True),
        _lengths(draw, draw.integer(2, 4), padded=False),
        _lengths(draw, 1, padded=draw.choice([True, False])),
        _lengths(draw, draw.integer(2, 3), padded=True, prompt=(10, 40)),
    ]


def _check_mask_case(ex: Exercise, fn: Callable, p: Tensor, n: Tensor, length: int) -> None:
    out = ex.call(fn, p, n, length)
    expected = _response_mask(p, n, length)
    B = p.shape[0]
    shown = f"{p.tolist()}, {n.tolist()}, " if not ex.hidden else ""
    what = f"response_mask({shown}length={length}) for {B} sequence{'s' * (B > 1)}"
    longest = int(n.max())
    if isinstance(out, Tensor) and tuple(out.shape) == (B, longest) and longest != length:
        raise ExerciseError(
            f"{what} has shape {tuple(out.shape)}",
            hint="the mask has `length` columns, the padded batch's T, which may be more than "
            "the longest sequence: (B, length).",
        )
    mistakes = {hint: _mask(p, n, length, kind) for kind, hint in MASK_MISTAKES.items()}
    expect_equal(out, expected, what=what, mistakes=mistakes, dtype_hint=MASK_DTYPE_HINT)


def check_response_mask(fn: Callable, hidden: bool = False) -> None:
    """Learner's `response_mask(prompt_lengths (B,), lengths (B,), length) -> (B, length)`
    bool: True where prompt_lengths[b] <= t < lengths[b]."""
    with Exercise("response_mask", hidden, MASK_FORBIDDEN) as ex:
        if hidden:
            cases = _mask_hidden(ex.draw)
        else:  # the notebook's two chats: prompts of 4 and 3 tokens, 7 and 5 tokens in all
            cases = [(torch.tensor([4, 3]), torch.tensor([7, 5]), 8)]
        for case in cases:
            _check_mask_case(ex, fn, *case)


# --- 3. The supervised fine-tuning loss ----------------------------------------------------------

SFT_FORBIDDEN = (
    posttraining.sft_loss,
    posttraining.sequence_logprob,
    *(f for f in (getattr(posttraining, "_token_logprobs", None),) if f is not None),  # its helper
    generation.causal_lm_loss,
    generation.sequence_perplexity,
    training.sequence_cross_entropy,
    training.label_smoothed_cross_entropy,
)


def _sft(logits: Tensor, tokens: Tensor, mask: Tensor, kind: str = "") -> Tensor | None:
    """The loss as a likely mistake computes it (None where it has no value)."""
    V = logits.shape[-1]
    if kind == "unshifted":
        predictions, targets, chosen = logits, tokens, mask
    else:
        predictions, targets = logits[:, :-1], tokens[:, 1:]  # (B, T-1, V), (B, T-1)
        chosen = {"mask_not_shifted": mask[:, :-1], "inverted": ~mask[:, 1:]}.get(kind, mask[:, 1:])
    if not chosen.any():
        return None
    per_token = _cross_entropy(
        predictions.reshape(-1, V), targets.reshape(-1), reduction="none"
    ).reshape(targets.shape)  # (B, T or T-1)
    weights = chosen.to(per_token.dtype)
    if kind == "all_positions":
        return per_token.mean()
    if kind == "sum":
        return (per_token * weights).sum()
    if kind == "over_all_positions":
        return (per_token * weights).sum() / per_token.numel()
    if kind == "per_sequence":
        counts = weights.sum(dim=1)  # (B,)
        rows = counts > 0
        return ((per_token * weights).sum(dim=1)[rows] / counts[rows]).mean()
    return (per_token * weights).sum() / weights.sum()


SFT_MISTAKES = {
    "unshifted": "the targets are not shifted: the logits at position t predict the token at "
    "t + 1, so score logits[:, :-1] against tokens[:, 1:] (and select them with mask[:, 1:]).",
    "mask_not_shifted": "the mask is not shifted with the targets: the targets are "
    "tokens[:, 1:], so the mask that selects them is mask[:, 1:], not mask[:, :-1].",
    "inverted": "the mask was inverted: the loss is taken where mask[:, 1:] is True (the "
    "response), not over the prompt and the padding.",
    "all_positions": "the mask is ignored: the mean runs over every position, the prompt and "
    "the padding included. Average over the positions where mask[:, 1:] is True only.",
    "sum": "the losses are summed: take the mean over the selected tokens.",
    "over_all_positions": "the masked-out positions are counted in the mean: divide by the "
    "number of selected tokens (mask[:, 1:].sum()), not by B * (T - 1).",
    "per_sequence": "this is the mean of each sequence's mean: every selected token of the "
    "batch counts the same, so divide the sum over the batch by the number of selected tokens "
    "of the batch (a long response weighs more than a short one).",
}

SFT_ERRORS = {
    "expected target size": "F.cross_entropy wants the classes in dimension 1: select or "
    "reshape the logits to (N, V) and the targets to (N,) first.",
    "to match target batch_size": "the predictions and the targets must line up: "
    "logits[:, :-1] against tokens[:, 1:], both selected by mask[:, 1:].",
    "view size is not compatible": "slices like logits[:, :-1] are not contiguous in memory: "
    "use .reshape(...) instead of .view(...).",
    "must match the size": "logits[:, :-1] and tokens[:, 1:] have T - 1 positions: select "
    "them with mask[:, 1:], which has T - 1 too.",
}


def _sft_case(
    draw: Draw, B: int, T: int, V: int, grad: bool = False, free: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """logits (B, T, V), tokens (B, T) and a mask: a response mask with padding (rows with
    different numbers of response tokens), or with `free` any mask with a token to score."""
    logits = draw.normal(B, T, V, scale=draw.real(0.5, 2.0), grad=grad)
    tokens = draw.integers(0, V, (B, T))
    if free:
        mask = draw.uniform(B, T) < 0.5
        mask[draw.integer(0, B - 1), draw.integer(1, T - 1)] = True
        return logits, tokens, mask
    while True:
        p = [draw.integer(1, T - 3) for _ in range(B)]
        n = [draw.integer(pi + 2, T - 1) for pi in p]  # at least one padding position
        counts = [b - a for a, b in zip(p, n, strict=True)]
        if B == 1 or len(set(counts)) > 1:
            break
    return logits, tokens, _response_mask(torch.tensor(p), torch.tensor(n), T)


def _sft_hidden(draw: Draw) -> list[tuple[Tensor, Tensor, Tensor]]:
    """First two or more sequences with response masks of different lengths, padded, with
    gradients (every mistake differs); then a mask whose first column is True (it is unused),
    any mask, one sequence, and float32 logits."""
    second = _sft_case(draw, draw.integer(2, 3), draw.integer(5, 8), draw.integer(3, 9))
    second[2][:, 0] = True
    return [
        _sft_case(draw, draw.integer(2, 4), draw.integer(6, 10), draw.integer(3, 12), grad=True),
        second,
        _sft_case(draw, draw.integer(2, 4), draw.integer(3, 8), draw.integer(2, 9), free=True),
        _sft_case(draw, 1, draw.integer(4, 9), draw.integer(2, 9)),
        tuple(
            t.float() if t.is_floating_point() else t
            for t in _sft_case(draw, draw.integer(2, 3), draw.integer(5, 9), draw.integer(3, 50))
        ),
    ]


def _check_sft_case(ex: Exercise, fn: Callable, logits: Tensor, tokens: Tensor, mask: Tensor):
    out = ex.call(fn, logits, tokens, mask, hints=SFT_ERRORS)
    # (the reference computes in float32 whatever the logits: compare at float32's precision)
    expected = _sft_loss(logits, tokens, mask).to(logits.dtype)
    ld = logits.detach()
    mistakes = {hint: _sft(ld, tokens, mask, kind) for kind, hint in SFT_MISTAKES.items()}
    B, T, V = logits.shape
    selected = int(mask[:, 1:].sum())
    expect_close(
        out,
        expected,
        what=f"sft_loss for logits of shape {(B, T, V)} with {selected} selected token"
        + "s" * (selected != 1),
        mistakes=_named(mistakes),
        atol=1e-5,
        rtol=1e-5,
        check_dtype=False,
    )
    if logits.requires_grad:
        ex.expect_backward(out, expected, {"logits": logits}, "sft_loss", atol=1e-6)


def check_sft_loss(fn: Callable, hidden: bool = False) -> None:
    """Learner's `sft_loss(logits (B, T, V), tokens (B, T), mask (B, T) bool) -> scalar`: the
    mean cross-entropy of tokens[:, 1:] predicted by logits[:, :-1] where mask[:, 1:]."""
    hugging_face = _hugging_face("transformers.loss.loss_utils", ("ForCausalLMLoss",))
    with Exercise("sft_loss", hidden, Forbidden(python=SFT_FORBIDDEN + hugging_face)) as ex:
        if hidden:
            cases = _sft_hidden(ex.draw)
        else:  # 2 sequences of T = 6 tokens, V = 5: responses at 2..5 (4 tokens) and 3..4 (2)
            tokens = torch.randint(0, 5, (2, 6), generator=torch.Generator().manual_seed(0))
            mask = _response_mask(torch.tensor([2, 3]), torch.tensor([6, 5]), 6)
            cases = [(random_tensor(2, 6, 5, seed=0), tokens, mask)]
        for case in cases:
            _check_sft_case(ex, fn, *case)


# --- 4. A low-rank adapter -----------------------------------------------------------------------

LORA_FORBIDDEN = (
    adapters.LoRALinear,
    adapters.LoRA,
    adapters.add_lora,
    adapters.merge_lora,
    adapters._init_pair,
)

LORA_ERRORS = {
    "same dtype": "create lora_A and lora_B with base.weight's dtype (and device): "
    "torch.empty(..., dtype=base.weight.dtype, device=base.weight.device).",
    "cannot be multiplied": "lora_A is (rank, in_features) and lora_B (out_features, rank): "
    "x @ lora_A.T is (..., rank), then @ lora_B.T gives (..., out_features).",
    "must match the size": "lora_B @ lora_A is (out_features, in_features), the shape of "
    "base.weight (nn.Linear stores (out, in)); its transpose is (in, out).",
    "has no attribute": "keep the names: self.base, self.lora_A, self.lora_B, self.scaling.",
    "object has no attribute": "keep the names: self.base, self.lora_A, self.lora_B, self.scaling.",
}

SCALING_HINTS = {
    "alpha": "the scaling is alpha / rank, not alpha: dividing by the rank keeps the update's "
    "size when the rank changes.",
    "one": "the scaling is alpha / rank, not 1.",
    "inverted": "the scaling is alpha / rank, not rank / alpha.",
}


def _forward_variant(x: Tensor, W: Tensor, b: Tensor | None, A: Tensor, B_: Tensor, s: float,
                     alpha: float, kind: str) -> Tensor | None:  # fmt: skip
    """The layer's output as a likely mistake computes it (None where it cannot)."""
    scale = {"no_scaling": 1.0, "alpha": alpha}.get(kind, s)
    base = _linear(x, W, b)
    if kind == "transposed":
        if W.shape[0] != W.shape[1]:
            return None
        return base + scale * x @ (B_ @ A)  # (..., in) @ (out, in): right only when square
    if kind == "no_base":
        return scale * (x @ A.T) @ B_.T
    return base + scale * (x @ A.T) @ B_.T


FORWARD_MISTAKES = {
    "no_scaling": "the low-rank path is not scaled: multiply it by self.scaling = alpha / rank.",
    "alpha": SCALING_HINTS["alpha"],
    "transposed": "the update is used transposed: the path is (x @ lora_A.T) @ lora_B.T, "
    "that is x (B A)^T, as nn.Linear computes x W^T.",
    "no_base": "the frozen layer's output is missing: forward is base(x) plus the low-rank path.",
}

MERGE_MISTAKES = {
    "no_scaling": "the merged weight misses the scaling: W + (alpha / rank) * lora_B @ lora_A.",
    "alpha": "the merged weight is scaled by alpha; the scaling is alpha / rank.",
    "transposed": "the update was added transposed: lora_B @ lora_A is (out, in), the shape of "
    "W; lora_A.T @ lora_B.T is its transpose.",
    "update_only": "the merged weight is the update alone: W + scaling * lora_B @ lora_A.",
}

IN_PLACE_HINT = (
    "merge changed the layer it was called on (its base weight, or lora_A or lora_B): merge "
    "returns a new nn.Linear and leaves this layer as it was. Changed in place, the base "
    "already holds the update and forward then adds it a second time, and the frozen base "
    "can no longer be shared with another adapter. Build the new layer from copies "
    "(W + scaling * lora_B @ lora_A makes a new tensor)."
)


@handed_over
def _merge(layer: nn.Module) -> Any:
    """The learner's layer's merge(), looked up and called inside the guard."""
    return layer.merge()


@handed_over
def _layer_parts(layer: nn.Module) -> dict[str, Any]:
    """The learner's layer's attributes and parameters: read inside the guard, as a property
    of the learner's class runs the learner's code."""
    return {
        "base": layer.base,
        "lora_A": layer.lora_A,
        "lora_B": layer.lora_B,
        "scaling": layer.scaling,
        "parameters": list(layer.named_parameters()),
    }


def _base_layer(draw: Draw | None, fan_in: int, fan_out: int, bias: bool, dtype) -> nn.Linear:
    """An nn.Linear with random weights (seeded, or drawn) and, where it has one, a bias far
    from zero, so that a lost bias shows."""
    layer = _Linear(fan_in, fan_out, bias=bias, dtype=dtype)
    with torch.no_grad():
        if draw is None:
            layer.weight.copy_(random_tensor(fan_out, fan_in, seed=1) / 2)
            if bias:
                layer.bias.copy_(1 + random_tensor(fan_out, seed=2))
        else:
            layer.weight.copy_(draw.normal(fan_out, fan_in, scale=fan_in**-0.5))
            if bias:
                layer.bias.copy_(1 + draw.normal(fan_out))
    return layer


def _expect_parameter(value: Any, shape: tuple[int, int], name: str, what: str, dtype) -> Tensor:
    if type(value) is not _Parameter:
        raise ExerciseError(
            f"{what}: self.{name} should be an nn.Parameter",
            got=type(value).__name__,
            hint=f"wrap it: self.{name} = nn.Parameter(torch.empty(...)), so that the module "
            "registers it and the optimiser trains it.",
            likely=False,
        )
    if tuple(value.shape) != shape:
        hint = None
        if tuple(value.shape) == shape[::-1]:
            hint = f"self.{name} is transposed: lora_A is (rank, in_features) and lora_B "
            "(out_features, rank), so that lora_B @ lora_A is (out, in) like base.weight."
        raise ExerciseError(
            f"{what}: self.{name} has shape {tuple(value.shape)}, not {shape}",
            hint=hint or "lora_A is (rank, in_features) and lora_B (out_features, rank).",
            likely=hint is not None,
        )
    if value.dtype != dtype:
        raise ExerciseError(
            f"{what}: self.{name} has dtype {value.dtype}, base.weight {dtype}",
            hint=LORA_ERRORS["same dtype"],
        )
    if not value.requires_grad:
        raise ExerciseError(
            f"{what}: self.{name} does not require gradients",
            hint="lora_A and lora_B are the trainable part: leave requires_grad=True.",
        )
    return value


def _check_start(
    what: str, base: nn.Linear, weight: Tensor, bias: Tensor | None, parts: dict, rank: int,
    alpha: float,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The layer just built: base kept and frozen, A random as nn.Linear's weight, B zero,
    the scaling, the trainable parameters."""
    fan_out, fan_in = weight.shape
    kept = parts["base"]
    if type(kept) is not nn.Linear:
        raise ExerciseError(
            f"{what}: self.base should be the nn.Linear it was given",
            got=type(kept).__name__,
            likely=False,
        )
    if not _equal(kept.weight.detach(), weight) or (
        bias is not None and (kept.bias is None or not _equal(kept.bias.detach(), bias))
    ):
        raise ExerciseError(
            f"{what}: self.base does not hold the weights of the layer it was given",
            hint="keep the given layer as it is (self.base = base): LoRA does not change W.",
        )
    trainable = [p for p in (kept.weight, kept.bias) if p is not None and p.requires_grad]
    if trainable:
        raise ExerciseError(
            f"{what}: the base layer is not frozen (its weight or bias requires gradients)",
            hint="freeze it: base.weight.requires_grad_(False), and the bias too "
            "(for p in base.parameters(): p.requires_grad_(False)). LoRA trains lora_A and "
            "lora_B only.",
        )
    A = _expect_parameter(parts["lora_A"], (rank, fan_in), "lora_A", what, weight.dtype)
    B_ = _expect_parameter(parts["lora_B"], (fan_out, rank), "lora_B", what, weight.dtype)
    if bool((B_ != 0).any()):
        raise ExerciseError(
            f"{what}: lora_B is not zero at the start",
            hint="lora_B starts at zero (nn.init.zeros_), so that B A = 0 and the layer starts "
            "exactly as the pretrained one; a random B changes the model before training.",
        )
    bound = fan_in**-0.5  # kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(in), 1/sqrt(in))
    if not bool((A != 0).any()):
        raise ExerciseError(
            f"{what}: lora_A is zero at the start",
            hint="only lora_B starts at zero; lora_A starts random, as nn.Linear's weight "
            "(nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5))). With both at zero no gradient "
            "reaches either, and nothing trains.",
        )
    spread = float(A.detach().double().std()) if A.numel() > 1 else bound / 3**0.5
    if float(A.detach().abs().max()) > bound * (1 + 1e-6) or (
        A.numel() >= 16 and not 0.5 < spread / (bound / 3**0.5) < 1.5
    ):
        raise ExerciseError(
            f"{what}: lora_A does not start as nn.Linear's weights do",
            hint="initialise it as nn.Linear does: nn.init.kaiming_uniform_(lora_A, "
            f"a=math.sqrt(5)), uniform in [-1/sqrt(in_features), 1/sqrt(in_features)] "
            f"(here +-{bound:.3g}).",
            likely=False,
        )
    scaling = parts["scaling"]
    if isinstance(scaling, Tensor) and scaling.numel() == 1:
        scaling = float(scaling)
    if not isinstance(scaling, int | float) or isinstance(scaling, bool):
        raise ExerciseError(f"{what}: self.scaling should be a number", got=type(scaling).__name__)
    if not math.isclose(scaling, alpha / rank, rel_tol=1e-9):
        variants = {"alpha": alpha, "one": 1.0, "inverted": rank / alpha}
        hint = _one_of([SCALING_HINTS[k] for k, v in variants.items() if math.isclose(scaling, v)])
        raise ExerciseError(
            f"{what}: self.scaling is not right",
            got=scaling,
            expected=alpha / rank,
            hint=hint or "self.scaling = alpha / rank.",
            likely=hint is not None,
        )
    count = sum(p.numel() for _, p in parts["parameters"] if p.requires_grad)
    if count != rank * (fan_in + fan_out):
        raise ExerciseError(
            f"{what} has {count} trainable parameters, not rank * (in_features + out_features)"
            f" = {rank * (fan_in + fan_out)}",
            hint="only lora_A and lora_B train: freeze the base layer and register nothing else "
            "that requires gradients.",
        )
    return A, B_


def _check_lora_case(
    ex: Exercise, cls: type, base: nn.Linear, rank: int, alpha: float, x: Tensor, seed: int
) -> None:
    fan_out, fan_in = base.weight.shape
    what = (
        f"LoRALinear(nn.Linear({fan_in}, {fan_out}"
        + ("" if base.bias is not None else ", bias=False")
        + f"{', dtype=torch.float64' if base.weight.dtype == _F64 else ''}), "
        f"rank={rank}, alpha={alpha:g})"
    )
    weight = base.weight.detach().clone()
    bias = None if base.bias is None else base.bias.detach().clone()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layer = ex.call(cls, base, rank, alpha, plain=False, hints=LORA_ERRORS)
    if not isinstance(layer, nn.Module):
        raise ExerciseError(f"{what} should be an nn.Module", got=type(layer).__name__)
    parts = ex.call(_layer_parts, layer, plain=False, hints=LORA_ERRORS)
    A, B_ = _check_start(what, base, weight, bias, parts, rank, alpha)
    scaling = alpha / rank
    tolerance = dict(atol=1e-5, rtol=1e-5) if weight.dtype != _F64 else dict(atol=1e-10)

    # at the start the layer is the base layer
    out = ex.call(layer, x, hints=LORA_ERRORS)
    expected = _linear(x, weight, bias)
    expect_close(
        out,
        expected,
        what=f"{what} at the start",
        mistakes={FORWARD_MISTAKES["no_base"]: torch.zeros_like(expected)},
        **tolerance,
    )

    # with given A and B, and the gradients
    given_A = _draw_like(A, seed + 1)
    given_B = _draw_like(B_, seed + 2)
    with torch.no_grad():
        A.copy_(given_A)
        B_.copy_(given_B)
    out = ex.call(layer, x, hints=LORA_ERRORS)
    with torch.random.fork_rng():
        reference = _LoRALinear(_copy_linear(weight, bias), rank, alpha)
    with torch.no_grad():
        reference.lora_A.copy_(given_A)
        reference.lora_B.copy_(given_B)
    expected = reference(x)
    mistakes = {
        hint: _forward_variant(x, weight, bias, given_A, given_B, scaling, alpha, kind)
        for kind, hint in FORWARD_MISTAKES.items()
    }
    expect_close(
        out,
        expected,
        what=f"{what}'s forward with lora_A and lora_B set to random values",
        mistakes=_named(mistakes),
        **tolerance,
    )
    _check_gradients(ex, what, out, expected, A, B_, reference, parts["base"])

    # the merge
    merged = ex.call(_merge, layer, plain=False, hints=LORA_ERRORS)
    _check_merged(what, merged, weight, bias, given_A, given_B, scaling, alpha, tolerance)
    expect_close(  # (follows from the weight and the bias: the merged layer is the layer)
        _linear(x, merged.weight, merged.bias).detach(),
        expected.detach(),
        what=f"the output of {what}.merge()",
        **tolerance,
    )
    unchanged = (
        _equal(parts["base"].weight.detach(), weight)
        and _equal(A.detach(), given_A)
        and _equal(B_.detach(), given_B)
    )
    if not unchanged:
        raise ExerciseError(f"{what}.merge() is not right", hint=IN_PLACE_HINT)
    again = ex.call(layer, x, hints=LORA_ERRORS)
    expect_close(
        again, expected, what=f"{what}'s forward after merge()", **tolerance, check_dtype=False
    )


def _draw_like(t: Tensor, seed: int) -> Tensor:
    """Random values for lora_A or lora_B, scaled so that the layer's outputs stay near 1."""
    return random_tensor(*t.shape, seed=seed).to(t.dtype) / t.shape[1] ** 0.5


def _copy_linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    layer = _Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def _check_gradients(
    ex: Exercise, what: str, out: Tensor, expected: Tensor, A: Tensor, B_: Tensor,
    reference: nn.Module, base: nn.Module,
) -> None:  # fmt: skip
    """The gradients of sum(out^2) reach lora_A and lora_B, equal the reference's, and do not
    reach the frozen base."""
    (expected**2).sum().backward()
    A.grad = B_.grad = None
    if not out.requires_grad:
        raise ExerciseError(
            f"No gradient flows through {what}'s forward",
            hint="did you use .detach(), .data, torch.no_grad() or .item() on the way?",
            likely=False,
        )
    ex.call(torch.autograd.backward, (out**2).sum(), mutates=True)
    for name, leaf, want in (
        ("lora_A", A, reference.lora_A.grad),
        ("lora_B", B_, reference.lora_B.grad),
    ):
        if leaf.grad is None:
            raise ExerciseError(
                f"No gradient reaches {name} through {what}'s forward",
                hint="use the parameters themselves in forward (not .data or a detached copy).",
                likely=False,
            )
        size = 1 + float(want.abs().max())  # (float32 sums of many terms cancel)
        expect_close(
            leaf.grad,
            want,
            what=f"The gradient of {name} through {what}'s forward",
            atol=(1e-5 if want.dtype != _F64 else 1e-12) * size,
            rtol=1e-4 if want.dtype != _F64 else 1e-7,
        )
    if any(p.grad is not None for p in base.parameters()):
        raise ExerciseError(
            f"A gradient reached the base layer's weight or bias through {what}'s forward",
            hint="the base layer is frozen: set requires_grad_(False) on its parameters.",
        )


def _check_merged(
    what: str, merged: Any, weight: Tensor, bias: Tensor | None, A: Tensor, B_: Tensor,
    scaling: float, alpha: float, tolerance: dict,
) -> None:  # fmt: skip
    if type(merged) is not nn.Linear:
        raise ExerciseError(
            f"{what}.merge() should return an nn.Linear",
            got=type(merged).__name__,
            hint="build one: nn.Linear(in_features, out_features, bias=..., dtype=...), then "
            "copy the merged weight and the bias into it (under torch.no_grad()).",
            likely=False,
        )
    got_weight = merged.weight
    if type(got_weight) not in (Tensor, _Parameter):
        raise ExerciseError(f"{what}.merge()'s weight should be a tensor", got=type(got_weight))
    update = B_ @ A  # (out, in)
    variants = {
        "no_scaling": weight + update,
        "alpha": weight + alpha * update,
        "transposed": weight + scaling * update.T if update.shape[0] == update.shape[1] else None,
        "update_only": scaling * update,
    }
    expect_close(
        got_weight.detach(),
        weight + scaling * update,
        what=f"{what}.merge()'s weight",
        mistakes=_named({MERGE_MISTAKES[k]: v for k, v in variants.items()}),
        **tolerance,
    )
    got_bias = merged.bias
    if bias is None:
        if got_bias is not None:
            raise ExerciseError(
                f"{what}.merge() returned a layer with a bias; the base layer has none",
                hint="nn.Linear(..., bias=base.bias is not None).",
            )
        return
    if got_bias is None:
        raise ExerciseError(
            f"{what}.merge() returned a layer without a bias",
            hint="the merged layer keeps the base layer's bias.",
        )
    if type(got_bias) not in (Tensor, _Parameter) or not _equal(got_bias.detach(), bias):
        raise ExerciseError(
            f"{what}.merge()'s bias is not the base layer's",
            hint="copy the base layer's bias into the merged layer (a new nn.Linear starts with "
            "a random bias): LoRA changes the weight only.",
        )


def _lora_hidden(draw: Draw) -> list[tuple[nn.Linear, int, float, Tensor]]:
    """(base, rank, alpha, x): first in != out, rank >= 2 and alpha / rank not 1 nor alpha
    (every mistake shows), a batch of sequences; then a square layer (a transposed update
    has a value there), a layer without a bias in float64, and rank 1 with wide layers."""

    def alpha_for(rank: int) -> float:  # alpha / rank is neither 1 nor alpha nor rank / alpha
        return rank * draw.choice([2.0, 4.0])

    fan_in, fan_out = draw.sample(range(4, 13), 2)
    rank = draw.integer(2, min(fan_in, fan_out) - 1)
    square, r2 = draw.integer(3, 9), draw.integer(2, 3)
    wide_in, wide_out = draw.integer(64, 160), draw.integer(16, 48)
    f64_in, f64_out = draw.integer(3, 10), draw.integer(3, 10)
    r3 = draw.integer(1, min(f64_in, f64_out))
    return [
        (_base_layer(draw, fan_in, fan_out, True, torch.float32), rank, alpha_for(rank),
         draw.normal(draw.integer(2, 3), draw.integer(2, 5), fan_in).float()),
        (_base_layer(draw, square, square, True, torch.float32), r2, alpha_for(r2),
         draw.normal(draw.integer(2, 6), square).float()),
        (_base_layer(draw, f64_in, f64_out, False, _F64), r3, draw.choice([1.0, 8.0, 16.0]),
         draw.normal(draw.integer(1, 3), draw.integer(1, 4), f64_in)),
        (_base_layer(draw, wide_in, wide_out, True, torch.float32), 1, draw.choice([2.0, 8.0]),
         draw.normal(draw.integer(1, 4), wide_in).float()),
    ]  # fmt: skip


def check_lora_linear(cls: type, hidden: bool = False) -> None:
    """Learner's `LoRALinear(base, rank, alpha)`: base frozen, lora_A (rank, in) as nn.Linear's
    weight, lora_B (out, rank) zero, scaling alpha / rank; forward(x) = base(x) +
    scaling (x A^T) B^T; merge() a new nn.Linear with W + scaling B A and base's bias."""
    forbidden = Forbidden(python=LORA_FORBIDDEN + _peft(("Linear", "LoraLayer")))
    with Exercise("LoRALinear", hidden, forbidden) as ex:
        if hidden:
            cases = _lora_hidden(ex.draw)
            seeds = [ex.draw.integer(0, 2**31) for _ in cases]
        else:  # nn.Linear(8, 4), rank 2, alpha 4: scaling 2; a batch of 2 sequences of 3 tokens
            base = _base_layer(None, 8, 4, True, torch.float32)
            cases = [(base, 2, 4.0, random_tensor(2, 3, 8, seed=3).float())]
            seeds = [0]
        for (base, rank, alpha, x), seed in zip(cases, seeds, strict=True):
            _check_lora_case(ex, cls, base, rank, alpha, x, seed)


# --- 5. The DPO loss -----------------------------------------------------------------------------

DPO_FORBIDDEN = Forbidden(python=(posttraining.dpo_loss,))


def _dpo(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float, kind: str = "") -> Tensor:
    """The loss as a likely mistake computes it."""
    if kind == "no_reference":
        margin = pc - pr
    elif kind == "reference_added":
        margin = (pc + rc) - (pr + rr)
    else:
        margin = (pc - rc) - (pr - rr)  # (B,)
    z = {"no_beta": margin, "beta_divides": margin / beta, "swapped": -beta * margin}.get(
        kind, beta * margin
    )
    per_pair = {
        "kink": lambda: z.neg().clamp(min=0) + _log1p(_exp(-z.abs())),
        "kink_relu": lambda: z.neg().relu() + _log1p(_exp(-z.abs())),
        "naive": lambda: -_log(_sigmoid(z)),
        "beta_outside": lambda: -beta * _logsigmoid(margin),
        "no_minus": lambda: _logsigmoid(z),
        "no_log": lambda: -_sigmoid(z),
    }.get(kind, lambda: -_logsigmoid(z))()
    return per_pair.sum() if kind == "sum" else per_pair.mean()


DPO_MISTAKES = {
    "swapped": "the sign is flipped (chosen and rejected swapped): the margin is "
    "(policy_chosen - reference_chosen) - (policy_rejected - reference_rejected), and the loss "
    "falls as the chosen response gains on the rejected one.",
    "no_beta": "beta is missing: the margin is multiplied by beta inside the sigmoid.",
    "beta_divides": "the margin is divided by beta; it is multiplied: -logsigmoid(beta * margin).",
    "beta_outside": "beta multiplies the loss; it scales the margin inside the sigmoid: "
    "-logsigmoid(beta * margin).",
    "no_reference": "the reference model is ignored: each log-probability is measured against "
    "the reference's, (policy_chosen - reference_chosen) - (policy_rejected - "
    "reference_rejected).",
    "reference_added": "the reference's log-probabilities were added; they are subtracted: "
    "policy_chosen - reference_chosen is the chosen response's log-ratio.",
    "sum": "the losses are summed over the pairs: take the mean over the batch.",
    "no_minus": "the sign of the loss is flipped: the loss is -logsigmoid(beta * margin), which "
    "is positive; minimising logsigmoid would push the chosen response down.",
    "no_log": "the log is missing: the loss is -log sigmoid(beta * margin), "
    "F.logsigmoid (or -F.softplus(-z)).",
    "kink": "at a margin of exactly 0 (the policy equal to the reference, as at the first step "
    "of DPO) the gradient is wrong: max(-z, 0) + log1p(exp(-|z|)) has the right value, but its "
    "kinks at z = 0 pass on one-sided gradients. Use F.logsigmoid(z) (or -F.softplus(-z)).",
    "kink_relu": "at a margin of exactly 0 (the policy equal to the reference, as at the first "
    "step of DPO) the gradient is 0: relu(-z) + log1p(exp(-|z|)) has the right value, but its "
    "kinks at z = 0 pass on one-sided gradients. Use F.logsigmoid(z) (or -F.softplus(-z)).",
    "naive": "-torch.log(torch.sigmoid(z)) overflows: for a margin of a few hundred the "
    "sigmoid rounds to 0 and its log to -inf. Use F.logsigmoid(z) (or -F.softplus(-z)), "
    "which computes the same without forming the sigmoid.",
}

DPO_ERRORS = {
    "logsigmoid": "F.logsigmoid takes a tensor: compute the margin as a tensor first.",
}


def _dpo_pairs(draw: Draw, B: int, spread: float, grad: bool = False, dtype=_F64) -> list:
    """Summed log-probabilities of B chosen and rejected responses under the policy and the
    reference: around -30, the policy `spread` away from the reference."""
    rc, rr = (-30 + 10 * draw.normal(B) for _ in "cr")
    pc, pr = rc + spread * draw.normal(B), rr + spread * draw.normal(B)
    pc, pr, rc, rr = (t.to(dtype) for t in (pc, pr, rc, rr))
    return [pc.requires_grad_(grad), pr.requires_grad_(grad), rc, rr]


def _dpo_hidden(draw: Draw) -> list[tuple[list[Tensor], float | None]]:
    """(inputs, beta; None = the default): first a batch of three or more with gradients and a
    beta that is not 1 (every mistake differs); then the default beta, policy equal to the
    reference (log 2, with gradients), one pair, and margins of hundreds in float32 (where the
    sigmoid rounds to 0 and 1)."""
    first = _dpo_pairs(draw, draw.integer(3, 8), draw.real(2.0, 6.0), grad=True)
    equal = _dpo_pairs(draw, draw.integer(2, 5), 0.0, grad=True)  # (the gradient is not 0)
    big = _dpo_pairs(draw, draw.integer(4, 8), 0.0, dtype=torch.float32)
    signs = torch.tensor([(-1.0) ** i for i in range(len(big[0]))])
    big[0] = big[0] + signs * draw.uniform(len(big[0]), low=150, high=600).float()
    return [
        (first, draw.choice([0.05, 0.1, 0.2, 0.5])),
        (_dpo_pairs(draw, draw.integer(2, 6), draw.real(5.0, 20.0)), None),
        (equal, draw.choice([0.1, 0.3])),
        (_dpo_pairs(draw, 1, draw.real(1.0, 5.0)), draw.real(0.05, 0.5)),
        (big, 1.0),
    ]


def _visible_dpo() -> list[tuple[list[Tensor], float | None]]:
    """The notebook's two examples (made anew for each run: they hold gradients)."""
    return [
        # the policy equal to the reference: the loss is log 2 whatever beta
        (
            [
                torch.tensor([-12.0, -7.5, -20.25], dtype=_F64, requires_grad=True),
                torch.tensor([-9.0, -11.0, -15.5], dtype=_F64, requires_grad=True),
                torch.tensor([-12.0, -7.5, -20.25], dtype=_F64),
                torch.tensor([-9.0, -11.0, -15.5], dtype=_F64),
            ],
            None,
        ),
        # margins 2 and -1.5, beta = 0.5
        (
            [
                torch.tensor([-10.0, -14.0], dtype=_F64),
                torch.tensor([-13.0, -12.0], dtype=_F64),
                torch.tensor([-11.0, -13.0], dtype=_F64),
                torch.tensor([-12.0, -12.5], dtype=_F64),
            ],
            0.5,
        ),
    ]


def _check_dpo_case(ex: Exercise, fn: Callable, inputs: list[Tensor], beta: float | None):
    pc, pr, rc, rr = inputs
    keyword = {} if beta is None else {"beta": beta}
    out = ex.call(fn, pc, pr, rc, rr, **keyword, hints=DPO_ERRORS)
    b = 0.1 if beta is None else beta
    expected = _dpo_loss(pc, pr, rc, rr, beta=b)
    detached = [t.detach() for t in inputs]
    kinds = [k for k in DPO_MISTAKES if not k.startswith("kink")]  # (right value, wrong gradient)
    mistakes = {DPO_MISTAKES[k]: _dpo(*detached, b, k) for k in kinds}
    if bool(_isfinite(mistakes[DPO_MISTAKES["naive"]]).all()):
        del mistakes[DPO_MISTAKES["naive"]]  # it differs from the right loss by rounding only
    dtype = pc.dtype
    precise = dtype == _F64
    expect_close(
        out,
        expected,
        what=f"dpo_loss for {len(pc)} pair{'s' * (len(pc) > 1)} of {dtype} log-probabilities "
        + ("with the default beta" if beta is None else f"with beta={beta:g}"),
        mistakes=_named(mistakes),
        atol=1e-10 if precise else 1e-4,
        rtol=1e-8 if precise else 1e-5,
    )
    if pc.requires_grad:
        _check_dpo_gradients(ex, out, expected, inputs, b)


def _check_dpo_gradients(
    ex: Exercise, out: Tensor, expected: Tensor, inputs: list[Tensor], beta: float
) -> None:
    """The gradients of sum(out^2) with respect to policy_chosen and policy_rejected equal the
    reference's, or the failure names the mistake whose gradients they are (at a margin of 0
    several mistakes have the right loss and the wrong gradient)."""
    pc, pr, rc, rr = inputs
    want = torch.autograd.grad((expected**2).sum(), [pc, pr], retain_graph=True)
    variants = {}
    for kind, hint in DPO_MISTAKES.items():
        leaves = [
            pc.detach().clone().requires_grad_(True),
            pr.detach().clone().requires_grad_(True),
        ]
        loss = _dpo(*leaves, rc, rr, beta, kind)
        variants[hint] = torch.autograd.grad((loss**2).sum(), leaves)
    pc.grad = pr.grad = None
    if not out.requires_grad:
        raise ExerciseError(
            "No gradient flows through your dpo_loss",
            hint="did you use .detach(), .item(), .numpy() or torch.no_grad() on the way?",
            likely=False,
        )
    ex.call(torch.autograd.backward, (out**2).sum(), mutates=True)
    for i, (name, leaf) in enumerate((("policy_chosen", pc), ("policy_rejected", pr))):
        if leaf.grad is None:
            raise ExerciseError(
                f"No gradient reaches {name} through your dpo_loss",
                hint="did you use .detach(), .item(), .numpy() or torch.no_grad() on the way?",
                likely=False,
            )
        expect_close(
            leaf.grad,
            want[i],
            what=f"The gradient of {name} through your dpo_loss",
            mistakes=_named({hint: grads[i] for hint, grads in variants.items()}),
            atol=1e-10,
            rtol=1e-7,
        )


def check_dpo_loss(fn: Callable, hidden: bool = False) -> None:
    """Learner's `dpo_loss(policy_chosen, policy_rejected, reference_chosen,
    reference_rejected, beta=0.1) -> scalar`: the mean of -logsigmoid(beta * margin)."""
    with Exercise("dpo_loss", hidden, DPO_FORBIDDEN) as ex:
        cases = _dpo_hidden(ex.draw) if hidden else _visible_dpo()
        for inputs, beta in cases:
            _check_dpo_case(ex, fn, inputs, beta)


watch_module(__name__)
