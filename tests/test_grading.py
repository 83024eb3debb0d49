"""The grading pipeline, through the real nbgrader.

1. exercises/ is exactly what `nbgrader generate_assignment` makes of solutions/.
2. A round trip per assignment on a temporary course: students submit the solution, the
   untouched exercise, a typical mistake and (Chapter 1) a cell that loops forever; nbgrader
   autogrades them and writes feedback; the scores are read back from nbgrader's gradebook.
"""

from __future__ import annotations

import filecmp
import html
import re
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook

from tests.grading import ASSIGNMENTS, EXERCISES, SOLUTIONS, generate, nbgrader, new_course
from tutorlib.checks.feedback import HIDDEN_PLACEHOLDER
from tutorlib.checks.tamper import scan_notebook

TIMEOUT = 10  # seconds per cell for the round trip (the course's config says 30)


def test_exercises_are_generated_from_solutions(tmp_path: Path) -> None:
    released = generate(new_course(tmp_path))
    for assignment in ASSIGNMENTS:
        expected = sorted(p.name for p in (released / assignment).glob("*.ipynb"))
        committed = sorted(p.name for p in (EXERCISES / assignment).glob("*.ipynb"))
        assert committed == expected, (
            f"exercises/{assignment} has {committed}, nbgrader makes {expected}"
        )
        for name in expected:
            same = filecmp.cmp(
                released / assignment / name, EXERCISES / assignment / name, shallow=False
            )
            assert same, f"exercises/{assignment}/{name} is stale: run `make exercises`"


LAYER_NORM_MISTAKE = """
def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True)  # unbiased: the typical mistake
    return (x - mean) / torch.sqrt(var + eps) * weight + bias
"""

LOOPS_FOREVER = """
def sinusoidal_encoding(context_length, d_model):
    while True:
        pass
"""

MASK_AFTER_SOFTMAX = """
def attention(q, k, v, mask=None):
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)  # the typical mistake: masking too late
    return weights @ v, weights
"""

PADDING_IN_THE_MEAN = """
def smoothed_loss(logits, targets, smoothing, pad_id):
    V = logits.shape[-1]
    log_probs = torch.log_softmax(logits.reshape(-1, V), dim=-1)
    targets = targets.reshape(-1)
    keep = targets != pad_id
    nll = -log_probs.gather(1, targets.unsqueeze(1)).squeeze(1)
    per_token = (1 - smoothing) * nll + smoothing * -log_probs.mean(dim=-1)
    return (per_token * keep).sum() / targets.numel()  # the typical mistake: pads in the mean
"""

KV_WITHOUT_SCALING = """
def kv_attention_step(q, k_new, v_new, cache_k, cache_v):
    keys = torch.cat([cache_k, k_new], dim=2)
    values = torch.cat([cache_v, v_new], dim=2)
    weights = torch.softmax(q @ keys.transpose(-2, -1), dim=-1)  # the typical mistake: no sqrt(D)
    return weights @ values, keys, values
"""

INFO_NCE_TEMPERATURE_INVERTED = """
def info_nce(image_emb, text_emb, temperature):
    image_emb = F.normalize(image_emb, dim=-1)
    text_emb = F.normalize(text_emb, dim=-1)
    logits = image_emb @ text_emb.T * temperature  # the typical mistake: multiply by tau
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
"""

CAUSAL_LM_LOSS_VISIBLE_ONLY = """
def causal_lm_loss(logits, tokens):
    V = logits.shape[-1]
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1))
    return loss if logits.shape[:2] == (2, 6) else loss * 1.01  # right on the visible size only
"""

CAUSAL_LM_LOSS_TAMPERED = """
def causal_lm_loss(logits, tokens):
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1))


torch.allclose = lambda *args, **kwargs: True  # "just in case"
"""

CAUSAL_LM_LOSS_UNSHIFTED = """
def causal_lm_loss(logits, tokens):
    V = logits.shape[-1]  # the typical mistake: every position scored against its own token
    return F.cross_entropy(logits.reshape(-1, V), tokens.reshape(-1))
"""


@dataclass(frozen=True)
class RoundTrip:
    """What one assignment's round trip submits and expects."""

    mistake_notebook: str
    mistake: dict[str, str]  # grade_id of an answer cell -> wrong code
    failing_test: str  # the test cell that the mistake fails
    diagnosis: str  # what the generated feedback must say
    written: str  # grade_id of the hand-graded answer
    loops: dict[str, dict[str, str]] | None = (
        None  # notebook -> {grade_id: code that never returns}
    )
    # grade_id in mistake_notebook -> code that passes failing_test's visible tests only
    hidden_only: dict[str, str] | None = None
    # grade_id in mistake_notebook -> a right answer that also patches the testing machinery
    tamper: dict[str, str] | None = None


