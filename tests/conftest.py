"""Generic fixtures shared by the whole test suite; keep this file small."""

from pathlib import Path

import pytest
import torch
from cli_support import enter_workdir

# The tests use tiny tensors on a small shared machine: extra intra-op threads only contend
# for the cores (a 2-thread run of the suite was ~3x slower than a 1-thread run under load).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Every test starts from the same torch RNG state, so random inputs are reproducible."""
    torch.manual_seed(0)


@pytest.fixture
def binary_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A tiny (x, y) batch: 8 random binary 1x28x28 images and int64 labels 0..9."""
    x = torch.bernoulli(torch.full((8, 1, 28, 28), 0.3))
    y = torch.arange(8, dtype=torch.long) % 10
    return x, y


@pytest.fixture(autouse=True)
def _fresh_wandb():
    """W&B keeps process-wide state (its settings, a service process) between runs in one
    process: end it after a test that used W&B, so the next one starts as a new process would."""
    yield
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and hasattr(wandb, "teardown"):
        wandb.teardown()


@pytest.fixture
def workdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A fresh working directory with the tiny data sets."""
    return enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
