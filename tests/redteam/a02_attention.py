"""Red-team submissions of Chapter 2 (solutions/02_attention)."""

from __future__ import annotations

from tests.redteam import Case

S, M = "01_scaled_dot_product", "02_multi_head"

# --- right answers, written differently -------------------------------------------------------

ATTENTION_EINSUM = """
def attention(q, k, v, mask=None):
    scores = torch.einsum("...td,...sd->...ts", q, k) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = torch.where(mask, scores, torch.finfo(scores.dtype).min)
    e = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
    weights = e / e.sum(dim=-1, keepdim=True)
    return torch.einsum("...ts,...se->...te", weights, v), weights
"""

CAUSAL_COMPARISON = """
def causal_mask(T):
    positions = torch.arange(T)
    return positions.unsqueeze(1) >= positions.unsqueeze(0)
"""

WINDOW_TRIANGLES = """
def sliding_window_mask(T, window):
    ones = torch.ones(T, T, dtype=torch.bool)
    return ones.tril() & ~ones.tril(-window)
"""

COMBINE_LOGICAL_AND = """
def combine_masks(attn_mask, padding_mask):
    keys = padding_mask.unsqueeze(1).unsqueeze(2)  # (B, 1, 1, S)
    return torch.logical_and(attn_mask.unsqueeze(0).unsqueeze(0), keys)
"""

SPLIT_UNFLATTEN = """
def split_heads(x, n_heads):
    return x.unflatten(-1, (n_heads, -1)).movedim(2, 1)  # (B, H, T, D)
"""

MERGE_CAT = """
def merge_heads(x):
    return torch.cat(x.unbind(dim=1), dim=-1)  # (B, T, H * D)
"""

MHA_WRITTEN_OUT = """
def multi_head_attention(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
    project = torch.nn.functional.linear
    q = split_heads(project(x_q, w_q), n_heads)  # (B, H, T, D)
    k = split_heads(project(x_kv, w_k), n_heads)  # (B, H, S, D)
    v = split_heads(project(x_kv, w_v), n_heads)  # (B, H, S, D)
    scores = q @ k.mT / math.sqrt(q.shape[-1])  # (B, H, T, S)
    if mask is not None:
        scores = scores.masked_fill(mask.logical_not(), float("-inf"))
    return project(merge_heads(scores.softmax(dim=-1) @ v), w_o)
"""

LINEAR_EINSUM = """
def linear_attention(q, k, v):
    phi_q = torch.where(q > 0, q + 1, torch.exp(q))  # elu(x) + 1
    phi_k = torch.where(k > 0, k + 1, torch.exp(k))
    kv = torch.einsum("...sd,...se->...de", phi_k, v)  # (..., D, Dv)
    z = torch.einsum("...td,...d->...t", phi_q, phi_k.sum(dim=-2)).unsqueeze(-1)  # (..., T, 1)
    return torch.einsum("...td,...de->...te", phi_q, kv) / (z + 1e-6)
"""

# --- typical mistakes -------------------------------------------------------------------------

ATTENTION_SQRT_DV = """
def attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(v.shape[-1])  # the value width, not the key's
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights
"""

ATTENTION_MASK_AFTER = """
def attention(q, k, v, mask=None):
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    if mask is not None:
        weights = weights * mask
    return weights @ v, weights
"""

CAUSAL_NO_DIAGONAL = """
def causal_mask(T):
    return torch.ones(T, T, dtype=torch.bool).tril(diagonal=-1)
"""

CAUSAL_TRIU = """
def causal_mask(T):
    return torch.triu(torch.ones(T, T, dtype=torch.bool))
"""

WINDOW_ONE_TOO_MANY = """
def sliding_window_mask(T, window):
    offset = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    return (offset >= 0) & (offset <= window)
"""

WINDOW_NOT_CAUSAL = """
def sliding_window_mask(T, window):
    offset = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    return offset.abs() < window
"""

COMBINE_OR = """
def combine_masks(attn_mask, padding_mask):
    return attn_mask | padding_mask[:, None, None, :]
"""

COMBINE_ALONG_QUERIES = """
def combine_masks(attn_mask, padding_mask):
    return attn_mask & padding_mask[:, None, :, None]
"""

SPLIT_INTERLEAVED = """
def split_heads(x, n_heads):
    B, T, C = x.shape
    return x.view(B, T, C // n_heads, n_heads).permute(0, 3, 1, 2)  # head h: h, h + H, ...
"""

MERGE_INTERLEAVED = """
def merge_heads(x):
    B, H, T, D = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, T, H * D)
"""

MERGE_WRONG_ORDER = """
def merge_heads(x):
    B, H, T, D = x.shape
    return x.reshape(B, T, H * D)
"""

MHA_SCALE_BY_C = """
def multi_head_attention(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
    q = split_heads(x_q @ w_q.T, n_heads)
    k = split_heads(x_kv @ w_k.T, n_heads)
    v = split_heads(x_kv @ w_v.T, n_heads)
    heads = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=1 / math.sqrt(x_q.shape[-1])
    )
    return merge_heads(heads) @ w_o.T
"""

