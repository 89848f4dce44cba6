"""Image grids of reconstructions and prior samples, saved as PNG and sent to the loggers."""

import contextlib
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torchvision.utils import make_grid, save_image


class ImageGridLogger(Callback):
    """Every ``every_n_epochs`` validation epochs, save and log two image grids.

    * ``epoch_XXX_recon.png``: ``num_images`` fixed validation images (top row) above their
      reconstructions, the means of p(x|z=mu) (bottom row);
    * ``epoch_XXX_samples.png``: decoded prior samples, the same z every epoch; for a
      conditional model one row per class;
    * for a 2-D latent space, ``epoch_XXX_{latents,manifold,interpolations}.png``: the posterior
      means of ``latent_points`` fixed validation images coloured by label, the decoded
      manifold, and interpolations between pairs of those images (see
      :func:`vae_zoo.evaluation.latent_figures.latent_panels`), to watch the clusters form.

    The PNGs go to ``dirpath`` (default ``<run_dir>/images``) and to every logger that can take
    images (W&B ``log_image``, TensorBoard ``add_image``); the others are skipped. Grids are
    computed on every rank (sharded models need all of them) and written by rank 0 only.

    Args:
        every_n_epochs: period in epochs; 0 turns the callback off.
        num_images: validation images in the reconstruction grid.
        num_samples: prior samples of an unconditional model (shown 8 per row).
        samples_per_class: samples per class row of a conditional model.
        seed: seed of the fixed prior draws.
        dirpath: folder of the PNG files (None: ``images`` in the run directory).
        latent_points: validation images in the latent scatter (2-D latents; 0: no latent grids).
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_images: int = 8,
        num_samples: int = 64,
        samples_per_class: int = 8,
        seed: int = 0,
        dirpath: str | None = None,
        latent_points: int = 1000,
    ) -> None:
        if every_n_epochs < 0 or num_images < 1 or num_samples < 1 or samples_per_class < 1:
            raise ValueError(
                "ImageGridLogger needs every_n_epochs >= 0 and num_images, num_samples, "
                "samples_per_class >= 1"
            )
        if latent_points < 0:
            raise ValueError(f"ImageGridLogger needs latent_points >= 0, got {latent_points}")
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.num_samples = num_samples
        self.samples_per_class = samples_per_class
        self.seed = seed
        self.dirpath = dirpath
        self.latent_points = latent_points
        self._fixed: tuple[Tensor, Tensor | None] | None = None
        self._latent: list[tuple[Tensor, Tensor | None]] = []  # consecutive validation batches

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep the first validation images seen, so every epoch shows the same ones."""
        if dataloader_idx != 0:
            return
        x, y = pl_module.unpack(batch)
        if self._fixed is None and batch_idx == 0:
            n = min(self.num_images, x.shape[0])
            self._fixed = (x[:n].detach().clone(), None if y is None else y[:n].detach().clone())
        # batch_idx == len(self._latent): batches 0, 1, 2, ... once each, across the sanity check
        kept = sum(len(b[0]) for b in self._latent)
        next_batch = batch_idx == len(self._latent)
        if next_batch and kept < self.latent_points and self._wants_latents(pl_module):
            self._latent.append((x.detach().cpu(), None if y is None else y.detach().cpu()))

    def _wants_latents(self, model: Any) -> bool:
        return self.latent_points > 0 and getattr(model, "latent_dim", None) == 2

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Build, save and log the grids at the end of every ``every_n_epochs``-th epoch."""
        if (
            self.every_n_epochs == 0
            or trainer.sanity_checking
            or trainer.state.fn != TrainerFn.FITTING
            or self._fixed is None
            or (trainer.current_epoch + 1) % self.every_n_epochs
        ):
            return
        with _full_parameters(trainer):
            grids = {
                "recon": self.reconstruction_grid(pl_module),
                "samples": self.sample_grid(pl_module),
            }
            if self._latent and self._wants_latents(pl_module):
                grids.update(self.latent_grids(pl_module, trainer))
        if not trainer.is_global_zero:
            return
        folder = Path(self.dirpath or Path(trainer.default_root_dir) / "images")
        folder.mkdir(parents=True, exist_ok=True)
        for kind, grid in grids.items():
            save_image(grid, folder / f"epoch_{trainer.current_epoch:03d}_{kind}.png")
            for logger in trainer.loggers:
                _log_image(logger, f"images/{kind}", grid, trainer.global_step)

    @torch.no_grad()
    def reconstruction_grid(self, model: Any) -> Tensor:
        """Inputs (top row) and reconstructions E[x|z=mu] (bottom row) of the fixed images."""
        assert self._fixed is not None
        x, y = (t.to(model.device) if t is not None else None for t in self._fixed)
        recon = model.reconstruct(x.to(model.dtype), y)  # bf16-true models hold bf16 weights
        pair = torch.cat([x.to(recon.dtype), recon]).float().cpu()
        return make_grid(pair, nrow=x.shape[0], pad_value=1.0)

    def latent_grids(self, model: Any, trainer: L.Trainer) -> dict[str, Tensor]:
        """Scatter, manifold and interpolation images of the kept validation images."""
        from vae_zoo.evaluation.latent_figures import latent_panels

        x = torch.cat([b[0] for b in self._latent])[: self.latent_points]
        labels = [b[1] for b in self._latent]
        y = None if any(t is None for t in labels) else torch.cat(labels)[: self.latent_points]
        names = getattr(trainer.datamodule, "class_names", None)
        name = f"epoch {trainer.current_epoch}"
        panels = latent_panels(name, model, x, y, names, seed=self.seed)
        return {kind: panel.image for kind, panel in panels.items()}

    @torch.no_grad()
    def sample_grid(self, model: Any) -> Tensor:
        """Prior samples from a fixed seed; one row per class for conditional models."""
        devices = [model.device] if model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            num_classes = model.num_classes
            if num_classes:
                labels = torch.arange(num_classes, device=model.device)
                labels = labels.repeat_interleave(self.samples_per_class)
                images, nrow = model.sample(len(labels), labels), self.samples_per_class
            else:
                images, nrow = model.sample(self.num_samples), 8
        return make_grid(images.float().cpu(), nrow=nrow, pad_value=1.0)


def _full_parameters(trainer: L.Trainer) -> contextlib.AbstractContextManager:
    """Outside its forward an FSDP model holds only shards; gather them (on every rank)."""
    if isinstance(trainer.strategy, FSDPStrategy):
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel.summon_full_params(trainer.strategy.model, writeback=False)
    return contextlib.nullcontext()


def to_uint8_hwc(grid: Tensor) -> np.ndarray:
    """A [C, H, W] grid in [0, 1] as the uint8 [H, W, C] array a PNG of it holds.

    Rounded as ``torchvision.utils.save_image`` rounds, so the logged image equals the local PNG.
    """
    pixels = grid.detach().float().cpu().mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
    return pixels.permute(1, 2, 0).numpy()


def _log_image(logger: Any, key: str, grid: Tensor, step: int) -> None:
    """Send one image to a logger that can take images; others are skipped."""
    if hasattr(logger, "log_image"):
        # W&B (0.31) casts a float array with astype(uint8): [0, 1] floats become all black.
        logger.log_image(key=key, images=[to_uint8_hwc(grid)], step=step)
    elif hasattr(getattr(logger, "experiment", None), "add_image"):
        logger.experiment.add_image(key, grid, step)  # TensorBoard takes [0, 1] floats
