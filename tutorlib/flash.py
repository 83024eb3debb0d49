"""FlashAttention's algorithm in plain PyTorch: the online softmax and the tiled forward pass.

``flash_attention`` computes exactly softmax attention, ``softmax(Q K^T / sqrt(D)) V``, one
(query block, key block) tile at a time, and never forms the (Tq, Tk) matrix of scores or
weights. Each tile goes through ``online_softmax_update``, which keeps per query row a running
max ``m``, a running sum ``l`` of ``exp(score - m)`` and an unnormalised output ``acc``, and
rescales them by ``exp(m_old - m_new)`` when the max grows (Milakov and Gimelshein 2018;
Dao et al. 2022). The loops run in Python, so this is a reading of the algorithm, not a fast
kernel: torch's fused kernel behind ``F.scaled_dot_product_attention`` does the same in one call.

Masks follow tutorlib's convention: boolean, True = may attend, and a query row with nothing to
attend to gives a zero output (and a log-sum-exp of -inf), never NaN.

Book: 4.9 FlashAttention: exact attention in tiles.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from tutorlib.attention import _check_qkv

__all__ = [
    "flash_attention",
    "online_softmax_update",
    "peak_memory_bytes",
    "tile_counts",
    "tiled_bytes",
    "written_out_bytes",
]


# --- One tile ---------------------------------------------------------------------------------


def online_softmax_update(
    m: Tensor, l: Tensor, acc: Tensor, scores: Tensor, values: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Fold one tile of scores and values into the running max, sum and output of each row.

    With ``m_new = max(m, rowmax(scores))`` and ``alpha = exp(m - m_new)``::

        l_new   = alpha * l   + rowsum(exp(scores - m_new))
        acc_new = alpha * acc + exp(scores - m_new) @ values

    so that after the last tile ``l`` is the sum of ``exp(s - m)`` over every score ``s`` of
    the row, ``acc`` the same sum weighted by the values, and ``acc / l`` the softmax-weighted
    average of the values, exactly. Start from ``m = -inf``, ``l = 0``, ``acc = 0``.

    Guard: while every score of a row so far is -inf (masked), ``m_new`` is -inf and
    ``exp(-inf - (-inf))`` would be NaN. Such rows subtract 0 instead of ``m_new``, so they
    stay at ``m = -inf``, ``l = 0``, ``acc = 0``. The max is detached from autograd: it only
    shifts the exponents, and the result does not depend on it.

    Shapes:
        m, l (..., Tq); acc (..., Tq, D); scores (..., Tq, Tk), already scaled by
        1/sqrt(D), masked entries -inf; values (..., Tk, D)
        ->  m, l (..., Tq), acc (..., Tq, D)

    Book: 4.9 FlashAttention: exact attention in tiles.
    """
    for name, x in (("m", m), ("l", l), ("acc", acc), ("scores", scores), ("values", values)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if scores.dim() < 2 or scores.shape[-1] == 0:
        raise ValueError(f"scores: expected (..., Tq, Tk) with Tk >= 1, got {tuple(scores.shape)}")
    rows = scores.shape[:-1]  # (..., Tq)
    if m.shape != rows or l.shape != rows:
        raise ValueError(
            f"m and l: expected {tuple(rows)} (scores without its last dim), "
            f"got m {tuple(m.shape)}, l {tuple(l.shape)}"
        )
    if values.shape[:-1] != (*scores.shape[:-2], scores.shape[-1]):
        raise ValueError(
            f"values: expected (..., Tk, D) = {(*scores.shape[:-2], scores.shape[-1], 'D')} "
            f"for scores {tuple(scores.shape)}, got {tuple(values.shape)}"
        )
    if acc.shape != (*rows, values.shape[-1]):
        raise ValueError(
            f"acc: expected (..., Tq, D) = {(*rows, values.shape[-1])}, got {tuple(acc.shape)}"
        )
    m_new = torch.maximum(m, scores.amax(dim=-1)).detach()  # (..., Tq)
    shift = m_new.masked_fill(m_new == float("-inf"), 0.0)  # (..., Tq): no -inf - (-inf)
    p = torch.exp(scores - shift.unsqueeze(-1))  # (..., Tq, Tk): this tile's unnormalised weights
    alpha = torch.exp(m - shift)  # (..., Tq): rescales what was summed under the old max
    l_new = alpha * l + p.sum(dim=-1)  # (..., Tq)
    acc_new = alpha.unsqueeze(-1) * acc + p @ values  # (..., Tq, D)
    return m_new, l_new, acc_new


# --- The tiled forward pass -------------------------------------------------------------------


def _check_block(size: int, name: str) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"{name} must be a positive int, got {size!r}")


def _key_end(q_end: int, T_k: int, is_causal: bool) -> int:
    """Keys past this index are hidden from every query before ``q_end`` (causal, top left)."""
    return min(T_k, q_end) if is_causal else T_k


