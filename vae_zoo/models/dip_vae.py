"""DIP-VAE I and II (Kumar, Sattigeri, Balakrishnan 2018, "Variational Inference of Disentangled
Latent Concepts from Unlabeled Observations", arXiv:1711.00848).

The ELBO plus a penalty that pulls a covariance of the aggregate posterior towards the
identity. With the notation of :mod:`vae_zoo.models.base` and mu(x), sigma^2(x) the mean and
variance of q(z|x)::

    DIP-I  (eq. 6):  C = Cov_p(x)[mu(x)]
    DIP-II (eq. 7):  C = Cov_q(z)[z] = Cov_p(x)[mu(x)] + E_p(x)[diag(sigma^2(x))]
    dip_penalty = lambda_od * sum_{i != j} C_ij^2 + lambda_d * sum_i (C_ii - 1)^2
    loss        = -(recon - w * kl) + dip_penalty            (w: the KL schedule, 1 by default)

Cov_p(x) and E_p(x) are taken over the batch, with the biased (1/B) covariance
E[mu mu^T] - E[mu] E[mu]^T that the paper writes (and disentanglement_lib uses):
``torch.cov(mu.T, correction=0)``; a batch of one gives C = 0 for DIP-I, not a NaN.
Defaults as in the paper: lambda_od = 10; lambda_d = 10 * lambda_od for DIP-I and
lambda_d = lambda_od for DIP-II (``lambda_d: null``).

Terms: ``loss``, ``elbo``, ``recon``, ``kl`` are per example [B] (``elbo``, ``recon``, ``kl``
as in ``base.py``); ``dip_penalty``, ``dip_offdiag`` (sum_{i != j} C_ij^2) and ``dip_diag``
(sum_i (C_ii - 1)^2) are batch-level scalars. The split values of ``val/`` and ``test/`` are
means over batches of ``data.eval_batch_size`` examples, and the training value uses batches of
``data.batch_size``: the penalty of a covariance estimated from one batch, not from the split.
Under DDP each rank computes it on its own shard of the batch (``data.batch_size`` per
process, as a single process with that batch size would) and DDP averages the gradients: the
objective is the mean over ranks of the per-shard penalty, not the penalty of the global batch.
The covariance is computed in at least float32, also under autocast.
"""

from typing import Literal

import torch
from torch import Tensor
from torch.distributions import Distribution

from vae_zoo.errors import ConfigError
from vae_zoo.models.base import BaseVAE, ForwardPass
from vae_zoo.models.registry import register_model


def dip_covariance(posterior: Distribution, dip_type: str) -> Tensor:
    """The covariance DIP penalises, over the batch of a posterior [B, D]: [D, D].

    ``"i"``: Cov[mu(x)]; ``"ii"``: Cov[mu(x)] + mean diag(sigma^2(x)). Biased (1/B) covariance.
    """
    mu = posterior.mean
    wide = torch.promote_types(mu.dtype, torch.float32)
    # outside autocast, which would run the product below in bfloat16 (~3 significant digits)
    with torch.autocast(mu.device.type, enabled=False):
        mu = mu.to(wide)
        centred = mu - mu.mean(0, keepdim=True)
        cov = centred.T @ centred / mu.shape[0]
        if dip_type == "ii":
            # exp of the widened log-variance: exp in bfloat16 would round sigma^2 by ~0.4%
            logvar = getattr(posterior, "logvar", None)
            var = logvar.to(wide).exp() if logvar is not None else posterior.variance.to(wide)
            cov = cov + torch.diag(var.mean(0))
    return cov


def dip_parts(cov: Tensor) -> tuple[Tensor, Tensor]:
    """(sum of squared off-diagonal entries, sum of squared diagonal deviations from 1)."""
    diag = torch.diagonal(cov)
    # masking, not sum(C^2) - sum(diag^2): that difference cancels when C is nearly diagonal
    off = (cov - torch.diag_embed(diag)).pow(2).sum()
    return off, (diag - 1.0).pow(2).sum()


@register_model("dip_vae")
class DIPVAE(BaseVAE):
    """DIP-VAE I/II: the ELBO plus a penalty pulling the aggregate posterior covariance to I.

    Args:
        dip_type: ``"i"`` penalises Cov[mu(x)], ``"ii"`` Cov[mu(x)] + E[diag sigma^2(x)].
        lambda_od: weight of the off-diagonal entries (>= 0).
        lambda_d: weight of the diagonal entries (>= 0); ``None``: 10 * lambda_od for DIP-I
            and lambda_od for DIP-II, as in the paper.
        *args, **kwargs: the arguments of :class:`BaseVAE`.
    """

    show_traversals = True

    def __init__(
        self,
        *args,
        dip_type: Literal["i", "ii"] = "i",
        lambda_od: float = 10.0,
        lambda_d: float | None = None,
        **kwargs,
    ) -> None:
        if dip_type not in ("i", "ii"):
            raise ConfigError(f"dip_type must be 'i' or 'ii', got {dip_type!r}")
        if not lambda_od >= 0:
            raise ConfigError(f"lambda_od must be >= 0, got {lambda_od}")
        if lambda_d is not None and not lambda_d >= 0:
            raise ConfigError(f"lambda_d must be >= 0 (null: the paper's rule), got {lambda_d}")
        super().__init__(*args, **kwargs)
        self.dip_type = dip_type
        self.lambda_od = float(lambda_od)
        if lambda_d is None:
            lambda_d = 10.0 * lambda_od if dip_type == "i" else lambda_od
        self.lambda_d = float(lambda_d)

    @property
    def objective(self) -> str:  # type: ignore[override]
        """What is minimised, for tables."""
        return (
            f"-ELBO + DIP-{self.dip_type.upper()} penalty "
            f"(lambda_od={self.lambda_od:g}, lambda_d={self.lambda_d:g})"
        )

    def loss(self, out: ForwardPass, x: Tensor) -> dict[str, Tensor]:
        """The VAE's terms plus the batch's ``dip_penalty`` (and its two parts) in the loss."""
        terms = super().loss(out, x)
        off, diag = dip_parts(dip_covariance(out.posterior, self.dip_type))
        penalty = self.lambda_od * off + self.lambda_d * diag
        return {
            **terms,
            "loss": terms["loss"] + penalty,
            "dip_penalty": penalty,
            "dip_offdiag": off,
            "dip_diag": diag,
        }
