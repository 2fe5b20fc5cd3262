// certified_radius on the CPU: the l2 radius of the nearest-center classifier
// (ClusTR Theorem 1), one row at a time.
//   d_j = ||f - mu_j||^2 (direct differences), mu_1 = argmin_j d_j (lower index on ties),
//   r_j = (d_j - d_1) / (2 L ||mu_j - mu_1||)   (0 when the gap is 0)
//   mode 0 (sound): min over other-class j of r_j;  mode 1 (paper): r at the nearest
//   other-class center. No other-class center: +inf.
// The [C,C] center gaps are computed once (direct differences); the row's
// distances live in a thread-local [C] buffer.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "common.h"
#include "cpu/vec_math.h"

namespace clustr_fast {
namespace {

template <typename T>
void radius_rows(const at::Tensor& f_t, const at::Tensor& mu_t, const at::Tensor& cls_t, const at::Tensor& gap_t,
                 at::Tensor& out_t, T lip, int64_t mode) {
  const int64_t N = f_t.size(0), C = mu_t.size(0), d = f_t.size(1);
  const T* f = f_t.data_ptr<T>();
  const T* mu = mu_t.data_ptr<T>();
  const int64_t* cls = cls_t.data_ptr<int64_t>();
  const T* gap = gap_t.data_ptr<T>();
  T* out = out_t.data_ptr<T>();
  const T inf = std::numeric_limits<T>::infinity();
  at::parallel_for(0, N, 8, [&](int64_t i0, int64_t i1) {
    std::vector<T> dist(C);
    for (int64_t i = i0; i < i1; ++i) {
      const T* fi = f + i * d;
      int64_t best = 0;
      for (int64_t j = 0; j < C; ++j) {
        dist[j] = squared_distance(fi, mu + j * d, d);
        if (dist[j] < dist[best]) best = j;
      }
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
  });
}

at::Tensor certified_radius_cpu(const at::Tensor& feats, const at::Tensor& centers, const at::Tensor& center_classes,
                                double lipschitz, int64_t mode) {
  check_matrix(feats, "feats");
  check_matrix(centers, "centers");
  TORCH_CHECK(feats.size(1) == centers.size(1), "feats and centers must have the same number of columns");
  TORCH_CHECK(centers.size(0) >= 1, "centers must have at least one row");
  TORCH_CHECK(center_classes.dim() == 1 && center_classes.size(0) == centers.size(0),
              "center_classes must have one entry per center");
  TORCH_CHECK(lipschitz > 0, "lipschitz must be > 0");
  TORCH_CHECK(mode == 0 || mode == 1, "mode must be 0 (sound) or 1 (paper)");
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

TORCH_LIBRARY_IMPL(clustr_fast_C, CPU, m) {
  m.impl("certified_radius", &certified_radius_cpu);
}

}  // namespace clustr_fast
