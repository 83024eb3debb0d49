"""Decoding: turning a model's next-token distributions into a sequence.

Both searches work on any autoregressive model through one small interface, a `step`
function: given the tokens written so far for N hypotheses and, for each, the row of the
batch it belongs to, return the log-probabilities of the next token. `encoder_decoder_step`
builds it for a `Transformer`; Chapter 6 builds it for a decoder-only model.

Book: 3.3 Decoding: greedy and beam search.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor

from tutorlib.models import Transformer

__all__ = ["StepFn", "beam_search", "encoder_decoder_step", "greedy_decode", "translate"]

StepFn = Callable[[Tensor, Tensor], Tensor]
"""step(tokens (N, t) int64, rows (N,) int64) -> log-probabilities (N, V)."""


def _check_start(start: Tensor, max_new_tokens: int) -> None:
    if not isinstance(start, Tensor) or start.dim() != 2 or start.dtype != torch.long:
        raise ValueError(
            "start: expected int64 token ids of shape (batch, t0), e.g. a column of <bos> ids"
        )
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")


def encoder_decoder_step(
    model: Transformer, src: Tensor, src_padding_mask: Tensor | None = None
) -> StepFn:
    """Encode `src` once; return the step function that runs the decoder on the hypotheses.

    Shapes:
        src (B, S); src_padding_mask (B, S) True = real token
        step(tokens (N, t), rows (N,))  ->  (N, V) log-probabilities of token t + 1
    """
    memory = model.encode(src, src_padding_mask)  # (B, S, C)

    def step(tokens: Tensor, rows: Tensor) -> Tensor:
        mask = None if src_padding_mask is None else src_padding_mask[rows]  # (N, S)
        logits = model.decode(tokens, memory[rows], mask)  # (N, t, V)
        return logits[:, -1].float().log_softmax(dim=-1)  # (N, V)

    return step


@torch.no_grad()
def greedy_decode(
    step: StepFn, start: Tensor, max_new_tokens: int, eos_id: int | None = None
) -> Tensor:
    """Append the single most probable token, `max_new_tokens` times or until every row has
    written `eos_id`; a row that has finished keeps writing `eos_id`.

    Shapes:
        start (B, t0) int64  ->  (B, t0 + n) with n <= max_new_tokens

    Book: 3.3 Decoding: greedy and beam search.
    """
    _check_start(start, max_new_tokens)
    tokens, rows = start, torch.arange(start.shape[0], device=start.device)
    done = torch.zeros(start.shape[0], dtype=torch.bool, device=start.device)
    for _ in range(max_new_tokens):
        next_token = step(tokens, rows).argmax(dim=-1)  # (B,)
        if eos_id is not None:
            next_token = next_token.masked_fill(done, eos_id)
            done = done | (next_token == eos_id)
        tokens = torch.cat([tokens, next_token.unsqueeze(1)], dim=1)  # (B, t + 1)
        if eos_id is not None and done.all():
            break
    return tokens


@torch.no_grad()
def beam_search(
    step: StepFn,
    start: Tensor,
    max_new_tokens: int,
    eos_id: int,
    beam_width: int = 4,
    length_penalty: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Keep the `beam_width` most probable partial sequences at every step; return the best.

    All rows and beams run as one batch of B * k hypotheses. A hypothesis that has written
    `eos_id` is finished: it keeps writing `eos_id` at no cost, so its score stays fixed while
    the others extend. The final choice divides each total log-probability by
    length ** length_penalty (0: no normalisation; 1: the mean log-probability per token).
    With beam_width=1 this is greedy decoding.

    Shapes:
        start (B, t0) int64  ->  tokens (B, t0 + n), scores (B,) of the chosen hypotheses

    Book: 3.3 Decoding: greedy and beam search.
    """
    _check_start(start, max_new_tokens)
    if not isinstance(beam_width, int) or beam_width < 1:
        raise ValueError(f"beam_width must be an int >= 1, got {beam_width!r}")
    B, k, device = start.shape[0], beam_width, start.device
    tokens = start.repeat_interleave(k, dim=0)  # (B*k, t0)
    rows = torch.arange(B, device=device).repeat_interleave(k)  # (B*k,)
    scores = torch.full((B, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start equal: expand only the first
    done = torch.zeros(B * k, dtype=torch.bool, device=device)
    lengths = torch.zeros(B * k, device=device)
    for _ in range(max_new_tokens):
        log_probs = step(tokens, rows)  # (B*k, V)
        V = log_probs.shape[-1]
        finished_row = torch.full_like(log_probs[0], float("-inf"))
        finished_row[eos_id] = 0.0
        log_probs = torch.where(done.unsqueeze(1), finished_row, log_probs)
        total = (scores.reshape(B * k, 1) + log_probs).reshape(B, k * V)  # (B, k*V)
        scores, index = total.topk(k, dim=1)  # (B, k)
        beam, token = index // V, index % V  # (B, k): which parent, which next token
        parent = (beam + torch.arange(B, device=device).unsqueeze(1) * k).reshape(-1)  # (B*k,)
        tokens = torch.cat([tokens[parent], token.reshape(-1, 1)], dim=1)  # (B*k, t + 1)
        lengths = lengths[parent] + (~done[parent]).float()
        done = done[parent] | (token.reshape(-1) == eos_id)
        if done.all():
            break
    normalised = scores.reshape(-1) / lengths.clamp(min=1.0) ** length_penalty  # (B*k,)
    best = normalised.reshape(B, k).argmax(dim=1)  # (B,)
    chosen = best + torch.arange(B, device=device) * k
    return tokens[chosen], scores.reshape(-1)[chosen]


class _Tokenizer(Protocol):
    bos_id: int
    eos_id: int

    def encode_batch(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@torch.no_grad()
def translate(
    model: Transformer,
    tokenizer: _Tokenizer,
    texts: Sequence[str],
    max_new_tokens: int,
    beam_width: int = 1,
    batch_size: int = 500,
) -> list[str]:
    """Encode `texts`, decode with greedy search (beam_width=1) or beam search, and turn the
    ids back into text, in batches of `batch_size`.

    Book: 3.2 Training the date translator; 3.3 Decoding: greedy and beam search.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outputs: list[str] = []
    for i in range(0, len(texts), batch_size):
        src, real = tokenizer.encode_batch(texts[i : i + batch_size])
        src, real = src.to(device), real.to(device)
        step = encoder_decoder_step(model, src, real)
        start = torch.full((len(src), 1), tokenizer.bos_id, dtype=torch.long, device=device)
        if beam_width == 1:
            ids = greedy_decode(step, start, max_new_tokens, tokenizer.eos_id)
        else:
            ids, _ = beam_search(step, start, max_new_tokens, tokenizer.eos_id, beam_width)
        outputs += [tokenizer.decode(row.tolist()) for row in ids]
    model.train(was_training)
    return outputs
