"""Object detection as set prediction (DETR): boxes, Hungarian matching, the set loss, a model.

DETR (Carion et al., 2020) predicts a fixed set of Q objects per image, each a class
distribution over K classes plus "no object" and a box, with no anchors and no non-maximum
suppression. Training matches predictions to the true objects one to one (the Hungarian
algorithm, `scipy.optimize.linear_sum_assignment`) under a cost of class probability, L1 box
distance and generalised IoU, and then applies the classification and box losses to the matched
pairs; unmatched predictions learn to say "no object".

Boxes are (cx, cy, w, h) in [0, 1] (fractions of the image) where the model predicts them, and
(x0, y0, x1, y1) for the IoU computations; `box_cxcywh_to_xyxy` converts.

Data: canvases with a few handwritten digits (from scikit-learn) at random places.

Book: Chapter 5, Vision (DETR).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tutorlib.layers import DecoderLayer, EncoderLayer, LayerNorm
from tutorlib.vision import PatchEmbedding

__all__ = [
    "ConvBackbone",
    "DETR",
    "DETRConfig",
    "box_area",
    "box_cxcywh_to_xyxy",
    "box_iou",
    "digit_canvases",
    "generalized_box_iou",
    "hungarian_match",
    "match_cost",
    "set_prediction_loss",
]


def _check_boxes(boxes: Tensor, name: str) -> None:
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(
            f"{name}: expected (n, 4) boxes, got "
            f"{tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__}"
        )


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(cx, cy, w, h) -> (x0, y0, x1, y1).

    Shapes:
        boxes (..., 4)  ->  (..., 4)
    """
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Areas of (x0, y0, x1, y1) boxes: (n, 4) -> (n,)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _intersection_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
    size = (bottom_right - top_left).clamp(min=0)  # no overlap: zero width or height
    inter = size[..., 0] * size[..., 1]  # (N, M)
    return inter, box_area(a)[:, None] + box_area(b)[None, :] - inter


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over union of every pair of (x0, y0, x1, y1) boxes.

    Shapes:
        boxes1 (N, 4), boxes2 (M, 4)  ->  (N, M), in [0, 1]

    Book: Chapter 5, Vision (DETR).
    """
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    inter, union = _intersection_union(boxes1, boxes2)
    return inter / union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalised IoU (Rezatofighi et al., 2019): IoU - (hull - union) / hull, where hull is
    the smallest box enclosing both. In [-1, 1]; unlike IoU it still has a gradient when the
    boxes do not overlap.

    Shapes:
        boxes1 (N, 4), boxes2 (M, 4)  ->  (N, M)

    Book: Chapter 5, Vision (DETR).
    """
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    inter, union = _intersection_union(boxes1, boxes2)
    top_left = torch.minimum(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.maximum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    hull = (bottom_right - top_left).prod(dim=-1)  # (N, M)
    return inter / union - (hull - union) / hull


def match_cost(
    logits: Tensor,
    boxes: Tensor,
    labels: Tensor,
    target_boxes: Tensor,
    class_weight: float = 1.0,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
) -> Tensor:
    """DETR's matching cost between Q predictions and M targets of one image:
    -class_weight p(label) + l1_weight |b - b'|_1 - giou_weight GIoU(b, b').

    Shapes:
        logits (Q, K + 1); boxes (Q, 4) cxcywh; labels (M,); target_boxes (M, 4) cxcywh
        ->  cost (Q, M)

    Book: Chapter 5, Vision (DETR).
    """
    probs = logits.softmax(dim=-1)  # (Q, K + 1)
    cost_class = -probs[:, labels]  # (Q, M)
    cost_l1 = torch.cdist(boxes, target_boxes, p=1)  # (Q, M)
    giou = generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(target_boxes))
    return class_weight * cost_class + l1_weight * cost_l1 - giou_weight * giou


