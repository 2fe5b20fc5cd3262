// Magnet loss on CUDA, global form (magnet_loss_fwd, magnet_loss_bwd).
//   s = 1/(2 var), own_i = ||f_i - mu_{a_i}||^2, z_ik = -s d_ik on impostors (class differs,
//   center valid), L_i = logsumexp_k z_ik, E_i = sum_k softmax(z_i)_k d_ik, A_i = -s own_i - alpha;
//   loss_i and its coefficients (gA, gL) from magnet_math.h.
// Forward: one block owns 64 rows and walks the centers 64 at a time; each distance tile
// (distance_tile.cuh: register-tiled SIMT, IEEE fp32/fp64) is consumed at once by an online
// logsumexp (the 16 lanes of a row combine their max/sums with shuffles). Writes loss [N] and
// stats [3,N] = (own, L, E) only.
// Backward: a row kernel turns (grad, loss, stats) into -s gA, -s gL; then, for a bounded
// block of rows, a tile kernel recomputes the distances and writes
//   P_ik = -s gL_i exp(z_ik - L_i) (impostors),  P_{i,a_i} = -s gA_i,
// and two cuBLAS products give grad_f = 2 (rowsum(P) f - P mu), grad_mu = -2 (P^T f - colsum(P) mu).
// grad_var = 2 s^2 sum_i (gA_i own_i + gL_i E_i).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <optional>

#include "common.h"
#include "cuda/device_math.cuh"
#include "cuda/distance_tile.cuh"
#include "magnet_math.h"
#include "op_checks.h"

namespace clustr_fast {
namespace {

using tile::BM;
using tile::BN;
using tile::LANES;
using tile::TM;
using tile::THREADS;
using tile::TN;
constexpr int64_t kPBlockElems = int64_t(1) << 22;  // P entries per backward block (16 MB fp32)

__device__ __forceinline__ bool is_impostor(const int32_t* cls, const int32_t* valid, int64_t col, int64_t C,
                                            int32_t ci) {
  return col < C && cls[col] != ci && (valid == nullptr || valid[col] != 0);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(THREADS) magnet_fwd_kernel(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ c, const int64_t* __restrict__ assign,
    const int32_t* __restrict__ cls, const int32_t* __restrict__ valid, const acc_t* __restrict__ var,
    acc_t* __restrict__ loss, acc_t* __restrict__ stats, int64_t N, int64_t C, int64_t D, int64_t sxn,
    int64_t sxd, int64_t scn, int64_t scd, acc_t alpha, acc_t log_eps, bool use_eps) {
  __shared__ acc_t xs[tile::BK][BM + 1];
  __shared__ acc_t cs[tile::BK][BN + 1];
  const int tx = threadIdx.x % LANES, ty = threadIdx.x / LANES;
  const int64_t row0 = (int64_t)blockIdx.x * BM;
  const acc_t s = acc_t(0.5) / var[0];

  // Row prologue: ||f_i||^2 and own_i, the 16 lanes of a row splitting d.
  acc_t fn[TM], own[TM], m[TM], l[TM], e[TM];
  int32_t ci[TM];
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t r = row0 + ty * TM + i;
    acc_t f2 = acc_t(0), o2 = acc_t(0);
    ci[i] = 0;
    if (r < N) {
      const int64_t ar = assign[r];
      ci[i] = cls[ar];
      for (int64_t j = tx; j < D; j += LANES) {
        const acc_t fv = static_cast<acc_t>(x[r * sxn + j * sxd]);
        const acc_t dv = fv - static_cast<acc_t>(c[ar * scn + j * scd]);
        f2 = fma(fv, fv, f2);
        o2 = fma(dv, dv, o2);
      }
    }
    fn[i] = group_sum<LANES>(f2);
    own[i] = group_sum<LANES>(o2);
    m[i] = neg_inf<acc_t>();
    l[i] = acc_t(0);
    e[i] = acc_t(0);
  }

  for (int64_t col0 = 0; col0 < C; col0 += BN) {
    acc_t acc[TM][TN], cn[TN];
    tile::dot_tile<tile::BK, true, scalar_t, acc_t>(acc, cn, xs, cs, x, c, row0, col0, N, C, D, sxn, sxd, scn, scd);
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const bool row_ok = row0 + ty * TM + i < N;
      acc_t z[TN], dist[TN], zmax = neg_inf<acc_t>();
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const int64_t col = col0 + tx * TN + j;
        dist[j] = tile::sqdist_from_dot(fn[i], cn[j], acc[i][j]);
        z[j] = (row_ok && is_impostor(cls, valid, col, C, ci[i])) ? -s * dist[j] : neg_inf<acc_t>();
        zmax = max(zmax, z[j]);
      }
      zmax = group_max<LANES>(zmax);
      const acc_t m_new = max(m[i], zmax);
      const acc_t m_safe = m_new == neg_inf<acc_t>() ? acc_t(0) : m_new;
      acc_t ls = acc_t(0), es = acc_t(0);
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const acc_t p = z[j] == neg_inf<acc_t>() ? acc_t(0) : exp(z[j] - m_safe);
        ls += p;
        es = fma(p, dist[j], es);
      }
      ls = group_sum<LANES>(ls);
      es = group_sum<LANES>(es);
      const acc_t scale = exp(m[i] - m_safe);
      l[i] = l[i] * scale + ls;
      e[i] = e[i] * scale + es;
      m[i] = m_new;
    }
  }

  if (tx != 0) return;
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t r = row0 + ty * TM + i;
    if (r >= N) continue;
    const bool has = m[i] > neg_inf<acc_t>();
    const acc_t lse = has ? m[i] + log(l[i]) : neg_inf<acc_t>();
    loss[r] = magnet::row_loss(-s * own[i] - alpha, lse, has, use_eps, log_eps);
    stats[r] = own[i];
    stats[N + r] = lse;
    stats[2 * N + r] = has ? e[i] / l[i] : acc_t(0);
  }
}

