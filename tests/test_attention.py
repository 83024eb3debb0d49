import pytest
import torch

from tutorlib.attention import causal_mask, padding_mask


def test_causal_mask() -> None:
    mask = causal_mask(3)
    expected = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    with pytest.raises(ValueError, match="positive int"):
        causal_mask(0)


def test_padding_mask() -> None:
    mask = padding_mask(torch.tensor([2, 0, 3]), 3)
    expected = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        padding_mask(torch.tensor([4]), 3)
    with pytest.raises(ValueError, match="integers"):
        padding_mask(torch.tensor([1.0]), 3)
