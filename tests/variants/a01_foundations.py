"""Right answers to Chapter 1's exercises, written as learners write them."""

P = "01_foundations/01_positions_and_norms.ipynb"
B = "01_foundations/02_transformer_block.ipynb"

VARIANTS = {
    P: {
        "sinusoidal_encoding": {
            "loops": """
def sinusoidal_encoding(context_length, d_model):
    rows = []
    for pos in range(context_length):
        row = []
        for i in range(0, d_model, 2):
            angle = pos / (10000 ** (i / d_model))
            row.append(math.sin(angle))
            row.append(math.cos(angle))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float32).reshape(context_length, d_model)
""",
            "stack-interleave": """
def sinusoidal_encoding(context_length: int, d_model: int) -> torch.Tensor:
    t = torch.arange(context_length, dtype=torch.float32)
    freqs = 1.0 / (10000 ** (torch.arange(0, d_model, 2, dtype=torch.float32) / d_model))
    angles = torch.outer(t, freqs)  # (T, C/2)
    # stacking on a new last axis and flattening interleaves sin, cos, sin, cos, ...
    pe = torch.stack([angles.sin(), angles.cos()], dim=-1)  # (T, C/2, 2)
    return pe.reshape(context_length, d_model)
""",
            "where-phase-shift": """
def sinusoidal_encoding(context_length, d_model):
    cols = torch.arange(d_model)
    pair = torch.div(cols, 2, rounding_mode="floor")  # i for columns 2i and 2i+1
    inv_freq = torch.pow(10000.0, -2.0 * pair.double() / d_model)  # (C,)
    angles = torch.arange(context_length).double()[:, None] * inv_freq[None, :]  # (T, C)
    # cos(a) = sin(a + pi/2): shift the odd columns by a quarter turn
    shifted = torch.where(cols % 2 == 1, angles + math.pi / 2, angles)
    return torch.sin(shifted).to(torch.float32)
""",
            "exp-log-prints": """
def sinusoidal_encoding(context_length, d_model):
    assert d_model % 2 == 0, "d_model must be even"
    position = torch.arange(0, context_length).unsqueeze(1).float()
    div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
    print("position", position.shape, "div_term", div_term.shape)
    pe = torch.zeros(context_length, d_model)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    print("pe", pe.shape, pe.dtype)
    return pe
""",
        },
        "embed": {
            "loops": """
def embed(tokens, table, positions):
    batch, seq_len = tokens.shape
    d_model = table.shape[1]
    scale = d_model ** 0.5
    out = []
    for b in range(batch):
        rows = []
        for t in range(seq_len):
            rows.append(table[tokens[b, t]] * scale + positions[t])
        out.append(torch.stack(rows))
    return torch.stack(out)
""",
            "one-hot-matmul": """
import torch.nn.functional as F


def embed(tokens, table, positions):
    V, C = table.shape
    one_hot = F.one_hot(tokens, num_classes=V).to(table.dtype)  # (B, T, V)
    looked_up = one_hot @ table  # (B, T, C)
    return looked_up * math.sqrt(C) + positions[: tokens.shape[1]].unsqueeze(0)
""",
            "index-select-asserts": """
def embed(tokens, table, positions):
    B, T = tokens.shape
    V, C = table.shape
    assert positions.shape[0] >= T and positions.shape[1] == C
    flat = table.index_select(0, tokens.reshape(-1))  # (B*T, C)
    x = flat.view(B, T, C) * torch.sqrt(torch.tensor(C, dtype=table.dtype))
    pos = positions.narrow(0, 0, T)  # (T, C)
    print("x", tuple(x.shape), "pos", tuple(pos.shape))
    out = x + pos
    assert out.shape == (B, T, C)
    return out
""",
            "gather": """
def embed(tokens, table, positions):
    B, T = tokens.shape
    V, C = table.shape
    idx = tokens.unsqueeze(-1).expand(B, T, C)  # (B, T, C)
    rows = torch.gather(table.unsqueeze(0).expand(B, V, C), 1, idx)  # (B, T, C)
    return positions[:T] + math.sqrt(C) * rows
""",
        },
        "layer_norm": {
            "var-mean-rsqrt": """
def layer_norm(x, weight, bias, eps=1e-5):
    var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)
    return weight * ((x - mean) * torch.rsqrt(var + eps)) + bias
""",
            "row-loop": """
def layer_norm(x, weight, bias, eps=1e-5):
    C = x.shape[-1]
    rows = x.reshape(-1, C)
    out = []
    for row in rows:
        mu = row.sum() / C
        centred = row - mu
        var = (centred * centred).sum() / C
        out.append(centred / (var + eps) ** 0.5 * weight + bias)
    return torch.stack(out).reshape(x.shape)
""",
            "einsum-helper-asserts": '''
def _stats(x):
    """Mean and biased variance over the last dimension, kept for broadcasting."""
    C = x.shape[-1]
    mu = x.sum(dim=-1, keepdim=True) / C
    d = x - mu
    var = torch.einsum("...c,...c->...", d, d).unsqueeze(-1) / C
    return mu, var


def layer_norm(x, weight, bias, eps=1e-5):
    assert weight.shape == bias.shape == x.shape[-1:], (weight.shape, x.shape)
    mu, var = _stats(x)
    assert mu.shape == var.shape == (*x.shape[:-1], 1)
    std = torch.sqrt(var + eps)
    x_hat = (x - mu) / std
    return x_hat * weight + bias
''',
            "std-from-var": """
def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, unbiased=False)
    normed = (x - mean).div(torch.sqrt(var.add(eps)))
    return torch.addcmul(bias, normed, weight)
""",
        },
    },
    B: {
        "feed_forward": {
            "einsum-clamp": """
def feed_forward(x, w1, b1, w2, b2):
    h = torch.einsum("...c,fc->...f", x, w1) + b1  # (..., d_ff)
    h = h.clamp(min=0)
    return torch.einsum("...f,cf->...c", h, w2) + b2  # (..., C)
""",
            "matmul-mask": """
def feed_forward(x, w1, b1, w2, b2):
    pre = torch.matmul(x, w1.transpose(0, 1)) + b1
    hidden = pre * (pre > 0)  # ReLU as a mask
    return torch.matmul(hidden, w2.transpose(0, 1)) + b2
""",
            "row-loop": """
def feed_forward(x, w1, b1, w2, b2):
    C = x.shape[-1]
    flat = x.reshape(-1, C)
    outs = []
    for v in flat:  # one position at a time: the network is position-wise
        h = torch.maximum(w1 @ v + b1, torch.zeros_like(b1))
        outs.append(w2 @ h + b2)
    return torch.stack(outs).reshape(x.shape)
""",
            "helper-where": '''
import torch.nn.functional as F


def affine(v, weight, bias):
    """What nn.Linear computes, from its stored weight (out, in)."""
    return v @ weight.t() + bias


def feed_forward(x, w1, b1, w2, b2):
    print("x", tuple(x.shape), "w1", tuple(w1.shape), "w2", tuple(w2.shape))
    h = affine(x, w1, b1)
    h = torch.where(h > 0, h, torch.zeros_like(h))
    assert torch.equal(h, F.relu(h))
    out = affine(h, w2, b2)
    assert out.shape == x.shape
    return out
''',
            "from-torch-nn-import-functional": """
from torch.nn import functional as F


def feed_forward(x, w1, b1, w2, b2):
    hidden = F.relu(x @ w1.T + b1)  # (..., d_ff)
    return hidden @ w2.T + b2  # (..., C)
""",
            "F-alias-assignment": """
F = nn.functional


def feed_forward(x, w1, b1, w2, b2):
    hidden = F.relu(torch.matmul(x, w1.mT) + b1)  # (..., d_ff)
    return torch.matmul(hidden, w2.mT) + b2  # (..., C)
""",
        },
        "residuals": {
            "named-steps": """
def post_norm_residual(x, sublayer, norm):
    y = sublayer(x)
    summed = x + y
    return norm(summed)


def pre_norm_residual(x, sublayer, norm):
    h = norm(x)
    y = sublayer(h)
    return x + y
""",
            "add-methods": """
def post_norm_residual(x, sublayer, norm):
    return norm(torch.add(sublayer(x), x))


def pre_norm_residual(x, sublayer, norm):
    return sublayer(norm(x)).add(x)
""",
            "shared-helper": '''
def residual(x, fn):
    """The skip connection around fn."""
    return x + fn(x)


def post_norm_residual(x, sublayer, norm):
    return norm(residual(x, sublayer))


def pre_norm_residual(x, sublayer, norm):
    return residual(x, lambda h: sublayer(norm(h)))
''',
            "inplace-asserts": """
def post_norm_residual(x, sublayer, norm):
    out = sublayer(x)
    assert out.shape == x.shape, (out.shape, x.shape)
    out += x  # adds into the sublayer's fresh output, not into x
    return norm(out)


def pre_norm_residual(x, sublayer, norm):
    out = sublayer(norm(x))
    assert out.shape == x.shape, (out.shape, x.shape)
    out += x
    print("pre-norm residual:", tuple(out.shape))
    return out
""",
        },
        "post_norm_layer": {
            "block-methods": '''
class PostNormEncoderLayer(nn.Module):
    """Post-norm encoder layer. Shapes: x (B, T, C), padding_mask (B, T) or None -> (B, T, C)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def _sa_block(self, x, key_padding_mask):
        out = self.self_attn(
            query=x, key=x, value=x, key_padding_mask=key_padding_mask, need_weights=False
        )
        return out[0]

    def _ff_block(self, x):
        return self.linear2(self.linear1(x).relu())

    def forward(self, x, padding_mask=None):
        kpm = padding_mask.logical_not() if padding_mask is not None else None
        x = self.norm1(x + self._sa_block(x, kpm))
        x = self.norm2(x + self._ff_block(x))
        return x
''',
            "reuse-earlier-answers": '''
class PostNormEncoderLayer(nn.Module):
    """Post-norm encoder layer. Shapes: x (B, T, C), padding_mask (B, T) or None -> (B, T, C)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x, padding_mask=None):
        # reuse exercises 1 and 2 of this notebook
        ignore = None if padding_mask is None else padding_mask == 0

        def attention(h):
            return self.self_attn(h, h, h, key_padding_mask=ignore, need_weights=False)[0]

        def ffn(h):
            l1, l2 = self.linear1, self.linear2
            return feed_forward(h, l1.weight, l1.bias, l2.weight, l2.bias)

        x = post_norm_residual(x, attention, self.norm1)
        return post_norm_residual(x, ffn, self.norm2)
''',
            "float-mask-weights": '''
import torch.nn.functional as F


class PostNormEncoderLayer(nn.Module):
    """Post-norm encoder layer. Shapes: x (B, T, C), padding_mask (B, T) or None -> (B, T, C)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x, padding_mask=None):
        mask = None
        if padding_mask is not None:
            # an additive mask: 0 for real tokens, -inf for padding
            mask = torch.zeros(padding_mask.shape, dtype=x.dtype, device=x.device)
            mask = mask.masked_fill(~padding_mask, float("-inf"))
        attn_out, attn_weights = self.self_attn(x, x, x, key_padding_mask=mask)
        x = self.norm1(attn_out + x)
        ff_out = self.linear2(F.relu(self.linear1(x)))
        x = self.norm2(ff_out + x)
        return x
''',
            "loop-prints": '''
class PostNormEncoderLayer(nn.Module):
    """Post-norm encoder layer. Shapes: x (B, T, C), padding_mask (B, T) or None -> (B, T, C)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        if padding_mask is not None:
            assert padding_mask.shape == (B, T) and padding_mask.dtype == torch.bool
            padding_mask = torch.logical_not(padding_mask)  # True = ignore, as MHA wants
        sublayers = [
            (lambda h: self.self_attn(h, h, h, padding_mask, False)[0], self.norm1),
            (lambda h: self.linear2(torch.clamp(self.linear1(h), min=0)), self.norm2),
        ]
        for sublayer, norm in sublayers:
            x = norm(x + sublayer(x))
            print("after sublayer:", tuple(x.shape))
        assert x.shape == (B, T, C)
        return x
''',
        },
        "pre_norm_layer": {
            "block-methods": '''
class PreNormEncoderLayer(nn.Module):
    """Pre-norm encoder layer. Shapes: x (B, T, C), padding_mask (B, T) or None -> (B, T, C)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def _sa_block(self, x, key_padding_mask):
        return self.self_attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)[0]

    def _ff_block(self, x):
        return self.linear2(torch.relu(self.linear1(x)))

    def forward(self, x, padding_mask=None):
        kpm = padding_mask.logical_not() if padding_mask is not None else None
        x = x + self._sa_block(self.norm1(x), kpm)
        x = x + self._ff_block(self.norm2(x))
        return x
''',
            "reuse-earlier-answers": '''
class PreNormEncoderLayer(nn.Module):
    """Pre-norm encoder layer. Shapes: x (B, T, C), padding_mask (B, T) or None -> (B, T, C)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x, padding_mask=None):
        ignore = None if padding_mask is None else ~padding_mask
        attention = lambda h: self.self_attn(h, h, h, key_padding_mask=ignore)[0]  # noqa: E731
        x = pre_norm_residual(x, attention, self.norm1)
        w = (self.linear1.weight, self.linear1.bias, self.linear2.weight, self.linear2.bias)
        return pre_norm_residual(x, lambda h: feed_forward(h, *w), self.norm2)
''',
            "float-mask-positional": '''
class PreNormEncoderLayer(nn.Module):
    """Pre-norm encoder layer. Shapes: x (B, T, C), padding_mask (B, T) or None -> (B, T, C)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x, padding_mask=None):
        if padding_mask is None:
            key_mask = None
        else:
            key_mask = torch.where(padding_mask, 0.0, float("-inf")).to(x.dtype)
        normed = self.norm1(x)
        attn_out = self.self_attn(normed, normed, normed, key_mask, False)[0]
        h = x + attn_out
        hidden = self.linear1(self.norm2(h))
        hidden = hidden * (hidden > 0)
        return h + self.linear2(hidden)
''',
            "loop-prints": '''
class PreNormEncoderLayer(nn.Module):
    """Pre-norm encoder layer. Shapes: x (B, T, C), padding_mask (B, T) or None -> (B, T, C)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def attend(self, h, ignore):
        out, _ = self.self_attn(h, h, h, key_padding_mask=ignore, need_weights=False)
        return out

    def ffn(self, h):
        return self.linear2(nn.functional.relu(self.linear1(h)))

    def forward(self, x, padding_mask=None):
        ignore = None if padding_mask is None else (padding_mask == False)  # noqa: E712
        print("input", tuple(x.shape))
        for norm, block in [(self.norm1, lambda h: self.attend(h, ignore)), (self.norm2, self.ffn)]:
            update = block(norm(x))
            assert update.shape == x.shape
            x = x + update
        print("output", tuple(x.shape))
        return x
''',
        },
        "parameter_count": {
            "shape-list": """
def encoder_layer_parameter_count(d_model, d_ff):
    shapes = [
        (d_model, d_model), (d_model,),  # W_Q, b_Q
        (d_model, d_model), (d_model,),  # W_K, b_K
        (d_model, d_model), (d_model,),  # W_V, b_V
        (d_model, d_model), (d_model,),  # W_O, b_O
        (d_ff, d_model), (d_ff,),  # linear1
        (d_model, d_ff), (d_model,),  # linear2
        (d_model,), (d_model,),  # norm1 gain, bias
        (d_model,), (d_model,),  # norm2 gain, bias
    ]
    total = 0
    for shape in shapes:
        total += math.prod(shape)
    return total
""",
            "closed-form": """
def encoder_layer_parameter_count(d_model: int, d_ff: int) -> int:
    # 4 (C^2 + C) + (C d_ff + d_ff) + (d_ff C + C) + 4 C
    return 4 * d_model**2 + 2 * d_model * d_ff + 9 * d_model + d_ff
""",
            "per-head-helpers": """
def linear_params(n_in, n_out, bias=True):
    return n_in * n_out + (n_out if bias else 0)


def encoder_layer_parameter_count(d_model, d_ff):
    n_heads = 8  # any number: each head projects to d_model / n_heads, so heads cancel
    d_head = d_model / n_heads
    qkv = 3 * n_heads * linear_params(d_model, d_head)
    out_proj = linear_params(d_model, d_model)
    ffn = linear_params(d_model, d_ff) + linear_params(d_ff, d_model)
    norms = 2 * (d_model + d_model)
    total = qkv + out_proj + ffn + norms
    print(f"attention {qkv + out_proj}, ffn {ffn}, norms {norms}")
    return int(total)
""",
            "meta-modules": """
def encoder_layer_parameter_count(d_model, d_ff):
    # build the pieces on the meta device (no memory) and count what they hold
    kw = dict(device="meta")
    pieces = [nn.Linear(d_model, d_model, **kw) for _ in range(4)]  # Q, K, V, O
    pieces += [nn.Linear(d_model, d_ff, **kw), nn.Linear(d_ff, d_model, **kw)]
    pieces += [nn.LayerNorm(d_model, **kw), nn.LayerNorm(d_model, **kw)]
    return sum(p.numel() for piece in pieces for p in piece.parameters() if p.requires_grad)
""",
        },
    },
}

