// Small vectorisable row helpers shared by the CPU kernels.
#pragma once
#include <cstdint>

namespace clustr_fast {

// ||u - v||^2 over d entries, by explicit differences (exact 0 for equal rows).
template <typename T>
inline __attribute__((always_inline)) T squared_distance(const T* u, const T* v, int64_t d) {
  T acc = T(0);
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < d; ++j) {
    const T t = u[j] - v[j];
    acc += t * t;
  }
  return acc;
}

// ||v||^2 over d entries.
template <typename T>
inline __attribute__((always_inline)) T squared_norm(const T* v, int64_t d) {
  T acc = T(0);
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < d; ++j) acc += v[j] * v[j];
  return acc;
}

}  // namespace clustr_fast
