// Magnet loss on the CPU, global form fused with its gradient (reduction mean/sum): one pass per
// block of rows computes the row losses and, from the same logits, P = d(loss)/d(dist) and its
// gradient terms (3 products instead of the 4 of forward + backward). With var absent, sigma^2
// is the cluster variance of (feats, centers, assign), computed here, and its gradient is folded
// into grad_feats and grad_centers. Row-block machinery: magnet_blocks.h; per-row math: magnet_math.h.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "common.h"
#include "cpu/magnet_blocks.h"
#include "cpu/vec_math.h"
#include "magnet_math.h"

namespace clustr_fast {
namespace {

// Fused global form (forward with its gradient, for the loss total = weight * sum_i loss_i): per
// block one product f.mu; forward_block turns it into impostor logits and the row losses, then
// the same logits become P (no second product to recompute the distances). lsum[t], gs[t]: the
// task's sum of losses and of gA own + gL E.
// bp holds the impostor weights exp(z_ik - m_i) (forward_block with wsum_p), whose sum is
// wsum_i: P_ik = -s gL_i weight_ik / wsum_i, plus -s gA_i on the own center.
template <typename T>
inline void fused_p_block(const Inputs& in, T* bp, int64_t r0, int64_t r1, T s, T alpha, bool use_eps, T log_eps,
                          T weight, const T* loss, const T* own, const T* lse, const T* ex, const T* wsum,
                          T* rowsum, double& lsum, double& gs) {
  const int64_t C = in.C;
  const int64_t* a = in.assign.data_ptr<int64_t>();
  for (int64_t i = r0; i < r1; ++i) {
    T ga, gl;
    magnet::row_coefficients(weight, loss[i], own[i], lse[i], s, alpha, use_eps, log_eps, ga, gl);
    gs += double(ga) * double(own[i]) + double(gl) * double(ex[i]);
    lsum += double(loss[i]);
    T* p = bp + (i - r0) * C;
    const T scale = wsum[i] > T(0) ? -s * gl / wsum[i] : T(0);
    T sum = T(0);
#pragma omp simd reduction(+ : sum)
    for (int64_t k = 0; k < C; ++k) {
      p[k] *= scale;
      sum += p[k];
    }
    p[a[i]] += -s * ga;
    rowsum[i - r0] = sum - s * ga;
  }
}
CLUSTR_VEC_CLONES void fused_p_block_f(const Inputs& in, float* bp, int64_t r0, int64_t r1, float s, float alpha,
                                       bool use_eps, float log_eps, float weight, const float* loss, const float* own,
                                       const float* lse, const float* ex, const float* wsum, float* rowsum,
                                       double& lsum, double& gs) {
  fused_p_block<float>(in, bp, r0, r1, s, alpha, use_eps, log_eps, weight, loss, own, lse, ex, wsum, rowsum, lsum,
                       gs);
}
CLUSTR_VEC_CLONES void fused_p_block_d(const Inputs& in, double* bp, int64_t r0, int64_t r1, double s, double alpha,
                                       bool use_eps, double log_eps, double weight, const double* loss,
                                       const double* own, const double* lse, const double* ex, const double* wsum,
                                       double* rowsum, double& lsum, double& gs) {
  fused_p_block<double>(in, bp, r0, r1, s, alpha, use_eps, log_eps, weight, loss, own, lse, ex, wsum, rowsum, lsum,
                        gs);
}
inline void fused_p_block_vec(const Inputs& in, float* bp, int64_t r0, int64_t r1, float s, float alpha, bool use_eps,
                              float log_eps, float weight, const float* loss, const float* own, const float* lse,
                              const float* ex, const float* wsum, float* rowsum, double& lsum, double& gs) {
  fused_p_block_f(in, bp, r0, r1, s, alpha, use_eps, log_eps, weight, loss, own, lse, ex, wsum, rowsum, lsum, gs);
}
inline void fused_p_block_vec(const Inputs& in, double* bp, int64_t r0, int64_t r1, double s, double alpha,
                              bool use_eps, double log_eps, double weight, const double* loss, const double* own,
                              const double* lse, const double* ex, const double* wsum, double* rowsum, double& lsum,
                              double& gs) {
  fused_p_block_d(in, bp, r0, r1, s, alpha, use_eps, log_eps, weight, loss, own, lse, ex, wsum, rowsum, lsum, gs);
}

// Returns (sum of losses, sum of gA own + gL E), both in task order.
template <typename T>
std::pair<double, double> fused_rows(const Inputs& in, T s, T alpha, bool use_eps, T log_eps, T weight,
                                     at::Tensor& grad_f, at::Tensor& grad_mu) {
  const int64_t N = in.N;
  std::vector<T> loss(N), own(N), lse(N), ex(N), wsum(N);
  std::vector<double> lsum(at::get_num_threads() + 1, 0.0), gs(at::get_num_threads() + 1, 0.0);
  const RowBlock<T> rb = row_block<T>(in, loss.data(), own.data(), lse.data(), ex.data(), wsum.data());
  const at::Tensor ct = in.c.t();
  over_row_blocks<T>(in, grad_mu, [&](int64_t t, int64_t r0, int64_t r1, at::Tensor& blk, at::Tensor& my_mu,
                                      T* my_col) {
    std::vector<T> rs(r1 - r0);
    const at::Tensor xb = in.x.narrow(0, r0, r1 - r0);
    at::mm_out(blk, xb, ct);
    T* bp = blk.data_ptr<T>();
    forward_block_vec(rb, bp, r0, r1, s, alpha, use_eps, log_eps);
    fused_p_block_vec(in, bp, r0, r1, s, alpha, use_eps, log_eps, weight, loss.data(), own.data(), lse.data(),
                      ex.data(), wsum.data(), rs.data(), lsum[t], gs[t]);
    p_block_to_gradients<T>(in, blk, xb, r0, rs.data(), grad_f, my_mu, my_col);
  });
  double total = 0.0, g = 0.0;
  for (size_t t = 0; t < lsum.size(); ++t) {
    total += lsum[t];
    g += gs[t];
  }
  return {total, g};
}

// sigma^2 = sum_i ||f_i - mu_{a_i}||^2 / (N - 1), in float64 partial sums over fixed row blocks.
template <typename T>
double own_variance(const Inputs& in) {
  const int64_t N = in.N, D = in.D, rows = 1024;
  const int64_t nb = (N + rows - 1) / rows;
  const T* x = in.x.data_ptr<T>();
  const T* c = in.c.data_ptr<T>();
  const int64_t* a = in.assign.data_ptr<int64_t>();
  std::vector<double> part(nb, 0.0);
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t i = b * rows; i < std::min(N, (b + 1) * rows); ++i)
        part[b] += double(squared_distance(x + i * D, c + a[i] * D, D));
  });
  double total = 0.0;
  for (double v : part) total += v;
  return total / double(N - 1);
}

