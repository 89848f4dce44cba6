"""The fast in-memory loader: one uint8 tensor, batches gathered by index, no per-sample Python.

A :class:`ShardedBatchSampler` yields one index tensor per batch; :class:`BatchDataset` turns
it into ``(x, y)`` with one gather (and one float conversion) per batch. :class:`BatchLoader`,
a ``DataLoader`` with ``batch_size=None``, draws the dynamic binarization (:func:`binarize`, one
uint8 draw per pixel, from its own generator) and can save and restore its place in an epoch:
it follows Lightning's stateful loader protocol (``state_dict``/``load_state_dict``), so a run
resumed from a mid-epoch checkpoint continues with the batches the epoch had not yet seen,
binarized as they would have been. The sampler subclasses ``DistributedSampler`` so that
Lightning keeps it under DDP instead of injecting its own, and gets ``set_epoch`` calls.
"""

import hashlib
import math
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

_BINARIZE_ROWS = 8192


def derive_seed(*parts: int | str) -> int:
    """Combine ints/strings into one 63-bit seed, the same in every process and platform."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def binarize(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Binary images drawn from uint8 grey levels: a pixel v is True with probability v / 255.

    The probability is exact: u uniform on {0, ..., 254} gives P(u < v) = v / 255 in uint8
    arithmetic. On the CPU it is also faster than ``torch.bernoulli`` of the float v / 255:
    1.3x on MNIST batches, 3x on uniform grey levels (``benchmarks/data_loading.py``).
    """
    noise = torch.randint(
        0, 255, images.shape, generator=generator, dtype=torch.uint8, device=images.device
    )
    return noise < images


def fixed_binarization(images: Tensor, seed: int) -> Tensor:
    """Binarize uint8 images once and reproducibly: a pixel v becomes 255 with probability v/255."""
    generator = torch.Generator().manual_seed(seed)
    flat = images.cpu().reshape(len(images), -1)
    out = torch.empty_like(flat)
    # Chunks bound the temporary noise tensor; the generator stream makes the result chunk-free.
    for start in range(0, len(flat), _BINARIZE_ROWS):
        chunk = flat[start : start + _BINARIZE_ROWS]
        out[start : start + _BINARIZE_ROWS] = binarize(chunk, generator).to(torch.uint8) * 255
    return out.reshape(images.shape)


class BatchDataset(Dataset[tuple[Tensor, Tensor]]):
    """uint8 images [N, C, H, W] and labels [N]; indexing with an index tensor gives a batch.

    With ``raw`` the batch's images stay uint8 grey levels, for :class:`BatchLoader` to
    binarize with its own generator; otherwise they are float32 in [0, 1].
    """

    def __init__(self, images: Tensor, labels: Tensor, raw: bool = False) -> None:
        if images.dtype != torch.uint8 or len(images) != len(labels):
            raise ValueError("images must be uint8 and have one label each")
        self.images = images
        self.labels = labels.to(images.device, torch.int64)
        self.raw = raw

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(x, y)``: x float32 pixel / 255 (uint8 with ``raw``), y int64."""
        index = index.to(self.images.device)
        # index_select: about 10x faster than advanced indexing for a dim-0 gather on the CPU
        x = self.images.index_select(0, index)
        if not self.raw:
            x = torch.div(x, 255).to(torch.float32)  # true division of uint8: float32, exact
        return x, self.labels.index_select(0, index)


class ShardedBatchSampler(DistributedSampler):
    """Yields this rank's batches as index tensors; every rank yields the same number of batches.

    Shuffled (training): one ``torch.randperm`` per epoch from a generator seeded with
    ``(seed, epoch)``, identical on every rank; rank r takes ``perm[r::world_size]``. The
    permutation is padded by wrapping around to a multiple of ``world_size`` (at most
    ``world_size - 1`` repeats); with ``drop_last`` it is cut instead (the dropped examples
    change every epoch) and each rank's last incomplete batch is dropped.

    Not shuffled (validation/test/predict): rank r takes examples ``r::world_size``, an exact
    cover without duplicates. Shards then differ by at most one example, which can leave a rank
    one batch short; that rank splits its last batch in two so the counts agree (no empty batch,
    no duplicate). Only when that is impossible (batch_size 1, or fewer examples than ranks) are
    examples repeated to pad. ``drop_last`` is ignored.

    Without a trainer calling :meth:`set_epoch`, each pass advances the epoch by itself.
    Permutations are drawn on the CPU (the same on every device) and the index tensors are
    moved to ``device``, the data's device.
    """

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        super().__init__(
            range(num_examples),
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.num_examples = num_examples
        self.batch_size = batch_size
        # Indices live where the data lives: one copy per epoch, not a host-to-device copy
        # (and stream sync) per batch.
        self.device = torch.device(device)
        if shuffle and drop_last:
            self.per_rank = num_examples // world_size
            self.num_batches = self.per_rank // batch_size
        else:
            self.per_rank = math.ceil(num_examples / world_size)
            self.num_batches = math.ceil(self.per_rank / batch_size)
        if not shuffle:
            self._eval_batches = self._exact_cover()
        #: the epoch of the pass being iterated (set when it starts)
        self.pass_epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches to skip)

    def resume(self, epoch: int, batches: int) -> None:
        """Make the next pass of ``epoch`` (if it is that epoch) skip its first ``batches``."""
        self.set_epoch(epoch)
        self._resume = (epoch, batches)

    def _exact_cover(self) -> list[Tensor]:
        indices = torch.arange(self.rank, self.num_examples, self.num_replicas)
        size, count = self.batch_size, self.num_batches
        sizes = [size] * (len(indices) // size) + (
            [len(indices) % size] if len(indices) % size else []
        )
        if len(sizes) < count and sizes and sizes[-1] >= 2:
            last = sizes.pop()
            sizes += [last - last // 2, last // 2]
        if len(sizes) < count:
            # Unavoidable duplicates: see the class docstring.
            extra = count - len(sizes)
            indices = torch.cat([indices, torch.arange(extra) % max(self.num_examples, 1)])
            sizes += [1] * extra
        return list(torch.split(indices.to(self.device), sizes))

    def __iter__(self) -> Iterator[Tensor]:
        self.pass_epoch = epoch = self.epoch
        skip = 0
        if self._resume is not None:
            skip = self._resume[1] if self._resume[0] == epoch else 0
            self._resume = None
        if not self.shuffle:
            yield from self._eval_batches[skip:]
            return
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        self.epoch += 1
        order = torch.randperm(self.num_examples, generator=generator)
        total = self.per_rank * self.num_replicas
        if total > self.num_examples:
            repeats = math.ceil(total / self.num_examples)
            order = order.repeat(repeats)[:total]
        shard = order[self.rank : total : self.num_replicas].to(self.device)
        for start in range(skip * self.batch_size, self.num_batches * self.batch_size,
                           self.batch_size):
            yield shard[start : start + self.batch_size]

    def __len__(self) -> int:
        return self.num_batches


def keep_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Collate function that returns the formed batch (the default turns tuples into lists)."""
    return batch


