"""torch.compile: attach before compiling gives eager's penalty and gradients, no graph break."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import actreg

pytestmark = pytest.mark.skipif(
    not hasattr(torch, "compile"), reason="torch.compile needs torch >= 2.0"
)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    # Dynamo caches compiled code per class and does not guard on hooks: start clean.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _mlp(cls_name: str) -> nn.Module:
    """A small MLP of a class of its own (compiled code is cached per class)."""

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))

    def init(self):
        nn.Module.__init__(self)
        self.fc1, self.act1 = nn.Linear(6, 16), nn.ReLU()
        self.fc2, self.act2 = nn.Linear(16, 16), nn.Sigmoid()
        self.head = nn.Linear(16, 3)

    cls = type(cls_name, (nn.Module,), {"__init__": init, "forward": forward})
    torch.manual_seed(0)
    return cls()


SPEC = {
    "act1": actreg.L1(1e-2) + actreg.L2(1e-3),
    "act2": actreg.KLSparsity(0.5, target=0.1, validate=False),
    "fc2": actreg.Hoyer(1e-2),
}


def _step(model, reg, x):
    loss = model(x).pow(2).mean() + reg.penalty()
    loss.backward()
    return loss.detach()


def test_compiled_equals_eager_fullgraph():
    x = torch.randn(8, 6)
    eager = _mlp("EagerMLP")
    reg_e = actreg.attach(eager, SPEC)
    compiled = _mlp("CompiledMLP")
    reg_c = actreg.attach(compiled, SPEC)  # attach first, then compile
    fast = torch.compile(compiled, backend="aot_eager", fullgraph=True)  # no graph break
    for _ in range(2):
        for model in (eager, compiled):
            model.zero_grad()
        torch.testing.assert_close(_step(fast, reg_c, x), _step(eager, reg_e, x))
        assert reg_c.last.keys() == reg_e.last.keys() == SPEC.keys()
        for name in SPEC:
            assert reg_c.last[name] == pytest.approx(reg_e.last[name], rel=1e-5)
        for pc, pe in zip(compiled.parameters(), eager.parameters(), strict=True):
            torch.testing.assert_close(pc.grad, pe.grad)


def test_no_graph_break_from_hooks():
    model = _mlp("ExplainMLP")
    reg = actreg.attach(model, SPEC)
    explained = torch._dynamo.explain(model)(torch.randn(4, 6))
    assert explained.graph_break_count == 0, explained.break_reasons
    reg.clear()


def test_validate_true_breaks_the_graph():
    # KLSparsity/Binary(validate=True) read a value on the host: pass validate=False.
    model = _mlp("ValidateMLP")
    reg = actreg.attach(model, {"act2": actreg.Binary(1e-3)})
    explained = torch._dynamo.explain(model)(torch.randn(4, 6))
    assert explained.graph_break_count >= 1
    reg.clear()


def test_attach_to_compiled_wrapper_refused():
    fast = torch.compile(_mlp("WrappedMLP"), backend="eager")
    with pytest.raises(actreg.ActregError, match="Attach first, then compile"):
        actreg.attach(fast, {"_orig_mod.act1": actreg.L1(1.0)})
    outer = nn.Sequential(fast)
    with pytest.raises(actreg.ActregError, match="submodule '0' is a torch.compile"):
        actreg.attach(outer, {"0._orig_mod.act1": actreg.L1(1.0)})


def test_attach_to_module_compiled_in_place_refused():
    model = _mlp("InPlaceMLP")
    model.compile(backend="eager")
    with pytest.raises(actreg.ActregError, match=r"before module.compile\(\)"):
        actreg.attach(model, {"act1": actreg.L1(1.0)})


def test_hooks_unseen_by_compiled_code_warn():
    # The original module of a compiled wrapper, attached after the first compiled call:
    # compiled code does not run the new hooks. penalty() says so instead of returning 0.
    model = _mlp("LateMLP")
    fast = torch.compile(model, backend="eager")
    x = torch.randn(4, 6)
    fast(x)
    reg = actreg.attach(model, {"act1": actreg.L1(1.0)})
    fast(x)
    with pytest.warns(UserWarning, match="attach before compiling"):
        assert float(reg.penalty()) == 0.0
