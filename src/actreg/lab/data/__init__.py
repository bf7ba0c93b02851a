"""Data sets for the experiments (application side: the library part never imports this).

Vision: :func:`load_vision` (``digits``, ``mnist``, any IDX directory). Text:
:func:`actreg.lab.data.text.load_corpus`. Fetching with checksums: :func:`fetch`,
:func:`list_datasets`; the data directory is ``data_dir`` > ``$ACTREG_DATA`` > the user cache.

Example:
    >>> d = load_vision("digits", scaling="none")
    >>> d.info["sizes"]
    {'train': 1078, 'val': 360, 'test': 359}
"""

from actreg.lab.data._store import resolve_data_dir
from actreg.lab.data.fetch import fetch, list_datasets
from actreg.lab.data.text import Corpus, load_corpus
from actreg.lab.data.vision import VisionData, load_vision

__all__ = [
    "Corpus",
    "VisionData",
    "fetch",
    "list_datasets",
    "load_corpus",
    "load_vision",
    "resolve_data_dir",
]
