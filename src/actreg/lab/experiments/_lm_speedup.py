"""``actreg speedup`` on a ``transformer-lm`` run: decoding dense against converted.

The trained GPT-2 model is rebuilt from ``results.json`` (its config) and
``VARIANT/model.pt`` (weights, activation and vocabulary; read with ``weights_only=True``),
converted with :func:`actreg.sparse.convert` (GPT-2 ``Conv1D`` MLPs whose ``c_proj`` skips
the zero activations: exact with ReLU; GELU variants are refused) and timed on prompts from
the test split, one torch thread by default:

* batch 1 greedy decoding with the KV cache: ``new_tokens`` tokens after a prefilled
  prompt (the cache is cropped back to the prompt after every timed call), tokens/s dense
  and converted, and whether the tokens are identical (also checked with ``generate``);
* the FFN's share of the dense decode time, from a third model whose FFN blocks return
  zeros (share = 1 - its time / dense time), the FFN blocks' own speedup (dense against
  converted blocks on the inputs they saw while decoding), the Amdahl limit that speedup
  sets, ``1 / ((1 - share) + share / ffn_speedup)``, the limit if the FFN were free,
  ``1 / (1 - share)``, and the share of the Amdahl limit reached end to end;
* greedy decoding at batches 4 and 16 (the sparse kernel reads the rows of the units active
  in any row of the batch: their share is reported) and a prefill of the context length,
  reported whether or not the converted model wins.

Dense and converted calls are interleaved in every repetition
(:func:`actreg.sparse.calibrate.time_interleaved`, CPU time with one thread); figures are
medians with the interquartile range of the per-repetition speedups.

Design: the FFN share comes from removing the FFN rather than from timing the blocks with
hooks inside the decode: hooks on every block at batch 1 cost about as much as a small FFN
and would inflate its share; the removed-FFN model measures what the rest of the step
costs, with the same Python overhead as the real step.
"""

from __future__ import annotations

import copy
import inspect
import statistics
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from actreg._errors import ActregError
from actreg._io import load_checkpoint
from actreg.lab.data.text import load_corpus
from actreg.lab.experiments._config import from_dict
from actreg.lab.experiments.transformer_lm import WEIGHTS, TransformerLMConfig, build_model
from actreg.sparse.calibrate import time_interleaved

__all__ = ["BATCHES", "NoFFN", "decode_speedup", "load_lm", "without_ffn"]

BATCHES = (4, 16)  # greedy decoding batches beyond 1
RELU = ("relu", "relu-l1", "relu-target")  # variants whose FFN zeros are exact


def default_variant(variants: list[str]) -> str:
    """``relu-target``, else the first trained ReLU variant, else the first."""
    return next((v for v in ("relu-target", "relu-l1", "relu") if v in variants), variants[0])


def load_lm(
    doc: dict[str, Any], variant: str, data_dir: str | None = None
) -> tuple[nn.Module, Any]:
    """The trained model of ``variant`` (eval mode) and the run's corpus.

    Raises:
        ActregError: for a GELU or thresholded variant (no exact zeros to skip), missing
            weights, or a corpus whose vocabulary is not the one the model was trained on.
    """
    run_dir = Path(doc["_path"]).parent
    if variant == "gelu" or variant.endswith("+threshold"):
        why = ("GELU gives no exact zeros, so converting it would change its outputs"
               if variant == "gelu" else
               "it is a trained model with thresholds applied at evaluation, not weights of "
               "its own")  # fmt: skip
        choose = ", ".join(v for v in RELU if v in doc["variants"]) or "relu-target"
        raise ActregError(
            f"speedup cannot convert the variant {variant!r} exactly: {why}; choose a ReLU "
            f"variant with --variant ({choose})"
        )
    path = run_dir / variant / WEIGHTS
    if not path.exists():
        raise ActregError(
            f"no weights at {path}: runs before weights were saved cannot be timed; run "
            f"`actreg run transformer-lm` again"
        )
    saved = load_checkpoint(path)  # weights_only=True: plain data only
    cfg = from_dict(TransformerLMConfig, {**doc["config"], "progress": False})
    corpus = load_corpus(cfg.data, vocab_size=cfg.vocab_size, data_dir=data_dir or cfg.data_dir)
    if corpus.vocab != saved["vocab"]:
        raise ActregError(
            f"the corpus at {cfg.data} gives another vocabulary than the run was trained on "
            f"(changed files?); pass --data-dir to the run's data"
        )
    model = build_model(cfg, len(saved["vocab"]), saved["activation"])
    model.load_state_dict(saved["model"])
    return model.eval(), corpus


