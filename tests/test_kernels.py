"""The MMD of vae_zoo.kernels (InfoVAE, WAE): a naive double loop, a closed form, precision."""

import functools
import math

import pytest
import torch

from vae_zoo.distributions import StandardNormal
from vae_zoo.errors import ConfigError
from vae_zoo.kernels import WAE_SCALES, check_kernel, mmd_to_prior, mmd_unbiased


def naive_kernel(a: list[float], b: list[float], kernel: str, scales: list[float]) -> float:
    """k(a, b) summed over the scales C = 2 * D * s, from Python floats."""
    d2 = sum((ai - bi) ** 2 for ai, bi in zip(a, b, strict=True))
    total = 0.0
    for s in scales:
        c = 2.0 * len(a) * s
        total += math.exp(-d2 / c) if kernel == "rbf" else c / (c + d2)
    return total


def naive_mmd(x: torch.Tensor, y: torch.Tensor, kernel: str, scales: list[float]) -> float:
    """The unbiased MMD^2 U-statistic written as the three double loops of its definition."""
    xs, ys = x.double().tolist(), y.double().tolist()
    n, m = len(xs), len(ys)
    xx = sum(naive_kernel(xs[i], xs[j], kernel, scales)
             for i in range(n) for j in range(n) if i != j)
    yy = sum(naive_kernel(ys[i], ys[j], kernel, scales)
             for i in range(m) for j in range(m) if i != j)
    xy = sum(naive_kernel(xs[i], ys[j], kernel, scales) for i in range(n) for j in range(m))
    return xx / (n * (n - 1)) + yy / (m * (m - 1)) - 2.0 * xy / (n * m)


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
@pytest.mark.parametrize("scales", [[1.0], [0.5, 3.0], list(WAE_SCALES)])
def test_mmd_matches_a_naive_double_loop(kernel: str, scales: list[float]) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, generator=gen, dtype=torch.float64) * 1.5 + 0.3
    y = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    ours = mmd_unbiased(x, y, kernel, scales)
    assert ours.shape == ()
    assert float(ours) == pytest.approx(naive_mmd(x, y, kernel, scales), rel=1e-10, abs=1e-12)


def test_mmd_has_the_closed_form_expectation() -> None:
    """E[MMD^2_u] for N(0, I) against N(m, I) under exp(-d/C): 2 a (1 - exp(-|m|^2/(C+4))).

    With a = (1 + 4/C)^(-D/2): x - x' ~ N(0, 2I) and x - y ~ N(-m, 2I), and
    E exp(-|v|^2/C) = (1 + 2 s^2/C)^(-D/2) exp(-|mean|^2/(C + 2 s^2)) for v ~ N(mean, s^2 I).
    Tiny samples (n=4, m=5) make the biased V-statistic (diagonal kept) miss by far more than
    the tolerance, so the test fails if the diagonal is counted.
    """
    torch.manual_seed(1)
    d, reps = 2, 40000
    shift = torch.tensor([0.8, -0.4], dtype=torch.float64)
    x = torch.randn(reps, 4, d, dtype=torch.float64)
    y = torch.randn(reps, 5, d, dtype=torch.float64) + shift
    values = torch.vmap(functools.partial(mmd_unbiased, kernel="rbf", scales=[1.0]))(x, y)
    c = 2.0 * d
    a = (1 + 4 / c) ** (-d / 2)
    exact = 2 * a * (1 - math.exp(-float(shift.pow(2).sum()) / (c + 4)))
    stderr = float(values.std()) / math.sqrt(reps)
    assert abs(float(values.mean()) - exact) < 4 * stderr
    assert stderr < 0.02 * exact  # power: the V-statistic (diagonal kept) is 0.32, not 0.095


def test_mmd_of_equal_distributions_is_zero_in_expectation_and_can_be_negative() -> None:
    torch.manual_seed(2)
    values = torch.vmap(mmd_unbiased)(torch.randn(4000, 6, 3), torch.randn(4000, 6, 3))
    assert (values < 0).any()
    assert abs(float(values.mean())) < 4 * float(values.std()) / math.sqrt(len(values))


def test_mmd_to_prior_stays_float32_under_bf16_autocast_and_is_differentiable() -> None:
    torch.manual_seed(3)
    z = (torch.randn(16, 4) * 0.5).requires_grad_()
    prior = StandardNormal(4)
    torch.manual_seed(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = mmd_to_prior(z, prior, "imq", WAE_SCALES)
    assert value.dtype == torch.float32
    torch.manual_seed(4)
    y = prior.sample((16,))
    assert float(value.detach()) == pytest.approx(naive_mmd(z.detach(), y, "imq", list(WAE_SCALES)),
                                         rel=1e-4)
    value.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_kernel_settings_are_checked() -> None:
    assert check_kernel("rbf", [1]) == (1.0,)
    with pytest.raises(ConfigError, match="kernel must be one of rbf, imq"):
        check_kernel("gauss", [1.0])
    with pytest.raises(ConfigError, match="kernel_scales"):
        check_kernel("imq", [])
    with pytest.raises(ConfigError, match="kernel_scales"):
        check_kernel("imq", [1.0, -2.0])
    with pytest.raises(ValueError, match="at least 2"):
        mmd_unbiased(torch.randn(1, 2), torch.randn(3, 2))
