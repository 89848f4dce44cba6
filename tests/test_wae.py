"""WAE-MMD: the point-mass posterior, the cost and MMD against naive computations, what is
reported (no nll/elbo/kl for a deterministic encoder, a valid nll for a Gaussian one), the CLI."""


import pytest
import torch
import torch.nn.functional as F
from cli_support import enter_workdir
from small_models import SMALL, binary_images
from test_kernels import naive_mmd
from variant_cli import check_bf16_mixed, check_end_to_end

from vae_zoo.distributions import PointMass
from vae_zoo.errors import ConfigError
from vae_zoo.evaluation.compare import MD_COLUMNS, markdown_table
from vae_zoo.kernels import WAE_SCALES
from vae_zoo.metrics import SplitMetrics
from vae_zoo.models import VAE, WAE


def _x(n: int = 10) -> torch.Tensor:
    return binary_images(n)


def test_point_mass_draws_its_location_and_has_no_density() -> None:
    loc = torch.randn(4, 3, requires_grad=True)
    q = PointMass(loc)
    assert q.batch_shape == (4,) and q.event_shape == (3,)
    draws = q.rsample((5,))
    assert draws.shape == (5, 4, 3) and torch.equal(draws[2], loc.detach())
    draws.sum().backward()
    torch.testing.assert_close(loc.grad, torch.full((4, 3), 5.0))
    assert torch.equal(q.mean, loc) and torch.equal(q.variance, torch.zeros(4, 3))
    assert not q.support.is_discrete
    with pytest.raises(NotImplementedError, match="no density"):
        q.log_prob(loc)


def test_deterministic_encoder_loss_is_nll_cost_plus_lambda_mmd() -> None:
    model = WAE(**SMALL, lam=7.0)
    x = _x()
    out = model(x)
    mu, _ = model.encode(x)
    assert torch.equal(out.z, mu) and out.kl is None and out.kl_per_dim is None
    torch.manual_seed(3)
    terms = model.loss(out, x)
    torch.manual_seed(3)
    mmd = naive_mmd(mu.detach(), torch.randn(10, 3), "imq", list(WAE_SCALES))
    logits = model.decode(mu)
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    assert set(terms) == {"loss", "cost", "recon", "mmd"}
    assert float(terms["mmd"].detach()) == pytest.approx(mmd, rel=1e-5)
    torch.testing.assert_close(terms["cost"], bce)
    torch.testing.assert_close(terms["loss"], bce + 7.0 * mmd)
    assert model.objective.endswith("not an ELBO") and not model.has_likelihood


def test_squared_error_cost() -> None:
    model = WAE(**SMALL, cost="l2sq", kernel="rbf", kernel_scales=[1.0])
    x = _x()
    terms = model.elbo(x)
    probs = torch.sigmoid(model.decode(model.encode(x)[0]))
    expected = torch.stack([F.mse_loss(p, t, reduction="sum") for p, t in zip(probs, x,
                                                                              strict=True)])
    torch.testing.assert_close(terms["cost"], expected)
    assert model.objective.startswith("sq.error + ")


def test_deterministic_evaluation_reports_mse_and_mmd_and_no_likelihood_terms() -> None:
    model = WAE(**SMALL).eval()
    x = _x()
    ev = model.evaluate_batch(x, None, k=5)
    assert {"mse", "mmd", "cost", "recon", "loss"} <= set(ev.terms)
    assert not {"nll", "bpd", "elbo", "kl"} & set(ev.terms)
    metrics = SplitMetrics()
    model.update_metrics(metrics, ev)
    values = metrics.compute()
    assert "kl_dim_max" not in values and "active_units" in values and "nll" not in values
    with pytest.raises(NotImplementedError):
        model.log_weights(x, k=2)
    row = {"run": "w", "variant": "wae", "objective": model.objective, "mse": values["mse"]}
    line = markdown_table([row]).splitlines()[-1]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert "not an ELBO" in line and cells.count("-") >= 5  # nll, bits/dim, elbo, recon, kl


def test_gaussian_encoder_reports_a_valid_nll_the_same_estimator_as_the_vae() -> None:
    torch.manual_seed(0)
    wae = WAE(**SMALL, encoder_noise="gaussian").eval()
    vae = VAE(**SMALL).eval()
    vae.load_state_dict(wae.state_dict())
    assert wae.has_likelihood
    x = _x()
    torch.manual_seed(9)
    nll_wae = -wae.log_likelihood(x, k=50)
    torch.manual_seed(9)
    nll_vae = -vae.log_likelihood(x, k=50)
    torch.testing.assert_close(nll_wae, nll_vae)
    ev = wae.evaluate_batch(x, None, k=4)
    assert {"nll", "bpd", "elbo", "kl", "mmd"} <= set(ev.terms)
    out = wae(x)
    torch.testing.assert_close(ev.terms["kl"], out.kl, rtol=0, atol=0)  # closed form
    assert (ev.terms["nll"] <= -ev.terms["elbo"] + 5.0).all()  # nll <= -elbo up to MC noise


def test_bf16_autocast_keeps_the_mmd_in_float32() -> None:
    model = WAE(**SMALL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = model.elbo(_x())
    assert terms["mmd"].dtype == torch.float32
    assert all(torch.isfinite(v).all() for v in terms.values())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"lam": -1.0}, "lam"), ({"encoder_noise": "uniform"}, "encoder_noise must be"),
     ({"cost": "l1"}, "cost must be"), ({"kernel": "poly"}, "kernel must be")],
)
def test_bad_settings_are_one_config_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        WAE(**SMALL, **kwargs)


def test_wae_end_to_end_deterministic(tmp_path, monkeypatch, tmp_path_factory) -> None:
    enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    row, table = check_end_to_end(
        tmp_path, "wae", terms=("mmd", "cost", "recon"), absent=("nll", "bpd", "elbo", "kl")
    )
    assert row["nll"] is None and row["elbo"] is None and row["kl"] is None
    assert row["bpd"] is None and row["kl_dim_max"] is None and row["mse"] > 0
    assert row["objective"] == WAE(encoder_noise="deterministic").objective
    assert "not an ELBO" in row["objective"] and "not an ELBO" in table
    wae_line = next(line for line in table.splitlines() if "| wae |" in line)
    cells = [c.strip() for c in wae_line.strip("|").split("|")]
    assert len(cells) == len(MD_COLUMNS)  # no "|" in the objective to break a column
    assert cells[9:12] == ["-", "-", "-"] and cells[13] == "-"  # NLL, bits/dim, ELBO; KL


def test_wae_end_to_end_gaussian(tmp_path, monkeypatch, tmp_path_factory) -> None:
    enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    row, _ = check_end_to_end(
        tmp_path, "wae", terms=("mmd", "cost", "elbo", "kl"),
        extra=("--model.init_args.encoder_noise=gaussian", "--model.init_args.cost=l2sq"),
    )
    assert row["nll"] is not None and row["elbo"] is not None and row["kl"] > 0
    assert "not an ELBO" in row["objective"]


def test_wae_trains_under_bf16_mixed(tmp_path, monkeypatch, tmp_path_factory) -> None:
    enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    check_bf16_mixed("wae", ("mmd", "cost"))
