"""VampPrior VAE: the mixture prior, its Monte-Carlo KL, the IW-NLL, sampling, checkpoints.

* ``MixtureOfDiagNormals.log_prob`` and the model's prior against
  ``torch.distributions.MixtureSameFamily`` (sharp components included, also under autocast);
* the one-sample KL log q(z) - log p(z): exact at the pass's z, and unbiased against a
  200,000-sample estimate made with ``torch.distributions``;
* the importance-sampled log-likelihood uses the mixture prior (fixed noise);
* ``sample`` draws from the mixture (its moments);
* through the CLI: the pseudo-inputs are trained, checkpointed and restored exactly on resume.
"""

import math

import pytest
import torch
from cli_support import TINY, config, enter_workdir, run
from fixed_noise import EpsBank
from small_models import SMALL
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Categorical,
    Independent,
    MixtureSameFamily,
    Normal,
)
from variant_cli import evaluate_everywhere, fit_and_resume, metrics_rows

from vae_zoo.distributions import MixtureOfDiagNormals
from vae_zoo.errors import ConfigError
from vae_zoo.models import VampPriorVAE


def reference_mixture(mu: Tensor, logvar: Tensor) -> MixtureSameFamily:
    """(1/K) sum_k N(mu_k, diag exp(logvar_k)) with torch.distributions, in float64."""
    mu, logvar = mu.double(), logvar.double()
    weights = Categorical(logits=torch.zeros(mu.shape[0], dtype=torch.float64))
    return MixtureSameFamily(weights, Independent(Normal(mu, torch.exp(0.5 * logvar)), 1))


def spread_model(k: int = 4, dtype: torch.dtype = torch.float64) -> VampPriorVAE:
    """A small model whose K components differ clearly (distinct pseudo-inputs, a larger head)."""
    model = VampPriorVAE(**SMALL, num_pseudo_inputs=k).to(dtype)
    with torch.no_grad():
        model.pseudo_logits.normal_(0.0, 3.0)
        head = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
        head.weight.mul_(4.0)
    return model


def prior_components(model: VampPriorVAE) -> tuple[Tensor, Tensor]:
    """(mu_k, logvar_k) of q(z|u_k), straight from the encoder (not through model.prior)."""
    u = torch.sigmoid(model.pseudo_logits)
    mu, logvar = model.encoder(u)
    return mu, logvar.clamp(model.hparams.logvar_min, model.hparams.logvar_max)


