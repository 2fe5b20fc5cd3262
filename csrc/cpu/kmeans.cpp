// k-means on the CPU: fused assignment, deterministic Lloyd update, the fused Lloyd step, and
// the whole greedy k-means++ seeding loop, all batched over segments (groups).
//
//   kmeans_assign:     labels[i] = argmin_k ||x_i - c_k||^2 (first minimum), sqdist[i] = that minimum.
//                      Dense: register-blocked products of 6 rows with packed panels of centers,
//                      consumed at once by a vector argmin (cpu/nearest_center.h; no BLAS, no [N,K]
//                      buffer). Grouped: row i only sees the centers
//                      [groups[i]*group_k, (groups[i]+1)*group_k), by explicit differences.
//   kmeans_update:     centers[j] = sum_{labels_i = j} w_i x_i / W_j (w = 1 without weights;
//                      prev_centers[j] or 0 when W_j = 0), counts[j] (W_j with weights); a counting
//                      sort by label, then one ordered sum per cluster (float64 accumulators):
//                      deterministic for any thread count.
//   kmeans_lloyd_step: assign + update (prev_centers = centers) in one pass over x: each row block is
//                      assigned by the kernels above and summed at once into float64 partials of its
//                      fixed chunk; the partials are added in chunk order (deterministic).
//   kmeans_plusplus:   greedy D^2 seeding in every segment [offsets[g], offsets[g+1]) of x (weighted:
//                      draws by w_i D_i^2, potential sum_i w_i D_i^2); each step is one parallel pass
//                      that folds in the last chosen center and computes the T candidate distances by
//                      explicit differences with their partial potentials.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <type_traits>
#include <vector>

#include "common.h"
#include "cpu/kmeans_plusplus.h"
#include "cpu/kmeans_rows.h"
#include "cpu/nearest_center.h"
#include "op_checks.h"

// CLUSTR_VEC_CLONES (common.h): AVX2+FMA clones of the hot loops, chosen at load time.

