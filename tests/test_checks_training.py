"""The Chapter 3 checks: right answers written differently pass, every likely mistake gets its
own hint whatever the hidden tests draw, and neither the reference nor any torch operator that
computes the same thing can stand in for the learner's code. The statistical check of
mask_tokens passes right answers and fails the random replacements that used to pass."""

from __future__ import annotations

import functools
import importlib.util
import math
import re
import runpy
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import HIDDEN_SEEDS, expect_hint, expect_pass
from tests.grading import solution_namespace
from tutorlib import decoding, tokenizers, training
from tutorlib.checks import draw, hidden_draw
from tutorlib.checks import training as checks

NOT_ALLOWED = "Not allowed in this exercise"


@pytest.fixture(scope="module")
def solution() -> dict:
    return solution_namespace("03_training")


CHECKS = [
    ("transformer_lr", checks.check_transformer_lr),
    ("teacher_forcing", checks.check_teacher_forcing),
    ("smoothed_loss", checks.check_smoothed_loss),
    ("clip_gradients", checks.check_clip_gradients),
    ("training_step", checks.check_training_step),
    ("merge_pair", checks.check_merge_pair),
    ("most_frequent_pair", checks.check_most_frequent_pair),
    ("mask_tokens", checks.check_mask_tokens),
    ("greedy_translate", checks.check_greedy_translate),
]


@pytest.mark.parametrize("name, check", CHECKS)
def test_the_solutions_pass(solution, name, check, capsys) -> None:
    expect_pass(check, solution[name])
    out = capsys.readouterr().out
    assert "passes the visible tests" in out and "passes the hidden tests" in out


# --- 1. transformer_lr -----------------------------------------------------------------------


def _lr(shift=0, scale=True, rise=True, decay=True, combine=min, check=True):
    def transformer_lr(step, d_model, warmup_steps):
        if check and step < 1:
            raise ValueError("step")
        n = step + shift
        terms = [t for t, on in ((n**-0.5, decay), (n * warmup_steps**-1.5, rise)) if on]
        return (d_model**-0.5 if scale else 1.0) * combine(terms)

    return transformer_lr


def test_lr_written_another_way_passes() -> None:
    def branches(step, d_model, warmup_steps):
        if step <= 0:
            raise ValueError(f"step {step}")
        if step < warmup_steps:
            return step / (math.sqrt(d_model) * warmup_steps**1.5)
        return 1 / math.sqrt(d_model * step)

    def as_tensor(step, d_model, warmup_steps):
        if step < 1:
            raise ValueError("steps count from 1")
        n = torch.tensor(float(step), dtype=torch.float64)
        return torch.rsqrt(torch.tensor(d_model)) * torch.minimum(n.rsqrt(), n / warmup_steps**1.5)

    expect_pass(checks.check_transformer_lr, branches)
    expect_pass(checks.check_transformer_lr, as_tensor)


@pytest.mark.parametrize(
    "candidate, hint, visible",
    [
        (_lr(shift=1), "peak comes one step early", True),
        (_lr(scale=False), "d_model^-0.5", True),
        (_lr(decay=False), "only the warm-up", True),
        (_lr(rise=False), "there is no warm-up", True),
        (_lr(combine=max), "max instead of min", True),
        (_lr(check=False), "raise a ValueError for step < 1", False),
    ],
)
def test_lr_mistakes_are_named(candidate, hint: str, visible: bool) -> None:
    expect_hint(checks.check_transformer_lr, candidate, hint)
    if visible:
        expect_hint(checks.check_transformer_lr, candidate, hint, hidden=False)


def test_lr_counted_from_zero_is_named() -> None:
    def late(step, d_model, warmup_steps):  # counts from 0: 0 ** -0.5 raises at the first step
        if step < 1:
            raise ValueError("step")
        n = step - 1
        return d_model**-0.5 * min(n**-0.5, n * warmup_steps**-1.5)

    def late_with_zero(step, d_model, warmup_steps):
        if step < 1:
            raise ValueError("step")
        n = step - 1
        return 0.0 if n == 0 else d_model**-0.5 * min(n**-0.5, n * warmup_steps**-1.5)

    for candidate in (late, late_with_zero):
        expect_hint(checks.check_transformer_lr, candidate, "one step late")
        expect_hint(checks.check_transformer_lr, candidate, "one step late", hidden=False)


def test_lr_a_different_error_for_step_zero_is_named() -> None:
    def zero_division(step, d_model, warmup_steps):  # no check: 0 ** -0.5 raises
        return d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)

    expect_hint(checks.check_transformer_lr, zero_division, "raise a ValueError for step < 1")


def test_lr_reference_is_refused_under_any_name() -> None:
    copy = runpy.run_path(training.__file__)["inverse_sqrt_schedule"]
    cached = functools.lru_cache(maxsize=None)(training.inverse_sqrt_schedule)
    for schedule in (training.inverse_sqrt_schedule, copy, cached):

        def cheat(step, d_model, warmup_steps, schedule=schedule):
            if step < 1:
                raise ValueError("step")
            return schedule(warmup_steps)(step - 1) * (d_model * warmup_steps) ** -0.5

        expect_hint(checks.check_transformer_lr, cheat, NOT_ALLOWED, hidden=False)


def test_lr_the_checks_private_reference_is_refused() -> None:
    def cheat(step, d_model, warmup_steps):
        return checks._lr(step, d_model, warmup_steps)

    expect_hint(checks.check_transformer_lr, cheat, NOT_ALLOWED, hidden=False)


# --- 2. teacher_forcing ------------------------------------------------------------------------


