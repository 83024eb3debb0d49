"""The Chapter 1 checks: the solutions pass, every likely mistake gets its own hint, and the
reference or the torch built-in cannot stand in for the learner's code."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import expect_hint
from tests.grading import solution_namespace
from tutorlib import layers
from tutorlib.checks import forbid, run_candidate
from tutorlib.checks import foundations as checks


@pytest.fixture(scope="module")
def solution() -> dict:
    return solution_namespace("01_foundations")


CHECKS = [
    ("sinusoidal_encoding", checks.check_sinusoidal_encoding),
    ("embed", checks.check_embed),
    ("layer_norm", checks.check_layer_norm),
    ("feed_forward", checks.check_feed_forward),
    ("post_norm_residual", checks.check_post_norm_residual),
    ("pre_norm_residual", checks.check_pre_norm_residual),
    ("encoder_layer_parameter_count", checks.check_parameter_count),
]


@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize("name, check", CHECKS)
def test_solutions_pass(solution, name, check, hidden, capsys) -> None:
    check(solution[name], hidden=hidden)
    assert capsys.readouterr().out.startswith("OK:")


@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize(
    "cls, norm_first", [("PostNormEncoderLayer", False), ("PreNormEncoderLayer", True)]
)
def test_solution_layers_pass(solution, cls, norm_first, hidden) -> None:
    checks.check_encoder_layer(solution[cls], norm_first=norm_first, hidden=hidden)


@pytest.mark.parametrize("kind", list(checks.PE_MISTAKES))
def test_pe_mistakes_are_named(kind) -> None:
    candidate = lambda T, d: checks._pe_variant(T, d, kind).float()  # noqa: E731
    expect_hint(checks.check_sinusoidal_encoding, candidate, checks.PE_MISTAKES[kind], hidden=False)


def _ln(unbiased=False, eps_outside=False, dim=-1, affine=True):
    def layer_norm(x, w, b, eps=1e-5):
        mean = x.mean(dim, keepdim=True)
        var = x.var(dim, keepdim=True, unbiased=unbiased)
        out = (x - mean) / (var.sqrt() + eps if eps_outside else torch.sqrt(var + eps))
        return out * w + b if affine else out

    return layer_norm


def _ln_without_eps(x, w, b, eps=1e-5):
    return (x - x.mean(-1, keepdim=True)) / x.var(-1, keepdim=True, unbiased=False).sqrt() * w + b


@pytest.mark.parametrize(
    "candidate, hint",
    [
        (_ln(unbiased=True), "biased variance"),
        (_ln(eps_outside=True), "eps belongs inside the square root"),
        (_ln(unbiased=True, eps_outside=True), "Annotated Transformer"),
        (_ln(dim=0), "not over the batch"),
        (_ln_without_eps, "eps belongs inside the square root"),
        (_ln(affine=False), "gain and the bias"),
        (
            lambda x, w, b, eps=1e-5: (
                (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True) * w + b
            ),
            "biased variance",  # unbiased std and no eps: the variance is the main mistake
        ),
    ],
)
def test_layer_norm_mistakes_are_named(candidate, hint) -> None:
    expect_hint(checks.check_layer_norm, candidate, hint)


def test_embed_mistake_is_named() -> None:
    expect_hint(
        checks.check_embed,
        lambda tok, table, pos: table[tok] + pos[: tok.shape[1]],
        "sqrt(d_model)",
    )


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
    ],
)
def test_feed_forward_mistakes_are_named(candidate, hint) -> None:
    expect_hint(checks.check_feed_forward, candidate, hint)


def test_residual_mistakes_are_named() -> None:
    pre = lambda x, f, n: x + f(n(x))  # noqa: E731
    post = lambda x, f, n: n(x + f(x))  # noqa: E731
    expect_hint(checks.check_post_norm_residual, pre, "this is pre-norm")
    expect_hint(checks.check_pre_norm_residual, post, "this is post-norm")
    expect_hint(checks.check_pre_norm_residual, lambda x, f, n: n(x) + f(n(x)), "un-normalized x")
    expect_hint(
        checks.check_post_norm_residual, lambda x, f, n: n(f(x)), "residual connection is missing"
    )


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

    post = "PostNormEncoderLayer"
    expect_hint(
        lambda c, hidden: checks.check_encoder_layer(c, False, hidden),
        _layer_with(solution, post, no_inversion),
        "pass ~padding_mask",
    )
    expect_hint(
        lambda c, hidden: checks.check_encoder_layer(c, False, hidden),
        _layer_with(solution, post, pre_norm),
        "pre-norm arrangement",
    )


@pytest.mark.parametrize(
    "candidate, hint",
    [
        (lambda C, f: 4 * C * C + 2 * C * f, "biases are missing"),
        (lambda C, f: 4 * C * C + 4 * C + 2 * C * f + f + C, "two LayerNorms"),
        (lambda C, f: 2 * C * C + 2 * C + 2 * C * f + f + C + 4 * C, "three separate"),
        (lambda C, f: 1.5, "should return an int"),
    ],
)
def test_parameter_count_mistakes_are_named(candidate, hint) -> None:
    expect_hint(checks.check_parameter_count, candidate, hint)


def test_calling_the_reference_or_the_builtin_is_refused() -> None:
    from tutorlib.layers import layer_norm as aliased_reference

    cheats = [
        lambda x, w, b, eps=1e-5: F.layer_norm(x, x.shape[-1:], w, b, eps),
        lambda x, w, b, eps=1e-5: torch.layer_norm(x, x.shape[-1:], w, b, eps),
        lambda x, w, b, eps=1e-5: aliased_reference(x, x.shape[-1:], w, b, eps),
        lambda x, w, b, eps=1e-5: layers.LayerNorm(x.shape[-1]).double()(x) * w + b,
    ]
    for cheat in cheats:
        expect_hint(checks.check_layer_norm, cheat, "Not allowed in this exercise", hidden=False)
    expect_hint(
        checks.check_embed,
        lambda tok, table, pos: (
            F.embedding(tok, table) * table.shape[1] ** 0.5 + pos[: tok.shape[1]]
        ),
        "Not allowed",
    )
    # and everything is restored afterwards
    x = torch.randn(2, 4)
    torch.testing.assert_close(aliased_reference(x, (4,)), F.layer_norm(x, (4,)))


def test_forbid_restores_on_error() -> None:
    original = F.layer_norm
    with pytest.raises(RuntimeError, match="Not allowed"), forbid([(F, "layer_norm")], "test"):
        F.layer_norm(torch.randn(2, 3), (3,))
    assert F.layer_norm is original
    F.layer_norm(torch.randn(2, 3), (3,))


def test_stub_and_errors_are_reported_readably() -> None:
    def stub(*args, **kwargs):
        raise NotImplementedError()

    expect_hint(checks.check_layer_norm, stub, "not implemented yet")
    expect_hint(
        checks.check_layer_norm,
        lambda x, w, b, eps=1e-5: x @ torch.ones(3),
        "layer_norm raised RuntimeError",
    )
    expect_hint(
        checks.check_layer_norm,
        lambda x, w, b, eps=1e-5: x.numpy(),
        "should be a torch.Tensor",
        hidden=False,
    )


def test_candidate_warnings_do_not_reach_stderr(capfd) -> None:
    def noisy(x):
        warnings.warn("a torch-like warning", UserWarning, stacklevel=1)
        import sys

        print("to stderr", file=sys.stderr)
        return x

    assert run_candidate(noisy, 3, exercise="noisy") == 3
    assert capfd.readouterr().err == ""
