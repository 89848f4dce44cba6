"""The Lightning behaviour :mod:`vae_zoo.lightning_compat` relies on, checked on the installed one.

A failure here means Lightning changed under vae_zoo: the message names the item of
``vae_zoo/lightning_compat.py`` to revisit.
"""

from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LightningCLI

from vae_zoo import lightning_compat


class Tiny(LightningModule):
    """The smallest module LightningCLI can build: its width is its only hyper-parameter."""

    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(width, 1)


class _Stop(Exception):
    """Raised by the probe once it has seen what it needs, before anything is built."""


class Probe(LightningCLI):
    """Records the order of the hooks and the model config that reaches the classes."""

    def __init__(self, *args: object, stash: bool, **kwargs: object) -> None:
        self.stash = stash
        self.calls: list[str] = []
        self.width: int | None = None
        super().__init__(*args, **kwargs)

    def parse_arguments(self, parser: object, args: object) -> None:
        super().parse_arguments(parser, args)
        self.calls.append("parse_arguments")
        if self.stash:
            self.stashed = lightning_compat.stash_ckpt_path(self.config.fit)

    def before_instantiate_classes(self) -> None:
        self.calls.append("before_instantiate_classes")
        self.width = self.config.fit.model.width
        if self.stash:
            lightning_compat.restore_ckpt_path(self.config.fit, self.stashed)
        raise _Stop


def probe(ckpt: Path, stash: bool) -> Probe:
    """Run the probe on ``fit --model.width=3 --ckpt_path <a checkpoint of width 5>``."""
    cli = Probe.__new__(Probe)
    with pytest.raises(_Stop):
        Probe.__init__(cli, Tiny, args=["fit", "--model.width=3", f"--ckpt_path={ckpt}"],
                       stash=stash, save_config_callback=None)
    return cli


def test_item_1_lightning_cli_merges_checkpoint_hparams_between_two_public_hooks(
    tmp_path: Path,
) -> None:
    ckpt = tmp_path / "width5.ckpt"
    torch.save({"hyper_parameters": {"width": 5}, "state_dict": {}}, ckpt)

    plain = probe(ckpt, stash=False)
    assert plain.calls == ["parse_arguments", "before_instantiate_classes"], (
        "lightning_compat item 1: LightningCLI no longer calls parse_arguments and then "
        "before_instantiate_classes"
    )
    assert plain.width == 5, (
        "lightning_compat item 1: LightningCLI no longer merges a --ckpt_path checkpoint's "
        "hyper-parameters into the config before before_instantiate_classes; the stash may go, "
        "or the merge moved where the stash does not reach"
    )

    stashed = probe(ckpt, stash=True)
    assert stashed.width == 3, (
        "lightning_compat item 1: with ckpt_path stashed, LightningCLI still merged the "
        "checkpoint's hyper-parameters (it reads the path from somewhere else now)"
    )
    assert stashed.config.fit.ckpt_path == str(ckpt)  # given back for Trainer.fit
