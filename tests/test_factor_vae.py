"""FactorVAE: the permutation, the TC estimate, the discriminator's loss, the two optimizers,
and the CLI (fit, exact resume of both optimizers, test, predict, compare, sample)."""

import copy
import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch
from cli_support import TINY, config, enter_workdir, run
from lightning.pytorch.callbacks import Callback
from small_models import SMALL_NETS, binary_images
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from trainers import quiet_trainer
from variant_cli import fit_and_resume

from vae_zoo.errors import ConfigError
from vae_zoo.evaluation import compare
from vae_zoo.models import BaseVAE, FactorVAE
from vae_zoo.models import factor_vae as fv
from vae_zoo.schedules import LinearWarmup

SMALL = {
    "latent_dim": 3,
    **SMALL_NETS,
    "discriminator_hidden_dims": (12, 12),
    "val_k": 0,
}


def small(**kwargs) -> FactorVAE:
    return FactorVAE(**{**SMALL, **kwargs})


def _x(n: int = 8) -> Tensor:
    return binary_images(n)


def naive_logit(model: FactorVAE, z: Tensor) -> Tensor:
    """D's logit of each row of z, layer by layer in float64 (an independent forward pass)."""
    linears = [m for m in model.discriminator.modules() if isinstance(m, torch.nn.Linear)]
    out = []
    for row in z.double():
        h = row
        for i, layer in enumerate(linears):
            h = layer.weight.double() @ h + layer.bias.double()
            if i < len(linears) - 1:
                h = torch.where(h > 0, h, 0.2 * h)
        out.append(h[0])
    return torch.stack(out)


# --------------------------------------------------------------------------- the permutation


def test_permute_dims_keeps_every_marginal_and_breaks_the_joint() -> None:
    base = torch.randn(2000)
    z = torch.stack([base, base, -base, torch.randn(2000)], dim=1)  # strongly dependent
    perm = fv.permute_dims(z)
    assert perm.shape == z.shape
    # each column holds the same multiset of values as before
    torch.testing.assert_close(perm.sort(dim=0).values, z.sort(dim=0).values, rtol=0, atol=0)
    # ... but the columns were shuffled independently: the dependence is gone
    corr = torch.corrcoef(perm.T)
    assert corr[0, 1].abs() < 0.1 and corr[0, 2].abs() < 0.1 and corr[1, 2].abs() < 0.1
    assert (perm[:, 0] == perm[:, 1]).float().mean() < 0.01
    assert (perm[:, 0] != z[:, 0]).float().mean() > 0.99  # the rows did move
    assert not torch.equal(fv.permute_dims(z), perm)  # a fresh permutation each call


def test_split_halves_are_disjoint_and_cover_the_batch() -> None:
    z = torch.arange(7.0).view(7, 1)
    real, other = fv.split_halves(z)
    assert real.flatten().tolist() == [0, 1, 2, 3] and other.flatten().tolist() == [4, 5, 6]
    one = torch.ones(1, 3)
    assert all(torch.equal(h, one) for h in fv.split_halves(one))  # one example plays both


# --------------------------------------------------------------------------- the terms


def test_tc_is_the_discriminators_logit_and_enters_the_loss_times_gamma() -> None:
    model = small(gamma=3.5).eval()
    x = _x(6)
    out = model(x)
    terms = model.loss(out, x)
    expected_tc = naive_logit(model, out.z)
    # log D/(1-D) from the probability, the paper's form, equals the logit
    prob = torch.sigmoid(expected_tc)
    torch.testing.assert_close(torch.log(prob) - torch.log1p(-prob), expected_tc)
    torch.testing.assert_close(terms["tc"].double(), expected_tc, atol=1e-5, rtol=0)
    assert terms["tc"].shape == (6,) and terms["tc"].dtype == torch.float32
    expected_loss = -(terms["recon"] - terms["kl"]) + 3.5 * expected_tc.float()
    torch.testing.assert_close(terms["loss"], expected_loss, atol=1e-4, rtol=0)
    # elbo, recon and kl keep the base's meaning
    torch.testing.assert_close(terms["elbo"], out.recon - out.kl)


def test_discriminator_loss_and_accuracy_against_a_naive_computation(monkeypatch) -> None:
    model = small().eval()
    # a known "permutation" so that the expected value can be computed by hand
    monkeypatch.setattr(fv, "permute_dims", lambda z: torch.roll(z, shifts=1, dims=0))
    z = torch.randn(7, 3) * 2
    terms = model.discriminator_terms(z)
    real, perm = z[:4], torch.roll(z[4:], 1, 0)
    logit_real, logit_perm = naive_logit(model, real), naive_logit(model, perm)
    log_d_real = torch.log(torch.sigmoid(logit_real))
    log_not_d_perm = torch.log(1 - torch.sigmoid(logit_perm))
    expected = -0.5 * (log_d_real.mean() + log_not_d_perm.mean())
    torch.testing.assert_close(terms["d_loss"].double(), expected, atol=1e-5, rtol=0)
    acc = 0.5 * ((logit_real > 0).double().mean() + (logit_perm < 0).double().mean())
    assert terms["d_acc"].item() == pytest.approx(acc.item())
    assert terms["d_loss"].dim() == 0 and terms["d_acc"].dim() == 0  # batch-level scalars


