"""A small reader for R's binary serialization format (``.rds`` files, lazy-load databases).

Supports the XDR binary format (header ``X\\n``), serialization versions 2 and 3, and the
types that data packages use: ``NULL``, character vectors (UTF-8, Latin-1, bytes, ASCII and
``NA``), logical / integer / double / complex / raw vectors, lists (``VECSXP``), pairlists
(``LISTSXP``, used for attributes), symbols and references to them, and the ALTREP compact
sequences and wrappers that R >= 3.5 writes. Factors are integer vectors with ``levels`` and
``class`` attributes (see :meth:`RVector.factor_labels`). Anything else (closures,
environments, language objects, ...) raises :class:`~actreg.ActregError` naming the type.

R values map to Python as follows: ``NULL`` -> ``None``; vectors -> :class:`RVector`
(``NA`` -> ``None``, except double ``NA`` which stays ``nan``); pairlists -> :class:`RPairlist`;
symbols -> :class:`RSymbol`. Lazy-load databases (``.rdx`` + ``.rdb``, what R packages
install their data as) are read by :mod:`actreg.lab.data.lazyload` with this decoder.

Example:
    >>> blob = bytes.fromhex(
    ...     "580a" "00000002" "00030200" "00020300"   # 'X\\n', version 2, writer, reader
    ...     "00000010" "00000002"                      # STRSXP of length 2
    ...     "00008009" "00000002" "6869"               # CHARSXP, UTF-8 flag, "hi"
    ...     "00000009" "ffffffff")                     # CHARSXP NA
    >>> unserialize(blob).values
    ['hi', None]
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actreg._errors import ActregError

__all__ = [
    "RPairlist",
    "RSymbol",
    "RVector",
    "read_rds",
    "unserialize",
]

_TYPE_NAMES = {
    0: "NILSXP", 1: "SYMSXP", 2: "LISTSXP", 3: "CLOSXP", 4: "ENVSXP", 5: "PROMSXP",
    6: "LANGSXP", 7: "SPECIALSXP", 8: "BUILTINSXP", 9: "CHARSXP", 10: "LGLSXP", 13: "INTSXP",
    14: "REALSXP", 15: "CPLXSXP", 16: "STRSXP", 17: "DOTSXP", 19: "VECSXP", 20: "EXPRSXP",
    21: "BCODESXP", 22: "EXTPTRSXP", 23: "WEAKREFSXP", 24: "RAWSXP", 25: "S4SXP",
    238: "ALTREP_SXP", 239: "ATTRLISTSXP", 240: "ATTRLANGSXP", 241: "BASEENV_SXP",
    242: "EMPTYENV_SXP", 243: "BCREPREF", 244: "BCREPDEF", 245: "GENERICREFSXP",
    246: "CLASSREFSXP", 247: "PERSISTSXP", 248: "PACKAGESXP", 249: "NAMESPACESXP",
    250: "BASENAMESPACE_SXP", 251: "MISSINGARG_SXP", 252: "UNBOUNDVALUE_SXP",
    253: "GLOBALENV_SXP", 254: "NILVALUE_SXP", 255: "REFSXP",
}  # fmt: skip
_VECTOR_KINDS = {10: "logical", 13: "integer", 14: "double", 15: "complex", 16: "character",
                 19: "list", 20: "expression", 24: "raw"}  # fmt: skip
_NA_INT = -(2**31)
_MAX_LEN = 2**40  # refuse absurd lengths from corrupt input before allocating


@dataclass(frozen=True)
class RSymbol:
    """An R symbol (a name), e.g. an attribute tag.

    Example:
        >>> RSymbol("names").name
        'names'
    """

    name: str


@dataclass
class RVector:
    """An R atomic vector or list with its attributes.

    Attributes:
        kind: ``"character"``, ``"integer"``, ``"double"``, ``"logical"``, ``"complex"``,
            ``"raw"``, ``"list"`` or ``"expression"``.
        values: the elements; R's ``NA`` is ``None`` (``nan`` for doubles).
        attributes: attribute name -> value (``names``, ``class``, ``levels``, ...).

    Example:
        >>> f = RVector("integer", [2, 1, None], {"levels": RVector("character", ["a", "b"]),
        ...             "class": RVector("character", ["factor"])})
        >>> f.is_factor, f.factor_labels()
        (True, ['b', 'a', None])
    """

    kind: str
    values: list[Any]
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[Any] | None:
        """The ``names`` attribute as a list, or None."""
        names = self.attributes.get("names")
        return names.values if isinstance(names, RVector) else None

    @property
    def is_factor(self) -> bool:
        """Whether this is an R factor (integer codes with a ``factor`` class)."""
        cls = self.attributes.get("class")
        return self.kind == "integer" and isinstance(cls, RVector) and "factor" in cls.values

    def factor_labels(self) -> list[str | None]:
        """The labels of a factor's elements (``None`` for ``NA``)."""
        levels = self.attributes.get("levels")
        if not self.is_factor or not isinstance(levels, RVector):
            raise ActregError("factor_labels() needs a factor (integer vector with levels)")
        return [None if v is None else levels.values[v - 1] for v in self.values]