// coef_a = -s gA, coef_l = -s gL, term = gA own + gL E (summed on the host side for grad_var).
template <typename acc_t>
__global__ void magnet_coef_kernel(const acc_t* __restrict__ grad, const acc_t* __restrict__ loss,
                                   const acc_t* __restrict__ stats, const acc_t* __restrict__ var,
                                   acc_t* __restrict__ coef_a, acc_t* __restrict__ coef_l,
                                   acc_t* __restrict__ term, int64_t N, acc_t alpha, acc_t log_eps,
                                   bool use_eps) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= N) return;
  const acc_t s = acc_t(0.5) / var[0];
  const acc_t own = stats[i], lse = stats[N + i], ex = stats[2 * N + i];
  acc_t ga, gl;
  magnet::row_coefficients(grad[i], loss[i], own, lse, s, alpha, use_eps, log_eps, ga, gl);
  coef_a[i] = -s * ga;
  coef_l[i] = -s * gl;
  term[i] = ga * own + gl * ex;
}

// P [R, C] for rows [0, R) of x (already in acc_t; see the file comment).
template <typename acc_t>
__global__ void __launch_bounds__(THREADS) magnet_p_kernel(
    const acc_t* __restrict__ x, const acc_t* __restrict__ c, const acc_t* __restrict__ fn,
    const int64_t* __restrict__ assign, const int32_t* __restrict__ cls, const int32_t* __restrict__ valid,
    const acc_t* __restrict__ var, const acc_t* __restrict__ coef_a, const acc_t* __restrict__ coef_l,
    const acc_t* __restrict__ lse, acc_t* __restrict__ P, int64_t R, int64_t C, int64_t D) {
  __shared__ acc_t xs[tile::BK][BM + 1];
  __shared__ acc_t cs[tile::BK][BN + 1];
  const int tx = threadIdx.x % LANES, ty = threadIdx.x / LANES;
  const int64_t row0 = (int64_t)blockIdx.y * BM, col0 = (int64_t)blockIdx.x * BN;
  const acc_t s = acc_t(0.5) / var[0];
  acc_t acc[TM][TN], cn[TN];
  tile::dot_tile<tile::BK, true, acc_t, acc_t>(acc, cn, xs, cs, x, c, row0, col0, R, C, D, D, 1, D, 1);
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t r = row0 + ty * TM + i;
    if (r >= R) continue;
    const int64_t ar = assign[r];
    const int32_t ci = cls[ar];
    const acc_t li = lse[r] == neg_inf<acc_t>() ? acc_t(0) : lse[r];
    const acc_t cl = coef_l[r], ca = coef_a[r], fi = fn[r];
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t col = col0 + tx * TN + j;
      if (col >= C) continue;
      const acc_t dist = tile::sqdist_from_dot(fi, cn[j], acc[i][j]);
      acc_t p = is_impostor(cls, valid, col, C, ci) ? cl * exp(-s * dist - li) : acc_t(0);
      if (col == ar) p += ca;
      P[r * C + col] = p;
    }
  }
}

