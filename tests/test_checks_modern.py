"""The checks of the modern decoder's exercises (solutions/06_generative/03_modern_decoder): right
answers written differently pass, every likely mistake gets its own hint whatever the hidden tests
draw, neither tutorlib's references nor torch's built-ins nor Hugging Face's Llama functions can
stand in for the learner's code, and the checks' written-out references and mistakes agree with
tutorlib's and Hugging Face's."""

from __future__ import annotations

import functools
import itertools
import math
import runpy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import (
    expect_hint,
    expect_named_alone,
    expect_pass,
    expect_refused,
)
from tests.grading import solution_namespace
from tutorlib import attention, embeddings, layers
from tutorlib.checks import Exercise, ExerciseError
from tutorlib.checks import modern as checks
from tutorlib.checks.draw import Draw

NOT_ALLOWED = "Not allowed in this exercise"
MANY_SEEDS = [f"many-{i}" for i in range(10)]
DRAWS = range(100)  # for properties of the hidden draws, which cost no check call
F64 = torch.float64


@pytest.fixture(scope="module")
def solution() -> dict:
    return solution_namespace("06_generative")


def _distinct(values: list[torch.Tensor]) -> bool:
    return all(
        a.shape != b.shape or not torch.allclose(a, b, atol=1e-6, equal_nan=True)
        for a, b in itertools.combinations(values, 2)
    )


@pytest.mark.parametrize(
    "name", ["rope_angles", "apply_rope", "rms_norm", "swiglu", "gqa_cached_step"]
)
def test_the_solutions_pass_under_many_seeds(solution, name: str) -> None:
    expect_pass(getattr(checks, f"check_{name}"), solution[name], seeds=MANY_SEEDS)


# --- 1. The rotary angles ------------------------------------------------------------------------


