"""beta-TCVAE: the MWS/MSS estimators against naive loops and enumeration, the decomposition
against exact values, the loss against the VAE's, N from the data module, the CLI."""

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from cli_support import N_TRAIN, TINY, VAL_SIZE, config, enter_workdir, run
from small_models import SMALL, binary_images
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal
from variant_cli import check_bf16_mixed, check_end_to_end

from vae_zoo.distributions import DiagNormal, StandardNormal
from vae_zoo.errors import ConfigError
from vae_zoo.models import VAE, BaseVAE, BetaTCVAE
from vae_zoo.models.beta_tcvae import kl_decomposition, log_weight_matrix

F64 = torch.float64


def _x(n: int = 10) -> torch.Tensor:
    return binary_images(n)


def _normal_pdf(z: float, mu: float, logvar: float) -> float:
    return math.exp(-0.5 * ((z - mu) ** 2 / math.exp(logvar) + logvar + math.log(2 * math.pi)))


def naive_weight(i: int, j: int, b: int, n: int, estimator: str) -> float:
    """The weight of q(z_i|x_j) in q(z_i), from the definitions of Chen et al."""
    if estimator == "mws":
        return 1.0 / (n * b)
    m = b - 1
    if j == i:
        return 1.0 / n
    return (n - m) / (n * m) if j == (i + 1) % b else 1.0 / m


def naive_decomposition(z, mu, logvar, n: int, estimator: str) -> dict[str, float]:
    """mi, tc, dim_kl with Python loops over codes i, examples j and dimensions d."""
    z, mu, logvar = z.tolist(), mu.tolist(), logvar.tolist()
    b, dim = len(z), len(z[0])
    mi = tc = dim_kl = 0.0
    for i in range(b):
        q_joint = sum(
            naive_weight(i, j, b, n, estimator)
            * math.prod(_normal_pdf(z[i][d], mu[j][d], logvar[j][d]) for d in range(dim))
            for j in range(b)
        )
        log_marginals = sum(
            math.log(sum(naive_weight(i, j, b, n, estimator)
                         * _normal_pdf(z[i][d], mu[j][d], logvar[j][d]) for j in range(b)))
            for d in range(dim)
        )
        log_q_own = sum(math.log(_normal_pdf(z[i][d], mu[i][d], logvar[i][d]))
                        for d in range(dim))
        log_p = sum(math.log(_normal_pdf(z[i][d], 0.0, 0.0)) for d in range(dim))
        mi += log_q_own - math.log(q_joint)
        tc += math.log(q_joint) - log_marginals
        dim_kl += log_marginals - log_p
    return {"mi": mi / b, "tc": tc / b, "dim_kl": dim_kl / b}


