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
// * screened_mlp(x, qpack, unit, wt, bfc, wproj, bproj, threshold): a GPT-2 ReLU MLP whose
//   c_fc is screened by an int8 x int16 product with a rigorous error bound (see "The
//   screen" below and actreg/sparse/_screen.py); only the units the bound cannot prove zero
//   are computed exactly, then c_proj reads the rows of the non-zero ones. screened_gated:
//   the same for a gated FFN's ReLU gate, then gated_rows' work for the non-zero gates.
//   screen_mask: the screen alone (which units it leaves), for tests and benchmarks.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <unordered_map>
#include <vector>
#if defined(__AVX512F__) || defined(__AVX2__)
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

// ---------------------------------------------------------------------------- The screen
//
// For one row x (d floats) and the units j of c_fc (weights w_j, bias b_j), prove
// x . w_j + b_j <= 0 without the float product. At conversion (_screen.py, in double):
// s_j = max_k |w_jk| / 127, q_jk = round(w_jk / s_j) in [-127, 127] (int8), r_j = w_j - s_j q_j,
// and per unit s_j, s_j |q_j|, |r_j|, |w_j| (|.|: Euclidean norm). Per row: t = max|x_k| / P,
// p_k = round(x_k / t) in [-P, P] (int16, P = 32767), e = x - t p. Then exactly
//   x . w_j = s_j (t p + e) . q_j + x . r_j = t s_j (p . q_j) + s_j (e . q_j) + x . r_j
// and by Cauchy-Schwarz |s_j e . q_j| <= |e| s_j |q_j|, |x . r_j| <= |x| |r_j|. The integer
// I_j = p . q_j is exact: int32 partial sums over chunks of 512 inputs (|sum| <= 512 * 127 *
// 32767 = 2,130,640,384 < 2^31 - 1, whatever d), each added into a double (exact below 2^53).
// The dense layer computes fl(x . w_j + b_j) in float32 in some order; for any order
// |fl(.) - (x . w_j + b_j)| <= g (sum_k |x_k w_jk| + |b_j|) <= g (|x| |w_j| + |b_j|), with
// g = n u / (1 - n u), n = d + 1, u = 2^-24 (Higham, Accuracy and Stability, 3.1). So
//   U_j = t s_j I_j + b_j + |e| s_j |q_j| + |x| (|r_j| + g |w_j|) + g |b_j|
// bounds the dense float32 pre-activation from above, and U_j <= 0 proves the unit's ReLU
// output is 0 in the dense computation too. U_j is evaluated in double: every quantity above
// carries a relative error below (d + 16) 2^-53 < 2^-30 for d < 2^22, so adding 2^-30 times
// the sum of the terms' magnitudes makes the computed bound an upper bound (d >= 2^22 is not
// screened: _screen.py). A row with a NaN or infinity is not screened (every unit computed).
// The screen is a candidate test "!(U <= 0)": a NaN bound keeps the unit.

constexpr int32_t kXMax = 32767;        // P: x quantized to int16
constexpr int64_t kChunkPairs = 256;    // 512 inputs per int32 partial sum (see above)
constexpr double kRel = 1.0 / 1073741824.0;  // 2^-30

// x -> int16 pairs in pp (dp / 2 of them, zero padded), t, |e|, |x|; false if x is not finite.
bool quantize_row(const float* x, int64_t d, int64_t dp, int16_t* p16, double& t, double& e2,
                  double& x2) {
  float m = 0.0f;
  double sx = 0.0;
  for (int64_t k = 0; k < d; ++k) {
    m = std::max(m, std::fabs(x[k]));
    sx += double(x[k]) * double(x[k]);
  }
  if (!std::isfinite(sx)) return false;  // NaN or infinity somewhere
  std::fill(p16, p16 + dp, int16_t(0));
  t = 0.0; e2 = 0.0; x2 = std::sqrt(sx);
  if (m == 0.0f) return true;
  t = double(m) / kXMax;
  const double inv = kXMax / double(m);
  double se = 0.0;
  for (int64_t k = 0; k < d; ++k) {
    double v = std::nearbyint(double(x[k]) * inv);
    v = std::min(double(kXMax), std::max(-double(kXMax), v));
    p16[k] = int16_t(v);
    const double e = double(x[k]) - t * v;  // any integer p works: e is what is bounded
    se += e * e;
  }
  e2 = std::sqrt(se);
  return true;
}

