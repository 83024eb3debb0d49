import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from tutorlib.data import recall_batch
from tutorlib.plotting import heatmap, plot_curves, smooth
from tutorlib.training import fit, sequence_cross_entropy


def test_recall_batch_labels_the_token_distance_back() -> None:
    x, y = recall_batch(5, 9, 7, distance=3, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 9) and y.shape == (5,)
    assert torch.equal(y, x[:, 9 - 1 - 3])
    x, y = recall_batch(5, 9, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y, x[:, 0])  # default: the first token


@pytest.mark.parametrize(
    "kwargs, error",
    [({"distance": 9}, ValueError), ({"distance": -1}, ValueError), ({"distance": 1.0}, TypeError)],
)
def test_recall_batch_rejects_bad_distance(kwargs, error) -> None:
    with pytest.raises(error, match="distance"):
        recall_batch(2, 9, 7, **kwargs)


def test_sequence_cross_entropy_checks_shapes() -> None:
    logits, targets = torch.randn(2, 3, 5), torch.randint(0, 5, (2, 3))
    expected = torch.nn.functional.cross_entropy(logits.reshape(6, 5), targets.reshape(6))
    torch.testing.assert_close(sequence_cross_entropy(logits, targets), expected)
    with pytest.raises(ValueError, match="vocabulary dimension"):
        sequence_cross_entropy(logits, targets[:, :2])


def test_fit_warms_up_and_clips() -> None:
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    history = fit(
        model, lambda: (x, y), steps=5, lr=1.0, warmup_steps=4, clip_norm=1e-3, desc="test"
    )
    assert len(history["loss"]) == 5
    with pytest.raises(ValueError, match="steps"):
        fit(model, lambda: (x, y), steps=0, lr=1e-3)


def test_smooth_is_a_trailing_mean() -> None:
    np.testing.assert_allclose(smooth([1, 3, 5, 7], window=2), [1, 2, 4, 6])
    np.testing.assert_allclose(smooth([1.0, 2.0], window=1), [1.0, 2.0])


def test_plot_helpers_draw_and_check() -> None:
    fig, (a, b) = plt.subplots(1, 2)
    heatmap(torch.eye(3), ax=a, title="eye")
    assert a.get_title() == "eye" and len(a.images) == 1
    plot_curves({"one": [3, 2, 1], "two": [1, 2, 3]}, ax=b, logy=True)
    assert len(b.lines) == 2 and b.get_yscale() == "log"
    with pytest.raises(ValueError, match="2-D"):
        heatmap(np.zeros((2, 2, 2)), ax=a)
    plt.close(fig)
