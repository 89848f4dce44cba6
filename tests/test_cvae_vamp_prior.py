"""The conditional VAE's class VampPrior (``prior: vamp``) and the batched mixture it uses.

* ``MixtureOfDiagNormals`` with components [B, K, D] (one mixture per example) against
  ``torch.distributions.MixtureSameFamily`` with batch shape [B]; its draws come from each
  example's own components;
* the CVAE's p(z|c) is the mixture of q(z|u_ck, c) over class c's pseudo-inputs, computed
  here straight from the encoder; the KL is log q - log p at the pass's z; the importance
  weights use that prior for each example's own label (fixed noise, chunked);
* through the CLI: fit, resume with the pseudo-inputs restored exactly, every command runs.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from cli_support import enter_workdir
from fixed_noise import EpsBank
from small_models import SMALL
from torch import Tensor
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal
from variant_cli import check_bf16_mixed, evaluate_everywhere, fit_and_resume

from vae_zoo.distributions import MixtureOfDiagNormals
from vae_zoo.errors import ConfigError
from vae_zoo.models import ConditionalVAE
from vae_zoo.schedules import KLSchedule


def reference(mu: Tensor, logvar: Tensor) -> MixtureSameFamily:
    """Equal-weight mixtures of diagonal Gaussians, components [..., K, D], in float64."""
    mu, logvar = mu.double(), logvar.double()
    weights = Categorical(logits=torch.zeros(mu.shape[:-1], dtype=torch.float64))
    return MixtureSameFamily(weights, Independent(Normal(mu, torch.exp(0.5 * logvar)), 1))


def vamp_cvae(per_class: int = 3, classes: int = 4) -> ConditionalVAE:
    """A small float64 CVAE with a class VampPrior whose components differ clearly."""
    torch.manual_seed(0)
    model = ConditionalVAE(
        **SMALL, num_classes=classes, prior="vamp", pseudo_inputs_per_class=per_class
    ).double()
    with torch.no_grad():
        model.pseudo_logits.normal_(0.0, 3.0)
    return model.eval()


def class_components(model: ConditionalVAE, label: int) -> tuple[Tensor, Tensor]:
    """(mu, logvar) of q(z|u, c) for class ``label``'s pseudo-inputs, from the encoder itself."""
    per_class = model.pseudo_logits.shape[0] // model.num_classes
    u = torch.sigmoid(model.pseudo_logits[label * per_class : (label + 1) * per_class])
    c = F.one_hot(torch.full((per_class,), label), model.num_classes).double()
    mu, logvar = model.encoder(u, c)
    return mu, logvar.clamp(model.hparams.logvar_min, model.hparams.logvar_max)


