"""Shared plumbing for fetching: the data directory, checksums, tools, staging.

Files are always assembled in a temporary folder inside the data directory and then moved
into place, so a failed or interrupted fetch leaves nothing half-written and never touches a
file that is already there.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from actreg._errors import ActregError

logger = logging.getLogger("actreg.lab.data")

ENV_VAR = "ACTREG_DATA"


def default_data_dir() -> Path:
    """The per-user cache: ``$XDG_CACHE_HOME/actreg``, else ``~/.cache/actreg``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "actreg"


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data directory: ``data_dir`` if given, else ``$ACTREG_DATA``, else the user cache.

    Example:
        >>> resolve_data_dir("/tmp/some/where")
        PosixPath('/tmp/some/where')
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return default_data_dir()


def sha256_file(path: str | Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_sha256(path: Path, expected: str) -> None:
    """Raise :class:`ActregError` naming the file and both hashes if they differ."""
    actual = sha256_file(path)
    if actual != expected:
        raise ActregError(
            f"checksum mismatch for {path}: expected sha256 {expected}, got {actual}. "
            "The download is corrupt or a different version; nothing was installed"
        )


def verified(folder: Path, checksums: Mapping[str, str]) -> bool:
    """Whether every file of ``checksums`` is in ``folder`` with the right SHA-256.

    Raises:
        ActregError: if any file is present with a wrong hash (checked before any download;
            the user's file is left alone).
    """
    complete = True
    for name, expected in checksums.items():
        path = folder / name
        if not path.is_file():
            complete = False
            continue
        actual = sha256_file(path)
        if actual != expected:
            raise ActregError(
                f"checksum mismatch for existing file {path}: expected sha256 {expected}, "
                f"got {actual}. actreg does not overwrite it: move or delete it yourself, "
                "then fetch again"
            )
    return complete


def run_tool(args: list[str], cwd: Path, *, what: str, hint: str) -> str:
    """Run an external tool, returning stdout; a missing tool or failure -> ActregError."""
    if shutil.which(args[0]) is None:
        raise ActregError(f"{what} needs the '{args[0]}' command, which is not on PATH. {hint}")
    logger.info("running %s in %s", " ".join(args), cwd)
    try:
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired as err:
        raise ActregError(f"{what}: '{' '.join(args)}' timed out. {hint}") from err
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-800:]
        raise ActregError(
            f"{what}: '{' '.join(args)}' failed with exit code {proc.returncode}: {tail}. {hint}"
        )
    return proc.stdout


@contextmanager
def staging(root: Path) -> Iterator[Path]:
    """A temporary folder inside ``root`` (same file system), removed afterwards.

    Raises:
        ActregError: when ``root`` cannot be made or written (naming it and the fix).
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-actreg-", dir=root))
    except OSError as err:
        raise ActregError(
            f"cannot write in the data directory {root}: {err.strerror or err} "
            f"({err.filename or root}); choose a writable one with --data-dir DIR or "
            f"{ENV_VAR}=DIR"
        ) from None
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def install(files: Mapping[str, Path], target: Path) -> None:
    """Move staged files into ``target``; files already present there are left untouched."""
    target.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        dest = target / name
        if dest.exists():
            continue
        os.replace(src, dest)
