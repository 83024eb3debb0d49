"""Right answers to Chapter 3's exercises, written as learners write them."""

L = "03_training/01_training_loop.ipynb"
D = "03_training/02_tokens_and_decoding.ipynb"

VARIANTS = {
    L: {
        "transformer_lr": {
            "if-else-branches": """
def transformer_lr(step, d_model, warmup_steps):
    if step <= 0:
        raise ValueError("step must be at least 1")
    scale = 1.0 / math.sqrt(d_model)
    if step <= warmup_steps:
        return scale * step / warmup_steps**1.5
    return scale / math.sqrt(step)
""",
            "math-pow-min": """
def transformer_lr(step, d_model, warmup_steps):
    if not step >= 1:
        raise ValueError(f"step={step}: the schedule starts at step 1")
    warm = step * math.pow(warmup_steps, -1.5)
    decay = math.pow(step, -0.5)
    return math.pow(d_model, -0.5) * min(warm, decay)
""",
            "ratio-form": """
def transformer_lr(step, d_model, warmup_steps):
    # min(1, step / warmup) * (d_model * max(step, warmup)) ** -0.5 is the same curve
    if step < 1:
        raise ValueError("steps count from 1")
    ramp = min(1.0, step / warmup_steps)
    return ramp * (d_model * max(step, warmup_steps)) ** -0.5
""",
            "numpy": """
import numpy as np


def transformer_lr(step, d_model, warmup_steps):
    if step < 1:
        raise ValueError("step < 1")
    rate = np.minimum(np.power(step, -0.5), step * np.power(warmup_steps, -1.5))
    return float(rate / np.sqrt(d_model))
""",
        },
        "teacher_forcing": {
            "roll-then-set": """
def teacher_forcing(targets, bos_id, pad_id):
    decoder_inputs = torch.roll(targets, shifts=1, dims=1)  # a new tensor
    decoder_inputs[:, 0] = bos_id
    labels = targets.clone()
    return decoder_inputs, labels
""",
            "column-loop": """
def teacher_forcing(targets, bos_id, pad_id):
    B, T = targets.shape
    decoder_inputs = torch.empty_like(targets)
    for t in range(T):
        if t == 0:
            decoder_inputs[:, t] = bos_id
        else:
            decoder_inputs[:, t] = targets[:, t - 1]
    return decoder_inputs, targets
""",
            "new-full-slice": """
def teacher_forcing(targets, bos_id, pad_id):
    decoder_inputs = targets.new_full(targets.shape, bos_id)
    decoder_inputs[:, 1:] = targets[:, :-1]
    assert decoder_inputs.shape == targets.shape
    return decoder_inputs, targets.clone()
""",
            "python-rows": """
def teacher_forcing(targets, bos_id, pad_id):
    rows = []
    for row in targets.tolist():
        rows.append([bos_id] + row[:-1])
    decoder_inputs = torch.tensor(rows, dtype=torch.long)
    return decoder_inputs, targets
""",
        },
        "smoothed_loss": {
            "scatter-soft-target": """
def smoothed_loss(logits, targets, smoothing, pad_id):
    B, T, V = logits.shape
    log_p = logits.log_softmax(dim=-1)  # (B, T, V)
    q = torch.full_like(log_p, smoothing / V)
    q = q.scatter_add(-1, targets.unsqueeze(-1), torch.full_like(log_p[..., :1], 1 - smoothing))
    loss = -(q * log_p).sum(dim=-1)  # (B, T)
    mask = targets != pad_id
    return loss[mask].mean()
""",
            "logsumexp-where": """
def smoothed_loss(logits, targets, smoothing, pad_id):
    lse = torch.logsumexp(logits, dim=-1)  # (B, T)
    true_logit = torch.gather(logits, 2, targets[..., None])[..., 0]  # (B, T)
    nll = lse - true_logit
    smooth = lse - logits.mean(dim=-1)  # mean over v of -log p_v
    per_pos = (1 - smoothing) * nll + smoothing * smooth
    keep = targets != pad_id
    total = torch.where(keep, per_pos, torch.zeros_like(per_pos)).sum()
    return total / keep.sum()
""",
            "one-hot-einsum": """
import torch.nn.functional as F


def smoothed_loss(logits, targets, smoothing, pad_id):
    V = logits.shape[-1]
    flat_logits = logits.view(-1, V)
    flat_targets = targets.view(-1)
    log_probs = F.log_softmax(flat_logits, dim=1)
    one_hot = F.one_hot(flat_targets, num_classes=V).to(log_probs.dtype)
    nll = -torch.einsum("nv,nv->n", one_hot, log_probs)
    smooth = -log_probs.sum(1) / V
    loss = (1.0 - smoothing) * nll + smoothing * smooth
    non_pad = (flat_targets != pad_id).to(loss.dtype)
    return (loss * non_pad).sum() / non_pad.sum()
""",
            "position-loop": """
def smoothed_loss(logits, targets, smoothing, pad_id):
    B, T, V = logits.shape
    losses = []
    for b in range(B):
        for t in range(T):
            y = int(targets[b, t])
            if y == pad_id:
                continue
            log_p = torch.log_softmax(logits[b, t], dim=0)
            losses.append((1 - smoothing) * -log_p[y] + smoothing * -log_p.mean())
    return torch.stack(losses).mean()
""",
        },
        "clip_gradients": {
            "sum-of-squares-loop": """
def clip_gradients(parameters, max_norm):
    params = [p for p in parameters if p.grad is not None]
    squared = 0.0
    for p in params:
        squared = squared + (p.grad**2).sum()
    total_norm = squared.sqrt()
    scale = max_norm / (total_norm + 1e-6)
    if scale < 1:
        for p in params:
            p.grad.mul_(scale)
    return total_norm
""",
            "flat-dot-where": """
def clip_gradients(parameters, max_norm):
    grads = []
    for p in parameters:
        if p.grad is not None:
            grads.append(p.grad)
    flat = torch.cat([g.reshape(-1) for g in grads])
    total = flat.dot(flat).sqrt()
    coef = torch.where(total + 1e-6 > max_norm, max_norm / (total + 1e-6), torch.ones_like(total))
    for g in grads:
        g *= coef
    return total
""",
            "python-floats": """
def clip_gradients(parameters, max_norm):
    grads = [p.grad for p in parameters if p.grad is not None]
    total = math.sqrt(sum(g.pow(2).sum().item() for g in grads))
    factor = min(1.0, max_norm / (total + 1e-6))
    for g in grads:
        g.mul_(factor)
    return torch.tensor(total, dtype=grads[0].dtype)
""",
            "vector-norm-copy": """
def clip_gradients(parameters, max_norm):
    grads = [p.grad for p in parameters if p.grad is not None]
    norms = torch.stack([torch.linalg.vector_norm(g) for g in grads])
    total = torch.sqrt(torch.sum(norms * norms))
    clip_coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.copy_(g * clip_coef)
    print(f"grad norm {total.item():.4f}, scaled by {clip_coef.item():.4f}")
    return total
""",
            "python-floats-default-tensor": """
def clip_gradients(parameters, max_norm):
    grads = [p.grad for p in parameters if p.grad is not None]
    total = math.sqrt(sum(g.pow(2).sum().item() for g in grads))
    factor = min(1.0, max_norm / (total + 1e-6))
    for g in grads:
        g.mul_(factor)
    return torch.tensor(total)
""",
        },
        "training_step": {
            "inline-shift-transpose": """
def training_step(model, batch, optimizer, max_norm, bos_id, pad_id):
    src, src_mask, tgt = batch
    bos = torch.full((tgt.size(0), 1), bos_id, dtype=tgt.dtype)
    tgt_in = torch.cat((bos, tgt[:, :-1]), dim=1)
    model.train()
    optimizer.zero_grad()
    logits = model(src, tgt_in, src_mask)  # (B, T, V)
    loss = F.cross_entropy(logits.transpose(1, 2), tgt, ignore_index=pad_id)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return float(loss)
""",
            "manual-nll": """
def training_step(model, batch, optimizer, max_norm, bos_id, pad_id):
    src, src_padding_mask, tgt = batch
    dec_in, labels = teacher_forcing(tgt, bos_id, pad_id)
    logits = model(src, dec_in, src_padding_mask)
    log_probs = torch.log_softmax(logits, dim=-1)
    picked = log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (B, T)
    real = labels != pad_id
    loss = -(picked * real).sum() / real.sum()
    model.zero_grad()
    loss.backward()
    clip_gradients(model.parameters(), max_norm)
    optimizer.step()
    return loss.item()
""",
            "zero-first-reduction-none": """
from torch import nn


def training_step(model, batch, optimizer, max_norm, bos_id, pad_id):
    optimizer.zero_grad(set_to_none=False)
    src, src_padding_mask, tgt = batch
    decoder_inputs, labels = teacher_forcing(tgt, bos_id, pad_id)
    logits = model(src, decoder_inputs, src_padding_mask)
    V = logits.shape[-1]
    per_token = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), reduction="none")
    mask = labels.reshape(-1) != pad_id
    loss = per_token[mask].mean()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), max_norm=max_norm)
    optimizer.step()
    return loss.item()
""",
            "helpers-and-print": """
def decoder_io(tgt, bos_id):
    start = torch.full_like(tgt[:, :1], bos_id)
    return torch.cat([start, tgt[:, :-1]], dim=1), tgt


def masked_ce(logits, labels, pad_id):
    V = logits.size(-1)
    return F.cross_entropy(logits.view(-1, V), labels.reshape(-1), ignore_index=pad_id)


def training_step(model, batch, optimizer, max_norm, bos_id, pad_id):
    src, src_padding_mask, tgt = batch
    tgt_in, tgt_out = decoder_io(tgt, bos_id)
    assert tgt_in.shape == tgt_out.shape
    loss = masked_ce(model(src, tgt_in, src_padding_mask), tgt_out, pad_id)
    for p in model.parameters():
        p.grad = None
    loss.backward()
    norm = clip_gradients(model.parameters(), max_norm)
    optimizer.step()
    loss_value = loss.detach().item()
    print(f"loss {loss_value:.4f}, grad norm {float(norm):.3f}")
    return loss_value
""",
        },
    },
    D: {
        "merge_pair": {
            "for-skip-flag": """
def merge_pair(ids, pair, new_id):
    out = []
    skip = False
    for i, token in enumerate(ids):
        if skip:
            skip = False
            continue
        if i < len(ids) - 1 and token == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            skip = True
        else:
            out.append(token)
    return out
""",
            "deque-popleft": """
from collections import deque


def merge_pair(ids, pair, new_id):
    rest = deque(ids)
    merged = []
    while rest:
        first = rest.popleft()
        if rest and (first, rest[0]) == tuple(pair):
            rest.popleft()
            merged.append(new_id)
        else:
            merged.append(first)
    return merged
""",
            "while-then-tail": """
def merge_pair(ids, pair, new_id):
    out = []
    i, n = 0, len(ids)
    while i < n - 1:
        if ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out += [new_id]
            i += 2
        else:
            out += [ids[i]]
            i += 1
    if i == n - 1:  # the last id was not part of a merge
        out.append(ids[-1])
    return out
""",
            "slice-assign-copy": """
def merge_pair(ids, pair, new_id):
    out = list(ids)
    i = 0
    while i < len(out) - 1:
        if out[i] == pair[0] and out[i + 1] == pair[1]:
            out[i : i + 2] = [new_id]
        i += 1
    return out
""",
        },
        "most_frequent_pair": {
            "counter-sorted": """
from collections import Counter


def most_frequent_pair(word_counts):
    counts = Counter()
    for word, freq in word_counts.items():
        for a, b in zip(word, word[1:]):
            counts[(a, b)] += freq
    if len(counts) == 0:
        return None
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ranked[0][0]
""",
            "defaultdict-running-best": """
from collections import defaultdict


def most_frequent_pair(word_counts):
    counts = defaultdict(int)
    for word in word_counts:
        for i in range(len(word) - 1):
            counts[word[i], word[i + 1]] += word_counts[word]
    best, best_count = None, 0
    for pair, c in counts.items():
        if c > best_count or (c == best_count and pair < best):
            best, best_count = pair, c
    return best
""",
            "pairwise-max-then-min": """
from itertools import pairwise


def most_frequent_pair(word_counts):
    totals = {}
    for word, n in word_counts.items():
        for pair in pairwise(word):
            totals[pair] = totals.get(pair, 0) + n
    if not totals:
        return None
    top = max(totals.values())
    return min(pair for pair, c in totals.items() if c == top)
""",
            "counter-per-word": """
import collections


def most_frequent_pair(word_counts):
    pair_counts = collections.Counter()
    for word, count in word_counts.items():
        for pair, k in collections.Counter(zip(word, word[1:])).items():
            pair_counts[pair] += k * count
    if not pair_counts:
        return None
    ((_, top),) = pair_counts.most_common(1)
    tied = [pair for pair, c in pair_counts.items() if c == top]
    return sorted(tied)[0]
""",
        },
        "mask_tokens": {
            "bernoulli-index-assign": """
def mask_tokens(tokens, mask_id, vocab_size, special_ids, p, generator):
    is_special = torch.zeros_like(tokens, dtype=torch.bool)
    for s in list(special_ids) + [mask_id]:
        is_special |= tokens == s
    probs = torch.full(tokens.shape, p)
    selected = torch.bernoulli(probs, generator=generator).bool() & ~is_special
    labels = torch.full_like(tokens, -100)
    labels[selected] = tokens[selected]
    u = torch.rand(tokens.shape, generator=generator)
    inputs = tokens.clone()
    inputs[selected & (u < 0.8)] = mask_id
    random_pos = selected & (u >= 0.8) & (u < 0.9)
    ordinary = [i for i in range(vocab_size) if i not in special_ids and i != mask_id]
    ordinary = torch.tensor(ordinary)
    picks = torch.randint(len(ordinary), (int(random_pos.sum()),), generator=generator)
    inputs[random_pos] = ordinary[picks]
    return inputs, labels
""",
            "one-uniform-draw": """
def mask_tokens(tokens, mask_id, vocab_size, special_ids, p, generator):
    special = set(special_ids) | {mask_id}
    ordinary_ids = torch.tensor([t for t in range(vocab_size) if t not in special])
    can_mask = ~torch.isin(tokens, torch.tensor(sorted(special)))
    u = torch.rand(tokens.shape, generator=generator)
    selected = can_mask & (u < p)
    r = u / p  # given u < p, r is uniform on [0, 1): reuse it for the 80/10/10 split
    to_mask = selected & (r < 0.8)
    to_random = selected & (r >= 0.8) & (r < 0.9)
    pick = torch.randint(0, len(ordinary_ids), tokens.shape, generator=generator)
    inputs = tokens.masked_fill(to_mask, mask_id)
    inputs = torch.where(to_random, ordinary_ids[pick], inputs)
    labels = tokens.masked_fill(~selected, -100)
    return inputs, labels
""",
            "multinomial-weights": """
def mask_tokens(tokens, mask_id, vocab_size, special_ids, p, generator):
    B, T = tokens.shape
    allowed = torch.ones(vocab_size)
    allowed[list(special_ids)] = 0
    allowed[mask_id] = 0
    ordinary = allowed[tokens].bool()  # (B, T)
    selected = (torch.rand(B, T, generator=generator) < p) & ordinary
    action = torch.rand(B, T, generator=generator)
    replacement = torch.multinomial(allowed, B * T, replacement=True, generator=generator)
    replacement = replacement.view(B, T)
    inputs = torch.where(selected & (action < 0.8), torch.full_like(tokens, mask_id), tokens)
    inputs = torch.where(selected & (action >= 0.8) & (action < 0.9), replacement, inputs)
    labels = torch.where(selected, tokens, torch.full_like(tokens, -100))
    return inputs, labels
""",
            "rejection-sampling": """
def mask_tokens(tokens, mask_id, vocab_size, special_ids, p, generator):
    never = torch.tensor(list(special_ids) + [mask_id])
    candidates = ~torch.isin(tokens, never)
    chosen = candidates & (torch.rand(tokens.shape, generator=generator) < p)
    labels = torch.where(chosen, tokens, -100)
    roll = torch.rand(tokens.shape, generator=generator)
    inputs = tokens.clone()
    inputs[chosen & (roll < 0.8)] = mask_id
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    random_ids = torch.randint(0, vocab_size, (int(swap.sum()),), generator=generator)
    bad = torch.isin(random_ids, never)
    while bad.any():  # redraw the special ones: uniform over the ordinary ids
        random_ids[bad] = torch.randint(0, vocab_size, (int(bad.sum()),), generator=generator)
        bad = torch.isin(random_ids, never)
    inputs[swap] = random_ids
    return inputs, labels
""",
        },
        "greedy_translate": {
            "while-loop": """
def greedy_translate(model, src, src_padding_mask, bos_id, eos_id, max_len):
    model.eval()
    with torch.no_grad():
        memory = model.encode(src, src_padding_mask)
        ys = torch.full((src.size(0), 1), bos_id, dtype=torch.long)
        finished = torch.zeros(src.size(0), dtype=torch.bool)
        steps = 0
        while steps < max_len and not finished.all():
            out = model.decode(ys, memory, src_padding_mask)
            nxt = out[:, -1, :].argmax(-1)
            nxt = torch.where(finished, torch.full_like(nxt, eos_id), nxt)
            ys = torch.cat([ys, nxt.unsqueeze(1)], dim=1)
            finished |= nxt == eos_id
            steps += 1
    return ys
""",
            "column-list-decorator": """
@torch.no_grad()
def greedy_translate(model, src, src_padding_mask, bos_id, eos_id, max_len):
    memory = model.encode(src, src_padding_mask)
    B = src.shape[0]
    columns = [torch.full((B,), bos_id, dtype=torch.long)]
    for _ in range(max_len):
        tokens = torch.stack(columns, dim=1)  # (B, t)
        logits = model.decode(tokens, memory, src_padding_mask)
        best = logits[:, -1].max(dim=-1).indices
        best[columns[-1] == eos_id] = eos_id  # finished rows keep writing <eos>
        columns.append(best)
        if bool((best == eos_id).all()):
            break
    return torch.stack(columns, dim=1)
""",
            "log-softmax-any-eos": """
from torch.nn import functional as F


def greedy_translate(model, src, src_padding_mask, bos_id, eos_id, max_len):
    with torch.no_grad():
        memory = model.encode(src, src_padding_mask)
        out = src.new_full((src.shape[0], 1), bos_id)
        for _ in range(max_len):
            logits = model.decode(out, memory, src_padding_mask)[:, -1]
            next_ids = F.log_softmax(logits, dim=-1).argmax(dim=-1, keepdim=True)  # (B, 1)
            ended = (out == eos_id).any(dim=1, keepdim=True)
            next_ids = next_ids.masked_fill(ended, eos_id)
            out = torch.cat([out, next_ids], dim=1)
            if (out == eos_id).any(dim=1).all():
                break
    return out
""",
            "python-lists-inference-mode": """
def greedy_translate(model, src, src_padding_mask, bos_id, eos_id, max_len):
    batch_size = len(src)
    with torch.inference_mode():
        memory = model.encode(src, src_padding_mask)
        seqs = [[bos_id] for _ in range(batch_size)]
        done = [False] * batch_size
        for _ in range(max_len):
            logits = model.decode(torch.tensor(seqs), memory, src_padding_mask)
            preds = logits[:, -1].argmax(dim=-1).tolist()
            for b in range(batch_size):
                if done[b]:
                    seqs[b].append(eos_id)
                else:
                    seqs[b].append(preds[b])
                    done[b] = preds[b] == eos_id
            if all(done):
                break
    return torch.tensor(seqs, dtype=torch.long)
""",
        },
    },
}

