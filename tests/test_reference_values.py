"""The three variants give the numbers they gave before the model base was reopened.

``fixtures/reference_values_v0.json`` was recorded on main at commit 8e0e8ae (see
``fixtures/record_reference_v0.py``): ``elbo()`` parts and ``log_likelihood`` of VAE, BetaVAE
(both forms) and ConditionalVAE (both priors) from fixed seeds, and the values of a small CVAE
run's checkpoint written by that version's CLI (``fixtures/v0_cvae_run``).
"""

import csv
import functools
import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_support import enter_workdir, run

from vae_zoo.evaluation.loading import load_run
from vae_zoo.models import VAE, BaseVAE, BetaVAE, ConditionalVAE
from vae_zoo.networks import MLPDecoder, MLPEncoder

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = json.loads((FIXTURES / "reference_values_v0.json").read_text())
ENC = functools.partial(MLPEncoder, hidden_dims=(32,))
DEC = functools.partial(MLPDecoder, hidden_dims=(32,))
CASES = {
    "vae": (VAE, {}),
    "beta_vae_beta": (BetaVAE, {"beta": 4.0}),
    "beta_vae_capacity": (BetaVAE, {"gamma": 10.0, "capacity_max": 25.0, "capacity_steps": 100}),
    "cvae_standard": (ConditionalVAE, {"prior": "standard"}),
    "cvae_learned": (ConditionalVAE, {"prior": "learned"}),
}


def _close(got: torch.Tensor, expected: list[float], name: str) -> None:
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("name", list(CASES))
def test_elbo_parts_and_log_likelihood_equal_the_recorded_values(name: str) -> None:
    cls, kwargs = CASES[name]
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((8, 1, 28, 28), 0.3))
    y = torch.arange(8) % 10
    torch.manual_seed(1)
    model = cls(latent_dim=4, encoder=ENC, decoder=DEC, iw_rows=64, **kwargs).eval()
    if name == "cvae_learned":
        torch.manual_seed(2)
        torch.nn.init.normal_(model.prior_net.weight, std=0.5)
    c = y if cls is ConditionalVAE else None
    torch.manual_seed(3)
    terms = model.elbo(x, c)
    torch.manual_seed(4)
    log_likelihood = model.log_likelihood(x, c, k=50)
    expected = REFERENCE["cases"][name]
    for key in ("loss", "elbo", "recon", "kl"):
        _close(terms[key], expected[key], key)
    _close(log_likelihood, expected["log_likelihood"], "log_likelihood")


def _fixture_batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.bernoulli(torch.full((6, 1, 28, 28), 0.2)), torch.arange(6)


def _check_old_model(model: BaseVAE) -> None:
    x, y = _fixture_batch()
    expected = REFERENCE["v0_cvae_run"]
    torch.manual_seed(5)
    _close(model.log_likelihood(x, y, k=30), expected["log_likelihood"], "log_likelihood")
    torch.manual_seed(6)
    terms = model.elbo(x, y)
    for key in ("loss", "elbo", "recon", "kl"):
        _close(terms[key], expected[key], key)


def test_an_old_run_loads_through_load_run_with_its_values() -> None:
    loaded = load_run(FIXTURES / "v0_cvae_run")
    assert (loaded.variant, loaded.global_step) == ("cvae", REFERENCE["v0_cvae_run"]["global_step"])
    assert type(loaded.model) is ConditionalVAE and loaded.model.prior_kind == "learned"
    _check_old_model(loaded.model)


def test_an_old_checkpoint_loads_through_lightning_with_its_values() -> None:
    ckpt = FIXTURES / "v0_cvae_run" / "checkpoints" / "best.ckpt"
    for cls in (BaseVAE, ConditionalVAE):
        model = cls.load_from_checkpoint(ckpt, map_location="cpu").eval()
        assert type(model) is ConditionalVAE
        _check_old_model(model)


def test_an_old_checkpoint_tests_through_the_cli(tmp_path, monkeypatch, tmp_path_factory) -> None:
    enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    old_run = shutil.copytree(FIXTURES / "v0_cvae_run", tmp_path / "v0_cvae_run")
    args = ["--data.val_size=40", "--data.download=false", "--trainer.limit_test_batches=2",
            "--trainer.enable_progress_bar=false", "--model.init_args.test_k=2"]
    assert run("test", "--ckpt_path", str(old_run / "checkpoints" / "best.ckpt"), *args) == 0
    with (old_run / "test" / "metrics.csv").open() as f:
        row = next(csv.DictReader(f))
    assert float(row["test/nll"]) > 0 and float(row["test/kl"]) >= 0
