// Row kernels shared by the CPU k-means sources (kmeans.cpp, kmeans_groups.cpp): the work
// scheduler, 32-byte vectors (also used by center_panels.h and soft_cluster_logits.cpp),
// squared distances of one row to a few centers, the nearest of a few centers, and the float64 row
// sums (plain and weighted) of the Lloyd update.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>

#include "common.h"

namespace clustr_fast {
namespace {

// body(state, i) for every i in [0, n) on the intra-op threads, each thread with its own
// state = init(); items are handed out one at a time, so a thread that the OS preempts (a busy
// machine) holds back at most one item. What an item writes must not depend on the thread.
template <typename Init, typename Body>
void parallel_items(int64_t n, const Init& init, const Body& body) {
  if (n <= 0) return;
  const int64_t threads = std::min<int64_t>(n, at::get_num_threads());
  if (threads <= 1 || at::in_parallel_region()) {
    auto state = init();
    for (int64_t i = 0; i < n; ++i) body(state, i);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    auto state = init();
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) body(state, i);
  });
}

// 32-byte vectors (GCC/Clang vector extensions; split in two on targets without AVX).
template <typename T>
struct Vec32;
template <>
struct Vec32<float> {
  typedef float type __attribute__((vector_size(32)));
  static constexpr int W = 8;
};
template <>
struct Vec32<double> {
  typedef double type __attribute__((vector_size(32)));
  static constexpr int W = 4;
};

// out[t] = ||xi - c[t]||^2 (Dot = false) or xi . c[t] (Dot = true) for NT rows c[t] at once:
// each chunk of xi is loaded once and the sums stay in registers; one horizontal sum per row c[t]
// at the end. Few rows get U interleaved partial sums each, so that about 8 independent FMA
// chains hide the FMA latency (with 2 rows and one sum each, a long row is latency-bound).
template <typename T, int NT, bool Dot>
inline __attribute__((always_inline)) void row_to_few(const T* xi, const T* const* c, int64_t D, T* out) {
  using V = typename Vec32<T>::type;
  constexpr int W = Vec32<T>::W;
  constexpr int U = NT >= 5 ? 1 : (NT >= 3 ? 2 : (NT == 2 ? 4 : 8));
  V acc[U][NT];
  for (int u = 0; u < U; ++u)
    for (int t = 0; t < NT; ++t) acc[u][t] = V{};
  int64_t j = 0;
  for (; j + U * W <= D; j += U * W) {
    for (int u = 0; u < U; ++u) {
      V xv;
      std::memcpy(&xv, xi + j + u * W, sizeof(V));
      for (int t = 0; t < NT; ++t) {
        V cv;
        std::memcpy(&cv, c[t] + j + u * W, sizeof(V));
        if constexpr (Dot) {
          acc[u][t] += xv * cv;
        } else {
          const V df = xv - cv;
          acc[u][t] += df * df;
        }
      }
    }
  }
  for (; j + W <= D; j += W) {
    V xv;
    std::memcpy(&xv, xi + j, sizeof(V));
    for (int t = 0; t < NT; ++t) {
      V cv;
      std::memcpy(&cv, c[t] + j, sizeof(V));
      if constexpr (Dot) {
        acc[0][t] += xv * cv;
      } else {
        const V df = xv - cv;
        acc[0][t] += df * df;
      }
    }
  }
  for (int t = 0; t < NT; ++t) {
    for (int u = 1; u < U; ++u) acc[0][t] += acc[u][t];
    T v = 0;
    for (int l = 0; l < W; ++l) v += acc[0][t][l];
    for (int64_t e = j; e < D; ++e) v += Dot ? xi[e] * c[t][e] : (xi[e] - c[t][e]) * (xi[e] - c[t][e]);
    out[t] = v;
  }
}

// row_to_few for any number of rows c[t], in groups of at most 8.
template <typename T, bool Dot>
inline __attribute__((always_inline)) void row_to_many(const T* xi, const T* const* c, int64_t nc, int64_t D,
                                                       T* out) {
  for (int64_t t0 = 0; t0 < nc; t0 += 8) {
    const T* const* cc = c + t0;
    T* o = out + t0;
    switch (std::min<int64_t>(8, nc - t0)) {
      case 1: row_to_few<T, 1, Dot>(xi, cc, D, o); break;
      case 2: row_to_few<T, 2, Dot>(xi, cc, D, o); break;
      case 3: row_to_few<T, 3, Dot>(xi, cc, D, o); break;
      case 4: row_to_few<T, 4, Dot>(xi, cc, D, o); break;
      case 5: row_to_few<T, 5, Dot>(xi, cc, D, o); break;
      case 6: row_to_few<T, 6, Dot>(xi, cc, D, o); break;
      case 7: row_to_few<T, 7, Dot>(xi, cc, D, o); break;
      default: row_to_few<T, 8, Dot>(xi, cc, D, o); break;
    }
  }
}