def _angles(kind: str = ""):
    def rope_angles(T, D, offset=0, base=10000.0):
        start = {"ignored": 0, "from_one": offset + 1}.get(kind, offset)
        positions = torch.arange(start, start + T, dtype=F64)
        j = torch.arange(D // 2, dtype=F64) + (1 if kind == "j_from_one" else 0)
        exponent = {"j_over_d": -j / D, "positive": 2 * j / D}.get(kind, -2 * j / D)
        angles = positions[:, None] * base**exponent
        if kind == "float32":  # the positions and the frequencies in float32
            two_j = torch.arange(0, D, 2)
            angles = (torch.arange(offset, offset + T)[:, None] * base ** (-two_j / D)).double()
        if kind == "float32_out":
            angles = angles.float()
        if kind == "per_dimension":
            angles = angles.repeat_interleave(2, dim=-1)
        return (angles.sin(), angles.cos()) if kind == "swapped" else (angles.cos(), angles.sin())

    return rope_angles


def test_rope_angles_written_another_way_passes(solution) -> None:
    def log_space(T, D, offset=0, base=10000.0):
        inv_freq = torch.exp(-math.log(base) * torch.arange(0, D, 2, dtype=F64) / D)
        angles = torch.outer(torch.arange(T, dtype=F64) + offset, inv_freq)
        return torch.cos(angles), torch.sin(angles)

    def loops(T, D, offset=0, base=10000.0):
        cos = torch.empty(T, D // 2, dtype=torch.float64)
        sin = torch.empty(T, D // 2, dtype=torch.float64)
        for t in range(T):
            for j in range(D // 2):
                angle = (offset + t) / base ** (2 * j / D)
                cos[t, j], sin[t, j] = math.cos(angle), math.sin(angle)
        return cos, sin

    def polar(T, D, offset=0, base=10000.0):  # Meta's Llama: the angles as unit complex numbers
        freqs = 1.0 / (base ** (torch.arange(0, D, 2)[: D // 2].double() / D))
        t = torch.arange(offset, offset + T).double()
        unit = torch.polar(torch.ones(T, D // 2, dtype=F64), torch.outer(t, freqs))
        return unit.real, unit.imag

    for candidate in (log_space, loops, polar, _angles(), solution["rope_angles"]):
        expect_pass(checks.check_rope_angles, candidate)


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("ignored", "the offset is ignored", True),
        ("from_one", "the positions start at 1", True),
        ("j_over_d", "the frequencies are base^(-j / D)", True),
        ("positive", "the exponent has the wrong sign", True),
        ("j_from_one", "the pairs are numbered from 1", True),
        ("swapped", "cos and sin are swapped", True),
        ("per_dimension", "one angle per pair of dimensions", True),
        ("float32_out", "has dtype torch.float32", True),
        ("float32", "by about float32's rounding", False),
    ],
)
def test_rope_angle_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    if visible:
        expect_hint(checks.check_rope_angles, _angles(kind), hint, hidden=False)
    expect_named_alone(checks.check_rope_angles, _angles(kind), hint)


def test_the_reference_angles_are_tutorlibs() -> None:
    for T, D, offset, base in [(5, 8, 0, 1e4), (3, 2, 7, 100.0), (1, 64, 3000, 5e5)]:
        cos, sin = embeddings.rotary_angles(T, D, base, offset, dtype=F64)
        assert torch.equal(checks._angles(T, D, offset, base), torch.stack([cos, sin]))


def test_the_first_hidden_angles_tell_every_mistake_apart() -> None:
    for seed in DRAWS:
        T, D, offset, base = checks._angles_hidden(Draw(seed))[0]
        tables = [
            checks._angles(T, D, offset, base, kind) for kind in ["", *checks.ANGLES_MISTAKES]
        ]
        assert _distinct(tables), (seed, T, D, offset, base)


def test_the_reference_angles_are_refused_under_any_name() -> None:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    copy = runpy.run_path(embeddings.__file__)["rotary_angles"]

    def with_(source):
        def rope_angles(T, D, offset=0, base=10000.0):
            return source(T, D, offset, base)

        return rope_angles

    def sinusoidal(T, D, offset, base):  # sin at even columns, cos at odd ones (base 10,000)
        table = embeddings.sinusoidal_encoding(offset + T, D)[offset:].double()
        return table[:, 1::2], table[:, 0::2]

    def llama(T, D, offset, base):  # Hugging Face's inverse frequencies
        config = LlamaConfig(hidden_size=D, num_attention_heads=1, rope_theta=base)
        inv_freq, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(config)
        angles = torch.arange(offset, offset + T, dtype=F64)[:, None] * inv_freq.double()
        return angles.cos(), angles.sin()

    cheats = [
        with_(lambda T, D, o, b: embeddings.rotary_angles(T, D, b, o, dtype=F64)),
        with_(lambda T, D, o, b: copy(T, D, b, o, dtype=F64)),
        with_(functools.partial(lambda T, D, o, b: tuple(checks._angles(T, D, o, b)))),
        with_(sinusoidal),
        with_(llama),
    ]
    for cheat in cheats:
        expect_refused(checks.check_rope_angles, cheat)


# --- 2. Applying the rotation --------------------------------------------------------------------


def _rope(kind: str = ""):
    def apply_rope(x, cos, sin):
        half = x.shape[-1] // 2
        if kind == "halves":
            x1, x2 = x[..., :half], x[..., half:]
            return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
        if kind == "hugging_face":  # rotate_half with the tables doubled end to end
            c, s = torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)
            return x * c + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * s
        if kind == "doubled_tables":
            c, s = cos.repeat(1, 2), sin.repeat(1, 2)
            return x * c + torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2) * s
        if kind == "halves_interleaved":
            c, s = cos.repeat_interleave(2, -1), sin.repeat_interleave(2, -1)
            return x * c + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * s
        even, odd = x[..., 0::2], x[..., 1::2]
        if kind == "backwards":
            return torch.stack([even * cos + odd * sin, -even * sin + odd * cos], -1).flatten(-2)
        if kind == "not_in_place":
            return torch.cat([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
        if kind == "in_place":
            first = even * cos - odd * sin
            x[..., 1::2] = even * sin + odd * cos
            x[..., 0::2] = first
            return x
        return torch.stack([even * cos - odd * sin, even * sin + odd * cos], -1).flatten(-2)

    return apply_rope


def test_apply_rope_written_another_way_passes(solution) -> None:
    def complex_numbers(x, cos, sin):  # Meta's Llama code: pairs as complex numbers
        z = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
        turned = z * torch.complex(cos, sin)  # (B, H, T, D/2)
        return torch.view_as_real(turned).flatten(-2)

    def rotate_every_two(x, cos, sin):  # GPT-J's way: tables repeated in place
        c, s = cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)
        quarter = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).reshape(x.shape)
        return x * c + quarter * s

    def rotation_matrices(x, cos, sin):
        R = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        pairs = x.unflatten(-1, (-1, 2))  # (B, H, T, D/2, 2); R (T, D/2, 2, 2)
        return (R @ pairs.unsqueeze(-1)).squeeze(-1).flatten(-2)

    def loop(x, cos, sin):
        out = x.clone()
        for j in range(x.shape[-1] // 2):
            a, b = x[..., 2 * j], x[..., 2 * j + 1]
            out[..., 2 * j] = a * cos[:, j] - b * sin[:, j]
            out[..., 2 * j + 1] = a * sin[:, j] + b * cos[:, j]
        return out

    for candidate in (complex_numbers, rotate_every_two, rotation_matrices, loop, _rope()):
        expect_pass(checks.check_apply_rope, candidate)
    expect_pass(checks.check_apply_rope, solution["apply_rope"])


@pytest.mark.parametrize(
    "kind, hint",
    [
        ("halves", "you paired dimension j with j + D/2"),
        ("hugging_face", "you paired dimension j with j + D/2"),
        ("backwards", "the pairs turn backwards"),
        ("doubled_tables", "the tables were doubled end to end"),
        ("halves_interleaved", "two conventions mixed"),
        ("not_in_place", "put back as [all first elements, all second elements]"),
    ],
)
def test_apply_rope_mistakes_are_named(kind: str, hint: str) -> None:
    expect_hint(checks.check_apply_rope, _rope(kind), hint, hidden=False)
    expect_named_alone(checks.check_apply_rope, _rope(kind), hint)


def test_apply_rope_that_changes_x_fails() -> None:
    expect_hint(checks.check_apply_rope, _rope("in_place"), "changed an input", hidden=False)
    expect_hint(checks.check_apply_rope, _rope("in_place"), "x was changed in place")


def test_split_halves_are_the_same_rotation_after_a_permutation() -> None:
    """The hint's claim: rotate_half on the permuted dimensions is the adjacent-pair rotation."""
    x = torch.randn(2, 3, 5, 8, dtype=F64)
    cos, sin = embeddings.rotary_angles(5, 8, offset=4, dtype=F64)
    order = torch.cat([torch.arange(0, 8, 2), torch.arange(1, 8, 2)])  # evens, then odds
    halves = checks._rotated(x[..., order], cos, sin, "halves")
    assert torch.allclose(halves[..., order.argsort()], embeddings.apply_rotary(x, cos, sin))
    assert torch.allclose(checks._rotated(x, cos, sin), embeddings.apply_rotary(x, cos, sin))


def test_the_first_hidden_rotation_tells_every_mistake_apart() -> None:
    for seed in DRAWS:
        x, cos, sin = checks._rope_hidden(Draw(seed))[0]
        x = x.detach()
        turned = [checks._rotated(x, cos, sin, kind) for kind in ["", *checks.ROTATE_MISTAKES]]
        assert _distinct(turned), seed


def test_rotation_by_tutorlib_or_hugging_face_is_refused() -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, rotate_half

    copy = runpy.run_path(embeddings.__file__)["apply_rotary"]
    order = lambda D: torch.cat([torch.arange(0, D, 2), torch.arange(1, D, 2)])  # noqa: E731

    def llama(x, cos, sin):  # Hugging Face's rotation on the permuted dimensions
        D = x.shape[-1]
        c, s = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)
        out, _ = apply_rotary_pos_emb(x[..., order(D)], x[..., order(D)], c, s, unsqueeze_dim=0)
        return out[..., order(D).argsort()]

    def halves(x, cos, sin):
        D = x.shape[-1]
        y = x[..., order(D)]
        out = y * torch.cat([cos, cos], -1) + rotate_half(y) * torch.cat([sin, sin], -1)
        return out[..., order(D).argsort()]

    cheats = [
        embeddings.apply_rotary,
        lambda x, c, s: copy(x, c, s),
        functools.lru_cache(maxsize=None)(embeddings.apply_rotary),
        lambda x, c, s: checks._rotated(x, c, s),
        llama,
        halves,
    ]
    for cheat in cheats:
        expect_refused(checks.check_apply_rope, cheat)


# --- 3. RMSNorm -----------------------------------------------------------------------------------


def _rms(kind: str = ""):
    def rms_norm(x, weight, eps=1e-6):
        square = x.pow(2).mean(-1, keepdim=True)
        if kind == "layer_norm":
            centred = x - x.mean(-1, keepdim=True)
            return centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + eps) * weight
        if kind == "std":
            return x / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + eps) * weight
        if kind == "std_unbiased":
            return x / (x.std(-1, keepdim=True) + eps) * weight
        if kind == "eps_outside":
            return x / (square.sqrt() + eps) * weight
        if kind == "no_root":
            return x / (square + eps) * weight
        if kind == "no_eps":
            return F.normalize(x, dim=-1) * math.sqrt(x.shape[-1]) * weight
        if kind == "sum":
            return x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + eps) * weight
        if kind == "no_weight":
            return x * torch.rsqrt(square + eps)
        if kind == "one_plus_weight":
            return x * torch.rsqrt(square + eps) * (1 + weight)
        if kind == "weight_added":
            return x * torch.rsqrt(square + eps) + weight
        if kind in ("dim0", "dim1"):
            dim = int(kind[-1])
            return x * torch.rsqrt(x.pow(2).mean(dim, keepdim=True) + eps) * weight
        if kind == "all":
            return x * torch.rsqrt(x.pow(2).mean() + eps) * weight
        if kind == "double":
            return (x.double() * torch.rsqrt(square.double() + eps) * weight).to(torch.float64)
        return x * torch.rsqrt(square + eps) * weight

    return rms_norm


def test_rms_norm_written_another_way_passes(solution) -> None:
    def by_norm(x, weight, eps=1e-6):
        rms = torch.sqrt(x.norm(dim=-1, keepdim=True) ** 2 / x.shape[-1] + eps)
        return weight * (x / rms)

    class MyRMSNorm(nn.Module):
        def __init__(self, eps):
            super().__init__()
            self.eps = eps

        def forward(self, x, weight):
            return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + self.eps) * weight

    def module(x, weight, eps=1e-6):
        return MyRMSNorm(eps)(x, weight)

    def einsum(x, weight, eps=1e-6):
        mean_square = torch.einsum("...c,...c->...", x, x)[..., None] / x.shape[-1]
        return x * (mean_square + eps) ** -0.5 * weight

    for candidate in (by_norm, module, einsum, _rms(), solution["rms_norm"]):
        expect_pass(checks.check_rms_norm, candidate)


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("layer_norm", "the mean was subtracted: that is layer norm", True),
        ("std", "x was divided by its standard deviation", True),
        ("std_unbiased", "x was divided by x.std() + eps", True),
        ("eps_outside", "eps belongs inside the square root", True),
        ("no_root", "x was divided by the mean square", True),
        ("no_eps", "eps is missing", True),
        ("sum", "the squares were summed", True),
        ("no_weight", "the learned gain is missing", False),
        ("one_plus_weight", "(1 + weight) (Gemma's convention)", True),
        ("weight_added", "the gain multiplies (x_hat * weight); it was added", True),
        ("dim0", "the mean runs over the wrong axis (dim 0)", True),
        ("dim1", "dim=1 is the last one only for a 2-D input", True),
        ("all", "the mean runs over every dimension", True),
    ],
)
def test_rms_norm_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    if visible:
        expect_hint(checks.check_rms_norm, _rms(kind), hint, hidden=False)
    expect_named_alone(checks.check_rms_norm, _rms(kind), hint)


