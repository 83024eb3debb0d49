"""Post-training: a chat template, supervised fine-tuning on the response, and DPO.

The chapter's GPT (`tutorlib.generation.docstring_gpt`) continues Python docstrings. This
module turns it into a tiny assistant that follows short instructions:

- `ChatTokenizer` adds three role tokens to its character vocabulary, and `extend_vocabulary`
  gives the model an embedding row for each;
- `instruction_data` generates instructions with checkable answers (dates, words, numbers);
- `response_mask` and `sft_loss` train on the answers only (supervised fine-tuning, SFT);
- `sequence_logprob` and `dpo_loss` are direct preference optimisation (Rafailov et al. 2023);
- `answer` and `exact_match` generate and score the answers.

Book: 6.9 Instruction tuning; 6.11 Preference optimisation.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from tutorlib.attention import KVCache
from tutorlib.corpus import corpus_text
from tutorlib.data import DATE_FORMATS, FIRST_DATE, LAST_DATE, format_date
from tutorlib.generation import _cached_gpt, _gpt_cache_path, _pick_device, docstring_gpt
from tutorlib.models import DecoderOnly
from tutorlib.tokenizers import CharTokenizer
from tutorlib.training import cosine_schedule, fit

__all__ = [
    "ROLE_TOKENS",
    "SFT_TRAINING",
    "TASKS",
    "ChatTokenizer",
    "Instruction",
    "PreferencePair",
    "answer",
    "base_chat_model",
    "chat_batch",
    "dpo_loss",
    "exact_match",
    "extend_vocabulary",
    "instruction_data",
    "pair_logprobs",
    "preference_pairs",
    "response_mask",
    "sequence_logprob",
    "sft_loss",
    "sft_model",
    "train_dpo",
    "train_sft",
    "unseen_phrasings",
]

ROLE_TOKENS = ("<|user|>", "<|assistant|>", "<|end|>")
"""The chat template's tokens: who speaks (the user, the assistant) and where a turn ends."""


# --- The chat template ---------------------------------------------------------------------------


class ChatTokenizer:
    """A character tokenizer with the three role tokens appended to its vocabulary.

    The base tokenizer's ids are kept (the pretrained embedding rows stay where they were);
    `<|user|>`, `<|assistant|>` and `<|end|>` get the ids V, V + 1 and V + 2. A role token is
    one id that no text encodes to: typing ``<|end|>`` in an instruction gives seven characters.

    Shapes:
        encode_chat: instruction (and response) strings  ->  the ids of ``<|user|>``
        instruction ``<|assistant|>`` (response ``<|end|>``), and the prompt's length

    Book: 6.9 Instruction tuning.
    """

    def __init__(self, base: CharTokenizer) -> None:
        if not isinstance(base, CharTokenizer):
            raise TypeError(f"base must be a CharTokenizer, got {type(base).__name__}")
        self.base = base
        self.user_id, self.assistant_id, self.end_id = range(base.vocab_size, base.vocab_size + 3)
        self.pad_id = base.token_to_id("<pad>")

    @property
    def vocab_size(self) -> int:
        """The base vocabulary plus the three role tokens."""
        return self.base.vocab_size + len(ROLE_TOKENS)

    def encode(self, text: str) -> list[int]:
        """The base tokenizer's ids of `text` (never a role token)."""
        return self.base.encode(text)

    def encode_chat(self, instruction: str, response: str | None = None) -> tuple[list[int], int]:
        """The ids of one exchange and the length of its prompt (up to and including
        `<|assistant|>`); without a response, the prompt alone, ready to generate from."""
        if not isinstance(instruction, str) or not (response is None or isinstance(response, str)):
            raise TypeError("instruction and response must be strings")
        prompt = [self.user_id, *self.encode(instruction), self.assistant_id]
        if response is None:
            return prompt, len(prompt)
        return [*prompt, *self.encode(response), self.end_id], len(prompt)

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Text of `ids`, role tokens written out by name and padding left out."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        names = dict(zip((self.user_id, self.assistant_id, self.end_id), ROLE_TOKENS, strict=True))
        out = []
        for i in ids:
            if i in names:
                out.append(names[i])
            elif i != self.pad_id:
                out.append(self.base.decode([i]))
        return "".join(out)