# --------------------------------------------------------------------------- batched mixture


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_mixture_log_prob_matches_mixture_same_family(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(5)
    b, k, d = 3, 5, 4
    mu = (3 * torch.randn(b, k, d, generator=gen)).to(dtype)
    logvar = (2 * torch.randn(b, k, d, generator=gen) - 2).to(dtype)
    z = (3 * torch.randn(6, 2, b, d, generator=gen)).to(dtype)  # any leading shape, then B
    ours = MixtureOfDiagNormals(mu, logvar).log_prob(z)
    ref = reference(mu, logvar).log_prob(z.double())
    assert ours.shape == (6, 2, b) and ours.dtype == dtype
    tol = 1e-9 if dtype == torch.float64 else 1e-6 * ref.abs().clamp_min(1.0)
    assert ((ours.double() - ref).abs() <= tol).all(), (ours.double() - ref).abs().max()
    mixture = MixtureOfDiagNormals(mu, logvar)
    assert mixture.batch_shape == (b,) and mixture.event_shape == (d,)
    torch.testing.assert_close(mixture.mean, mu.mean(1))


def test_batched_mixture_draws_from_each_examples_own_components() -> None:
    # example b's components sit at 100 * b, far from every other example's
    mu = torch.stack([torch.full((2, 3), 100.0 * b) + torch.randn(2, 3) for b in range(4)])
    logvar = torch.full_like(mu, -4.0)
    draws = MixtureOfDiagNormals(mu, logvar).sample((500,))
    assert draws.shape == (500, 4, 3)
    for b in range(4):
        assert (draws[:, b] - 100.0 * b).abs().max() < 5.0
        # both components of example b are drawn, about equally often
        first = ((draws[:, b] - mu[b, 0]).norm(dim=-1) < (draws[:, b] - mu[b, 1]).norm(dim=-1))
        assert 0.4 < first.double().mean() < 0.6
    assert MixtureOfDiagNormals(mu, logvar).sample().shape == (4, 3)


def test_a_mixture_needs_two_or_three_dimensional_components() -> None:
    with pytest.raises(ValueError, match=r"\[K, D\] or \[B, K, D\]"):
        MixtureOfDiagNormals(torch.zeros(3), torch.zeros(3))


# --------------------------------------------------------------------------- the CVAE's prior


def test_the_prior_of_each_example_is_its_class_mixture() -> None:
    model = vamp_cvae()
    y = torch.tensor([0, 3, 1, 3, 2])
    z = 2 * torch.randn(7, 5, SMALL["latent_dim"], dtype=torch.float64)
    with torch.no_grad():
        ours = model.prior(y).log_prob(z)
        for i, label in enumerate(y.tolist()):
            ref = reference(*class_components(model, label)).log_prob(z[:, i])
            torch.testing.assert_close(ours[:, i], ref, rtol=0, atol=1e-9)
    # one-hot rows give the same prior as int labels
    onehot = F.one_hot(y, 4)
    with torch.no_grad():
        torch.testing.assert_close(model.prior(onehot).log_prob(z), ours)
    assert model.objective == "-ELBO, class VampPrior K=3, MC KL"
    weighted = ConditionalVAE(
        **SMALL, prior="vamp", pseudo_inputs_per_class=5, kl_schedule=KLSchedule(0.25)
    )
    assert weighted.objective == "-(recon - 0.25*KL), class VampPrior K=5, MC KL"
    assert ConditionalVAE(**SMALL, kl_schedule=KLSchedule(0.5)).objective == "-(recon - 0.5*KL)"
    assert ConditionalVAE(**SMALL).objective == "ELBO"


def test_the_kl_is_log_q_minus_log_p_at_the_sample() -> None:
    model = vamp_cvae()
    x = torch.rand(5, *SMALL["image_shape"], dtype=torch.float64).bernoulli()
    y = torch.tensor([0, 3, 1, 3, 2])
    out = model(x, y)
    terms = model.loss(out, x)
    q = Independent(Normal(out.posterior.mu, torch.exp(0.5 * out.posterior.logvar)), 1)
    expected = q.log_prob(out.z) - model.prior(y).log_prob(out.z)
    torch.testing.assert_close(terms["kl"], expected)
    torch.testing.assert_close(terms["elbo"], terms["recon"] - terms["kl"])
    assert out.kl_per_dim is None  # a mixture has no per-dimension KL


def test_importance_weights_use_each_examples_class_prior(monkeypatch) -> None:
    model = vamp_cvae()
    model.hparams.iw_rows = 6  # 2 rows per chunk for 3 examples: k = 5 -> chunks 2, 2, 1
    x = torch.rand(3, *SMALL["image_shape"], dtype=torch.float64).bernoulli()
    y = torch.tensor([2, 0, 2])
    k = 5
    bank = EpsBank(torch.randn(k, 3, SMALL["latent_dim"], dtype=torch.float64))
    monkeypatch.setattr(model, "posterior", bank.posterior_of(model))
    est = model.log_likelihood(x, y, k=k)
    with torch.no_grad():
        mu, logvar = model.encode(x, y)
        q = Normal(mu, torch.exp(0.5 * logvar))
        log_w = []
        for e in bank.eps:
            z = mu + torch.exp(0.5 * logvar) * e
            priors = [reference(*class_components(model, int(c))) for c in y]
            log_p = torch.stack([p.log_prob(z[i]) for i, p in enumerate(priors)])
            log_px = model.likelihood.log_prob(model.decode(z, y), x)
            log_w.append(log_px + log_p - q.log_prob(z).sum(-1))
        ref = torch.logsumexp(torch.stack(log_w), 0) - math.log(k)
    assert bank.used == k
    torch.testing.assert_close(est, ref)


def test_samples_of_a_class_come_from_its_mixture() -> None:
    model = vamp_cvae(per_class=2)
    torch.manual_seed(1)
    with torch.no_grad():
        draws = model.sample_latent(20_000, 1)
        mu, logvar = class_components(model, 1)
    mixture = reference(mu, logvar)
    torch.testing.assert_close(draws.mean(0), mixture.mean, atol=0.05, rtol=0)
    torch.testing.assert_close(draws.var(0), mixture.variance, atol=0.05, rtol=0.05)
    assert model.sample(3, 2).shape == (3, *SMALL["image_shape"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pseudo_inputs_per_class": 0}, "pseudo_inputs_per_class must be an integer >= 1"),
        ({"pseudo_init_std": -1.0}, "pseudo_init_std must be >= 0"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ConditionalVAE(**SMALL, prior="vamp", **kwargs)
    ConditionalVAE(**SMALL, prior="learned", **kwargs)  # only the VampPrior reads them
    with pytest.raises(ConfigError, match="prior must be 'standard', 'learned' or 'vamp'"):
        ConditionalVAE(**SMALL, prior="mixture")


# --------------------------------------------------------------------------- through the CLI


def test_pseudo_inputs_survive_a_resume_and_every_command_runs(
    tmp_path, monkeypatch, tmp_path_factory
) -> None:
    enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    fitted = fit_and_resume(
        "cvae", "--model.init_args.prior=vamp", "--model.init_args.pseudo_inputs_per_class=2"
    )
    saved = fitted.ckpt["state_dict"]["pseudo_logits"]
    assert saved.shape == (20, 1, 28, 28)  # 2 for each of the 10 classes
    assert "pseudo_logits" in fitted.changed()
    assert torch.equal(fitted.resumed.state["pseudo_logits"], saved)
    row, _ = evaluate_everywhere(fitted.run_dir, ())
    assert row["nll"] is not None and row.get("kl_dim_max") is None
    assert row["objective"] == "-ELBO, class VampPrior K=2, MC KL"


def test_the_class_grid_draws_each_row_from_its_class_prior() -> None:
    from vae_zoo.evaluation.figures import class_grid_panel

    model = vamp_cvae().float()
    panel = class_grid_panel("vamp", model, per_class=3)
    assert panel.title == "vamp: class-conditional samples (z ~ p(z|c), drawn per row)"
    standard = ConditionalVAE(**SMALL, num_classes=4).eval()
    assert "(same z in each column)" in class_grid_panel("std", standard, per_class=3).title


def test_the_fashion_config_fits_in_bf16_mixed(tmp_path, monkeypatch, tmp_path_factory) -> None:
    # configs/fashion_mnist/cvae.yaml is the class VampPrior: its Monte-Carlo KL stays finite
    enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    check_bf16_mixed("cvae", ("elbo", "kl"), dataset="fashion_mnist")
