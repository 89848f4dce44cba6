"""The model contract of BaseVAE: a variant in one file, distributions, log-weights, optimisers.

A fourth variant defined under tests/ (``variant_batch_z.py``) is found through the registry by
the CLI, logs its own term under train/, val/ and test/, and appears in ``compare``.
"""

import csv
import json
import math

import pytest
import torch
from cli_support import TINY, config, enter_workdir, run
from small_models import SMALL, binary_images
from torch import Tensor, nn
from torch.distributions import Distribution
from variant_batch_z import ZCenteredVAE

from vae_zoo.distributions import MixtureOfDiagNormals, kl_divergence
from vae_zoo.errors import ConfigError
from vae_zoo.evaluation import compare
from vae_zoo.metrics import SplitMetrics
from vae_zoo.models import VAE, BaseVAE, get_model_class, list_models, register_model
from vae_zoo.models.registry import variant_name


def _x(n: int = 6) -> Tensor:
    return binary_images(n)


# --------------------------------------------------------------------------- the registry


def test_a_variant_joins_the_registry_from_its_own_file() -> None:
    assert list_models()["zcentered_vae"] is ZCenteredVAE
    assert get_model_class("zcentered_vae") is ZCenteredVAE
    assert get_model_class("ZCenteredVAE") is ZCenteredVAE
    assert get_model_class("variant_batch_z.ZCenteredVAE") is ZCenteredVAE
    assert variant_name(ZCenteredVAE(**SMALL)) == "zcentered_vae"
    assert variant_name("vae_zoo.models.BetaVAE") == "beta_vae"
    with pytest.raises(KeyError, match="registered"):
        get_model_class("no_such_variant")


def test_a_name_cannot_be_taken_twice_and_unregistered_subclasses_keep_their_own() -> None:
    with pytest.raises(ValueError, match="taken"):

        @register_model("vae")
        class Impostor(BaseVAE):
            """Not the VAE."""

    class Unregistered(VAE):
        """A subclass that did not register."""

    assert variant_name(Unregistered) == "unregistered"


def test_the_fourth_variant_trains_logs_its_term_everywhere_and_is_compared(
    tmp_path, monkeypatch, tmp_path_factory
) -> None:
    enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    args = [*TINY, "--trainer.log_every_n_steps=1", "--model.init_args.lam=0.5"]
    assert run("fit", "--config", config("mnist", "vae"), "--model",
               "variant_batch_z.ZCenteredVAE", *args) == 0
    run_dir = tmp_path / "runs" / "mnist" / "zcentered_vae" / "version_0"
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    for key in ("train/z_mean_sq", "train/z_mean_sq_epoch", "val/z_mean_sq"):
        assert any(r.get(key) for r in rows), key
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    assert type(BaseVAE.load_from_checkpoint(ckpt)) is ZCenteredVAE

    assert run("test", "--ckpt_path", str(ckpt), *TINY) == 0
    with (run_dir / "test" / "metrics.csv").open() as f:
        assert float(next(csv.DictReader(f))["test/z_mean_sq"]) >= 0

    out = tmp_path / "compare"
    argv = [str(run_dir), "--out", str(out), "--k", "3", "--n-test", "20", "--device", "cpu",
            "--classifier", "none"]
    assert compare.main(argv) == 0
    row = json.loads((out / "comparison.json").read_text())["runs"][0]
    assert row["variant"] == "zcentered_vae" and row["z_mean_sq"] >= 0
    assert row["objective"] == ZCenteredVAE.objective
    assert "z_mean_sq" in (out / "comparison.md").read_text()


# --------------------------------------------------------------------------- distributions


