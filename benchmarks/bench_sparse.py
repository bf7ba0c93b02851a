"""Sparse-input inference (actreg.sparse): per-layer speed and an end-to-end MLP.

Usage:
    python benchmarks/bench_sparse.py [--threads 1,2] [--repeats 7] [--quick]
        [--checkpoint PATH] [--hidden 1024] [--epochs N] [--write docs/PERFORMANCE_SPARSE.md]

Part 1, per layer: nn.Linear against three sparse variants for 4096->1024, 1024->4096 and
1024->1024 at batch 1/8/32 and 0/50/90/95/99% zeros (zeros placed at random per example,
as in real ReLU activations):
  gather  union of the batch's non-zero columns, index_select rows of W.T, addmm (reference)
  bag     per-example non-zeros summed by F.embedding_bag (the kernel SparseInputLinear uses)
  ext     the C++ row kernel (built on first use; --no-extension: pure PyTorch only)
  module  the layer as actreg.sparse.convert makes it, on the default path (C++ kernels
          where they build, threshold="auto" calibrated here), fallback included: the
          goal is >= 8x for 4096->1024 at 90% zeros, batch 1, one thread
Where the module takes the dense path, "decision" is the time of what it adds before the
same addmm that nn.Linear runs (grad and shape checks, threshold lookup, exact zero count),
timed alone (thousands of calls, so steady), as a share of the dense time.
The module is timed against dense alone, the kernels against dense in a second group; within
a group, variants run in turn inside each repetition (actreg.sparse.calibrate.time_interleaved),
so machine noise hits them alike; with 1 thread the clock is CPU time (steady under load).
A speedup is the median over repetitions of the paired
ratio dense/variant, with its min-max.

Part 2, end to end: the trained models of the issue, through `actreg speedup`
(actreg.lab.experiments.speedup): the L1-regularized 3x1000 MNIST MLP and the sparse
autoencoder's decoder (--runs, default the run folders named in RUNS; make them with the
commands in docs/RESULTS.md). Each at batch 1, 8 and 32 on the default path (the C++
kernels where they build: goal >= 90% of the FLOP limit for the MLP); the MLP also with its
first layer dense on scaled pixels (--no-fold in the CLI) and, at batch 1, with the
pure-PyTorch kernel (kernels="torch", the CLI's --no-extension).

--write replaces the generated block of docs/PERFORMANCE_SPARSE.md with this run's tables.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from actreg import sparse
from actreg._cpp import Backend
from actreg.sparse._kernels import bag_linear, gather_linear, random_sparse
from actreg.sparse.calibrate import time_interleaved

# Defaults: one comment per setting.
SEED = 0  # every weight, input and training run starts here
SHAPES = [(4096, 1024), (1024, 4096), (1024, 1024)]  # (in, out) of the per-layer tables
BATCHES = [1, 8, 32]  # batch sizes of the per-layer tables
ZEROS = [0.0, 0.5, 0.9, 0.95, 0.99]  # input zero fractions of the per-layer tables
REPEATS = 7  # timed repetitions per configuration (medians over these)
MIN_TIME = 5e-3  # seconds each timed sample runs at least
RUNS = [  # trained runs timed end to end (docs/RESULTS.md has the commands)
    "runs/results/sparse-rectifier/mnist-l1-3e-4-15ep",
    "runs/results/sparse-ae/mnist-l1-0.002-14ep",
]
E2E_EXAMPLES = 500  # test examples timed end to end
BEGIN, END = "<!-- bench_sparse:begin -->", "<!-- bench_sparse:end -->"


def ratio_stats(dense: list[float], other: list[float]) -> tuple[float, float, float]:
    """Median, min and max of the paired per-repetition ratios dense/other."""
    r = [d / o for d, o in zip(dense, other, strict=True)]
    return statistics.median(r), min(r), max(r)


def fmt(stats: tuple[float, float, float]) -> str:
    return f"{stats[0]:.2f}x ({stats[1]:.2f}-{stats[2]:.2f})"


def layer_tables(
    threads: int, repeats: int, quick: bool, backend: Backend
) -> tuple[list[str], dict[str, float]]:
    torch.set_num_threads(threads)
    clock = "cpu" if threads == 1 else "wall"  # CPU time is steady on a shared machine
    gen = torch.Generator().manual_seed(SEED)
    ext = backend.load()
    shapes = SHAPES[:1] if quick else SHAPES
    lines = [
        f"### Per layer, {threads} thread(s)",
        "",
        f"Speedup = dense time / variant time (median over repetitions of the paired ratio, "
        f"min-max in brackets); {clock} clock.",
        "",
        "| layer | batch | zeros | dense us | gather | bag | ext | module (auto) | path "
        "| decision |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    key: dict[str, float] = {}
    worst_fallback = worst_decision = 0.0
    for fin, fout in shapes:
        lin = nn.Linear(fin, fout).eval()
        with torch.no_grad():
            lin.weight.copy_(torch.randn(fout, fin, generator=gen) / fin**0.5)
        # the layer as convert makes it (thresholds calibrated for these kernels)
        fast = sparse.convert(nn.Sequential(nn.ReLU(), lin), kernels=backend)
        mod = fast[1].eval()
        assert isinstance(mod, sparse.SparseInputLinear)
        thresholds = mod.threshold
        w, b, wt = lin.weight.detach(), lin.bias.detach(), mod.transposed_weight()
        lines.insert(3, f"Calibrated thresholds {fin}->{fout}: {thresholds}.")
        for batch in BATCHES:
            for z in ZEROS:
                x = random_sparse((batch, fin), z, generator=gen)
                kernels: dict[str, Callable[[], object]] = {
                    "dense": partial(lin, x),
                    "gather": partial(gather_linear, x, wt, b),
                    "bag": partial(bag_linear, x, wt, b),
                }
                if ext is not None:
                    kernels["ext"] = partial(ext.sparse_linear, x, wt, b)
                with torch.inference_mode():
                    # the module against dense alone (as a model would run), then the kernels
                    t = time_interleaved(
                        {"dense": partial(lin, x), "module": partial(mod, x)},
                        repeats=repeats,
                        min_time=MIN_TIME,
                        clock=clock,
                    )
                    tk = time_interleaved(kernels, repeats=repeats, min_time=MIN_TIME, clock=clock)
                    ok = torch.allclose(mod(x), F.linear(x, w, b), rtol=1e-4, atol=1e-5)
                    path = "sparse" if mod.uses_sparse(x) else "dense"
                    decision = "-"
                    if path == "dense":
                        td = time_interleaved(
                            {"decide": partial(decide, mod, x, ext)},
                            repeats=repeats,
                            min_time=MIN_TIME,
                            clock=clock,
                        )
                        share = statistics.median(td["decide"]) / statistics.median(t["dense"])
                        worst_decision = max(worst_decision, share)
                        decision = f"{share:.1%}"
                assert ok, (fin, fout, batch, z)
                m = ratio_stats(t["dense"], t["module"])
                g, bg = (ratio_stats(tk["dense"], tk[k]) for k in ("gather", "bag"))
                e = fmt(ratio_stats(tk["dense"], tk["ext"])) if ext is not None else "-"
                dense_us = statistics.median(t["dense"]) * 1e6
                lines.append(
                    f"| {fin}->{fout} | {batch} | {z:.0%} | {dense_us:.0f} | {fmt(g)} | "
                    f"{fmt(bg)} | {e} | {fmt(m)} | {path} | {decision} |"
                )
                if path == "dense":
                    worst_fallback = max(worst_fallback, 1 / m[0] - 1)
                key[f"{fin}->{fout} b{batch} z{z:g} module"] = m[0]
                key[f"{fin}->{fout} b{batch} z{z:g} gather"] = g[0]
    lines += [
        "",
        f"Fallback (module on the dense path): worst median time ratio against nn.Linear over "
        f"the rows above {worst_fallback:+.1%} (two noisy timings); worst cost of the decision "
        f"itself, timed alone, {worst_decision:.1%} of the dense time.",
        "",
    ]
    key["worst_fallback"] = worst_fallback
    key["worst_decision"] = worst_decision
    return lines, key


def decide(mod: sparse.SparseInputLinear, x: torch.Tensor, ext: object) -> object:
    """What SparseInputLinear.forward does besides its product: grad and shape checks, the C++
    object's lookup and freshness check, and the exact zero count (the pure-PyTorch path:
    its sampled zero count and threshold lookup)."""
    mod._needs_grad(x)
    _ = x.dim() == 0 or x.shape[-1] != mod.in_features
    x2 = x if x.dim() == 2 else x.reshape(-1, mod.in_features)
    cpp = mod._cpp() if not x2.is_cuda else None
    if cpp is not None and x2.dtype == mod.weight.dtype:
        return x2.is_contiguous(), cpp.fresh(), ext.count_nonzero(x2)  # type: ignore[attr-defined]
    return mod.uses_sparse(x)


# ---------------------------------------------------------------- end to end


def end_to_end(args: argparse.Namespace) -> tuple[list[str], dict[str, float]]:
    from actreg.lab.experiments.speedup import SpeedupConfig, speedup

    runs = [r for r in args.runs if (Path(r) / "results.json").is_file()]
    lines = [
        f"### End to end, {args.e2e_threads} thread(s)",
        "",
        "Trained models through `actreg speedup RUN --batch-size B` (CPU clock with one "
        "thread). `first layer`: `folded` = the input scaling folded into it, fed raw pixels; "
        "`dense` = as trained, on scaled pixels (`--no-fold`). FLOP limit: dense Linear FLOPs "
        "over the FLOPs left when the zero inputs of converted layers are skipped "
        "(`actreg.sparse.flop_limit`). Identical = same argmax on every test image.",
        "",
        "| run | batch | kernels | first layer | dense us | converted us | speedup | "
        "FLOP limit | of limit | identical | max abs diff | input zeros per layer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    key: dict[str, float] = {}
    if not runs:
        lines.append("| (no trained runs found: see docs/RESULTS.md) |" + " |" * 11)
    for run in runs:
        mlp = "sparse-rectifier" in run
        plans = [(1, True, True), (8, True, True), (32, True, True)]
        if mlp:
            plans += [(1, True, False), (1, False, True)]
        else:
            plans += [(1, False, True)]
        for batch, ext, fold in plans:
            row = speedup(
                SpeedupConfig(
                    run_dir=run,
                    examples=E2E_EXAMPLES,
                    batch_size=batch,
                    threads=args.e2e_threads,
                    extension=ext and not args.no_extension,
                    fold_input=fold,
                )
            )
            kern_name = row["kernels"]
            first = "folded" if row["input_folded"] else ("dense" if mlp else "-")
            zeros = ", ".join(f"{k}: {v:.1%}" for k, v in row["zero_fractions"].items())
            name = Path(run).parent.name + "/" + Path(run).name
            lines.append(
                f"| {name} | {batch} | {kern_name} | {first} | {row['dense_ms'] * 1e3:.0f} | "
                f"{row['sparse_ms'] * 1e3:.1f} | {row['speedup']:.2f}x | {row['limit']:.2f}x | "
                f"{row['of_limit']:.0%} | {row['identical']} | {row['max_abs_diff']:.1e} | "
                f"{zeros} |"
            )
            print(lines[-1], flush=True)
            key[f"e2e {name} b{batch} {kern_name} {first} speedup"] = row["speedup"]
            key[f"e2e {name} b{batch} {kern_name} {first} of_limit"] = row["of_limit"]
    lines.append("")
    return lines, key


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", default="1", help="comma-separated torch thread counts")
    p.add_argument("--no-extension", action="store_true", help="pure PyTorch kernels only")
    p.add_argument("--e2e-threads", type=int, default=1, help="threads for the end-to-end part")
    p.add_argument("--repeats", type=int, default=REPEATS)
    p.add_argument("--quick", action="store_true", help="one layer shape only (a smoke run)")
    p.add_argument("--skip-layers", action="store_true", help="end-to-end part only")
    p.add_argument("--runs", nargs="*", default=RUNS, help="trained run folders (end to end)")
    p.add_argument("--write", help="replace the generated block of this markdown file")
    args = p.parse_args()

    cmd = "python benchmarks/bench_sparse.py " + " ".join(sys.argv[1:])
    backend = sparse.backend("torch" if args.no_extension else "auto")  # the default path
    ext = backend.load() is not None
    out = [
        BEGIN,
        f"Generated by `{cmd.strip()}` on {time.strftime('%Y-%m-%d')}: torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores "
        f"(shared machine; load average at start {os.getloadavg()[0]:.1f}). "
        f"C++ kernel: {'loaded' if ext else 'not used'}; the module uses "
        f"{'it' if ext else 'F.embedding_bag'} on its sparse path.",
        "",
    ]
    summary: dict[str, float] = {}
    if not args.skip_layers:
        for th in (int(t) for t in args.threads.split(",")):
            lines, key = layer_tables(th, args.repeats, args.quick, backend)
            out += lines
            summary.update({f"t{th} {k}": v for k, v in key.items()})
            print("\n".join(lines), flush=True)
    lines, key = end_to_end(args)
    out += lines
    summary.update(key)
    print("\n".join(lines), flush=True)
    out.append(END)
    for k in sorted(summary):
        if "b1 z0.9 " in k or "worst" in k or "e2e" in k:
            print(f"# {k}: {summary[k]:.3f}")
    if args.write:
        path = Path(args.write)
        text = path.read_text() if path.exists() else f"{BEGIN}\n{END}\n"
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        path.write_text(head + "\n".join(out) + tail)
        print(f"# wrote {path}")


if __name__ == "__main__":
    main()
