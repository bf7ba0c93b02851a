"""Target-sparsity controllers compared on a 3x1000 ReLU MLP (writes docs/TARGET.md's table).

Usage:
    python benchmarks/bench_target.py run [--data mnist digits] [--methods ...] [--targets 0.9 0.95]
        [--seeds 0 1 2] [--grid 3e-4 1e-3 3e-3 1e-2] [--results FILE]
    python benchmarks/bench_target.py table [--results FILE]

``run`` trains one model per (data, method, target, seed) that is not yet in the results file
(JSON lines, appended after each run, so an interrupted comparison resumes) and ``table``
prints the comparison: per hidden layer the test zero fraction and the dead units (never
active on the test set), and the test error, as mean +- std over seeds.

Setup (as issue 15): ``actreg.lab.models.mlp(d, [1000, 1000, 1000], 10)``, Adam 1e-3 with a
cosine decay to 0, batch 128, one torch thread; the controller wraps ``L1(1e-3)`` on each
hidden ReLU. MNIST: the first 10,000 training images, the 10,000 test images held out,
3 epochs (237 steps). Digits (scikit-learn 8x8, the transfer set): its 1,078 training
images, the fixed 360 test images, batch 32 and 8 epochs (272 steps: a controller works
per step, so the step count is kept close to MNIST's). Any other ``--data`` (an IDX folder,
e.g. Fashion-MNIST from ``scripts/fashion_idx.py``) runs with MNIST's setup. Methods:

* ``plain``: no penalty.  ``l1=C``: a fixed ``L1(C)`` on each layer (the grid, ``grid``);
  ``l1=A/B/C``: one fixed coefficient per layer (the per-layer grid).
* ``default``: ``actreg.TargetSparsity(L1(1e-3), target)`` as the library ships it: per-unit
  gradient weights from each unit's firing rate (push down above the wanted rate, up below
  half of it), a ramp of the wanted sparsity from the measured one, a 50-step fade-in.
* ``global``: the previous default (a): one log-coefficient per layer, dual ascent on the
  layer's zero fraction; ``TargetSparsity(..., per_unit=False, ramp=0, warmup=0)``.
* ``ramp`` (c), ``ramp+warm``, ``push``: the default with parts switched off.
* ``default+revive``: the default plus :class:`actreg.Reviver` (5 revivals of dead units
  over the first 70% of training, on 5,000 training inputs, revived units firing on the
  target's active share of them), as the lab's target mode runs. Options after
  ``+revive``, joined by ``:``: ``bias0`` (revived units at bias 0: about half fire),
  ``v0`` (their Adam second moment zeroed instead of the live rows' mean), ``resample``
  (``init="resample"``), ``ramp60`` (the wanted sparsity ramps over 60% of the steps,
  as the lab's target mode does since commit 4500aba: ``target_ramp``), ``floor`` (units
  firing on less than ``REVIVE_FLOOR`` x the target's active share of the sample are
  revived too, as the lab's target mode does since this option was added);
  ``default+revive:bias0:v0`` is the revival before issue 15's digits fix.
* ``unit`` (b, :class:`UnitDual`): one dual variable per unit, driven by the unit's running
  firing rate toward ``1 - target``; ``gate+ramp+warm`` (:class:`RateGate`): as the default
  but units below half the wanted rate get no penalty instead of a push up.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import actreg
from actreg.control import _UnitGrad  # the same per-unit gradient scaling as the library
from actreg.lab.data import load_vision
from actreg.lab.experiments._common import (
    REVIVE_EXAMPLES,
    REVIVE_UNTIL,
    revive_floor,
    target_ramp,
)
from actreg.lab.models import mlp

RESULTS = Path(__file__).parent / "results" / "target.jsonl"  # one JSON line per run
LAYERS = ("act1", "act2", "act3")  # the penalized hidden ReLUs
BASE = 1e-3  # the wrapped L1's starting coefficient (as issue 15)
LR = 1e-3  # Adam's peak learning rate, cosine decay to 0
SETUP = {  # data -> (training images, batch, epochs)
    "mnist": (10_000, 128, 3),
    "digits": (None, 32, 8),
}
RAMP = 0.02  # candidates with +ramp: nats per step of the target ramp (as the library's)
WARM = 50  # candidates with +warm: the penalty fades in over this many steps (as the library's)
GRID = (3e-4, 1e-3, 3e-3, 1e-2)  # fixed L1 coefficients for the grid-searched baseline


class _Candidate(actreg.Penalty):
    """Candidates not in the library: a global loop as TargetSparsity's, per-unit rates.

    With ``ramp`` (nats per step) the wanted active share starts at the first batch's and
    comes down to ``1 - target``; with ``warm`` the penalty fades in over that many steps.
    """

    def __init__(
        self,
        penalty: actreg.Penalty,
        target: float,
        rate: float = 0.05,
        ramp: float = 0.0,
        warm: int = 0,
    ) -> None:
        self.penalty, self.target, self.rate, self.ramp, self.warm = (
            penalty,
            target,
            rate,
            ramp,
            warm,
        )
        self.wanted = 1.0 - target
        self.log_scale = torch.zeros(())
        self.unit_rate: Tensor | None = None  # running firing rate per unit
        self.batch_rate: Tensor | None = None  # this batch's firing rate per unit
        self.start: float | None = None
        self.steps = 0

    @property
    def coef(self) -> float:
        return BASE * float(self.log_scale.exp())

    def weights(self) -> Tensor | None:
        return None

    def wanted_now(self, active: Tensor) -> float:
        if not self.ramp:
            return self.wanted
        if self.start is None:
            self.start = max(float(active), self.wanted)  # one sync, first step only
        return max(self.wanted, self.start * math.exp(-self.ramp * self.steps))

    def forward(self, x: Tensor) -> Tensor:
        training = torch.is_grad_enabled() and x.requires_grad
        if training:
            with torch.no_grad():
                self.batch_rate = (x.detach() != 0).float().flatten(0, -2).mean(0)
                if self.unit_rate is None:
                    self.unit_rate = self.batch_rate.clone()
                else:
                    self.unit_rate.mul_(0.9).add_(self.batch_rate, alpha=0.1)
        w = self.weights()
        y = x if w is None else _UnitGrad.apply(x, w)
        value = self.penalty.forward(y) * self.log_scale.exp()
        if self.warm:
            value = value * min(1.0, (self.steps + 1) / self.warm)
        if training:
            with torch.no_grad():
                assert self.batch_rate is not None
                self.update(self.batch_rate)
            self.steps += 1
        return value

    def update(self, rates: Tensor) -> None:
        active = rates.mean()
        error = torch.log((active + 1e-6) / self.wanted_now(active)).clamp(-1, 1)
        self.log_scale = (self.log_scale + self.rate * error).clamp(-23.0, 16.0)


class UnitDual(_Candidate):
    """Candidate b: one log-coefficient per unit, driven by its running rate to 1 - target."""

    unit_log: Tensor

    def weights(self) -> Tensor | None:
        return None if self.steps == 0 else self.unit_log.exp()

    def update(self, rates: Tensor) -> None:
        if self.steps == 0:
            self.unit_log = torch.zeros_like(rates)
        assert self.unit_rate is not None
        wanted = self.wanted_now(rates.mean())
        error = torch.log((self.unit_rate + 1e-6) / wanted).clamp(-1, 1)
        self.unit_log = (self.unit_log + self.rate * error).clamp(-23.0, 16.0)


class RateGate(_Candidate):
    """The global loop; a unit's gradient gated by its rate in this batch, never negative.

    Weight 0 at or below half the wanted rate, 1 at or above it, linear in between (the
    library's default also pushes units below half the wanted rate back up).
    """

    def weights(self) -> Tensor | None:
        if self.batch_rate is None:
            return None
        return (2 * self.batch_rate / self.wanted - 1).clamp(0.0, 1.0)


def make_penalty(method: str, target: float, layer: int) -> Any:
    """The penalty of hidden layer ``layer`` (0, 1, 2) for ``method`` (None: no penalty)."""
    if method == "plain":
        return None
    if method.startswith("l1="):  # one coefficient, or one per layer: l1=1e-4/3e-3/1e-2
        coefs = method[3:].split("/")
        return actreg.L1(float(coefs[layer if len(coefs) > 1 else 0]))
    library = {  # TargetSparsity's parts switched off one by one
        "default": {},
        "push": {"ramp": 0.0, "warmup": 0},
        "ramp+warm": {"per_unit": False},
        "ramp": {"per_unit": False, "warmup": 0},
        "global": {"per_unit": False, "ramp": 0.0, "warmup": 0},  # the previous default
    }
    method = method.split("+revive")[0]
    if method in library:
        return actreg.TargetSparsity(actreg.L1(BASE), target=target, **library[method])
    name = method.split("+")[0]
    kinds = {"unit": UnitDual, "gate": RateGate}
    ramp = RAMP if "+ramp" in method else 0.0
    return kinds[name](actreg.L1(BASE), target, ramp=ramp, warm=WARM if "+warm" in method else 0)


_DATA: dict[str, Any] = {}


def _setup(name: str) -> tuple[int | None, int, int]:
    """(training images, batch, epochs): any other IDX folder gets MNIST's setup."""
    return SETUP.get(name, SETUP["mnist"])


def data(name: str) -> Any:
    if name not in _DATA:
        d = load_vision(name, seed=0)
        n = _setup(name)[0]
        if n is not None:
            d.x_train, d.y_train = d.x_train[:n], d.y_train[:n]
        _DATA[name] = d
    return _DATA[name]


def _zero_second_moments(
    opt: torch.optim.Optimizer, model: Any, revived: dict[str, Tensor]
) -> None:
    """``+revive:v0``: the revived rows' Adam second moment zeroed (``revive`` before issue
    15's digits fix; it now takes the live rows' mean)."""
    modules = dict(model.named_modules())
    for layer, dead in revived.items():
        fc = modules["fc" + layer.removeprefix("act")]
        for param in (fc.weight, fc.bias):
            opt.state[param]["exp_avg_sq"][dead] = 0.0


def run_one(name: str, method: str, target: float, seed: int) -> dict[str, Any]:
    """Train one model and measure it on the test split."""
    d = data(name)
    _, batch, epochs = _setup(name)
    torch.manual_seed(seed)
    model = mlp(d.x_train.shape[1], [1000, 1000, 1000], d.n_classes)
    penalties = {layer: make_penalty(method, target, i) for i, layer in enumerate(LAYERS)}
    reg = actreg.attach(model, penalties) if penalties["act1"] is not None else None
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    n = len(d.x_train)
    total = epochs * math.ceil(n / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    reviver = None
    options = method.split("+revive")[1].split(":")[1:] if "+revive" in method else []
    if "ramp60" in options:  # the lab's ramp (actreg/lab/experiments/_common.py)
        for p in penalties.values():
            if isinstance(p, actreg.TargetSparsity):
                p.ramp = target_ramp(target, total)
    if "+revive" in method:
        until = int(REVIVE_UNTIL * total)
        sample = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:REVIVE_EXAMPLES]
        reviver = actreg.Reviver(
            model,
            list(LAYERS),
            d.x_train[sample],
            every=until // 5,
            until=until,
            optimizer=opt,
            init="resample" if "resample" in options else "fresh",
            rate=None if "bias0" in options else 1.0 - target,  # as make_reviver
            floor=revive_floor(1.0 - target) if "floor" in options else 0.0,  # as make_reviver
        )
    gen = torch.Generator().manual_seed(seed)
    start = time.process_time()
    step = 0
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=gen).split(batch):
            loss = torch.nn.functional.cross_entropy(model(d.x_train[idx]), d.y_train[idx])
            if reg is not None:
                loss = loss + reg.penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if reviver is not None:
                revived = reviver(step)
                if revived and "v0" in options:
                    with torch.no_grad():
                        _zero_second_moments(opt, model, revived)
    seconds = time.process_time() - start
    if reg is not None:
        reg.remove()
    with actreg.Monitor(model, list(LAYERS)) as mon, torch.no_grad():
        error = float((model(d.x_test).argmax(1) != d.y_test).float().mean())
        stats = mon.compute()
    coefs = [getattr(p, "coef", None) for p in penalties.values()] if reg else []
    return {
        "data": name,
        "method": method,
        "target": target if not (method == "plain" or method.startswith("l1=")) else None,
        "seed": seed,
        "zero": [stats[k]["zero_fraction"] for k in LAYERS],
        "dead": [stats[k]["dead_fraction"] for k in LAYERS],
        "error": error,
        "coef": [float(c) for c in coefs if c is not None],
        "cpu_s": round(seconds, 1),
    }


