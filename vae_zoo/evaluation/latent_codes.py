"""Where the figures get latent codes: posterior means, prior draws, and a 2-D view of them.

The two functions that touch the model's latent distributions are here and nowhere else, so a
change of the model's API (a posterior or prior distribution object) is made in one place.
"""

import torch
from torch import Tensor

from vae_zoo.models import BaseVAE


@torch.no_grad()
def posterior_mean(model: BaseVAE, x: Tensor, y: Tensor | None) -> Tensor:
    """E[z | x] of q(z|x[,y]) for one batch on the model's device: [B, D]."""
    y = None if y is None else y.to(model.device)
    return model.posterior(x.to(model.device, model.dtype), y).mean


def prior_latents(model: BaseVAE, eps: Tensor, labels: Tensor | None) -> Tensor:
    """Map standard-normal values ``eps`` [N, D] through a Gaussian p(z[|c]).

    Priors that are not a reparameterized Gaussian (a mixture such as the VampPrior) have no
    such map: their figures take ``eps`` as z, i.e. N(0, I) quantiles.
    """
    from_noise = getattr(model.prior(labels), "from_noise", None)
    return eps if from_noise is None else from_noise(eps)


@torch.no_grad()
def latent_is_continuous(model: BaseVAE, x: Tensor, y: Tensor | None) -> bool:
    """Whether q(z|x) is over real vectors (not code indices, as the VQ-VAE's): drawable."""
    y = None if y is None else y[:1].to(model.device)
    return not model.posterior(x[:1].to(model.device, model.dtype), y).support.is_discrete


@torch.no_grad()
def posterior_means(
    model: BaseVAE, x: Tensor, y: Tensor | None, batch_size: int = 500
) -> Tensor:
    """Posterior means of many images, batch by batch: [N, D] on the CPU."""
    out = []
    for start in range(0, len(x), batch_size):
        yb = None if y is None else y[start : start + batch_size]
        out.append(posterior_mean(model, x[start : start + batch_size], yb).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.latent_dim)


def project_2d(z: Tensor) -> tuple[Tensor, str]:
    """Points [N, 2] to draw and how they were made: z itself when D=2, else its first 2 PCs.

    The description names the projection and the share of the variance the two axes keep,
    for the figure's title.
    """
    z = z.double()
    dim = z.shape[1]
    if dim > 2 and len(z) < 2:
        return torch.zeros(len(z), 2), f"{dim}-D posterior means (too few points for a PCA)"
    if dim == 2:
        return z.float(), "2-D posterior means"
    if dim == 1:
        return torch.cat([z, torch.zeros_like(z)], 1).float(), "1-D posterior means (on z1)"
    centred = z - z.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    points = centred @ vh[:2].T
    for j in range(2):  # a component's sign is arbitrary: fix it so the largest point is > 0
        if points[points[:, j].abs().argmax(), j] < 0:
            points[:, j] = -points[:, j]
    var = s.square()
    share = (var[:2] / var.sum()).tolist() if var.sum() > 0 else [0.0, 0.0]
    how = f"PCA of the {dim}-D posterior means (PC1 {share[0]:.0%}, PC2 {share[1]:.0%} of variance)"
    return points.float(), how
