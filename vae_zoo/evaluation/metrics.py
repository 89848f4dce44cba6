"""Metrics accumulated over an evaluation split with torchmetrics (synchronised across ranks)."""

import math
from typing import Any

from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric


class VAEMetrics(nn.Module):
    """Per-example means of the ELBO terms and the IW NLL for one split (``val`` or ``test``).

    ``nll`` is -log p(x) estimated with importance sampling, in nats per example; ``bpd`` is the
    same in bits per dimension (nll / (C*H*W * ln 2)).
    """

    def __init__(self, stage: str, model: Any) -> None:
        super().__init__()
        self.stage = stage
        self.num_dims = math.prod(model.image_shape)
        self.means = nn.ModuleDict(
            {name: MeanMetric() for name in ("loss", "elbo", "recon", "kl", "nll", "bpd")}
        )
        self._seen_nll = False

    def update(
        self, x: Tensor, y: Tensor | None, out: Any, terms: dict[str, Tensor], nll: Tensor | None
    ) -> None:
        """Add one batch: ``terms`` are [B] tensors from ``BaseVAE.terms``, ``nll`` is [B] or None."""
        for name in ("loss", "elbo", "recon", "kl"):
            self.means[name].update(terms[name])
        if nll is not None:
            self._seen_nll = True
            self.means["nll"].update(nll)
            self.means["bpd"].update(nll / (self.num_dims * math.log(2.0)))

    def loggable(self) -> dict[str, Metric]:
        """Metric objects keyed ``<stage>/<name>`` for ``LightningModule.log_dict``."""
        names = [n for n in self.means if self._seen_nll or n not in ("nll", "bpd")]
        return {f"{self.stage}/{n}": self.means[n] for n in names}
