// kmeans_lloyd_groups on the CPU: Lloyd's algorithm run to convergence in every group (segment)
// of rows, group after group, each group on one thread while its rows sit in cache;
// kmeans_fit_groups: the same after greedy k-means++ seeding in the group (also in cache).
//
//   For group g (rows [offsets[g], offsets[g+1]), centers [g*k, (g+1)*k)):
//     labels = argmin_j ||x_i - c_j||^2 (first minimum, explicit differences)
//     for it in 1..max_iter:
//       c_j <- mean of the rows labelled j (kept when empty); shift = sum ||c_new - c_old||^2
//       labels <- argmin again; n_iter[g] = it
//       stop when no label changed or shift <= tol * mean_f var(x_g[:, f])  (scikit-learn's rule,
//       per group: a group stops on its own, so a group's result does not depend on the others)
//
// The float64 cluster sums are kept up to date incrementally: a row that changes cluster moves
// its values from one sum to the other, so an iteration reads each row once (its distances) and
// only the rows that moved a second time. With up to 8 centers a row's nearest center comes from
// k - 1 dot products with differences of centers (prepare_directions); the squared distances
// returned are exact differences to the final centers. A group's work never depends on the
// thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "common.h"
#include "cpu/kmeans_plusplus.h"
#include "cpu/kmeans_rows.h"
#include "op_checks.h"

namespace clustr_fast {
namespace {

constexpr int64_t kDirections = 7;  // up to 8 centers: the fast directions form below

// Scratch of one thread: float64 cluster sums [k*D] and feature means [D], counts [k], and the
// directions w [(k-1)*D] with their offsets b [k-1] (see nearest_by_directions).
template <typename T>
struct GroupScratch {
  std::vector<double> sums, mean, b;
  std::vector<int64_t> counts;
  std::vector<T> w;
  GroupScratch(int64_t k, int64_t D) : sums(k * D), mean(D), b(k), counts(k), w(k * D) {}
};

// Directions form of the nearest center among c_0..c_{k-1} (k <= 8):
//   ||x - c_j||^2 - ||x - c_0||^2 = b_j - 2 x.w_j,  w_j = c_j - c_0,  b_j = (c_j - c_0).(c_j + c_0)
// so a row costs k - 1 dot products with the (short) differences of the centers, and no term is
// as large as ||x||^2 (what the plain norm form loses to cancellation). First minimum, with the
// value 0 for c_0: equal centers tie and keep the lower index.
template <typename T>
inline void prepare_directions(const T* c, int64_t k, int64_t D, T* w, double* b) {
  for (int64_t j = 1; j < k; ++j) {
    double bj = 0.0;
    for (int64_t f = 0; f < D; ++f) {
      const double cj = static_cast<double>(c[j * D + f]), c0 = static_cast<double>(c[f]);
      w[(j - 1) * D + f] = c[j * D + f] - c[f];
      bj += (cj - c0) * (cj + c0);
    }
    b[j - 1] = bj;
  }
}

template <typename T>
inline __attribute__((always_inline)) int64_t nearest_by_directions(const T* xi, const T* w, const double* b,
                                                                    int64_t k, int64_t D) {
  if (k == 1) return 0;
  const T* ws[kDirections];
  T dots[kDirections];
  for (int64_t j = 0; j < k - 1; ++j) ws[j] = w + j * D;
  row_to_many<T, true>(xi, ws, k - 1, D, dots);
  double best = 0.0;
  int64_t arg = 0;
  for (int64_t j = 1; j < k; ++j) {
    const double e = b[j - 1] - 2.0 * static_cast<double>(dots[j - 1]);
    if (e < best) {
      best = e;
      arg = j;
    }
  }
  return arg;
}

// acc[j] -= row[j] in float64.
template <typename T>
inline __attribute__((always_inline)) void sub_row(double* acc, const T* row, int64_t d) {
#pragma omp simd
  for (int64_t j = 0; j < d; ++j) acc[j] -= static_cast<double>(row[j]);
}

// Assign every row of the group; a row whose label changes (every row on the first call, when
// lab holds -1) moves its values between the float64 sums. Returns the number of changed labels.
template <typename T>
inline __attribute__((always_inline)) int64_t assign_and_move(const T* x, int64_t n, int64_t D, const T* c,
                                                              int64_t k, int64_t* lab, GroupScratch<T>& s) {
  const bool directions = k - 1 <= kDirections;
  if (directions) prepare_directions<T>(c, k, D, s.w.data(), s.b.data());
  int64_t changed = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T* xi = x + i * D;
    const int64_t j = directions ? nearest_by_directions<T>(xi, s.w.data(), s.b.data(), k, D)
                                 : nearest_by_differences<T>(xi, c, k, D);
    const int64_t old = lab[i];
    if (j == old) continue;
    ++changed;
    if (old >= 0) {
      sub_row<T>(s.sums.data() + old * D, xi, D);
      if (--s.counts[old] == 0) std::fill(s.sums.begin() + old * D, s.sums.begin() + (old + 1) * D, 0.0);
    }
    add_row<T>(s.sums.data() + j * D, xi, D);
    ++s.counts[j];
    lab[i] = j;
  }
  return changed;
}

// scikit-learn's absolute tolerance of the group: tol * mean over features of var(x[:, f]).
template <typename T>
inline __attribute__((always_inline)) double group_tolerance(const T* x, int64_t n, int64_t D, double tol,
                                                             double* mean) {
  if (tol <= 0.0 || n < 2) return 0.0;
  std::fill(mean, mean + D, 0.0);
  for (int64_t i = 0; i < n; ++i) add_row<T>(mean, x + i * D, D);
  for (int64_t f = 0; f < D; ++f) mean[f] /= static_cast<double>(n);
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const T* xi = x + i * D;
#pragma omp simd reduction(+ : ss)
    for (int64_t f = 0; f < D; ++f) {
      const double df = static_cast<double>(xi[f]) - mean[f];
      ss += df * df;
    }
  }
  return tol * ss / static_cast<double>(n) / static_cast<double>(D);
}

