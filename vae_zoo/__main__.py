"""Entry point of ``python -m vae_zoo`` and of the ``vae-zoo`` script."""

import sys

from vae_zoo.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
