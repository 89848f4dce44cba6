"""WAE-MMD (Tolstikhin, Bousquet, Gelly, Schoelkopf 2018, "Wasserstein auto-encoders").

The objective is not an ELBO: a reconstruction cost plus a divergence between the aggregate
posterior q(z) = E_x q(z|x) and the prior p(z) = N(0, I), in the notation of base.py::

    loss = cost(x, z) + lambda * mmd,   z ~ q(z|x)

    cost = -recon = -log p(x|z)                    (``cost: nll``, the configured likelihood)
         | ||x - E[x|z]||^2 summed over pixels     (``cost: l2sq``, the paper's c(x, y))

``mmd`` is the unbiased U-statistic of MMD^2 between the batch's codes and as many draws of
p(z) (:func:`vae_zoo.kernels.mmd_unbiased`): a batch-level scalar, unbiased for
MMD^2(q(z), p(z)); under DDP each rank estimates it on its own batch (the averaged gradient
stays unbiased). Default kernel: the paper's IMQ k = C / (C + ||z - z'||^2) summed over
C = 2 * D * s, s in {0.1, 0.2, 0.5, 1, 2, 5, 10} (D = latent_dim), and lambda = 10 (the
paper's MNIST value, there with the squared cost scaled by 0.05; with ``cost: nll`` on
Bernoulli pixels the cost is in nats).

Encoders (``encoder_noise``):

* ``deterministic`` (the paper's MNIST model): q(z|x) is a point mass at the encoder mean
  (:class:`~vae_zoo.distributions.PointMass`; the encoder's log-variance output is unused).
  There is no density, hence no KL, no ELBO and no log-weights: ``elbo``, ``kl``, ``nll``,
  ``bpd`` and ``kl_dim_max`` are absent (``has_likelihood`` is False), not zero.
* ``gaussian``: q(z|x) = N(mu, diag(exp(logvar))), z reparameterized. The objective is the same
  (nothing pulls the variances towards the prior's; they may shrink to exp(logvar_min)). The
  model is then a decoder + prior with a proposal q, so the importance-sampled ``nll`` with q as
  proposal IS a valid estimate of -log p(x) of the trained decoder and prior (any proposal
  whose support covers the posterior gives a consistent estimate; a poor one only needs more
  samples), and ``elbo`` = recon - KL(q || p) is a valid lower bound of that log p(x): both
  are reported, next to ``kl``, but the training objective is still not an ELBO.

Terms: ``loss``, ``cost``, ``recon`` per example [B], ``mmd`` a batch scalar, plus ``elbo``
and ``kl`` [B] with the Gaussian encoder.
"""

from collections.abc import Sequence
from typing import Literal

from torch import Tensor
from torch.distributions import Distribution

from vae_zoo.distributions import PointMass
from vae_zoo.errors import ConfigError
from vae_zoo.kernels import WAE_SCALES, check_kernel, mmd_to_prior
from vae_zoo.models.base import BaseVAE, ForwardPass
from vae_zoo.models.registry import register_model

ENCODER_NOISE = ("deterministic", "gaussian")
COSTS = ("nll", "l2sq")


@register_model("wae")
class WAE(BaseVAE):
    """WAE-MMD: reconstruction cost + lambda * MMD^2(q(z), p(z)); not an ELBO.

    Args:
        lam: weight lambda of MMD^2 (>= 0).
        encoder_noise: ``deterministic`` (point-mass q(z|x)) or ``gaussian``.
        cost: ``nll`` (-log p(x|z) of the configured likelihood) or ``l2sq`` (||x - E[x|z]||^2).
        kernel: ``imq`` or ``rbf``.
        kernel_scales: scales s of C = 2 * latent_dim * s; several add their kernels.
    """

    def __init__(
        self,
        *args,
        lam: float = 10.0,
        encoder_noise: Literal["deterministic", "gaussian"] = "deterministic",
        cost: Literal["nll", "l2sq"] = "nll",
        kernel: Literal["rbf", "imq"] = "imq",
        kernel_scales: Sequence[float] = WAE_SCALES,
        **kwargs,
    ) -> None:
        if not lam >= 0:
            raise ConfigError(f"lam (the MMD weight) must be >= 0, got {lam}")
        if encoder_noise not in ENCODER_NOISE:
            raise ConfigError(
                f"encoder_noise must be one of {', '.join(ENCODER_NOISE)}, got {encoder_noise!r}"
            )
        if cost not in COSTS:
            raise ConfigError(f"cost must be one of {', '.join(COSTS)}, got {cost!r}")
        scales = check_kernel(kernel, kernel_scales)
        super().__init__(*args, **kwargs)
        self.lam = lam
        self.encoder_noise = encoder_noise
        self.cost = cost
        self.kernel = kernel
        self.kernel_scales = scales

    @property
    def has_likelihood(self) -> bool:  # type: ignore[override]
        """Only a Gaussian encoder gives log-weights (and so ``nll``)."""
        return self.encoder_noise == "gaussian"

    @property
    def objective(self) -> str:  # type: ignore[override]
        """What is minimised, for tables: says that it is not an ELBO."""
        # no "|" in it: the string goes into markdown tables
        cost = "-recon" if self.cost == "nll" else "sq.error"
        return f"{cost} + {self.lam:g}*MMD^2 ({self.kernel}, {self.encoder_noise}): not an ELBO"

    def posterior(self, x: Tensor, c: Tensor | None = None) -> Distribution:
        """A point mass at the encoder mean, or the Gaussian of the base."""
        if self.encoder_noise == "gaussian":
            return super().posterior(x, c)
        return PointMass(self.encode(x, c)[0])

    def kl(
        self, posterior: Distribution, prior: Distribution, z: Tensor
    ) -> tuple[Tensor | None, Tensor | None]:
        """No KL for a point mass (it has no density); the Gaussian's closed form otherwise."""
        if isinstance(posterior, PointMass):
            return None, None
        return super().kl(posterior, prior, z)

    def loss(self, out: ForwardPass, x: Tensor) -> dict[str, Tensor]:
        """cost [B] + lambda * mmd (a batch scalar); ``elbo``/``kl`` only with a Gaussian q."""
        if self.cost == "nll":
            cost = -out.recon
        else:
            mean = self.likelihood.mean(out.params).to(x.dtype)
            cost = (x - mean).pow(2).flatten(1).sum(1)
        mmd = mmd_to_prior(out.z, out.prior, self.kernel, self.kernel_scales)
        terms = {"loss": cost + self.lam * mmd, "cost": cost, "recon": out.recon}
        if out.kl is not None:
            terms.update(elbo=out.recon - out.kl, kl=out.kl)
        return {**terms, "mmd": mmd}
