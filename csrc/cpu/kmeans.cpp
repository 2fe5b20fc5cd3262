// k-means on the CPU: fused assignment, deterministic Lloyd update, and the
// whole greedy k-means++ seeding loop, all batched over segments (groups).
//
//   kmeans_assign:   labels[i] = argmin_k ||x_i - c_k||^2 (first minimum), sqdist[i] = that minimum.
//                    Dense: one BLAS product per (row block, center chunk), consumed at once by an
//                    argmin epilogue (no [N,K] buffer). Grouped: row i only sees the centers
//                    [groups[i]*group_k, (groups[i]+1)*group_k), by explicit differences.
//   kmeans_update:   centers[j] = mean of the rows labelled j (prev_centers[j] or 0 when empty),
//                    counts[j]; a counting sort by label, then one ordered sum per cluster
//                    (float64 accumulators): deterministic for any thread count.
//   kmeans_plusplus: greedy D^2 seeding in every segment [offsets[g], offsets[g+1]) of x; the T
//                    candidate distances of a step are computed in one pass over x and the
//                    min-distance update reuses them, so each step reads x once.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CLUSTR_VEC_CLONES __attribute__((target_clones("arch=haswell", "default")))
#else
#define CLUSTR_VEC_CLONES
#endif

namespace clustr_fast {
namespace {

template <typename T>
inline __attribute__((always_inline)) T row_sqdist(const T* a, const T* b, int64_t d) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < d; ++j) {
    const T t = a[j] - b[j];
    s += t * t;
  }
  return s;
}

// ------------------------------------------------------------------ assign

