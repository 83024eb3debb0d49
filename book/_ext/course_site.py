"""What the course site adds to Jupyter Book (loaded through `_config.yml`'s local_extensions).

- A compute note under the title of every executed page: how long it ran, and its peak memory,
  on a 2-core CPU with no GPU, as `make budgets` measured it (`book/budgets.json`).
- The `course-overview` directive: the landing page's table of chapters (pages, words and an
  estimated reading time, exercise notebooks and their points, compute time).
- The Solutions appendix shows the instructor notebooks from `solutions/` under titles that
  start with "Solutions" (their sources say "Exercises", as the students' copies do).
- Inline code that names a documented tutorlib object, such as ``tutorlib.attention.
  scaled_dot_product_attention``, links to its entry in the API reference.
- Long text outputs (more than `LONG_OUTPUT_LINES` lines) are collapsed behind a button.
- A script that two extensions add twice to a page (sphinx-thebe's configuration, which
  throws "Identifier 'THEBE_JS_URL' has already been declared" in the browser) is kept once.
- At the end of the build, a table of every executed page in `_build/execution-times.txt`:
  seconds, and whether it ran in this build or came from the execution cache.
- A cell's printed lines are merged for display (`nb_merge_streams`) without changing the
  notebook that the page's download button serves: MyST-NB merges them into the cell's first
  output in place, so the downloaded notebook repeated every line printed after a progress bar
  or a figure.
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
from pathlib import Path

import yaml
from docutils import nodes
from docutils.parsers.rst import Directive
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

LONG_OUTPUT_LINES = 40
READING_WORDS_PER_MINUTE = 150  # an assumption for technical prose, stated on the landing page
CODE_CELL = re.compile(r"^```\{code-cell\}.*?^```", re.S | re.M)
FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.S)


def budgets(srcdir: Path) -> dict:
    """book/budgets.json: {"cores", "machine", "notebooks": {path: {"seconds", "peak_mb"}}}."""
    return json.loads((srcdir / "book" / "budgets.json").read_text())


def source_key(app: Sphinx, docname: str) -> str:
    """The page's source path relative to the repository root, as budgets.json names it."""
    return Path(app.env.doc2path(docname)).relative_to(app.srcdir).as_posix()


def compute_note(app: Sphinx, doctree: nodes.document) -> None:
    """Insert the measured compute time under the page's title (doctree-read)."""
    docname = app.env.docname
    key = source_key(app, docname)
    data = app.env.course_budgets
    if key.startswith("exercises/"):
        key, what = "solutions/" + key.removeprefix("exercises/"), "Once solved, runs in"
    else:
        what = "Runs in"
    measured = data["notebooks"].get(key)
    if measured is None:
        return
    text = (
        f"{what} {measured['seconds']} s on {data['cores']} CPU cores with no GPU "
        f"(peak memory {measured['peak_mb']} MB), as measured by make budgets."
    )
    note = nodes.paragraph(text, "", classes=["compute-note"])
    note += nodes.Text(text)
    section = next(iter(doctree.findall(nodes.section)), None)
    if section is None or not isinstance(section[0], nodes.title):
        return
    section.insert(1, note)


def solutions_titles(app: Sphinx, doctree: nodes.document) -> None:
    """Title the Solutions appendix's notebooks "Solutions ..." (doctree-read, before titles are
    collected for the navigation)."""
    if not app.env.docname.startswith("solutions/"):
        return
    section = next(iter(doctree.findall(nodes.section)), None)
    if section is None:
        return
    title = section[0]
    text = title.astext()
    if text.startswith("Exercises"):
        title.children = [nodes.Text("Solutions" + text.removeprefix("Exercises"))]


