// The SIMT distance tile shared by the CUDA kernels (pairwise_sqdist, kmeans_assign,
// soft_cluster_logits, magnet_loss): a block of THREADS = 256 threads computes the dot products
// of BM = 64 rows of x with BN = 64 rows of c, each thread a TM x TN = 4 x 4 register tile,
// with IEEE fma in acc_t over slices of BK columns staged in shared memory. Thread t owns rows
// ty * TM + i and columns tx * TN + j (tx = t % LANES, ty = t / LANES), so the LANES = 16
// threads of one row group are adjacent lanes of a warp (group_sum<LANES> and friends in
// device_math.cuh reduce across a row). The callers fuse their epilogue on the register tile.
#pragma once
#include <cstdint>

namespace clustr_fast {
namespace tile {
namespace {

constexpr int BM = 64, BN = 64, BK = 16, TM = 4, TN = 4, THREADS = 256, LANES = BN / TN;
static_assert(THREADS == (BM / TM) * LANES, "one thread per 4 x 4 register tile");

// Loads columns [k0, k0 + kBK) of rows [row0, row0 + BM) of x and [col0, col0 + BN) of c into
// xs[k][r], cs[k][r] as acc_t (zeros outside the matrices); the +1 padding avoids bank conflicts.
template <int kBK, typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_slice(acc_t (*xs)[BM + 1], acc_t (*cs)[BN + 1], const scalar_t* x,
                                           const scalar_t* c, int64_t row0, int64_t col0, int64_t k0, int64_t N,
                                           int64_t C, int64_t D, int64_t sxn, int64_t sxd, int64_t scn,
                                           int64_t scd) {
  static_assert(BM == BN, "one index walks the rows of both slices");
  for (int e = threadIdx.x; e < BM * kBK; e += blockDim.x) {
    const int r = e / kBK, kk = e % kBK;
    const int64_t gr = row0 + r, gk = k0 + kk, gc = col0 + r;
    xs[kk][r] = (gr < N && gk < D) ? static_cast<acc_t>(x[gr * sxn + gk * sxd]) : acc_t(0);
    cs[kk][r] = (gc < C && gk < D) ? static_cast<acc_t>(c[gc * scn + gk * scd]) : acc_t(0);
  }
}

// acc[i][j] = x_{row0 + ty*TM + i} . c_{col0 + tx*TN + j} over the d columns (0 outside the
// matrices). With kNorms, also cn[j] = ||c_{col0 + tx*TN + j}||^2 from the same slices (else cn
// is left alone). xs, cs: shared memory of kBK x (BM + 1) and kBK x (BN + 1) entries.
template <int kBK, bool kNorms, typename scalar_t, typename acc_t>
__device__ __forceinline__ void dot_tile(acc_t (&acc)[TM][TN], acc_t (&cn)[TN], acc_t (*xs)[BM + 1],
                                         acc_t (*cs)[BN + 1], const scalar_t* x, const scalar_t* c, int64_t row0,
                                         int64_t col0, int64_t N, int64_t C, int64_t D, int64_t sxn, int64_t sxd,
                                         int64_t scn, int64_t scd) {
  const int tx = threadIdx.x % LANES, ty = threadIdx.x / LANES;
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = acc_t(0);
  if constexpr (kNorms) {
#pragma unroll
    for (int j = 0; j < TN; ++j) cn[j] = acc_t(0);
  }
  for (int64_t k0 = 0; k0 < D; k0 += kBK) {
    load_slice<kBK, scalar_t, acc_t>(xs, cs, x, c, row0, col0, k0, N, C, D, sxn, sxd, scn, scd);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      acc_t a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = xs[kk][ty * TM + i];
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        b[j] = cs[kk][tx * TN + j];
        if constexpr (kNorms) cn[j] = fma(b[j], b[j], cn[j]);
      }
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
}

// The products alone (the caller has the norms).
template <int kBK, typename scalar_t, typename acc_t>
__device__ __forceinline__ void dot_tile(acc_t (&acc)[TM][TN], acc_t (*xs)[BM + 1], acc_t (*cs)[BN + 1],
                                         const scalar_t* x, const scalar_t* c, int64_t row0, int64_t col0,
                                         int64_t N, int64_t C, int64_t D, int64_t sxn, int64_t sxd, int64_t scn,
                                         int64_t scd) {
  acc_t unused[TN];
  dot_tile<kBK, false, scalar_t, acc_t>(acc, unused, xs, cs, x, c, row0, col0, N, C, D, sxn, sxd, scn, scd);
}

// max(||x||^2 + ||c||^2 - 2 x.c, 0): the squared distance from the norms and the product.
template <typename acc_t>
__device__ __forceinline__ acc_t sqdist_from_dot(acc_t xn, acc_t cn, acc_t dot) {
  const acc_t v = xn + cn - acc_t(2) * dot;
  return v > acc_t(0) ? v : acc_t(0);
}

}  // namespace
}  // namespace tile
}  // namespace clustr_fast
