"""``sparse-ae``: an overcomplete autoencoder with a sparsity penalty on its code.

Usage::

    actreg run sparse-ae --set data=mnist                   # the documented MNIST run
    actreg run sparse-ae --set target_sparsity=0.95         # ask for a sparsity instead
    actreg run sparse-ae --set code_type=topk --set l0=40   # TopK + AuxK, 40 units active
    actreg run sparse-ae --set l0=40 --set variants=relu,relu-target,topk,batchtopk,jumprelu

Trains the same autoencoder with and without the penalty on ``encoder.code`` and reports
reconstruction error, code sparsity (zero fraction, L0, dead units), and the accuracy of a
linear probe (logistic regression) on the codes, on clean and on noisy test inputs, next
to the same probe on the raw inputs. ``code_type`` chooses the sparse code (ReLU with a
penalty, TopK, BatchTopK, JumpReLU; see :mod:`._ae_codes`), ``l0`` its number of active
units, and ``variants`` trains several methods at that ``l0`` for one table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar, NotRequired, TypedDict, cast

import torch
from torch import Tensor, nn

import actreg
from actreg._errors import ActregError
from actreg.lab._checks import check_choice, check_fraction
from actreg.lab.experiments import _ae_codes
from actreg.lab.experiments._common import (
    PROBE_SCALINGS,
    VisionConfig,
    features,
    linear_probe,
    make_reviver,
)
from actreg.lab.experiments._contract import best_epoch_metrics, layer_means
from actreg.lab.experiments._rundir import make_run_dir, resume_from, save_results
from actreg.lab.models import ACTIVATIONS, Autoencoder
from actreg.lab.train import evaluate, fit, seed_everything

__all__ = [
    "AEVariant",
    "SparseAEConfig",
    "SparseAEResults",
    "build_penalty",
    "run",
    "search_metrics",
    "variant_configs",
]

WHERE = ("code", "encoder", "all")


@dataclass
class SparseAEConfig(VisionConfig):
    """The sparse autoencoder experiment (defaults: the 14-epoch MNIST run of docs/RESULTS.md).

    That run's settings are the defaults: L1 0.002 on the code, Adam 3e-4, 14 epochs, dead
    units resampled after each epoch of the first 95% of training, a probe on 20,000 codes.
    The code types and ``l0`` are described in :mod:`actreg.lab.experiments._ae_codes`.

    Example:
        >>> SparseAEConfig(code_type="topk", l0=40).code_type
        'topk'
        >>> SparseAEConfig(code_type="topk", l0=2000)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        actreg._errors.ActregError: an L0 of 2000 active units is not sparse in a code of 1024...
    """

    POSITIVE: ClassVar[tuple[str, ...]] = ("code", "hidden")  # >= 1, besides the base class's
    epochs: int = 14  # passes over the training split
    lr: float = 3e-4  # peak learning rate (cosine decay); 1e-3 kills most code units

    code: int = 1024  # code width (overcomplete when above the input size)
    hidden: tuple[int, ...] = ()  # encoder hidden widths (mirrored in the decoder)
    act: str = "relu"  # activation of every layer incl. the code
    penalty: str = "l1"  # l1 | l2 | l1l2 | log | hoyer | hoyer_square | kl | binary | decov
    coef: float = 0.002  # the penalty's coefficient (Keras scaling: sum / batch)
    kl_target: float = 0.05  # target rate for penalty=kl
    where: str = "code"  # code | encoder (every encoder activation) | all (and decoder)
    code_type: str = "relu"  # relu (penalty) | topk | batchtopk (both + AuxK) | jumprelu
    l0: float | None = None  # active code units: k of topk/batchtopk, target_l0 of relu/jumprelu
    topk: int = 0  # k of code_type=topk|batchtopk when l0 is not set (0 = l0)
    k_aux: int = 0  # AuxK's dead latents per example (topk, batchtopk; 0 = half the input)
    aux_dead_after: int = 10000  # examples without firing = dead (AuxK, JumpReLU; <= 1 epoch)
    jump_bandwidth: float = 0.5  # JumpReLU's estimator width, x the pre-activations' RMS
    jump_lr: float = 30.0  # JumpReLU thresholds' learning rate, x lr
    variants: tuple[str, ...] = ()  # several methods at l0: relu,relu-target,topk,batchtopk,...
    unit_norm_decoder: bool = True  # decoder columns renormalized to unit length each step
    resample_dead: float = 0.95  # relu, jumprelu: resample dead units after early epochs (0: off)
    revive_floor: float = 0.0  # target mode's step-wise revival keeps rare code units
    compare: bool = True  # also train the same model without the penalty
    probe_size: int = 20000  # training examples for the linear probe (0 = the whole split)
    noise: float = 0.5  # Gaussian noise on test inputs for the robustness probe (x input std)
    probe_scaling: str = "global"  # global (one scale) | feature (per-feature std, the old probe)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("act", self.act, ACTIVATIONS)
        check_choice("where", self.where, WHERE)
        check_choice("probe_scaling", self.probe_scaling, PROBE_SCALINGS)
        check_fraction(self, "resample_dead", high_open=False)
        if self.topk > self.code:
            raise ActregError(
                f"topk={self.topk} keeps more units than the code has (code={self.code}); "
                f"use topk <= {self.code}, or 0 for no TopK"
            )
        build_penalty(self)
        _ae_codes.check_code(self)
        if len(set(self.variants)) != len(self.variants):
            raise ActregError(f"variants lists a method twice: {self.variants}")
        if any(v != "relu" for v in self.variants) and self.l0 is None:
            raise ActregError(
                f"variants={','.join(self.variants)} compares methods at one L0: set l0= "
                "(active units per example, e.g. l0=40)"
            )
        for name in self.variants:
            _ae_codes.variant_config(self, name)  # a name out of VARIANTS raises


def build_penalty(cfg: SparseAEConfig) -> actreg.Penalty:
    """The configured penalty object."""
    if cfg.penalty == "kl":
        return actreg.KLSparsity(cfg.coef, target=cfg.kl_target)
    if cfg.penalty == "l1l2":
        return actreg.L1L2(l1=cfg.coef, l2=cfg.coef)
    return actreg.make_penalty(cfg.penalty, cfg.coef)


def _targets(cfg: SparseAEConfig) -> list[str]:
    if cfg.where == "code":
        return ["encoder.code"]
    names = [f"encoder.act{i}" for i in range(1, len(cfg.hidden) + 1)] + ["encoder.code"]
    if cfg.where == "all":
        names += [f"decoder.act{i}" for i in range(1, len(cfg.hidden) + 1)]
    return names


def _metrics(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
    return {"mse": float(nn.functional.mse_loss(model(x), x))}


def train_variant(
    cfg: SparseAEConfig, data: Any, penalized: bool, run_dir: Any, name: str
) -> tuple[Autoencoder, dict[str, Any]]:
    """Train one autoencoder; returns it and its results (history, test MSE, sparsity).

    Unpenalized (``penalized=False``), the model is the plain ReLU autoencoder of ``cfg``
    whatever its ``code_type``.
    """
    if not penalized:
        cfg = _ae_codes.variant_config(cfg, "relu")
    seed_everything(cfg.seed)
    model = _ae_codes.build_model(cfg, data.x_train.shape[1])
    monitor = actreg.Monitor(model, "encoder.code")
    resampled: list[int] = []
    probe_x = data.x_train[torch.randperm(len(data.x_train))[:10000]]
    _ae_codes.init_code(model, cfg, probe_x)
    make = lambda: build_penalty(cfg)  # noqa: E731
    spec = _ae_codes.code_penalties(cfg, model, _targets(cfg), make) if penalized else None
    loss_fn, aux = _ae_codes.loss_fn(cfg, model, len(data.x_train))
    after_step = _ae_codes.AfterStep(cfg, model, len(data.x_train))
    # Dead code units: the epoch-end resampling below (resample_dead, the documented runs'
    # choice) takes precedence; with resample_dead=0 a ReLU code in target mode
    # (target_sparsity/target_l0) gets the lab's step-wise revival (revive_rounds) instead.
    stepwise = cfg.code_type == "relu" and cfg.resample_dead == 0
    reviver = make_reviver(model, spec, data.x_train, cfg) if stepwise else None
    revival = reviver is None and cfg.resample_dead > 0 and cfg.code_type in _ae_codes.REVIVED_CODES
    metrics_fn, objective = _ae_codes.selection(cfg) if penalized else (_metrics, "mse")

    def resample(epoch: int) -> None:
        # Dead code units point at badly reconstructed inputs (a fresh row of the live
        # rows' norm behind hidden encoder layers), then the decoder is renormalized.
        if epoch <= cfg.resample_dead * cfg.epochs:
            init, scale = ("fresh", 1.0) if cfg.hidden else ("resample", 0.2)
            revived = actreg.revive(model, "encoder.code", probe_x, init=init, scale=scale)
            model.normalize_decoder()
            _ae_codes.init_code(model, cfg, probe_x, revived)  # a JumpReLU's thresholds
            after_step.sync()
            resampled.append(len(revived))

    out = fit(
        model,
        (data.x_train, data.y_train),
        (data.x_val, data.y_val),
        loss_fn=loss_fn,
        metrics_fn=metrics_fn,
        objective=objective,
        cfg=cfg.train_config(),
        spec=spec,
        monitor=monitor,
        run_dir=run_dir / name,
        resume=resume_from(cfg, run_dir / name),
        after_step=after_step,
        after_epoch=resample if revival else None,
        reviver=reviver,
        desc=name,
    )
    after_step.close()
    if reviver is not None:
        out["revived_units"] = reviver.revived
    monitor.reset()
    test = evaluate(model, data.x_test, data.y_test, _metrics)
    stats = monitor.compute()["encoder.code"]
    monitor.remove()
    out["resampled_units"] = resampled
    if aux is not None:  # latents AuxK counted as dead at the end of training
        out["aux_dead_fraction"] = float(aux.dead.float().mean())
    out["test_mse"] = test["mse"]
    out["code"] = stats
    return model, out


class AEVariant(TypedDict):
    """One trained autoencoder in :class:`SparseAEResults`."""

    history: list[dict[str, Any]]  # per-epoch rows of actreg.lab.train.fit
    best_epoch: int  # the epoch whose weights were kept (1-based)
    steps: int
    seconds: float
    resampled_units: list[int]  # dead units resampled after each early epoch (relu)
    revived_units: NotRequired[dict[str, int]]  # target mode: units the reviver revived per layer
    test_mse: float
    code: dict[str, Any]  # the Monitor's statistics of encoder.code on the test split
    aux_dead_fraction: NotRequired[float]  # topk, batchtopk: latents AuxK counts dead at the end
    probe: dict[str, float]  # linear-probe accuracy on the code: clean, noisy


class SparseAEResults(TypedDict):
    """What :func:`run` returns and writes to ``results.json`` (after the config)."""

    raw_probe: dict[str, float]  # the same probe on the raw inputs: clean, noisy
    variants: dict[str, AEVariant]  # the penalized variant(s) first, then "none"
    pictures: dict[str, str]
    data: dict[str, Any]
    run_dir: str


def search_metrics(results: SparseAEResults) -> dict[str, float]:
    """A search trial's metrics: the penalized (first) variant's validation and test MSE,
    probe errors (1 - accuracy) and code sparsity.

    Example:
        >>> out = {"history": [{"val_mse": 0.02}], "best_epoch": 1, "test_mse": 0.03,
        ...        "probe": {"clean": 0.75, "noisy": 0.5}, "code": {"zero_fraction": 0.8}}
        >>> search_metrics({"variants": {"l1 0.01": out}})  # doctest: +NORMALIZE_WHITESPACE
        {'val_mse': 0.02, 'test_mse': 0.03, 'probe_error': 0.25, 'noisy_probe_error': 0.5,
         'zero_fraction': 0.8}
    """
    out = next(iter(results["variants"].values()))
    return {
        **best_epoch_metrics(out),
        "probe_error": 1 - out["probe"]["clean"],
        "noisy_probe_error": 1 - out["probe"]["noisy"],
        **layer_means({"code": out["code"]}),
    }


def variant_configs(cfg: SparseAEConfig) -> dict[str, tuple[SparseAEConfig, bool]]:
    """``{label: (config, penalized)}`` of the models a run trains, in order: the configured
    code (or each of ``variants``), then ``"none"`` (the plain ReLU model) with ``compare``.

    Example:
        >>> list(variant_configs(SparseAEConfig(l0=40, variants=("relu", "topk"))))
        ['l1 0.002', 'topk k=40', 'none']
    """
    configs = [_ae_codes.variant_config(cfg, v) for v in cfg.variants] or [cfg]
    out = {_ae_codes.label(c): (c, True) for c in configs}
    if cfg.compare:
        out["none"] = (_ae_codes.variant_config(cfg, "relu"), False)
    return out


def run(cfg: SparseAEConfig) -> SparseAEResults:
    """Run the experiment; writes ``results.json`` and pictures into the run folder."""
    data = cfg.load_data()
    run_dir = make_run_dir(cfg, "sparse-ae")
    variants = variant_configs(cfg)
    n_probe = cfg.probe_size or len(data.x_train)
    gen = torch.Generator().manual_seed(cfg.seed)
    noisy = data.x_test + cfg.noise * data.x_train.std() * torch.randn(
        data.x_test.shape, generator=gen
    )
    raw = linear_probe(
        (data.x_train[:n_probe].numpy(), data.y_train[:n_probe].numpy()),
        {
            "clean": (data.x_test.numpy(), data.y_test.numpy()),
            "noisy": (noisy.numpy(), data.y_test.numpy()),
        },
        seed=cfg.seed,
        scaling=cfg.probe_scaling,
    )
    results: dict[str, Any] = {"raw_probe": raw, "variants": {}}
    models: dict[str, Autoencoder] = {}
    for name, (vcfg, penalized) in variants.items():
        model, out = train_variant(vcfg, data, penalized, run_dir, name.replace(" ", "_"))
        model.eval()
        codes = {
            "train": features(model.encode, data.x_train[:n_probe]),
            "clean": features(model.encode, data.x_test),
            "noisy": features(model.encode, noisy),
        }
        out["probe"] = linear_probe(
            (codes["train"], data.y_train[:n_probe].numpy()),
            {
                "clean": (codes["clean"], data.y_test.numpy()),
                "noisy": (codes["noisy"], data.y_test.numpy()),
            },
            seed=cfg.seed,
            scaling=cfg.probe_scaling,
        )
        results["variants"][name] = out
        models[name] = model
    results["pictures"] = _pictures(run_dir, data, models, results)
    results["data"] = data.info
    save_results(run_dir, "sparse-ae", cfg, results)
    return cast(SparseAEResults, results)


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant (plus the raw-input probe) for tables."""
    rows = [
        {
            "variant": "raw inputs",
            "test_mse": None,
            "zero_fraction": None,
            "l0": None,
            "dead_fraction": None,
            "probe_acc": results["raw_probe"]["clean"],
            "noisy_probe_acc": results["raw_probe"]["noisy"],
        }
    ]
    for name, out in results["variants"].items():
        rows.append(
            {
                "variant": name,
                "test_mse": out["test_mse"],
                "zero_fraction": out["code"]["zero_fraction"],
                "l0": out["code"]["l0"],
                "dead_fraction": out["code"]["dead_fraction"],
                "probe_acc": out["probe"]["clean"],
                "noisy_probe_acc": out["probe"]["noisy"],
            }
        )
    return rows