# --------------------------------------------------------------------------- the prior density


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mixture_log_prob_matches_mixture_same_family(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    k, d = 6, 5
    mu = (3 * torch.randn(k, d, generator=gen)).to(dtype)
    logvar = (4 * torch.randn(k, d, generator=gen) - 3).clamp(-10, 10).to(dtype)
    logvar[0] = -10.0  # a sharp component far from 0, where a naive expansion cancels
    mu[0] = 4.0
    z = torch.cat([
        (mu[0] + torch.exp(0.5 * logvar[0]) * torch.randn(7, d, generator=gen, dtype=dtype)),
        3 * torch.randn(13, d, generator=gen).to(dtype),
    ]).view(4, 5, d)  # any leading shape
    ours = MixtureOfDiagNormals(mu, logvar).log_prob(z)
    ref = reference_mixture(mu, logvar).log_prob(z.double())
    assert ours.shape == (4, 5) and ours.dtype == dtype
    # float32 output: the rounding of values of up to ~1e4 nats
    tol = 1e-9 if dtype == torch.float64 else 1e-6 * ref.abs().clamp_min(1.0)
    assert ((ours.double() - ref).abs() <= tol).all(), (ours.double() - ref).abs().max()


def test_mixture_log_prob_stays_exact_under_bf16_autocast() -> None:
    gen = torch.Generator().manual_seed(4)
    mu, logvar = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen) - 2
    z = torch.randn(50, 3, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = MixtureOfDiagNormals(mu, logvar).log_prob(z)
    assert ours.dtype == torch.float32
    ref = reference_mixture(mu, logvar).log_prob(z.double())
    assert (ours.double() - ref).abs().max() < 1e-4


def test_the_prior_is_the_mixture_of_the_pseudo_inputs_posteriors() -> None:
    model = spread_model(k=5)
    z = 2 * torch.randn(7, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        ours = model.prior().log_prob(z)
        ref = reference_mixture(*prior_components(model)).log_prob(z)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-9)
    assert model.prior().batch_shape == () and model.prior().event_shape == (3,)
    assert model.num_pseudo_inputs == 5
    assert model.pseudo_inputs.min() >= 0 and model.pseudo_inputs.max() <= 1


def test_pseudo_inputs_start_grey_and_learn() -> None:
    torch.manual_seed(0)
    model = VampPriorVAE(**SMALL)  # the paper's K=500 and initialisation
    u = model.pseudo_inputs.detach()
    assert u.shape == (500, 1, 8, 8)
    assert abs(float(u.mean()) - 1 / (1 + math.exp(0.05))) < 1e-3 and float(u.std()) < 0.005
    x = torch.bernoulli(torch.full((6, 1, 8, 8), 0.3))
    model.loss(model(x), x)["loss"].mean().backward()
    assert model.pseudo_logits.grad is not None and model.pseudo_logits.grad.abs().sum() > 0


# --------------------------------------------------------------------------- the KL


def test_the_kl_is_log_q_minus_log_p_at_the_sample() -> None:
    model = spread_model()
    x = torch.bernoulli(torch.full((6, 1, 8, 8), 0.3, dtype=torch.float64))
    with torch.no_grad():
        out = model(x)
        terms = model.loss(out, x)
        mu, logvar = model.encoder(x)
        log_q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1).log_prob(out.z)
        log_p = reference_mixture(*prior_components(model)).log_prob(out.z)
        recon = Independent(Bernoulli(logits=model.decoder(out.z)), 3).log_prob(x)
    assert out.kl_per_dim is None  # no closed form: no per-dimension KL
    torch.testing.assert_close(terms["kl"], log_q - log_p, rtol=0, atol=1e-9)
    torch.testing.assert_close(terms["recon"], recon, rtol=0, atol=1e-9)
    torch.testing.assert_close(terms["elbo"], recon - log_q + log_p, rtol=0, atol=1e-9)
    torch.testing.assert_close(terms["loss"], -terms["elbo"], rtol=0, atol=1e-9)


def test_the_monte_carlo_kl_is_unbiased() -> None:
    model = spread_model()
    x = torch.bernoulli(torch.full((2, 1, 8, 8), 0.3, dtype=torch.float64))
    repeats = 20_000
    with torch.no_grad():
        kl = model(x.repeat(repeats, 1, 1, 1)).kl.view(repeats, 2)
        # a large-sample estimate of KL(q || p) made only with torch.distributions
        mu, logvar = model.encoder(x)
        q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
        z = q.sample((200_000,))
        ref = q.log_prob(z) - reference_mixture(*prior_components(model)).log_prob(z)
    se = torch.sqrt(kl.var(0) / repeats + ref.var(0) / 200_000)
    assert ((kl.mean(0) - ref.mean(0)).abs() <= 5 * se).all(), (kl.mean(0), ref.mean(0), se)
    assert (se < 0.05).all()  # precise enough to see a forgotten log K (1.39 nats here)


# --------------------------------------------------------------------------- IW-NLL, sampling


