"""PyTorch Lightning: add the penalty in ``training_step``, log Monitor statistics per epoch.

Lightning is imported only when :class:`ActregCallback` is first used, so importing this
module (or ``actreg``) never imports Lightning. Install it with ``pip install
'actreg[lightning]'``.

Example:
    >>> import torch, actreg
    >>> from actreg.integrations.lightning import ActregMixin
    >>> class Net(ActregMixin, torch.nn.Module):  # a LightningModule in practice
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
    ...         self.reg = actreg.attach(self.body, {"1": actreg.L1(1e-3)})
    ...     def training_step(self, batch, batch_idx):
    ...         return self.add_penalty(self.body(batch).pow(2).mean())
    >>> loss = Net().training_step(torch.randn(2, 4), 0)
    >>> loss.shape
    torch.Size([])
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import Tensor

from actreg._errors import ActregError
from actreg.monitor import Monitor
from actreg.regularizer import Regularizer

__all__ = ["ActregCallback", "ActregMixin"]  # noqa: F822 - ActregCallback is built lazily


class ActregMixin:
    """Mixin for a ``LightningModule`` holding a :class:`~actreg.Regularizer` as ``self.reg``.

    In ``training_step``, ``return self.add_penalty(task_loss)``: it adds
    ``self.reg.penalty()`` and logs the total as ``actreg/penalty`` (and each layer's value
    as ``actreg/penalty/<layer>``) when the module has Lightning's ``log``.
    """

    def add_penalty(
        self, loss: Tensor, reg: Regularizer | None = None, prefix: str = "actreg"
    ) -> Tensor:
        """Return ``loss + reg.penalty()`` (``reg`` defaults to ``self.reg``) and log it."""
        reg = reg if reg is not None else getattr(self, "reg", None)
        if not isinstance(reg, Regularizer):
            raise ActregError(
                "add_penalty needs a Regularizer: set self.reg = actreg.attach(...) in "
                "__init__ (attach to the modules, before any torch.compile), or pass reg="
            )
        penalty = reg.penalty()
        log = getattr(self, "log", None)
        if callable(log) and getattr(self, "_trainer", None) is not None:
            log(f"{prefix}/penalty", penalty.detach(), on_step=True, on_epoch=True)
            for name, value in reg._last.items():
                log(f"{prefix}/penalty/{name}", value, on_step=False, on_epoch=True)
        return loss + penalty


_CLASSES: dict[str, type] = {}


def _callback_class() -> type:
    """Build ActregCallback on first use, subclassing Lightning's ``Callback``."""
    if "ActregCallback" in _CLASSES:
        return _CLASSES["ActregCallback"]
    base: Any = None
    for package in ("lightning.pytorch", "pytorch_lightning"):
        try:
            base = importlib.import_module(package).Callback
            break
        except ImportError:
            continue
    if base is None:
        raise ActregError("ActregCallback needs Lightning: pip install 'actreg[lightning]'")

    class ActregCallback(base):
        """Logs a :class:`~actreg.Monitor`'s statistics at the end of every training epoch.

        Statistics cover the training batches of the epoch only: what validation adds is
        dropped. Scalars go through ``pl_module.log`` as ``{prefix}/{layer}/{metric}``;
        firing rates go to the logger as histograms when it has ``add_histogram``
        (TensorBoard). Under DDP the statistics of every rank are combined.

        Args:
            monitor: the Monitor to log (create it on the model before training).
            prefix: the metric name prefix.
            sync: combine ranks with ``Monitor.compute(sync=True)``; by default when the
                trainer runs more than one process.
        """

        def __init__(self, monitor: Monitor, prefix: str = "actreg", sync: bool | None = None):
            super().__init__()
            if not isinstance(monitor, Monitor):
                raise ActregError(f"ActregCallback needs an actreg.Monitor, got {monitor!r}")
            self.monitor = monitor
            self.prefix = prefix
            self.sync = sync
            self._saved: dict[str, Any] | None = None

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.monitor.reset()

        def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self._saved = self.monitor.state_dict()

        def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if self._saved is not None:
                self.monitor.load_state_dict(self._saved)
                self._saved = None

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            sync = self.sync if self.sync is not None else trainer.world_size > 1
            stats = self.monitor.compute(sync=sync)
            experiment = getattr(getattr(trainer, "logger", None), "experiment", None)
            add_histogram = getattr(experiment, "add_histogram", None)
            for layer, values in stats.items():
                for key, value in values.items():
                    tag = f"{self.prefix}/{layer}/{key}"
                    if isinstance(value, Tensor):
                        if callable(add_histogram) and trainer.is_global_zero:
                            add_histogram(tag, value, trainer.current_epoch)
                    else:
                        pl_module.log(tag, value, on_epoch=True, sync_dist=False)

    ActregCallback.__module__ = __name__
    _CLASSES["ActregCallback"] = ActregCallback
    return ActregCallback


def __getattr__(name: str) -> Any:
    if name == "ActregCallback":
        return _callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
