"""Latent-space figures: the ``latent`` command, ``compare``'s panels and the pieces they use."""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from cli_support import TINY, config, write_dataset
from PIL import Image

from vae_zoo.callbacks import ImageGridLogger
from vae_zoo.cli import main as cli_main
from vae_zoo.data import CHECKSUMS
from vae_zoo.evaluation import latent
from vae_zoo.evaluation.figures import PAD
from vae_zoo.evaluation.latent_codes import project_2d
from vae_zoo.evaluation.latent_figures import (
    interpolation_pairs,
    interpolation_panel,
    latent_panels,
)
from vae_zoo.evaluation.loading import load_run
from vae_zoo.models import VAE, ConditionalVAE
from vae_zoo.runs import RUN_DIR_ENV

CELL = 28 + PAD  # one image of a grid with its padding


@dataclass
class Runs:
    root: Path
    two_d: Path  # configs/mnist/conv_vae_2d.yaml, tiny budget
    wide: Path  # configs/mnist/vae.yaml: 32-D latent


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("latent")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(CHECKSUMS, "mnist", write_dataset(root / "data" / "mnist", 0, 200, 60))
        mp.setenv("VAE_ZOO_DATA", str(root / "data"))
        mp.setenv("WANDB_MODE", "disabled")
        mp.setenv(RUN_DIR_ENV, "")
        made = {}
        for name, experiment in (("two_d", "conv_vae_2d"), ("wide", "vae")):
            run_dir = root / "runs" / name
            argv = ["fit", "--config", config("mnist", experiment), *TINY,
                    "--trainer.default_root_dir", str(run_dir)]
            assert cli_main(argv) == 0
            made[name] = run_dir
        yield Runs(root, made["two_d"], made["wide"])


@pytest.fixture
def data_env(runs: Runs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CHECKSUMS, "mnist", write_dataset(runs.root / "data" / "mnist", 0, 200, 60))
    monkeypatch.setenv("VAE_ZOO_DATA", str(runs.root / "data"))
    monkeypatch.setenv("WANDB_MODE", "disabled")


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as png:
        return png.size


@pytest.mark.parametrize(("which", "dim"), [("two_d", 2), ("wide", 32)])
def test_latent_command_writes_the_figures(
    runs: Runs, data_env: None, which: str, dim: int, capsys: pytest.CaptureFixture
) -> None:
    out = runs.root / f"out_{which}"
    argv = ["latent", str(getattr(runs, which)), "--out", str(out), "--device", "cpu"]
    assert cli_main(argv) == 0
    assert f"{dim}-D latent" in capsys.readouterr().err
    expected = {"latents.png", "interpolations.png", "latent.png"}
    if dim == 2:
        expected.add("manifold.png")
        assert _size(out / "manifold.png") == (15 * CELL + PAD, 15 * CELL + PAD)
    assert {p.name for p in out.glob("*.png")} == expected
    # 8 pairs, each: first image, 10 steps, last image
    assert _size(out / "interpolations.png") == (12 * CELL + PAD, 8 * CELL + PAD)
    assert min(_size(out / "latents.png")) >= 300


def test_latent_command_accepts_the_old_flag_spelling(runs: Runs, data_env: None) -> None:
    out = runs.root / "out_alias"
    argv = [str(runs.two_d), "--out", str(out), "--n-test", "20", "--batch-size", "7"]
    assert latent.main(argv) == 0
    assert (out / "latents.png").is_file()


