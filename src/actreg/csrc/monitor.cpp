// actreg's C++ Monitor kernel (actreg.Monitor): all of a batch's statistics in one pass over
// the activations. Built on first use by actreg._cpp (torch.utils.cpp_extension.load,
// -O3 -march=native, cached per machine); see actreg/_monitor_kernels.py for how it is
// chosen, what it computes and its precision. Without it the Monitor runs on
// actreg._sweep.batch_stats.
#include <torch/extension.h>
#include <cmath>
#include <limits>

namespace {

// One unit of one outer index, over the contiguous inner axis: l1 += |v|, sq += v * v,
// *c += active values, mx = max (NaN is dropped here and restored from l1 by the caller).
// `!(|v| <= e)` is `|v| > eps or NaN`, `v != 0` when e == 0 (as metrics.active_counts).
template <typename T, typename C>
void unit1(const T* __restrict__ p, int64_t n, T e, T* __restrict__ l1, T* __restrict__ sq,
           T* __restrict__ mx, C* c) {
  C c0 = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T v = p[i], b = std::abs(v);
    l1[i] += b;
    sq[i] += v * v;
    c0 += !(b <= e);
    mx[i] = v > mx[i] ? v : mx[i];
  }
  *c += c0;
}

// The unit axis is not last: per outer index, rows of `inner` sums (vectors o * inner + i).
template <typename T, typename C>
T strided(const T* x, int64_t outer, int64_t units, int64_t inner, T e, T* l1, T* sq,
          C* counts) {
  std::vector<T> mxrow(inner, -std::numeric_limits<T>::infinity());
  T* mx = mxrow.data();
  for (int64_t o = 0; o < outer; ++o) {
    T* a1 = l1 + o * inner;
    T* a2 = sq + o * inner;
    for (int64_t i = 0; i < inner; ++i) { a1[i] = T(0); a2[i] = T(0); }
    const T* base = x + o * units * inner;
    // Unit after unit: one sequential stream through memory (walking 2 or 4 units side by
    // side needs fewer passes over the rows, but was slower on data out of cache in a
    // micro-benchmark).
    for (int64_t u = 0; u < units; ++u) unit1(base + u * inner, inner, e, a1, a2, mx, counts + u);
  }
  T top = -std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < inner; ++i) top = mx[i] > top ? mx[i] : top;
  return top;
}

// The unit axis is last (inner == 1): each row of `units` values is one vector, reduced in
// 16 independent lanes; the counts are added elementwise.
template <typename T, typename C>
T rows(const T* x, int64_t outer, int64_t units, T e, T* l1, T* sq, C* __restrict__ counts) {
  constexpr int L = 16;
  T m[L];
  for (int k = 0; k < L; ++k) m[k] = -std::numeric_limits<T>::infinity();
  T top = -std::numeric_limits<T>::infinity();
  for (int64_t o = 0; o < outer; ++o) {
    const T* __restrict__ p = x + o * units;
    T s1[L], s2[L];
    for (int k = 0; k < L; ++k) { s1[k] = T(0); s2[k] = T(0); }
    int64_t j = 0;
    for (; j + L <= units; j += L) {
      for (int k = 0; k < L; ++k) {
        const T v = p[j + k], b = std::abs(v);
        s1[k] += b;
        s2[k] += v * v;
        counts[j + k] += !(b <= e);
        m[k] = v > m[k] ? v : m[k];
      }
    }
    T t1 = T(0), t2 = T(0);
    for (; j < units; ++j) {
      const T v = p[j], b = std::abs(v);
      t1 += b;
      t2 += v * v;
      counts[j] += !(b <= e);
      top = v > top ? v : top;
    }
    for (int k = 0; k < L; ++k) { t1 += s1[k]; t2 += s2[k]; }
    l1[o] = t1;
    sq[o] = t2;
  }
  for (int k = 0; k < L; ++k) top = m[k] > top ? m[k] : top;
  return top;
}

}  // namespace

// norms (2, vectors) [into `out`, a buffer of x's dtype with >= 2 * vectors elements, when
// given], per-unit active counts (int32, int64 from 2^31 vectors), max (0-dim).
std::vector<at::Tensor> batch_stats(at::Tensor x, int64_t dim, double eps,
                                    c10::optional<at::Tensor> out) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous()
              && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
              "actreg monitor kernel: a contiguous CPU float32/float64 tensor expected");
  TORCH_CHECK(x.dim() >= 1 && dim >= 0 && dim < x.dim(),
              "actreg monitor kernel: dim out of range");
  TORCH_CHECK(x.numel() > 0, "actreg monitor kernel: empty tensor");
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= x.size(d);
  for (int64_t d = dim + 1; d < x.dim(); ++d) inner *= x.size(d);
  const int64_t units = x.size(dim), vectors = outer * inner;
  at::Tensor norms;
  if (out.has_value()) {
    TORCH_CHECK(out->device().is_cpu() && out->is_contiguous() && out->dim() == 1
                && out->scalar_type() == x.scalar_type() && out->numel() >= 2 * vectors,
                "actreg monitor kernel: out buffer too small or of another dtype");
    norms = out->narrow(0, 0, 2 * vectors).view({2, vectors});
  } else {
    norms = at::empty({2, vectors}, x.options());
  }
  const bool wide = vectors >= (int64_t(1) << 31);
  at::Tensor counts = at::zeros({units}, x.options().dtype(wide ? at::kLong : at::kInt));
  at::Tensor top = at::empty({}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "actreg_batch_stats", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* l1 = norms.data_ptr<scalar_t>();
    scalar_t* sq = l1 + vectors;
    const scalar_t e = static_cast<scalar_t>(eps);  // rounded to x's dtype, as torch does
    scalar_t t;
    if (wide) {
      int64_t* c = counts.data_ptr<int64_t>();
      t = inner == 1 ? rows(xp, outer, units, e, l1, sq, c)
                     : strided(xp, outer, units, inner, e, l1, sq, c);
    } else {
      int32_t* c = counts.data_ptr<int32_t>();
      t = inner == 1 ? rows(xp, outer, units, e, l1, sq, c)
                     : strided(xp, outer, units, inner, e, l1, sq, c);
    }
    for (int64_t j = 0; j < vectors; ++j) {  // a NaN in x makes its vector's l1 NaN
      if (std::isnan(l1[j])) { t = std::numeric_limits<scalar_t>::quiet_NaN(); break; }
    }
    *top.data_ptr<scalar_t>() = t;
  });
  return {norms, counts, top};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("batch_stats", &batch_stats, py::arg("x"), py::arg("dim"), py::arg("eps"),
        py::arg("out") = py::none());
}
