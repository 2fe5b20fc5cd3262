// kmeans_update on CUDA: the Lloyd update, centers = (weighted) mean of their rows.
//
//   k <= 64: shared-memory per-cluster sums per row block, then one global atomic per sum;
//   k > 64: plain global atomics, one warp per row. Either way one finish kernel divides.
//   deterministic: stable sort by label, then one sum per cluster over its rows in that order
//     (8 row lanes combined in a fixed tree), so the result does not depend on scheduling.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "common.h"
#include "cuda/kmeans_common.cuh"
#include "op_checks.h"

namespace clustr_fast {
namespace {

constexpr int UPD_ROWS = 256, UPD_DIMS = 32, SMALL_K = 64;

// Block: UPD_ROWS rows x UPD_DIMS dims; sums per cluster in shared memory, then one atomic per sum.
// w (may be null): row weights, summed times the rows, and their per-cluster sums into wsums.
template <typename scalar_t, typename acc_t>
__global__ void update_smallk_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ labels,
                                     const acc_t* __restrict__ w, acc_t* __restrict__ sums, int* __restrict__ counts,
                                     acc_t* __restrict__ wsums, int64_t N, int64_t D, int64_t K, int64_t sxn,
                                     int64_t sxd) {
  __shared__ acc_t ssum[SMALL_K][UPD_DIMS];
  __shared__ acc_t swt[SMALL_K];
  __shared__ int scnt[SMALL_K];
  const int tid = threadIdx.x;  // blockDim = 256 = 8 row lanes x 32 dims
  for (int e = tid; e < SMALL_K * UPD_DIMS; e += blockDim.x) ssum[e / UPD_DIMS][e % UPD_DIMS] = acc_t(0);
  for (int e = tid; e < SMALL_K; e += blockDim.x) {
    scnt[e] = 0;
    swt[e] = acc_t(0);
  }
  __syncthreads();
  const int dl = tid % UPD_DIMS, rl = tid / UPD_DIMS;
  const int64_t d = (int64_t)blockIdx.y * UPD_DIMS + dl;
  const int64_t r0 = (int64_t)blockIdx.x * UPD_ROWS;
  for (int64_t r = r0 + rl; r < min(N, r0 + UPD_ROWS); r += blockDim.x / UPD_DIMS) {
    const int64_t l = labels[r];
    const acc_t wr = w ? w[r] : acc_t(1);
    if (d < D) atomicAdd(&ssum[l][dl], wr * static_cast<acc_t>(x[r * sxn + d * sxd]));
    if (dl == 0 && blockIdx.y == 0) {
      atomicAdd(&scnt[l], 1);
      if (w) atomicAdd(&swt[l], wr);
    }
  }
  __syncthreads();
  for (int e = tid; e < K * UPD_DIMS; e += blockDim.x) {
    const int j = e / UPD_DIMS, dd = e % UPD_DIMS;
    const int64_t gd = (int64_t)blockIdx.y * UPD_DIMS + dd;
    if (gd < D && ssum[j][dd] != acc_t(0)) atomicAdd(&sums[j * D + gd], ssum[j][dd]);
  }
  if (blockIdx.y == 0)
    for (int j = tid; j < K; j += blockDim.x) {
      if (scnt[j]) atomicAdd(&counts[j], scnt[j]);
      if (w && swt[j] != acc_t(0)) atomicAdd(&wsums[j], swt[j]);
    }
}

template <typename scalar_t, typename acc_t>
__global__ void update_atomic_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ labels,
                                     const acc_t* __restrict__ w, acc_t* __restrict__ sums, int* __restrict__ counts,
                                     acc_t* __restrict__ wsums, int64_t N, int64_t D, int64_t sxn, int64_t sxd) {
  const int64_t r = warp_row();
  const int lane = threadIdx.x & 31;
  if (r >= N) return;
  const int64_t l = labels[r];
  const acc_t wr = w ? w[r] : acc_t(1);
  for (int64_t e = lane; e < D; e += 32) atomicAdd(&sums[l * D + e], wr * static_cast<acc_t>(x[r * sxn + e * sxd]));
  if (lane == 0) {
    atomicAdd(&counts[l], 1);
    if (w) atomicAdd(&wsums[l], wr);
  }
}