// I_u = sum_k q[u][k] p_k for the 32 units of one block of qpack (layout: for each pair of
// inputs i, 64 int8 = 32 units x 2 inputs), into out[0..32) as exact doubles. One broadcast
// of the input pair feeds four vpmaddwd (8 units each).
void block_dots(const int8_t* qb, const int32_t* pp, int64_t npairs, double* out) {
#if defined(__AVX2__)
  __m256d acc[8];
  for (auto& v : acc) v = _mm256_setzero_pd();
  for (int64_t c0 = 0; c0 < npairs; c0 += kChunkPairs) {
    const int64_t c1 = std::min(npairs, c0 + kChunkPairs);
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = c0; i < c1; ++i) {
      const __m128i* w = reinterpret_cast<const __m128i*>(qb + i * 64);
      const __m256i xv = _mm256_set1_epi32(pp[i]);
      a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128(w)), xv));
      a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128(w + 1)), xv));
      a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128(w + 2)), xv));
      a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128(w + 3)), xv));
    }
    const __m256i parts[4] = {a0, a1, a2, a3};  // each below 2^31 in magnitude (see above)
    for (int q = 0; q < 4; ++q) {
      acc[2 * q] = _mm256_add_pd(acc[2 * q], _mm256_cvtepi32_pd(_mm256_castsi256_si128(parts[q])));
      acc[2 * q + 1] =
          _mm256_add_pd(acc[2 * q + 1], _mm256_cvtepi32_pd(_mm256_extracti128_si256(parts[q], 1)));
    }
  }
  for (int q = 0; q < 8; ++q) _mm256_storeu_pd(out + 4 * q, acc[q]);
#else  // portable: the same integers, summed in int64 (exact: |I| < 2^53 for d < 2^22)
  const int16_t* p = reinterpret_cast<const int16_t*>(pp);
  for (int u = 0; u < 32; ++u) {
    int64_t s = 0;
    for (int64_t i = 0; i < npairs; ++i)
      s += int64_t(qb[i * 64 + 2 * u]) * p[2 * i] + int64_t(qb[i * 64 + 2 * u + 1]) * p[2 * i + 1];
    out[u] = double(s);
  }
#endif
}

// a . b in float32 with four 8-wide FMA accumulators (the exact pass over the candidates).
inline float fdot(const float* a, const float* b, int64_t n) {
#if defined(__AVX2__) && defined(__FMA__)
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
  }
  for (; i + 8 <= n; i += 8)
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  const __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
  float r = _mm_cvtss_f32(h);
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
#else
  return dot(a, b, n);
#endif
}

struct ScreenArgs {
  const int8_t* qpack;  // (kp / 32, dp / 2, 32, 2)
  const double* unit;   // (4, kp): s_j, s_j |q_j|, |r_j|, |w_j|
  const float* bfc;     // (k,)
  int64_t d, dp, k, kp;
};

