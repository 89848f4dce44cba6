"""An independent recomputation of every variant's ELBO from ``encode``/``decode`` alone.

The reference below reparameterizes, evaluates the Bernoulli / continuous Bernoulli /
Gaussian log-likelihoods and the Gaussian KL with its own elementary-op code, in float64; it
never calls ``vae_zoo.gaussian`` or a likelihood's ``log_prob``. The only things it reads from
the model are ``encode``, ``decode`` and parameter values (a learned sigma, the learned prior's
weights), plus the documented conventions (log-sigma clamp, logvar clamp).

Tolerances: a float64 model must agree to 1e-4 nats *absolute* on every per-example
``elbo``/``recon``/``kl``/``loss``; the float32 model must agree to 1e-4 *relative*
(|ours - ref| <= 1e-4 * max(|ref|, 1)), since float32 sums of ~800 pixel terms carry ~1e-5
relative rounding.
"""

import functools
import math
from collections.abc import Callable

import pytest
import torch
from fixed_noise import EpsBank
from torch import Tensor

import vae_zoo.models as models
from vae_zoo.likelihoods import ContinuousBernoulli, Gaussian
from vae_zoo.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder

ENC = functools.partial(MLPEncoder, hidden_dims=(32,))
DEC = functools.partial(MLPDecoder, hidden_dims=(32,))
CONV_ENC = functools.partial(ConvEncoder, channels=(4, 8), hidden_dim=32)
CONV_DEC = functools.partial(ConvDecoder, channels=(8, 4), hidden_dim=32)
LOG_2PI = math.log(2 * math.pi)
MIN_LOG_SIGMA = -6.0  # Gaussian likelihood's documented log-sigma clamp is [-6, 0]


# --------------------------------------------------------------------------- own densities


def softplus(t: Tensor) -> Tensor:
    return t.clamp(min=0) + torch.log1p(torch.exp(-t.abs()))


def sigmoid(t: Tensor) -> Tensor:
    return 1 / (1 + torch.exp(-t))


def pixel_sum(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).sum(1)


def bernoulli_ll(logits: Tensor, x: Tensor) -> Tensor:
    """sum x log s + (1 - x) log(1 - s), s = sigmoid(logits), written as x*l - softplus(l)."""
    return pixel_sum(x * logits - softplus(logits))


def continuous_bernoulli_ll(logits: Tensor, x: Tensor) -> Tensor:
    """Bernoulli term plus log C(l), C(l) = l / tanh(l / 2) (-> 2 as l -> 0)."""
    safe = torch.where(logits == 0, torch.ones_like(logits), logits)
    log_norm = torch.where(
        logits == 0, torch.full_like(logits, math.log(2.0)), torch.log(safe / torch.tanh(safe / 2))
    )
    return pixel_sum(x * logits - softplus(logits) + log_norm)


def gaussian_ll(mean_logits: Tensor, log_sigma: Tensor, x: Tensor) -> Tensor:
    """Normal(sigmoid(mean_logits), exp(log_sigma)) with log_sigma clamped to [-6, 0]."""
    log_sigma = log_sigma.clamp(MIN_LOG_SIGMA, 0.0)
    z = (x - sigmoid(mean_logits)) / torch.exp(log_sigma)
    return pixel_sum(-0.5 * z * z - log_sigma - 0.5 * LOG_2PI)


def kl_diag(mu: Tensor, logvar: Tensor, p_mu: Tensor, p_logvar: Tensor) -> Tensor:
    """KL(N(mu, e^logvar) || N(p_mu, e^p_logvar)) summed over latent dimensions."""
    var_ratio = torch.exp(logvar - p_logvar)
    mahalanobis = (mu - p_mu) ** 2 / torch.exp(p_logvar)
    return 0.5 * (var_ratio + mahalanobis - 1 - (logvar - p_logvar)).sum(1)


# --------------------------------------------------------------------------- the variants


