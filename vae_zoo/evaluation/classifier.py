"""A small CNN classifier per data set, trained once and cached, that labels generated images.

``compare`` uses it for ``cond_acc`` (does a conditional VAE draw the class it was asked
for?) and ``recon_acc`` (do reconstructions keep the class of the input?). It is never part
of a VAE's state_dict.

Cache: a classifier for ``<dataset>`` is looked up as ``<data_dir>/classifiers/<dataset>.pt``
and then ``$VAE_ZOO_CACHE/classifiers/<dataset>.pt`` (``$VAE_ZOO_CACHE`` defaults to
``$XDG_CACHE_HOME/vae_zoo`` or ``~/.cache/vae_zoo``); a newly trained one is written to the
second place, so read-only data folders stay untouched. The file stores the network, the data
set and the classifier's own test accuracy. Train one explicitly with
``python -m vae_zoo classifier --dataset mnist``.
"""

import argparse
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vae_zoo.cli.flags import add_flag
from vae_zoo.errors import ConfigError, VAEZooError, exit_status

FORMAT_VERSION = 1


class ClassifierUnavailableError(VAEZooError):
    """No cached classifier exists and none could be trained (e.g. the data is missing)."""


class SmallCNN(nn.Module):
    """Two conv-BN-pool blocks and a hidden layer: ~99% on MNIST, ~90% on Fashion-MNIST."""

    def __init__(
        self,
        num_classes: int = 10,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        channels: tuple[int, int] = (16, 32),
        hidden: int = 128,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.image_shape = tuple(image_shape)
        self.channels = tuple(channels)
        self.hidden = hidden
        c, h, w = image_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, channels[0], 3, padding=1),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels[0], channels[1], 3, padding=1),
            nn.BatchNorm2d(channels[1]),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        flat = channels[1] * (h // 4) * (w // 4)
        self.head = nn.Sequential(
            nn.Dropout(0.25), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Images [B, C, H, W] in [0, 1] -> class logits [B, K]."""
        return self.head(self.features(x))

    def embed(self, x: Tensor) -> Tensor:
        """Images [B, C, H, W] in [0, 1] -> penultimate-layer features [B, hidden] (after ReLU)."""
        return self.head[:-1](self.features(x))


@dataclass
class TrainedClassifier:
    """A trained classifier with where it came from and how good it is."""

    net: SmallCNN
    dataset: str
    test_accuracy: float
    path: Path | None = None

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Predicted labels [B] of images [B, C, H, W] in [0, 1] (on the classifier's device)."""
        self.net.eval()
        device = next(self.net.parameters()).device
        return self.net(x.to(device)).argmax(1).to(x.device)

    def to(self, device: torch.device | str) -> "TrainedClassifier":
        """Move the network to ``device``; returns self."""
        self.net.to(device)
        return self


def cache_dir() -> Path:
    """Where newly trained classifiers are written: ``$VAE_ZOO_CACHE/classifiers``."""
    root = os.environ.get("VAE_ZOO_CACHE")
    if root:
        return Path(root).expanduser() / "classifiers"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "vae_zoo" / "classifiers"


def candidate_paths(dataset: str, data_dir: str | Path | None = None) -> list[Path]:
    """The places a cached classifier for ``dataset`` is looked for, in order."""
    paths = []
    if data_dir is not None:
        paths.append(Path(data_dir).expanduser() / "classifiers" / f"{dataset}.pt")
    paths.append(cache_dir() / f"{dataset}.pt")
    return paths


def save_classifier(clf: TrainedClassifier, path: str | Path, **extra: object) -> Path:
    """Write ``clf`` (weights, data set, test accuracy) to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = clf.net
    record = {
        "format": FORMAT_VERSION,
        "dataset": clf.dataset,
        "test_accuracy": clf.test_accuracy,
        "num_classes": net.num_classes,
        "image_shape": list(net.image_shape),
        "channels": list(net.channels),
        "hidden": net.hidden,
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        **extra,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(record, tmp)
    tmp.replace(path)  # atomic, so a concurrent reader never sees half a file
    clf.path = path
    return path


def load_classifier_file(path: str | Path, map_location: str = "cpu") -> TrainedClassifier:
    """Read a classifier written by :func:`save_classifier`."""
    path = Path(path)
    try:
        record = torch.load(path, map_location=map_location, weights_only=True)
        net = SmallCNN(
            num_classes=int(record["num_classes"]),
            image_shape=tuple(record["image_shape"]),
            channels=tuple(record["channels"]),
            hidden=int(record["hidden"]),
        )
        net.load_state_dict(record["state_dict"])
    except FileNotFoundError:
        raise ClassifierUnavailableError(f"classifier file {path} does not exist") from None
    except Exception as err:  # a truncated or foreign file: say which and how to fix it
        raise ClassifierUnavailableError(
            f"classifier file {path} is unreadable ({type(err).__name__}: {err}); delete it and "
            "train a new one with `python -m vae_zoo classifier --dataset <name>`"
        ) from None
    net.eval()
    return TrainedClassifier(net, str(record["dataset"]), float(record["test_accuracy"]), path)


def find_classifier(dataset: str, data_dir: str | Path | None = None) -> TrainedClassifier | None:
    """The first cached classifier for ``dataset`` (see :func:`candidate_paths`), or None."""
    for path in candidate_paths(dataset, data_dir):
        if path.is_file():
            clf = load_classifier_file(path)
            if clf.dataset != dataset:
                raise ClassifierUnavailableError(
                    f"{path} holds a classifier for {clf.dataset!r}, not {dataset!r}; delete it"
                )
            return clf
    return None


@torch.no_grad()
def accuracy(net: nn.Module, batches: Iterable, device: torch.device | str = "cpu") -> float:
    """Fraction of correctly classified examples over (x, y) batches."""
    net.eval()
    correct = total = 0
    for x, y in batches:
        pred = net(x.to(device)).argmax(1)
        correct += int((pred == y.to(device)).sum())
        total += len(y)
    if total == 0:
        raise ConfigError("cannot measure classifier accuracy on an empty test set")
    return correct / total


def fit_classifier(
    net: SmallCNN,
    train_batches: Iterable,
    epochs: int = 3,
    lr: float = 2e-3,
    device: torch.device | str = "cpu",
    log: bool = False,
) -> SmallCNN:
    """Train ``net`` with Adam, a cosine-decayed learning rate and cross-entropy."""
    net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    # decaying to zero over the few epochs is what gets a small net to its accuracy quickly
    total = epochs * len(train_batches) if hasattr(train_batches, "__len__") else 0
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total) if total else None
    for epoch in range(epochs):
        net.train()
        start, seen, loss_sum = time.perf_counter(), 0, 0.0
        for x, y in train_batches:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            seen += len(y)
            loss_sum += float(loss.detach()) * len(y)
        if log:
            print(
                f"  classifier epoch {epoch + 1}/{epochs}: loss {loss_sum / max(seen, 1):.4f} "
                f"({seen} images, {time.perf_counter() - start:.0f} s)",
                file=sys.stderr,
            )
    net.eval()
    return net


def _real_loaders(dataset: str, data_dir: str | Path | None, batch_size: int, seed: int):
    """Train and test loaders of the real (grey-level) images through VAEDataModule."""
    from vae_zoo.data import VAEDataModule

    dm = VAEDataModule(
        dataset=dataset,
        data_dir=None if data_dir is None else str(data_dir),
        batch_size=batch_size,
        val_size=0,  # no model selection here: every training image trains the classifier
        binarize="none",
        seed=seed,
    )
    dm.prepare_data()
    dm.setup("fit")
    train = dm.train_dataloader()
    dm.setup("test")
    return dm, train, dm.test_dataloader()


def train_classifier(
    dataset: str,
    data_dir: str | Path | None = None,
    epochs: int = 3,
    batch_size: int = 128,
    seed: int = 0,
    device: torch.device | str = "cpu",
    out: str | Path | None = None,
    log: bool = True,
) -> TrainedClassifier:
    """Train a classifier on ``dataset``'s training images, test it, cache it; returns it."""
    torch.manual_seed(seed)
    try:
        dm, train, test = _real_loaders(dataset, data_dir, batch_size, seed)
    except VAEZooError as err:
        raise ClassifierUnavailableError(
            f"no classifier for {dataset!r} is cached and none can be trained: {err}"
        ) from None
    net = SmallCNN(num_classes=dm.num_classes, image_shape=tuple(dm.image_shape))
    if log:
        print(f"training a {dataset} classifier once ({epochs} epochs)...", file=sys.stderr)
    fit_classifier(net, train, epochs=epochs, device=device, log=log)
    acc = accuracy(net, test, device=device)
    clf = TrainedClassifier(net.cpu(), dataset, acc)
    path = Path(out) if out is not None else cache_dir() / f"{dataset}.pt"
    save_classifier(clf, path, epochs=epochs, seed=seed)
    if log:
        print(f"{dataset} classifier: test accuracy {acc:.4f}, saved to {path}", file=sys.stderr)
    return clf


def get_classifier(
    dataset: str,
    data_dir: str | Path | None = None,
    mode: str = "auto",
    device: torch.device | str = "cpu",
) -> TrainedClassifier | None:
    """Resolve ``mode``: ``auto`` (cached, else train), ``cached``, ``train``, ``none``, or a path.

    Returns None for ``none``; raises :class:`ClassifierUnavailableError` with a message
    when the asked-for classifier cannot be had.
    """
    if mode == "none":
        return None
    if mode not in ("auto", "cached", "train"):
        return load_classifier_file(mode).to(device)
    clf = None if mode == "train" else find_classifier(dataset, data_dir)
    if clf is None and mode == "cached":
        raise ClassifierUnavailableError(
            f"no cached classifier for {dataset!r} (looked in "
            f"{', '.join(map(str, candidate_paths(dataset, data_dir)))}); train one with "
            f"`python -m vae_zoo classifier --dataset {dataset}`"
        )
    if clf is None:
        clf = train_classifier(dataset, data_dir, device=device)
    return clf.to(device)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m vae_zoo.evaluation.classifier``."""
    parser = argparse.ArgumentParser(
        prog="python -m vae_zoo classifier",
        description="Train the small CNN classifier used by `compare` for cond_acc/recon_acc.",
    )
    parser.add_argument("--dataset", required=True, help="mnist or fashion_mnist")
    add_flag(parser, "--data_dir", default=None, help="data folder (default $VAE_ZOO_DATA)")
    parser.add_argument("--epochs", type=int, default=3)
    add_flag(parser, "--batch_size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help=f"file to write (default {cache_dir()}/...)")
    parser.add_argument("--force", action="store_true", help="train even if one is cached")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Train (or re-train with --force) and cache the classifier of one data set."""
    args = build_parser().parse_args(argv)
    return exit_status(lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    if not args.force and args.out is None:
        cached = find_classifier(args.dataset, args.data_dir)
        if cached is not None:
            print(f"{cached.path}: test accuracy {cached.test_accuracy:.4f} (cached)")
            return
    clf = train_classifier(
        args.dataset,
        args.data_dir,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        out=args.out,
    )
    print(f"{clf.path}: test accuracy {clf.test_accuracy:.4f}")


if __name__ == "__main__":
    sys.exit(main())
