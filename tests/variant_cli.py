"""A variant end to end through the CLI: fit, resume, validate, test, predict, compare, sample.

Shared by the tests of the InfoVAE, WAE and beta-TCVAE variants. :func:`check_end_to_end`
runs every command on the tiny IDX data of ``cli_support`` (call ``enter_workdir`` first)
and returns the variant's ``compare`` row and table; :class:`CheckRestored` checks, at the start
of a resumed fit, that the model (parameters and buffers) and every optimizer state equal the
checkpoint's; :func:`check_bf16_mixed` fits under bf16-mixed autocast.
"""

import csv
import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from cli_support import TINY, config, run
from lightning.pytorch.callbacks import Callback

from vae_zoo.evaluation import compare, sample


def _assert_same(restored: Any, saved: Any, where: str) -> None:
    """Tensors equal exactly (values and dtype), containers recursively, other values equal."""
    if isinstance(saved, torch.Tensor):
        assert isinstance(restored, torch.Tensor), where
        assert restored.dtype == saved.dtype and torch.equal(restored.cpu(), saved.cpu()), where
    elif isinstance(saved, dict):
        assert set(restored) == set(saved), where
        for key, value in saved.items():
            _assert_same(restored[key], value, f"{where}.{key}")
    elif isinstance(saved, (list, tuple)):
        assert len(restored) == len(saved), where
        for i, (a, b) in enumerate(zip(restored, saved, strict=True)):
            _assert_same(a, b, f"{where}[{i}]")
    else:
        assert restored == saved, where


class CheckRestored(Callback):
    """Test callback: at the resumed fit's start, the state equals the checkpoint's; records it."""

    def __init__(self, ckpt: str) -> None:
        self.ckpt = ckpt

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Compare parameters, buffers, optimizer states and the global step with the file."""
        saved = torch.load(self.ckpt, map_location="cpu", weights_only=False)
        _assert_same(pl_module.state_dict(), saved["state_dict"], "state_dict")
        restored = [opt.state_dict() for opt in trainer.optimizers]
        _assert_same(restored, saved["optimizer_states"], "optimizer_states")
        assert trainer.global_step == saved["global_step"]
        buffers = sorted(name for name, _ in pl_module.named_buffers())
        Path(self.ckpt).with_suffix(".restored.json").write_text(
            json.dumps({"global_step": trainer.global_step, "buffers": buffers})
        )


def step_of(path: Path) -> int:
    """The global step stored in a checkpoint."""
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def logged(path: Path) -> dict[str, list[str]]:
    """Every non-empty value of every column of a metrics.csv."""
    with path.open() as f:
        rows = list(csv.DictReader(f))
    columns: dict[str, list[str]] = {}
    for row in rows:
        for key, value in row.items():
            if value:
                columns.setdefault(key, []).append(value)
    return columns


def check_end_to_end(
    tmp_path: Path,
    name: str,
    terms: tuple[str, ...],
    absent: tuple[str, ...] = (),
    extra: tuple[str, ...] = (),
    dataset: str = "mnist",
) -> tuple[dict[str, Any], str]:
    """Run every command on variant ``name``; returns its compare row and comparison.md.

    ``terms`` must be logged under train/ (step and epoch), val/ and test/; ``absent`` must be
    logged nowhere. The first fit takes 3 steps; ``--ckpt_path last`` resumes it to step 6 with
    its state restored exactly (:class:`CheckRestored`).
    """
    args = ["--config", config(dataset, name), *TINY, "--trainer.limit_train_batches=3",
            "--trainer.log_every_n_steps=1", *extra]
    assert run("fit", *args) == 0
    run_dir = Path("runs", dataset, name, "version_0")
    last = run_dir / "checkpoints" / "last.ckpt"
    assert step_of(last) == 3
    columns = logged(run_dir / "metrics.csv")
    for term in terms:
        for key in (f"train/{term}", f"train/{term}_epoch", f"val/{term}"):
            assert key in columns, key
    for term in absent:
        assert not [k for k in columns if k.split("/")[-1] in (term, f"{term}_epoch")], term

    # resume: same run folder, state restored exactly, global step continues
    check = (
        '--trainer.callbacks=[{"class_path": "variant_cli.CheckRestored", '
        f'"init_args": {{"ckpt": "{last}"}}}}]'
    )
    assert run("fit", *args, "--trainer.max_epochs=2", "--ckpt_path", "last", check) == 0
    record = json.loads(last.with_suffix(".restored.json").read_text())
    assert record["global_step"] == 3
    assert step_of(last) == 6
    assert not (run_dir.parent / "version_1").exists()

    best = str(run_dir / "checkpoints" / "best.ckpt")
    assert run("validate", "--ckpt_path", best, *TINY) == 0
    assert run("test", "--ckpt_path", best, *TINY) == 0
    tested = logged(run_dir / "test" / "metrics.csv")
    for term in terms:
        assert f"test/{term}" in tested, term
    for term in absent:
        assert f"test/{term}" not in tested, term
    assert run("predict", "--ckpt_path", best, *TINY) == 0
    predictions = torch.load(run_dir / "predict" / "predictions.pt")
    assert predictions["reconstruction"].shape[1:] == (1, 28, 28)

    out = tmp_path / "compare"
    assert compare.main([str(run_dir), "--out", str(out), "--k", "3", "--n-test", "20",
                         "--device", "cpu", "--classifier", "none"]) == 0
    row = json.loads((out / "comparison.json").read_text())["runs"][0]
    assert row["variant"] == name
    png = tmp_path / "samples" / f"{name}.png"
    assert sample.main([str(run_dir), "--n", "8", "--out", str(png), "--device", "cpu"]) == 0
    assert png.is_file()
    return row, (out / "comparison.md").read_text()


def check_bf16_mixed(name: str, terms: tuple[str, ...], dataset: str = "mnist") -> None:
    """Fit ``name`` under bf16-mixed autocast on the CPU: every logged train/val term finite."""
    args = ["--config", config(dataset, name), "--config", config("trainer", "cpu"),
            "--config", config("trainer", "bf16-mixed"), *TINY, "--trainer.log_every_n_steps=1"]
    assert run("fit", *args) == 0
    columns = logged(Path("runs", dataset, name, "version_0", "metrics.csv"))
    for term in ("loss", *terms):
        for key in (f"train/{term}", f"val/{term}"):
            assert key in columns and all(math.isfinite(float(v)) for v in columns[key]), key
