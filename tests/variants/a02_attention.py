"""Right answers to Chapter 2's exercises, written as learners write them."""

SDP = "02_attention/01_scaled_dot_product.ipynb"
MH = "02_attention/02_multi_head.ipynb"

VARIANTS = {
    SDP: {
        "attention": {
            "loop-over-queries": """
def attention(q, k, v, mask=None):
    d_k = q.shape[-1]
    T, S = q.shape[-2], k.shape[-2]
    if mask is not None:
        mask = mask.expand(*q.shape[:-2], T, S)  # one row per query
    rows = []
    for t in range(T):
        scores_t = (k @ q[..., t, :, None]).squeeze(-1) / math.sqrt(d_k)  # (..., S)
        if mask is not None:
            scores_t = scores_t.masked_fill(~mask[..., t, :], float("-inf"))
        rows.append(torch.softmax(scores_t, dim=-1))
    weights = torch.stack(rows, dim=-2)  # (..., T, S)
    return weights @ v, weights
""",
            "einsum-finfo-min": """
import torch.nn.functional as F


def attention(q, k, v, mask=None):
    q = q / math.sqrt(q.size(-1))  # scale the queries first
    scores = torch.einsum("...td,...sd->...ts", q, k)
    if mask is not None:
        scores = scores.masked_fill(mask.logical_not(), torch.finfo(scores.dtype).min)
    weights = F.softmax(scores, dim=-1)
    output = torch.einsum("...ts,...sv->...tv", weights, v)
    return output, weights
""",
            "where-own-softmax": """
def softmax(x):
    x = x - x.amax(dim=-1, keepdim=True)  # for stability
    e = torch.exp(x)
    return e / e.sum(dim=-1, keepdim=True)


def attention(q, k, v, mask=None):
    print("q", tuple(q.shape), "k", tuple(k.shape), "v", tuple(v.shape))
    assert q.shape[-1] == k.shape[-1], "q and k need the same width"
    assert k.shape[-2] == v.shape[-2], "one value per key"
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = torch.where(mask, scores, float("-inf"))
    weights = softmax(scores)
    output = torch.matmul(weights, v)
    assert output.shape[-1] == v.shape[-1]
    return output, weights
""",
            "flatten-batch-loop": """
def attention(q, k, v, mask=None):
    *lead, T, D = q.shape
    S, Dv = k.shape[-2], v.shape[-1]
    q2, k2, v2 = q.reshape(-1, T, D), k.reshape(-1, S, D), v.reshape(-1, S, Dv)
    m2 = None if mask is None else mask.expand(*lead, T, S).reshape(-1, T, S)
    outputs, all_weights = [], []
    for i in range(q2.shape[0]):
        scores = q2[i] @ k2[i].T / D**0.5
        if m2 is not None:
            scores = scores.masked_fill(m2[i] == 0, -1e9)
        w = scores.softmax(dim=-1)
        all_weights.append(w)
        outputs.append(w @ v2[i])
    weights = torch.stack(all_weights).reshape(*lead, T, S)
    return torch.stack(outputs).reshape(*lead, T, Dv), weights
""",
        },
        "causal_mask": {
            "loop-rows": """
def causal_mask(T):
    mask = torch.zeros(T, T, dtype=torch.bool)
    for t in range(T):
        mask[t, : t + 1] = True  # query t sees keys 0..t
    return mask
""",
            "arange-compare": """
def causal_mask(T):
    rows = torch.arange(T).unsqueeze(1)  # (T, 1): the query t
    cols = torch.arange(T).unsqueeze(0)  # (1, T): the key s
    return cols <= rows
""",
            "tril-float-to-bool": """
def causal_mask(T):
    return torch.tril(torch.ones(T, T)).bool()
""",
            "not-triu": """
def causal_mask(T):
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    return ~future
""",
        },
        "sliding_window_mask": {
            "loop-rows": """
def sliding_window_mask(T, window):
    mask = torch.zeros((T, T), dtype=torch.bool)
    for t in range(T):
        start = max(0, t - window + 1)
        mask[t, start : t + 1] = True
    return mask
""",
            "tril-and-triu": """
def sliding_window_mask(T, window):
    ones = torch.ones(T, T, dtype=torch.bool)
    return torch.tril(ones) & torch.triu(ones, diagonal=1 - window)
""",
            "reuse-causal-mask": """
def sliding_window_mask(T, window):
    too_old = torch.ones(T, T, dtype=torch.bool).tril(diagonal=-window)  # t - s >= window
    return causal_mask(T) & ~too_old
""",
            "distance-logical-and": """
def sliding_window_mask(T, window):
    t = torch.arange(T).view(-1, 1)
    s = torch.arange(T).view(1, -1)
    distance = t - s
    return torch.logical_and(distance >= 0, distance <= window - 1)
""",
        },
        "combine_masks": {
            "unsqueeze-asserts": """
def combine_masks(attn_mask, padding_mask):
    B, S = padding_mask.shape
    T = attn_mask.shape[0]
    keys = padding_mask.unsqueeze(1).unsqueeze(2)  # (B, 1, 1, S)
    both = attn_mask.unsqueeze(0).unsqueeze(0) & keys  # (B, 1, T, S)
    print("combined mask:", tuple(both.shape))
    assert both.shape == (B, 1, T, S)
    return both
""",
            "loop-over-batch": """
def combine_masks(attn_mask, padding_mask):
    per_sequence = []
    for b in range(padding_mask.shape[0]):
        per_sequence.append(attn_mask & padding_mask[b])  # (T, S): a key row per query
    return torch.stack(per_sequence).unsqueeze(1)
""",
            "logical-and-reshape": """
def combine_masks(attn_mask, padding_mask):
    T, S = attn_mask.shape
    B = padding_mask.shape[0]
    return torch.logical_and(attn_mask.reshape(1, 1, T, S), padding_mask.reshape(B, 1, 1, S))
""",
            "multiply-ints": """
def combine_masks(attn_mask, padding_mask):
    allowed = attn_mask[None, None].int() * padding_mask[:, None, None].int()
    return allowed > 0
""",
        },
    },
    MH: {
        "split_heads": {
            "reshape-permute": """
def split_heads(x, n_heads):
    B, T, C = x.shape
    head_dim = C // n_heads
    return x.reshape(B, T, n_heads, head_dim).permute(0, 2, 1, 3)
""",
            "loop-slices-stack": """
def split_heads(x, n_heads):
    D = x.shape[-1] // n_heads
    heads = [x[:, :, h * D : (h + 1) * D] for h in range(n_heads)]  # each (B, T, D)
    return torch.stack(heads, dim=1)
""",
            "chunk-stack": """
def split_heads(x, n_heads):
    return torch.stack(torch.chunk(x, n_heads, dim=-1), dim=1)
""",
            "unflatten-contiguous": """
def split_heads(x, n_heads):
    assert x.shape[-1] % n_heads == 0, "C must be divisible by n_heads"
    return x.unflatten(-1, (n_heads, -1)).transpose(1, 2).contiguous()
""",
        },
        "merge_heads": {
            "permute-contiguous-view": """
def merge_heads(x):
    B, H, T, D = x.shape
    return x.permute(0, 2, 1, 3).contiguous().view(B, T, H * D)
""",
            "cat-heads": """
def merge_heads(x):
    return torch.cat([x[:, h] for h in range(x.shape[1])], dim=-1)
""",
            "fill-loop": """
def merge_heads(x):
    B, H, T, D = x.shape
    out = torch.empty(B, T, H * D, dtype=x.dtype, device=x.device)
    for h in range(H):
        out[:, :, h * D : (h + 1) * D] = x[:, h]
    return out
""",
            "transpose-flatten": """
def merge_heads(x):
    return x.transpose(1, 2).flatten(start_dim=2)
""",
        },
        "multi_head_attention": {
            "linear-float-mask": """
import torch.nn.functional as F


def multi_head_attention(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
    q = split_heads(F.linear(x_q, w_q), n_heads)
    k = split_heads(F.linear(x_kv, w_k), n_heads)
    v = split_heads(F.linear(x_kv, w_v), n_heads)
    bias = None
    if mask is not None:  # an additive mask: 0 where allowed, -inf elsewhere
        bias = torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, float("-inf"))
    heads = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return F.linear(merge_heads(heads), w_o)
""",
            "loop-over-heads": """
def multi_head_attention(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
    B, T, C = x_q.shape
    S = x_kv.shape[1]
    D = C // n_heads
    q = split_heads(x_q @ w_q.T, n_heads)
    k = split_heads(x_kv @ w_k.T, n_heads)
    v = split_heads(x_kv @ w_v.T, n_heads)
    if mask is not None:
        mask = mask.expand(B, n_heads, T, S)
    heads = []
    for h in range(n_heads):
        scores = q[:, h] @ k[:, h].transpose(-2, -1) / math.sqrt(D)  # (B, T, S)
        if mask is not None:
            scores = scores.masked_fill(~mask[:, h], float("-inf"))
        heads.append(torch.softmax(scores, dim=-1) @ v[:, h])  # (B, T, D)
    return merge_heads(torch.stack(heads, dim=1)) @ w_o.T
""",
            "einsum-scale-q": """
def multi_head_attention(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
    q = split_heads(torch.einsum("btc,oc->bto", x_q, w_q), n_heads)
    k = split_heads(torch.einsum("bsc,oc->bso", x_kv, w_k), n_heads)
    v = split_heads(torch.einsum("bsc,oc->bso", x_kv, w_v), n_heads)
    q = q / math.sqrt(q.shape[-1])
    scores = torch.einsum("bhtd,bhsd->bhts", q, k)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1)
    heads = torch.einsum("bhts,bhsd->bhtd", weights, v)
    return torch.einsum("btc,oc->bto", merge_heads(heads), w_o)
""",
            "matmul-asserts": """
def multi_head_attention(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
    B, T, C = x_q.shape
    assert C % n_heads == 0
    assert w_q.shape == w_k.shape == w_v.shape == w_o.shape == (C, C)
    Q = torch.matmul(x_q, w_q.t())
    K = torch.matmul(x_kv, w_k.t())
    V = torch.matmul(x_kv, w_v.t())
    Q, K, V = (split_heads(m, n_heads) for m in (Q, K, V))
    print("per head:", tuple(Q.shape), tuple(K.shape), tuple(V.shape))
    attended = torch.nn.functional.scaled_dot_product_attention(Q, K, V, attn_mask=mask)
    out = torch.matmul(merge_heads(attended), w_o.t())
    assert out.shape == (B, T, C)
    return out
""",
        },
        "linear_attention": {
            "einsum": """
import torch.nn.functional as F


def linear_attention(q, k, v):
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    kv = torch.einsum("...sd,...se->...de", phi_k, v)  # sum_s phi(k_s) v_s^T
    z = phi_k.sum(dim=-2)  # sum_s phi(k_s)
    numerator = torch.einsum("...td,...de->...te", phi_q, kv)
    denominator = torch.einsum("...td,...d->...t", phi_q, z)
    return numerator / (denominator.unsqueeze(-1) + 1e-6)
""",
            "own-phi-loop-queries": """
def phi(x):
    return torch.where(x > 0, x + 1, torch.exp(x))  # elu(x) + 1


def linear_attention(q, k, v):
    phi_k = phi(k)
    kv = phi_k.transpose(-2, -1) @ v  # (..., D, Dv), the same for every query
    z = phi_k.sum(dim=-2)  # (..., D)
    outputs = []
    for t in range(q.shape[-2]):
        phi_q = phi(q[..., t, :])  # (..., D)
        numerator = (phi_q.unsqueeze(-2) @ kv).squeeze(-2)  # (..., Dv)
        denominator = (phi_q * z).sum(dim=-1, keepdim=True)  # (..., 1)
        outputs.append(numerator / denominator)
    return torch.stack(outputs, dim=-2)
""",
            "accumulate-over-keys": """
def linear_attention(q, k, v):
    phi_q = torch.nn.functional.elu(q) + 1.0
    phi_k = torch.nn.functional.elu(k) + 1.0
    *lead, S, D = k.shape
    Dv = v.shape[-1]
    kv = torch.zeros(*lead, D, Dv, dtype=v.dtype, device=v.device)
    z = torch.zeros(*lead, D, dtype=k.dtype, device=k.device)
    for s in range(S):
        kv = kv + phi_k[..., s, :, None] * v[..., s, None, :]  # outer product
        z = z + phi_k[..., s, :]
    return (phi_q @ kv) / (phi_q @ z[..., None])
""",
            "from-import-functional": """
from torch.nn import functional as F


def linear_attention(q, k, v):
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    kv = phi_k.transpose(-2, -1) @ v  # (..., D, Dv)
    z = phi_k.sum(dim=-2, keepdim=True).transpose(-2, -1)  # (..., D, 1)
    return (phi_q @ kv) / (phi_q @ z)
""",
        },
    },
}

