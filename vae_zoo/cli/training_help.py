"""The short ``--help`` of the training commands (fit, validate, test, predict).

LightningCLI's own help lists every Trainer and callback option (about 770 lines, seconds to
build); this one names the options people use and is printed without importing torch.
``<command> --help full`` still gives LightningCLI's help.
"""

from __future__ import annotations

import textwrap

import yaml

from vae_zoo.shipped import names, shipped_dir

PROG = "python -m vae_zoo"
FULL = "full"
WIDTH = 100

_PURPOSE = {
    "fit": "Train a model.",
    "validate": "Evaluate a checkpoint on the validation split.",
    "test": "Evaluate a checkpoint on the test split (test/elbo, test/nll with test_k samples).",
    "predict": "Encode and reconstruct with a checkpoint; writes predictions.pt.",
}

_OPTIONS = [
    ("--config NAME|FILE", "an experiment (mnist/vae, fashion_mnist/cvae, ...), a piece "
     "(trainer/gpu, logger/wandb, data/fashion_mnist, model/beta_vae, ...) or a YAML file; "
     "repeat it to compose, later ones override earlier ones"),
    ("--model CLASS", "the variant, e.g. vae_zoo.models.BetaVAE (or --config model/beta_vae)"),
    ("--model.init_args.KEY=VALUE", "the variant's arguments, e.g. latent_dim=16, lr=3e-4, "
     "beta=8 (BetaVAE), prior=learned (ConditionalVAE)"),
    ("--model.help CLASS", "list a variant's arguments and defaults, e.g. --model.help BetaVAE"),
    ("--data.dataset NAME", "mnist or fashion_mnist (--config data/fashion_mnist also sets "
     "binarize)"),
    ("--data.batch_size N", "training batch size, per process"),
    ("--data.data_dir DIR", "where the data files are (default $VAE_ZOO_DATA, else ./data)"),
    ("--trainer.max_epochs N", "number of epochs"),
    ("--trainer.accelerator A", "cpu, gpu or auto (--config trainer/gpu: one GPU, data on it)"),
    ("--trainer.devices N", "devices, or processes with --trainer.strategy=ddp"),
    ("--trainer.logger", "loggers; --config logger/wandb adds Weights & Biases (metrics.csv "
     "is always written)"),
    ("--trainer.default_root_dir DIR", "the run directory (default runs/<data>/<variant>/"
     "version_N)"),
    ("--ckpt_path PATH|last|best", "fit: resume from it; the others: the checkpoint to "
     "evaluate (its run's config is used when no --config is given)"),
    ("--seed_everything N", "the seed (0 in the shipped configs)"),
    ("--print_config", "print the resolved config and exit"),
]


def model_pieces() -> list[tuple[str, str]]:
    """(piece name, model class) of every shipped ``model/*`` piece."""
    found = []
    for name in names("configs"):
        if not name.startswith("model/"):
            continue
        try:
            content = yaml.safe_load((shipped_dir("configs") / f"{name}.yaml").read_text())
            found.append((name, str(content["model"]["class_path"])))
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            continue
    return found


def _table(rows: list[tuple[str, str]]) -> list[str]:
    """Two columns, the second wrapped to the help's width."""
    width = max(len(left) for left, _ in rows)
    indent = " " * (width + 4)
    lines = []
    for left, text in rows:
        lines += textwrap.wrap(
            text, WIDTH, initial_indent=f"  {left:<{width}}  ", subsequent_indent=indent
        )
    return lines


def training_help(command: str) -> str:
    """The short help of one training command."""
    intro = (
        f"{_PURPOSE.get(command, '')} Settings come from the --config files in order, then "
        "from --KEY=VALUE flags; later ones win."
    )
    given = "--config NAME|FILE [--config ...]"
    if command != "fit":
        given = "--ckpt_path PATH|best|last [--config NAME|FILE ...]"
    lines = [
        f"usage: {PROG} {command} {given} [--KEY=VALUE ...]",
        "",
        *textwrap.wrap(intro, WIDTH),
        "",
        "common options:",
        *_table(_OPTIONS),
    ]
    pieces = model_pieces()
    if pieces:
        lines += ["", "variants (model pieces):"]
        lines += _table([(f"--config {name}", cls) for name, cls in pieces])
    lines += [
        "",
        "more:",
        *_table([
            (f"{PROG} {command} --help {FULL}", "every option (LightningCLI's help)"),
            (f"{PROG} variants", "every registered variant, one line each"),
            (f"{PROG} configs", "the shipped configs and sweeps"),
            (f"{PROG} {command} --config mnist/vae --print_config", "all settings of one run"),
        ]),
    ]
    return "\n".join(lines)
