// Magnet loss on the CPU, fused per block of rows.
//   s = 1/(2 var), own_i = ||f_i - mu_{a_i}||^2, z_ik = -s d_ik on impostors (class differs,
//   center valid), L_i = logsumexp_k z_ik, E_i = sum_k softmax(z_i)_k d_ik, A_i = -s own_i - alpha
//   eps > 0: loss_i = relu(-logaddexp(A_i - logaddexp(L_i, log eps), log eps))
//   eps = 0: loss_i = relu(L_i - A_i) (0 without impostor)
// Forward: per block of rows one GEMM gives f.mu, the row then turns its distances into
// z, max, sum of exp and E while the block is in cache. Writes loss [N], stats [3,N] = (own, L, E).
// Backward: per block the distances are recomputed and turned into P = d(loss)/d(dist)
//   P_ik = -s gL_i exp(z_ik - L_i) (impostors), P_{i,a_i} = -s gA_i,
// then grad_f = 2 (rowsum(P) f - P mu) and grad_mu = -2 (P^T f - colsum(P) mu) (per-thread sums);
// grad_var = 2 s^2 sum_i (gA_i own_i + gL_i E_i). Only a [rows, C] block per thread is held.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "common.h"
#include "cpu/vec_math.h"

namespace clustr_fast {
namespace {

constexpr int64_t kSerialWork = int64_t(1) << 22;  // below ~4M multiply-adds a call runs on one thread

// Rows per block: a [rows, C] product block of about 64K values (it stays in L2), 64 to 512 rows.
// Large blocks make few, efficient BLAS calls (64-row blocks spent a third of the time in the
// per-call overhead and the small products).
inline int64_t block_rows(int64_t C) {
  return std::clamp<int64_t>(65536 / std::max<int64_t>(C, 1), 64, 512);
}

// Blocks of rows per parallel task, so that small problems (the ClusTR batch) stay serial.
inline int64_t block_grain(int64_t C, int64_t D) {
  return std::max<int64_t>(1, kSerialWork / std::max<int64_t>(1, block_rows(C) * C * (D + 8)));
}

// exp for x <= ~88 with ~1 ulp error, written so that simd loops vectorise it (Cephes expf).
inline float exp_fast(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return y * std::bit_cast<float>(bits);
}
inline double exp_fast(double x) { return std::exp(x); }

template <typename T>
inline T logaddexp(T x, T y) {
  const T hi = x > y ? x : y, lo = x > y ? y : x;
  return hi + std::log1p(std::exp(lo - hi));
}

template <typename T>
inline T sigmoid(T t) {
  return t >= T(0) ? T(1) / (T(1) + std::exp(-t)) : std::exp(t) / (T(1) + std::exp(t));
}

// Per-row loss from A, L (has = L > -inf).
template <typename T>
inline T row_loss(T a, T lse, bool has, bool use_eps, T log_eps) {
  if (use_eps) {
    const T b = has ? logaddexp(lse, log_eps) : log_eps;
    const T u = -logaddexp(a - b, log_eps);
    return u > T(0) ? u : T(0);
  }
  if (!has) return T(0);
  const T u = lse - a;
  return u > T(0) ? u : T(0);
}

// (gA, gL): derivatives of g * loss_i in A_i and L_i.
template <typename T>
inline void row_coefficients(T g, T loss, T own, T lse, T s, T alpha, bool use_eps, T log_eps,
                             T& ga, T& gl) {
  const bool has = lse > -std::numeric_limits<T>::infinity();
  const T gate = loss > T(0) ? g : T(0);
  if (use_eps) {
    const T b = has ? logaddexp(lse, log_eps) : log_eps;
    const T sig = sigmoid(-s * own - alpha - b - log_eps);
    const T tau = has ? sigmoid(lse - log_eps) : T(0);
    ga = -gate * sig;
    gl = gate * sig * tau;
  } else {
    ga = has ? -gate : T(0);
    gl = has ? gate : T(0);
  }
}

struct Inputs {
  // x, c, cn, cls, valid in the accumulation dtype (classes renumbered 0..C-1, exact in float);
  // assign int64. Same-typed arrays let the per-center loops vectorise.
  at::Tensor x, c, cn, assign, cls, valid;
  int64_t N, C, D;
};

Inputs prepare(const at::Tensor& feats, const at::Tensor& centers, const at::Tensor& assign,
               const at::Tensor& classes, const std::optional<at::Tensor>& valid) {
  check_matrix(feats, "feats");
  check_matrix(centers, "centers");
  TORCH_CHECK(feats.size(1) == centers.size(1), "feats and centers must have the same number of columns");
  TORCH_CHECK(assign.dim() == 1 && assign.size(0) == feats.size(0), "assign must have shape [N]");
  TORCH_CHECK(classes.dim() == 1 && classes.size(0) == centers.size(0), "classes must have shape [C]");
  const auto acc = acc_type(feats.scalar_type());
  Inputs in;
  in.x = feats.detach().to(acc).contiguous();
  in.c = centers.detach().to(acc).contiguous();
  in.cn = in.c.square().sum(1).contiguous();
  in.assign = assign.detach().to(at::kLong).contiguous();
  in.cls = std::get<1>(at::_unique(classes.detach(), /*sorted=*/true, /*return_inverse=*/true))
               .to(acc).contiguous();
  if (valid.has_value()) {
    TORCH_CHECK(valid->dim() == 1 && valid->size(0) == centers.size(0), "valid must have shape [C]");
    in.valid = valid->detach().to(acc).contiguous();
  } else {
    in.valid = at::ones({centers.size(0)}, in.cls.options());
  }
  in.N = in.x.size(0);
  in.C = in.c.size(0);
  in.D = in.x.size(1);
  return in;
}

// z[k] = -s max(xn + cn[k] - 2 dot[k], 0) on impostors, -inf elsewhere (in place over dot).
template <typename T>
inline void impostor_logits(T* row, const T* cn, const T* cls, const T* valid, T ci,
                            T xn, T s, int64_t C) {
  const T ninf = -std::numeric_limits<T>::infinity();
#pragma omp simd
  for (int64_t k = 0; k < C; ++k) {
    const T z = -s * std::max(xn + cn[k] - T(2) * row[k], T(0));
    const T keep = (cls[k] != ci) & (valid[k] != T(0)) ? T(0) : ninf;
    row[k] = z + keep;
  }
}

// Everything forward_rows needs for one block of rows whose distance products are in bp.
template <typename T>
struct RowBlock {
  const T *x, *c, *cn;
  const int64_t* a;
  const T *cls, *valid;
  T *lp, *own_p, *lse_p, *e_p;
  int64_t D, C;
  T* wsum_p = nullptr;  // when set: the block keeps the impostor weights exp(z - m) in place of z
};

// Rows [r0, r1): own distance, online logsumexp over impostors, the loss and its stats.
template <typename T>
inline void forward_block(const RowBlock<T>& rb, T* bp, int64_t r0, int64_t r1, T s, T alpha, bool use_eps,
                          T log_eps) {
  const int64_t D = rb.D, C = rb.C;
  const T ninf = -std::numeric_limits<T>::infinity();
  for (int64_t i = r0; i < r1; ++i) {
    const T* xi = rb.x + i * D;
    T* z = bp + (i - r0) * C;
    const T own = squared_distance(xi, rb.c + rb.a[i] * D, D);
    impostor_logits(z, rb.cn, rb.cls, rb.valid, rb.cls[rb.a[i]], squared_norm(xi, D), s, C);
    T m = ninf;
#pragma omp simd reduction(max : m)
    for (int64_t k = 0; k < C; ++k) m = z[k] > m ? z[k] : m;
    const bool has = m > ninf;
    T l = T(0), e = T(0);
    const bool keep = rb.wsum_p != nullptr;
    if (has) {
#pragma omp simd reduction(+ : l, e)
      for (int64_t k = 0; k < C; ++k) {
        const T ez = exp_fast(z[k] - m);
        const T p = z[k] > ninf ? ez : T(0);
        l += p;
        e += z[k] > ninf ? p * z[k] : T(0);
        z[k] = keep ? p : z[k];
      }
    } else if (keep) {
      std::fill(z, z + C, T(0));
    }
    if (rb.wsum_p != nullptr) rb.wsum_p[i] = l;
    const T lse = has ? m + std::log(l) : ninf;
    rb.own_p[i] = own;
    rb.lse_p[i] = lse;
    rb.e_p[i] = has ? -(e / l) / s : T(0);
    rb.lp[i] = row_loss(-s * own - alpha, has ? lse : T(0), has, use_eps, log_eps);
  }
}

CLUSTR_VEC_CLONES void forward_block_f(const RowBlock<float>& rb, float* bp, int64_t r0, int64_t r1, float s,
                                       float alpha, bool use_eps, float log_eps) {
  forward_block<float>(rb, bp, r0, r1, s, alpha, use_eps, log_eps);
}
CLUSTR_VEC_CLONES void forward_block_d(const RowBlock<double>& rb, double* bp, int64_t r0, int64_t r1, double s,
                                       double alpha, bool use_eps, double log_eps) {
  forward_block<double>(rb, bp, r0, r1, s, alpha, use_eps, log_eps);
}
inline void forward_block_vec(const RowBlock<float>& rb, float* bp, int64_t r0, int64_t r1, float s, float alpha,
                              bool use_eps, float log_eps) {
  forward_block_f(rb, bp, r0, r1, s, alpha, use_eps, log_eps);
}
inline void forward_block_vec(const RowBlock<double>& rb, double* bp, int64_t r0, int64_t r1, double s,
                              double alpha, bool use_eps, double log_eps) {
  forward_block_d(rb, bp, r0, r1, s, alpha, use_eps, log_eps);
}

// The RowBlock of the inputs, writing the losses and stats (and the weight sums) to these arrays.
template <typename T>
RowBlock<T> row_block(const Inputs& in, T* lp, T* own_p, T* lse_p, T* e_p, T* wsum_p = nullptr) {
  return RowBlock<T>{in.x.data_ptr<T>(), in.c.data_ptr<T>(),   in.cn.data_ptr<T>(), in.assign.data_ptr<int64_t>(),
                     in.cls.data_ptr<T>(), in.valid.data_ptr<T>(), lp,                  own_p,
                     lse_p,                e_p,                    in.D,                in.C,
                     wsum_p};
}

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

// The gradient of one block of rows from its P (in place in blk): grad_f rows = 2 (rowsum f - P mu),
// and the task's sums colsum(P) += and P^T f +=.
template <typename T>
void p_block_to_gradients(const Inputs& in, at::Tensor& blk, const at::Tensor& xb, int64_t r0, const T* rowsum,
                          at::Tensor& grad_f, at::Tensor& my_mu, T* my_col) {
  const int64_t C = in.C, D = in.D, R = blk.size(0);
  const T* x = in.x.data_ptr<T>();
  T* gf = grad_f.data_ptr<T>();
  const T* bp = blk.data_ptr<T>();
  at::Tensor gfb = grad_f.narrow(0, r0, R);
  at::mm_out(gfb, blk, in.c);  // P mu
  for (int64_t i = 0; i < R; ++i) {
    T* g = gf + (r0 + i) * D;
    const T* xi = x + (r0 + i) * D;
    const T rs = rowsum[i];
#pragma omp simd
    for (int64_t j = 0; j < D; ++j) g[j] = T(2) * (rs * xi[j] - g[j]);
    const T* prow = bp + i * C;
#pragma omp simd
    for (int64_t k = 0; k < C; ++k) my_col[k] += prow[k];
  }
  my_mu.addmm_(blk.t(), xb);  // P^T f
}

// Blocks of rows split statically over T_ tasks (each with its own sums, added in task order);
// body(t, b, buf, my_mu, my_col) handles block b of task t.
template <typename T, typename Body>
void over_row_blocks(const Inputs& in, at::Tensor& grad_mu, const Body& body) {
  const int64_t N = in.N, C = in.C, D = in.D;
  const int64_t rows = block_rows(C);
  const int64_t nblocks = (N + rows - 1) / rows;
  const int64_t T_ = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), nblocks / block_grain(C, D)));
  at::Tensor acc_mu = at::zeros({T_, C, D}, in.x.options());   // per-task sum of P^T f
  at::Tensor acc_col = at::zeros({T_, C}, in.x.options());     // per-task colsum(P)
  at::parallel_for(0, T_, 1, [&](int64_t t0, int64_t t1) {
    at::Tensor buf = at::empty({rows, C}, in.x.options());
    for (int64_t t = t0; t < t1; ++t) {
      at::Tensor my_mu = acc_mu[t];
      T* my_col = acc_col[t].data_ptr<T>();
      const int64_t bb0 = nblocks * t / T_, bb1 = nblocks * (t + 1) / T_;
      for (int64_t b = bb0; b < bb1; ++b) {
        const int64_t r0 = b * rows, r1 = std::min(N, r0 + rows);
        at::Tensor blk = buf.narrow(0, 0, r1 - r0);
        body(t, r0, r1, blk, my_mu, my_col);
      }
    }
  });
  // grad_mu = 2 colsum(P) mu - 2 P^T f
  grad_mu.copy_(in.c * acc_col.sum(0).unsqueeze(1) - acc_mu.sum(0));
  grad_mu.mul_(2);
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
    row_coefficients(weight, loss[i], own[i], lse[i], s, alpha, use_eps, log_eps, ga, gl);
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
      row_coefficients(gp[i], lp[i], own[i], lse[i], ts, T(alpha), use_eps, T(log_eps), ga, gl);
      coef_a[i] = -ts * ga;
      coef_l[i] = -ts * gl;
      gs += double(ga) * double(own[i]) + double(gl) * double(ex[i]);
    }
    grad_var.fill_(2.0 * s * s * gs);
    backward_rows<T>(in, ts, coef_a.data(), coef_l.data(), lse, grad_f, grad_mu);
  });
  return {grad_f.to(feats.scalar_type()), grad_mu.to(centers.scalar_type()), grad_var.to(var.scalar_type())};
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

