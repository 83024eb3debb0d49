"""Checks for the Chapter 5 exercises (solutions/05_vision).

Each `check_*` takes the learner's function. With `hidden=False` it runs the visible tests (the
notebook's worked examples); with `hidden=True` the hidden ones: property tests on sizes and
values drawn when they run (`tutorlib.checks.draw`), with the special cases that tell the likely
mistakes apart in every draw (colour images, non-square grids of patches, boxes apart along one
axis or both, queries left unmatched, no targets at all, ...), and gradients where the exercise
asks for them. While the learner's code runs, the tutorlib reference and every torch operator
that computes the same thing are out of reach (`tutorlib.checks.guard`). The detection and
contrastive references are written out here, with the likely mistakes next to them.

Book: Chapter 5 exercises.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tutorlib import detection, multimodal, vision
from tutorlib.checks import (
    Draw,
    Exercise,
    ExerciseError,
    Forbidden,
    expect_close,
    random_tensor,
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
_cat, _eye, _cdist, _argsort = torch.cat, torch.eye, torch.cdist, torch.argsort

Mistakes = dict[str, Any]


def _torchvision_boxes(*names: str) -> tuple[Any, ...]:
    """torchvision's box operations, when torchvision is installed (it is not a dependency of
    the course, but a learner's environment may have it)."""
    if importlib.util.find_spec("torchvision") is None:
        return ()
    try:
        from torchvision.ops import boxes
    except Exception:  # noqa: BLE001 - a broken torchvision install is no torchvision
        return ()
    return tuple(getattr(boxes, name) for name in names if hasattr(boxes, name))


def _expect_shape(out: Any, shape: tuple[int, ...], what: str, wrong: dict) -> None:
    """Name the mistake behind a wrong shape that `wrong` (shape -> hint) knows; other shapes
    are left to `expect_close`."""
    if isinstance(out, Tensor) and tuple(out.shape) != shape and tuple(out.shape) in wrong:
        raise ExerciseError(f"{what} has shape {tuple(out.shape)}", hint=wrong[tuple(out.shape)])


# --- 1. Patchify ----------------------------------------------------------------------------

# Cutting patches by a library op: F.unfold (aten::im2col), Tensor.unfold (aten::unfold).
UNFOLD_OPS = ("im2col", "unfold", "unfold_copy")
PATCHIFY_FORBIDDEN = Forbidden(
    python=(vision.patchify, vision.PatchEmbedding, nn.Unfold), ops=UNFOLD_OPS
)


