"""One checker for every penalty and metric, in the spirit of torchmetrics' MetricTester.

A :class:`Case` describes one subject (a penalty object, or a metric function with its
keyword arguments), how to make inputs, an independent plain-torch reference, and how a
batch split combines. The ``check_*`` functions are the properties; the parametrized tests
in ``test_penalty_properties.py`` and ``test_metric_properties.py`` run every case through
every property that applies, and skip the others with the reason the case states.

Stateful penalties (``TargetSparsity``, ``Scheduled``) advance on every training call, so a
subject is always evaluated on a fresh deep copy (:func:`evaluate`): the same state in,
no state changed.
"""

from __future__ import annotations

import copy
import io
import json
import math
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor

import actreg
from actreg.penalties import Penalty

Merge = Callable[[Sequence[Tensor], Sequence[int]], Tensor]


def merge_sum(values: Sequence[Tensor], sizes: Sequence[int]) -> Tensor:
    """The whole is the sum of the parts (``reduction="sum"``)."""
    return sum(values[1:], values[0])


def merge_mean(values: Sequence[Tensor], sizes: Sequence[int]) -> Tensor:
    """The whole is the mean of the parts weighted by their size along the split axis
    (``reduction="batch"`` or ``"mean"``, per-position averages)."""
    return sum(v * n for v, n in zip(values, sizes, strict=True)) / sum(sizes)


def merge_rms(values: Sequence[Tensor], sizes: Sequence[int]) -> Tensor:
    """Root mean square: the size-weighted mean of the squares, then the root."""
    return merge_mean([v.square() for v in values], sizes).sqrt()


@dataclass(frozen=True)
class Case:
    """One subject of the checker.

    Attributes:
        id: the test id.
        make: a fresh subject: a penalty (maybe advanced a few steps) or a metric function.
        ref: ``(x, subject) -> expected`` in float64, written independently in plain torch.
        inputs: ``shape -> float64 tensor`` (signed values, or values in (0, 1)).
        shapes: the input shapes of the reference check; the first is used elsewhere.
        kwargs: keyword arguments of a metric function.
        split: a merge function, or the reason why a batch split does not give the whole.
        split_dim: the batch axis to split along.
        grad: True, or the reason why there is no gradient to check.
        fullgraph: True, or the reason why ``torch.compile`` runs with graph breaks.
    """

    id: str
    make: Callable[[], Any]
    ref: Callable[[Tensor, Any], Tensor]
    inputs: Callable[[tuple[int, ...]], Tensor]
    shapes: tuple[tuple[int, ...], ...] = ((4, 5), (3, 4, 5))
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    split: Merge | str = merge_mean
    split_dim: int = 0
    grad: bool | str = True
    fullgraph: bool | str = True


def signed(shape: tuple[int, ...]) -> Tensor:
    return torch.randn(*shape, dtype=torch.float64)


def unit(shape: tuple[int, ...]) -> Tensor:
    """Values in (0.05, 0.95): inside [0, 1] with room for gradcheck's steps."""
    return torch.rand(*shape, dtype=torch.float64) * 0.9 + 0.05


def relu(shape: tuple[int, ...]) -> Tensor:
    return torch.relu(torch.randn(*shape, dtype=torch.float64))


def evaluate(case: Case, subject: Any, x: Tensor) -> Tensor:
    """The subject's value on ``x``; a penalty runs as a deep copy (its state stays)."""
    if isinstance(subject, Penalty):
        return copy.deepcopy(subject)(x)
    return subject(x, **case.kwargs)


def assert_same_state(a: Any, b: Any) -> None:
    """Nested state dicts equal, tensors bit for bit."""
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor) and torch.equal(a, b), (a, b)
    elif isinstance(a, Mapping):
        assert isinstance(b, Mapping) and set(a) == set(b), (a, b)
        for key in a:
            assert_same_state(a[key], b[key])
    else:
        assert a == b, (a, b)


# ---- properties of penalties and metrics ----------------------------------------------


def check_reference(case: Case, shape: tuple[int, ...]) -> None:
    subject, x = case.make(), case.inputs(shape)
    got = evaluate(case, subject, x)
    want = case.ref(x, subject)
    assert got.dtype == torch.float64
    assert got.shape == want.shape
    torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-9, atol=1e-12)


def check_gradcheck(case: Case) -> None:
    if case.grad is not True:
        pytest.skip(str(case.grad))
    subject, x = case.make(), case.inputs(case.shapes[-1]).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: evaluate(case, subject, t), (x,), eps=1e-6, atol=1e-5)


def check_batch_split(case: Case) -> None:
    if isinstance(case.split, str):
        pytest.skip(case.split)
    subject, x = case.make(), case.inputs((6, 4, 5))
    n = x.shape[case.split_dim]
    parts = [x.narrow(case.split_dim, 0, 2), x.narrow(case.split_dim, 2, n - 2)]
    values = [evaluate(case, subject, p) for p in parts]
    merged = case.split(values, [p.shape[case.split_dim] for p in parts])
    torch.testing.assert_close(merged, evaluate(case, subject, x), rtol=1e-10, atol=1e-12)


