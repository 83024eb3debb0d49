"""Right answers to Chapter 6's exercises, written as learners write them."""

LM = "06_generative/01_language_modelling.ipynb"
PP = "06_generative/02_pretrained_and_pixels.ipynb"

VARIANTS = {
    LM: {
        "causal_lm_loss": {
            "log-softmax-gather": '''
def causal_lm_loss(logits, tokens):
    """Shapes: logits (B, T, V), tokens (B, T) -> scalar."""
    log_probs = torch.log_softmax(logits[:, :-1, :], dim=-1)  # (B, T-1, V)
    targets = tokens[:, 1:].unsqueeze(-1)  # (B, T-1, 1)
    picked = log_probs.gather(dim=-1, index=targets).squeeze(-1)  # (B, T-1)
    return -picked.mean()
''',
            "classes-in-dim-1": """
def causal_lm_loss(logits, tokens):
    # cross_entropy wants (N, C, d1): put the vocabulary in dimension 1
    predictions = logits[:, :-1].transpose(1, 2)  # (B, V, T-1)
    targets = tokens[:, 1:]  # (B, T-1)
    return F.cross_entropy(predictions, targets)
""",
            "nll-of-log-softmax": """
from torch.nn import functional as F


def causal_lm_loss(logits, tokens):
    B, T, V = logits.shape
    assert tokens.shape == (B, T)
    inputs = logits.narrow(1, 0, T - 1).flatten(0, 1)  # (B*(T-1), V)
    targets = tokens.narrow(1, 1, T - 1).flatten()  # (B*(T-1),)
    return F.nll_loss(F.log_softmax(inputs, dim=1), targets)


print(causal_lm_loss(torch.zeros(2, 5, 7), torch.zeros(2, 5, dtype=torch.long)), math.log(7))
""",
            "logsumexp-loop": '''
def token_nll(row_logits, target):
    """-log softmax(row_logits)[target] for one position."""
    return torch.logsumexp(row_logits, dim=0) - row_logits[target]


def causal_lm_loss(logits, tokens):
    B, T, V = logits.shape
    losses = []
    for b in range(B):
        for t in range(T - 1):
            losses.append(token_nll(logits[b, t], tokens[b, t + 1]))
    return torch.stack(losses).sum() / (B * (T - 1))
''',
        },
        "sample_with_temperature": {
            "softmax-flatten": """
def sample_with_temperature(logits, temperature, generator=None):
    if temperature == 0:
        return torch.argmax(logits, dim=1)
    scaled = logits / temperature
    probs = F.softmax(scaled, dim=1)
    ids = torch.multinomial(probs, num_samples=1, replacement=True, generator=generator)
    return ids.flatten()
""",
            "unnormalised-weights": """
def sample_with_temperature(logits, temperature, generator=None):
    if not temperature:  # T = 0: greedy
        return logits.max(dim=-1).indices
    z = logits / temperature
    z = z - z.max(dim=-1, keepdim=True).values  # stable exp
    weights = torch.exp(z)  # multinomial normalises the rows itself
    return torch.multinomial(weights, 1, generator=generator)[:, 0]
""",
            "log-space-helper": '''
def temperature_probs(logits, temperature):
    """softmax(logits / T) through the log-probabilities."""
    return torch.log_softmax(logits / temperature, dim=-1).exp()


def sample_with_temperature(logits, temperature, generator=None):
    B, V = logits.shape
    if temperature == 0.0:
        out = logits.argmax(dim=-1)
    else:
        probs = temperature_probs(logits, temperature)
        out = torch.multinomial(probs, 1, generator=generator).view(B)
    assert out.shape == (B,) and out.dtype == torch.int64
    return out
''',
            "inverse-cdf": '''
def sample_with_temperature(logits, temperature, generator=None):
    """Inverse-CDF sampling with the generator passed in (one uniform number per row)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)  # (B, V)
    cdf = probs.cumsum(dim=-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, dtype=probs.dtype)  # (B, 1)
    ids = (cdf < u).sum(dim=-1)  # the first token whose cumulative probability reaches u
    return ids.clamp(max=probs.shape[-1] - 1)
''',
        },
        "top_k_filter": {
            "argsort-scatter": """
def top_k_filter(logits, k):
    order = torch.argsort(logits, dim=-1, descending=True)  # (B, V)
    keep = torch.zeros(logits.shape, dtype=torch.bool).scatter(1, order[:, :k], True)
    return torch.where(keep, logits, torch.full_like(logits, float("-inf")))
""",
            "row-loop": """
def top_k_filter(logits, k):
    out = torch.full_like(logits, float("-inf"))
    for b in range(logits.shape[0]):
        values, index = torch.topk(logits[b], k)
        out[b, index] = values
    return out
""",
            "kthvalue-with-ties": """
def top_k_filter(logits, k):
    B, V = logits.shape
    # the k-th largest is the (V - k + 1)-th smallest
    threshold = logits.kthvalue(V - k + 1, dim=-1, keepdim=True).values  # (B, 1)
    above = logits > threshold
    tied = logits == threshold
    room = k - above.sum(dim=-1, keepdim=True)  # how many of the tied ones still fit
    keep = above | (tied & (tied.cumsum(dim=-1) <= room))
    assert (keep.sum(dim=-1) == k).all()
    return logits.masked_fill(~keep, float("-inf"))
""",
            "ranks": """
def top_k_filter(logits, k):
    ranks = logits.argsort(dim=-1, descending=True).argsort(dim=-1)  # 0 = largest
    return logits.masked_fill(ranks >= k, -math.inf)
""",
        },
        "top_p_filter": {
            "shifted-cumsum": """
def top_p_filter(logits, p):
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    total = sorted_probs.cumsum(dim=-1)
    before = torch.cat([torch.zeros_like(total[:, :1]), total[:, :-1]], dim=-1)
    keep_sorted = before < p
    keep = keep_sorted.gather(-1, order.argsort(dim=-1))  # back to the vocabulary's order
    return torch.where(keep, logits, torch.tensor(float("-inf"), dtype=logits.dtype))
""",
            "row-loop": """
def top_p_filter(logits, p):
    out = torch.full_like(logits, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    for b in range(logits.shape[0]):
        ranked = sorted(range(logits.shape[1]), key=lambda v: -probs[b, v].item())
        total = 0.0
        for v in ranked:
            out[b, v] = logits[b, v]
            total += probs[b, v].item()
            if total >= p:
                break
    return out
""",
            "count-then-ranks": """
def top_p_filter(logits, p):
    B, V = logits.shape
    sorted_logits = logits.sort(dim=-1, descending=True).values
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)  # (B, V)
    # the tokens before the first total >= p, plus that one
    n_keep = ((cumulative < p).sum(dim=-1, keepdim=True) + 1).clamp(max=V)  # (B, 1)
    ranks = logits.argsort(dim=-1, descending=True).argsort(dim=-1)
    return logits.masked_fill(ranks >= n_keep, float("-inf"))
""",
            "ascending-remove": """
def top_p_filter(logits, p):
    # ascending: a token goes when it and everything less probable hold at most 1 - p
    sorted_logits, order = logits.sort(dim=-1)
    mass_up_to = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = mass_up_to <= 1 - p
    remove_sorted[:, -1] = False  # the most probable token stays
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))
""",
        },
        "apply_repetition_penalty": {
            "gather-scatter": """
def apply_repetition_penalty(logits, previous, penalty):
    seen = logits.gather(1, previous)  # (B, t) the logits of the tokens written so far
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(1, previous, seen)  # repeated ids write the same value
""",
            "loop-over-ids": """
def apply_repetition_penalty(logits, previous, penalty):
    out = logits.clone()
    for b in range(logits.shape[0]):
        for token in set(previous[b].tolist()):
            value = out[b, token]
            if value > 0:
                out[b, token] = value / penalty
            else:
                out[b, token] = value * penalty
    return out
""",
            "mask-index": """
def apply_repetition_penalty(logits, previous, penalty):
    B, V = logits.shape
    seen = torch.zeros(B, V, dtype=torch.bool)
    seen[torch.arange(B).unsqueeze(1), previous] = True
    lower = torch.where(logits < 0, logits * penalty, logits / penalty)
    print("penalised", int(seen.sum()), "logits")
    return torch.where(seen, lower, logits)
""",
            "one-hot": """
def apply_repetition_penalty(logits, previous, penalty):
    V = logits.shape[-1]
    seen = F.one_hot(previous, num_classes=V).sum(dim=1) > 0  # (B, V)
    positive = seen & (logits > 0)
    negative = seen & (logits <= 0)
    out = torch.where(positive, logits / penalty, logits)
    out = torch.where(negative, out * penalty, out)
    return out
""",
        },
        "beam_search_step": {
            "sort-flattened": """
def beam_search_step(scores, log_probs):
    B, k = scores.shape
    V = log_probs.shape[1]
    total = scores.unsqueeze(-1) + log_probs.view(B, k, V)  # (B, k, V)
    ranked, index = total.flatten(1).sort(dim=-1, descending=True)
    index = index[:, :k]
    beams = torch.div(index, V, rounding_mode="floor")
    tokens = index - beams * V
    return ranked[:, :k], beams, tokens
""",
            "python-loop": """
def beam_search_step(scores, log_probs):
    B, k = scores.shape
    V = log_probs.shape[1]
    new_scores, beams, tokens = [], [], []
    for b in range(B):
        candidates = []
        for j in range(k):
            for v in range(V):
                s = scores[b, j].item() + log_probs[b * k + j, v].item()
                candidates.append((s, j, v))
        candidates.sort(key=lambda c: c[0], reverse=True)
        best = candidates[:k]
        new_scores.append([c[0] for c in best])
        beams.append([c[1] for c in best])
        tokens.append([c[2] for c in best])
    return (
        torch.tensor(new_scores, dtype=scores.dtype),
        torch.tensor(beams),
        torch.tensor(tokens),
    )
""",
            "unravel-index": """
def beam_search_step(scores, log_probs):
    B, k = scores.shape
    V = log_probs.shape[-1]
    candidates = scores[:, :, None] + log_probs.reshape(B, k, V)  # (B, k, V)
    new_scores, flat = torch.topk(candidates.reshape(B, k * V), k, dim=1)
    beams, tokens = torch.unravel_index(flat, (k, V))
    return new_scores, beams, tokens
""",
            "repeat-interleave": """
def beam_search_step(scores, log_probs):
    B, k = scores.shape
    V = log_probs.size(-1)
    expanded = scores.repeat_interleave(V, dim=1)  # (B, k*V): s_j repeated for beam j's V tokens
    total = expanded + log_probs.reshape(B, k * V)
    top = total.topk(k)
    beams = top.indices.div(V, rounding_mode="trunc")
    tokens = top.indices.remainder(V)
    assert beams.shape == tokens.shape == (B, k)
    return top.values, beams, tokens
""",
        },
    },
    PP: {
        "bert_layer_to_tutorlib": {
            "name-table": """
OURS_FROM_BERT = {
    "self_attn.out_proj": "attention.output.dense",
    "ff.linear1": "intermediate.dense",
    "ff.linear2": "output.dense",
    "norm1": "attention.output.LayerNorm",
    "norm2": "output.LayerNorm",
}


def bert_layer_to_tutorlib(bert):
    state = {}
    for kind in ("weight", "bias"):
        q = bert[f"attention.self.query.{kind}"]
        k = bert[f"attention.self.key.{kind}"]
        v = bert[f"attention.self.value.{kind}"]
        state[f"self_attn.in_proj_{kind}"] = torch.cat((q, k, v), dim=0)
        for ours, theirs in OURS_FROM_BERT.items():
            state[f"{ours}.{kind}"] = bert[f"{theirs}.{kind}"]
    return state
""",
            "stack-reshape": """
def bert_layer_to_tutorlib(bert):
    C = bert["attention.self.query.weight"].shape[0]
    w = torch.stack([bert["attention.self." + n + ".weight"] for n in ("query", "key", "value")])
    b = torch.stack([bert["attention.self." + n + ".bias"] for n in ("query", "key", "value")])
    out = {
        "self_attn.in_proj_weight": w.reshape(3 * C, C),
        "self_attn.in_proj_bias": b.reshape(3 * C),
    }
    renames = [
        ("attention.output.dense.", "self_attn.out_proj."),
        ("intermediate.dense.", "ff.linear1."),
        ("attention.output.LayerNorm.", "norm1."),
        ("output.LayerNorm.", "norm2."),
        ("output.dense.", "ff.linear2."),
    ]
    for name, value in bert.items():
        if name.startswith("attention.self."):
            continue
        for old, new in renames:
            if name.startswith(old):
                out[new + name[len(old):]] = value.clone()
                break
    return out
""",
            "load-into-layer": """
def bert_layer_to_tutorlib(bert):
    d_ff, C = bert["intermediate.dense.weight"].shape
    weights = {
        "self_attn.in_proj_weight": torch.vstack(
            [bert["attention.self.query.weight"], bert["attention.self.key.weight"],
             bert["attention.self.value.weight"]]
        ),
        "self_attn.in_proj_bias": torch.hstack(
            [bert["attention.self.query.bias"], bert["attention.self.key.bias"],
             bert["attention.self.value.bias"]]
        ),
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
    # try it: strict loading fails on a missing or misspelt name or a wrong shape
    layer = EncoderLayer(C, 1, d_ff, activation="gelu", norm_first=False).double()
    layer.load_state_dict(weights)
    return weights
""",
            "copy-into-layer-items": """
def bert_layer_to_tutorlib(bert):
    q, k, v = (bert[f"attention.self.{n}.weight"] for n in ["query", "key", "value"])
    d_ff, C = bert["intermediate.dense.weight"].shape
    layer = EncoderLayer(C, 1, d_ff, activation="gelu", norm_first=False).to(q.dtype)
    with torch.no_grad():
        layer.self_attn.in_proj_weight.copy_(torch.cat([q, k, v]))
        layer.self_attn.in_proj_bias.copy_(
            torch.cat([bert[f"attention.self.{n}.bias"] for n in ["query", "key", "value"]])
        )
        layer.self_attn.out_proj.weight.copy_(bert["attention.output.dense.weight"])
        layer.self_attn.out_proj.bias.copy_(bert["attention.output.dense.bias"])
        layer.ff.linear1.weight.copy_(bert["intermediate.dense.weight"])
        layer.ff.linear1.bias.copy_(bert["intermediate.dense.bias"])
        layer.ff.linear2.weight.copy_(bert["output.dense.weight"])
        layer.ff.linear2.bias.copy_(bert["output.dense.bias"])
        layer.norm1.weight.copy_(bert["attention.output.LayerNorm.weight"])
        layer.norm1.bias.copy_(bert["attention.output.LayerNorm.bias"])
        layer.norm2.weight.copy_(bert["output.LayerNorm.weight"])
        layer.norm2.bias.copy_(bert["output.LayerNorm.bias"])
    return {name: tensor for name, tensor in layer.state_dict().items()}
""",
            "return-layer-state-dict": '''
def bert_layer_to_tutorlib(bert):
    """Fill an EncoderLayer with BERT's tensors and hand back its state dict."""
    d_ff, C = bert["intermediate.dense.weight"].shape
    layer = EncoderLayer(C, 1, d_ff, activation="gelu", norm_first=False)
    layer = layer.to(bert["intermediate.dense.weight"].dtype)
    qkv = ["attention.self.query", "attention.self.key", "attention.self.value"]
    with torch.no_grad():
        layer.self_attn.in_proj_weight.copy_(torch.cat([bert[f"{p}.weight"] for p in qkv]))
        layer.self_attn.in_proj_bias.copy_(torch.cat([bert[f"{p}.bias"] for p in qkv]))
        for ours, theirs in [
            (layer.self_attn.out_proj, "attention.output.dense"),
            (layer.ff.linear1, "intermediate.dense"),
            (layer.ff.linear2, "output.dense"),
            (layer.norm1, "attention.output.LayerNorm"),
            (layer.norm2, "output.LayerNorm"),
        ]:
            ours.weight.copy_(bert[f"{theirs}.weight"])
            ours.bias.copy_(bert[f"{theirs}.bias"])
    return layer.state_dict()
''',
        },
        "gpt2_attention_to_tutorlib": {
            "t-method": """
def gpt2_attention_to_tutorlib(gpt2):
    in_proj_weight = gpt2["c_attn.weight"].t()  # Conv1D (in, out) -> Linear (out, in)
    out_proj_weight = gpt2["c_proj.weight"].t()
    C = out_proj_weight.shape[0]
    assert in_proj_weight.shape == (3 * C, C)
    return {
        "in_proj_weight": in_proj_weight.contiguous(),
        "in_proj_bias": gpt2["c_attn.bias"].clone(),
        "out_proj.weight": out_proj_weight.contiguous(),
        "out_proj.bias": gpt2["c_proj.bias"].clone(),
    }
""",
            "split-qkv": """
def gpt2_attention_to_tutorlib(gpt2):
    C = gpt2["c_proj.weight"].shape[0]
    # c_attn maps a token to [q | k | v]: its columns are the three projections
    q, k, v = gpt2["c_attn.weight"].split(C, dim=1)  # each (C, C), stored (in, out)
    return {
        "in_proj_weight": torch.cat([q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)]),
        "in_proj_bias": gpt2["c_attn.bias"],
        "out_proj.weight": gpt2["c_proj.weight"].transpose(0, 1),
        "out_proj.bias": gpt2["c_proj.bias"],
    }
""",
            "copy-into-mha": """
from torch import nn


def gpt2_attention_to_tutorlib(gpt2):
    w = gpt2["c_attn.weight"]
    C = w.shape[0]
    attention = nn.MultiheadAttention(C, 1, batch_first=True).to(w.dtype)
    with torch.no_grad():
        attention.in_proj_weight.copy_(w.T)
        attention.in_proj_bias.copy_(gpt2["c_attn.bias"])
        attention.out_proj.weight.copy_(gpt2["c_proj.weight"].T)
        attention.out_proj.bias.copy_(gpt2["c_proj.bias"])
    return dict(attention.state_dict())
""",
            "renames-permute": """
RENAMES = {
    "c_attn.weight": "in_proj_weight",
    "c_attn.bias": "in_proj_bias",
    "c_proj.weight": "out_proj.weight",
    "c_proj.bias": "out_proj.bias",
}


def gpt2_attention_to_tutorlib(gpt2):
    ours = {}
    for theirs, value in gpt2.items():
        if value.dim() == 2:
            value = value.permute(1, 0)  # Conv1D stores (in, out)
        ours[RENAMES[theirs]] = value
    return ours
""",
            "return-mha-state-dict": """
def gpt2_attention_to_tutorlib(gpt2):
    C = gpt2["c_proj.weight"].shape[0]
    mha = torch.nn.MultiheadAttention(C, 1, batch_first=True).double()
    mha.load_state_dict(
        {
            "in_proj_weight": gpt2["c_attn.weight"].T,
            "in_proj_bias": gpt2["c_attn.bias"],
            "out_proj.weight": gpt2["c_proj.weight"].T,
            "out_proj.bias": gpt2["c_proj.bias"],
        }
    )
    return mha.state_dict()
""",
        },
        "images_to_sequences": {
            "floor-half-clamp": """
def images_to_sequences(images, labels, levels):
    B = images.shape[0]
    scaled = images * (levels - 1)
    pixel_ids = torch.floor(scaled + 0.5).clamp(0, levels - 1).to(torch.int64)
    class_ids = labels.unsqueeze(1) + levels  # (B, 1)
    return torch.cat((class_ids, pixel_ids.reshape(B, -1)), dim=1)
""",
            "loops": """
def images_to_sequences(images, labels, levels):
    B, _, H, W = images.shape
    out = torch.zeros(B, 1 + H * W, dtype=torch.long)
    for b in range(B):
        out[b, 0] = levels + int(labels[b])
        for r in range(H):
            for c in range(W):
                out[b, 1 + r * W + c] = round(float(images[b, 0, r, c]) * (levels - 1))
    return out
""",
            "clamp-round-hstack": """
def images_to_sequences(images, labels, levels):
    B, C, H, W = images.shape
    assert C == 1
    grey = images.clamp(0.0, 1.0).view(B, H * W)  # row by row, left to right
    pixel_ids = (grey * (levels - 1)).round().long()
    classes = torch.full((B, 1), levels, dtype=torch.long) + labels.view(B, 1)
    seq = torch.hstack([classes, pixel_ids])
    print(seq.shape, seq.dtype)
    return seq
""",
            "fill-slices": """
def images_to_sequences(images, labels, levels):
    B = len(images)
    flat = images.flatten(start_dim=1)  # (B, H*W)
    seq = torch.empty(B, 1 + flat.shape[1], dtype=torch.int64)
    seq[:, 0] = levels + labels
    seq[:, 1:] = torch.round(flat * (levels - 1))  # whole numbers, cast to int64 on assignment
    return seq
""",
        },
        "distinct_n": {
            "counter": """
from collections import Counter


def distinct_n(sequences, n):
    counts = Counter()
    for seq in sequences:
        for i in range(len(seq) - n + 1):
            counts[tuple(seq[i : i + n])] += 1
    return len(counts) / sum(counts.values())
""",
            "set-loop": """
def distinct_n(sequences, n):
    seen = set()
    total = 0
    for seq in sequences:
        if len(seq) < n:
            continue  # no n-grams
        for start in range(len(seq) - n + 1):
            seen.add(tuple(seq[start : start + n]))
            total += 1
    return len(seen) / total
""",
            "zip-ngrams": """
def ngrams(seq, n):
    return list(zip(*(seq[i:] for i in range(n))))


def distinct_n(sequences, n):
    grams = [g for seq in sequences for g in ngrams(seq, n)]
    return len(set(grams)) / len(grams)


print(distinct_n([[1, 2, 1, 2, 3], [3, 1, 2]], 2), 4 / 6)
""",
            "joined-with-separator": """
def distinct_n(sequences, n):
    keys = []
    for seq in sequences:
        tokens = [str(t) for t in seq]
        for i in range(len(tokens) - n + 1):
            keys.append(" ".join(tokens[i : i + n]))  # a separator keeps (1, 23) != (12, 3)
    return float(len(set(keys)) / len(keys))
""",
        },
    },
}

