// soft_cluster_logits on CUDA (ClusTR Eq. 4 over the top-D nearest centers).
//
// Forward, two kernels:
//  1. select: a block of 256 threads owns 64 rows; for each tile of 64 centers it
//     computes the 64x64 distance tile (distance_tile.cuh: register-tiled SIMT FFMA, IEEE
//     fp32) into shared memory, then thread r keeps row r's running top-D list (ties:
//     lower index) in its rows of idx [N,D] and of a value scratch [N,D]. No [N,C] buffer.
//  2. finalize: one warp per row recomputes the D selected distances exactly (direct
//     differences), z = -d / (2 sigma^2), the logsumexp Z over the selection, and the
//     per-class logsumexp (logaddexp into the output row), minus Z:
//       out[i,c] = logsumexp_{j in S_i, cls_j = c} z_ij - Z_i     (-inf when absent)
// Backward: one warp per row recomputes z and Z, forms a_j = 2 dL/dd_j, writes
//   grad_f_i = sum_j a_j (f_i - mu_j) and atomically adds -a_j (f_i - mu_j) to grad_mu_j.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <cmath>

#include "common.h"
#include "cuda/device_math.cuh"
#include "cuda/distance_tile.cuh"
#include "op_checks.h"

namespace clustr_fast {
namespace {

constexpr int SBM = tile::BM, SBN = tile::BN, SBK = tile::BK, STM = tile::TM, STN = tile::TN;

template <typename scalar_t, typename acc_t>
__global__ void select_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ c,
                              const acc_t* __restrict__ xn, const acc_t* __restrict__ cn,
                              int64_t* __restrict__ idx, acc_t* __restrict__ val, int64_t N, int64_t C,
                              int64_t D, int64_t TOPD, int64_t sxn, int64_t sxd, int64_t scn, int64_t scd) {
  constexpr int BK = sizeof(acc_t) == 8 ? SBK / 2 : SBK;  // float64 tiles must fit 48 KB of shared memory
  __shared__ acc_t xs[BK][SBM + 1];
  __shared__ acc_t cs[BK][SBN + 1];
  __shared__ acc_t dist[SBM][SBN + 1];
  const int tid = threadIdx.x;
  const int tx = tid % (SBN / STN), ty = tid / (SBN / STN);
  const int64_t row0 = (int64_t)blockIdx.x * SBM;
  // selection state of row (row0 + tid) for tid < SBM
  int64_t count = 0;
  acc_t worst_v = acc_t(0);
  int64_t worst_s = 0;
  const int64_t my_row = row0 + tid;
  const bool selector = tid < SBM && my_row < N;
  int64_t* my_idx = idx + my_row * TOPD;
  acc_t* my_val = val + my_row * TOPD;

  for (int64_t col0 = 0; col0 < C; col0 += SBN) {
    acc_t acc[STM][STN];
    tile::dot_tile<BK, scalar_t, acc_t>(acc, xs, cs, x, c, row0, col0, N, C, D, sxn, sxd, scn, scd);
#pragma unroll
    for (int i = 0; i < STM; ++i) {
      const int r = ty * STM + i;
      const int64_t gr = row0 + r;
      const acc_t xi = gr < N ? xn[gr] : acc_t(0);
#pragma unroll
      for (int j = 0; j < STN; ++j) {
        const int cc = tx * STN + j;
        const int64_t gc = col0 + cc;
        dist[r][cc] = tile::sqdist_from_dot(xi, gc < C ? cn[gc] : acc_t(0), acc[i][j]);
      }
    }
    __syncthreads();
    if (selector) {
      const int64_t ncols = (C - col0) < SBN ? (C - col0) : SBN;
      for (int cc = 0; cc < ncols; ++cc) {
        const acc_t v = dist[tid][cc];
        const int64_t j = col0 + cc;
        if (count < TOPD) {  // fill in index order
          my_idx[count] = j;
          my_val[count] = v;
          ++count;
          if (count == TOPD) {
            worst_s = 0;
            worst_v = my_val[0];
            for (int64_t s = 1; s < TOPD; ++s) {  // lexicographic max: later slots hold higher indices
              if (my_val[s] >= worst_v) { worst_v = my_val[s]; worst_s = s; }
            }
          }
        } else if (v < worst_v) {  // a later index loses ties
          my_idx[worst_s] = j;
          my_val[worst_s] = v;
          worst_s = 0;
          worst_v = my_val[0];
          int64_t worst_j = my_idx[0];
          for (int64_t s = 1; s < TOPD; ++s) {
            const acc_t w = my_val[s];
            const int64_t wj = my_idx[s];
            if (w > worst_v || (w == worst_v && wj > worst_j)) { worst_v = w; worst_s = s; worst_j = wj; }
          }
        }
      }
    }
    __syncthreads();
  }
}

// z_s = -scale * ||x_row - mu_{idx_s}||^2 into zrow[s] (all lanes get every value); returns Z.
template <typename scalar_t, typename acc_t>
__device__ acc_t warp_selected_logits(const scalar_t* __restrict__ x, const scalar_t* __restrict__ c,
                                      const int64_t* __restrict__ sel, acc_t* __restrict__ zrow, int64_t row,
                                      int64_t D, int64_t TOPD, int64_t sxn, int64_t sxd, int64_t scn,
                                      int64_t scd, acc_t scale, int lane) {
  acc_t zmax = neg_inf<acc_t>();
  for (int64_t s = 0; s < TOPD; ++s) {
    const int64_t j = sel[s];
    acc_t part = acc_t(0);
    for (int64_t k = lane; k < D; k += 32) {
      const acc_t t = static_cast<acc_t>(x[row * sxn + k * sxd]) - static_cast<acc_t>(c[j * scn + k * scd]);
      part += t * t;
    }
    const acc_t z = -scale * warp_sum(part);
    if (lane == 0) zrow[s] = z;
    zmax = max(zmax, z);
  }
  __syncwarp();
  if (!(zmax > neg_inf<acc_t>())) return zmax;
  acc_t part = acc_t(0);
  for (int64_t s = lane; s < TOPD; s += 32) part += exp(zrow[s] - zmax);
  return zmax + log(warp_sum(part));
}

template <typename scalar_t, typename acc_t>
__global__ void finalize_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ c,
                                const int64_t* __restrict__ cls, const int64_t* __restrict__ idx,
                                acc_t* __restrict__ zbuf, acc_t* __restrict__ out, int64_t N, int64_t D,
                                int64_t L, int64_t TOPD, int64_t sxn, int64_t sxd, int64_t scn, int64_t scd,
                                acc_t scale) {
  const int lane = threadIdx.x % 32;
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= N) return;
  const int64_t* sel = idx + row * TOPD;
  acc_t* zrow = zbuf + row * TOPD;
  acc_t* orow = out + row * L;
  const acc_t Z = warp_selected_logits(x, c, sel, zrow, row, D, TOPD, sxn, sxd, scn, scd, scale, lane);
  for (int64_t k = lane; k < L; k += 32) orow[k] = neg_inf<acc_t>();
  __syncwarp();
  if (!(Z > neg_inf<acc_t>())) return;
  if (lane == 0) {
    for (int64_t s = 0; s < TOPD; ++s) {  // per-class logsumexp by logaddexp, in place
      const acc_t z = zrow[s];
      if (!(z > neg_inf<acc_t>())) continue;
      const int64_t k = cls[sel[s]];
      const acc_t o = orow[k];
      const acc_t m = max(o, z);
      orow[k] = (o > neg_inf<acc_t>()) ? m + log1p(exp(-fabs(o - z))) : z;
    }
  }
  __syncwarp();
  for (int64_t k = lane; k < L; k += 32) {
    const acc_t o = orow[k];
    if (o > neg_inf<acc_t>()) orow[k] = o - Z;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const acc_t* __restrict__ g, const acc_t* __restrict__ out,
                                const int64_t* __restrict__ idx, const scalar_t* __restrict__ x,
                                const scalar_t* __restrict__ c, const int64_t* __restrict__ cls,
                                acc_t* __restrict__ abuf, acc_t* __restrict__ gx, acc_t* __restrict__ gmu,
                                int64_t N, int64_t D, int64_t L, int64_t TOPD, int64_t sxn, int64_t sxd,
                                int64_t scn, int64_t scd, acc_t scale) {
  const int lane = threadIdx.x % 32;
  const int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= N) return;
  const int64_t* sel = idx + row * TOPD;
  acc_t* arow = abuf + row * TOPD;
  const acc_t* grow = g + row * L;
  const acc_t* orow = out + row * L;
  const acc_t Z = warp_selected_logits(x, c, sel, arow, row, D, TOPD, sxn, sxd, scn, scd, scale, lane);
  const bool any = Z > neg_inf<acc_t>();
  acc_t part = acc_t(0);
  for (int64_t k = lane; k < L; k += 32) part += orow[k] > neg_inf<acc_t>() ? grow[k] : acc_t(0);
  const acc_t G = warp_sum(part);
  for (int64_t s = lane; s < TOPD; s += 32) {  // z -> a = 2 dL/dd in place
    const acc_t z = arow[s];
    const int64_t k = cls[sel[s]];
    const acc_t o = orow[k];
    acc_t a = acc_t(0);
    if (any && z > neg_inf<acc_t>() && o > neg_inf<acc_t>()) {
      const acc_t zl = z - Z;
      a = acc_t(-2) * scale * (grow[k] * exp(zl - o) - G * exp(zl));
    }
    arow[s] = a;
  }
  __syncwarp();
  for (int64_t k = lane; k < D; k += 32) {
    const acc_t xk = static_cast<acc_t>(x[row * sxn + k * sxd]);
    acc_t acc = acc_t(0);
    for (int64_t s = 0; s < TOPD; ++s) {
      const acc_t a = arow[s];
      if (a == acc_t(0)) continue;
      const int64_t j = sel[s];
      const acc_t t = a * (xk - static_cast<acc_t>(c[j * scn + k * scd]));
      acc += t;
      atomicAdd(gmu + j * D + k, -t);
    }
    gx[row * D + k] = acc;
  }
}

