"""tutorlib.posttraining: the chat template, the response mask, the SFT and DPO losses."""

from __future__ import annotations

import copy
import datetime as dt
import math

import pytest
import torch
import torch.nn.functional as F

from tutorlib.data import DATE_FORMATS, format_date
from tutorlib.generation import GPT_CONFIG, char_lm_data
from tutorlib.models import DecoderOnly, TransformerConfig
from tutorlib.posttraining import (
    ROLE_TOKENS,
    TASKS,
    ChatTokenizer,
    Instruction,
    PreferencePair,
    answer,
    chat_batch,
    dpo_loss,
    exact_match,
    extend_vocabulary,
    instruction_data,
    pair_logprobs,
    preference_pairs,
    response_mask,
    sequence_logprob,
    sft_loss,
    train_dpo,
    train_sft,
    unseen_phrasings,
)


@pytest.fixture(scope="module")
def tokenizer() -> ChatTokenizer:
    return ChatTokenizer(char_lm_data().tokenizer)


def tiny_model(vocab_size: int, seed: int = 0) -> DecoderOnly:
    torch.manual_seed(seed)
    config = dict(GPT_CONFIG, d_model=32, n_heads=2, n_layers=1, d_ff=64)
    return DecoderOnly(TransformerConfig(vocab_size=vocab_size, **config)).eval()


# --- the template ---------------------------------------------------------------------------------


def test_role_tokens_come_after_the_base_vocabulary(tokenizer: ChatTokenizer) -> None:
    v = tokenizer.base.vocab_size
    assert (tokenizer.user_id, tokenizer.assistant_id, tokenizer.end_id) == (v, v + 1, v + 2)
    assert tokenizer.vocab_size == v + 3
    assert tokenizer.pad_id == tokenizer.base.token_to_id("<pad>")


def test_encode_chat_lays_out_the_turns(tokenizer: ChatTokenizer) -> None:
    ids, prompt_length = tokenizer.encode_chat("Reverse 'abc'.", "cba")
    assert ids[0] == tokenizer.user_id and ids[prompt_length - 1] == tokenizer.assistant_id
    assert ids[prompt_length:] == [*tokenizer.encode("cba"), tokenizer.end_id]
    assert prompt_length == len("Reverse 'abc'.") + 2
    prompt, n = tokenizer.encode_chat("Reverse 'abc'.")
    assert prompt == ids[:prompt_length] and n == prompt_length
    assert tokenizer.decode(ids) == "<|user|>Reverse 'abc'.<|assistant|>cba<|end|>"


def test_typing_a_role_token_does_not_make_one(tokenizer: ChatTokenizer) -> None:
    ids = tokenizer.encode(ROLE_TOKENS[2])
    assert len(ids) == len(ROLE_TOKENS[2]) and tokenizer.end_id not in ids
    with pytest.raises(TypeError, match="strings"):
        tokenizer.encode_chat(3)  # type: ignore[arg-type]


def test_extend_vocabulary_keeps_the_old_logits_and_embeds_new_tokens_at_the_mean() -> None:
    model = tiny_model(20)
    bigger = extend_vocabulary(model, 23)
    tokens = torch.randint(20, (2, 9))
    old, new = model(tokens), bigger(tokens)
    assert new.shape == (2, 9, 23)
    torch.testing.assert_close(new[..., :20], old, rtol=0, atol=0)
    rows = bigger.decoder.embed.tokens.weight[20:]
    torch.testing.assert_close(rows, model.decoder.embed.tokens.weight.mean(0).expand(3, -1))
    assert model.config.vocab_size == 20  # the original is left alone
    with pytest.raises(ValueError, match=">= the model's 20"):
        extend_vocabulary(model, 19)


# --- the data ---------------------------------------------------------------------------------


def _right(example: Instruction) -> bool:
    """Recompute the response from the instruction's input."""
    text = example.instruction
    if example.task == "larger":
        a, b = (int(n) for n in text.replace("?", "").split() if n.isdigit())
        return example.response == str(max(a, b))
    if example.task in ("reverse", "upper"):
        word = next(w.strip("'.?") for w in text.split() if w.strip("'.?").islower())
        return example.response == (word[::-1] if example.task == "reverse" else word.upper())
    date = dt.date.fromisoformat(example.response)
    return any(format_date(date, style) in text for style in DATE_FORMATS)


