"""Decoding speed from FFN zeros: a GPT-2-style model, dense against actreg.sparse.convert.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/bench_decode.py [--quick] [--reps 7]
        [--state-dict PATH --heads 6] [--write docs/PERFORMANCE_DECODE.md]

The model: transformers' GPT2LMHeadModel from a config (6 layers, width 384, FFN 1536,
vocabulary 10,000, ReLU; nothing downloads), random weights, whose FFN activations are made
90 / 95 / 99 % zeros by shifting each c_fc bias by that quantile of the unit's
pre-activation on random tokens (layer after layer, so each layer sees the inputs the
shifted layers below give it). --state-dict loads trained GPT2LMHeadModel weights instead
(one level: their own zeros). One torch thread; CPU time (steady on a shared machine);
variants interleaved in every repetition (benchmarks/_common.py); medians and IQR over
repetitions.

Tables:
1. Batch 1 decode with the KV cache: ms per token of a decode step, dense / converted /
   no FFN at all (the FFN block replaced by a zero: its share of the dense step, and the
   Amdahl limit 1/(1-share) that share sets); the end-to-end speedup against the limit the
   measured FFN speedup allows, 1/((1-share) + share/s_ffn); tokens/s of `generate` (greedy,
   prompt included) and whether its tokens equal the dense model's.
2. The FFN block alone at batch 1 on the model's own layer-0 inputs: GPT2MLP against the
   converted block (c_fc screened, the default) and the converted block with screen=False
   (c_fc dense), c_fc+ReLU alone, c_proj dense against the sparse kernel.
3. Batches 4 and 16 (decode steps; the sparse kernel reads each row's own active rows, so
   the work grows with the batch; the union of active units is shown) and a 128-token
   prefill: FFN block and whole step, dense against converted.
4. The crossover: the FFN block at batch 1 from 50 to 99 % zeros, sparse path forced.
5. Exact ways to skip part of c_fc: the share of units whose zero a bound proves without
   computing them, the int8 screen being the one the converted block runs (see
   docs/PERFORMANCE_DECODE.md).
6. Weight bytes a batch-1 token reads in layer 0's block: dense, converted, and the least
   any exact float32 path reads (a free oracle naming the non-zero units: their c_fc and
   c_proj weights) or a perfect int8 screen plus that oracle, against the measured block
   speedup. Decoding at batch 1 streams the weights from memory, so the byte ratio bounds
   the block's speedup.

--write replaces the generated block of that markdown file with this run's tables.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from _common import interleave, machine_line, md_table, quartiles, setup_threads
from torch import Tensor, nn

from actreg import sparse
from actreg.lab.experiments._lm_speedup import without_ffn  # shared with `actreg speedup`
from actreg.sparse._kernels import sparse_linear
from actreg.sparse._screen import pack
from actreg.sparse.calibrate import crossover

try:
    import transformers
    from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel
except ImportError:  # pragma: no cover
    sys.exit("bench_decode needs transformers: pip install 'actreg[transformers]'")

# Defaults: one comment per setting.
SEED = 0  # weights, tokens and bias calibration start here
LAYERS, WIDTH, HEADS, VOCAB, CONTEXT = 6, 384, 6, 10_000, 256  # the GPT-2-style model
ZEROS = [0.9, 0.95, 0.99]  # FFN activation zero fractions timed end to end
SWEEP = [0.0, 0.25, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99]  # zero fractions of the crossover sweep
PROMPT = 16  # prompt tokens before the timed decode steps
DECODE = 32  # decode steps per timed block (the KV cache is cropped back after each)
GENERATE = 32  # new tokens of the generate() timing and the identical-tokens check
PREFILL = 128  # tokens of the prefill row
BATCHES = [4, 16]  # decode batch sizes beyond 1
CALIB_ROWS = (8, 64)  # random-token batch on which the bias shifts are calibrated
REPS = 5  # interleaved repetitions (medians and IQR over these)
BEGIN, END = "<!-- bench_decode:begin -->", "<!-- bench_decode:end -->"
# transformers 5 calls the KV cache argument `cache` (4.x: `past_key_values`)
CACHE_KW = (
    "cache"
    if "cache" in inspect.signature(GPT2LMHeadModel.forward).parameters
    else ("past_key_values")
)


# ------------------------------------------------------------------------------ the model


def build(state_dict: str | None, heads: int) -> GPT2LMHeadModel:
    """The GPT-2-style model: from the defaults, or shaped after a trained state_dict."""
    torch.manual_seed(SEED)
    if state_dict is None:
        cfg = GPT2Config(
            n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS, vocab_size=VOCAB, n_positions=CONTEXT,
            activation_function="relu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            bos_token_id=0, eos_token_id=None, pad_token_id=0,
        )  # fmt: skip
        return GPT2LMHeadModel(cfg).eval()
    sd = torch.load(state_dict, map_location="cpu", weights_only=True)
    sd = {k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}": v
          for k, v in sd.items()}  # fmt: skip
    wte, wpe = sd["transformer.wte.weight"], sd["transformer.wpe.weight"]
    n_layer = len({k.split(".")[2] for k in sd if k.startswith("transformer.h.")})
    cfg = GPT2Config(
        n_embd=wte.shape[1], n_layer=n_layer, n_head=heads, vocab_size=wte.shape[0],
        n_positions=wpe.shape[0], n_inner=sd["transformer.h.0.mlp.c_fc.weight"].shape[1],
        activation_function="relu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    model = GPT2LMHeadModel(cfg)
    model.load_state_dict(sd, strict=False)
    return model.eval()


def mlp_inputs(model: GPT2LMHeadModel, ids: Tensor, layer: int) -> Tensor:
    """The inputs (rows of width d) the FFN of ``layer`` sees on ``ids``."""
    seen: list[Tensor] = []
    mlp = model.transformer.h[layer].mlp
    handle = mlp.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    with torch.no_grad():
        model(ids)
    handle.remove()
    return seen[0].reshape(-1, seen[0].shape[-1])


def shift_biases(model: GPT2LMHeadModel, zeros: float, ids: Tensor) -> None:
    """Shift each c_fc bias so that its unit is zero on a ``zeros`` fraction of ``ids``'s
    tokens, layer after layer."""
    for i, block in enumerate(model.transformer.h):
        x = mlp_inputs(model, ids, i)
        with torch.no_grad():
            pre = torch.addmm(block.mlp.c_fc.bias, x, block.mlp.c_fc.weight)
            block.mlp.c_fc.bias.sub_(torch.quantile(pre, zeros, dim=0))


def zero_fraction(model: GPT2LMHeadModel, ids: Tensor) -> float:
    """The FFN activations' zero fraction over all layers on ``ids``."""
    acts = [b.mlp.act for b in model.transformer.h]
    zeros, total = [0], [0]

    def count(m: nn.Module, a: object, out: Tensor) -> None:
        zeros[0] += int((out == 0).sum())
        total[0] += out.numel()

    handles = [a.register_forward_hook(count) for a in acts]
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()
    return zeros[0] / total[0]


