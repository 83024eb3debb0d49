"""Red-team submissions of Chapter 5 (solutions/05_vision)."""

from __future__ import annotations

from tests.redteam import Case

V, D = "01_patches_and_vit", "02_detection_and_contrast"

# --- right answers, written differently -------------------------------------------------------

PATCHIFY_LOOPS = """
def patchify(images, patch_size):
    B, C, H, W = images.shape
    P = patch_size
    patches = []
    for top in range(0, H, P):  # row by row
        for left in range(0, W, P):
            patches.append(images[:, :, top : top + P, left : left + P].reshape(B, -1))
    return torch.stack(patches, dim=1)
"""

EMBED_EINSUM = """
def patch_embedding(images, weight, bias, patch_size):
    B, C, H, W = images.shape
    P = patch_size
    windows = images.reshape(B, C, H // P, P, W // P, P)
    out = torch.einsum("bcrpsq,dcpq->brsd", windows, weight) + bias  # (B, rows, cols, d)
    return out.reshape(B, -1, weight.shape[0])
"""

CLS_BUFFER = """
def add_cls_and_positions(tokens, cls_token, pos_embed):
    B, N, C = tokens.shape
    out = tokens.new_zeros(B, N + 1, C)
    out[:, 0] = cls_token
    out[:, 1:] = tokens
    return out + pos_embed.unsqueeze(0)
"""

ROLLOUT_REDUCE = """
import functools


def attention_rollout(attentions):
    S = attentions[0].shape[-1]
    eye = torch.eye(S, dtype=attentions[0].dtype)
    layers = [(a.sum(dim=1) / a.shape[1] + eye) / 2 for a in attentions]
    start = eye.expand_as(layers[0])
    return functools.reduce(lambda rollout, a: torch.bmm(a, rollout), layers, start)
"""

IOU_LOOPS = """
def box_iou(boxes1, boxes2):
    out = torch.zeros(len(boxes1), len(boxes2), dtype=boxes1.dtype)
    for i, (x0, y0, x1, y1) in enumerate(boxes1.tolist()):
        for j, (u0, v0, u1, v1) in enumerate(boxes2.tolist()):
            w = max(0.0, min(x1, u1) - max(x0, u0))
            h = max(0.0, min(y1, v1) - max(y0, v0))
            inter = w * h
            out[i, j] = inter / ((x1 - x0) * (y1 - y0) + (u1 - u0) * (v1 - v0) - inter)
    return out
"""

COST_GATHER = """
def matching_cost(probs, pred_boxes, labels, target_boxes, l1_weight):
    class_cost = -probs.gather(1, labels.expand(len(probs), -1))
    return class_cost + l1_weight * torch.cdist(pred_boxes, target_boxes, p=1)
"""

SET_LOG_SOFTMAX = """
def set_classification_loss(logits, labels, pred_idx, tgt_idx, no_object_weight):
    Q, n_classes = logits.shape
    target = torch.full((Q,), n_classes - 1)
    for i in range(len(pred_idx)):  # one match at a time
        target[pred_idx[i]] = labels[tgt_idx[i]]
    w = torch.where(target == n_classes - 1, no_object_weight, 1.0).to(logits.dtype)
    nll = -logits.log_softmax(dim=-1).gather(1, target[:, None])[:, 0]
    return (w * nll).sum() / w.sum()
"""

NCE_LOGSUMEXP = """
def info_nce(image_emb, text_emb, temperature):
    image_emb = image_emb / image_emb.norm(dim=1, keepdim=True)
    text_emb = text_emb / text_emb.norm(dim=1, keepdim=True)
    s = image_emb @ text_emb.T / temperature
    diag = s.diagonal()
    rows = (torch.logsumexp(s, dim=1) - diag).mean()  # each image picks its text
    cols = (torch.logsumexp(s, dim=0) - diag).mean()  # each text picks its image
    return 0.5 * (rows + cols)
"""

# --- typical mistakes -------------------------------------------------------------------------

PATCHIFY_INNER_TRANSPOSED = """
def patchify(images, patch_size):
    B, C, H, W = images.shape
    P = patch_size
    x = images.reshape(B, C, H // P, P, W // P, P).permute(0, 2, 4, 1, 5, 3)
    return x.reshape(B, (H // P) * (W // P), C * P * P)
"""

