"""Building a run's command line from a sweep ``command`` the way ``wandb agent`` does.

Mirrors ``wandb.sdk.launch.sweeps.utils.create_sweep_command{,_args}`` and the macro loop in
``wandb.wandb_agent.Agent._command_run`` (wandb 0.17-0.31), so an offline run executes the same
argv as the online agent; tests compare the two.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from typing import Any

_ENVVAR = re.compile(r"\$\{envvar\:([A-Z0-9_]*)\}")


def sweep_command_args(params: dict[str, Any]) -> dict[str, list[str] | dict[str, Any]]:
    """The agent's argument formats of one run's parameters (``${args}``, ``${args_json}``...)."""
    flags: list[str] = []
    no_hyphens: list[str] = []
    no_booleans: list[str] = []
    no_equals: list[str] = []
    append_hydra: list[str] = []
    override_hydra: list[str] = []
    as_dict: dict[str, Any] = {}
    for name, value in params.items():
        flag = f"{name}={value}"
        flags.append("--" + flag)
        no_hyphens.append(flag)
        no_equals += [f"--{name}", str(value)]
        append_hydra.append("+" + flag)
        override_hydra.append("++" + flag)
        if isinstance(value, bool):
            # W&B drops false booleans and passes true ones as bare flags.
            if value:
                no_booleans.append("--" + name)
        else:
            no_booleans.append("--" + flag)
        as_dict[name] = value
    return {
        "args": flags,
        "args_no_equals": no_equals,
        "args_no_hyphens": no_hyphens,
        "args_no_boolean_flags": no_booleans,
        "args_json": [json.dumps(as_dict)],
        "args_dict": as_dict,
        "args_append_hydra": append_hydra,
        "args_override_hydra": override_hydra,
    }


def substitute_envvars(command: list[str], environ: dict[str, str] | None = None) -> list[str]:
    """Replace ``${envvar:NAME}`` inside command items (unset names stay as the bare NAME)."""
    environ = os.environ if environ is None else environ
    out = []
    for chunk in command:
        text = str(chunk)
        for match in list(_ENVVAR.finditer(text))[::-1]:
            value = environ.get(match.group(1), match.group(1))
            text = f"{text[: match.start()]}{value}{text[match.end() :]}"
        out.append(text)
    return out


def expand_command(
    command: list[str],
    params: dict[str, Any],
    program: str | None = None,
    args_json_file: str = "",
    interpreter: str = "python",
    environ: dict[str, str] | None = None,
) -> list[str]:
    """The argv ``wandb agent`` would run for ``params`` (macros expanded, unknown ones dropped)."""
    sweep_vars: dict[str, Any] = sweep_command_args(params)
    sweep_vars["interpreter"] = [interpreter]
    sweep_vars["program"] = [program]
    sweep_vars["args_json_file"] = [args_json_file]
    if platform.system() != "Windows":
        sweep_vars["env"] = ["/usr/bin/env"]
    argv: list[str] = []
    for item in substitute_envvars(list(command), environ):
        if item.startswith("${") and item.endswith("}"):
            argv += [str(v) for v in sweep_vars.get(item[2:-1]) or []]
        else:
            argv.append(item)
    return argv


def use_interpreter(argv: list[str], executable: str = sys.executable) -> list[str]:
    """Run ``python``/``python3`` as ``executable`` so runs use the sweep's own environment.

    The agent relies on ``python`` on PATH; offline, the interpreter running the sweep is the one
    with vae_zoo installed, so the first ``python`` word (after ``/usr/bin/env``) becomes it.
    """
    argv = list(argv)
    start = 1 if argv and argv[0] == "/usr/bin/env" else 0
    if len(argv) > start and argv[start] in ("python", "python3"):
        argv[start] = executable
    return argv
