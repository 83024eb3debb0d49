"""The book's text, read the way a careful reader reads it: citations, questions, notation.

Static checks of the pages' markdown and the solution notebooks; nothing is executed.

- Every bibliography entry is cited somewhere, and every citation has an entry.
- Every page ends with its "Check your understanding" questions: 3 to 6, each of a named kind,
  each followed by its answer in a collapsed block; at least one asks the reader to predict and
  then run, one to derive, and one connects to another page.
- The symbols of the notation table (book/intro.md) keep one meaning each: the collisions the
  book once had are patterns that must not come back.
- Every written answer in the solution notebooks carries a mark scheme for its points.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import yaml

from tests.budgets import ROOT, book_pages, toc_files

PAGES = book_pages()
BIB = ROOT / "book" / "references.bib"


def page_id(page: Path) -> str:
    return page.relative_to(ROOT / "book").with_suffix("").as_posix()


def text_sources() -> list[tuple[Path, str]]:
    """Every file whose text the site shows: the book's markdown and the notebooks' cells."""
    sources = [(path, path.read_text()) for path in sorted((ROOT / "book").rglob("*.md"))]
    for folder in ("solutions", "exercises"):
        for path in sorted((ROOT / folder).rglob("*.ipynb")):
            nb = nbformat.read(path, as_version=4)
            sources.append((path, "\n".join(cell.source for cell in nb.cells)))
    return sources


# ---------------------------------------------------------------------------------------------
# Citations

CITE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]+)`")


def cited_keys() -> set[str]:
    keys = set()
    for _, text in text_sources():
        for match in CITE.finditer(text):
            keys.update(key.strip() for key in match.group(1).split(","))
    return keys


def bibliography_keys() -> set[str]:
    return set(re.findall(r"^@\w+\{([^,\s]+),", BIB.read_text(), flags=re.M))


def test_every_citation_has_a_bibliography_entry() -> None:
    missing = cited_keys() - bibliography_keys()
    assert not missing, f"cited but not in book/references.bib: {sorted(missing)}"


def test_every_bibliography_entry_is_cited() -> None:
    unused = bibliography_keys() - cited_keys()
    assert not unused, (
        f"in book/references.bib but cited nowhere (cite or remove): {sorted(unused)}"
    )


# ---------------------------------------------------------------------------------------------
# Check your understanding

KINDS = ("Predict, then run", "Derive", "Connect", "Explain", "Compute", "Critique")
REQUIRED = ("Predict, then run", "Derive", "Connect")
SECTION = "## Check your understanding"
QUESTION = re.compile(r"^\*\*(\d+)\. ([^*]+?)\.\*\* ", flags=re.M)
ANSWER = ":::{admonition} Answer\n:class: dropdown\n"


def questions_section(text: str) -> str:
    """The page's last section, which must be its questions."""
    assert text.count(SECTION) == 1, f"expected one '{SECTION}' section"
    section = text.split(SECTION, 1)[1]
    later = re.findall(r"^#{1,2} .*", section, flags=re.M)
    assert not later, f"'{SECTION}' must be the page's last section; found {later} after it"
    return section


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_page_ends_with_questions_and_collapsed_answers(page: Path) -> None:
    section = questions_section(page.read_text())
    questions = list(QUESTION.finditer(section))
    numbers = [int(q.group(1)) for q in questions]
    assert 3 <= len(questions) <= 6, f"{len(questions)} questions; a page asks 3 to 6"
    assert numbers == list(range(1, len(questions) + 1)), f"questions numbered {numbers}"
    kinds = [q.group(2) for q in questions]
    unknown = sorted(set(kinds) - set(KINDS))
    assert not unknown, f"unknown question kinds {unknown}; use one of {KINDS}"
    lacking = [kind for kind in REQUIRED if kind not in kinds]
    assert not lacking, f"the page has no '{lacking[0]}' question"
    ends = [q.start() for q in questions[1:]] + [len(section)]
    for question, end in zip(questions, ends, strict=True):
        body = section[question.start() : end]
        assert body.count(ANSWER) == 1, (
            f"question {question.group(1)} needs exactly one answer block "
            f"(':::{{admonition}} Answer' then ':class: dropdown') before the next question"
        )
        if question.group(2) == "Connect":
            prompt = body.split(ANSWER, 1)[0]
            assert re.search(r"\]\(\.{0,2}/?[\w./-]+\)", prompt), (
                f"question {question.group(1)} connects to another page: link it in the question"
            )


