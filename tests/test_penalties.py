"""Penalty objects: Keras' scaling, repr, composition, the coef/config protocol, bad input.

The properties every penalty shares (reference formula, gradcheck, batch split, half
precision, pickling, state_dict and config round trips, linearity in coef, torch.compile)
are checked for all of them at once in test_penalty_properties.py.
"""

from __future__ import annotations

import math

import pytest
import torch

import actreg
from actreg.penalties import PENALTIES, Penalty


@pytest.mark.parametrize("batch", [1, 2, 7, 64])
def test_keras_l2_example(batch):
    # Keras' own test: activity_regularizer="l2" on ones((B, 5)) * 2 gives 0.2 for every B.
    assert float(actreg.L2(0.01)(torch.ones(batch, 5) * 2)) == pytest.approx(0.2)


def test_empty_batch_is_zero():
    for p in (actreg.L1(1.0), actreg.AR(1.0), actreg.Hoyer(1.0), actreg.DeCov(1.0)):
        assert float(p(torch.zeros(0, 4))) == 0.0


def test_hoyer_zero_vector_counts_zero():
    assert float(actreg.Hoyer(1.0)(torch.zeros(2, 3))) == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_accumulates_in_float32(dtype):
    x = torch.full((64, 4096), 200.0, dtype=dtype)  # sum of squares overflows float16
    out = actreg.L2(1.0, "sum")(x)
    assert out.dtype == torch.float32
    assert math.isfinite(float(out))
    assert float(out) == pytest.approx(64 * 4096 * 200.0**2, rel=1e-3)


def test_repr_shows_whole_configuration():
    p = actreg.L1(1e-3) + 0.5 * actreg.TAR(1.0, time_dim=0) + actreg.KLSparsity(3, 0.01, dim=1)
    assert repr(p) == "L1(0.001) + 0.5 * TAR(1, time_dim=0) + KLSparsity(3, target=0.01, dim=1)"
    assert repr(actreg.L1L2(l1=0.01, l2=0.0, reduction="sum")) == (
        "L1L2(l1=0.01, l2=0, reduction='sum')"
    )


def test_composition_flattens_sums():
    p = (actreg.L1(1.0) + actreg.L2(1.0)) + actreg.AR(1.0)
    assert len(p.terms) == 3


def test_make_penalty_registry():
    assert actreg.make_penalty("tar", 1.0) == actreg.TAR(1.0)
    with pytest.raises(actreg.ActregError, match="did you mean"):
        actreg.make_penalty("l11", 1.0)


# ---- bad input ------------------------------------------------------------------------

BAD_COEFS = [-1.0, float("nan"), float("inf"), "0.1", None, True]


@pytest.mark.parametrize("value", BAD_COEFS, ids=["negative", "nan", "inf", "str", "none", "bool"])
@pytest.mark.parametrize(
    "cls", [actreg.L1, actreg.L2, actreg.AR, actreg.TAR, actreg.Log, actreg.Hoyer, actreg.DeCov]
)
def test_bad_coefficient(cls, value):
    with pytest.raises(actreg.ActregError):
        cls(value)


def test_bad_coefficient_message_says_fix():
    with pytest.raises(ValueError, match="finite and >= 0"):
        actreg.L1(-0.1)


def test_bad_scale_factor():
    with pytest.raises(actreg.ActregError, match="scale factor"):
        -1 * actreg.L1(0.1)


def test_bad_coef_setter_keeps_old_value():
    p = actreg.L1(0.1)
    with pytest.raises(actreg.ActregError):
        p.coef = float("nan")
    assert p.coef == 0.1


@pytest.mark.parametrize(
    "cls",
    [
        actreg.L1,
        actreg.L2,
        actreg.L1L2,
        actreg.AR,
        actreg.TAR,
        actreg.Hoyer,
        actreg.HoyerSquare,
        actreg.Log,
        actreg.Binary,
    ],
    ids=lambda c: c.__name__,
)
def test_unknown_reduction(cls):
    with pytest.raises(actreg.ActregError, match="unknown reduction 'avg'; use one of 'batch'"):
        cls(reduction="avg")


def test_tar_time_dim_out_of_range():
    with pytest.raises(actreg.ActregError, match="time_dim=3 is out of range"):
        actreg.TAR(1.0, time_dim=3)(torch.randn(2, 4, 5))


def test_tar_needs_two_steps():
    with pytest.raises(actreg.ActregError, match="at least 2 steps"):
        actreg.TAR(1.0)(torch.randn(2, 1, 5))


