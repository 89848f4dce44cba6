"""Training throughput: ``train/images_per_sec`` once per epoch (on in every CLI ``fit``).

The clock runs from the start of an epoch's first training batch to the end of its last one,
so the validation that follows the epoch is not counted (data loading between batches is).
Across ranks the values add up: the logged number is the whole job's throughput.
``compare`` reads it back from ``metrics.csv``.
"""

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

METRIC = "train/images_per_sec"


class ImagesPerSecond(Callback):
    """Log training images per second of wall time for every epoch as ``train/images_per_sec``."""

    def __init__(self) -> None:
        self._start: float | None = None
        self._end: float | None = None
        self._images = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Reset the epoch's clock and image count."""
        self._start = self._end = None
        self._images = 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Start the clock at the epoch's first batch."""
        if self._start is None:
            _sync(pl_module)
            self._start = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Count the batch's images; stop the clock (after the device finished) at the last one."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        self._images += int(x.shape[0])
        if batch_idx + 1 >= trainer.num_training_batches:
            _sync(pl_module)
        self._end = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log images / seconds of this epoch, summed over ranks."""
        if self._start is None or self._end is None or self._end <= self._start:
            return
        rate = self._images / (self._end - self._start)
        pl_module.log(
            METRIC, rate, on_step=False, on_epoch=True, reduce_fx="sum", sync_dist=True
        )


def _sync(module: L.LightningModule) -> None:
    # kernels run asynchronously on a GPU: wait for them, or the clock measures only the launch
    if module.device.type == "cuda":
        torch.cuda.synchronize(module.device)
