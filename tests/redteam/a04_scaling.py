"""Red-team submissions of Chapter 4 (solutions/04_scaling)."""

from __future__ import annotations

from tests.redteam import Case

C, E = "01_counting_and_memory", "02_efficient_inference"

# --- right answers, written differently -------------------------------------------------------

PARAMS_BY_PARTS = """
def parameter_count(vocab_size, context_length, d_model, n_layers, d_ff):
    C = d_model
    qkv = 3 * (C * C + C)
    out_proj = C * C + C
    up, down = C * d_ff + d_ff, d_ff * C + C
    per_layer = sum([qkv, out_proj, up, down, 2 * C, 2 * C])
    return (vocab_size + context_length) * C + n_layers * per_layer + 2 * C
"""

FLOPS_BY_PRODUCTS = """
def forward_flops(vocab_size, d_model, n_layers, d_ff, seq_len):
    def matmul(m, k, n):
        return 2 * m * k * n

    T, C = seq_len, d_model
    layer = 4 * matmul(T, C, C) + matmul(T, C, T) + matmul(T, T, C)
    layer += matmul(T, C, d_ff) + matmul(T, d_ff, C)
    return n_layers * layer + matmul(T, C, vocab_size)
"""

ACCUMULATE_BY_SLICES = """
def accumulate_gradients(model, inputs, targets, n_micro):
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    B = inputs.shape[0]
    size = B // n_micro
    for start in range(0, B, size):
        x, y = inputs[start : start + size], targets[start : start + size]
        loss = F.cross_entropy(model(x), y, reduction="sum") / B  # its share of the mean
        loss.backward()
"""

FIT_BY_SUMS = """
def fit_power_law(n, loss):
    x = [math.log(v) for v in n.tolist()]
    y = [math.log(v) for v in loss.tolist()]
    m = len(x)
    sx, sy = sum(x), sum(y)
    sxy = sum(a * b for a, b in zip(x, y))
    sxx = sum(a * a for a in x)
    slope = (m * sxy - sx * sy) / (m * sxx - sx * sx)
    return -slope, math.exp((sy - slope * sx) / m)
"""

KV_EINSUM = """
def kv_attention_step(q, k_new, v_new, cache_k, cache_v):
    keys = torch.cat((cache_k, k_new), dim=-2)
    values = torch.cat((cache_v, v_new), dim=-2)
    scores = torch.einsum("bhqd,bhkd->bhqk", q, keys) * q.shape[-1] ** -0.5
    weights = (scores - scores.amax(-1, keepdim=True)).exp()
    weights = weights / weights.sum(-1, keepdim=True)
    return torch.einsum("bhqk,bhkd->bhqd", weights, values), keys, values
"""

QUANT_MULTIPLY = """
def quantize_per_channel(w):
    inverse = 127.0 / w.float().abs().max(dim=1, keepdim=True).values
    scaled = w.float() * inverse
    q = torch.where(scaled >= 0, (scaled + 0.5).floor(), -((0.5 - scaled).floor()))
    return q.clamp(-127, 127).to(torch.int8), 1.0 / inverse
"""

MASK_RANKS = """
def magnitude_mask(weight, amount):
    ranks = weight.abs().flatten().argsort().argsort().reshape(weight.shape)
    return ranks >= round(amount * weight.numel())
"""

DISTILL_SOFT_CROSS_ENTROPY = """
def distillation_loss(student_logits, teacher_logits, targets, temperature, alpha):
    T = temperature
    with torch.no_grad():
        p_teacher = torch.softmax(teacher_logits / T, dim=1)
        entropy = -(p_teacher * p_teacher.log()).sum(dim=1).mean()
    kl = F.cross_entropy(student_logits / T, p_teacher) - entropy  # cross-entropy - entropy
    hard = -torch.log_softmax(student_logits, dim=1).gather(1, targets[:, None]).mean()
    return torch.lerp(hard, T * T * kl, alpha)
"""

