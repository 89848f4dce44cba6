"""Every shipped config file: experiments train (tiny budget), pieces compose, and the composed
experiments resolve to the same settings as the flat files they replaced."""

import os
from pathlib import Path

import pytest
import yaml
from cli_support import CONFIGS, ROOT, TINY, config, resolved, run
from PIL import Image

from vae_zoo.runs import RUN_DIR_ENV

V0_VARIANTS = ("vae", "beta_vae", "cvae")  # the experiments that were flat files before
VARIANTS = (
    *V0_VARIANTS,
    *("iwae", "vamp_vae", "dip_vae", "vq_vae", "info_vae", "wae", "beta_tcvae"),
    *("factor_vae", "ladder_vae"),
)
EXPERIMENTS = [(d, v) for d in ("mnist", "fashion_mnist") for v in VARIANTS]
# the Keras tutorial's conv VAE with a 2-D latent: a latent_dim, budget and networks of its own
KERAS_2D = [("mnist", "conv_vae_2d"), ("fashion_mnist", "conv_vae_2d")]
RUN_PIECES = [("trainer", "cpu"), ("trainer", "bf16-mixed"), ("logger", "csv")]
PARSE_PIECES = [("trainer", "gpu"), ("trainer", "ddp"), ("trainer", "fsdp")]
# logger/wandb.yaml runs in tests/test_cli.py::test_wandb_without_credentials_runs_offline
TESTED_ELSEWHERE = [("logger", "wandb")]
# the pieces the experiments list: they run in every experiment, and alone below
COMPOSED_PIECES = [("base",), ("data", "mnist"), ("data", "fashion_mnist")] + [
    ("model", v) for v in (*VARIANTS, "conv_vae_2d")
]
FLAT_V0 = ROOT / "tests" / "fixtures" / "configs_v0"
# what an experiment sets itself, after its pieces (the settings that reach the README's numbers)
OWN_SETTINGS = {
    ("fashion_mnist", "cvae"): {
        "model": {
            "init_args": {
                "prior": "vamp",
                "pseudo_inputs_per_class": 50,
                "decoder": {"init_args": {"hidden_dims": [512, 1024]}},
                "kl_schedule": {"init_args": {"weight": 0.25}},
            }
        }
    }
}
OWN_FLAGS = {
    ("fashion_mnist", "cvae"): (
        "--model.init_args.prior=vamp",
        "--model.init_args.pseudo_inputs_per_class=50",
        "--model.init_args.decoder.init_args.hidden_dims=[512,1024]",
        "--model.init_args.kl_schedule.init_args.weight=0.25",
    )
}


def test_every_config_file_is_tested_here() -> None:
    shipped = {p.relative_to(CONFIGS).with_suffix("").parts for p in CONFIGS.rglob("*.yaml")}
    tested = set(
        EXPERIMENTS + KERAS_2D + RUN_PIECES + PARSE_PIECES + TESTED_ELSEWHERE + COMPOSED_PIECES
    )
    assert shipped == tested


@pytest.mark.parametrize(("dataset", "variant"), [e for e in EXPERIMENTS if e[1] in V0_VARIANTS])
def test_composed_experiment_resolves_like_before(dataset: str, variant: str) -> None:
    # the experiment by name (base + data + model pieces) against the flat file it replaced,
    # with the settings the experiment has changed since as flags
    flags = OWN_FLAGS.get((dataset, variant), ())
    before = resolved("--config", str(FLAT_V0 / dataset / f"{variant}.yaml"), *flags)
    assert resolved("--config", f"{dataset}/{variant}") == before


@pytest.mark.parametrize(("dataset", "variant"), EXPERIMENTS)
def test_experiment_is_a_short_list_of_pieces(dataset: str, variant: str) -> None:
    pieces = yaml.safe_load(Path(config(dataset, variant)).read_text())
    own = [OWN_SETTINGS[(dataset, variant)]] if (dataset, variant) in OWN_SETTINGS else []
    assert pieces == ["../base.yaml", f"../data/{dataset}.yaml", f"../model/{variant}.yaml", *own]


def test_a_model_piece_switches_the_variant_and_keeps_the_rest() -> None:
    switched = resolved("--config", "mnist/vae", "--config", "model/beta_vae")
    assert switched == resolved("--config", "mnist/beta_vae")
    back = resolved("--config", "mnist/beta_vae", "--config", "model/vae")
    assert back == resolved("--config", "mnist/vae")  # beta and gamma dropped with the class


def test_a_data_piece_switches_the_data_set() -> None:
    switched = resolved("--config", "mnist/beta_vae", "--config", "data/fashion_mnist")
    assert switched == resolved("--config", "fashion_mnist/beta_vae")
    # an experiment's own settings come on top: the Fashion CVAE's, as flags after MNIST's CVAE
    flags = OWN_FLAGS[("fashion_mnist", "cvae")]
    switched = resolved("--config", "mnist/cvae", "--config", "data/fashion_mnist", *flags)
    assert switched == resolved("--config", "fashion_mnist/cvae")


def test_base_alone_is_the_mnist_vae() -> None:
    # the data module's defaults are MNIST with dynamic binarization
    assert resolved("--config", "base") == resolved("--config", "mnist/vae")


