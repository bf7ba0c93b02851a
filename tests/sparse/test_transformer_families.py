"""actreg.sparse.convert on the transformer families beyond GPT-2 and Llama, each built from a
tiny config: two-Linear MLPs (GPT-NeoX, Phi, GPT-J, CodeGen, Falcon, T5), BERT-style split
FFNs (BERT, RoBERTa, ELECTRA), gated copies (Mistral, Qwen2, Gemma), OPT's inline FFN;
look-alikes, shared blocks, activations without exact zeros."""

from __future__ import annotations

import copy
import pickle
import warnings
from typing import Any

import pytest
import torch
from sparse_nets import close
from torch import nn

from actreg import ActregError, sparse
from actreg.sparse import _recognize as rec
from actreg.sparse import linear as lin
from actreg.sparse import linear_mlp
from actreg.sparse import transformer as tr

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install 'actreg[transformers]')"
)

import hf_families as hf  # noqa: E402 (needs transformers)
from hf_families import FAMILIES, NAMES, expected, first_layer, logits, make, tokens  # noqa: E402

KERNELS = "sparse"  # see tests/conftest.py: cpp


@pytest.fixture(params=["torch", "cpp"])
def kernels(request: pytest.FixtureRequest) -> Any:
    """Pure PyTorch, and the C++ kernels (skipped where they do not build)."""
    return request.getfixturevalue("cpp") if request.param == "cpp" else "torch"


def _count_sparse(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each call of the pure-PyTorch sparse kernels of the converted layers."""
    ran: list[str] = []
    for module, name in (
        (linear_mlp, "sparse_linear"),
        (lin, "sparse_linear"),
        (tr, "gated_sparse"),
    ):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, r=real: ran.append("") or r(*a))
    return ran


def _count_cpp(kernels: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each C++ call that runs a converted layer (threshold 0: the sparse path):
    ``linear_auto`` (SparseLinearMLP), ``gated_rows`` (SparseGatedMLP), a ``Chain``'s ``run``
    (SparseInputLinear)."""
    ext, ran = kernels.load(), list[str]()

    class Counting:
        def __init__(self, inner: Any = ext) -> None:
            self.inner = inner

        def __getattr__(self, attr: str) -> Any:
            fn = getattr(self.inner, attr)
            if attr in ("linear_auto", "gated_rows", "run"):
                return lambda *a: ran.append(attr) or fn(*a)
            if attr == "Chain":
                return lambda *a: Counting(fn(*a))
            return fn

    monkeypatch.setattr(kernels, "load", Counting)
    return ran


# ------------------------------------------------------------------ recognition and eligibility


@pytest.mark.parametrize("fam", NAMES, ids=NAMES)
def test_ffns_found_and_eligible(fam: str) -> None:
    model = make(fam)
    names = expected(fam)
    assert rec.ffns(model) == dict.fromkeys(names, FAMILIES[fam].kind)
    assert sparse.eligible(model) == names


@pytest.mark.parametrize("fam", NAMES, ids=NAMES)
def test_lookalike_with_another_forward_is_not_an_ffn(fam: str) -> None:
    model = make(fam)
    name = expected(fam)[0]
    owner = name.rsplit(".", 2)[0] if FAMILIES[fam].kind == "split" else name
    block = model.get_submodule(owner)
    parts = rec.ffn_parts(block)
    assert parts is not None
    act, out = block.get_submodule(parts.roles["act"]), block.get_submodule(parts.roles["out"])
    first = first_layer(model, name)

    class ActLast(type(block)):  # type: ignore[misc]
        def forward(self, x: torch.Tensor, *rest: Any) -> torch.Tensor:
            return act(out(first(x)))

        def feed_forward_chunk(self, x: torch.Tensor) -> torch.Tensor:
            return act(out(first(x)))

    block.__class__ = ActLast
    assert rec.ffn_kind(block) is None and name not in rec.ffns(model)
    assert name not in sparse.eligible(model)


def test_a_dropout_in_the_activation_place_is_not_an_ffn() -> None:
    mlp = make("gpt_neox").gpt_neox.layers[0].mlp
    mlp.act = nn.Dropout(0.1)
    assert rec.ffn_kind(mlp) is None


def test_sparse_linear_mlp_refuses_what_it_does_not_know() -> None:
    with pytest.raises(ActregError, match="not a two-nn.Linear MLP.*names="):
        sparse.SparseLinearMLP(nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2)))


