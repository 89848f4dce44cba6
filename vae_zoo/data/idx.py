"""Read and write IDX files (the MNIST format), gzip-compressed or not; atomic file writes."""

import gzip
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 22

# IDX type codes -> big-endian numpy dtypes ("THE IDX FILE FORMAT", yann.lecun.com/exdb/mnist).
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}


class IdxFormatError(ValueError):
    """The bytes are not a well-formed IDX file (bad magic, or truncated/oversized payload)."""


def read_bytes(path: str | Path, progress: Callable[[int], None] | None = None) -> bytearray:
    """Return the file's content, gunzipped when it is gzip (detected by magic, not by suffix)."""
    # A bytearray, because torch.frombuffer wants a writable buffer and shares it without a copy.
    data = bytearray()
    with open(path, "rb") as raw:
        is_gzip = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip else raw
        done = 0
        while chunk := stream.read(_CHUNK):
            data += chunk
            if progress is not None:
                position = raw.tell()
                progress(position - done)
                done = position
        if is_gzip:
            stream.close()
    return data


def parse_idx(data: bytes | bytearray) -> Tensor:
    """Decode IDX bytes into a tensor of the stored dtype and shape (native byte order)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise IdxFormatError(f"not an IDX file (magic bytes {bytes(data[:4]).hex() or 'missing'})")
    dtype, ndim = _DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(f"truncated IDX header ({len(data)} of {header} bytes)")
    shape = struct.unpack(f">{ndim}I", bytes(data[4:header]))
    count = int(np.prod(shape, dtype=np.int64))
    expected = header + count * dtype.itemsize
    if len(data) != expected:
        raise IdxFormatError(
            f"IDX payload has {len(data)} bytes, header {tuple(shape)} needs {expected}"
            + (" (truncated)" if len(data) < expected else "")
        )
    if count == 0:
        return torch.from_numpy(np.empty(shape, dtype=dtype.newbyteorder("=")))
    if data[2] == 0x08:
        # Zero-copy view of the caller's buffer: the MNIST case, tens of MB.
        buffer = data if isinstance(data, bytearray) else bytearray(data)
        flat = torch.frombuffer(buffer, dtype=torch.uint8, offset=header, count=count)
    else:
        array = np.frombuffer(data, dtype=dtype, offset=header, count=count)
        flat = torch.from_numpy(array.astype(dtype.newbyteorder("=")))
    return flat.reshape(shape)


def encode_idx(tensor: Tensor) -> bytes:
    """Encode a tensor (uint8, int8, int16, int32, float32 or float64) as IDX bytes."""
    array = tensor.detach().cpu().contiguous().numpy()
    big = array.dtype.newbyteorder(">")
    code = _CODES.get(big)
    if code is None:
        raise TypeError(f"IDX cannot store dtype {array.dtype}")
    head = struct.pack(f">BBBB{array.ndim}I", 0, 0, code, array.ndim, *array.shape)
    return head + array.astype(big, copy=False).tobytes()


def read_idx(path: str | Path) -> Tensor:
    """Read an IDX file, gzip-compressed or not."""
    return parse_idx(read_bytes(path))


def write_idx(path: str | Path, tensor: Tensor, compress: bool | None = None) -> Path:
    """Write ``tensor`` as IDX atomically; gzip it when ``compress`` (default: name ends .gz)."""
    path = Path(path)
    data = encode_idx(tensor)
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=6, mtime=0)
    atomic_write(path, data)
    return path


def atomic_write(path: str | Path, data: bytes | bytearray) -> None:
    """Write ``data`` to ``path`` so readers see either the old file or the complete new one."""
    path = Path(path)
    # The temp file lives in the target folder: os.replace is only atomic within one file system.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600; give the file the permissions a plain open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    """Return the process umask (reading it requires setting it; restored at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
