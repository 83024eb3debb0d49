"""tutorlib.incontext: the few-shot prompt, the task family, answers, fine-tuning, heads."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch

from tutorlib.incontext import (
    ALPHABET,
    ARROW,
    HOLD_OUT_EVERY,
    IGNORE,
    SEPARATOR,
    VOCAB,
    ablate_heads,
    attention_weights,
    decode,
    draw_examples,
    draw_task,
    encode,
    exact_match_accuracy,
    few_shot_accuracy,
    few_shot_prompt,
    fine_tune,
    greedy_answers,
    is_held_out,
    task_mixture_batch,
)
from tutorlib.models import DecoderOnly, TransformerConfig

A = len(ALPHABET)


def tiny_model(positional: str = "rotary", seed: int = 0) -> DecoderOnly:
    torch.manual_seed(seed)
    config = TransformerConfig(
        vocab_size=len(VOCAB),
        context_length=20,
        d_model=16,
        n_heads=2,
        n_layers=2,
        d_ff=32,
        norm_first=True,
        positional=positional,
        tie_weights=False,  # tied, a random model repeats its last token: every answer alike
    )
    return DecoderOnly(config).eval()


def shifted(s: int) -> dict[str, str]:
    return {c: ALPHABET[(i + s) % A] for i, c in enumerate(ALPHABET)}


# --- the prompt ------------------------------------------------------------------------------


def test_few_shot_prompt_writes_the_examples_then_the_query() -> None:
    examples = [("cat", "chat"), ("dog", "chien")]
    assert few_shot_prompt(examples, "bird") == "cat>chat;dog>chien;bird>"
    assert few_shot_prompt([], "bird") == "bird>"  # zero-shot: the query alone
    assert few_shot_prompt([["a", "b"]], "c") == "a>b;c>"  # a pair may be a list
    styled = few_shot_prompt(examples, "bird", arrow=" -> ", separator="\n")
    assert styled == "cat -> chat\ndog -> chien\nbird -> "


def test_few_shot_prompt_is_the_join_of_the_examples_plus_the_query() -> None:
    generator = torch.Generator().manual_seed(0)
    for k in range(5):
        examples = draw_examples(draw_task("cipher", generator), k, generator)
        for arrow, separator in ((">", ";"), (" = ", " | ")):
            lines = separator.join(f"{x}{arrow}{y}" for x, y in examples)
            expected = lines + (separator if examples else "") + "q" + arrow
            assert few_shot_prompt(examples, "q", arrow=arrow, separator=separator) == expected


@pytest.mark.parametrize(
    "examples, query, style",
    [
        ([("cat", "chat", "gato")], "bird", {}),  # three strings
        (["ab"], "bird", {}),  # a str of two characters is not a pair
        ([("cat", 2)], "bird", {}),  # an output that is not a str
        ([(None, "chat")], "bird", {}),  # an input that is not a str
        ([("cat", "chat")], 3, {}),  # a query that is not a str
        ([("cat", "chat")], "bird", {"arrow": 1}),
        ([("cat", "chat")], "bird", {"separator": None}),
    ],
)
def test_few_shot_prompt_refuses_what_is_not_text(examples, query, style) -> None:
    with pytest.raises(TypeError):
        few_shot_prompt(examples, query, **style)


@pytest.mark.parametrize(
    "examples, query, style, offending",
    [
        ([("a>b", "chat")], "bird", {}, "a>b"),
        ([("cat", "ch;at")], "bird", {}, "ch;at"),
        ([("c;at", "chat")], "bird", {}, "c;at"),
        ([("cat", "chat>")], "bird", {}, "chat>"),
        ([("cat", "chat")], "bi>rd", {}, "bi>rd"),
        ([("cat", "chat")], ";bird", {}, ";bird"),
        ([("cat", "chat")], "a|b", {"separator": "|"}, "a|b"),
    ],
)
def test_few_shot_prompt_refuses_an_ambiguous_prompt_and_names_the_string(
    examples, query, style, offending
) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(offending))):
        few_shot_prompt(examples, query, **style)


@pytest.mark.parametrize(
    "style", [{"arrow": ""}, {"separator": ""}, {"arrow": "|", "separator": "|"}]
)
def test_few_shot_prompt_refuses_an_empty_or_repeated_delimiter(style) -> None:
    with pytest.raises(ValueError, match="non-empty and different"):
        few_shot_prompt([("cat", "chat")], "bird", **style)


def test_encode_and_decode_are_inverse() -> None:
    text = "ab>c;fe>"
    ids = encode(text)
    assert ids.dtype == torch.long and ids.tolist() == [VOCAB.index(c) for c in text]
    assert decode(ids) == text and decode(ids.tolist()) == text
    with pytest.raises(ValueError, match="not in the vocabulary"):
        encode("abz")
    with pytest.raises(ValueError, match="must lie in"):
        decode([len(VOCAB)])


# --- the tasks -------------------------------------------------------------------------------


def test_draw_task_is_seeded_and_draws_the_families() -> None:
    def draws(seed: int, family: str) -> list[dict[str, str]]:
        generator = torch.Generator().manual_seed(seed)
        return [draw_task(family, generator) for _ in range(50)]

    assert draws(0, "cipher") == draws(0, "cipher") != draws(1, "cipher")
    shifts = draws(0, "shift")
    assert all(task in [shifted(s) for s in range(1, A)] for task in shifts)
    assert {tuple(task.values()) for task in shifts} == {
        tuple(shifted(s).values()) for s in range(1, A)
    }  # every shift but the identity, and nothing else
    ciphers = draws(0, "cipher")
    assert all(sorted(task) == list(ALPHABET) for task in ciphers)
    assert all(is_held_out(task) for task in ciphers)
    generator = torch.Generator().manual_seed(0)
    assert not any(is_held_out(draw_task("cipher", generator, held_out=False)) for _ in range(50))
    with pytest.raises(ValueError, match="family"):
        draw_task("reverse")


def test_a_tenth_of_the_ciphers_is_held_out() -> None:
    # Every map of the alphabet to itself, as digits in base A: count those held out exactly.
    every = torch.cartesian_prod(*[torch.arange(A)] * A)  # (A^A, A)
    codes = (every * A ** torch.arange(A)).sum(1)  # (A^A,)
    share = (codes % HOLD_OUT_EVERY == 0).float().mean().item()
    assert abs(share - 1 / HOLD_OUT_EVERY) < 0.01
    task = {c: ALPHABET[int(i)] for c, i in zip(ALPHABET, every[12345], strict=True)}
    assert is_held_out(task) == (int(codes[12345]) % HOLD_OUT_EVERY == 0)
    with pytest.raises(ValueError, match="every letter"):
        is_held_out({"a": "b"})


def test_draw_examples_follow_the_task() -> None:
    task = shifted(2)
    generator = torch.Generator().manual_seed(0)
    examples = draw_examples(task, 40, generator)
    assert len(examples) == 40 and all(task[x] == y for x, y in examples)
    assert {x for x, _ in examples} == set(ALPHABET)  # drawn with replacement from all letters
    assert draw_examples(task, 0) == []
    with pytest.raises(ValueError, match="k must be"):
        draw_examples(task, -1)
    with pytest.raises(ValueError, match="every letter"):
        draw_examples({"a": "b"}, 2)


def test_task_mixture_batch_lays_out_prompts_of_one_task_each() -> None:
    n = 40
    inputs, targets = task_mixture_batch(64, n, torch.Generator().manual_seed(0))
    assert inputs.shape == targets.shape == (64, 4 * n - 1) and inputs.dtype == torch.long
    rows = torch.cat([inputs, targets[:, -1:]], dim=1)  # (B, 4n): the last target is a separator
    assert (rows[:, 1::4] == VOCAB.index(ARROW)).all()
    assert (rows[:, 3::4] == VOCAB.index(SEPARATOR)).all()
    n_shifts = 0
    for row in rows:
        text = decode(row)
        pairs = [(p[0], p[2]) for p in text.rstrip(SEPARATOR).split(SEPARATOR)]
        task = dict(pairs)
        assert all(task[x] == y for x, y in pairs)  # one map per row
        if sorted(task) == list(ALPHABET):  # all letters seen: the whole map is known
            if task in [shifted(s) for s in range(1, A)]:
                n_shifts += 1
            else:
                assert not is_held_out(task)  # training never draws a held-out cipher
    assert 16 < n_shifts < 48  # about half the rows


def test_task_mixture_batch_scores_the_outputs_and_their_separators_only() -> None:
    inputs, targets = task_mixture_batch(8, 5, torch.Generator().manual_seed(1))
    scored = targets != IGNORE  # (B, 19)
    positions = [t for t in range(19) if t % 4 in (1, 2)]
    assert scored.all(0).tolist() == [t in positions for t in range(19)]
    assert (targets[:, 0:19:4] == IGNORE).all()
    torch.testing.assert_close(targets[:, 1:19:4], inputs[:, 2:19:4])  # the next token is y
    assert (targets[:, 2:19:4] == VOCAB.index(SEPARATOR)).all()


def test_task_mixture_batch_is_seeded_and_follows_the_share() -> None:
    a = task_mixture_batch(16, 6, torch.Generator().manual_seed(3))
    b = task_mixture_batch(16, 6, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    inputs, targets = task_mixture_batch(32, 6, torch.Generator().manual_seed(3), cipher_share=0)
    x, y = inputs[:, 0::4], targets[:, 1::4]  # (B, 6) each
    steps = (y - x) % A
    assert (steps == steps[:, :1]).all() and (steps > 0).all()  # every row one shift
    with pytest.raises(ValueError, match="cipher_share"):
        task_mixture_batch(4, 3, cipher_share=1.5)
    with pytest.raises(ValueError, match="n_examples"):
        task_mixture_batch(4, 0)


# --- answers and accuracy --------------------------------------------------------------------


def answer_without_cache(model: DecoderOnly, prompt: str, max_length: int) -> str:
    """The reference: run the whole sequence again for every new character."""
    text = prompt
    while len(text) < model.config.context_length and len(text) - len(prompt) <= max_length:
        with torch.no_grad():
            next_id = int(model(encode(text)[None])[0, -1].argmax())
        if VOCAB[next_id] == SEPARATOR:
            break
        text += VOCAB[next_id]
    return text[len(prompt) :][:max_length]


def test_greedy_answers_match_generation_without_a_cache() -> None:
    model = tiny_model()
    prompts = ["a>", "ab>c;d>", "f>e;", "a>b;c>d;e>f;a>", "c>", "e>e;d>f;b>"]
    for max_length in (1, 3):
        answers = greedy_answers(model, prompts, max_length=max_length)
        assert answers == [answer_without_cache(model, p, max_length) for p in prompts]
        assert len(set(answers)) >= 3  # the model says different things: the test can fail
        assert all(len(a) <= max_length and SEPARATOR not in a for a in answers)


def test_greedy_answers_stop_at_the_context_and_restore_the_mode() -> None:
    model = tiny_model().train()
    long_prompt = "a>b;" * 4 + "c>"  # 18 characters of a context of 20
    assert len(greedy_answers(model, [long_prompt], max_length=4)[0]) <= 2
    assert model.training  # put back as it was
    with pytest.raises(ValueError, match="prompt 0"):
        greedy_answers(model, ["a>" * 10])
    with pytest.raises(TypeError, match="DecoderOnly"):
        greedy_answers(torch.nn.Linear(2, 2), ["a>"])  # type: ignore[arg-type]


def test_exact_match_accuracy_counts_identical_strings() -> None:
    assert exact_match_accuracy(["a", "b", "cd", ""], ["a", "c", "cd", "d"]) == 0.5
    with pytest.raises(ValueError, match="as many"):
        exact_match_accuracy(["a"], ["a", "b"])
    with pytest.raises(TypeError, match="str"):
        exact_match_accuracy([1], ["a"])  # type: ignore[list-item]


def test_few_shot_accuracy_sorts_the_queries_by_the_examples() -> None:
    model = tiny_model()
    generator = torch.Generator().manual_seed(0)
    tasks = [draw_task("cipher", generator) for _ in range(3)]
    examples = [draw_examples(t, 3, generator) for t in tasks]
    result = few_shot_accuracy(model, tasks, examples)
    distinct = sum(len({x for x, _ in e}) for e in examples)
    assert result["n_all"] == 3 * A and result["n_in_context"] == distinct
    assert result["n_in_context"] + result["n_not_in_context"] == result["n_all"]
    weighted = (
        result["in_context"] * result["n_in_context"]
        + result["not_in_context"] * result["n_not_in_context"]
    )
    assert math.isclose(weighted / result["n_all"], result["all"])
    prompts = [few_shot_prompt(e, q) for e in examples for q in ALPHABET]
    truths = [t[q] for t in tasks for q in ALPHABET]
    assert result["all"] == exact_match_accuracy(greedy_answers(model, prompts), truths)
    zero_shot = few_shot_accuracy(model, tasks, examples, in_prompt=False)
    answers = greedy_answers(model, [few_shot_prompt([], q) for _ in tasks for q in ALPHABET])
    assert zero_shot["all"] == exact_match_accuracy(answers, truths)
    assert zero_shot["n_in_context"] == distinct
    no_examples = few_shot_accuracy(model, tasks, [[]] * 3)
    assert math.isnan(no_examples["in_context"]) and no_examples["n_not_in_context"] == 3 * A


# --- fine-tuning -----------------------------------------------------------------------------


def test_fine_tune_learns_the_examples_and_leaves_the_model_alone() -> None:
    model = tiny_model()
    before = copy.deepcopy(model.state_dict())
    examples = [("a", "d"), ("b", "b"), ("e", "a")]
    tuned = fine_tune(model, examples, steps=60, lr=1e-2)
    answers = greedy_answers(tuned, [few_shot_prompt([], x) for x, _ in examples])
    assert answers == [y for _, y in examples]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="at least one"):
        fine_tune(model, [])
    with pytest.raises(ValueError, match="same input length"):
        fine_tune(model, [("a", "b"), ("ab", "c")])


# --- inside the model ------------------------------------------------------------------------


def test_attention_weights_are_causal_distributions_and_change_nothing() -> None:
    model = tiny_model()
    tokens = encode("ab>c;d>e;a>")[None].repeat(3, 1)  # (3, 11)
    plain = model(tokens)
    maps = attention_weights(model, tokens)
    assert len(maps) == 2 and all(m.shape == (3, 2, 11, 11) for m in maps)
    for m in maps:
        torch.testing.assert_close(m.sum(-1), torch.ones(3, 2, 11))
        assert (m.triu(diagonal=1) == 0).all()  # no position reads the future
    torch.testing.assert_close(model(tokens), plain)
    attention = model.decoder.layers[0].self_attn
    assert not attention._forward_hooks and not attention._forward_pre_hooks


def test_attention_weights_equal_the_first_layers_attention_called_directly() -> None:
    model = tiny_model(positional="learned")  # positions added to the input: no rotary tables
    tokens = encode("a>b;c>d;a>")[None]  # (1, 10)
    layer = model.decoder.layers[0]
    with torch.no_grad():
        h = layer.norm1(model.decoder.embed(tokens))  # (1, 10, C): the input of layer 0's heads
        _, expected = layer.self_attn(
            h, h, h, is_causal=True, need_weights=True, average_attn_weights=False
        )  # (1, H, 10, 10)
    torch.testing.assert_close(attention_weights(model, tokens)[0], expected)


def test_ablate_heads_equals_zeroing_the_heads_columns_of_w_o() -> None:
    model = tiny_model()
    tokens = encode("a>b;c>d;a>")[None]  # (1, 10)
    D = model.config.head_dim
    by_hand = copy.deepcopy(model)
    with torch.no_grad():
        by_hand.decoder.layers[1].self_attn.out_proj.weight[:, D : 2 * D] = 0.0  # head 1
    plain = model(tokens)
    with ablate_heads(model, [(1, 1)]):
        ablated = model(tokens)
    torch.testing.assert_close(ablated, by_hand(tokens))
    assert not torch.allclose(ablated, plain)
    torch.testing.assert_close(model(tokens), plain)  # the hooks are gone
    with ablate_heads(model, []):
        torch.testing.assert_close(model(tokens), plain)
    with pytest.raises(ValueError, match="layer, head"), ablate_heads(model, [(2, 0)]):
        pass
