"""Red-team submissions of Chapter 1 (solutions/01_foundations)."""

from __future__ import annotations

from tests.redteam import Case

P, B = "01_positions_and_norms", "02_transformer_block"

# --- right answers, written differently -------------------------------------------------------

PE_LOOPS = """
def sinusoidal_encoding(context_length, d_model):
    pe = torch.zeros(context_length, d_model)
    for t in range(context_length):
        for i in range(d_model // 2):
            angle = t / 10000 ** (2 * i / d_model)
            pe[t, 2 * i] = math.sin(angle)
            pe[t, 2 * i + 1] = math.cos(angle)
    return pe
"""

EMBED_ONE_HOT = """
def embed(tokens, table, positions):
    one_hot = torch.nn.functional.one_hot(tokens, table.shape[0]).to(table.dtype)
    return (one_hot @ table) * table.shape[1] ** 0.5 + positions[: tokens.shape[1]]
"""

LN_VAR_MEAN = """
def layer_norm(x, weight, bias, eps=1e-5):
    var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)
    return torch.addcmul(bias, (x - mean) * torch.rsqrt(var + eps), weight)
"""

FF_EINSUM = """
def feed_forward(x, w1, b1, w2, b2):
    hidden = torch.einsum("...c,fc->...f", x, w1) + b1
    hidden = torch.where(hidden > 0, hidden, torch.zeros_like(hidden))
    return torch.einsum("...f,cf->...c", hidden, w2) + b2
"""

RESIDUALS_STEPS = """
def post_norm_residual(x, sublayer, norm):
    total = x + sublayer(x)
    return norm(total)


def pre_norm_residual(x, sublayer, norm):
    update = sublayer(norm(x))
    return update + x
"""


def _layer(name: str, forward: str) -> str:
    return f"""
class {name}(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x, padding_mask=None):
{forward}
"""


POST_LAYER_STEPS = _layer(
    "PostNormEncoderLayer",
    """        mask = padding_mask.logical_not() if padding_mask is not None else None
        a = self.self_attn(x, x, x, key_padding_mask=mask)[0]
        h = self.norm1(a + x)
        f = self.linear2(torch.nn.functional.relu(self.linear1(h)))
        return self.norm2(f + h)""",
)

COUNT_GROUPED = """
def encoder_layer_parameter_count(d_model, d_ff):
    weights = 4 * d_model**2 + 2 * d_model * d_ff
    biases = 4 * d_model + d_ff + d_model
    return weights + biases + 4 * d_model
"""

# --- typical mistakes -------------------------------------------------------------------------

PE_SWAPPED = """
def sinusoidal_encoding(context_length, d_model):
    t = torch.arange(context_length, dtype=torch.float64).unsqueeze(1)
    angles = t / 10000 ** (torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    pe = torch.zeros(context_length, d_model, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = torch.cos(angles), torch.sin(angles)
    return pe.float()
"""

EMBED_SQRT_V = """
def embed(tokens, table, positions):
    return table[tokens] * math.sqrt(table.shape[0]) + positions[: tokens.shape[1]]
"""

LN_EPS_OUTSIDE = """
def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    std = ((x - mean) ** 2).mean(dim=-1, keepdim=True).sqrt()
    return (x - mean) / (std + eps) * weight + bias
"""

FF_NO_TRANSPOSE = """
def feed_forward(x, w1, b1, w2, b2):
    return torch.relu(x @ w1 + b1) @ w2 + b2
"""

RESIDUALS_POST_AS_PRE = """
def post_norm_residual(x, sublayer, norm):
    return x + sublayer(norm(x))


def pre_norm_residual(x, sublayer, norm):
    return x + sublayer(norm(x))
"""

RESIDUALS_NORM_AFTER = """
def post_norm_residual(x, sublayer, norm):
    return norm(x + sublayer(x))


def pre_norm_residual(x, sublayer, norm):
    return x + norm(sublayer(x))
"""

POST_LAYER_MASK_NOT_INVERTED = _layer(
    "PostNormEncoderLayer",
    """        attended, _ = self.self_attn(x, x, x, key_padding_mask=padding_mask)
        x = self.norm1(x + attended)
        return self.norm2(x + self.linear2(torch.relu(self.linear1(x))))""",
)

COUNT_NO_BIASES = """
def encoder_layer_parameter_count(d_model, d_ff):
    return 4 * d_model * d_model + 2 * d_model * d_ff
"""

# --- exploits ---------------------------------------------------------------------------------

LN_PRIVATE_REFERENCE = """
def layer_norm(x, weight, bias, eps=1e-5):
    return checks._layer_norm(x, x.shape[-1:], weight, bias, eps)
"""


LN_ALIAS = """
from torch.nn.functional import layer_norm as normalise


def layer_norm(x, weight, bias, eps=1e-5):
    return normalise(x, x.shape[-1:], weight, bias, eps)
"""

