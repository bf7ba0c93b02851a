"""Soak test: resident memory of a long training run with actreg.attach and a Monitor.

Usage:
    python benchmarks/bench_soak.py [--steps 10000] [--check-at 500] [--no-monitor]

A small MLP 32-64-64-4 (batch 32, SGD, cross-entropy) with L1 + L2 penalties attached to
both hidden ReLUs and a Monitor on both, logging ``reg.last`` and reading
``monitor.compute()`` every 100 steps (resetting it every 1000). Prints the resident set
size (RSS, from /proc/self/statm; ru_maxrss elsewhere) after ``--check-at`` steps and at
the end, and their difference. Goal: no growth beyond allocator noise (well under 1 MiB).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time
from collections import OrderedDict

import torch
from torch import nn

import actreg

# Defaults: one comment per setting.
STEPS = 10_000  # training steps in all
CHECK_AT = 500  # the step after which the baseline RSS is taken
BATCH = 32  # examples per step
SEED = 0  # fixed seed for weights and data


def rss_mib() -> float:
    """The current resident set size in MiB (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--check-at", type=int, default=CHECK_AT)
    parser.add_argument("--no-monitor", action="store_true", help="attach only")
    args = parser.parse_args(argv)
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    model = nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(32, 64),
            act1=nn.ReLU(),
            fc2=nn.Linear(64, 64),
            act2=nn.ReLU(),
            head=nn.Linear(64, 4),
        )
    )
    reg = actreg.attach(model, {"act*": actreg.L1(1e-3) + actreg.L2(1e-4)})
    monitor = None if args.no_monitor else actreg.Monitor(model, "act*")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = torch.randn(64, BATCH, 32), torch.randint(0, 4, (64, BATCH))
    figures: dict[str, float] = {}
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = data[0][step % 64], data[1][step % 64]
        loss = nn.functional.cross_entropy(model(x), y) + reg.penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0:
            _ = reg.last
            if monitor is not None:
                monitor.compute()
        if monitor is not None and step % 1000 == 0:
            monitor.reset()
        if step == args.check_at:
            gc.collect()
            figures["rss_check_mib"] = rss_mib()
    gc.collect()
    figures["rss_end_mib"] = rss_mib()
    figures["growth_kib"] = (figures["rss_end_mib"] - figures["rss_check_mib"]) * 1024
    figures["us_per_step"] = (time.perf_counter() - start) / args.steps * 1e6
    what = "attach" if monitor is None else "attach + Monitor"
    print(f"soak, {what}, torch {torch.__version__}, {args.steps} steps")
    print(f"  RSS after {args.check_at} steps: {figures['rss_check_mib']:.1f} MiB")
    print(f"  RSS after {args.steps} steps: {figures['rss_end_mib']:.1f} MiB")
    print(f"  growth: {figures['growth_kib']:.0f} KiB; {figures['us_per_step']:.0f} us/step")
    return figures


if __name__ == "__main__":
    main()
