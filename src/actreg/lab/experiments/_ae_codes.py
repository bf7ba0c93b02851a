"""The sparse autoencoder's code types (``sparse-ae``'s ``code_type``) and its comparison.

* ``relu``: a ReLU code and the configured penalty (L1 by default) at ``coef``, dead units
  resampled after early epochs (:func:`actreg.revive`); with ``l0`` the penalty runs in
  target mode (:class:`actreg.TargetSparsity`, ``measure="l0"``).
* ``topk``: ReLU, then the ``k`` largest units per example (Gao et al. 2024), with the
  auxiliary loss on dead latents (:class:`actreg.AuxK`, coefficient 1/32); no penalty.
* ``batchtopk``: the ``k * batch`` largest values of the batch (Bussmann et al. 2024), its
  running threshold at evaluation (:class:`actreg.BatchTopK`), with AuxK; no penalty.
* ``jumprelu``: a learned threshold per unit (Rajamanoharan et al. 2024), its L0 trained
  through the straight-through estimator (:class:`actreg.JumpReLU`'s ``penalty``) at
  ``coef``; with ``l0`` that penalty runs in target mode. Dead units resampled as relu's.

``l0`` is the one setting of the equal-L0 comparison: the ``k`` of topk and batchtopk,
``target_l0`` of relu and jumprelu. ``variants=`` trains several methods at that ``l0``
in one run (:data:`VARIANTS`), each measured and probed the same way.

Design choices:

* The codes of the papers that tie their initialization (TopK, BatchTopK, JumpReLU) start
  with the encoder as the decoder's transpose (:func:`actreg.tie_init`, after the decoder
  columns are set to unit length); ``relu`` keeps today's independent initialization, so
  its documented runs reproduce.
* Dead units: relu resamples them (its documented runs); topk and batchtopk use AuxK, as
  their papers, and no resampling. A latent is dead for AuxK when it has not fired for
  ``aux_dead_after`` examples, capped at one pass over the training split so that a small
  data set gets the mechanism too. jumprelu is resampled like relu, and a resampled
  unit's threshold is set again at the target's quantile (next point); without that, a
  unit whose pre-activations all fall under its threshold gets no gradient at all (the
  estimator only sees pre-activations near the threshold) and stays dead. Between
  revivals, the threshold of a unit silent for ``aux_dead_after`` examples comes down by
  one full threshold step per training step until the unit fires again (MNIST, 20,000
  images, 3 epochs, l0=40: 27% dead without this, 18% with it; digits unchanged).
* JumpReLU's thresholds. Under Adam a step moves a log threshold by about the learning
  rate, and the encoder moves the pre-activations much faster: with the model's rate the
  code's L0 ran away from its target (digits, 64 units, l0=8: 15.7 against 8). Each
  threshold step is therefore scaled by ``jump_lr`` (30: the same, under Adam, as a
  parameter group at 30x the rate). Adam also turns rare gradients into large steps, and
  the estimator's gradient is rare when its kernel is narrow: a kernel of 0.05 x the
  pre-activations' RMS left 27% of those units dead and missed the target by 10%, one of
  0.5 x RMS hit it (L0 8.3) with none dead (one seed; 0.2: L0 8.0, 3% dead). With a target
  (``l0`` or ``target_sparsity``) each threshold starts at the quantile of its unit's
  pre-activations (on 2,000 training examples) that gives the target, so the code starts
  at its L0 with every unit firing (the paper's 1e-3 would need tens of thousands of
  steps to reach the code's scale). The kernel width is ``jump_bandwidth`` x the RMS of
  the pre-activations at initialization: it scales with the data, not with a constant.
* AuxK's loss is part of the training loss (``train_task_loss`` in the history); the
  validation and test MSE are the reconstruction's alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

import actreg
from actreg._errors import ActregError
from actreg.lab.experiments._common import layer_penalties
from actreg.lab.experiments._targets import in_target_mode, target_miss
from actreg.lab.models import Autoencoder, activation

__all__ = [
    "AUXK_CODES",
    "CODE_TYPES",
    "REVIVED_CODES",
    "VARIANTS",
    "AfterStep",
    "build_model",
    "check_code",
    "code_k",
    "code_penalties",
    "code_target",
    "init_code",
    "label",
    "loss_fn",
    "selection",
    "variant_config",
]

CODE_TYPES = ("relu", "topk", "batchtopk", "jumprelu")
TOPK_CODES = ("topk", "batchtopk")
AUXK_CODES = ("topk", "batchtopk")  # trained with AuxK on dead latents
REVIVED_CODES = ("relu", "jumprelu")  # dead units resampled after early epochs
VARIANTS = ("relu", "relu-target", "topk", "batchtopk", "jumprelu")
"""The methods ``variants=`` can compare: ``relu`` at ``coef``, the others at ``l0``."""
THRESHOLD_SAMPLE = 2000  # training examples that set JumpReLU's initial thresholds
OFF_TARGET = 1e3  # the selection MSE of an epoch off target: OFF_TARGET * (1 + its miss)


def code_k(cfg: Any) -> float | None:
    """The code's L0 setting: ``k`` for topk/batchtopk, ``target_l0`` for relu/jumprelu.

    Example:
        >>> from types import SimpleNamespace as C
        >>> code_k(C(code_type="topk", l0=None, topk=32, target_l0=None))
        32
    """
    if cfg.code_type in TOPK_CODES:
        return cfg.l0 if cfg.l0 is not None else (cfg.topk or None)
    return cfg.l0 if cfg.l0 is not None else cfg.target_l0


def check_code(cfg: Any) -> None:
    """Validate the code settings of a sparse-AE config (raises :class:`ActregError`)."""
    if cfg.code_type not in CODE_TYPES:
        raise ActregError(f"unknown code_type={cfg.code_type!r}; use one of {CODE_TYPES}")
    if cfg.l0 is not None and not cfg.l0 > 0:
        raise ActregError(f"l0 is a number of active code units > 0 (e.g. 40), got {cfg.l0!r}")
    if cfg.topk < 0:
        raise ActregError(f"topk is the k of code_type=topk (>= 1; 0 = off), got {cfg.topk}")
    if cfg.topk and cfg.code_type not in TOPK_CODES:
        raise ActregError(
            f"topk={cfg.topk} is the k of code_type=topk or batchtopk, but code_type="
            f"{cfg.code_type!r}; set code_type=topk (or l0= for any code type)"
        )
    if cfg.l0 is not None and cfg.topk and cfg.l0 != cfg.topk:
        raise ActregError(f"l0={cfg.l0:g} and topk={cfg.topk} disagree; set only l0")
    if cfg.l0 is not None and in_target_mode(cfg):
        raise ActregError(
            "l0 sets the code's target (k or target_l0): leave target_l0 and target_sparsity "
            "unset, or drop l0"
        )
    for name in ("k_aux", "aux_dead_after"):
        if getattr(cfg, name) < 0:
            raise ActregError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if not cfg.jump_lr > 0:
        raise ActregError(f"jump_lr must be > 0 (a factor of lr, e.g. 30), got {cfg.jump_lr!r}")
    if not cfg.jump_bandwidth > 0:
        raise ActregError(f"jump_bandwidth must be > 0 (e.g. 0.05), got {cfg.jump_bandwidth!r}")
    k = code_k(cfg)
    if k is not None and k >= cfg.code:
        raise ActregError(
            f"an L0 of {k:g} active units is not sparse in a code of {cfg.code} units: "
            f"ask for fewer (l0 < code) or widen the code (code=)"
        )
    if cfg.code_type == "relu":
        return
    if cfg.where != "code":
        raise ActregError(
            f"code_type={cfg.code_type} sparsifies the code itself; where={cfg.where!r} "
            "is for code_type=relu (use where=code)"
        )
    if cfg.code_type in TOPK_CODES:
        if k is None:
            raise ActregError(
                f"code_type={cfg.code_type} needs its k: set l0=K (active units per example)"
            )
        if cfg.code_type == "topk" and k != int(k):
            raise ActregError(f"code_type=topk needs a whole k, got l0={k:g} (batchtopk: any)")
        if in_target_mode(cfg):
            raise ActregError(
                f"code_type={cfg.code_type} sets its sparsity by k, not by a target: "
                "drop target_sparsity/target_l0 and set l0="
            )
        if cfg.hidden:
            raise ActregError(
                f"code_type={cfg.code_type} trains dead latents with AuxK through a "
                f"decoder linear in the code: use hidden=() (got {cfg.hidden})"
            )


def variant_config(cfg: Any, name: str) -> Any:
    """``cfg`` set up for the method ``name`` of :data:`VARIANTS` at ``cfg.l0``.

    Example:
        >>> from actreg.lab.experiments.sparse_ae import SparseAEConfig
        >>> c = variant_config(SparseAEConfig(l0=40, variants=("relu", "topk")), "relu")
        >>> c.code_type, c.l0, c.variants
        ('relu', None, ())
    """
    if name not in VARIANTS:
        raise ActregError(f"unknown variant {name!r}; use some of {', '.join(VARIANTS)}")
    code_type = "relu" if name.startswith("relu") else name
    l0 = None if name == "relu" else cfg.l0
    return dataclasses.replace(cfg, code_type=code_type, l0=l0, topk=0, variants=())


def label(cfg: Any) -> str:
    """The variant's name in results and tables, e.g. ``l1 0.002`` or ``topk k=40``."""
    k = code_k(cfg)
    if cfg.code_type in TOPK_CODES:
        return f"{cfg.code_type} k={k:g}"
    name = cfg.penalty if cfg.code_type == "relu" else "jumprelu"
    if cfg.target_sparsity is not None:
        return f"{name} target {cfg.target_sparsity:g}"
    if k is not None:
        return f"{name} target l0={k:g}"
    return f"{name} {cfg.coef:g}"