MISTAKES = {
    LM: {
        "causal_lm_loss": {
            "unshifted": (
                """
def causal_lm_loss(logits, tokens):
    B, T, V = logits.shape
    return F.cross_entropy(logits.reshape(B * T, V), tokens.reshape(B * T))
""",
                "the targets are not shifted",
            ),
            "shifted-backwards": (
                """
def causal_lm_loss(logits, tokens):
    V = logits.shape[-1]
    predictions = logits[:, 1:].reshape(-1, V)  # drop the first position
    targets = tokens[:, :-1].reshape(-1)  # drop the last token
    return F.cross_entropy(predictions, targets)
""",
                "the shift goes the wrong way",
            ),
            "mean-per-sequence-of-sums": (
                """
def causal_lm_loss(logits, tokens):
    B, T, V = logits.shape
    per_token = F.cross_entropy(
        logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1), reduction="none"
    )
    return per_token.reshape(B, T - 1).sum(dim=1).mean()  # loss of each sequence, averaged
""",
                "summed over time and averaged over the batch only",
            ),
            "view-not-reshape": (
                """
def causal_lm_loss(logits, tokens):
    V = logits.shape[-1]
    predictions = logits[:, :-1].view(-1, V)  # fine for B = 1 only: the slice is not contiguous
    targets = tokens[:, 1:].reshape(-1)
    return F.cross_entropy(predictions, targets)
""",
                "instead of .view(...)",
            ),
        },
        "sample_with_temperature": {
            "multiplied": (
                """
def sample_with_temperature(logits, temperature, generator=None):
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits * temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
""",
                "the logits were multiplied by the temperature",
            ),
            "multinomial-of-logits": (
                """
def sample_with_temperature(logits, temperature, generator=None):
    if temperature == 0:
        return logits.argmax(dim=-1)
    return torch.multinomial(logits / temperature, 1, generator=generator).squeeze(-1)
""",
                "give it probabilities",
            ),
            "ignores-generator": (
                """
def sample_with_temperature(logits, temperature, generator=None):
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1).squeeze(-1)
""",
                "pass generator=generator",
            ),
            "squeeze-all": (
                """
def sample_with_temperature(logits, temperature, generator=None):
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze()  # (B,) unless B = 1
""",
                "also drops the batch dimension",
            ),
        },
        "top_k_filter": {
            "threshold-keeps-ties": (
                """
def top_k_filter(logits, k):
    threshold = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest
    return logits.masked_fill(logits < threshold, float("-inf"))
""",
                "`logits >= threshold` keeps all of them",
            ),
            "one-more": (
                """
def top_k_filter(logits, k):
    sorted_logits = logits.sort(dim=-1, descending=True).values
    if k >= logits.shape[-1]:
        return logits.clone()
    threshold = sorted_logits[:, k].unsqueeze(-1)  # the k-th largest?
    return logits.masked_fill(logits < threshold, float("-inf"))
""",
                "k + 1 were kept",
            ),
            "fills-zero": (
                """
def top_k_filter(logits, k):
    index = torch.topk(logits, k, dim=-1).indices
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, index, True)
    return logits.masked_fill(~keep, 0.0)
""",
                "not -inf",
            ),
            "topk-k-minus-1": (
                """
def top_k_filter(logits, k):
    index = torch.topk(logits, k - 1, dim=-1).indices  # (B, k - 1)
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, index, True)
    return logits.masked_fill(~keep, float("-inf"))
""",
                "too few tokens were kept",
            ),
        },
        "top_p_filter": {
            "drops-crossing": (
                """
def top_p_filter(logits, p):
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    keep_sorted = cumulative < p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return logits.masked_fill(~keep, float("-inf"))
""",
                "the token that takes the cumulative probability past p was dropped",
            ),
            "ascending": (
                """
def top_p_filter(logits, p):
    sorted_logits, order = logits.sort(dim=-1)
    probs = torch.softmax(sorted_logits, dim=-1)
    keep_sorted = probs.cumsum(dim=-1) - probs < p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return logits.masked_fill(~keep, float("-inf"))
""",
                "sort in descending order",
            ),
            "mask-not-put-back": (
                """
def top_p_filter(logits, p):
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    keep_sorted = probs.cumsum(dim=-1) - probs < p
    return logits.masked_fill(~keep_sorted, float("-inf"))
""",
                "put it back first",
            ),
            "gather-not-scatter": (
                """
def top_p_filter(logits, p):
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    keep_sorted = probs.cumsum(dim=-1) - probs < p
    keep = keep_sorted.gather(-1, order)  # back to the vocabulary's order?
    return logits.masked_fill(~keep, float("-inf"))
""",
                "which applies the inverse permutation",
            ),
        },
        "apply_repetition_penalty": {
            "divides-all": (
                """
def apply_repetition_penalty(logits, previous, penalty):
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, previous, True)
    return torch.where(seen, logits / penalty, logits)
""",
                "dividing a negative logit moves it *up*",
            ),
            "per-occurrence": (
                """
def apply_repetition_penalty(logits, previous, penalty):
    out = logits.clone()
    for b in range(previous.shape[0]):
        for token in previous[b]:
            value = out[b, token]
            out[b, token] = value / penalty if value > 0 else value * penalty
    return out
""",
                "penalised once per occurrence",
            ),
            "history-of-all-rows": (
                """
def apply_repetition_penalty(logits, previous, penalty):
    out = logits.clone()
    seen = previous.flatten().unique()
    column = out[:, seen]
    out[:, seen] = torch.where(column > 0, column / penalty, column * penalty)
    return out
""",
                "tokens seen in another row",
            ),
            "membership-in-text": (
                """
def apply_repetition_penalty(logits, previous, penalty):
    out = logits.clone()
    B, V = logits.shape
    for b in range(B):
        history = str(previous[b].tolist())
        for v in range(V):
            if str(v) in history:
                x = out[b, v]
                out[b, v] = x / penalty if x > 0 else x * penalty
    return out
""",
                None,
            ),
        },
        "beam_search_step": {
            "best-child-per-beam": (
                """
def beam_search_step(scores, log_probs):
    B, k = scores.shape
    V = log_probs.shape[-1]
    total = scores.reshape(B, k, 1) + log_probs.reshape(B, k, V)
    best, tokens = total.max(dim=-1)  # (B, k): each beam's best extension
    new_scores, beams = best.sort(dim=-1, descending=True)
    return new_scores, beams, tokens.gather(1, beams)
""",
                "each beam kept exactly one child",
            ),
            "beam-token-swapped": (
                """
def beam_search_step(scores, log_probs):
    B, k = scores.shape
    V = log_probs.shape[-1]
    total = (scores.reshape(B * k, 1) + log_probs).reshape(B, k * V)
    new_scores, index = total.topk(k, dim=-1)
    return new_scores, index % V, index // V
""",
                "the parent beam and the token are swapped",
            ),
            "adds-probabilities": (
                """
def beam_search_step(scores, log_probs):
    B, k = scores.shape
    V = log_probs.shape[-1]
    total = (scores.reshape(B * k, 1) + log_probs.exp()).reshape(B, k * V)
    new_scores, index = total.topk(k, dim=-1)
    return new_scores, index // V, index % V
""",
                "probabilities were added to the scores",
            ),
            "scores-tiled": (
                """
def beam_search_step(scores, log_probs):
    B, k = scores.shape
    V = log_probs.shape[-1]
    total = scores.repeat(1, V) + log_probs.reshape(B, k * V)  # right for k = 1
    new_scores, index = total.topk(k, dim=-1)
    return new_scores, index // V, index % V
""",
                "scores.repeat(1, V) tiles",
            ),
            "topk-unsorted": (
                """
def beam_search_step(scores, log_probs):
    B, k = scores.shape
    V = log_probs.shape[-1]
    total = (scores.reshape(B * k, 1) + log_probs).reshape(B, k * V)
    new_scores, index = total.topk(k, dim=-1, sorted=False)  # the k best, in no set order
    return new_scores, index // V, index % V
""",
                "in the wrong order",
            ),
        },
    },
    PP: {
        "bert_layer_to_tutorlib": {
            "layernorms-swapped": (
                """
def bert_layer_to_tutorlib(bert):
    qkv = ["attention.self.query", "attention.self.key", "attention.self.value"]
    return {
        "self_attn.in_proj_weight": torch.cat([bert[f"{p}.weight"] for p in qkv]),
        "self_attn.in_proj_bias": torch.cat([bert[f"{p}.bias"] for p in qkv]),
        "self_attn.out_proj.weight": bert["attention.output.dense.weight"],
        "self_attn.out_proj.bias": bert["attention.output.dense.bias"],
        "ff.linear1.weight": bert["intermediate.dense.weight"],
        "ff.linear1.bias": bert["intermediate.dense.bias"],
        "ff.linear2.weight": bert["output.dense.weight"],
        "ff.linear2.bias": bert["output.dense.bias"],
        "norm1.weight": bert["output.LayerNorm.weight"],
        "norm1.bias": bert["output.LayerNorm.bias"],
        "norm2.weight": bert["attention.output.LayerNorm.weight"],
        "norm2.bias": bert["attention.output.LayerNorm.bias"],
    }
""",
                "the two LayerNorms are swapped",
            ),
            "qkv-order": (
                """
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
""",
                "nn.MultiheadAttention's in_proj holds [query; key; value]",
            ),
            "qkv-transposed": (
                """
def bert_layer_to_tutorlib(bert):
    qkv = ["attention.self.query", "attention.self.key", "attention.self.value"]
    return {
        # (in, out) -> (out, in), as for GPT-2? each block is square, so the shapes fit
        "self_attn.in_proj_weight": torch.cat([bert[f"{p}.weight"].T for p in qkv]),
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
""",
                "BERT's nn.Linear and tutorlib's both store (out, in)",
            ),
            "out-proj-transposed": (
                """
def bert_layer_to_tutorlib(bert):
    qkv = ["attention.self.query", "attention.self.key", "attention.self.value"]
    return {
        "self_attn.in_proj_weight": torch.cat([bert[f"{p}.weight"] for p in qkv]),
        "self_attn.in_proj_bias": torch.cat([bert[f"{p}.bias"] for p in qkv]),
        "self_attn.out_proj.weight": bert["attention.output.dense.weight"].T,  # square: fits
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
""",
                "copy it as it is",
            ),
        },
        "gpt2_attention_to_tutorlib": {
            "not-transposed": (
                """
def gpt2_attention_to_tutorlib(gpt2):
    return {
        "in_proj_weight": gpt2["c_attn.weight"],
        "in_proj_bias": gpt2["c_attn.bias"],
        "out_proj.weight": gpt2["c_proj.weight"],
        "out_proj.bias": gpt2["c_proj.bias"],
    }
""",
                "Conv1D stores its weight (in, out)",
            ),
            "reshaped": (
                """
def gpt2_attention_to_tutorlib(gpt2):
    C = gpt2["c_proj.weight"].shape[0]
    return {
        "in_proj_weight": gpt2["c_attn.weight"].reshape(3 * C, C),
        "in_proj_bias": gpt2["c_attn.bias"],
        "out_proj.weight": gpt2["c_proj.weight"].T,
        "out_proj.bias": gpt2["c_proj.bias"],
    }
""",
                "a reshape keeps the numbers in memory order",
            ),
            "c-proj-not-transposed": (
                """
def gpt2_attention_to_tutorlib(gpt2):
    return {
        "in_proj_weight": gpt2["c_attn.weight"].T,
        "in_proj_bias": gpt2["c_attn.bias"],
        "out_proj.weight": gpt2["c_proj.weight"],  # square, so it fits
        "out_proj.bias": gpt2["c_proj.bias"],
    }
""",
                "it is a Conv1D weight too",
            ),
            "qkv-interleaved": (
                """
def gpt2_attention_to_tutorlib(gpt2):
    w, b = gpt2["c_attn.weight"], gpt2["c_attn.bias"]  # (C, 3C), (3C,)
    C = w.shape[0]
    # read the 3C outputs as (C, 3): q, k and v interleaved
    in_proj_weight = w.reshape(C, C, 3).permute(2, 1, 0).reshape(3 * C, C)
    in_proj_bias = b.reshape(C, 3).T.reshape(3 * C)
    return {
        "in_proj_weight": in_proj_weight,
        "in_proj_bias": in_proj_bias,
        "out_proj.weight": gpt2["c_proj.weight"].T,
        "out_proj.bias": gpt2["c_proj.bias"],
    }
""",
                None,
            ),
        },
        "images_to_sequences": {
            "floor": (
                """
def images_to_sequences(images, labels, levels):
    pixels = torch.floor(images * (levels - 1)).long()
    classes = (levels + labels)[:, None]
    return torch.cat([classes, pixels.flatten(1)], dim=1)
""",
                "the grey values were rounded down",
            ),
            "scaled-by-levels": (
                """
def images_to_sequences(images, labels, levels):
    pixels = torch.round(images * levels).long()
    classes = (levels + labels)[:, None]
    return torch.cat([classes, pixels.flatten(1)], dim=1)
""",
                "the grey values were scaled by levels",
            ),
            "label-as-class-token": (
                """
def images_to_sequences(images, labels, levels):
    pixels = torch.round(images * (levels - 1)).long()
    return torch.cat([labels[:, None], pixels.flatten(1)], dim=1)
""",
                "the class token is the label itself",
            ),
            "squeeze-all": (
                """
def images_to_sequences(images, labels, levels):
    grey = images.squeeze()  # (B, H, W), but (H, W) when B = 1
    pixels = torch.round(grey * (levels - 1)).long().flatten(1)
    classes = (levels + labels)[:, None]
    return torch.cat([classes, pixels], dim=1)
""",
                None,
            ),
        },
        "distinct_n": {
            "per-sequence-mean": (
                """
def distinct_n(sequences, n):
    ratios = []
    for s in sequences:
        grams = [tuple(s[i : i + n]) for i in range(len(s) - n + 1)]
        if grams:
            ratios.append(len(set(grams)) / len(grams))
    return sum(ratios) / len(ratios)
""",
                "the ratio was computed per sequence and averaged",
            ),
            "tokens-not-ngrams": (
                """
def distinct_n(sequences, n):
    tokens = [t for s in sequences for t in s]
    return len(set(tokens)) / len(tokens)
""",
                "tokens were counted, not n-grams",
            ),
            "over-all-tokens": (
                """
def distinct_n(sequences, n):
    grams = [tuple(s[i : i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / sum(len(s) for s in sequences)
""",
                "divided by the number of tokens",
            ),
            "joined-keys": (
                """
def distinct_n(sequences, n):
    keys = []
    for s in sequences:
        for i in range(len(s) - n + 1):
            keys.append("".join(str(t) for t in s[i : i + n]))
    return len(set(keys)) / len(keys)
""",
                "joined into one string with no separator",
            ),
        },
    },
}