PATCHIFY_COLUMN_MAJOR = """
def patchify(images, patch_size):
    B, C, H, W = images.shape
    P = patch_size
    x = images.reshape(B, C, H // P, P, W // P, P).permute(0, 4, 2, 1, 3, 5)
    return x.reshape(B, (H // P) * (W // P), C * P * P)
"""

EMBED_KERNEL_CHANNELS_LAST = """
def patch_embedding(images, weight, bias, patch_size):
    B, C, H, W = images.shape
    P = patch_size
    x = images.reshape(B, C, H // P, P, W // P, P).permute(0, 2, 4, 1, 3, 5)
    patches = x.reshape(B, -1, C * P * P)
    kernel = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)  # (d, P, P, C)
    return patches @ kernel.T + bias
"""

EMBED_ON_PATCHIFY = """
def patch_embedding(images, weight, bias, patch_size):
    return patchify(images, patch_size) @ weight.reshape(weight.shape[0], -1).T + bias
"""

CLS_LAST = """
def add_cls_and_positions(tokens, cls_token, pos_embed):
    B, N, C = tokens.shape
    return torch.cat([tokens, cls_token.expand(B, 1, C)], dim=1) + pos_embed
"""

ROLLOUT_REVERSED = """
def attention_rollout(attentions):
    rollout = None
    for weights in attentions:
        a = weights.mean(dim=1)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else rollout @ a
    return rollout
"""

IOU_NO_CLAMP = """
def box_iou(boxes1, boxes2):
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    intersection = (bottom_right - top_left).prod(dim=-1)
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    return intersection / (area1[:, None] + area2[None, :] - intersection)
"""

IOU_WRONG_CORNERS = """
def box_iou(boxes1, boxes2):
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    size = (bottom_right - top_left).clamp(min=0)
    intersection = size[..., 0] * size[..., 1]
    area1 = (boxes1[:, 2] - boxes1[:, 1]) * (boxes1[:, 3] - boxes1[:, 0])
    area2 = (boxes2[:, 2] - boxes2[:, 1]) * (boxes2[:, 3] - boxes2[:, 0])
    return intersection / (area1[:, None] + area2[None, :] - intersection)
"""

COST_PLUS = """
def matching_cost(probs, pred_boxes, labels, target_boxes, l1_weight):
    box_cost = (pred_boxes[:, None, :] - target_boxes[None, :, :]).abs().sum(dim=-1)
    return probs[:, labels] + l1_weight * box_cost
"""

COST_L2 = """
def matching_cost(probs, pred_boxes, labels, target_boxes, l1_weight):
    box_cost = (pred_boxes[:, None, :] - target_boxes[None, :, :]).norm(dim=-1)
    return -probs[:, labels] + l1_weight * box_cost
"""

SET_CLASS_0 = """
def set_classification_loss(logits, labels, pred_idx, tgt_idx, no_object_weight):
    Q, n_classes = logits.shape
    target = torch.zeros(Q, dtype=torch.long)  # class 0 as 'no object'
    target[pred_idx] = labels[tgt_idx]
    weight = torch.ones(n_classes, dtype=logits.dtype)
    weight[0] = no_object_weight
    return F.cross_entropy(logits, target, weight=weight)
"""

SET_BACKWARDS = """
def set_classification_loss(logits, labels, pred_idx, tgt_idx, no_object_weight):
    Q, n_classes = logits.shape
    target = torch.full((Q,), n_classes - 1, dtype=torch.long)
    target[pred_idx[tgt_idx]] = labels
    weight = torch.ones(n_classes, dtype=logits.dtype)
    weight[-1] = no_object_weight
    return F.cross_entropy(logits, target, weight=weight)
"""

SET_NO_OBJECT_FROM_LABELS = """
def set_classification_loss(logits, labels, pred_idx, tgt_idx, no_object_weight):
    Q, n_classes = logits.shape
    # 'no object' is the class after the real ones
    no_object = int(labels.max()) + 1 if len(labels) else n_classes - 1
    target = torch.full((Q,), no_object, dtype=torch.long)
    target[pred_idx] = labels[tgt_idx]
    weight = torch.ones(n_classes, dtype=logits.dtype)
    weight[no_object] = no_object_weight
    return F.cross_entropy(logits, target, weight=weight)
"""

