"""A minimal writer of R's XDR serialization format, for tests."""

from __future__ import annotations

import struct

NA_INT = -(2**31)


def i32(v: int) -> bytes:
    return struct.pack(">i", v)


def header(version: int = 3) -> bytes:
    out = b"X\n" + i32(version) + i32(0x040201) + i32(0x030500)
    if version == 3:
        out += i32(5) + b"UTF-8"
    return out


def charsxp(s: str | None, level: int = 8, encoding: str = "utf-8") -> bytes:
    if s is None:
        return i32(9) + i32(-1)
    raw = s.encode(encoding)
    return i32(9 | (level << 12)) + i32(len(raw)) + raw


def attr_flag(attrs: bytes | None) -> int:
    return (1 << 9) if attrs else 0


def strsxp(values: list[str | None], attrs: bytes | None = None, level: int = 8) -> bytes:
    body = b"".join(charsxp(v, level) for v in values)
    return i32(16 | attr_flag(attrs)) + i32(len(values)) + body + (attrs or b"")


def intsxp(values: list[int | None], attrs: bytes | None = None, t: int = 13) -> bytes:
    body = b"".join(i32(NA_INT if v is None else v) for v in values)
    return i32(t | attr_flag(attrs)) + i32(len(values)) + body + (attrs or b"")


def realsxp(values: list[float]) -> bytes:
    return i32(14) + i32(len(values)) + struct.pack(f">{len(values)}d", *values)


def vecsxp(items: list[bytes], attrs: bytes | None = None) -> bytes:
    return i32(19 | attr_flag(attrs)) + i32(len(items)) + b"".join(items) + (attrs or b"")


def symsxp(name: str) -> bytes:
    return i32(1) + charsxp(name, level=64)


def pairlist(items: list[tuple[bytes, bytes]]) -> bytes:
    """items: (encoded tag symbol or reference, encoded value)."""
    out = b""
    for tag, value in items:
        out += i32(2 | (1 << 10)) + tag + value
    return out + i32(254)


def ref(index: int) -> bytes:
    return i32((index << 8) | 255)


NULL = i32(254)
