"""Shared helpers of the benchmarks: interleaved timing, summaries, markdown tables.

Every timed comparison here runs its variants in one process, in alternating blocks of
steps (the order rotates and flips every repetition), so load from other processes on a
shared machine hits every variant alike. Each block is timed on two clocks: wall time
(``time.perf_counter``) and CPU time of the process (``time.process_time``); with
``torch.set_num_threads(1)`` the CPU clock excludes time the process spent waiting for a
core, so it is the steadier of the two on a loaded machine. Ratios are taken per
repetition (variant / baseline, same repetition) and summarized by their median and
interquartile range.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

__all__ = [
    "Timing",
    "interleave",
    "machine_line",
    "md_table",
    "quartiles",
    "ratio_cell",
    "setup_threads",
]

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def setup_threads(threads: int = 1) -> None:
    """Fix torch's intra-op threads (1 by default: steadier figures on a shared machine)."""
    torch.set_num_threads(threads)


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile) of ``values``."""
    if len(values) < 2:
        v = float(values[0])
        return v, v, v
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


@dataclass
class Timing:
    """Per-repetition seconds per step of each variant, on each clock."""

    names: list[str]
    steps: int
    reps: int
    per_step: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def ms(self, name: str, clock: str = "cpu") -> tuple[float, float, float]:
        """Quartiles of the milliseconds per step of ``name``."""
        return quartiles([t * 1e3 for t in self.per_step[clock][name]])

    def ratios(self, name: str, base: str, clock: str = "cpu") -> list[float]:
        """Per-repetition ratios ``name / base`` (same repetition, so the same load)."""
        pairs = zip(self.per_step[clock][name], self.per_step[clock][base], strict=True)
        return [a / b for a, b in pairs]

    def ratio(self, name: str, base: str, clock: str = "cpu") -> tuple[float, float, float]:
        """Quartiles of the per-repetition ratios ``name / base``."""
        return quartiles(self.ratios(name, base, clock))


def interleave(
    variants: dict[str, Callable[[], object]],
    *,
    reps: int,
    steps: int,
    warmup: int = 5,
) -> Timing:
    """Time ``variants`` (name -> one training step) in interleaved blocks of ``steps``.

    Every variant first runs ``warmup`` untimed steps. Then, ``reps`` times, each variant
    runs one block of ``steps`` steps; the order rotates by one and reverses every other
    repetition, so no variant always runs first or after the same neighbour.
    """
    names = list(variants)
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    timing = Timing(names, steps, reps, {c: {n: [] for n in names} for c in CLOCKS})
    for rep in range(reps):
        shift = rep % len(names)
        order = names[shift:] + names[:shift]
        if rep % 2:
            order.reverse()
        for name in order:
            fn = variants[name]
            gc.collect()
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps):
                fn()
            c1, w1 = time.process_time(), time.perf_counter()
            timing.per_step["wall"][name].append((w1 - w0) / steps)
            timing.per_step["cpu"][name].append((c1 - c0) / steps)
    return timing


def ratio_cell(q: tuple[float, float, float], goal: float | None = None) -> str:
    """``1.004x (0.99-1.01)``, with a verdict when a goal is given (median <= goal)."""
    text = f"{q[1]:.3f}x ({q[0]:.3f}-{q[2]:.3f})"
    if goal is not None:
        text += " met" if q[1] <= goal else " **not met**"
    return text


def ms_cell(q: tuple[float, float, float]) -> str:
    """``3.21 (3.10-3.40)`` milliseconds."""
    return f"{q[1]:.3f} ({q[0]:.3f}-{q[2]:.3f})"


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line() -> str:
    """Where the figures come from: CPU, cores, load, Python, torch, threads."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        load = "n/a"
    return (
        f"{cpu}, {os.cpu_count()} cores (load average {load} at the start), "
        f"Python {sys.version.split()[0]}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread(s)"
    )
