"""``fid_clf``: the Fréchet distance of a model's samples to test images in classifier features.

torchmetrics' :class:`~torchmetrics.image.fid.FrechetInceptionDistance` computes it, with the
cached per-data-set classifier's penultimate layer (:meth:`SmallCNN.embed`, 128 features) as
its feature extractor instead of Inception: no weights can be downloaded here, and 28x28
digits are not Inception's domain. The samples are mean images E[x|z], z ~ p(z) (a conditional
model cycles through its classes, so every class is drawn equally often); the real images are
the data set's grey-level test images (``binarize: none``), the classifier's own domain.

The number only means something next to two others, which ``compare`` and ``test`` report
beside it: the classifier's test accuracy (how good the features are) and the reference, the
same distance between as many training images and the test images (what a model whose samples
were real images would get with that many samples).
"""

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from vae_zoo.evaluation.classifier import SmallCNN, TrainedClassifier
from vae_zoo.models import BaseVAE

DEFAULT_SAMPLES = 10_000


class ClassifierFeatures(nn.Module):
    """A :class:`SmallCNN`'s penultimate layer as FID feature extractor; always in eval mode."""

    def __init__(self, net: SmallCNN) -> None:
        super().__init__()
        self.net = net
        self.num_features = net.hidden  # read by torchmetrics instead of probing with an input

    def forward(self, x: Tensor) -> Tensor:
        """Images [B, C, H, W] in [0, 1] -> features [B, hidden]."""
        return self.net.embed(x)

    def train(self, mode: bool = True) -> "ClassifierFeatures":
        """Stay in eval mode (batch norm statistics and dropout of the trained classifier)."""
        return super().train(False)


def frechet_metric(features: nn.Module, keep_real: bool = True) -> FrechetInceptionDistance:
    """torchmetrics' FID over ``features``; with ``keep_real`` ``reset()`` keeps the real images."""
    return FrechetInceptionDistance(
        feature=features, normalize=True, reset_real_features=not keep_real
    )


def add_images(
    metric: FrechetInceptionDistance, images: Tensor | Iterable[Tensor], real: bool,
    batch_size: int = 500,
) -> int:
    """Feed images (one tensor, cut into batches, or an iterable of batches); returns how many."""
    device = metric.real_features_sum.device
    batches = (
        (images[i : i + batch_size] for i in range(0, len(images), batch_size))
        if isinstance(images, Tensor)
        else images
    )
    count = 0
    for batch in batches:
        metric.update(batch.to(device, torch.float32), real=real)
        count += len(batch)
    return count


@torch.no_grad()
def model_samples(model: BaseVAE, n: int, batch_size: int = 500) -> Iterator[Tensor]:
    """``n`` mean images E[x|z], z ~ p(z), in batches; conditional models cycle their classes."""
    num_classes = getattr(model, "num_classes", None)
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        if num_classes:
            labels = torch.arange(start, start + size, device=model.device) % num_classes
            yield model.sample(size, labels)
        else:
            yield model.sample(size)


class ClassifierFID:
    """``fid_clf`` of models (or image sets) against one set of real images, read once.

    Under DDP every rank gives its own share of real images and samples; torchmetrics sums
    the feature statistics of all ranks when the distance is computed.

    Args:
        classifier: the data set's trained classifier (its device is used).
        real: the real images [N, C, H, W] in [0, 1] (this rank's share).
        batch_size: images per forward pass of the classifier.
    """

    def __init__(
        self, classifier: TrainedClassifier, real: Tensor, batch_size: int = 500
    ) -> None:
        self.classifier = classifier
        self.batch_size = batch_size
        device = next(classifier.net.parameters()).device
        self.metric = frechet_metric(ClassifierFeatures(classifier.net)).to(device)
        self.num_real = add_images(self.metric, real, real=True, batch_size=batch_size)

    def of_images(self, images: Tensor | Iterable[Tensor]) -> float:
        """The distance of an image set (e.g. training images: the reference) to the real set."""
        self.metric.reset()  # forgets the previous fake set only
        add_images(self.metric, images, real=False, batch_size=self.batch_size)
        return float(self.metric.compute())

    def of_model(self, model: BaseVAE, n: int = DEFAULT_SAMPLES) -> float:
        """The distance of ``n`` of the model's samples to the real set (``fid_clf``)."""
        return self.of_images(model_samples(model, n, self.batch_size))


def grey_images(
    dataset: str, data_dir: str | None, n: int | None, batch_size: int = 1000
) -> tuple[Tensor, Tensor]:
    """(training, test) grey-level images of a data set, at most ``n`` of each, on the CPU.

    The test images are the first ``n`` in file order; the training images the first ``n``
    of a permutation with a fixed seed (all 60,000 are candidates). The files must be present
    (nothing is downloaded here).
    """
    from vae_zoo.data import VAEDataModule

    dm = VAEDataModule(
        dataset=dataset,
        data_dir=data_dir,
        batch_size=batch_size,
        val_size=0,
        binarize="none",
        download=False,
        on_device=False,
        seed=0,
    )
    dm.prepare_data()
    dm.setup("fit")
    return _first(dm.train_dataloader(), n), _first(dm.test_dataloader(), n)


def _first(loader: Iterable, n: int | None) -> Tensor:
    out, have = [], 0
    for batch in loader:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        out.append(x.cpu())
        have += len(x)
        if n is not None and have >= n:
            break
    return torch.cat(out)[:n]
