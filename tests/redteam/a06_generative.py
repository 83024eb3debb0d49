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
