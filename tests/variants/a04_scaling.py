"""Right answers to Chapter 4's exercises, written as learners write them."""

P1 = "04_scaling/01_counting_and_memory.ipynb"
P2 = "04_scaling/02_efficient_inference.ipynb"

VARIANTS = {
    P1: {
        "parameter_count": {
            "per-layer-loop": """
def parameter_count(vocab_size, context_length, d_model, n_layers, d_ff):
    total = vocab_size * d_model  # token embedding, shared with the output layer
    total += context_length * d_model  # learned positions
    for _ in range(n_layers):
        total += 2 * d_model  # first layer norm: gain and bias
        for _ in range(4):  # queries, keys, values, output
            total += d_model * d_model + d_model
        total += 2 * d_model  # second layer norm
        total += d_model * d_ff + d_ff  # up
        total += d_ff * d_model + d_model  # down
    total += 2 * d_model  # final layer norm
    return total
""",
            "shape-list": """
def parameter_count(vocab_size, context_length, d_model, n_layers, d_ff):
    C = d_model

    def layer_shapes():
        shapes = [(C,), (C,)]  # ln_1
        for _ in "qkvo":
            shapes += [(C, C), (C,)]
        shapes += [(C,), (C,)]  # ln_2
        shapes += [(d_ff, C), (d_ff,), (C, d_ff), (C,)]
        return shapes

    shapes = [(vocab_size, C), (context_length, C)]
    for _ in range(n_layers):
        shapes.extend(layer_shapes())
    shapes += [(C,), (C,)]  # ln_f
    return sum(math.prod(shape) for shape in shapes)
""",
            "expanded-polynomial": """
def parameter_count(vocab_size, context_length, d_model, n_layers, d_ff):
    V, T, C, L, H = vocab_size, context_length, d_model, n_layers, d_ff
    per_layer = 4 * C**2 + 2 * C * H + 9 * C + H  # 4C^2+4C attn, 2CH+H+C mlp, 4C norms
    n = (V + T) * C + L * per_layer + 2 * C
    assert isinstance(n, int)
    return n
""",
            "breakdown-dict-print": """
def parameter_count(vocab_size, context_length, d_model, n_layers, d_ff):
    C = d_model
    parts = {
        "token embedding (tied)": vocab_size * C,
        "positions": context_length * C,
        "attention": n_layers * 4 * (C * C + C),
        "feed-forward": n_layers * (2 * C * d_ff + d_ff + C),
        "layer norms": n_layers * 2 * 2 * C + 2 * C,
    }
    return sum(parts.values())


print(f"{parameter_count(50257, 1024, 768, 12, 3072):,}")  # GPT-2 small
""",
            "course-letters": """
def parameter_count(vocab_size, context_length, d_model, n_layers, d_ff):
    V, C, L, F = vocab_size, d_model, n_layers, d_ff  # the letters of tutorlib/scaling.py
    attention = 4 * (C * C + C)
    mlp = C * F + F + F * C + C
    norms = 2 * 2 * C
    return V * C + context_length * C + L * (attention + mlp + norms) + 2 * C
""",
        },
        "forward_flops": {
            "matmul-helper-loop": """
def forward_flops(vocab_size, d_model, n_layers, d_ff, seq_len):
    def matmul(m, k, n):  # (m x k) @ (k x n)
        return 2 * m * k * n

    T, C = seq_len, d_model
    total = 0
    for _ in range(n_layers):
        for _ in range(4):  # W_q, W_k, W_v, W_o
            total += matmul(T, C, C)
        total += matmul(T, C, T)  # Q @ K^T
        total += matmul(T, T, C)  # weights @ V
        total += matmul(T, C, d_ff)
        total += matmul(T, d_ff, C)
    total += matmul(T, C, vocab_size)  # unembedding
    return total
""",
            "two-flops-per-weight": """
def forward_flops(vocab_size, d_model, n_layers, d_ff, seq_len):
    # every weight of a matrix is used once per token: 2 FLOPs (multiply + add)
    matrix_weights = n_layers * (4 * d_model**2 + 2 * d_model * d_ff) + vocab_size * d_model
    attention = n_layers * 2 * (2 * seq_len**2 * d_model)
    return 2 * seq_len * matrix_weights + attention
""",
            "float-then-int": """
def forward_flops(vocab_size, d_model, n_layers, d_ff, seq_len):
    flops = 0.0
    per_token_per_layer = 2.0 * (4 * d_model * d_model + 2 * d_model * d_ff)
    flops += n_layers * seq_len * per_token_per_layer
    flops += n_layers * 4.0 * seq_len**2 * d_model  # QK^T and AV
    flops += 2.0 * seq_len * vocab_size * d_model
    return int(flops)
""",
            "numpy-table": """
import numpy as np


def forward_flops(vocab_size, d_model, n_layers, d_ff, seq_len):
    T, C = seq_len, d_model
    # (m, k, n) of each product in one layer
    layer = np.array(
        [[T, C, C]] * 4 + [[T, C, T], [T, T, C], [T, C, d_ff], [T, d_ff, C]], dtype=np.int64
    )
    per_layer = int((2 * layer.prod(axis=1)).sum())
    return n_layers * per_layer + 2 * T * C * vocab_size
""",
            "course-letters": """
def forward_flops(vocab_size, d_model, n_layers, d_ff, seq_len):
    C, F, V, L, T = d_model, d_ff, vocab_size, n_layers, seq_len
    per_layer = 2 * T * 4 * C * C + 2 * T * 2 * C * F + 2 * 2 * T * T * C
    return L * per_layer + 2 * T * V * C
""",
        },
        "accumulate_gradients": {
            "slices-sum-reduction": """
def accumulate_gradients(model, inputs, targets, n_micro):
    B = inputs.shape[0]
    size = B // n_micro
    for p in model.parameters():
        p.grad = None
    for i in range(n_micro):
        x = inputs[i * size : (i + 1) * size]
        y = targets[i * size : (i + 1) * size]
        loss = F.cross_entropy(model(x), y, reduction="sum") / B
        loss.backward()
""",
            "split-weighted": """
def accumulate_gradients(model, inputs, targets, n_micro):
    for p in model.parameters():
        if p.grad is not None:
            p.grad.zero_()
    size = len(inputs) // n_micro
    xs, ys = torch.split(inputs, size), torch.split(targets, size)
    assert len(xs) == n_micro
    for x, y in zip(xs, ys):
        logits = model(x)
        loss = F.cross_entropy(logits, y) * (len(x) / len(inputs))
        loss.backward()
""",
            "reshape-track-loss": """
def accumulate_gradients(model, inputs, targets, n_micro):
    model.zero_grad()
    micro_x = inputs.reshape(n_micro, -1, inputs.shape[-1])
    micro_y = targets.reshape(n_micro, -1)
    assert micro_x.shape[1] * n_micro == len(inputs)
    total = 0.0
    for step in range(n_micro):
        loss = F.cross_entropy(model(micro_x[step]), micro_y[step])
        (loss / n_micro).backward()
        total += loss.item() / n_micro  # the full batch's loss, to print while training
""",
            "tensor-split-autograd": """
def accumulate_gradients(model, inputs, targets, n_micro):
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    xs = torch.tensor_split(inputs, n_micro)
    ys = torch.tensor_split(targets, n_micro)
    with torch.enable_grad():
        for x, y in zip(xs, ys):
            torch.autograd.backward(F.cross_entropy(model(x), y) / n_micro)
""",
            "forward-method": """
def accumulate_gradients(model, inputs, targets, n_micro):
    model.zero_grad()
    for x, y in zip(inputs.chunk(n_micro), targets.chunk(n_micro)):
        (F.cross_entropy(model.forward(x), y) / n_micro).backward()
""",
        },
        "fit_power_law": {
            "python-loops": """
def fit_power_law(n, loss):
    xs = [math.log(v) for v in n.tolist()]
    ys = [math.log(v) for v in loss.tolist()]
    m = len(xs)
    x_bar = sum(xs) / m
    y_bar = sum(ys) / m
    sxy = sum((x - x_bar) * (y - y_bar) for x, y in zip(xs, ys))
    sxx = sum((x - x_bar) ** 2 for x in xs)
    slope = sxy / sxx
    intercept = y_bar - slope * x_bar
    return -slope, math.exp(intercept)
""",
            "normal-equations": """
def fit_power_law(n, loss):
    X = torch.stack([torch.ones_like(n), torch.log(n)], dim=1)  # (m, 2) design matrix
    y = torch.log(loss)
    beta = torch.linalg.solve(X.T @ X, X.T @ y)  # normal equations
    log_a, slope = beta.tolist()
    return -slope, math.exp(log_a)
""",
            "numpy-cov-log10": """
import numpy as np


def fit_power_law(n, loss):
    x = np.log10(n.numpy())
    y = np.log10(loss.numpy())
    c = np.cov(x, y)
    slope = c[0, 1] / c[0, 0]
    intercept = y.mean() - slope * x.mean()  # log10(a)
    return float(-slope), float(10**intercept)
""",
            "raw-sums": """
def fit_power_law(n, loss):
    x, y = n.log(), loss.log()
    m = x.numel()
    slope = (m * (x * y).sum() - x.sum() * y.sum()) / (m * (x**2).sum() - x.sum() ** 2)
    intercept = (y.sum() - slope * x.sum()) / m
    alpha = float(-slope)
    a = float(intercept.exp())
    return alpha, a
""",
        },
    },
    P2: {
        "kv_attention_step": {
            "preallocated-buffers": """
def kv_attention_step(q, k_new, v_new, cache_k, cache_v):
    B, H, t, D = cache_k.shape
    keys = torch.empty(B, H, t + 1, D, dtype=cache_k.dtype, device=cache_k.device)
    values = torch.empty(B, H, t + 1, D, dtype=cache_v.dtype, device=cache_v.device)
    keys[:, :, :t] = cache_k
    keys[:, :, t:] = k_new
    values[:, :, :t] = cache_v
    values[:, :, t:] = v_new
    scores = torch.matmul(q, keys.transpose(2, 3)) * D**-0.5
    weights = F.softmax(scores, dim=-1)
    out = torch.matmul(weights, values)
    assert out.shape == q.shape
    return out, keys, values
""",
            "einsum-manual-softmax": """
def kv_attention_step(q, k_new, v_new, cache_k, cache_v):
    keys = torch.cat((cache_k, k_new), dim=-2)
    values = torch.cat((cache_v, v_new), dim=-2)
    d = q.size(-1)
    scores = torch.einsum("bhqd,bhkd->bhqk", q, keys) / d**0.5
    scores = scores - scores.max(dim=-1, keepdim=True).values
    weights = scores.exp() / scores.exp().sum(dim=-1, keepdim=True)
    out = torch.einsum("bhqk,bhkd->bhqd", weights, values)
    return out, keys, values
""",
            "loops-over-heads": """
def kv_attention_step(q, k_new, v_new, cache_k, cache_v):
    keys = torch.cat([cache_k, k_new], dim=2)
    values = torch.cat([cache_v, v_new], dim=2)
    B, H, _, D = q.shape
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            s = keys[b, h] @ q[b, h, 0] / math.sqrt(D)  # (t + 1,)
            w = torch.softmax(s, dim=0)
            out[b, h, 0] = w @ values[b, h]
    return out, keys, values
""",
            "cache-and-new-scores": """
def kv_attention_step(q, k_new, v_new, cache_k, cache_v):
    t, D = cache_k.shape[2], q.shape[-1]
    s_cache = q @ cache_k.transpose(-1, -2) / math.sqrt(D)  # (B, H, 1, t)
    s_new = (q * k_new).sum(dim=-1, keepdim=True) / math.sqrt(D)  # (B, H, 1, 1)
    w = torch.softmax(torch.cat([s_cache, s_new], dim=-1), dim=-1)
    out = w[..., :t] @ cache_v + w[..., t:] * v_new
    keys = torch.cat([cache_k, k_new], dim=2)
    values = torch.cat([cache_v, v_new], dim=2)
    return out, keys, values
""",
        },
        "quantize_per_channel": {
            "max-dim-values": """
def quantize_per_channel(w):
    amax = w.abs().max(dim=1, keepdim=True).values  # (out, 1)
    scale = (amax / 127).to(torch.float32)
    q = torch.clamp(torch.round(w / scale), min=-127, max=127).to(torch.int8)
    return q, scale
""",
            "row-loop": """
def quantize_per_channel(w):
    rows, scales = [], []
    for row in w.float():
        s = row.abs().max() / 127
        scales.append(s)
        rows.append(torch.round(row / s).clamp(-127, 127))
    q = torch.stack(rows).to(torch.int8)
    scale = torch.stack(scales).unsqueeze(1)
    assert q.shape == w.shape and scale.shape == (w.shape[0], 1)
    return q, scale
""",
            "inverse-multiply": """
def quantize_per_channel(w):
    w = w.float()
    inv = 127.0 / w.abs().amax(dim=-1, keepdim=True)
    q = (w * inv).round().clip(-127, 127).char()
    return q, 1.0 / inv
""",
            "float64-then-cast": """
def quantize_per_channel(w):
    wd = w.double()
    amax = wd.abs().amax(dim=1, keepdim=True)
    q = torch.round(wd * 127 / amax).clamp(-127, 127).to(torch.int8)
    scale = (amax / 127).float()
    return q, scale
""",
        },
        "magnitude_mask": {
            "kthvalue-threshold": """
def magnitude_mask(weight, amount):
    n_prune = round(amount * weight.numel())
    if n_prune == 0:
        return torch.ones_like(weight, dtype=torch.bool)
    magnitudes = weight.abs()
    threshold = torch.kthvalue(magnitudes.flatten(), n_prune).values
    return magnitudes > threshold
""",
            "argsort": """
def magnitude_mask(weight, amount):
    flat = weight.detach().abs().reshape(-1)
    k = round(amount * flat.numel())
    order = torch.argsort(flat)
    mask = torch.ones(flat.shape, dtype=torch.bool)
    mask[order[:k]] = False
    return mask.reshape(weight.shape)
""",
            "topk-keep-largest": """
def magnitude_mask(weight, amount):
    N = weight.numel()
    n_keep = N - round(amount * N)
    kept = torch.topk(weight.abs().reshape(-1), n_keep).indices
    mask = torch.zeros(N, dtype=torch.bool)
    mask[kept] = True
    return mask.view(weight.shape)
""",
            "rank-double-argsort": """
def magnitude_mask(weight, amount):
    k = round(amount * weight.numel())
    ranks = weight.abs().flatten().argsort().argsort()  # 0 = smallest |w|
    return (ranks >= k).view(weight.shape)
""",
        },
        "distillation_loss": {
            "no-grad-teacher-gather": """
def distillation_loss(student_logits, teacher_logits, targets, temperature, alpha):
    T = temperature
    with torch.no_grad():
        teacher_log_probs = torch.log_softmax(teacher_logits / T, dim=1)
        teacher_probs = teacher_log_probs.exp()
    student_log_probs = torch.log_softmax(student_logits / T, dim=1)
    kl_rows = torch.sum(teacher_probs * (teacher_log_probs - student_log_probs), dim=1)
    soft = kl_rows.sum() / student_logits.shape[0]
    log_probs = torch.log_softmax(student_logits, dim=1)
    hard = -log_probs.gather(1, targets.unsqueeze(1)).squeeze(1).mean()
    return alpha * (T**2) * soft + (1 - alpha) * hard
""",
            "xlogy-softmax": """
def distillation_loss(student_logits, teacher_logits, targets, temperature, alpha):
    p_teacher = torch.softmax(teacher_logits.detach() / temperature, dim=-1)
    log_q = student_logits.div(temperature).log_softmax(dim=-1)
    kl = (torch.xlogy(p_teacher, p_teacher) - p_teacher * log_q).sum(dim=-1).mean()
    ce = F.cross_entropy(student_logits, targets)
    return alpha * temperature**2 * kl + (1 - alpha) * ce
""",
            "row-loop": """
def distillation_loss(student_logits, teacher_logits, targets, temperature, alpha):
    T = temperature
    N = student_logits.shape[0]
    teacher = teacher_logits.detach()
    total_kl = 0.0
    for i in range(N):
        log_q = torch.log_softmax(student_logits[i] / T, dim=0)
        log_p = torch.log_softmax(teacher[i] / T, dim=0)
        total_kl = total_kl + (log_p.exp() * (log_p - log_q)).sum()
    kl = total_kl / N
    ce = F.cross_entropy(student_logits, targets)
    loss = alpha * T * T * kl + (1 - alpha) * ce
    return loss
""",
            "helpers-nll-functional-import": '''
from torch.nn import functional as F


def kl_divergence(log_p, log_q):
    """KL(p || q) of each row, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def distillation_loss(student_logits, teacher_logits, targets, temperature, alpha):
    soft_student = torch.log_softmax(student_logits / temperature, dim=-1)
    soft_teacher = torch.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    soft_loss = kl_divergence(soft_teacher, soft_student).mean() * temperature**2
    hard_loss = F.nll_loss(torch.log_softmax(student_logits, dim=-1), targets)
    return alpha * soft_loss + (1 - alpha) * hard_loss
''',
        },
    },
}

