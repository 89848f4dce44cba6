"""The one place where the ELBO lives: :class:`BaseVAE`, shared by every variant.

Notation (all per example, in nats, summed over pixels and latent dimensions)::

    recon = E_q(z|x)[log p(x|z)]          (one reparameterized sample)
    kl    = KL(q(z|x) || p(z))            (closed form for the Gaussian pair)
    elbo  = recon - kl                    (a lower bound on log p(x))
    loss  = the per-example quantity a variant minimises; the plain VAE uses -(recon - kl)

Reported numbers are per-example means of these ([B] tensors averaged over the data set),
never per-pixel means. A variant changes the objective by overriding :meth:`BaseVAE.loss`
(and, for conditional models, :meth:`BaseVAE.condition` / :meth:`BaseVAE.prior`).
"""

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import Tensor

from vae_zoo.errors import ConfigError, NonFiniteLossError
from vae_zoo.gaussian import diag_normal_log_prob, gaussian_kl
from vae_zoo.likelihoods import Bernoulli, Likelihood
from vae_zoo.networks import DecoderFactory, EncoderFactory, MLPDecoder, MLPEncoder
from vae_zoo.schedules import KLSchedule


@dataclass
class ForwardPass:
    """Everything one pass x -> q(z|x) -> z -> p(x|z) produces, for losses and metrics."""

    mu: Tensor  # [B, D] mean of q(z|x)
    logvar: Tensor  # [B, D] log-variance of q(z|x), clamped
    z: Tensor  # [B, D] one reparameterized sample
    params: Tensor  # [B, *param_shape] likelihood parameters
    recon: Tensor  # [B] log p(x|z)
    kl_per_dim: Tensor  # [B, D] KL(q||p) per latent dimension


def _forward_pass_of(model: "BaseVAE", x: Tensor, c: Tensor | None) -> ForwardPass:
    return model._forward_pass(x, c)


@functools.cache
def compiled_forward_pass() -> Callable[["BaseVAE", Tensor, Tensor | None], ForwardPass]:
    """``torch.compile`` of ``model._forward_pass(x, c)``, one function shared by every model.

    The model is an argument, not bound: a compiled bound method kept on the model cannot be
    pickled, and ``copy.deepcopy`` of the model would keep calling the original's weights.
    """
    return torch.compile(_forward_pass_of)


