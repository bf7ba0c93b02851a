"""Re-initializing dead units of any Linear or Conv producer: :func:`revive`.

A unit is *dead* when its activation is zero on every input given (``|x| <= eps``), or,
with ``floor=``, active on less than that share of them (a rare unit, which a smaller
held-out set sees as dead). Dead
units get no gradient, so they stay dead; :func:`revive` gives them a second chance: the
weights that produce them (the ``nn.Linear`` or ``nn.Conv1d``/``nn.Conv2d`` feeding the
activation) are re-initialized, as in the resampling of sparse-autoencoder practice
(Anthropic 2023), and the optimizer's running moments of those weights are reset (see below).

Design choices:

* The producer is found by running one small batch and watching the order in which
  modules are called: the last Linear/Conv that finished before the activation started,
  whose output width is the activation's. That handles ``fc -> norm -> act`` and nested
  containers without guessing from names; a shared activation module (one ``nn.ReLU``
  called for several layers) is ambiguous, and an explicit ``producer=`` is then required.
* ``init="resample"`` points a dead unit's weights at what its producer saw on an input the
  model handles badly (drawn in proportion to ``loss_fn``'s per-example loss; uniformly
  without it): the centered input row for a Linear, a centered input patch for a Conv,
  scaled to ``scale`` times the live units' mean weight norm. ``init="fresh"`` draws a
  random direction instead. The bias becomes 0.
* The consumer (the first Linear/Conv reading the activation) is touched only with
  ``init="resample"`` where the direction lives in its output space (an autoencoder's
  decoder): its column for the unit becomes that direction, unit norm. Elsewhere the
  consumer column is left as is: the revived unit gets gradient through it.
* ``rate=`` sets a revived unit's bias so that it fires on that share of ``inputs`` (a
  quantile of its new pre-activations) instead of bias 0, where a random direction fires on
  about half of them. A layer trained to 95% zeros that gets a few hundred units firing at
  50% is far below its target: a target-sparsity controller then raises its coefficient,
  which crushes the revived units and the live ones (docs/TARGET.md, digits at 0.95).
* Adam's second moment of a revived row is set to the live rows' mean, not 0: Adam counts
  steps per tensor, so late in training a zeroed second moment is not bias-corrected and
  the row's next hundred or so steps are 3-6 times the learning rate, which kills it
  again. The first moment (momentum) is zeroed. ``square_avg`` (RMSprop) and ``sum``
  (Adagrad) are treated alike.
* Models that are not called as ``model(batch)`` (a recurrent language model takes a hidden
  state with its tokens) pass ``forward(model, batch)``: how to run the model on a batch of
  the examples in ``inputs``. It keeps everything that works per example (batching, the
  two-example trace, loss weighting and ``init="resample"``'s choice of examples), which a
  callable that ran the model over a whole sample by itself would lose.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from actreg._errors import ActregError
from actreg._reinit import Forward, Producer, check_floor, check_rate, reinit, set_rate
from actreg._resolve import check_model, resolve

__all__ = ["revive"]

_PRODUCERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
_PROBE = 2  # examples of the tracing forward


def _width_out(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else int(m.out_channels)  # type: ignore[arg-type]


def _width_in(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else int(m.in_channels)  # type: ignore[arg-type]


def _module(model: nn.Module, ref: str | nn.Module, role: str) -> tuple[str, nn.Module]:
    if isinstance(ref, nn.Module):
        for name, m in model.named_modules():
            if m is ref:
                return name, m
        raise ActregError(f"the {role} module given is not part of {type(model).__name__}")
    return resolve(model, [ref])[ref][0]


def _call(model: nn.Module, x: Tensor) -> Any:
    return model(x)


def _trace(
    model: nn.Module, layer: nn.Module, x: Tensor, forward: Forward
) -> tuple[list[Any], list[Any]]:
    """Run ``model`` on ``x``: (event, name, module) in call order, and the layer's outputs."""
    events: list[Any] = []
    outputs: list[Any] = []
    handles = []

    def record(event: str, name: str) -> Callable[..., None]:
        def hook(m: nn.Module, *args: Any) -> None:
            events.append((event, name, m))

        return hook

    for name, m in model.named_modules():
        if isinstance(m, _PRODUCERS):
            handles.append(m.register_forward_pre_hook(record("start", name)))
            handles.append(m.register_forward_hook(record("end", name)))
    handles.append(layer.register_forward_pre_hook(record("layer_start", "")))
    handles.append(layer.register_forward_hook(lambda m, a, out: outputs.append(out)))
    handles.append(layer.register_forward_hook(record("layer_end", "")))
    try:
        forward(model, x)
    finally:
        for h in handles:
            h.remove()
    return events, outputs