class Case:
    """A model, its data, and the reference pieces that depend on its configuration."""

    def __init__(
        self,
        build: Callable[[], models.BaseVAE],
        loglik: Callable[[models.BaseVAE, Tensor, Tensor], Tensor],
        loss: Callable[[Tensor, Tensor], Tensor] = lambda recon, kl: -(recon - kl),
        image_shape: tuple[int, int, int] = (1, 28, 28),
        binary: bool = True,
        conditional: bool = False,
    ) -> None:
        self.build, self.loglik, self.loss = build, loglik, loss
        self.image_shape, self.binary, self.conditional = image_shape, binary, conditional


def _bern(model, params, x):
    return bernoulli_ll(params, x)


def _cb(model, params, x):
    return continuous_bernoulli_ll(params, x)


def _gauss_shared(model, params, x):
    return gaussian_ll(params, model.likelihood.log_sigma.detach().to(params), x)


def _gauss_per_pixel(model, params, x):
    mean_logits, log_sigma = params[:, : x.shape[1]], params[:, x.shape[1] :]
    return gaussian_ll(mean_logits, log_sigma, x)


def _learned_prior_cvae() -> models.BaseVAE:
    model = models.ConditionalVAE(
        latent_dim=4, encoder=ENC, decoder=DEC, num_classes=10, prior="learned"
    )
    with torch.no_grad():
        model.prior_net.weight.normal_(0, 0.7)
    return model


def _learned_sigma_vae() -> models.BaseVAE:
    model = models.VAE(latent_dim=4, encoder=ENC, decoder=DEC, likelihood=Gaussian("learned"))
    with torch.no_grad():
        model.likelihood.log_sigma.fill_(-1.7)
    return model


CASES = {
    "vae": Case(lambda: models.VAE(latent_dim=4, encoder=ENC, decoder=DEC), _bern),
    "beta_vae_3": Case(
        lambda: models.BetaVAE(latent_dim=4, encoder=ENC, decoder=DEC, beta=3.0),
        _bern,
        loss=lambda recon, kl: -(recon - 3.0 * kl),
    ),
    "beta_vae_capacity": Case(
        # no trainer: global_step is 0, so C(0) = 0 and the penalty is gamma * |mean KL|
        lambda: models.BetaVAE(latent_dim=4, encoder=ENC, decoder=DEC, gamma=5.0),
        _bern,
        loss=lambda recon, kl: -(recon - 5.0 * kl.mean().abs()),
    ),
    "cvae": Case(
        lambda: models.ConditionalVAE(latent_dim=4, encoder=ENC, decoder=DEC, num_classes=10),
        _bern,
        conditional=True,
    ),
    "cvae_learned_prior": Case(_learned_prior_cvae, _bern, conditional=True),
    "vae_conv_continuous_bernoulli": Case(
        lambda: models.VAE(
            latent_dim=4, encoder=CONV_ENC, decoder=CONV_DEC, likelihood=ContinuousBernoulli()
        ),
        _cb,
        binary=False,
    ),
    "beta_vae_gaussian_fixed": Case(
        lambda: models.BetaVAE(
            latent_dim=4, encoder=ENC, decoder=DEC, beta=3.0, likelihood=Gaussian("fixed", 0.3)
        ),
        _gauss_shared,
        loss=lambda recon, kl: -(recon - 3.0 * kl),
        binary=False,
    ),
    "vae_gaussian_learned": Case(_learned_sigma_vae, _gauss_shared, binary=False),
    "cvae_conv_gaussian_per_pixel_rgb": Case(
        lambda: models.ConditionalVAE(
            latent_dim=4,
            image_shape=(3, 32, 32),
            encoder=CONV_ENC,
            decoder=CONV_DEC,
            likelihood=Gaussian("per_pixel"),
        ),
        _gauss_per_pixel,
        image_shape=(3, 32, 32),
        binary=False,
        conditional=True,
    ),
}


