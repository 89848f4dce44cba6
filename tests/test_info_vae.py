"""InfoVAE / MMD-VAE: its loss against the paper's formula with a naive MMD, settings, the CLI."""

import math

import pytest
import torch
from cli_support import enter_workdir
from small_models import SMALL, binary_images
from test_kernels import naive_mmd
from variant_cli import check_bf16_mixed, check_end_to_end

from vae_zoo.errors import ConfigError
from vae_zoo.models import VAE, InfoVAE


def _x(n: int = 10) -> torch.Tensor:
    return binary_images(n)


@pytest.mark.parametrize(("alpha", "lam", "kernel"), [(0.0, 1000.0, "rbf"), (0.5, 3.0, "imq"),
                                                      (1.0, 1.0, "rbf"), (-1.0, 4.0, "imq")])
def test_loss_is_the_papers_objective_with_the_unbiased_mmd(
    alpha: float, lam: float, kernel: str
) -> None:
    model = InfoVAE(**SMALL, alpha=alpha, lam=lam, kernel=kernel, kernel_scales=[0.5, 2.0])
    x = _x()
    out = model(x)
    torch.manual_seed(11)
    terms = model.loss(out, x)
    torch.manual_seed(11)  # the same prior draws, taken independently of the model's code
    prior_draws = torch.randn(10, 3)
    mmd = naive_mmd(out.z.detach(), prior_draws, kernel, [0.5, 2.0])
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(out.mu, torch.exp(0.5 * out.logvar)),
        torch.distributions.Normal(0.0, 1.0),
    ).sum(-1)
    expected = -(out.recon - (1 - alpha) * kl) + (alpha + lam - 1) * mmd
    assert terms["mmd"].shape == () and terms["loss"].shape == (10,)
    assert float(terms["mmd"].detach()) == pytest.approx(mmd, rel=1e-5, abs=1e-7)
    torch.testing.assert_close(terms["loss"], expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(terms["elbo"], out.recon - kl, rtol=1e-5, atol=1e-4)
    assert model.objective == (
        f"-(recon - {1 - alpha:g}*KL) + {alpha + lam - 1:g}*MMD^2 ({kernel})"
    )


def test_alpha_0_lambda_1_is_the_vae() -> None:
    torch.manual_seed(0)
    info = InfoVAE(**SMALL, alpha=0.0, lam=1.0)
    vae = VAE(**SMALL)
    vae.load_state_dict(info.state_dict())
    x = _x()
    torch.manual_seed(5)
    a = info.elbo(x)
    torch.manual_seed(5)
    b = vae.elbo(x)
    torch.testing.assert_close(a["loss"], b["loss"])
    assert info.objective.startswith("-(recon - 1*KL) + 0*MMD^2")


def test_the_mmd_term_trains_the_encoder() -> None:
    model = InfoVAE(**SMALL, alpha=1.0, lam=1.0)  # no KL: only recon and MMD reach the encoder
    x = _x()
    terms = model.elbo(x)
    terms["mmd"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_bf16_autocast_keeps_the_mmd_in_float32() -> None:
    model = InfoVAE(**SMALL)
    x = _x()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = model.elbo(x)
    assert terms["mmd"].dtype == torch.float32
    assert all(torch.isfinite(v).all() for v in terms.values())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"alpha": 1.5}, "alpha <= 1"), ({"lam": 0.0}, "lam > 0"),
     ({"alpha": -1.0, "lam": 1.5}, "alpha \\+ lam - 1 >= 0"),
     ({"kernel": "laplace"}, "kernel must be"), ({"kernel_scales": [0.0]}, "kernel_scales")],
)
def test_bad_settings_are_one_config_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        InfoVAE(**SMALL, **kwargs)


def test_info_vae_end_to_end(tmp_path, monkeypatch, tmp_path_factory) -> None:
    enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    row, table = check_end_to_end(
        tmp_path, "info_vae", terms=("mmd", "elbo", "kl", "recon"),
        extra=("--model.init_args.lam=10",),
    )
    assert row["objective"] == "-(recon - 1*KL) + 9*MMD^2 (rbf)"
    assert math.isfinite(row["mmd"]) and row["nll"] is not None and row["kl"] > 0
    assert "mmd" in table



def test_info_vae_trains_under_bf16_mixed(tmp_path, monkeypatch, tmp_path_factory) -> None:
    enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    check_bf16_mixed("info_vae", ("mmd", "elbo"))