def test_teacher_forcing_written_another_way_passes() -> None:
    def roll(targets, bos_id, pad_id):
        inputs = torch.roll(targets, shifts=1, dims=1)
        inputs[:, 0] = bos_id
        return inputs, targets.clone()

    def pad_left(targets, bos_id, pad_id):
        return F.pad(targets[:, :-1], (1, 0), value=bos_id), targets

    def index(targets, bos_id, pad_id):
        B, T = targets.shape
        source = (torch.arange(T) - 1).clamp(min=0)
        inputs = targets[:, source]
        return torch.where(torch.arange(T) == 0, bos_id, inputs), targets

    for candidate in (roll, pad_left, index):
        expect_pass(checks.check_teacher_forcing, candidate)


def _bos(t, i):
    return torch.full_like(t[:, :1], i)


@pytest.mark.parametrize(
    "candidate, hint",
    [
        (lambda t, b, p: (t, t), "learn to copy it"),
        (lambda t, b, p: (torch.cat([t[:, 1:], _bos(t, p)], 1), t), "shifted the wrong way"),
        (lambda t, b, p: (torch.cat([t[:, 1:], _bos(t, b)], 1), t), "<bos> went at the end"),
        (lambda t, b, p: (torch.cat([_bos(t, b), t[:, 1:]], 1), t), "first target token was"),
        (lambda t, b, p: (torch.cat([_bos(t, p), t[:, :-1]], 1), t), "not padding"),
        (lambda t, b, p: (torch.cat([_bos(t, 1), t[:, :-1]], 1), t), "not a fixed id"),
        (lambda t, b, p: (t[:, :-1], t[:, 1:]), "start every row with <bos>"),
        (lambda t, b, p: (torch.cat([_bos(t, b), t], 1), t), "drop the last column"),
        (
            lambda t, b, p: (
                torch.cat([_bos(t, b), t[:, :-1]], 1),
                torch.cat([t[:, 1:], _bos(t, p)], 1),
            ),
            "unshifted",
        ),
        (
            lambda t, b, p: (torch.cat([_bos(t, b), t[:, :-1]], 1), t[:, 1:]),
            "not targets[:, 1:]",
        ),
        (
            lambda t, b, p: (torch.cat([_bos(t, b), t[:, :-1]], 1),) * 2,
            "not the shifted decoder inputs",
        ),
        (
            lambda t, b, p: (torch.cat([_bos(t, b), t[:, :-1]], 1).float(), t),
            "token ids are int64",
        ),
    ],
)
def test_teacher_forcing_mistakes_are_named(candidate, hint: str) -> None:
    expect_hint(checks.check_teacher_forcing, candidate, hint)


def test_teacher_forcing_hard_coded_ids_pass_only_the_visible_test() -> None:
    def fixed(t, b, p):
        return torch.cat([torch.full_like(t[:, :1], 1), t[:, :-1]], 1), t

    checks.check_teacher_forcing(fixed)
    expect_hint(checks.check_teacher_forcing, fixed, "not a fixed id")


def test_teacher_forcing_that_changes_its_input_fails() -> None:
    def in_place(t, b, p):  # shifts the targets themselves
        t[:, 1:] = t[:, :-1].clone()
        t[:, 0] = b
        return t, t

    expect_hint(checks.check_teacher_forcing, in_place, "changed an input", hidden=False)


# --- 3. smoothed_loss --------------------------------------------------------------------------


def _smoothed(kind=""):
    def smoothed_loss(logits, targets, smoothing, pad_id):
        B, T, V = logits.shape
        dim = {"dim0": 0, "dim1": 1}.get(kind, -1)
        log_p = torch.log_softmax(logits, dim=dim).reshape(-1, V)
        if kind == "flat_dim0":
            log_p = torch.log_softmax(logits.reshape(-1, V), dim=0)
        y = targets.reshape(-1)
        keep = (y != pad_id) if kind != "pad_target" else torch.ones_like(y, dtype=torch.bool)
        nll = -log_p.gather(1, y[:, None]).squeeze(1)
        if kind == "v_minus_1":
            per = (1 - smoothing) * nll + smoothing / (V - 1) * (-log_p.sum(-1) - nll)
        elif kind == "annotated":  # smoothing / (V - 2), neither the true class nor padding
            rest = -log_p.sum(-1) - nll + log_p[:, pad_id]
            per = (1 - smoothing) * nll + smoothing / (V - 2) * rest
        elif kind == "no_smoothing":
            per = nll
        elif kind == "sum_over_v":
            per = (1 - smoothing) * nll - smoothing * log_p.sum(-1)
        elif kind == "no_one_minus":
            per = nll - smoothing * log_p.mean(-1)
        elif kind == "kl":
            q = torch.full_like(log_p, smoothing / V)
            q.scatter_add_(1, y[:, None], torch.full_like(nll[:, None], 1 - smoothing))
            per = (q * (q.log() - log_p)).sum(-1)
        else:
            per = (1 - smoothing) * nll - smoothing * log_p.mean(-1)
        per = per * keep
        if kind == "sum":
            return per.sum()
        if kind == "all_positions":
            return per.sum() / y.numel()
        if kind == "mean_of_means":
            rows = per.reshape(B, T).sum(1) / keep.reshape(B, T).sum(1)
            return rows.mean()
        if kind == "per_sequence":
            return per.sum() / B
        return per.sum() / keep.sum()

    return smoothed_loss