# --- 03_modern_decoder ------------------------------------------------------------------------

MD = "06_generative/03_modern_decoder.ipynb"

VARIANTS[MD] = {
    "rope_angles": {
        "log-space-outer": """
def rope_angles(T, D, offset=0, base=10000.0):
    j = torch.arange(D // 2, dtype=torch.float64)
    inv_freq = torch.exp(-math.log(base) * 2 * j / D)  # base^(-2j/D), in log space
    positions = torch.arange(T, dtype=torch.float64) + offset
    angles = torch.outer(positions, inv_freq)  # (T, D/2)
    return torch.cos(angles), torch.sin(angles)
""",
        "python-loops": """
def rope_angles(T, D, offset=0, base=10000.0):
    cos = torch.zeros(T, D // 2, dtype=torch.float64)
    sin = torch.zeros(T, D // 2, dtype=torch.float64)
    for t in range(T):
        for j in range(D // 2):
            angle = (offset + t) * base ** (-2 * j / D)
            cos[t, j] = math.cos(angle)
            sin[t, j] = math.sin(angle)
    return cos, sin
""",
        "polar-meta-llama": """
def rope_angles(T, D, offset=0, base=10000.0):
    # Meta's Llama code: the angles as unit complex numbers
    freqs = 1.0 / (base ** (torch.arange(0, D, 2)[: D // 2].double() / D))
    t = torch.arange(offset, offset + T, device=freqs.device).double()
    freqs_cis = torch.polar(torch.ones(T, D // 2, dtype=torch.float64), torch.outer(t, freqs))
    return freqs_cis.real, freqs_cis.imag
""",
        "hf-inv-freq-einsum": '''
def inverse_frequencies(D, base):
    """1 / base^(2j / D), j = 0 .. D/2 - 1, as Hugging Face's rotary embedding builds them."""
    return 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.int64).to(torch.float64) / D))


def rope_angles(T, D, offset=0, base=10000.0):
    assert D % 2 == 0, "rotary embeddings need an even head width"
    positions = torch.arange(offset, offset + T, dtype=torch.int64).to(torch.float64)
    angles = torch.einsum("t,j->tj", positions, inverse_frequencies(D, base))
    print(angles.shape)
    return angles.cos(), angles.sin()
''',
        "linspace-broadcast": """
def rope_angles(T, D, offset=0, base=10000.0):
    positions = torch.linspace(offset, offset + T - 1, T, dtype=torch.float64).unsqueeze(1)
    exponents = torch.arange(0, D, 2, dtype=torch.float64).unsqueeze(0) / D  # (1, D/2)
    angles = positions / torch.pow(torch.tensor(base, dtype=torch.float64), exponents)
    return (torch.cos(angles), torch.sin(angles))
""",
    },
    "apply_rope": {
        "complex-numbers": """
def apply_rope(x, cos, sin):
    pairs = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())  # (B, H, T, D/2)
    turned = pairs * torch.complex(cos, sin)  # times e^(i angle)
    return torch.view_as_real(turned).reshape(x.shape)
""",
        "rotate-every-two": '''
def rotate_every_two(x):
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): a quarter turn of every pair."""
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


def apply_rope(x, cos, sin):
    cos = cos.repeat_interleave(2, dim=-1)  # (T, D): each angle for both dimensions of its pair
    sin = sin.repeat_interleave(2, dim=-1)
    return x * cos + rotate_every_two(x) * sin
''',
        "rotation-matrices": """
def apply_rope(x, cos, sin):
    R = torch.stack([torch.stack([cos, -sin], dim=-1), torch.stack([sin, cos], dim=-1)], dim=-2)
    pairs = x.unflatten(-1, (-1, 2))  # (B, H, T, D/2, 2); R is (T, D/2, 2, 2)
    return torch.einsum("tjuv,bhtjv->bhtju", R, pairs).flatten(-2)
""",
        "loop-over-pairs": """
def apply_rope(x, cos, sin):
    out = x.clone()
    for j in range(x.shape[-1] // 2):
        a, b = x[..., 2 * j], x[..., 2 * j + 1]  # (B, H, T) each
        out[..., 2 * j] = a * cos[:, j] - b * sin[:, j]
        out[..., 2 * j + 1] = a * sin[:, j] + b * cos[:, j]
    return out
""",
        "unbind-pairs": """
def apply_rope(x, cos, sin):
    B, H, T, D = x.shape
    assert cos.shape == sin.shape == (T, D // 2)
    even, odd = x.view(B, H, T, D // 2, 2).unbind(-1)
    return torch.stack((even * cos - odd * sin, odd * cos + even * sin), -1).view(B, H, T, D)
""",
    },
    "rms_norm": {
        "rsqrt": """
def rms_norm(x, weight, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
""",
        "from-the-norm": """
def rms_norm(x, weight, eps=1e-6):
    C = x.shape[-1]
    rms = torch.sqrt(torch.linalg.vector_norm(x, dim=-1, keepdim=True) ** 2 / C + eps)
    return weight * (x / rms)
""",
        "module-forward": '''
class MyRMSNorm(torch.nn.Module):
    """RMSNorm with the gain passed in, so that the test's weight is the one used."""

    def __init__(self, eps):
        super().__init__()
        self.eps = eps

    def forward(self, x, weight):
        variance = (x * x).mean(dim=-1, keepdim=True)
        return weight * (x / (variance + self.eps).sqrt())


def rms_norm(x, weight, eps=1e-6):
    return MyRMSNorm(eps)(x, weight)
''',
        "einsum-sum-over-c": """
def rms_norm(x, weight, eps=1e-6):
    C = x.shape[-1]
    mean_square = torch.einsum("...c,...c->...", x, x).unsqueeze(-1) / C
    return x * (mean_square + eps) ** -0.5 * weight
""",
    },
    "swiglu": {
        "f-linear": """
def swiglu(x, gate_weight, up_weight, down_weight):
    hidden = F.silu(F.linear(x, gate_weight)) * F.linear(x, up_weight)  # (..., d_ff)
    return F.linear(hidden, down_weight)
""",
        "sigmoid-by-hand-einsum": """
def swiglu(x, gate_weight, up_weight, down_weight):
    gate = torch.einsum("...c,fc->...f", x, gate_weight)
    up = torch.einsum("...c,fc->...f", x, up_weight)
    swish = gate / (1 + torch.exp(-gate))  # silu(z) = z sigmoid(z)
    return torch.einsum("...f,cf->...c", swish * up, down_weight)
""",
        "fused-gate-up": """
def swiglu(x, gate_weight, up_weight, down_weight):
    both = x @ torch.cat([gate_weight, up_weight], dim=0).T  # (..., 2 d_ff): one matmul
    gate, up = both.chunk(2, dim=-1)
    return (torch.nn.SiLU()(gate) * up) @ down_weight.T
""",
        "glu-trick-with-asserts": """
def swiglu(x, gate_weight, up_weight, down_weight):
    d_ff, C = gate_weight.shape
    assert up_weight.shape == (d_ff, C) and down_weight.shape == (C, d_ff)
    gate, up = x @ gate_weight.T, x @ up_weight.T
    # silu(g) * u = g * sigmoid(g) * u = glu([g * u, g])
    return F.glu(torch.cat([gate * up, gate], dim=-1), dim=-1) @ down_weight.T
""",
    },
    "gqa_cached_step": {
        "grouped-queries": '''
def gqa_cached_step(q, k_new, v_new, past_k, past_v):
    """Split the query heads into groups, one key-value head broadcast over each."""
    k_all = k_new if past_k is None else torch.cat((past_k, k_new), dim=-2)
    v_all = v_new if past_v is None else torch.cat((past_v, v_new), dim=-2)
    B, H, t, D = q.shape
    H_kv, S = k_all.shape[1], k_all.shape[2]
    groups = q.view(B, H_kv, H // H_kv, t, D)  # (B, H_kv, G, t, D)
    scores = groups @ k_all.unsqueeze(2).transpose(-2, -1) * D**-0.5  # (B, H_kv, G, t, S)
    positions = torch.arange(S)
    allowed = positions[None, :] <= positions[S - t :, None]  # (t, S): key s <= query's position
    scores = torch.where(allowed, scores, torch.tensor(float("-inf"), dtype=q.dtype))
    out = scores.softmax(dim=-1) @ v_all.unsqueeze(2)  # (B, H_kv, G, t, D)
    return out.reshape(B, H, t, D), k_all, v_all
''',
        "loops": """
def gqa_cached_step(q, k_new, v_new, past_k, past_v):
    k_all = k_new if past_k is None else torch.cat([past_k, k_new], 2)
    v_all = v_new if past_v is None else torch.cat([past_v, v_new], 2)
    B, H, t, D = q.shape
    H_kv, S = k_all.shape[1], k_all.shape[2]
    p = S - t
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            g = h // (H // H_kv)  # the key-value head of query head h's group
            for i in range(t):
                s = k_all[b, g, : p + i + 1] @ q[b, h, i] / math.sqrt(D)
                w = torch.exp(s - s.max())
                out[b, h, i] = (w / w.sum()) @ v_all[b, g, : p + i + 1]
    return out, k_all, v_all
""",
        "expand-einsum-triu": """
def gqa_cached_step(q, k_new, v_new, past_k, past_v):
    if past_k is not None:
        k_new, v_new = torch.cat([past_k, k_new], 2), torch.cat([past_v, v_new], 2)
    B, H, t, D = q.shape
    H_kv, S = k_new.shape[1], k_new.shape[2]
    keys = k_new[:, :, None].expand(B, H_kv, H // H_kv, S, D).reshape(B, H, S, D)
    values = v_new[:, :, None].expand(B, H_kv, H // H_kv, S, D).reshape(B, H, S, D)
    scores = torch.einsum("bhtd,bhsd->bhts", q, keys) / math.sqrt(D)
    future = torch.triu(torch.ones(t, S, dtype=torch.bool), diagonal=S - t + 1)
    weights = torch.softmax(scores.masked_fill(future, -1e30), dim=-1)
    return torch.einsum("bhts,bhsd->bhtd", weights, values), k_new, v_new
""",
        "additive-mask-positions": '''
def causal_bias(t, p, dtype):
    """0 where new token i (position p + i) may attend to key s, -inf where it may not."""
    query_positions = torch.arange(p, p + t)[:, None]  # (t, 1)
    key_positions = torch.arange(p + t)[None, :]  # (1, p + t)
    bias = torch.zeros(t, p + t, dtype=dtype)
    return bias.masked_fill(key_positions > query_positions, float("-inf"))


def gqa_cached_step(q, k_new, v_new, past_k, past_v):
    p = 0 if past_k is None else past_k.shape[2]
    k_all = k_new if p == 0 and past_k is None else torch.cat([past_k, k_new], dim=2)
    v_all = v_new if p == 0 and past_v is None else torch.cat([past_v, v_new], dim=2)
    n_rep = q.shape[1] // k_all.shape[1]
    keys = torch.repeat_interleave(k_all, n_rep, dim=1)
    values = torch.repeat_interleave(v_all, repeats=n_rep, dim=1)
    scores = torch.matmul(q, keys.transpose(2, 3)) / math.sqrt(q.size(-1))
    scores = scores + causal_bias(q.shape[2], p, q.dtype)
    return torch.matmul(F.softmax(scores, dim=-1), values), k_all, v_all
''',
        "hf-repeat-kv": """
from transformers.models.llama.modeling_llama import repeat_kv  # a repeat, as allowed


def gqa_cached_step(q, k_new, v_new, past_k, past_v):
    k_all = k_new if past_k is None else torch.cat([past_k, k_new], 2)
    v_all = v_new if past_v is None else torch.cat([past_v, v_new], 2)
    G = q.shape[1] // k_all.shape[1]
    keys, values = repeat_kv(k_all, G), repeat_kv(v_all, G)
    t, S = q.shape[2], keys.shape[2]
    scores = q @ keys.transpose(2, 3) / math.sqrt(q.shape[-1])
    scores = scores + torch.full((t, S), float("-inf"), dtype=q.dtype).triu(S - t + 1)
    return F.softmax(scores, dim=-1) @ values, k_all, v_all
""",
    },
}