# ---------------------------------------------------------------------------------------------
# One notation

# The notation table of book/intro.md gives each symbol one meaning. Each pattern below is a way
# the book once reused a letter, with the symbol the table asks for instead.
COLLISIONS = {
    r"\$F\$|\$F \\times|\\times F\$|2CF\b|CF\)": "the feed-forward width is $d_{\\text{ff}}$",
    r"(?:depth|stack of|stacking|layers?) \$L\$|\$L\$ layers|\\sqrt\{L\}|\\cdot L \\cdot": (
        "the number of layers is $n_{\\text{layer}}$, not $L$"
    ),
    r"\$L\(|L\(N|L\(C|L\(D|\$L = |\$L\$ is the": "the loss is $\\mathcal{L}$, not $L$",
    r"6ND|\$D\$ (?:training )?tokens|\bD_c\b|\\alpha_D\b|B/D\^": (
        "training tokens are $\\mathcal{D}$; $D$ is the head width"
    ),
    r"C_\{?\\min|\bC_c\b|\\alpha_C\b|compute \$C\$|\$C \\approx 6": (
        "compute is $\\mathcal{C}$; $C$ is the model width"
    ),
    r"temperature \$T\b|\$T\s*=\s*0?\.\d|\$T \\to|T = 0\.\d": "a temperature is $\\tau$, not $T$",
    r"\$S\$ stages|\(S\s*-\s*1\)|\$M\$ micro": "pipeline stages and micro-batches are $p$ and $m$",
    r"(?:permutation|position table|position embeddings?) \$P\b": (
        "$P$ is the patch size; a permutation is $\\sigma$, the position table $E_{\\text{pos}}$"
    ),
    r"e\^\{S - L\}|\$L\$ \(the log|saved \$L\$": "FlashAttention's statistic is $\\mathrm{LSE}$",
    r"\$L\$ levels|prompt takes the first \$P\$": (
        "grey levels are $G$, a prompt's length $T_{\\text{p}}$"
    ),
}