// Lloyd's algorithm in one group. c [k, D] holds the initial centers and receives the final ones
// (those of the final labels); lab receives local labels in [0, k) and sq the exact squared
// distance of each row to its center (explicit differences). Returns the number of iterations.
template <typename T>
inline __attribute__((always_inline)) int64_t lloyd_group(const T* x, int64_t n, int64_t D, int64_t k,
                                                          int64_t max_iter, double tol, T* c, int64_t* lab, T* sq,
                                                          GroupScratch<T>& s) {
  const double tol_abs = group_tolerance<T>(x, n, D, tol, s.mean.data());
  std::fill(s.sums.begin(), s.sums.end(), 0.0);
  std::fill(s.counts.begin(), s.counts.end(), int64_t(0));
  std::fill(lab, lab + n, int64_t(-1));
  assign_and_move<T>(x, n, D, c, k, lab, s);
  int64_t it = 0;
  while (it < max_iter) {
    ++it;
    double shift = 0.0;
    for (int64_t j = 0; j < k; ++j) {
      if (s.counts[j] == 0) continue;  // an empty cluster keeps its center
      const double inv = 1.0 / static_cast<double>(s.counts[j]);
      T* cj = c + j * D;
      const double* sj = s.sums.data() + j * D;
      for (int64_t f = 0; f < D; ++f) {
        const T v = static_cast<T>(sj[f] * inv);
        const double df = static_cast<double>(v) - static_cast<double>(cj[f]);
        shift += df * df;
        cj[f] = v;
      }
    }
    const int64_t changed = assign_and_move<T>(x, n, D, c, k, lab, s);
    if (changed == 0 || shift <= tol_abs) break;
  }
  for (int64_t i = 0; i < n; ++i) {
    const T* own = c + lab[i] * D;
    sqdist_to_many<T>(x + i * D, &own, 1, D, sq + i);
  }
  return it;
}

