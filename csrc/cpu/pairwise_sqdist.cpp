// pairwise_sqdist on the CPU: one BLAS product per block of rows, with the
// norm/clamp epilogue applied while the block is still in cache.
//   out[i,k] = max(||x_i||^2 + ||c_k||^2 - 2 x_i.c_k, 0)
// Shapes: x [N,d], c [K,d] -> out [N,K] (float64 for float64 inputs, else float32).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common.h"

namespace clustr_fast {
namespace {

// out[i,k] = max(xn[i] + cn[k] - 2 out[i,k], 0) over one block of rows.
template <typename scalar_t>
void sqdist_epilogue(scalar_t* o, const scalar_t* xn, const scalar_t* cn, int64_t rows, int64_t K) {
  for (int64_t i = 0; i < rows; ++i) {
    const scalar_t xi = xn[i];
    scalar_t* orow = o + i * K;
#pragma omp simd
    for (int64_t k = 0; k < K; ++k) {
      const scalar_t v = xi + cn[k] - scalar_t(2) * orow[k];
      orow[k] = v > scalar_t(0) ? v : scalar_t(0);
    }
  }
}

CLUSTR_VEC_CLONES void sqdist_epilogue_f(float* o, const float* xn, const float* cn, int64_t rows, int64_t K) {
  sqdist_epilogue<float>(o, xn, cn, rows, K);
}
CLUSTR_VEC_CLONES void sqdist_epilogue_d(double* o, const double* xn, const double* cn, int64_t rows, int64_t K) {
  sqdist_epilogue<double>(o, xn, cn, rows, K);
}
inline void sqdist_epilogue_vec(float* o, const float* xn, const float* cn, int64_t rows, int64_t K) {
  sqdist_epilogue_f(o, xn, cn, rows, K);
}
inline void sqdist_epilogue_vec(double* o, const double* xn, const double* cn, int64_t rows, int64_t K) {
  sqdist_epilogue_d(o, xn, cn, rows, K);
}

at::Tensor pairwise_sqdist_cpu(const at::Tensor& x_in, const at::Tensor& c_in, int64_t precision) {
  check_matrix(x_in, "x");
  check_matrix(c_in, "c");
  check_precision(precision);
  TORCH_CHECK(x_in.size(1) == c_in.size(1), "x and c must have the same number of columns");
  const auto acc = acc_type(x_in.scalar_type());
  const at::Tensor x = x_in.detach().to(acc).contiguous();
  const at::Tensor c = c_in.detach().to(acc).contiguous();
  const int64_t N = x.size(0), K = c.size(0);
  at::Tensor out = at::empty({N, K}, x.options());
  if (N == 0 || K == 0) return out;
  const at::Tensor xn = x.square().sum(1);
  const at::Tensor cn = c.square().sum(1);
  const at::Tensor ct = c.t();
  // Blocks of rows: each block runs its own (single-threaded) GEMM and epilogue,
  // so the [N,K] output is touched once while hot.
  const int64_t rows = std::max<int64_t>(16, std::min<int64_t>(256, (N + 1) / 2));
  AT_DISPATCH_FLOATING_TYPES(acc, "pairwise_sqdist_cpu", [&] {
    const scalar_t* xnp = xn.data_ptr<scalar_t>();
    const scalar_t* cnp = cn.data_ptr<scalar_t>();
    at::parallel_for(0, (N + rows - 1) / rows, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r0 = b * rows, r1 = std::min(N, r0 + rows);
        at::Tensor blk = out.narrow(0, r0, r1 - r0);
        at::mm_out(blk, x.narrow(0, r0, r1 - r0), ct);
        sqdist_epilogue_vec(blk.data_ptr<scalar_t>(), xnp + r0, cnp, r1 - r0, K);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> pairwise_sqdist_backward_cpu(const at::Tensor& grad,
                                                                const at::Tensor& x_in,
                                                                const at::Tensor& c_in,
                                                                int64_t precision) {
  check_matrix(x_in, "x");
  check_matrix(c_in, "c");
  check_precision(precision);
  const auto acc = acc_type(x_in.scalar_type());
  const at::Tensor g = grad.detach().to(acc);
  const at::Tensor x = x_in.detach().to(acc);
  const at::Tensor c = c_in.detach().to(acc);
  // grad_x = 2 rowsum(g) x - 2 g c ;  grad_c = 2 colsum(g) c - 2 g^T x  (one GEMM each)
  at::Tensor gx = at::addmm(x * g.sum(1, /*keepdim=*/true), g, c, /*beta=*/2, /*alpha=*/-2);
  at::Tensor gc = at::addmm(c * g.sum(0).unsqueeze(1), g.t(), x, /*beta=*/2, /*alpha=*/-2);
  return {gx.to(x_in.scalar_type()), gc.to(c_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(clustr_fast_C, CPU, m) {
  m.impl("pairwise_sqdist", &pairwise_sqdist_cpu);
  m.impl("pairwise_sqdist_backward", &pairwise_sqdist_backward_cpu);
}

}  // namespace clustr_fast
