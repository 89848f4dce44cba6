"""The Lightning behaviour :mod:`vae_zoo.lightning_compat` relies on, checked on the installed one.

A failure here means Lightning changed under vae_zoo: the message names the item of
``vae_zoo/lightning_compat.py`` to revisit.
"""

import csv
import ctypes
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger
from small_models import SMALL, binary_images
from torch.utils.data import DataLoader, TensorDataset
from trainers import quiet_trainer

from vae_zoo import lightning_compat
from vae_zoo.lightning_compat import lightning_writes_step_logs
from vae_zoo.models import VAE


class Tiny(LightningModule):
    """The smallest module LightningCLI can build: its width is its only hyper-parameter."""

    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(width, 1)


class _Stop(Exception):
    """Raised by the probe once it has seen what it needs, before anything is built."""


class Probe(LightningCLI):
    """Records the order of the hooks and the model config that reaches the classes."""

    def __init__(self, *args: object, stash: bool, **kwargs: object) -> None:
        self.stash = stash
        self.calls: list[str] = []
        self.width: int | None = None
        super().__init__(*args, **kwargs)

    def parse_arguments(self, parser: object, args: object) -> None:
        super().parse_arguments(parser, args)
        self.calls.append("parse_arguments")
        if self.stash:
            self.stashed = lightning_compat.stash_ckpt_path(self.config.fit)

    def before_instantiate_classes(self) -> None:
        self.calls.append("before_instantiate_classes")
        self.width = self.config.fit.model.width
        if self.stash:
            lightning_compat.restore_ckpt_path(self.config.fit, self.stashed)
        raise _Stop


def probe(ckpt: Path, stash: bool) -> Probe:
    """Run the probe on ``fit --model.width=3 --ckpt_path <a checkpoint of width 5>``."""
    cli = Probe.__new__(Probe)
    with pytest.raises(_Stop):
        Probe.__init__(cli, Tiny, args=["fit", "--model.width=3", f"--ckpt_path={ckpt}"],
                       stash=stash, save_config_callback=None)
    return cli


def test_item_1_lightning_cli_merges_checkpoint_hparams_between_two_public_hooks(
    tmp_path: Path,
) -> None:
    ckpt = tmp_path / "width5.ckpt"
    torch.save({"hyper_parameters": {"width": 5}, "state_dict": {}}, ckpt)

    plain = probe(ckpt, stash=False)
    assert plain.calls == ["parse_arguments", "before_instantiate_classes"], (
        "lightning_compat item 1: LightningCLI no longer calls parse_arguments and then "
        "before_instantiate_classes"
    )
    assert plain.width == 5, (
        "lightning_compat item 1: LightningCLI no longer merges a --ckpt_path checkpoint's "
        "hyper-parameters into the config before before_instantiate_classes; the stash may go, "
        "or the merge moved where the stash does not reach"
    )

    stashed = probe(ckpt, stash=True)
    assert stashed.width == 3, (
        "lightning_compat item 1: with ckpt_path stashed, LightningCLI still merged the "
        "checkpoint's hyper-parameters (it reads the path from somewhere else now)"
    )
    assert stashed.config.fit.ckpt_path == str(ckpt)  # given back for Trainer.fit


# --------------------------------------------------------------------------- item 2


class _Recorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.predicted: list[int] = []

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        if lightning_writes_step_logs(self.trainer):
            self.predicted.append(self.global_step)
        self.log("loss", loss)  # logged every step: Lightning itself decides what it writes
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_item_2_lightning_still_has_the_logger_connector_property() -> None:
    trainer = quiet_trainer()
    connector = getattr(trainer, "_logger_connector", None)
    assert connector is not None, (
        "lightning_compat item 2: Lightning moved Trainer._logger_connector"
    )
    assert isinstance(type(connector).__dict__.get("should_update_logs"), property), (
        "lightning_compat item 2: Lightning removed _LoggerConnector.should_update_logs"
    )


def test_item_2_writes_step_logs_predicts_exactly_the_rows_lightning_writes(tmp_path) -> None:
    model = _Recorder()
    data = DataLoader(TensorDataset(torch.randn(22, 2)), batch_size=2)  # 11 batches an epoch
    trainer = quiet_trainer(max_epochs=2, log_every_n_steps=4,
                            logger=CSVLogger(tmp_path, name="", version=""))
    trainer.fit(model, data)
    with (tmp_path / "metrics.csv").open() as f:
        written = [int(row["step"]) for row in csv.DictReader(f)]
    assert model.predicted == written
    assert written != list(range(22))  # not every step: the prediction is not trivially true


def test_item_3_lightning_still_sets_the_nvml_check_on_import() -> None:
    env = {k: v for k, v in os.environ.items() if k != lightning_compat.NVML_CHECK}
    code = f"import os, lightning; print(os.environ.get({lightning_compat.NVML_CHECK!r}))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "1", (
        "item 3 of vae_zoo/lightning_compat.py: Lightning no longer sets "
        f"{lightning_compat.NVML_CHECK} on import ({out.stdout!r} {out.stderr[-500:]!r})"
    )


def _nvml_loads(monkeypatch: pytest.MonkeyPatch, loads: bool) -> None:
    """Make the shim see a CUDA build of torch on a machine with or without NVML."""

    def cdll(name: str) -> object:
        if not loads:
            raise OSError(f"{name}: cannot open shared object file")
        return object()

    monkeypatch.setattr(lightning_compat.ctypes, "CDLL", cdll)
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)


@pytest.mark.parametrize("loads", [False, True])
def test_item_3_the_check_goes_only_where_nvml_cannot_be_loaded(
    monkeypatch: pytest.MonkeyPatch, loads: bool
) -> None:
    monkeypatch.setenv(lightning_compat.NVML_CHECK, "1")
    _nvml_loads(monkeypatch, loads)
    assert lightning_compat.drop_nvml_check_without_nvml() is not loads
    assert (os.environ.get(lightning_compat.NVML_CHECK) == "1") is loads
    assert lightning_compat.drop_nvml_check_without_nvml() is False  # nothing left to drop


def test_item_3_the_cli_drops_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    from vae_zoo.cli import VAEZooCLI

    monkeypatch.setenv(lightning_compat.NVML_CHECK, "1")
    _nvml_loads(monkeypatch, False)
    VAEZooCLI(args=["--config", "mnist/vae", "--data.download=false"], run=False)
    assert lightning_compat.NVML_CHECK not in os.environ


def test_item_3_a_fit_with_a_trainer_of_ones_own_drops_the_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(lightning_compat.NVML_CHECK, "1")
    _nvml_loads(monkeypatch, False)
    data = DataLoader(TensorDataset(binary_images(8), torch.zeros(8, dtype=torch.long)), 4)
    quiet_trainer(max_steps=1, limit_val_batches=0).fit(VAE(**SMALL), data)
    assert lightning_compat.NVML_CHECK not in os.environ


def test_item_3_without_nvml_the_answer_is_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        ctypes.CDLL(lightning_compat.NVML_LIBRARY)
    except OSError:
        pass
    else:
        pytest.skip("NVML loads here: the check is kept, and CUDA is not initialised by a test")
    monkeypatch.setenv(lightning_compat.NVML_CHECK, "1")
    with_check = (torch.cuda.is_available(), torch.cuda.device_count())
    monkeypatch.delenv(lightning_compat.NVML_CHECK)
    assert (torch.cuda.is_available(), torch.cuda.device_count()) == with_check
