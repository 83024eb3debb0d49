import pytest
import torch

from tutorlib.embeddings import apply_rotary, rotary_angles, sinusoidal_encoding


def _rotate(x: torch.Tensor, offset: int = 0) -> torch.Tensor:
    cos, sin = rotary_angles(x.shape[-2], x.shape[-1], offset=offset, dtype=x.dtype)
    return apply_rotary(x, cos, sin)


def test_rotary_angles_shapes_and_values() -> None:
    cos, sin = rotary_angles(5, 8)
    assert cos.shape == sin.shape == (5, 4) and cos.dtype == torch.float32
    torch.testing.assert_close(cos[0], torch.ones(4))  # position 0: no rotation
    torch.testing.assert_close(sin[0], torch.zeros(4))
    theta = 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    torch.testing.assert_close(sin[3], torch.sin(3 * theta).float())
    torch.testing.assert_close(cos[3], torch.cos(3 * theta).float())


def test_rotary_angles_use_the_sinusoidal_frequencies() -> None:
    """The sines and cosines are the columns of the sinusoidal encoding, as one would hope."""
    cos, sin = rotary_angles(16, 12, dtype=torch.float64)
    pe = sinusoidal_encoding(16, 12, dtype=torch.float64)
    torch.testing.assert_close(sin, pe[:, 0::2])
    torch.testing.assert_close(cos, pe[:, 1::2])


def test_rotary_preserves_norms_and_shape() -> None:
    x = torch.randn(2, 3, 10, 8, dtype=torch.float64)
    out = _rotate(x)
    assert out.shape == x.shape and out.dtype == torch.float64
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(out[:, :, 0], x[:, :, 0])  # position 0 is left alone
    assert not torch.allclose(out[:, :, 1:], x[:, :, 1:])


def test_rotary_equals_the_complex_formulation() -> None:
    """Pair (2j, 2j+1) is the complex number x_2j + i x_2j+1, multiplied by e^{i t theta_j}."""
    B, H, T, D = 2, 2, 7, 6
    x = torch.randn(B, H, T, D, dtype=torch.float64)
    theta = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)  # (D/2,)
    t = torch.arange(T, dtype=torch.float64).unsqueeze(1)  # (T, 1)
    z = torch.view_as_complex(x.reshape(B, H, T, D // 2, 2).contiguous())  # (B, H, T, D/2)
    expected = torch.view_as_real(z * torch.polar(torch.ones_like(t * theta), t * theta))
    torch.testing.assert_close(_rotate(x), expected.reshape(B, H, T, D))


def test_scores_depend_only_on_the_offset() -> None:
    """q at m and k at n give the same score as q at m + s and k at n + s, for any shift s."""
    D = 16
    q, k = torch.randn(D, dtype=torch.float64), torch.randn(D, dtype=torch.float64)
    T = 40
    qs = _rotate(q.expand(1, 1, T, D))[0, 0]  # (T, D): q placed at every position
    ks = _rotate(k.expand(1, 1, T, D))[0, 0]  # (T, D)
    scores = qs @ ks.T  # (T, T): scores[m, n] = <R_m q, R_n k>
    for m, n in [(5, 2), (9, 9), (3, 11)]:
        for shift in (1, 7, 20):
            torch.testing.assert_close(scores[m + shift, n + shift], scores[m, n])
    # and the positions do matter: a different offset gives a different score
    assert not torch.isclose(scores[5, 2], scores[5, 3])


def test_offset_continues_the_positions() -> None:
    """Rotating a segment with offset=M equals rotating it as the tail of a longer sequence."""
    x = torch.randn(1, 2, 12, 8, dtype=torch.float64)
    whole = _rotate(x)
    torch.testing.assert_close(_rotate(x[:, :, 5:], offset=5), whole[:, :, 5:])
    cos, sin = rotary_angles(7, 8, offset=5, dtype=torch.float64)
    full_cos, full_sin = rotary_angles(12, 8, dtype=torch.float64)
    torch.testing.assert_close(cos, full_cos[5:])
    torch.testing.assert_close(sin, full_sin[5:])


def test_rotary_gradients_flow_and_match_the_inverse() -> None:
    x = torch.randn(1, 1, 6, 4, dtype=torch.float64, requires_grad=True)
    cos, sin = rotary_angles(6, 4, dtype=torch.float64)
    out = apply_rotary(x, cos, sin)
    back = apply_rotary(out, cos, -sin)  # rotating by the negative angle undoes it
    torch.testing.assert_close(back, x)
    out.pow(2).sum().backward()
    torch.testing.assert_close(x.grad, 2 * x.detach())  # |R x|^2 = |x|^2


@pytest.mark.parametrize(
    "args, match",
    [
        ((4, 7), "D must be even"),
        ((0, 8), "T must be a positive int"),
        ((4, 0), "D must be a positive int"),
        ((4.0, 8), "T must be a positive int"),
    ],
)
def test_rotary_angles_rejects_bad_sizes(args, match) -> None:
    with pytest.raises(ValueError, match=match):
        rotary_angles(*args)


def test_rotary_angles_rejects_bad_offset_and_base() -> None:
    with pytest.raises(ValueError, match="offset must be an int >= 0"):
        rotary_angles(4, 8, offset=-1)
    with pytest.raises(ValueError, match="base must be positive"):
        rotary_angles(4, 8, base=0.0)


def test_apply_rotary_errors() -> None:
    cos, sin = rotary_angles(5, 8)
    with pytest.raises(ValueError, match="4 dims"):
        apply_rotary(torch.randn(5, 8), cos, sin)
    with pytest.raises(ValueError, match="4 dims"):
        apply_rotary(torch.randn(2, 5, 8), cos, sin)
    with pytest.raises(ValueError, match="must be even"):
        apply_rotary(torch.randn(1, 1, 5, 7), cos, sin)
    with pytest.raises(ValueError, match=r"cos: expected \(T, D/2\) = \(6, 4\)"):
        apply_rotary(torch.randn(1, 1, 6, 8), cos, sin)  # tables for 5 positions, x has 6
    with pytest.raises(TypeError, match="floating point"):
        apply_rotary(torch.ones(1, 1, 5, 8, dtype=torch.long), cos, sin)
