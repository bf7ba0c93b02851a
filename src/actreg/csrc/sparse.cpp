// actreg's C++ sparse-input kernels (actreg.sparse), built on first use by actreg._cpp
// (torch.utils.cpp_extension.load, -O3 -march=native, cached per machine); without them
// actreg.sparse runs on its pure-PyTorch kernels.
//
// * sparse_linear(x, wt, bias): for each row, list the non-zero inputs, then add
//   v * wt[j] for four of them at a time (one load and store of the output row per four
//   weight rows); the bias initialises the output row. No threads are started for one row or
//   one thread (at::parallel_for costs microseconds, as much as a sparse 1000-wide layer).
// * linear_auto(x, w, wt, bias, threshold, relu): count the zeros of x exactly, then the
//   sparse kernel if their fraction is at least threshold, else addmm (what F.linear runs,
//   so the fallback gives the dense layer's bits). One call per layer.
// * Chain: an object holding a run of Linear (+ ReLU) layers; run(x) is linear_auto
//   layer after layer in one call, intermediate outputs reused between calls.
// * gated_rows(x, g, wu, bu, wdt, bd): the rest of a gated FFN (Llama's MLP) once its gate
//   activations g are known: for each row, only the units with g != 0 get their up_proj
//   dot product and their down_proj row (of the transposed weight wdt).
#include <torch/extension.h>
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

// a . b over n entries, in 16 independent partial sums (vectorized without -ffast-math).
template <typename T>
T dot(const T* __restrict__ a, const T* __restrict__ b, int64_t n) {
  T acc[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; ++l) acc[l] += a[i + l] * b[i + l];
  T s = 0;
  for (int l = 0; l < 16; ++l) s += acc[l];
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// The values handed to row_kernel for a gated row, kept per thread between calls.
template <typename T>
T* value_buffer(int64_t k) {
  thread_local std::vector<T> v;
  if (int64_t(v.size()) < k) v.resize(k);
  return v.data();
}

template <typename T>
void gated_kernel(const T* xp, const T* gp, const T* wu, const T* bu, const T* wdt, const T* bd,
                  T* op, int64_t n, int64_t d, int64_t k, int64_t o) {
  auto body = [&](int64_t r0, int64_t r1) {
    int32_t* idx = index_buffer(k);
    T* a = value_buffer<T>(k);
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = xp + r * d;
      const T* gr = gp + r * k;
      const int64_t m = nonzeros(gr, k, idx);
      for (int64_t q = 0; q < m; ++q) {
        const int64_t j = idx[q];
        a[j] = gr[j] * (dot(xr, wu + j * d, d) + (bu ? bu[j] : T(0)));
      }
      row_kernel(a, idx, m, wdt, bd, op + r * o, o, false);
    }
  };
  if (n == 1 || at::get_num_threads() == 1) body(0, n);
  else at::parallel_for(0, n, 1, body);
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

// (g * (x @ wu.T + bu)) @ wdt + bd over each row's units with g != 0. x (n, d), g (n, k),
// wu (k, d) (up_proj.weight), wdt (k, o) (down_proj.weight.T), all contiguous, one dtype.
at::Tensor gated_rows(at::Tensor x, at::Tensor g, at::Tensor wu, c10::optional<at::Tensor> bu,
                      at::Tensor wdt, c10::optional<at::Tensor> bd) {
  TORCH_CHECK(x.dim() == 2 && g.dim() == 2 && wu.dim() == 2 && wdt.dim() == 2
              && g.size(0) == x.size(0) && wu.size(0) == g.size(1) && wu.size(1) == x.size(1)
              && wdt.size(0) == g.size(1),
              "actreg gated kernel: x (n, d), g (n, k), wu (k, d), wdt (k, o) expected, got ",
              x.sizes(), g.sizes(), wu.sizes(), wdt.sizes());
  for (const at::Tensor* t : {&x, &g, &wu, &wdt})
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == x.scalar_type(),
                "actreg gated kernel: contiguous CPU tensors of one dtype expected");
  TORCH_CHECK(g.size(1) < (int64_t(1) << 31), "actreg gated kernel: width must be < 2^31");
  if (bu.has_value())
    TORCH_CHECK(bu->dim() == 1 && bu->size(0) == g.size(1) && bu->is_contiguous()
                && bu->scalar_type() == x.scalar_type() && bu->device().is_cpu(),
                "actreg gated kernel: up bias of shape (k,) and the input's dtype expected");
  check(g, wdt, bd);
  const int64_t n = x.size(0), d = x.size(1), k = g.size(1), o = wdt.size(1);
  at::Tensor out = at::empty({n, o}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "actreg_gated_rows", [&] {
    gated_kernel<scalar_t>(x.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(),
                           wu.data_ptr<scalar_t>(),
                           bu.has_value() ? bu->data_ptr<scalar_t>() : nullptr,
                           wdt.data_ptr<scalar_t>(),
                           bd.has_value() ? bd->data_ptr<scalar_t>() : nullptr,
                           out.data_ptr<scalar_t>(), n, d, k, o);
  });
  return out;
}

