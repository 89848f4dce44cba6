"""``python -m vae_zoo``: commands, config composition, overrides, errors, run dirs and W&B."""

import csv
import os
import re
import shlex
import subprocess
import sys
import types
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from cli_support import ROOT, TINY, config, run

import vae_zoo
from vae_zoo.cli import main as cli_main
from vae_zoo.cli.main import COMMANDS
from vae_zoo.cli.parser import condense

ALL_COMMANDS = (
    "fit", "validate", "test", "predict", "data", "compare", "sweep", "sample", "classifier",
    "configs", "init",
)


def printed_config(capsys: pytest.CaptureFixture, *args: str) -> dict:
    """The YAML that ``fit ... --print_config`` prints, as a dictionary."""
    assert run("fit", *args, "--print_config") == 0
    return yaml.safe_load(capsys.readouterr().out)


# ----------------------------------------------------------------------------- commands
def test_help_lists_every_command_with_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vae_zoo", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for name in ALL_COMMANDS:
        described = [line for line in lines if line.split()[:1] == [name]]
        assert len(described) == 1 and len(described[0].split()) > 2, name


def test_unknown_command_suggests_the_closest(capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["fitt"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'fitt'" in err and "did you mean 'fit'" in err


def test_other_commands_get_their_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    module = types.ModuleType("fake_sampler")
    module.main = lambda argv: seen.append(argv) or 7
    monkeypatch.setitem(sys.modules, "fake_sampler", module)
    monkeypatch.setitem(COMMANDS, "sample", ("fake_sampler", "draw samples"))
    assert cli_main(["sample", "run_dir", "--n", "4"]) == 7
    assert seen == [["run_dir", "--n", "4"]]


def test_missing_command_module_is_reported(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(COMMANDS, "sweep", ("vae_zoo.no_such_module", "sweeps"))
    assert cli_main(["sweep", "spec.yaml"]) == 2
    assert "'sweep' command is not available" in capsys.readouterr().err


# ----------------------------------------------------------------------------- configs
def test_print_config_shows_the_resolved_experiment(capsys: pytest.CaptureFixture) -> None:
    cfg = printed_config(capsys, "--config", config("mnist", "vae"))
    assert cfg["model"]["class_path"] == "vae_zoo.models.VAE"
    assert cfg["model"]["init_args"]["latent_dim"] == 32
    assert cfg["data"]["binarize"] == "dynamic"
    assert cfg["checkpoint"]["monitor"] == "val/loss" and cfg["checkpoint"]["save_last"]
    assert cfg["seed_everything"] == 0


def test_two_configs_compose_and_the_command_line_wins(capsys: pytest.CaptureFixture) -> None:
    cfg = printed_config(
        capsys,
        "--config", config("mnist", "beta_vae"),
        "--config", config("trainer", "cpu"),
        "--config", config("logger", "wandb"),
        "--model.init_args.beta=2.5",
        "--trainer.max_epochs=3",
    )
    assert cfg["model"]["init_args"]["beta"] == 2.5
    assert cfg["trainer"]["accelerator"] == "cpu" and cfg["trainer"]["max_epochs"] == 3
    assert cfg["trainer"]["logger"][0]["class_path"].endswith("WandbLogger")
    assert cfg["data"]["dataset"] == "mnist"  # untouched by the pieces


def test_interpolation_in_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "data:\n  batch_size: 24\n  eval_batch_size: ${data.batch_size}\n"
        "model:\n  init_args:\n    latent_dim: 6\n    val_k: ${model.init_args.latent_dim}\n"
    )
    cfg = printed_config(capsys, "--config", config("mnist", "vae"), "--config", str(extra))
    assert cfg["data"]["eval_batch_size"] == 24
    assert cfg["model"]["init_args"]["val_k"] == 6


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model.init_args.latent_dimm=3"], "unknown key 'latent_dimm'"),
        (["--trainer.max_stepz=3"], "--trainer.max_stepz"),
        (["--model.init_args.latent_dim=abc"], "latent_dim"),
        (["--model.init_args.encoder.init_args.hidden_dimz=[3]"], "unknown key 'hidden_dimz'"),
        (["--data.dataset=cifar"], "data.dataset"),
    ],
)
def test_bad_arguments_give_one_error_line(
    args: list[str], expected: str, capsys: pytest.CaptureFixture
) -> None:
    assert run("fit", "--config", config("mnist", "vae"), *args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], err
    assert "usage:" not in err and "Traceback" not in err and len(err.splitlines()) <= 3


def test_unknown_key_in_a_yaml_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    latent_dimm: 8\n")
    assert run("fit", "--config", config("mnist", "vae"), "--config", str(bad)) == 2
    assert "error: model (vae_zoo.models.VAE) unknown key 'latent_dimm'" in capsys.readouterr().err