// out[j] = sums[j] / W_j with W_j = wsums[j] (weights) or counts[j]; prev[j] (or 0) when W_j = 0.
template <typename acc_t>
__global__ void update_finish_kernel(const acc_t* __restrict__ sums, const int* __restrict__ counts,
                                     const acc_t* __restrict__ wsums, const acc_t* __restrict__ prev,
                                     acc_t* __restrict__ out, int64_t* __restrict__ cnt64, int64_t K, int64_t D) {
  const int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= K * D) return;
  const int64_t j = e / D;
  const int n = counts[j];
  const acc_t total = wsums ? wsums[j] : static_cast<acc_t>(n);
  out[e] = total > acc_t(0) ? sums[e] / total : (prev ? prev[e] : acc_t(0));
  if (e % D == 0) cnt64[j] = n;
}

// Deterministic: cluster j sums the rows order[start[j]:start[j+1]] in that order (one block per
// (cluster, 32-dim slice), 8 row lanes combined in a fixed tree); with weights w each row times
// its weight, over the cluster's weight sum (written to wout[j]).
template <typename scalar_t, typename acc_t>
__global__ void update_segment_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ order,
                                      const int64_t* __restrict__ start, const acc_t* __restrict__ w,
                                      const acc_t* __restrict__ prev, acc_t* __restrict__ out,
                                      acc_t* __restrict__ wout, int64_t D, int64_t sxn, int64_t sxd) {
  __shared__ acc_t part[8][UPD_DIMS];
  __shared__ acc_t wpart[8][UPD_DIMS];
  const int64_t j = blockIdx.x;
  const int dl = threadIdx.x % UPD_DIMS, rl = threadIdx.x / UPD_DIMS;
  const int64_t d = (int64_t)blockIdx.y * UPD_DIMS + dl;
  const int64_t s = start[j], e = start[j + 1];
  acc_t acc = 0, wacc = 0;
  if (d < D)
    for (int64_t p = s + rl; p < e; p += 8) {
      const acc_t wr = w ? w[order[p]] : acc_t(1);
      acc += wr * static_cast<acc_t>(x[order[p] * sxn + d * sxd]);
      wacc += wr;
    }
  part[rl][dl] = acc;
  wpart[rl][dl] = wacc;
  __syncthreads();
  if (rl == 0 && d < D) {
    acc_t t = 0, total = 0;
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      t += part[q][dl];
      total += wpart[q][dl];
    }
    if (!w) total = static_cast<acc_t>(e - s);
    out[j * D + d] = total > acc_t(0) ? t / total : (prev ? prev[j * D + d] : acc_t(0));
    if (w && blockIdx.y == 0 && dl == 0) wout[j] = total;
  }
}

}  // namespace

