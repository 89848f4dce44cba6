"""Helpers of the CLI tests: tiny IDX data sets, in-process runs, interrupting callbacks.

Run as a script (``python tests/cli_support.py <command> ...``) it is ``python -m vae_zoo``
with the checksums of the tiny data sets taken from ``$VAE_ZOO_TEST_CHECKSUMS`` (JSON): a
subprocess sees the test's data as an in-process run does.
"""

import contextlib
import functools
import io
import json
import os
import signal
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from vae_zoo.cli import main
from vae_zoo.data import CHECKSUMS
from vae_zoo.data.checksums import (
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    sha256_hex,
)
from vae_zoo.data.idx import encode_idx, write_idx
from vae_zoo.runs import RUN_DIR_ENV

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
N_TRAIN, N_TEST, VAL_SIZE = 120, 40, 40

#: a few batches of everything: every command finishes in seconds on a CPU
TINY = [
    f"--data.val_size={VAL_SIZE}",
    "--data.batch_size=16",
    "--data.eval_batch_size=20",
    "--data.download=false",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.limit_predict_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--model.init_args.val_k=2",
    "--model.init_args.test_k=2",
]


def write_dataset(
    folder: Path, seed: int, n_train: int = N_TRAIN, n_test: int = N_TEST
) -> dict[str, str]:
    """IDX files of 28x28 images (class k: a bright bar at row 2k); returns their checksums."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    sums = {}
    splits = ((TRAIN_IMAGES, TRAIN_LABELS, n_train), (TEST_IMAGES, TEST_LABELS, n_test))
    for images, labels, n in splits:
        y = torch.arange(n) % 10
        x = torch.rand(n, 28, 28, generator=gen) * 60
        for k in range(10):
            x[y == k, 2 + 2 * k : 5 + 2 * k, 4:24] += 190
        for name, tensor in ((images, x.to(torch.uint8)), (labels, y.to(torch.uint8))):
            write_idx(folder / name, tensor)
            sums[name] = sha256_hex(encode_idx(tensor))
    return sums


_TINY_DATA: list[tuple[Path, dict[str, dict[str, str]]]] = []


def tiny_data(factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, str]]]:
    """A data folder with tiny mnist/ and fashion-mnist/ IDX files (made once per session)."""
    if not _TINY_DATA:
        root = factory.mktemp("tiny_data")
        sums = {
            "mnist": write_dataset(root / "mnist", 0),
            "fashion_mnist": write_dataset(root / "fashion-mnist", 1),
        }
        _TINY_DATA.append((root, sums))
    return _TINY_DATA[0]


def enter_workdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, factory: pytest.TempPathFactory
) -> Path:
    """Make ``tmp_path`` the working directory (``runs/`` lands there), seeing the tiny data."""
    root, sums = tiny_data(factory)
    for name, table in sums.items():
        monkeypatch.setitem(CHECKSUMS, name, table)
    monkeypatch.setenv("VAE_ZOO_DATA", str(root))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    # no classifier from the user's cache: `test` computes fid_clf only with one the test puts here
    monkeypatch.setenv("VAE_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def config(*parts: str) -> str:
    """Path of a shipped config file, e.g. ``config("mnist", "vae")``."""
    return str(CONFIGS.joinpath(*parts[:-1], parts[-1] + ".yaml"))


CHECKSUMS_ENV = "VAE_ZOO_TEST_CHECKSUMS"


def run(*args: str) -> int:
    """``python -m vae_zoo <args>`` in this process."""
    return main(list(args))


def resolved(*args: str) -> dict:
    """What ``fit <args> --print_config`` prints, as a dictionary (a fresh one at every call).

    Cached: only for arguments whose meaning does not depend on the working directory (absolute
    paths, shipped config names where no ./configs exists).
    """
    return yaml.safe_load(_printed_config(*args))


@functools.cache
def _printed_config(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run("fit", *args, "--print_config") == 0
    return out.getvalue()
def subprocess_env(factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for ``python tests/cli_support.py ...``: this checkout, the tiny data."""
    root, sums = tiny_data(factory)
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", RUN_DIR_ENV)}
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        VAE_ZOO_DATA=str(root),
        WANDB_MODE="disabled",
        **{CHECKSUMS_ENV: json.dumps(sums)},
    )
    return env


class StopAt(Callback):
    """Test callback: interrupt training after ``step`` optimizer steps (SIGTERM or Ctrl-C)."""

    def __init__(self, step: int = 2, how: str = "sigterm") -> None:
        self.step = step
        self.how = how

    def on_train_batch_end(self, trainer: L.Trainer, *args: object, **kwargs: object) -> None:
        """Send the interruption once the step count is reached."""
        if trainer.global_step != self.step:
            return
        if self.how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning stops after this batch
        else:
            raise KeyboardInterrupt


class PauseAt(Callback):
    """Test callback: at global step ``step`` create ``marker`` and hang (until killed)."""

    def __init__(self, step: int, marker: str) -> None:
        self.step = step
        self.marker = marker

    def on_train_batch_end(self, trainer: L.Trainer, *args: object, **kwargs: object) -> None:
        """Hang once the step is reached, after saying so through the marker file."""
        if trainer.global_step == self.step:
            Path(self.marker).touch()
            time.sleep(600)


if __name__ == "__main__":
    CHECKSUMS.update(json.loads(os.environ[CHECKSUMS_ENV]))
    sys.exit(main(sys.argv[1:]))


def step_of(path: Path) -> int:
    """The global step stored in a checkpoint."""
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]
