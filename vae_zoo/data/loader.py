"""The fast in-memory loader: one uint8 tensor, batches gathered by index, no per-sample Python.

A :class:`ShardedBatchSampler` yields one index tensor per batch; :class:`BatchDataset` turns
it into ``(x, y)`` with one gather, one float conversion and (for dynamic binarization) one
``torch.bernoulli`` per batch. :func:`batch_loader` wraps both in a plain ``DataLoader`` with
``batch_size=None``. The sampler subclasses ``DistributedSampler`` so that Lightning keeps it
under DDP instead of injecting its own, and gets ``set_epoch`` calls.
"""

import hashlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

_BINARIZE_ROWS = 8192


def derive_seed(*parts: int | str) -> int:
    """Combine ints/strings into one 63-bit seed, the same in every process and platform."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def fixed_binarization(images: Tensor, seed: int) -> Tensor:
    """Binarize uint8 images once and reproducibly: a pixel v becomes 255 with probability v/255."""
    generator = torch.Generator().manual_seed(seed)
    flat = images.cpu().reshape(len(images), -1)
    out = torch.empty_like(flat)
    # Chunks bound the temporary noise tensor; the generator stream makes the result chunk-free.
    for start in range(0, len(flat), _BINARIZE_ROWS):
        chunk = flat[start : start + _BINARIZE_ROWS]
        # u uniform on {0, ..., 254} gives P(u < v) = v / 255 exactly, in uint8 arithmetic.
        noise = torch.randint(0, 255, chunk.shape, generator=generator, dtype=torch.uint8)
        out[start : start + _BINARIZE_ROWS] = (noise < chunk).to(torch.uint8) * 255
    return out.reshape(images.shape)


class BatchDataset(Dataset[tuple[Tensor, Tensor]]):
    """uint8 images [N, C, H, W] and labels [N]; indexing with an index tensor gives a batch."""

    def __init__(self, images: Tensor, labels: Tensor, dynamic: bool) -> None:
        if images.dtype != torch.uint8 or len(images) != len(labels):
            raise ValueError("images must be uint8 and have one label each")
        self.images = images
        self.labels = labels.to(images.device, torch.int64)
        self.dynamic = dynamic

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(x, y)``: x float32 in [0, 1] (resampled 0/1 when dynamic), y int64."""
        index = index.to(self.images.device)
        # index_select: about 10x faster than advanced indexing for a dim-0 gather on the CPU;
        # true division of uint8 gives float32 in one pass, exactly pixel / 255.
        x = torch.div(self.images.index_select(0, index), 255).to(torch.float32)
        if self.dynamic:
            x = torch.bernoulli(x)
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
        if not self.shuffle:
            yield from self._eval_batches
            return
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        self.epoch += 1
        order = torch.randperm(self.num_examples, generator=generator)
        total = self.per_rank * self.num_replicas
        if total > self.num_examples:
            repeats = math.ceil(total / self.num_examples)
            order = order.repeat(repeats)[:total]
        shard = order[self.rank : total : self.num_replicas].to(self.device)
        for start in range(0, self.num_batches * self.batch_size, self.batch_size):
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
    """A ``DataLoader`` yielding whole ``(x, y)`` batches of this rank's shard; it has a len()."""
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
    return DataLoader(
        BatchDataset(images, labels, dynamic),
        batch_size=None,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=keep_batch,
        persistent_workers=num_workers > 0,
    )
