"""Every public name has its place in the API reference of the built site.

For each module the reference covers, every name in its ``__all__`` must have an anchor
``id="<module>.<name>"`` in a page under ``build/site/api/``. mkdocstrings renders the
documented names; a name it cannot see (a function that shares its name with a submodule,
an undocumented constant) is handled by scripts/docs_griffe.py; a class built lazily by a
module ``__getattr__``, which no static reader sees, must at least be named on the page (in
its module's docstring). Anything else needs an entry in ``docs/api/``. Run by scripts/docs after
``mkdocs build``.

Usage: python scripts/docs_coverage.py [SITE_DIR]
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path

MODULES = [
    "actreg",
    "actreg.functional",
    "actreg.metrics",
    "actreg.sparse",
    "actreg.integrations.lightning",
    "actreg.integrations.transformers",  # once it lands
    "actreg.lab.data",
    "actreg.lab.experiments",
    "actreg.lab.train",
    "actreg.lab.search",
    "actreg.lab.report",
    "actreg.lab.plots",
    "actreg.lab.cli",
]


def main(site: Path) -> int:
    # the source tree the site was built from (mkdocs.yml: paths: [src]), not an install
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    ids: set[str] = set()
    text = ""
    for page in (site / "api").rglob("*.html"):
        text += page.read_text(encoding="utf-8")
    ids.update(re.findall(r'id="(actreg[\w.]*)"', text))
    missing, covered = [], 0
    for name in MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        module = importlib.import_module(name)
        for public in getattr(module, "__all__", ()):
            value = getattr(module, public, None)
            if f"{name}.{public}" in ids:
                covered += 1
            elif isinstance(value, type(sys)) and value.__name__ in MODULES:
                covered += 1  # a submodule with its own page
            elif public not in vars(module) and public in text:
                covered += 1  # built lazily (module __getattr__): named in the module's text
            else:
                missing.append(f"{name}.{public}")
    print(f"API reference: {covered} public names, {len(missing)} missing")
    for line in missing:
        print(f"  not in the reference: {line} (add it to a page under docs/api/)")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "build/site")))
