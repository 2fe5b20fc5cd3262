// Warp and block reductions shared by the CUDA kernels.
// Lane groups are W adjacent lanes of a warp (W a power of two, at most 32): the xor butterfly
// adds in the same order on every lane, so every lane of a group ends with the same value.
#pragma once
#include <cstdint>
#include <limits>

namespace clustr_fast {
namespace {

template <typename T>
__device__ __forceinline__ T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

// Sum over each group of W lanes; every lane gets its group's sum.
template <int W = 32, typename T>
__device__ __forceinline__ T group_sum(T v) {
#pragma unroll
  for (int off = W / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off, W);
  return v;
}

// Maximum over each group of W lanes; every lane gets its group's maximum.
template <int W = 32, typename T>
__device__ __forceinline__ T group_max(T v) {
#pragma unroll
  for (int off = W / 2; off > 0; off /= 2) v = max(v, __shfl_xor_sync(0xffffffffu, v, off, W));
  return v;
}

// (minimum, lowest index among the minima) over each group of W lanes, in place on every lane.
template <int W = 32, typename T, typename I>
__device__ __forceinline__ void group_argmin(T& v, I& a) {
#pragma unroll
  for (int off = W / 2; off > 0; off /= 2) {
    const T ov = __shfl_xor_sync(0xffffffffu, v, off, W);
    const I oa = __shfl_xor_sync(0xffffffffu, a, off, W);
    if (ov < v || (ov == v && oa < a)) {
      v = ov;
      a = oa;
    }
  }
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  return group_sum<32>(v);
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
  return group_max<32>(v);
}

// Sum over a block of kWarps full warps; every thread gets the result. red: kWarps entries of
// shared memory. Starts and ends with __syncthreads, so it also orders the phases around it.
template <int kWarps, typename T>
__device__ __forceinline__ T block_sum(T v, T* red) {
  v = warp_sum(v);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T r = lane < kWarps ? red[lane] : T(0);
    r = warp_sum(r);
    if (lane == 0) red[0] = r;
  }
  __syncthreads();
  return red[0];
}

}  // namespace
}  // namespace clustr_fast