def test_rms_norm_keeps_the_dtype() -> None:
    expect_hint(checks.check_rms_norm, _rms("double"), "has dtype torch.float64, not torch.float32")


def test_the_first_hidden_norm_tells_every_mistake_apart() -> None:
    for seed in DRAWS:
        x, w, eps = checks._rms_hidden(Draw(seed))[0]
        x, w = x.detach(), w.detach()
        values = [layers.rms_norm(x, w.shape, w, eps)]
        values += [checks._rms_variant(x, w, eps, kind) for kind in checks.RMS_MISTAKES]
        assert _distinct(values), seed


def _module_with(norm: nn.Module, x, weight):
    norm = norm.to(x.dtype)
    norm.weight.data = weight.detach()
    return norm(x)


def test_norms_by_torch_tutorlib_or_hugging_face_are_refused() -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    copy = runpy.run_path(layers.__file__)["rms_norm"]

    def llama(x, weight, eps=1e-6):
        norm = LlamaRMSNorm(x.shape[-1], eps).to(x.dtype)
        norm.weight.data = weight.detach()
        return norm(x)

    def layer_norm_of_both_signs(x, weight, eps=1e-6):  # mean 0, variance mean(x^2)
        both = torch.cat([x, -x], dim=-1)
        return F.layer_norm(both, both.shape[-1:], eps=eps)[..., : x.shape[-1]] * weight

    def group_norm(x, weight, eps=1e-6):
        both = torch.cat([x, -x], dim=-1).reshape(-1, 1, 2 * x.shape[-1])
        out = F.group_norm(both, 1, eps=eps).reshape(*x.shape[:-1], -1)
        return out[..., : x.shape[-1]] * weight

    cheats = [
        lambda x, w, eps=1e-6: F.rms_norm(x, w.shape, w, eps),
        lambda x, w, eps=1e-6: torch.rms_norm(x, w.shape, w, eps),
        lambda x, w, eps=1e-6: nn.RMSNorm(w.shape, eps).to(x.dtype)(x) * w,
        lambda x, w, eps=1e-6: layers.rms_norm(x, w.shape, w, eps),
        lambda x, w, eps=1e-6: _module_with(layers.RMSNorm(x.shape[-1], eps), x, w),
        lambda x, w, eps=1e-6: layers._RMSNormFunction.apply(x, w, eps),  # the fast module path
        lambda x, w, eps=1e-6: copy(x, w.shape, w, eps),
        lambda x, w, eps=1e-6: checks._rms_variant(x, w, eps, ""),
        llama,
        layer_norm_of_both_signs,
        group_norm,
    ]
    for cheat in cheats:
        expect_refused(checks.check_rms_norm, cheat)


