// Small helpers shared by the CPU and CUDA kernels of clustr_fast.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

// AVX2+FMA clones of hot CPU loops, chosen at load time by ISA level (the build itself
// targets the x86-64 baseline, so the library still runs on any x86-64 CPU).
// "arch=haswell" would be chosen by CPU model, and so never on AMD processors. `flatten`
// inlines the templates the wrapper calls into each clone, so they are vectorised for its ISA.
// Nothing may throw inside a clone: GCC 12 does not unwind through target_clones functions,
// so an exception there (a TORCH_CHECK, a failed allocation) ends the process. Check inputs
// and allocate scratch before calling one.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 12
#define CLUSTR_VEC_CLONES __attribute__((target_clones("arch=x86-64-v3", "default"), flatten))
#elif defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CLUSTR_VEC_CLONES __attribute__((target_clones("avx2", "default"), flatten))
#else
#define CLUSTR_VEC_CLONES
#endif

namespace clustr_fast {

// CPU loops: below about this many multiply-adds a call runs on the calling thread (waking the
// thread pool costs more than a small problem, and a busy machine may not run the other thread soon).
constexpr int64_t kSerialWork = int64_t(1) << 22;

// The grain of an at::parallel_for over items of `work_per_item` multiply-adds each: a loop of
// less than kSerialWork in all runs inline, as one task.
inline int64_t serial_grain(int64_t work_per_item) {
  return std::max<int64_t>(1, kSerialWork / std::max<int64_t>(1, work_per_item));
}

// Kernels run below the Autograd key (csrc/autograd.cpp, or PyTorch's fallback for the ops without
// autograd), so the ATen calls inside them record no graph: they read their inputs without detach(),
// one tensor less per input on the small calls whose host time counts.

// float64 stays float64; everything else accumulates in float32.
inline at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// The same at compile time: the accumulation type of the C++ scalar type T.
template <typename T>
using acc_scalar_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble ||
                  t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16,
              name, " must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
}

inline void check_matrix(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2, name, " must be 2-D, got ", t.dim(), "-D");
  check_floating(t, name);
}

inline void check_precision(int64_t p) {
  TORCH_CHECK(p >= 0 && p <= 2, "precision code must be 0 (highest), 1 (high) or 2 (medium), got ", p);
}

}  // namespace clustr_fast
