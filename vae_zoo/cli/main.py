"""``python -m vae_zoo <command>``: one entry point for training, data, comparison and sweeps.

The training commands (fit, validate, test, predict) are :class:`VAEZooCLI`; the others are
``main(argv) -> int`` functions of their own modules, imported only when asked for.
Errors vae_zoo raises on purpose print as ``error: <message>`` with exit status 2;
``VAE_ZOO_DEBUG=1`` shows the traceback instead.
"""

import difflib
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from vae_zoo import __version__

PROG = "python -m vae_zoo"

#: command -> (module with ``main(argv) -> int``, or None for the LightningCLI commands; help)
COMMANDS: dict[str, tuple[str | None, str]] = {
    "fit": (None, "train a model: fit --config configs/mnist/vae.yaml"),
    "validate": (None, "evaluate a checkpoint on the validation split"),
    "test": (None, "evaluate a checkpoint on the test split (test/nll, test/elbo, fid_clf, ...)"),
    "predict": (None, "encode and reconstruct with a checkpoint; writes predictions.pt"),
    "data": ("vae_zoo.data.cli", "fetch or verify the MNIST / Fashion-MNIST files"),
    "compare": ("vae_zoo.evaluation.compare", "evaluate runs on the same test images side by side"),
    "sample": ("vae_zoo.evaluation.sample", "save a grid of a checkpoint's prior samples as PNG"),
    "latent": ("vae_zoo.evaluation.latent", "draw a run's latent space (scatter, manifold, paths)"),
    "sweep": ("vae_zoo.sweep.cli", "run a W&B sweep file offline (grid/random/bayes), rank runs"),
}


def help_text() -> str:
    """The top-level help: every command with one line."""
    width = max(map(len, COMMANDS))
    lines = [
        f"usage: {PROG} <command> [options]",
        "",
        "VAE, beta-VAE and conditional VAE experiments on MNIST and Fashion-MNIST.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()),
        "",
        f"Run `{PROG} <command> --help` for the options of one command.",
        f"Quick start: {PROG} fit --config configs/mnist/vae.yaml",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(help_text())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"vae_zoo {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"error: unknown command '{command}'{hint}; choose one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module = COMMANDS[command][0]
    if module is None:
        return _guarded(lambda: _train(command, rest))
    target = _load_command(command, module)
    if target is None:
        return 2
    return _guarded(lambda: target(rest))


def _train(command: str, rest: list[str]) -> int:
    from vae_zoo.cli.lightning_cli import VAEZooCLI

    VAEZooCLI(args=[command, *with_run_config(rest)])
    return 0


def with_run_config(args: list[str]) -> list[str]:
    """Add ``--config <run>/config.yaml`` when only a run's checkpoint is given.

    ``test --ckpt_path runs/mnist/vae/version_0/checkpoints/best.ckpt`` then needs no config.
    """
    if any(a in ("-c", "--config") or a.startswith(("--config=", "-c=")) for a in args):
        return args
    ckpt = None
    for i, arg in enumerate(args):
        if arg.startswith("--ckpt_path="):
            ckpt = arg.split("=", 1)[1]
        elif arg == "--ckpt_path" and i + 1 < len(args):
            ckpt = args[i + 1]
    if not ckpt or ckpt in ("last", "best"):
        return args
    path = Path(ckpt)
    config = path.parent.parent / "config.yaml" if path.parent.name == "checkpoints" else None
    if config is None or not config.is_file():
        return args
    print(f"using the run's config {config}", file=sys.stderr)
    return ["--config", str(config), *args]


def _load_command(command: str, module: str) -> Callable[[list[str]], int] | None:
    try:
        target = importlib.import_module(module).main
    except ModuleNotFoundError as err:
        if err.name and module.startswith(err.name):
            print(f"error: the '{command}' command is not available in this installation "
                  f"({module} is missing)", file=sys.stderr)
            return None
        raise
    except AttributeError:
        print(f"error: the '{command}' command is not available ({module} has no main())",
              file=sys.stderr)
        return None
    return target


def _guarded(run: Callable[[], int | None]) -> int:
    """Run a command, turning deliberate errors into one line and an exit status."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from vae_zoo.errors import VAEZooError

    expected: tuple[type[BaseException], ...] = (VAEZooError, MisconfigurationException)
    expected += _data_errors()
    try:
        return int(run() or 0)
    except SystemExit as exit_:
        if isinstance(exit_, SIGTERMException):
            print("error: stopped by SIGTERM; resume with --ckpt_path last", file=sys.stderr)
            return 143
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except Exception as err:
        # jsonargparse wraps errors raised while building the model in its own ValueError
        cause = _find_cause(err, expected)
        if cause is None or os.environ.get("VAE_ZOO_DEBUG"):
            raise
        print(f"error: {cause}", file=sys.stderr)
        print("(set VAE_ZOO_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 2


def _find_cause(
    err: BaseException | None, kinds: tuple[type[BaseException], ...]
) -> BaseException | None:
    """The first exception of ``kinds`` in the chain of causes of ``err``."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, kinds):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _data_errors() -> tuple[type[BaseException], ...]:
    try:
        from vae_zoo.data import DataUnavailableError
    except ImportError:
        return ()
    return (DataUnavailableError,)