std::tuple<at::Tensor, at::Tensor> soft_cluster_logits_cuda(const at::Tensor& feats_in, const at::Tensor& centers_in,
                                                            const at::Tensor& center_classes, int64_t num_classes,
                                                            double variance, int64_t top_d, int64_t precision) {
  check_soft_cluster_logits(feats_in, centers_in, center_classes, num_classes, variance, top_d, precision);
  check_same_dtype(feats_in, centers_in, "feats", "centers");
  const c10::cuda::CUDAGuard guard(feats_in.device());
  const at::Tensor feats = feats_in.detach();
  const at::Tensor centers = centers_in.detach();
  const at::Tensor cls = center_classes.detach().to(at::kLong).contiguous();
  const auto acc = acc_type(feats.scalar_type());
  const int64_t N = feats.size(0), C = centers.size(0), D = feats.size(1);
  at::Tensor out = at::empty({N, num_classes}, feats.options().dtype(acc));
  at::Tensor idx = at::empty({N, top_d}, feats.options().dtype(at::kLong));
  if (N == 0) return {out, idx};
  at::Tensor val = at::empty({N, top_d}, feats.options().dtype(acc));
  const at::Tensor xn = feats.to(acc).square().sum(1).contiguous();
  const at::Tensor cn = centers.to(acc).square().sum(1).contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feats.scalar_type(), "soft_cluster_logits_cuda", [&] {
    using acc_t = acc_scalar_t<scalar_t>;
    const scalar_t* xp = feats.data_ptr<scalar_t>();
    const scalar_t* cp = centers.data_ptr<scalar_t>();
    select_kernel<scalar_t, acc_t><<<(N + SBM - 1) / SBM, 256, 0, stream>>>(
        xp, cp, xn.data_ptr<acc_t>(), cn.data_ptr<acc_t>(), idx.data_ptr<int64_t>(), val.data_ptr<acc_t>(), N, C,
        D, top_d, feats.stride(0), feats.stride(1), centers.stride(0), centers.stride(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    finalize_kernel<scalar_t, acc_t><<<(N + 7) / 8, 256, 0, stream>>>(
        xp, cp, cls.data_ptr<int64_t>(), idx.data_ptr<int64_t>(), val.data_ptr<acc_t>(), out.data_ptr<acc_t>(), N,
        D, num_classes, top_d, feats.stride(0), feats.stride(1), centers.stride(0), centers.stride(1),
        static_cast<acc_t>(0.5 / variance));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, idx};
}

std::tuple<at::Tensor, at::Tensor> soft_cluster_logits_backward_cuda(const at::Tensor& grad, const at::Tensor& out,
                                                                     const at::Tensor& idx_in,
                                                                     const at::Tensor& feats_in,
                                                                     const at::Tensor& centers_in,
                                                                     const at::Tensor& center_classes,
                                                                     double variance) {
  // atomicAdd into grad_centers: raises (warns) under torch.use_deterministic_algorithms(True)
  at::globalContext().alertNotDeterministic("clustr_fast soft_cluster_logits_backward on the 'cuda' backend");
  check_soft_cluster_logits_backward(grad, out, idx_in, feats_in, centers_in, variance);
  check_same_dtype(feats_in, centers_in, "feats", "centers");
  const c10::cuda::CUDAGuard guard(feats_in.device());
  const at::Tensor feats = feats_in.detach();
  const at::Tensor centers = centers_in.detach();
  const auto acc = acc_type(feats.scalar_type());
  const at::Tensor g = grad.detach().to(acc).contiguous();
  const at::Tensor o = out.detach().to(acc).contiguous();
  const at::Tensor idx = idx_in.detach().to(at::kLong).contiguous();
  const at::Tensor cls = center_classes.detach().to(at::kLong).contiguous();
  const int64_t N = feats.size(0), C = centers.size(0), D = feats.size(1), L = o.size(1), TOPD = idx.size(1);
  at::Tensor gx = at::zeros({N, D}, feats.options().dtype(acc));
  at::Tensor gmu = at::zeros({C, D}, feats.options().dtype(acc));
  if (N > 0 && D > 0 && TOPD > 0) {
    at::Tensor abuf = at::empty({N, TOPD}, feats.options().dtype(acc));
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feats.scalar_type(), "soft_cluster_logits_bwd_cuda",
                                    [&] {
      using acc_t = acc_scalar_t<scalar_t>;
      backward_kernel<scalar_t, acc_t><<<(N + 7) / 8, 256, 0, stream>>>(
          g.data_ptr<acc_t>(), o.data_ptr<acc_t>(), idx.data_ptr<int64_t>(), feats.data_ptr<scalar_t>(),
          centers.data_ptr<scalar_t>(), cls.data_ptr<int64_t>(), abuf.data_ptr<acc_t>(), gx.data_ptr<acc_t>(),
          gmu.data_ptr<acc_t>(), N, D, L, TOPD, feats.stride(0), feats.stride(1), centers.stride(0),
          centers.stride(1), static_cast<acc_t>(0.5 / variance));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {gx.to(feats.scalar_type()), gmu.to(centers.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(clustr_fast, CUDA, m) {
  m.impl("soft_cluster_logits", &soft_cluster_logits_cuda);
  m.impl("soft_cluster_logits_backward", &soft_cluster_logits_backward_cuda);
}

}  // namespace clustr_fast