def _patch_variant(images: Tensor, P: int, kind: str) -> Tensor:
    """The patches as a given likely mistake cuts them."""
    B, C, H, W = images.shape
    N = (H // P) * (W // P)
    if kind == "no_permute":
        return images.reshape(B, N, C * P * P)
    if kind == "hw_swapped":  # unpacked as B, C, W, H: the grid read as (W/P, H/P)
        x = images.reshape(B, C, W // P, P, H // P, P)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(B, N, C * P * P)
    if kind == "strided":  # H split as (P, H/P): a "patch" takes pixels H/P apart
        x = images.reshape(B, C, P, H // P, P, W // P)  # (B, C, P, rows, P, cols)
        return x.permute(0, 3, 5, 1, 2, 4).reshape(B, N, C * P * P)
    x = images.reshape(B, C, H // P, P, W // P, P)  # (B, C, rows, P, cols, P)
    order = {
        "column_major": (0, 4, 2, 1, 3, 5),  # patches column by column
        "channels_last": (0, 2, 4, 3, 5, 1),  # each patch flattened as (P, P, C)
        "inner_transposed": (0, 2, 4, 1, 5, 3),  # each patch read column by column
    }[kind]
    return x.permute(*order).reshape(B, N, C * P * P)


PATCH_MISTAKES = {
    "column_major": "the patches are in column-major order; read them row by row: the top row "
    "of patches left to right, then the next row (index = row * cols + col).",
    "channels_last": "each patch is flattened as (P, P, C); flatten it as (C, P, P), channel "
    "first, as a convolution's kernel is laid out.",
    "inner_transposed": "the pixels inside each patch are read column by column; read them row "
    "by row.",
    "no_permute": "a plain reshape does not cut patches: it slices the image's memory in "
    "order. Reshape to (B, C, H/P, P, W/P, P), permute, then reshape.",
    "hw_swapped": "the image is read as (B, C, W, H); it is (B, C, H, W): its height is dim 2 "
    "and its width dim 3, so reshape to (B, C, H/P, P, W/P, P).",
    "strided": "the reshape splits H into (P, H/P), so a 'patch' takes pixels H/P apart; split "
    "it into (H/P, P) (and W into (W/P, P)) so that a patch's pixels are neighbours.",
}


def _grid(draw: Draw, P: int) -> tuple[int, int]:
    """(H, W) of an image whose grid of patches has different numbers of rows and columns,
    at least 2 of each."""
    rows, cols = draw.sample(range(2, 6), 2)
    return rows * P, cols * P


def _patchify_hidden(draw: Draw) -> list[tuple[Tensor, int]]:
    """A colour and a grey image, both non-square with rows != cols of patches, then one pixel
    per patch (P = 1)."""
    P1, P2 = draw.integer(2, 4), draw.integer(2, 5)
    colour = (draw.integer(2, 3), draw.integer(2, 4), *_grid(draw, P1))
    grey = (draw.integer(1, 3), 1, *_grid(draw, P2))
    pixels = (draw.integer(1, 2), 3, draw.integer(2, 4), draw.integer(5, 7))
    return [(draw.normal(*colour), P1), (draw.normal(*grey), P2), (draw.normal(*pixels), 1)]


def _check_patchify_case(ex: Exercise, fn: Callable, images: Tensor, P: int) -> None:
    out = ex.call(fn, images, P)
    expected = _patchify(images, P)
    expect_close(
        out,
        expected,
        what=f"patchify of images {tuple(images.shape)} with patch_size {P}",
        mistakes={
            hint: (lambda k=kind: _patch_variant(images, P, k))
            for kind, hint in PATCH_MISTAKES.items()
        },
        atol=0,
        rtol=0,
    )


def check_patchify(fn: Callable[[Tensor, int], Tensor], hidden: bool = False) -> None:
    """Learner's `patchify(images (B, C, H, W), patch_size) -> (B, N, C * P * P)`."""
    with Exercise("patchify", hidden, PATCHIFY_FORBIDDEN) as ex:
        visible = [(random_tensor(1, 1, 4, 6, seed=0), 2)]
        for images, P in _patchify_hidden(ex.draw) if hidden else visible:
            _check_patchify_case(ex, fn, images, P)


# --- 2. Patch embedding ---------------------------------------------------------------------

# Every operator a convolution runs through (F.conv1d/2d/3d, nn.Conv*, the transposed ones and
# the backends all end in aten::convolution or one of these), and the unfolding ops: any of
# them computes the patch embedding for the learner.
CONV_OPS = (
    "conv1d",
    "conv2d",
    "conv3d",
    "convolution",
    "_convolution",
    "_convolution_mode",
    "convolution_overrideable",
    "conv_tbc",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "cudnn_convolution",
    "mkldnn_convolution",
    "miopen_convolution",
    "_slow_conv2d_forward",
    "slow_conv_dilated2d",
    "thnn_conv2d",
    "_conv_depthwise2d",
)
EMBED_FORBIDDEN = Forbidden(
    python=(
        vision.patchify,
        vision.PatchEmbedding,
        nn.Conv1d,
        nn.Conv2d,
        nn.Conv3d,
        nn.Unfold,
    ),
    ops=CONV_OPS + UNFOLD_OPS,
)

EMBED_ERRORS = {
    "cannot be multiplied": "reshape the kernel to (d, C*P*P) and multiply the patches by its "
    "transpose: patches @ weight.reshape(d, -1).T."
}


def _embed_reference(images: Tensor, weight: Tensor, bias: Tensor | None, P: int) -> Tensor:
    return _conv2d(images, weight, bias, stride=P).flatten(2).transpose(1, 2)  # (B, N, d)


def _embed_mistakes(images: Tensor, weight: Tensor, bias: Tensor, P: int) -> Mistakes:
    d = weight.shape[0]
    patches = _patchify(images, P)  # (B, N, C*P*P)

    def linear(p: Tensor, kernel: Tensor) -> Tensor:
        return p @ kernel.T + bias  # (B, N, d)

    return {
        "the kernel is flattened as (d, P, P, C); flatten it as (d, C, P, P) -> (d, C*P*P), "
        "the order patchify uses.": lambda: linear(
            patches, weight.permute(0, 2, 3, 1).reshape(d, -1)
        ),
        "the kernel's pixels are read column by column (a transposed P x P window); "
        "weight.reshape(d, -1) reads them row by row, as patchify does.": lambda: linear(
            patches, weight.transpose(2, 3).reshape(d, -1)
        ),
        "the kernel is reshaped straight to (C*P*P, d), which scrambles it; reshape it to "
        "(d, C*P*P) and transpose: weight.reshape(d, -1).T.": lambda: (
            patches @ weight.reshape(-1, d) + bias
        ),
        "the bias is missing.": lambda: _embed_reference(images, weight, None, P),
        "the patches come out column by column: check your patchify (patches row by row).": (
            lambda: linear(_patch_variant(images, P, "column_major"), weight.reshape(d, -1))
        ),
        "the patches are flattened as (P, P, C) but the kernel as (C, P, P): check your "
        "patchify (each patch channel first).": lambda: linear(
            _patch_variant(images, P, "channels_last"), weight.reshape(d, -1)
        ),
        "the patches are cut by a plain reshape: check your patchify (reshape, permute, "
        "reshape).": lambda: linear(_patch_variant(images, P, "no_permute"), weight.reshape(d, -1)),
    }


def _embed_hidden(draw: Draw) -> list[tuple[Tensor, Tensor, Tensor, int]]:
    """A colour and a grey batch, non-square grids of patches (rows != cols), and a width d
    that is neither the number of patches nor C * P * P."""
    cases = []
    for C, P in ((draw.integer(2, 3), draw.integer(2, 3)), (1, draw.integer(2, 4))):
        H, W = _grid(draw, P)
        N = (H // P) * (W // P)
        d = draw.choice([d for d in range(2, 9) if d not in (N, C * P * P)])
        cases.append(
            (
                draw.normal(draw.integer(2, 3), C, H, W, grad=True),
                draw.normal(d, C, P, P, scale=0.5, grad=True),
                draw.normal(d, grad=True),
                P,
            )
        )
    return cases


def _check_embed_case(
    ex: Exercise, fn: Callable, images: Tensor, weight: Tensor, bias: Tensor, P: int
) -> None:
    out = ex.call(fn, images, weight, bias, P, hints=EMBED_ERRORS)
    expected = _embed_reference(images, weight, bias, P)
    (B, N, d), what = expected.shape, f"patch_embedding of images {tuple(images.shape)}"
    what += f", patch_size {P}, d = {weight.shape[0]}"
    _expect_shape(
        out,
        (B, N, d),
        what,
        {
            (B, d, N): "the result is (B, d, N), a convolution's layout; the ViT wants one row per "
            "patch, (B, N, d): transpose the last two axes."
        },
    )
    mistakes = _embed_mistakes(images.detach(), weight.detach(), bias.detach(), P)
    expect_close(out, expected, what=what, mistakes=mistakes)
    if images.requires_grad:
        leaves = {"images": images, "weight": weight, "bias": bias}
        ex.expect_backward(out, expected, leaves, "patch_embedding")


def check_patch_embedding(fn: Callable[..., Tensor], hidden: bool = False) -> None:
    """Learner's `patch_embedding(images, weight (d, C, P, P), bias (d,), patch_size) ->
    (B, N, d)`, equal to a convolution with kernel and stride P, its grid read row by row."""
    with Exercise("patch_embedding", hidden, EMBED_FORBIDDEN) as ex:
        if hidden:
            cases = _embed_hidden(ex.draw)
        else:
            images = random_tensor(1, 1, 4, 4, seed=0)
            cases = [(images, random_tensor(3, 1, 2, 2, seed=1), random_tensor(3, seed=2), 2)]
        for case in cases:
            _check_embed_case(ex, fn, *case)


# --- 3. The class token and the positions -----------------------------------------------------

# The ViT's own token assembly (it leaves the class token without a position, but it is the
# nearest tutorlib computation).
CLS_FORBIDDEN = Forbidden(python=(vision.ViT.tokens,))


def _cls_variant(tokens: Tensor, cls: Tensor, pos: Tensor, kind: str = "") -> Tensor:
    B, N, C = tokens.shape
    cls_row = cls.reshape(1, 1, C).expand(B, 1, C)  # (B, 1, C)
    if kind == "cls_last":
        return _cat([tokens, cls_row], dim=1) + pos
    if kind == "cls_without_position":  # positions added to the patches first, then the token
        return _cat([cls_row, tokens + pos[1:]], dim=1)
    if kind == "positions_shifted":
        return _cat([cls_row, tokens + pos[:N]], dim=1)
    if kind == "patches_without_positions":
        return _cat([cls_row + pos[0], tokens], dim=1)
    return _cat([cls_row, tokens], dim=1) + pos  # (B, N + 1, C)


CLS_MISTAKES = {
    "cls_last": "the class token is appended at the end; it goes in front, at position 0.",
    "cls_without_position": "the class token was added after the positions, so it has none; "
    "prepend it first, then add all N + 1 position vectors (row 0 is the class token's).",
    "positions_shifted": "the patches got position rows 0..N-1; row 0 belongs to the class "
    "token, the patches take rows 1..N.",
    "patches_without_positions": "only the class token got a position vector; every token, "
    "the N patches included, gets its own row of pos_embed.",
}


CLS_ADDED = (
    "the result has N tokens: the class token was added to the patches. It is a token of its "
    "own: concatenate it in front of them (torch.cat, N + 1 tokens), then add the positions."
)


def _cls_hidden(draw: Draw) -> list[tuple[Tensor, Tensor, Tensor]]:
    """A batch of several images and N != C (so no transposition hides), then one patch."""
    cases = []
    for N in (draw.integer(2, 7), 1):
        C = draw.choice([c for c in range(2, 7) if c not in (N, N + 1)])
        B = draw.integer(2, 4)
        cases.append(
            (
                draw.normal(B, N, C, grad=True),
                draw.normal(C, grad=True),
                draw.normal(N + 1, C, grad=True),
            )
        )
    return cases


def _check_cls_case(ex: Exercise, fn: Callable, tokens: Tensor, cls: Tensor, pos: Tensor) -> None:
    out = ex.call(fn, tokens, cls, pos)
    expected = _cls_variant(tokens, cls, pos)
    td, cd, pd = tokens.detach(), cls.detach(), pos.detach()
    what = f"add_cls_and_positions for tokens {tuple(tokens.shape)}"
    _expect_shape(out, tuple(expected.shape), what, {tuple(tokens.shape): CLS_ADDED})
    expect_close(
        out,
        expected,
        what=what,
        mistakes={
            hint: (lambda k=kind: _cls_variant(td, cd, pd, k))
            for kind, hint in CLS_MISTAKES.items()
        },
    )
    if tokens.requires_grad:
        leaves = {"tokens": tokens, "cls_token": cls, "pos_embed": pos}
        ex.expect_backward(out, expected, leaves, "add_cls_and_positions")


def check_add_cls_and_positions(fn: Callable[..., Tensor], hidden: bool = False) -> None:
    """Learner's `add_cls_and_positions(tokens (B, N, C), cls_token (C,), pos_embed (N + 1, C))
    -> (B, N + 1, C)`."""
    with Exercise("add_cls_and_positions", hidden, CLS_FORBIDDEN) as ex:
        if hidden:
            cases = _cls_hidden(ex.draw)
        else:
            cases = [
                (
                    random_tensor(2, 4, 3, seed=0),
                    random_tensor(3, seed=1),
                    random_tensor(5, 3, seed=2),
                )
            ]
        for tokens, cls, pos in cases:
            _check_cls_case(ex, fn, tokens, cls, pos)


# --- 4. Attention rollout -------------------------------------------------------------------

ROLLOUT_FORBIDDEN = Forbidden(python=(vision.attention_rollout,))


def _rollout_variant(attentions: list[Tensor], kind: str) -> Tensor:
    result = None
    for a in attentions:
        a = {"max_heads": a.amax(dim=1), "heads_summed": a.sum(dim=1)}.get(kind, a.mean(dim=1))
        eye = _eye(a.shape[-1], dtype=a.dtype)
        if kind == "not_renormalised":
            a = a + eye
        elif kind != "no_residual":
            a = 0.5 * a + 0.5 * eye
            a = a / a.sum(dim=-1, keepdim=True)
        if result is None or kind == "last_layer_only":
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
    "heads_summed": "the heads are summed, so that the identity weighs 1 against their H: "
    "average them (A = mean over dim 1), then take 0.5 A + 0.5 I.",
    "summed": "the layers' matrices are summed; rollout multiplies them, following the flow "
    "of information through the layers.",
    "not_renormalised": "each layer's matrix A + I has rows that sum to 2: take 0.5 A + 0.5 I "
    "(or divide each row by its sum) so that every row sums to 1.",
    "last_layer_only": "only the last layer's matrix is returned: multiply every layer's matrix "
    "into the rollout, R = A_L ... A_2 A_1.",
}


def _rollout_hidden(draw: Draw) -> list[list[Tensor]]:
    """Several layers of several heads, a batch size other than the number of heads; then a
    single layer."""
    cases = []
    for L in (draw.integer(2, 4), 1):
        H, B = draw.integer(2, 4), draw.integer(2, 3)
        B = B if B != H else B + 1
        S = draw.integer(3, 6)
        cases.append([torch.softmax(3 * draw.normal(B, H, S, S), dim=-1) for _ in range(L)])
    return cases


def _check_rollout_case(ex: Exercise, fn: Callable, attentions: list[Tensor]) -> None:
    out = ex.call(fn, attentions)
    expected = _rollout(attentions)
    B, H, S, _ = attentions[0].shape
    what = f"attention_rollout of {len(attentions)} layers of (B, H, S, S) = {(B, H, S, S)}"
    _expect_shape(
        out,
        (B, S, S),
        what,
        {
            (H, S, S): "the heads are dim 1 of (B, H, S, S): average over dim=1, not over the "
            "batch (dim 0)."
        },
    )
    mistakes = {
        hint: (lambda k=kind: _rollout_variant(attentions, k))
        for kind, hint in ROLLOUT_MISTAKES.items()
    }
    expect_close(out, expected, what=what, mistakes=mistakes)


def check_attention_rollout(fn: Callable[[list[Tensor]], Tensor], hidden: bool = False) -> None:
    """Learner's `attention_rollout(attentions: list of (B, H, S, S)) -> (B, S, S)`."""
    with Exercise("attention_rollout", hidden, ROLLOUT_FORBIDDEN) as ex:
        if hidden:
            cases = _rollout_hidden(ex.draw)
        else:
            cases = [
                [torch.softmax(3 * random_tensor(1, 2, 4, 4, seed=i), dim=-1) for i in range(3)]
            ]
        for attentions in cases:
            _check_rollout_case(ex, fn, attentions)


# --- 5. Box IoU -------------------------------------------------------------------------------

IOU_FORBIDDEN = Forbidden(
    python=(
        detection.box_iou,
        detection.generalized_box_iou,
        detection._intersection_union,
        *_torchvision_boxes("box_iou", "generalized_box_iou", "_box_inter_union", "box_area"),
    )
)

IOU_ERRORS = {
    "must match the size": "compare every box of boxes1 with every box of boxes2: index "
    "boxes1[:, None, :] and boxes2[None, :, :] so that the result is (N, M)."
}


def _area(boxes: Tensor, kind: str = "") -> Tensor:
    if kind == "xywh":
        return boxes[:, 2] * boxes[:, 3]
    if kind == "corners_mixed":
        return (boxes[:, 2] - boxes[:, 1]) * (boxes[:, 3] - boxes[:, 0])
    if kind == "x0_x1_y0_y1":
        return (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _iou(a: Tensor, b: Tensor, kind: str = "") -> Tensor:
    if kind == "xywh_corners":  # (x, y, w, h): the far corner is (x + w, y + h)
        a, b = (_cat([t[:, :2], t[:, :2] + t[:, 2:]], dim=1) for t in (a, b))
    elif kind == "x0_x1_y0_y1_corners":  # (x0, x1, y0, y1): columns 1 and 2 swapped
        a, b = a[:, [0, 2, 1, 3]], b[:, [0, 2, 1, 3]]
    lower, upper = (
        (torch.minimum, torch.maximum) if kind == "hull" else (torch.maximum, torch.minimum)
    )
    top_left = lower(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    bottom_right = upper(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
    size = bottom_right - top_left
    if kind not in ("no_clamp", "clamp_product"):
        size = size.clamp(min=0)
    inter = size[..., 0] * size[..., 1]  # (N, M)
    if kind == "clamp_product":
        inter = inter.clamp(min=0)
    union = _area(a, kind)[:, None] + _area(b, kind)[None, :]
    if kind != "union_counts_twice":
        union = union - inter
    return inter / union


IOU_MISTAKES = {
    "no_clamp": "boxes that do not overlap get a 'negative' overlap (or, apart along both x "
    "and y, a positive one): clamp the width and the height of the intersection at 0, each, "
    "before multiplying.",
    "clamp_product": "clamp the width and the height of the intersection at 0 each, not their "
    "product: two boxes apart along both x and y have two negative sides, whose product is "
    "positive.",
    "union_counts_twice": "the union counts the intersection twice: area1 + area2 - intersection.",
    "hull": "the intersection runs from the larger top-left corner (torch.maximum) to the "
    "smaller bottom-right one (torch.minimum); with min and max swapped it is the box that "
    "encloses both.",
    "xywh": "the boxes are corners (x0, y0, x1, y1), not (x, y, width, height): a box's area is "
    "(x1 - x0) * (y1 - y0).",
    "corners_mixed": "the areas use the wrong corners: a box (x0, y0, x1, y1) has area "
    "(x1 - x0) * (y1 - y0) = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]).",
    "x0_x1_y0_y1": "the areas read a box as (x0, x1, y0, y1); it is (x0, y0, x1, y1), so its "
    "area is (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]).",
    "xywh_corners": "the boxes are corners (x0, y0, x1, y1), not (x, y, width, height): x1 is "
    "boxes[:, 2] itself, not x0 + boxes[:, 2].",
    "x0_x1_y0_y1_corners": "the boxes are read as (x0, x1, y0, y1); they are (x0, y0, x1, y1): "
    "x0, y0, x1, y1 = boxes.unbind(-1).",
}

TRANSPOSED_IOU = "the rows belong to boxes1 and the columns to boxes2: the result is (N, M)."


def _random_boxes(draw: Draw, n: int) -> Tensor:
    """n boxes (x0, y0, x1, y1) with corners in [0, 12] and sides in [1, 8], x0 != y0."""
    corner = draw.uniform(n, 2, low=0.0, high=12.0)
    return _cat([corner, corner + draw.uniform(n, 2, low=1.0, high=8.0)], dim=1)


def _partners(draw: Draw, box: Tensor) -> Tensor:
    """Five boxes placed against `box`: overlapping it partly, inside it, apart from it along
    x only, along y only, and along both."""
    x0, y0, x1, y1 = box.tolist()
    w, h = x1 - x0, y1 - y0

    def r(low: float, high: float) -> float:
        return draw.real(low, high)

    def apart(start: float) -> tuple[float, float]:  # a side that begins after `start`
        low = start + r(0.5, 3.0)
        return low, low + r(1.0, 6.0)

    def across(low: float, side: float) -> tuple[float, float]:  # a side that overlaps
        start = low + r(0.1, 0.6) * side
        return start, start + r(1.0, 6.0)

    partial = (x0 + r(0.2, 0.7) * w, y0 + r(0.2, 0.7) * h, x1 + r(1.0, 4.0), y1 + r(1.0, 4.0))
    inside = (
        x0 + r(0.1, 0.3) * w,
        y0 + r(0.1, 0.3) * h,
        x1 - r(0.1, 0.3) * w,
        y1 - r(0.1, 0.3) * h,
    )
    (ax0, ax1), (ay0, ay1) = apart(x1), apart(y1)
    (cx0, cx1), (cy0, cy1) = across(x0, w), across(y0, h)
    boxes = [
        partial,
        inside,
        (ax0, cy0, ax1, cy1),  # apart along x only
        (cx0, ay0, cx1, ay1),  # apart along y only
        (ax0, ay0, ax1, ay1),  # apart along both
    ]
    order = draw.permutation(len(boxes)).tolist()
    return torch.tensor([boxes[i] for i in order], dtype=torch.float64)


def _iou_hidden(draw: Draw) -> list[tuple[Tensor, Tensor]]:
    """Boxes placed to overlap partly, nest, and lie apart along one axis or both; a single box
    against several; two sets of one size (a box of one among the other's)."""
    n = draw.integer(2, 4)
    first = _random_boxes(draw, n)
    anchor = draw.integer(0, n - 1)
    second = _partners(draw, first[anchor])
    if draw.integer(0, 1):
        second = _cat([second, _random_boxes(draw, 1)])
    square = draw.integer(2, 4)
    same = _random_boxes(draw, square)
    other = _random_boxes(draw, square)
    other[draw.integer(0, square - 1)] = same[draw.integer(0, square - 1)]  # IoU exactly 1
    return [
        (first, second),
        (_random_boxes(draw, 1), _random_boxes(draw, draw.integer(2, 5))),
        (same, other),
    ]


def _check_iou_case(ex: Exercise, fn: Callable, a: Tensor, b: Tensor) -> None:
    out = ex.call(fn, a, b, hints=IOU_ERRORS)
    expected = _iou(a, b)
    N, M = len(a), len(b)
    what = f"box_iou of {N} and {M} boxes"
    wrong = {(M, N): TRANSPOSED_IOU}
    if N == M:
        wrong[(N,)] = (
            "the result has one value per pair (boxes1[i], boxes2[i]); compare every box of "
            "boxes1 with every box of boxes2: (N, M)."
        )
    _expect_shape(out, (N, M), what, wrong)
    mistakes: Mistakes = {
        hint: (lambda k=kind: _iou(a, b, k)) for kind, hint in IOU_MISTAKES.items()
    }
    mistakes[TRANSPOSED_IOU] = lambda: _iou(b, a)
    expect_close(out, expected, what=what, mistakes=mistakes)


def check_box_iou(fn: Callable[[Tensor, Tensor], Tensor], hidden: bool = False) -> None:
    """Learner's `box_iou(boxes1 (N, 4), boxes2 (M, 4)) -> (N, M)`, boxes as (x0, y0, x1, y1)."""
    with Exercise("box_iou", hidden, IOU_FORBIDDEN) as ex:
        if hidden:
            cases = _iou_hidden(ex.draw)
        else:
            a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
            b = torch.tensor(
                [[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 6.0, 7.0], [0.0, 0.0, 2.0, 2.0]],
                dtype=torch.float64,
            )
            cases = [(a, b)]
        for a, b in cases:
            _check_iou_case(ex, fn, a, b)


# --- 6. The matching cost ---------------------------------------------------------------------

# tutorlib's cost takes logits: match_cost(probs.log(), ..., giou_weight=0) is the answer.
COST_FORBIDDEN = Forbidden(
    python=(detection.match_cost, detection.hungarian_match, detection.set_prediction_loss)
)


COST_ERRORS = {
    "must match the size": "compare every prediction with every target: index "
    "pred_boxes[:, None, :] and target_boxes[None, :, :] so that the result is (Q, M)."
}


def _cost(
    probs: Tensor, pred: Tensor, labels: Tensor, target: Tensor, w: float, kind: str = ""
) -> Tensor:
    p = probs[:, labels + 1 if kind == "shifted" else labels]  # (Q, M)
    class_term = {"plus_prob": p, "log_prob": -p.log(), "one_minus": 1 - p}.get(kind, -p)
    box_term = _cdist(pred, target, p=2.0 if kind == "l2" else 1.0)  # (Q, M)
    if kind == "mean_l1":
        box_term = box_term / 4
    if kind == "no_weight":
        return class_term + box_term
    if kind == "weight_on_both":
        return w * (class_term + box_term)
    cost = class_term + w * box_term
    return cost.T if kind == "transposed" else cost


COST_MISTAKES = {
    "plus_prob": "the class term has the wrong sign: a high probability of the right class must "
    "make the match cheaper, so the cost is -p[label].",
    "log_prob": "the matching cost uses the probability itself, -p[label], not the log "
    "probability (DETR keeps the log for the loss).",
    "one_minus": "the class term is -p[label]; 1 - p[label] shifts every cost by 1 (the same "
    "matching, but not the cost asked for).",
    "shifted": "the class term reads column labels + 1; class k is column k of probs (column "
    "0 is a real class, 'no object' is the last column, K).",
    "l2": "the box term is the Euclidean (L2) distance; DETR's is the L1 distance, the sum of the "
    "four absolute differences.",
    "mean_l1": "the L1 distance is averaged over the four coordinates; sum them.",
    "no_weight": "the L1 term is not multiplied by l1_weight.",
    "weight_on_both": "l1_weight multiplies the class term too; it weights the L1 term only.",
    "transposed": "the matrix is transposed: rows are the predictions (queries), columns the "
    "targets, (Q, M).",
}


def _cost_case(draw: Draw, Q: int, M: int) -> tuple[Tensor, Tensor, Tensor, Tensor, float]:
    K = draw.integer(2, 5)
    return (
        torch.softmax(draw.normal(Q, K + 1), dim=-1),
        draw.uniform(Q, 4),
        draw.integers(0, K, (M,)),
        draw.uniform(M, 4),
        draw.choice([1.5, 2.0, 2.5, 3.0, 5.0, 6.0]),  # not 1 (no weight) nor 4 (mean L1)
    )


def _cost_hidden(draw: Draw) -> list[tuple[Tensor, Tensor, Tensor, Tensor, float]]:
    """More queries than targets; as many of each (a transposed matrix has the right shape);
    a single target."""
    Q = draw.integer(4, 7)
    square = draw.integer(2, 5)
    return [
        _cost_case(draw, Q, draw.integer(2, Q - 1)),
        _cost_case(draw, square, square),
        _cost_case(draw, draw.integer(2, 5), 1),
    ]


def _check_cost_case(
    ex: Exercise,
    fn: Callable,
    probs: Tensor,
    pred: Tensor,
    labels: Tensor,
    target: Tensor,
    w: float,
) -> None:
    out = ex.call(fn, probs, pred, labels, target, w, hints=COST_ERRORS)
    expected = _cost(probs, pred, labels, target, w)
    Q, M = len(pred), len(target)
    what = f"matching_cost for {Q} predictions, {M} targets and l1_weight {w:g}"
    _expect_shape(out, (Q, M), what, {(M, Q): COST_MISTAKES["transposed"]})
    expect_close(
        out,
        expected,
        what=what,
        mistakes={
            hint: (lambda k=kind: _cost(probs, pred, labels, target, w, k))
            for kind, hint in COST_MISTAKES.items()
        },
    )


def check_matching_cost(fn: Callable[..., Tensor], hidden: bool = False) -> None:
    """Learner's `matching_cost(probs, pred_boxes, labels, target_boxes, l1_weight)`:
    -probs[q, labels[m]] + l1_weight * |pred_q - target_m|_1.

    Shapes:
        probs (Q, K + 1); pred_boxes (Q, 4); labels (M,); target_boxes (M, 4)  ->  (Q, M)
    """
    with Exercise("matching_cost", hidden, COST_FORBIDDEN) as ex:
        if hidden:
            cases = _cost_hidden(ex.draw)
        else:
            Q, M, K, seed = 4, 2, 3, 0
            probs = torch.softmax(random_tensor(Q, K + 1, seed=seed), dim=-1)
            pred = torch.rand(
                Q, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
            )
            target = torch.rand(
                M, 4, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64
            )
            labels = torch.randint(0, K, (M,), generator=torch.Generator().manual_seed(seed))
            cases = [(probs, pred, labels, target, 5.0)]
        for case in cases:
            _check_cost_case(ex, fn, *case)


# --- 7. The set classification loss -----------------------------------------------------------

# F.cross_entropy is allowed (the notebook says so); DETR's whole loss, matching and cost are not.
SET_FORBIDDEN = Forbidden(
    python=(detection.set_prediction_loss, detection.match_cost, detection.hungarian_match)
)

SET_ERRORS = {
    "out of bounds for dimension": "pred_idx indexes the queries (the rows of logits) and "
    "tgt_idx the targets (labels): target[pred_idx] = labels[tgt_idx].",
    "numel() == 0": "there may be no targets at all (M = 0): then every query's target is 'no "
    "object'.",
    "out of bounds": "the 'no object' class is K, the last column of logits: logits.shape[1] - 1.",
}


def _set_loss(
    logits: Tensor, labels: Tensor, pred_idx: Tensor, tgt_idx: Tensor, eos: float, kind: str = ""
) -> Tensor:
    """The loss as the reference (kind "") or a likely mistake computes it."""
    Q, K1 = logits.shape
    no_object = K1 - 1
    if kind == "class_0":
        no_object = 0
    elif kind == "from_labels" and len(labels):
        no_object = int(labels.max()) + 1
    if kind == "matched_only":
        return _cross_entropy(logits[pred_idx], labels[tgt_idx])
    matched = labels[tgt_idx]  # query pred_idx[i] answers for target tgt_idx[i]
    if kind == "given_order":
        matched = labels
    elif kind == "inverse":  # target[pred_idx[tgt_idx]] = labels
        matched = labels[_argsort(tgt_idx)]
    target = torch.full((Q,), no_object, dtype=torch.long)
    target[pred_idx] = matched
    weight = torch.ones(K1, dtype=logits.dtype)
    weight[no_object] = 1.0 if kind == "no_down_weight" else eos
    if kind == "plain_mean":
        return (_cross_entropy(logits, target, reduction="none") * weight[target]).mean()
    if kind == "weight_vector_sum":
        per = _cross_entropy(logits, target, reduction="none")  # (Q,)
        return (per * weight[target]).sum() / weight.sum()
    return _cross_entropy(logits, target, weight=weight)


SET_MISTAKES = {
    "matched_only": "only the matched predictions count; every other query must learn to say "
    "'no object' (class K, the last one).",
    "no_down_weight": "the 'no object' class is not down-weighted: weight its term by "
    "no_object_weight (DETR uses 0.1), so that the many empty queries do not swamp the loss.",
    "plain_mean": "the weighted losses are divided by the number of queries; divide by the sum "
    "of the weights, as F.cross_entropy(..., weight=...) does.",
    "weight_vector_sum": "the weighted losses are divided by the sum of the class weights "
    "(weight.sum()); divide by the sum of the weights of the queries' targets, "
    "sum_q w[y_q], as F.cross_entropy(..., weight=...) does.",
    "class_0": "class 0 is used as 'no object'; 'no object' is class K, the last column of "
    "logits (logits.shape[1] - 1), and class 0 is a real class.",
    "from_labels": "the 'no object' class comes from the labels (labels.max() + 1); it is the "
    "last column of logits, logits.shape[1] - 1, whatever classes the targets have.",
    "given_order": "the targets are taken in the wrong order: query pred_idx[i] is matched to "
    "target tgt_idx[i], so its class is labels[tgt_idx[i]], not labels[i].",
    "inverse": "the matching is applied backwards: query pred_idx[i] gets labels[tgt_idx[i]] "
    "(target[pred_idx] = labels[tgt_idx]), not target[pred_idx[tgt_idx]] = labels.",
}


def _cycle(draw: Draw, M: int) -> Tensor:
    """A random permutation of M >= 3 items that is one M-cycle: neither the identity nor its
    own inverse, so the three orders of the labels all differ."""
    order = draw.sample(range(M), M)
    perm = [0] * M
    for i in range(M):
        perm[order[i]] = order[(i + 1) % M]
    return torch.tensor(perm)


def _not_all_below(pred_idx: Tensor, M: int, Q: int) -> Tensor:
    """The matched queries, one of them at M or beyond (Q - 1 if none is), so that indices
    swapped (labels[pred_idx]) cannot go unnoticed."""
    if int(pred_idx.max()) < M:
        pred_idx[0] = Q - 1
    return pred_idx


def _eos(draw: Draw) -> float:
    return draw.choice([0.05, 0.1, 0.15, 0.2, 0.25, 0.3])  # two digits: shown as given


def _set_hidden(draw: Draw) -> list[tuple[Tensor, Tensor, Tensor, Tensor, float]]:
    """First: M >= 3 distinct labels, none the last real class, matched through an M-cycle,
    two queries or more left unmatched. Then: random labels (repeats, the last class possible)
    and one query left unmatched. Last: no targets at all (M = 0)."""
    M = draw.integer(3, 5)
    Q, K = M + draw.integer(2, 3), M + draw.integer(2, 3)
    first = (
        draw.normal(Q, K + 1, grad=True),
        torch.tensor(draw.sample(range(K - 1), M)),
        _not_all_below(draw.permutation(Q)[:M], M, Q),
        _cycle(draw, M),
        _eos(draw),
    )
    M2 = draw.integer(2, 4)
    K2 = draw.integer(2, 4)
    second = (
        draw.normal(M2 + 1, K2 + 1, grad=True),
        draw.integers(0, K2, (M2,)),
        draw.permutation(M2 + 1)[:M2],
        draw.permutation(M2),
        _eos(draw),
    )
    Q3, K3 = draw.integer(3, 6), draw.integer(2, 4)
    empty = torch.zeros(0, dtype=torch.long)
    none = (draw.normal(Q3, K3 + 1, grad=True), empty, empty.clone(), empty.clone(), _eos(draw))
    return [first, second, none]


def _check_set_case(
    ex: Exercise,
    fn: Callable,
    logits: Tensor,
    labels: Tensor,
    pred_idx: Tensor,
    tgt_idx: Tensor,
    eos: float,
) -> None:
    out = ex.call(fn, logits, labels, pred_idx, tgt_idx, eos, hints=SET_ERRORS)
    expected = _set_loss(logits, labels, pred_idx, tgt_idx, eos)
    (Q, K1), M = logits.shape, len(labels)
    ld = logits.detach()
    mistakes = {
        hint: (lambda k=kind: _set_loss(ld, labels, pred_idx, tgt_idx, eos, k))
        for kind, hint in SET_MISTAKES.items()
        if M or kind != "matched_only"  # no matched query: its loss is NaN
    }
    what = f"set_classification_loss for {Q} queries, {M} targets, {K1 - 1} classes and "
    what += f"no_object_weight {eos:g}"
    expect_close(out, expected, what=what, mistakes=mistakes)
    if logits.requires_grad:
        ex.expect_backward(out, expected, {"logits": logits}, "set_classification_loss")


def check_set_classification_loss(fn: Callable[..., Tensor], hidden: bool = False) -> None:
    """Learner's `set_classification_loss(logits (Q, K + 1), labels (M,), pred_idx (M,),
    tgt_idx (M,), no_object_weight) -> scalar`."""
    with Exercise("set_classification_loss", hidden, SET_FORBIDDEN) as ex:
        if hidden:
            cases = _set_hidden(ex.draw)
        else:
            Q, M, K, seed = 4, 2, 3, 0
            g = torch.Generator().manual_seed(seed)
            labels = torch.randint(0, K, (M,), generator=g)
            pred_idx = torch.randperm(Q, generator=g)[:M]
            tgt_idx = torch.randperm(M, generator=g)
            cases = [(random_tensor(Q, K + 1, seed=seed), labels, pred_idx, tgt_idx, 0.1)]
        for case in cases:
            _check_set_case(ex, fn, *case)


# --- 8. InfoNCE -------------------------------------------------------------------------------

# F.normalize and F.cross_entropy are allowed (the notebook says so); CLIP's loss is not.
NCE_FORBIDDEN = Forbidden(python=(multimodal.info_nce, multimodal.TinyCLIP.loss))


def _info_nce(images: Tensor, texts: Tensor, T: float, kind: str = "") -> Tensor:
    if kind == "normalised_over_batch":
        images, texts = _normalize(images, dim=0), _normalize(texts, dim=0)
    elif kind != "no_normalize":
        images, texts = _normalize(images, dim=-1), _normalize(texts, dim=-1)
    logits = images @ texts.T  # (N, N)
    if kind != "no_temperature":
        logits = logits * T if kind == "temperature_inverted" else logits / T
    labels = torch.arange(len(logits))
    rows, columns = _cross_entropy(logits, labels), _cross_entropy(logits.T, labels)
    if kind == "rows_only":
        return rows
    if kind == "columns_only":
        return columns
    if kind == "summed":
        return rows + columns
    return (rows + columns) / 2


NCE_MISTAKES = {
    "no_normalize": "the embeddings are not normalised: CLIP's similarity is the cosine, so divide "
    "each embedding by its norm (F.normalize(x, dim=-1)) first.",
    "normalised_over_batch": "the embeddings are normalised along the batch (dim 0); normalise "
    "each embedding, each row, to unit length: F.normalize(x, dim=-1).",
    "no_temperature": "the similarities are not divided by the temperature: logits = "
    "image_emb @ text_emb.T / temperature (a small temperature sharpens the softmax).",
    "temperature_inverted": "the temperature is inverted: divide the similarities by the "
    "temperature (a small temperature sharpens the softmax), don't multiply.",
    "rows_only": "only one direction counts: the image-to-text cross-entropy (a softmax over "
    "each row, F.cross_entropy(logits, labels)) is there, but the text-to-image one (a softmax "
    "over each column, F.cross_entropy(logits.T, labels)) is missing or repeats the rows. "
    "CLIP's loss averages the two.",
    "columns_only": "the softmax is over the wrong axis: both cross-entropies take it over the "
    "columns (or only the text-to-image one is there). One is over each row, "
    "F.cross_entropy(logits, labels), the other over each column, "
    "F.cross_entropy(logits.T, labels); CLIP's loss averages the two.",
    "summed": "the two cross-entropies are added; CLIP's loss is their mean: divide by 2.",
}


NCE_ERRORS = {
    "batch_size": "the labels are torch.arange(N), one per pair (the rows of logits), not one "
    "per dimension of the embeddings (d)."
}


def _nce_hidden(draw: Draw) -> list[tuple[Tensor, Tensor, float]]:
    """Embeddings far from unit length (images long, texts short), N != d, a temperature below
    1, in two sizes."""
    cases = []
    for _ in range(2):
        N = draw.integer(3, 7)
        d = draw.choice([d for d in range(2, 7) if d != N])
        images = draw.normal(N, d, scale=draw.choice([2.0, 3.0, 4.0]), grad=True)
        texts = draw.normal(N, d, scale=draw.choice([0.3, 0.4, 0.5]), grad=True)
        cases.append((images, texts, draw.choice([0.05, 0.07, 0.1, 0.2, 0.3, 0.5])))
    return cases


def _check_nce_case(ex: Exercise, fn: Callable, images: Tensor, texts: Tensor, T: float) -> None:
    out = ex.call(fn, images, texts, T, hints=NCE_ERRORS)
    expected = _info_nce(images, texts, T)
    idd, tdd = images.detach(), texts.detach()
    N, d = images.shape
    expect_close(
        out,
        expected,
        what=f"info_nce for N = {N} pairs of {d}-dimensional embeddings, temperature {T:g}",
        mistakes={
            hint: (lambda k=kind: _info_nce(idd, tdd, T, k)) for kind, hint in NCE_MISTAKES.items()
        },
    )
    if images.requires_grad:
        ex.expect_backward(out, expected, {"image_emb": images, "text_emb": texts}, "info_nce")


def check_info_nce(fn: Callable[[Tensor, Tensor, float], Tensor], hidden: bool = False) -> None:
    """Learner's `info_nce(image_emb (N, d), text_emb (N, d), temperature) -> scalar`: the
    symmetric contrastive loss of CLIP."""
    with Exercise("info_nce", hidden, NCE_FORBIDDEN) as ex:
        if hidden:
            cases = _nce_hidden(ex.draw)
        else:
            cases = [(random_tensor(4, 3, seed=0), random_tensor(4, 3, seed=1), 0.5)]
        for images, texts, T in cases:
            _check_nce_case(ex, fn, images, texts, T)


watch_module(__name__)
