"""The text-to-text mixture of page 6.3: every task is present and named by its prefix, every
target is the right answer, test inputs are held out, and bad arguments are refused."""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter

import pytest

from tutorlib.data import DATE_FORMATS, TEXT_TO_TEXT_TASKS, format_date, text_to_text_data


def split(source: str) -> tuple[str, str]:
    """("add: 4+5") -> ("add", "4+5")."""
    task, sep, text = source.partition(": ")
    assert sep, f"source {source!r} has no 'task: ' prefix"
    return task, text


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    first = text_to_text_data(200, 50, seed=7)
    assert first == text_to_text_data(200, 50, seed=7)
    other = text_to_text_data(200, 50, seed=8)
    assert first[0] != other[0] and first[1] != other[1]


def test_every_task_present_in_equal_numbers_and_mixed() -> None:
    train, test = text_to_text_data(300, 40, seed=0)
    assert Counter(split(s)[0] for s, _ in train) == {t: 300 for t in TEXT_TO_TEXT_TASKS}
    assert Counter(split(s)[0] for s, _ in test) == {t: 40 for t in TEXT_TO_TEXT_TASKS}
    first_tasks = {split(s)[0] for s, _ in train[:40]}
    assert len(first_tasks) == len(TEXT_TO_TEXT_TASKS), "tasks are shuffled together"


def test_prefix_format() -> None:
    train, test = text_to_text_data(100, 20, seed=1)
    pattern = re.compile(r"^(reverse|sort|double|date): \S")
    for source, target in train + test:
        assert pattern.match(source), source
        assert target and target == target.strip(), (source, target)


def test_targets_are_the_right_answers() -> None:
    train, test = text_to_text_data(500, 100, seed=2)
    styles = list(DATE_FORMATS)
    for source, target in train + test:
        task, text = split(source)
        if task == "reverse":
            assert re.fullmatch(r"[0-9a-z]{3,8}", text) and target == text[::-1]
        elif task == "sort":
            assert re.fullmatch(r"[0-9a-z]{3,8}", text) and target == "".join(sorted(text))
        elif task == "double":
            assert re.fullmatch(r"0|[1-9][0-9]{0,3}", text), text
            assert target == str(2 * int(text))
        else:
            date = dt.date.fromisoformat(target)
            assert any(format_date(date, style) == text for style in styles), (text, target)


def test_reverse_and_sort_really_differ() -> None:
    train, _ = text_to_text_data(200, 0, tasks=("reverse", "sort"), seed=3)
    changed = [t != split(s)[1] for s, t in train]
    assert sum(changed) > 150, "most random words change under reversing and sorting"


def test_test_inputs_are_held_out() -> None:
    train, test = text_to_text_data(5_000, 500, seed=4)
    assert not {s for s, _ in train} & {s for s, _ in test}
    not_dates = [s for s, _ in test if not s.startswith("date: ")]
    assert len(set(not_dates)) == len(not_dates), "reverse, sort and add test inputs are distinct"
    train_dates = {t for s, t in train if s.startswith("date: ")}
    test_dates = {t for s, t in test if s.startswith("date: ")}
    assert test_dates and not train_dates & test_dates, "no test date is seen in training"


def test_a_subset_of_tasks() -> None:
    train, test = text_to_text_data(50, 10, tasks=["double"], seed=5)
    assert len(train) == 50 and len(test) == 10
    assert all(s.startswith("double: ") for s, _ in train + test)
    assert text_to_text_data(0, 0) == ([], [])


def test_sizes_and_styles_are_respected() -> None:
    styles = ["05/03/2021", "5.3.21"]
    train, _ = text_to_text_data(300, 0, seed=6, max_chars=4, max_number=99, date_styles=styles)
    for source, target in train:
        task, text = split(source)
        if task in ("reverse", "sort"):
            assert 3 <= len(text) <= 4
        elif task == "double":
            assert 0 <= int(text) <= 99
        else:
            date = dt.date.fromisoformat(target)
            assert text in {format_date(date, style) for style in styles}


def test_per_task_counts_set_the_mixture() -> None:
    counts = {"reverse": 10, "sort": 20, "double": 30, "date": 40}
    train, test = text_to_text_data(counts, 5, seed=7)
    assert Counter(split(s)[0] for s, _ in train) == counts
    assert Counter(split(s)[0] for s, _ in test) == {t: 5 for t in counts}


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"n_train": -1, "n_test": 5}, ValueError, "n_train must be >= 0"),
        ({"n_train": 5, "n_test": -2}, ValueError, "n_test must be >= 0"),
        ({"n_train": 5.0, "n_test": 5}, TypeError, "n_train must be an int"),
        ({"n_train": 5, "n_test": True}, TypeError, "n_test must be an int"),
        ({"n_train": 5, "n_test": 5, "seed": "0"}, TypeError, "seed must be an int"),
        ({"n_train": 5, "n_test": 5, "tasks": "add"}, TypeError, "sequence of task names"),
        ({"n_train": 5, "n_test": 5, "tasks": ["double", "upper"]}, ValueError, "upper"),
        ({"n_train": 5, "n_test": 5, "tasks": []}, ValueError, "distinct names"),
        ({"n_train": 5, "n_test": 5, "tasks": ["sort", "sort"]}, ValueError, "distinct names"),
        ({"n_train": {"sort": 5}, "n_test": 5}, ValueError, "one count per task"),
        ({"n_train": {"sort": -1}, "n_test": 5, "tasks": ["sort"]}, ValueError, "n_train"),
        ({"n_train": 5, "n_test": 5, "max_chars": 2}, ValueError, "max_chars must be >= 3"),
        ({"n_train": 5, "n_test": 5, "max_number": 5}, ValueError, "max_number must be >= 9"),
        ({"n_train": 5, "n_test": 5, "date_styles": ["%Y"]}, ValueError, "date_styles"),
        ({"n_train": 5, "n_test": 5, "date_styles": "5.3.21"}, ValueError, "date_styles"),
        ({"n_train": 5, "n_test": 100_001}, ValueError, "n_test"),
        ({"n_train": 5, "n_test": 6, "max_number": 9}, ValueError, "more than half"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        text_to_text_data(**kwargs)
