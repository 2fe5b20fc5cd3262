// Magnet loss on CUDA, batch form, fused (magnet_loss_batch): the whole batch in ONE block (the
// ClusTR batch is 240 x 512 with 12 clusters), phases separated by __syncthreads, everything but
// the rows of f in shared memory:
//   1. counts n_k (shared atomics) and means mu_k (a thread per column sums the rows)
//   2. d_ik = ||f_i - mu_k||^2 by explicit differences (a warp per row, 8 clusters per pass)
//      -> P [N, M]; sigma^2 = sum_i d_{i,a_i} / (N - 1) (block reduction), or given
//   3. a thread per row: logsumexp over impostors, loss_i, total = sum_i w_i loss_i and
//      P_ik = -s gL_i softmax_k (impostors), P_{i,a_i} += -s gA_i, R_i = rowsum(P)
//   4. gmu_k = 2 (colsum(P)_k mu_k - sum_i P_ik f_i) / n_k  (a thread per column and 8 clusters)
//   5. grad f_i = 2 (R_i f_i - sum_k P_ik mu_k) + gmu_{a_i} + cv (f_i - mu_{a_i}),
//      cv = 4 s^2 sum_i (gA_i own_i + gL_i E_i) / (N - 1) for the batch variance, else 0.
// Shared memory (magnet_batch_layout.h): mu, gmu [M, d], P [N, M], R [N], colsum [M] (acc_t) and counts [M] (int).
// loss_i and (gA, gL) come from magnet_math.h.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <optional>

#include "common.h"
#include "cuda/device_math.cuh"
#include "magnet_batch_layout.h"
#include "magnet_math.h"
#include "op_checks.h"

namespace clustr_fast {
namespace {

constexpr int kBatchThreads = 512, kBatchWarps = kBatchThreads / 32, kBatchKC = 8;

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kBatchThreads) magnet_batch_kernel(
    const scalar_t* __restrict__ f, const int64_t* __restrict__ ids, const int32_t* __restrict__ cls,
    const acc_t* __restrict__ var_ptr, const acc_t* __restrict__ wptr, acc_t* __restrict__ loss,
    acc_t* __restrict__ total, scalar_t* __restrict__ grad, int64_t N, int64_t M, int64_t D, int64_t sfn,
    int64_t sfd, int var_mode, acc_t var_value, acc_t weight, acc_t alpha, acc_t log_eps, bool use_eps,
    bool with_grad) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ acc_t red[kBatchWarps];
  acc_t* mu = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* gmu = mu + M * D;
  acc_t* P = gmu + M * D;
  acc_t* rs = P + N * M;
  acc_t* colsum = rs + N;
  int32_t* cnt = reinterpret_cast<int32_t*>(colsum + M);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;

  // 1. counts and means
  for (int64_t k = tid; k < M; k += blockDim.x) cnt[k] = 0;
  __syncthreads();
  for (int64_t i = tid; i < N; i += blockDim.x) atomicAdd(&cnt[ids[i]], 1);
  for (int64_t j = tid; j < D; j += blockDim.x) {
    for (int64_t k = 0; k < M; ++k) mu[k * D + j] = acc_t(0);
    for (int64_t i = 0; i < N; ++i) mu[ids[i] * D + j] += static_cast<acc_t>(f[i * sfn + j * sfd]);
  }
  __syncthreads();
  for (int64_t j = tid; j < D; j += blockDim.x)
    for (int64_t k = 0; k < M; ++k) mu[k * D + j] /= acc_t(cnt[k] > 0 ? cnt[k] : 1);
  __syncthreads();

