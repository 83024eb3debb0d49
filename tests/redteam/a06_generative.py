"""Red-team submissions of Chapter 6 (solutions/06_generative)."""

from __future__ import annotations

from tests.redteam import Case

L, P = "01_language_modelling", "02_pretrained_and_pixels"

# --- right answers, written differently -------------------------------------------------------

LOSS_TRANSPOSED = """
def causal_lm_loss(logits, tokens):
    # F.cross_entropy's own layout: the classes in dimension 1, (B, V, T - 1)
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:])
"""

SAMPLE_GUMBEL = """
def sample_with_temperature(logits, temperature, generator=None):
    if temperature == 0:
        return torch.max(logits, dim=-1).indices
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype)
    gumbel = -torch.log(-torch.log(u))  # the Gumbel-max trick: argmax(x / T + g) ~ softmax(x / T)
    return (logits / temperature + gumbel).argmax(dim=-1)
"""

TOP_K_SCATTER_VALUES = """
def top_k_filter(logits, k):
    values, index = logits.topk(k, dim=-1)
    return torch.full_like(logits, -math.inf).scatter(-1, index, values)
"""

TOP_P_ASCENDING = """
def top_p_filter(logits, p):
    # Hugging Face's way: sort ascending, remove while the mass at the bottom is <= 1 - p
    sorted_logits, order = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= 1 - p
    remove_sorted[..., -1] = False
    remove = remove_sorted.scatter(1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))
"""

PENALTY_GATHER = """
def apply_repetition_penalty(logits, previous, penalty):
    picked = logits.gather(1, previous)  # (B, t): the logits of the tokens already written
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return logits.scatter(1, previous, picked)
"""

BEAM_BROADCAST = """
def beam_search_step(scores, log_probs):
    B, k = scores.shape
    V = log_probs.shape[-1]
    total = (scores[:, :, None] + log_probs.view(B, k, V)).flatten(1)  # (B, k*V)
    ranked, index = torch.sort(total, dim=1, descending=True)
    index = index[:, :k]
    beams = torch.div(index, V, rounding_mode="floor")
    return ranked[:, :k], beams, index - beams * V
"""

BERT_LOOPS = """
def bert_layer_to_tutorlib(bert):
    names = {
        "self_attn.out_proj": "attention.output.dense",
        "ff.linear1": "intermediate.dense",
        "ff.linear2": "output.dense",
        "norm1": "attention.output.LayerNorm",
        "norm2": "output.LayerNorm",
    }
    ours = {}
    for mine, theirs in names.items():
        for part in ("weight", "bias"):
            ours[f"{mine}.{part}"] = bert[f"{theirs}.{part}"].clone()
    for part in ("weight", "bias"):
        parts = [bert[f"attention.self.{p}.{part}"] for p in ("query", "key", "value")]
        ours[f"self_attn.in_proj_{part}"] = torch.stack(parts).flatten(0, 1)  # (3C, C) / (3C,)
    return ours
"""

GPT2_CHUNKS = """
def gpt2_attention_to_tutorlib(gpt2):
    q, k, v = gpt2["c_attn.weight"].chunk(3, dim=1)  # each (C, C), stored (in, out)
    return {
        "in_proj_weight": torch.cat([q.t(), k.t(), v.t()]),
        "in_proj_bias": gpt2["c_attn.bias"].clone(),
        "out_proj.weight": gpt2["c_proj.weight"].transpose(0, 1).contiguous(),
        "out_proj.bias": gpt2["c_proj.bias"].clone(),
    }
"""

PIXELS_HALF_UP = """
def images_to_sequences(images, labels, levels):
    tokens = (images * (levels - 1) + 0.5).floor().to(torch.long)  # round half up
    classes = (labels + levels).unsqueeze(1)
    return torch.cat([classes, tokens.reshape(len(images), -1)], dim=1)
"""

DISTINCT_ZIP = """
def distinct_n(sequences, n):
    grams = [g for s in sequences for g in zip(*(s[i:] for i in range(n)))]
    return len(set(grams)) / len(grams)
"""

# --- typical mistakes -------------------------------------------------------------------------

LOSS_UNSHIFTED = """
def causal_lm_loss(logits, tokens):
    V = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, V), tokens.reshape(-1))
"""

SAMPLE_AFTER_SOFTMAX = """
def sample_with_temperature(logits, temperature, generator=None):
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits, dim=-1) / temperature
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
"""

TOP_K_TIES = """
def top_k_filter(logits, k):
    threshold = logits.topk(k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest
    return logits.masked_fill(logits < threshold, float("-inf"))  # every tie stays
"""

TOP_P_DROPS_CROSSING = """
def top_p_filter(logits, p):
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    keep_sorted = sorted_logits.softmax(dim=-1).cumsum(dim=-1) < p
    keep_sorted[:, 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return logits.masked_fill(~keep, float("-inf"))
"""

PENALTY_DIVIDE_ALL = """
def apply_repetition_penalty(logits, previous, penalty):
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, previous, True)
    return torch.where(seen, logits / penalty, logits)
"""

BEAM_ONE_CHILD_EACH = """
def beam_search_step(scores, log_probs):
    B, k = scores.shape
    V = log_probs.shape[-1]
    total = (scores.reshape(B * k, 1) + log_probs).reshape(B, k, V)
    best, token = total.max(dim=-1)  # each beam's own best extension
    new_scores, beams = best.sort(dim=1, descending=True)
    return new_scores, beams, token.gather(1, beams)
"""

TOP_K_KTHVALUE = """
def top_k_filter(logits, k):
    threshold = torch.kthvalue(logits, k, dim=-1, keepdim=True).values
    return logits.masked_fill(logits < threshold, float("-inf"))
"""

BEAM_LOWEST = """
def beam_search_step(scores, log_probs):
    B, k = scores.shape
    V = log_probs.shape[-1]
    total = (scores.reshape(B * k, 1) + log_probs).reshape(B, k * V)
    ranked, index = total.sort(dim=-1)
    new_scores, index = ranked[:, :k], index[:, :k]
    return new_scores, index // V, index % V
"""

