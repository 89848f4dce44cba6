"""``--config`` values: config names resolved to files, experiment files expanded to their pieces.

An experiment file (``configs/mnist/beta_vae.yaml``) is a YAML *list* of pieces::

    - ../base.yaml
    - ../data/mnist.yaml
    - ../model/beta_vae.yaml

and ``--config mnist/beta_vae`` means exactly ``--config .../base.yaml --config
.../data/mnist.yaml --config .../model/beta_vae.yaml``: LightningCLI merges several
``--config`` key by key, later ones overriding earlier ones (a piece that changes
``model.class_path`` keeps the init args the new class accepts). jsonargparse's own nesting
(``model: other.yaml`` or ``config: other.yaml`` inside a file) replaces a whole top-level
section instead, so a base and a piece could not both set parts of ``model``; hence the list.

A piece is a path relative to the listing file or a config name; an item that is a mapping is
an inline config (paths inside it are read from the working directory).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from vae_zoo.errors import ConfigError
from vae_zoo.shipped import locate

CONFIG_FLAGS = ("-c", "--config")


def expand_config_args(args: list[str]) -> list[str]:
    """``args`` with each ``--config`` value resolved to a file and experiment lists expanded."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in CONFIG_FLAGS and i + 1 < len(args):
            value, flag, i = args[i + 1], arg, i + 2
        elif arg.startswith(tuple(f"{f}=" for f in CONFIG_FLAGS)):
            flag, value = arg.split("=", 1)
            i += 1
        else:
            out.append(arg)
            i += 1
            continue
        for piece in config_files(value):
            out += [flag, piece]
    return out


def config_files(
    value: str, relative_to: Path | None = None, seen: tuple[Path, ...] = ()
) -> list[str]:
    """The ``--config`` values that ``value`` stands for, in order (one unless it is a list)."""
    if _is_inline(value):
        return [value]  # a YAML/JSON string, not a file: jsonargparse parses it
    path = Path(os.path.normpath(locate(value, "configs", relative_to)))
    if path.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, path.resolve()))
        raise ConfigError(f"experiment files include each other in a circle: {chain}")
    pieces = _list_of_pieces(path)
    if pieces is None:
        return [str(path)]
    files: list[str] = []
    for item in pieces:
        if isinstance(item, str):
            files += config_files(item, path.parent, (*seen, path.resolve()))
        elif isinstance(item, dict):
            files.append(json.dumps(item))
        else:
            raise ConfigError(
                f"{path}: a list item must be a piece (a path or a config name) or a mapping "
                f"of settings, got {item!r}"
            )
    return files


def _list_of_pieces(path: Path) -> list | None:
    """The file's list of pieces, or None when it is an ordinary config (a mapping)."""
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None  # jsonargparse reads it again and reports the problem with the file
    return content if isinstance(content, list) else None


def _is_inline(value: str) -> bool:
    # jsonargparse also accepts the config itself as the value, e.g. '{"trainer": {...}}'
    text = value.strip()
    return text.startswith(("{", "[")) or "\n" in text or ": " in text
