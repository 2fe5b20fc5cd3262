// Centers packed in panels for register-blocked products with rows of x on the CPU; shared by
// the nearest-center kernel (nearest_center.h) and the pairwise distances (pairwise_sqdist.cpp).
//
// Panel p holds, for every coordinate k, the P = 2W values c[pP .. pP+P)[k] (W lanes per 32-byte
// vector; zeros past K). panel_products<R> keeps the R x 2 vectors of products of R rows with
// one panel in registers over the whole dot product: per coordinate 2 panel loads, R
// broadcasts and 2R FMAs (R = 6: 12 accumulators, the AVX2 FMA kernel's shape).
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

constexpr int kTileRows = 6;                               // rows per micro-tile (12 accumulators)
constexpr int64_t kCenterBlockBytes = int64_t(192) << 10;  // packed centers reused per row block (L2)

template <typename T>
struct PanelLanes {
  using V = typename Vec32<T>::type;
  using I = decltype(V{} < V{});  // integer lanes of the same width
  using Index = typename std::remove_reference<decltype(I{}[0])>::type;
  static constexpr int W = Vec32<T>::W;
  static constexpr int P = 2 * W;  // centers per panel
};

// Packs c [K, D] (contiguous) into panels; norms [panels * P] = ||c_j||^2, padded with +inf.
template <typename T>
void pack_centers(const T* c, int64_t K, int64_t D, T* pack, T* norms) {
  constexpr int P = PanelLanes<T>::P;
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

// Centers packed for the kernels, and the panels per center block (about kCenterBlockBytes).
template <typename T>
struct PackedCenters {
  static constexpr int P = PanelLanes<T>::P;
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

// acc0[r] / acc1[r] = x_r . (the panel's first / second W centers) for the R rows x[r * D ..).
template <typename T, int R>
inline __attribute__((always_inline)) void panel_products(const T* x, int64_t D, const T* panel,
                                                          typename PanelLanes<T>::V* acc0,
                                                          typename PanelLanes<T>::V* acc1) {
  using V = typename PanelLanes<T>::V;
  constexpr int W = PanelLanes<T>::W, P = PanelLanes<T>::P;
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
}

// Prefetch of the rows [i, i + rows) of x (D values each), ahead of their micro-tile; nothing
// when rows <= 0 (past the last tile).
template <typename T>
inline __attribute__((always_inline)) void prefetch_rows(const T* x, int64_t i, int64_t rows, int64_t D) {
  if (rows <= 0) return;
  const char* p = reinterpret_cast<const char*>(x + i * D);
  const int64_t bytes = rows * D * int64_t(sizeof(T));
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b);
}

}  // namespace
}  // namespace clustr_fast