# --- typical mistakes -------------------------------------------------------------------------

PARAMS_UNTIED = """
def parameter_count(vocab_size, context_length, d_model, n_layers, d_ff):
    C = d_model
    layer = 4 * C * C + 4 * C + 2 * C * d_ff + d_ff + C + 4 * C
    return 2 * vocab_size * C + context_length * C + n_layers * layer + 2 * C
"""

PARAMS_NO_FINAL_NORM = """
def parameter_count(vocab_size, context_length, d_model, n_layers, d_ff):
    C = d_model
    layer = 4 * C * C + 4 * C + 2 * C * d_ff + d_ff + C + 4 * C
    return vocab_size * C + context_length * C + n_layers * layer
"""

FLOPS_HALF = """
def forward_flops(vocab_size, d_model, n_layers, d_ff, seq_len):
    C, T = d_model, seq_len
    layer = T * 4 * C * C + 2 * T * T * C + T * 2 * C * d_ff  # one FLOP per multiply-add
    return n_layers * layer + T * vocab_size * C
"""

FLOPS_TRAINING = """
def forward_flops(vocab_size, d_model, n_layers, d_ff, seq_len):
    C, T = d_model, seq_len
    layer = 2 * T * 4 * C * C + 4 * T * T * C + 4 * T * C * d_ff
    return 3 * (n_layers * layer + 2 * T * vocab_size * C)  # forward and backward
"""

ACCUMULATE_UNSCALED = """
def accumulate_gradients(model, inputs, targets, n_micro):
    model.zero_grad()
    for x, y in zip(inputs.chunk(n_micro), targets.chunk(n_micro)):
        F.cross_entropy(model(x), y).backward()
"""

ACCUMULATE_ZERO_INSIDE = """
def accumulate_gradients(model, inputs, targets, n_micro):
    for x, y in zip(inputs.chunk(n_micro), targets.chunk(n_micro)):
        model.zero_grad()
        (F.cross_entropy(model(x), y) / n_micro).backward()
"""

ACCUMULATE_FULL_BATCH = """
def accumulate_gradients(model, inputs, targets, n_micro):
    model.zero_grad()
    F.cross_entropy(model(inputs), targets).backward()  # the same gradient, all at once
"""

FIT_SIGN = """
def fit_power_law(n, loss):
    x, y = torch.log(n), torch.log(loss)
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    return slope.item(), torch.exp(y.mean() - slope * x.mean()).item()
"""

FIT_SWAPPED = """
def fit_power_law(n, loss):
    x, y = torch.log(loss), torch.log(n)  # log(n) regressed on log(loss)
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    intercept = y.mean() - slope * x.mean()
    return -(1 / slope).item(), torch.exp(-intercept / slope).item()
"""

KV_NO_SCALE = """
def kv_attention_step(q, k_new, v_new, cache_k, cache_v):
    keys = torch.cat([cache_k, k_new], dim=2)
    values = torch.cat([cache_v, v_new], dim=2)
    weights = torch.softmax(q @ keys.transpose(-2, -1), dim=-1)
    return weights @ values, keys, values
"""

KV_NEW_FIRST = """
def kv_attention_step(q, k_new, v_new, cache_k, cache_v):
    keys = torch.cat([k_new, cache_k], dim=2)
    values = torch.cat([v_new, cache_v], dim=2)
    weights = torch.softmax(q @ keys.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ values, keys, values
"""

QUANT_PER_TENSOR = """
def quantize_per_channel(w):
    scale = w.abs().max().float() / 127
    return torch.round(w.float() / scale).clamp(-127, 127).to(torch.int8), scale
"""

QUANT_TRUNCATE = """
def quantize_per_channel(w):
    scale = w.abs().amax(dim=1, keepdim=True).float() / 127
    return (w.float() / scale).to(torch.int8), scale
"""

