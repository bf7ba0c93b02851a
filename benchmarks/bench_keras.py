"""actreg against Keras 3 (torch backend): step time and a penalty cross-check.

Usage:
    pip install -e '.[bench]'   # keras, benchmark-only
    python benchmarks/bench_keras.py [--reps 15] [--steps 10] [--quick]

The MLP 784-1024-1024-10 (batch 128, ReLU, cross-entropy on logits, Adam 1e-3) with an
L1(1e-5) activity penalty on both hidden layers, five variants timed interleaved in one
process (torch threads fixed, as for every benchmark here):

* ``keras``: ``keras.Sequential`` of ``Dense`` layers, ``model.train_on_batch``;
* ``keras+reg``: the same with ``activity_regularizer=keras.regularizers.L1(1e-5)``;
* ``torch``: the same MLP in plain PyTorch, no penalty;
* ``torch+actreg``: the same with ``actreg.attach`` (``L1(1e-5)`` on both ReLUs);
* ``torch+hand``: the penalty written by hand in the forward.

Before timing, the cross-check: the torch weights are copied into the Keras model, and the
per-layer penalty values of one forward pass on the same input are compared
(``model.losses`` in Keras, ``reg.last`` in actreg). Keras >= 3.14 divides the activity
penalty by the batch size, like actreg's ``reduction="batch"``; Keras 3.0-3.13 did not,
so for those versions the Keras value is compared with actreg's times the batch size.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import interleave, machine_line, md_table, ms_cell, ratio_cell
from bench_monitor import make_model

import actreg

REPS = 15  # repetitions (each times one block of every variant)
STEPS = 10  # training steps per block
WARMUP = 5  # untimed steps per variant first
BATCH = 128  # examples per step
COEF = 1e-5  # L1 coefficient on both hidden layers
SEED = 0  # weights and data


def keras_version() -> tuple[int, int]:
    import keras

    major, minor = keras.__version__.split(".")[:2]
    return int(major), int(minor)


def make_keras(regularized: bool, hidden: tuple[int, ...] = (1024, 1024), n_in: int = 784):
    """The Keras twin of the benchmark MLP, compiled for ``train_on_batch``."""
    import keras

    def reg():
        return keras.regularizers.L1(COEF) if regularized else None

    model = keras.Sequential(
        [keras.Input((n_in,))]
        + [keras.layers.Dense(h, activation="relu", activity_regularizer=reg()) for h in hidden]
        + [keras.layers.Dense(10)]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    return model


def copy_weights(torch_model: nn.Module, keras_model) -> None:
    """Copy the Linear layers of ``torch_model`` into the Dense layers of ``keras_model``."""
    linears = [m for m in torch_model.modules() if isinstance(m, nn.Linear)]
    dense = [layer for layer in keras_model.layers if hasattr(layer, "kernel")]
    assert len(linears) == len(dense), (len(linears), len(dense))
    for lin, layer in zip(linears, dense, strict=True):
        layer.kernel.assign(lin.weight.detach().T.numpy())
        layer.bias.assign(lin.bias.detach().numpy())


def cross_check(batch: int = BATCH) -> dict[str, object]:
    """Per-layer penalties of Keras and actreg for the same weights and input."""
    torch.manual_seed(SEED)
    tm = make_model()
    km = make_keras(True)
    copy_weights(tm, km)
    x = torch.randn(batch, 784)
    reg = actreg.attach(tm, {"act1": actreg.L1(COEF), "act2": actreg.L1(COEF)}, when="always")
    with torch.no_grad():
        t_logits = tm(x)
    reg.penalty()
    ours = [reg.last["act1"], reg.last["act2"]]
    k_logits = km(x, training=True)
    theirs = [float(loss.detach()) for loss in km.losses]
    scale = 1.0 if keras_version() >= (3, 14) else float(batch)
    rel = max(abs(k - o * scale) / abs(o * scale) for k, o in zip(theirs, ours, strict=True))
    logits_diff = float((torch.as_tensor(k_logits).detach().cpu() - t_logits).abs().max())
    return {"keras": theirs, "actreg": ours, "scale": scale, "rel": rel, "logits": logits_diff}


def variants() -> dict[str, Callable[[], object]]:
    torch.manual_seed(SEED)
    base = make_model()
    x, y = torch.randn(BATCH, 784), torch.randint(0, 10, (BATCH,))
    out: dict[str, Callable[[], object]] = {}
    for name, regularized in (("keras", False), ("keras+reg", True)):
        km = make_keras(regularized)
        copy_weights(base, km)
        out[name] = lambda km=km: km.train_on_batch(x, y)

    def torch_step(kind: str) -> Callable[[], object]:
        model = copy.deepcopy(base)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        spec = {"act1": actreg.L1(COEF), "act2": actreg.L1(COEF)}
        reg = actreg.attach(model, spec) if kind == "actreg" else None
        ce = nn.functional.cross_entropy

        def step() -> None:
            if kind == "hand":
                h1 = model.act1(model.fc1(x))
                h2 = model.act2(model.fc2(h1))
                pen = (h1.abs().sum() + h2.abs().sum()) * (COEF / BATCH)
                loss = ce(model.out(h2), y) + pen
            elif reg is not None:
                loss = ce(model(x), y) + reg.penalty()
            else:
                loss = ce(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    for kind in ("none", "actreg", "hand"):
        out["torch" if kind == "none" else f"torch+{kind}"] = torch_step(kind)
    return out


def run(reps: int, steps: int) -> dict[str, object]:
    import keras

    check = cross_check()
    timing = interleave(variants(), reps=reps, steps=steps, warmup=WARMUP)
    rows = []
    for name in timing.names:
        rows.append(
            [
                f"`{name}`",
                ms_cell(timing.ms(name)),
                ms_cell(timing.ms(name, "wall")),
                ratio_cell(timing.ratio(name, "keras")),
                ratio_cell(timing.ratio(name, "torch+hand")),
            ]
        )
    header = ["variant", "ms / step (CPU)", "ms / step (wall)", "vs keras", "vs torch+hand"]
    reg_cost = [
        ["Keras: regularized / not", ratio_cell(timing.ratio("keras+reg", "keras"))],
        ["actreg: attached / not", ratio_cell(timing.ratio("torch+actreg", "torch"))],
        ["hand-written: with / without", ratio_cell(timing.ratio("torch+hand", "torch"))],
        [
            "actreg step / Keras step, both penalized",
            ratio_cell(timing.ratio("torch+actreg", "keras+reg")),
        ],
    ]
    return {
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "check": check,
        "table": md_table(header, rows),
        "cost": md_table(["what the penalty costs", "ratio (CPU clock)"], reg_cost),
        "timing": timing,
        "reps": reps,
        "steps": steps,
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=REPS)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="5 reps x 3 steps")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    reps, steps = (5, 3) if args.quick else (args.reps, args.steps)
    result = run(reps, steps)
    print(machine_line())
    print(f"keras {result['keras_version']} ({result['backend']} backend)")
    print("cross-check:", result["check"])
    print(result["table"])
    print(result["cost"])
    return result


if __name__ == "__main__":
    main()