MISTAKES = {
    P1: {
        "parameter_count": {
            "no-biases": (
                """
def parameter_count(vocab_size, context_length, d_model, n_layers, d_ff):
    C = d_model
    attention = 4 * C * C  # Q, K, V, output
    feed_forward = C * d_ff + d_ff * C
    norms = 2 * (2 * C)
    layer = attention + feed_forward + norms
    return vocab_size * C + context_length * C + n_layers * layer + 2 * C
""",
                "the biases are missing",
            ),
            "output-counted-again": (
                """
def parameter_count(vocab_size, context_length, d_model, n_layers, d_ff):
    C = d_model
    layer = 4 * (C * C + C) + (C * d_ff + d_ff) + (d_ff * C + C) + 2 * (2 * C)
    embeddings = vocab_size * C + context_length * C
    unembedding = C * vocab_size  # the output projection onto the vocabulary
    return embeddings + n_layers * layer + 2 * C + unembedding
""",
                "it is tied to the token embedding",
            ),
            "no-final-norm": (
                """
def parameter_count(vocab_size, context_length, d_model, n_layers, d_ff):
    C = d_model
    layer = 4 * (C * C + C) + (C * d_ff + d_ff) + (d_ff * C + C) + 2 * (2 * C)
    return vocab_size * C + context_length * C + n_layers * layer
""",
                "the final layer norm of the pre-norm stack",
            ),
            "d-ff-taken-as-4c": (
                """
def parameter_count(vocab_size, context_length, d_model, n_layers, d_ff):
    C = d_model
    H = 4 * C  # the feed-forward width
    layer = 4 * (C * C + C) + (C * H + H) + (H * C + C) + 4 * C
    return (vocab_size + context_length) * C + n_layers * layer + 2 * C
""",
                None,
            ),
        },
        "forward_flops": {
            "no-attention-products": (
                """
def forward_flops(vocab_size, d_model, n_layers, d_ff, seq_len):
    C, T = d_model, seq_len
    per_layer = 2 * T * 4 * C * C + 2 * T * 2 * C * d_ff
    return n_layers * per_layer + 2 * T * vocab_size * C
""",
                "attention's two products are missing",
            ),
            "one-flop-per-multiply-add": (
                """
def forward_flops(vocab_size, d_model, n_layers, d_ff, seq_len):
    C, T = d_model, seq_len
    per_layer = T * 4 * C * C + 2 * T * T * C + T * 2 * C * d_ff  # one multiply-add each
    return n_layers * per_layer + T * vocab_size * C
""",
                "a multiply-add counts as 2 FLOPs",
            ),
            "causal-half": (
                """
def forward_flops(vocab_size, d_model, n_layers, d_ff, seq_len):
    C, T = d_model, seq_len
    maps = 2 * T * 4 * C * C
    scores_and_mix = 2 * (2 * T * T * C) // 2  # the causal mask hides half of the scores
    feed_forward = 2 * T * 2 * C * d_ff
    return n_layers * (maps + scores_and_mix + feed_forward) + 2 * T * vocab_size * C
""",
                "only half of attention's products are counted",
            ),
            "attention-t-c-swapped": (
                """
def forward_flops(vocab_size, d_model, n_layers, d_ff, seq_len):
    C, T = d_model, seq_len
    maps = 2 * T * 4 * C * C
    scores_and_mix = 2 * (2 * T * C * C)  # (T x C) @ (C x T) and (T x T) @ (T x C)
    feed_forward = 2 * T * 2 * C * d_ff
    return n_layers * (maps + scores_and_mix + feed_forward) + 2 * T * vocab_size * C
""",
                None,
            ),
        },
        "accumulate_gradients": {
            "loss-not-divided": (
                """
def accumulate_gradients(model, inputs, targets, n_micro):
    model.zero_grad()
    for x, y in zip(inputs.chunk(n_micro), targets.chunk(n_micro)):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
""",
                "must be divided by the number of micro-batches",
            ),
            "zero-grad-in-loop": (
                """
def accumulate_gradients(model, inputs, targets, n_micro):
    for x, y in zip(inputs.chunk(n_micro), targets.chunk(n_micro)):
        model.zero_grad()
        loss = F.cross_entropy(model(x), y) / n_micro
        loss.backward()
""",
                "zeroed inside the loop",
            ),
            "split-by-n-micro": (
                """
def accumulate_gradients(model, inputs, targets, n_micro):
    model.zero_grad()
    for x, y in zip(inputs.split(n_micro), targets.split(n_micro)):
        loss = F.cross_entropy(model(x), y) / n_micro
        loss.backward()
""",
                "the micro-batches hold n_micro examples each",
            ),
            "divided-by-micro-size": (
                """
def accumulate_gradients(model, inputs, targets, n_micro):
    model.zero_grad()
    for x, y in zip(inputs.chunk(n_micro), targets.chunk(n_micro)):
        loss = F.cross_entropy(model(x), y) / len(x)
        loss.backward()
""",
                None,
            ),
        },
        "fit_power_law": {
            "no-logs": (
                """
def fit_power_law(n, loss):
    x, y = n, loss
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    intercept = y.mean() - slope * x.mean()
    return -slope.item(), math.exp(intercept.item())
""",
                "the fit is on n and loss themselves",
            ),
            "axes-swapped": (
                """
def fit_power_law(n, loss):
    x, y = torch.log(loss), torch.log(n)
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    intercept = y.mean() - slope * x.mean()
    # log n = intercept + slope log L, so log L = -intercept / slope + (1 / slope) log n
    return -(1 / slope).item(), torch.exp(-intercept / slope).item()
""",
                "the regression is of log(n) on log(loss)",
            ),
            "log10-then-exp": (
                """
def fit_power_law(n, loss):
    x, y = torch.log10(n), torch.log10(loss)
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    intercept = y.mean() - slope * x.mean()
    return -slope.item(), math.exp(intercept.item())
""",
                "the fit used log10 but a = exp(intercept)",
            ),
            "first-and-last-points": (
                """
def fit_power_law(n, loss):
    x, y = torch.log(n), torch.log(loss)
    slope = (y[-1] - y[0]) / (x[-1] - x[0])  # a straight line through the end points
    intercept = y[0] - slope * x[0]
    return -slope.item(), torch.exp(intercept).item()
""",
                None,
            ),
        },
    },
    P2: {
        "kv_attention_step": {
            "cat-on-heads-axis": (
                """
def kv_attention_step(q, k_new, v_new, cache_k, cache_v):
    keys = torch.cat([cache_k, k_new], dim=1)
    values = torch.cat([cache_v, v_new], dim=1)
    scores = q @ keys.transpose(-2, -1) / math.sqrt(q.shape[-1])
    weights = torch.softmax(scores, dim=-1)
    return weights @ values, keys, values
""",
                "the cache is appended on dim 1",
            ),
            "cache-only": (
                """
def kv_attention_step(q, k_new, v_new, cache_k, cache_v):
    keys = torch.cat([cache_k, k_new], dim=2)
    values = torch.cat([cache_v, v_new], dim=2)
    scores = q @ cache_k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # the cached tokens
    weights = torch.softmax(scores, dim=-1)
    return weights @ cache_v, keys, values
""",
                "the new token does not attend to itself",
            ),
            "new-first": (
                """
def kv_attention_step(q, k_new, v_new, cache_k, cache_v):
    keys = torch.cat([k_new, cache_k], dim=2)
    values = torch.cat([v_new, cache_v], dim=2)
    scores = q @ keys.transpose(-2, -1) / math.sqrt(q.shape[-1])
    weights = torch.softmax(scores, dim=-1)
    return weights @ values, keys, values
""",
                "was put in front of the cache",
            ),
            "scaled-by-sequence-length": (
                """
def kv_attention_step(q, k_new, v_new, cache_k, cache_v):
    keys = torch.cat([cache_k, k_new], dim=2)
    values = torch.cat([cache_v, v_new], dim=2)
    scores = q @ keys.transpose(-2, -1) / math.sqrt(keys.shape[-2])
    weights = torch.softmax(scores, dim=-1)
    return weights @ values, keys, values
""",
                None,
            ),
        },
        "quantize_per_channel": {
            "one-global-scale": (
                """
def quantize_per_channel(w):
    scale = w.abs().max().float() / 127
    q = torch.round(w.float() / scale).clamp(-127, 127).to(torch.int8)
    return q, scale.expand(w.shape[0], 1).clone()
""",
                "one scale for the whole matrix",
            ),
            "no-round": (
                """
def quantize_per_channel(w):
    scale = w.abs().amax(dim=1, keepdim=True).float() / 127
    q = (w.float() / scale).clamp(-127, 127).to(torch.int8)
    return q, scale
""",
                "the values are truncated",
            ),
            "max-over-columns": (
                """
def quantize_per_channel(w):
    scale = w.abs().amax(dim=0, keepdim=True).float() / 127
    q = torch.round(w.float() / scale).clamp(-127, 127).to(torch.int8)
    return q, scale
""",
                "one scale per input column",
            ),
            "max-not-abs": (
                """
def quantize_per_channel(w):
    scale = w.amax(dim=1, keepdim=True).float() / 127
    q = torch.round(w.float() / scale).clamp(-127, 127).to(torch.int8)
    return q, scale
""",
                "not the largest magnitude",
            ),
            "no-float32-cast": (
                """
def quantize_per_channel(w):
    scale = w.abs().amax(dim=1, keepdim=True) / 127  # the dtype of w, not float32
    q = torch.round(w / scale).clamp(-127, 127).to(torch.int8)
    return q, scale
""",
                "the scale is float32",
            ),
        },
        "magnitude_mask": {
            "largest-pruned": (
                """
def magnitude_mask(weight, amount):
    k = round(amount * weight.numel())
    keep = torch.ones(weight.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.topk(weight.abs().flatten(), k).indices] = False
    return keep.view(weight.shape)
""",
                "the largest weights were pruned",
            ),
            "signed-value": (
                """
def magnitude_mask(weight, amount):
    k = round(amount * weight.numel())
    order = torch.argsort(weight.flatten())
    keep = torch.ones(weight.numel(), dtype=torch.bool)
    keep[order[:k]] = False
    return keep.view(weight.shape)
""",
                "ranked by their signed value",
            ),
            "int-truncates": (
                """
def magnitude_mask(weight, amount):
    k = int(amount * weight.numel())
    order = torch.argsort(weight.abs().flatten())
    keep = torch.ones(weight.numel(), dtype=torch.bool)
    keep[order[:k]] = False
    return keep.view(weight.shape)
""",
                "the number pruned is rounded down",
            ),
            "threshold-one-past": (
                """
def magnitude_mask(weight, amount):
    k = round(amount * weight.numel())
    threshold = weight.abs().flatten().sort().values[k]  # the k-th smallest |w|
    return weight.abs() > threshold
""",
                "one weight too many",
            ),
            "round-half-up": (
                """
def magnitude_mask(weight, amount):
    k = int(amount * weight.numel() + 0.5)  # rounds x.5 up; round() rounds it to even
    keep = torch.ones(weight.numel(), dtype=torch.bool)
    keep[torch.argsort(weight.abs().flatten())[:k]] = False
    return keep.view(weight.shape)
""",
                "rounds a half to the even integer",
            ),
        },
        "distillation_loss": {
            "no-t-squared": (
                """
def distillation_loss(student_logits, teacher_logits, targets, temperature, alpha):
    T = temperature
    log_p_student = torch.log_softmax(student_logits / T, dim=-1)
    log_p_teacher = torch.log_softmax(teacher_logits.detach() / T, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1).mean()
    return alpha * kl + (1 - alpha) * F.cross_entropy(student_logits, targets)
""",
                "the soft term is not multiplied by T^2",
            ),
            "kl-reversed": (
                """
def distillation_loss(student_logits, teacher_logits, targets, temperature, alpha):
    T = temperature
    log_p_student = torch.log_softmax(student_logits / T, dim=-1)
    log_p_teacher = torch.log_softmax(teacher_logits.detach() / T, dim=-1)
    kl = (log_p_student.exp() * (log_p_student - log_p_teacher)).sum(dim=-1).mean()
    return alpha * T**2 * kl + (1 - alpha) * F.cross_entropy(student_logits, targets)
""",
                "the KL divergence is reversed",
            ),
            "teacher-not-detached": (
                """
def distillation_loss(student_logits, teacher_logits, targets, temperature, alpha):
    T = temperature
    log_p_student = torch.log_softmax(student_logits / T, dim=-1)
    log_p_teacher = torch.log_softmax(teacher_logits / T, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1).mean()
    return alpha * T**2 * kl + (1 - alpha) * F.cross_entropy(student_logits, targets)
""",
                "detach its logits",
            ),
            "teacher-not-softened": (
                """
def distillation_loss(student_logits, teacher_logits, targets, temperature, alpha):
    T = temperature
    log_p_student = torch.log_softmax(student_logits / T, dim=-1)
    log_p_teacher = torch.log_softmax(teacher_logits.detach(), dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1).mean()
    return alpha * T**2 * kl + (1 - alpha) * F.cross_entropy(student_logits, targets)
""",
                "the teacher's logits must be divided by the temperature",
            ),
            "soft-cross-entropy": (
                """
def distillation_loss(student_logits, teacher_logits, targets, temperature, alpha):
    T = temperature
    log_p_student = torch.log_softmax(student_logits / T, dim=-1)
    p_teacher = torch.softmax(teacher_logits.detach() / T, dim=-1)
    soft = -(p_teacher * log_p_student).sum(dim=-1).mean()  # soft-target cross-entropy
    return alpha * T**2 * soft + (1 - alpha) * F.cross_entropy(student_logits, targets)
""",
                "subtract the teacher's entropy",
            ),
        },
    },
}

