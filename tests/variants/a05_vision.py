"""Right answers to Chapter 5's exercises, written as learners write them."""

P = "05_vision/01_patches_and_vit.ipynb"
D = "05_vision/02_detection_and_contrast.ipynb"

VARIANTS = {
    P: {
        "patchify": {
            "loops-over-grid": """
def patchify(images, patch_size):
    B, C, H, W = images.shape
    p = patch_size
    patches = []
    for i in range(H // p):
        for j in range(W // p):
            block = images[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p]  # (B, C, p, p)
            patches.append(block.reshape(B, -1))
    return torch.stack(patches, dim=1)
""",
            "view-transpose-steps": """
def patchify(images, patch_size):
    B, C, H, W = images.shape
    rows, cols = H // patch_size, W // patch_size
    x = images.view(B, C, rows, patch_size, cols, patch_size)
    x = x.transpose(3, 4)  # (B, C, rows, cols, P, P)
    x = x.transpose(1, 2).transpose(2, 3)  # (B, rows, cols, C, P, P)
    x = x.contiguous().view(B, rows * cols, -1)
    assert x.shape == (B, rows * cols, C * patch_size**2), x.shape
    return x
""",
            "index-arithmetic": """
def patchify(images, patch_size):
    B, C, H, W = images.shape
    P = patch_size
    cols = W // P
    N = (H // P) * cols
    n = torch.arange(N)
    c = torch.arange(C)
    k = torch.arange(P * P)
    row = (n // cols)[:, None] * P + (k // P)[None, :]  # (N, P*P) pixel row of each entry
    col = (n % cols)[:, None] * P + (k % P)[None, :]  # (N, P*P) pixel column
    out = images[:, c[None, :, None], row[:, None, :], col[:, None, :]]  # (B, N, C, P*P)
    return out.reshape(B, N, C * P * P)
""",
            "einsum-permute": """
def patchify(images, patch_size):
    b, c, h, w = images.shape
    p = patch_size
    grid = images.reshape(b, c, h // p, p, w // p, p)
    grid = torch.einsum("bcipjq->bijcpq", grid)
    return grid.flatten(3).flatten(1, 2)
""",
            "setup-imports-repeated": """
import torch
import torch.nn.functional as F
from tutorlib.checks import vision as checks


def patchify(images, patch_size):
    B, C, H, W = images.shape
    P = patch_size
    x = images.reshape(B, C, H // P, P, W // P, P).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, -1, C * P * P)
""",
        },
        "patch_embedding": {
            "f-linear": """
def patch_embedding(images, weight, bias, patch_size):
    patches = patchify(images, patch_size)
    return F.linear(patches, weight.flatten(1), bias)
""",
            "einsum-kernel": """
def patch_embedding(images, weight, bias, patch_size):
    patches = patchify(images, patch_size)  # (B, N, C*P*P)
    d, C, P, _ = weight.shape
    patches = patches.reshape(*patches.shape[:2], C, P, P)
    return torch.einsum("bncij,dcij->bnd", patches, weight) + bias
""",
            "loop-windows": """
def patch_embedding(images, weight, bias, patch_size):
    B, C, H, W = images.shape
    P = patch_size
    outputs = []
    for r in range(H // P):
        for c in range(W // P):
            window = images[:, :, r * P:(r + 1) * P, c * P:(c + 1) * P]  # (B, C, P, P)
            # every output channel is one kernel times the window, summed
            out = (window[:, None] * weight[None]).sum(dim=(2, 3, 4)) + bias  # (B, d)
            outputs.append(out)
    return torch.stack(outputs, dim=1)
""",
            "own-helper-matmul": """
def flatten_kernel(weight):
    d = weight.shape[0]
    return weight.reshape(d, -1)  # (d, C*P*P), the same (C, P, P) order as patchify


def patch_embedding(images, weight, bias, patch_size):
    patches = patchify(images, patch_size)
    kernel = flatten_kernel(weight)
    print("patches", tuple(patches.shape), "kernel", tuple(kernel.shape))
    out = torch.matmul(patches, kernel.t())
    return out + bias.view(1, 1, -1)
""",
        },
        "add_cls_and_positions": {
            "repeat-cat": """
def add_cls_and_positions(tokens, cls_token, pos_embed):
    B = tokens.shape[0]
    cls = cls_token.unsqueeze(0).unsqueeze(0).repeat(B, 1, 1)  # (B, 1, C)
    x = torch.cat((cls, tokens), dim=1)
    x = x + pos_embed.unsqueeze(0)
    return x
""",
            "split-positions": """
def add_cls_and_positions(tokens, cls_token, pos_embed):
    B, N, C = tokens.shape
    assert pos_embed.shape == (N + 1, C)
    first = (cls_token + pos_embed[0]).expand(B, 1, C)
    rest = tokens + pos_embed[1:]
    return torch.cat([first, rest], dim=1)
""",
            "fill-new-tensor": """
def add_cls_and_positions(tokens, cls_token, pos_embed):
    B, N, C = tokens.shape
    out = tokens.new_zeros(B, N + 1, C)
    out[:, 0, :] = cls_token
    out[:, 1:, :] = tokens
    return out + pos_embed
""",
            "stack-per-image": """
def add_cls_and_positions(tokens, cls_token, pos_embed):
    sequences = []
    for image_tokens in tokens:  # (N, C)
        seq = torch.vstack([cls_token[None, :], image_tokens])  # (N + 1, C)
        sequences.append(seq + pos_embed)
    return torch.stack(sequences)
""",
        },
        "attention_rollout": {
            "functools-reduce": """
from functools import reduce


def attention_rollout(attentions):
    S = attentions[0].shape[-1]
    eye = torch.eye(S, dtype=attentions[0].dtype)
    layers = []
    for att in attentions:
        a = (att.mean(1) + eye) / 2
        layers.append(a / a.sum(-1, keepdim=True))
    # first layer first: each new layer multiplies from the left
    return reduce(lambda acc, a: a @ acc, layers)


demo = [torch.softmax(torch.randn(2, 3, 5, 5), dim=-1) for _ in range(3)]
assert torch.allclose(attention_rollout(demo).sum(-1), torch.ones(2, 5))
""",
            "last-layer-first": """
def attention_rollout(attentions):
    mats = []
    for w in attentions:
        avg = w.sum(dim=1) / w.shape[1]
        S = avg.shape[-1]
        a = 0.5 * avg + 0.5 * torch.eye(S, dtype=avg.dtype).expand_as(avg)
        a = a / a.sum(dim=2, keepdim=True)
        mats.append(a)
    result = mats[-1]
    for a in reversed(mats[:-1]):
        result = torch.bmm(result, a)  # A_L ... A_2 A_1, the same product grouped right
    return result
""",
            "einsum-identity-start": """
def attention_rollout(attentions):
    B, H, S, _ = attentions[0].shape
    identity = torch.eye(S, dtype=attentions[0].dtype)
    rollout = identity.repeat(B, 1, 1)
    for layer in attentions:
        a = layer.mean(dim=1)
        a = a * 0.5
        a = a + identity * 0.5
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = torch.einsum("bij,bjk->bik", a, rollout)
    return rollout
""",
            "stacked-layers": """
def attention_rollout(attentions):
    stacked = torch.stack(attentions)  # (L, B, H, S, S)
    a = stacked.mean(dim=2)  # (L, B, S, S)
    S = a.shape[-1]
    diag = torch.diag_embed(torch.ones(S, dtype=a.dtype))
    a = 0.5 * a + 0.5 * diag
    a = a / a.sum(dim=-1, keepdim=True)
    result = a[0]
    for layer in range(1, a.shape[0]):
        result = a[layer] @ result
    return result
""",
        },
    },
    D: {
        "box_iou": {
            "double-loop": """
def box_iou(boxes1, boxes2):
    N, M = len(boxes1), len(boxes2)
    iou = torch.zeros(N, M, dtype=boxes1.dtype)
    for i in range(N):
        ax0, ay0, ax1, ay1 = boxes1[i].tolist()
        for j in range(M):
            bx0, by0, bx1, by1 = boxes2[j].tolist()
            w = max(0.0, min(ax1, bx1) - max(ax0, bx0))
            h = max(0.0, min(ay1, by1) - max(ay0, by0))
            inter = w * h
            union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
            iou[i, j] = inter / union
    return iou
""",
            "unbind-maximum": """
def area(boxes):
    x0, y0, x1, y1 = boxes.unbind(-1)
    return (x1 - x0) * (y1 - y0)


def box_iou(boxes1, boxes2):
    a = boxes1.unsqueeze(1)  # (N, 1, 4)
    b = boxes2.unsqueeze(0)  # (1, M, 4)
    width = torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])
    height = torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])
    zero = torch.zeros_like(width)
    inter = torch.maximum(width, zero) * torch.maximum(height, zero)
    union = area(boxes1)[:, None] + area(boxes2)[None, :] - inter
    return inter / union


print(box_iou(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[1.0, 1, 3, 3], [5, 5, 6, 7]])))
""",
            "where-overlap": """
def box_iou(boxes1, boxes2):
    x0 = torch.max(boxes1[:, None, 0], boxes2[None, :, 0])
    y0 = torch.max(boxes1[:, None, 1], boxes2[None, :, 1])
    x1 = torch.min(boxes1[:, None, 2], boxes2[None, :, 2])
    y1 = torch.min(boxes1[:, None, 3], boxes2[None, :, 3])
    overlaps = (x1 > x0) & (y1 > y0)
    inter = torch.where(overlaps, (x1 - x0) * (y1 - y0), torch.zeros_like(x0))
    w1, h1 = boxes1[:, 2] - boxes1[:, 0], boxes1[:, 3] - boxes1[:, 1]
    w2, h2 = boxes2[:, 2] - boxes2[:, 0], boxes2[:, 3] - boxes2[:, 1]
    union = (w1 * h1).unsqueeze(1) + (w2 * h2).unsqueeze(0) - inter
    return inter / union
""",
            "row-by-row": """
def box_iou(boxes1, boxes2):
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    rows = []
    for box in boxes1:
        lo = torch.max(box[:2], boxes2[:, :2])  # (M, 2)
        hi = torch.min(box[2:], boxes2[:, 2:])  # (M, 2)
        wh = (hi - lo).clamp(min=0)
        inter = wh[:, 0] * wh[:, 1]
        area1 = (box[2] - box[0]) * (box[3] - box[1])
        rows.append(inter / (area1 + area2 - inter))
    return torch.stack(rows)
""",
        },
        "matching_cost": {
            "double-loop": """
def matching_cost(probs, pred_boxes, labels, target_boxes, l1_weight):
    Q, M = probs.shape[0], labels.shape[0]
    cost = torch.empty(Q, M, dtype=probs.dtype)
    for q in range(Q):
        for m in range(M):
            l1 = (pred_boxes[q] - target_boxes[m]).abs().sum()
            cost[q, m] = -probs[q, labels[m]] + l1_weight * l1
    return cost
""",
            "cdist-gather": """
def matching_cost(probs, pred_boxes, labels, target_boxes, l1_weight):
    Q = probs.shape[0]
    idx = labels.unsqueeze(0).expand(Q, -1)  # (Q, M)
    class_cost = -torch.gather(probs, 1, idx)
    box_cost = torch.cdist(pred_boxes, target_boxes, p=1)
    return class_cost + l1_weight * box_cost
""",
            "one-hot-matmul": """
def matching_cost(probs, pred_boxes, labels, target_boxes, l1_weight):
    onehot = F.one_hot(labels, num_classes=probs.shape[1]).to(probs.dtype)  # (M, K + 1)
    p = probs @ onehot.T  # (Q, M): the probability of each target's class
    diff = pred_boxes.unsqueeze(1) - target_boxes.unsqueeze(0)  # (Q, M, 4)
    l1 = diff.abs().sum(-1)
    print("cost matrix", tuple(p.shape))
    return l1_weight * l1 - p
""",
            "per-coordinate": """
def matching_cost(probs, pred_boxes, labels, target_boxes, l1_weight):
    box_cost = 0
    for k in range(4):
        box_cost = box_cost + (pred_boxes[:, k:k + 1] - target_boxes[:, k][None]).abs()
    class_cost = torch.stack([-probs[:, int(label)] for label in labels], dim=1)
    return class_cost + l1_weight * box_cost
""",
        },
        "set_classification_loss": {
            "log-softmax-written-out": """
def set_classification_loss(logits, labels, pred_idx, tgt_idx, no_object_weight):
    Q, K1 = logits.shape
    no_object = K1 - 1
    target = torch.full((Q,), no_object, dtype=torch.long)
    target = target.scatter(0, pred_idx, labels[tgt_idx])
    log_probs = logits.log_softmax(dim=-1)
    nll = -log_probs[torch.arange(Q), target]  # (Q,)
    w = torch.where(target == no_object, no_object_weight, 1.0).to(logits.dtype)
    return (w * nll).sum() / w.sum()
""",
            "loop-dict": """
def set_classification_loss(logits, labels, pred_idx, tgt_idx, no_object_weight):
    Q, n_classes = logits.shape
    matched = {int(q): int(labels[t]) for q, t in zip(pred_idx, tgt_idx)}
    targets = [matched.get(q, n_classes - 1) for q in range(Q)]
    weights = [1.0] * (n_classes - 1) + [no_object_weight]
    return F.cross_entropy(
        logits,
        torch.tensor(targets),
        weight=torch.tensor(weights, dtype=logits.dtype),
    )
""",
            "two-groups": """
def set_classification_loss(logits, labels, pred_idx, tgt_idx, no_object_weight):
    Q, K1 = logits.shape
    is_matched = torch.zeros(Q, dtype=torch.bool)
    is_matched[pred_idx] = True
    target = torch.full((Q,), K1 - 1)
    target[pred_idx] = labels[tgt_idx]
    per_query = F.cross_entropy(logits, target, reduction="none")
    total = per_query[is_matched].sum() + no_object_weight * per_query[~is_matched].sum()
    n_matched = is_matched.sum()
    return total / (n_matched + no_object_weight * (Q - n_matched))
""",
            "logsumexp-gather": """
def set_classification_loss(logits, labels, pred_idx, tgt_idx, no_object_weight):
    Q, K1 = logits.shape
    target = [K1 - 1] * Q
    for i in range(len(pred_idx)):
        target[pred_idx[i].item()] = labels[tgt_idx[i]].item()
    target = torch.tensor(target, dtype=torch.long)
    class_weight = torch.ones(K1, dtype=logits.dtype)
    class_weight[K1 - 1] = no_object_weight
    w = class_weight[target]
    losses = torch.logsumexp(logits, dim=1) - logits.gather(1, target[:, None]).squeeze(1)
    return (losses * w).sum() / w.sum()
""",
        },
        "info_nce": {
            "log-softmax-both-axes": """
def info_nce(image_emb, text_emb, temperature):
    img = image_emb / image_emb.norm(dim=1, keepdim=True)
    txt = text_emb / text_emb.norm(dim=1, keepdim=True)
    sim = img @ txt.t() / temperature
    image_to_text = -torch.log_softmax(sim, dim=1).diagonal().mean()
    text_to_image = -torch.log_softmax(sim, dim=0).diagonal().mean()
    return 0.5 * (image_to_text + text_to_image)
""",
            "cosine-similarity-broadcast": """
def info_nce(image_emb, text_emb, temperature):
    N = image_emb.shape[0]
    cos = F.cosine_similarity(image_emb[:, None, :], text_emb[None, :, :], dim=-1)  # (N, N)
    logits = cos / temperature
    targets = torch.arange(N)
    loss_i = F.cross_entropy(logits, targets)
    loss_t = F.cross_entropy(logits.T, targets)
    return (loss_i + loss_t) / 2
""",
            "logsumexp": """
def info_nce(image_emb, text_emb, temperature):
    a = F.normalize(image_emb, p=2, dim=1)
    b = F.normalize(text_emb, p=2, dim=1)
    logits = torch.matmul(a, b.T) / temperature
    positives = torch.diag(logits)
    rows = torch.logsumexp(logits, dim=1) - positives
    cols = torch.logsumexp(logits, dim=0) - positives
    return (rows.mean() + cols.mean()) / 2


same = torch.eye(4)
for tau in (1.0, 0.1, 0.01):
    print(tau, info_nce(same, same, tau).item())
""",
            "loop-over-pairs": """
def info_nce(image_emb, text_emb, temperature):
    n = len(image_emb)
    img = F.normalize(image_emb, dim=-1)
    txt = F.normalize(text_emb, dim=-1)
    logits = img @ txt.T / temperature
    total = 0.0
    for i in range(n):
        total = total - torch.log(torch.exp(logits[i, i]) / torch.exp(logits[i]).sum())
        total = total - torch.log(torch.exp(logits[i, i]) / torch.exp(logits[:, i]).sum())
    return total / (2 * n)
""",
            "from-torch-nn-import-functional": """
from torch.nn import functional as F


def info_nce(image_emb, text_emb, temperature):
    image_emb = F.normalize(image_emb, dim=1)
    text_emb = F.normalize(text_emb, dim=1)
    sims = image_emb @ text_emb.t() / temperature
    target = torch.arange(sims.shape[0])
    loss_images = F.cross_entropy(sims, target)
    loss_texts = F.cross_entropy(sims.t(), target)
    return (loss_images + loss_texts) / 2
""",
        },
    },
}