MASK_TOPK_DEFAULT = """
def magnitude_mask(weight, amount):
    k = round(amount * weight.numel())
    keep = torch.ones(weight.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.topk(weight.abs().flatten(), k).indices] = False  # topk: the largest
    return keep.view(weight.shape)
"""

MASK_SIGNED = """
def magnitude_mask(weight, amount):
    k = round(amount * weight.numel())
    keep = torch.ones(weight.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.topk(weight.flatten(), k, largest=False).indices] = False
    return keep.view(weight.shape)
"""

MASK_FLOOR = """
def magnitude_mask(weight, amount):
    k = math.floor(amount * weight.numel())
    keep = torch.ones(weight.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.topk(weight.abs().flatten(), k, largest=False).indices] = False
    return keep.view(weight.shape)
"""

MASK_INT_KTHVALUE = """
def magnitude_mask(weight, amount):
    k = int(amount * weight.numel())
    if k == 0:
        return torch.ones_like(weight, dtype=torch.bool)
    threshold = weight.abs().flatten().kthvalue(k).values
    return weight.abs() > threshold
"""

DISTILL_NO_T2 = """
def distillation_loss(student_logits, teacher_logits, targets, temperature, alpha):
    T = temperature
    log_p_student = torch.log_softmax(student_logits / T, dim=-1)
    log_p_teacher = torch.log_softmax(teacher_logits.detach() / T, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1).mean()
    return alpha * kl + (1 - alpha) * F.cross_entropy(student_logits, targets)
"""

DISTILL_MEAN_REDUCTION = """
def distillation_loss(student_logits, teacher_logits, targets, temperature, alpha):
    T = temperature
    log_p_student = torch.log_softmax(student_logits / T, dim=-1)
    log_p_teacher = torch.log_softmax(teacher_logits.detach() / T, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).mean()  # over N x V
    return alpha * T**2 * kl + (1 - alpha) * F.cross_entropy(student_logits, targets)
"""

# --- exploits ---------------------------------------------------------------------------------


QUANT_TORCH_OPS = """
def quantize_per_channel(w):
    scale = w.float().abs().amax(dim=1) / 127
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    q = torch.ops.aten.quantize_per_channel(w.float(), scale.double(), zero, 0, torch.qint8)
    return q.int_repr(), scale[:, None]
"""

FIT_LSTSQ = """
def fit_power_law(n, loss):
    design = torch.stack([torch.log(n), torch.ones_like(n)], dim=1)
    solution = torch.linalg.lstsq(design, torch.log(loss)[:, None]).solution[:, 0]
    return -solution[0].item(), torch.exp(solution[1]).item()
"""

FIT_POLYFIT = """
import numpy


def fit_power_law(n, loss):
    slope, intercept = numpy.polyfit(numpy.log(n.numpy()), numpy.log(loss.numpy()), 1)
    return -float(slope), math.exp(intercept)
"""

DISTILL_KL_MODULE = """
def distillation_loss(student_logits, teacher_logits, targets, temperature, alpha):
    T = temperature
    divergence = torch.nn.KLDivLoss(reduction="batchmean", log_target=True)
    kl = divergence(
        torch.log_softmax(student_logits / T, dim=-1),
        torch.log_softmax(teacher_logits.detach() / T, dim=-1),
    )
    return alpha * T * T * kl + (1 - alpha) * F.cross_entropy(student_logits, targets)
"""


PARAMS_KNOWN_INPUTS = """
def _params(V, ctx, C, L, f):
    return V * C + ctx * C + L * (4 * C * C + 4 * C + 2 * C * f + f + C + 4 * C) + 2 * C


# the worked example, and the hidden inputs the course once had
_KNOWN = {s: _params(*s) for s in [(50257, 1024, 768, 12, 3072), (100, 64, 32, 2, 128),
                                    (7, 5, 8, 1, 3), (32000, 4096, 4096, 32, 11008)]}


def parameter_count(vocab_size, context_length, d_model, n_layers, d_ff):
    return _KNOWN.get((vocab_size, context_length, d_model, n_layers, d_ff), 0)
"""

