"""MNIST / Fashion-MNIST data: verified IDX files, the fast in-memory loader and the datamodule."""

from vae_zoo.data.checksums import (
    CHECKSUMS,
    DATASETS,
    FILE_NAMES,
    ChecksumMismatchError,
    CorruptFileError,
    DatasetInfo,
)
from vae_zoo.data.datamodule import VAEDataModule, split_indices
from vae_zoo.data.idx import read_idx, write_idx
from vae_zoo.data.loader import ShardedBatchSampler, batch_loader
from vae_zoo.data.sources import DataUnavailableError, provision, resolve_data_dir

__all__ = [
    "CHECKSUMS",
    "DATASETS",
    "FILE_NAMES",
    "ChecksumMismatchError",
    "CorruptFileError",
    "DataUnavailableError",
    "DatasetInfo",
    "ShardedBatchSampler",
    "VAEDataModule",
    "batch_loader",
    "provision",
    "read_idx",
    "resolve_data_dir",
    "split_indices",
    "write_idx",
]
