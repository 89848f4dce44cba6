"""Latent distributions: the posterior q(z|x[,c]) and the prior p(z[|c]) of every model.

Each is a ``torch.distributions.Distribution`` whose event is one latent vector: ``rsample``
draws with the reparameterization trick and ``log_prob`` sums over the latent dimensions
(``[..., D] -> [...]``), in nats. Closed-form KLs are registered with
``torch.distributions.register_kl``; :func:`kl_divergence` falls back to the Monte-Carlo
estimate log q(z) - log p(z) at a given sample for a pair without one (a mixture prior), so a
new prior or posterior is a new class here or in a variant's file, not a new forward pass.

Arguments are never validated (``validate_args=False``): these objects are built on every
training step, and the checks would cost more than the arithmetic.
"""

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints, register_kl
from torch.distributions import kl_divergence as _registered_kl

LOG_2PI = math.log(2.0 * math.pi)


def diag_normal_log_prob(
    z: Tensor, mu: Tensor | None = None, logvar: Tensor | None = None
) -> Tensor:
    """Log density of a diagonal Gaussian, summed over the last dimension: [..., D] -> [...].

    A ``None`` mean (and log-variance) stands for the standard normal N(0, I).
    """
    if mu is None:
        return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
    if logvar is None:
        logvar = torch.zeros_like(mu)
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def gaussian_kl(
    mu: Tensor,
    logvar: Tensor,
    prior_mu: Tensor | None = None,
    prior_logvar: Tensor | None = None,
) -> Tensor:
    """KL(N(mu, e^logvar) || N(prior_mu, e^prior_logvar)) per latent dimension: [B, D] -> [B, D].

    A ``None`` prior mean (and log-variance) stands for the standard normal N(0, I).
    """
    if prior_mu is None:
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
    if prior_logvar is None:
        prior_logvar = torch.zeros_like(prior_mu)
    return 0.5 * (
        prior_logvar
        - logvar
        + (logvar.exp() + (mu - prior_mu).pow(2)) * torch.exp(-prior_logvar)
        - 1.0
    )


class DiagNormal(Distribution):
    """N(mu, diag(exp(logvar))) over the last dimension: batch shape [...], event shape [D]."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, mu: Tensor, logvar: Tensor) -> None:
        self.mu = mu
        self.logvar = logvar
        super().__init__(mu.shape[:-1], mu.shape[-1:], validate_args=False)

    @property
    def mean(self) -> Tensor:
        """The mean mu."""
        return self.mu

    @property
    def variance(self) -> Tensor:
        """The per-dimension variance exp(logvar)."""
        return self.logvar.exp()

    def from_noise(self, eps: Tensor) -> Tensor:
        """mu + exp(logvar / 2) * eps: standard-normal draws mapped through this Gaussian."""
        return self.mu + torch.exp(0.5 * self.logvar) * eps

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Reparameterized draws [*sample_shape, *batch, D], differentiable in mu and logvar."""
        shape = self._extended_shape(torch.Size(sample_shape))
        return self.from_noise(torch.randn(shape, dtype=self.mu.dtype, device=self.mu.device))

    def log_prob(self, value: Tensor) -> Tensor:
        """log N(value; mu, diag(exp(logvar))) summed over D: [..., D] -> [...]."""
        return diag_normal_log_prob(value, self.mu, self.logvar)

    def entropy(self) -> Tensor:
        """Differential entropy summed over D: [...]."""
        return 0.5 * (self.logvar + 1.0 + LOG_2PI).sum(-1)


