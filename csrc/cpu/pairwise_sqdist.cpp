// pairwise_sqdist on the CPU: register-blocked products of 6 rows with panels of packed
// centers (cpu/center_panels.h), written straight to the output with the norm/clamp epilogue:
//   out[i,k] = max(||x_i||^2 + ||c_k||^2 - 2 x_i.c_k, 0)
// Shapes: x [N,d], c [K,d] -> out [N,K] (float64 for float64 inputs, else float32). The [N,K]
// output is written once and never read back (a BLAS product would write it, then the
// epilogue would read and write it again).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common.h"
#include "cpu/center_panels.h"
#include "op_checks.h"

namespace clustr_fast {
namespace {

// The panels [p0, p1) against R rows x[0, R): out rows [0, R) (row stride K), columns of those
// panels; xn [R] the rows' squared norms.
template <typename T, int R>
inline __attribute__((always_inline)) void sqdist_tile(const T* x, int64_t D, const PackedCenters<T>& c, int64_t p0,
                                                       int64_t p1, const T* xn, T* out) {
  using V = typename PanelLanes<T>::V;
  constexpr int W = PanelLanes<T>::W, P = PanelLanes<T>::P;
  const int64_t K = c.K;
  for (int64_t p = p0; p < p1; ++p) {
    V acc0[R], acc1[R];
    panel_products<T, R>(x, D, c.pack.data() + p * D * P, acc0, acc1);
    V n0, n1;
    std::memcpy(&n0, c.norms.data() + p * P, sizeof(V));
    std::memcpy(&n1, c.norms.data() + p * P + W, sizeof(V));
    const int64_t col = p * P;
    for (int r = 0; r < R; ++r) {
      V v0 = (xn[r] + n0) - T(2) * acc0[r], v1 = (xn[r] + n1) - T(2) * acc1[r];
      v0 = v0 > V{} ? v0 : V{};
      v1 = v1 > V{} ? v1 : V{};
      T* o = out + r * K + col;
      if (col + P <= K) {
        std::memcpy(o, &v0, sizeof(V));
        std::memcpy(o + W, &v1, sizeof(V));
      } else {
        for (int64_t j = 0; j < K - col; ++j) o[j] = j < W ? v0[j] : v1[j - W];
      }
    }
  }
}

// Rows [r0, r0 + rows) of the output: center blocks outside, micro-tiles inside.
template <typename T>
inline __attribute__((always_inline)) void sqdist_rows(const T* x, int64_t r0, int64_t rows, const PackedCenters<T>& c,
                                                       const T* xn, T* out) {
  const int64_t D = c.D, K = c.K;
  for (int64_t p0 = 0; p0 < c.panels; p0 += c.block_panels) {
    const int64_t p1 = std::min(c.panels, p0 + c.block_panels);
    int64_t i = r0;
    for (; i + kTileRows <= r0 + rows; i += kTileRows) {
      prefetch_rows(x, i + kTileRows, std::min<int64_t>(kTileRows, r0 + rows - i - kTileRows), D);
      sqdist_tile<T, kTileRows>(x + i * D, D, c, p0, p1, xn + i, out + i * K);
    }
    const T* xr = x + i * D;
    switch (r0 + rows - i) {
      case 1: sqdist_tile<T, 1>(xr, D, c, p0, p1, xn + i, out + i * K); break;
      case 2: sqdist_tile<T, 2>(xr, D, c, p0, p1, xn + i, out + i * K); break;
      case 3: sqdist_tile<T, 3>(xr, D, c, p0, p1, xn + i, out + i * K); break;
      case 4: sqdist_tile<T, 4>(xr, D, c, p0, p1, xn + i, out + i * K); break;
      case 5: sqdist_tile<T, 5>(xr, D, c, p0, p1, xn + i, out + i * K); break;
      default: break;
    }
  }
}

CLUSTR_VEC_CLONES void sqdist_rows_f(const float* x, int64_t r0, int64_t rows, const PackedCenters<float>& c,
                                     const float* xn, float* out) {
  sqdist_rows<float>(x, r0, rows, c, xn, out);
}
CLUSTR_VEC_CLONES void sqdist_rows_d(const double* x, int64_t r0, int64_t rows, const PackedCenters<double>& c,
                                     const double* xn, double* out) {
  sqdist_rows<double>(x, r0, rows, c, xn, out);
}
inline void sqdist_rows_any(const float* x, int64_t r0, int64_t rows, const PackedCenters<float>& c,
                            const float* xn, float* out) {
  sqdist_rows_f(x, r0, rows, c, xn, out);
}
inline void sqdist_rows_any(const double* x, int64_t r0, int64_t rows, const PackedCenters<double>& c,
                            const double* xn, double* out) {
  sqdist_rows_d(x, r0, rows, c, xn, out);
}

at::Tensor pairwise_sqdist_cpu(const at::Tensor& x_in, const at::Tensor& c_in, int64_t precision) {
  check_pairwise_sqdist(x_in, c_in, precision);
  const auto acc = acc_type(x_in.scalar_type());
  const at::Tensor x = x_in.to(acc).contiguous();
  const at::Tensor c = c_in.to(acc).contiguous();
  const int64_t N = x.size(0), K = c.size(0);
  at::Tensor out = at::empty({N, K}, x.options());
  if (N == 0 || K == 0) return out;
  const at::Tensor xn = x.square().sum(1);
  // Blocks of 96 rows (16 micro-tiles): each block reuses a center block from L2 across its
  // tiles; blocks are spread over the threads.
  constexpr int64_t kRows = 16 * kTileRows;
  AT_DISPATCH_FLOATING_TYPES(acc, "pairwise_sqdist_cpu", [&] {
    const PackedCenters<scalar_t> pc(c);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* xnp = xn.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, (N + kRows - 1) / kRows, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) sqdist_rows_any(xp, b * kRows, std::min(kRows, N - b * kRows), pc, xnp, op);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> pairwise_sqdist_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                                const at::Tensor& c, int64_t precision) {
  return pairwise_sqdist_backward_products(grad, x, c, precision);
}

}  // namespace

TORCH_LIBRARY_IMPL(clustr_fast, CPU, m) {
  m.impl("pairwise_sqdist", &pairwise_sqdist_cpu);
  m.impl("pairwise_sqdist_backward", &pairwise_sqdist_backward_cpu);
}

}  // namespace clustr_fast