MISTAKES[MD] = {
    "rope_angles": {
        "offset-ignored": (
            """
def rope_angles(T, D, offset=0, base=10000.0):
    positions = torch.arange(T, dtype=torch.float64)  # 0 .. T - 1, whatever came before
    angles = positions[:, None] * base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    return angles.cos(), angles.sin()
""",
            "the offset is ignored",
        ),
        "positions-from-one": (
            """
def rope_angles(T, D, offset=0, base=10000.0):
    positions = torch.arange(offset + 1, offset + T + 1, dtype=torch.float64)
    angles = positions[:, None] * base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    return angles.cos(), angles.sin()
""",
            "the positions start at 1",
        ),
        "j-over-d": (
            """
def rope_angles(T, D, offset=0, base=10000.0):
    j = torch.arange(D // 2, dtype=torch.float64)
    theta = base ** (-j / D)  # forgot the 2
    angles = torch.outer(torch.arange(offset, offset + T, dtype=torch.float64), theta)
    return angles.cos(), angles.sin()
""",
            "the frequencies are base^(-j / D)",
        ),
        "float32-arange": (
            """
def rope_angles(T, D, offset=0, base=10000.0):
    positions = torch.arange(offset, offset + T)  # int64
    theta = base ** (-torch.arange(0, D, 2) / D)  # float32
    angles = (positions[:, None] * theta).double()
    return angles.cos(), angles.sin()
""",
            "float32's rounding",
        ),
        "per-dimension-tables": (
            """
def rope_angles(T, D, offset=0, base=10000.0):
    theta = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    angles = torch.arange(offset, offset + T, dtype=torch.float64)[:, None] * theta
    angles = angles.repeat_interleave(2, dim=-1)  # (T, D), ready for x * cos
    return angles.cos(), angles.sin()
""",
            "one angle per pair of dimensions",
        ),
        "sin-cos-order": (
            """
def rope_angles(T, D, offset=0, base=10000.0):
    theta = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    angles = torch.arange(offset, offset + T, dtype=torch.float64)[:, None] * theta
    return torch.sin(angles), torch.cos(angles)
""",
            "cos and sin are swapped",
        ),
        "base-hard-coded": (
            """
def rope_angles(T, D, offset=0, base=10000.0):
    theta = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)  # right for Llama 2 only
    angles = torch.arange(offset, offset + T, dtype=torch.float64)[:, None] * theta
    return angles.cos(), angles.sin()
""",
            None,
        ),
    },
    "apply_rope": {
        "rotate-half": (
            """
def apply_rope(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]  # Hugging Face's Llama pairs j with j + D/2
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
""",
            "you paired dimension j with j + D/2",
        ),
        "backwards": (
            """
def apply_rope(x, cos, sin):
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * cos + b * sin, b * cos - a * sin], dim=-1).flatten(-2)
""",
            "the pairs turn backwards",
        ),
        "not-interleaved-back": (
            """
def apply_rope(x, cos, sin):
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
""",
            "put back as [all first elements, all second elements]",
        ),
        "hf-tables-adjacent-pairs": (
            """
def apply_rope(x, cos, sin):
    cos, sin = torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)  # as in Hugging Face
    quarter = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)
    return x * cos + quarter * sin
""",
            "the tables were doubled end to end",
        ),
        "in-place": (
            """
def apply_rope(x, cos, sin):
    a, b = x[..., 0::2].clone(), x[..., 1::2].clone()
    x[..., 0::2] = a * cos - b * sin
    x[..., 1::2] = a * sin + b * cos
    return x
""",
            "changed",
        ),
    },
    "rms_norm": {
        "layer-norm": (
            """
def rms_norm(x, weight, eps=1e-6):
    x = x - x.mean(dim=-1, keepdim=True)
    return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight
""",
            "that is layer norm",
        ),
        "eps-outside": (
            """
def rms_norm(x, weight, eps=1e-6):
    return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * weight
""",
            "eps belongs inside the square root",
        ),
        "std-plus-eps": (
            """
def rms_norm(x, weight, eps=1e-6):
    return weight * x / (x.std(dim=-1, keepdim=True) + eps)
""",
            "x was divided by x.std() + eps",
        ),
        "no-gain": (
            """
def rms_norm(x, weight, eps=1e-6):
    return x / torch.sqrt(torch.mean(x**2, dim=-1, keepdim=True) + eps)
""",
            "the learned gain is missing",
        ),
        "sum-of-squares": (
            """
def rms_norm(x, weight, eps=1e-6):
    return x / torch.sqrt((x**2).sum(-1, keepdim=True) + eps) * weight
""",
            "the squares were summed",
        ),
        "f-normalize": (
            """
def rms_norm(x, weight, eps=1e-6):
    return F.normalize(x, dim=-1) * math.sqrt(x.shape[-1]) * weight  # x / rms, eps aside
""",
            "eps is missing",
        ),
        "dim-1": (
            """
def rms_norm(x, weight, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps) * weight
""",
            "dim=1 is the last one only for a 2-D input",
        ),
        "float64-always": (
            """
def rms_norm(x, weight, eps=1e-6):
    x = x.double()  # to be safe
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
""",
            "has dtype torch.float64, not torch.float32",
        ),
    },
    "swiglu": {
        "silu-on-up": (
            """
def swiglu(x, gate_weight, up_weight, down_weight):
    return (x @ gate_weight.T * F.silu(x @ up_weight.T)) @ down_weight.T
""",
            "the SiLU went on the up projection",
        ),
        "sigmoid-glu": (
            """
def swiglu(x, gate_weight, up_weight, down_weight):
    return (torch.sigmoid(x @ gate_weight.T) * (x @ up_weight.T)) @ down_weight.T
""",
            "that is GLU",
        ),
        "relu": (
            """
def swiglu(x, gate_weight, up_weight, down_weight):
    return (F.relu(x @ gate_weight.T) * (x @ up_weight.T)) @ down_weight.T
""",
            "that is ReGLU",
        ),
        "silu-of-product": (
            """
def swiglu(x, gate_weight, up_weight, down_weight):
    return F.silu((x @ gate_weight.T) * (x @ up_weight.T)) @ down_weight.T
""",
            "the SiLU was applied to the product",
        ),
        "no-down": (
            """
def swiglu(x, gate_weight, up_weight, down_weight):
    return F.silu(x @ gate_weight.T) * (x @ up_weight.T)
""",
            "the down projection is missing",
        ),
        "weights-not-transposed": (
            """
def swiglu(x, gate_weight, up_weight, down_weight):
    return (F.silu(x @ gate_weight) * (x @ up_weight)) @ down_weight
""",
            "nn.Linear stores its weight as (out_features, in_features)",
        ),
    },
    "gqa_cached_step": {
        "top-left-mask": (
            """
def gqa_cached_step(q, k_new, v_new, past_k, past_v):
    if past_k is not None:
        k_new, v_new = torch.cat([past_k, k_new], 2), torch.cat([past_v, v_new], 2)
    G = q.shape[1] // k_new.shape[1]
    keys, values = k_new.repeat_interleave(G, 1), v_new.repeat_interleave(G, 1)
    t, S = q.shape[2], keys.shape[2]
    scores = q @ keys.transpose(-2, -1) / math.sqrt(q.shape[-1])
    mask = torch.tril(torch.ones(t, S, dtype=torch.bool))  # as is_causal=True does
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ values, k_new, v_new
""",
            "the causal mask is aligned to the top left",
        ),
        "repeat-not-interleave": (
            """
def gqa_cached_step(q, k_new, v_new, past_k, past_v):
    if past_k is not None:
        k_new, v_new = torch.cat([past_k, k_new], 2), torch.cat([past_v, v_new], 2)
    G = q.shape[1] // k_new.shape[1]
    keys, values = k_new.repeat(1, G, 1, 1), v_new.repeat(1, G, 1, 1)
    t, S = q.shape[2], keys.shape[2]
    scores = q @ keys.transpose(-2, -1) / math.sqrt(q.shape[-1])
    mask = torch.ones(t, S, dtype=torch.bool).tril(S - t)
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ values, k_new, v_new
""",
            "matched to the key-value heads with .repeat",
        ),
        "cache-of-repeated-keys": (
            """
def gqa_cached_step(q, k_new, v_new, past_k, past_v):
    G = q.shape[1] // k_new.shape[1]
    k_new, v_new = k_new.repeat_interleave(G, 1), v_new.repeat_interleave(G, 1)
    if past_k is not None:  # the cache holds H heads, ready to use
        past_k, past_v = past_k.repeat_interleave(G, 1), past_v.repeat_interleave(G, 1)
        k_new, v_new = torch.cat([past_k, k_new], 2), torch.cat([past_v, v_new], 2)
    t, S = q.shape[2], k_new.shape[2]
    scores = q @ k_new.transpose(-2, -1) / math.sqrt(q.shape[-1])
    mask = torch.ones(t, S, dtype=torch.bool).tril(S - t)
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v_new, k_new, v_new
""",
            "the cache holds the keys and values repeated",
        ),
        "no-sqrt-d": (
            """
def gqa_cached_step(q, k_new, v_new, past_k, past_v):
    if past_k is not None:
        k_new, v_new = torch.cat([past_k, k_new], 2), torch.cat([past_v, v_new], 2)
    G = q.shape[1] // k_new.shape[1]
    keys, values = k_new.repeat_interleave(G, 1), v_new.repeat_interleave(G, 1)
    t, S = q.shape[2], keys.shape[2]
    scores = q @ keys.transpose(-2, -1)
    mask = torch.ones(t, S, dtype=torch.bool).tril(S - t)
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ values, k_new, v_new
""",
            "the scores are not scaled",
        ),
        "excludes-itself": (
            """
def gqa_cached_step(q, k_new, v_new, past_k, past_v):
    p = 0 if past_k is None else past_k.shape[2]
    if past_k is not None:
        k_new, v_new = torch.cat([past_k, k_new], 2), torch.cat([past_v, v_new], 2)
    G = q.shape[1] // k_new.shape[1]
    keys, values = k_new.repeat_interleave(G, 1), v_new.repeat_interleave(G, 1)
    t, S = q.shape[2], keys.shape[2]
    scores = q @ keys.transpose(-2, -1) / math.sqrt(q.shape[-1])
    future = torch.arange(S)[None, :] >= torch.arange(p, p + t)[:, None]  # off by one
    return torch.softmax(scores.masked_fill(future, float("-inf")), -1) @ values, k_new, v_new
""",
            "new token i must see its own key",
        ),
        "decode-only-no-mask": (
            """
def gqa_cached_step(q, k_new, v_new, past_k, past_v):
    # one new token sees everything cached: no mask needed (right for t = 1 only)
    if past_k is not None:
        k_new, v_new = torch.cat([past_k, k_new], 2), torch.cat([past_v, v_new], 2)
    G = q.shape[1] // k_new.shape[1]
    keys, values = k_new.repeat_interleave(G, 1), v_new.repeat_interleave(G, 1)
    scores = q @ keys.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(scores, -1) @ values, k_new, v_new
""",
            "the new tokens see one another's future",
        ),
        "multi-head-only": (
            """
def gqa_cached_step(q, k_new, v_new, past_k, past_v):
    if past_k is not None:
        k_new, v_new = torch.cat([past_k, k_new], 2), torch.cat([past_v, v_new], 2)
    t, S = q.shape[2], k_new.shape[2]
    scores = q @ k_new.transpose(-2, -1) / math.sqrt(q.shape[-1])  # right for H_kv = H only
    mask = torch.ones(t, S, dtype=torch.bool).tril(S - t)
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v_new, k_new, v_new
""",
            "repeat each key-value head",
        ),
        "always-a-cache": (
            """
def gqa_cached_step(q, k_new, v_new, past_k, past_v):
    k_all, v_all = torch.cat([past_k, k_new], dim=2), torch.cat([past_v, v_new], dim=2)
    G = q.shape[1] // k_all.shape[1]
    keys, values = k_all.repeat_interleave(G, 1), v_all.repeat_interleave(G, 1)
    t, S = q.shape[2], keys.shape[2]
    scores = q @ keys.transpose(-2, -1) / math.sqrt(q.shape[-1])
    mask = torch.ones(t, S, dtype=torch.bool).tril(S - t)
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ values, k_all, v_all
""",
            "on the first step there is no cache",
        ),
        "heads-axis": (
            """
def gqa_cached_step(q, k_new, v_new, past_k, past_v):
    if past_k is not None:
        k_new, v_new = torch.cat([past_k, k_new], 1), torch.cat([past_v, v_new], 1)
    G = q.shape[1] // k_new.shape[1]
    keys, values = k_new.repeat_interleave(G, 1), v_new.repeat_interleave(G, 1)
    t, S = q.shape[2], keys.shape[2]
    scores = q @ keys.transpose(-2, -1) / math.sqrt(q.shape[-1])
    mask = torch.ones(t, S, dtype=torch.bool).tril(S - t)
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ values, k_new, v_new
""",
            "appended on dim 1",
        ),
    },
}

