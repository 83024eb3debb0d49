"""The Chapter 3 checks: the solutions pass, the likely mistakes are named, and the built-ins
or the reference cannot do the learner's work."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import expect_hint
from tests.grading import solution_namespace
from tutorlib import decoding, training
from tutorlib.checks import training as checks


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


@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize("name, check", CHECKS)
def test_solutions_pass(solution, name, check, hidden, capsys) -> None:
    check(solution[name], hidden=hidden)
    assert capsys.readouterr().out.startswith("OK:")


# --- 1. transformer_lr -----------------------------------------------------------------------


def _lr(shift=0, scale=True, rise=True, decay=True, combine=min, check=True):
    def transformer_lr(step, d_model, warmup_steps):
        if check and step < 1:
            raise ValueError("step")
        n = step + shift
        terms = [t for t, on in ((n**-0.5, decay), (n * warmup_steps**-1.5, rise)) if on]
        return (d_model**-0.5 if scale else 1.0) * combine(terms)

    return transformer_lr


@pytest.mark.parametrize(
    "candidate, hint, hidden",
    [
        (_lr(shift=1), "peak comes one step early", False),
        (_lr(scale=False), "d_model^-0.5", False),
        (_lr(decay=False), "only the warm-up", False),
        (_lr(rise=False), "there is no warm-up", False),
        (_lr(combine=max), "max instead of min", False),
        (_lr(check=False, shift=0.5), ", step 2: got", True),
    ],
)
def test_lr_mistakes_are_named(candidate, hint, hidden) -> None:
    expect_hint(checks.check_transformer_lr, candidate, hint, hidden)


def test_lr_off_by_one_late_and_missing_error_are_named() -> None:
    def late(step, d_model, warmup_steps):  # counts from 0: step - 1
        n = step - 1
        return 0.0 if n == 0 else d_model**-0.5 * min(n**-0.5, n * warmup_steps**-1.5)

    expect_hint(checks.check_transformer_lr, late, "one step late")
    expect_hint(checks.check_transformer_lr, _lr(check=False), "raise a ValueError")
    refused = lambda s, d, w: training.inverse_sqrt_schedule(w)(s - 1)  # noqa: E731
    expect_hint(checks.check_transformer_lr, refused, "Not allowed", hidden=False)


# --- 2. teacher_forcing ------------------------------------------------------------------------


def test_teacher_forcing_mistakes_are_named() -> None:
    def bos(t, b):
        return torch.full_like(t[:, :1], b)

    expect_hint(checks.check_teacher_forcing, lambda t, b, p: (t, t), "learn to copy it")
    expect_hint(
        checks.check_teacher_forcing,
        lambda t, b, p: (torch.cat([t[:, 1:], bos(t, p)], 1), t),
        "shifted the wrong way",
    )
    expect_hint(
        checks.check_teacher_forcing,
        lambda t, b, p: (torch.cat([bos(t, b), t[:, 1:]], 1), t),
        "first target token was dropped",
    )
    expect_hint(checks.check_teacher_forcing, lambda t, b, p: (t[:, :-1], t), "start every row")
    expect_hint(
        checks.check_teacher_forcing,
        lambda t, b, p: (torch.cat([bos(t, p), t[:, :-1]], 1), t),
        "must be <bos>",
    )
    expect_hint(
        checks.check_teacher_forcing,
        lambda t, b, p: (torch.cat([bos(t, b), t[:, :-1]], 1), torch.cat([t[:, 1:], bos(t, p)], 1)),
        "unshifted",
    )

    def in_place(t, b, p):  # shifts the targets themselves
        t[:, 1:] = t[:, :-1].clone()
        t[:, 0] = b
        return t, t

    expect_hint(checks.check_teacher_forcing, in_place, "changed its input")


# --- 3. smoothed_loss --------------------------------------------------------------------------


def _smoothed(kind=""):
    def smoothed_loss(logits, targets, smoothing, pad_id):
        V = logits.shape[-1]
        log_p = torch.log_softmax(logits.reshape(-1, V), dim=-1)
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
        else:
            per = (1 - smoothing) * nll - smoothing * log_p.mean(-1)
        total = (per * keep).sum()
        if kind == "sum":
            return total
        return total / (y.numel() if kind == "all_positions" else keep.sum())

    return smoothed_loss


@pytest.mark.parametrize(
    "kind, hint",
    [
        ("all_positions", "counted in the mean"),
        ("pad_target", "padding is not ignored"),
        ("v_minus_1", "V - 1 wrong classes (fairseq"),
        ("annotated", "Annotated Transformer"),
        ("no_smoothing", "smoothing is missing"),
        ("sum", "summed over positions"),
    ],
)
def test_smoothed_loss_mistakes_are_named(kind, hint) -> None:
    expect_hint(checks.check_smoothed_loss, _smoothed(kind), hint, hidden=False)


def test_smoothed_loss_refuses_the_builtins() -> None:
    def builtin(logits, targets, s, pad):
        V = logits.shape[-1]
        return F.cross_entropy(
            logits.reshape(-1, V), targets.reshape(-1), ignore_index=pad, label_smoothing=s
        )

    def reference(logits, targets, s, pad):
        return training.label_smoothed_cross_entropy(logits, targets, s, pad)

    def nll(logits, targets, s, pad):
        log_p = torch.log_softmax(logits, -1)
        return F.nll_loss(log_p.flatten(0, 1), targets.flatten(), ignore_index=pad)

    for cheat in (builtin, reference, nll):
        expect_hint(checks.check_smoothed_loss, cheat, "Not allowed", hidden=False)


def test_smoothed_loss_without_gradient_is_caught() -> None:
    def detached(logits, targets, s, pad):
        return _smoothed()(logits.detach(), targets, s, pad)

    expect_hint(checks.check_smoothed_loss, detached, "No gradient reaches logits")


# --- 4. clip_gradients -------------------------------------------------------------------------


def _clip(kind=""):
    def clip_gradients(parameters, max_norm):
        grads = [p.grad for p in parameters if p.grad is not None]
        total = torch.stack([g.norm() for g in grads]).norm()
        for g in grads:
            if kind == "per_parameter":
                g.mul_(torch.clamp(max_norm / (g.norm() + 1e-6), max=1.0))
            elif kind == "scale_up":
                g.mul_(max_norm / (total + 1e-6))
            else:
                g.mul_(torch.clamp(max_norm / (total + 1e-6), max=1.0))
        return torch.clamp(total, max=max_norm) if kind == "after" else total

    return clip_gradients


@pytest.mark.parametrize(
    "candidate, hint, hidden",
    [
        (_clip("per_parameter"), "clipped on its own", False),
        (_clip("scale_up"), "scaled up", True),
        (_clip("after"), "before clipping", False),
        (lambda ps, m: torch.stack([p.grad.norm() for p in ps]).norm(), "in place", False),
    ],
)
def test_clip_mistakes_are_named(candidate, hint, hidden) -> None:
    expect_hint(checks.check_clip_gradients, candidate, hint, hidden)


def test_clip_generator_and_builtins() -> None:
    def twice(parameters, max_norm):  # iterates the parameters twice
        total = torch.stack([p.grad.norm() for p in parameters if p.grad is not None]).norm()
        for p in parameters:
            if p.grad is not None:
                p.grad.mul_(torch.clamp(max_norm / (total + 1e-6), max=1.0))
        return total

    expect_hint(checks.check_clip_gradients, twice, "generator")
    for cheat in (
        lambda ps, m: torch.nn.utils.clip_grad_norm_(ps, m),
        lambda ps, m: torch.nn.utils.clip_grad.clip_grad_norm_(ps, m),
    ):
        expect_hint(checks.check_clip_gradients, cheat, "Not allowed", hidden=False)


# --- 5. training_step --------------------------------------------------------------------------


def _step(solution, kind=""):
    teacher_forcing = solution["teacher_forcing"]

    def training_step(model, batch, optimizer, max_norm, bos_id, pad_id):
        src, mask, tgt = batch
        inputs, labels = teacher_forcing(tgt, bos_id, pad_id)
        if kind == "no_shift":
            inputs = tgt
        logits = model(src, inputs, mask)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=-100 if kind == "pad" else pad_id,
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


@pytest.mark.parametrize(
    "kind, hint",
    [
        ("no_zero_grad", "not zeroed"),
        ("clip_after", "not clipped before optimizer.step()"),
        ("no_shift", "not shifted"),
        ("pad", "ignore_index=pad_id"),
        ("zero_late", "did not change the weights"),
        ("tensor", "loss.item()"),
    ],
)
def test_training_step_mistakes_are_named(solution, kind, hint) -> None:
    expect_hint(checks.check_training_step, _step(solution, kind), hint, hidden=False)


# --- 7, 8. BPE ---------------------------------------------------------------------------------


def test_merge_pair_mistakes_are_named() -> None:
    def overlapping(ids, pair, new_id):
        out, i = [], 0
        while i < len(ids):
            if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
                out.append(new_id)
            else:
                out.append(ids[i])
            i += 1
        return out

    def first_only(ids, pair, new_id):
        for i in range(len(ids) - 1):
            if (ids[i], ids[i + 1]) == pair:
                return [*ids[:i], new_id, *ids[i + 2 :]]
        return list(ids)

    def drops_last(ids, pair, new_id):
        out, i = [], 0
        while i < len(ids) - 1:
            if (ids[i], ids[i + 1]) == pair:
                out.append(new_id)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        return out

    def mutates(ids, pair, new_id):
        ids.append(0)
        return ids

    expect_hint(checks.check_merge_pair, overlapping, "the merges overlap", hidden=False)
    expect_hint(checks.check_merge_pair, first_only, "only the first occurrence", hidden=False)
    expect_hint(checks.check_merge_pair, drops_last, "the last id went missing")
    expect_hint(checks.check_merge_pair, lambda ids, p, n: list(ids), "unchanged", hidden=False)
    expect_hint(checks.check_merge_pair, mutates, "changed the list", hidden=False)


def _pair(weighted=True, tie="smallest", none_ok=True):
    def most_frequent_pair(word_counts):
        counts: dict = {}
        for word, n in word_counts.items():
            for pair in zip(word, word[1:], strict=False):
                counts[pair] = counts.get(pair, 0) + (n if weighted else 1)
        if not counts and none_ok:
            return None
        if tie == "first":
            return max(counts, key=counts.get)
        if tie == "largest":
            return max(counts, key=lambda p: (counts[p], p))
        return min(counts, key=lambda p: (-counts[p], p))

    return most_frequent_pair


@pytest.mark.parametrize(
    "candidate, hint, hidden",
    [
        (_pair(weighted=False), "each word counted once", False),
        (_pair(tie="largest"), "not the largest", True),
        (_pair(tie="first"), "not to the first pair found", True),
        (_pair(none_ok=False), "return None", True),
    ],
)
def test_most_frequent_pair_mistakes_are_named(candidate, hint, hidden) -> None:
    expect_hint(checks.check_most_frequent_pair, candidate, hint, hidden)


# --- 9. mask_tokens ----------------------------------------------------------------------------


def _mlm(kind=""):
    def mask_tokens(tokens, mask_id, vocab_size, special_ids, p, generator):
        special = torch.tensor([*special_ids, mask_id])
        ordinary = ~torch.isin(tokens, special)
        draw = torch.rand(tokens.shape, generator=None if kind == "global_rng" else generator)
        selected = draw < p
        if kind == "rate_of_all":
            selected = draw < p * tokens.numel() / ordinary.sum()
        if kind != "specials":
            selected = selected & ordinary
        split = torch.rand(tokens.shape, generator=generator)
        to_mask = selected & ((split < 0.8) | (kind == "always_mask"))
        to_random = selected & (split >= 0.8) & (split < 0.9) & (kind != "always_mask")
        if kind == "random_any":
            random_ids = torch.randint(0, vocab_size, tokens.shape, generator=generator)
        else:
            random_ids = torch.randint(4, vocab_size, tokens.shape, generator=generator)
        inputs = torch.where(to_mask, mask_id, torch.where(to_random, random_ids, tokens))
        if kind == "labels_everywhere":
            return inputs, tokens.clone()
        return inputs, torch.where(selected, tokens, -100)

    return mask_tokens


@pytest.mark.parametrize(
    "kind, hint",
    [
        ("specials", "special tokens (padding, [CLS]) were selected"),
        ("labels_everywhere", "labels are set at every position"),
        ("always_mask", "every selected token became [MASK]"),
        ("rate_of_all", "padding included"),
        ("global_rng", "generator=generator"),
    ],
)
def test_mask_tokens_mistakes_are_named(kind, hint) -> None:
    expect_hint(checks.check_mask_tokens, _mlm(kind), hint, hidden=False)


def test_mask_tokens_random_specials_are_caught() -> None:
    expect_hint(checks.check_mask_tokens, _mlm("random_any"), "special token or out of range")


def test_mask_tokens_refuses_the_reference() -> None:
    def cheat(tokens, mask_id, vocab_size, special_ids, p, generator):
        return training.mask_for_mlm(tokens, mask_id, vocab_size, special_ids, p, generator)

    expect_hint(checks.check_mask_tokens, cheat, "Not allowed", hidden=False)


# --- 10. greedy_translate ----------------------------------------------------------------------


def _greedy(kind=""):
    def greedy_translate(model, src, mask, bos_id, eos_id, max_len):
        with torch.no_grad():
            memory = model.encode(src, None if kind == "no_mask" else mask)
            tokens = torch.full((src.shape[0], 1), bos_id, dtype=torch.long)
            done = torch.zeros(src.shape[0], dtype=torch.bool)
            for _ in range(max_len):
                fed = tokens[:, :1] if kind == "no_feedback" else tokens
                logits = model.decode(fed, memory, None if kind == "no_mask" else mask)
                if kind == "wrong_dim":
                    next_token = logits[:, -1].argmax(dim=0)
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


@pytest.mark.parametrize(
    "kind, hint, hidden",
    [
        ("no_feedback", "predicts from <bos> alone", False),
        ("no_mask", "source padding mask was not used", False),
        ("wrong_dim", "argmax over the right dimension", False),
        ("no_fill", "keep writing <eos>", True),
        ("no_stop", "stop as soon as every row", True),
        ("any", "done.all()", True),
    ],
)
def test_greedy_mistakes_are_named(kind, hint, hidden) -> None:
    expect_hint(checks.check_greedy_translate, _greedy(kind), hint, hidden)


def test_greedy_refuses_the_reference() -> None:
    def cheat(model, src, mask, bos_id, eos_id, max_len):
        step = decoding.encoder_decoder_step(model, src, mask)
        start = torch.full((src.shape[0], 1), bos_id, dtype=torch.long)
        return decoding.greedy_decode(step, start, max_len, eos_id)

    expect_hint(checks.check_greedy_translate, cheat, "Not allowed", hidden=False)


def test_the_trained_copy_model_finishes_rows_at_different_steps() -> None:
    """The hidden greedy test is only worth something if <eos> arrives, at different steps."""
    model = checks._copy_model(40)
    src = torch.tensor([[6, 9, 0, 0, 0], [8, 7, 3, 9, 7], [5, 6, 5, 0, 0]])
    out = checks._greedy(model, src, src != 0, 8)
    finished = [(row == 2).nonzero()[0].item() for row in out if (row == 2).any()]
    assert len(finished) == 3 and len(set(finished)) >= 2, out
    assert out.shape[1] < 1 + 8, out
