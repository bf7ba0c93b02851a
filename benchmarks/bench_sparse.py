"""Sparse-input inference (actreg.sparse): per-layer speed and an end-to-end MLP.

Usage:
    python benchmarks/bench_sparse.py [--threads 1,2] [--repeats 7] [--quick]
        [--checkpoint PATH] [--hidden 1024] [--epochs N] [--write docs/PERFORMANCE_SPARSE.md]

Part 1, per layer: nn.Linear against three sparse variants for 4096->1024, 1024->4096 and
1024->1024 at batch 1/8/32 and 0/50/90/95/99% zeros (zeros placed at random per example,
as in real ReLU activations):
  gather  union of the batch's non-zero columns, index_select rows of W.T, addmm (reference)
  bag     per-example non-zeros summed by F.embedding_bag (the kernel SparseInputLinear uses)
  ext     the optional C++ kernel (actreg.sparse.load_extension; --no-extension skips it)
  module  SparseInputLinear with threshold="auto" (calibrated here), fallback included
The module is timed against dense alone, the kernels against dense in a second group; within
a group, variants run in turn inside each repetition (actreg._sparse_kernels.time_interleaved),
so machine noise hits them alike; with 1 thread the clock is CPU time (steady under load).
A speedup is the median over repetitions of the paired
ratio dense/variant, with its min-max.

Part 2, end to end: an MLP with 3 hidden ReLU layers trained with actreg.attach(..., L1(1e-3))
on MNIST (if the IDX files are in ./data/mnist or ~/.cache/actreg/mnist) or scikit-learn's
digits, converted with actreg.sparse.convert and measured with actreg.sparse.measure at
batch 1 (and 32). --checkpoint measures a saved model instead of training one: a pickled
nn.Module, a dict holding one under "model", or a state_dict of an nn.Sequential MLP
(Linear weights in order, ReLU between them).

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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import actreg
from actreg import _sparse_kernels as kern
from actreg import sparse
from actreg._sparse_kernels import bag_linear, gather_linear, random_sparse, time_interleaved

# Defaults: one comment per setting.
SEED = 0  # every weight, input and training run starts here
SHAPES = [(4096, 1024), (1024, 4096), (1024, 1024)]  # (in, out) of the per-layer tables
BATCHES = [1, 8, 32]  # batch sizes of the per-layer tables
ZEROS = [0.0, 0.5, 0.9, 0.95, 0.99]  # input zero fractions of the per-layer tables
REPEATS = 7  # timed repetitions per configuration (medians over these)
MIN_TIME = 5e-3  # seconds each timed sample runs at least
HIDDEN = 1024  # hidden width of the end-to-end MLP
L1_COEF = 1e-3  # L1 activity penalty on every hidden ReLU (Glorot et al. 2011)
E2E_EXAMPLES = 300  # test examples timed end to end
BEGIN, END = "<!-- bench_sparse:begin -->", "<!-- bench_sparse:end -->"


def ratio_stats(dense: list[float], other: list[float]) -> tuple[float, float, float]:
    """Median, min and max of the paired per-repetition ratios dense/other."""
    r = [d / o for d, o in zip(dense, other, strict=True)]
    return statistics.median(r), min(r), max(r)


def fmt(stats: tuple[float, float, float]) -> str:
    return f"{stats[0]:.2f}x ({stats[1]:.2f}-{stats[2]:.2f})"


def layer_tables(threads: int, repeats: int, quick: bool) -> tuple[list[str], dict[str, float]]:
    torch.set_num_threads(threads)
    clock = "cpu" if threads == 1 else "wall"  # CPU time is steady on a shared machine
    gen = torch.Generator().manual_seed(SEED)
    ext = bool(kern._EXT)
    shapes = SHAPES[:1] if quick else SHAPES
    lines = [
        f"### Per layer, {threads} thread(s)",
        "",
        f"Speedup = dense time / variant time (median over repetitions of the paired ratio, "
        f"min-max in brackets); {clock} clock.",
        "",
        "| layer | batch | zeros | dense us | gather | bag | ext | module (auto) | path |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    key: dict[str, float] = {}
    worst_fallback = 0.0
    for fin, fout in shapes:
        lin = nn.Linear(fin, fout).eval()
        with torch.no_grad():
            lin.weight.copy_(torch.randn(fout, fin, generator=gen) / fin**0.5)
        thresholds = sparse.calibrate(fin, fout)
        mod = sparse.SparseInputLinear.from_linear(lin, threshold=thresholds).eval()
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
                if ext:
                    kernels["ext"] = partial(kern._EXT.sparse_linear, x, wt, b)
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
                assert ok, (fin, fout, batch, z)
                m = ratio_stats(t["dense"], t["module"])
                g, bg = (ratio_stats(tk["dense"], tk[k]) for k in ("gather", "bag"))
                e = fmt(ratio_stats(tk["dense"], tk["ext"])) if ext else "-"
                dense_us = statistics.median(t["dense"]) * 1e6
                lines.append(
                    f"| {fin}->{fout} | {batch} | {z:.0%} | {dense_us:.0f} | {fmt(g)} | "
                    f"{fmt(bg)} | {e} | {fmt(m)} | {path} |"
                )
                if path == "dense":
                    worst_fallback = max(worst_fallback, 1 / m[0] - 1)
                key[f"{fin}->{fout} b{batch} z{z:g} module"] = m[0]
                key[f"{fin}->{fout} b{batch} z{z:g} gather"] = g[0]
    lines += [
        "",
        f"Fallback overhead (module on the dense path vs nn.Linear, worst median over the "
        f"rows above): {worst_fallback:+.1%}.",
        "",
    ]
    key["worst_fallback"] = worst_fallback
    return lines, key


# ---------------------------------------------------------------- end to end


def load_data() -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(name, train x, train y, test x, test y), pixels scaled to [0, 1], flattened."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "actreg" / "mnist"
    for folder in (Path("data/mnist"), cache):
        if folder.is_dir():
            try:
                from actreg.data.idx import load_idx_dir

                s = load_idx_dir(folder)
            except Exception as err:  # a partial download: fall back to digits
                print(f"# MNIST at {folder} not usable ({err}); using digits", file=sys.stderr)
                continue

            def prep(a: np.ndarray) -> torch.Tensor:
                return torch.from_numpy(a.reshape(len(a), -1).astype(np.float32) / 255.0)

            return (
                f"MNIST ({folder})",
                prep(s.train_images),
                torch.from_numpy(s.train_labels.astype(np.int64)),
                prep(s.test_images),
                torch.from_numpy(s.test_labels.astype(np.int64)),
            )
    from sklearn.datasets import load_digits

    xs, ys = load_digits(return_X_y=True)
    perm = np.random.default_rng(SEED).permutation(len(xs))
    x = torch.from_numpy(xs[perm].astype(np.float32) / 16.0)
    y = torch.from_numpy(ys[perm].astype(np.int64))
    n = 1400
    return "scikit-learn digits (1400 train / 397 test)", x[:n], y[:n], x[n:], y[n:]


def mlp(d_in: int, hidden: int, classes: int = 10) -> nn.Sequential:
    h = hidden
    return nn.Sequential(
        nn.Linear(d_in, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
        nn.Linear(h, h), nn.ReLU(), nn.Linear(h, classes),
    )  # fmt: skip


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
    relus = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    reg = actreg.attach(model, {n: actreg.L1(L1_COEF) for n in relus})
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            loss = F.cross_entropy(model(x[idx]), y[idx]) + reg.penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
    reg.remove()


def from_checkpoint(path: str) -> nn.Module:
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, dict) and isinstance(obj.get("model"), nn.Module):
        obj = obj["model"]
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict):
        state = obj.get("model", obj.get("state_dict", obj))
        ws = [(k, v) for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
        if ws:
            layers: list[nn.Module] = []
            for _, v in ws:
                layers += [nn.Linear(v.shape[1], v.shape[0]), nn.ReLU()]
            net = nn.Sequential(*layers[:-1])
            net.load_state_dict(dict(zip(net.state_dict(), state.values(), strict=True)))
            return net
    raise SystemExit(f"{path}: expected an nn.Module or the state_dict of a Sequential MLP")


def end_to_end(args: argparse.Namespace) -> tuple[list[str], dict[str, float]]:
    torch.manual_seed(SEED)
    torch.set_num_threads(args.e2e_threads)
    name, xtr, ytr, xte, yte = load_data()
    if args.checkpoint:
        model = from_checkpoint(args.checkpoint)
        origin = f"checkpoint `{args.checkpoint}`"
    else:
        epochs = args.epochs or (3 if name.startswith("MNIST") else 20)
        model = mlp(xtr.shape[1], args.hidden)
        t0 = time.perf_counter()
        train(model, xtr, ytr, epochs)
        origin = (
            f"MLP {xtr.shape[1]}-{args.hidden}x3-10, L1({L1_COEF}) on each hidden ReLU via "
            f"actreg.attach, Adam 1e-3, batch 64, {epochs} epochs "
            f"({time.perf_counter() - t0:.0f} s)"
        )
    model.eval()
    with torch.no_grad():
        acc = float((model(xte).argmax(1) == yte).float().mean())
    converted = sparse.convert(model)  # every Linear after a ReLU
    first = next(n for n, m in model.named_modules() if isinstance(m, nn.Linear))
    with torch.no_grad():
        pixel_zeros = float((xte == 0).float().mean())
    if pixel_zeros > 0.5:  # MNIST pixels are mostly zero: name the first layer too
        sparse.convert(converted, [first], inplace=True)
    kinds = [n for n, m in converted.named_modules() if isinstance(m, sparse.SparseInputLinear)]
    thresholds = {n: dict(converted.get_submodule(n).threshold) for n in kinds}
    lines = [
        f"### End to end, {args.e2e_threads} thread(s)",
        "",
        f"Data: {name} ({pixel_zeros:.0%} zero pixels). Model: {origin}. "
        f"Test accuracy {acc:.2%}. Clock: {'CPU' if args.e2e_threads == 1 else 'wall'} time.",
        f"Converted: {kinds}; calibrated thresholds {thresholds}.",
        "",
        "| batch | dense us/batch | converted us/batch | speedup (min-max) | FLOP limit | "
        "of limit | identical | max abs diff | input zeros per layer |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    key: dict[str, float] = {}
    for batch in (1, 32):
        n = E2E_EXAMPLES if batch == 1 else min(len(xte), 32 * 10)
        rep = sparse.measure(model, converted, xte[:n], batch_size=batch, repeats=args.repeats)
        lo = rep.dense_spread[0] / rep.sparse_spread[1]
        hi = rep.dense_spread[1] / rep.sparse_spread[0]
        zeros = ", ".join(f"{k}: {v:.1%}" for k, v in rep.zero_fractions.items())
        lines.append(
            f"| {batch} | {rep.dense_s * 1e6:.0f} | {rep.sparse_s * 1e6:.0f} | "
            f"{rep.speedup:.2f}x ({lo:.2f}-{hi:.2f}) | {rep.limit:.2f}x | {rep.of_limit:.0%} | "
            f"{rep.identical} | {rep.max_abs_diff:.1e} | {zeros} |"
        )
        key[f"e2e b{batch} speedup"] = rep.speedup
        key[f"e2e b{batch} of_limit"] = rep.of_limit
    lines += [
        "",
        "FLOP limit: dense Linear FLOPs over the FLOPs left when zero inputs of the converted "
        "layers are skipped (actreg.sparse.flop_limit). The min-max spread pairs the extreme "
        "samples, so it is wider than the spread of paired ratios.",
        "",
    ]
    return lines, key


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", default="1", help="comma-separated torch thread counts")
    p.add_argument("--no-extension", action="store_true", help="pure PyTorch kernels only")
    p.add_argument("--e2e-threads", type=int, default=1, help="threads for the end-to-end part")
    p.add_argument("--repeats", type=int, default=REPEATS)
    p.add_argument("--quick", action="store_true", help="one layer shape only (a smoke run)")
    p.add_argument("--skip-layers", action="store_true", help="end-to-end part only")
    p.add_argument("--checkpoint", help="measure this saved model instead of training one")
    p.add_argument("--hidden", type=int, default=HIDDEN)
    p.add_argument("--epochs", type=int, default=0, help="0: 3 on MNIST, 20 on digits")
    p.add_argument("--write", help="replace the generated block of this markdown file")
    args = p.parse_args()

    cmd = "python benchmarks/bench_sparse.py " + " ".join(sys.argv[1:])
    ext = not args.no_extension and sparse.load_extension()
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
            lines, key = layer_tables(th, args.repeats, args.quick)
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