class NoFFN(nn.Module):
    """An FFN block that costs nothing: what a step costs when the FFN is free.

    Example:
        >>> NoFFN()(torch.ones(2)).tolist()
        [0.0, 0.0]
    """

    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)


def _blocks(model: nn.Module) -> list[Any]:
    """The transformer blocks of a GPT-2 model."""
    blocks: Any = model.get_submodule("transformer.h")
    return list(blocks)


def without_ffn(model: nn.Module) -> nn.Module:
    """A copy of a GPT-2 model whose FFN blocks are :class:`NoFFN` (for the FFN's share)."""
    free = copy.deepcopy(model)
    for block in _blocks(free):
        block.mlp = NoFFN()
    return free


def _greedy(model: nn.Module, prompt: Tensor, steps: int) -> Callable[[], Tensor]:
    """Greedy decoding of ``steps`` tokens after ``prompt`` (prefilled here, untimed): each
    call feeds one token per step through the KV cache, returns the tokens (the prefill's
    prediction first) and crops the cache back to the prompt."""
    from transformers import DynamicCache, GPT2LMHeadModel

    params = inspect.signature(GPT2LMHeadModel.forward).parameters
    cache = DynamicCache()
    kw = {"cache" if "cache" in params else "past_key_values": cache, "use_cache": True}
    with torch.no_grad():
        first = model(prompt, **kw).logits[:, -1:].argmax(-1)

    def run() -> Tensor:
        tokens = [first]
        with torch.no_grad():
            for _ in range(steps):
                tokens.append(model(tokens[-1], **kw).logits[:, -1:].argmax(-1))
        cache.crop(-steps)
        return torch.cat(tokens, 1)

    return run


def _generate(model: Any, prompt: Tensor, n: int) -> Tensor:
    """``n`` greedy tokens from ``generate`` (the Hugging Face loop, KV cache included)."""
    with torch.no_grad():
        out: Tensor = model.generate(
            prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=1
        )
    return out


