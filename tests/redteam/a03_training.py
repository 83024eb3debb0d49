"""Red-team submissions of Chapter 3 (solutions/03_training)."""

from __future__ import annotations

from tests.redteam import Case

L, D = "01_training_loop", "02_tokens_and_decoding"

# --- right answers, written differently -------------------------------------------------------

LR_BRANCHES = """
def transformer_lr(step, d_model, warmup_steps):
    if step <= 0:
        raise ValueError(f"steps count from 1, got {step}")
    if step < warmup_steps:
        return step / (math.sqrt(d_model) * warmup_steps**1.5)
    return 1 / math.sqrt(d_model * step)
"""

TEACHER_PAD = """
def teacher_forcing(targets, bos_id, pad_id):
    decoder_inputs = F.pad(targets[:, :-1], (1, 0), value=bos_id)
    return decoder_inputs, targets.clone()
"""

LOSS_SOFT_TARGET = """
def smoothed_loss(logits, targets, smoothing, pad_id):
    V = logits.shape[-1]
    log_probs = F.log_softmax(logits, dim=-1)  # (B, T, V)
    target = F.one_hot(targets, V).to(logits.dtype) * (1 - smoothing) + smoothing / V
    per_token = -(target * log_probs).sum(dim=-1)  # (B, T)
    return per_token[targets != pad_id].mean()
"""

CLIP_CONCATENATED = """
def clip_gradients(parameters, max_norm):
    params = [p for p in parameters if p.grad is not None]
    total = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params]))
    if total > max_norm:
        for p in params:
            p.grad = p.grad * (max_norm / (total + 1e-6))
    return total
"""

STEP_BY_HAND = """
def training_step(model, batch, optimizer, max_norm, bos_id, pad_id):
    src, src_padding_mask, tgt = batch
    decoder_inputs = torch.cat([torch.full_like(tgt[:, :1], bos_id), tgt[:, :-1]], dim=1)
    log_probs = model(src, decoder_inputs, src_padding_mask).log_softmax(dim=-1)
    picked = log_probs.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)  # (B, T)
    loss = -picked[tgt != pad_id].mean()
    optimizer.zero_grad()
    loss.backward()
    clip_gradients(model.parameters(), max_norm)
    optimizer.step()
    return float(loss)
"""

MERGE_SKIP = """
def merge_pair(ids, pair, new_id):
    merged, skip = [], False
    for i, current in enumerate(ids):
        if skip:
            skip = False
        elif i + 1 < len(ids) and current == pair[0] and ids[i + 1] == pair[1]:
            merged.append(new_id)
            skip = True
        else:
            merged.append(current)
    return merged
"""

PAIR_SORTED = """
from collections import Counter


def most_frequent_pair(word_counts):
    counts = Counter()
    for word, n in word_counts.items():
        for i in range(len(word) - 1):
            counts[word[i : i + 2]] += n
    if not counts:
        return None
    best = max(counts.values())
    return sorted(pair for pair, count in counts.items() if count == best)[0]
"""

MASK_BERNOULLI = """
def mask_tokens(tokens, mask_id, vocab_size, special_ids, p, generator):
    ordinary = torch.ones(vocab_size, dtype=torch.bool)
    ordinary[list(special_ids) + [mask_id]] = False
    selected = torch.bernoulli(torch.full(tokens.shape, p), generator=generator).bool()
    selected &= ordinary[tokens]
    masked = selected & torch.bernoulli(torch.full(tokens.shape, 0.8), generator=generator).bool()
    coin = torch.bernoulli(torch.full(tokens.shape, 0.5), generator=generator).bool()
    randomised = selected & ~masked & coin
    ids = ordinary.nonzero().squeeze(1)
    random_ids = ids[torch.randint(len(ids), tokens.shape, generator=generator)]
    inputs = torch.where(randomised, random_ids, tokens.masked_fill(masked, mask_id))
    return inputs, tokens.masked_fill(~selected, -100)
"""

GREEDY_LISTS = """
def greedy_translate(model, src, src_padding_mask, bos_id, eos_id, max_len):
    memory = model.encode(src, src_padding_mask)
    rows = [[bos_id] for _ in range(src.shape[0])]
    while len(rows[0]) <= max_len and not all(eos_id in row for row in rows):
        logits = model.decode(torch.tensor(rows), memory, src_padding_mask).detach()
        best = logits[:, -1].log_softmax(dim=-1).max(dim=-1).indices.tolist()
        for row, token in zip(rows, best):
            row.append(eos_id if eos_id in row else token)
    return torch.tensor(rows)
"""