# --- 4. SwiGLU ------------------------------------------------------------------------------------


def _swiglu(kind: str = ""):
    def swiglu(x, gate_weight, up_weight, down_weight):
        gate, up = x @ gate_weight.T, x @ up_weight.T
        hidden = {
            "swapped": lambda: F.silu(up) * gate,
            "sigmoid": lambda: torch.sigmoid(gate) * up,
            "relu": lambda: F.relu(gate) * up,
            "gelu": lambda: F.gelu(gate) * up,
            "silu_of_product": lambda: F.silu(gate * up),
            "no_gate": lambda: F.silu(up),
            "gate_only": lambda: F.silu(gate),
        }.get(kind, lambda: F.silu(gate) * up)()
        if kind == "no_down":
            return hidden
        if kind == "not_transposed":
            return (F.silu(x @ gate_weight) * (x @ up_weight)) @ down_weight
        return hidden @ down_weight.T

    return swiglu


def test_swiglu_written_another_way_passes(solution) -> None:
    def linear(x, gate_weight, up_weight, down_weight):
        hidden = F.silu(F.linear(x, gate_weight)) * F.linear(x, up_weight)
        return F.linear(hidden, down_weight)

    def sigmoid_by_hand(x, gate_weight, up_weight, down_weight):
        gate = torch.einsum("...c,fc->...f", x, gate_weight)
        up = torch.einsum("...c,fc->...f", x, up_weight)
        return torch.einsum("...f,cf->...c", gate / (1 + torch.exp(-gate)) * up, down_weight)

    def fused(x, gate_weight, up_weight, down_weight):  # one matrix for both projections
        gate, up = (x @ torch.cat([gate_weight, up_weight]).T).chunk(2, dim=-1)
        return (nn.SiLU()(gate) * up) @ down_weight.T

    def glu_trick(x, gate_weight, up_weight, down_weight):  # silu(g) u = glu([g u, g])
        gate, up = x @ gate_weight.T, x @ up_weight.T
        return F.glu(torch.cat([gate * up, gate], dim=-1)) @ down_weight.T

    for candidate in (linear, sigmoid_by_hand, fused, glu_trick, _swiglu()):
        expect_pass(checks.check_swiglu, candidate)
    expect_pass(checks.check_swiglu, solution["swiglu"])


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("swapped", "the SiLU went on the up projection", True),
        ("sigmoid", "that is GLU", True),
        ("relu", "that is ReGLU", True),
        ("gelu", "that is GEGLU", True),
        ("silu_of_product", "the SiLU was applied to the product", True),
        ("no_gate", "the gate is missing", True),
        ("gate_only", "the up projection is missing", True),
        ("no_down", "the down projection is missing", True),
        ("not_transposed", "nn.Linear stores its weight as (out_features, in_features)", True),
    ],
)
def test_swiglu_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    if visible:
        expect_hint(checks.check_swiglu, _swiglu(kind), hint, hidden=False)
    expect_named_alone(checks.check_swiglu, _swiglu(kind), hint)


