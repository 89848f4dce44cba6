"""A two-layer ladder VAE (Sonderby et al. 2016; two stochastic layers as in Burda et al. 2015).

Generative model, top-down:  p(z2) = N(0, I),  p(z1|z2) = N(mu_p(z2), diag s_p^2(z2)),  p(x|z1).
Inference, bottom-up then top-down:

    (m1, v1)  = encoder(x)                      bottom-up Gaussian of layer 1 (the base's encoder)
    (m2, v2)  = up([m1, log v1])                 deterministic path on to layer 2
    q(z2|x)   = N(m2, diag v2)                   the top layer: its bottom-up Gaussian
    q(z1|z2,x)= N(mu_q, diag s_q^2),  1/s_q^2 = 1/v1 + 1/s_p^2(z2),
                mu_q = s_q^2 (m1 / v1 + mu_p(z2) / s_p^2(z2))   (the precision-weighted merge)

The two layers are one latent vector z = [z1, z2] (size D = D1 + D2, z1 first): the posterior
and the prior are distribution objects over it (:class:`TopDownPosterior`,
:class:`TopDownPrior`) that sample layer by layer and give the joint ``log_prob``, so the
base's ``log_weights``/``log_likelihood`` estimate log p(x) over both layers unchanged:
log w = log p(x|z1) + log p(z1, z2) - log q(z1, z2|x). In the notation of
:mod:`vae_zoo.models.base` (w = KL-schedule weight, e.g. a warm-up)::

    recon = log p(x|z1),  z ~ q(z1, z2|x)                                      per example [B]
    kl_z2 = KL(q(z2|x) || N(0, I))                              (closed form)    per example [B]
    kl_z1 = KL(q(z1|z2,x) || p(z1|z2)) at the sampled z2         (closed form in z1) [B]
    kl    = kl_z1 + kl_z2,   an unbiased estimate of KL(q(z1,z2|x) || p(z1,z2))  [B]
    elbo  = recon - kl;   loss = -(recon - w * kl)                              [B]

``kl_per_dim`` is [kl_z1 per unit at the sampled z2, kl_z2 per unit]. ``latent_dim`` is the
size D1 of z1, the layer the base's encoder and decoder see, so any encoder/decoder pair of
:mod:`vae_zoo.networks` serves; ``top_latent_dim`` is D2 and the model's ``self.latent_dim``
is D1 + D2, the size of z. Gaussian parameters, the merge and the KLs are kept in float32
(or wider) under mixed precision and in half-precision models.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from vae_zoo.distributions import DiagNormal, StandardNormal, gaussian_kl
from vae_zoo.errors import ConfigError
from vae_zoo.models.base import BaseVAE, ForwardPass
from vae_zoo.models.registry import register_model
from vae_zoo.networks import mlp

#: z2 -> p(z1|z2), a diagonal Gaussian over z1 with z2's leading (sample, batch) shape
ConditionalPrior = Callable[[Tensor], DiagNormal]


def precision_weighted(a: DiagNormal, b: DiagNormal) -> DiagNormal:
    """The normalised product of two diagonal Gaussians: precisions add, means weigh by them.

    1/var = 1/var_a + 1/var_b and mu = var (mu_a / var_a + mu_b / var_b), in log-variance form
    (logaddexp, sigmoid) so that no variance is ever inverted. The result's log-variance lies in
    [min - log 2, min] of the two, so it needs no clamp of its own.
    """
    logvar = -torch.logaddexp(-a.logvar, -b.logvar)
    weight_a = torch.sigmoid(b.logvar - a.logvar)  # var_b / (var_a + var_b) = prec_a / sum
    return DiagNormal(weight_a * a.mu + (1.0 - weight_a) * b.mu, logvar)


class TopDownPosterior(Distribution):
    """q(z1, z2 | x) = q(z2|x) q(z1|z2, x) over z = [z1, z2]: batch [B], event [D1 + D2].

    Draws z2, then z1 from the precision-weighted merge of layer 1's bottom-up Gaussian and
    p(z1|z2) at that z2; ``log_prob`` is log q(z2|x) + log q(z1|z2, x) of a joint sample.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, bottom_up: DiagNormal, top: DiagNormal, prior_z1: ConditionalPrior):
        self.bottom_up = bottom_up  # layer 1's bottom-up Gaussian N(m1, v1), [B, D1]
        self.top = top  # q(z2|x), [B, D2]
        self.prior_z1 = prior_z1
        self.z1_dim = bottom_up.mu.shape[-1]
        self._last: tuple[Tensor, DiagNormal, DiagNormal] | None = None
        event = self.z1_dim + top.mu.shape[-1]
        super().__init__(top.mu.shape[:-1], torch.Size([event]), validate_args=False)

    def split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(z1, z2) of joint samples z [..., D1 + D2]."""
        return z[..., : self.z1_dim], z[..., self.z1_dim :]

    def given_z2(self, z2: Tensor) -> tuple[DiagNormal, DiagNormal]:
        """(q(z1|z2, x), p(z1|z2)) at z2 [..., B, D2]: the merge and the top-down prior."""
        p1 = self.prior_z1(z2)
        return precision_weighted(self.bottom_up, p1), p1

    def layer1_at(self, z: Tensor) -> tuple[DiagNormal, DiagNormal]:
        """(q(z1|z2, x), p(z1|z2)) at the z2 of z (reusing those of the last draw for it)."""
        if self._last is not None and self._last[0] is z:
            return self._last[1], self._last[2]
        return self.given_z2(self.split(z)[1])

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Joint draws [*sample_shape, B, D1 + D2]: z2 ~ q(z2|x), then z1 ~ q(z1|z2, x)."""
        z2 = self.top.rsample(sample_shape)
        q1, p1 = self.given_z2(z2)
        z = torch.cat([q1.rsample(), z2], dim=-1)
        self._last = (z, q1, p1)
        return z

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Joint draws without gradients."""
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        """log q(z2|x) + log q(z1|z2, x) of joint samples [..., B, D1 + D2] -> [..., B]."""
        z1, z2 = self.split(value)
        q1, _ = self.layer1_at(value)
        return self.top.log_prob(z2) + q1.log_prob(z1)

    @functools.cached_property
    def mean(self) -> Tensor:
        """[E z1 given z2 = E z2, E z2]: exact for z2; for z1 the conditional mean at z2's mean.

        E[z1] itself is an integral over z2 (exact only for a linear top-down path); this
        deterministic plug-in keeps reconstructions, ``mse`` and active units deterministic.
        """
        q1, _ = self.given_z2(self.top.mu)
        return torch.cat([q1.mu, self.top.mu], dim=-1)


class TopDownPrior(Distribution):
    """p(z1, z2) = N(z2; 0, I) p(z1|z2) over z = [z1, z2]: batch (), event [D1 + D2]."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        prior_z1: ConditionalPrior,
        z1_dim: int,
        z2_dim: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.prior_z1 = prior_z1
        self.z1_dim = z1_dim
        self.top = StandardNormal(z2_dim, device=device, dtype=dtype)
        super().__init__(torch.Size(), torch.Size([z1_dim + z2_dim]), validate_args=False)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Ancestral draws [*sample_shape, D1 + D2]: z2 ~ N(0, I), then z1 ~ p(z1|z2)."""
        z2 = self.top.rsample(sample_shape)
        return torch.cat([self.prior_z1(z2).rsample(), z2], dim=-1)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Ancestral draws without gradients."""
        with torch.no_grad():
            return self.rsample(sample_shape)

    def from_noise(self, eps: Tensor) -> Tensor:
        """Standard-normal noise [..., D1 + D2] mapped to z: z2 = eps2, z1 = mu_p + s_p * eps1."""
        z2 = eps[..., self.z1_dim :]
        return torch.cat([self.prior_z1(z2).from_noise(eps[..., : self.z1_dim]), z2], dim=-1)

    def log_prob(self, value: Tensor) -> Tensor:
        """log N(z2; 0, I) + log p(z1|z2) of joint samples [..., D1 + D2] -> [...]."""
        z1, z2 = value[..., : self.z1_dim], value[..., self.z1_dim :]
        return self.top.log_prob(z2) + self.prior_z1(z2).log_prob(z1)