def _infer_producer(name: str, module: nn.Module, events: list[Any]) -> tuple[str, nn.Module]:
    """The last Linear/Conv that finished before ``module`` started (or ``module`` itself)."""
    if isinstance(module, _PRODUCERS):
        return name, module
    start = next(i for i, e in enumerate(events) if e[0] == "layer_start")
    before = [(n, m) for event, n, m in events[:start] if event == "end"]
    if not before:
        raise ActregError(
            f"cannot revive {name!r}: it has no producer weights to re-initialize (no "
            "nn.Linear/nn.Conv1d/nn.Conv2d runs before it); pass producer='the module that "
            "computes its pre-activations', or revive a layer fed by a Linear or Conv"
        )
    return before[-1]


def _infer_consumer(module: nn.Module, events: list[Any], units: int) -> nn.Module | None:
    """The first Linear/Conv started after ``module`` finished that reads ``units`` inputs."""
    ends = [i for i, e in enumerate(events) if e[0] == "layer_end"]
    after = [m for event, _, m in events[ends[0] + 1 :] if event == "start" and m is not module]
    return next((m for m in after if _width_in(m) == units), None)


def _capture(
    model: nn.Module,
    layer: nn.Module,
    producer: Producer,
    inputs: Tensor,
    targets: Tensor | None,
    loss_fn: Callable[[Any, Tensor], Tensor] | None,
    dim: int,
    eps: float,
    batch_size: int,
    forward: Forward,
) -> tuple[Tensor, int, Tensor, Tensor]:
    """Active positions per unit, positions seen, per-example losses, and the producer's
    mean input row.

    The mean is over positions (rows of a Linear's input; per channel for a Conv, spread
    over the kernel), accumulated chunk by chunk so nothing of size ``inputs`` is kept.
    """
    fired: list[Tensor] = []
    losses: list[Tensor] = []
    total: list[Tensor] = []
    counts = [0, 0]  # positions seen by the producer, producer calls
    seen = [0]  # positions of the layer's output

    def on_layer(m: nn.Module, args: Any, out: Any) -> None:
        t = out[0] if isinstance(out, (tuple, list)) else out
        active = (t.abs() > eps).movedim(dim, 0).reshape(t.shape[dim], -1)
        fired.append(active.sum(1))
        seen[0] += active.shape[1]

    def on_producer(m: nn.Module, args: Any) -> None:
        x = args[0].detach().float()
        rows = x.reshape(-1, x.shape[-1]) if dim == -1 else x.movedim(1, -1).flatten(0, -2)
        total.append(rows.sum(0))
        counts[0] += rows.shape[0]
        counts[1] += 1

    h1 = layer.register_forward_hook(on_layer)
    h2 = producer.register_forward_pre_hook(on_producer)
    try:
        for i in range(0, len(inputs), batch_size):
            chunk = inputs[i : i + batch_size]
            out = forward(model, chunk)
            target = chunk if targets is None else targets[i : i + batch_size]
            if loss_fn is not None:
                losses.append(loss_fn(out, target).detach().reshape(len(chunk), -1).sum(1))
            elif isinstance(out, Tensor) and out.shape == target.shape:
                losses.append((out - target).square().reshape(len(chunk), -1).sum(1))
            else:
                losses.append(torch.ones(len(chunk), device=chunk.device))
    finally:
        h1.remove()
        h2.remove()
    if counts[1] != len(fired):
        raise ActregError("the producer must run once per forward of the revived layer")
    mean = torch.stack(total).sum(0) / max(counts[0], 1)
    if dim != -1:  # a Conv: the channel means, repeated over the kernel's positions
        kernel = producer.weight.shape[2:]
        mean = mean.view(-1, *([1] * len(kernel))).expand(-1, *kernel).reshape(-1)
    return torch.stack(fired).sum(0), seen[0], torch.cat(losses), mean


def _producer_inputs(
    model: nn.Module, producer: nn.Module, x: Tensor, batch_size: int, forward: Forward
) -> Tensor:
    seen: list[Tensor] = []
    handle = producer.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    try:
        for i in range(0, len(x), batch_size):
            forward(model, x[i : i + batch_size])
    finally:
        handle.remove()
    return torch.cat(seen)


