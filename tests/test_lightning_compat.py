"""The Lightning behaviour :mod:`vae_zoo.lightning_compat` relies on, checked on the installed one.

A failure here means Lightning changed under vae_zoo: the message names the item of
``vae_zoo/lightning_compat.py`` to revisit.
"""

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset
from trainers import quiet_trainer

from vae_zoo import lightning_compat
from vae_zoo.lightning_compat import lightning_writes_step_logs


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