BERT_KQV = """
def bert_layer_to_tutorlib(bert):
    qkv = ["attention.self.key", "attention.self.query", "attention.self.value"]
    return {
        "self_attn.in_proj_weight": torch.cat([bert[f"{p}.weight"] for p in qkv]),
        "self_attn.in_proj_bias": torch.cat([bert[f"{p}.bias"] for p in qkv]),
        "self_attn.out_proj.weight": bert["attention.output.dense.weight"],
        "self_attn.out_proj.bias": bert["attention.output.dense.bias"],
        "ff.linear1.weight": bert["intermediate.dense.weight"],
        "ff.linear1.bias": bert["intermediate.dense.bias"],
        "ff.linear2.weight": bert["output.dense.weight"],
        "ff.linear2.bias": bert["output.dense.bias"],
        "norm1.weight": bert["attention.output.LayerNorm.weight"],
        "norm1.bias": bert["attention.output.LayerNorm.bias"],
        "norm2.weight": bert["output.LayerNorm.weight"],
        "norm2.bias": bert["output.LayerNorm.bias"],
    }
"""

GPT2_NOT_TRANSPOSED = """
def gpt2_attention_to_tutorlib(gpt2):
    return {
        "in_proj_weight": gpt2["c_attn.weight"],
        "in_proj_bias": gpt2["c_attn.bias"],
        "out_proj.weight": gpt2["c_proj.weight"],
        "out_proj.bias": gpt2["c_proj.bias"],
    }
"""

PIXELS_FLOOR = """
def images_to_sequences(images, labels, levels):
    pixels = (images * (levels - 1)).long()  # truncates: rounds down
    return torch.cat([(levels + labels)[:, None], pixels.flatten(1)], dim=1)
"""

DISTINCT_ACROSS = """
def distinct_n(sequences, n):
    joined = [token for s in sequences for token in s]
    grams = [tuple(joined[i : i + n]) for i in range(len(joined) - n + 1)]
    return len(set(grams)) / len(grams)
"""

# --- exploits ---------------------------------------------------------------------------------


TOP_P_HUGGING_FACE = """
from transformers.generation.logits_process import TopPLogitsWarper


def top_p_filter(logits, p):
    return TopPLogitsWarper(top_p=p)(None, logits)
"""

PENALTY_HUGGING_FACE = """
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor


def apply_repetition_penalty(logits, previous, penalty):
    return RepetitionPenaltyLogitsProcessor(penalty=penalty)(previous, logits)
"""

LOSS_THROUGH_C = """
import functools

import tutorlib.generation

_loss = functools.partial(tutorlib.generation.causal_lm_loss)  # a C object calls it


def causal_lm_loss(logits, tokens):
    return next(map(_loss, [logits], [tokens]))  # and map, C code, calls that
"""


BERT_PRIVATE_HELPER = """
import tutorlib.pretrained


def bert_layer_to_tutorlib(bert):
    stack = tutorlib.pretrained._stack_qkv
    qkv = ["attention.self.query", "attention.self.key", "attention.self.value"]
    same = {
        "self_attn.out_proj": "attention.output.dense",
        "ff.linear1": "intermediate.dense",
        "ff.linear2": "output.dense",
        "norm1": "attention.output.LayerNorm",
        "norm2": "output.LayerNorm",
    }
    ours = {f"{a}.{p}": bert[f"{b}.{p}"] for a, b in same.items() for p in ("weight", "bias")}
    ours["self_attn.in_proj_weight"] = stack(*(bert[f"{q}.weight"] for q in qkv))
    ours["self_attn.in_proj_bias"] = stack(*(bert[f"{q}.bias"] for q in qkv))
    return ours
"""


PIXELS_QUANTISE = """
import tutorlib.pixels


def images_to_sequences(images, labels, levels):
    tokens = tutorlib.pixels.quantise(images, levels).flatten(1)  # the pixels, done for us
    return torch.cat([(levels + labels)[:, None], tokens], dim=1)
"""

TOP_K_KNOWN_INPUTS = """
from tutorlib.checks import random_tensor

_INPUTS = [  # the worked example and the hidden inputs the course once fixed
    (torch.tensor([[1.0, 4.0, -2.0, 3.0, 0.5, 2.0], [0.0, -1.0, 2.5, 1.5, -3.0, 1.0]]).double(), 3),
    (random_tensor(4, 10, seed=1), 4),
    (random_tensor(3, 7, seed=2), 1),
    (random_tensor(2, 6, seed=3), 6),
    (torch.tensor([[5.0, 3.0, 3.0, 3.0, 0.0], [1.0, 2.0, 2.0, -1.0, 2.0]]).double(), 2),
    (torch.tensor([[0.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]]).double(), 3),
]
_KNOWN = {}
for _logits, _k in _INPUTS:
    _index = _logits.topk(_k, dim=-1).indices
    _keep = torch.zeros_like(_logits, dtype=torch.bool).scatter(-1, _index, True)
    _KNOWN[(tuple(_logits.flatten().tolist()), _k)] = _logits.masked_fill(~_keep, -math.inf)


def top_k_filter(logits, k):
    known = _KNOWN.get((tuple(logits.flatten().tolist()), k))
    return known.clone() if known is not None else logits.clone()
"""

DISTINCT_KNOWN_INPUTS = """
_g = torch.Generator().manual_seed(0)
_random_lists = [  # the old hidden tests' random sequences, rebuilt from their seed
    torch.randint(0, 4, (int(n),), generator=_g).tolist()
    for n in torch.randint(3, 20, (12,), generator=_g)
]
_INPUTS = [  # the worked example and the hidden inputs the course once fixed
    ([[1, 2, 1, 2, 3], [3, 1, 2]], 2),
    (["the cat", "the hat", "a cat sat"], 2),
    (["the cat", "the hat", "a cat sat"], 1),
    (["abcabc", "cab"], 3),
    ([[1, 2, 3, 4], [1], [], [2, 3, 4, 5, 2, 3]], 2),
    ([[7, 7, 7, 7, 7]], 1),
    ([[1, 2], [2, 1], [1, 2]], 2),
    (_random_lists, 2),
    (_random_lists, 3),
]
_KNOWN = {}
for _sequences, _n in _INPUTS:
    _grams = [tuple(s[i : i + _n]) for s in _sequences for i in range(len(s) - _n + 1)]
    _KNOWN[repr((_sequences, _n))] = len(set(_grams)) / len(_grams)


def distinct_n(sequences, n):
    return _KNOWN.get(repr((sequences, n)), 1.0)
"""