@dataclass
class RPairlist:
    """An R pairlist: ordered (tag, value) pairs; tags are None when absent.

    Example:
        >>> RPairlist([("a", 1), (None, 2)]).as_dict()
        {'a': 1}
    """

    items: list[tuple[str | None, Any]]
    attributes: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The tagged items as a dict (untagged items are dropped)."""
        return {k: v for k, v in self.items if k is not None}


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.refs: list[Any] = []
        self.native_encoding = "utf-8"

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise ActregError(
                f"R serialized data is truncated: needed {n} bytes at offset {self.pos}, "
                f"only {len(self.data) - self.pos} left; the file is corrupt or incomplete"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def read_int(self) -> int:
        return int(struct.unpack(">i", self.take(4))[0])

    def length(self) -> int:
        n = self.read_int()
        if n == -1:  # long vector: two more ints
            hi, lo = self.read_int(), self.read_int()
            n = (hi << 32) + (lo & 0xFFFFFFFF)
        if n < 0 or n > _MAX_LEN:
            raise ActregError(f"R serialized data has an invalid length {n} at {self.pos}")
        return n

    def header(self) -> None:
        fmt = bytes(self.take(2))
        if fmt != b"X\n":
            kind = {b"A\n": "ASCII", b"B\n": "native binary"}.get(fmt, f"unknown ({fmt!r})")
            raise ActregError(
                f"R serialization format {kind} is not supported; only XDR binary ('X\\n'). "
                "Re-save the object with saveRDS(x, ascii = FALSE)"
            )
        version = self.read_int()
        self.read_int(), self.read_int()  # writer version, minimal reader version
        if version not in (2, 3):
            raise ActregError(f"R serialization version {version} is not supported (only 2, 3)")
        if version == 3:
            enc = bytes(self.take(self.read_int())).decode("ascii", "replace")
            self.native_encoding = "latin-1" if enc.upper() in ("LATIN1", "ISO-8859-1") else "utf-8"

    def item(self) -> Any:
        flags = self.read_int()
        t = flags & 0xFF
        has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if t == 255:  # REFSXP
            idx = flags >> 8 or self.read_int()
            if not 1 <= idx <= len(self.refs):
                raise ActregError(f"R serialized data refers to unknown reference #{idx}")
            return self.refs[idx - 1]
        if t in (254, 0):
            return None
        if t in (242, 241, 250, 253, 251, 252):
            return RSymbol(f"<{_TYPE_NAMES[t]}>")
        if t == 1:  # SYMSXP: a CHARSXP follows; symbols go in the reference table
            sym = RSymbol(str(self.item()))
            self.refs.append(sym)
            return sym
        if t in (2, 239):  # LISTSXP / ATTRLISTSXP
            return self.pairlist(flags)
        if t == 9:
            return self.charsxp(flags)
        if t in _VECTOR_KINDS:
            vec = RVector(_VECTOR_KINDS[t], self.vector(t))
            if has_attr:
                vec.attributes = self.attributes()
            return vec
        if t == 238:
            return self.altrep()
        name = _TYPE_NAMES.get(t, f"type {t}")
        raise ActregError(
            f"R type {name} ({t}) is not supported by actreg's reader (tag={has_tag}); "
            "only data (vectors, lists, factors, pairlists) can be read"
        )

    def attributes(self) -> dict[str, Any]:
        attrs = self.item()
        if not isinstance(attrs, RPairlist):
            raise ActregError("R serialized attributes are not a pairlist; the data is corrupt")
        return attrs.as_dict()

    def pairlist(self, flags: int) -> RPairlist:
        items: list[tuple[str | None, Any]] = []
        attributes: dict[str, Any] = {}
        while True:  # iterate along the CDR chain instead of recursing
            if flags & (1 << 9):
                attributes.update(self.attributes())
            tag = self.item() if flags & (1 << 10) else None
            items.append((tag.name if isinstance(tag, RSymbol) else None, self.item()))
            flags = self.read_int()
            if flags & 0xFF not in (2, 239):
                self.pos -= 4
                rest = self.item()
                if rest is not None:
                    raise ActregError("R pairlist ends in a non-NULL value; unsupported")
                return RPairlist(items, attributes)

    def charsxp(self, flags: int) -> str | None:
        n = self.read_int()
        if n == -1:
            return None
        raw = bytes(self.take(n))
        levels = flags >> 12
        if levels & 8:  # UTF8_MASK
            return raw.decode("utf-8", "replace")
        if levels & 4:  # LATIN1_MASK
            return raw.decode("latin-1")
        if levels & 64:  # ASCII_MASK
            return raw.decode("ascii", "replace")
        if levels & 2:  # BYTES_MASK: undeclared bytes, kept 1:1 in a str
            return raw.decode("latin-1")
        return raw.decode(self.native_encoding, "replace")

    def vector(self, t: int) -> list[Any]:
        n = self.length()
        if t in (10, 13):
            ints = struct.unpack(f">{n}i", self.take(4 * n))
            if t == 10:
                return [None if v == _NA_INT else bool(v) for v in ints]
            return [None if v == _NA_INT else v for v in ints]
        if t == 14:
            return list(struct.unpack(f">{n}d", self.take(8 * n)))
        if t == 15:
            d = struct.unpack(f">{2 * n}d", self.take(16 * n))
            return [complex(d[2 * i], d[2 * i + 1]) for i in range(n)]
        if t == 24:
            return list(bytes(self.take(n)))
        if t == 16:
            out: list[Any] = []
            for _ in range(n):
                flags = self.read_int()
                if flags & 0xFF != 9:
                    raise ActregError("R character vector holds a non-CHARSXP element")
                out.append(self.charsxp(flags))
            return out
        return [self.item() for _ in range(n)]

    def altrep(self) -> Any:
        info, state, attr = self.item(), self.item(), self.item()
        cls = info.items[0][1].name if isinstance(info, RPairlist) and info.items else "?"
        if cls in ("compact_intseq", "compact_realseq") and isinstance(state, RVector):
            n, start, step = (float(v) for v in state.values)
            vals: list[Any] = [start + i * step for i in range(int(n))]
            kind = "integer" if cls == "compact_intseq" else "double"
            vec = RVector(kind, [int(v) for v in vals] if kind == "integer" else vals)
        elif cls.startswith("wrap_") and isinstance(state, RVector) and state.values:
            vec = state.values[0]
        elif cls == "deferred_string" and isinstance(state, RPairlist) and state.items:
            src = state.items[0][1]
            vec = RVector("character", [_num_to_str(v) for v in src.values])
        else:
            raise ActregError(f"R ALTREP class {cls!r} is not supported by actreg's reader")
        if isinstance(attr, RPairlist):
            vec.attributes = attr.as_dict()
        return vec


def _num_to_str(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def unserialize(data: bytes) -> Any:
    """Decode uncompressed R serialized bytes (what ``serialize(x, NULL)`` returns).

    Raises:
        ActregError: on a non-XDR format, an unsupported version or type, or truncated data.
    """
    reader = _Reader(data)
    reader.header()
    return reader.item()


def _decompress(data: bytes) -> bytes:
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:3] == b"BZh":
        return bz2.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    return data


def read_rds(path: str | Path) -> Any:
    """Read an ``.rds`` file (gzip, bzip2, xz or uncompressed) written by ``saveRDS``.

    Example:
        >>> import gzip, tempfile, os
        >>> blob = bytes.fromhex("580a" "00000002" "00030200" "00020300" "000000fe")
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = os.path.join(d, "null.rds")
        ...     _ = open(p, "wb").write(gzip.compress(blob))
        ...     print(read_rds(p))
        None
    """
    return unserialize(_decompress(Path(path).read_bytes()))