# ------------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("fam", NAMES, ids=NAMES)
def test_logits_match_and_the_sparse_path_runs(
    fam: str, kernels: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make(fam)
    fast = sparse.convert(model, threshold=0.0, kernels=kernels)
    assert all(type(fast.get_submodule(n)) is FAMILIES[fam].wrapper for n in expected(fam))
    ran = _count_sparse(monkeypatch) if kernels == "torch" else _count_cpp(kernels, monkeypatch)
    ids = tokens(2, 7)
    with torch.no_grad():
        assert close(logits(fast, ids), logits(model, ids))
    assert len(ran) >= 2, "the sparse path did not run"


LINEAR_FAMS = [f for f in NAMES if FAMILIES[f].kind == "linear"]


@pytest.mark.parametrize("screen", [True, False], ids=["screen", "no-screen"])
@pytest.mark.parametrize("fam", LINEAR_FAMS, ids=LINEAR_FAMS)
def test_two_linear_mlps_screen_their_first_layer_exactly(
    fam: str, screen: bool, cpp: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 4 rows per call (<= SCREEN_ROWS): the one C++ call screens the first layer
    model = make(fam)
    fast = sparse.convert(model, threshold=0.0, kernels=cpp)
    for name in expected(fam):
        fast.get_submodule(name).screen = screen
    ext, ran = cpp.load(), list[str]()

    class Counting:
        def __getattr__(self, attr: str) -> Any:
            fn = getattr(ext, attr)
            return (lambda *a: ran.append(attr) or fn(*a)) if attr == "screened_mlp" else fn

    monkeypatch.setattr(cpp, "load", Counting)
    ids = tokens(1, 4)
    with torch.no_grad():
        assert close(logits(fast, ids), logits(model, ids))
    assert (len(ran) >= 2) is screen


@pytest.mark.parametrize("fam", NAMES, ids=NAMES)
def test_state_dict_keys_and_values_unchanged(fam: str) -> None:
    model = make(fam)
    fast = sparse.convert(model, threshold=0.0, kernels="torch")
    a, b = model.state_dict(), fast.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    changed = {k: v + 0.01 * torch.randn_like(v) for k, v in b.items()}
    fast.load_state_dict(changed)
    model.load_state_dict(changed)
    ids = tokens(1, 6)
    with torch.no_grad():
        assert close(logits(fast, ids), logits(model, ids))


GENERATES = [f for f in NAMES if FAMILIES[f].generates]


@pytest.mark.parametrize("fam", GENERATES, ids=GENERATES)
def test_greedy_generate_identical(fam: str, kernels: Any) -> None:
    model = make(fam)
    fast = sparse.convert(model, threshold=0.0, kernels=kernels)
    ids = tokens(2, 5)
    kw: dict[str, Any] = {"max_new_tokens": 16, "do_sample": False, "min_new_tokens": 16}
    want = model.generate(ids, **kw)
    assert want.shape[1] >= 16 and torch.equal(fast.generate(ids, **kw), want)


@pytest.mark.parametrize("fam", NAMES, ids=NAMES)
def test_training_runs_the_original_computation(fam: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make(fam).train()
    fast = sparse.convert(model, threshold=0.0, kernels="torch").train()
    ran = _count_sparse(monkeypatch)
    ids = tokens(2, 5)
    losses = []
    for m in (model, fast):
        torch.manual_seed(3)  # the same dropout masks
        loss = logits(m, ids).square().mean()
        loss.backward()
        losses.append(loss)
    assert not ran and torch.equal(losses[0], losses[1])
    grads = dict(model.named_parameters())
    assert all(torch.equal(p.grad, grads[n].grad) for n, p in fast.named_parameters())


@pytest.mark.parametrize("how", ["deepcopy", "pickle"], ids=["deepcopy", "pickle"])
def test_copies_of_a_linear_mlp_compute_the_same(how: str) -> None:
    model = make("gpt_neox")
    fast = sparse.convert(model, threshold=0.0, kernels="torch")
    ids = tokens(1, 5)
    with torch.no_grad():
        logits(fast, ids)  # fills the transposed-weight cache that copies must not carry
    again = copy.deepcopy(fast) if how == "deepcopy" else pickle.loads(pickle.dumps(fast))
    with torch.no_grad():
        assert close(logits(again, ids), logits(model, ids))


# ------------------------------------------------------------------------- shared blocks


@pytest.mark.parametrize("fam", NAMES, ids=NAMES)
def test_block_shared_between_layers_stays_shared(fam: str, kernels: Any) -> None:
    model = make(fam)
    first, second = expected(fam)[:2]
    parent, child = second.rsplit(".", 1)
    setattr(model.get_submodule(parent), child, model.get_submodule(first))
    assert first in rec.ffns(model) and second in rec.ffns(model)
    fast = sparse.convert(model, threshold=0.0, kernels=kernels)
    assert fast.get_submodule(first) is fast.get_submodule(second)
    assert type(fast.get_submodule(first)) is FAMILIES[fam].wrapper
    assert list(fast.state_dict()) == list(model.state_dict())
    ids = tokens(2, 6)
    with torch.no_grad():
        assert close(logits(fast, ids), logits(model, ids))


# ------------------------------------------------------- activations without exact zeros

GELU = ["gpt_neox", "phi", "t5", "bert", "mistral"]


@pytest.mark.parametrize("fam", GELU, ids=GELU)
def test_gelu_is_not_eligible_and_convert_explains(fam: str) -> None:
    model = make(fam, "gelu")
    assert len(rec.ffns(model)) >= 2 and sparse.eligible(model) == []
    fix = "apply_thresholds" if FAMILIES[fam].kind == "split" else "cutoff="
    with pytest.raises(ActregError, match=rf"no exact zeros.*relu.*{fix}"):
        sparse.convert(model, threshold=0.0)


def test_gemma_gelu_tanh_converts_only_with_a_cutoff() -> None:
    gemma = hf.gated(transformers.GemmaConfig, transformers.GemmaForCausalLM)
    model = gemma("gelu_pytorch_tanh").eval()
    assert set(rec.ffns(model).values()) == {"gated"} and sparse.eligible(model) == []
    with pytest.raises(ActregError, match="GELUTanh, which gives no exact zeros"):
        sparse.convert(model, threshold=0.0)
    fast = sparse.convert(model, threshold=0.0, cutoff=0.01, kernels="torch")
    assert type(fast.model.layers[0].mlp) is sparse.SparseGatedMLP


@pytest.mark.parametrize("fam", ["gpt_neox", "t5"], ids=["gpt_neox", "t5"])
def test_cutoff_zeroes_small_activations_as_asked(fam: str, kernels: Any) -> None:
    model = make(fam, "gelu", shift=0.0)
    cut = 0.02
    fast = sparse.convert(model, threshold=0.0, kernels=kernels, cutoff=cut)
    assert all(fast.get_submodule(n).cutoff == cut for n in expected(fam))

    def zero_small(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        return out.masked_fill(out.abs() <= cut, 0.0)

    for name in expected(fam):
        rec.activation(model, name).register_forward_hook(zero_small)
    ids = tokens(2, 6)
    with torch.no_grad():
        assert close(logits(fast, ids), logits(model, ids))


def test_cutoff_on_a_split_ffn_names_the_alternative() -> None:
    model = make("bert", "gelu")
    with pytest.raises(ActregError, match="cutoff= does not apply.*apply_thresholds"):
        sparse.convert(model, threshold=0.0, cutoff=0.05)
    with pytest.raises(ActregError, match="takes no cutoff="):  # ReLU: no cutoff needed
        sparse.convert(make("bert"), threshold=0.0, cutoff=0.05)
    thresholds = {f"bert.encoder.layer.{i}.intermediate.intermediate_act_fn": 0.05 for i in (0, 1)}
    fast = sparse.convert(model, "bert.encoder.layer.*.output.dense", threshold=0.0)
    ids = tokens(2, 6)
    with torch.no_grad(), sparse.apply_thresholds(model, thresholds):
        want = logits(model, ids)
    with torch.no_grad(), sparse.apply_thresholds(fast, thresholds):
        assert close(logits(fast, ids), want)


# --------------------------------------------------------------- OPT: the FFN in the layer


def test_opt_is_not_recognised_and_the_warning_names_fc2() -> None:
    model = hf.opt()
    assert rec.ffns(model) == {} and sparse.eligible(model) == []
    with pytest.warns(UserWarning, match=r"names=\['model.decoder.layers.0.fc2'"):
        sparse.convert(model, threshold=0.0)


def test_opt_fc2_named_is_exact(kernels: Any) -> None:
    model = hf.opt()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # found what was named: no warning
        fast = sparse.convert(model, "model.decoder.layers.*.fc2", threshold=0.0, kernels=kernels)
    assert type(fast.model.decoder.layers[1].fc2) is sparse.SparseInputLinear
    ids = tokens(2, 5)
    kw: dict[str, Any] = {"max_new_tokens": 12, "do_sample": False, "min_new_tokens": 12}
    with torch.no_grad():
        assert close(logits(fast, ids), logits(model, ids))
    assert torch.equal(fast.generate(ids, **kw), model.generate(ids, **kw))