def check_half_precision(case: Case, dtype: torch.dtype) -> None:
    """Half-precision input gives a float32 result, computed in float32.

    The input is made exactly representable in bfloat16 (and so in float16), so the float32
    value on the same numbers is the answer to float32 precision (1e-5), far tighter than
    an accumulation in half precision (about 1e-3 or worse) would reach.
    """
    subject = case.make()
    x = case.inputs(case.shapes[-1]).to(torch.bfloat16).float()
    got = evaluate(case, subject, x.to(dtype))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, evaluate(case, subject, x), rtol=1e-5, atol=1e-7)


def check_pickle_and_deepcopy(case: Case) -> None:
    subject, x = case.make(), case.inputs(case.shapes[0])
    want = evaluate(case, subject, x)
    for clone in (pickle.loads(pickle.dumps(subject)), copy.deepcopy(subject)):
        assert repr(clone) == repr(subject)
        if isinstance(subject, Penalty):
            assert clone.get_config() == subject.get_config()
            assert_same_state(clone.state_dict(), subject.state_dict())
        else:
            assert clone is subject  # a function pickles and copies by reference
        assert torch.equal(evaluate(case, clone, x), want)


def check_compile(case: Case) -> None:
    """One compiled call (aot_eager: traced forward and backward) equals eager: the value,
    the input's gradient and, for a stateful penalty, the state it leaves."""
    subject, x = case.make(), case.inputs(case.shapes[-1]).float()
    differentiable = case.grad is True
    eager, compiled = copy.deepcopy(subject), copy.deepcopy(subject)
    if isinstance(subject, Penalty):
        fn: Callable[[Tensor], Tensor] = compiled.__call__
        ref: Callable[[Tensor], Tensor] = eager.__call__
    else:
        fn = ref = lambda t: subject(t, **case.kwargs)
    fast = torch.compile(fn, backend="aot_eager", fullgraph=case.fullgraph is True)
    xs = [x.clone().requires_grad_(differentiable) for _ in range(2)]
    outs = [fast(xs[0]), ref(xs[1])]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-7)
    if differentiable:
        for out in outs:
            out.backward()
        torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-5, atol=1e-7)
    if isinstance(subject, Penalty):
        assert_same_state(compiled.state_dict(), eager.state_dict())


# ---- properties of penalties only -----------------------------------------------------


def check_state_dict(case: Case) -> None:
    """A penalty built from the config with the state loaded continues exactly; the state
    loads with ``torch.load(weights_only=True)`` (as checkpoints are read)."""
    subject, x = case.make(), case.inputs(case.shapes[0])
    buffer = io.BytesIO()
    torch.save(subject.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = type(subject).from_config(subject.get_config())
    fresh.load_state_dict(state)
    assert_same_state(fresh.state_dict(), subject.state_dict())
    assert fresh.coef == subject.coef
    assert torch.equal(evaluate(case, fresh, x), evaluate(case, subject, x))
    # both continue alike: one more training step each
    a, b = fresh(x.clone().requires_grad_()), subject(x.clone().requires_grad_())
    assert torch.equal(a, b)
    assert_same_state(fresh.state_dict(), subject.state_dict())


def check_config(case: Case) -> None:
    """``from_config(get_config())``, ``make_penalty(serialize())`` and a JSON trip give an
    equal penalty (same type, config and repr); a formula penalty's config is also
    ``make_penalty(name, **config)``."""
    subject, x = case.make(), case.inputs(case.shapes[0])
    config = subject.get_config()
    data = actreg.serialize(subject)
    assert data == {"name": type(subject).name, "config": config}
    rebuilt = [
        type(subject).from_config(config),
        actreg.make_penalty(data),
        actreg.make_penalty(json.loads(json.dumps(data))),
    ]
    if not subject.composite:
        rebuilt.append(actreg.make_penalty(data["name"], **config))
    for other in rebuilt:
        assert type(other) is type(subject)
        assert other == subject and other.get_config() == config
        assert repr(other) == repr(subject)
        if not subject.state_dict():  # no running state: the same value too
            assert torch.equal(evaluate(case, other, x), evaluate(case, subject, x))


def check_linear_in_coef(case: Case) -> None:
    """``coef`` is a float >= 0 and the penalty is linear in it: setting it to twice its
    value doubles the penalty; a bad value raises and changes nothing."""
    subject, x = case.make(), case.inputs(case.shapes[0])
    coef = subject.coef
    assert isinstance(coef, float) and math.isfinite(coef) and coef > 0
    doubled = copy.deepcopy(subject)
    doubled.coef = 2 * coef
    assert doubled.coef == pytest.approx(2 * coef, rel=1e-12)
    want = 2 * evaluate(case, subject, x)
    torch.testing.assert_close(evaluate(case, doubled, x), want, rtol=1e-12, atol=0)
    for bad in (-1.0, float("nan")):
        with pytest.raises(actreg.ActregError):
            doubled.coef = bad
    assert doubled.coef == pytest.approx(2 * coef, rel=1e-12)