def hungarian_match(cost: Tensor) -> tuple[Tensor, Tensor]:
    """The one-to-one assignment of predictions (rows) to targets (columns) of least total
    cost, by the Hungarian algorithm (`scipy.optimize.linear_sum_assignment`).

    Shapes:
        cost (Q, M), Q >= M  ->  pred_idx (M,), tgt_idx (M,) int64: prediction pred_idx[i] is
        matched to target tgt_idx[i]

    Book: Chapter 5, Vision (DETR).
    """
    from scipy.optimize import linear_sum_assignment

    if cost.dim() != 2:
        raise ValueError(f"cost: expected (predictions, targets), got {tuple(cost.shape)}")
    if cost.shape[0] < cost.shape[1]:
        raise ValueError(
            f"{cost.shape[1]} targets but only {cost.shape[0]} predictions: DETR needs at least "
            "as many queries as objects in an image"
        )
    rows, cols = linear_sum_assignment(cost.detach().cpu().double().numpy())
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


def set_prediction_loss(
    logits: Tensor,
    boxes: Tensor,
    targets: list[tuple[Tensor, Tensor]],
    no_object_weight: float = 0.1,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
) -> dict[str, Tensor]:
    """DETR's loss for a batch: match each image's predictions to its targets, then the
    weighted cross-entropy over all queries ("no object" = class K, down-weighted) plus the L1
    and GIoU losses of the matched boxes, averaged over the objects of the batch.

    Shapes:
        logits (B, Q, K + 1); boxes (B, Q, 4) cxcywh in [0, 1];
        targets: B pairs (labels (M_b,) int64, boxes (M_b, 4) cxcywh), moved to the logits'
        device if they are elsewhere
        ->  {"class", "l1", "giou", "total"}: scalars

    Book: Chapter 5, Vision (DETR).
    """
    B, Q, K1 = logits.shape
    if boxes.shape != (B, Q, 4) or len(targets) != B:
        raise ValueError(
            f"expected boxes (B, Q, 4) = {(B, Q, 4)} and {B} targets, got {tuple(boxes.shape)} "
            f"and {len(targets)}"
        )
    class_targets = torch.full((B, Q), K1 - 1, dtype=torch.long, device=logits.device)
    matched_pred, matched_tgt = [], []
    for b, (labels, target_boxes) in enumerate(targets):
        labels, target_boxes = labels.to(logits.device), target_boxes.to(logits.device)
        with torch.no_grad():
            cost = match_cost(
                logits[b], boxes[b], labels, target_boxes, 1.0, l1_weight, giou_weight
            )
        pred_idx, tgt_idx = hungarian_match(cost)
        class_targets[b, pred_idx.to(logits.device)] = labels[tgt_idx]
        matched_pred.append(boxes[b, pred_idx])
        matched_tgt.append(target_boxes[tgt_idx])
    weight = torch.ones(K1, dtype=logits.dtype, device=logits.device)
    weight[-1] = no_object_weight
    loss_class = F.cross_entropy(
        logits.reshape(B * Q, K1), class_targets.reshape(-1), weight=weight
    )
    pred, tgt = torch.cat(matched_pred), torch.cat(matched_tgt)  # (n_objects, 4)
    n = max(len(tgt), 1)
    loss_l1 = (pred - tgt).abs().sum() / n
    giou = generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(tgt))
    loss_giou = (1 - giou.diagonal()).sum() / n
    total = loss_class + l1_weight * loss_l1 + giou_weight * loss_giou
    return {"class": loss_class, "l1": loss_l1, "giou": loss_giou, "total": total}


@dataclass(frozen=True)
class DETRConfig:
    """The sizes of a small DETR for grey canvases."""

    image_size: int = 32  # side of the square canvas, in pixels
    patch_size: int = 4  # side of the image area that one encoder token stands for
    backbone: str = "patch"  # "patch": a patch embedding; "cnn": a small CNN (ConvBackbone)
    backbone_channels: tuple[int, ...] = (16, 32, 32)  # the CNN's channels, layer by layer
    n_classes: int = 10  # K real classes; the model has K + 1 outputs ("no object" last)
    n_queries: int = 6  # Q: the largest number of objects it can find in one image
    d_model: int = 64
    n_heads: int = 4
    n_encoder_layers: int = 2
    n_decoder_layers: int = 2
    d_ff: int = 128
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}"
            )
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must divide by n_heads={self.n_heads}")
        if self.backbone not in ("patch", "cnn"):
            raise ValueError(f"backbone must be 'patch' or 'cnn', got {self.backbone!r}")
        if self.backbone == "cnn" and self.patch_size != 4:
            raise ValueError(
                f"the CNN backbone halves the image twice, so patch_size must be 4, "
                f"got {self.patch_size}"
            )