CLUSTR_VEC_CLONES int64_t lloyd_group_f(const float* x, int64_t n, int64_t D, int64_t k, int64_t max_iter,
                                        double tol, float* c, int64_t* lab, float* sq, GroupScratch<float>& s) {
  return lloyd_group<float>(x, n, D, k, max_iter, tol, c, lab, sq, s);
}
CLUSTR_VEC_CLONES int64_t lloyd_group_d(const double* x, int64_t n, int64_t D, int64_t k, int64_t max_iter,
                                        double tol, double* c, int64_t* lab, double* sq, GroupScratch<double>& s) {
  return lloyd_group<double>(x, n, D, k, max_iter, tol, c, lab, sq, s);
}
inline int64_t lloyd_group_any(const float* x, int64_t n, int64_t D, int64_t k, int64_t max_iter, double tol,
                               float* c, int64_t* lab, float* sq, GroupScratch<float>& s) {
  return lloyd_group_f(x, n, D, k, max_iter, tol, c, lab, sq, s);
}
inline int64_t lloyd_group_any(const double* x, int64_t n, int64_t D, int64_t k, int64_t max_iter, double tol,
                               double* c, int64_t* lab, double* sq, GroupScratch<double>& s) {
  return lloyd_group_d(x, n, D, k, max_iter, tol, c, lab, sq, s);
}

// Checked, contiguous inputs of the per-group ops and their outputs (centers: [G*k, D]).
struct GroupRun {
  at::Tensor x, offsets, labels, sqdist, centers, n_iter;
  int64_t N = 0, D = 0, G = 0, k = 0;
};

GroupRun prepare_groups(const at::Tensor& x_in, const at::Tensor& offsets_in, int64_t k, int64_t max_iter,
                        int64_t precision) {
  check_matrix(x_in, "x");
  check_precision(precision);  // the CPU computes exact differences at every precision
  GroupRun r;
  r.x = x_in.detach().to(acc_type(x_in.scalar_type())).contiguous();
  r.offsets = offsets_in.detach().to(at::kLong).contiguous();
  r.N = r.x.size(0);
  r.D = r.x.size(1);
  r.G = r.offsets.numel() - 1;
  r.k = k;
  TORCH_CHECK(r.G >= 1, "offsets must hold at least two entries");
  TORCH_CHECK(k >= 1, "k must be >= 1");
  TORCH_CHECK(max_iter >= 0, "max_iter must be >= 0");
  const int64_t* off = r.offsets.data_ptr<int64_t>();
  TORCH_CHECK(off[0] == 0 && off[r.G] == r.N, "offsets must run from 0 to N");
  for (int64_t g = 0; g < r.G; ++g) TORCH_CHECK(off[g + 1] - off[g] >= k, "group ", g, " has fewer than k rows");
  r.labels = at::empty({r.N}, r.x.options().dtype(at::kLong));
  r.sqdist = at::empty({r.N}, r.x.options());
  r.n_iter = at::empty({r.G}, r.x.options().dtype(at::kLong));
  return r;
}

