"""LoRA (tutorlib.adapters): the layer, the parametrization, merging and swapping adapters."""

import copy
import math
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from tutorlib.adapters import (
    LoRA,
    LoRALinear,
    TrainableTokens,
    add_lora,
    add_trainable_tokens,
    count_parameters,
    load_lora_state_dict,
    lora_state_dict,
    merge_lora,
)
from tutorlib.models import LLAMA_STYLE, DecoderOnly, TransformerConfig

CONFIG = TransformerConfig(
    vocab_size=23, d_model=32, n_heads=4, n_layers=2, d_ff=64, context_length=16, norm_first=True
)
GQA = replace(LLAMA_STYLE, vocab_size=23, d_model=32, n_heads=4, n_kv_heads=2, n_layers=2,
              d_ff=48, context_length=16)  # fmt: skip


def _model(config: TransformerConfig = CONFIG, seed: int = 0) -> DecoderOnly:
    torch.manual_seed(seed)
    return DecoderOnly(config).eval()


def _tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 23, (3, 12), generator=torch.Generator().manual_seed(seed))


def _randomise(parameters, seed: int = 2) -> None:
    """Give every adapter non-zero values, as training would (B starts at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in parameters:
            p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))


# --- LoRALinear --------------------------------------------------------------------------------


def test_lora_linear_starts_as_its_base_and_has_the_contract_attributes() -> None:
    torch.manual_seed(0)
    base = nn.Linear(10, 6)
    layer = LoRALinear(base, rank=3, alpha=6.0)
    assert layer.base is base and layer.rank == 3 and layer.alpha == 6.0 and layer.scaling == 2.0
    assert layer.lora_A.shape == (3, 10) and layer.lora_B.shape == (6, 3)
    assert torch.equal(layer.lora_B, torch.zeros(6, 3)) and layer.lora_A.abs().sum() > 0
    assert layer.lora_A.abs().max() <= 1 / math.sqrt(10)  # nn.Linear's bound: 1 / sqrt(fan_in)
    assert not base.weight.requires_grad and not base.bias.requires_grad
    x = torch.randn(2, 5, 10)
    assert torch.equal(layer(x), base(x))


def test_lora_linear_forward_is_the_formula() -> None:
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(7, 5, dtype=torch.float64), rank=2, alpha=3.0)
    _randomise([layer.lora_B])
    x = torch.randn(4, 7, dtype=torch.float64)
    W, b = layer.base.weight, layer.base.bias
    expected = x @ (W + 1.5 * layer.lora_B @ layer.lora_A).T + b
    torch.testing.assert_close(layer(x), expected)


def test_only_the_adapter_trains() -> None:
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 4), rank=2, alpha=2.0)
    before = copy.deepcopy(layer.base.state_dict())
    trainable = [p for p in layer.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(layer.lora_A), id(layer.lora_B)}
    assert count_parameters(layer, trainable_only=True) == 2 * (8 + 4)
    optimizer = torch.optim.AdamW(trainable, lr=0.1)
    layer(torch.randn(16, 8)).pow(2).sum().backward()
    assert layer.base.weight.grad is None and layer.lora_B.grad.abs().sum() > 0
    optimizer.step()
    assert all(torch.equal(v, layer.base.state_dict()[k]) for k, v in before.items())
    assert layer.lora_B.abs().sum() > 0  # B moved off zero


def test_lora_linear_merge() -> None:
    for dtype, exact in ((torch.float32, False), (torch.float64, True)):
        torch.manual_seed(0)
        layer = LoRALinear(nn.Linear(12, 9, dtype=dtype), rank=4, alpha=8.0)
        _randomise([layer.lora_B])
        merged = layer.merge()
        assert type(merged) is nn.Linear and merged.weight.shape == (9, 12)
        assert torch.equal(merged.bias, layer.base.bias)
        x = torch.randn(5, 12, dtype=dtype)
        if exact:
            torch.testing.assert_close(merged(x), layer(x), rtol=1e-12, atol=1e-12)
        else:
            torch.testing.assert_close(merged(x), layer(x))  # float32 rounding
        assert not torch.allclose(merged(x), layer.base(x))  # the update is in the merge


def test_lora_linear_without_bias_merges_without_bias() -> None:
    layer = LoRALinear(nn.Linear(6, 6, bias=False), rank=1, alpha=1.0)
    assert layer.merge().bias is None


def test_lora_linear_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="nn.Linear"):
        LoRALinear(nn.Conv1d(3, 3, 1), rank=1, alpha=1.0)
    for rank in (0, 7, 2.0, True):
        with pytest.raises(ValueError, match="rank"):
            LoRALinear(nn.Linear(10, 6), rank=rank, alpha=1.0)
    for alpha in (0, -1.0, "8"):
        with pytest.raises(ValueError, match="alpha"):
            LoRALinear(nn.Linear(10, 6), rank=2, alpha=alpha)
    layer = LoRALinear(nn.Linear(10, 6), rank=2, alpha=1.0)
    with pytest.raises(ValueError, match=r"\(\.\.\., 10\)"):
        layer(torch.randn(3, 9))


# --- The parametrization -----------------------------------------------------------------------


def test_parametrization_equals_lora_linear_on_the_same_pair() -> None:
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(12, 9, dtype=torch.float64), rank=3, alpha=5.0)
    _randomise([layer.lora_A, layer.lora_B])
    plain = copy.deepcopy(layer.base)
    lora = LoRA(9, 12, rank=3, alpha=5.0, dtype=torch.float64)
    with torch.no_grad():
        lora.lora_A[0].copy_(layer.lora_A)
        lora.lora_B[0].copy_(layer.lora_B)
    parametrize.register_parametrization(plain, "weight", lora)
    x = torch.randn(4, 12, dtype=torch.float64)
    torch.testing.assert_close(plain(x), layer(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(plain.weight, layer.merge().weight, rtol=0, atol=0)


def test_parametrization_blocks_touch_only_their_rows() -> None:
    torch.manual_seed(0)
    lora = LoRA(10, 6, rank=2, alpha=2.0, blocks=(4, 3, 3), adapt=(True, False, True))
    assert [tuple(b.shape) for b in lora.lora_B] == [(4, 2), (3, 2)]
    _randomise(lora.parameters())
    W = torch.randn(10, 6)
    out = lora(W)
    assert torch.equal(out[4:7], W[4:7])  # the block not adapted
    torch.testing.assert_close(out[:4], W[:4] + lora.lora_B[0] @ lora.lora_A[0])
    torch.testing.assert_close(out[7:], W[7:] + lora.lora_B[1] @ lora.lora_A[1])
    with pytest.raises(ValueError, match="blocks"):
        LoRA(10, 6, rank=2, alpha=2.0, blocks=(4, 3))
    with pytest.raises(ValueError, match="rank"):
        LoRA(10, 6, rank=4, alpha=2.0, blocks=(4, 3, 3))  # 4 > the 3 rows of a block
    with pytest.raises(ValueError, match="weight"):
        lora(torch.randn(6, 10))


# --- A model -----------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [CONFIG, GQA], ids=["gpt", "llama-gqa"])
def test_add_lora_starts_at_the_base_and_counts_rank_times_in_plus_out(config) -> None:
    model = _model(config)
    tokens = _tokens()
    with torch.no_grad():
        before = model(tokens)
    total = count_parameters(model)
    trainable = add_lora(model, rank=2, alpha=4.0, targets=("query", "key", "value", "output"))
    with torch.no_grad():
        assert torch.equal(model(tokens), before)
    C, kv = config.d_model, (config.n_kv_heads or config.n_heads) * config.head_dim  # W^K rows
    per_layer = 2 * (C + C) + 2 * 2 * (kv + C) + 2 * (C + C)  # q, k and v, output
    assert sum(p.numel() for p in trainable) == config.n_layers * per_layer
    assert count_parameters(model, trainable_only=True) == config.n_layers * per_layer
    assert count_parameters(model) == total + config.n_layers * per_layer


def test_feed_forward_targets() -> None:
    for config, ff in ((CONFIG, 2 * (2 * (32 + 64))), (GQA, 3 * (2 * (32 + 48)))):
        model = _model(config)
        trainable = add_lora(model, rank=2, alpha=2.0, targets=("feed_forward",))
        assert sum(p.numel() for p in trainable) == config.n_layers * ff


def test_training_moves_only_the_adapters() -> None:
    model = _model()
    frozen = copy.deepcopy(model.state_dict())
    trainable = add_lora(model, rank=2, alpha=4.0)
    model.train()
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    tokens = _tokens()
    for _ in range(2):
        loss = nn.functional.cross_entropy(
            model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten()
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert all(p.grad is not None for p in trainable)
    state = model.state_dict()
    for name, value in frozen.items():
        key = name.replace("in_proj_weight", "parametrizations.in_proj_weight.original")
        assert torch.equal(state[key], value), name
    assert any(p.abs().sum() > 0 for n, p in lora_state_dict(model).items() if "lora_B" in n)


def test_merge_lora_gives_identical_logits() -> None:
    model = _model(GQA)
    _randomise(add_lora(model, rank=4, alpha=8.0, targets=("query", "value", "feed_forward")))
    tokens = _tokens()
    with torch.no_grad():
        adapted = model(tokens)
        base = _model(GQA)(tokens)
    merge_lora(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert type(model.decoder.layers[0].self_attn).__name__ == "MultiHeadAttention"
    assert set(model.state_dict()) == set(_model(GQA).state_dict())
    with torch.no_grad():
        assert torch.equal(model(tokens), adapted)
        assert not torch.allclose(adapted, base)
    with pytest.raises(ValueError, match="no LoRA"):
        merge_lora(model)


def test_merging_a_copy_leaves_the_adapted_model_working() -> None:
    """copy.deepcopy keeps torch's parametrized class: merging the copy must not break it."""
    model = _model()
    _randomise(add_lora(model, rank=2, alpha=4.0))
    add_trainable_tokens(model, [20, 21])
    tokens = _tokens()
    with torch.no_grad():
        adapted = model(tokens)
        merged = merge_lora(copy.deepcopy(model))
        assert torch.equal(merged(tokens), adapted) and torch.equal(model(tokens), adapted)
    assert parametrize.is_parametrized(model.decoder.layers[0].self_attn)  # still adapted