// A run of layers held in C++ so that a call passes one tensor: run(x) is linear_auto
// layer after layer with the thresholds set for x's row count, or None when x is not a
// contiguous 2-D CPU tensor of the layers' dtype and width, when the object is stale (the
// caller rebuilds it: see fresh), or when no thresholds are set for that row count yet (the
// caller sets them; clear_limits forgets them all when a layer's threshold is set).
struct Chain {
  std::vector<at::Tensor> ws, wts;
  std::vector<c10::optional<at::Tensor>> bs;
  std::vector<bool> relu;
  std::vector<at::Tensor> params;
  std::vector<const void*> ptrs;
  std::vector<int64_t> versions;
  std::vector<py::dict> owners;  // each layer's `_parameters`
  std::vector<py::object> held;  // the weight and bias objects registered there when made
  std::unordered_map<int64_t, std::vector<double>> limits;
  std::vector<at::Tensor> bufs;  // intermediate outputs, reused (never handed out)

  Chain(std::vector<at::Tensor> ws_, std::vector<at::Tensor> wts_,
        std::vector<c10::optional<at::Tensor>> bs_, std::vector<bool> relu_,
        std::vector<py::dict> owners_)
      : ws(ws_), wts(wts_), bs(bs_), relu(relu_), owners(owners_) {
    TORCH_CHECK(ws.size() == wts.size() && ws.size() == bs.size() && ws.size() == relu.size()
                && ws.size() == owners.size() && !ws.empty(),
                "actreg sparse Chain: one weight, transposed weight, bias, relu flag and "
                "parameter dict per layer expected");
    for (size_t i = 0; i < ws.size(); ++i) {
      params.push_back(ws[i]);
      if (bs[i].has_value()) params.push_back(*bs[i]);
      for (const char* key : {"weight", "bias"}) {
        PyObject* p = PyDict_GetItemString(owners[i].ptr(), key);  // borrowed
        held.push_back(py::reinterpret_borrow<py::object>(p ? p : Py_None));
      }
    }
    for (auto& p : params) {
      ptrs.push_back(p.data_ptr());
      versions.push_back(p.is_inference() ? -1 : int64_t(p._version()));
    }
  }
  // Whether every layer still has the parameter objects it had when this was made (none
  // replaced or deleted) and their data is unchanged (storage, or in-place version).
  bool fresh() const {
    for (size_t i = 0; i < owners.size(); ++i) {
      for (size_t j = 0; j < 2; ++j) {
        PyObject* p = PyDict_GetItemString(owners[i].ptr(), j ? "bias" : "weight");
        if ((p ? p : Py_None) != held[2 * i + j].ptr()) return false;
      }
    }
    for (size_t i = 0; i < params.size(); ++i) {
      if (params[i].data_ptr() != ptrs[i]) return false;
      if (versions[i] >= 0 && int64_t(params[i]._version()) != versions[i]) return false;
    }
    return true;
  }
  void set_limits(int64_t rows, std::vector<double> l) { limits[rows] = l; }
  void clear_limits() { limits.clear(); }
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
  m.def("gated_rows", &gated_rows);
  py::class_<Chain>(m, "Chain")
      .def(py::init<std::vector<at::Tensor>, std::vector<at::Tensor>,
                    std::vector<c10::optional<at::Tensor>>, std::vector<bool>,
                    std::vector<py::dict>>())
      .def("fresh", &Chain::fresh)
      .def("set_limits", &Chain::set_limits)
      .def("clear_limits", &Chain::clear_limits)
      .def("run", &Chain::run);
}
