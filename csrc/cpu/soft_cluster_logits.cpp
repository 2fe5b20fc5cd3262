// soft_cluster_logits on the CPU (ClusTR Eq. 4 over the top-D nearest centers).
//
// Forward, per block of rows: one BLAS product gives the block's distances
// (||f||^2 + ||mu||^2 - 2 f.mu, clamped at 0) in a thread-local [rows, C]
// scratch; a bound from group minima, a filter and an exact selection among the few
// candidates keep the D nearest (ties: lower index; idx in increasing index order); the D
// selected distances are recomputed exactly by direct differences; per-class
// logsumexp of z = -d / (2 sigma^2) and the normaliser over the selection give
//   out[i,c] = logsumexp_{j in S_i, cls_j = c} z_ij - logsumexp_{j in S_i} z_ij
// (-inf for classes without a selected center). Also returns idx [N,D].
//
// Backward, per row (a_j = dL/dd_j, see clustr_fast/ops/soft_cluster_logits.py):
//   grad_f_i  =  2 sum_j a_ij (f_i - mu_j);   grad_mu_j = -2 sum_i a_ij (f_i - mu_j)
// grad_mu is accumulated in one buffer per thread and summed at the end.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "common.h"
#include "cpu/kmeans_rows.h"
#include "op_checks.h"

