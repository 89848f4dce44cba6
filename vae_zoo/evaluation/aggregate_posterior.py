"""How the aggregate posterior q(z) = (1/N) sum_n q(z|x_n) of N test images sits against p(z).

Two numbers for any model with a real-valued latent, measured the same way for every variant,
so ``compare`` can put the VAE beside the models that change these quantities on purpose:

* ``mmd_qp``: the unbiased MMD^2 (IMQ kernel at the WAE scales, :mod:`vae_zoo.kernels`) between
  one draw z_n ~ q(z|x_n) per test image and as many draws of the prior p(z[|y_n]) (InfoVAE
  and WAE minimise it; a VAE leaves "holes" in q(z) that it sees).
* ``tc_q``: the total correlation KL(q(z) || prod_j q(z_j)) of that finite mixture, estimated at
  the same draws as mean_n [log q(z_n) - sum_j log q_j(z_nj)] with q(z) and each marginal q_j
  computed exactly over all N components (the β-TCVAE decomposition with the test set as the
  batch; the minibatch estimators are unnecessary here). Only for diagonal-Gaussian posteriors
  (a point mass or a code index has no density to mix). It is a statistic of the empirical
  mixture: at most (D - 1) log N for very sharp posteriors, so compare it at one N.

Both are absent (not zero) where they do not apply: discrete latents (VQ-VAE), or no density.
"""

import math

import torch
from torch import Tensor

from vae_zoo.distributions import DiagNormal
from vae_zoo.kernels import WAE_SCALES, mmd_unbiased
from vae_zoo.models import BaseVAE


@torch.no_grad()
def aggregate_posterior_stats(
    model: BaseVAE, x: Tensor, y: Tensor | None, batch_size: int = 500
) -> dict[str, float]:
    """``mmd_qp`` and ``tc_q`` over the images ``x`` (float64 maths); {} for discrete latents.

    Draws from the global RNG: seed it first for the same numbers every time.
    """
    device = model.device
    means, logvars, draws, priors = [], [], [], []
    gaussian = True
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device, model.dtype)
        yb = None if y is None else y[start : start + batch_size].to(device)
        q = model.posterior(xb, yb)
        if q.support.is_discrete:
            return {}
        z = q.sample()
        if z.dim() != 2 or not z.is_floating_point():
            return {}
        draws.append(z.double().cpu())
        priors.append(model.sample_latent(len(xb), yb).double().cpu())
        gaussian = gaussian and isinstance(q, DiagNormal)
        if gaussian:
            means.append(q.mu.double().cpu())
            logvars.append(q.logvar.double().cpu())
    if not draws or len(x) < 2:
        return {}
    z, zp = torch.cat(draws), torch.cat(priors)
    stats = {"mmd_qp": float(mmd_unbiased(z, zp, "imq", WAE_SCALES))}
    if gaussian:
        stats["tc_q"] = float(total_correlation(z, torch.cat(means), torch.cat(logvars)))
    return stats


def total_correlation(z: Tensor, mu: Tensor, logvar: Tensor, chunk: int = 256) -> Tensor:
    """TC of q(z) = (1/N) sum_n N(mu_n, diag exp(logvar_n)) at draws z [N, D]: a scalar."""
    n = mu.shape[0]
    log_n = math.log(n)
    total = z.new_zeros(())
    for start in range(0, z.shape[0], chunk):
        zc = z[start : start + chunk, None, :]  # [c, 1, D] against the N components [1, N, D]
        # log N(z_cj; mu_nj, var_nj) for every draw c, component n and dimension j: [c, N, D]
        log_q = -0.5 * (math.log(2 * math.pi) + logvar + (zc - mu).pow(2) / logvar.exp())
        joint = torch.logsumexp(log_q.sum(-1), dim=1) - log_n  # log q(z_c): [c]
        marginals = (torch.logsumexp(log_q, dim=1) - log_n).sum(-1)  # sum_j log q_j(z_cj): [c]
        total = total + (joint - marginals).sum()
    return total / z.shape[0]