def _reference(case: Case, model: models.BaseVAE, x: Tensor, y: Tensor | None, seed: int):
    """elbo/recon/kl/loss from encode/decode and the code above, in float64."""
    torch.manual_seed(seed)
    with torch.no_grad():
        mu, logvar = model.encode(x, y)
        eps = torch.randn_like(mu)  # the same draw BaseVAE.reparameterize makes from this seed
        z = mu + torch.exp(0.5 * logvar) * eps
        params = model.decode(z, y)
    mu, logvar, params, xd = mu.double(), logvar.double(), params.double(), x.double()
    recon = case.loglik(model, params, xd)
    if isinstance(model, models.ConditionalVAE) and model.prior_kind == "learned":
        w = model.prior_net.weight.detach().double()  # [2D, K]; a one-hot row picks column y
        d = model.latent_dim
        p_mu = w[:d, y].T
        p_logvar = w[d:, y].T.clamp(model.hparams.logvar_min, model.hparams.logvar_max)
    else:
        p_mu, p_logvar = torch.zeros_like(mu), torch.zeros_like(logvar)
    kl = kl_diag(mu, logvar, p_mu, p_logvar)
    return {"elbo": recon - kl, "recon": recon, "kl": kl, "loss": case.loss(recon, kl)}


def _data(case: Case, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    probs = torch.rand(6, *case.image_shape)
    x = torch.bernoulli(probs) if case.binary else probs
    y = torch.tensor([0, 3, 9, 3, 1, 7]) if case.conditional else None
    return x.to(dtype), y


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_elbo_matches_independent_recomputation(name: str, dtype: torch.dtype) -> None:
    case = CASES[name]
    model = case.build().to(dtype).eval()
    x, y = _data(case, dtype)
    torch.manual_seed(11)
    ours = {k: v.detach().double() for k, v in model.elbo(x, y).items()}
    ref = _reference(case, model, x, y, seed=11)
    for key in ("elbo", "recon", "kl", "loss"):
        assert ours[key].shape == (6,)
        err = (ours[key] - ref[key]).abs()
        if dtype == torch.float64:
            assert err.max() < 1e-4, (key, err.max())
        else:
            assert (err / ref[key].abs().clamp(min=1.0)).max() < 1e-4, (key, err.max())
    # the reference is not trivially satisfied: no part is identically zero
    assert (ref["kl"] > 1e-3).all() and (ref["recon"] != 0).all()


def test_iw_log_likelihood_matches_independent_recomputation(monkeypatch) -> None:
    case = CASES["cvae_learned_prior"]
    model = case.build().double().eval()
    model.hparams.iw_rows = 10  # batch 6 -> chunks of one sample, so k=3 takes three chunks
    x, y = _data(case, torch.float64)
    k = 3
    eps = torch.randn(k, 6, 4, dtype=torch.float64)
    bank = EpsBank(eps)
    monkeypatch.setattr(model, "posterior", bank.posterior_of(model))
    ours = model.log_likelihood(x, y, k=k)
    assert bank.chunks == [1, 1, 1]

    with torch.no_grad():
        mu, logvar = model.encode(x, y)
        w = model.prior_net.weight.detach()
        p_mu, p_logvar = w[:4, y].T, w[4:, y].T
        log_w = []
        for e in eps:
            z = mu + torch.exp(0.5 * logvar) * e
            log_q = (-0.5 * (e * e + logvar + LOG_2PI)).sum(1)
            log_p = (-0.5 * ((z - p_mu) ** 2 / torch.exp(p_logvar) + p_logvar + LOG_2PI)).sum(1)
            log_w.append(bernoulli_ll(model.decode(z, y), x) + log_p - log_q)
        log_w = torch.stack(log_w)
        top = log_w.max(0).values
        ref = top + torch.log(torch.exp(log_w - top).mean(0))
    assert (ours - ref).abs().max() < 1e-6