// The candidates of one row (units not proven zero) into idx; returns how many.
int64_t screen_row(const ScreenArgs& a, const float* x, int32_t* idx) {
  const int64_t d = a.d, dp = a.dp, k = a.k, kp = a.kp, npairs = dp / 2;
  thread_local std::vector<int16_t> p16;
  thread_local std::vector<double> ints;
  if (int64_t(p16.size()) < dp) p16.resize(dp);
  if (int64_t(ints.size()) < kp) ints.resize(kp);
  double t, e2, x2;
  if (!quantize_row(x, d, dp, p16.data(), t, e2, x2)) {
    for (int64_t j = 0; j < k; ++j) idx[j] = int32_t(j);
    return k;
  }
  thread_local std::vector<int32_t> pp;
  if (int64_t(pp.size()) < npairs) pp.resize(npairs);
  std::memcpy(pp.data(), p16.data(), sizeof(int16_t) * dp);
  double* I = ints.data();
  for (int64_t b = 0; b < kp / 32; ++b)
    block_dots(a.qpack + b * dp * 32, pp.data(), npairs, I + b * 32);
  const double n1 = double(d + 1), u = 1.0 / 16777216.0;
  const double g = n1 * u / (1.0 - n1 * u);
  const double *s = a.unit, *sq = a.unit + kp, *r2 = a.unit + 2 * kp, *w2 = a.unit + 3 * kp;
  int64_t m = 0, j = 0;
#if defined(__AVX2__)
  const __m256d vt = _mm256_set1_pd(t), ve = _mm256_set1_pd(e2), vx = _mm256_set1_pd(x2),
                vg = _mm256_set1_pd(g), vrel = _mm256_set1_pd(kRel), zero = _mm256_setzero_pd();
  const __m256d sign = _mm256_set1_pd(-0.0);
  for (; j + 4 <= k; j += 4) {
    const __m256d b = _mm256_cvtps_pd(_mm_loadu_ps(a.bfc + j));
    const __m256d ab = _mm256_andnot_pd(sign, b);
    const __m256d main = _mm256_mul_pd(_mm256_mul_pd(vt, _mm256_loadu_pd(s + j)),
                                       _mm256_loadu_pd(I + j));
    const __m256d eq = _mm256_mul_pd(ve, _mm256_loadu_pd(sq + j));
    const __m256d r = _mm256_loadu_pd(r2 + j), w = _mm256_loadu_pd(w2 + j);
    __m256d U = _mm256_add_pd(main, b);
    U = _mm256_add_pd(U, eq);
    U = _mm256_add_pd(U, _mm256_mul_pd(vx, _mm256_add_pd(r, _mm256_mul_pd(vg, w))));
    U = _mm256_add_pd(U, _mm256_mul_pd(vg, ab));
    __m256d mag = _mm256_add_pd(_mm256_andnot_pd(sign, main), ab);
    mag = _mm256_add_pd(mag, eq);
    mag = _mm256_add_pd(mag, _mm256_mul_pd(vx, _mm256_add_pd(r, w)));
    U = _mm256_add_pd(U, _mm256_mul_pd(vrel, mag));
    int bits = _mm256_movemask_pd(_mm256_cmp_pd(U, zero, _CMP_NLE_UQ));  // !(U <= 0)
    while (bits) {
      idx[m++] = int32_t(j + __builtin_ctz(bits));
      bits &= bits - 1;
    }
  }
#endif
  for (; j < k; ++j) {
    const double b = a.bfc[j];
    const double main = t * s[j] * I[j];
    const double eq = e2 * sq[j];
    const double U = main + b + eq + x2 * (r2[j] + g * w2[j]) + g * std::fabs(b)
                     + kRel * (std::fabs(main) + std::fabs(b) + eq + x2 * (r2[j] + w2[j]));
    idx[m] = int32_t(j);
    m += !(U <= 0.0);
  }
  return m;
}

ScreenArgs screen_args(const at::Tensor& x, const at::Tensor& qpack, const at::Tensor& unit,
                       const at::Tensor& bfc) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous()
              && x.device().is_cpu(), "actreg screen: contiguous float32 CPU input (n, d) expected");
  TORCH_CHECK(qpack.dim() == 4 && qpack.scalar_type() == at::kChar && qpack.is_contiguous()
              && qpack.size(2) == 32 && qpack.size(3) == 2,
              "actreg screen: qpack (k/32, d/2, 32, 2) int8 expected, got ", qpack.sizes());
  const int64_t d = x.size(1), kp = qpack.size(0) * 32, dp = qpack.size(1) * 2, k = bfc.size(0);
  TORCH_CHECK(dp == d + (d % 2) && kp >= k && kp < k + 32 && d < (int64_t(1) << 22),
              "actreg screen: qpack of shape ", qpack.sizes(), " does not fit d = ", d,
              ", k = ", k);
  TORCH_CHECK(unit.dim() == 2 && unit.size(0) == 4 && unit.size(1) == kp
              && unit.scalar_type() == at::kDouble && unit.is_contiguous(),
              "actreg screen: unit statistics (4, kp) float64 expected");
  TORCH_CHECK(bfc.dim() == 1 && bfc.scalar_type() == at::kFloat && bfc.is_contiguous(),
              "actreg screen: c_fc bias (k,) float32 expected");
  return ScreenArgs{qpack.data_ptr<int8_t>(), unit.data_ptr<double>(), bfc.data_ptr<float>(),
                    d, dp, k, kp};
}

}  // namespace

