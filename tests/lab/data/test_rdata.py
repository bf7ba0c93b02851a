"""Tests of the R serialization reader on hand-built XDR bytes."""

from __future__ import annotations

import bz2
import gzip
import lzma
import math
import struct
import zlib
from pathlib import Path

import pytest
from rser import (
    NULL,
    charsxp,
    header,
    i32,
    intsxp,
    pairlist,
    realsxp,
    ref,
    strsxp,
    symsxp,
    vecsxp,
)

from actreg import ActregError
from actreg.lab.data.lazyload import lazyload_index, read_lazyload
from actreg.lab.data.rdata import (
    RPairlist,
    RSymbol,
    RVector,
    read_rds,
    unserialize,
)

# ---- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [2, 3], ids=["v2", "v3"])
def test_character_vector_with_na_and_encodings(version: int) -> None:
    blob = header(version) + strsxp(["héllo", None, "plain"])
    assert unserialize(blob) == RVector("character", ["héllo", None, "plain"])


@pytest.mark.parametrize(
    ("level", "encoding", "text"),
    [(8, "utf-8", "café"), (4, "latin-1", "café"), (64, "ascii", "cafe"), (0, "utf-8", "ça")],
    ids=["utf8", "latin1", "ascii", "native"],
)
def test_charsxp_encodings(level: int, encoding: str, text: str) -> None:
    blob = header() + i32(16) + i32(1) + charsxp(text, level, encoding)
    assert unserialize(blob).values == [text]


def test_numeric_logical_null() -> None:
    assert unserialize(header() + NULL) is None
    assert unserialize(header() + intsxp([1, None, -3])).values == [1, None, -3]
    assert unserialize(header() + intsxp([1, 0, None], t=10)).values == [True, False, None]
    vals = unserialize(header() + realsxp([1.5, math.inf])).values
    assert vals == [1.5, math.inf]


def test_named_list_with_symbol_reference() -> None:
    # list(a = 1L, b = "x") with names; a second attribute reuses the symbol via REFSXP
    names = pairlist([(symsxp("names"), strsxp(["a", "b"]))])
    blob = header() + vecsxp([intsxp([1]), strsxp(["x"])], attrs=names)
    obj = unserialize(blob)
    assert obj.kind == "list" and obj.names == ["a", "b"]
    assert obj.values[1].values == ["x"]
    # REFSXP: refs[0] is the first symbol read
    two = pairlist([(symsxp("names"), strsxp(["a"])), (symsxp("comment"), NULL)])
    nested = vecsxp(
        [intsxp([1], attrs=two), intsxp([2], attrs=pairlist([(ref(1), strsxp(["z"]))]))]
    )
    got = unserialize(header() + nested)
    assert got.values[1].attributes == {"names": RVector("character", ["z"])}


def test_factor() -> None:
    attrs = pairlist(
        [(symsxp("levels"), strsxp(["lo", "hi"])), (symsxp("class"), strsxp(["factor"]))]
    )
    obj = unserialize(header() + intsxp([2, 1, None], attrs=attrs))
    assert obj.is_factor
    assert obj.factor_labels() == ["hi", "lo", None]


def test_pairlist_and_symbol() -> None:
    obj = unserialize(header() + pairlist([(symsxp("k"), intsxp([7]))]))
    assert isinstance(obj, RPairlist) and obj.as_dict() == {"k": RVector("integer", [7])}
    assert unserialize(header() + symsxp("sym")) == RSymbol("sym")


def test_altrep_compact_intseq() -> None:
    info = pairlist([(symsxp("x"), symsxp("compact_intseq"))])
    blob = header() + i32(238) + info + realsxp([4.0, 3.0, 1.0]) + NULL
    assert unserialize(blob).values == [3, 4, 5, 6]


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        (b"A\n" + i32(3), "ASCII"),
        (b"X\n" + i32(4) + i32(0) + i32(0), "version 4"),
        (header() + i32(3), "CLOSXP"),
        (header() + i32(4), "ENVSXP"),
        (header() + strsxp(["abc"])[:-2], "truncated"),
        (header() + ref(5), "reference #5"),
    ],
    ids=["ascii", "version", "closure", "env", "truncated", "badref"],
)
def test_errors(blob: bytes, match: str) -> None:
    with pytest.raises(ActregError, match=match):
        unserialize(blob)


def _rdx(variables: dict[str, tuple[int, int]], compressed: bytes) -> bytes:
    var_list = vecsxp(
        [intsxp(list(pos)) for pos in variables.values()],
        attrs=pairlist([(symsxp("names"), strsxp(list(variables)))]),
    )
    body = vecsxp(
        [var_list, vecsxp([]), compressed],
        attrs=pairlist([(ref(1), strsxp(["variables", "references", "compressed"]))]),
    )
    return header() + body


@pytest.mark.parametrize("ctype", [1, 2, 3], ids=["zlib", "bzip2", "xz"])
def test_lazyload_roundtrip(tmp_path: Path, ctype: int) -> None:
    objects = {"alpha": header() + strsxp(["line one", "line two"]), "beta": header() + NULL}
    rdb = b""
    variables = {}
    for name, payload in objects.items():
        n = struct.pack(">I", len(payload))
        if ctype == 1:
            entry = n + zlib.compress(payload)
        elif ctype == 2:
            entry = n + b"2" + bz2.compress(payload)
        else:
            filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
            entry = n + b"Z" + lzma.compress(payload, format=lzma.FORMAT_RAW, filters=filters)
        variables[name] = (len(rdb), len(entry))
        rdb += entry
    comp = intsxp([1], t=10) if ctype == 1 else intsxp([ctype])
    (tmp_path / "Rdata.rdx").write_bytes(gzip.compress(_rdx(variables, comp)))
    (tmp_path / "Rdata.rdb").write_bytes(rdb)
    index, got_ctype = lazyload_index(tmp_path / "Rdata.rdx")
    assert index == variables and got_ctype == ctype
    out = read_lazyload(tmp_path / "Rdata")
    assert out["alpha"].values == ["line one", "line two"] and out["beta"] is None
    with pytest.raises(ActregError, match="no variable"):
        read_lazyload(tmp_path / "Rdata", ["gamma"])


def test_read_rds_compressions(tmp_path: Path) -> None:
    blob = header(2) + strsxp(["x"])
    for i, comp in enumerate([gzip.compress, bz2.compress, lzma.compress, bytes]):
        p = tmp_path / f"{i}.rds"
        p.write_bytes(comp(blob))
        assert read_rds(p).values == ["x"]