def tile_counts(
    T_q: int, T_k: int, block_q: int = 64, block_k: int = 64, is_causal: bool = False
) -> tuple[int, int]:
    """How many (query block, key block) tiles ``flash_attention`` computes and skips.

    With ``is_causal`` a key block whose first key lies after the last query of a query block is
    hidden from all of it, and is skipped, as real kernels do. Without it nothing is skipped.

    Shapes:
        integers  ->  (computed, skipped) tiles; their sum is
        ``ceil(T_q / block_q) * ceil(T_k / block_k)``.

    Book: 4.9 FlashAttention: exact attention in tiles.
    """
    for name, size in (("T_q", T_q), ("T_k", T_k), ("block_q", block_q), ("block_k", block_k)):
        _check_block(size, name)
    computed = 0
    for q_start in range(0, T_q, block_q):
        computed += math.ceil(_key_end(min(q_start + block_q, T_q), T_k, is_causal) / block_k)
    total = math.ceil(T_q / block_q) * math.ceil(T_k / block_k)
    return computed, total - computed


def _check_inputs(
    query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None, block_q: int, block_k: int
) -> None:
    _check_qkv(query, key, value)  # tensors, floating point, one dtype, matching sizes
    if query.dim() < 3:
        raise ValueError(
            f"query, key, value: expected (batch, ..., seq, dim) with rank >= 3, got "
            f"{tuple(query.shape)}"
        )
    if query.shape[-2] == 0 or key.shape[-2] == 0:
        raise ValueError(
            f"need at least one query and one key, got query {tuple(query.shape)}, "
            f"key {tuple(key.shape)}"
        )
    if attn_mask is not None:
        if not isinstance(attn_mask, Tensor) or attn_mask.dtype != torch.bool:
            got = attn_mask.dtype if isinstance(attn_mask, Tensor) else type(attn_mask).__name__
            raise TypeError(f"attn_mask must be a bool tensor (True = may attend), got {got}")
        target = (*query.shape[:-1], key.shape[-2])  # (..., Tq, Tk)
        try:
            fits = torch.broadcast_shapes(attn_mask.shape, target) == target
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to "
                f"(..., Tq, Tk) = {target}"
            )
    _check_block(block_q, "block_q")
    _check_block(block_k, "block_k")


def flash_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    block_q: int = 64,
    block_k: int = 64,
) -> tuple[Tensor, Tensor]:
    """Exact softmax attention computed tile by tile, with the log-sum-exp of every row.

    For each block of ``block_q`` queries it starts a running max, sum and output accumulator
    (``m = -inf``, ``l = 0``, ``acc = 0``), folds in one block of ``block_k`` keys and values
    at a time with ``online_softmax_update``, and divides at the end: ``out = acc / l``,
    ``logsumexp = m + log(l)``, the log of the softmax's normaliser, which is all a backward
    pass needs to recompute the weights. No (Tq, Tk) tensor is formed: at any time it holds the
    output, two numbers per row and a few (``block_q``, ``block_k``) tiles. The lengths need not
    divide by the block sizes (the last blocks are shorter).

    Arguments in the order of ``F.scaled_dot_product_attention`` (no dropout, default scale
    ``1/sqrt(D)``). ``attn_mask`` is bool, True = may attend, broadcastable to (..., Tq, Tk).
    ``is_causal`` lets query i see keys 0..i (top left, as torch); with a mask too, both apply
    (torch refuses the pair). Causal key blocks that no query of the block can see are skipped
    (``tile_counts`` counts them). A query row that may attend to nothing gets a zero output
    and a log-sum-exp of -inf, not NaN. Inputs below float32 are accumulated in float32, as
    the real kernels do; the log-sum-exp stays in that precision.

    Shapes:
        query (..., Tq, D), key (..., Tk, D), value (..., Tk, Dv), rank >= 3, equal leading
        dims; attn_mask broadcastable to (..., Tq, Tk)
        ->  out (..., Tq, Dv), logsumexp (..., Tq)

    Book: 4.9 FlashAttention: exact attention in tiles.
    """
    _check_inputs(query, key, value, attn_mask, block_q, block_k)
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
    *lead, T_q, D = query.shape
    T_k, D_v = key.shape[-2], value.shape[-1]
    work = torch.promote_types(query.dtype, torch.float32)  # accumulate in float32 at least
    scale = 1.0 / math.sqrt(D)
    if attn_mask is not None:
        attn_mask = attn_mask.expand(*lead, T_q, T_k)  # (..., Tq, Tk): a view, no copy
    out = query.new_empty(*lead, T_q, D_v)  # (..., Tq, Dv)
    logsumexp = query.new_empty(*lead, T_q, dtype=work)  # (..., Tq)
    for q0 in range(0, T_q, block_q):
        q1 = min(q0 + block_q, T_q)
        q = query[..., q0:q1, :].to(work) * scale  # (..., bq, D): the scale folded into Q
        m = q.new_full((*lead, q1 - q0), float("-inf"))  # (..., bq) running max
        l = q.new_zeros(*lead, q1 - q0)  # (..., bq) running sum of exp(score - m)
        acc = q.new_zeros(*lead, q1 - q0, D_v)  # (..., bq, Dv) unnormalised output
        for k0 in range(0, _key_end(q1, T_k, is_causal), block_k):
            k1 = min(k0 + block_k, T_k)
            k = key[..., k0:k1, :].to(work)  # (..., bk, D)
            v = value[..., k0:k1, :].to(work)  # (..., bk, Dv)
            scores = q @ k.transpose(-2, -1)  # (..., bq, bk): one tile, already scaled
            keep = None
            if is_causal and k1 - 1 > q0:  # the tile reaches above the diagonal
                rows = torch.arange(q0, q1, device=query.device)
                cols = torch.arange(k0, k1, device=query.device)
                keep = cols.unsqueeze(0) <= rows.unsqueeze(1)  # (bq, bk)
            if attn_mask is not None:
                tile_mask = attn_mask[..., q0:q1, k0:k1]  # (..., bq, bk)
                keep = tile_mask if keep is None else keep & tile_mask
            if keep is not None:
                scores = scores.masked_fill(~keep, float("-inf"))
            m, l, acc = online_softmax_update(m, l, acc, scores, v)
        empty = l == 0  # (..., bq): rows with nothing to attend to; their acc is 0
        l_safe = torch.where(empty, torch.ones_like(l), l)
        out[..., q0:q1, :] = (acc / l_safe.unsqueeze(-1)).to(out.dtype)  # 0 on empty rows
        logsumexp[..., q0:q1] = m + torch.log(l_safe)  # -inf on empty rows
    return out, logsumexp


