"""DIP-VAE I and II: the covariance penalty against ``torch.cov`` and a naive double loop.

The covariance is the biased one (1/B, the paper's E[mu mu^T] - E[mu] E[mu]^T), matched here
with ``torch.cov(..., correction=0)``; small batches make the unbiased (1/(B-1)) one differ by
far more than the tolerance.
"""

import math

import pytest
import torch
from cli_support import TINY, config, enter_workdir, run
from small_models import SMALL_NETS
from variant_cli import evaluate_everywhere, fit_and_resume, metrics_rows

from vae_zoo.distributions import DiagNormal
from vae_zoo.errors import ConfigError
from vae_zoo.models import DIPVAE, VAE
from vae_zoo.models.dip_vae import dip_covariance, dip_parts

SMALL = {
    "latent_dim": 4,
    **SMALL_NETS,
}


def reference_penalty(mu, logvar, dip_type: str, lambda_od: float, lambda_d: float) -> float:
    """lambda_od * sum_{i!=j} C_ij^2 + lambda_d * sum_i (C_ii - 1)^2, C from torch.cov, looped."""
    cov = torch.cov(mu.T.double(), correction=0)
    if dip_type == "ii":
        cov = cov + torch.diag(logvar.double().exp().mean(0))
    total = 0.0
    for i in range(cov.shape[0]):
        for j in range(cov.shape[1]):
            if i == j:
                total += lambda_d * (float(cov[i, i]) - 1.0) ** 2
            else:
                total += lambda_od * float(cov[i, j]) ** 2
    return total