MISTAKES = {
    P: {
        "patchify": {
            "channels-last": (
                """
def patchify(images, patch_size):
    B, C, H, W = images.shape
    P = patch_size
    x = images.reshape(B, C, H // P, P, W // P, P)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, rows, cols, P, P, C)
    return x.reshape(B, (H // P) * (W // P), -1)
""",
                "flatten it as (C, P, P)",
            ),
            "plain-reshape": (
                """
def patchify(images, patch_size):
    B, C, H, W = images.shape
    N = (H // patch_size) * (W // patch_size)
    return images.reshape(B, N, C * patch_size * patch_size)
""",
                "a plain reshape does not cut patches",
            ),
            "column-major": (
                """
def patchify(images, patch_size):
    B, C, H, W = images.shape
    P = patch_size
    x = images.reshape(B, C, H // P, P, W // P, P)
    x = x.permute(0, 4, 2, 1, 3, 5)  # (B, cols, rows, C, P, P)
    return x.reshape(B, -1, C * P * P)
""",
                "column-major order",
            ),
            "height-width-swapped": (
                """
def patchify(images, patch_size):
    B, C, W, H = images.shape  # width, then height
    P = patch_size
    x = images.reshape(B, C, H // P, P, W // P, P)
    x = x.permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, -1, C * P * P)
""",
                "its height is dim 2",
            ),
        },
        "patch_embedding": {
            "kernel-channels-last": (
                """
def patch_embedding(images, weight, bias, patch_size):
    d = weight.shape[0]
    patches = patchify(images, patch_size)
    kernel = weight.permute(0, 2, 3, 1).reshape(d, -1)  # (d, P*P*C)
    return patches @ kernel.T + bias
""",
                "the kernel is flattened as (d, P, P, C)",
            ),
            "kernel-reshaped-straight": (
                """
def patch_embedding(images, weight, bias, patch_size):
    d = weight.shape[0]
    patches = patchify(images, patch_size)
    return patches @ weight.reshape(-1, d) + bias
""",
                "reshaped straight to (C*P*P, d)",
            ),
            "no-bias": (
                """
def patch_embedding(images, weight, bias, patch_size):
    patches = patchify(images, patch_size)
    return patches @ weight.flatten(1).T
""",
                "the bias is missing",
            ),
            "conv-layout": (
                """
def patch_embedding(images, weight, bias, patch_size):
    d = weight.shape[0]
    patches = patchify(images, patch_size)  # (B, N, C*P*P)
    out = weight.reshape(d, -1) @ patches.transpose(1, 2)  # (B, d, N)
    return out + bias[:, None]
""",
                "a convolution's layout",
            ),
            "batch-of-one": (
                """
def patch_embedding(images, weight, bias, patch_size):
    d = weight.shape[0]
    patches = patchify(images, patch_size).squeeze(0)  # (N, C*P*P)
    out = torch.mm(patches, weight.reshape(d, -1).t()) + bias
    return out.unsqueeze(0)
""",
                None,
            ),
        },
        "add_cls_and_positions": {
            "cls-added-not-concatenated": (
                """
def add_cls_and_positions(tokens, cls_token, pos_embed):
    return tokens + cls_token + pos_embed[1:]
""",
                "concatenate it in front",
            ),
            "cls-appended": (
                """
def add_cls_and_positions(tokens, cls_token, pos_embed):
    B, N, C = tokens.shape
    cls = cls_token.expand(B, 1, C)
    return torch.cat([tokens, cls], dim=1) + pos_embed
""",
                "appended at the end",
            ),
            "positions-before-cls": (
                """
def add_cls_and_positions(tokens, cls_token, pos_embed):
    B, N, C = tokens.shape
    tokens = tokens + pos_embed[1:]
    cls = cls_token.expand(B, 1, C)
    return torch.cat([cls, tokens], dim=1)
""",
                "the class token was added after the positions",
            ),
            "positions-shifted": (
                """
def add_cls_and_positions(tokens, cls_token, pos_embed):
    B, N, C = tokens.shape
    x = tokens + pos_embed[:N]
    return torch.cat([cls_token.expand(B, 1, C), x], dim=1)
""",
                "row 0 belongs to the class token",
            ),
        },
        "attention_rollout": {
            "no-residual": (
                """
def attention_rollout(attentions):
    rollout = None
    for weights in attentions:
        a = weights.mean(dim=1)
        rollout = a if rollout is None else a @ rollout
    return rollout
""",
                "the residual connection is missing",
            ),
            "not-renormalised": (
                """
def attention_rollout(attentions):
    rollout = None
    for weights in attentions:
        a = weights.mean(dim=1)
        a = a + torch.eye(a.shape[-1], dtype=a.dtype)
        rollout = a if rollout is None else a @ rollout
    return rollout
""",
                "rows that sum to 2",
            ),
            "first-layer-on-the-left": (
                """
def attention_rollout(attentions):
    rollout = None
    for weights in attentions:
        a = 0.5 * weights.mean(dim=1) + 0.5 * torch.eye(weights.shape[-1], dtype=weights.dtype)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else rollout @ a
    return rollout
""",
                "multiplied in the wrong order",
            ),
            "heads-summed": (
                """
def attention_rollout(attentions):
    rollout = None
    for weights in attentions:
        a = weights.sum(dim=1) + torch.eye(weights.shape[-1], dtype=weights.dtype)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    return rollout
""",
                "the heads are summed",
            ),
            "batch-of-one": (
                """
def attention_rollout(attentions):
    rollout = None
    for weights in attentions:
        a = weights.mean(dim=1).squeeze(0)  # (S, S)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else torch.mm(a, rollout)
    return rollout.unsqueeze(0)
""",
                None,
            ),
        },
    },
    D: {
        "box_iou": {
            "xywh": (
                """
def box_iou(boxes1, boxes2):
    x, y, w, h = boxes1[:, None].unbind(-1)  # (x, y, width, height)
    u, v, s, t = boxes2[None].unbind(-1)
    iw = (torch.minimum(x + w, u + s) - torch.maximum(x, u)).clamp(min=0)
    ih = (torch.minimum(y + h, v + t) - torch.maximum(y, v)).clamp(min=0)
    inter = iw * ih
    return inter / (w * h + s * t - inter)
""",
                "not (x, y, width, height)",
            ),
            "no-clamp": (
                """
def box_iou(boxes1, boxes2):
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = rb - lt
    inter = wh[..., 0] * wh[..., 1]
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    return inter / (area1[:, None] + area2[None, :] - inter)
""",
                "clamp the width and the height",
            ),
            "clamp-product": (
                """
def box_iou(boxes1, boxes2):
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = rb - lt
    inter = (wh[..., 0] * wh[..., 1]).clamp(min=0)
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    return inter / (area1[:, None] + area2[None, :] - inter)
""",
                "clamp the width and the height of the intersection at 0",
            ),
            "union-counts-twice": (
                """
def box_iou(boxes1, boxes2):
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    return inter / (area1[:, None] + area2[None, :])
""",
                "counts the intersection twice",
            ),
            "x0-x1-y0-y1": (
                """
def box_iou(boxes1, boxes2):
    ax0, ax1, ay0, ay1 = boxes1[:, None].unbind(-1)  # (x0, x1, y0, y1)
    bx0, bx1, by0, by1 = boxes2[None].unbind(-1)
    iw = (torch.minimum(ax1, bx1) - torch.maximum(ax0, bx0)).clamp(min=0)
    ih = (torch.minimum(ay1, by1) - torch.maximum(ay0, by0)).clamp(min=0)
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union
""",
                "(x0, x1, y0, y1)",
            ),
        },
        "matching_cost": {
            "wrong-sign": (
                """
def matching_cost(probs, pred_boxes, labels, target_boxes, l1_weight):
    class_cost = probs[:, labels]
    box_cost = (pred_boxes[:, None] - target_boxes[None]).abs().sum(-1)
    return class_cost + l1_weight * box_cost
""",
                "the class term has the wrong sign",
            ),
            "background-is-class-0": (
                """
def matching_cost(probs, pred_boxes, labels, target_boxes, l1_weight):
    class_cost = -probs[:, labels + 1]  # column 0 is the background
    box_cost = (pred_boxes[:, None] - target_boxes[None]).abs().sum(-1)
    return class_cost + l1_weight * box_cost
""",
                "class k is column k",
            ),
            "l1-averaged": (
                """
def matching_cost(probs, pred_boxes, labels, target_boxes, l1_weight):
    class_cost = -probs[:, labels]
    box_cost = (pred_boxes[:, None] - target_boxes[None]).abs().mean(-1)
    return class_cost + l1_weight * box_cost
""",
                "averaged over the four coordinates",
            ),
            "targets-by-predictions": (
                """
def matching_cost(probs, pred_boxes, labels, target_boxes, l1_weight):
    class_cost = -probs[:, labels].T  # (M, Q)
    box_cost = (target_boxes[:, None] - pred_boxes[None]).abs().sum(-1)  # (M, Q)
    return class_cost + l1_weight * box_cost
""",
                "the matrix is transposed",
            ),
        },
        "set_classification_loss": {
            "no-object-is-class-0": (
                """
def set_classification_loss(logits, labels, pred_idx, tgt_idx, no_object_weight):
    Q, n_classes = logits.shape
    target = torch.zeros(Q, dtype=torch.long)  # 0 = no object
    target[pred_idx] = labels[tgt_idx]
    weight = torch.ones(n_classes, dtype=logits.dtype)
    weight[0] = no_object_weight
    return F.cross_entropy(logits, target, weight=weight)
""",
                "class 0 is used as 'no object'",
            ),
            "no-down-weight": (
                """
def set_classification_loss(logits, labels, pred_idx, tgt_idx, no_object_weight):
    Q, n_classes = logits.shape
    target = torch.full((Q,), n_classes - 1, dtype=torch.long)
    target[pred_idx] = labels[tgt_idx]
    return F.cross_entropy(logits, target)
""",
                "not down-weighted",
            ),
            "labels-in-given-order": (
                """
def set_classification_loss(logits, labels, pred_idx, tgt_idx, no_object_weight):
    Q, n_classes = logits.shape
    target = torch.full((Q,), n_classes - 1, dtype=torch.long)
    target[pred_idx] = labels
    weight = torch.ones(n_classes, dtype=logits.dtype)
    weight[-1] = no_object_weight
    return F.cross_entropy(logits, target, weight=weight)
""",
                "the targets are taken in the wrong order",
            ),
            "mean-over-queries": (
                """
def set_classification_loss(logits, labels, pred_idx, tgt_idx, no_object_weight):
    Q, n_classes = logits.shape
    target = torch.full((Q,), n_classes - 1, dtype=torch.long)
    target[pred_idx] = labels[tgt_idx]
    per_query = F.cross_entropy(logits, target, reduction="none")
    w = torch.where(target == n_classes - 1, no_object_weight, 1.0)
    return (w * per_query).mean()
""",
                "divided by the number of queries",
            ),
            "indices-swapped": (
                """
def set_classification_loss(logits, labels, pred_idx, tgt_idx, no_object_weight):
    Q, n_classes = logits.shape
    target = torch.full((Q,), n_classes - 1, dtype=torch.long)
    target[tgt_idx] = labels[pred_idx]
    weight = torch.ones(n_classes, dtype=logits.dtype)
    weight[-1] = no_object_weight
    return F.cross_entropy(logits, target, weight=weight)
""",
                "pred_idx indexes the queries",
            ),
        },
        "info_nce": {
            "no-temperature": (
                """
def info_nce(image_emb, text_emb, temperature):
    image_emb = F.normalize(image_emb, dim=-1)
    text_emb = F.normalize(text_emb, dim=-1)
    logits = image_emb @ text_emb.T
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
""",
                "not divided by the temperature",
            ),
            "one-direction": (
                """
def info_nce(image_emb, text_emb, temperature):
    image_emb = F.normalize(image_emb, dim=-1)
    text_emb = F.normalize(text_emb, dim=-1)
    logits = image_emb @ text_emb.T / temperature
    return F.cross_entropy(logits, torch.arange(len(logits)))
""",
                "only one direction counts",
            ),
            "labels-over-width": (
                """
def info_nce(image_emb, text_emb, temperature):
    image_emb = F.normalize(image_emb, dim=-1)
    text_emb = F.normalize(text_emb, dim=-1)
    logits = image_emb @ text_emb.T / temperature
    labels = torch.arange(image_emb.shape[1])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
""",
                "torch.arange(N)",
            ),
            "not-normalised": (
                """
def info_nce(image_emb, text_emb, temperature):
    logits = image_emb @ text_emb.T / temperature
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
""",
                "the embeddings are not normalised",
            ),
        },
    },
}