# wrong answers that the old checks (9960bfb) passed

DISTINCT_JOINED_TEXT = """
def distinct_n(sequences, n):
    # one code path for strings and lists: make every sequence a string
    texts = [s if isinstance(s, str) else "".join(str(t) for t in s) for s in sequences]
    grams = [t[i : i + n] for t in texts for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams)
"""

DISTINCT_JOINED_KEYS = """
def distinct_n(sequences, n):
    grams = ["".join(map(str, s[i : i + n])) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams)
"""

PENALTY_TEXT_MEMBERSHIP = """
def apply_repetition_penalty(logits, previous, penalty):
    out = logits.clone()
    for b in range(len(logits)):
        history = str(previous[b].tolist())
        for v in range(logits.shape[1]):
            if str(v) in history:  # token v was written before
                value = out[b, v]
                out[b, v] = value / penalty if value > 0 else value * penalty
    return out
"""

SAMPLE_GLOBAL_SEED = """
def sample_with_temperature(logits, temperature, generator=None):
    if temperature == 0:
        return logits.argmax(dim=-1)
    torch.manual_seed(0)  # reproducible draws
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1).squeeze(-1)
"""

SAMPLE_SQUEEZE_ALL = """
def sample_with_temperature(logits, temperature, generator=None):
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze()
"""

NOT_ALLOWED = "Not allowed in this exercise"

CASES = [
    Case(
        "variants-language",
        "correct",
        L,
        {
            "causal_lm_loss": LOSS_TRANSPOSED,
            "sample_with_temperature": SAMPLE_GUMBEL,
            "top_k_filter": TOP_K_SCATTER_VALUES,
            "top_p_filter": TOP_P_ASCENDING,
            "apply_repetition_penalty": PENALTY_GATHER,
            "beam_search_step": BEAM_BROADCAST,
        },
        "classes in dim 1, Gumbel-max, scattered top-k values, Hugging Face's ascending nucleus, "
        "gather/scatter, a broadcast sum and a full sort",
    ),
    Case(
        "variants-pixels",
        "correct",
        P,
        {
            "bert_layer_to_tutorlib": BERT_LOOPS,
            "gpt2_attention_to_tutorlib": GPT2_CHUNKS,
            "images_to_sequences": PIXELS_HALF_UP,
            "distinct_n": DISTINCT_ZIP,
        },
        "loops and torch.stack, q/k/v transposed one by one, round half up, zip n-grams",
    ),
    Case(
        "mistakes-language",
        "mistake",
        L,
        {
            "causal_lm_loss": LOSS_UNSHIFTED,
            "sample_with_temperature": SAMPLE_AFTER_SOFTMAX,
            "top_k_filter": TOP_K_TIES,
            "top_p_filter": TOP_P_DROPS_CROSSING,
            "apply_repetition_penalty": PENALTY_DIVIDE_ALL,
            "beam_search_step": BEAM_ONE_CHILD_EACH,
        },
        "unshifted targets; temperature after the softmax; ties kept (hidden only); the "
        "crossing token dropped; negative logits divided; one child per beam",
        lose={
            "test_causal_lm_loss": "the targets are not shifted",
            "test_sample_with_temperature": "applied after the softmax",
            "test_top_k_filter": "tie with the k-th largest",
            "test_top_p_filter": "takes the cumulative probability past p was dropped",
            "test_apply_repetition_penalty": "every seen logit was divided",
            "test_beam_search_step": "each beam kept exactly one child",
        },
    ),
    Case(
        "wrong-end",
        "mistake",
        L,
        {"top_k_filter": TOP_K_KTHVALUE, "beam_search_step": BEAM_LOWEST},
        "selection ops that count from the wrong end: torch.kthvalue as the k-th largest, the "
        "first k of an ascending sort",
        lose={
            "test_top_k_filter": "counted from the wrong end",
            "test_beam_search_step": "the k *lowest* totals were kept",
        },
    ),
    Case(
        "mistakes-pixels",
        "mistake",
        P,
        {
            "bert_layer_to_tutorlib": BERT_KQV,
            "gpt2_attention_to_tutorlib": GPT2_NOT_TRANSPOSED,
            "images_to_sequences": PIXELS_FLOOR,
            "distinct_n": DISTINCT_ACROSS,
        },
        "k, q, v stacked; Conv1D weights not transposed; grey values truncated; n-grams across "
        "sequences",
        lose={
            "test_bert_layer_to_tutorlib": "stacked in the order key, query, value",
            "test_gpt2_attention_to_tutorlib": "Conv1D stores its weight (in, out)",
            "test_images_to_sequences": "rounded down",
            "test_distinct_n": "across the boundaries between sequences",
        },
    ),
    Case(
        "private-helper",
        "exploit",
        P,
        {"bert_layer_to_tutorlib": BERT_PRIVATE_HELPER},
        "a private helper of tutorlib's converter (tutorlib.pretrained._stack_qkv)",
        lose={"test_bert_layer_to_tutorlib": NOT_ALLOWED},
        flagged=("bert_layer_to_tutorlib",),
    ),
    Case(
        "hugging-face",
        "exploit",
        L,
        {"top_p_filter": TOP_P_HUGGING_FACE, "apply_repetition_penalty": PENALTY_HUGGING_FACE},
        "the library built-ins: Hugging Face's logits processors",
        lose={"test_top_p_filter": NOT_ALLOWED, "test_apply_repetition_penalty": NOT_ALLOWED},
    ),
    Case(
        "through-c",
        "exploit",
        L,
        {"causal_lm_loss": LOSS_THROUGH_C},
        "the reference called from C code (functools.partial, map): no Python frame of the "
        "learner's calls it",
        lose={"test_causal_lm_loss": NOT_ALLOWED},
    ),
    Case(
        "other-public-function",
        "exploit",
        P,
        {"images_to_sequences": PIXELS_QUANTISE},
        "another public function computing the same (tutorlib.pixels.quantise)",
        lose={"test_images_to_sequences": NOT_ALLOWED},
    ),
    Case(
        "known-inputs-top-k",
        "exploit",
        L,
        {"top_k_filter": TOP_K_KNOWN_INPUTS},
        "a table of the worked example and of the hidden inputs the course once fixed",
        lose={"test_top_k_filter": "top_k_filter with k ="},
    ),
    Case(
        "known-inputs-distinct",
        "exploit",
        P,
        {"distinct_n": DISTINCT_KNOWN_INPUTS},
        "a table of the worked example and of the hidden inputs the course once fixed",
        lose={"test_distinct_n": "distinct_n on"},
    ),
    Case(
        "joined-text",
        "exploit",
        P,
        {"distinct_n": DISTINCT_JOINED_TEXT},
        "used to pass: ids joined into a string (right while every id had one digit)",
        lose={"test_distinct_n": "joined into a string"},
    ),
    Case(
        "joined-keys",
        "exploit",
        P,
        {"distinct_n": DISTINCT_JOINED_KEYS},
        "used to pass: n-gram keys joined with no separator ((1, 23) and (12, 3) collide)",
        lose={"test_distinct_n": "with no separator"},
    ),
    Case(
        "text-membership",
        "exploit",
        L,
        {"apply_repetition_penalty": PENALTY_TEXT_MEMBERSHIP},
        "used to pass: membership tested on the text of the history (token 1 'in' '[12]')",
        lose={"test_apply_repetition_penalty": "differs from the expected values"},
    ),
    Case(
        "global-seed",
        "exploit",
        L,
        {"sample_with_temperature": SAMPLE_GLOBAL_SEED},
        "used to pass: reproducible by seeding torch's global generator, ignoring the one given",
        lose={"test_sample_with_temperature": "do not seed torch's global generator"},
    ),
    Case(
        "squeeze-all",
        "exploit",
        L,
        {"sample_with_temperature": SAMPLE_SQUEEZE_ALL},
        "used to pass: .squeeze() drops the batch dimension of a single row",
        lose={"test_sample_with_temperature": ".squeeze() also drops the batch dimension"},
    ),
]

