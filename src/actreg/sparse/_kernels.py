"""Kernels and timing behind :mod:`actreg.sparse`: sparse-input matmuls and their calibration.

Two pure-PyTorch kernels compute ``x @ W.T + b`` from ``wt = W.T`` (``in x out``, contiguous):

* :func:`bag_linear` (the one :class:`actreg.sparse.SparseInputLinear` uses): every example
  is a bag of its own non-zero input columns, weighted by their values, and
  ``F.embedding_bag(mode="sum")`` sums the matching rows of ``wt`` without copying them out.
  It reads only ``nnz`` rows per example, so its work does not grow with the union of the
  batch's non-zeros.
* :func:`gather_linear`: copy the rows of ``wt`` for the union of non-zero columns over the
  batch (``index_select``) and multiply (``addmm``). Kept as the reference point the benchmark
  compares against.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from actreg._cpp import build_inline
from actreg._errors import ActregError

_CACHE: dict[tuple[object, ...], dict[int, float]] = {}


_NUMPY_DTYPES = (torch.float32, torch.float64, torch.float16)


def _on_numpy(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in _NUMPY_DTYPES


def nonzero_fraction(x: Tensor, max_samples: int = 4096) -> float:
    """The fraction of non-zero entries of ``x``, counted exactly up to ``max_samples``
    entries and estimated on an odd-strided subsample beyond (a cheap decision, not a metric).

    Example:
        >>> import torch
        >>> nonzero_fraction(torch.tensor([[0.0, 1.0, 0.0, 2.0]]))
        0.5
    """
    flat = x.detach().reshape(-1)
    if flat.numel() > max_samples:
        flat = flat[:: (flat.numel() // max_samples) | 1]
    if flat.numel() == 0:
        return 0.0
    if _use_ext(flat, flat):
        return int(_EXT.count_nonzero(flat)) / flat.numel()
    if _on_numpy(flat):  # numpy counts faster than torch.count_nonzero on CPU
        return int(np.count_nonzero(flat.numpy())) / flat.numel()
    return int(torch.count_nonzero(flat)) / flat.numel()


def bag_linear(x: Tensor, wt: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ wt + bias`` reading only the rows of ``wt`` where ``x`` is non-zero.

    Args:
        x: ``(N, in)`` input.
        wt: ``(in, out)`` contiguous transposed weight.
        bias: ``(out,)`` or None.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
        >>> w = torch.arange(6.0).reshape(2, 3)
        >>> bag_linear(x, w.t().contiguous(), torch.ones(2))
        tensor([[3., 9.],
                [1., 4.]])
    """
    n, k = x.shape
    offsets: Tensor | None = None
    if _on_numpy(x):  # on CPU, numpy finds the non-zeros faster than torch.nonzero
        a = x.detach().numpy().reshape(-1)
        i = np.flatnonzero(a)
        idx, vals = torch.from_numpy(i), torch.from_numpy(a[i])
        if n > 1:
            offsets = torch.from_numpy(np.searchsorted(i, np.arange(0, n * k, k)))
    else:
        flat = x.reshape(-1)
        idx = flat.nonzero().view(-1)
        vals = flat.index_select(0, idx)
        if n > 1:
            counts = (x != 0).sum(1)
            offsets = counts.cumsum(0) - counts
    if idx.numel() == 0:
        out = x.new_zeros(n, wt.shape[1])
    elif offsets is None:
        out = F.embedding_bag(idx.view(1, -1), wt, mode="sum", per_sample_weights=vals.view(1, -1))
    else:
        out = F.embedding_bag(idx.remainder(k), wt, offsets, mode="sum", per_sample_weights=vals)
    return out if bias is None else out.add_(bias)


