// Shared memory of the fused CUDA magnet_loss_batch kernel, whose one block holds the whole batch:
// the means and their gradient [M, d], P [N, M], the row sums R [N] and the column sums [M] in the
// accumulation type (acc_size bytes each), then the counts [M] (int32). One formula for the kernel
// (csrc/cuda/magnet_loss_batch.cu lays its shared memory out in this order) and for the host rule
// that decides whether a batch runs fused (clustr_fast._backend.fused_batch_fits, which calls it
// as clustr_fast._C.magnet_batch_shared_bytes).
#pragma once
#include <cstdint>

namespace clustr_fast {

inline int64_t magnet_batch_shared_bytes(int64_t n, int64_t m, int64_t d, int64_t acc_size) {
  return acc_size * (2 * m * d + n * m + n + m) + int64_t(sizeof(int32_t)) * m;
}

}  // namespace clustr_fast
