// pairwise_sqdist on CUDA: the register-tiled SIMT distance tile (distance_tile.cuh) with the
// distance epilogue fused in (IEEE fp32 products and accumulation, so every precision
// mode is float32-exact here; the Triton backend uses tensor cores for
// "high"/"medium"). Backward: two cuBLAS products with the rank-1 terms folded
// into addmm's beta.
//   out[i,k] = max(||x_i||^2 + ||c_k||^2 - 2 x_i.c_k, 0)
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common.h"
#include "cuda/distance_tile.cuh"
#include "op_checks.h"

namespace clustr_fast {
namespace {

using tile::BM;
using tile::BN;
using tile::TM;
using tile::TN;

template <typename scalar_t, typename acc_t>
__global__ void sqdist_kernel(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ c, const acc_t* __restrict__ xn,
    const acc_t* __restrict__ cn, acc_t* __restrict__ out, int64_t N, int64_t K, int64_t D, int64_t sxn,
    int64_t sxd, int64_t scn, int64_t scd) {
  __shared__ acc_t xs[tile::BK][BM + 1];
  __shared__ acc_t cs[tile::BK][BN + 1];
  const int tx = threadIdx.x % tile::LANES, ty = threadIdx.x / tile::LANES;
  const int64_t row0 = (int64_t)blockIdx.y * BM, col0 = (int64_t)blockIdx.x * BN;
  acc_t acc[TM][TN];
  tile::dot_tile<tile::BK, scalar_t, acc_t>(acc, xs, cs, x, c, row0, col0, N, K, D, sxn, sxd, scn, scd);
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t gr = row0 + ty * TM + i;
    if (gr >= N) continue;
    const acc_t xi = xn[gr];
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t gc = col0 + tx * TN + j;
      if (gc >= K) continue;
      out[gr * K + gc] = tile::sqdist_from_dot(xi, cn[gc], acc[i][j]);
    }
  }
}

at::Tensor pairwise_sqdist_cuda(const at::Tensor& x, const at::Tensor& c, int64_t precision) {
  check_pairwise_sqdist(x, c, precision);
  check_same_dtype(x, c, "x", "c");
  const c10::cuda::CUDAGuard guard(x.device());
  const auto acc = acc_type(x.scalar_type());
  const int64_t N = x.size(0), K = c.size(0), D = x.size(1);
  at::Tensor out = at::empty({N, K}, x.options().dtype(acc));
  if (N == 0 || K == 0) return out;
  const at::Tensor xn = x.to(acc).square().sum(1).contiguous();
  const at::Tensor cn = c.to(acc).square().sum(1).contiguous();
  const dim3 grid((K + BN - 1) / BN, (N + BM - 1) / BM);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pairwise_sqdist_cuda", [&] {
    using acc_t = acc_scalar_t<scalar_t>;
    sqdist_kernel<scalar_t, acc_t><<<grid, tile::THREADS, 0, stream>>>(
        x.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), xn.data_ptr<acc_t>(), cn.data_ptr<acc_t>(),
        out.data_ptr<acc_t>(), N, K, D, x.stride(0), x.stride(1), c.stride(0), c.stride(1));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> pairwise_sqdist_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                                 const at::Tensor& c, int64_t precision) {
  const c10::cuda::CUDAGuard guard(x.device());
  return pairwise_sqdist_backward_products(grad, x, c, precision);
}

}  // namespace

TORCH_LIBRARY_IMPL(clustr_fast, CUDA, m) {
  m.impl("pairwise_sqdist", &pairwise_sqdist_cuda);
  m.impl("pairwise_sqdist_backward", &pairwise_sqdist_backward_cuda);
}

}  // namespace clustr_fast