def test_the_square_hidden_case_names_the_mistakes_that_raise_elsewhere() -> None:
    """With d_ff = C a missing .T or a missing down projection gives a value, not an error."""
    for seed in DRAWS:
        x, g, u, d = checks._swiglu_hidden(Draw(seed))[1]
        reference = layers.swiglu(x, g, u, d)
        for kind in ("not_transposed", "no_down"):
            wrong = checks._swiglu_variant(x, g, u, d, kind)
            assert wrong is not None and not torch.allclose(wrong, reference), (seed, kind)


def test_swiglu_by_tutorlib_or_hugging_face_is_refused() -> None:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    copy = runpy.run_path(layers.__file__)["swiglu"]

    def module(x, g, u, d):
        mlp = layers.SwiGLU(x.shape[-1], g.shape[0]).to(x.dtype)
        mlp.load_state_dict({"gate_proj.weight": g, "up_proj.weight": u, "down_proj.weight": d})
        return mlp(x)

    def llama(x, g, u, d):
        config = LlamaConfig(
            hidden_size=x.shape[-1], intermediate_size=g.shape[0], num_attention_heads=1
        )
        mlp = LlamaMLP(config).to(x.dtype)
        mlp.load_state_dict({"gate_proj.weight": g, "up_proj.weight": u, "down_proj.weight": d})
        return mlp(x)

    cheats = [layers.swiglu, copy, module, llama, lambda *a: checks._swiglu_variant(*a, "")]
    for cheat in cheats:
        expect_refused(checks.check_swiglu, cheat)