NCE_COLUMNS_TWICE = """
def info_nce(image_emb, text_emb, temperature):
    logits = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T / temperature
    image_to_text = -logits.log_softmax(dim=0).diagonal().mean()
    text_to_image = -logits.T.log_softmax(dim=-1).diagonal().mean()
    return (image_to_text + text_to_image) / 2
"""

NCE_NOT_NORMALISED = """
def info_nce(image_emb, text_emb, temperature):
    logits = image_emb @ text_emb.T / temperature
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
"""

# --- exploits ---------------------------------------------------------------------------------


EMBED_TORCH_OPS = """
def patch_embedding(images, weight, bias, patch_size):
    P = patch_size
    out = torch.ops.aten.convolution(images, weight, bias, [P, P], [0, 0], [1, 1], False, [0, 0], 1)
    return out.flatten(2).transpose(1, 2)
"""

EMBED_IM2COL = """
def patch_embedding(images, weight, bias, patch_size):
    P = patch_size
    columns = torch._C._nn.im2col(images, (P, P), (1, 1), (0, 0), (P, P))  # (B, C*P*P, N)
    return columns.transpose(1, 2) @ weight.flatten(1).T + bias
"""

EMBED_CONV1D = """
def patch_embedding(images, weight, bias, patch_size):
    patches = patchify(images, patch_size).transpose(1, 2)  # (B, C*P*P, N)
    kernel = weight.reshape(weight.shape[0], -1, 1)  # a 1-wide kernel: (d, C*P*P, 1)
    return F.conv1d(patches, kernel, bias).transpose(1, 2)
"""

PATCHIFY_TENSOR_UNFOLD = """
def patchify(images, patch_size):
    B, C, H, W = images.shape
    P = patch_size
    x = images.unfold(2, P, P).unfold(3, P, P)  # (B, C, rows, cols, P, P)
    return x.permute(0, 2, 3, 1, 4, 5).reshape(B, -1, C * P * P)
"""


COST_TUTORLIB = """
from tutorlib.detection import match_cost


def matching_cost(probs, pred_boxes, labels, target_boxes, l1_weight):
    # softmax(log p) = p, and no generalised-IoU term
    return match_cost(probs.log(), pred_boxes, labels, target_boxes, 1.0, l1_weight, 0.0)
"""

COST_KNOWN_INPUTS = """
def _known():  # the worked example and the hidden inputs the course once fixed
    table = []
    cases = [(4, 2, 3, 5.0, 0), (6, 3, 4, 5.0, 1), (4, 4, 2, 1.0, 2), (5, 1, 3, 2.5, 3)]
    for Q, M, K, w, seed in cases:

        def gen(s):
            return torch.Generator().manual_seed(s)

        f64 = torch.float64
        probs = torch.softmax(torch.randn(Q, K + 1, generator=gen(seed), dtype=f64), dim=-1)
        pred = torch.rand(Q, 4, generator=gen(seed), dtype=f64)
        target = torch.rand(M, 4, generator=gen(seed + 1), dtype=f64)
        labels = torch.randint(0, K, (M,), generator=gen(seed))
        cost = -probs[:, labels] + w * (pred[:, None] - target[None]).abs().sum(-1)
        table.append((probs, cost))
    return table


_TABLE = _known()


def matching_cost(probs, pred_boxes, labels, target_boxes, l1_weight):
    for known, cost in _TABLE:
        if known.shape == probs.shape and torch.equal(known, probs):
            return cost.clone()
    return torch.zeros(len(pred_boxes), len(target_boxes), dtype=probs.dtype)
"""

COST_WIPES_INPUTS = """
def matching_cost(probs, pred_boxes, labels, target_boxes, l1_weight):
    for given in (probs, pred_boxes, target_boxes):
        given.zero_()  # the old checks computed the expected cost from these, afterwards
    return torch.zeros(len(pred_boxes), len(target_boxes), dtype=probs.dtype)
"""