def prose(text: str) -> str:
    """A page's markdown without its code cells' bodies, keeping their alt texts."""
    return "\n\n".join(prose_paragraphs(text))


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_symbols_keep_the_meaning_of_the_notation_table(page: Path) -> None:
    text = prose(page.read_text())
    found = []
    for pattern, meaning in COLLISIONS.items():
        for match in re.finditer(pattern, text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(f"line {line} of the prose: {match.group(0)!r}: {meaning}")
    assert not found, "\n".join(found)


# tutorlib's docstrings write the table's symbols in plain text.
DOCSTRING_COLLISIONS = {
    r"temperature T\b|logits / T\b|T = 0 is greedy": "a temperature is tau, not T",
    r"\bL layers\b|\b2 \* L \*": "the number of layers is n_layer, not L",
    r"\(F, C\)|\(C, F\)|\bF = 4C": "the feed-forward width is d_ff, not F",
    r"\bS stages\b|\bM micro-batches\b": "pipeline stages and micro-batches are p and m",
}


def test_tutorlib_docstrings_use_the_notation_table() -> None:
    found = []
    for source in sorted((ROOT / "tutorlib").rglob("*.py")):
        docstrings = re.findall(r'"""(.*?)"""', source.read_text(), flags=re.S)
        for pattern, meaning in DOCSTRING_COLLISIONS.items():
            found += [
                f"{source.relative_to(ROOT)}: {m.group(0)!r}: {meaning}"
                for doc in docstrings
                for m in re.finditer(pattern, doc)
            ]
    assert not found, "\n".join(found)


def test_the_notation_table_lists_every_symbol_the_checks_protect() -> None:
    table = (ROOT / "book" / "intro.md").read_text().split("## Notation", 1)[1]
    for symbol in (r"\mathcal{C}", r"\mathcal{D}", r"\mathcal{L}", r"\tau", "n_{\\text{layer}}"):
        assert symbol in table, f"the notation table in book/intro.md lacks {symbol}"


# ---------------------------------------------------------------------------------------------
# Mark schemes


def written_answers() -> list[tuple[str, nbformat.NotebookNode]]:
    answers = []
    for path in sorted((ROOT / "solutions").rglob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            meta = cell.metadata.get("nbgrader", {})
            if cell.cell_type == "markdown" and meta.get("grade") and meta.get("solution"):
                answers.append((f"{path.relative_to(ROOT)}:{meta['grade_id']}", cell))
    return answers


@pytest.mark.parametrize("name, cell", written_answers(), ids=[n for n, _ in written_answers()])
def test_every_written_answer_has_a_mark_scheme(name: str, cell: nbformat.NotebookNode) -> None:
    points = cell.metadata["nbgrader"]["points"]
    scheme = re.search(r"Mark scheme \((\d+) points?\):", cell.source)
    assert scheme, (
        f"{name}: the model answer needs a 'Mark scheme ({points} points): ...' paragraph"
    )
    assert int(scheme.group(1)) == points, f"{name}: the mark scheme is out of {scheme.group(1)}"


# ---------------------------------------------------------------------------------------------
# The suggested syllabus


def test_the_syllabus_places_every_page_and_exercise_once() -> None:
    weeks = yaml.safe_load((ROOT / "book" / "syllabus.yml").read_text())["weeks"]
    assert 10 <= len(weeks) <= 14, f"{len(weeks)} weeks; the issue asks for a 10- to 14-week plan"
    pages = [f"book/{page}" for week in weeks for page in week["pages"]]
    exercises = [f"exercises/{e}" for week in weeks for e in week["exercises"]]
    assert pages == [f"book/{page_id(p)}" for p in PAGES], (
        "the syllabus must list every page once, in the book's order"
    )
    toc_exercises = [f for f in toc_files() if f.startswith("exercises/")]
    assert exercises == toc_exercises, "the syllabus must hand out every exercise notebook once"


# ---------------------------------------------------------------------------------------------
# Numbers in the prose

# A number the prose states must come from somewhere a reader can check: the page's own code
# (glued with {glue:text}, or printed and referred to), a paper cited in the same paragraph, or
# a definition. The scan below takes the prose (with the figures' alt texts), drops math, inline
# code, glued values, links, headings, years and references to pages and sections, and skips
# paragraphs that cite a paper. A number left over passes when it is a literal of the page's code
# (a setting the code uses, or a threshold a hidden assertion checks, which fails the build when
# the claim stops holding) and otherwise must be in NUMBERS_ALLOWED with its reason.
# A number, not part of a name (AVX-512, GPT-2, ResNet-50).
NUMBER = re.compile(
    r"(?<![\w.,])(?<![A-Za-z]-)"
    r"(\d+(?:\.\d+)?(?:\s?%| per ?cent)|\d{1,3}(?:,\d{3})+|\d+\.\d+|[1-9]\d+)"
    r"(?![\w]|\.\d|,\d{3})"
)
CODE_CELL = re.compile(r"^```\{code-cell\}.*?^```", flags=re.S | re.M)
ALT = re.compile(r'alt: "([^"]*)"', flags=re.S)
# Plot styling is not a setting a sentence could describe: 0.4 in the prose is not backed by an
# alpha=0.4 in the code.
STYLING = re.compile(
    r"\b(?:alpha|lw|linewidth|ls|fontsize|figsize|markersize|ms|s|ylim|xlim|bins|width|height"
    r"|pad|wspace|hspace|zorder|size|dpi|rotation|x|y|shrink|fraction|aspect)\s*=\s*"
    r"(?:\([^)]*\)|[\d.]+)"
)
REFERENCE = re.compile(
    r"\b(?:[Pp]ages?|[Ss]ections?|[Cc]hapters?|[Ff]igure|[Tt]able|[Ee]quation)\s+\d+(?:\.\d+)*"
    r"(?:,? (?:and|to|or) \d+(?:\.\d+)*)*"
)
NUMBERS_ALLOWED = yaml.safe_load((ROOT / "tests" / "prose_numbers.yml").read_text())


def prose_paragraphs(text: str) -> list[str]:
    """The page's paragraphs as a reader sees them, alt texts included, code cells left out."""
    text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)
    alts = ALT.findall(text)
    return re.split(r"\n\s*\n", CODE_CELL.sub("\n\n", text) + "\n\n" + "\n\n".join(alts))


def code_literals(text: str) -> str:
    code = " ".join(cell.group(0) for cell in CODE_CELL.finditer(text))
    return STYLING.sub(" ", ALT.sub(" ", code))


def bare_numbers(paragraph: str) -> list[str]:
    """The numbers of a paragraph that nothing on the page backs by itself."""
    if "{cite" in paragraph:
        return []
    for pattern in (
        r"\$\$.*?\$\$",
        r"\$[^$]+\$",  # inline math, which may wrap within its paragraph
        r"\{glue(?::\w+)?\}`[^`]*`",
        r"`[^`]*`",
        r"\]\([^)]*\)",
        r"^#+ .*$",
        r"^:\w+:.*$",  # a directive's options (a table's column widths)
        r"\b(?:19|20)\d\d\b",
        REFERENCE.pattern,
    ):
        paragraph = re.sub(pattern, " ", paragraph, flags=re.S | re.M)
    return [m.group(1) for m in NUMBER.finditer(paragraph)]


def in_code(number: str, code: str) -> bool:
    core = re.sub(r"\s?%| per ?cent", "", number)
    forms = {core, core.replace(",", ""), core.replace(",", "_")}
    return any(re.search(rf"(?<![\w.]){re.escape(f)}(?![\w])", code) for f in forms)


def unbacked_numbers(page: Path) -> list[str]:
    text = page.read_text()
    code = code_literals(text)
    allowed = {str(n) for n in NUMBERS_ALLOWED.get(page_id(page), {})}
    return [
        number
        for paragraph in prose_paragraphs(text)
        for number in bare_numbers(paragraph)
        if not in_code(number, code) and number not in allowed
    ]


def test_the_number_scan_finds_bare_numbers_and_skips_backed_ones() -> None:
    bare = "The accuracy ends above 0.97 after 1,200 steps, and 43.7 % of it is copied."
    assert bare_numbers(bare) == ["0.97", "1,200", "43.7 %"]
    backed = (
        "As page 3.2 (2017) showed with AVX-512, $x = 0.97$ and {glue:text}`acc` and `lr=3e-3`,\n"
        "with a formula $2 \\times\n 64$ that wraps, and [a link](../04_scaling/03_laws)."
    )
    assert bare_numbers(backed) == []
    assert bare_numbers("A cited 2,048 {cite}`brown2020language`.") == []
    assert in_code("1,024", "n = 1024") and in_code("90 %", "share = 90") and not in_code("0.4", "")


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_number_in_the_prose_is_glued_cited_or_defined(page: Path) -> None:
    unbacked = unbacked_numbers(page)
    assert not unbacked, (
        f"numbers in the prose that the page neither computes, asserts, cites nor defines: "
        f"{unbacked}. Glue them from the code ({{glue:text}}), check the claim in a hidden cell, "
        f"cite the source in the paragraph, or add them to tests/prose_numbers.yml with a reason."
    )


def test_every_allowed_number_is_still_in_its_page() -> None:
    stale = []
    for name, numbers in NUMBERS_ALLOWED.items():
        page = ROOT / "book" / f"{name}.md"
        found = {n for p in prose_paragraphs(page.read_text()) for n in bare_numbers(p)}
        stale += [f"{name}: {n}" for n in numbers if str(n) not in found]
    assert not stale, f"tests/prose_numbers.yml allows numbers the pages no longer state: {stale}"
