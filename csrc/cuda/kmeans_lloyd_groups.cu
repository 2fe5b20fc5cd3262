// kmeans_lloyd_groups on CUDA: Lloyd's algorithm in every segment, each stopping on its own.
// The loop runs on the host side of the extension: per iteration it calls kmeans_update_cuda and
// the grouped kmeans_assign_cuda directly (declared in kmeans_common.cuh, no dispatcher round
// trip) and launches three small kernels (mask-and-shift, changed labels, status).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include <optional>
#include <tuple>

#include "common.h"
#include "cuda/kmeans_common.cuh"
#include "op_checks.h"

namespace clustr_fast {
namespace {

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
  check_lloyd_groups(x_in, offsets_in, centers_in, max_iter, precision);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto acc = acc_type(x_in.scalar_type());
  const at::Tensor x = x_in.detach().to(acc).contiguous();
  const int64_t G = offsets_in.numel() - 1, N = x.size(0), D = x.size(1);
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

TORCH_LIBRARY_IMPL(clustr_fast, CUDA, m) {
  m.impl("kmeans_lloyd_groups", &kmeans_lloyd_groups_cuda);
}

}  // namespace clustr_fast