def test_smoothed_loss_written_another_way_passes() -> None:
    def soft_target(logits, targets, smoothing, pad_id):  # the smoothed target, written out
        V = logits.shape[-1]
        log_p = F.log_softmax(logits, dim=-1)
        q = F.one_hot(targets, V).to(logits.dtype) * (1 - smoothing) + smoothing / V
        per = -(q * log_p).sum(-1)
        keep = targets != pad_id
        return per[keep].mean()

    def logsumexp(logits, targets, smoothing, pad_id):
        lse = logits.logsumexp(-1, keepdim=True)
        log_p = logits - lse
        picked = torch.take_along_dim(log_p, targets.unsqueeze(-1), dim=-1).squeeze(-1)
        per = -(1 - smoothing) * picked - smoothing * log_p.mean(-1)
        keep = (targets != pad_id).to(logits.dtype)
        return torch.einsum("bt,bt->", per, keep) / keep.sum()

    for candidate in (soft_target, logsumexp):
        expect_pass(checks.check_smoothed_loss, candidate)


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("dim1", "not over the positions (dim 1)", True),
        ("dim0", "not over the batch (dim 0)", True),
        ("flat_dim0", "each row over the vocabulary", True),
        ("all_positions", "counted in the mean", True),
        ("pad_target", "padding is not ignored", True),
        ("mean_of_means", "mean of each sequence's mean", True),
        ("per_sequence", "divided by the batch size", True),
        ("sum", "summed over positions", True),
        ("no_smoothing", "smoothing is missing", True),
        ("no_one_minus", "weighted by 1 - smoothing", True),
        ("sum_over_v", "not the sum", True),
        ("v_minus_1", "V - 1 wrong classes (fairseq", True),
        ("annotated", "Annotated Transformer", True),
        ("kl", "KL divergence", True),
    ],
)
def test_smoothed_loss_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    expect_hint(checks.check_smoothed_loss, _smoothed(kind), hint)
    if visible:
        expect_hint(checks.check_smoothed_loss, _smoothed(kind), hint, hidden=False)


def test_smoothed_loss_hidden_tests_vary_pad_smoothing_and_sizes() -> None:
    pads, smoothings = set(), set()
    for seed in HIDDEN_SEEDS:
        draw._use_seed(seed)
        for logits, targets, s, pad in checks._smoothed_hidden(hidden_draw("smoothed_loss")):
            B, T, V = logits.shape
            assert len({B, T, V}) == 3 and (targets == pad).any() and (targets[0] != pad).all()
            pads.add(pad)
            smoothings.add(s)
    assert 0.0 in smoothings and len(smoothings) > 5 and len(pads - {0}) >= 3


def test_smoothed_loss_refuses_every_cross_entropy() -> None:
    ce = F.cross_entropy  # an alias made before the test

    def flat(logits, targets):
        return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)

    def builtin(logits, targets, s, pad):
        return ce(*flat(logits, targets), ignore_index=pad, label_smoothing=s)

    def c_level(logits, targets, s, pad):
        return torch._C._nn.cross_entropy_loss(*flat(logits, targets), None, 1, pad, s)

    def aten_nll(logits, targets, s, pad):
        x, y = flat(logits, targets)
        log_p = x.log_softmax(-1)
        nll = torch.ops.aten.nll_loss_forward(log_p, y, None, 1, pad)[0]
        return (1 - s) * nll - s * log_p.mean(-1)[y != pad].mean()

    def nll_loss(logits, targets, s, pad):  # another public op: the nll of log_softmax
        x, y = flat(logits, targets)
        log_p = x.log_softmax(-1)
        return (1 - s) * F.nll_loss(log_p, y, ignore_index=pad) - s * log_p.mean(-1)[
            y != pad
        ].mean()

    def kl_div(logits, targets, s, pad):  # KL + the target's entropy
        x, y = flat(logits, targets)
        q = F.one_hot(y, x.shape[-1]).to(x.dtype) * (1 - s) + s / x.shape[-1]
        per = F.kl_div(x.log_softmax(-1), q, reduction="none").sum(-1) - (q * q.log()).sum(-1)
        return per[y != pad].mean()

    def module(logits, targets, s, pad):
        return nn.CrossEntropyLoss(ignore_index=pad, label_smoothing=s)(*flat(logits, targets))

    for cheat in (builtin, c_level, aten_nll, nll_loss, kl_div, module):
        expect_hint(checks.check_smoothed_loss, cheat, NOT_ALLOWED, hidden=False)
        expect_hint(checks.check_smoothed_loss, cheat, NOT_ALLOWED, seeds=["s"])


def test_smoothed_loss_refuses_the_reference_under_any_name() -> None:
    copy = runpy.run_path(training.__file__)["label_smoothed_cross_entropy"]
    spec = importlib.util.spec_from_file_location("another_training", training.__file__)
    another = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(another)
    cached = functools.lru_cache(maxsize=None)(training.label_smoothed_cross_entropy)
    for reference in (copy, another.label_smoothed_cross_entropy, cached):
        cheat = lambda x, y, s, pad, r=reference: r(x, y, s, pad)  # noqa: E731
        expect_hint(checks.check_smoothed_loss, cheat, NOT_ALLOWED, hidden=False)

    def private(logits, targets, s, pad):
        return checks._smoothed_variant(logits, targets, s, pad, "")

    expect_hint(checks.check_smoothed_loss, private, NOT_ALLOWED, hidden=False)


def test_smoothed_loss_without_gradient_is_caught() -> None:
    def detached(logits, targets, s, pad):
        return _smoothed()(logits.detach(), targets, s, pad)

    expect_hint(checks.check_smoothed_loss, detached, "No gradient flows")


# --- 4. clip_gradients -------------------------------------------------------------------------


