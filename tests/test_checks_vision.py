"""The Chapter 5 checks: right answers written differently pass, every likely mistake gets its
own hint whatever the hidden tests draw, and neither the reference nor any torch operator that
computes the same thing (a convolution, an unfold) can stand in for the learner's code."""

from __future__ import annotations

import functools
import importlib.util
import math
import runpy
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import expect_hint, expect_pass
from tests.grading import solution_namespace
from tutorlib import detection, multimodal, vision
from tutorlib.checks import vision as checks

NOT_ALLOWED = "Not allowed in this exercise"


@pytest.fixture(scope="module")
def solution() -> dict:
    return solution_namespace("05_vision")


CHECKS = [
    ("patchify", checks.check_patchify),
    ("patch_embedding", checks.check_patch_embedding),
    ("add_cls_and_positions", checks.check_add_cls_and_positions),
    ("attention_rollout", checks.check_attention_rollout),
    ("box_iou", checks.check_box_iou),
    ("matching_cost", checks.check_matching_cost),
    ("set_classification_loss", checks.check_set_classification_loss),
    ("info_nce", checks.check_info_nce),
]


@pytest.mark.parametrize("name, check", CHECKS)
def test_the_solutions_pass_and_print_ok(solution, name, check, capsys) -> None:
    expect_pass(check, solution[name])
    assert capsys.readouterr().out.startswith("OK:")


@pytest.mark.parametrize("name, check", CHECKS)
def test_an_unimplemented_answer_says_so(name, check) -> None:
    def stub(*args):
        raise NotImplementedError()

    expect_hint(check, stub, "not implemented yet", hidden=False)
    expect_hint(check, stub, "not implemented yet", seeds=["stub"])


def refused(check, cheat, hidden: bool = True) -> None:
    """`cheat` is refused by the visible tests and, under one seed, by the hidden ones."""
    expect_hint(check, cheat, NOT_ALLOWED, hidden=False)
    if hidden:
        expect_hint(check, cheat, NOT_ALLOWED, seeds=["cheat"])


# --- 1. Patchify ----------------------------------------------------------------------------


