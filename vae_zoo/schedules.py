"""KL-weight schedules, usable by any variant to fight posterior collapse.

A schedule maps the optimizer step to a weight in [0, 1] that multiplies the KL term of the
training loss. Evaluation always uses :attr:`KLSchedule.final`, so validation losses stay
comparable from epoch to epoch.
"""

from vae_zoo.errors import ConfigError


class KLSchedule:
    """Constant weight: the plain ELBO when ``weight=1``."""

    def __init__(self, weight: float = 1.0) -> None:
        if weight < 0:
            raise ConfigError(f"kl_schedule: weight must be >= 0, got {weight}")
        self.weight = weight

    @property
    def final(self) -> float:
        """The weight the schedule settles at (used for validation and test losses)."""
        return self.weight

    def __call__(self, step: int) -> float:
        """The KL weight at optimizer step ``step``."""
        return self.weight

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class LinearWarmup(KLSchedule):
    """Linear warm-up from ``start`` to ``weight`` over ``warmup_steps`` (Bowman et al. 2016)."""

    def __init__(self, warmup_steps: int = 5000, start: float = 0.0, weight: float = 1.0) -> None:
        super().__init__(weight)
        if warmup_steps <= 0:
            raise ConfigError(f"LinearWarmup: warmup_steps must be > 0, got {warmup_steps}")
        if not 0 <= start <= weight:
            raise ConfigError(f"LinearWarmup: need 0 <= start <= weight, got start={start}")
        self.warmup_steps = warmup_steps
        self.start = start

    def __call__(self, step: int) -> float:
        """Linear ramp, then constant."""
        frac = min(1.0, step / self.warmup_steps)
        return self.start + frac * (self.weight - self.start)


class CyclicalAnnealing(KLSchedule):
    """Cyclical annealing (Fu et al. 2019): ``n_cycles`` ramps of length ``cycle_steps``.

    Within a cycle the weight rises linearly from 0 to ``weight`` over the first ``ratio`` of
    the cycle and stays there for the rest; after ``n_cycles`` cycles it stays at ``weight``
    (``n_cycles=None``: cycle forever).
    """

    def __init__(
        self,
        cycle_steps: int = 5000,
        ratio: float = 0.5,
        n_cycles: int | None = 4,
        weight: float = 1.0,
    ) -> None:
        super().__init__(weight)
        if cycle_steps <= 0:
            raise ConfigError(f"CyclicalAnnealing: cycle_steps must be > 0, got {cycle_steps}")
        if not 0 < ratio <= 1:
            raise ConfigError(f"CyclicalAnnealing: ratio must be in (0, 1], got {ratio}")
        if n_cycles is not None and n_cycles <= 0:
            raise ConfigError(f"CyclicalAnnealing: n_cycles must be > 0 or null, got {n_cycles}")
        self.cycle_steps = cycle_steps
        self.ratio = ratio
        self.n_cycles = n_cycles

    def __call__(self, step: int) -> float:
        """Sawtooth ramp within each cycle, constant after the last one."""
        if self.n_cycles is not None and step >= self.n_cycles * self.cycle_steps:
            return self.weight
        phase = (step % self.cycle_steps) / self.cycle_steps
        return self.weight * min(1.0, phase / self.ratio)