# --- Memory, by formula and measured ----------------------------------------------------------


def written_out_bytes(B: int, H: int, T: int, D: int, element_size: int = 4) -> int:
    """Bytes that written-out attention without a mask allocates: the (B, H, T, T) scores and
    weights, held together while the softmax runs, and the (B, H, T, D) output.

    Shapes:
        integers  ->  bytes, ``(2 * B * H * T * T + B * H * T * D) * element_size``

    Book: 4.9 FlashAttention: exact attention in tiles.
    """
    for name, size in (("B", B), ("H", H), ("T", T), ("D", D), ("element_size", element_size)):
        _check_block(size, name)
    return (2 * B * H * T * T + B * H * T * D) * element_size


def tiled_bytes(
    B: int, H: int, T: int, D: int, block_q: int = 64, block_k: int = 64, element_size: int = 4
) -> int:
    """Bytes that ``flash_attention`` allocates at its peak without a mask, for T queries and
    T keys.

    What it returns, the (B, H, T, D) output and the (B, H, T) log-sum-exp, plus the working set
    of one tile inside ``online_softmax_update``: the scaled block of queries and the
    accumulator, (B, H, block_q, D) each; the tile of scores and its exponentials ``P``,
    (B, H, block_q, block_k) each; and at the peak either one more tile (the scores minus the
    max, while ``P`` is computed) or three more (B, H, block_q, D) tensors (the rescaled
    accumulator, ``P @ V`` and the new accumulator), whichever is larger; plus about eight
    vectors of block_q numbers (running and new max and sum, the shift, the rescaling). The
    working set depends on the block sizes, not on T. Blocks are capped at T.

    Shapes:
        integers  ->  bytes, ``B * H * (T * (D + 1) + working) * element_size`` with
        ``working = 2 * bq * D + 2 * bq * bk + max(bq * bk, 3 * bq * D) + 8 * bq``

    Book: 4.9 FlashAttention: exact attention in tiles.
    """
    for name, size in (("B", B), ("H", H), ("T", T), ("D", D), ("element_size", element_size)):
        _check_block(size, name)
    _check_block(block_q, "block_q")
    _check_block(block_k, "block_k")
    bq, bk = min(block_q, T), min(block_k, T)
    working = 2 * bq * D + 2 * bq * bk + max(bq * bk, 3 * bq * D) + 8 * bq
    return B * H * (T * (D + 1) + working) * element_size


@contextlib.contextmanager
def _quiet_file_descriptor_2() -> Iterator[None]:
    """Send what C++ code writes to file descriptor 2 to /dev/null: the profiler logs a line
    when it starts and stops, which a notebook would show as an error output."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_bytes(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """The most bytes of tensor memory that ``fn()`` had allocated at once, beyond what was
    allocated before the call.

    On a GPU this is ``torch.cuda.max_memory_allocated``. On the CPU torch keeps no such
    counter, so ``fn`` runs under ``torch.profiler.profile(profile_memory=True)``, which
    records every allocation and free of the CPU allocator with its size; the peak of their
    running sum is the answer. (This reads the profiler's event tree, an experimental API;
    ``tracemalloc`` would not see torch's allocations.) Profiling slows ``fn`` down: time it
    separately.

    Shapes:
        a function of no arguments  ->  bytes (int)

    Book: 4.9 FlashAttention: exact attention in tiles.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu":
        raise ValueError(f"peak_memory_bytes measures on cpu or cuda, got {device}")
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with (
        _quiet_file_descriptor_2(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            events.append((event.start_time_ns, event.extra_fields.alloc_size))
    current = peak = 0
    for _, size in sorted(events, key=lambda event: event[0]):  # frees have negative sizes
        current += size
        peak = max(peak, current)
    return peak
