"""``python -m vae_zoo variants``: every registered variant, one line each, and its configs.

The list comes from the registry (:mod:`vae_zoo.models.registry`), so a variant added in its
own file, or by an installed plugin, appears with no edit here; ``--import MODULE`` imports a
module of yours first, so that its variants register.
"""

import argparse
import importlib
import sys

from vae_zoo.shipped import names

PROG = "python -m vae_zoo variants"


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``variants``."""
    p = argparse.ArgumentParser(prog=PROG, description="List the registered VAE variants.")
    p.add_argument("--import", dest="modules", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (a file of your own variants); repeatable")
    return p


def variant_lines() -> list[str]:
    """One line per registered variant: name, class, first docstring line, shipped configs."""
    from vae_zoo.models import list_models
    from vae_zoo.models.registry import summary

    configs = set(names("configs"))
    rows = []
    for name, cls in list_models().items():
        shipped = [f"{d}/{name}" for d in ("mnist", "fashion_mnist") if f"{d}/{name}" in configs]
        where = f" (--config {', '.join(shipped)})" if shipped else ""
        rows.append((name, cls.__name__, summary(cls) + where))
    name_w = max(len(n) for n, _, _ in rows)
    cls_w = max(len(c) for _, c, _ in rows)
    return [f"{n:<{name_w}}  {c:<{cls_w}}  {text}" for n, c, text in rows]


def main(argv: list[str] | None = None) -> int:
    """Print the registered variants; exit 2 when a module to import cannot be imported."""
    args = build_parser().parse_args(argv)
    for module in args.modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            print(f"error: --import {module}: {err}", file=sys.stderr)
            return 2
    print("\n".join(variant_lines()))
    return 0