def extend_vocabulary(model: DecoderOnly, vocab_size: int) -> DecoderOnly:
    """A copy of `model` with `vocab_size - V` new tokens, each embedded at the mean of the
    V pretrained rows (and, with tied weights, scored by it).

    A new row at the mean starts the new tokens where the model expects an average token,
    rather than at a random vector the network has never seen.

    Shapes:
        embedding (V, C)  ->  (vocab_size, C); the first V rows unchanged

    Book: 6.9 Instruction tuning.
    """
    if not isinstance(model, DecoderOnly):
        raise TypeError(f"model must be a DecoderOnly, got {type(model).__name__}")
    old = model.config.vocab_size
    if not isinstance(vocab_size, int) or vocab_size < old:
        raise ValueError(f"vocab_size must be an int >= the model's {old}, got {vocab_size!r}")
    device = next(model.parameters()).device
    bigger = DecoderOnly(replace(model.config, vocab_size=vocab_size)).to(device)
    state = copy.deepcopy(model.state_dict())
    for name in ("decoder.embed.tokens.weight", "output.weight"):
        weight = state[name]  # (V, C)
        rows = weight.mean(dim=0, keepdim=True).expand(vocab_size - old, -1)
        state[name] = torch.cat([weight, rows])  # (vocab_size, C)
    bigger.load_state_dict(state)
    return bigger.eval()


# --- Instructions with checkable answers ---------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One instruction, its task's name and the one right response."""

    task: str
    instruction: str
    response: str


TASKS = ("date", "reverse", "upper", "larger")
"""The generated tasks: a date to ISO form, a word backwards, a word in capitals, the larger of
two numbers."""

# Two phrasings per task for training (and testing on new inputs); a third is never trained on.
_PHRASINGS = {
    "date": ("{} in ISO form?", "Write {} as an ISO date."),
    "reverse": ("Reverse '{}'.", "Spell {} backwards."),
    "upper": ("Uppercase '{}'.", "Write {} in capitals."),
    "larger": ("Larger of {} and {}?", "Which is larger, {} or {}?"),
}
_UNSEEN_PHRASINGS = {
    "date": "Turn {} into ISO.",
    "reverse": "{} reversed?",
    "upper": "{} in upper case?",
    "larger": "Max of {} and {}?",
}
_DATE_STYLES = tuple(style for style in DATE_FORMATS if len(style) <= 16)  # the shorter styles


@functools.lru_cache(maxsize=1)
def _words() -> tuple[str, ...]:
    """Lower-case words of 3 to 7 letters from the docstring corpus, in a fixed order."""
    return tuple(sorted(set(re.findall(r"\b[a-z]{3,7}\b", corpus_text()))))