# The optional C++ kernels, built on request by :func:`load_extension` (about 40 s with gcc,
# then cached by torch); without them everything runs on :func:`bag_linear`.
#
# * ``sparse_linear(x, wt, bias)``: for each row, list the non-zero inputs, then add
#   ``v * wt[j]`` for four of them at a time (one load and store of the output row per four
#   weight rows); the bias initialises the output row. No threads are started for one row or
#   one thread (``at::parallel_for`` costs microseconds, as much as a sparse 1000-wide layer).
# * ``linear_auto(x, w, wt, bias, threshold, relu)``: count the zeros of ``x`` exactly, then the
#   sparse kernel if their fraction is at least ``threshold``, else ``addmm`` (what
#   ``F.linear`` runs, so the fallback gives the dense layer's bits). One call per layer.
# * ``Chain``: an object holding a run of Linear (+ ReLU) layers; ``run(x)`` is ``linear_auto``
#   layer after layer in one call, intermediate outputs reused between calls.
_CPP = r"""#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <type_traits>
#include <unordered_map>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

// The positions of the non-zero entries of x[0..k) (NaN counts as non-zero, -0.0 as zero, as
// with `x != 0`) written to idx (room for k + 16); returns how many. AVX-512 handles 16
// floats per step.
template <typename T>
int64_t nonzeros(const T* x, int64_t k, int32_t* idx) {
  int64_t m = 0, j = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same<T, float>::value) {
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (; j + 16 <= k; j += 16) {
      const __mmask16 nz =
          _mm512_cmp_ps_mask(_mm512_loadu_ps(x + j), _mm512_setzero_ps(), _CMP_NEQ_UQ);
      // compress in a register, then a full store (idx has 16 entries of slack): a
      // compressing store to memory is microcoded and slow on some CPUs (AMD Zen 4)
      const __m512i ids = _mm512_add_epi32(_mm512_set1_epi32(int32_t(j)), lanes);
      _mm512_storeu_si512(idx + m, _mm512_maskz_compress_epi32(nz, ids));
      m += __builtin_popcount(nz);
    }
  }
#endif
  for (; j < k; ++j) { idx[m] = int32_t(j); m += (x[j] != 0); }
  return m;
}

// orow = bias + sum over the m listed inputs of x[j] * wt[j], four weight rows at a time
// (one load and store of the output row per four weight rows), then ReLU if asked.
template <typename T>
void row_kernel(const T* xr, const int32_t* idx, int64_t m, const T* wp, const T* bp,
                T* __restrict__ orow, int64_t o, bool relu) {
  // The m % 4 leftover rows first, together with the bias (one pass writes the output row);
  // then four rows at a time, the last four with the ReLU (no separate passes).
  const int64_t r = m % 4;
  const T* __restrict__ u[3] = {wp, wp, wp};
  T a[3] = {0, 0, 0};
  for (int64_t q = 0; q < r; ++q) { a[q] = xr[idx[q]]; u[q] = wp + int64_t(idx[q]) * o; }
  for (int64_t c = 0; c < o; ++c)
    orow[c] = (bp ? bp[c] : T(0)) + a[0] * u[0][c] + a[1] * u[1][c] + a[2] * u[2][c];
  for (int64_t t = r; t < m; t += 4) {
    const T v0 = xr[idx[t]], v1 = xr[idx[t + 1]], v2 = xr[idx[t + 2]], v3 = xr[idx[t + 3]];
    const T* __restrict__ w0 = wp + int64_t(idx[t]) * o;
    const T* __restrict__ w1 = wp + int64_t(idx[t + 1]) * o;
    const T* __restrict__ w2 = wp + int64_t(idx[t + 2]) * o;
    const T* __restrict__ w3 = wp + int64_t(idx[t + 3]) * o;
    if (t + 8 <= m) {  // start the next four rows' streams early
      for (int q = 4; q < 8; ++q) {
        const char* nx = reinterpret_cast<const char*>(wp + int64_t(idx[t + q]) * o);
        __builtin_prefetch(nx); __builtin_prefetch(nx + 64); __builtin_prefetch(nx + 128);
        __builtin_prefetch(nx + 192);
      }
    }
    if (relu && t + 4 == m) {
      for (int64_t c = 0; c < o; ++c) {
        const T y = orow[c] + v0 * w0[c] + v1 * w1[c] + v2 * w2[c] + v3 * w3[c];
        orow[c] = y > 0 ? y : T(0);
      }
    } else {
      for (int64_t c = 0; c < o; ++c)
        orow[c] += v0 * w0[c] + v1 * w1[c] + v2 * w2[c] + v3 * w3[c];
    }
  }
  if (relu && m == r) { for (int64_t c = 0; c < o; ++c) orow[c] = orow[c] > 0 ? orow[c] : T(0); }
}

// The k + 16 entries that nonzeros() may write, kept per thread between calls.
int32_t* index_buffer(int64_t k) {
  thread_local std::vector<int32_t> idx;
  if (int64_t(idx.size()) < k + 16) idx.resize(k + 16);
  return idx.data();
}

template <typename T>
void rows_kernel(const T* xp, const T* wp, const T* bp, T* op,
                 int64_t n, int64_t k, int64_t o, bool relu) {
  auto body = [&](int64_t r0, int64_t r1) {
    int32_t* idx = index_buffer(k);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t m = nonzeros(xp + r * k, k, idx);
      row_kernel(xp + r * k, idx, m, wp, bp, op + r * o, o, relu);
    }
  };
  if (n == 1 || at::get_num_threads() == 1) body(0, n);
  else at::parallel_for(0, n, 1, body);
}

void check(const at::Tensor& x, const at::Tensor& wt, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && wt.dim() == 2 && x.size(1) == wt.size(0),
              "actreg sparse kernel: input (N, in) and transposed weight (in, out) expected, got ",
              x.sizes(), " and ", wt.sizes());
  TORCH_CHECK(x.device().is_cpu() && wt.device().is_cpu() && x.scalar_type() == wt.scalar_type()
              && x.is_contiguous() && wt.is_contiguous(),
              "actreg sparse kernel: contiguous CPU tensors of one dtype expected");
  TORCH_CHECK(x.size(1) < (int64_t(1) << 31), "actreg sparse kernel: in_features must be < 2^31");
  if (bias.has_value())
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == wt.size(1) && bias->is_contiguous()
                && bias->scalar_type() == x.scalar_type() && bias->device().is_cpu(),
                "actreg sparse kernel: bias of shape (out,) and the input's dtype expected");
}

// An (n, o) output: *buf when it is one (an intermediate of a Chain, reused between calls).
at::Tensor output(const at::Tensor& x, int64_t n, int64_t o, at::Tensor* buf) {
  if (buf == nullptr) return at::empty({n, o}, x.options());
  if (!buf->defined() || buf->size(0) != n || buf->size(1) != o
      || buf->scalar_type() != x.scalar_type())
    *buf = at::empty({n, o}, x.options());
  return *buf;
}

at::Tensor sparse_rows(const at::Tensor& x, const at::Tensor& wt,
                       const c10::optional<at::Tensor>& bias, bool relu,
                       at::Tensor* buf = nullptr) {
  check(x, wt, bias);
  const int64_t n = x.size(0), k = x.size(1), o = wt.size(1);
  at::Tensor out = output(x, n, o, buf);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "actreg_sparse_rows", [&] {
    rows_kernel<scalar_t>(x.data_ptr<scalar_t>(), wt.data_ptr<scalar_t>(),
                          bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr,
                          out.data_ptr<scalar_t>(), n, k, o, relu);
  });
  return out;
}

int64_t count(const at::Tensor& x) {
  int64_t c = 0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "actreg_count", [&] {
    const scalar_t* p = x.data_ptr<scalar_t>();
    for (int64_t i = 0, e = x.numel(); i < e; ++i) c += (p[i] != 0);
  });
  return c;
}

}  // namespace

at::Tensor sparse_linear(at::Tensor x, at::Tensor wt, c10::optional<at::Tensor> bias) {
  return sparse_rows(x, wt, bias, false);
}

at::Tensor linear_auto_into(const at::Tensor& x, const at::Tensor& w, const at::Tensor& wt,
                            const c10::optional<at::Tensor>& bias, double threshold, bool relu,
                            at::Tensor* buf) {
  const int64_t e = x.numel();
  if (!(threshold <= 1.0)) {  // never sparse (a plain Linear): wt may be a placeholder
  } else if (x.dim() == 2 && x.size(0) == 1 && e > 0) {  // one row: list the non-zeros once
    check(x, wt, bias);
    const int64_t k = x.size(1), o = wt.size(1);
    int32_t* idx = index_buffer(k);
    at::Tensor out;
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "actreg_linear_row", [&] {
      const scalar_t* xp = x.data_ptr<scalar_t>();
      const int64_t m = nonzeros(xp, k, idx);
      if (1.0 - double(m) / double(k) >= threshold) {
        out = output(x, 1, o, buf);
        row_kernel(xp, idx, m, wt.data_ptr<scalar_t>(),
                   bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr,
                   out.data_ptr<scalar_t>(), o, relu);
      }
    });
    if (out.defined()) return out;
  } else if (e > 0 && 1.0 - double(count(x)) / double(e) >= threshold) {
    return sparse_rows(x, wt, bias, relu, buf);
  }
  at::Tensor out = bias.has_value() ? at::addmm(*bias, x, w.t()) : at::mm(x, w.t());
  if (relu) out.relu_();
  return out;
}

at::Tensor linear_auto(at::Tensor x, at::Tensor w, at::Tensor wt,
                       c10::optional<at::Tensor> bias, double threshold, bool relu) {
  return linear_auto_into(x, w, wt, bias, threshold, relu, nullptr);
}

int64_t count_nonzero(at::Tensor x) { return count(x); }

// A run of layers held in C++ so that a call passes one tensor: run(x) is linear_auto
// layer after layer with the thresholds set for x's row count, or None when x is not a
// contiguous 2-D CPU tensor of the layers' dtype and width, when a weight or bias changed
// since the object was made (storage or in-place version: the caller rebuilds it), or when
// no thresholds are set for that row count yet (the caller sets them).
struct Chain {
  std::vector<at::Tensor> ws, wts;
  std::vector<c10::optional<at::Tensor>> bs;
  std::vector<bool> relu;
  std::vector<at::Tensor> params;
  std::vector<const void*> ptrs;
  std::vector<int64_t> versions;
  std::unordered_map<int64_t, std::vector<double>> limits;
  std::vector<at::Tensor> bufs;  // intermediate outputs, reused (never handed out)

  Chain(std::vector<at::Tensor> ws_, std::vector<at::Tensor> wts_,
        std::vector<c10::optional<at::Tensor>> bs_, std::vector<bool> relu_)
      : ws(ws_), wts(wts_), bs(bs_), relu(relu_) {
    for (size_t i = 0; i < ws.size(); ++i) {
      params.push_back(ws[i]);
      if (bs[i].has_value()) params.push_back(*bs[i]);
    }
    for (auto& p : params) {
      ptrs.push_back(p.data_ptr());
      versions.push_back(p.is_inference() ? -1 : int64_t(p._version()));
    }
  }
  bool fresh() const {
    for (size_t i = 0; i < params.size(); ++i) {
      if (params[i].data_ptr() != ptrs[i]) return false;
      if (versions[i] >= 0 && int64_t(params[i]._version()) != versions[i]) return false;
    }
    return true;
  }
  void set_limits(int64_t rows, std::vector<double> l) { limits[rows] = l; }
  c10::optional<at::Tensor> run(const at::Tensor& x) {
    if (x.dim() != 2 || !x.device().is_cpu() || !x.is_contiguous()
        || x.scalar_type() != ws[0].scalar_type() || x.size(1) != ws[0].size(1))
      return c10::nullopt;  // the caller reshapes, converts, or lets PyTorch raise
    auto it = limits.find(x.size(0));
    if (it == limits.end() || !fresh()) return c10::nullopt;
    const std::vector<double>& lim = it->second;
    bufs.resize(ws.size());
    at::Tensor h = x;
    for (size_t i = 0; i < ws.size(); ++i)
      h = linear_auto_into(h, ws[i], wts[i], bs[i], lim[i], relu[i],
                           i + 1 < ws.size() ? &bufs[i] : nullptr);
    return h;
  }
};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sparse_linear", &sparse_linear);
  m.def("linear_auto", &linear_auto);
  m.def("count_nonzero", &count_nonzero);
  py::class_<Chain>(m, "Chain")
      .def(py::init<std::vector<at::Tensor>, std::vector<at::Tensor>,
                    std::vector<c10::optional<at::Tensor>>, std::vector<bool>>())
      .def("fresh", &Chain::fresh)
      .def("set_limits", &Chain::set_limits)
      .def("run", &Chain::run);
}
"""
_EXT: Any = None


