// Magnet loss on CUDA.
//   s = 1/(2 var), own_i = ||f_i - mu_{a_i}||^2, z_ik = -s d_ik on impostors (class differs,
//   center valid), L_i = logsumexp_k z_ik, E_i = sum_k softmax(z_i)_k d_ik, A_i = -s own_i - alpha
//   eps > 0: loss_i = relu(-logaddexp(A_i - logaddexp(L_i, log eps), log eps))
//   eps = 0: loss_i = relu(L_i - A_i) (0 without impostor)
// Forward: one block owns 64 rows and walks the centers 64 at a time; each distance tile is
// a register-tiled SIMT product (IEEE fp32/fp64) consumed at once by an online logsumexp
// (16 lanes share a row and combine their max/sums with shuffles). Writes loss [N] and
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

namespace clustr_fast {
namespace {

constexpr int BM = 64, BN = 64, BK = 16, TM = 4, TN = 4, THREADS = 256, LANES = BN / TN;
constexpr int64_t kPBlockElems = int64_t(1) << 22;  // P entries per backward block (16 MB fp32)

template <typename T>
__device__ __forceinline__ T ninf() {
  return -std::numeric_limits<T>::infinity();
}

template <typename T>
__device__ __forceinline__ T group_max(T v) {  // over the 16 lanes that share a row
#pragma unroll
  for (int off = LANES / 2; off > 0; off /= 2) v = max(v, __shfl_xor_sync(0xffffffffu, v, off, LANES));
  return v;
}

template <typename T>
__device__ __forceinline__ T group_sum(T v) {
#pragma unroll
  for (int off = LANES / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off, LANES);
  return v;
}

template <typename T>
__device__ __forceinline__ T logaddexp(T x, T y) {
  const T hi = x > y ? x : y, lo = x > y ? y : x;
  return hi + log1p(exp(lo - hi));
}

template <typename T>
__device__ __forceinline__ T sigmoid(T t) {
  return t >= T(0) ? T(1) / (T(1) + exp(-t)) : exp(t) / (T(1) + exp(t));
}

// Loads a BK-slice of BM rows of x and BN rows of c into shared memory (as acc_t).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_tiles(acc_t (*xs)[BM + 1], acc_t (*cs)[BN + 1], const scalar_t* x,
                                           const scalar_t* c, int64_t row0, int64_t col0, int64_t k0,
                                           int64_t N, int64_t C, int64_t D, int64_t sxn, int64_t sxd,
                                           int64_t scn, int64_t scd) {
  for (int e = threadIdx.x; e < BM * BK; e += blockDim.x) {
    const int r = e / BK, kk = e % BK;
    const int64_t gr = row0 + r, gk = k0 + kk, gc = col0 + r;
    xs[kk][r] = (gr < N && gk < D) ? static_cast<acc_t>(x[gr * sxn + gk * sxd]) : acc_t(0);
    cs[kk][r] = (gc < C && gk < D) ? static_cast<acc_t>(c[gc * scn + gk * scd]) : acc_t(0);
  }
}

// acc[i][j] = x_row . c_col over d for this thread's 4x4 outputs; cn[j] = ||c_col||^2.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void dot_tile(acc_t (&acc)[TM][TN], acc_t (&cn)[TN], acc_t (*xs)[BM + 1],
                                         acc_t (*cs)[BN + 1], const scalar_t* x, const scalar_t* c,
                                         int64_t row0, int64_t col0, int64_t N, int64_t C, int64_t D,
                                         int64_t sxn, int64_t sxd, int64_t scn, int64_t scd) {
  const int tx = threadIdx.x % LANES, ty = threadIdx.x / LANES;
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = acc_t(0);
#pragma unroll
  for (int j = 0; j < TN; ++j) cn[j] = acc_t(0);
  for (int64_t k0 = 0; k0 < D; k0 += BK) {
    load_tiles<scalar_t, acc_t>(xs, cs, x, c, row0, col0, k0, N, C, D, sxn, sxd, scn, scd);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      acc_t a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = xs[kk][ty * TM + i];
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        b[j] = cs[kk][tx * TN + j];
        cn[j] = fma(b[j], b[j], cn[j]);
      }
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
}

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
  __shared__ acc_t xs[BK][BM + 1];
  __shared__ acc_t cs[BK][BN + 1];
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
    fn[i] = group_sum(f2);
    own[i] = group_sum(o2);
    m[i] = ninf<acc_t>();
    l[i] = acc_t(0);
    e[i] = acc_t(0);
  }

  for (int64_t col0 = 0; col0 < C; col0 += BN) {
    acc_t acc[TM][TN], cn[TN];
    dot_tile<scalar_t, acc_t>(acc, cn, xs, cs, x, c, row0, col0, N, C, D, sxn, sxd, scn, scd);
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const bool row_ok = row0 + ty * TM + i < N;
      acc_t z[TN], dist[TN], zmax = ninf<acc_t>();
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const int64_t col = col0 + tx * TN + j;
        const acc_t dd = fn[i] + cn[j] - acc_t(2) * acc[i][j];
        dist[j] = dd > acc_t(0) ? dd : acc_t(0);
        z[j] = (row_ok && is_impostor(cls, valid, col, C, ci[i])) ? -s * dist[j] : ninf<acc_t>();
        zmax = max(zmax, z[j]);
      }
      zmax = group_max(zmax);
      const acc_t m_new = max(m[i], zmax);
      const acc_t m_safe = m_new == ninf<acc_t>() ? acc_t(0) : m_new;
      acc_t ls = acc_t(0), es = acc_t(0);
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const acc_t p = z[j] == ninf<acc_t>() ? acc_t(0) : exp(z[j] - m_safe);
        ls += p;
        es = fma(p, dist[j], es);
      }
      ls = group_sum(ls);
      es = group_sum(es);
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
    const bool has = m[i] > ninf<acc_t>();
    const acc_t lse = has ? m[i] + log(l[i]) : ninf<acc_t>();
    const acc_t a = -s * own[i] - alpha;
    acc_t u;
    if (use_eps) {
      const acc_t b = has ? logaddexp(lse, log_eps) : log_eps;
      u = -logaddexp(a - b, log_eps);
    } else {
      u = has ? lse - a : acc_t(0);
    }
    loss[r] = u > acc_t(0) ? u : acc_t(0);
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
  const bool has = lse > ninf<acc_t>();
  const acc_t gate = loss[i] > acc_t(0) ? grad[i] : acc_t(0);
  acc_t ga, gl;
  if (use_eps) {
    const acc_t b = has ? logaddexp(lse, log_eps) : log_eps;
    const acc_t sig = sigmoid(-s * own - alpha - b - log_eps);
    const acc_t tau = has ? sigmoid(lse - log_eps) : acc_t(0);
    ga = -gate * sig;
    gl = gate * sig * tau;
  } else {
    ga = has ? -gate : acc_t(0);
    gl = has ? gate : acc_t(0);
  }
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
  __shared__ acc_t xs[BK][BM + 1];
  __shared__ acc_t cs[BK][BN + 1];
  const int tx = threadIdx.x % LANES, ty = threadIdx.x / LANES;
  const int64_t row0 = (int64_t)blockIdx.y * BM, col0 = (int64_t)blockIdx.x * BN;
  const acc_t s = acc_t(0.5) / var[0];
  acc_t acc[TM][TN], cn[TN];
  dot_tile<acc_t, acc_t>(acc, cn, xs, cs, x, c, row0, col0, R, C, D, D, 1, D, 1);
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t r = row0 + ty * TM + i;
    if (r >= R) continue;
    const int64_t ar = assign[r];
    const int32_t ci = cls[ar];
    const acc_t li = lse[r] == ninf<acc_t>() ? acc_t(0) : lse[r];
    const acc_t cl = coef_l[r], ca = coef_a[r], fi = fn[r];
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t col = col0 + tx * TN + j;
      if (col >= C) continue;
      const acc_t dd = fi + cn[j] - acc_t(2) * acc[i][j];
      const acc_t dist = dd > acc_t(0) ? dd : acc_t(0);
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
  check_matrix(feats, "feats");
  check_matrix(centers, "centers");
  TORCH_CHECK(feats.size(1) == centers.size(1), "feats and centers must have the same number of columns");
  TORCH_CHECK(feats.scalar_type() == centers.scalar_type(), "feats and centers must have the same dtype");
  TORCH_CHECK(assign.dim() == 1 && assign.size(0) == feats.size(0), "assign must have shape [N]");
  TORCH_CHECK(classes.dim() == 1 && classes.size(0) == centers.size(0), "classes must have shape [C]");
  TORCH_CHECK(!valid.has_value() || (valid->dim() == 1 && valid->size(0) == centers.size(0)),
              "valid must have shape [C]");
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
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
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

