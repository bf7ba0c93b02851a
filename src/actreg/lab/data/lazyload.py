"""R lazy-load databases (``NAME.rdx`` + ``NAME.rdb``): how installed R packages keep data.

The index (``.rdx``) is an ``.rds`` file mapping each variable to an offset and a length in
the ``.rdb``; each entry there is a 4-byte big-endian length, then (for compression types
2 and 3) a method byte, then the compressed serialization that
:func:`actreg.lab.data.rdata.unserialize` decodes.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from pathlib import Path
from typing import Any

from actreg._errors import ActregError
from actreg.lab.data.rdata import RVector, read_rds, unserialize

__all__ = ["lazyload_index", "read_lazyload"]


def lazyload_index(rdx: str | Path) -> tuple[dict[str, tuple[int, int]], int]:
    """Read a lazy-load index (``*.rdx``): variable -> (offset, length) in the ``.rdb``.

    Returns:
        The variables and the compression type of the ``.rdb`` entries (1 zlib, 2 bzip2,
        3 xz).
    """
    index = read_rds(rdx)
    names = index.names if isinstance(index, RVector) else None
    if names is None or "variables" not in names:
        raise ActregError(f"{rdx} is not an R lazy-load index (no 'variables' entry)")
    fields = dict(zip(names, index.values, strict=True))
    variables = fields["variables"]
    out: dict[str, tuple[int, int]] = {}
    for name, pos in zip(variables.names or [], variables.values, strict=True):
        out[str(name)] = (int(pos.values[0]), int(pos.values[1]))
    comp = fields.get("compressed")
    ctype = int(comp.values[0]) if isinstance(comp, RVector) and comp.values else 1
    return out, ctype


def _decompress_entry(blob: bytes, ctype: int) -> bytes:
    outlen = struct.unpack(">I", blob[:4])[0]
    body, method = blob[4:], "zlib"
    if ctype in (2, 3):
        method = {ord("0"): "none", ord("1"): "zlib", ord("2"): "bzip2", ord("Z"): "xz"}.get(
            blob[4], f"unknown ({blob[4]!r})"
        )
        body = blob[5:]
    if method == "zlib":
        out = zlib.decompress(body)
    elif method == "bzip2":
        out = bz2.decompress(body)
    elif method == "xz":
        filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
        out = lzma.decompress(body, format=lzma.FORMAT_RAW, filters=filters)
    elif method == "none":
        out = body
    else:
        raise ActregError(f"lazy-load entry uses {method} compression; not supported")
    if len(out) != outlen:
        raise ActregError(
            f"lazy-load entry decompressed to {len(out)} bytes, header says {outlen}; corrupt"
        )
    return out


def read_lazyload(base: str | Path, names: list[str] | None = None) -> dict[str, Any]:
    """Read objects from an R lazy-load database (``base.rdx`` + ``base.rdb``).

    Args:
        base: path without extension, e.g. ``.../janeaustenr/data/Rdata``.
        names: the variables to read; default all.

    Raises:
        ActregError: if a file or a variable is missing, or an entry is corrupt.
    """
    base = Path(base)
    rdx, rdb = base.with_suffix(".rdx"), base.with_suffix(".rdb")
    for p in (rdx, rdb):
        if not p.is_file():
            raise ActregError(f"R lazy-load database file {p} is missing")
    index, ctype = lazyload_index(rdx)
    wanted = list(index) if names is None else names
    missing = [n for n in wanted if n not in index]
    if missing:
        raise ActregError(f"{rdb} has no variable(s) {missing}; it has {sorted(index)}")
    out: dict[str, Any] = {}
    with open(rdb, "rb") as fh:
        for name in wanted:
            offset, length = index[name]
            fh.seek(offset)
            blob = fh.read(length)
            if len(blob) != length:
                raise ActregError(f"{rdb} is truncated at variable {name!r}")
            out[name] = unserialize(_decompress_entry(blob, ctype))
    return out
