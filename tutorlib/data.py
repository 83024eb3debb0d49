"""Synthetic tasks generated on the fly: no downloads, seeded, any size.

Book: 1.1 Why transformers; 1.3 The transformer block; 2.5 Associative recall;
3.2 Training the date translator (dates in human formats -> ISO 8601); 6.3 One model, many
tasks: text-to-text (a mixture of tasks named by a prefix).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

__all__ = [
    "DATE_FORMATS",
    "TEXT_TO_TEXT_TASKS",
    "associative_recall_batch",
    "date_translation_data",
    "format_date",
    "recall_batch",
    "seq2seq_batches",
    "sorting_batch",
    "text_to_text_data",
]


def sorting_batch(
    batch_size: int,
    length: int,
    vocab_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Random token sequences and the same tokens sorted: a task where every output position
    depends on every input position.

    Shapes:
        returns inputs (B, T) and targets (B, T), int64 ids in [0, vocab_size)
    """
    if min(batch_size, length, vocab_size) < 1:
        raise ValueError(f"sizes must be positive, got {batch_size=}, {length=}, {vocab_size=}")
    inputs = torch.randint(0, vocab_size, (batch_size, length), generator=generator)
    targets = inputs.sort(dim=1).values
    return inputs.to(device), targets.to(device)