// The gradient of sigma^2 = own_variance, scaled by gv, added to (grad_f, grad_mu):
//   grad_f_i += k (f_i - mu_{a_i}),  grad_mu_j -= k (S_j - n_j mu_j),  k = 2 gv / (N - 1),
// with S_j, n_j the sum and count of the rows assigned to center j.
template <typename T>
void add_variance_gradient(const Inputs& in, double gv, at::Tensor& grad_f, at::Tensor& grad_mu) {
  const int64_t N = in.N, D = in.D;
  const T k = T(2.0 * gv / double(N - 1));
  const T* x = in.x.data_ptr<T>();
  const T* c = in.c.data_ptr<T>();
  const int64_t* a = in.assign.data_ptr<int64_t>();
  T* gf = grad_f.data_ptr<T>();
  at::parallel_for(0, N, 256, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T* xi = x + i * D;
      const T* ci = c + a[i] * D;
      T* g = gf + i * D;
#pragma omp simd
      for (int64_t j = 0; j < D; ++j) g[j] += k * (xi[j] - ci[j]);
    }
  });
  const at::Tensor sums = at::zeros({in.C, D}, in.x.options()).index_add_(0, in.assign, in.x);
  const at::Tensor counts = at::bincount(in.assign, {}, in.C).to(in.x.scalar_type());
  grad_mu.sub_((sums - counts.unsqueeze(1) * in.c) * k);
}

// var absent: sigma^2 is the cluster variance of (feats, centers, assign), computed here, and its
// gradient is folded into grad_feats and grad_centers (grad_var is then 0).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> magnet_loss_fused_cpu(
    const at::Tensor& feats, const at::Tensor& centers, const at::Tensor& assign, const at::Tensor& classes,
    const std::optional<at::Tensor>& valid, const std::optional<at::Tensor>& var, double alpha, double eps,
    double weight) {
  const Inputs in = prepare(feats, centers, assign, classes, valid);
  const auto opts = in.x.options();
  const auto var_dtype = var.has_value() ? var->scalar_type() : in.x.scalar_type();
  at::Tensor grad_f = at::empty({in.N, in.D}, opts);
  at::Tensor grad_mu = at::zeros({in.C, in.D}, opts);
  at::Tensor total = at::zeros({}, opts);
  at::Tensor grad_var = at::zeros({}, opts);
  if (in.N == 0) return {total, grad_f.to(feats.scalar_type()), grad_mu.to(centers.scalar_type()), grad_var};
  TORCH_CHECK(var.has_value() || in.N >= 2, "the cluster variance needs N >= 2");
  const bool use_eps = eps > 0;
  const double log_eps = use_eps ? std::log(eps) : 0.0;
  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "magnet_loss_fused_cpu", [&] {
    using T = scalar_t;
    const double v = var.has_value() ? var->detach().item<double>() : own_variance<T>(in);
    const double s = 0.5 / v;
    const auto [lsum, gs] = fused_rows<T>(in, T(s), T(alpha), use_eps, T(log_eps), T(weight), grad_f, grad_mu);
    total.fill_(weight * lsum);
    if (var.has_value())
      grad_var.fill_(2.0 * s * s * gs);
    else
      add_variance_gradient<T>(in, 2.0 * s * s * gs, grad_f, grad_mu);
  });
  return {total, grad_f.to(feats.scalar_type()), grad_mu.to(centers.scalar_type()), grad_var.to(var_dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(clustr_fast, CPU, m) {
  m.impl("magnet_loss_fused", &magnet_loss_fused_cpu);
}

}  // namespace clustr_fast
