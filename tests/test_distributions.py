"""Closed-form Gaussian log densities and KL divergences against torch.distributions and MC."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from vae_zoo.distributions import diag_normal_log_prob, gaussian_kl


def _random_posterior(b: int = 16, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(b, d) * 2.0, torch.randn(b, d) * 1.5


def test_standard_kl_matches_torch() -> None:
    mu, logvar = _random_posterior()
    ours = gaussian_kl(mu, logvar)
    ref = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0))
    assert ours.shape == mu.shape
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.sum(-1), ref.sum(-1), rtol=1e-5, atol=1e-4)


def test_standard_kl_is_zero_only_at_the_prior() -> None:
    zero = torch.zeros(3, 4)
    torch.testing.assert_close(gaussian_kl(zero, zero), zero)
    assert (gaussian_kl(zero + 0.1, zero) > 0).all()
    assert (gaussian_kl(zero, zero - 0.1) > 0).all()


def test_general_kl_matches_torch() -> None:
    mu, logvar = _random_posterior()
    prior_mu, prior_logvar = _random_posterior()
    ours = gaussian_kl(mu, logvar, prior_mu, prior_logvar)
    ref = kl_divergence(
        Normal(mu, torch.exp(0.5 * logvar)), Normal(prior_mu, torch.exp(0.5 * prior_logvar))
    )
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)


def test_general_kl_reduces_to_standard_kl() -> None:
    mu, logvar = _random_posterior()
    zero = torch.zeros_like(mu)
    torch.testing.assert_close(gaussian_kl(mu, logvar, zero, zero), gaussian_kl(mu, logvar))
    # a prior mean with no log-variance means unit variance
    torch.testing.assert_close(gaussian_kl(mu, logvar, zero, None), gaussian_kl(mu, logvar))


@pytest.mark.parametrize("general", [False, True])
def test_closed_form_kl_matches_monte_carlo(general: bool) -> None:
    mu = torch.tensor([[0.5, -1.0, 2.0]])
    logvar = torch.tensor([[-1.0, 0.5, 0.0]])
    prior_mu = torch.tensor([[1.0, 0.0, -0.5]]) if general else None
    prior_logvar = torch.tensor([[0.3, -0.7, 1.0]]) if general else None
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(
        prior_mu if general else torch.zeros_like(mu),
        torch.exp(0.5 * prior_logvar) if general else torch.ones_like(mu),
    )
    n = 200_000
    z = q.sample((n,))  # [n, 1, 3]
    log_ratio = (q.log_prob(z) - p.log_prob(z)).sum(-1).squeeze(1).double()  # [n]
    mc, se = log_ratio.mean().item(), log_ratio.std().item() / math.sqrt(n)
    closed = gaussian_kl(mu, logvar, prior_mu, prior_logvar).sum().item()
    assert abs(mc - closed) < 5 * se, (mc, closed, se)


def test_diag_normal_log_prob_matches_torch() -> None:
    z = torch.randn(7, 16, 5)
    mu, logvar = _random_posterior()
    ref = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    torch.testing.assert_close(diag_normal_log_prob(z, mu, logvar), ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(
        diag_normal_log_prob(z), Normal(0.0, 1.0).log_prob(z).sum(-1), rtol=1e-5, atol=1e-4
    )
    torch.testing.assert_close(
        diag_normal_log_prob(z, mu), Normal(mu, 1.0).log_prob(z).sum(-1), rtol=1e-5, atol=1e-4
    )
    assert diag_normal_log_prob(z, mu, logvar).shape == (7, 16)
