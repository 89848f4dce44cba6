"""fid_clf: torchmetrics' Fréchet distance wired to the classifier's penultimate layer."""

import math
from pathlib import Path

import pytest
import torch
from cli_support import TINY, config, enter_workdir, run
from torch import Tensor, nn

from vae_zoo.evaluation.classifier import SmallCNN, TrainedClassifier, save_classifier
from vae_zoo.evaluation.fid import (
    ClassifierFeatures,
    ClassifierFID,
    add_images,
    frechet_metric,
    grey_images,
    model_samples,
)
from vae_zoo.models import ConditionalVAE


def _classifier() -> TrainedClassifier:
    torch.manual_seed(1)
    return TrainedClassifier(SmallCNN().eval(), "mnist", 0.75)


def _gaussian_fit(features: Tensor) -> tuple[Tensor, Tensor]:
    f = features.double()
    mean = f.mean(0)
    return mean, (f - mean).T @ (f - mean) / (len(f) - 1)


def _sqrt_psd(c: Tensor) -> Tensor:
    w, v = torch.linalg.eigh(c)
    return v @ torch.diag(w.clamp(min=0).sqrt()) @ v.T


def closed_form(m1: Tensor, c1: Tensor, m2: Tensor, c2: Tensor) -> float:
    """||m1 - m2||^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2), with symmetric square roots."""
    root = _sqrt_psd(c1)
    cross = torch.linalg.eigvalsh(root @ c2 @ root).clamp(min=0).sqrt().sum()
    return float((m1 - m2).square().sum() + c1.trace() + c2.trace() - 2 * cross)


def test_features_are_the_classifier_penultimate_layer_in_eval_mode() -> None:
    clf = _classifier()
    features = ClassifierFeatures(clf.net)
    features.train()  # torchmetrics or Lightning may call it: the classifier must stay frozen
    assert not clf.net.training and features.num_features == clf.net.hidden == 128
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        f = features(x)
        assert f.shape == (6, 128) and (f >= 0).all()  # after the hidden ReLU
        assert torch.allclose(clf.net.head[-1](f), clf.net(x), atol=1e-6)


def test_distance_of_a_set_to_itself_is_zero() -> None:
    x = torch.rand(300, 1, 28, 28)
    fid = ClassifierFID(_classifier(), x, batch_size=64)
    scale = float(_gaussian_fit(ClassifierFeatures(fid.classifier.net)(x).detach())[1].trace())
    assert abs(fid.of_images(x)) < 1e-6 * scale
    assert fid.of_images(x.flip(0)) == pytest.approx(fid.of_images(x), abs=1e-6 * scale)


def test_distance_of_two_image_sets_is_the_closed_form_of_their_feature_gaussians() -> None:
    clf = _classifier()
    a, b = torch.rand(400, 1, 28, 28), torch.rand(300, 1, 28, 28).square()
    fid = ClassifierFID(clf, a, batch_size=50)
    with torch.no_grad():
        fa, fb = clf.net.embed(a), clf.net.embed(b)
    expected = closed_form(*_gaussian_fit(fb), *_gaussian_fit(fa))
    assert expected > 1e-3
    assert fid.of_images(b) == pytest.approx(expected, rel=1e-4)
    # the real set is kept: a second image set is measured against the same real features
    assert fid.of_images(a) == pytest.approx(0.0, abs=1e-6)
    assert fid.of_images(b) == pytest.approx(expected, rel=1e-4)


class _Identity(nn.Module):
    num_features = 3

    def forward(self, x: Tensor) -> Tensor:
        return x


def _exact_gaussian_sample(n: int, mean: Tensor, cov: Tensor, seed: int) -> Tensor:
    """n points whose sample mean and (unbiased) covariance are exactly ``mean`` and ``cov``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, len(mean), generator=gen, dtype=torch.float64)
    x = x - x.mean(0)
    whiten = torch.linalg.cholesky(x.T @ x / (n - 1))
    x = torch.linalg.solve_triangular(whiten, x.T, upper=False).T  # covariance now I
    return x @ torch.linalg.cholesky(cov).T + mean


def test_two_gaussian_feature_sets_match_the_closed_form() -> None:
    m1, m2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([0.5, 0.0, 0.0])
    c1 = torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.5]])
    c2 = torch.diag(torch.tensor([1.0, 3.0, 0.25]))
    real = _exact_gaussian_sample(500, m1.double(), c1.double(), 0)
    fake = _exact_gaussian_sample(700, m2.double(), c2.double(), 1)
    metric = frechet_metric(_Identity())  # images go in as float32: agreement to ~1e-7
    assert add_images(metric, real, real=True, batch_size=64) == 500
    assert add_images(metric, (fake[i : i + 99] for i in range(0, 700, 99)), real=False) == 700
    expected = closed_form(m1.double(), c1.double(), m2.double(), c2.double())
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-6)
    # diagonal covariances: ||m1 - m2||^2 + sum_i (sigma1_i - sigma2_i)^2, by hand
    diag_cov = torch.diag(torch.tensor([4.0, 1.0, 9.0], dtype=torch.float64))
    diag = _exact_gaussian_sample(500, m1.double(), diag_cov, 2)
    metric.reset_real_features = True
    metric.reset()
    add_images(metric, diag, real=True)
    add_images(metric, fake, real=False)
    by_hand = 0.25 + 1.0 + 4.0 + (2 - 1) ** 2 + (1 - 3**0.5) ** 2 + (3 - 0.5) ** 2
    assert float(metric.compute()) == pytest.approx(by_hand, rel=1e-6)


def test_a_conditional_model_draws_every_class_equally_often() -> None:
    model = ConditionalVAE(latent_dim=2).eval()
    asked: list[Tensor] = []
    original = model.sample

    def recording(n: int, c: Tensor | None = None, mean: bool = True) -> Tensor:
        asked.append(c)
        return original(n, c, mean)

    model.sample = recording
    images = torch.cat(list(model_samples(model, 45, batch_size=7)))
    labels = torch.cat(asked)
    assert images.shape == (45, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(labels, torch.arange(45) % 10)


def _write_classifier(cache: Path) -> TrainedClassifier:
    clf = _classifier()
    save_classifier(clf, cache / "classifiers" / "mnist.pt")
    return clf


def test_test_command_logs_fid_clf_with_its_reference_and_the_classifier_accuracy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import csv

    workdir = enter_workdir(tmp_path, monkeypatch, tmp_path_factory)
    clf = _write_classifier(workdir / "cache")  # where enter_workdir points VAE_ZOO_CACHE
    assert run("fit", "--config", config("mnist", "vae"), *TINY) == 0
    ckpt = "runs/mnist/vae/version_0/checkpoints/best.ckpt"
    assert run("test", "--ckpt_path", ckpt, *TINY) == 0
    with open("runs/mnist/vae/version_0/test/metrics.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r.get("test/fid_clf"))
    train, test = grey_images("mnist", None, 10_000)
    expected_ref = ClassifierFID(clf, test).of_images(train)
    assert float(row["test/fid_clf_ref"]) == pytest.approx(expected_ref, rel=1e-5)
    assert float(row["test/classifier_acc"]) == pytest.approx(0.75)
    assert math.isfinite(float(row["test/fid_clf"])) and float(row["test/fid_clf"]) > 0
    assert 0 <= float(row["test/recon_acc"]) <= 1
