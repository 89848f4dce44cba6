"""InfoVAE (Zhao, Song, Ermon 2017, "InfoVAE: Information maximizing variational autoencoders").

The paper's general objective, maximised, in the notation of :mod:`vae_zoo.models.base`, with
D = MMD^2 (its MMD-VAE)::

    L = E_x[ recon - (1 - alpha) * kl ] - (alpha + lambda - 1) * MMD^2(q(z), p(z))

    loss = -(recon - (1 - alpha) * w * kl) + (alpha + lambda - 1) * mmd      (minimised)

q(z) = E_x q(z|x) is the aggregate posterior, p(z) = N(0, I), w the KL-schedule weight (1 by
default). alpha = 0, lambda = 1 is the VAE; alpha = 0, lambda = 1 + c is the VAE plus c * MMD^2;
alpha = 1 drops the KL (Zhao's MMD-VAE tutorial: reconstruction + MMD). Defaults alpha = 0,
lambda = 1000 (the usual MMD-VAE setting: the full KL plus 999 * MMD^2; the weight is large
because MMD^2 of a bounded kernel is small, ~1e-3..1e-1). Valid settings keep both weights
non-negative: alpha <= 1 and alpha + lambda - 1 >= 0 (and lambda > 0).

Terms returned by :meth:`InfoVAE.loss`:

* ``loss``, ``elbo``, ``recon``, ``kl``: per example [B]; ``elbo``/``recon``/``kl`` keep the
  meanings of base.py (the model is a VAE with the N(0, I) prior: its ELBO, IW-NLL and KL are
  those of the trained decoder and prior, whatever alpha and lambda);
* ``mmd``: a batch-level scalar, the unbiased U-statistic of MMD^2 between the batch's
  reparameterized z ~ q(z|x) (B codes, one per image) and B fresh draws of p(z)
  (:func:`vae_zoo.kernels.mmd_unbiased`). The codes of one batch are draws of q(z) (the batch
  is a uniform sample of the data), so the statistic is unbiased for MMD^2(q(z), p(z)) and its
  gradient for the gradient. Under DDP each rank computes it on its own batch: the averaged
  gradient is still unbiased, with the variance of a B-sized (not B x world) sample.

Kernel (``kernel``, ``kernel_scales``): rbf exp(-d / C) or imq C / (C + d), d = ||z - z'||^2,
C = 2 * D * s for each scale s (D = latent_dim; 2 D is E||z - z'||^2 under N(0, I)); default
rbf with s = 1, i.e. exp(-||z - z'||^2 / (2 D)).
"""

from collections.abc import Sequence
from typing import Literal

from torch import Tensor

from vae_zoo.errors import ConfigError
from vae_zoo.kernels import check_kernel, mmd_to_prior
from vae_zoo.models.base import BaseVAE, ForwardPass
from vae_zoo.models.registry import register_model


@register_model("info_vae")
class InfoVAE(BaseVAE):
    """InfoVAE / MMD-VAE: -(recon - (1-alpha)*KL) + (alpha+lambda-1)*MMD^2(q(z), p(z)).

    Args:
        alpha: the paper's alpha; the KL weight is 1 - alpha (alpha <= 1).
        lam: the paper's lambda; the MMD^2 weight is alpha + lam - 1 (>= 0, lam > 0).
        kernel: ``rbf`` or ``imq``.
        kernel_scales: scales s of C = 2 * latent_dim * s; several add their kernels.
    """

    def __init__(
        self,
        *args,
        alpha: float = 0.0,
        lam: float = 1000.0,
        kernel: Literal["rbf", "imq"] = "rbf",
        kernel_scales: Sequence[float] = (1.0,),
        **kwargs,
    ) -> None:
        if not (alpha <= 1 and lam > 0 and alpha + lam - 1 >= 0):
            raise ConfigError(
                f"info_vae needs alpha <= 1, lam > 0 and alpha + lam - 1 >= 0 (KL weight "
                f"1-alpha and MMD weight alpha+lam-1 non-negative), got alpha={alpha}, lam={lam}"
            )
        scales = check_kernel(kernel, kernel_scales)
        super().__init__(*args, **kwargs)
        self.alpha = alpha
        self.lam = lam
        self.kernel = kernel
        self.kernel_scales = scales

    @property
    def kl_coef(self) -> float:
        """1 - alpha: the weight of KL(q(z|x) || p(z))."""
        return 1.0 - self.alpha

    @property
    def mmd_coef(self) -> float:
        """alpha + lambda - 1: the weight of MMD^2(q(z), p(z))."""
        return self.alpha + self.lam - 1.0

    @property
    def objective(self) -> str:  # type: ignore[override]
        """What is minimised, for tables."""
        return f"-(recon - {self.kl_coef:g}*KL) + {self.mmd_coef:g}*MMD^2 ({self.kernel})"

    def loss(self, out: ForwardPass, x: Tensor) -> dict[str, Tensor]:
        """-(recon - (1-alpha) w kl) [B] + (alpha+lambda-1) * mmd (a batch scalar), and the ELBO."""
        terms = self.elbo_terms(out)
        mmd = mmd_to_prior(out.z, out.prior, self.kernel, self.kernel_scales)
        loss = -(out.recon - self.kl_coef * self.kl_weight * out.kl) + self.mmd_coef * mmd
        return {"loss": loss, **terms, "mmd": mmd}