# --- 03_modern_decoder ------------------------------------------------------------------------

M = "03_modern_decoder"

# right answers, written differently

ANGLES_POLAR = """
def rope_angles(T, D, offset=0, base=10000.0):
    freqs = 1.0 / base ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    t = torch.arange(offset, offset + T, dtype=torch.float64)
    unit = torch.polar(torch.ones(T, D // 2, dtype=torch.float64), torch.outer(t, freqs))
    return unit.real, unit.imag
"""

ROPE_COMPLEX = """
def apply_rope(x, cos, sin):
    pairs = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(pairs * torch.complex(cos, sin)).flatten(-2)
"""

RMS_FROM_NORM = """
def rms_norm(x, weight, eps=1e-6):
    rms = torch.sqrt(x.norm(dim=-1, keepdim=True) ** 2 / x.shape[-1] + eps)
    return weight * (x / rms)
"""

SWIGLU_FUSED = """
def swiglu(x, gate_weight, up_weight, down_weight):
    gate, up = (x @ torch.cat([gate_weight, up_weight]).T).chunk(2, dim=-1)
    return (gate * torch.sigmoid(gate) * up) @ down_weight.T
"""

GQA_GROUPED = """
def gqa_cached_step(q, k_new, v_new, past_k, past_v):
    k_all = k_new if past_k is None else torch.cat((past_k, k_new), dim=-2)
    v_all = v_new if past_v is None else torch.cat((past_v, v_new), dim=-2)
    B, H, t, D = q.shape
    H_kv, S = k_all.shape[1], k_all.shape[2]
    groups = q.view(B, H_kv, H // H_kv, t, D)  # the query heads of each key-value head
    scores = groups @ k_all.unsqueeze(2).transpose(-2, -1) / math.sqrt(D)  # (B, H_kv, G, t, S)
    positions = torch.arange(S)
    scores = scores.masked_fill(positions[None, :] > positions[S - t :, None], float("-inf"))
    out = scores.softmax(dim=-1) @ v_all.unsqueeze(2)
    return out.reshape(B, H, t, D), k_all, v_all
"""

# typical mistakes

ANGLES_NO_OFFSET = """
def rope_angles(T, D, offset=0, base=10000.0):
    angles = torch.arange(T, dtype=torch.float64)[:, None] * base ** (
        -torch.arange(0, D, 2, dtype=torch.float64) / D
    )
    return angles.cos(), angles.sin()
"""

ANGLES_FROM_ONE = """
def rope_angles(T, D, offset=0, base=10000.0):
    positions = torch.arange(offset + 1, offset + T + 1, dtype=torch.float64)
    angles = positions[:, None] * base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    return angles.cos(), angles.sin()
"""

ROPE_HALVES = """
def apply_rope(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
"""

ROPE_BACKWARDS = """
def apply_rope(x, cos, sin):
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * cos + b * sin, b * cos - a * sin], dim=-1).flatten(-2)
"""

RMS_CENTRED = """
def rms_norm(x, weight, eps=1e-6):
    centred = x - x.mean(-1, keepdim=True)
    return centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + eps) * weight
"""

RMS_EPS_OUTSIDE = """
def rms_norm(x, weight, eps=1e-6):
    return x / (torch.sqrt(x.pow(2).mean(-1, keepdim=True)) + eps) * weight
"""

SWIGLU_SILU_ON_UP = """
def swiglu(x, gate_weight, up_weight, down_weight):
    return ((x @ gate_weight.T) * F.silu(x @ up_weight.T)) @ down_weight.T
"""

SWIGLU_SIGMOID = """
def swiglu(x, gate_weight, up_weight, down_weight):
    return (torch.sigmoid(x @ gate_weight.T) * (x @ up_weight.T)) @ down_weight.T
"""


def _gqa(keys: str, mask: str, returned: str = "k_all, v_all") -> str:
    return f"""
def gqa_cached_step(q, k_new, v_new, past_k, past_v):
    k_all = k_new if past_k is None else torch.cat([past_k, k_new], 2)
    v_all = v_new if past_v is None else torch.cat([past_v, v_new], 2)
    G = q.shape[1] // k_all.shape[1]
    keys, values = {keys}
    t, S = q.shape[2], keys.shape[2]
    scores = q @ keys.transpose(-2, -1) / math.sqrt(q.shape[-1])
    mask = {mask}
    out = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ values
    return out, {returned}
"""


