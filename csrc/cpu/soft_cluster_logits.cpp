// soft_cluster_logits on the CPU (ClusTR Eq. 4 over the top-D nearest centers).
//
// Forward, per block of rows: one BLAS product gives the block's distances
// (||f||^2 + ||mu||^2 - 2 f.mu, clamped at 0) in a thread-local [rows, C]
// scratch; a bounded max-heap keeps the D nearest (ties: lower index); the D
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
#include "cpu/vec_math.h"

namespace clustr_fast {
namespace {

// Indices of the D smallest (value, index) pairs of v[0..C), in no particular order.
template <typename T>
void select_top_d(const T* v, int64_t C, int64_t D, std::vector<std::pair<T, int64_t>>& heap) {
  heap.clear();
  // max-heap on (value, index): the root is the entry to evict next.
  auto less = [](const std::pair<T, int64_t>& a, const std::pair<T, int64_t>& b) {
    return a.first < b.first || (a.first == b.first && a.second < b.second);
  };
  for (int64_t k = 0; k < D; ++k) heap.emplace_back(v[k], k);
  std::make_heap(heap.begin(), heap.end(), less);
  T worst = heap.front().first;
  for (int64_t k = D; k < C; ++k) {
    // a later index loses every tie, so only a strictly smaller value enters
    if (v[k] < worst) {
      std::pop_heap(heap.begin(), heap.end(), less);
      heap.back() = {v[k], k};
      std::push_heap(heap.begin(), heap.end(), less);
      worst = heap.front().first;
    }
  }
}

// z[s] = -scale * ||f - mu_{idx[s]}||^2 ; returns logsumexp_s z[s] (-inf when all are -inf).
template <typename T>
T selected_logits(const T* f, const T* mu, const int64_t* idx, int64_t D, int64_t d, T scale, T* z) {
  T mx = -std::numeric_limits<T>::infinity();
  for (int64_t s = 0; s < D; ++s) {
    z[s] = -scale * squared_distance(f, mu + idx[s] * d, d);
    mx = std::max(mx, z[s]);
  }
  if (!(mx > -std::numeric_limits<T>::infinity())) return mx;
  T sum = T(0);
  for (int64_t s = 0; s < D; ++s) sum += std::exp(z[s] - mx);
  return mx + std::log(sum);
}

template <typename T>
void soft_forward(const at::Tensor& f_t, const at::Tensor& mu_t, const at::Tensor& cls_t, at::Tensor& out_t,
                  at::Tensor& idx_t, int64_t L, int64_t D, T scale) {
  const int64_t N = f_t.size(0), C = mu_t.size(0), d = f_t.size(1);
  const T* f = f_t.data_ptr<T>();
  const T* mu = mu_t.data_ptr<T>();
  const int64_t* cls = cls_t.data_ptr<int64_t>();
  T* out = out_t.data_ptr<T>();
  int64_t* idx = idx_t.data_ptr<int64_t>();
  const bool all = D == C;
  const at::Tensor fn = f_t.square().sum(1);
  const at::Tensor cn = mu_t.square().sum(1);
  const T* fnp = fn.data_ptr<T>();
  const T* cnp = cn.data_ptr<T>();
  const at::Tensor mut = mu_t.t();
  const int64_t rows = std::max<int64_t>(8, std::min<int64_t>(128, (N + 1) / 2));
  const T ninf = -std::numeric_limits<T>::infinity();
  at::parallel_for(0, (N + rows - 1) / rows, 1, [&](int64_t b0, int64_t b1) {
    at::Tensor blk = all ? at::Tensor() : at::empty({rows, C}, f_t.options());
    std::vector<std::pair<T, int64_t>> heap;
    std::vector<T> z(D), cmax(L, ninf), csum(L, T(0));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * rows, r1 = std::min(N, r0 + rows);
      T* dist = nullptr;
      if (!all) {
        at::Tensor view = blk.narrow(0, 0, r1 - r0);
        at::mm_out(view, f_t.narrow(0, r0, r1 - r0), mut);
        dist = view.data_ptr<T>();
      }
      for (int64_t i = r0; i < r1; ++i) {
        int64_t* sel = idx + i * D;
        if (all) {
          for (int64_t s = 0; s < D; ++s) sel[s] = s;
        } else {
          T* row = dist + (i - r0) * C;
          const T fi = fnp[i];
#pragma omp simd
          for (int64_t k = 0; k < C; ++k) {
            const T v = fi + cnp[k] - T(2) * row[k];
            row[k] = v > T(0) ? v : T(0);
          }
          select_top_d(row, C, D, heap);
          for (int64_t s = 0; s < D; ++s) sel[s] = heap[s].second;
        }
        const T lse = selected_logits(f + i * d, mu, sel, D, d, scale, z.data());
        T* orow = out + i * L;
        std::fill(orow, orow + L, ninf);
        if (!(lse > ninf)) continue;  // every selected distance is infinite: no class present
        for (int64_t s = 0; s < D; ++s) {
          const int64_t c = cls[sel[s]];
          cmax[c] = std::max(cmax[c], z[s]);
        }
        for (int64_t s = 0; s < D; ++s) {
          const int64_t c = cls[sel[s]];
          if (cmax[c] > ninf) csum[c] += std::exp(z[s] - cmax[c]);
        }
        for (int64_t s = 0; s < D; ++s) {
          const int64_t c = cls[sel[s]];
          if (cmax[c] > ninf) orow[c] = cmax[c] + std::log(csum[c]) - lse;
        }
        for (int64_t s = 0; s < D; ++s) {
          const int64_t c = cls[sel[s]];
          cmax[c] = ninf;
          csum[c] = T(0);
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> soft_cluster_logits_cpu(const at::Tensor& feats, const at::Tensor& centers,
                                                           const at::Tensor& center_classes, int64_t num_classes,
                                                           double variance, int64_t top_d, int64_t precision) {
  check_matrix(feats, "feats");
  check_matrix(centers, "centers");
  check_precision(precision);
  TORCH_CHECK(feats.size(1) == centers.size(1), "feats and centers must have the same number of columns");
  TORCH_CHECK(center_classes.dim() == 1 && center_classes.size(0) == centers.size(0),
              "center_classes must have one entry per center");
  TORCH_CHECK(top_d >= 1 && top_d <= centers.size(0), "top_d must be in [1, C], got ", top_d);
  TORCH_CHECK(num_classes >= 1, "num_classes must be >= 1");
  TORCH_CHECK(variance > 0, "variance must be > 0");
  const auto acc = acc_type(feats.scalar_type());
  const at::Tensor f = feats.detach().to(acc).contiguous();
  const at::Tensor mu = centers.detach().to(acc).contiguous();
  const at::Tensor cls = center_classes.detach().to(at::kLong).contiguous();
  const int64_t N = f.size(0);
  at::Tensor out = at::empty({N, num_classes}, f.options());
  at::Tensor idx = at::empty({N, top_d}, f.options().dtype(at::kLong));
  if (N == 0) return {out, idx};
  AT_DISPATCH_FLOATING_TYPES(acc, "soft_cluster_logits_cpu", [&] {
    soft_forward<scalar_t>(f, mu, cls, out, idx, num_classes, top_d, static_cast<scalar_t>(0.5 / variance));
  });
  return {out, idx};
}

template <typename T>
void soft_backward(const at::Tensor& g_t, const at::Tensor& out_t, const at::Tensor& idx_t, const at::Tensor& f_t,
                   const at::Tensor& mu_t, const at::Tensor& cls_t, at::Tensor& gf_t, at::Tensor& gmu_t, T scale) {
  const int64_t N = f_t.size(0), C = mu_t.size(0), d = f_t.size(1), L = out_t.size(1), D = idx_t.size(1);
  const T* g = g_t.data_ptr<T>();
  const T* out = out_t.data_ptr<T>();
  const int64_t* idx = idx_t.data_ptr<int64_t>();
  const T* f = f_t.data_ptr<T>();
  const T* mu = mu_t.data_ptr<T>();
  const int64_t* cls = cls_t.data_ptr<int64_t>();
  T* gf = gf_t.data_ptr<T>();
  const int nthreads = at::get_num_threads();
  at::Tensor partial = at::zeros({nthreads, C, d}, f_t.options());
  T* part = partial.data_ptr<T>();
  const T ninf = -std::numeric_limits<T>::infinity();
  at::parallel_for(0, N, 16, [&](int64_t i0, int64_t i1) {
    T* gm = part + static_cast<int64_t>(at::get_thread_num()) * C * d;
    std::vector<T> z(D);
    for (int64_t i = i0; i < i1; ++i) {
      const T* fi = f + i * d;
      const int64_t* sel = idx + i * D;
      const T* grow = g + i * L;
      const T* orow = out + i * L;
      T* gfi = gf + i * d;
      std::fill(gfi, gfi + d, T(0));
      const T lse = selected_logits(fi, mu, sel, D, d, scale, z.data());
      if (!(lse > ninf)) continue;
      T G = T(0);
      for (int64_t c = 0; c < L; ++c) G += orow[c] > ninf ? grow[c] : T(0);
      for (int64_t s = 0; s < D; ++s) {
        const int64_t j = sel[s];
        const int64_t c = cls[j];
        if (!(z[s] > ninf) || !(orow[c] > ninf)) continue;
        const T p = std::exp(z[s] - lse);
        const T w = std::exp(z[s] - lse - orow[c]);
        const T a2 = T(2) * (-scale) * (grow[c] * w - G * p);
        const T* mj = mu + j * d;
        T* gmj = gm + j * d;
#pragma omp simd
        for (int64_t k = 0; k < d; ++k) {
          const T t = a2 * (fi[k] - mj[k]);
          gfi[k] += t;
          gmj[k] -= t;
        }
      }
    }
  });
  gmu_t.copy_(partial.sum(0));
}

std::tuple<at::Tensor, at::Tensor> soft_cluster_logits_backward_cpu(const at::Tensor& grad, const at::Tensor& out,
                                                                    const at::Tensor& idx, const at::Tensor& feats,
                                                                    const at::Tensor& centers,
                                                                    const at::Tensor& center_classes,
                                                                    double variance) {
  check_matrix(feats, "feats");
  check_matrix(centers, "centers");
  TORCH_CHECK(grad.sizes() == out.sizes(), "grad and out must have the same shape");
  TORCH_CHECK(idx.dim() == 2 && idx.size(0) == feats.size(0), "idx must be [N, D]");
  TORCH_CHECK(variance > 0, "variance must be > 0");
  const auto acc = acc_type(feats.scalar_type());
  const at::Tensor f = feats.detach().to(acc).contiguous();
  const at::Tensor mu = centers.detach().to(acc).contiguous();
  const at::Tensor g = grad.detach().to(acc).contiguous();
  const at::Tensor o = out.detach().to(acc).contiguous();
  const at::Tensor ix = idx.detach().to(at::kLong).contiguous();
  const at::Tensor cls = center_classes.detach().to(at::kLong).contiguous();
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

TORCH_LIBRARY_IMPL(clustr_fast_C, CPU, m) {
  m.impl("soft_cluster_logits", &soft_cluster_logits_cpu);
  m.impl("soft_cluster_logits_backward", &soft_cluster_logits_backward_cpu);
}

}  // namespace clustr_fast
