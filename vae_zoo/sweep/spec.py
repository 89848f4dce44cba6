"""Loading and validating W&B sweep files (the YAML that ``wandb sweep`` takes)."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vae_zoo.errors import ConfigError

METHODS = ("grid", "random", "bayes")
# The command W&B runs when a sweep file gives only ``program``.
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
# Macros that carry the proposed parameters; a command without one would ignore them.
ARGS_MACROS = (
    "${args}",
    "${args_no_hyphens}",
    "${args_no_boolean_flags}",
    "${args_json}",
    "${args_json_file}",
    "${args_no_equals}",
    "${args_append_hydra}",
    "${args_override_hydra}",
)
# A CLI key: dotted identifiers, as LightningCLI names them (model.init_args.beta, data.batch_size).
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class SweepConfigError(ConfigError):
    """A sweep file is missing, unreadable or not a valid W&B sweep for vae_zoo."""


def import_sweeps() -> Any:
    """Import W&B's open-source sweep engine (``sweeps``), with a readable error if absent."""
    try:
        with warnings.catch_warnings():
            # sweeps 0.3 declares a pydantic-v1 config key; pydantic v2 warns about it on import.
            warnings.simplefilter("ignore", UserWarning)
            import sweeps
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise SweepConfigError(
            "the W&B sweep engine is not installed; install it with "
            "`pip install 'vae_zoo[sweeps]'` (or `pip install sweeps`)"
        ) from err
    return sweeps


