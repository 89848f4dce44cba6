"""Decoder likelihoods p(x|z): Bernoulli, continuous Bernoulli and Gaussian.

Each likelihood turns the decoder output ``params`` of shape [B, P*C, H, W] (P parameters per
pixel, see :meth:`Likelihood.param_shape`) into a per-example log-probability in nats, summed
over all pixels: ``log_prob(params, x) -> [B]``. ``distribution(params)`` returns the matching
``torch.distributions`` object, which the tests use as the reference.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import (
    Bernoulli as _Bernoulli,
)
from torch.distributions import (
    ContinuousBernoulli as _ContinuousBernoulli,
)
from torch.distributions import (
    Distribution,
    Independent,
    Normal,
)

from vae_zoo.errors import ConfigError


class Likelihood(nn.Module):
    """Base class: a per-pixel observation model whose parameters the decoder outputs."""

    #: decoder output channels per image channel
    params_per_channel: int = 1

    def param_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """Shape of the decoder output for one image of ``image_shape`` (C, H, W)."""
        c, h, w = image_shape
        return (c * self.params_per_channel, h, w)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log p(x|params) summed over pixels, in nats: [B, ...] -> [B]."""
        # distribution() is Independent over (C, H, W), so log_prob is already [B]; the reshape
        # also sums a per-pixel distribution a subclass may return
        return self.distribution(params).log_prob(x).reshape(x.shape[0], -1).sum(1)

    def distribution(self, params: Tensor) -> Distribution:
        """The per-pixel distribution as a ``torch.distributions`` object (tests, sampling)."""
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        """E[x|params], clamped to [0, 1] for display: [B, P*C, H, W] -> [B, C, H, W]."""
        return self.distribution(params).mean.clamp(0.0, 1.0)

    def sample(self, params: Tensor) -> Tensor:
        """A draw x ~ p(x|params), clamped to [0, 1]: [B, P*C, H, W] -> [B, C, H, W]."""
        return self.distribution(params).sample().clamp(0.0, 1.0)


class Bernoulli(Likelihood):
    """Bernoulli with logits: the standard choice for binarized MNIST (or [0,1] targets)."""

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """-BCE-with-logits summed over pixels; equals ``Bernoulli(logits).log_prob(x)``."""
        nll = F.binary_cross_entropy_with_logits(params, x, reduction="none")
        return -nll.flatten(1).sum(1)

    def distribution(self, params: Tensor) -> Distribution:
        """Independent per-pixel Bernoulli(logits=params)."""
        return Independent(_Bernoulli(logits=params, validate_args=False), 3)

    def mean(self, params: Tensor) -> Tensor:
        """Pixel probabilities sigmoid(logits)."""
        return torch.sigmoid(params)


class ContinuousBernoulli(Likelihood):
    """Continuous Bernoulli (Loaiza-Ganem & Cunningham, 2019): a proper density on [0, 1].

    Unlike the Bernoulli, it is normalised for grey-level targets, so its log-likelihoods are
    true densities (and can be positive).
    """

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """-BCE-with-logits plus log C(logits), summed over pixels, stable for all logits.

        torch's ``ContinuousBernoulli.log_prob`` computes C from probabilities clamped to
        [eps, 1 - eps], so in float32 its value freezes (and its gradient vanishes) for logits
        above ~16 (pytorch/pytorch#72525). Here C(l) = l / tanh(l / 2) is evaluated from the
        logits: log C = log|l| - log(-expm1(-|l|)) + log1p(exp(-|l|)), with the Taylor form
        log 2 + l^2 / 12 near 0, where the closed form is 0/0.
        """
        a = params.abs()
        small = a < 1e-2
        safe = torch.where(small, torch.ones_like(a), a)  # keeps the unused branch's grad finite
        log_norm = torch.where(
            small,
            math.log(2.0) + params.pow(2) / 12.0,
            safe.log() - torch.log(-torch.expm1(-safe)) + torch.log1p(torch.exp(-safe)),
        )
        nll = F.binary_cross_entropy_with_logits(params, x, reduction="none")
        return (log_norm - nll).flatten(1).sum(1)

    def distribution(self, params: Tensor) -> Distribution:
        """Independent per-pixel ContinuousBernoulli(logits=params)."""
        return Independent(_ContinuousBernoulli(logits=params, validate_args=False), 3)


GAUSSIAN_VARIANCES = ("fixed", "learned", "per_pixel")


class Gaussian(Likelihood):
    """Gaussian with mean sigmoid(params) and a fixed, a learned shared, or a per-pixel variance.

    ``variance="fixed"`` uses ``sigma``; ``"learned"`` learns one log-sigma shared by all
    pixels (initialised at ``sigma``, as in the sigma-VAE of Rybkin et al. 2021);
    ``"per_pixel"`` lets the decoder output a log-sigma for every pixel (2 channels per image
    channel). log-sigma is clamped to [``min_log_sigma``, 0] so the density cannot collapse.
    """

    def __init__(
        self, variance: str = "learned", sigma: float = 0.1, min_log_sigma: float = -6.0
    ) -> None:
        super().__init__()
        if variance not in GAUSSIAN_VARIANCES:
            raise ConfigError(
                f"Gaussian likelihood: variance={variance!r} is not one of {GAUSSIAN_VARIANCES}"
            )
        # log-sigma is clamped to [min_log_sigma, 0], so a sigma outside would be silently changed
        if not math.exp(min_log_sigma) <= sigma <= 1.0:
            low = math.exp(min_log_sigma)
            raise ConfigError(
                f"Gaussian likelihood: sigma must be in [exp(min_log_sigma)={low:.3g}, 1] "
                f"for pixels in [0, 1], got sigma={sigma}"
            )
        self.variance = variance
        self.min_log_sigma = min_log_sigma
        self.params_per_channel = 2 if variance == "per_pixel" else 1
        log_sigma = torch.tensor(math.log(sigma))
        if variance == "learned":
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    def _loc_scale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        if self.variance == "per_pixel":
            mean_logits, log_sigma = params.chunk(2, dim=1)
        else:
            mean_logits, log_sigma = params, self.log_sigma.expand_as(params)
        log_sigma = log_sigma.clamp(self.min_log_sigma, 0.0)
        return torch.sigmoid(mean_logits), log_sigma

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """Gaussian log density summed over pixels, computed in log-sigma for stability."""
        loc, log_sigma = self._loc_scale(params)
        lp = -0.5 * ((x - loc) * torch.exp(-log_sigma)).pow(2) - log_sigma - 0.5 * math.log(
            2 * math.pi
        )
        return lp.flatten(1).sum(1)

    def distribution(self, params: Tensor) -> Distribution:
        """Independent per-pixel Normal(sigmoid(mean_logits), sigma)."""
        loc, log_sigma = self._loc_scale(params)
        return Independent(Normal(loc, log_sigma.exp(), validate_args=False), 3)