def _clip(kind=""):
    def clip_gradients(parameters, max_norm):
        grads = [p.grad for p in parameters if p.grad is not None]
        total = torch.stack([g.norm() for g in grads]).norm()
        if kind == "sum":
            total = torch.stack([g.norm() for g in grads]).sum()
        for g in grads:
            if kind == "per_parameter":
                g.mul_(torch.clamp(max_norm / (g.norm() + 1e-6), max=1.0))
            elif kind == "scale_up":
                g.mul_(max_norm / (total + 1e-6))
            elif kind == "by_value":
                g.clamp_(-max_norm, max_norm)
            elif kind != "not_in_place":
                g.mul_(torch.clamp(max_norm / (total + 1e-6), max=1.0))
        if kind == "after":
            return torch.stack([g.norm() for g in grads]).norm()
        return total

    return clip_gradients


def test_clip_written_another_way_passes() -> None:
    def concatenated(parameters, max_norm):
        params = [p for p in parameters if p.grad is not None]
        total = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params]))
        if total > max_norm:
            for p in params:
                p.grad = p.grad * (max_norm / (total + 1e-6))  # rebinding .grad works too
        return total

    def foreach(parameters, max_norm):  # torch's per-tensor norms are allowed
        grads = [p.grad for p in parameters if p.grad is not None]
        total = torch.stack(torch._foreach_norm(grads)).square().sum().sqrt()
        torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
        return total

    def python_floats(parameters, max_norm):  # returns a float, no eps
        grads = [p.grad for p in parameters if p.grad is not None]
        total = math.sqrt(sum(float((g * g).sum()) for g in grads))
        for g in grads:
            g.mul_(min(1.0, max_norm / total))
        return total

    for candidate in (concatenated, foreach, python_floats):
        expect_pass(checks.check_clip_gradients, candidate)


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("per_parameter", "clipped on its own", True),
        ("sum", "sum of the per-parameter norms", True),
        ("scale_up", "scaled up", False),
        ("after", "before clipping", True),
        ("not_in_place", "gradients were not changed", True),
        ("by_value", "clip_grad_value_", False),  # no entry above max_norm in the example
    ],
)
def test_clip_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    expect_hint(checks.check_clip_gradients, _clip(kind), hint)
    if visible:
        expect_hint(checks.check_clip_gradients, _clip(kind), hint, hidden=False)


def test_clip_parameters_and_missing_gradients() -> None:
    def weights(parameters, max_norm):  # clips the parameters themselves
        params = list(parameters)
        total = torch.stack([p.grad.norm() for p in params if p.grad is not None]).norm()
        with torch.no_grad():
            for p in params:
                p.mul_(torch.clamp(max_norm / (total + 1e-6), max=1.0))
        return total

    def every_grad(parameters, max_norm):  # assumes every parameter has a gradient
        params = list(parameters)
        total = torch.stack([p.grad.norm() for p in params]).norm()
        for p in params:
            p.grad.mul_(torch.clamp(max_norm / (total + 1e-6), max=1.0))
        return total

    def zeros(parameters, max_norm):  # gives the parameter without one a zero gradient
        params = list(parameters)
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return _clip()(params, max_norm)

    expect_hint(checks.check_clip_gradients, weights, "not the parameters' values", hidden=False)
    expect_hint(checks.check_clip_gradients, every_grad, "grad is None")
    expect_hint(checks.check_clip_gradients, zeros, "has a gradient now")


def test_clip_a_generator_read_twice_is_named() -> None:
    def twice(parameters, max_norm):
        total = torch.stack([p.grad.norm() for p in parameters if p.grad is not None]).norm()
        for p in parameters:
            if p.grad is not None:
                p.grad.mul_(torch.clamp(max_norm / (total + 1e-6), max=1.0))
        return total

    def stack_twice(parameters, max_norm):  # the second stack meets an empty list
        norms = torch.stack([p.grad.norm() for p in parameters if p.grad is not None])
        grads = [p.grad for p in parameters if p.grad is not None]
        total = torch.stack([g.norm() for g in grads]).norm()
        for g in grads:
            g.mul_(torch.clamp(max_norm / (total + 1e-6), max=1.0))
        return total + 0 * norms.sum()

    checks.check_clip_gradients(twice)  # a list in the visible test
    expect_hint(checks.check_clip_gradients, twice, "list(parameters)")
    expect_hint(checks.check_clip_gradients, stack_twice, "list(parameters)")


def _total_then_clip(parameters, max_norm):
    params = list(parameters)
    total = nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def test_clip_refuses_torchs_clipping_under_any_name() -> None:
    clip = nn.utils.clip_grad_norm_  # an alias made before the test
    from torch.nn.utils import clip_grad

    cheats = [
        lambda ps, m: clip(ps, m),
        lambda ps, m: clip_grad.clip_grad_norm_(ps, m),
        lambda ps, m: clip_grad.clip_grad_norm(ps, m),
        _total_then_clip,
        lambda ps, m: functools.lru_cache(maxsize=None)(nn.utils.clip_grad_norm_)(tuple(ps), m),
    ]
    for cheat in cheats:
        expect_hint(checks.check_clip_gradients, cheat, NOT_ALLOWED, hidden=False)
        expect_hint(checks.check_clip_gradients, cheat, NOT_ALLOWED, seeds=["s"])


# --- 5. training_step --------------------------------------------------------------------------


