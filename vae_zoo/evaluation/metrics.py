"""Metrics accumulated over an evaluation split with torchmetrics (synchronised across ranks).

Every state is a sum (``dist_reduce_fx="sum"``), so values merged from several ranks, or from
several batches, equal the value of one pass over all the examples.
"""

import math
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric

#: Burda et al. (2015): unit u is active when Cov_x(E_q[z_u]) exceeds this.
ACTIVE_UNIT_THRESHOLD = 0.01


class KLPerDim(Metric):
    """Mean KL(q(z|x) || p(z)) of each latent dimension over the split, in nats.

    ``compute()`` returns the largest of them (a scalar ``self.log`` accepts); ``per_dim()``
    returns the whole [D] vector.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, latent_dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("kl_sum", torch.zeros(latent_dim), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, kl_per_dim: Tensor) -> None:
        """Add a batch of per-example, per-dimension KLs [B, D]."""
        self.kl_sum += kl_per_dim.detach().sum(0).to(self.kl_sum.dtype)
        self.count += kl_per_dim.shape[0]

    def _per_dim(self) -> Tensor:
        return self.kl_sum / self.count.clamp_min(1)

    def compute(self) -> Tensor:
        """The largest per-dimension mean KL (the most used latent dimension)."""
        return self._per_dim().max()

    def per_dim(self) -> Tensor:
        """Mean KL of every latent dimension, synchronised across ranks: [D]."""
        with self.sync_context():
            return self._per_dim().clone()


class ActiveUnits(Metric):
    """Number of active latent units (Burda et al. 2015): Cov_x(E_q[z_u]) > ``threshold``.

    The variance over the split of the posterior mean of each unit is computed from running
    sums of mu and mu^2, which add across batches and ranks.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(
        self, latent_dim: int, threshold: float = ACTIVE_UNIT_THRESHOLD, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold
        self.add_state("mu_sum", torch.zeros(latent_dim), dist_reduce_fx="sum")
        self.add_state("mu_sq_sum", torch.zeros(latent_dim), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, mu: Tensor) -> None:
        """Add a batch of posterior means [B, D]."""
        mu = mu.detach().to(self.mu_sum.dtype)
        self.mu_sum += mu.sum(0)
        self.mu_sq_sum += mu.pow(2).sum(0)
        self.count += mu.shape[0]

    def _variance(self) -> Tensor:
        n = self.count.clamp_min(1)
        # E[mu^2] - E[mu]^2 can dip below 0 by rounding for a collapsed unit
        return (self.mu_sq_sum / n - (self.mu_sum / n).pow(2)).clamp_min(0.0)

    def compute(self) -> Tensor:
        """How many units have a posterior-mean variance above the threshold."""
        return (self._variance() > self.threshold).sum().to(self.mu_sum.dtype)

    def variances(self) -> Tensor:
        """Variance over the split of each unit's posterior mean, synchronised: [D]."""
        with self.sync_context():
            return self._variance().clone()


class VAEMetrics(nn.Module):
    """Everything reported for one split (``val`` or ``test``), logged as ``<stage>/<name>``.

    Per-example means in nats: ``loss``, ``elbo``, ``recon``, ``kl``; ``nll`` = -log p(x)
    estimated with importance sampling and ``bpd`` = nll / (C*H*W * ln 2) when an estimate is
    given; ``mse`` = mean squared error per pixel between x and the mean reconstruction
    E[x | z = mu] on [0, 1] pixels (comparable across likelihoods) when reconstructions are
    given; ``kl_dim_max`` = the largest per-dimension mean KL; ``active_units`` = the number
    of active units (see :class:`ActiveUnits`).
    """

    def __init__(
        self, stage: str, model: Any, active_threshold: float = ACTIVE_UNIT_THRESHOLD
    ) -> None:
        super().__init__()
        self.stage = stage
        self.num_dims = math.prod(model.image_shape)
        self.means = nn.ModuleDict(
            {name: MeanMetric() for name in ("loss", "elbo", "recon", "kl", "nll", "bpd", "mse")}
        )
        self.kl_dim = KLPerDim(model.latent_dim)
        self.active = ActiveUnits(model.latent_dim, threshold=active_threshold)
        self._seen_nll = False
        self._seen_mse = False

    def update(
        self,
        x: Tensor,
        y: Tensor | None,
        out: Any,
        terms: dict[str, Tensor],
        nll: Tensor | None,
        reconstruction: Tensor | None = None,
    ) -> None:
        """Add one batch.

        ``out`` is the batch's ``ForwardPass``, ``terms`` the [B] tensors of
        ``BaseVAE.terms``, ``nll`` a [B] IW estimate of -log p(x) or None, ``reconstruction``
        the mean images E[x | z = mu] [B, C, H, W] in [0, 1] or None.
        """
        for name in ("loss", "elbo", "recon", "kl"):
            self.means[name].update(terms[name].detach())
        self.kl_dim.update(out.kl_per_dim)
        self.active.update(out.mu)
        if nll is not None:
            self._seen_nll = True
            self.means["nll"].update(nll)
            self.means["bpd"].update(nll / (self.num_dims * math.log(2.0)))
        if reconstruction is not None:
            self._seen_mse = True
            err = (reconstruction.detach().to(x.dtype) - x).pow(2).flatten(1).mean(1)
            self.means["mse"].update(err)

    def _names(self) -> list[str]:
        skip = set()
        if not self._seen_nll:
            skip |= {"nll", "bpd"}
        if not self._seen_mse:
            skip.add("mse")
        return [n for n in self.means if n not in skip]

    def loggable(self) -> dict[str, Metric]:
        """Metric objects keyed ``<stage>/<name>`` for ``LightningModule.log_dict``."""
        out: dict[str, Metric] = {f"{self.stage}/{n}": self.means[n] for n in self._names()}
        out[f"{self.stage}/kl_dim_max"] = self.kl_dim
        out[f"{self.stage}/active_units"] = self.active
        return out

    def compute(self) -> dict[str, float]:
        """Every scalar metric as a float, keyed by its bare name (``nll``, ``mse``, ...)."""
        return {name.split("/", 1)[1]: float(m.compute()) for name, m in self.loggable().items()}

    def kl_per_dim(self) -> list[float]:
        """Mean KL of every latent dimension over the split, in nats."""
        return self.kl_dim.per_dim().tolist()

    def mu_variance(self) -> list[float]:
        """Variance over the split of every unit's posterior mean (the active-unit statistic)."""
        return self.active.variances().tolist()

    def reset(self) -> None:
        """Forget everything accumulated, ready for another pass."""
        for m in [*self.means.values(), self.kl_dim, self.active]:
            m.reset()
        self._seen_nll = False
        self._seen_mse = False