def _pictures(
    run_dir: Any, data: Any, models: dict[str, Autoencoder], results: dict[str, Any]
) -> dict[str, str]:
    from actreg.lab import plots

    shape = data.image_shape
    pics: dict[str, str] = {}
    sample = data.x_test[:10]
    rows = [sample]
    with torch.no_grad():
        for model in models.values():
            rows.append(model(sample))
    pics["reconstructions"] = str(
        plots.feature_tiles(
            torch.cat(rows),
            shape,
            run_dir / "reconstructions.png",
            ncols=10,
            max_features=10 * len(rows),
            title="test images (top row), then reconstructions: " + ", ".join(models),
        )
    )
    for name, model in models.items():
        slug = name.replace(" ", "_")
        weights = model.code_decoder.weight.detach().T
        pics[f"features_{slug}"] = str(
            plots.feature_tiles(
                weights,
                shape,
                run_dir / f"features_{slug}.png",
                ncols=10,
                title=f"decoder features of the first 100 code units ({name})",
            )
        )
    rates = {name: out["code"]["firing_rate"] for name, out in results["variants"].items()}
    pics["firing_rates"] = str(plots.firing_rates(rates, run_dir / "firing_rates.png"))
    return {k: os.path.relpath(v, run_dir) for k, v in pics.items()}  # the folder may move
