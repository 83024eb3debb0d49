"""Low-rank adapters (LoRA): fine-tune a frozen model through small trainable matrices.

Hu et al. (2021) keep a pretrained weight W (out x in) frozen and learn its change as a product
of two thin matrices, W + (alpha / r) B A with A (r x in) and B (out x r), r much smaller than
in and out. A starts random and B at zero, so the adapted model starts as the base model; only
A and B train, r (in + out) numbers per adapted matrix instead of in x out. After training the
product can be added into W ("merged"): the model is then the base's shape and speed again.

Two forms of the same idea:

- `LoRALinear` wraps one `nn.Linear` and adds the low-rank path to its output,
  x W^T + b + (alpha / r) (x A^T) B^T, never forming the (out x in) product: the form to read
  first, with the attribute names of the `peft` library (`lora_A`, `lora_B`, `scaling`).
- `LoRA` is a `torch.nn.utils.parametrize` parametrization W -> W + (alpha / r) B A of any
  weight matrix, with an optional split of its rows into blocks that each get their own pair.
  tutorlib's attention keeps W^Q, W^K and W^V stacked in one `in_proj_weight`; the blocks give
  each of them its own adapter, as Hu et al. adapt W_q and W_v separately. `add_lora` puts
  adapters on a model's attention and feed-forward weights, `merge_lora` folds them in,
  `lora_state_dict` and `load_lora_state_dict` keep and swap several adapters on one base.
- `TrainableTokens` and `add_trainable_tokens` train a few rows of a frozen token embedding
  (new tokens' rows, such as a chat template's role tokens; `peft`'s `trainable_token_indices`):
  a frozen embedding, tied to the output, would otherwise give the new tokens one row forever.

Book: 6.10 Low-rank adapters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from tutorlib.attention import MultiHeadAttention
from tutorlib.embeddings import TokenEmbedding
from tutorlib.layers import FeedForward, SwiGLU

__all__ = [
    "LORA_TARGETS",
    "LoRA",
    "LoRALinear",
    "TrainableTokens",
    "add_lora",
    "add_trainable_tokens",
    "count_parameters",
    "load_lora_state_dict",
    "lora_state_dict",
    "merge_lora",
]

LORA_TARGETS = ("query", "key", "value", "output", "feed_forward")
"""What `add_lora` can adapt: the query, key and value rows of every attention's
`in_proj_weight`, its output projection `out_proj`, and the linear maps of the feed-forward
networks (`linear1`, `linear2` of the MLP; `gate_proj`, `up_proj`, `down_proj` of SwiGLU)."""


def _check_rank_alpha(rank: object, alpha: object, limit: int) -> None:
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= limit:
        raise ValueError(f"rank must be an int in [1, {limit}] (min(in, out)), got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")


def _init_pair(A: Tensor, B: Tensor) -> None:
    """A as `nn.Linear` initialises a weight (as Hu et al. and peft do), B at zero: B A = 0."""
    nn.init.kaiming_uniform_(A, a=math.sqrt(5))
    nn.init.zeros_(B)


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update:
    y = x W^T + b + (alpha / r) (x A^T) B^T  (Hu et al., 2021).

    `base` is kept as `self.base` and frozen in place (its weight and bias get
    requires_grad=False). `lora_A` (r, in) starts as `nn.Linear` initialises a weight
    (Kaiming-uniform with a = sqrt(5)) and `lora_B` (out, r) at zero, so the layer starts equal
    to `base`. The update is applied as two thin products, never as an (out, in) matrix.
    `merge` returns the plain `nn.Linear` with W + (alpha / r) B A.

    Shapes:
        x (..., in)  ->  (..., out); lora_A (r, in), lora_B (out, r)

    Book: 6.10 Low-rank adapters.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        out_features, in_features = base.weight.shape
        _check_rank_alpha(rank, alpha, min(in_features, out_features))
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        like = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, **like))
        self.lora_B = nn.Parameter(torch.empty(out_features, rank, **like))
        _init_pair(self.lora_A, self.lora_B)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.base.in_features:
            raise ValueError(
                f"x: expected (..., {self.base.in_features}) (in_features), got {tuple(x.shape)}"
            )
        down = F.linear(x, self.lora_A)  # (..., r)
        return self.base(x) + self.scaling * F.linear(down, self.lora_B)  # (..., out)

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A new `nn.Linear` with weight W + (alpha / r) B A and the same bias: the same
        outputs as this layer up to rounding (the sums are grouped differently)."""
        base = self.base
        merged = nn.Linear(
            base.in_features,
            base.out_features,
            bias=base.bias is not None,
            device=base.weight.device,
            dtype=base.weight.dtype,
        )
        merged.weight.copy_(base.weight + self.scaling * (self.lora_B @ self.lora_A))  # (out, in)
        if base.bias is not None:
            merged.bias.copy_(base.bias)
        return merged

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling:g}"


