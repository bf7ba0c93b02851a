"""Mixed precision, gradient checkpointing in a bigger model, check_finite, Lightning."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import actreg


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.fc(x))


class Deep(nn.Module):
    """Four blocks; ``ckpt`` (None, "non-reentrant", "reentrant") checkpoints blocks 1-2."""

    def __init__(self, ckpt: str | None = None, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Linear(5, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(4))
        self.head = nn.Linear(width, 2)
        self.ckpt = ckpt

    def _middle(self, h):
        return self.blocks[2](self.blocks[1](h))

    def forward(self, x):
        h = self.blocks[0](self.stem(x))
        if self.ckpt is None:
            h = self._middle(h)
        else:
            h = checkpoint(self._middle, h, use_reentrant=self.ckpt == "reentrant")
        return self.head(self.blocks[3](h))


SPEC = {"blocks.*.act": actreg.L1(1e-2), "blocks.1.fc": actreg.L2(1e-2)}

# ---- mixed precision ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_autocast_cpu_penalty_in_float32(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 512), nn.ReLU())
    seen = []
    model[1].register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    reg = actreg.attach(model, {"1": actreg.L2(1.0, "sum")})
    x = torch.randn(4, 10) * 300  # sum of squares ~1e9: overflows float16 (max 65504)
    with torch.autocast("cpu", dtype=dtype):
        out = model(x)
    assert out.dtype == dtype
    penalty = reg.penalty()
    assert penalty.dtype == torch.float32
    assert torch.isfinite(penalty)
    assert (seen[0].float().pow(2).sum() > torch.finfo(torch.float16).max).item()
    torch.testing.assert_close(penalty.detach(), seen[0].float().pow(2).sum())
    if dtype == torch.bfloat16:  # float16 gradients of this size need a GradScaler
        penalty.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_autocast_cuda_float16_does_not_overflow():
    model = nn.Sequential(nn.Linear(10, 512), nn.ReLU()).cuda()
    reg = actreg.attach(model, {"1": actreg.L2(1.0, "sum") + actreg.L1(1.0)})
    with torch.autocast("cuda", dtype=torch.float16):
        out = model(torch.randn(4, 10, device="cuda") * 300)
    assert out.dtype == torch.float16
    penalty = reg.penalty()
    assert penalty.dtype == torch.float32 and torch.isfinite(penalty)


# ---- gradient checkpointing ----------------------------------------------------------


def _grads(ckpt: str | None, spec=SPEC):
    torch.manual_seed(0)
    model = Deep(ckpt)
    reg = actreg.attach(model, spec)
    x = torch.randn(6, 5)
    loss = model(x).pow(2).mean()
    penalty = reg.penalty()
    (loss + penalty).backward()
    return [p.grad.clone() for p in model.parameters()], penalty.detach(), reg


def test_checkpointed_model_matches_plain_model():
    plain, p_plain, _ = _grads(None)
    ckpt, p_ckpt, reg = _grads("non-reentrant")
    torch.testing.assert_close(p_ckpt, p_plain)
    for a, b in zip(ckpt, plain, strict=True):
        torch.testing.assert_close(a, b)
    assert reg.pending == 0  # recomputation recorded nothing
    assert set(reg.last) == {f"blocks.{i}.act" for i in range(4)} | {"blocks.1.fc"}


def test_checkpoint_penalty_gradient_flows_into_segment():
    # Only the penalty on a checkpointed layer: its gradient must reach that layer.
    spec = {"blocks.1.act": actreg.L1(10.0)}
    plain, _, _ = _grads(None, spec)
    ckpt, _, _ = _grads("non-reentrant", spec)
    without, _, _ = _grads(None, {"blocks.3.act": actreg.L1(0.0)})
    fc1 = 3  # stem.weight, stem.bias, blocks.0.fc.weight, blocks.0.fc.bias, blocks.1.fc.weight
    torch.testing.assert_close(ckpt[fc1 + 1], plain[fc1 + 1])
    assert not torch.allclose(plain[fc1 + 1], without[fc1 + 1])


def test_reentrant_checkpoint_warns_that_penalty_is_lost():
    with pytest.warns(UserWarning, match="use_reentrant=False"):
        _grads("reentrant")


# ---- check_finite -----------------------------------------------------------------------


def test_check_finite_names_layer_and_step():
    model = Deep()
    reg = actreg.attach(model, SPEC, check_finite=True)
    x = torch.randn(3, 5)
    for _ in range(2):
        (model(x).sum() + reg.penalty()).backward()
    with torch.no_grad():
        model.blocks[1].fc.bias[0] = float("nan")
    with pytest.raises(actreg.ActregError, match=r"module 'blocks.1.fc' at step 2 .*3 NaN"):
        model(x)


def test_check_finite_inf_and_off_by_default():
    model = Deep()
    with torch.no_grad():
        model.stem.bias.fill_(float("inf"))
    reg = actreg.attach(model, {"blocks.0.act": actreg.L1(1.0)})
    model(torch.randn(2, 5))  # off: no check, no host sync
    reg.clear()
    checked = actreg.attach(model, {"blocks.0.act": actreg.L1(1.0)}, check_finite=True)
    model.eval()
    model(torch.randn(2, 5))  # not recorded in eval, so not checked
    model.train()
    with pytest.raises(actreg.ActregError, match=r"'blocks.0.act' at step 0 .* inf"):
        model(torch.randn(2, 5))
    checked.remove()


# ---- Lightning --------------------------------------------------------------------------


def test_mixin_without_regularizer_raises():
    from actreg.integrations.lightning import ActregMixin

    with pytest.raises(actreg.ActregError, match="self.reg = actreg.attach"):
        ActregMixin().add_penalty(torch.zeros(()))


def test_lightning_training_logs_penalty_and_monitor(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from actreg.integrations.lightning import ActregCallback, ActregMixin

    class Module(ActregMixin, pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = Deep()
            self.reg = actreg.attach(self.net, {"blocks.*.act": actreg.L1(1e-3)})

        def training_step(self, batch, batch_idx):
            x, y = batch
            return self.add_penalty(nn.functional.mse_loss(self.net(x), y))

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.net(x * 100), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = torch.utils.data.TensorDataset(torch.randn(32, 5), torch.randn(32, 2))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    module = Module()
    monitor = actreg.Monitor(module.net, "blocks.3.act")
    callback = ActregCallback(monitor)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, loader, loader)
    metrics = trainer.callback_metrics
    assert "actreg/penalty_epoch" in metrics and "actreg/penalty/blocks.3.act" in metrics
    assert float(metrics["actreg/penalty_epoch"]) > 0
    assert 0.0 <= float(metrics["actreg/blocks.3.act/zero_fraction"]) <= 1.0
    # The logged statistics cover the last epoch's 4 training batches, not validation.
    expected_positions = 32
    state = monitor.state_dict()["layers"]["blocks.3.act"]
    assert state["positions"] == expected_positions
    assert module.reg.pending == 0
    assert copy.deepcopy(callback).prefix == "actreg"
