"""One spelling of flags for the argparse commands (compare, sample, data, sweep, latent).

LightningCLI spells its options with underscores (``--ckpt_path``, ``--data.data_dir``), so
the other commands do too. Their older hyphenated spellings (``--n-test``, ``--data-dir``)
stay accepted as hidden aliases, so existing scripts keep working.
"""

import argparse
from typing import Any

#: argument settings an alias shares with its flag (not its help, default or requiredness)
_SHARED = ("action", "nargs", "const", "type", "choices", "metavar")


def add_flag(
    parser: argparse.ArgumentParser | Any, flag: str, **kwargs: Any
) -> argparse.Action:
    """Add ``flag`` (``--with_underscores``) and its hyphenated spelling as a hidden alias."""
    if not flag.startswith("--") or "-" in flag[2:]:
        raise ValueError(f"flags are spelled with underscores: {flag!r}")
    action = parser.add_argument(flag, **kwargs)
    alias = "--" + flag[2:].replace("_", "-")
    if alias != flag:
        shared = {k: v for k, v in kwargs.items() if k in _SHARED}
        # SUPPRESS as default: the alias must not overwrite the flag's default
        parser.add_argument(
            alias, dest=action.dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **shared
        )
    return action
