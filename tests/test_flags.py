"""One spelling of flags: underscores, as LightningCLI's, with the old hyphens as hidden aliases."""

import argparse

import pytest

from vae_zoo.cli.flags import add_flag
from vae_zoo.data import cli as data_cli
from vae_zoo.evaluation import classifier, compare, latent, sample
from vae_zoo.sweep import cli as sweep_cli


def _parsers() -> dict[str, argparse.ArgumentParser]:
    data = data_cli.build_parser()
    subs = next(a for a in data._actions if isinstance(a, argparse._SubParsersAction))
    return {
        "compare": compare.build_parser(),
        "latent": latent.build_parser(),
        "sample": sample.build_parser(),
        "sweep": sweep_cli.build_parser(),
        "data fetch": subs.choices["fetch"],
        "data verify": subs.choices["verify"],
        "classifier": classifier.build_parser(),
    }


@pytest.mark.parametrize("command", list(_parsers()))
def test_every_visible_flag_is_spelled_with_underscores(command: str) -> None:
    parser = _parsers()[command]
    visible = [
        option
        for action in parser._actions
        if action.help != argparse.SUPPRESS
        for option in action.option_strings
        if option.startswith("--")
    ]
    assert visible and all("-" not in o[2:] for o in visible), visible
    help_text = parser.format_help()
    hidden = [o for a in parser._actions if a.help == argparse.SUPPRESS for o in a.option_strings]
    assert all(alias not in help_text for alias in hidden)


@pytest.mark.parametrize(
    ("command", "new", "old", "value"),
    [
        ("compare", ["run", "--n_test", "7"], ["run", "--n-test", "7"], ("n_test", 7)),
        ("compare", ["run", "--data_dir", "d"], ["run", "--data-dir", "d"], ("data_dir", "d")),
        ("compare", ["run", "--fid_samples", "9"], ["run", "--fid-samples", "9"],
         ("fid_samples", 9)),
        ("sweep", ["f.yaml", "--no_compare"], ["f.yaml", "--no-compare"], ("no_compare", True)),
        ("sweep", ["f.yaml", "--compare_n_test", "5"], ["f.yaml", "--compare-n-test", "5"],
         ("compare_n_test", 5)),
        ("data fetch", ["--no_download"], ["--no-download"], ("download", False)),
        ("classifier", ["--dataset", "mnist", "--batch_size", "3"],
         ["--dataset", "mnist", "--batch-size", "3"], ("batch_size", 3)),
        ("latent", ["run", "--out", "o", "--wandb_project", "p"],
         ["run", "--out", "o", "--wandb-project", "p"], ("wandb_project", "p")),
    ],
)
def test_old_hyphen_spellings_still_work(
    command: str, new: list[str], old: list[str], value: tuple[str, object]
) -> None:
    parser = _parsers()[command]
    parsed_new, parsed_old = vars(parser.parse_args(new)), vars(parser.parse_args(old))
    assert parsed_new == parsed_old
    assert parsed_new[value[0]] == value[1]


def test_defaults_survive_the_alias() -> None:
    parser = argparse.ArgumentParser()
    add_flag(parser, "--batch_size", type=int, default=100)
    assert parser.parse_args([]).batch_size == 100
    assert parser.parse_args(["--batch-size", "5"]).batch_size == 5
    with pytest.raises(ValueError, match="underscores"):
        add_flag(parser, "--n-test")