MISTAKES = {
    L: {
        "transformer_lr": {
            "zero-based-step": (
                """
def transformer_lr(step, d_model, warmup_steps):
    if step < 1:
        raise ValueError("steps count from 1")
    n = step + 1  # the optimizer counts from 0, the paper from 1
    return d_model**-0.5 * min(n**-0.5, n * warmup_steps**-1.5)
""",
                "the peak comes one step early",
            ),
            "max-not-min": (
                """
def transformer_lr(step, d_model, warmup_steps):
    if step < 1:
        raise ValueError("steps count from 1")
    return d_model**-0.5 * max(step**-0.5, step * warmup_steps**-1.5)
""",
                "max instead of min",
            ),
            "no-d-model-scale": (
                """
def transformer_lr(step, d_model, warmup_steps):
    if step < 1:
        raise ValueError("steps count from 1")
    return min(step**-0.5, step * warmup_steps**-1.5)
""",
                "d_model^-0.5 in front is missing",
            ),
            "ramp-to-d-model-peak": (
                """
def transformer_lr(step, d_model, warmup_steps):
    if step < 1:
        raise ValueError("steps count from 1")
    peak = d_model**-0.5
    if step < warmup_steps:
        return peak * step / warmup_steps  # linear warm-up to the peak
    return peak * (warmup_steps / step) ** 0.5
""",
                None,
            ),
        },
        "teacher_forcing": {
            "shifted-left": (
                """
def teacher_forcing(targets, bos_id, pad_id):
    pad = torch.full_like(targets[:, :1], pad_id)
    decoder_inputs = torch.cat([targets[:, 1:], pad], dim=1)
    return decoder_inputs, targets
""",
                "shifted the wrong way",
            ),
            "hard-coded-bos": (
                """
def teacher_forcing(targets, bos_id, pad_id):
    bos = torch.ones_like(targets[:, :1])  # <bos> is id 1
    decoder_inputs = torch.cat([bos, targets[:, :-1]], dim=1)
    return decoder_inputs, targets
""",
                "not a fixed id",
            ),
            "labels-shifted-too": (
                """
def teacher_forcing(targets, bos_id, pad_id):
    bos = torch.full_like(targets[:, :1], bos_id)
    decoder_inputs = torch.cat([bos, targets[:, :-1]], dim=1)
    pad = torch.full_like(targets[:, :1], pad_id)
    labels = torch.cat([targets[:, 1:], pad], dim=1)  # the next token
    return decoder_inputs, labels
""",
                "the labels are the targets themselves, unshifted",
            ),
            "in-place-on-targets": (
                """
def teacher_forcing(targets, bos_id, pad_id):
    labels = targets
    decoder_inputs = targets
    decoder_inputs[:, 1:] = labels[:, :-1].clone()
    decoder_inputs[:, 0] = bos_id
    return decoder_inputs, labels
""",
                "changed an input it was given",
            ),
        },
        "smoothed_loss": {
            "smoothing-over-v-minus-1": (
                """
def smoothed_loss(logits, targets, smoothing, pad_id):
    V = logits.shape[-1]
    log_p = torch.log_softmax(logits, dim=-1)
    nll = -log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    others = -log_p.sum(dim=-1) - nll  # the V - 1 wrong classes
    loss = (1 - smoothing) * nll + smoothing / (V - 1) * others
    keep = targets != pad_id
    return loss[keep].mean()
""",
                "spread over the V - 1 wrong classes",
            ),
            "pad-in-mean": (
                """
def smoothed_loss(logits, targets, smoothing, pad_id):
    log_p = torch.log_softmax(logits, dim=-1)
    nll = -log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    loss = (1 - smoothing) * nll + smoothing * -log_p.mean(dim=-1)
    loss = loss * (targets != pad_id)
    return loss.mean()
""",
                "the padding positions are counted in the mean",
            ),
            "mean-of-sequence-means": (
                """
def smoothed_loss(logits, targets, smoothing, pad_id):
    log_p = torch.log_softmax(logits, dim=-1)
    nll = -log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    loss = (1 - smoothing) * nll + smoothing * -log_p.mean(dim=-1)
    keep = (targets != pad_id).to(loss.dtype)
    per_sequence = (loss * keep).sum(dim=1) / keep.sum(dim=1)  # (B,)
    return per_sequence.mean()
""",
                "the mean of each sequence's mean loss",
            ),
            "pad-id-zero": (
                """
def smoothed_loss(logits, targets, smoothing, pad_id):
    log_p = torch.log_softmax(logits, dim=-1)
    nll = -log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    loss = (1 - smoothing) * nll + smoothing * -log_p.mean(dim=-1)
    keep = targets != 0  # padding is id 0
    return loss[keep].mean()
""",
                "not a fixed 0",
            ),
        },
        "clip_gradients": {
            "per-parameter": (
                """
def clip_gradients(parameters, max_norm):
    norms = []
    for p in parameters:
        if p.grad is None:
            continue
        norm = p.grad.norm()
        norms.append(norm)
        p.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
    return torch.stack(norms).norm()
""",
                "each parameter's gradient is clipped on its own",
            ),
            "always-rescale": (
                """
def clip_gradients(parameters, max_norm):
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.stack([g.norm() for g in grads]).norm()
    for g in grads:
        g.mul_(max_norm / (total + 1e-6))
    return total
""",
                "scaled up although their norm was already below max_norm",
            ),
            "generator-read-twice": (
                """
def clip_gradients(parameters, max_norm):
    total = torch.zeros((), dtype=torch.float64)
    for p in parameters:
        if p.grad is not None:
            total = total + p.grad.pow(2).sum()
    total = total.sqrt()
    factor = min(1.0, float(max_norm / (total + 1e-6)))
    for p in parameters:
        if p.grad is not None:
            p.grad.mul_(factor)
    return total
""",
                "can be iterated only once",
            ),
            "not-in-place": (
                """
def clip_gradients(parameters, max_norm):
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.stack([g.norm() for g in grads]).norm()
    factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g = g * factor
    return total
""",
                "the gradients were not changed",
            ),
        },
        "training_step": {
            "no-zero-grad": (
                """
def training_step(model, batch, optimizer, max_norm, bos_id, pad_id):
    src, src_padding_mask, tgt = batch
    decoder_inputs, labels = teacher_forcing(tgt, bos_id, pad_id)
    logits = model(src, decoder_inputs, src_padding_mask)
    V = logits.shape[-1]
    loss = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=pad_id)
    loss.backward()
    clip_gradients(model.parameters(), max_norm)
    optimizer.step()
    return loss.item()
""",
                "the gradients are not zeroed",
            ),
            "sum-reduction": (
                """
def training_step(model, batch, optimizer, max_norm, bos_id, pad_id):
    src, src_padding_mask, tgt = batch
    decoder_inputs, labels = teacher_forcing(tgt, bos_id, pad_id)
    logits = model(src, decoder_inputs, src_padding_mask)
    V = logits.shape[-1]
    loss = F.cross_entropy(
        logits.reshape(-1, V), labels.reshape(-1), ignore_index=pad_id, reduction="sum"
    )
    optimizer.zero_grad()
    loss.backward()
    clip_gradients(model.parameters(), max_norm)
    optimizer.step()
    return loss.item()
""",
                "the loss is summed over the positions",
            ),
            "clip-after-step": (
                """
def training_step(model, batch, optimizer, max_norm, bos_id, pad_id):
    src, src_padding_mask, tgt = batch
    decoder_inputs, labels = teacher_forcing(tgt, bos_id, pad_id)
    logits = model(src, decoder_inputs, src_padding_mask)
    V = logits.shape[-1]
    loss = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=pad_id)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    clip_gradients(model.parameters(), max_norm)
    return loss.item()
""",
                "the gradients were not clipped before optimizer.step()",
            ),
            "ignore-index-zero": (
                """
def training_step(model, batch, optimizer, max_norm, bos_id, pad_id):
    src, src_padding_mask, tgt = batch
    decoder_inputs, labels = teacher_forcing(tgt, bos_id, pad_id)
    logits = model(src, decoder_inputs, src_padding_mask)
    V = logits.shape[-1]
    loss = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=0)
    optimizer.zero_grad()
    loss.backward()
    clip_gradients(model.parameters(), max_norm)
    optimizer.step()
    return loss.item()
""",
                "not a fixed 0",
            ),
        },
    },
    D: {
        "merge_pair": {
            "overlapping": (
                """
def merge_pair(ids, pair, new_id):
    out = []
    for i in range(len(ids)):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
        elif i > 0 and ids[i - 1] == pair[0] and ids[i] == pair[1]:
            continue  # the second half of a merged pair
        else:
            out.append(ids[i])
    return out
""",
                "the merges overlap",
            ),
            "last-id-dropped": (
                """
def merge_pair(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out
""",
                "the last id went missing",
            ),
            "string-replace": (
                """
def merge_pair(ids, pair, new_id):
    text = " " + " ".join(str(i) for i in ids) + " "
    text = text.replace(f" {pair[0]} {pair[1]} ", f" {new_id} ")
    return [int(t) for t in text.split()]
""",
                None,
            ),
            "in-place-slice": (
                """
def merge_pair(ids, pair, new_id):
    i = 0
    while i < len(ids) - 1:
        if ids[i] == pair[0] and ids[i + 1] == pair[1]:
            ids[i : i + 2] = [new_id]
        i += 1
    return list(ids)
""",
                "changed an input it was given",
            ),
        },
        "most_frequent_pair": {
            "unweighted": (
                """
def most_frequent_pair(word_counts):
    counts = {}
    for word in word_counts:
        for pair in zip(word, word[1:]):
            counts[pair] = counts.get(pair, 0) + 1
    if not counts:
        return None
    return min(counts, key=lambda pair: (-counts[pair], pair))
""",
                "each word counted once",
            ),
            "set-of-pairs-per-word": (
                """
def most_frequent_pair(word_counts):
    counts = {}
    for word, n in word_counts.items():
        for pair in set(zip(word, word[1:])):
            counts[pair] = counts.get(pair, 0) + n
    if not counts:
        return None
    return min(counts, key=lambda pair: (-counts[pair], pair))
""",
                "count every occurrence of a pair inside a word",
            ),
            "max-first-found": (
                """
def most_frequent_pair(word_counts):
    counts = {}
    for word, n in word_counts.items():
        for pair in zip(word, word[1:]):
            counts[pair] = counts.get(pair, 0) + n
    if not counts:
        return None
    return max(counts, key=counts.get)
""",
                "not to the first pair found",
            ),
            "ties-by-string": (
                """
def most_frequent_pair(word_counts):
    counts = {}
    for word, n in word_counts.items():
        for pair in zip(word, word[1:]):
            counts[pair] = counts.get(pair, 0) + n
    if not counts:
        return None
    top = max(counts.values())
    return min((pair for pair, c in counts.items() if c == top), key=str)
""",
                "not as strings",
            ),
        },
        "mask_tokens": {
            "special-tokens-selected": (
                """
def mask_tokens(tokens, mask_id, vocab_size, special_ids, p, generator):
    selected = torch.rand(tokens.shape, generator=generator) < p
    kind = torch.rand(tokens.shape, generator=generator)
    ordinary = torch.tensor([i for i in range(vocab_size) if i not in special_ids and i != mask_id])
    pick = ordinary[torch.randint(len(ordinary), tokens.shape, generator=generator)]
    inputs = torch.where(selected & (kind < 0.8), mask_id, tokens)
    inputs = torch.where(selected & (kind >= 0.8) & (kind < 0.9), pick, inputs)
    labels = torch.where(selected, tokens, -100)
    return inputs, labels
""",
                "special tokens (padding, [CLS], ...) were selected",
            ),
            "all-to-mask": (
                """
def mask_tokens(tokens, mask_id, vocab_size, special_ids, p, generator):
    special = torch.tensor([*special_ids, mask_id])
    selected = ~torch.isin(tokens, special) & (torch.rand(tokens.shape, generator=generator) < p)
    inputs = tokens.masked_fill(selected, mask_id)
    labels = tokens.masked_fill(~selected, -100)
    return inputs, labels
""",
                "every selected token became [MASK]",
            ),
            "ten-percent-of-the-rest": (
                """
def mask_tokens(tokens, mask_id, vocab_size, special_ids, p, generator):
    special = torch.tensor([*special_ids, mask_id])
    selected = ~torch.isin(tokens, special) & (torch.rand(tokens.shape, generator=generator) < p)
    to_mask = selected & (torch.rand(tokens.shape, generator=generator) < 0.8)
    rest = selected & ~to_mask
    to_random = rest & (torch.rand(tokens.shape, generator=generator) < 0.1)
    ordinary = torch.tensor([i for i in range(vocab_size) if i not in special.tolist()])
    pick = ordinary[torch.randint(len(ordinary), tokens.shape, generator=generator)]
    inputs = torch.where(to_mask, mask_id, torch.where(to_random, pick, tokens))
    labels = torch.where(selected, tokens, -100)
    return inputs, labels
""",
                "only 10% of the remaining 20% became random tokens",
            ),
            "random-from-whole-vocab": (
                """
def mask_tokens(tokens, mask_id, vocab_size, special_ids, p, generator):
    special = torch.tensor([*special_ids, mask_id])
    selected = ~torch.isin(tokens, special) & (torch.rand(tokens.shape, generator=generator) < p)
    kind = torch.rand(tokens.shape, generator=generator)
    random_ids = torch.randint(vocab_size, tokens.shape, generator=generator)
    inputs = torch.where(selected & (kind < 0.8), mask_id, tokens)
    inputs = torch.where(selected & (kind >= 0.8) & (kind < 0.9), random_ids, inputs)
    labels = torch.where(selected, tokens, -100)
    return inputs, labels
""",
                "a random replacement was a special token",
            ),
        },
        "greedy_translate": {
            "finished-rows-not-filled": (
                """
def greedy_translate(model, src, src_padding_mask, bos_id, eos_id, max_len):
    with torch.no_grad():
        memory = model.encode(src, src_padding_mask)
        tokens = torch.full((src.shape[0], 1), bos_id, dtype=torch.long)
        for _ in range(max_len):
            logits = model.decode(tokens, memory, src_padding_mask)
            next_token = logits[:, -1].argmax(dim=-1)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            if (tokens == eos_id).any(dim=1).all():  # every row has written <eos>
                break
    return tokens
""",
                "must keep writing <eos>",
            ),
            "stop-at-first-eos": (
                """
def greedy_translate(model, src, src_padding_mask, bos_id, eos_id, max_len):
    with torch.no_grad():
        memory = model.encode(src, src_padding_mask)
        tokens = torch.full((src.shape[0], 1), bos_id, dtype=torch.long)
        for _ in range(max_len):
            logits = model.decode(tokens, memory, src_padding_mask)
            next_token = logits[:, -1].argmax(dim=-1)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            if (next_token == eos_id).any():
                break
    return tokens
""",
                "stop only when every row has",
            ),
            "first-position-logits": (
                """
def greedy_translate(model, src, src_padding_mask, bos_id, eos_id, max_len):
    with torch.no_grad():
        memory = model.encode(src, src_padding_mask)
        tokens = torch.full((src.shape[0], 1), bos_id, dtype=torch.long)
        done = torch.zeros(src.shape[0], dtype=torch.bool)
        for _ in range(max_len):
            logits = model.decode(tokens, memory, src_padding_mask)
            next_token = logits[:, 0].argmax(dim=-1).masked_fill(done, eos_id)
            done = done | (next_token == eos_id)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            if done.all():
                break
    return tokens
""",
                "every step predicts from <bos> alone",
            ),
            "max-len-counts-bos": (
                """
def greedy_translate(model, src, src_padding_mask, bos_id, eos_id, max_len):
    with torch.no_grad():
        memory = model.encode(src, src_padding_mask)
        tokens = torch.full((src.shape[0], 1), bos_id, dtype=torch.long)
        done = torch.zeros(src.shape[0], dtype=torch.bool)
        while tokens.shape[1] < max_len:  # max_len tokens in all
            logits = model.decode(tokens, memory, src_padding_mask)
            next_token = logits[:, -1].argmax(dim=-1).masked_fill(done, eos_id)
            done = done | (next_token == eos_id)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            if done.all():
                break
    return tokens
""",
                "max_len counts the new tokens",
            ),
        },
    },
}
