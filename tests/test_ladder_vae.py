"""Ladder VAE: the merge, the per-layer KLs, the joint distributions, IS-NLL over both layers on
a linear-Gaussian two-layer model with a closed-form marginal, sampling, and the CLI.

The linear-Gaussian model: p(z2) = N(0, I), p(z1|z2) = N(A z2 + a, S1), p(x|z1) = N(W z1 + b,
sigma^2 I), so p(x) = N(W a + b, W (A A^T + S1) W^T + sigma^2 I). With W's columns orthogonal
and A's columns on disjoint rows, the exact posterior has the ladder's form: q(z2|x) is a
diagonal Gaussian linear in layer 1's bottom-up mean m1 = (W^T W)^-1 W^T (x - b) (variance
sigma^2 / |w_j|^2), and q(z1|z2, x) is the precision-weighted merge of N(m1, v1) and p(z1|z2).
"""

import csv
import functools
import json
import math

import pytest
import torch
from cli_support import TINY, enter_workdir, run
from linear_gaussian import IdentityGaussian, LinearDecoder
from small_models import SMALL_NETS, binary_images
from torch import Tensor, nn
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence
from variant_cli import fit_and_resume

from vae_zoo.distributions import DiagNormal
from vae_zoo.errors import ConfigError
from vae_zoo.evaluation import compare
from vae_zoo.models import BaseVAE, LadderVAE
from vae_zoo.models.ladder_vae import TopDownPosterior, TopDownPrior, precision_weighted
from vae_zoo.networks import ConvDecoder, ConvEncoder
from vae_zoo.schedules import LinearWarmup

SMALL = {
    "latent_dim": 4,
    "top_latent_dim": 2,
    **SMALL_NETS,
    "ladder_hidden_dims": (8,),
    "val_k": 0,
}


def small(**kwargs) -> LadderVAE:
    return LadderVAE(**{**SMALL, **kwargs})


def _x(n: int = 6) -> Tensor:
    return binary_images(n)


def diag(mu: Tensor, logvar: Tensor) -> Independent:
    """torch.distributions' diagonal Gaussian, the reference."""
    return Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)


# --------------------------------------------------------------------------- the merge


def test_precision_weighted_merge_against_its_formula() -> None:
    mu_a, mu_b = torch.randn(5, 3), torch.randn(5, 3)
    var_a, var_b = torch.rand(5, 3) * 3 + 0.05, torch.rand(5, 3) * 3 + 0.05
    merged = precision_weighted(DiagNormal(mu_a, var_a.log()), DiagNormal(mu_b, var_b.log()))
    var = 1.0 / (1.0 / var_a + 1.0 / var_b)
    torch.testing.assert_close(merged.variance, var)
    torch.testing.assert_close(merged.mu, var * (mu_a / var_a + mu_b / var_b))
    # the product of the two densities is proportional to the merged one, at any point
    z = torch.randn(4, 5, 3)
    log_product = Normal(mu_a, var_a.sqrt()).log_prob(z) + Normal(mu_b, var_b.sqrt()).log_prob(z)
    ratio = log_product - Normal(merged.mu, merged.variance.sqrt()).log_prob(z)
    torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio), atol=1e-5, rtol=0)


def test_merge_with_a_much_broader_gaussian_is_the_narrower_one() -> None:
    a = DiagNormal(torch.randn(2, 3), torch.full((2, 3), -2.0))
    merged = precision_weighted(a, DiagNormal(torch.randn(2, 3) * 10, torch.full((2, 3), 9.0)))
    torch.testing.assert_close(merged.mu, a.mu, atol=2e-3, rtol=0)
    torch.testing.assert_close(merged.logvar, a.logvar, atol=1e-3, rtol=0)


# --------------------------------------------------------------------------- the two layers


