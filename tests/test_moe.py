"""The mixture-of-experts layer of page 4.10: top-k routing against a direct computation, the
balancing loss against Hugging Face's Mixtral, capacity and dropped tokens, and the MoE layer
against the dense feed-forward network it generalises."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from tutorlib.layers import FeedForward
from tutorlib.models import TransformerConfig
from tutorlib.moe import (
    MoEFeedForward,
    expert_capacity,
    fit_moe,
    load_balancing_loss,
    moe_aux_loss,
    moe_decoder,
    moe_layers,
    top_k_routing,
)


def logits(n: int = 12, e: int = 6, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, e, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_top_k_routing_matches_a_direct_computation() -> None:
    z = logits()
    weights, experts = top_k_routing(z, 2)
    assert weights.shape == (12, 2) and experts.shape == (12, 2)
    assert weights.dtype == torch.float64 and experts.dtype == torch.int64
    probs = z.softmax(dim=-1)
    top = probs.topk(2, dim=-1)
    torch.testing.assert_close(experts, top.indices)  # the argmax experts, in order
    torch.testing.assert_close(weights, top.values / top.values.sum(-1, keepdim=True))
    torch.testing.assert_close(weights.sum(-1), torch.ones(12, dtype=torch.float64))
    assert (weights[:, 0] >= weights[:, 1]).all()
    assert (experts[:, 0] == z.argmax(-1)).all()


def test_top_k_routing_with_every_expert_is_the_softmax() -> None:
    z = logits()
    weights, experts = top_k_routing(z, 6)
    full = torch.zeros_like(z).scatter(1, experts, weights)  # back to expert order
    torch.testing.assert_close(full, z.softmax(dim=-1))


def test_top_k_routing_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at most"):
        top_k_routing(logits(e=3), 4)
    with pytest.raises(ValueError, match=r"\(tokens, experts\)"):
        top_k_routing(torch.zeros(2, 3, 4), 1)
    with pytest.raises(TypeError, match="floating"):
        top_k_routing(torch.zeros(4, 3, dtype=torch.long), 1)
    with pytest.raises(ValueError, match=">= 1"):
        top_k_routing(logits(), 0)


def test_balancing_loss_is_one_when_uniform_and_grows_with_imbalance() -> None:
    n, e = 8, 4
    uniform = torch.full((n, e), 1 / e)
    spread = torch.arange(n * 2).remainder(e).view(n, 2)  # every expert chosen 4 times
    assert load_balancing_loss(uniform, spread, e).item() == pytest.approx(1.0)
    # Everything on expert 0, with all the probability there: the loss reaches E.
    collapsed = torch.zeros(n, e).index_fill(1, torch.tensor([0]), 1.0)
    only_zero = torch.zeros(n, 1, dtype=torch.long)
    assert load_balancing_loss(collapsed, only_zero, e).item() == pytest.approx(e)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_balancing_loss_is_hugging_face_mixtrals_over_k(k: int) -> None:
    z = logits(n=20, e=5, seed=k, dtype=torch.float32)
    _, experts = top_k_routing(z, k)
    ours = load_balancing_loss(z.softmax(-1), experts, 5)
    theirs = load_balancing_loss_func((z,), num_experts=5, top_k=k)
    torch.testing.assert_close(ours * k, theirs)


def test_balancing_loss_gradient_lowers_the_busy_experts_probability() -> None:
    z = torch.zeros(6, 3, requires_grad=True)
    experts = torch.tensor([[0], [0], [0], [0], [1], [2]])  # expert 0 is busy
    load_balancing_loss(z.softmax(-1), experts, 3).backward()
    assert (z.grad[:, 0] > 0).all()  # descent lowers expert 0's logit
    assert (z.grad[:, 1:] < 0).all()


def test_balancing_loss_rejects_bad_input() -> None:
    probs = torch.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        load_balancing_loss(probs, torch.tensor([[0], [1], [2], [3]]), 3)
    with pytest.raises(ValueError, match=r"expected \(tokens, 4\), got \(4, 3\)"):
        load_balancing_loss(probs, torch.zeros(4, 1, dtype=torch.long), 4)
    with pytest.raises(TypeError, match="int64"):
        load_balancing_loss(probs, torch.zeros(4, 1), 3)
    with pytest.raises(ValueError, match=r"expected \(4, k\)"):
        load_balancing_loss(probs, torch.zeros(5, 1, dtype=torch.long), 3)


def copy_into_expert(dense: FeedForward, expert: FeedForward) -> None:
    expert.load_state_dict(dense.state_dict())


def test_one_expert_top_1_without_capacity_is_the_dense_feed_forward() -> None:
    torch.manual_seed(0)
    dense = FeedForward(8, 16, activation="gelu").double()
    moe = MoEFeedForward(8, 16, n_experts=1, k=1, activation="gelu").double()
    copy_into_expert(dense, moe.experts[0])
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    torch.testing.assert_close(moe(x), dense(x))
    assert moe.dropped == 0 and moe.expert_counts.tolist() == [15]
    assert moe.aux_loss.item() == pytest.approx(1.0)


def test_routing_is_permutation_equivariant_over_tokens() -> None:
    torch.manual_seed(0)
    moe = MoEFeedForward(8, 16, n_experts=4, k=2).double()
    x = torch.randn(1, 10, 8, dtype=torch.float64)
    perm = torch.randperm(10)
    torch.testing.assert_close(moe(x[:, perm]), moe(x)[:, perm])
    # ... and it is each token's own weighted sum of its two experts.
    weights, experts = top_k_routing(moe.router(x[0]), 2)
    token = 3
    expected = sum(
        weights[token, j] * moe.experts[int(experts[token, j])](x[0, token]) for j in range(2)
    )
    torch.testing.assert_close(moe(x)[0, token], expected)


def test_capacity_drops_what_the_formula_says_and_dropped_tokens_get_zeros() -> None:
    torch.manual_seed(0)
    moe = MoEFeedForward(4, 8, n_experts=2, k=1, capacity_factor=0.5)
    with torch.no_grad():
        moe.router.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]))
    x = torch.randn(2, 5, 4)
    x[..., 0] = torch.tensor([1.0, 1, 1, 1, 1, 1, 1, -1, -1, -1]).view(2, 5)  # 7 to expert 0
    out = moe(x).view(10, 4)
    capacity = math.ceil(0.5 * 10 * 1 / 2)
    assert moe.capacity == capacity == expert_capacity(10, 2, 1, 0.5) == 3
    assert moe.expert_counts.tolist() == [7, 3]
    assert moe.dropped == (7 - capacity) + max(0, 3 - capacity) == 4
    # Expert 0 keeps the first three tokens in order; the other four get nothing.
    zero_rows = (out == 0).all(dim=1)
    assert zero_rows.tolist() == [False] * 3 + [True] * 4 + [False] * 3
    # Without the limit nobody is dropped.
    moe.capacity_factor = None
    assert not (moe(x).view(10, 4) == 0).all(dim=1).any() and moe.dropped == 0


def test_capacity_serves_first_choices_before_second_choices() -> None:
    moe = MoEFeedForward(3, 4, n_experts=3, k=2, capacity_factor=0.5)
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(3))
    # Token 0 prefers expert 1 then 0; tokens 1 and 2 prefer 0 then 1.
    x = torch.tensor([[[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [2.0, 1.0, 0.0]]])
    moe(x)
    assert moe.capacity == 1  # ceil(0.5 * 3 * 2 / 3)
    # Expert 0 takes token 1's first choice (not token 0's earlier second choice); expert 1
    # takes token 0's first choice. The other four of six assignments are dropped.
    assert moe.dropped == 4
    out = moe(x)[0]
    assert (out[2] == 0).all() and not (out[0] == 0).all() and not (out[1] == 0).all()


def test_gradients_reach_the_router_and_the_chosen_experts() -> None:
    torch.manual_seed(0)
    moe = MoEFeedForward(8, 16, n_experts=4, k=2)
    x = torch.randn(2, 6, 8)
    (moe(x).pow(2).sum() + moe.aux_loss).backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0
    used = moe.expert_counts > 0
    for expert, is_used in zip(moe.experts, used.tolist(), strict=True):
        grad = expert.linear1.weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == is_used


def test_moe_layer_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at most"):
        MoEFeedForward(8, 16, n_experts=2, k=3)
    with pytest.raises(ValueError, match="capacity_factor"):
        MoEFeedForward(8, 16, n_experts=2, capacity_factor=0.0)
    moe = MoEFeedForward(8, 16, n_experts=2)
    with pytest.raises(ValueError, match=r"expected \(batch, seq, 8\)"):
        moe(torch.zeros(4, 8))
    with pytest.raises(TypeError, match="floating"):
        moe(torch.zeros(1, 2, 8, dtype=torch.long))


def test_moe_decoder_replaces_every_feed_forward_and_trains() -> None:
    config = TransformerConfig(vocab_size=11, context_length=8, d_model=16, n_heads=2, d_ff=8)
    torch.manual_seed(0)
    model = moe_decoder(config, n_experts=4, k=2, capacity_factor=1.25)
    layers = moe_layers(model)
    assert len(layers) == config.n_layers
    assert all(layer.ff is moe for layer, moe in zip(model.decoder.layers, layers, strict=True))
    tokens = torch.randint(0, 11, (2, 8))
    assert model(tokens).shape == (2, 8, 11)
    aux = moe_aux_loss(model)
    torch.testing.assert_close(aux, (layers[0].aux_loss + layers[1].aux_loss) / 2)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        return tokens, tokens.roll(-1, dims=1)

    history = fit_moe(model, batch, 3, 1e-2, val_batch=batch(), eval_every=1, progress=False)
    assert len(history["aux_loss"]) == len(history["expert_fraction"]) == 3
    fractions = torch.tensor(history["expert_fraction"])  # (steps, layers, E)
    torch.testing.assert_close(fractions.sum(-1), torch.ones(3, 2))
    total = torch.tensor(history["lm_loss"]) + 0.01 * torch.tensor(history["aux_loss"])
    torch.testing.assert_close(total, torch.tensor(history["loss"]))
    assert history["eval_step"] == [1, 2, 3] and len(history["eval_seconds"]) == 3