def _posteriors(b: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(b, d, generator=gen, dtype=F64)
    logvar = torch.randn(b, d, generator=gen, dtype=F64) * 0.5 - 0.5
    z = mu + torch.exp(0.5 * logvar) * torch.randn(b, d, generator=gen, dtype=F64)
    return z, mu, logvar


# --------------------------------------------------------------------------- the estimators


@pytest.mark.parametrize("estimator", ["mws", "mss"])
@pytest.mark.parametrize(("b", "n"), [(5, 20), (2, 7), (4, 4)])
def test_decomposition_matches_a_naive_loop(estimator: str, b: int, n: int) -> None:
    z, mu, logvar = _posteriors(b, 3)
    ours = kl_decomposition(z, DiagNormal(mu, logvar), StandardNormal(3, dtype=F64), n, estimator)
    naive = naive_decomposition(z, mu, logvar, n, estimator)
    for key, value in naive.items():
        assert float(ours[key]) == pytest.approx(value, rel=1e-9, abs=1e-9), key


@pytest.mark.parametrize("position", [0, 1, 2])
def test_mss_estimate_of_q_z_is_unbiased_given_the_codes_example(position: int) -> None:
    """For a code z of example n*, the mean over every batch holding n* at ``position`` (the
    others drawn without replacement) of sum_j w_ij q(z|x_j) is q(z) = (1/N) sum_n q(z|x_n).

    Weights on the wrong entries (the released code's columns) fail this for positions > 0.
    """
    n_data, b, dim = 5, 3, 2
    gen = torch.Generator().manual_seed(1)
    mu = torch.randn(n_data, dim, generator=gen, dtype=F64)
    sd = torch.rand(n_data, dim, generator=gen, dtype=F64) + 0.3
    weights = log_weight_matrix(b, n_data, "mss").exp()
    for own in range(n_data):
        z = mu[own] + sd[own] * torch.randn(dim, generator=gen, dtype=F64)
        density = Independent(Normal(mu, sd), 1).log_prob(z).exp()  # q(z|x_n) for every n
        exact = float(density.mean())
        others = [k for k in range(n_data) if k != own]
        estimates = []
        for chosen in itertools.permutations(others, b - 1):
            batch = list(chosen)
            batch.insert(position, own)
            estimates.append(float((weights[position] * density[batch]).sum()))
        assert sum(estimates) / len(estimates) == pytest.approx(exact, rel=1e-12)
        if position == 0:  # MWS is not unbiased: it counts q(z|x_i) as one of B draws
            mws = log_weight_matrix(b, n_data, "mws").exp()[position]
            assert sum(float((mws * density[[own, *c]]).sum()) for c in itertools.permutations(
                others, b - 1)) / len(estimates) != pytest.approx(exact, rel=1e-3)


def test_weight_rows_sum_to_one_for_mss() -> None:
    for b, n in ((2, 2), (3, 10), (128, 55000)):
        torch.testing.assert_close(log_weight_matrix(b, n, "mss").exp().sum(1),
                                   torch.ones(b, dtype=F64))
    torch.testing.assert_close(log_weight_matrix(4, 10, "mws").exp(),
                               torch.full((4, 4), 1 / 40, dtype=F64))


def test_identical_posteriors_give_no_mi_and_no_tc_with_mss_and_the_known_mws_bias() -> None:
    """q(z|x_n) the same for every n: q(z) is that diagonal Gaussian, so MI = TC = 0 and
    dim_kl is log q(z) - log p(z) at the codes. MSS's weights sum to 1, so it is exact here;
    MWS divides q by N: mi = log N, tc = (D - 1) log N, dim_kl = the truth - D log N."""
    b, d, n = 6, 4, 50
    mu = torch.full((b, d), 0.7, dtype=F64)
    logvar = torch.full((b, d), -1.0, dtype=F64)
    q = DiagNormal(mu, logvar)
    z = q.rsample()
    truth = float((q.log_prob(z) - StandardNormal(d, dtype=F64).log_prob(z)).mean())
    mss = kl_decomposition(z, q, StandardNormal(d, dtype=F64), n, "mss")
    assert abs(float(mss["mi"])) < 1e-12 and abs(float(mss["tc"])) < 1e-12
    assert float(mss["dim_kl"]) == pytest.approx(truth, rel=1e-12)
    mws = kl_decomposition(z, q, StandardNormal(d, dtype=F64), n, "mws")
    assert float(mws["mi"]) == pytest.approx(math.log(n), rel=1e-12)
    assert float(mws["tc"]) == pytest.approx((d - 1) * math.log(n), rel=1e-12)
    assert float(mws["dim_kl"]) == pytest.approx(truth - d * math.log(n), rel=1e-12)


# --------------------------------------------------------------------------- the decomposition


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_terms_sum_to_the_monte_carlo_kl_at_the_codes(estimator: str) -> None:
    z, mu, logvar = _posteriors(7, 3, seed=2)
    parts = kl_decomposition(z, DiagNormal(mu, logvar), StandardNormal(3, dtype=F64), 30,
                             estimator)
    sd = torch.exp(0.5 * logvar)
    mc_kl = Independent(Normal(mu, sd), 1).log_prob(z) - Independent(
        Normal(torch.zeros(3, dtype=F64), 1.0), 1).log_prob(z)
    torch.testing.assert_close(sum(parts.values()), mc_kl.mean())


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_decomposition_sums_to_the_mean_kl_in_expectation(estimator: str) -> None:
    """Over random batches (without replacement) of a 12-example data set and codes z ~ q,
    mi + tc + dim_kl averages to E_n KL(q(z|n) || p(z)), the closed-form mean KL."""
    n_data, b, d, reps = 12, 4, 3, 3000
    _, mu, logvar = _posteriors(n_data, d, seed=3)
    exact = float(torch.distributions.kl_divergence(
        Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(1).mean())
    prior = StandardNormal(d, dtype=F64)
    sums = []
    for _ in range(reps):
        idx = torch.randperm(n_data)[:b]
        q = DiagNormal(mu[idx], logvar[idx])
        sums.append(float(sum(kl_decomposition(q.rsample(), q, prior, n_data, estimator)
                              .values())))
    values = torch.tensor(sums)
    assert abs(float(values.mean()) - exact) < 4 * float(values.std()) / math.sqrt(reps)


def test_mss_terms_approach_the_exact_decomposition_of_a_small_data_set() -> None:
    """The exact MI, TC and dimension-wise KL of the aggregate posterior of 8 examples with
    correlated codes, by Monte Carlo with the exact mixture densities (torch.distributions'
    MixtureSameFamily), against MSS estimates on batches holding the whole data set in random
    order. MSS's q-estimates are unbiased, their logs biased low by a little (~0.02 nats here,
    Jensen): the tolerance is 0.06 nats. MWS is ~log N = 2.1 nats off on MI here."""
    gen = torch.Generator().manual_seed(0)
    n_data, d = 8, 2
    mu = torch.randn(n_data, d, generator=gen, dtype=F64) * 1.2
    mu[:, 1] = mu[:, 0] * 0.8 + 0.3 * torch.randn(n_data, generator=gen, dtype=F64)
    sd = torch.full((n_data, d), 0.5, dtype=F64)
    samples = 200_000
    which = torch.randint(n_data, (samples,), generator=gen)
    z = mu[which] + sd[which] * torch.randn(samples, d, generator=gen, dtype=F64)
    uniform = Categorical(torch.ones(n_data, dtype=F64))
    log_q = MixtureSameFamily(uniform, Independent(Normal(mu, sd), 1)).log_prob(z)
    log_marginals = sum(MixtureSameFamily(uniform, Normal(mu[:, k], sd[:, k])).log_prob(z[:, k])
                        for k in range(d))
    log_q_own = Independent(Normal(mu[which], sd[which]), 1).log_prob(z)
    log_p = Normal(0.0, 1.0).log_prob(z).sum(1)
    exact = {"mi": float((log_q_own - log_q).mean()), "tc": float((log_q - log_marginals).mean()),
             "dim_kl": float((log_marginals - log_p).mean())}
    assert exact["tc"] > 0.3  # the case has a real total correlation to find

    logvar = sd.log() * 2
    prior = StandardNormal(d, dtype=F64)
    estimates: dict[str, list[float]] = {"mss": [], "mws": []}
    totals = {key: {k: 0.0 for k in exact} for key in estimates}
    reps = 1500
    for _ in range(reps):
        idx = torch.randperm(n_data, generator=gen)
        q = DiagNormal(mu[idx], logvar[idx])
        codes = q.rsample()
        for estimator in estimates:
            for k, v in kl_decomposition(codes, q, prior, n_data, estimator).items():
                totals[estimator][k] += float(v) / reps
    for k in exact:
        assert totals["mss"][k] == pytest.approx(exact[k], abs=0.06), k
    assert totals["mws"]["mi"] - exact["mi"] == pytest.approx(math.log(n_data), abs=0.1)


def test_bf16_autocast_keeps_the_decomposition_in_float32() -> None:
    z, mu, logvar = (t.float() for t in _posteriors(6, 3))
    q, p = DiagNormal(mu, logvar), StandardNormal(3)
    plain = kl_decomposition(z, q, p, 100, "mss")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = kl_decomposition(z.bfloat16(), DiagNormal(mu.bfloat16(), logvar.bfloat16()), p,
                                 100, "mss")
    for key, value in plain.items():
        assert mixed[key].dtype == torch.float32
        assert float(mixed[key]) == pytest.approx(float(value), abs=0.05)  # bf16 inputs only


# --------------------------------------------------------------------------- the model


def test_with_unit_weights_the_loss_is_the_vaes_in_expectation() -> None:
    torch.manual_seed(0)
    tcvae = BetaTCVAE(**SMALL, alpha=1.0, beta=1.0, gamma=1.0, dataset_size=500)
    vae = VAE(**SMALL)
    vae.load_state_dict({k: v for k, v in tcvae.state_dict().items() if k != "dataset_size"})
    x = _x()
    differences = []
    with torch.no_grad():
        for seed in range(300):
            torch.manual_seed(seed)
            a = tcvae.elbo(x)
            torch.manual_seed(seed)
            b = vae.elbo(x)
            differences.append(float(a["loss"].mean() - b["loss"].mean()))
        # exactly, per batch: the batch's Monte-Carlo KL takes the closed form's place
        torch.manual_seed(0)
        out = tcvae(x)
        mc_kl = Independent(Normal(out.mu, torch.exp(0.5 * out.logvar)), 1).log_prob(out.z) - \
            Independent(Normal(torch.zeros(3), 1.0), 1).log_prob(out.z)
    assert differences[0] == pytest.approx(float((mc_kl - out.kl).mean()), abs=1e-4)
    values = torch.tensor(differences)
    assert abs(float(values.mean())) < 4 * float(values.std()) / math.sqrt(len(values))
    assert float(values.std()) > 0  # the batches differ: the test is not vacuous


def test_loss_weights_the_three_terms() -> None:
    model = BetaTCVAE(**SMALL, alpha=0.5, beta=6.0, gamma=2.0, dataset_size=100,
                      estimator="mss")
    x = _x()
    out = model(x)
    terms = model.loss(out, x)
    expected = -(out.recon - (0.5 * terms["mi"] + 6.0 * terms["tc"] + 2.0 * terms["dim_kl"]))
    torch.testing.assert_close(terms["loss"], expected)
    assert {k: tuple(v.shape) for k, v in terms.items() if v.dim() == 0} == {
        "mi": (), "tc": (), "dim_kl": ()}
    assert model.objective == "-(recon - 0.5*MI - 6*TC - 2*dimKL) (mss)"
    assert BetaTCVAE.show_traversals


def test_n_comes_from_the_data_module_unless_configured() -> None:
    datamodule = SimpleNamespace(train_indices=torch.arange(77), image_shape=(1, 8, 8),
                                 num_classes=10)
    model = BetaTCVAE(**SMALL)
    model.trainer = SimpleNamespace(datamodule=datamodule)
    model.setup("fit")
    assert int(model.dataset_size) == 77
    configured = BetaTCVAE(**SMALL, dataset_size=1000)
    configured.trainer = SimpleNamespace(datamodule=datamodule)
    configured.setup("fit")
    assert int(configured.dataset_size) == 1000
    with pytest.raises(ConfigError, match="dataset_size"):
        BetaTCVAE(**SMALL).elbo(_x())  # no N from anywhere


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"beta": -1.0}, "alpha, beta and gamma must be >= 0"),
     ({"estimator": "exact"}, "estimator must be one of mws, mss"),
     ({"dataset_size": 0}, "dataset_size must be >= 1")],
)
def test_bad_settings_are_one_config_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        BetaTCVAE(**SMALL, **kwargs)


