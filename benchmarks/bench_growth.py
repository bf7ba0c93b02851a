"""Cost growth: penalty time against activation size, and one-pass (fused) formulas.

Usage:
    python benchmarks/bench_growth.py [--sizes 1e3 1e4 1e5 1e6 1e7 1e8] [--reps 5] [--quick]
        [--compile]

Every formula penalty of ``actreg.penalties.PENALTIES`` (default arguments, ``Log(1e-3)``;
``KLSparsity`` and ``Binary`` on sigmoid values with their default [0, 1] check, which
costs one host sync) on a float32
tensor of shape (n / 1000, 1000), units last, timed forward + backward (the value and the
gradient of the input, what a training step pays), interleaved across penalties and
repetitions. Reported: nanoseconds per element (flat across sizes means linear growth).

Second table, the fusion question: ``L1L2`` (``functional.l1l2``, ``addcmul`` of ``|x|``
and ``x * x``) against ``L1 + L2`` separately and against one-pass reductions that keep
no full-size temporary (``linalg.vector_norm``), forward only and forward + backward.
With ``--compile``, also ``torch.compile`` of ``functional.l1l2`` (inductor fuses it into
one loop). 1e8 elements are 400 MB per float32 tensor (forward + backward holds about
four of them); ``--quick`` stops at 1e7.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line, md_table, quartiles

from actreg import functional as F
from actreg.penalties import PENALTIES

SIZES = [1e3, 1e4, 1e5, 1e6, 1e7, 1e8]  # elements
REPS = 5  # repetitions per (penalty, size)
TARGET_S = 0.02  # each timed sample repeats the call until about this long
UNITS = 1000  # last axis
L1C, L2C = 1e-3, 1e-4  # coefficients of the fusion table
UNIT_INTERVAL = {"kl", "binary"}  # penalties that need values in [0, 1]
ARGS = {"log": (1e-3,)}  # constructor arguments where a penalty has no default


def make_x(n: int, unit: bool) -> Tensor:
    rows = max(1, n // UNITS)
    x = torch.randn(rows, min(n, UNITS))
    return torch.sigmoid(x) if unit else x


def _sample(fn: Callable[[], object], calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls


def time_fns(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, list[float]]:
    """Seconds per call of each fn, interleaved (order rotates every repetition)."""
    names = list(fns)
    calls = {}
    for name, fn in fns.items():
        fn()  # warm-up
        once = max(_sample(fn, 1), 1e-7)
        calls[name] = max(1, min(1000, int(TARGET_S / once)))
    out: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            out[name].append(_sample(fns[name], calls[name]))
    return out


def fwd_bwd(penalty: Callable[[Tensor], Tensor], x: Tensor) -> Callable[[], object]:
    leaf = x.detach().requires_grad_(True)

    def run() -> None:
        leaf.grad = None
        penalty(leaf).backward()

    return run


def fwd(penalty: Callable[[Tensor], Tensor], x: Tensor) -> Callable[[], object]:
    def run() -> None:
        with torch.no_grad():
            penalty(x)

    return run


def growth_table(sizes: list[int], reps: int) -> tuple[str, dict[str, dict[int, float]]]:
    """ns per element, forward + backward, every penalty at every size."""
    pens = {n: cls(*ARGS.get(n, ())) for n, cls in PENALTIES.items() if not cls.composite}
    per_elem: dict[str, dict[int, float]] = {name: {} for name in pens}
    for n in sizes:
        xs = {unit: make_x(n, unit) for unit in (False, True)}
        fns = {name: fwd_bwd(p, xs[name in UNIT_INTERVAL]) for name, p in pens.items()}
        got = time_fns(fns, reps if n < 10**8 else min(reps, 3))
        for name, values in got.items():
            per_elem[name][n] = quartiles(values)[1] / n * 1e9
        del xs, fns
        gc.collect()
        print(f"  growth: {n:.0e} done", flush=True)
    pairs = [(a, b) for a, b in ((10**6, 10**5), (10**7, 10**6), (10**8, 10**7)) if a in sizes]
    pairs = [(a, b) for a, b in pairs if b in sizes]
    header = ["penalty"] + [f"{n:.0e}" for n in sizes] + [f"{a:.0e} / {b:.0e}" for a, b in pairs]
    rows = []
    for name, p in pens.items():
        cells = [f"{per_elem[name][n]:.2f}" for n in sizes]
        ratios = [f"{per_elem[name][a] / per_elem[name][b]:.2f}" for a, b in pairs]
        rows.append([f"`{p!r}`", *cells, *ratios])
    return md_table(header, rows), per_elem


def _l1_onepass(x: Tensor) -> Tensor:
    return torch.linalg.vector_norm(x, 1) * (L1C / x.shape[0])


def _l2_onepass(x: Tensor) -> Tensor:
    return torch.linalg.vector_norm(x, 2).square() * (L2C / x.shape[0])


def fusion_variants(compile_: bool) -> dict[str, Callable[[Tensor], Tensor]]:
    out: dict[str, Callable[[Tensor], Tensor]] = {
        "F.l1l2 (addcmul)": lambda x: F.l1l2(x, L1C, L2C),
        "F.l1 + F.l2": lambda x: F.l1(x, L1C) + F.l2(x, L2C),
        "one-pass norms": lambda x: _l1_onepass(x) + _l2_onepass(x),
        "F.l1 alone": lambda x: F.l1(x, L1C),
        "one-pass L1 alone": _l1_onepass,
    }
    if compile_:
        out["compiled F.l1l2"] = torch.compile(
            lambda x: F.l1l2(x, L1C, L2C), dynamic=False, fullgraph=True
        )
    return out


def fusion_table(sizes: list[int], reps: int, compile_: bool) -> str:
    rows = []
    for n in sizes:
        if compile_:
            torch._dynamo.reset()  # a fresh compile per size (no recompile limit)
        variants = fusion_variants(compile_)
        x = make_x(n, False)
        ref = float(F.l1l2(x.double(), L1C, L2C))
        for mode, wrap in (("forward", fwd), ("fwd + bwd", fwd_bwd)):
            got = time_fns({k: wrap(v, x) for k, v in variants.items()}, reps)
            base = quartiles(got["F.l1l2 (addcmul)"])[1]
            for name, values in got.items():
                med = quartiles(values)[1]
                err = ""
                if mode == "forward" and "alone" not in name:
                    with torch.no_grad():
                        err = f"{abs(float(variants[name](x)) - ref) / abs(ref):.1e}"
                rows.append([f"{n:.0e}", mode, name, f"{med * 1e6:.1f}", f"{med / base:.2f}", err])
        del x
        gc.collect()
        print(f"  fusion: {n:.0e} done", flush=True)
    header = ["elements", "pass", "formula", "us / call", "vs F.l1l2", "rel. error vs float64"]
    return md_table(header, rows)


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=SIZES)
    parser.add_argument("--reps", type=int, default=REPS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="up to 1e7, 3 reps")
    parser.add_argument("--compile", action="store_true", help="add torch.compile'd l1l2")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = sorted({int(s) for s in args.sizes})
    reps = args.reps
    if args.quick:
        sizes, reps = [s for s in sizes if s <= 10**7], min(reps, 3)
    growth, per_elem = growth_table(sizes, reps)
    fusion = fusion_table([s for s in sizes if s >= 10**4], reps, args.compile)
    print(machine_line())
    print(growth)
    print(fusion)
    return {"growth": growth, "fusion": fusion, "per_elem": per_elem, "sizes": sizes}


if __name__ == "__main__":
    main()