// --------------------------------------------------------------------------- batch form, fused
// magnet_loss_batch: the whole batch in ONE block (the ClusTR batch is 240 x 512 with 12
// clusters), phases separated by __syncthreads, everything but the rows of f in shared memory:
//   1. counts n_k (shared atomics) and means mu_k (a thread per column sums the rows)
//   2. d_ik = ||f_i - mu_k||^2 by explicit differences (a warp per row, 8 clusters per pass)
//      -> P [N, M]; sigma^2 = sum_i d_{i,a_i} / (N - 1) (block reduction), or given
//   3. a thread per row: logsumexp over impostors, loss_i, total = sum_i w_i loss_i and
//      P_ik = -s gL_i softmax_k (impostors), P_{i,a_i} += -s gA_i, R_i = rowsum(P)
//   4. gmu_k = 2 (colsum(P)_k mu_k - sum_i P_ik f_i) / n_k  (a thread per column and 8 clusters)
//   5. grad f_i = 2 (R_i f_i - sum_k P_ik mu_k) + gmu_{a_i} + cv (f_i - mu_{a_i}),
//      cv = 4 s^2 sum_i (gA_i own_i + gL_i E_i) / (N - 1) for the batch variance, else 0.
// Shared memory: mu, gmu [M, d], P [N, M], R [N], colsum [M] (acc_t) and counts [M] (int).
constexpr int kBatchThreads = 512, kBatchWarps = kBatchThreads / 32, kBatchKC = 8;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Sum over the block; every thread gets the result. red: kBatchWarps entries of shared memory.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* red) {
  v = warp_sum(v);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T r = lane < kBatchWarps ? red[lane] : T(0);
    r = warp_sum(r);
    if (lane == 0) red[0] = r;
  }
  __syncthreads();
  return red[0];
}

