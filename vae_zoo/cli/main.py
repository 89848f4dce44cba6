"""``python -m vae_zoo <command>``: one entry point for training, data, comparison and sweeps.

The training commands (fit, validate, test, predict) are :class:`VAEZooCLI`; the others are
``main(argv) -> int`` functions (or ``module:function``) of their own modules, imported only
when asked for.
Errors vae_zoo raises on purpose print as ``error: <message>`` with exit status 2;
``VAE_ZOO_DEBUG=1`` shows the traceback instead.
"""

import difflib
import importlib
import os
import platform
import sys
from collections.abc import Callable
from importlib import metadata

from vae_zoo import __version__, runs

PROG = "python -m vae_zoo"

#: command -> (module with ``main(argv) -> int`` or ``module:function``, or None for the
#: LightningCLI commands; help)
COMMANDS: dict[str, tuple[str | None, str]] = {
    "fit": (None, "train a model: fit --config mnist/vae"),
    "validate": (None, "evaluate a checkpoint on the validation split"),
    "test": (None, "evaluate a checkpoint on the test split (test/nll, test/elbo, fid_clf, ...)"),
    "predict": (None, "encode and reconstruct with a checkpoint; writes predictions.pt"),
    "data": ("vae_zoo.data.cli", "fetch or verify the MNIST / Fashion-MNIST files"),
    "compare": ("vae_zoo.evaluation.compare", "evaluate runs on the same test images side by side"),
    "sample": ("vae_zoo.evaluation.sample", "save a grid of a checkpoint's prior samples as PNG"),
    "latent": ("vae_zoo.evaluation.latent", "draw a run's latent space (scatter, manifold, paths)"),
    "sweep": ("vae_zoo.sweep.cli", "run a W&B sweep file offline (grid/random/bayes), rank runs"),
    "classifier": (
        "vae_zoo.evaluation.classifier",
        "train and cache the CNN classifier behind compare's cond_acc/recon_acc",
    ),
    "variants": ("vae_zoo.cli.variants", "list the registered variants, one line each"),
    "configs": ("vae_zoo.cli.configs:list_main", "list the shipped configs and sweeps or show one"),
    "init": ("vae_zoo.cli.configs:init_main", "copy the shipped configs and sweeps to DIR to edit"),
}
#: the distributions whose versions ``--version`` prints (bug reports need them)
VERSIONED = ("torch", "lightning", "wandb", "jsonargparse")


def help_text() -> str:
    """The top-level help: every command with one line."""
    width = max(map(len, COMMANDS))
    lines = [
        f"usage: {PROG} <command> [options]",
        "",
        "Variational autoencoder experiments on MNIST and Fashion-MNIST (`variants` lists them).",
        "",
        "commands:",
        *(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()),
        "",
        f"Run `{PROG} <command> --help` for the options of one command, "
        f"`{PROG} --version` for the versions in use.",
        f"Quick start: {PROG} fit --config mnist/vae",
    ]
    return "\n".join(lines)


def version_text() -> str:
    """vae_zoo's version and those of the libraries it runs on, one per line."""
    lines = [f"vae_zoo {__version__}"]
    for name in VERSIONED:
        try:
            lines.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            lines.append(f"{name} not installed")
    lines.append(f"python {platform.python_version()} ({platform.system()} {platform.machine()})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(help_text())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(version_text())
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
        if any(a in ("-h", "--help") for a in rest):
            return _training_help(command, rest)
        return _guarded(lambda: _train(command, rest))
    target = _load_command(command, module)
    if target is None:
        return 2
    return _guarded(lambda: target(rest))


def _train(command: str, rest: list[str]) -> int:
    from vae_zoo.cli.lightning_cli import VAEZooCLI

    VAEZooCLI(args=[command, *with_run_config(rest)])
    return 0


def _training_help(command: str, rest: list[str]) -> int:
    """The short help; ``--help full`` gives LightningCLI's own (every option)."""
    from vae_zoo.cli.training_help import FULL, training_help

    at = next(i for i, a in enumerate(rest) if a in ("-h", "--help"))
    if rest[at + 1 : at + 2] == [FULL]:
        # the --config files before it still set the defaults that the full help shows
        return _guarded(lambda: _train(command, [*rest[:at], "--help", *rest[at + 2 :]]))
    print(training_help(command))
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
    if not ckpt or ckpt in runs.ALIASES:
        return args
    config = runs.config_file(runs.run_dir_of_checkpoint(ckpt))
    if config is None:
        return args
    print(f"using the run's config {config}", file=sys.stderr)
    return ["--config", str(config), *args]


def _load_command(command: str, target_path: str) -> Callable[[list[str]], int] | None:
    module, _, function = target_path.partition(":")
    try:
        target = getattr(importlib.import_module(module), function or "main")
    except ModuleNotFoundError as err:
        if err.name and module.startswith(err.name):
            print(f"error: the '{command}' command is not available in this installation "
                  f"({module} is missing)", file=sys.stderr)
            return None
        raise
    except AttributeError:
        print(f"error: the '{command}' command is not available ({module} has no "
              f"{function or 'main'}())",
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
