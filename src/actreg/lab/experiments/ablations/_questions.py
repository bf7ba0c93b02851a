"""The variants of each question, and which pairs of them the report compares.

A :class:`Variant` is a name, the changes it makes to the sparse-AE config (or to the
binary-code classifier), and whether the activity penalty is on. ``which-norm`` has two
stages: a coefficient grid per penalty on one seed (:func:`grid_variants`), then the
seeded comparison at each penalty's chosen coefficient (:func:`choose`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from actreg.lab.experiments.ablations._stats import all_pairs

__all__ = [
    "QUESTIONS",
    "UNSTEERED_PENALTIES",
    "ZERO_ACTS",
    "Variant",
    "choose",
    "controlled",
    "grid_variants",
    "norm_variant",
    "pairs_for",
    "plan",
    "target_label",
]

ZERO_ACTS = ("relu",)
"""Code activations that give exact zeros, so that target mode can steer their penalty."""
UNSTEERED_PENALTIES = ("kl", "binary")
"""Penalties that need a sigmoid code (no exact zeros): fixed coefficient in target mode."""

QUESTIONS = (
    "which-norm",
    "where",
    "width",
    "activation",
    "scaling",
    "weight-decay",
    "binary-code",
)


@dataclass(frozen=True)
class Variant:
    """One arm of an ablation: config changes, penalty on or off, model kind."""

    name: str
    changes: tuple[tuple[str, Any], ...] = ()
    penalized: bool = True
    kind: str = "ae"  # ae | binary
    group: str = ""  # for pictures: the x position's series (e.g. "penalty" / "none")
    x: Any = None  # for pictures: the x value (e.g. the code width)

    def change_dict(self) -> dict[str, Any]:
        """The changes as a dict."""
        return dict(self.changes)


def _c(**changes: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(changes.items()))


def target_label(cfg: Any) -> str | None:
    """``target 0.9`` (or ``target_l0 25``) in target mode, else None.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> target_label(NS(target_sparsity=0.9, target_l0=None))
        'target 0.9'
        >>> target_label(NS(target_sparsity=None, target_l0=None)) is None
        True
    """
    if cfg.target_sparsity is not None:
        return f"target {cfg.target_sparsity:g}"
    if cfg.target_l0 is not None:
        return f"target_l0 {cfg.target_l0:g}"
    return None


def controlled(penalty: str, act: str) -> bool:
    """Whether target mode can steer ``penalty`` on an ``act`` code (it needs exact zeros).

    Example:
        >>> controlled("l1", "relu"), controlled("l1", "tanh"), controlled("kl", "sigmoid")
        (True, False, False)
    """
    return act in ZERO_ACTS and penalty not in UNSTEERED_PENALTIES


_FIXED = _c(target_sparsity=None, target_l0=None)
"""Changes that take a variant out of target mode (its coefficient stays fixed)."""


def norm_variant(penalty: str, coef: float, kl_target: float, target: str | None = None) -> Variant:
    """The which-norm variant of ``penalty`` at ``coef`` (KL needs a sigmoid code); with
    ``target`` (target mode) a ReLU penalty is named by the target, ``coef`` its start."""
    if penalty == "kl":
        changes = _c(penalty="kl", coef=coef, act="sigmoid", kl_target=kl_target)
    else:
        changes = _c(penalty=penalty, coef=coef)
    if target is not None and controlled(penalty, "relu"):
        return Variant(f"{penalty} {target}", changes, True, group=penalty, x=coef)
    if target is not None:
        changes = tuple(sorted(dict(changes + _FIXED).items()))
    return Variant(f"{penalty} {coef:g}", changes, True, group=penalty, x=coef)


def grid_variants(cfg: Any) -> list[Variant]:
    """The which-norm grid: every penalty at every coefficient."""
    return [norm_variant(p, c, cfg.kl_target) for p in cfg.norms for c in cfg.grid]


def choose(rows: Sequence[dict[str, Any]], min_zeros: float, max_dead: float) -> dict[str, Any]:
    """The grid row to keep for one penalty.

    Rows whose ``dead_fraction`` exceeds ``max_dead`` (a collapsed code) are out. Of the
    rest: the highest ``probe_acc`` among rows with ``near_zero >= min_zeros`` (ties: the
    smaller coefficient); when none reaches ``min_zeros``, the row with the highest
    ``near_zero``; when every row collapsed, the one with the fewest dead units.

    Example:
        >>> rows = [{"coef": 0.01, "near_zero": 0.5, "probe_acc": 0.95, "dead_fraction": 0.1},
        ...         {"coef": 0.1, "near_zero": 0.85, "probe_acc": 0.92, "dead_fraction": 0.2},
        ...         {"coef": 1.0, "near_zero": 1.0, "probe_acc": 0.11, "dead_fraction": 1.0}]
        >>> choose(rows, 0.8, 0.9)["coef"]
        0.1
        >>> choose(rows, 0.9, 0.9)["coef"]
        0.1
        >>> choose(rows[:1], 0.9, 0.9)["coef"]
        0.01
    """
    alive = [r for r in rows if r["dead_fraction"] <= max_dead]
    if not alive:
        return min(rows, key=lambda r: (r["dead_fraction"], r["coef"]))
    ok = [r for r in alive if r["near_zero"] >= min_zeros]
    if ok:
        return max(ok, key=lambda r: (r["probe_acc"], -r["coef"]))
    return max(alive, key=lambda r: (r["near_zero"], -r["coef"]))


def plan(cfg: Any, chosen: dict[str, float] | None = None) -> list[Variant]:
    """The seeded variants of ``cfg.question`` (which-norm: at the ``chosen`` coefficients).

    In target mode the penalized variants that :func:`controlled` refuses get their target
    switched off (fixed coefficient, named by it); the others are named by the target.
    """
    q = cfg.question
    pen = cfg.penalty
    target = target_label(cfg)
    lab = pen if target is None else f"{pen} {target}"  # the penalty as variant names show it
    if q == "which-norm":
        assert chosen is not None
        out = [
            Variant("none", (), False, group="none"),
            Variant("none (sigmoid)", _c(act="sigmoid"), False, group="none"),
        ]
        return out + [norm_variant(p, chosen[p], cfg.kl_target, target) for p in cfg.norms]
    if q == "where":
        deep = {"hidden": (cfg.hidden,)}
        out = [Variant("none", _c(**deep), False, group="none")]
        return out + [
            Variant(f"{lab} on {w}", _c(**deep, where=w), True, group=w)
            for w in ("code", "encoder", "all")
        ]
    if q == "width":
        return [
            Variant(f"{name} w={w}", _c(code=w), on, group=name, x=w)
            for w in cfg.widths
            for name, on in ((lab, True), ("none", False))
        ]
    if q == "activation":
        out = []
        for a in cfg.activations:
            if target is None:
                out.append(Variant(f"{a} {pen}", _c(act=a), True, group=a))
            elif controlled(pen, a):
                out.append(Variant(f"{a} {lab}", _c(act=a), True, group=a))
            else:
                fixed = tuple(sorted(dict(_c(act=a) + _FIXED).items()))
                out.append(Variant(f"{a} {pen} {cfg.coef:g}", fixed, True, group=a))
        if "sigmoid" in cfg.activations:
            kl = _c(act="sigmoid", penalty="kl", coef=cfg.kl_coef, kl_target=cfg.kl_target)
            name = "sigmoid kl"
            if target is not None:
                kl, name = tuple(sorted(dict(kl + _FIXED).items())), f"sigmoid kl {cfg.kl_coef:g}"
            out.append(Variant(name, kl, True, group="sigmoid kl"))
        return out
    if q == "scaling":
        return [
            Variant(f"{s} {name}", _c(scaling=s), on, group=name, x=s)
            for s in cfg.scalings
            for name, on in ((lab, True), ("none", False))
        ]
    if q == "weight-decay":
        wd = cfg.wd
        alone = f"{pen} {cfg.coef:g}" if target is None else lab
        return [
            Variant("none", _c(weight_decay=0.0), False, group="none"),
            Variant(f"weight decay {wd:g}", _c(weight_decay=wd), False, group="wd"),
            Variant(alone, _c(weight_decay=0.0), True, group="act"),
            Variant(
                "both" if target is None else f"{lab} + wd", _c(weight_decay=wd), True, group="both"
            ),
        ]
    if q == "binary-code":
        out = [
            Variant(f"binary {c:g}", _c(coef=c, width=0), c > 0, "binary", group="bits", x=c)
            for c in cfg.binary_coefs
        ]
        if cfg.ref_width:
            ref = _c(coef=0.0, width=cfg.ref_width)
            out.append(Variant(f"width {cfg.ref_width} none", ref, False, "binary", group="ref"))
        return out
    raise AssertionError(q)  # validated by the config


def pairs_for(cfg: Any, variants: Sequence[Variant]) -> list[tuple[str, str]]:
    """The pairs the report compares: every pair, except for width and scaling.

    ``width``: the penalty against none at each width. ``scaling``: the penalty against none
    at each scaling, and every pair of penalized scalings.
    """
    names = [v.name for v in variants]
    if cfg.question in ("width", "scaling"):
        by_x: dict[Any, dict[bool, str]] = {}
        for v in variants:
            by_x.setdefault(v.x, {})[v.penalized] = v.name
        pairs = [(d[False], d[True]) for d in by_x.values() if len(d) == 2]
        if cfg.question == "scaling":
            pairs += all_pairs([v.name for v in variants if v.penalized])
        return pairs
    return all_pairs(names)
