"""Training-step time: ``actreg.attach`` against the same penalty written by hand.

Usage:
    python benchmarks/bench_step.py [--model mlp cnn lstm] [--reps 15] [--steps 10] [--quick]
        [--json PATH]

For each model, four variants of one training step (forward, loss, backward, Adam), all
copies of the same initial weights, timed interleaved in one process (see ``_common``):

* ``none``: no penalty (what the penalty costs at all);
* ``hand``: the penalty written by hand in the forward, as cheaply as it can be written
  (``h.abs().sum() * (coef / batch)``): the limit;
* ``attach``: the same penalty through ``actreg.attach`` and ``reg.penalty()``;
* ``attach+Monitor``: the same, plus an ``actreg.Monitor`` on the penalized layers, as a
  user gets it: the C++ kernel where it builds (built before timing), else the PyTorch
  sweep (``ACTREG_EXTENSION`` decides);
* ``attach+Monitor (PyTorch)``: the same Monitor forced onto the PyTorch sweep
  (``metrics.batch_stats``), for comparison; left out where the default is that sweep.

Models: MLP 784-1024-1024-10 (batch 128, L1 1e-5 on both hidden ReLUs); CNN
``actreg.lab.models.CNN`` on 1x28x28 (batch 64, L1 on both conv ReLUs and the hidden ReLU);
a 2-layer LSTM language model, time-first (35 steps x batch 20, vocabulary 2000, 200
units), with AR (alpha 2, mean, on the output dropout) and TAR (beta 1, mean, on the LSTM
output before dropout), as in AWD-LSTM. Goals: attach / hand <= 1.02x, Monitor <= 1.05x.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import interleave, machine_line, md_table, ms_cell, ratio_cell
from bench_monitor import make_model as make_mlp

import actreg
from actreg import _monitor_kernels
from actreg._cpp import Backend
from actreg.lab.models import CNN

# Defaults: one comment per setting.
REPS = 15  # repetitions (each times one block of every variant)
STEPS = 10  # training steps per block
WARMUP = 5  # untimed steps per variant first
SEED = 0  # weights and data
L1 = 1e-5  # L1 coefficient (MLP, CNN)
ALPHA, BETA = 2.0, 1.0  # AR and TAR coefficients (AWD-LSTM defaults)
GOAL_ATTACH = 1.02  # attach / hand
GOAL_MONITOR = 1.05  # (attach + Monitor) / attach


class LSTMLM(nn.Module):
    """Embedding, 2-layer LSTM (``rnn``), output dropout (``drop``), decoder; time-first."""

    def __init__(self, vocab: int = 2000, size: int = 200) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, size)
        self.rnn = nn.LSTM(size, size, num_layers=2)
        self.drop = nn.Dropout(0.4)
        self.dec = nn.Linear(size, vocab)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(self.emb(x))
        return self.dec(self.drop(out))


def _l1(h: Tensor) -> Tensor:
    return h.abs().sum() * (L1 / h.shape[0])


def _hand_mlp(m: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    h1 = m.act1(m.fc1(x))
    h2 = m.act2(m.fc2(h1))
    return m.out(h2), _l1(h1) + _l1(h2)


def _hand_cnn(m: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    f, c = m.features, m.classifier
    a1 = f.act1(f.conv1(x))
    a2 = f.act2(f.conv2(f.pool1(a1)))
    h = c.act(c.fc(c.flatten(f.pool2(a2))))
    return c.out(h), _l1(a1) + _l1(a2) + _l1(h)


def _hand_lstm(m: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    raw, _ = m.rnn(m.emb(x))
    dropped = m.drop(raw)
    ar = ALPHA * dropped.square().mean()
    tar = BETA * (raw[1:] - raw[:-1]).square().mean()
    return m.dec(dropped), ar + tar


class Case:
    """A model, its data, its attach spec, its hand-written forward and Monitor layers."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        data: tuple[Tensor, Tensor],
        spec: dict[str, actreg.Penalty],
        hand: Callable[[nn.Module, Tensor], tuple[Tensor, Tensor]],
        monitor: dict[str, int],
        loss: Callable[[Tensor, Tensor], Tensor],
        describe: str,
    ) -> None:
        self.name, self.model, self.data, self.spec = name, model, data, spec
        self.hand, self.monitor, self.loss, self.describe = hand, monitor, loss, describe