def load(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cmd_run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    done = {(r["data"], r["method"], r["target"], r["seed"]) for r in load(args.results)}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, str, float | None]] = []
    for name in args.data:
        for method in args.methods:
            if method == "grid":
                jobs += [(name, f"l1={c:g}", None) for c in args.grid]
            elif method.startswith("l1="):
                jobs.append((name, method, None))
            elif method == "plain":
                jobs.append((name, method, None))
            else:
                jobs += [(name, method, t) for t in args.targets]
    for name, method, target in jobs:
        for seed in args.seeds:
            if (name, method, target, seed) in done:
                continue
            row = run_one(name, method, target if target is not None else 0.0, seed)
            with args.results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(
                f"{name} {method} {target} seed {seed}: zero "
                + " ".join(f"{z:.3f}" for z in row["zero"])
                + " dead "
                + " ".join(f"{z:.3f}" for z in row["dead"])
                + f" err {row['error']:.4f} ({row['cpu_s']}s)",
                flush=True,
            )


def _ms(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    m = statistics.mean(values) * scale
    s = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def cmd_table(args: argparse.Namespace) -> None:
    rows = load(args.results)
    groups: dict[tuple[str, str, float | None], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["data"], r["method"], r["target"]), []).append(r)
    print(
        "| data | method | target | seeds | zero act1 / act2 / act3 "
        "| dead % act1 / act2 / act3 | test error % |"
    )
    print("|" + "---|" * 7)
    for (name, method, target), rs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][2] or 0, kv[0][1])
    ):
        zero = " / ".join(_ms([r["zero"][i] for r in rs]) for i in range(3))
        dead = " / ".join(_ms([r["dead"][i] for r in rs], 100, 1) for i in range(3))
        err = _ms([r["error"] for r in rs], 100, 2)
        t = "-" if target is None else f"{target:g}"
        print(f"| {name} | {method} | {t} | {len(rs)} | {zero} | {dead} | {err} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument(
        "--data",
        nargs="+",
        default=["mnist", "digits"],
        help="mnist, digits, or an IDX folder (a path or a folder under the data directory; "
        "MNIST's setup)",
    )
    run.add_argument("--methods", nargs="+", default=["plain", "grid", "default"])
    run.add_argument("--targets", nargs="+", type=float, default=[0.9, 0.95])
    run.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    run.add_argument("--grid", nargs="+", type=float, default=list(GRID))
    table = sub.add_parser("table")
    for p in (run, table):
        p.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    {"run": cmd_run, "table": cmd_table}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
