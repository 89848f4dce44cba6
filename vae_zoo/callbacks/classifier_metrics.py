"""``test/recon_acc`` and ``test/cond_acc`` in ``python -m vae_zoo test`` when a classifier exists.

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

from vae_zoo.evaluation.classifier import (
    ClassifierUnavailableError,
    TrainedClassifier,
    candidate_paths,
    find_classifier,
    load_classifier_file,
)
from vae_zoo.evaluation.evaluate import conditional_accuracy


class ClassifierMetrics(Callback):
    """Log classifier accuracy on test reconstructions and, for a CVAE, on class samples.

    Args:
        classifier: a classifier file; None looks for the cached one of the data set.
        samples_per_class: conditional samples per class for ``test/cond_acc``.
    """

    def __init__(self, classifier: str | None = None, samples_per_class: int = 100) -> None:
        if samples_per_class < 1:
            raise ValueError(f"samples_per_class must be >= 1, got {samples_per_class}")
        self.classifier = classifier
        self.samples_per_class = samples_per_class
        self._clf: TrainedClassifier | None = None
        self._recon_acc: MeanMetric | None = None

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
        if self._clf is None or not isinstance(batch, (tuple, list)) or len(batch) < 2:
            return
        x, y = batch[0], batch[1]
        self._recon_acc.update((self._clf.predict(pl_module.reconstruct(x, y)) == y).float())

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log ``test/recon_acc`` (synchronised by torchmetrics) and ``test/cond_acc``."""
        if self._clf is None:
            return
        if self._recon_acc.update_count:
            pl_module.log("test/recon_acc", self._recon_acc.compute())
        if pl_module.num_classes:
            acc = conditional_accuracy(pl_module, self._clf, self.samples_per_class)
            pl_module.log("test/cond_acc", acc, sync_dist=True)
        self._recon_acc.reset()
