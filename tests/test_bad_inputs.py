"""The library's bad inputs: each raises one ActregError naming the argument, the problem
and the fix (the library's half of the list of issue 16; the CLI's half is
tests/lab/test_bad_inputs.py).

Each case is ``(id, call, words)``: ``call()`` must raise :class:`actreg.ActregError`
(never a raw ``TypeError``, ``KeyError``, ``IndexError`` ...), and its message must hold
every word of ``words`` (case-insensitive): the argument, the problem, the fix; a word
starting with ``!`` must not be in it (wrong advice, such as ">= 0" where 0 is refused). The kind
of each case is the first part of its id (``type-``, ``range-``, ``unknown-``, ``shape-``,
``state-``, ``empty-``), counted in docs/guides/errors.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import actreg
import actreg.sparse
from actreg import metrics


def mlp(act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), act(), nn.Linear(8, 2))


def trained_target(act: type[nn.Module], **kwargs: Any) -> None:
    """Train-mode calls of a TargetSparsity on ``act`` outputs, past its zero check."""
    penalty = actreg.TargetSparsity(actreg.L1(1e-3), 0.9, warmup=0, **kwargs)
    for _ in range(actreg.TargetSparsity.ZERO_CHECK_STEPS + 1):
        x = act()(torch.randn(16, 8)).requires_grad_()
        penalty(x)


def monitor_compute_before_any_batch() -> None:
    model = mlp()
    with actreg.Monitor(model, "1") as mon:
        mon.compute()


def penalty_after_remove() -> None:
    reg = actreg.attach(mlp(), {"1": actreg.L1(1e-3)})
    reg.remove()
    reg.penalty()


def batch_topk_too_wide() -> None:
    actreg.BatchTopK(9)(torch.randn(4, 8))


def topk_too_wide() -> None:
    actreg.TopK(9)(torch.randn(4, 8))


def revive_without_producer() -> None:
    model = nn.Sequential(nn.ReLU(), nn.Linear(4, 2))
    actreg.revive(model, "0", torch.randn(8, 4))


def jumprelu_wrong_width() -> None:
    actreg.JumpReLU(8)(torch.randn(4, 5))


def monitor_units_change() -> None:
    model = nn.Sequential(nn.ReLU())
    with actreg.Monitor(model, "0"):
        model(torch.randn(2, 4))
        model(torch.randn(2, 5))


def monitor_int_output() -> None:
    model = nn.Sequential(nn.Identity())
    with actreg.Monitor(model, "0"):
        model(torch.ones(2, 3, dtype=torch.long))


def load_state_other_spec() -> None:
    a = actreg.attach(mlp(), {"1": actreg.L1(1e-3)})
    b = actreg.attach(mlp(), {"0": actreg.L1(1e-3)})
    b.load_state_dict(a.state_dict())


def batch_topk_eval_untrained() -> None:
    actreg.BatchTopK(2).eval()(torch.randn(4, 8))


def jumprelu_l0_before_forward() -> None:
    actreg.JumpReLU(4).l0()


def l0_target_above_width() -> None:
    penalty = actreg.TargetSparsity(actreg.L1(1e-3), 9.0, measure="l0")
    penalty(torch.rand(4, 8, requires_grad=True))


def check_finite_nan() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    actreg.attach(model, {"1": actreg.L1(1.0)}, check_finite=True)
    model(torch.tensor([[float("nan"), 0.0]]))


L1 = actreg.L1

# (id, call, words the message must hold)
CASES: list[tuple[str, Callable[[], Any], tuple[str, ...]]] = [
    # attach
    ("type-attach-model-none", lambda: actreg.attach(None, {"1": L1()}), ("nn.Module",)),
    ("type-attach-model-string", lambda: actreg.attach("mlp", {"1": L1()}), ("nn.Module",)),
    ("type-attach-spec-list", lambda: actreg.attach(mlp(), [L1()]), ("spec", "mapping")),
    ("empty-attach-spec", lambda: actreg.attach(mlp(), {}), ("spec",)),
    ("type-attach-penalty-float", lambda: actreg.attach(mlp(), {"1": 1e-3}), ("actreg.L1",)),
    ("type-attach-penalty-none", lambda: actreg.attach(mlp(), {"1": None}), ("actreg.L1",)),
    ("type-attach-key-int", lambda: actreg.attach(mlp(), {1: L1()}), ("strings",)),
    (
        "unknown-attach-name",
        lambda: actreg.attach(mlp(), {"2x": L1()}),
        ("2x", "closest names: '2'"),
    ),
    ("unknown-attach-pattern", lambda: actreg.attach(mlp(), {"act*": L1()}), ("act*",)),
    ("unknown-attach-when", lambda: actreg.attach(mlp(), {"1": L1()}, when="eval"), ("when",)),
    (
        "unknown-attach-select-key",
        lambda: actreg.attach(mlp(), {"1": L1()}, select={"9": lambda o: o}),
        ("9",),
    ),
    ("type-attach-select-int", lambda: actreg.attach(mlp(), {"1": L1()}, select=3), ("select",)),
    ("state-penalty-after-remove", penalty_after_remove, ("removed", "attach again")),
    ("state-load-state-other-spec", load_state_other_spec, ("same spec",)),
    ("range-check-finite-nan", check_finite_nan, ("non-finite", "learning rate")),
    # penalties
    ("type-l1-coef-string", lambda: actreg.L1("big"), ("l1", "real number")),
    ("type-l1-coef-none", lambda: actreg.L1(None), ("l1", "real number")),
    ("type-l1-coef-bool", lambda: actreg.L1(True), ("l1", "real number")),
    ("range-l1-coef-negative", lambda: actreg.L1(-1.0), ("l1", ">= 0")),
    ("range-l1-coef-nan", lambda: actreg.L1(float("nan")), ("l1", "finite")),
    ("range-l2-coef-inf", lambda: actreg.L2(float("inf")), ("l2", "finite")),
    ("unknown-l1-reduction", lambda: actreg.L1(1e-3, reduction="avg"), ("reduction",)),
    ("type-tar-time-dim-float", lambda: actreg.TAR(1.0, time_dim=1.5), ("time_dim",)),
    ("range-kl-target-one", lambda: actreg.KLSparsity(1e-3, target=1.0), ("target",)),
    ("range-kl-target-zero", lambda: actreg.KLSparsity(1e-3, target=0.0), ("target",)),
    ("type-hoyer-dim-string", lambda: actreg.Hoyer(1e-3, dim="units"), ("dim",)),
    ("unknown-make-penalty-name", lambda: actreg.make_penalty("l11"), ("l11", "did you mean")),
    ("type-make-penalty-none", lambda: actreg.make_penalty(None), ("registry name",)),
    ("type-make-penalty-int", lambda: actreg.make_penalty(3), ("registry name",)),
    ("unknown-make-penalty-kwarg", lambda: actreg.make_penalty("l1", coeff=1.0), ("coeff",)),
    ("type-make-penalty-too-many", lambda: actreg.make_penalty("l1", 1, 2, 3), ("l1",)),
    (
        "unknown-make-penalty-dict-keys",
        lambda: actreg.make_penalty({"name": "l1", "coef": 1.0}),
        ("config",),
    ),
    (
        "unknown-from-config-key",
        lambda: actreg.make_penalty({"name": "l1", "config": {"l2": 1.0}}),
        ("l2",),
    ),
    ("type-penalty-call-list", lambda: L1(1e-3)([1.0, 2.0]), ("tensor",)),
    (
        "type-penalty-call-int-tensor",
        lambda: L1(1e-3)(torch.ones(2, 2, dtype=torch.long)),
        ("float",),
    ),
    (
        "range-penalty-dim-out-of-range",
        lambda: actreg.Hoyer(1e-3, dim=5)(torch.ones(2, 3)),
        ("dim",),
    ),
    ("type-scheduled-not-penalty", lambda: actreg.Scheduled(0.1, warmup=5), ("penalty",)),
    ("range-scheduled-warmup-negative", lambda: actreg.Scheduled(L1(), warmup=-1), ("warmup",)),
    ("type-activity-layer-penalty", lambda: actreg.ActivityRegularization("l1"), ("penalty",)),
    # Monitor
    ("type-monitor-model-none", lambda: actreg.Monitor(None, "1"), ("nn.Module",)),
    ("empty-monitor-names", lambda: actreg.Monitor(mlp(), []), ("at least one",)),
    ("unknown-monitor-name", lambda: actreg.Monitor(mlp(), "3"), ("'3'",)),
    ("range-monitor-eps-negative", lambda: actreg.Monitor(mlp(), "1", eps=-0.1), ("eps", ">= 0")),
    ("type-monitor-eps-string", lambda: actreg.Monitor(mlp(), "1", eps="0"), ("eps", "number")),
    ("type-monitor-dim-float", lambda: actreg.Monitor(mlp(), "1", dim=1.0), ("dim", "int")),
    ("unknown-monitor-dim-key", lambda: actreg.Monitor(mlp(), "1", dim={"7": 1}), ("'7'",)),
    ("state-monitor-compute-before-batch", monitor_compute_before_any_batch, ("no batch",)),
    ("shape-monitor-units-change", monitor_units_change, ("units", "reset()")),
    ("type-monitor-int-output", monitor_int_output, ("float",)),
    # TargetSparsity
    ("type-target-not-penalty", lambda: actreg.TargetSparsity("l1", 0.9), ("penalty",)),
    ("range-target-zero-fraction-one", lambda: actreg.TargetSparsity(L1(), 1.0), ("(0, 1)",)),
    ("range-target-zero-fraction-zero", lambda: actreg.TargetSparsity(L1(), 0.0), ("(0, 1)",)),
    ("range-target-negative", lambda: actreg.TargetSparsity(L1(), -0.5), ("(0, 1)", "!>= 0")),
    (
        "range-target-l0-negative",
        lambda: actreg.TargetSparsity(L1(), -2.0, "l0"),
        ("> 0", "!>= 0"),
    ),
    (
        "range-target-min-coef-negative",
        lambda: actreg.TargetSparsity(L1(), 0.9, min_coef=-1.0),
        ("0 < min_coef", "!>= 0"),
    ),
    ("type-target-string", lambda: actreg.TargetSparsity(L1(), "90%"), ("target", "finite number")),
    ("unknown-target-measure", lambda: actreg.TargetSparsity(L1(), 0.9, "l1"), ("measure",)),
    ("range-target-l0-zero", lambda: actreg.TargetSparsity(L1(), 0.0, "l0"), ("> 0",)),
    ("range-target-zero-coef", lambda: actreg.TargetSparsity(L1(0.0), 0.9), ("positive",)),
    (
        "range-target-smoothing",
        lambda: actreg.TargetSparsity(L1(), 0.9, smoothing=1.0),
        ("smoothing",),
    ),
    ("type-target-warmup-float", lambda: actreg.TargetSparsity(L1(), 0.9, warmup=2.5), ("warmup",)),
    (
        "range-target-coef-bounds",
        lambda: actreg.TargetSparsity(L1(1.0), 0.9, max_coef=0.1),
        ("max_coef",),
    ),
    ("shape-target-l0-above-width", l0_target_above_width, ("units", "fewer")),
    ("range-target-on-tanh", lambda: trained_target(nn.Tanh), ("exact zero", "eps", "l0")),
    ("range-target-on-sigmoid", lambda: trained_target(nn.Sigmoid), ("exact zero", "eps", "l0")),
    # codes
    ("range-topk-k-zero", lambda: actreg.TopK(0), ("k",)),
    ("type-topk-k-float", lambda: actreg.TopK(2.5), ("k", "int")),
    ("shape-topk-k-above-width", topk_too_wide, ("k=9", "k <= 8")),
    ("range-batch-topk-k-negative", lambda: actreg.BatchTopK(-1), ("k > 0",)),
    ("range-batch-topk-momentum", lambda: actreg.BatchTopK(2, momentum=0.0), ("momentum",)),
    ("shape-batch-topk-k-above-width", batch_topk_too_wide, ("k=9", "8 units")),
    ("state-batch-topk-eval-untrained", batch_topk_eval_untrained, ("threshold", "train")),
    ("range-jumprelu-threshold-negative", lambda: actreg.JumpReLU(4, threshold=-0.1), ("> 0",)),
    ("range-jumprelu-threshold-zero", lambda: actreg.JumpReLU(4, threshold=0.0), ("> 0",)),
    ("shape-jumprelu-threshold-count", lambda: actreg.JumpReLU(4, threshold=[0.1, 0.2]), ("4",)),
    ("range-jumprelu-units-zero", lambda: actreg.JumpReLU(0), ("units",)),
    ("type-jumprelu-units-float", lambda: actreg.JumpReLU(4.0), ("units", "int")),
    ("range-jumprelu-bandwidth", lambda: actreg.JumpReLU(4, bandwidth=0.0), ("bandwidth",)),
    ("shape-jumprelu-wrong-width", jumprelu_wrong_width, ("units=5",)),
    ("state-jumprelu-l0-before-forward", jumprelu_l0_before_forward, ("forward",)),
    ("type-tie-init-not-linear", lambda: actreg.tie_init(nn.ReLU(), nn.Linear(2, 2)), ("Linear",)),
    # revive
    ("shape-revive-no-producer", revive_without_producer, ("producer", "nn.Linear")),
    ("empty-revive-inputs", lambda: actreg.revive(mlp(), "1", torch.zeros(0, 4)), ("inputs",)),
    ("type-revive-inputs-list", lambda: actreg.revive(mlp(), "1", [[1.0] * 4]), ("tensor",)),
    (
        "unknown-revive-init",
        lambda: actreg.revive(mlp(), "1", torch.randn(4, 4), init="zero"),
        ("init",),
    ),
    (
        "range-revive-scale",
        lambda: actreg.revive(mlp(), "1", torch.randn(4, 4), scale=0),
        ("scale",),
    ),
    ("unknown-revive-layer", lambda: actreg.revive(mlp(), "relu", torch.randn(4, 4)), ("relu",)),
    (
        "type-revive-scale-string",
        lambda: actreg.revive(mlp(), "1", torch.randn(4, 4), scale="x"),
        ("scale",),
    ),
    (
        "shape-revive-targets-rows",
        lambda: actreg.revive(mlp(), "1", torch.randn(4, 4), targets=torch.randn(3, 4)),
        ("targets",),
    ),
    (
        "range-revive-batch-size",
        lambda: actreg.revive(mlp(), "1", torch.randn(4, 4), batch_size=0),
        ("batch_size",),
    ),
    # sparse.convert
    ("type-convert-model", lambda: actreg.sparse.convert("net", threshold=0.5), ("nn.Module",)),
    ("unknown-convert-name", lambda: actreg.sparse.convert(mlp(), ["5"], threshold=0.5), ("'5'",)),
    (
        "type-convert-not-linear",
        lambda: actreg.sparse.convert(mlp(), ["1"], threshold=0.5),
        ("Linear",),
    ),
    (
        "range-convert-threshold",
        lambda: actreg.sparse.convert(mlp(), threshold=1.5),
        ("threshold", "[0, 1]", "1.5", "!entries"),
    ),
    (
        "unknown-convert-threshold-word",
        lambda: actreg.sparse.convert(mlp(), threshold="fast"),
        ("auto",),
    ),
    (
        "unknown-convert-kernels",
        lambda: actreg.sparse.convert(mlp(), threshold=0.5, kernels="gpu"),
        ("kernels",),
    ),
    # metrics
    ("type-metrics-list", lambda: metrics.zero_fraction([0.0, 1.0]), ("tensor",)),
    ("type-metrics-int-tensor", lambda: metrics.l0(torch.ones(2, 3, dtype=torch.long)), ("float",)),
    (
        "range-metrics-eps-negative",
        lambda: metrics.zero_fraction(torch.ones(3), eps=-1.0),
        ("eps",),
    ),
    ("range-metrics-dim", lambda: metrics.l0(torch.ones(2, 3), dim=2), ("dim",)),
    ("shape-metrics-zero-dim", lambda: metrics.firing_rate(torch.tensor(1.0)), ("0-dim",)),
    ("type-metrics-hoyer-dim-string", lambda: metrics.hoyer(torch.ones(2, 3), dim="-1"), ("dim",)),
    # checkpoints
    (
        "unknown-load-checkpoint-missing",
        lambda: actreg.load_checkpoint("/nonexistent/ckpt.pt"),
        ("/nonexistent/ckpt.pt",),
    ),
]


@pytest.mark.parametrize(("call", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_an_actreg_error_naming_it(call, words):
    with pytest.raises(actreg.ActregError) as info:
        call()
    message = str(info.value)
    missing = [w for w in words if not w.startswith("!") and w.lower() not in message.lower()]
    wrong = [w[1:] for w in words if w.startswith("!") and w[1:].lower() in message.lower()]
    assert not missing and not wrong, f"missing {missing}, should not say {wrong}: {message}"
    assert len(message) > 25, message  # a sentence, not a bare value


def test_the_list_has_more_than_fifty_library_inputs():
    assert len({c[0] for c in CASES}) == len(CASES) > 50


def forward_under_no_grad(model: nn.Module) -> None:
    with torch.no_grad():
        model(torch.randn(2, 4))


def forward_in_eval_mode(model: nn.Module) -> None:
    model.eval()
    model(torch.randn(2, 4))
    model.train()


# A training step whose penalty() found nothing: the warning names the real cause.
EMPTY_STEPS = [
    ("train-mode-under-no-grad", forward_under_no_grad, "torch.no_grad()"),
    ("eval-mode-only", forward_in_eval_mode, "model.train()"),
]


@pytest.mark.parametrize(
    ("run", "cause"), [c[1:] for c in EMPTY_STEPS], ids=[c[0] for c in EMPTY_STEPS]
)
def test_an_empty_penalty_warns_with_its_cause_and_does_not_blame_compile(run, cause):
    model = mlp()
    reg = actreg.attach(model, {"1": L1()})
    run(model)
    with pytest.warns(UserWarning, match="found nothing recorded") as caught:
        reg.penalty()
    message = str(caught[0].message)
    assert cause in message
    assert "compile" not in message