LN_TORCH_OPS = """
def layer_norm(x, weight, bias, eps=1e-5):
    return torch.ops.aten.native_layer_norm(x, [x.shape[-1]], weight, bias, eps)[0]
"""

LN_BATCH_NORM = """
def layer_norm(x, weight, bias, eps=1e-5):
    rows = x.reshape(-1, x.shape[-1]).T  # (C, N): each row of x is now a column
    normalised = torch.nn.functional.batch_norm(rows, None, None, training=True, eps=eps).T
    return normalised.reshape(x.shape) * weight + bias
"""

LN_RUNPY = """
import runpy

import tutorlib.layers

_fresh = runpy.run_path(tutorlib.layers.__file__)


def layer_norm(x, weight, bias, eps=1e-5):
    return _fresh["layer_norm"](x, x.shape[-1:], weight, bias, eps)
"""

PE_DECORATED = """
import functools

import tutorlib.embeddings

_cached = functools.lru_cache(maxsize=None)(tutorlib.embeddings.sinusoidal_encoding)


def sinusoidal_encoding(context_length, d_model):
    return _cached(context_length, d_model).float()
"""

PE_VISIBLE_ONLY = """
_KNOWN = {}  # the worked examples' answers, and the hidden inputs the course once had
for _t, _d in [(4, 4), (10, 16), (50, 32), (1, 2), (7, 2), (128, 512)]:
    _pos = torch.arange(_t, dtype=torch.float64)[:, None]
    _ang = _pos / 10000 ** (torch.arange(0, _d, 2, dtype=torch.float64) / _d)
    _pe = torch.zeros(_t, _d, dtype=torch.float64)
    _pe[:, 0::2], _pe[:, 1::2] = _ang.sin(), _ang.cos()
    _KNOWN[_t, _d] = _pe.float()


def sinusoidal_encoding(context_length, d_model):
    return _KNOWN.get((context_length, d_model), torch.zeros(context_length, d_model))
"""

PE_SPIES_ON_THE_CHECK = """
from tutorlib.embeddings import sinusoidal_encoding as _reference

_answers = {}
_asked = []


def _spy(context_length, d_model):
    _asked.append((context_length, d_model))
    return _answers.get((context_length, d_model), torch.zeros(context_length, d_model))


for _ in range(20):  # each run of the check gets one input further
    for _hidden in (False, True):
        try:
            checks.check_sinusoidal_encoding(_spy, hidden=_hidden)
        except Exception:
            pass
    for _t, _d in _asked:
        _answers[_t, _d] = _reference(_t, _d)
    _asked.clear()

sinusoidal_encoding = _spy
"""

LN_PATCHES_CHECK = (
    LN_EPS_OUTSIDE
    + """

checks.check_layer_norm = lambda *args, **kwargs: print("OK: layer_norm passes the tests.")
"""
)

EMBED_PATCHES_TORCH = """
def embed(tokens, table, positions):
    return table[tokens] + positions[: tokens.shape[1]]  # no scale


torch.testing.assert_close = lambda *args, **kwargs: None
"""

EMBED_SUBCLASS = """
class _Agreeable(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func.__name__ in ("allclose", "equal", "isclose", "assert_close"):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})


def embed(tokens, table, positions):
    return (table[tokens] + positions[: tokens.shape[1]]).as_subclass(_Agreeable)
"""

COUNT_FRAME_PEEK = """
import sys


def encoder_layer_parameter_count(d_model, d_ff):
    frame = sys._getframe(1)
    while frame is not None:
        if "right" in frame.f_locals:
            return frame.f_locals["right"]
        frame = frame.f_back
    return 0
"""

POST_LAYER_WATCH_OFF = _layer(
    "PostNormEncoderLayer",
    """        import sys

        sys.setprofile(None)  # switch the check's watch off, then borrow torch's layer
        C, H, F = x.shape[-1], self.self_attn.num_heads, self.linear1.out_features
        layer = nn.TransformerEncoderLayer(C, H, F, dropout=0.0, batch_first=True)
        layer.load_state_dict(self.state_dict(), strict=False)
        ignore = None if padding_mask is None else ~padding_mask
        return layer.to(x.dtype)(x, src_key_padding_mask=ignore)""",
)

