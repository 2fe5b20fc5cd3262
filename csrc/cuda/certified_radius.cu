// certified_radius on CUDA: the l2 radius of the nearest-center classifier
// (ClusTR Theorem 1). One warp per row, lanes across the feature dimension:
//  pass 1: d_j = ||f - mu_j||^2 by direct differences for every center, running
//          minimum (lower index on ties) -> mu_1, d_1;
//  pass 2: the same distances again, r_j = (d_j - d_1) / (2 L g_{1j}) (0 when the gap
//          g is 0) over the other-class centers; mode 0 (sound) keeps the minimum,
//          mode 1 (paper) keeps r at the nearest other-class center.
// Gaps g [C,C] come from at::cdist (direct differences) once per call. No [N,C] buffer.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include "common.h"
#include "cuda/device_math.cuh"
#include "op_checks.h"

namespace clustr_fast {
namespace {

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t warp_sqdist(const scalar_t* __restrict__ x, const scalar_t* __restrict__ c,
                                             int64_t row, int64_t j, int64_t D, int64_t sxn, int64_t sxd,
                                             int64_t scn, int64_t scd, int lane) {
  acc_t part = acc_t(0);
  for (int64_t k = lane; k < D; k += 32) {
    const acc_t t = static_cast<acc_t>(x[row * sxn + k * sxd]) - static_cast<acc_t>(c[j * scn + k * scd]);
    part += t * t;
  }
  return warp_sum(part);  // same order on every lane, so every lane holds the same value
}

template <typename scalar_t, typename acc_t>
__global__ void radius_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ c,
                              const int64_t* __restrict__ cls, const acc_t* __restrict__ gap,
                              acc_t* __restrict__ out, int64_t N, int64_t C, int64_t D, int64_t sxn, int64_t sxd,
                              int64_t scn, int64_t scd, acc_t lip2, int mode) {
  const int lane = threadIdx.x % 32;
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= N) return;
  int64_t best = 0;
  acc_t d1 = warp_sqdist<scalar_t, acc_t>(x, c, row, 0, D, sxn, sxd, scn, scd, lane);
  for (int64_t j = 1; j < C; ++j) {
    const acc_t dj = warp_sqdist<scalar_t, acc_t>(x, c, row, j, D, sxn, sxd, scn, scd, lane);
    if (dj < d1) { d1 = dj; best = j; }
  }
  const int64_t c1 = cls[best];
  const acc_t* g = gap + best * C;
  acc_t r = INFINITY;
  acc_t near_d = INFINITY;
  int64_t near = -1;
  for (int64_t j = 0; j < C; ++j) {
    if (cls[j] == c1) continue;
    const acc_t dj = warp_sqdist<scalar_t, acc_t>(x, c, row, j, D, sxn, sxd, scn, scd, lane);
    const acc_t rj = g[j] > acc_t(0) ? (dj - d1) / (lip2 * g[j]) : acc_t(0);
    if (mode == 0) {
      r = rj < r ? rj : r;
    } else if (near < 0 || dj < near_d) {
      near = j;
      near_d = dj;
      r = rj;
    }
  }
  if (lane == 0) out[row] = r;
}

at::Tensor certified_radius_cuda(const at::Tensor& feats_in, const at::Tensor& centers_in,
                                 const at::Tensor& center_classes, double lipschitz, int64_t mode) {
  check_certified_radius(feats_in, centers_in, center_classes, lipschitz, mode);
  check_same_dtype(feats_in, centers_in, "feats", "centers");
  const c10::cuda::CUDAGuard guard(feats_in.device());
  const at::Tensor feats = feats_in.detach();
  const at::Tensor centers = centers_in.detach();
  const at::Tensor cls = center_classes.detach().to(at::kLong).contiguous();
  const auto acc = acc_type(feats.scalar_type());
  const int64_t N = feats.size(0), C = centers.size(0), D = feats.size(1);
  at::Tensor out = at::empty({N}, feats.options().dtype(acc));
  if (N == 0) return out;
  const at::Tensor mu = centers.to(acc);
  const at::Tensor gap = at::cdist(mu, mu, 2.0, /*compute_mode=*/2).contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feats.scalar_type(), "certified_radius_cuda", [&] {
    using acc_t = acc_scalar_t<scalar_t>;
    radius_kernel<scalar_t, acc_t><<<(N + 7) / 8, 256, 0, stream>>>(
        feats.data_ptr<scalar_t>(), centers.data_ptr<scalar_t>(), cls.data_ptr<int64_t>(), gap.data_ptr<acc_t>(),
        out.data_ptr<acc_t>(), N, C, D, feats.stride(0), feats.stride(1), centers.stride(0), centers.stride(1),
        static_cast<acc_t>(2.0 * lipschitz), static_cast<int>(mode));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(clustr_fast, CUDA, m) {
  m.impl("certified_radius", &certified_radius_cuda);
}

}  // namespace clustr_fast
