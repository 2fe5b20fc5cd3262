// kmeans_assign on CUDA: the nearest center of every row.
//
//   dense: the SIMT distance tile (distance_tile.cuh; IEEE fp32 products for every precision)
//     with blocks that own 64 rows and sweep all K centers in 64-wide tiles, reducing each tile
//     of ||c||^2 - 2 x.c to a running (min, first argmin) over the 16 lanes of a row
//     (group_argmin): no [N,K] buffer. sqdist = max(||x||^2 + min, 0).
//   grouped: one warp per row over its group's centers, explicit differences.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "common.h"
#include "cuda/device_math.cuh"
#include "cuda/distance_tile.cuh"
#include "cuda/kmeans_common.cuh"
#include "op_checks.h"

namespace clustr_fast {
namespace {

using tile::BM;
using tile::BN;
using tile::TM;
using tile::TN;

// out[r] = ||x_r||^2, one warp per row.
template <typename scalar_t, typename acc_t>
__global__ void row_norms_kernel(const scalar_t* __restrict__ x, acc_t* __restrict__ out, int64_t N, int64_t D,
                                 int64_t sxn, int64_t sxd) {
  const int lane = threadIdx.x & 31;
  const int64_t r = warp_row();
  if (r >= N) return;
  acc_t s = 0;
  for (int64_t j = lane; j < D; j += 32) {
    const acc_t v = static_cast<acc_t>(x[r * sxn + j * sxd]);
    s += v * v;
  }
  s = warp_sum(s);
  if (lane == 0) out[r] = s;
}

// ------------------------------------------------------------------ dense

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(tile::THREADS)
    assign_dense_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ c, const acc_t* __restrict__ xn,
                        const acc_t* __restrict__ cn, int64_t* __restrict__ labels, acc_t* __restrict__ sq, int64_t N,
                        int64_t K, int64_t D, int64_t sxn, int64_t sxd, int64_t scn, int64_t scd) {
  __shared__ acc_t xs[tile::BK][BM + 1];
  __shared__ acc_t cs[tile::BK][BN + 1];
  const int tx = threadIdx.x % tile::LANES, ty = threadIdx.x / tile::LANES;
  const int64_t row0 = (int64_t)blockIdx.x * BM;
  acc_t best[TM];
  int64_t arg[TM];
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    best[i] = std::numeric_limits<acc_t>::infinity();
    arg[i] = 0;
  }
  for (int64_t col0 = 0; col0 < K; col0 += BN) {
    acc_t acc[TM][TN];
    tile::dot_tile<tile::BK, scalar_t, acc_t>(acc, xs, cs, x, c, row0, col0, N, K, D, sxn, sxd, scn, scd);
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      acc_t v = std::numeric_limits<acc_t>::infinity();
      int64_t a = K;
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const int64_t gc = col0 + tx * TN + j;
        if (gc < K) {
          const acc_t w = cn[gc] - acc_t(2) * acc[i][j];
          if (w < v) {
            v = w;
            a = gc;
          }
        }
      }
      // over the lanes sharing these rows; on copies, which keeps the column checks above predicated
      acc_t gv = v;
      int64_t ga = a;
      group_argmin<tile::LANES>(gv, ga);
      if (gv < best[i]) {
        best[i] = gv;
        arg[i] = ga;
      }
    }
  }
  if (tx == 0) {
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int64_t gr = row0 + ty * TM + i;
      if (gr < N) {
        const acc_t v = xn[gr] + best[i];
        labels[gr] = arg[i];
        sq[gr] = v > acc_t(0) ? v : acc_t(0);
      }
    }
  }
}

// ------------------------------------------------------------------ grouped

template <typename scalar_t, typename acc_t>
__global__ void assign_grouped_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ c,
                                      const int64_t* __restrict__ groups, int64_t* __restrict__ labels,
                                      acc_t* __restrict__ sq, int64_t N, int64_t D, int64_t gk, int64_t sxn,
                                      int64_t sxd, int64_t scn, int64_t scd) {
  const int lane = threadIdx.x & 31;
  const int64_t r = warp_row();
  if (r >= N) return;
  const int64_t base = groups[r] * gk;
  acc_t best = std::numeric_limits<acc_t>::infinity();
  int64_t arg = base;
  for (int64_t j = 0; j < gk; ++j) {
    const acc_t s = warp_sqdist<acc_t>(x + r * sxn, c + (base + j) * scn, D, sxd, scd);
    if (s < best) {
      best = s;
      arg = base + j;
    }
  }
  if (lane == 0) {
    labels[r] = arg;
    sq[r] = best;
  }
}

}  // namespace

// Declared in kmeans_common.cuh: kmeans_lloyd_groups.cu calls it once per iteration.
std::tuple<at::Tensor, at::Tensor> kmeans_assign_cuda(const at::Tensor& x, const at::Tensor& c, int64_t precision,
                                                      const std::optional<at::Tensor>& groups_in, int64_t group_k) {
  check_kmeans_assign(x, c, precision, groups_in, group_k);
  check_same_dtype(x, c, "x", "centers");
  const c10::cuda::CUDAGuard guard(x.device());
  const auto acc = acc_type(x.scalar_type());
  const int64_t N = x.size(0), K = c.size(0), D = x.size(1);
  // Both kernels write every row, so no fill launches (two per call; the Lloyd loops call this
  // once per iteration). Only d = 0 on the dense path, which launches nothing, needs the zeros.
  at::Tensor labels = at::empty({N}, x.options().dtype(at::kLong));
  at::Tensor sq = at::empty({N}, x.options().dtype(acc));
  if (N == 0) return {labels, sq};
  auto stream = at::cuda::getCurrentCUDAStream();
  if (groups_in.has_value()) {
    const at::Tensor groups = groups_in->to(at::kLong).contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "kmeans_assign_grouped_cuda", [&] {
      using acc_t = acc_scalar_t<scalar_t>;
      assign_grouped_kernel<scalar_t, acc_t><<<row_blocks(N), kRowThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), groups.data_ptr<int64_t>(), labels.data_ptr<int64_t>(),
          sq.data_ptr<acc_t>(), N, D, group_k, x.stride(0), x.stride(1), c.stride(0), c.stride(1));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return {labels, sq};
  }
  if (D == 0) return {labels.zero_(), sq.zero_()};
  at::Tensor xn = at::empty({N}, x.options().dtype(acc));
  at::Tensor cn = at::empty({K}, x.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "kmeans_assign_cuda", [&] {
    using acc_t = acc_scalar_t<scalar_t>;
    row_norms_kernel<scalar_t, acc_t><<<row_blocks(N), kRowThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), xn.data_ptr<acc_t>(), N, D, x.stride(0), x.stride(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    row_norms_kernel<scalar_t, acc_t><<<row_blocks(K), kRowThreads, 0, stream>>>(
        c.data_ptr<scalar_t>(), cn.data_ptr<acc_t>(), K, D, c.stride(0), c.stride(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    assign_dense_kernel<scalar_t, acc_t><<<(N + BM - 1) / BM, tile::THREADS, 0, stream>>>(
        x.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), xn.data_ptr<acc_t>(), cn.data_ptr<acc_t>(),
        labels.data_ptr<int64_t>(), sq.data_ptr<acc_t>(), N, K, D, x.stride(0), x.stride(1), c.stride(0),
        c.stride(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {labels, sq};
}

TORCH_LIBRARY_IMPL(clustr_fast, CUDA, m) {
  m.impl("kmeans_assign", &kmeans_assign_cuda);
}

}  // namespace clustr_fast
