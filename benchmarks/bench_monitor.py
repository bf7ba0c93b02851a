"""Overhead of actreg.Monitor on a training step.

Usage:
    python benchmarks/bench_monitor.py [--reps 15] [--steps 20] [--threads N] [--clock cpu]

An MLP 784-1024-1024-10 (batch 128, Adam, cross-entropy) with an L1 penalty attached to
both hidden ReLUs through actreg.attach, trained with and without a Monitor on both
hidden ReLUs. The two variants are two copies of one model, timed in alternating blocks
of steps in one process (the order flips every repetition), so machine noise hits both
alike. Reports the median of the per-repetition time ratios (with / without) and their
spread. Goal: at most 1.05x. The Monitor runs its default path (the C++ kernel where it
builds, else the PyTorch sweep; ``ACTREG_EXTENSION`` decides), built before timing.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections import OrderedDict

import torch
from torch import nn

import actreg
from actreg import _monitor_kernels

# Defaults: one comment per setting.
REPS = 15  # repetitions; each times one block of each variant
STEPS = 20  # training steps per block
WARMUP = 10  # untimed steps per variant before timing
BATCH = 128  # examples per step
SEED = 0  # fixed seed for weights and data


def make_model() -> nn.Module:
    """The benchmark MLP; hidden ReLUs are named ``act1`` and ``act2``."""
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(784, 1024),
            act1=nn.ReLU(),
            fc2=nn.Linear(1024, 1024),
            act2=nn.ReLU(),
            out=nn.Linear(1024, 10),
        )
    )


class Variant:
    """One model with its optimizer, penalty and optional Monitor."""

    def __init__(self, model: nn.Module, monitor: bool) -> None:
        self.model = model
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        self.reg = actreg.attach(model, {"act1": actreg.L1(1e-5), "act2": actreg.L1(1e-5)})
        self.monitor = actreg.Monitor(model, ["act1", "act2"]) if monitor else None

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        loss = nn.functional.cross_entropy(self.model(x), y) + self.reg.penalty()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def block(self, x: torch.Tensor, y: torch.Tensor, steps: int, clock: str) -> float:
        timer = time.process_time if clock == "cpu" else time.perf_counter
        start = timer()
        for _ in range(steps):
            self.step(x, y)
        return timer() - start


def time_in_hooks(
    variant: Variant, x: torch.Tensor, y: torch.Tensor, steps: int, clock: str
) -> float:
    """Share of the step time spent inside the Monitor's hooks (they are timed one by one)."""
    monitor = variant.monitor
    assert monitor is not None
    timer = time.process_time if clock == "cpu" else time.perf_counter
    spent = [0.0]
    update = monitor._update

    def timed(name: str, value: torch.Tensor, dim: int) -> None:
        start = timer()
        update(name, value, dim)
        spent[0] += timer() - start

    monitor._update = timed  # type: ignore[method-assign]
    try:
        total = variant.block(x, y, steps, clock)
    finally:
        del monitor._update
    return spent[0] / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=REPS)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or process CPU time (steadier on a shared machine with --threads 1)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    # the default path, decided (and built if needed) now rather than during the timing
    kernel = "C++ kernel" if _monitor_kernels.backend().load() is not None else "PyTorch sweep"
    base = make_model()
    plain, watched = Variant(copy.deepcopy(base), False), Variant(copy.deepcopy(base), True)
    x, y = torch.randn(BATCH, 784), torch.randint(0, 10, (BATCH,))
    for variant in (plain, watched):
        variant.block(x, y, WARMUP, args.clock)
    ratios, per_step = [], {"without": [], "with": []}
    for rep in range(args.reps):
        order = (plain, watched) if rep % 2 == 0 else (watched, plain)
        times = {id(v): v.block(x, y, args.steps, args.clock) for v in order}
        t_plain, t_watched = times[id(plain)], times[id(watched)]
        ratios.append(t_watched / t_plain)
        per_step["without"].append(t_plain / args.steps * 1e3)
        per_step["with"].append(t_watched / args.steps * 1e3)
    assert watched.monitor is not None
    hook_share = time_in_hooks(watched, x, y, args.steps * 4, args.clock)
    stats = watched.monitor.compute()
    q = statistics.quantiles(ratios, n=4)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, "
        f"{args.clock} clock, Monitor on the {kernel} (the default path)"
    )
    for name, values in per_step.items():
        print(f"step time {name:>7} Monitor: median {statistics.median(values):.2f} ms")
    print(
        f"Monitor overhead: median ratio {statistics.median(ratios):.3f}x "
        f"(IQR {q[0]:.3f}-{q[2]:.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}, "
        f"{args.reps} reps x {args.steps} steps)"
    )
    print(f"time inside the Monitor hooks: {hook_share:.1%} of a step (direct measurement)")
    for layer, values in stats.items():
        print(f"  {layer}: zero_fraction {values['zero_fraction']:.3f}, l0 {values['l0']:.1f}")


if __name__ == "__main__":
    main()
