"""The one place where the objective lives: :class:`BaseVAE`, shared by every variant.

Notation (per example, in nats, summed over pixels and latent dimensions)::

    q(z|x[,c])   the posterior, a distribution object   (BaseVAE.posterior)
    p(z[|c])     the prior, a distribution object       (BaseVAE.prior)
    recon = log p(x|z),  z ~ q(z|x)                      (one reparameterized sample)
    kl    = KL(q(z|x) || p(z))                           (closed form when the pair has one,
                                                          else log q(z) - log p(z) at that z)
    elbo  = recon - kl                                   (a lower bound on log p(x))
    log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x),  z_i ~ q(z|x)   (BaseVAE.log_weights)
    log p(x) ~ logsumexp_i log w_i - log k                              (BaseVAE.log_likelihood)

A variant's objective is :meth:`BaseVAE.loss`: ``loss(out, x) -> dict`` of per-example [B]
terms (or batch-level scalars, which its docstring says) with a required ``"loss"``, the
quantity minimised; ``elbo``, ``recon`` and ``kl`` keep the meanings above in every variant
that has them. Training, validation and test log every key it returns. Reported numbers are
per-example means of these terms over a split, never per-pixel means.

Hooks a variant overrides (each in its own file, registered with ``@register_model``):
``loss`` (a new objective), ``posterior``/``prior`` (new distributions), ``condition`` and
``cond_dim``/``num_classes`` (conditioning), ``auxiliary_modules`` and
``configure_auxiliary_optimizers`` (a second network with its own optimizer, trained in a
``training_step`` of its own under Lightning's manual optimisation).
"""

import functools
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from vae_zoo.distributions import DiagNormal, StandardNormal, kl_divergence, kl_per_dim
from vae_zoo.errors import CheckpointMismatchError, ConfigError, NonFiniteLossError
from vae_zoo.lightning_compat import drop_nvml_check_without_nvml, lightning_writes_step_logs
from vae_zoo.likelihoods import Bernoulli, Likelihood
from vae_zoo.metrics import SplitMetrics, StepTerms, TermMeans
from vae_zoo.models.registry import class_from_path, variant_name
from vae_zoo.networks import DecoderFactory, EncoderFactory, MLPDecoder, MLPEncoder
from vae_zoo.optimizers import adam
from vae_zoo.schedules import KLSchedule


@dataclass(eq=False)
class ForwardPass:
    """Everything one pass x -> q(z|x) -> z -> p(x|z) produces, for losses and metrics."""

    posterior: Distribution  # q(z|x[,c]), batch [B]
    prior: Distribution  # p(z[|c]), batch [B] or ()
    z: Tensor  # [B, D] one reparameterized sample
    params: Tensor  # [B, *param_shape] likelihood parameters
    recon: Tensor  # [B] log p(x|z)
    kl_per_dim: Tensor | None  # [B, D] KL(q||p) per latent dimension, when it factorises
    kl: Tensor | None  # [B] KL(q||p) (closed form or one-sample Monte Carlo); None: no density

    @property
    def mu(self) -> Tensor:
        """The posterior mean [B, D]."""
        return self.posterior.mean

    @property
    def logvar(self) -> Tensor:
        """The posterior log-variance [B, D] (diagonal-Gaussian posteriors)."""
        return self.posterior.logvar  # type: ignore[attr-defined]


@dataclass(eq=False)
class BatchEvaluation:
    """One evaluated batch: per-example terms (loss terms, ``nll``, ``bpd``, ``mse``) and more."""

    terms: dict[str, Tensor]
    out: ForwardPass
    reconstruction: Tensor  # E[x | z = posterior mean], [B, C, H, W] in [0, 1]


def _forward_pass_of(model: "BaseVAE", x: Tensor, c: Tensor | None) -> ForwardPass:
    return model._forward_pass(x, c)


@functools.cache
def compiled_forward_pass() -> Callable[["BaseVAE", Tensor, Tensor | None], ForwardPass]:
    """``torch.compile`` of ``model._forward_pass(x, c)``, one function shared by every model.

    The model is an argument, not bound: a compiled bound method kept on the model cannot be
    pickled, and ``copy.deepcopy`` of the model would keep calling the original's weights.
    """
    return torch.compile(_forward_pass_of)


