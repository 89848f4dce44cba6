"""Load any trained variant, with its data settings and logs, from a run folder or a .ckpt file.

A run folder holds ``checkpoints/best.ckpt`` / ``checkpoints/last.ckpt`` (or any ``*.ckpt``),
``config.yaml`` (the resolved CLI config, whose ``data`` section names the data set) and
``metrics.csv``. The model class comes from the record the model writes into every
checkpoint (see :func:`vae_zoo.models.base.class_of_checkpoint`); the variant's name from the
registry.
"""

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vae_zoo.errors import CheckpointMismatchError, ConfigError
from vae_zoo.likelihoods import Bernoulli, ContinuousBernoulli, Gaussian
from vae_zoo.models import BaseVAE, variant_name
from vae_zoo.models.base import class_of_checkpoint
from vae_zoo.runs import find_metrics_csv, read_checkpoint, read_config, resolve_checkpoint


@dataclass
class LoadedRun:
    """A trained model with everything known about the run that produced it."""

    source: Path
    ckpt_path: Path
    run_dir: Path | None
    model: BaseVAE
    variant: str
    data: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None
    global_step: int | None = None
    metrics_csv: Path | None = None
    name: str = ""

    @property
    def dataset(self) -> str | None:
        """The data set named by the run's data settings (None when the run does not say)."""
        return self.data.get("dataset")


def model_class(ckpt: dict[str, Any], path: Path) -> type[BaseVAE]:
    """The BaseVAE subclass that wrote a loaded checkpoint (as the checkpoint records it)."""
    cls = class_of_checkpoint(ckpt, path)
    if cls is None:
        raise CheckpointMismatchError(
            f"{path} does not say which variant wrote it (saved outside `python -m vae_zoo fit` "
            "by an older vae_zoo); load it in Python with <Variant>.load_from_checkpoint"
        )
    return cls


def likelihood_name(model: BaseVAE) -> str:
    """A short description of p(x|z), e.g. ``bernoulli`` or ``gaussian(learned, sigma=0.08)``."""
    lik = model.likelihood
    if isinstance(lik, ContinuousBernoulli):
        return "continuous_bernoulli"
    if isinstance(lik, Bernoulli):
        return "bernoulli"
    if isinstance(lik, Gaussian):
        if lik.variance == "per_pixel":
            return "gaussian(per_pixel)"
        sigma = math.exp(float(lik.log_sigma.clamp(lik.min_log_sigma, 0.0)))
        return f"gaussian({lik.variance}, sigma={sigma:.3g})"
    return type(lik).__name__.lower()


def data_settings(config: dict[str, Any], ckpt: dict[str, Any]) -> dict[str, Any]:
    """The data-module arguments of a run, from config.yaml or else from the checkpoint."""
    data = config.get("data")
    if isinstance(data, dict):
        return dict(data.get("init_args", data))
    hp = ckpt.get("datamodule_hyper_parameters")
    return dict(hp) if isinstance(hp, dict) else {}


def read_metrics_csv(path: Path | None) -> dict[str, list[tuple[float, float]]]:
    """Columns of a metrics.csv as ``{name: [(epoch, value), ...]}``, empty cells skipped."""
    if path is None:
        return {}
    columns: dict[str, list[tuple[float, float]]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            epoch = _float(row.get("epoch"))
            for name, cell in row.items():
                value = _float(cell)
                if name in (None, "epoch", "step") or value is None:
                    continue
                columns.setdefault(name, []).append((math.nan if epoch is None else epoch, value))
    return columns


def _float(cell: str | None) -> float | None:
    try:
        return float(cell) if cell not in (None, "") else None
    except ValueError:
        return None


def load_run(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedRun:
    """Load the model of a run folder or checkpoint, in eval mode on ``map_location``."""
    ckpt_path, run_dir = resolve_checkpoint(path)
    # trusted: checkpoints written without the CLI hold pickled network classes in their
    # hyper-parameters, and this is a file the user named
    ckpt = read_checkpoint(ckpt_path, trusted=True)
    if "state_dict" not in ckpt:
        raise CheckpointMismatchError(f"{ckpt_path} is not a Lightning checkpoint (no state_dict)")
    if "hyper_parameters" not in ckpt:
        raise CheckpointMismatchError(
            f"{ckpt_path} has no hyper_parameters, so it was not written by a vae_zoo model"
        )
    cls = model_class(ckpt, ckpt_path)
    try:
        # read_checkpoint(trusted=True) has already unpickled this file in full. BaseVAE's
        # override re-checks the class (done above) with weights_only=True, so Lightning's
        # loader is called directly.
        model = super(BaseVAE, cls).load_from_checkpoint(
            ckpt_path, map_location=map_location, weights_only=False
        )
    except (RuntimeError, ValueError, TypeError, KeyError) as err:
        raise CheckpointMismatchError(
            f"{ckpt_path} does not fit {cls.__name__}: {str(err).splitlines()[0]}"
        ) from None
    model.eval()
    return LoadedRun(
        source=Path(path),
        ckpt_path=ckpt_path,
        run_dir=run_dir,
        model=model,
        variant=variant_name(model),
        data=data_settings(read_config(run_dir), ckpt),
        epochs=completed_epochs(ckpt),
        global_step=ckpt.get("global_step"),
        metrics_csv=find_metrics_csv(run_dir),
    )


def unique_labels(runs: list["LoadedRun"]) -> list[str]:
    """Short distinct names: the fewest trailing parts of each run folder (or checkpoint path).

    Two checkpoints of one run folder are told apart by the checkpoint's name (``run:last``).
    """
    paths = [r.run_dir if r.run_dir is not None else r.ckpt_path.with_suffix("") for r in runs]
    parts = [p.resolve().parts for p in paths]
    depth = 1
    while True:
        labels = ["/".join(p[-depth:]) for p in parts]
        distinct = len(set(labels)) == len(set(paths))
        if distinct or depth >= max(len(p) for p in parts):
            break
        depth += 1
    counts = {label: labels.count(label) for label in labels}
    labels = [
        f"{label}:{run.ckpt_path.stem}" if counts[label] > 1 else label
        for label, run in zip(labels, runs, strict=True)
    ]
    seen: dict[str, int] = {}
    out = []
    for label in labels:  # the very same checkpoint given twice still needs two names
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


def completed_epochs(ckpt: dict[str, Any]) -> int | None:
    """Training epochs behind a checkpoint (those it has seen, the one it was saved in counted)."""
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        # checkpoints are saved at an epoch's end, when ``epoch`` is still that epoch's index
        return None if ckpt.get("epoch") is None else int(ckpt["epoch"]) + 1


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available, else mps, else cpu; other names as given (checked)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"--device {name!r} is not a device; use auto, cpu, cuda or mps"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available here; use --device cpu")
    return device