def test_mss_needs_a_batch_no_larger_than_the_data_set() -> None:
    model = BetaTCVAE(**SMALL, dataset_size=5, estimator="mss")
    with pytest.raises(ConfigError, match="batch of 10"):
        model.elbo(_x(10))


def test_beta_tcvae_end_to_end(tmp_path, monkeypatch, tmp_path_factory) -> None:
    enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    row, table = check_end_to_end(tmp_path, "beta_tcvae",
                                  terms=("mi", "tc", "dim_kl", "elbo", "kl"))
    assert row["objective"] == "-(recon - 1*MI - 6*TC - 1*dimKL) (mss)"
    assert row["nll"] is not None and math.isfinite(row["tc"])
    assert (tmp_path / "compare" / "traversals_version_0.png").is_file()
    ckpt = torch.load("runs/mnist/beta_tcvae/version_0/checkpoints/last.ckpt",
                      weights_only=False)
    assert int(ckpt["state_dict"]["dataset_size"]) == N_TRAIN - VAL_SIZE  # all of train
    loaded = BaseVAE.load_from_checkpoint("runs/mnist/beta_tcvae/version_0/checkpoints/last.ckpt")
    assert int(loaded.dataset_size) == N_TRAIN - VAL_SIZE


def test_weighted_estimator_trains_through_the_cli(tmp_path, monkeypatch,
                                                  tmp_path_factory) -> None:
    enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    assert run("fit", "--config", config("mnist", "beta_tcvae"), *TINY,
               "--model.init_args.estimator=mws") == 0


def test_beta_tcvae_trains_under_bf16_mixed(tmp_path, monkeypatch, tmp_path_factory) -> None:
    enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    check_bf16_mixed("beta_tcvae", ("mi", "tc", "dim_kl"))