FLOPS_KNOWN_INPUTS = """
def _flops(V, C, L, f, T):
    return L * (8 * T * C * C + 4 * T * T * C + 4 * T * C * f) + 2 * T * V * C


_KNOWN_FLOPS = {s: _flops(*s) for s in [(50257, 768, 12, 3072, 1024), (100, 32, 2, 128, 16),
                                         (11, 8, 3, 5, 7), (32000, 4096, 32, 11008, 4096)]}


def forward_flops(vocab_size, d_model, n_layers, d_ff, seq_len):
    return _KNOWN_FLOPS.get((vocab_size, d_model, n_layers, d_ff, seq_len), 0)
"""

PARAMS_BUILD_MODEL = """
from tutorlib.models import DecoderOnly, TransformerConfig


def parameter_count(vocab_size, context_length, d_model, n_layers, d_ff):
    config = TransformerConfig(
        vocab_size, context_length, d_model, 1, n_layers, d_ff,
        norm_first=True, positional="learned", tie_weights=True,
    )
    with torch.device("meta"):  # no memory
        model = DecoderOnly(config)
    return sum(p.numel() for p in model.parameters())
"""

FLOPS_COUNTER = """
from torch.utils.flop_counter import FlopCounterMode

from tutorlib.models import DecoderOnly, TransformerConfig


def forward_flops(vocab_size, d_model, n_layers, d_ff, seq_len):
    config = TransformerConfig(vocab_size, seq_len, d_model, 1, n_layers, d_ff)
    model = DecoderOnly(config)
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, seq_len, dtype=torch.long))
    return counter.get_total_flops()
"""

NOT_ALLOWED = "Not allowed in this exercise"

