"""Proposing runs and early stops with W&B's own sweep engine (the ``sweeps`` package).

The engine draws from the global ``random`` (random search) and ``numpy.random`` (Bayesian search)
generators; the proposer keeps private generator states and swaps them in around each call, so a
seeded sweep is reproducible and the caller's global RNG state is left untouched.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .spec import SweepSpec, import_sweeps


def plain(value: Any) -> Any:
    """Numpy scalars/arrays → Python values (what a YAML/JSON config would hold)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


@dataclass
class TrialState:
    """What the engine needs to know about one run: its parameters, state and metric history."""

    name: str
    params: dict[str, Any]
    state: str = "pending"  # a sweeps.RunState value: pending, running, finished, failed, killed
    history: list[float] = field(default_factory=list)


class Proposer:
    """Suggests parameter sets (grid/random/bayes) and hyperband stops for one sweep spec."""

    def __init__(self, spec: SweepSpec, seed: int | None = 0) -> None:
        self.spec = spec
        self._sweeps = import_sweeps()
        py_rng = random.Random(seed)
        np_rng = np.random.RandomState(seed)
        self._py_state = py_rng.getstate()
        self._np_state = np_rng.get_state()

    @contextmanager
    def _seeded(self) -> Iterator[None]:
        saved_py, saved_np = random.getstate(), np.random.get_state()
        random.setstate(self._py_state)
        np.random.set_state(self._np_state)
        try:
            yield
        finally:
            self._py_state, self._np_state = random.getstate(), np.random.get_state()
            random.setstate(saved_py)
            np.random.set_state(saved_np)

    def _sweep_runs(self, trials: list[TrialState]) -> list[Any]:
        metric = self.spec.metric_name
        runs = []
        for trial in trials:
            history = [{metric: v} for v in trial.history] if metric else []
            runs.append(
                self._sweeps.SweepRun(
                    name=trial.name,
                    state=trial.state,
                    config={k: {"value": v} for k, v in trial.params.items()},
                    history=history,
                )
            )
        return runs

    def propose(self, trials: list[TrialState], n: int = 1) -> list[dict[str, Any]]:
        """Up to ``n`` new parameter sets given all runs so far (fewer once a grid is exhausted)."""
        # sklearn comes with the sweeps extra, so it is imported only once the engine exists
        from sklearn.exceptions import ConvergenceWarning

        runs = self._sweep_runs(trials)
        proposals: list[dict[str, Any]] = []
        with self._seeded(), warnings.catch_warnings():
            # The GP's hyper-parameter fit warns when a length scale hits its bound; harmless.
            warnings.simplefilter("ignore", ConvergenceWarning)
            # Bayesian search conditions each proposal on the previous ones (as pending runs).
            suggestions = self._sweeps.next_runs(self.spec.config, runs, validate=False, n=n)
        for suggestion in suggestions:
            if suggestion is None:
                break
            proposals.append(
                {name: plain(suggestion.config[name]["value"]) for name in self.spec.parameters}
            )
        return proposals

    def to_stop(self, trials: list[TrialState]) -> list[str]:
        """Names of running trials hyperband would stop now (empty without early_terminate)."""
        if not self.spec.early_terminate:
            return []
        runs = self._sweep_runs(trials)
        stop = self._sweeps.stop_runs(self.spec.config, runs, validate=False)
        return [run.name for run in stop]
