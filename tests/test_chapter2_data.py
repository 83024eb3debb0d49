import pytest
import torch

from tutorlib.data import associative_recall_batch


def test_associative_recall_batch_layout_and_answers() -> None:
    n_pairs, n_keys, n_values = 5, 7, 4
    x, y = associative_recall_batch(
        64, n_pairs, n_keys, n_values, generator=torch.Generator().manual_seed(0)
    )
    assert x.shape == (64, 2 * n_pairs + 1) and y.shape == (64,)
    assert x.dtype == torch.int64 and y.dtype == torch.int64
    keys, values, query = x[:, 0:-1:2], x[:, 1:-1:2], x[:, -1]
    assert (keys < n_keys).all() and (keys >= 0).all()
    assert ((values >= n_keys) & (values < n_keys + n_values)).all()
    for row in range(64):
        assert len(set(keys[row].tolist())) == n_pairs  # keys distinct
        match = (keys[row] == query[row]).nonzero()
        assert len(match) == 1  # the query is one of the keys
        assert y[row] == values[row, match[0, 0]]


def test_associative_recall_batch_is_seeded() -> None:
    a = associative_recall_batch(8, 3, 5, 5, generator=torch.Generator().manual_seed(3))
    b = associative_recall_batch(8, 3, 5, 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((4, 6, 5, 5), ValueError, "n_pairs"),
        ((4, 0, 5, 5), ValueError, "n_pairs"),
        ((4, 2.0, 5, 5), TypeError, "n_pairs"),
        ((0, 2, 5, 5), ValueError, "batch_size"),
    ],
)
def test_associative_recall_batch_rejects_bad_sizes(args, error, match) -> None:
    with pytest.raises(error, match=match):
        associative_recall_batch(*args)