def _lm_loss(logits: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def make_case(name: str) -> Case:
    """The model, data and penalty of one benchmark case."""
    torch.manual_seed(SEED)
    ce = nn.functional.cross_entropy
    if name == "mlp":
        data = torch.randn(128, 784), torch.randint(0, 10, (128,))
        spec = {"act1": actreg.L1(L1), "act2": actreg.L1(L1)}
        return Case(
            name,
            make_mlp(),
            data,
            spec,
            _hand_mlp,
            {"act1": -1, "act2": -1},
            ce,
            "MLP 784-1024-1024-10, batch 128, L1 on 2 hidden ReLUs",
        )
    if name == "cnn":
        data = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
        layers = ["features.act1", "features.act2", "classifier.act"]
        return Case(
            name,
            CNN(1, 10, (28, 28)),
            data,
            {k: actreg.L1(L1) for k in layers},
            _hand_cnn,
            {"features.act1": 1, "features.act2": 1, "classifier.act": -1},
            ce,
            "CNN 2 conv (32, 64) + 128 hidden, 1x28x28, batch 64, L1 on 3 ReLUs",
        )
    if name == "lstm":
        tokens = torch.randint(0, 2000, (36, 20))
        return Case(
            name,
            LSTMLM(),
            (tokens[:-1], tokens[1:]),
            {"drop": actreg.AR(ALPHA), "rnn": actreg.TAR(BETA, time_dim=0)},
            _hand_lstm,
            {"rnn": -1},
            _lm_loss,
            "LSTM LM 2x200, vocab 2000, 35 steps x batch 20, AR + TAR",
        )
    raise SystemExit(f"unknown model {name!r}")


KINDS = ("none", "hand", "attach", "attach+Monitor")
TORCH = "attach+Monitor (PyTorch)"  # the Monitor forced onto the PyTorch sweep
_OFF = Backend("actreg_monitor", "monitor.cpp", "the C++ Monitor kernel", mode="off")


def default_is_cpp() -> bool:
    """Whether a Monitor's default path is the C++ kernel here (decided, and built if
    needed, now: no step is timed while it builds in the background)."""
    return _monitor_kernels.backend().load() is not None


def all_kinds() -> tuple[str, ...]:
    """:data:`KINDS`, plus :data:`TORCH` where the default Monitor path is the C++ kernel."""
    return (*KINDS, TORCH) if default_is_cpp() else KINDS


def variants(
    case: Case, only: str | None = None, kinds: tuple[str, ...] = KINDS
) -> dict[str, Callable[[], object]]:
    """One training step per variant of ``kinds`` (or only ``only``), each on its own copy
    of the weights."""
    x, y = case.data
    out: dict[str, Callable[[], object]] = {}

    def make(kind: str) -> Callable[[], object]:
        model = copy.deepcopy(case.model)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        reg = actreg.attach(model, case.spec) if kind.startswith("attach") else None
        if kind.startswith("attach+Monitor"):
            mon = actreg.Monitor(model, list(case.monitor), dim=case.monitor)
            if kind == TORCH:
                mon.kernels = _OFF
            else:
                default_is_cpp()  # decided before timing
            model._bench_monitor = mon  # type: ignore[assignment]  # keep it alive

        def step() -> None:
            if kind == "hand":
                logits, pen = case.hand(model, x)
                loss = case.loss(logits, y) + pen
            elif reg is not None:
                loss = case.loss(model(x), y) + reg.penalty()
            else:
                loss = case.loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    for kind in kinds if only is None else (only,):
        out[kind] = make(kind)
    return out


def check_same_penalty(case: Case) -> float:
    """|hand - attach| / |hand| of the penalty on the same weights and input (train mode)."""
    model = copy.deepcopy(case.model)
    model.eval()  # no dropout, so both see the same activations
    x = case.data[0]
    with torch.no_grad():
        _, hand = case.hand(model, x)
    reg = actreg.attach(model, case.spec, when="always")
    with torch.no_grad():
        model(x)
    got = reg.penalty()
    reg.remove()
    return float((got - hand).abs() / hand.abs().clamp_min(1e-30))


def hook_cost(reps: int = 15, calls: int = 2000) -> dict[str, float]:
    """Microseconds per forward call of a tiny ReLU (8 x 16, grad on) with its L1 penalty.

    ``inline``: ``pen(relu(x))``, the same actreg penalty object called by hand;
    ``attach``: ``relu(x); reg.penalty()``: the hook path and ``Regularizer.penalty``;
    ``hand``: ``relu(x).abs().sum() * (c / batch)``, the cheapest hand-written formula.
    At this size fixed per-call costs are all there is, so differences are overheads.
    """
    x = torch.randn(8, 16, requires_grad=True)
    pen = actreg.L1(1e-3)
    plain, hooked = nn.ReLU(), nn.ReLU()
    reg = actreg.attach(hooked, {"": pen})

    def attach_call() -> None:
        hooked(x)
        reg.penalty()

    fns = {
        "relu": lambda: plain(x),
        "hand": lambda: plain(x).abs().sum() * (1e-3 / x.shape[0]),
        "inline": lambda: pen(plain(x)),
        "attach": attach_call,
    }

    def block(fn: Callable[[], object]) -> Callable[[], object]:
        def run_block() -> None:
            for _ in range(calls):
                fn()

        return run_block

    timing = interleave({k: block(f) for k, f in fns.items()}, reps=reps, steps=1, warmup=1)
    return {k: timing.ms(k)[1] * 1e3 / calls for k in fns}


def page_faults(name: str, steps: int = 10) -> dict[str, float]:
    """Minor page faults per training step of each variant of model ``name``.

    Each fault is a page of freshly mapped memory touched for the first time (zeroed by
    the kernel): the allocator handing back and re-mapping big temporaries. Counted from
    ``getrusage`` over ``steps`` steps per variant, after ``WARMUP`` untimed steps.
    """
    import resource

    out = {}
    for kind, step in variants(make_case(name), kinds=all_kinds()).items():
        for _ in range(WARMUP):
            step()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(steps):
            step()
        out[kind] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps
    return out


def monitor_hook_time(
    name: str, steps: int = 40, kind: str = "attach+Monitor"
) -> dict[str, object]:
    """Milliseconds per step spent inside the Monitor's hook of each watched layer.

    The ``kind`` step (``attach+Monitor`` or :data:`TORCH`) of model ``name``, with
    ``Monitor._update`` timed call by call on the CPU clock (after ``WARMUP`` untimed
    steps). Returns the markdown table (layer, output shape, ms per step, share of the
    step) and the total.
    """
    case = make_case(name)
    step = variants(case, kind)[kind]
    mon = actreg.Monitor  # the class: every instance's hook goes through _update
    spent: dict[str, float] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    update = mon._update

    def timed(self: actreg.Monitor, layer: str, x: Tensor, dim: int) -> None:
        start = time.process_time()
        update(self, layer, x, dim)
        spent[layer] = spent.get(layer, 0.0) + time.process_time() - start
        shapes[layer] = tuple(x.shape)

    mon._update = timed  # type: ignore[method-assign]
    try:
        for _ in range(WARMUP):
            step()
        spent.clear()
        start = time.process_time()
        for _ in range(steps):
            step()
        total = (time.process_time() - start) / steps * 1e3
    finally:
        mon._update = update  # type: ignore[method-assign]
    rows = [
        [
            f"`{layer}`",
            " x ".join(map(str, shapes[layer])),
            f"{t / steps * 1e3:.3f}",
            f"{t / steps * 1e3 / total:.1%}",
        ]
        for layer, t in spent.items()
    ]
    hooks = sum(spent.values()) / steps * 1e3
    rows.append(["all", "", f"{hooks:.3f}", f"{hooks / total:.1%}"])
    table = md_table(["layer", "output", "ms per step in the hook", "share of the step"], rows)
    return {"table": table, "hooks_ms": hooks, "step_ms": total, "steps": steps}


def run(models: list[str], reps: int, steps: int, warmup: int = WARMUP) -> dict[str, object]:
    """Time every model; returns the markdown table and the raw figures."""
    rows, figures = [], {}
    kinds = all_kinds()
    for name in models:
        case = make_case(name)
        rel = check_same_penalty(case)
        timing = interleave(variants(case, kinds=kinds), reps=reps, steps=steps, warmup=warmup)
        att = timing.ratio("attach", "hand")
        mon = timing.ratio("attach+Monitor", "attach")
        torch_mon = timing.ratio(TORCH, "attach") if TORCH in kinds else None
        figures[name] = {
            "attach/hand": att,
            "monitor": mon,
            "monitor_torch": torch_mon,
            "timing": timing,
            "rel": rel,
        }
        same = "(the default)"
        rows.append(
            [
                case.describe,
                ms_cell(timing.ms("none")),
                ms_cell(timing.ms("hand")),
                ms_cell(timing.ms("attach")),
                ratio_cell(att, GOAL_ATTACH),
                ratio_cell(timing.ratio("attach", "hand", "wall")),
                ratio_cell(mon, GOAL_MONITOR),
                ratio_cell(timing.ratio("attach+Monitor", "attach", "wall")),
                same if torch_mon is None else ratio_cell(torch_mon, GOAL_MONITOR),
                same if torch_mon is None else ratio_cell(timing.ratio(TORCH, "attach", "wall")),
                f"{rel:.1e}",
            ]
        )
    header = [
        "model",
        "none ms",
        "hand ms",
        "attach ms",
        "attach / hand (CPU)",
        "attach / hand (wall)",
        "+Monitor / attach (CPU)",
        "+Monitor / attach (wall)",
        "+Monitor (PyTorch) / attach (CPU)",
        "+Monitor (PyTorch) / attach (wall)",
        "penalty rel. diff",
    ]
    table = md_table(header, rows)
    return {"table": table, "figures": figures, "reps": reps, "steps": steps}


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["mlp", "cnn", "lstm"])
    parser.add_argument("--reps", type=int, default=REPS)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="5 reps x 3 steps")
    parser.add_argument("--json", help="also write the table and the ratios to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    reps, steps = (5, 3) if args.quick else (args.reps, args.steps)
    result = run(args.model, reps, steps)
    print(machine_line())
    print(f"Monitor default path: {'C++ kernel' if default_is_cpp() else 'PyTorch sweep'}")
    print(f"{reps} reps x {steps} steps per variant; ms per step on the CPU clock, median (IQR)")
    print(result["table"])
    if args.json:
        figures = result["figures"]
        assert isinstance(figures, dict)
        ratios = {
            name: {k: f[k] for k in ("attach/hand", "monitor", "monitor_torch")}
            for name, f in figures.items()
        }
        faults = {name: page_faults(name) for name in args.model}
        out = {
            "table": result["table"],
            "ratios": ratios,
            "faults": faults,
            "reps": reps,
            "steps": steps,
        }
        Path(args.json).write_text(json.dumps(out))
    return result


if __name__ == "__main__":
    main()