struct Ids {
  at::Tensor assign, cls, valid;
};

Ids prepare_ids(const at::Tensor& assign, const at::Tensor& classes, const std::optional<at::Tensor>& valid) {
  Ids ids;
  ids.assign = assign.detach().to(at::kLong).contiguous();
  ids.cls = classes.detach().to(at::kInt).contiguous();
  if (valid.has_value()) ids.valid = valid->detach().to(at::kInt).contiguous();
  return ids;
}

void check_inputs(const at::Tensor& feats, const at::Tensor& centers, const at::Tensor& assign,
                  const at::Tensor& classes, const std::optional<at::Tensor>& valid) {
  check_magnet_loss(feats, centers, assign, classes, valid);
  check_same_dtype(feats, centers, "feats", "centers");
}

std::tuple<at::Tensor, at::Tensor> magnet_loss_fwd_cuda(const at::Tensor& feats_in, const at::Tensor& centers_in,
                                                        const at::Tensor& assign, const at::Tensor& classes,
                                                        const std::optional<at::Tensor>& valid,
                                                        const at::Tensor& var, double alpha, double eps) {
  check_inputs(feats_in, centers_in, assign, classes, valid);
  const c10::cuda::CUDAGuard guard(feats_in.device());
  const at::Tensor feats = feats_in.detach(), centers = centers_in.detach();
  const auto acc = acc_type(feats.scalar_type());
  const int64_t N = feats.size(0), C = centers.size(0), D = feats.size(1);
  at::Tensor loss = at::empty({N}, feats.options().dtype(acc));
  at::Tensor stats = at::empty({3, N}, feats.options().dtype(acc));
  if (N == 0) return {loss, stats};
  const Ids ids = prepare_ids(assign, classes, valid);
  const at::Tensor v = var.detach().to(acc).reshape({1}).contiguous();
  const bool use_eps = eps > 0;
  const double log_eps = use_eps ? std::log(eps) : 0.0;
  auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid((N + BM - 1) / BM);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feats.scalar_type(), "magnet_loss_fwd_cuda", [&] {
    using acc_t = acc_scalar_t<scalar_t>;
    magnet_fwd_kernel<scalar_t, acc_t><<<grid, THREADS, 0, stream>>>(
        feats.data_ptr<scalar_t>(), centers.data_ptr<scalar_t>(), ids.assign.data_ptr<int64_t>(),
        ids.cls.data_ptr<int32_t>(), ids.valid.defined() ? ids.valid.data_ptr<int32_t>() : nullptr,
        v.data_ptr<acc_t>(), loss.data_ptr<acc_t>(), stats.data_ptr<acc_t>(), N, C, D, feats.stride(0),
        feats.stride(1), centers.stride(0), centers.stride(1), acc_t(alpha), acc_t(log_eps), use_eps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> magnet_loss_bwd_cuda(
    const at::Tensor& grad, const at::Tensor& feats, const at::Tensor& centers, const at::Tensor& assign,
    const at::Tensor& classes, const std::optional<at::Tensor>& valid, const at::Tensor& var,
    const at::Tensor& loss, const at::Tensor& stats, double alpha, double eps) {
  check_inputs(feats, centers, assign, classes, valid);
  const c10::cuda::CUDAGuard guard(feats.device());
  const auto acc = acc_type(feats.scalar_type());
  const at::Tensor x = feats.detach().to(acc).contiguous();
  const at::Tensor c = centers.detach().to(acc).contiguous();
  const int64_t N = x.size(0), C = c.size(0), D = x.size(1);
  at::Tensor grad_f = at::empty({N, D}, x.options());
  at::Tensor grad_mu = at::zeros({C, D}, x.options());
  const at::Tensor v = var.detach().to(acc).reshape({1}).contiguous();
  if (N == 0) {
    return {grad_f.to(feats.scalar_type()), grad_mu.to(centers.scalar_type()), at::zeros_like(var)};
  }
  const Ids ids = prepare_ids(assign, classes, valid);
  const at::Tensor g = grad.detach().to(acc).contiguous();
  const at::Tensor l = loss.detach().to(acc).contiguous();
  const at::Tensor st = stats.detach().to(acc).contiguous();
  at::Tensor coef_a = at::empty({N}, x.options()), coef_l = at::empty({N}, x.options());
  at::Tensor term = at::empty({N}, x.options());
  const bool use_eps = eps > 0;
  const double log_eps = use_eps ? std::log(eps) : 0.0;
  auto stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor fn = x.square().sum(1).contiguous();
  const int64_t rows_per_block = std::max<int64_t>(1, std::min<int64_t>(N, kPBlockElems / std::max<int64_t>(C, 1)));
  at::Tensor p_buf = at::empty({rows_per_block, C}, x.options());
  at::Tensor col_sum = at::zeros({C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "magnet_loss_bwd_cuda", [&] {
    magnet_coef_kernel<scalar_t><<<(N + 255) / 256, 256, 0, stream>>>(
        g.data_ptr<scalar_t>(), l.data_ptr<scalar_t>(), st.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
        coef_a.data_ptr<scalar_t>(), coef_l.data_ptr<scalar_t>(), term.data_ptr<scalar_t>(), N,
        scalar_t(alpha), scalar_t(log_eps), use_eps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const scalar_t* lse = st.data_ptr<scalar_t>() + N;
    for (int64_t r0 = 0; r0 < N; r0 += rows_per_block) {
      const int64_t R = std::min(N, r0 + rows_per_block) - r0;
      at::Tensor p = p_buf.narrow(0, 0, R);
      const dim3 grid((C + BN - 1) / BN, (R + BM - 1) / BM);
      magnet_p_kernel<scalar_t><<<grid, THREADS, 0, stream>>>(
          x.data_ptr<scalar_t>() + r0 * D, c.data_ptr<scalar_t>(), fn.data_ptr<scalar_t>() + r0,
          ids.assign.data_ptr<int64_t>() + r0, ids.cls.data_ptr<int32_t>(),
          ids.valid.defined() ? ids.valid.data_ptr<int32_t>() : nullptr, v.data_ptr<scalar_t>(),
          coef_a.data_ptr<scalar_t>() + r0, coef_l.data_ptr<scalar_t>() + r0, lse + r0,
          p.data_ptr<scalar_t>(), R, C, D);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const at::Tensor xr = x.narrow(0, r0, R);
      at::Tensor gfr = grad_f.narrow(0, r0, R);
      at::addmm_out(gfr, xr * p.sum(1, /*keepdim=*/true), p, c, /*beta=*/2, /*alpha=*/-2);
      grad_mu.addmm_(p.t(), xr, /*beta=*/1, /*alpha=*/-2);
      col_sum.add_(p.sum(0));
    }
  });
  grad_mu.add_(c * col_sum.unsqueeze(1), 2);
  // d loss / d var = -2 s^2 d loss / d s = 2 s^2 sum_i (gA own + gL E) = 0.5 / var^2 * sum(term)
  at::Tensor grad_var = (term.sum() * 0.5 / v.squeeze(0).square()).to(var.scalar_type()).reshape(var.sizes());
  return {grad_f.to(feats.scalar_type()), grad_mu.to(centers.scalar_type()), grad_var};
}

}  // namespace

TORCH_LIBRARY_IMPL(clustr_fast, CUDA, m) {
  m.impl("magnet_loss_fwd", &magnet_loss_fwd_cuda);
  m.impl("magnet_loss_bwd", &magnet_loss_bwd_cuda);
}

}  // namespace clustr_fast
