"""The real MNIST / Fashion-MNIST files under $VAE_ZOO_DATA: counts, label histograms, pixel means.

Skipped when $VAE_ZOO_DATA is unset outside CI; in CI (``$CI`` set) missing data is a failure.
"""

import io
import os
from contextlib import redirect_stderr, redirect_stdout

import pytest
import torch

from vae_zoo.data import DataUnavailableError, VAEDataModule, cli

pytestmark = pytest.mark.integration

# Computed once from the verified files (the checksums in vae_zoo.data.checksums pin them).
EXPECTED = {
    "mnist": {
        "train_hist": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
        "test_hist": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
        "train_mean": 0.1307,
        "test_mean": 0.1325,
    },
    "fashion_mnist": {
        "train_hist": [6000] * 10,
        "test_hist": [1000] * 10,
        "train_mean": 0.2860,
        "test_mean": 0.2868,
    },
}


def data_root() -> str:
    """$VAE_ZOO_DATA, or skip (fail in CI) with the reason."""
    root = os.environ.get("VAE_ZOO_DATA")
    if not root:
        reason = "VAE_ZOO_DATA is not set; point it at the folder holding mnist/ and fashion-mnist/"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {reason}")
        pytest.skip(reason)
    return root


def stream_stats(loader: object) -> dict[str, object]:
    """Count, label histogram and pixel mean of a loader's batches, without keeping them."""
    count, pixel_sum = 0, 0.0
    hist = torch.zeros(10, dtype=torch.int64)
    for x, y in loader:
        count += len(x)
        pixel_sum += float(x.double().sum())
        hist += torch.bincount(y.cpu(), minlength=10)
    return {"count": count, "hist": hist, "sum": pixel_sum}


@pytest.fixture(scope="module", params=["mnist", "fashion_mnist"])
def loaded(request: pytest.FixtureRequest) -> tuple[str, VAEDataModule]:
    root = data_root()
    dm = VAEDataModule(
        dataset=request.param, data_dir=root, binarize="none", batch_size=4096, download=False
    )
    try:
        dm.prepare_data()
    except DataUnavailableError as error:
        pytest.fail(f"VAE_ZOO_DATA={root} does not hold usable {request.param} files:\n{error}")
    dm.setup("fit")
    return request.param, dm


def test_counts_histograms_and_means(loaded: tuple[str, VAEDataModule]) -> None:
    name, dm = loaded
    expected = EXPECTED[name]
    train, val = stream_stats(dm.train_dataloader()), stream_stats(dm.val_dataloader())
    test = stream_stats(dm.test_dataloader())
    assert (train["count"], val["count"], test["count"]) == (55000, 5000, 10000)
    assert (train["hist"] + val["hist"]).tolist() == expected["train_hist"]
    assert test["hist"].tolist() == expected["test_hist"]
    pixels = 60000 * 28 * 28
    assert round((train["sum"] + val["sum"]) / pixels, 4) == expected["train_mean"]
    assert round(test["sum"] / (10000 * 28 * 28), 4) == expected["test_mean"]


def test_binarized_real_data() -> None:
    name = "mnist"  # one data set is enough here; the binarization code is data-agnostic
    dynamic = VAEDataModule(dataset=name, data_dir=data_root(), binarize="dynamic", download=False)
    dynamic.prepare_data()
    dynamic.setup("fit")
    x, y = next(iter(dynamic.train_dataloader()))
    assert x.shape == (128, 1, 28, 28) and set(x.unique().tolist()) <= {0.0, 1.0}
    val = stream_stats(dynamic.val_dataloader())
    again = stream_stats(dynamic.val_dataloader())
    assert val["sum"] == again["sum"]  # the fixed validation binarization
    # The fixed binarization keeps the mean grey level (5000 images: within about 0.001).
    assert abs(val["sum"] / (5000 * 784) - EXPECTED[name]["train_mean"]) < 0.01


def test_cli_verify_real_data() -> None:
    root = data_root()
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(["verify", "--dataset", "fashion_mnist", "--data_dir", root])
    assert code == 0, out.getvalue() + err.getvalue()
    assert out.getvalue().count("  ok  ") == 4
