// Row-block machinery of the global Magnet loss on the CPU, shared by the forward/backward
// (magnet_loss_global.cpp) and the fused form (magnet_loss_fused.cpp).
//   s = 1/(2 var), own_i = ||f_i - mu_{a_i}||^2, z_ik = -s d_ik on impostors (class differs,
//   center valid), L_i = logsumexp_k z_ik, E_i = sum_k softmax(z_i)_k d_ik, A_i = -s own_i - alpha;
//   the per-row loss and its coefficients are in magnet_math.h.
// Rows are taken in blocks: one GEMM gives the block's f.mu, forward_block turns it in place into
// impostor logits, the online logsumexp and the row's loss and stats while it is in cache;
// p_block_to_gradients turns a block of P = d(loss)/d(dist) into its gradient terms.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>

#include "common.h"
#include "cpu/vec_math.h"
#include "magnet_math.h"
#include "op_checks.h"

namespace clustr_fast {
namespace {


// Rows per block: a [rows, C] product block of about 64K values (it stays in L2), 64 to 512 rows.
// Large blocks make few, efficient BLAS calls (64-row blocks spent a third of the time in the
// per-call overhead and the small products).
inline int64_t block_rows(int64_t C) {
  return std::clamp<int64_t>(65536 / std::max<int64_t>(C, 1), 64, 512);
}

// Blocks of rows per parallel task, so that small problems (the ClusTR batch) stay serial.
inline int64_t block_grain(int64_t C, int64_t D) {
  return serial_grain(block_rows(C) * C * (D + 8));
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

struct Inputs {
  // x, c, cn, cls, valid in the accumulation dtype (classes renumbered 0..C-1, exact in float);
  // assign int64. Same-typed arrays let the per-center loops vectorise.
  at::Tensor x, c, cn, assign, cls, valid;
  int64_t N, C, D;
};

inline Inputs prepare(const at::Tensor& feats, const at::Tensor& centers, const at::Tensor& assign,
               const at::Tensor& classes, const std::optional<at::Tensor>& valid) {
  check_magnet_loss(feats, centers, assign, classes, valid);
  const auto acc = acc_type(feats.scalar_type());
  Inputs in;
  in.x = feats.detach().to(acc).contiguous();
  in.c = centers.detach().to(acc).contiguous();
  in.cn = in.c.square().sum(1).contiguous();
  in.assign = assign.detach().to(at::kLong).contiguous();
  in.cls = std::get<1>(at::_unique(classes.detach(), /*sorted=*/true, /*return_inverse=*/true))
               .to(acc).contiguous();
  if (valid.has_value()) {
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
    rb.lp[i] = magnet::row_loss(-s * own - alpha, has ? lse : T(0), has, use_eps, log_eps);
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

}  // namespace
}  // namespace clustr_fast
