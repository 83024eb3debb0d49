"""tutorlib.corpus: the standard-library docstring corpus, its disk cache and the package task."""

from __future__ import annotations

import builtins
import json
import shutil
from collections import Counter

import pytest

from tutorlib import corpus
from tutorlib.corpus import (
    DEFAULT_PACKAGES,
    STDLIB_MODULES,
    Docstring,
    package_classification,
    stdlib_docstrings,
)


@pytest.fixture(scope="module")
def docstrings() -> list[Docstring]:
    return stdlib_docstrings()


@pytest.fixture(scope="module")
def task() -> corpus.PackageClassification:
    return package_classification()


# --- The corpus -------------------------------------------------------------------------------


def test_module_list_is_fixed_and_sane() -> None:
    assert isinstance(STDLIB_MODULES, tuple)
    assert 60 <= len(STDLIB_MODULES) <= 120
    assert len(set(STDLIB_MODULES)) == len(STDLIB_MODULES)
    banned = {"this", "antigravity", "tkinter", "idlelib", "turtle", "test", "webbrowser"}
    assert not banned & set(STDLIB_MODULES)


def test_corpus_size_is_in_the_expected_range(docstrings) -> None:
    text = corpus.corpus_text()
    assert 1_000_000 <= len(text) <= 1_500_000, len(text)
    assert 4_000 <= len(docstrings) <= 8_000, len(docstrings)
    assert text == "\n\n".join(d.text for d in docstrings)
    # every listed module contributes: none is missing on this install
    assert set(STDLIB_MODULES) - {d.package for d in docstrings} == set()


def test_docstrings_are_cleaned_unique_and_long_enough(docstrings) -> None:
    texts = [d.text for d in docstrings]
    assert len(set(texts)) == len(texts)
    assert min(len(t) for t in texts) >= 20
    assert all(t == t.strip() for t in texts)
    for d in docstrings:
        assert d.qualname == d.package or d.qualname.startswith(d.package + ".")


def test_docstrings_come_from_where_objects_are_defined(docstrings) -> None:
    names = {d.qualname for d in docstrings}
    assert "json.decoder.JSONDecoder.decode" in names
    assert "json.JSONDecoder" not in names  # json re-exports json.decoder.JSONDecoder
    assert "collections.OrderedDict" in names or "collections.Counter" in names
    assert len(names) == len(docstrings)


def test_building_twice_gives_the_same_docstrings(docstrings) -> None:
    assert corpus._build() == docstrings  # deterministic, and the cache holds the same


def test_the_corpus_does_not_depend_on_the_calling_process(docstrings, monkeypatch) -> None:
    # A Jupyter kernel replaces builtins.input with its own function: collected in the kernel,
    # the corpus lost builtins.input's docstring and every model trained on it changed.
    def input(prompt: str = "") -> str:
        """A kernel's replacement for the built-in input(), defined outside builtins."""
        return ""

    monkeypatch.setattr(builtins, "input", input)
    assert "builtins.input" not in {d.qualname for d in corpus._collect()}  # in-process
    assert corpus._build() == docstrings  # a fresh interpreter
    assert "builtins.input" in {d.qualname for d in docstrings}


def test_a_failing_collection_says_so(monkeypatch) -> None:
    monkeypatch.setattr(corpus.sys, "executable", shutil.which("false"))  # runs, exits 1
    with pytest.raises(RuntimeError, match="collecting the standard-library docstrings"):
        corpus._build()


def test_stdlib_docstrings_returns_a_fresh_list(docstrings) -> None:
    first = stdlib_docstrings()
    first.clear()
    assert stdlib_docstrings() == docstrings


# --- The disk cache ---------------------------------------------------------------------------

FAKE = [Docstring("json", "json.loads", "Deserialize a str to a Python object.")]


@pytest.fixture
def fake_build(monkeypatch, tmp_path) -> list[int]:
    """Point the cache at tmp_path and count the builds (a fake one-docstring build)."""
    calls: list[int] = []

    def build() -> list[Docstring]:
        calls.append(1)
        return list(FAKE)

    monkeypatch.setenv("TUTORLIB_CACHE", str(tmp_path))
    monkeypatch.setattr(corpus, "_build", build)
    corpus._load.cache_clear()
    yield calls
    corpus._load.cache_clear()