  // 2. distances, a warp per row
  for (int64_t i = warp; i < N; i += kBatchWarps) {
    for (int64_t k0 = 0; k0 < M; k0 += kBatchKC) {
      acc_t acc[kBatchKC];
#pragma unroll
      for (int kk = 0; kk < kBatchKC; ++kk) acc[kk] = acc_t(0);
      for (int64_t j = lane; j < D; j += 32) {
        const acc_t fv = static_cast<acc_t>(f[i * sfn + j * sfd]);
#pragma unroll
        for (int kk = 0; kk < kBatchKC; ++kk) {
          if (k0 + kk < M) {
            const acc_t t = fv - mu[(k0 + kk) * D + j];
            acc[kk] = fma(t, t, acc[kk]);
          }
        }
      }
#pragma unroll
      for (int kk = 0; kk < kBatchKC; ++kk) {
        const acc_t v = warp_sum(acc[kk]);
        if (lane == 0 && k0 + kk < M) P[i * M + k0 + kk] = v;
      }
    }
  }
  __syncthreads();
  acc_t var = var_value;
  if (var_mode == 0) {
    acc_t own_sum = acc_t(0);
    for (int64_t i = tid; i < N; i += blockDim.x) own_sum += P[i * M + ids[i]];
    var = block_sum<kBatchWarps>(own_sum, red) / acc_t(N - 1);
  } else if (var_mode == 1) {
    var = var_ptr[0];
  }
  const acc_t s = acc_t(0.5) / var;

  // 3. a thread per row: loss, total, P and its row sums
  acc_t my_total = acc_t(0), my_g = acc_t(0);
  for (int64_t i = tid; i < N; i += blockDim.x) {
    acc_t* d = P + i * M;
    const int64_t ai = ids[i];
    const int32_t ci = cls[ai];
    const acc_t own = d[ai];
    acc_t m = neg_inf<acc_t>();
    for (int64_t k = 0; k < M; ++k)
      if (cnt[k] > 0 && cls[k] != ci) m = max(m, -s * d[k]);
    const bool has = m > neg_inf<acc_t>();
    acc_t l = acc_t(0), e = acc_t(0);
    if (has) {
      for (int64_t k = 0; k < M; ++k) {
        if (cnt[k] > 0 && cls[k] != ci) {
          const acc_t p = exp(-s * d[k] - m);
          l += p;
          e = fma(p, d[k], e);
        }
      }
    }
    const acc_t lse = has ? m + log(l) : neg_inf<acc_t>();
    const acc_t ex = has ? e / l : acc_t(0);
    const acc_t u = magnet::row_loss(-s * own - alpha, lse, has, use_eps, log_eps);
    loss[i] = u;
    const acc_t wi = wptr != nullptr ? wptr[i] : weight;
    my_total += wi * u;
    if (!with_grad) continue;
    acc_t ga, gl;
    magnet::row_coefficients(wi, u, own, lse, s, alpha, use_eps, log_eps, ga, gl);
    my_g += ga * own + gl * ex;
    acc_t sum = acc_t(0);
    for (int64_t k = 0; k < M; ++k) {
      const acc_t p = (has && cnt[k] > 0 && cls[k] != ci) ? -s * gl * exp(-s * d[k] - lse) : acc_t(0);
      d[k] = p;
      sum += p;
    }
    d[ai] += -s * ga;
    rs[i] = sum - s * ga;
  }
  const acc_t tot = block_sum<kBatchWarps>(my_total, red);
  if (tid == 0) total[0] = tot;
  if (!with_grad) return;
  const acc_t gsum = block_sum<kBatchWarps>(my_g, red);  // ends with __syncthreads: P and R are complete
  const acc_t cv = var_mode == 0 ? acc_t(4) * s * s * gsum / acc_t(N - 1) : acc_t(0);
  for (int64_t k = tid; k < M; k += blockDim.x) {
    acc_t c = acc_t(0);
    for (int64_t i = 0; i < N; ++i) c += P[i * M + k];
    colsum[k] = c;
  }
  __syncthreads();

  // 4. gradient in the means, scaled by 1 / n_k
  const int64_t kchunks = (M + kBatchKC - 1) / kBatchKC;
  for (int64_t item = tid; item < kchunks * D; item += blockDim.x) {
    const int64_t k0 = (item / D) * kBatchKC, j = item % D;
    acc_t acc[kBatchKC];
#pragma unroll
    for (int kk = 0; kk < kBatchKC; ++kk) acc[kk] = acc_t(0);
    for (int64_t i = 0; i < N; ++i) {
      const acc_t fv = static_cast<acc_t>(f[i * sfn + j * sfd]);
#pragma unroll
      for (int kk = 0; kk < kBatchKC; ++kk)
        if (k0 + kk < M) acc[kk] = fma(P[i * M + k0 + kk], fv, acc[kk]);
    }
#pragma unroll
    for (int kk = 0; kk < kBatchKC; ++kk) {
      const int64_t k = k0 + kk;
      if (k < M) gmu[k * D + j] = acc_t(2) * (colsum[k] * mu[k * D + j] - acc[kk]) / acc_t(cnt[k] > 0 ? cnt[k] : 1);
    }
  }
  __syncthreads();

