"""Lightning callbacks of vae_zoo, one module each.

* :class:`ImageGridLogger` (``image_grids``): PNG grids of reconstructions and prior samples,
  also sent to W&B / TensorBoard;
* :class:`LastCheckpoint` (``last_checkpoint``): ``last.ckpt`` at every epoch end;
* :class:`InterruptCheckpoint` (``interrupt_checkpoint``): ``last.ckpt`` on Ctrl-C / SIGTERM;
* :class:`ImagesPerSecond` (``images_per_second``): ``train/images_per_sec`` per epoch;
* :class:`ClassifierMetrics` (``classifier_metrics``): ``test/recon_acc``, ``test/cond_acc``.

The CLI adds the first four to every ``fit``.
"""

from vae_zoo.callbacks.image_grids import ImageGridLogger
from vae_zoo.callbacks.images_per_second import ImagesPerSecond
from vae_zoo.callbacks.interrupt_checkpoint import InterruptCheckpoint
from vae_zoo.callbacks.last_checkpoint import LastCheckpoint

__all__ = [
    "ClassifierMetrics",
    "ImageGridLogger",
    "ImagesPerSecond",
    "InterruptCheckpoint",
    "LastCheckpoint",
]


def __getattr__(name: str) -> object:
    # ClassifierMetrics needs the evaluation package (the classifier); training does not
    if name == "ClassifierMetrics":
        from vae_zoo.callbacks.classifier_metrics import ClassifierMetrics

        return ClassifierMetrics
    raise AttributeError(f"module 'vae_zoo.callbacks' has no attribute {name!r}")
