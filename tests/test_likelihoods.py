"""Each likelihood's log_prob against its torch.distributions reference and closed forms."""

import math

import pytest
import torch
from torch import distributions as td

from vae_zoo.errors import ConfigError
from vae_zoo.likelihoods import Bernoulli, ContinuousBernoulli, Gaussian

SHAPE = (4, 1, 6, 5)


def _pixel_sum(lp: torch.Tensor) -> torch.Tensor:
    return lp.flatten(1).sum(1)


@pytest.mark.parametrize("binary", [True, False])
def test_bernoulli_matches_torch(binary: bool) -> None:
    logits = torch.randn(SHAPE) * 3
    x = torch.bernoulli(torch.full(SHAPE, 0.5)) if binary else torch.rand(SHAPE)
    ref = _pixel_sum(td.Bernoulli(logits=logits, validate_args=False).log_prob(x))
    ours = Bernoulli().log_prob(logits, x)
    assert ours.shape == (SHAPE[0],)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)


def test_bernoulli_is_finite_and_exact_at_extreme_logits() -> None:
    logits = torch.tensor([60.0, -60.0, 60.0, -60.0]).view(1, 1, 2, 2)
    x = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 1, 2, 2)
    # two confident hits cost ~0, two confident misses cost 60 nats each
    torch.testing.assert_close(Bernoulli().log_prob(logits, x), torch.tensor([-120.0]))


def test_bernoulli_mean_is_sigmoid() -> None:
    logits = torch.randn(SHAPE)
    torch.testing.assert_close(Bernoulli().mean(logits), torch.sigmoid(logits))


# logits at and around 0, where the continuous Bernoulli normaliser is 0/0 in closed form
NEAR_ZERO = [0.0, 1e-7, -1e-6, 1e-4, -1e-3, 4e-3, -0.01, 0.05]