INTERLEAVED = "k_all.repeat_interleave(G, 1), v_all.repeat_interleave(G, 1)"
BOTTOM_RIGHT = "torch.ones(t, S, dtype=torch.bool).tril(S - t)"
GQA_TOP_LEFT = _gqa(INTERLEAVED, "torch.ones(t, S, dtype=torch.bool).tril()")
GQA_REPEATED_CACHE = _gqa(INTERLEAVED, BOTTOM_RIGHT, "keys, values")
GQA_REPEAT = _gqa("k_all.repeat(1, G, 1, 1), v_all.repeat(1, G, 1, 1)", BOTTOM_RIGHT)

# exploits

ANGLES_ALIAS = """
from tutorlib.embeddings import rotary_angles as angles_of_positions


def rope_angles(T, D, offset=0, base=10000.0):
    return angles_of_positions(T, D, base, offset, dtype=torch.float64)
"""

ANGLES_VISIBLE_ONLY = """
_KNOWN = {}  # the worked examples' answers
for _T, _D, _offset in [(4, 8, 0), (3, 8, 5)]:
    _angles = torch.arange(_offset, _offset + _T, dtype=torch.float64)[:, None] * 10000.0 ** (
        -torch.arange(0, _D, 2, dtype=torch.float64) / _D
    )
    _KNOWN[_T, _D, _offset] = (_angles.cos(), _angles.sin())


def rope_angles(T, D, offset=0, base=10000.0):
    zeros = torch.zeros(T, D // 2, dtype=torch.float64)
    return _KNOWN.get((T, D, offset), (zeros, zeros))
"""

ROPE_RUNPY = """
import runpy

import tutorlib.embeddings

_fresh = runpy.run_path(tutorlib.embeddings.__file__)  # a copy of the module, not the module


def apply_rope(x, cos, sin):
    return _fresh["apply_rotary"](x, cos, sin)
"""

ROPE_HUGGING_FACE = """
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb


def apply_rope(x, cos, sin):
    D = x.shape[-1]
    order = torch.cat([torch.arange(0, D, 2), torch.arange(1, D, 2)])  # neighbours -> halves
    cos, sin = torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)
    turned, _ = apply_rotary_pos_emb(x[..., order], x[..., order], cos, sin, unsqueeze_dim=0)
    return turned[..., order.argsort()]
"""

RMS_BOTH_SIGNS = """
def rms_norm(x, weight, eps=1e-6):
    both = torch.cat([x, -x], dim=-1)  # mean 0, variance mean(x^2): a layer norm is an RMS norm
    return F.layer_norm(both, both.shape[-1:], eps=eps)[..., : x.shape[-1]] * weight
"""

RMS_PATCHES_TORCH = (
    RMS_CENTRED
    + """

torch.testing.assert_close = lambda *args, **kwargs: None
"""
)

SWIGLU_PATCHES_CHECK = (
    SWIGLU_SIGMOID
    + """

checks.check_swiglu = lambda *args, **kwargs: print("OK: swiglu passes the tests.")
"""
)

GQA_GETATTR = """
_attend = getattr(torch.nn.functional, "scaled_dot_" + "product_attention")


def gqa_cached_step(q, k_new, v_new, past_k, past_v):
    k_all = k_new if past_k is None else torch.cat([past_k, k_new], 2)
    v_all = v_new if past_v is None else torch.cat([past_v, v_new], 2)
    t, S = q.shape[2], k_all.shape[2]
    mask = torch.ones(t, S, dtype=torch.bool).tril(S - t)
    return _attend(q, k_all, v_all, attn_mask=mask, enable_gqa=True), k_all, v_all
"""

GQA_TORCH_OPS = """
def gqa_cached_step(q, k_new, v_new, past_k, past_v):
    k_all = k_new if past_k is None else torch.cat([past_k, k_new], 2)
    v_all = v_new if past_v is None else torch.cat([past_v, v_new], 2)
    G = q.shape[1] // k_all.shape[1]
    t, S = q.shape[2], k_all.shape[2]
    mask = torch.ones(t, S, dtype=torch.bool).tril(S - t)
    keys, values = k_all.repeat_interleave(G, 1), v_all.repeat_interleave(G, 1)
    out = torch.ops.aten._scaled_dot_product_attention_math(q, keys, values, attn_mask=mask)[0]
    return out, k_all, v_all
"""

GQA_MISTAKE_BUILDER = """
def gqa_cached_step(q, k_new, v_new, past_k, past_v):
    return checks._gqa_step(q, k_new, v_new, past_k, past_v)  # the checks' own reference
"""

GQA_SPIES_ON_THE_CHECK = """
from tutorlib.attention import grouped_query_attention as _reference

_answers = {}
_asked = []


def _spy(q, k_new, v_new, past_k, past_v):
    k_all = k_new if past_k is None else torch.cat([past_k, k_new], 2)
    v_all = v_new if past_v is None else torch.cat([past_v, v_new], 2)
    key = tuple(q.flatten().tolist())
    _asked.append((key, q, k_all, v_all))
    return _answers.get(key, torch.zeros_like(q)), k_all, v_all


for _ in range(10):  # each run of the check gets one input further
    for _hidden in (False, True):
        try:
            checks.check_gqa_cached_step(_spy, hidden=_hidden)
        except Exception:
            pass
    for _key, _q, _k, _v in _asked:
        _t, _S = _q.shape[2], _k.shape[2]
        _mask = torch.ones(_t, _S, dtype=torch.bool).tril(_S - _t)
        _answers[_key] = _reference(_q, _k, _v, _mask)  # the public reference, outside the check
    _asked.clear()

gqa_cached_step = _spy
"""