def test_missing_config_file(capsys: pytest.CaptureFixture) -> None:
    assert run("fit", "--config", "no/such/file.yaml") == 2
    err = capsys.readouterr().err
    assert "error: config 'no/such/file.yaml' not found: no file no/such/file.yaml" in err


def test_no_model_says_which_config_to_give(capsys: pytest.CaptureFixture) -> None:
    assert run("fit") == 2
    err = capsys.readouterr().err
    assert "--config mnist/vae" in err and "python -m vae_zoo configs" in err


# ----------------------------------------------------------------------------- help, version
@pytest.mark.parametrize("command", ["fit", "test"])
def test_training_help_is_short_and_names_the_common_options(
    command: str, capsys: pytest.CaptureFixture
) -> None:
    assert run(command, "--help") == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) < 60 and max(map(len, out.splitlines())) <= 100
    for option in ("--config", "--model ", "--model.init_args.", "--model.help", "--data.dataset",
                   "--trainer.max_epochs", "--trainer.devices", "logger/wandb", "--ckpt_path",
                   f"{command} --help full", "--config model/beta_vae"):
        assert option in out, option


def test_every_option_of_the_short_help_exists(capsys: pytest.CaptureFixture) -> None:
    assert run("fit", "--help") == 0
    short = capsys.readouterr().out
    assert run("fit", "--help", "full") == 0  # LightningCLI's own help
    full = capsys.readouterr().out
    assert len(full.splitlines()) > 300
    flags = set(re.findall(r"(?<![\w.-])--[a-z_]+(?:\.[a-z_]+)*", short)) - {"--help"}
    nested = {f for f in flags if f.startswith(("--model.init_args", "--model.help"))}
    for flag in sorted(flags - nested):
        assert re.search(re.escape(flag) + r"[\s=]", full), f"{flag} is not an option of fit"
    # the model's own options live behind --model.help and --model.init_args.*
    assert run("fit", "--model.help", "BetaVAE") == 0
    assert "--model.beta BETA" in capsys.readouterr().out
    cfg = printed_config(capsys, "--config", "mnist/vae", "--model.init_args.latent_dim=16")
    assert cfg["model"]["init_args"]["latent_dim"] == 16


def test_version_names_the_libraries(capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["--version"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:4]] == ["vae_zoo", "torch", "lightning", "wandb"]
    assert lines[0] == f"vae_zoo {vae_zoo.__version__}"
    assert lines[1] == f"torch {metadata.version('torch')}"


