"""The argument parser of the training commands: LightningCLI's, with short error messages.

jsonargparse reports a bad value inside ``model`` as a nest of union alternatives followed by
a usage text of 150 lines; :func:`condense` keeps the lines that name the key and the fix.
``VAE_ZOO_DEBUG=1`` shows the original message.
"""

import os
import re
import sys
from typing import Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser

from vae_zoo.cli.config_args import expand_config_args

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
        text = message if os.environ.get("VAE_ZOO_DEBUG") else condense(message)
        sys.stderr.write(f"error: {text}\n")
        sys.stderr.write(
            f"tip: list the valid keys with `{prog} --help`; see the full config with "
            f"`{prog} --config ... --print_config`\n"
        )
        self.exit(2)
