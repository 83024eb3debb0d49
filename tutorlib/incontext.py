"""In-context learning: few-shot prompts, a family of tasks to pretrain on, and the tools to
measure what a model learns from its prompt without changing a weight.

- `few_shot_prompt` writes k solved examples and a query as one string, 'x1>y1;x2>y2;q>';
- `draw_task`, `draw_examples` and `task_mixture_batch` generate the tasks: letter-to-letter
  maps on `ALPHABET`, either a fresh random substitution cipher (only the prompt can tell what
  it is) or one of the `len(ALPHABET) - 1` shifts of the alphabet (the prompt must tell which);
  a tenth of all ciphers, chosen by a checksum (`is_held_out`), is kept out of training;
- `greedy_answers`, `exact_match_accuracy` and `few_shot_accuracy` generate and score answers;
- `fine_tune` is the baseline that learns the same examples by gradient descent instead;
- `attention_weights` and `ablate_heads` look inside: the per-head attention maps of a
  `DecoderOnly`, and the model with chosen heads switched off.

Book: 6.8 In-context learning.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from tutorlib.attention import KVCache, record_attention_weights
from tutorlib.models import DecoderOnly
from tutorlib.training import fit, label_smoothed_cross_entropy

__all__ = [
    "ALPHABET",
    "ARROW",
    "FAMILIES",
    "HOLD_OUT_EVERY",
    "IGNORE",
    "SEPARATOR",
    "VOCAB",
    "ablate_heads",
    "attention_weights",
    "decode",
    "draw_examples",
    "draw_task",
    "encode",
    "exact_match_accuracy",
    "few_shot_accuracy",
    "few_shot_prompt",
    "fine_tune",
    "greedy_answers",
    "is_held_out",
    "task_mixture_batch",
]

ALPHABET = "abcdef"  # the letters every task maps to letters
ARROW, SEPARATOR = ">", ";"  # 'input>output', examples joined by ';'
VOCAB = ALPHABET + ARROW + SEPARATOR  # a character's token id is its index here
FAMILIES = ("cipher", "shift")
HOLD_OUT_EVERY = 10  # ciphers whose checksum divides by this are never drawn for training
IGNORE = -100  # the target of a position that is not scored (label_smoothed_cross_entropy's)


def few_shot_prompt(
    examples: Sequence[tuple[str, str]], query: str, *, arrow: str = ">", separator: str = ";"
) -> str:
    """The few-shot prompt 'x1>y1;x2>y2;...;q>': every example written input, arrow, output,
    the examples joined by the separator, then the query and the arrow, which asks for its
    output. With no examples the prompt is `query + arrow` (zero-shot).

    Raises TypeError if an example is not a pair (tuple or list) of two str, or the query, the
    arrow or the separator is not a str; ValueError if the arrow or the separator is empty, if
    they are equal, or if an input, an output or the query contains either of them (the model
    could not tell where an input ends or where an example ends).

    Shapes:
        k pairs of str, a str  ->  a str

    Book: 6.8 In-context learning.
    """
    pairs = []
    for example in examples:
        if not isinstance(example, tuple | list) or len(example) != 2:
            raise TypeError(f"each example must be a pair (input, output), got {example!r}")
        if not all(isinstance(part, str) for part in example):
            raise TypeError(f"an example's input and output must be str, got {example!r}")
        pairs.append((example[0], example[1]))
    for name, value in (("query", query), ("arrow", arrow), ("separator", separator)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not arrow or not separator or arrow == separator:
        raise ValueError(
            f"arrow and separator must be non-empty and different, got {arrow!r} and {separator!r}"
        )
    for text in [*(part for pair in pairs for part in pair), query]:
        if arrow in text or separator in text:
            raise ValueError(
                f"{text!r} contains the arrow {arrow!r} or the separator {separator!r}: the "
                "prompt would be ambiguous"
            )
    lines = [f"{x}{arrow}{y}" for x, y in pairs]
    return "".join(line + separator for line in lines) + query + arrow


def encode(text: str) -> Tensor:
    """The token ids of `text`, one per character of `VOCAB`.

    Shapes:
        a str of T characters  ->  (T,) int64

    Book: 6.8 In-context learning.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    unknown = sorted(set(text) - set(VOCAB))
    if unknown:
        raise ValueError(f"characters {unknown} are not in the vocabulary {VOCAB!r}")
    return torch.tensor([VOCAB.index(c) for c in text], dtype=torch.long)


