"""``compare`` and ``sample`` end to end, on tiny runs trained through the CLI on tiny IDX files."""

import csv
import json
import math
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import torch
from cli_support import write_dataset
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset
from trainers import quiet_trainer

from vae_zoo.cli import main as cli_main
from vae_zoo.data import CHECKSUMS, VAEDataModule
from vae_zoo.evaluation import compare, sample
from vae_zoo.evaluation.classifier import (
    ClassifierUnavailableError,
    SmallCNN,
    TrainedClassifier,
    get_classifier,
    load_classifier_file,
    save_classifier,
)
from vae_zoo.evaluation.loading import load_run, unique_labels
from vae_zoo.evaluation.sample import parse_classes
from vae_zoo.models import VAE
from vae_zoo.networks import MLPDecoder, MLPEncoder
from vae_zoo.runs import RUN_DIR_ENV

CONFIG = """
seed_everything: 0
model:
  class_path: vae_zoo.models.{cls}
  init_args:
    latent_dim: {latent}
    encoder: {{class_path: vae_zoo.networks.MLPEncoder, init_args: {{hidden_dims: [16]}}}}
    decoder: {{class_path: vae_zoo.networks.MLPDecoder, init_args: {{hidden_dims: [16]}}}}
    val_k: 2
    test_k: 4
data: {{dataset: mnist, batch_size: 50, val_size: 50, binarize: dynamic, download: false}}
trainer:
  max_epochs: 2
  accelerator: cpu
  devices: 1
  enable_progress_bar: false
  enable_model_summary: false
  log_every_n_steps: 1
images: {{every_n_epochs: 0}}
"""


@dataclass
class Env:
    root: Path
    data: Path
    beta: Path  # run folder of a beta-VAE (2-D latent)
    cvae: Path  # run folder of a conditional VAE
    fashion_ckpt: Path  # a checkpoint written without the CLI, on the other data set


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("compare")
    data = root / "data"
    with pytest.MonkeyPatch.context() as mp:
        mnist = write_dataset(data / "mnist", seed=0, n_train=300, n_test=100)
        fashion = write_dataset(data / "fashion-mnist", seed=1, n_train=200, n_test=60)
        mp.setitem(CHECKSUMS, "mnist", mnist)
        mp.setitem(CHECKSUMS, "fashion_mnist", fashion)
        mp.setenv("VAE_ZOO_DATA", str(data))
        mp.setenv("VAE_ZOO_CACHE", str(root / "cache"))
        mp.setenv("WANDB_MODE", "disabled")
        mp.setenv(RUN_DIR_ENV, "")
        runs = {}
        for name, cls, latent in (("beta", "BetaVAE", 2), ("cvae", "ConditionalVAE", 3)):
            config = root / f"{name}.yaml"
            config.write_text(CONFIG.format(cls=cls, latent=latent))
            run_dir = root / "runs" / name
            argv = ["fit", "--config", str(config), "--trainer.default_root_dir", str(run_dir)]
            assert cli_main(argv) == 0
            runs[name] = run_dir
        yield Env(root, data, runs["beta"], runs["cvae"], _plain_checkpoint(root))


def _tiny_vae(**kwargs) -> VAE:
    return VAE(
        latent_dim=4,
        encoder=partial(MLPEncoder, hidden_dims=(16,)),
        decoder=partial(MLPDecoder, hidden_dims=(16,)),
        **kwargs,
    )


def _plain_checkpoint(root: Path) -> Path:
    """A VAE fit by a bare Trainer on Fashion-MNIST: no config.yaml, no class path."""
    dm = VAEDataModule("fashion_mnist", batch_size=50, val_size=20, download=False)
    model = _tiny_vae(val_k=2)
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0, default_root_dir=str(root))
    trainer.fit(model, datamodule=dm)
    path = root / "plain" / "fashion_vae.ckpt"
    trainer.save_checkpoint(path)
    return path