@register_model("ladder_vae")
class LadderVAE(BaseVAE):
    """Ladder VAE: two stochastic layers z2 -> z1 -> x with top-down inference.

    Args:
        top_latent_dim: size D2 of the top layer z2 (``latent_dim`` is the size D1 of z1).
        ladder_hidden_dims: hidden widths of the two MLPs the ladder adds: up from layer 1's
            bottom-up Gaussian to q(z2|x), and down from z2 to p(z1|z2).
        ladder_act: their activation (see :func:`vae_zoo.networks.activation`).
        *args, **kwargs: the :class:`BaseVAE` arguments; its encoder is the bottom-up path to
            layer 1 and its decoder is p(x|z1).
    """

    def __init__(
        self,
        *args: Any,
        top_latent_dim: int = 16,
        ladder_hidden_dims: Sequence[int] = (256,),
        ladder_act: str = "relu",
        **kwargs: Any,
    ) -> None:
        if top_latent_dim < 1:
            raise ConfigError(f"top_latent_dim must be a positive integer, got {top_latent_dim}")
        if any(int(h) < 1 for h in ladder_hidden_dims):
            raise ConfigError(
                f"ladder_hidden_dims must be positive widths, got {list(ladder_hidden_dims)}"
            )
        super().__init__(*args, **kwargs)
        d1, d2 = self.latent_dim, top_latent_dim
        hidden = [int(h) for h in ladder_hidden_dims]
        self.z1_dim, self.z2_dim = d1, d2
        # z = [z1, z2]: the size of the vector the posterior and prior objects live on
        self.latent_dim = d1 + d2
        self.up = mlp([2 * d1, *hidden, 2 * d2], ladder_act)  # [m1, log v1] -> q(z2|x)
        self.down = mlp([d2, *hidden, 2 * d1], ladder_act)  # z2 -> p(z1|z2)

    # ----------------------------------------------------------------- the distributions
    @property
    def latent_dtype(self) -> torch.dtype:
        """The dtype of z and of the Gaussians' parameters: at least float32 (bf16 models too)."""
        return torch.promote_types(self.dtype, torch.float32)

    def _gaussian(self, mu: Tensor, logvar: Tensor) -> DiagNormal:
        """A diagonal Gaussian in ``latent_dtype``, its log-variance clamped as the encoder's."""
        bounds = (self.hparams.logvar_min, self.hparams.logvar_max)
        dtype = self.latent_dtype
        return DiagNormal(mu.to(dtype), logvar.to(dtype).clamp(*bounds))

    def prior_z1(self, z2: Tensor) -> DiagNormal:
        """p(z1|z2): the top-down Gaussian, for z2 of any leading shape [..., D2]."""
        return self._gaussian(*self.down(z2.to(self.dtype)).chunk(2, dim=-1))

    def posterior(self, x: Tensor, c: Tensor | None = None) -> Distribution:
        """q(z1, z2 | x): bottom-up Gaussians of both layers, merged top-down for z1."""
        m1, logv1 = self.encode(x, c)
        bottom_up = self._gaussian(m1, logv1)
        top = self._gaussian(*self.up(torch.cat([m1, logv1], dim=-1)).chunk(2, dim=-1))
        return TopDownPosterior(bottom_up, top, self.prior_z1)

    def prior(self, c: Tensor | None = None) -> Distribution:
        """p(z1, z2) = N(z2; 0, I) p(z1|z2), sampled ancestrally."""
        return TopDownPrior(
            self.prior_z1, self.z1_dim, self.z2_dim, self.device, self.latent_dtype
        )

    def decode(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        """Parameters of p(x|z1) from joint z [B, D1 + D2] (z2 acts on x only through z1)."""
        if z.shape[-1] != self.latent_dim:
            raise ValueError(
                f"LadderVAE.decode takes z = [z1, z2] of size {self.latent_dim}, got "
                f"{z.shape[-1]}"
            )
        return super().decode(z[..., : self.z1_dim].to(self.dtype), c)

    def kl(
        self, posterior: Distribution, prior: Distribution, z: Tensor
    ) -> tuple[Tensor | None, Tensor | None]:
        """Per unit [..., B, D1 + D2]: KL(q(z1|z2,x) || p(z1|z2)) at z's z2, then KL of z2."""
        if not isinstance(posterior, TopDownPosterior):
            return super().kl(posterior, prior, z)
        q1, p1 = posterior.layer1_at(z)
        kl1 = gaussian_kl(q1.mu, q1.logvar, p1.mu, p1.logvar)  # [..., B, D1], z may hold draws
        kl2 = gaussian_kl(posterior.top.mu, posterior.top.logvar)  # [B, D2]
        per_dim = torch.cat([kl1, kl2.expand(*kl1.shape[:-1], -1)], dim=-1)
        return per_dim, per_dim.sum(-1)

    # ----------------------------------------------------------------- the objective
    def loss(self, out: ForwardPass, x: Tensor) -> dict[str, Tensor]:
        """The ELBO terms and the KL of each layer, ``kl_z1`` and ``kl_z2`` ([B] each)."""
        terms = super().loss(out, x)
        per_dim = out.kl_per_dim
        assert per_dim is not None  # kl() always gives it for the top-down posterior
        return {
            **terms,
            "kl_z1": per_dim[:, : self.z1_dim].sum(-1),
            "kl_z2": per_dim[:, self.z1_dim :].sum(-1),
        }
