"""The launch copies of the book's pages: `book/<chapter>/<page>.ipynb` beside each `.md` page.

    python -m tests.notebooks           # write them (make notebooks)
    python -m tests.notebooks --check   # exit 1, naming them, when any is missing or stale

The pages are MyST-NB markdown, which Colab cannot open and JupyterLab opens as a text file.
The site's launch buttons (Binder, Colab, JupyterHub) open these notebooks instead: the page's
cells, with no outputs, after one cell that installs tutorlib when the notebook runs on Colab
(Binder and a course's JupyterHub have it already). The site's build leaves them out
(`exclude_patterns` in _config.yml); tests/test_site.py checks they are current.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import yaml

from tests.budgets import ROOT, book_pages, read

COLAB_CELL = """\
# Generated from {page} by `make notebooks`: edit the page, not this notebook.
# On Google Colab, this cell installs tutorlib from the course's repository; anywhere else
# (Binder, a JupyterHub, your own clone) it does nothing.
import sys

if "google.colab" in sys.modules:
    import subprocess

    package = "tutorlib[pretrained,speech] @ git+{url}@{branch}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], check=True)
"""


def repository() -> tuple[str, str]:
    """The repository URL and branch from _config.yml."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    return config["url"], config.get("branch", "main")


def launch_copy(page: Path) -> str:
    """The launch notebook of a page, as the text of an .ipynb file."""
    url, branch = repository()
    nb = read(page)
    source = COLAB_CELL.format(page=page.relative_to(ROOT).as_posix(), url=url, branch=branch)
    setup = nbformat.v4.new_code_cell(source, metadata={"tags": ["colab-setup"]})
    nb.cells.insert(0, setup)
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i}"  # stable ids: the file changes only when the page does
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    nb.nbformat, nb.nbformat_minor = 4, 5
    return nbformat.writes(nb) + "\n"


def orphans() -> list[Path]:
    """Notebooks in book/ that are not the launch copy of a page."""
    copies = {page.with_suffix(".ipynb") for page in book_pages()}
    return sorted(p for p in (ROOT / "book").rglob("*.ipynb") if p not in copies)


def stale() -> list[Path]:
    """The launch copies that are missing or differ from their pages, and orphans."""
    out = []
    for page in book_pages():
        target = page.with_suffix(".ipynb")
        if not target.exists() or target.read_text() != launch_copy(page):
            out.append(target)
    return out + orphans()


def main(argv: list[str]) -> None:
    if "--check" in argv:
        names = [p.relative_to(ROOT).as_posix() for p in stale()]
        if names:
            raise SystemExit("stale launch notebooks (run make notebooks): " + ", ".join(names))
        return
    for page in book_pages():
        page.with_suffix(".ipynb").write_text(launch_copy(page))
    for orphan in orphans():
        orphan.unlink()


if __name__ == "__main__":
    main(sys.argv[1:])
