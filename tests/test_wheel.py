"""The built wheel works outside the checkout: it ships the configs and sweeps, installs into a
fresh virtual environment and trains a few batches by config name from an empty folder.

Offline and quick: the wheel is built without build isolation from a copy of the source, and the
environment reuses the installed torch, lightning, ... (``--system-site-packages``,
``--no-deps``), so only vae_zoo itself comes from the wheel.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from cli_support import ROOT, TINY, tiny_data

from vae_zoo.runs import RUN_DIR_ENV

pytestmark = [pytest.mark.wheel, pytest.mark.slow]

#: what a checkout may hold that the build neither needs nor should see: at its root...
NOT_SOURCE_AT_ROOT = {
    ".git", ".venv", "build", "dist", "runs", "data", "outputs", "wandb", "lightning_logs",
}
#: ... and anywhere
NOT_SOURCE = shutil.ignore_patterns(
    "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", "*.ckpt"
)
#: `python -m vae_zoo` with the tiny data sets' checksums registered (the real ones would
#: reject them); everything else exactly as the installed package runs
MAIN_WITH_TINY_DATA = (
    "import json, os, runpy, sys\n"
    "from vae_zoo.data import CHECKSUMS\n"
    "CHECKSUMS.update(json.loads(os.environ['TINY_CHECKSUMS']))\n"
    "sys.argv = ['vae_zoo', *sys.argv[1:]]\n"
    "runpy.run_module('vae_zoo', run_name='__main__', alter_sys=True)\n"
)
TIMEOUT_S = 300


def _not_source(folder: str, names: list[str]) -> set[str]:
    ignored = set(NOT_SOURCE(folder, names))
    return ignored | (NOT_SOURCE_AT_ROOT & set(names) if Path(folder) == ROOT else set())


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{argv} exit {proc.returncode}:\n{output[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of this checkout (the build writes build/ and egg-info)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=_not_source)
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", "-w", str(tmp / "dist"), str(source)],
        cwd=tmp, env=dict(os.environ),
    )
    (built,) = (tmp / "dist").glob("vae_zoo-*.whl")
    return built


def test_wheel_ships_every_config_and_sweep_file(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        files = {name: whl.read(name) for name in whl.namelist()}
    assert "vae_zoo/py.typed" in files
    assert "vae_zoo/cli/config_args.py" in files and "vae_zoo/__main__.py" in files
    for kind in ("configs", "sweeps"):
        source = {p.relative_to(ROOT / kind).as_posix(): p for p in (ROOT / kind).rglob("*.yaml")}
        prefix = f"vae_zoo/_files/{kind}/"
        shipped = {n.removeprefix(prefix): n for n in files if n.startswith(prefix)}
        assert set(shipped) == set(source), kind
        for name, path in source.items():
            assert files[shipped[name]] == path.read_bytes(), f"{kind}/{name} differs"
    assert not any(n.startswith(("tests/", "configs/", "sweeps/")) for n in files)


def test_installed_wheel_trains_by_config_name_from_an_empty_folder(
    wheel: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
         cwd=tmp_path, env=dict(os.environ))
    python = venv / "bin" / "python"
    inherited = ("PYTHONPATH", "LOCAL_RANK", RUN_DIR_ENV)  # the checkout must not be importable
    env = {k: v for k, v in os.environ.items() if k not in inherited}
    # pip comes from the system site-packages and installs into the environment that runs it
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)],
         cwd=tmp_path, env=env)

    work = tmp_path / "empty"
    work.mkdir()
    where = _run([str(python), "-c", "import vae_zoo; print(vae_zoo.__file__)"], work, env)
    package = Path(where.strip()).parent
    assert package.is_relative_to(venv), f"imported {package}, not the installed wheel"

    version = _run([str(venv / "bin" / "vae-zoo"), "--version"], work, env).splitlines()
    assert version[0].startswith("vae_zoo ") and version[1].startswith("torch ")
    listing = _run([str(python), "-m", "vae_zoo", "configs"], work, env)
    assert "mnist/vae " in listing and f"shipped in {package / '_files'}\n" in listing

    data, sums = tiny_data(tmp_path_factory)
    env |= {"VAE_ZOO_DATA": str(data), "TINY_CHECKSUMS": json.dumps(sums),
            "WANDB_MODE": "disabled"}
    args = ["fit", "--config", "mnist/vae", "--config", "trainer/cpu", *TINY]
    out = _run([str(python), "-c", MAIN_WITH_TINY_DATA, *args], work, env)
    run_dir = work / "runs" / "mnist" / "vae" / "version_0"
    assert "results in runs/mnist/vae/version_0" in out
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["class_path"] == "vae_zoo.models.VAE"
    assert saved["trainer"]["accelerator"] == "cpu" and saved["data"]["dataset"] == "mnist"
    assert sorted(p.name for p in work.iterdir()) == ["runs"]  # nothing else written here
