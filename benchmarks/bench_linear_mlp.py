"""A GPT-NeoX-size two-Linear MLP (768 -> 3072, ReLU, biases shifted to 95% zeros), batch 1,
one thread: dense against actreg.sparse.SparseLinearMLP with and without the screen (CPU time
per call, 5 interleaved repetitions of 640 calls, medians).

    OMP_NUM_THREADS=1 python benchmarks/bench_linear_mlp.py
"""

import time

import torch
import transformers as T

from actreg import sparse


def per_call_us(module: torch.nn.Module, xs: list[torch.Tensor]) -> float:
    start = time.process_time_ns()
    with torch.no_grad():
        for _ in range(10):
            for v in xs:
                module(v)
    return (time.process_time_ns() - start) / (10 * len(xs)) / 1000


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = T.GPTNeoXConfig(
        hidden_size=768, intermediate_size=3072, hidden_act="relu", num_attention_heads=12
    )
    mlp = T.models.gpt_neox.modeling_gpt_neox.GPTNeoXMLP(cfg).eval()
    with torch.no_grad():
        pre = torch.randn(512, 768) @ mlp.dense_h_to_4h.weight.t()
        mlp.dense_h_to_4h.bias.copy_(-torch.quantile(pre, 0.95, dim=0))
    variants = {
        "dense": mlp,
        "screened": sparse.SparseLinearMLP(mlp, threshold=0.0),
        "screen off": sparse.SparseLinearMLP(mlp, threshold=0.0, screen=False),
    }
    xs = [torch.randn(1, 1, 768) for _ in range(64)]
    with torch.no_grad():
        zeros = (torch.relu(mlp.dense_h_to_4h(torch.cat(xs))) == 0).float().mean().item()
        for v in xs:
            assert torch.allclose(variants["screened"](v), mlp(v), atol=1e-5)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(5):
        for name, module in variants.items():
            times[name].append(per_call_us(module, xs))
    med = {k: sorted(v)[2] for k, v in times.items()}
    print(f"zeros {zeros:.3f}; us per call (speedup against dense):")
    for name, us in med.items():
        print(f"  {name}: {us:.1f} ({med['dense'] / us:.2f}x)")


if __name__ == "__main__":
    main()