W = "05_vision/03_windows_sound_proteins.ipynb"

VARIANTS[W] = {
    "shifted_window_mask": {
        "swin-slices-of-a-label-image": """
def shifted_window_mask(height, width, window, shift):
    img = torch.zeros(height, width)
    parts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    count = 0
    for h in parts:
        for w in parts:
            img[h, w] = count  # Swin's own construction
            count += 1
    windows = img.view(height // window, window, width // window, window)
    windows = windows.transpose(1, 2).reshape(-1, window * window)
    return (windows.unsqueeze(1) - windows.unsqueeze(2)) == 0
""",
        "loops-over-windows": """
def shifted_window_mask(height, width, window, shift):
    def region(p, n):
        if p < n - window:
            return 0
        return 1 if p < n - shift else 2

    masks = []
    for top in range(0, height, window):
        for left in range(0, width, window):
            labels = [
                (region(top + r, height), region(left + c, width))
                for r in range(window)
                for c in range(window)
            ]
            masks.append([[a == b for b in labels] for a in labels])
    return torch.tensor(masks)
""",
        "unfold-and-compare-axes": """
def shifted_window_mask(height, width, window, shift):
    def regions(n):
        i = torch.arange(n)
        return torch.bucketize(i, torch.tensor([n - window, n - shift]), right=True)

    rows = regions(height)[:, None].expand(height, width)
    cols = regions(width)[None, :].expand(height, width)
    out = []
    for labels in (rows, cols):
        win = labels.unfold(0, window, window).unfold(1, window, window)  # (nH, nW, w, w)
        win = win.reshape(-1, window * window)
        out.append(win[:, :, None] == win[:, None, :])
    print("mask for", height, "x", width, "windows of", window, "shift", shift)
    return out[0] & out[1]
""",
    },
    "mel_filterbank": {
        "loop-over-filters": """
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
        up = (freqs - lo) / (mid - lo)
        down = (hi - freqs) / (hi - mid)
        bank[m] = torch.clamp(torch.minimum(up, down), min=0) * 2 / (hi - lo)
    return bank
""",
        "numpy-then-tensor": """
import numpy as np


def mel_filterbank(n_mels, n_fft, sample_rate):
    def hz_to_mel(f):
        f = np.asarray(f, dtype=float)
        log = 15 + np.log(np.maximum(f, 1e-10) / 1000) * 27 / np.log(6.4)
        return np.where(f >= 1000, log, f * 3 / 200)

    def mel_to_hz(m):
        return np.where(m >= 15, 1000 * np.exp((m - 15) * np.log(6.4) / 27), m * 200 / 3)

    fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    mel_f = mel_to_hz(np.linspace(0, hz_to_mel(sample_rate / 2), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))  # librosa's way
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    return torch.from_numpy(weights * enorm[:, None])
""",
        "float32-relu": """
def mel_filterbank(n_mels, n_fft, sample_rate):
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    bins = k * sample_rate / n_fft
    nyquist_mel = 15 + 27 * math.log(sample_rate / 2 / 1000) / math.log(6.4)
    if sample_rate / 2 < 1000:
        nyquist_mel = 3 * (sample_rate / 2) / 200
    mels = torch.linspace(0, nyquist_mel, n_mels + 2, dtype=torch.float64)
    hz = torch.where(mels < 15, mels * 200 / 3, 1000 * torch.exp((mels - 15) * math.log(6.4) / 27))
    lo, c, hi = hz[:-2].unsqueeze(-1), hz[1:-1].unsqueeze(-1), hz[2:].unsqueeze(-1)
    tri = torch.relu(torch.min((bins - lo) / (c - lo), (hi - bins) / (hi - c)))
    return (tri / ((hi - lo) / 2)).float()  # float32, as Whisper keeps it
""",
    },
    "word_error_rate": {
        "full-table": """
def word_error_rate(references, hypotheses):
    edits = 0
    for ref, hyp in zip(references, hypotheses):
        r, h = ref.split(), hyp.split()
        d = [[i + j if i * j == 0 else 0 for j in range(len(h) + 1)] for i in range(len(r) + 1)]
        for i in range(1, len(r) + 1):
            for j in range(1, len(h) + 1):
                sub = d[i - 1][j - 1] + (r[i - 1] != h[j - 1])
                d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, sub)
        edits += d[-1][-1]
    return edits / sum(len(ref.split()) for ref in references)
""",
        "recursive-with-cache": """
from functools import lru_cache


def levenshtein(a, b):
    @lru_cache(maxsize=None)
    def d(i, j):
        if i == 0:
            return j
        if j == 0:
            return i
        return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

    return d(len(a), len(b))


def word_error_rate(references, hypotheses):
    pairs = zip(references, hypotheses)
    total = sum(levenshtein(tuple(r.split()), tuple(h.split())) for r, h in pairs)
    return total / sum(len(r.split()) for r in references)
""",
        "tensor-table-and-print": """
def word_error_rate(references, hypotheses):
    edits, words = torch.tensor(0.0, dtype=torch.float64), 0
    for ref, hyp in zip(references, hypotheses):
        r, h = ref.split(), hyp.split()
        row = torch.arange(len(h) + 1, dtype=torch.float64)
        for i in range(1, len(r) + 1):
            new = row.clone()
            new[0] = i
            for j in range(1, len(h) + 1):
                new[j] = min(row[j] + 1, new[j - 1] + 1, row[j - 1] + (r[i - 1] != h[j - 1]))
            row = new
        edits = edits + row[-1]
        words += len(r)
    print(f"{int(edits)} edits over {words} words")
    return edits / words
""",
    },
    "contact_precision": {
        "mask-and-topk": """
def contact_precision(scores, contacts, k, min_separation=6):
    L = scores.shape[0]
    i = torch.arange(L)
    allowed = (i[None, :] - i[:, None]) >= min_separation  # upper triangle, far enough
    flat = scores.masked_fill(~allowed, float("-inf")).flatten()
    best = torch.topk(flat, k).indices
    return contacts.flatten()[best].float().mean().item()
""",
        "python-list-sorted": """
def contact_precision(scores, contacts, k, min_separation=6):
    L = len(scores)
    pairs = [(scores[i, j].item(), i, j) for i in range(L) for j in range(i + min_separation, L)]
    pairs.sort(reverse=True)
    return sum(bool(contacts[i, j]) for _, i, j in pairs[:k]) / k
""",
        "numpy-triu": """
import numpy as np


def contact_precision(scores, contacts, k, min_separation=6):
    s, c = scores.numpy(), contacts.numpy()
    i, j = np.triu_indices(s.shape[0], k=min_separation)
    order = np.argsort(-s[i, j], kind="stable")[:k]
    return float(c[i[order], j[order]].sum()) / k
""",
    },
    "apc": {
        "loops-over-pairs": """
def apc(x):
    if x.dim() > 2:
        return torch.stack([apc(m) for m in x])
    L = x.shape[0]
    rows = [(x[i].sum() - x[i, i]) / (L - 1) for i in range(L)]
    cols = [(x[:, j].sum() - x[j, j]) / (L - 1) for j in range(L)]
    total = (x.sum() - x.diagonal().sum()) / (L * (L - 1))
    out = torch.zeros_like(x)
    for i in range(L):
        for j in range(L):
            if i != j:
                out[i, j] = x[i, j] - rows[i] * cols[j] / total
    return out
""",
        "subtract-the-diagonal": """
def apc(x):
    L = x.shape[-1]
    diag = torch.diagonal(x, dim1=-2, dim2=-1)  # (..., L)
    row = (x.sum(-1) - diag) / (L - 1)
    col = (x.sum(-2) - diag) / (L - 1)
    total = (x.sum((-2, -1)) - diag.sum(-1)) / (L * (L - 1))
    corrected = x - row.unsqueeze(-1) * col.unsqueeze(-2) / total[..., None, None]
    return corrected.masked_fill(torch.eye(L, dtype=torch.bool), 0.0)
""",
        "einsum-outer-and-mean": """
def apc(x):
    L = x.shape[-1]
    mask = 1.0 - torch.eye(L, dtype=x.dtype)
    off = x * mask
    row_mean = off.sum(dim=-1) / (L - 1)
    col_mean = off.sum(dim=-2) / (L - 1)
    overall = off.sum(dim=(-2, -1)) / mask.sum()
    outer = torch.einsum("...i,...j->...ij", row_mean, col_mean)
    assert outer.shape == x.shape
    return (off - outer / overall[..., None, None]) * mask
""",
    },
}

