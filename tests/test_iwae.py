"""IWAE: the objective against an independent computation, its expectation against closed forms.

* with fixed noise, the loss is -(logsumexp_i log w_i - log k), each log w_i recomputed here
  with ``torch.distributions``;
* on a linear-Gaussian model, where the ELBO and log p(x) are known in closed form, the mean of
  L_1 over many draws is the ELBO, and E[L_1] < E[L_5] < E[L_50] <= log p(x);
* through the CLI: fit, resume from ``last``, validate/test/predict, compare, sample, bf16.
"""

import functools
import math

import pytest
import torch
from cli_support import TINY, config, enter_workdir, run
from linear_gaussian import IdentityGaussian, LinearDecoder
from small_models import SMALL
from torch import Tensor, nn
from torch.distributions import Bernoulli, Independent, MultivariateNormal, Normal
from variant_cli import evaluate_everywhere, fit_and_resume, metrics_rows

from vae_zoo.distributions import DiagNormal
from vae_zoo.errors import ConfigError
from vae_zoo.models import IWAE, VAE
from vae_zoo.schedules import KLSchedule, LinearWarmup


class NoiseQueue:
    """Hands out a fixed stream of standard-normal noise to every posterior draw, in order."""

    def __init__(self, eps: Tensor) -> None:
        self.eps = eps
        self.used = 0

    def posterior_of(self, model: IWAE):
        queue = self

        class Queued(DiagNormal):
            def rsample(self, sample_shape=()) -> Tensor:
                n = math.prod(sample_shape)
                eps = queue.eps[queue.used : queue.used + max(n, 1)]
                queue.used += max(n, 1)
                return self.from_noise(eps.reshape(*sample_shape, *eps.shape[1:]))

        return lambda x, c=None: Queued(*model.encode(x, c))


@pytest.mark.parametrize("k", [1, 4])
def test_the_objective_is_logsumexp_of_the_log_weights_minus_log_k(k: int, monkeypatch) -> None:
    model = IWAE(**SMALL, k=k).double()
    x = torch.bernoulli(torch.full((5, 1, 8, 8), 0.4, dtype=torch.float64))
    eps = torch.randn(k, 5, 3, dtype=torch.float64)
    queue = NoiseQueue(eps)
    monkeypatch.setattr(model, "posterior", queue.posterior_of(model))
    terms = model.loss(model(x), x)
    assert queue.used == k  # the forward pass's z and k - 1 more: k draws in all

    with torch.no_grad():
        mu, logvar = model.encoder(x)  # |logvar| << 10: the clamp is inactive
        q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
        prior = Independent(Normal(torch.zeros(3, dtype=torch.float64), 1.0), 1)
        log_w = []
        for e in eps:
            z = mu + torch.exp(0.5 * logvar) * e
            log_px = Independent(Bernoulli(logits=model.decoder(z)), 3).log_prob(x)
            log_w.append(log_px + prior.log_prob(z) - q.log_prob(z))
        log_w = torch.stack(log_w)
        top = log_w.max(0).values
        bound = top + torch.log(torch.exp(log_w - top).sum(0)) - math.log(k)
        z1 = mu + torch.exp(0.5 * logvar) * eps[0]
        recon1 = Independent(Bernoulli(logits=model.decoder(z1)), 3).log_prob(x)
        kl = torch.distributions.kl_divergence(q, prior)
    torch.testing.assert_close(terms["iw_bound"].detach(), bound, rtol=0, atol=1e-9)
    torch.testing.assert_close(terms["loss"].detach(), -bound, rtol=0, atol=1e-9)
    # the one-sample terms are those of the first draw, with the closed-form KL
    torch.testing.assert_close(terms["recon"].detach(), recon1, rtol=0, atol=1e-9)
    torch.testing.assert_close(terms["kl"].detach(), kl, rtol=0, atol=1e-9)
    torch.testing.assert_close(terms["elbo"].detach(), recon1 - kl, rtol=0, atol=1e-9)
    assert all(v.shape == (5,) for v in terms.values())


def test_the_loss_is_differentiable_in_every_network() -> None:
    model = IWAE(**SMALL, k=3)
    x = torch.bernoulli(torch.full((4, 1, 8, 8), 0.4))
    model.loss(model(x), x)["loss"].mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# --------------------------------------------------------------------------- in expectation
# Linear-Gaussian model: p(z) = N(0, I), p(x|z) = N(Wz + b, s^2 I), q(z|x) = N(m(x), S) with a
# deliberately wrong m and S, so that the bounds are loose and their ordering shows.
X_DIM, Z_DIM, SIGMA = 6, 3, 0.5


class ShiftedPosterior(nn.Module):
    """The exact posterior's mean gain, shifted by 0.6; log-variance 0.8 above the exact one."""

    def __init__(self, image_shape, latent_dim, cond_dim, w: Tensor, b: Tensor) -> None:
        super().__init__()
        s = torch.linalg.inv(torch.eye(latent_dim, dtype=w.dtype) + w.T @ w / SIGMA**2)
        self.register_buffer("gain", s @ w.T / SIGMA**2)
        self.register_buffer("b", b)
        self.register_buffer("logvar", torch.diagonal(s).log() + 0.8)

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu = (x.flatten(1) - self.b) @ self.gain.T + 0.6
        return mu, self.logvar.expand_as(mu)


