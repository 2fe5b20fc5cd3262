// Magnet loss on the CPU, global form: forward and backward, fused per block of rows
// (the row-block machinery is in magnet_blocks.h, the per-row math in magnet_math.h).
// Forward: per block of rows one GEMM gives f.mu, the row then turns its distances into
// z, max, sum of exp and E while the block is in cache. Writes loss [N], stats [3,N] = (own, L, E).
// Backward: per block the distances are recomputed and turned into P = d(loss)/d(dist)
//   P_ik = -s gL_i exp(z_ik - L_i) (impostors), P_{i,a_i} = -s gA_i,
// then grad_f = 2 (rowsum(P) f - P mu) and grad_mu = -2 (P^T f - colsum(P) mu) (per-thread sums);
// grad_var = 2 s^2 sum_i (gA_i own_i + gL_i E_i). Only a [rows, C] block per thread is held.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "common.h"
#include "cpu/magnet_blocks.h"
#include "cpu/vec_math.h"
#include "magnet_math.h"

namespace clustr_fast {
namespace {

template <typename T>
void forward_rows(const Inputs& in, T s, T alpha, bool use_eps, T log_eps, at::Tensor& loss,
                  at::Tensor& stats) {
  const int64_t N = in.N, C = in.C, D = in.D;
  T* own_p = stats.data_ptr<T>();
  const RowBlock<T> rb = row_block<T>(in, loss.data_ptr<T>(), own_p, own_p + N, own_p + 2 * N);
  const at::Tensor ct = in.c.t();
  const int64_t rows = block_rows(C);
  at::parallel_for(0, (N + rows - 1) / rows, block_grain(C, D), [&](int64_t b0, int64_t b1) {
    at::Tensor buf = at::empty({rows, C}, in.x.options());
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * rows, r1 = std::min(N, r0 + rows);
      at::Tensor blk = buf.narrow(0, 0, r1 - r0);
      at::mm_out(blk, in.x.narrow(0, r0, r1 - r0), ct);
      forward_block_vec(rb, blk.data_ptr<T>(), r0, r1, s, alpha, use_eps, log_eps);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> magnet_loss_fwd_cpu(const at::Tensor& feats, const at::Tensor& centers,
                                                       const at::Tensor& assign, const at::Tensor& classes,
                                                       const std::optional<at::Tensor>& valid,
                                                       const at::Tensor& var, double alpha, double eps) {
  const Inputs in = prepare(feats, centers, assign, classes, valid);
  const auto opts = in.x.options();
  at::Tensor loss = at::empty({in.N}, opts);
  at::Tensor stats = at::empty({3, in.N}, opts);
  if (in.N == 0) return {loss, stats};
  const double s = 0.5 / var.detach().item<double>();
  const bool use_eps = eps > 0;
  const double log_eps = use_eps ? std::log(eps) : 0.0;
  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "magnet_loss_fwd_cpu", [&] {
    forward_rows<scalar_t>(in, scalar_t(s), scalar_t(alpha), use_eps, scalar_t(log_eps), loss, stats);
  });
  return {loss, stats};
}

// Row i of P from its impostor logits z (in place): P_ik = cl exp(z_k - L_i) on impostors, 0
// elsewhere, plus ca on the own center a_i. Returns rowsum(P)_i.
template <typename T>
inline __attribute__((always_inline)) T logits_to_p(T* p, int64_t C, T cl, T lse, T ca, int64_t ai) {
  const T ninf = -std::numeric_limits<T>::infinity();
  const T li = lse > ninf ? lse : T(0);
  T sum = T(0);
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < C; ++k) {
    const T ez = exp_fast(p[k] - li);
    const T v = p[k] > ninf ? cl * ez : T(0);
    p[k] = v;
    sum += v;
  }
  p[ai] += ca;
  return sum + ca;
}

// P for one block of rows, in place over the f.mu block; returns nothing, fills rowsum.
template <typename T>
inline void gradient_block(const Inputs& in, T* bp, int64_t r0, int64_t r1, T s, const T* coef_a,
                           const T* coef_l, const T* lse, T* rowsum) {
  const int64_t C = in.C, D = in.D;
  const T* x = in.x.data_ptr<T>();
  const T* cn = in.cn.data_ptr<T>();
  const int64_t* a = in.assign.data_ptr<int64_t>();
  const T* cls = in.cls.data_ptr<T>();
  const T* valid = in.valid.data_ptr<T>();
  for (int64_t i = r0; i < r1; ++i) {
    T* p = bp + (i - r0) * C;
    impostor_logits(p, cn, cls, valid, cls[a[i]], squared_norm(x + i * D, D), s, C);
    rowsum[i - r0] = logits_to_p(p, C, coef_l[i], lse[i], coef_a[i], a[i]);
  }
}

CLUSTR_VEC_CLONES void gradient_block_f(const Inputs& in, float* bp, int64_t r0, int64_t r1, float s,
                                        const float* coef_a, const float* coef_l, const float* lse, float* rowsum) {
  gradient_block<float>(in, bp, r0, r1, s, coef_a, coef_l, lse, rowsum);
}
CLUSTR_VEC_CLONES void gradient_block_d(const Inputs& in, double* bp, int64_t r0, int64_t r1, double s,
                                        const double* coef_a, const double* coef_l, const double* lse,
                                        double* rowsum) {
  gradient_block<double>(in, bp, r0, r1, s, coef_a, coef_l, lse, rowsum);
}
inline void gradient_block_vec(const Inputs& in, float* bp, int64_t r0, int64_t r1, float s, const float* coef_a,
                               const float* coef_l, const float* lse, float* rowsum) {
  gradient_block_f(in, bp, r0, r1, s, coef_a, coef_l, lse, rowsum);
}
inline void gradient_block_vec(const Inputs& in, double* bp, int64_t r0, int64_t r1, double s,
                               const double* coef_a, const double* coef_l, const double* lse, double* rowsum) {
  gradient_block_d(in, bp, r0, r1, s, coef_a, coef_l, lse, rowsum);
}

template <typename T>
void backward_rows(const Inputs& in, T s, const T* coef_a, const T* coef_l, const T* lse,
                   at::Tensor& grad_f, at::Tensor& grad_mu) {
  over_row_blocks<T>(in, grad_mu, [&](int64_t t, int64_t r0, int64_t r1, at::Tensor& blk, at::Tensor& my_mu,
                                      T* my_col) {
    std::vector<T> rs(r1 - r0);
    const at::Tensor xb = in.x.narrow(0, r0, r1 - r0);
    at::mm_out(blk, xb, in.c.t());
    gradient_block_vec(in, blk.data_ptr<T>(), r0, r1, s, coef_a, coef_l, lse, rs.data());
    p_block_to_gradients<T>(in, blk, xb, r0, rs.data(), grad_f, my_mu, my_col);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> magnet_loss_bwd_cpu(
    const at::Tensor& grad, const at::Tensor& feats, const at::Tensor& centers, const at::Tensor& assign,
    const at::Tensor& classes, const std::optional<at::Tensor>& valid, const at::Tensor& var,
    const at::Tensor& loss, const at::Tensor& stats, double alpha, double eps) {
  const Inputs in = prepare(feats, centers, assign, classes, valid);
  const auto opts = in.x.options();
  const int64_t N = in.N;
  at::Tensor grad_f = at::empty({N, in.D}, opts);
  at::Tensor grad_mu = at::zeros({in.C, in.D}, opts);
  at::Tensor grad_var = at::zeros({}, opts);
  if (N == 0) return {grad_f.to(feats.scalar_type()), grad_mu.to(centers.scalar_type()), grad_var};
  const double s = 0.5 / var.detach().item<double>();
  const bool use_eps = eps > 0;
  const double log_eps = use_eps ? std::log(eps) : 0.0;
  const at::Tensor g = grad.detach().to(opts.dtype()).contiguous();
  const at::Tensor l = loss.detach().to(opts.dtype()).contiguous();
  const at::Tensor st = stats.detach().to(opts.dtype()).contiguous();
  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "magnet_loss_bwd_cpu", [&] {
    using T = scalar_t;
    std::vector<T> coef_a(N), coef_l(N);
    const T* gp = g.data_ptr<T>();
    const T* lp = l.data_ptr<T>();
    const T* own = st.data_ptr<T>();
    const T* lse = own + N;
    const T* ex = own + 2 * N;
    const T ts = T(s);
    double gs = 0.0;  // sum_i gA own + gL E
    for (int64_t i = 0; i < N; ++i) {
      T ga, gl;
      magnet::row_coefficients(gp[i], lp[i], own[i], lse[i], ts, T(alpha), use_eps, T(log_eps), ga, gl);
      coef_a[i] = -ts * ga;
      coef_l[i] = -ts * gl;
      gs += double(ga) * double(own[i]) + double(gl) * double(ex[i]);
    }
    grad_var.fill_(2.0 * s * s * gs);
    backward_rows<T>(in, ts, coef_a.data(), coef_l.data(), lse, grad_f, grad_mu);
  });
  return {grad_f.to(feats.scalar_type()), grad_mu.to(centers.scalar_type()), grad_var.to(var.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(clustr_fast, CPU, m) {
  m.impl("magnet_loss_fwd", &magnet_loss_fwd_cpu);
  m.impl("magnet_loss_bwd", &magnet_loss_bwd_cpu);
}

}  // namespace clustr_fast
