"""The Chapter 1 checks: right answers written differently pass, every likely mistake gets its
own hint whatever the hidden tests draw, and neither the reference nor any torch operator that
computes the same thing can stand in for the learner's code."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import runpy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import expect_hint, expect_pass
from tests.grading import solution_namespace
from tutorlib import layers
from tutorlib.checks import foundations as checks
from tutorlib.checks import tampered


@pytest.fixture(scope="module")
def solution() -> dict:
    return solution_namespace("01_foundations")


# --- 1. Positions ---------------------------------------------------------------------------


def _pe(kind: str = ""):
    def sinusoidal_encoding(T, d):
        t = torch.arange(T, dtype=torch.float64)[:, None] + (kind == "from_1")
        i = torch.arange(0, d, 2, dtype=torch.float64) / (2 if kind == "i" else 1)
        angles = t / 10000 ** (i / d)
        if kind == "concat":
            return torch.cat([angles.sin(), angles.cos()], dim=1).float()
        pe = torch.zeros(T, d, dtype=torch.float64)
        if kind == "per_column":
            cols = t / 10000 ** (torch.arange(d, dtype=torch.float64) / d)
            pe[:, 0::2], pe[:, 1::2] = cols[:, 0::2].sin(), cols[:, 1::2].cos()
        else:
            first, second = (
                (angles.cos(), angles.sin()) if kind == "swap" else (angles.sin(), angles.cos())
            )
            pe[:, 0::2], pe[:, 1::2] = first, second
        return pe.float()

    return sinusoidal_encoding


def test_pe_written_another_way_passes() -> None:
    def by_loops(T, d):  # one entry at a time, the formula as written
        pe = torch.zeros(T, d)
        for t in range(T):
            for i in range(d // 2):
                angle = t / 10000 ** (2 * i / d)
                pe[t, 2 * i], pe[t, 2 * i + 1] = math.sin(angle), math.cos(angle)
        return pe

    def by_exp_log(T, d):  # the Annotated Transformer's exp(-log(10000) 2i / d)
        t = torch.arange(T).unsqueeze(1)
        freq = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
        return torch.stack([torch.sin(t * freq), torch.cos(t * freq)], dim=-1).reshape(T, d)

    expect_pass(checks.check_sinusoidal_encoding, by_loops, seeds=["loops-1", "loops-2"])
    expect_pass(checks.check_sinusoidal_encoding, by_exp_log)


@pytest.mark.parametrize(
    "kind, hint",
    [
        ("swap", "sin and cos are swapped"),
        ("concat", "concatenated"),
        ("per_column", "share one frequency"),
        ("i", "uses i instead of 2i"),
        ("from_1", "positions start at 0"),
    ],
)
def test_pe_mistakes_are_named(kind: str, hint: str) -> None:
    expect_hint(checks.check_sinusoidal_encoding, _pe(kind), hint, hidden=False)
    expect_hint(checks.check_sinusoidal_encoding, _pe(kind), hint)


# --- 2. Embeddings ----------------------------------------------------------------------------


def test_embed_written_another_way_passes() -> None:
    def one_hot(tokens, table, positions):  # a lookup as a product with one-hot rows
        rows = F.one_hot(tokens, table.shape[0]).to(table.dtype) @ table
        return rows * table.shape[1] ** 0.5 + positions[: tokens.shape[1]]

    def index_select(tokens, table, positions):
        rows = table.index_select(0, tokens.reshape(-1)).reshape(*tokens.shape, -1)
        return math.sqrt(table.shape[-1]) * rows + positions[: tokens.shape[-1]].unsqueeze(0)

    expect_pass(checks.check_embed, one_hot)
    expect_pass(checks.check_embed, index_select)


@pytest.mark.parametrize(
    "candidate, hint",
    [
        (
            lambda tok, table, pos: table[tok] + pos[: tok.shape[1]],
            "not multiplied by sqrt(d_model)",
        ),
        (
            lambda tok, table, pos: table[tok] * table.shape[0] ** 0.5 + pos[: tok.shape[1]],
            "not sqrt(vocab_size)",
        ),
        (
            lambda tok, table, pos: (table[tok] + pos[: tok.shape[1]]) * table.shape[1] ** 0.5,
            "scale only the token embeddings",
        ),
        (
            lambda tok, table, pos: table[tok] * table.shape[1] ** 0.5 + pos[-tok.shape[1] :],
            "the first T rows",
        ),
    ],
)
def test_embed_mistakes_are_named(candidate, hint: str) -> None:
    expect_hint(checks.check_embed, candidate, hint)


# --- 3. Layer norm ------------------------------------------------------------------------------


def _ln(unbiased=False, eps_outside=False, dim=-1, affine=True, bias_first=False):
    def layer_norm(x, w, b, eps=1e-5):
        mean = x.mean(dim, keepdim=True)
        var = x.var(dim, keepdim=True, unbiased=unbiased)
        out = (x - mean) / (var.sqrt() + eps if eps_outside else torch.sqrt(var + eps))
        if bias_first:
            return (out + b) * w
        return out * w + b if affine else out

    return layer_norm


def test_layer_norm_written_another_way_passes(solution) -> None:
    def rsqrt(x, w, b, eps=1e-5):
        centred = x - x.sum(-1, keepdim=True) / x.shape[-1]
        return centred * torch.rsqrt((centred * centred).mean(-1, keepdim=True) + eps) * w + b

    def var_mean(x, w, b, eps=1e-5):
        var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)
        return torch.addcmul(b, (x - mean) / (var + eps).sqrt(), w)

    def einsum(x, w, b, eps=1e-5):
        centred = x - x.mean(-1, keepdim=True)
        var = torch.einsum("...c,...c->...", centred, centred)[..., None] / x.shape[-1]
        return torch.einsum("...c,c->...c", centred / (var + eps) ** 0.5, w) + b

    for candidate in (rsqrt, var_mean, einsum, solution["layer_norm"]):
        expect_pass(checks.check_layer_norm, candidate)


@pytest.mark.parametrize(
    "candidate, hint, visible",
    [
        (_ln(unbiased=True), "biased variance", True),
        (_ln(eps_outside=True), "eps belongs inside the square root", False),
        (_ln(unbiased=True, eps_outside=True), "Annotated Transformer", True),
        (_ln(dim=0), "not over the batch", True),
        (_ln(affine=False), "gain and the bias", False),
        (_ln(bias_first=True), "bias is added before the gain", False),
        (
            lambda x, w, b, eps=1e-5: (
                (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True) * w + b
            ),
            "biased variance",  # unbiased std and no eps: the variance is the main mistake
            False,  # the worked example's constant row makes it NaN: "a missing epsilon?"
        ),
    ],
)
def test_layer_norm_mistakes_are_named(candidate, hint: str, visible: bool) -> None:
    expect_hint(checks.check_layer_norm, candidate, hint)
    if visible:
        expect_hint(checks.check_layer_norm, candidate, hint, hidden=False)


def test_normalising_through_another_torch_operator_is_refused() -> None:
    """Every Python name of a normalisation, and every operator that normalises along some
    axis of a transposed or reshaped input, is out of reach."""
    ln = F.layer_norm  # an alias made before the test runs
    from torch.nn.functional import group_norm as gn

    cheats = [
        lambda x, w, b, eps=1e-5: ln(x, x.shape[-1:], w, b, eps),
        lambda x, w, b, eps=1e-5: torch.layer_norm(x, x.shape[-1:], w, b, eps),
        lambda x, w, b, eps=1e-5: torch.native_layer_norm(x, x.shape[-1:], w, b, eps)[0],
        lambda x, w, b, eps=1e-5: torch._C._VariableFunctions.layer_norm(
            x, x.shape[-1:], w, b, eps
        ),
        lambda x, w, b, eps=1e-5: torch.ops.aten.native_layer_norm(x, x.shape[-1:], w, b, eps)[0],
        lambda x, w, b, eps=1e-5: (
            gn(x.reshape(-1, x.shape[-1], 1), 1, eps=eps)[..., 0].reshape(x.shape) * w + b
        ),
        lambda x, w, b, eps=1e-5: (
            F.batch_norm(
                x.reshape(-1, x.shape[-1]).T, None, None, training=True, eps=eps
            ).T.reshape(x.shape)
            * w
            + b
        ),
        lambda x, w, b, eps=1e-5: (
            F.instance_norm(x.reshape(-1, 1, x.shape[-1]), eps=eps).reshape(x.shape) * w + b
        ),
        lambda x, w, b, eps=1e-5: (
            F.rms_norm(x - x.mean(-1, keepdim=True), x.shape[-1:], w, eps) + b
        ),
        lambda x, w, b, eps=1e-5: (
            nn.InstanceNorm1d(1, eps=eps)(x.reshape(-1, 1, x.shape[-1])).reshape(x.shape) * w + b
        ),
        lambda x, w, b, eps=1e-5: nn.LayerNorm(x.shape[-1], eps=eps, dtype=x.dtype)(x) * w + b,
    ]
    for cheat in cheats:
        expect_hint(checks.check_layer_norm, cheat, "Not allowed in this exercise", hidden=False)
        expect_hint(checks.check_layer_norm, cheat, "Not allowed in this exercise", seeds=["s"])


def test_the_reference_is_refused_under_any_name() -> None:
    from tutorlib.layers import layer_norm as aliased

    copy = runpy.run_path(layers.__file__)["layer_norm"]  # a fresh copy of the module
    spec = importlib.util.spec_from_file_location("another_layers", layers.__file__)
    another = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(another)
    cached = functools.lru_cache(maxsize=None)(layers.layer_norm)

    def decorate(f):
        def wrapper(*args, **kwargs):
            return f(*args, **kwargs)

        return wrapper

    for reference in (aliased, copy, another.layer_norm, cached, decorate(layers.layer_norm)):
        cheat = lambda x, w, b, eps=1e-5, r=reference: r(x, x.shape[-1:], w, b, eps)  # noqa: E731
        expect_hint(
            checks.check_layer_norm, cheat, "Not allowed in this exercise: your layer_norm called"
        )
    # the reference still works outside the check
    x = torch.randn(2, 4)
    torch.testing.assert_close(aliased(x, (4,)), F.layer_norm(x, (4,)))


def test_a_reloaded_module_is_refused_and_counts_as_tampering() -> None:
    saved = dict(vars(layers))
    try:
        reloaded = importlib.reload(layers).layer_norm
        cheat = lambda x, w, b, eps=1e-5: reloaded(x, x.shape[-1:], w, b, eps)  # noqa: E731
        # reload rebinds the module's functions: the check stops before it runs anything
        expect_hint(checks.check_layer_norm, cheat, "testing machinery was changed", hidden=False)
        assert "tutorlib.layers.layer_norm" in tampered()
    finally:
        vars(layers).update(saved)
    assert tampered() == []


def test_the_checks_private_references_are_refused() -> None:
    def via_variant(T, d):  # "the variant builder called with no mistake"
        return checks._pe_variant(T, d, "").float()

    def via_reference(T, d):
        return checks._sinusoidal(T, d)

    for cheat in (via_variant, via_reference):
        expect_hint(checks.check_sinusoidal_encoding, cheat, "Not allowed", hidden=False)


def test_a_learner_who_swallows_the_refusal_still_fails() -> None:
    def swallow(x, w, b, eps=1e-5):
        try:
            return F.layer_norm(x, x.shape[-1:], w, b, eps)
        except BaseException:  # noqa: BLE001 - the point of the test
            return F.layer_norm(x, x.shape[-1:], w, b, eps)

    expect_hint(checks.check_layer_norm, swallow, "Not allowed", hidden=False)


# --- 4. Feed-forward ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "candidate, hint",
    [
        (lambda x, w1, b1, w2, b2: (x @ w1.T + b1) @ w2.T + b2, "ReLU between"),
        (
            lambda x, w1, b1, w2, b2: torch.relu(x @ w1 + b1) @ w2 + b2,
            "(out_features, in_features)",
        ),
        (lambda x, w1, b1, w2, b2: F.gelu(x @ w1.T + b1) @ w2.T + b2, "not GELU"),
        (lambda x, w1, b1, w2, b2: torch.relu(x @ w1.T) @ w2.T, "biases b1 and b2"),
        (
            lambda x, w1, b1, w2, b2: (torch.relu(x @ w1.T) + b1) @ w2.T + b2,
            "ReLU comes after adding b1",
        ),
    ],
)
def test_feed_forward_mistakes_are_named(candidate, hint: str) -> None:
    expect_hint(checks.check_feed_forward, candidate, hint)


def test_feed_forward_written_another_way_passes() -> None:
    def einsum(x, w1, b1, w2, b2):
        hidden = torch.einsum("...c,fc->...f", x, w1) + b1
        return torch.einsum("...f,cf->...c", hidden.clamp(min=0), w2) + b2

    def where(x, w1, b1, w2, b2):
        h = F.linear(x, w1, b1)
        return F.linear(torch.where(h > 0, h, torch.zeros_like(h)), w2, b2)

    expect_pass(checks.check_feed_forward, einsum)
    expect_pass(checks.check_feed_forward, where)


# --- 5, 6. Residuals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "check, candidate, hint",
    [
        (checks.check_post_norm_residual, lambda x, f, n: x + f(n(x)), "this is pre-norm"),
        (
            checks.check_post_norm_residual,
            lambda x, f, n: n(f(x)),
            "residual connection is missing",
        ),
        (
            checks.check_post_norm_residual,
            lambda x, f, n: x + n(f(x)),
            "applied to the sublayer's output",
        ),
        (checks.check_pre_norm_residual, lambda x, f, n: n(x + f(x)), "this is post-norm"),
        (checks.check_pre_norm_residual, lambda x, f, n: n(x) + f(n(x)), "un-normalized x"),
        (checks.check_pre_norm_residual, lambda x, f, n: n(x + f(n(x))), "norm is applied twice"),
        (checks.check_pre_norm_residual, lambda x, f, n: f(n(x)), "residual connection is missing"),
        (
            checks.check_pre_norm_residual,
            lambda x, f, n: x + n(f(x)),
            "applied to the sublayer's output",
        ),
    ],
)
def test_residual_mistakes_are_named(check, candidate, hint: str) -> None:
    expect_hint(check, candidate, hint)


def test_the_visible_toy_sublayer_commutes_but_the_hidden_one_does_not() -> None:
    """x + norm(sublayer(x)) equals x + sublayer(norm(x)) when both are linear maps that
    commute, as in the worked example; the hidden tests tell them apart."""
    checks.check_pre_norm_residual(lambda x, f, n: x + n(f(x)), hidden=False)  # passes visible
    expect_hint(checks.check_pre_norm_residual, lambda x, f, n: x + n(f(x)), "sublayer's output")


# --- 7, 8. Encoder layers -----------------------------------------------------------------------


def _layer_with(solution, name: str, forward):
    return type(name, (solution[name],), {"forward": forward})


def test_encoder_layer_mistakes_are_named(solution) -> None:
    def no_inversion(self, x, padding_mask=None):
        a, _ = self.self_attn(x, x, x, key_padding_mask=padding_mask, need_weights=False)
        x = self.norm1(x + a)
        return self.norm2(x + self.linear2(torch.relu(self.linear1(x))))

    def pre_norm(self, x, padding_mask=None):
        h = self.norm1(x)
        kpm = None if padding_mask is None else ~padding_mask
        x = x + self.self_attn(h, h, h, key_padding_mask=kpm)[0]
        return x + self.linear2(torch.relu(self.linear1(self.norm2(x))))

    def post(c, hidden):
        return checks.check_encoder_layer(c, False, hidden)

    expect_hint(
        post, _layer_with(solution, "PostNormEncoderLayer", no_inversion), "pass ~padding_mask"
    )
    expect_hint(
        post, _layer_with(solution, "PostNormEncoderLayer", pre_norm), "pre-norm arrangement"
    )


def test_an_encoder_layer_that_calls_torchs_is_refused(solution) -> None:
    def borrowed(self, x, padding_mask=None):
        layer = nn.TransformerEncoderLayer(x.shape[-1], 1, 4, dropout=0.0, batch_first=True)
        return layer.double()(x)

    cheat = _layer_with(solution, "PostNormEncoderLayer", borrowed)
    expect_hint(
        lambda c, hidden: checks.check_encoder_layer(c, False, hidden),
        cheat,
        "Not allowed",
        hidden=False,
    )


# --- 9. Counting ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "candidate, hint",
    [
        (lambda C, f: 4 * C * C + 2 * C * f, "biases are missing"),
        (lambda C, f: 4 * C * C + 4 * C + 2 * C * f + f + C, "two LayerNorms"),
        (lambda C, f: 4 * C * C + 4 * C + 2 * C * f + f + C + 2 * C, "there are two LayerNorms"),
        (lambda C, f: 2 * C * C + 2 * C + 2 * C * f + f + C + 4 * C, "three separate"),
        (lambda C, f: 1.5, "should return an int"),
    ],
)
def test_parameter_count_mistakes_are_named(candidate, hint: str) -> None:
    expect_hint(checks.check_parameter_count, candidate, hint)


def test_counting_by_building_the_layer_is_refused() -> None:
    def build(C, f):
        return sum(p.numel() for p in nn.TransformerEncoderLayer(C, 1, f).parameters())

    expect_hint(checks.check_parameter_count, build, "Not allowed", hidden=False)