def test_latent_command_rejects_bad_input_in_one_line(
    runs: Runs, data_env: None, capsys: pytest.CaptureFixture
) -> None:
    assert latent.main([str(runs.two_d), "--out", str(runs.root / "x"), "--n_test", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --n_test must be >= 2") and "\n" not in err
    assert latent.main([str(runs.root / "missing"), "--out", str(runs.root / "x")]) == 2


def test_panels_of_a_2d_and_a_32d_model_say_how_they_were_drawn(runs: Runs) -> None:
    x, y = torch.rand(50, 1, 28, 28), torch.arange(50) % 10
    two = latent_panels("m2", load_run(runs.two_d).model, x, y)
    wide = latent_panels("m32", load_run(runs.wide).model, x, y)
    assert list(two) == ["latents", "manifold", "interpolations"]
    assert list(wide) == ["latents", "interpolations"]  # no manifold of a 32-D latent
    assert two["latents"].image.shape[0] == 3 and wide["latents"].image.shape[0] == 3


def test_project_2d_keeps_2d_latents_and_projects_larger_ones_on_their_principal_axes() -> None:
    z2 = torch.randn(100, 2)
    points, how = project_2d(z2)
    assert torch.equal(points, z2) and "2-D" in how and "PCA" not in how
    # centred, uncorrelated columns with standard deviations 0.1, 2, 0.1, 5, 0.1, 0.1: the
    # principal axes are exactly axes 3 and 1
    noise = torch.randn(2000, 6, dtype=torch.float64)
    q, _ = torch.linalg.qr(noise - noise.mean(0))
    z = q * 2000**0.5 * torch.tensor([0.1, 2.0, 0.1, 5.0, 0.1, 0.1], dtype=torch.float64)
    points, how = project_2d(z.float() + 7.0)
    assert how.startswith("PCA of the 6-D posterior means (PC1 86%, PC2 14%")
    for j, axis in enumerate((3, 1)):
        assert torch.allclose(points[:, j].abs(), z[:, axis].abs().float(), atol=1e-4)


def test_interpolations_run_from_one_reconstruction_to_the_other() -> None:
    torch.manual_seed(0)
    model = VAE(latent_dim=3).eval()
    x, y = torch.rand(20, 1, 28, 28), torch.arange(20) % 10
    panel = interpolation_panel("m", model, x, y, pairs=3, steps=5)
    image = panel.image[0]  # make_grid repeats the one channel

    def cell(row: int, col: int) -> torch.Tensor:
        top, left = PAD + row * CELL, PAD + col * CELL
        return image[top : top + 28, left : left + 28]

    pairs = interpolation_pairs(y, 3, same_class=False)
    assert [(int(y[a]), int(y[b])) for a, b in pairs] == [(0, 1), (1, 2), (2, 3)]
    assert panel.row_labels == ["0 \u2192 1", "1 \u2192 2", "2 \u2192 3"]
    with torch.no_grad():
        for row, (a, b) in enumerate(pairs):
            mu_a, mu_b = model.encode(x[a : a + 1])[0], model.encode(x[b : b + 1])[0]
            ends = {0: x[a, 0], 1: _mean(model, mu_a), 3: _mean(model, (mu_a + mu_b) / 2),
                    5: _mean(model, mu_b), 6: x[b, 0]}
            for col, expected in ends.items():
                assert torch.allclose(cell(row, col), expected, atol=1e-6), (row, col)


def _mean(model: VAE, z: torch.Tensor) -> torch.Tensor:
    return model.likelihood.mean(model.decode(z))[0, 0]


def test_a_conditional_model_interpolates_within_one_class() -> None:
    model = ConditionalVAE(latent_dim=2).eval()
    x, y = torch.rand(40, 1, 28, 28), torch.arange(40) % 10
    panel = interpolation_panel("c", model, x, y, pairs=4, steps=3)
    assert panel.row_labels == ["0 \u2192 0", "1 \u2192 1", "2 \u2192 2", "3 \u2192 3"]
    pairs = interpolation_pairs(y, 4, same_class=True)
    assert all(a != b and y[a] == y[b] for a, b in pairs)


def test_image_grid_logger_keeps_consecutive_validation_images_once(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader, TensorDataset
    from trainers import quiet_trainer

    x, y = torch.rand(70, 1, 28, 28), torch.arange(70) % 10
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    logger = ImageGridLogger(latent_points=50)
    trainer = quiet_trainer(max_epochs=2, callbacks=[logger], num_sanity_val_steps=2,
                            limit_train_batches=1, default_root_dir=str(tmp_path))
    trainer.fit(VAE(latent_dim=2, val_k=0), loader, loader)
    kept = torch.cat([b[0] for b in logger._latent])
    # the sanity check's two batches and then batches 2, 3: no batch twice, in order
    assert torch.equal(kept, x[:64])
    assert (tmp_path / "images" / "epoch_001_latents.png").is_file()