P3 = "04_scaling/03_experts_drafts_tiles.ipynb"

VARIANTS[P3] = {
    "top_k_routing": {
        "softmax-of-top-logits": """
def top_k_routing(router_logits, k):
    top_logits, experts = torch.topk(router_logits, k, dim=-1)
    return torch.softmax(top_logits, dim=-1), experts  # Mixtral's order of operations
""",
        "sort-then-slice": """
def top_k_routing(router_logits, k):
    probs = router_logits.softmax(-1)
    values, order = probs.sort(dim=-1, descending=True)
    weights = values[:, :k]
    return weights / weights.sum(dim=1, keepdim=True), order[:, :k]
""",
        "loop-over-tokens": """
def top_k_routing(router_logits, k):
    weights, experts = [], []
    for row in router_logits:
        p = torch.softmax(row, dim=0)
        order = torch.argsort(p, descending=True)[:k]
        w = p[order]
        weights.append(w / w.sum())
        experts.append(order)
    return torch.stack(weights), torch.stack(experts)
""",
        "stable-by-hand-with-print": """
def top_k_routing(router_logits, k):
    z = router_logits - router_logits.amax(dim=-1, keepdim=True)
    probs = z.exp() / z.exp().sum(-1, keepdim=True)
    w, idx = probs.topk(k, dim=-1)
    print("routing", tuple(router_logits.shape), "k =", k)
    return w / w.sum(-1, keepdim=True), idx
""",
    },
    "load_balancing_loss": {
        "one-hot": """
def load_balancing_loss(router_probs, experts, n_experts):
    N, k = experts.shape
    assigned = F.one_hot(experts, n_experts).to(router_probs.dtype)  # (N, k, E)
    f = assigned.sum(dim=(0, 1)) / (N * k)
    return n_experts * torch.dot(f, router_probs.mean(0))
""",
        "loop-over-experts": """
def load_balancing_loss(router_probs, experts, n_experts):
    total = 0.0
    for e in range(n_experts):
        f_e = (experts == e).sum() / experts.numel()
        total = total + f_e * router_probs[:, e].mean()
    return n_experts * total
""",
        "mean-of-one-hot": """
def load_balancing_loss(router_probs, experts, n_experts):
    chosen = F.one_hot(experts.flatten(), num_classes=n_experts).to(router_probs.dtype)
    f = chosen.mean(dim=0)  # (E,): the share of the N * k assignments
    P = router_probs.mean(dim=0)
    return (f * P).sum() * n_experts
""",
        "scatter-add": """
def load_balancing_loss(router_probs, experts, n_experts):
    flat = experts.flatten()
    counts = torch.zeros(n_experts, dtype=router_probs.dtype).scatter_add(
        0, flat, torch.ones(flat.shape, dtype=router_probs.dtype)
    )
    return n_experts * (counts / counts.sum() * router_probs.mean(dim=0)).sum()
""",
    },
    "speculative_accept": {
        "vectorised": """
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
""",
        "min-and-where": """
def speculative_accept(target_probs, draft_probs, draft_tokens, uniforms):
    for i, x in enumerate(draft_tokens.tolist()):
        accept = min(1.0, (target_probs[i, x] / draft_probs[i, x]).item())
        if not uniforms[i].item() < accept:
            p, q = target_probs[i], draft_probs[i]
            residual = torch.where(p > q, p - q, torch.zeros_like(p))
            return i, residual / residual.sum()
    return len(draft_tokens), target_probs[-1]
""",
        "cumprod-of-accepts": """
def speculative_accept(target_probs, draft_probs, draft_tokens, uniforms):
    k = len(draft_tokens)
    idx = torch.arange(k)
    accepted = uniforms < target_probs[idx, draft_tokens] / draft_probs[idx, draft_tokens]
    n = int(torch.cumprod(accepted.long(), dim=0).sum())  # accepted before the first rejection
    if n == k:
        return n, target_probs[k]
    residual = torch.clamp(target_probs[n] - draft_probs[n], min=0.0)
    return n, residual / residual.sum()
""",
        "tensor-count": """
def speculative_accept(target_probs, draft_probs, draft_tokens, uniforms):
    n = 0
    while n < len(draft_tokens):
        x = draft_tokens[n]
        if uniforms[n] * draft_probs[n, x] >= target_probs[n, x]:  # u >= p / q, q > 0
            break
        n += 1
    if n == len(draft_tokens):
        return torch.tensor(n), target_probs[n].clone()
    residual = (target_probs[n] - draft_probs[n]).clamp_min(0)
    return torch.tensor(n), residual / residual.sum()
""",
    },
    "online_softmax_update": {
        "masked-fill": """
def online_softmax_update(m, l, acc, scores, values):
    m_new = torch.max(m, scores.max(dim=-1).values)
    safe = m_new.masked_fill(torch.isinf(m_new), 0.0)
    alpha = torch.exp(m - safe)
    p = torch.exp(scores - safe[..., None])
    return m_new, alpha * l + p.sum(-1), alpha[..., None] * acc + p @ values
""",
        "nan-to-num-after-exp": """
def online_softmax_update(m, l, acc, scores, values):
    m_new = torch.maximum(m, scores.amax(dim=-1))
    rescale = torch.exp(m - m_new).nan_to_num(nan=0.0)  # -inf - -inf: nothing seen yet
    p = torch.exp(scores - m_new.unsqueeze(-1)).nan_to_num(nan=0.0)
    return m_new, l * rescale + p.sum(-1), acc * rescale.unsqueeze(-1) + p @ values
""",
        "loop-over-keys": """
def online_softmax_update(m, l, acc, scores, values):
    for j in range(scores.shape[-1]):  # one key at a time: a tile of width 1, repeated
        s = scores[..., j]
        m_new = torch.maximum(m, s)
        shift = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
        a, b = torch.exp(m - shift), torch.exp(s - shift)
        l = l * a + b
        acc = acc * a.unsqueeze(-1) + b.unsqueeze(-1) * values[..., j, :].unsqueeze(-2)
        m = m_new
    return m, l, acc
""",
        "einsum-nan-to-num": """
def online_softmax_update(m, l, acc, scores, values):
    m_new = torch.maximum(m, scores.amax(-1))
    shift = torch.nan_to_num(m_new, neginf=0.0)
    p = torch.exp(scores - shift.unsqueeze(-1))
    correction = torch.exp(m - shift)
    acc_new = torch.einsum("...q,...qd->...qd", correction, acc)
    acc_new = acc_new + torch.einsum("...qk,...kd->...qd", p, values)
    return m_new, correction * l + p.sum(dim=-1), acc_new
""",
    },
}