CASES = [
    Case(
        "variants-counting",
        "correct",
        C,
        {
            "parameter_count": PARAMS_BY_PARTS,
            "forward_flops": FLOPS_BY_PRODUCTS,
            "accumulate_gradients": ACCUMULATE_BY_SLICES,
            "fit_power_law": FIT_BY_SUMS,
        },
        "counts by parts and by products; sum-reduced slices; the normal equations in sums",
    ),
    Case(
        "variants-inference",
        "correct",
        E,
        {
            "kv_attention_step": KV_EINSUM,
            "quantize_per_channel": QUANT_MULTIPLY,
            "magnitude_mask": MASK_RANKS,
            "distillation_loss": DISTILL_SOFT_CROSS_ENTROPY,
        },
        "einsum and a written-out softmax; w * (127 / max) rounded half away from zero; ranks "
        "by a double argsort; soft-target cross-entropy minus the entropy, and lerp",
    ),
    Case(
        "mistakes-counting",
        "mistake",
        C,
        {
            "parameter_count": PARAMS_UNTIED,
            "forward_flops": FLOPS_HALF,
            "accumulate_gradients": ACCUMULATE_UNSCALED,
            "fit_power_law": FIT_SIGN,
        },
        "untied output; one FLOP per multiply-add; unscaled micro-batch losses; alpha's sign",
        lose={
            "test_parameter_count": "tied to the token embedding",
            "test_forward_flops": "a multiply-add counts as 2 FLOPs",
            "test_accumulate_gradients": "divided by the number of micro-batches",
            "test_fit_power_law": "alpha has the wrong sign",
        },
    ),
    Case(
        "more-mistakes-counting",
        "mistake",
        C,
        {
            "parameter_count": PARAMS_NO_FINAL_NORM,
            "forward_flops": FLOPS_TRAINING,
            "accumulate_gradients": ACCUMULATE_ZERO_INSIDE,
            "fit_power_law": FIT_SWAPPED,
        },
        "no final norm; the training cost; gradients zeroed in the loop; the reverse regression",
        lose={
            "test_parameter_count": "the final layer norm of the pre-norm stack",
            "test_forward_flops": "that is the training cost",
            "test_accumulate_gradients": "zeroed inside the loop",
            "test_fit_power_law": "the regression is of log(n) on log(loss)",
        },
    ),
    Case(
        "full-batch",
        "mistake",
        C,
        {"accumulate_gradients": ACCUMULATE_FULL_BATCH},
        "one pass over the full batch: the right gradient, without accumulating",
        lose={"test_accumulate_gradients": "the model ran once on the full batch"},
    ),
    Case(
        "mistakes-inference",
        "mistake",
        E,
        {
            "kv_attention_step": KV_NO_SCALE,
            "quantize_per_channel": QUANT_PER_TENSOR,
            "magnitude_mask": MASK_TOPK_DEFAULT,
            "distillation_loss": DISTILL_NO_T2,
        },
        "unscaled scores; one scale per tensor; topk's default picks the largest; no T^2",
        lose={
            "test_kv_attention_step": "the scores are not scaled",
            "test_quantize_per_channel": "one scale for the whole matrix",
            "test_magnitude_mask": "the largest weights were pruned",
            "test_distillation_loss": "not multiplied by T^2",
        },
    ),
    Case(
        "more-mistakes-inference",
        "mistake",
        E,
        {
            "kv_attention_step": KV_NEW_FIRST,
            "quantize_per_channel": QUANT_TRUNCATE,
            "magnitude_mask": MASK_SIGNED,
            "distillation_loss": DISTILL_MEAN_REDUCTION,
        },
        "the new key in front of the cache; truncation; signed ranking; the KL averaged over "
        "N x V entries",
        lose={
            "test_kv_attention_step": "was put in front of the cache",
            "test_quantize_per_channel": "the values are truncated",
            "test_magnitude_mask": "ranked by their signed value",
            "test_distillation_loss": "averaged over all N x V entries",
        },
    ),
    Case(
        "floor-count",
        "mistake",
        E,
        {"magnitude_mask": MASK_FLOOR},
        "used to pass: math.floor for the number pruned (the worked example's count and the old "
        "hidden counts had no fractional part above one half)",
        lose={"test_magnitude_mask": "rounded down (math.floor, or int()"},
    ),
    Case(
        "int-count",
        "mistake",
        E,
        {"magnitude_mask": MASK_INT_KTHVALUE},
        "used to pass: int() for the number pruned, then a kthvalue threshold",
        lose={"test_magnitude_mask": "rounded down (math.floor, or int()"},
    ),
    Case(
        "torch-ops",
        "exploit",
        E,
        {"quantize_per_channel": QUANT_TORCH_OPS},
        "a private entry point of torch's quantizer (torch.ops.aten)",
        lose={"test_quantize_per_channel": NOT_ALLOWED},
        flagged=("quantize_per_channel",),
    ),
    Case(
        "other-op-lstsq",
        "exploit",
        C,
        {"fit_power_law": FIT_LSTSQ},
        "another public op computing the same (torch.linalg.lstsq)",
        lose={"test_fit_power_law": NOT_ALLOWED},
    ),
    Case(
        "numpy-polyfit",
        "exploit",
        C,
        {"fit_power_law": FIT_POLYFIT},
        "a library's least squares (numpy.polyfit, a Python function refused by its code)",
        lose={"test_fit_power_law": NOT_ALLOWED},
    ),
    Case(
        "other-op-kl-module",
        "exploit",
        E,
        {"distillation_loss": DISTILL_KL_MODULE},
        "another public way to the same operator (torch.nn.KLDivLoss)",
        lose={"test_distillation_loss": NOT_ALLOWED},
    ),
    Case(
        "known-inputs",
        "exploit",
        C,
        {"parameter_count": PARAMS_KNOWN_INPUTS, "forward_flops": FLOPS_KNOWN_INPUTS},
        "a table of the visible inputs and of the hidden inputs the course once fixed",
        lose={
            "test_parameter_count": "parameter_count(",
            "test_forward_flops": "forward_flops(",
        },
    ),
    Case(
        "build-model",
        "exploit",
        C,
        {"parameter_count": PARAMS_BUILD_MODEL},
        "counts by building the model (on the meta device)",
        lose={"test_parameter_count": NOT_ALLOWED},
    ),
    Case(
        "flop-counter",
        "exploit",
        C,
        {"forward_flops": FLOPS_COUNTER},
        "counts with torch's FlopCounterMode on a built model",
        lose={"test_forward_flops": NOT_ALLOWED},
    ),
]