def test_classifier_command_trains_through_the_module(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from vae_zoo.evaluation import classifier

    calls = []
    fake = types.SimpleNamespace(path=Path("clf.pt"), test_accuracy=0.5)
    monkeypatch.setattr(classifier, "train_classifier", lambda *a, **k: calls.append(a) or fake)
    assert cli_main(["classifier", "--dataset", "fashion_mnist", "--force"]) == 0
    assert calls and calls[0][0] == "fashion_mnist"
    assert "clf.pt: test accuracy 0.5000" in capsys.readouterr().out
    assert cli_main(["classifier", "--help"]) == 0
    assert "usage: python -m vae_zoo classifier" in capsys.readouterr().out


def test_the_tip_after_an_error_works(capsys: pytest.CaptureFixture) -> None:
    assert run("fit") == 2
    tip = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tip:")]
    commands = re.findall(r"`python -m vae_zoo ([^`]+)`", tip[0])
    assert len(commands) == 2, tip
    for command in commands:  # the tip's own commands, "..." filled in with a config
        assert run(*shlex.split(command.replace("...", config("mnist", "vae")))) == 0, command
        capsys.readouterr()


def test_a_yaml_error_names_the_config_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "second.yaml"
    bad.write_text("trainer: [\n  max_epochs: 1\n")
    assert run("fit", "--config", config("mnist", "vae"), "--config", str(bad)) == 2
    err = capsys.readouterr().err
    assert f"error: {bad}: not valid YAML (line 3, column 1)" in err


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
def test_evaluation_without_a_checkpoint_is_refused(
    command: str, workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    assert run(command, "--config", config("mnist", "vae"), *TINY) == 2
    err = capsys.readouterr().err
    assert f"error: {command} needs a trained model: add --ckpt_path best|last|PATH" in err
    assert "--allow_untrained=true" in err
    assert not Path("runs").exists()  # nothing written


def test_allow_untrained_evaluates_the_initial_model(workdir: Path) -> None:
    assert run("test", "--config", config("mnist", "vae"), *TINY, "--allow_untrained=true") == 0
    rows = list(csv.DictReader(Path("runs/mnist/vae/test_0/metrics.csv").open()))
    assert rows[-1]["test/nll"]


@pytest.mark.parametrize(
    "broken", ["--data.val_size=1000", "--data.data_dir=no_data_here"], ids=["setup", "prepare"]
)
def test_a_data_error_leaves_no_run_folder(
    broken: str, workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    assert run("fit", "--config", config("mnist", "vae"), *TINY, broken) == 2
    captured = capsys.readouterr()
    assert "error:" in captured.err and "results go to" not in captured.out
    assert not Path("runs").exists()


def test_a_command_line_optimizer_is_used(workdir: Path) -> None:
    assert run("fit", "--config", config("mnist", "vae"), *TINY, "--optimizer=SGD",
               "--optimizer.lr=0.05", "--optimizer.momentum=0.5") == 0
    import torch

    ckpt = torch.load("runs/mnist/vae/version_0/checkpoints/last.ckpt", weights_only=False)
    group = ckpt["optimizer_states"][0]["param_groups"][0]
    assert group["lr"] == 0.05 and group["momentum"] == 0.5


def test_configure_optimizers_follows_the_models_policy() -> None:
    from vae_zoo.cli.lightning_cli import VAEZooCLI

    class WithPolicy:
        def configure_optimizers_with(self, optimizer: object, lr_scheduler: object) -> tuple:
            return ("policy", optimizer, lr_scheduler)

    assert VAEZooCLI.configure_optimizers(WithPolicy(), "adam") == ("policy", "adam", None)
    assert VAEZooCLI.configure_optimizers(object(), "adam") == "adam"  # LightningCLI's default


def test_negative_beta_is_one_error_line(capsys: pytest.CaptureFixture) -> None:
    assert run("fit", "--config", config("mnist", "beta_vae"), "--model.init_args.beta=-1") == 2
    err = capsys.readouterr().err
    assert "error: beta must be >= 0" in err and "Traceback" not in err


def test_condense_keeps_the_key_and_the_reason() -> None:
    message = (
        'Parser key "model":\n  Does not validate against any of the Union subtypes\n'
        "  Subtypes: [<class 'vae_zoo.models.base.BaseVAE'>, <class 'NoneType'>]\n  Errors:\n"
        "    - Problem with given class_path 'vae_zoo.models.VAE':\n"
        "        Option 'latent_dimm' is not accepted\n    - Expected a <class 'NoneType'>\n"
        "  Given value type: <class 'dict'>\n  Given value: {}\n"
    )
    assert condense(message) == "model (vae_zoo.models.VAE) unknown key 'latent_dimm'"


# ----------------------------------------------------------------------------- runs
def test_fit_then_test_the_best_checkpoint(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert run("fit", "--config", config("mnist", "vae"), *TINY) == 0
    out = capsys.readouterr().out
    run_dir = Path("runs/mnist/vae/version_0")
    assert (
        f"results in {run_dir} (best checkpoint {run_dir}/checkpoints/best.ckpt, "
        f"config {run_dir}/config.yaml, metrics {run_dir}/metrics.csv)"
    ) in out
    for name in ("config.yaml", "metrics.csv", "checkpoints/best.ckpt", "checkpoints/last.ckpt",
                 "images/epoch_000_recon.png", "images/epoch_000_samples.png"):
        assert (run_dir / name).is_file(), name
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["init_args"]["val_k"] == 2 and saved["trainer"]["max_epochs"] == 1
    logged = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [float(r["train/images_per_sec"]) > 0 for r in logged if r["train/images_per_sec"]] == [
        True
    ]  # on by default: one value per epoch

    args = ["--config", config("mnist", "vae"), *TINY, "--model.init_args.test_k=5"]
    assert run("test", *args, "--ckpt_path", "best") == 0
    out = capsys.readouterr().out
    assert f"results in {run_dir}/test" in out
    rows = list(csv.DictReader((run_dir / "test" / "metrics.csv").open()))
    assert rows and {"test/elbo", "test/nll"} <= set(rows[-1]) and rows[-1]["test/nll"]
    assert yaml.safe_load((run_dir / "test/config.yaml").read_text())["model"]["init_args"][
        "test_k"
    ] == 5

    assert run("fit", "--config", config("mnist", "vae"), *TINY) == 0
    assert "results in runs/mnist/vae/version_1" in capsys.readouterr().out


def test_explicit_root_dir_is_the_run_dir(workdir: Path) -> None:
    target = workdir / "elsewhere" / "my_run"
    assert run("fit", "--config", config("mnist", "vae"), *TINY,
               f"--trainer.default_root_dir={target}") == 0
    assert (target / "checkpoints" / "best.ckpt").is_file() and (target / "metrics.csv").is_file()
    assert not Path("runs").exists()


def test_checkpoint_alias_without_runs_is_an_error(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    assert run("test", "--config", config("mnist", "vae"), *TINY, "--ckpt_path", "best") == 2
    err = capsys.readouterr().err
    assert "--ckpt_path best: no checkpoint found" in err and "runs/mnist/vae" in err


def test_predict_writes_predictions(workdir: Path) -> None:
    assert run("fit", "--config", config("mnist", "cvae"), *TINY) == 0
    ckpt = "runs/mnist/cvae/version_0/checkpoints/last.ckpt"
    assert run("predict", "--ckpt_path", ckpt, *TINY) == 0  # the run's own config is used
    import torch

    out = torch.load("runs/mnist/cvae/version_0/predict/predictions.pt")
    assert out["mu"].shape == (40, 32) and out["reconstruction"].shape == (40, 1, 28, 28)
    assert out["y"].shape == (40,)


# ----------------------------------------------------------------------------- W&B
def test_wandb_without_credentials_runs_offline(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    home = workdir / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("WANDB_MODE", "WANDB_API_KEY", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    argv = ["fit", "--config", config("mnist", "vae"), "--config", config("logger", "wandb"), *TINY,
            "--trainer.max_epochs=2"]
    assert run(*argv) == 0
    out = capsys.readouterr().out
    notices = [line for line in out.splitlines() if line.startswith("wandb: offline mode")]
    assert notices == [
        "wandb: offline mode (no credentials/network); sync later with: "
        "wandb sync runs/mnist/vae/version_0/wandb/offline-run-*"
    ]
    run_dir = Path("runs/mnist/vae/version_0")
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    logged = {p.name.split("_")[0] for p in offline[0].rglob("media/images/**/*.png")}
    assert logged == {"recon", "samples"}  # the image grids went to W&B too
    assert (run_dir / "metrics.csv").is_file()  # the CSV logger stays on beside W&B
    # the run's folders were given to W&B, but config.yaml keeps what the user wrote
    assert "version_0" not in str(yaml.safe_load((run_dir / "config.yaml").read_text()))

    # what W&B shows: the offline run's media files, one reconstruction grid per epoch
    import numpy as np
    from PIL import Image

    media = sorted((run_dir / "wandb").glob("offline-run-*/files/media/images/**/recon_*.png"),
                   key=lambda p: int(p.name.split("_")[1]))  # recon_<step>_<hash>.png
    assert len(media) == 2  # one per epoch
    logged = [np.asarray(Image.open(p).convert("L")) for p in media]
    local = [np.asarray(Image.open(run_dir / f"images/epoch_{e:03d}_recon.png").convert("L"))
             for e in (0, 1)]
    for image, png in zip(logged, local, strict=True):
        assert len(np.unique(image)) > 2  # not the {0, 1} of a float image cast to uint8
        assert np.array_equal(image, png)  # what W&B shows is the local grid
    assert not np.array_equal(logged[0], logged[1])  # the model changed between epochs


def test_wandb_mode_decision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vae_zoo import loggers

    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("WANDB_MODE", "WANDB_API_KEY", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(loggers, "host_reachable", lambda host, **kw: True)
    assert not loggers.has_wandb_credentials()
    assert loggers.prepare_wandb(tmp_path, announce=False) == "offline"

    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    assert loggers.has_wandb_credentials()
    assert loggers.prepare_wandb(tmp_path, announce=False) == "online"
    assert "WANDB_MODE" not in os.environ

    monkeypatch.setattr(loggers, "host_reachable", lambda host, **kw: False)
    assert loggers.prepare_wandb(tmp_path, announce=False) == "offline"  # no network

    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert loggers.prepare_wandb(tmp_path, announce=False) == "disabled"  # the user decides


def test_run_dir_versions(tmp_path: Path) -> None:
    from vae_zoo import runs as rd

    parent = tmp_path / "runs" / "mnist" / "vae"
    assert rd.next_version_dir(parent) == parent / "version_0"
    for name in ("version_0", "version_2", "version_10x", "test_5"):
        (parent / name).mkdir(parents=True)
    assert rd.next_version_dir(parent) == parent / "version_3"
    assert rd.next_version_dir(parent, prefix="test_") == parent / "test_6"
    (parent / "version_0" / "checkpoints").mkdir()
    (parent / "version_0" / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert rd.latest_checkpoint(parent, "last") == parent / "version_0/checkpoints/last.ckpt"
    assert rd.latest_checkpoint(parent, "best") is None
    last = parent / "version_0/checkpoints/last.ckpt"
    assert rd.run_dir_of_checkpoint(last) == parent / "version_0"


def test_previous_wandb_id_is_the_latest_run(tmp_path: Path) -> None:
    from vae_zoo.loggers import previous_wandb_id

    assert previous_wandb_id(tmp_path) is None
    for name in ("offline-run-20250101_120000-aaaa1111", "run-20250102_080000-bbbb2222",
                 "latest-run"):
        (tmp_path / "wandb" / name).mkdir(parents=True)
    assert previous_wandb_id(tmp_path) == "bbbb2222"