def test_the_importance_sampled_nll_uses_the_mixture_prior(monkeypatch) -> None:
    model = spread_model()
    model.hparams.iw_rows = 8  # chunks of 2 draws for 4 images: the chunks must merge right
    x = torch.bernoulli(torch.full((4, 1, 8, 8), 0.3, dtype=torch.float64))
    k = 6
    eps = torch.randn(k, 4, 3, dtype=torch.float64)
    bank = EpsBank(eps)
    monkeypatch.setattr(model, "posterior", bank.posterior_of(model))
    ours = model.log_likelihood(x, k=k)
    assert bank.used == k and len(bank.chunks) == 3

    with torch.no_grad():
        mu, logvar = model.encoder(x)
        q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
        prior = reference_mixture(*prior_components(model))
        log_w = []
        for e in eps:
            z = mu + torch.exp(0.5 * logvar) * e
            log_px = Independent(Bernoulli(logits=model.decoder(z)), 3).log_prob(x)
            log_w.append(log_px + prior.log_prob(z) - q.log_prob(z))
        ref = torch.logsumexp(torch.stack(log_w), 0) - math.log(k)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-9)


def test_samples_come_from_the_mixture() -> None:
    model = spread_model()
    with torch.no_grad():
        mu, logvar = prior_components(model)
        z = model.sample_latent(40_000)
        images = model.sample(5)
    assert z.shape == (40_000, 3) and images.shape == (5, 1, 8, 8)
    mean = mu.mean(0)
    var = (logvar.exp() + mu.pow(2)).mean(0) - mean.pow(2)
    assert ((z.mean(0) - mean).abs() <= 5 * torch.sqrt(var / 40_000)).all()
    # the variance of a sample variance is about 2 var^2 / n for near-Gaussian data; mixtures
    # have heavier tails, so allow twice that
    assert ((z.var(0) - var).abs() <= 10 * var * math.sqrt(2 / 40_000)).all()
    # far from N(0, I): a prior that ignored the pseudo-inputs would fail the checks above
    assert (mean.abs().max() > 0.5) or ((var - 1).abs().max() > 0.5)


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_pseudo_inputs": 0}, "num_pseudo_inputs must be an integer >= 1"),
        ({"num_pseudo_inputs": 2.5}, "num_pseudo_inputs must be an integer >= 1"),
        ({"pseudo_init_std": -1.0}, "pseudo_init_std must be >= 0"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        VampPriorVAE(**SMALL, **kwargs)




# --------------------------------------------------------------------------- through the CLI


def test_pseudo_inputs_survive_a_resume_and_every_command_runs(
    tmp_path, monkeypatch, tmp_path_factory
) -> None:
    enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    fitted = fit_and_resume("vamp_vae", "--model.init_args.num_pseudo_inputs=7")
    saved = fitted.ckpt["state_dict"]["pseudo_logits"]
    assert saved.shape == (7, 1, 28, 28)
    # trained away from their initial values, and restored bit for bit on resume (with every
    # other tensor: fit_and_resume compared the whole state_dict and the optimizer state)
    assert "pseudo_logits" in fitted.changed()
    assert torch.equal(fitted.resumed.state["pseudo_logits"], saved)
    adam = fitted.ckpt["optimizer_states"][0]["state"]
    assert any(s["exp_avg"].shape == saved.shape for s in adam.values())  # its Adam moments too
    row, _ = evaluate_everywhere(fitted.run_dir, ())
    assert row["nll"] is not None and row.get("kl_dim_max") is None  # MC KL: no per-dim KL
    assert row["objective"].startswith("-ELBO, VampPrior K=7")


def test_fit_in_bf16_mixed(tmp_path, monkeypatch, tmp_path_factory) -> None:
    enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    args = ["--config", config("mnist", "vamp_vae"), "--config", config("trainer", "cpu"),
            "--config", config("trainer", "bf16-mixed"), *TINY,
            "--model.init_args.num_pseudo_inputs=10"]
    assert run("fit", *args) == 0
    rows = metrics_rows(tmp_path / "runs/mnist/vamp_vae/version_0/metrics.csv")
    values = [float(r["val/nll"]) for r in rows if r.get("val/nll")]
    assert values and all(math.isfinite(v) for v in values)
