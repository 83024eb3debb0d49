"""The checks' toolkit (tutorlib.checks): draws, seeds, the guard, the comparisons, Exercise.

The chapters' checks are tested in tests/test_checks_*.py, every graded cell of the course in
tests/test_checks.py, and the whole grader through nbgrader in tests/test_redteam.py.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tutorlib import attention, layers
from tutorlib.checks import (
    Draw,
    Exercise,
    ExerciseError,
    Forbidden,
    as_int,
    draw,
    expect_close,
    expect_equal,
    expect_state_dict,
    foundations,
    hidden_draw,
)
from tutorlib.checks.guard import Watch, guarded
from tutorlib.checks.secret import SECRET_ENV, SEED_ENV, submission_seed

# --- draws and seeds ---------------------------------------------------------------------------


def test_a_seed_repeats_the_draws_and_each_check_has_its_own() -> None:
    draw._use_seed("course")
    a, c = hidden_draw("layer_norm"), hidden_draw("embed")
    draw._use_seed("course")
    b = hidden_draw("layer_norm")
    assert torch.equal(a.normal(5), b.normal(5))
    assert a.integer(0, 10**9) == b.integer(0, 10**9)
    draw._use_seed("course")
    assert not torch.equal(hidden_draw("layer_norm").normal(5), c.normal(5))


def test_each_run_of_a_check_draws_anew_and_a_seed_repeats_the_runs() -> None:
    seen: list[list[tuple[int, int]]] = []

    def spy(context_length: int, d_model: int) -> torch.Tensor:
        seen[-1].append((context_length, d_model))  # and answers right, to see every input
        angles = torch.arange(context_length)[:, None] / 10000 ** (
            torch.arange(0, d_model, 2) / d_model
        )
        return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)

    for _ in range(2):
        draw._use_seed("course")
        for _ in range(3):
            seen.append([])
            with contextlib.suppress(ExerciseError):
                foundations.check_sinusoidal_encoding(spy, hidden=True)
    first, second, third, *again = seen
    assert len(first) > 1 and first != second and second != third, seen
    assert again == [first, second, third]


def test_without_a_seed_every_call_draws_new_inputs() -> None:
    draw._use_seed(None)
    assert not torch.equal(hidden_draw("x").normal(8), hidden_draw("x").normal(8))


def test_draw_helpers_stay_in_their_ranges() -> None:
    d = Draw(0)
    assert all(2 <= d.integer(2, 4) <= 4 for _ in range(50))
    assert d.integers(3, 5, (100,)).min() >= 3 and d.integers(3, 5, (100,)).max() < 5
    assert d.normal(2, 3, grad=True).requires_grad and d.normal(1).dtype == torch.float64
    assert sorted(d.permutation(5).tolist()) == list(range(5))
    assert len(set(d.sample(range(10), 3))) == 3


def _course(tmp: Path, content: bytes = b"{}") -> Path:
    folder = tmp / "course" / "autograded" / "alice" / "a1"
    folder.mkdir(parents=True)
    submitted = tmp / "course" / "submitted" / "alice" / "a1"
    submitted.mkdir(parents=True)
    (submitted / "nb.ipynb").write_bytes(content)
    return folder


def test_a_submission_seed_depends_on_the_secret_the_student_and_the_files(tmp_path: Path) -> None:
    folder = _course(tmp_path)
    seed = submission_seed("secret", folder)
    assert seed == submission_seed("secret", folder)  # the same submission: the same inputs
    assert seed != submission_seed("another", folder)
    (tmp_path / "course" / "submitted" / "alice" / "a1" / "nb.ipynb").write_bytes(b"{ }")
    assert seed != submission_seed("secret", folder)  # any change draws new inputs
    assert submission_seed("s", tmp_path) == submission_seed("s", tmp_path / "elsewhere")


def test_the_launcher_gives_the_kernel_its_seed_not_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tutorlib.checks import sandbox

    folder = _course(tmp_path)
    monkeypatch.setenv(SECRET_ENV, "secret")
    monkeypatch.delenv(SEED_ENV, raising=False)
    sandbox._seed_for_kernel(folder)
    assert SECRET_ENV not in os.environ
    assert os.environ[SEED_ENV] == submission_seed("secret", folder)


def test_the_course_secret_is_made_once_and_readable_by_its_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tutorlib.checks.gradebook import SECRET_FILE, use_course_secret

    monkeypatch.delenv(SECRET_ENV, raising=False)
    secret = use_course_secret(tmp_path)
    assert len(secret) == 32 and use_course_secret(tmp_path) == secret
    assert os.environ[SECRET_ENV] == secret
    assert stat.S_IMODE((tmp_path / SECRET_FILE).stat().st_mode) == 0o600
    assert SECRET_FILE in (Path(__file__).parent.parent / ".gitignore").read_text().split()


# --- the guard -----------------------------------------------------------------------------------


def _found(forbidden: Forbidden, fn, shapes=()) -> list[str]:
    """What the guard refused while `fn` ran."""
    with guarded(Watch(forbidden, "test"), shapes) as found:
        try:
            fn()
        except BaseException:  # noqa: BLE001 - the guard's stop, or anything the call raised
            pass
    return list(found)


SDPA = Forbidden(
    python=(attention.scaled_dot_product_attention,), ops=("scaled_dot_product_attention",)
)


def test_the_guard_sees_an_operator_by_every_name() -> None:
    q = torch.randn(1, 3, 4)
    names = {
        "F": lambda: F.scaled_dot_product_attention(q, q, q),
        "torch._C": lambda: torch._C._nn.scaled_dot_product_attention(q, q, q),
        "torch.ops": lambda: torch.ops.aten.scaled_dot_product_attention(q, q, q),
        "tutorlib": lambda: attention.scaled_dot_product_attention(q, q, q),
        "nn.MultiheadAttention": lambda: torch.nn.MultiheadAttention(4, 1, batch_first=True)(
            q, q, q, need_weights=False
        ),  # calls F.scaled_dot_product_attention inside torch's own Python code
    }
    for name, call in names.items():
        assert _found(SDPA, call), f"{name} went unseen"
    assert _found(SDPA, lambda: torch.softmax(q @ q.transpose(1, 2), -1) @ q) == []


def test_the_aten_watch_sees_what_torch_runs_inside_an_allowed_name() -> None:
    x = torch.randn(3, 5)
    only_aten = Forbidden(ops=("native_layer_norm",))  # F.layer_norm's name is not forbidden
    assert _found(only_aten, lambda: F.layer_norm(x, (5,))) == [
        "the operator aten::native_layer_norm"
    ]


def test_the_guard_refuses_intermediate_matrices_of_a_given_shape() -> None:
    q, k = torch.randn(6, 4), torch.randn(9, 4)
    assert _found(Forbidden(), lambda: q @ k.T, shapes=[(6, 9)])
    assert _found(Forbidden(), lambda: q.T @ torch.randn(6, 2), shapes=[(6, 9)]) == []


def test_escapes_are_refused_from_the_learners_code_only() -> None:
    assert _found(Forbidden(), lambda: sys._getframe(0)) == ["sys._getframe"]
    assert _found(Forbidden(), lambda: sys.setprofile(None)) == ["sys.setprofile"]
    started = _found(Forbidden(), lambda: threading.Thread(target=print).start())
    assert started and "start" in started[0]
    # torch and the standard library may use them for their own purposes
    import collections

    assert _found(Forbidden(), lambda: collections.namedtuple("P", "x y")) == []


def test_code_handed_to_the_learner_may_run() -> None:
    from tutorlib.checks.foundations import _centre, _pe_variant

    assert _found(Forbidden(), lambda: _centre(torch.ones(2))) == []
    assert _found(Forbidden(), lambda: _pe_variant(2, 2, ""))  # a check's own reference


# --- comparisons ---------------------------------------------------------------------------------


def test_expect_close_names_the_nearest_mistake_and_says_where_values_differ() -> None:
    x = torch.tensor([1.0, 2.0, 3.0])
    with pytest.raises(ExerciseError, match="Likely mistake: doubled"):
        expect_close(2 * x, x, what="f", mistakes={"doubled": lambda: 2 * x, "tripled": 3 * x})
    with pytest.raises(ExerciseError) as error:
        expect_close(x + torch.tensor([0.0, 0.5, 0.0]), x, what="f")
    assert error.value.got == 2.5 and "at index (1,)" in str(error.value)
    with pytest.raises(ExerciseError, match="has shape"):
        expect_close(x[:2], x, what="f")
    with pytest.raises(ExerciseError, match="should be a torch.Tensor"):
        expect_close([1.0, 2.0, 3.0], x, what="f")
    expect_close([1.0, 2.0], (1.0, 2.0), what="numbers")  # numbers compare as numbers
    with pytest.raises(ExerciseError, match="should be a number"):
        expect_close("1.0", 1.0, what="a number")


def test_a_mistake_that_cannot_be_computed_on_the_inputs_is_not_a_candidate() -> None:
    x, w = torch.ones(2, 3), torch.ones(4, 3)

    def not_transposed():
        return x @ w  # (2, 3) @ (4, 3): no value for these inputs

    with pytest.raises(ExerciseError, match="Likely mistake: doubled"):
        expect_close(
            2 * x @ w.T, x @ w.T, what="f", mistakes={"no": not_transposed, "doubled": 2 * x @ w.T}
        )
    with pytest.raises(ExerciseError, match="is not right"):
        expect_equal(3, 4, what="n", mistakes={"no": lambda: [][0]})


def test_expect_close_says_when_a_float64_answer_went_through_float32() -> None:
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = torch.softmax(x, dim=-1)
    through_float32 = torch.softmax(x.float(), dim=-1).double()
    assert not torch.equal(through_float32, target)
    with pytest.raises(ExerciseError, match="float32's rounding") as error:
        expect_close(through_float32, target, what="p", atol=1e-12, rtol=1e-10)
    assert "keep the inputs' dtype, float64" in str(error.value)
    with pytest.raises(ExerciseError) as error:  # a real difference is not put down to rounding
        expect_close(target * 1.001, target, what="p", atol=1e-12, rtol=1e-10)
    assert "float32" not in str(error.value)


def test_expect_equal_lists_every_mistake_that_gives_the_same_value() -> None:
    with pytest.raises(ExerciseError) as error:
        expect_equal(4, 6, what="n", mistakes={"a": 4, "b": 4, "c": 5})
    assert "one of these. a Or: b" in str(error.value)
    with pytest.raises(ExerciseError, match="Likely mistake: c"):
        expect_equal(5, 6, what="n", mistakes={"a": 4, "b": 4, "c": 5})
    with pytest.raises(ExerciseError, match="has dtype torch.int32"):
        expect_equal(torch.tensor([1], dtype=torch.int32), torch.tensor([1]), what="ids")
    expect_equal([1, 2], [1, 2], what="ids")
    with pytest.raises(ExerciseError):
        expect_equal((1, 2), [1, 2], what="ids")  # a tuple is not the list asked for


def test_as_int_takes_whole_numbers_only() -> None:
    assert as_int(3, "n") == 3 and as_int(3.0, "n") == 3 and as_int(torch.tensor(3), "n") == 3
    for wrong in (3.5, True, "3", torch.tensor(3.0)):
        with pytest.raises(ExerciseError, match="should return an int"):
            as_int(wrong, "n")


def test_expect_state_dict_checks_names_shapes_dtypes_and_values() -> None:
    want = {"w": torch.ones(2, 3), "b": torch.zeros(3)}
    expect_state_dict({"w": torch.ones(2, 3), "b": torch.zeros(3)}, want, what="map")
    with pytest.raises(ExerciseError, match="the names do not fit"):
        expect_state_dict({"w": torch.ones(2, 3)}, want, what="map")
    with pytest.raises(ExerciseError, match="Likely mistake: transposed"):
        expect_state_dict(
            {"w": torch.ones(3, 2), "b": torch.zeros(3)},
            want,
            what="map",
            diagnose=lambda name, got: "transposed" if got.shape == (3, 2) else None,
        )


# --- Exercise ------------------------------------------------------------------------------------


def test_a_learner_function_may_not_change_its_inputs() -> None:
    def in_place(x):
        x.mul_(2)
        return x

    with pytest.raises(ExerciseError, match="changed an input"), Exercise("double", False) as ex:
        ex.call(in_place, torch.ones(3))
    with pytest.raises(ExerciseError, match="changed an input"), Exercise("append", False) as ex:
        ex.call(lambda ids: ids.append(1) or ids, [1, 2])
    with pytest.raises(ExerciseError, match="changed an input"), Exercise("nan", False) as ex:
        ex.call(lambda x: x.fill_(float("nan")), torch.ones(3))


def test_an_input_that_holds_nan_is_unchanged_when_left_alone() -> None:
    state = torch.tensor([float("nan"), float("-inf"), 1.0])  # NaN != NaN: compared by position
    with Exercise("nan_input", False) as ex:
        out = ex.call(lambda x: x * 2, state)
    assert torch.isnan(out[0]) and out[1] == float("-inf")
    with pytest.raises(ExerciseError, match="changed an input"), Exercise("inf", False) as ex:
        ex.call(lambda x: x.nan_to_num_(0.0, neginf=0.0), state.clone())


def test_answers_must_be_plain_tensors_and_values() -> None:
    class Always(float):
        def __eq__(self, other):
            return True

    class Agreeable(torch.Tensor):
        pass

    for strange in (Always(1.0), torch.ones(2).as_subclass(Agreeable), [torch.ones(1), Always(2)]):
        with pytest.raises(ExerciseError, match="plain"), Exercise("f", False) as ex:
            ex.call(lambda s=strange: s)
    with Exercise("f", False) as ex:
        assert ex.call(lambda: {"a": [torch.ones(1), 2, (3.0, None)]})


def test_torch_settings_the_learner_changed_are_put_back() -> None:
    def careless():
        torch.set_grad_enabled(False)
        return torch.ones(1)

    with Exercise("f", False) as ex:
        ex.call(careless)
    assert torch.is_grad_enabled()


def test_a_learners_error_becomes_a_message_with_the_hint_for_it() -> None:
    def broken(x):
        return x @ torch.ones(3, 2)

    with pytest.raises(ExerciseError) as error, Exercise("f", False) as ex:
        ex.call(broken, torch.ones(2, 2), hints={"cannot be multiplied": "transpose it."})
    assert "f raised RuntimeError" in str(error.value) and "Likely mistake: transpose it." in str(
        error.value
    )


def test_a_check_that_runs_past_the_learners_code_prints_ok(capsys) -> None:
    with Exercise("f", True) as ex:
        expect_close(ex.call(torch.ones, 2), torch.ones(2), what="ones")
    assert capsys.readouterr().out == "OK: f passes the hidden tests.\n"


def test_forbidden_lists_resolve_classes_and_every_python_name_of_an_op() -> None:
    watch = Watch(Forbidden(python=(layers.LayerNorm,), ops=("layer_norm",)), "x")
    assert (
        watch.code_label(layers.LayerNorm.forward.__code__) == "tutorlib.layers.LayerNorm.forward"
    )
    assert watch.builtin_label(torch.layer_norm) == "torch's layer_norm"
    assert watch.torch_label(F.layer_norm) is not None
