// k-means on CUDA: fused assignment, Lloyd update (atomics, or an ordered sum when
// deterministic), and greedy k-means++ seeding batched over segments.
//
//   kmeans_assign (dense): a register-tiled SIMT kernel (IEEE fp32 products for every precision)
//     whose blocks own 64 rows and sweep all K centers in 64-wide tiles, reducing each tile of
//     ||c||^2 - 2 x.c to a running (min, first argmin) with warp shuffles: no [N,K] buffer.
//     sqdist = max(||x||^2 + min, 0).
//   kmeans_assign (grouped): one warp per row over its group's centers, explicit differences.
//   kmeans_update: shared-memory per-cluster sums per row block then one global atomic per sum
//     (k <= 64), plain global atomics otherwise; deterministic: stable sort by label and one
//     ordered sum per cluster.
//   kmeans_plusplus: per step sample (block-sum scan, then row scan), eval (distances of the T
//     candidates: the only read of x, kept in dc), select (least potential), update
//     (closest = min(closest, dc[best]) and the block sums of the next draw).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <limits>
#include <vector>

#include "common.h"

namespace clustr_fast {
namespace {

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

template <typename acc_t>
__device__ inline acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// out[r] = ||x_r||^2, one warp per row.
template <typename scalar_t, typename acc_t>
__global__ void row_norms_kernel(const scalar_t* __restrict__ x, acc_t* __restrict__ out, int64_t N, int64_t D,
                                 int64_t sxn, int64_t sxd) {
  const int lane = threadIdx.x & 31;
  const int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (r >= N) return;
  acc_t s = 0;
  for (int64_t j = lane; j < D; j += 32) {
    const acc_t v = static_cast<acc_t>(x[r * sxn + j * sxd]);
    s += v * v;
  }
  s = warp_sum(s);
  if (lane == 0) out[r] = s;
}

// ------------------------------------------------------------------ assign (dense)

constexpr int BM = 64, BN = 64, BK = 16, TM = 4, TN = 4;  // 256 threads, 4x4 products each

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(256) assign_dense_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ c,
                                                           const acc_t* __restrict__ xn, const acc_t* __restrict__ cn,
                                                           int64_t* __restrict__ labels, acc_t* __restrict__ sq,
                                                           int64_t N, int64_t K, int64_t D, int64_t sxn, int64_t sxd,
                                                           int64_t scn, int64_t scd) {
  __shared__ acc_t xs[BK][BM + 1];
  __shared__ acc_t cs[BK][BN + 1];
  const int tid = threadIdx.x;
  const int tx = tid % (BN / TN), ty = tid / (BN / TN);  // the 16 tx of one ty are 16 adjacent lanes
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
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = acc_t(0);
    for (int64_t k0 = 0; k0 < D; k0 += BK) {
      for (int e = tid; e < BM * BK; e += blockDim.x) {
        const int r = e / BK, kk = e % BK;
        const int64_t gk = k0 + kk;
        const int64_t gr = row0 + r, gc = col0 + r;
        xs[kk][r] = (gr < N && gk < D) ? static_cast<acc_t>(x[gr * sxn + gk * sxd]) : acc_t(0);
        cs[kk][r] = (gc < K && gk < D) ? static_cast<acc_t>(c[gc * scn + gk * scd]) : acc_t(0);
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < BK; ++kk) {
        acc_t a[TM], b[TN];
#pragma unroll
        for (int i = 0; i < TM; ++i) a[i] = xs[kk][ty * TM + i];
#pragma unroll
        for (int j = 0; j < TN; ++j) b[j] = cs[kk][tx * TN + j];
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
      }
      __syncthreads();
    }
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
      // (min, first index) over the 16 lanes sharing these rows
#pragma unroll
      for (int o = 8; o > 0; o >>= 1) {
        const acc_t ov = __shfl_xor_sync(0xffffffffu, v, o);
        const int64_t oa = __shfl_xor_sync(0xffffffffu, a, o);
        if (ov < v || (ov == v && oa < a)) {
          v = ov;
          a = oa;
        }
      }
      if (v < best[i]) {
        best[i] = v;
        arg[i] = a;
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

// ------------------------------------------------------------------ assign (grouped)

template <typename scalar_t, typename acc_t>
__global__ void assign_grouped_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ c,
                                      const int64_t* __restrict__ groups, int64_t* __restrict__ labels,
                                      acc_t* __restrict__ sq, int64_t N, int64_t D, int64_t gk, int64_t sxn,
                                      int64_t sxd, int64_t scn, int64_t scd) {
  const int lane = threadIdx.x & 31;
  const int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (r >= N) return;
  const int64_t base = groups[r] * gk;
  acc_t best = std::numeric_limits<acc_t>::infinity();
  int64_t arg = base;
  for (int64_t j = 0; j < gk; ++j) {
    acc_t s = 0;
    for (int64_t e = lane; e < D; e += 32) {
      const acc_t t = static_cast<acc_t>(x[r * sxn + e * sxd]) - static_cast<acc_t>(c[(base + j) * scn + e * scd]);
      s += t * t;
    }
    s = warp_sum(s);
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

std::tuple<at::Tensor, at::Tensor> kmeans_assign_cuda(const at::Tensor& x, const at::Tensor& c, int64_t precision,
                                                      const std::optional<at::Tensor>& groups_in, int64_t group_k) {
  check_matrix(x, "x");
  check_matrix(c, "centers");
  check_precision(precision);
  TORCH_CHECK(x.size(1) == c.size(1), "x and centers must have the same number of columns");
  TORCH_CHECK(x.scalar_type() == c.scalar_type(), "x and centers must have the same dtype");
  TORCH_CHECK(c.size(0) >= 1, "centers must have at least one row");
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
    TORCH_CHECK(groups.numel() == N, "groups must have length N");
    TORCH_CHECK(group_k >= 1, "group_k must be >= 1");
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "kmeans_assign_grouped_cuda", [&] {
      using acc_t = typename AccOf<scalar_t>::type;
      assign_grouped_kernel<scalar_t, acc_t><<<(N + 7) / 8, 256, 0, stream>>>(
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
    using acc_t = typename AccOf<scalar_t>::type;
    row_norms_kernel<scalar_t, acc_t><<<(N + 7) / 8, 256, 0, stream>>>(x.data_ptr<scalar_t>(), xn.data_ptr<acc_t>(),
                                                                       N, D, x.stride(0), x.stride(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    row_norms_kernel<scalar_t, acc_t><<<(K + 7) / 8, 256, 0, stream>>>(c.data_ptr<scalar_t>(), cn.data_ptr<acc_t>(),
                                                                       K, D, c.stride(0), c.stride(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    assign_dense_kernel<scalar_t, acc_t><<<(N + BM - 1) / BM, 256, 0, stream>>>(
        x.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), xn.data_ptr<acc_t>(), cn.data_ptr<acc_t>(),
        labels.data_ptr<int64_t>(), sq.data_ptr<acc_t>(), N, K, D, x.stride(0), x.stride(1), c.stride(0),
        c.stride(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {labels, sq};
}

// ------------------------------------------------------------------ update

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
  const int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
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

std::tuple<at::Tensor, at::Tensor> kmeans_update_cuda(const at::Tensor& x, const at::Tensor& labels_in, int64_t k,
                                                      const std::optional<at::Tensor>& prev_in, bool deterministic,
                                                      const std::optional<at::Tensor>& weights_in) {
  check_matrix(x, "x");
  TORCH_CHECK(k >= 1, "k must be >= 1");
  const c10::cuda::CUDAGuard guard(x.device());
  const auto acc = acc_type(x.scalar_type());
  const int64_t N = x.size(0), D = x.size(1);
  const at::Tensor labels = labels_in.to(at::kLong).contiguous();
  TORCH_CHECK(labels.numel() == N, "labels must have length N");
  at::Tensor prev;
  if (prev_in.has_value()) {
    prev = prev_in->to(acc).contiguous();
    TORCH_CHECK(prev.size(0) == k && prev.size(1) == D, "prev_centers must be [k, d]");
  }
  at::Tensor w;
  if (weights_in.has_value()) {
    TORCH_CHECK(weights_in->dim() == 1 && weights_in->size(0) == N, "weights must be 1-D of length N");
    w = weights_in->to(x.device(), acc).contiguous();
  }
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
      using acc_t = typename AccOf<scalar_t>::type;
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
    using acc_t = typename AccOf<scalar_t>::type;
    const acc_t* wp = w.defined() ? w.data_ptr<acc_t>() : nullptr;
    acc_t* wsp = w.defined() ? wsums.data_ptr<acc_t>() : nullptr;
    if (N > 0) {
      if (k <= SMALL_K) {
        const dim3 grid((N + UPD_ROWS - 1) / UPD_ROWS, std::max<int64_t>(1, (D + UPD_DIMS - 1) / UPD_DIMS));
        update_smallk_kernel<scalar_t, acc_t><<<grid, 256, 0, stream>>>(
            x.data_ptr<scalar_t>(), labels.data_ptr<int64_t>(), wp, sums.data_ptr<acc_t>(), cnt.data_ptr<int>(), wsp,
            N, D, k, x.stride(0), x.stride(1));
      } else {
        update_atomic_kernel<scalar_t, acc_t><<<(N + 7) / 8, 256, 0, stream>>>(
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

// ------------------------------------------------------------------ k-means++

constexpr int PP_THREADS = 256;

// dc[t*N + i] = ||x_i - x_{cand_t}||^2 (one warp per row); part[b*T + t] = sum_i w_i min(closest_i, dc)
// (w_i = 1 when w is null).
template <typename scalar_t, typename acc_t>
__global__ void pp_eval_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ cand,
                               const acc_t* __restrict__ closest, const acc_t* __restrict__ w,
                               acc_t* __restrict__ dc, double* __restrict__ part,
                               const int64_t* __restrict__ bstart, const int64_t* __restrict__ bend,
                               const int64_t* __restrict__ bgroup, int64_t N, int64_t D, int64_t T, int64_t sxn,
                               int64_t sxd) {
  extern __shared__ double wpart[];  // [warps][T]
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32, nw = blockDim.x / 32;
  const int64_t b = blockIdx.x, s = bstart[b], e = bend[b];
  const int64_t* cg = cand + bgroup[b] * T;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t cr = cg[t];
    double p = 0.0;
    for (int64_t r = s + warp; r < e; r += nw) {
      acc_t v = 0;
      for (int64_t j = lane; j < D; j += 32) {
        const acc_t q = static_cast<acc_t>(x[r * sxn + j * sxd]) - static_cast<acc_t>(x[cr * sxn + j * sxd]);
        v += q * q;
      }
      v = warp_sum(v);
      if (lane == 0) {
        dc[t * N + r] = v;
        p += (w ? static_cast<double>(w[r]) : 1.0) * static_cast<double>(v < closest[r] ? v : closest[r]);
      }
    }
    if (lane == 0) wpart[warp * T + t] = p;
  }
  __syncthreads();
  for (int64_t t = threadIdx.x; t < T; t += blockDim.x) {
    double q = 0.0;
    for (int w = 0; w < nw; ++w) q += wpart[w * T + t];
    part[b * T + t] = q;
  }
}

// Per group: the candidate of least potential (first on ties) becomes center `step`.
__global__ void pp_select_kernel(const double* __restrict__ part, const int64_t* __restrict__ cand,
                                 const int64_t* __restrict__ gblk, int64_t* __restrict__ best, int64_t* __restrict__ idx,
                                 int8_t* __restrict__ chosen, int64_t step, int64_t k, int64_t T) {
  using Reduce = cub::BlockReduce<double, PP_THREADS>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ double pot_best;
  __shared__ int64_t t_best;
  const int64_t g = blockIdx.x, b0 = gblk[g], b1 = gblk[g + 1];
  if (threadIdx.x == 0) {
    pot_best = std::numeric_limits<double>::infinity();
    t_best = 0;
  }
  for (int64_t t = 0; t < T; ++t) {
    double p = 0.0;
    for (int64_t b = b0 + threadIdx.x; b < b1; b += blockDim.x) p += part[b * T + t];
    const double pot = Reduce(tmp).Sum(p);
    if (threadIdx.x == 0 && pot < pot_best) {
      pot_best = pot;
      t_best = t;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const int64_t row = cand[g * T + t_best];
    best[g] = t_best;
    idx[g * k + step] = row;
    chosen[row] = 1;
  }
}

// closest = min(closest, dc[best]) over one block; the block's weight sums for the next draw:
// sum_i w_i closest_i and the rows of positive weight not chosen yet (w_i = 1 when w is null).
template <typename acc_t>
__global__ void pp_update_kernel(acc_t* __restrict__ closest, const acc_t* __restrict__ dc,
                                 const int64_t* __restrict__ best, const int8_t* __restrict__ chosen,
                                 const acc_t* __restrict__ w,
                                 double* __restrict__ wsum, double* __restrict__ wfree, const int64_t* __restrict__ bstart,
                                 const int64_t* __restrict__ bend, const int64_t* __restrict__ bgroup, int64_t N) {
  using Reduce = cub::BlockReduce<double, PP_THREADS>;
  __shared__ typename Reduce::TempStorage tmp;
  const int64_t b = blockIdx.x, s = bstart[b], e = bend[b];
  const acc_t* row = dc + best[bgroup[b]] * N;
  double ws = 0.0, wf = 0.0;
  for (int64_t i = s + threadIdx.x; i < e; i += blockDim.x) {
    const acc_t v = closest[i] < row[i] ? closest[i] : row[i];
    closest[i] = v;
    const double wi = w ? static_cast<double>(w[i]) : 1.0;
    ws += wi * static_cast<double>(v);
    wf += chosen[i] || !(wi > 0.0) ? 0.0 : 1.0;
  }
  const double a = Reduce(tmp).Sum(ws);
  __syncthreads();
  const double f = Reduce(tmp).Sum(wf);
  if (threadIdx.x == 0) {
    wsum[b] = a;
    wfree[b] = f;
  }
}

struct MinOp {
  __device__ int64_t operator()(int64_t a, int64_t b) const { return a < b ? a : b; }
};
struct MaxOp {
  __device__ int64_t operator()(int64_t a, int64_t b) const { return a > b ? a : b; }
};

// First index in [lo, hi) whose running weight (base + inclusive prefix) exceeds target, or hi;
// also the last index with positive weight (or -1), and the total weight of [lo, hi).
template <typename WeightFn>
__device__ void block_search(int64_t lo, int64_t hi, double base, double target, bool enabled, WeightFn weight,
                             int64_t* hit_out, double* before_out, int64_t* last_out) {
  using Scan = cub::BlockScan<double, PP_THREADS>;
  using RedI = cub::BlockReduce<int64_t, PP_THREADS>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ typename RedI::TempStorage red_tmp;
  __shared__ double chunk_total;
  __shared__ int64_t hit_s, last_s, h_s;
  __shared__ double before_s;
  if (threadIdx.x == 0) {
    hit_s = hi;
    last_s = -1;
    before_s = base;
  }
  __syncthreads();
  for (int64_t c0 = lo; c0 < hi; c0 += PP_THREADS) {
    const int64_t i = c0 + threadIdx.x;
    const double w = i < hi ? weight(i) : 0.0;
    double incl;
    Scan(scan_tmp).InclusiveSum(w, incl);
    const bool hit = enabled && i < hi && base + incl > target;
    const int64_t h = RedI(red_tmp).Reduce(hit ? i : hi, MinOp());
    __syncthreads();
    const int64_t lp = RedI(red_tmp).Reduce((i < hi && w > 0.0) ? i : int64_t(-1), MaxOp());
    if (threadIdx.x == 0) {
      h_s = h;  // aggregates are valid in thread 0 only
      if (lp > last_s) last_s = lp;
    }
    if (threadIdx.x == PP_THREADS - 1) chunk_total = incl;
    __syncthreads();
    if (hit_s == hi && h_s < hi && i == h_s) {
      hit_s = h_s;
      before_s = base + incl - w;
    }
    base += chunk_total;
    __syncthreads();
  }
  *hit_out = hit_s;
  *before_out = before_s;
  *last_out = last_s;
  __syncthreads();
}

// One D^2 draw per (group, trial): block sums locate the block, a scan inside it the row. Row
// weights w_i closest_i (w_i = 1 when w is null), or 1 for rows of positive weight not chosen yet.
template <typename acc_t>
__global__ void pp_sample_kernel(const double* __restrict__ draws, const double* __restrict__ wsum,
                                 const double* __restrict__ wfree, const acc_t* __restrict__ closest,
                                 const int8_t* __restrict__ chosen, const acc_t* __restrict__ w,
                                 const int64_t* __restrict__ bstart,
                                 const int64_t* __restrict__ bend, const int64_t* __restrict__ gblk,
                                 int64_t* __restrict__ cand, int64_t T) {
  using Reduce = cub::BlockReduce<double, PP_THREADS>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ double tot_s, free_s;
  const int64_t g = blockIdx.x, t = blockIdx.y, b0 = gblk[g], b1 = gblk[g + 1];
  double a = 0.0, f = 0.0;
  for (int64_t b = b0 + threadIdx.x; b < b1; b += blockDim.x) {
    a += wsum[b];
    f += wfree[b];
  }
  const double ta = Reduce(tmp).Sum(a);
  __syncthreads();
  const double tf = Reduce(tmp).Sum(f);
  if (threadIdx.x == 0) {
    tot_s = ta;
    free_s = tf;
  }
  __syncthreads();
  const bool use_free = !(tot_s > 0.0);
  const double target = draws[g * T + t] * (use_free ? free_s : tot_s);
  int64_t hit, last;
  double before;
  block_search(b0, b1, 0.0, target, true, [&](int64_t b) { return use_free ? wfree[b] : wsum[b]; }, &hit, &before,
               &last);
  const bool found = hit < b1;
  const int64_t blk = found ? hit : (last >= 0 ? last : b0);
  int64_t rhit, rlast;
  double rbefore;
  block_search(
      bstart[blk], bend[blk], found ? before : 0.0, target, found,
      [&](int64_t i) {
        const double wi = w ? static_cast<double>(w[i]) : 1.0;
        return use_free ? (chosen[i] || !(wi > 0.0) ? 0.0 : 1.0) : wi * static_cast<double>(closest[i]);
      },
      &rhit, &rbefore, &rlast);
  if (threadIdx.x == 0) cand[g * T + t] = rhit < bend[blk] ? rhit : (rlast >= 0 ? rlast : bstart[blk]);
}

__global__ void fill_candidates_kernel(const int64_t* __restrict__ first, int64_t* __restrict__ cand, int64_t G,
                                       int64_t T) {
  const int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e < G * T) cand[e] = first[e / T];
}

at::Tensor kmeans_plusplus_cuda(const at::Tensor& x, const at::Tensor& offsets_in, int64_t k,
                                const at::Tensor& first_in, const at::Tensor& draws_in,
                                const std::optional<at::Tensor>& weights_in) {
  check_matrix(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const auto acc = acc_type(x.scalar_type());
  const int64_t N = x.size(0), D = x.size(1);
  const at::Tensor offsets = offsets_in.to(at::kCPU, at::kLong).contiguous();
  const int64_t G = offsets.numel() - 1;
  TORCH_CHECK(draws_in.dim() == 3 && draws_in.size(0) == std::max<int64_t>(k - 1, 0) && draws_in.size(1) == G &&
                  draws_in.size(2) >= 1,
              "draws must have shape [k-1, G, T]");
  const int64_t T = draws_in.size(2);
  at::Tensor idx = at::empty({G, k}, x.options().dtype(at::kLong));
  if (G == 0 || k == 0) return idx;
  // blocks of at most 512 rows inside every segment
  const int64_t* op = offsets.data_ptr<int64_t>();
  std::vector<int64_t> bs_v, be_v, bg_v, gb_v{0};
  for (int64_t g = 0; g < G; ++g) {
    TORCH_CHECK(op[g + 1] - op[g] >= k, "segment ", g, " has fewer than k rows");
    for (int64_t r = op[g]; r < op[g + 1]; r += 512) {
      bs_v.push_back(r);
      be_v.push_back(std::min(op[g + 1], r + 512));
      bg_v.push_back(g);
    }
    gb_v.push_back(static_cast<int64_t>(bs_v.size()));
  }
  const int64_t NB = static_cast<int64_t>(bs_v.size());
  auto to_dev = [&](const std::vector<int64_t>& v) {
    return at::tensor(v, at::TensorOptions().dtype(at::kLong)).to(x.device());
  };
  const at::Tensor bstart = to_dev(bs_v), bend = to_dev(be_v), bgroup = to_dev(bg_v), gblk = to_dev(gb_v);
  const at::Tensor first = first_in.to(x.device(), at::kLong).contiguous();
  const at::Tensor draws = draws_in.to(x.device(), at::kDouble).contiguous();
  at::Tensor w;
  if (weights_in.has_value()) {
    TORCH_CHECK(weights_in->dim() == 1 && weights_in->size(0) == N, "weights must be 1-D of length N");
    w = weights_in->to(x.device(), acc).contiguous();
  }
  auto fopt = x.options();
  at::Tensor closest = at::full({N}, std::numeric_limits<double>::infinity(), fopt.dtype(acc));
  at::Tensor chosen = at::zeros({N}, fopt.dtype(at::kChar));
  at::Tensor dc = at::empty({T, N}, fopt.dtype(acc));
  at::Tensor part = at::empty({NB, T}, fopt.dtype(at::kDouble));
  at::Tensor wsum = at::empty({NB}, fopt.dtype(at::kDouble));
  at::Tensor wfree = at::empty({NB}, fopt.dtype(at::kDouble));
  at::Tensor cand = at::empty({G, T}, fopt.dtype(at::kLong));
  at::Tensor best = at::empty({G}, fopt.dtype(at::kLong));
  auto stream = at::cuda::getCurrentCUDAStream();
  fill_candidates_kernel<<<(G * T + 255) / 256, 256, 0, stream>>>(first.data_ptr<int64_t>(),
                                                                  cand.data_ptr<int64_t>(), G, T);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const size_t eval_smem = sizeof(double) * (PP_THREADS / 32) * T;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "kmeans_plusplus_cuda", [&] {
    using acc_t = typename AccOf<scalar_t>::type;
    const acc_t* wp = w.defined() ? w.data_ptr<acc_t>() : nullptr;
    for (int64_t s = 0; s < k; ++s) {
      if (s > 0) {
        pp_sample_kernel<acc_t><<<dim3(G, T), PP_THREADS, 0, stream>>>(
            draws.data_ptr<double>() + (s - 1) * G * T, wsum.data_ptr<double>(), wfree.data_ptr<double>(),
            closest.data_ptr<acc_t>(), chosen.data_ptr<int8_t>(), wp, bstart.data_ptr<int64_t>(),
            bend.data_ptr<int64_t>(), gblk.data_ptr<int64_t>(), cand.data_ptr<int64_t>(), T);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      pp_eval_kernel<scalar_t, acc_t><<<NB, PP_THREADS, eval_smem, stream>>>(
          x.data_ptr<scalar_t>(), cand.data_ptr<int64_t>(), closest.data_ptr<acc_t>(), wp, dc.data_ptr<acc_t>(),
          part.data_ptr<double>(), bstart.data_ptr<int64_t>(), bend.data_ptr<int64_t>(), bgroup.data_ptr<int64_t>(),
          N, D, T, x.stride(0), x.stride(1));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      pp_select_kernel<<<G, PP_THREADS, 0, stream>>>(part.data_ptr<double>(), cand.data_ptr<int64_t>(),
                                                     gblk.data_ptr<int64_t>(), best.data_ptr<int64_t>(),
                                                     idx.data_ptr<int64_t>(), chosen.data_ptr<int8_t>(), s, k, T);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (s + 1 < k) {
        pp_update_kernel<acc_t><<<NB, PP_THREADS, 0, stream>>>(
            closest.data_ptr<acc_t>(), dc.data_ptr<acc_t>(), best.data_ptr<int64_t>(), chosen.data_ptr<int8_t>(), wp,
            wsum.data_ptr<double>(), wfree.data_ptr<double>(), bstart.data_ptr<int64_t>(), bend.data_ptr<int64_t>(),
            bgroup.data_ptr<int64_t>(), N);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
  });
  return idx;
}

// ------------------------------------------------------------------ Lloyd per group (host loop)

// centers_new[j] = active[g] ? centers_new[j] : centers_old[j] (g = j / k), and
// shift[g] += ||centers_new[j] - centers_old[j]||^2 in float64. One block per center row.
template <typename acc_t>
__global__ void groups_mask_shift_kernel(acc_t* __restrict__ updated, const acc_t* __restrict__ old,
                                         const int* __restrict__ active, double* __restrict__ shift, int64_t k,
                                         int64_t D) {
  using Reduce = cub::BlockReduce<double, 128>;
  __shared__ typename Reduce::TempStorage tmp;
  const int64_t j = blockIdx.x, g = j / k;
  const bool on = active[g] != 0;
  double s = 0;
  for (int64_t e = threadIdx.x; e < D; e += blockDim.x) {
    const acc_t o = old[j * D + e];
    const acc_t v = on ? updated[j * D + e] : o;
    updated[j * D + e] = v;
    const double t = static_cast<double>(v) - static_cast<double>(o);
    s += t * t;
  }
  s = Reduce(tmp).Sum(s);
  if (threadIdx.x == 0 && s != 0.0) atomicAdd(&shift[g], s);
}

// changed[groups[i]] += (labels_new[i] != labels_old[i]).
__global__ void groups_changed_kernel(const int64_t* __restrict__ now, const int64_t* __restrict__ before,
                                      const int64_t* __restrict__ groups, int* __restrict__ changed, int64_t N) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < N && now[i] != before[i]) atomicAdd(&changed[groups[i]], 1);
}

// n_iter[g] += active[g]; active[g] &= changed[g] > 0 && shift[g] > tol[g]; any = OR of active;
// then changed and shift are cleared for the next iteration. One block.
__global__ void groups_status_kernel(int* __restrict__ active, int* __restrict__ changed, double* __restrict__ shift,
                                     const double* __restrict__ tol, int64_t* __restrict__ n_iter,
                                     int* __restrict__ any, int64_t G) {
  int mine = 0;
  for (int64_t g = threadIdx.x; g < G; g += blockDim.x) {
    const int a = active[g];
    n_iter[g] += a;
    const int still = a && changed[g] > 0 && shift[g] > tol[g];
    active[g] = still;
    mine |= still;
    changed[g] = 0;
    shift[g] = 0.0;
  }
  mine = __syncthreads_or(mine);
  if (threadIdx.x == 0) any[0] = mine;
}

// scikit-learn's absolute tolerance of every group: tol * mean_f var(x_g[:, f]), float64 [G]
// (the formula of clustr_fast.ops.kmeans.group_tolerances, in the same ATen ops).
at::Tensor group_tolerances_cuda(const at::Tensor& x, const at::Tensor& groups, const at::Tensor& sizes, double tol) {
  const int64_t G = sizes.numel();
  if (tol <= 0) return at::zeros({G}, x.options().dtype(at::kDouble));
  const at::Tensor n = sizes.clamp_min(1).to(x.scalar_type()).unsqueeze(1);
  const at::Tensor mean = at::zeros({G, x.size(1)}, x.options()).index_add_(0, groups, x) / n;
  const at::Tensor centered = (x - mean.index_select(0, groups)).square_();
  const at::Tensor var = at::zeros({G, x.size(1)}, x.options()).index_add_(0, groups, centered) / n;
  return at::where(sizes >= 2, var.mean(1).to(at::kDouble) * tol, at::zeros({}, x.options().dtype(at::kDouble)));
}

// Lloyd's algorithm in every segment x[offsets[g]:offsets[g+1]] from centers [G*k, d], each
// segment stopping on its own: the algorithm of clustr_fast.ops.kmeans.lloyd_groups_stepwise
// with its loop on the host side of the extension (per iteration: the update, one mask-and-shift
// kernel, the grouped assignment, one changed-labels kernel, one status kernel). The host reads
// the 4-byte "any group active" flag every kLloydSyncEvery iterations only, so that it queues
// launches ahead of the GPU; an iteration after every group has stopped changes nothing (stopped
// groups keep their centers, hence their labels, and their n_iter), so the result is that of a
// read every iteration (LLOYD_SYNC_EVERY in clustr_fast/ops/kmeans.py; tests pin this).
constexpr int64_t kLloydSyncEvery = 4;

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kmeans_lloyd_groups_cuda(
    const at::Tensor& x_in, const at::Tensor& offsets_in, const at::Tensor& centers_in, int64_t max_iter, double tol,
    int64_t precision) {
  check_matrix(x_in, "x");
  check_matrix(centers_in, "centers");
  check_precision(precision);
  TORCH_CHECK(offsets_in.dim() == 1 && offsets_in.numel() >= 2, "offsets must be 1-D with at least two entries");
  TORCH_CHECK(max_iter >= 0, "max_iter must be >= 0");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto acc = acc_type(x_in.scalar_type());
  const at::Tensor x = x_in.detach().to(acc).contiguous();
  const int64_t G = offsets_in.numel() - 1, N = x.size(0), D = x.size(1);
  TORCH_CHECK(centers_in.size(0) % G == 0 && centers_in.size(0) > 0, "centers must hold k rows per group");
  TORCH_CHECK(centers_in.size(1) == D, "centers must have ", D, " columns, got ", centers_in.size(1));
  const int64_t k = centers_in.size(0) / G, K = G * k;
  at::Tensor centers = centers_in.detach().to(x.options()).contiguous().clone();
  const at::Tensor offsets = offsets_in.to(x.device(), at::kLong);
  const at::Tensor sizes = offsets.slice(0, 1) - offsets.slice(0, 0, G);
  const at::Tensor groups = at::repeat_interleave(at::arange(G, offsets.options()), sizes, 0, N);
  const at::Tensor tol_g = group_tolerances_cuda(x, groups, sizes, tol);
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  auto [labels, sq] = kmeans_assign_cuda(x, centers, precision, groups, k);
  const auto iopt = x.options().dtype(at::kInt);
  at::Tensor n_iter = at::zeros({G}, x.options().dtype(at::kLong));
  at::Tensor active = at::ones({G}, iopt), changed = at::zeros({G}, iopt), any = at::zeros({1}, iopt);
  at::Tensor shift = at::zeros({G}, x.options().dtype(at::kDouble));
  auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t it = 0; it < max_iter && N > 0; ++it) {
    at::Tensor updated = std::get<0>(kmeans_update_cuda(x, labels, K, centers, deterministic, std::nullopt));
    AT_DISPATCH_FLOATING_TYPES(acc, "kmeans_lloyd_groups_cuda", [&] {
      groups_mask_shift_kernel<scalar_t><<<K, 128, 0, stream>>>(updated.data_ptr<scalar_t>(),
                                                                centers.data_ptr<scalar_t>(), active.data_ptr<int>(),
                                                                shift.data_ptr<double>(), k, D);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    centers = updated;
    auto [now, now_sq] = kmeans_assign_cuda(x, centers, precision, groups, k);
    groups_changed_kernel<<<(N + 255) / 256, 256, 0, stream>>>(now.data_ptr<int64_t>(), labels.data_ptr<int64_t>(),
                                                              groups.data_ptr<int64_t>(), changed.data_ptr<int>(), N);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    labels = now;
    sq = now_sq;
    groups_status_kernel<<<1, 256, 0, stream>>>(active.data_ptr<int>(), changed.data_ptr<int>(),
                                                shift.data_ptr<double>(), tol_g.data_ptr<double>(),
                                                n_iter.data_ptr<int64_t>(), any.data_ptr<int>(), G);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if ((it + 1) % kLloydSyncEvery == 0 && any.item<int>() == 0) break;
  }
  return {labels, sq, centers, n_iter};
}

}  // namespace

TORCH_LIBRARY_IMPL(clustr_fast_C, CUDA, m) {
  m.impl("kmeans_assign", &kmeans_assign_cuda);
  m.impl("kmeans_update", &kmeans_update_cuda);
  m.impl("kmeans_plusplus", &kmeans_plusplus_cuda);
  m.impl("kmeans_lloyd_groups", &kmeans_lloyd_groups_cuda);
}

}  // namespace clustr_fast
