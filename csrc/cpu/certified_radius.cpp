// certified_radius on the CPU: the l2 radius of the nearest-center classifier
// (ClusTR Theorem 1), one row at a time.
//   d_j = ||f - mu_j||^2 (direct differences), mu_1 = argmin_j d_j (lower index on ties),
//   r_j = (d_j - d_1) / (2 L ||mu_j - mu_1||)   (0 when the gap is 0)
//   mode 0 (sound): min over other-class j of r_j;  mode 1 (paper): r at the nearest
//   other-class center. No other-class center: +inf.
// The [C,C] center gaps are computed once (direct differences); the row's
// distances (direct differences too, 8 centers per pass over the row) live in a
// thread-local [C] buffer.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "common.h"
#include "cpu/kmeans_rows.h"
#include "op_checks.h"

namespace clustr_fast {
namespace {

// Radii of the rows [i0, i1); dist: scratch of C values. The distances of a row come 8 centers
// per pass over it (sqdist_to_rows).
template <typename T>
inline __attribute__((always_inline)) void radius_range(const T* f, const T* mu, const int64_t* cls, const T* gap,
                                                        T* out, int64_t C, int64_t d, T lip, int64_t mode,
                                                        int64_t i0, int64_t i1, T* dist) {
  const T inf = std::numeric_limits<T>::infinity();
  for (int64_t i = i0; i < i1; ++i) {
    sqdist_to_rows<T>(f + i * d, mu, nullptr, C, d, dist);
    int64_t best = 0;
    for (int64_t j = 1; j < C; ++j)
      if (dist[j] < dist[best]) best = j;
    const T d1 = dist[best];
    const int64_t c1 = cls[best];
    const T* g = gap + best * C;
    T r = inf;
    int64_t nearest_other = -1;
    for (int64_t j = 0; j < C; ++j) {
      if (cls[j] == c1) continue;
      if (mode == 0) {
        const T rj = g[j] > T(0) ? (dist[j] - d1) / (T(2) * lip * g[j]) : T(0);
        r = rj < r ? rj : r;
      } else if (nearest_other < 0 || dist[j] < dist[nearest_other]) {
        nearest_other = j;
      }
    }
    if (mode == 1 && nearest_other >= 0) {
      const int64_t j = nearest_other;
      r = g[j] > T(0) ? (dist[j] - d1) / (T(2) * lip * g[j]) : T(0);
    }
    out[i] = r;
  }
}
CLUSTR_VEC_CLONES void radius_range_f(const float* f, const float* mu, const int64_t* cls, const float* gap,
                                      float* out, int64_t C, int64_t d, float lip, int64_t mode, int64_t i0,
                                      int64_t i1, float* dist) {
  radius_range<float>(f, mu, cls, gap, out, C, d, lip, mode, i0, i1, dist);
}
CLUSTR_VEC_CLONES void radius_range_d(const double* f, const double* mu, const int64_t* cls, const double* gap,
                                      double* out, int64_t C, int64_t d, double lip, int64_t mode, int64_t i0,
                                      int64_t i1, double* dist) {
  radius_range<double>(f, mu, cls, gap, out, C, d, lip, mode, i0, i1, dist);
}
inline void radius_range_any(const float* f, const float* mu, const int64_t* cls, const float* gap, float* out,
                             int64_t C, int64_t d, float lip, int64_t mode, int64_t i0, int64_t i1, float* dist) {
  radius_range_f(f, mu, cls, gap, out, C, d, lip, mode, i0, i1, dist);
}
inline void radius_range_any(const double* f, const double* mu, const int64_t* cls, const double* gap, double* out,
                             int64_t C, int64_t d, double lip, int64_t mode, int64_t i0, int64_t i1,
                             double* dist) {
  radius_range_d(f, mu, cls, gap, out, C, d, lip, mode, i0, i1, dist);
}

template <typename T>
void radius_rows(const at::Tensor& f_t, const at::Tensor& mu_t, const at::Tensor& cls_t, const at::Tensor& gap_t,
                 at::Tensor& out_t, T lip, int64_t mode) {
  const int64_t N = f_t.size(0), C = mu_t.size(0), d = f_t.size(1);
  at::parallel_for(0, N, 8, [&](int64_t i0, int64_t i1) {
    std::vector<T> dist(C);
    radius_range_any(f_t.data_ptr<T>(), mu_t.data_ptr<T>(), cls_t.data_ptr<int64_t>(), gap_t.data_ptr<T>(),
                     out_t.data_ptr<T>(), C, d, lip, mode, i0, i1, dist.data());
  });
}

at::Tensor certified_radius_cpu(const at::Tensor& feats, const at::Tensor& centers, const at::Tensor& center_classes,
                                double lipschitz, int64_t mode) {
  check_certified_radius(feats, centers, center_classes, lipschitz, mode);
  const auto acc = acc_type(feats.scalar_type());
  const at::Tensor f = feats.detach().to(acc).contiguous();
  const at::Tensor mu = centers.detach().to(acc).contiguous();
  const at::Tensor cls = center_classes.detach().to(at::kLong).contiguous();
  at::Tensor out = at::empty({f.size(0)}, f.options());
  if (f.size(0) == 0) return out;
  // direct differences: equal centers are exactly 0 apart
  const at::Tensor gap = at::cdist(mu, mu, 2.0, /*compute_mode=*/2).contiguous();
  AT_DISPATCH_FLOATING_TYPES(acc, "certified_radius_cpu", [&] {
    radius_rows<scalar_t>(f, mu, cls, gap, out, static_cast<scalar_t>(lipschitz), mode);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(clustr_fast, CPU, m) {
  m.impl("certified_radius", &certified_radius_cpu);
}

}  // namespace clustr_fast