// The screened blocks' last layer for one row: the m non-zero activations h[idx[0..m)] of
// k units times w ((k, o), the row layout), plus b, into orow (o floats). The sparse row
// kernel where the row's zero fraction reaches threshold, else the dense product of the
// full activation row (the unscreened path's dense formula).
static void project_row(const float* h, const int32_t* idx, int64_t m, const at::Tensor& w,
                        const c10::optional<at::Tensor>& b, double threshold, float* orow) {
  const int64_t k = w.size(0), o = w.size(1);
  if (1.0 - double(m) / double(k) >= threshold) {
    row_kernel(h, idx, m, w.data_ptr<float>(), b.has_value() ? b->data_ptr<float>() : nullptr,
               orow, o, false);
    return;
  }
  at::Tensor hr = at::zeros({1, k}, w.options());
  float* hp = hr.data_ptr<float>();
  for (int64_t q = 0; q < m; ++q) hp[idx[q]] = h[idx[q]];
  at::Tensor y = b.has_value() ? at::addmm(*b, hr, w) : at::mm(hr, w);
  std::memcpy(orow, y.data_ptr<float>(), sizeof(float) * o);
}

// A gated MLP (Llama's) whose gate (gate_proj with ReLU) is screened: x (..., d); wg the
// gate's (k, d) weight (the screen's exact pass reads its rows), bg its bias or None; wu
// (k, d), bu; wdt = down_proj.weight.T (k, o), bd. Each row: the screen, the candidates'
// gates exactly, then for the non-zero ones g_j (x . wu_j + bu_j) and down_proj's row j.
// None where the tensors do not fit (see screened_mlp).
c10::optional<at::Tensor> screened_gated(at::Tensor x_in, at::Tensor qpack, at::Tensor unit,
                                         at::Tensor wg, at::Tensor bg, at::Tensor wu,
                                         c10::optional<at::Tensor> bu, at::Tensor wdt,
                                         c10::optional<at::Tensor> bd, double threshold,
                                         int64_t max_rows) {
  const auto fits = [](const at::Tensor& t, int64_t dim) {
    return t.dim() == dim && t.scalar_type() == at::kFloat && t.is_contiguous()
           && t.device().is_cpu();
  };
  if (x_in.dim() < 1 || !fits(x_in, x_in.dim()) || !fits(wg, 2) || !fits(bg, 1) || !fits(wu, 2)
      || !fits(wdt, 2) || x_in.size(-1) != wg.size(1) || wg.size(1) == 0
      || bg.size(0) != wg.size(0) || wu.sizes() != wg.sizes() || wdt.size(0) != wg.size(0)
      || (bu.has_value() && (!fits(*bu, 1) || bu->size(0) != wg.size(0)))
      || (bd.has_value() && (!fits(*bd, 1) || bd->size(0) != wdt.size(1))))
    return c10::nullopt;
  const int64_t rows = x_in.numel() / wg.size(1);
  if (rows < 1 || rows > max_rows) return c10::nullopt;
  const at::Tensor x = x_in.view({rows, wg.size(1)});
  const ScreenArgs a = screen_args(x, qpack, unit, bg);
  const int64_t n = rows, d = a.d, k = a.k, o = wdt.size(1);
  std::vector<int64_t> shape(x_in.sizes().begin(), x_in.sizes().end());
  shape.back() = o;
  at::Tensor out = at::empty(shape, x.options());
  const float *xp = x.data_ptr<float>(), *wgp = wg.data_ptr<float>(), *wup = wu.data_ptr<float>();
  const float* bup = bu.has_value() ? bu->data_ptr<float>() : nullptr;
  auto body = [&](int64_t r0, int64_t r1) {
    thread_local std::vector<int32_t> cand;
    if (int64_t(cand.size()) < k + 16) cand.resize(k + 16);
    int32_t* idx = index_buffer(k);
    float* h = value_buffer<float>(k);
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * d;
      const int64_t c = screen_row(a, xr, cand.data());
      int64_t m = 0;
      for (int64_t q = 0; q < c; ++q) {
        const int64_t j = cand[q];
        const float g = a.bfc[j] + fdot(xr, wgp + j * d, d);
        if (g <= 0.0f) continue;  // ReLU: zero (a NaN gate goes on, as in torch)
        h[j] = g * (fdot(xr, wup + j * d, d) + (bup ? bup[j] : 0.0f));
        idx[m++] = int32_t(j);
      }
      project_row(h, idx, m, wdt, bd, threshold, out.data_ptr<float>() + r * o);
    }
  };
  if (n == 1 || at::get_num_threads() == 1) body(0, n);
  else at::parallel_for(0, n, 1, body);
  return out;
}

