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
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

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


class _ResumingWriter(ExperimentWriter):
    """CSV writer that continues an existing metrics.csv instead of deleting it."""

    def __init__(self, log_dir: str, resume_step: int | None) -> None:
        self.resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        # Lightning deletes an existing metrics.csv here; a resumed run keeps the rows up to the
        # checkpoint's step and drops those a killed attempt logged after it.
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        if self.resume_step is None:
            path.unlink()
            return
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [r for r in reader if _step(r) is None or _step(r) < self.resume_step]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = sorted(header)


def _step(row: dict[str, str]) -> int | None:
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        return None


class RunCSVLogger(CSVLogger):
    """CSVLogger writing ``<run_dir>/metrics.csv`` (and ``hparams.yaml``) directly in the run dir.

    Args:
        run_dir: the run directory.
        resume_step: when resuming from a checkpoint taken at this global step, keep the rows of
            an existing metrics.csv logged before it (Lightning would delete the file).
        flush_logs_every_n_steps: how often rows are written to disk.
    """

    def __init__(
        self,
        run_dir: str | Path,
        resume_step: int | None = None,
        flush_logs_every_n_steps: int = 50,
    ) -> None:
        # name="" and version="" put the files directly in the run directory
        every = flush_logs_every_n_steps
        super().__init__(str(run_dir), name="", version="", flush_logs_every_n_steps=every)
        self._resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The writer, created on first use so that it can continue an existing file."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumingWriter(self.log_dir, self._resume_step)
        return self._experiment