LINEAR_RELU = """
def linear_attention(q, k, v):
    phi_q, phi_k = torch.relu(q), torch.relu(k)
    normalizer = phi_q @ phi_k.sum(dim=-2).unsqueeze(-1)
    return (phi_q @ (phi_k.transpose(-2, -1) @ v)) / (normalizer + 1e-6)
"""

LINEAR_NO_NORMALIZER = """
def linear_attention(q, k, v):
    phi_q = torch.nn.functional.elu(q) + 1
    phi_k = torch.nn.functional.elu(k) + 1
    return phi_q @ (phi_k.transpose(-2, -1) @ v)
"""

LINEAR_IDENTITY = """
def linear_attention(q, k, v):
    normalizer = q @ k.sum(dim=-2).unsqueeze(-1)
    return (q @ (k.transpose(-2, -1) @ v)) / (normalizer + 1e-6)
"""

# --- exploits ---------------------------------------------------------------------------------


ATTENTION_TORCH_OPS = """
def attention(q, k, v, mask=None):
    return torch.ops.aten._scaled_dot_product_attention_math(q, k, v, attn_mask=mask)
"""

CAUSAL_TRANSFORMER = """
def causal_mask(T):
    return torch.nn.Transformer.generate_square_subsequent_mask(T) == 0
"""


MHA_CAUSAL_FLAG = """
def multi_head_attention(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
    q = split_heads(x_q @ w_q.T, n_heads)
    k = split_heads(x_kv @ w_k.T, n_heads)
    v = split_heads(x_kv @ w_v.T, n_heads)
    heads = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=mask is not None)
    return merge_heads(heads) @ w_o.T
"""

LINEAR_QUADRATIC = """
def linear_attention(q, k, v):
    phi_q = torch.nn.functional.elu(q) + 1
    phi_k = torch.nn.functional.elu(k) + 1
    weights = phi_q @ phi_k.transpose(-2, -1)  # (..., T, S): the matrix it should never build
    return (weights @ v) / (weights.sum(dim=-1, keepdim=True) + 1e-6)
"""

MHA_TORCH_MODULE = """
def multi_head_attention(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
    C = x_q.shape[-1]
    module = torch.nn.MultiheadAttention(C, n_heads, bias=False, batch_first=True)
    module = module.to(x_q.dtype)
    with torch.no_grad():
        module.in_proj_weight.copy_(torch.cat([w_q, w_k, w_v]))
        module.out_proj.weight.copy_(w_o)
    return module(x_q, x_kv, x_kv, attn_mask=None if mask is None else ~mask)[0]
"""

MHA_FUNCTIONAL = """
def multi_head_attention(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
    out, _ = torch.nn.functional.multi_head_attention_forward(
        x_q.transpose(0, 1), x_kv.transpose(0, 1), x_kv.transpose(0, 1), x_q.shape[-1],
        n_heads, torch.cat([w_q, w_k, w_v]), None, None, None, False, 0.0, w_o, None,
        need_weights=False, attn_mask=None if mask is None else ~mask,
    )
    return out.transpose(0, 1)
"""

MHA_IMPORTLIB = """
import importlib.util

import tutorlib.attention

_spec = importlib.util.spec_from_file_location("my_attention", tutorlib.attention.__file__)
_mine = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mine)


def multi_head_attention(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
    module = _mine.MultiHeadAttention(x_q.shape[-1], n_heads, bias=False).to(x_q.dtype)
    with torch.no_grad():
        module.in_proj_weight.copy_(torch.cat([w_q, w_k, w_v]))
        module.out_proj.weight.copy_(w_o)
    return module(x_q, x_kv, x_kv, attn_mask=mask)[0]
"""

MHA_PRIVATE_REFERENCE = """
def multi_head_attention(x_q, x_kv, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return checks._mha(x_q, x_kv, (w_q, w_k, w_v, w_o), n_heads, mask)
"""


