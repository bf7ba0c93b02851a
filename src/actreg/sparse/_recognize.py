"""Which modules are transformer FFNs that :func:`actreg.sparse.convert` can swap, found by code.

A module is an FFN of a kind when its class's ``forward`` compiles to the same bytecode as one
of the reference forwards below (copied token for token from ``transformers``) and its
children have the expected kinds and shapes. The attribute names may differ where the code
does not (``GPTNeoXMLP``'s ``dense_h_to_4h`` is ``PhiMLP``'s ``fc1``): each reference marks
which of its names are *roles* (``in``, ``act``, ``out``, ``drop``) and the candidate's name
at the same place in ``co_names`` fills the role; every other name (``torch``, ``weight``,
``dtype``) must be the same. The kinds:

* ``"conv1d"``: GPT-2's ``c_fc -> act -> c_proj -> dropout`` with ``Conv1D`` layers
  (:class:`~actreg.sparse.SparseConv1DMLP`): ``GPT2MLP``, ``ImageGPTMLP``,
  ``DecisionTransformerGPT2MLP``.
* ``"gated"``: ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``
  (:class:`~actreg.sparse.SparseGatedMLP`): Llama, Mistral, Qwen2/3, Gemma/Gemma2, Cohere,
  ... (over 130 classes, all with these names, which the wrapper knows).
* ``"linear"``: two ``nn.Linear`` around an activation
  (:class:`~actreg.sparse.SparseLinearMLP`), four code shapes: ``in -> act -> out``
  (``GPTNeoXMLP``, ``PhiMLP``, ``PersimmonMLP``, ``CLIPMLP`` and some 80 vision/audio
  copies); ``in -> act -> out -> drop`` (``GPTJMLP``, ``CodeGenMLP``, ``GPTNeoMLP``,
  ``GPTBigCodeMLP``, ``BarkMLP``);
  ``out(act(in(x)))`` (``FalconMLP``, whose ``FalconLinear`` computes ``x @ W.T + b``);
  T5's ``in -> act -> drop -> (cast) -> out`` (``T5DenseActDense`` and its copies in MT5,
  LongT5, UMT5, SwitchTransformers, Udop, Pop2Piano).
* ``"split"``: BERT-style layers whose ``feed_forward_chunk`` runs ``intermediate``
  (``dense -> act``) then ``output`` (``dense -> dropout -> norm(h + input)``): BERT,
  RoBERTa, ELECTRA, CamemBERT, XLM-R, BigBird and some 35 more. What converts is
  ``output.dense`` (a :class:`~actreg.sparse.SparseInputLinear`), which reads the
  activations; :func:`ffns` names it.

Design choices:

* Bytecode with role names, not class-name lists: this catches the copies ``transformers``
  generates (``# Copied from``, modular files) and never a look-alike that computes something
  else. One reference per distinct code shape; the role map replaces a table of names.
* A BERT-style FFN converts its ``output.dense`` alone, for a ``SparseInputLinear`` (exact
  for any input: it only skips zeros), rather than wrapping ``output``: the C++ kernels,
  calibration and caches of that layer apply unchanged, and ``intermediate`` and the norm
  keep their code. The price: no ``cutoff=`` there (the activation is in the sibling
  module); :func:`actreg.sparse.apply_thresholds` on it does the same job.
* Not recognised: FFNs written inline in a layer's ``forward`` (OPT, BioGPT, Whisper and
  BART-style ``fc1``/``fc2`` in the decoder layer): matching a fragment of a long forward
  would be guessing. Naming their ``fc2`` converts it exactly (any ``nn.Linear`` may be
  named); :func:`inline_candidates` finds them for the warning of
  :func:`actreg.sparse.convert`. ``BloomMLP`` (its forward adds the residual and may split
  the matmul for tensor parallelism) and its fixed GELU give no exact zeros: not recognised.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["Parts", "activation", "ffn_kind", "ffn_parts", "ffns", "inline_candidates"]


# The reference code, token for token: transformers' pytorch_utils.Conv1D.forward,
# models/falcon FalconLinear.forward, models/gpt2 GPT2MLP.forward, models/llama
# LlamaMLP.forward, models/gpt_neox GPTNeoXMLP.forward, models/falcon FalconMLP.forward,
# models/t5 T5DenseActDense.forward, models/bert BertIntermediate/BertOutput.forward and
# BertLayer.feed_forward_chunk.
def _conv1d_forward(self: Any, x: Any) -> Any:
    size_out = x.size()[:-1] + (self.nf,)  # noqa: RUF005 (the reference, as written)
    x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
    x = x.view(size_out)
    return x


def _falcon_linear_forward(self: Any, input: Any) -> Any:
    hidden_states = input @ self.weight.T
    if self.bias is None:
        return hidden_states
    return hidden_states + self.bias


def _gpt2_mlp_forward(self: Any, hidden_states: Any) -> Any:
    hidden_states = self.c_fc(hidden_states)
    hidden_states = self.act(hidden_states)
    hidden_states = self.c_proj(hidden_states)
    hidden_states = self.dropout(hidden_states)
    return hidden_states


def _gated_mlp_forward(self: Any, x: Any) -> Any:
    down_proj = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
    return down_proj


def _neox_mlp_forward(self: Any, hidden_states: Any) -> Any:
    hidden_states = self.dense_h_to_4h(hidden_states)
    hidden_states = self.act(hidden_states)
    hidden_states = self.dense_4h_to_h(hidden_states)
    return hidden_states


def _falcon_mlp_forward(self: Any, x: Any) -> Any:
    x = self.act(self.dense_h_to_4h(x))
    x = self.dense_4h_to_h(x)
    return x


def _t5_mlp_forward(self: Any, hidden_states: Any) -> Any:
    hidden_states = self.wi(hidden_states)
    hidden_states = self.act(hidden_states)
    hidden_states = self.dropout(hidden_states)
    if (
        isinstance(self.wo.weight, torch.Tensor)
        and hidden_states.dtype != self.wo.weight.dtype
        and self.wo.weight.dtype != torch.int8
    ):
        hidden_states = hidden_states.to(self.wo.weight.dtype)
    hidden_states = self.wo(hidden_states)
    return hidden_states


def _intermediate_forward(self: Any, hidden_states: Any) -> Any:
    hidden_states = self.dense(hidden_states)
    hidden_states = self.intermediate_act_fn(hidden_states)
    return hidden_states


def _output_forward(self: Any, hidden_states: Any, input_tensor: Any) -> Any:
    hidden_states = self.dense(hidden_states)
    hidden_states = self.dropout(hidden_states)
    hidden_states = self.LayerNorm(hidden_states + input_tensor)
    return hidden_states


def _feed_forward_chunk(self: Any, attention_output: Any) -> Any:
    intermediate_output = self.intermediate(attention_output)
    layer_output = self.output(intermediate_output, attention_output)
    return layer_output


def _code(fn: object) -> tuple[Any, ...] | None:
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    return (code.co_code, code.co_names, code.co_consts, code.co_argcount)


class _Shape(NamedTuple):
    code: tuple[Any, ...]
    roles: dict[str, str]  # the reference's attribute name -> role


def _shape(fn: object, roles: dict[str, str]) -> _Shape:
    code = _code(fn)
    assert code is not None
    return _Shape(code, roles)


_CONV1D = _code(_conv1d_forward)
_FALCON_LINEAR = _code(_falcon_linear_forward)
_GPT2 = {"c_fc": "in", "act": "act", "c_proj": "out", "dropout": "drop"}
_SEQ4 = _shape(_gpt2_mlp_forward, _GPT2)
_GPT2_ROLES = {role: name for name, role in _GPT2.items()}
_GATED = _shape(_gated_mlp_forward, {})  # SparseGatedMLP knows these names only
_LINEAR_SHAPES = (
    _shape(_neox_mlp_forward, {"dense_h_to_4h": "in", "act": "act", "dense_4h_to_h": "out"}),
    _SEQ4,
    _shape(_falcon_mlp_forward, {"dense_h_to_4h": "in", "act": "act", "dense_4h_to_h": "out"}),
    _shape(_t5_mlp_forward, {"wi": "in", "act": "act", "dropout": "drop", "wo": "out"}),
)
_INTERMEDIATE = _shape(_intermediate_forward, {"dense": "in", "intermediate_act_fn": "act"})
_OUTPUT = _shape(_output_forward, {"dense": "out", "dropout": "drop", "LayerNorm": "norm"})
_CHUNK = _shape(_feed_forward_chunk, {})


def _roles(fn: object, shape: _Shape) -> dict[str, str] | None:
    """``{role: attribute name}`` where ``fn`` compiles to ``shape``'s code up to its role
    names, else None."""
    code = _code(fn)
    ref = shape.code
    if code is None or code[0] != ref[0] or code[2:] != ref[2:] or len(code[1]) != len(ref[1]):
        return None
    out = {}
    for want, got in zip(ref[1], code[1], strict=True):
        role = shape.roles.get(want)
        if role is not None:
            out[role] = got
        elif want != got:
            return None
    return out


class Parts(NamedTuple):
    """What :func:`ffn_parts` found: the kind and ``{role: dotted path}`` (``in``, ``act``,
    ``out``, ``drop`` where the code has one) relative to the module."""

    kind: str
    roles: dict[str, str]


def _is_conv1d(m: object) -> bool:
    """A module computing ``x @ weight + bias`` with a 2-D ``(in, out)`` weight (GPT-2's
    ``Conv1D``)."""
    if not isinstance(m, nn.Module) or _code(type(m).forward) != _CONV1D:
        return False
    w, b = getattr(m, "weight", None), getattr(m, "bias", None)
    return (
        isinstance(w, Tensor)
        and isinstance(b, Tensor)
        and w.dim() == 2
        and b.shape == (w.shape[1],)
        and getattr(m, "nf", None) == w.shape[1]
    )


def _is_linear(m: object) -> bool:
    """``nn.Linear`` itself, or a subclass whose forward is Falcon's ``x @ W.T + b``."""
    if type(m) is nn.Linear:
        return True
    return isinstance(m, nn.Linear) and _code(type(m).forward) == _FALCON_LINEAR


