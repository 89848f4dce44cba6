"""FactorVAE (Kim & Mnih 2018, "Disentangling by Factorising"): the ELBO with a TC penalty.

A discriminator D(z) -> probability that z was drawn from the aggregate posterior q(z) rather
than from the product of its marginals prod_j q(z_j) estimates the total correlation
TC = KL(q(z) || prod_j q(z_j)) by the density-ratio trick. In the notation of
:mod:`vae_zoo.models.base` (w = KL-schedule weight, gamma = ``gamma``)::

    tc     = log D(z) / (1 - D(z))  = D's logit at z ~ q(z|x)              per example [B]
             (its mean over the data is the TC estimate)
    loss   = -(recon - w * kl) + gamma * tc                                per example [B]
    d_loss = 1/2 [BCE(D(z_a), q) + BCE(D(perm(z_b)), prod q)]              batch scalar
    d_acc  = 1/2 [mean(D(z_a) > 1/2) + mean(D(perm(z_b)) < 1/2)]            batch scalar

``perm`` permutes every latent dimension independently across the examples (Algorithm 1 of
the paper): each column keeps its values, so each marginal q(z_j) is kept while the joint is
broken, and the rows are draws of prod_j q(z_j). ``elbo``, ``recon`` and ``kl`` keep their
meaning; the VAE minimises ``loss``, the discriminator ``d_loss``, each with its own Adam.

How this differs from the paper, and why:

* The paper draws a second minibatch for the permuted samples. Here the real samples z_a are
  the first half of the batch's z and the permuted ones come from the other half z_b: two
  disjoint halves of one loaded batch play the two minibatches, so the VAE still sees the
  whole batch each step (the same images per epoch as every other variant) and the data
  module needs no second stream. (A batch of one example uses it for both.)
* Both gradients come from one backward pass: ``tc`` reaches D through detached copies of
  D's parameters and ``d_loss`` reaches the encoder through a detached z, so the VAE's
  gradient is exactly that of ``loss`` and D's exactly that of ``d_loss``; then each optimizer
  steps. Lightning's GAN example uses two backward passes with ``toggle_optimizer``; that
  leaves half of the parameters without a gradient in each backward, which DDP without
  ``find_unused_parameters`` (the ``configs/trainer/ddp.yaml`` piece) rejects. Both networks
  step on the batch's pre-update z, as in the paper's algorithm for the real samples.
* The discriminator is an MLP with leaky-ReLU(0.2) activations; the paper's is 6 x 1000 units
  (about 5M parameters, several times the VAE's cost on a CPU). The default here is 3 x 256
  (``discriminator_hidden_dims``); ``[1000, 1000, 1000, 1000, 1000, 1000]`` is the paper's.
  Its optimizer is the paper's: Adam, lr 1e-4, betas (0.5, 0.9).

Lightning counts every optimizer step in ``global_step`` (two per batch here), so the KL
schedule is read at ``global_step // 2``: a warm-up of N steps lasts N batches, as for the
other variants. The discriminator runs in float32 under mixed precision (the logit is the
TC estimate itself).
"""

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from vae_zoo.errors import ConfigError
from vae_zoo.models.base import BaseVAE, ForwardPass
from vae_zoo.models.registry import register_model
from vae_zoo.optimizers import adam

#: negative slope of the discriminator's leaky ReLUs (the paper's 0.2)
LEAKY_SLOPE = 0.2
#: optimizer steps per training batch (VAE, then discriminator): Lightning counts both
STEPS_PER_BATCH = 2


def permute_dims(z: Tensor) -> Tensor:
    """Permute every column of z [B, D] independently across the batch: draws of prod_j q(z_j).

    Column j of the result holds the values of column j of ``z`` in a random order of its own,
    so each dimension's marginal is unchanged while the dependence between dimensions is not.
    """
    order = torch.rand(z.shape, device=z.device).argsort(dim=0)
    return z.gather(0, order)