# --- 5. A grouped-query attention step with a cache -----------------------------------------------


def _gqa(kind: str = "", dim: int = 2):
    def gqa_cached_step(q, k_new, v_new, past_k, past_v):
        if past_k is None:
            k_all, v_all = k_new, v_new
        elif kind == "new_first":
            k_all, v_all = torch.cat([k_new, past_k], dim), torch.cat([v_new, past_v], dim)
        else:
            k_all, v_all = torch.cat([past_k, k_new], dim), torch.cat([past_v, v_new], dim)
        B, H, t, D = q.shape
        G = H // k_new.shape[1]
        if kind == "repeat":
            keys, values = k_all.repeat(1, G, 1, 1), v_all.repeat(1, G, 1, 1)
        else:
            keys, values = k_all.repeat_interleave(G, 1), v_all.repeat_interleave(G, 1)
        if kind == "new_only":
            keys, values = k_new.repeat_interleave(G, 1), v_new.repeat_interleave(G, 1)
        S = keys.shape[2]
        scale = {"no_scale": 1.0, "by_d": D}.get(kind, math.sqrt(D))
        scores = q @ keys.transpose(-2, -1) / scale
        diagonal = {"top_left": 0, "excludes_self": S - t - 1, "sees_next": S - t + 1}
        if kind != "no_mask":
            allowed = torch.ones(t, S, dtype=torch.bool).tril(diagonal.get(kind, S - t))
            scores = scores.masked_fill(~allowed, float("-inf"))
        out = torch.softmax(scores, dim=-2 if kind == "wrong_axis" else -1) @ values
        if kind == "cached_repeated":
            return out, keys, values
        if kind == "not_appended":
            return out, k_new, v_new
        return out, k_all, v_all

    return gqa_cached_step


