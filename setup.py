"""Build hook: the wheel ships the repository's ``configs/`` and ``sweeps/`` inside the package.

The folders at the repository root stay the only source; ``build_py`` copies them to
``vae_zoo/_files/{configs,sweeps}`` in the build directory (never into the source tree), where
:mod:`vae_zoo.shipped` finds them in an installed wheel. Everything else is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = ("configs", "sweeps")
TARGET = ("vae_zoo", "_files")  # vae_zoo.shipped.PACKAGED


class BuildPyWithConfigs(build_py):
    """``build_py`` that also copies the YAML files of ``configs/`` and ``sweeps/``."""

    def run(self) -> None:
        """Build the package, then add the shipped folders (not for editable installs)."""
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads configs/ and sweeps/ from the checkout
        for name in SHIPPED:
            source = ROOT / name
            if not source.is_dir():
                raise FileNotFoundError(f"{source} is missing: the wheel must ship it")
            target = Path(self.build_lib, *TARGET, name)
            shutil.rmtree(target, ignore_errors=True)
            for path in sorted(source.rglob("*.yaml")):
                dest = target / path.relative_to(source)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)


setup(cmdclass={"build_py": BuildPyWithConfigs})
