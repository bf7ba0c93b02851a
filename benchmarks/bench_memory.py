"""Memory: resident-set growth over a long run, and peak memory against the hand-written step.

Usage:
    python benchmarks/bench_memory.py [--runs 3] [--steps 20] [--soak-steps 10000] [--quick]

Three measurements:

1. Soak: ``bench_soak.py`` (attach + Monitor, 10,000 steps) in a fresh process; RSS after
   500 steps against the end. Goal: no growth beyond allocator noise.
2. Peak RSS: for each model of ``bench_step.py`` and each variant (none, hand, attach,
   attach+Monitor), a fresh Python process builds the model, notes its RSS, runs
   ``--steps`` training steps and reports its peak RSS (``VmHWM`` of /proc/self/status;
   ``ru_maxrss`` elsewhere, which on Linux keeps the parent's peak across exec).
   Processes of different variants alternate; each figure is the median of
   ``--runs`` processes. Reported: the whole peak, and the training peak (peak minus the
   RSS before the first step, i.e. what the steps added). Goal: attach / hand <= 1.02x.
3. Saved for backward: the bytes of the distinct tensors the autograd graph of one step
   holds for backward (``torch.autograd.graph.saved_tensors_hooks``), hand against attach.
   Deterministic, so it shows whether attach keeps anything alive that the hand-written
   penalty does not.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import machine_line, md_table, quartiles  # noqa: E402

RUNS = 3  # fresh processes per (model, variant)
STEPS = 20  # training steps per process
SOAK_STEPS = 10_000  # steps of the soak run
GOAL_PEAK = 1.02  # attach / hand

_CHILD = """
import json, resource, sys
sys.path.insert(0, {here!r})
import torch
torch.set_num_threads(1)
import bench_step
from bench_soak import rss_mib
case = bench_step.make_case({model!r})
step = bench_step.variants(case, only={variant!r})[{variant!r}]
before = rss_mib()
for _ in range({steps}):
    step()
try:  # VmHWM: this process image's peak (ru_maxrss keeps the parent's across exec)
    with open("/proc/self/status") as f:
        peak = next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"before": before, "peak": peak, "end": rss_mib()}}))
"""


def child(model: str, variant: str, steps: int) -> dict[str, float]:
    """Peak and start RSS (MiB) of one fresh process running one variant."""
    code = _CHILD.format(here=str(HERE), model=model, variant=variant, steps=steps)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def peak_table(models: list[str], runs: int, steps: int) -> tuple[str, dict[str, object]]:
    kinds = ("none", "hand", "attach", "attach+Monitor")
    rows, figures = [], {}
    for model in models:
        got: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
        for run in range(runs):
            order = kinds if run % 2 == 0 else kinds[::-1]
            for kind in order:
                got[kind].append(child(model, kind, steps))
        peak = {k: quartiles([r["peak"] for r in v]) for k, v in got.items()}
        train = {k: quartiles([r["peak"] - r["before"] for r in v]) for k, v in got.items()}
        ratio = peak["attach"][1] / peak["hand"][1]
        train_ratio = train["attach"][1] / max(train["hand"][1], 1e-9)
        figures[model] = {"peak": peak, "train": train, "ratio": ratio}
        verdict = "met" if ratio <= GOAL_PEAK else "**not met**"
        rows.append(
            [
                model,
                *(f"{peak[k][1]:.1f} (+{train[k][1]:.1f})" for k in kinds),
                f"{ratio:.3f}x {verdict}",
                f"{train_ratio:.3f}x",
            ]
        )
        print(f"  peak: {model} done", flush=True)
    header = [
        "model",
        *(f"{k} MiB (training)" for k in kinds),
        "peak attach / hand",
        "training peak attach / hand",
    ]
    return md_table(header, rows), figures


def saved_bytes(model: str) -> dict[str, int]:
    """Bytes of distinct storages saved for backward in one step of each variant."""
    import bench_step

    case = bench_step.make_case(model)
    out = {}
    for kind, step in bench_step.variants(case).items():
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor, seen: dict[int, int] = seen) -> torch.Tensor:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            step()
        out[kind] = sum(seen.values())
    return out


def saved_table(models: list[str]) -> str:
    rows = []
    for model in models:
        b = saved_bytes(model)
        rows.append([model, *(f"{b[k] / 2**20:.3f}" for k in b), f"{b['attach'] / b['hand']:.4f}x"])
    return md_table(
        ["model", "none MiB", "hand MiB", "attach MiB", "attach+Monitor MiB", "attach / hand"],
        rows,
    )


def soak(steps: int) -> dict[str, float]:
    """bench_soak.main in a fresh process; its figures."""
    code = (
        f"import sys, json; sys.path.insert(0, {str(HERE)!r}); import bench_soak; "
        f"print(json.dumps(bench_soak.main(['--steps', '{steps}'])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["mlp", "cnn", "lstm"])
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--soak-steps", type=int, default=SOAK_STEPS)
    parser.add_argument("--quick", action="store_true", help="1 run, 5 steps, 2,000-step soak")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    runs, steps, soak_steps = args.runs, args.steps, args.soak_steps
    if args.quick:
        runs, steps, soak_steps = 1, 5, 2000
    soaked = soak(soak_steps)
    peak, figures = peak_table(args.model, runs, steps)
    saved = saved_table(args.model)
    print(machine_line())
    print(json.dumps(soaked))
    print(peak)
    print(saved)
    return {
        "soak": soaked,
        "soak_steps": soak_steps,
        "peak": peak,
        "peak_figures": figures,
        "saved": saved,
        "runs": runs,
        "steps": steps,
    }


if __name__ == "__main__":
    main()