inline int64_t batch_shared_bytes(int64_t N, int64_t M, int64_t D, int64_t acc_size) {
  return acc_size * (2 * M * D + N * M + N + M) + 4 * M;
}

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
  int* cnt = reinterpret_cast<int*>(colsum + M);
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
    var = block_sum(own_sum, red) / acc_t(N - 1);
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
    acc_t m = ninf<acc_t>();
    for (int64_t k = 0; k < M; ++k)
      if (cnt[k] > 0 && cls[k] != ci) m = max(m, -s * d[k]);
    const bool has = m > ninf<acc_t>();
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
    const acc_t lse = has ? m + log(l) : ninf<acc_t>();
    const acc_t ex = has ? e / l : acc_t(0);
    const acc_t a = -s * own - alpha;
    acc_t u, b = log_eps;
    if (use_eps) {
      b = has ? logaddexp(lse, log_eps) : log_eps;
      u = -logaddexp(a - b, log_eps);
    } else {
      u = has ? lse - a : acc_t(0);
    }
    u = u > acc_t(0) ? u : acc_t(0);
    loss[i] = u;
    const acc_t wi = wptr != nullptr ? wptr[i] : weight;
    my_total += wi * u;
    if (!with_grad) continue;
    const acc_t gate = u > acc_t(0) ? wi : acc_t(0);
    acc_t ga, gl;
    if (use_eps) {
      const acc_t sig = sigmoid(a - b - log_eps);
      const acc_t tau = has ? sigmoid(lse - log_eps) : acc_t(0);
      ga = -gate * sig;
      gl = gate * sig * tau;
    } else {
      ga = has ? -gate : acc_t(0);
      gl = has ? gate : acc_t(0);
    }
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
  const acc_t tot = block_sum(my_total, red);
  if (tid == 0) total[0] = tot;
  if (!with_grad) return;
  const acc_t gsum = block_sum(my_g, red);  // ends with __syncthreads: P and R are complete
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
  check_matrix(feats_in, "feats");
  TORCH_CHECK(ids_in.dim() == 1 && ids_in.size(0) == feats_in.size(0), "ids must have shape [N]");
  TORCH_CHECK(classes.dim() == 1 && classes.size(0) >= 1, "classes must have shape [M], M >= 1");
  const c10::cuda::CUDAGuard guard(feats_in.device());
  const at::Tensor feats = feats_in.detach();
  const auto acc = acc_type(feats.scalar_type());
  const int64_t N = feats.size(0), D = feats.size(1), M = classes.size(0);
  const auto acc_opts = feats.options().dtype(acc);
  at::Tensor loss = at::empty({N}, acc_opts);
  at::Tensor total = at::zeros({}, acc_opts);
  at::Tensor grad = with_grad ? at::empty({N, D}, feats.options()) : at::empty({0, D}, feats.options());
  if (N == 0) return {loss, total, grad};
  const int var_mode = variance.has_value() ? 1 : (variance_value > 0 ? 2 : 0);
  TORCH_CHECK(var_mode != 0 || N >= 2, "feats needs at least 2 rows for the batch variance");
  const at::Tensor ids = ids_in.detach().to(at::kLong).contiguous();
  const at::Tensor cls = classes.detach().to(at::kInt).contiguous();
  at::Tensor v, w;
  if (variance.has_value()) v = variance->detach().to(acc).reshape({1}).contiguous();
  if (row_weight.has_value()) {
    TORCH_CHECK(row_weight->dim() == 1 && row_weight->size(0) == N, "row_weight must have shape [N]");
    w = row_weight->detach().to(acc).contiguous();
  }
  const int64_t smem = batch_shared_bytes(N, M, D, acc == at::kDouble ? 8 : 4);
  const int64_t smem_max = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  TORCH_CHECK(smem + int64_t(sizeof(double)) * kBatchWarps <= smem_max, "magnet_loss_batch: the batch needs ", smem, " bytes of shared memory, the device has ",
              smem_max, " per block; use the unfused path");
  const bool use_eps = eps > 0;
  const double log_eps = use_eps ? std::log(eps) : 0.0;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feats.scalar_type(), "magnet_loss_batch_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
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

TORCH_LIBRARY_IMPL(clustr_fast_C, CUDA, m) {
  m.impl("magnet_loss_fwd", &magnet_loss_fwd_cuda);
  m.impl("magnet_loss_bwd", &magnet_loss_bwd_cuda);
  m.impl("magnet_loss_batch", &magnet_loss_batch_cuda);
}

}  // namespace clustr_fast