def _restrict(optimizer: torch.optim.Optimizer, params: Iterator[nn.Parameter]) -> None:
    """Drop from ``optimizer`` the parameters not in ``params`` (before its first step)."""
    keep = {id(p) for p in params}
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if id(p) in keep]


class BaseVAE(L.LightningModule):
    """Shared VAE machinery: networks, distributions, the ELBO, IW log-likelihood, logging.

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
        compile: run the forward pass through ``torch.compile``.
    """

    #: name in the registry (set by ``@register_model``)
    variant_name: str = ""
    #: False for a model whose log-weights are not defined (a deterministic encoder): it
    #: reports no ``nll``/``bpd``
    has_likelihood = True
    #: True when ``log_likelihood`` estimates a bound that does not tighten with k
    #: (a discrete latent under a uniform prior): the tables label it as a bound
    likelihood_is_bound = False
    #: compare draws latent traversals of the highest-KL units (disentangling variants)
    show_traversals = False
    #: at most this many training steps' terms are held before they are checked and reduced
    MAX_HELD_STEPS = 256
    #: what ``sample`` draws z from, for the ``sample`` command's output line
    prior_description = "the prior p(z)"

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
        self.train_terms = TermMeans()
        self._held_terms = StepTerms()  # training terms not yet in train_terms (log_train)
        self.val_metrics = SplitMetrics()
        self.test_metrics = SplitMetrics()

    # ----------------------------------------------------------------- conditioning hooks
    @property
    def num_classes(self) -> int:
        """Number of classes the model is conditioned on (0: unconditional)."""
        return 0

    @property
    def cond_dim(self) -> int:
        """Width of the condition vector c fed to encoder and decoder (0: unconditional)."""
        return 0

    def condition(self, y: Tensor | None) -> Tensor | None:
        """Turn a batch's labels into the condition c; unconditional models ignore labels."""
        return None

    # ----------------------------------------------------------------- the model
    def encode(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Parameters of q(z|x[,c]): x [B, C, H, W] -> (mu [B, D], logvar [B, D])."""
        mu, logvar = self.encoder(x, self.condition(c))
        return mu, logvar.clamp(self.hparams.logvar_min, self.hparams.logvar_max)

    def posterior(self, x: Tensor, c: Tensor | None = None) -> Distribution:
        """q(z|x[,c]), batch shape [B]: a diagonal Gaussian from :meth:`encode`."""
        return DiagNormal(*self.encode(x, c))

    def prior(self, c: Tensor | None = None) -> Distribution:
        """p(z[|c]): the standard normal N(0, I) (batch shape ())."""
        return StandardNormal(self.latent_dim, device=self.device, dtype=self.dtype)

    def reparameterize(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """z = mu + exp(logvar / 2) * eps with eps ~ N(0, I), differentiable in mu and logvar."""
        return DiagNormal(mu, logvar).rsample()

    def decode(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        """Likelihood parameters of p(x|z[,c]) (Bernoulli: logits): z [B, D] -> [B, P*C, H, W]."""
        return self.decoder(z, self.condition(c))

    def reconstruct(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """Mean images E[x | z = posterior mean]: [B, C, H, W] in [0, 1]."""
        return self.likelihood.mean(self.decode(self.posterior(x, c).mean, c))

    def sample_latent(self, n: int, c: Tensor | None = None) -> Tensor:
        """n draws z ~ p(z[|c]); a conditional prior takes one condition per draw: [n, D]."""
        prior = self.prior(c)
        return prior.sample(() if len(prior.batch_shape) else (n,))

    def kl(
        self, posterior: Distribution, prior: Distribution, z: Tensor
    ) -> tuple[Tensor | None, Tensor | None]:
        """(KL per latent dimension [B, D] or None, KL [B]) of q against p at the sample z."""
        per_dim = kl_per_dim(posterior, prior)
        if per_dim is not None:
            return per_dim, per_dim.sum(-1)
        return None, kl_divergence(posterior, prior, z)

    def _forward_pass(self, x: Tensor, c: Tensor | None) -> ForwardPass:
        q = self.posterior(x, c)
        z = q.rsample()
        params = self.decode(z, c)
        p = self.prior(c)
        per_dim, kl = self.kl(q, p, z)
        recon = self.likelihood.log_prob(params, x)
        return ForwardPass(q, p, z, params, recon, per_dim, kl)

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

    @property
    def objective(self) -> str:
        """What the variant minimises, for tables: "ELBO", or its KL-weighted form (a variant
        whose objective is not the ELBO says so)."""
        label = self.elbo_objective()
        return "ELBO" if label == "-ELBO" else label

    def elbo_objective(self) -> str:
        """``-ELBO``, or ``-(recon - w*KL)`` when the KL schedule ends at a weight w != 1."""
        weight = self.kl_schedule.final
        return "-ELBO" if weight == 1 else f"-(recon - {weight:g}*KL)"

    def elbo_terms(self, out: ForwardPass) -> dict[str, Tensor]:
        """``elbo``, ``recon`` and ``kl`` of one forward pass, per example in nats ([B])."""
        return {"elbo": out.recon - out.kl, "recon": out.recon, "kl": out.kl}

    def loss(self, out: ForwardPass, x: Tensor) -> dict[str, Tensor]:
        """The VAE's terms: ``loss`` = -(recon - w * kl), w the KL weight, and the ELBO parts."""
        terms = self.elbo_terms(out)
        return {"loss": -(out.recon - self.kl_weight * out.kl), **terms}

    def elbo(self, x: Tensor, c: Tensor | None = None) -> dict[str, Tensor]:
        """The variant's terms for a batch, ``loss(forward(x, c), x)`` (ELBO parts included)."""
        return self.loss(self(x, c), x)

    def log_px(self, x: Tensor, z: Tensor, c: Tensor | None = None) -> Tensor:
        """log p(x|z) for k latent draws per image: x [B, ...], z [k, B, D] -> [k, B]."""
        k, batch = z.shape[0], z.shape[1]
        flat_c = None if c is None else c.repeat(k, *([1] * (c.dim() - 1)))
        params = self.decode(z.reshape(k * batch, *z.shape[2:]), flat_c)
        x_rep = x.expand(k, *x.shape).reshape(k * batch, *x.shape[1:])
        return self.likelihood.log_prob(params, x_rep).view(k, batch)

    def log_weights(
        self,
        x: Tensor,
        c: Tensor | None = None,
        k: int = 1,
        out: ForwardPass | None = None,
    ) -> Tensor:
        """Differentiable log importance weights log p(x|z) + log p(z) - log q(z|x): [k, B].

        z_1..z_k ~ q(z|x[,c]) are reparameterized draws. ``out`` reuses the posterior and
        prior of a forward pass of the same batch instead of encoding again.
        """
        q = self.posterior(x, c) if out is None else out.posterior
        p = self.prior(c) if out is None else out.prior
        return self._log_weights(x, c, q, p, k)

    def _log_weights(
        self, x: Tensor, c: Tensor | None, q: Distribution, p: Distribution, k: int
    ) -> Tensor:
        z = q.rsample((k,))
        return self.log_px(x, z, c) + p.log_prob(z) - q.log_prob(z)

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, c: Tensor | None = None, k: int = 5000) -> Tensor:
        """Importance-weighted estimate of log p(x[|c]) with k samples (Burda et al. 2015): [B].

        log p(x) ~ logsumexp_i log w_i - log k over :meth:`log_weights`, drawn in chunks of
        about ``iw_rows`` decoder rows so k=5000 fits in memory. The estimate is a lower bound
        in expectation and tightens as k grows.
        """
        if k < 1:
            raise ConfigError(f"log_likelihood needs k >= 1, got {k}")
        q, p = self.posterior(x, c), self.prior(c)
        per_chunk = max(1, min(k, self.hparams.iw_rows // max(x.shape[0], 1)))
        log_w = [
            self._log_weights(x, c, q, p, min(per_chunk, k - start))
            for start in range(0, k, per_chunk)
        ]
        return torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k)

    @torch.no_grad()
    def sample(self, n: int, c: Tensor | int | None = None, mean: bool = True) -> Tensor:
        """Images from the prior: z ~ p(z[|c]), x = E[x|z] (or a draw): [n, C, H, W]."""
        params = self.decode(self.sample_latent(n, c), c)
        return self.likelihood.mean(params) if mean else self.likelihood.sample(params)

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate_batch(self, x: Tensor, y: Tensor | None = None, k: int = 0) -> BatchEvaluation:
        """The variant's terms plus ``nll``/``bpd`` (k importance samples, k > 0) and ``mse``.

        ``mse`` is the per-pixel squared error of the mean reconstruction E[x | z = posterior
        mean] on [0, 1] pixels (comparable across likelihoods). Used by validation, test and
        ``compare`` alike, so they report the same numbers.
        """
        out = self(x, y)
        terms = dict(self.loss(out, x))
        if k > 0 and self.has_likelihood:
            nll = -self.log_likelihood(x, y, k=k)
            terms["nll"] = nll
            terms["bpd"] = nll / (math.prod(self.image_shape) * math.log(2.0))
        reconstruction = self.likelihood.mean(self.decode(out.posterior.mean, y))
        terms["mse"] = (reconstruction.to(x.dtype) - x).pow(2).flatten(1).mean(1)
        return BatchEvaluation(terms, out, reconstruction)

    def update_metrics(self, metrics: SplitMetrics, ev: BatchEvaluation) -> None:
        """Add an evaluated batch to a split's metrics (KL per dimension, active units)."""
        continuous = not ev.out.posterior.support.is_discrete
        metrics.update(ev.terms, ev.out.kl_per_dim, ev.out.posterior.mean if continuous else None)

    # ----------------------------------------------------------------- Lightning
    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> "BaseVAE":
        """Lightning's loader, first refusing a checkpoint written by another variant.

        ``BaseVAE.load_from_checkpoint`` loads any variant; ``VAE.load_from_checkpoint`` of a
        ConditionalVAE checkpoint raises :class:`~vae_zoo.errors.CheckpointMismatchError`.
        """
        written_by = checkpoint_class(checkpoint_path)
        if written_by is None:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        if not issubclass(written_by, cls):
            raise CheckpointMismatchError(
                f"{checkpoint_path} was written by {written_by.__name__} (variant "
                f"'{variant_name(written_by)}'), not by {cls.__name__}; load it with "
                f"{written_by.__name__}.load_from_checkpoint or BaseVAE.load_from_checkpoint"
            )
        # Lightning drops ``_class_path`` for classes without **kwargs (BaseVAE, VAE)
        return super(BaseVAE, written_by).load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the class that wrote the checkpoint (read back by :func:`checkpoint_class`).

        The held training terms are checked first: a checkpoint is never written of weights
        trained past a non-finite loss.
        """
        self.fold_train_terms()
        cls = type(self)
        checkpoint["vae_zoo"] = {
            "class_path": f"{cls.__module__}.{cls.__qualname__}",
            "variant": variant_name(cls),
        }

    def setup(self, stage: str) -> None:
        """Check the model against the data module: image shape and number of classes."""
        # a Trainer of the user's own pays a failed NVML load per optimizer step, as the CLI did
        drop_nvml_check_without_nvml()
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        shape = getattr(dm, "image_shape", None)
        if shape is not None and tuple(shape) != self.image_shape:
            raise ConfigError(
                f"model.image_shape is {list(self.image_shape)} but the data set's images are "
                f"{list(shape)}; set --model.init_args.image_shape={list(shape)}"
            )
        classes = getattr(dm, "num_classes", None)
        if self.num_classes and classes is not None and classes != self.num_classes:
            raise ConfigError(
                f"model.num_classes is {self.num_classes} but the data set has {classes} "
                f"classes; set --model.init_args.num_classes={classes}"
            )

    @staticmethod
    def unpack(batch: Any) -> tuple[Tensor, Tensor | None]:
        """A batch as (x, labels or None): ``(x, y)`` tuples, ``[x]`` lists or bare tensors."""
        if isinstance(batch, (tuple, list)):
            return batch[0], (batch[1] if len(batch) > 1 else None)
        return batch, None

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Minimise the mean per-example loss over the batch: E_x[loss(x)]."""
        x, y = self.unpack(batch)
        return self.log_train(self.loss(self(x, y), x))

    def log_train(self, terms: dict[str, Tensor], **scalars: float | Tensor) -> Tensor:
        """Hold, check and log a training batch's terms; returns its mean ``loss``.

        Every term goes to the epoch means (``train/<name>_epoch``, torchmetrics, all ranks);
        the step values ``train/<name>`` and ``scalars`` only on the steps Lightning writes
        (see :meth:`_logs_this_step`). The terms are reduced and checked for NaN/inf on those
        steps, at the end of an epoch and before any checkpoint is saved, not at every step
        (see :class:`~vae_zoo.metrics.StepTerms`): a non-finite loss stops the fit there with
        an error naming the first step that had it, and no checkpoint holds weights trained
        past it.
        """
        loss = terms["loss"].mean()
        self._held_terms.add(terms, self.global_step, self.current_epoch)
        if not self._logs_this_step():
            if len(self._held_terms) >= self.MAX_HELD_STEPS:
                self.fold_train_terms()
            return loss
        logged = {f"train/{k}": v for k, v in self._held_terms.last_means().items()}
        self.fold_train_terms()
        if "kl" in terms:  # a model without a KL term (VQ-VAE) has no KL weight to show
            logged["train/kl_weight"] = self.kl_weight
        logged.update({f"train/{k}": v for k, v in scalars.items()})
        self.log_dict(logged)
        return loss

    def fold_train_terms(self) -> None:
        """Check the held training terms for NaN/inf and add them to the epoch means."""
        bad = self._held_terms.first_non_finite()
        if bad is not None:  # kept: a later checkpoint save is refused too
            step, epoch, names = bad
            raise NonFiniteLossError(
                f"non-finite training loss at global step {step} (epoch {epoch}); non-finite "
                f"terms: {', '.join(names)}. Lower the learning rate, narrow logvar_min/"
                "logvar_max, or use gradient clipping (--trainer.gradient_clip_val=1.0)."
            )
        self._held_terms.fold_into(self.train_terms)

    def _logs_this_step(self) -> bool:
        """Whether to log this step's train values: when Lightning writes them, and at the last
        batch of an epoch or of the run, so ``trainer.callback_metrics`` holds the last values.

        Each ``self.log`` costs about 0.4 ms on a CPU (Lightning re-places its result state on
        every call), a few percent of a small model's step per term: logging only these steps
        gives the loggers the same rows as logging every step.
        """
        trainer = self._trainer
        if trainer is None or trainer.fast_dev_run or trainer.is_last_batch:
            return True  # without a trainer, let self.log warn as usual
        if 0 <= trainer.max_steps <= trainer.global_step + 1:
            return True
        return lightning_writes_step_logs(trainer)

    def on_train_epoch_end(self) -> None:
        """Log the epoch means of the training terms (``train/<name>_epoch``)."""
        self.fold_train_terms()
        means = self.train_terms.compute() if self.train_terms.update_count else {}
        self._log_reduced({f"train/{k}_epoch": v for k, v in means.items()})
        self.train_terms.reset()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Accumulate validation metrics (``val/nll`` with ``val_k`` importance samples)."""
        x, y = self.unpack(batch)
        self.update_metrics(self.val_metrics, self.evaluate_batch(x, y, self.hparams.val_k))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Accumulate test metrics (``test/nll`` with ``test_k`` importance samples)."""
        x, y = self.unpack(batch)
        self.update_metrics(self.test_metrics, self.evaluate_batch(x, y, self.hparams.test_k))

    def on_validation_epoch_end(self) -> None:
        """Log every validation metric as ``val/<name>`` (synchronised by torchmetrics)."""
        self._log_split("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        """Log every test metric as ``test/<name>`` (synchronised by torchmetrics)."""
        self._log_split("test", self.test_metrics)

    def _log_split(self, stage: str, metrics: SplitMetrics) -> None:
        values = metrics.compute()
        metrics.reset()
        self._log_reduced({f"{stage}/{k}": v for k, v in values.items()})

    def _log_reduced(self, values: dict[str, Any]) -> None:
        """Log epoch values that torchmetrics has already reduced over batches and ranks.

        Every rank holds the same numbers, so Lightning's cross-rank max returns them unchanged
        (a mean could round them); asking for it tells Lightning they are global values.
        """
        if values:
            self.log_dict(values, sync_dist=True, reduce_fx="max")

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """Posterior means (and log-variances) and reconstructions E[x | z = mean] of a batch."""
        x, y = self.unpack(batch)
        q = self.posterior(x, y)
        out = {"mu": q.mean}
        if isinstance(q, DiagNormal):
            out["logvar"] = q.logvar
        out["reconstruction"] = self.likelihood.mean(self.decode(q.mean, y))
        if y is not None:
            out["y"] = y
        return out

    # ----------------------------------------------------------------- optimisation policy
    def auxiliary_modules(self) -> list[nn.Module]:
        """Networks trained by their own optimizers (a discriminator), not the main one."""
        return []

    def main_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters of the main optimizer: all but those of :meth:`auxiliary_modules`."""
        aux = {id(p) for m in self.auxiliary_modules() for p in m.parameters()}
        return (p for p in self.parameters() if id(p) not in aux)

    def configure_auxiliary_optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimizers of the auxiliary networks, after the main one (none by default)."""
        return []

    def configure_optimizers(self) -> Any:
        """Adam over the main parameters (fused where it applies, see :mod:`vae_zoo.optimizers`),
        then any auxiliary optimizers."""
        main = adam(
            self.main_parameters(),
            lr=self.hparams.lr,
            weight_decay=self.hparams.weight_decay,
            trainer=self._trainer,
        )
        return self.configure_optimizers_with(main)

    def configure_optimizers_with(
        self, optimizer: torch.optim.Optimizer, lr_scheduler: Any = None
    ) -> Any:
        """Lightning's optimizer configuration for a main optimizer given from outside.

        The command line's ``--optimizer``/``--lr_scheduler`` configure the main optimizer
        only: it is restricted to :meth:`main_parameters` and the auxiliary optimizers follow.
        """
        _restrict(optimizer, self.main_parameters())
        extra = self.configure_auxiliary_optimizers()
        if lr_scheduler is None:
            return [optimizer, *extra] if extra else optimizer
        scheduler = {"scheduler": lr_scheduler}
        if isinstance(lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler["monitor"] = getattr(lr_scheduler, "monitor", "val/loss")
        if extra:
            return [optimizer, *extra], [scheduler]
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def checkpoint_class(path: Any) -> type | None:
    """The model class that wrote a checkpoint file, or None when it does not say (or is remote).

    Unreadable files are left to Lightning's own loader and its error (None).
    """
    if not isinstance(path, (str, os.PathLike)) or not Path(path).is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # any unpickling failure: Lightning's loader reports it
        return None
    return class_of_checkpoint(ckpt, path) if isinstance(ckpt, dict) else None


def class_of_checkpoint(ckpt: dict[str, Any], source: Any = "the checkpoint") -> type | None:
    """The class a loaded checkpoint names, or None when it names none.

    Read from what :meth:`BaseVAE.on_save_checkpoint` records, else from the ``_class_path``
    LightningCLI stores in the hyper-parameters (checkpoints of earlier versions).
    """
    meta = ckpt.get("vae_zoo")
    hparams = ckpt.get("hyper_parameters")
    class_path = meta.get("class_path") if isinstance(meta, dict) else None
    if not class_path and isinstance(hparams, dict):
        class_path = hparams.get("_class_path")
    if not class_path:
        return None
    cls = class_from_path(str(class_path))
    if cls is None:
        raise CheckpointMismatchError(
            f"{source} was written by {class_path}, which cannot be imported here"
        )
    if not issubclass(cls, BaseVAE):
        raise CheckpointMismatchError(f"{source}: {class_path} is not a vae_zoo model (BaseVAE)")
    return cls
