"""The ``python -m vae_zoo`` command line: training commands (LightningCLI) and the others."""

from vae_zoo.cli.main import COMMANDS, main

__all__ = ["COMMANDS", "VAEZooCLI", "main"]


def __getattr__(name: str) -> object:
    # VAEZooCLI pulls in Lightning and the data module; `--help` and `data` do not need them
    if name == "VAEZooCLI":
        from vae_zoo.cli.lightning_cli import VAEZooCLI

        return VAEZooCLI
    raise AttributeError(f"module 'vae_zoo.cli' has no attribute {name!r}")