// Which units of each row the screen leaves (True: not proven zero): (n, k) bool.
at::Tensor screen_mask(at::Tensor x, at::Tensor qpack, at::Tensor unit, at::Tensor bfc) {
  const ScreenArgs a = screen_args(x, qpack, unit, bfc);
  at::Tensor out = at::zeros({x.size(0), a.k}, x.options().dtype(at::kBool));
  std::vector<int32_t> idx(a.k + 16);
  bool* op = out.data_ptr<bool>();
  for (int64_t r = 0; r < x.size(0); ++r) {
    const int64_t m = screen_row(a, x.data_ptr<float>() + r * a.d, idx.data());
    for (int64_t q = 0; q < m; ++q) op[r * a.k + idx[q]] = true;
  }
  return out;
}

// The GPT-2 ReLU MLP: c_fc screened, its candidates computed exactly from wt = c_fc.weight.T
// (k, d), ReLU, then c_proj (wproj: (k, o), Conv1D layout) reading the rows of the non-zero
// units where the row's zero fraction is at least threshold, else a dense product. x: any
// shape (..., d); the output (..., o). None (the caller runs its own path) where x has more
// than max_rows rows, or x or a layer's tensor is not contiguous float32 of the right shape.
c10::optional<at::Tensor> screened_mlp(at::Tensor x_in, at::Tensor qpack, at::Tensor unit,
                                       at::Tensor wt, at::Tensor bfc, at::Tensor wproj,
                                       c10::optional<at::Tensor> bproj, double threshold,
                                       int64_t max_rows) {
  const auto fits = [](const at::Tensor& t, int64_t dim) {
    return t.dim() == dim && t.scalar_type() == at::kFloat && t.is_contiguous()
           && t.device().is_cpu();
  };
  if (x_in.dim() < 1 || !fits(x_in, x_in.dim()) || !fits(wt, 2) || !fits(bfc, 1)
      || !fits(wproj, 2) || x_in.size(-1) != wt.size(1) || wt.size(1) == 0
      || bfc.size(0) != wt.size(0) || wproj.size(0) != wt.size(0)
      || (bproj.has_value() && (!fits(*bproj, 1) || bproj->size(0) != wproj.size(1))))
    return c10::nullopt;
  const int64_t rows = x_in.numel() / wt.size(1);
  if (rows < 1 || rows > max_rows) return c10::nullopt;
  const at::Tensor x = x_in.view({rows, wt.size(1)});
  const ScreenArgs a = screen_args(x, qpack, unit, bfc);
  const int64_t n = rows, d = a.d, k = a.k;
  const int64_t o = wproj.size(1);
  std::vector<int64_t> shape(x_in.sizes().begin(), x_in.sizes().end());
  shape.back() = o;
  at::Tensor out = at::empty(shape, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wtp = wt.data_ptr<float>();
  auto body = [&](int64_t r0, int64_t r1) {
    thread_local std::vector<int32_t> cand;
    if (int64_t(cand.size()) < k + 16) cand.resize(k + 16);
    int32_t* idx = index_buffer(k);
    float* h = value_buffer<float>(k);
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * d;
      const int64_t c = screen_row(a, xr, cand.data());
      int64_t m = 0;
      for (int64_t q = 0; q < c; ++q) {
        const int64_t j = cand[q];
        if (q + 2 < c) {  // start streaming a later candidate's row (rows are far apart)
          const char* nx = reinterpret_cast<const char*>(wtp + int64_t(cand[q + 2]) * d);
          for (int64_t off = 0; off < std::min<int64_t>(d * 4, 512); off += 64)
            __builtin_prefetch(nx + off);
        }
        const float v = a.bfc[j] + fdot(xr, wtp + j * d, d);
        h[j] = v;
        idx[m] = int32_t(j);
        m += !(v <= 0.0f);  // ReLU; a NaN stays (as torch.relu keeps it)
      }
      project_row(h, idx, m, wproj, bproj, threshold, out.data_ptr<float>() + r * o);
    }
  };
  if (n == 1 || at::get_num_threads() == 1) body(0, n);
  else at::parallel_for(0, n, 1, body);
  return out;
}


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
  m.def("screen_mask", &screen_mask);
  m.def("screened_mlp", &screened_mlp);
  m.def("screened_gated", &screened_gated);
  py::class_<Chain>(m, "Chain")
      .def(py::init<std::vector<at::Tensor>, std::vector<at::Tensor>,
                    std::vector<c10::optional<at::Tensor>>, std::vector<bool>,
                    std::vector<py::dict>>())
      .def("fresh", &Chain::fresh)
      .def("set_limits", &Chain::set_limits)
      .def("clear_limits", &Chain::clear_limits)
      .def("run", &Chain::run);
}