// In every group, one thread per group: seed(xp, g, r0, n, cg) fills (or keeps) the group's
// initial centers cg [k, D], then lloyd_group runs to convergence.
template <typename Seed>
void run_groups(GroupRun& r, int64_t max_iter, double tol, const Seed& seed) {
  const int64_t* off = r.offsets.data_ptr<int64_t>();
  int64_t* lab = r.labels.data_ptr<int64_t>();
  int64_t* iters = r.n_iter.data_ptr<int64_t>();
  const int64_t D = r.D, k = r.k;
  AT_DISPATCH_FLOATING_TYPES(r.x.scalar_type(), "kmeans_groups_cpu", [&] {
    const scalar_t* xp = r.x.data_ptr<scalar_t>();
    scalar_t* cp = r.centers.data_ptr<scalar_t>();
    scalar_t* sq = r.sqdist.data_ptr<scalar_t>();
    auto init = [&] { return GroupScratch<scalar_t>(k, D); };
    parallel_items(r.G, init, [&](GroupScratch<scalar_t>& s, int64_t g) {
      const int64_t r0 = off[g], n = off[g + 1] - off[g];
      scalar_t* cg = cp + g * k * D;
      seed(xp, g, r0, n, cg);
      iters[g] = lloyd_group_any(xp + r0 * D, n, D, k, max_iter, tol, cg, lab + r0, sq + r0, s);
      for (int64_t i = r0; i < r0 + n; ++i) lab[i] += g * k;
    });
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kmeans_lloyd_groups_cpu(
    const at::Tensor& x_in, const at::Tensor& offsets_in, const at::Tensor& centers_in, int64_t max_iter, double tol,
    int64_t precision) {
  check_lloyd_groups(x_in, offsets_in, centers_in, max_iter, precision);
  GroupRun r = prepare_groups(x_in, offsets_in, centers_in.size(0) / (offsets_in.numel() - 1), max_iter, precision);
  r.centers = centers_in.detach().to(r.x.scalar_type()).contiguous().clone();
  run_groups(r, max_iter, tol, [](const auto*, int64_t, int64_t, int64_t, auto*) {});
  return {r.labels, r.sqdist, r.centers, r.n_iter};
}

// Seeding and Lloyd in every group while its rows sit in cache: greedy k-means++ in the group
// (the kmeans_plusplus kernel on the group alone, from the group's draws), then lloyd_group.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kmeans_fit_groups_cpu(
    const at::Tensor& x_in, const at::Tensor& offsets_in, int64_t k, const at::Tensor& first_in,
    const at::Tensor& draws_in, int64_t max_iter, double tol, int64_t precision) {
  GroupRun r = prepare_groups(x_in, offsets_in, k, max_iter, precision);
  const at::Tensor first = first_in.detach().to(at::kLong).contiguous();
  const at::Tensor draws = draws_in.detach().to(at::kDouble).contiguous();
  const int64_t G = r.G, D = r.D;
  TORCH_CHECK(first.numel() == G, "first must have one entry per group");
  TORCH_CHECK(draws.dim() == 3 && draws.size(0) == k - 1 && draws.size(1) == G && draws.size(2) >= 1,
              "draws must have shape [k-1, G, T]");
  const int64_t nt = draws.size(2);
  const int64_t* fp = first.data_ptr<int64_t>();
  const double* dp = draws.data_ptr<double>();
  r.centers = at::empty({G * k, D}, r.x.options());
  run_groups(r, max_iter, tol, [&](const auto* xp, int64_t g, int64_t r0, int64_t n, auto* cg) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(xp)>>;
    const int64_t seg[2] = {0, n}, local_first = fp[g] - r0;
    std::vector<double> dg((k - 1) * nt);
    for (int64_t st = 0; st < k - 1; ++st)
      for (int64_t t = 0; t < nt; ++t) dg[st * nt + t] = dp[(st * G + g) * nt + t];
    std::vector<int64_t> idx(k);
    plusplus_impl<T>(xp + r0 * D, n, D, seg, 1, k, &local_first, dg.data(), nt, idx.data());
    for (int64_t j = 0; j < k; ++j) std::copy(xp + (r0 + idx[j]) * D, xp + (r0 + idx[j] + 1) * D, cg + j * D);
  });
  return {r.labels, r.sqdist, r.centers, r.n_iter};
}

}  // namespace

TORCH_LIBRARY_IMPL(clustr_fast, CPU, m) {
  m.impl("kmeans_lloyd_groups", &kmeans_lloyd_groups_cpu);
  m.impl("kmeans_fit_groups", &kmeans_fit_groups_cpu);
}

}  // namespace clustr_fast
