"""Accumulating sparsity statistics of named layers over many batches: :class:`Monitor`.

What lives here: :class:`Monitor`, whose forward hooks (one per watched layer, in training
and evaluation alike) add each batch's output to per-layer running sums (``_State``: counts
as integers, sums in float64, on the layer's device, never copied to the host in a hook);
:meth:`Monitor.compute` turns the sums into the measures of :mod:`actreg.metrics`, and can
sum them over the ranks of ``torch.distributed`` first. Name and pattern resolution,
output selection, hook registration and removal, and what a copied or pickled model
carries (no live hook) are shared with :func:`actreg.attach` in :mod:`actreg._hooks`.

A C++ kernel (:mod:`actreg._monitor_kernels`, built once per machine where a compiler is
present) computes a batch's statistics in one pass over a contiguous CPU float32/float64
output; until it is built, where it cannot be, or for other tensors,
:func:`actreg._sweep.batch_stats` does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from actreg import _monitor_kernels as _K
from actreg import _sweep
from actreg import metrics as M
from actreg._errors import ActregError
from actreg._hooks import Hook, HookSet, in_backward
from actreg._resolve import Select, check_model, check_select_keys, lookup, resolve

__all__ = ["Monitor"]

Stats = dict[str, dict[str, Any]]

# Per layer, the running sums: |x|, x**2, per-vector normalized Hoyer.
_ABS, _SQ, _HOYER = range(3)

# Largest watched output (elements) for which CPU scratch buffers are kept (64 MiB float32).
_BUFFER_MAX = 2**24


def _acc_dtype(device: torch.device) -> torch.dtype:
    """float64 for the running sums, except on Apple MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


class _State:
    """The running statistics of one layer (sums in float64 on the layer's device)."""

    __slots__ = ("active", "max", "seen", "sums", "units")

    def __init__(self, units: int, device: torch.device) -> None:
        self.units = units
        # Vectors along the unit axis seen: a tensor, not a Python int, so that hooks
        # traced by torch.compile do not guard on (and recompile for) its value.
        self.seen = torch.zeros((), dtype=torch.int64, device=device)
        dtype = _acc_dtype(device)
        self.sums = torch.zeros(3, dtype=dtype, device=device)
        self.active = torch.zeros(units, dtype=dtype, device=device)
        self.max = torch.full((), -math.inf, dtype=dtype, device=device)

    @property
    def positions(self) -> int:
        """Vectors seen (copies to the host)."""
        return int(self.seen)

    def to(self, device: torch.device) -> None:
        dtype = _acc_dtype(device)
        self.sums, self.active, self.max = (
            t.to(device, dtype) for t in (self.sums, self.active, self.max)
        )
        self.seen = self.seen.to(device, torch.int64)


class _Hook(Hook):
    """Forward hook feeding one layer's output to its Monitor; a no-op once copied."""

    def __init__(self, monitor: Monitor, name: str, select: Select, dim: int) -> None:
        super().__init__(name, select)
        self.monitor = monitor
        self.dim = dim

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        if in_backward():  # gradient checkpointing re-runs the forward during backward
            return
        self.monitor._update(self.name, self.select(output), self.dim)


def _dim_for(name: str, dim: int | Mapping[str, int]) -> int:
    return lookup(name, dim, -1) if isinstance(dim, Mapping) else dim


