"""The aggregate-posterior diagnostics of ``compare``: TC against torch.distributions, MMD."""

import math

import pytest
import torch
from small_models import SMALL
from test_kernels import naive_mmd
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from vae_zoo.distributions import DiagNormal, StandardNormal
from vae_zoo.evaluation.aggregate_posterior import aggregate_posterior_stats, total_correlation
from vae_zoo.kernels import WAE_SCALES
from vae_zoo.models import VAE, WAE


def _mixture(mu: torch.Tensor, logvar: torch.Tensor) -> MixtureSameFamily:
    """q(z) = (1/N) sum_n N(mu_n, diag exp(logvar_n)) as torch.distributions builds it."""
    weights = Categorical(logits=torch.zeros(mu.shape[0], dtype=mu.dtype))
    return MixtureSameFamily(weights, Independent(Normal(mu, (0.5 * logvar).exp()), 1))


def test_total_correlation_matches_torch_distributions_mixtures() -> None:
    gen = torch.Generator().manual_seed(0)
    n, d = 9, 4
    mu = torch.randn(n, d, generator=gen, dtype=torch.float64) * 2
    logvar = torch.randn(n, d, generator=gen, dtype=torch.float64) * 0.5 - 1
    z = torch.randn(n, d, generator=gen, dtype=torch.float64)
    joint = _mixture(mu, logvar).log_prob(z)
    marginals = sum(
        _mixture(mu[:, j : j + 1], logvar[:, j : j + 1]).log_prob(z[:, j : j + 1])
        for j in range(d)
    )
    expected = (joint - marginals).mean()
    assert float(total_correlation(z, mu, logvar, chunk=4)) == pytest.approx(float(expected))


def test_total_correlation_of_a_product_distribution_is_zero() -> None:
    # every component the same diagonal Gaussian: q(z) is that Gaussian, a product over units
    mu = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64).repeat(50, 1)
    logvar = torch.tensor([[0.1, -0.3, 0.0]], dtype=torch.float64).repeat(50, 1)
    z = DiagNormal(mu, logvar).sample()
    assert float(total_correlation(z, mu, logvar)) == pytest.approx(0.0, abs=1e-10)


def test_correlated_components_have_positive_total_correlation() -> None:
    # two sharp clusters on the diagonal z1 = z2: the units are dependent (TC -> log 2)
    mu = torch.tensor([[-3.0, -3.0], [3.0, 3.0]], dtype=torch.float64).repeat(200, 1)
    logvar = torch.full_like(mu, -4.0)
    z = DiagNormal(mu, logvar).sample()
    assert float(total_correlation(z, mu, logvar)) == pytest.approx(math.log(2), abs=1e-3)


class _PosteriorIsPrior(VAE):
    """A VAE whose q(z|x) is N(0, I) for every x: q(z) = p(z), no TC and MMD ~ 0."""

    def posterior(self, x, c=None):
        zeros = torch.zeros(x.shape[0], self.latent_dim, dtype=self.dtype)
        return DiagNormal(zeros, zeros)


def test_stats_of_a_posterior_equal_to_the_prior() -> None:
    torch.manual_seed(0)
    x = torch.rand(400, 1, 8, 8)
    stats = aggregate_posterior_stats(_PosteriorIsPrior(**SMALL), x, None, batch_size=150)
    assert set(stats) == {"mmd_qp", "tc_q"}
    assert stats["tc_q"] == pytest.approx(0.0, abs=1e-9)
    assert abs(stats["mmd_qp"]) < 0.01  # an unbiased estimate of 0 from 400 draws


def test_mmd_is_the_u_statistic_of_posterior_and_prior_draws() -> None:
    model = VAE(**SMALL).eval()
    x = torch.rand(12, 1, 8, 8)
    torch.manual_seed(3)
    stats = aggregate_posterior_stats(model, x, None, batch_size=5)
    torch.manual_seed(3)  # the same draws, in the same order: posterior, then prior, per batch
    draws, prior = [], []
    for start in range(0, 12, 5):
        draws.append(model.posterior(x[start : start + 5]).sample())
        prior.append(StandardNormal(3).sample((len(draws[-1]),)))
    expected = naive_mmd(torch.cat(draws), torch.cat(prior), "imq", list(WAE_SCALES))
    assert stats["mmd_qp"] == pytest.approx(expected, rel=1e-6)


def test_a_deterministic_encoder_has_an_mmd_but_no_tc() -> None:
    stats = aggregate_posterior_stats(WAE(**SMALL), torch.rand(20, 1, 8, 8), None)
    assert set(stats) == {"mmd_qp"}


def test_a_discrete_latent_has_neither() -> None:
    from vae_zoo.models import VQVAE

    model = VQVAE(latent_dim=2, num_codes=4, image_shape=(1, 28, 28))
    assert aggregate_posterior_stats(model, torch.rand(6, 1, 28, 28), None) == {}
