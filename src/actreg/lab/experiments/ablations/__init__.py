"""``ablation``: the seed article's tips and its readers' questions, each tested over seeds.

Usage::

    actreg run ablation --set question=which-norm --set threads=1 --set progress=false
    actreg run ablation --set question=scaling --set target_sparsity=0.9   # target mode

One question per run (``question=``): ``which-norm``, ``where``, ``width``, ``activation``,
``scaling``, ``weight-decay``, ``binary-code``. Each trains the variants of its question
with several seeds through the ``sparse-ae`` experiment's own training
(:func:`actreg.lab.experiments.sparse_ae.train_variant`), or, for ``binary-code``, a small
classifier with a sigmoid bottleneck (:mod:`._binary`). It reports mean ± std over the
seeds and which differences exceed the seed-to-seed spread (``|mean difference| > 2 x
pooled std``; :mod:`._stats`), writes ``results.json``, ``progress.jsonl`` (one line per
trained model; rerunning with the same ``run_name`` and settings reuses them) and a
picture per question.

Defaults are the budget of docs/RESULTS.md (its ablations section): MNIST, 10,000 training images
(validation and test cut to 2,000 each), 3 epochs, a 256-unit code, a 3,000-example probe.

Target mode: ``--set target_sparsity=0.9`` (or ``target_l0=N``) runs every penalty on a ReLU
code under the lab's controller, so all penalized variants ask for the same sparsity
(``coef`` becomes the starting coefficient) and their dead units are revived
(``revive_rounds``, 5 by default; 0: none); penalties on codes without exact zeros keep
their fixed coefficient (see :mod:`._questions`), and which-norm runs no grid. Design:
target mode is an opt-in setting, not the default, as in every other lab experiment
(``target_sparsity=None``): the documented fixed-coefficient commands then reproduce their
tables as they are, and questions whose subject is the coefficient (the which-norm grid,
``scaling``'s "does the coefficient follow the scaling?") keep their meaning; the
target-mode reruns (docs/RESULTS.md, "Rerun in target mode") ask for it. ``binary-code``
refuses a target: its penalty acts on a sigmoid code, which has no zeros.

The probe standardizes each code unit (``probe_scaling=feature``), as when the documented
tables were made; ``sparse-ae`` has since moved to one global scale (``probe_scaling=global``,
docs/RESULTS.md "The probe, corrected"), which the ablations take as a setting.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from actreg._errors import ActregError
from actreg.lab._checks import check_choice
from actreg.lab.data.vision import SCALINGS
from actreg.lab.experiments._common import VisionConfig
from actreg.lab.experiments._config import to_dict
from actreg.lab.experiments._rundir import jsonable, save_results
from actreg.lab.experiments.ablations._ae import (
    AE_METRICS,
    DataCache,
    ae_config,
    measure_ae,
    set_threads,
)
from actreg.lab.experiments.ablations._binary import BINARY_METRICS, measure_binary
from actreg.lab.experiments.ablations._questions import (
    QUESTIONS,
    UNSTEERED_PENALTIES,
    Variant,
    choose,
    grid_variants,
    pairs_for,
    plan,
    target_label,
)
from actreg.lab.experiments.ablations._stats import SPREAD_FACTOR, aggregate, compare, fmt_mean_std
from actreg.lab.experiments.sparse_ae import SparseAEConfig
from actreg.lab.models import ACTIVATIONS

__all__ = ["QUESTIONS", "AblationConfig", "run", "summary_rows"]

SPREAD_RULE = (
    f"|mean difference| > {SPREAD_FACTOR:g} x pooled std, pooled std = "
    "sqrt((std_a^2 + std_b^2) / 2), sample stds over seeds; Welch p (scipy) alongside"
)


@dataclass
class AblationConfig(VisionConfig):
    """One ablation question; the sparse-AE settings are shared by all its variants."""

    POSITIVE: ClassVar[tuple[str, ...]] = (
        "code",
        "hidden",
        "widths",
        "binary_hidden",
    )  # >= 1, besides the base class's

    question: str = "which-norm"  # which-norm | where | width | activation | scaling | ...
    seeds: int = 3  # seeds seed, seed+1, ... (data split, init, batch order, probe)
    limit: int | None = 10000  # training images (val and test cut in proportion)
    epochs: int = 3  # passes over the training split
    code: int = 256  # code width of the autoencoder
    penalty: str = "l1"  # the activity penalty of where/width/activation/scaling/weight-decay
    coef: float = 0.003  # its coefficient (the which-norm grid's choice for l1)
    kl_coef: float = 0.003  # KL coefficient for activation's "sigmoid kl" (grid's choice)
    kl_target: float = 0.05  # KL target rate
    probe_size: int = 3000  # training codes for the linear probe
    probe_scaling: str = "feature"  # per-feature std: the documented tables' probe (or global)
    resample_dead: float = 0.0  # resample dead units (off: sparse-ae restores a resampled epoch)
    revive_floor: float = 0.0  # codes: rare units are kept (a floor cost probe accuracy here)
    unit_norm_decoder: bool = True  # unit-length decoder columns (as sparse-ae)
    zero_eps: float = 0.01  # near_zero counts |h| <= zero_eps
    norms: tuple[str, ...] = ("l1", "l2", "l1l2", "hoyer", "kl")  # which-norm's penalties
    grid: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)  # which-norm's grid
    grid_limit: int | None = None  # training images of the grid runs (None: limit)
    min_zeros: float = 0.8  # which-norm: best probe among coefs with near_zero >= this
    max_dead: float = 0.9  # which-norm: ... and at most this share of dead units
    hidden: int = 256  # where: the deeper AE is in-hidden-code-hidden-in
    widths: tuple[int, ...] = (64, 256, 1024, 2048)  # width: code widths
    activations: tuple[str, ...] = ("relu", "tanh", "sigmoid")  # activation: with `penalty`
    scalings: tuple[str, ...] = ("none", "standard", "feature", "minmax")  # scaling
    wd: float = 1e-3  # weight-decay: the weight decay (Adam's L2)
    binary_coefs: tuple[float, ...] = (0.0, 0.01, 0.1, 1.0)  # binary-code: Binary coefs
    binary_hidden: int = 256  # binary-code: hidden width before the bottleneck
    ref_width: int = 64  # binary-code: an unpenalized wider sigmoid bottleneck (0 = off)
    keep_checkpoints: bool = False  # keep every model's best checkpoint in the run folder

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("question", self.question, QUESTIONS)
        if self.seeds < 2:
            raise ActregError(f"seeds must be >= 2 (a spread needs two), got {self.seeds}")
        for name in ("norms", "grid", "widths", "activations", "scalings", "binary_coefs"):
            if not getattr(self, name):
                raise ActregError(f"{name} must not be empty")
        bad = [s for s in (self.scaling, *self.scalings) if s not in SCALINGS]
        bad += [a for a in self.activations if a not in ACTIVATIONS]
        if bad:
            raise ActregError(
                f"unknown scaling or activation {bad}; scalings: {SCALINGS}, "
                f"activations: {ACTIVATIONS}"
            )
        if any(c <= 0 or not math.isfinite(c) for c in self.grid):
            raise ActregError(f"grid coefficients must be positive, got {self.grid}")
        if any(c < 0 or not math.isfinite(c) for c in self.binary_coefs):
            raise ActregError(f"binary_coefs must be >= 0, got {self.binary_coefs}")
        if not (0 <= self.min_zeros <= 1 and 0 <= self.max_dead <= 1):
            raise ActregError(
                f"min_zeros and max_dead must lie in [0, 1], got {self.min_zeros}, {self.max_dead}"
            )
        self._check_target()
        # every variant's sparse-AE config must be valid before hours of training
        base = self.ae_base()
        if self.question != "binary-code":
            for v in _variants_for_check(self):
                ae_config(base, self.seed, v.change_dict())

    def _check_target(self) -> None:
        """Target mode needs a penalty that exact zeros can steer (the base class checked
        the target's range)."""
        if target_label(self) is None:
            return
        if self.question == "binary-code":
            raise ActregError(
                "binary-code's Binary penalty acts on a sigmoid code, which gives no exact "
                "zeros, so a target cannot steer it: drop target_sparsity/target_l0"
            )
        if self.question != "which-norm" and self.penalty in UNSTEERED_PENALTIES:
            raise ActregError(
                f"penalty={self.penalty} needs a sigmoid code, which gives no exact zeros, "
                "so a target cannot steer it: use a ReLU penalty (e.g. penalty=l1) or drop "
                "target_sparsity/target_l0"
            )

    def start_coefs(self) -> dict[str, float]:
        """Which-norm in target mode: each penalty's starting coefficient (``coef``; KL,
        which keeps a fixed coefficient, ``kl_coef``) in place of the grid's choice."""
        return {p: self.kl_coef if p == "kl" else self.coef for p in self.norms}

    def ae_base(self) -> SparseAEConfig:
        """The sparse-AE config every variant starts from."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(VisionConfig)}
        return SparseAEConfig(
            **shared,
            code=self.code,
            penalty=self.penalty,
            coef=self.coef,
            kl_target=self.kl_target,
            probe_size=self.probe_size,
            probe_scaling=self.probe_scaling,
            resample_dead=self.resample_dead,
            unit_norm_decoder=self.unit_norm_decoder,
            compare=False,
        )


def _variants_for_check(cfg: AblationConfig) -> list[Variant]:
    if cfg.question == "which-norm" and target_label(cfg) is not None:
        return plan(cfg, cfg.start_coefs())
    if cfg.question == "which-norm":
        return grid_variants(cfg) + plan(cfg, {p: cfg.grid[0] for p in cfg.norms})
    return plan(cfg)


_NOT_RESULTS = ("progress", "threads", "out_dir", "run_name", "keep_checkpoints", "overwrite")
"""Settings that do not change the numbers: a rerun with other values reuses progress.jsonl
(``overwrite=true`` starts it afresh: the way to retrain after a code change)."""


class _Runner:
    """Trains and measures variants, remembering each (variant settings, seed) once."""

    def __init__(self, cfg: AblationConfig, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.base = cfg.ae_base()
        self.data = DataCache()
        self.records: dict[str, dict[str, Any]] = {}
        self.log = run_dir / "progress.jsonl"
        header = {"config": jsonable(self._settings())}
        if self.log.exists() and not cfg.overwrite:
            lines = self.log.read_text().splitlines()
            if lines and json.loads(lines[0]) == header:
                for line in lines[1:]:
                    rec = json.loads(line)
                    self.records[rec["key"]] = rec["metrics"]
                return
        self.log.write_text(json.dumps(header) + "\n")

    def _settings(self) -> dict[str, Any]:
        return {k: v for k, v in to_dict(self.cfg).items() if k not in _NOT_RESULTS}

    def measure(self, v: Variant, seed: int, limit: int | None = None) -> dict[str, Any]:
        limit = self.cfg.limit if limit is None else limit
        key = json.dumps(jsonable([v.kind, v.changes, v.penalized, seed, limit]))
        if key in self.records:
            return self.records[key]
        changes = v.change_dict()
        keep = self.run_dir / "models" / f"{v.name.replace(' ', '_')}_s{seed}"
        folder = keep if self.cfg.keep_checkpoints else None
        if v.kind == "binary":
            cfg = ae_config(self.base, seed, {"limit": limit})
            width = changes["width"] or None
            metrics = measure_binary(
                self.data.get(cfg),
                changes["coef"],
                cfg.train_config(),
                self.cfg.binary_hidden,
                width,
                folder,
            )
        else:
            cfg = ae_config(self.base, seed, {"limit": limit, **changes})
            data = self.data.get(cfg)
            metrics = measure_ae(cfg, data, v.penalized, self.cfg.zero_eps, folder)
        self.records[key] = metrics
        with self.log.open("a") as fh:
            rec = {"key": key, "variant": v.name, "seed": seed, "metrics": metrics}
            fh.write(json.dumps(jsonable(rec)) + "\n")
        return metrics


def _grid(runner: _Runner, cfg: AblationConfig) -> tuple[list[dict[str, Any]], dict[str, float]]:
    rows: list[dict[str, Any]] = []
    chosen: dict[str, float] = {}
    for penalty in cfg.norms:
        sub = []
        for v in grid_variants(cfg):
            if v.group != penalty:
                continue
            m = runner.measure(v, cfg.seed, cfg.grid_limit)
            sub.append({"penalty": penalty, "coef": v.x, **{k: m[k] for k in AE_METRICS}})
        best = choose(sub, cfg.min_zeros, cfg.max_dead)
        best["chosen"] = True
        chosen[penalty] = best["coef"]
        rows += sub
    return rows, chosen


def run(cfg: AblationConfig) -> dict[str, Any]:
    """Run one question over the seeds; writes results.json, progress.jsonl and a picture."""
    from actreg.lab.experiments.ablations._plots import grid_plot, metric_panels

    set_threads(cfg.threads)
    start = time.perf_counter()
    name = cfg.run_name or f"{cfg.question}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.out_dir) / "ablation" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    runner = _Runner(cfg, run_dir)
    results: dict[str, Any] = {"question": cfg.question, "spread_rule": SPREAD_RULE}
    pictures: dict[str, str] = {}
    chosen = None
    target = target_label(cfg)
    if target is not None:
        results["target"] = target
    if cfg.question == "which-norm" and target is not None:
        results["chosen"] = chosen = cfg.start_coefs()  # starting values; no grid
    elif cfg.question == "which-norm":
        results["grid"], chosen = _grid(runner, cfg)
        results["chosen"] = chosen
        pictures["grid"] = str(grid_plot(results["grid"], run_dir / "grid.png", cfg.min_zeros))
    variants = plan(cfg, chosen)
    metrics = BINARY_METRICS if cfg.question == "binary-code" else AE_METRICS
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    per_seed = {v.name: [runner.measure(v, s) for s in seeds] for v in variants}
    agg = aggregate(per_seed, metrics)
    results.update(
        {
            "metrics": list(metrics),
            "seeds": seeds,
            "variants": [
                {"name": v.name, "penalized": v.penalized, "changes": v.change_dict()}
                for v in variants
            ],
            "per_seed": per_seed,
            "aggregate": agg,
            "comparisons": compare(agg, pairs_for(cfg, variants), metrics),
        }
    )
    shown = [m for m in metrics if m not in ("l0", "test_mse")]
    pictures["panels"] = str(
        metric_panels(
            agg, shown, run_dir / "panels.png", f"{cfg.question}: mean ± std, {len(seeds)} seeds"
        )
    )
    results["pictures"] = {k: os.path.relpath(v, run_dir) for k, v in pictures.items()}
    results["data"] = runner.data.first_info()
    results["seconds"] = time.perf_counter() - start
    save_results(run_dir, "ablation", cfg, results)
    return results


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant: mean ± std over the seeds of each metric."""
    rows = []
    for name, cells in results["aggregate"].items():
        row: dict[str, Any] = {"variant": name}
        for metric, cell in cells.items():
            row[metric] = fmt_mean_std(cell["mean"], cell["std"])
        rows.append(row)
    return rows
