"""Checking that the training CLI accepts a sweep's parameter names before any run starts.

A misspelt parameter (``model.init_args.betta``) would otherwise fail every run of the sweep;
here the sweep's own command runs once with each parameter's first value and
``--print_config``, which parses the full config without training.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .command import expand_command, use_interpreter
from .runner import fit_index, last_error_line
from .spec import SweepConfigError, SweepSpec


def print_config_argv(spec: SweepSpec, overrides: list[str] | None = None) -> list[str] | None:
    """The sweep's command with first values and ``--print_config``; None if it is not a fit."""
    argv = expand_command(spec.command, spec.first_values(), program=spec.program)
    argv = use_interpreter(argv) + list(overrides or [])
    if fit_index(argv) is None:
        return None
    return [*argv, "--print_config"]


def fit_args(argv: list[str]) -> list[str]:
    """The part of a ``python -m vae_zoo fit ...`` argv from ``fit`` on (for in-process calls)."""
    index = fit_index(argv)
    if index is None:
        raise ValueError(f"not a `python -m vae_zoo fit` command: {argv}")
    return argv[index:]


def check_cli_accepts(
    spec: SweepSpec, overrides: list[str] | None = None, timeout: float = 300.0
) -> bool:
    """Raise SweepConfigError if ``fit --print_config`` rejects the parameters; False if skipped."""
    argv = print_config_argv(spec, overrides)
    if argv is None:
        return False
    env = dict(os.environ, WANDB_MODE="disabled")
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=env,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SweepConfigError(f"could not run the sweep's command to check it: {err}") from err
    if proc.returncode != 0:
        missing = [a for a in argv if a.endswith((".yaml", ".yml")) and not Path(a).is_file()]
        hint = f" (config file not found: {', '.join(missing)})" if missing else ""
        raise SweepConfigError(
            f"sweep file {spec.path}: `python -m vae_zoo fit` rejects the sweep's command with "
            f"first values {spec.first_values()}{hint}: {last_error_line(proc.stderr)}"
        )
    return True
