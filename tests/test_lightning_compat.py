"""The private Lightning state that ``vae_zoo.lightning_compat`` reads is still there and means
what it meant: if a Lightning upgrade moves it, this fails here with the name of what moved."""

import csv

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset
from trainers import quiet_trainer

from vae_zoo.lightning_compat import lightning_writes_step_logs


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


def test_lightning_still_has_the_logger_connector_property() -> None:
    trainer = quiet_trainer()
    connector = getattr(trainer, "_logger_connector", None)
    assert connector is not None, "Lightning moved Trainer._logger_connector"
    assert isinstance(type(connector).__dict__.get("should_update_logs"), property), (
        "Lightning removed _LoggerConnector.should_update_logs: update vae_zoo.lightning_compat"
    )


def test_lightning_writes_step_logs_predicts_exactly_the_rows_lightning_writes(tmp_path) -> None:
    model = _Recorder()
    data = DataLoader(TensorDataset(torch.randn(22, 2)), batch_size=2)  # 11 batches an epoch
    trainer = quiet_trainer(max_epochs=2, log_every_n_steps=4,
                            logger=CSVLogger(tmp_path, name="", version=""))
    trainer.fit(model, data)
    with (tmp_path / "metrics.csv").open() as f:
        written = [int(row["step"]) for row in csv.DictReader(f)]
    assert model.predicted == written
    assert written != list(range(22))  # not every step: the prediction is not trivially true
