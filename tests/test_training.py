"""Chapter 3's training pieces: the label-smoothed loss against torch, the schedules, the loop
(tuple inputs, evaluation, clipping, bf16 autocast) and checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tutorlib.training import (
    constant_schedule,
    cosine_schedule,
    fit,
    inverse_sqrt_schedule,
    label_smoothed_cross_entropy,
    load_checkpoint,
    mask_for_mlm,
    save_checkpoint,
)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_label_smoothing_matches_torch_and_ignores_padding(smoothing: float) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(1, 7, (3, 5), generator=g)
    targets[0, 3:] = 0  # padding
    targets[2, 1:] = 0
    ours = label_smoothed_cross_entropy(logits, targets, smoothing, ignore_index=0)
    theirs = F.cross_entropy(
        logits.reshape(-1, 7), targets.reshape(-1), ignore_index=0, label_smoothing=smoothing
    )
    torch.testing.assert_close(ours.double(), theirs)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_theirs,) = torch.autograd.grad(theirs, logits)
    torch.testing.assert_close(g_ours.double(), g_theirs)
    assert g_ours[0, 3:].abs().max() == 0, "padded positions must get no gradient"


def test_label_smoothing_errors() -> None:
    with pytest.raises(ValueError, match="vocabulary dimension"):
        label_smoothed_cross_entropy(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="int64"):
        label_smoothed_cross_entropy(torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match="smoothing"):
        label_smoothed_cross_entropy(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), 1.0)


def test_schedules() -> None:
    warm = constant_schedule(4)
    assert [warm(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert constant_schedule(0)(0) == 1.0
    noam = inverse_sqrt_schedule(100)
    assert noam(99) == 1.0 and noam(9) == pytest.approx(0.1) and noam(399) == pytest.approx(0.5)
    # the paper's formula, up to its peak value (d_model * warmup)^-0.5
    d_model, warmup = 512, 4000
    for n in (1, 100, 4000, 10_000):
        paper = d_model**-0.5 * min(n**-0.5, n * warmup**-1.5)
        peak = (d_model * warmup) ** -0.5
        assert inverse_sqrt_schedule(warmup)(n - 1) * peak == pytest.approx(paper)
    cos = cosine_schedule(10, 110, final=0.1)
    assert cos(0) == pytest.approx(0.1) and cos(9) == 1.0
    assert cos(60) == pytest.approx(0.55) and cos(110) == pytest.approx(0.1)
    assert all(cos(s) >= cos(s + 1) for s in range(10, 120))
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_schedule(10, 10)
    with pytest.raises(ValueError, match="int >= 0"):
        constant_schedule(-1)


class Pair(nn.Module):
    """A model with two inputs, as an encoder-decoder has."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.linear(a + b)


def test_fit_with_tuple_inputs_schedule_evaluation_and_clipping() -> None:
    torch.manual_seed(0)
    model = Pair()
    a, b = torch.randn(32, 4), torch.randn(32, 4)
    y = (a + b).argmax(1) % 3
    calls = []

    def evaluate(m: nn.Module) -> dict[str, float]:
        calls.append(m.training)
        return {"accuracy": (m(a, b).argmax(1) == y).float().mean().item()}

    history = fit(
        model,
        lambda: ((a, b), y),
        steps=60,
        lr=0.05,
        schedule=cosine_schedule(5, 60),
        clip_norm=0.5,
        evaluate=evaluate,
        eval_every=20,
        progress=False,
    )
    assert history["eval_step"] == [20, 40, 60] and calls == [False, False, False]
    assert history["loss"][-1] < history["loss"][0]
    assert history["lr"][0] == pytest.approx(0.01) and history["lr"][4] == pytest.approx(0.05)
    assert history["eval_accuracy"][-1] > 0.8
    assert not model.training


def test_clipping_bounds_the_update() -> None:
    """With clip_norm, one SGD-like step moves the weights by at most lr * clip_norm."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    x = 100 * torch.randn(8, 4)
    fit(
        model,
        lambda: (x, torch.zeros(8, 1)),
        steps=1,
        lr=1.0,
        loss_fn=F.mse_loss,
        clip_norm=0.1,
        optimizer=optimizer,
        progress=False,
    )
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm() == pytest.approx(0.1, rel=1e-4)


def test_bf16_autocast_trains() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long()
    history = fit(
        model,
        lambda: (x, y),
        steps=80,
        lr=0.01,
        autocast_dtype=torch.bfloat16,
        progress=False,
    )
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert all(p.dtype == torch.float32 for p in model.parameters()), "weights stay fp32"
    with pytest.raises(ValueError, match="bfloat16 on the CPU"):
        fit(model, lambda: (x, y), steps=1, lr=0.1, autocast_dtype=torch.float16)


def test_checkpoint_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path / "run.pt", model, optimizer, step=7, note="x")
    fresh, fresh_opt = nn.Linear(3, 2), None
    fresh_opt = torch.optim.AdamW(fresh.parameters())
    extra = load_checkpoint(tmp_path / "run.pt", fresh, fresh_opt)
    assert extra == {"step": 7, "note": "x"}
    torch.testing.assert_close(fresh.weight, model.weight)
    assert fresh_opt.state_dict()["state"][0]["step"] == 1
    torch.save({"not": "a checkpoint"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_checkpoint(tmp_path / "bad.pt", fresh)
    save_checkpoint(tmp_path / "weights.pt", model)
    with pytest.raises(ValueError, match="no optimizer state"):
        load_checkpoint(tmp_path / "weights.pt", fresh, fresh_opt)


def test_fit_errors() -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="steps >= 1"):
        fit(model, lambda: (torch.zeros(1, 2), torch.zeros(1, dtype=torch.long)), 0, 0.1)
    with pytest.raises(ValueError, match="autocast_dtype"):
        fit(model, lambda: (None, None), 1, 0.1, autocast_dtype=torch.float64)
    assert math.isfinite(inverse_sqrt_schedule(1)(0))


def test_mlm_masking_follows_the_80_10_10_rule() -> None:
    g = torch.Generator().manual_seed(0)
    PAD, CLS, MASK, V = 0, 1, 2, 50
    tokens = torch.randint(3, V, (400, 64), generator=g)
    tokens[:, 0] = CLS
    tokens[:, 50:] = PAD
    inputs, labels = mask_for_mlm(tokens, MASK, V, special_ids=(PAD, CLS), generator=g)
    selected = labels != -100
    special = (tokens == PAD) | (tokens == CLS)
    assert not (selected & special).any(), "padding and [CLS] are never selected"
    assert torch.equal(inputs[special], tokens[special])
    assert torch.equal(labels[selected], tokens[selected])
    assert torch.equal(inputs[~selected], tokens[~selected])
    rate = selected.sum() / (~special).sum()
    assert 0.14 < rate < 0.16
    masked = (inputs[selected] == MASK).float().mean()
    kept = (inputs[selected] == tokens[selected]).float().mean()
    assert 0.77 < masked < 0.83 and 0.08 < kept < 0.12 + 1 / V
    replaced = inputs[selected & (inputs != MASK) & (inputs != tokens)]
    assert replaced.min() >= 3, "random replacements are ordinary tokens"
    again = mask_for_mlm(tokens, MASK, V, (PAD, CLS), generator=torch.Generator().manual_seed(1))
    assert not torch.equal(again[0], inputs)
    with pytest.raises(TypeError, match="int64"):
        mask_for_mlm(tokens.float(), MASK, V)