def recall_batch(
    batch_size: int,
    length: int,
    vocab_size: int,
    distance: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Random token sequences, each labelled with the token `distance` places before its last
    one: a task whose answer lies a chosen distance back, to probe long-range dependencies.

    `distance=0` asks for the last token itself; the default, `length - 1`, asks for the first.

    Shapes:
        returns inputs (B, T) and targets (B,), int64 ids in [0, vocab_size)

    Book: 1.1 Why transformers (Learning a long-range dependency).
    """
    for name, value in (("batch_size", batch_size), ("length", length), ("vocab_size", vocab_size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if distance is None:
        distance = length - 1
    if not isinstance(distance, int) or isinstance(distance, bool):
        raise TypeError(f"distance must be an int or None, got {type(distance).__name__}")
    if not 0 <= distance < length:
        raise ValueError(f"distance must lie in [0, {length - 1}] (length - 1), got {distance}")
    inputs = torch.randint(0, vocab_size, (batch_size, length), generator=generator)  # (B, T)
    targets = inputs[:, length - 1 - distance]  # (B,)
    return inputs.to(device), targets.to(device)


def associative_recall_batch(
    batch_size: int,
    n_pairs: int,
    n_keys: int,
    n_values: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Key-value look-up: `k1 v1 k2 v2 ... kn vn q`, labelled with the value stored under the
    query key q, which is one of the n keys.

    Keys are ids 0 .. n_keys - 1, distinct within a sequence; values are ids
    n_keys .. n_keys + n_values - 1, drawn with replacement. The vocabulary therefore has
    V = n_keys + n_values tokens and a sequence T = 2 * n_pairs + 1 of them.

    Shapes:
        returns inputs (B, T) and targets (B,), int64, T = 2 * n_pairs + 1; targets are
        value ids in [n_keys, n_keys + n_values)

    Book: 2.5 A model that is all attention: associative recall.
    """
    sizes = (
        ("batch_size", batch_size),
        ("n_pairs", n_pairs),
        ("n_keys", n_keys),
        ("n_values", n_values),
    )
    for name, value in sizes:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if n_pairs > n_keys:
        raise ValueError(f"keys are distinct, so n_pairs ({n_pairs}) must be <= n_keys ({n_keys})")
    scores = torch.rand(batch_size, n_keys, generator=generator)  # (B, n_keys)
    keys = scores.argsort(dim=1)[:, :n_pairs]  # (B, n): distinct keys per sequence
    values = n_keys + torch.randint(0, n_values, (batch_size, n_pairs), generator=generator)
    which = torch.randint(0, n_pairs, (batch_size,), generator=generator)  # (B,)
    rows = torch.arange(batch_size)
    query = keys[rows, which]  # (B,)
    targets = values[rows, which]  # (B,)
    pairs = torch.stack([keys, values], dim=2).reshape(batch_size, 2 * n_pairs)  # (B, 2n)
    inputs = torch.cat([pairs, query.unsqueeze(1)], dim=1)  # (B, 2n + 1)
    return inputs.to(device), targets.to(device)


# ---- Dates: a translation task with an exact answer ----------------------------------------

MONTHS = (
    "January February March April May June July August September October November December"
).split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_UNITS = (
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
    "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth"
).split()


def _ordinal_word(day: int) -> str:
    """1 -> "first", 21 -> "twenty-first", 30 -> "thirtieth"."""
    if day < 20:
        return _UNITS[day - 1]
    tens = {2: "twenty", 3: "thirty"}[day // 10]
    return {20: "twentieth", 30: "thirtieth"}.get(day, f"{tens}-{_UNITS[day % 10 - 1]}")


def _suffix(day: int) -> str:
    if day in (11, 12, 13):
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


# Every numeric format puts the day before the month, so no date string is ambiguous; two-digit
# years stand for 1950-2049, the range the data is drawn from.
DATE_FORMATS: dict[str, Callable[[dt.date], str]] = {
    "5 March 2021": lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}",
    "Mar 5, '21": lambda d: f"{MONTHS[d.month - 1][:3]} {d.day}, '{d.year % 100:02d}",
    "05/03/2021": lambda d: f"{d.day:02d}/{d.month:02d}/{d.year}",
    "Friday the fifth of March 2021": lambda d: (
        f"{WEEKDAYS[d.weekday()]} the {_ordinal_word(d.day)} of {MONTHS[d.month - 1]} {d.year}"
    ),
    "March 5, 2021": lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",
    "5.3.21": lambda d: f"{d.day}.{d.month}.{d.year % 100:02d}",
    "5th March 2021": lambda d: f"{d.day}{_suffix(d.day)} {MONTHS[d.month - 1]} {d.year}",
    "fri 05 mar 2021": lambda d: (
        f"{WEEKDAYS[d.weekday()][:3].lower()} {d.day:02d} {MONTHS[d.month - 1][:3].lower()} "
        f"{d.year}"
    ),
    "the 5th of March, 2021": lambda d: (
        f"the {d.day}{_suffix(d.day)} of {MONTHS[d.month - 1]}, {d.year}"
    ),
    "05-Mar-2021": lambda d: f"{d.day:02d}-{MONTHS[d.month - 1][:3]}-{d.year}",
    "MARCH 5 2021": lambda d: f"{MONTHS[d.month - 1].upper()} {d.day} {d.year}",
    "2021/03/05": lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",
}

FIRST_DATE, LAST_DATE = dt.date(1950, 1, 1), dt.date(2049, 12, 31)


def format_date(date: dt.date, style: str) -> str:
    """Write `date` in one of the `DATE_FORMATS`, named by how it writes 5 March 2021.

    Book: 3.2 Training the date translator.
    """
    if style not in DATE_FORMATS:
        raise ValueError(f"unknown date style {style!r}; choose one of {list(DATE_FORMATS)}")
    return DATE_FORMATS[style](date)


def date_translation_data(
    n_train: int, n_test: int, seed: int = 0, block_days: int = 90, test_every: int = 10
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(human date, ISO date) pairs, e.g. ("Mar 5, '21", "2021-03-05"), for training and test.

    The days from 1950 to 2049 are cut into blocks of `block_days` consecutive days; every
    `test_every`-th block is held out. Training pairs come from the other blocks only, so a
    test date is one the model has never seen in any format: the test measures whether it
    learnt to read dates, not whether it remembers them. Each pair gets a random style.

    Returns:
        train, test: lists of (source, target) strings; targets are always 10 characters.

    Book: 3.2 Training the date translator.
    """
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if block_days < 1 or test_every < 2:
        raise ValueError("need block_days >= 1 and test_every >= 2")
    rng = random.Random(seed)
    n_days = (LAST_DATE - FIRST_DATE).days + 1
    held_out = [(day // block_days) % test_every == test_every - 1 for day in range(n_days)]
    train_days = [day for day in range(n_days) if not held_out[day]]
    test_days = [day for day in range(n_days) if held_out[day]]
    styles = list(DATE_FORMATS)

    def pairs(days: list[int], n: int) -> list[tuple[str, str]]:
        out = []
        for _ in range(n):
            date = FIRST_DATE + dt.timedelta(days=rng.choice(days))
            out.append((format_date(date, rng.choice(styles)), date.isoformat()))
        return out

    return pairs(train_days, n_train), pairs(test_days, n_test)


def seq2seq_batches(
    src: Tensor,
    src_padding_mask: Tensor,
    tgt: Tensor,
    batch_size: int = 128,
    pool: int = 8,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Callable[[], tuple[tuple[Tensor, Tensor, Tensor], Tensor]]:
    """A `make_batch` for `tutorlib.training.fit` and a `Transformer`: random pairs, grouped
    by source length, with teacher forcing.

    Each refill draws pool * batch_size random pairs, sorts them by source length, cuts them
    into `pool` batches and serves those in random order; each batch is cut to its longest
    source. Far less padding than purely random batches, and the data stays random. `tgt`
    holds `<bos>` ids `<eos>` (right-padded): the decoder reads tgt[:, :-1] and is trained to
    predict tgt[:, 1:].

    Shapes:
        src, src_padding_mask (N, S); tgt (N, T)
        make_batch()  ->  ((src (B, S'), tgt_in (B, T-1), src_padding_mask (B, S')),
                           labels (B, T-1))

    Book: 3.2 Training the date translator.
    """
    if src.shape != src_padding_mask.shape or src.shape[0] != tgt.shape[0]:
        raise ValueError(
            f"src {tuple(src.shape)}, src_padding_mask {tuple(src_padding_mask.shape)} and tgt "
            f"{tuple(tgt.shape)} must hold the same number of pairs"
        )
    if src_padding_mask.dtype != torch.bool:
        raise TypeError(f"src_padding_mask must be bool, True = real; got {src_padding_mask.dtype}")
    if batch_size < 1 or pool < 1:
        raise ValueError(f"need batch_size >= 1 and pool >= 1, got {batch_size}, {pool}")
    lengths = src_padding_mask.sum(1)  # (N,)
    queue: list[Tensor] = []

    def refill() -> Iterator[Tensor]:
        index = torch.randint(0, src.shape[0], (pool * batch_size,), generator=generator)
        index = index[lengths[index].argsort()]  # similar lengths next to each other
        batches = index.split(batch_size)
        return (batches[i] for i in torch.randperm(len(batches), generator=generator))

    def make_batch() -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
        if not queue:
            queue.extend(refill())
        index = queue.pop()
        width = int(lengths[index].max())
        s, r, t = src[index, :width], src_padding_mask[index, :width], tgt[index]
        return (s.to(device), t[:, :-1].to(device), r.to(device)), t[:, 1:].to(device)

    return make_batch


# ---- Text-to-text: several tasks, one model, the task named in the input ---------------------

TEXT_TO_TEXT_TASKS: tuple[str, ...] = ("reverse", "sort", "double", "date")
_SYMBOLS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _text_task_example(
    task: str, rng: random.Random, max_chars: int, max_number: int
) -> tuple[str, str]:
    """One (input, answer) pair of a task other than "date", without the prefix."""
    if task == "double":
        n = rng.randint(0, max_number)
        return str(n), str(2 * n)
    word = "".join(rng.choices(_SYMBOLS, k=rng.randint(3, max_chars)))
    return word, word[::-1] if task == "reverse" else "".join(sorted(word))


def _held_out_examples(
    task: str, n_train: int, n_test: int, rng: random.Random, **sizes: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """n_test distinct test pairs, then n_train training pairs whose inputs are not among them."""
    test: dict[str, str] = {}
    while len(test) < n_test:
        source, target = _text_task_example(task, rng, **sizes)
        test[source] = target
    train = []
    while len(train) < n_train:
        source, target = _text_task_example(task, rng, **sizes)
        if source not in test:
            train.append((source, target))
    return train, list(test.items())


def _check_count(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def text_to_text_data(
    n_train: int | Mapping[str, int],
    n_test: int,
    tasks: Sequence[str] = TEXT_TO_TEXT_TASKS,
    seed: int = 0,
    *,
    max_chars: int = 8,
    max_number: int = 9999,
    date_styles: Sequence[str] | None = None,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """A mixture of small string tasks in T5's text-to-text form: every source starts with the
    task's name and ": ", and that prefix is all that tells the model which task to do.

    The tasks, each a different kind of work:
        reverse: 3 to `max_chars` random digits and lower-case letters, written backwards
                 ("reverse: k4dp" -> "pd4k");
        sort:    the same kind of string, its characters in order, digits first
                 ("sort: k4dp" -> "4dkp");
        double:  a whole number from 0 to `max_number`, times two ("double: 4719" -> "9438");
        date:    a date written in one of `date_styles` (default: all the `DATE_FORMATS` of
                 3.2), in ISO 8601 ("date: Mar 5, '21" -> "2021-03-05").
    `n_train` is the number of training pairs of each task, or a dict giving each task its
    own number (sampling uniformly from the result then mixes the tasks in proportion to
    those numbers). No test input occurs in the training set; the test inputs of reverse,
    sort and double are distinct, and the test dates are the days `date_translation_data`
    holds out, never seen in training in any style.

    Returns:
        train, test: lists of (source, target) strings, the tasks mixed in random order.

    Shapes:
        train: n_train * len(tasks) pairs (sum(n_train.values()) for a dict);
        test: n_test * len(tasks) pairs

    Book: 6.3 One model, many tasks: text-to-text.
    """
    if isinstance(tasks, str) or not isinstance(tasks, Sequence):
        raise TypeError(f"tasks must be a sequence of task names, got {type(tasks).__name__}")
    if not tasks or len(set(tasks)) != len(tasks) or set(tasks) - set(TEXT_TO_TEXT_TASKS):
        raise ValueError(
            f"tasks must be distinct names from {TEXT_TO_TEXT_TASKS}, got {list(tasks)}"
        )
    if isinstance(n_train, Mapping):
        if set(n_train) != set(tasks):
            raise ValueError(
                f"n_train as a dict needs one count per task {list(tasks)}, got {list(n_train)}"
            )
        counts = dict(n_train)
    else:
        counts = {task: n_train for task in tasks}
    for task, count in counts.items():
        _check_count(f"n_train[{task!r}]" if isinstance(n_train, Mapping) else "n_train", count)
    for name, value in (("n_test", n_test), ("seed", seed)):
        _check_count(name, value)
    if n_test > 100_000:
        raise ValueError(f"n_test must be <= 100000 per task, got {n_test}")
    for name, value, least in (("max_chars", max_chars, 3), ("max_number", max_number, 9)):
        _check_count(name, value)
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    n_inputs = {  # how many distinct inputs each task has: at most half may be held out
        "reverse": sum(len(_SYMBOLS) ** k for k in range(3, max_chars + 1)),
        "sort": sum(len(_SYMBOLS) ** k for k in range(3, max_chars + 1)),
        "double": max_number + 1,
    }
    for task in set(tasks) & set(n_inputs):
        if 2 * n_test > n_inputs[task]:
            raise ValueError(
                f"n_test={n_test} is more than half of the {n_inputs[task]} distinct {task} "
                "inputs; raise max_chars or max_number, or lower n_test"
            )
    styles = list(DATE_FORMATS) if date_styles is None else list(date_styles)
    if isinstance(date_styles, str) or not styles or set(styles) - set(DATE_FORMATS):
        raise ValueError(
            f"date_styles must be a non-empty list of DATE_FORMATS names, got {date_styles!r}"
        )
    rng = random.Random(seed)
    train: list[tuple[str, str]] = []
    test: list[tuple[str, str]] = []
    for task in tasks:
        if task == "date":  # the held-out days of 3.2, each written in a random style
            days = date_translation_data(counts[task], n_test, rng.randrange(2**31))
            task_train, task_test = (
                [
                    (format_date(dt.date.fromisoformat(iso), rng.choice(styles)), iso)
                    for _, iso in part
                ]
                for part in days
            )
        else:
            task_train, task_test = _held_out_examples(
                task, counts[task], n_test, rng, max_chars=max_chars, max_number=max_number
            )
        train += [(f"{task}: {source}", target) for source, target in task_train]
        test += [(f"{task}: {source}", target) for source, target in task_test]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test