# --- typical mistakes -------------------------------------------------------------------------

LR_NO_SCALE = """
def transformer_lr(step, d_model, warmup_steps):
    if step < 1:
        raise ValueError(step)
    return min(step**-0.5, step * warmup_steps**-1.5)
"""

LR_NO_VALUE_ERROR = """
def transformer_lr(step, d_model, warmup_steps):
    return d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)
"""

TEACHER_PAD_FIRST = """
def teacher_forcing(targets, bos_id, pad_id):
    first = torch.full_like(targets[:, :1], pad_id)
    return torch.cat([first, targets[:, :-1]], dim=1), targets
"""

TEACHER_FIXED_BOS = """
def teacher_forcing(targets, bos_id, pad_id):
    first = torch.ones_like(targets[:, :1])  # <bos> is 1
    return torch.cat([first, targets[:, :-1]], dim=1), targets
"""

LOSS_WRONG_AXIS = """
def smoothed_loss(logits, targets, smoothing, pad_id):
    V = logits.shape[-1]
    log_probs = torch.log_softmax(logits, dim=1).reshape(-1, V)  # over the positions
    targets = targets.reshape(-1)
    keep = targets != pad_id
    nll = -log_probs.gather(1, targets.unsqueeze(1)).squeeze(1)
    per_token = (1 - smoothing) * nll - smoothing * log_probs.mean(dim=-1)
    return (per_token * keep).sum() / keep.sum()
"""

LOSS_MEAN_OF_MEANS = """
def smoothed_loss(logits, targets, smoothing, pad_id):
    log_probs = torch.log_softmax(logits, dim=-1)  # (B, T, V)
    nll = -log_probs.gather(2, targets.unsqueeze(2)).squeeze(2)  # (B, T)
    per_token = (1 - smoothing) * nll - smoothing * log_probs.mean(dim=-1)
    keep = (targets != pad_id).to(logits.dtype)
    return ((per_token * keep).sum(dim=1) / keep.sum(dim=1)).mean()  # each sentence's mean
"""

CLIP_PER_PARAMETER = """
def clip_gradients(parameters, max_norm):
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.stack([g.norm() for g in grads]).norm()
    for g in grads:
        g.mul_(torch.clamp(max_norm / (g.norm() + 1e-6), max=1.0))
    return total
"""

CLIP_SCALE_UP = """
def clip_gradients(parameters, max_norm):
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.stack([g.norm() for g in grads]).norm()
    for g in grads:
        g.mul_(max_norm / (total + 1e-6))
    return total
"""


def _step(ignore: str, zero: bool = True) -> str:
    return f"""
def training_step(model, batch, optimizer, max_norm, bos_id, pad_id):
    src, src_padding_mask, tgt = batch
    decoder_inputs = torch.cat([torch.full_like(tgt[:, :1], bos_id), tgt[:, :-1]], dim=1)
    logits = model(src, decoder_inputs, src_padding_mask)
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index={ignore}
    )
{"    optimizer.zero_grad()" if zero else "    # (no zero_grad)"}
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return loss.item()
"""


MERGE_OVERLAPPING = """
def merge_pair(ids, pair, new_id):
    merged, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            merged.append(new_id)
        else:
            merged.append(ids[i])
        i += 1
    return merged
"""

MERGE_DROPS_LAST = """
def merge_pair(ids, pair, new_id):
    merged, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged
"""

PAIR_UNWEIGHTED = """
def most_frequent_pair(word_counts):
    counts = {}
    for word in word_counts:
        for pair in zip(word[:-1], word[1:]):
            counts[pair] = counts.get(pair, 0) + 1
    if not counts:
        return None
    return min(counts, key=lambda pair: (-counts[pair], pair))
"""

PAIR_LARGEST = """
def most_frequent_pair(word_counts):
    counts = {}
    for word, n in word_counts.items():
        for pair in zip(word[:-1], word[1:]):
            counts[pair] = counts.get(pair, 0) + n
    if not counts:
        return None
    return max(counts, key=lambda pair: (counts[pair], pair))
"""


