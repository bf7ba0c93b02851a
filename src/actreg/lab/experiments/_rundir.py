"""Run folders and results files: claimed atomically, written whole, resumable.

A run is finished when its ``results.json`` exists: that file is written last and
atomically (:func:`save_results`). A run folder is claimed with ``mkdir`` (atomic), and its
config goes to ``run_config.json`` at once, so an interrupted run can be resumed with the
same settings (``resume=true``) and never with other ones.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import actreg
from actreg._errors import ActregError
from actreg.lab._checkpoint import CHECKPOINT
from actreg.lab.experiments._config import to_dict

__all__ = [
    "FREE_KEYS",
    "RUN_CONFIG",
    "atomic_write_text",
    "jsonable",
    "load_results",
    "make_run_dir",
    "resume_from",
    "save_results",
]


def make_run_dir(config: Any, experiment: str) -> Path:
    """``OUT_DIR/EXPERIMENT/RUN_NAME`` (from ``config.out_dir`` and ``config.run_name``), created.

    Creating the folder is the claim on it (``mkdir`` is atomic), so two runs started at
    once never share one. Without a name it is a timestamp, with ``-2``, ``-3``, ... added
    when that exists. A named folder that exists is refused unless ``config.overwrite``;
    then its ``results.json`` is removed first, so a rerun that fails leaves no folder that
    looks finished (a run is finished when its ``results.json`` exists; that file is
    written last and atomically, see :func:`save_results`).

    With ``config.resume`` a named folder that exists and holds no ``results.json`` (a run
    that was interrupted) is taken back, provided its ``run_config.json`` (written when the
    folder is claimed) matches ``config`` except in :data:`FREE_KEYS`; the training loops
    then continue each variant from its last checkpoint (:func:`resume_from`).
    """
    base = Path(config.out_dir) / experiment
    try:
        base.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise ActregError(
            f"cannot create the run folder under {base}: {err.filename or base} exists and is "
            f"not a folder; choose another out_dir"
        ) from err
    except OSError as err:
        raise ActregError(
            f"cannot create the run folder under {base}: {err.strerror or err}; choose a "
            f"writable out_dir (--set out_dir=PATH)"
        ) from err
    if config.run_name:
        path = base / config.run_name
        try:
            path.mkdir()
        except FileExistsError as err:
            if not path.is_dir():
                raise ActregError(
                    f"{path} exists and is not a folder; choose another run_name"
                ) from err
            if getattr(config, "resume", False) and not getattr(config, "overwrite", False):
                _check_resumable(path, config)
                return path
            if not getattr(config, "overwrite", False):
                raise ActregError(
                    f"the run folder {path} exists: choose another run_name, set "
                    f"overwrite=true to replace its results, or resume=true to continue it "
                    f"if it was interrupted"
                ) from err
            (path / "results.json").unlink(missing_ok=True)
        _write_run_config(path, config)
        return path
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 1000):
        path = base / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        _write_run_config(path, config)
        return path
    raise ActregError(f"could not claim a run folder under {base}: set run_name")


RUN_CONFIG = "run_config.json"  # the config of a run, written when its folder is claimed
FREE_KEYS = ("progress", "threads", "resume", "overwrite")  # a resumed run may change these


def _write_run_config(path: Path, config: Any) -> None:
    atomic_write_text(path / RUN_CONFIG, json.dumps(jsonable(to_dict(config)), indent=2) + "\n")


def _check_resumable(path: Path, config: Any) -> None:
    if (path / "results.json").exists():
        raise ActregError(
            f"the run {path} finished (it has results.json): nothing to resume; set "
            f"overwrite=true to run it again, or choose another run_name"
        )
    try:
        saved = json.loads((path / RUN_CONFIG).read_text())
    except (OSError, ValueError) as err:
        raise ActregError(
            f"cannot resume {path}: its {RUN_CONFIG} is missing or unreadable ({err}); set "
            f"overwrite=true to start it again"
        ) from err
    now = jsonable(to_dict(config))
    changed = sorted(k for k in now if k not in FREE_KEYS and saved.get(k) != now[k])
    if changed:
        pairs = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise ActregError(
            f"cannot resume {path} with other settings ({pairs}): resume with the same "
            f"settings, or set overwrite=true to start again"
        )


def resume_from(config: Any, variant_dir: Path) -> bool:
    """Whether a training loop writing checkpoints to ``variant_dir`` should resume."""
    return bool(getattr(config, "resume", False)) and (variant_dir / CHECKPOINT).exists()


def jsonable(value: Any) -> Any:
    """Tensors, arrays and tuples made JSON-ready (non-finite floats become None)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Tensor):
        return jsonable(value.tolist())
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.floating, np.integer)):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def save_results(run_dir: Path, experiment: str, config: Any, payload: dict[str, Any]) -> Path:
    """Write ``results.json``: experiment, library version, the whole config, then payload,
    which gets ``run_dir`` (as a string) as its last key, in place, for the caller too."""
    payload["run_dir"] = str(run_dir)
    doc = {
        "experiment": experiment,
        "version": actreg.__version__,
        "torch": torch.__version__,
        "config": to_dict(config),
        **payload,
    }
    path = run_dir / "results.json"
    atomic_write_text(path, json.dumps(jsonable(doc), indent=2) + "\n")
    return path


def load_results(run_dir: str | Path) -> dict[str, Any]:
    """Read ``RUN_DIR/results.json`` (or a results file given directly), as
    :func:`save_results` wrote it, with its path under ``_path``."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / "results.json"
    if not path.exists():
        raise ActregError(
            f"no results.json at {path}; pass the folder that `actreg run` printed at the end"
        )
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ActregError(f"{path} is not valid JSON: {err}") from None
    if "experiment" not in doc:
        raise ActregError(f"{path} is not an actreg results file (no 'experiment' key)")
    doc["_path"] = str(path)
    return doc


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a temporary file, fsync, rename).

    A full disk or a read-only folder raises an :class:`ActregError` naming the path;
    what was at ``path`` before stays intact.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ActregError(
            f"could not write {path}: {err.strerror or err}; free space or choose a writable "
            f"out_dir, then run again"
        ) from err
