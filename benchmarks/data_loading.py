"""Batches per second: the in-memory fast path against torchvision's per-sample DataLoader.

Both read the real MNIST training images (60,000, from $VAE_ZOO_DATA or --data_dir), batch size
128, shuffled, num_workers=0, one epoch each, on the CPU. The baseline is
``DataLoader(torchvision.datasets.MNIST(..., transform=ToTensor()))``; the fast path is
``VAEDataModule(binarize="none")``, which yields the same grey levels (pixel / 255). The fast
path with dynamic binarization (one uint8 draw per pixel a batch) is reported as well, next to
the draw it replaced (``torch.bernoulli`` of each ``binarize="none"`` batch, in the same run).

    VAE_ZOO_DATA=/work/shared/data python benchmarks/data_loading.py
"""

import argparse
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision.transforms import ToTensor

from vae_zoo.data import VAEDataModule, provision

BATCH_SIZE = 128


def batches_per_second(loader: Iterable) -> tuple[float, int, float]:
    """Iterate ``loader`` once; return (batches/s, batches, seconds)."""
    start = time.perf_counter()
    count, last = 0, None
    for batch in loader:
        count += 1
        last = batch
    seconds = time.perf_counter() - start
    assert last is not None and last[0].dtype == torch.float32 and last[0].shape[1:] == (1, 28, 28)
    return count / seconds, count, seconds


def torchvision_loader(data_dir: str | None, tmp: Path) -> DataLoader:
    """torchvision's MNIST over the verified files, laid out as it wants (MNIST/raw, plain IDX)."""
    raw = tmp / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, file in provision("mnist", data_dir, download=False).items():
        (raw / name).write_bytes(file.data)
    dataset = torchvision.datasets.MNIST(str(tmp), train=True, transform=ToTensor())
    return DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=0)


def fast_loader(data_dir: str | None, binarize: str) -> tuple[DataLoader, float]:
    """The fast path's training loader over all 60,000 images, and its setup time."""
    start = time.perf_counter()
    dm = VAEDataModule(
        data_dir=data_dir, batch_size=BATCH_SIZE, val_size=0, binarize=binarize, download=False
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm.train_dataloader(), time.perf_counter() - start


def main() -> None:
    """Run each loader for one epoch and print batches/s and the speed-up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=None, help="default: $VAE_ZOO_DATA, else ./data")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        # On a busy machine, OpenMP's fork/join on tiny batch kernels dominates; 1 thread
        # measures the loaders rather than the contention.
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH_SIZE}")
    with tempfile.TemporaryDirectory() as tmp:
        baseline, count, seconds = batches_per_second(torchvision_loader(args.data_dir, Path(tmp)))
    label = "torchvision DataLoader, ToTensor"
    print(f"{label:<32}: {baseline:9.1f} batches/s ({count} in {seconds:.2f} s)")
    # (label, the data module's binarize, a draw applied to each batch it yields)
    paths = (
        ("binarize=none", "none", None),
        ("binarize=dynamic", "dynamic", None),
        ("torch.bernoulli per batch", "none", torch.bernoulli),  # the draw dynamic replaced
    )
    rates = {}
    for label, mode, draw in paths:
        loader, setup = fast_loader(args.data_dir, mode)
        if draw is not None:
            loader = ((draw(x), y) for x, y in loader)
        rates[label], count, seconds = batches_per_second(loader)
        print(
            f"{'fast path, ' + label:<32}: {rates[label]:9.1f} batches/s ({count} in "
            f"{seconds:.2f} s; setup {setup:.2f} s)  speed-up x{rates[label] / baseline:.1f}"
        )
    ratio = rates["binarize=dynamic"] / rates["torch.bernoulli per batch"]
    print(f"dynamic binarization / torch.bernoulli: x{ratio:.2f}")


if __name__ == "__main__":
    main()
