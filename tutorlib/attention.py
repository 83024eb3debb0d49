"""Attention: masks, scaled dot-product attention, multi-head attention, linear attention.

Multi-head attention here is the one every tutorlib model runs: with separate key-value heads
(grouped-query attention), rotary positions and a key-value cache (`KVCache`) as options, so that
training, evaluation and cached generation run the same code.

One mask convention everywhere in tutorlib: a boolean mask, True = may attend (as the
`attn_mask` of `torch.nn.functional.scaled_dot_product_attention`); padding masks are True for
real tokens. A query row with nothing to attend to gets zero weights and a zero output, never
NaN.

Book: 1.4 Encoders and decoders (the causal mask); Chapter 2, Attention.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tutorlib.embeddings import apply_rotary

__all__ = [
    "KVCache",
    "MultiHeadAttention",
    "causal_mask",
    "elu_feature_map",
    "grouped_query_attention",
    "linear_attention",
    "padding_mask",
    "record_attention_weights",
    "scaled_dot_product_attention",
    "sliding_window_mask",
    "strided_mask",
]


# --- Masks ------------------------------------------------------------------------------------


def _check_length(T: int, name: str = "T") -> None:
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise ValueError(f"{name} must be a positive int, got {T!r}")


def causal_mask(T: int, device: torch.device | str | None = None, *, past: int = 0) -> Tensor:
    """The look-ahead mask of a decoder: position t may attend to positions 0..t.

    With `past` > 0 the T queries are the newest positions past, ..., past + T - 1 of a
    sequence whose first `past` keys are cached: query i may attend to keys 0..past + i (the
    diagonal is shifted right by `past`, aligned to the bottom right). `is_causal=True` in
    `F.scaled_dot_product_attention` aligns it to the top left instead, which is wrong with a
    cache.

    Shapes:
        returns (T, past + T) bool, True on and below the (shifted) diagonal.

    Book: 1.4 Encoders and decoders; 4.5 The KV cache.
    """
    _check_length(T)
    if not isinstance(past, int) or isinstance(past, bool) or past < 0:
        raise ValueError(f"past must be an int >= 0, got {past!r}")
    return torch.ones(T, past + T, dtype=torch.bool, device=device).tril(diagonal=past)


def padding_mask(lengths: Tensor, T: int) -> Tensor:
    """True for real tokens, False for padding, from each sequence's length.

    Shapes:
        lengths (B,) integers in [0, T]  ->  (B, T) bool

    Book: 1.4 Encoders and decoders.
    """
    if lengths.dim() != 1 or lengths.is_floating_point():
        raise ValueError(
            f"lengths: expected (batch,) integers, got {lengths.dtype} {tuple(lengths.shape)}"
        )
    if lengths.numel() and (lengths.min() < 0 or lengths.max() > T):
        raise ValueError(f"lengths must lie in [0, {T}], got {lengths.tolist()}")
    positions = torch.arange(T, device=lengths.device)  # (T,)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)


def _offsets(T: int, device: torch.device | str | None) -> Tensor:
    positions = torch.arange(T, device=device)
    return positions.unsqueeze(1) - positions.unsqueeze(0)  # (T, T): t - s


def sliding_window_mask(
    T: int, window: int, causal: bool = True, device: torch.device | str | None = None
) -> Tensor:
    """Local attention: each position sees the `window` positions nearest it.

    Causal: s in [t - window + 1, t]. Not causal: |t - s| < window (2 * window - 1 positions).

    Shapes:
        returns (T, T) bool

    Book: 2.7 Efficient attention.
    """
    _check_length(T)
    _check_length(window, "window")
    offset = _offsets(T, device)  # (T, T)
    if causal:
        return (offset >= 0) & (offset < window)
    return offset.abs() < window


def strided_mask(
    T: int, stride: int, causal: bool = True, device: torch.device | str | None = None
) -> Tensor:
    """Strided attention (the Sparse Transformer's second pattern): t sees s when t - s is a
    multiple of `stride`. OR it with a `sliding_window_mask` of the same width for the
    combined pattern.

    Shapes:
        returns (T, T) bool

    Book: 2.7 Efficient attention.
    """
    _check_length(T)
    _check_length(stride, "stride")
    offset = _offsets(T, device)  # (T, T)
    mask = offset.remainder(stride) == 0
    return mask & (offset >= 0) if causal else mask


# --- Scaled dot-product attention -------------------------------------------------------------


def _check_qkv(query: Tensor, key: Tensor, value: Tensor) -> None:
    for name, x in (("query", query), ("key", key), ("value", value)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {x.dtype}")
        if x.dim() < 2:
            raise ValueError(f"{name}: expected (..., seq, dim), got shape {tuple(x.shape)}")
    if not query.dtype == key.dtype == value.dtype:
        raise TypeError(f"dtypes differ: query {query.dtype}, key {key.dtype}, value {value.dtype}")
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"query and key need the same last dim (D), got query {tuple(query.shape)} and "
            f"key {tuple(key.shape)}"
        )
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(
            f"key and value need the same length S, got key {tuple(key.shape)} and "
            f"value {tuple(value.shape)}"
        )
    if not query.shape[:-2] == key.shape[:-2] == value.shape[:-2]:
        raise ValueError(
            f"leading (batch, head) dims differ: query {tuple(query.shape)}, "
            f"key {tuple(key.shape)}, value {tuple(value.shape)}"
        )


def _check_mask(mask: Tensor, query: Tensor, key: Tensor) -> None:
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"attn_mask must be bool (True = may attend) or float, got {mask.dtype}")
    target = (*query.shape[:-1], key.shape[-2])  # (..., T, S)
    try:
        torch.broadcast_shapes(mask.shape, target)
    except RuntimeError:
        raise ValueError(
            f"attn_mask of shape {tuple(mask.shape)} does not broadcast to (..., T, S) = {target}"
        ) from None


def _attention_written_out(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None,
    dropout_p: float,
    scale: float,
) -> tuple[Tensor, Tensor]:
    scores = query @ key.transpose(-2, -1) * scale  # (..., T, S)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        # The most negative float, not -inf: a row with no key left gets weights 0, not NaN.
        scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=-1) * attn_mask  # (..., T, S)
    else:
        if attn_mask is not None:
            scores = scores + attn_mask  # an additive float mask, as in torch
        weights = scores.softmax(dim=-1)  # (..., T, S)
    dropped = F.dropout(weights, dropout_p) if dropout_p > 0 else weights
    return dropped @ value, weights  # (..., T, Dv), (..., T, S)


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    *,
    need_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(Q K^T / sqrt(D) + mask) V, with the signature of `F.scaled_dot_product_attention`.

    `attn_mask` is bool (True = may attend) or float (added to the scores), broadcastable to
    (..., T, S). A query row that may attend to nothing returns zeros, on both paths (older torch
    releases return NaN there; `nn.MultiheadAttention` still does when every key is padding).
    With `need_weights=True` the computation is written out and `(output, weights)` is
    returned; otherwise it runs on torch's fused kernel and only the output is returned.
    `dropout_p` applies as given: pass 0.0 in evaluation.

    Shapes:
        query (..., T, D), key (..., S, D), value (..., S, Dv)
        ->  output (..., T, Dv) [, weights (..., T, S)]

    Book: 2.2 Scaled dot-product attention.
    """
    _check_qkv(query, key, value)
    if attn_mask is not None:
        _check_mask(attn_mask, query, key)
    if is_causal and attn_mask is None and not need_weights:
        # Every row keeps at least key 0: the fused kernel's own causal mask, no NaN to clear.
        return F.scaled_dot_product_attention(
            query, key, value, dropout_p=dropout_p, is_causal=True, scale=scale
        )  # (..., T, Dv)
    if is_causal:
        T, S = query.shape[-2], key.shape[-2]
        causal = torch.ones(T, S, dtype=torch.bool, device=query.device).tril()  # (T, S), as torch
        if attn_mask is None:
            attn_mask = causal
        elif attn_mask.dtype == torch.bool:
            attn_mask = attn_mask & causal
        else:  # an additive float mask: -inf above the diagonal
            attn_mask = attn_mask.masked_fill(~causal, float("-inf"))
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    if need_weights:
        return _attention_written_out(query, key, value, attn_mask, dropout_p, scale)
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale
    )  # (..., T, Dv)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        out = out.masked_fill(~attn_mask.any(dim=-1, keepdim=True), 0.0)  # no NaN rows
    return out