def split_halves(z: Tensor) -> tuple[Tensor, Tensor]:
    """(real samples, samples to permute): two disjoint halves of the batch (one example: both)."""
    if z.shape[0] < 2:
        return z, z
    half = (z.shape[0] + 1) // 2
    return z[:half], z[half:]


class Discriminator(nn.Module):
    """MLP z [..., D] -> logit [...] of "z is from q(z)" against "z is from prod_j q(z_j)"."""

    def __init__(self, latent_dim: int, hidden_dims: Sequence[int] = (256, 256, 256)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for n_in, n_out in zip([latent_dim, *hidden_dims[:-1]], hidden_dims, strict=True):
            layers += [nn.Linear(n_in, n_out), nn.LeakyReLU(LEAKY_SLOPE)]
        layers.append(nn.Linear(hidden_dims[-1] if hidden_dims else latent_dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """The logit log D(z) / (1 - D(z)) of every z: [..., D] -> [...]."""
        return self.net(z).squeeze(-1)


@register_model("factor_vae")
class FactorVAE(BaseVAE):
    """FactorVAE: the ELBO plus gamma times a discriminator's total-correlation estimate.

    Args:
        gamma: weight of the TC estimate in the VAE's loss (0: a plain VAE beside a
            discriminator that still measures the TC).
        discriminator_hidden_dims: hidden layer widths of the discriminator MLP.
        discriminator_lr: Adam learning rate of the discriminator.
        discriminator_betas: Adam betas of the discriminator.
        *args, **kwargs: the :class:`BaseVAE` arguments (networks, likelihood, lr of the VAE...).
    """

    show_traversals = True

    def __init__(
        self,
        *args: Any,
        gamma: float = 10.0,
        discriminator_hidden_dims: Sequence[int] = (256, 256, 256),
        discriminator_lr: float = 1e-4,
        discriminator_betas: tuple[float, float] = (0.5, 0.9),
        **kwargs: Any,
    ) -> None:
        if gamma < 0:
            raise ConfigError(f"gamma must be >= 0 (0: no TC penalty), got gamma={gamma}")
        if any(int(h) < 1 for h in discriminator_hidden_dims):
            raise ConfigError(
                "discriminator_hidden_dims must be positive widths, got "
                f"{list(discriminator_hidden_dims)}"
            )
        if discriminator_lr <= 0:
            raise ConfigError(f"discriminator_lr must be > 0, got {discriminator_lr}")
        if len(discriminator_betas) != 2 or not all(0 <= b < 1 for b in discriminator_betas):
            raise ConfigError(
                "discriminator_betas must be two numbers in [0, 1), got "
                f"{list(discriminator_betas)}"
            )
        super().__init__(*args, **kwargs)
        self.gamma = gamma
        self.discriminator_lr = discriminator_lr
        self.discriminator_betas = tuple(discriminator_betas)
        widths = [int(h) for h in discriminator_hidden_dims]
        self.discriminator = Discriminator(self.latent_dim, widths)
        # two optimizers: the VAE's and the discriminator's, stepped in training_step
        self.automatic_optimization = False

    @property
    def objective(self) -> str:  # type: ignore[override]
        """What the VAE minimises, for tables."""
        return f"-(recon - KL) + {self.gamma:g}*TC (discriminator)"

    @property
    def kl_weight(self) -> float:
        """The KL schedule's weight at this batch (Lightning counts two optimizer steps each)."""
        if self.training:
            return self.kl_schedule(self.global_step // STEPS_PER_BATCH)
        return self.kl_schedule.final

    # ----------------------------------------------------------------- the discriminator
    def discriminate(self, z: Tensor, frozen: bool = False) -> Tensor:
        """D's logits of z [..., D], at least float32; ``frozen``: no gradient reaches D.

        The frozen form is how the VAE's loss sees D: a gradient flows into z (and on to the
        encoder) but not into the discriminator, which only ``d_loss`` trains. Autocast is off:
        D runs in its weights' dtype (float32 under mixed precision).
        """
        weights = self.discriminator.net[0].weight.dtype
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.to(weights)
            if frozen:
                params = {n: p.detach() for n, p in self.discriminator.named_parameters()}
                logit = torch.func.functional_call(self.discriminator, params, (z,))
            else:
                logit = self.discriminator(z)
        return logit.to(torch.promote_types(weights, torch.float32))

    def discriminator_terms(self, z: Tensor) -> dict[str, Tensor]:
        """``d_loss`` and ``d_acc`` (batch scalars) of D on this batch's z, detached from the VAE.

        Real samples are one half of the batch, permuted samples are made from the other half
        (see the module docstring); the classes weigh equally whatever the halves' sizes.
        """
        real, other = split_halves(z.detach())
        logit_real = self.discriminate(real)
        logit_perm = self.discriminate(permute_dims(other))
        d_loss = 0.5 * (
            F.binary_cross_entropy_with_logits(logit_real, torch.ones_like(logit_real))
            + F.binary_cross_entropy_with_logits(logit_perm, torch.zeros_like(logit_perm))
        )
        d_acc = 0.5 * ((logit_real > 0).float().mean() + (logit_perm < 0).float().mean())
        return {"d_loss": d_loss, "d_acc": d_acc.detach()}

    # ----------------------------------------------------------------- the objective
    def loss(self, out: ForwardPass, x: Tensor) -> dict[str, Tensor]:
        """VAE terms with ``tc`` [B] in the loss, and the discriminator's ``d_loss``/``d_acc``."""
        terms = super().loss(out, x)
        tc = self.discriminate(out.z, frozen=True)
        return {
            **terms,
            "loss": terms["loss"] + self.gamma * tc,
            "tc": tc,
            **self.discriminator_terms(out.z),
        }

    # ----------------------------------------------------------------- optimisation
    def auxiliary_modules(self) -> list[nn.Module]:
        """The discriminator, trained by its own optimizer."""
        return [self.discriminator]

    def configure_auxiliary_optimizers(self) -> list[torch.optim.Optimizer]:
        """Adam for the discriminator (the paper's lr 1e-4, betas (0.5, 0.9) by default)."""
        return [
            adam(
                self.discriminator.parameters(),
                lr=self.discriminator_lr,
                trainer=self._trainer,
                betas=self.discriminator_betas,
            )
        ]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """One VAE step on ``loss`` and one discriminator step on ``d_loss``, from one backward."""
        optimizers = self.optimizers()
        if not isinstance(optimizers, list) or len(optimizers) != 2:
            raise ConfigError(
                "FactorVAE trains with two optimizers (the VAE's, then the discriminator's); "
                "configure_optimizers gave one: an optimizer from outside must go through "
                "configure_optimizers_with, which adds the discriminator's"
            )
        vae_opt, d_opt = optimizers
        x, y = self.unpack(batch)
        terms = self.loss(self(x, y), x)
        loss = self.log_train(terms)
        # the stop-gradients in loss() route each objective to its own network only
        self.manual_backward(loss + terms["d_loss"])
        vae_opt.step()
        d_opt.step()
        vae_opt.zero_grad()
        d_opt.zero_grad()
        self._step_schedulers("step")
        return loss

    def on_train_epoch_end(self) -> None:
        """Log the epoch means, then step the epoch-interval LR schedulers."""
        super().on_train_epoch_end()
        self._step_schedulers("epoch")

    def _step_schedulers(self, interval: str) -> None:
        """Step the LR schedulers of ``interval``, as Lightning does only in automatic mode.

        A scheduler given with ``--lr_scheduler`` belongs to the VAE's optimizer (see
        ``configure_optimizers_with``); under manual optimisation it is the model's to step.
        """
        batches = self.global_step // STEPS_PER_BATCH
        count = self.current_epoch + 1 if interval == "epoch" else batches
        for config in self.trainer.lr_scheduler_configs:
            if config.interval != interval or count % config.frequency:
                continue
            if isinstance(config.scheduler, ReduceLROnPlateau):
                metric = self.trainer.callback_metrics.get(config.monitor or "val/loss")
                if metric is not None:  # before the first validation there is nothing to watch
                    config.scheduler.step(metric)
            else:
                config.scheduler.step()