@pytest.mark.parametrize(("dataset", "variant"), EXPERIMENTS)
def test_experiment_trains(workdir: Path, dataset: str, variant: str) -> None:
    assert run("fit", "--config", config(dataset, variant), *TINY) == 0
    run_dir = Path("runs", dataset, variant, "version_0")
    assert (run_dir / "checkpoints/best.ckpt").is_file()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["dataset"] == dataset
    rows = 10 if variant == "cvae" else 8  # one row per class, or 64 samples 8 to a row
    with Image.open(run_dir / "images/epoch_000_samples.png") as grid:
        assert grid.size[1] == rows * 30 + 2  # 28-pixel images with 2-pixel padding
    with Image.open(run_dir / "images/epoch_000_recon.png") as grid:
        assert grid.size == (8 * 30 + 2, 2 * 30 + 2)  # inputs above reconstructions
    assert not (run_dir / "images/epoch_000_latents.png").exists()  # 32-D: no latent grids


@pytest.mark.parametrize(("dataset", "variant"), EXPERIMENTS)
def test_experiment_settings(dataset: str, variant: str) -> None:
    cfg = resolved("--config", f"{dataset}/{variant}")
    init = cfg["model"]["init_args"]
    assert cfg["data"]["dataset"] == dataset
    # every experiment has the same data, optimiser and budget; the latent is the variant's own
    assert init["latent_dim"] == (16 if variant == "vq_vae" else 32)
    assert cfg["data"]["batch_size"] == 128 and init["lr"] == 1e-3
    assert cfg["trainer"]["max_epochs"] == 90
    likelihood = init["likelihood"]["class_path"].rpartition(".")[2]
    if dataset == "mnist":
        assert (cfg["data"]["binarize"], likelihood) == ("dynamic", "Bernoulli")
    else:
        assert (cfg["data"]["binarize"], likelihood) == ("none", "Bernoulli")
    if variant == "cvae":
        assert init["num_classes"] == 10


@pytest.mark.parametrize(("dataset", "variant"), KERAS_2D)
def test_2d_conv_config_fits_and_draws_its_latent_space(
    workdir: Path, dataset: str, variant: str
) -> None:
    assert run("fit", "--config", config(dataset, variant), *TINY) == 0
    images = Path("runs", dataset, "vae", "version_0", "images")
    assert (images.parent / "checkpoints/best.ckpt").is_file()
    for kind in ("latents", "manifold", "interpolations"):  # only 2-D models draw these
        with Image.open(images / f"epoch_000_{kind}.png") as png:
            assert min(png.size) > 100, kind
    with Image.open(images / "epoch_000_manifold.png") as png:
        assert png.size == (15 * 30 + 2, 15 * 30 + 2)  # 15 x 15 decoded z of 28 pixels


@pytest.mark.parametrize(("dataset", "variant"), KERAS_2D)
def test_2d_conv_config_is_the_keras_tutorial_architecture(
    workdir: Path, dataset: str, variant: str
) -> None:
    from torch import nn

    from vae_zoo.cli import VAEZooCLI

    cli = VAEZooCLI(args=["--config", config(dataset, variant)], run=False)
    model = cli.model
    cfg = resolved("--config", config(dataset, variant))
    assert model.latent_dim == 2 and cfg["data"]["batch_size"] == 128
    assert type(model.likelihood).__name__ == "Bernoulli"
    assert type(cli.model.configure_optimizers()).__name__ == "Adam"
    # the parameter counts of the tutorial's encoder and decoder summaries
    assert sum(p.numel() for p in model.encoder.parameters()) == 69_076
    assert sum(p.numel() for p in model.decoder.parameters()) == 65_089
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (32, (3, 3), (2, 2)), (64, (3, 3), (2, 2))
    ]
    dense = [m.out_features for m in model.encoder.modules() if isinstance(m, nn.Linear)]
    assert dense == [16, 2 * 2]  # dense 16, then mean and log-variance of a 2-D z
    assert [m.out_features for m in model.decoder.fc if isinstance(m, nn.Linear)] == [7 * 7 * 64]
    deconvs = [m for m in model.decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in deconvs] == [
        (64, (3, 3), (2, 2)), (32, (3, 3), (2, 2)), (1, (3, 3), (1, 1))
    ]


@pytest.mark.parametrize(("kind", "name"), RUN_PIECES)
def test_piece_runs_with_an_experiment(workdir: Path, kind: str, name: str) -> None:
    args = ["--config", config("mnist", "vae"), "--config", config(kind, name), *TINY]
    assert run("fit", *args) == 0
    assert Path("runs/mnist/vae/version_0/metrics.csv").is_file()


@pytest.mark.parametrize(("kind", "name"), PARSE_PIECES)
def test_accelerator_piece_parses(capsys: pytest.CaptureFixture, kind: str, name: str) -> None:
    args = ["--config", config("mnist", "vae"), "--config", config(kind, name), "--print_config"]
    assert run("fit", *args) == 0
    printed = yaml.safe_load(capsys.readouterr().out)["trainer"]
    piece = yaml.safe_load(Path(config(kind, name)).read_text())["trainer"]
    assert contains(printed, piece)


def contains(full: object, part: object) -> bool:
    """Whether every key and value of ``part`` is in ``full`` (dicts compared recursively)."""
    if isinstance(part, dict):
        return isinstance(full, dict) and all(
            k in full and contains(full[k], v) for k, v in part.items()
        )
    return full == part


@pytest.mark.integration
def test_quick_start_on_real_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.environ.get("VAE_ZOO_DATA")
    if not data or not (Path(data) / "mnist").is_dir():
        if os.environ.get("CI"):
            pytest.fail("CI needs the real data: set VAE_ZOO_DATA to the folder holding mnist/")
        pytest.skip("real MNIST not found: set VAE_ZOO_DATA")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    budget = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=3",
              "--trainer.limit_val_batches=2", "--trainer.enable_progress_bar=false"]
    assert run("fit", "--config", config("mnist", "vae"), *budget) == 0
    assert Path("runs/mnist/vae/version_0/checkpoints/best.ckpt").is_file()