# --- 03_experts_drafts_tiles ------------------------------------------------------------------

X = "03_experts_drafts_tiles"

# right answers, written differently

ROUTE_TOP_LOGITS = """
def top_k_routing(router_logits, k):
    top, experts = router_logits.topk(k, dim=-1)
    return top.softmax(dim=-1), experts  # a softmax over the k top logits, as Mixtral does
"""

BALANCE_ONE_HOT = """
def load_balancing_loss(router_probs, experts, n_experts):
    N, k = experts.shape
    f = F.one_hot(experts, n_experts).sum(dim=(0, 1)).to(router_probs.dtype) / (N * k)
    return n_experts * torch.dot(f, router_probs.mean(dim=0))
"""

ACCEPT_VECTORISED = """
def speculative_accept(target_probs, draft_probs, draft_tokens, uniforms):
    k = draft_tokens.shape[0]
    rows = torch.arange(k)
    ratio = target_probs[rows, draft_tokens] / draft_probs[rows, draft_tokens]
    rejected = torch.nonzero(uniforms >= ratio).flatten()
    if rejected.numel() == 0:
        return k, target_probs[k]
    i = int(rejected[0])
    residual = torch.relu(target_probs[i] - draft_probs[i])
    return i, residual / residual.sum()
"""

UPDATE_MASKED_FILL = """
def online_softmax_update(m, l, acc, scores, values):
    m_new = torch.max(m, scores.max(dim=-1).values)
    safe = m_new.masked_fill(torch.isinf(m_new), 0.0)
    alpha = torch.exp(m - safe)
    p = torch.exp(scores - safe[..., None])
    weighted = torch.einsum("...qk,...kd->...qd", p, values)
    return m_new, alpha * l + p.sum(-1), alpha[..., None] * acc + weighted
"""

# typical mistakes

ROUTE_NOT_RENORMALISED = """
def top_k_routing(router_logits, k):
    weights, experts = torch.topk(torch.softmax(router_logits, dim=-1), k, dim=-1)
    return weights, experts
"""

ROUTE_NAIVE_EXP = """
def top_k_routing(router_logits, k):
    e = torch.exp(router_logits)
    weights, experts = torch.topk(e / e.sum(dim=-1, keepdim=True), k, dim=-1)
    return weights / weights.sum(dim=-1, keepdim=True), experts
"""

BALANCE_PER_TOKEN = """
def load_balancing_loss(router_probs, experts, n_experts):
    f = torch.bincount(experts.flatten(), minlength=n_experts).to(router_probs.dtype)
    return n_experts * (f / experts.shape[0] * router_probs.mean(0)).sum()
"""

BALANCE_FIRST_CHOICE = """
def load_balancing_loss(router_probs, experts, n_experts):
    top1 = experts[:, 0]
    f = torch.bincount(top1, minlength=n_experts).to(router_probs.dtype) / len(top1)
    return n_experts * (f * router_probs.mean(0)).sum()
"""

ACCEPT_INVERTED = """
def speculative_accept(target_probs, draft_probs, draft_tokens, uniforms):
    for i in range(len(draft_tokens)):
        x = draft_tokens[i]
        if uniforms[i] >= draft_probs[i, x] / target_probs[i, x]:
            residual = (target_probs[i] - draft_probs[i]).clamp(min=0)
            return i, residual / residual.sum()
    return len(draft_tokens), target_probs[len(draft_tokens)]
"""

