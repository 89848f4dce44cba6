"""Metrics a model accumulates over a split, with torchmetrics (synchronised across ranks).

Every state is a sum (``dist_reduce_fx="sum"``), so values merged from several ranks, or from
several batches, equal the value of one pass over all the examples.

* :class:`TermMeans`: the per-example mean of every named term a variant's ``loss`` returns
  (and the evaluation extras ``nll``, ``bpd``, ``mse``), whatever their names;
* :class:`StepTerms`: training steps' terms held until they are folded into a
  :class:`TermMeans` several steps at a time (the training hot path);
* :class:`KLPerDim`: the mean KL of each latent dimension (when the KL factorises over them);
* :class:`ActiveUnits`: latent units whose posterior mean varies over the data (continuous
  latents only);
* :class:`SplitMetrics`: the three for one split, each present only where it applies, plus any
  metric of a variant's own (:meth:`SplitMetrics.update_metric`, e.g. the VQ-VAE's dead codes).
"""

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

#: Burda et al. (2015): unit u is active when Cov_x(E_q[z_u]) exceeds this.
ACTIVE_UNIT_THRESHOLD = 0.01


def same_names(names: tuple[str, ...], terms: dict[str, Tensor]) -> tuple[str, ...]:
    """The names of ``terms``, refused unless they are ``names`` (or ``names`` is empty)."""
    new = tuple(terms)
    if names and new != names:
        raise ValueError(
            f"the terms changed between batches: {list(names)} then {list(new)}; "
            "a variant's loss() must return the same keys for every batch"
        )
    return new


class TermMeans(Metric):
    """Means over examples of named terms, all in one state vector (one update per batch).

    A term is a per-example tensor [B] or a batch-level scalar (an MMD over the batch); a
    scalar counts once for each example of its batch, so its split value is the mean over
    batches weighted by batch size. The names come from the first update after a reset and
    must stay the same for every batch.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.names: tuple[str, ...] = ()
        self.add_state("sums", torch.zeros(0), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, terms: dict[str, Tensor], batch_size: int) -> None:
        """Add one batch: ``terms`` maps names to [B] tensors or scalars, B = ``batch_size``."""
        self.names = names = same_names(self.names, terms)
        if self.sums.numel() != len(names):
            self.sums = torch.zeros(len(names), device=self.count.device)
        values = list(terms.values())
        first = values[0]
        if all(v.shape == first.shape and v.dtype == first.dtype for v in values):
            # the usual case, every term [B]: one stack and one mean, not one op chain per term
            # (this runs on every training step; ~10 us instead of ~50 us for four terms)
            means = torch.stack(values).detach().float().reshape(len(values), -1).mean(1)
        else:
            means = torch.stack([v.detach().float().mean() for v in values])
        self.sums.add_(means, alpha=batch_size)
        self.count.add_(batch_size)

    def compute(self) -> dict[str, Tensor]:
        """``{name: mean}`` over every example seen (on every rank); {} before any update."""
        if not self.names or self.sums.numel() != len(self.names):
            return {}
        means = self.sums / self.count.clamp_min(1)
        return dict(zip(self.names, means.unbind(), strict=True))

    def reset(self) -> None:
        """Forget the values and the names."""
        super().reset()
        self.names = ()


class StepTerms:
    """Training steps' terms, held as one [T, B] tensor per step until :meth:`fold_into`.

    On a CPU every small torch op of a training step costs 10-25 us in a real fit (the caches
    are cold after the step's matrix products), and a per-step finite check is a host sync (on
    a GPU a stall). :meth:`add` does one ``torch.stack``; the reduction and the finite check of
    every held step happen at once in :meth:`fold_into` and :meth:`first_non_finite`. A scalar
    term counts once for each example of its batch, as in :meth:`TermMeans.update`. (Writing
    the stacks into a reused block instead, to allocate nothing a step, measured no faster.)
    """

    def __init__(self) -> None:
        self.names: tuple[str, ...] = ()
        self.steps: list[tuple[int, int]] = []  # (global step, epoch) of each held batch
        self.values: list[Tensor] = []  # [T, B] per held batch, T = len(names)

    def __len__(self) -> int:
        return len(self.values)

    def add(self, terms: dict[str, Tensor], step: int = 0, epoch: int = 0) -> None:
        """Hold one batch's terms ([B] tensors or scalars) of training step ``step``."""
        self.names = same_names(self.names if self.values else (), terms)
        values = list(terms.values())
        first = values[0]
        with torch.no_grad():
            if first.dim() == 1 and all(
                v.shape == first.shape and v.dtype == first.dtype for v in values
            ):
                stacked = torch.stack(values)  # the usual case: every term [B], one op
            else:
                batch = next((v.shape[0] for v in values if v.dim() > 0), 1)
                stacked = torch.stack([_per_example(v.float(), batch) for v in values])
        self.values.append(stacked)
        self.steps.append((step, epoch))

    def last_means(self) -> dict[str, Tensor]:
        """The newest batch's mean of each term (what the step logs show)."""
        return dict(zip(self.names, self.values[-1].float().mean(1).unbind(), strict=True))

    def first_non_finite(self) -> tuple[int, int, list[str]] | None:
        """(global step, epoch, names of its non-finite terms) of the first held batch with a
        NaN or an infinity; ``None`` when all are finite (one host sync)."""
        if not self.values or torch.isfinite(torch.cat(self.values, 1)).all():
            return None
        for (step, epoch), values in zip(self.steps, self.values, strict=True):
            finite = torch.isfinite(values).all(1).tolist()
            if not all(finite):
                return step, epoch, [n for n, ok in zip(self.names, finite, strict=True) if not ok]
        return None  # not reached: the concatenation had a non-finite value

    def fold_into(self, means: TermMeans) -> None:
        """Add every held batch to ``means`` (one update) and forget them."""
        if self.values:
            values = torch.cat(self.values, 1).float()
            means.update(dict(zip(self.names, values.unbind(), strict=True)), values.shape[1])
        self.clear()

    def clear(self) -> None:
        """Forget the held batches."""
        self.values.clear()
        self.steps.clear()