def _patchify(order=(0, 2, 4, 1, 3, 5), plain=False, strided=False):
    def patchify(images, P):
        B, C, H, W = images.shape
        if plain:
            return images.reshape(B, (H // P) * (W // P), C * P * P)
        if strided:
            x = images.reshape(B, C, P, H // P, P, W // P).permute(0, 3, 5, 1, 2, 4)
        else:
            x = images.reshape(B, C, H // P, P, W // P, P).permute(*order)
        return x.reshape(B, (H // P) * (W // P), C * P * P)

    return patchify


def test_patchify_written_another_way_passes(solution) -> None:
    def by_loops(images, P):  # one patch at a time, row by row
        B, C, H, W = images.shape
        patches = [
            images[:, :, r : r + P, c : c + P].reshape(B, -1)
            for r in range(0, H, P)
            for c in range(0, W, P)
        ]
        return torch.stack(patches, dim=1)

    def by_transposes(images, P):  # split the columns first, then the rows
        B, C, H, W = images.shape
        x = images.reshape(B, C, H, W // P, P).transpose(2, 3)  # (B, C, cols, H, P)
        x = x.reshape(B, C, W // P, H // P, P, P).permute(0, 3, 2, 1, 4, 5)
        return x.flatten(3).flatten(1, 2)

    def by_index(images, P):  # gather the pixels of every patch by their flat index
        B, C, H, W = images.shape
        rows, cols = torch.arange(H // P), torch.arange(W // P)
        r = rows[:, None, None, None, None] * P + torch.arange(P)[None, None, None, :, None]
        c = cols[None, :, None, None, None] * P + torch.arange(P)[None, None, None, None, :]
        ch = torch.arange(C)[None, None, :, None, None]
        flat = (ch * H * W + r * W + c).reshape(-1)
        return images.reshape(B, -1)[:, flat].reshape(B, (H // P) * (W // P), C * P * P)

    for candidate in (by_loops, by_transposes, by_index, solution["patchify"]):
        expect_pass(checks.check_patchify, candidate)


@pytest.mark.parametrize(
    "candidate, hint, visible",
    [
        (_patchify(order=(0, 4, 2, 1, 3, 5)), "column-major", True),
        (_patchify(plain=True), "plain reshape", True),
        (_patchify(order=(0, 2, 4, 3, 5, 1)), "(P, P, C)", False),  # the worked image is grey
        (_patchify(order=(0, 2, 4, 1, 5, 3)), "inside each patch", True),
        (_patchify(strided=True), "pixels H/P apart", True),
    ],
)
def test_patchify_mistakes_are_named(candidate, hint: str, visible: bool) -> None:
    expect_hint(checks.check_patchify, candidate, hint)
    if visible:
        expect_hint(checks.check_patchify, candidate, hint, hidden=False)


def test_cutting_patches_with_a_library_op_is_refused() -> None:
    from tutorlib.vision import patchify as aliased

    def by_unfold(images, P):  # F.unfold: (B, C*P*P, N)
        return F.unfold(images, P, stride=P).transpose(1, 2)

    def by_tensor_unfold(images, P):  # sliding windows with step P
        B, C, H, W = images.shape
        x = images.unfold(2, P, P).unfold(3, P, P)  # (B, C, rows, cols, P, P)
        return x.permute(0, 2, 3, 1, 4, 5).reshape(B, -1, C * P * P)

    def by_im2col(images, P):
        return torch._C._nn.im2col(images, (P, P), (1, 1), (0, 0), (P, P)).transpose(1, 2)

    def by_module(images, P):
        return nn.Unfold(P, stride=P)(images).transpose(1, 2)

    copy = runpy.run_path(vision.__file__)["patchify"]
    cheats = [by_unfold, by_tensor_unfold, by_im2col, by_module, aliased, copy]
    cheats.append(functools.lru_cache(maxsize=None)(vision.patchify))
    for cheat in cheats:
        refused(checks.check_patchify, cheat)


def test_wiping_the_input_no_longer_passes() -> None:
    """The old checks computed the reference after the learner's call, from the same tensor:
    zeroing the images and returning zeros passed."""

    def wipe(images, P):
        B, C, H, W = images.shape
        images.zero_()
        return torch.zeros(B, (H // P) * (W // P), C * P * P, dtype=images.dtype)

    expect_hint(checks.check_patchify, wipe, "changed an input", hidden=False)
    expect_hint(checks.check_patchify, wipe, "changed an input")


# --- 2. Patch embedding ---------------------------------------------------------------------


def _embedding(solution, kind: str = ""):
    patchify = solution["patchify"]

    def patch_embedding(images, weight, bias, P):
        d = weight.shape[0]
        patches = patchify(images, P)
        kernel = {
            "channels_last": weight.permute(0, 2, 3, 1),
            "transposed_kernel": weight.transpose(2, 3),
        }.get(kind, weight)
        if kind == "reshape":
            return patches @ weight.reshape(-1, d) + bias
        out = patches @ kernel.reshape(d, -1).T
        if kind == "no_bias":
            return out
        out = out + bias
        return out.transpose(1, 2) if kind == "conv_layout" else out

    return patch_embedding


def test_patch_embedding_written_another_way_passes(solution) -> None:
    patchify = solution["patchify"]

    def by_linear(images, weight, bias, P):
        return F.linear(patchify(images, P), weight.flatten(1), bias)

    def by_einsum(images, weight, bias, P):  # no patchify: the sum over each window
        B, C, H, W = images.shape
        x = images.reshape(B, C, H // P, P, W // P, P)
        out = torch.einsum("bcrpsq,dcpq->brsd", x, weight) + bias  # (B, rows, cols, d)
        return out.reshape(B, -1, weight.shape[0])

    def both_read_by_columns(images, weight, bias, P):  # patch and kernel in one other order
        B, C, H, W = images.shape
        x = images.reshape(B, C, H // P, P, W // P, P).permute(0, 2, 4, 1, 5, 3)
        patches = x.reshape(B, -1, C * P * P)
        return patches @ weight.transpose(2, 3).reshape(weight.shape[0], -1).T + bias

    for candidate in (by_linear, by_einsum, both_read_by_columns, solution["patch_embedding"]):
        expect_pass(checks.check_patch_embedding, candidate)


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("channels_last", "(d, P, P, C)", False),  # the worked image is grey
        ("transposed_kernel", "read column by column", True),
        ("reshape", "reshaped straight to (C*P*P, d)", True),
        ("no_bias", "bias is missing", True),
        ("conv_layout", "(B, d, N)", True),
    ],
)
def test_patch_embedding_mistakes_are_named(solution, kind: str, hint: str, visible) -> None:
    candidate = _embedding(solution, kind)
    expect_hint(checks.check_patch_embedding, candidate, hint)
    if visible:
        expect_hint(checks.check_patch_embedding, candidate, hint, hidden=False)


@pytest.mark.parametrize(
    "patchify, hint",
    [
        (_patchify(order=(0, 4, 2, 1, 3, 5)), "column by column: check your patchify"),
        (_patchify(order=(0, 2, 4, 3, 5, 1)), "(P, P, C) but the kernel"),
        (_patchify(plain=True), "plain reshape: check your patchify"),
    ],
)
def test_a_wrong_patchify_is_pointed_at(patchify, hint: str) -> None:
    def patch_embedding(images, weight, bias, P):
        return patchify(images, P) @ weight.reshape(weight.shape[0], -1).T + bias

    expect_hint(checks.check_patch_embedding, patch_embedding, hint)


def test_a_convolution_or_an_unfold_under_any_name_is_refused(solution) -> None:
    conv = F.conv2d  # an alias made before the test runs
    patchify = solution["patchify"]

    def rows(out):  # (B, d, rows, cols) -> (B, N, d)
        return out.flatten(2).transpose(1, 2)

    def by_conv1d(images, weight, bias, P):  # a 1-wide convolution of the patches
        kernel = weight.reshape(weight.shape[0], -1, 1)
        return F.conv1d(patchify(images, P).transpose(1, 2), kernel, bias).transpose(1, 2)

    def by_conv3d(images, weight, bias, P):
        out = F.conv3d(images[:, :, None], weight[:, :, None], bias, stride=(1, P, P))
        return rows(out[:, :, 0])

    def by_module(images, weight, bias, P):
        layer = nn.Conv2d(images.shape[1], weight.shape[0], P, stride=P).double()
        layer.weight.data, layer.bias.data = weight.detach(), bias.detach()
        return rows(layer(images))

    def by_tensor_unfold(images, weight, bias, P):
        B, C, H, W = images.shape
        x = images.unfold(2, P, P).unfold(3, P, P).permute(0, 2, 3, 1, 4, 5)
        return x.reshape(B, -1, C * P * P) @ weight.reshape(weight.shape[0], -1).T + bias

    def by_reference_module(images, weight, bias, P):
        embed = vision.PatchEmbedding(images.shape[1], P, weight.shape[0]).double()
        embed.proj.weight.data, embed.proj.bias.data = weight.detach().flatten(1), bias.detach()
        return embed(images)

    def by_reference_patchify(images, weight, bias, P):
        return vision.patchify(images, P) @ weight.flatten(1).T + bias

    cheats = [
        lambda i, w, b, P: rows(conv(i, w, b, stride=P)),
        lambda i, w, b, P: rows(torch.conv2d(i, w, b, stride=P)),
        lambda i, w, b, P: rows(
            torch.ops.aten.convolution(i, w, b, [P, P], [0, 0], [1, 1], False, [0, 0], 1)
        ),
        lambda i, w, b, P: rows(torch._C._VariableFunctions.conv2d(i, w, b, P)),
        lambda i, w, b, P: F.unfold(i, P, stride=P).transpose(1, 2) @ w.flatten(1).T + b,
        by_conv1d,
        by_conv3d,
        by_module,
        by_tensor_unfold,
        by_reference_module,
        by_reference_patchify,
        lambda i, w, b, P: rows(checks._embed_reference(i, w, b, P)),
    ]
    for cheat in cheats:
        refused(checks.check_patch_embedding, cheat)


# --- 3. The class token and the positions ---------------------------------------------------


def _cls(kind: str = ""):
    def add_cls_and_positions(tokens, cls, pos):
        B, N, C = tokens.shape
        row = cls.expand(B, 1, C)
        if kind == "last":
            return torch.cat([tokens, row], dim=1) + pos
        if kind == "no_cls_position":
            return torch.cat([row, tokens + pos[1:]], dim=1)
        if kind == "shifted":
            return torch.cat([row, tokens + pos[:N]], dim=1)
        if kind == "no_patch_positions":
            return torch.cat([row + pos[0], tokens], dim=1)
        if kind == "detached":
            return torch.cat([row.detach(), tokens], dim=1) + pos
        return torch.cat([row, tokens], dim=1) + pos

    return add_cls_and_positions


def test_cls_written_another_way_passes() -> None:
    def by_buffer(tokens, cls, pos):  # fill a new tensor, then add the positions
        B, N, C = tokens.shape
        out = tokens.new_zeros(B, N + 1, C)
        out[:, 0] = cls
        out[:, 1:] = tokens
        return out + pos.unsqueeze(0)

    def by_pad(tokens, cls, pos):  # pad a row of zeros in front, then add the token there
        padded = F.pad(tokens, (0, 0, 1, 0))
        first = torch.zeros_like(pos)
        first[0] = 1
        return padded + first[None, :, :1] * cls + pos

    expect_pass(checks.check_add_cls_and_positions, by_buffer)
    expect_pass(checks.check_add_cls_and_positions, by_pad)


@pytest.mark.parametrize(
    "kind, hint",
    [
        ("last", "appended at the end"),
        ("no_cls_position", "added after the positions"),
        ("shifted", "rows 1..N"),
        ("no_patch_positions", "only the class token got a position"),
    ],
)
def test_cls_mistakes_are_named(kind: str, hint: str) -> None:
    expect_hint(checks.check_add_cls_and_positions, _cls(kind), hint)
    expect_hint(checks.check_add_cls_and_positions, _cls(kind), hint, hidden=False)


def test_a_detached_class_token_gets_no_gradient() -> None:
    checks.check_add_cls_and_positions(_cls("detached"), hidden=False)  # the values are right
    expect_hint(checks.check_add_cls_and_positions, _cls("detached"), "No gradient reaches cls")


# --- 4. Attention rollout -------------------------------------------------------------------


def _rollout(kind: str = ""):
    def attention_rollout(attentions):
        result = None
        for w in attentions:
            a = w.amax(1) if kind == "max" else w.mean(0 if kind == "batch" else 1)
            eye = torch.eye(a.shape[-1], dtype=a.dtype)
            if kind == "unnormalised":
                a = a + eye
            elif kind != "no_residual":
                a = 0.5 * a + 0.5 * eye
                a = a / a.sum(-1, keepdim=True)
            if result is None or kind == "last":
                result = a
            elif kind == "reversed":
                result = result @ a
            elif kind == "summed":
                result = result + a
            else:
                result = a @ result
        return result

    return attention_rollout


def test_rollout_written_another_way_passes() -> None:
    def by_reduce(attentions):  # fold the layers, starting from the identity
        S = attentions[0].shape[-1]
        eye = torch.eye(S, dtype=attentions[0].dtype)
        layers = [(a.sum(1) / a.shape[1] + eye) / 2 for a in attentions]
        return functools.reduce(lambda r, a: torch.bmm(a, r), layers, eye.expand_as(layers[0]))

    def by_einsum(attentions):  # renormalised explicitly, multiplied by einsum
        result = None
        for w in attentions:
            a = torch.einsum("bhst->bst", w) / w.shape[1] + torch.eye(w.shape[-1])
            a = a / a.sum(-1, keepdim=True)
            result = a if result is None else torch.einsum("bst,btu->bsu", a, result)
        return result

    expect_pass(checks.check_attention_rollout, by_reduce)
    expect_pass(checks.check_attention_rollout, by_einsum)


@pytest.mark.parametrize(
    "kind, hint",
    [
        ("no_residual", "residual connection is missing"),
        ("reversed", "wrong order"),
        ("max", "by their maximum"),
        ("summed", "are summed"),
        ("unnormalised", "rows that sum to 2"),
        ("last", "only the last layer"),
        ("batch", "not over the batch"),
    ],
)
def test_rollout_mistakes_are_named(kind: str, hint: str) -> None:
    expect_hint(checks.check_attention_rollout, _rollout(kind), hint)
    if kind != "batch":  # the worked example has one image and two heads: a shape error there
        expect_hint(checks.check_attention_rollout, _rollout(kind), hint, hidden=False)


def test_the_rollout_reference_is_refused_under_any_name(monkeypatch) -> None:
    def decorate(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            return f(*args, **kwargs)

        return wrapper

    spec = importlib.util.spec_from_file_location("another_vision", vision.__file__)
    another = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "another_vision", another)  # for its dataclasses
    spec.loader.exec_module(another)
    for cheat in (
        vision.attention_rollout,
        decorate(vision.attention_rollout),
        another.attention_rollout,
        lambda attentions: checks._rollout_variant(attentions, ""),
    ):
        refused(checks.check_attention_rollout, cheat)


def test_changing_the_given_attentions_is_refused() -> None:
    def in_place(attentions):
        result = None
        for w in attentions:
            w.mul_(0.5).add_(0.5 * torch.eye(w.shape[-1], dtype=w.dtype))  # residual, in place
            a = w.mean(1)
            result = a if result is None else a @ result
        return result

    expect_hint(checks.check_attention_rollout, in_place, "changed an input", hidden=False)


# --- 5. Box IoU -------------------------------------------------------------------------------


def _area(b, kind=""):
    if kind == "xywh":
        return b[:, 2] * b[:, 3]
    if kind == "mixed":
        return (b[:, 2] - b[:, 1]) * (b[:, 3] - b[:, 0])
    if kind == "x0x1y0y1":
        return (b[:, 1] - b[:, 0]) * (b[:, 3] - b[:, 2])
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def _box_iou(kind: str = ""):
    def box_iou(a, b):
        low, high = (
            (torch.minimum, torch.maximum) if kind == "hull" else (torch.maximum, torch.minimum)
        )
        size = high(a[:, None, 2:], b[None, :, 2:]) - low(a[:, None, :2], b[None, :, :2])
        if kind not in ("no_clamp", "clamp_product"):
            size = size.clamp(min=0)
        inter = size[..., 0] * size[..., 1]
        if kind == "clamp_product":
            inter = inter.clamp(min=0)
        union = _area(a, kind)[:, None] + _area(b, kind)[None, :]
        iou = inter / (union if kind == "twice" else union - inter)
        return iou.T if kind == "transposed" else iou

    return box_iou


def test_box_iou_written_another_way_passes() -> None:
    def by_loops(a, b):  # pair by pair, with Python numbers
        out = torch.zeros(len(a), len(b), dtype=a.dtype)
        for i, (x0, y0, x1, y1) in enumerate(a.tolist()):
            for j, (u0, v0, u1, v1) in enumerate(b.tolist()):
                w = max(0.0, min(x1, u1) - max(x0, u0))
                h = max(0.0, min(y1, v1) - max(y0, v0))
                inter = w * h
                out[i, j] = inter / ((x1 - x0) * (y1 - y0) + (u1 - u0) * (v1 - v0) - inter)
        return out

    def by_relu_and_eps(a, b):  # relu for the clamp, a small epsilon in the denominator
        wh = F.relu(torch.min(a[:, None, 2:], b[:, 2:]) - torch.max(a[:, None, :2], b[:, :2]))
        inter = wh.prod(-1)
        area = lambda x: (x[:, 2:] - x[:, :2]).prod(-1)  # noqa: E731
        return inter / (area(a)[:, None] + area(b) - inter + 1e-9)

    expect_pass(checks.check_box_iou, by_loops)
    expect_pass(checks.check_box_iou, by_relu_and_eps)


CLAMP_EACH = "clamp the width and the height of the intersection at 0, each"


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("no_clamp", CLAMP_EACH, CLAMP_EACH),
        # the worked example has no boxes apart along one axis only: the same advice there
        ("clamp_product", "not their product", CLAMP_EACH),
        ("twice", "counts the intersection twice", "counts the intersection twice"),
        ("hull", "encloses both", "encloses both"),
        ("xywh", "not (x, y, width, height)", "not (x, y, width, height)"),
        ("mixed", "the wrong corners", None),  # every worked box has x0 = y0: it passes
        # zero areas in the worked example: NaN there, where the mistake gives NaN too
        ("x0x1y0y1", "(x0, x1, y0, y1)", "(x0, x1, y0, y1)"),
        ("transposed", "the result is (N, M)", "the result is (N, M)"),
    ],
)
def test_box_iou_mistakes_are_named(kind: str, hint: str, visible: str | None) -> None:
    expect_hint(checks.check_box_iou, _box_iou(kind), hint)
    if visible:
        expect_hint(checks.check_box_iou, _box_iou(kind), visible, hidden=False)
    else:
        checks.check_box_iou(_box_iou(kind), hidden=False)


def test_one_value_per_pair_is_named() -> None:
    def elementwise(a, b):  # boxes1[i] with boxes2[i] only
        size = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0)
        inter = size.prod(-1)
        return inter / (_area(a) + _area(b) - inter)

    expect_hint(checks.check_box_iou, elementwise, "compare every box of boxes1")


def test_the_box_references_are_refused() -> None:
    fresh = runpy.run_path(detection.__file__)
    cheats = [
        detection.box_iou,
        functools.partial(detection.box_iou),
        fresh["box_iou"],
        lambda a, b: (
            detection._intersection_union(a, b)[0] / detection._intersection_union(a, b)[1]
        ),
        lambda a, b: checks._iou(a, b),
    ]
    for cheat in cheats:
        refused(checks.check_box_iou, cheat)


# --- 6. The matching cost ---------------------------------------------------------------------


def _cost(kind: str = ""):
    def matching_cost(probs, pred, labels, target, w):
        p = probs[:, labels]
        cls = {"plus": p, "log": -p.log(), "one_minus": 1 - p}.get(kind, -p)
        diff = pred[:, None, :] - target[None, :, :]
        box = diff.norm(dim=-1) if kind == "l2" else diff.abs().sum(-1)
        if kind == "mean":
            box = diff.abs().mean(-1)
        if kind == "no_weight":
            return cls + box
        if kind == "both":
            return w * (cls + box)
        cost = cls + w * box
        return cost.T if kind == "transposed" else cost

    return matching_cost


def test_matching_cost_written_another_way_passes() -> None:
    def by_cdist_and_gather(probs, pred, labels, target, w):
        cls = -probs.gather(1, labels.expand(len(probs), -1))
        return cls + w * torch.cdist(pred, target, p=1)

    def by_one_hot(probs, pred, labels, target, w):
        one_hot = F.one_hot(labels, probs.shape[1]).to(probs.dtype)  # (M, K + 1)
        return w * (pred.unsqueeze(1) - target.unsqueeze(0)).abs().sum(-1) - probs @ one_hot.T

    expect_pass(checks.check_matching_cost, by_cdist_and_gather)
    expect_pass(checks.check_matching_cost, by_one_hot)


@pytest.mark.parametrize(
    "kind, hint",
    [
        ("plus", "wrong sign"),
        ("log", "not the log"),
        ("one_minus", "shifts every cost by 1"),
        ("l2", "Euclidean"),
        ("mean", "averaged over the four coordinates"),
        ("no_weight", "not multiplied by l1_weight"),
        ("both", "multiplies the class term too"),
        ("transposed", "transposed"),
    ],
)
def test_matching_cost_mistakes_are_named(kind: str, hint: str) -> None:
    expect_hint(checks.check_matching_cost, _cost(kind), hint)
    expect_hint(checks.check_matching_cost, _cost(kind), hint, hidden=False)


def test_tutorlibs_cost_is_refused() -> None:
    def through_logits(probs, pred, labels, target, w):  # softmax(log p) = p; no GIoU term
        return detection.match_cost(probs.log(), pred, labels, target, 1.0, w, 0.0)

    refused(checks.check_matching_cost, through_logits)


def test_wiping_the_inputs_no_longer_passes() -> None:
    """The old checks computed the reference after the learner's call, from the same tensors:
    zeroing them and returning zeros passed, visible and hidden."""

    def wipe(probs, pred, labels, target, w):
        for t in (probs, pred, target):
            t.zero_()
        return torch.zeros(len(pred), len(target), dtype=probs.dtype)

    expect_hint(checks.check_matching_cost, wipe, "changed an input", hidden=False)
    expect_hint(checks.check_matching_cost, wipe, "changed an input")


# --- 7. The set classification loss -------------------------------------------------------------


def _set_loss(kind: str = ""):
    def set_classification_loss(logits, labels, pred_idx, tgt_idx, eos):
        Q, K1 = logits.shape
        if kind == "matched_only":
            return F.cross_entropy(logits[pred_idx], labels[tgt_idx])
        no_object = {"class_0": 0, "from_labels": int(labels.max()) + 1 if len(labels) else 0}
        no_object = no_object.get(kind, K1 - 1)
        target = torch.full((Q,), no_object, dtype=torch.long)
        if kind == "order":
            target[pred_idx] = labels
        elif kind == "inverse":
            target[pred_idx[tgt_idx]] = labels
        else:
            target[pred_idx] = labels[tgt_idx]
        weight = torch.ones(K1, dtype=logits.dtype)
        weight[no_object] = 1.0 if kind == "no_weight" else eos
        per = F.cross_entropy(logits, target, reduction="none") * weight[target]
        if kind == "plain_mean":
            return per.mean()
        if kind == "weight_sum":
            return per.sum() / weight.sum()
        return per.sum() / weight[target].sum()

    return set_classification_loss


def test_set_loss_written_another_way_passes() -> None:
    def by_log_softmax(logits, labels, pred_idx, tgt_idx, eos):
        Q, K1 = logits.shape
        target = torch.full((Q,), K1 - 1)
        for i in range(len(pred_idx)):  # one match at a time
            target[pred_idx[i]] = labels[tgt_idx[i]]
        w = torch.where(target == K1 - 1, eos, 1.0).to(logits.dtype)
        nll = -logits.log_softmax(-1).gather(1, target[:, None])[:, 0]
        return (w * nll).sum() / w.sum()

    def by_masks(logits, labels, pred_idx, tgt_idx, eos):
        Q, K1 = logits.shape
        matched = torch.zeros(Q, dtype=torch.bool)
        matched[pred_idx] = True
        target = torch.full((Q,), K1 - 1, dtype=torch.long).index_put((pred_idx,), labels[tgt_idx])
        nll = torch.logsumexp(logits, -1) - logits[torch.arange(Q), target]
        w = torch.ones(Q, dtype=logits.dtype).masked_fill(~matched, eos)
        return (w * nll).sum() / (matched.sum() + eos * (~matched).sum())

    expect_pass(checks.check_set_classification_loss, by_log_softmax)
    expect_pass(checks.check_set_classification_loss, by_masks)


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("matched_only", "only the matched predictions", True),
        ("no_weight", "not down-weighted", True),
        ("plain_mean", "divided by the number of queries", True),
        ("weight_sum", "sum of the class weights", True),
        ("class_0", "class 0 is used as 'no object'", True),
        ("from_labels", "comes from the labels", False),  # the worked labels hold class K - 1
        ("order", "wrong order", True),
        ("inverse", "applied backwards", False),  # the worked matching is its own inverse
    ],
)
def test_set_loss_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    expect_hint(checks.check_set_classification_loss, _set_loss(kind), hint)
    if visible:
        expect_hint(checks.check_set_classification_loss, _set_loss(kind), hint, hidden=False)
    else:  # right for the worked example: only the hidden tests catch it
        checks.check_set_classification_loss(_set_loss(kind), hidden=False)


def test_no_targets_at_all_is_a_hidden_case() -> None:
    def crashes_without_targets(logits, labels, pred_idx, tgt_idx, eos):
        assert len(labels), "no labels"
        return _set_loss()(logits, labels, pred_idx, tgt_idx, eos)

    checks.check_set_classification_loss(crashes_without_targets, hidden=False)
    expect_hint(checks.check_set_classification_loss, crashes_without_targets, "no labels")


def test_detrs_loss_is_refused() -> None:
    def via_tutorlib(logits, labels, pred_idx, tgt_idx, eos):
        boxes = torch.rand(1, logits.shape[0], 4, dtype=logits.dtype)
        targets = [(labels, torch.rand(len(labels), 4, dtype=logits.dtype))]
        return detection.set_prediction_loss(logits[None], boxes, targets, eos)["class"]

    refused(checks.check_set_classification_loss, via_tutorlib)
    refused(checks.check_set_classification_loss, lambda *args: checks._set_loss(*args))


# --- 8. InfoNCE ---------------------------------------------------------------------------------


def _nce(kind: str = ""):
    def info_nce(i, t, T):
        if kind == "dim0":
            i, t = F.normalize(i, dim=0), F.normalize(t, dim=0)
        elif kind != "raw":
            i, t = F.normalize(i, dim=-1), F.normalize(t, dim=-1)
        logits = i @ t.T * (T if kind == "invert" else 1 / T)
        labels = torch.arange(len(logits))
        if kind == "rows":
            return F.cross_entropy(logits, labels)
        if kind == "rows_twice":
            return (F.cross_entropy(logits, labels) + F.cross_entropy(logits, labels)) / 2
        if kind == "columns_twice":  # a hand-written softmax over dim 0, in both terms
            return -(logits.log_softmax(dim=0).diagonal().mean() * 2) / 2
        if kind == "sum":
            return F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    return info_nce


def test_info_nce_written_another_way_passes() -> None:
    def by_logsumexp(i, t, T):  # by hand: both directions from one matrix
        i = i / i.norm(dim=1, keepdim=True)
        t = t / t.norm(dim=1, keepdim=True)
        s = i @ t.T / T
        diag = s.diagonal()
        rows = (torch.logsumexp(s, dim=1) - diag).mean()
        cols = (torch.logsumexp(s, dim=0) - diag).mean()
        return 0.5 * (rows + cols)

    def by_two_products(i, t, T):  # text-to-image as its own product
        i, t = F.normalize(i), F.normalize(t)
        labels = torch.arange(len(i))
        return (F.cross_entropy(i @ t.T / T, labels) + F.cross_entropy(t @ i.T / T, labels)) / 2

    expect_pass(checks.check_info_nce, by_logsumexp)
    expect_pass(checks.check_info_nce, by_two_products)


@pytest.mark.parametrize(
    "kind, hint",
    [
        ("raw", "not normalised"),
        ("dim0", "along the batch"),
        ("invert", "temperature is inverted"),
        ("rows", "only one direction"),
        ("rows_twice", "only one direction"),
        ("columns_twice", "the wrong axis"),
        ("sum", "their mean"),
    ],
)
def test_info_nce_mistakes_are_named(kind: str, hint: str) -> None:
    expect_hint(checks.check_info_nce, _nce(kind), hint)
    expect_hint(checks.check_info_nce, _nce(kind), hint, hidden=False)


def test_normalising_in_place_is_refused() -> None:
    def in_place(i, t, T):
        with torch.no_grad():  # changes the caller's tensors, and no gradient of the norm
            i /= i.norm(dim=-1, keepdim=True)
            t /= t.norm(dim=-1, keepdim=True)
        return _nce()(i, t, T)

    expect_hint(checks.check_info_nce, in_place, "changed an input", hidden=False)
    expect_hint(checks.check_info_nce, in_place, "changed an input")


def test_clips_loss_is_refused() -> None:
    copy = runpy.run_path(multimodal.__file__)["info_nce"]
    for cheat in (multimodal.info_nce, copy, lambda i, t, T: checks._info_nce(i, t, T)):
        refused(checks.check_info_nce, cheat)


def test_the_checks_hidden_cases_force_their_special_cases() -> None:
    """Every draw holds the cases that tell the mistakes apart (a sample of seeds)."""
    from tutorlib.checks import Draw

    for seed in range(20):
        (colour, P), (grey, _), _ = checks._patchify_hidden(Draw(seed))
        assert colour.shape[1] >= 2 and grey.shape[1] == 1 and P >= 2
        for images, P in checks._patchify_hidden(Draw(seed))[:2]:
            assert images.shape[2] // P != images.shape[3] // P  # rows != cols
        first, second, none = checks._set_hidden(Draw(seed))
        logits, labels, pred_idx, tgt_idx, _ = first
        assert len(logits) > len(labels) >= 3 and int(labels.max()) < logits.shape[1] - 2
        assert not torch.equal(tgt_idx[tgt_idx], torch.arange(len(tgt_idx)))  # not an involution
        assert len(none[1]) == 0
        boxes1, boxes2 = checks._iou_hidden(Draw(seed))[0]
        iou = checks._iou(boxes1, boxes2, "no_clamp")
        assert (iou < 0).any() and (checks._iou(boxes1, boxes2, "clamp_product") > 0).sum() > (
            checks._iou(boxes1, boxes2) > 0
        ).sum()
        assert math.isfinite(float(iou.abs().max()))


def test_every_forbidden_operator_name_is_an_aten_operator() -> None:
    """A misspelt name would forbid nothing."""
    for name in checks.CONV_OPS + checks.UNFOLD_OPS:
        assert hasattr(torch.ops.aten, name), name