def _code_layer(cfg: Any) -> nn.Module | None:
    k = code_k(cfg)
    if cfg.code_type == "topk":
        assert k is not None
        return nn.Sequential(activation(cfg.act), actreg.TopK(int(k)))
    if cfg.code_type == "batchtopk":
        assert k is not None
        return actreg.BatchTopK(k)
    if cfg.code_type == "jumprelu":
        return actreg.JumpReLU(cfg.code)
    return None


def build_model(cfg: Any, in_features: int) -> Autoencoder:
    """The autoencoder of ``cfg`` (tied initialization for the codes whose papers tie it).

    Example:
        >>> from actreg.lab.experiments.sparse_ae import SparseAEConfig
        >>> ae = build_model(SparseAEConfig(code_type="batchtopk", l0=4, code=32), 16)
        >>> type(ae.encoder.code).__name__
        'BatchTopK'
    """
    model = Autoencoder(
        in_features,
        cfg.code,
        cfg.hidden,
        act=cfg.act,
        code_layer=_code_layer(cfg),
        unit_norm_decoder=cfg.unit_norm_decoder,
    )
    if cfg.code_type != "relu":
        fc_code = model.encoder.fc_code
        assert isinstance(fc_code, nn.Linear)
        actreg.tie_init(fc_code, model.code_decoder)
    return model


