"""The training loop's checkpoint: best weights, config, and the state a run resumes from.

``RUN_DIR/checkpoint.pt`` holds plain data only (it is read with
:func:`actreg.load_checkpoint`, which refuses anything else), and is replaced whole after
every epoch: written to a temporary file, then renamed, so a kill or a full disk leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from actreg import ActregError, __version__, load_checkpoint

__all__ = ["CHECKPOINT", "atomic_save", "resume_state", "save_checkpoint"]

CHECKPOINT = "checkpoint.pt"  # in a run folder: best weights, config, and the resume state
_FREE = ("progress", "threads")  # settings a resumed run may change: results stay the same


def save_checkpoint(
    run_dir: Path, weights: dict[str, Tensor], epoch: int, cfg: Any, last: dict[str, Any]
) -> None:
    """Write ``run_dir/checkpoint.pt`` whole or not at all (temporary file, then rename)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "model": weights,
        "epoch": epoch,
        "train_config": asdict(cfg),
        "version": __version__,
        "resume": last,
    }
    atomic_save(ckpt, run_dir / CHECKPOINT)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)`` whole or not at all (temporary file, then rename); what was
    at ``path`` stays intact when writing fails."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ActregError(
            f"could not write {path}: {err.strerror or err}; free space or choose a writable "
            f"out_dir; the previous checkpoint is intact"
        ) from err


def resume_state(run_dir: Path | None, cfg: Any) -> dict[str, Any]:
    """The checkpoint to resume from, checked against ``cfg``."""
    if run_dir is None:
        raise ActregError("resume=True needs the run_dir of the interrupted run")
    ckpt: dict[str, Any] = load_checkpoint(run_dir / CHECKPOINT)
    if "resume" not in ckpt:
        raise ActregError(f"{run_dir / CHECKPOINT} has no resume state; it cannot be resumed")
    # A setting the checkpoint predates reads as its default (new settings default to
    # the old behaviour).
    defaults = {f.name: f.default for f in fields(cfg)}
    saved = {**defaults, **ckpt["train_config"]}
    now = asdict(cfg)
    changed = sorted(k for k in now if k not in _FREE and saved.get(k) != now[k])
    if changed:
        pairs = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise ActregError(
            f"resume: the training config differs from the checkpoint's ({pairs}); "
            "resume with the same settings, or start a new run"
        )
    return ckpt
