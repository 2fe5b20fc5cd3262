// k-means on the CPU: fused assignment, deterministic Lloyd update, the fused Lloyd step, and
// the whole greedy k-means++ seeding loop, all batched over segments (groups).
//
//   kmeans_assign:     labels[i] = argmin_k ||x_i - c_k||^2 (first minimum), sqdist[i] = that minimum.
//                      Dense: one BLAS product per (row block, center chunk), consumed at once by an
//                      argmin epilogue (no [N,K] buffer). Grouped: row i only sees the centers
//                      [groups[i]*group_k, (groups[i]+1)*group_k), by explicit differences.
//   kmeans_update:     centers[j] = mean of the rows labelled j (prev_centers[j] or 0 when empty),
//                      counts[j]; a counting sort by label, then one ordered sum per cluster
//                      (float64 accumulators): deterministic for any thread count.
//   kmeans_lloyd_step: assign + update (prev_centers = centers) in one pass over x: each row block is
//                      assigned by the kernels above and summed at once into float64 partials of its
//                      fixed chunk; the partials are added in chunk order (deterministic).
//   kmeans_plusplus:   greedy D^2 seeding in every segment [offsets[g], offsets[g+1]) of x; each step
//                      is one parallel pass that folds in the last chosen center and computes the T
//                      candidate distances by explicit differences with their partial potentials.
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
#include "cpu/vec_math.h"

// CLUSTR_VEC_CLONES (common.h): AVX2+FMA clones of the hot loops, chosen at load time.