def decode(ids: Tensor | Sequence[int]) -> str:
    """The text of token ids: the inverse of `encode`.

    Shapes:
        (T,) ids  ->  a str of T characters

    Book: 6.8 In-context learning.
    """
    ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    if any(not 0 <= i < len(VOCAB) for i in ids):
        raise ValueError(f"ids must lie in [0, {len(VOCAB)}), got {ids}")
    return "".join(VOCAB[i] for i in ids)


def _checksum(maps: Tensor) -> Tensor:
    """Each map read as a number in base A, modulo HOLD_OUT_EVERY: (..., A) -> (...)."""
    A = len(ALPHABET)
    digits = A ** torch.arange(A, device=maps.device)  # (A,): 1, A, A^2, ...
    return (maps * digits).sum(-1) % HOLD_OUT_EVERY


def _check_task(task: dict[str, str]) -> None:
    if (
        not isinstance(task, dict)
        or sorted(task) != list(ALPHABET)
        or any(task[c] not in ALPHABET or len(task[c]) != 1 for c in ALPHABET)
    ):
        raise ValueError(f"task must map every letter of {ALPHABET!r} to a letter, got {task!r}")


def is_held_out(task: dict[str, str]) -> bool:
    """Whether a cipher is one of the tenth kept out of training: its images, read as a number
    in base len(ALPHABET), divide by HOLD_OUT_EVERY. A few examples show a few images and say
    next to nothing about that number, so to the model the held-out ciphers look like the rest.

    Shapes:
        a dict of len(ALPHABET) letters  ->  a bool

    Book: 6.8 In-context learning.
    """
    _check_task(task)
    images = torch.tensor([ALPHABET.index(task[c]) for c in ALPHABET])  # (A,)
    return bool(_checksum(images) == 0)


def _shift(s: int) -> dict[str, str]:
    A = len(ALPHABET)
    return {c: ALPHABET[(i + s) % A] for i, c in enumerate(ALPHABET)}