@torch.no_grad()
def init_code(model: Autoencoder, cfg: Any, x: Tensor, units: Tensor | None = None) -> None:
    """JumpReLU: thresholds at the target's quantile of each unit's pre-activations on
    ``x`` (with a target), kernel width ``jump_bandwidth`` x their RMS; ``units``: only
    those units' thresholds (after a revival). Other codes: nothing."""
    code = model.encoder.code
    if not isinstance(code, actreg.JumpReLU):
        return
    pre = model.encoder[:-1](x[:THRESHOLD_SAMPLE])
    rms = float(pre.square().mean().sqrt()) or 1.0
    k = code_k(cfg)
    zeros = cfg.target_sparsity if k is None else 1 - k / cfg.code
    if units is None:
        code.bandwidth = cfg.jump_bandwidth * rms
        units = torch.arange(cfg.code)
    if zeros is not None and len(units):
        theta = torch.quantile(pre[:, units], zeros, dim=0).clamp_min(1e-3 * rms)
        code.log_threshold[units] = theta.log()


def code_penalties(
    cfg: Any, model: Autoencoder, targets: list[str], make: Callable[[], actreg.Penalty]
) -> dict[str, actreg.Penalty] | None:
    """The penalties of a penalized variant: ``make()`` on ``targets`` (relu), the JumpReLU's
    L0 (jumprelu), none (topk, batchtopk); in target mode for ``l0``/targets."""
    if cfg.code_type in TOPK_CODES:
        return None
    target = dataclasses.replace(cfg, target_l0=code_k(cfg), l0=None)
    code = model.encoder.code
    if isinstance(code, actreg.JumpReLU):
        return layer_penalties(["encoder.code"], lambda _: code.penalty(cfg.coef), target)
    return layer_penalties(targets, lambda _: make(), target)