// --------------------------------------------------------------------------- batch form, fused
// magnet_loss_batch: one call computes counts n_k and means mu_k of the batch clusters, the
// distances d_ik = ||f_i - mu_k||^2 (explicit differences), sigma^2 (batch variance or given),
// the per-row losses, total = sum_i w_i loss_i and, with with_grad, the gradient of total in f:
//   P_ik = -s gL_i softmax_k (impostors), P_{i,a_i} += -s gA_i,  R_i = rowsum(P)_i
//   gmu_k = 2 (colsum(P)_k mu_k - sum_i P_ik f_i)                       (gradient in the means)
//   grad f_i = 2 (R_i f_i - sum_k P_ik mu_k) + gmu_{a_i} / n_{a_i} + cv (f_i - mu_{a_i})
// with cv = 2 * 2 s^2 sum_i (gA_i own_i + gL_i E_i) / (N - 1) for the batch variance (its
// derivative through the means vanishes since sum_{i in k} (f_i - mu_k) = 0) and 0 otherwise.
// Holds [N, M] distances (M is the number of batch clusters, small) and [M, d] means.

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
    const T loss = row_loss(-s * own - T(alpha), has ? lse : T(0), has, use_eps, T(log_eps));
    const T wi = w != nullptr ? w[i] : weight;
    lp[i] = loss;
    out.total += double(wi) * double(loss);
    if (!with_grad) continue;
    T ga, gl;
    row_coefficients(wi, loss, own, lse, s, T(alpha), use_eps, T(log_eps), ga, gl);
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
  check_matrix(feats, "feats");
  TORCH_CHECK(ids.dim() == 1 && ids.size(0) == feats.size(0), "ids must have shape [N]");
  TORCH_CHECK(classes.dim() == 1 && classes.size(0) >= 1, "classes must have shape [M], M >= 1");
  const auto acc = acc_type(feats.scalar_type());
  const at::Tensor x = feats.detach().to(acc).contiguous();
  const at::Tensor a = ids.detach().to(at::kLong).contiguous();
  const at::Tensor cl = classes.detach().to(at::kLong).contiguous();
  const int64_t N = x.size(0), D = x.size(1), M = cl.size(0);
  int var_mode = 0;
  double var_value = 0.0;
  if (variance.has_value()) {
    var_mode = 1;
    var_value = variance->detach().item<double>();
  } else if (variance_value > 0) {
    var_mode = 2;
    var_value = variance_value;
  }
  TORCH_CHECK(var_mode != 0 || N >= 2, "feats needs at least 2 rows for the batch variance");
  at::Tensor w;
  if (row_weight.has_value()) {
    TORCH_CHECK(row_weight->dim() == 1 && row_weight->size(0) == N, "row_weight must have shape [N]");
    w = row_weight->detach().to(acc).contiguous();
  }
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

TORCH_LIBRARY_IMPL(clustr_fast_C, CPU, m) {
  m.impl("magnet_loss_fused", &magnet_loss_fused_cpu);
  m.impl("magnet_loss_fwd", &magnet_loss_fwd_cpu);
  m.impl("magnet_loss_bwd", &magnet_loss_bwd_cpu);
  m.impl("magnet_loss_batch", &magnet_loss_batch_cpu);
}

}  // namespace clustr_fast
