"""The Chapter 5 checks: the solutions pass, the likely mistakes are named, and the reference or
the built-in cannot do the learner's work."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import expect_hint
from tests.grading import solution_namespace
from tutorlib import vision
from tutorlib.checks import vision as checks


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


@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize("name, check", CHECKS)
def test_solutions_pass(solution, name, check, hidden, capsys) -> None:
    check(solution[name], hidden=hidden)
    assert capsys.readouterr().out.startswith("OK:")


@pytest.mark.parametrize("name, check", CHECKS)
def test_unimplemented_says_so(name, check) -> None:
    def stub(*args):
        raise NotImplementedError()

    expect_hint(check, stub, "not implemented yet", hidden=False)


def _patchify(order=(0, 2, 4, 1, 3, 5), plain=False):
    def patchify(images, P):
        B, C, H, W = images.shape
        if plain:
            return images.reshape(B, (H // P) * (W // P), C * P * P)
        x = images.reshape(B, C, H // P, P, W // P, P).permute(*order)
        return x.reshape(B, (H // P) * (W // P), C * P * P)

    return patchify


@pytest.mark.parametrize(
    "candidate, hint, hidden",
    [
        (_patchify(order=(0, 4, 2, 1, 3, 5)), "column-major", False),
        (_patchify(plain=True), "plain reshape", False),
        (_patchify(order=(0, 2, 4, 3, 5, 1)), "(P, P, C)", True),
        (_patchify(order=(0, 2, 4, 1, 5, 3)), "inside each patch", False),
    ],
)
def test_patchify_mistakes(candidate, hint, hidden) -> None:
    expect_hint(checks.check_patchify, candidate, hint, hidden=hidden)


def test_patch_embedding_mistakes_and_blocked_conv(solution) -> None:
    patchify = solution["patchify"]

    def no_bias(images, weight, bias, P):
        return patchify(images, P) @ weight.reshape(weight.shape[0], -1).T

    def channels_last(images, weight, bias, P):
        return (
            patchify(images, P) @ weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1).T + bias
        )

    def by_conv(images, weight, bias, P):
        return F.conv2d(images, weight, bias, stride=P).flatten(2).transpose(1, 2)

    expect_hint(checks.check_patch_embedding, no_bias, "bias is missing", hidden=False)
    expect_hint(checks.check_patch_embedding, channels_last, "(d, P, P, C)", hidden=True)
    expect_hint(checks.check_patch_embedding, by_conv, "Not allowed", hidden=False)


def test_cls_mistakes() -> None:
    def cls_last(tokens, cls, pos):
        B, N, C = tokens.shape
        return torch.cat([tokens, cls.expand(B, 1, C)], dim=1) + pos

    def cls_without_position(tokens, cls, pos):
        B, N, C = tokens.shape
        return torch.cat([cls.expand(B, 1, C), tokens + pos[1:]], dim=1)

    expect_hint(checks.check_add_cls_and_positions, cls_last, "appended at the end", False)
    expect_hint(
        checks.check_add_cls_and_positions, cls_without_position, "added after the positions", False
    )


def _rollout(residual=True, reverse=False):
    def attention_rollout(attentions):
        result = None
        for w in attentions:
            a = w.mean(1)
            if residual:
                a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype)
                a = a / a.sum(-1, keepdim=True)
            result = a if result is None else (result @ a if reverse else a @ result)
        return result

    return attention_rollout


def test_rollout_mistakes_and_blocked_reference() -> None:
    expect_hint(checks.check_attention_rollout, _rollout(residual=False), "residual", False)
    expect_hint(checks.check_attention_rollout, _rollout(reverse=True), "wrong order", False)
    expect_hint(checks.check_attention_rollout, vision.attention_rollout, "Not allowed", False)


def test_iou_mistakes(solution) -> None:
    def no_clamp(a, b):
        tl = torch.maximum(a[:, None, :2], b[None, :, :2])
        br = torch.minimum(a[:, None, 2:], b[None, :, 2:])
        inter = (br - tl).prod(-1)
        area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
        return inter / (area(a)[:, None] + area(b)[None] - inter)

    def twice(a, b):
        iou = solution["box_iou"](a, b)
        area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
        union = area(a)[:, None] + area(b)[None]
        return iou * (union / (1 + iou)) / union  # inter / (area1 + area2)

    expect_hint(checks.check_box_iou, no_clamp, "clamp", hidden=False)
    expect_hint(checks.check_box_iou, twice, "counts the intersection twice", hidden=False)


def test_matching_cost_mistakes() -> None:
    def plus(probs, pred, labels, target, w):
        return probs[:, labels] + w * torch.cdist(pred, target, p=1)

    def l2(probs, pred, labels, target, w):
        return -probs[:, labels] + w * torch.cdist(pred, target, p=2)

    def transposed(probs, pred, labels, target, w):
        return (-probs[:, labels] + w * torch.cdist(pred, target, p=1)).T

    expect_hint(checks.check_matching_cost, plus, "wrong sign", hidden=False)
    expect_hint(checks.check_matching_cost, l2, "Euclidean", hidden=False)
    expect_hint(checks.check_matching_cost, transposed, "transposed", hidden=False)


def _set_loss(kind=""):
    def set_classification_loss(logits, labels, pred_idx, tgt_idx, eos):
        Q, K1 = logits.shape
        if kind == "matched_only":
            return F.cross_entropy(logits[pred_idx], labels[tgt_idx])
        target = torch.full((Q,), K1 - 1, dtype=torch.long)
        target[pred_idx] = labels if kind == "order" else labels[tgt_idx]
        weight = torch.ones(K1, dtype=logits.dtype)
        weight[-1] = 1.0 if kind == "no_weight" else eos
        return F.cross_entropy(logits, target, weight=weight)

    return set_classification_loss


@pytest.mark.parametrize(
    "kind, hint",
    [
        ("matched_only", "only the matched predictions"),
        ("no_weight", "not down-weighted"),
        ("order", "wrong order"),
    ],
)
def test_set_loss_mistakes(kind, hint) -> None:
    expect_hint(checks.check_set_classification_loss, _set_loss(kind), hint, hidden=False)


def _nce(normalize=True, invert=False, both=True):
    def info_nce(i, t, T):
        if normalize:
            i, t = F.normalize(i, dim=-1), F.normalize(t, dim=-1)
        logits = i @ t.T * (T if invert else 1 / T)
        labels = torch.arange(len(logits))
        if not both:
            return F.cross_entropy(logits, labels)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    return info_nce


@pytest.mark.parametrize(
    "candidate, hint",
    [
        (_nce(normalize=False), "not normalised"),
        (_nce(invert=True), "temperature is inverted"),
        (_nce(both=False), "only one direction"),
    ],
)
def test_info_nce_mistakes(candidate, hint) -> None:
    expect_hint(checks.check_info_nce, candidate, hint, hidden=False)
