"""``python -m vae_zoo data fetch|verify``: provision and check the data sets from the shell."""

import argparse
import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from vae_zoo.cli.flags import add_flag
from vae_zoo.data.checksums import DATASETS, dataset_info, expected_checksums
from vae_zoo.data.sources import (
    CORRUPT_SUFFIX,
    DATA_ENV,
    local_folders,
    provision,
    resolve_data_dir,
    scan,
)
from vae_zoo.errors import VAEZooError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``data`` command."""
    parser = argparse.ArgumentParser(
        prog="python -m vae_zoo data",
        description="Fetch or verify MNIST / Fashion-MNIST (IDX files checked by SHA-256).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser(
        "fetch", help="find or download the files and store verified copies in DATA_DIR"
    )
    verify = commands.add_parser("verify", help="check the files already in DATA_DIR; no network")
    for command in (fetch, verify):
        command.add_argument(
            "--dataset", choices=[*DATASETS, "all"], default="all", help="default: all"
        )
        add_flag(
            command,
            "--data_dir",
            default=None,
            help=f"data folder (default: ${DATA_ENV}, else ./data)",
        )
    add_flag(
        fetch,
        "--no_download",
        dest="download",
        action="store_false",
        help="only look at local files; never try the network sources",
    )
    return parser


@contextmanager
def _report_progress() -> Iterator[None]:
    """Show the sources' progress lines and warnings as plain text on stderr."""
    logger = logging.getLogger("vae_zoo.data")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for warning in caught:
            print(f"warning: {warning.message}", file=sys.stderr)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def _fetch(dataset: str, data_dir: str | None, download: bool) -> bool:
    info = dataset_info(dataset)
    with _report_progress():
        files = provision(dataset, data_dir, download=download, progress=True)
    print(f"{info.title} ({dataset}): all {len(files)} files verified")
    for name, file in sorted(files.items()):
        print(f"  ok  {name:<24} {file.path}  sha256 {file.sha256[:16]}...  ({file.source})")
    return True


def _verify(dataset: str, data_dir: str | None) -> bool:
    info = dataset_info(dataset)
    folders = local_folders(info, resolve_data_dir(data_dir))
    with _report_progress():
        result = scan(folders, expected_checksums(dataset), progress=True)
    ok = len(result.found) == len(expected_checksums(dataset))
    print(f"{info.title} ({dataset}) in {' or '.join(map(str, folders))}:")
    for name in expected_checksums(dataset):
        if name in result.found:
            print(f"  ok       {name:<24} {result.found[name].path}")
        for problem in result.problems.get(name, []):
            label = "ignored" if name in result.found else "CORRUPT"
            print(f"  {label:<8} {problem}")
        if name in result.missing:
            print(f"  MISSING  {name} (.gz or not)")
    print(f"  {'verified' if ok else 'NOT usable'}")
    if result.damaged:
        # the same lines fit prints; verify only looks, fit and fetch repair
        print(f"  damaged files: `python -m vae_zoo data fetch --dataset {dataset}` (or fit) "
              f"renames them to *{CORRUPT_SUFFIX} and fetches verified copies")
    return ok


def main(argv: list[str] | None = None) -> int:
    """Run ``data fetch`` or ``data verify``; return 0 on success, 1 on failure (no traceback)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    datasets = list(DATASETS) if args.dataset == "all" else [args.dataset]
    status = 0
    for dataset in datasets:
        try:
            if args.command == "fetch":
                ok = _fetch(dataset, args.data_dir, args.download)
            else:
                ok = _verify(dataset, args.data_dir)
        except (VAEZooError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            ok = False
        status = status or (0 if ok else 1)
    return status


if __name__ == "__main__":
    sys.exit(main())
