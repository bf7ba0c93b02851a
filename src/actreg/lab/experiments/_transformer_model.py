"""The model of ``transformer-lm``: a Hugging Face GPT-2 from a config, windows of a token
stream, and the evaluation (perplexity and the FFN layers' sparsity).

Split from :mod:`~actreg.lab.experiments.transformer_lm` (which exports these names and
holds the config, the variants' training and the results).

Design:

* The model is Hugging Face's ``GPT2LMHeadModel`` built from a ``GPT2Config`` (nothing is
  downloaded), not a nanoGPT-style module of our own: the FFN is GPT-2's ``Conv1D`` pair
  with a named activation module (``mlp.act``), so what this experiment trains is exactly
  what users hook by glob, what ``generate`` decodes with its KV cache, and what the sparse
  conversion of GPT-2 MLPs converts, with no second model to keep in step. transformers is
  an optional extra: without it the run stops with the install command.
* Evaluation cuts a split into consecutive windows of ``context`` tokens (no sliding
  window), the same for every variant; the tail shorter than a window is dropped.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

import actreg
from actreg._errors import ActregError
from actreg.lab.experiments._contract import layer_means

__all__ = ["FFN", "INSTALL", "build_model", "evaluate_lm", "loss", "windows"]

FFN = "transformer.h.*.mlp.act"
"""The FFN activation modules of a GPT-2 model (the input of each ``mlp.c_proj``)."""
INSTALL = 'pip install "actreg[transformers]"'


def build_model(cfg: Any, vocab: int, activation: str) -> nn.Module:
    """A ``GPT2LMHeadModel`` from a ``GPT2Config`` (``activation``: ``"relu"`` or ``"gelu"``,
    GPT-2's tanh approximation); ``<eos>`` (id 1) is its BOS and EOS token. ``cfg`` is a
    ``TransformerLMConfig`` (typed ``Any``: this module must not import the experiment's).

    Raises:
        ActregError: when transformers is not installed, naming the install command.
    """
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as err:
        raise ActregError(
            f"transformer-lm builds Hugging Face GPT-2 models: install transformers with {INSTALL}"
        ) from err
    config = GPT2Config(
        vocab_size=vocab,
        n_positions=cfg.context,
        n_embd=cfg.width,
        n_layer=cfg.layers,
        n_head=cfg.heads,
        activation_function="gelu_new" if activation == "gelu" else activation,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        bos_token_id=1,
        eos_token_id=1,
    )
    return GPT2LMHeadModel(config)


def windows(ids: Tensor, context: int, offset: int = 0) -> Tensor:
    """Consecutive ``(N, context + 1)`` windows of a token stream from ``offset`` (each
    window's last token is the next one's first: inputs ``w[:, :-1]``, targets ``w[:, 1:]``).

    Example:
        >>> windows(torch.arange(10), 3).tolist()
        [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    """
    n = (len(ids) - offset - 1) // context
    if n < 1:
        raise ActregError(f"{len(ids)} tokens make no window of context={context}; lower context")
    idx = offset + torch.arange(n).unsqueeze(1) * context + torch.arange(context + 1)
    return ids[idx]


def loss(model: nn.Module, batch: Tensor) -> Tensor:
    """Mean cross-entropy of the next token over a batch of ``windows`` rows."""
    logits = model(input_ids=batch[:, :-1]).logits
    return nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())


@torch.no_grad()
def evaluate_lm(model: nn.Module, data: Tensor, batch_size: int) -> dict[str, Any]:
    """Perplexity over ``data`` windows and the FFN layers' statistics (Monitor, eval mode)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with actreg.Monitor(model, FFN) as monitor:
        for i in range(0, len(data), batch_size):
            batch = data[i : i + batch_size]
            total += float(loss(model, batch)) * batch[:, 1:].numel()
            count += batch[:, 1:].numel()
        stats = monitor.compute()
    model.train(was_training)
    layers = {name: {k: v for k, v in s.items() if k != "firing_rate"} for name, s in stats.items()}
    return {"ppl": math.exp(min(total / count, 50.0)), "layers": layers, **layer_means(layers)}
