"""``python -m vae_zoo configs`` lists (or shows) the shipped configs and sweep files;
``python -m vae_zoo init DIR`` copies them into DIR to edit.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
from pathlib import Path

import yaml

from vae_zoo.errors import ConfigError
from vae_zoo.shipped import KINDS, description, find_named, names, not_found_message, shipped_dir

PROG = "python -m vae_zoo"
WIDTH = 100


def is_experiment(path: Path) -> bool:
    """Whether a config file is an experiment (a list of pieces) rather than a piece."""
    try:
        return isinstance(yaml.safe_load(path.read_text()), list)
    except (OSError, yaml.YAMLError):
        return False


def listing() -> str:
    """The shipped experiments, pieces and sweeps, one per line with what each is for."""
    root = shipped_dir("configs")
    experiments, pieces = [], []
    for name in names("configs"):
        path = root / f"{name}.yaml"
        (experiments if is_experiment(path) else pieces).append((name, description(path)))
    sweeps = [(n, description(shipped_dir("sweeps") / f"{n}.yaml")) for n in names("sweeps")]
    width = max(len(n) for n, _ in [*experiments, *pieces, *sweeps, ("", "")])

    def rows(found: list[tuple[str, str]]) -> list[str]:
        room = WIDTH - width - 4
        short = [(n, textwrap.shorten(d, room, placeholder=" ...")) for n, d in found]
        return [f"  {n:<{width}}  {d}" for n, d in short]

    lines = [f"experiments ({PROG} fit --config NAME):", *rows(experiments), ""]
    lines += ["pieces (add with another --config NAME; later ones override earlier ones):"]
    lines += [*rows(pieces), "", f"sweeps ({PROG} sweep NAME):", *rows(sweeps), ""]
    notes = (
        "A name is looked up in ./configs (./sweeps) first: "
        f"`{PROG} init DIR` copies these files there to edit; --config also takes any YAML "
        f"file. Show one with `{PROG} configs NAME`, the resolved settings with "
        f"`{PROG} fit --config NAME --print_config`."
    )
    notes_lines = textwrap.wrap(notes, WIDTH, break_on_hyphens=False)
    return "\n".join([*lines, f"shipped in {root.parent}", *notes_lines])


def list_main(argv: list[str] | None = None) -> int:
    """``configs [NAME]``: list the shipped files, or print the file that NAME stands for."""
    parser = argparse.ArgumentParser(
        prog=f"{PROG} configs",
        description="List the shipped experiment configs, pieces and sweep files, or show one.",
    )
    parser.add_argument("name", nargs="?", help="a config or sweep name, e.g. mnist/vae")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.name is None:
        print(listing())
        return 0
    for kind in KINDS:
        path = find_named(args.name, kind)
        if path is not None:
            print(f"# {path}")
            print(path.read_text(), end="")
            return 0
    print(f"error: {not_found_message(args.name, 'configs')}", file=sys.stderr)
    return 2


def copy_shipped(target: Path, force: bool = False) -> list[Path]:
    """Copy the shipped ``configs/`` and ``sweeps/`` into ``target``; returns the files written.

    Raises ConfigError before writing anything if a file exists there and ``force`` is False.
    """
    plan = [
        (shipped_dir(kind) / f"{name}.yaml", target / kind / f"{name}.yaml")
        for kind in KINDS
        for name in names(kind)
    ]
    if not plan:
        raise ConfigError(f"no shipped configs found in {shipped_dir('configs')}")
    existing = [dest for _, dest in plan if dest.exists()]
    if existing and not force:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise ConfigError(
            f"{existing[0]}{more} already exist; choose another folder, or add --force to "
            "overwrite them"
        )
    for source, dest in plan:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
    return [dest for _, dest in plan]


def init_main(argv: list[str] | None = None) -> int:
    """``init [DIR]``: copy the shipped configs and sweeps into DIR/configs and DIR/sweeps."""
    parser = argparse.ArgumentParser(
        prog=f"{PROG} init",
        description="Copy the shipped configs/ and sweeps/ into a folder, to edit them.",
    )
    parser.add_argument("dir", nargs="?", default=".", help="target folder (default: here)")
    parser.add_argument("--force", action="store_true", help="overwrite files that exist")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    target = Path(args.dir)
    try:
        written = copy_shipped(target, force=args.force)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} files to {target / 'configs'} and {target / 'sweeps'}")
    where = "" if target.resolve() == Path.cwd().resolve() else f"cd {target} && "
    print(
        f"edit them, then run e.g. `{where}{PROG} fit --config mnist/vae`: "
        "names are looked up in ./configs before the shipped files"
    )
    return 0
