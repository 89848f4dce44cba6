"""Classifier-based test metrics in ``python -m vae_zoo test`` when a classifier exists.

``test/recon_acc``, ``test/cond_acc`` (conditional models) and ``test/fid_clf`` (see
:mod:`vae_zoo.evaluation.fid`) with, beside it, ``test/fid_clf_ref`` (training vs test images)
and ``test/classifier_acc`` (the classifier's own test accuracy).

The classifier stays out of the model (and its state_dict): this callback loads it at the
start of testing, from ``classifier`` or else from the cache of the data module's data set
(:func:`vae_zoo.evaluation.classifier.find_classifier`). Without one it says how to train
one and logs nothing; it never trains one itself (``compare`` does that).
"""

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torchmetrics import MeanMetric

from vae_zoo.errors import VAEZooError
from vae_zoo.evaluation.classifier import (
    ClassifierUnavailableError,
    TrainedClassifier,
    candidate_paths,
    find_classifier,
    load_classifier_file,
)
from vae_zoo.evaluation.evaluate import conditional_accuracy
from vae_zoo.evaluation.fid import DEFAULT_SAMPLES, ClassifierFID, grey_images


class ClassifierMetrics(Callback):
    """Log classifier accuracy on test reconstructions and, for a CVAE, on class samples.

    Args:
        classifier: a classifier file; None looks for the cached one of the data set.
        samples_per_class: conditional samples per class for ``test/cond_acc``.
        fid_samples: samples, test images and training images for ``test/fid_clf`` and its
            reference (0: no fid).
    """

    def __init__(
        self,
        classifier: str | None = None,
        samples_per_class: int = 100,
        fid_samples: int = DEFAULT_SAMPLES,
    ) -> None:
        if samples_per_class < 1:
            raise ValueError(f"samples_per_class must be >= 1, got {samples_per_class}")
        if fid_samples < 0 or fid_samples == 1:
            raise ValueError(f"fid_samples must be 0 (off) or >= 2, got {fid_samples}")
        self.classifier = classifier
        self.samples_per_class = samples_per_class
        self.fid_samples = fid_samples
        self._clf: TrainedClassifier | None = None
        self._recon_acc: MeanMetric | None = None
        self._fid: ClassifierFID | None = None
        self._fid_ref: float | None = None

    def _find(self, trainer: L.Trainer) -> TrainedClassifier | None:
        if self.classifier is not None:
            return load_classifier_file(self.classifier)
        dm = trainer.datamodule
        dataset = getattr(dm, "dataset", None)
        if not isinstance(dataset, str):
            rank_zero_info("ClassifierMetrics: the data module names no data set; skipped")
            return None
        data_dir = getattr(dm, "data_path", None) or getattr(dm, "data_dir", None)
        clf = find_classifier(dataset, data_dir)
        if clf is None:
            where = ", ".join(map(str, candidate_paths(dataset, data_dir)))
            rank_zero_info(
                f"no cached {dataset} classifier ({where}): test/recon_acc and test/cond_acc "
                f"are skipped; train one with `python -m vae_zoo.evaluation.classifier "
                f"--dataset {dataset}` (or run `python -m vae_zoo compare`)"
            )
        return clf

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Load the classifier onto the model's device, or decide to skip."""
        try:
            clf = self._find(trainer)
        except ClassifierUnavailableError as err:
            rank_zero_warn(f"ClassifierMetrics skipped: {err}")
            clf = None
        self._clf = None if clf is None else clf.to(pl_module.device)
        self._recon_acc = MeanMetric().to(pl_module.device)
        self._fid = None
        if self._clf is not None and self.fid_samples:
            self._prepare_fid(trainer)

    def _prepare_fid(self, trainer: L.Trainer) -> None:
        """Read this rank's share of the grey test images and compute the reference distance."""
        dm = trainer.datamodule
        dataset = getattr(dm, "dataset", None)
        if not isinstance(dataset, str):
            rank_zero_info("test/fid_clf skipped: the data module names no data set")
            return
        try:
            train, test = grey_images(dataset, getattr(dm, "data_dir", None), self.fid_samples)
        except VAEZooError as err:
            # one line: the data error's own message lists every source it tried
            rank_zero_warn(
                f"test/fid_clf skipped: the {dataset} images could not be read "
                f"({type(err).__name__}); `python -m vae_zoo data verify` says why"
            )
            return
        rank, world = trainer.global_rank, trainer.world_size
        self._fid = ClassifierFID(self._clf, test[rank::world])
        self._fid_ref = self._fid.of_images(train[rank::world])

    @torch.no_grad()
    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Classify the batch's reconstructions E[x|z=mu] against its labels."""
        x, y = pl_module.unpack(batch)
        if self._clf is None or y is None:
            return
        self._recon_acc.update((self._clf.predict(pl_module.reconstruct(x, y)) == y).float())

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log ``test/recon_acc`` (synchronised by torchmetrics), ``test/cond_acc``, ``fid_clf``."""
        if self._clf is None:
            return
        if self._recon_acc.update_count:
            pl_module.log("test/recon_acc", self._recon_acc.compute())
        if pl_module.num_classes:
            acc = conditional_accuracy(pl_module, self._clf, self.samples_per_class)
            pl_module.log("test/cond_acc", acc, sync_dist=True)
        self._recon_acc.reset()
        if self._fid is not None:
            # this rank's share of the samples; the distance sums the statistics of all ranks
            rank, world = trainer.global_rank, trainer.world_size
            share = len(range(rank, self.fid_samples, world))
            fid = self._fid.of_model(pl_module, share)
            # the same value on every rank: sync_dist only keeps Lightning from warning
            pl_module.log("test/fid_clf", fid, sync_dist=True)
            pl_module.log("test/fid_clf_ref", self._fid_ref, sync_dist=True)
            pl_module.log("test/classifier_acc", self._clf.test_accuracy, sync_dist=True)
