// kmeans_plusplus on CUDA: greedy k-means++ seeding batched over segments. Per step: sample (one
// D^2 draw per segment and trial: block-sum scan, then row scan), eval (distances of the T
// candidates: the only read of x, kept in dc), select (least potential), update
// (closest = min(closest, dc[best]) and the block sums of the next draw).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <limits>
#include <optional>
#include <vector>

#include "common.h"
#include "cuda/kmeans_common.cuh"
#include "op_checks.h"

namespace clustr_fast {
namespace {

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
      const acc_t v = warp_sqdist<acc_t>(x + r * sxn, x + cr * sxn, D, sxd, sxd);
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
  check_plusplus_draws(draws_in, k, G);
  check_row_weights(weights_in, N);
  const int64_t T = draws_in.size(2);
  at::Tensor idx = at::empty({G, k}, x.options().dtype(at::kLong));
  if (G == 0 || k == 0) return idx;
  // blocks of at most 512 rows inside every segment
  const int64_t* op = offsets.data_ptr<int64_t>();
  check_segment_rows(op, G, k);
  std::vector<int64_t> bs_v, be_v, bg_v, gb_v{0};
  for (int64_t g = 0; g < G; ++g) {
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
  if (weights_in.has_value()) w = weights_in->to(x.device(), acc).contiguous();
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
    using acc_t = acc_scalar_t<scalar_t>;
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

}  // namespace

TORCH_LIBRARY_IMPL(clustr_fast, CUDA, m) {
  m.impl("kmeans_plusplus", &kmeans_plusplus_cuda);
}

}  // namespace clustr_fast
