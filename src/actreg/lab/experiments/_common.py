"""What the vision experiments share: the base config, target mode, training, probes.

Run folders and results files are in :mod:`actreg.lab.experiments._rundir`.

The linear probe (:func:`linear_probe`) centers each feature and divides every feature by
ONE scale, the root-mean-square of the centered training features, by default. The
per-feature standardization it used before (``scaling="feature"``) divides each feature by
its own standard deviation: on raw pixels that are almost constant in the training images
(MNIST-format borders: std down to 0.0002) it turns small test noise into huge features,
so the noisy-input accuracy of a probe on raw pixels measured mostly that amplification
(19% on MNIST). One global scale keeps the geometry of the features (what the probe is
meant to read) and still puts every representation on a comparable overall scale.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

import actreg
from actreg._errors import ActregError
from actreg.lab._checks import (
    check_choice,
    check_fields,
    check_fraction,
    check_out_dir,
    check_targets,
)
from actreg.lab.data import load_vision
from actreg.lab.data.vision import SCALINGS
from actreg.lab.experiments._rundir import resume_from
from actreg.lab.experiments._targets import MetricsFn, at_target, in_target_mode, target_miss
from actreg.lab.train import TrainConfig, evaluate, fit, seed_everything

__all__ = [
    "PROBE_SCALINGS",
    "VisionConfig",
    "classification_loss",
    "classification_metrics",
    "layer_coefs",
    "layer_penalties",
    "linear_probe",
    "target_ramp",
    "train_classifier",
]


REVIVE_FLOOR = 0.1  # the classifiers' revive_floor: units firing < this x the wanted rate revive


@dataclass
class VisionConfig:
    """Settings every vision experiment has. Subclasses add the model and the penalty."""

    POSITIVE: ClassVar[tuple[str, ...]] = (
        "epochs",
        "batch_size",
    )  # settings that must be >= 1 (counts, widths)

    data: str = "mnist"  # digits | mnist | a folder of IDX files
    data_dir: str | None = None  # default: $ACTREG_DATA or the user cache
    limit: int | None = None  # training examples to use (tiny runs); val and test cut in proportion
    scaling: str = "standard"  # standard | feature | minmax | none (see actreg.lab.data)
    val_size: float | None = None  # validation size (default per data set)
    seed: int = 0  # seeds data split, init and batch order
    epochs: int = 10  # passes over the training split
    batch_size: int = 128  # examples per step
    lr: float = 1e-3  # peak learning rate (cosine decay)
    optimizer: str = "adam"  # adam | adamw | sgd
    weight_decay: float = 0.0  # L2 on the weights
    warmup_steps: int = 0  # learning-rate warm-up steps
    penalty_warmup_steps: int = 0  # ramp the activity penalty in over these steps
    patience: int = 0  # early stopping patience in epochs (0 = off)
    out_dir: str = "runs"  # results go to OUT_DIR/EXPERIMENT/RUN_NAME
    run_name: str | None = None  # default: a timestamp
    overwrite: bool = False  # replace the results of an existing run_name
    resume: bool = False  # continue an interrupted run_name from its checkpoints
    progress: bool = True  # progress bars
    threads: int = 0  # torch threads (0 = chosen from the work: 1 for small models)
    target_sparsity: float | None = None  # ask for this zero fraction per penalized layer
    target_l0: float | None = None  # or for this many active units per example and layer
    revive_rounds: int | None = None  # dead-unit revivals over 70% of training (None: 5 if target)
    revive_floor: float = REVIVE_FLOOR  # target mode: revive units firing < this x wanted rate

    def __post_init__(self) -> None:
        check_targets(self.target_sparsity, self.target_l0)  # its own ranges come first
        if isinstance(self.limit, int) and not isinstance(self.limit, bool) and self.limit < 10:
            raise ActregError(f"limit must be >= 10 examples (or none for all), got {self.limit}")
        check_fields(self)  # types; numbers finite, not negative; POSITIVE >= 1
        check_fraction(self, "revive_floor")
        self.train_config()  # validates the training fields
        check_choice("scaling", self.scaling, SCALINGS)
        if self.val_size is not None and not (
            0 < self.val_size < 1 or (self.val_size > 1 and float(self.val_size).is_integer())
        ):
            raise ActregError(
                f"val_size is a fraction in (0, 1) or a whole count of examples (> 1), got "
                f"{self.val_size!r}; e.g. val_size=0.2 or val_size=5000"
            )

    def train_config(self, seed_offset: int = 0) -> TrainConfig:
        """The :class:`TrainConfig` these settings describe."""
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
            warmup_steps=self.warmup_steps,
            penalty_warmup_steps=self.penalty_warmup_steps,
            patience=self.patience,
            seed=self.seed + seed_offset,
            progress=self.progress,
            threads=self.threads,
        )

    def load_data(self) -> Any:
        """Check ``out_dir``, then load the configured data set (see
        :func:`actreg.lab.data.load_vision`)."""
        check_out_dir(self.out_dir)
        if self.threads:
            torch.set_num_threads(self.threads)
        return load_vision(
            self.data,
            data_dir=self.data_dir,
            val_size=self.val_size,
            seed=self.seed,
            scaling=self.scaling,
            limit=self.limit,
        )


RAMP_SHARE = 0.6
"""Share of training over which a target-mode layer's wanted sparsity ramps down to the
target from full activity (:func:`layer_penalties`)."""


def target_ramp(target_sparsity: float, steps: int, share: float = RAMP_SHARE) -> float:
    """The controller's ramp (nats per step) that brings the wanted sparsity from full
    activity down to ``target_sparsity`` over ``share`` (default :data:`RAMP_SHARE`) of
    ``steps``.

    Example:
        >>> round(target_ramp(0.9, 1000), 6)  # ln(10) / 600
        0.003838
        >>> round(target_ramp(0.9, 1000, share=0.2), 6)  # ln(10) / 200
        0.011513
    """
    return math.log(1 / (1 - target_sparsity)) / max(1.0, share * steps)


def layer_coefs(cfg: Any, names: list[str]) -> dict[str, float]:
    """Each penalized layer's coefficient: ``cfg.layer_coefs`` in the order of ``names``
    where the config has that setting and it is set, else ``cfg.coef`` for every layer (in
    target mode: the controllers' starting values).

    Example:
        >>> from types import SimpleNamespace as NS
        >>> layer_coefs(NS(coef=1e-4, layer_coefs=None), ["a", "b"])
        {'a': 0.0001, 'b': 0.0001}
        >>> layer_coefs(NS(coef=1e-4, layer_coefs=(2e-4, 6e-4)), ["a", "b"])
        {'a': 0.0002, 'b': 0.0006}
    """
    coefs = getattr(cfg, "layer_coefs", None)
    if coefs is None:
        return dict.fromkeys(names, cfg.coef)
    check_layer_coefs(coefs, len(names))  # the config checked it; a caller's namespace may not
    return dict(zip(names, coefs, strict=True))


def check_layer_coefs(coefs: tuple[float, ...] | None, layers: int, target: bool = False) -> None:
    """``layer_coefs`` is unset or has one coefficient per penalized layer; in target mode
    (``target``) each is a controller's start and must be > 0.

    Raises:
        ActregError: naming the count it needs and an example, or the zero start.
    """
    if coefs is None:
        return
    example = ",".join(["1e-4"] * layers)
    if len(coefs) != layers:
        raise ActregError(
            f"layer_coefs takes one coefficient per penalized layer ({layers}), in order, "
            f"got {len(coefs)}: {coefs!r}; e.g. layer_coefs={example}, or leave it unset "
            "for coef= on every layer"
        )
    if target and not all(c > 0 for c in coefs):
        raise ActregError(
            f"in target mode layer_coefs are the controllers' starting coefficients and "
            f"must be > 0, got {coefs!r}; e.g. layer_coefs={example}"
        )


def check_layer_settings(cfg: Any, layers: int) -> None:
    """A classifier's per-layer penalty settings, checked in its ``__post_init__``:
    ``ramp_share`` in [0, 1], ``layer_coefs`` (:func:`check_layer_coefs`; > 0 in target
    mode), and each coefficient valid for ``cfg.penalty``. (``lead``, like every number
    field, is refused negative or non-finite by the base class's ``check_fields``.)

    Raises:
        ActregError: naming the setting and the fix.
    """
    check_fraction(cfg, "ramp_share", high_open=False)
    check_layer_coefs(cfg.layer_coefs, layers, in_target_mode(cfg))
    for coef in cfg.layer_coefs or (cfg.coef,):
        actreg.make_penalty(cfg.penalty, coef)


def layer_penalties(
    names: list[str],
    make: Callable[[str], actreg.Penalty],
    cfg: Any,
    dim: int = -1,
    steps: int | None = None,
) -> dict[str, actreg.Penalty]:
    """A fresh penalty per layer from ``make(name)``; in target mode wrapped in a controller.

    With ``cfg.target_sparsity`` (or ``cfg.target_l0``) set, each layer's penalty becomes
    :class:`actreg.TargetSparsity` around it (``measure="l0"`` for ``target_l0``), whose
    coefficient follows the layer's measured sparsity; the penalty's own coefficient is
    the starting value. One object per layer: a controller counts its layer's steps.

    ``steps`` (the planned number of training steps) sets the controller's timing: the
    fade-in takes at most a tenth of the steps (the library's 50 in runs of 500 or more),
    and the wanted sparsity ramps down over :data:`RAMP_SHARE` of them (:func:`target_ramp`:
    ``ln(1 / (1 - target)) / (RAMP_SHARE * steps)``; from the first batch's ~50% zeros it
    reaches a 0.9 target after ~40% of training). The library's default ramp (0.02
    nats a step, a target reached in ~100 steps) forces the sparsity before the layer has
    learned its features: on MNIST's 3x1000 network at 0.9 the slow ramp gave 1.46 +- 0.13 %
    test error over three seeds against 1.56 +- 0.09 % (docs/TARGET.md, "The ramp").
    A config with a ``ramp_share`` setting chooses that share instead; 0 keeps the
    library's ramp (``cnn``'s default: the 3-epoch CNN's losses were lower with it,
    docs/TARGET.md, "Where target mode's cost lies"). ``lead`` and ``ahead`` settings are
    the controllers' look-ahead and wait (:class:`actreg.TargetSparsity`; defaults 0 and
    None, ``cnn``'s 0 and 0.5: docs/TARGET.md, "The ramp waits for the layer").
    """
    target_sparsity = getattr(cfg, "target_sparsity", None)
    target_l0 = getattr(cfg, "target_l0", None)
    share = getattr(cfg, "ramp_share", RAMP_SHARE)
    timing: dict[str, Any] = {
        "lead": getattr(cfg, "lead", 0.0),
        "ahead": getattr(cfg, "ahead", None),
    }
    if steps is not None:
        timing["warmup"] = max(1, min(50, steps // 10))
        if target_sparsity is not None and share > 0:  # ln(start / wanted) <= ln(1 / wanted)
            timing["ramp"] = target_ramp(target_sparsity, steps, share)
    out: dict[str, actreg.Penalty] = {}
    for name in names:
        penalty = make(name)
        if target_sparsity is not None:
            penalty = actreg.TargetSparsity(penalty, target=target_sparsity, dim=dim, **timing)
        elif target_l0 is not None:
            penalty = actreg.TargetSparsity(
                penalty, target=target_l0, measure="l0", dim=dim, **timing
            )
        out[name] = penalty
    return out


def planned_steps(n_train: int, cfg: Any) -> int:
    """Training steps of a run: batches per epoch times epochs."""
    return math.ceil(n_train / cfg.batch_size) * cfg.epochs


def warn_if_target_missed(stats: dict[str, dict[str, Any]], cfg: Any, steps: int) -> list[str]:
    """Warn (and return the layers) where the test split is off target
    (:func:`~actreg.lab.experiments._targets.target_miss`: a zero fraction more than 0.02
    from it, an L0 more than 10%): the controller had too few steps or too strong a task."""
    missed = []
    for name, st in stats.items():
        if not target_miss(cfg, st):
            continue
        if getattr(cfg, "target_sparsity", None) is not None:
            got, want = (
                f"{st['zero_fraction']:.3f} zeros",
                f"target_sparsity={cfg.target_sparsity:g}",
            )
        else:
            got, want = f"L0 {st['l0']:.1f}", f"target_l0={cfg.target_l0:g}"
        missed.append(name)
        warnings.warn(
            f"layer {name!r} ends at {got} on the test split, not {want}, after {steps} "
            "training steps; under Adam weights move about lr per step, so the controller "
            "needs more steps: raise epochs= or lower batch_size=",
            stacklevel=2,
        )
    return missed


REVIVE_UNTIL = 0.7  # revive dead units only in this first share of training
REVIVE_EXAMPLES = 5000  # training inputs a unit must be zero on to count as dead


def make_reviver(
    model: nn.Module,
    spec: dict[str, Any] | None,
    x_train: Tensor,
    cfg: Any,
    *,
    steps: int | None = None,
    examples: int = REVIVE_EXAMPLES,
    forward: Callable[[nn.Module, Tensor], Any] | None = None,
    batch_size: int = 2000,
    dim: int = -1,
) -> actreg.Reviver | None:
    """The :class:`actreg.Reviver` of a penalized model's layers (``None``: no revival).

    ``cfg.revive_rounds`` revivals (by default 5 in target mode, none otherwise) spread over
    the first 70% of training's ``steps`` (default: :func:`planned_steps` of ``x_train``),
    each on a fixed sample of up to ``examples`` rows of ``x_train``. In target mode a unit
    killed early (before its firing rate is known) would otherwise stay dead:
    docs/TARGET.md has the comparison. With ``target_sparsity`` the revived units start
    firing on its active share (``1 - target``) of the sample, as the live ones should
    (at bias 0, about half: on digits at 0.95 the controller then crushed them again); with
    ``target_l0`` on ``target_l0 / units`` of it, each layer's units counted along ``dim``.
    Units firing on less than ``cfg.revive_floor`` times that share are revived too (the
    Reviver's ``floor``; 0: only silent units): rare units that a held-out set a few times
    smaller than the sample sees as dead. :data:`REVIVE_FLOOR` in the vision classifiers
    (sparse-rectifier, cnn); 0 in sparse-ae, the ablations and lstm-lm, where reviving rare
    code units cost probe accuracy or was not measured (docs/TARGET.md, "A firing floor
    for revival").
    ``forward`` and ``batch_size`` go to the Reviver (how to run a model not called as
    ``model(batch)``, and rows per forward).
    """
    rounds = getattr(cfg, "revive_rounds", None)
    if rounds is None:
        rounds = 5 if in_target_mode(cfg) else 0
    if not spec or rounds == 0:
        return None
    total = planned_steps(len(x_train), cfg) if steps is None else steps
    until = max(1, int(REVIVE_UNTIL * total))
    gen = torch.Generator().manual_seed(cfg.seed)
    sample = x_train[torch.randperm(len(x_train), generator=gen)[:examples]]
    rate: float | dict[str, float] | None = None
    if getattr(cfg, "target_sparsity", None) is not None:
        rate = 1.0 - cfg.target_sparsity
    elif getattr(cfg, "target_l0", None) is not None:
        widths = _widths(model, list(spec), sample[:2], forward, dim)
        if all(cfg.target_l0 < w for w in widths.values()):  # else the controller refuses
            rate = {name: cfg.target_l0 / w for name, w in widths.items()}
    share = getattr(cfg, "revive_floor", REVIVE_FLOOR)
    floor: float | dict[str, float] = 0.0
    if isinstance(rate, dict):
        floor = {name: revive_floor(r, share) for name, r in rate.items()}
    elif rate is not None:
        floor = revive_floor(rate, share)
    return actreg.Reviver(
        model, list(spec), sample, every=max(1, until // rounds), until=until,
        forward=forward, batch_size=batch_size, rate=rate, floor=floor,
    )  # fmt: skip


def revive_floor(rate: float, share: float = REVIVE_FLOOR) -> float:
    """The firing rate under which a live unit is revived with the silent ones: ``share``
    of the wanted rate ``rate`` (:data:`REVIVE_FLOOR`, a tenth, in the vision classifiers).

    Example:
        >>> round(revive_floor(0.1), 6)
        0.01
    """
    return share * rate


def _widths(
    model: nn.Module,
    names: list[str],
    x: Tensor,
    forward: Callable[[nn.Module, Tensor], Any] | None,
    dim: int,
) -> dict[str, int]:
    """Units along ``dim`` of each module ``names``'s output on the inputs ``x`` (the
    length of its :class:`actreg.Monitor` firing rates)."""
    was_training = model.training
    model.eval()
    try:
        with actreg.Monitor(model, names, dim=dim) as monitor, torch.no_grad():
            model(x) if forward is None else forward(model, x)
            stats = monitor.compute()
    finally:
        model.train(was_training)
    return {name: len(s["firing_rate"]) for name, s in stats.items()}


def train_classifier(
    model: nn.Module,
    data: Any,
    cfg: VisionConfig,
    *,
    spec: dict[str, Any] | None,
    watch: list[str],
    run_dir: Path,
    name: str,
    dim: int = -1,
    stop_after: int = 0,
) -> dict[str, Any]:
    """Train a classifier with the penalties ``spec`` (None: none) and measure ``watch``.

    ``stop_after`` stops after that many epochs of the run's schedule (a pilot,
    :func:`pilot_coefs`); such a run does not warn that a layer is off target.

    Returns :func:`actreg.lab.train.fit`'s history plus ``test_error``, ``test_loss`` and
    ``layers`` (the Monitor's statistics of the watched layers on the test split). In
    target mode the penalized model keeps the best epoch on the target (``target_error``,
    see :mod:`actreg.lab.experiments._targets`).
    """
    monitor = actreg.Monitor(model, watch, dim=dim)
    reviver = make_reviver(model, spec, data.x_train, cfg, dim=dim)
    metrics_fn: MetricsFn = classification_metrics
    objective = "error"
    if spec is not None and in_target_mode(cfg):
        metrics_fn, objective = at_target(metrics_fn, cfg, watch, dim), "target_error"
    try:
        out = fit(
            model,
            (data.x_train, data.y_train),
            (data.x_val, data.y_val),
            loss_fn=classification_loss,
            metrics_fn=metrics_fn,
            objective=objective,
            cfg=replace(cfg.train_config(), stop_after=stop_after),
            spec=spec,
            monitor=monitor,
            run_dir=run_dir / name.replace(" ", "_"),
            resume=resume_from(cfg, run_dir / name.replace(" ", "_")),
            reviver=reviver,
            desc=name,
        )
        if reviver is not None:
            out["revived_units"] = reviver.revived
        monitor.reset()
        test = evaluate(model, data.x_test, data.y_test, classification_metrics)
        out["layers"] = monitor.compute()
        if spec and not stop_after:
            penalized = {k: v for k, v in out["layers"].items() if k in spec}
            out["target_missed"] = warn_if_target_missed(penalized, cfg, out["steps"])
    finally:
        monitor.remove()
    out["test_error"] = test["error"]
    out["test_loss"] = test["loss"]
    return out


def pilot_coefs(
    build: Callable[[dict[str, float]], tuple[nn.Module, dict[str, actreg.Penalty]]],
    coefs: dict[str, float],
    data: Any,
    cfg: Any,
    *,
    run_dir: Path,
    dim: int = -1,
) -> dict[str, float]:
    """Each controller's coefficient after the run's first ``cfg.pilot_epochs`` epochs.

    ``build(coefs)`` gives a fresh model and its target-mode penalties started at
    ``coefs``. The pilot trains them as the real run would (same seed, batches,
    learning-rate schedule, controller timing and revivals) for ``cfg.pilot_epochs``
    epochs, in ``run_dir / "pilot"``, and returns where each controller's coefficient
    ended: the real run's start. A controller started at a fixed coefficient spends
    its first ~100 steps finding it, and on Fashion-MNIST's CNN that start cost most of
    the gap to grid-searched coefficients (docs/TARGET.md, "The ramp waits for the
    layer"); the pilot measures the start on the data at hand, for one epoch's cost.
    """
    seed_everything(cfg.seed)
    model, spec = build(coefs)
    train_classifier(
        model,
        data,
        cfg,
        spec=spec,
        watch=list(spec),
        run_dir=run_dir,
        name="pilot",
        dim=dim,
        stop_after=cfg.pilot_epochs,
    )
    return {name: float(penalty.coef) for name, penalty in spec.items()}


def classification_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy of the model's logits."""
    return nn.functional.cross_entropy(model(x), y)


def classification_metrics(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
    """Loss and error rate."""
    logits = model(x)
    return {
        "loss": float(nn.functional.cross_entropy(logits, y)),
        "error": float((logits.argmax(1) != y).float().mean()),
    }


@torch.no_grad()
def features(fn: Any, x: Tensor, batch_size: int = 2000) -> np.ndarray:
    """``fn`` applied to ``x`` in batches, as a float64 NumPy array."""
    parts = [
        fn(x[i : i + batch_size]).reshape(min(batch_size, len(x) - i), -1)
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(parts).double().numpy()


PROBE_SCALINGS = ("global", "feature")
PROBE_ONE_THREAD = 5e7  # examples x features x classes under which the probe uses one thread


def linear_probe(
    train: tuple[np.ndarray, np.ndarray],
    tests: dict[str, tuple[np.ndarray, np.ndarray]],
    seed: int = 0,
    max_iter: int = 500,
    scaling: str = "global",
) -> dict[str, float]:
    """Accuracy of a scikit-learn logistic regression per test set.

    Features are centered with the training means, then divided by one global scale (the
    RMS of the centered training features; ``scaling="global"``) or each by its own
    standard deviation (``scaling="feature"``, scikit-learn's ``StandardScaler``).
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler
    from threadpoolctl import threadpool_limits

    if scaling not in PROBE_SCALINGS:
        raise ActregError(f"unknown probe scaling {scaling!r}; use one of {PROBE_SCALINGS}")
    x_train, y_train = train
    x_train = np.asarray(x_train, dtype=np.float64)
    if scaling == "global":
        mean = x_train.mean(axis=0)
        scale = float(np.sqrt(((x_train - mean) ** 2).mean())) or 1.0
        scaler = FunctionTransformer(lambda x: (np.asarray(x, dtype=np.float64) - mean) / scale)
    else:
        scaler = StandardScaler()
    probe = make_pipeline(scaler, LogisticRegression(max_iter=max_iter, random_state=seed))
    # BLAS and OpenMP pools spin while they wait: on a busy 2-core machine a small probe
    # took 5.5 s with two threads and 0.2 s with one. Large probes keep the pools.
    small = x_train.size * (len(np.unique(y_train)) or 1) < PROBE_ONE_THREAD
    with threadpool_limits(1 if small else None), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(x_train, y_train)
        return {name: float(probe.score(x, y)) for name, (x, y) in tests.items()}
