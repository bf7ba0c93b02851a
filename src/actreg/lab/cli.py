"""The ``actreg`` command line: parsing only; the work is done by library functions."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from actreg._errors import ActregError

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from actreg.lab.experiments.demo import DemoConfig, demo
    from actreg.lab.report import format_table

    cfg = DemoConfig(out_dir=args.out, epochs=args.epochs, progress=args.progress)
    print(
        f"actreg demo: a {cfg.code}-unit ReLU autoencoder on 8x8 digits, trained twice "
        f"({cfg.epochs} epochs): with L1({cfg.coef:g}) on its code and without."
    )
    start = time.perf_counter()
    results = demo(cfg)
    print()
    print(format_table(results["rows"]))
    print()
    variants = results["variants"]
    pen, plain = (variants[k] for k in variants)
    print(
        "zero_fraction: share of code values that are exactly 0; l0: active units per image; "
        "probe_acc: logistic regression on the code (noisy: test images + Gaussian noise)."
    )
    print(
        f"The penalty made {pen['code']['zero_fraction']:.0%} of the code exactly zero "
        f"(vs {plain['code']['zero_fraction']:.0%} without)."
    )
    print(f"Pictures and results.json: {results['run_dir']}  ({time.perf_counter() - start:.0f} s)")
    return 0


def _run(args: argparse.Namespace) -> int:
    from actreg.lab.experiments import get
    from actreg.lab.experiments._config import apply_overrides
    from actreg.lab.report import format_table

    exp = get(args.experiment)
    cfg = apply_overrides(exp.config(), args.set or [])
    results = exp.run(cfg)
    print(format_table(exp.summary(results)))
    print(f"results: {results['run_dir']}/results.json")
    return 0


def _data(args: argparse.Namespace) -> int:
    from actreg.lab.data import fetch, list_datasets

    if args.data_command == "fetch":
        path = fetch(args.name, data_dir=args.data_dir)
        print(f"{args.name}: ready in {path}")
        return 0
    for row in list_datasets(args.data_dir):
        state = "cached" if row["cached"] else "not fetched"
        print(f"{row['name']:8s} {state:12s} {row['path']}  {row['description']}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from actreg.lab.report import write_report

    out = write_report(args.run_dirs, args.out, copy_images=args.copy_images)
    print(f"report: {out}")
    return 0


def _search(args: argparse.Namespace) -> int:
    import logging

    from actreg.lab.report import format_table
    from actreg.lab.search import SearchConfig, check_refine, coarse_grid, run_search

    refine: int | tuple[float, ...] = 0
    if args.refine:
        text = args.refine.replace(" ", "")
        try:
            refine = tuple(float(m) for m in text.split(",")) if "," in text else int(text)
        except ValueError:
            msg = f"--refine takes a count or mantissas like 1,2,5, got {text!r}"
            raise ActregError(msg) from None
        refine = check_refine(refine)
    cfg = SearchConfig(
        args.experiment,
        coefs=coarse_grid(args.coef),
        refine=refine,
        objective=args.objective,
        storage=args.storage,
        study=args.study,
        overrides=tuple(args.set or ()),
        workers=args.workers,
        out_dir=args.out,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("actreg.lab.search")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        rows = run_search(cfg)
    finally:
        logger.removeHandler(handler)
    print(format_table([{k: v for k, v in r.items() if k != "run_dir"} for r in rows]))
    print(f"report: {cfg.search_dir / 'search.md'}")
    return 0


def _speedup(args: argparse.Namespace) -> int:
    from actreg.lab.experiments.speedup import SpeedupConfig, speedup
    from actreg.lab.report import format_table

    row = speedup(
        SpeedupConfig(
            run_dir=args.run_dir,
            variant=args.variant,
            examples=args.examples,
            batch_size=args.batch_size,
            threads=args.threads,
            extension=not args.no_extension,
            fold_input=not args.no_fold,
        )
    )
    zeros = row.pop("zero_fractions")
    print(format_table([row]))
    print(
        "input zero fraction per converted layer: "
        + ", ".join(f"{k} {v:.3f}" for k, v in zeros.items())
    )
    return 0


def _experiments_help() -> str:
    from actreg.lab.experiments import EXPERIMENTS

    return "\n".join(f"  {name:18s} {exp.doc}" for name, exp in EXPERIMENTS.items())


def _searchable_help() -> str:
    from actreg.lab.experiments import EXPERIMENTS

    lines = []
    for name, exp in EXPERIMENTS.items():
        if exp.search is not None:
            aliases = ", ".join(f"{a} = {o}" for a, o in exp.search.aliases.items())
            lines.append(
                f"  {name:18s} objectives: {', '.join(exp.search.objectives)}"
                + (f" ({aliases})" if aliases else "")
            )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(
        prog="actreg", description="Activation regularization for PyTorch."
    )
    from actreg import __version__

    parser.add_argument("--version", action="version", version=f"actreg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="sparse autoencoder on 8x8 digits, with and without L1")
    p.add_argument("--out", default="runs", help="output folder (default: runs)")
    p.add_argument("--epochs", type=int, default=30, help="training epochs (default: 30)")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "run",
        help="run an experiment",
        description="Run an experiment.\n\nexperiments:\n" + _experiments_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("experiment", help="experiment name")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config field (repeatable), e.g. --set epochs=5 --set data=mnist",
    )
    p.set_defaults(func=_run)

    p = sub.add_parser(
        "search",
        help="coarse-to-fine search of the penalty coefficient (resumable, parallel)",
        description="Coarse pass over --coef, then --refine points inside the best decade.\n"
        "Trials live in --storage (default: a SQLite file); run the same command again to\n"
        "resume, or on several machines with one --storage URL to share the work.\n\n"
        "searchable experiments (the first objective is the default):\n" + _searchable_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("experiment", help="a searchable experiment (listed above)")
    p.add_argument("--coef", default="1e-1,1e-2,1e-3,1e-4", help="coarse grid, comma-separated")
    p.add_argument("--refine", help="points inside the best decade: a count, or mantissas 1,2,5")
    p.add_argument("--objective", help="what to minimize (default: the first objective)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    p.add_argument("--storage", help="SQLAlchemy URL (default: sqlite:///OUT/search/optuna.db)")
    p.add_argument("--study", help="study name (default: derived from the settings)")
    p.add_argument("--out", default="runs", help="output folder (default: runs)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="experiment setting")
    p.set_defaults(func=_search)

    p = sub.add_parser("data", help="fetch or list data sets")
    dsub = p.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="download, verify and cache a data set (mnist, austen)")
    f.add_argument("name", help="mnist or austen")
    f.add_argument("--data-dir", help="data directory (default: $ACTREG_DATA or ~/.cache/actreg)")
    f.set_defaults(func=_data)
    f = dsub.add_parser("list", help="list data sets and whether they are cached")
    f.add_argument("--data-dir", help="data directory (default: $ACTREG_DATA or ~/.cache/actreg)")
    f.set_defaults(func=_data)

    p = sub.add_parser(
        "speedup", help="convert a trained run's model to sparse-input layers and time it"
    )
    p.add_argument("run_dir", help="a sparse-rectifier or sparse-ae run folder")
    p.add_argument("--variant", help="trained variant (default: the penalized one)")
    p.add_argument("--examples", type=int, default=500, help="test images to time (500)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward (1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads while timing (1)")
    p.add_argument(
        "--no-extension",
        action="store_true",
        help="do not build the C++ kernels; time the pure-PyTorch kernel",
    )
    p.add_argument(
        "--no-fold",
        action="store_true",
        help="MLP: keep the first layer dense on scaled pixels instead of folding the scaling",
    )
    p.set_defaults(func=_speedup)

    p = sub.add_parser("report", help="write a Markdown report of runs side by side")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="folders with results.json")
    p.add_argument("--out", default="report.md", help="Markdown file to write (default: report.md)")
    p.add_argument(
        "--copy-images",
        action="store_true",
        help="copy the PNGs into an img/ folder beside the report (to commit it)",
    )
    p.set_defaults(func=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``actreg`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ActregError as err:
        print(f"actreg: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover
        print("actreg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