def draw_task(
    family: str, generator: torch.Generator | None = None, *, held_out: bool = True
) -> dict[str, str]:
    """A task of `family` as a dict letter -> letter.

    "cipher": every letter's image drawn uniformly and independently (a random map, not
    necessarily a permutation, so the images of the letters seen say nothing about the
    others); with `held_out` (the default) one of the ciphers training never draws, else one
    of those it does. "shift": the letters moved s places along the alphabet, wrapping around,
    s drawn from 1 .. len(ALPHABET) - 1: a handful of tasks, all of them in training.

    Shapes:
        a family name  ->  a dict of len(ALPHABET) letters

    Book: 6.8 In-context learning.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    A = len(ALPHABET)
    if family == "shift":
        return _shift(int(torch.randint(1, A, (), generator=generator)))
    while True:
        images = torch.randint(0, A, (A,), generator=generator)  # (A,)
        if bool(_checksum(images) == 0) == held_out:
            return {c: ALPHABET[int(i)] for c, i in zip(ALPHABET, images, strict=True)}


def draw_examples(
    task: dict[str, str], k: int, generator: torch.Generator | None = None
) -> list[tuple[str, str]]:
    """k solved examples (x, task[x]) of `task`, the inputs x drawn uniformly with replacement.

    Shapes:
        a task, k  ->  k pairs of one-letter str

    Book: 6.8 In-context learning.
    """
    _check_task(task)
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    inputs = torch.randint(0, len(ALPHABET), (k,), generator=generator)  # (k,)
    return [(ALPHABET[int(i)], task[ALPHABET[int(i)]]) for i in inputs]


def task_mixture_batch(
    batch_size: int,
    n_examples: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    cipher_share: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """Pretraining data: each row the prompt 'x1>y1;x2>y2;...;xn>yn;' of one task of its own,
    a training cipher (share `cipher_share`) or a shift, shifted by one position into inputs
    and targets. Only the outputs y_i and the separators after them are scored; every other
    target is IGNORE (the inputs x_i are random, the arrows are given).

    The i-th output is predicted from a prompt with i - 1 examples before it: one row trains
    every k from 0 to n - 1 at once.

    Shapes:
        returns inputs (B, 4n - 1) and targets (B, 4n - 1), int64

    Book: 6.8 In-context learning.
    """
    for name, value in (("batch_size", batch_size), ("n_examples", n_examples)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not 0.0 <= cipher_share <= 1.0:
        raise ValueError(f"cipher_share must lie in [0, 1], got {cipher_share}")
    A, B, n = len(ALPHABET), batch_size, n_examples
    is_cipher = torch.rand(B, generator=generator) < cipher_share  # (B,)
    ciphers = torch.randint(0, A, (B, A), generator=generator)  # (B, A): images of each letter
    while (reserved := _checksum(ciphers) == 0).any():  # redraw the held-out ones
        ciphers[reserved] = torch.randint(0, A, (int(reserved.sum()), A), generator=generator)
    s = torch.randint(1, A, (B, 1), generator=generator)  # (B, 1)
    shifts = (torch.arange(A) + s) % A  # (B, A)
    maps = torch.where(is_cipher[:, None], ciphers, shifts)  # (B, A)
    x = torch.randint(0, A, (B, n), generator=generator)  # (B, n)
    y = maps.gather(1, x)  # (B, n)
    arrow = torch.full_like(x, VOCAB.index(ARROW))
    separator = torch.full_like(x, VOCAB.index(SEPARATOR))
    rows = torch.stack([x, arrow, y, separator], dim=2).reshape(B, 4 * n)  # (B, 4n)
    inputs, targets = rows[:, :-1], rows[:, 1:].clone()  # (B, 4n - 1) each
    scored = torch.zeros(4 * n - 1, dtype=torch.bool)
    scored[1::4] = True  # targets y_i: inputs are the arrows, positions 1, 5, 9, ...
    scored[2::4] = True  # targets: the separator after each output
    targets[:, ~scored] = IGNORE
    return inputs.to(device), targets.to(device)


@torch.no_grad()
def greedy_answers(model: DecoderOnly, prompts: Sequence[str], max_length: int = 4) -> list[str]:
    """The model's answer to each prompt: the characters it generates greedily (the most likely
    next token each time) up to the separator, which is left out, or `max_length` characters,
    or the end of its context.

    Prompts of the same length run as one batch with a KV cache: the prefill, then one token
    per step.

    Shapes:
        B prompts of T_b characters  ->  B answers of at most max_length characters

    Book: 6.8 In-context learning.
    """
    if not isinstance(model, DecoderOnly):
        raise TypeError(f"model must be a DecoderOnly, got {type(model).__name__}")
    if not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be an int >= 1, got {max_length!r}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    context, stop = model.config.context_length, VOCAB.index(SEPARATOR)
    groups: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not 0 < len(prompt) < context:
            raise ValueError(f"prompt {i} must be a str of 1 to {context - 1} characters")
        groups.setdefault(len(prompt), []).append(i)
    answers = [""] * len(prompts)
    for length, rows in groups.items():
        tokens = torch.stack([encode(prompts[i]) for i in rows]).to(device)  # (G, T)
        cache = KVCache()
        logits = model(tokens, cache=cache)  # (G, T, V)
        generated, finished = [], torch.zeros(len(rows), dtype=torch.bool, device=device)
        n_new = min(max_length + 1, context - length)  # the answer, then the separator
        for step in range(n_new):
            next_id = logits[:, -1].argmax(dim=-1)  # (G,)
            generated.append(next_id)
            finished |= next_id == stop
            if finished.all() or step + 1 == n_new:
                break
            logits = model(next_id[:, None], cache=cache)  # (G, 1, V): one more position
        for row, ids in zip(rows, torch.stack(generated, 1).tolist(), strict=True):
            ids = ids[: ids.index(stop)] if stop in ids else ids
            answers[row] = decode(ids[:max_length])
    model.train(was_training)
    return answers


def exact_match_accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """The share of predictions equal to their answer, character for character.

    Shapes:
        N str, N str  ->  a float in [0, 1]

    Book: 6.8 In-context learning.
    """
    if len(predictions) != len(answers) or not answers:
        raise ValueError(
            f"need as many predictions as answers, and at least one: got {len(predictions)} "
            f"and {len(answers)}"
        )
    for text in [*predictions, *answers]:
        if not isinstance(text, str):
            raise TypeError(f"predictions and answers must be str, got {type(text).__name__}")
    return sum(p == a for p, a in zip(predictions, answers, strict=True)) / len(answers)


def few_shot_accuracy(
    model: DecoderOnly,
    tasks: Sequence[dict[str, str]],
    examples: Sequence[Sequence[tuple[str, str]]],
    *,
    in_prompt: bool = True,
) -> dict[str, float]:
    """Exact-match accuracy on every letter of the alphabet as the query, for each task: over
    all queries ("all"), over those that are one of the task's examples' inputs ("in_context":
    the answer can be read off the examples) and over the others ("not_in_context"; NaN if
    there are none), with the number of queries of each (the keys that start with ``n_``).

    With `in_prompt` (the default) the examples are the prompt (few-shot); without, the prompt
    is the query alone (zero-shot) and `examples` only sorts the queries: pass those the model
    was fine-tuned on.

    Shapes:
        N tasks, N lists of k examples  ->  accuracies over N * len(ALPHABET) queries

    Book: 6.8 In-context learning.
    """
    if len(tasks) != len(examples) or not tasks:
        raise ValueError(
            f"need one list of examples per task, got {len(tasks)} and {len(examples)}"
        )
    prompts, truths, seen = [], [], []
    for task, shots in zip(tasks, examples, strict=True):
        inputs = {x for x, _ in shots}
        for q in ALPHABET:
            prompts.append(few_shot_prompt(shots if in_prompt else [], q))
            truths.append(task[q])
            seen.append(q in inputs)
    right = [p == t for p, t in zip(greedy_answers(model, prompts), truths, strict=True)]
    result = {"all": sum(right) / len(right), "n_all": len(right)}
    for name, keep in (("in_context", True), ("not_in_context", False)):
        hits = [r for r, s in zip(right, seen, strict=True) if s == keep]
        result[name] = sum(hits) / len(hits) if hits else float("nan")
        result[f"n_{name}"] = len(hits)
    return result


def fine_tune(
    model: DecoderOnly, examples: Sequence[tuple[str, str]], steps: int = 30, lr: float = 3e-3
) -> DecoderOnly:
    """A copy of `model` trained by gradient descent on the examples alone, each its own
    zero-shot prompt 'x>y;' (AdamW on the whole batch every step, the output and the separator
    scored, as in `task_mixture_batch`): the baseline that learns from the same examples as a
    few-shot prompt, in its weights instead of its context. `model` is left unchanged.

    Shapes:
        k pairs of str (all 'x>y' of one length)  ->  a DecoderOnly

    Book: 6.8 In-context learning.
    """
    if not examples:
        raise ValueError("fine-tuning needs at least one example")
    rows = [encode(few_shot_prompt([], x) + y + SEPARATOR) for x, y in examples]  # (T,) each
    if len({len(r) for r in rows}) != 1:
        raise ValueError("every example must have the same input length and output length")
    device = next(model.parameters()).device
    tokens = torch.stack(rows).to(device)  # (k, T)
    n_in = len(examples[0][0]) + len(ARROW)  # characters before the output
    inputs, targets = tokens[:, :-1], tokens[:, 1:].clone()  # (k, T - 1) each
    targets[:, : n_in - 1] = IGNORE  # score the output and the separator only
    tuned = copy.deepcopy(model)
    fit(
        tuned,
        lambda: (inputs, targets),
        steps,
        lr,
        loss_fn=label_smoothed_cross_entropy,
        progress=False,
    )
    return tuned.eval()


def _check_decoder(model: nn.Module) -> None:
    if not isinstance(model, DecoderOnly):
        raise TypeError(f"model must be a DecoderOnly, got {type(model).__name__}")


@torch.no_grad()
def attention_weights(model: DecoderOnly, tokens: Tensor) -> list[Tensor]:
    """Every layer's attention weights, per head, for `tokens`: row t of head h is where
    position t reads from. Forward hooks ask each layer's attention for its weights
    (`need_weights=True`) while the model runs as usual, and are removed afterwards.

    Shapes:
        tokens (B, T)  ->  n_layers tensors (B, H, T, T), each row summing to 1

    Book: 6.8 In-context learning.
    """
    _check_decoder(model)
    layers = [layer.self_attn for layer in model.decoder.layers]
    return record_attention_weights(layers, lambda: model(tokens))


@contextmanager
def ablate_heads(model: DecoderOnly, heads: Iterable[tuple[int, int]]) -> Iterator[DecoderOnly]:
    """Inside the `with` block, the heads (layer, head) of `model` write nothing: their part
    of the attention output is set to zero before the output projection W^O mixes the heads.
    The weights are not touched; the hooks that do it are removed on leaving the block.

    Shapes:
        model, pairs of ints (0-based)  ->  the same model, heads switched off

    Book: 6.8 In-context learning.
    """
    _check_decoder(model)
    n_layers, H = model.config.n_layers, model.config.n_heads
    D = model.config.head_dim
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        if not (0 <= layer < n_layers and 0 <= head < H):
            raise ValueError(
                f"(layer, head) must lie in [0, {n_layers}) x [0, {H}), got {(layer, head)}"
            )
        by_layer.setdefault(layer, []).append(head)

    def silencer(off: list[int]):
        keep = torch.ones(H, D)
        keep[off] = 0.0

        def hook(module: nn.Module, args: tuple) -> tuple:
            x = args[0]  # (B, T, C): the heads' outputs side by side, before W^O
            return (x * keep.to(x).reshape(-1),)  # (B, T, H * D)

        return hook

    handles = [
        model.decoder.layers[layer].self_attn.out_proj.register_forward_pre_hook(silencer(off))
        for layer, off in by_layer.items()
    ]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