@pytest.mark.parametrize("cls", [actreg.KLSparsity, actreg.Binary], ids=["kl", "binary"])
def test_unit_interval_checked(cls):
    with pytest.raises(actreg.ActregError, match=r"values in \[0, 1\]"):
        cls(1.0)(torch.tensor([[0.5, 1.5]]))


def test_kl_bad_target():
    with pytest.raises(actreg.ActregError, match="strictly between 0 and 1"):
        actreg.KLSparsity(1.0, target=1.0)


def test_non_float_tensor():
    with pytest.raises(actreg.ActregError, match="floating-point"):
        actreg.L1(0.1)(torch.ones(2, 3, dtype=torch.long))


@pytest.mark.parametrize(
    ("cls", "kwargs", "name"),
    [
        (actreg.L1, {"l1": 0.3}, "l1"),
        (actreg.L2, {"l2": 0.3}, "l2"),
        (actreg.AR, {"alpha": 0.3}, "alpha"),
        (actreg.TAR, {"beta": 0.3}, "beta"),
        (actreg.KLSparsity, {"beta": 0.3}, "beta"),
        (actreg.Hoyer, {"coef": 0.3}, "coef"),
        (actreg.HoyerSquare, {"coef": 0.3}, "coef"),
        (actreg.Log, {"coef": 0.3}, "coef"),
        (actreg.DeCov, {"coef": 0.3}, "coef"),
        (actreg.Binary, {"coef": 0.3}, "coef"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_familiar_keyword_is_coef_and_config_key(cls, kwargs, name):
    p = cls(**kwargs)
    assert p.coef == 0.3
    assert p.get_config()[name] == 0.3
    p.coef = 0.5
    assert p.get_config()[name] == 0.5
    with pytest.raises(actreg.ActregError, match=f"{name} must be finite"):
        p.coef = -1.0


def test_l1l2_coef_is_l1_plus_l2_and_keeps_the_mix():
    p = actreg.L1L2(l1=0.01, l2=0.03)
    assert p.coef == pytest.approx(0.04)
    assert p.coef == pytest.approx((actreg.L1(0.01) + actreg.L2(0.03)).coef)
    p.coef = 0.08
    assert (p.l1, p.l2) == pytest.approx((0.02, 0.06))
    p.l2 = 0.0
    assert p.coef == pytest.approx(0.02)
    with pytest.raises(actreg.ActregError, match="l1 must be finite"):
        p.l1 = -1.0


def test_zero_coef_cannot_be_scaled_up():
    for p in (actreg.L1L2(), actreg.L1(0.0) + actreg.L2(0.0), 2 * actreg.L1(0.0)):
        assert p.coef == 0.0
        p.coef = 0.0  # no change: fine
        with pytest.raises(actreg.ActregError, match="has coefficient 0, so there is no mix"):
            p.coef = 1e-3


def test_sum_coef_scales_every_term():
    a, b = actreg.L1(1e-3), actreg.TAR(3e-3)
    p = a + b
    assert p.coef == pytest.approx(4e-3)
    p.coef = 8e-3
    assert (a.coef, b.coef) == pytest.approx((2e-3, 6e-3))  # the terms are the sum's own


def test_scaled_coef_changes_the_factor_only():
    inner = actreg.L1(2e-3)
    p = 0.5 * inner
    assert p.coef == pytest.approx(1e-3)
    p.coef = 4e-3
    assert p.factor == pytest.approx(2.0) and inner.coef == 2e-3


def test_equality_compares_type_and_config():
    assert actreg.L1(0.1) == actreg.L1(0.1)
    assert actreg.L1(0.1) != actreg.L1(0.1, "sum")
    assert actreg.L1(0.1) != actreg.L2(0.1)
    assert actreg.Binary(0.1) != actreg.Binary(0.1, validate=False)
    assert actreg.L1(0.1) + actreg.L2(0.2) == actreg.L1(0.1) + actreg.L2(0.2)
    assert len({actreg.L1(0.1), actreg.L1(0.1)}) == 1


def test_serialize_nests_the_parts():
    p = 0.5 * (actreg.L1(1e-3) + actreg.TAR(2.0, time_dim=0))
    assert actreg.serialize(p) == {
        "name": "scaled",
        "config": {
            "factor": 0.5,
            "penalty": {
                "name": "sum",
                "config": {
                    "terms": [
                        {"name": "l1", "config": {"l1": 1e-3, "reduction": "batch"}},
                        {
                            "name": "tar",
                            "config": {"beta": 2.0, "time_dim": 0, "reduction": "mean"},
                        },
                    ]
                },
            },
        },
    }


def test_make_penalty_builds_composites_by_name():
    assert actreg.make_penalty("sum", [actreg.L1(1.0), actreg.L2(2.0)]) == actreg.L1(
        1.0
    ) + actreg.L2(2.0)
    assert actreg.make_penalty("scaled", 0.5, actreg.L1(1.0)) == 0.5 * actreg.L1(1.0)


@pytest.mark.parametrize(
    ("identifier", "args", "match"),
    [
        ({"name": "l1"}, (), "one {'name': ..., 'config'"),
        ({"name": "l1", "config": {}}, (1.0,), "and nothing else"),
        ({"name": "l11", "config": {}}, (), "did you mean l1"),
        (3, (), "a registry name or a serialize"),
    ],
    ids=["no-config", "extra-args", "unknown", "int"],
)
def test_make_penalty_bad_identifier(identifier, args, match):
    with pytest.raises(actreg.ActregError, match=match):
        actreg.make_penalty(identifier, *args)


def test_wrong_arguments_name_the_signature():
    with pytest.raises(actreg.ActregError, match=r"'alpha'.*L1 takes L1\(l1: 'float' = 0.01"):
        actreg.L1.from_config({"alpha": 1.0})
    with pytest.raises(actreg.ActregError, match=r"Scaled takes Scaled\(factor"):
        actreg.make_penalty("scaled", 1e-3)  # a config naming a composite with one coef
    with pytest.raises(actreg.ActregError, match="a list of penalties, got 0.001"):
        actreg.make_penalty("sum", 1e-3)


def test_registry_names_are_unique_and_subclasses_need_their_own():
    with pytest.raises(actreg.ActregError, match="'l1' is taken by L1"):

        class Again(Penalty, name="l1"):
            pass

    class MyL1(actreg.L1):
        pass

    assert "l1" in PENALTIES and PENALTIES["l1"] is actreg.L1
    with pytest.raises(actreg.ActregError, match="MyL1 has no registry name of its own"):
        actreg.serialize(MyL1(0.1))


@pytest.mark.parametrize("cls", [actreg.KLSparsity, actreg.Binary], ids=["kl", "binary"])
def test_validate_must_be_a_bool(cls):
    with pytest.raises(actreg.ActregError, match="validate must be True or False"):
        cls(1.0, validate="no")


def test_sum_needs_penalties():
    with pytest.raises(actreg.ActregError, match="at least one term"):
        actreg.penalties.Sum([])
    with pytest.raises(actreg.ActregError, match="wraps an actreg penalty"):
        actreg.penalties.Sum([actreg.L1(1.0), "l2"])


def test_a_user_penalty_works_everywhere():
    """The example of docs/guides/penalties.md ("Write your own")."""

    class MaxAbs(actreg.Penalty, name="max_abs_doc_example"):
        def __init__(self, coef: float = 1e-3) -> None:
            self.coef = coef

        def forward(self, x):
            return self.coef * x.abs().flatten(1).amax(1).mean()

    try:
        p = MaxAbs(0.5)
        x = torch.tensor([[1.0, -3.0], [2.0, 0.5]])
        assert float(p(x)) == pytest.approx(0.5 * 2.5)
        assert MaxAbs.from_config(p.get_config()) == p
        assert actreg.make_penalty(actreg.serialize(p)) == p
        assert float((p + actreg.L1(1.0))(x)) == pytest.approx(1.25 + 6.5 / 2)
        ctl = actreg.TargetSparsity(p, target=0.9)
        assert ctl.coef == pytest.approx(0.5)
        model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU())
        reg = actreg.attach(model, {"1": ctl})
        model(torch.randn(3, 2)).sum().add(reg.penalty()).backward()
        assert ctl.steps == 1
        with pytest.raises(actreg.ActregError, match="coef"):
            p.coef = -1.0
    finally:
        actreg.penalties.PENALTIES.pop("max_abs_doc_example")


def test_a_penalty_that_never_set_its_coef_says_so():
    class Forgot(actreg.Penalty):
        def forward(self, x):
            return x.sum()

    with pytest.raises(actreg.ActregError, match="set self.coef in its __init__"):
        Forgot().coef  # noqa: B018