def test_cache_file_honours_tutorlib_cache(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TUTORLIB_CACHE", str(tmp_path))
    path = corpus.cache_file()
    assert path.parent == tmp_path
    assert corpus.platform.python_version() in path.name
    monkeypatch.delenv("TUTORLIB_CACHE")
    assert corpus.cache_file().parent.name == "tutorlib"


def test_cache_miss_builds_and_writes_then_disk_hit_reads(fake_build, tmp_path) -> None:
    assert stdlib_docstrings() == FAKE
    assert len(fake_build) == 1
    assert corpus.cache_file().exists()
    assert stdlib_docstrings() == FAKE  # in-process hit
    assert len(fake_build) == 1
    corpus._load.cache_clear()
    assert stdlib_docstrings() == FAKE  # disk hit
    assert len(fake_build) == 1


def _corrupt_contents() -> dict[str, bytes]:
    key = corpus._cache_key()
    return {
        "truncated": b'{"key": "py',
        "a list": b"[1, 2]",
        "other key": json.dumps({"key": "py0.0", "docstrings": [["a", "b", "c"]]}).encode(),
        "no docstrings": json.dumps({"key": key, "docstrings": []}).encode(),
        "wrong row shape": json.dumps({"key": key, "docstrings": [["only", "two"]]}).encode(),
        "not utf-8": b"\xff\xfe\x00garbage",
    }


@pytest.mark.parametrize("kind", list(_corrupt_contents()))
def test_corrupt_cache_is_rebuilt(fake_build, kind) -> None:
    path = corpus.cache_file()
    path.write_bytes(_corrupt_contents()[kind])
    assert stdlib_docstrings() == FAKE
    assert len(fake_build) == 1
    assert corpus._read_cache(path) == FAKE  # rewritten with good content


# --- The package-classification task ----------------------------------------------------------


def test_package_classification_classes_are_balanced_enough(task) -> None:
    assert task.classes == DEFAULT_PACKAGES
    assert 5 <= len(task.classes) <= 8
    train, test = Counter(task.train_labels), Counter(task.test_labels)
    assert set(train) == set(test) == set(range(len(task.classes)))
    for label in range(len(task.classes)):
        total = train[label] + test[label]
        assert total >= 150, (task.classes[label], total)
        assert abs(test[label] / total - 0.2) < 0.01  # stratified 80/20
    assert 1_000 <= len(task.train_texts) + len(task.test_texts) <= 5_000


def test_package_classification_splits_are_disjoint_and_labelled(task, docstrings) -> None:
    assert len(task.train_texts) == len(task.train_labels)
    assert len(task.test_texts) == len(task.test_labels)
    assert not set(task.train_texts) & set(task.test_texts)
    assert max(len(t) for t in task.train_texts + task.test_texts) <= 512
    assert min(len(t) for t in task.train_texts + task.test_texts) >= 30
    package_of: dict[str, str] = {}
    for d in docstrings:
        package_of.setdefault(d.text[:512], d.package)
    for text, label in zip(task.test_texts, task.test_labels, strict=True):
        assert package_of[text] == task.classes[label]


def test_package_classification_is_deterministic_and_seeded(task) -> None:
    again = package_classification()
    assert again == task
    other = package_classification(seed=1)
    assert other.test_texts != task.test_texts
    assert sorted(other.test_labels) == sorted(task.test_labels)  # same class sizes


def test_package_classification_options() -> None:
    small = package_classification(("json", "csv"), min_chars=20, max_chars=50, test_fraction=0.5)
    assert small.classes == ("json", "csv")
    assert max(len(t) for t in small.train_texts) <= 50
    assert set(small.test_labels) == {0, 1}


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"packages": ("email", "nosuchpackage")}, ValueError, "unknown package"),
        ({"packages": ("email",)}, ValueError, "at least two"),
        ({"packages": ("email", "email")}, ValueError, "distinct"),
        ({"packages": "email"}, TypeError, "sequence of names"),
        ({"min_chars": 600, "max_chars": 500}, ValueError, "min_chars <= max_chars"),
        ({"min_chars": 1.5}, TypeError, "min_chars"),
        ({"test_fraction": 1.0}, ValueError, "test_fraction"),
        ({"min_chars": 10**6, "max_chars": 10**6}, ValueError, "needs at least 2"),
    ],
)
def test_package_classification_errors(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        package_classification(**kwargs)