# --- 04_post_training -------------------------------------------------------------------------

PT = "06_generative/04_post_training.ipynb"

VARIANTS[PT] = {
    "few_shot_prompt": {
        "join-lines-and-query": '''
def few_shot_prompt(examples, query, *, arrow=">", separator=";"):
    """Every example a line input + arrow + output; the query is the last, unfinished line."""
    if arrow == "" or separator == "" or arrow == separator:
        raise ValueError("the arrow and the separator must be different, non-empty strings")
    if not isinstance(query, str):
        raise TypeError("the query must be a str")
    lines = []
    for pair in examples:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"not a pair: {pair!r}")
        x, y = pair
        if type(x) is not str or type(y) is not str:
            raise TypeError("inputs and outputs must be strings")
        lines.append(x + arrow + y)
    for text in [query, *(part for pair in examples for part in pair)]:
        if arrow in text or separator in text:
            raise ValueError(f"{text!r} would make the prompt ambiguous")
    return separator.join(lines + [query + arrow])
''',
        "helper-and-f-strings": '''
def check_text(text, arrow, separator):
    """Raise if the model could not tell where `text` ends."""
    if not isinstance(text, str):
        raise TypeError(f"expected a str, got {type(text).__name__}")
    if arrow in text or separator in text:
        raise ValueError(f"{text!r} contains {arrow!r} or {separator!r}")


def few_shot_prompt(examples, query, *, arrow=">", separator=";"):
    if not arrow or not separator:
        raise ValueError("empty arrow or separator")
    if arrow == separator:
        raise ValueError("the arrow and the separator are the same")
    prompt = ""
    for example in examples:
        if len(example) != 2 or isinstance(example, str):
            raise TypeError("each example is a pair (input, output)")
        for text in example:
            check_text(text, arrow, separator)
        prompt += f"{example[0]}{arrow}{example[1]}{separator}"
    check_text(query, arrow, separator)
    return f"{prompt}{query}{arrow}"
''',
        "all-and-map": """
def few_shot_prompt(examples, query, *, arrow=">", separator=";"):
    examples = list(examples)
    pairs_ok = all(type(e) in (tuple, list) and len(e) == 2 for e in examples)
    if not pairs_ok or not all(isinstance(s, str) for e in examples for s in e):
        raise TypeError("examples must be pairs of strings")
    if not isinstance(query, str):
        raise TypeError("query must be a string")
    if len(arrow) == 0 or len(separator) == 0 or arrow == separator:
        raise ValueError("bad arrow or separator")
    texts = [s for e in examples for s in e] + [query]
    if any(arrow in s or separator in s for s in texts):
        raise ValueError("an input, output or the query contains the arrow or the separator")
    body = "".join(map(lambda e: e[0] + arrow + e[1] + separator, examples))
    print(repr(body + query + arrow))
    return body + query + arrow
""",
        "try-unpack-and-format": """
def few_shot_prompt(examples, query, *, arrow=">", separator=";"):
    if arrow in ("", separator) or separator == "":
        raise ValueError("the arrow and the separator must differ and not be empty")
    parts = []
    for example in examples:
        if isinstance(example, str) or not isinstance(example, (list, tuple)):
            raise TypeError("an example is a pair")
        try:
            x, y = example
        except ValueError:
            raise TypeError("an example is a pair of two strings") from None
        if not (isinstance(x, str) and isinstance(y, str)):
            raise TypeError("an example holds two strings")
        parts.append("{}{}{}".format(x, arrow, y))
    if not isinstance(query, str):
        raise TypeError("the query is a string")
    for text in [query] + [t for e in examples for t in e]:
        if arrow in text or separator in text:
            raise ValueError("ambiguous prompt")
    return "".join(part + separator for part in parts) + query + arrow
""",
    },
    "response_mask": {
        "loops": """
def response_mask(prompt_lengths, lengths, length):
    mask = torch.zeros(len(lengths), length, dtype=torch.bool)
    for b in range(len(lengths)):
        mask[b, int(prompt_lengths[b]) : int(lengths[b])] = True
    return mask
""",
        "padding-minus-prompt": '''
def response_mask(prompt_lengths, lengths, length):
    """Every real token, minus the prompt's."""
    positions = torch.arange(length).unsqueeze(0)  # (1, length)
    real = positions < lengths.unsqueeze(1)  # (B, length)
    prompt = positions < prompt_lengths.unsqueeze(1)
    return real & ~prompt
''',
        "expand-ge-lt": """
def response_mask(prompt_lengths, lengths, length):
    B = prompt_lengths.shape[0]
    t = torch.arange(length, device=lengths.device).expand(B, length)
    return t.ge(prompt_lengths.view(B, 1)).logical_and(t.lt(lengths.view(B, 1)))
""",
        "where-and-compare": """
def response_mask(prompt_lengths, lengths, length):
    t = torch.arange(length)[None, :]
    inside = torch.where(t >= prompt_lengths[:, None], t < lengths[:, None], False)
    assert inside.dtype == torch.bool
    return inside
""",
    },
    "sft_loss": {
        "ignore-index": """
def sft_loss(logits, tokens, mask):
    targets = tokens[:, 1:].masked_fill(~mask[:, 1:], -100)  # -100: not scored
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=-100)
""",
        "log-softmax-gather": """
def sft_loss(logits, tokens, mask):
    log_probs = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, T-1, V)
    picked = log_probs.gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    weights = mask[:, 1:].to(picked.dtype)
    return -(picked * weights).sum() / weights.sum()
""",
        "per-token-reduction-none": """
def sft_loss(logits, tokens, mask):
    B, T, V = logits.shape
    losses = F.cross_entropy(
        logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1), reduction="none"
    )  # (B * (T - 1),)
    keep = mask[:, 1:].reshape(-1)
    return losses[keep].mean()
""",
        "loops-logsumexp": """
def sft_loss(logits, tokens, mask):
    terms = []
    for b in range(logits.shape[0]):
        for t in range(1, logits.shape[1]):
            if mask[b, t]:  # token t is predicted from position t - 1
                row = logits[b, t - 1]
                terms.append(torch.logsumexp(row, dim=0) - row[tokens[b, t]])
    return torch.stack(terms).mean()
""",
    },
    "lora_linear": {
        "peft-style-linear-layers": '''
class LoRALinear(nn.Module):
    """Like peft: the path built from bias-free linear layers' weights."""

    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        down = nn.Linear(base.in_features, rank, bias=False, dtype=base.weight.dtype)
        self.lora_A = down.weight  # (rank, in): initialised as nn.Linear does
        self.lora_B = nn.Parameter(base.weight.new_zeros(base.out_features, rank))
        self.scaling = alpha / rank

    def forward(self, x):
        low = F.linear(x, self.lora_A)  # (..., rank)
        return self.base(x) + self.scaling * F.linear(low, self.lora_B)

    def merge(self):
        import copy

        merged = copy.deepcopy(self.base)
        with torch.no_grad():
            merged.weight.addmm_(self.lora_B, self.lora_A, alpha=self.scaling)
        return merged
''',
        "uniform-by-hand-einsum": """
class LoRALinear(nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        for p in base.parameters():
            p.requires_grad = False
        self.base = base
        bound = 1 / math.sqrt(base.in_features)  # what kaiming_uniform_(a=sqrt(5)) gives
        A = torch.empty(rank, base.in_features).uniform_(-bound, bound)
        self.lora_A = nn.Parameter(A.to(base.weight))
        self.lora_B = nn.Parameter(torch.zeros_like(base.weight[:, :rank]))
        self.scaling = float(alpha) / rank

    def forward(self, x):
        low = torch.einsum("...i,ri->...r", x, self.lora_A)
        return self.base(x) + self.scaling * torch.einsum("...r,or->...o", low, self.lora_B)

    def merge(self):
        W = self.base.weight + self.scaling * torch.einsum("or,ri->oi", self.lora_B, self.lora_A)
        merged = nn.Linear(W.shape[1], W.shape[0], bias=self.base.bias is not None)
        merged = merged.to(W.dtype)
        merged.weight = nn.Parameter(W.detach().clone())
        if self.base.bias is not None:
            merged.bias = nn.Parameter(self.base.bias.detach().clone())
        return merged
""",
        "matmul-and-functional-merge": """
class LoRALinear(nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base
        for parameter in self.base.parameters():
            parameter.requires_grad_(False)
        self.lora_A = nn.Parameter(base.weight.new_empty(rank, base.in_features))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises
        self.lora_B = nn.Parameter(base.weight.new_zeros(base.out_features, rank))
        self.scaling = alpha / rank

    def forward(self, x):
        update = (x @ self.lora_A.T) @ self.lora_B.T  # (..., out)
        return self.base(x) + update * self.scaling

    def merge(self):
        weight = self.base.weight + (self.lora_B @ self.lora_A) * self.scaling
        merged = nn.Linear(
            self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
            dtype=weight.dtype,
        )
        merged.load_state_dict({"weight": weight.detach(), **(
            {"bias": self.base.bias.detach()} if self.base.bias is not None else {}
        )})
        return merged
""",
        "delta-weight-helper": '''
class LoRALinear(nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        if self.base.bias is not None:
            self.base.bias.requires_grad_(False)
        factory = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_A = nn.Parameter(torch.zeros(rank, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=5**0.5)
        self.rank, self.alpha = rank, alpha
        self.scaling = self.alpha / self.rank

    def delta_weight(self):
        """The update (out, in), formed only to merge."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    def merge(self):
        merged = nn.Linear(
            self.base.in_features, self.base.out_features,
            bias=self.base.bias is not None, dtype=self.base.weight.dtype,
        )
        state = {"weight": self.base.weight.detach() + self.delta_weight().detach()}
        if self.base.bias is not None:
            state["bias"] = self.base.bias.detach().clone()
        merged.load_state_dict(state)
        return merged
''',
    },
    "dpo_loss": {
        "softplus": """
def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.1):
    # -log sigmoid(z) = softplus(-z)
    z = beta * ((policy_chosen - policy_rejected) - (reference_chosen - reference_rejected))
    return F.softplus(-z).mean()
""",
        "log-ratios-helper": '''
def log_ratio(policy, reference):
    """How much the policy raised a response, relative to the reference (in nats)."""
    return policy - reference


def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.1):
    margin = log_ratio(policy_chosen, reference_chosen) - log_ratio(
        policy_rejected, reference_rejected
    )
    losses = -torch.nn.functional.logsigmoid(beta * margin)
    return losses.sum() / losses.numel()
''',
        "stable-where": """
def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.1):
    z = beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected))
    positive = torch.log1p(torch.exp(-z.clamp(min=0)))  # log(1 + e^-z) for z >= 0
    negative = -z + torch.log1p(torch.exp(z.clamp(max=0)))  # the same for z < 0
    return torch.where(z >= 0, positive, negative).mean()
""",
        "logsumexp": """
def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.1):
    z = beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected))
    # -log sigmoid(z) = log(e^0 + e^-z)
    return torch.logsumexp(torch.stack([torch.zeros_like(z), -z]), dim=0).mean()
""",
    },
}