@dataclass
class SweepSpec:
    """A validated sweep file: the raw config, the engine's filled-in config and the command."""

    path: Path
    raw: dict[str, Any]
    config: dict[str, Any]
    command: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The sweep's ``name`` or, without one, the file's stem."""
        return str(self.raw.get("name") or self.path.stem)

    @property
    def method(self) -> str:
        """``grid``, ``random`` or ``bayes``."""
        return str(self.config["method"])

    @property
    def metric_name(self) -> str | None:
        """The metric the sweep optimises (``val/loss``, ``val/nll``), or None if it has none."""
        metric = self.config.get("metric")
        return str(metric["name"]) if metric else None

    @property
    def goal(self) -> str:
        """``minimize`` or ``maximize`` (W&B's default is minimize)."""
        metric = self.config.get("metric") or {}
        return str(metric.get("goal", "minimize"))

    @property
    def parameters(self) -> dict[str, dict[str, Any]]:
        """Parameter name → the engine's filled-in distribution config."""
        return dict(self.config["parameters"])

    @property
    def parameter_names(self) -> list[str]:
        """The parameter names in file order."""
        return list(self.raw["parameters"])

    @property
    def program(self) -> str | None:
        """The sweep's ``program`` (what ``${program}`` expands to)."""
        program = self.raw.get("program")
        return None if program is None else str(program)

    @property
    def early_terminate(self) -> dict[str, Any] | None:
        """The filled-in ``early_terminate`` block (hyperband), or None."""
        return self.config.get("early_terminate")

    @property
    def run_cap(self) -> int | None:
        """The sweep's ``run_cap`` (most runs W&B starts), or None."""
        cap = self.raw.get("run_cap")
        return None if cap is None else int(cap)

    def grid_size(self) -> int | None:
        """Number of grid points for a grid sweep, None for random/bayes."""
        if self.method != "grid":
            return None
        size = 1
        for param in self.parameters.values():
            size *= len(grid_values(param))
        return size

    def first_values(self) -> dict[str, Any]:
        """Each parameter's first value: first listed value, the constant, or the lower bound."""
        return {name: first_value(param) for name, param in self.parameters.items()}


def grid_values(param: dict[str, Any]) -> list[Any]:
    """The values a grid sweep takes for one (filled-in) parameter, as W&B's grid lists them."""
    if "values" in param:
        return list(param["values"])
    if "value" in param:
        return [param["value"]]
    if param.get("distribution") == "int_uniform":
        return list(range(int(param["min"]), int(param["max"]) + 1))
    if param.get("distribution") == "q_uniform":
        import numpy as np

        return np.arange(param["min"], param["max"], param["q"]).tolist()
    raise SweepConfigError(f"parameter distribution {param.get('distribution')!r} has no grid")


def first_value(param: dict[str, Any]) -> Any:
    """A representative value of one parameter, used to check the CLI accepts its name."""
    if "values" in param:
        return param["values"][0]
    if "value" in param:
        return param["value"]
    if "min" in param:
        return param["min"]
    if "mu" in param:
        return param["mu"]
    raise SweepConfigError(f"cannot take a value from parameter config {param}")


def _fail(path: Path, message: str) -> SweepConfigError:
    return SweepConfigError(f"sweep file {path}: {message}")


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file; raise SweepConfigError naming the fix when it is invalid."""
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "not found; give a sweep YAML such as sweeps/beta_vae_mnist.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise _fail(path, f"is not valid YAML: {err}") from err
    return validate_config(raw, path)


def validate_config(raw: Any, path: str | Path = "<config>") -> SweepSpec:
    """Validate a sweep config dict with W&B's schema plus vae_zoo's rules; return the spec."""
    path = Path(path)
    if not isinstance(raw, dict):
        raise _fail(path, "must be a YAML mapping with method, metric, parameters and command")
    method = raw.get("method")
    if method not in METHODS:
        raise _fail(
            path, f"unknown or missing method {method!r}; use one of {', '.join(METHODS)}"
        )
    params = raw.get("parameters")
    if not isinstance(params, dict) or not params:
        raise _fail(
            path,
            "needs a non-empty `parameters` mapping, e.g. "
            "`parameters: {model.init_args.beta: {values: [1, 4]}}`",
        )
    for name, param in params.items():
        if not isinstance(name, str) or not _KEY.match(name):
            raise _fail(
                path,
                f"parameter name {name!r} is not a CLI key; use dotted names such as "
                "model.init_args.lr or data.batch_size",
            )
        if not isinstance(param, dict):
            raise _fail(path, f"parameter {name!r} must be a mapping such as {{values: [...]}}")
        if "parameters" in param:
            raise _fail(
                path,
                f"parameter {name!r} is nested; write flat dotted names "
                "(model.init_args.beta) so each maps to one CLI override",
            )
    metric = raw.get("metric")
    if metric is not None and (not isinstance(metric, dict) or "name" not in metric):
        raise _fail(
            path, "`metric` must be a mapping with a name, e.g. {name: val/loss, goal: minimize}"
        )
    if metric is None and (method == "bayes" or "early_terminate" in raw):
        raise _fail(path, f"method {method} / early_terminate need a `metric: {{name: val/loss}}`")

    sweeps = import_sweeps()
    try:
        violations = sweeps.schema_violations_from_proposed_config(raw)
    except ValueError as err:
        violations = [str(err)]
    if violations:
        # The schema repeats some messages (min/max checks run twice); keep each once.
        unique = list(dict.fromkeys(violations))
        raise _fail(path, "is not a valid W&B sweep: " + "; ".join(unique))
    try:
        config = dict(sweeps.SweepConfig(raw))
    except Exception as err:  # jsonschema.ValidationError, ValueError from the engine
        raise _fail(path, f"is not a valid W&B sweep: {err}") from err

    if method == "grid":
        for name, param in config["parameters"].items():
            try:
                grid_values(param)
            except SweepConfigError as err:
                raise _fail(
                    path,
                    f"grid search needs listed values, a constant, int_uniform or q_uniform; "
                    f"parameter {name!r} is {param.get('distribution')!r}",
                ) from err

    command = raw.get("command")
    if command is None:
        if "program" not in raw:
            raise _fail(path, "needs `command: [...]` (or `program:`) saying what each run runs")
        command = list(DEFAULT_COMMAND)
    if not isinstance(command, list) or not command:
        raise _fail(path, "`command` must be a non-empty list of strings")
    command = [str(c) for c in command]
    if not any(c in ARGS_MACROS for c in command):
        raise _fail(path, "`command` must contain ${args} so each run receives its parameters")
    if "${program}" in command and "program" not in raw:
        raise _fail(path, "`command` uses ${program} but the file sets no `program`")
    return SweepSpec(path=path, raw=raw, config=config, command=command)