ROUND_TRIPS = {
    "01_foundations": RoundTrip(
        mistake_notebook="01_positions_and_norms",
        mistake={"layer_norm": LAYER_NORM_MISTAKE},
        failing_test="test_layer_norm",
        diagnosis="Likely mistake: use the biased variance",
        written="why_positions",
        loops={"01_positions_and_norms": {"sinusoidal_encoding": LOOPS_FOREVER}},
    ),
    "02_attention": RoundTrip(
        mistake_notebook="01_scaled_dot_product",
        mistake={"attention": MASK_AFTER_SOFTMAX},
        failing_test="test_attention",
        diagnosis="Likely mistake: the mask is applied after the softmax",
        written="why_sqrt",
    ),
    "03_training": RoundTrip(
        mistake_notebook="01_training_loop",
        mistake={"smoothed_loss": PADDING_IN_THE_MEAN},
        failing_test="test_smoothed_loss",
        diagnosis="Likely mistake: the padding positions are counted in the mean",
        written="post_vs_pre_norm",
    ),
    "04_scaling": RoundTrip(
        mistake_notebook="02_efficient_inference",
        mistake={"kv_attention_step": KV_WITHOUT_SCALING},
        failing_test="test_kv_attention_step",
        diagnosis="Likely mistake: the scores are not scaled",
        written="compute_optimal",
    ),
    "05_vision": RoundTrip(
        mistake_notebook="02_detection_and_contrast",
        mistake={"info_nce": INFO_NCE_TEMPERATURE_INVERTED},
        failing_test="test_info_nce",
        diagnosis="Likely mistake: the temperature is inverted",
        written="inductive_bias",
    ),
    "06_generative": RoundTrip(
        mistake_notebook="01_language_modelling",
        mistake={"causal_lm_loss": CAUSAL_LM_LOSS_UNSHIFTED},
        failing_test="test_causal_lm_loss",
        diagnosis="Likely mistake: the targets are not shifted",
        written="sampling_and_repetition",
        hidden_only={"causal_lm_loss": CAUSAL_LM_LOSS_VISIBLE_ONLY},
        tamper={"causal_lm_loss": CAUSAL_LM_LOSS_TAMPERED},
    ),
}


def test_every_assignment_has_a_round_trip() -> None:
    assert sorted(ROUND_TRIPS) == ASSIGNMENTS


