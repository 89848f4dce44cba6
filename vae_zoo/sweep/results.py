"""Reading a run's metric history from Lightning's ``metrics.csv`` and ranking a sweep's runs."""

from __future__ import annotations

import csv
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vae_zoo.runs import find_metrics_csv

RESULTS_FILE = "sweep_results.csv"


@dataclass
class RunRecord:
    """One run of an offline sweep: what was proposed, what ran and how it ended."""

    index: int
    params: dict[str, Any]
    run_dir: Path
    command: list[str]
    status: str = "pending"  # pending, running, finished, failed, stopped
    history: list[float] = field(default_factory=list)
    metric: float | None = None
    returncode: int | None = None
    error: str = ""

    @property
    def name(self) -> str:
        """``run_000``, ``run_001``, ... (also the run directory's name)."""
        return f"run_{self.index:03d}"


def read_history(path: str | Path, metric: str) -> list[float]:
    """Every finite value of ``metric`` in the CSV, in logging order (one per validation)."""
    values: list[float] = []
    try:
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                text = (row.get(metric) or "").strip()
                if not text:
                    continue
                try:
                    value = float(text)
                except ValueError:
                    # A row half-written by a live run; the next poll sees it whole.
                    continue
                if math.isfinite(value):
                    values.append(value)
    except (OSError, csv.Error):
        return values
    return values


def run_history(run_dir: str | Path, metric: str) -> list[float]:
    """The metric history of the run in ``run_dir`` (empty if it logged none yet)."""
    path = find_metrics_csv(run_dir)
    return read_history(path, metric) if path else []


def best_value(history: list[float], goal: str) -> float | None:
    """The best value of a history (min for minimize, max for maximize), as the engine reads it."""
    if not history:
        return None
    return max(history) if goal == "maximize" else min(history)


def rank_records(records: list[RunRecord], goal: str) -> list[tuple[int | None, RunRecord]]:
    """(rank, record) pairs: runs with a metric first, best first; runs without one unranked."""
    scored = [r for r in records if r.metric is not None]
    unscored = [r for r in records if r.metric is None]
    sign = -1.0 if goal == "maximize" else 1.0
    scored.sort(key=lambda r: (sign * float(r.metric), r.index))  # type: ignore[arg-type]
    ranked: list[tuple[int | None, RunRecord]] = [(i + 1, r) for i, r in enumerate(scored)]
    ranked += [(None, r) for r in sorted(unscored, key=lambda r: r.index)]
    return ranked


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def result_rows(
    records: list[RunRecord], goal: str, param_names: list[str]
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the ranked results table (rank, run, status, metric, params, dir, cmd)."""
    header = ["rank", "run", "status", "metric", *param_names, "run_dir", "command"]
    rows = []
    for rank, record in rank_records(records, goal):
        rows.append(
            [
                "" if rank is None else str(rank),
                record.name,
                record.status,
                "" if record.metric is None else repr(float(record.metric)),
                *[_fmt(record.params.get(name)) for name in param_names],
                str(record.run_dir),
                shlex.join(record.command),
            ]
        )
    return header, rows


def write_results_csv(
    path: str | Path, records: list[RunRecord], goal: str, param_names: list[str]
) -> Path:
    """Write the ranked table to ``path`` (normally ``DIR/sweep_results.csv``)."""
    path = Path(path)
    header, rows = result_rows(records, goal, param_names)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def format_table(
    records: list[RunRecord], goal: str, param_names: list[str], metric_name: str
) -> str:
    """The ranked table as aligned text for the terminal (without the long command column)."""
    header, rows = result_rows(records, goal, param_names)
    header = header[:-1]
    header[3] = metric_name
    rows = [row[:-1] for row in rows]
    for row in rows:
        if row[3]:
            row[3] = f"{float(row[3]):.4f}"
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)
