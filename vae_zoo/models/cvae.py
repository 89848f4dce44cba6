"""The conditional VAE (Sohn et al. 2015): q(z|x,c), p(x|z,c), c a one-hot class label."""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution

from vae_zoo.distributions import DiagNormal
from vae_zoo.errors import ConfigError
from vae_zoo.models.base import BaseVAE
from vae_zoo.models.registry import register_model


@register_model("cvae")
class ConditionalVAE(BaseVAE):
    """Conditional VAE (Sohn et al. 2015): q(z|x,y) and p(x|z,y) with one-hot labels y.

    ``prior="standard"`` keeps p(z|c) = N(0, I); ``prior="learned"`` learns a Gaussian
    p(z|c) = N(m_c, diag(exp(s_c))) per class, initialised at N(0, I). ``c`` may be given as
    int64 labels [B] or as one-hot rows [B, num_classes].
    """

    def __init__(
        self,
        *args,
        num_classes: int = 10,
        prior: Literal["standard", "learned"] = "standard",
        **kwargs,
    ) -> None:
        if num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
        if prior not in ("standard", "learned"):
            raise ConfigError(f"prior must be 'standard' or 'learned', got {prior!r}")
        self._num_classes = num_classes
        super().__init__(*args, **kwargs)
        self.prior_kind = prior
        if prior == "learned":
            self.prior_net = nn.Linear(num_classes, 2 * self.latent_dim, bias=False)
            nn.init.zeros_(self.prior_net.weight)

    @property
    def num_classes(self) -> int:
        """Number of classes K of the one-hot condition."""
        return self._num_classes

    @property
    def cond_dim(self) -> int:
        """The condition is a one-hot vector of ``num_classes`` entries."""
        return self._num_classes

    def condition(self, y: Tensor | None) -> Tensor:
        """Labels [B] (int) or one-hot [B, K] -> one-hot float [B, K]; checks K and label range."""
        if y is None:
            raise ConfigError(
                "ConditionalVAE needs class labels: pass c= labels, or use a data module that "
                "yields (x, y) batches"
            )
        # 2-D rows are one-hot, whatever their dtype (F.one_hot gives int64 rows)
        if y.dim() == 2 or y.is_floating_point():
            if y.dim() != 2 or y.shape[1] != self._num_classes:
                raise ConfigError(
                    f"condition has shape {tuple(y.shape)}, expected [B, {self._num_classes}] "
                    f"one-hot rows (num_classes={self._num_classes}); set model.num_classes to "
                    "the data set's number of classes"
                )
            return y.to(self.dtype)
        if y.dim() != 1:
            raise ConfigError(
                f"labels have shape {tuple(y.shape)}; give int labels [B] or one-hot rows "
                f"[B, {self._num_classes}]"
            )
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self._num_classes):
            raise ConfigError(
                f"label {int(y.max()) if int(y.max()) >= self._num_classes else int(y.min())} is "
                f"out of range for num_classes={self._num_classes}; set model.num_classes to the "
                "data set's number of classes"
            )
        return F.one_hot(y.long(), self._num_classes).to(self.dtype)

    def prior(self, c: Tensor | None = None) -> Distribution:
        """Standard normal, or the learned class-conditional Gaussian of the labels c."""
        if self.prior_kind == "standard":
            return super().prior(c)
        mu, logvar = self.prior_net(self.condition(c)).chunk(2, dim=1)
        return DiagNormal(mu, logvar.clamp(self.hparams.logvar_min, self.hparams.logvar_max))

    def labels_for(self, n: int, c: Tensor | int | None) -> Tensor:
        """n labels: ``None`` cycles 0..K-1, an int repeats one class, a tensor is used as is."""
        if c is None:
            return torch.arange(n, device=self.device) % self._num_classes
        if isinstance(c, int):
            return torch.full((n,), c, dtype=torch.long, device=self.device)
        if len(c) != n:
            raise ConfigError(f"sample(n={n}) got {len(c)} conditions; give one per sample")
        return c.to(self.device)

    def sample_latent(self, n: int, c: Tensor | int | None = None) -> Tensor:
        """n draws z ~ p(z|c) of the asked classes (labels, one int, or None: 0..K-1 cycled)."""
        return super().sample_latent(n, self.labels_for(n, c))

    @torch.no_grad()
    def sample(self, n: int, c: Tensor | int | None = None, mean: bool = True) -> Tensor:
        """Images of the asked classes (labels, one int, or None: 0..K-1 cycled): [n, C, H, W]."""
        return super().sample(n, self.labels_for(n, c), mean=mean)