# ------------------------------------------------------------------------------- timings


def decoder(model: nn.Module, prompt: Tensor, tokens: Tensor) -> Callable[[], None]:
    """One timed block: ``tokens.shape[1]`` decode steps after a prefilled prompt; the
    cache is cropped back to the prompt afterwards."""
    cache = DynamicCache()
    kw = {CACHE_KW: cache, "use_cache": True}
    with torch.no_grad():
        model(prompt, **kw)
    steps = tokens.shape[1]

    def run() -> None:
        with torch.no_grad():
            for t in range(steps):
                model(tokens[:, t : t + 1], **kw)
        cache.crop(-steps)

    return run


def prefill(model: nn.Module, ids: Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            model(ids, use_cache=False)

    return run


def cycle(fn: Callable[[Tensor], object], xs: list[Tensor]) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            for x in xs:
                fn(x)

    return run


def cell(q: tuple[float, float, float], digits: int = 3) -> str:
    return f"{q[1]:.{digits}f} ({q[0]:.{digits}f}-{q[2]:.{digits}f})"


def speed(t: object, base: str, name: str) -> tuple[float, float, float]:
    """Quartiles of the per-repetition speedups base/name (CPU clock)."""
    return quartiles([1.0 / r for r in t.ratios(name, base)])  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- the tables


def decode_table(
    dense: GPT2LMHeadModel, fast: nn.Module, zeros: str, prompt: Tensor, gen: torch.Generator,
    reps: int, rows: list[list[object]], ffn_speed: float,
) -> None:  # fmt: skip
    free = without_ffn(dense)
    tokens = torch.randint(1, dense.config.vocab_size, (1, DECODE), generator=gen)
    models = {"dense": dense, "sparse": fast, "free": free}
    t = interleave({n: decoder(m, prompt, tokens) for n, m in models.items()},
                   reps=reps, steps=1, warmup=1)  # fmt: skip
    per_tok = {n: quartiles([s * 1e3 / DECODE for s in t.per_step["cpu"][n]]) for n in t.names}
    share = statistics.median(1 - r for r in t.ratios("free", "dense"))
    ceiling = 1 / (1 - share)
    amdahl = 1 / ((1 - share) + share / ffn_speed)
    e2e = speed(t, "dense", "sparse")
    kw = {"max_new_tokens": GENERATE, "min_new_tokens": GENERATE, "do_sample": False}
    g = interleave({n: (lambda m=m: m.generate(prompt, **kw)) for n, m in models.items()
                    if n != "free"}, reps=max(3, reps // 2), steps=1, warmup=1)  # fmt: skip
    tps = {n: GENERATE / statistics.median(g.per_step["cpu"][n]) for n in g.names}
    same = torch.equal(dense.generate(prompt, **kw), fast.generate(prompt, **kw))
    rows.append([
        zeros, cell(per_tok["dense"]), cell(per_tok["sparse"]), cell(per_tok["free"]),
        f"{share:.0%}", f"{ceiling:.2f}x", f"{ffn_speed:.2f}x", f"{amdahl:.2f}x",
        f"{cell(e2e, 2)}x", f"{e2e[1] / amdahl:.0%}",
        f"{tps['dense']:.0f} / {tps['sparse']:.0f}", "yes" if same else "**no**",
    ])  # fmt: skip


def ffn_parts(
    mlp: nn.Module, fast: nn.Module, xs: list[Tensor], reps: int, steps: int
) -> dict[str, tuple[float, float, float]]:
    """The block and its parts on the inputs ``xs``: microseconds per input, and speedups
    (the converted block as given, and a copy of it with the screen off)."""
    ext = sparse.backend("auto").load()
    unscreened = copy.copy(fast)
    unscreened.screen = False
    w, b = mlp.c_proj.weight, mlp.c_proj.bias
    with torch.no_grad():
        hs = [torch.relu(mlp.c_fc(x)).reshape(-1, w.shape[0]).contiguous() for x in xs]

    def proj_sparse(h: Tensor) -> Tensor:  # what the converted block runs for c_proj
        if ext is not None:
            return ext.linear_auto(h, w.t(), w, b, 0.0, False)
        return sparse_linear(h, w, b)

    t = interleave(
        {
            "block dense": cycle(mlp, xs),
            "block sparse": cycle(fast, xs),
            "block unscreened": cycle(unscreened, xs),
            "c_fc+relu": cycle(lambda x: torch.relu(mlp.c_fc(x)), xs),
            "c_proj dense": cycle(lambda h: torch.addmm(b, h, w), hs),
            "c_proj sparse": cycle(proj_sparse, hs),
        },
        reps=reps, steps=steps, warmup=2,
    )  # fmt: skip
    n = len(xs)
    out = {k: quartiles([s * 1e6 / n for s in t.per_step["cpu"][k]]) for k in t.names}
    out["block speedup"] = speed(t, "block dense", "block sparse")
    out["unscreened speedup"] = speed(t, "block dense", "block unscreened")
    out["c_proj speedup"] = speed(t, "c_proj dense", "c_proj sparse")
    return out


def union_active(mlp: nn.Module, xs: list[Tensor]) -> float:
    with torch.no_grad():
        return statistics.mean(
            float((torch.relu(mlp.c_fc(x)).reshape(-1, mlp.c_fc.nf) != 0).any(0).float().mean())
            for x in xs
        )


# --------------------------------------------------------------- exact skipping of c_fc


def bounds_study(model: GPT2LMHeadModel, ids: Tensor) -> list[float]:
    """Shares of the units proven zero without computing them, over all layers:
    [zero share, static LayerNorm bound, per-token Cauchy-Schwarz bound, int8 screen (the
    converted block's: actreg.sparse._screen and the C++ screen_mask), and 1.0 if every
    unit the screen drops is zero in the dense float32 product, else 0.0]."""
    ext = sparse.backend("auto").load()
    zero = ln_dead = cs = int8 = total = 0.0
    sound = 1.0
    for i, block in enumerate(model.transformer.h):
        x32 = mlp_inputs(model, ids, i).contiguous()
        x = x32.double()
        w, b = block.mlp.c_fc.weight.double(), block.mlp.c_fc.bias.double()
        pre = x @ w + b
        n = pre.numel()
        total += n
        zero += float((pre <= 0).sum())
        # static: x = gamma * z + beta with mean(z) = 0 and |z| <= sqrt(d)
        ln = block.ln_2
        gw = ln.weight.double()[:, None] * w
        gw = gw - gw.mean(0, keepdim=True)
        top = math.sqrt(w.shape[0]) * gw.norm(dim=0) + ln.bias.double() @ w + b
        ln_dead += float((top < 0).sum()) * x.shape[0]
        # per token: x . w_j + b_j <= |x| |w_j| + b_j
        cs += float((x.norm(dim=1, keepdim=True) * w.norm(dim=0) + b < 0).sum())
        # the int8 screen (C++): the units it leaves
        p = pack(block.mlp.c_fc.weight)
        if ext is None or p is None:
            return [zero / total, ln_dead / total, cs / total, math.nan, math.nan]
        keep = ext.screen_mask(x32, p.qpack, p.unit, block.mlp.c_fc.bias.detach())
        int8 += float((~keep).sum())
        dense = torch.addmm(block.mlp.c_fc.bias, x32, block.mlp.c_fc.weight)
        sound = min(sound, float(not bool((dense > 0)[~keep].any())))
    return [zero / total, ln_dead / total, cs / total, int8 / total, sound]


def screen_share(mlp: nn.Module, xs: list[Tensor]) -> float:
    """The mean share of the units the screen leaves to the exact pass, on rows ``xs``."""
    ext = sparse.backend("auto").load()
    p = pack(mlp.c_fc.weight)
    if ext is None or p is None:
        return math.nan
    b = mlp.c_fc.bias.detach()
    return statistics.mean(
        float(ext.screen_mask(x.reshape(1, -1), p.qpack, p.unit, b).float().mean()) for x in xs
    )


def weight_bytes(mlp: nn.Module, xs: list[Tensor]) -> dict[str, float]:
    """Bytes of weights one batch-1 token reads in the block, from the shares measured on
    rows ``xs``: dense float32 (all of ``c_fc`` and ``c_proj``); converted (the int8 copy of
    ``c_fc``, 32 bytes of statistics per unit, float32 ``c_fc`` weights of the units the screen
    leaves, ``c_proj`` rows of the non-zero ones); and a free exact oracle (float32 weights of
    the non-zero units only, in both layers): the least any exact float32 path must read.
    A perfect int8 screen still reads all of its int8 copy: ``screen + oracle`` is the least
    this design reads."""
    d, f = mlp.c_fc.weight.shape
    with torch.no_grad():
        active = statistics.mean(float((torch.relu(mlp.c_fc(x)) != 0).float().mean()) for x in xs)
    kept = screen_share(mlp, xs)
    dense = 2 * d * f * 4
    screen = d * f + 32 * f
    conv = screen + kept * f * d * 4 + active * f * d * 4
    return {"active": active, "kept": kept, "dense": dense, "converted": conv,
            "screen": screen, "oracle": 2 * active * f * d * 4}  # fmt: skip


# -------------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=REPS, help="interleaved repetitions")
    p.add_argument("--quick", action="store_true", help="3 repetitions, fewer rows (a check)")
    p.add_argument("--state-dict", help="trained GPT2LMHeadModel weights (ReLU) to time")
    p.add_argument("--heads", type=int, default=HEADS, help="attention heads of --state-dict")
    p.add_argument("--write", help="replace the generated block of this markdown file")
    args = p.parse_args()
    setup_threads(1)
    reps = 3 if args.quick else args.reps
    gen = torch.Generator().manual_seed(SEED)
    base = build(args.state_dict, args.heads)
    vocab = base.config.vocab_size
    calib = torch.randint(1, vocab, CALIB_ROWS, generator=gen)
    probe = torch.randint(1, vocab, (4, 64), generator=gen)
    prompt = torch.randint(1, vocab, (1, PROMPT), generator=gen)
    levels = ["trained"] if args.state_dict else [f"{z:.0%}" for z in ZEROS]
    source = (
        f"trained weights from {args.state_dict}"
        if args.state_dict
        else "random weights, c_fc biases shifted to each zero level"
    )
    lines = [
        f"Command: `OMP_NUM_THREADS=1 python {' '.join(sys.argv)}`",
        "",
        f"Machine: {machine_line()}; transformers {transformers.__version__}; C++ kernels: "
        f"{'yes' if sparse.backend('auto').load() is not None else 'no (pure PyTorch)'}.",
        "",
        f"Model: GPT2LMHeadModel, {base.config.n_layer} layers, width {base.config.n_embd}, "
        f"FFN {base.transformer.h[0].mlp.c_fc.nf}, "
        f"vocabulary {vocab}, ReLU; {source}. "
        f"CPU time, {reps} interleaved repetitions, median (IQR).",
    ]  # fmt: skip
    dec_rows: list[list[object]] = []
    ffn_rows: list[list[object]] = []
    batch_rows: list[list[object]] = []
    bound_rows: list[list[object]] = []
    byte_rows: list[list[object]] = []
    for level in levels:
        dense = copy.deepcopy(base)
        if not args.state_dict:
            shift_biases(dense, float(level.rstrip("%")) / 100, calib)
        measured = zero_fraction(dense, probe)
        fast = sparse.convert(dense)
        label = f"{level} (measured {measured:.1%})"
        # FFN alone at batch 1 on the model's layer-0 inputs
        xs = [r.view(1, 1, -1) for r in mlp_inputs(dense, probe, 0)[:32]]
        mlp, fmlp = dense.transformer.h[0].mlp, fast.transformer.h[0].mlp
        parts = ffn_parts(mlp, fmlp, xs, reps, steps=8)
        by = weight_bytes(mlp, xs)
        byte_rows.append([
            label, f"{by['active']:.1%}", f"{by['kept']:.1%}", f"{by['dense'] / 1e3:.0f}",
            f"{by['converted'] / 1e3:.0f}", f"{by['dense'] / by['converted']:.2f}x",
            f"{by['dense'] / by['oracle']:.2f}x",
            f"{by['dense'] / (by['screen'] + by['oracle']):.2f}x",
            f"{cell(parts['block speedup'], 2)}x",
        ])  # fmt: skip
        ffn_rows.append([
            label, cell(parts["block dense"], 1), cell(parts["block sparse"], 1),
            f"{cell(parts['block speedup'], 2)}x", cell(parts["block unscreened"], 1),
            f"{cell(parts['unscreened speedup'], 2)}x", cell(parts["c_fc+relu"], 1),
            cell(parts["c_proj dense"], 1), cell(parts["c_proj sparse"], 1),
            f"{cell(parts['c_proj speedup'], 2)}x",
        ])  # fmt: skip
        decode_table(dense, fast, label, prompt, gen, reps, dec_rows, parts["block speedup"][1])
        if args.quick and level != levels[0]:
            continue
        # batches and prefill: FFN block and whole step
        rows_all = mlp_inputs(dense, probe, 0)
        for batch in BATCHES:
            bx = [rows_all[i * batch : (i + 1) * batch].reshape(batch, 1, -1) for i in range(8)]
            part = ffn_parts(mlp, fmlp, bx, reps, steps=4)
            bprompt = torch.randint(1, vocab, (batch, PROMPT), generator=gen)
            btok = torch.randint(1, vocab, (batch, DECODE // 4), generator=gen)
            t = interleave(
                {"dense": decoder(dense, bprompt, btok), "sparse": decoder(fast, bprompt, btok)},
                reps=reps, steps=1, warmup=1,
            )  # fmt: skip
            batch_rows.append([
                label, f"decode, batch {batch}", f"{union_active(mlp, bx):.1%}",
                f"{cell(part['block speedup'], 2)}x", f"{cell(speed(t, 'dense', 'sparse'), 2)}x",
            ])  # fmt: skip
        pre = torch.randint(1, vocab, (1, PREFILL), generator=gen)
        px = [mlp_inputs(dense, pre, 0).reshape(1, PREFILL, -1)]
        part = ffn_parts(mlp, fmlp, px, reps, steps=4)
        t = interleave({"dense": prefill(dense, pre), "sparse": prefill(fast, pre)},
                       reps=reps, steps=1, warmup=1)  # fmt: skip
        batch_rows.append([
            label, f"prefill, {PREFILL} tokens", f"{union_active(mlp, px):.1%}",
            f"{cell(part['block speedup'], 2)}x", f"{cell(speed(t, 'dense', 'sparse'), 2)}x",
        ])  # fmt: skip
        *shares, sound = bounds_study(dense, probe)
        bound_rows.append([label] + [f"{s:.1%}" for s in shares] + [
            f"{by['kept']:.1%}", "yes" if sound == 1.0 else "**no**",
        ])  # fmt: skip
    # the crossover: FFN block at batch 1, sparse path forced, layer 0 of the model
    sweep_rows: list[list[object]] = []
    lines_cross = ""
    if not args.state_dict:
        ratios, proj_ratios = [], []
        for z in SWEEP:
            dense = copy.deepcopy(base)
            shift_biases(dense, z, calib)
            mlp = dense.transformer.h[0].mlp
            forced = sparse.SparseConv1DMLP(mlp, threshold=0.0)
            xs = [r.view(1, 1, -1) for r in mlp_inputs(dense, probe, 0)[:32]]
            parts = ffn_parts(mlp, forced, xs, reps, steps=8)
            ratios.append(1 / parts["block speedup"][1])
            proj_ratios.append(1 / parts["c_proj speedup"][1])
            sweep_rows.append([
                f"{z:.0%}", cell(parts["block dense"], 1), cell(parts["block sparse"], 1),
                f"{cell(parts['block speedup'], 2)}x", f"{cell(parts['c_proj speedup'], 2)}x",
            ])  # fmt: skip
        lines_cross = (
            f"Crossover (the sparse path at least as fast as dense from there on): the FFN "
            f"block from {crossover(SWEEP, ratios, 1.0):.0%} zeros, c_proj alone from "
            f"{crossover(SWEEP, proj_ratios, 1.0):.0%}."
        )
    out = "\n".join(lines) + "\n\n"
    out += "### 1. Batch 1 decode with the KV cache (ms per token)\n\n" + md_table(
        ["FFN zeros", "dense", "converted", "no FFN", "FFN share", "limit (FFN free)",
         "FFN speedup", "Amdahl (that speedup)", "end to end", "of Amdahl",
         "generate tok/s dense / conv.", "same tokens"], dec_rows)  # fmt: skip
    out += "\n\n### 2. The FFN block alone, batch 1 (microseconds per token)\n\n" + md_table(
        ["FFN zeros", "block dense", "block converted", "block speedup",
         "converted, screen off", "speedup, screen off", "c_fc+ReLU", "c_proj dense",
         "c_proj sparse", "c_proj speedup"], ffn_rows)  # fmt: skip
    out += "\n\n### 3. Batches and prefill (speedup dense / converted)\n\n" + md_table(
        ["FFN zeros", "workload", "units active in the batch (union)", "FFN block",
         "whole step"], batch_rows)  # fmt: skip
    if sweep_rows:
        out += "\n\n### 4. Crossover: the FFN block at batch 1, sparse path forced\n\n"
        out += md_table(["FFN zeros", "dense us", "sparse us", "block speedup",
                         "c_proj speedup"], sweep_rows)  # fmt: skip
        out += "\n\n" + lines_cross
    out += "\n\n### 5. Units of c_fc proven zero without computing them (all layers)\n\n"
    bound_head = ["FFN zeros", "zero (computed)", "LayerNorm bound (static)",
                  "Cauchy-Schwarz (per token)", "int8 screen (per token)",
                  "layer 0: computed exactly after the screen",
                  "proven zeros all zero"]  # fmt: skip
    out += md_table(bound_head, bound_rows)
    out += "\n\n### 6. Weight bytes per token, layer 0 at batch 1 (kB): the memory-bound limit\n\n"
    out += md_table(["FFN zeros", "non-zero units", "left by the screen", "dense",
                     "converted", "dense / converted", "dense / free exact oracle",
                     "dense / (int8 screen + oracle)", "block speedup (table 2)"],
                    byte_rows)  # fmt: skip
    print(out)
    if args.write:
        path = Path(args.write)
        text = path.read_text() if path.exists() else f"{BEGIN}\n{END}\n"
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        path.write_text(f"{head}{BEGIN}\n{out}\n{END}{tail}")


if __name__ == "__main__":
    main()