def _is_act(m: object) -> bool:
    return isinstance(m, nn.Module) and not isinstance(m, (nn.Linear, nn.Dropout))


def _own_state(m: nn.Module) -> bool:
    return bool(m._parameters or m._buffers)


def _linear_parts(module: nn.Module) -> Parts | None:
    forward = type(module).forward
    for shape in _LINEAR_SHAPES:
        roles = _roles(forward, shape)
        if roles is None:
            continue
        fc_in, fc_out = getattr(module, roles["in"], None), getattr(module, roles["out"], None)
        drop = getattr(module, roles["drop"], None) if "drop" in roles else nn.Dropout()
        if not _is_act(getattr(module, roles["act"], None)) or not isinstance(drop, nn.Dropout):
            return None
        if shape is _SEQ4 and _is_conv1d(fc_in) and _is_conv1d(fc_out) and roles == _GPT2_ROLES:
            w_fc: Any = getattr(fc_in, "weight", None)
            w_proj: Any = getattr(fc_out, "weight", None)
            fits = w_fc.shape[::-1] == w_proj.shape  # d -> inter -> d
            return Parts("conv1d", roles) if fits else None
        if _is_linear(fc_in) and _is_linear(fc_out):
            assert isinstance(fc_in, nn.Linear) and isinstance(fc_out, nn.Linear)
            return Parts("linear", roles) if fc_in.out_features == fc_out.in_features else None
        return None
    return None


