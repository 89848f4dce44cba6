"""beta-TCVAE (Chen, Li, Grosse, Duvenaud 2018, "Isolating sources of disentanglement in VAEs").

The KL term of the ELBO, averaged over the data (n the index of an example, q(z) = E_n q(z|n)
the aggregate posterior, p(z) = N(0, I) = prod_d p(z_d)), splits into three parts::

    E_n KL(q(z|n) || p(z)) = I_q(z; n)                     index-code mutual information  mi
                           + KL(q(z) || prod_d q(z_d))     total correlation              tc
                           + sum_d KL(q(z_d) || p(z_d))    dimension-wise KL              dim_kl

and the objective weights them separately (w the KL-schedule weight, 1 by default)::

    loss = -(recon - w * (alpha * mi + beta * tc + gamma * dim_kl))

Defaults alpha = 1, beta = 6, gamma = 1 (the paper's beta-TCVAE sets alpha = gamma = 1).

Estimators. With the batch's codes z_i ~ q(z|x_i), i = 1..B, and log q(z_i|x_j) for every pair,
log q(z_i) = log sum_j w_ij q(z_i|x_j) and log q(z_id) = log sum_j w_ij q(z_id|x_jd), with

* ``mws`` (minibatch-weighted sampling, the paper's main text): w_ij = 1 / (N B). Biased: it treats
  the batch as if drawn with replacement and lets q(z_i|x_i) count as one of B draws.
* ``mss`` (minibatch stratified sampling, the paper's appendix): with M = B - 1 other examples,
  w_ii = 1/N for the example the code came from, (N - M) / (N M) for one other example (the
  next in the batch, which is in random order) and 1/M for the remaining M - 1. Given x_i and
  z_i, sum_j w_ij q(z_i|x_j) is then unbiased for q(z_i) = (1/N) sum_n q(z_i|n) when the other
  M examples are a uniform draw without replacement from the other N - 1. (The paper's released
  code puts these weights on the first columns rather than the diagonal, rtqichen/beta-tcvae
  pull request #1; the test checks this unbiasedness by enumerating every batch.)

    mi     = mean_i [log q(z_i|x_i) - log q(z_i)]
    tc     = mean_i [log q(z_i) - sum_d log q(z_id)]
    dim_kl = mean_i [sum_d log q(z_id) - log p(z_i)]

The three are batch-level scalars (the batch is the estimator's sample). Even MSS's unbiased
sums give log-estimates biased low (Jensen's inequality; ~0.02 nats per term in the test's
8-example case), less so for larger batches; MWS's are further off where posteriors overlap
(all q(z|x) equal: mi = log N, tc = (D - 1) log N instead of 0). The default is ``mss``: with
MWS, the latent units that carry no information (q(z_d|x) ~ p(z_d) for every x, most of the 32
in an MNIST model) each add about log N to tc and take it from dim_kl, so the logged terms
are offsets, not measurements (a 2-epoch MNIST run: MWS tc = 339 nats, about 31 log 55000,
where MSS gives tc = 0.0 for the same model and 5.6 for a VAE). Because the gap depends on B,
compare mi/tc/dim_kl only at one evaluation batch size (``data.eval_batch_size`` for val/test,
``compare --batch-size``): a 2-epoch model's MSS tc was -0.65 on batches of 500 and -1.7 on
batches of 100 (the stratified estimate is biased low, and beta > 1 pushes on that bias).

Whatever the estimator, the three telescope: mi + tc + dim_kl = mean_i [log q(z_i|x_i) -
log p(z_i)], the one-sample Monte-Carlo KL, whose expectation is the exact mean KL. So with
alpha = beta = gamma = 1 the loss equals the VAE's in expectation. ``kl`` (closed form) and
``elbo`` are reported as in base.py; ``loss``, ``elbo``, ``recon``, ``kl`` are per example [B].

N, the number of training examples: ``dataset_size`` if set, else read at ``setup`` from the
trainer's data module (its ``train_indices``: all training examples, not one rank's shard). It
is stored in a buffer, so checkpoints carry it and ``compare`` or ``test`` of a checkpoint use
the N the model was trained with; validation and test batches use the same N (they estimate
the decomposition for the data distribution the training set stands for). Under DDP each
rank's batch is its own estimator's sample (a uniform sample of the data: the shards are a
random partition), with the global N.

The pairwise densities [B, B, D] are computed in float32 with autocast off (log-densities of
far-apart pairs reach -1e4 and their logsumexp must not be rounded in bfloat16).
"""

import math
from typing import Any, Literal

import torch
from torch import Tensor

from vae_zoo.distributions import DiagNormal, diag_normal_log_prob
from vae_zoo.errors import ConfigError
from vae_zoo.models.base import BaseVAE, ForwardPass
from vae_zoo.models.registry import register_model

ESTIMATORS = ("mws", "mss")


def log_weight_matrix(batch_size: int, dataset_size: int, estimator: str) -> Tensor:
    """log w_ij [B, B] (float64, CPU): the weight of q(z_i|x_j) in the estimate of q(z_i).

    See the module docstring; built in float64 on the CPU (not every device has float64).
    """
    b, n = batch_size, dataset_size
    if estimator == "mss" and b > n:
        raise ConfigError(
            f"beta_tcvae's mss estimator draws a batch without replacement from dataset_size="
            f"{n} examples, but got a batch of {b}: lower the batch size or set "
            "model.init_args.dataset_size"
        )
    if estimator == "mws" or b == 1:
        return torch.full((b, b), -math.log(n * b), dtype=torch.float64)
    m = b - 1
    w = torch.full((b, b), 1.0 / m, dtype=torch.float64)
    rows = torch.arange(b)
    w[rows, (rows + 1) % b] = (n - m) / (n * m)
    w[rows, rows] = 1.0 / n
    return w.log()