def _mse(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return nn.functional.mse_loss(model(x), x)


def _metrics(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
    return {"mse": float(nn.functional.mse_loss(model(x), x))}


def code_target(cfg: Any) -> SimpleNamespace:
    """The code's target as :func:`~actreg.lab.experiments._targets.target_miss` reads it:
    ``target_sparsity``, and ``target_l0`` from ``l0`` or ``target_l0`` (None for topk and
    batchtopk, whose k is exact, and both None at a fixed coefficient).

    Example:
        >>> from types import SimpleNamespace as C
        >>> code_target(C(code_type="relu", l0=40, target_l0=None, target_sparsity=None))
        namespace(target_sparsity=None, target_l0=40)
    """
    k = None if cfg.code_type in TOPK_CODES else code_k(cfg)
    return SimpleNamespace(target_sparsity=cfg.target_sparsity, target_l0=k)


def selection(cfg: Any) -> tuple[Callable[[nn.Module, Tensor, Tensor], dict[str, float]], str]:
    """Validation metrics and the objective that picks the epoch whose weights are kept.

    At a coefficient or a fixed k: the MSE. In target mode (relu or jumprelu with ``l0``,
    ``target_l0`` or ``target_sparsity``) the code is far from its target in the first
    epochs, which reconstruct best: ``mse_on_target`` is the MSE of an epoch on the target
    (:func:`~actreg.lab.experiments._targets.target_miss`: L0 within 10%, zero fraction
    within 0.02) and ``OFF_TARGET * (1 + miss)`` off it, so an epoch on target always beats
    one off it, the best MSE wins among those on it and the closest among those off it.
    """
    target = code_target(cfg)
    if target.target_l0 is None and target.target_sparsity is None:
        return _metrics, "mse"

    def metrics(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
        assert isinstance(model, Autoencoder)
        code = model.encode(x)
        mse = float(nn.functional.mse_loss(model.decoder(code), x))
        stats = {
            "l0": float((code != 0).sum(-1).float().mean()),
            "zero_fraction": float((code == 0).float().mean()),
        }
        miss = target_miss(target, stats)
        return {"mse": mse, "mse_on_target": mse if miss == 0 else OFF_TARGET * (1 + miss)}

    return metrics, "mse_on_target"


class AfterStep:
    """Called after each optimizer step: decoder renormalization; for JumpReLU, each
    threshold step scaled by ``jump_lr`` (under Adam the same as a parameter group at
    ``jump_lr`` times the learning rate), and the thresholds of units that have not fired
    for ``aux_dead_after`` training examples (capped at ``n_train``) lowered by one full
    threshold step (``jump_lr * lr`` in log) until they fire again.

    Call :meth:`sync` after changing the thresholds outside an optimizer step (a revival),
    so that the change is not taken for a step, and :meth:`close` after training (it
    removes the firing counter's hook).
    """

    def __init__(self, cfg: Any, model: Autoencoder, n_train: int) -> None:
        self.model = model
        self.factor = cfg.jump_lr
        self.lower = cfg.jump_lr * cfg.lr
        code = model.encoder.code
        self.code = code if isinstance(code, actreg.JumpReLU) else None
        self.last: Tensor | None = None
        self.counter: actreg.AuxK | None = None
        self.handle: Any = None
        if self.code is None:
            return
        self.last = self.code.log_threshold.detach().clone()
        # AuxK's firing counter (its loss is not used): positions since each unit fired.
        counter = actreg.AuxK(
            model.code_decoder, k_aux=1, dead_after=min(cfg.aux_dead_after, n_train)
        )

        def count(module: nn.Module, args: Any, out: Tensor) -> None:
            if module.training and torch.is_grad_enabled():
                counter.update(out)

        self.counter = counter
        self.handle = self.code.register_forward_hook(count)

    @torch.no_grad()
    def __call__(self) -> None:
        self.model.normalize_decoder()
        if self.code is None or self.last is None or self.counter is None:
            return
        log_threshold = self.code.log_threshold
        log_threshold.add_((self.factor - 1) * (log_threshold - self.last))
        log_threshold.sub_(self.lower * self.counter.dead.to(log_threshold.dtype))
        self.last.copy_(log_threshold)

    def sync(self) -> None:
        """Take the current thresholds as the last step's."""
        if self.code is not None and self.last is not None:
            self.last.copy_(self.code.log_threshold.detach())

    def close(self) -> None:
        """Remove the firing counter's hook from the model."""
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


def loss_fn(
    cfg: Any, model: Autoencoder, n_train: int
) -> tuple[Callable[[nn.Module, Tensor, Tensor], Tensor], actreg.AuxK | None]:
    """The training loss (MSE, plus AuxK for topk/batchtopk) and the AuxK object if any."""
    if cfg.code_type not in AUXK_CODES:
        return _mse, None
    in_features = model.code_decoder.out_features
    k_aux = min(cfg.k_aux or max(1, in_features // 2), cfg.code)
    aux = actreg.AuxK(model.code_decoder, k_aux=k_aux, dead_after=min(cfg.aux_dead_after, n_train))

    def loss(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        pre, code, x_hat = model.parts(x)
        mse = nn.functional.mse_loss(x_hat, x)
        # No latent can be dead after this batch: count its firing, skip the auxiliary
        # reconstruction (a third of a step's work on MNIST). One host sync per step.
        if not bool((aux.since_fired + len(x) >= max(aux.dead_after, 1)).any()):
            aux.update(code)
            return mse
        return mse + aux(pre, code, x - x_hat)

    return loss, aux
