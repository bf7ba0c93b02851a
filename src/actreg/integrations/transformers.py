"""Hugging Face ``transformers``: the penalty in any ``Trainer``, sparsity in its logs.

:class:`ActregCallback` is a ``transformers.TrainerCallback``. Given to a ``Trainer`` (or a
subclass such as TRL's trainers), it adds ``reg.penalty()`` to the loss that the model
returns in each training forward, and logs each penalized layer's value (``actreg/<name>``)
and, with a :class:`~actreg.Monitor`, the sparsity of the watched layers at every
evaluation (``eval_actreg/<name>/zero_fraction``, ...). ``transformers`` is imported only
when the callback is built, so importing this module (or ``actreg``) never imports it.
Install it with ``pip install 'actreg[transformers]'``.

Example (``model`` a ``GPT2LMHeadModel``; its FFN activations are
``transformer.h.<i>.mlp.act``; for Llama-family models ``model.layers.*.mlp.act_fn``, for
BERT ``bert.encoder.layer.*.intermediate.intermediate_act_fn``)::

    reg = actreg.attach(model, {"transformer.h.*.mlp.act": actreg.L1(1e-4)})
    mon = actreg.Monitor(model, "transformer.h.*.mlp.act")
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[ActregCallback(reg, monitor=mon)])

Design: a callback, not a ``Trainer`` subclass, so that it composes with any trainer class
the user already has. A callback cannot change the loss that ``Trainer.compute_loss``
computes, so at ``on_train_begin`` it puts a forward hook on the model (removed at
``on_train_end``) that adds the penalty to the model output's ``loss``. The penalty is then
weighted exactly as the task loss is, which needs one correction: when the model normalizes
its loss by ``num_items_in_batch`` (the number of label tokens in the whole
gradient-accumulation window, which the Trainer passes to models that accept loss
keyword arguments), the Trainer does not divide the loss by the accumulation steps and,
with ``average_tokens_across_devices``, multiplies it by the number of processes. The hook
sees ``num_items_in_batch`` in the model's keyword arguments and divides the penalty by
both, so that in every case one optimizer step receives the mean penalty of its
micro-batches (and DDP's gradient average the mean over ranks), as in a plain loop. A
``Trainer`` whose ``loss_is_scaled_for_ga`` is set by hand, or a ``compute_loss`` that
ignores the model's ``loss``, needs ``reg.penalty()`` added by hand instead.

Logging: the Trainer hands every callback the same ``logs`` dictionary in turn, and its
reporting callbacks (TensorBoard, W&B, ...) come before user callbacks, so the values this
callback adds reach ``trainer.state.log_history``, the console and callbacks added after
it, but not the reporters of the same call; use :meth:`actreg.Monitor.log` for
TensorBoard.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from actreg._errors import ActregError
from actreg.monitor import Monitor
from actreg.regularizer import Regularizer

__all__ = ["ActregCallback"]  # noqa: F822 - built lazily, on first use


def _callback_base() -> type:
    try:
        from transformers import TrainerCallback
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ActregError(
            "ActregCallback needs Hugging Face transformers: pip install 'actreg[transformers]'"
        ) from err
    return TrainerCallback


def _loss_of(output: Any) -> Tensor | None:
    if isinstance(output, dict):  # transformers' ModelOutput is an OrderedDict
        loss = output.get("loss")
    elif isinstance(output, tuple) and output and isinstance(output[0], Tensor):
        loss = output[0]
    else:
        loss = getattr(output, "loss", None)
    return loss if isinstance(loss, Tensor) and loss.dim() == 0 else None


def _with_loss(output: Any, loss: Tensor) -> Any:
    if isinstance(output, dict):
        output["loss"] = loss  # ModelOutput keeps its attribute and its key in step
        return output
    return (loss, *output[1:])


class _Hooked:
    """The training-time state of one callback: the forward hook that adds the penalty."""

    def __init__(self, reg: Regularizer, accumulation: int, processes: int) -> None:
        self.reg = reg
        self.accumulation = accumulation
        self.processes = processes

    def __call__(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> Any:
        if not module.training:
            return None
        penalty = self.reg.penalty()
        if not penalty.requires_grad and float(penalty) == 0.0:
            return None  # nothing recorded (grad disabled, or no hooked layer ran)
        loss = _loss_of(output)
        if loss is None:
            raise ActregError(
                f"ActregCallback adds the activity penalty to the loss that "
                f"{type(module).__name__} returns, but this forward returned no loss: pass "
                f"labels in the inputs, or add reg.penalty() in your own compute_loss"
            )
        if kwargs.get("num_items_in_batch") is not None:
            # The model normalized by the label tokens of the whole accumulation window (all
            # processes): the Trainer neither averages over micro-batches nor over ranks.
            penalty = penalty / (self.accumulation * self.processes)
        return _with_loss(output, loss + penalty.to(loss.dtype))


def _build(base: type) -> type:
    class ActregCallback(base):
        def __init__(self, reg: Regularizer, monitor: Monitor | None = None) -> None:
            if not isinstance(reg, Regularizer):
                raise ActregError(
                    f"ActregCallback takes the Regularizer that actreg.attach returns, "
                    f"got {type(reg).__name__}"
                )
            if monitor is not None and not isinstance(monitor, Monitor):
                raise ActregError(f"monitor= takes an actreg.Monitor, got {type(monitor).__name__}")
            self.reg = reg
            self.monitor = monitor
            self._handle: RemovableHandle | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            model = kw.get("model")
            if not isinstance(model, nn.Module):
                raise ActregError("ActregCallback: the Trainer passed no model to the callback")
            if self._handle is not None:
                self._handle.remove()
            processes = 1
            if getattr(args, "average_tokens_across_devices", False):
                processes = max(int(getattr(args, "world_size", 1)), 1)
            hook = _Hooked(self.reg, max(int(args.gradient_accumulation_steps), 1), processes)
            self._handle = model.register_forward_hook(hook, with_kwargs=True)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self._handle is not None:
                self._handle.remove()
                self._handle = None

        def on_log(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            logs = kw.get("logs")
            if logs is None or "loss" not in logs:  # only the training logs
                return
            values = {f"actreg/{name}": value for name, value in self.reg.last.items()}
            logs.update(values)
            if state.log_history:
                state.log_history[-1].update(values)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.monitor is not None:  # evaluation runs after a step ends: eval data only
                self.monitor.reset()

        def on_evaluate(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            metrics = kw.get("metrics")
            if self.monitor is None or metrics is None:
                return
            sync = int(getattr(args, "world_size", 1)) > 1
            for name, stats in self.monitor.compute(sync=sync).items():
                for key, value in stats.items():
                    if isinstance(value, float | int):
                        metrics[f"eval_actreg/{name}/{key}"] = float(value)
            self.monitor.reset()

    ActregCallback.__doc__ = """A ``TrainerCallback``: adds the activity penalty, logs sparsity.

    Args:
        reg: what :func:`actreg.attach` returned for the Trainer's model (attach before
            building the Trainer, so that ``torch_compile=True`` compiles the hooks in).
        monitor: an optional :class:`~actreg.Monitor` on the same model; its statistics are
            added to every evaluation's metrics as ``eval_actreg/<layer>/<statistic>``. It
            is reset at the end of every training step, so the statistics cover the
            evaluation batches only (combined over ranks under DDP).
    """
    ActregCallback.__module__ = __name__
    return ActregCallback


_CLASS: list[type] = []


def __getattr__(name: str) -> Any:
    if name == "ActregCallback":
        if not _CLASS:
            _CLASS.append(_build(_callback_base()))
        return _CLASS[0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