def test_swapping_adapters_restores_each_exactly() -> None:
    model = _model()
    trainable = add_lora(model, rank=2, alpha=4.0)
    tokens = _tokens()
    outputs, states = [], []
    for seed in (3, 4):
        _randomise(trainable, seed)
        states.append(lora_state_dict(model))
        with torch.no_grad():
            outputs.append(model(tokens))
    assert not torch.equal(outputs[0], outputs[1])
    for state, expected in zip(states + states[::-1], outputs + outputs[::-1], strict=True):
        load_lora_state_dict(model, state)
        with torch.no_grad():
            assert torch.equal(model(tokens), expected)
    assert all("lora_A" in k or "lora_B" in k for k in states[0])


def test_bad_model_arguments_raise() -> None:
    model = _model()
    with pytest.raises(ValueError, match="targets"):
        add_lora(model, rank=2, alpha=1.0, targets=("q_proj",))
    with pytest.raises(ValueError, match="attention or feed-forward"):
        add_lora(nn.Linear(3, 3), rank=1, alpha=1.0)
    with pytest.raises(ValueError, match="no LoRA"):
        lora_state_dict(model)
    add_lora(model, rank=2, alpha=1.0)
    with pytest.raises(ValueError, match="already"):
        add_lora(model, rank=2, alpha=1.0)
    other = _model()
    add_lora(other, rank=4, alpha=1.0)
    with pytest.raises(ValueError, match="another rank"):
        load_lora_state_dict(model, lora_state_dict(other))
    with pytest.raises(ValueError, match="names do not match"):
        load_lora_state_dict(model, {"decoder.lora_A": torch.zeros(2, 32)})


