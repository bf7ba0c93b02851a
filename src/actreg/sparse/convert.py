"""Conversion: swap the layers that read ReLU-like outputs for sparse-input ones.

:func:`eligible` lists the layers :func:`convert` picks; :func:`convert` swaps them for
:class:`~actreg.sparse.SparseInputLinear` (same parameters, calibrated thresholds) and makes
their ``nn.Sequential`` a :class:`~actreg.sparse.SparseSequential`, and swaps transformer
FFNs (found by :func:`actreg.sparse.ffns`: GPT-2 ``Conv1D`` MLPs, gated MLPs, two-Linear MLPs,
BERT-style ``output.dense``) for the blocks of :mod:`actreg.sparse.transformer` and
:mod:`actreg.sparse.linear_mlp` (a BERT-style ``output.dense`` for a ``SparseInputLinear``);
:func:`fold_input_scaling` folds an input standardization into a first layer so that it reads
raw zeros.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from actreg._errors import ActregError
from actreg._resolve import check_model, lookup, resolve
from actreg.layers import ActivityRegularization, TopK
from actreg.sparse._backend import Backend, Kernels, backend
from actreg.sparse._recognize import activation, ffn_parts, ffns, inline_candidates
from actreg.sparse.calibrate import calibrate
from actreg.sparse.linear import SparseInputLinear, Threshold, _check_threshold
from actreg.sparse.linear_mlp import SparseLinearMLP
from actreg.sparse.runtime import SparseSequential
from actreg.sparse.transformer import SparseConv1DMLP, SparseGatedMLP, _SparseFFN

__all__ = ["ZERO_KEEPERS", "ZERO_MAKERS", "convert", "eligible", "fold_input_scaling"]

#: Modules whose outputs have exact zeros (ReLU-like), so a Linear after them gets sparse input.
ZERO_MAKERS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.Hardshrink, nn.Softshrink, nn.Threshold, TopK,
)  # fmt: skip
#: Modules that keep zeros zero at inference, looked through when finding a Linear's producer.
ZERO_KEEPERS: tuple[type[nn.Module], ...] = (
    nn.Dropout, nn.Identity, nn.Flatten, ActivityRegularization,
)  # fmt: skip
#: The wrapper class for each kind of FFN block (see :func:`actreg.sparse.ffns`); a
#: ``"split"`` FFN's ``output.dense`` becomes a :class:`SparseInputLinear`.
WRAPPERS: dict[str, Callable[..., _SparseFFN]] = {
    "conv1d": SparseConv1DMLP,
    "gated": SparseGatedMLP,
    "linear": SparseLinearMLP,
}


def _producer(children: list[nn.Module], i: int) -> nn.Module | None:
    """The module whose output feeds ``children[i]``, looking through zero keepers."""
    for prev in reversed(children[:i]):
        if not isinstance(prev, ZERO_KEEPERS):
            return prev
    return None


def eligible(model: nn.Module) -> list[str]:
    """Names of the modules that :func:`convert` picks by default and can make exact: the
    ``nn.Linear`` layers that follow a ReLU-like module (:data:`ZERO_MAKERS`, looking through
    :data:`ZERO_KEEPERS`) inside an ``nn.Sequential``, then the transformer FFNs (see
    :func:`actreg.sparse.ffns`) whose activation is ReLU-like. An FFN written inline in a
    layer's ``forward`` (OPT's ``fc1``/``fc2``) is not listed: name its second layer, and
    :func:`convert` names such candidates in its warning when it finds nothing else.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> eligible(net)
        ['2']
    """
    model = check_model(model)
    return _linears(model) + [n for n in ffns(model) if _zero_making(model, n)]


def _zero_making(model: nn.Module, ffn: str) -> bool:
    act = activation(model, ffn)
    return isinstance(act, ZERO_MAKERS) and (not isinstance(act, nn.Threshold) or act.value == 0)


def _linears(model: nn.Module) -> list[str]:
    found = []
    for seq_name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        mods = [m for _, m in children]
        for i, (name, mod) in enumerate(children):
            prod = _producer(mods, i)
            if isinstance(mod, nn.Linear) and isinstance(prod, ZERO_MAKERS):
                if not isinstance(prod, nn.Threshold) or prod.value == 0:
                    found.append(f"{seq_name}.{name}" if seq_name else name)
    return found


def _named(
    model: nn.Module, names: str | Iterable[str], blocks: dict[str, str]
) -> tuple[list[str], list[str]]:
    """The named ``nn.Linear`` layers and the named FFN blocks."""
    keys = [names] if isinstance(names, str) else list(names)
    linears: list[str] = []
    found: list[str] = []
    for key, hits in resolve(model, keys).items():
        # a named split FFN's output.dense is a plain nn.Linear to convert, whatever feeds it
        ffn = [n for n, _ in hits if blocks.get(n, "split") != "split"]
        linear = [n for n, m in hits if isinstance(m, nn.Linear) and n not in ffn]
        if not linear and not ffn:
            kinds = ", ".join(f"{n!r} is {type(m).__name__}" for n, m in hits[:5])
            raise ActregError(
                f"{key!r} names no nn.Linear and no transformer FFN ({kinds}); sparse.convert "
                "converts nn.Linear layers and the transformer FFN blocks that "
                "actreg.sparse.ffns(model) lists"
            )
        linears += [n for n in linear if n not in linears]
        found += [n for n in ffn if n not in found]
    return linears, found


def _cutoffs(
    model: nn.Module,
    chosen: list[str],
    cutoff: float | Mapping[str, float] | None,
    kinds: dict[str, str],
) -> dict[str, float]:
    """Each chosen FFN's cutoff (0: exact zeros), or an error for an activation without
    exact zeros and no cutoff (for a BERT-style ``output.dense``: see :func:`_check_split`)."""
    if isinstance(cutoff, Mapping):
        resolve(model, cutoff.keys())  # unknown names: an error with close matches
    out = {}
    for name in chosen:
        c = lookup(name, cutoff, None) if isinstance(cutoff, Mapping) else cutoff
        if kinds[name] == "split":
            _check_split(model, name, c)
            out[name] = 0.0
            continue
        if c is None or c == 0:
            if not _zero_making(model, name):
                act = activation(model, name)
                raise ActregError(
                    f"the FFN {name!r} has the activation {type(act).__name__}, which gives no "
                    "exact zeros, so skipping zeros would change its outputs. Train the model "
                    "with ReLU (GPT2Config(activation_function='relu'), "
                    "LlamaConfig(hidden_act='relu'), hidden_act='relu' elsewhere) for exact "
                    "zeros, or pass cutoff= (a "
                    "magnitude below which an activation counts as zero, per block name or "
                    "pattern: approximate, e.g. thresholds calibrated to a target sparsity), "
                    "or leave these blocks out with names="
                )
            c = 0.0
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not c >= 0:
            raise ActregError(f"cutoff must be a number >= 0 or a mapping to them, got {c!r}")
        out[name] = float(c)
    return out


def _check_split(model: nn.Module, name: str, cutoff: object) -> None:
    """A BERT-style ``output.dense`` converts exactly, without a cutoff, after an activation
    with exact zeros; anything else is an error naming the way that works."""
    zeros = _zero_making(model, name)
    if zeros and cutoff in (None, 0):
        return
    act = type(activation(model, name)).__name__
    why = "takes no cutoff=" if zeros else "has no exact zeros, and cutoff= does not apply there"
    raise ActregError(
        f"{name!r} is the output.dense of a BERT-style layer: it reads the {act} activations "
        f"of the sibling intermediate module, so it {why}. For exact zeros train with "
        "hidden_act='relu'; for approximate ones zero the small activations with "
        "actreg.sparse.apply_thresholds on '*.intermediate.intermediate_act_fn' and convert "
        "these layers by name (names='*.output.dense'); or leave them out with names="
    )


def convert(
    model: nn.Module,
    names: str | Iterable[str] | None = None,
    *,
    threshold: str | Threshold = "auto",
    inplace: bool = False,
    fuse: bool = True,
    kernels: Kernels | Backend = "auto",
    cutoff: float | Mapping[str, float] | None = None,
) -> nn.Module:
    """Replace eligible ``nn.Linear`` layers with :class:`SparseInputLinear`, and transformer
    FFN blocks with their sparse versions.

    Args:
        model: the model; not modified unless ``inplace=True``.
        names: the Linear layers and FFN blocks to convert (names or glob patterns from
            ``model.named_modules()``). By default, every Linear that follows a ReLU-like
            module (:data:`ZERO_MAKERS`, looking through dropout and identities) inside an
            ``nn.Sequential``, and every transformer FFN block that :func:`actreg.sparse.ffns`
            lists (GPT-2 ``Conv1D`` MLPs; gated MLPs such as Llama's; two-Linear MLPs such
            as GPT-NeoX's, Phi's, GPT-J's, Falcon's, T5's; BERT-style ``output.dense``);
            Linear layers after activations applied in ``forward`` code (OPT's ``fc2``) must
            be named, and the warning for a model where nothing is found names them.
        threshold: ``"auto"`` (:func:`calibrate` each layer shape on this machine; takes a
            second or so per shape), a zero fraction in ``[0, 1]``, or ``{batch: fraction}``
            (for an FFN block, the zero fraction of its activations and the number of rows,
            batch times sequence).
        inplace: swap the layers in ``model`` itself instead of in a deep copy.
        fuse: make every plain ``nn.Sequential`` that holds a converted layer a
            :class:`SparseSequential` (its class changes, nothing else), which runs Linear/ReLU
            runs in one C++ call.
        kernels: the kernels the converted layers run: ``"auto"`` (default: the C++ kernels
            where a compiler is present, built here on first use, once per machine, with one
            log line; else one warning and pure PyTorch; ``ACTREG_EXTENSION`` forces either),
            ``"torch"`` (pure PyTorch), ``"cpp"`` (C++ or an error), or a backend object
            (see :func:`actreg.sparse.backend`).
        cutoff: for FFN blocks whose activation has no exact zeros (GELU, SiLU), which are
            otherwise refused: the magnitude below which an activation counts as zero, one
            number for all or ``{block name or pattern: number}``. This changes the outputs
            (training-free magnitude sparsity); with ReLU it is not needed (exact). Not for a
            BERT-style ``output.dense`` (an error names the alternative).

    Returns:
        The converted model (``model`` itself when ``inplace``). Parameters are shared with
        the replaced layers, so ``state_dict`` keys and values do not change. Hooks on the
        replaced layers are not carried over. An FFN block shared between layers becomes
        one converted block at every place it appears; an FFN block passed as ``model``
        itself comes back as its converted block (sharing its children).

    Raises:
        ActregError: for unknown names (with close matches), names of modules that are not
            ``nn.Linear`` or FFN blocks, an FFN whose activation gives no exact zeros without
            a ``cutoff`` (or a ``cutoff`` for a BERT-style ``output.dense``), a bad
            threshold, cutoff or ``kernels``, or ``kernels="cpp"`` (or
            ``ACTREG_EXTENSION=1``) where the C++ kernels do not build.

    Example:
        >>> import torch, actreg.sparse
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
        >>> type(actreg.sparse.convert(net, ["2"], threshold=0.8)[2]).__name__
        'SparseInputLinear'
    """
    model = check_model(model)
    if isinstance(threshold, str) and threshold != "auto":
        raise ActregError(f'threshold must be "auto" or a number, got {threshold!r}')
    if not isinstance(threshold, str):
        _check_threshold(threshold)
    blocks = ffns(model)
    if names is None:
        chosen, chosen_ffns = _linears(model), list(blocks)
    else:
        chosen, chosen_ffns = _named(model, names, blocks)
    cutoffs = _cutoffs(model, chosen_ffns, cutoff, blocks)
    kernels = backend(kernels)
    target = model if inplace else copy.deepcopy(model)
    modules = dict(target.named_modules(remove_duplicate=False))
    weights = [modules[n].weight for n in chosen]
    weights += [p for n in chosen_ffns for p in modules[n].parameters()]
    if any(w.device.type == "cpu" for w in weights):
        kernels.load()  # build (once per machine) before calibrating: time what will run
    if not chosen and not chosen_ffns:
        hint = inline_candidates(model, ZERO_MAKERS)
        shown = ", ".join(repr(n) for n in hint[:3]) + (" ..." if len(hint) > 3 else "")
        warnings.warn(
            f"no nn.Linear after a ReLU-like module and no transformer FFN found in "
            f"{type(model).__name__}; pass names= to choose layers"
            + (
                f". These nn.Linear layers sit next to a ReLU-like activation applied in "
                f"forward code (as OPT's fc1 -> activation_fn -> fc2), which convert does not "
                f"read: if each reads that activation's output, name them for exact, faster "
                f"inference: names=[{shown}]"
                if hint
                else ""
            ),
            stacklevel=2,
        )
    for name in chosen:
        old = modules[name]
        assert isinstance(old, nn.Linear)
        t: Threshold
        if isinstance(threshold, str):
            w = old.weight
            t = calibrate(
                old.in_features, old.out_features, dtype=w.dtype, device=w.device, kernels=kernels
            )
        else:
            t = threshold
        new = SparseInputLinear.from_linear(old, threshold=t, kernels=kernels)
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else target
        setattr(parent, child, new)
        if fuse and type(parent) is nn.Sequential:
            parent.__class__ = SparseSequential  # same children and state: only forward differs
        if isinstance(parent, SparseSequential):
            parent.backend = kernels
    return _convert_ffns(target, chosen_ffns, threshold, cutoffs, kernels)


def _convert_ffns(
    target: nn.Module,
    chosen: list[str],
    threshold: str | Threshold,
    cutoffs: dict[str, float],
    kernels: Backend,
) -> nn.Module:
    """Swap the chosen FFN blocks of ``target``; a block that appears under several names
    (shared between layers) becomes one converted block at every place, so it stays shared."""
    blocks = ffns(target)
    parents = [m for _, m in target.named_modules(remove_duplicate=False)]
    done: dict[int, nn.Module] = {}
    for name in chosen:
        old = target.get_submodule(name)
        if id(old) in done:
            continue
        t: Threshold
        kind = blocks[name]
        if isinstance(threshold, str):
            w = _second_weight(old, kind)
            inter, d = w.shape if kind == "conv1d" else w.shape[::-1]  # (in, out) or (out, in)
            t = (
                calibrate(inter, d, dtype=w.dtype, device=w.device, kernels=kernels)
                if w.device.type == "cpu"
                else math.inf  # the sparse path runs on the CPU only
            )
        else:
            t = threshold
        new: nn.Module
        if kind == "split":
            assert isinstance(old, nn.Linear)
            new = SparseInputLinear.from_linear(old, threshold=t, kernels=kernels)
        else:
            new = WRAPPERS[kind](old, threshold=t, cutoff=cutoffs[name], kernels=kernels)
        done[id(old)] = new
    if not done:
        return target
    if id(target) in done:  # the model is itself one FFN block
        return done[id(target)]
    for parent in parents:
        for child_name, child in list(parent.named_children()):
            if id(child) in done:
                setattr(parent, child_name, done[id(child)])
    return target


def _second_weight(block: nn.Module, kind: str) -> Tensor:
    """The weight of the layer that reads the activations."""
    if kind == "split":
        w = block.weight
    else:
        parts = ffn_parts(block)
        assert parts is not None
        w = block.get_submodule(parts.roles["out"]).weight
    assert isinstance(w, Tensor)
    return w


def fold_input_scaling(
    linear: nn.Linear, shift: float | Tensor = 0.0, scale: float | Tensor = 1.0
) -> nn.Linear:
    """A new ``nn.Linear`` equal to ``linear((x - shift) / scale)`` that reads ``x`` itself.

    Input scaling (standardization, min-max) turns the zeros of raw data, such as the ~80% of
    MNIST pixels that are black, into non-zero values; folding it into the first layer's
    weights and bias (``W / scale`` and ``b - W @ (shift / scale)``) lets that layer skip the
    raw zeros. ``shift`` and ``scale`` are scalars or per-feature vectors of length
    ``in_features``; computed in float64, stored in the layer's dtype, so outputs agree with
    the scaled original to rounding.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(3, 2)
        >>> folded = fold_input_scaling(lin, shift=0.13, scale=0.31)
        >>> x = torch.tensor([[0.0, 0.5, 1.0]])
        >>> torch.allclose(folded(x), lin((x - 0.13) / 0.31), atol=1e-5)
        True
    """
    if not isinstance(linear, nn.Linear):
        raise ActregError(f"fold_input_scaling needs an nn.Linear, got {type(linear).__name__}")
    w = linear.weight.detach().double()
    n = linear.in_features

    def vec(v: float | Tensor, what: str) -> Tensor:
        t = torch.as_tensor(v, dtype=torch.float64, device=w.device).reshape(-1)
        if t.numel() not in (1, n) or not bool(torch.isfinite(t).all()):
            raise ActregError(
                f"{what} must be a finite scalar or {n} finite values (one per input feature), "
                f"got {t.numel()} values"
            )
        return t.expand(n)

    sh, sc = vec(shift, "shift"), vec(scale, "scale")
    if bool((sc == 0).any()):
        raise ActregError("scale must be non-zero (a constant feature's scale is usually 1)")
    new = nn.Linear(n, linear.out_features, device=w.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        wf = w / sc
        b = linear.bias.detach().double() if linear.bias is not None else w.new_zeros(w.shape[0])
        new.weight.copy_(wf)
        new.bias.copy_(b - wf @ sh)
    return new
