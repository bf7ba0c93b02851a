"""actreg.Monitor: exact accumulation, agreement with actreg.metrics, hooks and bad input."""

from __future__ import annotations

import copy
import gc
import weakref
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import actreg
from actreg import ActregError, _sweep
from actreg import metrics as M

SCALARS = ("zero_fraction", "l0", "mean_abs", "rms", "hoyer", "dead_fraction", "max")


def passthrough() -> nn.Module:
    """A model whose layer ``act`` outputs exactly the input fed to it."""
    return nn.Sequential(OrderedDict(act=nn.Identity()))


def expected(x: torch.Tensor, dim: int, eps: float) -> dict:
    """What Monitor.compute() must say after seeing ``x``, from actreg.metrics."""
    rates = M.firing_rate(x, dim, eps).double()
    return {
        "zero_fraction": M.zero_fraction(x, eps).item(),
        "l0": M.l0(x, dim, eps).item(),
        "mean_abs": M.mean_abs(x).item(),
        "rms": M.rms(x).item(),
        "hoyer": M.hoyer(x, dim).item(),
        "dead_fraction": (rates == 0).double().mean().item(),
        "max": x.max().item(),
        "firing_rate": rates,
    }


def assert_stats_equal(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key in SCALARS:
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    torch.testing.assert_close(got["firing_rate"], want["firing_rate"])


def _data(shape, dim):
    x = torch.relu(torch.randn(*shape))
    units = shape[dim]
    x.movedim(dim, -1)[..., : units // 4] = 0.0  # some dead units
    return x


SHAPES = {
    "linear": ((24, 16), -1),
    "sequence": ((12, 5, 8), -1),
    "conv": ((8, 6, 4, 4), 1),
}


@pytest.mark.parametrize("eps", [0.0, 0.2], ids=["eps0", "eps0.2"])
@pytest.mark.parametrize("kind", list(SHAPES), ids=list(SHAPES))
def test_split_batches_equal_one_batch_and_metrics(kind, eps):
    shape, dim = SHAPES[kind]
    x = _data(shape, dim)
    one, split = passthrough(), passthrough()
    with actreg.Monitor(one, "act", eps=eps, dim=dim) as m1:
        one(x)
        whole = m1.compute()["act"]
    with actreg.Monitor(split, "act", eps=eps, dim=dim) as m2:
        for part in x.split([3, 0, 5, shape[0] - 8]):  # includes an empty batch
            split(part)
        parts = m2.compute()["act"]
    # counts are exact; float sums agree to rounding
    torch.testing.assert_close(parts["firing_rate"], whole["firing_rate"], rtol=0, atol=0)
    assert parts["l0"] == whole["l0"] and parts["dead_fraction"] == whole["dead_fraction"]
    assert_stats_equal(parts, whole)
    assert_stats_equal(whole, expected(x, dim, eps))


def test_records_in_eval_and_no_grad():
    model = passthrough().eval()
    x = torch.randn(5, 3)
    with actreg.Monitor(model, "act") as mon, torch.no_grad():
        model(x)
        assert_stats_equal(mon.compute()["act"], expected(x, -1, 0.0))


def test_reset_starts_a_new_window():
    model = passthrough()
    with actreg.Monitor(model, "act") as mon:
        model(torch.ones(4, 3))
        mon.reset()
        with pytest.raises(actreg.ActregError, match="no batch seen"):
            mon.compute()
        x = torch.tensor([[0.0, 1.0, 0.0]])
        model(x)
        stats = mon.compute()["act"]
    assert stats["dead_fraction"] == pytest.approx(2 / 3)
    assert stats["l0"] == 1.0


def _mlp() -> nn.Module:
    return nn.Sequential(
        OrderedDict(fc1=nn.Linear(6, 32), act1=nn.ReLU(), fc2=nn.Linear(32, 3), act2=nn.Tanh())
    )


def test_no_tensor_kept_alive_after_a_step():
    model = _mlp()
    seen: list[weakref.ref] = []
    model.act1.register_forward_hook(lambda m, a, out: seen.append(weakref.ref(out)))
    mon = actreg.Monitor(model, ["act1", "act2"])
    reg = actreg.attach(model, {"act1": actreg.L1(1e-3)})
    loss = model(torch.randn(8, 6)).square().sum() + reg.penalty()
    loss.backward()
    del loss
    gc.collect()
    assert seen and seen[0]() is None
    for state in mon.state_dict()["layers"].values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                assert value.grad_fn is None and not value.requires_grad
    mon.remove()
    reg.remove()


def test_glob_patterns_and_dim_mapping():
    model = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(1, 4, 3), cact=nn.ReLU(), flat=nn.Flatten(), lin=nn.LazyLinear(5)
        )
    )
    mon = actreg.Monitor(model, ["c*", "lin"], dim={"c*": 1})
    assert mon.layers == ["conv", "cact", "lin"]
    model(torch.randn(2, 1, 6, 6))
    stats = mon.compute()
    assert stats["cact"]["firing_rate"].shape == (4,)
    assert stats["lin"]["firing_rate"].shape == (5,)
    assert repr(mon) == "Monitor(['conv', 'cact', 'lin'], eps=0)"
    mon.remove()
    assert "removed" in repr(mon)


