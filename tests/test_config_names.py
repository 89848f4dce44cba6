"""Config names (``--config mnist/vae``), experiment lists; ``configs``, ``init``."""

import json
from pathlib import Path

import pytest
import yaml
from cli_support import CONFIGS, ROOT, TINY, enter_workdir, resolved, run

from vae_zoo import shipped
from vae_zoo.cli.config_args import config_files, expand_config_args
from vae_zoo.errors import ConfigError

SWEEPS = ROOT / "sweeps"


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory outside the repository."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_shipped_folders_are_the_repository_ones() -> None:
    # in a checkout the source folders are read directly: no copy to keep in sync
    assert shipped.shipped_dir("configs") == CONFIGS
    assert shipped.shipped_dir("sweeps") == SWEEPS
    assert "mnist/vae" in shipped.names("configs")
    assert "beta_vae_mnist" in shipped.names("sweeps")


@pytest.mark.parametrize(
    "value", ["mnist/vae", "mnist/vae.yaml", "configs/mnist/vae.yaml", "./configs/mnist/vae.yml"]
)
def test_a_name_is_found_from_any_folder(elsewhere: Path, value: str) -> None:
    assert shipped.locate(value, "configs") == CONFIGS / "mnist" / "vae.yaml"


def test_an_existing_file_wins_over_a_name(elsewhere: Path) -> None:
    mine = elsewhere / "mnist" / "vae.yaml"
    mine.parent.mkdir()
    mine.write_text("trainer:\n  max_epochs: 1\n")
    assert shipped.locate("mnist/vae.yaml", "configs") == Path("mnist/vae.yaml")


def test_local_configs_folder_comes_before_the_shipped_one(elsewhere: Path) -> None:
    local = elsewhere / "configs" / "mnist" / "vae.yaml"
    local.parent.mkdir(parents=True)
    local.write_text("- ../base.yaml\n")
    assert shipped.locate("mnist/vae", "configs") == local
    assert shipped.locate("mnist/cvae", "configs") == CONFIGS / "mnist" / "cvae.yaml"


def test_an_experiment_expands_to_its_pieces_in_order(elsewhere: Path) -> None:
    files = config_files("mnist/beta_vae")
    assert [Path(f) for f in files] == [
        CONFIGS / "base.yaml", CONFIGS / "data" / "mnist.yaml", CONFIGS / "model" / "beta_vae.yaml"
    ]
    args = expand_config_args(["fit", "--config", "fashion_mnist/vae", "-c=trainer/cpu", "--x=1"])
    assert args == [
        "fit",
        "--config", str(CONFIGS / "base.yaml"),
        "--config", str(CONFIGS / "data" / "fashion_mnist.yaml"),
        "--config", str(CONFIGS / "model" / "vae.yaml"),
        "-c", str(CONFIGS / "trainer" / "cpu.yaml"),
        "--x=1",
    ]


def test_an_inline_config_string_is_left_to_jsonargparse() -> None:
    assert config_files('{"trainer": {"max_epochs": 2}}') == ['{"trainer": {"max_epochs": 2}}']


def test_own_experiment_lists_names_paths_and_settings(tmp_path: Path) -> None:
    (tmp_path / "short.yaml").write_text("trainer:\n  max_epochs: 3\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        "- mnist/cvae\n- short.yaml\n- model:\n    init_args:\n      latent_dim: 4\n"
    )
    assert config_files(str(exp))[-2:] == [
        str(tmp_path / "short.yaml"), json.dumps({"model": {"init_args": {"latent_dim": 4}}})
    ]
    cfg = resolved("--config", str(exp), "--data.batch_size=7")
    assert cfg["model"]["class_path"] == "vae_zoo.models.ConditionalVAE"
    assert cfg["model"]["init_args"]["latent_dim"] == 4
    assert cfg["trainer"]["max_epochs"] == 3 and cfg["data"]["batch_size"] == 7
    assert cfg["data"]["dataset"] == "mnist" and cfg["model"]["init_args"]["num_classes"] == 10


def test_experiments_that_include_each_other_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("- b.yaml\n")
    (tmp_path / "b.yaml").write_text("- a.yaml\n")
    with pytest.raises(ConfigError, match="circle"):
        config_files(str(tmp_path / "a.yaml"))


