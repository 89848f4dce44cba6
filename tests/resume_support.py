"""Resume checks for variants with extra state: what the trainer holds when training restarts.

``fit_then_resume`` trains one epoch through the CLI, keeps a copy of ``last.ckpt``, resumes
with ``--ckpt_path last`` and records, at ``on_train_start`` of the resumed run (after Lightning
restored everything), the weights and buffers and the state of EVERY optimizer; then it
checks they equal the checkpoint's exactly and that the run continued from its global step.
"""

import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from cli_support import TINY, run
from lightning.pytorch.callbacks import Callback


class RecordRestored(Callback):
    """Save the model's state dict and every optimizer's state dict when training starts."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Everything restored from a checkpoint is in place by now."""
        torch.save(
            {
                "global_step": trainer.global_step,
                "state_dict": pl_module.state_dict(),
                "optimizer_states": [opt.state_dict() for opt in trainer.optimizers],
            },
            self.path,
        )


def assert_equal_states(a: Any, b: Any, where: str = "") -> None:
    """Nested dicts/lists of tensors and numbers are exactly equal (same keys, same values)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, where
        assert torch.equal(a.cpu(), b.cpu()), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, set(a) ^ set(b))
        for key in a:
            assert_equal_states(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_equal_states(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def fit_then_resume(
    run_dir: Path, args: list[str], n_optimizers: int, steps_per_batch: int = 1
) -> dict[str, Any]:
    """Fit one epoch of 3 batches, resume for a second, check the restored state; return it.

    ``args`` select the experiment (``--config ...``); the working directory holds the tiny
    data (see ``cli_support.enter_workdir``). Returns the checkpoint the resume started from.
    """
    common = [*args, *TINY, "--trainer.limit_train_batches=3"]
    assert run("fit", *common) == 0
    first = run_dir / "checkpoints" / "last.ckpt"
    saved = run_dir.parent / "first_last.ckpt"
    shutil.copy(first, saved)
    ckpt = torch.load(saved, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3 * steps_per_batch
    assert len(ckpt["optimizer_states"]) == n_optimizers
    for state in ckpt["optimizer_states"]:
        assert state["state"], "every optimizer has stepped and has state to restore"

    record = run_dir.parent / "restored.pt"
    callback = (
        '--trainer.callbacks=[{"class_path": "resume_support.RecordRestored",'
        f' "init_args": {{"path": "{record}"}}}}]'
    )
    assert run("fit", *common, "--trainer.max_epochs=2", "--ckpt_path", "last", callback) == 0
    restored = torch.load(record, map_location="cpu", weights_only=False)
    assert restored["global_step"] == ckpt["global_step"]
    assert_equal_states(restored["state_dict"], ckpt["state_dict"], "state_dict")
    assert_equal_states(restored["optimizer_states"], ckpt["optimizer_states"], "optimizers")
    resumed = torch.load(first, map_location="cpu", weights_only=False)
    assert resumed["global_step"] == 2 * ckpt["global_step"]  # the second epoch, same batches
    return ckpt
