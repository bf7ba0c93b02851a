"""Keep the tutorial notebooks stored without outputs.

Usage:
    python scripts/notebooks.py strip [NOTEBOOK...]   # remove outputs, in place
    python scripts/notebooks.py check [NOTEBOOK...]   # fail if any has outputs (CI)

Without paths: every ``docs/notebooks/*.ipynb``. A notebook is stored clean: no outputs, no
execution counts, no per-cell metadata, so a diff shows only what changed in the source.
The site and CI execute them (mkdocs.yml, scripts/docs). Their code is formatted with
``ruff format --line-length 88 docs/notebooks``, the width of a code cell on the site.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
KEEP_METADATA = ("kernelspec", "language_info")


def dirty(nb: nbformat.NotebookNode) -> list[str]:
    """What is stored that should not be, one line per finding."""
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.get("outputs"):
            found.append(f"cell {i} has outputs")
        if cell.get("execution_count") is not None:
            found.append(f"cell {i} has an execution count")
        if cell.get("metadata"):
            found.append(f"cell {i} has metadata {sorted(cell.metadata)}")
    extra = sorted(set(nb.metadata) - set(KEEP_METADATA))
    if extra:
        found.append(f"notebook metadata {extra}")
    return found


def strip(nb: nbformat.NotebookNode) -> None:
    for cell in nb.cells:
        cell.metadata = {}
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in KEEP_METADATA}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("strip", "check"):
        print(__doc__)
        return 2
    paths = [Path(p) for p in argv[1:]] or sorted((ROOT / "docs" / "notebooks").glob("*.ipynb"))
    bad = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if argv[0] == "strip":
            strip(nb)
            nbformat.write(nb, path)
            continue
        for line in dirty(nb):
            print(f"{path}: {line}")
            bad += 1
    if bad:
        print("store notebooks without outputs: python scripts/notebooks.py strip")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