def grouped_query_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    *,
    need_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Attention with fewer key-value heads than query heads (grouped-query attention,
    Ainslie et al. 2023; multi-query attention, Shazeer 2019, is one key-value head).

    The H query heads fall into G = H / H_kv consecutive groups of equal size: query heads
    g * (H / H_kv) ... (g + 1) * (H / H_kv) - 1 share key-value head g. The keys are shared,
    not copied: the group axis is split off the queries and broadcast against one key head.
    With H_kv = H it is `scaled_dot_product_attention`. Same result as
    `F.scaled_dot_product_attention(..., enable_gqa=True)`, which it calls unless the weights
    are asked for. Masks as in `scaled_dot_product_attention` (bool True = may attend, or
    float), broadcastable to (B, H, T, S).

    Shapes:
        query (B, H, T, D), key (B, H_kv, S, D), value (B, H_kv, S, Dv), H divisible by H_kv
        ->  output (B, H, T, Dv) [, weights (B, H, T, S)]

    Book: 6.7 The modern decoder (grouped-query attention).
    """
    for name, x in (("query", query), ("key", key), ("value", value)):
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name}: expected (batch, heads, seq, dim), got {shape}")
    B, H, T, D = query.shape
    H_kv = key.shape[1]
    if value.shape[1] != H_kv or H % H_kv or key.shape[0] != B or value.shape[0] != B:
        raise ValueError(
            f"query {tuple(query.shape)} needs key and value with the same batch and a number "
            f"of heads that divides {H}; got key {tuple(key.shape)}, value {tuple(value.shape)}"
        )
    if H_kv == H:
        return scaled_dot_product_attention(
            query, key, value, attn_mask, dropout_p, is_causal, scale, need_weights=need_weights
        )
    shared_key = key[:, :1].expand(B, H, -1, -1)  # (B, H, S, D): a view, for the checks only
    _check_qkv(query, shared_key, value[:, :1].expand(B, H, -1, -1))
    if attn_mask is not None:
        _check_mask(attn_mask, query, shared_key)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    if is_causal and attn_mask is None and not need_weights:
        return F.scaled_dot_product_attention(
            query, key, value, dropout_p=dropout_p, is_causal=True, scale=scale, enable_gqa=True
        )  # (B, H, T, Dv)
    if is_causal:
        causal = torch.ones(T, key.shape[2], dtype=torch.bool, device=query.device).tril()
        if attn_mask is None or attn_mask.dtype == torch.bool:
            attn_mask = causal if attn_mask is None else attn_mask & causal  # (T, S), as torch
        else:
            attn_mask = attn_mask.masked_fill(~causal, float("-inf"))
    if not need_weights:
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask, dropout_p, scale=scale, enable_gqa=True
        )  # (B, H, T, Dv)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            out = out.masked_fill(~attn_mask.any(dim=-1, keepdim=True), 0.0)  # no NaN rows
        return out
    if attn_mask is not None:
        attn_mask = attn_mask.expand(B, H, T, key.shape[2]).unflatten(1, (H_kv, -1))
        # (B, H_kv, G, T, S)
    q = query.unflatten(1, (H_kv, H // H_kv))  # (B, H_kv, G, T, D)
    k, v = key.unsqueeze(2), value.unsqueeze(2)  # (B, H_kv, 1, S, D): one head serves the group
    out, weights = _attention_written_out(q, k, v, attn_mask, dropout_p, scale)
    return out.flatten(1, 2), weights.flatten(1, 2)  # (B, H, T, Dv), (B, H, T, S)


# --- The key-value cache ----------------------------------------------------------------------


class KVCache:
    """The keys and values of every layer for the tokens seen so far, passed down the stack.

    A decoder's keys and values at positions 0..t-1 do not change when token t arrives (the
    causal mask hides the future from them), so each layer's attention appends the new ones
    (`update`) and attends over all of them. Keys are cached after the rotary embedding, so
    they never need rotating again. Like Hugging Face's `past_key_values`, the cache is an
    argument of the model's forward: cached generation runs the same layer code as training.

    Shapes:
        keys[l], values[l] (B, H_kv, t, D) for layer l, t = `length`

    Book: 4.5 The KV cache.
    """

    def __init__(self) -> None:
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []

    @property
    def length(self) -> int:
        """Number of positions cached (0 before the first step)."""
        return self.keys[0].shape[2] if self.keys else 0

    def past_length(self, layer: int) -> int:
        """Positions cached for `layer` so far (layer 0 is ahead of the others mid-step)."""
        return self.keys[layer].shape[2] if layer < len(self.keys) else 0

    def update(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Append the new positions' keys and values of `layer` on the time axis (dim 2);
        return everything cached for that layer.

        Shapes:
            keys, values (B, H_kv, t, D)  ->  (B, H_kv, p + t, D) each
        """
        if layer == len(self.keys):
            self.keys.append(keys)
            self.values.append(values)
        elif layer < len(self.keys):
            self.keys[layer] = torch.cat([self.keys[layer], keys], dim=2)  # (B, H_kv, p + t, D)
            self.values[layer] = torch.cat([self.values[layer], values], dim=2)
        else:
            raise ValueError(f"layer {layer} updated before layer {len(self.keys)}")
        return self.keys[layer], self.values[layer]

    def crop(self, length: int) -> None:
        """Keep the first ``length`` positions of every layer and drop the rest, in place: the
        rollback of speculative decoding when the target rejects drafted tokens (4.11).
        ``crop(0)`` empties the cache. Call it between steps, when all layers hold the same
        positions.

        Shapes:
            keys[l], values[l] (B, H_kv, t, D)  ->  (B, H_kv, length, D) each, length <= t

        Book: 4.5 The KV cache; 4.11 Speculative decoding.
        """
        if not isinstance(length, int) or isinstance(length, bool):
            raise TypeError(f"length must be an int, got {type(length).__name__}")
        if not 0 <= length <= self.length:
            raise ValueError(
                f"length must be in [0, {self.length}] (the cached length), got {length}"
            )
        if length == 0:
            self.keys, self.values = [], []
            return
        self.keys = [k[:, :, :length] for k in self.keys]  # (B, H_kv, length, D)
        self.values = [v[:, :, :length] for v in self.values]  # (B, H_kv, length, D)

    def __repr__(self) -> str:
        return f"KVCache(layers={len(self.keys)}, length={self.length})"