class LoRA(nn.Module):
    """The parametrization W -> W + (alpha / r) B A, for
    `torch.nn.utils.parametrize.register_parametrization`.

    With `blocks`, the rows of W fall into consecutive blocks of the given sizes (summing to
    `out_features`), and each block whose entry in `adapt` is True gets its own pair A_i (r, in),
    B_i (rows_i, r); the other blocks are left as they are. For attention's stacked
    `in_proj_weight` the blocks are the rows of W^Q, W^K and W^V. Without `blocks` the whole
    matrix is one block. A starts as `nn.Linear`'s weight, B at zero: W is unchanged at first.

    Shapes:
        weight (out, in)  ->  (out, in); lora_A[i] (r, in), lora_B[i] (rows_i, r)

    Book: 6.10 Low-rank adapters.
    """

    def __init__(
        self,
        out_features: int,
        in_features: int,
        rank: int,
        alpha: float,
        blocks: Sequence[int] | None = None,
        adapt: Sequence[bool] | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        blocks = [out_features] if blocks is None else list(blocks)
        adapt = [True] * len(blocks) if adapt is None else list(adapt)
        if sum(blocks) != out_features or min(blocks) < 1 or len(adapt) != len(blocks):
            raise ValueError(
                f"blocks must be positive row counts summing to out_features={out_features}, "
                f"with one adapt flag each; got blocks={blocks}, adapt={adapt}"
            )
        if not any(adapt):
            raise ValueError("adapt: at least one block must be adapted")
        rows = [n for n, a in zip(blocks, adapt, strict=True) if a]
        _check_rank_alpha(rank, alpha, min(in_features, *rows))
        self.shape = (out_features, in_features)
        self.blocks, self.adapt = tuple(blocks), tuple(adapt)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        like = dict(device=device, dtype=dtype)
        self.lora_A = nn.ParameterList(torch.empty(rank, in_features, **like) for _ in rows)
        self.lora_B = nn.ParameterList(torch.empty(n, rank, **like) for n in rows)
        for A, B in zip(self.lora_A, self.lora_B, strict=True):
            _init_pair(A, B)

    def delta(self) -> Tensor:
        """The update (alpha / r) B A, block by block, with zeros in the blocks not adapted.

        Shapes:
            returns (out, in)
        """
        pairs = iter(zip(self.lora_A, self.lora_B, strict=True))
        pieces = []
        for n, adapted in zip(self.blocks, self.adapt, strict=True):
            if adapted:
                A, B = next(pairs)
                pieces.append(self.scaling * (B @ A))  # (rows_i, in)
            else:
                pieces.append(self.lora_A[0].new_zeros(n, self.shape[1]))  # (rows_i, in)
        return torch.cat(pieces)  # (out, in)

    def forward(self, weight: Tensor) -> Tensor:
        if tuple(weight.shape) != self.shape:
            raise ValueError(f"LoRA made for a weight {self.shape}, got {tuple(weight.shape)}")
        return weight + self.delta()  # (out, in)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, rank={self.rank}, alpha={self.alpha}, blocks={self.blocks}"


def _targets_of(model: nn.Module, targets: Sequence[str]) -> list[tuple[nn.Module, str, list]]:
    """(module, parameter name, [(block rows, adapted?)]) for every weight `targets` name."""
    found = []
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            qkv = [name in targets for name in ("query", "key", "value")]
            if any(qkv):
                found.append((module, "in_proj_weight", list(zip(module._split, qkv, strict=True))))
            if "output" in targets:
                found.append((module.out_proj, "weight", None))
        elif isinstance(module, FeedForward | SwiGLU) and "feed_forward" in targets:
            names = ("linear1", "linear2") if isinstance(module, FeedForward) else (
                "gate_proj", "up_proj", "down_proj")  # fmt: skip
            found.extend((getattr(module, name), "weight", None) for name in names)
    return found


def add_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    targets: Iterable[str] = ("query", "value"),
) -> list[nn.Parameter]:
    """Freeze every parameter of `model` (other adapters' excepted) and put a `LoRA`
    parametrization on the weights named by `targets` (see `LORA_TARGETS`; the default, the
    query and value projections, is Hu et al.'s choice). Returns the new adapters' parameters,
    trainable: pass them to the optimiser. The model is changed in place and, at first,
    computes what it did before.

    Each of W^Q, W^K, W^V gets its own pair, so an adapted (rows x in) block adds
    rank * (rows + in) trainable numbers. Biases and norms stay frozen.

    Shapes:
        an adapted weight (out, in) keeps its shape; its pairs are A (rank, in), B (rows, rank)

    Book: 6.10 Low-rank adapters.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    unknown = [t for t in targets if t not in LORA_TARGETS]
    if unknown or not targets:
        raise ValueError(f"targets must be some of {LORA_TARGETS}, got {targets}")
    found = _targets_of(model, targets)
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no attention or feed-forward weights to adapt"
        )
    if any(parametrize.is_parametrized(module, name) for module, name, _ in found):
        raise ValueError("the model already has adapters: merge_lora or a fresh model first")
    for name, p in model.named_parameters():
        if not _is_adapter_name(name):
            p.requires_grad_(False)
    trainable = []
    for module, name, blocks in found:
        weight = getattr(module, name)
        sizes, adapt = zip(*blocks, strict=True) if blocks else (None, None)
        lora = LoRA(*weight.shape, rank, alpha, sizes, adapt, device=weight.device,
                    dtype=weight.dtype)  # fmt: skip
        parametrize.register_parametrization(module, name, lora)
        trainable.extend(lora.parameters())
    return trainable


class TrainableTokens(nn.Module):
    """The parametrization W -> W + D on the rows `token_ids` of an embedding matrix: D
    (one row per id, starting at zero) trains, the other rows stay as they are.

    New tokens added to a vocabulary (a chat template's role tokens) need rows of their own;
    with the embedding frozen they would keep their initial rows, and tokens initialised alike
    could never be told apart. `peft` calls this `trainable_token_indices`.

    Shapes:
        weight (V, C)  ->  (V, C); trainable_tokens_delta (len(token_ids), C)

    Book: 6.10 Low-rank adapters.
    """

    def __init__(
        self,
        vocab_size: int,
        width: int,
        token_ids: Sequence[int],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        ids = list(token_ids)
        if (
            not ids
            or len(set(ids)) != len(ids)
            or not all(isinstance(i, int) and 0 <= i < vocab_size for i in ids)
        ):
            raise ValueError(
                f"token_ids must be distinct ints in [0, {vocab_size}), got {token_ids!r}"
            )
        self.shape = (vocab_size, width)
        self.register_buffer("token_ids", torch.tensor(ids, device=device))
        self.trainable_tokens_delta = nn.Parameter(
            torch.zeros(len(ids), width, device=device, dtype=dtype)
        )

    def forward(self, weight: Tensor) -> Tensor:
        if tuple(weight.shape) != self.shape:
            raise ValueError(
                f"TrainableTokens made for a weight {self.shape}, got {tuple(weight.shape)}"
            )
        return weight.index_add(0, self.token_ids, self.trainable_tokens_delta)  # (V, C)


def add_trainable_tokens(model: nn.Module, token_ids: Sequence[int]) -> list[nn.Parameter]:
    """Let the embedding rows of `token_ids` train (a `TrainableTokens` parametrization on
    every `TokenEmbedding` of `model`), nothing else; returns the new trainable parameters.

    With tied weights the output projection shares the embedding matrix: it gets the same
    parametrization, so that the tokens are read and written with the same new rows.

    Shapes:
        embedding (V, C): len(token_ids) x C trainable numbers

    Book: 6.10 Low-rank adapters.
    """
    embeddings = [m for m in model.modules() if isinstance(m, TokenEmbedding)]
    if not embeddings:
        raise ValueError(f"{type(model).__name__} has no TokenEmbedding")
    trainable = []
    for embedding in embeddings:
        if parametrize.is_parametrized(embedding, "weight"):
            raise ValueError("the embedding already has trainable tokens: one set per model")
        weight = embedding.weight
        sharing = [m for m in model.modules() if m._parameters.get("weight") is weight]  # ties
        rows = TrainableTokens(*weight.shape, token_ids, device=weight.device,
                               dtype=weight.dtype)  # fmt: skip
        for module in sharing:
            parametrize.register_parametrization(module, "weight", rows)
        trainable.extend(rows.parameters())
    return trainable


_ADAPTERS = (LoRA, TrainableTokens)
_ADAPTER_NAMES = ("lora_A", "lora_B", "trainable_tokens_delta")


def _is_adapter_name(name: str) -> bool:
    return any(part in _ADAPTER_NAMES for part in name.split("."))


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter (`LoRA`, `TrainableTokens`) into its weight and remove the
    parametrizations, in place; returns `model`, now the base architecture with weights
    W + (alpha / r) B A (and the trained token rows).

    The merged weight is the very tensor the parametrized forward computes, so the merged
    model's outputs are identical, bit for bit. A weight shared by two modules (tied) is merged
    once and stays shared. The frozen base weights are overwritten: keep a copy
    (`copy.deepcopy`) to go on using the base, or merge a copy to go on using the adapters.

    Shapes:
        every adapted weight (out, in) keeps its shape

    Book: 6.10 Low-rank adapters.
    """
    adapted = [
        (module, name, chain.original)
        for module in model.modules()
        if parametrize.is_parametrized(module)
        for name, chain in module.parametrizations.items()
        if any(isinstance(p, _ADAPTERS) for p in chain)
    ]
    if not adapted:
        raise ValueError("the model has no LoRA adapters to merge (call add_lora first)")
    for module in {id(m): m for m, _, _ in adapted}.values():
        _own_class(module)
    merged: set[int] = set()
    for module, name, original in adapted:
        # The first module holding a tied weight writes W + update into it; the others find it
        # merged already and only drop their parametrization.
        first = id(original) not in merged
        parametrize.remove_parametrizations(module, name, leave_parametrized=first)
        merged.add(id(original))
    return model


def _own_class(module: nn.Module) -> None:
    """Give a parametrized module a class of its own. torch makes one class per parametrized
    module, holding the parametrized weights as properties, but `copy.deepcopy` keeps the class:
    removing a parametrization from a copy would then delete the property of the original."""
    cls = type(module)
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))


