"""What the grading tests submit: the round-trip plans of every assignment, and the writers of
students' submissions (the released notebooks with answers filled in).

Used by the grading tests (tests/test_grading.py, tests/test_redteam.py, tests/test_autograde.py,
tests/test_instructors.py) and by `python -m tests.grading benchmark`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nbformat

from tests.grading import SOLUTIONS
from tests.hidden_only import hidden_only

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
    # grade_ids of the assignment's other hand-graded answers (in its other notebooks)
    also_written: tuple[str, ...] = ()


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
        also_written=("why_exact",),  # 03_experts_drafts_tiles
    ),
    "05_vision": RoundTrip(
        mistake_notebook="02_detection_and_contrast",
        mistake={"info_nce": INFO_NCE_TEMPERATURE_INVERTED},
        failing_test="test_info_nce",
        diagnosis="Likely mistake: the temperature is inverted",
        written="inductive_bias",
        also_written=("random_control",),  # 03_windows_sound_proteins
    ),
    "06_generative": RoundTrip(
        mistake_notebook="01_language_modelling",
        mistake={"causal_lm_loss": CAUSAL_LM_LOSS_UNSHIFTED},
        failing_test="test_causal_lm_loss",
        diagnosis="Likely mistake: the targets are not shifted",
        written="sampling_and_repetition",
        also_written=("dpo_reference",),  # 04_post_training
        hidden_only={"causal_lm_loss": CAUSAL_LM_LOSS_VISIBLE_ONLY},
        tamper={"causal_lm_loss": CAUSAL_LM_LOSS_TAMPERED},
    ),
}


def answers(assignment: str) -> dict[str, dict[str, str]]:
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


def submit(course: Path, assignment: str, student: str, changes: dict | None) -> None:
    """The released notebooks, with the solutions (and `changes`) filled in unless None."""
    folder = course / "submitted" / student / assignment
    folder.mkdir(parents=True)
    solution = answers(assignment)
    for path in sorted((course / "exercises" / assignment).glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        if changes is not None:
            replace = {**solution[path.stem], **changes.get(path.stem, {})}
            for cell in nb.cells:
                gid = cell.metadata.get("nbgrader", {}).get("grade_id")
                if gid in replace:
                    cell.source = replace[gid]
        nbformat.write(nb, folder / path.name)


def submit_notebook(course: Path, assignment: str, student: str, name: str, sources: dict) -> None:
    """One released notebook of `assignment` with the solution's answers, except those in
    `sources` (grade_id -> source), as `student`'s only submission of that assignment."""
    folder = course / "submitted" / student / assignment
    folder.mkdir(parents=True, exist_ok=True)
    replace = {**answers(assignment)[name], **sources}
    nb = nbformat.read(course / "exercises" / assignment / f"{name}.ipynb", as_version=4)
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in replace:
            cell.source = replace[grade_id]
    nbformat.write(nb, folder / f"{name}.ipynb")


def hidden_only_changes(assignment: str) -> dict[str, dict[str, str]]:
    """Every answer of `assignment` right for the visible tests and slightly off for the hidden
    ones (tests/hidden_only.py): the submission whose feedback must show no expected value."""
    changes = {}
    for notebook, cells in answers(assignment).items():
        code = [gid for gid in cells if _is_code(notebook, assignment, gid)]
        changes[notebook] = {
            gid: hidden_only(cells[gid], first=(i == 0)) for i, gid in enumerate(code)
        }
    return changes


def _is_code(notebook: str, assignment: str, grade_id: str) -> bool:
    nb = nbformat.read(SOLUTIONS / assignment / f"{notebook}.ipynb", as_version=4)
    return any(
        c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade_id") == grade_id
        for c in nb.cells
    )