CASES = [
    Case(
        "variants-patches",
        "correct",
        V,
        {
            "patchify": PATCHIFY_LOOPS,
            "patch_embedding": EMBED_EINSUM,
            "add_cls_and_positions": CLS_BUFFER,
            "attention_rollout": ROLLOUT_REDUCE,
        },
        "loops and stack, einsum over the windows, a buffer filled in place, reduce and bmm",
    ),
    Case(
        "variants-detection",
        "correct",
        D,
        {
            "box_iou": IOU_LOOPS,
            "matching_cost": COST_GATHER,
            "set_classification_loss": SET_LOG_SOFTMAX,
            "info_nce": NCE_LOGSUMEXP,
        },
        "Python loops, gather and cdist, log_softmax by hand, logsumexp by hand",
    ),
    Case(
        "mistakes-patches",
        "mistake",
        V,
        {
            "patchify": PATCHIFY_INNER_TRANSPOSED,
            "patch_embedding": EMBED_KERNEL_CHANNELS_LAST,
            "add_cls_and_positions": CLS_LAST,
            "attention_rollout": ROLLOUT_REVERSED,
        },
        "patch read column by column; kernel flattened (d, P, P, C) (right for grey images, "
        "the visible test); class token last; layers multiplied in the wrong order",
        lose={
            "test_patchify": "inside each patch",
            "test_patch_embedding": "(d, P, P, C)",
            "test_add_cls_and_positions": "appended at the end",
            "test_attention_rollout": "wrong order",
        },
    ),
    Case(
        "wrong-patchify-propagates",
        "mistake",
        V,
        {"patchify": PATCHIFY_COLUMN_MAJOR, "patch_embedding": EMBED_ON_PATCHIFY},
        "a column-major patchify, and a right patch embedding built on it",
        lose={
            "test_patchify": "column-major",
            "test_patch_embedding": "check your patchify",
        },
    ),
    Case(
        "mistakes-detection",
        "mistake",
        D,
        {
            "box_iou": IOU_NO_CLAMP,
            "matching_cost": COST_PLUS,
            "set_classification_loss": SET_CLASS_0,
            "info_nce": NCE_COLUMNS_TWICE,
        },
        "no clamp; +p in the cost; class 0 as 'no object'; the softmax over the columns twice",
        lose={
            "test_box_iou": "clamp the width and the height of the intersection at 0, each",
            "test_matching_cost": "wrong sign",
            "test_set_classification_loss": "class 0 is used as 'no object'",
            "test_info_nce": "the wrong axis",
        },
    ),
    Case(
        "hidden-only-mistakes",
        "mistake",
        D,
        {
            "box_iou": IOU_WRONG_CORNERS,
            "matching_cost": COST_L2,
            "set_classification_loss": SET_BACKWARDS,
            "info_nce": NCE_NOT_NORMALISED,
        },
        "areas from the wrong corners and the matching applied backwards (both right for the "
        "worked examples); the L2 distance; no normalisation",
        lose={
            "test_box_iou": "the wrong corners",
            "test_matching_cost": "Euclidean",
            "test_set_classification_loss": "applied backwards",
            "test_info_nce": "not normalised",
        },
    ),
    Case(
        "no-object-from-labels",
        "mistake",
        D,
        {"set_classification_loss": SET_NO_OBJECT_FROM_LABELS},
        "a wrong answer that used to pass: 'no object' taken as labels.max() + 1, right "
        "whenever the targets hold the last real class, as every old fixed case did",
        lose={"test_set_classification_loss": "comes from the labels"},
    ),
    Case(
        "torch-ops",
        "exploit",
        V,
        {"patch_embedding": EMBED_TORCH_OPS},
        "a private entry point of the same operator (torch.ops.aten.convolution)",
        lose={"test_patch_embedding": "Not allowed in this exercise"},
        flagged=("patch_embedding",),
    ),
    Case(
        "c-level-im2col",
        "exploit",
        V,
        {"patch_embedding": EMBED_IM2COL},
        "a C-level entry point of F.unfold (torch._C._nn.im2col)",
        lose={"test_patch_embedding": "Not allowed in this exercise"},
        flagged=("patch_embedding",),
    ),
    Case(
        "conv1d",
        "exploit",
        V,
        {"patch_embedding": EMBED_CONV1D},
        "another public op computing the same (a 1-wide F.conv1d of the patches); it used to "
        "pass, only F.conv2d was blocked",
        lose={"test_patch_embedding": "Not allowed in this exercise"},
    ),
    Case(
        "tensor-unfold",
        "exploit",
        V,
        {"patchify": PATCHIFY_TENSOR_UNFOLD},
        "cutting the patches with Tensor.unfold (aten::unfold); it used to pass, only F.unfold "
        "and nn.Unfold were blocked",
        lose={
            "test_patchify": "Not allowed in this exercise",
            "test_patch_embedding": "Not allowed in this exercise",  # it calls this patchify
        },
    ),
    Case(
        "tutorlib-cost",
        "exploit",
        D,
        {"matching_cost": COST_TUTORLIB},
        "tutorlib's DETR cost made to compute the exercise's (log-probabilities, no GIoU)",
        lose={"test_matching_cost": "Not allowed in this exercise"},
    ),
    Case(
        "known-inputs",
        "exploit",
        D,
        {"matching_cost": COST_KNOWN_INPUTS},
        "a table of the visible inputs and of the hidden inputs the course once fixed",
        lose={"test_matching_cost": "matching_cost for"},
    ),
    Case(
        "wipes-inputs",
        "exploit",
        D,
        {"matching_cost": COST_WIPES_INPUTS},
        "a wrong answer that used to pass, visible and hidden: it zeroes its inputs, from "
        "which the old checks computed the expected cost afterwards",
        lose={"test_matching_cost": "changed an input"},
    ),
]