def test_lstm_output_sequence_and_select():
    lstm = nn.LSTM(3, 7, batch_first=True)
    model = nn.Sequential(OrderedDict(lstm=lstm))
    x = torch.randn(2, 5, 3)
    with actreg.Monitor(model, "lstm") as mon:
        out, (h, _) = model(x)
        assert_stats_equal(mon.compute()["lstm"], expected(out.detach(), -1, 0.0))
    with actreg.Monitor(model, "lstm", select=lambda o: o[1][0]) as mon:
        model(x)
        assert_stats_equal(mon.compute()["lstm"], expected(h.detach(), -1, 0.0))


def test_checkpoint_recomputation_is_not_counted():
    model = _mlp()

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return checkpoint(self.inner, x, use_reentrant=False)

    net = Wrapped()
    with actreg.Monitor(net, "inner.act1") as mon:
        net(torch.randn(4, 6)).sum().backward()
        assert mon.state_dict()["layers"]["inner.act1"]["positions"] == 4


def test_remove_and_deepcopy_stop_recording():
    model = passthrough()
    mon = actreg.Monitor(model, "act")
    clone = copy.deepcopy(model)
    clone(torch.ones(2, 2))
    with pytest.raises(actreg.ActregError, match="no batch seen"):
        mon.compute()
    mon.remove()
    mon.remove()
    model(torch.ones(2, 2))
    with pytest.raises(actreg.ActregError, match="no batch seen"):
        mon.compute()


def test_state_dict_round_trip():
    model = passthrough()
    mon = actreg.Monitor(model, "act", eps=0.1)
    model(torch.randn(6, 4))
    saved = mon.state_dict()
    other = actreg.Monitor(passthrough(), "act", eps=0.1)
    other.load_state_dict(saved)
    model(torch.randn(6, 4))
    other.load_state_dict(mon.state_dict())
    assert_stats_equal(other.compute()["act"], mon.compute()["act"])
    with pytest.raises(ActregError, match="eps=0.1"):
        actreg.Monitor(passthrough(), "act").load_state_dict(saved)
    with pytest.raises(ActregError, match="does not watch"):
        actreg.Monitor(nn.Sequential(OrderedDict(b=nn.ReLU())), "b", eps=0.1).load_state_dict(saved)
    with pytest.raises(ActregError, match="not a Monitor state_dict"):
        other.load_state_dict({"layers": {}})
    with pytest.raises(ActregError, match="incomplete or malformed"):
        other.load_state_dict({"eps": 0.1, "layers": {"act": {"units": 4}}})


def test_tensorboard_log_writes_events(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    model = passthrough()
    with actreg.Monitor(model, "act") as mon:
        model(torch.relu(torch.randn(16, 8)))
        writer = SummaryWriter(log_dir=str(tmp_path))
        stats = mon.log(writer, step=3, prefix="sparsity")
        writer.close()
    files = list(tmp_path.glob("events.out.tfevents.*"))
    assert files and files[0].stat().st_size > 200
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    event = acc.Scalars("sparsity/act/zero_fraction")[0]
    assert event.step == 3 and event.value == pytest.approx(stats["act"]["zero_fraction"])
    assert "sparsity/act/firing_rate" in acc.Tags()["histograms"]


def test_sync_single_rank_process_group(tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    model = passthrough()
    mon = actreg.Monitor(model, "act")
    model(torch.randn(4, 3))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        assert_stats_equal(mon.compute(sync=True)["act"], mon.compute()["act"])
    finally:
        dist.destroy_process_group()


def test_sync_merges_ranks(monkeypatch):
    """Two ranks simulated in one process: the all-reduce adds the other rank's tensors."""
    import torch.distributed as dist

    x_here, x_there = torch.relu(torch.randn(5, 6)), torch.relu(torch.randn(7, 6))
    here = actreg.Monitor(passthrough(), "act")
    here._update("act", x_here, -1)
    there = actreg.Monitor(passthrough(), "act")
    there._update("act", x_there, -1)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    # Record the other rank's inputs to each collective, then replay them.
    theirs: list[torch.Tensor] = []
    monkeypatch.setattr(dist, "all_reduce", lambda t, op: theirs.append(t.clone()))
    there.compute(sync=True)

    def all_reduce(t, op):
        other = theirs.pop(0)
        if op == dist.ReduceOp.SUM:
            t += other
        else:
            torch.maximum(t, other, out=t)

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    merged = here.compute(sync=True)["act"]
    assert_stats_equal(merged, expected(torch.cat([x_here, x_there]), -1, 0.0))
    assert here.state_dict()["layers"]["act"]["positions"] == 5  # local state unchanged


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda m: actreg.Monitor(m, "fc"), r"no module named 'fc'.*'fc1'"),
        (lambda m: actreg.Monitor(m, "layer*"), "matches no module"),
        (lambda m: actreg.Monitor(m, []), "at least one module"),
        (lambda m: actreg.Monitor(m, "act1", eps=-0.5), "eps must be finite and >= 0"),
        (lambda m: actreg.Monitor(m, "act1", dim={"act9": 1}), "no module named 'act9'"),
        (lambda m: actreg.Monitor(m, "act1", dim=1.0), "dim for 'act1' must be an int"),
        (lambda m: actreg.Monitor(m, "act1", select=3), "select must be"),
        (lambda m: actreg.Monitor(nn.DataParallel(m), "module.act1"), "DataParallel"),
    ],
    ids=["unknown", "pattern", "empty", "eps", "dim_key", "dim_type", "select", "dataparallel"],
)
def test_bad_construction(build, match):
    with pytest.raises(ActregError, match=match):
        build(_mlp())