namespace clustr_fast {
namespace {

// The k-th smallest (0-based) of a[0..n): by ranks for short arrays (branch-free, vectorized
// compares: rank_j = #{a_i < a_j} + #{i < j, a_i == a_j} is a permutation, so exactly one
// entry has rank k), by std::nth_element on the array otherwise (reorders a).
template <typename T>
inline __attribute__((always_inline)) T kth_smallest(T* a, int64_t n, int64_t k) {
  if (n > 64) {
    std::nth_element(a, a + k, a + n);
    return a[k];
  }
  T out = a[0];
  for (int64_t j = 0; j < n; ++j) {
    const T aj = a[j];
    int64_t r = 0;
    for (int64_t i = 0; i < n; ++i) r += (a[i] < aj) | ((a[i] == aj) & (i < j));
    out = r == k ? aj : out;
  }
  return out;
}

// sel[0..D) = indices of the D smallest (value, index) pairs of v[0..C), in increasing index
// order; v holds no NaN. Three steps, all exact:
//   1. a bound t0 >= the D-th smallest value: the D-th smallest of the minima of G >= D groups
//      (values k with k % G == l), which are D values at distinct positions; +inf when C < 2G;
//   2. the candidates v[k] <= t0 (branch-free append, in index order) and the D-th smallest
//      value t among them, which is the D-th smallest of v;
//   3. every candidate below t (at most D - 1), then those equal to t in index order until D
//      (ties: lower index).
// Scratch: cand [C], tmp [C]. At 256 centers and D = 20, about 29 candidates per row on
// random distances, and 5x faster than a bounded heap.
template <typename T>
inline __attribute__((always_inline)) void select_top_d(const T* v, int64_t C, int64_t D, int64_t* cand, T* tmp,
                                                        int64_t* sel) {
  constexpr int64_t W = Vec32<T>::W;
  const int64_t G = (D + W - 1) / W * W;
  T t0 = std::numeric_limits<T>::infinity();
  if (C >= 2 * G) {
    std::copy(v, v + G, tmp);
    int64_t k = G;
    for (; k + G <= C; k += G) {
#pragma omp simd
      for (int64_t l = 0; l < G; ++l) tmp[l] = v[k + l] < tmp[l] ? v[k + l] : tmp[l];
    }
    for (int64_t l = 0; k + l < C; ++l) tmp[l] = std::min(tmp[l], v[k + l]);
    t0 = kth_smallest(tmp, G, D - 1);
  }
  int64_t n = 0;
  for (int64_t k = 0; k < C; ++k) {
    cand[n] = k;
    n += v[k] <= t0 ? 1 : 0;
  }
  for (int64_t j = 0; j < n; ++j) tmp[j] = v[cand[j]];
  const T t = kth_smallest(tmp, n, std::min(n, D) - 1);
  int64_t m = 0;
  for (int64_t j = 0; j < n; ++j) {
    sel[std::min(m, D - 1)] = cand[j];  // the clamps only keep memory safe if an invariant broke
    m += v[cand[j]] < t ? 1 : 0;
  }
  for (int64_t j = 0; j < n && m < D; ++j)
    if (v[cand[j]] == t) sel[m++] = cand[j];
  for (; m < D; ++m) sel[m] = 0;  // never runs while the invariants hold
}

// z[s] = -scale * ||f - mu_{idx[s]}||^2 ; returns logsumexp_s z[s] (-inf when all are -inf).
// The distances are direct differences, 8 centers per pass over f (sqdist_to_rows).
template <typename T>
inline __attribute__((always_inline)) T selected_logits(const T* f, const T* mu, const int64_t* idx, int64_t D,
                                                        int64_t d, T scale, T* z) {
  sqdist_to_rows<T>(f, mu, idx, D, d, z);
  T mx = -std::numeric_limits<T>::infinity();
  for (int64_t s = 0; s < D; ++s) {
    z[s] = -scale * z[s];
    mx = std::max(mx, z[s]);
  }
  if (!(mx > -std::numeric_limits<T>::infinity())) return mx;
  T sum = T(0);
  for (int64_t s = 0; s < D; ++s) sum += std::exp(z[s] - mx);
  return mx + std::log(sum);
}
// What the forward reads and writes (see the file comment); dist rows are [C] products f.mu.
template <typename T>
struct SoftForward {
  const T *f, *mu, *fn, *cn;
  const int64_t* cls;
  T* out;
  int64_t* idx;
  int64_t C, d, L, D;
  T scale;
};

// Per-thread scratch of the forward.
template <typename T>
struct SoftScratch {
  std::vector<T> tmp, z, cmax, csum;
  std::vector<int64_t> cand;
  SoftScratch(int64_t C, int64_t D, int64_t L)
      : tmp(C), z(D), cmax(L, -std::numeric_limits<T>::infinity()), csum(L, T(0)), cand(C) {}
};

// Rows [r0, r1): distances from the products in dist (null when D == C: every center is
// selected), the top-D selection, the exact selected logits and the per-class log-probabilities.
template <typename T>
inline __attribute__((always_inline)) void soft_rows(const SoftForward<T>& a, int64_t r0, int64_t r1, T* dist,
                                                     SoftScratch<T>& s) {
  const T ninf = -std::numeric_limits<T>::infinity();
  const int64_t C = a.C, D = a.D;
  for (int64_t i = r0; i < r1; ++i) {
    int64_t* sel = a.idx + i * D;
    if (dist == nullptr) {
      for (int64_t j = 0; j < D; ++j) sel[j] = j;
    } else {
      T* row = dist + (i - r0) * C;
      const T fi = a.fn[i];
#pragma omp simd
      for (int64_t k = 0; k < C; ++k) {
        const T v = fi + a.cn[k] - T(2) * row[k];
        row[k] = v > T(0) ? v : T(0);
      }
      select_top_d(row, C, D, s.cand.data(), s.tmp.data(), sel);
    }
    const T lse = selected_logits<T>(a.f + i * a.d, a.mu, sel, D, a.d, a.scale, s.z.data());
    T* orow = a.out + i * a.L;
    std::fill(orow, orow + a.L, ninf);
    if (!(lse > ninf)) continue;  // every selected distance is infinite: no class present
    T* cmax = s.cmax.data();
    T* csum = s.csum.data();
    const T* z = s.z.data();
    for (int64_t j = 0; j < D; ++j) {
      const int64_t c = a.cls[sel[j]];
      cmax[c] = std::max(cmax[c], z[j]);
    }
    for (int64_t j = 0; j < D; ++j) {
      const int64_t c = a.cls[sel[j]];
      if (cmax[c] > ninf) csum[c] += std::exp(z[j] - cmax[c]);
    }
    for (int64_t j = 0; j < D; ++j) {
      const int64_t c = a.cls[sel[j]];
      if (cmax[c] > ninf) orow[c] = cmax[c] + std::log(csum[c]) - lse;
    }
    for (int64_t j = 0; j < D; ++j) {
      const int64_t c = a.cls[sel[j]];
      cmax[c] = ninf;
      csum[c] = T(0);
    }
  }
}
CLUSTR_VEC_CLONES void soft_rows_f(const SoftForward<float>& a, int64_t r0, int64_t r1, float* dist,
                                   SoftScratch<float>& s) {
  soft_rows<float>(a, r0, r1, dist, s);
}
CLUSTR_VEC_CLONES void soft_rows_d(const SoftForward<double>& a, int64_t r0, int64_t r1, double* dist,
                                   SoftScratch<double>& s) {
  soft_rows<double>(a, r0, r1, dist, s);
}
inline void soft_rows_any(const SoftForward<float>& a, int64_t r0, int64_t r1, float* dist, SoftScratch<float>& s) {
  soft_rows_f(a, r0, r1, dist, s);
}
inline void soft_rows_any(const SoftForward<double>& a, int64_t r0, int64_t r1, double* dist,
                          SoftScratch<double>& s) {
  soft_rows_d(a, r0, r1, dist, s);
}

template <typename T>
void soft_forward(const at::Tensor& f_t, const at::Tensor& mu_t, const at::Tensor& cls_t, at::Tensor& out_t,
                  at::Tensor& idx_t, int64_t L, int64_t D, T scale) {
  const int64_t N = f_t.size(0), C = mu_t.size(0), d = f_t.size(1);
  const bool all = D == C;
  const at::Tensor fn = f_t.square().sum(1);
  const at::Tensor cn = mu_t.square().sum(1);
  const SoftForward<T> args{f_t.data_ptr<T>(), mu_t.data_ptr<T>(), fn.data_ptr<T>(), cn.data_ptr<T>(),
                            cls_t.data_ptr<int64_t>(), out_t.data_ptr<T>(), idx_t.data_ptr<int64_t>(), C, d, L, D,
                            scale};
  const at::Tensor mut = mu_t.t();
  const int64_t rows = std::max<int64_t>(8, std::min<int64_t>(128, (N + 1) / 2));
  at::parallel_for(0, (N + rows - 1) / rows, serial_grain(rows * C * (d + D)), [&](int64_t b0, int64_t b1) {
    at::Tensor blk = all ? at::Tensor() : at::empty({rows, C}, f_t.options());
    SoftScratch<T> scratch(C, D, L);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * rows, r1 = std::min(N, r0 + rows);
      T* dist = nullptr;
      if (!all) {
        at::Tensor view = blk.narrow(0, 0, r1 - r0);
        at::mm_out(view, f_t.narrow(0, r0, r1 - r0), mut);
        dist = view.data_ptr<T>();
      }
      soft_rows_any(args, r0, r1, dist, scratch);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> soft_cluster_logits_cpu(const at::Tensor& feats, const at::Tensor& centers,
                                                           const at::Tensor& center_classes, int64_t num_classes,
                                                           double variance, int64_t top_d, int64_t precision) {
  check_soft_cluster_logits(feats, centers, center_classes, num_classes, variance, top_d, precision);
  const auto acc = acc_type(feats.scalar_type());
  const at::Tensor f = feats.to(acc).contiguous();
  const at::Tensor mu = centers.to(acc).contiguous();
  const at::Tensor cls = center_classes.to(at::kLong).contiguous();
  const int64_t N = f.size(0);
  at::Tensor out = at::empty({N, num_classes}, f.options());
  at::Tensor idx = at::empty({N, top_d}, f.options().dtype(at::kLong));
  if (N == 0) return {out, idx};
  AT_DISPATCH_FLOATING_TYPES(acc, "soft_cluster_logits_cpu", [&] {
    soft_forward<scalar_t>(f, mu, cls, out, idx, num_classes, top_d, static_cast<scalar_t>(0.5 / variance));
  });
  return {out, idx};
}

// What the backward reads and writes; gf [N, d], gm a thread's center-gradient partial [C, d].
template <typename T>
struct SoftBackward {
  const T *g, *out, *f, *mu;
  const int64_t *idx, *cls;
  T* gf;
  int64_t d, L, D;
  T scale;
};

// Rows [i0, i1) of the backward; z: scratch of D values.
template <typename T>
inline __attribute__((always_inline)) void soft_backward_rows(const SoftBackward<T>& a, int64_t i0, int64_t i1,
                                                              T* gm, T* z) {
  const T ninf = -std::numeric_limits<T>::infinity();
  const int64_t d = a.d, L = a.L, D = a.D;
  for (int64_t i = i0; i < i1; ++i) {
    const T* fi = a.f + i * d;
    const int64_t* sel = a.idx + i * D;
    const T* grow = a.g + i * L;
    const T* orow = a.out + i * L;
    T* gfi = a.gf + i * d;
    std::fill(gfi, gfi + d, T(0));
    const T lse = selected_logits<T>(fi, a.mu, sel, D, d, a.scale, z);
    if (!(lse > ninf)) continue;
    T G = T(0);
    for (int64_t c = 0; c < L; ++c) G += orow[c] > ninf ? grow[c] : T(0);
    for (int64_t s = 0; s < D; ++s) {
      const int64_t j = sel[s];
      const int64_t c = a.cls[j];
      if (!(z[s] > ninf) || !(orow[c] > ninf)) continue;
      const T p = std::exp(z[s] - lse);
      const T w = std::exp(z[s] - lse - orow[c]);
      const T a2 = T(2) * (-a.scale) * (grow[c] * w - G * p);
      const T* mj = a.mu + j * d;
      T* gmj = gm + j * d;
#pragma omp simd
      for (int64_t k = 0; k < d; ++k) {
        const T t = a2 * (fi[k] - mj[k]);
        gfi[k] += t;
        gmj[k] -= t;
      }
    }
  }
}
CLUSTR_VEC_CLONES void soft_backward_rows_f(const SoftBackward<float>& a, int64_t i0, int64_t i1, float* gm,
                                            float* z) {
  soft_backward_rows<float>(a, i0, i1, gm, z);
}
CLUSTR_VEC_CLONES void soft_backward_rows_d(const SoftBackward<double>& a, int64_t i0, int64_t i1, double* gm,
                                            double* z) {
  soft_backward_rows<double>(a, i0, i1, gm, z);
}
inline void soft_backward_rows_any(const SoftBackward<float>& a, int64_t i0, int64_t i1, float* gm, float* z) {
  soft_backward_rows_f(a, i0, i1, gm, z);
}
inline void soft_backward_rows_any(const SoftBackward<double>& a, int64_t i0, int64_t i1, double* gm, double* z) {
  soft_backward_rows_d(a, i0, i1, gm, z);
}

template <typename T>
void soft_backward(const at::Tensor& g_t, const at::Tensor& out_t, const at::Tensor& idx_t, const at::Tensor& f_t,
                   const at::Tensor& mu_t, const at::Tensor& cls_t, at::Tensor& gf_t, at::Tensor& gmu_t, T scale) {
  const int64_t C = mu_t.size(0), d = f_t.size(1), L = out_t.size(1), D = idx_t.size(1);
  const SoftBackward<T> args{g_t.data_ptr<T>(),      out_t.data_ptr<T>(),     f_t.data_ptr<T>(),
                             mu_t.data_ptr<T>(),     idx_t.data_ptr<int64_t>(), cls_t.data_ptr<int64_t>(),
                             gf_t.data_ptr<T>(),     d,                       L,
                             D,                      scale};
  constexpr int64_t kGrain = 16;
  const int nthreads = at::get_num_threads();
  if (f_t.size(0) <= kGrain || nthreads == 1) {  // one task (as at::parallel_for would run it): no partials
    std::vector<T> z(D);
    soft_backward_rows_any(args, 0, f_t.size(0), gmu_t.data_ptr<T>(), z.data());
    return;
  }
  at::Tensor partial = at::zeros({nthreads, C, d}, f_t.options());
  T* part = partial.data_ptr<T>();
  at::parallel_for(0, f_t.size(0), kGrain, [&](int64_t i0, int64_t i1) {
    T* gm = part + static_cast<int64_t>(at::get_thread_num()) * C * d;
    std::vector<T> z(D);
    soft_backward_rows_any(args, i0, i1, gm, z.data());
  });
  gmu_t.copy_(partial.sum(0));
}

std::tuple<at::Tensor, at::Tensor> soft_cluster_logits_backward_cpu(const at::Tensor& grad, const at::Tensor& out,
                                                                    const at::Tensor& idx, const at::Tensor& feats,
                                                                    const at::Tensor& centers,
                                                                    const at::Tensor& center_classes,
                                                                    double variance) {
  check_soft_cluster_logits_backward(grad, out, idx, feats, centers, variance);
  const auto acc = acc_type(feats.scalar_type());
  const at::Tensor f = feats.to(acc).contiguous();
  const at::Tensor mu = centers.to(acc).contiguous();
  const at::Tensor g = grad.to(acc).contiguous();
  const at::Tensor o = out.to(acc).contiguous();
  const at::Tensor ix = idx.to(at::kLong).contiguous();
  const at::Tensor cls = center_classes.to(at::kLong).contiguous();
  at::Tensor gf = at::empty_like(f);
  at::Tensor gmu = at::zeros_like(mu);
  if (f.size(0) > 0 && ix.size(1) > 0) {
    AT_DISPATCH_FLOATING_TYPES(acc, "soft_cluster_logits_backward_cpu", [&] {
      soft_backward<scalar_t>(g, o, ix, f, mu, cls, gf, gmu, static_cast<scalar_t>(0.5 / variance));
    });
  } else {
    gf.zero_();
  }
  return {gf.to(feats.scalar_type()), gmu.to(centers.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(clustr_fast, CPU, m) {
  m.impl("soft_cluster_logits", &soft_cluster_logits_cpu);
  m.impl("soft_cluster_logits_backward", &soft_cluster_logits_backward_cpu);
}

}  // namespace clustr_fast