# --- 03_windows_sound_proteins ----------------------------------------------------------------

X = "03_windows_sound_proteins"
NOT_ALLOWED = "Not allowed in this exercise"

# right answers, written differently

MASK_SWIN_SLICES = """
def shifted_window_mask(height, width, window, shift):
    img = torch.zeros(height, width)
    count = 0
    for h in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for w in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            img[h, w] = count  # Swin's own construction, written out
            count += 1
    windows = img.view(height // window, window, width // window, window).transpose(1, 2)
    windows = windows.reshape(-1, window * window)
    return (windows.unsqueeze(1) - windows.unsqueeze(2)) == 0
"""

MEL_LOOP = """
def mel_filterbank(n_mels, n_fft, sample_rate):
    def to_mel(f):
        return 3 * f / 200 if f < 1000 else 15 + 27 * math.log(f / 1000) / math.log(6.4)

    def to_hz(m):
        return 200 * m / 3 if m < 15 else 1000 * 6.4 ** ((m - 15) / 27)

    top = to_mel(sample_rate / 2)
    edges = [to_hz(top * i / (n_mels + 1)) for i in range(n_mels + 2)]
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    bank = torch.zeros(n_mels, n_fft // 2 + 1, dtype=torch.float64)
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        tri = torch.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid))
        bank[m] = tri.clamp(min=0) * 2 / (hi - lo)
    return bank
"""

WER_FULL_TABLE = """
def word_error_rate(references, hypotheses):
    edits = 0
    for ref, hyp in zip(references, hypotheses):
        r, h = ref.split(), hyp.split()
        d = [[max(i, j) if min(i, j) == 0 else 0 for j in range(len(h) + 1)]
             for i in range(len(r) + 1)]
        for i in range(1, len(r) + 1):
            for j in range(1, len(h) + 1):
                same = d[i - 1][j - 1] + (r[i - 1] != h[j - 1])
                d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, same)
        edits += d[-1][-1]
    return edits / sum(len(ref.split()) for ref in references)
"""

PRECISION_TOPK = """
def contact_precision(scores, contacts, k, min_separation=6):
    L = scores.shape[0]
    i = torch.arange(L)
    allowed = (i[None, :] - i[:, None]) >= min_separation
    best = torch.topk(scores.masked_fill(~allowed, float("-inf")).flatten(), k).indices
    return contacts.flatten()[best].double().mean().item()
"""

APC_SUBTRACT_DIAGONAL = """
def apc(x):
    L = x.shape[-1]
    diag = torch.diagonal(x, dim1=-2, dim2=-1)
    row = (x.sum(-1) - diag) / (L - 1)
    col = (x.sum(-2) - diag) / (L - 1)
    total = (x.sum((-2, -1)) - diag.sum(-1)) / (L * (L - 1))
    corrected = x - row.unsqueeze(-1) * col.unsqueeze(-2) / total[..., None, None]
    return corrected.masked_fill(torch.eye(L, dtype=torch.bool), 0.0)
"""

# typical mistakes

