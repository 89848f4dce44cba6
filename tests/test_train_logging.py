"""Train scalars are logged only on the steps Lightning writes, with the same rows as every step."""

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset
from trainers import quiet_trainer

from vae_zoo.models import VAE

TINY = {"latent_dim": 2, "image_shape": (1, 4, 4), "val_k": 0}
TRAIN_KEYS = ("train/loss", "train/elbo", "train/recon", "train/kl", "train/kl_weight")


class EveryStepVAE(VAE):
    """The reference: logs every train scalar on every step, and lets Lightning average them
    over the epoch (the straightforward way)."""

    def training_step(self, batch, batch_idx):
        x, y = self.unpack(batch)
        terms = self.elbo(x, y)
        loss = terms["loss"].mean()
        self.log_dict({f"train/{k}": v.mean() for k, v in terms.items()}, prog_bar=False)
        self.log_dict({f"train/{k}_epoch": v.mean() for k, v in terms.items()},
                      on_step=False, on_epoch=True, batch_size=len(x))
        self.log("train/kl_weight", self.kl_weight)
        return loss

    def on_train_epoch_end(self) -> None:
        pass  # Lightning reduces the reference's epoch means


def _fit(cls: type[VAE], root: Path, **trainer_kwargs) -> tuple[list[dict], dict]:
    L.seed_everything(0, verbose=False)
    model = cls(**TINY)
    data = TensorDataset(torch.bernoulli(torch.full((40, 1, 4, 4), 0.4)), torch.zeros(40).long())
    trainer = quiet_trainer(
        logger=CSVLogger(root, name="", version=""), default_root_dir=root, **trainer_kwargs
    )
    trainer.fit(model, DataLoader(data, batch_size=4, shuffle=True))
    with open(root / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    callback = {k: v.item() for k, v in trainer.callback_metrics.items()}
    return rows, callback


def _exact(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("_epoch")} for r in rows]


def _epoch_means(rows: list[dict]) -> list[float]:
    return [float(v) for r in rows for k, v in sorted(r.items()) if k.endswith("_epoch") and v]


@pytest.mark.parametrize(
    "trainer_kwargs",
    [
        {"max_epochs": 2, "log_every_n_steps": 3},  # 10 batches/epoch: not a multiple of 3
        {"max_steps": 7, "log_every_n_steps": 3},  # stops mid-epoch
        {"max_epochs": 1, "log_every_n_steps": 1},
    ],
)
def test_logged_rows_match_logging_every_step(tmp_path, trainer_kwargs) -> None:
    rows, callback = _fit(VAE, tmp_path / "fast", **trainer_kwargs)
    ref_rows, ref_callback = _fit(EveryStepVAE, tmp_path / "ref", **trainer_kwargs)
    # the same rows; epoch means agree to float32 rounding (one reduction over the held steps
    # here, a running sum per step in Lightning's)
    assert _exact(rows) == _exact(ref_rows)
    assert _epoch_means(rows) == pytest.approx(_epoch_means(ref_rows), rel=1e-6)
    every = trainer_kwargs["log_every_n_steps"]
    step_rows = [r for r in rows if r["train/loss"]]
    assert [int(r["step"]) for r in step_rows] == [
        s for s in range(int(rows[-1]["step"]) + 1) if (s + 1) % every == 0
    ]
    epoch_rows = [r for r in rows if r["train/loss_epoch"]]
    assert len(epoch_rows) == int(rows[-1]["epoch"]) + 1
    # after fit, callback_metrics hold the last step's values, as when logging every step,
    # and the epoch means (torchmetrics here, Lightning's own reduction in the reference)
    assert set(TRAIN_KEYS) <= set(callback)
    assert {f"{k}_epoch" for k in TRAIN_KEYS if k != "train/kl_weight"} <= set(callback)
    assert callback == pytest.approx(ref_callback)
