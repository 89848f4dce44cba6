"""Checkpoints: resuming keeps the global step, interrupts save last.ckpt, variants are checked."""

import csv
import signal
from pathlib import Path

import pytest
import torch
from cli_support import TINY, config, run, step_of

from vae_zoo.errors import CheckpointMismatchError
from vae_zoo.models import VAE, BaseVAE, ConditionalVAE

RUN = Path("runs/mnist/vae/version_0")


def metric_epochs(run_dir: Path) -> list[int]:
    """Epochs of the validation rows in a run's metrics.csv."""
    with (run_dir / "metrics.csv").open() as f:
        return [int(r["epoch"]) for r in csv.DictReader(f) if r.get("val/loss")]


def test_resume_from_last_continues_the_global_step(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["--config", config("mnist", "vae"), *TINY, "--trainer.limit_train_batches=3"]
    assert run("fit", *args) == 0
    assert step_of(RUN / "checkpoints/last.ckpt") == 3
    capsys.readouterr()

    assert run("fit", *args, "--trainer.max_epochs=2", "--ckpt_path", "last") == 0
    out = capsys.readouterr().out
    assert f"--ckpt_path last: {RUN}/checkpoints/last.ckpt" in out
    assert f"resuming in {RUN} from global step 3" in out
    assert step_of(RUN / "checkpoints/last.ckpt") == 6
    assert not Path("runs/mnist/vae/version_1").exists()  # resumed in place
    assert metric_epochs(RUN) == [0, 1]  # the first attempt's rows are kept


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv."""
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_last_checkpoint_follows_training_when_the_best_stops_improving(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    # monitoring "step" in mode min makes every epoch after the first worse than the best, as a
    # diverging val/loss does: Lightning's save_last then left last.ckpt at the first epoch
    args = ["--config", config("mnist", "vae"), *TINY, "--trainer.max_epochs=3",
            "--checkpoint.monitor=step", "--checkpoint.mode=min"]
    assert run("fit", *args) == 0
    assert step_of(RUN / "checkpoints/best.ckpt") == 2
    assert step_of(RUN / "checkpoints/last.ckpt") == 6  # 3 epochs of 2 batches
    first = csv_rows(RUN)
    capsys.readouterr()

    assert run("fit", *args, "--trainer.max_epochs=4", "--ckpt_path", "last") == 0
    assert f"resuming in {RUN} from global step 6" in capsys.readouterr().out
    assert step_of(RUN / "checkpoints/last.ckpt") == 8
    resumed = csv_rows(RUN)
    assert [{k: r[k] for k in first[0]} for r in resumed[: len(first)]] == first  # untouched
    assert metric_epochs(RUN) == [0, 1, 2, 3]  # each epoch validated once


def test_last_checkpoint_can_be_turned_off(workdir: Path) -> None:
    assert run("fit", "--config", config("mnist", "vae"), *TINY,
               "--checkpoint.save_last=false") == 0
    assert sorted(p.name for p in (RUN / "checkpoints").iterdir()) == ["best.ckpt"]


@pytest.mark.parametrize(("how", "code"), [("sigterm", 143), ("ctrl-c", 1)])
def test_interrupted_run_saves_last_and_resumes(
    workdir: Path, how: str, code: int, capsys: pytest.CaptureFixture
) -> None:
    sigint = signal.getsignal(signal.SIGINT)  # Lightning ignores Ctrl-C after the first one
    stop = (
        '--trainer.callbacks=[{"class_path": "cli_support.StopAt",'
        f' "init_args": {{"step": 2, "how": "{how}"}}}}]'
    )
    args = ["--config", config("mnist", "vae"), *TINY, "--trainer.limit_train_batches=5"]
    try:
        assert run("fit", *args, stop) == code
    finally:
        signal.signal(signal.SIGINT, sigint)
    ckpts = sorted(p.name for p in (RUN / "checkpoints").iterdir())
    assert ckpts == ["last.ckpt"]  # no best yet (no validation ran), nothing half-written
    assert step_of(RUN / "checkpoints/last.ckpt") == 2
    capsys.readouterr()

    assert run("fit", *args, "--ckpt_path", "last") == 0
    assert "from global step 2" in capsys.readouterr().out
    assert step_of(RUN / "checkpoints/last.ckpt") > 2
    assert (RUN / "checkpoints/best.ckpt").is_file()


def test_checkpoint_of_another_variant_is_refused_by_the_cli(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    assert run("fit", "--config", config("mnist", "cvae"), *TINY) == 0
    ckpt = "runs/mnist/cvae/version_0/checkpoints/best.ckpt"
    capsys.readouterr()
    assert run("test", "--config", config("mnist", "vae"), *TINY, "--ckpt_path", ckpt) == 2
    err = capsys.readouterr().err
    assert "error: checkpoint" in err and "variant 'cvae'" in err
    assert "use --config runs/mnist/cvae/version_0/config.yaml" in err
    assert "Traceback" not in err

    with pytest.raises(CheckpointMismatchError, match="variant 'cvae'"):
        VAE.load_from_checkpoint(ckpt)
    assert type(BaseVAE.load_from_checkpoint(ckpt)) is ConditionalVAE
    assert type(ConditionalVAE.load_from_checkpoint(ckpt)) is ConditionalVAE


def test_architecture_comes_from_the_checkpoint_and_test_k_from_the_command_line(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    assert run("fit", "--config", config("mnist", "vae"), *TINY,
               "--model.init_args.latent_dim=4") == 0
    capsys.readouterr()
    # the config says latent_dim 32: the checkpoint's 4 must win, or its weights would not fit
    assert run("test", "--config", config("mnist", "vae"), *TINY, "--model.init_args.test_k=3",
               "--ckpt_path", str(RUN / "checkpoints/best.ckpt")) == 0
    assert "model settings from the checkpoint: latent_dim=4" in capsys.readouterr().out
    import yaml

    saved = yaml.safe_load((RUN / "test/config.yaml").read_text())["model"]["init_args"]
    assert saved["latent_dim"] == 4 and saved["test_k"] == 3


def test_test_with_only_a_checkpoint_uses_the_runs_config(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    assert run("fit", "--config", config("fashion_mnist", "cvae"), *TINY) == 0
    ckpt = "runs/fashion_mnist/cvae/version_0/checkpoints/best.ckpt"
    capsys.readouterr()
    assert run("validate", "--ckpt_path", ckpt, *TINY) == 0
    captured = capsys.readouterr()
    assert "using the run's config runs/fashion_mnist/cvae/version_0/config.yaml" in captured.err
    assert Path("runs/fashion_mnist/cvae/version_0/validate/metrics.csv").is_file()


def test_unreadable_checkpoint_is_one_error_line(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = workdir / "broken.ckpt"
    bad.write_bytes(b"not a checkpoint")
    assert run("test", "--config", config("mnist", "vae"), *TINY, "--ckpt_path", str(bad)) == 2
    err = capsys.readouterr().err
    assert "error:" in err
    assert "broken.ckpt is not a readable checkpoint (not a PyTorch file)" in err
    assert "weights_only" not in err  # torch's advice to unpickle anyway is unsafe, and no help


def test_a_new_metric_column_rewrites_the_csv_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vae_zoo import loggers

    logger = loggers.RunCSVLogger(tmp_path)
    logger.log_metrics({"train/loss": 1.5, "epoch": 0}, step=0)
    logger.save()
    before = (tmp_path / "metrics.csv").read_text()

    def killed_midway(src: object, dst: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(loggers.os, "replace", killed_midway)
    logger.log_metrics({"val/loss": 2.5, "epoch": 0}, step=0)  # a new column: a new header
    with pytest.raises(KeyboardInterrupt):
        logger.save()
    assert (tmp_path / "metrics.csv").read_text() == before


def test_the_csv_logger_creates_nothing_before_the_first_metric(tmp_path: Path) -> None:
    from vae_zoo.loggers import RunCSVLogger

    logger = RunCSVLogger(tmp_path / "run")
    logger.log_hyperparams({"lr": 0.1})
    logger.save()
    logger.finalize("failed")
    assert not (tmp_path / "run").exists()


def test_resumed_csv_keeps_rows_before_the_checkpoint(tmp_path: Path) -> None:
    from vae_zoo.loggers import RunCSVLogger

    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss\n" + "".join(f"0,{s},{s}.5\n" for s in range(6)))
    logger = RunCSVLogger(tmp_path, resume_step=3)
    logger.log_metrics({"val/loss": 1.25, "epoch": 1}, step=3)
    logger.save()
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["0", "1", "2", "3"]
    assert rows[0]["train/loss"] == "0.5" and rows[-1]["val/loss"] == "1.25"

    RunCSVLogger(tmp_path).log_metrics({"x": 1.0}, step=0)  # not resuming: a new file
    assert not path.exists()


def test_a_failed_checkpoint_write_leaves_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vae_zoo.checkpoints import AtomicCheckpointIO

    io, target = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, target)

    def killed_midway(obj: object, f: object) -> None:
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2}, target)
    monkeypatch.undo()
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]
    assert torch.load(target)["global_step"] == 1