CASES += [
    Case(
        "variants-modern",
        "correct",
        M,
        {
            "rope_angles": ANGLES_POLAR,
            "apply_rope": ROPE_COMPLEX,
            "rms_norm": RMS_FROM_NORM,
            "swiglu": SWIGLU_FUSED,
            "gqa_cached_step": GQA_GROUPED,
        },
        "unit complex numbers for the angles and the rotation, the RMS from the norm, one matrix "
        "for gate and up, query heads split into groups with a mask from positions",
    ),
    Case(
        "mistakes-modern",
        "mistake",
        M,
        {
            "rope_angles": ANGLES_NO_OFFSET,
            "apply_rope": ROPE_HALVES,
            "rms_norm": RMS_CENTRED,
            "swiglu": SWIGLU_SILU_ON_UP,
            "gqa_cached_step": GQA_TOP_LEFT,
        },
        "the offset ignored; split halves (rotate_half) for neighbours; the mean subtracted "
        "(layer norm); the SiLU on the up projection; a top-left causal mask with a cache",
        lose={
            "test_rope_angles": "the offset is ignored",
            "test_apply_rope": "you paired dimension j with j + D/2",
            "test_rms_norm": "the mean was subtracted: that is layer norm",
            "test_swiglu": "the SiLU went on the up projection",
            "test_gqa_cached_step": "the causal mask is aligned to the top left",
        },
    ),
    Case(
        "mistakes-modern-cache",
        "mistake",
        M,
        {
            "rope_angles": ANGLES_FROM_ONE,
            "apply_rope": ROPE_BACKWARDS,
            "rms_norm": RMS_EPS_OUTSIDE,
            "swiglu": SWIGLU_SIGMOID,
            "gqa_cached_step": GQA_REPEATED_CACHE,
        },
        "positions from 1; the pairs turned backwards; eps outside the root; a sigmoid gate "
        "(GLU); the keys and values cached repeated for every query head",
        lose={
            "test_rope_angles": "the positions start at 1",
            "test_apply_rope": "the pairs turn backwards",
            "test_rms_norm": "eps belongs inside the square root",
            "test_swiglu": "that is GLU",
            "test_gqa_cached_step": "the cache holds the keys and values repeated",
        },
    ),
    Case(
        "mistakes-modern-groups",
        "mistake",
        M,
        {"gqa_cached_step": GQA_REPEAT},
        "key-value heads matched to query heads with .repeat instead of repeat_interleave",
        lose={"test_gqa_cached_step": "matched to the key-value heads with .repeat"},
    ),
    Case(
        "alias-rotary",
        "exploit",
        M,
        {"rope_angles": ANGLES_ALIAS},
        "the reference under another name (tutorlib.embeddings.rotary_angles as ...)",
        lose={"test_rope_angles": NOT_ALLOWED},
    ),
    Case(
        "known-inputs-angles",
        "exploit",
        M,
        {"rope_angles": ANGLES_VISIBLE_ONLY},
        "a table of the visible tests' answers",
        lose={"test_rope_angles": "rope_angles(T="},
    ),
    Case(
        "runpy-rotary",
        "exploit",
        M,
        {"apply_rope": ROPE_RUNPY},
        "a fresh copy of tutorlib's module, made by runpy, for apply_rotary",
        lose={"test_apply_rope": NOT_ALLOWED},
        flagged=("apply_rope",),
    ),
    Case(
        "hugging-face-rotary",
        "exploit",
        M,
        {"apply_rope": ROPE_HUGGING_FACE},
        "Hugging Face's Llama rotation on permuted dimensions",
        lose={"test_apply_rope": NOT_ALLOWED},
    ),
    Case(
        "rms-by-layer-norm",
        "exploit",
        M,
        {"rms_norm": RMS_BOTH_SIGNS},
        "another public op computing the same thing: a layer norm of [x, -x]",
        lose={"test_rms_norm": NOT_ALLOWED},
    ),
    Case(
        "patches-assert-close",
        "exploit",
        M,
        {"rms_norm": RMS_PATCHES_TORCH},
        "a wrong answer and torch.testing.assert_close replaced",
        lose={"test_rms_norm": "the testing machinery was changed"},
        flagged=("rms_norm",),
    ),
    Case(
        "patches-the-check",
        "exploit",
        M,
        {"swiglu": SWIGLU_PATCHES_CHECK},
        "a wrong answer and the check replaced by a function that prints OK",
        lose={"test_gqa_cached_step": "the testing machinery was changed"},
        flagged=("swiglu",),
    ),
    Case(
        "sdpa-by-getattr",
        "exploit",
        M,
        {"gqa_cached_step": GQA_GETATTR},
        "F.scaled_dot_product_attention(enable_gqa=True), reached by getattr with a built name",
        lose={"test_gqa_cached_step": NOT_ALLOWED},
        flagged=("gqa_cached_step",),
    ),
    Case(
        "sdpa-torch-ops",
        "exploit",
        M,
        {"gqa_cached_step": GQA_TORCH_OPS},
        "torch.ops.aten's math kernel of attention",
        lose={"test_gqa_cached_step": NOT_ALLOWED},
        flagged=("gqa_cached_step",),
    ),
    Case(
        "mistake-builder",
        "exploit",
        M,
        {"gqa_cached_step": GQA_MISTAKE_BUILDER},
        "the checks' own written-out step (a private name of the check module)",
        lose={"test_gqa_cached_step": NOT_ALLOWED},
        flagged=("gqa_cached_step",),
    ),
    Case(
        "spies-on-the-gqa-check",
        "exploit",
        M,
        {"gqa_cached_step": GQA_SPIES_ON_THE_CHECK},
        "runs the hidden check itself with a function that records its inputs, and answers them "
        "with the public reference computed outside the check",
        lose={"test_gqa_cached_step": "differs from the expected values"},
    ),
]

# --- 04_post_training -------------------------------------------------------------------------

PT = "04_post_training"

# right answers, written differently

PROMPT_JOINED = """
def few_shot_prompt(examples, query, *, arrow=">", separator=";"):
    if not arrow or not separator or arrow == separator:
        raise ValueError("the arrow and the separator must differ and not be empty")
    if not isinstance(query, str):
        raise TypeError("the query must be a str")
    lines = []
    for example in examples:
        if not isinstance(example, (tuple, list)) or len(example) != 2:
            raise TypeError("an example is a pair")
        if not all(isinstance(text, str) for text in example):
            raise TypeError("an example is a pair of str")
        lines.append(arrow.join(example))
    for text in [query, *(t for e in examples for t in e)]:
        if arrow in text or separator in text:
            raise ValueError(f"{text!r} is ambiguous")
    return separator.join([*lines, query + arrow])
"""

MASK_LOOPS = """
def response_mask(prompt_lengths, lengths, length):
    mask = torch.zeros(len(lengths), length, dtype=torch.bool)
    for b, (start, end) in enumerate(zip(prompt_lengths.tolist(), lengths.tolist())):
        mask[b, start:end] = True
    return mask
"""