namespace clustr_fast {
namespace {

// ------------------------------------------------------------------ assign

// Row i of the tile becomes cn[k] - 2 tile[i,k] (its squared distances less ||x_i||^2); keeps the
// first minimum of each row in best/lab. Vector lanes track their own minimum and its index
// (strict <, so each lane keeps its first), then the lanes are merged by (value, index).
template <typename T>
inline __attribute__((always_inline)) void argmin_epilogue(T* tile, const T* cn, int64_t rows, int64_t kc,
                                                           int64_t k0, T* best, int64_t* lab) {
  using V = typename Vec32<T>::type;
  using I = decltype(V{} < V{});  // integer lanes of the same width
  constexpr int W = Vec32<T>::W;
  const int64_t kv = kc / W * W;
  I lane{};
  for (int l = 0; l < W; ++l) lane[l] = l;
  for (int64_t i = 0; i < rows; ++i) {
    const T* row = tile + i * kc;
    T m = std::numeric_limits<T>::infinity();
    int64_t arg = -1;
    if (kv > 0) {
      V bv, c, r;
      I bi = lane;
      std::memcpy(&c, cn, sizeof(V));
      std::memcpy(&r, row, sizeof(V));
      bv = c - T(2) * r;
      for (int64_t k = W; k < kv; k += W) {
        std::memcpy(&c, cn + k, sizeof(V));
        std::memcpy(&r, row + k, sizeof(V));
        const V v = c - T(2) * r;
        const I lt = v < bv;
        bv = lt ? v : bv;
        bi = lt ? lane + static_cast<typename std::remove_reference<decltype(lane[0])>::type>(k) : bi;
      }
      for (int l = 0; l < W; ++l)
        if (bv[l] < m || (bv[l] == m && bi[l] < arg)) {
          m = bv[l];
          arg = bi[l];
        }
    }
    for (int64_t k = kv; k < kc; ++k) {
      const T v = cn[k] - T(2) * row[k];
      if (v < m) {
        m = v;
        arg = k;
      }
    }
    if (m < best[i]) {
      best[i] = m;
      lab[i] = k0 + arg;
    }
  }
}

CLUSTR_VEC_CLONES void argmin_epilogue_f(float* t, const float* cn, int64_t r, int64_t kc, int64_t k0,
                                          float* b, int64_t* l) {
  argmin_epilogue<float>(t, cn, r, kc, k0, b, l);
}
CLUSTR_VEC_CLONES void argmin_epilogue_d(double* t, const double* cn, int64_t r, int64_t kc, int64_t k0,
                                          double* b, int64_t* l) {
  argmin_epilogue<double>(t, cn, r, kc, k0, b, l);
}
inline void argmin_epilogue_any(float* t, const float* cn, int64_t r, int64_t kc, int64_t k0, float* b,
                                int64_t* l) {
  argmin_epilogue_f(t, cn, r, kc, k0, b, l);
}
inline void argmin_epilogue_any(double* t, const double* cn, int64_t r, int64_t kc, int64_t k0, double* b,
                                int64_t* l) {
  argmin_epilogue_d(t, cn, r, kc, k0, b, l);
}

template <typename T>
inline __attribute__((always_inline)) void row_norms(const T* x, int64_t rows, int64_t d, T* out) {
  for (int64_t i = 0; i < rows; ++i) {
    T s = 0;
    const T* xi = x + i * d;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < d; ++j) s += xi[j] * xi[j];
    out[i] = s;
  }
}
CLUSTR_VEC_CLONES void row_norms_f(const float* x, int64_t r, int64_t d, float* o) { row_norms<float>(x, r, d, o); }
CLUSTR_VEC_CLONES void row_norms_d(const double* x, int64_t r, int64_t d, double* o) { row_norms<double>(x, r, d, o); }
inline void row_norms_any(const float* x, int64_t r, int64_t d, float* o) { row_norms_f(x, r, d, o); }
inline void row_norms_any(const double* x, int64_t r, int64_t d, double* o) { row_norms_d(x, r, d, o); }

// Centers per BLAS product, and rows per BLAS block: a product tile of about 64K values (it
// stays in L2), at least 256 rows, so that few centers still make few, large products.
constexpr int64_t kDenseCenters = 256;
inline int64_t dense_rows(int64_t K) {
  return std::clamp<int64_t>(65536 / std::clamp<int64_t>(K, 1, kDenseCenters), 256, 2048);
}

// Centers prepared for the BLAS form ||x||^2 + ||c||^2 - 2 x.c: c^T and the squared norms.
template <typename T>
struct DenseCenters {
  static constexpr int64_t KC = kDenseCenters;
  const int64_t RB;  // rows per BLAS block
  at::Tensor ct;
  std::vector<T> cn;
  explicit DenseCenters(const at::Tensor& c) : RB(dense_rows(c.size(0))), ct(c.t()), cn(c.size(0)) {
    row_norms_any(c.data_ptr<T>(), c.size(0), c.size(1), cn.data());
  }
};

// Per-thread buffers of the dense assignment: the product tile and per-row minima / norms.
template <typename T>
struct DenseScratch {
  at::Tensor tile;
  std::vector<T> best, xn;
  DenseScratch(const at::Tensor& x, int64_t K)
      : tile(at::empty({dense_rows(K) * std::min(K, kDenseCenters)}, x.options())),
        best(dense_rows(K)),
        xn(dense_rows(K)) {}
};

// Nearest center of the rows [r0, r0 + rows), rows <= c.RB: one BLAS product per center chunk,
// consumed at once by the argmin epilogue.
template <typename T>
void assign_dense_block(const at::Tensor& x, const DenseCenters<T>& c, int64_t r0, int64_t rows,
                        DenseScratch<T>& s, int64_t* lab, T* sq) {
  const int64_t K = static_cast<int64_t>(c.cn.size()), D = x.size(1), KC = DenseCenters<T>::KC;
  std::fill(s.best.begin(), s.best.begin() + rows, std::numeric_limits<T>::infinity());
  std::fill(lab + r0, lab + r0 + rows, int64_t(0));  // rows whose distances all overflow keep label 0
  const at::Tensor xb = x.narrow(0, r0, rows);
  for (int64_t k0 = 0; k0 < K; k0 += KC) {
    const int64_t kc = std::min(KC, K - k0);
    at::Tensor tv = s.tile.narrow(0, 0, rows * kc).view({rows, kc});
    at::mm_out(tv, xb, c.ct.narrow(1, k0, kc));
    argmin_epilogue_any(tv.data_ptr<T>(), c.cn.data() + k0, rows, kc, k0, s.best.data(), lab + r0);
  }
  row_norms_any(x.data_ptr<T>() + r0 * D, rows, D, s.xn.data());
  for (int64_t i = 0; i < rows; ++i) {
    const T v = s.xn[i] + s.best[i];
    sq[r0 + i] = v > T(0) ? v : T(0);
  }
}

template <typename T>
void assign_dense(const at::Tensor& x, const at::Tensor& c, at::Tensor& labels, at::Tensor& sqdist) {
  const int64_t N = x.size(0), RB = dense_rows(c.size(0));
  const DenseCenters<T> dc(c);
  const int64_t nblk = (N + RB - 1) / RB;
  T* sq = sqdist.data_ptr<T>();
  int64_t* lab = labels.data_ptr<int64_t>();
  at::parallel_for(0, nblk, 1, [&](int64_t b0, int64_t b1) {
    DenseScratch<T> s(x, c.size(0));
    for (int64_t b = b0; b < b1; ++b) assign_dense_block<T>(x, dc, b * RB, std::min(RB, N - b * RB), s, lab, sq);
  });
}

template <typename T>
inline __attribute__((always_inline)) void assign_grouped_rows(const T* x, const T* c, const int64_t* groups,
                                                               int64_t gk, int64_t d, int64_t i0, int64_t i1,
                                                               int64_t* lab, T* sq) {
  constexpr int64_t kFew = 16;  // up to kFew centers per group: the row is read once for all of them
  const T* cs[kFew];
  T dist[kFew];
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t base = groups[i] * gk;
    T best = std::numeric_limits<T>::infinity();
    int64_t arg = base;
    for (int64_t j0 = 0; j0 < gk; j0 += kFew) {
      const int64_t nc = std::min(kFew, gk - j0);
      for (int64_t j = 0; j < nc; ++j) cs[j] = c + (base + j0 + j) * d;
      sqdist_to_many<T>(x + i * d, cs, nc, d, dist);
      for (int64_t j = 0; j < nc; ++j) {
        if (dist[j] < best) {
          best = dist[j];
          arg = base + j0 + j;
        }
      }
    }
    lab[i] = arg;
    sq[i] = best;
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

// Checked, detached, contiguous (x, centers) in the accumulation dtype.
std::pair<at::Tensor, at::Tensor> points_and_centers(const at::Tensor& x_in, const at::Tensor& c_in,
                                                     int64_t precision) {
  check_matrix(x_in, "x");
  check_matrix(c_in, "centers");
  check_precision(precision);
  TORCH_CHECK(x_in.size(1) == c_in.size(1), "x and centers must have the same number of columns");
  TORCH_CHECK(c_in.size(0) >= 1, "centers must have at least one row");
  const auto acc = acc_type(x_in.scalar_type());
  const at::Tensor x = x_in.detach().to(acc).contiguous();
  const at::Tensor c = c_in.detach().to(acc).contiguous();
  return {x, c};
}

std::tuple<at::Tensor, at::Tensor> kmeans_assign_cpu(const at::Tensor& x_in, const at::Tensor& c_in,
                                                     int64_t precision, const std::optional<at::Tensor>& groups_in,
                                                     int64_t group_k) {
  const auto xc = points_and_centers(x_in, c_in, precision);
  const at::Tensor x = xc.first, c = xc.second;
  const auto acc = x.scalar_type();
  const int64_t N = x.size(0), D = x.size(1);
  at::Tensor labels = at::zeros({N}, x.options().dtype(at::kLong));
  at::Tensor sqdist = at::empty({N}, x.options());
  if (N == 0) return {labels, sqdist};
  if (groups_in.has_value()) {
    const at::Tensor groups = groups_in->detach().to(at::kLong).contiguous();
    TORCH_CHECK(groups.dim() == 1 && groups.size(0) == N, "groups must be 1-D of length N");
    TORCH_CHECK(group_k >= 1, "group_k must be >= 1");
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


template <typename T>
void update_sorted(const at::Tensor& x, const int64_t* lab, int64_t k, const T* prev, at::Tensor& centers,
                   int64_t* counts) {
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
      if (counts[j] == 0) {
        for (int64_t e = 0; e < D; ++e) out[e] = prev ? prev[j * D + e] : T(0);
        continue;
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t p = start[j]; p < start[j + 1]; ++p) add_row_any(acc.data(), xp + order[p] * D, D);
      const double inv = 1.0 / static_cast<double>(counts[j]);
      for (int64_t e = 0; e < D; ++e) out[e] = static_cast<T>(acc[e] * inv);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> kmeans_update_cpu(const at::Tensor& x_in, const at::Tensor& labels_in, int64_t k,
                                                     const std::optional<at::Tensor>& prev_in, bool deterministic) {
  (void)deterministic;  // always deterministic on the CPU
  check_matrix(x_in, "x");
  TORCH_CHECK(k >= 1, "k must be >= 1");
  const auto acc = acc_type(x_in.scalar_type());
  const at::Tensor x = x_in.detach().to(acc).contiguous();
  const at::Tensor labels = labels_in.detach().to(at::kLong).contiguous();
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == x.size(0), "labels must be 1-D of length N");
  at::Tensor prev;
  if (prev_in.has_value()) {
    prev = prev_in->detach().to(acc).contiguous();
    TORCH_CHECK(prev.size(0) == k && prev.size(1) == x.size(1), "prev_centers must be [k, d]");
  }
  at::Tensor centers = at::empty({k, x.size(1)}, x.options());
  at::Tensor counts = at::zeros({k}, x.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(acc, "kmeans_update_cpu", [&] {
    update_sorted<scalar_t>(x, labels.data_ptr<int64_t>(), k, prev.defined() ? prev.data_ptr<scalar_t>() : nullptr,
                            centers, counts.data_ptr<int64_t>());
  });
  return {centers, counts};
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

// sums[lab[i] - k0] += x_i (float64), counts[lab[i] - k0] += 1 for the rows [i0, i1).
template <typename T>
inline void accumulate_rows(const T* x, const int64_t* lab, int64_t i0, int64_t i1, int64_t D, double* sums,
                            int64_t* counts) {
  for (int64_t i = i0; i < i1; ++i) {
    add_row_any(sums + lab[i] * D, x + i * D, D);
    ++counts[lab[i]];
  }
}

// new_centers[j] = sum_c partial[c, j] / count[j] (centers[j] when the cluster is empty).
template <typename T>
void reduce_partials(const double* part, const int64_t* pcnt, int64_t nchunk, int64_t K, int64_t D, const T* prev,
                     T* out, int64_t* counts) {
  // a small reduction runs on one thread (a parallel region costs more on a busy machine)
  const int64_t grain = nchunk * K * D <= (int64_t(1) << 20) ? K : std::max<int64_t>(1, 4096 / std::max<int64_t>(D, 1));
  at::parallel_for(0, K, grain, [&](int64_t j0, int64_t j1) {
    std::vector<double> acc(D);
    for (int64_t j = j0; j < j1; ++j) {
      int64_t n = 0;
      for (int64_t c = 0; c < nchunk; ++c) n += pcnt[c * K + j];
      counts[j] = n;
      T* o = out + j * D;
      if (n == 0) {
        std::copy(prev + j * D, prev + (j + 1) * D, o);
        continue;
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t c = 0; c < nchunk; ++c) {
        const double* p = part + (c * K + j) * D;
#pragma omp simd
        for (int64_t e = 0; e < D; ++e) acc[e] += p[e];
      }
      const double inv = 1.0 / static_cast<double>(n);
      for (int64_t e = 0; e < D; ++e) o[e] = static_cast<T>(acc[e] * inv);
    }
  });
}

// One pass over x: nearest center of every row (the kmeans_assign kernels, so the labels are
// the same), and the float64 partial sums of the update, consumed right after each block.
template <typename T>
void lloyd_step_fused(const at::Tensor& x, const at::Tensor& c, const int64_t* groups, int64_t gk,
                      const LloydChunks& ch, int64_t* lab, T* sq, T* out, int64_t* counts) {
  const int64_t N = x.size(0), D = x.size(1), K = c.size(0), RB = dense_rows(K);
  const T* xp = x.data_ptr<T>();
  const T* cp = c.data_ptr<T>();
  std::unique_ptr<double[]> part(new double[ch.count * K * D]);  // each chunk zeroes its own
  std::unique_ptr<int64_t[]> pcnt(new int64_t[ch.count * K]);
  std::optional<DenseCenters<T>> dense;
  if (groups == nullptr) dense.emplace(c);
  auto init = [&] {
    std::optional<DenseScratch<T>> scratch;
    if (groups == nullptr) scratch.emplace(x, K);
    return scratch;
  };
  parallel_items(ch.count, init, [&](std::optional<DenseScratch<T>>& scratch, int64_t ci) {
    double* sums = part.get() + ci * K * D;
    int64_t* cnt = pcnt.get() + ci * K;
    std::fill(sums, sums + K * D, 0.0);
    std::fill(cnt, cnt + K, int64_t(0));
    const int64_t end = std::min(N, (ci + 1) * ch.rows);
    for (int64_t r0 = ci * ch.rows; r0 < end; r0 += RB) {
      const int64_t r1 = std::min(end, r0 + RB);
      if (groups == nullptr)
        assign_dense_block<T>(x, *dense, r0, r1 - r0, *scratch, lab, sq);
      else
        assign_grouped_any(xp, cp, groups, gk, D, r0, r1, lab, sq);
      accumulate_rows<T>(xp, lab, r0, r1, D, sums, cnt);
    }
  });
  reduce_partials<T>(part.get(), pcnt.get(), ch.count, K, D, cp, out, counts);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kmeans_lloyd_step_cpu(
    const at::Tensor& x_in, const at::Tensor& c_in, int64_t precision, const std::optional<at::Tensor>& groups_in,
    int64_t group_k) {
  const auto xc = points_and_centers(x_in, c_in, precision);
  const at::Tensor x = xc.first, c = xc.second;
  const auto acc = x.scalar_type();
  const int64_t N = x.size(0), D = x.size(1), K = c.size(0);
  at::Tensor groups;
  if (groups_in.has_value()) {
    groups = groups_in->detach().to(at::kLong).contiguous();
    TORCH_CHECK(groups.dim() == 1 && groups.size(0) == N, "groups must be 1-D of length N");
    TORCH_CHECK(group_k >= 1, "group_k must be >= 1");
  }
  const LloydChunks ch = lloyd_chunks(N, K, D, dense_rows(K));
  if (N == 0 || D == 0 || ch.count == 0) {  // nothing to fuse, or too many partial sums: two passes
    auto [labels, sqdist] = kmeans_assign_cpu(x, c, precision, groups_in, group_k);
    auto [centers, counts] = kmeans_update_cpu(x, labels, K, c, true);
    return {labels, sqdist, centers, counts};
  }
  at::Tensor labels = at::empty({N}, x.options().dtype(at::kLong));
  at::Tensor sqdist = at::empty({N}, x.options());
  at::Tensor centers = at::empty({K, D}, x.options());
  at::Tensor counts = at::empty({K}, x.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(acc, "kmeans_lloyd_step_cpu", [&] {
    lloyd_step_fused<scalar_t>(x, c, groups.defined() ? groups.data_ptr<int64_t>() : nullptr, group_k, ch,
                               labels.data_ptr<int64_t>(), sqdist.data_ptr<scalar_t>(), centers.data_ptr<scalar_t>(),
                               counts.data_ptr<int64_t>());
  });
  return {labels, sqdist, centers, counts};
}

// ------------------------------------------------------------------ k-means++ (kmeans_plusplus.h)

at::Tensor kmeans_plusplus_cpu(const at::Tensor& x_in, const at::Tensor& offsets_in, int64_t k,
                               const at::Tensor& first_in, const at::Tensor& draws_in) {
  check_matrix(x_in, "x");
  const auto acc = acc_type(x_in.scalar_type());
  const at::Tensor x = x_in.detach().to(acc).contiguous();
  const at::Tensor offsets = offsets_in.detach().to(at::kLong).contiguous();
  const at::Tensor first = first_in.detach().to(at::kLong).contiguous();
  const at::Tensor draws = draws_in.detach().to(at::kDouble).contiguous();
  const int64_t G = offsets.numel() - 1;
  TORCH_CHECK(G >= 0 && first.numel() == G, "first must have one entry per segment");
  TORCH_CHECK(draws.dim() == 3 && draws.size(0) == std::max<int64_t>(k - 1, 0) && draws.size(1) == G &&
                  draws.size(2) >= 1,
              "draws must have shape [k-1, G, T]");
  const int64_t* op = offsets.data_ptr<int64_t>();
  for (int64_t g = 0; g < G; ++g)
    TORCH_CHECK(op[g + 1] - op[g] >= k, "segment ", g, " has fewer than k rows");
  at::Tensor indices = at::empty({G, k}, x.options().dtype(at::kLong));
  if (G == 0 || k == 0) return indices;
  AT_DISPATCH_FLOATING_TYPES(acc, "kmeans_plusplus_cpu", [&] {
    plusplus_impl<scalar_t>(x.data_ptr<scalar_t>(), x.size(0), x.size(1), op, G, k, first.data_ptr<int64_t>(),
                            draws.data_ptr<double>(), draws.size(2), indices.data_ptr<int64_t>());
  });
  return indices;
}

}  // namespace

TORCH_LIBRARY_IMPL(clustr_fast_C, CPU, m) {
  m.impl("kmeans_assign", &kmeans_assign_cpu);
  m.impl("kmeans_update", &kmeans_update_cpu);
  m.impl("kmeans_plusplus", &kmeans_plusplus_cpu);
  m.impl("kmeans_lloyd_step", &kmeans_lloyd_step_cpu);
}

}  // namespace clustr_fast