MISTAKES = {
    P: {
        "sinusoidal_encoding": {
            "sin-cos-swapped": (
                """
def sinusoidal_encoding(context_length, d_model):
    position = torch.arange(context_length, dtype=torch.float32).unsqueeze(1)  # (T, 1)
    freqs = 1.0 / 10000 ** (torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    angles = position * freqs  # (T, C/2)
    pe = torch.zeros(context_length, d_model)
    pe[:, 0::2] = torch.cos(angles)
    pe[:, 1::2] = torch.sin(angles)
    return pe
""",
                "sin and cos are swapped",
            ),
            "concatenated": (
                """
def sinusoidal_encoding(context_length, d_model):
    position = torch.arange(context_length, dtype=torch.float32).unsqueeze(1)  # (T, 1)
    freqs = 1.0 / 10000 ** (torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    angles = position * freqs  # (T, C/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)  # (T, C)
""",
                "concatenated",
            ),
            "per-column-exponent": (
                """
def sinusoidal_encoding(context_length, d_model):
    position = torch.arange(context_length, dtype=torch.float32).unsqueeze(1)  # (T, 1)
    cols = torch.arange(d_model, dtype=torch.float32)  # each column its own exponent
    angles = position / 10000 ** (cols / d_model)  # (T, C)
    pe = torch.zeros(context_length, d_model)
    pe[:, 0::2] = torch.sin(angles[:, 0::2])
    pe[:, 1::2] = torch.cos(angles[:, 1::2])
    return pe
""",
                "share one frequency",
            ),
            "positions-from-1": (
                """
def sinusoidal_encoding(context_length, d_model):
    position = torch.arange(1, context_length + 1, dtype=torch.float32).unsqueeze(1)
    freqs = 1.0 / 10000 ** (torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    pe = torch.zeros(context_length, d_model)
    pe[:, 0::2] = torch.sin(position * freqs)
    pe[:, 1::2] = torch.cos(position * freqs)
    return pe
""",
                "positions start at 0",
            ),
            "doubled-2i": (
                """
def sinusoidal_encoding(context_length, d_model):
    position = torch.arange(context_length, dtype=torch.float32).unsqueeze(1)  # (T, 1)
    i = torch.arange(0, d_model, 2, dtype=torch.float32)  # 0, 2, 4, ... (already 2i)
    angles = position / 10000 ** (2 * i / d_model)  # (T, C/2)
    pe = torch.zeros(context_length, d_model)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles)
    return pe
""",
                "exponent is doubled",
            ),
            "returns-float64": (
                """
def sinusoidal_encoding(context_length, d_model):
    position = torch.arange(context_length, dtype=torch.float64).unsqueeze(1)  # (T, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (C/2,)
    angles = position / 10000 ** (two_i / d_model)  # (T, C/2)
    pe = torch.zeros(context_length, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles)
    return pe  # forgot .float()
""",
                "float32",
            ),
        },
        "embed": {
            "no-scale": (
                """
def embed(tokens, table, positions):
    T = tokens.shape[1]
    return table[tokens] + positions[:T]
""",
                "not multiplied by sqrt(d_model)",
            ),
            "scale-after-adding": (
                """
def embed(tokens, table, positions):
    T, C = tokens.shape[1], table.shape[1]
    return (table[tokens] + positions[:T]) * math.sqrt(C)
""",
                "scale only the token embeddings",
            ),
            "sqrt-vocab": (
                """
def embed(tokens, table, positions):
    T = tokens.shape[1]
    V, C = table.shape
    return table[tokens] * math.sqrt(V) + positions[:T]
""",
                "not sqrt(vocab_size)",
            ),
            "last-positions": (
                """
def embed(tokens, table, positions):
    T, C = tokens.shape[1], table.shape[1]
    return table[tokens] * math.sqrt(C) + positions[-T:]
""",
                "not the last T",
            ),
            "len-is-batch": (
                """
def embed(tokens, table, positions):
    T, C = len(tokens), table.shape[1]  # len() counts the batch, not the positions
    return table[tokens] * math.sqrt(C) + positions[:T]
""",
                None,
            ),
            "power-precedence": (
                """
def embed(tokens, table, positions):
    T, C = tokens.shape[1], table.shape[1]
    return table[tokens] * C ** 1 / 2 + positions[:T]  # meant C ** (1/2): right only for C = 4
""",
                None,
            ),
        },
        "layer_norm": {
            "unbiased-var": (
                """
def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias
""",
                "use the biased variance",
            ),
            "eps-outside-sqrt": (
                """
def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    std = ((x - mean) ** 2).mean(dim=-1, keepdim=True).sqrt()
    return (x - mean) / (std + eps) * weight + bias
""",
                "eps belongs inside the square root",
            ),
            "over-batch-dim": (
                """
def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=0, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=0, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias
""",
                "not over the batch",
            ),
            "dim-1-not-last": (
                """
def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=1, keepdim=True)  # the feature dim of an (N, C) input
    var = ((x - mean) ** 2).mean(dim=1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias
""",
                "dim=1",
            ),
            "eps-hardcoded": (
                """
def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * weight + bias
""",
                None,
            ),
        },
    },
    B: {
        "feed_forward": {
            "no-transpose": (
                """
def feed_forward(x, w1, b1, w2, b2):
    hidden = torch.relu(x @ w1 + b1)
    return hidden @ w2 + b2
""",
                "(out_features, in_features)",
            ),
            "no-relu": (
                """
def feed_forward(x, w1, b1, w2, b2):
    hidden = x @ w1.T + b1
    return hidden @ w2.T + b2
""",
                "the ReLU between the two linear maps is missing",
            ),
            "relu-before-bias": (
                """
def feed_forward(x, w1, b1, w2, b2):
    hidden = torch.relu(x @ w1.T) + b1
    return hidden @ w2.T + b2
""",
                "the ReLU comes after adding b1",
            ),
            "relu-at-the-end": (
                """
def feed_forward(x, w1, b1, w2, b2):
    hidden = torch.relu(x @ w1.T + b1)
    return torch.relu(hidden @ w2.T + b2)
""",
                "no activation after the second linear map",
            ),
            "w2-not-transposed": (
                """
def feed_forward(x, w1, b1, w2, b2):
    hidden = torch.relu(x @ w1.T + b1)  # (..., d_ff)
    return hidden @ w2 + b2
""",
                "hidden @ w2.T",
            ),
        },
        "residuals": {
            "arrangements-swapped": (
                """
def post_norm_residual(x, sublayer, norm):
    return x + sublayer(norm(x))


def pre_norm_residual(x, sublayer, norm):
    return norm(x + sublayer(x))
""",
                "this is p",
            ),
            "no-residual": (
                """
def post_norm_residual(x, sublayer, norm):
    return norm(sublayer(x))


def pre_norm_residual(x, sublayer, norm):
    return sublayer(norm(x))
""",
                "the residual connection is missing",
            ),
            "norm-on-output": (
                """
def post_norm_residual(x, sublayer, norm):
    return x + norm(sublayer(x))


def pre_norm_residual(x, sublayer, norm):
    return x + norm(sublayer(x))
""",
                "the norm is applied to the sublayer's output",
            ),
            "normed-skip": (
                """
def post_norm_residual(x, sublayer, norm):
    return norm(x + sublayer(x))


def pre_norm_residual(x, sublayer, norm):
    x = norm(x)
    return x + sublayer(x)
""",
                "the residual carries the un-normalized x",
            ),
            "inplace-add": (
                """
def post_norm_residual(x, sublayer, norm):
    x += sublayer(x)
    return norm(x)


def pre_norm_residual(x, sublayer, norm):
    x += sublayer(norm(x))
    return x
""",
                "changed an input",
            ),
        },
        "post_norm_layer": {
            "mask-not-inverted": (
                '''
class PostNormEncoderLayer(nn.Module):
    """Post-norm encoder layer."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x, padding_mask=None):
        attended, _ = self.self_attn(x, x, x, key_padding_mask=padding_mask, need_weights=False)
        x = self.norm1(x + attended)
        return self.norm2(x + self.linear2(torch.relu(self.linear1(x))))
''',
                "padding_mask is True for real tokens",
            ),
            "mask-ignored": (
                '''
class PostNormEncoderLayer(nn.Module):
    """Post-norm encoder layer."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x, padding_mask=None):
        attended, _ = self.self_attn(x, x, x, need_weights=False)
        x = self.norm1(x + attended)
        return self.norm2(x + self.linear2(torch.relu(self.linear1(x))))
''',
                "padding_mask is ignored",
            ),
            "pre-norm-arrangement": (
                '''
class PostNormEncoderLayer(nn.Module):
    """Post-norm encoder layer."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x, padding_mask=None):
        ignore = None if padding_mask is None else ~padding_mask
        h = self.norm1(x)
        x = x + self.self_attn(h, h, h, key_padding_mask=ignore, need_weights=False)[0]
        return x + self.linear2(torch.relu(self.linear1(self.norm2(x))))
''',
                "this is the pre-norm arrangement",
            ),
            "gelu": (
                '''
class PostNormEncoderLayer(nn.Module):
    """Post-norm encoder layer."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x, padding_mask=None):
        ignore = None if padding_mask is None else ~padding_mask
        attended, _ = self.self_attn(x, x, x, key_padding_mask=ignore, need_weights=False)
        x = self.norm1(x + attended)
        return self.norm2(x + self.linear2(nn.functional.gelu(self.linear1(x))))
''',
                "uses ReLU",
            ),
            "ffn-reads-layer-input": (
                '''
class PostNormEncoderLayer(nn.Module):
    """Post-norm encoder layer."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x, padding_mask=None):
        ignore = None if padding_mask is None else ~padding_mask
        attended, _ = self.self_attn(x, x, x, key_padding_mask=ignore, need_weights=False)
        h = self.norm1(x + attended)
        return self.norm2(h + self.linear2(torch.relu(self.linear1(x))))  # x, not h
''',
                None,
            ),
            "invert-none": (
                '''
class PostNormEncoderLayer(nn.Module):
    """Post-norm encoder layer."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x, padding_mask=None):
        attended, _ = self.self_attn(
            x, x, x, key_padding_mask=~padding_mask, need_weights=False
        )  # fails when padding_mask is None
        x = self.norm1(x + attended)
        return self.norm2(x + self.linear2(torch.relu(self.linear1(x))))
''',
                None,
            ),
        },
        "pre_norm_layer": {
            "post-norm-arrangement": (
                '''
class PreNormEncoderLayer(nn.Module):
    """Pre-norm encoder layer."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x, padding_mask=None):
        ignore = None if padding_mask is None else ~padding_mask
        attended, _ = self.self_attn(x, x, x, key_padding_mask=ignore, need_weights=False)
        x = self.norm1(x + attended)
        return self.norm2(x + self.linear2(torch.relu(self.linear1(x))))
''',
                "this is the post-norm arrangement",
            ),
            "mask-not-inverted": (
                '''
class PreNormEncoderLayer(nn.Module):
    """Pre-norm encoder layer."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x, padding_mask=None):
        h = self.norm1(x)
        x = x + self.self_attn(h, h, h, key_padding_mask=padding_mask, need_weights=False)[0]
        return x + self.linear2(torch.relu(self.linear1(self.norm2(x))))
''',
                "padding_mask is True for real tokens",
            ),
            "no-residual": (
                '''
class PreNormEncoderLayer(nn.Module):
    """Pre-norm encoder layer."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x, padding_mask=None):
        ignore = None if padding_mask is None else ~padding_mask
        h = self.norm1(x)
        x = self.self_attn(h, h, h, key_padding_mask=ignore, need_weights=False)[0]
        return self.linear2(torch.relu(self.linear1(self.norm2(x))))
''',
                "the residual connections are missing",
            ),
            "norm1-twice": (
                '''
class PreNormEncoderLayer(nn.Module):
    """Pre-norm encoder layer."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x, padding_mask=None):
        ignore = None if padding_mask is None else ~padding_mask
        h = self.norm1(x)
        x = x + self.self_attn(h, h, h, key_padding_mask=ignore, need_weights=False)[0]
        return x + self.linear2(torch.relu(self.linear1(self.norm1(x))))  # norm2 never used
''',
                None,
            ),
            "normed-skip": (
                '''
class PreNormEncoderLayer(nn.Module):
    """Pre-norm encoder layer."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x, padding_mask=None):
        ignore = None if padding_mask is None else ~padding_mask
        x = self.norm1(x)
        x = x + self.self_attn(x, x, x, key_padding_mask=ignore, need_weights=False)[0]
        x = self.norm2(x)
        return x + self.linear2(torch.relu(self.linear1(x)))
''',
                "un-normalized x",
            ),
        },
        "parameter_count": {
            "no-biases": (
                """
def encoder_layer_parameter_count(d_model, d_ff):
    attention = 4 * d_model * d_model
    ffn = 2 * d_model * d_ff
    norms = 2 * 2 * d_model
    return attention + ffn + norms
""",
                "biases are missing",
            ),
            "norm-gain-only": (
                """
def encoder_layer_parameter_count(d_model, d_ff):
    attention = 4 * (d_model * d_model + d_model)
    ffn = (d_model * d_ff + d_ff) + (d_ff * d_model + d_model)
    norms = 2 * d_model  # one vector per norm
    return attention + ffn + norms
""",
                "gain and a bias",
            ),
            "no-output-projection": (
                """
def encoder_layer_parameter_count(d_model, d_ff):
    attention = 3 * (d_model * d_model + d_model)  # Q, K, V
    ffn = (d_model * d_ff + d_ff) + (d_ff * d_model + d_model)
    norms = 2 * 2 * d_model
    return attention + ffn + norms
""",
                "output projection W^O",
            ),
            "ffn-bias-widths": (
                """
def encoder_layer_parameter_count(d_model, d_ff):
    attention = 4 * (d_model * d_model + d_model)
    ffn = 2 * (d_model * d_ff + d_model)  # a bias of width d_model on each map
    norms = 2 * 2 * d_model
    return attention + ffn + norms
""",
                None,
            ),
            "heads-floor-division": (
                """
def encoder_layer_parameter_count(d_model, d_ff):
    n_heads = 8
    d_head = d_model // n_heads
    qkv = 3 * n_heads * (d_model * d_head + d_head)  # right only when 8 divides d_model
    attention = qkv + d_model * d_model + d_model
    ffn = (d_model * d_ff + d_ff) + (d_ff * d_model + d_model)
    return attention + ffn + 4 * d_model
""",
                None,
            ),
        },
    },
}