# Wrong answers, as learners write them: (source, text the failure must contain, or None).
MISTAKES = {
    SDP: {
        "attention": {
            "sqrt-value-width": (
                """
def attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(v.shape[-1])  # right only when Dv == D
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights
""",
                "value width",
            ),
            "mask-after-softmax": (
                """
def attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights * mask  # zeroes the masked weights, but the rest no longer sum to 1
    return weights @ v, weights
""",
                "after the softmax",
            ),
            "transpose-1-2": (
                """
def attention(q, k, v, mask=None):
    scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])  # right only for 3-D inputs
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights
""",
                "k.transpose(-2, -1)",
            ),
            "d-k-from-shape-2": (
                """
def attention(q, k, v, mask=None):
    d_k = q.shape[2]  # the width only for (B, T, D) inputs
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights
""",
                None,
            ),
            "mask-ignored": (
                """
def attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights
""",
                "the mask is not applied",
            ),
            "mask-fill-zero": (
                """
def attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(mask == 0, 0.0)
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights
""",
                "fill them with -inf",
            ),
        },
        "causal_mask": {
            "triu": (
                """
def causal_mask(T):
    return torch.triu(torch.ones(T, T, dtype=torch.bool))
""",
                "transposed (torch.triu)",
            ),
            "no-diagonal": (
                """
def causal_mask(T):
    return torch.ones(T, T, dtype=torch.bool).tril(diagonal=-1)
""",
                "the diagonal is missing",
            ),
            "float-mask": (
                """
def causal_mask(T):
    return torch.tril(torch.ones(T, T))
""",
                "a mask is boolean",
            ),
            "true-marks-future": (
                """
def causal_mask(T):
    return torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)  # nn.Transformer's way
""",
                "the mask is inverted",
            ),
        },
        "sliding_window_mask": {
            "one-too-many": (
                """
def sliding_window_mask(T, window):
    offset = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    return (offset >= 0) & (offset <= window)
""",
                "one too many",
            ),
            "not-causal": (
                """
def sliding_window_mask(T, window):
    offset = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    return offset.abs() < window
""",
                "the window must be causal",
            ),
            "leaves-out-self": (
                """
def sliding_window_mask(T, window):
    offset = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    return (offset > 0) & (offset <= window)
""",
                "leaves out t itself",
            ),
            "negative-slice-start": (
                """
def sliding_window_mask(T, window):
    mask = torch.zeros(T, T, dtype=torch.bool)
    for t in range(T):
        mask[t, t - window + 1 : t + 1] = True  # a negative start wraps: rows t < window - 1
    return mask
""",
                None,
            ),
        },
        "combine_masks": {
            "or-not-and": (
                """
def combine_masks(attn_mask, padding_mask):
    return attn_mask | padding_mask[:, None, None, :]
""",
                "combine with AND",
            ),
            "no-head-axis": (
                """
def combine_masks(attn_mask, padding_mask):
    return attn_mask & padding_mask[:, None, :]  # (B, T, S)
""",
                "keep a head axis",
            ),
            "padding-along-queries": (
                """
def combine_masks(attn_mask, padding_mask):
    return attn_mask & padding_mask[:, None, :, None]  # runs only when T == S
""",
                "over the queries",
            ),
            "padding-inverted": (
                """
def combine_masks(attn_mask, padding_mask):
    return attn_mask & ~padding_mask[:, None, None, :]
""",
                "not inverted",
            ),
        },
    },
    MH: {
        "split_heads": {
            "view-straight-to-bhtd": (
                """
def split_heads(x, n_heads):
    B, T, C = x.shape
    return x.view(B, n_heads, T, C // n_heads)
""",
                "the features are scrambled",
            ),
            "no-transpose": (
                """
def split_heads(x, n_heads):
    B, T, C = x.shape
    return x.view(B, T, n_heads, C // n_heads)
""",
                "the head axis comes before the tokens",
            ),
            "interleaved": (
                """
def split_heads(x, n_heads):
    B, T, C = x.shape
    return x.view(B, T, C // n_heads, n_heads).permute(0, 3, 1, 2)
""",
                "interleaved",
            ),
            "batch-of-one": (
                """
def split_heads(x, n_heads):
    _, T, C = x.shape
    return x.reshape(1, T, n_heads, C // n_heads).transpose(1, 2)  # as in the worked example
""",
                None,
            ),
        },
        "merge_heads": {
            "no-transpose": (
                """
def merge_heads(x):
    B, H, T, D = x.shape
    return x.reshape(B, T, H * D)
""",
                "heads merged in the wrong order",
            ),
            "interleaved": (
                """
def merge_heads(x):
    B, H, T, D = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, T, H * D)
""",
                "interleaved",
            ),
            "view-after-transpose": (
                """
def merge_heads(x):
    B, H, T, D = x.shape
    return x.transpose(1, 2).view(B, T, H * D)
""",
                "Use .reshape(...) instead",
            ),
            "unpack-order": (
                """
def merge_heads(x):
    B, T, H, D = x.shape  # the names of axes 1 and 2 swapped: right only when T == H
    return x.transpose(1, 2).reshape(B, T, H * D)
""",
                None,
            ),
            "batch-of-one": (
                """
def merge_heads(x):
    _, H, T, D = x.shape
    return x[0].transpose(0, 1).reshape(1, T, H * D)
""",
                None,
            ),
        },
        "multi_head_attention": {
            "weights-not-transposed": (
                """
def multi_head_attention(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
    q = split_heads(x_q @ w_q, n_heads)
    k = split_heads(x_kv @ w_k, n_heads)
    v = split_heads(x_kv @ w_v, n_heads)
    heads = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return merge_heads(heads) @ w_o
""",
                "x @ w.T",
            ),
            "scale-by-d-model": (
                """
def multi_head_attention(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
    C = x_q.shape[-1]
    q = split_heads(x_q @ w_q.T, n_heads)
    k = split_heads(x_kv @ w_k.T, n_heads)
    v = split_heads(x_kv @ w_v.T, n_heads)
    scores = q @ k.transpose(-2, -1) / math.sqrt(C)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    heads = torch.softmax(scores, dim=-1) @ v
    return merge_heads(heads) @ w_o.T
""",
                "not by 1/sqrt(d_model)",
            ),
            "mask-as-causal-flag": (
                """
def multi_head_attention(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
    q = split_heads(x_q @ w_q.T, n_heads)
    k = split_heads(x_kv @ w_k.T, n_heads)
    v = split_heads(x_kv @ w_v.T, n_heads)
    causal = mask is not None
    heads = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return merge_heads(heads) @ w_o.T
""",
                "used as a flag meaning 'causal'",
            ),
            "view-kv-with-T": (
                """
def multi_head_attention(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
    B, T, C = x_q.shape
    D = C // n_heads
    q = (x_q @ w_q.T).view(B, T, n_heads, D).transpose(1, 2)
    k = (x_kv @ w_k.T).view(B, T, n_heads, D).transpose(1, 2)  # right only when S == T
    v = (x_kv @ w_v.T).view(B, T, n_heads, D).transpose(1, 2)
    heads = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return merge_heads(heads) @ w_o.T
""",
                None,
            ),
            "kv-from-x-q": (
                """
def multi_head_attention(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
    q = split_heads(x_q @ w_q.T, n_heads)
    k = split_heads(x_q @ w_k.T, n_heads)  # right only for self-attention
    v = split_heads(x_q @ w_v.T, n_heads)
    heads = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return merge_heads(heads) @ w_o.T
""",
                "k and v from x_kv",
            ),
            "no-scale": (
                """
def multi_head_attention(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
    q = split_heads(x_q @ w_q.T, n_heads)
    k = split_heads(x_kv @ w_k.T, n_heads)
    v = split_heads(x_kv @ w_v.T, n_heads)
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return merge_heads(torch.softmax(scores, dim=-1) @ v) @ w_o.T
""",
                "the scores are not scaled",
            ),
            "mask-unsqueezed-for-heads": (
                """
def multi_head_attention(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
    q = split_heads(x_q @ w_q.T, n_heads)
    k = split_heads(x_kv @ w_k.T, n_heads)
    v = split_heads(x_kv @ w_v.T, n_heads)
    if mask is not None:
        mask = mask.unsqueeze(1)  # "add the head axis"
    heads = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return merge_heads(heads) @ w_o.T
""",
                "use it as given",
            ),
        },
        "linear_attention": {
            "relu-feature-map": (
                """
def linear_attention(q, k, v):
    phi_q, phi_k = torch.relu(q), torch.relu(k)
    kv = phi_k.transpose(-2, -1) @ v
    normalizer = phi_q @ phi_k.sum(dim=-2).unsqueeze(-1)
    return (phi_q @ kv) / (normalizer + 1e-6)
""",
                "not relu",
            ),
            "no-normalizer": (
                """
def linear_attention(q, k, v):
    phi_q = torch.nn.functional.elu(q) + 1
    phi_k = torch.nn.functional.elu(k) + 1
    return phi_q @ (phi_k.transpose(-2, -1) @ v)
""",
                "the normalizer is missing",
            ),
            "attention-matrix-first": (
                """
def linear_attention(q, k, v):
    phi_q = torch.nn.functional.elu(q) + 1
    phi_k = torch.nn.functional.elu(k) + 1
    scores = phi_q @ phi_k.transpose(-2, -1)  # (T, S): the quadratic order
    return (scores @ v) / scores.sum(dim=-1, keepdim=True)
""",
                "never forms the T x S attention matrix",
            ),
            "mean-normalizer": (
                """
def linear_attention(q, k, v):
    phi_q = torch.nn.functional.elu(q) + 1
    phi_k = torch.nn.functional.elu(k) + 1
    kv = phi_k.transpose(-2, -1) @ v
    normalizer = phi_q @ phi_k.mean(dim=-2).unsqueeze(-1)
    return (phi_q @ kv) / (normalizer + 1e-6)
""",
                None,
            ),
            "elu-without-plus-one": (
                """
def linear_attention(q, k, v):
    phi_q = torch.nn.functional.elu(q)
    phi_k = torch.nn.functional.elu(k)
    kv = phi_k.transpose(-2, -1) @ v
    normalizer = phi_q @ phi_k.sum(dim=-2).unsqueeze(-1)
    return (phi_q @ kv) / (normalizer + 1e-6)
""",
                "elu alone is negative",
            ),
            "transpose-1-2": (
                """
def linear_attention(q, k, v):
    phi_q = torch.nn.functional.elu(q) + 1
    phi_k = torch.nn.functional.elu(k) + 1
    kv = phi_k.transpose(1, 2) @ v  # right only for 3-D inputs
    normalizer = phi_q @ phi_k.sum(dim=-2).unsqueeze(-1)
    return (phi_q @ kv) / (normalizer + 1e-6)
""",
                "not k.transpose(1, 2)",
            ),
        },
    },
}