def _per_example(value: Tensor, batch: int) -> Tensor:
    """A term as [batch]: a scalar repeated, a [B, ...] term averaged over its other axes."""
    if value.dim() == 0:
        return value.expand(batch)
    if value.shape[0] == batch:
        return value.reshape(batch, -1).mean(1)
    return value.mean().expand(batch)


class KLPerDim(Metric):
    """Mean KL(q(z|x) || p(z)) of each latent dimension over the split, in nats.

    ``compute()`` returns the largest of them (a scalar); ``per_dim()`` the whole [D] vector.
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


class SplitMetrics(nn.Module):
    """Everything reported for one split, by bare name (``loss``, ``nll``, ``kl_dim_max``...).

    The term means cover whatever the model's evaluation returns; ``kl_dim_max`` (the largest
    per-dimension mean KL) exists only when the KL factorises over latent dimensions and
    ``active_units`` only for continuous latents: a metric that does not apply is absent.
    """

    def __init__(self, active_threshold: float = ACTIVE_UNIT_THRESHOLD) -> None:
        super().__init__()
        self.active_threshold = active_threshold
        self.terms = TermMeans()
        # created at the first batch that has them, on that batch's device
        self.kl_dim: KLPerDim | None = None
        self.active: ActiveUnits | None = None
        self.extra = nn.ModuleDict()  # a variant's own metrics, by name (update_metric)

    def update(
        self,
        terms: dict[str, Tensor],
        kl_per_dim: Tensor | None = None,
        latent_mean: Tensor | None = None,
    ) -> None:
        """Add one batch: per-example terms, the [B, D] KL per dimension, the [B, D] means."""
        batch = next(v.shape[0] for v in terms.values() if v.dim() > 0)
        self.terms.update(terms, batch)
        if kl_per_dim is not None:
            if self.kl_dim is None:
                self.kl_dim = KLPerDim(kl_per_dim.shape[-1]).to(kl_per_dim.device)
            self.kl_dim.update(kl_per_dim.reshape(-1, kl_per_dim.shape[-1]))
        if latent_mean is not None:
            if self.active is None:
                dim = latent_mean[0].numel()
                self.active = ActiveUnits(dim, self.active_threshold).to(latent_mean.device)
            self.active.update(latent_mean.reshape(latent_mean.shape[0], -1))

    def update_metric(self, name: str, make: Callable[[], Metric], *args: Tensor) -> None:
        """Add a batch to a variant's own metric ``name``, a scalar over the whole split.

        For what a per-example mean cannot give (the number of codes no example used): ``make()``
        builds the metric at its first batch, on the device of ``args[0]``; ``update(*args)``
        adds the batch; :meth:`compute` reports ``compute()`` under ``name``. Its states are
        synchronised across ranks by torchmetrics like every other metric here.
        """
        if name not in self.extra:
            self.extra[name] = make().to(args[0].device)
        self.extra[name].update(*args)

    def compute(self) -> dict[str, float]:
        """Every scalar metric of the split as a float, keyed by its bare name."""
        if not self.terms.update_count:
            return {}
        out = {name: float(v) for name, v in self.terms.compute().items()}
        if self.kl_dim is not None and self.kl_dim.update_count:
            out["kl_dim_max"] = float(self.kl_dim.compute())
        if self.active is not None and self.active.update_count:
            out["active_units"] = float(self.active.compute())
        for name, metric in self.extra.items():
            if name in out:
                raise ValueError(f"the metric {name!r} has the name of a term or metric")
            if metric.update_count:
                out[name] = float(metric.compute())
        return out

    def kl_per_dim(self) -> list[float] | None:
        """Mean KL of every latent dimension over the split (None when it does not apply)."""
        return None if self.kl_dim is None else self.kl_dim.per_dim().tolist()

    def mu_variance(self) -> list[float] | None:
        """Variance of every unit's posterior mean over the split (None when not continuous)."""
        return None if self.active is None else self.active.variances().tolist()

    def reset(self) -> None:
        """Forget everything accumulated, ready for another pass."""
        self.terms.reset()
        for metric in (self.kl_dim, self.active, *self.extra.values()):
            if metric is not None:
                metric.reset()
