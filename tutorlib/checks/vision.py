"""Checks for the Chapter 5 exercises (solutions/05_vision).

As in the earlier chapters: `hidden=False` runs the visible tests (a worked example),
`hidden=True` the hidden ones (other sizes, colour images, gradients). While the learner's code
runs, the tutorlib reference and the torch built-in that would do the work raise. The
detection and contrastive references are written out here, with the likely mistakes next to
them.

Book: Chapter 5 exercises.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tutorlib import vision
from tutorlib.checks import (
    ExerciseError,
    Target,
    expect_backward_close,
    expect_close,
    random_tensor,
    report_ok,
    run_candidate,
    watch_module,
)

__all__ = [
    "check_add_cls_and_positions",
    "check_attention_rollout",
    "check_box_iou",
    "check_info_nce",
    "check_matching_cost",
    "check_patch_embedding",
    "check_patchify",
    "check_set_classification_loss",
]

# References, taken at import time (before any learner code runs).
_patchify, _rollout = vision.patchify, vision.attention_rollout
_conv2d, _cross_entropy, _normalize = F.conv2d, F.cross_entropy, F.normalize
_cat, _eye, _cdist = torch.cat, torch.eye, torch.cdist

Mistakes = dict[str, Callable[[], Tensor]]


def _existing(module_name: str, names: list[str]) -> list[Target]:
    """(module, name) targets for a tutorlib module that may not exist yet."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return []
    return [(module, name) for name in names if hasattr(module, name)]


# --- 1. Patchify ----------------------------------------------------------------------------