def _split_parts(layer: nn.Module) -> Parts | None:
    fn = getattr(type(layer), "feed_forward_chunk", None)
    if _roles(fn, _CHUNK) is None:
        return None
    inter, output = getattr(layer, "intermediate", None), getattr(layer, "output", None)
    if not isinstance(inter, nn.Module) or not isinstance(output, nn.Module):
        return None
    r_in, r_out = _roles(type(inter).forward, _INTERMEDIATE), _roles(type(output).forward, _OUTPUT)
    if r_in is None or r_out is None or _own_state(inter) or _own_state(output):
        return None
    fc_in, fc_out = getattr(inter, r_in["in"], None), getattr(output, r_out["out"], None)
    act = getattr(inter, r_in["act"], None)
    if not (type(fc_in) is nn.Linear and type(fc_out) is nn.Linear and _is_act(act)):
        return None
    if fc_in.out_features != fc_out.in_features:
        return None
    roles = {"in": f"intermediate.{r_in['in']}", "act": f"intermediate.{r_in['act']}"}
    return Parts("split", {**roles, "out": f"output.{r_out['out']}"})


def ffn_parts(module: nn.Module) -> Parts | None:
    """The kind of FFN ``module`` is and where its parts are (see the module docstring), or
    None.

    Example:
        >>> import torch
        >>> ffn_parts(torch.nn.Linear(2, 2)) is None
        True
    """
    forward = type(module).forward
    if _roles(forward, _GATED) is not None and not _own_state(module):
        lins = [getattr(module, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        if all(isinstance(m, nn.Linear) for m in lins) and _is_act(getattr(module, "act_fn", None)):
            g, u, d = (m.weight for m in lins if isinstance(m, nn.Linear))
            if g.shape == u.shape and d.shape == g.shape[::-1]:
                return Parts("gated", {"act": "act_fn", "out": "down_proj"})
        return None
    if _own_state(module):
        return None
    return _linear_parts(module) or _split_parts(module)


def ffn_kind(module: nn.Module) -> str | None:
    """``"conv1d"`` (GPT-2 MLP), ``"gated"`` (Llama-style), ``"linear"`` (two ``nn.Linear``
    around an activation: GPT-NeoX, Phi, GPT-J, Falcon, T5, ...), ``"split"`` (a BERT-style
    layer whose ``output.dense`` reads ``intermediate``'s activations), else None.

    Example:
        >>> import torch
        >>> ffn_kind(torch.nn.Linear(2, 2)) is None
        True
    """
    parts = ffn_parts(module)
    return None if parts is None else parts.kind


def ffns(model: nn.Module) -> dict[str, str]:
    """The feed-forward blocks of ``model`` that :func:`actreg.sparse.convert` can swap:
    ``{name: kind}`` (see :func:`ffn_kind`), every name under which a shared block appears
    included. For a ``"split"`` layer the name is that of its ``output.dense``, the layer
    that converts.

    Example:
        >>> import torch
        >>> ffns(torch.nn.Sequential(torch.nn.Linear(2, 2)))
        {}
    """
    out = {}
    for name, m in model.named_modules(remove_duplicate=False):
        parts = ffn_parts(m)
        if parts is not None:
            at = f"{name}.{parts.roles['out']}" if parts.kind == "split" else name
            out[at.lstrip(".")] = parts.kind
    return out


def activation(model: nn.Module, name: str) -> nn.Module:
    """The activation module of the FFN that :func:`ffns` lists as ``name``."""
    module = model.get_submodule(name)
    parts = ffn_parts(module)
    if parts is None:  # a split layer's output.dense: its layer is two names up
        owner = name.rsplit(".", 2)[0] if name.count(".") >= 2 else ""
        module = model.get_submodule(owner)
        parts = ffn_parts(module)
    assert parts is not None
    return module.get_submodule(parts.roles["act"])


def inline_candidates(model: nn.Module, zero_makers: tuple[type[nn.Module], ...]) -> list[str]:
    """Names of ``nn.Linear`` layers that probably read a ReLU-like output computed in a
    ``forward`` the recognition cannot read (OPT's decoder layer: children ``fc1``,
    ``activation_fn``, ``fc2``): a module holding two ``nn.Linear`` children ``a`` and ``b``
    with ``a.out_features == b.in_features`` and an activation child of ``zero_makers``;
    ``b`` is listed where it narrows (``in_features > out_features``, a down projection).
    A hint for the user, never converted without being named.

    Example:
        >>> import torch
        >>> inline_candidates(torch.nn.Linear(2, 2), (torch.nn.ReLU,))
        []
    """
    out = []
    for name, m in model.named_modules():
        kids = dict(m.named_children())
        if not any(isinstance(k, zero_makers) for k in kids.values()):
            continue
        lins = {n: k for n, k in kids.items() if type(k) is nn.Linear}
        for n, b in lins.items():
            if any(a is not b and a.out_features == b.in_features for a in lins.values()):
                if b.in_features > b.out_features:
                    out.append(f"{name}.{n}" if name else n)
    return out
