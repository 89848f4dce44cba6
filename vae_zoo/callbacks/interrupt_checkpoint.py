"""A checkpoint on Ctrl-C or SIGTERM, so an interrupted run can be resumed where it stopped."""

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info


class InterruptCheckpoint(Callback):
    """On Ctrl-C or SIGTERM during ``fit``, save ``<dirpath>/last.ckpt`` to resume from.

    Lightning stops a SIGTERM-ed run after the current batch and a Ctrl-C-ed one at once;
    both reach ``on_exception``. Other exceptions (e.g. a NaN loss) leave the last good
    ``last.ckpt`` alone (:class:`~vae_zoo.callbacks.LastCheckpoint` keeps it at the newest
    epoch end). With :class:`~vae_zoo.checkpoints.AtomicCheckpointIO` (the CLI's writer) a
    kill during the save leaves the previous file intact.

    Args:
        dirpath: the checkpoint folder (the CLI sets ``<run_dir>/checkpoints``).
        filename: file name without ``.ckpt``.
    """

    def __init__(self, dirpath: str | Path, filename: str = "last") -> None:
        self.dirpath = Path(dirpath)
        self.filename = filename

    @property
    def ckpt_path(self) -> Path:
        """Where the checkpoint is written."""
        return self.dirpath / f"{self.filename}.ckpt"

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Save a checkpoint when the run was interrupted rather than failed."""
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        if trainer.state.fn != TrainerFn.FITTING:
            return
        trainer.save_checkpoint(self.ckpt_path, weights_only=False)
        rank_zero_info(
            f"interrupted at global step {trainer.global_step}; saved {self.ckpt_path} "
            "(resume with --ckpt_path last)"
        )