def _step(solution, kind=""):
    teacher_forcing = solution["teacher_forcing"]

    def training_step(model, batch, optimizer, max_norm, bos_id, pad_id):
        src, mask, tgt = batch
        inputs, labels = teacher_forcing(tgt, bos_id, pad_id)
        if kind == "no_shift":
            inputs = tgt
        logits = model(src, inputs, mask)
        ignore = {"pad": -100, "pad_zero": 0}.get(kind, pad_id)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=ignore
        )
        if kind not in ("no_zero_grad", "zero_late"):
            optimizer.zero_grad()
        loss.backward()
        if kind == "zero_late":
            optimizer.zero_grad()
        if kind != "clip_after":
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        if kind == "clip_after":
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        return loss if kind == "tensor" else loss.item()

    return training_step


def test_training_step_written_another_way_passes(solution) -> None:
    clip_gradients = solution["clip_gradients"]

    def by_hand(model, batch, optimizer, max_norm, bos_id, pad_id):
        src, mask, tgt = batch
        inputs = torch.cat([torch.full_like(tgt[:, :1], bos_id), tgt[:, :-1]], dim=1)
        log_p = model(src, inputs, mask).log_softmax(-1)
        keep = tgt != pad_id
        loss = -log_p.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)[keep].mean()
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        clip_gradients(model.parameters(), max_norm)
        optimizer.step()
        return float(loss)

    expect_pass(checks.check_training_step, by_hand, seeds=HIDDEN_SEEDS[:2])


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("no_zero_grad", "not zeroed", True),
        ("clip_after", "not clipped before optimizer.step()", True),
        ("no_shift", "not shifted", True),
        ("pad", "ignore_index=pad_id to", True),
        ("pad_zero", "not a fixed 0", False),  # pad_id is 0 in the worked example
        ("zero_late", "did not change the weights", True),
        ("tensor", "loss.item()", True),
    ],
)
def test_training_step_mistakes_are_named(solution, kind: str, hint: str, visible: bool) -> None:
    expect_hint(checks.check_training_step, _step(solution, kind), hint, seeds=HIDDEN_SEEDS[:3])
    if visible:
        expect_hint(checks.check_training_step, _step(solution, kind), hint, hidden=False)


def test_training_step_hidden_tests_use_sgd_then_adamw_and_clip() -> None:
    for seed in HIDDEN_SEEDS:
        draw._use_seed(seed)
        cases = checks._step_hidden(hidden_draw("training_step"))
        assert [case[2] for case in cases] == ["sgd", "adamw"]
        for config, case_seed, _, _, max_norm, batches, bos, pad in cases:
            assert pad != 0 and bos != 1 and all((b[2] == pad).any() for b in batches)
            norm = checks._first_gradient_norm(config, case_seed, batches[0], bos, pad)
            assert max_norm < norm


def test_training_step_leaves_torch_as_it_was(solution) -> None:
    from tutorlib.checks import tampered

    checks.check_training_step(solution["training_step"])
    assert tampered() == []


# --- 7, 8. BPE ---------------------------------------------------------------------------------


def _merge(kind=""):
    def merge_pair(ids, pair, new_id):
        out, i, merged = [], 0, False
        while i < len(ids) - (kind == "drop_last"):
            if (
                i + 1 < len(ids)
                and (ids[i], ids[i + 1]) == pair
                and not (kind == "first_only" and merged)
            ):
                out.append(new_id)
                merged = True
                i += 1 if kind == "overlapping" else 2
            else:
                out.append(ids[i])
                i += 1
        return out

    return merge_pair


def test_merge_pair_written_another_way_passes() -> None:
    def skip_flag(ids, pair, new_id):
        out, skip = [], False
        for i, current in enumerate(ids):
            if skip:
                skip = False
                continue
            if i + 1 < len(ids) and current == pair[0] and ids[i + 1] == pair[1]:
                out.append(new_id)
                skip = True
            else:
                out.append(current)
        return out

    def recursive(ids, pair, new_id):
        if len(ids) < 2:
            return list(ids)
        if tuple(ids[:2]) == tuple(pair):
            return [new_id, *recursive(ids[2:], pair, new_id)]
        return [ids[0], *recursive(ids[1:], pair, new_id)]

    def regex(ids, pair, new_id):  # a string, with the ids' boundaries kept
        text = " ".join(map(str, ids))
        merged = re.sub(rf"(?<!\S){pair[0]} {pair[1]}(?!\S)", str(new_id), text)
        return [int(i) for i in merged.split()]

    for candidate in (skip_flag, recursive, regex):
        expect_pass(checks.check_merge_pair, candidate)


@pytest.mark.parametrize(
    "candidate, hint, visible",
    [
        (_merge("overlapping"), "the merges overlap", True),
        (_merge("first_only"), "only the first occurrence", True),
        (_merge("drop_last"), "the last id went missing", False),
        (
            lambda ids, pair, new_id: _merge()(ids[::-1], pair[::-1], new_id)[::-1],
            "right to left",
            True,
        ),
        (lambda ids, pair, new_id: list(ids), "unchanged", True),
        (
            lambda ids, pair, new_id: tuple(_merge()(ids, pair, new_id)),
            "should return a list",
            True,
        ),
    ],
)
def test_merge_pair_mistakes_are_named(candidate, hint: str, visible: bool) -> None:
    expect_hint(checks.check_merge_pair, candidate, hint)
    if visible:
        expect_hint(checks.check_merge_pair, candidate, hint, hidden=False)


def test_merge_pair_that_changes_its_input_fails() -> None:
    def mutates(ids, pair, new_id):
        ids.append(0)
        return ids

    expect_hint(checks.check_merge_pair, mutates, "changed an input", hidden=False)


