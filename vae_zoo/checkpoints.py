"""Checkpoint files: written atomically, and checked for the model class that wrote them.

Checkpoints written through the CLI store the model's ``_class_path`` in their
hyper-parameters; loading one with another variant would otherwise fail deep inside
jsonargparse or Lightning with an unrelated-looking message.
"""

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vae_zoo.errors import CheckpointMismatchError
from vae_zoo.runs import checkpoint_meta


def checkpoint_hparams(path: str | Path) -> dict[str, Any]:
    """The ``hyper_parameters`` of a checkpoint file ({} when it has none)."""
    return checkpoint_meta(path)[0]


def variant_of(class_path: str) -> str:
    """The registry name (``vae``, ``beta_vae``, ``cvae``) of a model class path, else its name."""
    from vae_zoo.models import VARIANTS

    for name, cls in VARIANTS.items():
        if class_path in (f"{cls.__module__}.{cls.__name__}", f"vae_zoo.models.{cls.__name__}"):
            return name
    return class_path.rpartition(".")[2]


def class_from_path(class_path: str) -> type | None:
    """The class a dotted path names, or None when it cannot be imported."""
    import importlib

    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def check_checkpoint_class(path: str | Path, expected: type) -> type | None:
    """The class that wrote checkpoint ``path``; CheckpointMismatchError if not an ``expected``.

    Returns ``expected`` or the subclass of it named in the checkpoint. Checkpoints without a
    ``_class_path`` (written without the CLI), file objects and paths that are not local files
    are left to Lightning (None).
    """
    if not isinstance(path, (str, os.PathLike)) or not Path(path).is_file():
        return None
    class_path = checkpoint_hparams(path).get("_class_path")
    if not class_path:
        return None
    written_by = class_from_path(str(class_path))
    if isinstance(written_by, type) and issubclass(written_by, expected):
        return written_by
    variant = variant_of(str(class_path))
    raise CheckpointMismatchError(
        f"{path} was written by {class_path} (variant '{variant}'), not by "
        f"{expected.__name__}; load it with {class_path.rpartition('.')[2]}.load_from_checkpoint"
        " or BaseVAE.load_from_checkpoint"
    )


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