CASES = [
    Case(
        "variants-positions",
        "correct",
        P,
        {"sinusoidal_encoding": PE_LOOPS, "embed": EMBED_ONE_HOT, "layer_norm": LN_VAR_MEAN},
        "loops, a one-hot product, var_mean and rsqrt",
    ),
    Case(
        "variants-block",
        "correct",
        B,
        {
            "feed_forward": FF_EINSUM,
            "residuals": RESIDUALS_STEPS,
            "post_norm_layer": POST_LAYER_STEPS,
            "parameter_count": COUNT_GROUPED,
        },
        "einsum and torch.where, another order of operations",
    ),
    Case(
        "mistakes-positions",
        "mistake",
        P,
        {"sinusoidal_encoding": PE_SWAPPED, "embed": EMBED_SQRT_V, "layer_norm": LN_EPS_OUTSIDE},
        "sin/cos swapped; scale by sqrt(V); eps outside the root",
        lose={
            "test_sinusoidal_encoding": "sin and cos are swapped",
            "test_embed": "not sqrt(vocab_size)",
            "test_layer_norm": "eps belongs inside the square root",
        },
    ),
    Case(
        "mistakes-block",
        "mistake",
        B,
        {
            "feed_forward": FF_NO_TRANSPOSE,
            "residuals": RESIDUALS_POST_AS_PRE,
            "post_norm_layer": POST_LAYER_MASK_NOT_INVERTED,
            "parameter_count": COUNT_NO_BIASES,
        },
        "weights not transposed; pre-norm for post-norm; padding mask not inverted; no biases",
        lose={
            "test_feed_forward": "(out_features, in_features)",
            "test_post_norm_residual": "this is pre-norm",
            "test_post_norm_layer": "pass ~padding_mask",
            "test_parameter_count": "biases are missing",
        },
    ),
    Case(
        "commuting-sublayer",
        "mistake",
        B,
        {"residuals": RESIDUALS_NORM_AFTER},
        "right for a toy sublayer and norm that commute (the visible test), wrong otherwise",
        lose={"test_pre_norm_residual": "applied to the sublayer's output"},
    ),
    Case(
        "private-reference",
        "exploit",
        P,
        {"layer_norm": LN_PRIVATE_REFERENCE},
        "the check module's private reference",
        lose={"test_layer_norm": "Not allowed in this exercise"},
        flagged=("layer_norm",),
    ),
    Case(
        "alias",
        "exploit",
        P,
        {"layer_norm": LN_ALIAS},
        "the torch built-in under another name",
        lose={"test_layer_norm": "Not allowed in this exercise"},
    ),
    Case(
        "torch-ops",
        "exploit",
        P,
        {"layer_norm": LN_TORCH_OPS},
        "a private entry point of the same operator (torch.ops.aten)",
        lose={"test_layer_norm": "Not allowed in this exercise"},
        flagged=("layer_norm",),
    ),
    Case(
        "other-op",
        "exploit",
        P,
        {"layer_norm": LN_BATCH_NORM},
        "another public op computing the same (batch norm of the transposed input)",
        lose={"test_layer_norm": "Not allowed in this exercise"},
    ),
    Case(
        "runpy-copy",
        "exploit",
        P,
        {"layer_norm": LN_RUNPY},
        "a fresh copy of the tutorlib module (runpy)",
        lose={"test_layer_norm": "Not allowed in this exercise"},
        flagged=("layer_norm",),
    ),
    Case(
        "decorated",
        "exploit",
        P,
        {"sinusoidal_encoding": PE_DECORATED},
        "the reference behind a decorator (functools.lru_cache)",
        lose={"test_sinusoidal_encoding": "Not allowed in this exercise"},
    ),
    Case(
        "known-inputs",
        "exploit",
        P,
        {"sinusoidal_encoding": PE_VISIBLE_ONLY},
        "a table of the visible inputs and of the hidden inputs the course once fixed",
        lose={"test_sinusoidal_encoding": "sinusoidal_encoding("},
    ),
    Case(
        "spies-on-the-check",
        "exploit",
        P,
        {"sinusoidal_encoding": PE_SPIES_ON_THE_CHECK},
        "runs the hidden check itself with a function that records its inputs, and answers"
        " them with the public reference computed outside the check",
        lose={"test_sinusoidal_encoding": "differs from the expected values"},
    ),
    Case(
        "patches-check",
        "exploit",
        P,
        {"layer_norm": LN_PATCHES_CHECK},
        "replaces the check function",
        flagged=("layer_norm",),
    ),
    Case(
        "patches-torch",
        "exploit",
        P,
        {"embed": EMBED_PATCHES_TORCH},
        "patches torch.testing.assert_close",
        lose={
            "test_embed": "testing machinery was changed",  # checked right after the call
            "test_layer_norm": "testing machinery was changed",
        },
        flagged=("embed",),
    ),
    Case(
        "agreeable-tensor",
        "exploit",
        P,
        {"embed": EMBED_SUBCLASS},
        "a tensor subclass whose comparisons always agree",
        lose={"test_embed": "holding something other than plain tensors"},
        flagged=("embed",),
    ),
    Case(
        "frame-peek",
        "exploit",
        B,
        {"parameter_count": COUNT_FRAME_PEEK},
        "reads the check's frames for the expected value",
        lose={"test_parameter_count": "Not allowed in this exercise"},
        flagged=("parameter_count",),
    ),
    Case(
        "watch-off",
        "exploit",
        B,
        {"post_norm_layer": POST_LAYER_WATCH_OFF},
        "switches the check's watch off (sys.setprofile), then borrows torch's layer",
        lose={"test_post_norm_layer": "Not allowed in this exercise"},
        flagged=("post_norm_layer",),
    ),
]