def test_a_trained_discriminator_estimates_the_total_correlation_of_a_gaussian() -> None:
    # z ~ N(0, [[1, r], [r, 1]]): TC = KL(q(z) || q(z1) q(z2)) = -1/2 log(1 - r^2)
    r = 0.9
    truth = -0.5 * math.log(1 - r**2)
    model = FactorVAE(latent_dim=2, discriminator_hidden_dims=(64, 64))
    opt = torch.optim.Adam(model.discriminator.parameters(), lr=2e-3)
    chol = torch.linalg.cholesky(torch.tensor([[1.0, r], [r, 1.0]]))
    for _ in range(400):
        z = torch.randn(512, 2) @ chol.T
        loss = model.discriminator_terms(z)["d_loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        estimate = model.discriminate(torch.randn(20000, 2) @ chol.T).mean().item()
        # on independent samples the logit's mean is -KL(prod q || q), about -TC here: negative
        independent = model.discriminate(torch.randn(20000, 2)).mean().item()
    assert estimate == pytest.approx(truth, abs=0.15)
    assert independent < -0.3


def test_the_vae_loss_reaches_the_encoder_but_not_the_discriminator_and_vice_versa() -> None:
    model = small(gamma=5.0).train()
    x = _x()
    terms = model.loss(model(x), x)
    disc = list(model.discriminator.parameters())
    vae = list(model.main_parameters())
    assert len(vae) + len(disc) == len(list(model.parameters()))
    grads = torch.autograd.grad(terms["loss"].mean(), disc, allow_unused=True, retain_graph=True)
    assert all(g is None for g in grads)
    grads = torch.autograd.grad(terms["d_loss"], vae, allow_unused=True, retain_graph=True)
    assert all(g is None for g in grads)
    # the TC term does reach the encoder: its gradient changes with gamma
    enc = list(model.encoder.parameters())
    with_tc = torch.autograd.grad(terms["loss"].mean(), enc, retain_graph=True)
    without = torch.autograd.grad((terms["loss"] - 5.0 * terms["tc"]).mean(), enc)
    assert any(not torch.allclose(a, b) for a, b in zip(with_tc, without, strict=True))


def test_the_main_optimizer_holds_the_vae_and_the_second_the_discriminator() -> None:
    model = small(discriminator_lr=3e-4, discriminator_betas=(0.4, 0.8))
    main, disc = model.configure_optimizers()
    d_ids = {id(p) for p in model.discriminator.parameters()}
    assert not d_ids & {id(p) for g in main.param_groups for p in g["params"]}
    assert {id(p) for g in disc.param_groups for p in g["params"]} == d_ids
    assert isinstance(disc, torch.optim.Adam)
    assert disc.defaults["lr"] == 3e-4 and disc.defaults["betas"] == (0.4, 0.8)
    # an optimizer given from outside (the CLI's --optimizer) configures the VAE only
    given = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizers = model.configure_optimizers_with(given)
    assert optimizers[0] is given and isinstance(optimizers[1], torch.optim.Adam)
    assert not d_ids & {id(p) for g in given.param_groups for p in g["params"]}


class CaptureFirstStep(Callback):
    """Weights, RNG state and batch before the first training step, the gradient each
    optimizer steps with, and the weights after the step."""

    def __init__(self) -> None:
        self.grads: list[dict[str, Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.before = copy.deepcopy(pl_module.state_dict())
            self.rng = torch.get_rng_state()
            self.batch = batch

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step < 2:
            mine = {id(p) for g in optimizer.param_groups for p in g["params"]}
            self.grads.append({n: p.grad.clone() for n, p in pl_module.named_parameters()
                               if id(p) in mine})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.after = copy.deepcopy(pl_module.state_dict())


def test_each_optimizer_step_moves_only_its_network_by_its_own_objective(tmp_path) -> None:
    """One training step equals Adam on the VAE with grad(loss) and Adam on D with grad(d_loss).

    The VAE's step must leave the discriminator unchanged (no tc gradient reaches it) and the
    discriminator's step must leave the VAE unchanged (no d_loss gradient reaches it).
    """
    model = small(gamma=50.0)
    capture = CaptureFirstStep()
    data = DataLoader(TensorDataset(_x(16), torch.zeros(16).long()), batch_size=8)
    trainer = quiet_trainer(max_steps=2, callbacks=[capture], default_root_dir=tmp_path)
    trainer.fit(model, data)
    assert trainer.global_step == 2  # one batch: a VAE step and a discriminator step

    ref = small(gamma=50.0)
    ref.load_state_dict(capture.before)
    ref.train()
    torch.set_rng_state(capture.rng)  # the same z draws and the same permutation
    x, y = capture.batch
    terms = ref.loss(ref(x, y), x)
    vae, disc = list(ref.main_parameters()), list(ref.discriminator.parameters())
    vae_grads = torch.autograd.grad(terms["loss"].mean(), vae, retain_graph=True)
    disc_grads = torch.autograd.grad(terms["d_loss"], disc)
    # the gradient each optimizer stepped with is exactly its own objective's
    names = {id(p): n for n, p in ref.named_parameters()}
    assert len(capture.grads) == 2
    for seen, params, grads in zip(capture.grads, (vae, disc), (vae_grads, disc_grads),
                                   strict=True):
        assert set(seen) == {names[id(p)] for p in params}
        for p, g in zip(params, grads, strict=True):
            torch.testing.assert_close(seen[names[id(p)]], g, atol=1e-6, rtol=1e-5)
    steps = (
        (vae, vae_grads, torch.optim.Adam(vae, lr=ref.hparams.lr)),
        (disc, disc_grads, torch.optim.Adam(disc, lr=1e-4, betas=(0.5, 0.9))),
    )
    for params, grads, opt in steps:
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt.step()
    expected = ref.state_dict()
    for name, value in capture.after.items():
        torch.testing.assert_close(value, expected[name], atol=1e-7, rtol=0, msg=name)
    moved = {n for n, v in capture.after.items() if not torch.equal(v, capture.before[n])}
    assert {"discriminator.net.0.weight", "encoder.net.0.weight"} <= moved


class RecordKLWeight(Callback):
    """The KL weight the model uses at every training batch."""

    def __init__(self) -> None:
        self.weights: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.weights.append(pl_module.kl_weight)


def test_kl_warmup_counts_batches_not_optimizer_steps(tmp_path) -> None:
    model = small(kl_schedule=LinearWarmup(warmup_steps=4))
    record = RecordKLWeight()
    data = DataLoader(TensorDataset(_x(48), torch.zeros(48).long()), batch_size=8)
    trainer = quiet_trainer(max_epochs=1, callbacks=[record], default_root_dir=tmp_path)
    trainer.fit(model, data)
    assert trainer.global_step == 12  # Lightning counts both optimizers' steps
    assert record.weights == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_an_epoch_lr_scheduler_steps_under_manual_optimisation(tmp_path) -> None:
    model = small()

    def configure():
        vae = torch.optim.Adam(model.main_parameters(), lr=1e-3)
        return model.configure_optimizers_with(vae, torch.optim.lr_scheduler.StepLR(vae, 1, 0.5))

    model.configure_optimizers = configure
    data = DataLoader(TensorDataset(_x(16), torch.zeros(16).long()), batch_size=8)
    trainer = quiet_trainer(max_epochs=2, default_root_dir=tmp_path)
    trainer.fit(model, data)
    vae_opt, d_opt = trainer.optimizers
    assert vae_opt.param_groups[0]["lr"] == pytest.approx(2.5e-4)
    assert d_opt.param_groups[0]["lr"] == pytest.approx(1e-4)  # not the scheduler's


def test_one_optimizer_from_outside_is_a_clear_error(tmp_path) -> None:
    # what LightningCLI's stock --optimizer does when it bypasses configure_optimizers_with
    model = small()
    model.configure_optimizers = lambda: torch.optim.Adam(model.parameters())
    data = DataLoader(TensorDataset(_x(8), torch.zeros(8).long()), batch_size=8)
    with pytest.raises(ConfigError, match="two optimizers"):
        quiet_trainer(max_epochs=1, default_root_dir=tmp_path).fit(model, data)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("gamma", -1.0, "gamma must be >= 0"),
        ("discriminator_hidden_dims", (16, 0), "discriminator_hidden_dims"),
        ("discriminator_lr", 0.0, "discriminator_lr must be > 0"),
        ("discriminator_betas", (0.5, 1.0), "discriminator_betas"),
    ],
)
def test_bad_settings_are_config_errors(key: str, value, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        small(**{key: value})


def test_works_under_bf16_autocast_with_a_float32_tc() -> None:
    model = small().train()
    x = _x()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = model.loss(model(x), x)
    assert terms["tc"].dtype == torch.float32 and terms["d_loss"].dtype == torch.float32
    assert all(torch.isfinite(v).all() for v in terms.values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_a_model_held_in_another_dtype_runs(dtype: torch.dtype) -> None:
    # bf16-true keeps its weights in bf16; a float64 model is for precise checks
    model = small().to(dtype)
    x = _x().to(dtype)
    terms = model.loss(model(x), x)
    wide = torch.promote_types(dtype, torch.float32)
    assert all(terms[k].dtype == wide for k in ("tc", "d_loss"))
    assert model.log_likelihood(x, k=3).shape == (x.shape[0],)
    assert model.sample(2).dtype == dtype


# --------------------------------------------------------------------------- through the CLI


def test_fit_resume_test_predict_compare_and_sample(tmp_path, monkeypatch, tmp_path_factory):
    enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    resumed = fit_and_resume("factor_vae", steps_per_batch=2)
    run_dir, ckpt = resumed.run_dir, resumed.ckpt
    assert len(ckpt["optimizer_states"]) == 2
    # the discriminator's Adam is the paper's, and its state came back with it
    assert ckpt["optimizer_states"][1]["param_groups"][0]["betas"] == (0.5, 0.9)
    assert any(k.startswith("discriminator.") for k in ckpt["state_dict"])

    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    for key in ("train/tc", "train/d_loss", "train/d_acc_epoch", "val/tc", "val/d_loss",
                "val/d_acc", "val/nll"):
        assert any(r.get(key) for r in rows), key

    best = run_dir / "checkpoints" / "best.ckpt"
    assert type(BaseVAE.load_from_checkpoint(best)) is FactorVAE
    assert run("test", "--ckpt_path", str(best), *TINY) == 0
    with (run_dir / "test" / "metrics.csv").open() as f:
        tested = next(csv.DictReader(f))
    assert 0 <= float(tested["test/d_acc"]) <= 1 and math.isfinite(float(tested["test/tc"]))
    assert run("predict", "--ckpt_path", str(best), *TINY) == 0
    predictions = torch.load(run_dir / "predict" / "predictions.pt")
    assert predictions["mu"].shape[1] == 32 and "reconstruction" in predictions

    out = tmp_path / "compare"
    argv = [str(run_dir), "--out", str(out), "--k", "3", "--n-test", "20", "--device", "cpu",
            "--classifier", "none"]
    assert compare.main(argv) == 0
    row = json.loads((out / "comparison.json").read_text())["runs"][0]
    assert row["variant"] == "factor_vae" and "TC" in row["objective"]
    assert {"tc", "d_loss", "d_acc"} <= set(row)
    assert list(out.glob("traversals_*.png"))  # show_traversals: a disentangling variant
    assert run("sample", str(run_dir), "--n", "4", "--out", str(tmp_path / "s.png")) == 0
    assert (tmp_path / "s.png").is_file()


def test_fit_in_bf16_mixed(tmp_path, monkeypatch, tmp_path_factory) -> None:
    enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    args = ["--config", config("mnist", "factor_vae"), "--config", config("trainer", "bf16-mixed"),
            "--trainer.accelerator=cpu", *TINY]
    assert run("fit", *args) == 0
    with open("runs/mnist/factor_vae/version_0/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/tc")]
    assert rows and all(math.isfinite(float(rows[0][k])) for k in ("val/loss", "val/d_loss"))


@pytest.mark.slow
@pytest.mark.integration
def test_ddp_fit_on_two_cpu_processes(tmp_path) -> None:
    """Plain DDP (no find_unused_parameters): every parameter gets a gradient in the one
    backward pass (the GAN example's two toggled backward passes fail here)."""
    import subprocess
    import sys

    from cli_support import ROOT

    data = os.environ.get("VAE_ZOO_DATA")
    if not data or not (Path(data) / "mnist").is_dir():
        if os.environ.get("CI"):
            pytest.fail("CI needs the real data: set VAE_ZOO_DATA to the folder holding mnist/")
        pytest.skip("real MNIST not found: set VAE_ZOO_DATA")
    env = {**os.environ, "VAE_ZOO_DATA": str(Path(data).resolve()), "PYTHONPATH": str(ROOT),
           "WANDB_MODE": "disabled"}
    env.pop("LOCAL_RANK", None)
    args = [sys.executable, "-m", "vae_zoo", "fit", "--config", config("mnist", "factor_vae"),
            "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
            "--trainer.max_epochs=1", "--trainer.limit_train_batches=4",
            "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
            "--trainer.default_root_dir=run", "--data.batch_size=32", "--data.val_size=200",
            "--data.eval_batch_size=100", "--model.init_args.val_k=2", "--images.every_n_epochs=0"]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr
    ckpt = torch.load(tmp_path / "run/checkpoints/last.ckpt", map_location="cpu",
                      weights_only=False)
    assert ckpt["global_step"] == 8  # 4 batches on each rank, two optimizer steps each
    assert all(state["state"] for state in ckpt["optimizer_states"])