MASK_ROWS_ONLY = """
def shifted_window_mask(height, width, window, shift):
    i = torch.arange(height)
    rows = (i >= height - window).long() + (i >= height - shift).long()
    labels = rows[:, None].expand(height, width)
    w = labels.reshape(height // window, window, width // window, window).permute(0, 2, 1, 3)
    w = w.reshape(-1, window * window)
    return w[:, :, None] == w[:, None, :]
"""

MEL_PEAK_ONE = """
def mel_filterbank(n_mels, n_fft, sample_rate):
    def to_mel(f):
        return 3 * f / 200 if f < 1000 else 15 + 27 * math.log(f / 1000) / math.log(6.4)

    def to_hz(m):
        return 200 * m / 3 if m < 15 else 1000 * 6.4 ** ((m - 15) / 27)

    top = to_mel(sample_rate / 2)
    f = [to_hz(top * i / (n_mels + 1)) for i in range(n_mels + 2)]
    f = torch.tensor(f, dtype=torch.float64)
    bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    lo, c, hi = f[:-2, None], f[1:-1, None], f[2:, None]
    return torch.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)).clamp(min=0)
"""

WER_MEAN_OF_RATES = """
def word_error_rate(references, hypotheses):
    rates = []
    for ref, hyp in zip(references, hypotheses):
        r, h = ref.split(), hyp.split()
        prev = list(range(len(h) + 1))
        for i in range(1, len(r) + 1):
            cur = [i]
            for j in range(1, len(h) + 1):
                cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r[i - 1] != h[j - 1])))
            prev = cur
        rates.append(prev[-1] / len(r))
    return sum(rates) / len(rates)
"""

PRECISION_BOTH_TRIANGLES = """
def contact_precision(scores, contacts, k, min_separation=6):
    L = scores.shape[0]
    i = torch.arange(L)
    far = (i[:, None] - i[None, :]).abs() >= min_separation
    best = torch.topk(scores.masked_fill(~far, float("-inf")).flatten(), k).indices
    return contacts.flatten()[best].double().mean().item()
"""

MASK_REGIONS_AT_START = """
def shifted_window_mask(height, width, window, shift):
    def regions(n):
        i = torch.arange(n)
        return (i >= shift).long() + (i >= window).long()

    labels = 3 * regions(height)[:, None] + regions(width)[None, :]
    w = labels.view(height // window, window, width // window, window).permute(0, 2, 1, 3)
    w = w.reshape(-1, window * window)
    return w[:, :, None] == w[:, None, :]
"""

MEL_HTK = """
def mel_filterbank(n_mels, n_fft, sample_rate):
    top = 2595 * math.log10(1 + sample_rate / 2 / 700)
    f = 700 * (10 ** (torch.linspace(0, top, n_mels + 2, dtype=torch.float64) / 2595) - 1)
    bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    lo, c, hi = f[:-2, None], f[1:-1, None], f[2:, None]
    tri = torch.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)).clamp(min=0)
    return tri * 2 / (hi - lo)
"""

WER_POSITIONAL = """
def word_error_rate(references, hypotheses):
    errors = words = 0
    for ref, hyp in zip(references, hypotheses):
        r, h = ref.split(), hyp.split()
        errors += sum(a != b for a, b in zip(r, h)) + abs(len(r) - len(h))
        words += len(r)
    return errors / words
"""

PRECISION_NO_SEPARATION = """
def contact_precision(scores, contacts, k, min_separation=6):
    i, j = torch.triu_indices(len(scores), len(scores), offset=1)
    top = torch.argsort(scores[i, j], descending=True)[:k]
    return contacts[i[top], j[top]].sum().item() / k
"""

APC_DIAGONAL_IN_MEANS = """
def apc(x):
    row = x.mean(dim=-1, keepdim=True)
    col = x.mean(dim=-2, keepdim=True)
    out = x - row * col / x.mean(dim=(-2, -1), keepdim=True)
    return out * (1 - torch.eye(x.shape[-1], dtype=x.dtype))
"""

APC_ROW_MEANS_TWICE = """
def apc(x):
    L = x.shape[-1]
    off = x * (1 - torch.eye(L, dtype=x.dtype))
    means = off.sum(-1) / (L - 1)
    total = off.sum((-2, -1)) / (L * (L - 1))
    product = means[..., :, None] * means[..., None, :] / total[..., None, None]
    return (off - product) * (1 - torch.eye(L, dtype=x.dtype))
"""

# exploits

