"""Exceptions that carry a message telling the user what to change, and how commands exit."""

import os
import sys
from collections.abc import Callable


class VAEZooError(RuntimeError):
    """Base class of every error vae_zoo raises on purpose."""


class ConfigError(VAEZooError, ValueError):
    """A configuration value is invalid; the message names the key and a valid choice."""


class NonFiniteLossError(VAEZooError, FloatingPointError):
    """A training loss became NaN or infinite; the message names the step and the term."""


class CheckpointMismatchError(VAEZooError, ValueError):
    """A checkpoint was written by another variant or architecture than the one loading it."""


def exit_status(command: Callable[[], int | None]) -> int:
    """Run a command's body; a :class:`VAEZooError` becomes one ``error:`` line and status 2.

    ``None`` from the body means success (0). ``VAE_ZOO_DEBUG=1`` lets the error propagate
    with its traceback instead.
    """
    try:
        status = command()
    except VAEZooError as err:
        if os.environ.get("VAE_ZOO_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0 if status is None else status
