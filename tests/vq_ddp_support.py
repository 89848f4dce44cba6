"""Helpers of the VQ-VAE's distributed tests, light to import in a spawned process.

``ddp_ema_worker`` runs one rank of a two-process gloo group through one codebook update;
``SaveCodebook`` is a callback with which every rank of a DDP fit saves its codebook.
"""

from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from vae_zoo.models.vq_vae import Codebook


def codebook_of_five(restart_below: float = 1.0) -> Codebook:
    """Codes at the corners of the unit square and one far away at (9, 9), never chosen."""
    book = Codebook(5, 2, "ema", decay=0.5, restart_below=restart_below)
    with torch.no_grad():
        corners = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [9.0, 9.0]]
        book.embedding.copy_(torch.tensor(corners))
        book.ema_sum.copy_(book.embedding)
    return book


def ddp_ema_worker(rank: int, folder: str, data: Tensor) -> None:
    """Rank ``rank`` of 2: its half of ``data`` through one update (step 5); saves the state."""
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2
    )
    try:
        book = codebook_of_five()
        z_e = data[rank * 3 : rank * 3 + 3]
        book.update(z_e, book.nearest(z_e), step=5)
        torch.save(book.state_dict(), f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


class SaveCodebook(Callback):
    """Write ``<folder>/codebook_rank<r>.pt``, the codebook buffers rank r holds at the end."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save this rank's codebook state dict."""
        state = {k: v.detach().cpu() for k, v in pl_module.codebook.state_dict().items()}
        torch.save(state, self.folder / f"codebook_rank{trainer.global_rank}.pt")