CASES = [
    Case(
        "variants-sdpa",
        "correct",
        S,
        {
            "attention": ATTENTION_EINSUM,
            "causal_mask": CAUSAL_COMPARISON,
            "sliding_window_mask": WINDOW_TRIANGLES,
            "combine_masks": COMBINE_LOGICAL_AND,
        },
        "einsum, torch.where and a softmax by hand; masks by comparison, from triangles, "
        "logical_and",
    ),
    Case(
        "variants-heads",
        "correct",
        M,
        {
            "split_heads": SPLIT_UNFLATTEN,
            "merge_heads": MERGE_CAT,
            "multi_head_attention": MHA_WRITTEN_OUT,
            "linear_attention": LINEAR_EINSUM,
        },
        "unflatten/movedim, cat of the heads, attention written out, einsum and torch.where",
    ),
    Case(
        "mistakes-sdpa",
        "mistake",
        S,
        {
            "attention": ATTENTION_SQRT_DV,
            "causal_mask": CAUSAL_NO_DIAGONAL,
            "sliding_window_mask": WINDOW_ONE_TOO_MANY,
            "combine_masks": COMBINE_OR,
        },
        "scaled by sqrt(Dv); no diagonal; a window one too wide; OR instead of AND",
        lose={
            "test_attention": "square root of the value width",
            "test_causal_mask": "diagonal is missing",
            "test_sliding_window_mask": "one too many",
            "test_combine_masks": "combine with AND",
        },
    ),
    Case(
        "mistakes-masks",
        "mistake",
        S,
        {
            "attention": ATTENTION_MASK_AFTER,
            "causal_mask": CAUSAL_TRIU,
            "sliding_window_mask": WINDOW_NOT_CAUSAL,
            "combine_masks": COMBINE_ALONG_QUERIES,
        },
        "mask after the softmax; a transposed causal mask; a window that is not causal; "
        "padding broadcast along the queries",
        lose={
            "test_attention": "mask is applied after the softmax",
            "test_causal_mask": "transposed (torch.triu)",
            "test_sliding_window_mask": "the window must be causal",
            "test_combine_masks": "over the queries, not along them",
        },
    ),
    Case(
        "mistakes-interleaved",
        "mistake",
        M,
        {
            "split_heads": SPLIT_INTERLEAVED,
            "merge_heads": MERGE_INTERLEAVED,
            "linear_attention": LINEAR_RELU,
        },
        "interleaved heads in split and merge (and so in multi-head attention); relu features",
        lose={
            "test_split_heads": "heads are interleaved",
            "test_merge_heads": "heads are interleaved",
            "test_multi_head_attention": "heads are interleaved",
            "test_linear_attention": "not relu",
        },
    ),
    Case(
        "mistakes-mha",
        "mistake",
        M,
        {"multi_head_attention": MHA_SCALE_BY_C, "linear_attention": LINEAR_NO_NORMALIZER},
        "scores scaled by sqrt(d_model); no normalizer",
        lose={
            "test_multi_head_attention": "not by 1/sqrt(d_model)",
            "test_linear_attention": "normalizer is missing",
        },
    ),
    Case(
        "mistakes-merge",
        "mistake",
        M,
        {"merge_heads": MERGE_WRONG_ORDER, "linear_attention": LINEAR_IDENTITY},
        "heads merged without moving the head axis (and so in multi-head attention); no "
        "feature map",
        lose={
            "test_merge_heads": "heads merged in the wrong order",
            "test_multi_head_attention": "heads merged in the wrong order",
            "test_linear_attention": "apply the feature map",
        },
    ),
    Case(
        "torch-ops",
        "exploit",
        S,
        {"attention": ATTENTION_TORCH_OPS},
        "a private entry point of the same operator (torch.ops.aten's math kernel, which "
        "returns the weights too)",
        lose={"test_attention": "Not allowed in this exercise"},
        flagged=("attention",),
    ),
    Case(
        "other-op",
        "exploit",
        S,
        {"causal_mask": CAUSAL_TRANSFORMER},
        "another public function computing the same (nn.Transformer's square subsequent mask)",
        lose={"test_causal_mask": "Not allowed in this exercise"},
    ),
    Case(
        "mask-as-causal-flag",
        "exploit",
        M,
        {"multi_head_attention": MHA_CAUSAL_FLAG},
        "used to pass: the mask argument read as a flag meaning 'causal' (the old hidden "
        "tests passed causal masks only)",
        lose={"test_multi_head_attention": "flag meaning 'causal'"},
    ),
    Case(
        "quadratic-linear-attention",
        "exploit",
        M,
        {"linear_attention": LINEAR_QUADRATIC},
        "used to pass: linear attention through the T x S matrix (right values, quadratic cost)",
        lose={"test_linear_attention": "never forms the T x S attention matrix"},
    ),
    Case(
        "torch-module",
        "exploit",
        M,
        {"multi_head_attention": MHA_TORCH_MODULE},
        "torch's nn.MultiheadAttention holding the given weights",
        lose={"test_multi_head_attention": "Not allowed in this exercise"},
    ),
    Case(
        "functional-mha",
        "exploit",
        M,
        {"multi_head_attention": MHA_FUNCTIONAL},
        "another public op computing the same (F.multi_head_attention_forward)",
        lose={"test_multi_head_attention": "Not allowed in this exercise"},
    ),
    Case(
        "importlib-copy",
        "exploit",
        M,
        {"multi_head_attention": MHA_IMPORTLIB},
        "a fresh copy of the tutorlib module (importlib), its MultiHeadAttention",
        lose={"test_multi_head_attention": "Not allowed in this exercise"},
        flagged=("multi_head_attention",),
    ),
    Case(
        "private-mha",
        "exploit",
        M,
        {"multi_head_attention": MHA_PRIVATE_REFERENCE},
        "the check module's private multi-head reference",
        lose={"test_multi_head_attention": "Not allowed in this exercise"},
        flagged=("multi_head_attention",),
    ),
]
