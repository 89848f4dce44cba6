"""The beta-VAE: a weighted KL (Higgins et al. 2017) or a KL capacity (Burgess et al. 2018)."""

from torch import Tensor

from vae_zoo.errors import ConfigError
from vae_zoo.models.base import BaseVAE, ForwardPass
from vae_zoo.models.registry import register_model


@register_model("beta_vae")
class BetaVAE(BaseVAE):
    """beta-VAE: the KL weighted by beta (Higgins et al. 2017) or held to a capacity C(t).

    With ``gamma=None``: loss = -(recon - beta * w * kl) (Higgins et al.; w is the KL-schedule
    weight, 1 by default). With ``gamma`` set: loss = -(recon - gamma * |KL - C(t)|), the
    capacity-controlled form of Burgess et al., where C(t) grows linearly from 0 to
    ``capacity_max`` nats over ``capacity_steps`` optimizer steps. As in the paper, KL there is
    the batch mean, so every example of a batch carries the same capacity penalty.
    """

    show_traversals = True

    def __init__(
        self,
        *args,
        beta: float = 4.0,
        gamma: float | None = None,
        capacity_max: float = 25.0,
        capacity_steps: int = 100_000,
        **kwargs,
    ) -> None:
        if beta < 0:
            raise ConfigError(f"beta must be >= 0 (beta=1 is the plain VAE), got beta={beta}")
        if gamma is not None and gamma < 0:
            raise ConfigError(f"gamma must be >= 0 (or null for the beta form), got gamma={gamma}")
        if capacity_max < 0 or capacity_steps <= 0:
            raise ConfigError(
                "need capacity_max >= 0 and capacity_steps > 0, got "
                f"capacity_max={capacity_max}, capacity_steps={capacity_steps}"
            )
        super().__init__(*args, **kwargs)
        self.beta = beta
        self.gamma = gamma
        self.capacity_max = capacity_max
        self.capacity_steps = capacity_steps

    @property
    def objective(self) -> str:
        """What is minimised, for tables: the beta-weighted ELBO or the capacity form."""
        if self.gamma is None:  # the loss weights the KL by beta times the schedule's weight
            return f"-(recon - {self.beta * self.kl_schedule.final:g}*KL)"
        return f"-(recon - {self.gamma:g}*|KL - C|), C to {self.capacity_max:g}"

    @property
    def capacity(self) -> float:
        """C(t): the KL target in nats at this optimizer step."""
        return self.capacity_max * min(1.0, self.global_step / self.capacity_steps)

    def loss(self, out: ForwardPass, x: Tensor) -> dict[str, Tensor]:
        """-(recon - beta * w * kl), or -(recon - gamma * |mean KL - C(t)|) with a capacity."""
        terms = self.elbo_terms(out)
        if self.gamma is None:
            loss = -(out.recon - self.beta * self.kl_weight * out.kl)
        else:
            loss = -(out.recon - self.gamma * (out.kl.mean() - self.capacity).abs())
        return {"loss": loss, **terms}