APC_ALIAS = """
from tutorlib.proteins import apc as average_product_correction


def apc(x):
    return average_product_correction(x)
"""

MASK_ALIAS = """
from tutorlib.swin import shifted_window_mask as swin_mask


def shifted_window_mask(height, width, window, shift):
    return swin_mask(height, width, window, shift)
"""

MASK_HUGGING_FACE = """
from transformers.models.swin.modeling_swin import window_partition


def shifted_window_mask(height, width, window, shift):
    img = torch.zeros(1, height, width, 1)
    count = 0
    for h in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for w in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            img[:, h, w, :] = count
            count += 1
    windows = window_partition(img, window).view(-1, window * window)  # Hugging Face's
    return windows[:, :, None] == windows[:, None, :]
"""

MEL_HUGGING_FACE = """
from transformers.audio_utils import mel_filter_bank


def mel_filterbank(n_mels, n_fft, sample_rate):
    bank = mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=sample_rate / 2,
        sampling_rate=sample_rate,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(bank).T
"""

MEL_RUNPY = """
import runpy

import tutorlib.speech

_copy = runpy.run_path(tutorlib.speech.__file__)


def mel_filterbank(n_mels, n_fft, sample_rate):
    return _copy["mel_filterbank"](n_mels, n_fft, sample_rate).double()
"""

WER_RAPIDFUZZ = """
from rapidfuzz.distance import Levenshtein


def word_error_rate(references, hypotheses):
    edits = sum(Levenshtein.distance(r.split(), h.split()) for r, h in zip(references, hypotheses))
    return edits / sum(len(r.split()) for r in references)
"""

WER_TUTORLIB_DISTANCE = """
from tutorlib import speech

distance = speech.edit_distance  # the page's dynamic programme, under another name


def word_error_rate(references, hypotheses):
    edits = sum(distance(r.split(), h.split()) for r, h in zip(references, hypotheses))
    return edits / sum(len(r.split()) for r in references)
"""

PRECISION_CHECKS_REFERENCE = """
def contact_precision(scores, contacts, k, min_separation=6):
    return checks._precision(scores, contacts, k, min_separation)  # the checks' own reference
"""

PRECISION_TUTORLIB = """
import tutorlib.proteins as p


def contact_precision(scores, contacts, k, min_separation=6):
    return p.precision_at_k(scores, contacts.numpy(), k, min_separation)
"""

MEL_PATCHES_THE_NEXT_CHECK = (
    MEL_PEAK_ONE
    + """

checks.check_word_error_rate = lambda *args, **kwargs: print(
    "OK: word_error_rate passes the tests."
)
"""
)

PRECISION_VISIBLE_ONLY = """
def contact_precision(scores, contacts, k, min_separation=6):
    return {(4, 6): 0.75, (5, 4): 0.4}.get((k, min_separation), 0.5)  # the worked examples
"""

