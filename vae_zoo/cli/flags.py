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


def add_test_set_flags(
    parser: argparse.ArgumentParser, batch_size: int, batch_help: str, runs: str = "runs"
) -> None:
    """``--n_test``, ``--data_dir``, ``--dataset``, ``--device``, ``--batch_size``: which test
    images a command evaluating trained ``runs`` reads, and where it computes."""
    add_flag(parser, "--n_test", type=int, default=None, help="test images (default: all)")
    add_flag(parser, "--data_dir", default=None, help=f"data folder for the {runs} (default: "
             "the run's own setting, else $VAE_ZOO_DATA)")
    parser.add_argument("--dataset", default=None,
                        help="data set, where a run's config does not say")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda, cuda:1, mps (%(default)s)")
    add_flag(parser, "--batch_size", type=int, default=batch_size,
             help=f"{batch_help} (%(default)s)")


def add_wandb_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """``--wandb`` (log ``what`` to W&B too) and ``--wandb_project``."""
    parser.add_argument("--wandb", action="store_true",
                        help=f"also log {what} to W&B (offline without credentials)")
    add_flag(parser, "--wandb_project", default="vae_zoo", help="W&B project (%(default)s)")
