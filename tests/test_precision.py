"""Mixed precision through ``fit``: autocast really runs, the loss stays finite and float32."""

import csv
import math
from pathlib import Path

import pytest
import torch
from cli_support import TINY, config, enter_workdir
from lightning.pytorch.callbacks import Callback

from vae_zoo.cli import VAEZooCLI
from vae_zoo.runs import RUN_DIR_ENV

HAS_CUDA = torch.cuda.is_available()
CASES = {
    # precision: (trainer config piece, the dtype autocast gives the decoder's matmuls)
    "32-true": ("cpu", torch.float32),
    "bf16-mixed": ("cpu", torch.bfloat16),
    "16-mixed": ("gpu", torch.float16),
}


class RecordPrecision(Callback):
    """Records the decoder's output dtypes in training steps and every step's loss."""

    def __init__(self) -> None:
        self.decoder_dtypes: set[torch.dtype] = set()
        self.losses: list[torch.Tensor] = []
        self._in_step = False

    def on_train_start(self, trainer, pl_module) -> None:
        def hook(module, args, out) -> None:
            # callbacks (image grids) decode outside the precision context: skip those
            if self._in_step:
                self.decoder_dtypes.add(out.dtype)

        pl_module.decoder.register_forward_hook(hook)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._in_step = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._in_step = False
        self.losses.append(outputs["loss"].detach().cpu())


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> Path:
    """A fresh working directory that sees the tiny IDX data sets of ``cli_support``."""
    workdir = enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    # the CLI records its run dir in the environment; setting it here makes monkeypatch undo it
    monkeypatch.setenv(RUN_DIR_ENV, "")
    return workdir


@pytest.mark.usefixtures("workdir")
@pytest.mark.parametrize("precision", list(CASES))
def test_fit_in_precision(precision: str) -> None:
    piece, autocast_dtype = CASES[precision]
    if piece == "gpu" and not HAS_CUDA:
        pytest.skip("16-mixed (float16 autocast + gradient scaling) needs a CUDA GPU; "
                    "on a CPU Lightning substitutes bf16-mixed")
    record = RecordPrecision()
    args = ["fit", "--config", config("mnist", "vae"), "--config", config("trainer", piece)]
    if precision == "bf16-mixed":
        args += ["--config", config("trainer", "bf16-mixed")]  # the shipped piece
    else:
        args += [f"--trainer.precision={precision}"]
    args += TINY
    VAEZooCLI(args=args, trainer_defaults={"callbacks": [record]})

    assert record.decoder_dtypes == {autocast_dtype}
    assert len(record.losses) == 2  # limit_train_batches=2
    assert all(math.isfinite(loss.item()) for loss in record.losses)
    # the per-pixel log-likelihood sums stay float32 under autocast (binary_cross_entropy
    # _with_logits autocasts to float32), so the loss is not rounded to 8 mantissa bits
    assert {loss.dtype for loss in record.losses} == {torch.float32}
    run_dir = Path("runs/mnist/vae/version_0")
    ckpt = torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    # mixed precision keeps float32 master weights: the checkpoint loads anywhere
    assert {t.dtype for t in ckpt["state_dict"].values() if t.is_floating_point()} == {
        torch.float32
    }
    with open(run_dir / "metrics.csv", newline="") as f:
        val_loss = [float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")]
    assert len(val_loss) == 1 and math.isfinite(val_loss[0])