  // 5. gradient in feats
  for (int64_t e = tid; e < N * D; e += blockDim.x) {
    const int64_t i = e / D, j = e % D;
    const int64_t ai = ids[i];
    const acc_t fv = static_cast<acc_t>(f[i * sfn + j * sfd]);
    acc_t pm = acc_t(0);
    for (int64_t k = 0; k < M; ++k) pm = fma(P[i * M + k], mu[k * D + j], pm);
    const acc_t g = acc_t(2) * (rs[i] * fv - pm) + gmu[ai * D + j] + cv * (fv - mu[ai * D + j]);
    grad[e] = static_cast<scalar_t>(g);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> magnet_loss_batch_cuda(
    const at::Tensor& feats_in, const at::Tensor& ids_in, const at::Tensor& classes,
    const std::optional<at::Tensor>& variance, double variance_value, double alpha, double eps,
    const std::optional<at::Tensor>& row_weight, double weight, bool with_grad) {
  const int var_mode = magnet_batch_var_mode(variance, variance_value);
  check_magnet_loss_batch(feats_in, ids_in, classes, var_mode, row_weight);
  const c10::cuda::CUDAGuard guard(feats_in.device());
  const at::Tensor feats = feats_in.detach();
  const auto acc = acc_type(feats.scalar_type());
  const int64_t N = feats.size(0), D = feats.size(1), M = classes.size(0);
  const auto acc_opts = feats.options().dtype(acc);
  at::Tensor loss = at::empty({N}, acc_opts);
  at::Tensor total = at::zeros({}, acc_opts);
  at::Tensor grad = with_grad ? at::empty({N, D}, feats.options()) : at::empty({0, D}, feats.options());
  if (N == 0) return {loss, total, grad};
  const at::Tensor ids = ids_in.detach().to(at::kLong).contiguous();
  const at::Tensor cls = classes.detach().to(at::kInt).contiguous();
  at::Tensor v, w;
  if (variance.has_value()) v = variance->detach().to(acc).reshape({1}).contiguous();
  if (row_weight.has_value()) w = row_weight->detach().to(acc).contiguous();
  const int64_t smem = magnet_batch_shared_bytes(N, M, D, acc == at::kDouble ? 8 : 4);
  const int64_t smem_max = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  TORCH_CHECK(smem + int64_t(sizeof(double)) * kBatchWarps <= smem_max, "magnet_loss_batch: the batch needs ", smem, " bytes of shared memory, the device has ",
              smem_max, " per block; use the unfused path");
  const bool use_eps = eps > 0;
  const double log_eps = use_eps ? std::log(eps) : 0.0;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feats.scalar_type(), "magnet_loss_batch_cuda", [&] {
    using acc_t = acc_scalar_t<scalar_t>;
    auto kernel = magnet_batch_kernel<scalar_t, acc_t>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    kernel<<<1, kBatchThreads, smem, stream>>>(
        feats.data_ptr<scalar_t>(), ids.data_ptr<int64_t>(), cls.data_ptr<int32_t>(),
        v.defined() ? v.data_ptr<acc_t>() : nullptr, w.defined() ? w.data_ptr<acc_t>() : nullptr,
        loss.data_ptr<acc_t>(), total.data_ptr<acc_t>(), with_grad ? grad.data_ptr<scalar_t>() : nullptr, N, M,
        D, feats.stride(0), feats.stride(1), var_mode, acc_t(variance_value), acc_t(weight), acc_t(alpha),
        acc_t(log_eps), use_eps, with_grad);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, total, grad};
}


}  // namespace

TORCH_LIBRARY_IMPL(clustr_fast, CUDA, m) {
  m.impl("magnet_loss_batch", &magnet_loss_batch_cuda);
}

}  // namespace clustr_fast