def _patch_variant(images: Tensor, P: int, kind: str) -> Tensor:
    B, C, H, W = images.shape
    if kind == "no_permute":
        return images.reshape(B, (H // P) * (W // P), C * P * P)
    x = images.reshape(B, C, H // P, P, W // P, P)  # (B, C, rows, P, cols, P)
    order = {
        "column_major": (0, 4, 2, 1, 3, 5),  # patches column by column
        "channels_last": (0, 2, 4, 3, 5, 1),  # each patch flattened as (P, P, C)
        "inner_transposed": (0, 2, 4, 1, 5, 3),  # each patch read column by column
    }[kind]
    return x.permute(*order).reshape(B, (H // P) * (W // P), C * P * P)


PATCH_MISTAKES = {
    "column_major": "the patches are in column-major order; read them row by row: the top row "
    "of patches left to right, then the next row (index = row * cols + col).",
    "channels_last": "each patch is flattened as (P, P, C); flatten it as (C, P, P), channel "
    "first, as a convolution's kernel is laid out.",
    "inner_transposed": "the pixels inside each patch are read column by column; read them row "
    "by row.",
    "no_permute": "a plain reshape does not cut patches: it slices the image's memory in "
    "order. Reshape to (B, C, H/P, P, W/P, P), permute, then reshape.",
}


def _patchify_case(fn: Callable, hidden: bool, forbidden: list[Target], case: tuple) -> None:
    shape, P, seed = case
    images = random_tensor(*shape, seed=seed)
    out = run_candidate(fn, images, P, exercise="patchify", forbidden=forbidden)
    mistakes = {
        hint: (lambda kind=kind: _patch_variant(images, P, kind))
        for kind, hint in PATCH_MISTAKES.items()
    }
    what = f"patchify of images {shape} with patch_size {P}"
    expect_close(out, _patchify(images, P), what=what, mistakes=mistakes, atol=0, rtol=0)


def check_patchify(fn: Callable, hidden: bool = False) -> None:
    """Learner's `patchify(images (B, C, H, W), patch_size) -> (B, N, C * P * P)`."""
    forbidden: list[Target] = [
        (vision, "patchify"),
        (F, "unfold"),
        (nn.Unfold, "forward"),
    ]
    cases = [((2, 3, 4, 6), 2, 1), ((1, 1, 8, 8), 4, 2), ((3, 2, 6, 9), 3, 3), ((1, 1, 5, 5), 5, 4)]
    for case in cases if hidden else [((1, 1, 4, 6), 2, 0)]:
        _patchify_case(fn, hidden, forbidden, case)
    report_ok("patchify", hidden)


# --- 2. Patch embedding -----------------------------------------------------------------------


def _embed_reference(images: Tensor, weight: Tensor, bias: Tensor, P: int) -> Tensor:
    return _conv2d(images, weight, bias, stride=P).flatten(2).transpose(1, 2)  # (B, N, d)


def _patch_embedding_case(fn: Callable, hidden: bool, forbidden: list[Target], case: tuple) -> None:
    shape, P, d, seed = case
    images = random_tensor(*shape, seed=seed, grad=hidden)
    weight = random_tensor(d, shape[1], P, P, seed=seed + 1, grad=hidden)
    bias = random_tensor(d, seed=seed + 2, grad=hidden)
    out = run_candidate(
        fn, images, weight, bias, P, exercise="patch_embedding", forbidden=forbidden
    )
    expected = _embed_reference(images, weight, bias, P)
    imd, wd, bd = images.detach(), weight.detach(), bias.detach()
    mistakes: Mistakes = {
        "the kernel is flattened as (d, P, P, C); flatten it as (d, C, P, P) -> (d, C*P*P), "
        "the order patchify uses.": lambda: (
            _patchify(imd, P) @ wd.permute(0, 2, 3, 1).reshape(d, -1).T + bd
        ),
        "the bias is missing.": lambda: _embed_reference(imd, wd, None, P),
    }
    if (
        isinstance(out, Tensor)
        and out.shape == (shape[0], d, expected.shape[1])
        and expected.shape[1] != d
    ):
        raise ExerciseError(
            f"patch_embedding returned shape {tuple(out.shape)}, expected "
            f"{tuple(expected.shape)}: one row per patch, (B, N, d); transpose the last two axes."
        )
    what = f"patch_embedding of images {shape}, patch_size {P}, d = {d}"
    expect_close(out, expected, what=what, mistakes=mistakes, atol=1e-10, rtol=1e-8)
    if hidden:
        expect_backward_close(
            out, expected, {"images": images, "weight": weight, "bias": bias}, "patch_embedding"
        )


def check_patch_embedding(fn: Callable, hidden: bool = False) -> None:
    """Learner's `patch_embedding(images, weight (d, C, P, P), bias (d,), patch_size) ->
    (B, N, d)`, equal to a convolution with kernel and stride P, its grid read row by row."""
    forbidden: list[Target] = [
        (F, "conv2d"),
        (torch, "conv2d"),
        (nn.Conv2d, "forward"),
        (nn.Conv2d, "_conv_forward"),
        (F, "unfold"),
        (nn.Unfold, "forward"),
        (vision.PatchEmbedding, "forward"),
    ]
    cases = [((2, 3, 4, 6), 2, 5, 1), ((1, 1, 8, 8), 4, 3, 2), ((2, 2, 6, 6), 3, 4, 3)]
    for case in cases if hidden else [((1, 1, 4, 4), 2, 3, 0)]:
        _patch_embedding_case(fn, hidden, forbidden, case)
    report_ok("patch_embedding", hidden)


# --- 3. The class token and the positions ----------------------------------------------------


def _cls_variant(tokens: Tensor, cls: Tensor, pos: Tensor, kind: str = "") -> Tensor:
    B, N, C = tokens.shape
    cls_row = cls.reshape(1, 1, C).expand(B, 1, C)
    if kind == "cls_last":
        return _cat([tokens, cls_row], dim=1) + pos
    if kind == "cls_without_position":  # positions added to the patches first, then the token
        return _cat([cls_row, tokens + pos[1:]], dim=1)
    if kind == "positions_shifted":
        return _cat([cls_row, tokens + pos[:N]], dim=1)
    return _cat([cls_row, tokens], dim=1) + pos


CLS_MISTAKES = {
    "cls_last": "the class token is appended at the end; it goes in front, at position 0.",
    "cls_without_position": "the class token was added after the positions, so it has none; "
    "prepend it first, then add all N + 1 position vectors (row 0 is the class token's).",
    "positions_shifted": "the patches got position rows 0..N-1; row 0 belongs to the class "
    "token, the patches take rows 1..N.",
}


def _add_cls_and_positions_case(
    fn: Callable, hidden: bool, forbidden: list[Target], case: tuple
) -> None:
    B, N, C, seed = case
    tokens = random_tensor(B, N, C, seed=seed, grad=hidden)
    cls = random_tensor(C, seed=seed + 1, grad=hidden)
    pos = random_tensor(N + 1, C, seed=seed + 2, grad=hidden)
    out = run_candidate(fn, tokens, cls, pos, exercise="add_cls_and_positions")
    expected = _cls_variant(tokens, cls, pos)
    td, cd, pd = tokens.detach(), cls.detach(), pos.detach()
    mistakes = {
        hint: (lambda kind=kind: _cls_variant(td, cd, pd, kind))
        for kind, hint in CLS_MISTAKES.items()
    }
    what = f"add_cls_and_positions for tokens {(B, N, C)}"
    expect_close(out, expected, what=what, mistakes=mistakes, atol=1e-12, rtol=1e-10)
    if hidden:
        leaves = {"tokens": tokens, "cls_token": cls, "pos_embed": pos}
        expect_backward_close(out, expected, leaves, "add_cls_and_positions")


def check_add_cls_and_positions(fn: Callable, hidden: bool = False) -> None:
    """Learner's `add_cls_and_positions(tokens (B, N, C), cls_token (C,), pos_embed (N + 1, C))
    -> (B, N + 1, C)`."""
    cases = [(3, 5, 4, 1), (1, 16, 8, 2), (2, 1, 3, 3)]
    for case in cases if hidden else [(2, 4, 3, 0)]:
        _add_cls_and_positions_case(fn, hidden, [], case)
    report_ok("add_cls_and_positions", hidden)


# --- 4. Attention rollout ---------------------------------------------------------------------


def _rollout_variant(attentions: list[Tensor], kind: str) -> Tensor:
    result = None
    for a in attentions:
        a = a.amax(dim=1) if kind == "max_heads" else a.mean(dim=1)
        if kind != "no_residual":
            a = 0.5 * a + 0.5 * _eye(a.shape[-1], dtype=a.dtype)
            a = a / a.sum(dim=-1, keepdim=True)
        if result is None:
            result = a
        elif kind == "reversed":
            result = result @ a
        elif kind == "summed":
            result = result + a
        else:
            result = a @ result
    return result


ROLLOUT_MISTAKES = {
    "no_residual": "the residual connection is missing: each layer's matrix is 0.5 A + 0.5 I "
    "(rows renormalised), because half of each token's output is its own input.",
    "reversed": "the layers are multiplied in the wrong order: a later layer mixes what the "
    "earlier ones produced, so the product is A_L ... A_2 A_1 (new layer on the left).",
    "max_heads": "the heads are combined by their maximum; average them.",
    "summed": "the layers' matrices are summed; rollout multiplies them, following the flow "
    "of information through the layers.",
}


def _attention_rollout_case(
    fn: Callable, hidden: bool, forbidden: list[Target], case: tuple
) -> None:
    B, H, S, L, seed = case
    attentions = [
        torch.softmax(3 * random_tensor(B, H, S, S, seed=seed + i), dim=-1) for i in range(L)
    ]
    given = [a.clone() for a in attentions]
    out = run_candidate(fn, given, exercise="attention_rollout", forbidden=forbidden)
    if not all(torch.equal(a, b) for a, b in zip(attentions, given, strict=True)):
        raise ExerciseError("attention_rollout changed the attention tensors it was given.")
    mistakes = {
        hint: (lambda kind=kind: _rollout_variant(attentions, kind))
        for kind, hint in ROLLOUT_MISTAKES.items()
        if not (L == 1 and kind in ("reversed", "summed"))
    }
    what = f"attention_rollout of {L} layers of (B, H, S, S) = {(B, H, S, S)}"
    expect_close(out, _rollout(attentions), what=what, mistakes=mistakes, atol=1e-10, rtol=1e-8)


def check_attention_rollout(fn: Callable, hidden: bool = False) -> None:
    """Learner's `attention_rollout(attentions: list of (B, H, S, S)) -> (B, S, S)`."""
    forbidden: list[Target] = [(vision, "attention_rollout")]
    cases = [(2, 3, 5, 4, 1), (1, 1, 3, 1, 2), (3, 4, 6, 2, 3)]
    for case in cases if hidden else [(1, 2, 4, 3, 0)]:
        _attention_rollout_case(fn, hidden, forbidden, case)
    report_ok("attention_rollout", hidden)


# --- 5. Box IoU -------------------------------------------------------------------------------


def _area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _iou(a: Tensor, b: Tensor, kind: str = "") -> Tensor:
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
    size = bottom_right - top_left
    if kind != "no_clamp":
        size = size.clamp(min=0)
    inter = size[..., 0] * size[..., 1]  # (N, M)
    union = _area(a)[:, None] + _area(b)[None, :]
    if kind != "union_counts_twice":
        union = union - inter
    return inter / union


IOU_MISTAKES = {
    "no_clamp": "boxes that do not overlap get a 'negative' overlap: clamp the width and height "
    "of the intersection at 0 before multiplying (two negative sides make a positive area).",
    "union_counts_twice": "the union counts the intersection twice: area1 + area2 - intersection.",
}


def _boxes(n: int, seed: int) -> Tensor:
    """n random boxes (x0, y0, x1, y1) in the unit square, each with positive width and height."""
    corner = torch.rand(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    size = 0.05 + 0.5 * torch.rand(
        n, 2, generator=torch.Generator().manual_seed(seed + 100), dtype=torch.float64
    )
    return _cat([0.5 * corner, 0.5 * corner + size], dim=1)


def _box_iou_case(fn: Callable, hidden: bool, forbidden: list[Target], case: tuple) -> None:
    a, b = case
    out = run_candidate(fn, a.clone(), b.clone(), exercise="box_iou", forbidden=forbidden)
    if isinstance(out, Tensor) and out.shape == (len(a),) and len(a) != len(b):
        raise ExerciseError(
            "box_iou returned one value per box; it must compare every box of "
            "the first set with every box of the second: (N, M)."
        )
    mistakes = {hint: (lambda kind=kind: _iou(a, b, kind)) for kind, hint in IOU_MISTAKES.items()}
    what = f"box_iou of {len(a)} and {len(b)} boxes"
    expect_close(out, _iou(a, b), what=what, mistakes=mistakes, atol=1e-12, rtol=1e-10)


def check_box_iou(fn: Callable, hidden: bool = False) -> None:
    """Learner's `box_iou(boxes1 (N, 4), boxes2 (M, 4)) -> (N, M)`, boxes as (x0, y0, x1, y1)."""
    forbidden = _existing("tutorlib.detection", ["box_iou", "generalized_box_iou"])
    if hidden:
        cases = [
            (_boxes(5, 1), _boxes(3, 2)),
            (_boxes(1, 3), _boxes(6, 4)),
            (_boxes(4, 5), _boxes(4, 5)),
        ]
    else:
        a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
        b = torch.tensor(
            [[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 6.0, 7.0], [0.0, 0.0, 2.0, 2.0]], dtype=torch.float64
        )
        cases = [(a, b)]
    for case in cases:
        _box_iou_case(fn, hidden, forbidden, case)
    report_ok("box_iou", hidden)


# --- 6. The matching cost ---------------------------------------------------------------------


def _cost(
    probs: Tensor, pred: Tensor, labels: Tensor, target: Tensor, w: float, kind: str = ""
) -> Tensor:
    class_term = probs[:, labels]  # (Q, M)
    if kind != "plus_prob":
        class_term = -class_term
    p = 2.0 if kind == "l2" else 1.0
    box_term = _cdist(pred, target, p=p)  # (Q, M)
    if kind == "mean_l1":
        box_term = box_term / 4
    cost = class_term + w * box_term
    return cost.T if kind == "transposed" else cost


COST_MISTAKES = {
    "plus_prob": "the class term has the wrong sign: a high probability of the right class must "
    "make the match cheaper, so the cost is -p[label].",
    "l2": "the box term is the Euclidean (L2) distance; DETR's is the L1 distance, the sum of the "
    "four absolute differences.",
    "mean_l1": "the L1 distance is averaged over the four coordinates; sum them.",
    "transposed": "the matrix is transposed: rows are the predictions (queries), columns the "
    "targets, (Q, M).",
}


def _matching_cost_case(fn: Callable, hidden: bool, forbidden: list[Target], case: tuple) -> None:
    Q, M, K, w, seed = case
    probs = torch.softmax(random_tensor(Q, K + 1, seed=seed), dim=-1)
    pred = torch.rand(Q, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    target = torch.rand(
        M, 4, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64
    )
    labels = torch.randint(0, K, (M,), generator=torch.Generator().manual_seed(seed))
    out = run_candidate(
        fn, probs, pred, labels, target, w, exercise="matching_cost", forbidden=forbidden
    )
    if isinstance(out, Tensor) and out.shape == (M, Q) and M != Q:
        raise ExerciseError(
            f"matching_cost has shape {(M, Q)}, expected {(Q, M)}. Likely mistake: "
            + COST_MISTAKES["transposed"]
        )
    mistakes = {
        hint: (lambda kind=kind: _cost(probs, pred, labels, target, w, kind))
        for kind, hint in COST_MISTAKES.items()
        if not (kind == "transposed" and Q == M)
    }
    what = f"matching_cost for {Q} predictions and {M} targets"
    expect_close(
        out,
        _cost(probs, pred, labels, target, w),
        what=what,
        mistakes=mistakes,
        atol=1e-12,
        rtol=1e-10,
    )


def check_matching_cost(fn: Callable, hidden: bool = False) -> None:
    """Learner's `matching_cost(probs, pred_boxes, labels, target_boxes, l1_weight)`:
    -probs[q, labels[m]] + l1_weight * |pred_q - target_m|_1.

    Shapes:
        probs (Q, K + 1); pred_boxes (Q, 4); labels (M,); target_boxes (M, 4)  ->  (Q, M)
    """
    forbidden = _existing("tutorlib.detection", ["match_cost", "matching_cost", "hungarian_match"])
    cases = [(6, 3, 4, 5.0, 1), (4, 4, 2, 1.0, 2), (5, 1, 3, 2.5, 3)]
    for case in cases if hidden else [(4, 2, 3, 5.0, 0)]:
        _matching_cost_case(fn, hidden, forbidden, case)
    report_ok("matching_cost", hidden)


# --- 7. The set classification loss -----------------------------------------------------------


def _set_loss(
    logits: Tensor, labels: Tensor, pred_idx: Tensor, tgt_idx: Tensor, eos: float, kind: str = ""
) -> Tensor:
    Q, K1 = logits.shape
    no_object = K1 - 1
    target = torch.full((Q,), no_object, dtype=torch.long)
    target[pred_idx] = labels[tgt_idx]  # query pred_idx[i] answers for target tgt_idx[i]
    weight = torch.ones(K1, dtype=logits.dtype)
    weight[no_object] = 1.0 if kind == "no_down_weight" else eos
    if kind == "matched_only":
        return _cross_entropy(logits[pred_idx], labels[tgt_idx])
    if kind == "plain_mean":
        per = _cross_entropy(logits, target, reduction="none")
        return (per * weight[target]).mean()
    return _cross_entropy(logits, target, weight=weight)


SET_MISTAKES = {
    "matched_only": "only the matched predictions count; every other query must learn to say "
    "'no object' (class K, the last one).",
    "no_down_weight": "the 'no object' class is not down-weighted: weight its term by "
    "no_object_weight (DETR uses 0.1), so that the many empty queries do not swamp the loss.",
    "plain_mean": "the weighted losses are divided by the number of queries; divide by the sum "
    "of the weights, as F.cross_entropy(..., weight=...) does.",
}


WRONG_ORDER = (
    "the targets are taken in the wrong order: query pred_idx[i] is matched to target "
    "tgt_idx[i], so its class is labels[tgt_idx[i]], not labels[i]."
)


def _set_classification_loss_case(
    fn: Callable, hidden: bool, forbidden: list[Target], case: tuple
) -> None:
    Q, M, K, eos, seed = case
    logits = random_tensor(Q, K + 1, seed=seed, grad=hidden)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, K, (M,), generator=g)
    pred_idx = torch.randperm(Q, generator=g)[:M]
    tgt_idx = torch.randperm(M, generator=g)
    out = run_candidate(
        fn,
        logits,
        labels,
        pred_idx,
        tgt_idx,
        eos,
        exercise="set_classification_loss",
        forbidden=forbidden,
    )
    expected = _set_loss(logits, labels, pred_idx, tgt_idx, eos)
    ld = logits.detach()
    mistakes = {
        hint: (lambda kind=kind: _set_loss(ld, labels, pred_idx, tgt_idx, eos, kind))
        for kind, hint in SET_MISTAKES.items()
        if not (M == 0 and kind == "matched_only")
    }
    # The slip target[pred_idx] = labels, written as the reference with permuted labels.
    in_given_order = labels[torch.argsort(tgt_idx)] if M else labels
    mistakes[WRONG_ORDER] = lambda: _set_loss(ld, in_given_order, pred_idx, tgt_idx, eos)
    what = f"set_classification_loss for {Q} queries and {M} targets"
    expect_close(out, expected, what=what, mistakes=mistakes, atol=1e-10, rtol=1e-8)
    if hidden:
        expect_backward_close(out, expected, {"logits": logits}, "set_classification_loss")


def check_set_classification_loss(fn: Callable, hidden: bool = False) -> None:
    """Learner's `set_classification_loss(logits (Q, K + 1), labels (M,), pred_idx (M,),
    tgt_idx (M,), no_object_weight) -> scalar`."""
    forbidden = _existing("tutorlib.detection", ["set_prediction_loss", "set_classification_loss"])
    cases = [(6, 3, 4, 0.1, 1), (5, 0, 3, 0.2, 2), (4, 4, 5, 0.5, 3)]
    for case in cases if hidden else [(4, 2, 3, 0.1, 0)]:
        _set_classification_loss_case(fn, hidden, forbidden, case)
    report_ok("set_classification_loss", hidden)


# --- 8. InfoNCE -------------------------------------------------------------------------------


def _info_nce(images: Tensor, texts: Tensor, T: float, kind: str = "") -> Tensor:
    if kind != "no_normalize":
        images, texts = _normalize(images, dim=-1), _normalize(texts, dim=-1)
    logits = images @ texts.T  # (N, N)
    logits = logits * T if kind == "temperature_inverted" else logits / T
    labels = torch.arange(len(logits))
    if kind == "one_direction":
        return _cross_entropy(logits, labels)
    return (_cross_entropy(logits, labels) + _cross_entropy(logits.T, labels)) / 2


NCE_MISTAKES = {
    "no_normalize": "the embeddings are not normalised: CLIP's similarity is the cosine, so divide "
    "each embedding by its norm (F.normalize) first.",
    "temperature_inverted": "the temperature is inverted: divide the similarities by the "
    "temperature (a small temperature sharpens the softmax), don't multiply.",
    "one_direction": "only one direction is there: CLIP's loss averages the image-to-text "
    "cross-entropy (rows) and the text-to-image one (columns).",
}


def _info_nce_case(fn: Callable, hidden: bool, forbidden: list[Target], case: tuple) -> None:
    N, d, T, seed = case
    images = random_tensor(N, d, seed=seed, grad=hidden)
    texts = random_tensor(N, d, seed=seed + 1, grad=hidden)
    out = run_candidate(fn, images, texts, T, exercise="info_nce", forbidden=forbidden)
    expected = _info_nce(images, texts, T)
    idd, tdd = images.detach(), texts.detach()
    mistakes = {
        hint: (lambda kind=kind: _info_nce(idd, tdd, T, kind))
        for kind, hint in NCE_MISTAKES.items()
        if not (T == 1.0 and kind == "temperature_inverted")
    }
    what = f"info_nce for N = {N} pairs, temperature {T}"
    expect_close(out, expected, what=what, mistakes=mistakes, atol=1e-10, rtol=1e-8)
    if hidden:
        expect_backward_close(out, expected, {"image_emb": images, "text_emb": texts}, "info_nce")


def check_info_nce(fn: Callable, hidden: bool = False) -> None:
    """Learner's `info_nce(image_emb (N, d), text_emb (N, d), temperature) -> scalar`: the
    symmetric contrastive loss of CLIP."""
    forbidden = _existing("tutorlib.multimodal", ["info_nce", "contrastive_loss"])
    cases = [(5, 4, 0.1, 1), (1, 3, 1.0, 2), (8, 6, 0.07, 3)]
    for case in cases if hidden else [(4, 3, 0.5, 0)]:
        _info_nce_case(fn, hidden, forbidden, case)
    report_ok("info_nce", hidden)


watch_module(__name__)