MISTAKES[PT] = {
    "few_shot_prompt": {
        "join-without-final-separator": (
            """
def few_shot_prompt(examples, query, *, arrow=">", separator=";"):
    for x, y in examples:
        if arrow in x + y or separator in x + y:
            raise ValueError("ambiguous")
    return separator.join(f"{x}{arrow}{y}" for x, y in examples) + query + arrow
""",
            "the separator between the last example and the query is missing",
        ),
        "separator-always": (
            """
def few_shot_prompt(examples, query, *, arrow=">", separator=";"):
    if not isinstance(query, str) or not all(type(s) is str for e in examples for s in e):
        raise TypeError("strings only")
    if not arrow or not separator or arrow == separator:
        raise ValueError("arrow and separator")
    for text in [query, *(s for e in examples for s in e)]:
        if arrow in text or separator in text:
            raise ValueError("ambiguous")
    lines = [x + arrow + y for x, y in examples]
    return separator.join(lines) + separator + query + arrow  # a separator even with none
""",
            "with no examples the prompt is query + arrow alone",
        ),
        "output-first": (
            """
def few_shot_prompt(examples, query, *, arrow=">", separator=";"):
    return "".join(f"{y}{arrow}{x}{separator}" for x, y in examples) + query + arrow
""",
            "each example is written output first",
        ),
        "no-checks": (
            """
def few_shot_prompt(examples, query, *, arrow=">", separator=";"):
    return "".join(f"{x}{arrow}{y}{separator}" for x, y in examples) + f"{query}{arrow}"
""",
            "it should raise",
        ),
        "unpacking-raises-valueerror": (
            """
def few_shot_prompt(examples, query, *, arrow=">", separator=";"):
    if not arrow or not separator or arrow == separator:
        raise ValueError("arrow and separator")
    if not isinstance(query, str):
        raise TypeError("query")
    prompt = ""
    for x, y in examples:  # a three-string example raises ValueError here
        if not isinstance(x, str) or not isinstance(y, str):
            raise TypeError("strings")
        if arrow in x + y or separator in x + y:
            raise ValueError("ambiguous")
        prompt += x + arrow + y + separator
    if arrow in query or separator in query:
        raise ValueError("ambiguous query")
    return prompt + query + arrow
""",
            "it should raise TypeError",
        ),
    },
    "response_mask": {
        "assistant-token-included": (
            """
def response_mask(prompt_lengths, lengths, length):
    t = torch.arange(length)
    return (t >= prompt_lengths[:, None] - 1) & (t < lengths[:, None])
""",
            "the mask starts one position early, at <|assistant|>",
        ),
        "end-token-excluded": (
            """
def response_mask(prompt_lengths, lengths, length):
    t = torch.arange(length)
    return (t >= prompt_lengths[:, None]) & (t < lengths[:, None] - 1)
""",
            "the mask stops one position early",
        ),
        "padding-included": (
            """
def response_mask(prompt_lengths, lengths, length):
    return torch.arange(length)[None, :] >= prompt_lengths[:, None]
""",
            "lengths is ignored",
        ),
        "float-mask": (
            """
def response_mask(prompt_lengths, lengths, length):
    t = torch.arange(length)
    return ((t >= prompt_lengths[:, None]) & (t < lengths[:, None])).float()
""",
            "return a bool tensor",
        ),
        "width-of-the-longest": (
            """
def response_mask(prompt_lengths, lengths, length):
    t = torch.arange(int(lengths.max()))
    return (t >= prompt_lengths[:, None]) & (t < lengths[:, None])
""",
            "the mask has `length` columns",
        ),
    },
    "sft_loss": {
        "not-shifted": (
            """
def sft_loss(logits, tokens, mask):
    return F.cross_entropy(logits[mask], tokens[mask])
""",
            "the targets are not shifted",
        ),
        "mask-not-shifted": (
            """
def sft_loss(logits, tokens, mask):
    keep = mask[:, :-1]
    return F.cross_entropy(logits[:, :-1][keep], tokens[:, 1:][keep])
""",
            "the mask is not shifted with the targets",
        ),
        "every-position": (
            """
def sft_loss(logits, tokens, mask):
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1))
""",
            "the mask is ignored",
        ),
        "mean-of-sequence-means": (
            """
def sft_loss(logits, tokens, mask):
    per_sequence = []
    for b in range(logits.shape[0]):
        keep = mask[b, 1:]
        if keep.any():
            per_sequence.append(F.cross_entropy(logits[b, :-1][keep], tokens[b, 1:][keep]))
    return torch.stack(per_sequence).mean()
""",
            "this is the mean of each sequence's mean",
        ),
        "masked-but-divided-by-all": (
            """
def sft_loss(logits, tokens, mask):
    V = logits.shape[-1]
    losses = F.cross_entropy(
        logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1), reduction="none"
    )
    return (losses * mask[:, 1:].reshape(-1)).mean()
""",
            "the masked-out positions are counted in the mean",
        ),
    },
    "lora_linear": {
        "scaling-alpha": (
            """
class LoRALinear(nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scaling = alpha  # as in the paper's equation, without the 1 / r

    def forward(self, x):
        return self.base(x) + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T

    def merge(self):
        merged = nn.Linear(self.base.in_features, self.base.out_features)
        with torch.no_grad():
            merged.weight.copy_(self.base.weight + self.scaling * self.lora_B @ self.lora_A)
            merged.bias.copy_(self.base.bias)
        return merged
""",
            "the scaling is alpha / rank, not alpha",
        ),
        "b-random": (
            """
class LoRALinear(nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base.requires_grad_(False)
        like = base.weight
        self.lora_A = nn.Parameter(torch.randn(rank, base.in_features).to(like) * 0.01)
        self.lora_B = nn.Parameter(torch.randn(base.out_features, rank).to(like) * 0.01)
        self.scaling = alpha / rank

    def forward(self, x):
        return self.base(x) + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T

    def merge(self):
        return None
""",
            "lora_B is not zero at the start",
        ),
        "base-trainable": (
            """
class LoRALinear(nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base  # (forgot to freeze it)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features).to(base.weight))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank).to(base.weight))
        self.scaling = alpha / rank

    def forward(self, x):
        return self.base(x) + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T

    def merge(self):
        return None
""",
            "the base layer is not frozen",
        ),
        "merged-in-place": (
            """
class LoRALinear(nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base.requires_grad_(False)
        like = dict(dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **like))
        self.scaling = alpha / rank

    def forward(self, x):
        return self.base(x) + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T

    def merge(self):
        with torch.no_grad():  # fold the update into the base layer and hand it back
            self.base.weight += self.scaling * self.lora_B @ self.lora_A
        return self.base
""",
            "merge changed the layer it was called on",
        ),
        "bias-not-copied": (
            """
class LoRALinear(nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base.requires_grad_(False)
        like = dict(dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **like))
        self.scaling = alpha / rank

    def forward(self, x):
        return self.base(x) + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T

    def merge(self):
        merged = nn.Linear(*self.base.weight.shape[::-1], dtype=self.base.weight.dtype)
        with torch.no_grad():
            merged.weight.copy_(self.base.weight + self.scaling * self.lora_B @ self.lora_A)
        return merged
""",
            "merge()'s bias is not the base layer's",
        ),
        "float32-parameters": (
            """
class LoRALinear(nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))  # float32 by default
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scaling = alpha / rank

    def forward(self, x):
        return self.base(x) + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T

    def merge(self):
        merged = nn.Linear(self.base.in_features, self.base.out_features, bias=False)
        with torch.no_grad():
            merged.weight.copy_(self.base.weight + self.scaling * self.lora_B @ self.lora_A)
        if self.base.bias is not None:
            merged.bias = nn.Parameter(self.base.bias.clone())
        return merged
""",
            "create lora_A and lora_B with base.weight's dtype",
        ),
    },
    "dpo_loss": {
        "chosen-rejected-swapped": (
            """
def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.1):
    margin = (policy_rejected - reference_rejected) - (policy_chosen - reference_chosen)
    return -F.logsigmoid(beta * margin).mean()
""",
            "the sign is flipped (chosen and rejected swapped)",
        ),
        "no-reference": (
            """
def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.1):
    return -F.logsigmoid(beta * (policy_chosen - policy_rejected)).mean()
""",
            "the reference model is ignored",
        ),
        "beta-forgotten": (
            """
def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.1):
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -F.logsigmoid(margin).mean()
""",
            "beta is missing",
        ),
        "log-of-sigmoid": (
            """
def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.1):
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -torch.log(torch.sigmoid(beta * margin)).mean()
""",
            "overflows",
        ),
        "summed": (
            """
def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.1):
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -F.logsigmoid(beta * margin).sum()
""",
            "the losses are summed over the pairs",
        ),
        "relu-kink": (
            """
def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.1):
    z = beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected))
    return (torch.relu(-z) + torch.log1p(torch.exp(-z.abs()))).mean()  # no overflow
""",
            "pass on one-sided gradients",
        ),
    },
}