class VampLikeVAE(BaseVAE):
    """A mixture prior (not registered): the KL has no closed form and comes from the sample."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.prior_mu = nn.Parameter(torch.randn(4, self.latent_dim))
        self.prior_logvar = nn.Parameter(torch.zeros(4, self.latent_dim))

    def prior(self, c: Tensor | None = None) -> Distribution:
        """An equal-weight mixture of four learned Gaussians."""
        return MixtureOfDiagNormals(self.prior_mu, self.prior_logvar)


def test_a_non_gaussian_prior_gets_a_monte_carlo_kl_and_no_per_dimension_kl() -> None:
    model = VampLikeVAE(**SMALL).eval()
    x = _x()
    out = model(x)
    assert out.kl_per_dim is None
    expected = out.posterior.log_prob(out.z) - out.prior.log_prob(out.z)
    torch.testing.assert_close(out.kl, expected)
    with pytest.raises(ValueError, match="no closed form"):
        kl_divergence(out.posterior, out.prior)
    metrics = SplitMetrics()
    model.update_metrics(metrics, model.evaluate_batch(x, None, k=4))
    values = metrics.compute()
    assert "kl_dim_max" not in values and "active_units" in values and "nll" in values
    # the KL is an unbiased estimate: its mean over many draws approaches log q - log p's mean
    out.kl.sum().backward()
    assert model.prior_mu.grad is not None and model.prior_mu.grad.abs().sum() > 0


def test_log_weights_are_differentiable_and_log_likelihood_is_their_logsumexp() -> None:
    model = VAE(**SMALL).eval()
    x = _x()
    torch.manual_seed(3)
    log_w = model.log_weights(x, k=7)
    assert log_w.shape == (7, 6) and log_w.requires_grad
    log_w.sum().backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    torch.manual_seed(3)
    estimate = model.log_likelihood(x, k=7)  # one chunk: the same draws
    torch.testing.assert_close(estimate, torch.logsumexp(log_w.detach(), 0) - math.log(7))


def test_log_weights_reuse_a_forward_pass() -> None:
    model = VAE(**SMALL).eval()
    x = _x()
    out = model(x)
    torch.manual_seed(5)
    a = model.log_weights(x, k=3, out=out)
    torch.manual_seed(5)
    b = model.log_weights(x, k=3)
    torch.testing.assert_close(a, b)


def test_loss_terms_must_keep_their_keys_between_batches() -> None:
    metrics = SplitMetrics()
    metrics.update({"loss": torch.ones(2)})
    with pytest.raises(ValueError, match="same keys"):
        metrics.update({"loss": torch.ones(2), "extra": torch.ones(2)})


# --------------------------------------------------------------------------- optimisation policy


class WithCritic(BaseVAE):
    """A model with a second network trained by its own optimiser (not registered)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.critic = nn.Linear(self.latent_dim, 1)
        self.automatic_optimization = False

    def auxiliary_modules(self) -> list[nn.Module]:
        """The critic has its own optimiser."""
        return [self.critic]

    def configure_auxiliary_optimizers(self) -> list[torch.optim.Optimizer]:
        """SGD for the critic."""
        return [torch.optim.SGD(self.critic.parameters(), lr=0.1)]

    def training_step(self, batch, batch_idx):
        """The VAE step, then a critic step on the detached z (Lightning's GAN pattern)."""
        vae_opt, critic_opt = self.optimizers()
        x, y = self.unpack(batch)
        out = self(x, y)
        self.toggle_optimizer(vae_opt)
        loss = self.log_train(self.loss(out, x))
        self.manual_backward(loss)
        vae_opt.step()
        vae_opt.zero_grad()
        self.untoggle_optimizer(vae_opt)
        self.toggle_optimizer(critic_opt)
        critic_loss = self.critic(out.z.detach()).pow(2).mean()
        self.manual_backward(critic_loss)
        critic_opt.step()
        critic_opt.zero_grad()
        self.untoggle_optimizer(critic_opt)


def test_the_main_optimizer_never_holds_the_auxiliary_parameters() -> None:
    model = WithCritic(**SMALL)
    critic = {id(p) for p in model.critic.parameters()}
    main, aux = model.configure_optimizers()
    assert not critic & {id(p) for g in main.param_groups for p in g["params"]}
    assert {id(p) for g in aux.param_groups for p in g["params"]} == critic
    # an optimizer given from outside (the command line's --optimizer) is cut down the same way
    given = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(given, step_size=1)
    optimizers, schedulers = model.configure_optimizers_with(given, sched)
    assert optimizers[0] is given and len(optimizers) == 2
    assert not critic & {id(p) for g in given.param_groups for p in g["params"]}
    assert schedulers == [{"scheduler": sched}]
    assert len(list(model.main_parameters())) == len(list(model.parameters())) - 2


def test_a_second_optimizer_trains_under_manual_optimisation(tmp_path) -> None:
    from torch.utils.data import DataLoader, TensorDataset
    from trainers import quiet_trainer

    model = WithCritic(**SMALL, val_k=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = DataLoader(TensorDataset(_x(24), torch.zeros(24).long()), batch_size=8)
    trainer = quiet_trainer(max_epochs=1, default_root_dir=tmp_path)
    trainer.fit(model, data)
    assert trainer.global_step == 6  # two optimizer steps per batch
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert {"critic.weight", "encoder.net.0.weight"} <= changed
    assert "train/loss_epoch" in trainer.callback_metrics


# --------------------------------------------------------------------------- data checks


@pytest.mark.parametrize("num_classes", [12, 5])
def test_a_cvae_with_another_number_of_classes_stops_before_training(
    num_classes: int, tmp_path, monkeypatch, tmp_path_factory, capsys
) -> None:
    enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    code = run("fit", "--config", config("mnist", "cvae"), *TINY,
               f"--model.init_args.num_classes={num_classes}")
    assert code == 2
    err = capsys.readouterr().err
    assert f"model.num_classes is {num_classes} but the data set has 10 classes" in err
    assert not list(tmp_path.glob("runs/**/*.ckpt"))


def test_the_image_shape_must_match_the_data(tmp_path, monkeypatch, tmp_path_factory,
                                              capsys) -> None:
    enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    code = run("fit", "--config", config("mnist", "vae"), *TINY,
               "--model.init_args.image_shape=[1,32,32]")
    assert code == 2
    assert "--model.init_args.image_shape=[1, 28, 28]" in capsys.readouterr().err


def test_setup_without_a_data_module_checks_nothing() -> None:
    model = VAE(**SMALL)
    model.setup("fit")  # no trainer: nothing to check against, no error
    with pytest.raises(ConfigError):
        VAE(**{**SMALL, "latent_dim": 0})


def test_the_variants_command_lists_every_registered_variant_once(capsys) -> None:
    from vae_zoo.cli import main

    assert main(["variants", "--import", "variant_batch_z"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[0] for line in lines) == sorted(list_models())
    by_name = {line.split()[0]: line for line in lines}
    assert "ZCenteredVAE" in by_name["zcentered_vae"] and "--config" not in by_name["zcentered_vae"]
    assert "(--config mnist/vae, fashion_mnist/vae)" in by_name["vae"]
    assert main(["variants", "--import", "no_such_module_here"]) == 2
    assert "no_such_module_here" in capsys.readouterr().err