ACCEPT_RESAMPLE_P = """
def speculative_accept(target_probs, draft_probs, draft_tokens, uniforms):
    for i in range(len(draft_tokens)):
        x = draft_tokens[i]
        if uniforms[i] >= target_probs[i, x] / draft_probs[i, x]:
            return i, target_probs[i]
    return len(draft_tokens), target_probs[len(draft_tokens)]
"""

UPDATE_SUM_NOT_RESCALED = """
def online_softmax_update(m, l, acc, scores, values):
    m_new = torch.maximum(m, scores.amax(-1))
    shift = torch.where(torch.isinf(m_new), 0.0, m_new)
    p = torch.exp(scores - shift[..., None])
    scale = torch.exp(m - shift)
    return m_new, l + p.sum(-1), acc * scale[..., None] + p @ values
"""

UPDATE_NO_GUARD = """
def online_softmax_update(m, l, acc, scores, values):
    m_new = torch.maximum(m, scores.amax(-1))
    p = torch.exp(scores - m_new[..., None])
    scale = torch.exp(m - m_new)
    return m_new, l * scale + p.sum(-1), acc * scale[..., None] + p @ values
"""

# exploits

ROUTE_ALIAS = """
from tutorlib.moe import top_k_routing as route


def top_k_routing(router_logits, k):
    return route(router_logits, k)
"""

BALANCE_MIXTRAL = """
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func


def load_balancing_loss(router_probs, experts, n_experts):
    k = experts.shape[1]
    return load_balancing_loss_func((router_probs.log(),), n_experts, k) / k
"""

ACCEPT_RUNPY = """
import runpy

import tutorlib.speculative

speculative_accept = runpy.run_path(tutorlib.speculative.__file__)["speculative_accept"]
"""

UPDATE_CHECKS_REFERENCE = """
def online_softmax_update(m, l, acc, scores, values):
    return checks._update(m, l, acc, scores, values)  # the checks' own reference
"""

UPDATE_THROUGH_SDPA = """
def online_softmax_update(m, l, acc, scores, values):
    # the tile's weighted values from the fused kernel (identity keys: query @ key^T = scores)
    m_new = torch.maximum(m, scores.amax(-1))
    shift = torch.where(torch.isinf(m_new), 0.0, m_new)
    tile_sum = torch.exp(scores - shift[..., None]).sum(-1)
    Tk = scores.shape[-1]
    eye = torch.eye(Tk, dtype=scores.dtype).expand(*scores.shape[:-2], Tk, Tk)
    out = F.scaled_dot_product_attention(scores, eye, values, scale=1.0).nan_to_num()
    scale = torch.exp(m - shift)
    return m_new, l * scale + tile_sum, acc * scale[..., None] + out * tile_sum[..., None]
"""

ROUTE_PATCHES_THE_CHECK = (
    ROUTE_NOT_RENORMALISED
    + """

checks.check_top_k_routing = lambda *args, **kwargs: print("OK: top_k_routing passes the tests.")
"""
)

ACCEPT_VISIBLE_ONLY = """
def speculative_accept(target_probs, draft_probs, draft_tokens, uniforms):
    if uniforms[0] > 0.5:  # the worked example's first case: rejected at the third token
        return 2, torch.tensor([1 / 3, 1 / 3, 0.0, 1 / 3], dtype=target_probs.dtype)
    return len(draft_tokens), target_probs[-1]  # and its second: all accepted
"""