def _cb_logits(scale: float = 4.0) -> torch.Tensor:
    wide = torch.randn(SHAPE[0], 1, 6, 5) * scale
    wide.view(-1)[: len(NEAR_ZERO)] = torch.tensor(NEAR_ZERO)
    return wide.clamp(-8 * scale, 8 * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_continuous_bernoulli_matches_torch_including_logits_near_zero(dtype) -> None:
    # torch's float32 normaliser uses clamped probabilities, accurate only for |logits| <~ 10
    logits = _cb_logits(scale=2.0 if dtype == torch.float32 else 4.0).to(dtype)
    x = torch.rand(SHAPE, dtype=dtype)
    ref = td.ContinuousBernoulli(logits=logits, validate_args=False).log_prob(x)
    ours = ContinuousBernoulli().log_prob(logits, x)
    assert ours.shape == (SHAPE[0],) and ours.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(ours, _pixel_sum(ref), rtol=0, atol=tol)


def _cb_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """log C(eta) = log(eta / tanh(eta / 2)) in float64; C(0) = 2 (the limit)."""
    eta = logits.double()
    safe = torch.where(eta == 0, torch.ones_like(eta), eta)
    log_norm = (safe / torch.tanh(safe / 2)).log()
    return torch.where(eta == 0, torch.full_like(eta, math.log(2.0)), log_norm)


def _cb_reference(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    eta, xd = logits.double(), x.double()
    return _pixel_sum(xd * eta - torch.nn.functional.softplus(eta) + _cb_log_norm(logits))


def test_continuous_bernoulli_matches_closed_form_normaliser() -> None:
    logits = _cb_logits(scale=10.0)  # up to |logits| = 80
    x = torch.rand(SHAPE)
    ours = ContinuousBernoulli().log_prob(logits, x).double()
    torch.testing.assert_close(ours, _cb_reference(logits, x), rtol=1e-6, atol=1e-4)


def test_continuous_bernoulli_is_exact_at_large_logits_in_float32() -> None:
    # float32 torch freezes log C at logits ~16 (clamped probabilities): 0.23 nats off at 20
    logits = torch.tensor([16.0, 20.0, 30.0, 50.0, -20.0, -50.0]).view(6, 1, 1, 1)
    x = torch.tensor([1.0, 1.0, 0.9, 1.0, 0.0, 0.2]).view(6, 1, 1, 1)
    ours = ContinuousBernoulli().log_prob(logits, x).double()
    torch.testing.assert_close(ours, _cb_reference(logits, x), rtol=0, atol=1e-5)
    # and the gradient keeps pulling towards sharper pixels: d/dl log C ~ 1 / l
    params = logits.clone().requires_grad_()
    ContinuousBernoulli().log_prob(params, torch.ones_like(params)).sum().backward()
    expected = 1 / logits[:4].flatten()
    torch.testing.assert_close(params.grad[:4].flatten(), expected, rtol=1e-3, atol=0)


@pytest.mark.parametrize("logit", [0.0, 1e-5, -3e-3, 0.3, -2.0, 8.0])
def test_continuous_bernoulli_density_integrates_to_one(logit: float) -> None:
    # a proper density on [0, 1]: integrate exp(log p) over a fine grid (one pixel per point)
    grid = torch.linspace(0.0, 1.0, 20001).view(-1, 1, 1, 1)
    params = torch.full_like(grid, logit)
    density = ContinuousBernoulli().log_prob(params, grid).double().exp()
    assert torch.trapezoid(density, grid.view(-1).double()).item() == pytest.approx(1.0, abs=1e-4)


def test_continuous_bernoulli_mean_matches_torch() -> None:
    logits = _cb_logits()
    mean = ContinuousBernoulli().mean(logits)
    torch.testing.assert_close(mean, td.ContinuousBernoulli(logits=logits).mean)
    assert mean.min() >= 0 and mean.max() <= 1


@pytest.mark.parametrize("sigma", [0.1, 0.5, 1.0])
def test_gaussian_fixed_matches_normal(sigma: float) -> None:
    params, x = torch.randn(SHAPE) * 2, torch.rand(SHAPE)
    lik = Gaussian(variance="fixed", sigma=sigma)
    ref = _pixel_sum(td.Normal(torch.sigmoid(params), sigma).log_prob(x))
    torch.testing.assert_close(lik.log_prob(params, x), ref, rtol=1e-5, atol=1e-3)
    assert lik.param_shape((1, 6, 5)) == (1, 6, 5)
    assert not list(lik.parameters())


def test_gaussian_learned_uses_its_parameter_and_gets_gradients() -> None:
    params, x = torch.randn(SHAPE) * 2, torch.rand(SHAPE)
    lik = Gaussian(variance="learned", sigma=0.2)
    assert lik.log_sigma.item() == pytest.approx(math.log(0.2))
    with torch.no_grad():
        lik.log_sigma.fill_(-1.3)
    ref = _pixel_sum(td.Normal(torch.sigmoid(params), math.exp(-1.3)).log_prob(x))
    lp = lik.log_prob(params, x)
    torch.testing.assert_close(lp, ref, rtol=1e-5, atol=1e-3)
    lp.sum().backward()
    assert lik.log_sigma.grad is not None and lik.log_sigma.grad.abs() > 0


def test_gaussian_per_pixel_uses_the_second_half_as_log_sigma() -> None:
    lik = Gaussian(variance="per_pixel")
    assert lik.param_shape((3, 6, 5)) == (6, 6, 5)
    x = torch.rand(2, 3, 6, 5)
    mean_logits = torch.randn(2, 3, 6, 5)
    log_sigma = torch.rand(2, 3, 6, 5) * -4  # inside the clamp range [-6, 0]
    params = torch.cat([mean_logits, log_sigma], dim=1)
    ref = _pixel_sum(td.Normal(torch.sigmoid(mean_logits), log_sigma.exp()).log_prob(x))
    torch.testing.assert_close(lik.log_prob(params, x), ref, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(lik.mean(params), torch.sigmoid(mean_logits))


def test_gaussian_per_pixel_log_sigma_is_clamped() -> None:
    lik = Gaussian(variance="per_pixel", min_log_sigma=-4.0)
    x = torch.rand(1, 1, 2, 2)
    mean_logits = torch.zeros(1, 1, 2, 2)
    log_sigma = torch.tensor([-50.0, -4.0, 3.0, 50.0]).view(1, 1, 2, 2)
    params = torch.cat([mean_logits, log_sigma], dim=1)
    clamped = torch.tensor([-4.0, -4.0, 0.0, 0.0]).view(1, 1, 2, 2)
    ref = _pixel_sum(td.Normal(torch.sigmoid(mean_logits), clamped.exp()).log_prob(x))
    torch.testing.assert_close(lik.log_prob(params, x), ref)


@pytest.mark.parametrize(
    "lik", [Bernoulli(), ContinuousBernoulli(), Gaussian("fixed"), Gaussian("per_pixel")]
)
def test_distribution_log_prob_and_sample_agree_with_log_prob(lik) -> None:
    x = torch.rand(2, 3, 4, 4)
    params = torch.randn(2, *lik.param_shape((3, 4, 4)))
    torch.testing.assert_close(
        lik.distribution(params).log_prob(x), lik.log_prob(params, x), rtol=1e-5, atol=1e-4
    )
    draw = lik.sample(params)
    assert draw.shape == x.shape and draw.min() >= 0 and draw.max() <= 1
    mean = lik.mean(params)
    assert mean.shape == x.shape and mean.min() >= 0 and mean.max() <= 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"variance": "diagonal"}, "variance"),
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"sigma": 2.0}, "sigma"),  # would be silently clamped to 1 by the log-sigma clamp
    ],
)
def test_gaussian_rejects_bad_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Gaussian(**kwargs)
