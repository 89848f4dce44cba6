"""The run-folder layout, in one place: where a run's files are, and reading its checkpoints.

A run lives in ``runs/<dataset>/<variant>/version_<N>/``::

    config.yaml              the resolved CLI config
    metrics.csv              every logged metric, one row per logging call
    checkpoints/best.ckpt    the best epoch (by the monitored metric)
    checkpoints/last.ckpt    the newest state: every epoch end, on interrupt, optionally more often
    images/                  image grids
    test/, validate/, ...    the output of ``test``/``validate``/``predict`` of its checkpoints

``fit`` starts a new ``version_<N>`` (N = one more than the highest existing one) unless it
resumes a checkpoint, in which case it continues in the checkpoint's run directory.
``validate``/``test``/``predict`` write into ``<run dir of the checkpoint>/<subcommand>``.
An explicit ``--trainer.default_root_dir`` is used as the run directory as given.
This module imports nothing else of vae_zoo but its errors, so every layer can use it.
"""

import os
import re
from pathlib import Path
from typing import Any

import yaml

from vae_zoo.errors import CheckpointMismatchError, ConfigError

RUNS_ROOT = Path("runs")
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
CHECKPOINT_DIR = "checkpoints"
#: the checkpoint names ``--ckpt_path`` accepts as aliases, in the order a run folder is read
ALIASES = ("best", "last")
#: Lightning's launcher re-runs the command line in each DDP child; they read the parent's choice
RUN_DIR_ENV = "_VAE_ZOO_RUN_DIR"


# ---------------------------------------------------------------------- finding runs
def experiment_dir(dataset: str, variant: str, root: Path = RUNS_ROOT) -> Path:
    """``runs/<dataset>/<variant>``: the parent of all versions of one experiment."""
    return root / dataset / variant


def versions(parent: Path, prefix: str = "version_") -> list[tuple[int, Path]]:
    """The ``<prefix><N>`` folders (``version_<N>``) below ``parent``, sorted by N."""
    if not parent.is_dir():
        return []
    pattern = re.compile(re.escape(prefix) + r"(\d+)$")
    found = [(int(m.group(1)), p) for p in parent.iterdir() if (m := pattern.match(p.name))]
    return sorted(found)


def next_version_dir(parent: Path, prefix: str = "version_") -> Path:
    """``parent/<prefix><N>`` with N one more than the highest existing one (0 when none)."""
    existing = versions(parent, prefix)
    return parent / f"{prefix}{existing[-1][0] + 1 if existing else 0}"


def checkpoint_file(run_dir: str | Path, name: str) -> Path:
    """``<run_dir>/checkpoints/<name>.ckpt`` (whether or not it exists)."""
    return Path(run_dir) / CHECKPOINT_DIR / f"{name}.ckpt"


def latest_checkpoint(parent: Path, name: str) -> Path | None:
    """``checkpoints/<name>.ckpt`` of the highest version below ``parent`` that has one."""
    for _, run in reversed(versions(parent)):
        ckpt = checkpoint_file(run, name)
        if ckpt.is_file():
            return ckpt
    return None


def run_dir_of_checkpoint(ckpt_path: str | Path) -> Path | None:
    """The run holding a checkpoint: ``<run>/checkpoints/x.ckpt``, or a folder with config.yaml.

    None for a checkpoint that lies elsewhere (written by a script, copied by hand).
    """
    path = Path(ckpt_path)
    if path.parent.name == CHECKPOINT_DIR:
        return path.parent.parent
    return path.parent if (path.parent / CONFIG_FILE).is_file() else None


def config_file(run_dir: str | Path | None) -> Path | None:
    """The run's ``config.yaml`` when it exists, else None."""
    if run_dir is None:
        return None
    path = Path(run_dir) / CONFIG_FILE
    return path if path.is_file() else None


