"""Evaluation metrics: what test/val log, their values, and their aggregation over batches/ranks."""

import math
from functools import partial

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import Metric
from trainers import quiet_trainer

from vae_zoo.metrics import ActiveUnits, KLPerDim, SplitMetrics, StepTerms, TermMeans
from vae_zoo.models import VAE, ConditionalVAE
from vae_zoo.networks import MLPDecoder, MLPEncoder

TINY = {
    "encoder": partial(MLPEncoder, hidden_dims=(32,)),
    "decoder": partial(MLPDecoder, hidden_dims=(32,)),
}
SHAPE = (1, 8, 8)


def _data(n: int = 64, seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    probs = torch.full((n, *SHAPE), 0.1)
    for k in range(4):  # four classes of images with a bright quadrant each
        r, c = divmod(k, 2)
        probs[y == k, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = 0.9
    return torch.bernoulli(probs, generator=gen), y


def _trainer() -> L.Trainer:
    return quiet_trainer(max_epochs=1)


class ConstantMuEncoder(nn.Module):
    """A collapsed posterior: mu does not depend on x."""

    def __init__(self, image_shape, latent_dim, cond_dim=0):
        super().__init__()
        self.mu = nn.Parameter(torch.full((latent_dim,), 0.7))

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu = self.mu.expand(len(x), -1)
        return mu, torch.zeros_like(mu)


class PixelEncoder(nn.Module):
    """An informative posterior: mu_u is pixel u of x (variance ~ p(1-p) over the data)."""

    def __init__(self, image_shape, latent_dim, cond_dim=0):
        super().__init__()
        self.latent_dim = latent_dim
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu = x.flatten(1)[:, : self.latent_dim] + self.dummy
        return mu, torch.full_like(mu, -4.0)


def test_test_step_logs_every_metric_with_the_right_values() -> None:
    x, y = _data()
    model = VAE(latent_dim=3, image_shape=SHAPE, test_k=7, **TINY)
    results = _trainer().test(model, DataLoader(TensorDataset(x, y), batch_size=16), verbose=False)
    logged = results[0]
    expected = {"loss", "elbo", "recon", "kl", "nll", "bpd", "mse", "kl_dim_max", "active_units"}
    assert set(logged) == {f"test/{n}" for n in expected}
    model.eval()
    with torch.no_grad():
        mu, logvar = model.encode(x)
        recon = model.likelihood.mean(model.decode(mu))
        kl_per_dim = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)
    assert logged["test/mse"] == pytest.approx(float((recon - x).pow(2).mean()), rel=1e-5)
    assert logged["test/kl_dim_max"] == pytest.approx(float(kl_per_dim.mean(0).max()), rel=1e-4)
    assert logged["test/kl"] == pytest.approx(float(kl_per_dim.sum(1).mean()), rel=1e-4)
    assert logged["test/active_units"] == float((mu.var(0, unbiased=False) > 0.01).sum())
    assert logged["test/bpd"] == pytest.approx(logged["test/nll"] / (64 * math.log(2)), rel=1e-5)


def test_validation_without_importance_samples_skips_nll_but_keeps_the_rest() -> None:
    x, y = _data(32)
    model = VAE(latent_dim=2, image_shape=SHAPE, val_k=0, **TINY)
    logged = _trainer().validate(model, DataLoader(TensorDataset(x, y), batch_size=16),
                                 verbose=False)[0]
    assert "val/nll" not in logged and "val/bpd" not in logged
    assert {"val/mse", "val/kl_dim_max", "val/active_units", "val/elbo"} <= set(logged)


def test_cvae_test_metrics_use_the_labels() -> None:
    x, y = _data(32)
    model = ConditionalVAE(latent_dim=2, image_shape=SHAPE, num_classes=4, test_k=3, **TINY)
    logged = _trainer().test(model, DataLoader(TensorDataset(x, y), batch_size=16),
                             verbose=False)[0]
    assert math.isfinite(logged["test/nll"]) and 0 <= logged["test/mse"] <= 1


def test_iw_nll_is_at_most_the_negative_elbo_on_a_trained_model() -> None:
    x, _ = _data(128)
    model = VAE(latent_dim=4, image_shape=SHAPE, **TINY)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        loss = model.elbo(x)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        neg_elbo = torch.stack([-model.elbo(x)["elbo"] for _ in range(20)]).mean()
        nll = (-model.log_likelihood(x, k=64)).mean()
    assert nll <= neg_elbo
    assert neg_elbo - nll < 20  # and not absurdly far below: the estimate is a bound, not noise


def _metrics_for(model: VAE, x: Tensor, threshold: float = 0.01) -> dict[str, float]:
    metrics = SplitMetrics(active_threshold=threshold)
    model.update_metrics(metrics, model.evaluate_batch(x, None, k=0))
    return metrics.compute()


def test_active_units_zero_for_a_collapsed_posterior() -> None:
    x, _ = _data()
    model = VAE(latent_dim=5, image_shape=SHAPE, encoder=ConstantMuEncoder, decoder=TINY["decoder"])
    assert _metrics_for(model, x)["active_units"] == 0


def test_active_units_all_for_an_informative_posterior_and_threshold_applies() -> None:
    x, _ = _data()
    model = VAE(latent_dim=5, image_shape=SHAPE, encoder=PixelEncoder, decoder=TINY["decoder"])
    assert _metrics_for(model, x)["active_units"] == 5
    # pixel variances are p(1 - p) <= 0.25: a threshold above that leaves no active unit
    assert _metrics_for(model, x, threshold=0.3)["active_units"] == 0


def test_active_units_statistic_is_the_population_variance() -> None:
    mu = torch.randn(200, 6) * torch.tensor([0.0, 0.05, 0.09, 0.11, 1.0, 3.0]) + 5.0
    metric = ActiveUnits(6)
    for chunk in mu.split(37):
        metric.update(chunk)
    torch.testing.assert_close(metric.variances(), mu.var(0, unbiased=False), atol=1e-4, rtol=1e-3)
    assert metric.compute() == 3  # 0.11^2, 1 and 9 exceed 0.01; 0.09^2 = 0.0081 does not


def test_kl_per_dim_vector_and_max() -> None:
    kl = torch.rand(50, 4) * torch.tensor([0.1, 2.0, 0.5, 0.0])
    metric = KLPerDim(4)
    metric.update(kl[:20])
    metric.update(kl[20:])
    torch.testing.assert_close(metric.per_dim(), kl.mean(0))
    assert float(metric.compute()) == pytest.approx(float(kl.mean(0).max()))


def _batches(model: VAE, x: Tensor, y: Tensor, size: int):
    torch.manual_seed(5)
    return [model.evaluate_batch(xb, yb, k=4) for xb, yb in zip(x.split(size), y.split(size),
                                                                 strict=True)]


def _add(metrics: SplitMetrics, ev) -> None:
    metrics.update(ev.terms, ev.out.kl_per_dim, ev.out.mu)


def test_two_ranks_merged_equal_one_pass_and_batching_does_not_matter() -> None:
    x, y = _data(60)
    model = VAE(latent_dim=3, image_shape=SHAPE, **TINY).eval()
    batches = _batches(model, x, y, 12)  # the same draws for every accumulation below

    single = SplitMetrics()
    single.update(
        {k: torch.cat([b.terms[k] for b in batches]) for k in batches[0].terms},
        torch.cat([b.out.kl_per_dim for b in batches]),
        torch.cat([b.out.mu for b in batches]),
    )
    batchwise = SplitMetrics()
    ranks = [SplitMetrics(), SplitMetrics()]
    for i, b in enumerate(batches):
        _add(batchwise, b)
        _add(ranks[i % 2], b)  # rank r gets batches r::2
    # what a distributed sync does with dist_reduce_fx="sum": add the other rank's states
    for name in ("terms", "kl_dim", "active"):
        getattr(ranks[0], name).merge_state(getattr(ranks[1], name))

    expected = single.compute()
    assert set(expected) == {"loss", "elbo", "recon", "kl", "nll", "bpd", "mse", "kl_dim_max",
                             "active_units"}
    for name, value in expected.items():
        assert batchwise.compute()[name] == pytest.approx(value, rel=1e-5), name
        assert ranks[0].compute()[name] == pytest.approx(value, rel=1e-5), name
    torch.testing.assert_close(torch.tensor(ranks[0].kl_per_dim()),
                               torch.tensor(single.kl_per_dim()))
    torch.testing.assert_close(torch.tensor(ranks[0].mu_variance()),
                               torch.tensor(single.mu_variance()), atol=1e-5, rtol=1e-4)


def test_every_metric_state_is_summed_across_ranks() -> None:
    from torchmetrics import Metric
    from torchmetrics.utilities.data import dim_zero_sum

    x, y = _data(16)
    model = VAE(latent_dim=2, image_shape=SHAPE, **TINY).eval()
    metrics = SplitMetrics()
    _add(metrics, _batches(model, x, y, 16)[0])
    found = [m for m in metrics.modules() if isinstance(m, Metric)]
    assert len(found) == 3
    for metric in found:
        assert metric._reductions and all(fx is dim_zero_sum for fx in metric._reductions.values())


def test_reset_forgets_the_accumulated_values() -> None:
    x, y = _data(16)
    model = VAE(latent_dim=2, image_shape=SHAPE, **TINY).eval()
    metrics = SplitMetrics()
    for b in _batches(model, x, y, 8):
        _add(metrics, b)
    metrics.reset()
    assert metrics.compute() == {}
    assert metrics.kl_dim.count == 0 and metrics.active.count == 0


def test_term_means_weight_examples_and_batch_scalars_alike() -> None:
    means = TermMeans()
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0])
    means.update({"per_example": a, "batch_scalar": torch.tensor(4.0)}, batch_size=3)
    means.update({"per_example": b, "batch_scalar": torch.tensor(8.0)}, batch_size=1)
    values = means.compute()
    assert list(values) == ["per_example", "batch_scalar"]
    assert float(values["per_example"]) == pytest.approx(16.0 / 4)
    assert float(values["batch_scalar"]) == pytest.approx((4.0 * 3 + 8.0) / 4)
    with pytest.raises(ValueError, match="same keys"):
        means.update({"per_example": a}, batch_size=3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_term_means_of_alike_terms_equal_the_per_term_means(dtype: torch.dtype) -> None:
    # terms of one shape and dtype take the stacked path, mixed ones the per-term path
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(3, n, generator=gen, dtype=dtype) for n in (5, 2, 7)]
    alike, mixed = TermMeans(), TermMeans()
    for rows in batches:
        alike.update({"a": rows[0], "b": rows[1], "c": rows[2]}, batch_size=rows.shape[1])
        mixed.update({"a": rows[0], "b": rows[1], "c": rows[2].double()}, batch_size=rows.shape[1])
    everything = torch.cat(batches, dim=1).float()
    for i, name in enumerate("abc"):
        assert float(alike.compute()[name]) == pytest.approx(float(everything[i].mean()), abs=1e-5)
        assert float(mixed.compute()[name]) == pytest.approx(float(everything[i].mean()), abs=1e-5)
    scalars = TermMeans()  # every term a batch scalar
    scalars.update({"s": torch.tensor(2.0), "t": torch.tensor(4.0)}, batch_size=2)
    scalars.update({"s": torch.tensor(5.0), "t": torch.tensor(1.0)}, batch_size=1)
    assert [float(v) for v in scalars.compute().values()] == pytest.approx([3.0, 3.0])