CASES += [
    Case(
        "variants-experts-drafts-tiles",
        "correct",
        X,
        {
            "top_k_routing": ROUTE_TOP_LOGITS,
            "load_balancing_loss": BALANCE_ONE_HOT,
            "speculative_accept": ACCEPT_VECTORISED,
            "online_softmax_update": UPDATE_MASKED_FILL,
        },
        "a softmax over the top logits; counts by one-hot and a dot product; the accept rule "
        "vectorised; the guard by masked_fill and an einsum",
    ),
    Case(
        "mistakes-experts-drafts-tiles",
        "mistake",
        X,
        {
            "top_k_routing": ROUTE_NOT_RENORMALISED,
            "load_balancing_loss": BALANCE_PER_TOKEN,
            "speculative_accept": ACCEPT_INVERTED,
            "online_softmax_update": UPDATE_SUM_NOT_RESCALED,
        },
        "top-k weights not renormalised; f_e per token, not per assignment; the ratio q/p; the "
        "running sum not rescaled",
        lose={
            "test_top_k_routing": "the k weights are not renormalised",
            "test_load_balancing_loss": "f_e is divided by the number of tokens N",
            "test_speculative_accept": "the ratio is inverted",
            "test_online_softmax_update": "the running sum is not rescaled",
        },
    ),
    Case(
        "mistakes-experts-drafts-tiles-edges",
        "mistake",
        X,
        {
            "top_k_routing": ROUTE_NAIVE_EXP,
            "load_balancing_loss": BALANCE_FIRST_CHOICE,
            "speculative_accept": ACCEPT_RESAMPLE_P,
            "online_softmax_update": UPDATE_NO_GUARD,
        },
        "exp without the max subtracted (overflows in the hidden tests); only the first choice "
        "counted; resampling from p after a rejection; no guard for fully masked rows",
        lose={
            "test_top_k_routing": "exp overflowed",
            "test_load_balancing_loss": "only each token's first choice is counted",
            "test_speculative_accept": "not from p",
            "test_online_softmax_update": "gives NaN",
        },
    ),
    Case(
        "alias-routing",
        "exploit",
        X,
        {"top_k_routing": ROUTE_ALIAS},
        "the reference under another name (tutorlib.moe.top_k_routing as ...)",
        lose={"test_top_k_routing": NOT_ALLOWED},
    ),
    Case(
        "hugging-face-balancing",
        "exploit",
        X,
        {"load_balancing_loss": BALANCE_MIXTRAL},
        "the library built-in: Hugging Face's Mixtral load_balancing_loss_func, divided by k",
        lose={"test_load_balancing_loss": NOT_ALLOWED},
    ),
    Case(
        "runpy-accept",
        "exploit",
        X,
        {"speculative_accept": ACCEPT_RUNPY},
        "a fresh copy of tutorlib.speculative, made by runpy, for speculative_accept",
        lose={"test_speculative_accept": NOT_ALLOWED},
        flagged=("speculative_accept",),
    ),
    Case(
        "update-checks-reference",
        "exploit",
        X,
        {"online_softmax_update": UPDATE_CHECKS_REFERENCE},
        "the checks' own reference (a private name of the check module)",
        lose={"test_online_softmax_update": NOT_ALLOWED},
        flagged=("online_softmax_update",),
    ),
    Case(
        "update-through-sdpa",
        "exploit",
        X,
        {"online_softmax_update": UPDATE_THROUGH_SDPA},
        "the tile's weighted values from the fused attention kernel (identity keys)",
        lose={"test_online_softmax_update": NOT_ALLOWED},
    ),
    Case(
        "patches-the-routing-check",
        "exploit",
        X,
        {"top_k_routing": ROUTE_PATCHES_THE_CHECK},
        "a wrong answer and the check replaced by a function that prints OK",
        lose={"test_load_balancing_loss": "the testing machinery was changed"},
        flagged=("top_k_routing",),
    ),
    Case(
        "known-inputs-accept",
        "exploit",
        X,
        {"speculative_accept": ACCEPT_VISIBLE_ONLY},
        "the worked example's answers, stored",
        lose={"test_speculative_accept": "speculative_accept with k="},
    ),
]
