"""Loggers of a run: the always-on ``metrics.csv`` and W&B that falls back to offline mode.

W&B asks for an API key on a terminal and fails (or waits) without one, so before any
``WandbLogger`` is created :func:`prepare_wandb` decides: without credentials, or when the
W&B host does not answer within two seconds, it sets ``WANDB_MODE=offline`` and prints one
line saying how to upload the run later. An explicit ``WANDB_MODE`` is always respected.
"""

import csv
import netrc
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import Tensor

from vae_zoo.runs import METRICS_FILE

DEFAULT_WANDB_HOST = "https://api.wandb.ai"


def wandb_host() -> str:
    """Host name of the W&B server (``WANDB_BASE_URL`` or api.wandb.ai)."""
    url = os.environ.get("WANDB_BASE_URL") or DEFAULT_WANDB_HOST
    return urlparse(url).hostname or "api.wandb.ai"


def has_wandb_credentials(host: str | None = None) -> bool:
    """True when ``WANDB_API_KEY`` is set or a netrc file holds a password for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = host or wandb_host()
    candidates = [os.environ.get("NETRC"), Path.home() / ".netrc", Path.home() / "_netrc"]
    for path in candidates:
        if not path or not Path(path).is_file():
            continue
        try:
            entry = netrc.netrc(str(path)).authenticators(host)
        except (netrc.NetrcParseError, OSError):
            continue
        if entry and entry[2]:
            return True
    return False


def host_reachable(host: str, port: int = 443, timeout: float = 2.0) -> bool:
    """True when a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def prepare_wandb(run_dir: str | Path, announce: bool = True) -> str:
    """Set up the environment so W&B never prompts or hangs; returns the mode W&B will use.

    Quiets W&B's own console output and stops it from capturing stdout/stderr (the progress
    bar stays readable). Chooses offline mode unless credentials exist and the host answers.
    """
    # silent W&B also never prompts for a key on stdin (wandb.errors.term.can_use_terminput)
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    host = wandb_host()
    if has_wandb_credentials(host) and host_reachable(host):
        return "online"
    os.environ["WANDB_MODE"] = "offline"
    if announce:
        print(
            "wandb: offline mode (no credentials/network); sync later with: "
            f"wandb sync {Path(run_dir) / 'wandb'}/offline-run-*",
            flush=True,
        )
    return "offline"


def previous_wandb_id(run_dir: str | Path) -> str | None:
    """The id of the W&B run last recorded in ``<run_dir>/wandb`` (to continue it on resume)."""
    runs = sorted(Path(run_dir, "wandb").glob("*run-*-*"), key=lambda p: p.name.split("run-")[-1])
    return runs[-1].name.rsplit("-", 1)[-1] if runs else None


class RunCSVLogger(Logger):
    """Writes ``<run_dir>/metrics.csv``: one row per logging call, columns sorted by name.

    The format of Lightning's ``CSVLogger`` (``epoch``, ``step`` and one column per metric,
    empty where a row has no value), written on Lightning's public ``Logger`` interface so
    that it can continue a file and never leave a broken one:

    * nothing is created before the first metric is logged, so a run that stops before
      training (a data error) leaves no folder behind;
    * rows are appended; when a new metric adds a column, the file is rewritten to a temporary
      file and renamed, so a kill during the rewrite leaves the previous file;
    * a resumed run (``resume_step``) keeps the rows logged before its checkpoint's global
      step and drops those a killed attempt logged after it, so no step appears twice;
      otherwise an existing file is replaced.

    Hyper-parameters are not written: the run's ``config.yaml`` holds them.

    Args:
        run_dir: the run directory.
        resume_step: the global step of the checkpoint a resumed run starts from.
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None) -> None:
        super().__init__()
        self._run_dir = Path(run_dir)
        self._resume_step = resume_step
        self._pending: list[dict[str, Any]] = []
        self._columns: list[str] | None = None  # None until the existing file was dealt with

    @property
    def name(self) -> str:
        """No experiment name: the files go directly into the run directory."""
        return ""

    @property
    def version(self) -> str:
        """No version: the run directory is the version."""
        return ""

    @property
    def save_dir(self) -> str:
        """The run directory (``trainer.log_dir``, where ``config.yaml`` goes too)."""
        return str(self._run_dir)

    @property
    def log_dir(self) -> str:
        """The run directory."""
        return str(self._run_dir)

    @property
    def path(self) -> Path:
        """The ``metrics.csv`` file."""
        return self._run_dir / METRICS_FILE

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Nothing to do: ``config.yaml`` holds the hyper-parameters."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Queue one row; :meth:`save` (Lightning calls it after every log) writes it."""
        self._open()
        row = {k: v.item() if isinstance(v, Tensor) else v for k, v in metrics.items()}
        row["step"] = len(self._pending) if step is None else step
        self._pending.append(row)

    @rank_zero_only
    def save(self) -> None:
        """Write the queued rows."""
        if not self._pending:
            return
        columns = self._open()
        new = sorted(set().union(*self._pending) - set(columns))
        if new or not self.path.is_file():
            columns[:] = sorted({*columns, *new})
            self._rewrite(columns, [*_read_rows(self.path), *self._pending])
        else:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=columns).writerows(self._pending)
        self._pending = []

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Write what is queued."""
        self.save()

    def _open(self) -> list[str]:
        """The file's columns, after keeping (resume) or dropping an existing file, once."""
        if self._columns is not None:
            return self._columns
        self._columns = []
        if not self.path.is_file():
            return self._columns
        if self._resume_step is None:
            self.path.unlink()
            return self._columns
        with self.path.open(newline="") as f:
            reader = csv.DictReader(f)
            self._columns = list(reader.fieldnames or [])
            rows = list(reader)
        kept = [r for r in rows if _step(r) is None or _step(r) < self._resume_step]
        if len(kept) < len(rows):
            self._rewrite(self._columns, kept)
        return self._columns

    def _rewrite(self, columns: list[str], rows: list[dict[str, Any]]) -> None:
        self._run_dir.mkdir(parents=True, exist_ok=True)
        part = self.path.with_name(f".{METRICS_FILE}.part")
        with part.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(part, self.path)


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _step(row: dict[str, str]) -> int | None:
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        return None