def test_instruction_data_is_right_seeded_and_holds_out_its_inputs(tokenizer) -> None:
    train, test = instruction_data(400, 200, seed=3)
    assert (train, test) == instruction_data(400, 200, seed=3)
    assert train != instruction_data(400, 200, seed=4)[0]
    assert {e.task for e in train} == set(TASKS) == {e.task for e in test}
    assert all(_right(e) for e in [*train, *test, *unseen_phrasings(40)])
    assert not {e.response for e in test if e.task == "reverse"} & {
        e.response for e in train if e.task == "reverse"
    }
    longest = max(len(tokenizer.encode_chat(e.instruction, e.response)[0]) for e in train + test)
    assert longest <= GPT_CONFIG["context_length"]
    phrasings = {e.instruction.split("'")[0] for e in train if e.task == "reverse"}
    assert not any(e.instruction.split("'")[0] in phrasings for e in unseen_phrasings(20))


def test_chat_batch_pads_on_the_right(tokenizer: ChatTokenizer) -> None:
    examples = [Instruction("upper", "Uppercase 'ab'.", "AB"), Instruction("x", "Hi", "no")]
    tokens, prompt_lengths, lengths = chat_batch(tokenizer, examples)
    assert tokens.shape == (2, int(lengths.max()))
    assert lengths.tolist() == [
        len(tokenizer.encode_chat(e.instruction, e.response)[0]) for e in examples
    ]
    assert (tokens[1, lengths[1] :] == tokenizer.pad_id).all()
    assert prompt_lengths.tolist() == [17, 4]


# --- the mask and the losses ------------------------------------------------------------------


def test_response_mask_by_hand() -> None:
    mask = response_mask(torch.tensor([2, 1]), torch.tensor([4, 5]), 6)
    expected = [[0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0]]
    assert mask.dtype == torch.bool and mask.int().tolist() == expected
    with pytest.raises(ValueError, match="prompt_lengths <= lengths <= length"):
        response_mask(torch.tensor([3]), torch.tensor([2]), 6)
    with pytest.raises(TypeError, match="integer tensor"):
        response_mask(torch.tensor([1.0]), torch.tensor([2]), 6)


def test_sft_loss_equals_cross_entropy_with_the_prompt_ignored() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g, dtype=torch.float64)
    tokens = torch.randint(11, (3, 7), generator=g)
    mask = response_mask(torch.tensor([2, 4, 1]), torch.tensor([5, 7, 3]), 7)
    targets = tokens[:, 1:].masked_fill(~mask[:, 1:], -100)
    expected = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=-100)
    torch.testing.assert_close(sft_loss(logits, tokens, mask), expected)


def test_sft_loss_has_no_gradient_from_the_prompt_tokens() -> None:
    logits = torch.randn(1, 6, 5, requires_grad=True)
    tokens = torch.randint(5, (1, 6))
    mask = response_mask(torch.tensor([3]), torch.tensor([6]), 6)
    sft_loss(logits, tokens, mask).backward()
    # positions 0 and 1 predict prompt tokens 1 and 2; position 2 (<|assistant|>) predicts the
    # first response token, and the last position predicts nothing
    assert logits.grad[0, :2].abs().sum() == 0
    assert (logits.grad[0, 2:5].abs().sum(-1) > 0).all() and logits.grad[0, 5].abs().sum() == 0
    # the prompt's tokens themselves do not change the loss
    changed = tokens.clone()
    changed[0, 1:3] = (changed[0, 1:3] + 1) % 5
    assert sft_loss(logits, changed, mask) == sft_loss(logits, tokens, mask)