def _patches(producer: nn.Conv1d | nn.Conv2d, x: Tensor) -> Tensor | None:
    """One input patch per example of ``x`` at a random position, flattened like a weight row."""
    kernel, dil = producer.kernel_size, producer.dilation
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dil, strict=True)]
    sizes = x.shape[2:]
    if any(size < span for size, span in zip(sizes, spans, strict=True)):
        return None
    rows = []
    for example in x:
        start = [
            int(torch.randint(size - span + 1, ())) for size, span in zip(sizes, spans, strict=True)
        ]
        index = tuple(
            slice(s0, s0 + span, d) for s0, span, d in zip(start, spans, dil, strict=True)
        )
        rows.append(example[(slice(None), *index)].reshape(-1))
    return torch.stack(rows)


def _directions(
    model: nn.Module,
    producer: Producer,
    inputs: Tensor,
    losses: Tensor,
    mean: Tensor,
    n: int,
    init: str,
    batch_size: int,
    forward: Forward,
) -> Tensor:
    """``n`` unit-norm rows shaped like the producer's weight rows (flattened)."""
    fan_in = producer.weight[0].numel()
    chosen: Tensor | None = None
    if init == "resample" and not (
        isinstance(producer, nn.Conv1d | nn.Conv2d) and producer.groups != 1
    ):
        weights = losses.float().clamp_min(0)
        if not bool(weights.sum() > 0):
            weights = torch.ones_like(weights)
        # Distinct examples while there are enough with a positive loss.
        distinct = int((weights > 0).sum())
        picks = torch.multinomial(weights / weights.sum(), n, replacement=n > distinct)
        seen = _producer_inputs(model, producer, inputs[picks], batch_size, forward).float()
        if isinstance(producer, nn.Linear):
            rows = seen.reshape(n, -1, seen.shape[-1])  # sequences: several positions each
            where = (
                torch.randint(rows.shape[1], (n,))
                if rows.shape[1] > 1
                else torch.zeros(n, dtype=torch.long)
            )
            chosen = rows[torch.arange(n), where.to(rows.device)]
        else:
            chosen = _patches(producer, seen)
        if chosen is not None:
            chosen = chosen - mean.to(chosen)
    if chosen is None:  # init="fresh", grouped convs, inputs smaller than the kernel
        chosen = torch.randn(n, fan_in, device=producer.weight.device)
    return chosen / chosen.norm(dim=1, keepdim=True).clamp_min(1e-8)


