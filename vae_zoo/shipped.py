"""The experiment configs and sweep files shipped with vae_zoo, and what a name such as
``mnist/vae`` means.

The repository's ``configs/`` and ``sweeps/`` folders are the only source. A source checkout
(or an editable install) reads them there; the wheel carries a copy that ``setup.py`` makes at
build time under ``vae_zoo/_files/``. A name is looked up in the working directory's
``./configs`` (``./sweeps``) first, where ``python -m vae_zoo init`` puts copies to edit, then
in the shipped folder.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from vae_zoo.errors import ConfigError

KINDS = ("configs", "sweeps")
#: where the build step copies the shipped folders inside the package
PACKAGED = "_files"
_SUFFIXES = (".yaml", ".yml")
_NAME = re.compile(r"^[\w.-]+(/[\w.-]+)*$")


def shipped_dir(kind: str) -> Path:
    """The folder of the shipped ``configs`` or ``sweeps``: the checkout's, else the wheel's."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    package = Path(__file__).resolve().parent
    checkout = package.parent
    if _is_source_checkout(checkout) and (checkout / kind).is_dir():
        return checkout / kind
    return package / PACKAGED / kind


def _is_source_checkout(root: Path) -> bool:
    # the package sits in vae_zoo's own repository (not in site-packages next to strangers)
    pyproject = root / "pyproject.toml"
    try:
        text = pyproject.read_text()
    except OSError:
        return False
    return re.search(r'^name\s*=\s*"vae_zoo"', text, re.MULTILINE) is not None


def name_of(value: str, kind: str = "configs") -> str:
    """``value`` as a name: ``configs/mnist/vae.yaml``, ``./mnist/vae.yml`` -> ``mnist/vae``."""
    name = value.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    name = name.removeprefix(f"{kind}/")
    for suffix in _SUFFIXES:
        name = name.removesuffix(suffix)
    return name


def names(kind: str, root: Path | None = None) -> list[str]:
    """Every name below ``root`` (default: the shipped folder of ``kind``), sorted."""
    root = shipped_dir(kind) if root is None else root
    if not root.is_dir():
        return []
    found = {
        p.relative_to(root).with_suffix("").as_posix()
        for p in root.rglob("*")
        if p.suffix in _SUFFIXES and p.is_file()
    }
    return sorted(found)


def search_roots(kind: str) -> list[Path]:
    """Where a name is looked up, in order: ``./<kind>``, then the shipped folder."""
    return [Path.cwd() / kind, shipped_dir(kind)]


def find_named(value: str, kind: str) -> Path | None:
    """The file a name stands for (``mnist/vae`` -> ``.../configs/mnist/vae.yaml``), or None."""
    name = name_of(value, kind)
    if not _NAME.match(name) or ".." in name.split("/"):
        return None
    for root in search_roots(kind):
        for suffix in _SUFFIXES:
            path = root / f"{name}{suffix}"
            if path.is_file():
                return path
    return None


def locate(value: str, kind: str, relative_to: Path | None = None) -> Path:
    """The file meant by ``value``: a path (from ``relative_to``, else the working directory),
    else a name; raise ConfigError naming the command that lists the names.
    """
    given = Path(value).expanduser()
    base = relative_to if relative_to is not None and not given.is_absolute() else Path()
    if (base / given).is_file():
        return base / given
    found = find_named(value, kind)
    if found is not None:
        return found
    raise ConfigError(not_found_message(value, kind, relative_to))


def not_found_message(value: str, kind: str, relative_to: Path | None = None) -> str:
    """One line saying that ``value`` is neither a file nor a name, and how to list the names."""
    name = name_of(value, kind)
    close = difflib.get_close_matches(name, names(kind), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    where = f"{relative_to}/" if relative_to is not None else ""
    noun = "config" if kind == "configs" else "sweep"
    return (
        f"{noun} '{value}' not found: no file {where}{value} and no {noun} named '{name}' in "
        f"./{kind} or the shipped {kind}{hint}; list them with `python -m vae_zoo configs`"
    )


def description(path: Path) -> str:
    """The first comment line of a YAML file (what the file is for), or ''."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""
