"""Safe checkpoint loading.

``torch.load`` unpickles, and unpickling can run arbitrary code. :func:`load_checkpoint`
loads with ``weights_only=True``: tensors, numbers, strings and plain containers load;
anything else is refused with an :class:`~actreg.ActregError` before it can run.
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Any

import torch

from actreg._errors import ActregError

__all__ = ["load_checkpoint"]


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu"
) -> Any:
    """Load a checkpoint saved with ``torch.save``, refusing anything but plain data.

    A training checkpoint (model and optimizer ``state_dict``, a config dict, a version
    string, an epoch number) loads; a file that carries other pickled objects, which could
    execute code while loading, is refused and nothing in it runs.

    Args:
        path: the checkpoint file.
        map_location: where tensors go (``"cpu"`` by default), as in ``torch.load``.

    Returns:
        What was saved, e.g. ``{"model": ..., "optimizer": ..., "epoch": 3}``.

    Raises:
        ActregError: when the file does not exist, is not a torch checkpoint, or holds
            objects that ``weights_only`` loading does not allow.

    Example:
        >>> import tempfile, os, torch
        >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.pt")
        >>> torch.save({"model": torch.nn.Linear(2, 1).state_dict(), "epoch": 3}, path)
        >>> load_checkpoint(path)["epoch"]
        3
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ActregError(f"no checkpoint file at {path!r}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        if found is None:
            raise ActregError(f"cannot read checkpoint {path!r}: not a torch.save file") from None
        raise ActregError(
            f"refusing to load {path!r}: it holds objects other than tensors, numbers, "
            f"strings and plain containers (here {found.group(1)}), and unpickling them "
            "could run code. Only load it with torch.load(..., weights_only=False) if you "
            "trust its source."
        ) from None
    except (RuntimeError, EOFError) as err:
        raise ActregError(f"cannot read checkpoint {path!r}: {err}") from None