namespace clustr_fast {
namespace {

// ------------------------------------------------------------------ assign (cpu/nearest_center.h)

// Rows per assignment block (and the granularity of the Lloyd chunks): about 64K scores per
// block, at least 256 rows.
inline int64_t dense_rows(int64_t K) {
  return std::clamp<int64_t>(65536 / std::clamp<int64_t>(K, 1, 256), 256, 2048);
}

template <typename T>
void assign_dense(const at::Tensor& x, const at::Tensor& c, at::Tensor& labels, at::Tensor& sqdist) {
  const int64_t N = x.size(0), RB = dense_rows(c.size(0));
  const PackedCenters<T> pc(c);
  const int64_t nblk = (N + RB - 1) / RB;
  const T* xp = x.data_ptr<T>();
  T* sq = sqdist.data_ptr<T>();
  int64_t* lab = labels.data_ptr<int64_t>();
  at::parallel_for(0, nblk, 1, [&](int64_t b0, int64_t b1) {
    NearestScratch<T> s(RB);
    for (int64_t b = b0; b < b1; ++b) nearest_centers_any(xp, b * RB, std::min(RB, N - b * RB), pc, s, lab, sq);
  });
}

template <typename T>
inline __attribute__((always_inline)) void assign_grouped_rows(const T* x, const T* c, const int64_t* groups,
                                                               int64_t gk, int64_t d, int64_t i0, int64_t i1,
                                                               int64_t* lab, T* sq) {
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t base = groups[i] * gk;
    lab[i] = base + nearest_by_differences<T>(x + i * d, c + base * d, gk, d, sq + i);
  }
}
CLUSTR_VEC_CLONES void assign_grouped_f(const float* x, const float* c, const int64_t* g, int64_t gk, int64_t d,
                                        int64_t i0, int64_t i1, int64_t* lab, float* sq) {
  assign_grouped_rows<float>(x, c, g, gk, d, i0, i1, lab, sq);
}
CLUSTR_VEC_CLONES void assign_grouped_d(const double* x, const double* c, const int64_t* g, int64_t gk, int64_t d,
                                        int64_t i0, int64_t i1, int64_t* lab, double* sq) {
  assign_grouped_rows<double>(x, c, g, gk, d, i0, i1, lab, sq);
}
inline void assign_grouped_any(const float* x, const float* c, const int64_t* g, int64_t gk, int64_t d, int64_t i0,
                               int64_t i1, int64_t* lab, float* sq) {
  assign_grouped_f(x, c, g, gk, d, i0, i1, lab, sq);
}
inline void assign_grouped_any(const double* x, const double* c, const int64_t* g, int64_t gk, int64_t d,
                               int64_t i0, int64_t i1, int64_t* lab, double* sq) {
  assign_grouped_d(x, c, g, gk, d, i0, i1, lab, sq);
}

// Detached, contiguous (x, centers) in the accumulation dtype (checked by check_kmeans_assign).
std::pair<at::Tensor, at::Tensor> points_and_centers(const at::Tensor& x_in, const at::Tensor& c_in) {
  const auto acc = acc_type(x_in.scalar_type());
  const at::Tensor x = x_in.detach().to(acc).contiguous();
  const at::Tensor c = c_in.detach().to(acc).contiguous();
  return {x, c};
}

std::tuple<at::Tensor, at::Tensor> kmeans_assign_cpu(const at::Tensor& x_in, const at::Tensor& c_in,
                                                     int64_t precision, const std::optional<at::Tensor>& groups_in,
                                                     int64_t group_k) {
  check_kmeans_assign(x_in, c_in, precision, groups_in, group_k);
  const auto xc = points_and_centers(x_in, c_in);
  const at::Tensor x = xc.first, c = xc.second;
  const auto acc = x.scalar_type();
  const int64_t N = x.size(0), D = x.size(1);
  at::Tensor labels = at::zeros({N}, x.options().dtype(at::kLong));
  at::Tensor sqdist = at::empty({N}, x.options());
  if (N == 0) return {labels, sqdist};
  if (groups_in.has_value()) {
    const at::Tensor groups = groups_in->detach().to(at::kLong).contiguous();
    AT_DISPATCH_FLOATING_TYPES(acc, "kmeans_assign_grouped_cpu", [&] {
      const scalar_t* xp = x.data_ptr<scalar_t>();
      const scalar_t* cp = c.data_ptr<scalar_t>();
      const int64_t* gp = groups.data_ptr<int64_t>();
      int64_t* lp = labels.data_ptr<int64_t>();
      scalar_t* sp = sqdist.data_ptr<scalar_t>();
      at::parallel_for(0, N, 256, [&](int64_t i0, int64_t i1) {
        assign_grouped_any(xp, cp, gp, group_k, D, i0, i1, lp, sp);
      });
    });
    return {labels, sqdist};
  }
  if (D == 0) return {labels, sqdist.zero_()};
  AT_DISPATCH_FLOATING_TYPES(acc, "kmeans_assign_cpu", [&] { assign_dense<scalar_t>(x, c, labels, sqdist); });
  return {labels, sqdist};
}

// ------------------------------------------------------------------ update


// w (optional): row weights; wout receives the weight sums W_j (counts are always the row counts).
template <typename T>
void update_sorted(const at::Tensor& x, const int64_t* lab, int64_t k, const T* prev, const T* w, at::Tensor& centers,
                   int64_t* counts, T* wout) {
  const int64_t N = x.size(0), D = x.size(1);
  std::vector<int64_t> start(k + 1, 0), order(N), fill;
  for (int64_t i = 0; i < N; ++i) ++counts[lab[i]];
  for (int64_t j = 0; j < k; ++j) start[j + 1] = start[j] + counts[j];
  fill.assign(start.begin(), start.end() - 1);
  for (int64_t i = 0; i < N; ++i) order[fill[lab[i]]++] = i;  // stable counting sort
  const T* xp = x.data_ptr<T>();
  T* cp = centers.data_ptr<T>();
  at::parallel_for(0, k, 16, [&](int64_t j0, int64_t j1) {
    std::vector<double> acc(D);
    for (int64_t j = j0; j < j1; ++j) {
      T* out = cp + j * D;
      std::fill(acc.begin(), acc.end(), 0.0);
      double total = static_cast<double>(counts[j]);
      if (w != nullptr) {
        total = 0.0;
        for (int64_t p = start[j]; p < start[j + 1]; ++p) {
          const double wi = static_cast<double>(w[order[p]]);
          add_row_scaled_any(acc.data(), xp + order[p] * D, wi, D);
          total += wi;
        }
        wout[j] = static_cast<T>(total);
      } else {
        for (int64_t p = start[j]; p < start[j + 1]; ++p) add_row_any(acc.data(), xp + order[p] * D, D);
      }
      if (!(total > 0.0)) {
        for (int64_t e = 0; e < D; ++e) out[e] = prev ? prev[j * D + e] : T(0);
        continue;
      }
      const double inv = 1.0 / total;
      for (int64_t e = 0; e < D; ++e) out[e] = static_cast<T>(acc[e] * inv);
    }
  });
}

// Row weights as a contiguous tensor of the accumulation dtype, checked against N (undefined when absent).
at::Tensor row_weights(const std::optional<at::Tensor>& weights, int64_t N, at::ScalarType acc) {
  check_row_weights(weights, N);
  if (!weights.has_value()) return at::Tensor();
  return weights->detach().to(acc).contiguous();
}

std::tuple<at::Tensor, at::Tensor> kmeans_update_cpu(const at::Tensor& x_in, const at::Tensor& labels_in, int64_t k,
                                                     const std::optional<at::Tensor>& prev_in, bool deterministic,
                                                     const std::optional<at::Tensor>& weights_in) {
  (void)deterministic;  // always deterministic on the CPU
  check_kmeans_update(x_in, labels_in, k, prev_in);
  const auto acc = acc_type(x_in.scalar_type());
  const at::Tensor x = x_in.detach().to(acc).contiguous();
  const at::Tensor labels = labels_in.detach().to(at::kLong).contiguous();
  at::Tensor prev;
  if (prev_in.has_value()) prev = prev_in->detach().to(acc).contiguous();
  const at::Tensor w = row_weights(weights_in, x.size(0), acc);
  at::Tensor centers = at::empty({k, x.size(1)}, x.options());
  at::Tensor counts = at::zeros({k}, x.options().dtype(at::kLong));
  at::Tensor wsum = w.defined() ? at::zeros({k}, x.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(acc, "kmeans_update_cpu", [&] {
    update_sorted<scalar_t>(x, labels.data_ptr<int64_t>(), k, prev.defined() ? prev.data_ptr<scalar_t>() : nullptr,
                            w.defined() ? w.data_ptr<scalar_t>() : nullptr, centers, counts.data_ptr<int64_t>(),
                            w.defined() ? wsum.data_ptr<scalar_t>() : nullptr);
  });
  return {centers, w.defined() ? wsum : counts};
}

// ------------------------------------------------------------------ fused Lloyd step

// Rows are cut into fixed chunks (their size depends on N, K and d only, never on the thread
// count); every chunk sums its rows into its own float64 partials [K, d] and counts [K], and the
// partials are added in chunk order: deterministic for any number of threads.
struct LloydChunks {
  int64_t rows = 0, count = 0;
};

LloydChunks lloyd_chunks(int64_t N, int64_t K, int64_t D, int64_t block) {
  constexpr int64_t kMinRows = 2048, kMaxChunks = 64, kMaxPartialBytes = int64_t(128) << 20;
  LloydChunks ch;
  const int64_t want = std::clamp<int64_t>((N + kMinRows - 1) / kMinRows, 1, kMaxChunks);
  const int64_t per = (N + want - 1) / want;
  ch.rows = std::max<int64_t>(block, (per + block - 1) / block * block);
  ch.count = std::max<int64_t>(1, (N + ch.rows - 1) / ch.rows);
  if (ch.count * K * std::max<int64_t>(D, 1) * 8 > kMaxPartialBytes) ch.count = 0;  // too many partials
  return ch;
}

// sums[lab[i]] += w_i x_i (float64; w = 1 when w is null), counts[lab[i]] += 1 and, with weights,
// wsums[lab[i]] += w_i, for the rows [i0, i1).
template <typename T>
inline void accumulate_rows(const T* x, const int64_t* lab, const T* w, int64_t i0, int64_t i1, int64_t D,
                            double* sums, int64_t* counts, double* wsums) {
  if (w == nullptr) {
    for (int64_t i = i0; i < i1; ++i) {
      add_row_any(sums + lab[i] * D, x + i * D, D);
      ++counts[lab[i]];
    }
    return;
  }
  for (int64_t i = i0; i < i1; ++i) {
    const double wi = static_cast<double>(w[i]);
    add_row_scaled_any(sums + lab[i] * D, x + i * D, wi, D);
    ++counts[lab[i]];
    wsums[lab[i]] += wi;
  }
}

// new_centers[j] = sum_c partial[c, j] / W_j with W_j = sum_c pw[c, j] (weights) or the count
// (centers[j] when W_j = 0); counts[j] the row count, wout[j] = W_j (weights only).
template <typename T>
void reduce_partials(const double* part, const int64_t* pcnt, const double* pw, int64_t nchunk, int64_t K, int64_t D,
                     const T* prev, T* out, int64_t* counts, T* wout) {
  // a small reduction runs on one thread (a parallel region costs more on a busy machine)
  const int64_t grain = nchunk * K * D <= (int64_t(1) << 20) ? K : std::max<int64_t>(1, 4096 / std::max<int64_t>(D, 1));
  at::parallel_for(0, K, grain, [&](int64_t j0, int64_t j1) {
    std::vector<double> acc(D);
    for (int64_t j = j0; j < j1; ++j) {
      int64_t n = 0;
      for (int64_t c = 0; c < nchunk; ++c) n += pcnt[c * K + j];
      counts[j] = n;
      double total = static_cast<double>(n);
      if (pw != nullptr) {
        total = 0.0;
        for (int64_t c = 0; c < nchunk; ++c) total += pw[c * K + j];
        wout[j] = static_cast<T>(total);
      }
      T* o = out + j * D;
      if (!(total > 0.0)) {
        std::copy(prev + j * D, prev + (j + 1) * D, o);
        continue;
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t c = 0; c < nchunk; ++c) {
        const double* p = part + (c * K + j) * D;
#pragma omp simd
        for (int64_t e = 0; e < D; ++e) acc[e] += p[e];
      }
      const double inv = 1.0 / total;
      for (int64_t e = 0; e < D; ++e) o[e] = static_cast<T>(acc[e] * inv);
    }
  });
}

// One pass over x: nearest center of every row (the kmeans_assign kernels, so the labels are
// the same), and the float64 partial sums of the update, consumed right after each block.
template <typename T>
void lloyd_step_fused(const at::Tensor& x, const at::Tensor& c, const int64_t* groups, int64_t gk, const T* w,
                      const LloydChunks& ch, int64_t* lab, T* sq, T* out, int64_t* counts, T* wout) {
  const int64_t N = x.size(0), D = x.size(1), K = c.size(0), RB = dense_rows(K);
  const T* xp = x.data_ptr<T>();
  const T* cp = c.data_ptr<T>();
  std::unique_ptr<double[]> part(new double[ch.count * K * D]);  // each chunk zeroes its own
  std::unique_ptr<int64_t[]> pcnt(new int64_t[ch.count * K]);
  std::unique_ptr<double[]> pw(w != nullptr ? new double[ch.count * K] : nullptr);
  std::optional<PackedCenters<T>> dense;
  if (groups == nullptr) dense.emplace(c);
  auto init = [&] {
    std::optional<NearestScratch<T>> scratch;
    if (groups == nullptr) scratch.emplace(RB);
    return scratch;
  };
  parallel_items(ch.count, init, [&](std::optional<NearestScratch<T>>& scratch, int64_t ci) {
    double* sums = part.get() + ci * K * D;
    int64_t* cnt = pcnt.get() + ci * K;
    double* wsums = pw ? pw.get() + ci * K : nullptr;
    std::fill(sums, sums + K * D, 0.0);
    std::fill(cnt, cnt + K, int64_t(0));
    if (wsums != nullptr) std::fill(wsums, wsums + K, 0.0);
    const int64_t end = std::min(N, (ci + 1) * ch.rows);
    for (int64_t r0 = ci * ch.rows; r0 < end; r0 += RB) {
      const int64_t r1 = std::min(end, r0 + RB);
      if (groups == nullptr)
        nearest_centers_any(xp, r0, r1 - r0, *dense, *scratch, lab, sq);
      else
        assign_grouped_any(xp, cp, groups, gk, D, r0, r1, lab, sq);
      accumulate_rows<T>(xp, lab, w, r0, r1, D, sums, cnt, wsums);
    }
  });
  reduce_partials<T>(part.get(), pcnt.get(), pw.get(), ch.count, K, D, cp, out, counts, wout);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kmeans_lloyd_step_cpu(
    const at::Tensor& x_in, const at::Tensor& c_in, int64_t precision, const std::optional<at::Tensor>& groups_in,
    int64_t group_k, const std::optional<at::Tensor>& weights_in) {
  check_kmeans_assign(x_in, c_in, precision, groups_in, group_k);
  const auto xc = points_and_centers(x_in, c_in);
  const at::Tensor x = xc.first, c = xc.second;
  const auto acc = x.scalar_type();
  const int64_t N = x.size(0), D = x.size(1), K = c.size(0);
  at::Tensor groups;
  if (groups_in.has_value()) {
    groups = groups_in->detach().to(at::kLong).contiguous();
  }
  const at::Tensor w = row_weights(weights_in, N, acc);
  const LloydChunks ch = lloyd_chunks(N, K, D, dense_rows(K));
  if (N == 0 || D == 0 || ch.count == 0) {  // nothing to fuse, or too many partial sums: two passes
    auto [labels, sqdist] = kmeans_assign_cpu(x, c, precision, groups_in, group_k);
    auto [centers, counts] = kmeans_update_cpu(x, labels, K, c, true, weights_in);
    return {labels, sqdist, centers, counts};
  }
  at::Tensor labels = at::empty({N}, x.options().dtype(at::kLong));
  at::Tensor sqdist = at::empty({N}, x.options());
  at::Tensor centers = at::empty({K, D}, x.options());
  at::Tensor counts = at::empty({K}, x.options().dtype(at::kLong));
  at::Tensor wsum = w.defined() ? at::empty({K}, x.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(acc, "kmeans_lloyd_step_cpu", [&] {
    lloyd_step_fused<scalar_t>(x, c, groups.defined() ? groups.data_ptr<int64_t>() : nullptr, group_k,
                               w.defined() ? w.data_ptr<scalar_t>() : nullptr, ch, labels.data_ptr<int64_t>(),
                               sqdist.data_ptr<scalar_t>(), centers.data_ptr<scalar_t>(), counts.data_ptr<int64_t>(),
                               w.defined() ? wsum.data_ptr<scalar_t>() : nullptr);
  });
  return {labels, sqdist, centers, w.defined() ? wsum : counts};
}

// ------------------------------------------------------------------ k-means++ (kmeans_plusplus.h)

at::Tensor kmeans_plusplus_cpu(const at::Tensor& x_in, const at::Tensor& offsets_in, int64_t k,
                               const at::Tensor& first_in, const at::Tensor& draws_in,
                               const std::optional<at::Tensor>& weights_in) {
  check_matrix(x_in, "x");
  const auto acc = acc_type(x_in.scalar_type());
  const at::Tensor x = x_in.detach().to(acc).contiguous();
  const at::Tensor offsets = offsets_in.detach().to(at::kLong).contiguous();
  const at::Tensor first = first_in.detach().to(at::kLong).contiguous();
  const at::Tensor draws = draws_in.detach().to(at::kDouble).contiguous();
  const at::Tensor w = row_weights(weights_in, x.size(0), acc);
  const int64_t G = offsets.numel() - 1;
  TORCH_CHECK(G >= 0 && first.numel() == G, "first must have one entry per segment");
  check_plusplus_draws(draws, k, G);
  const int64_t* op = offsets.data_ptr<int64_t>();
  check_segment_rows(op, G, k);
  at::Tensor indices = at::empty({G, k}, x.options().dtype(at::kLong));
  if (G == 0 || k == 0) return indices;
  AT_DISPATCH_FLOATING_TYPES(acc, "kmeans_plusplus_cpu", [&] {
    plusplus_impl<scalar_t>(x.data_ptr<scalar_t>(), x.size(0), x.size(1), op, G, k, first.data_ptr<int64_t>(),
                            draws.data_ptr<double>(), draws.size(2), indices.data_ptr<int64_t>(),
                            w.defined() ? w.data_ptr<scalar_t>() : nullptr);
  });
  return indices;
}

}  // namespace

TORCH_LIBRARY_IMPL(clustr_fast, CPU, m) {
  m.impl("kmeans_assign", &kmeans_assign_cpu);
  m.impl("kmeans_update", &kmeans_update_cpu);
  m.impl("kmeans_plusplus", &kmeans_plusplus_cpu);
  m.impl("kmeans_lloyd_step", &kmeans_lloyd_step_cpu);
}

}  // namespace clustr_fast
