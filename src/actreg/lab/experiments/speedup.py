"""``actreg speedup RUN_DIR``: turn a trained model's zeros into inference speed, measured.

A ``transformer-lm`` run is measured by decoding (tokens/s at batch 1 with the KV cache,
identical greedy tokens, the FFN's share of the time and its Amdahl limit, batches 4 and
16, prefill): see :mod:`actreg.lab.experiments._lm_speedup`. The rest of this docstring is
about the image models.

Rebuilds a trained ``sparse-rectifier`` or ``sparse-ae`` model from its run folder
(``results.json`` for the settings, ``VARIANT/checkpoint.pt`` for the weights, loaded with
``weights_only=True``), converts it with :func:`actreg.sparse.convert`, and measures dense
against converted latency on test images, with the identical-prediction check and the
FLOP-based limit from the measured zero fractions.

For the MLP, the run's input scaling is folded into the first layer
(:func:`actreg.sparse.fold_input_scaling`) so that the converted model reads the raw pixels,
most of which are zero, while the dense model reads the scaled ones it was trained on. The
converted model runs the C++ kernels (built on first use, once per machine, where a compiler
is present; see :func:`actreg.sparse.backend`) unless ``extension=False`` (the CLI's
``--no-extension``) asks for the pure-PyTorch kernel; without a compiler it runs on that.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from actreg import sparse
from actreg._errors import ActregError
from actreg._io import load_checkpoint
from actreg.lab._checks import check_fields
from actreg.lab.data import load_vision
from actreg.lab.data.vision import affine_scaler
from actreg.lab.experiments._ae_codes import build_model
from actreg.lab.experiments._config import from_dict
from actreg.lab.experiments._lm_speedup import decode_speedup, default_variant, load_lm
from actreg.lab.experiments._rundir import load_results
from actreg.lab.experiments.sparse_ae import variant_configs
from actreg.lab.models import Autoencoder, mlp

__all__ = ["SpeedupConfig", "speedup"]


@dataclass
class SpeedupConfig:
    """What to measure."""

    POSITIVE: ClassVar[tuple[str, ...]] = (  # settings that must be >= 1 (counts, widths)
        "examples", "batch_size", "threads", "prompts", "prompt_tokens", "new_tokens", "repeats",
    )  # fmt: skip

    run_dir: str  # a folder written by `actreg run sparse-rectifier|sparse-ae|transformer-lm`
    variant: str | None = None  # which trained variant (default: the penalized one)
    prompts: int = 4  # transformer-lm: test-split prompts decoded at batch 1
    prompt_tokens: int = 16  # transformer-lm: tokens per prompt (at most half the context)
    new_tokens: int = 32  # transformer-lm: greedy tokens per prompt (within the context)
    repeats: int = 7  # transformer-lm: interleaved repetitions (medians and IQR)
    examples: int = 500  # test images to time
    batch_size: int = 1  # images per forward (1 = latency)
    threads: int = 1  # torch threads while timing
    data_dir: str | None = None  # where the data lives (default as the run)
    extension: bool = True  # the C++ kernels where they build (False: the pure-PyTorch kernel)
    fold_input: bool = True  # MLP: fold the input scaling into the first layer, feed raw pixels

    def __post_init__(self) -> None:
        check_fields(self)


def _model(doc: dict[str, Any], variant: str, data: Any) -> tuple[nn.Module, list[str] | None]:
    """The trained model and the layers to convert (None: every eligible Linear)."""
    from actreg.lab.experiments import get

    cfg: Any = from_dict(get(doc["experiment"]).config, doc["config"])
    if doc["experiment"] == "sparse-rectifier":
        act = "tanh" if variant == "tanh" else "relu"
        return mlp(data.x_train.shape[1], cfg.hidden, data.n_classes, act, cfg.dropout), None
    configs = variant_configs(cfg)  # the variant's own code type (runs before code types:
    cfg = configs[variant][0] if variant in configs else cfg  # one label per run's config)
    ae = build_model(cfg, data.x_train.shape[1])
    return ae, ["decoder.fc1" if cfg.hidden else "decoder.out"]


def _lm(cfg: SpeedupConfig, doc: dict[str, Any], variant: str) -> dict[str, Any]:
    model, corpus = load_lm(doc, variant, cfg.data_dir)
    backend = sparse.backend("auto" if cfg.extension else "torch")
    kernels = "PyTorch" if backend.load() is None else "C++"
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        converted = sparse.convert(model, kernels=backend)  # threshold calibrated here too
        out = decode_speedup(
            model, converted, corpus.test, context=doc["config"]["context"],
            prompts=cfg.prompts, prompt_tokens=cfg.prompt_tokens, new_tokens=cfg.new_tokens,
            repeats=cfg.repeats,
        )  # fmt: skip
    finally:
        torch.set_num_threads(old_threads)
    head = {"run": str(cfg.run_dir), "variant": variant, "threads": cfg.threads,
            "kernels": kernels}  # fmt: skip
    return {**head, **out}


def speedup(cfg: SpeedupConfig) -> dict[str, Any]:
    """Convert the run's model and measure it; returns a row for the table and the report."""
    doc = load_results(cfg.run_dir)
    if doc["experiment"] not in ("sparse-rectifier", "sparse-ae", "transformer-lm"):
        raise ActregError(
            "speedup works on sparse-rectifier, sparse-ae and transformer-lm runs, got "
            f"{doc['experiment']!r}"
        )
    variants = list(doc["variants"])
    lm = doc["experiment"] == "transformer-lm"
    variant = cfg.variant or (default_variant(variants) if lm else variants[0])
    if variant not in variants:
        raise ActregError(f"no variant {variant!r} in {cfg.run_dir}; it has {variants}")
    if lm:
        return _lm(cfg, doc, variant)
    c = doc["config"]
    raw = load_vision(  # the run's split, unscaled; the run's scaling is refitted below
        c["data"],
        data_dir=cfg.data_dir or c.get("data_dir"),
        val_size=c.get("val_size"),
        seed=c["seed"],
        scaling="none",
        limit=c.get("limit"),
    )
    shift, scale, _ = affine_scaler(raw.x_train.numpy(), c["scaling"])
    raw_inputs = raw.x_test[: cfg.examples]
    if c["scaling"] == "none":
        inputs = raw_inputs
    else:
        inputs = torch.from_numpy(((raw_inputs.numpy() - shift) / scale).astype(np.float32))
    model, names = _model(doc, variant, raw)
    ckpt = Path(cfg.run_dir) / variant.replace(" ", "_") / "checkpoint.pt"
    model.load_state_dict(load_checkpoint(ckpt)["model"])
    model.eval()
    backend = sparse.backend("auto" if cfg.extension else "torch")
    kernels = "PyTorch" if backend.load() is None else "C++"
    fast_inputs: torch.Tensor | None = None
    folded = False
    if isinstance(model, Autoencoder):  # time the decoder on the codes it reads
        with torch.no_grad():
            inputs = model.encode(inputs)
        model = model.decoder
        names = [n.split(".", 1)[1] for n in names or []]
        source: nn.Module = model
    elif cfg.fold_input:  # the first layer reads raw pixels; the rest as convert picks
        first = next(n for n, m in model.named_children() if isinstance(m, nn.Linear))
        source = copy.deepcopy(model)
        setattr(source, first, sparse.fold_input_scaling(getattr(model, first), shift, scale))
        names = [first, *sparse.eligible(model)]
        fast_inputs, folded = raw_inputs, True
    else:
        source = model
    converted = sparse.convert(source, names, kernels=backend)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        report = sparse.measure(
            model, converted, inputs, batch_size=cfg.batch_size, converted_inputs=fast_inputs
        )
    finally:
        torch.set_num_threads(old_threads)
    return {
        "run": str(cfg.run_dir),
        "variant": variant,
        "batch_size": cfg.batch_size,
        "threads": cfg.threads,
        "kernels": kernels,
        "input_folded": folded,
        "dense_ms": report.dense_s * 1e3,
        "sparse_ms": report.sparse_s * 1e3,
        "speedup": report.speedup,
        "limit": report.limit,
        "of_limit": report.of_limit,
        "identical": report.identical,
        "max_abs_diff": report.max_abs_diff,
        "zero_fractions": report.zero_fractions,
    }