// out[t] = ||xi - c[t]||^2 for any number of centers.
template <typename T>
inline __attribute__((always_inline)) void sqdist_to_many(const T* xi, const T* const* c, int64_t nc, int64_t D,
                                                          T* out) {
  row_to_many<T, false>(xi, c, nc, D, out);
}

// out[t] = ||xi - c_{rows[t]}||^2 for t in [0, n) (rows null: c_t), c [*, D] contiguous; 8 rows
// of c per pass over xi (each load of xi serves 8 independent sums).
template <typename T>
inline __attribute__((always_inline)) void sqdist_to_rows(const T* xi, const T* c, const int64_t* rows, int64_t n,
                                                          int64_t D, T* out) {
  constexpr int64_t kPass = 8;
  const T* cs[kPass];
  for (int64_t t0 = 0; t0 < n; t0 += kPass) {
    const int64_t nc = std::min(kPass, n - t0);
    for (int64_t t = 0; t < nc; ++t) cs[t] = c + (rows != nullptr ? rows[t0 + t] : t0 + t) * D;
    row_to_many<T, false>(xi, cs, nc, D, out + t0);
  }
}

// argmin_j ||xi - c_j||^2 over the k rows of c [k, D] (the first minimum) by explicit differences,
// 16 centers at a time (sqdist_to_rows); *best (when given) gets the minimum.
template <typename T>
inline __attribute__((always_inline)) int64_t nearest_by_differences(const T* xi, const T* c, int64_t k, int64_t D,
                                                                     T* best = nullptr) {
  constexpr int64_t kPass = 16;
  T dist[kPass];
  T low = std::numeric_limits<T>::infinity();
  int64_t arg = 0;
  for (int64_t j0 = 0; j0 < k; j0 += kPass) {
    const int64_t nc = std::min(kPass, k - j0);
    sqdist_to_rows<T>(xi, c + j0 * D, nullptr, nc, D, dist);
    for (int64_t j = 0; j < nc; ++j) {
      if (dist[j] < low) {
        low = dist[j];
        arg = j0 + j;
      }
    }
  }
  if (best != nullptr) *best = low;
  return arg;
}

// acc[j] += row[j] in float64.
template <typename T>
inline __attribute__((always_inline)) void add_row(double* acc, const T* row, int64_t d) {
#pragma omp simd
  for (int64_t j = 0; j < d; ++j) acc[j] += static_cast<double>(row[j]);
}
CLUSTR_VEC_CLONES void add_row_f(double* a, const float* r, int64_t d) { add_row<float>(a, r, d); }
CLUSTR_VEC_CLONES void add_row_d(double* a, const double* r, int64_t d) { add_row<double>(a, r, d); }
inline void add_row_any(double* a, const float* r, int64_t d) { add_row_f(a, r, d); }
inline void add_row_any(double* a, const double* r, int64_t d) { add_row_d(a, r, d); }

// acc[j] += w * row[j] in float64 (the weighted Lloyd update).
template <typename T>
inline __attribute__((always_inline)) void add_row_scaled(double* acc, const T* row, double w, int64_t d) {
#pragma omp simd
  for (int64_t j = 0; j < d; ++j) acc[j] += w * static_cast<double>(row[j]);
}
CLUSTR_VEC_CLONES void add_row_scaled_f(double* a, const float* r, double w, int64_t d) {
  add_row_scaled<float>(a, r, w, d);
}
CLUSTR_VEC_CLONES void add_row_scaled_d(double* a, const double* r, double w, int64_t d) {
  add_row_scaled<double>(a, r, w, d);
}
inline void add_row_scaled_any(double* a, const float* r, double w, int64_t d) { add_row_scaled_f(a, r, w, d); }
inline void add_row_scaled_any(double* a, const double* r, double w, int64_t d) { add_row_scaled_d(a, r, w, d); }

}  // namespace
}  // namespace clustr_fast