def _linear_gaussian(k: int) -> tuple[IWAE, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    basis, _ = torch.linalg.qr(torch.randn(X_DIM, Z_DIM, generator=gen, dtype=torch.float64))
    w = basis * torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    b = 0.3 * torch.randn(X_DIM, generator=gen, dtype=torch.float64)
    model = IWAE(
        latent_dim=Z_DIM,
        image_shape=(1, 1, X_DIM),
        encoder=functools.partial(ShiftedPosterior, w=w, b=b),
        decoder=functools.partial(LinearDecoder, w=w, b=b),
        likelihood=IdentityGaussian(SIGMA),
        k=k,
    ).double()
    return model, w, b


def _exact(w: Tensor, b: Tensor, model: IWAE, x: Tensor) -> tuple[Tensor, Tensor]:
    """(ELBO, log p(x)) per example, in closed form."""
    mu, logvar = model.encoder(x)
    var = logvar.exp()
    flat = x.flatten(1)
    resid = flat - mu @ w.T - b
    trace = (var.unsqueeze(1) * w.pow(2)).sum((1, 2))  # tr(W S W^T), S diagonal
    recon = -0.5 * (resid.pow(2).sum(1) + trace) / SIGMA**2 - 0.5 * X_DIM * math.log(
        2 * math.pi * SIGMA**2
    )
    kl = 0.5 * (mu.pow(2) + var - 1 - logvar).sum(1)
    cov = w @ w.T + SIGMA**2 * torch.eye(X_DIM, dtype=torch.float64)
    return recon - kl, MultivariateNormal(b, cov).log_prob(flat)


def _mean_and_se(model: IWAE, x: Tensor, repeats: int) -> tuple[Tensor, Tensor]:
    """Mean over ``repeats`` independent draws of L_k for each example, and its standard error."""
    big = x.repeat(repeats, 1, 1, 1)
    with torch.no_grad():
        bound = model.loss(model(big), big)["iw_bound"].view(repeats, len(x))
    return bound.mean(0), bound.std(0) / math.sqrt(repeats)


def test_bounds_in_expectation_elbo_then_tighter_with_k_up_to_log_px() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 1, 1, X_DIM, generator=gen, dtype=torch.float64)
    model, w, b = _linear_gaussian(1)
    elbo, log_px = (t.detach() for t in _exact(w, b, model, x))
    assert (log_px - elbo).min() > 1.0  # a loose posterior: the bounds have room to differ

    means = {}
    for k in (1, 5, 50):
        model.k = k
        mean, se = _mean_and_se(model, x, 20_000 if k == 1 else 4_000)
        means[k] = mean
        # L_k is a lower bound in expectation: never above log p(x) beyond the noise
        assert (mean <= log_px + 5 * se).all(), (k, mean, log_px, se)
        if k == 1:  # k = 1 is the ELBO (the VAE's objective) in expectation
            assert ((mean - elbo).abs() <= 5 * se).all(), (mean, elbo, se)
        else:  # and every k > 1 is tighter than it
            assert (mean - elbo > 10 * se).all(), (k, mean, elbo, se)
    assert (means[1] < means[5]).all() and (means[5] < means[50]).all()


def test_k1_matches_the_vae_with_the_same_weights_in_expectation() -> None:
    torch.manual_seed(0)
    iwae = IWAE(**SMALL, k=1).double()
    vae = VAE(**SMALL).double()
    vae.load_state_dict(iwae.state_dict())
    x = torch.bernoulli(torch.full((3, 1, 8, 8), 0.4, dtype=torch.float64)).repeat(20_000, 1, 1, 1)
    with torch.no_grad():
        a = -iwae.loss(iwae(x), x)["loss"].view(20_000, 3)
        b = -vae.loss(vae(x), x)["loss"].view(20_000, 3)
    se = torch.sqrt((a.var(0) + b.var(0)) / 20_000)
    assert ((a.mean(0) - b.mean(0)).abs() <= 5 * se).all()


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("k", [0, -3, 2.5, True])
def test_k_must_be_a_positive_integer(k) -> None:
    with pytest.raises(ConfigError, match="k must be an integer >= 1"):
        IWAE(**SMALL, k=k)


def test_a_kl_schedule_is_refused() -> None:
    with pytest.raises(ConfigError, match="kl_schedule must be the constant weight 1"):
        IWAE(**SMALL, kl_schedule=LinearWarmup(warmup_steps=10))
    with pytest.raises(ConfigError, match="kl_schedule"):
        IWAE(**SMALL, kl_schedule=KLSchedule(weight=0.5))
    assert IWAE(**SMALL, kl_schedule=KLSchedule(1.0)).objective == "-L_k, IW bound k=5"




# --------------------------------------------------------------------------- through the CLI


def test_fit_resume_and_every_command(tmp_path, monkeypatch, tmp_path_factory) -> None:
    enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    fitted = fit_and_resume("iwae", "--model.init_args.k=3")
    assert fitted.ckpt["hyper_parameters"]["k"] == 3
    row, _ = evaluate_everywhere(fitted.run_dir, ("iw_bound",))
    assert row["objective"] == "-L_k, IW bound k=3"
    assert row["iw_bound"] >= row["elbo"] - 5.0  # k=3 samples on 20 images: tighter or close


def test_fit_in_bf16_mixed(tmp_path, monkeypatch, tmp_path_factory) -> None:
    enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    args = ["--config", config("mnist", "iwae"), "--config", config("trainer", "cpu"),
            "--config", config("trainer", "bf16-mixed"), *TINY]
    assert run("fit", *args) == 0
    rows = metrics_rows(tmp_path / "runs/mnist/iwae/version_0/metrics.csv")
    values = [float(r["val/iw_bound"]) for r in rows if r.get("val/iw_bound")]
    assert values and all(math.isfinite(v) for v in values)
