"""Exceptions that carry a message telling the user what to change."""


class VAEZooError(RuntimeError):
    """Base class of every error vae_zoo raises on purpose."""


class ConfigError(VAEZooError, ValueError):
    """A configuration value is invalid; the message names the key and a valid choice."""


class NonFiniteLossError(VAEZooError, FloatingPointError):
    """A training loss became NaN or infinite; the message names the step and the term."""


class CheckpointMismatchError(VAEZooError, ValueError):
    """A checkpoint was written by another variant or architecture than the one loading it."""