def kl_decomposition(
    z: Tensor,
    posterior: DiagNormal,
    prior: DiagNormal,
    dataset_size: int,
    estimator: str = "mws",
) -> dict[str, Tensor]:
    """``mi``, ``tc``, ``dim_kl`` (batch scalars) from codes z [B, D], z_i ~ q(z|x_i).

    ``posterior`` has batch shape [B] (q(z|x_j) for the batch's examples) and ``prior`` must
    factorise over the dimensions (a diagonal Gaussian). Computed in float32 (float64 inputs
    stay float64), with autocast off.
    """
    dtype = torch.promote_types(z.dtype, torch.float32)  # float32, or float64 if given
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.to(dtype)
        mu, logvar = posterior.mu.to(dtype), posterior.logvar.to(dtype)
        # log q(z_id | x_jd) for every code i, example j and dimension d: [B, B, D]; the
        # trailing singleton turns the summed log-density into a per-dimension one
        log_q_pairs = diag_normal_log_prob(
            z[:, None, :, None], mu[None, :, :, None], logvar[None, :, :, None]
        )
        log_w = log_weight_matrix(z.shape[0], dataset_size, estimator).to(z.device, z.dtype)
        log_qz = torch.logsumexp(log_w + log_q_pairs.sum(-1), dim=1)  # [B]
        log_qz_dims = torch.logsumexp(log_w[..., None] + log_q_pairs, dim=1).sum(-1)  # [B]
        log_qz_x = log_q_pairs.diagonal(dim1=0, dim2=1).sum(0)  # log q(z_i|x_i): [B]
        log_pz = diag_normal_log_prob(
            z[..., None], prior.mu.to(dtype)[..., None], prior.logvar.to(dtype)[..., None]
        ).sum(-1)
    return {
        "mi": (log_qz_x - log_qz).mean(),
        "tc": (log_qz - log_qz_dims).mean(),
        "dim_kl": (log_qz_dims - log_pz).mean(),
    }


def training_set_size(datamodule: Any) -> int | None:
    """The number of training examples a data module holds (all ranks), or None if unknown."""
    indices = getattr(datamodule, "train_indices", None)
    return None if indices is None else len(indices)


@register_model("beta_tcvae")
class BetaTCVAE(BaseVAE):
    """beta-TCVAE: the KL split into index-code MI, total correlation and dimension-wise KL.

    Args:
        alpha: weight of the index-code mutual information (>= 0).
        beta: weight of the total correlation (>= 0).
        gamma: weight of the dimension-wise KL (>= 0).
        estimator: ``mss`` (minibatch stratified sampling, the default) or ``mws``
            (minibatch-weighted, the paper's main estimator: see the module docstring).
        dataset_size: N for the estimators; None reads it from the data module at setup.
    """

    show_traversals = True

    def __init__(
        self,
        *args,
        alpha: float = 1.0,
        beta: float = 6.0,
        gamma: float = 1.0,
        estimator: Literal["mws", "mss"] = "mss",
        dataset_size: int | None = None,
        **kwargs,
    ) -> None:
        if min(alpha, beta, gamma) < 0:
            raise ConfigError(
                f"alpha, beta and gamma must be >= 0 (1, 1, 1 is the VAE), got alpha={alpha}, "
                f"beta={beta}, gamma={gamma}"
            )
        if estimator not in ESTIMATORS:
            raise ConfigError(
                f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}"
            )
        if dataset_size is not None and dataset_size < 1:
            raise ConfigError(
                f"dataset_size must be >= 1 (or null: from the data module), got {dataset_size}"
            )
        super().__init__(*args, **kwargs)
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.estimator = estimator
        # N travels with the checkpoint: compare and test use the value the model trained with
        self.register_buffer("dataset_size", torch.tensor(dataset_size or 0, dtype=torch.long))

    @property
    def objective(self) -> str:  # type: ignore[override]
        """What is minimised, for tables."""
        return (
            f"-(recon - {self.alpha:g}*MI - {self.beta:g}*TC - {self.gamma:g}*dimKL) "
            f"({self.estimator})"
        )

    def setup(self, stage: str) -> None:
        """Check the data as the base does, and take N from the data module unless configured."""
        super().setup(stage)
        if self.hparams.dataset_size is not None or self._trainer is None:
            return
        n = training_set_size(getattr(self.trainer, "datamodule", None))
        if n is not None:
            self.dataset_size.fill_(n)

    def loss(self, out: ForwardPass, x: Tensor) -> dict[str, Tensor]:
        """-(recon - w (alpha mi + beta tc + gamma dim_kl)) [B], the ELBO terms, mi, tc, dim_kl."""
        n = int(self.dataset_size)
        if n < 1:
            raise ConfigError(
                "beta_tcvae needs the number of training examples N: set "
                "model.init_args.dataset_size, or train with a data module that has train_indices"
            )
        if not (isinstance(out.posterior, DiagNormal) and isinstance(out.prior, DiagNormal)):
            raise TypeError("beta_tcvae needs a diagonal-Gaussian posterior and prior")
        parts = kl_decomposition(out.z, out.posterior, out.prior, n, self.estimator)
        penalty = self.alpha * parts["mi"] + self.beta * parts["tc"] + self.gamma * parts["dim_kl"]
        loss = -(out.recon - self.kl_weight * penalty)
        return {"loss": loss, **self.elbo_terms(out), **parts}
