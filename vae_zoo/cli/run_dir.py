"""Where a run's files go: ``runs/<dataset>/<variant>/version_<N>``, and finding runs again.

``fit`` starts a new ``version_<N>`` (N = one more than the highest existing one) unless it
resumes a checkpoint, in which case it continues in the checkpoint's run directory.
``validate``/``test``/``predict`` write into ``<run dir of the checkpoint>/<subcommand>``.
An explicit ``--trainer.default_root_dir`` is used as the run directory as given.
"""

import os
import re
from pathlib import Path

from vae_zoo.errors import ConfigError

RUNS_ROOT = Path("runs")
#: Lightning's launcher re-runs the command line in each DDP child; they read the parent's choice
RUN_DIR_ENV = "_VAE_ZOO_RUN_DIR"


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


def latest_checkpoint(parent: Path, name: str) -> Path | None:
    """``checkpoints/<name>.ckpt`` of the highest version below ``parent`` that has one."""
    for _, run in reversed(versions(parent)):
        ckpt = run / "checkpoints" / f"{name}.ckpt"
        if ckpt.is_file():
            return ckpt
    return None


def run_dir_of_checkpoint(ckpt_path: str | Path) -> Path | None:
    """The run directory holding ``<run>/checkpoints/<file>.ckpt``, or None for other layouts."""
    path = Path(ckpt_path)
    return path.parent.parent if path.parent.name == "checkpoints" else None


def resolve_alias(alias: str, parent: Path, explicit_dir: str | None) -> Path:
    """The file meant by ``--ckpt_path last|best``: in the given run dir, else the latest run."""
    if explicit_dir is not None:
        ckpt = Path(explicit_dir) / "checkpoints" / f"{alias}.ckpt"
        if ckpt.is_file():
            return ckpt
        where = str(ckpt)
    else:
        found = latest_checkpoint(parent, alias)
        if found is not None:
            return found
        where = f"{parent}/version_*/checkpoints/{alias}.ckpt"
    raise ConfigError(
        f"--ckpt_path {alias}: no checkpoint found at {where}; train first with "
        "`python -m vae_zoo fit --config ...`, or pass the checkpoint's file path"
    )


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
