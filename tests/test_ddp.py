"""Multi-process training: DDP on CPU (gloo) through the CLI; the FSDP config piece.

DDP: ``python -m vae_zoo fit/test --trainer.devices=2 --trainer.strategy=ddp``.

The commands run in a subprocess, so Lightning's launcher starts the second rank the way it
does for a user. What is checked:

* the run finishes with 2 processes and writes one run directory, from rank 0 only (one
  ``metrics.csv``, one ``config.yaml``, ``checkpoints/{best,last}.ckpt``, nothing elsewhere);
* the validation metrics logged by the DDP ``fit`` and the test metrics of a DDP ``test`` of
  its checkpoint equal a single-process evaluation of that checkpoint here, in this process.

What is comparable: ``kl`` (closed form), ``mse`` (at z = mu), ``kl_dim_max`` and
``active_units`` are deterministic given the weights and the (fixed-binarized) evaluation
images, so they must agree to float rounding. The validation split has an odd size (1001) so
the two shards differ (501/500); a sampler that pads (duplicates examples, as Lightning's
DistributedSampler does) or drops examples moves these means by far more than the tolerance,
which the test checks against the per-example values. ``elbo``, ``recon``, ``loss`` and
``nll`` use random z samples, which differ between the DDP ranks and this process: they must
agree within 6 standard errors of that Monte Carlo noise, measured here by evaluating twice.
"""

import csv
import importlib
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.strategies import FSDPStrategy

from vae_zoo.runs import RUN_DIR_ENV

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "mnist" / "vae.yaml"
VAL_SIZE = 1001  # odd: rank 0 gets 501 examples, rank 1 gets 500
EVAL_BATCH = 100  # rank 1 has 5 full batches, rank 0 six; the shorter shard must split one
K = 2  # importance samples for val/nll and test/nll: cheap, the comparison allows for noise
TIMEOUT_S = 600
DETERMINISTIC = ("kl", "mse", "kl_dim_max", "active_units")
STOCHASTIC = ("elbo", "recon", "loss", "nll")


def _data_dir() -> Path:
    data = os.environ.get("VAE_ZOO_DATA")
    if data and (Path(data) / "mnist").is_dir():
        return Path(data).resolve()
    if os.environ.get("CI"):
        pytest.fail("CI needs the real data: set VAE_ZOO_DATA to the folder holding mnist/")
    pytest.skip("real MNIST not found: set VAE_ZOO_DATA")