class ConvBackbone(nn.Module):
    """A small CNN that turns a grey image into a grid of feature vectors at a quarter of its
    side: per layer a 3 x 3 convolution and a GELU, with a 2 x 2 max-pool after the second and
    the last layer. DETR's backbone is a ResNet pretrained on ImageNet; this is its tiny stand-in.

    Shapes:
        images (B, 1, H, W)  ->  features (B, channels[-1], H / 4, W / 4)

    Book: Chapter 5, Vision (DETR).
    """

    def __init__(self, channels: tuple[int, ...] = (16, 32, 32)) -> None:
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"channels: expected at least 2 layers, got {channels}")
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip((1, *channels[:-1]), channels, strict=True)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.GELU()]
            if i in (1, len(channels) - 1):
                layers.append(nn.MaxPool2d(2))
        self.layers = nn.Sequential(*layers)
        self.out_channels = channels[-1]

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 1 or images.shape[2] % 4 or images.shape[3] % 4:
            raise ValueError(
                f"images: expected (batch, 1, H, W) with H and W divisible by 4, "
                f"got {tuple(images.shape)}"
            )
        return self.layers(images)


class DETR(nn.Module):
    """A small DETR: a backbone (a patch embedding, or a small CNN and a linear projection, as
    `config.backbone` says) and 2-D learned positions, a pre-norm transformer encoder,
    and a decoder whose inputs are Q learned object queries (no causal mask: the queries look at
    each other and at the image at once); a class head (K + 1) and a box head (cxcywh in [0, 1]).

    Shapes:
        images (B, 1, S, S)  ->  logits (B, Q, K + 1), boxes (B, Q, 4)

    Book: Chapter 5, Vision (DETR).
    """

    def __init__(self, config: DETRConfig) -> None:
        super().__init__()
        self.config = c = config
        grid = c.image_size // c.patch_size
        if c.backbone == "cnn":
            self.backbone = ConvBackbone(c.backbone_channels)
            self.input_proj = nn.Linear(c.backbone_channels[-1], c.d_model)
        else:
            self.patch_embed = PatchEmbedding(1, c.patch_size, c.d_model)
        self.row_embed = nn.Parameter(0.02 * torch.randn(grid, 1, c.d_model))
        self.col_embed = nn.Parameter(0.02 * torch.randn(1, grid, c.d_model))
        self.encoder = nn.ModuleList(
            EncoderLayer(c.d_model, c.n_heads, c.d_ff, c.dropout, "gelu", norm_first=True)
            for _ in range(c.n_encoder_layers)
        )
        self.encoder_norm = LayerNorm(c.d_model)
        self.queries = nn.Parameter(0.02 * torch.randn(c.n_queries, c.d_model))
        self.decoder = nn.ModuleList(
            DecoderLayer(c.d_model, c.n_heads, c.d_ff, c.dropout, "gelu", norm_first=True)
            for _ in range(c.n_decoder_layers)
        )
        self.decoder_norm = LayerNorm(c.d_model)
        self.class_head = nn.Linear(c.d_model, c.n_classes + 1)
        self.box_head = nn.Sequential(
            nn.Linear(c.d_model, c.d_model), nn.ReLU(), nn.Linear(c.d_model, 4)
        )

    def forward(
        self, images: Tensor | None = None, *, features: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Detect in `images`; or, with the CNN backbone, start from `features`, the backbone's
        output computed beforehand (when the backbone is frozen, this saves running it on the
        same images at every step).

        Shapes:
            images (B, 1, S, S), or features (B, backbone_channels[-1], S / 4, S / 4)
            ->  logits (B, Q, K + 1), boxes (B, Q, 4)
        """
        c, S = self.config, self.config.image_size
        if (images is None) == (features is None):
            raise ValueError("pass either images or features, not both and not neither")
        if features is not None:
            expected = (c.backbone_channels[-1], S // 4, S // 4)
            if c.backbone != "cnn":
                raise ValueError("features can only be given to a DETR with backbone='cnn'")
            if features.dim() != 4 or tuple(features.shape[1:]) != expected:
                raise ValueError(
                    f"features: expected (batch, {', '.join(map(str, expected))}), "
                    f"got {tuple(features.shape)}"
                )
        elif images.dim() != 4 or tuple(images.shape[1:]) != (1, S, S):
            raise ValueError(f"images: expected (batch, 1, {S}, {S}), got {tuple(images.shape)}")
        if c.backbone == "cnn":
            if features is None:
                features = self.backbone(images)  # (B, C_backbone, S / 4, S / 4)
            tokens = self.input_proj(features.flatten(2).transpose(1, 2))  # (B, N, C)
        else:
            tokens = self.patch_embed(images)  # (B, N, C)
        positions = (self.row_embed + self.col_embed).reshape(-1, self.config.d_model)  # (N, C)
        memory = tokens + positions  # (B, N, C)
        for layer in self.encoder:
            memory = layer(memory)
        memory = self.encoder_norm(memory)
        x = self.queries.expand(tokens.shape[0], -1, -1)  # (B, Q, C)
        for layer in self.decoder:
            x = layer(x, memory)
        x = self.decoder_norm(x)  # (B, Q, C)
        return self.class_head(x), self.box_head(x).sigmoid()  # (B, Q, K+1), (B, Q, 4)


def digit_canvases(
    images: Tensor,
    labels: Tensor,
    n: int,
    canvas_size: int = 32,
    max_objects: int = 3,
    scale: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """`n` canvases with 1 to `max_objects` digits each, drawn from `images`/`labels` (e.g. the
    training split of `tutorlib.vision.digits_data`), enlarged by `scale`, at random places that
    do not overlap. Boxes are the digits' 8 x 8 (times scale) squares, as (cx, cy, w, h) in
    fractions of the canvas.

    Shapes:
        images (N, 1, 8, 8), labels (N,)  ->  canvases (n, 1, S, S), and n pairs
        (labels (M,) int64, boxes (M, 4))

    Book: Chapter 5, Vision (DETR).
    """
    side = 8 * scale
    if canvas_size < side:
        raise ValueError(f"canvas_size {canvas_size} is smaller than a digit ({side} pixels)")
    canvases = torch.zeros(n, 1, canvas_size, canvas_size)
    targets = []
    for i in range(n):
        count = int(torch.randint(1, max_objects + 1, (1,), generator=generator))
        placed: list[tuple[int, int]] = []
        chosen = []
        for _ in range(100 * count):  # rejection sampling of non-overlapping places
            if len(placed) == count:
                break
            y, x = torch.randint(0, canvas_size - side + 1, (2,), generator=generator).tolist()
            if all(abs(y - y2) >= side or abs(x - x2) >= side for y2, x2 in placed):
                placed.append((y, x))
        for y, x in placed:
            k = int(torch.randint(0, len(labels), (1,), generator=generator))
            digit = images[k]
            if scale > 1:
                digit = F.interpolate(digit[None], scale_factor=scale, mode="nearest")[0]
            canvases[i, :, y : y + side, x : x + side] = digit
            chosen.append((int(labels[k]), (x + side / 2, y + side / 2)))
        digit_labels = torch.tensor([c[0] for c in chosen], dtype=torch.long)
        boxes = torch.tensor(
            [[cx / canvas_size, cy / canvas_size, side / canvas_size, side / canvas_size]
             for _, (cx, cy) in chosen],
            dtype=torch.float32,
        ).reshape(-1, 4)  # fmt: skip
        targets.append((digit_labels, boxes))
    return canvases, targets