# --- Multi-head attention ---------------------------------------------------------------------


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1, ..., head_H) W^O with
    head_h = Attention(Q W_h^Q, K W_h^K, V W_h^V).

    Parameters are named as in `nn.MultiheadAttention` (`in_proj_weight`, `in_proj_bias`,
    `out_proj`), so `load_state_dict` copies weights across; the outputs then agree with
    `nn.MultiheadAttention(d_model, n_heads, batch_first=True)`. Masks use tutorlib's
    convention: `padding_mask` is True for real keys (torch's `key_padding_mask` is its
    negation), `attn_mask` is True where a query may attend. Weights are returned only when
    asked for; without them the fused kernel runs.

    The options of modern decoders (6.7):

    - `n_kv_heads` < `n_heads`: grouped-query attention (`grouped_query_attention`); the
      stacked `in_proj_weight` is then [W^Q; W^K; W^V] with (H + 2 H_kv) D rows.
    - `bias=False`: no biases in the projections (Llama, PaLM).
    - `rotary=(cos, sin)` in the forward: rotary position embeddings on the queries and keys
      of every head, for the positions the tables were made for (`rotary_angles`).
    - `cache=KVCache()` in the forward (self-attention): the new keys and values are appended
      to `cache`'s entry for `layer`, and the queries attend over everything cached; with
      `is_causal` the causal mask is shifted by the cached length.

    Shapes:
        query (B, T, C), key and value (B, S, C); padding_mask (B, S) (S counts the cached
        positions too); attn_mask (T, S), (B, T, S) or (B, H, T, S); rotary (T, D/2) each
        ->  output (B, T, C), weights (B, T, S) averaged over heads, (B, H, T, S), or None

    Book: 2.4 Self-attention, cross-attention and multiple heads; 6.7 The modern decoder.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        n_kv_heads: int | None = None,
    ) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must divide by n_heads={n_heads}")
        if not isinstance(n_kv_heads, int) or n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads={n_kv_heads!r} must be an int dividing n_heads={n_heads}")
        self.d_model, self.n_heads, self.n_kv_heads, self.dropout = (
            d_model, n_heads, n_kv_heads, dropout
        )  # fmt: skip
        self.head_dim = d_model // n_heads
        kv_width = n_kv_heads * self.head_dim
        self._split = (d_model, kv_width, kv_width)  # rows of W^Q, W^K, W^V in in_proj
        self.in_proj_weight = nn.Parameter(torch.empty(d_model + 2 * kv_width, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(d_model + 2 * kv_width)) if bias else None
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)  # W^O
        nn.init.xavier_uniform_(self.in_proj_weight)
        if bias:
            nn.init.zeros_(self.out_proj.bias)

    def _split_heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, H or H_kv, T, D)

    def _merge_heads(self, x: Tensor) -> Tensor:
        B, _, T, _ = x.shape
        return x.transpose(1, 2).reshape(B, T, self.d_model)  # (B, T, C)

    def _mask(
        self, attn_mask: Tensor | None, padding_mask: Tensor | None, B: int, S: int
    ) -> Tensor | None:
        if padding_mask is not None:
            if padding_mask.dtype != torch.bool or padding_mask.shape != (B, S):
                raise ValueError(
                    f"padding_mask: expected bool ({B}, {S}) with True = real token, got "
                    f"{padding_mask.dtype} {tuple(padding_mask.shape)}"
                )
            padding_mask = padding_mask[:, None, None, :]  # (B, 1, 1, S)
        if attn_mask is not None and attn_mask.dim() == 3:
            attn_mask = attn_mask.unsqueeze(1)  # (B, 1, T, S)
        if attn_mask is None:
            return padding_mask
        if padding_mask is None:
            return attn_mask
        if attn_mask.dtype != torch.bool:
            return attn_mask.masked_fill(~padding_mask, float("-inf"))
        return attn_mask & padding_mask  # (B, H or 1, T, S)

    def _check_inputs(self, query: Tensor, key: Tensor, value: Tensor) -> None:
        for name, x in (("query", query), ("key", key), ("value", value)):
            if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.d_model:
                shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"{name}: expected (batch, seq, {self.d_model}), got {shape}")
        if key.shape != value.shape or key.shape[0] != query.shape[0]:
            raise ValueError(
                f"key {tuple(key.shape)} and value {tuple(value.shape)} must match, with the "
                f"batch size of query {tuple(query.shape)}"
            )

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
        average_attn_weights: bool = True,
        *,
        rotary: tuple[Tensor, Tensor] | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> tuple[Tensor, Tensor | None]:
        self._check_inputs(query, key, value)
        B, T = query.shape[:2]
        w_q, w_k, w_v = self.in_proj_weight.split(self._split)  # (C, C), (H_kv D, C) x2
        b_q, b_k, b_v = (
            (None,) * 3 if self.in_proj_bias is None else self.in_proj_bias.split(self._split)
        )
        q = self._split_heads(F.linear(query, w_q, b_q))  # (B, H, T, D)
        k = self._split_heads(F.linear(key, w_k, b_k))  # (B, H_kv, S, D)
        v = self._split_heads(F.linear(value, w_v, b_v))  # (B, H_kv, S, D)
        if rotary is not None:
            q, k = _rotate(q, *rotary), _rotate(k, *rotary)  # positions, not values
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H_kv, p + T, D)
        S = k.shape[2]
        if is_causal and T == 1 and attn_mask is None:
            is_causal = False  # one new query may see every cached key and itself: no mask
        if is_causal and (S != T or attn_mask is not None or padding_mask is not None):
            causal = causal_mask(T, q.device, past=S - T)  # (T, S), bottom-right aligned
            attn_mask = causal if attn_mask is None else _and(attn_mask, causal)
            is_causal = False
        mask = self._mask(attn_mask, padding_mask, B, S)
        dropout_p = self.dropout if self.training else 0.0
        result = grouped_query_attention(
            q, k, v, mask, dropout_p, is_causal, need_weights=need_weights
        )
        out, weights = result if need_weights else (result, None)
        out = self.out_proj(self._merge_heads(out))  # (B, T, C)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)  # (B, T, S)
        return out, weights


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """`apply_rotary` as one complex product, (x_2j + i x_2j+1) e^{i t theta_j}: the same
    numbers (tests/test_attention.py) in half the time, for float32 and float64."""
    if x.dtype not in (torch.float32, torch.float64) or x.stride(-1) != 1:
        return apply_rotary(x, cos, sin)
    pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)))  # (B, H, T, D/2) complex
    turns = torch.complex(cos.to(x.dtype), sin.to(x.dtype))  # (T, D/2)
    return torch.view_as_real(pairs * turns).flatten(-2)  # (B, H, T, D)


