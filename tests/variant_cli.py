"""A variant end to end through the CLI on the tiny data: fit, resume, evaluate, compare, sample.

:func:`fit_and_resume` trains a shipped experiment for 2 steps, resumes it from
``--ckpt_path last`` for 2 more, and checks that the resumed run starts from exactly the
checkpoint's state: the global step, every tensor of the model's ``state_dict`` (buffers and
parameters such as pseudo-inputs), and every optimizer's state (Adam's moments and step
counts). :func:`evaluate_everywhere` runs validate, test, predict, compare and sample on the run
and checks which terms are logged where; :func:`check_end_to_end` is the two in one, and
:func:`check_bf16_mixed` fits under bf16-mixed autocast. Call ``enter_workdir`` first.
"""

import copy
import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from cli_support import TINY, config, run
from lightning.pytorch.callbacks import Callback

from vae_zoo.cli import VAEZooCLI
from vae_zoo.evaluation import compare, sample


class RecordStart(Callback):
    """Keeps a copy of the model's and optimizers' state when training starts (after a restore)."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.state: dict[str, torch.Tensor] = {}
        self.optimizers: list[dict[str, Any]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.step = trainer.global_step
        self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.optimizers = [copy.deepcopy(o.state_dict()) for o in trainer.optimizers]


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Exact equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu()), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, set(a) ^ set(b))
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


@dataclass
class Resumed:
    """A run fitted 2 steps and resumed to 4: its folder, the step-2 checkpoint, and the state
    at the start of the first and of the resumed fit."""

    run_dir: Path
    ckpt: dict[str, Any]
    initial: RecordStart
    resumed: RecordStart

    def changed(self) -> list[str]:
        """The state_dict entries the first 2 steps changed."""
        initial = self.initial.state
        return [k for k, v in self.ckpt["state_dict"].items() if not torch.equal(v, initial[k])]


def fit_and_resume(
    variant: str, *extra: str, dataset: str = "mnist", steps_per_batch: int = 1
) -> Resumed:
    """Fit ``configs/<dataset>/<variant>.yaml`` 2 batches, resume to 4, check the restored state.

    ``steps_per_batch`` is the global steps one batch counts (2 with a second optimizer under
    manual optimisation: Lightning counts each optimizer step).
    """
    args = ["--config", config(dataset, variant), *TINY, "--trainer.log_every_n_steps=1", *extra]
    first = RecordStart()
    VAEZooCLI(args=["fit", *args], trainer_defaults={"callbacks": [first]})
    run_dir = Path("runs", dataset, variant, "version_0")
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2 * steps_per_batch
    for state in ckpt["optimizer_states"]:
        assert state["state"], "every optimizer has stepped and has state to restore"

    resumed = RecordStart()
    VAEZooCLI(
        args=["fit", *args, "--trainer.max_epochs=2", "--ckpt_path", "last"],
        trainer_defaults={"callbacks": [resumed]},
    )
    assert not Path("runs", dataset, variant, "version_1").exists()  # resumed in place
    assert resumed.step == 2 * steps_per_batch
    assert_same(resumed.state, dict(ckpt["state_dict"]), "state_dict")
    assert_same(resumed.optimizers, list(ckpt["optimizer_states"]), "optimizer_states")
    after = torch.load(last, map_location="cpu", weights_only=False)
    assert after["global_step"] == 4 * steps_per_batch
    result = Resumed(run_dir, ckpt, first, resumed)
    # the checkpoint holds trained values, not the initial ones: the check above has teeth
    assert result.changed()
    return result


def metrics_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a metrics.csv."""
    with path.open() as f:
        return list(csv.DictReader(f))


def logged(path: Path) -> dict[str, list[str]]:
    """Every non-empty value of every column of a metrics.csv."""
    columns: dict[str, list[str]] = {}
    for row in metrics_rows(path):
        for key, value in row.items():
            if value:
                columns.setdefault(key, []).append(value)
    return columns


def evaluate_everywhere(
    run_dir: Path,
    terms: tuple[str, ...],
    absent: tuple[str, ...] = (),
    tested: tuple[str, ...] = ("nll", "elbo"),
    out: Path | None = None,
) -> tuple[dict[str, Any], str]:
    """validate, test, predict, compare and sample a fitted run; its compare row and table.

    Every name in ``terms`` must be logged under train/ (step and epoch), val/ and test/, and
    be a column of compare's table; ``tested`` must be in test/ too; ``absent`` nowhere (a
    metric that does not apply to the variant).
    """
    columns = logged(run_dir / "metrics.csv")
    for term in terms:
        for key in (f"train/{term}", f"train/{term}_epoch", f"val/{term}"):
            assert key in columns, key
    for term in absent:
        assert not [k for k in columns if k.split("/")[-1] in (term, f"{term}_epoch")], term
    best = str(run_dir / "checkpoints" / "best.ckpt")
    assert run("validate", "--ckpt_path", best, *TINY) == 0
    assert run("test", "--ckpt_path", best, *TINY) == 0
    test_columns = logged(run_dir / "test" / "metrics.csv")
    for term in (*terms, *tested):
        assert f"test/{term}" in test_columns, term
    for term in absent:
        assert f"test/{term}" not in test_columns, term
    assert run("predict", "--ckpt_path", best, *TINY) == 0
    predictions = torch.load(run_dir / "predict" / "predictions.pt", weights_only=False)
    assert predictions["reconstruction"].shape[1:] == (1, 28, 28)

    out = out or run_dir.parent / "compare"
    argv = [str(run_dir), "--out", str(out), "--k", "3", "--n-test", "20", "--device", "cpu",
            "--classifier", "none"]
    assert compare.main(argv) == 0
    row = json.loads((out / "comparison.json").read_text())["runs"][0]
    assert row["variant"] == run_dir.parent.name
    for term in terms:
        assert row.get(term) is not None, term
    png = run_dir.parent / "samples.png"
    assert sample.main([str(run_dir), "--n", "16", "--out", str(png), "--device", "cpu"]) == 0
    assert png.is_file()
    return row, (out / "comparison.md").read_text()


def check_end_to_end(
    tmp_path: Path,
    name: str,
    terms: tuple[str, ...],
    absent: tuple[str, ...] = (),
    extra: tuple[str, ...] = (),
    dataset: str = "mnist",
) -> tuple[dict[str, Any], str]:
    """Fit, resume (state restored exactly) and evaluate variant ``name`` everywhere."""
    resumed = fit_and_resume(name, *extra, dataset=dataset)
    return evaluate_everywhere(resumed.run_dir, terms, absent, tested=(), out=tmp_path / "compare")


def check_bf16_mixed(name: str, terms: tuple[str, ...], dataset: str = "mnist") -> None:
    """Fit ``name`` under bf16-mixed autocast on the CPU: every logged train/val term finite."""
    args = ["--config", config(dataset, name), "--config", config("trainer", "cpu"),
            "--config", config("trainer", "bf16-mixed"), *TINY, "--trainer.log_every_n_steps=1"]
    assert run("fit", *args) == 0
    columns = logged(Path("runs", dataset, name, "version_0", "metrics.csv"))
    for term in ("loss", *terms):
        for key in (f"train/{term}", f"val/{term}"):
            assert key in columns and all(math.isfinite(float(v)) for v in columns[key]), key