def test_a_bad_list_item_is_named(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("- 3\n")
    with pytest.raises(ConfigError, match="a list item must be a piece"):
        config_files(str(tmp_path / "a.yaml"))
    (tmp_path / "b.yaml").write_text("- no_such_piece.yaml\n")
    with pytest.raises(ConfigError, match=r"config 'no_such_piece.yaml' not found: no file "):
        config_files(str(tmp_path / "b.yaml"))


def test_unknown_config_name_is_one_line_with_the_fix(
    elsewhere: Path, capsys: pytest.CaptureFixture
) -> None:
    assert run("fit", "--config", "mnist/vea") == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: config 'mnist/vea' not found")
    assert "did you mean mnist/vae?" in err[0] and "python -m vae_zoo configs" in err[0]
    assert len(err) <= 2 and not any("Traceback" in line for line in err)


def test_fit_by_name_from_an_empty_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    assert run("fit", "--config", "mnist/vae", "--config", "trainer/cpu", *TINY) == 0
    saved = yaml.safe_load(Path("runs/mnist/vae/version_0/config.yaml").read_text())
    assert saved["model"]["init_args"]["encoder"]["init_args"]["hidden_dims"] == [512, 256]
    assert saved["trainer"]["accelerator"] == "cpu"


# ----------------------------------------------------------------------------- configs, init
def test_configs_lists_every_shipped_file(elsewhere: Path, capsys: pytest.CaptureFixture) -> None:
    assert run("configs") == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ")}
    assert listed == set(shipped.names("configs")) | set(shipped.names("sweeps"))
    experiments = out.split("pieces")[0]
    assert "mnist/vae " in experiments and "trainer/gpu" not in experiments


def test_configs_shows_one_file(elsewhere: Path, capsys: pytest.CaptureFixture) -> None:
    assert run("configs", "model/cvae") == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# {CONFIGS / 'model' / 'cvae.yaml'}\n")
    assert "vae_zoo.models.ConditionalVAE" in out
    assert run("configs", "beta_vae_mnist") == 0
    assert "method: grid" in capsys.readouterr().out
    assert run("configs", "nope") == 2
    assert "error: config 'nope' not found" in capsys.readouterr().err


def test_init_copies_everything_and_the_copies_are_used(
    elsewhere: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    assert run("init", "mine") == 0
    for kind in ("configs", "sweeps"):
        assert shipped.names(kind, elsewhere / "mine" / kind) == shipped.names(kind)
    assert "cd mine && python -m vae_zoo fit --config mnist/vae" in capsys.readouterr().out
    base = elsewhere / "mine" / "configs" / "base.yaml"
    base.write_text(base.read_text().replace("latent_dim: 32", "latent_dim: 5"))
    assert run("init", "mine") == 2  # nothing is overwritten without --force
    assert "already exist" in capsys.readouterr().err and "latent_dim: 5" in base.read_text()
    # run from that folder, a name means the edited copy (its pieces are copies too)
    monkeypatch.chdir(elsewhere / "mine")
    assert shipped.locate("fashion_mnist/cvae", "configs").parent.parent == base.parent
    assert run("fit", "--config", "fashion_mnist/cvae", "--print_config") == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["init_args"]["latent_dim"] == 5
    assert cfg["model"]["class_path"] == "vae_zoo.models.ConditionalVAE"
    assert run("init", "--force") == 0
    assert "latent_dim: 32" in base.read_text()


def test_a_sweep_name_runs_from_any_folder(elsewhere: Path, capsys: pytest.CaptureFixture) -> None:
    assert run("sweep", "beta_vae_mnist", "--dry-run", "--count", "2", "--out", "o") == 0
    lines = capsys.readouterr().out.strip().splitlines()[-2:]
    assert all("--config mnist/beta_vae --config logger/wandb" in line for line in lines)
    assert run("sweep", "beta_vae_mnsit", "--dry-run") == 2
    err = capsys.readouterr().err
    assert "sweep 'beta_vae_mnsit' not found" in err and "did you mean beta_vae_mnist?" in err


def test_wheel_copy_is_used_outside_a_checkout(tmp_path: Path, monkeypatch) -> None:
    # an installed package has no pyproject.toml next to it: the build's copy is read
    package = tmp_path / "site" / "vae_zoo"
    (package / shipped.PACKAGED / "configs" / "mnist").mkdir(parents=True)
    (package / shipped.PACKAGED / "configs" / "mnist" / "vae.yaml").write_text("- x\n")
    monkeypatch.setattr(shipped, "__file__", str(package / "shipped.py"))
    assert shipped.shipped_dir("configs") == package / shipped.PACKAGED / "configs"
    assert shipped.names("configs") == ["mnist/vae"]
    (tmp_path / "site" / "pyproject.toml").write_text('[project]\nname = "other"\n')
    assert shipped.shipped_dir("configs") == package / shipped.PACKAGED / "configs"