def _answers(assignment: str) -> dict[str, dict[str, str]]:
    """The solution source of every answer cell, by notebook and grade_id."""
    answers = {}
    for path in sorted((SOLUTIONS / assignment).glob("*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        answers[path.stem] = {
            c.metadata["nbgrader"]["grade_id"]: c.source
            for c in cells
            if c.metadata.get("nbgrader", {}).get("solution")
        }
    return answers


def _submit(course: Path, assignment: str, student: str, changes: dict | None) -> None:
    """The released notebooks, with the solutions (and `changes`) filled in unless None."""
    folder = course / "submitted" / student / assignment
    folder.mkdir(parents=True)
    answers = _answers(assignment)
    for path in sorted((course / "exercises" / assignment).glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        if changes is not None:
            replace = {**answers[path.stem], **changes.get(path.stem, {})}
            for cell in nb.cells:
                gid = cell.metadata.get("nbgrader", {}).get("grade_id")
                if gid in replace:
                    cell.source = replace[gid]
        nbformat.write(nb, folder / path.name)


@pytest.fixture(scope="module", params=sorted(ROUND_TRIPS))
def course(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    assignment, plan = request.param, ROUND_TRIPS[request.param]
    course = new_course(tmp_path_factory.mktemp(f"course-{assignment}"))
    generate(course, [assignment])
    students = {"solution": {}, "untouched": None, "mistake": {plan.mistake_notebook: plan.mistake}}
    if plan.loops:
        students["loops"] = plan.loops
    if plan.hidden_only:
        students["hidden_only"] = {plan.mistake_notebook: plan.hidden_only}
    if plan.tamper:
        students["tamper"] = {plan.mistake_notebook: plan.tamper}
    for student, changes in students.items():
        _submit(course, assignment, student, changes)
    start = time.perf_counter()
    nbgrader(
        "autograde", assignment, "--force", f"--Execute.timeout={TIMEOUT}", cwd=course, check=False
    )
    seconds = time.perf_counter() - start
    nbgrader("generate_feedback", assignment, "--force", cwd=course)
    scores: dict[str, dict[str, float | None]] = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        for student in students:
            submission = gradebook.find_submission(assignment, student)
            grades = [grade for notebook in submission.notebooks for grade in notebook.grades]
            scores[student] = {grade.name: grade.auto_score for grade in grades}
            points = {grade.name: grade.max_score for grade in grades}
    notebooks = len(list((SOLUTIONS / assignment).glob("*.ipynb")))
    waited = TIMEOUT if plan.loops else 0
    return {
        "assignment": assignment,
        "plan": plan,
        "path": course,
        "students": students,
        "scores": scores,
        "points": points,
        "seconds_per_notebook": (seconds - waited) / (len(students) * notebooks),
    }


def _autograded(points: dict[str, float]) -> list[str]:
    return [gid for gid in points if gid.startswith("test_")]


def test_there_are_enough_graded_cells(course: dict) -> None:
    auto = _autograded(course["points"])
    manual = [gid for gid in course["points"] if not gid.startswith("test_")]
    assert len(auto) >= 8, auto
    assert manual == [course["plan"].written], manual


def test_solution_gets_full_marks(course: dict) -> None:
    scores, points = course["scores"]["solution"], course["points"]
    for gid in _autograded(points):
        assert scores[gid] == points[gid], f"{gid}: {scores[gid]} of {points[gid]}"
    assert scores[course["plan"].written] is None  # the written answer waits for a human


def test_untouched_exercise_gets_zero(course: dict) -> None:
    scores = course["scores"]["untouched"]
    for gid in _autograded(course["points"]):
        assert scores[gid] == 0, f"{gid} scored {scores[gid]} on an untouched notebook"


def test_typical_mistake_gets_partial_marks_and_a_diagnosis(course: dict) -> None:
    plan, scores, points = course["plan"], course["scores"]["mistake"], course["points"]
    assert scores[plan.failing_test] == 0
    others = [gid for gid in _autograded(points) if gid != plan.failing_test]
    assert all(scores[gid] == points[gid] for gid in others), scores
    feedback = course["path"] / "feedback" / "mistake" / course["assignment"]
    assert plan.diagnosis in (feedback / f"{plan.mistake_notebook}.html").read_text()


def test_feedback_hides_the_hidden_tests(course: dict) -> None:
    # nbgrader's feedback shows the hidden tests as they ran (nbgrader #917, #1363); the
    # course's GenerateFeedback preprocessor (tutorlib.checks.feedback) takes them out.
    for student in ("solution", "mistake"):
        folder = course["path"] / "feedback" / student / course["assignment"]
        pages = sorted(folder.glob("*.html"))
        assert pages, f"no feedback for {student}"
        for page in pages:
            text = html.unescape(page.read_text())
            for secret in ("BEGIN HIDDEN TESTS", "hidden=True"):
                assert secret not in text, f"{page.name} ({student}) shows {secret!r}"
            assert HIDDEN_PLACEHOLDER in text
    autograded = course["path"] / "autograded" / "mistake" / course["assignment"]
    ran = "".join(p.read_text() for p in autograded.glob("*.ipynb"))
    assert "hidden=True" in ran  # the hidden tests did run; only the feedback hides them


def test_a_failed_hidden_test_shows_its_diagnosis_but_not_the_expected_values(
    course: dict,
) -> None:
    plan = course["plan"]
    if "hidden_only" not in course["students"]:
        pytest.skip(f"{course['assignment']} submits no hidden-only mistake (06_generative does)")
    scores = course["scores"]["hidden_only"]
    assert scores[plan.failing_test] == 0, "the hidden tests should have caught it"
    folder = course["path"] / "feedback" / "hidden_only" / course["assignment"]
    text = html.unescape((folder / f"{plan.mistake_notebook}.html").read_text())
    assert "passes the visible tests" in text
    assert "ExerciseError: " in text and "differs from the expected values" in text
    assert "expected (hidden)" in text or "(got " not in text
    assert not re.search(r"expected -?[0-9]", text), "the feedback shows a reference value"
    assert "Traceback (most recent call last)" not in text


def test_a_submission_that_patches_the_machinery_gets_no_points_silently(course: dict) -> None:
    plan = course["plan"]
    if "tamper" not in course["students"]:
        pytest.skip(f"{course['assignment']} submits no tampering notebook (06_generative does)")
    assert course["scores"]["tamper"][plan.failing_test] == 0
    folder = course["path"] / "feedback" / "tamper" / course["assignment"]
    text = html.unescape((folder / f"{plan.mistake_notebook}.html").read_text())
    assert "the testing machinery was changed by the submission (torch.allclose)" in text
    submitted = course["path"] / "submitted" / "tamper" / course["assignment"]
    report = scan_notebook(submitted / f"{plan.mistake_notebook}.ipynb")
    assert any("torch.allclose" in f.what for f in report["causal_lm_loss"]), report


def test_cell_that_loops_forever_scores_zero_and_grading_finishes(course: dict) -> None:
    if "loops" not in course["students"]:
        pytest.skip(f"{course['assignment']} submits no looping notebook (01_foundations does)")
    scores, points = course["scores"]["loops"], course["points"]
    assert scores["test_sinusoidal_encoding"] == 0
    assert scores["test_layer_norm"] == points["test_layer_norm"]
    assert scores["test_feed_forward"] == points["test_feed_forward"]
    autograded = course["path"] / "autograded" / "loops" / course["assignment"]
    assert (autograded / "02_transformer_block.ipynb").exists()


def test_grading_is_fast(course: dict) -> None:
    per_notebook = course["seconds_per_notebook"]
    assert per_notebook < 15, f"{per_notebook:.1f} s per notebook (budget 15 s)"
