// Shared by the k-means CUDA sources (kmeans_assign.cu, kmeans_update.cu, kmeans_plusplus.cu,
// kmeans_lloyd_groups.cu): the host entry points that the grouped Lloyd loop calls directly
// (defined once, in kmeans_assign.cu and kmeans_update.cu), the one-warp-per-row launch shape,
// and the explicit-difference squared distance of one warp.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include "cuda/device_math.cuh"

namespace clustr_fast {

// (labels int64[N], sqdist acc[N]) of the nearest center; with groups, row i looks only at the
// group_k centers of its group groups[i]. Defined in kmeans_assign.cu.
std::tuple<at::Tensor, at::Tensor> kmeans_assign_cuda(const at::Tensor& x, const at::Tensor& c, int64_t precision,
                                                      const std::optional<at::Tensor>& groups_in, int64_t group_k);

// (centers acc[k, d], counts int64[k] or weight sums acc[k] with weights): the Lloyd update.
// Defined in kmeans_update.cu.
std::tuple<at::Tensor, at::Tensor> kmeans_update_cuda(const at::Tensor& x, const at::Tensor& labels_in, int64_t k,
                                                      const std::optional<at::Tensor>& prev_in, bool deterministic,
                                                      const std::optional<at::Tensor>& weights_in);

namespace {

// One warp per row: blocks of kRowThreads threads hold kRowsPerBlock rows.
constexpr int kRowThreads = 256, kRowsPerBlock = kRowThreads / 32;

// Blocks for n rows, one warp each.
inline int64_t row_blocks(int64_t n) {
  return (n + kRowsPerBlock - 1) / kRowsPerBlock;
}

// The row of the calling warp.
__device__ __forceinline__ int64_t warp_row() {
  return (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
}

// ||a - b||^2 over d entries (strides sa, sb), from explicit differences: lane l sums entries
// l, l + 32, ... in acc_t, then warp_sum. Every lane of the warp gets the result.
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t warp_sqdist(const scalar_t* a, const scalar_t* b, int64_t d, int64_t sa, int64_t sb) {
  const int lane = threadIdx.x & 31;
  acc_t s = 0;
  for (int64_t e = lane; e < d; e += 32) {
    const acc_t t = static_cast<acc_t>(a[e * sa]) - static_cast<acc_t>(b[e * sb]);
    s += t * t;
  }
  return warp_sum(s);
}

}  // namespace
}  // namespace clustr_fast