def test_sft_loss_errors() -> None:
    logits, tokens = torch.zeros(2, 4, 3), torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="selects no token"):
        sft_loss(logits, tokens, torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        sft_loss(logits, tokens, torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"must be \(B, T\)"):
        sft_loss(logits, tokens[:, :3], torch.ones(2, 3, dtype=torch.bool))


def test_sequence_logprob_sums_the_response_tokens() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    tokens = torch.randint(7, (2, 5), generator=g)
    mask = response_mask(torch.tensor([2, 3]), torch.tensor([5, 4]), 5)
    logp = logits.log_softmax(-1)
    expected = [sum(logp[b, t - 1, tokens[b, t]] for t in range(5) if mask[b, t]) for b in (0, 1)]
    torch.testing.assert_close(sequence_logprob(logits, tokens, mask), torch.stack(expected))
    one = mask[:1]  # one sequence: minus its log-probability over its tokens is sft_loss
    torch.testing.assert_close(
        -sequence_logprob(logits[:1], tokens[:1], one)[0] / one[:, 1:].sum(),
        sft_loss(logits[:1], tokens[:1], one).double(),
    )


def test_dpo_loss_on_hand_checked_cases() -> None:
    zero = torch.zeros(4, dtype=torch.float64)
    torch.testing.assert_close(
        dpo_loss(zero, zero, zero, zero, beta=0.5), torch.tensor(math.log(2), dtype=torch.float64)
    )
    # margin (1 - 0) - (0 - ln 3) = 1 + ln 3 with beta = 1: -log sigmoid(1 + ln 3)
    loss = dpo_loss(
        torch.tensor([1.0]),
        torch.tensor([0.0]),
        torch.tensor([0.0]),
        torch.tensor([math.log(3)]),
        beta=1.0,
    )
    torch.testing.assert_close(loss, torch.tensor(math.log1p(math.exp(-1 - math.log(3)))))
    # beta scales the margin: beta = 0.1 and a margin of 10 is a margin of 1 at beta = 1
    a = dpo_loss(
        torch.tensor([10.0]), zero[:1].float(), zero[:1].float(), zero[:1].float(), beta=0.1
    )
    torch.testing.assert_close(a, torch.tensor(math.log1p(math.exp(-1.0))))
    # large margins stay finite both ways
    big = torch.tensor([500.0])
    assert dpo_loss(big, -big, -big, big).item() == 0.0
    assert math.isclose(dpo_loss(-big, big, big, -big, beta=0.1).item(), 200.0, rel_tol=1e-6)


def test_dpo_gradient_at_the_reference_and_for_identical_responses() -> None:
    # at policy = reference the loss is log 2 and pushes chosen up, rejected down by beta / 2
    chosen = torch.tensor([-3.0], requires_grad=True)
    rejected = torch.tensor([-5.0], requires_grad=True)
    loss = dpo_loss(chosen, rejected, chosen.detach(), rejected.detach(), beta=0.2)
    loss.backward()
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6)
    assert math.isclose(chosen.grad.item(), -0.1, rel_tol=1e-6)
    assert math.isclose(rejected.grad.item(), 0.1, rel_tol=1e-6)
    # a pair whose two responses are the same sequence moves no parameter of the model
    model = tiny_model(12)
    tokens = torch.randint(12, (1, 6))
    mask = response_mask(torch.tensor([2]), torch.tensor([6]), 6)
    logp = sequence_logprob(model(tokens), tokens, mask)
    dpo_loss(logp, logp, logp.detach() + 1.0, logp.detach() - 2.0).backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.parameters())


