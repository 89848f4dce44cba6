"""Running a sweep without a W&B server: propose, launch, watch, stop early, record.

Each run is a subprocess with the command line ``wandb agent`` would build from the sweep's
``command`` (see :mod:`vae_zoo.sweep.command`), plus the user's overrides and, for
``python -m vae_zoo fit`` commands, ``--trainer.default_root_dir=DIR/run_XXX`` so every run
writes its own directory (the CLI uses an explicit default_root_dir as the run directory).
While runs go on, the runner reads their ``metrics.csv`` every ``poll_interval`` seconds; the
histories feed W&B's hyperband (``early_terminate``) and, once runs end, Bayesian search.
Runs also get ``VAE_ZOO_SWEEP_RUN_DIR`` (their directory) for commands other than vae_zoo's fit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .command import expand_command, use_interpreter
from .proposer import Proposer, TrialState
from .results import RESULTS_FILE, RunRecord, best_value, run_history, write_results_csv
from .spec import SweepConfigError, SweepSpec

# How long a run may take to exit after SIGTERM (Lightning stops at the next batch and saves
# last.ckpt) before it is killed.
TERM_GRACE_S = 60.0
_STATE = {"pending": "running", "running": "running", "finished": "finished",
          "failed": "failed", "stopped": "killed"}


def fit_index(argv: list[str]) -> int | None:
    """Index of ``fit`` in a ``python -m vae_zoo fit ...`` / ``vae-zoo fit ...`` argv, else None."""
    for i, word in enumerate(argv[:-1]):
        if word == "-m" and argv[i + 1] == "vae_zoo" and i + 2 < len(argv):
            return i + 2 if argv[i + 2] == "fit" else None
        if Path(word).name == "vae-zoo" and argv[i + 1] == "fit":
            return i + 1
    return None


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a text file ('' if it is missing)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def last_error_line(text: str) -> str:
    """The most telling line of a failed run's stderr: the last ``error:``/exception line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith("error:") or "Error" in line.split(":")[0] or "Exception" in line:
            return line
    return lines[-1] if lines else ""


@dataclass
class SweepOptions:
    """How to run an offline sweep."""

    out_dir: Path
    count: int
    parallel: int = 1
    seed: int | None = 0
    overrides: list[str] = field(default_factory=list)
    wandb_mode: str = "offline"
    poll_interval: float = 2.0
    python: str = sys.executable


@dataclass
class _Live:
    record: RunRecord
    proc: subprocess.Popen
    files: list[IO[Any]]
    term_sent: float | None = None