def _adapter_tensors(model: nn.Module) -> dict[str, Tensor]:
    """The adapters' parameters by state-dict name, a tied one under its first name only."""
    out, seen = {}, set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if _is_adapter_name(name) and id(tensor) not in seen:
            out[name] = tensor
            seen.add(id(tensor))
    return out


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapters' tensors only (every `lora_A` and `lora_B`, of `LoRA` parametrizations and
    of `LoRALinear` layers, and the rows of `TrainableTokens`), copied: the part of a
    fine-tuned model worth saving when the base is kept once.

    Shapes:
        name -> lora_A (r, in), lora_B (rows, r) or trainable_tokens_delta (n, C)

    Book: 6.10 Low-rank adapters.
    """
    state = {k: v.detach().clone() for k, v in _adapter_tensors(model).items()}
    if not state:
        raise ValueError("the model has no LoRA adapters (call add_lora first)")
    return state


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy an adapter saved by `lora_state_dict` into `model`'s adapters, in place; the base
    weights are not touched, so one frozen base can switch between adapters.

    The names and shapes must match the model's adapters exactly (same targets, same rank).

    Shapes:
        name -> lora_A (r, in), lora_B (rows, r) or trainable_tokens_delta (n, C)

    Book: 6.10 Low-rank adapters.
    """
    own = _adapter_tensors(model)
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if not own or missing or unexpected:
        raise ValueError(
            f"adapter names do not match the model's: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]} ({len(missing)} and {len(unexpected)} in all)"
        )
    for name, tensor in state.items():
        if own[name].shape != tensor.shape:
            raise ValueError(
                f"{name}: the model's adapter is {tuple(own[name].shape)}, the state's "
                f"{tuple(tensor.shape)} (another rank?)"
            )
    for name, tensor in state.items():
        own[name].copy_(tensor)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """The number of parameters of `model` (shared ones once), or of those with
    requires_grad=True. With adapters the total counts the base and the adapters.

    Shapes:
        returns an int

    Book: 6.10 Low-rank adapters.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
