"""Making a trained model smaller: 8-bit quantization, magnitude pruning and distillation.

- Quantization stores a weight matrix as int8 values q and one float scale s per output
  channel, w ~ s q with q in [-127, 127] (symmetric, no zero point). *Weight-only*
  quantization turns q back into floats for the product; *dynamic* quantization also rounds
  each input row to int8 at run time and multiplies integers, accumulating in int32.
- Magnitude pruning sets the weights of smallest absolute value to zero.
- Distillation trains a small student to match a teacher's softened output distribution.

Book: Chapter 4, Scaling (compression: quantization, pruning, distillation).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tutorlib.attention import MultiHeadAttention

__all__ = [
    "Int8Linear",
    "apply_masks",
    "dequantize_int8",
    "distillation_loss",
    "magnitude_prune",
    "model_bytes",
    "prunable_weights",
    "quantize_int8",
    "quantize_model",
    "sparsity",
]

QMAX = 127  # symmetric int8: -127..127, so that -q is always representable


def quantize_int8(x: Tensor, axis: int | None = 0) -> tuple[Tensor, Tensor]:
    """Symmetric int8 quantization with one scale per slice along `axis` (None: one scale).

    The scale of a slice is max|x| / 127, so its largest entry maps to +-127; values round to
    the nearest integer (ties to even, as `torch.round`). For a weight (out, in), axis=0 gives
    one scale per output channel: a row of large weights no longer costs every other row its
    precision. An all-zero slice gets scale 1.

    Shapes:
        x (..., n, ...) float  ->  q same shape, int8; scale broadcastable to x (keepdim)

    Book: Chapter 4, Scaling (quantization).
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
    if axis is None:
        amax = x.abs().amax()
    else:
        if not -x.dim() <= axis < x.dim():
            raise ValueError(f"axis {axis} out of range for a tensor of rank {x.dim()}")
        others = [d for d in range(x.dim()) if d != axis % x.dim()]
        amax = x.abs().amax(dim=others, keepdim=True) if others else x.abs()
    scale = (amax.float() / QMAX).masked_fill(amax == 0, 1.0)
    q = torch.clamp(torch.round(x.float() / scale), -QMAX, QMAX).to(torch.int8)
    return q, scale


def dequantize_int8(q: Tensor, scale: Tensor) -> Tensor:
    """Back to float32: q * scale.

    Shapes:
        q int8, scale broadcastable to q  ->  float32, shape of q

    Book: Chapter 4, Scaling (quantization).
    """
    if q.dtype != torch.int8:
        raise TypeError(f"q must be int8, got {q.dtype}")
    return q.float() * scale


class Int8Linear(nn.Module):
    """A linear layer whose weight is stored as int8 with per-output-channel scales.

    `mode="weight"`: the weight is dequantized for each product (weight-only; saves memory,
    the arithmetic stays in float). `mode="dynamic"`: each input row (token) is also quantized,
    with its own scale, and the product is taken in integers with int32 accumulation, then
    rescaled. Build one with `Int8Linear.from_float(linear, mode)`.

    Shapes:
        x (..., in_features)  ->  (..., out_features)

    Book: Chapter 4, Scaling (quantization).
    """

    weight_int8: Tensor
    weight_scale: Tensor
    bias: Tensor | None

    def __init__(self, in_features: int, out_features: int, mode: str = "weight") -> None:
        super().__init__()
        if mode not in ("weight", "dynamic"):
            raise ValueError(f"mode must be 'weight' or 'dynamic', got {mode!r}")
        self.in_features, self.out_features, self.mode = in_features, out_features, mode
        self.register_buffer(
            "weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8)
        )
        self.register_buffer("weight_scale", torch.ones(out_features, 1))
        self.register_buffer("bias", None)

    @classmethod
    def from_float(cls, linear: nn.Linear, mode: str = "weight") -> Int8Linear:
        """Quantize the weight of `linear` (per output channel); the bias stays float32."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected an nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, mode)
        q, scale = quantize_int8(linear.weight.detach(), axis=0)  # (out, in), (out, 1)
        layer.weight_int8.copy_(q)
        layer.weight_scale.copy_(scale)
        if linear.bias is not None:
            layer.bias = linear.bias.detach().float().clone()
        return layer.to(linear.weight.device)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected (..., {self.in_features}), got {tuple(x.shape)}")
        if self.mode == "weight":
            weight = dequantize_int8(self.weight_int8, self.weight_scale)  # (out, in)
            return F.linear(x, weight.to(x.dtype), self.bias)
        x_q, x_scale = quantize_int8(x.reshape(-1, self.in_features), axis=0)  # per row
        if x.device.type == "cpu":
            acc = x_q.to(torch.int32) @ self.weight_int8.to(torch.int32).T  # (rows, out) int32
        else:  # CUDA has no int32 matmul; float64 holds these integer sums exactly
            acc = x_q.double() @ self.weight_int8.double().T  # (rows, out)
        out = acc.float() * x_scale * self.weight_scale.T  # (rows, out)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode}"


def quantize_model(model: nn.Module, mode: str = "weight") -> nn.Module:
    """A copy of `model` with every `nn.Linear` replaced by an `Int8Linear`.

    The attention projections stay float32: the query, key and value maps are one stacked
    parameter (`in_proj_weight`) that the attention multiplies with itself rather than an
    `nn.Linear`, and the output projection is left with them, as torch's own dynamic
    quantization leaves `nn.MultiheadAttention` whole. Embeddings and norms stay float32 too,
    and so does a linear layer whose weight is tied to an embedding (the output projection of a
    model with `tie_weights=True`): a quantized copy would untie it and store the matrix twice.
    The original model is not changed.

    Book: Chapter 4, Scaling (quantization).
    """
    if mode not in ("weight", "dynamic"):
        raise ValueError(f"mode must be 'weight' or 'dynamic', got {mode!r}")
    model = copy.deepcopy(model)
    shared = _shared_weights(model)

    def swap(module: nn.Module) -> None:
        if isinstance(module, (nn.MultiheadAttention, MultiHeadAttention)):
            return
        for name, child in module.named_children():
            if type(child) is nn.Linear and id(child.weight) not in shared:
                setattr(module, name, Int8Linear.from_float(child, mode))
            else:
                swap(child)

    swap(model)
    return model


def model_bytes(model: nn.Module) -> int:
    """Bytes of what a checkpoint of the model holds (its state dict), each shared tensor
    counted once; buffers the model rebuilds itself (a sinusoidal table) are left out."""
    seen, total = set(), 0
    for tensor in model.state_dict().values():
        key = tensor.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


def _shared_weights(model: nn.Module) -> set[int]:
    """ids of parameters held by more than one module (tied weights)."""
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    return {key for key, count in owners.items() if count > 1}


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The weight matrices pruning acts on: `nn.Linear.weight` and the attention input projection
    `in_proj_weight` of `MultiHeadAttention` (and `nn.MultiheadAttention`). Embeddings, norms
    and biases are left alone (they are few, and zeroing them costs more accuracy per
    parameter), and so is a linear weight tied to an embedding (`tie_weights=True`): pruning it
    would prune the embedding."""
    shared = _shared_weights(model)
    found = []
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module.weight) not in shared:
            found.append((module, "weight"))
        elif (
            isinstance(module, (nn.MultiheadAttention, MultiHeadAttention))
            and module.in_proj_weight is not None
        ):
            found.append((module, "in_proj_weight"))
    return found