@pytest.mark.parametrize("dip_type", ["i", "ii"])
@pytest.mark.parametrize("batch", [5, 64])
def test_the_penalty_matches_torch_cov(dip_type: str, batch: int, monkeypatch) -> None:
    torch.manual_seed(batch)
    model = DIPVAE(**SMALL, dip_type=dip_type, lambda_od=3.0, lambda_d=7.0)
    # correlated posterior means far from unit scale, so both parts of the penalty are large
    mix = torch.tensor([[1.5, 0.8, 0.0, -0.3], [0.0, 0.4, 1.2, 0.0],
                        [0.0, 0.0, 0.3, 0.9], [0.6, 0.0, 0.0, 0.2]])
    mu = torch.randn(batch, 4) @ mix + 0.7
    logvar = 0.5 * torch.randn(batch, 4) - 1.0
    monkeypatch.setattr(model, "posterior", lambda x, c=None: DiagNormal(mu, logvar))
    x = torch.bernoulli(torch.full((batch, 1, 8, 8), 0.4))
    with torch.no_grad():
        terms = model.loss(model(x), x)
    ref = reference_penalty(mu, logvar, dip_type, 3.0, 7.0)
    assert terms["dip_penalty"].shape == ()
    assert math.isclose(float(terms["dip_penalty"]), ref, rel_tol=1e-5, abs_tol=1e-6)
    # its parts, unweighted
    cov = torch.cov(mu.T.double(), correction=0)
    if dip_type == "ii":
        cov = cov + torch.diag(logvar.double().exp().mean(0))
    off = float((cov - torch.diag(torch.diagonal(cov))).pow(2).sum())
    diag = float((torch.diagonal(cov) - 1).pow(2).sum())
    assert math.isclose(float(terms["dip_offdiag"]), off, rel_tol=1e-5, abs_tol=1e-7)
    assert math.isclose(float(terms["dip_diag"]), diag, rel_tol=1e-5, abs_tol=1e-7)
    assert off > 0.1 and diag > 0.1  # both parts are exercised
    # the loss is the VAE's per-example loss plus the batch's penalty
    torch.testing.assert_close(terms["loss"], -(terms["recon"] - terms["kl"]) + ref,
                               rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(terms["elbo"], terms["recon"] - terms["kl"])


def test_the_penalty_of_the_encoders_own_posterior() -> None:
    model = DIPVAE(**SMALL, dip_type="ii", lambda_od=2.0, lambda_d=4.0)
    x = torch.bernoulli(torch.full((16, 1, 8, 8), 0.4))
    with torch.no_grad():
        terms = model.loss(model(x), x)
        mu, logvar = model.encoder(x)
    ref = reference_penalty(mu, logvar, "ii", 2.0, 4.0)
    assert math.isclose(float(terms["dip_penalty"]), ref, rel_tol=1e-5)


def test_the_elbo_terms_are_the_vaes() -> None:
    torch.manual_seed(1)
    dip = DIPVAE(**SMALL)
    vae = VAE(**SMALL)
    vae.load_state_dict(dip.state_dict())
    x = torch.bernoulli(torch.full((6, 1, 8, 8), 0.4))
    torch.manual_seed(2)
    a = dip.loss(dip(x), x)
    torch.manual_seed(2)
    b = vae.loss(vae(x), x)
    for key in ("elbo", "recon", "kl"):
        torch.testing.assert_close(a[key], b[key])


def test_dip_ii_adds_the_mean_posterior_variance_to_the_diagonal_only() -> None:
    mu = torch.randn(9, 3)
    logvar = torch.randn(9, 3)
    q = DiagNormal(mu, logvar)
    diff = dip_covariance(q, "ii") - dip_covariance(q, "i")
    torch.testing.assert_close(diff, torch.diag(logvar.exp().mean(0)))


def test_a_batch_of_one_gives_a_finite_penalty() -> None:
    q = DiagNormal(torch.randn(1, 3), torch.zeros(1, 3))
    cov = dip_covariance(q, "i")
    assert torch.equal(cov, torch.zeros(3, 3))
    off, diag = dip_parts(cov)
    assert float(off) == 0.0 and float(diag) == 3.0


def test_the_covariance_stays_float32_under_bf16_autocast() -> None:
    mu, logvar = torch.randn(32, 4), torch.randn(32, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cov = dip_covariance(DiagNormal(mu.bfloat16(), logvar.bfloat16()), "ii")
    assert cov.dtype == torch.float32
    ref = torch.cov(mu.bfloat16().double().T, correction=0) + torch.diag(
        logvar.bfloat16().double().exp().mean(0)
    )
    assert (cov.double() - ref).abs().max() < 1e-5


def test_the_penalty_trains_the_encoder() -> None:
    model = DIPVAE(**SMALL)
    x = torch.bernoulli(torch.full((8, 1, 8, 8), 0.4))
    out = model(x)
    model.loss(out, x)["dip_penalty"].backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert all(p.grad is None for p in model.decoder.parameters())


# --------------------------------------------------------------------------- configuration


def test_the_papers_default_weights() -> None:
    one, two = DIPVAE(**SMALL, dip_type="i"), DIPVAE(**SMALL, dip_type="ii")
    assert (one.lambda_od, one.lambda_d) == (10.0, 100.0)  # lambda_d = 10 lambda_od for DIP-I
    assert (two.lambda_od, two.lambda_d) == (10.0, 10.0)  # lambda_d = lambda_od for DIP-II
    assert DIPVAE(**SMALL, dip_type="i", lambda_od=2.0).lambda_d == 20.0
    assert DIPVAE(**SMALL, dip_type="ii", lambda_od=2.0, lambda_d=5.0).lambda_d == 5.0
    assert DIPVAE.show_traversals
    assert one.objective == "-ELBO + DIP-I penalty (lambda_od=10, lambda_d=100)"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dip_type": "iii"}, "dip_type must be 'i' or 'ii'"),
        ({"lambda_od": -1.0}, "lambda_od must be >= 0"),
        ({"lambda_d": -0.5}, "lambda_d must be >= 0"),
        ({"lambda_od": float("nan")}, "lambda_od must be >= 0"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DIPVAE(**SMALL, **kwargs)




# --------------------------------------------------------------------------- through the CLI


def test_fit_resume_and_every_command(tmp_path, monkeypatch, tmp_path_factory) -> None:
    enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    fitted = fit_and_resume("dip_vae", "--model.init_args.dip_type=ii")
    assert fitted.ckpt["hyper_parameters"]["dip_type"] == "ii"
    row, _ = evaluate_everywhere(fitted.run_dir, ("dip_penalty", "dip_offdiag", "dip_diag"))
    assert row["objective"] == "-ELBO + DIP-II penalty (lambda_od=10, lambda_d=10)"
    # compare draws latent traversals for this variant
    assert list((fitted.run_dir.parent / "compare").glob("traversals_*.png"))


def test_fit_in_bf16_mixed(tmp_path, monkeypatch, tmp_path_factory) -> None:
    enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    args = ["--config", config("mnist", "dip_vae"), "--config", config("trainer", "cpu"),
            "--config", config("trainer", "bf16-mixed"), *TINY]
    assert run("fit", *args) == 0
    rows = metrics_rows(tmp_path / "runs/mnist/dip_vae/version_0/metrics.csv")
    values = [float(r["val/dip_penalty"]) for r in rows if r.get("val/dip_penalty")]
    assert values and all(math.isfinite(v) for v in values)