class StandardNormal(DiagNormal):
    """N(0, I) in ``latent_dim`` dimensions, held as no tensors (the usual prior costs nothing)."""

    def __init__(
        self,
        latent_dim: int,
        batch_shape: torch.Size | tuple[int, ...] = (),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self._dtype = dtype if dtype is not None else torch.get_default_dtype()
        Distribution.__init__(
            self, torch.Size(batch_shape), torch.Size([latent_dim]), validate_args=False
        )

    @property
    def mu(self) -> Tensor:  # type: ignore[override]
        """Zeros of the batch and event shape (built on demand)."""
        return torch.zeros(self._extended_shape(), dtype=self._dtype, device=self._device)

    @property
    def logvar(self) -> Tensor:  # type: ignore[override]
        """Zeros of the batch and event shape (built on demand)."""
        return self.mu

    def from_noise(self, eps: Tensor) -> Tensor:
        """Standard-normal draws are already draws of this distribution."""
        return eps

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Draws [*sample_shape, *batch, D] of N(0, I)."""
        shape = self._extended_shape(torch.Size(sample_shape))
        return torch.randn(shape, dtype=self._dtype, device=self._device)

    def log_prob(self, value: Tensor) -> Tensor:
        """log N(value; 0, I) summed over D: [..., D] -> [...]."""
        return diag_normal_log_prob(value)


def kl_per_dim(q: Distribution, p: Distribution) -> Tensor | None:
    """KL(q || p) per latent dimension [..., D] when both are diagonal Gaussians, else None."""
    if not (isinstance(q, DiagNormal) and isinstance(p, DiagNormal)):
        return None
    if isinstance(p, StandardNormal):
        return gaussian_kl(q.mu, q.logvar)
    return gaussian_kl(q.mu, q.logvar, p.mu, p.logvar)


@register_kl(DiagNormal, DiagNormal)
def _kl_diag_diag(q: DiagNormal, p: DiagNormal) -> Tensor:
    return gaussian_kl(q.mu, q.logvar, p.mu, p.logvar).sum(-1)


@register_kl(DiagNormal, StandardNormal)
def _kl_diag_standard(q: DiagNormal, p: StandardNormal) -> Tensor:
    return gaussian_kl(q.mu, q.logvar).sum(-1)


def kl_divergence(q: Distribution, p: Distribution, z: Tensor | None = None) -> Tensor:
    """KL(q || p) summed over the latent dimensions: closed form when the pair has one.

    Otherwise the one-sample Monte-Carlo estimate log q(z) - log p(z) at ``z`` ~ q (unbiased;
    differentiable through a reparameterized ``z``).
    """
    try:
        return _registered_kl(q, p)
    except NotImplementedError:
        if z is None:
            raise ValueError(
                f"KL({type(q).__name__} || {type(p).__name__}) has no closed form; pass a sample "
                "z ~ q for the Monte-Carlo estimate"
            ) from None
        return q.log_prob(z) - p.log_prob(z)


class PointMass(Distribution):
    """A point mass at ``loc`` [..., D] (a deterministic encoder): batch [...], event [D].

    ``rsample`` returns ``loc`` itself (differentiable), the mean is ``loc`` and the variance
    zero. It has no density with respect to Lebesgue measure, so ``log_prob`` raises: a model
    with this posterior has no log importance weights, no ELBO and no KL (they are absent, not
    +inf or zero).
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc: Tensor) -> None:
        self.loc = loc
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=False)

    @property
    def mean(self) -> Tensor:
        """The location itself."""
        return self.loc

    @property
    def variance(self) -> Tensor:
        """Zeros of the location's shape."""
        return torch.zeros_like(self.loc)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """``loc`` repeated to [*sample_shape, *batch, D], with gradients flowing into ``loc``."""
        return self.loc.expand(self._extended_shape(torch.Size(sample_shape)))

    def log_prob(self, value: Tensor) -> Tensor:
        """Undefined: a point mass has no density (raises NotImplementedError)."""
        raise NotImplementedError(
            "a point mass has no density: its log-probability, KL and importance weights are "
            "undefined"
        )