def _prefill(model: nn.Module, ids: Tensor) -> Callable[[], Tensor]:
    def run() -> Tensor:
        with torch.no_grad():
            return model(ids, use_cache=False).logits

    return run


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def _time(fns: Mapping[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    clock = "cpu" if torch.get_num_threads() == 1 else "wall"
    return time_interleaved(dict(fns), repeats=repeats, min_time=0.05, clock=clock)


def _speedup(t: dict[str, list[float]], base: str = "dense", other: str = "converted") -> Any:
    return _quartiles([a / b for a, b in zip(t[base], t[other], strict=True)])


def _active(model: nn.Module, fn: Callable[[], object]) -> float:
    """The mean share of FFN units active in any row of a call (batch union) during ``fn``."""
    shares: list[float] = []

    def hook(_: nn.Module, __: Any, out: Tensor) -> None:
        shares.append(float((out.reshape(-1, out.shape[-1]) != 0).any(0).float().mean()))

    handles = [b.mlp.act.register_forward_hook(hook) for b in _blocks(model)]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return statistics.mean(shares)


def _mlp_inputs(model: nn.Module, fn: Callable[[], object]) -> list[tuple[int, Tensor]]:
    """(layer, input) of every FFN block call while ``fn`` runs."""
    seen: list[tuple[int, Tensor]] = []
    blocks = _blocks(model)
    handles = [
        b.mlp.register_forward_pre_hook(lambda _, a, i=i: seen.append((i, a[0].detach())))
        for i, b in enumerate(blocks)
    ]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return seen


def _ffn_only(model: nn.Module, xs: list[tuple[int, Tensor]]) -> Callable[[], None]:
    mlps = [b.mlp for b in _blocks(model)]

    def run() -> None:
        with torch.no_grad():
            for i, x in xs:
                mlps[i](x)

    return run


def decode_speedup(
    dense: nn.Module,
    converted: nn.Module,
    test: Tensor,
    *,
    context: int,
    prompts: int,
    prompt_tokens: int,
    new_tokens: int,
    repeats: int,
) -> dict[str, Any]:
    """Measure ``converted`` against ``dense`` (see the module docstring) on prompts cut from
    the token stream ``test``; returns the batch-1 summary and one row per workload."""
    p = max(1, min(prompt_tokens, context // 2))
    n = max(1, min(new_tokens, context - p))
    need = max(prompts, *BATCHES)
    stride = max(p, (len(test) - p) // need)
    if len(test) < p * need:
        raise ActregError(f"the test split has {len(test)} tokens, too few for {need} prompts")
    starts = [i * stride for i in range(need)]
    cut = torch.stack([test[s : s + p] for s in starts])
    free = without_ffn(dense)
    models = {"dense": dense, "converted": converted, "free": free}
    single = {k: [_greedy(m, cut[i : i + 1], n) for i in range(prompts)] for k, m in models.items()}

    def all_of(fns: list[Callable[[], Tensor]]) -> Callable[[], list[Tensor]]:
        return lambda: [f() for f in fns]

    runs = {k: all_of(v) for k, v in single.items()}
    same = all(torch.equal(a, b) for a, b in zip(runs["dense"](), runs["converted"](), strict=True))
    same_generate = all(
        torch.equal(_generate(dense, cut[i : i + 1], n), _generate(converted, cut[i : i + 1], n))
        for i in range(prompts)
    )
    t = _time(runs, repeats)
    per_token = {k: [s / (prompts * n) for s in v] for k, v in t.items()}
    share = statistics.median(1 - f / d for f, d in zip(t["free"], t["dense"], strict=True))
    share = min(max(share, 0.0), 0.999)
    xs = _mlp_inputs(dense, single["dense"][0])
    ffn_t = _time({"dense": _ffn_only(dense, xs), "converted": _ffn_only(converted, xs)},
                  repeats)  # fmt: skip
    ffn = _speedup(ffn_t)[1]
    e2e = _speedup(t)
    amdahl = 1 / ((1 - share) + share / ffn)
    dq, cq = _quartiles(per_token["dense"]), _quartiles(per_token["converted"])
    summary = {
        "prompts": prompts, "prompt_tokens": p, "new_tokens": n,
        "identical_tokens": same, "identical_generate": same_generate,
        "ffn_zero_fraction": 1 - _active(dense, single["dense"][0]),
        "dense_tok_s": 1 / dq[1], "converted_tok_s": 1 / cq[1],
        "speedup": e2e[1], "speedup_q1": e2e[0], "speedup_q3": e2e[2],
        "ffn_share": share, "ffn_speedup": ffn, "amdahl_limit": amdahl,
        "limit_ffn_free": 1 / (1 - share), "of_amdahl": e2e[1] / amdahl,
    }  # fmt: skip
    rows = [_row("decode", 1, n, 1 - summary["ffn_zero_fraction"], per_token, e2e, same)]
    for b in BATCHES:
        fns = {k: _greedy(models[k], cut[:b], n) for k in ("dense", "converted")}
        ok = torch.equal(fns["dense"](), fns["converted"]())
        tb = _time(fns, repeats)
        per = {k: [s / (b * n) for s in v] for k, v in tb.items()}
        rows.append(_row("decode", b, n, _active(dense, fns["dense"]), per, _speedup(tb), ok))
    ids = test[: min(context, len(test))].unsqueeze(0)
    pre = {k: _prefill(models[k], ids) for k in ("dense", "converted")}
    ok = torch.equal(pre["dense"]().argmax(-1), pre["converted"]().argmax(-1))
    tp = _time(pre, repeats)
    per = {k: [s / ids.shape[1] for s in v] for k, v in tp.items()}
    rows.append(_row("prefill", 1, ids.shape[1], _active(dense, pre["dense"]), per,
                     _speedup(tp), ok))  # fmt: skip
    return {"decode": summary, "rows": rows}


def _row(
    workload: str, batch: int, tokens: int, active: float, per_token: dict[str, list[float]],
    speedup: tuple[float, float, float], same: bool,
) -> dict[str, Any]:  # fmt: skip
    d = statistics.median(per_token["dense"])
    c = statistics.median(per_token["converted"])
    return {
        "workload": workload, "batch": batch, "tokens": tokens, "active_units": active,
        "dense_tok_s": 1 / d, "converted_tok_s": 1 / c, "speedup": speedup[1],
        "speedup_q1": speedup[0], "speedup_q3": speedup[2], "identical": same,
    }  # fmt: skip
