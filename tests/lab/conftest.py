"""Fixtures the lab's tests share: tiny runs of the vision experiments, made once."""

from __future__ import annotations

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