class MixtureOfDiagNormals(Distribution):
    """(1/K) sum_k N(mu_k, diag(exp(logvar_k))), equal weights (a VampPrior).

    Components [K, D] give one mixture (batch shape ()); components [B, K, D] give one mixture
    per example (batch shape [B]: a class-conditional prior, each example's own class's
    components). Event shape [D]; ``log_prob`` is a logsumexp over the components. There is no
    closed-form KL against it: :func:`kl_divergence` uses the Monte-Carlo estimate.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, mu: Tensor, logvar: Tensor) -> None:
        if mu.dim() not in (2, 3) or mu.shape != logvar.shape:
            raise ValueError(
                f"components must be [K, D] or [B, K, D] (mu and logvar alike), got "
                f"{tuple(mu.shape)} and {tuple(logvar.shape)}"
            )
        self.components = DiagNormal(mu, logvar)
        super().__init__(mu.shape[:-2], mu.shape[-1:], validate_args=False)

    @property
    def num_components(self) -> int:
        """Number K of mixture components."""
        return self.components.mu.shape[-2]

    @property
    def mean(self) -> Tensor:
        """The mixture mean: the average of the component means."""
        return self.components.mu.mean(-2)

    def log_prob(self, value: Tensor) -> Tensor:
        """log p(value) = logsumexp_k log N(value; mu_k, sigma_k^2) - log K: [..., D] -> [...].

        The quadratic forms sum_d (z_d - mu_kd)^2 / sigma_kd^2 of all N values against all K
        components are matrix products ([N, D] @ [D, K], or one per example of a batched
        mixture), not an [N, K, D] tensor: the importance-sampled NLL evaluates ~16k values
        against K=500 components per chunk, where the broadcast form needs gigabytes and is
        ~25x slower. The expansion z^2/s^2 - 2 z mu/s^2 + mu^2/s^2 cancels badly for sharp
        components far from 0 (1e-2 nats in float32 with sigma^2 = e^-10), so it runs in
        float64 (float32 on MPS, which has no float64) outside autocast; the result has the
        value's dtype, at least float32. A batched mixture takes values [..., B, D].
        """
        mu, logvar = self.components.mu, self.components.logvar
        dim = mu.shape[-1]
        out_dtype = torch.promote_types(value.dtype, torch.float32)
        wide = torch.float32 if value.device.type == "mps" else torch.float64
        with torch.autocast(value.device.type, enabled=False):
            mu, logvar = mu.to(wide), logvar.to(wide)
            precision = torch.exp(-logvar)  # [(B,) K, D]
            const = (mu * mu * precision + logvar).sum(-1) + dim * LOG_2PI  # [(B,) K]
            if mu.dim() == 2:
                z = value.reshape(-1, dim).to(wide)
                quad = torch.addmm(const, z * z, precision.T)  # [N, K]
                quad = torch.addmm(quad, z, (mu * precision).T, alpha=-2.0)
            else:
                batch = mu.shape[0]
                z = value.reshape(-1, batch, dim).transpose(0, 1).to(wide)  # [B, N, D]
                quad = torch.baddbmm(const.unsqueeze(1), z * z, precision.transpose(1, 2))
                quad = torch.baddbmm(quad, z, (mu * precision).transpose(1, 2), alpha=-2.0)
                quad = quad.transpose(0, 1)  # [N, B, K]
            log_p = torch.logsumexp(-0.5 * quad, dim=-1) - math.log(self.num_components)
        return log_p.to(out_dtype).reshape(value.shape[:-1])

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Draws [*sample_shape, *batch_shape, D]: a uniform component, then its Gaussian."""
        shape = torch.Size(sample_shape) + self.batch_shape
        with torch.no_grad():
            mu, logvar = self.components.mu, self.components.logvar
            k = torch.randint(self.num_components, shape, device=mu.device)
            if mu.dim() == 3:  # example b draws from its own components mu[b]
                rows = torch.arange(mu.shape[0], device=mu.device).expand(shape)
                return DiagNormal(mu[rows, k], logvar[rows, k]).sample()
            return DiagNormal(mu[k], logvar[k]).sample()