def _vae_zoo(args: list[str], cwd: Path, data_dir: Path, cache: Path | None = None) -> str:
    """Run ``python -m vae_zoo ...`` in ``cwd``; return its output, failing with its tail.

    ``cache`` is the classifier cache (``VAE_ZOO_CACHE``); by default an empty folder.
    """
    env = {**os.environ, "VAE_ZOO_DATA": str(data_dir), "PYTHONPATH": str(ROOT)}
    env["VAE_ZOO_CACHE"] = str(cache or cwd.parent / f"{cwd.name}_no_classifier")
    for inherited in ("LOCAL_RANK", RUN_DIR_ENV):  # left by in-process CLI runs of other tests
        env.pop(inherited, None)
    proc = subprocess.run(
        [sys.executable, "-m", "vae_zoo", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{output[-4000:]}"
    return output


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _logged(rows: list[dict[str, str]], stage: str) -> dict[str, float]:
    """The one row holding ``<stage>/...`` values, as {name: value}."""
    hits = [r for r in rows if r.get(f"{stage}/kl")]
    assert len(hits) == 1, f"expected one {stage} row, got {len(hits)} (written by several ranks?)"
    prefix = f"{stage}/"
    return {k[len(prefix) :]: float(v) for k, v in hits[0].items() if k.startswith(prefix) and v}


@pytest.fixture(scope="module")
def ddp_fit(tmp_path_factory) -> dict:
    """One DDP fit: 2 CPU processes, 5 training batches each, validation on 1001 images."""
    data_dir = _data_dir()
    cwd = tmp_path_factory.mktemp("ddp")
    args = [
        "fit",
        "--config",
        str(CONFIG),
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=5",
        "--trainer.enable_progress_bar=false",
        "--trainer.default_root_dir=run",
        "--data.batch_size=64",
        f"--data.val_size={VAL_SIZE}",
        f"--data.eval_batch_size={EVAL_BATCH}",
        f"--model.init_args.val_k={K}",
        f"--model.init_args.test_k={K}",
    ]
    output = _vae_zoo(args, cwd, data_dir)
    return {"cwd": cwd, "run": cwd / "run", "output": output, "data_dir": data_dir}


@torch.no_grad()
def _single_process(ckpt: Path, data_dir: Path, split: str, k: int, seed: int) -> dict:
    """Per-example metrics of ``ckpt`` on a split, in this one process (no trainer, no DDP)."""
    from vae_zoo.data import VAEDataModule
    from vae_zoo.models import VAE

    torch.manual_seed(seed)
    model = VAE.load_from_checkpoint(ckpt, map_location="cpu").eval()
    dm = VAEDataModule(
        data_dir=str(data_dir), val_size=VAL_SIZE, eval_batch_size=EVAL_BATCH, download=False
    )
    dm.prepare_data()
    dm.setup("validate" if split == "val" else "test")
    loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
    parts: dict[str, list[torch.Tensor]] = {}
    for x, y in loader:
        out = model(x, y)
        terms = model.loss(out, x)
        recon_mean = model.likelihood.mean(model.decode(out.mu, y))
        values = {
            **terms,
            "nll": -model.log_likelihood(x, y, k=k),
            "mse": (recon_mean - x).pow(2).flatten(1).mean(1),
            "kl_per_dim": out.kl_per_dim,
            "mu": out.mu,
        }
        for name, value in values.items():
            parts.setdefault(name, []).append(value.double())
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


def _summary(per_example: dict) -> dict[str, float]:
    """The split-level values SplitMetrics reports, from per-example tensors."""
    mu = per_example["mu"]
    out = {n: per_example[n].mean().item() for n in ("kl", "mse", *STOCHASTIC)}
    out["kl_dim_max"] = per_example["kl_per_dim"].mean(0).max().item()
    out["active_units"] = float((mu.var(0, unbiased=False) > 0.01).sum())
    return out


def _compare(
    logged: dict[str, float], ckpt: Path, data_dir: Path, split: str, odd_split: bool
) -> None:
    first = _single_process(ckpt, data_dir, split, K, seed=1)
    second = _single_process(ckpt, data_dir, split, K, seed=2)
    n = len(first["kl"])
    expected = _summary(first)

    def tol(name: str) -> float:
        # float32 sums in another order (per rank, then across ranks): ~1e-7 relative
        return 2e-6 * abs(expected[name]) + 1e-7

    for name in DETERMINISTIC:
        assert logged[name] == pytest.approx(expected[name], abs=tol(name)), name
    if odd_split:
        # The check above must be able to tell an exact cover from a padded one (the first
        # example twice, as DistributedSampler pads) and a truncated one (the last missing).
        total = {name: first[name].sum().item() for name in ("kl", "mse")}
        padded = {name: (total[name] + first[name][0].item()) / (n + 1) for name in total}
        dropped = {name: (total[name] - first[name][-1].item()) / (n - 1) for name in total}
        for wrong in (padded, dropped):
            assert max(abs(wrong[m] - expected[m]) / tol(m) for m in total) > 10, wrong

    for name in STOCHASTIC:
        # each per-example value is one MC draw; (first - second)^2 estimates twice its variance
        sigma = math.sqrt((first[name] - second[name]).pow(2).sum().item()) / n
        assert logged[name] == pytest.approx(expected[name], abs=6 * sigma + 1e-4), (name, sigma)


@pytest.mark.slow
@pytest.mark.integration
def test_ddp_fit_runs_two_ranks_and_writes_from_rank_zero(ddp_fit) -> None:
    output, cwd, run = ddp_fit["output"], ddp_fit["cwd"], ddp_fit["run"]
    assert "MEMBER: 2/2" in output and "distributed_backend=gloo" in output
    assert sorted(p.name for p in cwd.iterdir()) == ["run"]
    assert [p.relative_to(cwd) for p in cwd.rglob("metrics.csv")] == [Path("run/metrics.csv")]
    assert [p.relative_to(cwd) for p in cwd.rglob("config.yaml")] == [Path("run/config.yaml")]
    ckpts = sorted(p.relative_to(cwd).as_posix() for p in cwd.rglob("*.ckpt"))
    assert ckpts == ["run/checkpoints/best.ckpt", "run/checkpoints/last.ckpt"]
    # both ranks stepped together: 5 optimizer steps of the limited epoch, not 10
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 5
    _logged(_rows(run / "metrics.csv"), "val")  # exactly one validation row


@pytest.mark.slow
@pytest.mark.integration
def test_ddp_validation_equals_single_process_evaluation(ddp_fit) -> None:
    logged = _logged(_rows(ddp_fit["run"] / "metrics.csv"), "val")
    # the epoch-end validation ran on the weights that last.ckpt holds
    ckpt = ddp_fit["run"] / "checkpoints" / "last.ckpt"
    _compare(logged, ckpt, ddp_fit["data_dir"], "val", True)


@pytest.mark.slow
@pytest.mark.integration
def test_ddp_test_equals_single_process_evaluation(ddp_fit, tmp_path) -> None:
    from vae_zoo.evaluation.classifier import SmallCNN, TrainedClassifier, save_classifier
    from vae_zoo.evaluation.fid import ClassifierFID, grey_images

    torch.manual_seed(0)
    clf = TrainedClassifier(SmallCNN().eval(), "mnist", 0.5)  # untrained: any features do
    save_classifier(clf, tmp_path / "classifiers" / "mnist.pt")
    ckpt = ddp_fit["run"] / "checkpoints" / "last.ckpt"
    args = [
        "test",
        f"--ckpt_path={ckpt}",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.enable_progress_bar=false",
        f"--data.val_size={VAL_SIZE}",
        f"--data.eval_batch_size={EVAL_BATCH}",
        f"--model.init_args.test_k={K}",
    ]
    output = _vae_zoo(args, ddp_fit["cwd"], ddp_fit["data_dir"], cache=tmp_path)
    assert "MEMBER: 2/2" in output
    test_dir = ddp_fit["run"] / "test"
    assert [p.name for p in test_dir.rglob("metrics.csv")] == ["metrics.csv"]
    logged = _logged(_rows(test_dir / "metrics.csv"), "test")
    _compare(logged, ckpt, ddp_fit["data_dir"], "test", False)
    # fid_clf: each rank fed half of the images; the synced statistics give one process's value
    train, test = grey_images("mnist", str(ddp_fit["data_dir"]), 10_000)
    assert logged["fid_clf_ref"] == pytest.approx(ClassifierFID(clf, test).of_images(train),
                                                  rel=1e-4)
    assert math.isfinite(logged["fid_clf"]) and logged["fid_clf"] > logged["fid_clf_ref"]
    assert logged["classifier_acc"] == 0.5


def test_fsdp_piece_builds_its_strategy() -> None:
    piece = yaml.safe_load((ROOT / "configs" / "trainer" / "fsdp.yaml").read_text())["trainer"]
    module, _, name = piece["strategy"]["class_path"].rpartition(".")
    strategy = getattr(importlib.import_module(module), name)(**piece["strategy"]["init_args"])
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.sharding_strategy.name == "FULL_SHARD"
    assert strategy._state_dict_type == "full"  # checkpoints stay one loadable file


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="Lightning's FSDPStrategy needs CUDA GPUs (accelerator='cpu' is refused)",
)
def test_fsdp_fit_on_one_gpu(tmp_path: Path, monkeypatch, tmp_path_factory) -> None:
    from cli_support import TINY, config, enter_workdir, run

    from vae_zoo.models import VAE

    enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    fsdp = ["--config", config("trainer", "fsdp"), "--trainer.devices=1"]
    assert run("fit", "--config", config("mnist", "vae"), *fsdp, *TINY) == 0
    ckpt = Path("runs/mnist/vae/version_0/checkpoints/last.ckpt")
    model = VAE.load_from_checkpoint(ckpt, map_location="cpu")
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3))
    assert torch.isfinite(model.elbo(x)["loss"]).all()