def test_gqa_step_written_another_way_passes(solution) -> None:
    def grouped_queries(q, k_new, v_new, past_k, past_v):
        """Split the query heads into groups and broadcast one key-value head over each."""
        k_all = k_new if past_k is None else torch.cat((past_k, k_new), dim=-2)
        v_all = v_new if past_v is None else torch.cat((past_v, v_new), dim=-2)
        B, H, t, D = q.shape
        H_kv, S = k_all.shape[1], k_all.shape[2]
        qg = q.view(B, H_kv, H // H_kv, t, D)  # (B, H_kv, G, t, D)
        scores = qg @ k_all.unsqueeze(2).transpose(-2, -1) * D**-0.5  # (B, H_kv, G, t, S)
        positions = torch.arange(S)
        allowed = positions[None, :] <= positions[S - t :, None]  # (t, S)
        scores = torch.where(allowed, scores, torch.tensor(float("-inf"), dtype=q.dtype))
        out = scores.softmax(-1) @ v_all.unsqueeze(2)  # (B, H_kv, G, t, D)
        return out.reshape(B, H, t, D), k_all, v_all

    def loops(q, k_new, v_new, past_k, past_v):
        k_all = k_new if past_k is None else torch.cat([past_k, k_new], 2)
        v_all = v_new if past_v is None else torch.cat([past_v, v_new], 2)
        B, H, t, D = q.shape
        H_kv, S = k_all.shape[1], k_all.shape[2]
        p = S - t
        out = torch.zeros_like(q)
        for b in range(B):
            for h in range(H):
                g = h // (H // H_kv)
                for i in range(t):
                    s = k_all[b, g, : p + i + 1] @ q[b, h, i] / math.sqrt(D)
                    w = torch.exp(s - s.max())
                    out[b, h, i] = (w / w.sum()) @ v_all[b, g, : p + i + 1]
        return out, k_all, v_all

    def einsum_expand(q, k_new, v_new, past_k, past_v):
        if past_k is not None:
            k_new, v_new = torch.cat([past_k, k_new], 2), torch.cat([past_v, v_new], 2)
        B, H, t, D = q.shape
        H_kv, S = k_new.shape[1], k_new.shape[2]
        keys = k_new[:, :, None].expand(B, H_kv, H // H_kv, S, D).reshape(B, H, S, D)
        values = v_new[:, :, None].expand(B, H_kv, H // H_kv, S, D).reshape(B, H, S, D)
        scores = torch.einsum("bhtd,bhsd->bhts", q, keys) / math.sqrt(D)
        mask = torch.triu(torch.ones(t, S, dtype=torch.bool), diagonal=S - t + 1)
        weights = torch.softmax(scores.masked_fill(mask, -1e30), dim=-1)
        return torch.einsum("bhts,bhsd->bhtd", weights, values), k_new, v_new

    def hugging_face_repeat_kv(q, k_new, v_new, past_k, past_v):
        from transformers.models.llama.modeling_llama import repeat_kv  # allowed: a repeat

        k_all = k_new if past_k is None else torch.cat([past_k, k_new], 2)
        v_all = v_new if past_v is None else torch.cat([past_v, v_new], 2)
        G = q.shape[1] // k_all.shape[1]
        keys, values = repeat_kv(k_all, G), repeat_kv(v_all, G)
        t, S = q.shape[2], keys.shape[2]
        scores = q @ keys.transpose(2, 3) / math.sqrt(q.shape[-1])
        scores = scores + torch.full((t, S), float("-inf"), dtype=q.dtype).triu(S - t + 1)
        return F.softmax(scores, dim=-1) @ values, k_all, v_all

    for candidate in (grouped_queries, loops, einsum_expand, hugging_face_repeat_kv, _gqa()):
        expect_pass(checks.check_gqa_cached_step, candidate)
    expect_pass(checks.check_gqa_cached_step, solution["gqa_cached_step"])


@pytest.mark.parametrize(
    "candidate, hint",
    [
        (_gqa("top_left"), "the causal mask is aligned to the top left"),
        (_gqa("excludes_self"), "new token i must see its own key"),
        (_gqa("sees_next"), "sees the key of the token after it"),
        (_gqa("no_mask"), "the new tokens see one another's future"),
        (_gqa("repeat"), "matched to the key-value heads with .repeat"),
        (_gqa("no_scale"), "the scores are not scaled"),
        (_gqa("by_d"), "the scores are divided by D"),
        (_gqa("wrong_axis"), "the softmax runs over the wrong axis"),
        (_gqa("new_only"), "the queries attend to the new keys only"),
        (_gqa("new_first"), "the new keys were put in front of the cache"),
        (_gqa("cached_repeated"), "the cache holds the keys and values repeated"),
        (_gqa("not_appended"), "the new keys and values were not appended"),
        (_gqa(dim=0), "appended on dim 0"),
        (_gqa(dim=1), "appended on dim 1"),
        (_gqa(dim=-1), "appended on dim 3"),
    ],
)
def test_gqa_mistakes_are_named(candidate, hint: str) -> None:
    expect_hint(checks.check_gqa_cached_step, candidate, hint, hidden=False)
    expect_hint(checks.check_gqa_cached_step, candidate, hint)


@pytest.mark.parametrize(
    "kind",
    ["top_left", "excludes_self", "sees_next", "no_mask", "repeat", "no_scale", "by_d",
     "wrong_axis", "new_only"],
)  # fmt: skip
def test_the_first_hidden_step_names_each_mistake_alone(kind: str) -> None:
    expect_named_alone(checks.check_gqa_cached_step, _gqa(kind), checks.GQA_MISTAKES[kind])


def test_a_step_that_assumes_a_cache_is_told_about_the_first_step() -> None:
    def always_cat(q, k_new, v_new, past_k, past_v):
        torch.cat([past_k, k_new], dim=2)  # fails on the first step: past_k is None
        return _gqa()(q, k_new, v_new, past_k, past_v)

    expect_hint(checks.check_gqa_cached_step, always_cat, "on the first step there is no cache")


def test_a_cache_of_one_position_appended_on_the_wrong_axis_is_named() -> None:
    """With p = t = 1 the cat works on any axis: the shape tells the mistake."""
    q = torch.randn(1, 4, 1, 3, dtype=F64)
    k_new, v_new, past_k, past_v = (torch.randn(1, 2, 1, 3, dtype=F64) for _ in range(4))
    for dim, hint in ((0, "appended on dim 0"), (1, "appended on dim 1"), (3, "on dim 3")):

        def keys_on(q, k_new, v_new, past_k, past_v, dim=dim):
            return torch.zeros_like(q), torch.cat([past_k, k_new], dim), v_new

        with Exercise("gqa_cached_step", hidden=False) as ex, pytest.raises(ExerciseError) as e:
            checks._check_gqa_case(ex, keys_on, q, k_new, v_new, past_k, past_v)
        assert hint in str(e.value)


def test_the_written_out_step_is_tutorlibs() -> None:
    for H, H_kv, p, t in [(4, 2, 3, 2), (6, 3, 0, 4), (4, 1, 5, 1), (3, 3, 2, 3)]:
        q = torch.randn(2, H, t, 5, dtype=F64)
        k_new, v_new = (torch.randn(2, H_kv, t, 5, dtype=F64) for _ in "kv")
        past_k, past_v = (torch.randn(2, H_kv, p, 5, dtype=F64) for _ in "kv")
        out, keys, values = checks._gqa_step(q, k_new, v_new, past_k, past_v)
        mask = attention.causal_mask(t, past=p)
        reference = attention.grouped_query_attention(q, keys, values, mask)
        assert torch.allclose(out, reference, atol=1e-12)
        sdpa = F.scaled_dot_product_attention(q, keys, values, mask, enable_gqa=True)
        assert torch.allclose(out, sdpa, atol=1e-12)


def test_the_first_hidden_step_tells_every_mistake_apart() -> None:
    for seed in DRAWS:
        d = Draw(seed)
        sizes = checks._gqa_hidden(d)[0]
        q, k_new, v_new, past_k, past_v = checks._gqa_tensors(d, *sizes)
        outs = [checks._gqa_step(q, k_new, v_new, past_k, past_v, kind)[0]
                for kind in ["", *checks.GQA_MISTAKES] if kind != "new_first"]  # fmt: skip
        assert _distinct(outs), (seed, sizes)


def test_attention_by_torch_tutorlib_or_hugging_face_is_refused() -> None:
    from transformers.models.llama.modeling_llama import eager_attention_forward

    sdpa = F.scaled_dot_product_attention  # an alias made before the test
    copy = runpy.run_path(attention.__file__)

    def with_(attend):
        def gqa_cached_step(q, k_new, v_new, past_k, past_v):
            k_all = k_new if past_k is None else torch.cat([past_k, k_new], 2)
            v_all = v_new if past_v is None else torch.cat([past_v, v_new], 2)
            t, S = q.shape[2], k_all.shape[2]
            mask = torch.ones(t, S, dtype=torch.bool).tril(S - t)
            return attend(q, k_all, v_all, mask), k_all, v_all

        return gqa_cached_step

    def repeated(q, k, v):
        G = q.shape[1] // k.shape[1]
        return k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)

    def eager(q, k, v, mask):
        from types import SimpleNamespace

        module = SimpleNamespace(num_key_value_groups=q.shape[1] // k.shape[1], training=False)
        additive = torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, float("-inf"))
        out, _ = eager_attention_forward(module, q, k, v, additive, q.shape[-1] ** -0.5)
        return out.transpose(1, 2)

    sdpa_by_name = getattr(F, "scaled_dot_product_attention".lower())  # a name built at run time
    cheats = [
        with_(lambda q, k, v, m: sdpa(q, k, v, m, enable_gqa=True)),
        with_(lambda q, k, v, m: sdpa_by_name(q, *repeated(q, k, v), m)),
        with_(lambda q, k, v, m: torch._C._nn.scaled_dot_product_attention(
            q, *repeated(q, k, v), m)),
        with_(lambda q, k, v, m: torch.ops.aten._scaled_dot_product_attention_math(
            q, *repeated(q, k, v), m)[0]),
        with_(lambda q, k, v, m: attention.grouped_query_attention(q, k, v, m)),
        with_(lambda q, k, v, m: copy["grouped_query_attention"](q, k, v, m)),
        with_(lambda q, k, v, m: attention.scaled_dot_product_attention(q, *repeated(q, k, v), m)),
        with_(eager),
        with_(lambda q, k, v, m: checks._gqa_step(q, k, v, None, None)[0]),
    ]  # fmt: skip

    def by_hand(q, k_all, v_all, mask):
        keys, values = repeated(q, k_all, v_all)
        scores = q @ keys.transpose(-2, -1) / math.sqrt(q.shape[-1])
        return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ values

    def tutorlibs_mask(q, k_new, v_new, past_k, past_v):
        k_all = k_new if past_k is None else torch.cat([past_k, k_new], 2)
        v_all = v_new if past_v is None else torch.cat([past_v, v_new], 2)
        mask = attention.causal_mask(q.shape[2], past=k_all.shape[2] - q.shape[2])
        return by_hand(q, k_all, v_all, mask), k_all, v_all

    def tutorlibs_cache(q, k_new, v_new, past_k, past_v):
        cache = attention.KVCache()
        if past_k is not None:
            cache.update(0, past_k, past_v)
        k_all, v_all = cache.update(0, k_new, v_new)
        t, S = q.shape[2], k_all.shape[2]
        mask = torch.ones(t, S, dtype=torch.bool).tril(S - t)
        return by_hand(q, k_all, v_all, mask), k_all, v_all

    for cheat in [*cheats, tutorlibs_mask, tutorlibs_cache]:
        expect_refused(checks.check_gqa_cached_step, cheat)
