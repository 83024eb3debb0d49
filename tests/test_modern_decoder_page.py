"""Page 6.7 (the modern decoder) without executing it: what Jupyter Book needs from its MyST
(every glued number is glued by a cell, every citation is in the bibliography, the page is in
the table of contents and the chapter's list), and the claim its ladder ends on: the six
changes, applied to the 2017 defaults, give `LLAMA_STYLE`. tests/test_pages.py executes it."""

from __future__ import annotations

import re
from dataclasses import replace

from myst_nb.core.read import read_myst_markdown_notebook

from tests.budgets import ROOT, toc_files
from tutorlib.models import LLAMA_STYLE, TransformerConfig

PAGE = ROOT / "book" / "06_generative" / "07_modern_decoder.md"


def _cells() -> tuple[str, str]:
    nb = read_myst_markdown_notebook(PAGE.read_text())
    prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    return prose, code


def _rung_key(name: str) -> str:
    # The page's add_rung glues "verdict_<key>" under this key.
    return name.removeprefix("+ ").replace(" ", "_").replace("-", "_").lower()


def test_every_glued_value_is_glued_by_a_cell() -> None:
    prose, code = _cells()
    used = {m.split(":")[0] for m in re.findall(r"\{glue:\w+\}`([^`]+)`", prose)}
    glued = set(re.findall(r"""glue\(\s*["']([\w]+)["']""", code))
    glued |= {f"verdict_{_rung_key(n)}" for n in re.findall(r'add_rung\(\s*"([^"]+)"', code)}
    assert used, "the page glues no values any more: update this test"
    assert used <= glued, f"glued in the prose but not by any cell: {sorted(used - glued)}"


def test_every_citation_is_in_the_bibliography() -> None:
    prose, _ = _cells()
    bib = (ROOT / "book" / "references.bib").read_text()
    defined = set(re.findall(r"^@\w+\{([^,]+),", bib, flags=re.M))
    cited = {
        key.strip()
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", prose)
        for key in group.split(",")
    }
    assert cited, "the page cites nothing any more: update this test"
    assert cited <= defined, f"cited but not in book/references.bib: {sorted(cited - defined)}"


def test_every_code_cell_compiles() -> None:
    nb = read_myst_markdown_notebook(PAGE.read_text())
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            compile(cell.source, f"{PAGE.name} cell {i}", "exec")


def test_page_is_in_the_book_after_the_huggingface_page() -> None:
    files = toc_files()
    assert "book/06_generative/07_modern_decoder" in files
    assert files.index("book/06_generative/07_modern_decoder") == (
        files.index("book/06_generative/06_huggingface") + 1
    )
    index = (ROOT / "book" / "06_generative" / "index.md").read_text()
    assert "7. [The modern decoder](07_modern_decoder)" in index


def test_the_six_changes_give_llama_style() -> None:
    sizes = dict(vocab_size=105, d_model=64, n_heads=4, n_layers=2, context_length=64)
    config = TransformerConfig(**sizes, d_ff=256)  # the 2017 block
    for change in (
        dict(norm_first=True),
        dict(norm="rms"),
        dict(feed_forward="swiglu", d_ff=176),
        dict(positional="rotary"),
        dict(n_kv_heads=2),
        dict(bias=False),
    ):
        config = replace(config, **change)
    assert config == replace(LLAMA_STYLE, **sizes, d_ff=176)