MISTAKES[W] = {
    "shifted_window_mask": {
        "inverted-like-an-additive-mask": (
            """
def shifted_window_mask(height, width, window, shift):
    def regions(n):
        i = torch.arange(n)
        return (i >= n - window).long() + (i >= n - shift).long()

    labels = 3 * regions(height)[:, None] + regions(width)[None, :]
    w = labels.view(height // window, window, width // window, window).permute(0, 2, 1, 3)
    w = w.reshape(-1, window * window)
    return w[:, :, None] != w[:, None, :]  # True where masked, as Hugging Face's -100
""",
            "True and False are swapped",
        ),
        "rows-only": (
            """
def shifted_window_mask(height, width, window, shift):
    i = torch.arange(height)
    rows = (i >= height - window).long() + (i >= height - shift).long()
    labels = rows[:, None].expand(height, width)
    w = labels.reshape(height // window, window, width // window, window).permute(0, 2, 1, 3)
    w = w.reshape(-1, window * window)
    return w[:, :, None] == w[:, None, :]
""",
            "only the rows are labelled",
        ),
        "regions-at-the-start": (
            """
def shifted_window_mask(height, width, window, shift):
    def regions(n):
        i = torch.arange(n)
        return (i >= shift).long() + (i >= window).long()  # the strip at the start

    labels = 3 * regions(height)[:, None] + regions(width)[None, :]
    w = labels.view(height // window, window, width // window, window).permute(0, 2, 1, 3)
    w = w.reshape(-1, window * window)
    return w[:, :, None] == w[:, None, :]
""",
            "the regions are at the start of each axis",
        ),
        "additive-float-mask": (
            """
def shifted_window_mask(height, width, window, shift):
    def regions(n):
        i = torch.arange(n)
        return (i >= n - window).long() + (i >= n - shift).long()

    labels = 3 * regions(height)[:, None] + regions(width)[None, :]
    w = labels.view(height // window, window, width // window, window).permute(0, 2, 1, 3)
    w = w.reshape(-1, window * window)
    diff = w[:, :, None] - w[:, None, :]
    return torch.zeros(diff.shape).masked_fill(diff != 0, float("-inf"))
""",
            "not an additive mask",
        ),
    },
    "mel_filterbank": {
        "htk-scale": (
            """
def mel_filterbank(n_mels, n_fft, sample_rate):
    top = 2595 * math.log10(1 + sample_rate / 2 / 700)
    mels = torch.linspace(0, top, n_mels + 2, dtype=torch.float64)
    f = 700 * (10 ** (mels / 2595) - 1)
    bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    lo, c, hi = f[:-2, None], f[1:-1, None], f[2:, None]
    tri = torch.clamp(torch.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)), min=0)
    return tri * 2 / (hi - lo)
""",
            "this is the HTK mel scale",
        ),
        "peak-one": (
            """
def mel_filterbank(n_mels, n_fft, sample_rate):
    def to_mel(f):
        log = 15 + torch.log(f.clamp(min=1e-10) / 1000) * 27 / math.log(6.4)
        return torch.where(f >= 1000, log, 3 * f / 200)

    def to_hz(m):
        return torch.where(m >= 15, 1000 * torch.exp((m - 15) * math.log(6.4) / 27), 200 * m / 3)

    top = to_mel(torch.tensor(sample_rate / 2, dtype=torch.float64))
    f = to_hz(torch.linspace(0, float(top), n_mels + 2, dtype=torch.float64))
    bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    lo, c, hi = f[:-2, None], f[1:-1, None], f[2:, None]
    return torch.clamp(torch.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)), min=0)
""",
            "the triangles are not area-normalised",
        ),
        "rows-sum-to-one": (
            """
def mel_filterbank(n_mels, n_fft, sample_rate):
    def to_mel(f):
        log = 15 + torch.log(f.clamp(min=1e-10) / 1000) * 27 / math.log(6.4)
        return torch.where(f >= 1000, log, 3 * f / 200)

    def to_hz(m):
        return torch.where(m >= 15, 1000 * torch.exp((m - 15) * math.log(6.4) / 27), 200 * m / 3)

    top = to_mel(torch.tensor(sample_rate / 2, dtype=torch.float64))
    f = to_hz(torch.linspace(0, float(top), n_mels + 2, dtype=torch.float64))
    bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    lo, c, hi = f[:-2, None], f[1:-1, None], f[2:, None]
    tri = torch.clamp(torch.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)), min=0)
    return tri / tri.sum(dim=1, keepdim=True)  # "area-normalised"
""",
            "each filter is scaled to sum to 1",
        ),
        "edges-evenly-in-hz": (
            """
def mel_filterbank(n_mels, n_fft, sample_rate):
    f = torch.linspace(0, sample_rate / 2, n_mels + 2, dtype=torch.float64)
    bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    lo, c, hi = f[:-2, None], f[1:-1, None], f[2:, None]
    tri = torch.clamp(torch.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)), min=0)
    return tri * 2 / (hi - lo)
""",
            "evenly spaced in Hz",
        ),
    },
    "word_error_rate": {
        "mean-of-sentence-rates": (
            """
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
""",
            "this is the mean of the sentences' error rates",
        ),
        "word-by-word": (
            """
def word_error_rate(references, hypotheses):
    errors, words = 0, 0
    for ref, hyp in zip(references, hypotheses):
        r, h = ref.split(), hyp.split()
        errors += sum(a != b for a, b in zip(r, h)) + abs(len(r) - len(h))
        words += len(r)
    return errors / words
""",
            "the words are compared position by position",
        ),
        "capped-at-one": (
            """
def word_error_rate(references, hypotheses):
    edits = words = 0
    for ref, hyp in zip(references, hypotheses):
        r, h = ref.split(), hyp.split()
        prev = list(range(len(h) + 1))
        for i in range(1, len(r) + 1):
            cur = [i]
            for j in range(1, len(h) + 1):
                cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r[i - 1] != h[j - 1])))
            prev = cur
        edits += prev[-1]
        words += len(r)
    return min(edits / words, 1.0)  # "a rate is at most 1"
""",
            "the rate is capped at 1",
        ),
        "characters-not-words": (
            """
def word_error_rate(references, hypotheses):
    edits = chars = 0
    for r, h in zip(references, hypotheses):
        prev = list(range(len(h) + 1))
        for i in range(1, len(r) + 1):
            cur = [i]
            for j in range(1, len(h) + 1):
                cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r[i - 1] != h[j - 1])))
            prev = cur
        edits += prev[-1]
        chars += len(r)
    return edits / chars
""",
            "these are character edits",
        ),
    },
    "contact_precision": {
        "no-separation": (
            """
def contact_precision(scores, contacts, k, min_separation=6):
    i, j = torch.triu_indices(len(scores), len(scores), offset=1)
    top = torch.argsort(scores[i, j], descending=True)[:k]
    return contacts[i[top], j[top]].sum().item() / k
""",
            "pairs closer than min_separation are ranked too",
        ),
        "strictly-greater": (
            """
def contact_precision(scores, contacts, k, min_separation=6):
    L = scores.shape[0]
    pairs = [(i, j) for i in range(L) for j in range(L) if j - i > min_separation]
    pairs.sort(key=lambda p: -scores[p].item())
    return sum(contacts[p].item() for p in pairs[:k]) / k
""",
            "the pairs at exactly min_separation are left out",
        ),
        "whole-matrix": (
            """
def contact_precision(scores, contacts, k, min_separation=6):
    L = scores.shape[0]
    i = torch.arange(L)
    far = (i[:, None] - i[None, :]).abs() >= min_separation
    ranked = scores.masked_fill(~far, float("-inf")).flatten()
    top = torch.topk(ranked, k).indices
    return contacts.flatten()[top].double().mean().item()
""",
            "each pair is ranked twice",
        ),
        "recall": (
            """
def contact_precision(scores, contacts, k, min_separation=6):
    i, j = torch.triu_indices(len(scores), len(scores), offset=min_separation)
    top = torch.topk(scores[i, j], k).indices
    return contacts[i[top], j[top]].sum().item() / contacts[i, j].sum().item()
""",
            "this is the recall",
        ),
    },
    "apc": {
        "diagonal-in-the-means": (
            """
def apc(x):
    row = x.mean(dim=-1, keepdim=True)
    col = x.mean(dim=-2, keepdim=True)
    total = x.mean(dim=(-2, -1), keepdim=True)
    out = x - row * col / total
    return out * (1 - torch.eye(x.shape[-1], dtype=x.dtype))
""",
            "the diagonal is counted in the means",
        ),
        "no-division": (
            """
def apc(x):
    L = x.shape[-1]
    off = x * (1 - torch.eye(L, dtype=x.dtype))
    row = off.sum(-1, keepdim=True) / (L - 1)
    col = off.sum(-2, keepdim=True) / (L - 1)
    return (off - row * col) * (1 - torch.eye(L, dtype=x.dtype))
""",
            "is not divided by the overall mean",
        ),
        "row-means-twice": (
            """
def apc(x):
    L = x.shape[-1]
    off = x * (1 - torch.eye(L, dtype=x.dtype))
    means = off.sum(-1) / (L - 1)  # (..., L)
    total = off.sum((-2, -1)) / (L * (L - 1))
    product = means[..., :, None] * means[..., None, :] / total[..., None, None]
    return (off - product) * (1 - torch.eye(L, dtype=x.dtype))
""",
            "the row means are used twice",
        ),
        "diagonal-not-zeroed": (
            """
def apc(x):
    L = x.shape[-1]
    off = x * (1 - torch.eye(L, dtype=x.dtype))
    row = off.sum(-1, keepdim=True) / (L - 1)
    col = off.sum(-2, keepdim=True) / (L - 1)
    total = off.sum((-2, -1), keepdim=True) / (L * (L - 1))
    return x - row * col / total
""",
            "the diagonal of the result is not 0",
        ),
    },
}