def magnitude_prune(model: nn.Module, amount: float) -> dict[str, Tensor]:
    """Global magnitude pruning: zero the fraction `amount` of the prunable weights with the
    smallest absolute values, across all matrices at once; return the masks (True = kept)
    keyed by parameter name, for `apply_masks` during fine-tuning.

    Same selection as `torch.nn.utils.prune.global_unstructured(..., L1Unstructured)` on the
    same weights (up to ties). Changes `model` in place.

    Book: Chapter 4, Scaling (pruning).
    """
    if not isinstance(amount, float | int) or not 0.0 <= amount < 1.0:
        raise ValueError(f"amount must be a fraction in [0, 1), got {amount!r}")
    names = {id(p): n for n, p in model.named_parameters()}
    weights = [getattr(module, attr) for module, attr in prunable_weights(model)]
    if not weights:
        raise ValueError("model has no nn.Linear or attention weights to prune")
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights])
    k = int(round(amount * magnitudes.numel()))
    masks: dict[str, Tensor] = {}
    if k == 0:
        return {names[id(w)]: torch.ones_like(w, dtype=torch.bool) for w in weights}
    # The k-th smallest magnitude is the threshold; topk breaks ties the way torch.prune does.
    drop = torch.zeros_like(magnitudes, dtype=torch.bool)
    drop[torch.topk(magnitudes, k, largest=False).indices] = True
    offset = 0
    with torch.no_grad():
        for w in weights:
            keep = ~drop[offset : offset + w.numel()].view_as(w)
            w.mul_(keep)
            masks[names[id(w)]] = keep
            offset += w.numel()
    return masks


def apply_masks(model: nn.Module, masks: dict[str, Tensor]) -> None:
    """Zero the pruned weights again (call after each optimizer step while fine-tuning)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, keep in masks.items():
            if name not in params:
                raise KeyError(f"mask for {name!r}, which the model does not have")
            params[name].mul_(keep)


def sparsity(model: nn.Module) -> float:
    """Fraction of the prunable weights that are exactly zero."""
    weights = [getattr(module, attr) for module, attr in prunable_weights(model)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / max(1, sum(w.numel() for w in weights))


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> Tensor:
    """Hinton et al.'s distillation loss: alpha tau^2 KL(p_teacher^tau || p_student^tau) plus
    (1 - alpha) times the cross-entropy with the true labels.

    Both distributions are softened by the temperature tau (softmax of logits / tau); the KL
    term is multiplied by tau^2 so that its gradients keep their size as tau changes. The teacher's
    logits are detached. Averaged over the N rows.

    Shapes:
        student_logits, teacher_logits (N, V); targets (N,) int64  ->  scalar

    Book: Chapter 4, Scaling (distillation).
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            f"logits: expected two (N, V) tensors of one shape, got {tuple(student_logits.shape)}"
            f" and {tuple(teacher_logits.shape)}"
        )
    if targets.shape != student_logits.shape[:1] or targets.dtype != torch.long:
        raise ValueError(
            f"targets: expected int64 ({student_logits.shape[0]},), got "
            f"{targets.dtype} {tuple(targets.shape)}"
        )
    if temperature <= 0 or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"need temperature > 0 and alpha in [0, 1], got {temperature}, {alpha}")
    T = temperature
    log_p_student = F.log_softmax(student_logits / T, dim=-1)  # (N, V)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / T, dim=-1)  # (N, V)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1).mean()
    return alpha * T * T * kl + (1 - alpha) * F.cross_entropy(student_logits, targets)