def test_string_tricks_pass_the_worked_examples_only() -> None:
    """Merging the ids as text works for one-digit ids (the worked examples); the hidden
    tests' ids of two digits, and ids that read alike when joined, make it fail."""

    def joined(ids, pair, new_id):
        text = "".join(map(str, ids)).replace("".join(map(str, pair)), "X")
        return [new_id if c == "X" else int(c) for c in text]

    def spaced(ids, pair, new_id):
        text = " " + " ".join(map(str, ids)) + " "
        text = text.replace(f" {pair[0]} {pair[1]} ", f" {new_id} ")
        return [int(i) for i in text.split()]

    def unpadded(ids, pair, new_id):
        text = " ".join(map(str, ids)).replace(f"{pair[0]} {pair[1]}", str(new_id))
        return [int(i) for i in text.split()]

    for trick in (joined, spaced, unpadded):
        checks.check_merge_pair(trick)
        expect_hint(checks.check_merge_pair, trick, "merge_pair(")


def test_bpe_references_are_refused() -> None:
    def merge(ids, pair, new_id):
        return tokenizers.merge_pair(ids, pair, new_id)

    def pair(word_counts):
        counts = tokenizers.pair_counts(list(word_counts), list(word_counts.values()))
        return tokenizers.most_frequent_pair(counts) if counts else None

    def private(ids, pair, new_id):
        return checks._merge(ids, pair, new_id)

    expect_hint(checks.check_merge_pair, merge, NOT_ALLOWED, hidden=False)
    expect_hint(checks.check_merge_pair, private, NOT_ALLOWED, hidden=False)
    expect_hint(checks.check_most_frequent_pair, pair, NOT_ALLOWED, hidden=False)


def _pair(weighted=True, tie="smallest", none_ok=True, once=False, joined=False):
    def most_frequent_pair(word_counts):
        counts: dict = {}
        words = list(word_counts.items())
        if joined:  # the corpus as one long sequence
            words = [(tuple(i for w, n in words for _ in range(n) for i in w), 1)]
        for word, n in words:
            pairs = list(zip(word, word[1:], strict=False))
            for pair in set(pairs) if once else pairs:
                counts[pair] = counts.get(pair, 0) + (n if weighted else 1)
        if not counts and none_ok:
            return None
        if tie == "first":
            return max(counts, key=counts.get)
        if tie == "largest":
            return max(counts, key=lambda p: (counts[p], p))
        if tie == "string":
            return min(counts, key=lambda p: (-counts[p], str(p)))
        return min(counts, key=lambda p: (-counts[p], p))

    return most_frequent_pair


def test_most_frequent_pair_written_another_way_passes() -> None:
    def counter(word_counts):
        counts = Counter()
        for word, n in word_counts.items():
            for i in range(len(word) - 1):
                counts[word[i : i + 2]] += n
        if not counts:
            return None
        best = max(counts.values())
        return sorted(p for p, c in counts.items() if c == best)[0]

    expect_pass(checks.check_most_frequent_pair, counter)


@pytest.mark.parametrize(
    "candidate, hint, visible",
    [
        (_pair(weighted=False), "each word counted once", True),
        (_pair(once=True), "overlapping ones too", False),
        (_pair(joined=True), "across word boundaries", False),
        (_pair(tie="largest"), "not the largest", False),
        (_pair(tie="first"), "not to the first pair found", False),
        (_pair(none_ok=False), "return None", False),
    ],
)
def test_most_frequent_pair_mistakes_are_named(candidate, hint: str, visible: bool) -> None:
    expect_hint(checks.check_most_frequent_pair, candidate, hint)
    if visible:
        expect_hint(checks.check_most_frequent_pair, candidate, hint, hidden=False)


def test_most_frequent_pair_ties_broken_as_strings_fail() -> None:
    checks.check_most_frequent_pair(_pair(tie="string"))
    expect_hint(checks.check_most_frequent_pair, _pair(tie="string"), "most_frequent_pair(")


# --- 9. mask_tokens ----------------------------------------------------------------------------


def _mlm(kind=""):
    def mask_tokens(tokens, mask_id, vocab_size, special_ids, p, generator):
        special = torch.tensor([*special_ids, mask_id])
        if kind == "mask_not_special":
            special = torch.tensor([*special_ids])
        ordinary = ~torch.isin(tokens, special)
        g = None if kind == "global_rng" else generator
        if kind == "own_generator":
            g = torch.Generator().manual_seed(0)
        u = torch.rand(tokens.shape, generator=g)
        selected = (u > 1 - p) if kind != "above_p" else (u > p)
        if kind == "rate_of_all":
            selected = u < p * tokens.numel() / ordinary.sum()
        if kind != "specials":
            selected = selected & ordinary
        split = torch.rand(tokens.shape, generator=g)
        mask_share = {"always_mask": 1.0, "swapped": 0.1}.get(kind, 0.8)
        random_share = {"no_random": 0.0, "no_keep": 0.2, "nested": 0.02, "swapped": 0.1}
        to_mask = selected & (split < mask_share)
        to_random = (
            selected & (split >= mask_share) & (split < mask_share + random_share.get(kind, 0.1))
        )
        allowed = torch.ones(vocab_size, dtype=torch.bool)
        allowed[torch.tensor([*special_ids, mask_id])] = False
        choices = allowed.nonzero().squeeze(1)
        pick = torch.randint(0, len(choices), tokens.shape, generator=g)
        random_ids = choices[pick]
        if kind == "same_id":
            random_ids = torch.full_like(tokens, int(choices[0]))
        elif kind == "fixed_range":
            random_ids = torch.randint(4, 10, tokens.shape, generator=g)
        elif kind == "any_id":
            random_ids = torch.randint(0, vocab_size, tokens.shape, generator=g)
        elif kind == "out_of_range":
            random_ids = choices[pick] + 1
        elif kind == "ordinary_but_one":
            random_ids = choices[:-1][torch.randint(0, len(choices) - 1, tokens.shape, generator=g)]
        inputs = torch.where(to_mask, mask_id, torch.where(to_random, random_ids, tokens))
        if kind == "labels_everywhere":
            return inputs, tokens.clone()
        if kind == "labels_corrupted":
            return inputs, torch.where(selected, inputs, -100)
        return inputs, torch.where(selected, tokens, -100)

    return mask_tokens


