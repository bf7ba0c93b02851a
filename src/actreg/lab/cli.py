"""The ``actreg`` command line: parsing only; the work is done by library functions.

Every command imports what it needs when it runs: ``import actreg`` is lazy and the help
texts come from :mod:`actreg.lab.catalog`, so ``--help`` answers without importing
PyTorch. Errors are one ``actreg: error:`` line (exit 2 for bad input, 1 for a failure of
the system, such as a full disk); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

from actreg._errors import ActregError
from actreg.lab.catalog import CATALOG

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from actreg.lab.experiments.demo import DemoConfig, demo
    from actreg.lab.report import format_table

    progress = sys.stderr.isatty() if args.progress is None else args.progress
    cfg = DemoConfig(out_dir=args.out, epochs=args.epochs, progress=progress)
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


#: ``actreg search``'s coarse grid when neither --coef nor --target is given.
COEFS = "1e-1,1e-2,1e-3,1e-4"

#: ``actreg run`` flags that set a config field (when the experiment has it).
COMMON = {"out": "out_dir", "data_dir": "data_dir", "seed": "seed", "threads": "threads"}


def _run(args: argparse.Namespace) -> int:
    if args.help:  # argparse's convention: the help on stdout, exit 0
        print(args.parser.format_help())
        if args.experiment:
            print(_keys_help(args.experiment))
        raise SystemExit(0)
    if not args.experiment:
        args.parser.error("name an experiment (actreg run --help lists them)")
    from actreg.lab.experiments import get
    from actreg.lab.experiments._config import apply_overrides
    from actreg.lab.report import format_table

    exp = get(args.experiment)
    fields = {f.name for f in dataclasses.fields(exp.config)}
    flags = []
    for flag, key in COMMON.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if key not in fields:
            raise ActregError(f"{args.experiment} has no setting {key} (--{flag})")
        flags.append(f"{key}={value}")
    if "progress" in fields:  # progress bars on a terminal, none in logs (unless asked)
        progress = sys.stderr.isatty() if args.progress is None else args.progress
        flags.append(f"progress={progress}")
    cfg = apply_overrides(exp.config(), [*flags, *(args.set or [])])
    results = exp.run(cfg)
    print(format_table(exp.summary(results)))
    print(f"results: {results['run_dir']}/results.json")
    return 0


def _keys_help(name: str) -> str:
    """Every setting of experiment ``name``: key, type, default, meaning."""
    from actreg.lab.experiments import get
    from actreg.lab.experiments._config import describe

    rows = describe(get(name).config)
    width = max(len(r["key"]) for r in rows)
    kinds = max(len(r["type"]) for r in rows)
    lines = [f"settings of {name} (--set KEY=VALUE):"]
    for r in rows:
        lines.append(
            f"  {r['key']:{width}s}  {r['type']:{kinds}s}  {r['default']!s:>10s}  {r['meaning']}"
        )
    return "\n".join(lines)


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
    from actreg.lab.search.grid import target_grid

    refine: int | tuple[float, ...] = 0
    if args.refine:
        text = args.refine.replace(" ", "")
        try:
            refine = tuple(float(m) for m in text.split(",")) if "," in text else int(text)
        except ValueError:
            msg = f"--refine takes a count or mantissas like 1,2,5, got {text!r}"
            raise ActregError(msg) from None
        refine = check_refine(refine)
    if args.target is not None and args.coef is not None:
        raise ActregError("give --coef (a coefficient grid) or --target (targets), not both")
    cfg = SearchConfig(
        args.experiment,
        coefs=coarse_grid(COEFS if args.coef is None else args.coef),
        targets=target_grid(args.target) if args.target is not None else (),
        refine=refine,
        objective=args.objective,
        storage=args.storage,
        study=args.study,
        overrides=tuple(args.set or ()),
        workers=args.workers,
        out_dir=args.out,
        retry_failed=args.retry_failed,
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
            new_tokens=args.new_tokens,
            repeats=args.repeats,
            data_dir=args.data_dir,
        )
    )
    if "rows" in row:  # transformer-lm: the batch-1 decode summary, then every workload
        head = {k: row[k] for k in ("variant", "threads", "kernels")}
        print(format_table([{**head, **row["decode"]}]) + "\n\n" + format_table(row["rows"]))
        return 0
    zeros = row.pop("zero_fractions")
    print(format_table([row]))
    print(
        "input zero fraction per converted layer: "
        + ", ".join(f"{k} {v:.3f}" for k, v in zeros.items())
    )
    return 0


def _experiments_help() -> str:
    return "\n".join(f"  {name:18s} {entry.doc}" for name, entry in CATALOG.items())


def _searchable_help() -> str:
    lines = []
    for name, entry in CATALOG.items():
        if entry.objectives:
            aliases = ", ".join(f"{a} = {o}" for a, o in entry.aliases.items())
            lines.append(
                f"  {name:18s} objectives: {', '.join(entry.objectives)}"
                + (f" ({aliases})" if aliases else "")
            )
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """argparse with the command line's one error format (its subcommands inherit it)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"actreg: error: {message} (`{self.prog} --help` lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = _Parser(prog="actreg", description="Activation regularization for PyTorch.")
    from actreg import __version__

    parser.add_argument("--version", action="version", version=f"actreg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="sparse autoencoder on 8x8 digits, with and without L1")
    p.add_argument("--out", default="runs", help="output folder (default: runs)")
    p.add_argument("--epochs", type=int, default=30, help="training epochs (default: 30)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="progress bars (default: on when stderr is a terminal)",
    )
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "run",
        help="run an experiment",
        description="Run an experiment; `actreg run EXPERIMENT --help` lists its settings.\n\n"
        "experiments:\n" + _experiments_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    p.add_argument("experiment", nargs="?", help="experiment name (listed above)")
    p.add_argument("-h", "--help", action="store_true", help="this help, and the settings")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="a setting (repeatable), e.g. --set epochs=5 --set data=mnist",
    )
    p.add_argument("--out", help="output folder (the out_dir setting; default: runs)")
    p.add_argument("--data-dir", help="data folder (default: $ACTREG_DATA or ~/.cache/actreg)")
    p.add_argument("--seed", type=int, help="seed of data split, initialization, batch order")
    p.add_argument("--threads", type=int, help="torch threads (default: chosen from the work)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="progress bars (default: on when stderr is a terminal)",
    )
    p.set_defaults(func=_run, parser=p)

    p = sub.add_parser(
        "search",
        help="coarse-to-fine search of the penalty coefficient (resumable, parallel)",
        description="Coarse pass over --coef, then --refine points inside the best decade.\n"
        "Trials live in --storage (default: a SQLite file); run the same command again to\n"
        "resume, or on several machines with one --storage URL to share the work.\n"
        "--target 0.8,0.9,0.95 instead: one trial per sparsity target (target mode), and\n"
        "the objective against the zero fraction reached.\n\n"
        "searchable experiments (the first objective is the default):\n" + _searchable_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("experiment", help="a searchable experiment (listed above)")
    p.add_argument("--coef", help=f"coarse grid, comma-separated (default: {COEFS})")
    p.add_argument("--target", help="zero-fraction targets instead of --coef, e.g. 0.8,0.9")
    p.add_argument("--refine", help="points inside the best decade: a count, or mantissas 1,2,5")
    p.add_argument("--objective", help="what to minimize (default: the first objective)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    p.add_argument("--storage", help="SQLAlchemy URL (default: sqlite:///OUT/search/optuna.db)")
    p.add_argument("--study", help="study name (default: derived from the settings)")
    p.add_argument("--out", default="runs", help="output folder (default: runs)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="experiment setting")
    p.add_argument("--retry-failed", action="store_true", help="try grid points given up once more")
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
    p.add_argument("run_dir", help="a sparse-rectifier, sparse-ae or transformer-lm run folder")
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
    p.add_argument("--data-dir", help="where the run's data lives (default: as the run)")
    p.add_argument("--new-tokens", type=int, default=32, help="transformer-lm: tokens (32)")
    p.add_argument("--repeats", type=int, default=7, help="transformer-lm: repetitions (7)")
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
    if not args.debug:  # one line per warning, like errors; --debug keeps Python's format
        warnings.showwarning = _show_warning
    try:
        return int(args.func(args))
    except KeyboardInterrupt:  # pragma: no cover
        print("actreg: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            traceback.print_exc()
        code, message = _explain(err)
        print(f"actreg: error: {message}", file=sys.stderr)
        return code


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kw: Any) -> None:
    print(f"actreg: warning: {message}", file=sys.stderr)


def _explain(err: BaseException) -> tuple[int, str]:
    """Exit code and one line for an error: bad input (2) or a failure of the system (1)."""
    if isinstance(err, ActregError):
        return 2, str(err)
    if isinstance(err, OSError):
        where = f" ({err.filename})" if err.filename else ""
        reason = err.strerror or str(err)
        if isinstance(err, PermissionError) or err.errno == 30:  # EROFS: read-only
            fix = "choose a folder you can write to, or fix its permissions"
        elif err.errno == 28:  # ENOSPC
            fix = "free some space (earlier results are intact) and run again"
        else:
            fix = "check the path and run again"
        return 1, f"{reason}{where}: {fix}"
    name = type(err).__name__
    return 1, f"unexpected {name}: {err} (rerun with --debug for the traceback; please report it)"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