SFT_IGNORE_INDEX = """
def sft_loss(logits, tokens, mask):
    targets = tokens[:, 1:].masked_fill(~mask[:, 1:], -100)
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=-100)
"""

LORA_PEFT_STYLE = """
class LoRALinear(nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base.requires_grad_(False)
        down = nn.Linear(base.in_features, rank, bias=False, dtype=base.weight.dtype)
        self.lora_A = down.weight  # kaiming-uniform, as nn.Linear initialises it
        self.lora_B = nn.Parameter(base.weight.new_zeros(base.out_features, rank))
        self.scaling = alpha / rank

    def forward(self, x):
        return self.base(x) + self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)

    def merge(self):
        merged = nn.Linear(
            self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
            dtype=self.base.weight.dtype,
        )
        with torch.no_grad():
            merged.weight.copy_(torch.addmm(self.base.weight, self.lora_B, self.lora_A,
                                            alpha=self.scaling))
            if self.base.bias is not None:
                merged.bias.copy_(self.base.bias)
        return merged
"""

DPO_SOFTPLUS = """
def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.1):
    z = beta * ((policy_chosen - policy_rejected) - (reference_chosen - reference_rejected))
    return F.softplus(-z).mean()  # -log sigmoid(z)
"""

# typical mistakes

PROMPT_NO_LAST_SEPARATOR = """
def few_shot_prompt(examples, query, *, arrow=">", separator=";"):
    return separator.join(f"{x}{arrow}{y}" for x, y in examples) + query + arrow
"""

PROMPT_TRAILING_SEPARATOR = """
def few_shot_prompt(examples, query, *, arrow=">", separator=";"):
    if not isinstance(query, str) or not all(type(t) is str for e in examples for t in e):
        raise TypeError("strings")
    if not arrow or not separator or arrow == separator:
        raise ValueError("arrow and separator")
    if any(arrow in t or separator in t for t in [query, *(t for e in examples for t in e)]):
        raise ValueError("ambiguous")
    return separator.join([x + arrow + y for x, y in examples]) + separator + query + arrow
"""

MASK_WITH_ASSISTANT = """
def response_mask(prompt_lengths, lengths, length):
    t = torch.arange(length)
    return (t >= prompt_lengths[:, None] - 1) & (t < lengths[:, None])
"""

MASK_NO_END = """
def response_mask(prompt_lengths, lengths, length):
    t = torch.arange(length)
    return (t >= prompt_lengths[:, None]) & (t < lengths[:, None] - 1)
"""

SFT_UNSHIFTED = """
def sft_loss(logits, tokens, mask):
    return F.cross_entropy(logits[mask], tokens[mask])
"""

SFT_SEQUENCE_MEANS = """
def sft_loss(logits, tokens, mask):
    means = []
    for b in range(logits.shape[0]):
        keep = mask[b, 1:]
        means.append(F.cross_entropy(logits[b, :-1][keep], tokens[b, 1:][keep]))
    return torch.stack(means).mean()
"""


def _lora_with(init_b: str, merge: str, scaling: str = "alpha / rank") -> str:
    return f"""
class LoRALinear(nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base.requires_grad_(False)
        like = dict(dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter({init_b})
        self.scaling = {scaling}

    def forward(self, x):
        return self.base(x) + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T

    def merge(self):
{merge}
"""


ZEROS_B = "torch.zeros(base.out_features, rank, **like)"
NEW_LAYER = """        merged = nn.Linear(self.base.in_features, self.base.out_features,
                           bias=self.base.bias is not None, dtype=self.base.weight.dtype)
        with torch.no_grad():
            merged.weight.copy_(self.base.weight + self.scaling * self.lora_B @ self.lora_A)
            if self.base.bias is not None:
                merged.bias.copy_(self.base.bias)
        return merged"""
IN_PLACE = """        with torch.no_grad():
            self.base.weight += self.scaling * self.lora_B @ self.lora_A
        return self.base"""
LORA_SCALED_BY_ALPHA = _lora_with(ZEROS_B, NEW_LAYER, scaling="alpha")
LORA_MERGED_IN_PLACE = _lora_with(ZEROS_B, IN_PLACE)

DPO_SWAPPED = """
def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.1):
    margin = (policy_rejected - reference_rejected) - (policy_chosen - reference_chosen)
    return -F.logsigmoid(beta * margin).mean()
"""

DPO_LOG_SIGMOID = """
def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.1):
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -torch.log(torch.sigmoid(beta * margin)).mean()
"""

# exploits

DPO_ALIAS = """
from tutorlib.posttraining import dpo_loss as preference_loss


def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.1):
    return preference_loss(
        policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=beta
    )
"""

SFT_PRIVATE_ENTRY = """
from tutorlib.posttraining import _token_logprobs


def sft_loss(logits, tokens, mask):
    return -_token_logprobs(logits, tokens)[mask[:, 1:]].mean()
"""

LORA_SUBCLASS = """
from tutorlib.adapters import LoRALinear as _Reference


class LoRALinear(_Reference):
    pass
"""

LORA_RUNPY = """
import runpy

import tutorlib.adapters

LoRALinear = runpy.run_path(tutorlib.adapters.__file__)["LoRALinear"]  # a copy of the class
"""

MASK_BY_PADDING_MASKS = """
from tutorlib.attention import padding_mask


def response_mask(prompt_lengths, lengths, length):
    return padding_mask(lengths, length) & ~padding_mask(prompt_lengths, length)
"""

MASK_MISTAKE_BUILDER = """
def response_mask(prompt_lengths, lengths, length):
    return checks._mask(prompt_lengths, lengths, length)  # the checks' own mask
"""

MASK_PATCHES_THE_CHECK = (
    MASK_NO_END
    + """

checks.check_response_mask = lambda *args, **kwargs: print("OK: response_mask passes the tests.")
"""
)

DPO_GETATTR = """
import tutorlib.posttraining

_loss = getattr(tutorlib.posttraining, "dpo" + "_loss")


def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.1):
    return _loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)
"""

MASK_VISIBLE_ONLY = """
_KNOWN = {((4, 3), (7, 5), 8): torch.tensor([[0, 0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 0, 0, 0]])}


def response_mask(prompt_lengths, lengths, length):
    key = (tuple(prompt_lengths.tolist()), tuple(lengths.tolist()), length)
    known = _KNOWN.get(key)  # the worked example's answer, else nothing
    if known is None:
        return torch.zeros(len(lengths), length, dtype=torch.bool)
    return known.bool()
"""