def resolve_alias(alias: str, parent: Path, explicit_dir: str | None) -> Path:
    """The file meant by ``--ckpt_path last|best``: in the given run dir, else the latest run."""
    if explicit_dir is not None:
        ckpt = checkpoint_file(explicit_dir, alias)
        if ckpt.is_file():
            return ckpt
        where = str(ckpt)
    else:
        found = latest_checkpoint(parent, alias)
        if found is not None:
            return found
        where = f"{parent}/version_*/{CHECKPOINT_DIR}/{alias}.ckpt"
    raise ConfigError(
        f"--ckpt_path {alias}: no checkpoint found at {where}; train first with "
        "`python -m vae_zoo fit --config ...`, or pass the checkpoint's file path"
    )


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path | None]:
    """(checkpoint file, run folder or None) for a run folder or a .ckpt path.

    A run folder gives its ``best.ckpt``, else its ``last.ckpt``, else its newest ``*.ckpt``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"{path} does not exist; give a run folder or a .ckpt file")
    if not path.is_dir():
        return path, run_dir_of_checkpoint(path)
    for alias in ALIASES:
        if checkpoint_file(path, alias).is_file():
            return checkpoint_file(path, alias), path
    found = sorted(path.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        looked = ", ".join(f"{CHECKPOINT_DIR}/{a}.ckpt" for a in ALIASES)
        raise ConfigError(
            f"no checkpoint in {path} (looked for {looked} and any *.ckpt below it); "
            "train with `python -m vae_zoo fit` first"
        )
    return found[-1], path


def read_config(run_dir: str | Path | None) -> dict[str, Any]:
    """The run's ``config.yaml`` as a dictionary ({} when there is none)."""
    path = config_file(run_dir)
    if path is None:
        return {}
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    return config if isinstance(config, dict) else {}


def find_metrics_csv(run_dir: str | Path | None) -> Path | None:
    """The run's ``metrics.csv`` (else the newest one below the run folder), or None."""
    if run_dir is None or not Path(run_dir).is_dir():
        return None
    direct = Path(run_dir) / METRICS_FILE
    if direct.is_file():
        return direct
    found = sorted(Path(run_dir).rglob(METRICS_FILE), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


# ---------------------------------------------------------------------- reading checkpoints
def read_checkpoint(path: str | Path, *, trusted: bool = False) -> dict[str, Any]:
    """The dictionary of a checkpoint file; CheckpointMismatchError (one line) if it is not one.

    By default only tensors and plain data are unpickled (torch's ``weights_only``): enough for
    every checkpoint the CLI writes. ``trusted=True`` also unpickles Python objects, which
    checkpoints of scripts that store classes in their hyper-parameters need; use it only for
    files the user named, as running their code is what unpickling them means.
    """
    import torch  # here, so that commands that only read the layout stay light

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trusted)
    except FileNotFoundError:
        raise CheckpointMismatchError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        raise CheckpointMismatchError(f"{path} is a folder, not a checkpoint file") from None
    except Exception as err:  # any unpickling failure means the same thing to the user
        raise CheckpointMismatchError(
            f"{path} is not a readable checkpoint ({unreadable_reason(err)}); give a .ckpt "
            "file written by `python -m vae_zoo fit`"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointMismatchError(f"{path} is not a Lightning checkpoint")
    return ckpt


def checkpoint_meta(path: str | Path) -> tuple[dict[str, Any], int | None]:
    """(``hyper_parameters``, ``global_step``) of a checkpoint file, without building a model."""
    ckpt = read_checkpoint(path)
    hparams = ckpt.get("hyper_parameters")
    step = ckpt.get("global_step")
    return (dict(hparams) if isinstance(hparams, dict) else {}), (
        int(step) if isinstance(step, int) else None
    )


def unreadable_reason(err: BaseException) -> str:
    """Why torch could not read a file, in a few words and without torch's unpickling advice.

    torch's message for a file that is not a checkpoint suggests retrying with
    ``weights_only=False``: unsafe, and no help for a file that is not a checkpoint at all.
    """
    text = str(err).strip()
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", text, re.S)
    if detail:
        inner = " ".join(detail.group(1).split())
        global_ = re.search(r"Unsupported global: GLOBAL ([\w.]+)", inner)
        if global_:
            return (f"it holds a pickled Python object ({global_.group(1)}), which vae_zoo "
                    "does not unpickle from a checkpoint given on the command line")
        if re.match(r"Unsupported operand", inner):
            return "not a PyTorch file"
        return inner.split(". ")[0]
    lines = [line for line in text.splitlines() if line.strip() and "weights_only" not in line]
    return lines[0].strip() if lines else type(err).__name__


# ---------------------------------------------------------------------- the current process
def inherited_run_dir() -> str | None:
    """The run directory chosen by the launching process, in a DDP child process."""
    if "LOCAL_RANK" in os.environ and os.environ.get(RUN_DIR_ENV):
        return os.environ[RUN_DIR_ENV]
    return None


def display(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies below it (shorter to print)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
