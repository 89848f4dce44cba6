"""Checkpoint files: written atomically, and checked for the model class that wrote them.

Which model class wrote a checkpoint is the model layer's to say
(:func:`vae_zoo.models.base.checkpoint_class`, the registry); this module reads metadata
without building a model and writes files atomically.
"""

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vae_zoo.models.registry import variant_name
from vae_zoo.runs import checkpoint_meta


def checkpoint_hparams(path: str | Path) -> dict[str, Any]:
    """The ``hyper_parameters`` of a checkpoint file ({} when it has none)."""
    return checkpoint_meta(path)[0]


def variant_of(class_path: str) -> str:
    """The registry name (``vae``, ``beta_vae``, ``cvae``...) of a model class path."""
    return variant_name(class_path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a hidden file beside its target, then rename it into place.

    Lightning's own writer stages the file in the system temp folder and moves it over, which
    is a plain copy when that folder is on another file system (tmpfs): a kill during the copy
    would leave a truncated ``last.ckpt``. A rename within one folder is atomic, so a reader
    sees the old checkpoint or the new one, never half of one. Remote paths go to Lightning.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        """Save ``checkpoint`` to ``path`` atomically (local files) or as Lightning does."""
        if storage_options is not None or "://" in str(path):  # fsspec URLs (s3://...)
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f".{target.name}.part")
        try:
            with part.open("wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
