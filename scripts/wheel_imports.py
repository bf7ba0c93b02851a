"""Import tests for an installed actreg (run by scripts/wheel_check with the fresh venv's python).

Checks that the package imported is the installed one (not a checkout), that it reports the
version its metadata has, that it ships ``py.typed``, that every public name of the
library's modules resolves, that ``import actreg`` loads neither the sparse runtime nor the
lab, and that every module of the package imports, except those whose only missing piece is
an optional extra that this environment did not install.

Usage: python scripts/wheel_imports.py EXPECTED_VERSION
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import subprocess
import sys
from pathlib import Path

# Third-party packages of the optional extras that are not installed with [experiments].
OPTIONAL = {"optuna", "sqlalchemy", "psycopg", "lightning", "tensorboard", "keras", "transformers"}
LIBRARY = ("actreg", "actreg.functional", "actreg.metrics", "actreg.sparse")


def main(expected_version: str) -> int:
    failures: list[str] = []
    # a fresh interpreter: what `import actreg` alone loads
    loaded = subprocess.run(
        [sys.executable, "-c", "import actreg, sys; print(' '.join(sorted(sys.modules)))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for heavy in ("actreg.sparse", "actreg.lab"):
        if heavy in loaded:
            failures.append(f"import actreg loaded {heavy}")

    import actreg

    where = Path(actreg.__file__).resolve()
    print(f"actreg {actreg.__version__} from {where.parent}")
    if "site-packages" not in where.parts:
        failures.append(f"actreg imported from {where}, not from an installed wheel")
    if actreg.__version__ != expected_version:
        failures.append(f"actreg.__version__ {actreg.__version__} != {expected_version}")
    meta = importlib.metadata.version("actreg")
    if meta != actreg.__version__:
        failures.append(f"metadata version {meta} != actreg.__version__ {actreg.__version__}")
    if not (where.parent / "py.typed").is_file():
        failures.append("py.typed is missing")

    for name in LIBRARY:
        module = importlib.import_module(name)
        for public in getattr(module, "__all__", ()):
            if not hasattr(module, public):
                failures.append(f"{name}.__all__ names {public!r}, which does not exist")

    imported = skipped = 0
    for info in pkgutil.walk_packages(actreg.__path__, "actreg."):
        try:
            importlib.import_module(info.name)
            imported += 1
        except ModuleNotFoundError as err:
            if (err.name or "").split(".")[0] in OPTIONAL:
                skipped += 1
                print(f"  {info.name}: needs the optional {err.name} (not installed here)")
            else:
                failures.append(f"import {info.name}: {err!r}")
        except Exception as err:  # any other failure to import is a packaging bug
            failures.append(f"import {info.name}: {err!r}")
    print(f"{imported} modules imported, {skipped} need an extra that is not installed")

    for line in failures:
        print(f"FAIL: {line}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
