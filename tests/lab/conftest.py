"""Fixtures the lab's tests share: tiny runs of the vision experiments, made once."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from actreg.lab.experiments import get
from actreg.lab.experiments._config import apply_overrides

#: Each experiment's tiny settings (on top of COMMON): seconds, not minutes.
TINY = {
    "sparse-ae": ["code=32", "probe_size=200"],
    "sparse-rectifier": ["hidden=32,32,32"],
    "cnn": ["channels=4,8", "hidden=16"],
}
COMMON = ["data=digits", "limit=200", "epochs=2", "batch_size=50", "progress=false"]


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """``{experiment: results}`` of one tiny run each, in ``OUT/EXPERIMENT/t`` (read-only)."""
    out = tmp_path_factory.mktemp("runs")
    done = {}
    for name, extra in TINY.items():
        exp = get(name)
        cfg = apply_overrides(exp.config(), [*COMMON, *extra, f"out_dir={out}", "run_name=t"])
        done[name] = exp.run(cfg)
    return done


SCRIPTS = Path(__file__).parents[2] / "scripts"


def _load_script(name: str) -> ModuleType:
    """``scripts/NAME.py`` imported as a fresh module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_script() -> Callable[[str], ModuleType]:
    """A loader of ``scripts/NAME.py``; each call gives a fresh module."""
    return _load_script