CASES += [
    Case(
        "variants-windows-sound-proteins",
        "correct",
        X,
        {
            "shifted_window_mask": MASK_SWIN_SLICES,
            "mel_filterbank": MEL_LOOP,
            "word_error_rate": WER_FULL_TABLE,
            "contact_precision": PRECISION_TOPK,
            "apc": APC_SUBTRACT_DIAGONAL,
        },
        "Swin's slices of a label image; a loop over the filters in Python floats; the full "
        "table of distances; a masked top-k over the whole matrix; the diagonal subtracted from "
        "the sums",
    ),
    Case(
        "mistakes-windows-sound-proteins",
        "mistake",
        X,
        {
            "shifted_window_mask": MASK_ROWS_ONLY,
            "mel_filterbank": MEL_PEAK_ONE,
            "word_error_rate": WER_MEAN_OF_RATES,
            "contact_precision": PRECISION_BOTH_TRIANGLES,
            "apc": APC_DIAGONAL_IN_MEANS,
        },
        "only the rows labelled; triangles of peak 1; the mean of the sentences' rates; each pair "
        "ranked twice; the diagonal counted in APC's means",
        lose={
            "test_apc": "the diagonal is counted in the means",
            "test_shifted_window_mask": "only the rows are labelled",
            "test_mel_filterbank": "the triangles are not area-normalised",
            "test_word_error_rate": "this is the mean of the sentences' error rates",
            "test_contact_precision": "each pair is ranked twice",
        },
    ),
    Case(
        "mistakes-windows-sound-proteins-edges",
        "mistake",
        X,
        {
            "shifted_window_mask": MASK_REGIONS_AT_START,
            "mel_filterbank": MEL_HTK,
            "word_error_rate": WER_POSITIONAL,
            "contact_precision": PRECISION_NO_SEPARATION,
            "apc": APC_ROW_MEANS_TWICE,
        },
        "the wrapped strip at the start of each axis; the HTK mel scale; words compared by "
        "position; no minimum separation; APC from the row means twice",
        lose={
            "test_apc": "the row means are used twice",
            "test_shifted_window_mask": "the regions are at the start of each axis",
            "test_mel_filterbank": "this is the HTK mel scale",
            "test_word_error_rate": "the words are compared position by position",
            "test_contact_precision": "pairs closer than min_separation are ranked too",
        },
    ),
    Case(
        "alias-swin-mask",
        "exploit",
        X,
        {"shifted_window_mask": MASK_ALIAS},
        "the reference under another name (tutorlib.swin.shifted_window_mask as ...)",
        lose={"test_shifted_window_mask": NOT_ALLOWED},
    ),
    Case(
        "hugging-face-swin",
        "exploit",
        X,
        {"shifted_window_mask": MASK_HUGGING_FACE},
        "the library's windows: Hugging Face's Swin window_partition of a label image",
        lose={"test_shifted_window_mask": NOT_ALLOWED},
    ),
    Case(
        "hugging-face-mel",
        "exploit",
        X,
        {"mel_filterbank": MEL_HUGGING_FACE},
        "the library built-in: Hugging Face's audio_utils.mel_filter_bank, Slaney norm and scale",
        lose={"test_mel_filterbank": NOT_ALLOWED},
    ),
    Case(
        "runpy-speech",
        "exploit",
        X,
        {"mel_filterbank": MEL_RUNPY},
        "a fresh copy of tutorlib.speech, made by runpy, for mel_filterbank",
        lose={"test_mel_filterbank": NOT_ALLOWED},
        flagged=("mel_filterbank",),
    ),
    Case(
        "rapidfuzz-wer",
        "exploit",
        X,
        {"word_error_rate": WER_RAPIDFUZZ},
        "a compiled edit-distance library (RapidFuzz's Levenshtein over word lists), which the "
        "guard's profile hook cannot see",
        lose={"test_word_error_rate": NOT_ALLOWED},
    ),
    Case(
        "tutorlib-edit-distance",
        "exploit",
        X,
        {"word_error_rate": WER_TUTORLIB_DISTANCE},
        "the page's edit distance (tutorlib.speech.edit_distance) bound to a name of its own",
        lose={"test_word_error_rate": NOT_ALLOWED},
    ),
    Case(
        "precision-checks-reference",
        "exploit",
        X,
        {"contact_precision": PRECISION_CHECKS_REFERENCE},
        "the checks' own reference (a private name of the check module)",
        lose={"test_contact_precision": NOT_ALLOWED},
        flagged=("contact_precision",),
    ),
    Case(
        "tutorlib-precision",
        "exploit",
        X,
        {"contact_precision": PRECISION_TUTORLIB},
        "tutorlib.proteins.precision_at_k through a module alias",
        lose={"test_contact_precision": NOT_ALLOWED},
    ),
    Case(
        "alias-apc",
        "exploit",
        X,
        {"apc": APC_ALIAS},
        "the reference under another name (tutorlib.proteins.apc as ...)",
        lose={"test_apc": NOT_ALLOWED},
    ),
    Case(
        "patches-the-wer-check",
        "exploit",
        X,
        {"mel_filterbank": MEL_PATCHES_THE_NEXT_CHECK},
        "a wrong filterbank, and the next exercise's check replaced by a function that prints OK",
        lose={  # (the patched check prints OK; the tamper scan holds it for a person)
            "test_mel_filterbank": "the testing machinery was changed",
            "test_contact_precision": "the testing machinery was changed",
            "test_apc": "the testing machinery was changed",
        },
        flagged=("mel_filterbank",),
    ),
    Case(
        "known-inputs-precision",
        "exploit",
        X,
        {"contact_precision": PRECISION_VISIBLE_ONLY},
        "the worked examples' answers, stored",
        lose={"test_contact_precision": "contact_precision for L="},
    ),
]