// Declared in kmeans_common.cuh: kmeans_lloyd_groups.cu calls it once per iteration.
std::tuple<at::Tensor, at::Tensor> kmeans_update_cuda(const at::Tensor& x, const at::Tensor& labels_in, int64_t k,
                                                      const std::optional<at::Tensor>& prev_in, bool deterministic,
                                                      const std::optional<at::Tensor>& weights_in) {
  check_kmeans_update(x, labels_in, k, prev_in);
  check_row_weights(weights_in, x.size(0));
  const c10::cuda::CUDAGuard guard(x.device());
  const auto acc = acc_type(x.scalar_type());
  const int64_t N = x.size(0), D = x.size(1);
  const at::Tensor labels = labels_in.to(at::kLong).contiguous();
  at::Tensor prev;
  if (prev_in.has_value()) prev = prev_in->to(acc).contiguous();
  at::Tensor w;
  if (weights_in.has_value()) w = weights_in->to(x.device(), acc).contiguous();
  at::Tensor out = at::empty({k, D}, x.options().dtype(acc));
  auto stream = at::cuda::getCurrentCUDAStream();
  if (deterministic) {
    auto sorted = at::sort(labels, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    const at::Tensor& sorted_labels = std::get<0>(sorted);
    const at::Tensor order = std::get<1>(sorted).contiguous();
    const at::Tensor start = at::searchsorted(sorted_labels, at::arange(k + 1, labels.options())).contiguous();
    at::Tensor counts = start.slice(0, 1) - start.slice(0, 0, k);
    at::Tensor wout = w.defined() ? at::zeros({k}, x.options().dtype(acc)) : at::Tensor();
    if (D == 0) return {out, w.defined() ? wout.index_add_(0, labels, w) : counts};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "kmeans_update_det_cuda", [&] {
      using acc_t = acc_scalar_t<scalar_t>;
      const dim3 grid(k, (D + UPD_DIMS - 1) / UPD_DIMS);
      update_segment_kernel<scalar_t, acc_t><<<grid, 256, 0, stream>>>(
          x.data_ptr<scalar_t>(), order.data_ptr<int64_t>(), start.data_ptr<int64_t>(),
          w.defined() ? w.data_ptr<acc_t>() : nullptr, prev.defined() ? prev.data_ptr<acc_t>() : nullptr,
          out.data_ptr<acc_t>(), w.defined() ? wout.data_ptr<acc_t>() : nullptr, D, x.stride(0), x.stride(1));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return {out, w.defined() ? wout : counts};
  }
  at::Tensor sums = at::zeros({k, D}, x.options().dtype(acc));
  at::Tensor cnt = at::zeros({k}, x.options().dtype(at::kInt));
  at::Tensor wsums = w.defined() ? at::zeros({k}, x.options().dtype(acc)) : at::Tensor();
  at::Tensor counts = at::empty({k}, x.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "kmeans_update_cuda", [&] {
    using acc_t = acc_scalar_t<scalar_t>;
    const acc_t* wp = w.defined() ? w.data_ptr<acc_t>() : nullptr;
    acc_t* wsp = w.defined() ? wsums.data_ptr<acc_t>() : nullptr;
    if (N > 0) {
      if (k <= SMALL_K) {
        const dim3 grid((N + UPD_ROWS - 1) / UPD_ROWS, std::max<int64_t>(1, (D + UPD_DIMS - 1) / UPD_DIMS));
        update_smallk_kernel<scalar_t, acc_t><<<grid, 256, 0, stream>>>(
            x.data_ptr<scalar_t>(), labels.data_ptr<int64_t>(), wp, sums.data_ptr<acc_t>(), cnt.data_ptr<int>(), wsp,
            N, D, k, x.stride(0), x.stride(1));
      } else {
        update_atomic_kernel<scalar_t, acc_t><<<row_blocks(N), kRowThreads, 0, stream>>>(
            x.data_ptr<scalar_t>(), labels.data_ptr<int64_t>(), wp, sums.data_ptr<acc_t>(), cnt.data_ptr<int>(), wsp,
            N, D, x.stride(0), x.stride(1));
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const int64_t total = std::max<int64_t>(k * D, k);
    if (D == 0) {
      counts.copy_(cnt);
      return;
    }
    update_finish_kernel<acc_t><<<(total + 255) / 256, 256, 0, stream>>>(
        sums.data_ptr<acc_t>(), cnt.data_ptr<int>(), wsp, prev.defined() ? prev.data_ptr<acc_t>() : nullptr,
        out.data_ptr<acc_t>(), counts.data_ptr<int64_t>(), k, D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, w.defined() ? wsums : counts};
}

TORCH_LIBRARY_IMPL(clustr_fast, CUDA, m) {
  m.impl("kmeans_update", &kmeans_update_cuda);
}

}  // namespace clustr_fast