def _and(mask: Tensor, allowed: Tensor) -> Tensor:
    """A bool or additive float mask, restricted to where `allowed` (bool) is True."""
    if mask.dtype == torch.bool:
        return mask & allowed
    return mask.masked_fill(~allowed, float("-inf"))


def record_attention_weights(
    attentions: Iterable[nn.Module], run: Callable[[], object]
) -> list[Tensor]:
    """Call `run()` and return the attention weights, per head, that the modules in
    `attentions` computed during it, in the order they ran. Forward hooks ask each module for
    its weights (`need_weights=True, average_attn_weights=False`) while the model runs as
    usual, and are removed afterwards, also when `run` raises. The modules must take those
    keyword arguments and return (output, weights), as `MultiHeadAttention` and
    `torch.nn.MultiheadAttention` do. Row t of a head's map is where position t reads from.

    Shapes:
        one tensor (B, H, T, S) per call of a module, each row summing to 1

    Book: 6.8 In-context learning; 5.8 What a protein language model learns.
    """
    maps: list[Tensor] = []

    def ask(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    def keep(module: nn.Module, args: tuple, kwargs: dict, output: tuple) -> None:
        maps.append(output[1])

    handles = []
    try:
        for attention in attentions:
            handles.append(attention.register_forward_pre_hook(ask, with_kwargs=True))
            handles.append(attention.register_forward_hook(keep, with_kwargs=True))
        run()
    finally:
        for handle in handles:
            handle.remove()
    return maps


# --- Linear attention -------------------------------------------------------------------------


def elu_feature_map(x: Tensor) -> Tensor:
    """phi(x) = elu(x) + 1 > 0, the feature map of Katharopoulos et al. (2020)."""
    return F.elu(x) + 1


def linear_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    causal: bool = False,
    eps: float = 1e-6,
) -> Tensor:
    """Attention with the kernel phi(q) . phi(k) in place of exp(q . k / sqrt(D)), computed as
    phi(Q) (phi(K)^T V) in O(T D Dv) time instead of O(T S D).

    out_t = phi(q_t)^T sum_s phi(k_s) v_s^T / (phi(q_t)^T sum_s phi(k_s)); with `causal` the
    sums run over s <= t (cumulative sums).

    Shapes:
        query (..., T, D), key (..., S, D), value (..., S, Dv)  ->  (..., T, Dv)

    Book: 2.7 Efficient attention.
    """
    _check_qkv(query, key, value)
    if causal and query.shape[-2] != key.shape[-2]:
        raise ValueError(
            f"causal linear attention needs T == S, got {query.shape[-2]} and {key.shape[-2]}"
        )
    q, k = elu_feature_map(query), elu_feature_map(key)  # (..., T, D), (..., S, D)
    if causal:
        kv = torch.einsum("...sd,...se->...sde", k, value).cumsum(dim=-3)  # (..., T, D, Dv)
        numerator = torch.einsum("...td,...tde->...te", q, kv)  # (..., T, Dv)
        denominator = (q * k.cumsum(dim=-2)).sum(dim=-1, keepdim=True)  # (..., T, 1)
    else:
        kv = k.transpose(-2, -1) @ value  # (..., D, Dv)
        numerator = q @ kv  # (..., T, Dv)
        denominator = q @ k.sum(dim=-2).unsqueeze(-1)  # (..., T, 1)
    return numerator / (denominator + eps)