def test_mask_tokens_written_another_way_passes(solution) -> None:
    def bernoulli(tokens, mask_id, vocab_size, special_ids, p, generator):
        ordinary = torch.ones(vocab_size, dtype=torch.bool)
        ordinary[list(special_ids) + [mask_id]] = False
        is_ordinary = ordinary[tokens]
        selected = torch.bernoulli(torch.full(tokens.shape, p), generator=generator).bool()
        selected &= is_ordinary
        masked = (
            selected & torch.bernoulli(torch.full(tokens.shape, 0.8), generator=generator).bool()
        )
        randomised = selected & ~masked
        randomised &= torch.bernoulli(torch.full(tokens.shape, 0.5), generator=generator).bool()
        ids = ordinary.nonzero().squeeze(1)
        random_ids = ids[torch.randint(len(ids), tokens.shape, generator=generator)]
        inputs = tokens.masked_fill(masked, mask_id)
        inputs = torch.where(randomised, random_ids, inputs)
        labels = tokens.masked_fill(~selected, -100)
        return inputs, labels

    def never_the_same(tokens, mask_id, vocab_size, special_ids, p, generator):
        """A random replacement always differs from the token it replaces."""
        inputs, labels = solution["mask_tokens"](
            tokens, mask_id, vocab_size, special_ids, p, generator
        )
        ordinary = [i for i in range(vocab_size) if i not in (*special_ids, mask_id)]
        K = len(ordinary)
        position = torch.full((vocab_size,), -1)
        position[ordinary] = torch.arange(K)
        stayed = (labels != -100) & (inputs == tokens)
        # half the unchanged tokens were random draws that hit the original: redraw those
        redraw = stayed & (torch.rand(tokens.shape, generator=generator) < 1 / (K + 1))
        offset = torch.randint(1, K, tokens.shape, generator=generator)
        other = torch.tensor(ordinary)[(position[tokens].clamp(min=0) + offset) % K]
        return torch.where(redraw, other, inputs), labels

    expect_pass(checks.check_mask_tokens, bernoulli)
    expect_pass(checks.check_mask_tokens, never_the_same)


def test_mask_tokens_passes_right_answers_whatever_the_draw(solution) -> None:
    """Each check call fails a right answer with probability below 1e-6 (tutorlib.checks.
    training._spread); here forty more draws."""
    expect_pass(
        checks.check_mask_tokens, solution["mask_tokens"], seeds=[f"mlm-{i}" for i in range(40)]
    )


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("specials", "special tokens (padding, [CLS], ...) were selected", True),
        ("mask_not_special", "mask_id counts as special", False),
        ("labels_everywhere", "labels are set at every position", True),
        ("labels_corrupted", "not the corrupted inputs", True),
        ("always_mask", "every selected token became [MASK]", True),
        ("no_random", "no selected token was replaced by a random token", True),
        ("no_keep", "no selected token was left unchanged", True),
        ("nested", "only 10% of the remaining 20%", True),
        ("swapped", "the shares are swapped", True),
        ("above_p", "not > p", True),
        ("rate_of_all", "padding included", True),
        ("global_rng", "generator=generator", True),
        ("own_generator", "the generator you are given", True),
        ("same_id", "always the same id", True),
        ("any_id", "special token or out of range", True),
        ("out_of_range", "special token or out of range", True),
        ("ordinary_but_one", "never drawn", False),
    ],
)
def test_mask_tokens_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    expect_hint(checks.check_mask_tokens, _mlm(kind), hint)
    if visible:
        expect_hint(checks.check_mask_tokens, _mlm(kind), hint, hidden=False)


def test_random_replacements_from_a_fixed_range_pass_the_worked_example_only() -> None:
    """The old check passed replacements that were always one id, or drawn from a fixed range
    of the ids; the hidden tests' special ids lie anywhere and every ordinary id is expected
    about 100 times among the replacements."""

    def fixed_range(tokens, mask_id, vocab_size, special_ids, p, generator):
        inputs, labels = _mlm()(tokens, mask_id, vocab_size, special_ids, p, generator)
        changed = (labels != -100) & (inputs != mask_id) & (inputs != tokens)
        first_six = [i for i in range(vocab_size) if i not in (*special_ids, mask_id)][:6]
        pick = torch.randint(0, 6, tokens.shape, generator=generator)
        return torch.where(changed, torch.tensor(first_six)[pick], inputs), labels

    checks.check_mask_tokens(fixed_range)
    for kind in ("same_id", "ordinary_but_one"):
        expect_hint(checks.check_mask_tokens, _mlm(kind), "mask_tokens on a", seeds=HIDDEN_SEEDS)
    expect_hint(checks.check_mask_tokens, fixed_range, "mask_tokens on a")