def _read_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def test_compare_writes_the_table_and_figures(env: Env, capsys: pytest.CaptureFixture) -> None:
    out = env.root / "out"
    argv = [str(env.beta), str(env.cvae / "checkpoints" / "last.ckpt"), str(env.fashion_ckpt),
            "--out", str(out), "--k", "5", "--n_test", "40", "--device", "cpu", "--wandb",
            "--fid_samples", "200"]
    assert compare.main(argv) == 0
    for name in ("comparison.md", "comparison.csv", "comparison.json", "comparison.png",
                 "samples.png", "curves.png", "reconstructions_0.png", "reconstructions_1.png",
                 "traversals_beta.png", "classes_cvae.png", "manifold_beta.png",
                 "latents_0.png", "latents_1.png", "interpolations_beta.png",
                 "interpolations_cvae.png", "interpolations_fashion_vae.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "comparison.json").read_text())
    rows = {r["run"]: r for r in report["runs"]}
    assert set(rows) == {"beta", "cvae", "fashion_vae"}
    assert [rows[n]["variant"] for n in ("beta", "cvae", "fashion_vae")] == ["beta_vae", "cvae",
                                                                              "vae"]
    assert rows["fashion_vae"]["dataset"] == "fashion_mnist" and rows["beta"]["dataset"] == "mnist"
    for row in rows.values():
        assert len(row["kl_per_dim"]) == len(row["mu_variance"]) == row["latent_dim"]
        assert row["nll"] > 0 and row["bpd"] > 0 and 0 <= row["mse"] <= 1
        assert 0 <= row["active_units"] <= row["latent_dim"]
        assert max(row["kl_per_dim"]) == pytest.approx(row["kl_dim_max"], rel=1e-5)
        assert 0 <= row["recon_acc"] <= 1 and row["params"] > 0 and row["n_test"] == 40
    assert 0 <= rows["cvae"]["cond_acc"] <= 1 and rows["beta"]["cond_acc"] is None
    for row in rows.values():  # the aggregate posterior against the prior, for every model
        assert math.isfinite(row["mmd_qp"]) and math.isfinite(row["tc_q"])
    for row in rows.values():  # fid_clf beside its reference and the classifier's accuracy
        own = report["classifiers"][row["dataset"]]
        assert row["fid_clf_ref"] == own["fid_clf_ref"] and 0 <= row["fid_clf_ref"]
        assert row["fid_clf"] > row["fid_clf_ref"]  # barely trained models are far from data
        assert row["classifier_acc"] == own["test_accuracy"]
    assert report["settings"]["fid_samples"] == 200
    for name in ("beta", "cvae"):  # the CLI logs train/images_per_sec in every fit
        assert rows[name]["epochs"] == 2 and rows[name]["global_step"] == 10
        assert rows[name]["images_per_sec"] > 0
        assert rows[name]["images_per_sec_source"] == "logged (train/images_per_sec)"
    assert rows["fashion_vae"]["global_step"] == 2
    for dataset in ("mnist", "fashion_mnist"):
        assert 0 <= report["classifiers"][dataset]["test_accuracy"] <= 1
        assert (env.root / "cache" / "classifiers" / f"{dataset}.pt").is_file()
    assert any("different test sets" in note for note in report["notes"])
    with (out / "comparison.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["run"] for r in table] == ["beta", "cvae", "fashion_vae"]
    md = (out / "comparison.md").read_text()
    assert "| beta | beta_vae | -(recon - 4*KL) | mnist |" in md and "own test accuracy" in md
    assert "| fid_clf | fid ref | clf acc |" in md and "fid_clf on mnist" in md
    assert "| cvae | cvae |" in capsys.readouterr().out
    assert _read_png(out / "comparison.png")[0] > 0


def test_compare_gives_each_model_the_same_numbers_alone_and_together(env: Env) -> None:
    # same seed per model and the same test images: a model's row does not depend on the others
    together, alone = env.root / "together", env.root / "alone"
    common = ["--k", "3", "--n_test", "20", "--device", "cpu", "--classifier", "none"]
    assert compare.main([str(env.beta), str(env.cvae), "--out", str(together), *common]) == 0
    assert compare.main([str(env.cvae), "--out", str(alone), *common]) == 0
    row_together = json.loads((together / "comparison.json").read_text())["runs"][1]
    row_alone = json.loads((alone / "comparison.json").read_text())["runs"][0]
    for key in ("nll", "elbo", "mse", "kl_per_dim", "active_units"):
        assert row_together[key] == row_alone[key], key
    assert row_alone["recon_acc"] is None and row_alone["fid_clf"] is None


def test_compare_reports_a_missing_run_in_one_line(
    env: Env, capsys: pytest.CaptureFixture
) -> None:
    assert compare.main([str(env.root / "nope"), "--out", str(env.root / "x")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


def test_compare_rejects_a_bad_fid_sample_count_in_one_line(
    env: Env, capsys: pytest.CaptureFixture
) -> None:
    assert compare.main([str(env.beta), "--out", str(env.root / "z"), "--fid_samples", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --fid_samples must be 0 (off) or >= 2, got 1"


def test_compare_asks_for_the_data_set_when_the_checkpoint_does_not_say(
    env: Env, capsys: pytest.CaptureFixture
) -> None:
    model = _tiny_vae()
    loader = DataLoader(TensorDataset(torch.rand(8, 1, 28, 28), torch.zeros(8, dtype=torch.long)),
                        batch_size=8)
    trainer = quiet_trainer(max_steps=1, default_root_dir=str(env.root))
    trainer.fit(model, loader)
    ckpt = env.root / "anon" / "anon.ckpt"
    trainer.save_checkpoint(ckpt)
    assert compare.main([str(ckpt), "--out", str(env.root / "y"), "--device", "cpu"]) == 2
    assert "--dataset" in capsys.readouterr().err


def test_sample_unconditional_grid(env: Env) -> None:
    out = env.root / "samples" / "beta.png"
    assert sample.main([str(env.beta), "--n", "64", "--out", str(out), "--device", "cpu"]) == 0
    assert _read_png(out) == (8 * 30 + 2, 8 * 30 + 2)  # 8 x 8 images of 28 px, 2 px padding


def test_sample_cvae_one_row_per_class(env: Env) -> None:
    ckpt = str(env.cvae / "checkpoints" / "best.ckpt")
    two = env.root / "samples" / "two.png"
    assert sample.main([ckpt, "--classes", "3,5", "--n", "8", "--out", str(two)]) == 0
    assert _read_png(two) == (4 * 30 + 2, 2 * 30 + 2)
    every = env.root / "samples" / "all.png"
    assert sample.main([ckpt, "--classes", "0..9", "--n", "20", "--out", str(every)]) == 0
    assert _read_png(every) == (2 * 30 + 2, 10 * 30 + 2)


def test_sample_rejects_classes_for_an_unconditional_model(
    env: Env, capsys: pytest.CaptureFixture
) -> None:
    out = env.root / "samples" / "bad.png"
    assert sample.main([str(env.beta), "--classes", "1", "--out", str(out)]) == 2
    assert "conditional" in capsys.readouterr().err and not out.exists()


def test_parse_classes() -> None:
    assert parse_classes("0..2,7", 10) == [0, 1, 2, 7]
    assert parse_classes("4", 10) == [4]
    with pytest.raises(ValueError, match="out of range"):
        parse_classes("8..10", 10)
    with pytest.raises(ValueError, match="range like 0..9"):
        parse_classes("5..2", 10)


def test_load_run_finds_checkpoint_config_and_metrics(env: Env) -> None:
    run = load_run(env.cvae)
    assert run.ckpt_path.name == "best.ckpt" and run.variant == "cvae"
    assert run.dataset == "mnist" and run.metrics_csv == env.cvae / "metrics.csv"
    assert not run.model.training
    same = load_run(env.cvae / "checkpoints" / "last.ckpt")
    assert same.run_dir == env.cvae
    assert unique_labels([run, same]) == ["cvae:best", "cvae:last"]


def test_classifier_round_trip_and_cached_mode(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VAE_ZOO_CACHE", str(tmp_path / "cache"))
    hint = "python -m vae_zoo classifier --dataset mnist"  # the command that trains one
    with pytest.raises(ClassifierUnavailableError, match=hint):
        get_classifier("mnist", tmp_path, mode="cached")
    net = SmallCNN().eval()
    path = save_classifier(TrainedClassifier(net, "mnist", 0.875), tmp_path / "classifiers" /
                           "mnist.pt")
    found = get_classifier("mnist", tmp_path, mode="cached")  # <data_dir>/classifiers first
    assert found.path == path and found.test_accuracy == 0.875
    x = torch.rand(5, 1, 28, 28)
    assert torch.equal(found.predict(x), net(x).argmax(1))
    (tmp_path / "broken.pt").write_bytes(b"not a file")
    with pytest.raises(ClassifierUnavailableError, match="unreadable"):
        load_classifier_file(tmp_path / "broken.pt")


def test_throughput_falls_back_to_file_times(tmp_path: Path) -> None:
    from vae_zoo.evaluation.compare import training_throughput
    from vae_zoo.evaluation.loading import LoadedRun

    (tmp_path / "config.yaml").write_text("data: {batch_size: 50}\n")
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"")
    os.utime(tmp_path / "config.yaml", (1000, 1000))
    os.utime(ckpt, (1010, 1010))
    run = LoadedRun(source=tmp_path, ckpt_path=ckpt, run_dir=tmp_path, model=_tiny_vae(),
                    variant="vae", data={"batch_size": 50}, global_step=20)
    rate, source = training_throughput(run)
    assert rate == pytest.approx(20 * 50 / 10) and "file times" in source
    run.metrics_csv = tmp_path / "metrics.csv"
    run.metrics_csv.write_text("epoch,step,train/images_per_sec\n0,4,50.0\n1,9,70.0\n2,14,90.0\n")
    assert training_throughput(run) == (80.0, "logged (train/images_per_sec)")


def test_markdown_cells_escape_the_pipe_and_align_text_left() -> None:
    from vae_zoo.evaluation.compare import MD_COLUMNS, markdown_table

    row = {"run": "b", "variant": "beta_vae", "objective": "-(recon - 10*|KL - C|)", "nll": 90.0}
    header, rule, line = markdown_table([row]).splitlines()
    assert "p(x\\|z)" in header
    assert "-(recon - 10*\\|KL - C\\|)" in line
    # as many cells as columns: no pipe split a cell
    assert len(line.replace("\\|", "").split("|")) == len(MD_COLUMNS) + 2
    assert rule.split("|")[1:4] == ["---", "---", "---"] and "--:" in rule