def _inputs(task: str, rng: random.Random, held_out: bool) -> tuple[tuple, str]:
    """Arguments of one instruction of `task` and its response; `held_out` draws from the
    inputs that training never sees (every fifth word, pair of numbers, 90-day block)."""
    if task == "date":
        n_days = (LAST_DATE - FIRST_DATE).days + 1
        while True:
            day = rng.randrange(n_days)
            if ((day // 90) % 5 == 4) == held_out:
                date = FIRST_DATE + dt.timedelta(days=day)
                return (format_date(date, rng.choice(_DATE_STYLES)),), date.isoformat()
    if task in ("reverse", "upper"):
        words = _words()
        while True:
            index = rng.randrange(len(words))
            if (index % 5 == 4) == held_out:
                word = words[index]
                return (word,), word[::-1] if task == "reverse" else word.upper()
    while True:  # larger
        a, b = rng.sample(range(10, 100), 2)
        if ((a + b) % 5 == 4) == held_out:
            return (a, b), str(max(a, b))


def instruction_data(
    n_train: int, n_test: int, seed: int = 0
) -> tuple[list[Instruction], list[Instruction]]:
    """`n_train` and `n_test` instructions, the tasks in turn, phrased in the two training
    phrasings; the test instructions' inputs (dates, words, pairs of numbers) never occur in
    training.

    Book: 6.9 Instruction tuning.
    """
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    rng = random.Random(seed)

    def draw(n: int, held_out: bool) -> list[Instruction]:
        out = []
        for i in range(n):
            task = TASKS[i % len(TASKS)]
            args, response = _inputs(task, rng, held_out)
            out.append(Instruction(task, rng.choice(_PHRASINGS[task]).format(*args), response))
        return out

    return draw(n_train, False), draw(n_test, True)


def unseen_phrasings(n: int, seed: int = 0) -> list[Instruction]:
    """`n` held-out instructions in a phrasing of their task that training never uses.

    Book: 6.9 Instruction tuning.
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        task = TASKS[i % len(TASKS)]
        args, response = _inputs(task, rng, True)
        out.append(Instruction(task, _UNSEEN_PHRASINGS[task].format(*args), response))
    return out


# --- Batches, the response mask and the losses ---------------------------------------------------


def chat_batch(
    tokenizer: ChatTokenizer,
    examples: Sequence[Instruction],
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Encode `examples` with the chat template, padded on the right.

    Shapes:
        returns tokens (B, T) int64 padded with tokenizer.pad_id, prompt_lengths (B,) and
        lengths (B,) int64; T = the longest example

    Book: 6.9 Instruction tuning.
    """
    if not examples:
        raise ValueError("examples is empty")
    encoded = [tokenizer.encode_chat(e.instruction, e.response) for e in examples]
    length = max(len(ids) for ids, _ in encoded)
    tokens = torch.full((len(encoded), length), tokenizer.pad_id, dtype=torch.long)
    for row, (ids, _) in enumerate(encoded):
        tokens[row, : len(ids)] = torch.tensor(ids)
    prompt_lengths = torch.tensor([p for _, p in encoded])
    lengths = torch.tensor([len(ids) for ids, _ in encoded])
    return tokens.to(device), prompt_lengths.to(device), lengths.to(device)


def _check_lengths(prompt_lengths: Tensor, lengths: Tensor, length: int) -> None:
    for name, t in (("prompt_lengths", prompt_lengths), ("lengths", lengths)):
        if not isinstance(t, Tensor) or t.dim() != 1 or t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a 1-D integer tensor (B,), got {t!r:.80}")
    if prompt_lengths.shape != lengths.shape:
        raise ValueError(
            f"prompt_lengths {tuple(prompt_lengths.shape)} and lengths "
            f"{tuple(lengths.shape)} must have the same shape (B,)"
        )
    if (prompt_lengths > lengths).any() or (lengths > length).any() or (prompt_lengths < 0).any():
        raise ValueError(f"need 0 <= prompt_lengths <= lengths <= length = {length}")


def response_mask(prompt_lengths: Tensor, lengths: Tensor, length: int) -> Tensor:
    """True at the response's positions: prompt_lengths[b] <= t < lengths[b].

    The prompt (`<|user|>` ... `<|assistant|>`) and the padding after lengths[b] are False;
    the response and its `<|end|>` are True.

    Shapes:
        prompt_lengths (B,), lengths (B,) int  ->  (B, length) bool

    Book: 6.9 Instruction tuning.
    """
    _check_lengths(prompt_lengths, lengths, length)
    t = torch.arange(length, device=lengths.device)  # (length,)
    return (t >= prompt_lengths[:, None]) & (t < lengths[:, None])  # (B, length)


def _check_scored(logits: Tensor, tokens: Tensor, mask: Tensor) -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 3 or not logits.is_floating_point():
        raise TypeError(f"logits must be a float tensor (B, T, V), got {logits!r:.80}")
    if tokens.shape != logits.shape[:2] or mask.shape != logits.shape[:2]:
        raise ValueError(
            f"tokens {tuple(tokens.shape)} and mask {tuple(mask.shape)} must be (B, T) = "
            f"{tuple(logits.shape[:2])}, the logits' first two sizes"
        )
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")


def _token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log p(tokens[:, t] | tokens[:, <t]) for t = 1 .. T-1, from the position before."""
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()  # half-precision logits: the log-softmax in float32
    logp = F.log_softmax(logits[:, :-1], dim=-1)  # (B, T-1, V)
    return logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)  # (B, T-1)


def sft_loss(logits: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean cross-entropy of the tokens that `mask` selects, each predicted from the position
    before it: the average over all selected tokens of the batch.

    With `response_mask` the model learns to answer and is not trained to write the
    instructions; with a mask of every real token it is trained on both.

    Shapes:
        logits (B, T, V), tokens (B, T), mask (B, T) bool  ->  scalar (mask[:, 0] is unused)

    Book: 6.9 Instruction tuning.
    """
    _check_scored(logits, tokens, mask)
    selected = mask[:, 1:]  # (B, T-1): the targets that count
    if not selected.any():
        raise ValueError("mask selects no token after the first position")
    return -_token_logprobs(logits, tokens)[selected].mean()


def sequence_logprob(logits: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
    """The log-probability of each sequence's selected tokens: the sum over t with
    mask[b, t] of log p(tokens[b, t] | tokens[b, <t]).

    Shapes:
        logits (B, T, V), tokens (B, T), mask (B, T) bool  ->  (B,)

    Book: 6.11 Preference optimisation.
    """
    _check_scored(logits, tokens, mask)
    return (_token_logprobs(logits, tokens) * mask[:, 1:]).sum(dim=-1)  # (B,)


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    reference_chosen: Tensor,
    reference_rejected: Tensor,
    beta: float = 0.1,
) -> Tensor:
    """The DPO loss of Rafailov et al. (2023), averaged over the pairs:

        -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))

    where pi and ref are the log-probabilities of the chosen (c) and rejected (r) responses
    under the policy being trained and the frozen reference model. beta * (pi - ref) is the
    implicit reward; the loss is that of a Bradley-Terry model preferring c to r.

    Shapes:
        four (B,) float tensors  ->  scalar

    Book: 6.11 Preference optimisation.
    """
    inputs = (policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    for t in inputs:
        if not isinstance(t, Tensor) or not t.is_floating_point() or t.dim() != 1:
            raise TypeError(f"the log-probabilities must be 1-D float tensors (B,), got {t!r:.80}")
    if len({t.shape for t in inputs}) != 1:
        raise ValueError(
            f"the four inputs must have one shape (B,), got {[t.shape for t in inputs]}"
        )
    if not isinstance(beta, float | int) or not beta > 0:
        raise ValueError(f"beta must be a number > 0, got {beta!r}")
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)  # (B,)
    return -F.logsigmoid(beta * margin).mean()


# --- The base model, fine-tuning, answers ---------------------------------------------------------


def base_chat_model(
    device: str | torch.device | None = None,
) -> tuple[DecoderOnly, ChatTokenizer]:
    """A fresh copy of the chapter's pretrained GPT with the role tokens in its vocabulary.

    Book: 6.9 Instruction tuning.
    """
    gpt, tokenizer, _ = docstring_gpt(device, progress=False)
    chat = ChatTokenizer(tokenizer)
    return extend_vocabulary(gpt, chat.vocab_size), chat


def train_sft(
    model: DecoderOnly,
    tokenizer: ChatTokenizer,
    train: Sequence[Instruction],
    steps: int,
    lr: float,
    *,
    batch_size: int = 32,
    mask_prompt: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, list[float]]:
    """Fine-tune the parameters of `model` that require gradients on `train`.

    AdamW with a short warm-up and a cosine decay; every batch draws `batch_size` examples.
    `mask_prompt=True` trains on the responses (`response_mask`); False trains on every
    token after `<|user|>`. Freeze parameters first to fine-tune only some (low-rank adapters).
    Returns `tutorlib.training.fit`'s history.

    Book: 6.9 Instruction tuning; 6.10 Low-rank adapters.
    """
    if not train:
        raise ValueError("train is empty")
    device = next(model.parameters()).device
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("no parameter of the model requires a gradient")
    generator = torch.Generator().manual_seed(seed)
    tokens, prompt_lengths, lengths = chat_batch(tokenizer, train, device)

    def make_batch() -> tuple[Tensor, tuple[Tensor, Tensor]]:
        rows = torch.randint(len(train), (batch_size,), generator=generator).to(device)
        width = int(lengths[rows].max())  # padded to the batch's longest example
        start = prompt_lengths[rows] if mask_prompt else torch.ones_like(prompt_lengths[rows])
        mask = response_mask(start, lengths[rows], width)  # (b, width)
        return tokens[rows, :width], (tokens[rows, :width], mask)

    optimizer = torch.optim.AdamW(parameters, lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    return fit(
        model,
        make_batch,
        steps,
        lr,
        loss_fn=lambda logits, target: sft_loss(logits, *target),
        schedule=cosine_schedule(max(1, steps // 20), steps, final=0.1),
        clip_norm=1.0,
        optimizer=optimizer,
        desc="SFT",
        progress=progress,
    )


@torch.no_grad()
def answer(
    model: DecoderOnly,
    tokenizer: ChatTokenizer,
    instructions: Sequence[str],
    max_new_tokens: int = 16,
    keep_end: bool = False,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[str]:
    """The model's responses to `instructions`, each up to `<|end|>` (left out, unless
    `keep_end`) or `max_new_tokens` (or the end of the context): greedy at temperature 0,
    sampled from softmax(logits / temperature) otherwise (with `generator`, on the CPU).

    Prompts of the same length run as one batch with a KV cache (`tutorlib.attention.KVCache`):
    the prefill, then one token per step.

    Book: 6.9 Instruction tuning.
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not isinstance(temperature, float | int) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    context = model.config.context_length
    prompts = [tokenizer.encode_chat(text)[0] for text in instructions]
    groups: dict[int, list[int]] = {}
    for index, ids in enumerate(prompts):
        if len(ids) >= context:
            raise ValueError(f"a prompt of {len(ids)} tokens leaves no room in {context}")
        groups.setdefault(len(ids), []).append(index)
    # at most 256 prompts at once, which bounds the memory of a batch
    batches = [(n, g[i : i + 256]) for n, g in groups.items() for i in range(0, len(g), 256)]
    out = [""] * len(prompts)
    for length, indices in batches:
        cache = KVCache()
        logits = model(torch.tensor([prompts[i] for i in indices], device=device), cache=cache)
        done = torch.zeros(len(indices), dtype=torch.bool, device=device)
        steps = []
        for step in range(min(max_new_tokens, context - length)):
            if temperature == 0:
                nxt = logits[:, -1].argmax(dim=-1)  # (G,)
            else:
                probs = F.softmax(logits[:, -1].float().cpu() / temperature, dim=-1)  # (G, V)
                nxt = torch.multinomial(probs, 1, generator=generator)[:, 0].to(device)
            steps.append(nxt)
            done |= nxt == tokenizer.end_id
            if done.all() or step == min(max_new_tokens, context - length) - 1:
                break
            logits = model(nxt[:, None], cache=cache)  # (G, 1, V)
        generated = torch.stack(steps, dim=1).tolist()  # (G, steps)
        for row, index in enumerate(indices):
            ids = generated[row]
            if tokenizer.end_id in ids:
                ids = ids[: ids.index(tokenizer.end_id) + (1 if keep_end else 0)]
            out[index] = tokenizer.decode(ids)
    model.train(was_training)
    return out


def exact_match(
    model: DecoderOnly, tokenizer: ChatTokenizer, examples: Sequence[Instruction]
) -> dict[str, float]:
    """The share of `examples` answered exactly right (greedy), per task and in "all".

    Book: 6.9 Instruction tuning.
    """
    responses = answer(model, tokenizer, [e.instruction for e in examples])
    right: dict[str, list[bool]] = {}
    for example, response in zip(examples, responses, strict=True):
        right.setdefault(example.task, []).append(response == example.response)
        right.setdefault("all", []).append(response == example.response)
    return {task: sum(r) / len(r) for task, r in right.items()}


_SOURCE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
"""A digest of this module's source as imported: part of the cache key of `sft_model`."""

SFT_TRAINING = dict(n_train=4000, steps=600, lr=3e-3, batch_size=32)
"""Page 6.9's fine-tuning: 4,000 generated instructions, 600 steps of 32 at a peak rate of 3e-3."""


def sft_model(
    device: str | torch.device | None = None,
) -> tuple[DecoderOnly, ChatTokenizer, dict[str, list[float]]]:
    """Page 6.9's assistant: `base_chat_model` fine-tuned with `train_sft` on SFT_TRAINING's
    instructions, trained the first time and kept in the tutorlib cache like the GPT.

    Book: 6.9 Instruction tuning; 6.10 Low-rank adapters; 6.11 Preference optimisation.
    """
    device = _pick_device(device)
    base, tokenizer = base_chat_model(device)
    recipe = dict(SFT_TRAINING)

    def train() -> tuple[DecoderOnly, dict[str, list[float]]]:
        model = copy.deepcopy(base)
        torch.manual_seed(0)
        train_set, _ = instruction_data(recipe["n_train"], 0)
        history = train_sft(
            model, tokenizer, train_set, recipe["steps"], recipe["lr"],
            batch_size=recipe["batch_size"],
        )  # fmt: skip
        return model.eval(), history

    path = _gpt_cache_path(device, "sft_gpt", (recipe, ROLE_TOKENS, _SOURCE))
    model, history = _cached_gpt(path, device, tokenizer.vocab_size, train)
    return model, tokenizer, history


# --- Preferences ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreferencePair:
    """An instruction with a preferred (chosen) and a dispreferred (rejected) response."""

    task: str
    instruction: str
    chosen: str
    rejected: str


def preference_pairs(
    model: DecoderOnly,
    tokenizer: ChatTokenizer,
    examples: Sequence[Instruction],
    samples: int = 4,
    temperature: float = 1.0,
    seed: int = 0,
) -> list[PreferencePair]:
    """Preference pairs that a rule decides: for each example, sample `samples` responses from
    `model`; if one is wrong, the right response is preferred to the first wrong one.

    Only answers that end with `<|end|>` count (an answer cut off at the budget of tokens is
    not one the model gave). An example the model always gets right gives no pair: there is
    nothing to prefer.

    Book: 6.11 Preference optimisation.
    """
    generator = torch.Generator().manual_seed(seed)
    prompts = [e.instruction for e in examples for _ in range(samples)]
    responses = answer(
        model, tokenizer, prompts, temperature=temperature, generator=generator, keep_end=True
    )
    end = ROLE_TOKENS[2]
    pairs = []
    for i, example in enumerate(examples):
        ended = [
            r[: -len(end)] for r in responses[i * samples : (i + 1) * samples] if r.endswith(end)
        ]
        # a role token inside an answer would be read back as characters: leave such out
        wrong = [r for r in ended if r != example.response and not any(t in r for t in ROLE_TOKENS)]
        if wrong:
            pairs.append(
                PreferencePair(example.task, example.instruction, example.response, wrong[0])
            )
    return pairs


def _pair_batch(
    tokenizer: ChatTokenizer, pairs: Sequence[PreferencePair], which: str, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Tokens (B, T) of the instructions with their chosen or rejected responses, and the
    response mask (B, T)."""
    examples = [Instruction(p.task, p.instruction, getattr(p, which)) for p in pairs]
    tokens, prompt_lengths, lengths = chat_batch(tokenizer, examples, device)
    return tokens, response_mask(prompt_lengths, lengths, tokens.shape[1])


def pair_logprobs(
    model: DecoderOnly, tokenizer: ChatTokenizer, pairs: Sequence[PreferencePair]
) -> tuple[Tensor, Tensor]:
    """The log-probabilities of the chosen and of the rejected responses under `model` (each
    with its `<|end|>`), with gradients if the caller allows them.

    Shapes:
        N pairs  ->  chosen (N,), rejected (N,)

    Book: 6.11 Preference optimisation.
    """
    if not pairs:
        raise ValueError("pairs is empty")
    device = next(model.parameters()).device
    out = []
    for which in ("chosen", "rejected"):
        tokens, mask = _pair_batch(tokenizer, pairs, which, device)
        out.append(sequence_logprob(model(tokens), tokens, mask))  # (N,)
    return out[0], out[1]


def train_dpo(
    policy: DecoderOnly,
    reference: DecoderOnly,
    tokenizer: ChatTokenizer,
    pairs: Sequence[PreferencePair],
    steps: int,
    lr: float,
    beta: float,
    *,
    batch_size: int = 32,
    seed: int = 0,
    nll_weight: float = 0.0,
) -> dict[str, list[float]]:
    """Train `policy` with `dpo_loss` on `pairs`; `reference` stays frozen.

    `nll_weight` adds that multiple of the chosen responses' negative log-likelihood per token
    (`sft_loss` on them), as Pang et al. (2024) do, which keeps the preferred responses'
    probability from falling with the rejected ones'.

    The reference's log-probabilities are computed once. AdamW, a short warm-up, then a
    constant rate. Returns per step "loss", "accuracy" (the share of the batch's pairs whose
    implicit reward beta * (log pi - log ref) is higher for the chosen response) and
    "margin" (the mean difference of the two rewards).

    Book: 6.11 Preference optimisation.
    """
    if not isinstance(steps, int) or steps < 1 or not lr > 0:
        raise ValueError(f"need steps >= 1 and lr > 0, got steps={steps!r}, lr={lr!r}")
    device = next(policy.parameters()).device
    with torch.no_grad():
        reference.eval()
        ref_chosen, ref_rejected = pair_logprobs(reference, tokenizer, pairs)  # (N,), (N,)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    warmup = max(1, steps // 10)
    history: dict[str, list[float]] = {"loss": [], "accuracy": [], "margin": []}
    policy.train()
    for step in range(steps):
        rows = torch.randint(len(pairs), (batch_size,), generator=generator)
        batch = [pairs[i] for i in rows]
        tokens, mask = _pair_batch(tokenizer, batch, "chosen", device)
        logits = policy(tokens)  # (b, T, V)
        chosen = sequence_logprob(logits, tokens, mask)  # (b,)
        tokens_r, mask_r = _pair_batch(tokenizer, batch, "rejected", device)
        rejected = sequence_logprob(policy(tokens_r), tokens_r, mask_r)  # (b,)
        rows = rows.to(device)
        loss = dpo_loss(chosen, rejected, ref_chosen[rows], ref_rejected[rows], beta)
        if nll_weight:
            loss = loss + nll_weight * sft_loss(logits, tokens, mask)
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            margin = beta * ((chosen - ref_chosen[rows]) - (rejected - ref_rejected[rows]))
        history["loss"].append(loss.item())
        history["accuracy"].append((margin > 0).float().mean().item())
        history["margin"].append(margin.mean().item())
    policy.eval()
    return history