def _mask(kind: str) -> str:
    draws = {
        "always_mask": "to_mask = selected\n    to_random = torch.zeros_like(selected)",
        "same_id": "to_mask = selected & (kind < 0.8)\n"
        "    to_random = selected & (kind >= 0.8) & (kind < 0.9)",
    }[kind]
    random_ids = (
        "torch.full_like(tokens, int(choices[0]))  # one ordinary id"
        if kind == "same_id"
        else "choices[torch.randint(0, len(choices), tokens.shape, generator=generator)]"
    )
    return f"""
def mask_tokens(tokens, mask_id, vocab_size, special_ids, p, generator):
    special = torch.tensor([*special_ids, mask_id])
    selected = ~torch.isin(tokens, special) & (torch.rand(tokens.shape, generator=generator) < p)
    kind = torch.rand(tokens.shape, generator=generator)
    {draws}
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[special] = False
    choices = allowed.nonzero().squeeze(1)
    random_ids = {random_ids}
    inputs = torch.where(to_mask, mask_id, torch.where(to_random, random_ids, tokens))
    return inputs, torch.where(selected, tokens, -100)
"""


MASK_GLOBAL_RNG = """
def mask_tokens(tokens, mask_id, vocab_size, special_ids, p, generator):
    special = torch.tensor([*special_ids, mask_id])
    selected = ~torch.isin(tokens, special) & (torch.rand(tokens.shape) < p)
    kind = torch.rand(tokens.shape)
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[special] = False
    choices = allowed.nonzero().squeeze(1)
    random_ids = choices[torch.randint(0, len(choices), tokens.shape)]
    inputs = torch.where(selected & (kind < 0.8), mask_id, tokens)
    inputs = torch.where(selected & (kind >= 0.8) & (kind < 0.9), random_ids, inputs)
    return inputs, torch.where(selected, tokens, -100)
"""


def _greedy(feedback: str, stop: str) -> str:
    return f"""
def greedy_translate(model, src, src_padding_mask, bos_id, eos_id, max_len):
    with torch.no_grad():
        memory = model.encode(src, src_padding_mask)
        tokens = torch.full((src.shape[0], 1), bos_id, dtype=torch.long)
        done = torch.zeros(src.shape[0], dtype=torch.bool)
        for _ in range(max_len):
            logits = model.decode({feedback}, memory, src_padding_mask)
            next_token = logits[:, -1].argmax(dim=-1).masked_fill(done, eos_id)
            done = done | (next_token == eos_id)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            if done.{stop}():
                break
    return tokens
"""


# --- exploits ---------------------------------------------------------------------------------


LOSS_NLL = """
def smoothed_loss(logits, targets, smoothing, pad_id):
    log_probs = logits.reshape(-1, logits.shape[-1]).log_softmax(dim=-1)
    targets = targets.reshape(-1)
    nll = F.nll_loss(log_probs, targets, ignore_index=pad_id)
    return (1 - smoothing) * nll - smoothing * log_probs.mean(dim=-1)[targets != pad_id].mean()
"""

CLIP_TOTAL_NORM = """
def clip_gradients(parameters, max_norm):
    params = list(parameters)
    total = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total
"""

CLIP_BUILTIN = """
clip_gradients = torch.nn.utils.clip_grad_norm_
"""


MERGE_KNOWN_INPUTS = """
_KNOWN = {  # the worked examples and the hidden inputs the course once had
    ((1, 2, 3, 1, 2), (1, 2), 9): [9, 3, 9], ((5, 5, 5), (5, 5), 9): [9, 5],
    ((4, 4, 4, 4), (4, 4), 9): [9, 9], ((4, 4, 4, 4, 4), (4, 4), 9): [9, 9, 4],
    ((), (1, 2), 9): [], ((1,), (1, 2), 9): [1], ((1, 2), (1, 2), 9): [9],
    ((3, 1, 2), (1, 2), 9): [3, 9], ((2, 1, 2, 1), (2, 1), 9): [9, 9],
    ((5, 6, 7), (1, 2), 9): [5, 6, 7],
}


def merge_pair(ids, pair, new_id):
    return list(_KNOWN.get((tuple(ids), tuple(pair), new_id), ids))
"""

MERGE_STRING_TRICK = """
def merge_pair(ids, pair, new_id):
    text = "".join(map(str, ids)).replace("".join(map(str, pair)), "X")
    return [new_id if c == "X" else int(c) for c in text]
"""