def batch_loader(
    images: Tensor,
    labels: Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    dynamic: bool,
    drop_last: bool = False,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
) -> DataLoader:
    """A :class:`BatchLoader` yielding whole ``(x, y)`` batches of this rank's shard."""
    if num_workers > 0 and images.device.type != "cpu":
        raise ValueError("num_workers > 0 needs the images on the CPU (worker processes)")
    sampler = ShardedBatchSampler(
        len(images),
        batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        seed=seed,
        rank=rank,
        world_size=world_size,
        device=images.device,
    )
    seed = derive_seed(seed, "binarize", "dynamic", rank) if dynamic else None
    # keywords: Lightning rebuilds the loader from them (predict) and replaces the sampler
    return BatchLoader(
        BatchDataset(images, labels, raw=dynamic),
        sampler=sampler,
        num_workers=num_workers,
        binarize_seed=seed,
    )


class BatchLoader(DataLoader):
    """A ``DataLoader`` of whole batches that can save and restore its place in an epoch.

    ``state_dict()`` holds the epoch of the current pass, the number of batches it has
    delivered and the state of the binarization generator; ``load_state_dict()`` makes the
    next pass of that epoch continue after those batches with the same draws. Lightning calls
    both (its stateful loader protocol) when it saves and restores a checkpoint.

    Args:
        dataset: the split; ``raw`` (uint8 images) when ``binarize_seed`` is given.
        sampler: yields the index tensor of each batch.
        num_workers: DataLoader worker processes (the batches are binarized in this process).
        binarize_seed: seed of the dynamic binarization; None for fixed data.
        **kwargs: further ``DataLoader`` arguments.
    """

    def __init__(
        self,
        dataset: BatchDataset,
        sampler: ShardedBatchSampler | None = None,
        num_workers: int = 0,
        binarize_seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        # **kwargs: Lightning rebuilds a loader with a sampler of its own for predict
        options = {"batch_size": None, "collate_fn": keep_batch} | kwargs
        options.setdefault("persistent_workers", num_workers > 0)
        super().__init__(dataset, sampler=sampler, num_workers=num_workers, **options)
        if (binarize_seed is not None) != dataset.raw:
            raise ValueError("a BatchDataset is raw (uint8) exactly when its loader binarizes it")
        self.binarize_seed = binarize_seed
        self.binarizer: torch.Generator | None = None
        if binarize_seed is not None:
            self.binarizer = torch.Generator(dataset.images.device).manual_seed(binarize_seed)
        self._delivered = 0

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        self._delivered = 0
        for x, y in super().__iter__():
            if self.binarizer is not None:
                x = binarize(x, self.binarizer).to(torch.float32)
            self._delivered += 1
            yield x, y

    def state_dict(self) -> dict[str, Any]:
        """Where the current pass is: its epoch, batches delivered, binarization RNG state."""
        sampler = self.sampler
        assert isinstance(sampler, ShardedBatchSampler)
        return {
            "epoch": sampler.pass_epoch,
            "batches": self._delivered,
            "binarize_rng": None if self.binarizer is None else self.binarizer.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved epoch after its delivered batches, with the saved RNG state."""
        sampler = self.sampler
        assert isinstance(sampler, ShardedBatchSampler)
        sampler.resume(int(state["epoch"]), int(state["batches"]))
        rng = state.get("binarize_rng")
        if self.binarizer is not None and rng is not None:
            try:
                self.binarizer.set_state(rng)
            except (RuntimeError, TypeError, ValueError):
                # saved on another device kind (a CUDA generator's state is not a CPU one's):
                # the position is restored, the draws continue from this loader's own seed
                warnings.warn(
                    "resuming: the binarization stream of the checkpoint belongs to another "
                    "device; its batches continue with fresh draws",
                    stacklevel=2,
                )