@pytest.mark.parametrize(
    ("dim", "x", "match"),
    [
        (3, torch.ones(2, 3), r"layer 'act'.*dim=3 is out of range .* \(2, 3\)"),
        (-1, torch.ones(2, 3, dtype=torch.long), "floating-point tensor, got dtype torch.int64"),
        (-1, torch.tensor(1.0), "0-dim"),
    ],
    ids=["axis", "integer", "scalar"],
)
def test_bad_batches(dim, x, match):
    model = passthrough()
    with actreg.Monitor(model, "act", dim=dim), pytest.raises(ActregError, match=match):
        model(x)


def test_unit_count_change_is_an_error():
    model = passthrough()
    with actreg.Monitor(model, "act") as mon:
        model(torch.ones(2, 3))
        with pytest.raises(ActregError, match="earlier batches had 3"):
            model(torch.ones(2, 4))
        mon.reset()
        model(torch.ones(2, 4))


@pytest.mark.parametrize("block", [7, 100], ids=["block7", "block100"])
@pytest.mark.parametrize("eps", [0.0, 0.2], ids=["eps0", "eps0.2"])
@pytest.mark.parametrize("kind", [*SHAPES, "dim0"], ids=[*SHAPES, "dim0"])
def test_signed_data_in_small_blocks_match_metrics(kind, eps, block, monkeypatch):
    """Negative values, several blocks per batch, reused buffers: still the metrics."""
    monkeypatch.setattr(_sweep, "BLOCK", block)
    shape, dim = SHAPES[kind] if kind != "dim0" else ((6, 9, 4), 0)
    x = torch.randn(*shape) * 2
    x.view(-1)[::4] = 0.0
    net = passthrough()
    with actreg.Monitor(net, "act", eps=eps, dim=dim) as mon:
        for part in x.split(5 if dim != 0 else 3, dim=0 if dim != 0 else 1):
            net(part)
        assert_stats_equal(mon.compute()["act"], expected(x, dim, eps))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=str)
def test_other_dtypes_use_their_own_buffers(dtype):
    net = passthrough()
    x = torch.relu(torch.randn(10, 3, 4, 4))
    with actreg.Monitor(net, "act", dim=1) as mon:
        net(x)
        net(x.to(dtype))
        got = mon.compute()["act"]
    assert_stats_equal(got, expected(torch.cat([x, x.to(dtype).float()]), 1, 0.0))


@pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile needs torch >= 2.0")
def test_compiled_model_does_not_recompile_every_step():
    """The hook's running counts are tensors: no guard on a Python int that changes."""
    import torch._dynamo as dynamo

    dynamo.reset()
    try:

        class MonitoredConv(nn.Module):  # a class of its own: compiled code is per class
            def __init__(self):
                super().__init__()
                self.conv, self.act = nn.Conv2d(2, 6, 3), nn.ReLU()

            def forward(self, x):
                return self.act(self.conv(x))

        torch.manual_seed(0)
        model = MonitoredConv()
        mon = actreg.Monitor(model, "act", dim=1)
        fast = torch.compile(model, backend="eager")
        xs = [torch.randn(4, 2, 7, 7) for _ in range(6)]
        dynamo.utils.counters.clear()
        with torch.no_grad():
            for x in xs:
                fast(x)
            seen = torch.cat([model.act(model.conv(x)) for x in xs])
        assert dynamo.utils.counters["stats"]["unique_graphs"] <= 2  # first call, then one
        assert_stats_equal(mon.compute()["act"], expected(seen, 1, 0.0))
    finally:
        dynamo.reset()


def test_cpu_buffers_are_reused_and_freed_on_remove():
    net = nn.Sequential(OrderedDict(a=nn.Identity(), b=nn.Identity()))
    mon = actreg.Monitor(net, ["a", "b"], dim=1)
    mon.kernels = actreg._cpp.Backend("actreg_monitor", "monitor.cpp", "C++", mode="off")
    net(torch.relu(torch.randn(8, 3, 5, 5)))  # the PyTorch path's buffers
    scratch = mon._scratch[torch.float32]
    work = scratch.buffers["work"]
    net(torch.relu(torch.randn(8, 3, 5, 5)))  # same shapes: the same buffers and views
    assert scratch.buffers["work"] is work and len(scratch.plans) == 1
    mon.remove()
    assert mon._scratch == {}
    assert mon.compute()["a"]["l0"] > 0  # statistics stay readable