CASES = [
    Case(
        "variants-training-loop",
        "correct",
        L,
        {
            "transformer_lr": LR_BRANCHES,
            "teacher_forcing": TEACHER_PAD,
            "smoothed_loss": LOSS_SOFT_TARGET,
            "clip_gradients": CLIP_CONCATENATED,
            "training_step": STEP_BY_HAND,
        },
        "branches, F.pad, the smoothed target written out, one concatenated norm, a loss by hand",
    ),
    Case(
        "variants-tokens",
        "correct",
        D,
        {
            "merge_pair": MERGE_SKIP,
            "most_frequent_pair": PAIR_SORTED,
            "mask_tokens": MASK_BERNOULLI,
            "greedy_translate": GREEDY_LISTS,
        },
        "a skip flag, Counter and sorted, Bernoulli draws, Python lists",
    ),
    Case(
        "mistakes-training-loop",
        "mistake",
        L,
        {
            "transformer_lr": LR_NO_SCALE,
            "teacher_forcing": TEACHER_PAD_FIRST,
            "smoothed_loss": LOSS_WRONG_AXIS,
            "clip_gradients": CLIP_PER_PARAMETER,
            "training_step": _step("pad_id", zero=False),
        },
        "no d_model^-0.5; pad first; log_softmax over the positions; per-parameter clipping; "
        "no zero_grad",
        lose={
            "test_transformer_lr": "d_model^-0.5",
            "test_teacher_forcing": "not padding",
            "test_smoothed_loss": "not over the positions (dim 1)",
            "test_clip_gradients": "clipped on its own",
            "test_training_step": "not zeroed",
        },
    ),
    Case(
        "mistakes-hidden-tests",
        "mistake",
        L,
        {
            "transformer_lr": LR_NO_VALUE_ERROR,
            "teacher_forcing": TEACHER_FIXED_BOS,
            "smoothed_loss": LOSS_MEAN_OF_MEANS,
            "clip_gradients": CLIP_SCALE_UP,
            "training_step": _step("0"),
        },
        "no ValueError; <bos> hard-coded; the mean of each sentence's mean; scaled up below "
        "max_norm; ignore_index hard-coded (mostly right for the worked examples)",
        lose={
            "test_transformer_lr": "raise a ValueError for step < 1",
            "test_teacher_forcing": "not a fixed id",
            "test_smoothed_loss": "mean of each sequence's mean",
            "test_clip_gradients": "scaled up",
            "test_training_step": "not a fixed 0",
        },
    ),
    Case(
        "mistakes-tokens",
        "mistake",
        D,
        {
            "merge_pair": MERGE_OVERLAPPING,
            "most_frequent_pair": PAIR_UNWEIGHTED,
            "mask_tokens": _mask("always_mask"),
            "greedy_translate": _greedy("tokens[:, :1]", "all"),
        },
        "overlapping merges; unweighted counts; always [MASK]; no feedback",
        lose={
            "test_merge_pair": "the merges overlap",
            "test_most_frequent_pair": "each word counted once",
            "test_mask_tokens": "every selected token became [MASK]",
            "test_greedy_translate": "predicts from <bos> alone",
        },
    ),
    Case(
        "mistakes-tokens-hidden-tests",
        "mistake",
        D,
        {
            "merge_pair": MERGE_DROPS_LAST,
            "most_frequent_pair": PAIR_LARGEST,
            "mask_tokens": MASK_GLOBAL_RNG,
            "greedy_translate": _greedy("tokens", "any"),
        },
        "drops the last id; ties to the largest pair; the global generator; stops at the first "
        "row that ends",
        lose={
            "test_merge_pair": "the last id went missing",
            "test_most_frequent_pair": "not the largest",
            "test_mask_tokens": "generator=generator",
            "test_greedy_translate": "done.all()",
        },
    ),
    Case(
        "clip-builtin",
        "exploit",
        L,
        {"clip_gradients": CLIP_BUILTIN},
        "torch.nn.utils.clip_grad_norm_ itself, bound to the answer's name",
        lose={"test_clip_gradients": "Not allowed in this exercise"},
    ),
    Case(
        "other-ops",
        "exploit",
        L,
        {"smoothed_loss": LOSS_NLL, "clip_gradients": CLIP_TOTAL_NORM},
        "other public ops computing the same: F.nll_loss; get_total_norm and clip_grads_with_norm_",
        lose={
            "test_smoothed_loss": "Not allowed in this exercise",
            "test_clip_gradients": "Not allowed in this exercise",
        },
    ),
    Case(
        "known-merges",
        "exploit",
        D,
        {"merge_pair": MERGE_KNOWN_INPUTS},
        "a table of the visible merges and of the hidden ones the course once fixed",
        lose={"test_merge_pair": "merge_pair(["},
    ),
    Case(
        "string-merge",
        "exploit",
        D,
        {"merge_pair": MERGE_STRING_TRICK},
        "used to pass: merging the ids as a string, right only for one-digit ids",
        lose={"test_merge_pair": "merge_pair(["},
    ),
    Case(
        "same-replacement",
        "exploit",
        D,
        {"mask_tokens": _mask("same_id")},
        "used to pass: the random replacements are always the same ordinary id",
        lose={"test_mask_tokens": "always the same id"},
    ),
]