def load_extension(verbose: bool = False) -> bool:
    """Build (once, cached by ``torch.utils.cpp_extension``) and use the C++ CPU kernels.

    Returns False, leaving the pure-PyTorch kernel in use, when the build fails (no
    compiler or ninja, no headers). Not called on import: it can take a minute. The build
    targets this CPU (``-march=native``); torch caches it under ``TORCH_EXTENSIONS_DIR``
    (default ``~/.cache/torch_extensions``), so a home directory shared by machines with
    different CPUs should set that variable per machine.
    """
    global _EXT
    if _EXT is None:
        _EXT = build_inline(
            "actreg_sparse_cpu", _CPP, "C++ sparse kernel", "actreg.sparse", verbose
        )
    return bool(_EXT)


def _use_ext(x: Tensor, wt: Tensor, bias: Tensor | None = None) -> bool:
    """Whether the C++ kernels are loaded and take these tensors (CPU, float32/64, one dtype,
    contiguous)."""
    return (
        bool(_EXT)
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and x.dtype == wt.dtype
        and x.is_contiguous()
        and wt.is_contiguous()
        and (bias is None or (bias.dtype == x.dtype and bias.is_contiguous()))
    )


def sparse_linear(x: Tensor, wt: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ wt + bias`` skipping zero inputs: the C++ kernel if loaded, else :func:`bag_linear`.

    Example:
        >>> import torch
        >>> sparse_linear(torch.tensor([[0.0, 2.0]]), torch.eye(2), None)
        tensor([[0., 2.]])
    """
    if _use_ext(x, wt, bias):
        return _EXT.sparse_linear(x, wt, bias)
    return bag_linear(x, wt, bias)


def gather_linear(x: Tensor, wt: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ wt + bias`` over the union of non-zero columns of ``x`` (gather, then ``addmm``).

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
        >>> w = torch.arange(6.0).reshape(2, 3)
        >>> gather_linear(x, w.t().contiguous(), torch.ones(2))
        tensor([[3., 9.],
                [1., 4.]])
    """
    nz = (x != 0).any(0).nonzero().view(-1)
    xs = x.index_select(1, nz)
    ws = wt.index_select(0, nz)
    return xs @ ws if bias is None else torch.addmm(bias, xs, ws)


def random_sparse(
    shape: Sequence[int], sparsity: float, *, generator: torch.Generator | None = None
) -> Tensor:
    """Non-negative values with exactly ``round(sparsity * row)`` zeros per row, placed at
    random independently for each row (as in real ReLU activations)."""
    *lead, k = shape
    rows = math.prod(lead)
    x = torch.rand(rows, k, generator=generator) + 0.1
    n_zero = min(k, round(sparsity * k))
    if n_zero:
        order = torch.rand(rows, k, generator=generator).argsort(1)[:, :n_zero]
        x.scatter_(1, order, 0.0)
    return x.reshape(*lead, k)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    repeats: int = 5,
    min_time: float = 2e-3,
    device: torch.device | str = "cpu",
    clock: str = "wall",
) -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeats`` samples each, taken in turn so that
    background load hits every function alike. Each sample runs for at least ``min_time``.

    ``clock="cpu"`` counts this process's CPU time (``time.process_time``): with one torch
    thread on a shared CPU it leaves out the time other processes held the core, so it is
    much steadier than the wall clock; with several threads it sums them (use ``"wall"``).
    """
    dev = torch.device(device)
    if clock not in ("wall", "cpu"):
        raise ActregError(f'clock must be "wall" or "cpu", got {clock!r}')
    now = time.process_time if clock == "cpu" else time.perf_counter
    loops: dict[str, int] = {}
    for name, fn in fns.items():  # warm up and size the loops
        fn()
        _sync(dev)
        t0 = now()
        fn()
        _sync(dev)
        once = max(now() - t0, 1e-7)
        loops[name] = max(1, min(1000, math.ceil(min_time / once)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(dev)
            t0 = now()
            for _ in range(loops[name]):
                fn()
            _sync(dev)
            samples[name].append((now() - t0) / loops[name])
    return samples


def crossover(sparsities: Sequence[float], ratios: Sequence[float], win: float) -> float:
    """The zero fraction from which the sparse kernel wins: ``sparse/dense <= win`` from there
    on, linearly interpolated between grid points. ``inf`` if it never wins.

    Example:
        >>> crossover([0.5, 0.7, 0.9], [1.4, 1.0, 0.4], win=1.0)
        0.7
        >>> crossover([0.5, 0.9], [2.0, 1.5], win=1.0)
        inf
    """
    pts = sorted(zip(sparsities, ratios, strict=True))
    first = len(pts)
    for i in range(len(pts) - 1, -1, -1):
        if pts[i][1] > win:
            break
        first = i
    if first == len(pts):
        return math.inf
    if first == 0:
        return float(pts[0][0])
    (s0, r0), (s1, r1) = pts[first - 1], pts[first]
    return float(round(s0 + (r0 - win) / (r0 - r1) * (s1 - s0), 4))


def _sparse_path(x: Tensor, wt: Tensor, bias: Tensor | None) -> Tensor:
    nonzero_fraction(x)
    return sparse_linear(x, wt, bias)


def measure_thresholds(
    in_features: int,
    out_features: int,
    *,
    batch_sizes: Sequence[int],
    sparsities: Sequence[float],
    dtype: torch.dtype,
    device: torch.device,
    repeats: int,
    win: float,
    clock: str,
) -> dict[int, float]:
    """Time the dense path against the sparse one per batch size and zero fraction, and return
    the crossover zero fraction for each batch size. With the C++ kernels loaded these are
    the two outcomes of the one call a converted layer makes (``addmm`` or the sparse kernel,
    after the zero count); without them ``F.linear`` against :func:`nonzero_fraction` then
    :func:`sparse_linear`."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(out_features, in_features, generator=gen).to(device, dtype)
    bias = torch.randn(out_features, generator=gen).to(device, dtype)
    wt = weight.t().contiguous()
    out: dict[int, float] = {}
    with torch.inference_mode():
        for b in batch_sizes:
            ratios = []
            for s in sparsities:
                x = random_sparse((b, in_features), s, generator=gen).to(device, dtype)
                fns: dict[str, Callable[[], object]]
                if _use_ext(x, wt, bias):  # the one C++ call a converted layer makes, both ways
                    fns = {
                        "dense": functools.partial(
                            _EXT.linear_auto, x, weight, wt, bias, math.inf, False
                        ),
                        "sparse": functools.partial(
                            _EXT.linear_auto, x, weight, wt, bias, 0.0, False
                        ),
                    }
                else:
                    fns = {
                        "dense": functools.partial(F.linear, x, weight, bias),
                        "sparse": functools.partial(_sparse_path, x, wt, bias),
                    }
                t = time_interleaved(fns, repeats=repeats, device=device, clock=clock)
                ratios.append(statistics.median(t["sparse"]) / statistics.median(t["dense"]))
            out[int(b)] = crossover(sparsities, ratios, win)
    return out


