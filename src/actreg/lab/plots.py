"""Figures of activation sparsity, saved as PNG files.

matplotlib is an optional dependency (``pip install actreg[experiments]``), imported only
when a function here is called. Figures are drawn on matplotlib's Agg canvas without
``pyplot``, so no window opens, no global backend is changed and no figure is left open.
Every function takes the output ``path`` and returns it as a :class:`pathlib.Path`.

Example:
    >>> import tempfile, torch
    >>> from actreg.lab import plots
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     out = plots.activation_histograms({"act": torch.relu(torch.randn(64, 32))},
    ...                                       f"{tmp}/hist.png")
    ...     out.read_bytes()[:4]
    b'\\x89PNG'
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from actreg._errors import ActregError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "activation_histograms",
    "feature_tiles",
    "firing_rates",
    "sparsity_scatter",
    "target_tradeoff",
    "tradeoff",
]

PathLike = str | os.PathLike[str]


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - matplotlib is installed in dev
        raise ImportError(
            "actreg.lab.plots needs matplotlib: pip install 'actreg[experiments]'"
        ) from err
    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Figure, path: PathLike) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100)
    return out


def _grid(n: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def _values(x: Any, what: str) -> Tensor:
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise ActregError(f"{what} must hold numbers, got dtype {x.dtype}")
    return x.detach().flatten().double().cpu()


def activation_histograms(
    activations: Mapping[str, Tensor], path: PathLike, *, bins: int = 50, title: str | None = None
) -> Path:
    """Histograms of sample activations, one panel per layer, with log-scale counts.

    Args:
        activations: layer name -> a tensor of activations (any shape).
        path: where to write the PNG.
        bins: histogram bins per layer.
        title: a title above the panels.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if not activations:
        raise ActregError("activation_histograms needs at least one layer: {'name': tensor}")
    rows, cols = _grid(len(activations))
    fig = _figure(3.2 * cols, 2.6 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax, (name, x) in zip(axes, activations.items(), strict=False):
        values = _values(x, f"activations of {name!r}").numpy()
        zeros = float((values == 0).mean()) if values.size else 0.0
        ax.hist(values, bins=bins, color="tab:blue")
        ax.set_yscale("log")
        ax.set_title(f"{name} ({zeros:.0%} zeros)", fontsize=9)
        ax.set_xlabel("activation")
        ax.set_ylabel("count")
    for ax in axes[len(activations) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def firing_rates(
    rates: Mapping[str, Any],
    path: PathLike,
    *,
    floor: float = 1e-6,
    title: str = "feature density",
) -> Path:
    """Per-unit firing rates sorted in decreasing order, on a log axis (feature density).

    Args:
        rates: layer name -> firing rates (a 1-D tensor or list), or the output of
            :meth:`actreg.Monitor.compute` (its ``firing_rate`` entries are used).
        path: where to write the PNG.
        floor: rates below it (dead units) are drawn at ``floor`` so the log axis shows them.
        title: the title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if not rates:
        raise ActregError("firing_rates needs at least one layer: {'name': rates}")
    fig = _figure(6.0, 4.0)
    ax = fig.subplots()
    for name, value in rates.items():
        if isinstance(value, Mapping):
            if "firing_rate" not in value:
                raise ActregError(
                    f"layer {name!r} has no 'firing_rate'; pass Monitor.compute() output "
                    "or a mapping name -> rates"
                )
            value = value["firing_rate"]
        r = _values(value, f"firing rates of {name!r}")
        if r.numel() and (r.min() < 0 or r.max() > 1):
            raise ActregError(f"firing rates of {name!r} must lie in [0, 1]")
        dead = int((r == 0).sum())
        r = r.sort(descending=True).values.clamp_min(floor)
        ax.plot(range(1, r.numel() + 1), r.numpy(), label=f"{name} ({dead} dead)")
    ax.set_yscale("log")
    ax.set_xlabel("unit (sorted by firing rate)")
    ax.set_ylabel("firing rate")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def tradeoff(
    coefs: Sequence[float],
    task: Sequence[float],
    sparsity: Sequence[float],
    path: PathLike,
    *,
    task_label: str = "accuracy",
    sparsity_label: str = "zero fraction",
    title: str | None = None,
) -> Path:
    """Task metric and sparsity against the penalty coefficient (two y axes, log x).

    A coefficient of 0 (the unregularized baseline) is kept: the x axis becomes
    symmetric-log, linear below the smallest positive coefficient.

    Args:
        coefs: penalty coefficients (>= 0).
        task: the task metric at each coefficient (left axis).
        sparsity: the sparsity at each coefficient (right axis).
        path: where to write the PNG.
        task_label: label of the left axis.
        sparsity_label: label of the right axis.
        title: the title (by default, the two labels against the coefficient).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    c, t, s = (_values(v, n) for v, n in ((coefs, "coefs"), (task, "task"), (sparsity, "sp")))
    if not (c.numel() == t.numel() == s.numel()) or c.numel() == 0:
        raise ActregError(
            f"tradeoff needs coefs, task and sparsity of one non-zero length, got "
            f"{c.numel()}, {t.numel()}, {s.numel()}"
        )
    if bool((c < 0).any()):
        raise ActregError("tradeoff needs coefficients >= 0")
    order = c.argsort()
    xs, ys, zs = c[order].numpy(), t[order].numpy(), s[order].numpy()
    fig = _figure(6.0, 4.0)
    ax = fig.subplots()
    ax.plot(xs, ys, "o-", color="tab:blue")
    positive = xs[xs > 0]
    if len(positive) == len(xs):
        ax.set_xscale("log")
    elif len(positive):
        ax.set_xscale("symlog", linthresh=float(positive.min()))
    ax.set_xlabel("penalty coefficient")
    ax.set_ylabel(task_label, color="tab:blue")
    right = ax.twinx()
    right.plot(xs, zs, "s--", color="tab:red")
    right.set_ylabel(sparsity_label, color="tab:red")
    ax.set_xticks(xs, [f"{v:g}" for v in xs], rotation=45 if len(xs) > 6 else 0)
    ax.minorticks_off()
    ax.set_title(title or f"{task_label} and {sparsity_label} vs coefficient")
    return _save(fig, path)


def target_tradeoff(
    targets: Sequence[float],
    task: Sequence[float],
    achieved: Sequence[float],
    path: PathLike,
    *,
    task_label: str = "error",
    title: str | None = None,
) -> Path:
    """The task metric against the zero fraction each target reached (a target search).

    Each point is one target, labelled with it; a grey cross marks the target itself at the
    same height, joined by a dotted line, so a missed target shows as a gap.

    Args:
        targets: the zero-fraction targets asked for.
        task: the task metric at each target (y axis).
        achieved: the zero fraction reached at each target (x axis).
        path: where to write the PNG.
        task_label: label of the y axis.
        title: the title (by default, the task metric against the zero fraction).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    g, t, a = (_values(v, n) for v, n in ((targets, "targets"), (task, "task"), (achieved, "a")))
    if not (g.numel() == t.numel() == a.numel()) or g.numel() == 0:
        raise ActregError(
            f"target_tradeoff needs targets, task and achieved of one non-zero length, got "
            f"{g.numel()}, {t.numel()}, {a.numel()}"
        )
    order = g.argsort()
    gs, ys, xs = g[order].numpy(), t[order].numpy(), a[order].numpy()
    fig = _figure(6.0, 4.0)
    ax = fig.subplots()
    ax.plot(xs, ys, "o-", color="tab:blue")
    for target, x, y in zip(gs, xs, ys, strict=True):
        ax.plot([target, x], [y, y], "x:", color="tab:gray", markevery=[0])
        ax.annotate(f"{target:g}", (x, y), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("zero fraction reached (labels: target)")
    ax.set_ylabel(task_label)
    ax.set_title(title or f"{task_label} against the zero fraction reached")
    return _save(fig, path)


def feature_tiles(
    weights: Tensor,
    image_shape: tuple[int, int] | None,
    path: PathLike,
    *,
    ncols: int | None = None,
    max_features: int = 100,
    title: str | None = None,
) -> Path:
    """Learned features as a grid of grey images (each scaled to its own range).

    Args:
        weights: ``(n_features, H * W)``, e.g. an encoder's ``weight`` (one row per unit).
        image_shape: ``(H, W)``; ``None`` for square images (``H * W`` a perfect square).
        path: where to write the PNG.
        ncols: tiles per row (by default about the square root of the count).
        max_features: draw at most this many (the first ones).
        title: the title (by default, how many features are shown).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if not isinstance(weights, Tensor) or weights.dim() != 2 or weights.numel() == 0:
        shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ActregError(
            f"feature_tiles needs a non-empty (n_features, H*W) tensor, got {shape}; "
            "for nn.Linear(784, k) pass layer.weight"
        )
    size = weights.shape[1]
    if image_shape is None:
        side = math.isqrt(size)
        if side * side != size:
            raise ActregError(
                f"{size} pixels per feature is not a square image; pass image_shape=(H, W)"
            )
        image_shape = (side, side)
    h, w = image_shape
    if h * w != size:
        raise ActregError(f"image_shape {image_shape} has {h * w} pixels, weights have {size}")
    tiles = weights[:max_features].detach().double().cpu().reshape(-1, h, w)
    low = tiles.amin(dim=(1, 2), keepdim=True)
    high = tiles.amax(dim=(1, 2), keepdim=True)
    if ncols is not None and (isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1):
        raise ActregError(f"ncols must be a positive int, got {ncols!r}")
    tiles = (tiles - low) / (high - low).clamp_min(1e-12)
    n = tiles.shape[0]
    cols = min(ncols, n) if ncols else _grid(n)[1]
    rows = math.ceil(n / cols)
    canvas = torch.ones(rows * (h + 1) + 1, cols * (w + 1) + 1, dtype=torch.float64)
    for i, tile in enumerate(tiles):
        top, left = (1 + k * (n + 1) for k, n in zip(divmod(i, cols), (h, w), strict=True))
        canvas[top : top + h, left : left + w] = tile
    scale = max(4.0, min(10.0, 0.12 * max(canvas.shape)))
    fig = _figure(scale, scale * canvas.shape[0] / canvas.shape[1])
    ax = fig.subplots()
    ax.imshow(canvas.numpy(), cmap="gray", interpolation="nearest", vmin=0.0, vmax=1.0)
    ax.set_axis_off()
    ax.set_title(title or f"{n} of {weights.shape[0]} features", fontsize=9)
    return _save(fig, path)


def sparsity_scatter(
    points: Mapping[str, tuple[float, float]],
    path: PathLike,
    *,
    task_label: str = "validation perplexity",
    sparsity_label: str = "zero fraction",
    title: str | None = None,
) -> Path:
    """Task metric against sparsity, one labelled point per model (a trade-off without a
    coefficient: trained penalties, targets, training-free thresholds side by side).

    Args:
        points: ``{label: (sparsity, task)}``.
        path: where to write the PNG.
        task_label: label of the y axis.
        sparsity_label: label of the x axis.
        title: the title (by default, the two labels).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     out = sparsity_scatter({"relu": (0.6, 80.0), "l1": (0.9, 81.0)}, f"{tmp}/s.png")
        ...     out.read_bytes()[:4]
        b'\\x89PNG'
    """
    if not points:
        raise ActregError("sparsity_scatter needs at least one point {label: (sparsity, task)}")
    fig = _figure(6.0, 4.0)
    ax = fig.subplots()
    for label, (x, y) in points.items():
        ax.plot([x], [y], "o")
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel(sparsity_label)
    ax.set_ylabel(task_label)
    ax.grid(alpha=0.3)
    ax.set_title(title or f"{task_label} vs {sparsity_label}")
    return _save(fig, path)