class CourseOverview(Directive):
    """A table of the chapters, built from _toc.yml, the pages, the solutions and budgets.json."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        env = self.state.document.settings.env
        root = Path(env.srcdir)
        toc = yaml.safe_load((root / "_toc.yml").read_text())
        notebooks = env.course_budgets["notebooks"]
        header = ["Chapter", "Pages", "Words", "Reading", "Exercises (points)", "Compute"]
        rows = []
        for part in toc["parts"]:
            if not part["caption"].startswith("Chapter"):
                continue
            files = [e["file"] for c in part["chapters"] for e in [c, *c.get("sections", [])]]
            pages = [f for f in files if f.startswith("book/") and not f.endswith("/index")]
            exercises = [f for f in files if f.startswith("exercises/")]
            words = sum(prose_words(root / f"{f}.md") for f in files if f.startswith("book/"))
            points = sum(notebook_points(root / f"solutions/{e[10:]}.ipynb") for e in exercises)
            seconds = sum(notebooks.get(f"{f}.md", {}).get("seconds", 0) for f in pages)
            seconds += sum(
                notebooks.get(f"solutions/{e[10:]}.ipynb", {})["seconds"] for e in exercises
            )
            rows.append(
                [
                    part["caption"].removeprefix("Chapter "),
                    str(len(pages)),
                    f"{words:,}",
                    f"{round(words / READING_WORDS_PER_MINUTE / 60, 1)} h",
                    f"{len(exercises)} ({points})",
                    f"{round(seconds / 60)} min",
                ]
            )
        return [table(header, rows)]


class CourseSyllabus(Directive):
    """The suggested syllabus: book/syllabus.yml's weeks, with each week's pages (linked), its
    exercise notebooks and their points, its written answers, and the reading and compute the
    week needs, computed from the pages and budgets.json as the overview's columns are."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        env = self.state.document.settings.env
        root = Path(env.srcdir)
        weeks = yaml.safe_load((root / "book" / "syllabus.yml").read_text())["weeks"]
        notebooks = env.course_budgets["notebooks"]
        header = [
            "Week",
            "Topic",
            "Pages",
            "Exercises (points)",
            "Written answers",
            "Reading",
            "Compute",
        ]
        env.note_dependency(str(root / "book" / "syllabus.yml"))
        rows = []
        for number, week in enumerate(weeks, start=1):
            pages = [f"book/{page}" for page in week["pages"]]
            solutions = [root / f"solutions/{e}.ipynb" for e in week["exercises"]]
            words = sum(prose_words(root / f"{page}.md") for page in pages)
            seconds = sum(notebooks[f"{page}.md"]["seconds"] for page in pages)
            seconds += sum(notebooks[s.relative_to(root).as_posix()]["seconds"] for s in solutions)
            exercises = ", ".join(f"{s.stem} ({notebook_points(s):g})" for s in solutions)
            written = sum(len(written_answers(s)) for s in solutions)
            topic = week["topic"] + (" (optional)" if week.get("optional") else "")
            links = nodes.paragraph()
            for i, page in enumerate(pages):
                chapter, name = page.split("/")[1:]
                label = f"{int(chapter[:2])}.{int(name[:2])}"
                ref = addnodes.pending_xref(
                    "", refdomain="std", reftype="doc", reftarget=f"/{page}", refexplicit=True
                )
                ref += nodes.inline(text=label)
                links += [nodes.Text(", ")] if i else []
                links += ref
            cells = [
                str(number),
                topic,
                links,
                exercises or "none",
                str(written),
                f"{round(words / READING_WORDS_PER_MINUTE / 60, 1)} h",
                f"{round(seconds / 60)} min",
            ]
            rows.append(cells)
        return [table(header, rows)]


def written_answers(path: Path) -> list[str]:
    """The grade ids of a nbgrader notebook's written (hand-graded markdown) answers."""
    cells = json.loads(path.read_text())["cells"]
    return [
        c["metadata"]["nbgrader"]["grade_id"]
        for c in cells
        if c["cell_type"] == "markdown" and c.get("metadata", {}).get("nbgrader", {}).get("grade")
    ]


def prose_words(path: Path) -> int:
    """Words of a page's text, its code cells and front matter left out."""
    text = CODE_CELL.sub("", FRONT_MATTER.sub("", path.read_text()))
    return len(re.findall(r"[A-Za-z][\w'-]*", text))