def test_dpo_loss_errors() -> None:
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="one shape"):
        dpo_loss(x, x, x, torch.zeros(2))
    with pytest.raises(TypeError, match="1-D float"):
        dpo_loss(x, x, x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(x, x, x, x, beta=0.0)


# --- answers and fine-tuning --------------------------------------------------------------------


def test_batched_answers_equal_answers_one_at_a_time(tokenizer: ChatTokenizer) -> None:
    model = tiny_model(tokenizer.vocab_size, seed=2)
    questions = ["Reverse 'ab'.", "Which is larger, 12 or 95?", "x"]
    together = answer(model, tokenizer, questions, max_new_tokens=6)
    alone = [answer(model, tokenizer, [q], max_new_tokens=6)[0] for q in questions]
    assert together == alone and all(len(a) <= 6 * 14 for a in together)


class Scripted(torch.nn.Module):
    """Predicts "x" after any token but "x", and <|end|> after "x" (if `stops`)."""

    def __init__(self, tokenizer: ChatTokenizer, stops: bool) -> None:
        super().__init__()
        self.config = TransformerConfig(vocab_size=tokenizer.vocab_size, **GPT_CONFIG)
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.x, self.end, self.stops = tokenizer.encode("x")[0], tokenizer.end_id, stops

    def forward(self, tokens: torch.Tensor, cache: object = None) -> torch.Tensor:
        logits = torch.zeros(*tokens.shape, self.config.vocab_size)
        logits[..., self.x] = 1.0
        if self.stops:
            logits[..., self.end] += 2.0 * (tokens == self.x)
        return logits


def test_answer_stops_at_the_end_token_or_the_budget(tokenizer: ChatTokenizer) -> None:
    questions = ["Uppercase 'ab'.", "Which is larger, 12 or 95?"]
    assert answer(Scripted(tokenizer, True), tokenizer, questions) == ["x", "x"]
    kept = answer(Scripted(tokenizer, True), tokenizer, questions, keep_end=True)
    assert kept == ["x<|end|>"] * 2
    assert (
        answer(Scripted(tokenizer, False), tokenizer, questions, max_new_tokens=5) == ["xxxxx"] * 2
    )
    examples = [Instruction("upper", questions[0], "x"), Instruction("larger", questions[1], "95")]
    scores = exact_match(Scripted(tokenizer, True), tokenizer, examples)
    assert scores == {"upper": 1.0, "larger": 0.0, "all": 0.5}


def test_train_sft_moves_only_the_trainable_parameters(tokenizer: ChatTokenizer) -> None:
    model = tiny_model(tokenizer.vocab_size)
    train, _ = instruction_data(16, 0)
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = next(p for n, p in model.named_parameters() if "out_proj.weight" in n)
    trainable.requires_grad_(True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    history = train_sft(model, tokenizer, train, 3, 1e-2, batch_size=4)
    assert len(history["loss"]) == 3 and all(math.isfinite(x) for x in history["loss"])
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {n for n, p in model.named_parameters() if p is trainable}
    with pytest.raises(ValueError, match="requires a gradient"):
        trainable.requires_grad_(False)
        train_sft(model, tokenizer, train, 1, 1e-2)


# --- preferences ------------------------------------------------------------------------------


def test_preference_pairs_prefer_the_right_answer_to_a_wrong_one(tokenizer) -> None:
    examples = [Instruction("upper", "Uppercase 'x'.", "x"), Instruction("upper", "Hi", "X")]
    pairs = preference_pairs(Scripted(tokenizer, True), tokenizer, examples, temperature=0.01)
    # the model always answers "x": right for the first (no pair), wrong for the second
    assert pairs == [PreferencePair("upper", "Hi", "X", "x")]
    # an answer cut off by the budget is not one the model gave: no pair from it
    assert preference_pairs(Scripted(tokenizer, False), tokenizer, examples, temperature=0.01) == []


def test_train_dpo_learns_the_preferences_and_leaves_the_reference_alone(tokenizer) -> None:
    reference = tiny_model(tokenizer.vocab_size, seed=3)
    policy = copy.deepcopy(reference)
    frozen = copy.deepcopy(reference.state_dict())
    pairs = [PreferencePair("t", "ab", "c", "d"), PreferencePair("t", "ef", "gh", "g")]
    with torch.no_grad():
        c0, r0 = pair_logprobs(policy, tokenizer, pairs)
    history = train_dpo(policy, reference, tokenizer, pairs, 30, 1e-2, beta=0.5, batch_size=2)
    assert set(history) == {"loss", "accuracy", "margin"} and len(history["loss"]) == 30
    assert math.isclose(history["loss"][0], math.log(2), rel_tol=1e-4)  # policy = reference
    assert history["loss"][-1] < 0.3 and history["accuracy"][-1] == 1.0
    with torch.no_grad():
        c1, r1 = pair_logprobs(policy, tokenizer, pairs)
    assert ((c1 - r1) > (c0 - r0)).all()
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in frozen.items())
