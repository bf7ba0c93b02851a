"""DistributedDataParallel (gloo, two processes on loopback): penalties and Monitor stats.

One spawn runs every case; each test compares rank 0's results with one process on the
concatenated batch.
"""

from __future__ import annotations

import faulthandler
import gc
import multiprocessing
import socket
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import actreg

WORLD = 2
LOCAL = 4  # examples per rank
CASES = {  # name -> (penalty factory, factor applied to reg.penalty() on each rank)
    "batch": (lambda: actreg.L1(0.1), 1.0),
    "mean": (lambda: actreg.AR(0.5), 1.0),
    "sum": (lambda: actreg.L2(0.05, "sum"), 1.0),
    "sum_times_world": (lambda: actreg.L2(0.05, "sum"), float(WORLD)),
}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(WORLD * LOCAL, 6, generator=gen), torch.randn(
        WORLD * LOCAL, 3, generator=gen
    )


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


def _run(rank: int) -> dict[str, object]:
    """Every case on this rank; DDP objects are freed on return, before the group goes."""
    x, y = _data()
    xs, ys = x[rank * LOCAL : (rank + 1) * LOCAL], y[rank * LOCAL : (rank + 1) * LOCAL]
    results: dict[str, object] = {}
    for name, (make, factor) in CASES.items():
        ddp = nn.parallel.DistributedDataParallel(_model())
        reg = actreg.attach(ddp, {"module.1": make()})
        loss = nn.functional.mse_loss(ddp(xs), ys) + factor * reg.penalty()
        loss.backward()
        results[name] = _grads(ddp.module)
        reg.remove()
    model = _model()
    with actreg.Monitor(model, ["0", "1"]) as mon:
        model(xs)
        model(xs[:1] * 3)  # unequal local batches are fine for statistics
        results["monitor"] = mon.compute(sync=True)
    return results


def _worker(rank: int, port: int, out: str) -> None:
    faulthandler.dump_traceback_later(60, exit=True)  # a hung worker says where, then exits
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        results = _run(rank)
        gc.collect()
        dist.barrier()
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    out = str(tmp_path_factory.mktemp("ddp") / "results.pt")
    # Not "fork": the parent has run OpenMP regions, and forked children can hang. A fork
    # server imports torch (and DDP's lazy imports) once, then forks both workers.
    method = "forkserver" if sys.platform == "linux" else "spawn"
    if method == "forkserver":
        multiprocessing.set_forkserver_preload(["torch", "torch._dynamo", "actreg"])
    ctx = mp.start_processes(
        _worker, args=(_free_port(), out), nprocs=WORLD, join=False, start_method=method
    )
    deadline = time.monotonic() + 90
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("the DDP workers did not finish within 90 s")
    return torch.load(out, weights_only=True)


def _single(name: str, penalty_factor: float = 1.0) -> list[torch.Tensor]:
    """One process, the whole batch: task loss + penalty_factor * penalty."""
    make, _ = CASES[name]
    model = _model()
    reg = actreg.attach(model, {"1": make()})
    x, y = _data()
    (nn.functional.mse_loss(model(x), y) + penalty_factor * reg.penalty()).backward()
    return _grads(model)


def _assert_close(got, expected):
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["batch", "mean"], ids=["batch", "mean"])
def test_batch_and_mean_reductions_equal_one_process(ddp_results, name):
    _assert_close(ddp_results[name], _single(name))


def test_sum_reduction_is_averaged_by_ddp(ddp_results):
    # Each rank's sum gets averaged: the penalty counts 1/world_size of the global sum.
    _assert_close(ddp_results["sum"], _single("sum", 1.0 / WORLD))
    with pytest.raises(AssertionError):
        _assert_close(ddp_results["sum"], _single("sum"))


def test_sum_reduction_times_world_size_equals_one_process(ddp_results):
    _assert_close(ddp_results["sum_times_world"], _single("sum"))


def test_monitor_sync_equals_one_process(ddp_results):
    model = _model()
    x, _ = _data()
    with actreg.Monitor(model, ["0", "1"]) as mon:
        for rank in range(WORLD):
            xs = x[rank * LOCAL : (rank + 1) * LOCAL]
            model(xs)
            model(xs[:1] * 3)
        expected = mon.compute()
    got = ddp_results["monitor"]
    assert set(got) == set(expected) == {"0", "1"}
    for layer, values in expected.items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(got[layer][key], value)
            else:
                assert got[layer][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_data_parallel_refused():
    with pytest.raises(actreg.ActregError, match="DistributedDataParallel"):
        actreg.attach(nn.DataParallel(_model()), {"module.1": actreg.L1(1.0)})
