"""Fetch a word-level corpus of Jane Austen's six novels (from Debian's ``r-cran-janeaustenr``).

``apt-get download`` fetches the ``.deb`` (nothing is installed, R is not needed),
``dpkg-deb -x`` unpacks it, and :mod:`actreg.lab.data.rdata` reads the novels (character vectors
of text lines) out of R's lazy-load database ``janeaustenr/data/Rdata.{rdx,rdb}``.

Split by novel (publication order in train):

* train: Sense and Sensibility, Pride and Prejudice, Mansfield Park, Emma
* valid: Northanger Abbey
* test: Persuasion

Preprocessing (PTB-like, :func:`tokenize_novel`): chapter/volume headings are dropped;
paragraphs (runs of non-empty lines) are joined; ``_`` italic markers are removed; text is
lowercased; tokens are words (letters/digits with inner ``'`` or ``-``), the abbreviations
``mr. mrs. dr. st. ...`` (period kept), ``--`` runs, and every other non-space character on
its own (``, . ; : ! ? " ' ( )`` ...). A paragraph is cut into sentences after ``.``, ``!``
or ``?`` (plus a closing ``"``, ``'`` or ``)``); one sentence per output line, tokens joined by
single spaces.
"""

from __future__ import annotations

import re
from pathlib import Path

from actreg._errors import ActregError
from actreg.lab.data._store import install, logger, run_tool, sha256_file, staging, verified
from actreg.lab.data.lazyload import read_lazyload
from actreg.lab.data.rdata import RVector

__all__ = ["AUSTEN_FILES", "SPLITS", "build_corpus", "fetch_austen", "tokenize_novel"]

DEB_PACKAGE = "r-cran-janeaustenr"

SPLITS = {
    "train": ["sensesensibility", "prideprejudice", "mansfieldpark", "emma"],
    "valid": ["northangerabbey"],
    "test": ["persuasion"],
}
"""Split -> R object names of the novels in it."""

RDATA_FILES = {
    "Rdata.rdx": "cab8cbe4ce965d3b42b35c03383bafccc0eb78151f70e4748ead45270470c22f",
    "Rdata.rdb": "8fb5198960d0da724b1562f96e4221e5c1b41ff455000280b02c55980c3d8f21",
}
"""SHA-256 of the lazy-load database in r-cran-janeaustenr 1.0.0-1 (Debian bookworm)."""

AUSTEN_FILES = {
    "train.txt": "327d8511848a56538a3efc54e2f0af40456c5aea5262773f37c15b10f4d90326",
    "valid.txt": "ac72bd314b152c56acc39aef5bbebd041395bd6e16e324a80db097952a921d5b",
    "test.txt": "45a5bd29056cc854afd6d4a67fa191892c9a864531c54f575c3084f7a31cf7cb",
}
"""SHA-256 of the produced corpus files."""

_ABBREV = ("mr", "mrs", "messrs", "dr", "st", "esq", "col", "capt", "rev", "ms")
_TOKEN = re.compile(r"-{2,}|\b(?:" + "|".join(_ABBREV) + r")\.(?!\w)|[^\W_]+(?:['’-][^\W_]+)*|\S")
_HEADING = re.compile(r"^\s*(chapter|volume)\s+([0-9]+|[ivxlc]+)\.?\s*$", re.IGNORECASE)
_HINT = "Alternative: put train.txt, valid.txt and test.txt (one sentence per line) into {target}"


def _sentences(tokens: list[str]) -> list[list[str]]:
    out: list[list[str]] = []
    current: list[str] = []
    quotes = 0  # '"' seen so far in the paragraph: odd -> the next '"' closes a quote
    end = False
    for tok in tokens:
        closing = (tok == '"' and quotes % 2 == 1) or tok in ("'", ")")
        if end and not closing:
            out.append(current)
            current, end = [], False
        current.append(tok)
        if tok == '"':
            quotes += 1
        if tok in (".", "!", "?"):
            end = True
    if current:
        out.append(current)
    return out


def tokenize_novel(lines: list[str | None]) -> list[str]:
    """Turn a novel's text lines into tokenized sentences, one string per sentence.

    Example:
        >>> tokenize_novel(['CHAPTER I', '', '"Well, Mr. Knightley--you', 'came!" She _smiled_.'])
        ['" well , mr. knightley -- you came ! "', 'she smiled .']
    """
    paragraphs: list[str] = []
    current: list[str] = []
    for line in [*lines, ""]:
        text = (line or "").strip()
        if text and not _HEADING.match(text):
            current.append(text)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    out: list[str] = []
    for para in paragraphs:
        tokens = _TOKEN.findall(para.replace("_", "").lower())
        out.extend(" ".join(s) for s in _sentences(tokens))
    return out


def build_corpus(rdata_base: Path, out: Path) -> dict[str, Path]:
    """Write train/valid/test.txt into ``out`` from the lazy-load database ``rdata_base``."""
    names = [n for split in SPLITS.values() for n in split]
    novels = read_lazyload(rdata_base, names)
    files: dict[str, Path] = {}
    for split, members in SPLITS.items():
        lines: list[str] = []
        for name in members:
            obj = novels[name]
            if not isinstance(obj, RVector) or obj.kind != "character":
                raise ActregError(f"janeaustenr object {name!r} is not a character vector")
            lines.extend(tokenize_novel(obj.values))
        path = out / f"{split}.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        files[path.name] = path
    return files


def fetch_austen(target: Path) -> Path:
    """Build the Austen corpus into ``target`` (no work if already verified there)."""
    if verified(target, AUSTEN_FILES):
        logger.info("austen already in %s", target)
        return target
    hint = _HINT.format(target=target)
    with staging(target.parent) as tmp:
        run_tool(
            ["apt-get", "download", DEB_PACKAGE],
            tmp,
            what=f"downloading the Debian package {DEB_PACKAGE}",
            hint="Run `apt-get update` first (as root) so apt knows the package. " + hint,
        )
        debs = sorted(tmp.glob(f"{DEB_PACKAGE}_*.deb"))
        if not debs:
            raise ActregError(f"apt-get download produced no {DEB_PACKAGE}_*.deb. {hint}")
        unpacked = tmp / "deb"
        run_tool(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], tmp, what="unpacking", hint=hint)
        found = sorted(unpacked.rglob("janeaustenr/data/Rdata.rdx"))
        if not found:
            raise ActregError(f"{debs[0].name} has no janeaustenr/data/Rdata.rdx. {hint}")
        base = found[0].with_suffix("")
        for name, expected in RDATA_FILES.items():
            actual = sha256_file(base.parent / name)
            if actual != expected:  # the produced files are verified strictly below
                logger.warning(
                    "%s of %s has sha256 %s, expected %s (another package build?)",
                    name, debs[0].name, actual, expected,
                )  # fmt: skip
        corpus = tmp / "corpus"
        corpus.mkdir()
        files = build_corpus(base, corpus)
        for name, path in files.items():
            actual = sha256_file(path)
            if actual != AUSTEN_FILES[name]:
                raise ActregError(
                    f"checksum mismatch for the produced {name}: expected sha256 "
                    f"{AUSTEN_FILES[name]}, got {actual} (from {debs[0].name}); nothing was "
                    f"installed. {hint}"
                )
        install(files, target)
    logger.info("austen ready in %s", target)
    return target
