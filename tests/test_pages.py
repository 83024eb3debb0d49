"""Every book page and solution notebook executes without error, within its time and memory
budget (90 s and 1 GB on a 2-core CPU, no GPU, no network; a few training pages have more, see
tests/budgets.py), and the pages that promise a result print it."""

from __future__ import annotations

import json
import re

import pytest

from tests.budgets import (
    MEMORY_BUDGET_MB,
    QUIET,
    ROOT,
    book_pages,
    measure,
    plan,
    seconds_budget,
    solution_notebooks,
    toc_files,
    unix_socket_kernels,
)

# Results a page promises: regular expressions over what its cells print, each with the least
# value its first group may take (every match of the pattern is checked).
TARGETS = {
    "book/03_training/02_date_translator.md": [
        (r"held-out exact match \(greedy\): ([0-9.]+)", 0.99),
    ],
    "book/04_scaling/05_kv_cache.md": [(r"speed-up at 256 tokens: ([0-9.]+)x", 3.0)],
    "book/05_vision/02_vit_digits.md": [(r"ViT test accuracy: ([0-9.]+)", 0.97)],
    "book/05_vision/05_multimodal.md": [(r"zero-shot test accuracy: ([0-9.]+)", 0.90)],
    "book/06_generative/03_text_to_text.md": [
        (r"exact match, (?:reverse|sort|double|date): ([0-9.]+)", 0.85),
        (r"exact match, all tasks: ([0-9.]+)", 0.90),
    ],
    "book/06_generative/04_pixels.md": [
        (r"recognised as the class asked for: ([0-9.]+)", 0.90),
    ],
    "book/06_generative/05_pretrained.md": [
        (r"linear head on frozen MiniLM, test accuracy: ([0-9.]+)", 0.78),
    ],
}
# Results that must stay small: regular expressions and the largest value their group may take.
CEILINGS = {
    "book/04_scaling/09_efficient_attention.md": [
        (r"page's loop vs tutorlib.flash.flash_attention: max \|difference\| = ([0-9.e+-]+)", 1e-5),
    ],
    "book/04_scaling/10_mixture_of_experts.md": [
        (r"one expert, k = 1 vs FeedForward: max \|difference\| = ([0-9.e+-]+)", 1e-6),
    ],
    "book/04_scaling/07_parallelism.md": [
        (r"first-step gradients, DDP vs one process: max \|difference\| = ([0-9.e+-]+)", 1e-6),
    ],
    "book/06_generative/01_gpt.md": [
        (r"validation loss: ([0-9.]+) nats per character", 2.0),
        # nanoGPT's CPU configuration on this corpus: 1.77 nats = 2.55 bits per character
        (r"held-out bits per character, (?:characters|BPE [0-9,]+): ([0-9.]+)", 2.55),
    ],
    "book/06_generative/07_modern_decoder.md": [
        (r"max \|logits difference\| vs LlamaForCausalLM: ([0-9.e+-]+)", 1e-4),
    ],
    "book/06_generative/05_pretrained.md": [
        (r"max \|difference\| vs sentence-transformers: ([0-9.e+-]+)", 1e-4),
        (r"max \|difference\| vs transformers \(BertModel token states\): ([0-9.e+-]+)", 1e-4),
    ],
    "book/06_generative/06_huggingface.md": [
        (r"max \|logits difference\| vs GPT2LMHeadModel: ([0-9.e+-]+)", 1e-4),
        (r"max \|hidden-state difference\| vs BertModel \(real tokens\): ([0-9.e+-]+)", 1e-4),
    ],
}

NOTEBOOKS = [*book_pages(), *solution_notebooks()]


def test_every_chapter_page_is_in_the_build() -> None:
    listed = set(toc_files())
    on_disk = {
        p.relative_to(ROOT).with_suffix("").as_posix()
        for p in (ROOT / "book").glob("*/*.md")
        if p.name != "index.md"
    }
    assert on_disk <= listed, f"pages missing from _toc.yml: {sorted(on_disk - listed)}"