def calibrate(
    in_features: int,
    out_features: int,
    *,
    batch_sizes: Sequence[int] = (1, 8, 32),
    sparsities: Sequence[float] = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95),
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    repeats: int = 5,
    win: float = 0.9,
    clock: str = "auto",
    cache: bool = True,
) -> dict[int, float]:
    """Measure, on this machine, the zero fraction from which the sparse path beats dense.

    Times ``F.linear`` against the sparse kernel for a random ``in -> out`` layer at each
    batch size and zero fraction (zeros placed at random per example), and returns
    ``{batch_size: crossover}``, where the sparse kernel takes at most ``win`` times the
    dense time from the crossover on (``inf``: it never does). Results are cached per
    shape, dtype, device and ``torch.get_num_threads()``; takes about a second per shape.
    ``clock="auto"`` times CPU time with one CPU thread (steady on a shared machine) and wall
    time otherwise (see :func:`time_interleaved`).

    Example:
        >>> calibrate(1024, 1024)  # doctest: +SKIP
        {1: 0.43, 8: 0.71, 32: 0.83}
    """
    dev = torch.device(device)
    threads = torch.get_num_threads()
    if clock == "auto":
        clock = "cpu" if threads == 1 and dev.type == "cpu" else "wall"
    key = (in_features, out_features, dtype, dev, threads, *batch_sizes, *sparsities)
    key += (repeats, win, clock, bool(_EXT))
    if cache and key in _CACHE:
        return dict(_CACHE[key])
    if not batch_sizes or not sparsities:
        raise ActregError("calibrate needs at least one batch size and one sparsity")
    result = measure_thresholds(
        in_features,
        out_features,
        batch_sizes=batch_sizes,
        sparsities=sparsities,
        dtype=dtype,
        device=dev,
        repeats=repeats,
        win=win,
        clock=clock,
    )
    _CACHE[key] = result
    return dict(result)
