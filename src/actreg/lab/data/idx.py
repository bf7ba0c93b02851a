"""Reader for IDX files (the MNIST format) and loader of MNIST-style directories.

An IDX file is a 4-byte magic number ``00 00 TT NN`` (``TT`` the element type, ``NN`` the
number of dimensions), ``NN`` big-endian 4-byte sizes, then the big-endian data. Files may be
gzip-compressed (detected from their first bytes, whatever the name).

Any directory with the four MNIST-style files loads with :func:`load_idx_dir`, so
Fashion-MNIST, KMNIST, ... work without code changes.

Example:
    >>> import numpy as np
    >>> raw = bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6))
    >>> parse_idx(raw).tolist()
    [[0, 1, 2], [3, 4, 5]]
"""

from __future__ import annotations

import gzip
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from actreg._errors import ActregError

__all__ = [
    "IDX_FILES",
    "IdxSplits",
    "find_idx_file",
    "idx_bytes",
    "load_idx_dir",
    "parse_idx",
    "read_idx",
]

_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
"""Role -> standard file name of the four MNIST-style files."""


def idx_header(data: bytes, source: str = "<bytes>") -> tuple[np.dtype[Any], tuple[int, ...], int]:
    """Parse and check an IDX header: (dtype, shape, header length in bytes)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ActregError(
            f"{source} is not an IDX file: it must start with bytes 00 00, got "
            f"{data[:4].hex(' ') or 'nothing'}"
        )
    code, ndim = data[2], data[3]
    if code not in _DTYPES:
        raise ActregError(
            f"{source}: unknown IDX type code 0x{code:02X}; valid codes are "
            + ", ".join(f"0x{c:02X}" for c in _DTYPES)
        )
    if ndim == 0:
        raise ActregError(f"{source}: IDX file declares 0 dimensions")
    head = 4 + 4 * ndim
    if len(data) < head:
        raise ActregError(f"{source}: IDX header is truncated ({len(data)} < {head} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:head])
    return _DTYPES[code], tuple(int(s) for s in shape), head


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes (raw or gzip) into a native-endian numpy array.

    Raises:
        ActregError: bad magic, unknown type code, or a length that does not match the dims.
    """
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise ActregError(f"{source}: corrupt gzip data ({err}); fetch it again") from err
    dtype, shape, head = idx_header(data, source)
    expected = head + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise ActregError(
            f"{source}: IDX dims {shape} of {dtype.itemsize}-byte elements need {expected} "
            f"bytes, the file has {len(data)}; it is truncated or corrupt, fetch it again"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=head).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode an array as IDX (big-endian), the inverse of :func:`parse_idx`.

    Example:
        >>> parse_idx(idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3))).tolist()
        [[0, 1, 2], [3, 4, 5]]
    """
    codes = {dtype.str[1:]: code for code, dtype in _DTYPES.items()}
    key = arr.dtype.str[1:]
    if key not in codes:
        raise ActregError(
            f"IDX stores {', '.join(sorted(codes))} elements, not {arr.dtype}; convert the "
            "array first (e.g. arr.astype(np.uint8) for pixels)"
        )
    head = bytes([0, 0, codes[key], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (raw or ``.gz``) into a numpy array.

    Example:
        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = os.path.join(d, "x-idx1-ubyte")
        ...     _ = open(p, "wb").write(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 9]))
        ...     read_idx(p).tolist()
        [7, 9]
    """
    path = Path(path)
    if not path.is_file():
        raise ActregError(f"IDX file {path} does not exist")
    return parse_idx(path.read_bytes(), str(path))


def find_idx_file(folder: Path, name: str) -> Path | None:
    """The file for a standard IDX name in ``folder``: raw, ``.gz``, or the ``.idx`` variant."""
    variants = [name, name.replace("-idx", ".idx")]
    for base in variants:
        for cand in (folder / base, folder / (base + ".gz")):
            if cand.is_file():
                return cand
    return None


@dataclass
class IdxSplits:
    """The arrays of an MNIST-style directory, and the files they came from."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    files: dict[str, Path]


def load_idx_dir(folder: str | Path) -> IdxSplits:
    """Load the four MNIST-style IDX files of a directory.

    Raises:
        ActregError: if a file is missing (naming it) or images and labels disagree.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ActregError(f"IDX data directory {folder} does not exist")
    files: dict[str, Path] = {}
    for role, name in IDX_FILES.items():
        found = find_idx_file(folder, name)
        if found is None:
            raise ActregError(
                f"{folder} has no {name} (or {name}.gz); an IDX image set needs the four "
                f"files {', '.join(IDX_FILES.values())}"
            )
        files[role] = found
    arrays = {role: read_idx(p) for role, p in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ActregError(
                f"{folder}: {split} images must be (N, H, W) and labels (N,), got "
                f"{x.shape} and {y.shape}"
            )
    return IdxSplits(**arrays, files=files)
