"""Safe checkpoint loading and masking secrets in storage URLs.

``torch.load`` unpickles, and unpickling can run arbitrary code. :func:`load_checkpoint`
loads with ``weights_only=True``: tensors, numbers, strings and plain containers load;
anything else is refused with an :class:`~actreg.ActregError` before it can run.
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import torch

from actreg._errors import ActregError

__all__ = ["load_checkpoint", "mask_url"]

_SECRET_QUERY = re.compile(
    r"(?i)([?&;](?:password|passwd|pwd|secret|token|api_key|apikey|access_key)=)[^&;#]*"
)


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


def mask_url(url: str) -> str:
    """Hide the password of a storage URL (and secret query parameters) for logs.

    Example:
        >>> mask_url("postgresql://user:secret@host:5432/db")
        'postgresql://user:***@host:5432/db'
        >>> mask_url("sqlite:///runs/search.db")
        'sqlite:///runs/search.db'
    """
    if not isinstance(url, str):
        raise ActregError(f"mask_url needs a string, got {type(url).__name__}")
    try:
        parts = urlsplit(url)
    except ValueError:
        return _SECRET_QUERY.sub(r"\1***", url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{hostport}"
    masked = urlunsplit(parts._replace(netloc=netloc)) if netloc != parts.netloc else url
    return _SECRET_QUERY.sub(r"\1***", masked)
