"""A GPT-NeoX-size two-Linear MLP (768 -> 3072, ReLU, biases shifted to 95% zeros), batch 1,
one thread: dense against actreg.sparse.SparseLinearMLP with and without the screen (CPU time
per call, 5 interleaved repetitions of 640 calls, medians).

    OMP_NUM_THREADS=1 python benchmarks/bench_linear_mlp.py
"""

import time

import torch
import transformers as T

from actreg import sparse

torch.set_num_threads(1)
torch.manual_seed(0)
cfg = T.GPTNeoXConfig(
    hidden_size=768, intermediate_size=3072, hidden_act="relu", num_attention_heads=12
)
mlp = T.models.gpt_neox.modeling_gpt_neox.GPTNeoXMLP(cfg).eval()
x = torch.randn(512, 768)
with torch.no_grad():
    pre = x @ mlp.dense_h_to_4h.weight.t()
    mlp.dense_h_to_4h.bias.copy_(-torch.quantile(pre, 0.95, dim=0))
on = sparse.SparseLinearMLP(mlp, threshold=0.0)
off = sparse.SparseLinearMLP(mlp, threshold=0.0, screen=False)
xs = [torch.randn(1, 1, 768) for _ in range(64)]


def t(m):
    s = time.process_time_ns()
    with torch.no_grad():
        for _ in range(10):
            for v in xs:
                m(v)
    return (time.process_time_ns() - s) / 640 / 1000


with torch.no_grad():
    z = (torch.relu(mlp.dense_h_to_4h(torch.cat(xs))) == 0).float().mean().item()
    assert all(torch.allclose(on(v), mlp(v), atol=1e-5) for v in xs)
r = {k: [] for k in ("dense", "screen", "noscreen")}
for _ in range(5):
    r["dense"].append(t(mlp))
    r["screen"].append(t(on))
    r["noscreen"].append(t(off))
med = {k: sorted(v)[2] for k, v in r.items()}
print(
    f"zeros {z:.3f}; us per call dense {med['dense']:.1f}, screened {med['screen']:.1f} ({med['dense'] / med['screen']:.2f}x), screen off {med['noscreen']:.1f} ({med['dense'] / med['noscreen']:.2f}x)"
)
