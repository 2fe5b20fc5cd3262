// Magnet loss on the CPU, batch form, fused (magnet_loss_batch): one call computes counts n_k and
// means mu_k of the batch clusters, the distances d_ik = ||f_i - mu_k||^2 (explicit differences),
// sigma^2 (batch variance or given), the per-row losses (magnet_math.h), total = sum_i w_i loss_i
// and, with with_grad, the gradient of total in f:
//   P_ik = -s gL_i softmax_k (impostors), P_{i,a_i} += -s gA_i,  R_i = rowsum(P)_i
//   gmu_k = 2 (colsum(P)_k mu_k - sum_i P_ik f_i)                       (gradient in the means)
//   grad f_i = 2 (R_i f_i - sum_k P_ik mu_k) + gmu_{a_i} / n_{a_i} + cv (f_i - mu_{a_i})
// with cv = 2 * 2 s^2 sum_i (gA_i own_i + gL_i E_i) / (N - 1) for the batch variance (its
// derivative through the means vanishes since sum_{i in k} (f_i - mu_k) = 0) and 0 otherwise.
// Holds [N, M] distances (M is the number of batch clusters, small) and [M, d] means.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "common.h"
#include "cpu/vec_math.h"
#include "magnet_math.h"
#include "op_checks.h"

namespace clustr_fast {
namespace {

constexpr int64_t kBatchSerialWork = int64_t(1) << 21;  // multiply-adds below which a phase is serial

struct BatchOut {
  double total = 0.0, gv = 0.0;
};

template <typename T>
BatchOut batch_forward(const T* f, const int64_t* a, const int64_t* cls, const T* w, T weight, int64_t N,
                       int64_t M, int64_t D, int var_mode, double var_value, double alpha, bool use_eps,
                       double log_eps, bool with_grad, T* mu, T* cnt, T* dist, T* rowsum, T* lp) {
  // counts and means
  std::fill(cnt, cnt + M, T(0));
  std::fill(mu, mu + M * D, T(0));
  for (int64_t i = 0; i < N; ++i) {
    cnt[a[i]] += T(1);
    T* m = mu + a[i] * D;
    const T* fi = f + i * D;
#pragma omp simd
    for (int64_t j = 0; j < D; ++j) m[j] += fi[j];
  }
  for (int64_t k = 0; k < M; ++k) {
    const T inv = T(1) / std::max(cnt[k], T(1));
    T* m = mu + k * D;
#pragma omp simd
    for (int64_t j = 0; j < D; ++j) m[j] *= inv;
  }
  // distances: ||f||^2 + ||mu||^2 - 2 f.mu (one GEMM), the own cluster's by explicit differences
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  const at::Tensor xt = at::from_blob(const_cast<T*>(f), {N, D}, opts);
  const at::Tensor mt = at::from_blob(mu, {M, D}, opts);
  at::Tensor dt = at::from_blob(dist, {N, M}, opts);
  at::mm_out(dt, xt, mt.t());
  std::vector<T> mn(M);
  for (int64_t k = 0; k < M; ++k) mn[k] = squared_norm(mu + k * D, D);
  for (int64_t i = 0; i < N; ++i) {
    T* d = dist + i * M;
    const T fn = squared_norm(f + i * D, D);
    for (int64_t k = 0; k < M; ++k) d[k] = std::max(fn + mn[k] - T(2) * d[k], T(0));
    d[a[i]] = squared_distance(f + i * D, mu + a[i] * D, D);
  }
  double var = var_value;
  if (var_mode == 0) {
    double own_sum = 0.0;
    for (int64_t i = 0; i < N; ++i) own_sum += double(dist[i * M + a[i]]);
    var = own_sum / double(N - 1);
  }
  const T s = T(0.5 / var);
  const T ninf = -std::numeric_limits<T>::infinity();
  BatchOut out;
  double gsum = 0.0;
  for (int64_t i = 0; i < N; ++i) {
    T* d = dist + i * M;
    const int64_t ci = cls[a[i]];
    const T own = d[a[i]];
    T m = ninf;
    for (int64_t k = 0; k < M; ++k)
      if (cnt[k] > T(0) && cls[k] != ci) m = std::max(m, -s * d[k]);
    const bool has = m > ninf;
    T l = T(0), e = T(0);
    if (has) {
      for (int64_t k = 0; k < M; ++k) {
        if (cnt[k] > T(0) && cls[k] != ci) {
          const T p = std::exp(-s * d[k] - m);
          l += p;
          e += p * d[k];
        }
      }
    }
    const T lse = has ? m + std::log(l) : ninf;
    const T ex = has ? e / l : T(0);
    const T loss = magnet::row_loss(-s * own - T(alpha), has ? lse : T(0), has, use_eps, T(log_eps));
    const T wi = w != nullptr ? w[i] : weight;
    lp[i] = loss;
    out.total += double(wi) * double(loss);
    if (!with_grad) continue;
    T ga, gl;
    magnet::row_coefficients(wi, loss, own, lse, s, T(alpha), use_eps, T(log_eps), ga, gl);
    gsum += double(ga) * double(own) + double(gl) * double(ex);
    // P row in place over the distances
    T sum = T(0);
    for (int64_t k = 0; k < M; ++k) {
      const T p = (has && cnt[k] > T(0) && cls[k] != ci) ? -s * gl * std::exp(-s * d[k] - lse) : T(0);
      d[k] = p;
      sum += p;
    }
    d[a[i]] += -s * ga;
    rowsum[i] = sum - s * ga;
  }
  out.gv = var_mode == 0 ? 2.0 * double(s) * double(s) * gsum : 0.0;
  return out;
}

template <typename T>
void batch_gradient(const T* f, const int64_t* a, int64_t N, int64_t M, int64_t D, const T* mu, const T* cnt,
                    const T* P, const T* rowsum, double gv, T* gmu, T* gf) {
  // gmu_k = 2 (colsum_k mu_k - sum_i P_ik f_i) / n_k and P mu: two GEMMs.
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  const at::Tensor xt = at::from_blob(const_cast<T*>(f), {N, D}, opts);
  const at::Tensor mt = at::from_blob(const_cast<T*>(mu), {M, D}, opts);
  const at::Tensor pt = at::from_blob(const_cast<T*>(P), {N, M}, opts);
  at::Tensor gt = at::from_blob(gmu, {M, D}, opts);
  at::mm_out(gt, pt.t(), xt);
  std::vector<T> col(M, T(0));
  for (int64_t i = 0; i < N; ++i)
    for (int64_t k = 0; k < M; ++k) col[k] += P[i * M + k];
  for (int64_t k = 0; k < M; ++k) {
    const T inv = T(1) / std::max(cnt[k], T(1));
    const T ck = col[k];
    T* g = gmu + k * D;
    const T* m = mu + k * D;
#pragma omp simd
    for (int64_t j = 0; j < D; ++j) g[j] = T(2) * (ck * m[j] - g[j]) * inv;
  }
  at::Tensor gft = at::from_blob(gf, {N, D}, opts);
  at::mm_out(gft, pt, mt);  // P mu, overwritten row by row below
  const T cv = T(2.0 * gv / double(N - 1 > 0 ? N - 1 : 1));
  const int64_t grain = std::max<int64_t>(1, kBatchSerialWork / std::max<int64_t>(1, D));
  at::parallel_for(0, N, grain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T* fi = f + i * D;
      const T* ma = mu + a[i] * D;
      const T* ga = gmu + a[i] * D;
      T* g = gf + i * D;
      const T r2 = T(2) * rowsum[i];
#pragma omp simd
      for (int64_t j = 0; j < D; ++j) g[j] = r2 * fi[j] - T(2) * g[j] + ga[j] + cv * (fi[j] - ma[j]);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> magnet_loss_batch_cpu(
    const at::Tensor& feats, const at::Tensor& ids, const at::Tensor& classes,
    const std::optional<at::Tensor>& variance, double variance_value, double alpha, double eps,
    const std::optional<at::Tensor>& row_weight, double weight, bool with_grad) {
  const int var_mode = magnet_batch_var_mode(variance, variance_value);
  check_magnet_loss_batch(feats, ids, classes, var_mode, row_weight);
  const auto acc = acc_type(feats.scalar_type());
  const at::Tensor x = feats.to(acc).contiguous();
  const at::Tensor a = ids.to(at::kLong).contiguous();
  const at::Tensor cl = classes.to(at::kLong).contiguous();
  const int64_t N = x.size(0), D = x.size(1), M = cl.size(0);
  const double var_value = var_mode == 1 ? variance->item<double>() : var_mode == 2 ? variance_value : 0.0;
  at::Tensor w;
  if (row_weight.has_value()) w = row_weight->detach().to(acc).contiguous();
  const auto opts = x.options();
  at::Tensor loss = at::empty({N}, opts);
  at::Tensor total = at::zeros({}, opts);
  at::Tensor grad = with_grad ? at::empty({N, D}, opts) : at::empty({0, D}, opts);
  if (N == 0) return {loss, total, grad.to(feats.scalar_type())};
  const bool use_eps = eps > 0;
  const double log_eps = use_eps ? std::log(eps) : 0.0;
  AT_DISPATCH_FLOATING_TYPES(acc, "magnet_loss_batch_cpu", [&] {
    using T = scalar_t;
    std::vector<T> mu(M * D), cnt(M), dist(N * M), rowsum(N), gmu(with_grad ? M * D : 0);
    const BatchOut out = batch_forward<T>(
        x.data_ptr<T>(), a.data_ptr<int64_t>(), cl.data_ptr<int64_t>(), w.defined() ? w.data_ptr<T>() : nullptr,
        T(weight), N, M, D, var_mode, var_value, alpha, use_eps, log_eps, with_grad, mu.data(), cnt.data(),
        dist.data(), rowsum.data(), loss.data_ptr<T>());
    total.fill_(out.total);
    if (with_grad)
      batch_gradient<T>(x.data_ptr<T>(), a.data_ptr<int64_t>(), N, M, D, mu.data(), cnt.data(), dist.data(),
                        rowsum.data(), out.gv, gmu.data(), grad.data_ptr<T>());
  });
  return {loss, total, grad.to(feats.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(clustr_fast, CPU, m) {
  m.impl("magnet_loss_batch", &magnet_loss_batch_cpu);
}

}  // namespace clustr_fast
