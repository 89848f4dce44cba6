"""The importance-weighted autoencoder (Burda, Grosse, Salakhutdinov 2015, arXiv:1509.00519).

The same model as the VAE (q(z|x), p(z) = N(0, I), p(x|z)); only the objective differs. With
the notation of :mod:`vae_zoo.models.base`::

    log w_i  = log p(x|z_i) + log p(z_i) - log q(z_i|x),   z_1..z_k ~ q(z|x) (reparameterized)
    iw_bound = logsumexp_i log w_i - log k                  (L_k; L_1 is the one-sample ELBO)
    loss     = -iw_bound

E[L_1] = ELBO <= E[L_k] <= E[L_m] <= log p(x) for k <= m (Burda et al., Theorem 1). z_1 is the
sample of the forward pass (``out.z``, whose ``recon`` is already decoded); z_2..z_k come from
:meth:`BaseVAE.log_weights`, so a step decodes k samples per image, not k + 1. The gradient is
the plain reparameterized gradient of L_k, as in the paper.

Terms, all per example [B]: ``loss``, ``iw_bound``, and the one-sample pass's ``elbo``,
``recon``, ``kl`` (closed-form KL against N(0, I)), which keep their meaning from ``base.py``.
No batch-level terms, so DDP needs nothing special.
"""

import math

import torch
from torch import Tensor
from torch.distributions import Distribution

from vae_zoo.distributions import DiagNormal
from vae_zoo.errors import ConfigError
from vae_zoo.models.base import BaseVAE, ForwardPass
from vae_zoo.models.registry import register_model
from vae_zoo.schedules import KLSchedule


@register_model("iwae")
class IWAE(BaseVAE):
    """Importance-weighted autoencoder: minimises -L_k, the k-sample importance-weighted bound.

    Args:
        k: importance samples per training example (k=1 is the VAE's one-sample ELBO).
        *args, **kwargs: the arguments of :class:`BaseVAE` (networks, likelihood, ``val_k``...).
            ``kl_schedule`` must stay the constant weight 1: the bound has no KL term to weight.
    """

    def __init__(self, *args, k: int = 5, **kwargs) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be an integer >= 1 (importance samples), got k={k!r}")
        super().__init__(*args, **kwargs)
        schedule = self.kl_schedule
        if type(schedule) is not KLSchedule or schedule.weight != 1.0:
            raise ConfigError(
                f"kl_schedule must be the constant weight 1 for IWAE (got {schedule!r}): the "
                "importance weights need the whole log p(z) - log q(z|x), there is no KL to weight"
            )
        self.k = k

    @property
    def objective(self) -> str:
        """What is minimised, for tables."""
        return f"-L_k, IW bound k={self.k}"

    def posterior(self, x: Tensor, c: Tensor | None = None) -> Distribution:
        """q(z|x): the base's diagonal Gaussian, in at least float32 also under autocast.

        The log-weights are differences of log-densities of ~100 nats that then go through
        logsumexp; bfloat16 (8 bits of mantissa) would round each by ~0.5 nats.
        """
        mu, logvar = self.encode(x, c)
        wide = torch.promote_types(mu.dtype, torch.float32)
        return DiagNormal(mu.to(wide), logvar.to(wide))

    def iw_log_weights(self, out: ForwardPass, x: Tensor) -> Tensor:
        """log w_1..log w_k [k, B]: w_1 at the forward pass's z, k - 1 fresh reparameterized z."""
        first = out.recon + out.prior.log_prob(out.z) - out.posterior.log_prob(out.z)
        if self.k == 1:
            return first.unsqueeze(0)
        rest = self.log_weights(x, None, self.k - 1, out=out)
        return torch.cat([first.unsqueeze(0), rest.to(first.dtype)])

    def loss(self, out: ForwardPass, x: Tensor) -> dict[str, Tensor]:
        """``loss`` = -L_k, ``iw_bound`` = L_k, and the one-sample ``elbo``, ``recon``, ``kl``."""
        log_w = self.iw_log_weights(out, x)
        bound = torch.logsumexp(log_w, dim=0) - math.log(self.k)
        return {"loss": -bound, "iw_bound": bound, **self.elbo_terms(out)}