def test_metrics_that_do_not_apply_are_absent() -> None:
    metrics = SplitMetrics()
    metrics.update({"loss": torch.ones(4)})  # no KL per dimension, no continuous latent
    assert metrics.compute() == {"loss": 1.0}
    assert metrics.kl_per_dim() is None and metrics.mu_variance() is None


class _Largest(Metric):
    """The largest value seen (a state reduced by max across ranks)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("value", torch.tensor(-math.inf), dist_reduce_fx="max")

    def update(self, value: Tensor) -> None:
        self.value = torch.maximum(self.value, value)

    def compute(self) -> Tensor:
        return self.value


class _Total(_Largest):
    """The sum of the values seen."""

    def __init__(self) -> None:
        Metric.__init__(self)
        self.add_state("value", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: Tensor) -> None:
        self.value += value


def test_a_variants_own_metric_spans_the_split_merges_across_ranks_and_resets() -> None:
    ranks = [SplitMetrics(), SplitMetrics()]
    for i, value in enumerate([1.0, 5.0, 2.0]):
        metrics = ranks[i % 2]
        metrics.update({"loss": torch.zeros(2)})
        metrics.update_metric("largest", _Largest, torch.tensor(value))
        metrics.update_metric("total", _Total, torch.tensor(value))
    assert ranks[1].compute() == {"loss": 0.0, "largest": 5.0, "total": 5.0}
    for name in ("largest", "total"):  # what a distributed sync does
        ranks[0].extra[name].merge_state(ranks[1].extra[name])
    assert ranks[0].compute() == {"loss": 0.0, "largest": 5.0, "total": 8.0}
    ranks[0].reset()
    assert ranks[0].compute() == {}
    with pytest.raises(ValueError, match="name of a term"):
        ranks[1].update_metric("loss", _Total, torch.tensor(1.0))
        ranks[1].compute()


class _LabelledData(L.LightningDataModule):
    """28x28 images with labels, under a data-set name, as VAEDataModule presents them."""

    def __init__(self, data_dir: str) -> None:
        super().__init__()
        self.dataset, self.data_dir = "mnist", data_dir
        gen = torch.Generator().manual_seed(0)
        self.x = torch.rand(40, 1, 28, 28, generator=gen)
        self.y = torch.arange(40) % 10

    def test_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=16)


def test_classifier_metrics_callback_logs_accuracies_with_a_cached_classifier(
    tmp_path, monkeypatch
) -> None:
    from vae_zoo.callbacks.classifier_metrics import ClassifierMetrics
    from vae_zoo.evaluation.classifier import SmallCNN, TrainedClassifier, save_classifier

    monkeypatch.setenv("VAE_ZOO_CACHE", str(tmp_path / "cache"))
    net = SmallCNN().eval()
    save_classifier(TrainedClassifier(net, "mnist", 0.5), tmp_path / "classifiers" / "mnist.pt")
    dm = _LabelledData(str(tmp_path))
    model = ConditionalVAE(latent_dim=2, num_classes=10, test_k=2, **TINY)
    trainer = quiet_trainer(callbacks=[ClassifierMetrics()])
    logged = trainer.test(model, datamodule=dm, verbose=False)[0]
    with torch.no_grad():
        recon = model.reconstruct(dm.x, dm.y)
        expected = (net(recon).argmax(1) == dm.y).float().mean()
    assert logged["test/recon_acc"] == pytest.approx(float(expected))
    assert 0 <= logged["test/cond_acc"] <= 1
    assert "test/nll" in logged  # the model's own metrics are untouched
    assert not any("classifier" in key for key in model.state_dict())


def test_classifier_metrics_callback_skips_without_a_classifier(tmp_path, monkeypatch) -> None:
    from vae_zoo.callbacks.classifier_metrics import ClassifierMetrics

    monkeypatch.setenv("VAE_ZOO_CACHE", str(tmp_path / "cache"))
    model = VAE(latent_dim=2, test_k=2, **TINY)
    trainer = quiet_trainer(callbacks=[ClassifierMetrics()])
    logged = trainer.test(model, datamodule=_LabelledData(str(tmp_path)), verbose=False)[0]
    assert "test/recon_acc" not in logged and "test/nll" in logged


def test_step_terms_fold_to_the_per_step_means() -> None:
    # StepTerms holds steps and folds them at once: the same means as one update per step,
    # for [B] terms (stacked path) and for scalars, [B, k] terms and mixed dtypes (other path)
    gen = torch.Generator().manual_seed(1)
    for make in (
        lambda n: {k: torch.randn(n, generator=gen) for k in ("loss", "recon", "kl")},
        lambda n: {
            "loss": torch.randn(n, generator=gen, dtype=torch.float64),
            "mmd": torch.randn((), generator=gen),
            "wide": torch.randn(n, 3, generator=gen),
        },
    ):
        per_step, held, buffer = TermMeans(), TermMeans(), StepTerms()
        for step, n in enumerate((5, 2, 7)):
            terms = make(n)
            per_step.update(terms, batch_size=n)
            buffer.add(terms, step=step)
            assert len(buffer) == step + 1
        last = {k: float(v.float().mean()) for k, v in terms.items()}
        assert {k: float(v) for k, v in buffer.last_means().items()} == pytest.approx(last)
        buffer.fold_into(held)
        assert len(buffer) == 0
        expected = per_step.compute()
        assert list(held.compute()) == list(expected)
        for name, value in expected.items():
            assert float(held.compute()[name]) == pytest.approx(float(value), abs=1e-6)
    buffer = StepTerms()
    buffer.add({"loss": torch.ones(2)})
    with pytest.raises(ValueError, match="same keys"):
        buffer.add({"loss": torch.ones(2), "kl": torch.ones(2)})


def test_step_terms_name_the_first_non_finite_step_and_terms() -> None:
    buffer = StepTerms()
    finite = {"loss": torch.ones(3), "kl": torch.ones(3)}
    buffer.add(finite, step=4, epoch=1)
    assert buffer.first_non_finite() is None
    buffer.add({"loss": torch.tensor([1.0, float("nan"), 1.0]), "kl": torch.ones(3)}, 5, 1)
    buffer.add({"loss": torch.ones(3), "kl": torch.full((3,), float("inf"))}, 6, 1)
    assert buffer.first_non_finite() == (5, 1, ["loss"])