# --- Trainable token rows ----------------------------------------------------------------------


def test_trainable_tokens_change_only_their_rows() -> None:
    rows = TrainableTokens(6, 4, [1, 4])
    _randomise(rows.parameters())
    W = torch.randn(6, 4)
    out = rows(W)
    assert torch.equal(out[[0, 2, 3, 5]], W[[0, 2, 3, 5]])
    torch.testing.assert_close(out[[1, 4]], W[[1, 4]] + rows.trainable_tokens_delta)
    for ids in ([], [1, 1], [6], [2.0]):
        with pytest.raises(ValueError, match="token_ids"):
            TrainableTokens(6, 4, ids)


def test_new_tokens_train_through_the_tied_embedding_and_merge() -> None:
    """Tokens with identical rows in a frozen, tied embedding get identical logits forever;
    trainable rows, applied to the embedding and the output alike, tell them apart."""
    model = _model()
    with torch.no_grad():
        tied = model.decoder.embed.tokens.weight
        tied[20:] = tied[:20].mean(0)  # three new tokens at the mean row, as 6.9 adds them
    old_rows = tied[:20].clone()
    tokens = _tokens()
    with torch.no_grad():
        before = model(tokens)
    assert torch.equal(before[..., 20], before[..., 22])
    new = add_trainable_tokens(model, [20, 21, 22])
    adapters = add_lora(model, rank=2, alpha=2.0)
    assert all(p.requires_grad for p in new + adapters)  # add_lora freezes the base only
    assert count_parameters(model, trainable_only=True) == 3 * 32 + sum(p.numel() for p in adapters)
    with torch.no_grad():
        assert torch.equal(model(tokens), before)
    _randomise(new)
    with torch.no_grad():
        adapted = model(tokens)
    assert not torch.allclose(adapted[..., 20], adapted[..., 22])
    assert sum("trainable_tokens_delta" in k for k in lora_state_dict(model)) == 1  # tied: once
    merge_lora(model)
    assert model.output.weight is model.decoder.embed.tokens.weight  # still tied
    with torch.no_grad():
        assert torch.equal(model(tokens), adapted)
        assert torch.equal(model.output.weight[:20], old_rows)
