"""Generation from a decoder-only language model: the training objective and the samplers.

A GPT is trained to predict token t + 1 from tokens 0..t (`causal_lm_loss`). At generation
time the model gives, at each step, logits over the vocabulary for the next token; a *sampler*
turns them into one token. All samplers here work on logits of shape (B, V):

- `apply_temperature` divides the logits by T: T < 1 sharpens the distribution, T > 1
  flattens it, and T -> 0 tends to greedy decoding (`sample_next` treats T = 0 as greedy);
- `top_k_filter` keeps the k largest logits (Fan et al., 2018);
- `top_p_filter` keeps the smallest set of tokens whose probabilities add up to at least p
  (nucleus sampling, Holtzman et al., 2020);
- `apply_repetition_penalty` makes tokens already written less likely (Keskar et al., 2019).

`sample` runs the loop with the KV cache of Chapter 4; `decoder_only_step` lets the beam search
of Chapter 3 run on a decoder-only model. `distinct_n` and `sequence_perplexity` measure the
diversity and the model's own view of the quality of what was generated.

`docstring_gpt` is the chapter's GPT: a character-level model of the standard library's
docstrings (`char_lm_data`), trained once with the recipe written out in `train_docstring_gpt`
and kept on disk next to the corpus cache, so that every page of the chapter can use it.
`docstring_bpe_gpt` is the same model trained on the tokens of Chapter 3's BPE tokenizer
(`bpe_lm_data`, split at the same character), for the same training FLOPs; `bits_per_character`
scores either on the same held-out text, in one unit.

Book: 6.1 A GPT on the standard library; 6.2 Sampling.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from tutorlib.corpus import cache_file, corpus_text
from tutorlib.decoding import StepFn
from tutorlib.inference import KVCache, check_generation_inputs, decode_step
from tutorlib.models import DecoderOnly, TransformerConfig
from tutorlib.tokenizers import CHAR_SPECIAL_TOKENS, BPETokenizer, CharTokenizer
from tutorlib.training import cosine_schedule, fit, sequence_cross_entropy

__all__ = [
    "BPE_TRAINING",
    "BPE_VOCAB_SIZE",
    "GPT_CONFIG",
    "GPT_TRAINING",
    "BPELMData",
    "CharLMData",
    "apply_repetition_penalty",
    "apply_temperature",
    "bits_per_character",
    "bpe_lm_data",
    "causal_lm_loss",
    "char_lm_data",
    "decoder_only_step",
    "docstring_bpe_gpt",
    "docstring_gpt",
    "distinct_n",
    "perplexity",
    "sample",
    "sample_next",
    "sequence_perplexity",
    "top_k_filter",
    "top_p_filter",
    "train_docstring_gpt",
    "window_batches",
]


def _check_logits(logits: Tensor) -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError("logits: expected a float tensor of shape (batch, vocab_size)")


# --- The objective ------------------------------------------------------------------------------


def causal_lm_loss(logits: Tensor, tokens: Tensor, ignore_index: int | None = None) -> Tensor:
    """Mean cross-entropy of predicting each next token: logits at t against tokens at t + 1.

    The last position has no next token and the first token is never a target, so T positions
    give T - 1 predictions. Targets equal to `ignore_index` (e.g. padding) are left out.

    Shapes:
        logits (B, T, V), tokens (B, T) int64  ->  scalar

    Book: 6.1 A GPT on the standard library.
    """
    if not isinstance(logits, Tensor) or logits.dim() != 3:
        raise ValueError("logits: expected shape (batch, time, vocab_size)")
    if not isinstance(tokens, Tensor) or tokens.dtype != torch.long:
        raise ValueError("tokens: expected int64 token ids of shape (batch, time)")
    if tokens.shape != logits.shape[:2]:
        raise ValueError(
            f"tokens {tuple(tokens.shape)} must match the logits' (batch, time) "
            f"{tuple(logits.shape[:2])}"
        )
    if tokens.shape[1] < 2:
        raise ValueError("need at least 2 tokens per sequence: one to read, one to predict")
    V = logits.shape[-1]
    predictions = logits[:, :-1].reshape(-1, V)  # (B*(T-1), V): positions 0..T-2
    targets = tokens[:, 1:].reshape(-1)  # (B*(T-1),): tokens 1..T-1
    if ignore_index is None:
        return F.cross_entropy(predictions, targets)
    return F.cross_entropy(predictions, targets, ignore_index=ignore_index)


def perplexity(loss: float | Tensor) -> float:
    """exp(mean cross-entropy in nats): the effective number of tokens the model hesitates over.

    Book: 6.1 A GPT on the standard library.
    """
    return math.exp(float(loss))


# --- Samplers ----------------------------------------------------------------------------------


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """logits / temperature: the softmax of the result is proportional to probs ** (1 / tau).

    It acts on the logits, before the softmax; dividing the probabilities by tau would change
    nothing once they are renormalised.

    Shapes:
        logits (B, V)  ->  (B, V)

    Book: 6.2 Sampling.
    """
    _check_logits(logits)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 here, got {temperature!r} (0 means greedy)")
    return logits / temperature


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row; set the others to -inf.

    Ties at the k-th value are broken by `torch.topk`, so exactly k entries stay finite.

    Shapes:
        logits (B, V)  ->  (B, V)

    Book: 6.2 Sampling.
    """
    _check_logits(logits)
    V = logits.shape[-1]
    if not isinstance(k, int) or not 1 <= k <= V:
        raise ValueError(f"k must be an int in [1, vocab_size={V}], got {k!r}")
    index = logits.topk(k, dim=-1).indices  # (B, k)
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, index, True)
    return logits.masked_fill(~keep, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering: keep the smallest set of most probable tokens whose probabilities sum
    to at least p; set the others to -inf. The most probable token is always kept.

    Sorted by probability, a token is kept when the mass *before* it is still below p: the
    token that crosses p is in, the next one is out.

    Shapes:
        logits (B, V)  ->  (B, V)

    Book: 6.2 Sampling.
    """
    _check_logits(logits)
    if not 0.0 < p <= 1.0:
        raise ValueError(f"p must be in (0, 1], got {p!r}")
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # (B, V): mass of the tokens ranked above
    keep_sorted = mass_before < p
    keep_sorted[:, 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return logits.masked_fill(~keep, float("-inf"))


def apply_repetition_penalty(logits: Tensor, previous: Tensor, penalty: float) -> Tensor:
    """Make every token that already occurs in `previous` less likely (Keskar et al., 2019):
    its logit is divided by `penalty` when positive and multiplied by it when negative.

    penalty = 1 changes nothing; 1.1 to 1.5 is the usual range.

    Shapes:
        logits (B, V), previous (B, t) int64  ->  (B, V)

    Book: 6.2 Sampling.
    """
    _check_logits(logits)
    if not isinstance(previous, Tensor) or previous.dtype != torch.long or previous.dim() != 2:
        raise ValueError("previous: expected int64 token ids of shape (batch, t)")
    if previous.shape[0] != logits.shape[0]:
        raise ValueError(f"previous has {previous.shape[0]} rows, logits {logits.shape[0]}")
    if not penalty >= 1.0:
        raise ValueError(f"penalty must be >= 1, got {penalty!r}")
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, previous, True)
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one token per row: temperature, then top-k, then top-p, then a multinomial draw.

    temperature = 0 is greedy decoding (the arg max), whatever top_k and top_p say.

    Shapes:
        logits (B, V)  ->  (B,) int64

    Book: 6.2 Sampling.
    """
    _check_logits(logits)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.float().softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


@torch.no_grad()
def sample(
    model: DecoderOnly,
    prompt: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Tensor:
    """Generate `max_new_tokens` tokens after `prompt`, one `sample_next` draw per step.

    With `use_cache` each step feeds the model only the newest token and reuses the keys and
    values of the others (Chapter 4's KV cache). Once the text is longer than the model's
    context_length, each step reads the last context_length tokens (a sliding window, which
    learned positions cannot cache). The model is put in eval mode for the call and
    given back in the mode it came in. For repeatable draws pass a seeded `generator` (on the
    model's device).

    Shapes:
        prompt (B, t0) int64, t0 <= context_length  ->  (B, t0 + max_new_tokens)

    Book: 6.2 Sampling.
    """
    check_generation_inputs(model, prompt, max_new_tokens)
    T_max = model.config.context_length
    if prompt.shape[1] > T_max:
        raise ValueError(f"prompt of {prompt.shape[1]} tokens exceeds context_length {T_max}")
    was_training = model.training
    model.eval()
    try:
        tokens, cache, new = prompt, KVCache(), prompt
        for _ in range(max_new_tokens):
            if use_cache and tokens.shape[1] <= T_max:
                logits = decode_step(model, new, cache)[:, -1]  # (B, V)
            else:  # past context_length: the last T_max tokens, a sliding window
                logits = model(tokens[:, -T_max:])[:, -1]  # (B, V)
            if repetition_penalty != 1.0:
                logits = apply_repetition_penalty(logits, tokens, repetition_penalty)
            new = sample_next(logits, temperature, top_k, top_p, generator).unsqueeze(1)
            tokens = torch.cat([tokens, new], dim=1)  # (B, t + 1)
    finally:
        model.train(was_training)
    return tokens


def decoder_only_step(model: DecoderOnly) -> StepFn:
    """The `step` function of `tutorlib.decoding.beam_search` for a decoder-only model.

    Each hypothesis is its own sequence (prompt and continuation), so `rows` is not needed.

    Shapes:
        step(tokens (N, t) int64, rows (N,))  ->  log-probabilities (N, V)

    Book: 6.2 Sampling.
    """

    def step(tokens: Tensor, rows: Tensor) -> Tensor:
        return model(tokens)[:, -1].log_softmax(dim=-1)  # (N, V)

    return step


# --- Measuring what was generated ---------------------------------------------------------------


def distinct_n(sequences: Sequence[Sequence], n: int) -> float:
    """Distinct n-grams over all n-grams in `sequences` (Li et al., 2016): 1.0 when no n-gram
    repeats, near 0 when the same phrase comes back again and again. Sequences may be strings
    (n-grams of characters) or lists of token ids.

    Book: 6.2 Sampling.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    grams = [tuple(s[i : i + n]) for s in sequences for i in range(len(s) - n + 1)]
    if not grams:
        raise ValueError(f"no sequence has {n} or more tokens")
    return len(set(grams)) / len(grams)


@torch.no_grad()
def sequence_perplexity(model: DecoderOnly, tokens: Tensor, start: int = 1) -> Tensor:
    """The model's perplexity of each sequence, counting the predictions of tokens start..T-1
    (e.g. start = prompt length: only the generated part is scored).

    Shapes:
        tokens (B, T) int64  ->  (B,)

    Book: 6.2 Sampling.
    """
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype != torch.long:
        raise ValueError("tokens: expected int64 token ids of shape (batch, time)")
    if not 1 <= start < tokens.shape[1]:
        raise ValueError(f"start must be in [1, {tokens.shape[1] - 1}], got {start}")
    was_training = model.training
    model.eval()
    try:
        log_probs = model(tokens)[:, :-1].log_softmax(dim=-1)  # (B, T-1, V)
    finally:
        model.train(was_training)
    token_log_probs = log_probs.gather(-1, tokens[:, 1:, None]).squeeze(-1)  # (B, T-1)
    return (-token_log_probs[:, start - 1 :].mean(dim=1)).exp()  # (B,)


# --- The chapter's GPT: data ---------------------------------------------------------------------


@dataclass(frozen=True)
class CharLMData:
    """The docstring corpus as one stream of character ids, split into train and validation."""

    tokenizer: CharTokenizer
    train_ids: Tensor  # (N_train,) int64
    val_ids: Tensor  # (N_val,) int64

    @property
    def val_chars(self) -> int:
        """Characters of held-out text: one per id."""
        return len(self.val_ids)


@dataclass(frozen=True)
class BPELMData:
    """The same corpus and the same split as `CharLMData`, in the ids of a byte-level BPE
    tokenizer trained on the training part only."""

    tokenizer: BPETokenizer
    train_ids: Tensor  # (N_train,) int64
    val_ids: Tensor  # (N_val,) int64
    val_chars: int  # characters of held-out text: the text of CharLMData's val_ids


def _split_corpus(val_fraction: float) -> tuple[str, str]:
    """`corpus_text()` cut at one character: the first 1 - val_fraction is for training."""
    if not isinstance(val_fraction, float | int) or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    text = corpus_text()
    split = int((1 - val_fraction) * len(text))
    return text[:split], text[split:]


def char_lm_data(val_fraction: float = 0.1) -> CharLMData:
    """`corpus_text()` read character by character; the last `val_fraction` is held out.

    Shapes:
        returns train_ids (N_train,) and val_ids (N_val,) int64, N_train + N_val characters

    Book: 6.1 A GPT on the standard library.
    """
    train_text, val_text = _split_corpus(val_fraction)
    tokenizer = CharTokenizer.from_text(train_text + val_text)
    return CharLMData(
        tokenizer,
        torch.tensor(tokenizer.encode(train_text)),
        torch.tensor(tokenizer.encode(val_text)),
    )


@functools.lru_cache(maxsize=4)
def _trained_bpe(train_text: str, vocab_size: int) -> BPETokenizer:
    """`BPETokenizer.train`, remembered in this process (about a second for 2,048 tokens).
    It is not kept on disk: training it again costs less than a model's first steps."""
    return BPETokenizer.train(train_text, vocab_size, special_tokens=CHAR_SPECIAL_TOKENS)


def bpe_lm_data(vocab_size: int, val_fraction: float = 0.1) -> BPELMData:
    """`corpus_text()` in byte-level BPE tokens, split at the same character as `char_lm_data`,
    so that both models are scored on exactly the same held-out text.

    The tokenizer (`BPETokenizer.train`, page 3.6) learns its merges from the training
    part only; the special tokens are the character model's three (<pad>, <bos>, <eos>), so
    `vocab_size` = 256 bytes + merges + 3. The two parts are encoded separately, so that
    `tokenizer.decode(val_ids)` is the held-out text exactly.

    Shapes:
        returns train_ids (N_train,) and val_ids (N_val,) int64, and val_chars, an int

    Book: 6.1 A GPT on the standard library (Characters or subwords?).
    """
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    smallest = 256 + len(CHAR_SPECIAL_TOKENS)
    if vocab_size < smallest:
        raise ValueError(
            f"vocab_size must be at least 256 bytes + {len(CHAR_SPECIAL_TOKENS)} special tokens "
            f"= {smallest}, got {vocab_size}"
        )
    train_text, val_text = _split_corpus(val_fraction)
    tokenizer = _trained_bpe(train_text, vocab_size)
    return BPELMData(
        tokenizer,
        torch.tensor(tokenizer.encode(train_text)),
        torch.tensor(tokenizer.encode(val_text)),
        len(val_text),
    )


def window_batches(
    ids: Tensor, batch_size: int, block_size: int, seed: int = 0, device: str | None = None
) -> Callable[[], tuple[Tensor, Tensor]]:
    """A `make_batch` for `fit`: random windows of block_size + 1 ids, split into inputs and
    the same windows shifted by one (the targets), from a seeded generator.

    Shapes:
        ids (N,) int64  ->  make_batch() -> inputs (B, T), targets (B, T)

    Book: 6.1 A GPT on the standard library.
    """
    if not isinstance(ids, Tensor) or ids.dim() != 1 or ids.dtype != torch.long:
        raise ValueError("ids: expected a 1-D int64 tensor of token ids")
    if len(ids) <= block_size + 1:
        raise ValueError(f"need more than block_size + 1 = {block_size + 1} ids, got {len(ids)}")
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.arange(block_size + 1)

    def make_batch() -> tuple[Tensor, Tensor]:
        starts = torch.randint(0, len(ids) - block_size, (batch_size, 1), generator=generator)
        windows = ids[starts + offsets]  # (B, T + 1)
        return windows[:, :-1].to(device), windows[:, 1:].to(device)

    return make_batch


# --- Bits per character --------------------------------------------------------------------------


def _check_id_stream(ids: object, name: str) -> None:
    if not isinstance(ids, Tensor) or ids.dim() != 1 or ids.dtype != torch.long:
        got = f"{ids.dtype} {tuple(ids.shape)}" if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"{name}: expected a 1-D int64 tensor of token ids, got {got}")


@torch.no_grad()
def bits_per_character(
    model: DecoderOnly,
    ids: Tensor,
    n_chars: int,
    context: Tensor | None = None,
    stride: int | None = None,
    batch_size: int = 64,
) -> float:
    """The model's cross-entropy on a text, in bits per character: the nats of every predicted
    token added up, divided by the number of characters and by ln 2.

    Per token, a model whose tokens hold 3 characters pays for 3 characters at each
    prediction; per character, it is on the same scale as a character model. Both are
    scored the same way: every id of `ids` is predicted exactly once, by windows of
    context_length + 1 ids placed every `stride` ids. With the default stride,
    context_length, consecutive windows share one id and a prediction reads 1 to
    context_length ids, as in training. A smaller stride scores only each window's last
    `stride` targets, so that every prediction reads at least context_length - stride + 1
    ids (at context_length / stride times the cost).

    `context` holds the ids just before `ids` (e.g. `data.train_ids`): read, never scored, so
    that ids[0] is predicted too and `n_chars` is the length of the text of `ids`. Without it,
    ids[0] is only read, and `n_chars` should count the characters of ids[1:].

    Shapes:
        ids (N,) int64, context (M,) int64  ->  float

    Book: 6.1 A GPT on the standard library (Characters or subwords?).
    """
    _check_id_stream(ids, "ids")
    if context is not None:
        _check_id_stream(context, "context")
        if len(context) == 0:
            raise ValueError("context is empty: pass None when nothing comes before ids")
    if not isinstance(n_chars, int) or isinstance(n_chars, bool) or n_chars < 1:
        raise ValueError(f"n_chars must be an int >= 1, got {n_chars!r}")
    T = model.config.context_length
    stride = T if stride is None else stride
    if not isinstance(stride, int) or isinstance(stride, bool) or not 1 <= stride <= T:
        raise ValueError(f"stride must be an int in [1, context_length={T}], got {stride!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    device = next(model.parameters()).device
    prefix = context[max(0, len(context) - T) :] if context is not None else ids[:0]
    first = max(len(prefix), 1)  # position in `stream` of the first scored target
    stream = torch.cat([prefix.to(device), ids.to(device)])  # (N,)
    N = len(stream)
    if N <= first:
        raise ValueError("nothing to score: ids needs at least 2 ids, or 1 after a context")
    width = min(T, N - 1)  # the inputs of one window
    stride = min(stride, width)
    ends = [*range(first - 1 + stride, N - 1, stride), N - 1]  # each window's last target
    starts = torch.tensor([max(0, end - width) for end in ends], device=device)
    last = torch.tensor(ends, device=device)
    before = torch.cat([last.new_tensor([first - 1]), last[:-1]])  # scored up to there already
    offsets = torch.arange(width + 1, device=device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(ends), batch_size):
            rows = slice(i, i + batch_size)
            windows = stream[starts[rows, None] + offsets]  # (b, width + 1)
            logits = model(windows[:, :-1])  # (b, width, V)
            nats = F.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none")
            target = starts[rows, None] + 1 + offsets[:-1]  # (b, width): positions predicted
            scored = (target > before[rows, None]) & (target <= last[rows, None])
            total += nats.double()[scored].sum()
    finally:
        model.train(was_training)
    return total.item() / n_chars / math.log(2)


# --- The chapter's GPT: training and the cache ---------------------------------------------------


GPT_CONFIG = dict(
    d_model=128, n_heads=4, n_layers=3, d_ff=512, context_length=64, norm_first=True,
    positional="sinusoidal", activation="gelu", dropout=0.0,
)  # fmt: skip
"""The chapter's GPT: GPT-2's layout (pre-norm, GELU, final layer norm, output tied to the
embedding) at 0.6 million parameters with the character vocabulary, but with the fixed
sinusoidal positions of Vaswani et al. (2017) rather than GPT-2's learned ones. tutorlib's
token embedding is scaled by sqrt(d_model) to entries of order 1, and a learned table starts
at GPT-2's 0.02, fifty times smaller: with learned positions and GPT_TRAINING's recipe the
model stayed on a plateau for its first 500 steps and ended 1,750 steps at 2.57 bits per
character on the held-out text; with sinusoidal positions it ends 1,600 steps at 2.38."""
GPT_TRAINING = dict(steps=1600, batch_size=12, block_size=64, lr=3e-3, warmup_steps=100)
"""Its training: 1,600 steps of 12 windows of 64 characters (1.2 million tokens), a minute on
two CPU cores. Small batches and many steps: with learned positions, 800 steps of 32 windows
(the earlier recipe, about as long) ended at 2.71 bits per character, 1,750 of 12 at 2.57."""
BPE_VOCAB_SIZE = 2048
"""The BPE model's vocabulary: 256 bytes, 1,789 merges and 3 special tokens (see
`docstring_bpe_gpt` for how it was chosen)."""
BPE_TRAINING = dict(GPT_TRAINING, steps=1160)
"""The BPE model's training: GPT_TRAINING for fewer steps, which give it the character model's
training FLOPs (`tutorlib.scaling.training_flops`: 1,160 x 1.38 = 1,600 character steps) and,
measured on two CPU cores, a little less training time."""
_MONITOR_PIECES = 20  # held-out pieces scored in bits per character during training ...
_MONITOR_PIECE_CHARS = 1_000  # ... of this many characters, spread evenly over the text


def train_docstring_gpt(
    device: str | torch.device = "cpu",
    progress: bool = True,
    config: dict | None = None,
    data: CharLMData | BPELMData | None = None,
    **overrides: int | float,
) -> tuple[DecoderOnly, dict[str, list[float]]]:
    """Train the chapter's GPT on `data` (default `char_lm_data()`) with AdamW, warm-up and a
    cosine decay, evaluating it every 200 steps and after the last.

    `config` replaces entries of GPT_CONFIG (e.g. a larger model on a GPU) and `overrides`
    entries of GPT_TRAINING (e.g. steps=200 for a quick run); `data=bpe_lm_data(...)` trains
    the same model on BPE tokens. Returns the model (in eval mode) and `fit`'s history, with:
    "eval_val_loss", the loss in nats per token on 64 fixed held-out windows;
    "eval_val_bpc", `bits_per_character` on 20 pieces of 1,000 characters spread evenly over
    the held-out text (the same text for every tokenizer);
    "eval_seconds", the training time up to that evaluation, the evaluations left out;
    "seconds", the whole training time, the evaluations left out.

    Book: 6.1 A GPT on the standard library.
    """
    recipe = {**GPT_TRAINING, **overrides}
    unknown = set(recipe) - set(GPT_TRAINING)
    if unknown:
        raise ValueError(
            f"unknown training settings {sorted(unknown)}; known: {list(GPT_TRAINING)}"
        )
    data = char_lm_data() if data is None else data
    if not isinstance(data, CharLMData | BPELMData):
        raise TypeError(f"data must come from char_lm_data or bpe_lm_data, got {type(data)}")
    torch.manual_seed(0)
    architecture = {**GPT_CONFIG, **(config or {})}
    model = DecoderOnly(TransformerConfig(vocab_size=data.tokenizer.vocab_size, **architecture))
    model.to(device)
    val_inputs, val_targets = window_batches(
        data.val_ids, 64, int(recipe["block_size"]), seed=1, device=str(device)
    )()
    held_out = data.tokenizer.decode(data.val_ids)
    spacing = len(held_out) // _MONITOR_PIECES
    starts = [i * spacing for i in range(_MONITOR_PIECES)]
    pieces = [held_out[start : start + _MONITOR_PIECE_CHARS] for start in starts]
    monitor_ids = torch.tensor([i for piece in pieces for i in data.tokenizer.encode(piece)])
    monitor_chars = sum(len(piece) for piece in pieces)
    clock = {"start": time.perf_counter(), "evaluating": 0.0}

    def evaluate(model: DecoderOnly) -> dict[str, float]:
        entered = time.perf_counter()
        seconds = entered - clock["start"] - clock["evaluating"]
        results = {
            "val_loss": sequence_cross_entropy(model(val_inputs), val_targets).item(),
            "val_bpc": bits_per_character(
                model, monitor_ids, monitor_chars, context=data.train_ids
            ),
            "seconds": seconds,
        }
        clock["evaluating"] += time.perf_counter() - entered
        return results

    steps = int(recipe["steps"])
    history = fit(
        model,
        window_batches(
            data.train_ids, int(recipe["batch_size"]), int(recipe["block_size"]), 0, str(device)
        ),
        steps,
        float(recipe["lr"]),
        schedule=cosine_schedule(int(recipe["warmup_steps"]), steps, final=0.1),
        weight_decay=0.1,
        clip_norm=1.0,
        evaluate=evaluate,
        eval_every=200,
        desc="GPT" if isinstance(data, CharLMData) else "BPE GPT",
        progress=progress,
    )
    history["seconds"] = [history["eval_seconds"][-1]]
    return model.eval(), history


_GPT_SOURCES = (
    "attention", "corpus", "embeddings", "generation", "layers", "models", "tokenizers", "training"
)  # fmt: skip


def _gpt_cache_path(
    device: torch.device, name: str = "docstring_gpt", settings: object = None
) -> Path:
    """The cache file of a trained model `name`, keyed by the sources of the modules it is
    built and trained with, its `settings` (default: GPT_CONFIG and GPT_TRAINING), the corpus
    (Python's version and the module list), torch's version, the device type and the number
    of threads (which changes the trained numbers slightly)."""
    settings = (GPT_CONFIG, GPT_TRAINING) if settings is None else settings
    digest = hashlib.sha256()
    for module in _GPT_SOURCES:
        digest.update((Path(__file__).parent / f"{module}.py").read_bytes())
    digest.update(repr((settings, torch.__version__, cache_file().name)).encode())
    digest.update(f"{device.type}-{torch.get_num_threads()}".encode())
    return cache_file().parent / f"{name}-{digest.hexdigest()[:16]}.pt"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on path + ".lock": two processes asking for the model at once
    train it once; the second waits and loads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _cached_gpt(
    path: Path,
    device: torch.device,
    vocab_size: int,
    train: Callable[[], tuple[DecoderOnly, dict[str, list[float]]]],
) -> tuple[DecoderOnly, dict[str, list[float]]]:
    """Load the GPT_CONFIG model kept at `path`, or `train()` it and keep it there."""
    with _locked(path):
        if path.exists():
            state = torch.load(path, map_location=device, weights_only=True)
            model = DecoderOnly(TransformerConfig(vocab_size=vocab_size, **GPT_CONFIG)).to(device)
            model.load_state_dict(state["model"])
            return model.eval(), state["history"]
        model, history = train()
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
            torch.save({"model": model.state_dict(), "history": history}, f)
        os.replace(f.name, path)
    return model, history


def _pick_device(device: str | torch.device | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def docstring_gpt(
    device: str | torch.device | None = None, progress: bool = True
) -> tuple[DecoderOnly, CharTokenizer, dict[str, list[float]]]:
    """The chapter's trained GPT, its tokenizer and its training history.

    Trained by `train_docstring_gpt` the first time (a few minutes on a laptop CPU) and kept in
    the tutorlib cache folder (`$TUTORLIB_CACHE` or ~/.cache/tutorlib); later calls load it.

    Book: 6.1 A GPT on the standard library; 6.2 Sampling.
    """
    device = _pick_device(device)
    tokenizer = char_lm_data().tokenizer
    model, history = _cached_gpt(
        _gpt_cache_path(device),
        device,
        tokenizer.vocab_size,
        lambda: train_docstring_gpt(device, progress=progress),
    )
    return model, tokenizer, history


def docstring_bpe_gpt(
    device: str | torch.device | None = None, progress: bool = True
) -> tuple[DecoderOnly, BPETokenizer, dict[str, list[float]]]:
    """The chapter's GPT trained on BPE tokens, its tokenizer and its training history.

    The same model (GPT_CONFIG) and recipe as `docstring_gpt`, on `bpe_lm_data(BPE_VOCAB_SIZE)`
    for BPE_TRAINING's steps (the character model's training FLOPs), cached the same way.

    How the vocabulary size was chosen, on the held-out text (page 6.1 prints the table):
    characters per token 1.96, 2.54, 3.01 and 3.44 for 512, 1,024, 2,048 and 4,096 tokens;
    the tied embedding's share of the parameters 10, 18, 31 and 47 %; training FLOPs per
    character read (training_flops / characters per token) lowest at 2,048 and up again by
    13 % at 4,096. Trained with the character model's FLOPs, the four models reached 2.186,
    2.166, 2.124 and 2.102 bits per character, and a step of the 4,096-token model took 1.86
    times a character step on two cores against 1.78 times in FLOPs. 2,048 tokens give the
    least compute per character read; 4,096 would gain 0.02 bits with nearly half of the
    parameters in the embedding.

    Book: 6.1 A GPT on the standard library (Characters or subwords?).
    """
    device = _pick_device(device)
    data = bpe_lm_data(BPE_VOCAB_SIZE)
    path = _gpt_cache_path(device, "docstring_bpe_gpt", (GPT_CONFIG, BPE_TRAINING, BPE_VOCAB_SIZE))
    model, history = _cached_gpt(
        path,
        device,
        data.tokenizer.vocab_size,
        lambda: train_docstring_gpt(device, progress=progress, data=data, **BPE_TRAINING),
    )
    return model, data.tokenizer, history