class SweepRunner:
    """Runs ``options.count`` runs of a sweep spec, ``options.parallel`` at a time."""

    def __init__(
        self, spec: SweepSpec, options: SweepOptions, log: Callable[[str], None] = print
    ) -> None:
        if options.count < 1:
            raise SweepConfigError("--count must be at least 1")
        if options.parallel < 1:
            raise SweepConfigError("--parallel must be at least 1")
        self.spec = spec
        self.options = options
        self.log = log
        self.proposer = Proposer(spec, seed=options.seed)
        self.records: list[RunRecord] = []
        self._live: dict[str, _Live] = {}

    # ------------------------------------------------------------------ building runs
    def run_dir(self, index: int) -> Path:
        """``DIR/run_XXX`` of run number ``index``."""
        return self.options.out_dir / f"run_{index:03d}"

    def build_command(self, params: dict[str, Any], run_dir: Path) -> list[str]:
        """The argv of one run: the agent's expansion, the overrides, the run's own directory."""
        argv = expand_command(
            self.spec.command,
            params,
            program=self.spec.program,
            args_json_file=str(run_dir / "sweep_args.json"),
        )
        argv = use_interpreter(argv, self.options.python) + list(self.options.overrides)
        if fit_index(argv) is not None:
            argv.append(f"--trainer.default_root_dir={run_dir}")
        return argv

    def run_env(self, run_dir: Path) -> dict[str, str]:
        """The run's environment: W&B offline (or disabled) so runs never wait on a server."""
        env = dict(os.environ)
        env["WANDB_MODE"] = self.options.wandb_mode
        env.setdefault("WANDB_SILENT", "true")
        env["VAE_ZOO_SWEEP_RUN_DIR"] = str(run_dir)
        return env

    def trials(self) -> list[TrialState]:
        """The runs so far as the sweep engine sees them."""
        return [
            TrialState(r.name, r.params, _STATE[r.status], list(r.history)) for r in self.records
        ]

    # ------------------------------------------------------------------ the loop
    def run(self) -> list[RunRecord]:
        """Run the sweep to the end; returns every run's record (also on Ctrl-C, then re-raises)."""
        out = self.options.out_dir
        out.mkdir(parents=True, exist_ok=True)
        exhausted = False
        try:
            while True:
                while (
                    not exhausted
                    and len(self._live) < self.options.parallel
                    and len(self.records) < self.options.count
                ):
                    proposals = self.proposer.propose(self.trials(), 1)
                    if not proposals:
                        exhausted = True
                        self.log(f"sweep: the grid is exhausted after {len(self.records)} runs")
                        break
                    self._launch(proposals[0])
                if not self._live:
                    break
                time.sleep(self.options.poll_interval)
                self._poll()
        except KeyboardInterrupt:
            for live in list(self._live.values()):
                live.record.error = "interrupted"
                self._signal(live, signal.SIGTERM)
            for live in list(self._live.values()):
                self._wait_and_close(live, status="failed")
            self.save_results()
            raise
        self.save_results()
        return self.records

    def save_results(self) -> Path:
        """Write ``DIR/sweep_results.csv`` with every run so far, ranked."""
        return write_results_csv(
            self.options.out_dir / RESULTS_FILE,
            self.records,
            self.spec.goal,
            self.spec.parameter_names,
        )

    def _launch(self, params: dict[str, Any]) -> None:
        index = len(self.records)
        run_dir = self.run_dir(index)
        run_dir.mkdir(parents=True, exist_ok=True)
        argv = self.build_command(params, run_dir)
        record = RunRecord(index=index, params=params, run_dir=run_dir, command=argv)
        self.records.append(record)
        (run_dir / "sweep_args.json").write_text(json.dumps(params, indent=2) + "\n")
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        self.log(f"sweep: {record.name} ({index + 1}/{self.options.count}) {shown}")
        stdout = open(run_dir / "stdout.log", "w")  # noqa: SIM115 - closed when the run ends
        stderr = open(run_dir / "stderr.log", "w")  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                argv,
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                env=self.run_env(run_dir),
                # its own process group, so stopping a run also stops what it started (wandb-core)
                start_new_session=True,
            )
        except OSError as err:
            stdout.close()
            stderr.close()
            record.status = "failed"
            record.error = f"could not start {argv[0]}: {err}"
            (run_dir / "stderr.log").write_text(record.error + "\n")
            self.log(f"sweep: {record.name} failed: {record.error}")
            self.save_results()
            return
        record.status = "running"
        self._live[record.name] = _Live(record, proc, [stdout, stderr])

    def _poll(self) -> None:
        metric = self.spec.metric_name
        for live in self._live.values():
            if metric:
                live.record.history = run_history(live.record.run_dir, metric)
        if self.spec.early_terminate:
            running = {n for n, lv in self._live.items() if lv.term_sent is None}
            for name in self.proposer.to_stop(self.trials()):
                if name in running:
                    live = self._live[name]
                    live.record.status = "stopped"
                    best = best_value(live.record.history, self.spec.goal)
                    self.log(
                        f"sweep: {name} stopped early by hyperband after "
                        f"{len(live.record.history)} validations ({metric} best {best})"
                    )
                    self._signal(live, signal.SIGTERM)
        for live in list(self._live.values()):
            if live.proc.poll() is not None:
                self._finish(live)
            elif live.term_sent is not None and time.monotonic() - live.term_sent > TERM_GRACE_S:
                self._signal(live, signal.SIGKILL)

    def _signal(self, live: _Live, sig: int) -> None:
        if live.term_sent is None:
            live.term_sent = time.monotonic()
        try:
            if sig == signal.SIGKILL:
                os.killpg(live.proc.pid, sig)
            else:
                live.proc.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _wait_and_close(self, live: _Live, status: str) -> None:
        try:
            live.proc.wait(timeout=TERM_GRACE_S)
        except subprocess.TimeoutExpired:
            self._signal(live, signal.SIGKILL)
            live.proc.wait()
        live.record.status = status
        self._finish(live)

    def _finish(self, live: _Live) -> None:
        record = live.record
        for handle in live.files:
            handle.close()
        self._live.pop(record.name, None)
        record.returncode = live.proc.returncode
        metric = self.spec.metric_name
        if metric:
            record.history = run_history(record.run_dir, metric)
            record.metric = best_value(record.history, self.spec.goal)
        # a run stopped by hyperband or interrupted keeps the status it was given then
        if record.status == "running":
            record.status, record.error = self._outcome(record)
        if record.status == "failed":
            self._keep_stderr_tail(record)
            self.log(f"sweep: {record.name} failed (exit {record.returncode}): {record.error}")
        elif record.status == "finished":
            shown = "" if record.metric is None else f"{metric} {record.metric:.4f}"
            self.log(f"sweep: {record.name} finished {shown}".rstrip())
        self.save_results()

    def _outcome(self, record: RunRecord) -> tuple[str, str]:
        """(status, error) of a run that ended on its own."""
        metric = self.spec.metric_name
        if record.returncode != 0:
            stderr = tail(record.run_dir / "stderr.log", 40)
            return "failed", last_error_line(stderr) or f"exit status {record.returncode}"
        if metric and record.metric is None:
            return "failed", (
                f"finished but logged no {metric} (no metrics.csv with it in {record.run_dir}); "
                "is the metric name right and does validation run?"
            )
        return "finished", ""

    def _keep_stderr_tail(self, record: RunRecord) -> None:
        # stderr.log holds the whole stream; a line at its end says why the sweep marked it failed
        with open(record.run_dir / "stderr.log", "a") as handle:
            handle.write(f"\n[vae_zoo sweep] {record.name} failed: {record.error}\n")