def notebook_points(path: Path) -> float:
    """The points of a nbgrader notebook's graded cells."""
    cells = json.loads(path.read_text())["cells"]
    meta = [c.get("metadata", {}).get("nbgrader", {}) for c in cells]
    return sum(m.get("points", 0) for m in meta if m.get("grade"))


def table(header: list[str], rows: list[list[str | nodes.Node]]) -> nodes.table:
    tgroup = nodes.tgroup(cols=len(header))
    tgroup += [nodes.colspec(colwidth=1) for _ in header]

    def row(cells: list[str | nodes.Node]) -> nodes.row:
        r = nodes.row()
        r += [
            nodes.entry("", c if isinstance(c, nodes.Node) else nodes.paragraph(text=c))
            for c in cells
        ]
        return r

    tgroup += nodes.thead("", row(header))
    tgroup += nodes.tbody("", *[row(r) for r in rows])
    return nodes.table("", tgroup, classes=["course-overview"])


def link_tutorlib_names(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    """Turn ``tutorlib.module.name`` in inline code into a link to the API reference
    (doctree-resolved, once every object's page is known)."""
    objects = app.env.get_domain("py").objects
    for literal in list(doctree.findall(nodes.literal)):
        name = literal.astext().removesuffix("()")
        if not name.startswith("tutorlib.") or name not in objects:
            continue
        if isinstance(literal.parent, (nodes.reference, nodes.title)):
            continue
        entry = objects[name]
        uri = app.builder.get_relative_uri(docname, entry.docname) + "#" + entry.node_id
        literal.replace_self(nodes.reference("", "", literal.deepcopy(), refuri=uri, internal=True))


def plain_docstring(app, what, name, obj, options, lines: list[str]) -> None:
    """Show tutorlib's docstrings as they read in the source (autodoc-process-docstring).

    They are plain text, not reStructuredText: an indented block after a line (shapes,
    formulas, lists of options) becomes a literal block, and the characters that are markup in
    reStructuredText are escaped elsewhere. Single backquotes are inline code (`default_role`).
    """
    out: list[str] = []
    block = None  # the indentation of the line that opened the current literal block
    for i, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        if block is not None:
            if not line.strip() or indent > block:
                out.append(line)
                continue
            block = None
            out.append("")
        line = escape_markup(line)
        following = next((x for x in lines[i + 1 :] if x.strip()), "")
        item = 2 if line.lstrip().startswith("- ") else 0  # a list item's own continuation
        if line.strip() and len(following) - len(following.lstrip()) > indent + item:
            out += [line + (":" if line.endswith(":") else " ::"), ""]
            block = indent
        else:
            out.append(line)
    lines[:] = out


def escape_markup(line: str) -> str:
    """Escape `*`, `|` and a word's trailing `_` outside inline code, and let inline code be
    followed by a letter (`EncoderLayer`s)."""
    parts = line.split("`")
    parts[::2] = [re.sub(r"([*|])", r"\\\1", p) for p in parts[::2]]
    parts[::2] = [re.sub(r"(\w)_(?=\W|$)", r"\1\\_", p) for p in parts[::2]]
    parts[2::2] = [re.sub(r"^(?=\w)", r"\\ ", p) for p in parts[2::2]]
    return "`".join(parts)


def launch_substitutions(app: Sphinx, config) -> None:
    """`{{ binder_link }}` for the landing page, from the repository set in _config.yml
    (config-inited), so that the URL is written in one place."""
    theme = config.html_theme_options
    url = theme["repository_url"].removesuffix("/").removesuffix(".git")
    org_repo = url.split("github.com/", 1)[1]
    branch = theme.get("repository_branch", "main")
    binder = theme["launch_buttons"]["binderhub_url"].rstrip("/")
    first = "book/01_foundations/01_why_transformers.ipynb"
    link = f"[Binder]({binder}/v2/gh/{org_repo}/{branch}?urlpath=lab/tree/{first})"
    config.myst_substitutions = {**config.myst_substitutions, "binder_link": link}


def collapse_long_outputs(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    """Collapse a cell's text output of more than LONG_OUTPUT_LINES lines (sphinx-togglebutton
    turns an element of class "toggle" into a collapsed block with a button)."""
    for output in doctree.findall(nodes.container):
        if "cell_output" not in output.get("classes", []):
            continue
        lines = sum(b.astext().count("\n") + 1 for b in output.findall(nodes.literal_block))
        if lines > LONG_OUTPUT_LINES:
            output["classes"].append("toggle")


def scripts_once(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Drop repeated scripts from a page (html-page-context)."""
    seen, kept = set(), []
    for script in context.get("script_files", []):
        # The same inline script comes once with filename None and once with "".
        key = (script.filename or "", script.priority, tuple(sorted(script.attributes.items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


def remember_start(app: Sphinx) -> None:
    app.env.course_budgets = budgets(Path(app.srcdir))
    # `make book` executes the pages into the cache just before the build and says when it began
    # (tests/budgets.py, execute_pages), so that those pages count as executed in this build.
    app.env.course_build_started = float(os.environ.get("COURSE_BUILD_STARTED", time.time()))


def execution_table(app: Sphinx, exception: Exception | None) -> None:
    """Write each executed page's time, and whether it ran now or came from the cache, to
    `_build/execution-times.txt` (build-finished; `make book` prints it last)."""
    if exception is not None:
        return
    started = getattr(app.env, "course_build_started", 0.0)
    rows = []
    for docname, meta in sorted(getattr(app.env, "nb_metadata", {}).items()):
        data = meta.get("exec_data")
        if not data or data.get("runtime") is None:
            continue
        how = "executed now" if data["mtime"] >= started else "from the cache"
        rows.append((docname, data["runtime"], how))
    target = Path(app.outdir).parent / "execution-times.txt"
    target.write_text(format_times(rows))
    logger.info(f"execution time of each page: {target}")


def format_times(rows: list[tuple[str, float, str]]) -> str:
    """A table of (page, seconds, how) rows, with the total executed in this build."""
    if not rows:
        return "No page was executed or taken from the cache.\n"
    width = max(len(d) for d, _, _ in rows)
    lines = ["Execution time of each page (s); a cached page shows the run that made its cache:"]
    lines += [f"  {d:<{width}}  {s:6.1f}  {how}" for d, s, how in rows]
    now = [s for _, s, how in rows if how == "executed now"]
    lines.append(f"  {len(rows)} pages, {len(now)} executed in this build ({sum(now):.0f} s)")
    return "\n".join(lines) + "\n"


def merge_streams_on_copies() -> None:
    """Make MyST-NB's `coalesce_streams` merge copies of a cell's outputs, not the outputs
    themselves: it appends every later stream to the first stream object, and the executed
    notebook written for download (`_sources/**/*.ipynb`) kept both, so that each line printed
    after a progress bar or a figure appeared twice there."""
    from myst_nb.core import render

    original = getattr(render.coalesce_streams, "__wrapped__", render.coalesce_streams)

    def coalesce_copies(outputs: list) -> list:
        return original([copy.deepcopy(output) for output in outputs])

    coalesce_copies.__wrapped__ = original  # type: ignore[attr-defined]
    render.coalesce_streams = coalesce_copies


def setup(app: Sphinx) -> dict:
    merge_streams_on_copies()
    app.setup_extension("sphinx.ext.autodoc")  # for autodoc-process-docstring
    app.connect("config-inited", launch_substitutions)
    app.connect("builder-inited", remember_start)
    app.connect("doctree-read", compute_note)
    app.connect("doctree-read", solutions_titles, priority=400)
    app.connect("doctree-resolved", link_tutorlib_names)
    app.connect("doctree-resolved", collapse_long_outputs)
    app.connect("html-page-context", scripts_once, priority=900)
    app.connect("build-finished", execution_table)
    app.connect("autodoc-process-docstring", plain_docstring)
    app.add_directive("course-overview", CourseOverview)
    app.add_directive("course-syllabus", CourseSyllabus)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
