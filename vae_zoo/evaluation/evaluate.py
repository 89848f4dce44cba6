"""One model's test metrics over a set of images, outside a Trainer (used by ``compare``).

Each batch goes through the model's own ``evaluate_batch`` into the same
:class:`~vae_zoo.metrics.SplitMetrics` that ``test_step`` logs, so ``compare`` and
``python -m vae_zoo test`` report the same numbers, plus the classifier metrics
(``recon_acc``, ``cond_acc``) that need a classifier the Trainer does not have.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torchmetrics import MeanMetric
from tqdm.auto import tqdm

from vae_zoo.evaluation.classifier import TrainedClassifier
from vae_zoo.metrics import ACTIVE_UNIT_THRESHOLD, SplitMetrics
from vae_zoo.models import BaseVAE


@dataclass
class Evaluation:
    """Scalar metrics (``nll``, ``mse``, ``active_units``, ...) and per-unit vectors.

    ``kl_per_dim`` is None when the KL does not factorise over latent dimensions,
    ``mu_variance`` when the latent is not continuous.
    """

    metrics: dict[str, float]
    kl_per_dim: list[float] | None
    mu_variance: list[float] | None
    num_examples: int
    notes: list[str] = field(default_factory=list)


def batches(x: Tensor, y: Tensor | None, batch_size: int) -> Iterable[tuple[Tensor, Tensor | None]]:
    """Consecutive (x, y) slices of at most ``batch_size`` examples."""
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size], None if y is None else y[start : start + batch_size]


@torch.no_grad()
def evaluate(
    model: BaseVAE,
    x: Tensor,
    y: Tensor | None,
    k: int,
    batch_size: int = 100,
    classifier: TrainedClassifier | None = None,
    active_threshold: float = ACTIVE_UNIT_THRESHOLD,
    samples_per_class: int = 100,
    progress: str | None = None,
) -> Evaluation:
    """Test metrics of ``model`` on images ``x`` (labels ``y``) with k importance samples.

    With a classifier: ``recon_acc`` (reconstructions classified as their input's label) and,
    for a conditional model, ``cond_acc`` (samples of class c classified as c).
    """
    model.eval()
    device = model.device
    metrics = SplitMetrics(active_threshold=active_threshold).to(device)
    recon_acc = MeanMetric().to(device)
    steps = tqdm(
        batches(x, y, batch_size),
        total=-(-len(x) // batch_size),
        desc=progress,
        disable=None if progress else True,
        leave=False,
    )
    for xb, yb in steps:
        xb = xb.to(device)
        yb = None if yb is None else yb.to(device)
        ev = model.evaluate_batch(xb, yb, k)
        model.update_metrics(metrics, ev)
        if classifier is not None and yb is not None:
            recon_acc.update((classifier.predict(ev.reconstruction) == yb).float())
    result = Evaluation(metrics.compute(), metrics.kl_per_dim(), metrics.mu_variance(), len(x))
    if classifier is not None:
        if y is not None:
            result.metrics["recon_acc"] = float(recon_acc.compute())
        else:
            result.notes.append("recon_acc needs labels; this test set has none")
        if model.num_classes:
            result.metrics["cond_acc"] = conditional_accuracy(model, classifier, samples_per_class)
    return result


@torch.no_grad()
def conditional_accuracy(
    model: BaseVAE, classifier: TrainedClassifier, samples_per_class: int = 100
) -> float:
    """Fraction of prior samples of class c (mean images) that the classifier labels c."""
    labels = torch.arange(model.num_classes, device=model.device).repeat_interleave(
        samples_per_class
    )
    correct = 0
    for start in range(0, len(labels), 1000):
        chunk = labels[start : start + 1000]
        correct += int((classifier.predict(model.sample(len(chunk), chunk)) == chunk).sum())
    return correct / len(labels)
