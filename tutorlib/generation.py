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

Book: 6.1 A GPT on the standard library; 6.2 Sampling.
"""

from __future__ import annotations

import contextlib
import fcntl
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
from tutorlib.tokenizers import CharTokenizer
from tutorlib.training import cosine_schedule, fit, sequence_cross_entropy

__all__ = [
    "GPT_CONFIG",
    "CharLMData",
    "apply_repetition_penalty",
    "apply_temperature",
    "causal_lm_loss",
    "char_lm_data",
    "decoder_only_step",
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
    """logits / temperature: the softmax of the result is proportional to probs ** (1 / T).

    It acts on the logits, before the softmax; dividing the probabilities by T would change
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


# --- The chapter's GPT -------------------------------------------------------------------------


@dataclass(frozen=True)
class CharLMData:
    """The docstring corpus as one stream of character ids, split into train and validation."""

    tokenizer: CharTokenizer
    train_ids: Tensor  # (N_train,) int64
    val_ids: Tensor  # (N_val,) int64


def char_lm_data(val_fraction: float = 0.1) -> CharLMData:
    """`corpus_text()` read character by character; the last `val_fraction` is held out.

    Book: 6.1 A GPT on the standard library.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    text = corpus_text()
    tokenizer = CharTokenizer.from_text(text)
    ids = torch.tensor(tokenizer.encode(text))
    split = int((1 - val_fraction) * len(ids))
    return CharLMData(tokenizer, ids[:split], ids[split:])


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


GPT_CONFIG = dict(
    d_model=128, n_heads=4, n_layers=3, d_ff=512, context_length=64, norm_first=True,
    positional="learned", activation="gelu", dropout=0.0,
)  # fmt: skip
"""The chapter's GPT: GPT-2's layout (pre-norm, GELU, learned positions, tied output) at
0.6 million parameters."""
GPT_TRAINING = dict(steps=800, batch_size=32, block_size=64, lr=3e-3, warmup_steps=50)
"""Its training: 800 steps of 32 windows of 64 characters (1.6 million tokens)."""


def train_docstring_gpt(
    device: str | torch.device = "cpu",
    progress: bool = True,
    config: dict | None = None,
    **overrides: int | float,
) -> tuple[DecoderOnly, dict[str, list[float]]]:
    """Train the chapter's GPT on `char_lm_data()` with AdamW, warm-up and a cosine decay,
    measuring the validation loss on 64 fixed held-out windows every 100 steps.

    `config` replaces entries of GPT_CONFIG (e.g. a larger model on a GPU) and `overrides`
    entries of GPT_TRAINING (e.g. steps=200 for a quick run).
    Returns the model (in eval mode) and `fit`'s history, plus "seconds" (training time).

    Book: 6.1 A GPT on the standard library.
    """
    recipe = {**GPT_TRAINING, **overrides}
    unknown = set(recipe) - set(GPT_TRAINING)
    if unknown:
        raise ValueError(
            f"unknown training settings {sorted(unknown)}; known: {list(GPT_TRAINING)}"
        )
    data = char_lm_data()
    torch.manual_seed(0)
    architecture = {**GPT_CONFIG, **(config or {})}
    model = DecoderOnly(TransformerConfig(vocab_size=data.tokenizer.vocab_size, **architecture))
    model.to(device)
    val_inputs, val_targets = window_batches(
        data.val_ids, 64, int(recipe["block_size"]), seed=1, device=str(device)
    )()

    def validation_loss(model: DecoderOnly) -> dict[str, float]:
        return {"val_loss": sequence_cross_entropy(model(val_inputs), val_targets).item()}

    steps = int(recipe["steps"])
    start = time.perf_counter()
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
        evaluate=validation_loss,
        eval_every=100,
        desc="GPT",
        progress=progress,
    )
    history["seconds"] = [time.perf_counter() - start]
    return model.eval(), history


_GPT_SOURCES = (
    "attention", "corpus", "embeddings", "generation", "layers", "models", "tokenizers", "training"
)  # fmt: skip


def _gpt_cache_path(device: torch.device) -> Path:
    """Keyed by the sources of the modules the model is built and trained with, the recipe,
    torch's version, the device type and the number of threads (which changes the trained
    numbers slightly)."""
    digest = hashlib.sha256()
    for module in _GPT_SOURCES:
        digest.update((Path(__file__).parent / f"{module}.py").read_bytes())
    digest.update(repr((GPT_CONFIG, GPT_TRAINING, torch.__version__)).encode())
    digest.update(f"{device.type}-{torch.get_num_threads()}".encode())
    return cache_file().parent / f"docstring_gpt-{digest.hexdigest()[:16]}.pt"


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


def docstring_gpt(
    device: str | torch.device | None = None, progress: bool = True
) -> tuple[DecoderOnly, CharTokenizer, dict[str, list[float]]]:
    """The chapter's trained GPT, its tokenizer and its training history.

    Trained by `train_docstring_gpt` the first time (a few minutes on a laptop CPU) and kept in
    the tutorlib cache folder (`$TUTORLIB_CACHE` or ~/.cache/tutorlib); later calls load it.

    Book: 6.1 A GPT on the standard library; 6.2 Sampling.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    path = _gpt_cache_path(device)
    tokenizer = char_lm_data().tokenizer
    with _locked(path):
        if path.exists():
            state = torch.load(path, map_location=device, weights_only=True)
            config = TransformerConfig(vocab_size=tokenizer.vocab_size, **GPT_CONFIG)
            model = DecoderOnly(config).to(device)
            model.load_state_dict(state["model"])
            return model.eval(), tokenizer, state["history"]
        model, history = train_docstring_gpt(device, progress=progress)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
            torch.save({"model": model.state_dict(), "history": history}, f)
        os.replace(f.name, path)
    return model, tokenizer, history
