"""The built-in table of data sets and the SHA-256 of their decompressed IDX files; verification."""

import gzip
import hashlib
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from vae_zoo.data.idx import IdxFormatError, parse_idx, read_bytes
from vae_zoo.errors import ConfigError, VAEZooError

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
FILE_NAMES: tuple[str, ...] = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about one data set: names, folder layouts and class names."""

    name: str  # the value of VAEDataModule(dataset=...)
    title: str
    folder: str  # canonical folder: <data_dir>/<folder>/
    torchvision_name: str  # torchvision class, and its layout <data_dir>/<torchvision_name>/raw/
    class_names: tuple[str, ...]


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        "mnist", "MNIST", "mnist", "MNIST", tuple(str(digit) for digit in range(10))
    ),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist",
        "Fashion-MNIST",
        "fashion-mnist",
        "FashionMNIST",
        (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
}

# SHA-256 of the *decompressed* IDX files: gzip headers differ between sources, content does not.
# Looked up at call time, so tests can swap in a table for files of their own (monkeypatch.setitem).
CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        TEST_IMAGES: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        TEST_LABELS: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        TRAIN_IMAGES: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        TRAIN_LABELS: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    },
    "fashion_mnist": {
        TEST_IMAGES: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        TEST_LABELS: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        TRAIN_IMAGES: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        TRAIN_LABELS: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    },
}


class CorruptFileError(VAEZooError, ValueError):
    """A data file cannot be used: unreadable, truncated, or with the wrong content."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class ChecksumMismatchError(CorruptFileError):
    """A data file's decompressed content does not have the expected SHA-256 (a damaged file)."""

    def __init__(self, path: Path, expected: str, actual: str, hint: str = "") -> None:
        detail = f" ({hint})" if hint else ""
        super().__init__(path, f"sha256 mismatch{detail}: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


@dataclass
class VerifiedFile:
    """One IDX file whose decompressed content matched its checksum, with that content."""

    name: str
    path: Path
    sha256: str
    data: bytearray
    source: str = "local files"


def dataset_info(name: str) -> DatasetInfo:
    """Return the table entry for ``name``; a ConfigError lists the valid names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(
            f"dataset={name!r} is unknown; choose one of {sorted(DATASETS)}"
        ) from None


def expected_checksums(dataset: str) -> Mapping[str, str]:
    """Return {file name: sha256 of the decompressed IDX file} for ``dataset``."""
    dataset_info(dataset)
    return CHECKSUMS[dataset]


def sha256_hex(data: bytes | bytearray) -> str:
    """Return the hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def readable_gzip(path: Path) -> bytes:
    """The decompressed bytes a damaged gzip file still yields, up to where it breaks."""
    out = bytearray()
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    with open(path, "rb") as raw:
        while chunk := raw.read(1 << 22):
            try:
                out += inflater.decompress(chunk)
            except zlib.error:
                break
    return bytes(out)


def verify_file(
    path: Path, name: str, expected: str, progress: Callable[[int], None] | None = None
) -> VerifiedFile:
    """Read ``path`` (gzip or not) and check its content; CorruptFileError if unusable."""
    try:
        data = read_bytes(path, progress)
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        # EOFError is how gzip reports a truncated archive; the checksum is of what it holds
        hint = "truncated gzip archive" if isinstance(error, EOFError) else "corrupt gzip data"
        actual = sha256_hex(readable_gzip(path))
        raise ChecksumMismatchError(path, expected, actual, hint) from error
    except OSError as error:
        raise CorruptFileError(path, f"unreadable: {error}") from error
    actual = sha256_hex(data)
    if actual != expected:
        try:
            parse_idx(data)
            hint = ""
        except IdxFormatError as error:
            hint = str(error)
        raise ChecksumMismatchError(path, expected, actual, hint)
    return VerifiedFile(name, path, actual, data)