def _reference_layers(model: LadderVAE, x: Tensor, z: Tensor) -> dict[str, Independent]:
    """q(z2|x), q(z1|z2,x), p(z1|z2) at z's z2, recomputed from the networks with explicit
    variances (no code of the model's distributions)."""
    m1, lv1 = model.encode(x)
    m2, lv2 = model.up(torch.cat([m1, lv1], -1)).chunk(2, -1)
    mu_p, lv_p = model.down(z[..., model.z1_dim :]).chunk(2, -1)
    prec = torch.exp(-lv1) + torch.exp(-lv_p)
    mu_q = (m1 * torch.exp(-lv1) + mu_p * torch.exp(-lv_p)) / prec
    return {
        "q2": diag(m2, lv2),
        "q1": diag(mu_q, -prec.log()),
        "p1": diag(mu_p, lv_p),
        "p2": diag(torch.zeros_like(m2), torch.zeros_like(m2)),
    }


def test_per_layer_kl_against_torch_distributions() -> None:
    model = small().eval()
    x = _x()
    out = model(x)
    terms = model.loss(out, x)
    ref = _reference_layers(model, x, out.z)
    kl_z1 = kl_divergence(ref["q1"], ref["p1"])
    kl_z2 = kl_divergence(ref["q2"], ref["p2"])
    torch.testing.assert_close(terms["kl_z1"], kl_z1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(terms["kl_z2"], kl_z2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(terms["kl"], kl_z1 + kl_z2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(terms["elbo"], out.recon - terms["kl"])
    assert out.kl_per_dim.shape == (6, 6)  # D1 + D2 units
    # the sample's z1 is scored by the merged Gaussian at its own z2
    z1, z2 = out.z[:, :4], out.z[:, 4:]
    torch.testing.assert_close(
        out.posterior.log_prob(out.z), ref["q2"].log_prob(z2) + ref["q1"].log_prob(z1)
    )
    torch.testing.assert_close(
        out.prior.log_prob(out.z), ref["p2"].log_prob(z2) + ref["p1"].log_prob(z1)
    )


def test_the_kl_estimate_and_the_joint_log_probs_agree_in_expectation() -> None:
    # E_q[log q(z1,z2|x) - log p(z1,z2)] = E_q(z2)[KL(q1||p1)] + KL(q2||p2): both are estimated
    # from the same 4000 joint draws; their difference has mean zero
    model = small().eval()
    x = _x(3)
    with torch.no_grad():
        q, p = model.posterior(x), model.prior()
        z = q.rsample((4000,))
        log_ratio = q.log_prob(z) - p.log_prob(z)
        _, kl = model.kl(q, p, z)
    diff = log_ratio - kl
    stderr = diff.std(0) / math.sqrt(len(diff))
    assert (diff.mean(0).abs() < 4 * stderr + 1e-4).all()
    assert (kl.mean(0) > 0).all()


def test_warmup_weighs_the_kl_of_both_layers_while_training() -> None:
    model = small(kl_schedule=LinearWarmup(warmup_steps=10))
    x = _x()
    terms = model.train().loss(model(x), x)  # step 0 of the warm-up: weight 0
    torch.testing.assert_close(terms["loss"], -terms["recon"])
    terms = model.eval().loss(model(x), x)
    torch.testing.assert_close(terms["loss"], -(terms["recon"] - terms["kl_z1"] - terms["kl_z2"]))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("top_latent_dim", 0, "top_latent_dim must be a positive integer"),
        ("ladder_hidden_dims", (8, 0), "ladder_hidden_dims"),
        ("ladder_act", "sigmoidish", "unknown activation"),
    ],
)
def test_bad_settings_are_config_errors(key: str, value, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        small(**{key: value})


def test_shapes_conv_networks_and_a_decoder_that_needs_both_layers() -> None:
    model = LadderVAE(
        latent_dim=5,
        top_latent_dim=3,
        encoder=functools.partial(ConvEncoder, channels=(4, 8), hidden_dim=16),
        decoder=functools.partial(ConvDecoder, channels=(8, 4), hidden_dim=16),
        ladder_hidden_dims=(8,),
    ).eval()
    x = torch.bernoulli(torch.full((3, 1, 28, 28), 0.3))
    assert model.latent_dim == 8 and model.hparams.latent_dim == 5
    assert model.log_likelihood(x, k=4).shape == (3,)
    assert model.reconstruct(x).shape == x.shape and model.sample(2).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="z = \\[z1, z2\\] of size 8"):
        model.decode(torch.zeros(2, 5))


def test_bf16_autocast_keeps_the_gaussians_in_float32() -> None:
    model = small().train()
    x = _x()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        terms = model.loss(out, x)
    assert out.z.dtype == torch.float32 and terms["kl"].dtype == torch.float32
    assert all(torch.isfinite(v).all() for v in terms.values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_a_model_held_in_another_dtype_runs(dtype: torch.dtype) -> None:
    # bf16-true keeps its weights in bf16; a float64 model is for precise checks
    model = small().to(dtype)
    x = _x().to(dtype)
    terms = model.loss(model(x), x)
    wide = torch.promote_types(dtype, torch.float32)
    assert all(terms[k].dtype == wide for k in ("kl", "kl_z1", "kl_z2"))
    assert model.log_likelihood(x, k=3).shape == (x.shape[0],)
    assert model.sample(2).dtype == dtype


# --------------------------------------------------------------------------- linear-Gaussian

X_DIM, D1, D2, SIGMA = 6, 3, 2, 0.5


def _problem() -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(X_DIM, D1, generator=gen))
    return {
        "W": q * torch.tensor([2.0, 1.0, 0.5]),  # orthogonal columns
        "b": torch.randn(X_DIM, generator=gen) * 0.3,
        "A": torch.tensor([[0.8, 0.0], [-0.5, 0.0], [0.0, 1.2]]),  # columns on disjoint rows
        "a": torch.tensor([0.1, -0.2, 0.3]),
        "s1": torch.tensor([0.36, 0.64, 0.49]),  # diagonal of S1
    }


class BottomUpEncoder(nn.Module):
    """Layer 1's bottom-up Gaussian: the likelihood N(x; W z1 + b, sigma^2) as a Gaussian in z1."""

    def __init__(self, image_shape, latent_dim, cond_dim, w: Tensor, b: Tensor, shift: float):
        super().__init__()
        self.register_buffer("gain", torch.linalg.inv(w.T @ w) @ w.T)
        self.register_buffer("b", b)
        self.register_buffer("logvar", (SIGMA**2 / w.pow(2).sum(0)).log())
        self.shift = shift

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu = (x.flatten(1) - self.b) @ self.gain.T + self.shift
        return mu, self.logvar.expand_as(mu)


def _linear_ladder(shift: float = 0.0, z2_shift: float = 0.0, logvar_shift: float = 0.0):
    """The ladder holding the exact posterior (shifts: a mis-set one)."""
    pb = _problem()
    w, a_mat, a, s1 = pb["W"], pb["A"], pb["a"], pb["s1"]
    model = LadderVAE(
        latent_dim=D1,
        top_latent_dim=D2,
        image_shape=(1, 1, X_DIM),
        encoder=functools.partial(BottomUpEncoder, w=w, b=pb["b"], shift=shift),
        decoder=functools.partial(LinearDecoder, w=w, b=pb["b"]),
        likelihood=IdentityGaussian(SIGMA),
        ladder_hidden_dims=(),
    ).eval()
    g = torch.diag(1.0 / (s1 + SIGMA**2 / w.pow(2).sum(0)))  # (S1 + V1)^-1
    cov2 = torch.linalg.inv(torch.eye(D2) + a_mat.T @ g @ a_mat)
    assert torch.allclose(cov2, torch.diag(torch.diagonal(cov2)))  # the exact q(z2|x) is diagonal
    gain2 = cov2 @ a_mat.T @ g  # E[z2|x] = gain2 (m1 - a)
    up, down = model.up[0], model.down[0]
    with torch.no_grad():
        up.weight.zero_()
        up.weight[:D2, :D1] = gain2
        up.bias[:D2] = -gain2 @ a + z2_shift
        up.bias[D2:] = torch.diagonal(cov2).log() + logvar_shift
        down.weight.zero_()
        down.weight[:D1] = a_mat
        down.bias[:D1] = a
        down.bias[D1:] = s1.log()
    return model


def _joint_gaussian() -> tuple[Tensor, Tensor]:
    """Mean and covariance of (z1, z2, x) of the linear-Gaussian model, in float64."""
    pb = {k: v.double() for k, v in _problem().items()}
    w, a_mat, a = pb["W"], pb["A"], pb["a"]
    c11 = a_mat @ a_mat.T + torch.diag(pb["s1"])
    c12, c22 = a_mat, torch.eye(D2, dtype=torch.float64)
    cx1, cx2 = w @ c11, w @ a_mat
    cxx = w @ c11 @ w.T + SIGMA**2 * torch.eye(X_DIM, dtype=torch.float64)
    cov = torch.cat([
        torch.cat([c11, c12, cx1.T], 1),
        torch.cat([c12.T, c22, cx2.T], 1),
        torch.cat([cx1, cx2, cxx], 1),
    ])
    mean = torch.cat([a, torch.zeros(D2, dtype=torch.float64), w @ a + pb["b"]])
    return mean, cov


def _true_log_px(x: Tensor) -> Tensor:
    mean, cov = _joint_gaussian()
    return MultivariateNormal(mean[D1 + D2 :], cov[D1 + D2 :, D1 + D2 :]).log_prob(
        x.flatten(1).double()
    )


def _data(n: int = 8) -> Tensor:
    mean, cov = _joint_gaussian()
    gen = torch.Generator().manual_seed(2)
    draws = mean + torch.randn(n, len(mean), generator=gen, dtype=torch.float64) @ (
        torch.linalg.cholesky(cov).T
    )
    return draws[:, D1 + D2 :].float().view(n, 1, 1, X_DIM)


def test_the_exact_posterior_gives_the_exact_log_likelihood_for_any_k() -> None:
    # every importance weight p(x, z1, z2) / q(z1, z2 | x) equals p(x) for the exact posterior:
    # a wrong merge, a wrong joint log_prob or a wrong ancestral draw would make them vary
    x = _data()
    model = _linear_ladder()
    truth = _true_log_px(x)
    for k in (1, 50):
        torch.testing.assert_close(model.log_likelihood(x, k=k).double(), truth, atol=2e-3, rtol=0)
    log_w = model.log_weights(x, k=20)
    assert (log_w.max(0).values - log_w.min(0).values).max() < 2e-3


def test_is_nll_over_both_layers_within_a_tenth_of_a_nat_of_the_closed_form() -> None:
    x = _data()
    model = _linear_ladder(shift=0.3, z2_shift=-0.4, logvar_shift=0.5)
    truth = _true_log_px(x)
    estimate = model.log_likelihood(x, k=5000).double()
    assert (estimate - truth).abs().max() < 0.1
    # the same through the evaluation that test and compare use
    nll = model.evaluate_batch(x, None, k=5000).terms["nll"].double()
    assert (nll + truth).abs().max() < 0.1
    # the one-sample bound is clearly looser, so the tolerance above means something
    elbo = torch.stack([model.elbo(x)["elbo"] for _ in range(200)]).mean(0).double()
    assert (truth - elbo).mean() > 0.2
    assert (elbo <= truth + 1e-3).all()


def test_posterior_mean_is_the_exact_posterior_mean_of_the_linear_model() -> None:
    x = _data(4)
    mean, cov = _joint_gaussian()
    z, xs = slice(0, D1 + D2), slice(D1 + D2, None)
    expected = mean[z] + (x.flatten(1).double() - mean[xs]) @ torch.linalg.solve(
        cov[xs, xs], cov[xs, z]
    )
    posterior = _linear_ladder().posterior(x)
    assert isinstance(posterior, TopDownPosterior)
    torch.testing.assert_close(posterior.mean.double(), expected, atol=1e-4, rtol=0)


def test_the_prior_samples_z2_then_z1_given_z2() -> None:
    pb = _problem()
    model = _linear_ladder()
    prior = model.prior()
    assert isinstance(prior, TopDownPrior)
    z = model.sample_latent(40000).double()
    z1, z2 = z[:, :D1], z[:, D1:]
    mean, cov = _joint_gaussian()
    torch.testing.assert_close(z2.mean(0), torch.zeros(D2, dtype=torch.float64), atol=0.03, rtol=0)
    torch.testing.assert_close(z.T.cov(), cov[: D1 + D2, : D1 + D2], atol=0.05, rtol=0)
    # z1 given z2 is p(z1|z2): its residual from A z2 + a has variance S1 and no z2 in it
    resid = z1 - z2 @ pb["A"].double().T - pb["a"].double()
    torch.testing.assert_close(resid.var(0), pb["s1"].double(), atol=0.03, rtol=0)
    assert torch.corrcoef(torch.cat([resid, z2], 1).T)[:D1, D1:].abs().max() < 0.03
    # from_noise is the same map from standard-normal noise, deterministic
    eps = torch.randn(5, D1 + D2)
    expected = torch.cat([eps[:, D1:] @ pb["A"].T + pb["a"] + pb["s1"].sqrt() * eps[:, :D1],
                          eps[:, D1:]], 1)
    torch.testing.assert_close(prior.from_noise(eps), expected)
    assert model.sample(3).shape == (3, 1, 1, X_DIM)


# --------------------------------------------------------------------------- through the CLI


def test_fit_resume_test_predict_compare_and_sample(tmp_path, monkeypatch, tmp_path_factory):
    enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    # with a KL warm-up, through the existing schedules
    warmup = ("--model.init_args.kl_schedule=vae_zoo.schedules.LinearWarmup",
              "--model.init_args.kl_schedule.init_args.warmup_steps=100")
    run_dir = fit_and_resume("ladder_vae", *warmup).run_dir
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    for key in ("train/kl_z1", "train/kl_z2", "train/kl_weight", "val/kl_z1", "val/kl_z2",
                "val/nll", "val/active_units"):
        assert any(r.get(key) for r in rows), key
    # the warm-up is on: the KL weight grows from 0
    weights = [float(r["train/kl_weight"]) for r in rows if r.get("train/kl_weight")]
    assert weights[0] == 0.0 and weights == sorted(weights)

    best = run_dir / "checkpoints" / "best.ckpt"
    assert type(BaseVAE.load_from_checkpoint(best)) is LadderVAE
    assert run("test", "--ckpt_path", str(best), *TINY) == 0
    with (run_dir / "test" / "metrics.csv").open() as f:
        tested = next(csv.DictReader(f))
    assert float(tested["test/kl"]) == pytest.approx(
        float(tested["test/kl_z1"]) + float(tested["test/kl_z2"]), rel=1e-5
    )
    assert run("predict", "--ckpt_path", str(best), *TINY) == 0
    predictions = torch.load(run_dir / "predict" / "predictions.pt")
    assert predictions["mu"].shape[1] == 48 and "logvar" not in predictions  # z = [z1, z2]

    out = tmp_path / "compare"
    argv = [str(run_dir), "--out", str(out), "--k", "3", "--n-test", "20", "--device", "cpu",
            "--classifier", "none"]
    assert compare.main(argv) == 0
    row = json.loads((out / "comparison.json").read_text())["runs"][0]
    assert row["variant"] == "ladder_vae" and row["latent_dim"] == 48
    assert {"kl_z1", "kl_z2"} <= set(row) and row["nll"] > 0
    assert run("sample", str(run_dir), "--n", "4", "--out", str(tmp_path / "s.png")) == 0
    assert (tmp_path / "s.png").is_file()
