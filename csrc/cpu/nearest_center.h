// Nearest center of a block of rows on the CPU, without BLAS: a register-blocked product of
// kRows rows with a panel of 2 vectors of centers, consumed at once by a vector argmin.
//
//   score[i, j] = ||c_j||^2 - 2 x_i . c_j          (the squared distance less ||x_i||^2)
//   label[i]    = first j with the least score     sqdist[i] = max(||x_i||^2 + score, 0)
//
// The centers are packed once per call in panels of P = 2W (W lanes per 32-byte vector):
// panel p holds, for every coordinate k, the P values c[pP .. pP+P)[k] (zeros past K, whose
// norms are +inf so that they never win). A micro-tile keeps its kRows x 2 products in 12
// vector registers over the whole dot product (each panel value loaded once per kRows rows,
// each x value broadcast once per panel), then folds them into per-row, per-lane minima kept
// in memory. Lanes keep their first minimum (strict <, panels in order); the lanes of a row
// are merged by (value, index), so ties go to the lower index as in the BLAS form.
//
// Blocking: the panels of one center block (about kCenterBlockBytes, in L2) pass over every
// micro-tile of a row block in turn, so large K x d is read from L2, not from memory.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "common.h"
#include "cpu/kmeans_rows.h"

namespace clustr_fast {
namespace {

constexpr int kTileRows = 6;                         // rows per micro-tile (12 accumulators)
constexpr int64_t kCenterBlockBytes = int64_t(192) << 10;  // packed centers reused per row block

template <typename T>
struct NearestLanes {
  using V = typename Vec32<T>::type;
  using I = decltype(V{} < V{});  // integer lanes of the same width
  using Index = typename std::remove_reference<decltype(I{}[0])>::type;
  static constexpr int W = Vec32<T>::W;
  static constexpr int P = 2 * W;  // centers per panel
};

// Packs c [K, D] (contiguous) into panels; norms padded with +inf.
template <typename T>
void pack_centers(const T* c, int64_t K, int64_t D, T* pack, T* norms) {
  constexpr int P = NearestLanes<T>::P;
  const int64_t panels = (K + P - 1) / P;
  for (int64_t p = 0; p < panels; ++p) {
    T* dst = pack + p * D * P;
    for (int j = 0; j < P; ++j) {
      const int64_t row = p * P + j;
      if (row < K) {
        const T* src = c + row * D;
        T s = 0;
        for (int64_t k = 0; k < D; ++k) {
          dst[k * P + j] = src[k];
          s += src[k] * src[k];
        }
        norms[row] = s;
      } else {
        for (int64_t k = 0; k < D; ++k) dst[k * P + j] = T(0);
        norms[row] = std::numeric_limits<T>::infinity();
      }
    }
  }
}

// best/idx [R, P]: per-row, per-lane running minima of the scores and their center indices.
template <typename T, int R>
inline __attribute__((always_inline)) void nearest_micro_tile(const T* x, int64_t D, const T* panel,
                                                              const T* norms, int64_t base, T* best,
                                                              typename NearestLanes<T>::Index* idx) {
  using L = NearestLanes<T>;
  using V = typename L::V;
  using I = typename L::I;
  constexpr int W = L::W, P = L::P;
  V acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = V{};
  for (int64_t k = 0; k < D; ++k) {
    V b0, b1;
    std::memcpy(&b0, panel + k * P, sizeof(V));
    std::memcpy(&b1, panel + k * P + W, sizeof(V));
    for (int r = 0; r < R; ++r) {
      const T a = x[r * D + k];
      acc0[r] += a * b0;
      acc1[r] += a * b1;
    }
  }
  V n0, n1;
  std::memcpy(&n0, norms, sizeof(V));
  std::memcpy(&n1, norms + W, sizeof(V));
  I lane0, lane1;
  for (int l = 0; l < W; ++l) {
    lane0[l] = static_cast<typename L::Index>(base + l);
    lane1[l] = static_cast<typename L::Index>(base + W + l);
  }
  for (int r = 0; r < R; ++r) {
    V bv0, bv1;
    I bi0, bi1;
    std::memcpy(&bv0, best + r * P, sizeof(V));
    std::memcpy(&bv1, best + r * P + W, sizeof(V));
    std::memcpy(&bi0, idx + r * P, sizeof(I));
    std::memcpy(&bi1, idx + r * P + W, sizeof(I));
    const V s0 = n0 - T(2) * acc0[r], s1 = n1 - T(2) * acc1[r];
    const I lt0 = s0 < bv0, lt1 = s1 < bv1;
    bv0 = lt0 ? s0 : bv0;
    bv1 = lt1 ? s1 : bv1;
    bi0 = lt0 ? lane0 : bi0;
    bi1 = lt1 ? lane1 : bi1;
    std::memcpy(best + r * P, &bv0, sizeof(V));
    std::memcpy(best + r * P + W, &bv1, sizeof(V));
    std::memcpy(idx + r * P, &bi0, sizeof(I));
    std::memcpy(idx + r * P + W, &bi1, sizeof(I));
  }
}

// The panels [p0, p1) against R rows x[0, R).
template <typename T, int R>
inline __attribute__((always_inline)) void nearest_tile_panels(const T* x, int64_t D, const T* pack, const T* norms,
                                                               int64_t p0, int64_t p1, T* best,
                                                               typename NearestLanes<T>::Index* idx) {
  constexpr int P = NearestLanes<T>::P;
  for (int64_t p = p0; p < p1; ++p) nearest_micro_tile<T, R>(x, D, pack + p * D * P, norms + p * P, p * P, best, idx);
}

// The panels [p0, p1) against the rows x[0, rows): micro-tiles outside, so that a tile's rows
// and minima stay in L1 while the block's panels (L2) pass over them.
template <typename T>
inline __attribute__((always_inline)) void nearest_block(const T* x, int64_t rows, int64_t D, const T* pack,
                                                         const T* norms, int64_t p0, int64_t p1, T* best,
                                                         typename NearestLanes<T>::Index* idx) {
  constexpr int P = NearestLanes<T>::P;
  int64_t i = 0;
  for (; i + kTileRows <= rows; i += kTileRows) {
    // the next tile's rows, from memory while this tile computes
    const char* next = reinterpret_cast<const char*>(x + (i + kTileRows) * D);
    const int64_t bytes = std::min<int64_t>(kTileRows, rows - i - kTileRows) * D * int64_t(sizeof(T));
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(next + b);
    nearest_tile_panels<T, kTileRows>(x + i * D, D, pack, norms, p0, p1, best + i * P, idx + i * P);
  }
  const T* xr = x + i * D;
  T* b = best + i * P;
  auto* id = idx + i * P;
  switch (rows - i) {
    case 1: nearest_tile_panels<T, 1>(xr, D, pack, norms, p0, p1, b, id); break;
    case 2: nearest_tile_panels<T, 2>(xr, D, pack, norms, p0, p1, b, id); break;
    case 3: nearest_tile_panels<T, 3>(xr, D, pack, norms, p0, p1, b, id); break;
    case 4: nearest_tile_panels<T, 4>(xr, D, pack, norms, p0, p1, b, id); break;
    case 5: nearest_tile_panels<T, 5>(xr, D, pack, norms, p0, p1, b, id); break;
    default: break;
  }
}

// Centers packed for nearest_block, and the panels per center block.
template <typename T>
struct PackedCenters {
  static constexpr int P = NearestLanes<T>::P;
  int64_t K, D, panels, block_panels;
  std::vector<T> pack, norms;
  explicit PackedCenters(const at::Tensor& c)
      : K(c.size(0)),
        D(c.size(1)),
        panels((K + P - 1) / P),
        block_panels(std::max<int64_t>(1, kCenterBlockBytes / std::max<int64_t>(1, D * P * int64_t(sizeof(T))))),
        pack(panels * P * D),
        norms(panels * P) {
    pack_centers<T>(c.data_ptr<T>(), K, D, pack.data(), norms.data());
  }
};

// Per-thread lane minima of a row block.
template <typename T>
struct NearestScratch {
  std::vector<T> best;
  std::vector<typename NearestLanes<T>::Index> idx;
  explicit NearestScratch(int64_t rows) : best(rows * NearestLanes<T>::P), idx(rows * NearestLanes<T>::P) {}
};

// Nearest center of the rows x[r0, r0 + rows) (rows <= the scratch's rows): labels and
// max(||x||^2 + least score, 0). A row whose scores are all +inf or NaN keeps label 0.
template <typename T>
inline __attribute__((always_inline)) void nearest_centers(const T* x, int64_t r0, int64_t rows,
                                                           const PackedCenters<T>& c, NearestScratch<T>& s,
                                                           int64_t* lab, T* sq) {
  using Index = typename NearestLanes<T>::Index;
  constexpr int P = NearestLanes<T>::P;
  const int64_t D = c.D;
  const T* xb = x + r0 * D;
  for (int64_t i = 0; i < rows; ++i) {
    for (int l = 0; l < P; ++l) {
      s.best[i * P + l] = std::numeric_limits<T>::infinity();
      s.idx[i * P + l] = static_cast<Index>(l);
    }
  }
  for (int64_t p0 = 0; p0 < c.panels; p0 += c.block_panels)
    nearest_block<T>(xb, rows, D, c.pack.data(), c.norms.data(), p0, std::min(c.panels, p0 + c.block_panels),
                      s.best.data(), s.idx.data());
  using V = typename NearestLanes<T>::V;
  using I = typename NearestLanes<T>::I;
  constexpr int W = NearestLanes<T>::W;
  for (int64_t i = 0; i < rows; ++i) {
    // least (score, index) of the row's lanes: the two vectors lane by lane, then the W lanes
    V a0, a1;
    I j0, j1;
    std::memcpy(&a0, s.best.data() + i * P, sizeof(V));
    std::memcpy(&a1, s.best.data() + i * P + W, sizeof(V));
    std::memcpy(&j0, s.idx.data() + i * P, sizeof(I));
    std::memcpy(&j1, s.idx.data() + i * P + W, sizeof(I));
    const I take = (a1 < a0) | ((a1 == a0) & (j1 < j0));
    a0 = take ? a1 : a0;
    j0 = take ? j1 : j0;
    T m = a0[0];
    int64_t arg = j0[0];
    for (int l = 1; l < W; ++l) {
      const bool t = a0[l] < m || (a0[l] == m && j0[l] < arg);
      m = t ? a0[l] : m;
      arg = t ? static_cast<int64_t>(j0[l]) : arg;
    }
    if (!(m < std::numeric_limits<T>::infinity())) arg = 0;
    const T* xi = xb + i * D;
    T n = 0;
#pragma omp simd reduction(+ : n)
    for (int64_t k = 0; k < D; ++k) n += xi[k] * xi[k];
    const T v = n + m;
    lab[r0 + i] = arg;
    sq[r0 + i] = v > T(0) ? v : T(0);
  }
}

CLUSTR_VEC_CLONES void nearest_centers_f(const float* x, int64_t r0, int64_t rows, const PackedCenters<float>& c,
                                         NearestScratch<float>& s, int64_t* lab, float* sq) {
  nearest_centers<float>(x, r0, rows, c, s, lab, sq);
}
CLUSTR_VEC_CLONES void nearest_centers_d(const double* x, int64_t r0, int64_t rows, const PackedCenters<double>& c,
                                         NearestScratch<double>& s, int64_t* lab, double* sq) {
  nearest_centers<double>(x, r0, rows, c, s, lab, sq);
}
inline void nearest_centers_any(const float* x, int64_t r0, int64_t rows, const PackedCenters<float>& c,
                                NearestScratch<float>& s, int64_t* lab, float* sq) {
  nearest_centers_f(x, r0, rows, c, s, lab, sq);
}
inline void nearest_centers_any(const double* x, int64_t r0, int64_t rows, const PackedCenters<double>& c,
                                NearestScratch<double>& s, int64_t* lab, double* sq) {
  nearest_centers_d(x, r0, rows, c, s, lab, sq);
}

}  // namespace
}  // namespace clustr_fast
