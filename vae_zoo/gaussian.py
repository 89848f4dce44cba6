"""Closed-form diagonal-Gaussian densities and KL divergences, in nats.

A ``None`` prior mean/log-variance stands for the standard normal N(0, I), so the common
case costs no extra tensors.
"""

import math

import torch
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


def diag_normal_log_prob(
    z: Tensor, mu: Tensor | None = None, logvar: Tensor | None = None
) -> Tensor:
    """Log density of a diagonal Gaussian, summed over the last dimension: [..., D] -> [...]."""
    if mu is None:
        return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
    if logvar is None:
        logvar = torch.zeros_like(mu)
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def gaussian_kl(
    mu: Tensor,
    logvar: Tensor,
    prior_mu: Tensor | None = None,
    prior_logvar: Tensor | None = None,
) -> Tensor:
    """KL(N(mu, e^logvar) || N(prior_mu, e^prior_logvar)) per latent dimension: [B, D] -> [B, D]."""
    if prior_mu is None:
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
    if prior_logvar is None:
        prior_logvar = torch.zeros_like(prior_mu)
    return 0.5 * (
        prior_logvar
        - logvar
        + (logvar.exp() + (mu - prior_mu).pow(2)) * torch.exp(-prior_logvar)
        - 1.0
    )