@torch.no_grad()
def revive(
    model: nn.Module,
    layer: str,
    inputs: Tensor,
    *,
    targets: Tensor | None = None,
    loss_fn: Callable[[Any, Tensor], Tensor] | None = None,
    producer: str | nn.Module | None = None,
    consumer: str | nn.Module | None = "auto",
    optimizer: torch.optim.Optimizer | None = None,
    init: str = "resample",
    scale: float = 0.2,
    eps: float = 0.0,
    batch_size: int = 2000,
    forward: Forward | None = None,
    rate: float | None = None,
    floor: float = 0.0,
) -> Tensor:
    """Re-initialize the units of ``layer`` that are zero on every example of ``inputs``
    (or, with ``floor``, active on less than that share of them).

    Args:
        model: the model; it runs in evaluation mode here, then gets its mode back.
        layer: the name of the activation module whose units are checked.
        inputs: examples to run through ``model`` (in chunks of ``batch_size``).
        targets: what ``loss_fn`` compares the output with (default: the inputs).
        loss_fn: ``(output, targets) -> per-example losses``; high-loss examples are drawn
            more often. Default: the squared error when the output has the targets' shape
            (autoencoders), else uniform.
        producer: the Linear/Conv computing the layer's pre-activations (name or module);
            inferred when ``None``.
        consumer: the Linear/Conv reading the layer (name or module); ``"auto"`` infers
            it, ``None`` leaves it alone.
        optimizer: its state for the re-initialized weights is reset: momentum and
            Adam's first moment zeroed, second moments set to the live rows' mean.
        init: ``"resample"`` (toward inputs) or ``"fresh"`` (random directions).
        scale: new weight rows get ``scale`` times the live rows' mean norm.
        eps: values with ``|x| <= eps`` count as zero.
        batch_size: examples per forward.
        forward: ``(model, batch) -> output``, how to run the model on a batch of
            ``inputs`` (default: ``model(batch)``); e.g. a recurrent language model with
            its hidden state, ``lambda m, x: m(x.T, m.init_hidden(len(x)))`` for rows of
            tokens. The output goes to ``loss_fn`` as ``model(batch)``'s would.
        rate: the share of ``inputs`` (positions, for a Conv or a sequence) on which each
            revived unit fires: its bias is set to that quantile of its new
            pre-activations (``None``: bias 0, about half). For a layer trained toward a
            sparsity target, its active share (``1 - target``). The producer needs a bias,
            and a normalization between it and ``layer`` makes the share approximate.
        floor: units active on less than this share of the positions in ``inputs`` are
            revived too (0: only units active on none). Rare units are dead in all but
            name: a held-out set a few times smaller than ``inputs`` sees most of them
            silent. Under a sparsity target a tenth of ``rate`` suits (the lab's choice,
            docs/TARGET.md); must be below ``rate`` when both are given.

    Returns:
        The indices of the revived units (empty when none was dead).

    Raises:
        ActregError: when ``layer`` has no producer weights (say which with ``producer=``).

    Example:
        >>> import torch, actreg
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
        >>> with torch.no_grad(): net[0].bias[:3] = -100.0  # units 0-2 never fire
        >>> actreg.revive(net, "1", torch.randn(64, 4))
        tensor([0, 1, 2])
    """
    model = check_model(model)
    if init not in ("resample", "fresh"):
        raise ActregError(f"unknown init={init!r}; use 'resample' or 'fresh'")
    if not isinstance(inputs, Tensor) or len(inputs) == 0:
        raise ActregError("revive needs a non-empty tensor of inputs to measure firing on")
    if targets is not None and len(targets) != len(inputs):
        raise ActregError(
            f"targets has {len(targets)} rows, inputs {len(inputs)}: pass one target per input"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ActregError(
            f"batch_size must be an int >= 1 (examples per forward), got {batch_size!r}"
        )
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
        raise ActregError(
            f"scale must be a number > 0 (new rows get scale x the live rows' norm), got "
            f"{scale!r}; the default is 0.2"
        )
    scale = float(scale)
    if forward is not None and not callable(forward):
        raise ActregError(
            f"forward must be a callable (model, batch) -> output, got {type(forward).__name__}"
        )
    if rate is not None:
        rate = check_rate(rate)
    floor = check_floor(floor, rate)
    run = _call if forward is None else forward
    name, module = _module(model, layer, "layer")
    was_training = model.training
    model.eval()
    try:
        events, outputs = _trace(model, module, inputs[:_PROBE], run)
        if not outputs:
            raise ActregError(f"module {name!r} did not run in model(inputs)")
        if producer is None and len(outputs) != 1:
            raise ActregError(
                f"module {name!r} runs {len(outputs)} times per forward, so its producer is "
                "ambiguous; pass producer='the Linear/Conv name'"
            )
        if producer is None:
            prod_name, prod = _infer_producer(name, module, events)
        else:
            prod_name, prod = _module(model, producer, "producer")
        if not isinstance(prod, _PRODUCERS):
            raise ActregError(
                f"cannot revive {name!r}: producer {prod_name!r} is a {type(prod).__name__}, "
                "not an nn.Linear/nn.Conv1d/nn.Conv2d; pass producer='the module that "
                "computes its pre-activations'"
            )
        units = _width_out(prod)
        dim = -1 if isinstance(prod, nn.Linear) else 1
        out = outputs[0][0] if isinstance(outputs[0], (tuple, list)) else outputs[0]
        if out.dim() < 2 or out.shape[dim] != units:
            raise ActregError(
                f"cannot revive {name!r}: its output {tuple(out.shape)} does not have the "
                f"{units} units of its producer {prod_name!r} on axis {dim}; pass "
                "producer='the module that computes its pre-activations'"
            )
        if rate is not None and prod.bias is None:
            raise ActregError(
                f"rate={rate:g} sets the revived units' biases, but producer {prod_name!r} of "
                f"{name!r} has none; pass rate=None (bias-free producers revive at bias 0)"
            )
        if consumer == "auto":
            cons = _infer_consumer(module, events, units)
        elif consumer is None:
            cons = None
        else:
            cons = _module(model, consumer, "consumer")[1]
        active, seen, losses, mean = _capture(
            model, module, prod, inputs, targets, loss_fn, dim, eps, batch_size, run
        )
        fired = (active > 0) & (active >= floor * seen)
        dead = (~fired).nonzero().flatten()
        if len(dead):
            directions = _directions(
                model, prod, inputs, losses, mean, len(dead), init, batch_size, run
            )
    finally:
        model.train(was_training)
    if len(dead):
        reinit(prod, cons, fired, dead, directions, init, scale, optimizer)
        if rate is not None:
            model.eval()
            try:
                set_rate(model, prod, inputs, dead, dim, rate, batch_size, run)
            finally:
                model.train(was_training)
    return dead