class BaseVAE(L.LightningModule):
    """Shared VAE machinery: encoder/decoder/likelihood, the ELBO, IW log-likelihood, logging.

    Args:
        latent_dim: size D of z.
        image_shape: (C, H, W) of the data.
        encoder: encoder class (or partial), called ``encoder(image_shape, latent_dim, cond_dim)``.
        decoder: decoder class (or partial) called as ``decoder(latent_dim, out_shape, cond_dim)``.
        likelihood: p(x|z); ``None`` means :class:`~vae_zoo.likelihoods.Bernoulli`.
        kl_schedule: KL weight during training (warm-up, cyclical); ``None`` means constant 1.
        lr: Adam learning rate (``--optimizer`` on the command line replaces the optimizer).
        weight_decay: Adam weight decay.
        logvar_min: lower clamp of the encoder log-variance (sigma >= exp(logvar_min / 2)).
        logvar_max: upper clamp of the encoder log-variance; the clamp keeps exp() finite.
        val_k: importance samples for ``val/nll`` (0 disables it; validation stays cheap).
        test_k: importance samples for ``test/nll`` (5000 for reported numbers).
        iw_rows: decoder rows per chunk in :meth:`log_likelihood`, bounding its memory.
        compile: run the ELBO computation through ``torch.compile``.
    """

    def __init__(
        self,
        latent_dim: int = 32,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        encoder: EncoderFactory = MLPEncoder,
        decoder: DecoderFactory = MLPDecoder,
        likelihood: Likelihood | None = None,
        kl_schedule: KLSchedule | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        logvar_min: float = -10.0,
        logvar_max: float = 10.0,
        val_k: int = 20,
        test_k: int = 5000,
        iw_rows: int = 16384,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if latent_dim <= 0:
            raise ConfigError(f"latent_dim must be a positive integer, got {latent_dim}")
        if not logvar_min < logvar_max:
            raise ConfigError(f"need logvar_min < logvar_max, got {logvar_min} >= {logvar_max}")
        if val_k < 0 or test_k < 1:
            raise ConfigError(
                f"need val_k >= 0 and test_k >= 1, got val_k={val_k}, test_k={test_k}"
            )
        if lr <= 0:
            raise ConfigError(f"lr must be > 0, got {lr}")
        with warnings.catch_warnings():
            # Lightning suggests ignoring nn.Module arguments, but the likelihood must stay in
            # the hyperparameters: load_from_checkpoint rebuilds the model from them.
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters()
        self.latent_dim = latent_dim
        self.image_shape = tuple(image_shape)
        self.likelihood = likelihood if likelihood is not None else Bernoulli()
        self.kl_schedule = kl_schedule if kl_schedule is not None else KLSchedule()
        self.encoder = encoder(self.image_shape, latent_dim, self.cond_dim)
        out_shape = self.likelihood.param_shape(self.image_shape)
        self.decoder = decoder(latent_dim, out_shape, self.cond_dim)
        self._compiled = compile  # a flag, not a compiled callable: see compiled_forward_pass
        self._build_metrics()

    # ----------------------------------------------------------------- conditioning hooks
    @property
    def cond_dim(self) -> int:
        """Width of the condition vector c fed to encoder and decoder (0: unconditional)."""
        return 0

    def condition(self, y: Tensor | None) -> Tensor | None:
        """Turn a batch's labels into the condition c; unconditional models ignore labels."""
        return None

    def prior(self, c: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """(mean, log-variance) of p(z[|c]); ``(None, None)`` is the standard normal N(0, I)."""
        return None, None

    # ----------------------------------------------------------------- the model
    def encode(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Parameters of q(z|x[,c]): x [B, C, H, W] -> (mu [B, D], logvar [B, D])."""
        mu, logvar = self.encoder(x, self.condition(c))
        return mu, logvar.clamp(self.hparams.logvar_min, self.hparams.logvar_max)

    def reparameterize(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """z = mu + exp(logvar / 2) * eps with eps ~ N(0, I), differentiable in mu and logvar."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def decode(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        """Likelihood parameters of p(x|z[,c]) (Bernoulli: logits): z [B, D] -> [B, P*C, H, W]."""
        return self.decoder(z, self.condition(c))

    def _forward_pass(self, x: Tensor, c: Tensor | None) -> ForwardPass:
        mu, logvar = self.encode(x, c)
        z = self.reparameterize(mu, logvar)
        params = self.decode(z, c)
        prior_mu, prior_logvar = self.prior(self.condition(c))
        return ForwardPass(
            mu=mu,
            logvar=logvar,
            z=z,
            params=params,
            recon=self.likelihood.log_prob(params, x),
            kl_per_dim=gaussian_kl(mu, logvar, prior_mu, prior_logvar),
        )

    def forward(self, x: Tensor, c: Tensor | None = None) -> ForwardPass:
        """One pass x -> q(z|x) -> z -> p(x|z) with everything the losses and metrics need."""
        if self._compiled:
            return compiled_forward_pass()(self, x, c)
        return self._forward_pass(x, c)

    # ----------------------------------------------------------------- the objective
    @property
    def kl_weight(self) -> float:
        """KL weight of the schedule at this step while training, its final value otherwise."""
        if self.training:
            return self.kl_schedule(self.global_step)
        return self.kl_schedule.final

    def loss(self, recon: Tensor, kl: Tensor) -> Tensor:
        """Per-example loss to minimise; the VAE's is -(recon - w * kl), w the KL weight."""
        return -(recon - self.kl_weight * kl)

    def terms(self, out: ForwardPass) -> dict[str, Tensor]:
        """The ELBO and its parts, per example in nats, from one forward pass."""
        kl = out.kl_per_dim.sum(1)
        return {
            "elbo": out.recon - kl,
            "recon": out.recon,
            "kl": kl,
            "loss": self.loss(out.recon, kl),
        }

    def elbo(self, x: Tensor, c: Tensor | None = None) -> dict[str, Tensor]:
        """Per-example ``elbo``, ``recon``, ``kl`` and ``loss`` ([B] tensors, nats)."""
        return self.terms(self(x, c))

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, c: Tensor | None = None, k: int = 5000) -> Tensor:
        """Importance-weighted estimate of log p(x[|c]) with k samples (Burda et al. 2015): [B].

        log p(x) ~ logsumexp_i [log p(x|z_i) + log p(z_i) - log q(z_i|x)] - log k, z_i ~ q(z|x).
        Samples are drawn in chunks of about ``iw_rows`` decoder rows so k=5000 fits in memory.
        The estimate is a lower bound in expectation and tightens as k grows.
        """
        if k < 1:
            raise ConfigError(f"log_likelihood needs k >= 1, got {k}")
        mu, logvar = self.encode(x, c)
        cond = self.condition(c)
        prior_mu, prior_logvar = self.prior(cond)
        batch = x.shape[0]
        per_chunk = max(1, min(k, self.hparams.iw_rows // max(batch, 1)))
        log_w = []
        for start in range(0, k, per_chunk):
            s = min(per_chunk, k - start)
            z = self.reparameterize(mu.expand(s, -1, -1), logvar.expand(s, -1, -1))  # [s, B, D]
            log_q = diag_normal_log_prob(z, mu, logvar)
            log_p = diag_normal_log_prob(z, prior_mu, prior_logvar)
            flat_c = None if c is None else c.repeat(s, *([1] * (c.dim() - 1)))
            params = self.decode(z.reshape(s * batch, -1), flat_c)
            x_rep = x.expand(s, *x.shape).reshape(s * batch, *x.shape[1:])
            log_px = self.likelihood.log_prob(params, x_rep).view(s, batch)
            log_w.append(log_px + log_p - log_q)
        return torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k)

    @torch.no_grad()
    def sample(self, n: int, c: Tensor | int | None = None, mean: bool = True) -> Tensor:
        """Images from the prior: z ~ p(z[|c]), x = E[x|z] (or a draw): [n, C, H, W]."""
        cond = self.condition(c)
        prior_mu, prior_logvar = self.prior(cond)
        z = torch.randn(n, self.latent_dim, device=self.device)
        if prior_mu is not None:
            z = prior_mu + torch.exp(0.5 * prior_logvar) * z
        params = self.decoder(z, cond)
        return self.likelihood.mean(params) if mean else self.likelihood.sample(params)

    # ----------------------------------------------------------------- Lightning
    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> "BaseVAE":
        """Lightning's loader, first refusing a checkpoint written by another variant.

        ``BaseVAE.load_from_checkpoint`` loads any variant; ``VAE.load_from_checkpoint`` of a
        ConditionalVAE checkpoint raises :class:`~vae_zoo.errors.CheckpointMismatchError`.
        """
        from vae_zoo.checkpoints import check_checkpoint_class

        written_by = check_checkpoint_class(checkpoint_path, cls)
        if written_by is not None and written_by is not cls:
            # Lightning drops ``_class_path`` for classes without **kwargs (BaseVAE, VAE)
            return written_by.load_from_checkpoint(checkpoint_path, *args, **kwargs)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def _unpack(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        if isinstance(batch, (tuple, list)):
            return batch[0], (batch[1] if len(batch) > 1 else None)
        return batch, None

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Minimise the mean per-example loss over the batch."""
        x, y = self._unpack(batch)
        terms = self.elbo(x, y)
        loss = terms["loss"].mean()
        self._check_finite(loss, terms)
        if self._writes_step_logs():
            scalars = {f"train/{k}": v.mean() for k, v in terms.items()}
            self.log_dict({**scalars, "train/kl_weight": self.kl_weight}, prog_bar=False)
        return loss

    def _writes_step_logs(self) -> bool:
        """Whether Lightning writes step metrics after this batch (else train/* are not logged).

        Each ``self.log`` costs about 1 ms on a CPU (Lightning re-places its result state on
        every call): 5 ms a step for the train scalars, over 10% of an MLP VAE step. Logging
        them only when Lightning writes (every ``log_every_n_steps``, at the last batch of an
        epoch, at ``max_steps``) gives the loggers the same rows; ``trainer.callback_metrics``
        holds the last logged values in between.
        """
        trainer = self._trainer
        if trainer is None:
            return True  # let self.log warn as usual
        connector = getattr(trainer, "_logger_connector", None)
        if getattr(connector, "should_update_logs", True):
            return True
        if trainer.fast_dev_run or trainer.is_last_batch:
            return True
        return 0 <= trainer.max_steps <= trainer.global_step + 1

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Accumulate validation metrics (``val/nll`` with ``val_k`` importance samples)."""
        self._evaluate(batch, self.val_metrics, self.hparams.val_k)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Accumulate test metrics (``test/nll`` with ``test_k`` importance samples)."""
        self._evaluate(batch, self.test_metrics, self.hparams.test_k)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """Posterior means, log-variances and reconstructions (means of p(x|z=mu)) of a batch."""
        x, y = self._unpack(batch)
        mu, logvar = self.encode(x, y)
        reconstruction = self.likelihood.mean(self.decode(mu, y))
        out = {"mu": mu, "logvar": logvar, "reconstruction": reconstruction}
        if y is not None:
            out["y"] = y
        return out

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over all parameters (replaced by ``--optimizer``/``--lr_scheduler`` when given)."""
        return torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )

    def _build_metrics(self) -> None:
        from vae_zoo.evaluation.metrics import VAEMetrics

        self.val_metrics = VAEMetrics("val", self)
        self.test_metrics = VAEMetrics("test", self)

    def _evaluate(self, batch: Any, metrics: Any, k: int) -> None:
        x, y = self._unpack(batch)
        out = self(x, y)
        nll = -self.log_likelihood(x, y, k=k) if k > 0 else None
        # the mean image at z = mu, for the likelihood-independent squared error
        reconstruction = self.likelihood.mean(self.decode(out.mu, y))
        metrics.update(x, y, out, self.terms(out), nll, reconstruction=reconstruction)
        self.log_dict(metrics.loggable(), prog_bar=False)

    def _check_finite(self, loss: Tensor, terms: dict[str, Tensor]) -> None:
        if torch.isfinite(loss):
            return
        bad = [k for k, v in terms.items() if not torch.isfinite(v).all()]
        raise NonFiniteLossError(
            f"non-finite training loss at global step {self.global_step} "
            f"(epoch {self.current_epoch}); non-finite terms: {', '.join(bad) or 'loss'}. "
            "Lower the learning rate, narrow logvar_min/logvar_max, or use gradient clipping "
            "(--trainer.gradient_clip_val=1.0)."
        )
