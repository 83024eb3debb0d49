"""The date-translation data: every style is readable and unambiguous, and no test date is
ever seen in training."""

from __future__ import annotations

import datetime as dt

import pytest

from tutorlib.data import DATE_FORMATS, date_translation_data, format_date

# How to read each style back with the standard library (None: has words strptime lacks).
STRPTIME = {
    "5 March 2021": "%d %B %Y",
    "Mar 5, '21": "%b %d, '%y",
    "05/03/2021": "%d/%m/%Y",
    "March 5, 2021": "%B %d, %Y",
    "5.3.21": "%d.%m.%y",
    "fri 05 mar 2021": "%a %d %b %Y",
    "05-Mar-2021": "%d-%b-%Y",
    "MARCH 5 2021": "%B %d %Y",
    "2021/03/05": "%Y/%m/%d",
}


def test_each_style_writes_its_own_example() -> None:
    for style in DATE_FORMATS:
        assert format_date(dt.date(2021, 3, 5), style) == style


@pytest.mark.parametrize("style", list(STRPTIME))
def test_styles_read_back_to_the_same_date(style: str) -> None:
    for date in (dt.date(1950, 1, 1), dt.date(1999, 12, 31), dt.date(2049, 11, 23)):
        text = format_date(date, style)
        parsed = dt.datetime.strptime(text, STRPTIME[style]).date()
        if "%y" in STRPTIME[style]:  # strptime's two-digit pivot is 1969; ours is 1950
            short = parsed.year % 100
            parsed = parsed.replace(year=(1900 if short >= 50 else 2000) + short)
        assert parsed == date, (style, text)


def test_words() -> None:
    assert format_date(dt.date(2021, 3, 21), "Friday the fifth of March 2021") == (
        "Sunday the twenty-first of March 2021"
    )
    assert format_date(dt.date(2021, 3, 30), "Friday the fifth of March 2021").split()[2] == (
        "thirtieth"
    )
    assert format_date(dt.date(2021, 3, 12), "5th March 2021").startswith("12th")
    assert format_date(dt.date(2021, 3, 22), "5th March 2021").startswith("22nd")


def test_split_is_disjoint_deterministic_and_iso() -> None:
    train, test = date_translation_data(20_000, 2_000, seed=3)
    assert (train, test) == date_translation_data(20_000, 2_000, seed=3)
    assert train != date_translation_data(20_000, 2_000, seed=4)[0]
    train_dates = {t for _, t in train}
    test_dates = {t for _, t in test}
    assert not train_dates & test_dates
    assert all(dt.date.fromisoformat(t).isoformat() == t for t in train_dates | test_dates)
    assert len({s for s, _ in test}) > 1_900, "test pairs are drawn across many days"
    years = {int(t[:4]) for t in test_dates}
    assert min(years) < 1960 and max(years) > 2040, "held-out blocks span the whole range"


def test_errors() -> None:
    with pytest.raises(ValueError, match="unknown date style"):
        format_date(dt.date(2021, 3, 5), "%Y")
    with pytest.raises(ValueError, match="n_train"):
        date_translation_data(-1, 10)


def test_seq2seq_batches_group_by_length_and_shift_targets() -> None:
    import torch

    from tutorlib.data import seq2seq_batches

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 30, (500,), generator=g)
    real = torch.arange(30) < lengths[:, None]  # (N, 30)
    src = torch.where(real, 7, 0)
    tgt = torch.randint(3, 9, (500, 6), generator=g)
    make_batch = seq2seq_batches(src, real, tgt, batch_size=16, pool=8, generator=g)
    widths, spreads = [], []
    for _ in range(16):
        (s, t_in, r), labels = make_batch()
        assert s.shape[0] == 16 and torch.equal(t_in[:, 1:], labels[:, :-1])
        assert int(r.sum(1).max()) == s.shape[1], "cut to the longest source"
        widths.append(s.shape[1])
        spreads.append(int(r.sum(1).max() - r.sum(1).min()))
    assert min(widths) < 15 < max(widths), "batches of short and of long sources"
    assert sum(spreads) / len(spreads) < 10, "a batch holds sources of similar length"
    with pytest.raises(ValueError, match="same number of pairs"):
        seq2seq_batches(src, real, tgt[:10])