class Monitor(HookSet):
    """Sparsity statistics of named layers, accumulated over batches by forward hooks.

    The hooks record in training *and* evaluation (under ``torch.no_grad()`` too), keep
    no graph and no activation alive, never copy to the host, and skip the forward
    recomputation of gradient checkpointing. Statistics are exact: counts are integers and
    sums are accumulated in float64, so N batches give what their concatenation gives
    (counts bit for bit, sums to float rounding), and they agree with :mod:`actreg.metrics`
    on the concatenated data.

    A *position* is every index but the unit axis: an example of ``(N, H)``, an
    ``(example, time step)`` pair of ``(N, T, H)``, a pixel of ``(N, C, H, W)``. ``l0``
    is the mean number of active units per position (per time step for sequences, not
    per sequence), ``firing_rate`` a unit's share of positions where it is active.

    On the CPU the hooks compute a batch's statistics in one pass of a C++ kernel where a
    compiler is present (built once per machine in the background, the PyTorch ops in the
    meantime; ``ACTREG_EXTENSION=0`` never builds it, see :mod:`actreg._monitor_kernels`);
    the statistics are the same either way (sums to float rounding). The attribute
    ``kernels`` holds that choice (an :class:`actreg._cpp.Backend`).

    Args:
        model: the ``nn.Module`` to watch.
        names_or_patterns: a module name or glob pattern (``"blocks.*.act"``), or several;
            names come from ``model.named_modules()``, as for :func:`actreg.attach`.
        eps: values with ``|x| <= eps`` count as zero (for ``zero_fraction``, ``l0``,
            ``firing_rate``, ``dead_fraction``).
        dim: the unit axis of the watched outputs: ``-1`` for ``(N, H)`` and
            ``(N, T, H)``, ``1`` for ``(N, C, H, W)`` conv maps; or a mapping from
            names/patterns to axes (unlisted layers use ``-1``).
        select: how to read a tensor from a module's output, as in :func:`actreg.attach`
            (default: the tensor itself, or the first tensor of a tuple such as
            ``nn.LSTM``'s ``(output, (h, c))``).

    Example:
        >>> import torch, actreg
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
        >>> with actreg.Monitor(net, "1") as mon:
        ...     _ = net(torch.randn(16, 4)); _ = net(torch.randn(16, 4))
        ...     stats = mon.compute()["1"]
        >>> sorted(stats)
        ['dead_fraction', 'firing_rate', 'hoyer', 'l0', 'max', 'mean_abs', 'rms', 'zero_fraction']
        >>> 0.0 <= stats["zero_fraction"] <= 1.0
        True
    """

    def __init__(
        self,
        model: nn.Module,
        names_or_patterns: str | Iterable[str],
        *,
        eps: float = 0.0,
        dim: int | Mapping[str, int] = -1,
        select: Select | Mapping[str, Select] | None = None,
    ) -> None:
        super().__init__()
        model = check_model(model)
        self.eps = M.check_eps(eps)
        keys = [names_or_patterns] if isinstance(names_or_patterns, str) else names_or_patterns
        keys = list(keys)
        if not keys:
            raise ActregError("Monitor needs at least one module name or pattern, e.g. 'act1'")
        check_select_keys(model, select)
        if isinstance(dim, Mapping):
            resolve(model, dim.keys())
        self._state: dict[str, _State] = {}
        self.kernels = _K.backend()  # C++ kernel or PyTorch path, decided on first use
        self._scratch: dict[torch.dtype, _sweep.Scratch] = {}
        self.layers: list[str] = []
        for _, name, module, selector in self._targets(model, keys, select):
            if name in self.layers:
                continue
            layer_dim = _dim_for(name, dim)
            if isinstance(layer_dim, bool) or not isinstance(layer_dim, int):
                raise ActregError(f"dim for {name!r} must be an int, got {layer_dim!r}")
            self._register(module, _Hook(self, name, selector, layer_dim))
            self.layers.append(name)

    def _update(self, name: str, x: Tensor, dim: int) -> None:
        """Add one batch ``x`` of layer ``name``; empty batches are skipped."""
        try:
            x = M.check_tensor(x).detach()
            dim = M.check_unit_dim(x, dim)
        except ActregError as err:
            raise ActregError(f"Monitor, layer {name!r}: {err}") from None
        if x.numel() == 0:
            return
        units = x.shape[dim]
        state = self._state.get(name)
        if state is None:
            state = self._state[name] = _State(units, x.device)
        elif state.units != units:
            raise ActregError(
                f"Monitor, layer {name!r}: {units} units along dim={dim} (shape "
                f"{tuple(x.shape)}), but earlier batches had {state.units}; check dim= "
                "(1 for conv maps) or call reset() when the layer changes"
            )
        elif state.sums.device != x.device:
            state.to(x.device)
        # The big-tensor work in one pass of the C++ kernel (once built) or one blocked
        # sweep of PyTorch ops (in reused buffers on the CPU); the rest on the small
        # per-vector table.
        scratch = self._scratch_for(x)
        ext = self.kernels.poll() if _K.usable(x) else None
        if ext is not None:
            out = None if scratch is None else scratch.get("norms", 2 * (x.numel() // units))
            norms, active, top = _K.batch_stats(ext, x, dim, self.eps, out)
        else:
            norms, active, top = _sweep.batch_stats(x, dim, self.eps, scratch)
        totals = norms.sum(1)  # sum |x|, sum x**2 (then added in float64)
        hoyer = M.hoyer_from_norms(norms[0], norms[1], units, inplace=True).sum()
        state.sums += torch.cat((totals, hoyer.view(1)))
        state.active += active
        torch.maximum(state.max, top, out=state.max)
        state.seen += x.numel() // units

    def _scratch_for(self, x: Tensor) -> _sweep.Scratch | None:
        """Reused buffers for :func:`actreg._sweep.batch_stats` on the CPU (one per dtype), or None.

        On the CPU a fresh temporary of some MiB costs page faults at every step; GPU
        allocators cache blocks anyway. The buffers hold one block (at most
        ``metrics.BLOCK`` elements, or one row along the first non-unit axis if larger)
        and the per-vector norms of the largest batch; every layer shares them (hooks
        run one at a time). Not above ``_BUFFER_MAX`` elements.
        """
        if x.device.type != "cpu" or x.numel() > _BUFFER_MAX:
            return None
        scratch = self._scratch.get(x.dtype)
        if scratch is None:
            scratch = self._scratch[x.dtype] = _sweep.Scratch(x.dtype, x.device)
        return scratch

    def compute(self, sync: bool = False) -> Stats:
        """The statistics since the last :meth:`reset`, per layer (two small host copies each).

        Args:
            sync: combine the statistics of every rank when ``torch.distributed`` is
                initialized (every rank must call it). The local state is left unchanged.

        Returns:
            ``{layer: {metric: value}}`` for layers that saw data: the scalar metrics of
            :mod:`actreg.metrics` (``zero_fraction``, ``l0``, ``mean_abs``, ``rms``,
            ``hoyer``) and ``dead_fraction`` (share of units never active) and ``max``
            (largest value) as floats, and ``firing_rate``, a 1-D float64 CPU tensor.

        Raises:
            ActregError: when no watched layer has seen a batch since the Monitor was
                created or last reset (an empty result would read as "no statistics"
                where the model was never run, or ran under a copy without the hooks).
        """
        states = self._synced() if sync else self._state
        out: Stats = {}
        for name in self.layers:
            state = states.get(name)
            if state is None:
                continue
            host = torch.cat((state.sums, state.max.view(1), state.active)).cpu().double()
            positions = state.positions
            if positions == 0:
                continue
            elements = positions * state.units
            active = host[4:]
            n_active = float(active.sum())
            out[name] = {
                "zero_fraction": 1.0 - n_active / elements,
                "l0": n_active / positions,
                "mean_abs": float(host[_ABS]) / elements,
                "rms": math.sqrt(float(host[_SQ]) / elements),
                "hoyer": float(host[_HOYER]) / positions,
                "firing_rate": active / positions,
                "dead_fraction": float((active == 0).double().mean()),
                "max": float(host[3]),
            }
        if not out:
            raise ActregError(
                f"Monitor.compute(): no batch seen by {', '.join(map(repr, self.layers))} "
                "since the Monitor was created or last reset(); run the model on a batch "
                "first (the hooks record in training and evaluation, but not after remove() "
                "or in a copy of the model)"
            )
        return out

    def _synced(self) -> dict[str, _State]:
        """A copy of the state summed over the ranks of ``torch.distributed`` (if running)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self._state
        cuda = dist.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if cuda else None
        units = torch.tensor(
            [self._state[n].units if n in self._state else 0 for n in self.layers],
            dtype=torch.float64,
            device=device,
        )
        dist.all_reduce(units, op=dist.ReduceOp.MAX)
        sizes = [int(u) for u in units.tolist()]
        sums, maxes = [], []
        for name, size in zip(self.layers, sizes, strict=True):
            state = self._state.get(name) or _State(size, units.device)
            if state.units != size:
                raise ActregError(
                    f"Monitor, layer {name!r}: {state.units} units on this rank, {size} on another"
                )
            seen = state.seen.to(units.device, torch.float64).view(1)
            sums += [seen, state.sums.to(units.device)]
            sums.append(state.active.to(units.device))
            maxes.append(state.max.to(units.device).view(1))
        flat, top = torch.cat(sums), torch.cat(maxes)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
        out: dict[str, _State] = {}
        offset = 0
        for i, (name, size) in enumerate(zip(self.layers, sizes, strict=True)):
            chunk = flat[offset : offset + 4 + size]
            offset += 4 + size
            state = out[name] = _State(size, units.device)
            state.seen = chunk[0].round().to(torch.int64)
            state.sums, state.active, state.max = chunk[1:4], chunk[4:], top[i]
        return out

    def log(self, writer: Any, step: int, prefix: str = "actreg", sync: bool = False) -> Stats:
        """Write every statistic to a TensorBoard ``SummaryWriter``; returns :meth:`compute`.

        Scalars go to ``{prefix}/{layer}/{metric}``; firing rates as a histogram to
        ``{prefix}/{layer}/firing_rate``. Any object with ``add_scalar`` and
        ``add_histogram`` works (e.g. ``torch.utils.tensorboard.SummaryWriter``).
        """
        stats = self.compute(sync=sync)
        for layer, values in stats.items():
            for key, value in values.items():
                tag = f"{prefix}/{layer}/{key}"
                if isinstance(value, Tensor):
                    writer.add_histogram(tag, value, step)
                else:
                    writer.add_scalar(tag, value, step)
        return stats

    def reset(self) -> None:
        """Forget every statistic (start a new window)."""
        self._state = {}

    def remove(self) -> None:
        """Remove the hooks (statistics stay readable); calling it again does nothing."""
        super().remove()
        self._scratch = {}  # the hooks' reused buffers are no longer needed

    def state_dict(self) -> dict[str, Any]:
        """The accumulated statistics, as plain values and cloned tensors."""
        return {
            "eps": self.eps,
            "layers": {
                name: {
                    "units": s.units,
                    "positions": s.positions,
                    "elements": s.positions * s.units,
                    "sums": s.sums.clone(),
                    "active": s.active.clone(),
                    "max": s.max.clone(),
                }
                for name, s in self._state.items()
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the statistics with those of :meth:`state_dict` (e.g. to resume)."""
        try:
            eps, layers = state["eps"], state["layers"]
        except (KeyError, TypeError):
            raise ActregError(
                "not a Monitor state_dict: expected a mapping with 'eps' and 'layers'"
            ) from None
        if eps != self.eps:
            raise ActregError(f"state_dict was saved with eps={eps}, this Monitor has {self.eps}")
        unknown = sorted(set(layers) - set(self.layers))
        if unknown:
            raise ActregError(f"state_dict has layers {unknown} this Monitor does not watch")
        new: dict[str, _State] = {}
        for name, s in layers.items():
            try:
                st = new[name] = _State(int(s["units"]), s["sums"].device)
                st.seen = torch.tensor(int(s["positions"]), dtype=torch.int64)
                st.sums, st.active, st.max = (s[k].clone() for k in ("sums", "active", "max"))
            except (KeyError, TypeError, AttributeError) as err:
                raise ActregError(
                    f"state_dict entry for layer {name!r} is incomplete or malformed ({err!r}); "
                    "pass the dict returned by Monitor.state_dict()"
                ) from None
            if st.active.shape != (st.units,):
                raise ActregError(
                    f"state_dict entry for layer {name!r}: {st.active.numel()} unit counts "
                    f"for {st.units} units"
                )
            st.to(st.sums.device)
        self._state = new

    def __repr__(self) -> str:
        state = "" if self.hooked else ", removed"
        return f"Monitor({self.layers!r}, eps={self.eps:g}{state})"
