// Nearest center of a block of rows on the CPU, without BLAS: register-blocked products of
// kTileRows rows with a panel of centers (center_panels.h), consumed at once by a vector argmin.
//
//   score[i, j] = ||c_j||^2 - 2 x_i . c_j          (the squared distance less ||x_i||^2)
//   label[i]    = first j with the least score     sqdist[i] = max(||x_i||^2 + score, 0)
//
// Padded centers have norm +inf, so they never win. After each panel a micro-tile folds its
// products into per-row, per-lane minima kept in memory. Lanes keep their first minimum
// (strict <, panels in order); the lanes of a row are merged by (value, index), so ties go
// to the lower index.
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
#include "cpu/center_panels.h"

namespace clustr_fast {
namespace {

// best/idx [R, P]: per-row, per-lane running minima of the scores and their center indices.
template <typename T, int R>
inline __attribute__((always_inline)) void nearest_micro_tile(const T* x, int64_t D, const T* panel,
                                                              const T* norms, int64_t base, T* best,
                                                              typename PanelLanes<T>::Index* idx) {
  using L = PanelLanes<T>;
  using V = typename L::V;
  using I = typename L::I;
  constexpr int W = L::W, P = L::P;
  V acc0[R], acc1[R];
  panel_products<T, R>(x, D, panel, acc0, acc1);
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
                                                               typename PanelLanes<T>::Index* idx) {
  constexpr int P = PanelLanes<T>::P;
  for (int64_t p = p0; p < p1; ++p) nearest_micro_tile<T, R>(x, D, pack + p * D * P, norms + p * P, p * P, best, idx);
}

// The panels [p0, p1) against the rows x[0, rows): micro-tiles outside, so that a tile's rows
// and minima stay in L1 while the block's panels (L2) pass over them.
template <typename T>
inline __attribute__((always_inline)) void nearest_block(const T* x, int64_t rows, int64_t D, const T* pack,
                                                         const T* norms, int64_t p0, int64_t p1, T* best,
                                                         typename PanelLanes<T>::Index* idx) {
  constexpr int P = PanelLanes<T>::P;
  int64_t i = 0;
  for (; i + kTileRows <= rows; i += kTileRows) {
    prefetch_rows(x, i + kTileRows, std::min<int64_t>(kTileRows, rows - i - kTileRows), D);  // the next tile
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

// Per-thread lane minima of a row block.
template <typename T>
struct NearestScratch {
  std::vector<T> best;
  std::vector<typename PanelLanes<T>::Index> idx;
  explicit NearestScratch(int64_t rows) : best(rows * PanelLanes<T>::P), idx(rows * PanelLanes<T>::P) {}
};

// Nearest center of the rows x[r0, r0 + rows) (rows <= the scratch's rows): labels and
// max(||x||^2 + least score, 0). A row whose scores are all +inf or NaN keeps label 0.
template <typename T>
inline __attribute__((always_inline)) void nearest_centers(const T* x, int64_t r0, int64_t rows,
                                                           const PackedCenters<T>& c, NearestScratch<T>& s,
                                                           int64_t* lab, T* sq) {
  using Index = typename PanelLanes<T>::Index;
  constexpr int P = PanelLanes<T>::P;
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
  using V = typename PanelLanes<T>::V;
  using I = typename PanelLanes<T>::I;
  constexpr int W = PanelLanes<T>::W;
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
