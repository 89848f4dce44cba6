"""The argument parser of the training commands: LightningCLI's, with short error messages.

jsonargparse reports a bad value inside ``model`` as a nest of union alternatives followed by
a usage text of 150 lines; :func:`condense` keeps the lines that name the key and the fix.
``VAE_ZOO_DEBUG=1`` shows the original message.
"""

import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml
from lightning.pytorch.cli import LightningArgumentParser

from vae_zoo.cli.config_args import expand_config_args
from vae_zoo.errors import ConfigError

_SUBCOMMANDS = ("fit", "validate", "test", "predict")

_UNION = "Does not validate against any of the Union subtypes"
_NOISE = (
    re.compile(r"^- Expected a <class 'NoneType'>"),
    re.compile(r"^Subtypes: "),
    re.compile(r"^Errors:$"),
    re.compile(r"^Given value( type)?: "),
    re.compile(r"^" + re.escape(_UNION)),
)


def condense(message: str) -> str:
    """The informative lines of a jsonargparse error, joined into one line."""
    required = re.match(r"the following arguments are required: (?:\w+\.)?model\b", message)
    if required:
        return (
            "no model given: start from an experiment config, e.g. --config mnist/vae "
            "(`python -m vae_zoo configs` lists them), or give --model vae_zoo.models.VAE"
        )
    if _UNION not in message:
        first, *rest = message.strip().splitlines()
        first = re.sub(r'^Parser key "([^"]+)":$', r"\1:", first)
        return " ".join([first, *(line.strip() for line in rest)])
    head = re.match(r'Parser key "([^"]+)"', message)
    parts: list[str] = []
    for raw in message.splitlines()[1:]:
        line = raw.strip()
        if not line or any(p.match(line) for p in _NOISE):
            continue
        line = line.removeprefix("- ")
        line = re.sub(r"^Problem with given class_path '([^']+)':$", r"(\1)", line)
        line = re.sub(r"^Parser key \"([^\"]+)\":$", r"\1:", line)
        line = re.sub(r"Option '([^']+)' is not accepted", r"unknown key '\1'", line)
        line = re.sub(r"^Type .* expects a function or a callable class: ", "", line)
        line = re.sub(r"\. Got value: Namespace\(.*\)$", "", line)
        parts.append(line)
    if not parts:
        return message.strip()
    key = head.group(1) if head else ""
    return f"{key} {' '.join(parts)}".strip()


def config_files(args: list[str]) -> list[str]:
    """The files given with ``--config``/``-c`` in a command line, in order."""
    found = []
    for i, arg in enumerate(args):
        if arg in ("-c", "--config") and i + 1 < len(args):
            found.append(args[i + 1])
        elif arg.startswith(("--config=", "-c=")):
            found.append(arg.split("=", 1)[1])
    return found


def check_config_files(args: list[str]) -> None:
    """ConfigError naming the file, line and column when a ``--config`` file is not YAML.

    jsonargparse reports a syntax error without saying which of several config files has it.
    Missing files are left to it (its message names them).
    """
    for name in config_files(args):
        path = Path(name)
        if not path.is_file():
            continue
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{name}: not valid YAML{where}: {problem}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{name}: cannot be read as a YAML file: {err}") from None


class VAEZooParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are one readable line and a tip, not a usage wall.

    ``--config`` also takes a config name (``mnist/vae``) and expands an experiment file into
    its pieces, see :mod:`vae_zoo.cli.config_args`.
    """

    def parse_args(self, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        """Parse ``args`` (default ``sys.argv[1:]``) after resolving the ``--config`` values."""
        if args is None:
            args = sys.argv[1:]
        if isinstance(args, (list, tuple)):
            args = expand_config_args([str(a) for a in args])
        return super().parse_args(args, *rest, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Print ``error: <condensed message>`` and a hint, then exit with status 2."""
        if not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        # an error of a subcommand's arguments can reach the main parser ("fit.model" missing);
        # the tip must then name the subcommand, or its own commands would fail
        sub = re.search(r"\b(" + "|".join(_SUBCOMMANDS) + r")\.\w", message)
        if sub and not prog.endswith(f" {sub.group(1)}"):
            prog = f"{prog} {sub.group(1)}"
        text = message if os.environ.get("VAE_ZOO_DEBUG") else condense(message)
        sys.stderr.write(f"error: {text}\n")
        sys.stderr.write(
            f"tip: list the valid keys with `{prog} --help`; see the full config with "
            f"`{prog} --config ... --print_config`\n"
        )
        self.exit(2)