def check_notebook(path) -> None:
    m = measure(path)
    budget = seconds_budget(path)
    assert m.seconds <= budget, f"{m.path} took {m.seconds:.0f} s (budget {budget} s)"
    assert m.peak_mb <= MEMORY_BUDGET_MB, f"{m.path} peaked at {m.peak_mb:.0f} MB"
    for pattern, least in TARGETS.get(m.path, []):
        found = re.findall(pattern, m.stdout)
        assert found, f"{m.path} no longer prints its result ({pattern!r})"
        for value in found:
            assert float(value) >= least, f"{m.path}: {pattern!r} gave {value}, target {least}"
    for pattern, most in CEILINGS.get(m.path, []):
        found = re.findall(pattern, m.stdout)
        assert found, f"{m.path} no longer prints its result ({pattern!r})"
        for value in found:
            assert float(value) <= most, f"{m.path}: {pattern!r} gave {value}, at most {most}"


# QUIET (tests/budgets.py): the pages that run one at a time with two threads, and why.


# One test class per notebook: `make test` runs pytest-xdist with --dist loadscope, which keeps a
# module's tests on one worker (nbval's cells share a kernel; module fixtures are built once) but
# a class's tests together, so the long page tests are shared out between the workers.
def _notebook_test(path) -> object:
    def test_runs_within_budget(self) -> None:
        check_notebook(path)

    return test_runs_within_budget


for _path in NOTEBOOKS:
    _key = _path.relative_to(ROOT).as_posix()
    _name = "Test_" + re.sub(r"\W", "_", _key)
    _body = {"test_runs_within_budget": _notebook_test(_path)}
    if _key in QUIET:
        _body["pytestmark"] = [pytest.mark.quiet]
    globals()[_name] = type(_name, (), _body)


def test_quiet_pages_exist() -> None:
    for page in QUIET:
        assert (ROOT / page).exists(), page


def test_make_book_executes_the_quiet_pages_alone_in_book_order_then_the_longest_first() -> None:
    """`make book` executes what its cache lacks in this order (tests/budgets.py, execute_pages):
    6.1 before the pages that load its GPT, 6.9 before those that start from its assistant, and no
    long page started last beside an idle core."""
    jobs = plan(NOTEBOOKS)
    names = [job.path.relative_to(ROOT).as_posix() for job in jobs]
    quiet = [name for name in names if name in QUIET]
    assert names[: len(QUIET)] == quiet == [n for n in toc_order() if n in QUIET], names
    assert all(job.threads == job.slots == 2 for job in jobs[: len(QUIET)])
    rest = jobs[len(QUIET) :]
    assert all(job.threads == job.slots == 1 for job in rest)
    assert [job.expected_seconds for job in rest] == sorted(
        (job.expected_seconds for job in rest), reverse=True
    )
    assert names.index("book/06_generative/01_gpt.md") < names.index(
        "book/06_generative/12_limits.md"
    )
    assert len(set(names)) == len(names) == len(NOTEBOOKS)


def toc_order() -> list[str]:
    return [path.relative_to(ROOT).as_posix() for path in NOTEBOOKS]


def test_every_target_page_exists() -> None:
    for page in [*TARGETS, *CEILINGS]:
        assert (ROOT / page).exists(), page


def test_every_notebook_has_a_measured_budget_row() -> None:
    """The site's compute notes and chapter table read book/budgets.json: a notebook without a
    row there fails the book build, so say which notebooks need measuring."""
    rows = json.loads((ROOT / "book" / "budgets.json").read_text())["notebooks"]
    missing = [p.relative_to(ROOT).as_posix() for p in NOTEBOOKS]
    missing = [p for p in missing if p not in rows]
    assert not missing, (
        f"no measurement in book/budgets.json for {missing}: run "
        f"`python -m tests.budgets --write-readme --only {' '.join(missing)}`"
    )


def test_kernels_started_for_the_pages_bind_no_tcp_port() -> None:
    """A kernel on TCP ports can lose a port to the other test worker's kernel and die before it
    starts (it did, in CI); measure's kernels and nbval's (tests/conftest.py) use Unix sockets."""
    import nbclient
    import nbformat
    import nbval.kernel

    probe = "from ipykernel.kernelapp import IPKernelApp\nprint(IPKernelApp.instance().transport)"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(probe)])
    with unix_socket_kernels() as config:
        nbclient.NotebookClient(nb, timeout=60, kernel_name="python3", config=config).execute()
    assert nb.cells[0].outputs[0]["text"].strip() == "ipc"
    assert nbval.kernel.KernelManager().transport == "ipc"