// tile[i,k] <- cn[k] - 2 tile[i,k]; keeps the first minimum of each row in best/lab.
template <typename T>
inline __attribute__((always_inline)) void argmin_epilogue(T* tile, const T* cn, int64_t rows, int64_t kc,
                                                           int64_t k0, T* best, int64_t* lab) {
  for (int64_t i = 0; i < rows; ++i) {
    T* row = tile + i * kc;
    T m = std::numeric_limits<T>::infinity();
#pragma omp simd reduction(min : m)
    for (int64_t k = 0; k < kc; ++k) {
      row[k] = cn[k] - T(2) * row[k];
      m = std::min(m, row[k]);
    }
    if (m < best[i]) {
      int64_t k = 0;
      while (k + 1 < kc && !(row[k] == m)) ++k;
      best[i] = m;
      lab[i] = k0 + k;
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

template <typename T>
void assign_dense(const at::Tensor& x, const at::Tensor& c, at::Tensor& labels, at::Tensor& sqdist) {
  const int64_t N = x.size(0), K = c.size(0), D = x.size(1);
  std::vector<T> cn(K);
  row_norms_any(c.data_ptr<T>(), K, D, cn.data());
  const at::Tensor ct = c.t();
  constexpr int64_t RB = 256, KC = 256;
  const int64_t nblk = (N + RB - 1) / RB;
  const T* xp = x.data_ptr<T>();
  T* sq = sqdist.data_ptr<T>();
  int64_t* lab = labels.data_ptr<int64_t>();
  at::parallel_for(0, nblk, 1, [&](int64_t b0, int64_t b1) {
    at::Tensor tile = at::empty({RB * std::min(K, KC)}, x.options());
    std::vector<T> best(RB), xn(RB);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * RB, rows = std::min(RB, N - r0);
      std::fill(best.begin(), best.end(), std::numeric_limits<T>::infinity());
      const at::Tensor xb = x.narrow(0, r0, rows);
      for (int64_t k0 = 0; k0 < K; k0 += KC) {
        const int64_t kc = std::min(KC, K - k0);
        at::Tensor tv = tile.narrow(0, 0, rows * kc).view({rows, kc});
        at::mm_out(tv, xb, ct.narrow(1, k0, kc));
        argmin_epilogue_any(tv.data_ptr<T>(), cn.data() + k0, rows, kc, k0, best.data(), lab + r0);
      }
      row_norms_any(xp + r0 * D, rows, D, xn.data());
      for (int64_t i = 0; i < rows; ++i) {
        const T v = xn[i] + best[i];
        sq[r0 + i] = v > T(0) ? v : T(0);
      }
    }
  });
}

template <typename T>
inline __attribute__((always_inline)) void assign_grouped_rows(const T* x, const T* c, const int64_t* groups,
                                                               int64_t gk, int64_t d, int64_t i0, int64_t i1,
                                                               int64_t* lab, T* sq) {
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t base = groups[i] * gk;
    T best = std::numeric_limits<T>::infinity();
    int64_t arg = base;
    for (int64_t j = 0; j < gk; ++j) {
      const T v = row_sqdist(x + i * d, c + (base + j) * d, d);
      if (v < best) {
        best = v;
        arg = base + j;
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

std::tuple<at::Tensor, at::Tensor> kmeans_assign_cpu(const at::Tensor& x_in, const at::Tensor& c_in,
                                                     int64_t precision, const std::optional<at::Tensor>& groups_in,
                                                     int64_t group_k) {
  check_matrix(x_in, "x");
  check_matrix(c_in, "centers");
  check_precision(precision);
  TORCH_CHECK(x_in.size(1) == c_in.size(1), "x and centers must have the same number of columns");
  TORCH_CHECK(c_in.size(0) >= 1, "centers must have at least one row");
  const auto acc = acc_type(x_in.scalar_type());
  const at::Tensor x = x_in.detach().to(acc).contiguous();
  const at::Tensor c = c_in.detach().to(acc).contiguous();
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
inline __attribute__((always_inline)) void add_row(double* acc, const T* row, int64_t d) {
#pragma omp simd
  for (int64_t j = 0; j < d; ++j) acc[j] += static_cast<double>(row[j]);
}
CLUSTR_VEC_CLONES void add_row_f(double* a, const float* r, int64_t d) { add_row<float>(a, r, d); }
CLUSTR_VEC_CLONES void add_row_d(double* a, const double* r, int64_t d) { add_row<double>(a, r, d); }
inline void add_row_any(double* a, const float* r, int64_t d) { add_row_f(a, r, d); }
inline void add_row_any(double* a, const double* r, int64_t d) { add_row_d(a, r, d); }

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

// ------------------------------------------------------------------ k-means++

// Rows of every segment cut into blocks of at most `bs` rows; the blocks of segment g are
// [gblk[g], gblk[g+1]).
struct SegmentBlocks {
  std::vector<int64_t> start, end, group, gblk;
};

SegmentBlocks make_blocks(const int64_t* offsets, int64_t G, int64_t bs) {
  SegmentBlocks b;
  b.gblk.push_back(0);
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t r = offsets[g]; r < offsets[g + 1]; r += bs) {
      b.start.push_back(r);
      b.end.push_back(std::min(offsets[g + 1], r + bs));
      b.group.push_back(g);
    }
    b.gblk.push_back(static_cast<int64_t>(b.start.size()));
  }
  return b;
}

// dc[t*N + i] = ||x_i - x_{cand_t}||^2 for the rows [i0, i1); part[t] = sum_i min(closest_i, dc).
template <typename T>
inline __attribute__((always_inline)) void eval_candidates(const T* x, int64_t N, int64_t D, const int64_t* cand,
                                                           int64_t nt, const T* closest, int64_t i0, int64_t i1,
                                                           T* dc, double* part) {
  for (int64_t t = 0; t < nt; ++t) part[t] = 0.0;
  for (int64_t i = i0; i < i1; ++i) {
    const T* xi = x + i * D;
    for (int64_t t = 0; t < nt; ++t) {
      const T v = row_sqdist(xi, x + cand[t] * D, D);
      dc[t * N + i] = v;
      part[t] += static_cast<double>(std::min(v, closest[i]));
    }
  }
}
CLUSTR_VEC_CLONES void eval_candidates_f(const float* x, int64_t N, int64_t D, const int64_t* cand, int64_t nt,
                                         const float* cl, int64_t i0, int64_t i1, float* dc, double* part) {
  eval_candidates<float>(x, N, D, cand, nt, cl, i0, i1, dc, part);
}
CLUSTR_VEC_CLONES void eval_candidates_d(const double* x, int64_t N, int64_t D, const int64_t* cand, int64_t nt,
                                         const double* cl, int64_t i0, int64_t i1, double* dc, double* part) {
  eval_candidates<double>(x, N, D, cand, nt, cl, i0, i1, dc, part);
}
inline void eval_candidates_any(const float* x, int64_t N, int64_t D, const int64_t* cand, int64_t nt,
                                const float* cl, int64_t i0, int64_t i1, float* dc, double* part) {
  eval_candidates_f(x, N, D, cand, nt, cl, i0, i1, dc, part);
}
inline void eval_candidates_any(const double* x, int64_t N, int64_t D, const int64_t* cand, int64_t nt,
                                const double* cl, int64_t i0, int64_t i1, double* dc, double* part) {
  eval_candidates_d(x, N, D, cand, nt, cl, i0, i1, dc, part);
}

// One D^2 draw in segment g: the first row whose running weight exceeds u * total, weights
// closest[i] (or 1 for rows not chosen yet when every closest distance is 0).
template <typename T>
int64_t sample_row(const SegmentBlocks& blk, int64_t g, double u, const double* wsum, const double* wfree,
                   const T* closest, const uint8_t* chosen) {
  double total = 0.0, free = 0.0;
  for (int64_t b = blk.gblk[g]; b < blk.gblk[g + 1]; ++b) {
    total += wsum[b];
    free += wfree[b];
  }
  const bool use_free = !(total > 0.0);
  const double target = u * (use_free ? free : total);
  double cum = 0.0;
  int64_t found = -1, last_pos = -1;
  for (int64_t b = blk.gblk[g]; b < blk.gblk[g + 1]; ++b) {
    const double w = use_free ? wfree[b] : wsum[b];
    if (w > 0.0) last_pos = b;
    if (cum + w > target) {
      found = b;
      break;
    }
    cum += w;
  }
  const int64_t b = found >= 0 ? found : (last_pos >= 0 ? last_pos : blk.gblk[g]);
  int64_t pick = -1, last_row = blk.start[b];
  for (int64_t i = blk.start[b]; i < blk.end[b]; ++i) {
    const double w = use_free ? (chosen[i] ? 0.0 : 1.0) : static_cast<double>(closest[i]);
    if (w > 0.0) last_row = i;
    cum += w;
    if (found >= 0 && cum > target) {
      pick = i;
      break;
    }
  }
  return pick >= 0 ? pick : last_row;
}

// Candidate distances of one block by one BLAS product, ||x||^2 + ||c||^2 - 2 x.c, with the
// values in the cancellation zone (below 1e-3 (||x||^2 + ||c||^2)) recomputed by explicit
// differences, so points on or near a candidate get exact distances (0 for duplicates).
template <typename T>
void eval_candidates_gemm(const at::Tensor& x, const T* xn, const at::Tensor& cmat, const T* cn, int64_t nt,
                          const T* closest, int64_t i0, int64_t i1, T* dc, double* part, at::Tensor& buf) {
  const int64_t N = x.size(0), D = x.size(1), rows = i1 - i0;
  at::Tensor out = buf.narrow(0, 0, rows * nt).view({rows, nt});
  at::mm_out(out, x.narrow(0, i0, rows), cmat.t());
  const T* o = out.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  const T* cp = cmat.data_ptr<T>();
  for (int64_t t = 0; t < nt; ++t) part[t] = 0.0;
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t r = i0 + i;
    for (int64_t t = 0; t < nt; ++t) {
      const T scale = xn[r] + cn[t];
      T v = scale - T(2) * o[i * nt + t];
      if (v < T(1e-3) * scale) v = row_sqdist(xp + r * D, cp + t * D, D);
      dc[t * N + r] = v;
      part[t] += static_cast<double>(std::min(v, closest[r]));
    }
  }
}

template <typename T>
void plusplus_impl(const at::Tensor& x, const int64_t* offsets, int64_t G, int64_t k, const int64_t* first,
                   const double* draws, int64_t nt, int64_t* indices) {
  const int64_t N = x.size(0), D = x.size(1);
  const T* xp = x.data_ptr<T>();
  const SegmentBlocks blk = make_blocks(offsets, G, 512);
  const int64_t NB = static_cast<int64_t>(blk.start.size());
  std::vector<T> closest(N, std::numeric_limits<T>::infinity()), dc(nt * N);
  std::vector<uint8_t> chosen(N, 0);
  std::vector<double> wsum(NB), wfree(NB), part(NB * nt);
  at::Tensor cand_t = at::empty({G * nt}, x.options().dtype(at::kLong));
  int64_t* cand_p = cand_t.data_ptr<int64_t>();
  std::vector<int64_t> best(G);
  struct CandView {
    int64_t* p;
    int64_t* data() const { return p; }
    int64_t& operator[](int64_t i) const { return p[i]; }
  } cand{cand_p};
  // BLAS products pay off once rows are long and blocks hold many rows
  const bool use_gemm = D >= 16 && N >= 64 * G;
  std::vector<T> xn(use_gemm ? N : 0);
  if (use_gemm)
    at::parallel_for(0, N, 4096, [&](int64_t i0, int64_t i1) { row_norms_any(xp + i0 * D, i1 - i0, D, xn.data() + i0); });
  for (int64_t s = 0; s < k; ++s) {
    for (int64_t g = 0; g < G; ++g)
      for (int64_t t = 0; t < nt; ++t)
        cand[g * nt + t] = s == 0 ? first[g]
                                  : sample_row<T>(blk, g, draws[((s - 1) * G + g) * nt + t], wsum.data(),
                                                  wfree.data(), closest.data(), chosen.data());
    // one pass over x: distances to the candidates and their partial potentials
    if (use_gemm) {
      std::vector<at::Tensor> cmats(G);
      std::vector<T> cns(G * nt);
      for (int64_t g = 0; g < G; ++g) {
        cmats[g] = x.index_select(0, cand_t.narrow(0, g * nt, nt)).contiguous();
        row_norms_any(cmats[g].data_ptr<T>(), nt, D, cns.data() + g * nt);
      }
      at::parallel_for(0, NB, 1, [&](int64_t b0, int64_t b1) {
        at::Tensor buf = at::empty({512 * nt}, x.options());
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t g = blk.group[b];
          eval_candidates_gemm<T>(x, xn.data(), cmats[g], cns.data() + g * nt, nt, closest.data(), blk.start[b],
                                  blk.end[b], dc.data(), part.data() + b * nt, buf);
        }
      });
    } else {
      at::parallel_for(0, NB, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b)
          eval_candidates_any(xp, N, D, cand.data() + blk.group[b] * nt, nt, closest.data(), blk.start[b],
                              blk.end[b], dc.data(), part.data() + b * nt);
      });
    }
    for (int64_t g = 0; g < G; ++g) {  // greedy choice: least potential, first on ties
      int64_t bt = 0;
      double bp = std::numeric_limits<double>::infinity();
      for (int64_t t = 0; t < nt; ++t) {
        double pot = 0.0;
        for (int64_t b = blk.gblk[g]; b < blk.gblk[g + 1]; ++b) pot += part[b * nt + t];
        if (pot < bp) {
          bp = pot;
          bt = t;
        }
      }
      best[g] = bt;
      indices[g * k + s] = cand[g * nt + bt];
      chosen[cand[g * nt + bt]] = 1;
    }
    if (s + 1 == k) break;
    // min-distance update from the stored candidate distances, with the block weights of the next draw
    at::parallel_for(0, NB, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const T* row = dc.data() + best[blk.group[b]] * N;
        double ws = 0.0, wf = 0.0;
        for (int64_t i = blk.start[b]; i < blk.end[b]; ++i) {
          const T v = std::min(closest[i], row[i]);
          closest[i] = v;
          ws += static_cast<double>(v);
          wf += chosen[i] ? 0.0 : 1.0;
        }
        wsum[b] = ws;
        wfree[b] = wf;
      }
    });
  }
}

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
    plusplus_impl<scalar_t>(x, op, G, k, first.data_ptr<int64_t>(), draws.data_ptr<double>(), draws.size(2),
                            indices.data_ptr<int64_t>());
  });
  return indices;
}

}  // namespace

TORCH_LIBRARY_IMPL(clustr_fast_C, CPU, m) {
  m.impl("kmeans_assign", &kmeans_assign_cpu);
  m.impl("kmeans_update", &kmeans_update_cpu);
  m.impl("kmeans_plusplus", &kmeans_plusplus_cpu);
}

}  // namespace clustr_fast