MISTAKES[P3] = {
    "top_k_routing": {
        "not-renormalised": (
            """
def top_k_routing(router_logits, k):
    return torch.topk(torch.softmax(router_logits, dim=-1), k, dim=-1)[:]
""",
            "the k weights are not renormalised",
        ),
        "softmax-over-tokens": (
            """
def top_k_routing(router_logits, k):
    probs = torch.softmax(router_logits, dim=0)
    w, e = torch.topk(probs, k, dim=-1)
    return w / w.sum(-1, keepdim=True), e
""",
            "the softmax runs over the tokens",
        ),
        "second-softmax": (
            """
def top_k_routing(router_logits, k):
    w, e = torch.topk(torch.softmax(router_logits, dim=-1), k, dim=-1)
    return torch.softmax(w, dim=-1), e
""",
            "went through a second softmax",
        ),
    },
    "load_balancing_loss": {
        "per-token": (
            """
def load_balancing_loss(router_probs, experts, n_experts):
    N = experts.shape[0]
    f = torch.bincount(experts.flatten(), minlength=n_experts).to(router_probs.dtype) / N
    return n_experts * (f * router_probs.mean(0)).sum()
""",
            "f_e is divided by the number of tokens N",
        ),
        "no-E": (
            """
def load_balancing_loss(router_probs, experts, n_experts):
    f = torch.bincount(experts.flatten(), minlength=n_experts).to(router_probs.dtype)
    return (f / experts.numel() * router_probs.mean(0)).sum()
""",
            "the factor E (the number of experts) is missing",
        ),
    },
    "speculative_accept": {
        "inverted-ratio": (
            """
def speculative_accept(target_probs, draft_probs, draft_tokens, uniforms):
    for i in range(len(draft_tokens)):
        x = draft_tokens[i]
        if uniforms[i] >= draft_probs[i, x] / target_probs[i, x]:
            r = (target_probs[i] - draft_probs[i]).clamp(min=0)
            return i, r / r.sum()
    return len(draft_tokens), target_probs[len(draft_tokens)]
""",
            "the ratio is inverted",
        ),
        "resample-from-p": (
            """
def speculative_accept(target_probs, draft_probs, draft_tokens, uniforms):
    for i in range(len(draft_tokens)):
        x = draft_tokens[i]
        if uniforms[i] >= target_probs[i, x] / draft_probs[i, x]:
            return i, target_probs[i]
    return len(draft_tokens), target_probs[len(draft_tokens)]
""",
            "not from p",
        ),
        "bonus-from-last-draft-position": (
            """
def speculative_accept(target_probs, draft_probs, draft_tokens, uniforms):
    k = len(draft_tokens)
    for i in range(k):
        x = draft_tokens[i]
        if uniforms[i] >= target_probs[i, x] / draft_probs[i, x]:
            r = (target_probs[i] - draft_probs[i]).clamp(min=0)
            return i, r / r.sum()
    return k, target_probs[k - 1]
""",
            "target_probs[k]",
        ),
    },
    "online_softmax_update": {
        "sum-not-rescaled": (
            """
def online_softmax_update(m, l, acc, scores, values):
    m_new = torch.maximum(m, scores.amax(-1))
    shift = torch.where(torch.isinf(m_new), 0.0, m_new)
    p = torch.exp(scores - shift[..., None])
    scale = torch.exp(m - shift)
    return m_new, l + p.sum(-1), acc * scale[..., None] + p @ values
""",
            "the running sum is not rescaled",
        ),
        "no-guard": (
            """
def online_softmax_update(m, l, acc, scores, values):
    m_new = torch.maximum(m, scores.amax(-1))
    p = torch.exp(scores - m_new[..., None])
    scale = torch.exp(m - m_new)
    return m_new, l * scale + p.sum(-1), acc * scale[..., None] + p @ values
""",
            "gives NaN",
        ),
        "normalised-output": (
            """
def online_softmax_update(m, l, acc, scores, values):
    m_new = torch.maximum(m, scores.amax(-1))
    shift = torch.where(torch.isinf(m_new), 0.0, m_new)
    p = torch.exp(scores - shift[..., None])
    scale = torch.exp(m - shift)
    l_new = l * scale + p.sum(-1)
    return m_new, l_new, (acc * scale[..., None] + p @ values) / l_new[..., None]
""",
            "acc is divided by l",
        ),
    },
}
