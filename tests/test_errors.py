"""exit_status: the one way the argparse commands turn a VAEZooError into one line and status 2."""

import pytest

from vae_zoo.errors import ConfigError, exit_status


def test_status_passes_through_and_none_is_success() -> None:
    """The body's status is the command's; a body that returns nothing succeeded."""
    assert exit_status(lambda: None) == 0
    assert exit_status(lambda: 3) == 3


def test_vae_zoo_error_is_one_line_and_status_2(capsys, monkeypatch) -> None:
    """The message goes to stderr as one ``error:`` line, nothing to stdout."""
    monkeypatch.delenv("VAE_ZOO_DEBUG", raising=False)

    def body() -> None:
        raise ConfigError("--n must be >= 1, got 0")

    assert exit_status(body) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "error: --n must be >= 1, got 0\n"


def test_debug_shows_the_traceback(monkeypatch) -> None:
    """VAE_ZOO_DEBUG=1 lets the error through, as for the Lightning commands."""
    monkeypatch.setenv("VAE_ZOO_DEBUG", "1")

    def body() -> None:
        raise ConfigError("bad")

    with pytest.raises(ConfigError):
        exit_status(body)


def test_other_errors_are_not_swallowed() -> None:
    """Only vae_zoo's own errors are the user's to fix; a bug keeps its traceback."""
    with pytest.raises(ZeroDivisionError):
        exit_status(lambda: 1 // 0)