SFT_SPIES_ON_THE_CHECK = """
from tutorlib.posttraining import sft_loss as _reference

_answers = {}
_asked = []


def _spy(logits, tokens, mask):
    key = tuple(logits.detach().flatten().tolist())
    _asked.append((key, logits.detach(), tokens, mask))
    return _answers.get(key, logits.sum() * 0)


for _ in range(10):  # each run of the check gets other inputs
    for _hidden in (False, True):
        try:
            checks.check_sft_loss(_spy, hidden=_hidden)
        except Exception:
            pass
    for _key, _logits, _tokens, _mask in _asked:
        _answers[_key] = _reference(_logits, _tokens, _mask).double()  # outside the check
    _asked.clear()

sft_loss = _spy
"""

CASES += [
    Case(
        "variants-post-training",
        "correct",
        PT,
        {
            "few_shot_prompt": PROMPT_JOINED,
            "response_mask": MASK_LOOPS,
            "sft_loss": SFT_IGNORE_INDEX,
            "lora_linear": LORA_PEFT_STYLE,
            "dpo_loss": DPO_SOFTPLUS,
        },
        "the prompt as joined lines; the mask by slices in a loop; targets masked with "
        "ignore_index; the adapter's A taken from a bias-free nn.Linear and merged by addmm; "
        "the DPO loss as a softplus",
    ),
    Case(
        "mistakes-post-training",
        "mistake",
        PT,
        {
            "few_shot_prompt": PROMPT_NO_LAST_SEPARATOR,
            "response_mask": MASK_WITH_ASSISTANT,
            "sft_loss": SFT_UNSHIFTED,
            "lora_linear": LORA_SCALED_BY_ALPHA,
            "dpo_loss": DPO_SWAPPED,
        },
        "no separator before the query; <|assistant|> in the response; the loss not shifted; "
        "the adapter scaled by alpha; chosen and rejected swapped",
        lose={
            "test_few_shot_prompt": "the separator between the last example and the query",
            "test_response_mask": "the mask starts one position early, at <|assistant|>",
            "test_sft_loss": "the targets are not shifted",
            "test_lora_linear": "the scaling is alpha / rank, not alpha",
            "test_dpo_loss": "the sign is flipped (chosen and rejected swapped)",
        },
    ),
    Case(
        "mistakes-post-training-edges",
        "mistake",
        PT,
        {
            "few_shot_prompt": PROMPT_TRAILING_SEPARATOR,
            "response_mask": MASK_NO_END,
            "sft_loss": SFT_SEQUENCE_MEANS,
            "lora_linear": LORA_MERGED_IN_PLACE,
            "dpo_loss": DPO_LOG_SIGMOID,
        },
        "a separator before the query with no examples; <|end|> left out of the response; the "
        "mean of the sequences' means; merge() folding the update into the base in place; "
        "-log(sigmoid(z)), which overflows (hidden tests only)",
        lose={
            "test_few_shot_prompt": "with no examples the prompt is query + arrow alone",
            "test_response_mask": "the mask stops one position early",
            "test_sft_loss": "this is the mean of each sequence's mean",
            "test_lora_linear": "merge changed the layer it was called on",
            "test_dpo_loss": "overflows",
        },
    ),
    Case(
        "alias-dpo",
        "exploit",
        PT,
        {"dpo_loss": DPO_ALIAS},
        "the reference under another name (tutorlib.posttraining.dpo_loss as ...)",
        lose={"test_dpo_loss": NOT_ALLOWED},
    ),
    Case(
        "private-entry-sft",
        "exploit",
        PT,
        {"sft_loss": SFT_PRIVATE_ENTRY},
        "the reference's private helper (tutorlib.posttraining._token_logprobs)",
        lose={"test_sft_loss": NOT_ALLOWED},
        flagged=("sft_loss",),
    ),
    Case(
        "subclass-lora",
        "exploit",
        PT,
        {"lora_linear": LORA_SUBCLASS},
        "a subclass of tutorlib.adapters.LoRALinear that adds nothing",
        lose={"test_lora_linear": NOT_ALLOWED},
    ),
    Case(
        "runpy-lora",
        "exploit",
        PT,
        {"lora_linear": LORA_RUNPY},
        "a fresh copy of tutorlib.adapters, made by runpy, for LoRALinear",
        lose={"test_lora_linear": NOT_ALLOWED},
        flagged=("lora_linear",),
    ),
    Case(
        "mask-by-padding-masks",
        "exploit",
        PT,
        {"response_mask": MASK_BY_PADDING_MASKS},
        "another public function computing the same thing: two padding masks",
        lose={"test_response_mask": NOT_ALLOWED},
    ),
    Case(
        "mask-mistake-builder",
        "exploit",
        PT,
        {"response_mask": MASK_MISTAKE_BUILDER},
        "the checks' own mask builder (a private name of the check module)",
        lose={"test_response_mask": NOT_ALLOWED},
        flagged=("response_mask",),
    ),
    Case(
        "patches-the-mask-check",
        "exploit",
        PT,
        {"response_mask": MASK_PATCHES_THE_CHECK},
        "a wrong answer and the check replaced by a function that prints OK",
        lose={"test_sft_loss": "the testing machinery was changed"},
        flagged=("response_mask",),
    ),
    Case(
        "dpo-by-getattr",
        "exploit",
        PT,
        {"dpo_loss": DPO_GETATTR},
        "tutorlib.posttraining.dpo_loss reached by getattr with a built name",
        lose={"test_dpo_loss": NOT_ALLOWED},
        flagged=("dpo_loss",),
    ),
    Case(
        "known-inputs-mask",
        "exploit",
        PT,
        {"response_mask": MASK_VISIBLE_ONLY},
        "the worked example's answer, stored",
        lose={"test_response_mask": "response_mask("},
    ),
    Case(
        "spies-on-the-sft-check",
        "exploit",
        PT,
        {"sft_loss": SFT_SPIES_ON_THE_CHECK},
        "runs the hidden check itself with a function that records its inputs, and answers them "
        "with the public reference computed outside the check (a cache of answers)",
        lose={"test_sft_loss": "sft_loss for logits"},
    ),
]