def test_mask_tokens_refuses_the_reference() -> None:
    cached = functools.lru_cache(maxsize=None)(training.mask_for_mlm)

    def cheat(tokens, mask_id, vocab_size, special_ids, p, generator):
        return training.mask_for_mlm(tokens, mask_id, vocab_size, special_ids, p, generator)

    def decorated(tokens, mask_id, vocab_size, special_ids, p, generator):
        return cached(tokens, mask_id, vocab_size, tuple(special_ids), p, generator)

    for candidate in (cheat, decorated):
        expect_hint(checks.check_mask_tokens, candidate, NOT_ALLOWED, hidden=False)


def test_the_statistical_bound() -> None:
    """_spread solves Bernstein's inequality: at the returned distance the bound is _TAIL."""
    for variance in (0.0, 1.0, 100.0, 1e4):
        t = checks._spread(variance)
        assert math.isclose(2 * math.exp(-(t**2) / (2 * variance + 2 * t / 3)), checks._TAIL)
    for seed in HIDDEN_SEEDS:  # fewer than 100 tests per check call: 1e-6 in all
        draw._use_seed(seed)
        cases = checks._mlm_hidden(hidden_draw("mask_tokens"))
        ordinary = [V - 1 - len(special) for _, _, V, special, _ in cases]
        assert sum(3 + K for K in ordinary) < 100


# --- 10. greedy_translate ----------------------------------------------------------------------


def _greedy(kind=""):
    def greedy_translate(model, src, mask, bos_id, eos_id, max_len):
        with torch.no_grad():
            memory = model.encode(src, None if kind == "no_mask" else mask)
            dec_mask = None if kind in ("no_mask", "no_decoder_mask") else mask
            tokens = torch.full((src.shape[0], 1), bos_id, dtype=torch.long)
            done = torch.zeros(src.shape[0], dtype=torch.bool)
            for _ in range(max_len - (kind == "total")):
                fed = tokens[:, :1] if kind == "no_feedback" else tokens
                logits = model.decode(fed, memory, dec_mask)
                if kind == "wrong_dim":
                    next_token = logits[:, -1].argmax(dim=0)
                elif kind == "positions":
                    next_token = logits.argmax(dim=1)[:, -1]
                else:
                    next_token = logits[:, -1].argmax(dim=-1)
                if kind != "no_fill":
                    next_token = next_token.masked_fill(done, eos_id)
                done = done | (next_token == eos_id)
                tokens = torch.cat([tokens, next_token[:, None]], dim=1)
                if kind == "any" and done.any():
                    break
                if kind not in ("no_stop", "no_fill") and done.all():
                    break
        return tokens

    return greedy_translate


def test_greedy_written_another_way_passes() -> None:
    def rows_as_lists(model, src, mask, bos_id, eos_id, max_len):
        model.eval()
        memory = model.encode(src, mask)
        rows = [[bos_id] for _ in range(src.shape[0])]
        while len(rows[0]) <= max_len and not all(eos_id in row for row in rows):
            logits = model.decode(torch.tensor(rows), memory, mask).detach()
            best = torch.log_softmax(logits[:, -1], dim=-1).max(dim=-1).indices
            for row, token in zip(rows, best.tolist(), strict=True):
                row.append(eos_id if eos_id in row else token)
        return torch.tensor(rows)

    expect_pass(checks.check_greedy_translate, rows_as_lists)


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("no_feedback", "predicts from <bos> alone", True),
        ("no_mask", "source padding mask was not used", True),
        ("no_decoder_mask", "cross-attention needs the source padding mask", False),
        ("wrong_dim", "argmax over the right dimension", True),
        ("positions", "argmax over the", False),
        ("no_fill", "keep writing <eos>", False),
        ("no_stop", "stop as soon as every row", False),
        ("any", "done.all()", False),
        ("total", "max_len counts the new tokens", False),
    ],
)
def test_greedy_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    expect_hint(checks.check_greedy_translate, _greedy(kind), hint)
    if visible:
        expect_hint(checks.check_greedy_translate, _greedy(kind), hint, hidden=False)


def test_greedy_refuses_the_reference() -> None:
    def greedy(model, src, mask, bos_id, eos_id, max_len):
        step = decoding.encoder_decoder_step(model, src, mask)
        start = torch.full((src.shape[0], 1), bos_id, dtype=torch.long)
        return decoding.greedy_decode(step, start, max_len, eos_id)

    def beam(model, src, mask, bos_id, eos_id, max_len):
        step = decoding.encoder_decoder_step(model, src, mask)
        start = torch.full((src.shape[0], 1), bos_id, dtype=torch.long)
        return decoding.beam_search(step, start, max_len, eos_id, beam_width=1)[0]

    for cheat in (greedy, beam):
        expect_hint(checks.check_greedy_translate, cheat, NOT_ALLOWED, hidden=False)


def test_greedy_a_learner_who_changes_the_model_does_not_change_the_reference() -> None:
    def then_breaks_it(model, src, mask, bos_id, eos_id, max_len):
        out = _greedy()(model, src, mask, bos_id, eos_id, max_len)
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
        model.train()
        return out

    expect_pass(checks.check_greedy_translate, then_breaks_it)


def test_greedy_hidden_sources_separate_the_mistakes() -> None:
    """The first hidden case ends (every row writes <eos>, at different steps), the second
    runs to max_len; each mistake gives its own output where it is meant to show."""
    ending = [k for k in checks.GREEDY_MISTAKES if k != "max_len_total"]
    for seed in HIDDEN_SEEDS:
        draw._use_seed(seed)
        cases = checks._greedy_hidden(hidden_draw("greedy_translate"))
        model = checks._copy_model(40)
        (_, first, first_len), (_, second, second_len) = cases[:2]
        assert checks._separates(model, first, first_len, ending, True)
        assert checks._separates(model, second, second_len, ["max_len_total"], False)
