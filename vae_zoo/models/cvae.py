"""The conditional VAE (Sohn et al. 2015): q(z|x,c), p(x|z,c), c a one-hot class label."""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution

from vae_zoo.distributions import DiagNormal, MixtureOfDiagNormals
from vae_zoo.errors import ConfigError
from vae_zoo.models.base import BaseVAE
from vae_zoo.models.registry import register_model
from vae_zoo.models.vamp_vae import at_least_float32, check_pseudo_inputs, pseudo_input_logits


@register_model("cvae")
class ConditionalVAE(BaseVAE):
    """Conditional VAE (Sohn et al. 2015): q(z|x,y) and p(x|z,y) with one-hot labels y.

    ``prior="standard"`` keeps p(z|c) = N(0, I); ``prior="learned"`` learns a Gaussian
    p(z|c) = N(m_c, diag(exp(s_c))) per class, initialised at N(0, I); ``prior="vamp"`` is a
    class-conditional VampPrior (Tomczak & Welling 2018, one per class):
    p(z|c) = (1/K) sum_k q(z|u_ck, c) over K learned pseudo-inputs u_c1..u_cK of class c
    (``pseudo_inputs_per_class``, initialised as the VampPrior VAE's), whose KL is the
    one-sample Monte-Carlo estimate log q(z|x,c) - log p(z|c), as the VampPrior VAE's.
    ``c`` may be given as int64 labels [B] or as one-hot rows [B, num_classes].
    """

    def __init__(
        self,
        *args,
        num_classes: int = 10,
        prior: Literal["standard", "learned", "vamp"] = "standard",
        pseudo_inputs_per_class: int = 50,
        pseudo_init_mean: float = -0.05,
        pseudo_init_std: float = 0.01,
        **kwargs,
    ) -> None:
        if num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
        if prior not in ("standard", "learned", "vamp"):
            raise ConfigError(f"prior must be 'standard', 'learned' or 'vamp', got {prior!r}")
        if prior == "vamp":
            check_pseudo_inputs("pseudo_inputs_per_class", pseudo_inputs_per_class, pseudo_init_std)
        self._num_classes = num_classes
        super().__init__(*args, **kwargs)
        self.prior_kind = prior
        if prior == "learned":
            self.prior_net = nn.Linear(num_classes, 2 * self.latent_dim, bias=False)
            nn.init.zeros_(self.prior_net.weight)
        if prior == "vamp":
            # rows c*K .. c*K+K-1 are class c's pseudo-inputs
            self.pseudo_logits = pseudo_input_logits(
                num_classes * pseudo_inputs_per_class,
                self.image_shape,
                pseudo_init_mean,
                pseudo_init_std,
            )

    @property
    def objective(self) -> str:
        """What is minimised, for tables: the ELBO, or its KL-weighted form, and the prior."""
        if self.prior_kind != "vamp":
            return super().objective
        per_class = self.pseudo_logits.shape[0] // self._num_classes
        return f"{self.elbo_objective()}, class VampPrior K={per_class}, MC KL"

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

    def posterior(self, x: Tensor, c: Tensor | None = None) -> Distribution:
        """q(z|x,c); with the VampPrior in at least float32 also under autocast (its Monte-Carlo
        KL is a difference of log-densities that bfloat16 would round by ~0.5 nats)."""
        if self.prior_kind != "vamp":
            return super().posterior(x, c)
        return at_least_float32(*self.encode(x, c))

    def prior(self, c: Tensor | None = None) -> Distribution:
        """Standard normal, the learned Gaussian, or the VampPrior of each example's class c."""
        if self.prior_kind == "standard":
            return super().prior(c)
        onehot = self.condition(c)
        if self.prior_kind == "vamp":
            classes = torch.arange(self._num_classes, device=onehot.device)
            per_class = self.pseudo_logits.shape[0] // self._num_classes
            # every class's pseudo-inputs through the encoder, given their own class
            mu, logvar = self.encode(
                torch.sigmoid(self.pseudo_logits), classes.repeat_interleave(per_class)
            )
            shape = (self._num_classes, per_class, self.latent_dim)
            rows = onehot.argmax(1)
            return MixtureOfDiagNormals(mu.view(shape)[rows], logvar.view(shape)[rows])
        mu, logvar = self.prior_net(onehot).chunk(2, dim=1)
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
