"""Boxes, generalised IoU, Hungarian matching against brute force, the set loss and DETR's
shapes, and the digit canvases."""

from __future__ import annotations

import itertools

import pytest
import torch

from tutorlib.detection import (
    DETR,
    ConvBackbone,
    DETRConfig,
    box_cxcywh_to_xyxy,
    box_iou,
    digit_canvases,
    generalized_box_iou,
    hungarian_match,
    match_cost,
    set_prediction_loss,
)
from tutorlib.vision import digits_data


def test_iou_and_giou_on_worked_examples() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 0.0, 6.0, 2.0], [0.0, 0.0, 2.0, 2.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 7, 0.0, 1.0]]))
    # GIoU: the hull of a and b[1] is 6 x 2 = 12, the union 8, so 0 - 4/12.
    torch.testing.assert_close(
        generalized_box_iou(a, b), torch.tensor([[1 / 7 - 2 / 9, -1 / 3, 1.0]])
    )
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        box_iou(torch.zeros(3), b)


def test_cxcywh_conversion() -> None:
    torch.testing.assert_close(
        box_cxcywh_to_xyxy(torch.tensor([[0.5, 0.5, 0.2, 0.4]])),
        torch.tensor([[0.4, 0.3, 0.6, 0.7]]),
    )


@pytest.mark.parametrize("seed", range(5))
def test_hungarian_matching_equals_brute_force(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    Q, M = 5, 3
    cost = torch.rand(Q, M, generator=g)
    rows, cols = hungarian_match(cost)
    best = min(
        sum(cost[q, m] for q, m in zip(perm, range(M), strict=True)).item()
        for perm in itertools.permutations(range(Q), M)
    )
    assert len(set(rows.tolist())) == M and sorted(cols.tolist()) == list(range(M))
    assert cost[rows, cols].sum().item() == pytest.approx(best)
    with pytest.raises(ValueError, match="at least"):
        hungarian_match(torch.rand(2, 3))


def test_match_cost_prefers_the_right_class_and_box() -> None:
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])  # confident class 0, class 1
    boxes = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1]])
    cost = match_cost(logits, boxes, torch.tensor([1, 0]), boxes.flip(0))
    rows, cols = hungarian_match(cost)
    assert dict(zip(rows.tolist(), cols.tolist(), strict=True)) == {0: 1, 1: 0}


def test_set_loss_is_small_for_perfect_predictions_and_has_gradients() -> None:
    labels, boxes = torch.tensor([2, 0]), torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.2, 0.3]])
    logits = torch.full((1, 4, 4), -10.0)
    logits[0, 1, 2] = logits[0, 3, 0] = 10.0  # queries 1 and 3 find the objects
    logits[0, [0, 2], 3] = 10.0  # the others say "no object"
    pred = torch.rand(1, 4, 4)
    pred[0, 1], pred[0, 3] = boxes[0], boxes[1]
    losses = set_prediction_loss(logits, pred, [(labels, boxes)])
    assert losses["total"].item() < 1e-3
    pred = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    wrong = set_prediction_loss(torch.zeros(1, 4, 4, requires_grad=True), pred, [(labels, boxes)])
    wrong["total"].backward()
    assert wrong["total"].item() > 1.0 and pred.grad.abs().sum() > 0


def test_detr_shapes_and_canvases() -> None:
    train_x, train_y, _, _ = digits_data()
    canvases, targets = digit_canvases(
        train_x, train_y, 4, max_objects=3, generator=torch.Generator().manual_seed(0)
    )
    assert canvases.shape == (4, 1, 32, 32)
    for image, (labels, boxes) in zip(canvases, targets, strict=True):
        assert 1 <= len(labels) <= 3 and boxes.shape == (len(labels), 4)
        xyxy = box_cxcywh_to_xyxy(boxes)
        iou = box_iou(xyxy, xyxy)
        assert torch.equal(iou, torch.eye(len(labels)))  # digits never overlap
        assert ((xyxy >= 0) & (xyxy <= 1)).all()
        assert image.sum() > 0
    model = DETR(DETRConfig(n_queries=5))
    logits, boxes = model(canvases)
    assert logits.shape == (4, 5, 11) and boxes.shape == (4, 5, 4)
    assert ((boxes > 0) & (boxes < 1)).all()
    set_prediction_loss(logits, boxes, targets)["total"].backward()
    with pytest.raises(ValueError, match="not divisible"):
        DETRConfig(image_size=30, patch_size=4)


def test_cnn_backbone_and_precomputed_features():
    torch.manual_seed(0)
    backbone = ConvBackbone((4, 8, 8))
    assert backbone(torch.rand(2, 1, 12, 16)).shape == (2, 8, 3, 4)  # a quarter of each side
    with pytest.raises(ValueError, match="divisible by 4"):
        backbone(torch.rand(2, 1, 10, 12))
    config = DETRConfig(backbone="cnn", backbone_channels=(4, 8, 8), n_queries=3)
    model = DETR(config).eval()
    canvases = torch.rand(2, 1, 32, 32)
    with torch.no_grad():  # features computed beforehand give the same detections
        logits, boxes = model(canvases)
        from_features = model(features=model.backbone(canvases))
    assert logits.shape == (2, 3, 11) and boxes.shape == (2, 3, 4)
    torch.testing.assert_close(from_features[0], logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(from_features[1], boxes, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="not both"):
        model(canvases, features=model.backbone(canvases))
    with pytest.raises(ValueError, match=r"expected \(batch, 8, 8, 8\)"):
        model(features=torch.rand(2, 4, 8, 8))
    with pytest.raises(ValueError, match="backbone='cnn'"):
        DETR(DETRConfig())(features=torch.rand(2, 8, 8, 8))
    with pytest.raises(ValueError, match="patch_size must be 4"):
        DETRConfig(image_size=32, patch_size=8, backbone="cnn")
    with pytest.raises(ValueError, match="'patch' or 'cnn'"):
        DETRConfig(backbone="resnet")
