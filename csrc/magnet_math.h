// Per-row Magnet loss math, one definition for the CPU and CUDA kernels (host and device).
//   A_i = -s own_i - alpha,  L_i = logsumexp over impostors of -s d_ik (-inf if none)
//   eps > 0: loss_i = relu(-logaddexp(A_i - logaddexp(L_i, log eps), log eps))
//   eps = 0: loss_i = relu(L_i - A_i) (0 without impostor)
// and (gA, gL), the derivatives of g * loss_i in A_i and L_i, from which the kernels form
// P_ik = -s gL_i softmax_k (impostors), P_{i,a_i} = -s gA_i and grad_var = 2 s^2 sum_i (gA own + gL E).
// The functions use std:: math so that host code is the plain libm call and device code
// the CUDA overload of the same name.
#pragma once
#include <c10/macros/Macros.h>

#include <cmath>
#include <limits>

namespace clustr_fast {
namespace magnet {
namespace {

template <typename T>
C10_HOST_DEVICE inline T logaddexp(T x, T y) {
  const T hi = x > y ? x : y, lo = x > y ? y : x;
  return hi + std::log1p(std::exp(lo - hi));
}

template <typename T>
C10_HOST_DEVICE inline T sigmoid(T t) {
  return t >= T(0) ? T(1) / (T(1) + std::exp(-t)) : std::exp(t) / (T(1) + std::exp(t));
}

// loss_i from a = A_i and lse = L_i; has: the row has an impostor (lse is not read otherwise).
template <typename T>
C10_HOST_DEVICE inline T row_loss(T a, T lse, bool has, bool use_eps, T log_eps) {
  if (use_eps) {
    const T b = has ? logaddexp(lse, log_eps) : log_eps;
    const T u = -logaddexp(a - b, log_eps);
    return u > T(0) ? u : T(0);
  }
  if (!has) return T(0);
  const T u = lse - a;
  return u > T(0) ? u : T(0);
}

// (ga, gl) = d(g * loss_i) / dA_i, / dL_i from the row's loss, own and L (-inf: no impostor).
template <typename T>
C10_HOST_DEVICE inline void row_coefficients(T g, T loss, T own, T lse, T s, T alpha, bool use_eps, T log_eps,
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

}  // namespace
}  // namespace magnet
}  // namespace clustr_fast
